//! Request and WebSocket-connect signing (PROTOCOL.md, "Request authentication").
//!
//! ```text
//! Authorization: CipherPost-Ed25519 user=<user_id>,device=<decimal>,ts=<decimal>,sig=<b64>
//! sig = SIG(IKs, "cipherpost/request/v1\n" || user_id || "\n" || decimal(device_id) || "\n" ||
//!                METHOD || "\n" || PATH_AND_QUERY || "\n" || decimal(ts) || "\n" || hex(H(body)))
//!
//! connect query: user=<user_id>&device=<decimal>&ts=<decimal>&nonce=<b64>&sig=<b64>
//! sig = SIG(IKs, "cipherpost/connect/v1\n" || user_id || "\n" || decimal(device_id) || "\n" ||
//!                decimal(ts) || "\n" || nonce_b64)
//! ```
//! Parsing is strict: one encoding per value (fixed field order, no spaces, decimals without
//! leading zeros, canonical unpadded base64url), so a signature or nonce cannot be replayed
//! under a second spelling. The replay memory (accepted `(device, sig)` and connect nonces for
//! 10 minutes) is the server's; this module makes and checks the signatures and the time window.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};

use crate::{
    consts::{LABEL_CONNECT, LABEL_REQUEST, MAX_CLOCK_SKEW_MS},
    error::AuthError,
    identity::{DeviceId, DeviceIdentity, UserId},
    primitives::sha256,
};

/// The `Authorization` scheme and the one space that follows it.
const SCHEME: &str = "CipherPost-Ed25519 ";
const REQUEST_FIELDS: [&str; 4] = ["user", "device", "ts", "sig"];
const CONNECT_FIELDS: [&str; 5] = ["user", "device", "ts", "nonce", "sig"];
const REQUEST_ORDER: &str = "the fields must be exactly user, device, ts and sig, in this order";
const CONNECT_ORDER: &str =
    "the parameters must be exactly user, device, ts, nonce and sig, in this order";

/// The bytes a request signature covers. `method` and `path_and_query` are taken as given;
/// [`RequestAuth::verify`] refuses a method that is not upper-case or a path not from `/v1/`.
pub fn request_signing_message(
    user_id: &UserId,
    device_id: DeviceId,
    method: &str,
    path_and_query: &str,
    ts_ms: u64,
    body: &[u8],
) -> Vec<u8> {
    let body_hash: String = sha256(&[body]).iter().map(|b| format!("{b:02x}")).collect();
    let mut m = LABEL_REQUEST.to_vec();
    for part in [
        user_id.as_str(),
        &device_id.get().to_string(),
        method,
        path_and_query,
        &ts_ms.to_string(),
    ] {
        m.extend_from_slice(part.as_bytes());
        m.push(b'\n');
    }
    m.extend_from_slice(body_hash.as_bytes());
    m
}

/// The bytes a connect signature covers; `nonce_b64` is the nonce's b64 text as sent.
pub fn connect_signing_message(
    user_id: &UserId,
    device_id: DeviceId,
    ts_ms: u64,
    nonce_b64: &str,
) -> Vec<u8> {
    let mut m = LABEL_CONNECT.to_vec();
    for part in [
        user_id.as_str(),
        &device_id.get().to_string(),
        &ts_ms.to_string(),
    ] {
        m.extend_from_slice(part.as_bytes());
        m.push(b'\n');
    }
    m.extend_from_slice(nonce_b64.as_bytes());
    m
}

/// A signed request: the parsed or freshly made `Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    /// The signing device's account.
    pub user_id: UserId,
    /// The signing device.
    pub device_id: DeviceId,
    /// The signed time (Unix ms).
    pub ts_ms: u64,
    /// `SIG(IKs, message)`; the server's replay memory keys on it.
    pub signature: Signature,
}

impl RequestAuth {
    /// Signs a request. `method` is the upper-case HTTP method, `path_and_query` the request
    /// target from `/v1/` on (no stage or base-path prefix; the query as sent, no `?` when
    /// empty), `body` the bytes as sent (empty when none). Anything else signs a request that
    /// [`RequestAuth::verify`] refuses.
    pub fn sign(
        identity: &DeviceIdentity,
        user_id: &UserId,
        device_id: DeviceId,
        method: &str,
        path_and_query: &str,
        ts_ms: u64,
        body: &[u8],
    ) -> Self {
        let msg = request_signing_message(user_id, device_id, method, path_and_query, ts_ms, body);
        Self {
            user_id: user_id.clone(),
            device_id,
            ts_ms,
            signature: identity.sign(&msg),
        }
    }

    /// The `Authorization` header value (without the `Authorization: ` name).
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME}user={},device={},ts={},sig={}",
            self.user_id,
            self.device_id,
            self.ts_ms,
            URL_SAFE_NO_PAD.encode(self.signature.to_bytes())
        )
    }

    /// Parses an `Authorization` header value strictly: the scheme and one space, then exactly
    /// `user`, `device`, `ts`, `sig` in this order, separated by `,` without spaces; canonical
    /// decimals; a valid user id and non-zero device id; `sig` the unpadded base64url of 64
    /// bytes. Every refusal is [`AuthError::Malformed`] saying what was wrong.
    pub fn parse_header(header: &str) -> Result<Self, AuthError> {
        let rest = header.strip_prefix(SCHEME).ok_or(AuthError::Malformed(
            "it must start with \"CipherPost-Ed25519 \"",
        ))?;
        let parse = || -> Result<Self, &'static str> {
            let [user, device, ts, sig] = fields(rest, ',', REQUEST_FIELDS, REQUEST_ORDER)?;
            Ok(Self {
                user_id: user_id(user)?,
                device_id: device_id(device)?,
                ts_ms: timestamp(ts)?,
                signature: signature(sig)?,
            })
        };
        parse().map_err(AuthError::Malformed)
    }

    /// Checks the request the server received against this header: `method` upper-case
    /// letters, `path_and_query` from `/v1/` on, `|now_ms - ts| <= 300000`, then the signature
    /// under the device's `IKs.pub` with `verify_strict`. Replays are the caller's to refuse.
    pub fn verify(
        &self,
        signing_key: &VerifyingKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        check_method(method)?;
        check_path(path_and_query)?;
        check_window(self.ts_ms, now_ms)?;
        let msg = request_signing_message(
            &self.user_id,
            self.device_id,
            method,
            path_and_query,
            self.ts_ms,
            body,
        );
        signing_key
            .verify_strict(&msg, &self.signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

/// A signed WebSocket connect: the parsed or freshly made query string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectAuth {
    /// The connecting device's account.
    pub user_id: UserId,
    /// The connecting device.
    pub device_id: DeviceId,
    /// The signed time (Unix ms).
    pub ts_ms: u64,
    /// 16 random bytes; the server refuses a `(device, nonce)` seen in the last 10 minutes.
    pub nonce: [u8; 16],
    /// `SIG(IKs, message)`.
    pub signature: Signature,
}

impl ConnectAuth {
    /// Signs a connect with a fresh 16-byte nonce drawn from `rng`.
    pub fn sign(
        rng: &mut (impl RngCore + CryptoRng),
        identity: &DeviceIdentity,
        user_id: &UserId,
        device_id: DeviceId,
        ts_ms: u64,
    ) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        Self::sign_with_nonce(identity, user_id, device_id, ts_ms, nonce)
    }

    /// Signs a connect with the given nonce (test vectors; a nonce must never be reused).
    pub fn sign_with_nonce(
        identity: &DeviceIdentity,
        user_id: &UserId,
        device_id: DeviceId,
        ts_ms: u64,
        nonce: [u8; 16],
    ) -> Self {
        let msg =
            connect_signing_message(user_id, device_id, ts_ms, &URL_SAFE_NO_PAD.encode(nonce));
        Self {
            user_id: user_id.clone(),
            device_id,
            ts_ms,
            nonce,
            signature: identity.sign(&msg),
        }
    }

    /// The query string (without `?`): `user=..&device=..&ts=..&nonce=..&sig=..`; every value
    /// is URL-safe, so there is no percent-encoding.
    pub fn to_query(&self) -> String {
        format!(
            "user={}&device={}&ts={}&nonce={}&sig={}",
            self.user_id,
            self.device_id,
            self.ts_ms,
            URL_SAFE_NO_PAD.encode(self.nonce),
            URL_SAFE_NO_PAD.encode(self.signature.to_bytes())
        )
    }

    /// Parses the query string (without `?`) strictly: exactly `user`, `device`, `ts`, `nonce`,
    /// `sig` in this order, no percent-encoding, canonical decimals and base64url (`nonce` 16
    /// bytes, `sig` 64). Every refusal is [`AuthError::MalformedQuery`].
    pub fn parse_query(query: &str) -> Result<Self, AuthError> {
        let parse = || -> Result<Self, &'static str> {
            let [user, device, ts, nonce, sig] = fields(query, '&', CONNECT_FIELDS, CONNECT_ORDER)?;
            Ok(Self {
                user_id: user_id(user)?,
                device_id: device_id(device)?,
                ts_ms: timestamp(ts)?,
                nonce: b64_array(nonce, "nonce must be 16 bytes of unpadded base64url")?,
                signature: signature(sig)?,
            })
        };
        parse().map_err(AuthError::MalformedQuery)
    }

    /// Checks `|now_ms - ts| <= 300000` and the signature under the device's `IKs.pub` with
    /// `verify_strict`. Refusing a repeated nonce is the caller's job.
    pub fn verify(&self, signing_key: &VerifyingKey, now_ms: u64) -> Result<(), AuthError> {
        check_window(self.ts_ms, now_ms)?;
        let msg = connect_signing_message(
            &self.user_id,
            self.device_id,
            self.ts_ms,
            &URL_SAFE_NO_PAD.encode(self.nonce),
        );
        signing_key
            .verify_strict(&msg, &self.signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

fn check_method(method: &str) -> Result<(), AuthError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AuthError::InvalidRequest(
            "the method must be upper-case ASCII letters",
        ));
    }
    Ok(())
}

/// A request target from `/v1/` on, in visible ASCII (no spaces or line breaks, which would
/// also make the signed message ambiguous).
fn check_path(path_and_query: &str) -> Result<(), AuthError> {
    if !path_and_query.starts_with("/v1/") {
        return Err(AuthError::InvalidRequest(
            "the path must start with /v1/ (no API stage or base-path prefix)",
        ));
    }
    if !path_and_query.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::InvalidRequest(
            "the path and query must be visible ASCII, percent-encoded as sent",
        ));
    }
    Ok(())
}

fn check_window(ts_ms: u64, now_ms: u64) -> Result<(), AuthError> {
    let skew_ms = ts_ms.abs_diff(now_ms);
    if skew_ms > MAX_CLOCK_SKEW_MS {
        return Err(AuthError::Expired { skew_ms });
    }
    Ok(())
}

/// Splits `k1=v1<sep>k2=v2...` and checks the names are exactly `names`, in order, each with a
/// non-empty value.
fn fields<'a, const N: usize>(
    s: &'a str,
    sep: char,
    names: [&'static str; N],
    order: &'static str,
) -> Result<[&'a str; N], &'static str> {
    if s.contains(' ') {
        return Err("no spaces are allowed");
    }
    let mut out = [""; N];
    let mut parts = s.split(sep);
    for (slot, name) in out.iter_mut().zip(names) {
        let part = parts.next().ok_or(order)?;
        let value = part
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
            .ok_or(order)?;
        if value.is_empty() {
            return Err("a field has an empty value");
        }
        *slot = value;
    }
    if parts.next().is_some() {
        return Err(order);
    }
    Ok(out)
}

/// A decimal without sign, spaces or leading zeros.
fn decimal<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T, &'static str> {
    let canonical = s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(what);
    }
    s.parse().map_err(|_| what)
}

fn user_id(s: &str) -> Result<UserId, &'static str> {
    UserId::new(s).map_err(|_| "user must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-'")
}

fn device_id(s: &str) -> Result<DeviceId, &'static str> {
    const WHAT: &str = "device must be a non-zero 32-bit decimal number without leading zeros";
    DeviceId::new(decimal(s, WHAT)?).map_err(|_| WHAT)
}

fn timestamp(s: &str) -> Result<u64, &'static str> {
    decimal(
        s,
        "ts must be a 64-bit decimal number of milliseconds without leading zeros",
    )
}

fn signature(s: &str) -> Result<Signature, &'static str> {
    b64_array(s, "sig must be 64 bytes of unpadded base64url").map(|b| Signature::from_bytes(&b))
}

/// Canonical unpadded base64url of exactly `N` bytes (the engine refuses padding and non-zero
/// trailing bits, so each value has one spelling).
fn b64_array<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], &'static str> {
    URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(what)
}
