//! Request and WebSocket-connect signing (PROTOCOL.md, "Request authentication"): round
//! trips, every signed field, the clock window, strict parsing of headers and queries, and the
//! vector (`request_auth.json`), rebuilt from the spec with `ed25519-dalek` directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::{
    connect_signing_message, request_signing_message, AuthError, ConnectAuth, DeviceId,
    DeviceIdentity, RequestAuth, Signature, UserId,
};
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use rand_core::OsRng;
use serde_json::{json, Value};
use support::{check_vectors, hx, reference as re, seed, Inputs, Kind};

const TS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const SKEW: u64 = 300_000;
const BODY: &[u8] = br#"{"one_time_prekeys":[]}"#;

struct TestSigner {
    identity: DeviceIdentity,
    user: UserId,
    device: DeviceId,
}

fn signer() -> TestSigner {
    TestSigner {
        identity: DeviceIdentity::generate(&mut OsRng),
        user: UserId::new("alice").unwrap(),
        device: DeviceId::new(1234).unwrap(),
    }
}

impl TestSigner {
    fn request(&self, method: &str, path: &str, ts: u64, body: &[u8]) -> RequestAuth {
        RequestAuth::sign(
            &self.identity,
            &self.user,
            self.device,
            method,
            path,
            ts,
            body,
        )
    }
    fn key(&self) -> ed25519_dalek::VerifyingKey {
        self.identity.public().signing
    }
}

/// `s` with `L` (the group order) added to its scalar half: the same signature, malleated.
fn malleate(sig: &Signature) -> Signature {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut b = sig.to_bytes();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = b[32 + i] as u16 + L[i] as u16 + carry;
        b[32 + i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    Signature::from_bytes(&b)
}

#[test]
fn request_round_trip() {
    let s = signer();
    let auth = s.request("PUT", "/v1/keys", TS, BODY);
    let header = auth.to_header();
    let sig_b64 = URL_SAFE_NO_PAD.encode(auth.signature.to_bytes());
    assert_eq!(sig_b64.len(), 86);
    assert_eq!(
        header,
        format!("CipherPost-Ed25519 user=alice,device=1234,ts={TS},sig={sig_b64}")
    );
    let parsed = RequestAuth::parse_header(&header).unwrap();
    assert_eq!(parsed, auth);
    parsed
        .verify(&s.key(), "PUT", "/v1/keys", BODY, TS)
        .unwrap();
    // No body and a query.
    let get = s.request("GET", "/v1/messages?after=5&limit=50", TS, b"");
    let parsed = RequestAuth::parse_header(&get.to_header()).unwrap();
    parsed
        .verify(&s.key(), "GET", "/v1/messages?after=5&limit=50", b"", TS)
        .unwrap();
}

#[test]
fn signed_message_layout() {
    let user = UserId::new("alice").unwrap();
    let m = request_signing_message(
        &user,
        DeviceId::new(7).unwrap(),
        "GET",
        "/v1/x?a=1",
        42,
        b"",
    );
    assert_eq!(
        String::from_utf8(m).unwrap(),
        "cipherpost/request/v1\nalice\n7\nGET\n/v1/x?a=1\n42\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let m = connect_signing_message(
        &user,
        DeviceId::new(7).unwrap(),
        42,
        "AAAAAAAAAAAAAAAAAAAAAA",
    );
    assert_eq!(
        String::from_utf8(m).unwrap(),
        "cipherpost/connect/v1\nalice\n7\n42\nAAAAAAAAAAAAAAAAAAAAAA"
    );
}

#[test]
fn every_signed_field_counts() {
    let s = signer();
    let auth = s.request("PUT", "/v1/keys?x=1", TS, BODY);
    let ok = |a: &RequestAuth, m: &str, p: &str, b: &[u8]| a.verify(&s.key(), m, p, b, TS);
    ok(&auth, "PUT", "/v1/keys?x=1", BODY).unwrap();

    let other = signer();
    let other_user = RequestAuth {
        user_id: UserId::new("bob").unwrap(),
        ..auth.clone()
    };
    let other_device = RequestAuth {
        device_id: DeviceId::new(1235).unwrap(),
        ..auth.clone()
    };
    let other_ts = RequestAuth {
        ts_ms: TS + 1,
        ..auth.clone()
    };
    let malleated = RequestAuth {
        signature: malleate(&auth.signature),
        ..auth.clone()
    };
    let cases: Vec<(&str, Result<(), AuthError>)> = vec![
        (
            "wrong key",
            auth.verify(&other.key(), "PUT", "/v1/keys?x=1", BODY, TS),
        ),
        ("method", ok(&auth, "POST", "/v1/keys?x=1", BODY)),
        ("path", ok(&auth, "PUT", "/v1/key?x=1", BODY)),
        ("query", ok(&auth, "PUT", "/v1/keys?x=2", BODY)),
        ("query dropped", ok(&auth, "PUT", "/v1/keys", BODY)),
        (
            "body",
            ok(&auth, "PUT", "/v1/keys?x=1", br#"{"one_time_prekeys":[1]}"#),
        ),
        ("empty body", ok(&auth, "PUT", "/v1/keys?x=1", b"")),
        ("user", ok(&other_user, "PUT", "/v1/keys?x=1", BODY)),
        ("device", ok(&other_device, "PUT", "/v1/keys?x=1", BODY)),
        ("ts", ok(&other_ts, "PUT", "/v1/keys?x=1", BODY)),
        ("S + L", ok(&malleated, "PUT", "/v1/keys?x=1", BODY)),
    ];
    for (name, r) in cases {
        assert_eq!(r, Err(AuthError::BadSignature), "{name}");
    }
    // A malleated signature still parses (64 bytes): it is verify_strict that refuses it.
    let header = malleated.to_header();
    assert_eq!(RequestAuth::parse_header(&header).unwrap(), malleated);
}

#[test]
fn clock_window_is_five_minutes() {
    let s = signer();
    let auth = s.request("DELETE", "/v1/devices/7", TS, b"");
    let at = |now: u64| auth.verify(&s.key(), "DELETE", "/v1/devices/7", b"", now);
    for now in [TS, TS - SKEW, TS + SKEW] {
        at(now).unwrap();
    }
    assert_eq!(
        at(TS + SKEW + 1),
        Err(AuthError::Expired { skew_ms: SKEW + 1 })
    );
    assert_eq!(
        at(TS - SKEW - 1),
        Err(AuthError::Expired { skew_ms: SKEW + 1 })
    );
    assert_eq!(at(0), Err(AuthError::Expired { skew_ms: TS }));
    assert_eq!(
        at(TS + SKEW + 1).unwrap_err().to_string(),
        "the signed time is 300001 ms away from the server clock; at most 300000 ms are allowed"
    );
    // The window is checked before the signature: a stale request says so.
    let far = RequestAuth {
        ts_ms: u64::MAX,
        ..auth.clone()
    };
    assert_eq!(
        far.verify(&s.key(), "DELETE", "/v1/devices/7", b"", 0),
        Err(AuthError::Expired { skew_ms: u64::MAX })
    );
}

#[test]
fn verifier_refuses_requests_that_cannot_have_been_signed() {
    let s = signer();
    for (method, path, why) in [
        ("put", "/v1/keys", "upper-case"),
        ("Put", "/v1/keys", "upper-case"),
        ("", "/v1/keys", "upper-case"),
        ("PUT ", "/v1/keys", "upper-case"),
        ("M-SEARCH", "/v1/keys", "upper-case"),
        ("PUT", "/prod/v1/keys", "/v1/"),
        ("PUT", "v1/keys", "/v1/"),
        ("PUT", "", "/v1/"),
        ("PUT", "/v1/keys\n123", "visible ASCII"),
        ("PUT", "/v1/a b", "visible ASCII"),
        ("PUT", "/v1/é", "visible ASCII"),
    ] {
        // Signed exactly as given, the request is still refused before any signature check.
        let auth = s.request(method, path, TS, b"");
        match auth.verify(&s.key(), method, path, b"", TS) {
            Err(e @ AuthError::InvalidRequest(msg)) => {
                assert!(msg.contains(why), "{method:?} {path:?}: {msg}");
                assert!(e
                    .to_string()
                    .starts_with("the request cannot be verified: "));
            }
            other => panic!("{method:?} {path:?}: {other:?}"),
        }
    }
}

/// A valid header's parts, to break one at a time.
fn parts() -> (String, String) {
    let s = signer();
    let sig = URL_SAFE_NO_PAD.encode(s.request("GET", "/v1/x", TS, b"").signature.to_bytes());
    (format!("ts={TS}"), sig)
}

/// `sig` with non-zero trailing bits in its last character (a second spelling of the bytes).
fn non_canonical(b64: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = *b64.as_bytes().last().unwrap();
    let v = ALPHABET.iter().position(|c| *c == last).unwrap();
    let mut s = b64[..b64.len() - 1].to_string();
    s.push(ALPHABET[v | 1] as char);
    s
}

#[test]
fn malformed_headers_are_refused() {
    let (ts, sig) = parts();
    let good = format!("CipherPost-Ed25519 user=alice,device=1234,{ts},sig={sig}");
    RequestAuth::parse_header(&good).unwrap();
    let with = |user: &str, device: &str, ts: &str, sig: &str| {
        format!("CipherPost-Ed25519 user={user},device={device},ts={ts},sig={sig}")
    };
    let t = TS.to_string();
    let sig_bytes = URL_SAFE_NO_PAD.decode(&sig).unwrap();
    let std_alphabet = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&sig_bytes);
    let order = "exactly user, device, ts and sig, in this order";
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "must start with \"CipherPost-Ed25519 \""),
        (format!("Bearer {sig}"), "must start with"),
        (
            good.replace("CipherPost-Ed25519", "cipherpost-ed25519"),
            "must start with",
        ),
        (
            good.replace("CipherPost-Ed25519 ", "CipherPost-Ed25519"),
            "must start with",
        ),
        (format!(" {good}"), "must start with"),
        (
            good.replace("CipherPost-Ed25519 ", "CipherPost-Ed25519  "),
            "no spaces",
        ),
        (format!("{good} "), "no spaces"),
        (good.replace(",device", ", device"), "no spaces"),
        (
            format!("CipherPost-Ed25519 device=1234,user=alice,{ts},sig={sig}"),
            order,
        ),
        (
            format!("CipherPost-Ed25519 user=alice,device=1234,{ts}"),
            order,
        ),
        (
            format!("CipherPost-Ed25519 user=alice,device=1234,sig={sig}"),
            order,
        ),
        (format!("{good},x=1"), order),
        (format!("{good},sig={sig}"), order),
        (format!("{good},"), order),
        (
            format!("CipherPost-Ed25519 user=alice,user=alice,device=1234,{ts},sig={sig}"),
            order,
        ),
        (good.replace("user=", "user:"), order),
        (good.replace("user=", "User="), order),
        (good.replace("user=", "username="), order),
        (good.replace(',', ";"), order),
        (with("", "1234", &t, &sig), "empty value"),
        (with("alice", "1234", "", &sig), "empty value"),
        (with("Alice", "1234", &t, &sig), "user must be 3 to 32"),
        (with("al", "1234", &t, &sig), "user must be"),
        (with(&"a".repeat(33), "1234", &t, &sig), "user must be"),
        (with("alicé", "1234", &t, &sig), "user must be"),
        (with("alice=x", "1234", &t, &sig), "user must be"),
        (with("al%20ice", "1234", &t, &sig), "user must be"),
        (with("alice", "0", &t, &sig), "device must be a non-zero"),
        (with("alice", "01234", &t, &sig), "device must be"),
        (with("alice", "+1234", &t, &sig), "device must be"),
        (with("alice", "-1", &t, &sig), "device must be"),
        (with("alice", "0x10", &t, &sig), "device must be"),
        (with("alice", "4294967296", &t, &sig), "device must be"),
        (with("alice", "1234\t", &t, &sig), "device must be"),
        (with("alice", "1234", &format!("0{t}"), &sig), "ts must be"),
        (
            with("alice", "1234", "18446744073709551616", &sig),
            "ts must be",
        ),
        (with("alice", "1234", "1.5", &sig), "ts must be"),
        (with("alice", "1234", "-5", &sig), "ts must be"),
        (
            with("alice", "1234", &t, &format!("{sig}==")),
            "sig must be 64 bytes",
        ),
        (
            with("alice", "1234", &t, &format!("+{}", &sig[1..])),
            "sig must be",
        ),
        (
            with("alice", "1234", &t, &format!("/{}", &sig[1..])),
            "sig must be",
        ),
        (
            with(
                "alice",
                "1234",
                &t,
                &URL_SAFE_NO_PAD.encode(&sig_bytes[..63]),
            ),
            "sig must be",
        ),
        (
            with(
                "alice",
                "1234",
                &t,
                &URL_SAFE_NO_PAD.encode([&sig_bytes[..], &[0]].concat()),
            ),
            "sig must be",
        ),
        (
            with("alice", "1234", &t, &non_canonical(&sig)),
            "sig must be",
        ),
        (
            with("alice", "1234", &t, &format!("{sig}\n")),
            "sig must be",
        ),
        (with("alice", "1234", &t, &sig[..85]), "sig must be"),
    ];
    for (header, why) in cases {
        match RequestAuth::parse_header(&header) {
            Err(e @ AuthError::Malformed(msg)) => {
                assert!(msg.contains(why), "{header:?}: {msg:?} lacks {why:?}");
                assert!(e
                    .to_string()
                    .starts_with("malformed Authorization header: "));
            }
            other => panic!("{header:?}: {other:?}"),
        }
    }
    // The standard-alphabet spelling is refused when it differs from the URL-safe one.
    if std_alphabet != sig {
        let h = with("alice", "1234", &t, &std_alphabet);
        assert!(matches!(
            RequestAuth::parse_header(&h),
            Err(AuthError::Malformed(_))
        ));
    }
}

#[test]
fn connect_round_trip() {
    let s = signer();
    let auth = ConnectAuth::sign(&mut OsRng, &s.identity, &s.user, s.device, TS);
    let query = auth.to_query();
    let nonce = URL_SAFE_NO_PAD.encode(auth.nonce);
    let sig = URL_SAFE_NO_PAD.encode(auth.signature.to_bytes());
    assert_eq!((nonce.len(), sig.len()), (22, 86));
    assert_eq!(
        query,
        format!("user=alice&device=1234&ts={TS}&nonce={nonce}&sig={sig}")
    );
    let parsed = ConnectAuth::parse_query(&query).unwrap();
    assert_eq!(parsed, auth);
    for now in [TS, TS - SKEW, TS + SKEW] {
        parsed.verify(&s.key(), now).unwrap();
    }
    assert_eq!(
        parsed.verify(&s.key(), TS + SKEW + 1),
        Err(AuthError::Expired { skew_ms: SKEW + 1 })
    );
    assert_eq!(
        parsed.verify(&s.key(), TS - SKEW - 1),
        Err(AuthError::Expired { skew_ms: SKEW + 1 })
    );

    // Fresh nonces.
    let again = ConnectAuth::sign(&mut OsRng, &s.identity, &s.user, s.device, TS);
    assert_ne!(again.nonce, auth.nonce);
}

#[test]
fn connect_signed_fields_count() {
    let s = signer();
    let auth = ConnectAuth::sign_with_nonce(&s.identity, &s.user, s.device, TS, [9u8; 16]);
    auth.verify(&s.key(), TS).unwrap();
    let mut nonce = auth.nonce;
    nonce[15] ^= 1;
    for (name, a) in [
        (
            "user",
            ConnectAuth {
                user_id: UserId::new("bob").unwrap(),
                ..auth.clone()
            },
        ),
        (
            "device",
            ConnectAuth {
                device_id: DeviceId::new(1).unwrap(),
                ..auth.clone()
            },
        ),
        (
            "ts",
            ConnectAuth {
                ts_ms: TS - 1,
                ..auth.clone()
            },
        ),
        (
            "nonce",
            ConnectAuth {
                nonce,
                ..auth.clone()
            },
        ),
        (
            "S + L",
            ConnectAuth {
                signature: malleate(&auth.signature),
                ..auth.clone()
            },
        ),
    ] {
        assert_eq!(
            a.verify(&s.key(), TS),
            Err(AuthError::BadSignature),
            "{name}"
        );
    }
    assert_eq!(
        auth.verify(&signer().key(), TS),
        Err(AuthError::BadSignature)
    );
    // A request signature is not a connect signature, nor the reverse (distinct labels).
    let req = s.request("GET", "/v1/x", TS, b"");
    let cross = ConnectAuth {
        signature: req.signature,
        ..auth.clone()
    };
    assert_eq!(cross.verify(&s.key(), TS), Err(AuthError::BadSignature));
}

#[test]
fn malformed_queries_are_refused() {
    let s = signer();
    let auth = ConnectAuth::sign_with_nonce(&s.identity, &s.user, s.device, TS, [9u8; 16]);
    let good = auth.to_query();
    ConnectAuth::parse_query(&good).unwrap();
    let nonce = URL_SAFE_NO_PAD.encode(auth.nonce);
    let sig = URL_SAFE_NO_PAD.encode(auth.signature.to_bytes());
    let t = TS.to_string();
    let with = |user: &str, device: &str, ts: &str, nonce: &str, sig: &str| {
        format!("user={user}&device={device}&ts={ts}&nonce={nonce}&sig={sig}")
    };
    let order = "exactly user, device, ts, nonce and sig, in this order";
    let cases: Vec<(String, &str)> = vec![
        (String::new(), order),
        (format!("?{good}"), order),
        (format!("{good}&"), order),
        (format!("{good}&x=1"), order),
        (format!("{good}&nonce={nonce}"), order),
        (
            format!("user=alice&device=1234&nonce={nonce}&ts={t}&sig={sig}"),
            order,
        ),
        (format!("user=alice&device=1234&ts={t}&sig={sig}"), order),
        (good.replace('&', ","), order),
        (good.replace("nonce=", "nonce%3D"), order),
        (good.replace("&device", " &device"), "no spaces"),
        (with("alice", "1234", &t, "", &sig), "empty value"),
        (with("Alice", "1234", &t, &nonce, &sig), "user must be"),
        (with("alice", "0", &t, &nonce, &sig), "device must be"),
        (with("alice", "01234", &t, &nonce, &sig), "device must be"),
        (
            with("alice", "1234", &format!("0{t}"), &nonce, &sig),
            "ts must be",
        ),
        (
            with("alice", "1234", &t, &format!("{nonce}=="), &sig),
            "nonce must be 16 bytes",
        ),
        (
            with("alice", "1234", &t, &format!("{nonce}%3D%3D"), &sig),
            "nonce must be",
        ),
        (
            with(
                "alice",
                "1234",
                &t,
                &URL_SAFE_NO_PAD.encode([9u8; 15]),
                &sig,
            ),
            "nonce must be",
        ),
        (
            with(
                "alice",
                "1234",
                &t,
                &URL_SAFE_NO_PAD.encode([9u8; 17]),
                &sig,
            ),
            "nonce must be",
        ),
        (
            with("alice", "1234", &t, &non_canonical(&nonce), &sig),
            "nonce must be",
        ),
        (
            with("alice", "1234", &t, &nonce, &format!("{sig}==")),
            "sig must be",
        ),
        (
            with("alice", "1234", &t, &nonce, &non_canonical(&sig)),
            "sig must be",
        ),
        (with("alice", "1234", &t, &nonce, &nonce), "sig must be"),
    ];
    for (query, why) in cases {
        match ConnectAuth::parse_query(&query) {
            Err(e @ AuthError::MalformedQuery(msg)) => {
                assert!(msg.contains(why), "{query:?}: {msg:?} lacks {why:?}");
                assert!(e.to_string().starts_with("malformed connect query: "));
            }
            other => panic!("{query:?}: {other:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn header_and_query_round_trip(
        user in "[a-z0-9._-]{3,32}",
        device in 1u32..,
        ts in any::<u64>(),
        nonce in any::<[u8; 16]>(),
    ) {
        let identity = DeviceIdentity::generate(&mut OsRng);
        let user = UserId::new(&user).unwrap();
        let device = DeviceId::new(device).unwrap();
        let auth = RequestAuth::sign(&identity, &user, device, "POST", "/v1/m", ts, b"x");
        prop_assert_eq!(RequestAuth::parse_header(&auth.to_header()).unwrap(), auth);
        let c = ConnectAuth::sign_with_nonce(&identity, &user, device, ts, nonce);
        prop_assert_eq!(ConnectAuth::parse_query(&c.to_query()).unwrap(), c);
    }

    #[test]
    fn parsing_never_panics(s in "\\PC{0,200}") {
        let _ = RequestAuth::parse_header(&format!("CipherPost-Ed25519 {s}"));
        let _ = ConnectAuth::parse_query(&s);
    }
}

/// `hex(H(body))`, restated.
fn body_hash(body: &[u8]) -> String {
    hx(re::h(&[body]))
}

#[test]
fn request_auth_vectors() {
    let inputs = Inputs::new();
    let iks = inputs.ed25519("request_device_iks");
    let ikd = inputs.x25519("request_device_ikd");
    let device_id = inputs.u32("request_device_id");
    let identity = DeviceIdentity::from_bytes(&iks.to_bytes(), &ikd.to_bytes());
    let user = UserId::new("alice").unwrap();
    let device = DeviceId::new(device_id).unwrap();
    // The spec's signer, independent of the library.
    let dalek = SigningKey::from_bytes(&seed("request_device_iks"));
    assert_eq!(dalek.verifying_key(), identity.public().signing);

    let requests = [
        ("PUT", "/v1/keys", BODY),
        ("GET", "/v1/messages?after=0&limit=50", &b""[..]),
    ];
    let mut out = Vec::new();
    for (method, path, body) in requests {
        let text = format!(
            "cipherpost/request/v1\nalice\n{device_id}\n{method}\n{path}\n{TS}\n{}",
            body_hash(body)
        );
        let sig = dalek.sign(text.as_bytes());
        let header = format!(
            "CipherPost-Ed25519 user=alice,device={device_id},ts={TS},sig={}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        );
        let auth = RequestAuth::sign(&identity, &user, device, method, path, TS, body);
        assert_eq!(
            request_signing_message(&user, device, method, path, TS, body),
            text.as_bytes()
        );
        assert_eq!(auth.signature, sig);
        assert_eq!(auth.to_header(), header);
        let parsed = RequestAuth::parse_header(&header).unwrap();
        parsed
            .verify(&dalek.verifying_key(), method, path, body, TS)
            .unwrap();
        out.push(json!({
            "method": method,
            "path_and_query": path,
            "ts": TS,
            "body_text": std::str::from_utf8(body).unwrap(),
            "body": hx(body),
            "body_hash": body_hash(body),
            "message_text": text,
            "message": hx(text.as_bytes()),
            "signature": hx(sig.to_bytes()),
            "header": header,
        }));
    }

    let mut rng = inputs.rng(&[("connect_nonce", Kind::Bytes)]);
    let connect = ConnectAuth::sign(&mut rng, &identity, &user, device, TS);
    assert_eq!(rng.remaining(), 0);
    let nonce: [u8; 16] = seed("connect_nonce")[..16].try_into().unwrap();
    let nonce_b64 = URL_SAFE_NO_PAD.encode(nonce);
    let text = format!("cipherpost/connect/v1\nalice\n{device_id}\n{TS}\n{nonce_b64}");
    let sig = dalek.sign(text.as_bytes());
    let query = format!(
        "user=alice&device={device_id}&ts={TS}&nonce={nonce_b64}&sig={}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    );
    assert_eq!(connect.nonce, nonce);
    assert_eq!(connect.signature, sig);
    assert_eq!(connect.to_query(), query);
    ConnectAuth::parse_query(&query)
        .unwrap()
        .verify(&dalek.verifying_key(), TS)
        .unwrap();

    let value: Value = json!({
        "inputs": inputs.to_json(),
        "user_id": "alice",
        "device_id": device_id,
        "signing_public": hx(dalek.verifying_key().to_bytes()),
        "requests": out,
        "connect": {
            "ts": TS,
            "nonce": hx(nonce),
            "nonce_b64": nonce_b64,
            "message_text": text,
            "message": hx(text.as_bytes()),
            "signature": hx(sig.to_bytes()),
            "query": query,
        },
    });
    check_vectors("request_auth.json", &value);
}
