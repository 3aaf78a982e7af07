//! Streaming attachment encryption (PROTOCOL.md, "Attachments").
//!
//! ```text
//! K_att  = 32 random bytes, prefix = 7 random bytes
//! segment i (from 0) = SEAL(K_att, prefix || u32be(i) || (0x01 if last else 0x00), pt_i, "")
//! object = prefix || sealed segments          digest = H(object)
//! ```
//! The plaintext is cut into segments of 65,536 bytes; there are `max(1, ceil(size / 65536))`
//! of them, the last may be full and is empty only for an empty file. This is the `aead`
//! crate's STREAM (`EncryptorBE32` / `DecryptorBE32`) over AES-256-GCM.
//!
//! Both directions stream with buffers of one or two segments, whatever the attachment's size.
//!
//! Decryption is single-pass: [`decrypt_attachment`] writes each segment's plaintext as soon as
//! that segment's tag verified, but the output is valid only when it returns `Ok`. The object's
//! length, its digest and the end of the stream are known only at the end, so the final
//! segment is held back until they verified: on every error the writer holds at most a strict
//! prefix of the plaintext, which the caller discards (write to a temporary file and rename it
//! on `Ok`).

use std::{
    fmt,
    io::{self, Read, Write},
};

use aes_gcm::{
    aead::{
        stream::{DecryptorBE32, EncryptorBE32},
        KeyInit,
    },
    Aes256Gcm,
};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{
    consts::{ATTACHMENT_PREFIX_LEN, ATTACHMENT_SEGMENT, TAG_LEN},
    error::AttachmentError,
    primitives::ct_eq,
};

/// Plaintext bytes per segment, as a `u64` for length arithmetic.
const SEGMENT: u64 = ATTACHMENT_SEGMENT as u64;
/// The STREAM counter is a `u32`, so an object holds at most `2^32` segments.
const MAX_SEGMENTS: u64 = 1 << 32;
/// The largest size the format can carry (`2^48` bytes). Servers set far lower limits.
const MAX_SIZE: u64 = MAX_SEGMENTS * SEGMENT;

/// The number of segments of an attachment of `size` bytes: `max(1, ceil(size / 65536))`.
fn segment_count(size: u64) -> u64 {
    size.div_ceil(SEGMENT).max(1)
}

/// The length of the object holding `size` bytes of plaintext:
/// `7 + size + 16 * max(1, ceil(size / 65536))`.
///
/// `None` when `size` exceeds what the format can carry (more than `2^32` segments, 256 TiB).
pub fn attachment_object_len(size: u64) -> Option<u64> {
    if size > MAX_SIZE {
        return None;
    }
    // At most 7 + 2^48 + 2^36: no overflow.
    Some(ATTACHMENT_PREFIX_LEN as u64 + size + TAG_LEN as u64 * segment_count(size))
}

/// An attachment key `K_att`: 32 random bytes, fresh for every attachment object.
///
/// Zeroized on drop; `Debug` shows nothing of it. There is deliberately no way to encrypt under
/// a chosen key: [`encrypt_attachment`] draws the key and the nonce prefix itself, so a key
/// never seals two objects.
#[derive(Clone)]
pub struct AttachmentKey(Zeroizing<[u8; 32]>);

impl AttachmentKey {
    fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// The key carried in an attachment pointer.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key bytes, to put in the attachment pointer.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        self.0.clone()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }
}

impl fmt::Debug for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AttachmentKey(..)")
    }
}

/// What the attachment pointer inside a message must carry besides the object id, content
/// type and file name: `K_att`, the plaintext `size` and the object's `digest`.
#[derive(Clone, Debug)]
pub struct AttachmentSecrets {
    /// `K_att`.
    pub key: AttachmentKey,
    /// Plaintext bytes.
    pub size: u64,
    /// `H(object)`: binds the pointer to exactly one object.
    pub digest: [u8; 32],
}

/// Encrypts `plaintext` (read to its end) into `object`, streaming one segment at a time.
///
/// Draws `K_att` (32 bytes) and then the nonce prefix (7 bytes) from `rng`. Reads ahead one
/// segment to know which segment is the last, so it holds two 64 KiB buffers whatever the
/// size; every write to `object` is at most one sealed segment (65,552 bytes). Returns the
/// key, size and digest for the attachment pointer. On error, `object` holds an unusable
/// partial object.
pub fn encrypt_attachment<R: Read, W: Write>(
    rng: &mut (impl RngCore + CryptoRng),
    mut plaintext: R,
    mut object: W,
) -> Result<AttachmentSecrets, AttachmentError> {
    let key = AttachmentKey::generate(rng);
    let mut prefix = [0u8; ATTACHMENT_PREFIX_LEN];
    rng.fill_bytes(&mut prefix);

    let mut stream = EncryptorBE32::<Aes256Gcm>::from_aead(key.cipher(), (&prefix).into());
    let mut hasher = Sha256::new();
    object.write_all(&prefix)?;
    hasher.update(prefix);

    let mut current = segment_buffer();
    let mut next = segment_buffer();
    fill(&mut plaintext, &mut current, ATTACHMENT_SEGMENT)?;
    let mut size = 0u64;
    loop {
        // A short segment means the reader reached its end; a full one is the last only when
        // nothing follows it.
        let last = current.len() < ATTACHMENT_SEGMENT || {
            fill(&mut plaintext, &mut next, ATTACHMENT_SEGMENT)?;
            next.is_empty()
        };
        size += current.len() as u64;
        let too_large = || AttachmentError::TooLarge {
            size,
            max: MAX_SIZE,
        };
        if size > MAX_SIZE {
            return Err(too_large());
        }
        if last {
            // Fails only beyond GCM's per-message limit, far above a segment.
            stream
                .encrypt_last_in_place(b"", &mut *current)
                .map_err(|_| too_large())?;
            object.write_all(&current)?;
            hasher.update(&*current);
            break;
        }
        // Fails only when the 32-bit counter is exhausted, which the size check prevents.
        stream
            .encrypt_next_in_place(b"", &mut *current)
            .map_err(|_| too_large())?;
        object.write_all(&current)?;
        hasher.update(&*current);
        std::mem::swap(&mut current, &mut next);
    }
    object.flush()?;
    Ok(AttachmentSecrets {
        key,
        size,
        digest: hasher.finalize().into(),
    })
}

/// Decrypts an attachment `object` into `plaintext`, checking it against its pointer.
///
/// **The output is valid only when this returns `Ok`.** Decryption is single-pass: each
/// segment's plaintext is written once its tag verified, so `plaintext` only ever receives
/// authenticated bytes in order, but the object's length, its end and its digest are known only
/// after the last segment. The last segment's plaintext is therefore held back until all of
/// them verified: on any error `plaintext` holds at most a strict prefix of the content, which
/// the caller must discard (decrypt into a temporary file, rename it on `Ok`, delete it on
/// `Err`). Memory stays at one segment buffer whatever the size.
///
/// `object_len`, when known upfront (file length, `Content-Length`), is checked before reading
/// anything; truncation and extension are detected while streaming in any case.
///
/// Errors: [`AttachmentError::WrongLength`] for a wrong known length or a truncated stream,
/// [`AttachmentError::TrailingBytes`] for bytes after the last segment,
/// [`AttachmentError::BadSegment`] for a segment whose tag fails (tampered, reordered, swapped
/// object or wrong key), [`AttachmentError::DigestMismatch`] when every tag verified but the
/// object is not the one the pointer names, [`AttachmentError::TooLarge`] for a size the format
/// cannot carry, [`AttachmentError::Io`] when reading or writing failed.
pub fn decrypt_attachment<R: Read, W: Write>(
    secrets: &AttachmentSecrets,
    object_len: Option<u64>,
    mut object: R,
    mut plaintext: W,
) -> Result<(), AttachmentError> {
    let size = secrets.size;
    let expected = attachment_object_len(size).ok_or(AttachmentError::TooLarge {
        size,
        max: MAX_SIZE,
    })?;
    if let Some(actual) = object_len {
        if actual != expected {
            return Err(AttachmentError::WrongLength {
                size,
                expected,
                actual,
            });
        }
    }

    let mut buf = segment_buffer();
    let mut read = 0u64;
    let mut read_exactly = |object: &mut R, buf: &mut Vec<u8>, n: usize| {
        fill(object, buf, n)?;
        read += buf.len() as u64;
        if buf.len() < n {
            return Err(AttachmentError::WrongLength {
                size,
                expected,
                actual: read,
            });
        }
        Ok(())
    };

    read_exactly(&mut object, &mut buf, ATTACHMENT_PREFIX_LEN)?;
    let mut prefix = [0u8; ATTACHMENT_PREFIX_LEN];
    prefix.copy_from_slice(&buf);
    let mut hasher = Sha256::new();
    hasher.update(prefix);
    let mut stream = DecryptorBE32::<Aes256Gcm>::from_aead(secrets.key.cipher(), (&prefix).into());

    let count = segment_count(size);
    let last_len = size - (count - 1) * SEGMENT;
    for i in 0..count - 1 {
        read_exactly(&mut object, &mut buf, ATTACHMENT_SEGMENT + TAG_LEN)?;
        hasher.update(&*buf);
        stream
            .decrypt_next_in_place(b"", &mut *buf)
            .map_err(|_| AttachmentError::BadSegment(i))?;
        plaintext.write_all(&buf)?;
    }
    // `last_len <= 65536`, so the cast cannot truncate.
    read_exactly(&mut object, &mut buf, last_len as usize + TAG_LEN)?;
    hasher.update(&*buf);
    stream
        .decrypt_last_in_place(b"", &mut *buf)
        .map_err(|_| AttachmentError::BadSegment(count - 1))?;

    let mut probe = Vec::with_capacity(1);
    fill(&mut object, &mut probe, 1)?;
    if !probe.is_empty() {
        return Err(AttachmentError::TrailingBytes { size, expected });
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if !ct_eq(&digest, &secrets.digest) {
        return Err(AttachmentError::DigestMismatch);
    }
    plaintext.write_all(&buf)?;
    plaintext.flush()?;
    Ok(())
}

/// A buffer for one sealed segment, zeroized when dropped. Its capacity never grows, so no
/// plaintext is left behind in a freed allocation.
fn segment_buffer() -> Zeroizing<Vec<u8>> {
    Zeroizing::new(Vec::with_capacity(ATTACHMENT_SEGMENT + TAG_LEN))
}

/// Replaces `buf` with up to `n` bytes from `reader`, fewer only at the end of the stream.
fn fill<R: Read>(reader: &mut R, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    buf.clear();
    buf.resize(n, 0);
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            // A reader claiming more than it was given breaks `Read`'s contract; clamp.
            Ok(got) => filled = (filled + got).min(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(())
}
