//! Message bodies (padding, key envelope, sealed body) and attachment objects as a receiver
//! meets them: arbitrary bytes never panic, and nothing unauthenticated is accepted.
#![no_main]

use cipherpost_protocol::{
    decrypt_attachment, open_body, unpad, AttachmentKey, AttachmentSecrets, MessageId,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(content) = unpad(data) {
        assert!(content.len() < data.len(), "unpad kept its padding");
    }
    // Envelope plaintext (K || H(body)) then the body.
    let (envelope, body) = data.split_at(data.len().min(64));
    assert!(
        open_body(envelope, body, &MessageId([3; 16])).is_err(),
        "a body opened without its key"
    );
    // An attachment object of a pointer whose size is the first byte.
    let size = data.first().copied().unwrap_or(0) as u64;
    let secrets = AttachmentSecrets {
        key: AttachmentKey::from_bytes(&[9; 32]),
        size,
        digest: [0; 32],
    };
    let mut out = Vec::new();
    let result = decrypt_attachment(&secrets, Some(data.len() as u64), data, &mut out);
    assert!(
        result.is_err(),
        "an attachment decrypted under a made-up digest"
    );
});
