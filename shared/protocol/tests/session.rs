//! Pairwise sessions: X3DH with and without a one-time prekey, the Double Ratchet, the PreKey
//! mapping rules, limits, tampering and persistence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use cipherpost_protocol::{
    consts::{MAX_SKIP, MAX_SKIPPED_KEYS},
    AccountChain, AccountKey, DecodeError, DeviceIdentity, IdentityError, PeerSessions,
    PreKeyStore, SessionError, SignedPreKey,
};
use proptest::prelude::*;
use rand_core::OsRng;
use support::{device::TestDevice, mutations};

/// Alice's sessions with Bob and Bob's with Alice.
struct Pair {
    alice: TestDevice,
    bob: TestDevice,
    a2b: PeerSessions,
    b2a: PeerSessions,
}

impl Pair {
    fn new(with_opk: bool) -> Self {
        let alice = TestDevice::new("alice", 1);
        let mut bob = TestDevice::new("bob", 7);
        let mut a2b = PeerSessions::new();
        let bundle = bob.bundle(with_opk);
        a2b.initiate(&mut OsRng, &alice.identity, &bob.chain(), &bundle)
            .unwrap();
        Self {
            alice,
            bob,
            a2b,
            b2a: PeerSessions::new(),
        }
    }

    fn deliver_to_bob(&mut self, msg: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.b2a
            .decrypt(
                &mut OsRng,
                &self.bob.identity,
                &mut self.bob.prekeys,
                &self.alice.public(),
                msg,
            )
            .map(|d| d.plaintext.to_vec())
    }

    fn deliver_to_alice(&mut self, msg: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.a2b
            .decrypt(
                &mut OsRng,
                &self.alice.identity,
                &mut self.alice.prekeys,
                &self.bob.public(),
                msg,
            )
            .map(|d| d.plaintext.to_vec())
    }
}

#[test]
fn x3dh_with_and_without_one_time_prekey() {
    for with_opk in [true, false] {
        let mut p = Pair::new(with_opk);
        assert!(p.a2b.awaiting_reply());
        let m1 = p.a2b.encrypt(b"hello bob").unwrap();
        assert_eq!(m1[0], 0x02, "first message is a PreKey message");
        let before = p.bob.prekeys.one_time_prekey_count();
        let d = p
            .b2a
            .decrypt(
                &mut OsRng,
                &p.bob.identity,
                &mut p.bob.prekeys,
                &p.alice.public(),
                &m1,
            )
            .unwrap();
        assert_eq!(&d.plaintext[..], b"hello bob");
        assert!(d.new_session);
        assert_eq!(d.consumed_one_time_prekey.is_some(), with_opk);
        // The one-time prekey's private key is deleted once the first message decrypts.
        assert_eq!(
            p.bob.prekeys.one_time_prekey_count(),
            before - usize::from(with_opk)
        );
        // Alice keeps sending PreKey messages until she hears back.
        let m2 = p.a2b.encrypt(b"again").unwrap();
        assert_eq!(m2[0], 0x02);
        assert_eq!(p.deliver_to_bob(&m2).unwrap(), b"again");
        let r = p.b2a.encrypt(b"hi alice").unwrap();
        assert_eq!(r[0], 0x01);
        assert_eq!(p.deliver_to_alice(&r).unwrap(), b"hi alice");
        assert!(!p.a2b.awaiting_reply());
        let m3 = p.a2b.encrypt(b"now whisper").unwrap();
        assert_eq!(m3[0], 0x01);
        assert_eq!(p.deliver_to_bob(&m3).unwrap(), b"now whisper");
    }
}

#[test]
fn responder_cannot_send_first() {
    let bob = TestDevice::new("bob", 7);
    let mut empty = PeerSessions::new();
    assert_eq!(empty.encrypt(b"x"), Err(SessionError::NoSession));
    drop(bob);
}

#[test]
fn bundle_checks_refuse_bad_certificate_prekey_signature_and_revoked_device() {
    let alice = TestDevice::new("alice", 1);
    let mut bob = TestDevice::new("bob", 7);
    let bundle = bob.bundle(true);

    // Certificate under another account key (a server adding a device of its own).
    let mallory = AccountKey::generate(&mut OsRng);
    let mut forged = bundle.clone();
    forged.certificate = mallory.certify(&bob.user, bob.device_id, &bob.public(), 1);
    let r = PeerSessions::new().initiate(&mut OsRng, &alice.identity, &bob.chain(), &forged);
    assert_eq!(
        r,
        Err(SessionError::Identity(IdentityError::BadSignature(
            "device certificate"
        )))
    );

    // Signed prekey swapped by the server.
    let mut swapped = bundle.clone();
    swapped.signed_prekey =
        SignedPreKey::generate(&mut OsRng, &DeviceIdentity::generate(&mut OsRng), 1, 0).public();
    let r = PeerSessions::new().initiate(&mut OsRng, &alice.identity, &bob.chain(), &swapped);
    assert_eq!(
        r,
        Err(SessionError::Identity(IdentityError::BadSignature(
            "signed prekey"
        )))
    );

    // A revoked device that the server keeps listing.
    let k = bob.account.public_key();
    let rev = bob
        .account
        .revoke(&bob.user, bob.device_id, &bob.public().signing, 5);
    let chain = AccountChain::verify(&bob.user, &k, &k, &[], &[rev]).unwrap();
    let r = PeerSessions::new().initiate(&mut OsRng, &alice.identity, &chain, &bundle);
    assert!(matches!(
        r,
        Err(SessionError::Identity(IdentityError::BadSignature(_)))
    ));
}

#[test]
fn all_zero_dh_from_a_small_order_prekey_is_refused() {
    let alice = TestDevice::new("alice", 1);
    let mut bob = TestDevice::new("bob", 7);
    // Bob's device itself signs a small-order point as its signed prekey (a malicious peer).
    let mut bundle = bob.bundle(false);
    let low = [0u8; 32];
    let store_bytes = {
        // Sign the low-order key with Bob's identity through a prekey made from its bytes is not
        // possible (X25519 clamps secrets), so sign the message directly.
        let mut msg = b"cipherpost/spk/v1".to_vec();
        msg.extend_from_slice(&1u32.to_be_bytes());
        msg.extend_from_slice(&low);
        bob.identity.sign(&msg)
    };
    bundle.signed_prekey.key = low.into();
    bundle.signed_prekey.signature = store_bytes;
    let r = PeerSessions::new().initiate(&mut OsRng, &alice.identity, &bob.chain(), &bundle);
    assert_eq!(r, Err(SessionError::LowOrderPoint("signed prekey")));
}

#[test]
fn out_of_order_and_replay() {
    let mut p = Pair::new(true);
    let first = p.a2b.encrypt(b"0").unwrap();
    p.deliver_to_bob(&first).unwrap();
    let reply = p.b2a.encrypt(b"r").unwrap();
    p.deliver_to_alice(&reply).unwrap();
    let msgs: Vec<Vec<u8>> = (1..=5).map(|i| p.a2b.encrypt(&[i]).unwrap()).collect();
    for i in [4usize, 0, 2, 1, 3] {
        assert_eq!(p.deliver_to_bob(&msgs[i]).unwrap(), vec![i as u8 + 1]);
    }
    // Every one of them replayed is refused, and nothing changes.
    let before = p.b2a.to_bytes();
    for m in &msgs {
        let e = p.deliver_to_bob(m).unwrap_err();
        assert!(matches!(e, SessionError::Replay { .. }), "{e:?}");
    }
    assert_eq!(*before, *p.b2a.to_bytes());
}

#[test]
fn skip_limit_is_enforced_without_state_change() {
    let mut p = Pair::new(false);
    let first = p.a2b.encrypt(b"first").unwrap();
    p.deliver_to_bob(&first).unwrap();
    let mut msgs = Vec::new();
    for _ in 0..=MAX_SKIP + 1 {
        msgs.push(p.a2b.encrypt(b"m").unwrap());
    }
    let before = p.b2a.to_bytes();
    // Message n = MAX_SKIP + 2 needs MAX_SKIP + 1 skipped keys: refused.
    let e = p.deliver_to_bob(msgs.last().unwrap()).unwrap_err();
    assert!(matches!(e, SessionError::TooManySkipped { .. }), "{e:?}");
    assert_eq!(*before, *p.b2a.to_bytes());
    // Exactly MAX_SKIP skipped is fine.
    p.deliver_to_bob(&msgs[msgs.len() - 2]).unwrap();
    assert_eq!(p.b2a.counters().unwrap().3, MAX_SKIP as usize);
    // Skipped keys are capped: earliest dropped first.
    let more: Vec<_> = (0..10).map(|_| p.a2b.encrypt(b"m").unwrap()).collect();
    p.deliver_to_bob(more.last().unwrap()).unwrap();
    assert_eq!(p.b2a.counters().unwrap().3, MAX_SKIPPED_KEYS);
    // The earliest skipped message's key was dropped: now a replay.
    assert!(matches!(
        p.deliver_to_bob(&msgs[0]).unwrap_err(),
        SessionError::Replay { .. }
    ));
    // A later skipped one still opens.
    assert_eq!(p.deliver_to_bob(&msgs[100]).unwrap(), b"m");
}

#[test]
fn every_single_byte_change_is_rejected_and_the_genuine_message_still_decrypts() {
    let mut p = Pair::new(true);
    let prekey_msg = p.a2b.encrypt(b"prekey message").unwrap();
    for bad in mutations(&prekey_msg) {
        let before = (p.b2a.to_bytes(), p.bob.prekeys.to_bytes());
        assert!(p.deliver_to_bob(&bad).is_err());
        assert_eq!(
            (before.0.to_vec(), before.1.to_vec()),
            (p.b2a.to_bytes().to_vec(), p.bob.prekeys.to_bytes().to_vec())
        );
    }
    assert_eq!(p.deliver_to_bob(&prekey_msg).unwrap(), b"prekey message");
    let reply = p.b2a.encrypt(b"whisper with ratchet step").unwrap();
    for bad in mutations(&reply) {
        let before = p.a2b.to_bytes();
        assert!(p.deliver_to_alice(&bad).is_err());
        assert_eq!(*before, *p.a2b.to_bytes());
    }
    assert_eq!(
        p.deliver_to_alice(&reply).unwrap(),
        b"whisper with ratchet step"
    );
    let same_chain = p.b2a.encrypt(b"same chain").unwrap();
    for bad in mutations(&same_chain) {
        assert!(p.deliver_to_alice(&bad).is_err());
    }
    assert_eq!(p.deliver_to_alice(&same_chain).unwrap(), b"same chain");
}

#[test]
fn prekey_message_mapping_and_old_sessions() {
    let mut p = Pair::new(true);
    let m1 = p.a2b.encrypt(b"one").unwrap();
    p.deliver_to_bob(&m1).unwrap();
    // The same EK_A goes to the existing session, not a new one.
    let m2 = p.a2b.encrypt(b"two").unwrap();
    p.deliver_to_bob(&m2).unwrap();
    assert_eq!(p.b2a.session_count(), 1);
    // A replay of the first PreKey message on the known session is a replay, not a new session.
    assert!(matches!(
        p.deliver_to_bob(&m1).unwrap_err(),
        SessionError::Replay { .. }
    ));

    // Alice starts over (lost state): a new session; Bob keeps the old one for decryption.
    let late_on_old = p.a2b.encrypt(b"late on old").unwrap();
    let bundle = p.bob.bundle(true);
    p.a2b
        .initiate(&mut OsRng, &p.alice.identity, &p.bob.chain(), &bundle)
        .unwrap();
    let fresh = p.a2b.encrypt(b"fresh").unwrap();
    let d = p
        .b2a
        .decrypt(
            &mut OsRng,
            &p.bob.identity,
            &mut p.bob.prekeys,
            &p.alice.public(),
            &fresh,
        )
        .unwrap();
    assert!(d.new_session);
    assert_eq!(p.b2a.session_count(), 2);
    // The late message on the old session still decrypts...
    assert_eq!(p.deliver_to_bob(&late_on_old).unwrap(), b"late on old");
    // ...and makes it the session Bob sends on, since it most recently decrypted.
    let on_old = p.b2a.encrypt(b"reply on old").unwrap();
    assert_eq!(p.deliver_to_alice(&on_old).unwrap(), b"reply on old");

    // A PreKey message whose (spk_id, EK_A) already built a session that was since dropped
    // never builds a second one.
    let mut bob_fresh = PeerSessions::new();
    let e = bob_fresh
        .decrypt(
            &mut OsRng,
            &p.bob.identity,
            &mut p.bob.prekeys,
            &p.alice.public(),
            &m1,
        )
        .unwrap_err();
    assert_eq!(e, SessionError::PreKeyReuse);

    // At most five older sessions are kept.
    for _ in 0..7 {
        let b = p.bob.bundle(true);
        p.a2b
            .initiate(&mut OsRng, &p.alice.identity, &p.bob.chain(), &b)
            .unwrap();
        let m = p.a2b.encrypt(b"again").unwrap();
        p.deliver_to_bob(&m).unwrap();
    }
    assert_eq!(p.b2a.session_count(), 6);
}

#[test]
fn prekey_message_from_wrong_identity_or_unknown_prekeys_is_refused() {
    let mut p = Pair::new(true);
    let m = p.a2b.encrypt(b"x").unwrap();
    let eve = TestDevice::new("eve", 3);
    let e = p
        .b2a
        .decrypt(
            &mut OsRng,
            &p.bob.identity,
            &mut p.bob.prekeys,
            &eve.public(),
            &m,
        )
        .unwrap_err();
    assert_eq!(e, SessionError::IdentityMismatch);
    // Bob lost the prekeys the message names.
    let mut empty = PreKeyStore::new();
    let e = PeerSessions::new()
        .decrypt(
            &mut OsRng,
            &p.bob.identity,
            &mut empty,
            &p.alice.public(),
            &m,
        )
        .unwrap_err();
    assert_eq!(e, SessionError::UnknownSignedPreKey(1));
}

#[test]
fn persistence_round_trip_and_version_check() {
    let mut p = Pair::new(true);
    let m = p.a2b.encrypt(b"a").unwrap();
    p.deliver_to_bob(&m).unwrap();
    let skipped = p.a2b.encrypt(b"skipped").unwrap();
    let m = p.a2b.encrypt(b"b").unwrap();
    p.deliver_to_bob(&m).unwrap();
    // Restore both sides and the prekey store from bytes and carry on.
    p.b2a = PeerSessions::from_bytes(&p.b2a.to_bytes()).unwrap();
    p.a2b = PeerSessions::from_bytes(&p.a2b.to_bytes()).unwrap();
    p.bob.prekeys = PreKeyStore::from_bytes(&p.bob.prekeys.to_bytes()).unwrap();
    assert_eq!(p.deliver_to_bob(&skipped).unwrap(), b"skipped");
    let r = p.b2a.encrypt(b"r").unwrap();
    assert_eq!(p.deliver_to_alice(&r).unwrap(), b"r");
    assert_eq!(
        p.b2a.to_bytes().to_vec(),
        PeerSessions::from_bytes(&p.b2a.to_bytes())
            .unwrap()
            .to_bytes()
            .to_vec()
    );

    let mut bytes = p.b2a.to_bytes().to_vec();
    bytes[0] = 2;
    assert_eq!(
        PeerSessions::from_bytes(&bytes).unwrap_err(),
        DecodeError::UnsupportedVersion {
            what: "peer sessions",
            found: 2,
            supported: 1
        }
    );
    let mut bytes = p.bob.prekeys.to_bytes().to_vec();
    bytes[0] = 9;
    assert!(matches!(
        PreKeyStore::from_bytes(&bytes),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    let mut bytes = p.bob.identity.to_bytes().to_vec();
    bytes[0] = 0;
    assert!(matches!(
        DeviceIdentity::from_bytes_versioned(&bytes),
        Err(DecodeError::UnsupportedVersion { .. })
    ));
    // Truncated state is refused with a clear error, never a panic.
    let full = p.b2a.to_bytes();
    for len in [1, 10, 100, full.len() - 1] {
        assert!(PeerSessions::from_bytes(&full[..len]).is_err());
    }
}

#[test]
fn debug_output_holds_no_secret_bytes() {
    let p = {
        let mut p = Pair::new(true);
        let m = p.a2b.encrypt(b"a").unwrap();
        p.deliver_to_bob(&m).unwrap();
        p
    };
    let identity_bytes = p.alice.identity.to_bytes();
    let secrets = [
        hex::encode(&identity_bytes[1..33]),
        hex::encode(&identity_bytes[33..65]),
        hex::encode(&p.alice.account.to_bytes()[..]),
    ];
    let debug = [
        format!("{:?}", p.alice.identity),
        format!("{:?}", p.alice.account),
        format!("{:?}", p.a2b),
        format!("{:?}", p.b2a),
        format!("{:?}", p.bob.prekeys),
        format!("{:?}", p.bob.prekeys.current_signed_prekey().unwrap()),
        format!(
            "{:?}",
            cipherpost_protocol::DhSecret::from_bytes(&[9u8; 32])
        ),
    ];
    for d in &debug {
        for s in &secrets {
            // Even 8 bytes of a secret in hex would be a leak.
            assert!(!d.contains(&s[..16]), "{d}");
        }
        assert!(!d.contains(&hex::encode([9u8; 8])), "{d}");
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A sends a message (queued, not yet delivered).
    AliceSends,
    BobSends,
    /// Deliver the queued message at this index (modulo the queue length) to its receiver.
    Deliver(usize),
    /// Drop the queued message at this index.
    Drop(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::AliceSends),
        3 => Just(Step::BobSends),
        4 => any::<usize>().prop_map(Step::Deliver),
        1 => any::<usize>().prop_map(Step::Drop),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any interleaving of sends, deliveries, drops and reorders (within the skip limit)
    /// decrypts exactly what was sent, once.
    #[test]
    fn any_interleaving_decrypts_exactly_what_was_sent(steps in prop::collection::vec(step(), 1..120)) {
        let mut p = Pair::new(true);
        // Bob cannot send before he has received: start with one delivered message.
        let first = p.a2b.encrypt(b"start").unwrap();
        p.deliver_to_bob(&first).unwrap();
        let mut queue: Vec<(bool, Vec<u8>, Vec<u8>)> = Vec::new(); // (deliver_to_bob, wire, plaintext)
        let mut counter = 0u32;
        for s in steps {
            match s {
                Step::AliceSends | Step::BobSends => {
                    counter += 1;
                    let pt = counter.to_be_bytes().to_vec();
                    let deliver_to_bob = matches!(s, Step::AliceSends);
                    let wire = if deliver_to_bob { p.a2b.encrypt(&pt) } else { p.b2a.encrypt(&pt) }.unwrap();
                    queue.push((deliver_to_bob, wire, pt));
                }
                Step::Deliver(i) if !queue.is_empty() => {
                    let (deliver_to_bob, wire, pt) = queue.remove(i % queue.len());
                    let got = if deliver_to_bob { p.deliver_to_bob(&wire) } else { p.deliver_to_alice(&wire) };
                    prop_assert_eq!(got.unwrap(), pt.clone());
                    // Delivered twice: refused.
                    let again = if deliver_to_bob { p.deliver_to_bob(&wire) } else { p.deliver_to_alice(&wire) };
                    prop_assert!(again.is_err());
                }
                Step::Drop(i) if !queue.is_empty() => {
                    queue.remove(i % queue.len());
                }
                _ => {}
            }
        }
        // Whatever is still queued also decrypts, in reverse order.
        while let Some((deliver_to_bob, wire, pt)) = queue.pop() {
            let got = if deliver_to_bob { p.deliver_to_bob(&wire) } else { p.deliver_to_alice(&wire) };
            prop_assert_eq!(got.unwrap(), pt);
        }
    }
}
