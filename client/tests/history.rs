//! History transfer to a newly linked device (issue #7) end to end against the local cloud:
//! the approving device uploads an encrypted archive to S3 and sends its pointer over the
//! pairwise session; the new device downloads, verifies and imports it. Tampering happens on
//! the stored object directly in the S3 endpoint (moto, path-style: `AWS_ENDPOINT_URL`, bucket
//! `CIPHERPOST_BUCKET`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::collections::BTreeSet;

use cipherpost_client::{Client, ClientError, Event};
use support::*;

/// A conversation as the store shows it: (message id, sender, outgoing, text, state), in order.
fn conversation(d: &Dev, conv: &str) -> Vec<(String, String, bool, String, String)> {
    d.c.store()
        .history(conv, 100_000)
        .unwrap()
        .into_iter()
        .map(|m| (m.message_id, m.sender_user, m.outgoing, m.text, m.state))
        .collect()
}

fn db(d: &Dev) -> rusqlite::Connection {
    rusqlite::Connection::open(d.dir.path().join("cipherpost.db")).unwrap()
}

fn count(d: &Dev, sql: &str) -> i64 {
    db(d).query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Pinned contact keys, without the account's own.
fn pinned(d: &Dev) -> BTreeSet<(String, Vec<u8>)> {
    let me = d.user();
    let conn = db(d);
    let mut st = conn
        .prepare(
            "SELECT user, pinned_key FROM contacts WHERE pinned_key IS NOT NULL AND user != ?1",
        )
        .unwrap();
    let rows = st
        .query_map([me], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<BTreeSet<_>, _>>()
        .unwrap();
    rows
}

fn notices(ev: &[Event]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Notice { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Starts a link of a new device to `existing`'s account: the new device's code approved with
/// or without history. The new device has not synced yet.
async fn approve(existing: &mut Dev, history: bool) -> (Dev, cipherpost_client::LinkApproval) {
    let mut d = Dev::new();
    let code = d.c.link_request(&existing.user()).unwrap();
    assert!(matches!(d.c.sync().await, Err(ClientError::NotLinked)));
    let approval = existing.c.link_approve_with(&code, history).await.unwrap();
    (d, approval)
}

#[tokio::test]
async fn a_linked_device_shows_the_same_conversations_then_talks_with_its_own_keys() {
    let mut a1 = account("hal").await;
    let mut b1 = account("hbo").await;
    let mut c1 = account("hca").await;
    let (alice, bob, carol) = (a1.user(), b1.user(), c1.user());

    // 1:1 both ways, with receipts and reads.
    for i in 0..3 {
        a1.c.queue_text(&bob, &marked(&format!("alice to bob {i}")))
            .unwrap();
    }
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    b1.c.queue_text(&alice, &marked("bob to alice 1")).unwrap();
    b1.c.queue_text(&alice, &marked("bob to alice 2")).unwrap();
    b1.c.flush_outbox().await.unwrap();
    b1.c.read(&alice).await.unwrap();
    a1.sync().await;
    a1.c.read(&bob).await.unwrap();
    c1.c.queue_text(&alice, &marked("carol to alice, unread"))
        .unwrap();
    c1.c.flush_outbox().await.unwrap();
    a1.sync().await;
    // A group with a message each way.
    let info =
        a1.c.group_create("history team", &[bob.clone(), carol.clone()])
            .await
            .unwrap();
    let gid = info.group_id.clone();
    a1.c.queue_group_text(&gid, &marked("group hello")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    b1.c.queue_group_text(&gid, &marked("group reply from bob"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    a1.sync().await;
    c1.sync().await;
    // Settings.
    a1.c.set_read_receipts(false).unwrap();
    a1.c.set_auto_download(false).unwrap();

    let group_conv = format!("group:{gid}");
    let bob_conv = conversation(&a1, &bob);
    assert_eq!(bob_conv.len(), 5);
    assert_eq!(bob_conv[0].4, "read", "{bob_conv:?}");
    assert_eq!(bob_conv[4].4, "read", "{bob_conv:?}");
    assert_eq!(conversation(&a1, &carol)[0].4, "received");
    assert_eq!(conversation(&a1, &group_conv).len(), 2);

    let (mut a2, approval) = approve(&mut a1, true).await;
    let sent = approval.history.expect("history sent");
    assert_eq!(sent.messages, 8);
    let ev = a2.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    let n = notices(&ev);
    assert!(
        n.iter()
            .any(|t| t.contains("history imported") && t.contains("8 messages")),
        "{n:?}"
    );
    assert!(!a2.c.history_pending().unwrap());

    // The same conversations: every message, in order, with its state.
    for conv in [&bob, &carol, &group_conv] {
        assert_eq!(conversation(&a2, conv), conversation(&a1, conv), "{conv}");
        assert_no_duplicates(&a2, conv);
    }
    let names: Vec<(String, String)> =
        a2.c.groups()
            .unwrap()
            .into_iter()
            .map(|g| (g.group_id, g.name))
            .collect();
    assert_eq!(names, vec![(gid.clone(), "history team".to_string())]);
    assert_eq!(a2.c.conversation_title(&group_conv), "#history team");
    assert_eq!(pinned(&a2), pinned(&a1));
    assert!(pinned(&a2).iter().any(|(u, _)| *u == bob));
    assert!(!a2.c.read_receipts().unwrap());
    assert!(!a2.c.auto_download().unwrap());
    // Unread stays unread, read stays read.
    let inbox = a2.c.store().inbox().unwrap();
    let unread = |c: &str| inbox.iter().find(|(conv, ..)| conv == c).unwrap().1;
    assert_eq!((unread(&carol), unread(&bob)), (1, 0));
    // No session or sender-key state came across: the only session is the one with the
    // approving device that carried the link itself.
    assert_eq!(
        count(
            &a2,
            &format!("SELECT COUNT(*) FROM sessions WHERE user != '{alice}'")
        ),
        0
    );
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM sender_keys"), 0);
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM own_sender_keys"), 0);

    // The new device sends and receives with its own sessions and a fresh sender key.
    a2.c.queue_text(&bob, &marked("from alice's new device"))
        .unwrap();
    a2.c.flush_outbox().await.unwrap();
    b1.sync().await;
    assert_eq!(
        b1.texts(&alice).last().unwrap().0,
        marked("from alice's new device")
    );
    b1.c.queue_text(&alice, &marked("welcome, new device"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    a2.sync().await;
    assert_eq!(
        a2.texts(&bob).last().unwrap().0,
        marked("welcome, new device")
    );
    assert!(
        count(
            &a2,
            &format!("SELECT COUNT(*) FROM sessions WHERE user = '{bob}'")
        ) > 0
    );

    a2.c.queue_group_text(&gid, &marked("group from the new device"))
        .unwrap();
    a2.c.flush_outbox().await.unwrap();
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM own_sender_keys"), 1);
    b1.sync().await;
    c1.sync().await;
    for d in [&b1, &c1] {
        assert_eq!(
            d.texts(&group_conv).last().unwrap().0,
            marked("group from the new device")
        );
    }
    b1.c.queue_group_text(&gid, &marked("group to everyone, new device included"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    a2.sync().await;
    a2.sync().await;
    assert_eq!(
        a2.texts(&group_conv).last().unwrap().0,
        marked("group to everyone, new device included")
    );
    for conv in [&bob, &group_conv] {
        assert_no_duplicates(&a2, conv);
    }
}

#[tokio::test]
async fn no_history_sends_none() {
    let mut a1 = account("hnl").await;
    let mut b1 = account("hnb").await;
    let bob = b1.user();
    a1.c.queue_text(&bob, &marked("before the link")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let (mut a2, approval) = approve(&mut a1, false).await;
    assert!(approval.history.is_none() && approval.history_error.is_none());
    let ev = a2.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    assert!(!a2.c.history_pending().unwrap());
    assert!(a2.texts(&bob).is_empty());
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM messages"), 0);
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM groups"), 0);
    // What is new reaches it as usual.
    b1.c.queue_text(&a1.user(), &marked("after the link"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    a2.sync().await;
    assert_eq!(
        a2.texts(&bob),
        vec![(marked("after the link"), "received".to_string())]
    );
}

#[tokio::test]
async fn a_tampered_or_truncated_archive_imports_nothing_and_redelivery_does_not_duplicate() {
    let mut a1 = account("htl").await;
    let b1 = account("htb").await;
    let bob = b1.user();
    // Long texts: the archive spans several 64 KiB segments, so records of the first segments
    // are applied before a tampered last one fails.
    for i in 0..30 {
        a1.c.queue_text(
            &bob,
            &marked(&format!("{i:02} {}", "long text ".repeat(500))),
        )
        .unwrap();
    }
    a1.c.flush_outbox().await.unwrap();
    let (mut a2, approval) = approve(&mut a1, true).await;
    let device = approval.device_id;
    let sent = approval.history.expect("history sent");
    assert!(sent.bytes > 2 * 65536, "{}", sent.bytes);

    // A flipped byte near the end of the stored object.
    let mut object = get_object(&sent.archive_id).await;
    let at = object.len() - 30;
    object[at] ^= 0x40;
    put_object(&sent.archive_id, object).await;
    let ev = a2.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    let n = notices(&ev);
    assert!(
        n.iter()
            .any(|t| t.contains("refused and nothing of it was imported") && t.contains("verify")),
        "{n:?}"
    );
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM messages"), 0);
    assert!(!a2.c.history_pending().unwrap());

    // A truncated object.
    let sent = a1.c.send_history(device).await.unwrap();
    let object = get_object(&sent.archive_id).await;
    put_object(&sent.archive_id, object[..object.len() - 1000].to_vec()).await;
    let n = notices(&a2.sync().await);
    assert!(
        n.iter().any(
            |t| t.contains("refused and nothing of it was imported") && t.contains("truncated")
        ),
        "{n:?}"
    );
    assert_eq!(count(&a2, "SELECT COUNT(*) FROM messages"), 0);

    // The genuine archive, fetched through a proxy that loses the acknowledgements: the
    // pointer is delivered again on the next sync and imported once.
    a1.c.send_history(device).await.unwrap();
    let proxy = Proxy::start(ProxyMode::DropAcks).await;
    a2.c = Client::open(a2.dir.path(), &proxy.url, None).unwrap();
    assert!(a2.c.sync().await.is_err(), "the ack was dropped");
    a2.reopen();
    a2.sync().await;
    assert!(!a2.c.history_pending().unwrap());
    assert_eq!(conversation(&a2, &bob), conversation(&a1, &bob));
    assert_eq!(conversation(&a2, &bob).len(), 30);

    // Sent again: imported again, nothing duplicated.
    a1.c.send_history(device).await.unwrap();
    let n = notices(&a2.sync().await);
    assert!(
        n.iter()
            .any(|t| t.contains("0 messages (30 were here already)")),
        "{n:?}"
    );
    assert_eq!(conversation(&a2, &bob), conversation(&a1, &bob));
    assert_no_duplicates(&a2, &bob);

    // Bad input changes nothing: no history to a device that is not the account's, or to
    // this device itself.
    let me = a1.c.whoami().unwrap().1;
    assert!(matches!(
        a1.c.send_history(me).await,
        Err(ClientError::Usage(_))
    ));
    assert!(matches!(
        a1.c.send_history(device ^ 1).await,
        Err(ClientError::Usage(_))
    ));
}
