//! End-to-end tests of the client against the local cloud (`./dev up`; endpoint from
//! `CIPHERPOST_API`, default `http://127.0.0.1:8787`). Each device is a separate profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use cipherpost_client::{Client, ClientError, Event};
use rand_core::{OsRng, RngCore};
use tempfile::TempDir;

mod support;

use support::*;

#[tokio::test]
async fn multi_device_exchange_receipts_and_read_sync() {
    let mut a1 = account("alice").await;
    let mut a2 = link(&mut a1).await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());

    a1.c.queue_text(&bob, &marked("hello bob")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    assert_eq!(
        b1.texts(&alice),
        vec![(marked("hello bob"), "received".into())]
    );
    // Alice's other device files her own message in the conversation with bob.
    // (Bob's delivery receipt reaches it too.)
    a2.sync().await;
    assert_eq!(
        a2.texts(&bob),
        vec![(marked("hello bob"), "delivered".into())]
    );

    b1.c.queue_text(&alice, &marked("hi alice")).unwrap();
    b1.c.flush_outbox().await.unwrap();
    a1.sync().await; // also gets bob's delivery receipt
    a2.sync().await;
    assert_eq!(a1.texts(&bob)[0], (marked("hello bob"), "delivered".into()));
    assert_eq!(a1.texts(&bob)[1], (marked("hi alice"), "received".into()));
    assert_eq!(a2.texts(&bob)[1], (marked("hi alice"), "received".into()));

    // Bob reads: alice's devices both see "read".
    b1.c.read(&alice).await.unwrap();
    a1.sync().await;
    a2.sync().await;
    assert_eq!(a1.texts(&bob)[0].1, "read");
    // a2 did not exist for the first message's delivery receipt but gets the read receipt.
    assert_eq!(a2.texts(&bob)[0].1, "read");

    // Alice reads on a1: a2 gets the read-sync; bob gets the read receipt.
    a1.c.read(&bob).await.unwrap();
    a2.sync().await;
    assert_eq!(a2.texts(&bob)[1].1, "read");
    b1.sync().await;
    assert_eq!(b1.texts(&alice)[1], (marked("hi alice"), "read".into()));
    for d in [&a1, &a2] {
        assert_no_duplicates(d, &bob);
    }
}

#[tokio::test]
async fn read_sync_without_read_receipts() {
    let mut a1 = account("alice").await;
    let mut a2 = link(&mut a1).await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    a1.c.set_read_receipts(false).unwrap();
    b1.c.queue_text(&alice, &marked("one")).unwrap();
    b1.c.flush_outbox().await.unwrap();
    a1.sync().await;
    a2.sync().await;
    a1.c.read(&bob).await.unwrap();
    a2.sync().await;
    assert_eq!(a2.texts(&bob), vec![(marked("one"), "read".into())]);
    b1.sync().await;
    assert_eq!(b1.texts(&alice), vec![(marked("one"), "delivered".into())]);
}

#[tokio::test]
async fn offline_device_catches_up_on_1000_queued_messages() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    for i in 0..1000 {
        b1.c.queue_text(&alice, &marked(&format!("m{i}"))).unwrap();
    }
    assert_eq!(b1.c.flush_outbox().await.unwrap(), 1000);
    a1.sync().await;
    let got: Vec<String> = a1.texts(&bob).into_iter().map(|(t, _)| t).collect();
    let want: Vec<String> = (0..1000).map(|i| marked(&format!("m{i}"))).collect();
    assert_eq!(got, want);
    // Nothing left in the queue: a second sync brings nothing new.
    assert!(a1
        .sync()
        .await
        .iter()
        .all(|e| !matches!(e, Event::Message { .. })));
    b1.sync().await;
    assert!(b1.texts(&alice).iter().all(|(_, s)| s == "delivered"));
}

#[tokio::test]
async fn killed_mid_outbox_resumes_without_loss_or_duplicate() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    for i in 0..20 {
        a1.c.queue_text(&bob, &marked(&format!("m{i}"))).unwrap();
    }
    // bob's keys are fetched before the cuts begin: every fetch cut short would still count
    // against the server's limit of 20 bundle fetches of one account per device and hour, and
    // this test is about sends cut short.
    a1.c.refresh_devices(&bob).await.unwrap();
    // Cut each flush short at an arbitrary point (like a kill), then restart the process.
    let mut rounds = 0;
    while a1.c.store().outbox_len().unwrap() > 0 {
        // Cut points spread over a growing window so that later rounds can finish a send.
        let ms = 5 + u64::from(OsRng.next_u32() % (60 + rounds * 20));
        let _ = tokio::time::timeout(Duration::from_millis(ms), a1.c.flush_outbox()).await;
        a1.reopen();
        rounds += 1;
        assert!(rounds < 500, "the outbox never drained");
    }
    b1.sync().await;
    let got: Vec<String> = b1.texts(&alice).into_iter().map(|(t, _)| t).collect();
    let want: Vec<String> = (0..20).map(|i| marked(&format!("m{i}"))).collect();
    assert_eq!(got, want);
    assert_no_duplicates(&b1, &alice);
}

#[tokio::test]
async fn two_devices_of_one_account_send_concurrently() {
    let mut a1 = account("alice").await;
    let mut a2 = link(&mut a1).await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    for i in 0..10 {
        a1.c.queue_text(&bob, &marked(&format!("a1-{i}"))).unwrap();
        a2.c.queue_text(&bob, &marked(&format!("a2-{i}"))).unwrap();
    }
    let (r1, r2) = tokio::join!(a1.c.flush_outbox(), a2.c.flush_outbox());
    assert_eq!((r1.unwrap(), r2.unwrap()), (10, 10));
    b1.sync().await;
    assert_eq!(b1.texts(&alice).len(), 20);
    a1.sync().await;
    a2.sync().await;
    assert_eq!(a1.texts(&bob).len(), 20);
    assert_eq!(a2.texts(&bob).len(), 20);
    for d in [&a1, &a2] {
        assert_no_duplicates(d, &bob);
    }
}

#[tokio::test]
async fn typing_is_pushed_but_never_stored() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    // Sessions both ways first.
    a1.c.queue_text(&bob, &marked("hi")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let mut events = Vec::new();
    let watch =
        b1.c.watch(Some(Duration::from_secs(6)), |e| events.push(e.clone()));
    let typing = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        a1.c.send_typing(&bob, true).await.unwrap();
    };
    let (w, ()) = tokio::join!(watch, typing);
    w.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Typing { from, typing: true } if *from == alice)),
        "{events:?}"
    );
    // Nothing was queued for bob and nothing stored beyond the text.
    assert!(b1
        .sync()
        .await
        .iter()
        .all(|e| !matches!(e, Event::Typing { .. })));
    assert_eq!(b1.texts(&alice).len(), 1);
}

#[tokio::test]
async fn watch_receives_live_messages() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let mut events = Vec::new();
    let watch =
        b1.c.watch(Some(Duration::from_secs(6)), |e| events.push(e.clone()));
    let send = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        a1.c.queue_text(&bob, &marked("live")).unwrap();
        a1.c.flush_outbox().await.unwrap();
    };
    let (w, ()) = tokio::join!(watch, send);
    w.unwrap();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Message { text, .. } if *text == marked("live"))));
    assert_eq!(b1.texts(&alice), vec![(marked("live"), "received".into())]);
    // The delivery receipt went back while watching.
    a1.sync().await;
    assert_eq!(a1.texts(&bob), vec![(marked("live"), "delivered".into())]);
}

#[tokio::test]
async fn a_contacts_new_device_receives_the_next_message() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    a1.c.queue_text(&bob, &marked("before")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let mut b2 = link(&mut b1).await;
    a1.c.queue_text(&bob, &marked("after")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    let notices: Vec<String> =
        a1.c.take_notices()
            .unwrap()
            .into_iter()
            .filter_map(|e| match e {
                Event::Notice { text } => Some(text),
                _ => None,
            })
            .collect();
    assert!(
        notices.iter().any(|n| n.contains("new device")),
        "{notices:?}"
    );
    b2.sync().await;
    // "before" came with the history b1 sent at the link; "after" was delivered to b2 itself.
    assert_eq!(
        b2.texts(&alice),
        vec![
            (marked("before"), "received".into()),
            (marked("after"), "received".into())
        ]
    );
    b1.sync().await;
    assert_eq!(b1.texts(&alice).len(), 2);
}

#[tokio::test]
async fn after_a_key_change_nothing_is_sent_until_accepted() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    a1.c.queue_text(&bob, &marked("first")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    // Make alice's pinned key for bob differ from the server's (as if bob's key had been
    // replaced without a signed rotation), and make her refetch his bundles.
    {
        let db = rusqlite::Connection::open(a1.dir.path().join("cipherpost.db")).unwrap();
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        let other = cipherpost_protocol::AccountKey::from_bytes(&k).public_key();
        db.execute(
            "UPDATE contacts SET pinned_key = ?1, fetched = 0 WHERE user = ?2",
            rusqlite::params![other.to_bytes().to_vec(), bob],
        )
        .unwrap();
    }
    a1.c.queue_text(&bob, &marked("second")).unwrap();
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 0);
    assert_eq!(a1.c.store().outbox_len().unwrap(), 1);
    assert!(matches!(
        a1.c.queue_text(&bob, &marked("third")),
        Err(ClientError::KeyChanged(_))
    ));
    b1.sync().await;
    assert_eq!(b1.texts(&alice).len(), 1);
    let v = a1.c.verify(&bob, false).await.unwrap();
    assert!(v.blocked && v.changed_safety_number.is_some());
    let v = a1.c.verify(&bob, true).await.unwrap();
    assert!(!v.blocked);
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 1);
    b1.sync().await;
    assert_eq!(b1.texts(&alice)[1].0, marked("second"));
}

#[tokio::test]
async fn store_file_is_private_and_errors_are_clear() {
    use std::os::unix::fs::PermissionsExt;
    let d = account("carol").await;
    let mode = std::fs::metadata(d.dir.path().join("cipherpost.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut e = Dev::new();
    let err = e.c.queue_text("bob", &marked("x")).unwrap_err();
    assert!(err.to_string().contains("no account"), "{err}");
    let mut x = Dev::new();
    let taken = x.c.register(&d.user()).await.unwrap_err();
    assert!(taken.to_string().contains("taken"), "{taken}");
    let _ = &mut e;
}

#[tokio::test]
async fn prekeys_are_replenished_when_they_run_low() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let alice = a1.user();
    assert_eq!(a1.c.server_prekey_count().await.unwrap(), 100);
    // Every bundle fetch hands out one of alice's one-time prekeys. One device may fetch an
    // account's bundle 20 times an hour (the server's limit against draining), so five
    // devices take 19 each.
    for _ in 0..19 {
        b1.c.refresh_devices(&alice).await.unwrap();
    }
    for _ in 0..4 {
        let mut other = account("drain").await;
        for _ in 0..19 {
            other.c.refresh_devices(&alice).await.unwrap();
        }
    }
    assert!(a1.c.server_prekey_count().await.unwrap() < 10);
    a1.sync().await;
    assert!(a1.c.server_prekey_count().await.unwrap() >= 100);
    // The new ids continue above the old ones: a session from a fresh bundle still works.
    b1.c.queue_text(&alice, &marked("after refill")).unwrap();
    b1.c.flush_outbox().await.unwrap();
    a1.sync().await;
    assert_eq!(
        a1.texts(&b1.user()),
        vec![(marked("after refill"), "received".into())]
    );
}

const MINUTE_MS: u64 = 60 * 1000;
const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

#[tokio::test]
async fn link_codes_expire_after_ten_minutes() {
    let mut a1 = account("alice").await;
    let alice = a1.user();
    let mut d = Dev::new();
    let now = cipherpost_client::now_ms();
    for (age, what) in [(11 * MINUTE_MS, "too old"), (0, "too far ahead")] {
        let when = if age == 0 {
            now + 6 * MINUTE_MS
        } else {
            now - age
        };
        let code = d.c.link_request_at(&alice, when).unwrap();
        let err = a1.c.link_approve(&code).await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{what}: {err}");
    }
    // Nothing was registered.
    assert_eq!(a1.c.devices().await.unwrap().len(), 1);
    assert!(matches!(d.c.sync().await, Err(ClientError::NotLinked)));
    // A code made 9 minutes ago is still good.
    let code = d.c.link_request_at(&alice, now - 9 * MINUTE_MS).unwrap();
    a1.c.link_approve(&code).await.unwrap();
    let ev = d.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    assert_eq!(a1.c.devices().await.unwrap().len(), 2);
}

#[tokio::test]
async fn signed_prekey_rotates_weekly_and_old_bundles_still_work() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let alice = a1.user();
    let now = cipherpost_client::now_ms();
    let m =
        a1.c.maintain_prekeys_at(false, now + 6 * DAY_MS)
            .await
            .unwrap();
    assert_eq!(m.signed_prekey_rotated_to, None, "rotated before a week");
    assert_eq!(m.one_time_prekeys_uploaded, 0);
    // bob takes alice's bundle (signed prekey 1) before she rotates...
    b1.c.refresh_devices(&alice).await.unwrap();
    let m =
        a1.c.maintain_prekeys_at(false, now + 8 * DAY_MS)
            .await
            .unwrap();
    assert_eq!(m.signed_prekey_rotated_to, Some(2));
    // ...and a session started from it still opens: the replaced prekey is kept for a while.
    b1.c.queue_text(&alice, &marked("from the old bundle"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    // A new contact gets signed prekey 2, and is understood too.
    let mut c1 = account("carol").await;
    c1.c.queue_text(&alice, &marked("from the new bundle"))
        .unwrap();
    c1.c.flush_outbox().await.unwrap();
    a1.sync().await;
    assert_eq!(
        a1.texts(&b1.user()),
        vec![(marked("from the old bundle"), "received".into())]
    );
    assert_eq!(
        a1.texts(&c1.user()),
        vec![(marked("from the new bundle"), "received".into())]
    );
    // The new key's week starts at the rotation: a day later nothing rotates.
    let m =
        a1.c.maintain_prekeys_at(false, now + 9 * DAY_MS)
            .await
            .unwrap();
    assert_eq!(m.signed_prekey_rotated_to, None);
    let m =
        a1.c.maintain_prekeys_at(false, now + 16 * DAY_MS)
            .await
            .unwrap();
    assert_eq!(m.signed_prekey_rotated_to, Some(3));
}

#[tokio::test]
async fn a_lost_register_answer_is_recovered() {
    let user = fresh("lost");
    let dir = TempDir::new().unwrap();
    // The server creates the account, but its answer never arrives.
    let proxy = Proxy::start(ProxyMode::LoseAnswers).await;
    let mut c = Client::open(dir.path(), &proxy.url, None).unwrap();
    let err = c.register(&user).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("again"),
        "the error should say what to do: {err}"
    );
    drop(c);
    // Running `register` again finds the account made with this profile's keys and keeps it.
    let mut d = Dev {
        c: Client::open(dir.path(), &endpoint(), None).unwrap(),
        dir,
    };
    let (u, device) = d.c.register(&user).await.unwrap();
    assert_eq!(u, user);
    assert_eq!(d.c.whoami(), Some((user.clone(), device)));
    assert_eq!(d.c.devices().await.unwrap().len(), 1);
    // It works as an account: a contact's message arrives.
    let mut b1 = account("bob").await;
    b1.c.queue_text(&user, &marked("hello after a lost answer"))
        .unwrap();
    b1.c.flush_outbox().await.unwrap();
    d.sync().await;
    assert_eq!(
        d.texts(&b1.user()),
        vec![(marked("hello after a lost answer"), "received".into())]
    );
    // A request that never reached the server: registering again creates the account.
    let user2 = fresh("never");
    let dir2 = TempDir::new().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = Client::open(dir2.path(), &format!("http://{closed}"), None).unwrap();
    assert!(matches!(
        c.register(&user2).await,
        Err(ClientError::Unreachable { .. })
    ));
    drop(c);
    let mut c = Client::open(dir2.path(), &endpoint(), None).unwrap();
    let (u2, _) = c.register(&user2).await.unwrap();
    assert_eq!(u2, user2);
    assert_eq!(c.devices().await.unwrap().len(), 1);
}

/// A message to an account that does not exist fails on its own: the message to a real
/// contact queued after it is delivered, and sync keeps working.
#[tokio::test]
async fn a_bad_recipient_does_not_hold_up_the_outbox() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let nobody = fresh("nobody");
    let bad = a1.c.queue_text(&nobody, &marked("lost")).unwrap();
    let good = a1.c.queue_text(&bob, &marked("hello")).unwrap();
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 1);
    assert_eq!(
        a1.c.store().outgoing_status(&bad).unwrap(),
        (false, Some("failed".to_string()))
    );
    assert_eq!(
        a1.c.store().outgoing_status(&good).unwrap(),
        (false, Some("sent".to_string()))
    );
    let ev = a1.c.sync().await.unwrap();
    assert!(
        ev.iter()
            .any(|e| matches!(e, Event::Notice { text } if text.contains(&nobody))),
        "{ev:?}"
    );
    b1.sync().await;
    assert_eq!(b1.texts(&alice), vec![(marked("hello"), "received".into())]);
    a1.sync().await;
    assert_eq!(a1.texts(&bob), vec![(marked("hello"), "delivered".into())]);
}

/// The approving device's registration of a new device is answered, but the answer is lost:
/// approving the same code again finds the device registered and completes the link.
#[tokio::test]
async fn a_lost_link_approval_answer_is_recovered() {
    let mut a1 = account("alice").await;
    let old = a1.c.link_approve("cplink1.AAAA").await.unwrap_err();
    assert!(old.to_string().contains("older cipherpost"), "{old}");
    let mut d = Dev::new();
    let code = d.c.link_request(&a1.user()).unwrap();
    let proxy = Proxy::start(ProxyMode::LoseAnswers).await;
    {
        let mut via = Client::open(a1.dir.path(), &proxy.url, None).unwrap();
        let lost = via.link_approve(&code).await.unwrap_err();
        assert!(matches!(lost, ClientError::Unreachable { .. }), "{lost}");
    }
    let path = format!("/v1/accounts/{}/devices", a1.user());
    assert_eq!(proxy.bodies("POST", &path).len(), 1);
    let device = a1.c.link_approve(&code).await.unwrap();
    assert_eq!(device, d.c.whoami().unwrap().1);
    let ev = d.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    assert!(d.c.is_linked().unwrap());
}
