//! Groups against the local cloud (issue #5, server side): create and read, admin-only changes,
//! versions, leaving, the member cap, and group sends (fan-out to every member device but the
//! sender's, 409 `group_changed` on a stale view, idempotent retries, forged headers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use cipherpost_backend::api::{devices_digest, Group, SyncResponse, B64};
use cipherpost_protocol::{
    DeviceAddress, DeviceId, GroupId, GroupSenderKeys, MessageId, OwnSenderKey, UserId,
};
use cipherpost_tests::{dynamo, now_ms, table, Answer, Device};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

fn random16() -> [u8; 16] {
    let mut m = [0u8; 16];
    OsRng.fill_bytes(&mut m);
    m
}

fn b64(bytes: &[u8]) -> String {
    cipherpost_tests::b64(bytes)
}

fn address(d: &Device) -> DeviceAddress {
    DeviceAddress::new(d.user.clone(), d.device_id)
}

fn group_of(a: &Answer) -> Group {
    serde_json::from_value(a.json.clone()).unwrap_or_else(|e| panic!("{e}: {:?}", a.json))
}

async fn create(admin: &Device, members: &[&Device]) -> ([u8; 16], Group) {
    let id = random16();
    let body = json!({
        "group_id": b64(&id),
        "members": members.iter().map(|m| m.user.as_str()).collect::<Vec<_>>(),
    });
    let a = admin.request("POST", "/v1/groups", Some(&body)).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    (id, group_of(&a))
}

async fn read(d: &Device, id: &[u8; 16]) -> Answer {
    d.request("GET", &format!("/v1/groups/{}", b64(id)), None)
        .await
}

async fn sync(d: &Device) -> SyncResponse {
    let a = d.request("GET", "/v1/messages?limit=500", None).await;
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

/// A sender-key message of `sender` for the group, and the send request carrying it.
struct GroupMessage {
    message_id: [u8; 16],
    request: Value,
}

fn group_message(
    key: &mut OwnSenderKey,
    group_id: &[u8; 16],
    version: u64,
    digest: &[u8; 32],
    content: &[u8],
) -> GroupMessage {
    let message_id = random16();
    let body = key.encrypt(&MessageId(message_id), content).unwrap();
    GroupMessage {
        message_id,
        request: json!({
            "message_id": b64(&message_id),
            "group": {
                "group_id": b64(group_id),
                "version": version,
                "devices_digest": b64(digest),
            },
            "body": b64(&body),
            "envelopes": [],
        }),
    }
}

fn sender_key(d: &Device, group_id: &[u8; 16]) -> OwnSenderKey {
    OwnSenderKey::generate(&mut OsRng, GroupId(*group_id), address(d))
}

/// Alice (2 devices), Bob (3 devices), Carol (1 device).
async fn three_users() -> (Vec<Device>, Vec<Device>, Vec<Device>) {
    let a1 = Device::registered("galice", 0).await;
    let (a2, r) = a1.link_new_device(0).await;
    assert_eq!(r.status, 201);
    let b1 = Device::registered("gbob", 0).await;
    let (b2, r) = b1.link_new_device(0).await;
    assert_eq!(r.status, 201);
    let (b3, r) = b1.link_new_device(0).await;
    assert_eq!(r.status, 201);
    let c1 = Device::registered("gcarol", 0).await;
    (vec![a1, a2], vec![b1, b2, b3], vec![c1])
}

#[tokio::test]
async fn create_and_read_a_group_members_only() {
    let (alice, bob, carol) = three_users().await;
    let dave = Device::registered("gdave", 0).await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    assert_eq!(g.group_id.0, id.to_vec());
    assert_eq!(g.version, 1);
    let mut users: Vec<&str> = vec![
        alice[0].user.as_str(),
        bob[0].user.as_str(),
        carol[0].user.as_str(),
    ];
    users.sort();
    assert_eq!(
        g.members
            .iter()
            .map(|m| m.user.as_str())
            .collect::<Vec<_>>(),
        users,
        "sorted by user"
    );
    for m in &g.members {
        assert_eq!(m.admin, m.user == alice[0].user.as_str(), "{m:?}");
    }
    assert_eq!(g.devices.len(), 6, "every device of every member");
    let mut sorted = g.devices.clone();
    sorted.sort();
    assert_eq!(g.devices, sorted, "sorted by (user, device_id)");

    // A member reads the same group; a non-member and an unknown id get the same 404.
    let r = read(&bob[1], &id).await;
    assert_eq!(r.status, 200);
    assert_eq!(group_of(&r), g);
    let r = read(&dave, &id).await;
    assert_eq!(r.status, 404, "{:?}", r.json);
    assert_eq!(r.json["error"], "unknown_group");
    let r = read(&alice[0], &random16()).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "unknown_group");
    let r = alice[0].request("GET", "/v1/groups/notanid", None).await;
    assert_eq!(r.status, 400);

    // The same id again, duplicates, unknown users and a short id are refused.
    let body = json!({"group_id": b64(&id), "members": []});
    let r = dave.request("POST", "/v1/groups", Some(&body)).await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "group_exists");
    let dup = json!({"group_id": b64(&random16()), "members": [bob[0].user.as_str(), bob[0].user.as_str()]});
    let r = alice[0].request("POST", "/v1/groups", Some(&dup)).await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    let ghost = cipherpost_tests::fresh_user("ghost");
    let unknown = json!({"group_id": b64(&random16()), "members": [bob[0].user.as_str(), ghost]});
    let r = alice[0].request("POST", "/v1/groups", Some(&unknown)).await;
    assert_eq!(r.status, 404, "{:?}", r.json);
    assert_eq!(r.json["error"], "unknown_user");
    assert!(r.json["message"].as_str().unwrap().contains(&ghost));
    let short = json!({"group_id": b64(&[1u8; 15]), "members": []});
    let r = alice[0].request("POST", "/v1/groups", Some(&short)).await;
    assert_eq!(r.status, 400);
    // The caller may list itself.
    let me = json!({"group_id": b64(&random16()), "members": [alice[0].user.as_str()]});
    let r = alice[0].request("POST", "/v1/groups", Some(&me)).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    assert_eq!(group_of(&r).members.len(), 1);
}

#[tokio::test]
async fn too_many_members_is_400_before_any_lookup() {
    let a = Device::registered("gmany", 0).await;
    // 1,001 names that are valid user ids but not accounts: the cap answers before any lookup.
    let names: Vec<String> = (0..1001).map(|i| format!("nobody-{i:05}")).collect();
    let body = json!({"group_id": b64(&random16()), "members": names});
    let r = a.request("POST", "/v1/groups", Some(&body)).await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "too_many_members");
}

#[tokio::test]
async fn only_admins_change_a_group_and_each_change_is_one_version() {
    let (alice, bob, carol) = three_users().await;
    let dave = Device::registered("gdave", 0).await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let gid = b64(&id);
    let add = json!({"users": [dave.user.as_str()]});

    // Bob is a member, not an admin: every change is 403 and changes nothing.
    let attempts = [
        (
            "POST",
            format!("/v1/groups/{gid}/members"),
            Some(add.clone()),
        ),
        (
            "DELETE",
            format!("/v1/groups/{gid}/members/{}", carol[0].user),
            None,
        ),
        (
            "PUT",
            format!("/v1/groups/{gid}/admins/{}", bob[0].user),
            None,
        ),
        (
            "DELETE",
            format!("/v1/groups/{gid}/admins/{}", alice[0].user),
            None,
        ),
    ];
    for (m, p, body) in &attempts {
        let r = bob[0].request(m, p, body.as_ref()).await;
        assert_eq!(r.status, 403, "{m} {p}: {:?}", r.json);
        assert_eq!(r.json["error"], "not_admin");
    }
    // Dave is not a member: 404, as if the group did not exist.
    for (m, p, body) in &attempts {
        let r = dave.request(m, p, body.as_ref()).await;
        assert_eq!(r.status, 404, "{m} {p}: {:?}", r.json);
        assert_eq!(r.json["error"], "unknown_group");
    }
    assert_eq!(group_of(&read(&alice[0], &id).await), g, "nothing changed");

    // Alice adds Dave: version 2, Dave a plain member with his device.
    let r = alice[0]
        .request("POST", &format!("/v1/groups/{gid}/members"), Some(&add))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let g2 = group_of(&r);
    assert_eq!(g2.version, 2);
    assert!(g2
        .members
        .iter()
        .any(|m| m.user == dave.user.as_str() && !m.admin));
    assert_eq!(g2.devices.len(), 7);
    // Adding members already there changes nothing.
    let r = alice[0]
        .request("POST", &format!("/v1/groups/{gid}/members"), Some(&add))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(group_of(&r).version, 2);
    // An unknown user to add is 404 and changes nothing.
    let ghost = json!({"users": [cipherpost_tests::fresh_user("ghost")]});
    let r = alice[0]
        .request("POST", &format!("/v1/groups/{gid}/members"), Some(&ghost))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "unknown_user");

    // Promote Bob (3), who may now remove Dave (4); demote Bob (5).
    let r = alice[0]
        .request(
            "PUT",
            &format!("/v1/groups/{gid}/admins/{}", bob[0].user),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(group_of(&r).version, 3);
    let r = bob[1]
        .request(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", dave.user),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let g4 = group_of(&r);
    assert_eq!(g4.version, 4);
    assert!(!g4.members.iter().any(|m| m.user == dave.user.as_str()));
    assert!(!g4.devices.iter().any(|d| d.user == dave.user.as_str()));
    assert_eq!(
        read(&dave, &id).await.status,
        404,
        "a removed member reads nothing"
    );
    let r = alice[0]
        .request(
            "DELETE",
            &format!("/v1/groups/{gid}/admins/{}", bob[0].user),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(group_of(&r).version, 5);

    // The last admin cannot be demoted; nobody removes themselves; a non-member is 404.
    let r = alice[0]
        .request(
            "DELETE",
            &format!("/v1/groups/{gid}/admins/{}", alice[0].user),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "last_admin");
    let r = alice[0]
        .request(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", alice[0].user),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    let r = alice[0]
        .request(
            "DELETE",
            &format!("/v1/groups/{gid}/members/{}", dave.user),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "unknown_member");
    assert_eq!(group_of(&read(&carol[0], &id).await).version, 5);
}

#[tokio::test]
async fn the_last_admin_leaves_only_with_a_successor_and_the_last_member_deletes() {
    let (alice, bob, carol) = three_users().await;
    let (id, _) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let leave = format!("/v1/groups/{}/leave", b64(&id));
    let r = alice[0].request("POST", &leave, Some(&json!({}))).await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "successor_required");
    let r = alice[0]
        .request("POST", &leave, Some(&json!({"successor": "nobody-here"})))
        .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        group_of(&read(&alice[0], &id).await).version,
        1,
        "unchanged"
    );

    let r = alice[0]
        .request(
            "POST",
            &leave,
            Some(&json!({"successor": bob[0].user.as_str()})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let g = group_of(&r);
    assert_eq!(g.version, 2);
    assert_eq!(g.members.len(), 2);
    assert!(g
        .members
        .iter()
        .any(|m| m.user == bob[0].user.as_str() && m.admin));
    assert_eq!(read(&alice[0], &id).await.status, 404);

    // Carol leaves (no successor needed), then Bob, the last member: the group is gone.
    let r = carol[0].request("POST", &leave, None).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(group_of(&r).version, 3);
    let r = bob[2].request("POST", &leave, None).await;
    assert_eq!(r.status, 204, "{:?}", r.json);
    assert_eq!(read(&bob[0], &id).await.status, 404);
}

#[tokio::test]
async fn a_group_message_reaches_every_member_device_but_the_senders_exactly_once() {
    let (alice, bob, carol) = three_users().await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let mut key = sender_key(&alice[0], &id);
    let distribution = key.distribution();
    let m = group_message(
        &mut key,
        &id,
        g.version,
        &devices_digest(&g.devices),
        b"hello group",
    );
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["queued"], 5);
    // A retry stores nothing new and answers the same.
    let again = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json, r.json);

    assert_eq!(queue_len(&alice[0]).await, 0, "never to the sending device");
    for d in alice[1..].iter().chain(&bob).chain(&carol) {
        let s = sync(d).await;
        assert_eq!(s.envelopes.len(), 1, "{}", d.device_key());
        let e = &s.envelopes[0];
        assert_eq!(e.message_id.0, m.message_id.to_vec());
        assert_eq!(e.sender.user, alice[0].user.as_str());
        assert_eq!(e.sender.device_id, alice[0].device_id.get());
        assert!(e.key.0.is_empty());
        assert_eq!(e.group.as_ref().map(|g| g.0.clone()), Some(id.to_vec()));
        // Each member device opens it with the distributed sender key.
        let mut keys = GroupSenderKeys::new();
        keys.process_distribution(&address(&alice[0]), &distribution, now_ms())
            .unwrap();
        let sender = DeviceAddress::new(
            UserId::new(&e.sender.user).unwrap(),
            DeviceId::new(e.sender.device_id).unwrap(),
        );
        let opened = keys
            .decrypt(&sender, &MessageId(m.message_id), &e.body.0, now_ms())
            .unwrap();
        assert_eq!(opened.content.as_slice(), b"hello group");
    }
}

#[tokio::test]
async fn a_stale_view_is_409_with_the_current_group_and_nothing_is_queued() {
    let (alice, bob, carol) = three_users().await;
    let dave = Device::registered("gdave", 0).await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let mut key = sender_key(&alice[0], &id);
    let gid = b64(&id);
    let r = alice[0]
        .request(
            "POST",
            &format!("/v1/groups/{gid}/members"),
            Some(&json!({"users": [dave.user.as_str()]})),
        )
        .await;
    assert_eq!(r.status, 200);
    let current = group_of(&r);

    // The version the sender knows is stale.
    let m = group_message(&mut key, &id, g.version, &devices_digest(&g.devices), b"x");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "group_changed");
    assert_eq!(
        serde_json::from_value::<Group>(r.json["group"].clone()).unwrap(),
        current
    );
    for d in alice.iter().chain(&bob).chain(&carol).chain([&dave]) {
        assert_eq!(
            queue_len(d).await,
            0,
            "nothing queued for {}",
            d.device_key()
        );
    }

    // Right version, but Bob linked a device since: the digest does not match.
    let (b4, rr) = bob[0].link_new_device(0).await;
    assert_eq!(rr.status, 201);
    let m = group_message(
        &mut key,
        &id,
        current.version,
        &devices_digest(&current.devices),
        b"y",
    );
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "group_changed");
    let now: Group = serde_json::from_value(r.json["group"].clone()).unwrap();
    assert_eq!(
        now.version, current.version,
        "linking is not a membership change"
    );
    assert!(now
        .devices
        .iter()
        .any(|d| d.user == b4.user.as_str() && d.device_id == b4.device_id.get()));
    for d in alice.iter().chain(&bob).chain(&carol).chain([&dave, &b4]) {
        assert_eq!(queue_len(d).await, 0);
    }

    // With the current view it goes through, to the new device too.
    let m = group_message(
        &mut key,
        &id,
        now.version,
        &devices_digest(&now.devices),
        b"z",
    );
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["queued"], 7);
    assert_eq!(queue_len(&b4).await, 1);
}

#[tokio::test]
async fn a_removed_members_devices_receive_nothing_after_removal() {
    let (alice, bob, carol) = three_users().await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let mut key = sender_key(&alice[0], &id);
    let m = group_message(&mut key, &id, g.version, &devices_digest(&g.devices), b"1");
    assert_eq!(
        alice[0]
            .request("PUT", "/v1/messages", Some(&m.request))
            .await
            .status,
        200
    );
    assert_eq!(queue_len(&carol[0]).await, 1);
    let r = alice[0]
        .request(
            "DELETE",
            &format!("/v1/groups/{}/members/{}", b64(&id), carol[0].user),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let g = group_of(&r);
    // The remaining members rotate (a new key id) and send on.
    let mut key = key.rotate(&mut OsRng);
    for i in 0..3u8 {
        let m = group_message(&mut key, &id, g.version, &devices_digest(&g.devices), &[i]);
        let r = alice[0]
            .request("PUT", "/v1/messages", Some(&m.request))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json);
        assert_eq!(r.json["queued"], 4);
    }
    assert_eq!(
        queue_len(&carol[0]).await,
        1,
        "only what was sent before removal"
    );
    assert_eq!(queue_len(&bob[2]).await, 4);
    // Carol can no longer send to the group either.
    let mut carol_key = sender_key(&carol[0], &id);
    let m = group_message(
        &mut carol_key,
        &id,
        g.version,
        &devices_digest(&g.devices),
        b"c",
    );
    let r = carol[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.json);
    assert_eq!(r.json["error"], "not_a_member");
}

#[tokio::test]
async fn forged_or_malformed_group_messages_are_400_and_queue_nothing() {
    let (alice, bob, carol) = three_users().await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let digest = devices_digest(&g.devices);
    let everyone: Vec<&Device> = alice.iter().chain(&bob).chain(&carol).collect();

    // Another sender in the header than the signing device (Bob's key, Alice signs; and
    // Alice's other device).
    let mut bobs = sender_key(&bob[0], &id);
    let m = group_message(&mut bobs, &id, g.version, &digest, b"x");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "invalid_group_message");
    let mut a2 = sender_key(&alice[1], &id);
    let m = group_message(&mut a2, &id, g.version, &digest, b"x");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);

    // Another group in the header.
    let other = random16();
    let mut key = sender_key(&alice[0], &other);
    let mut m = group_message(&mut key, &other, g.version, &digest, b"x");
    m.request["group"]["group_id"] = json!(b64(&id));
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "invalid_group_message");

    // Another message id in the header.
    let mut key = sender_key(&alice[0], &id);
    let mut m = group_message(&mut key, &id, g.version, &digest, b"x");
    m.request["message_id"] = json!(b64(&random16()));
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "invalid_group_message");

    // Not a sender-key message at all; envelopes with a group message; both `to` and `group`;
    // neither.
    let mut m = group_message(&mut key, &id, g.version, &digest, b"x");
    m.request["body"] = json!(b64(b"not a sender key message"));
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);
    let mut m = group_message(&mut key, &id, g.version, &digest, b"x");
    m.request["envelopes"] = json!([{"user": bob[0].user.as_str(), "device_id": bob[0].device_id.get(), "key": b64(&[1; 50])}]);
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "invalid_envelopes");
    let mut m = group_message(&mut key, &id, g.version, &digest, b"x");
    m.request["to"] = json!(bob[0].user.as_str());
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "invalid_recipient");
    let mut m = group_message(&mut key, &id, g.version, &digest, b"x");
    m.request.as_object_mut().unwrap().remove("group");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "invalid_recipient");

    // An unknown group.
    let mut key = sender_key(&alice[0], &other);
    let m = group_message(&mut key, &other, 1, &digest, b"x");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json["error"], "unknown_group");

    for d in everyone {
        assert_eq!(queue_len(d).await, 0, "{}", d.device_key());
    }
}

#[tokio::test]
async fn a_retry_after_a_half_done_send_finishes_it_with_the_same_queue_keys() {
    let (alice, bob, carol) = three_users().await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let mut key = sender_key(&alice[0], &id);
    let m = group_message(
        &mut key,
        &id,
        g.version,
        &devices_digest(&g.devices),
        b"half",
    );

    // What a first attempt that died after its first queue write leaves behind: the send
    // record (incomplete, with its server time) and one queue item.
    let server_ts = now_ms() - 5_000;
    let send_key = format!(
        "{}#{}#{}",
        alice[0].user,
        alice[0].device_id,
        hex_of(&m.message_id)
    );
    let ttl = server_ts / 1000 + 86_400;
    let db = dynamo().await;
    db.put_item()
        .table_name(table("sends"))
        .item("send_key", AttributeValue::S(send_key))
        .item("server_ts", AttributeValue::N(server_ts.to_string()))
        .item("queued", AttributeValue::N("5".into()))
        .item("ttl", AttributeValue::N(ttl.to_string()))
        .item("complete", AttributeValue::Bool(false))
        .send()
        .await
        .unwrap();
    let first = cipherpost_backend::store::device_key(bob[0].user.as_str(), bob[0].device_id.get());
    let sort = format!(
        "{server_ts:013}:{}:{}:{}",
        hex_of(&m.message_id),
        alice[0].user,
        alice[0].device_id
    );
    let body: B64 = serde_json::from_value(m.request["body"].clone()).unwrap();
    db.put_item()
        .table_name(table("queue"))
        .item("device_key", AttributeValue::S(first))
        .item("sort", AttributeValue::S(sort.clone()))
        .item(
            "message_id",
            AttributeValue::B(m.message_id.to_vec().into()),
        )
        .item(
            "sender_user",
            AttributeValue::S(alice[0].user.as_str().into()),
        )
        .item(
            "sender_device",
            AttributeValue::N(alice[0].device_id.to_string()),
        )
        .item("body", AttributeValue::B(body.0.into()))
        .item("server_ts", AttributeValue::N(server_ts.to_string()))
        .item("ttl", AttributeValue::N(ttl.to_string()))
        .item("group_id", AttributeValue::B(id.to_vec().into()))
        .send()
        .await
        .unwrap();

    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["server_ts"], server_ts, "the first attempt's time");
    assert_eq!(r.json["queued"], 5);
    for d in alice[1..].iter().chain(&bob).chain(&carol) {
        let s = sync(d).await;
        assert_eq!(s.envelopes.len(), 1, "exactly once: {}", d.device_key());
        assert_eq!(s.envelopes[0].id, sort);
    }
    // Now complete: a further retry answers the same without writing.
    let again = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(again.json, r.json);
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn online_members_get_group_messages_pushed_and_typing_is_never_stored() {
    let (alice, bob, carol) = three_users().await;
    let (id, g) = create(&alice[0], &[&bob[0], &carol[0]]).await;
    let digest = devices_digest(&g.devices);
    let mut socket = bob[1].connect().await.unwrap();
    let mut key = sender_key(&alice[0], &id);
    let m = group_message(&mut key, &id, g.version, &digest, b"pushed");
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&m.request))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    let push = socket
        .next_json(Duration::from_secs(5))
        .await
        .expect("pushed");
    assert_eq!(push["type"], "envelope");
    assert_eq!(push["envelope"]["group"], json!(b64(&id)));
    assert_eq!(push["envelope"]["key"], "");
    assert_eq!(push["envelope"]["message_id"], json!(b64(&m.message_id)));

    // Typing: pushed to the online device, queued nowhere.
    let mut t = group_message(&mut key, &id, g.version, &digest, b"typing");
    t.request["ephemeral"] = json!(true);
    let r = alice[0]
        .request("PUT", "/v1/messages", Some(&t.request))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["queued"], 0);
    let push = socket
        .next_json(Duration::from_secs(5))
        .await
        .expect("pushed");
    assert_eq!(push["type"], "ephemeral");
    assert_eq!(push["envelope"]["group"], json!(b64(&id)));
    for d in alice[1..].iter().chain(&bob).chain(&carol) {
        assert_eq!(
            queue_len(d).await,
            1,
            "only the stored message: {}",
            d.device_key()
        );
    }
    socket.close().await;
}
