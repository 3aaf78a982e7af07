//! `keys`: upload prekeys, fetch a bundle, count one-time prekeys.

use cipherpost_protocol::{verifying_key, UserId};
use futures::future::join_all;

use super::{one_time_prekeys, signed_prekey, Limited};
use crate::{
    api::{
        DeviceBundle, KeyBundleResponse, OneTimePreKeyJson, PreKeyCount, Push, SignedPreKeyJson,
        UploadKeysRequest, B64,
    },
    store::{DeviceRecord, StoreError},
    ApiError, Backend, HttpRequest, HttpResponse,
};

impl Backend {
    /// Routes of the `keys` function.
    pub async fn keys(&self, req: &HttpRequest) -> HttpResponse {
        let now = crate::now_ms();
        let seg = req.segments();
        let result = match (req.method.as_str(), seg.as_slice()) {
            ("PUT", ["keys"]) => self.upload_keys(req, now).await,
            ("GET", ["keys"]) => self.prekey_count(req, now).await,
            ("GET", ["keys", user]) => self.bundle(req, user, now).await,
            _ => Err(req.unmatched(&[("GET", "keys/{user}")])),
        };
        result.unwrap_or_else(HttpResponse::from)
    }

    async fn upload_keys(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let body: UploadKeysRequest = req.json()?;
        let iks = verifying_key(&caller.device.signing_key, "device signing key")
            .map_err(|_| ApiError::new(500, "internal", "a stored device key is malformed"))?;
        let spk = body
            .signed_prekey
            .as_ref()
            .map(|s| signed_prekey(s, &iks))
            .transpose()?;
        let opks = one_time_prekeys(
            &body.one_time_prekeys,
            self.config.limits.max_prekeys_per_upload,
        )?;
        if spk.is_none() && opks.is_empty() {
            return Err(ApiError::bad_request(
                "nothing_to_upload",
                "send a signed prekey, one-time prekeys, or both",
            ));
        }
        self.accept_once(&caller, now).await?;
        let (user, device) = (caller.user.as_str(), caller.device_id());
        if let (Some((first, _)), Some((last, _))) = (opks.first(), opks.last()) {
            match self
                .store
                .reserve_prekey_ids(user, device, *first, *last)
                .await
            {
                Ok(()) => {}
                Err(StoreError::Conditional(_)) => {
                    let stored = self
                        .store
                        .get_device(user, device)
                        .await?
                        .map_or(0, |d| d.max_opk_id);
                    return Err(ApiError::bad_request(
                        "prekey_id_not_increasing",
                        format!("one-time prekey ids must be above the highest stored id ({stored}); got {first}"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
            self.store.put_prekeys(user, device, &opks).await?;
        }
        if let Some(spk) = spk {
            self.store
                .set_signed_prekey(
                    user,
                    device,
                    spk.id,
                    &spk.key.to_bytes(),
                    &spk.signature.to_bytes(),
                )
                .await?;
        }
        let count = self.store.count_prekeys(user, device).await?;
        Ok(HttpResponse::ok(
            200,
            &PreKeyCount {
                one_time_prekeys: count,
            },
        ))
    }

    async fn prekey_count(&self, req: &HttpRequest, now: u64) -> Result<HttpResponse, ApiError> {
        let caller = self.authenticate(req, now).await?;
        let count = self
            .store
            .count_prekeys(&caller.user, caller.device_id())
            .await?;
        Ok(HttpResponse::ok(
            200,
            &PreKeyCount {
                one_time_prekeys: count,
            },
        ))
    }

    async fn bundle(
        &self,
        req: &HttpRequest,
        user: &str,
        now: u64,
    ) -> Result<HttpResponse, ApiError> {
        let user =
            UserId::new(user).map_err(|e| ApiError::bad_request("invalid_user", e.to_string()))?;
        let caller = self.authenticate(req, now).await?;
        // Each fetch hands out one-time prekeys of `user`: limited per fetching device, and per
        // fetching device and account, so that no device can drain an account's prekeys.
        let me = crate::store::device_key(caller.user.as_str(), caller.device_id());
        self.rate_limit(Limited::Bundles, &me, now).await?;
        self.rate_limit(Limited::BundlesOf, &format!("{me}>{user}"), now)
            .await?;
        let account = self
            .store
            .get_account(user.as_str())
            .await?
            .ok_or_else(|| ApiError::not_found("unknown_user", format!("no account {user}")))?;
        let devices: Vec<DeviceRecord> = self
            .store
            .list_devices(user.as_str())
            .await?
            .into_iter()
            .filter(|d| d.active)
            .collect();
        let bundles = join_all(devices.iter().map(|d| self.device_bundle(d))).await;
        let devices = bundles.into_iter().collect::<Result<Vec<_>, ApiError>>()?;
        Ok(HttpResponse::ok(
            200,
            &KeyBundleResponse {
                user: user.to_string(),
                account_key: B64(account.account_key.to_vec()),
                devices,
                revocations: account.revocations.into_iter().map(B64).collect(),
                rotations: account.rotations.into_iter().map(B64).collect(),
            },
        ))
    }

    /// One device's bundle, handing out one of its one-time prekeys, and telling the device
    /// when it runs low.
    async fn device_bundle(&self, d: &DeviceRecord) -> Result<DeviceBundle, ApiError> {
        let opk = self.store.take_prekey(&d.user, d.device_id).await?;
        if opk.is_some() {
            let remaining = self.store.count_prekeys(&d.user, d.device_id).await?;
            if remaining < self.config.limits.prekeys_low {
                if let Some(conn) = &d.connection_id {
                    self.push_to(d, conn, &Push::PrekeysLow { remaining }).await;
                }
            }
        }
        Ok(DeviceBundle {
            device_id: d.device_id,
            certificate: B64(d.certificate.clone()),
            signed_prekey: SignedPreKeyJson {
                id: d.spk_id,
                key: B64(d.spk_key.to_vec()),
                signature: B64(d.spk_sig.clone()),
            },
            one_time_prekey: opk.map(|(id, key)| OneTimePreKeyJson {
                id,
                key: B64(key.to_vec()),
            }),
        })
    }
}
