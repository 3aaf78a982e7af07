//! Group chats end to end against the local cloud: separate client profiles, the real group
//! routes and fan-out, sender keys over the pairwise sessions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
#![allow(
    clippy::cloned_ref_to_slice_refs,
    clippy::unnecessary_to_owned,
    clippy::double_ended_iterator_last
)]

mod support;

use std::collections::BTreeMap;

use cipherpost_client::{api::DeviceRef, Client, ClientError};
use support::*;

/// The group's texts on one device: (sender user, text).
fn group_texts(d: &Dev, group: &str) -> Vec<(String, String)> {
    d.c.store()
        .history(&format!("group:{group}"), 100_000)
        .unwrap()
        .into_iter()
        .map(|m| (m.sender_user, m.text))
        .collect()
}

async fn sync_all(devs: &mut [&mut Dev]) {
    for d in devs.iter_mut() {
        d.sync().await;
    }
}

/// The group send of message `id_hex` a proxy recorded (the last attempt): (message id,
/// sender-key message).
fn captured(p: &Proxy, id_hex: &str) -> (Vec<u8>, Vec<u8>) {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let id = hex::decode(id_hex).unwrap();
    p.bodies("PUT", "/v1/messages")
        .into_iter()
        .filter(|b| b.get("group").is_some())
        .map(|b| {
            let field = |k: &str| URL_SAFE_NO_PAD.decode(b[k].as_str().unwrap()).unwrap();
            (field("message_id"), field("body"))
        })
        .filter(|(mid, _)| *mid == id)
        .last()
        .expect("the group send was recorded")
}

#[tokio::test]
async fn five_users_every_device_reads_every_message_exactly_once() {
    // 5 users with 2 or 3 devices each: 12 devices.
    let mut users: Vec<Vec<Dev>> = Vec::new();
    for (i, n) in [2usize, 3, 2, 3, 2].into_iter().enumerate() {
        let mut first = account(&format!("g5u{i}")).await;
        let mut devs = Vec::new();
        for _ in 1..n {
            devs.push(link(&mut first).await);
        }
        devs.insert(0, first);
        users.push(devs);
    }
    let names: Vec<String> = users.iter().map(|u| u[0].user()).collect();
    let info = users[0][0]
        .c
        .group_create("five", &names[1..].to_vec())
        .await
        .unwrap();
    assert_eq!(info.members.len(), 5);
    assert_eq!(info.devices, 12);
    let gid = info.group_id.clone();
    users[0][0].c.flush_outbox().await.unwrap();
    // Every user sends one message, from a different device each time.
    for (i, u) in users.iter_mut().enumerate() {
        let n = u.len();
        let d = &mut u[i % n];
        d.sync().await; // learns the group and its name, and the senders' keys
        d.c.queue_group_text(&gid, &marked(&format!("hello from {i}")))
            .unwrap();
        d.c.flush_outbox().await.unwrap();
    }
    for u in users.iter_mut() {
        for d in u.iter_mut() {
            d.sync().await;
        }
    }
    let mut expected: Vec<(String, String)> = (0..5)
        .map(|i| (names[i].clone(), marked(&format!("hello from {i}"))))
        .collect();
    expected.sort();
    for u in &users {
        for d in u {
            let mut got = group_texts(d, &gid);
            got.sort();
            assert_eq!(got, expected, "device {:?}", d.c.whoami());
            assert_no_duplicates(d, &format!("group:{gid}"));
            // The name travelled end to end.
            assert_eq!(d.c.groups().unwrap()[0].name, "five");
        }
    }
}

#[tokio::test]
async fn a_removed_member_cannot_read_what_follows() {
    let mut a1 = account("gra").await;
    let mut b1 = account("grb").await;
    let mut b2 = link(&mut b1).await;
    let mut c1 = account("grc").await;
    let (bob, carol) = (b1.user(), c1.user());
    let info =
        a1.c.group_create("g", &[bob.clone(), carol.clone()])
            .await
            .unwrap();
    let gid = info.group_id;
    a1.c.flush_outbox().await.unwrap();
    sync_all(&mut [&mut b1, &mut b2, &mut c1]).await;
    // Before the removal carol reads bob's message.
    b1.c.queue_group_text(&gid, &marked("before")).unwrap();
    b1.c.flush_outbox().await.unwrap();
    c1.sync().await;
    assert_eq!(
        group_texts(&c1, &gid),
        vec![(bob.clone(), marked("before"))]
    );

    // alice removes carol; bob's client learns it (from alice's update or a 409) and seals
    // with a new sender key that carol is never given.
    a1.c.group_remove(&gid, &carol).await.unwrap();
    a1.c.flush_outbox().await.unwrap();
    let proxy = Proxy::start(ProxyMode::Record).await;
    let mut b1p = Dev {
        c: Client::open(b1.dir.path(), &proxy.url, None).unwrap(),
        dir: tempfile::TempDir::new().unwrap(),
    };
    let after_id = b1p.c.queue_group_text(&gid, &marked("after")).unwrap();
    b1p.c.flush_outbox().await.unwrap();
    b1p.sync().await;
    a1.sync().await;
    assert!(group_texts(&a1, &gid).contains(&(bob.clone(), marked("after"))));

    // carol's queue received nothing, and the captured ciphertext does not open with her keys.
    c1.sync().await;
    assert_eq!(
        group_texts(&c1, &gid),
        vec![(bob.clone(), marked("before"))]
    );
    let (mid, wire) = captured(&proxy, &after_id);
    let sender = DeviceRef {
        user: bob.clone(),
        device_id: b1.c.whoami().unwrap().1,
    };
    let err =
        c1.c.try_open_group_message(&gid, &sender, &mid, &wire)
            .unwrap_err();
    assert!(err.to_string().contains("key"), "{err}");
    // carol's client, told of the group, sees she is no longer a member.
    let info = c1.c.group_info(&gid).await.unwrap();
    assert!(!info.active);
    assert!(matches!(
        c1.c.queue_group_text(&gid, &marked("still here?")),
        Err(ClientError::Usage(_))
    ));
}

#[tokio::test]
async fn only_admins_change_the_group() {
    let mut a1 = account("gaa").await;
    let mut b1 = account("gab").await;
    let c1 = account("gac").await;
    let d1 = account("gad").await;
    let (bob, carol, dave) = (b1.user(), c1.user(), d1.user());
    let gid =
        a1.c.group_create("admins", &[bob.clone(), carol.clone()])
            .await
            .unwrap()
            .group_id;
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let before = b1.c.group_info(&gid).await.unwrap();
    for result in [
        b1.c.group_add(&gid, &[dave.clone()]).await,
        b1.c.group_remove(&gid, &carol).await,
        b1.c.group_set_admin(&gid, &carol, true).await,
    ] {
        match result {
            Err(ClientError::Server { status: 403, .. }) => {}
            other => panic!("a non-admin changed the group: {other:?}"),
        }
    }
    let after = b1.c.group_info(&gid).await.unwrap();
    assert_eq!(before.version, after.version);
    assert_eq!(before.members, after.members);
    // Once promoted, bob may.
    a1.c.group_set_admin(&gid, &bob, true).await.unwrap();
    let info = b1.c.group_add(&gid, &[dave.clone()]).await.unwrap();
    assert!(info.members.iter().any(|m| m.user == dave));
    // Demoted again, alice is the only admin: she cannot leave without naming another.
    a1.c.group_set_admin(&gid, &bob, false).await.unwrap();
    match a1.c.group_leave(&gid, None).await {
        Err(ClientError::Server { status: 409, .. }) => {}
        other => panic!("the last admin left alone: {other:?}"),
    }
    a1.c.group_leave(&gid, Some(&carol)).await.unwrap();
    let info = b1.c.group_info(&gid).await.unwrap();
    assert!(info.members.iter().any(|m| m.user == carol && m.admin));
    assert!(!info.members.iter().any(|m| m.user == a1.user()));
}

#[tokio::test]
async fn a_member_added_later_cannot_read_earlier_messages() {
    let mut a1 = account("gla").await;
    let mut b1 = account("glb").await;
    let mut d1 = account("gld").await;
    let (bob, dave) = (b1.user(), d1.user());
    let proxy = Proxy::start(ProxyMode::Record).await;
    let mut ap = Dev {
        c: Client::open(a1.dir.path(), &proxy.url, None).unwrap(),
        dir: tempfile::TempDir::new().unwrap(),
    };
    let gid =
        ap.c.group_create("late", &[bob.clone()])
            .await
            .unwrap()
            .group_id;
    let early_id = ap.c.queue_group_text(&gid, &marked("early")).unwrap();
    ap.c.flush_outbox().await.unwrap();
    ap.c.group_add(&gid, &[dave.clone()]).await.unwrap();
    ap.c.queue_group_text(&gid, &marked("late")).unwrap();
    ap.c.flush_outbox().await.unwrap();
    b1.sync().await;
    d1.sync().await;
    let alice = a1.user();
    assert_eq!(
        group_texts(&b1, &gid),
        vec![
            (alice.clone(), marked("early")),
            (alice.clone(), marked("late"))
        ]
    );
    assert_eq!(
        group_texts(&d1, &gid),
        vec![(alice.clone(), marked("late"))]
    );
    // The early message, captured, does not open with dave's keys: he was given the sender
    // key at a later iteration.
    let sender = DeviceRef {
        user: alice.clone(),
        device_id: a1.c.whoami().unwrap().1,
    };
    let (mid, wire) = captured(&proxy, &early_id);
    assert!(d1
        .c
        .try_open_group_message(&gid, &sender, &mid, &wire)
        .is_err());
    let _ = &mut a1;
}

#[tokio::test]
async fn a_stale_member_list_gets_409_and_the_client_recovers() {
    let mut a1 = account("gsa").await;
    let mut b1 = account("gsb").await;
    let mut e1 = account("gse").await;
    let mut e2 = link(&mut e1).await;
    let (bob, erin) = (b1.user(), e1.user());
    let gid =
        a1.c.group_create("stale", &[bob.clone()])
            .await
            .unwrap()
            .group_id;
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let v_before = b1.c.groups().unwrap()[0].version;
    // alice adds erin; bob's stored membership is now stale.
    a1.c.group_add(&gid, &[erin.clone()]).await.unwrap();
    let proxy = Proxy::start(ProxyMode::Record).await;
    let mut bp = Dev {
        c: Client::open(b1.dir.path(), &proxy.url, None).unwrap(),
        dir: tempfile::TempDir::new().unwrap(),
    };
    bp.c.queue_group_text(&gid, &marked("to everyone")).unwrap();
    assert_eq!(bp.c.flush_outbox().await.unwrap(), 1);
    // The first group send named the old version and was refused; the client recovered.
    let versions: Vec<u64> = proxy
        .bodies("PUT", "/v1/messages")
        .iter()
        .filter_map(|b| b["group"]["version"].as_u64())
        .collect();
    assert!(versions.len() >= 2, "{versions:?}");
    assert_eq!(versions[0], v_before);
    assert!(versions.last().unwrap() > &v_before);
    sync_all(&mut [&mut e1, &mut e2, &mut a1]).await;
    for d in [&e1, &e2, &a1] {
        assert_eq!(
            group_texts(d, &gid)
                .into_iter()
                .filter(|(u, _)| u == &bob)
                .collect::<Vec<_>>(),
            vec![(bob.clone(), marked("to everyone"))]
        );
    }
    let counts: BTreeMap<String, usize> = [&e1, &e2]
        .iter()
        .map(|d| (format!("{:?}", d.c.whoami()), group_texts(d, &gid).len()))
        .collect();
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}
