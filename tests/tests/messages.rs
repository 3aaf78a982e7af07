//! Send, sync, ack and WebSocket push over HTTP and a real socket against the local cloud
//! (issue #3, behaviours 3, 4, 5 and 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use cipherpost_backend::api::{SyncResponse, B64};
use cipherpost_tests::{dynamo, now_ms, table, Device};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

fn message_id() -> [u8; 16] {
    let mut m = [0u8; 16];
    OsRng.fill_bytes(&mut m);
    m
}

/// A send body addressing `devices` with opaque key envelopes (the server never opens them).
fn send_body(
    id: &[u8; 16],
    to: &Device,
    devices: &[&Device],
    body: &[u8],
    ephemeral: bool,
) -> Value {
    json!({
        "message_id": B64(id.to_vec()),
        "to": to.user.as_str(),
        "body": B64(body.to_vec()),
        "envelopes": devices.iter().map(|d| json!({
            "user": d.user.as_str(), "device_id": d.device_id.get(), "key": B64(vec![7u8; 120]),
        })).collect::<Vec<_>>(),
        "ephemeral": ephemeral,
    })
}

async fn sync(d: &Device, query: &str) -> SyncResponse {
    let a = d
        .request("GET", &format!("/v1/messages{query}"), None)
        .await;
    assert_eq!(a.status, 200, "{:?}", a.json);
    serde_json::from_value(a.json).unwrap()
}

async fn queue_len(d: &Device) -> usize {
    let out = dynamo()
        .await
        .query()
        .table_name(table("queue"))
        .key_condition_expression("device_key = :d")
        .expression_attribute_values(":d", AttributeValue::S(d.device_key()))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items().len()
}

/// Alice with two devices, Bob with three.
async fn alice_and_bob() -> (Device, Device, Device, Device, Device) {
    let a1 = Device::registered("alice", 2).await;
    let (a2, r) = a1.link_new_device(2).await;
    assert_eq!(r.status, 201);
    let b1 = Device::registered("bob", 2).await;
    let (b2, r) = b1.link_new_device(2).await;
    assert_eq!(r.status, 201);
    let (b3, r) = b1.link_new_device(2).await;
    assert_eq!(r.status, 201);
    (a1, a2, b1, b2, b3)
}

#[tokio::test]
async fn send_queues_exactly_one_envelope_per_addressed_device_and_is_idempotent() {
    let (a1, a2, b1, b2, b3) = alice_and_bob().await;
    let id = message_id();
    let body = send_body(&id, &b1, &[&b1, &b2, &b3, &a2], b"ciphertext", false);
    let r = a1.request("PUT", "/v1/messages", Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["queued"], 4);
    for d in [&b1, &b2, &b3, &a2] {
        assert_eq!(queue_len(d).await, 1, "{}", d.device_key());
    }
    assert_eq!(queue_len(&a1).await, 0, "never to the sending device");
    // A retry with the same id stores nothing new and answers the same.
    let again = a1.request("PUT", "/v1/messages", Some(&body)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json, r.json);
    for d in [&b1, &b2, &b3, &a2] {
        assert_eq!(queue_len(d).await, 1);
    }
    // What b2 receives.
    let s = sync(&b2, "").await;
    assert_eq!(s.envelopes.len(), 1);
    let e = &s.envelopes[0];
    assert_eq!(e.message_id.0, id.to_vec());
    assert_eq!(e.sender.user, a1.user.as_str());
    assert_eq!(e.sender.device_id, a1.device_id.get());
    assert_eq!(e.body.0, b"ciphertext");
}

#[tokio::test]
async fn a_wrong_device_list_is_409_with_missing_and_stale_and_stores_nothing() {
    let (a1, a2, b1, b2, b3) = alice_and_bob().await;
    // Missing b3 and a2; an extra device that does not exist.
    let mut body = send_body(&message_id(), &b1, &[&b1, &b2], b"x", false);
    body["envelopes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"user": b1.user.as_str(), "device_id": 12345, "key": B64(vec![1])}));
    let r = a1.request("PUT", "/v1/messages", Some(&body)).await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "device_mismatch");
    let missing: Vec<u64> = r.json["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["device_id"].as_u64().unwrap())
        .collect();
    assert!(
        missing.contains(&u64::from(b3.device_id.get()))
            && missing.contains(&u64::from(a2.device_id.get()))
    );
    assert_eq!(r.json["stale"][0]["device_id"], 12345);
    for d in [&b1, &b2, &b3, &a2] {
        assert_eq!(queue_len(d).await, 0, "nothing stored");
    }
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let a1 = Device::registered("big", 0).await;
    let b1 = Device::registered("bigb", 0).await;
    let body = send_body(&message_id(), &b1, &[&b1], &vec![0u8; 98_429], false);
    let r = a1.request("PUT", "/v1/messages", Some(&body)).await;
    assert_eq!(r.status, 413, "{:?}", r.json);
    assert_eq!(queue_len(&b1).await, 0);
}

#[tokio::test]
async fn sync_pages_in_order_and_ack_deletes_exactly_what_was_acked() {
    let a1 = Device::registered("pager", 0).await;
    let b1 = Device::registered("pageb", 0).await;
    let mut ids = Vec::new();
    for i in 0..7u8 {
        let id = message_id();
        let r = a1
            .request(
                "PUT",
                "/v1/messages",
                Some(&send_body(&id, &b1, &[&b1], &[i], false)),
            )
            .await;
        assert_eq!(r.status, 200);
        ids.push(id);
        // Distinct server times keep the order the send order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=3&cursor={c}"),
            None => "?limit=3".into(),
        };
        let page = sync(&b1, &q).await;
        assert!(page.envelopes.len() <= 3);
        seen.extend(page.envelopes);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let bodies: Vec<u8> = seen.iter().map(|e| e.body.0[0]).collect();
    assert_eq!(bodies, (0..7).collect::<Vec<u8>>(), "in order");
    // Syncing changed nothing.
    assert_eq!(queue_len(&b1).await, 7);
    // Ack two of them.
    let ack = json!({ "ids": [seen[1].id, seen[4].id] });
    let r = b1.request("POST", "/v1/messages/ack", Some(&ack)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let left: Vec<u8> = sync(&b1, "")
        .await
        .envelopes
        .iter()
        .map(|e| e.body.0[0])
        .collect();
    assert_eq!(left, vec![0, 2, 3, 5, 6]);
    // Bad limits and cursors are 400.
    for q in ["?limit=0", "?limit=abc", "?limit=100000", "?cursor=%00"] {
        let a = b1.request("GET", &format!("/v1/messages{q}"), None).await;
        assert_eq!(a.status, 400, "{q}: {:?}", a.json);
    }
}

#[tokio::test]
async fn queued_items_carry_a_30_day_ttl_and_expired_ones_are_never_returned() {
    let a1 = Device::registered("ttl", 0).await;
    let b1 = Device::registered("ttlb", 0).await;
    let r = a1
        .request(
            "PUT",
            "/v1/messages",
            Some(&send_body(&message_id(), &b1, &[&b1], b"x", false)),
        )
        .await;
    assert_eq!(r.status, 200);
    let db = dynamo().await;
    let out = db
        .query()
        .table_name(table("queue"))
        .key_condition_expression("device_key = :d")
        .expression_attribute_values(":d", AttributeValue::S(b1.device_key()))
        .send()
        .await
        .unwrap();
    let item = &out.items()[0];
    let ttl: u64 = item["ttl"].as_n().unwrap().parse().unwrap();
    let expected = now_ms() / 1000 + 30 * 86_400;
    assert!(ttl.abs_diff(expected) < 120, "ttl {ttl} vs {expected}");
    // An item whose TTL passed (DynamoDB deletes expired items lazily) is never returned.
    let mut expired = item.clone();
    expired.insert(
        "sort".into(),
        AttributeValue::S("0000000000001:00:old:1".into()),
    );
    expired.insert(
        "ttl".into(),
        AttributeValue::N((now_ms() / 1000 - 10).to_string()),
    );
    db.put_item()
        .table_name(table("queue"))
        .set_item(Some(expired))
        .send()
        .await
        .unwrap();
    let s = sync(&b1, "").await;
    assert_eq!(s.envelopes.len(), 1);
    assert_ne!(s.envelopes[0].id, "0000000000001:00:old:1");
}

#[tokio::test]
async fn a_device_cannot_read_or_ack_another_devices_queue() {
    let a1 = Device::registered("own", 0).await;
    let b1 = Device::registered("ownb", 0).await;
    let eve = Device::registered("eve", 0).await;
    a1.request(
        "PUT",
        "/v1/messages",
        Some(&send_body(&message_id(), &b1, &[&b1], b"x", false)),
    )
    .await;
    let ids: Vec<String> = sync(&b1, "")
        .await
        .envelopes
        .into_iter()
        .map(|e| e.id)
        .collect();
    // Eve acks Bob's envelope ids: her own queue is the only one she can touch.
    let r = eve
        .request("POST", "/v1/messages/ack", Some(&json!({ "ids": ids })))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(queue_len(&b1).await, 1);
    assert!(sync(&eve, "").await.envelopes.is_empty());
}

#[tokio::test]
async fn connected_device_gets_each_envelope_pushed_and_latency_is_recorded() {
    let a1 = Device::registered("push", 0).await;
    let b1 = Device::registered("pushb", 0).await;
    let mut socket = b1.connect().await.unwrap();
    let mut latencies = Vec::new();
    for i in 0..10u8 {
        let start = Instant::now();
        let r = a1
            .request(
                "PUT",
                "/v1/messages",
                Some(&send_body(&message_id(), &b1, &[&b1], &[i], false)),
            )
            .await;
        assert_eq!(r.status, 200);
        let push = socket
            .next_json(Duration::from_secs(5))
            .await
            .expect("pushed");
        latencies.push(start.elapsed());
        assert_eq!(push["type"], "envelope");
        assert_eq!(push["envelope"]["body"], json!(B64(vec![i])));
    }
    latencies.sort();
    // The 100 ms local target is measured (printed, and in BENCHMARKS.md), not timed here.
    println!(
        "send-to-push latency p50 {:?} max {:?}",
        latencies[5], latencies[9]
    );
    assert!(latencies[5] < Duration::from_secs(2));
}

#[tokio::test]
async fn bad_or_expired_connect_is_refused_and_a_nonce_is_single_use() {
    let b1 = Device::registered("wsauth", 0).await;
    let other = Device::registered("wsother", 0).await;
    // Signed by another device's key.
    let forged = cipherpost_protocol::ConnectAuth::sign(
        &mut OsRng,
        &other.identity,
        &b1.user,
        b1.device_id,
        now_ms(),
    );
    assert!(cipherpost_tests::connect_query(&forged.to_query())
        .await
        .is_err());
    // Expired.
    let old = cipherpost_protocol::ConnectAuth::sign(
        &mut OsRng,
        &b1.identity,
        &b1.user,
        b1.device_id,
        now_ms() - 400_000,
    );
    assert!(cipherpost_tests::connect_query(&old.to_query())
        .await
        .is_err());
    // Garbage.
    assert!(cipherpost_tests::connect_query("user=x").await.is_err());
    // A valid one works once.
    let ok = cipherpost_protocol::ConnectAuth::sign(
        &mut OsRng,
        &b1.identity,
        &b1.user,
        b1.device_id,
        now_ms(),
    );
    let s = cipherpost_tests::connect_query(&ok.to_query())
        .await
        .unwrap();
    s.close().await;
    assert!(
        cipherpost_tests::connect_query(&ok.to_query())
            .await
            .is_err(),
        "nonce reused"
    );
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let a1 = Device::registered("repl", 0).await;
    let b1 = Device::registered("replb", 0).await;
    let mut first = b1.connect().await.unwrap();
    let mut second = b1.connect().await.unwrap();
    assert!(
        first.closed_within(Duration::from_secs(5)).await,
        "the old socket is closed"
    );
    a1.request(
        "PUT",
        "/v1/messages",
        Some(&send_body(&message_id(), &b1, &[&b1], b"x", false)),
    )
    .await;
    assert_eq!(
        second.next_json(Duration::from_secs(5)).await.unwrap()["type"],
        "envelope"
    );
}

#[tokio::test]
async fn a_push_to_a_vanished_connection_forgets_it_and_the_envelope_stays_queued() {
    let a1 = Device::registered("gone", 0).await;
    let b1 = Device::registered("goneb", 0).await;
    // The device's record points at a connection the gateway does not have.
    let db = dynamo().await;
    db.update_item()
        .table_name(table("devices"))
        .key("user", AttributeValue::S(b1.user.to_string()))
        .key("device", AttributeValue::N(b1.device_id.to_string()))
        .update_expression("SET connection_id = :c")
        .expression_attribute_values(":c", AttributeValue::S("vanished0000AA=".into()))
        .send()
        .await
        .unwrap();
    let r = a1
        .request(
            "PUT",
            "/v1/messages",
            Some(&send_body(&message_id(), &b1, &[&b1], b"x", false)),
        )
        .await;
    assert_eq!(r.status, 200);
    let item = db
        .get_item()
        .table_name(table("devices"))
        .key("user", AttributeValue::S(b1.user.to_string()))
        .key("device", AttributeValue::N(b1.device_id.to_string()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert!(
        !item.contains_key("connection_id"),
        "the gone connection was forgotten"
    );
    assert_eq!(
        sync(&b1, "").await.envelopes.len(),
        1,
        "still queued for sync"
    );
}

#[tokio::test]
async fn an_envelope_too_large_for_a_push_becomes_a_sync_hint() {
    let a1 = Device::registered("hint", 0).await;
    let b1 = Device::registered("hintb", 0).await;
    let mut socket = b1.connect().await.unwrap();
    let r = a1
        .request(
            "PUT",
            "/v1/messages",
            Some(&send_body(
                &message_id(),
                &b1,
                &[&b1],
                &vec![1u8; 98_000],
                false,
            )),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let push = socket.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(push["type"], "sync");
    assert_eq!(sync(&b1, "").await.envelopes[0].body.0.len(), 98_000);
}

#[tokio::test]
async fn ephemeral_messages_reach_online_devices_only_are_never_stored_and_expire() {
    let (a1, a2, b1, b2, b3) = alice_and_bob().await;
    let mut online = b1.connect().await.unwrap();
    let body = send_body(&message_id(), &b1, &[&b1, &b2, &b3, &a2], b"typing", true);
    let r = a1.request("PUT", "/v1/messages", Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["queued"], 0);
    let push = online.next_json(Duration::from_secs(5)).await.unwrap();
    assert_eq!(push["type"], "ephemeral");
    for d in [&b1, &b2, &b3, &a2] {
        assert_eq!(queue_len(d).await, 0, "never stored");
    }
    // Signed 11 seconds ago: dropped, not pushed.
    let stale = serde_json::to_vec(&send_body(
        &message_id(),
        &b1,
        &[&b1, &b2, &b3, &a2],
        b"old",
        true,
    ))
    .unwrap();
    let r = a1
        .request_raw("PUT", "/v1/messages", stale, now_ms() - 11_000)
        .await;
    assert_eq!(r.status, 200);
    assert!(online.next_json(Duration::from_millis(500)).await.is_none());
}

#[tokio::test]
async fn a_revoked_devices_requests_are_401() {
    let a1 = Device::registered("revk", 0).await;
    let (a2, _) = a1.link_new_device(0).await;
    let new_key = cipherpost_protocol::AccountKey::generate(&mut OsRng);
    let rev = a1.account.revoke(
        &a1.user,
        a2.device_id,
        &a2.identity.public().signing,
        now_ms(),
    );
    let rot = a1
        .account
        .rotate_to(&a1.user, &new_key.public_key(), now_ms());
    let cert = new_key.certify(&a1.user, a1.device_id, &a1.identity.public(), now_ms());
    let body = json!({"revocation": B64(rev.to_bytes()), "rotation": B64(rot.to_bytes()), "certificates": [B64(cert.to_bytes())]});
    let r = a1
        .request(
            "DELETE",
            &format!("/v1/accounts/{}/devices/{}", a1.user, a2.device_id),
            Some(&body),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    for (m, p) in [("GET", "/v1/messages"), ("GET", "/v1/keys")] {
        assert_eq!(a2.request(m, p, None).await.status, 401);
    }
}
