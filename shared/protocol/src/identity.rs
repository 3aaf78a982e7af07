//! Identities: user and device ids, the account key, device identities, device certificates,
//! revocations, account-key rotations, the account-key chain a sender verifies, fingerprints
//! and safety numbers (PROTOCOL.md, "Identities").

use std::{fmt, num::NonZeroU32};

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::{
    codec::{Reader, Writer},
    consts::{LABEL_CERT, LABEL_FINGERPRINT, LABEL_REVOKE, LABEL_ROTATE, USER_ID_LEN},
    error::{DecodeError, IdentityError},
    keys::{hex_short, verify_sig, verifying_key, x25519_public_key, DhSecret, SigningSecret},
    primitives::sha256,
};

/// An account name: 3 to 32 bytes of `[a-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(String);

impl UserId {
    /// Validates a user id.
    pub fn new(s: &str) -> Result<Self, IdentityError> {
        let ok_len = (USER_ID_LEN.0..=USER_ID_LEN.1).contains(&s.len());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok_len && ok_chars {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdentityError::InvalidUserId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `u16be(len(user_id)) || user_id`, as every signed message encodes it.
    pub(crate) fn encode(&self, w: &mut Writer) {
        // At most 32 bytes, so the cast cannot truncate.
        w.u16(self.0.len() as u16).put(self.0.as_bytes());
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let len = r.u16()? as usize;
        let bytes = r.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| r.invalid("user id is not UTF-8"))?;
        Self::new(s).map_err(|_| r.invalid("user id is not 3 to 32 bytes of [a-z0-9._-]"))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device's id within its account: a non-zero u32 chosen by the device at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(NonZeroU32);

impl DeviceId {
    /// Refuses zero.
    pub fn new(id: u32) -> Result<Self, IdentityError> {
        NonZeroU32::new(id)
            .map(Self)
            .ok_or(IdentityError::InvalidDeviceId)
    }

    /// A random non-zero id.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        loop {
            if let Some(id) = NonZeroU32::new(rng.next_u32()) {
                return Self(id);
            }
        }
    }

    /// The id as a number.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let id = r.u32()?;
        Self::new(id).map_err(|_| r.invalid("device id is zero"))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The account key `AK`: an Ed25519 key held by every device of the account.
#[derive(Clone, Debug)]
pub struct AccountKey(SigningSecret);

impl AccountKey {
    /// A fresh account key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self(SigningSecret::generate(rng))
    }

    /// Restores a key from its seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        Self(SigningSecret::from_bytes(seed))
    }

    /// The seed, for persistence and for the account-key transfer to a linked device.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.to_bytes()
    }

    /// `AK.pub`.
    pub fn public_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }

    /// Signs a certificate for a device of `user_id`.
    pub fn certify(
        &self,
        user_id: &UserId,
        device_id: DeviceId,
        device: &DeviceIdentityPublic,
        created_ms: u64,
    ) -> DeviceCertificate {
        let mut cert = DeviceCertificate {
            user_id: user_id.clone(),
            device_id,
            identity: *device,
            created_ms,
            signature: Signature::from_bytes(&[0u8; 64]),
        };
        cert.signature = self.0.sign(&cert.message());
        cert
    }

    /// Signs the revocation of a device.
    pub fn revoke(
        &self,
        user_id: &UserId,
        device_id: DeviceId,
        device_signing_key: &VerifyingKey,
        revoked_ms: u64,
    ) -> Revocation {
        let mut rev = Revocation {
            user_id: user_id.clone(),
            device_id,
            signing_key: *device_signing_key,
            revoked_ms,
            signature: Signature::from_bytes(&[0u8; 64]),
        };
        rev.signature = self.0.sign(&rev.message());
        rev
    }

    /// Signs the rotation from this key to `new_key`.
    pub fn rotate_to(&self, user_id: &UserId, new_key: &VerifyingKey, ms: u64) -> Rotation {
        let mut rot = Rotation {
            user_id: user_id.clone(),
            old_key: self.public_key(),
            new_key: *new_key,
            ms,
            signature: Signature::from_bytes(&[0u8; 64]),
        };
        rot.signature = self.0.sign(&rot.message());
        rot
    }
}

/// A device's identity secrets: the Ed25519 signing pair `IKs` and the X25519 pair `IKd`.
#[derive(Clone)]
pub struct DeviceIdentity {
    pub(crate) signing: SigningSecret,
    pub(crate) dh: DhSecret,
}

impl DeviceIdentity {
    /// Fresh identity keys.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let signing = SigningSecret::generate(rng);
        let dh = DhSecret::generate(rng);
        Self { signing, dh }
    }

    /// Restores identity keys from their private bytes (`IKs` seed, `IKd` scalar).
    pub fn from_bytes(signing_seed: &[u8; 32], dh: &[u8; 32]) -> Self {
        Self {
            signing: SigningSecret::from_bytes(signing_seed),
            dh: DhSecret::from_bytes(dh),
        }
    }

    /// The public keys.
    pub fn public(&self) -> DeviceIdentityPublic {
        DeviceIdentityPublic {
            signing: self.signing.verifying_key(),
            dh: self.dh.public_key(),
        }
    }

    /// `SIG(IKs, msg)`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// The versioned persistence form (format 1): seed of `IKs`, scalar of `IKd`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(IDENTITY_STATE_VERSION)
            .put(self.signing.to_bytes().as_ref());
        w.put(self.dh.to_bytes().as_ref());
        w.finish()
    }

    /// Restores from [`DeviceIdentity::to_bytes`]; refuses unknown versions.
    pub fn from_bytes_versioned(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "device identity state");
        r.version(IDENTITY_STATE_VERSION)?;
        let s = r.secret::<32>()?;
        let d = r.secret::<32>()?;
        r.finish()?;
        Ok(Self::from_bytes(&s, &d))
    }
}

const IDENTITY_STATE_VERSION: u8 = 1;

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A device's public identity keys `IKs.pub` (Ed25519) and `IKd.pub` (X25519).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DeviceIdentityPublic {
    /// `IKs.pub`: verifies the device's signatures.
    pub signing: VerifyingKey,
    /// `IKd.pub`: the device's X3DH identity key.
    pub dh: PublicKey,
}

impl DeviceIdentityPublic {
    /// `IKs.pub || IKd.pub` (64 bytes), as in the X3DH associated data.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(self.dh.as_bytes());
        out
    }

    /// Decodes `IKs.pub || IKd.pub`, refusing an invalid or small-order signing key.
    pub fn from_bytes(bytes: &[u8; 64]) -> Result<Self, IdentityError> {
        let mut s = [0u8; 32];
        s.copy_from_slice(&bytes[..32]);
        let mut d = [0u8; 32];
        d.copy_from_slice(&bytes[32..]);
        Ok(Self {
            signing: verifying_key(&s, "device signing key")?,
            dh: x25519_public_key(&d)?,
        })
    }
}

impl fmt::Debug for DeviceIdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceIdentityPublic(signing: {}, dh: {})",
            hex_short(self.signing.as_bytes()),
            hex_short(self.dh.as_bytes())
        )
    }
}

/// A device certificate: `SIG(AK, cert_msg)` over the device's user, id, identity keys and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The account.
    pub user_id: UserId,
    /// The device.
    pub device_id: DeviceId,
    /// The device's public identity keys.
    pub identity: DeviceIdentityPublic,
    /// When it was signed (informational).
    pub created_ms: u64,
    /// `SIG(AK, cert_msg)`.
    pub signature: Signature,
}

impl DeviceCertificate {
    /// `cert_msg`, the signed bytes.
    pub fn message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(LABEL_CERT);
        self.user_id.encode(&mut w);
        w.u32(self.device_id.get())
            .put(&self.identity.to_bytes())
            .u64(self.created_ms);
        w.finish().to_vec()
    }

    /// Verifies the certificate under an account key.
    pub fn verify(&self, account_key: &VerifyingKey) -> Result<(), IdentityError> {
        verify_sig(
            account_key,
            &self.message(),
            &self.signature,
            "device certificate",
        )
    }

    /// The transport form: `cert_msg || signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.message();
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// Decodes [`DeviceCertificate::to_bytes`] (does not verify the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "device certificate");
        expect_label(&mut r, LABEL_CERT)?;
        let user_id = UserId::decode(&mut r)?;
        let device_id = DeviceId::decode(&mut r)?;
        let identity = DeviceIdentityPublic::from_bytes(&r.array::<64>()?)
            .map_err(|_| r.invalid("the device identity keys are not valid public keys"))?;
        let created_ms = r.u64()?;
        let signature = Signature::from_bytes(&r.array::<64>()?);
        r.finish()?;
        Ok(Self {
            user_id,
            device_id,
            identity,
            created_ms,
            signature,
        })
    }
}

/// A revocation: `SIG(AK, revoke_msg)` naming a device and its signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The account.
    pub user_id: UserId,
    /// The revoked device.
    pub device_id: DeviceId,
    /// The revoked device's `IKs.pub`.
    pub signing_key: VerifyingKey,
    /// When it was revoked (informational).
    pub revoked_ms: u64,
    /// `SIG(AK, revoke_msg)`.
    pub signature: Signature,
}

impl Revocation {
    /// `revoke_msg`, the signed bytes.
    pub fn message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(LABEL_REVOKE);
        self.user_id.encode(&mut w);
        w.u32(self.device_id.get())
            .put(self.signing_key.as_bytes())
            .u64(self.revoked_ms);
        w.finish().to_vec()
    }

    /// Verifies the revocation under an account key.
    pub fn verify(&self, account_key: &VerifyingKey) -> Result<(), IdentityError> {
        verify_sig(account_key, &self.message(), &self.signature, "revocation")
    }

    /// The transport form: `revoke_msg || signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.message();
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// Decodes [`Revocation::to_bytes`] (does not verify the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "revocation");
        expect_label(&mut r, LABEL_REVOKE)?;
        let user_id = UserId::decode(&mut r)?;
        let device_id = DeviceId::decode(&mut r)?;
        let signing_key = decode_vk(&mut r)?;
        let revoked_ms = r.u64()?;
        let signature = Signature::from_bytes(&r.array::<64>()?);
        r.finish()?;
        Ok(Self {
            user_id,
            device_id,
            signing_key,
            revoked_ms,
            signature,
        })
    }
}

/// An account-key rotation: `SIG(AK, rotate_msg)` from the old key to the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// The account.
    pub user_id: UserId,
    /// `AK.pub`, which signs the rotation.
    pub old_key: VerifyingKey,
    /// `AK'.pub`.
    pub new_key: VerifyingKey,
    /// When it was made (informational).
    pub ms: u64,
    /// `SIG(AK, rotate_msg)`.
    pub signature: Signature,
}

impl Rotation {
    /// `rotate_msg`, the signed bytes.
    pub fn message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.put(LABEL_ROTATE);
        self.user_id.encode(&mut w);
        w.put(self.old_key.as_bytes())
            .put(self.new_key.as_bytes())
            .u64(self.ms);
        w.finish().to_vec()
    }

    /// Verifies the rotation under its old key.
    pub fn verify(&self) -> Result<(), IdentityError> {
        verify_sig(
            &self.old_key,
            &self.message(),
            &self.signature,
            "account key rotation",
        )
    }

    /// The transport form: `rotate_msg || signature`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.message();
        out.extend_from_slice(&self.signature.to_bytes());
        out
    }

    /// Decodes [`Rotation::to_bytes`] (does not verify the signature).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "account key rotation");
        expect_label(&mut r, LABEL_ROTATE)?;
        let user_id = UserId::decode(&mut r)?;
        let old_key = decode_vk(&mut r)?;
        let new_key = decode_vk(&mut r)?;
        let ms = r.u64()?;
        let signature = Signature::from_bytes(&r.array::<64>()?);
        r.finish()?;
        Ok(Self {
            user_id,
            old_key,
            new_key,
            ms,
            signature,
        })
    }
}

fn expect_label(r: &mut Reader<'_>, label: &'static [u8]) -> Result<(), DecodeError> {
    if r.take(label.len())? != label {
        return Err(r.invalid("wrong domain label"));
    }
    Ok(())
}

fn decode_vk(r: &mut Reader<'_>) -> Result<VerifyingKey, DecodeError> {
    let bytes = r.array::<32>()?;
    verifying_key(&bytes, "account key").map_err(|_| r.invalid("not a valid Ed25519 public key"))
}

/// What a sender has verified of a contact's account: the chain of account keys reached from
/// the pinned key by signed rotations, and the revoked devices.
#[derive(Clone, Debug)]
pub struct AccountChain {
    user_id: UserId,
    keys: Vec<VerifyingKey>,
    revoked: Vec<(DeviceId, VerifyingKey)>,
}

impl AccountChain {
    /// Follows `rotations` from `pinned` and checks that the server's `current` key is the end of
    /// the chain. Revocations verifying under any key of the chain are remembered; items that do
    /// not verify are ignored. Two rotations from the same key to different keys refuse the
    /// account; a `current` key not reached by the chain is a key change the user must accept.
    pub fn verify(
        user_id: &UserId,
        pinned: &VerifyingKey,
        current: &VerifyingKey,
        rotations: &[Rotation],
        revocations: &[Revocation],
    ) -> Result<Self, IdentityError> {
        let mut keys = vec![*pinned];
        while let Some(latest) = keys.last().copied() {
            let mut next: Option<VerifyingKey> = None;
            for rot in rotations {
                if rot.user_id != *user_id || rot.old_key != latest || rot.verify().is_err() {
                    continue;
                }
                match next {
                    Some(k) if k != rot.new_key => {
                        return Err(IdentityError::ConflictingRotations(user_id.to_string()))
                    }
                    _ => next = Some(rot.new_key),
                }
            }
            match next {
                // A rotation back to a key already in the chain would loop; stop there.
                Some(k) if !keys.contains(&k) => keys.push(k),
                _ => break,
            }
        }
        if keys.last() != Some(current) {
            return Err(IdentityError::AccountKeyChanged(user_id.to_string()));
        }
        let revoked = revocations
            .iter()
            .filter(|rev| rev.user_id == *user_id && keys.iter().any(|k| rev.verify(k).is_ok()))
            .map(|rev| (rev.device_id, rev.signing_key))
            .collect();
        Ok(Self {
            user_id: user_id.clone(),
            keys,
            revoked,
        })
    }

    /// The account key to pin now (the end of the chain).
    pub fn latest(&self) -> &VerifyingKey {
        // The chain always holds at least the pinned key.
        &self.keys[self.keys.len() - 1]
    }

    /// True when the chain moved past the pinned key: show the safety-number change.
    pub fn rotated(&self) -> bool {
        self.keys.len() > 1
    }

    /// True when `(device_id, signing_key)` was revoked under a key of the chain.
    pub fn is_revoked(&self, device_id: DeviceId, signing_key: &VerifyingKey) -> bool {
        self.revoked
            .iter()
            .any(|(d, k)| *d == device_id && k == signing_key)
    }

    /// The revoked `(device_id, IKs.pub)` pairs.
    pub fn revoked(&self) -> &[(DeviceId, VerifyingKey)] {
        &self.revoked
    }

    /// Checks that a listed device may be encrypted to: its certificate names this account,
    /// verifies under the latest key, and the device was not revoked.
    pub fn verify_device(&self, cert: &DeviceCertificate) -> Result<(), IdentityError> {
        if cert.user_id != self.user_id {
            return Err(IdentityError::BadSignature(
                "device certificate (wrong account)",
            ));
        }
        if self.is_revoked(cert.device_id, &cert.identity.signing) {
            return Err(IdentityError::BadSignature(
                "device certificate (device revoked)",
            ));
        }
        cert.verify(self.latest())
    }
}

/// An account fingerprint: `H("cipherpost/fingerprint/v1" || u16be(len) || user_id || AK.pub)`.
pub fn fingerprint(user_id: &UserId, account_key: &VerifyingKey) -> [u8; 32] {
    let mut w = Writer::new();
    w.put(LABEL_FINGERPRINT);
    user_id.encode(&mut w);
    w.put(account_key.as_bytes());
    sha256(&[&w.finish()])
}

/// The 30 decimal digits of a fingerprint: six 5-byte groups, each `u40be(g) mod 100000`.
pub fn fingerprint_digits(user_id: &UserId, account_key: &VerifyingKey) -> String {
    let f = fingerprint(user_id, account_key);
    f[..30]
        .chunks(5)
        .map(|g| {
            let v = g.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// The safety number of two accounts: 60 digits, shown as 12 groups of 5.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// Both fingerprints' digits, the user id that sorts lower byte-wise first.
    pub fn new(a: (&UserId, &VerifyingKey), b: (&UserId, &VerifyingKey)) -> Self {
        let (first, second) = if a.0.as_str().as_bytes() <= b.0.as_str().as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut digits = fingerprint_digits(first.0, first.1);
        digits.push_str(&fingerprint_digits(second.0, second.1));
        Self(digits)
    }

    /// The 60 digits without separators.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    /// 12 groups of 5 digits separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, chunk) in self.0.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}
