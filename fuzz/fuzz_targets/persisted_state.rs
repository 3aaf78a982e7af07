//! Every versioned persisted state (device identity, prekey store, pairwise sessions, own and
//! received sender keys): decoding arbitrary bytes never panics, and a state that decodes
//! survives a round trip (encode, decode again, encode: the same bytes).
#![no_main]

use cipherpost_protocol::{
    DeviceIdentity, GroupSenderKeys, OwnSenderKey, PeerSessions, PreKeyStore, SenderKeyRecord,
};
use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($ty:ty, $data:expr) => {
        if let Ok(v) = <$ty>::from_bytes($data) {
            let once = v.to_bytes();
            let again = <$ty>::from_bytes(&once).unwrap_or_else(|e| {
                panic!("{} does not decode its own encoding: {e}", stringify!($ty))
            });
            assert_eq!(*once, *again.to_bytes(), "{} round trip", stringify!($ty));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => {
            if let Ok(v) = DeviceIdentity::from_bytes_versioned(rest) {
                let once = v.to_bytes();
                let again = DeviceIdentity::from_bytes_versioned(&once)
                    .unwrap_or_else(|e| panic!("identity does not decode its own encoding: {e}"));
                assert_eq!(*once, *again.to_bytes());
            }
        }
        1 => round_trip!(PreKeyStore, rest),
        2 => round_trip!(PeerSessions, rest),
        3 => round_trip!(OwnSenderKey, rest),
        4 => round_trip!(SenderKeyRecord, rest),
        _ => round_trip!(GroupSenderKeys, rest),
    }
});
