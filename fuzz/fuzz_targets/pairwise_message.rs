//! Pairwise wire messages (PreKey 0x01 and Whisper 0x02) as a receiving device meets them: the
//! type sniffing and a full decrypt attempt with real identities and prekeys, with and without
//! an established session. Nothing panics, and a refused message changes no state.
#![no_main]

use std::sync::OnceLock;

use cipherpost_protocol::{
    pairwise_message_kind, AccountChain, AccountKey, DeviceId, DeviceIdentity,
    DeviceIdentityPublic, PeerSessions, PreKeyBundle, PreKeyStore, SignedPreKey, UserId,
};
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;

struct Fixture {
    me: Vec<u8>,
    prekeys: Vec<u8>,
    peer: DeviceIdentityPublic,
    /// `PeerSessions` of `me` with `peer`, after one message from the peer.
    established: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let me = DeviceIdentity::generate(&mut OsRng);
        let peer = DeviceIdentity::generate(&mut OsRng);
        let mut store = PreKeyStore::new();
        let spk = SignedPreKey::generate(&mut OsRng, &me, 1, 0);
        let bundle_spk = spk.public();
        store.add_signed_prekey(spk, 0);
        let account = AccountKey::generate(&mut OsRng);
        let user = UserId::new("bob").expect("a valid user id");
        let device = DeviceId::new(1).expect("a valid device id");
        let bundle = PreKeyBundle {
            certificate: account.certify(&user, device, &me.public(), 0),
            signed_prekey: bundle_spk,
            one_time_prekey: None,
        };
        let k = account.public_key();
        let chain = AccountChain::verify(&user, &k, &k, &[], &[]).expect("a fresh chain");
        let mut theirs = PeerSessions::new();
        theirs
            .initiate(&mut OsRng, &peer, &chain, &bundle)
            .expect("a session to me");
        let first = theirs.encrypt(b"hello").expect("a first message");
        let mut mine = PeerSessions::new();
        let mut store_after = PreKeyStore::from_bytes(&store.to_bytes()).expect("round trip");
        mine.decrypt(&mut OsRng, &me, &mut store_after, &peer.public(), &first)
            .expect("the first message");
        Fixture {
            me: me.to_bytes().to_vec(),
            prekeys: store.to_bytes().to_vec(),
            peer: peer.public(),
            established: mine.to_bytes().to_vec(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = pairwise_message_kind(data);
    let f = fixture();
    let me = DeviceIdentity::from_bytes_versioned(&f.me).expect("fixture");
    for sessions in [&[][..], &f.established[..]] {
        let mut s = if sessions.is_empty() {
            PeerSessions::new()
        } else {
            PeerSessions::from_bytes(sessions).expect("fixture")
        };
        let mut prekeys = PreKeyStore::from_bytes(&f.prekeys).expect("fixture");
        let before = (s.to_bytes().to_vec(), prekeys.to_bytes().to_vec());
        if s.decrypt(&mut OsRng, &me, &mut prekeys, &f.peer, data)
            .is_err()
        {
            let after = (s.to_bytes().to_vec(), prekeys.to_bytes().to_vec());
            assert!(before == after, "a refused message changed the state");
        }
    }
});
