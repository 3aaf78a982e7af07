//! Streaming attachments (PROTOCOL.md, "Attachments"): round trips at every segment boundary,
//! a 16 MiB stream with bounded buffers, the refusal of tampered, truncated, reordered,
//! extended and swapped objects, and the 150,000-byte vector (`attachment.json`), rebuilt
//! segment by segment with plain AES-256-GCM from the spec.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use std::io::{self, Read, Write};

use cipherpost_protocol::{
    attachment_object_len, consts::ATTACHMENT_SEGMENT, decrypt_attachment, encrypt_attachment,
    AttachmentError, AttachmentKey, AttachmentSecrets,
};
use proptest::prelude::*;
use rand_core::{CryptoRng, OsRng, RngCore};
use serde_json::{json, Value};
use support::{check_vectors, hx, reference as re, Inputs, Kind};

const SEG: usize = ATTACHMENT_SEGMENT;
const SEALED: usize = SEG + 16;

/// The test plaintext: byte `i` is `i mod 251`.
fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern).collect()
}

/// The pattern from `pos` on, for up to 65,536 bytes (slices of a table: byte-wise loops are
/// slow in debug builds).
fn pattern_at(pos: u64, n: usize) -> &'static [u8] {
    static TABLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| plaintext(SEG + 251));
    let start = (pos % 251) as usize;
    &table[start..start + n.min(SEG)]
}

/// Generates `len` pattern bytes without holding them, in reads of at most `chunk` bytes, and
/// records the largest buffer it was handed.
struct PatternReader {
    pos: u64,
    len: u64,
    chunk: usize,
    max_request: usize,
}

impl PatternReader {
    fn new(len: u64, chunk: usize) -> Self {
        Self {
            pos: 0,
            len,
            chunk,
            max_request: 0,
        }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.max_request = self.max_request.max(buf.len());
        let n = buf
            .len()
            .min(self.chunk)
            .min((self.len - self.pos) as usize)
            .min(SEG);
        buf[..n].copy_from_slice(pattern_at(self.pos, n));
        self.pos += n as u64;
        Ok(n)
    }
}

/// Checks written bytes against the pattern without storing them; records the largest write.
#[derive(Default)]
struct PatternChecker {
    pos: u64,
    max_write: usize,
}

impl Write for PatternChecker {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.max_write = self.max_write.max(buf.len());
        for chunk in buf.chunks(SEG) {
            assert!(
                chunk == pattern_at(self.pos, chunk.len()),
                "plaintext from byte {}",
                self.pos
            );
            self.pos += chunk.len() as u64;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Collects written bytes and records the largest single write.
#[derive(Default)]
struct Recorder {
    bytes: Vec<u8>,
    max_write: usize,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.max_write = self.max_write.max(buf.len());
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Answers every draw with the same byte: two encryptions share `K_att` and the prefix, which
/// the library never does on its own (it shows what the digest alone catches).
struct ConstRng(u8);

impl RngCore for ConstRng {
    fn next_u32(&mut self) -> u32 {
        u32::from_ne_bytes([self.0; 4])
    }
    fn next_u64(&mut self) -> u64 {
        u64::from_ne_bytes([self.0; 8])
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(self.0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ConstRng {}

fn encrypt(pt: &[u8]) -> (AttachmentSecrets, Vec<u8>) {
    let mut object = Vec::new();
    let secrets = encrypt_attachment(&mut OsRng, pt, &mut object).unwrap();
    (secrets, object)
}

/// Decrypts, streaming (`known_len` false) or with the object length given upfront. Returns
/// what reached the writer alongside the verdict.
fn decrypt(
    secrets: &AttachmentSecrets,
    object: &[u8],
    known_len: bool,
) -> (Result<(), AttachmentError>, Vec<u8>) {
    let mut out = Vec::new();
    let len = known_len.then_some(object.len() as u64);
    let r = decrypt_attachment(secrets, len, object, &mut out);
    (r, out)
}

fn decrypt_ok(secrets: &AttachmentSecrets, object: &[u8]) -> Vec<u8> {
    let (r, out) = decrypt(secrets, object, false);
    r.unwrap();
    let (r, out2) = decrypt(secrets, object, true);
    r.unwrap();
    assert_eq!(out, out2);
    out
}

/// The sealed segments of an object, split by the declared size.
fn segments(object: &[u8], size: usize) -> Vec<&[u8]> {
    let count = size.div_ceil(SEG).max(1);
    let mut out = Vec::new();
    let mut at = 7;
    for i in 0..count {
        let len = if i + 1 < count {
            SEG
        } else {
            size - (count - 1) * SEG
        } + 16;
        out.push(&object[at..at + len]);
        at += len;
    }
    assert_eq!(at, object.len());
    out
}

#[test]
fn object_lengths() {
    assert_eq!(attachment_object_len(0), Some(7 + 16));
    assert_eq!(attachment_object_len(1), Some(7 + 1 + 16));
    assert_eq!(attachment_object_len(65_535), Some(7 + 65_535 + 16));
    assert_eq!(attachment_object_len(65_536), Some(7 + 65_536 + 16));
    assert_eq!(attachment_object_len(65_537), Some(7 + 65_537 + 32));
    assert_eq!(attachment_object_len(150_000), Some(7 + 150_000 + 48));
    assert_eq!(
        attachment_object_len(100 << 20),
        Some(7 + (100 << 20) + 16 * 1600)
    );
    // 2^32 segments is the most the 32-bit STREAM counter can number.
    assert_eq!(
        attachment_object_len(1 << 48),
        Some(7 + (1 << 48) + (16 << 32))
    );
    assert_eq!(attachment_object_len((1 << 48) + 1), None);
    assert_eq!(attachment_object_len(u64::MAX), None);
}

#[test]
fn round_trip_at_segment_boundaries() {
    for size in [0, 1, 65_535, 65_536, 65_537, 3 * 65_536, 150_000] {
        let pt = plaintext(size);
        let (secrets, object) = encrypt(&pt);
        assert_eq!(secrets.size, size as u64);
        assert_eq!(
            Some(object.len() as u64),
            attachment_object_len(size as u64),
            "size {size}"
        );
        assert_eq!(secrets.digest, re::h(&[&object]), "size {size}");
        let segs = segments(&object, size);
        assert_eq!(segs.len(), size.div_ceil(SEG).max(1), "size {size}");
        // The last segment is full for a multiple of 65536 and empty only for an empty file.
        let last_pt = segs.last().unwrap().len() - 16;
        assert_eq!(last_pt == 0, size == 0, "size {size}");
        assert_eq!(decrypt_ok(&secrets, &object), pt, "size {size}");
    }
}

#[test]
fn segments_follow_the_spec() {
    // Independent check of the nonce layout: plain AES-256-GCM with
    // prefix || u32be(i) || last flag, empty associated data.
    let pt = plaintext(3 * SEG);
    let (secrets, object) = encrypt(&pt);
    let key = *secrets.key.to_bytes();
    let prefix = &object[..7];
    for (i, seg) in segments(&object, pt.len()).into_iter().enumerate() {
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(prefix);
        nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
        nonce[11] = u8::from(i == 2);
        assert_eq!(
            seg,
            re::seal(&key, &nonce, &pt[i * SEG..(i + 1) * SEG], b""),
            "segment {i}"
        );
    }
}

#[test]
fn fresh_key_and_prefix_for_every_object() {
    let (a, obj_a) = encrypt(b"same content");
    let (b, obj_b) = encrypt(b"same content");
    assert_ne!(*a.key.to_bytes(), *b.key.to_bytes());
    assert_ne!(obj_a[..7], obj_b[..7]);
    assert_ne!(a.digest, b.digest);
}

#[test]
fn stream_16_mib_with_bounded_buffers() {
    let size: u64 = 16 << 20;
    // Odd read sizes exercise the refilling of partial segments.
    let mut reader = PatternReader::new(size, 10_007);
    let mut object = Recorder::default();
    let secrets = encrypt_attachment(&mut OsRng, &mut reader, &mut object).unwrap();
    assert_eq!(secrets.size, size);
    assert_eq!(Some(object.bytes.len() as u64), attachment_object_len(size));
    // Encryption asks for at most one segment per read and writes at most one sealed segment.
    assert!(reader.max_request <= SEG, "{}", reader.max_request);
    assert!(object.max_write <= SEALED, "{}", object.max_write);

    struct CountingSlice<'a> {
        rest: &'a [u8],
        max_request: usize,
    }
    impl Read for CountingSlice<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.max_request = self.max_request.max(buf.len());
            self.rest.read(buf)
        }
    }
    let mut input = CountingSlice {
        rest: &object.bytes,
        max_request: 0,
    };
    let mut checker = PatternChecker::default();
    decrypt_attachment(&secrets, None, &mut input, &mut checker).unwrap();
    assert_eq!(checker.pos, size);
    assert!(input.max_request <= SEALED, "{}", input.max_request);
    assert!(checker.max_write <= SEG, "{}", checker.max_write);
}

/// Positions worth flipping in a two-segment object of 70,000 bytes: the prefix, both tags,
/// the first and last ciphertext byte of each segment (each flipped two ways), and 500
/// pseudo-random positions (flipped once, to keep the debug build under a few seconds).
fn probe_positions(object_len: usize) -> Vec<(usize, u8)> {
    let seg1 = 7 + SEALED;
    let mut p: Vec<usize> = (0..7).collect();
    p.extend(seg1 - 16..seg1);
    p.extend(object_len - 16..object_len);
    p.extend([7, seg1 - 17, seg1, object_len - 17]);
    let mut out: Vec<(usize, u8)> = p.into_iter().flat_map(|i| [(i, 0x01), (i, 0x80)]).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(((x % object_len as u64) as usize, 1 << (x % 8)));
    }
    out
}

#[test]
fn every_probed_byte_change_is_refused() {
    let pt = plaintext(70_000);
    let (secrets, object) = encrypt(&pt);
    let seg1 = 7 + SEALED;
    for (pos, flip) in probe_positions(object.len()) {
        {
            let mut m = object.clone();
            m[pos] ^= flip;
            // The prefix enters every nonce, so a changed prefix fails segment 0.
            let expected_segment = if pos < seg1 { 0 } else { 1 };
            let (r, out) = decrypt(&secrets, &m, true);
            match r {
                Err(AttachmentError::BadSegment(i)) => {
                    assert_eq!(i, expected_segment, "byte {pos}")
                }
                other => panic!("byte {pos} ^ {flip:#x}: {other:?}"),
            }
            // Only segments whose tag verified reach the writer; never the last one.
            assert_eq!(out, pt[..SEG * expected_segment as usize], "byte {pos}");
        }
    }
}

#[test]
fn truncation_is_refused() {
    let pt = plaintext(150_000);
    let (secrets, object) = encrypt(&pt);
    let len = object.len() as u64;
    let expected = len;
    let segs = segments(&object, pt.len());
    let without_last = object[..object.len() - segs[2].len()].to_vec();

    for (name, m) in [
        ("dropped last segment", without_last.clone()),
        ("dropped last byte", object[..object.len() - 1].to_vec()),
        ("prefix only", object[..7].to_vec()),
        ("partial prefix", object[..3].to_vec()),
        ("empty", Vec::new()),
    ] {
        let actual = m.len() as u64;
        for known in [false, true] {
            let (r, out) = decrypt(&secrets, &m, known);
            match r {
                Err(AttachmentError::WrongLength {
                    size: 150_000,
                    expected: e,
                    actual: a,
                }) => {
                    assert_eq!((e, a), (expected, actual), "{name}");
                }
                other => panic!("{name} (length known: {known}): {other:?}"),
            }
            assert!(out.len() < pt.len(), "{name}");
        }
    }

    // Dropping the first byte shifts every segment: streaming, segment 0 fails first; with the
    // length known upfront, nothing is even read.
    let shifted = &object[1..];
    assert!(matches!(
        decrypt(&secrets, shifted, false).0,
        Err(AttachmentError::BadSegment(0))
    ));
    let (r, out) = decrypt(&secrets, shifted, true);
    assert!(matches!(r, Err(AttachmentError::WrongLength { actual, .. }) if actual == len - 1));
    assert!(out.is_empty());

    // A pointer lying about the size to match a truncated object: the last-segment flag
    // does not match, so the cut is still detected.
    let lying = AttachmentSecrets {
        key: secrets.key.clone(),
        size: 2 * SEG as u64,
        ..secrets
    };
    let (r, _) = decrypt(&lying, &without_last, true);
    assert!(matches!(r, Err(AttachmentError::BadSegment(1))), "{r:?}");
}

#[test]
fn reordering_is_refused() {
    let pt = plaintext(150_000);
    let (secrets, object) = encrypt(&pt);
    let segs = segments(&object, pt.len());
    let mut swapped = object[..7].to_vec();
    for s in [segs[1], segs[0], segs[2]] {
        swapped.extend_from_slice(s);
    }
    assert_eq!(swapped.len(), object.len());
    for known in [false, true] {
        let (r, out) = decrypt(&secrets, &swapped, known);
        assert!(matches!(r, Err(AttachmentError::BadSegment(0))), "{r:?}");
        assert!(out.is_empty());
    }
    // Segments 0 and 1 repeated: segment 1 sits at the wrong index.
    let mut repeated = object[..7].to_vec();
    for s in [segs[0], segs[0], segs[2]] {
        repeated.extend_from_slice(s);
    }
    let (r, out) = decrypt(&secrets, &repeated, true);
    assert!(matches!(r, Err(AttachmentError::BadSegment(1))), "{r:?}");
    assert_eq!(out, pt[..SEG]);
}

#[test]
fn extension_is_refused() {
    let pt = plaintext(150_000);
    let (secrets, object) = encrypt(&pt);
    let segs = segments(&object, pt.len());
    let expected = object.len() as u64;

    let mut one_byte = object.clone();
    one_byte.push(0);
    let mut extra_segment = object.clone();
    extra_segment.extend_from_slice(segs[1]);
    for (name, m) in [("one byte", one_byte), ("a segment", extra_segment)] {
        let (r, out) = decrypt(&secrets, &m, false);
        assert!(
            matches!(r, Err(AttachmentError::TrailingBytes { size: 150_000, expected: e }) if e == expected),
            "{name}: {r:?}"
        );
        // The last segment is held back until the end of the object is confirmed.
        assert_eq!(out, pt[..2 * SEG], "{name}");
        let (r, out) = decrypt(&secrets, &m, true);
        assert!(
            matches!(r, Err(AttachmentError::WrongLength { actual, .. }) if actual == m.len() as u64),
            "{name}: {r:?}"
        );
        assert!(out.is_empty());
    }
}

#[test]
fn swapped_object_is_refused() {
    let pt = plaintext(150_000);
    let (secrets, _) = encrypt(&pt);
    // Another attachment of the same size, with its own correct length.
    let (_, other) = encrypt(
        &plaintext(150_000)
            .iter()
            .map(|b| b ^ 0x55)
            .collect::<Vec<_>>(),
    );
    for known in [false, true] {
        let (r, out) = decrypt(&secrets, &other, known);
        assert!(matches!(r, Err(AttachmentError::BadSegment(0))), "{r:?}");
        assert!(out.is_empty());
    }
}

#[test]
fn digest_binds_the_object() {
    // Two objects under the same K_att and prefix (which never happens outside tests): every
    // tag verifies, only the digest tells them apart.
    let pt = plaintext(150_000);
    let mut object = Vec::new();
    let secrets = encrypt_attachment(&mut ConstRng(7), &pt[..], &mut object).unwrap();
    let other_pt: Vec<u8> = pt.iter().map(|b| b ^ 1).collect();
    let mut other = Vec::new();
    let other_secrets = encrypt_attachment(&mut ConstRng(7), &other_pt[..], &mut other).unwrap();
    assert_eq!(*secrets.key.to_bytes(), *other_secrets.key.to_bytes());
    assert_eq!(decrypt_ok(&other_secrets, &other), other_pt);

    let (r, out) = decrypt(&secrets, &other, true);
    assert!(matches!(r, Err(AttachmentError::DigestMismatch)), "{r:?}");
    // The writer never holds the complete plaintext of a refused object.
    assert_eq!(out, other_pt[..2 * SEG]);

    let mut wrong_digest = secrets.clone();
    wrong_digest.digest[31] ^= 1;
    assert!(matches!(
        decrypt(&wrong_digest, &object, false).0,
        Err(AttachmentError::DigestMismatch)
    ));
}

#[test]
fn wrong_key_or_size_is_refused() {
    let pt = plaintext(70_000);
    let (secrets, object) = encrypt(&pt);
    let mut key = *secrets.key.to_bytes();
    key[0] ^= 1;
    let wrong_key = AttachmentSecrets {
        key: AttachmentKey::from_bytes(&key),
        ..secrets.clone()
    };
    for known in [false, true] {
        let (r, out) = decrypt(&wrong_key, &object, known);
        assert!(matches!(r, Err(AttachmentError::BadSegment(0))), "{r:?}");
        assert!(out.is_empty());
    }

    // A size one byte off: the length check catches it upfront; streaming, the last segment
    // is read one byte short or long, and its tag fails.
    for size in [69_999, 70_001] {
        let wrong_size = AttachmentSecrets {
            size,
            ..secrets.clone()
        };
        let (r, _) = decrypt(&wrong_size, &object, true);
        assert!(
            matches!(r, Err(AttachmentError::WrongLength { .. })),
            "{size}: {r:?}"
        );
        let (r, _) = decrypt(&wrong_size, &object, false);
        assert!(
            matches!(
                r,
                Err(AttachmentError::BadSegment(1) | AttachmentError::WrongLength { .. })
            ),
            "{size}: {r:?}"
        );
    }

    let huge = AttachmentSecrets {
        size: (1 << 48) + 1,
        ..secrets
    };
    let (r, _) = decrypt(&huge, &object, false);
    assert!(
        matches!(r, Err(AttachmentError::TooLarge { max, .. }) if max == 1 << 48),
        "{r:?}"
    );
}

#[test]
fn io_errors_and_interrupted_reads() {
    /// Fails after `ok` bytes; interrupts every other read.
    struct Flaky<'a> {
        data: &'a [u8],
        ok: usize,
        calls: usize,
    }
    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.ok == 0 {
                return Err(io::Error::other("disk gone"));
            }
            let n = buf.len().min(self.ok).min(self.data.len()).min(1000);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.ok -= n;
            Ok(n)
        }
    }
    let pt = plaintext(70_000);
    // Interrupted reads are retried.
    let mut object = Vec::new();
    let reader = Flaky {
        data: &pt,
        ok: usize::MAX,
        calls: 0,
    };
    let secrets = encrypt_attachment(&mut OsRng, reader, &mut object).unwrap();
    let mut out = Vec::new();
    let reader = Flaky {
        data: &object,
        ok: usize::MAX,
        calls: 0,
    };
    decrypt_attachment(&secrets, None, reader, &mut out).unwrap();
    assert_eq!(out, pt);
    // Errors are reported, not mistaken for the end of the stream.
    let reader = Flaky {
        data: &pt,
        ok: 30_000,
        calls: 0,
    };
    let r = encrypt_attachment(&mut OsRng, reader, Vec::new());
    assert!(matches!(r, Err(AttachmentError::Io(_))));
    let reader = Flaky {
        data: &object,
        ok: 30_000,
        calls: 0,
    };
    let r = decrypt_attachment(&secrets, None, reader, Vec::new());
    assert!(matches!(r, Err(AttachmentError::Io(_))));
}

#[test]
fn key_debug_shows_no_secret() {
    let key_bytes = [0xabu8; 32];
    let secrets = AttachmentSecrets {
        key: AttachmentKey::from_bytes(&key_bytes),
        size: 1,
        digest: [0u8; 32],
    };
    let shown = format!("{secrets:?} {:?}", secrets.key);
    assert!(!shown.to_lowercase().contains("abab"), "{shown}");
    assert!(!shown.contains("171"), "{shown}");
    assert_eq!(*secrets.key.to_bytes(), key_bytes);
}

#[test]
fn errors_say_what_was_wrong() {
    let e = AttachmentError::WrongLength {
        size: 1,
        expected: 24,
        actual: 23,
    };
    assert_eq!(
        e.to_string(),
        "the attachment object is 23 bytes; 24 were expected for 1 bytes of content"
    );
    assert!(AttachmentError::BadSegment(2)
        .to_string()
        .contains("segment 2"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn round_trip_random_sizes(size in 0usize..300_000, seed in any::<u8>()) {
        let pt: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
        let (secrets, object) = encrypt(&pt);
        prop_assert_eq!(Some(object.len() as u64), attachment_object_len(size as u64));
        prop_assert_eq!(decrypt_ok(&secrets, &object), pt);
    }
}

#[test]
fn attachment_vectors() {
    const SIZE: usize = 150_000;
    let inputs = Inputs::new();
    let mut rng = inputs.rng(&[
        ("attachment_key", Kind::Bytes),
        ("attachment_prefix", Kind::Bytes),
    ]);
    let pt = plaintext(SIZE);
    let mut object = Vec::new();
    let secrets = encrypt_attachment(&mut rng, &pt[..], &mut object).unwrap();
    assert_eq!(rng.remaining(), 0);

    // Rebuild the object from the spec with plain AES-256-GCM and compare.
    let key: [u8; 32] = support::seed("attachment_key");
    let prefix: [u8; 7] = support::seed("attachment_prefix")[..7].try_into().unwrap();
    assert_eq!(*secrets.key.to_bytes(), key);
    let count = SIZE.div_ceil(SEG).max(1);
    let mut rebuilt = prefix.to_vec();
    let mut segs = Vec::new();
    for i in 0..count {
        let last = i + 1 == count;
        let seg_pt = &pt[i * SEG..((i + 1) * SEG).min(SIZE)];
        let mut nonce = [0u8; 12];
        nonce[..7].copy_from_slice(&prefix);
        nonce[7..11].copy_from_slice(&(i as u32).to_be_bytes());
        nonce[11] = u8::from(last);
        let sealed = re::seal(&key, &nonce, seg_pt, b"");
        segs.push(json!({
            "index": i,
            "last": last,
            "nonce": hx(nonce),
            "plaintext_len": seg_pt.len(),
            "plaintext_sha256": hx(re::h(&[seg_pt])),
            "sealed_len": sealed.len(),
            "sealed_head": hx(&sealed[..32]),
            "tag": hx(&sealed[sealed.len() - 16..]),
            "sealed_sha256": hx(re::h(&[&sealed])),
        }));
        rebuilt.extend_from_slice(&sealed);
    }
    assert_eq!(object, rebuilt, "library object differs from the spec");
    assert_eq!(secrets.digest, re::h(&[&rebuilt]));
    assert_eq!(decrypt_ok(&secrets, &object), pt);

    let value: Value = json!({
        "inputs": inputs.to_json(),
        "plaintext_rule": "byte i = i mod 251",
        "size": SIZE,
        "plaintext_sha256": hx(re::h(&[&pt])),
        "key": hx(key),
        "prefix": hx(prefix),
        "segment_count": count,
        "segments": segs,
        "object_len": object.len(),
        "object_head": hx(&object[..64]),
        "object_tail": hx(&object[object.len() - 64..]),
        "digest": hx(secrets.digest),
    });
    check_vectors("attachment.json", &value);
}
