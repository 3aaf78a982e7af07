//! The root key and `KDF_RK`.

use zeroize::Zeroizing;

use super::chain::ChainKey;
use crate::{consts::LABEL_ROOT, primitives::hkdf};

/// The ratchet's root key `RK`.
pub(crate) struct RootKey(pub(super) Zeroizing<[u8; 32]>);

impl RootKey {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// `KDF_RK(rk, dh_out) = HKDF(rk, dh_out, "cipherpost/ratchet/root/v1", 64)`:
    /// the next root key and a new chain key.
    pub(super) fn advance(&self, dh_out: &[u8; 32]) -> (RootKey, ChainKey) {
        let okm = hkdf::<64>(self.0.as_slice(), dh_out, LABEL_ROOT);
        let mut rk = [0u8; 32];
        rk.copy_from_slice(&okm[..32]);
        let mut ck = [0u8; 32];
        ck.copy_from_slice(&okm[32..]);
        let out = (RootKey::new(rk), ChainKey::new(ck));
        zeroize::Zeroize::zeroize(&mut rk);
        zeroize::Zeroize::zeroize(&mut ck);
        out
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
