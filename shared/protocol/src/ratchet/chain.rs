//! Chain keys and `KDF_CK`.

use zeroize::Zeroizing;

use super::message_key::MessageKey;
use crate::primitives::hmac_sha256;

/// A sending or receiving chain key.
#[derive(Clone)]
pub(crate) struct ChainKey(Zeroizing<[u8; 32]>);

impl ChainKey {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// `KDF_CK(ck) = (ck' = HMAC(ck, 0x02), mk = HMAC(ck, 0x01))`.
    pub(super) fn step(&self) -> (ChainKey, MessageKey) {
        let mk = hmac_sha256(self.0.as_slice(), &[0x01]);
        let next = hmac_sha256(self.0.as_slice(), &[0x02]);
        (ChainKey(next), MessageKey(mk))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}
