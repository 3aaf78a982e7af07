//! Measures what one group send costs: DynamoDB requests per group message, the handler's own
//! CPU time (excluding the time spent waiting on DynamoDB) and wall time per send, for groups of
//! 10, 100 and 1,000 member devices; and the sender's CPU time per sender-key encryption, which
//! does not depend on the group's size. Runs the real service in-process against the DynamoDB
//! endpoint of the environment (the local cloud: `eval "$(localstack/cloud.sh env)"`), with a
//! counting interceptor on the SDK client, and without pushes.
//!
//! `cargo run --release -p cipherpost-backend --example group_send_costs`
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
    api::{devices_digest, CreateAccountRequest, Group, NewDevice, SignedPreKeyJson, B64},
    Backend, Config, HttpRequest, Pusher, Store,
};
use cipherpost_protocol::{
    AccountKey, DeviceAddress, DeviceId, DeviceIdentity, GroupId, MessageId, OwnSenderKey,
    RequestAuth, SignedPreKey, UserId,
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
    let user = UserId::new(&format!("gcost-{:08x}", OsRng.next_u32())).unwrap();
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
    let backend = Backend {
        store: Store::new(dynamo, config.tables.clone()),
        pusher: Pusher::new(None),
        s3: aws_sdk_s3::Client::new(&sdk),
        config,
    };
    println!("| member devices | members x devices | DynamoDB requests per group send | queue items per send | handler CPU per send (excl. I/O) | wall per send (moto) | sender CPU per encryption |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (members, per_member, sends) in [(5usize, 2usize, 40usize), (20, 5, 20), (100, 10, 5)] {
        let mut accounts = Vec::new();
        for _ in 0..members {
            accounts.push(account(&backend, per_member).await);
        }
        let sender = &accounts[0][0];
        let mut gid = [0u8; 16];
        OsRng.fill_bytes(&mut gid);
        let r = backend
            .groups(&sender.request(
                "POST",
                "/v1/groups",
                json!({
                    "group_id": B64(gid.to_vec()),
                    "members": accounts[1..].iter().map(|a| a[0].user.as_str()).collect::<Vec<_>>(),
                }),
            ))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let group: Group = serde_json::from_value(r.body).unwrap();
        let digest = devices_digest(&group.devices);
        let mut key = OwnSenderKey::generate(
            &mut OsRng,
            GroupId(gid),
            DeviceAddress::new(sender.user.clone(), sender.id),
        );
        // The sender's side: one encryption per message, whatever the group's size.
        let mut bodies = Vec::new();
        let enc = Instant::now();
        for _ in 0..sends {
            let mut mid = [0u8; 16];
            OsRng.fill_bytes(&mut mid);
            bodies.push((mid, key.encrypt(&MessageId(mid), &[7u8; 200]).unwrap()));
        }
        let enc_each = enc.elapsed().as_secs_f64() / sends as f64;
        let reqs: Vec<HttpRequest> = bodies
            .iter()
            .map(|(mid, body)| {
                sender.request(
                    "PUT",
                    "/v1/messages",
                    json!({
                        "message_id": B64(mid.to_vec()),
                        "group": {"group_id": B64(gid.to_vec()), "version": group.version, "devices_digest": B64(digest.to_vec())},
                        "body": B64(body.clone()),
                        "envelopes": [],
                    }),
                )
            })
            .collect();
        let before = count.load(Ordering::Relaxed);
        let cpu0 = cpu_secs();
        let wall = Instant::now();
        for r in &reqs {
            let resp = backend.send(r).await;
            assert_eq!(resp.status, 200, "{}", resp.body);
        }
        let wall = wall.elapsed().as_secs_f64() / sends as f64;
        let cpu = (cpu_secs() - cpu0) / sends as f64;
        let per_send = (count.load(Ordering::Relaxed) - before) as f64 / sends as f64;
        println!(
            "| {} | {members} x {per_member} | {:.1} | {} | {:.2} ms | {:.1} ms | {:.0} µs |",
            group.devices.len(),
            per_send,
            group.devices.len() - 1,
            cpu * 1e3,
            wall * 1e3,
            enc_each * 1e6,
        );
    }
}
