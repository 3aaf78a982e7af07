//! What each route does. One module per function: accounts (register), keys, messages (send,
//! sync), groups (groups, and the group half of send), attachments and connections (ws-connect,
//! ws-disconnect).

mod accounts;
mod attachments;
mod connections;
mod groups;
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

/// What a rate limit counts (the first part of its counter's key).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Limited {
    /// Message sends of one device.
    Sends,
    /// Bundle fetches of one device.
    Bundles,
    /// Bundle fetches of one device for one account.
    BundlesOf,
    /// Device links of one account.
    Links,
    /// Attachment uploads of one account.
    Uploads,
}

impl Limited {
    fn name(self) -> &'static str {
        match self {
            Self::Sends => "sends",
            Self::Bundles => "bundles",
            Self::BundlesOf => "bundles_of",
            Self::Links => "links",
            Self::Uploads => "uploads",
        }
    }

    /// The limit and its window in seconds.
    fn limit(self, r: &crate::RateLimits) -> (u64, u64) {
        match self {
            Self::Sends => (r.sends_per_minute, 60),
            Self::Bundles => (r.bundles_per_hour, 3_600),
            Self::BundlesOf => (r.bundles_per_target_per_hour, 3_600),
            Self::Links => (r.links_per_hour, 3_600),
            Self::Uploads => (r.uploads_per_hour, 3_600),
        }
    }

    /// What a person is told.
    fn what(self) -> &'static str {
        match self {
            Self::Sends => "messages sent by this device",
            Self::Bundles => "key bundles fetched by this device",
            Self::BundlesOf => "key bundles of this account fetched by this device",
            Self::Links => "devices linked to this account",
            Self::Uploads => "attachments uploaded by this account",
        }
    }
}

impl crate::Backend {
    /// Counts one request against a rate limit (a fixed window, counted in DynamoDB so that it
    /// holds across function instances) and refuses it with 429 and `Retry-After` when it is
    /// over. `subject` names who is limited (a device key, an account).
    pub(crate) async fn rate_limit(
        &self,
        kind: Limited,
        subject: &str,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let (limit, window) = kind.limit(&self.config.limits.rate);
        if limit == 0 {
            return Ok(());
        }
        let now = now_ms / 1000;
        let start = now - now % window;
        let end = start + window;
        let key = format!("{}#{subject}#{start}", kind.name());
        let hits = self.store.count_hit(&key, end + 60).await?;
        if hits <= limit {
            return Ok(());
        }
        let wait = end.saturating_sub(now).max(1);
        let per = if window == 60 { "minute" } else { "hour" };
        let mut e = ApiError::new(
            429,
            "rate_limited",
            format!(
                "too many {}: at most {limit} per {per}; retry in {wait} s",
                kind.what()
            ),
        );
        e.retry_after = Some(wait);
        Err(e)
    }
}

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
