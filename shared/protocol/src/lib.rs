//! # cipherpost-protocol
//!
//! The byte-exact cipherpost protocol v1 (see `PROTOCOL.md`): identities and device
//! certificates, X3DH, the Double Ratchet, message bodies, sender keys, streaming attachment
//! encryption and request signing. Pure Rust on the RustCrypto and dalek crates: no unsafe, no
//! async, no I/O beyond `std::io::Read`/`Write`.
//!
//! Modules are private; the public API is re-exported here.

/// A 16-byte random identifier newtype with `generate`, `as_bytes` and a hex `Debug`.
macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random id (16 bytes from `rng`).
            pub fn generate(rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng)) -> Self {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                Self(id)
            }

            /// The 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), crate::body::hex(&self.0))
            }
        }
    };
}
pub(crate) use random_id;

mod attachment;
mod auth;
mod body;
mod codec;
pub mod consts;
mod error;
mod identity;
mod keys;
mod message;
mod prekey;
mod primitives;
mod ratchet;
mod sender_key;
mod session;
mod x3dh;

pub use ed25519_dalek::{Signature, VerifyingKey};
pub use x25519_dalek::PublicKey;

pub use crate::{
    error::{
        AttachmentError, AuthError, BodyError, DecodeError, IdentityError, SenderKeyError,
        SessionError,
    },
    identity::{
        fingerprint, fingerprint_digits, AccountChain, AccountKey, DeviceCertificate, DeviceId,
        DeviceIdentity, DeviceIdentityPublic, Revocation, Rotation, SafetyNumber, UserId,
    },
    keys::{verifying_key, x25519_public_key, DhSecret, SigningSecret},
    message::{pairwise_message_kind, PairwiseMessageKind, PREKEY_TYPE, WHISPER_TYPE},
    prekey::{OneTimePreKeyPublic, PreKeyBundle, PreKeyStore, SignedPreKey, SignedPreKeyPublic},
    session::{Decrypted, PeerSessions},
};

// Filled module by module; the allow goes once every module exports items.
pub use crate::sender_key::SenderKeyMessageHeader;
#[allow(unreachable_pub, unused_imports)]
pub use crate::{attachment::*, auth::*, body::*, sender_key::*};
