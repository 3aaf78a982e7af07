//! Measures what one send costs the server: DynamoDB requests per send to 1, 4 and 10
//! destination devices, and the handler's own CPU time (excluding the time spent waiting on
//! DynamoDB). Runs the real service in-process against the DynamoDB endpoint of the
//! environment (the local cloud: `eval "$(localstack/cloud.sh env)"`), with a counting
//! interceptor on the SDK client.
//!
//! `cargo run --release -p cipherpost-backend --example send_costs`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::{
    interceptors::BeforeTransmitInterceptorContextRef, ConfigBag, Intercept, RuntimeComponents,
};
use cipherpost_backend::{
    api::{CreateAccountRequest, NewDevice, SignedPreKeyJson, B64},
    Backend, Config, HttpRequest, Pusher, Store,
};
use cipherpost_protocol::{
    AccountKey, DeviceId, DeviceIdentity, RequestAuth, SignedPreKey, UserId,
};
use rand_core::{OsRng, RngCore};
use serde_json::json;

#[derive(Debug, Default)]
struct Counter(Arc<AtomicU64>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "request counter"
    }
    fn read_before_transmit(
        &self,
        _: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// CPU time of this process (user + system), in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct Dev {
    user: UserId,
    id: DeviceId,
    identity: DeviceIdentity,
}

impl Dev {
    fn request(&self, method: &str, path: &str, body: serde_json::Value) -> HttpRequest {
        let body = serde_json::to_vec(&body).unwrap();
        let ts = cipherpost_backend::now_ms();
        let auth = RequestAuth::sign(&self.identity, &self.user, self.id, method, path, ts, &body);
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            authorization: Some(auth.to_header()),
            body,
        }
    }
}

/// An account with `n` devices, registered through the service itself.
async fn account(backend: &Backend, n: usize) -> Vec<Dev> {
    let user = UserId::new(&format!("cost-{:08x}", OsRng.next_u32())).unwrap();
    let ak = AccountKey::generate(&mut OsRng);
    let mut devs: Vec<Dev> = Vec::new();
    for i in 0..n {
        let identity = DeviceIdentity::generate(&mut OsRng);
        let id = DeviceId::generate(&mut OsRng);
        let cert = ak.certify(&user, id, &identity.public(), 0);
        let spk = SignedPreKey::generate(&mut OsRng, &identity, 1, 0).public();
        let device = NewDevice {
            certificate: B64(cert.to_bytes()),
            signed_prekey: SignedPreKeyJson {
                id: 1,
                key: B64(spk.key.to_bytes().to_vec()),
                signature: B64(spk.signature.to_bytes().to_vec()),
            },
            one_time_prekeys: vec![],
        };
        let d = Dev {
            user: user.clone(),
            id,
            identity,
        };
        let r = if i == 0 {
            let body = CreateAccountRequest {
                account_key: B64(ak.public_key().to_bytes().to_vec()),
                device,
            };
            backend
                .register(&d.request(
                    "PUT",
                    &format!("/v1/accounts/{user}"),
                    serde_json::to_value(body).unwrap(),
                ))
                .await
        } else {
            backend
                .register(&devs[0usize].request(
                    "POST",
                    &format!("/v1/accounts/{user}/devices"),
                    json!({ "device": device }),
                ))
                .await
        };
        assert_eq!(r.status, 201, "{}", r.body);
        devs.push(d);
    }
    devs
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let count = Arc::new(AtomicU64::new(0));
    let dynamo = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .interceptor(Counter(count.clone()))
            .build(),
    );
    let config = Config::from_env().unwrap();
    // No pushes: this measures the store side of a send.
    let backend = Backend {
        store: Store::new(dynamo, config.tables.clone()),
        pusher: Pusher::new(None),
        s3: aws_sdk_s3::Client::new(&sdk),
        config,
    };
    const SENDS: usize = 100;
    println!("| destinations | recipient devices + sender's other devices | DynamoDB requests per send | items written per send | handler CPU per send (excl. I/O) | wall per send (moto) |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (recipient_devices, own_others) in [(1usize, 0usize), (3, 1), (5, 5)] {
        let sender = account(&backend, own_others + 1).await;
        let recipient = account(&backend, recipient_devices).await;
        let destinations: Vec<&Dev> = recipient.iter().chain(sender.iter().skip(1)).collect();
        let reqs: Vec<HttpRequest> = (0..SENDS)
            .map(|_| {
                let mut mid = [0u8; 16];
                OsRng.fill_bytes(&mut mid);
                let body = json!({
                    "message_id": B64(mid.to_vec()),
                    "to": recipient[0].user.as_str(),
                    "body": B64(vec![0u8; 200]),
                    "envelopes": destinations.iter().map(|d| json!({"user": d.user.as_str(), "device_id": d.id.get(), "key": B64(vec![1u8; 180])})).collect::<Vec<_>>(),
                });
                sender[0].request("PUT", "/v1/messages", body)
            })
            .collect();
        let before = count.load(Ordering::Relaxed);
        let cpu0 = cpu_secs();
        let wall = Instant::now();
        for r in &reqs {
            let resp = backend.send(r).await;
            assert_eq!(resp.status, 200, "{}", resp.body);
        }
        let wall = wall.elapsed().as_secs_f64() / SENDS as f64;
        let cpu = (cpu_secs() - cpu0) / SENDS as f64;
        let per_send = (count.load(Ordering::Relaxed) - before) as f64 / SENDS as f64;
        println!(
            "| {} | {} + {} | {:.1} | {} (+1 idempotency record) | {:.0} µs | {:.1} ms |",
            destinations.len(),
            recipient_devices,
            own_others,
            per_send,
            destinations.len(),
            cpu * 1e6,
            wall * 1e3
        );
    }
}
