//! Helpers shared by the integration tests: the deterministic seed scheme of the test vectors
//! (PROTOCOL.md, "Test vectors") and the check that recomputed vectors equal the stored files.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod device;
pub mod reference;

use std::{cell::RefCell, collections::VecDeque, path::PathBuf, rc::Rc};

use cipherpost_protocol::{DhSecret, SigningSecret};
use rand_core::{CryptoRng, RngCore};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// `H("cipherpost-vectors/" || name)`.
pub fn seed(name: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cipherpost-vectors/");
    h.update(name.as_bytes());
    h.finalize().into()
}

/// Lower-case hex.
pub fn hx(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

/// The named inputs of one vector file, recorded in the order they are drawn.
#[derive(Clone, Default)]
pub struct Inputs(Rc<RefCell<Vec<Value>>>);

impl Inputs {
    pub fn new() -> Self {
        Self::default()
    }

    /// An X25519 private key `seed(name)`, recorded with its public key.
    pub fn x25519(&self, name: &str) -> DhSecret {
        let s = seed(name);
        let key = DhSecret::from_bytes(&s);
        self.push(
            json!({"name": name, "private": hx(s), "public": hx(key.public_key().as_bytes())}),
        );
        key
    }

    /// An Ed25519 seed `seed(name)`, recorded with its public key.
    pub fn ed25519(&self, name: &str) -> SigningSecret {
        let s = seed(name);
        let key = SigningSecret::from_bytes(&s);
        self.push(
            json!({"name": name, "private": hx(s), "public": hx(key.verifying_key().as_bytes())}),
        );
        key
    }

    /// The first `n` bytes of `seed(name)` (`n <= 32`).
    pub fn bytes(&self, name: &str, n: usize) -> Vec<u8> {
        let v = seed(name)[..n].to_vec();
        self.push(json!({"name": name, "value": hx(&v)}));
        v
    }

    /// A fixed-size array from the first bytes of `seed(name)`.
    pub fn array<const N: usize>(&self, name: &str) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes(name, N));
        out
    }

    /// `u32be` of the first 4 bytes of `seed(name)`.
    pub fn u32(&self, name: &str) -> u32 {
        let s = seed(name);
        let v = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
        self.push(json!({"name": name, "value": v}));
        v
    }

    fn push(&self, v: Value) {
        self.0.borrow_mut().push(v);
    }

    pub fn to_json(&self) -> Value {
        Value::Array(self.0.borrow().clone())
    }

    /// An RNG that answers each `fill_bytes` with the next scripted input. `script` names the
    /// inputs in the order the code under test draws them, with their kind, so that fresh keys
    /// made inside the library (ratchet keys) are recorded like every other input.
    pub fn rng(&self, script: &[(&str, Kind)]) -> ScriptedRng {
        ScriptedRng {
            inputs: self.clone(),
            script: script.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
        }
    }
}

/// How a scripted input is recorded.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    X25519,
    Ed25519,
    Bytes,
}

/// See [`Inputs::rng`]. Panics when the code draws more than the script names, or a different
/// length than 32 bytes for a key: a vector must never silently use unrecorded randomness.
pub struct ScriptedRng {
    inputs: Inputs,
    script: VecDeque<(String, Kind)>,
}

impl ScriptedRng {
    pub fn remaining(&self) -> usize {
        self.script.len()
    }
}

impl RngCore for ScriptedRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_be_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_be_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let (name, kind) = self
            .script
            .pop_front()
            .expect("the code drew an unscripted input");
        match kind {
            Kind::X25519 => {
                assert_eq!(dest.len(), 32);
                dest.copy_from_slice(&self.inputs.x25519(&name).to_bytes()[..]);
            }
            Kind::Ed25519 => {
                assert_eq!(dest.len(), 32);
                dest.copy_from_slice(&self.inputs.ed25519(&name).to_bytes()[..]);
            }
            Kind::Bytes if dest.len() == 4 => {
                dest.copy_from_slice(&self.inputs.u32(&name).to_be_bytes());
            }
            Kind::Bytes => dest.copy_from_slice(&self.inputs.bytes(&name, dest.len())),
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for ScriptedRng {}

/// Compares a recomputed vector file with the stored one in `tests/vectors/`, failing on any
/// difference. `CIPHERPOST_WRITE_VECTORS=1` (re)writes the file instead.
pub fn check_vectors(file: &str, value: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(file);
    let text = serde_json::to_string_pretty(value).expect("json") + "\n";
    if std::env::var("CIPHERPOST_WRITE_VECTORS").as_deref() == Ok("1") {
        std::fs::write(&path, &text).expect("write vectors");
        return;
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with CIPHERPOST_WRITE_VECTORS=1 to create it",
            path.display()
        )
    });
    if stored != text {
        let line = stored
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| stored.lines().count().min(text.lines().count()));
        panic!(
            "{file} differs from the recomputed vectors at line {}:\n stored:     {}\n recomputed: {}",
            line + 1,
            stored.lines().nth(line).unwrap_or("<end>"),
            text.lines().nth(line).unwrap_or("<end>")
        );
    }
}

/// Every single-byte change of `bytes` (each position XOR 0x01 and XOR 0x80), for
/// tamper tests. Also the truncations by one byte at each end and an appended byte.
pub fn mutations(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80] {
            let mut m = bytes.to_vec();
            m[i] ^= flip;
            out.push(m);
        }
    }
    if !bytes.is_empty() {
        out.push(bytes[..bytes.len() - 1].to_vec());
        out.push(bytes[1..].to_vec());
    }
    let mut ext = bytes.to_vec();
    ext.push(0);
    out.push(ext);
    out
}
