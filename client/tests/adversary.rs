//! Adversarial-server tests: a proxy between a real client and the local cloud plays a
//! malicious or compromised server, rewriting the answers the client gets (key bundles, sync
//! pages) while the real server keeps its honest state. Each test shows what the client does
//! about it: what it refuses, what it never encrypts to, what it never shows twice or at all,
//! and what it reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_client::{Client, ClientError, Event};
use cipherpost_protocol::{
    AccountKey, DeviceCertificate, DeviceId, DeviceIdentity, SignedPreKey, UserId,
};
use rand_core::OsRng;
use serde_json::{json, Value};

mod support;

use support::*;

fn b64(bytes: &[u8]) -> Value {
    Value::String(URL_SAFE_NO_PAD.encode(bytes))
}

fn unb64(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap()
}

/// A device bundle for `user`'s device `device_id` with fresh keys, certified by `ak` (an
/// attacker's key unless the attacker holds the account key).
fn forged_bundle(user: &str, device_id: u32, ak: &AccountKey) -> Value {
    let id = DeviceIdentity::generate(&mut OsRng);
    let cert = ak.certify(
        &UserId::new(user).unwrap(),
        DeviceId::new(device_id).unwrap(),
        &id.public(),
        cipherpost_client::now_ms(),
    );
    let spk = SignedPreKey::generate(&mut OsRng, &id, 1, cipherpost_client::now_ms()).public();
    json!({
        "device_id": device_id,
        "certificate": b64(&cert.to_bytes()),
        "signed_prekey": {"id": 1, "key": b64(spk.key.as_bytes()), "signature": b64(&spk.signature.to_bytes())},
        "one_time_prekey": null,
    })
}

/// A client on `d`'s profile that talks to the server through `proxy`.
fn via(d: &Dev, proxy: &Proxy) -> Client {
    Client::open(d.dir.path(), &proxy.url, None).unwrap()
}

fn rewrite(f: impl Fn(&str, &str, u16, &mut Value) + Send + Sync + 'static) -> ProxyMode {
    ProxyMode::Rewrite(Arc::new(f))
}

fn notices(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Notice { text } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// The `(user, device)` pairs the recorded sends sealed a key envelope for.
fn addressed(proxy: &Proxy) -> BTreeSet<(String, u64)> {
    proxy
        .bodies("PUT", "/v1/messages")
        .iter()
        .flat_map(|b| b["envelopes"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["user"].as_str().unwrap().to_string(),
                e["device_id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The server lists extra devices for bob: one certified by a key that is not bob's, one
/// whose certificate is bob's real one with the identity keys swapped, one whose certificate
/// does not even parse. Alice encrypts only to bob's real device, and is told.
#[tokio::test]
async fn uncertified_devices_are_never_encrypted_to_and_the_user_is_warned() {
    let a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let bob_device = u64::from(b1.c.whoami().unwrap().1);
    let attacker = AccountKey::generate(&mut OsRng);
    let target = format!("/v1/keys/{bob}");
    let proxy = Proxy::start(rewrite(move |method, path, status, body| {
        if method != "GET" || path != target || status != 200 {
            return;
        }
        let user = body["user"].as_str().unwrap().to_string();
        let devices = body["devices"].as_array_mut().unwrap();
        let real = devices[0].clone();
        devices.push(forged_bundle(&user, 7001, &attacker));
        // bob's real certificate, identity keys swapped for the attacker's, renumbered.
        let mut cert = DeviceCertificate::from_bytes(&unb64(&real["certificate"])).unwrap();
        cert.identity = DeviceIdentity::generate(&mut OsRng).public();
        cert.device_id = DeviceId::new(7002).unwrap();
        let mut swapped = forged_bundle(&user, 7002, &attacker);
        swapped["certificate"] = b64(&cert.to_bytes());
        devices.push(swapped);
        let mut garbage = forged_bundle(&user, 7003, &attacker);
        garbage["certificate"] = b64(b"not a certificate");
        devices.push(garbage);
    }))
    .await;
    let mut ap = via(&a1, &proxy);
    // First contact: bob's key is pinned from this very answer, and still the extra devices
    // are refused (their certificates do not verify under it).
    ap.queue_text(&bob, &marked("for bob's devices only"))
        .unwrap();
    assert_eq!(ap.flush_outbox().await.unwrap(), 1);
    let warned = notices(&ap.take_notices().unwrap());
    for d in [7001, 7002, 7003] {
        assert!(
            warned
                .iter()
                .any(|n| n.contains(&format!("device {d} of {bob}")) && n.contains("do not verify")),
            "device {d}: {warned:?}"
        );
    }
    assert_eq!(
        addressed(&proxy),
        BTreeSet::from([(bob.clone(), bob_device)]),
        "a key envelope went to a device the account key did not certify"
    );
    // Known contact: bob's keys fetched again (as after a 409) give the same result.
    ap.refresh_devices(&bob).await.unwrap();
    ap.queue_text(&bob, &marked("second")).unwrap();
    assert_eq!(ap.flush_outbox().await.unwrap(), 1);
    assert_eq!(
        addressed(&proxy),
        BTreeSet::from([(bob.clone(), bob_device)])
    );
    assert!(notices(&ap.take_notices().unwrap())
        .iter()
        .any(|n| n.contains("device 7001")));
    b1.sync().await;
    assert_eq!(
        b1.texts(&alice),
        vec![
            (marked("for bob's devices only"), "received".into()),
            (marked("second"), "received".into())
        ]
    );
}

/// The server swaps the signed prekey of bob's device (a key of its own under bob's
/// signature; then one signed by another identity), or swaps the identity keys inside bob's
/// certificate. Each time alice refuses the bundle, sends nothing, keeps the message queued
/// and says why; with the honest server again, the message goes to bob's real device.
#[tokio::test]
async fn swapped_signed_prekey_or_identity_key_is_refused() {
    let mut b1 = account("bob").await;
    let bob = b1.user();
    let bob_device = u64::from(b1.c.whoami().unwrap().1);
    for swap in [
        "prekey key",
        "prekey signed by another identity",
        "identity key",
    ] {
        let a1 = account("alice").await;
        let alice = a1.user();
        let target = format!("/v1/keys/{bob}");
        let proxy = Proxy::start(rewrite(move |method, path, status, body| {
            if method != "GET" || path != target || status != 200 {
                return;
            }
            let user = body["user"].as_str().unwrap().to_string();
            let real = &mut body["devices"][0];
            let other = forged_bundle(&user, 1, &AccountKey::generate(&mut OsRng));
            match swap {
                "prekey key" => {
                    real["signed_prekey"]["key"] = other["signed_prekey"]["key"].clone()
                }
                "prekey signed by another identity" => {
                    real["signed_prekey"] = other["signed_prekey"].clone();
                }
                _ => {
                    let mut cert =
                        DeviceCertificate::from_bytes(&unb64(&real["certificate"])).unwrap();
                    cert.identity = DeviceIdentity::generate(&mut OsRng).public();
                    real["certificate"] = b64(&cert.to_bytes());
                }
            }
        }))
        .await;
        let mut ap = via(&a1, &proxy);
        ap.queue_text(&bob, &marked(&format!("after a swapped {swap}")))
            .unwrap();
        // Nothing is delivered: the send either stops or waits (the server, knowing bob's
        // device, refuses a message with no key envelope for it).
        assert_eq!(ap.flush_outbox().await.unwrap_or(0), 0, "{swap}");
        assert_eq!(
            ap.store().outbox_len().unwrap(),
            1,
            "{swap}: {:?}",
            ap.take_notices().unwrap()
        );
        assert!(
            addressed(&proxy).iter().all(|(u, _)| *u != bob),
            "{swap}: something was encrypted to a swapped key"
        );
        let warned = notices(&ap.take_notices().unwrap());
        assert!(
            warned
                .iter()
                .any(|n| n.contains(&format!("device {bob_device} of {bob}"))),
            "{swap}: {warned:?}"
        );
        drop(ap);
        // The honest server: the queued message reaches bob's real device.
        let mut a1 = a1;
        a1.c.refresh_devices(&bob).await.unwrap();
        assert_eq!(a1.c.flush_outbox().await.unwrap(), 1, "{swap}");
        b1.sync().await;
        assert_eq!(
            b1.texts(&alice),
            vec![(
                marked(&format!("after a swapped {swap}")),
                "received".into()
            )],
            "{swap}"
        );
    }
}

/// The server replaces bob's account key with its own (and certifies a device of its own
/// under it, with bob's device id) after alice pinned bob's real key. Alice refuses: sending
/// to bob is blocked, nothing is encrypted to the attacker's device, and `verify` shows the
/// changed safety number; when the server serves bob's real key again, sending resumes.
/// (Accepting a changed key after comparing safety numbers is in `e2e.rs`.)
#[tokio::test]
async fn a_replaced_account_key_is_refused_and_blocks_sending() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let bob_device = b1.c.whoami().unwrap().1;
    a1.c.queue_text(&bob, &marked("first")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    let attacker = AccountKey::generate(&mut OsRng);
    let target = format!("/v1/keys/{bob}");
    let proxy = Proxy::start(rewrite(move |method, path, status, body| {
        if method == "GET" && path == target && status == 200 {
            let user = body["user"].as_str().unwrap().to_string();
            body["account_key"] = b64(attacker.public_key().as_bytes());
            body["devices"] = json!([forged_bundle(&user, bob_device, &attacker)]);
        }
    }))
    .await;
    let mut ap = via(&a1, &proxy);
    ap.queue_text(&bob, &marked("second")).unwrap();
    assert!(matches!(
        ap.refresh_devices(&bob).await,
        Err(ClientError::KeyChanged(u)) if u == bob
    ));
    assert_eq!(ap.flush_outbox().await.unwrap(), 0);
    assert_eq!(ap.store().outbox_len().unwrap(), 1);
    assert!(matches!(
        ap.queue_text(&bob, &marked("third")),
        Err(ClientError::KeyChanged(_))
    ));
    let v = ap.verify(&bob, false).await.unwrap();
    assert!(v.blocked);
    let changed = v.changed_safety_number.expect("the changed key is shown");
    assert_ne!(changed, v.safety_number);
    assert!(
        addressed(&proxy).iter().all(|(u, _)| *u != bob),
        "a message went out under the replaced key"
    );
    drop(ap);
    b1.sync().await;
    assert_eq!(b1.texts(&alice), vec![(marked("first"), "received".into())]);
    // The honest server serves bob's real key again: verify unblocks, the message goes.
    let v = a1.c.verify(&bob, false).await.unwrap();
    assert!(!v.blocked && v.changed_safety_number.is_none());
    assert!(notices(&a1.c.take_notices().unwrap())
        .iter()
        .any(|n| n.contains("again the one you had accepted")));
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 1);
    b1.sync().await;
    assert_eq!(
        b1.texts(&alice),
        vec![
            (marked("first"), "received".into()),
            (marked("second"), "received".into())
        ]
    );
}

/// `envelope` with `field` set to `value`.
fn with(envelope: &Value, field: &str, value: Value) -> Value {
    let mut e = envelope.clone();
    e[field] = value;
    e
}

/// `envelope` with one byte of its base64 `field` flipped, at `at(length)`.
fn flipped(envelope: &Value, field: &str, at: fn(usize) -> usize) -> Value {
    let mut bytes = unb64(&envelope[field]);
    let i = at(bytes.len());
    bytes[i] ^= 1;
    with(envelope, field, b64(&bytes))
}

/// A server that tampers with sync pages. Of the envelopes `tampered` picks, it serves the
/// newer half of each page, newest first and each twice, behind `forge(newest)`, and claims the
/// end of the queue; the others pass untouched. Once the returned flag is set it serves
/// everything it served before, in reverse, and then the real page twice.
async fn tampering_proxy(
    tampered: impl Fn(&Value) -> bool + Send + Sync + 'static,
    forge: impl Fn(&Value) -> Vec<Value> + Send + Sync + 'static,
) -> (Proxy, Arc<Mutex<bool>>) {
    let served: Arc<Mutex<Vec<Value>>> = Arc::default();
    let replay = Arc::new(Mutex::new(false));
    let again = replay.clone();
    let proxy = Proxy::start(rewrite(move |method, path, status, body| {
        if method != "GET" || !path.starts_with("/v1/messages") || status != 200 {
            return;
        }
        let (page, mut out): (Vec<Value>, Vec<Value>) = body["envelopes"]
            .as_array()
            .unwrap()
            .iter()
            .cloned()
            .partition(|e| tampered(e));
        if *again.lock().unwrap() {
            out.extend(served.lock().unwrap().iter().rev().cloned());
            out.extend(page.iter().cloned());
            out.extend(page.iter().cloned());
        } else {
            if let Some(newest) = page.last() {
                out.extend(forge(newest));
            }
            let mut half: Vec<Value> = page.iter().rev().cloned().collect();
            half.truncate(page.len().div_ceil(2));
            for e in &half {
                out.push(e.clone());
                out.push(e.clone());
            }
            body["next_cursor"] = Value::Null;
        }
        served.lock().unwrap().extend(out.iter().cloned());
        body["envelopes"] = Value::Array(out);
    }))
    .await;
    (proxy, replay)
}

/// Bob syncs through a server that reverses each page, sends every envelope twice, cuts the
/// page in half (claiming it is the end of the queue), slips in forged envelopes (a tampered
/// body, a tampered key envelope, a real key envelope under another message id), and later
/// replays every envelope it ever served, also to a restarted client. Bob shows each real
/// message exactly once and no forged one.
#[tokio::test]
async fn a_replayed_reordered_duplicated_or_truncated_stream_shows_each_message_once() {
    let mut a1 = account("alice").await;
    let b1 = account("bob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let sent: Vec<String> = (0..8).map(|i| marked(&format!("stream {i}"))).collect();
    for t in &sent {
        a1.c.queue_text(&bob, t).unwrap();
    }
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 8);
    // Forgeries of the newest envelope (which the served half holds, so that their queue ids,
    // acknowledged as refused, are acknowledged anyway): a tampered body, a tampered key
    // envelope, the real key envelope under another message id.
    let (proxy, replay) = tampering_proxy(
        |_| true,
        |newest| {
            vec![
                with(newest, "message_id", b64(&[7u8; 16])),
                flipped(newest, "key", |len| len - 1),
                flipped(newest, "body", |len| len / 2),
            ]
        },
    )
    .await;
    let mut bp = Dev {
        c: via(&b1, &proxy),
        dir: b1.dir,
    };
    let ev = bp.sync().await;
    let got = bp.texts(&alice);
    assert!(!got.is_empty() && got.len() < 8, "{got:?}");
    assert!(got.iter().all(|(t, _)| sent.contains(t)), "{got:?}");
    assert_no_duplicates(&bp, &alice);
    assert!(
        notices(&ev).iter().any(|n| n.contains("could not")),
        "the forgeries are reported: {ev:?}"
    );
    // The rest was never acknowledged, so the server still has it; replays come with it.
    *replay.lock().unwrap() = true;
    bp.sync().await;
    bp.c = via(&bp, &proxy); // a restarted client, same profile
    bp.sync().await;
    let mut got: Vec<String> = bp.texts(&alice).into_iter().map(|(t, _)| t).collect();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got, want, "every real message once, no forged one");
    assert_no_duplicates(&bp, &alice);
    // The sender sees them delivered (each receipt once; replays sent none again).
    a1.sync().await;
    assert!(a1.texts(&bob).iter().all(|(_, s)| s == "delivered"));
}

/// The same for a group: bob syncs alice's group messages (sender-key messages) through a
/// server that reverses, duplicates and truncates the page and slips in forgeries of the newest
/// (a flipped byte, the real body under another message id, the real body claimed by a device
/// alice does not have, the real body under a group bob is not in), then replays everything
/// it served, also to a restarted client. Bob shows each group message exactly once and no
/// forged one.
#[tokio::test]
async fn a_tampered_group_stream_shows_each_group_message_once() {
    let mut a1 = account("galice").await;
    let mut b1 = account("gbob").await;
    let (alice, bob) = (a1.user(), b1.user());
    let gid =
        a1.c.group_create("under attack", std::slice::from_ref(&bob))
            .await
            .unwrap()
            .group_id;
    // bob gets the group and alice's sender key from an honest server first.
    a1.c.queue_group_text(&gid, &marked("warm-up")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.sync().await;
    let conv = format!("group:{gid}");
    assert_eq!(
        b1.texts(&conv),
        vec![(marked("warm-up"), "received".into())]
    );

    let sent: Vec<String> = (0..8)
        .map(|i| marked(&format!("group stream {i}")))
        .collect();
    for t in &sent {
        a1.c.queue_group_text(&gid, t).unwrap();
    }
    a1.c.flush_outbox().await.unwrap();
    let owner = alice.clone();
    let (proxy, replay) = tampering_proxy(
        |e| e.get("group").is_some_and(|g| !g.is_null()),
        move |newest| {
            vec![
                with(newest, "group", b64(&[9u8; 16])),
                with(newest, "sender", json!({"user": owner, "device_id": 2})),
                with(newest, "message_id", b64(&[7u8; 16])),
                flipped(newest, "body", |len| len / 2),
            ]
        },
    )
    .await;
    let mut bp = Dev {
        c: via(&b1, &proxy),
        dir: b1.dir,
    };
    let ev = bp.sync().await;
    let got = bp.texts(&conv);
    assert!(got.len() > 1 && got.len() < 1 + 8, "{got:?}");
    assert!(
        got.iter()
            .all(|(t, _)| *t == marked("warm-up") || sent.contains(t)),
        "{got:?}"
    );
    assert_no_duplicates(&bp, &conv);
    assert!(
        notices(&ev).iter().any(|n| n.contains("could not be read")),
        "the forgeries are reported: {ev:?}"
    );
    // The rest was never acknowledged, so the server still has it; replays come with it.
    *replay.lock().unwrap() = true;
    bp.sync().await;
    bp.c = via(&bp, &proxy); // a restarted client, same profile
    bp.sync().await;
    let mut got: Vec<String> = bp.texts(&conv).into_iter().map(|(t, _)| t).collect();
    got.sort();
    let mut want = sent.clone();
    want.push(marked("warm-up"));
    want.sort();
    assert_eq!(got, want, "every real group message once, no forged one");
    assert_no_duplicates(&bp, &conv);
    // Nothing from the forged group or the forged device was kept.
    assert!(bp.c.groups().unwrap().iter().all(|g| g.group_id == gid));
    assert!(bp.texts(&alice).is_empty());
}

/// The server drops one message for one of bob's devices (it never serves it there). Bob's
/// devices confirm what they got with delivery receipts; alice's client sees that the device
/// confirmed a later message but not that one, and reports it, naming the message and the
/// device. A device that was offline the whole time is not reported, nor the device that got
/// everything.
#[tokio::test]
async fn a_dropped_envelope_is_reported_by_the_sender() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let mut b2 = link(&mut b1).await;
    let mut b3 = link(&mut b1).await;
    let (alice, bob) = (a1.user(), b1.user());
    let dev = |d: &Dev| d.c.whoami().unwrap().1;
    a1.c.queue_text(&bob, &marked("hello")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    for d in [&mut b1, &mut b2, &mut b3] {
        d.sync().await;
    }
    let ev = a1.sync().await;
    assert!(
        !notices(&ev).iter().any(|n| n.contains("not delivered")),
        "{ev:?}"
    );
    // b3 goes offline; the server drops the second of three messages for b2.
    let ids: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|t| a1.c.queue_text(&bob, &marked(t)).unwrap())
        .collect();
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 3);
    let dropped = URL_SAFE_NO_PAD.encode(hex_decode(&ids[1]));
    let proxy = Proxy::start(rewrite(move |method, path, status, body| {
        if method == "GET" && path.starts_with("/v1/messages") && status == 200 {
            body["envelopes"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e["message_id"].as_str() != Some(dropped.as_str()));
        }
    }))
    .await;
    let mut b2p = Dev {
        c: via(&b2, &proxy),
        dir: b2.dir,
    };
    b2p.sync().await;
    assert_eq!(
        b2p.texts(&alice)
            .into_iter()
            .map(|(t, _)| t)
            .collect::<Vec<_>>(),
        vec![marked("hello"), marked("one"), marked("three")]
    );
    b1.sync().await;
    assert_eq!(b1.texts(&alice).len(), 4);
    let reports: Vec<String> = notices(&a1.sync().await)
        .into_iter()
        .filter(|n| n.contains("not delivered"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains(&ids[1])
            && reports[0].contains(&format!("device {}", dev(&b2p)))
            && reports[0].contains(&bob),
        "{reports:?}"
    );
    // Reported once: more syncs (and more receipts from b2) do not repeat it.
    a1.c.queue_text(&bob, &marked("four")).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b2p.sync().await;
    b3.sync().await; // b3 comes back: it got everything, so nothing to report for it
    let again: Vec<String> = notices(&a1.sync().await)
        .into_iter()
        .filter(|n| n.contains("not delivered"))
        .collect();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(b3.texts(&alice).len(), 5);
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
