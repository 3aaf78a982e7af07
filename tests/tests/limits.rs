//! Abuse limits (issue #9): per-device limits on sends and bundle fetches (prekey draining),
//! per-account limits on links, counted in DynamoDB and answered with 429 `rate_limited` and a
//! `Retry-After`, changing nothing.
//!
//! The limits of the shared local cloud are set high enough for the other suites, so each test
//! starts its own local API gateway (the built `cipherpost-local-gateway` binary, a separate
//! process in front of the same moto) with small limits, points its process at it, and stops it
//! at the end. This relies on nextest's process per test (`./dev test` uses nextest); under
//! `cargo test` run this file with `--test-threads=1`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cipherpost_backend::api::B64;
use cipherpost_tests::Device;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

const SENDS_PER_MINUTE: usize = 5;
const BUNDLES_PER_HOUR: usize = 6;
const BUNDLES_PER_TARGET_PER_HOUR: usize = 3;
const LINKS_PER_HOUR: usize = 2;
const UPLOADS_PER_HOUR: usize = 2;

/// The gateway process, stopped when the test ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn gateway_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CIPHERPOST_GATEWAY_BIN") {
        return p.into();
    }
    // target/debug/deps/limits-<hash> -> target/debug/cipherpost-local-gateway
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    dir.join("cipherpost-local-gateway")
}

/// Starts a gateway with small limits and points `CIPHERPOST_API` at it.
fn limited_gateway() -> Gateway {
    {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bin = gateway_binary();
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build -p cipherpost-local-gateway` (./dev test does)",
            bin.display()
        );
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(&bin)
            .env("CIPHERPOST_LISTEN", &addr)
            .env("CIPHERPOST_WS_ENDPOINT", format!("http://{addr}"))
            .env(
                "CIPHERPOST_LIMIT_SENDS_PER_MINUTE",
                SENDS_PER_MINUTE.to_string(),
            )
            .env(
                "CIPHERPOST_LIMIT_BUNDLES_PER_HOUR",
                BUNDLES_PER_HOUR.to_string(),
            )
            .env(
                "CIPHERPOST_LIMIT_BUNDLES_PER_TARGET_PER_HOUR",
                BUNDLES_PER_TARGET_PER_HOUR.to_string(),
            )
            .env(
                "CIPHERPOST_LIMIT_LINKS_PER_HOUR",
                LINKS_PER_HOUR.to_string(),
            )
            .env(
                "CIPHERPOST_LIMIT_UPLOADS_PER_HOUR",
                UPLOADS_PER_HOUR.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the limited gateway exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the limited gateway did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // This process talks to the limited gateway from here on.
        std::env::set_var("CIPHERPOST_API", format!("http://{addr}"));
        std::env::set_var("CIPHERPOST_WS", format!("ws://{addr}/ws"));
        Gateway(child)
    }
}

fn assert_limited(a: &cipherpost_tests::Answer, what: &str) {
    assert_eq!(a.status, 429, "{:?}", a.json);
    assert_eq!(a.json["error"], "rate_limited");
    let message = a.json["message"].as_str().unwrap();
    assert!(message.contains(what), "{message}");
    let wait: u64 = a
        .retry_after
        .as_deref()
        .expect("a Retry-After header")
        .parse()
        .unwrap();
    assert!((1..=3_600).contains(&wait), "{wait}");
}

async fn prekey_count(d: &Device) -> u64 {
    let a = d.request("GET", "/v1/keys", None).await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["one_time_prekeys"].as_u64().unwrap()
}

#[tokio::test]
async fn bundle_fetches_are_limited_per_target_and_per_device() {
    let _gateway = limited_gateway();
    let x = Device::registered("limx", 0).await;
    let y = Device::registered("limy", 10).await;
    let z = Device::registered("limz", 10).await;
    let path = |d: &Device| format!("/v1/keys/{}", d.user);
    for _ in 0..BUNDLES_PER_TARGET_PER_HOUR {
        assert_eq!(x.request("GET", &path(&y), None).await.status, 200);
    }
    // The next fetch of y would take another of y's prekeys: refused, and none is taken.
    let a = x.request("GET", &path(&y), None).await;
    assert_limited(&a, "of this account");
    assert_eq!(
        prekey_count(&y).await,
        10 - BUNDLES_PER_TARGET_PER_HOUR as u64
    );
    // Another account is still fetched...
    let mut fetched = BUNDLES_PER_TARGET_PER_HOUR + 1;
    while fetched < BUNDLES_PER_HOUR {
        assert_eq!(x.request("GET", &path(&z), None).await.status, 200);
        fetched += 1;
    }
    // ...until the device's own hourly limit.
    let a = x.request("GET", &path(&z), None).await;
    assert_limited(&a, "fetched by this device");
    // Another device is not limited by x's fetches.
    assert_eq!(z.request("GET", &path(&y), None).await.status, 200);
}

#[tokio::test]
async fn sends_are_limited_per_device_and_a_refused_send_queues_nothing() {
    let _gateway = limited_gateway();
    let a = Device::registered("lima", 0).await;
    let b = Device::registered("limb", 0).await;
    let send = |n: u8| {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        json!({
            "message_id": B64(id.to_vec()),
            "to": b.user.as_str(),
            "body": B64(vec![n; 64]),
            "envelopes": [{"user": b.user.as_str(), "device_id": b.device_id.get(), "key": B64(vec![7u8; 120])}],
            "ephemeral": false,
        })
    };
    for i in 0..SENDS_PER_MINUTE as u8 {
        let r = a.request("PUT", "/v1/messages", Some(&send(i))).await;
        assert_eq!(r.status, 200, "{:?}", r.json);
    }
    let r = a.request("PUT", "/v1/messages", Some(&send(99))).await;
    assert_limited(&r, "messages sent by this device");
    let synced = b.request("GET", "/v1/messages", None).await;
    let envelopes: &Vec<Value> = synced.json["envelopes"].as_array().unwrap();
    assert_eq!(envelopes.len(), SENDS_PER_MINUTE);
    // Another device still sends.
    let r = b
        .request(
            "PUT",
            "/v1/messages",
            Some(&json!({
                "message_id": B64(vec![1u8; 16]),
                "to": a.user.as_str(),
                "body": B64(vec![1u8; 64]),
                "envelopes": [{"user": a.user.as_str(), "device_id": a.device_id.get(), "key": B64(vec![7u8; 120])}],
                "ephemeral": false,
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
}

#[tokio::test]
async fn links_are_limited_per_account() {
    let _gateway = limited_gateway();
    let first = Device::registered("liml", 0).await;
    for _ in 0..LINKS_PER_HOUR {
        let (_d, a) = first.link_new_device(0).await;
        assert_eq!(a.status, 201, "{:?}", a.json);
    }
    let (_d, a) = first.link_new_device(0).await;
    assert_limited(&a, "devices linked to this account");
    let b = first
        .request("GET", &format!("/v1/keys/{}", first.user), None)
        .await;
    assert_eq!(b.status, 200);
    assert_eq!(
        b.json["devices"].as_array().unwrap().len(),
        1 + LINKS_PER_HOUR,
        "the refused link registered nothing"
    );
}

#[tokio::test]
async fn attachment_uploads_are_limited_per_account() {
    let _gateway = limited_gateway();
    let first = Device::registered("limu", 0).await;
    let (second, a) = first.link_new_device(0).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    let declare = json!({"size": 1_000});
    for d in [&first, &second].into_iter().cycle().take(UPLOADS_PER_HOUR) {
        let a = d.request("POST", "/v1/attachments", Some(&declare)).await;
        assert_eq!(a.status, 201, "{:?}", a.json);
    }
    // The account's other device shares the account's limit; no URL is made.
    let a = second
        .request("POST", "/v1/attachments", Some(&declare))
        .await;
    assert_limited(&a, "attachments uploaded by this account");
    assert!(a.json.get("upload_url").is_none());
}
