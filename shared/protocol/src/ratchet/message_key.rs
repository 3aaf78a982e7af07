//! Message keys: one AES-256-GCM key and nonce per message, used once.

use zeroize::Zeroizing;

use crate::{
    consts::LABEL_RATCHET_MSG,
    primitives::{kn, open, seal, OpenFailed},
};

/// A message key `mk`.
pub(crate) struct MessageKey(pub(super) Zeroizing<[u8; 32]>);

impl MessageKey {
    pub(crate) fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `SEAL(key, nonce, plaintext, ad)` with `(key, nonce) = KN(mk, "cipherpost/ratchet/msg/v1")`.
    pub(super) fn seal(&self, plaintext: &[u8], ad: &[u8]) -> Vec<u8> {
        let k = kn(self.0.as_slice(), LABEL_RATCHET_MSG);
        seal(&k.key, &k.nonce, plaintext, ad)
    }

    /// The matching `OPEN`.
    pub(super) fn open(
        &self,
        ciphertext: &[u8],
        ad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
        let k = kn(self.0.as_slice(), LABEL_RATCHET_MSG);
        open(&k.key, &k.nonce, ciphertext, ad)
    }
}
