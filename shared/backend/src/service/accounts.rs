//! `register`: create an account, link a device, revoke a device.

use cipherpost_protocol::{
    verifying_key, DeviceCertificate, DeviceId, Revocation, Rotation, UserId, VerifyingKey,
};
use serde_json::json;

use super::{certificate, one_time_prekeys, signed_prekey, Limited};
use crate::{
    api::{
        CreateAccountRequest, DeviceRef, DeviceRegistered, DeviceRevoked, LinkDeviceRequest,
        NewDevice, RevokeDeviceRequest, B64,
    },
    auth,
    store::{device_key, AccountRecord, DeviceRecord, StoreError},
    ApiError, Backend, HttpRequest, HttpResponse,
};

/// Checked one-time prekeys: `(opk_id, OPK.pub)`.
type OneTimePreKeys = Vec<(u32, [u8; 32])>;

fn user_id(s: &str) -> Result<UserId, ApiError> {
    UserId::new(s).map_err(|e| ApiError::bad_request("invalid_user", e.to_string()))
}

impl Backend {
    /// Routes of the `register` function.
    pub async fn register(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        let seg = req.segments();
        let result = match (req.method.as_str(), seg.as_slice()) {
            ("PUT", ["accounts", user]) => self.create_account(req, user, now).await,
            ("POST", ["accounts", user, "devices"]) => self.link_device(req, user, now).await,
            ("DELETE", ["accounts", user, "devices", device]) => {
                self.revoke_device(req, user, device, now).await
            }
            _ => Err(req.unmatched(&[
                ("PUT", "accounts/{user}"),
                ("POST", "accounts/{user}/devices"),
                ("DELETE", "accounts/{user}/devices/{device}"),
            ])),
        };
        match result {
            Ok(r) => r,
            Err(e) => e.into(),
        }
    }

    /// Authenticates a request that only a device of `user` may make (`what` it may do).
    async fn authenticate_member(
        &self,
        req: &HttpRequest,
        user: &UserId,
        now: u64,
        what: &str,
    ) -> Result<crate::auth::Caller, ApiError> {
        let caller = self.authenticate(req, now).await?;
        if caller.user != user.as_str() {
            return Err(ApiError::forbidden(format!(
                "only a device of the account can {what}"
            )));
        }
        Ok(caller)
    }

    /// The account and its key in force.
    async fn account_with_key(
        &self,
        user: &UserId,
    ) -> Result<(AccountRecord, VerifyingKey), ApiError> {
        let account = self
            .store
            .get_account(user.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found("unknown_user", "no such account"))?;
        let key = verifying_key(&account.account_key, "account key")
            .map_err(|_| ApiError::new(500, "internal", "a stored account key is malformed"))?;
        Ok((account, key))
    }

    /// Checks a new device's certificate (under `account_key`, naming `user`) and prekeys.
    fn new_device(
        &self,
        user: &UserId,
        account_key: &cipherpost_protocol::VerifyingKey,
        d: &NewDevice,
    ) -> Result<(DeviceRecord, OneTimePreKeys), ApiError> {
        let cert = certificate(&d.certificate.0)?;
        if cert.user_id != *user {
            return Err(ApiError::bad_request(
                "invalid_certificate",
                "the certificate names another account",
            ));
        }
        cert.verify(account_key).map_err(|_| {
            ApiError::bad_request(
                "invalid_certificate",
                "the device certificate does not verify under the account key",
            )
        })?;
        let spk = signed_prekey(&d.signed_prekey, &cert.identity.signing)?;
        let opks = one_time_prekeys(
            &d.one_time_prekeys,
            self.config.limits.max_prekeys_per_upload,
        )?;
        let record = DeviceRecord {
            user: user.to_string(),
            device_id: cert.device_id.get(),
            certificate: d.certificate.0.clone(),
            signing_key: cert.identity.signing.to_bytes(),
            spk_id: spk.id,
            spk_key: spk.key.to_bytes(),
            spk_sig: spk.signature.to_bytes().to_vec(),
            max_opk_id: opks.last().map_or(0, |(id, _)| *id),
            active: true,
            connection_id: None,
        };
        Ok((record, opks))
    }

    async fn create_account(
        &self,
        req: &HttpRequest,
        user: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let user = user_id(user)?;
        let body: CreateAccountRequest = req.json()?;
        let ak = verifying_key(&body.account_key.array::<32>("account_key")?, "account key")
            .map_err(|e| ApiError::bad_request("invalid_account_key", e.to_string()))?;
        let (device, opks) = self.new_device(&user, &ak, &body.device)?;
        // The signature is checked with the IKs of the certificate just verified.
        let header = auth::parse_header(req)?;
        if header.user_id != user || header.device_id.get() != device.device_id {
            return Err(ApiError::unauthorized(
                "the Authorization header must name the new account and the certified device",
            ));
        }
        let iks = verifying_key(&device.signing_key, "device signing key")
            .map_err(|e| ApiError::bad_request("invalid_certificate", e.to_string()))?;
        auth::verify(&header, &iks, req, now)?;
        match self
            .store
            .create_account(&ak.to_bytes(), &device, &opks)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conditional(_)) => {
                return Err(ApiError::conflict(
                    "user_taken",
                    format!("the user id {user} is taken"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user = %user, device = device.device_id, "account created");
        Ok(HttpResponse::ok(
            201,
            &DeviceRegistered {
                user: user.to_string(),
                device_id: device.device_id,
            },
        ))
    }

    async fn link_device(
        &self,
        req: &HttpRequest,
        user: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let user = user_id(user)?;
        let caller = self
            .authenticate_member(req, &user, now, "link a device to it")
            .await?;
        let body: LinkDeviceRequest = req.json()?;
        let (account, ak) = self.account_with_key(&user).await?;
        let (device, opks) = self.new_device(&user, &ak, &body.device)?;
        self.rate_limit(Limited::Links, user.as_str(), now).await?;
        self.accept_once(&caller, now).await?;
        let max = self.config.limits.max_devices;
        match self
            .store
            .add_device(&account.account_key, max, &device, &opks)
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conditional(reasons)) => {
                if reasons.get(1).copied().unwrap_or(false) {
                    return Err(ApiError::conflict(
                        "device_exists",
                        format!(
                            "device {} is or was registered on this account; choose another id",
                            device.device_id
                        ),
                    ));
                }
                let now_account = self.store.get_account(user.as_str()).await?;
                return Err(match now_account {
                    Some(a) if a.device_count >= max => ApiError::conflict(
                        "too_many_devices",
                        format!("an account has at most {max} devices; revoke one first"),
                    ),
                    _ => ApiError::conflict(
                        "account_key_changed",
                        "the account key changed while linking; sign a new certificate",
                    ),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user = %user, device = device.device_id, "device linked");
        Ok(HttpResponse::ok(
            201,
            &DeviceRegistered {
                user: user.to_string(),
                device_id: device.device_id,
            },
        ))
    }

    async fn revoke_device(
        &self,
        req: &HttpRequest,
        user: &str,
        device: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let user = user_id(user)?;
        let canonical = !device.is_empty()
            && device.bytes().all(|b| b.is_ascii_digit())
            && !device.starts_with('0');
        let device_id = canonical
            .then(|| device.parse::<u32>().ok())
            .flatten()
            .and_then(|d| DeviceId::new(d).ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_device",
                    "the device id must be a non-zero 32-bit number",
                )
            })?;
        let caller = self
            .authenticate_member(req, &user, now, "revoke its devices")
            .await?;
        let body: RevokeDeviceRequest = req.json()?;
        let (account, old_key) = self.account_with_key(&user).await?;
        let devices = self.store.list_devices(user.as_str()).await?;
        let Some(target) = devices
            .iter()
            .find(|d| d.device_id == device_id.get() && d.active)
        else {
            // A retry of a revocation that was registered (its answer lost, or its clean-up
            // cut short): the same revocation and rotation are stored, so the clean-up runs
            // again and the answer is the same.
            let same = devices
                .iter()
                .any(|d| d.device_id == device_id.get() && !d.active)
                && account.revocations.contains(&body.revocation.0)
                && account.rotations.contains(&body.rotation.0);
            if !same {
                return Err(ApiError::not_found(
                    "unknown_device",
                    "no such active device",
                ));
            }
            self.drop_revoked_device(&user, device_id.get(), None).await;
            return Ok(HttpResponse::ok(
                200,
                &DeviceRevoked {
                    user: user.to_string(),
                    device_id: device_id.get(),
                    account_key: B64(old_key.to_bytes().to_vec()),
                },
            ));
        };

        let bad = |m: &str| ApiError::bad_request("invalid_revocation", m.to_owned());
        let revocation =
            Revocation::from_bytes(&body.revocation.0).map_err(|e| bad(&e.to_string()))?;
        if revocation.user_id != user
            || revocation.device_id != device_id
            || revocation.signing_key.to_bytes() != target.signing_key
        {
            return Err(bad("the revocation names another account, device or key"));
        }
        revocation
            .verify(&old_key)
            .map_err(|_| bad("the revocation does not verify under the account key"))?;
        let rotation = Rotation::from_bytes(&body.rotation.0).map_err(|e| bad(&e.to_string()))?;
        if rotation.user_id != user || rotation.old_key != old_key || rotation.new_key == old_key {
            return Err(bad(
                "the rotation must go from the current account key to a new one",
            ));
        }
        rotation
            .verify()
            .map_err(|_| bad("the rotation does not verify under the account key"))?;

        // Exactly one fresh certificate per remaining active device, same identity keys.
        let remaining: Vec<&DeviceRecord> = devices
            .iter()
            .filter(|d| d.active && d.device_id != device_id.get())
            .collect();
        let mut certs: Vec<(u32, Vec<u8>)> = Vec::with_capacity(remaining.len());
        for raw in &body.certificates {
            let cert = certificate(&raw.0)?;
            let Some(d) = remaining
                .iter()
                .find(|d| d.device_id == cert.device_id.get())
            else {
                return Err(bad(
                    "a certificate names a device that is not a remaining active device",
                ));
            };
            let stored = DeviceCertificate::from_bytes(&d.certificate).map_err(|_| {
                ApiError::new(500, "internal", "a stored device certificate is malformed")
            })?;
            if cert.user_id != user || cert.identity != stored.identity {
                return Err(bad(
                    "a certificate changes a device's account or identity keys",
                ));
            }
            cert.verify(&rotation.new_key)
                .map_err(|_| bad("a certificate does not verify under the new account key"))?;
            if certs.iter().any(|(id, _)| *id == cert.device_id.get()) {
                return Err(bad("two certificates for the same device"));
            }
            certs.push((cert.device_id.get(), raw.0.clone()));
        }
        if certs.len() != remaining.len() {
            let missing: Vec<DeviceRef> = remaining
                .iter()
                .filter(|d| !certs.iter().any(|(id, _)| *id == d.device_id))
                .map(|d| DeviceRef {
                    user: user.to_string(),
                    device_id: d.device_id,
                })
                .collect();
            return Err(
                bad("every remaining device needs a certificate under the new key")
                    .with("missing", json!(missing)),
            );
        }
        self.accept_once(&caller, now).await?;
        let changed = || {
            ApiError::conflict(
                "account_changed",
                "the account changed while revoking (another revocation or link); fetch it and retry",
            )
        };
        // One transaction revokes the device (its requests get 401 from here on), rotates the
        // key and stores the certificates; it also takes the device's connection record, which
        // is retried when the device (re)connected since it was read.
        let mut connection = target.connection_id.clone();
        let mut tries = 0;
        loop {
            match self
                .store
                .revoke_device(
                    user.as_str(),
                    &account.account_key,
                    &rotation.new_key.to_bytes(),
                    &body.rotation.0,
                    &body.revocation.0,
                    device_id.get(),
                    connection.as_deref(),
                    &certs,
                )
                .await
            {
                Ok(()) => break,
                Err(StoreError::Conditional(reasons))
                    if tries < 3
                        && !reasons.first().copied().unwrap_or(true)
                        && reasons.get(1).copied().unwrap_or(false) =>
                {
                    tries += 1;
                    match self
                        .store
                        .get_device(user.as_str(), device_id.get())
                        .await?
                    {
                        Some(d) if d.active => connection = d.connection_id,
                        _ => return Err(changed()),
                    }
                }
                Err(StoreError::Conditional(_)) => return Err(changed()),
                Err(e) => return Err(e.into()),
            }
        }
        self.drop_revoked_device(&user, device_id.get(), connection.as_deref())
            .await;
        tracing::info!(user = %user, device = device_id.get(), "device revoked");
        Ok(HttpResponse::ok(
            200,
            &DeviceRevoked {
                user: user.to_string(),
                device_id: device_id.get(),
                account_key: B64(rotation.new_key.to_bytes().to_vec()),
            },
        ))
    }

    /// What a revoked device leaves: its socket is closed (with its connection record) and its
    /// one-time prekeys and queue are deleted. Each step is idempotent, so a retried
    /// revocation runs it again; items a failure leaves are unreachable (the device gets 401)
    /// and the queue's expire.
    async fn drop_revoked_device(&self, user: &UserId, device_id: u32, connection: Option<&str>) {
        if let Some(conn) = connection {
            self.pusher.close(conn).await;
            if let Err(e) = self
                .store
                .drop_connection(user.as_str(), device_id, conn)
                .await
            {
                tracing::warn!(error = %e, "dropping a revoked device's connection record failed");
            }
        }
        let dk = device_key(user.as_str(), device_id);
        for queue in [false, true] {
            if let Err(e) = self.store.purge_partition(queue, &dk).await {
                tracing::warn!(error = %e, device_key = %dk, "purging a revoked device's items failed; they are unreachable and expire");
            }
        }
    }
}
