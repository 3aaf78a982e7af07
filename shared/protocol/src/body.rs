//! Message bodies (PROTOCOL.md, "Message body"): the content is padded, encrypted once under a
//! fresh key `K`, and `K || H(body)` is sealed per destination device by its pairwise session.
//!
//! ```text
//! content_padded = content || 0x80 || 0x00*, of length 160 * ceil((len(content) + 1) / 160)
//! body           = n || SEAL(K, n, content_padded, "cipherpost/body/v1" || message_id)
//! envelope_d     = session_encrypt(sender -> d, K || H(body))          (64-byte plaintext)
//! ```
//!
//! Never reuse a key with a nonce: [`encrypt_body`] draws a fresh `K` and `n` for every
//! message. After a 409 the client keeps `K` ([`BodyKey::to_bytes`]), `message_id` and the body
//! bytes and only adds or removes envelopes; it never encrypts the same message again.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::{
    consts::{LABEL_BODY, MAX_CONTENT_LEN, PAD_BLOCK, TAG_LEN},
    error::BodyError,
    primitives::{ct_eq, open, seal, sha256},
};

/// Length of the body nonce `n`.
const BODY_NONCE_LEN: usize = 12;
/// Length of the key envelope plaintext `K || H(body)`.
const ENVELOPE_PLAINTEXT_LEN: usize = 64;

crate::random_id! {
    /// A message's server `message_id`: 16 random bytes, fresh per message. It travels beside
    /// the body and is authenticated by the body's associated data (and by a sender-key header).
    MessageId
}

/// `content || 0x80 || 0x00*`, padded to a multiple of 160 bytes (at least one padding byte).
///
/// Refuses content longer than [`MAX_CONTENT_LEN`] (98,304 bytes).
pub fn pad(content: &[u8]) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if content.len() > MAX_CONTENT_LEN {
        return Err(BodyError::TooLarge {
            len: content.len(),
            max: MAX_CONTENT_LEN,
        });
    }
    let padded_len = (content.len() / PAD_BLOCK + 1) * PAD_BLOCK;
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len));
    out.extend_from_slice(content);
    out.push(0x80);
    out.resize(padded_len, 0x00);
    Ok(out)
}

/// Strips the padding: trailing `0x00` bytes, then exactly one `0x80`.
///
/// Refuses a padded length that is not a positive multiple of 160, a missing `0x80`, padding
/// longer than 160 bytes, and content longer than [`MAX_CONTENT_LEN`].
pub fn unpad(padded: &[u8]) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if padded.is_empty() || padded.len() % PAD_BLOCK != 0 {
        return Err(BodyError::BadPaddedLength(padded.len()));
    }
    // The padding is at most one block, so the 0x80 must lie in the last 160 bytes.
    let last_block = padded.len() - PAD_BLOCK;
    let marker = padded[last_block..]
        .iter()
        .rposition(|&b| b != 0x00)
        .map(|pos| last_block + pos)
        .ok_or(BodyError::BadPadding)?;
    if padded[marker] != 0x80 {
        return Err(BodyError::BadPadding);
    }
    if marker > MAX_CONTENT_LEN {
        return Err(BodyError::TooLarge {
            len: marker,
            max: MAX_CONTENT_LEN,
        });
    }
    Ok(Zeroizing::new(padded[..marker].to_vec()))
}

/// An encrypted body: `n || SEAL(K, n, content_padded, "cipherpost/body/v1" || message_id)`.
/// It holds no secret and is uploaded once, whatever the number of destination devices.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBody {
    /// The body bytes as uploaded.
    pub bytes: Vec<u8>,
}

impl SealedBody {
    /// `H(body)`, the digest sealed in every key envelope.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&[&self.bytes])
    }
}

impl fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedBody({} bytes, digest {})",
            self.bytes.len(),
            hex(&self.digest()[..8])
        )
    }
}

/// The body key `K`: 32 random bytes, fresh for every message. Zeroized on drop; its `Debug`
/// shows nothing of it.
#[derive(Clone)]
pub struct BodyKey(Zeroizing<[u8; 32]>);

impl BodyKey {
    /// Restores a key kept while a send is retried (see [`BodyKey::to_bytes`]).
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*key))
    }

    /// `K`, for keeping a message between retries (after a 409) until it is delivered.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    /// The 64-byte key envelope plaintext `K || H(body)`, which the pairwise session of each
    /// destination device encrypts.
    pub fn envelope_plaintext(&self, body: &[u8]) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; ENVELOPE_PLAINTEXT_LEN]);
        out[..32].copy_from_slice(self.0.as_ref());
        out[32..].copy_from_slice(&sha256(&[body]));
        out
    }
}

impl fmt::Debug for BodyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BodyKey(<secret>)")
    }
}

/// Encrypts `content` once for all destination devices.
///
/// Draws from `rng`, in this order: `K` (32 bytes), then `n` (12 bytes). The caller draws
/// `message_id` itself (for instance [`MessageId::generate`]) before or after; it is not drawn
/// here. Refuses content longer than [`MAX_CONTENT_LEN`].
pub fn encrypt_body(
    rng: &mut (impl RngCore + CryptoRng),
    message_id: &MessageId,
    content: &[u8],
) -> Result<(SealedBody, BodyKey), BodyError> {
    let padded = pad(content)?;
    let mut key = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(key.as_mut());
    let mut nonce = [0u8; BODY_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ct = seal(&key, &nonce, &padded, &body_ad(message_id));
    let mut bytes = Vec::with_capacity(BODY_NONCE_LEN + ct.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&ct);
    Ok((SealedBody { bytes }, BodyKey(key)))
}

/// Opens a body with the plaintext of its key envelope (`K || H(body)`, already decrypted by
/// the pairwise session): checks the envelope length, compares `H(body)` in constant time,
/// opens the body under `message_id` and strips the padding.
pub fn open_body(
    envelope_plaintext: &[u8],
    body: &[u8],
    message_id: &MessageId,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if envelope_plaintext.len() != ENVELOPE_PLAINTEXT_LEN {
        return Err(BodyError::BadKeyEnvelope(envelope_plaintext.len()));
    }
    let (key_bytes, digest) = envelope_plaintext.split_at(32);
    if !ct_eq(digest, &sha256(&[body])) {
        return Err(BodyError::DigestMismatch);
    }
    if body.len() < BODY_NONCE_LEN + TAG_LEN {
        return Err(BodyError::Truncated);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(key_bytes);
    let (nonce_bytes, ct) = body.split_at(BODY_NONCE_LEN);
    let mut nonce = [0u8; BODY_NONCE_LEN];
    nonce.copy_from_slice(nonce_bytes);
    let padded =
        open(&key, &nonce, ct, &body_ad(message_id)).map_err(|_| BodyError::DecryptionFailed)?;
    unpad(&padded)
}

/// `"cipherpost/body/v1" || message_id`.
fn body_ad(message_id: &MessageId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(LABEL_BODY.len() + 16);
    ad.extend_from_slice(LABEL_BODY);
    ad.extend_from_slice(&message_id.0);
    ad
}

/// Lower-case hex of public bytes, for `Debug`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
