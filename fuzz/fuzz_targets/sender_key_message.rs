//! Group (sender-key) messages and distributions: the server's header parse, the distribution
//! decoder, and a receiver holding one real sender key that processes the input as a
//! distribution and decrypts it as a message. Nothing panics; a header the server accepts has
//! the framing PROTOCOL.md "Sender keys" describes.
#![no_main]

use std::sync::OnceLock;

use cipherpost_protocol::{
    DeviceAddress, DeviceId, GroupId, GroupSenderKeys, MessageId, OwnSenderKey,
    SenderKeyDistribution, SenderKeyMessageHeader, UserId,
};
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;

struct Fixture {
    sender: DeviceAddress,
    distribution: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let sender = DeviceAddress::new(
            UserId::new("alice").expect("a valid user id"),
            DeviceId::new(1).expect("a valid device id"),
        );
        let own = OwnSenderKey::generate(&mut OsRng, GroupId([7; 16]), sender.clone());
        let distribution = own.distribution().to_vec();
        Fixture {
            sender,
            distribution,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SenderKeyMessageHeader::parse(data) {
        // hdr (1 + 16 + 2 + user + 4 + 4 + 4 + 16), at least one pad block, tag, signature.
        let hdr = 1 + 16 + 2 + h.sender.user_id.as_str().len() + 4 + 4 + 4 + 16;
        assert!(data.len() >= hdr + 160 + 16 + 64, "a short message passed");
        assert_eq!(
            (data.len() - hdr - 16 - 64) % 160,
            0,
            "an unpadded message passed"
        );
    }
    let _ = SenderKeyDistribution::from_bytes(data);
    let f = fixture();
    let mut receiver = GroupSenderKeys::new();
    receiver
        .process_distribution(&f.sender, &f.distribution, 0)
        .expect("its own distribution");
    let _ = receiver.process_distribution(&f.sender, data, 0);
    let _ = receiver.decrypt(&f.sender, &MessageId([0; 16]), data, 0);
});
