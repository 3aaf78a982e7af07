//! Prekeys (PROTOCOL.md, "Prekeys"): the signed prekey, one-time prekeys, the bundle a sender
//! fetches, and the device-local store of prekey secrets.

use std::{collections::BTreeMap, fmt};

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::{
    codec::{Reader, Writer},
    consts::{LABEL_SPK, SIGNED_PREKEY_KEEP_MS},
    error::{DecodeError, IdentityError},
    identity::{DeviceCertificate, DeviceIdentity},
    keys::{hex_short, verify_sig, DhSecret},
};

/// The signed bytes of a signed prekey: `"cipherpost/spk/v1" || u32be(spk_id) || SPK.pub`.
fn spk_message(id: u32, key: &PublicKey) -> Vec<u8> {
    let mut w = Writer::new();
    w.put(LABEL_SPK).u32(id).put(key.as_bytes());
    w.finish().to_vec()
}

/// The public half of a signed prekey, as published in a bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignedPreKeyPublic {
    /// `spk_id`.
    pub id: u32,
    /// `SPK.pub`.
    pub key: PublicKey,
    /// `SIG(IKs, "cipherpost/spk/v1" || u32be(spk_id) || SPK.pub)`.
    pub signature: Signature,
}

impl SignedPreKeyPublic {
    /// Verifies the prekey signature under the device's `IKs.pub`.
    pub fn verify(&self, device_signing_key: &VerifyingKey) -> Result<(), IdentityError> {
        verify_sig(
            device_signing_key,
            &spk_message(self.id, &self.key),
            &self.signature,
            "signed prekey",
        )
    }
}

impl fmt::Debug for SignedPreKeyPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SignedPreKeyPublic(id: {}, key: {})",
            self.id,
            hex_short(self.key.as_bytes())
        )
    }
}

/// A signed prekey with its private key.
#[derive(Clone)]
pub struct SignedPreKey {
    public: SignedPreKeyPublic,
    secret: DhSecret,
    created_ms: u64,
}

impl SignedPreKey {
    /// A fresh signed prekey, signed by the device identity.
    pub fn generate(
        rng: &mut (impl RngCore + CryptoRng),
        identity: &DeviceIdentity,
        id: u32,
        created_ms: u64,
    ) -> Self {
        Self::from_secret(DhSecret::generate(rng), identity, id, created_ms)
    }

    /// A signed prekey from a given private key (test vectors, restores).
    pub fn from_secret(
        secret: DhSecret,
        identity: &DeviceIdentity,
        id: u32,
        created_ms: u64,
    ) -> Self {
        let key = secret.public_key();
        let signature = identity.sign(&spk_message(id, &key));
        Self {
            public: SignedPreKeyPublic { id, key, signature },
            secret,
            created_ms,
        }
    }

    /// The public half to upload.
    pub fn public(&self) -> SignedPreKeyPublic {
        self.public
    }

    /// `spk_id`.
    pub fn id(&self) -> u32 {
        self.public.id
    }

    /// When it was created.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    pub(crate) fn secret(&self) -> &DhSecret {
        &self.secret
    }
}

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The public half of a one-time prekey.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OneTimePreKeyPublic {
    /// `opk_id`, non-zero and strictly increasing per device.
    pub id: u32,
    /// `OPK.pub`.
    pub key: PublicKey,
}

impl fmt::Debug for OneTimePreKeyPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OneTimePreKeyPublic(id: {}, key: {})",
            self.id,
            hex_short(self.key.as_bytes())
        )
    }
}

/// What a sender fetches for one device of a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The device certificate under the account key.
    pub certificate: DeviceCertificate,
    /// The device's current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// One one-time prekey, when the server had one left.
    pub one_time_prekey: Option<OneTimePreKeyPublic>,
}

struct StoredSignedPreKey {
    prekey: SignedPreKey,
    replaced_ms: Option<u64>,
}

/// The device-local store of prekey secrets: signed prekeys (the current one and those replaced
/// less than 37 days ago), unused one-time prekeys, and the `(spk_id, EK_A)` pairs that already
/// built a session (a device never builds a second session from one).
#[derive(Default)]
pub struct PreKeyStore {
    signed: Vec<StoredSignedPreKey>,
    one_time: BTreeMap<u32, DhSecret>,
    next_one_time_id: u32,
    used_bases: Vec<(u32, [u8; 32])>,
}

const PREKEY_STORE_VERSION: u8 = 1;
/// Upper bounds on persisted counts, so a corrupt file cannot ask for huge allocations.
const MAX_STORED: usize = 1 << 20;

impl PreKeyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a new signed prekey; the previous current one is kept for 37 days from `now_ms`.
    pub fn add_signed_prekey(&mut self, prekey: SignedPreKey, now_ms: u64) {
        for s in &mut self.signed {
            s.replaced_ms.get_or_insert(now_ms);
        }
        self.signed.push(StoredSignedPreKey {
            prekey,
            replaced_ms: None,
        });
    }

    /// The signed prekey to publish.
    pub fn current_signed_prekey(&self) -> Option<&SignedPreKey> {
        self.signed
            .iter()
            .rev()
            .find(|s| s.replaced_ms.is_none())
            .map(|s| &s.prekey)
    }

    pub(crate) fn signed_prekey(&self, id: u32) -> Option<&SignedPreKey> {
        self.signed
            .iter()
            .find(|s| s.prekey.id() == id)
            .map(|s| &s.prekey)
    }

    /// Makes `count` one-time prekeys with ids continuing after the last one made.
    pub fn generate_one_time_prekeys(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        count: u32,
    ) -> Vec<OneTimePreKeyPublic> {
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let Some(id) = self.next_one_time_id.checked_add(1) else {
                break;
            };
            self.next_one_time_id = id;
            let secret = DhSecret::generate(rng);
            out.push(OneTimePreKeyPublic {
                id,
                key: secret.public_key(),
            });
            self.one_time.insert(id, secret);
        }
        out
    }

    /// Number of one-time prekey secrets held.
    pub fn one_time_prekey_count(&self) -> usize {
        self.one_time.len()
    }

    pub(crate) fn one_time_prekey(&self, id: u32) -> Option<&DhSecret> {
        self.one_time.get(&id)
    }

    pub(crate) fn was_used(&self, spk_id: u32, base_key: &[u8; 32]) -> bool {
        self.used_bases
            .iter()
            .any(|(s, k)| *s == spk_id && k == base_key)
    }

    /// Records that a PreKey message built a session: remembers `(spk_id, EK_A)` and deletes the
    /// one-time prekey.
    pub(crate) fn consume(&mut self, spk_id: u32, base_key: [u8; 32], one_time_id: u32) {
        self.used_bases.push((spk_id, base_key));
        self.one_time.remove(&one_time_id);
    }

    /// Deletes signed prekeys replaced more than 37 days before `now_ms`, with the
    /// `(spk_id, EK_A)` pairs remembered for them.
    pub fn prune(&mut self, now_ms: u64) {
        let expired = |s: &StoredSignedPreKey| {
            s.replaced_ms
                .is_some_and(|r| now_ms.saturating_sub(r) > SIGNED_PREKEY_KEEP_MS)
        };
        let gone: Vec<u32> = self
            .signed
            .iter()
            .filter(|s| expired(s))
            .map(|s| s.prekey.id())
            .collect();
        self.signed.retain(|s| !expired(s));
        self.used_bases.retain(|(id, _)| !gone.contains(id));
    }

    /// The versioned persistence form (format 1).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(PREKEY_STORE_VERSION).u32(self.signed.len() as u32);
        for s in &self.signed {
            let p = &s.prekey;
            w.u32(p.id())
                .put(p.secret.to_bytes().as_ref())
                .put(&p.public.signature.to_bytes());
            w.u64(p.created_ms)
                .bool(s.replaced_ms.is_some())
                .u64(s.replaced_ms.unwrap_or(0));
        }
        w.u32(self.next_one_time_id).u32(self.one_time.len() as u32);
        for (id, secret) in &self.one_time {
            w.u32(*id).put(secret.to_bytes().as_ref());
        }
        w.u32(self.used_bases.len() as u32);
        for (id, key) in &self.used_bases {
            w.u32(*id).put(key);
        }
        w.finish()
    }

    /// Restores from [`PreKeyStore::to_bytes`]; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "prekey store");
        r.version(PREKEY_STORE_VERSION)?;
        let mut store = Self::new();
        for _ in 0..r.count(MAX_STORED)? {
            let id = r.u32()?;
            let secret = DhSecret::from_bytes(&*r.secret::<32>()?);
            let signature = Signature::from_bytes(&r.array::<64>()?);
            let created_ms = r.u64()?;
            let replaced = r.bool()?;
            let replaced_ms = r.u64()?;
            let public = SignedPreKeyPublic {
                id,
                key: secret.public_key(),
                signature,
            };
            store.signed.push(StoredSignedPreKey {
                prekey: SignedPreKey {
                    public,
                    secret,
                    created_ms,
                },
                replaced_ms: replaced.then_some(replaced_ms),
            });
        }
        store.next_one_time_id = r.u32()?;
        for _ in 0..r.count(MAX_STORED)? {
            let id = r.u32()?;
            store
                .one_time
                .insert(id, DhSecret::from_bytes(&*r.secret::<32>()?));
        }
        for _ in 0..r.count(MAX_STORED)? {
            store.used_bases.push((r.u32()?, r.array::<32>()?));
        }
        r.finish()?;
        Ok(store)
    }
}

impl fmt::Debug for PreKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreKeyStore")
            .field(
                "signed_prekeys",
                &self
                    .signed
                    .iter()
                    .map(|s| s.prekey.id())
                    .collect::<Vec<_>>(),
            )
            .field("one_time_prekeys", &self.one_time.len())
            .field("used_bases", &self.used_bases.len())
            .finish()
    }
}
