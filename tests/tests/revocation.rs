//! Device revocation on the server (issue #7): one step drops the device's sign-in, socket,
//! one-time prekeys and queue; a retry of a registered revocation is answered the same and
//! runs the clean-up again; items read straight from DynamoDB through the SDK.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use cipherpost_backend::api::B64;
use cipherpost_protocol::{AccountKey, DeviceCertificate};
use cipherpost_tests::{dynamo, now_ms, table, Device};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

async fn items(logical: &str, device_key: &str) -> usize {
    dynamo()
        .await
        .query()
        .table_name(table(logical))
        .key_condition_expression("device_key = :d")
        .expression_attribute_values(":d", AttributeValue::S(device_key.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items()
        .len()
}

/// The revocation of `target` by `by`, rotating to `new` and certifying `remaining`.
fn revoke_body(by: &Device, target: &Device, new: &AccountKey, remaining: &[&Device]) -> Value {
    let user = by.user.clone();
    let revocation = by.account.revoke(
        &user,
        target.device_id,
        &target.identity.public().signing,
        now_ms(),
    );
    let rotation = by.account.rotate_to(&user, &new.public_key(), now_ms());
    let certs: Vec<DeviceCertificate> = remaining
        .iter()
        .map(|d| new.certify(&user, d.device_id, &d.identity.public(), now_ms()))
        .collect();
    json!({
        "revocation": B64(revocation.to_bytes()),
        "rotation": B64(rotation.to_bytes()),
        "certificates": certs.iter().map(|c| B64(c.to_bytes())).collect::<Vec<_>>(),
    })
}

#[tokio::test]
async fn revoking_drops_socket_prekeys_and_queue_and_a_retry_answers_the_same() {
    let a1 = Device::registered("rvs", 3).await;
    let (a2, r) = a1.link_new_device(5).await;
    assert_eq!(r.status, 201);
    // a2 is online and has a queued message (from a1, to the account's other device).
    let mut socket = a2.connect().await.unwrap();
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let send = json!({
        "message_id": B64(id.to_vec()),
        "to": a1.user.as_str(),
        "body": B64(vec![1u8; 64]),
        "envelopes": [{"user": a2.user.as_str(), "device_id": a2.device_id.get(), "key": B64(vec![7u8; 120])}],
        "ephemeral": false,
    });
    let r = a1.request("PUT", "/v1/messages", Some(&send)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert!(socket.next_json(Duration::from_secs(5)).await.is_some());
    assert_eq!(items("queue", &a2.device_key()).await, 1);
    assert_eq!(items("prekeys", &a2.device_key()).await, 5);

    let new = AccountKey::generate(&mut OsRng);
    let body = revoke_body(&a1, &a2, &new, &[&a1]);
    let path = format!("/v1/accounts/{}/devices/{}", a1.user, a2.device_id);
    let r = a1.request("DELETE", &path, Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(
        r.json["account_key"],
        json!(B64(new.public_key().to_bytes().to_vec()))
    );

    // Its socket is closed, its requests and new sockets refused, its items gone.
    assert!(
        socket.closed_within(Duration::from_secs(5)).await,
        "the revoked device's socket stays open"
    );
    assert_eq!(a2.request("GET", "/v1/keys", None).await.status, 401);
    assert!(a2.connect().await.is_err());
    assert_eq!(items("queue", &a2.device_key()).await, 0);
    assert_eq!(items("prekeys", &a2.device_key()).await, 0);
    let dev = dynamo()
        .await
        .get_item()
        .table_name(table("devices"))
        .key("user", AttributeValue::S(a1.user.to_string()))
        .key("device", AttributeValue::N(a2.device_id.get().to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let item = dev.item().unwrap();
    assert_eq!(item["status"], AttributeValue::S("revoked".into()));
    assert!(!item.contains_key("connection_id"));

    // A retry (the answer was lost): the same answer, nothing else changes; a queue item
    // written for the device meanwhile (a send that raced the revocation) is purged again.
    dynamo()
        .await
        .put_item()
        .table_name(table("queue"))
        .item("device_key", AttributeValue::S(a2.device_key()))
        .item("sort", AttributeValue::S("0000-raced".into()))
        .send()
        .await
        .unwrap();
    let r = a1.request("DELETE", &path, Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(
        r.json["account_key"],
        json!(B64(new.public_key().to_bytes().to_vec()))
    );
    assert_eq!(items("queue", &a2.device_key()).await, 0);
    let account = dynamo()
        .await
        .get_item()
        .table_name(table("accounts"))
        .key("user", AttributeValue::S(a1.user.to_string()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let account = account.item().unwrap();
    assert_eq!(account["rotations"].as_l().unwrap().len(), 1);
    assert_eq!(account["revocations"].as_l().unwrap().len(), 1);

    // Another revocation of the same device (not the one stored) is still unknown.
    let other = revoke_body(&a1, &a2, &AccountKey::generate(&mut OsRng), &[&a1]);
    let r = a1.request("DELETE", &path, Some(&other)).await;
    assert_eq!(r.status, 404, "{:?}", r.json);
    assert_eq!(r.json["error"], "unknown_device");
}
