//! Request and WebSocket-connect signing (PROTOCOL.md, "Request authentication").
//!
//! ```text
//! Authorization: CipherPost-Ed25519 user=<user_id>,device=<decimal>,ts=<decimal>,sig=<b64>
//! sig = SIG(IKs, "cipherpost/request/v1\n" || user_id || "\n" || decimal(device_id) || "\n" ||
//!                METHOD || "\n" || PATH_AND_QUERY || "\n" || decimal(ts) || "\n" || hex(H(body)))
//! ```
//! The replay memory (accepted `(device, sig)` and connect nonces for 10 minutes) is the
//! server's; this module makes and checks the signatures and the time window.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};

use crate::{
    consts::{LABEL_CONNECT, LABEL_REQUEST, MAX_CLOCK_SKEW_MS},
    error::AuthError,
    identity::{DeviceId, DeviceIdentity, UserId},
    primitives::sha256,
};

const SCHEME: &str = "CipherPost-Ed25519 ";

/// The bytes a request signature covers.
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

/// The bytes a connect signature covers; `nonce_b64` is the nonce's b64 text.
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

fn check_method(method: &str) -> Result<(), AuthError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AuthError::Malformed(
            "the method must be upper-case letters",
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

/// A decimal without sign, leading zeros or spaces.
fn decimal<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T, AuthError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(AuthError::Malformed(what));
    }
    s.parse().map_err(|_| AuthError::Malformed(what))
}

fn signature(s: &str) -> Result<Signature, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::Malformed("sig is not unpadded base64url"))?;
    let arr: [u8; 64] = bytes
        .try_into()
        .map_err(|_| AuthError::Malformed("sig must decode to 64 bytes"))?;
    Ok(Signature::from_bytes(&arr))
}

/// Splits `k1=v1<sep>k2=v2...` and checks the keys are exactly `keys`, in order.
fn fields<'a>(s: &'a str, sep: char, keys: &[&str]) -> Result<Vec<&'a str>, AuthError> {
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != keys.len() {
        return Err(AuthError::Malformed("wrong number of fields"));
    }
    parts
        .iter()
        .zip(keys)
        .map(|(p, k)| match p.split_once('=') {
            Some((name, value)) if name == *k && !value.is_empty() => Ok(value),
            _ => Err(AuthError::Malformed("fields must be user, device, ts, then sig (nonce before sig for connect), in that order")),
        })
        .collect()
}

/// A parsed or freshly made request signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuth {
    /// The signing device's account.
    pub user_id: UserId,
    /// The signing device.
    pub device_id: DeviceId,
    /// The signed time (Unix ms).
    pub ts_ms: u64,
    /// `SIG(IKs, message)`.
    pub signature: Signature,
}

impl RequestAuth {
    /// Signs a request.
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

    /// The `Authorization` header value.
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME}user={},device={},ts={},sig={}",
            self.user_id,
            self.device_id,
            self.ts_ms,
            URL_SAFE_NO_PAD.encode(self.signature.to_bytes())
        )
    }

    /// Parses an `Authorization` header value strictly: the scheme, then exactly `user`,
    /// `device`, `ts`, `sig` in this order, no spaces, canonical decimals.
    pub fn parse_header(header: &str) -> Result<Self, AuthError> {
        let rest = header.strip_prefix(SCHEME).ok_or(AuthError::Malformed(
            "the scheme must be CipherPost-Ed25519",
        ))?;
        if rest.contains(' ') {
            return Err(AuthError::Malformed("no spaces are allowed between fields"));
        }
        let f = fields(rest, ',', &["user", "device", "ts", "sig"])?;
        Ok(Self {
            user_id: UserId::new(f[0])?,
            device_id: DeviceId::new(decimal(f[1], "device must be a decimal number")?)?,
            ts_ms: decimal(f[2], "ts must be a decimal number of milliseconds")?,
            signature: signature(f[3])?,
        })
    }

    /// Checks the time window and the signature under the device's `IKs.pub`.
    pub fn verify(
        &self,
        signing_key: &VerifyingKey,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), AuthError> {
        check_method(method)?;
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

/// A parsed or freshly made WebSocket connect signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectAuth {
    /// The connecting device's account.
    pub user_id: UserId,
    /// The connecting device.
    pub device_id: DeviceId,
    /// The signed time (Unix ms).
    pub ts_ms: u64,
    /// 16 random bytes, refused by the server when seen in the last 10 minutes.
    pub nonce: [u8; 16],
    /// `SIG(IKs, message)`.
    pub signature: Signature,
}

impl ConnectAuth {
    /// Signs a connect with a fresh nonce from `rng`.
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

    /// Signs a connect with the given nonce (test vectors).
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

    /// The query string: `user=..&device=..&ts=..&nonce=..&sig=..`, no percent-encoding.
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

    /// Parses the query string strictly (the five parameters, in order).
    pub fn parse_query(query: &str) -> Result<Self, AuthError> {
        let f = fields(query, '&', &["user", "device", "ts", "nonce", "sig"])?;
        let nonce: [u8; 16] = URL_SAFE_NO_PAD
            .decode(f[3])
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(AuthError::Malformed(
                "nonce must be 16 bytes of unpadded base64url",
            ))?;
        Ok(Self {
            user_id: UserId::new(f[0])?,
            device_id: DeviceId::new(decimal(f[1], "device must be a decimal number")?)?,
            ts_ms: decimal(f[2], "ts must be a decimal number of milliseconds")?,
            nonce,
            signature: signature(f[4])?,
        })
    }

    /// Checks the time window and the signature under the device's `IKs.pub`.
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
