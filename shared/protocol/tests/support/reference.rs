//! An independent, minimal re-statement of PROTOCOL.md's formulas straight on the RustCrypto
//! and dalek crates, used to check the library's outputs in the test vectors. Written from the
//! spec, not from the library, so a shared misreading would have to be made twice.
#![allow(dead_code, unreachable_pub, missing_docs)]

use aes_gcm::{aead::Aead, aead::Payload, Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

pub fn h(parts: &[&[u8]]) -> [u8; 32] {
    let mut d = Sha256::new();
    for p in parts {
        d.update(p);
    }
    d.finalize().into()
}

pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(msg);
    m.finalize().into_bytes().into()
}

pub fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .unwrap();
    out
}

/// `KN(ikm, info)`.
pub fn kn(ikm: &[u8], info: &[u8]) -> ([u8; 32], [u8; 12]) {
    let okm = hkdf(&[0u8; 32], ikm, info, 44);
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

pub fn seal(key: &[u8; 32], nonce: &[u8; 12], pt: &[u8], ad: &[u8]) -> Vec<u8> {
    Aes256Gcm::new(key.into())
        .encrypt(nonce.into(), Payload { msg: pt, aad: ad })
        .unwrap()
}

pub fn x25519(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    StaticSecret::from(*secret)
        .diffie_hellman(&PublicKey::from(*public))
        .to_bytes()
}

pub fn x25519_pub(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// `KDF_RK`.
pub fn kdf_rk(rk: &[u8], dh_out: &[u8]) -> ([u8; 32], [u8; 32]) {
    let okm = hkdf(rk, dh_out, b"cipherpost/ratchet/root/v1", 64);
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// One message sealed by the reference ratchet, with every intermediate value.
pub struct RefMessage {
    pub chain_key: [u8; 32],
    pub message_key: [u8; 32],
    pub key: [u8; 32],
    pub nonce: [u8; 12],
    pub header: [u8; 40],
    pub wire: Vec<u8>,
}

/// The sending half of a Double Ratchet party: what it takes to predict every ciphertext.
pub struct RefRatchet {
    pub ad: [u8; 128],
    pub rk: [u8; 32],
    pub dhs: [u8; 32],
    pub dhr: Option<[u8; 32]>,
    pub cks: Option<[u8; 32]>,
    pub ns: u32,
    pub pn: u32,
    /// Private keys of the ratchet steps to come, in order.
    pub next_keys: Vec<[u8; 32]>,
    /// `(RK, CKr, CKs)` after each DH ratchet step, for the vector file.
    pub steps: Vec<([u8; 32], [u8; 32], [u8; 32])>,
    /// Ratchet keys received so far.
    pub seen: Vec<[u8; 32]>,
}

impl RefRatchet {
    pub fn initiator(sk: [u8; 32], ad: [u8; 128], dhs: [u8; 32], spk: [u8; 32]) -> Self {
        let (rk, cks) = kdf_rk(&sk, &x25519(&dhs, &spk));
        Self {
            ad,
            rk,
            dhs,
            dhr: Some(spk),
            cks: Some(cks),
            ns: 0,
            pn: 0,
            next_keys: vec![],
            steps: vec![],
            seen: vec![],
        }
    }

    pub fn responder(sk: [u8; 32], ad: [u8; 128], spk_secret: [u8; 32]) -> Self {
        Self {
            ad,
            rk: sk,
            dhs: spk_secret,
            dhr: None,
            cks: None,
            ns: 0,
            pn: 0,
            next_keys: vec![],
            steps: vec![],
            seen: vec![],
        }
    }

    /// A message with ratchet key `dh` was received.
    pub fn received(&mut self, dh: [u8; 32]) {
        // A key already seen is the current chain or an older one (a late message).
        if self.dhr == Some(dh) || self.seen.contains(&dh) {
            return;
        }
        self.seen.push(dh);
        self.pn = self.ns;
        self.ns = 0;
        self.dhr = Some(dh);
        let (rk, ckr) = kdf_rk(&self.rk, &x25519(&self.dhs, &dh));
        self.dhs = self.next_keys.remove(0);
        let (rk, cks) = kdf_rk(&rk, &x25519(&self.dhs, &dh));
        self.rk = rk;
        self.cks = Some(cks);
        self.steps.push((rk, ckr, cks));
    }

    pub fn send(&mut self, pt: &[u8]) -> RefMessage {
        let ck = self.cks.unwrap();
        let mk = hmac(&ck, &[0x01]);
        self.cks = Some(hmac(&ck, &[0x02]));
        let mut header = [0u8; 40];
        header[..32].copy_from_slice(&x25519_pub(&self.dhs));
        header[32..36].copy_from_slice(&self.pn.to_be_bytes());
        header[36..].copy_from_slice(&self.ns.to_be_bytes());
        self.ns += 1;
        let (key, nonce) = kn(&mk, b"cipherpost/ratchet/msg/v1");
        let mut ad = self.ad.to_vec();
        ad.extend_from_slice(&header);
        let mut wire = vec![0x01];
        wire.extend_from_slice(&header);
        wire.extend_from_slice(&seal(&key, &nonce, pt, &ad));
        RefMessage {
            chain_key: ck,
            message_key: mk,
            key,
            nonce,
            header,
            wire,
        }
    }
}
