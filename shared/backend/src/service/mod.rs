//! What each route does. One module per function: accounts (register), keys, messages (send,
//! sync), attachments and connections (ws-connect, ws-disconnect).

mod accounts;
mod attachments;
mod connections;
mod keys;
mod messages;

use cipherpost_protocol::{
    x25519_public_key, DeviceCertificate, PublicKey, Signature, SignedPreKeyPublic, VerifyingKey,
};

use crate::{
    api::{OneTimePreKeyJson, SignedPreKeyJson},
    store::StoreError,
    ApiError,
};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure");
        match e {
            StoreError::Corrupt(what) => {
                ApiError::new(500, "internal", format!("a stored {what} is malformed"))
            }
            _ => ApiError::unavailable("the database is unavailable; retry shortly"),
        }
    }
}

/// A checked signed prekey.
pub(crate) fn signed_prekey(
    j: &SignedPreKeyJson,
    device_signing_key: &VerifyingKey,
) -> Result<SignedPreKeyPublic, ApiError> {
    let key = x25519_public_key(&j.key.array::<32>("signed_prekey.key")?)
        .map_err(|e| ApiError::bad_request("invalid_prekey", e.to_string()))?;
    let signature = Signature::from_bytes(&j.signature.array::<64>("signed_prekey.signature")?);
    let spk = SignedPreKeyPublic {
        id: j.id,
        key,
        signature,
    };
    spk.verify(device_signing_key).map_err(|_| {
        ApiError::bad_request(
            "invalid_prekey_signature",
            "the signed prekey's signature does not verify under the device's identity key",
        )
    })?;
    Ok(spk)
}

/// Checked one-time prekeys: at most `max`, ids non-zero and strictly increasing.
pub(crate) fn one_time_prekeys(
    list: &[OneTimePreKeyJson],
    max: usize,
) -> Result<Vec<(u32, [u8; 32])>, ApiError> {
    if list.len() > max {
        return Err(ApiError::bad_request(
            "too_many_prekeys",
            format!(
                "at most {max} one-time prekeys per request, got {}",
                list.len()
            ),
        ));
    }
    let mut out: Vec<(u32, [u8; 32])> = Vec::with_capacity(list.len());
    for p in list {
        if p.id == 0 {
            return Err(ApiError::bad_request(
                "invalid_prekey",
                "one-time prekey ids start at 1",
            ));
        }
        if out.last().is_some_and(|(prev, _)| *prev >= p.id) {
            return Err(ApiError::bad_request(
                "invalid_prekey",
                "one-time prekey ids must be strictly increasing within a request",
            ));
        }
        let key: PublicKey = x25519_public_key(&p.key.array::<32>("one_time_prekeys[].key")?)
            .map_err(|e| ApiError::bad_request("invalid_prekey", e.to_string()))?;
        out.push((p.id, key.to_bytes()));
    }
    Ok(out)
}

/// A certificate from its transport bytes (signature not yet checked).
pub(crate) fn certificate(bytes: &[u8]) -> Result<DeviceCertificate, ApiError> {
    DeviceCertificate::from_bytes(bytes)
        .map_err(|e| ApiError::bad_request("invalid_certificate", e.to_string()))
}
