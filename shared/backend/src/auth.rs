//! Request authentication (PROTOCOL.md, "Request authentication"): the signed `Authorization`
//! header checked against the registered, non-revoked device, and the replay memory for
//! requests that are not idempotent by content.

use cipherpost_protocol::{verifying_key, RequestAuth, VerifyingKey};

use crate::{store::DeviceRecord, ApiError, Backend, HttpRequest};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The caller's account.
    pub(crate) user: String,
    /// The caller's device record.
    pub(crate) device: DeviceRecord,
    /// The parsed header (signature and time).
    pub(crate) auth: RequestAuth,
}

impl Caller {
    pub(crate) fn device_id(&self) -> u32 {
        self.device.device_id
    }
}

/// Parses the header; a missing or malformed one is a 401.
pub(crate) fn parse_header(req: &HttpRequest) -> Result<RequestAuth, ApiError> {
    let header = req.authorization.as_deref().ok_or_else(|| {
        ApiError::unauthorized("the request needs a CipherPost-Ed25519 Authorization header")
    })?;
    RequestAuth::parse_header(header).map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// Checks the signature of `req` under `key` and the time window.
pub(crate) fn verify(
    auth: &RequestAuth,
    key: &VerifyingKey,
    req: &HttpRequest,
    now_ms: u64,
) -> Result<(), ApiError> {
    auth.verify(key, &req.method, &req.path_and_query(), &req.body, now_ms)
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

impl Backend {
    /// Authenticates a request from a registered device: the header names an active device
    /// whose identity key verifies the signature within the clock window.
    pub(crate) async fn authenticate(
        &self,
        req: &HttpRequest,
        now_ms: u64,
    ) -> Result<Caller, ApiError> {
        let auth = parse_header(req)?;
        let user = auth.user_id.as_str().to_owned();
        let device = self
            .store
            .get_device(&user, auth.device_id.get())
            .await?
            .filter(|d| d.active)
            .ok_or_else(|| ApiError::unauthorized("the device is not registered or was revoked"))?;
        let key = verifying_key(&device.signing_key, "device signing key")
            .map_err(|_| ApiError::new(500, "internal", "a stored device key is malformed"))?;
        verify(&auth, &key, req, now_ms)?;
        Ok(Caller { user, device, auth })
    }

    /// Refuses a second use of the same signed request within the replay window (PROTOCOL.md:
    /// key upload, link, revoke and group changes are accepted once).
    pub(crate) async fn accept_once(&self, caller: &Caller, now_ms: u64) -> Result<(), ApiError> {
        let key = format!(
            "req#{}#{}#{}",
            caller.user,
            caller.device_id(),
            hex::encode(caller.auth.signature.to_bytes())
        );
        let now = now_ms / 1000;
        if self
            .store
            .remember_once(&key, now, now + self.config.limits.replay_ttl_secs)
            .await?
        {
            Ok(())
        } else {
            Err(ApiError::unauthorized(
                "this signed request was already used (replay)",
            ))
        }
    }
}
