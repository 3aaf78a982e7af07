//! Device certificates, revocations and account-key rotations: decoding arbitrary bytes never
//! panics, and whatever decodes encodes back to the same bytes (the encodings are canonical).
#![no_main]

use cipherpost_protocol::{DeviceCertificate, Revocation, Rotation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = DeviceCertificate::from_bytes(data) {
        assert_eq!(c.to_bytes(), data, "certificate encoding is not canonical");
    }
    if let Ok(r) = Revocation::from_bytes(data) {
        assert_eq!(r.to_bytes(), data, "revocation encoding is not canonical");
    }
    if let Ok(r) = Rotation::from_bytes(data) {
        assert_eq!(r.to_bytes(), data, "rotation encoding is not canonical");
    }
});
