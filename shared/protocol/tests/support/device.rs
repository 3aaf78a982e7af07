//! A test device: account key, identity, certificate, prekeys, and sessions by peer.
#![allow(dead_code, unreachable_pub, missing_docs)]

use cipherpost_protocol::{
    AccountChain, AccountKey, DeviceCertificate, DeviceId, DeviceIdentity, DeviceIdentityPublic,
    PreKeyBundle, PreKeyStore, SignedPreKey, UserId,
};
use rand_core::OsRng;

pub struct TestDevice {
    pub user: UserId,
    pub device_id: DeviceId,
    pub account: AccountKey,
    pub identity: DeviceIdentity,
    pub cert: DeviceCertificate,
    pub prekeys: PreKeyStore,
}

impl TestDevice {
    pub fn new(user: &str, device: u32) -> Self {
        let user = UserId::new(user).unwrap();
        let device_id = DeviceId::new(device).unwrap();
        let account = AccountKey::generate(&mut OsRng);
        Self::with_account(user, device_id, account)
    }

    pub fn with_account(user: UserId, device_id: DeviceId, account: AccountKey) -> Self {
        let identity = DeviceIdentity::generate(&mut OsRng);
        let cert = account.certify(&user, device_id, &identity.public(), 1_700_000_000_000);
        let mut prekeys = PreKeyStore::new();
        prekeys.add_signed_prekey(
            SignedPreKey::generate(&mut OsRng, &identity, 1, 1_700_000_000_000),
            1_700_000_000_000,
        );
        Self {
            user,
            device_id,
            account,
            identity,
            cert,
            prekeys,
        }
    }

    /// A bundle as the server would hand it out, with one fresh one-time prekey or none.
    pub fn bundle(&mut self, with_opk: bool) -> PreKeyBundle {
        let one_time_prekey =
            with_opk.then(|| self.prekeys.generate_one_time_prekeys(&mut OsRng, 1)[0]);
        PreKeyBundle {
            certificate: self.cert.clone(),
            signed_prekey: self.prekeys.current_signed_prekey().unwrap().public(),
            one_time_prekey,
        }
    }

    pub fn public(&self) -> DeviceIdentityPublic {
        self.identity.public()
    }

    /// The account chain a contact verifies, pinned at this account's key.
    pub fn chain(&self) -> AccountChain {
        let k = self.account.public_key();
        AccountChain::verify(&self.user, &k, &k, &[], &[]).unwrap()
    }
}
