//! Device revocation end to end (issue #7): real clients against the local cloud, the
//! revoked device's queue and prekeys read straight from DynamoDB through the SDK, and a server
//! that keeps listing a revoked device (its item edited back to active through the SDK).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use cipherpost_client::{ClientError, Event};
use support::{account, link, marked, Dev};

async fn dynamo() -> aws_sdk_dynamodb::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&sdk)
}

fn table(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.into())
}

/// Items in `table`'s partition `user#device` (prekeys or queue).
async fn items(db: &aws_sdk_dynamodb::Client, table: &str, user: &str, device: u32) -> usize {
    db.query()
        .table_name(table)
        .key_condition_expression("device_key = :k")
        .expression_attribute_values(":k", AttributeValue::S(format!("{user}#{device}")))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .items()
        .len()
}

fn queue_table() -> String {
    table("CIPHERPOST_TABLE_QUEUE", "cipherpost-queue")
}

fn prekey_table() -> String {
    table("CIPHERPOST_TABLE_PREKEYS", "cipherpost-prekeys")
}

fn device_id(d: &Dev) -> u32 {
    d.c.whoami().unwrap().1
}

fn notices(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Notice { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn texts(d: &Dev, conversation: &str) -> Vec<String> {
    d.texts(conversation).into_iter().map(|(t, _)| t).collect()
}

async fn send(from: &mut Dev, to: &str, text: &str) -> String {
    let id = from.c.queue_text(to, text).unwrap();
    from.c.flush_outbox().await.unwrap();
    id
}

#[tokio::test]
async fn revoking_a_device_rotates_the_key_locks_it_out_and_contacts_follow() {
    let db = dynamo().await;
    let mut a1 = account("rva").await;
    let mut a2 = link(&mut a1).await;
    let mut a3 = link(&mut a1).await;
    let mut a4 = link(&mut a1).await;
    let mut bob = account("rvb").await;
    let (alice, bob_user) = (a1.user(), bob.user());
    let (d3, d4) = (device_id(&a3), device_id(&a4));

    // bob talks to every device of alice, in 1:1 and in a group.
    send(&mut bob, &alice, &marked("hello")).await;
    let gid = bob
        .c
        .group_create("g", std::slice::from_ref(&alice))
        .await
        .unwrap()
        .group_id;
    bob.c
        .queue_group_text(&gid, &marked("group before"))
        .unwrap();
    bob.c.flush_outbox().await.unwrap();
    for d in [&mut a1, &mut a2, &mut a3, &mut a4] {
        d.sync().await;
        assert!(texts(d, &bob_user).contains(&marked("hello")));
    }
    let before = bob.c.verify(&alice, false).await.unwrap().safety_number;

    // a3 is offline with a queued message and unused prekeys on the server.
    send(&mut bob, &alice, &marked("while a3 sleeps")).await;
    assert!(items(&db, &queue_table(), &alice, d3).await > 0);
    a3.c.maintain_prekeys(true).await.unwrap();
    assert!(items(&db, &prekey_table(), &alice, d3).await > 0);

    // A device cannot revoke itself; an unknown id is a readable error.
    assert!(matches!(
        a1.c.revoke_device(device_id(&a1)).await,
        Err(ClientError::Usage(_))
    ));
    let unknown = a1.c.revoke_device(7).await.unwrap_err();
    assert!(
        unknown.to_string().contains("not an active device"),
        "{unknown}"
    );

    // a1 revokes a3.
    let r = a1.c.revoke_device(d3).await.unwrap();
    assert_eq!(r.device_id, d3);
    let mut want = vec![device_id(&a1), device_id(&a2), d4];
    want.sort_unstable();
    assert_eq!(r.remaining_devices, want);

    // a3's requests get 401; its queue and prekeys are gone from DynamoDB.
    match a3.c.sync().await {
        Err(ClientError::Server { status: 401, .. }) => {}
        other => panic!("a revoked device's sync: {other:?}"),
    }
    assert_eq!(items(&db, &queue_table(), &alice, d3).await, 0);
    assert_eq!(items(&db, &prekey_table(), &alice, d3).await, 0);

    // a2 takes the new account key and shows the revocation.
    let ev = a2.sync().await;
    let n = notices(&ev);
    assert!(
        n.iter()
            .any(|t| t.contains(&format!("device {d3} of your account was revoked"))),
        "{n:?}"
    );

    // a4 is online: when a2 (with the key it received) revokes it, its socket closes and its
    // reconnection is refused, which ends its watch with the 401.
    a4.sync().await;
    let watch = tokio::time::timeout(
        Duration::from_secs(90),
        a4.c.watch(Some(Duration::from_secs(120)), |_| {}),
    );
    let revoke = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        a2.c.revoke_device(d4).await.unwrap()
    };
    let (ended, r) = tokio::join!(watch, revoke);
    assert_eq!(r.remaining_devices.len(), 2);
    match ended.expect("the revoked device's watch did not end") {
        Err(ClientError::Server { status: 401, .. }) => {}
        other => panic!("the revoked device's watch: {other:?}"),
    }
    let ev = a1.sync().await;
    assert!(
        notices(&ev)
            .iter()
            .any(|t| t.contains(&format!("device {d4} of your account was revoked"))),
        "{ev:?}"
    );

    // bob's next send gets a 409, follows both rotations from the key he pinned, sees the
    // safety-number change and delivers to the two remaining devices only.
    let id = send(&mut bob, &alice, &marked("after")).await;
    let (queued, _) = bob.c.store().outgoing_status(&id).unwrap();
    assert!(!queued, "sent");
    let n = bob.c.take_notices().unwrap();
    let n = notices(&n);
    assert!(
        n.iter()
            .any(|t| t.contains(&format!("the safety number with {alice} changed"))),
        "{n:?}"
    );
    let v = bob.c.verify(&alice, false).await.unwrap();
    assert_ne!(v.safety_number, before);
    assert!(
        !v.blocked,
        "a rotation signed by the pinned key needs no acceptance"
    );
    for d in [&mut a1, &mut a2] {
        d.sync().await;
        assert!(texts(d, &bob_user).contains(&marked("after")));
    }
    // Both remaining devices hold the same new key: their safety numbers with bob agree.
    assert_eq!(
        a1.c.verify(&bob_user, false).await.unwrap().safety_number,
        v.safety_number
    );
    assert_eq!(
        a2.c.verify(&bob_user, false).await.unwrap().safety_number,
        v.safety_number
    );

    // The group goes on under a new sender key for the remaining devices.
    bob.c
        .queue_group_text(&gid, &marked("group after"))
        .unwrap();
    bob.c.flush_outbox().await.unwrap();
    for d in [&mut a1, &mut a2] {
        d.sync().await;
        let h = texts(d, &format!("group:{gid}"));
        assert!(h.contains(&marked("group after")), "{h:?}");
    }
    // alice's remaining devices still write to bob.
    send(&mut a2, &bob_user, &marked("still here")).await;
    bob.sync().await;
    assert!(texts(&bob, &alice).contains(&marked("still here")));
}

#[tokio::test]
async fn a_revoked_device_the_server_keeps_listing_is_never_encrypted_to() {
    let db = dynamo().await;
    let mut a1 = account("rla").await;
    let mut a2 = link(&mut a1).await;
    let mut bob = account("rlb").await;
    let (alice, bob_user) = (a1.user(), bob.user());
    let d2 = device_id(&a2);
    send(&mut bob, &alice, &marked("hello")).await;
    let gid = bob
        .c
        .group_create("g", std::slice::from_ref(&alice))
        .await
        .unwrap()
        .group_id;
    bob.c
        .queue_group_text(&gid, &marked("group before"))
        .unwrap();
    bob.c.flush_outbox().await.unwrap();
    a2.sync().await;
    assert!(texts(&a2, &format!("group:{gid}")).contains(&marked("group before")));

    a1.c.revoke_device(d2).await.unwrap();
    // The server turns hostile: the revoked device is active again (it can sign in, it is
    // listed in the keys and in the group, and sends must address it).
    db.update_item()
        .table_name(table("CIPHERPOST_TABLE_DEVICES", "cipherpost-devices"))
        .key("user", AttributeValue::S(alice.clone()))
        .key("device", AttributeValue::N(d2.to_string()))
        .update_expression("SET #st = :a")
        .expression_attribute_names("#st", "status")
        .expression_attribute_values(":a", AttributeValue::S("active".into()))
        .send()
        .await
        .unwrap();

    // bob fetches alice's keys: the revocation verifies under the key he pinned, so the device
    // the server lists is refused.
    bob.c.refresh_devices(&alice).await.unwrap();
    let n = bob.c.take_notices().unwrap();
    assert!(
        notices(&n)
            .iter()
            .any(|t| t.contains(&format!("device {d2} of {alice} was revoked"))),
        "{n:?}"
    );
    // Sends that the server will only take with an envelope for the revoked device do not go.
    let id = bob.c.queue_text(&alice, &marked("secret")).unwrap();
    let _ = bob.c.flush_outbox().await;
    let (queued, _) = bob.c.store().outgoing_status(&id).unwrap();
    assert!(
        queued,
        "kept in the outbox, not sealed for the revoked device"
    );
    bob.c
        .queue_group_text(&gid, &marked("group secret"))
        .unwrap();
    let _ = bob.c.flush_outbox().await;

    // The revoked device, signed in again by the hostile server, reads none of it.
    let _ = a2.c.sync().await;
    assert!(!texts(&a2, &bob_user).contains(&marked("secret")));
    let g = texts(&a2, &format!("group:{gid}"));
    assert!(!g.contains(&marked("group secret")), "{g:?}");
    assert!(a2
        .c
        .store()
        .all_messages()
        .unwrap()
        .iter()
        .all(|m| !m.text.contains("secret")));
}
