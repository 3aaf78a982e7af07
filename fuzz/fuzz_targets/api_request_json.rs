//! The JSON bodies of every route and of the WebSocket pushes (`cipherpost-api`, the types the
//! functions parse requests and the client parses answers with): arbitrary bytes never panic,
//! and a body that parses serializes to JSON that parses to the same value.
#![no_main]

use cipherpost_api::{
    AckRequest, AddMembersRequest, CreateAccountRequest, CreateAttachmentRequest,
    CreateGroupRequest, LeaveGroupRequest, LinkDeviceRequest, Push, RevokeDeviceRequest,
    SendRequest, UploadKeysRequest,
};
use libfuzzer_sys::fuzz_target;

macro_rules! check {
    ($data:expr, $($ty:ty),+) => {$(
        if let Ok(v) = serde_json::from_slice::<$ty>($data) {
            let text = serde_json::to_vec(&v).expect("serializes");
            let again: $ty = serde_json::from_slice(&text)
                .unwrap_or_else(|e| panic!("{} does not parse its own JSON: {e}", stringify!($ty)));
            assert_eq!(
                serde_json::to_value(&v).expect("a value"),
                serde_json::to_value(&again).expect("a value"),
                "{} round trip",
                stringify!($ty)
            );
        }
    )+};
}

fuzz_target!(|data: &[u8]| {
    check!(
        data,
        CreateAccountRequest,
        LinkDeviceRequest,
        RevokeDeviceRequest,
        UploadKeysRequest,
        SendRequest,
        AckRequest,
        CreateGroupRequest,
        AddMembersRequest,
        LeaveGroupRequest,
        CreateAttachmentRequest,
        Push
    );
});
