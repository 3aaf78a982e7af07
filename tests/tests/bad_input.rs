//! Bad input over every route (issue #9, "Bad input"): malformed JSON, wrong types, bad base64,
//! unknown and missing fields, oversized bodies, headers and arrays, numbers out of range,
//! invalid UTF-8, path tricks in ids, invalid user and device ids, truncated and oversized
//! protocol messages.
//!
//! Every case must be answered with a 4xx JSON error `{"error", "message"}` carrying the
//! expected status and code and a non-empty message, the answer must match `api/openapi.yaml`
//! (a path no route of the description matches must be a gateway 404 `not_found` in the
//! `Error` schema), and the stored state must be unchanged: the tables a request could write
//! are snapshotted (`cipherpost_tests::state`) before and after each case. The `replay` and
//! `limits` tables are not compared: a refused request may be counted against a rate limit or
//! remembered as a used signature, and both are expected.
//!
//! Requests go over a plain TCP connection, byte for byte as written here, so that no HTTP
//! client normalizes a path (`..`, `%2e%2e`) before the server sees it. One test per route
//! family; each has its own accounts (a tag in every user id scopes its snapshots).
//!
//! Not here: 1:1 message bodies and key envelopes are end-to-end encrypted and opaque to the
//! server, so a truncated ratchet message is accepted and queued by design (the receiving client
//! refuses it); only their sizes are checked here. Attachment routes live on another branch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{Read, Write};
use std::time::Duration;

use cipherpost_backend::api::{devices_digest, Group};
use cipherpost_protocol::{AccountKey, DeviceAddress, GroupId, MessageId, OwnSenderKey};
use cipherpost_tests::{
    api, b64, now_ms, openapi,
    state::{Scope, Snapshot},
    Device,
};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};

/// How a case is authenticated.
enum Auth {
    /// No `Authorization` header.
    None,
    /// This header as is.
    Header(String),
}

/// One bad request and the refusal it must get.
struct Case {
    name: String,
    method: &'static str,
    /// The request target as sent on the wire (from `/v1/` on, with any query).
    path: String,
    body: Vec<u8>,
    auth: Auth,
    headers: Vec<(String, String)>,
    status: u16,
    code: &'static str,
}

impl Case {
    fn new(
        name: impl Into<String>,
        method: &'static str,
        path: impl Into<String>,
        body: Vec<u8>,
        auth: Auth,
        status: u16,
        code: &'static str,
    ) -> Self {
        Self {
            name: name.into(),
            method,
            path: path.into(),
            body,
            auth,
            headers: Vec::new(),
            status,
            code,
        }
    }
}

/// A request signed by `d` (at the current time) over exactly these bytes and this target.
fn signed(
    d: &Device,
    name: impl Into<String>,
    method: &'static str,
    path: impl Into<String>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> Case {
    let path = path.into();
    let auth = Auth::Header(d.sign(method, &path, &body, now_ms()));
    Case::new(name, method, path, body, auth, status, code)
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// `v` with the value at `pointer` replaced (or removed when `new` is None).
fn with(v: &Value, pointer: &str, new: Option<Value>) -> Value {
    let mut out = v.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = if parent.is_empty() {
        &mut out
    } else {
        out.pointer_mut(parent)
            .unwrap_or_else(|| panic!("no {parent}"))
    };
    match target {
        Value::Object(m) => match new {
            Some(n) => {
                m.insert(key.to_owned(), n);
            }
            None => {
                m.remove(key);
            }
        },
        Value::Array(a) => {
            let i: usize = key.parse().unwrap();
            match new {
                Some(n) => a[i] = n,
                None => {
                    a.remove(i);
                }
            }
        }
        _ => panic!("{pointer} is not in an object or array"),
    }
    out
}

fn random16() -> [u8; 16] {
    let mut m = [0u8; 16];
    OsRng.fill_bytes(&mut m);
    m
}

/// A JSON field of a request body and the kind of value it takes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    B64,
    Str,
    Num,
    Arr,
    Obj,
    Bool,
}

/// The generic body cases of a JSON route: `valid` is a body the route would accept from
/// `d` (it is never sent as is); `fields` are JSON pointers of its fields, their kind and
/// whether they are required.
fn json_cases(
    d: &Device,
    route: &str,
    method: &'static str,
    path: &str,
    valid: &Value,
    fields: &[(&str, Kind, bool)],
) -> Vec<Case> {
    let mut out = Vec::new();
    let vb = to_bytes(valid);
    let mut case = |what: &str, body: Vec<u8>, status: u16, code: &'static str| {
        out.push(signed(
            d,
            format!("{route}: {what}"),
            method,
            path,
            body,
            status,
            code,
        ));
    };
    case("empty body", Vec::new(), 400, "invalid_json");
    case(
        "truncated JSON",
        vb[..vb.len() / 2].to_vec(),
        400,
        "invalid_json",
    );
    case("not JSON", b"hello".to_vec(), 400, "invalid_json");
    case(
        "trailing garbage",
        [vb.as_slice(), b"}"].concat(),
        400,
        "invalid_json",
    );
    case("JSON array", b"[]".to_vec(), 400, "invalid_field");
    case("JSON null", b"null".to_vec(), 400, "invalid_field");
    case("JSON string", b"\"x\"".to_vec(), 400, "invalid_field");
    case("JSON number", b"1e999".to_vec(), 400, "invalid_json");
    case(
        "invalid UTF-8 in a string",
        [&vb[..vb.len() - 1], b",\"\xff\xfe\":1}".as_slice()].concat(),
        400,
        "invalid_json",
    );
    case(
        "100,000 nested arrays",
        "[".repeat(100_000).into_bytes(),
        400,
        "invalid_field",
    );
    case(
        "unknown field",
        to_bytes(&with(valid, "/unexpected", Some(json!(1)))),
        400,
        "invalid_field",
    );
    // The first field twice, textually.
    let (first, ..) = fields[0];
    let first_key = first.trim_start_matches('/');
    if !first_key.contains('/') {
        let dup = format!(
            "{{\"{first_key}\":{},{}",
            valid[first_key],
            String::from_utf8(vb[1..].to_vec()).unwrap()
        );
        case("duplicate field", dup.into_bytes(), 400, "invalid_field");
    }
    for &(pointer, kind, required) in fields {
        if required {
            case(
                &format!("missing {pointer}"),
                to_bytes(&with(valid, pointer, None)),
                400,
                "invalid_field",
            );
        }
        let wrong = match kind {
            Kind::Num => json!("12"),
            Kind::Bool => json!("true"),
            _ => json!(12345),
        };
        case(
            &format!("wrong type at {pointer}"),
            to_bytes(&with(valid, pointer, Some(wrong))),
            400,
            "invalid_field",
        );
        match kind {
            Kind::B64 => {
                for (what, bad) in [
                    ("not base64", "!!!!"),
                    ("padded base64", "AAAA=="),
                    ("standard-alphabet base64", "ab+/ab+/"),
                    ("impossible base64 length", "A"),
                ] {
                    case(
                        &format!("{what} at {pointer}"),
                        to_bytes(&with(valid, pointer, Some(json!(bad)))),
                        400,
                        "invalid_field",
                    );
                }
            }
            Kind::Num => {
                for bad in [json!(-1), json!(4_294_967_296_u64), json!(1.5)] {
                    case(
                        &format!("{bad} at {pointer}"),
                        to_bytes(&with(valid, pointer, Some(bad.clone()))),
                        400,
                        "invalid_field",
                    );
                }
                case(
                    &format!("2^64 at {pointer}"),
                    to_bytes(&with(valid, pointer, Some(json!(0))))
                        .into_iter()
                        .collect::<Vec<u8>>(),
                    400,
                    "invalid_field",
                );
            }
            _ => {}
        }
    }
    // Over the gateway's 10 MB payload limit.
    let mut huge = vb.clone();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"pad\":\"");
    huge.resize(10 * 1024 * 1024 + 1024, b'a');
    huge.extend_from_slice(b"\"}");
    case("body over 10 MB", huge, 413, "payload_too_large");
    // `2^64 at` above is replaced here with a literal (serde_json::Value cannot hold it).
    for c in out.iter_mut() {
        if c.name.contains("2^64 at ") {
            let pointer = c.name.rsplit(' ').next().unwrap().to_owned();
            let mut text =
                String::from_utf8(to_bytes(&with(valid, &pointer, Some(json!(0))))).unwrap();
            let key = pointer.rsplit('/').next().unwrap();
            text = text.replace(
                &format!("\"{key}\":0"),
                &format!("\"{key}\":18446744073709551616"),
            );
            c.body = text.into_bytes();
            c.auth = Auth::Header(d.sign(method, &c.path, &c.body, now_ms()));
        }
    }
    out
}

/// The authentication cases of a route (the body is `body`, otherwise acceptable).
fn auth_cases(d: &Device, route: &str, method: &'static str, path: &str, body: &[u8]) -> Vec<Case> {
    let b = body.to_vec();
    let now = now_ms();
    let mut out = vec![
        Case::new(
            format!("{route}: no Authorization header"),
            method,
            path,
            b.clone(),
            Auth::None,
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: garbage Authorization header"),
            method,
            path,
            b.clone(),
            Auth::Header("CipherPost-Ed25519 garbage".into()),
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: 16 KiB Authorization header"),
            method,
            path,
            b.clone(),
            Auth::Header(format!("CipherPost-Ed25519 {}", "a".repeat(16 * 1024))),
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: signed for another path"),
            method,
            path,
            b.clone(),
            Auth::Header(d.sign(method, "/v1/elsewhere", &b, now)),
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: signed over another body"),
            method,
            path,
            b.clone(),
            Auth::Header(d.sign(method, path, b"other", now)),
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: signed 10 minutes ago"),
            method,
            path,
            b.clone(),
            Auth::Header(d.sign(method, path, &b, now - 600_000)),
            401,
            "unauthorized",
        ),
        Case::new(
            format!("{route}: signed 10 minutes ahead"),
            method,
            path,
            b.clone(),
            Auth::Header(d.sign(method, path, &b, now + 600_000)),
            401,
            "unauthorized",
        ),
    ];
    // A device that was never registered.
    let stranger = Device::new(d.user.as_str(), AccountKey::generate(&mut OsRng));
    out.push(Case::new(
        format!("{route}: unregistered device"),
        method,
        path,
        b.clone(),
        Auth::Header(stranger.sign(method, path, &b, now)),
        401,
        "unauthorized",
    ));
    // A very large unrelated header is ignored (and the request refused for its signature).
    let mut big = Case::new(
        format!("{route}: 8 KiB unrelated header, no signature"),
        method,
        path,
        b,
        Auth::None,
        401,
        "unauthorized",
    );
    big.headers.push(("x-padding".into(), "p".repeat(8 * 1024)));
    out.push(big);
    out
}

/// The request target's ids as `path(<id>)`: invalid user ids and path tricks.
fn bad_user_ids(tag: &str) -> Vec<(String, String)> {
    vec![
        ("upper-case user id".into(), format!("{}-A", tag)),
        ("too short user id".into(), "ab".into()),
        ("33-byte user id".into(), "a".repeat(33)),
        ("5,000-byte user id".into(), "a".repeat(5000)),
        ("user id with %2F".into(), format!("{tag}%2Fa")),
        ("user id with encoded ..%2F".into(), format!("..%2F{tag}")),
        ("user id with encoded NUL".into(), format!("{tag}%00")),
        ("user id with invalid UTF-8".into(), format!("{tag}%FF%FE")),
        ("user id with a space".into(), format!("{tag}%20a")),
        ("user id ..".into(), "..".into()),
        ("user id %2e%2e".into(), "%2e%2e".into()),
        ("user id with a semicolon".into(), format!("{tag};a")),
    ]
}

struct Fx {
    tag: String,
    a1: Device,
    a2: Device,
    b1: Device,
    scope: Scope,
}

/// Two accounts: A with two devices, B with one; three one-time prekeys each.
async fn fixture() -> Fx {
    let tag = format!("bi{:08x}", OsRng.next_u32());
    let (a1, r) = Device::create_account(&format!("{tag}-a"), 3).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let (a2, r) = a1.link_new_device(3).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let (b1, r) = Device::create_account(&format!("{tag}-b"), 3).await;
    assert_eq!(r.status, 201, "{:?}", r.json);
    let scope = Scope {
        tag: tag.clone(),
        device_keys: vec![a1.device_key(), a2.device_key(), b1.device_key()],
    };
    Fx {
        tag,
        a1,
        a2,
        b1,
        scope,
    }
}

/// Sends one case byte for byte; answers the status and the body.
fn send_blocking(c: &Case) -> (u16, Vec<u8>) {
    let base = api();
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = std::net::TcpStream::connect(&host).expect("the gateway answers");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {}\r\n",
        c.method,
        c.path,
        c.body.len()
    );
    if !c.body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    if let Auth::Header(h) = &c.auth {
        head.push_str(&format!("authorization: {h}\r\n"));
    }
    for (k, v) in &c.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading the whole body and close.
    let _ = s.write_all(&c.body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{}: no HTTP answer: {:?}",
                c.name,
                String::from_utf8_lossy(&raw)
            )
        });
    let headers = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{}: bad status line {headers:?}", c.name));
    let mut body = raw[split + 4..].to_vec();
    if headers.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = body.as_slice();
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 4 + n..];
        }
        body = out;
    }
    (status, body)
}

async fn send(c: &Case) -> (u16, Vec<u8>) {
    // Cases are moved into the blocking task by value; rebuild a lightweight copy.
    let copy = Case {
        name: c.name.clone(),
        method: c.method,
        path: c.path.clone(),
        body: c.body.clone(),
        auth: match &c.auth {
            Auth::None => Auth::None,
            Auth::Header(h) => Auth::Header(h.clone()),
        },
        headers: c.headers.clone(),
        status: c.status,
        code: c.code,
    };
    tokio::task::spawn_blocking(move || send_blocking(&copy))
        .await
        .unwrap()
}

/// What is wrong with an answer to `c`, if anything.
fn judge(c: &Case, status: u16, bytes: &[u8]) -> Option<String> {
    let json: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => {
            return Some(format!(
                "answered {status} with a body that is not JSON: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            ))
        }
    };
    let mut problems = Vec::new();
    if status != c.status || json["error"] != c.code {
        problems.push(format!(
            "expected {} {}, got {status} {}",
            c.status,
            c.code,
            json_short(&json)
        ));
    }
    if !(400..500).contains(&status) {
        problems.push(format!("not a 4xx: {status}"));
    }
    match json["message"].as_str() {
        Some(m) if !m.trim().is_empty() => {}
        _ => problems.push(format!("no message: {}", json_short(&json))),
    }
    let spec = openapi::spec().unwrap();
    let conforms = match spec.route(c.method, &c.path) {
        Ok(_) => openapi::check_response(c.method, &c.path, status, &json),
        // No route of the description matches: the gateway's own 404.
        Err(_) if status == 404 && json["error"] == "not_found" => {
            openapi::check_schema("Error", &json)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = conforms {
        problems.push(format!("does not conform to api/openapi.yaml: {e}"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn json_short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 400 {
        format!("{}…", &s[..400])
    } else {
        s
    }
}

/// Runs the cases in order; between two cases the snapshot must not change.
async fn run(scope: &Scope, cases: Vec<Case>) {
    let mut failures = Vec::new();
    let mut before: Snapshot = scope.snapshot().await;
    let n = cases.len();
    for c in &cases {
        let (status, bytes) = send(c).await;
        let after = scope.snapshot().await;
        let mut why = judge(c, status, &bytes).into_iter().collect::<Vec<_>>();
        let changed = before.diff(&after);
        if !changed.is_empty() {
            why.push(format!(
                "the stored state changed:\n      {}",
                changed.join("\n      ")
            ));
        }
        if !why.is_empty() {
            failures.push(format!(
                "{} ({} {}):\n    {}",
                c.name,
                c.method,
                if c.path.len() > 120 {
                    &c.path[..120]
                } else {
                    &c.path
                },
                why.join("\n    ")
            ));
        }
        before = after;
    }
    eprintln!("{n} cases run, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// Accounts

#[tokio::test]
async fn create_account_refuses_bad_input_and_stores_nothing() {
    let fx = fixture().await;
    let user = format!("{}-new", fx.tag);
    let mut d = Device::new(&user, AccountKey::generate(&mut OsRng));
    let path = format!("/v1/accounts/{user}");
    let valid = json!({
        "account_key": b64(&d.account.public_key().to_bytes()),
        "device": d.new_device_json(3),
    });
    let mut scope = fx.scope.clone();
    scope.device_keys.push(d.device_key());
    let r = "PUT /v1/accounts/{user}";
    let mut cases = json_cases(
        &d,
        r,
        "PUT",
        &path,
        &valid,
        &[
            ("/account_key", Kind::B64, true),
            ("/device", Kind::Obj, true),
            ("/device/certificate", Kind::B64, true),
            ("/device/signed_prekey", Kind::Obj, true),
            ("/device/signed_prekey/id", Kind::Num, true),
            ("/device/signed_prekey/key", Kind::B64, true),
            ("/device/signed_prekey/signature", Kind::B64, true),
            ("/device/one_time_prekeys", Kind::Arr, false),
            ("/device/one_time_prekeys/0/id", Kind::Num, true),
            ("/device/one_time_prekeys/0/key", Kind::B64, true),
        ],
    );
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &d,
            format!("{r}: {what}"),
            "PUT",
            &path,
            to_bytes(&body),
            status,
            code,
        ));
    };
    let cert = d.cert.to_bytes();
    // The identity point: a weak (small-order) Ed25519 key.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    body_case(
        "31-byte account key",
        with(&valid, "/account_key", Some(json!(b64(&[7; 31])))),
        400,
        "invalid_field",
    );
    body_case(
        "weak account key",
        with(&valid, "/account_key", Some(json!(b64(&weak)))),
        400,
        "invalid_account_key",
    );
    body_case(
        "another account key than the certificate's",
        with(
            &valid,
            "/account_key",
            Some(json!(b64(&AccountKey::generate(&mut OsRng)
                .public_key()
                .to_bytes()))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "empty certificate",
        with(&valid, "/device/certificate", Some(json!(""))),
        400,
        "invalid_certificate",
    );
    body_case(
        "truncated certificate",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&cert[..cert.len() - 1]))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "certificate cut in half",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&cert[..cert.len() / 2]))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "certificate with trailing bytes",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&[cert.as_slice(), &[0; 64]].concat()))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "64 KiB certificate",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&vec![1u8; 64 * 1024]))),
        ),
        400,
        "invalid_certificate",
    );
    let mut flipped = cert.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    body_case(
        "certificate with a bad signature",
        with(&valid, "/device/certificate", Some(json!(b64(&flipped)))),
        400,
        "invalid_certificate",
    );
    body_case(
        "31-byte signed prekey",
        with(
            &valid,
            "/device/signed_prekey/key",
            Some(json!(b64(&[9; 31]))),
        ),
        400,
        "invalid_field",
    );
    body_case(
        "non-canonical signed prekey",
        with(
            &valid,
            "/device/signed_prekey/key",
            Some(json!(b64(&[0xff; 32]))),
        ),
        400,
        "invalid_prekey",
    );
    body_case(
        "63-byte signed prekey signature",
        with(
            &valid,
            "/device/signed_prekey/signature",
            Some(json!(b64(&[1; 63]))),
        ),
        400,
        "invalid_field",
    );
    body_case(
        "signed prekey signature that does not verify",
        with(
            &valid,
            "/device/signed_prekey/signature",
            Some(json!(b64(&[1; 64]))),
        ),
        400,
        "invalid_prekey_signature",
    );
    let opk = valid["device"]["one_time_prekeys"][0].clone();
    let many = |n: u32| -> Value {
        json!((1..=n)
            .map(|i| json!({"id": i, "key": opk["key"]}))
            .collect::<Vec<_>>())
    };
    body_case(
        "101 one-time prekeys",
        with(&valid, "/device/one_time_prekeys", Some(many(101))),
        400,
        "too_many_prekeys",
    );
    body_case(
        "10,000 one-time prekeys",
        with(&valid, "/device/one_time_prekeys", Some(many(10_000))),
        400,
        "too_many_prekeys",
    );
    body_case(
        "one-time prekey id 0",
        with(&valid, "/device/one_time_prekeys/0/id", Some(json!(0))),
        400,
        "invalid_prekey",
    );
    body_case(
        "repeated one-time prekey ids",
        with(
            &valid,
            "/device/one_time_prekeys",
            Some(json!([opk.clone(), opk.clone()])),
        ),
        400,
        "invalid_prekey",
    );
    body_case(
        "33-byte one-time prekey",
        with(
            &valid,
            "/device/one_time_prekeys/0/key",
            Some(json!(b64(&[3; 33]))),
        ),
        400,
        "invalid_field",
    );
    // The path names another account than the certificate.
    let other = format!("{}-other", fx.tag);
    cases.push(signed(
        &d,
        format!("{r}: certificate of another user id than the path"),
        "PUT",
        format!("/v1/accounts/{other}"),
        to_bytes(&valid),
        400,
        "invalid_certificate",
    ));
    // The account exists already.
    cases.push(signed(
        &fx.a1,
        format!("{r}: a taken user id, the certificate naming another"),
        "PUT",
        format!("/v1/accounts/{}", fx.a1.user),
        to_bytes(&valid),
        400,
        "invalid_certificate",
    ));
    for (what, id) in bad_user_ids(&fx.tag) {
        let p = format!("/v1/accounts/{id}");
        cases.push(signed(
            &d,
            format!("{r}: {what}"),
            "PUT",
            &p,
            to_bytes(&valid),
            400,
            "invalid_user",
        ));
    }
    // Literal dot segments reach no route.
    cases.push(signed(
        &d,
        format!("{r}: literal ../ in the path"),
        "PUT",
        format!("/v1/accounts/../keys/{user}"),
        to_bytes(&valid),
        404,
        "not_found",
    ));
    // Signed by another device than the certified one; not signed.
    let stranger = Device::new(&user, AccountKey::generate(&mut OsRng));
    cases.push(signed(
        &stranger,
        format!("{r}: signed by another device than the certified one"),
        "PUT",
        &path,
        to_bytes(&valid),
        401,
        "unauthorized",
    ));
    cases.push(Case::new(
        format!("{r}: not signed"),
        "PUT",
        &path,
        to_bytes(&valid),
        Auth::None,
        401,
        "unauthorized",
    ));
    run(&scope, cases).await;
}

#[tokio::test]
async fn link_device_refuses_bad_input_and_stores_nothing() {
    let fx = fixture().await;
    let mut d = Device::new(fx.a1.user.as_str(), fx.a1.account.clone());
    let path = format!("/v1/accounts/{}/devices", fx.a1.user);
    let valid = json!({ "device": d.new_device_json(3) });
    let mut scope = fx.scope.clone();
    scope.device_keys.push(d.device_key());
    let r = "POST /v1/accounts/{user}/devices";
    let mut cases = json_cases(
        &fx.a1,
        r,
        "POST",
        &path,
        &valid,
        &[
            ("/device", Kind::Obj, true),
            ("/device/certificate", Kind::B64, true),
            ("/device/signed_prekey/id", Kind::Num, true),
            ("/device/signed_prekey/key", Kind::B64, true),
            ("/device/signed_prekey/signature", Kind::B64, true),
            ("/device/one_time_prekeys/0/id", Kind::Num, true),
            ("/device/one_time_prekeys/0/key", Kind::B64, true),
        ],
    );
    let cert = d.cert.to_bytes();
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "POST",
            &path,
            to_bytes(&body),
            status,
            code,
        ));
    };
    body_case(
        "truncated certificate",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&cert[..cert.len() - 1]))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "certificate with trailing bytes",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&[cert.as_slice(), &[0; 8]].concat()))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "certificate of another account key",
        with(
            &valid,
            "/device/certificate",
            Some(json!(b64(&fx.b1.cert.to_bytes()))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "signed prekey signature that does not verify",
        with(
            &valid,
            "/device/signed_prekey/signature",
            Some(json!(b64(&[1; 64]))),
        ),
        400,
        "invalid_prekey_signature",
    );
    let opk = valid["device"]["one_time_prekeys"][0].clone();
    body_case(
        "10,000 one-time prekeys",
        with(
            &valid,
            "/device/one_time_prekeys",
            Some(json!((1..=10_000)
                .map(|i| json!({"id": i, "key": opk["key"]}))
                .collect::<Vec<_>>())),
        ),
        400,
        "too_many_prekeys",
    );
    body_case(
        "one-time prekey ids decreasing",
        with(
            &valid,
            "/device/one_time_prekeys",
            Some(json!([{"id": 5, "key": opk["key"]}, {"id": 4, "key": opk["key"]}])),
        ),
        400,
        "invalid_prekey",
    );
    // The certificate of a device already registered: refused after the checks, 409.
    let mut again = valid.clone();
    again["device"]["certificate"] = json!(b64(&fx.a2.cert.to_bytes()));
    again["device"]["signed_prekey"] = json!(fx.a2.prekeys.current_signed_prekey().map(|s| {
        let p = s.public();
        json!({"id": p.id, "key": b64(&p.key.to_bytes()), "signature": b64(&p.signature.to_bytes())})
    }));
    body_case("a device already registered", again, 409, "device_exists");
    // Another account's path; bad user ids.
    cases.push(signed(
        &fx.a1,
        format!("{r}: another account's path"),
        "POST",
        format!("/v1/accounts/{}/devices", fx.b1.user),
        to_bytes(&valid),
        403,
        "forbidden",
    ));
    for (what, id) in bad_user_ids(&fx.tag) {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "POST",
            format!("/v1/accounts/{id}/devices"),
            to_bytes(&valid),
            400,
            "invalid_user",
        ));
    }
    cases.extend(auth_cases(&fx.a1, r, "POST", &path, &to_bytes(&valid)));
    run(&scope, cases).await;
}

#[tokio::test]
async fn revoke_device_refuses_bad_input_and_changes_nothing() {
    let fx = fixture().await;
    let user = fx.a1.user.clone();
    let path = format!("/v1/accounts/{user}/devices/{}", fx.a2.device_id.get());
    let new = AccountKey::generate(&mut OsRng);
    let now = now_ms();
    let revocation = fx
        .a1
        .account
        .revoke(&user, fx.a2.device_id, &fx.a2.cert.identity.signing, now)
        .to_bytes();
    let rotation = fx
        .a1
        .account
        .rotate_to(&user, &new.public_key(), now)
        .to_bytes();
    let cert1 = new
        .certify(&user, fx.a1.device_id, &fx.a1.identity.public(), now)
        .to_bytes();
    let valid = json!({
        "revocation": b64(&revocation),
        "rotation": b64(&rotation),
        "certificates": [b64(&cert1)],
    });
    let r = "DELETE /v1/accounts/{user}/devices/{device}";
    let mut cases = json_cases(
        &fx.a1,
        r,
        "DELETE",
        &path,
        &valid,
        &[
            ("/revocation", Kind::B64, true),
            ("/rotation", Kind::B64, true),
            ("/certificates", Kind::Arr, true),
            ("/certificates/0", Kind::B64, false),
        ],
    );
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "DELETE",
            &path,
            to_bytes(&body),
            status,
            code,
        ));
    };
    for (what, field, bytes) in [
        (
            "truncated revocation",
            "/revocation",
            revocation[..revocation.len() - 1].to_vec(),
        ),
        (
            "revocation with trailing bytes",
            "/revocation",
            [revocation.as_slice(), &[0]].concat(),
        ),
        ("empty revocation", "/revocation", Vec::new()),
        (
            "truncated rotation",
            "/rotation",
            rotation[..rotation.len() - 1].to_vec(),
        ),
        (
            "rotation with trailing bytes",
            "/rotation",
            [rotation.as_slice(), &[0]].concat(),
        ),
        ("64 KiB rotation", "/rotation", vec![2; 64 * 1024]),
    ] {
        body_case(
            what,
            with(&valid, field, Some(json!(b64(&bytes)))),
            400,
            "invalid_revocation",
        );
    }
    // A rotation to the same key; a revocation of another device; no certificates.
    body_case(
        "rotation to the same key",
        with(
            &valid,
            "/rotation",
            Some(json!(b64(&fx
                .a1
                .account
                .rotate_to(&user, &fx.a1.account.public_key(), now)
                .to_bytes()))),
        ),
        400,
        "invalid_revocation",
    );
    body_case(
        "revocation of another device",
        with(
            &valid,
            "/revocation",
            Some(json!(b64(&fx
                .a1
                .account
                .revoke(&user, fx.a1.device_id, &fx.a1.cert.identity.signing, now)
                .to_bytes()))),
        ),
        400,
        "invalid_revocation",
    );
    body_case(
        "no certificate for the remaining device",
        with(&valid, "/certificates", Some(json!([]))),
        400,
        "invalid_revocation",
    );
    body_case(
        "the same certificate twice",
        with(
            &valid,
            "/certificates",
            Some(json!([b64(&cert1), b64(&cert1)])),
        ),
        400,
        "invalid_revocation",
    );
    body_case(
        "truncated certificate",
        with(
            &valid,
            "/certificates/0",
            Some(json!(b64(&cert1[..cert1.len() - 1]))),
        ),
        400,
        "invalid_certificate",
    );
    body_case(
        "10,000 certificates",
        with(
            &valid,
            "/certificates",
            Some(json!(vec![b64(&cert1); 10_000])),
        ),
        400,
        "invalid_revocation",
    );
    for (what, device) in [
        ("device id 0", "0".to_owned()),
        (
            "device id with a leading zero",
            format!("0{}", fx.a2.device_id.get()),
        ),
        ("negative device id", "-1".into()),
        ("device id 2^32", "4294967296".into()),
        ("5,000-digit device id", "9".repeat(5000)),
        ("device id not a number", "abc".into()),
        (
            "device id with %2F",
            format!("1%2F{}", fx.a2.device_id.get()),
        ),
        (
            "device id with encoded NUL",
            format!("{}%00", fx.a2.device_id.get()),
        ),
        (
            "device id with a plus sign",
            format!("+{}", fx.a2.device_id.get()),
        ),
        ("device id %2e%2e", "%2e%2e".into()),
    ] {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "DELETE",
            format!("/v1/accounts/{user}/devices/{device}"),
            to_bytes(&valid),
            400,
            "invalid_device",
        ));
    }
    cases.push(signed(
        &fx.a1,
        format!("{r}: empty device id"),
        "DELETE",
        format!("/v1/accounts/{user}/devices/"),
        to_bytes(&valid),
        404,
        "not_found",
    ));
    cases.push(signed(
        &fx.a1,
        format!("{r}: unknown device"),
        "DELETE",
        format!("/v1/accounts/{user}/devices/12345"),
        to_bytes(&valid),
        404,
        "unknown_device",
    ));
    cases.push(signed(
        &fx.a1,
        format!("{r}: another account's device"),
        "DELETE",
        format!(
            "/v1/accounts/{}/devices/{}",
            fx.b1.user,
            fx.b1.device_id.get()
        ),
        to_bytes(&valid),
        403,
        "forbidden",
    ));
    for (what, id) in bad_user_ids(&fx.tag) {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "DELETE",
            format!("/v1/accounts/{id}/devices/{}", fx.a2.device_id.get()),
            to_bytes(&valid),
            400,
            "invalid_user",
        ));
    }
    cases.extend(auth_cases(&fx.a1, r, "DELETE", &path, &to_bytes(&valid)));
    run(&fx.scope, cases).await;
}

// ---------------------------------------------------------------------------------------------
// Keys

#[tokio::test]
async fn key_routes_refuse_bad_input_and_change_nothing() {
    let mut fx = fixture().await;
    let spk = fx.a1.prekeys.current_signed_prekey().unwrap().public();
    let opks = fx
        .a1
        .prekeys
        .generate_one_time_prekeys(&mut OsRng, 2)
        .iter()
        .enumerate()
        .map(|(i, o)| json!({"id": 100 + i as u32, "key": b64(&o.key.to_bytes())}))
        .collect::<Vec<_>>();
    let valid = json!({
        "signed_prekey": {
            "id": spk.id,
            "key": b64(&spk.key.to_bytes()),
            "signature": b64(&spk.signature.to_bytes()),
        },
        "one_time_prekeys": opks,
    });
    let r = "PUT /v1/keys";
    let mut cases = json_cases(
        &fx.a1,
        r,
        "PUT",
        "/v1/keys",
        &valid,
        &[
            ("/signed_prekey", Kind::Obj, false),
            ("/signed_prekey/id", Kind::Num, true),
            ("/signed_prekey/key", Kind::B64, true),
            ("/signed_prekey/signature", Kind::B64, true),
            ("/one_time_prekeys", Kind::Arr, false),
            ("/one_time_prekeys/0/id", Kind::Num, true),
            ("/one_time_prekeys/0/key", Kind::B64, true),
        ],
    );
    let key0 = valid["one_time_prekeys"][0]["key"].clone();
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "PUT",
            "/v1/keys",
            to_bytes(&body),
            status,
            code,
        ));
    };
    body_case("nothing to upload", json!({}), 400, "nothing_to_upload");
    body_case(
        "nothing to upload (empty list)",
        json!({"one_time_prekeys": []}),
        400,
        "nothing_to_upload",
    );
    body_case(
        "signed prekey of another device",
        with(
            &valid,
            "/signed_prekey/signature",
            Some(json!(b64(&[5; 64]))),
        ),
        400,
        "invalid_prekey_signature",
    );
    body_case(
        "non-canonical one-time prekey",
        with(
            &valid,
            "/one_time_prekeys/0/key",
            Some(json!(b64(&[0xff; 32]))),
        ),
        400,
        "invalid_prekey",
    );
    body_case(
        "10,000 one-time prekeys",
        with(
            &valid,
            "/one_time_prekeys",
            Some(json!((1..=10_000)
                .map(|i| json!({"id": 1000 + i, "key": key0}))
                .collect::<Vec<_>>())),
        ),
        400,
        "too_many_prekeys",
    );
    body_case(
        "one-time prekey ids not increasing",
        with(
            &valid,
            "/one_time_prekeys",
            Some(json!([{"id": 200, "key": key0}, {"id": 200, "key": key0}])),
        ),
        400,
        "invalid_prekey",
    );
    // Ids at or below the highest stored (3): refused after the checks, nothing stored.
    body_case(
        "one-time prekey id below the stored ones",
        json!({"one_time_prekeys": [{"id": 2, "key": key0}]}),
        400,
        "prekey_id_not_increasing",
    );
    cases.extend(auth_cases(&fx.a1, r, "PUT", "/v1/keys", &to_bytes(&valid)));

    // GET /v1/keys: the only input is the header (and a query it ignores).
    cases.extend(auth_cases(&fx.a1, "GET /v1/keys", "GET", "/v1/keys", b""));

    // GET /v1/keys/{user}.
    let r = "GET /v1/keys/{user}";
    for (what, id) in bad_user_ids(&fx.tag) {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "GET",
            format!("/v1/keys/{id}"),
            Vec::new(),
            400,
            "invalid_user",
        ));
    }
    cases.push(signed(
        &fx.a1,
        format!("{r}: unknown user"),
        "GET",
        format!("/v1/keys/{}-nobody", fx.tag),
        Vec::new(),
        404,
        "unknown_user",
    ));
    cases.push(signed(
        &fx.a1,
        format!("{r}: literal ../ in the path"),
        "GET",
        format!("/v1/keys/../messages/{}", fx.b1.user),
        Vec::new(),
        404,
        "not_found",
    ));
    // Bundle fetches hand out prekeys: every auth case must be refused before that.
    let p = format!("/v1/keys/{}", fx.b1.user);
    cases.extend(auth_cases(&fx.a1, r, "GET", &p, b""));
    run(&fx.scope, cases).await;
}

// ---------------------------------------------------------------------------------------------
// Messages

fn envelope(d: &Device, key: &[u8]) -> Value {
    json!({"user": d.user.as_str(), "device_id": d.device_id.get(), "key": b64(key)})
}

#[tokio::test]
async fn message_routes_refuse_bad_input_and_queue_nothing() {
    let fx = fixture().await;
    let valid = json!({
        "message_id": b64(&random16()),
        "to": fx.b1.user.as_str(),
        "body": b64(&[1; 100]),
        "envelopes": [envelope(&fx.b1, &[2; 80]), envelope(&fx.a2, &[3; 80])],
    });
    let r = "PUT /v1/messages";
    let mut cases = json_cases(
        &fx.a1,
        r,
        "PUT",
        "/v1/messages",
        &valid,
        &[
            ("/message_id", Kind::B64, true),
            ("/to", Kind::Str, false),
            ("/body", Kind::B64, true),
            ("/envelopes", Kind::Arr, true),
            ("/envelopes/0/user", Kind::Str, true),
            ("/envelopes/0/device_id", Kind::Num, true),
            ("/envelopes/0/key", Kind::B64, true),
            ("/ephemeral", Kind::Bool, false),
        ],
    );
    let max_body = 12 + 98_400 + 16;
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "PUT",
            "/v1/messages",
            to_bytes(&body),
            status,
            code,
        ));
    };
    body_case(
        "15-byte message id",
        with(&valid, "/message_id", Some(json!(b64(&[1; 15])))),
        400,
        "invalid_field",
    );
    body_case(
        "17-byte message id",
        with(&valid, "/message_id", Some(json!(b64(&[1; 17])))),
        400,
        "invalid_field",
    );
    body_case(
        "neither to nor group",
        with(&valid, "/to", None),
        400,
        "invalid_recipient",
    );
    body_case(
        "invalid recipient user id",
        with(&valid, "/to", Some(json!("Not A User"))),
        400,
        "invalid_user",
    );
    body_case(
        "5,000-byte recipient user id",
        with(&valid, "/to", Some(json!("a".repeat(5000)))),
        400,
        "invalid_user",
    );
    body_case(
        "unknown recipient",
        with(&valid, "/to", Some(json!(format!("{}-nobody", fx.tag)))),
        404,
        "unknown_user",
    );
    body_case(
        "body one byte over the limit",
        with(&valid, "/body", Some(json!(b64(&vec![1; max_body + 1])))),
        413,
        "body_too_large",
    );
    body_case(
        "request far over any valid message",
        with(&valid, "/body", Some(json!(b64(&vec![1; 1024 * 1024])))),
        413,
        "body_too_large",
    );
    body_case(
        "10,000 envelopes",
        with(
            &valid,
            "/envelopes",
            Some(json!((1..=10_000u32)
                .map(|i| json!({"user": fx.b1.user.as_str(), "device_id": i, "key": "AQ"}))
                .collect::<Vec<_>>())),
        ),
        413,
        "body_too_large",
    );
    body_case(
        "41 envelopes",
        with(
            &valid,
            "/envelopes",
            Some(json!((1..=41u32)
                .map(|i| json!({"user": fx.b1.user.as_str(), "device_id": i, "key": "AQ"}))
                .collect::<Vec<_>>())),
        ),
        400,
        "invalid_envelopes",
    );
    body_case(
        "no envelopes",
        with(&valid, "/envelopes", Some(json!([]))),
        400,
        "invalid_envelopes",
    );
    body_case(
        "two envelopes for one device",
        with(&valid, "/envelopes/1", Some(envelope(&fx.b1, &[3; 80]))),
        400,
        "invalid_envelopes",
    );
    body_case(
        "empty key envelope",
        with(&valid, "/envelopes/0/key", Some(json!(""))),
        400,
        "invalid_envelopes",
    );
    body_case(
        "4,097-byte key envelope",
        with(&valid, "/envelopes/0/key", Some(json!(b64(&[4; 4097])))),
        400,
        "invalid_envelopes",
    );
    body_case(
        "an envelope for a device that does not exist",
        with(
            &valid,
            "/envelopes/1",
            Some(json!({"user": fx.b1.user.as_str(), "device_id": 1, "key": "AQ"})),
        ),
        409,
        "device_mismatch",
    );
    body_case(
        "an envelope for an invalid user id",
        with(
            &valid,
            "/envelopes/1",
            Some(json!({"user": "Not A User", "device_id": 1, "key": "AQ"})),
        ),
        400,
        "invalid_envelopes",
    );
    body_case(
        "a missing envelope (the sender's other device)",
        with(&valid, "/envelopes/1", None),
        409,
        "device_mismatch",
    );

    // Group sends.
    let gid = random16();
    let made = fx
        .a1
        .request(
            "POST",
            "/v1/groups",
            Some(&json!({"group_id": b64(&gid), "members": [fx.b1.user.as_str()]})),
        )
        .await;
    assert_eq!(made.status, 201, "{:?}", made.json);
    let g: Group = serde_json::from_value(made.json).unwrap();
    let digest = devices_digest(&g.devices);
    let mut key = OwnSenderKey::generate(
        &mut OsRng,
        GroupId(gid),
        DeviceAddress::new(fx.a1.user.clone(), fx.a1.device_id),
    );
    let mid = random16();
    let wire = key.encrypt(&MessageId(mid), b"hello").unwrap();
    let gvalid = json!({
        "message_id": b64(&mid),
        "group": {"group_id": b64(&gid), "version": g.version, "devices_digest": b64(&digest)},
        "body": b64(&wire),
        "envelopes": [],
    });
    let r = "PUT /v1/messages (group)";
    cases.extend(json_cases(
        &fx.a1,
        r,
        "PUT",
        "/v1/messages",
        &gvalid,
        &[
            ("/message_id", Kind::B64, true),
            ("/group", Kind::Obj, false),
            ("/group/group_id", Kind::B64, true),
            ("/group/version", Kind::Num, true),
            ("/group/devices_digest", Kind::B64, true),
            ("/body", Kind::B64, true),
        ],
    ));
    // `version` is a u64 (api/openapi.yaml `GroupSend`): 2^32 is a well-formed version that is
    // not the group's, so it is refused as stale, like "a stale group version" below.
    for c in cases.iter_mut() {
        if c.name == format!("{r}: 4294967296 at /group/version") {
            c.status = 409;
            c.code = "group_changed";
        }
    }
    let mut group_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "PUT",
            "/v1/messages",
            to_bytes(&body),
            status,
            code,
        ));
    };
    for cut in [
        0,
        1,
        16,
        40,
        wire.len() / 2,
        wire.len() - 65,
        wire.len() - 1,
    ] {
        group_case(
            &format!(
                "sender-key message truncated to {cut} of {} bytes",
                wire.len()
            ),
            with(&gvalid, "/body", Some(json!(b64(&wire[..cut])))),
            400,
            "invalid_group_message",
        );
    }
    group_case(
        "sender-key message over the size limit",
        with(
            &gvalid,
            "/body",
            Some(json!(b64(&[wire.as_slice(), &vec![0; max_body]].concat()))),
        ),
        413,
        "body_too_large",
    );
    group_case(
        "15-byte group id",
        with(&gvalid, "/group/group_id", Some(json!(b64(&[1; 15])))),
        400,
        "invalid_field",
    );
    group_case(
        "31-byte devices digest",
        with(&gvalid, "/group/devices_digest", Some(json!(b64(&[1; 31])))),
        400,
        "invalid_field",
    );
    group_case(
        "both to and group",
        with(&gvalid, "/to", Some(json!(fx.b1.user.as_str()))),
        400,
        "invalid_recipient",
    );
    group_case(
        "key envelopes with a group message",
        with(
            &gvalid,
            "/envelopes",
            Some(json!([envelope(&fx.b1, &[1; 8])])),
        ),
        400,
        "invalid_envelopes",
    );
    group_case(
        "a stale group version",
        with(&gvalid, "/group/version", Some(json!(g.version + 7))),
        409,
        "group_changed",
    );
    group_case(
        "a wrong devices digest",
        with(&gvalid, "/group/devices_digest", Some(json!(b64(&[0; 32])))),
        409,
        "group_changed",
    );
    let other = random16();
    let mut okey = OwnSenderKey::generate(
        &mut OsRng,
        GroupId(other),
        DeviceAddress::new(fx.a1.user.clone(), fx.a1.device_id),
    );
    let owire = okey.encrypt(&MessageId(mid), b"hello").unwrap();
    let mut unknown = with(&gvalid, "/group/group_id", Some(json!(b64(&other))));
    unknown["body"] = json!(b64(&owire));
    group_case("an unknown group", unknown, 404, "unknown_group");
    cases.extend(auth_cases(
        &fx.a1,
        "PUT /v1/messages",
        "PUT",
        "/v1/messages",
        &to_bytes(&valid),
    ));

    // GET /v1/messages.
    let r = "GET /v1/messages";
    for (what, q, code) in [
        ("limit 0", "limit=0", "invalid_limit"),
        ("limit -1", "limit=-1", "invalid_limit"),
        ("limit 501", "limit=501", "invalid_limit"),
        ("limit 2^64", "limit=18446744073709551616", "invalid_limit"),
        ("limit not a number", "limit=ten", "invalid_limit"),
        ("empty limit", "limit=", "invalid_limit"),
        ("limit 1.5", "limit=1.5", "invalid_limit"),
        ("empty cursor", "cursor=", "invalid_cursor"),
        ("upper-case cursor", "cursor=ABC", "invalid_cursor"),
        ("cursor with a path", "cursor=..%2F..%2Fx", "invalid_cursor"),
        ("cursor with encoded NUL", "cursor=0%00", "invalid_cursor"),
        (
            "cursor with invalid UTF-8",
            "cursor=%FF%FE",
            "invalid_cursor",
        ),
        (
            "97-byte cursor",
            &format!("cursor={}", "0".repeat(97)),
            "invalid_cursor",
        ),
        (
            "5,000-byte cursor",
            &format!("cursor={}", "0".repeat(5000)),
            "invalid_cursor",
        ),
    ] {
        cases.push(signed(
            &fx.b1,
            format!("{r}: {what}"),
            "GET",
            format!("/v1/messages?{q}"),
            Vec::new(),
            400,
            code,
        ));
    }
    cases.extend(auth_cases(&fx.b1, r, "GET", "/v1/messages", b""));

    // POST /v1/messages/ack.
    let r = "POST /v1/messages/ack";
    let avalid = json!({"ids": ["1795820984796:00112233445566778899aabbccddeeff:a:1"]});
    cases.extend(json_cases(
        &fx.b1,
        r,
        "POST",
        "/v1/messages/ack",
        &avalid,
        // Removing the only id leaves `{"ids": []}`: "no ids" below (400 invalid_ack).
        &[("/ids", Kind::Arr, true), ("/ids/0", Kind::Str, false)],
    ));
    let mut ack_case = |what: &str, body: Value| {
        cases.push(signed(
            &fx.b1,
            format!("{r}: {what}"),
            "POST",
            "/v1/messages/ack",
            to_bytes(&body),
            400,
            "invalid_ack",
        ));
    };
    ack_case("no ids", json!({"ids": []}));
    ack_case(
        "101 ids",
        json!({"ids": (0..101).map(|i| format!("{i:013}")).collect::<Vec<_>>()}),
    );
    ack_case(
        "10,000 ids",
        json!({"ids": (0..10_000).map(|i| format!("{i:013}")).collect::<Vec<_>>()}),
    );
    ack_case("an empty id", json!({"ids": [""]}));
    ack_case("an id with a path", json!({"ids": ["../x/../y"]}));
    ack_case("an id with NUL", json!({"ids": ["0\u{0}"]}));
    ack_case("an id with non-ASCII", json!({"ids": ["0é"]}));
    ack_case("a 97-byte id", json!({"ids": ["0".repeat(97)]}));
    ack_case("an upper-case id", json!({"ids": ["ABC"]}));
    cases.extend(auth_cases(
        &fx.b1,
        r,
        "POST",
        "/v1/messages/ack",
        &to_bytes(&avalid),
    ));

    // Nothing was queued for anyone, nothing recorded as sent (the group itself is in the
    // first snapshot).
    run(&fx.scope, cases).await;
}

// ---------------------------------------------------------------------------------------------
// Groups

fn bad_group_ids() -> Vec<(&'static str, String)> {
    vec![
        ("not base64", "!!!!".into()),
        ("15-byte group id", b64(&[1; 15])),
        ("17-byte group id", b64(&[1; 17])),
        ("padded group id", format!("{}==", b64(&[1; 16]))),
        (
            "standard-alphabet group id",
            "ab+_ab+_ab+_ab+_ab+_ab".into(),
        ),
        ("5,000-byte group id", "A".repeat(5000)),
        ("group id with %2F", format!("{}%2F", b64(&[1; 16]))),
        ("group id with encoded NUL", format!("{}%00", b64(&[1; 16]))),
        ("group id %2e%2e", "%2e%2e".into()),
    ]
}

#[tokio::test]
async fn group_routes_refuse_bad_input_and_change_nothing() {
    let fx = fixture().await;
    let gid = random16();
    let made = fx
        .a1
        .request(
            "POST",
            "/v1/groups",
            Some(&json!({"group_id": b64(&gid), "members": [fx.b1.user.as_str()]})),
        )
        .await;
    assert_eq!(made.status, 201, "{:?}", made.json);
    let g = b64(&gid);
    let a = fx.a1.user.as_str();
    let b = fx.b1.user.as_str();

    // POST /v1/groups.
    let r = "POST /v1/groups";
    let valid = json!({"group_id": b64(&random16()), "members": [b]});
    let mut cases = json_cases(
        &fx.a1,
        r,
        "POST",
        "/v1/groups",
        &valid,
        &[
            ("/group_id", Kind::B64, true),
            ("/members", Kind::Arr, true),
            ("/members/0", Kind::Str, false),
        ],
    );
    let many = |n: usize| {
        json!((0..n)
            .map(|i| format!("{}-m{i}", fx.tag))
            .collect::<Vec<_>>())
    };
    let mut body_case = |what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "POST",
            "/v1/groups",
            to_bytes(&body),
            status,
            code,
        ));
    };
    body_case(
        "15-byte group id",
        with(&valid, "/group_id", Some(json!(b64(&[1; 15])))),
        400,
        "invalid_field",
    );
    body_case(
        "1,001 members",
        with(&valid, "/members", Some(many(1001))),
        400,
        "too_many_members",
    );
    body_case(
        "10,000 members",
        with(&valid, "/members", Some(many(10_000))),
        400,
        "too_many_members",
    );
    body_case(
        "a member listed twice",
        with(&valid, "/members", Some(json!([b, b]))),
        400,
        "duplicate_member",
    );
    body_case(
        "an invalid member id",
        with(&valid, "/members", Some(json!(["Not A User"]))),
        400,
        "invalid_user",
    );
    body_case(
        "a 5,000-byte member id",
        with(&valid, "/members", Some(json!(["a".repeat(5000)]))),
        400,
        "invalid_user",
    );
    body_case(
        "an unknown member",
        with(
            &valid,
            "/members",
            Some(json!([format!("{}-nobody", fx.tag)])),
        ),
        404,
        "unknown_user",
    );
    body_case(
        "an existing group id",
        with(&valid, "/group_id", Some(json!(g))),
        409,
        "group_exists",
    );
    cases.extend(auth_cases(
        &fx.a1,
        r,
        "POST",
        "/v1/groups",
        &to_bytes(&valid),
    ));

    // GET /v1/groups/{group} and the group id in every group path.
    for (what, id) in bad_group_ids() {
        for (method, p, body) in [
            ("GET", format!("/v1/groups/{id}"), Vec::new()),
            (
                "POST",
                format!("/v1/groups/{id}/members"),
                to_bytes(&json!({"users": [b]})),
            ),
            ("DELETE", format!("/v1/groups/{id}/members/{b}"), Vec::new()),
            ("PUT", format!("/v1/groups/{id}/admins/{b}"), Vec::new()),
            ("DELETE", format!("/v1/groups/{id}/admins/{b}"), Vec::new()),
            ("POST", format!("/v1/groups/{id}/leave"), Vec::new()),
        ] {
            cases.push(signed(
                &fx.a1,
                format!("{method} {p:.40}: {what}"),
                method,
                p,
                body,
                400,
                "invalid_group",
            ));
        }
    }
    let unknown = b64(&random16());
    cases.push(signed(
        &fx.a1,
        "GET /v1/groups/{group}: unknown group",
        "GET",
        format!("/v1/groups/{unknown}"),
        Vec::new(),
        404,
        "unknown_group",
    ));
    cases.push(signed(
        &fx.a1,
        "GET /v1/groups/{group}: literal ../ in the path",
        "GET",
        format!("/v1/groups/{g}/../{g}"),
        Vec::new(),
        404,
        "not_found",
    ));
    cases.extend(auth_cases(
        &fx.a1,
        "GET /v1/groups/{group}",
        "GET",
        &format!("/v1/groups/{g}"),
        b"",
    ));

    // POST /v1/groups/{group}/members.
    let r = "POST /v1/groups/{group}/members";
    let mp = format!("/v1/groups/{g}/members");
    let c = format!("{}-c", fx.tag);
    let (_, made_c) = Device::create_account(&c, 0).await;
    assert_eq!(made_c.status, 201);
    let mvalid = json!({"users": [c]});
    cases.extend(json_cases(
        &fx.a1,
        r,
        "POST",
        &mp,
        &mvalid,
        &[("/users", Kind::Arr, true), ("/users/0", Kind::Str, false)],
    ));
    let mut add_case = |d: &Device, what: &str, body: Value, status: u16, code: &'static str| {
        cases.push(signed(
            d,
            format!("{r}: {what}"),
            "POST",
            &mp,
            to_bytes(&body),
            status,
            code,
        ));
    };
    add_case(
        &fx.a1,
        "no users",
        json!({"users": []}),
        400,
        "invalid_members",
    );
    add_case(
        &fx.a1,
        "10,000 users",
        json!({"users": many(10_000)}),
        400,
        "too_many_members",
    );
    add_case(
        &fx.a1,
        "a user listed twice",
        json!({"users": [c, c]}),
        400,
        "duplicate_member",
    );
    add_case(
        &fx.a1,
        "an invalid user id",
        json!({"users": ["../x"]}),
        400,
        "invalid_user",
    );
    add_case(
        &fx.a1,
        "an unknown user",
        json!({"users": [format!("{}-nobody", fx.tag)]}),
        404,
        "unknown_user",
    );
    add_case(&fx.b1, "not an admin", mvalid.clone(), 403, "not_admin");

    // DELETE /v1/groups/{group}/members/{user}, PUT and DELETE /v1/groups/{group}/admins/{user}.
    for (method, what_route, sub) in [
        (
            "DELETE",
            "DELETE /v1/groups/{group}/members/{user}",
            "members",
        ),
        ("PUT", "PUT /v1/groups/{group}/admins/{user}", "admins"),
        (
            "DELETE",
            "DELETE /v1/groups/{group}/admins/{user}",
            "admins",
        ),
    ] {
        for (what, id) in bad_user_ids(&fx.tag) {
            cases.push(signed(
                &fx.a1,
                format!("{what_route}: {what}"),
                method,
                format!("/v1/groups/{g}/{sub}/{id}"),
                Vec::new(),
                400,
                "invalid_user",
            ));
        }
        cases.push(signed(
            &fx.a1,
            format!("{what_route}: not a member"),
            method,
            format!("/v1/groups/{g}/{sub}/{c}"),
            Vec::new(),
            404,
            "unknown_member",
        ));
        cases.push(signed(
            &fx.b1,
            format!("{what_route}: not an admin"),
            method,
            format!("/v1/groups/{g}/{sub}/{a}"),
            Vec::new(),
            403,
            "not_admin",
        ));
        cases.push(signed(
            &fx.a1,
            format!("{what_route}: unknown group"),
            method,
            format!("/v1/groups/{unknown}/{sub}/{b}"),
            Vec::new(),
            404,
            "unknown_group",
        ));
    }
    cases.push(signed(
        &fx.a1,
        "DELETE /v1/groups/{group}/members/{user}: oneself",
        "DELETE",
        format!("/v1/groups/{g}/members/{a}"),
        Vec::new(),
        400,
        "cannot_remove_self",
    ));
    cases.push(signed(
        &fx.a1,
        "DELETE /v1/groups/{group}/admins/{user}: the last admin",
        "DELETE",
        format!("/v1/groups/{g}/admins/{a}"),
        Vec::new(),
        409,
        "last_admin",
    ));

    // POST /v1/groups/{group}/leave.
    let r = "POST /v1/groups/{group}/leave";
    let lp = format!("/v1/groups/{g}/leave");
    for (what, body, status, code) in [
        ("not JSON", b"hello".to_vec(), 400, "invalid_json"),
        (
            "truncated JSON",
            b"{\"successor\":".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown field",
            to_bytes(&json!({"x": 1})),
            400,
            "invalid_field",
        ),
        (
            "successor of the wrong type",
            to_bytes(&json!({"successor": 5})),
            400,
            "invalid_field",
        ),
        (
            "invalid UTF-8",
            b"{\"successor\":\"\xff\"}".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "the last admin without a successor",
            to_bytes(&json!({})),
            409,
            "successor_required",
        ),
        (
            "a successor who is not a member",
            to_bytes(&json!({"successor": c})),
            409,
            "successor_required",
        ),
        (
            "oneself as successor",
            to_bytes(&json!({"successor": a})),
            409,
            "successor_required",
        ),
        (
            "an invalid successor id",
            to_bytes(&json!({"successor": "../X"})),
            409,
            "successor_required",
        ),
        (
            "a 5,000-byte successor id",
            to_bytes(&json!({"successor": "a".repeat(5000)})),
            409,
            "successor_required",
        ),
    ] {
        cases.push(signed(
            &fx.a1,
            format!("{r}: {what}"),
            "POST",
            &lp,
            body,
            status,
            code,
        ));
    }
    cases.push(signed(
        &fx.a1,
        format!("{r}: unknown group"),
        "POST",
        format!("/v1/groups/{unknown}/leave"),
        Vec::new(),
        404,
        "unknown_group",
    ));
    cases.extend(auth_cases(&fx.a1, r, "POST", &lp, b""));
    run(&fx.scope, cases).await;
}
