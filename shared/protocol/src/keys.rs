//! Secret key newtypes. Each zeroizes on drop (the dalek types do so with their `zeroize`
//! feature) and has a hand-written `Debug` that shows only the public half.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::IdentityError;

/// Decodes an Ed25519 public key, refusing invalid encodings and small-order ("weak") keys.
pub fn verifying_key(bytes: &[u8; 32], what: &'static str) -> Result<VerifyingKey, IdentityError> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidPublicKey(what))?;
    if key.is_weak() {
        return Err(IdentityError::InvalidPublicKey(what));
    }
    Ok(key)
}

/// Decodes an X25519 public key received from elsewhere, refusing non-canonical encodings
/// (top bit set, or `u >= 2^255 - 19`). X25519 ignores the top bit, so without this check one
/// key would have two encodings, and a PreKey message with the other encoding of `EK_A` would
/// look like a new session.
pub fn x25519_public_key(bytes: &[u8; 32]) -> Result<PublicKey, IdentityError> {
    let top_bit = bytes[31] & 0x80 != 0;
    let at_least_p =
        bytes[31] == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed;
    if top_bit || at_least_p {
        return Err(IdentityError::InvalidPublicKey(
            "X25519 key (non-canonical encoding)",
        ));
    }
    Ok(PublicKey::from(*bytes))
}

/// Verifies an Ed25519 signature as PROTOCOL.md's `VERIFY` (dalek's `verify_strict`).
pub(crate) fn verify_sig(
    key: &VerifyingKey,
    msg: &[u8],
    sig: &Signature,
    what: &'static str,
) -> Result<(), IdentityError> {
    key.verify_strict(msg, sig)
        .map_err(|_| IdentityError::BadSignature(what))
}

/// Fills 32 bytes from a cryptographic RNG into a zeroizing buffer.
pub(crate) fn random_32(rng: &mut (impl RngCore + CryptoRng)) -> Zeroizing<[u8; 32]> {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(b.as_mut());
    b
}

/// An X25519 private key (identity DH key, prekey, ephemeral or ratchet key), with its public
/// key computed once (a base-point multiplication costs as much as a quarter of a DH).
pub struct DhSecret {
    secret: StaticSecret,
    public: PublicKey,
}

impl DhSecret {
    /// A fresh key from 32 random bytes.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self::from_bytes(&random_32(rng))
    }

    /// The key whose private scalar bytes are `bytes` (clamped by X25519).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let secret = StaticSecret::from(*bytes);
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }

    /// The private bytes, for persistence only.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn inner(&self) -> &StaticSecret {
        &self.secret
    }
}

impl Clone for DhSecret {
    fn clone(&self) -> Self {
        Self {
            secret: self.secret.clone(),
            public: self.public,
        }
    }
}

impl fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DhSecret(public: {})",
            hex_short(self.public_key().as_bytes())
        )
    }
}

/// An Ed25519 private key (account key, device signing key, sender signing key).
pub struct SigningSecret(SigningKey);

impl SigningSecret {
    /// A fresh key from 32 random bytes.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self::from_bytes(&random_32(rng))
    }

    /// The key whose RFC 8032 seed is `seed`.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The seed, for persistence only.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// `SIG(self, msg)`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.0.sign(msg)
    }
}

impl Clone for SigningSecret {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SigningSecret(public: {})",
            hex_short(self.verifying_key().as_bytes())
        )
    }
}

/// The first 8 bytes of a public key in hex, enough to tell keys apart in logs.
pub(crate) fn hex_short(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
