//! Thin wrappers over the RustCrypto and dalek primitives, named as in PROTOCOL.md.
//! Nothing here is home-made: each function only fixes parameters and checks results.

use aes_gcm::{aead::Aead, aead::Payload, Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// `H(parts[0] || parts[1] || ...)`: SHA-256.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `HMAC(key, data)`: HMAC-SHA256.
pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Zeroizing<[u8; 32]> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA256 takes keys of any length; this branch cannot run. Use an all-zero key
    // rather than panicking so that library code stays panic-free.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// `HKDF(salt, ikm, info, L)`: HKDF-SHA256 with an output of `L` bytes (`L <= 8160`).
pub(crate) fn hkdf<const L: usize>(salt: &[u8], ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; L]> {
    let mut okm = Zeroizing::new([0u8; L]);
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    // Only fails when L > 255 * 32; every caller asks for at most 64 bytes.
    let _ = hk.expand(info, okm.as_mut());
    okm
}

/// A message key and nonce for AES-256-GCM, derived as `KN(ikm, info)`.
pub(crate) struct KeyNonce {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) nonce: [u8; 12],
}

/// `KN(ikm, info)`: `okm = HKDF(0^32, ikm, info, 44)`, key = okm[0..32], nonce = okm[32..44].
pub(crate) fn kn(ikm: &[u8], info: &[u8]) -> KeyNonce {
    let okm = hkdf::<44>(&[0u8; 32], ikm, info);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&okm[..32]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&okm[32..]);
    KeyNonce { key, nonce }
}

/// `SEAL(key, nonce, pt, ad)`: AES-256-GCM with the 16-byte tag appended.
pub(crate) fn seal(key: &[u8; 32], nonce: &[u8; 12], pt: &[u8], ad: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    // Encryption fails only for plaintexts beyond GCM's 64 GiB limit, far above every caller's
    // bound (content is at most 96 KiB, a segment 64 KiB).
    cipher
        .encrypt(nonce.into(), Payload { msg: pt, aad: ad })
        .unwrap_or_default()
}

/// The AEAD tag did not verify: the ciphertext, key, nonce or associated data is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenFailed;

/// `OPEN(key, nonce, ct, ad)`: AES-256-GCM; the plaintext is zeroized when dropped.
pub(crate) fn open(
    key: &[u8; 32],
    nonce: &[u8; 12],
    ct: &[u8],
    ad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    let cipher = Aes256Gcm::new(key.into());
    cipher
        .decrypt(nonce.into(), Payload { msg: ct, aad: ad })
        .map(Zeroizing::new)
        .map_err(|_| OpenFailed)
}

/// The X25519 result was all zeros: the peer's public key has small order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NonContributory;

/// `DH(a, B)`: X25519, refusing an all-zero (non-contributory) result.
pub(crate) fn dh(
    secret: &StaticSecret,
    public: &PublicKey,
) -> Result<Zeroizing<[u8; 32]>, NonContributory> {
    let shared = secret.diffie_hellman(public);
    if !shared.was_contributory() {
        return Err(NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_dh_is_refused() {
        let secret = StaticSecret::from([7u8; 32]);
        // The identity point (u = 0) and u = 1 have small order: every result is zero.
        assert_eq!(
            dh(&secret, &PublicKey::from([0u8; 32])),
            Err(NonContributory)
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(dh(&secret, &PublicKey::from(one)), Err(NonContributory));
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=12).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let okm = hkdf::<42>(&salt, &ikm, &info);
        assert_eq!(
            hex::encode(okm.as_ref()),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn seal_then_open_and_tamper() {
        let key = [1u8; 32];
        let nonce = [2u8; 12];
        let mut ct = seal(&key, &nonce, b"hello", b"ad");
        assert_eq!(
            open(&key, &nonce, &ct, b"ad").map(|p| p.to_vec()),
            Ok(b"hello".to_vec())
        );
        assert_eq!(open(&key, &nonce, &ct, b"ax"), Err(OpenFailed));
        ct[0] ^= 1;
        assert_eq!(open(&key, &nonce, &ct, b"ad"), Err(OpenFailed));
    }
}
