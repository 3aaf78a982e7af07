//! Message bodies (PROTOCOL.md, "Message body"): padding rules, the body round trip, and the
//! refusal of every tampered body, wrong message id and mismatched key envelope. The
//! three-device body vector lives in `tests/vectors.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use cipherpost_protocol::{
    consts::{MAX_CONTENT_LEN, PAD_BLOCK},
    encrypt_body, open_body, pad, unpad, BodyError, BodyKey, MessageId,
};
use proptest::prelude::*;
use rand_core::OsRng;
use support::{mutations, reference as re};

#[test]
fn pad_lengths() {
    for (len, padded) in [
        (0, 160),
        (1, 160),
        (159, 160),
        (160, 320),
        (161, 320),
        (319, 320),
        (320, 480),
        (MAX_CONTENT_LEN, 98_400),
    ] {
        let content = vec![0x41u8; len];
        let p = pad(&content).unwrap();
        assert_eq!(p.len(), padded, "content of {len} bytes");
        assert_eq!(&p[..len], &content[..]);
        assert_eq!(p[len], 0x80);
        assert!(p[len + 1..].iter().all(|&b| b == 0));
    }
}

#[test]
fn pad_refuses_content_over_the_limit() {
    let content = vec![0u8; MAX_CONTENT_LEN + 1];
    assert_eq!(
        pad(&content).unwrap_err(),
        BodyError::TooLarge {
            len: MAX_CONTENT_LEN + 1,
            max: MAX_CONTENT_LEN
        }
    );
}

#[test]
fn unpad_strips_zeros_then_one_marker() {
    // Content ending in 0x80 or 0x00 keeps those bytes: only the last 0x80 is the marker.
    for content in [
        &b""[..],
        b"a",
        b"\x80",
        b"\x00",
        b"ab\x80\x00",
        &[0x80; 159],
        &[0x00; 160],
    ] {
        let p = pad(content).unwrap();
        assert_eq!(&unpad(&p).unwrap()[..], content);
    }
}

#[test]
fn unpad_refusals() {
    // Not a positive multiple of 160.
    assert_eq!(unpad(&[]).unwrap_err(), BodyError::BadPaddedLength(0));
    let mut p = pad(b"hello").unwrap().to_vec();
    p.push(0);
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPaddedLength(161));
    p.truncate(159);
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPaddedLength(159));

    // No 0x80 at all.
    assert_eq!(unpad(&[0u8; 160]).unwrap_err(), BodyError::BadPadding);
    // The last non-zero byte is not 0x80.
    let mut p = pad(b"hello").unwrap().to_vec();
    p[5] = 0x81;
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPadding);
    let mut p = vec![0x41u8; 160];
    p[159] = 0x01;
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPadding);

    // Padding longer than 160 bytes: the marker lies before the last block.
    let mut p = vec![0u8; 320];
    p[0] = b'x';
    p[1] = 0x80;
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPadding);
    let mut p = vec![0u8; 320];
    p[159] = 0x80; // 161 bytes of padding
    assert_eq!(unpad(&p).unwrap_err(), BodyError::BadPadding);
    let mut p = vec![0u8; 320];
    p[160] = 0x80; // exactly 160 bytes of padding: fine
    assert_eq!(unpad(&p).unwrap().len(), 160);

    // Content longer than the limit (well-formed padding otherwise).
    // 616 blocks whose marker is in the last block: 98,500 bytes of content.
    let mut p = vec![0x41u8; 98_560];
    p[98_500] = 0x80;
    p[98_501..].fill(0);
    assert_eq!(
        unpad(&p).unwrap_err(),
        BodyError::TooLarge {
            len: 98_500,
            max: MAX_CONTENT_LEN
        }
    );
    // The largest content allowed unpads.
    let p = pad(&vec![0x41u8; MAX_CONTENT_LEN]).unwrap();
    assert_eq!(unpad(&p).unwrap().len(), MAX_CONTENT_LEN);
    assert_eq!(PAD_BLOCK, 160);
}

#[test]
fn body_round_trip() {
    let message_id = MessageId::generate(&mut OsRng);
    for content in [
        &b""[..],
        b"hello",
        &[7u8; 1000],
        &vec![9u8; MAX_CONTENT_LEN],
    ] {
        let (body, key) = encrypt_body(&mut OsRng, &message_id, content).unwrap();
        // n (12) || ciphertext of the padded content || tag (16)
        assert_eq!(body.bytes.len(), 12 + pad(content).unwrap().len() + 16);
        let envelope = key.envelope_plaintext(&body.bytes);
        assert_eq!(&envelope[32..], &body.digest());
        assert_eq!(&envelope[32..], &re::h(&[&body.bytes]));
        let opened = open_body(envelope.as_ref(), &body.bytes, &message_id).unwrap();
        assert_eq!(&opened[..], content);
    }
}

#[test]
fn body_matches_the_spec() {
    // Recomputed with the reference primitives from K, n drawn by encrypt_body.
    let message_id = MessageId([3u8; 16]);
    let (body, key) = encrypt_body(&mut OsRng, &message_id, b"spec").unwrap();
    let k = key.to_bytes();
    let n: [u8; 12] = body.bytes[..12].try_into().unwrap();
    let mut ad = b"cipherpost/body/v1".to_vec();
    ad.extend_from_slice(&message_id.0);
    let mut expected = n.to_vec();
    expected.extend_from_slice(&re::seal(&k, &n, &pad(b"spec").unwrap(), &ad));
    assert_eq!(body.bytes, expected);
    // A restored key (kept across a 409 retry) gives the same envelope.
    let restored = BodyKey::from_bytes(&k);
    assert_eq!(
        restored.envelope_plaintext(&body.bytes).as_ref(),
        key.envelope_plaintext(&body.bytes).as_ref()
    );
}

#[test]
fn encrypt_body_refuses_oversized_content() {
    let content = vec![0u8; MAX_CONTENT_LEN + 1];
    let err = encrypt_body(&mut OsRng, &MessageId([0; 16]), &content).unwrap_err();
    assert!(matches!(err, BodyError::TooLarge { .. }));
}

#[test]
fn every_single_byte_change_of_a_body_is_refused() {
    let message_id = MessageId::generate(&mut OsRng);
    let (body, key) = encrypt_body(&mut OsRng, &message_id, b"tamper with me").unwrap();
    for m in mutations(&body.bytes) {
        // The envelope names the genuine body: the digest no longer matches.
        let envelope = key.envelope_plaintext(&body.bytes);
        assert_eq!(
            open_body(envelope.as_ref(), &m, &message_id),
            Err(BodyError::DigestMismatch)
        );
        // Even with an envelope that names the tampered body, the AEAD refuses it.
        let envelope = key.envelope_plaintext(&m);
        let err = open_body(envelope.as_ref(), &m, &message_id).unwrap_err();
        assert!(
            matches!(err, BodyError::DecryptionFailed | BodyError::Truncated),
            "unexpected {err:?}"
        );
    }
    let envelope = key.envelope_plaintext(&body.bytes);
    assert_eq!(
        &open_body(envelope.as_ref(), &body.bytes, &message_id).unwrap()[..],
        b"tamper with me"
    );
}

#[test]
fn wrong_message_id_is_refused() {
    let message_id = MessageId([1u8; 16]);
    let (body, key) = encrypt_body(&mut OsRng, &message_id, b"hi").unwrap();
    let envelope = key.envelope_plaintext(&body.bytes);
    for i in 0..16 {
        let mut other = message_id;
        other.0[i] ^= 1;
        assert_eq!(
            open_body(envelope.as_ref(), &body.bytes, &other),
            Err(BodyError::DecryptionFailed)
        );
    }
}

#[test]
fn envelope_refusals() {
    let message_id = MessageId::generate(&mut OsRng);
    let (body, key) = encrypt_body(&mut OsRng, &message_id, b"hi").unwrap();
    let envelope = key.envelope_plaintext(&body.bytes);

    // A different hash.
    let mut bad = *envelope;
    bad[63] ^= 1;
    assert_eq!(
        open_body(&bad, &body.bytes, &message_id),
        Err(BodyError::DigestMismatch)
    );
    // The hash of another body.
    let (other, _) = encrypt_body(&mut OsRng, &message_id, b"hi").unwrap();
    assert_eq!(
        open_body(
            key.envelope_plaintext(&other.bytes).as_ref(),
            &body.bytes,
            &message_id
        ),
        Err(BodyError::DigestMismatch)
    );
    // A different key with the right hash.
    let mut bad = *envelope;
    bad[0] ^= 1;
    assert_eq!(
        open_body(&bad, &body.bytes, &message_id),
        Err(BodyError::DecryptionFailed)
    );
    // Wrong lengths.
    assert_eq!(
        open_body(&envelope[..63], &body.bytes, &message_id),
        Err(BodyError::BadKeyEnvelope(63))
    );
    let mut long = envelope.to_vec();
    long.push(0);
    assert_eq!(
        open_body(&long, &body.bytes, &message_id),
        Err(BodyError::BadKeyEnvelope(65))
    );
    // A body too short to hold a nonce and a tag, whose hash the envelope names.
    let short = [0u8; 27];
    assert_eq!(
        open_body(key.envelope_plaintext(&short).as_ref(), &short, &message_id),
        Err(BodyError::Truncated)
    );
}

#[test]
fn debug_hides_the_body_key() {
    let (body, key) = encrypt_body(&mut OsRng, &MessageId([0; 16]), b"secret").unwrap();
    let k = hex::encode(key.to_bytes().as_ref());
    let shown = format!("{key:?} {body:?}");
    assert!(!shown.contains(&k), "{shown}");
    assert!(!shown.contains(&k[..16]), "{shown}");
}

proptest! {
    #[test]
    fn pad_unpad_round_trip(content in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let p = pad(&content).unwrap();
        prop_assert_eq!(p.len() % 160, 0);
        prop_assert!(p.len() > content.len() && p.len() <= content.len() + 160);
        prop_assert_eq!(&unpad(&p).unwrap()[..], &content[..]);
    }

    #[test]
    fn unpad_never_panics(
        padded in proptest::collection::vec(
            prop_oneof![Just(0u8), Just(0x80u8), any::<u8>()],
            0..700,
        )
    ) {
        if let Ok(content) = unpad(&padded) {
            // Whatever unpad accepts, pad reproduces.
            prop_assert_eq!(&pad(&content).unwrap()[..], &padded[..]);
        }
    }
}
