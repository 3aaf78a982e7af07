//! Device revocation (DESIGN.md "Multi-device and trust", PROTOCOL.md "Identities"): the
//! revoking device signs a revocation and rotates the account key (the revoked device held
//! it), registers both with fresh certificates for the remaining devices, and hands the new
//! key to the remaining devices over the pairwise sessions. The receiving side of that
//! transfer, and what a fetched revocation or rotation of a contact changes locally, are here
//! too.

use cipherpost_protocol::{
    AccountChain, AccountKey, DeviceCertificate, DeviceId, DeviceIdentityPublic, Revocation,
    Rotation, SafetyNumber, UserId, VerifyingKey,
};
use rand_core::OsRng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{arr, b64, contact, queue_content, unb64, Client, Me};
use crate::{
    api::*,
    content::Content,
    error::ClientError,
    now_ms,
    store::{self},
};

/// The meta key of a revocation sent but not known to be registered: the new account key must
/// survive a lost answer, or the account would end up under a key nobody holds.
const PENDING: &str = "revoke_pending";

/// A revocation this device has built (secret: it holds the new account key seed).
#[derive(Serialize, Deserialize)]
struct PendingRevocation {
    device_id: u32,
    /// The new account key seed (b64).
    new_account_key: String,
    /// The request body, sent again unchanged on a retry.
    request: RevokeDeviceRequest,
}

/// What [`Client::revoke_device`] did.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceRevocation {
    /// The account.
    pub user: String,
    /// The revoked device.
    pub device_id: u32,
    /// The devices that remain (this one included), certified under the new account key.
    pub remaining_devices: Vec<u32>,
    /// The account's new fingerprint (30 digits in groups of 5, half of every safety number
    /// with it): contacts see a change.
    pub fingerprint: String,
}

fn refused(why: impl Into<String>) -> ClientError {
    ClientError::Content(format!(
        "an account key rotation was refused: {}",
        why.into()
    ))
}

/// Marks every active group with `user` among its members for a new sender key before the next
/// group message, and forgets the sender key of `(user, device)` and what was sent to it: a
/// device that is gone (revoked, or no longer listed under a verified certificate) gets no key
/// of ours again and none of its group messages open here.
pub(super) fn device_gone(conn: &Connection, user: &str, device: u32) -> Result<(), ClientError> {
    let groups: Vec<(String, String)> = {
        let mut st = conn.prepare("SELECT group_id, members FROM groups WHERE active = 1")?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    for (group, members) in groups {
        let members: Vec<serde_json::Value> = serde_json::from_str(&members).unwrap_or_default();
        if members.iter().any(|m| m["user"] == user) {
            conn.execute("UPDATE groups SET rotate = 1 WHERE group_id = ?1", [&group])?;
        }
    }
    conn.execute(
        "DELETE FROM sender_keys WHERE sender_user = ?1 AND sender_device = ?2",
        params![user, device],
    )?;
    conn.execute(
        "DELETE FROM sender_key_sent WHERE user = ?1 AND device_id = ?2",
        params![user, device],
    )?;
    conn.execute(
        "DELETE FROM devices WHERE user = ?1 AND device_id = ?2",
        params![user, device],
    )?;
    conn.execute(
        "DELETE FROM sessions WHERE user = ?1 AND device_id = ?2",
        params![user, device],
    )?;
    Ok(())
}

/// What a verified chain of `user` shows beyond the pinned key: revoked devices this device
/// knew, and a rotation (the safety-number change; the old key signed it, so sending goes on
/// without the user's acceptance, PROTOCOL.md "What senders verify").
pub(super) fn chain_notices(
    conn: &Connection,
    me: &Me,
    my_key: Option<&VerifyingKey>,
    user: &str,
    chain: &AccountChain,
) -> Result<(), ClientError> {
    let is_self = user == me.user.as_str();
    for (device, signing) in chain.revoked() {
        let known: Option<Vec<u8>> = conn
            .query_row(
                "SELECT identity FROM devices WHERE user = ?1 AND device_id = ?2",
                params![user, device.get()],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_some_and(|k| k.get(..32) == Some(&signing.to_bytes()[..])) {
            device_gone(conn, user, device.get())?;
            let who = if is_self {
                "your account".to_string()
            } else {
                user.to_string()
            };
            store::notice(
                conn,
                &format!(
                    "device {device} of {who} was revoked (signed by the account key); nothing is encrypted to it any more"
                ),
            )?;
        }
    }
    if !chain.rotated() {
        return Ok(());
    }
    if is_self {
        store::notice(
            conn,
            "your account key was rotated (a device was revoked); your contacts see a new safety number",
        )?;
        return Ok(());
    }
    let uid = UserId::new(user).map_err(ClientError::protocol)?;
    let number = my_key
        .map(|k| SafetyNumber::new((&me.user, k), (&uid, chain.latest())).to_string())
        .unwrap_or_default();
    store::notice(
        conn,
        &format!(
            "the safety number with {user} changed: a device was removed and the account key rotated, signed by the key you had; new safety number {number} (compare with `cipherpost verify {user}`)"
        ),
    )?;
    Ok(())
}

/// Takes an [`Content::AccountRotated`] from another device of this account: the rotation
/// must go from the account key this device holds to the transferred one and verify under it,
/// the revocation must verify under it too, and one certificate must certify this device
/// under the new key. Returns what to show.
pub(super) fn accept_rotation(
    tx: &Connection,
    me: &Me,
    from_device: u32,
    account_key: &str,
    rotation: &str,
    revocation: &str,
    certificates: &[String],
) -> Result<(), ClientError> {
    let seed = Zeroizing::new(unb64(account_key, "account key")?);
    let seed = Zeroizing::new(arr::<32>(&seed, "account key")?);
    let new = AccountKey::from_bytes(&seed);
    let current = store::meta(tx, "account_key")?
        .map(Zeroizing::new)
        .ok_or(ClientError::NotLinked)?;
    let current = AccountKey::from_bytes(&Zeroizing::new(arr::<32>(&current, "account key")?));
    if current.public_key() == new.public_key() {
        return Ok(()); // already taken (a copy of the same transfer)
    }
    let rotation =
        Rotation::from_bytes(&unb64(rotation, "rotation")?).map_err(|e| refused(e.to_string()))?;
    let revocation = Revocation::from_bytes(&unb64(revocation, "revocation")?)
        .map_err(|e| refused(e.to_string()))?;
    if rotation.user_id != me.user
        || rotation.old_key != current.public_key()
        || rotation.new_key != new.public_key()
        || rotation.verify().is_err()
    {
        return Err(refused(
            "the rotation does not go from this device's account key to the one sent",
        ));
    }
    if revocation.user_id != me.user || revocation.verify(&current.public_key()).is_err() {
        return Err(refused(
            "the revocation is not signed by this account's key",
        ));
    }
    if revocation.device_id == me.device {
        return Err(refused("it revokes this very device"));
    }
    let mine = certificates
        .iter()
        .filter_map(|c| unb64(c, "certificate").ok())
        .filter_map(|c| DeviceCertificate::from_bytes(&c).ok())
        .find(|c| {
            c.user_id == me.user
                && c.device_id == me.device
                && c.identity == me.identity.public()
                && c.verify(&new.public_key()).is_ok()
        })
        .ok_or_else(|| refused("it carries no certificate for this device under the new key"))?;
    store::set_meta(tx, "account_key", &new.to_bytes()[..])?;
    store::set_meta(tx, "certificate", &mine.to_bytes())?;
    tx.execute(
        "UPDATE contacts SET pinned_key = ?2, pending_key = NULL, blocked = 0, fetched = 0 WHERE user = ?1",
        params![me.user.as_str(), new.public_key().to_bytes().to_vec()],
    )?;
    // Unused bundles of this account's devices carry certificates under the old key; the next
    // send fetches fresh ones.
    tx.execute(
        "UPDATE devices SET bundle = NULL WHERE user = ?1",
        [me.user.as_str()],
    )?;
    device_gone(tx, me.user.as_str(), revocation.device_id.get())?;
    store::notice(
        tx,
        &format!(
            "device {} of your account was revoked from device {from_device}; this device took the new account key (your contacts see a new safety number)",
            revocation.device_id
        ),
    )?;
    Ok(())
}

impl Client {
    /// Revokes `device` of this account (any device but this one): signs the revocation and a
    /// rotation to a new account key, registers them with fresh certificates for every
    /// remaining device, and sends the new key to the remaining devices over the pairwise
    /// sessions. The new key is kept before the request leaves, so running it again after a
    /// lost answer finishes the same revocation.
    pub async fn revoke_device(&mut self, device: u32) -> Result<DeviceRevocation, ClientError> {
        let me = self.linked_me()?;
        let user = me.user.to_string();
        let target = DeviceId::new(device)
            .map_err(|_| ClientError::Usage(format!("{device} is not a device id")))?;
        if target == me.device {
            return Err(ClientError::Usage(
                "a device cannot revoke itself: run `cipherpost devices revoke` on another device of the account".into(),
            ));
        }
        let pending: Option<PendingRevocation> = self
            .store
            .meta(PENDING)?
            .map(Zeroizing::new)
            .and_then(|p| serde_json::from_slice(&p).ok());
        let pending = match pending {
            Some(p) if p.device_id == device => p,
            Some(p) => {
                return Err(ClientError::Usage(format!(
                    "the revocation of device {} is not finished: run `cipherpost devices revoke {}` again first",
                    p.device_id, p.device_id
                )))
            }
            None => self.build_revocation(target).await?,
        };
        let path = format!("/v1/accounts/{user}/devices/{device}");
        let body = Self::json(&pending.request)?;
        let (status, bytes) = self.call(None, "DELETE", &path, Some(body)).await?;
        let seed = Zeroizing::new(unb64(&pending.new_account_key, "account key")?);
        let new = AccountKey::from_bytes(&Zeroizing::new(arr::<32>(&seed, "account key")?));
        if !(200..300).contains(&status) {
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            let landed = match (status, err.error.as_str()) {
                // A retry after a lost answer: registered when the server's key is ours.
                (404, "unknown_device") | (409, "account_changed") => {
                    let keys: KeyBundleResponse = self
                        .call_json("GET", &format!("/v1/keys/{user}"), None)
                        .await?;
                    keys.account_key.0 == new.public_key().to_bytes()
                }
                _ => false,
            };
            if !landed {
                // Refused for good (not a failure to ask): the pending revocation goes.
                if (400..500).contains(&status) && !matches!(status, 401 | 408 | 429) {
                    self.store
                        .conn
                        .execute("DELETE FROM meta WHERE key = ?1", [PENDING])?;
                }
                return Err(Self::server_error(status, &bytes));
            }
        }
        let remaining = self.finish_revocation(target, &new, &pending)?;
        // Fresh bundles under the new key for this account's devices, then the transfer.
        if let Err(e) = self.refresh_devices(&user).await {
            tracing::warn!(error = %e, "fetching this account's devices after a revocation failed");
        }
        if let Err(e) = self.flush_outbox().await {
            tracing::warn!(error = %e, "the new account key waits in the outbox");
        }
        let uid = UserId::new(&user).map_err(ClientError::protocol)?;
        Ok(DeviceRevocation {
            user,
            device_id: device,
            remaining_devices: remaining,
            fingerprint: cipherpost_protocol::fingerprint_digits(&uid, &new.public_key())
                .as_bytes()
                .chunks(5)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// Builds (and stores, before anything is sent) the revocation of `target`.
    async fn build_revocation(
        &mut self,
        target: DeviceId,
    ) -> Result<PendingRevocation, ClientError> {
        let user = self.me()?.user.to_string();
        self.refresh_devices(&user).await?;
        let me = self.linked_me()?;
        let old = self.account_key()?;
        let pinned = contact(&self.store.conn, &user)?.and_then(|c| c.pinned);
        if pinned.as_deref() != Some(&old.public_key().to_bytes()[..]) {
            return Err(ClientError::Usage(
                "this device does not hold the account's current key yet (another device rotated it): run `cipherpost sync` first".into(),
            ));
        }
        let devices: Vec<(u32, Vec<u8>)> = {
            let mut st = self
                .store
                .conn
                .prepare("SELECT device_id, identity FROM devices WHERE user = ?1")?;
            let rows = st
                .query_map([&user], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let identity_of = |b: &[u8]| -> Result<DeviceIdentityPublic, ClientError> {
            DeviceIdentityPublic::from_bytes(&arr(b, "identity")?).map_err(ClientError::protocol)
        };
        let Some((_, target_identity)) = devices.iter().find(|(d, _)| *d == target.get()) else {
            return Err(ClientError::Usage(format!(
                "device {target} is not an active device of this account (see `cipherpost devices`)"
            )));
        };
        let target_identity = identity_of(target_identity)?;
        let now = now_ms();
        let new = AccountKey::generate(&mut OsRng);
        let revocation = old.revoke(&me.user, target, &target_identity.signing, now);
        let rotation = old.rotate_to(&me.user, &new.public_key(), now);
        let mut certificates = vec![B64(new
            .certify(&me.user, me.device, &me.identity.public(), now)
            .to_bytes())];
        for (d, identity) in &devices {
            if *d == target.get() {
                continue;
            }
            let id = DeviceId::new(*d).map_err(ClientError::protocol)?;
            certificates.push(B64(new
                .certify(&me.user, id, &identity_of(identity)?, now)
                .to_bytes()));
        }
        let pending = PendingRevocation {
            device_id: target.get(),
            new_account_key: b64(&new.to_bytes()[..]),
            request: RevokeDeviceRequest {
                revocation: B64(revocation.to_bytes()),
                rotation: B64(rotation.to_bytes()),
                certificates,
            },
        };
        let bytes = Zeroizing::new(
            serde_json::to_vec(&pending).map_err(|e| ClientError::Internal(e.to_string()))?,
        );
        self.store.set_meta(PENDING, &bytes)?;
        Ok(pending)
    }

    /// The server holds the revocation: this device takes the new key and certificate, drops
    /// the revoked device, marks its groups for new sender keys, and queues the transfer to the
    /// remaining devices. Returns the remaining devices.
    fn finish_revocation(
        &mut self,
        target: DeviceId,
        new: &AccountKey,
        pending: &PendingRevocation,
    ) -> Result<Vec<u32>, ClientError> {
        let me = self.me()?;
        let user = me.user.as_str();
        let mine = pending
            .request
            .certificates
            .iter()
            .filter_map(|c| DeviceCertificate::from_bytes(&c.0).ok())
            .find(|c| c.device_id == me.device)
            .ok_or_else(|| ClientError::Internal("no certificate for this device".into()))?;
        let tx = self.store.write_tx()?;
        store::set_meta(&tx, "account_key", &new.to_bytes()[..])?;
        store::set_meta(&tx, "certificate", &mine.to_bytes())?;
        tx.execute(
            "UPDATE contacts SET pinned_key = ?2, pending_key = NULL, blocked = 0 WHERE user = ?1",
            params![user, new.public_key().to_bytes().to_vec()],
        )?;
        device_gone(&tx, user, target.get())?;
        let mut remaining: Vec<u32> = {
            let mut st = tx.prepare("SELECT device_id FROM devices WHERE user = ?1")?;
            let rows = st
                .query_map([user], |r| r.get::<_, u32>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        if !remaining.is_empty() {
            let content = Content::AccountRotated {
                account_key: b64(&new.to_bytes()[..]),
                rotation: b64(&pending.request.rotation.0),
                revocation: b64(&pending.request.revocation.0),
                certificates: pending
                    .request
                    .certificates
                    .iter()
                    .map(|c| b64(&c.0))
                    .collect(),
            };
            queue_content(&tx, me, user, &content)?;
        }
        tx.execute("DELETE FROM meta WHERE key = ?1", [PENDING])?;
        tx.commit()?;
        remaining.push(me.device.get());
        remaining.sort_unstable();
        Ok(remaining)
    }
}

/// The account key this device holds, if linked (for safety numbers in notices).
pub(super) fn my_account_key(conn: &Connection) -> Result<Option<VerifyingKey>, ClientError> {
    let Some(seed) = store::meta(conn, "account_key")?.map(Zeroizing::new) else {
        return Ok(None);
    };
    let seed = Zeroizing::new(arr::<32>(&seed, "account key")?);
    Ok(Some(AccountKey::from_bytes(&seed).public_key()))
}
