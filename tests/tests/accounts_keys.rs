//! Accounts and keys over HTTP against the local cloud (issue #3, behaviours 1, 2 and 6).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::HashSet;

use cipherpost_backend::api::{CreateAccountRequest, KeyBundleResponse, B64};
use cipherpost_protocol::{
    AccountChain, AccountKey, DeviceCertificate, Revocation, Rotation, UserId, VerifyingKey,
};
use cipherpost_tests::{fresh_user, now_ms, Device};
use rand_core::OsRng;
use serde_json::{json, Value};

fn bundle(a: &cipherpost_tests::Answer) -> KeyBundleResponse {
    serde_json::from_value(a.json.clone()).unwrap()
}

#[tokio::test]
async fn create_account_and_taken_user_id() {
    let user = fresh_user("acct");
    let (_d, a) = Device::create_account(&user, 5).await;
    assert_eq!(a.status, 201, "{:?}", a.json);
    assert_eq!(a.json["user"], json!(user));
    let (_d2, again) = Device::create_account(&user, 5).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.json["error"], "user_taken");
}

#[tokio::test]
async fn invalid_user_bad_certificate_and_bad_prekey_signature_are_400() {
    // An invalid user id in the path.
    let d = Device::registered("inv", 0).await;
    let a = d
        .request("PUT", "/v1/accounts/Not_Valid!", Some(&json!({})))
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"], "invalid_user");

    // A certificate signed by another key than the account key in the body.
    let user = fresh_user("badcert");
    let mut dev = Device::new(&user, AccountKey::generate(&mut OsRng));
    let other = AccountKey::generate(&mut OsRng);
    let body = CreateAccountRequest {
        account_key: B64(other.public_key().to_bytes().to_vec()),
        device: dev.new_device_json(1),
    };
    let a = dev
        .request(
            "PUT",
            &format!("/v1/accounts/{user}"),
            Some(&serde_json::to_value(&body).unwrap()),
        )
        .await;
    assert_eq!(a.status, 400, "{:?}", a.json);
    assert_eq!(a.json["error"], "invalid_certificate");

    // A signed prekey whose signature does not verify.
    let mut body = CreateAccountRequest {
        account_key: B64(dev.account.public_key().to_bytes().to_vec()),
        device: dev.new_device_json(1),
    };
    body.device.signed_prekey.signature.0[0] ^= 1;
    let a = dev
        .request(
            "PUT",
            &format!("/v1/accounts/{user}"),
            Some(&serde_json::to_value(&body).unwrap()),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"], "invalid_prekey_signature");

    // Nothing was created by any of these.
    let probe = d.request("GET", &format!("/v1/keys/{user}"), None).await;
    assert_eq!(probe.status, 404);
}

#[tokio::test]
async fn account_creation_must_be_signed_by_the_certified_device() {
    let user = fresh_user("sig");
    let mut dev = Device::new(&user, AccountKey::generate(&mut OsRng));
    let body = serde_json::to_value(CreateAccountRequest {
        account_key: B64(dev.account.public_key().to_bytes().to_vec()),
        device: dev.new_device_json(0),
    })
    .unwrap();
    // Signed by another identity than the certificate's.
    let impostor = Device::new(&user, dev.account.clone());
    let bytes = serde_json::to_vec(&body).unwrap();
    let mut auth = impostor.sign("PUT", &format!("/v1/accounts/{user}"), &bytes, now_ms());
    auth = auth.replace(&impostor.device_id.to_string(), &dev.device_id.to_string());
    let a = cipherpost_tests::send_raw(
        &reqwest::Client::new(),
        "PUT",
        &format!("/v1/accounts/{user}"),
        bytes,
        Some(auth),
    )
    .await;
    assert_eq!(a.status, 401, "{:?}", a.json);
}

#[tokio::test]
async fn link_devices_up_to_ten_then_409_with_the_limit() {
    let first = Device::registered("ten", 0).await;
    for _ in 0..9 {
        let (_d, a) = first.link_new_device(1).await;
        assert_eq!(a.status, 201, "{:?}", a.json);
    }
    let (_d, a) = first.link_new_device(1).await;
    assert_eq!(a.status, 409);
    assert_eq!(a.json["error"], "too_many_devices");
    assert!(
        a.json["message"].as_str().unwrap().contains("10"),
        "{:?}",
        a.json
    );
    let b = bundle(
        &first
            .request("GET", &format!("/v1/keys/{}", first.user), None)
            .await,
    );
    assert_eq!(b.devices.len(), 10);
}

#[tokio::test]
async fn link_needs_a_certificate_under_the_account_key_and_is_accepted_once() {
    let first = Device::registered("link", 0).await;
    // A device certified by a stranger's key.
    let mut rogue = Device::new(first.user.as_str(), AccountKey::generate(&mut OsRng));
    let body = json!({ "device": serde_json::to_value(rogue.new_device_json(1)).unwrap() });
    let a = first
        .request(
            "POST",
            &format!("/v1/accounts/{}/devices", first.user),
            Some(&body),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json["error"], "invalid_certificate");

    // A replayed link request (same signature) is refused.
    let mut new = Device::new(first.user.as_str(), first.account.clone());
    let body = serde_json::to_vec(
        &json!({ "device": serde_json::to_value(new.new_device_json(1)).unwrap() }),
    )
    .unwrap();
    let path = format!("/v1/accounts/{}/devices", first.user);
    let ts = now_ms();
    let ok = first.request_raw("POST", &path, body.clone(), ts).await;
    assert_eq!(ok.status, 201);
    let replay = first.request_raw("POST", &path, body, ts).await;
    assert_eq!(replay.status, 401, "{:?}", replay.json);
}

#[tokio::test]
async fn revoke_rotates_the_account_key_and_locks_the_device_out() {
    let a1 = Device::registered("rev", 3).await;
    let (a2, r) = a1.link_new_device(3).await;
    assert_eq!(r.status, 201);
    let (a3, r) = a1.link_new_device(3).await;
    assert_eq!(r.status, 201);
    let old_key = a1.account.public_key();

    // a1 revokes a3: revocation + rotation + fresh certificates for a1 and a2.
    let new_account = AccountKey::generate(&mut OsRng);
    let user = a1.user.clone();
    let revocation =
        a1.account
            .revoke(&user, a3.device_id, &a3.identity.public().signing, now_ms());
    let rotation = a1
        .account
        .rotate_to(&user, &new_account.public_key(), now_ms());
    let certs: Vec<DeviceCertificate> = [&a1, &a2]
        .iter()
        .map(|d| new_account.certify(&user, d.device_id, &d.identity.public(), now_ms()))
        .collect();
    let body = json!({
        "revocation": B64(revocation.to_bytes()),
        "rotation": B64(rotation.to_bytes()),
        "certificates": certs.iter().map(|c| B64(c.to_bytes())).collect::<Vec<_>>(),
    });
    // Missing a certificate for a2: refused, nothing changes.
    let partial = json!({
        "revocation": body["revocation"], "rotation": body["rotation"],
        "certificates": [body["certificates"][0]],
    });
    let path = format!("/v1/accounts/{user}/devices/{}", a3.device_id);
    let r = a1.request("DELETE", &path, Some(&partial)).await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(
        a3.request("GET", "/v1/keys", None).await.status,
        200,
        "a3 still active"
    );

    let r = a1.request("DELETE", &path, Some(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    // The revoked device's requests get 401.
    let r = a3.request("GET", "/v1/keys", None).await;
    assert_eq!(r.status, 401);
    assert!(
        a3.connect().await.is_err(),
        "a revoked device cannot open a socket"
    );

    // A contact that pinned the old key follows the chain and sees two devices under the new key.
    let contact = Device::registered("contact", 0).await;
    let b = bundle(
        &contact
            .request("GET", &format!("/v1/keys/{user}"), None)
            .await,
    );
    assert_eq!(b.devices.len(), 2);
    let rotations: Vec<Rotation> = b
        .rotations
        .iter()
        .map(|r| Rotation::from_bytes(&r.0).unwrap())
        .collect();
    let revocations: Vec<Revocation> = b
        .revocations
        .iter()
        .map(|r| Revocation::from_bytes(&r.0).unwrap())
        .collect();
    let current = VerifyingKey::from_bytes(&b.account_key.array::<32>("k").unwrap()).unwrap();
    let chain = AccountChain::verify(&user, &old_key, &current, &rotations, &revocations).unwrap();
    assert!(chain.rotated());
    assert!(chain.is_revoked(a3.device_id, &a3.identity.public().signing));
    for d in &b.devices {
        chain
            .verify_device(&DeviceCertificate::from_bytes(&d.certificate.0).unwrap())
            .unwrap();
    }
    // The same revocation again (a retry after a lost answer): the same answer.
    let r = a1.request("DELETE", &path, Some(&body)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json["device_id"], a3.device_id.get());
    // A revoked device id is never registered again on the account.
    let mut again = Device::new(user.as_str(), new_account.clone());
    again.device_id = a3.device_id;
    again.cert = new_account.certify(&user, a3.device_id, &again.identity.public(), now_ms());
    let mut a1_new = a1;
    a1_new.account = new_account;
    let body = json!({ "device": serde_json::to_value(again.new_device_json(0)).unwrap() });
    let r = a1_new
        .request("POST", &format!("/v1/accounts/{user}/devices"), Some(&body))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.json);
    assert_eq!(r.json["error"], "device_exists");
    let _ = UserId::new("x.y.z");
}

#[tokio::test]
async fn prekey_upload_limits_and_count() {
    let mut d = Device::registered("keys", 0).await;
    let count = d.request("GET", "/v1/keys", None).await;
    assert_eq!(count.json["one_time_prekeys"], 0);
    let upload = |opks: Vec<cipherpost_protocol::OneTimePreKeyPublic>| json!({ "one_time_prekeys": opks.iter().map(|o| json!({"id": o.id, "key": B64(o.key.to_bytes().to_vec())})).collect::<Vec<_>>() });
    let hundred = d.prekeys.generate_one_time_prekeys(&mut OsRng, 100);
    let r = d
        .request("PUT", "/v1/keys", Some(&upload(hundred.clone())))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json);
    assert_eq!(r.json["one_time_prekeys"], 100);
    // 101 in one request: 400, nothing stored.
    let more = d.prekeys.generate_one_time_prekeys(&mut OsRng, 101);
    let r = d
        .request("PUT", "/v1/keys", Some(&upload(more.clone())))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"], "too_many_prekeys");
    // Ids at or below the highest stored: 400.
    let r = d
        .request("PUT", "/v1/keys", Some(&upload(hundred[90..].to_vec())))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.json);
    assert_eq!(r.json["error"], "prekey_id_not_increasing");
    assert_eq!(
        d.request("GET", "/v1/keys", None).await.json["one_time_prekeys"],
        100
    );
    // A replayed upload (same signature) is refused.
    let next = d.prekeys.generate_one_time_prekeys(&mut OsRng, 5);
    let body = serde_json::to_vec(&upload(next)).unwrap();
    let ts = now_ms();
    assert_eq!(
        d.request_raw("PUT", "/v1/keys", body.clone(), ts)
            .await
            .status,
        200
    );
    assert_eq!(d.request_raw("PUT", "/v1/keys", body, ts).await.status, 401);
}

#[tokio::test]
async fn bundle_hands_out_each_one_time_prekey_once_under_concurrency() {
    let target = Device::registered("drain", 20).await;
    // Three fetching devices, since one device may fetch an account's bundle only 20 times an
    // hour (the limit against draining); 50 concurrent fetches in all.
    let fetchers = [
        Device::registered("fetch", 0).await,
        Device::registered("fetch", 0).await,
        Device::registered("fetch", 0).await,
    ];
    let path = format!("/v1/keys/{}", target.user);
    let answers = futures::future::join_all(
        (0..50).map(|i| fetchers[i % fetchers.len()].request("GET", &path, None)),
    )
    .await;
    let mut ids = Vec::new();
    let mut without = 0;
    for a in &answers {
        assert_eq!(a.status, 200, "{:?}", a.json);
        let b = bundle(a);
        assert_eq!(b.devices.len(), 1);
        match &b.devices[0].one_time_prekey {
            Some(o) => ids.push(o.id),
            None => without += 1,
        }
        // Every bundle carries the certificate and a signed prekey that verifies.
        let cert = DeviceCertificate::from_bytes(&b.devices[0].certificate.0).unwrap();
        cert.verify(&target.account.public_key()).unwrap();
    }
    let distinct: HashSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 20, "20 fetches got a one-time prekey");
    assert_eq!(distinct.len(), 20, "never one twice");
    assert_eq!(without, 30);
    assert_eq!(
        target.request("GET", "/v1/keys", None).await.json["one_time_prekeys"],
        0
    );
}

#[tokio::test]
async fn prekeys_low_is_pushed_below_ten() {
    let target = Device::registered("low", 11).await;
    let mut socket = target.connect().await.unwrap();
    let fetcher = Device::registered("lowf", 0).await;
    let path = format!("/v1/keys/{}", target.user);
    // 11 -> 10: not low yet.
    fetcher.request("GET", &path, None).await;
    // 10 -> 9: low.
    fetcher.request("GET", &path, None).await;
    let push = socket
        .next_json(std::time::Duration::from_secs(5))
        .await
        .expect("a push");
    assert_eq!(push["type"], "prekeys_low");
    assert_eq!(push["remaining"], 9);
}

#[tokio::test]
async fn bad_expired_and_wrong_key_signatures_are_401_and_change_nothing() {
    let mut d = Device::registered("auth", 0).await;
    let opks = d.prekeys.generate_one_time_prekeys(&mut OsRng, 3);
    let body = serde_json::to_vec(&json!({ "one_time_prekeys": opks.iter().map(|o| json!({"id": o.id, "key": B64(o.key.to_bytes().to_vec())})).collect::<Vec<_>>() })).unwrap();
    // Expired (6 minutes old) and from the future.
    for ts in [now_ms() - 360_000, now_ms() + 360_000] {
        let r = d.request_raw("PUT", "/v1/keys", body.clone(), ts).await;
        assert_eq!(r.status, 401, "{:?}", r.json);
    }
    // Signed by another device's key, claiming d's identity.
    let other = Device::registered("auth2", 0).await;
    let auth = other.sign("PUT", "/v1/keys", &body, now_ms()).replace(
        &format!("user={},device={}", other.user, other.device_id),
        &format!("user={},device={}", d.user, d.device_id),
    );
    let r = cipherpost_tests::send_raw(
        &reqwest::Client::new(),
        "PUT",
        "/v1/keys",
        body.clone(),
        Some(auth),
    )
    .await;
    assert_eq!(r.status, 401);
    // The body changed after signing.
    let auth = d.sign("PUT", "/v1/keys", &body, now_ms());
    let mut tampered = body.clone();
    tampered.push(b' ');
    let r = cipherpost_tests::send_raw(
        &reqwest::Client::new(),
        "PUT",
        "/v1/keys",
        tampered,
        Some(auth),
    )
    .await;
    assert_eq!(r.status, 401);
    // No header, garbage header.
    for h in [
        None,
        Some("Bearer x".to_string()),
        Some("CipherPost-Ed25519 user=a".to_string()),
    ] {
        let r =
            cipherpost_tests::send_raw(&reqwest::Client::new(), "GET", "/v1/keys", vec![], h).await;
        assert_eq!(r.status, 401);
        assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        d.request("GET", "/v1/keys", None).await.json["one_time_prekeys"],
        0
    );
    let _: Value = Value::Null;
}
