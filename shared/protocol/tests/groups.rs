//! Sender keys (PROTOCOL.md, "Sender keys"): distribution, out-of-order delivery, replay,
//! forward-jump and cache limits, tampering, forged signatures, header checks, rotation,
//! persistence, `Debug` hygiene, and the `sender_key.json` test vector.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use cipherpost_protocol::{
    consts::{
        DAY_MS, MAX_OLD_SENDER_KEYS, MAX_SENDER_KEY_JUMP, MAX_SENDER_KEY_SKIPPED,
        OLD_SENDER_KEY_KEEP_MS,
    },
    pad, BodyError, DecodeError, DeviceAddress, DeviceId, DistributionOutcome, GroupId,
    GroupSenderKeys, MessageId, OwnSenderKey, SenderKeyDistribution, SenderKeyError,
    SenderKeyMessageHeader, SenderKeyRecord, SigningSecret, UserId,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde_json::{json, Value};
use support::{check_vectors, hx, mutations, reference as re, Inputs, Kind};

const NOW: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const LABEL: &[u8] = b"cipherpost/senderkey/msg/v1";

fn addr(user: &str, device: u32) -> DeviceAddress {
    DeviceAddress::new(UserId::new(user).unwrap(), DeviceId::new(device).unwrap())
}

fn alice() -> DeviceAddress {
    addr("alice", 7)
}

fn mid(i: u8) -> MessageId {
    MessageId([i; 16])
}

/// Alice's fresh sender key and Bob's store holding its distribution.
fn setup() -> (OwnSenderKey, GroupSenderKeys) {
    let own = OwnSenderKey::generate(&mut OsRng, GroupId::generate(&mut OsRng), alice());
    let mut bob = GroupSenderKeys::new();
    assert_eq!(
        bob.process_distribution(&alice(), &own.distribution(), NOW)
            .unwrap(),
        DistributionOutcome::Stored
    );
    (own, bob)
}

/// Encrypts `n` messages `"message {i}"` with ids `mid(i)`, from the current iteration on.
fn send(own: &mut OwnSenderKey, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let i = own.iteration();
            own.encrypt(&mid(i as u8), format!("message {i}").as_bytes())
                .unwrap()
        })
        .collect()
}

fn decrypt(store: &mut GroupSenderKeys, wire: &[u8], i: u32) -> Result<String, SenderKeyError> {
    decrypt_at(store, wire, i, NOW)
}

fn decrypt_at(
    store: &mut GroupSenderKeys,
    wire: &[u8],
    i: u32,
    now_ms: u64,
) -> Result<String, SenderKeyError> {
    store
        .decrypt(&alice(), &mid(i as u8), wire, now_ms)
        .map(|m| String::from_utf8(m.content.to_vec()).unwrap())
}

/// Offsets in the persisted [`OwnSenderKey`]: version, group id, sender, key id, then these.
struct OwnLayout {
    iteration: usize,
    chain_key: usize,
    seed: usize,
}

fn own_layout(own: &OwnSenderKey) -> OwnLayout {
    let iteration = 1 + 16 + 2 + own.sender().user_id.as_str().len() + 4 + 4;
    OwnLayout {
        iteration,
        chain_key: iteration + 4,
        seed: iteration + 36,
    }
}

fn chain_key(own: &OwnSenderKey) -> [u8; 32] {
    let l = own_layout(own);
    own.to_bytes()[l.chain_key..l.chain_key + 32]
        .try_into()
        .unwrap()
}

fn seed(own: &OwnSenderKey) -> [u8; 32] {
    let l = own_layout(own);
    own.to_bytes()[l.seed..l.seed + 32].try_into().unwrap()
}

/// The same sender key moved forward to iteration `n` with the reference KDF, without
/// encrypting the messages in between (what it would send at `n` is what it sends).
fn at_iteration(own: &OwnSenderKey, n: u32) -> OwnSenderKey {
    assert!(n >= own.iteration());
    let mut ck = chain_key(own);
    for _ in own.iteration()..n {
        ck = re::hmac(&ck, &[0x02]);
    }
    let l = own_layout(own);
    let mut bytes = own.to_bytes().to_vec();
    bytes[l.iteration..l.iteration + 4].copy_from_slice(&n.to_be_bytes());
    bytes[l.chain_key..l.chain_key + 32].copy_from_slice(&ck);
    OwnSenderKey::from_bytes(&bytes).unwrap()
}

fn message_at(own: &OwnSenderKey, n: u32) -> Vec<u8> {
    at_iteration(own, n)
        .encrypt(&mid(n as u8), format!("message {n}").as_bytes())
        .unwrap()
}

#[test]
fn round_trip() {
    let (mut own, mut bob) = setup();
    let dist = SenderKeyDistribution::from_bytes(&own.distribution()).unwrap();
    assert_eq!(dist.group_id(), own.group_id());
    assert_eq!(dist.sender(), &alice());
    assert_eq!(dist.key_id(), own.key_id());
    assert_eq!(dist.iteration(), 0);
    assert_eq!(dist.signing_key(), own.signing_key());

    let wire = own.encrypt(&mid(0), b"hello group").unwrap();
    assert_eq!(own.iteration(), 1);
    let m = bob.decrypt(&alice(), &mid(0), &wire, NOW).unwrap();
    assert_eq!(&m.content[..], b"hello group");
    assert_eq!(
        (m.group_id, m.sender.clone(), m.key_id, m.iteration),
        (own.group_id(), alice(), own.key_id(), 0)
    );
    assert!(!format!("{m:?}").contains("hello"));

    let record = bob.record(&own.group_id(), &alice()).unwrap();
    assert_eq!(record.key_id(), own.key_id());
    assert_eq!(record.key_ids(), vec![own.key_id()]);
    assert_eq!(record.group_id(), own.group_id());
    assert_eq!(record.sender(), &alice());

    // Empty and maximum-size content.
    let wire = own.encrypt(&mid(1), b"").unwrap();
    assert_eq!(decrypt(&mut bob, &wire, 1).unwrap(), "");
    let big = vec![b'x'; 98_304];
    let wire = own.encrypt(&mid(2), &big).unwrap();
    assert_eq!(
        bob.decrypt(&alice(), &mid(2), &wire, NOW)
            .unwrap()
            .content
            .len(),
        big.len()
    );
    let too_big = vec![b'x'; 98_305];
    assert!(matches!(
        own.encrypt(&mid(3), &too_big),
        Err(SenderKeyError::Body(BodyError::TooLarge { .. }))
    ));
    assert_eq!(
        own.iteration(),
        3,
        "a refused encryption does not advance the chain"
    );
}

#[test]
fn deliveries_in_order_0_1_3_4_2() {
    let (mut own, mut bob) = setup();
    let wires = send(&mut own, 5);
    for i in [0u32, 1, 3, 4, 2] {
        assert_eq!(
            decrypt(&mut bob, &wires[i as usize], i).unwrap(),
            format!("message {i}")
        );
    }
    // Every key was used once: everything is now a replay.
    for i in 0..5u32 {
        assert_eq!(
            decrypt(&mut bob, &wires[i as usize], i),
            Err(SenderKeyError::Replay(i))
        );
    }
}

#[test]
fn replay_is_refused() {
    let (mut own, mut bob) = setup();
    let wires = send(&mut own, 3);
    decrypt(&mut bob, &wires[0], 0).unwrap();
    assert_eq!(
        decrypt(&mut bob, &wires[0], 0),
        Err(SenderKeyError::Replay(0))
    );
    // A skipped key is usable once.
    decrypt(&mut bob, &wires[2], 2).unwrap();
    assert_eq!(
        decrypt(&mut bob, &wires[2], 2),
        Err(SenderKeyError::Replay(2))
    );
    decrypt(&mut bob, &wires[1], 1).unwrap();
    assert_eq!(
        decrypt(&mut bob, &wires[1], 1),
        Err(SenderKeyError::Replay(1))
    );
}

#[test]
fn jump_beyond_25000_is_refused_without_state_change() {
    let (own, mut bob) = setup();
    let genuine = message_at(&own, 0);
    let far = message_at(&own, MAX_SENDER_KEY_JUMP + 1);
    let before = bob.to_bytes();
    assert_eq!(
        decrypt(&mut bob, &far, MAX_SENDER_KEY_JUMP + 1),
        Err(SenderKeyError::TooFarAhead {
            jump: MAX_SENDER_KEY_JUMP + 1,
            max: MAX_SENDER_KEY_JUMP
        })
    );
    assert_eq!(bob.to_bytes(), before);
    // The next genuine message still decrypts; after it the same message is exactly 25000 ahead.
    assert_eq!(decrypt(&mut bob, &genuine, 0).unwrap(), "message 0");
    assert_eq!(
        decrypt(&mut bob, &far, MAX_SENDER_KEY_JUMP + 1).unwrap(),
        "message 25001"
    );
    // Only the last 2000 of the 25000 skipped keys were kept.
    let earliest = MAX_SENDER_KEY_JUMP + 1 - MAX_SENDER_KEY_SKIPPED as u32;
    assert_eq!(
        decrypt(&mut bob, &message_at(&own, earliest - 1), earliest - 1),
        Err(SenderKeyError::Replay(earliest - 1))
    );
    assert_eq!(
        decrypt(&mut bob, &message_at(&own, earliest), earliest).unwrap(),
        format!("message {earliest}")
    );
}

#[test]
fn skipped_key_cache_keeps_the_latest_2000() {
    let (own, mut bob) = setup();
    let n = MAX_SENDER_KEY_SKIPPED as u32;
    // Message 2001 skips 0..=2000: 2001 keys, the earliest (0) is dropped.
    assert_eq!(
        decrypt(&mut bob, &message_at(&own, n + 1), n + 1).unwrap(),
        format!("message {}", n + 1)
    );
    assert!(format!("{bob:?}").contains("skipped_keys: 2000"));
    assert_eq!(
        decrypt(&mut bob, &message_at(&own, 0), 0),
        Err(SenderKeyError::Replay(0))
    );
    // Two more skipped keys (2002, 2003) push out the earliest stored ones (1, 2).
    assert_eq!(
        decrypt(&mut bob, &message_at(&own, n + 4), n + 4).unwrap(),
        format!("message {}", n + 4)
    );
    assert!(format!("{bob:?}").contains("skipped_keys: 2000"));
    for i in [1, 2] {
        assert_eq!(
            decrypt(&mut bob, &message_at(&own, i), i),
            Err(SenderKeyError::Replay(i))
        );
    }
    for i in [3, n, n + 2, n + 3] {
        assert_eq!(
            decrypt(&mut bob, &message_at(&own, i), i).unwrap(),
            format!("message {i}")
        );
    }
    assert!(format!("{bob:?}").contains("skipped_keys: 1996"));
}

#[test]
fn every_single_byte_change_is_refused_then_the_genuine_message_decrypts() {
    let (mut own, mut bob) = setup();
    let wire = own.encrypt(&mid(0), b"tamper with me").unwrap();
    let before = bob.to_bytes();
    for m in mutations(&wire) {
        let err = bob.decrypt(&alice(), &mid(0), &m, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                SenderKeyError::BadSignature
                    | SenderKeyError::UnknownKey { .. }
                    | SenderKeyError::Decode(_)
            ),
            "unexpected {err:?}"
        );
        assert_eq!(bob.to_bytes(), before);
    }
    assert_eq!(
        &bob.decrypt(&alice(), &mid(0), &wire, NOW).unwrap().content[..],
        b"tamper with me"
    );
}

#[test]
fn signature_by_another_key_is_refused() {
    let (mut own, mut bob) = setup();
    let initial = OwnSenderKey::from_bytes(&own.to_bytes()).unwrap();
    let wire = own.encrypt(&mid(0), b"genuine").unwrap();
    let m = &wire[..wire.len() - 64];
    // Same key id and chain (the attacker knows the distribution), attacker's SKs.
    let attacker = SigningSecret::generate(&mut OsRng);
    let mut forged = m.to_vec();
    forged.extend_from_slice(&attacker.sign(m).to_bytes());
    let before = bob.to_bytes();
    assert_eq!(
        bob.decrypt(&alice(), &mid(0), &forged, NOW).unwrap_err(),
        SenderKeyError::BadSignature
    );
    assert_eq!(bob.to_bytes(), before);

    // A whole attacker state with alice's key id and chain key but its own SKs, distributed
    // over alice's session, is ignored: the (group, sender, key id) is already held.
    let l = own_layout(&own);
    let mut bytes = initial.to_bytes().to_vec();
    bytes[l.seed..l.seed + 32].copy_from_slice(&[9u8; 32]);
    let mut evil = OwnSenderKey::from_bytes(&bytes).unwrap();
    assert_eq!(
        bob.process_distribution(&alice(), &evil.distribution(), NOW)
            .unwrap(),
        DistributionOutcome::AlreadyHeld
    );
    let evil_wire = evil.encrypt(&mid(0), b"forged").unwrap();
    assert_eq!(
        bob.decrypt(&alice(), &mid(0), &evil_wire, NOW).unwrap_err(),
        SenderKeyError::BadSignature
    );
    assert_eq!(bob.to_bytes(), before);
    assert_eq!(decrypt(&mut bob, &wire, 0).unwrap(), "genuine");
}

#[test]
fn header_must_match_the_delivery() {
    let (mut own, mut bob) = setup();
    let wire = own.encrypt(&mid(0), b"hi").unwrap();
    let before = bob.to_bytes();
    assert_eq!(
        bob.decrypt(&addr("mallory", 7), &mid(0), &wire, NOW)
            .unwrap_err(),
        SenderKeyError::HeaderMismatch("sender")
    );
    assert_eq!(
        bob.decrypt(&addr("alice", 8), &mid(0), &wire, NOW)
            .unwrap_err(),
        SenderKeyError::HeaderMismatch("sender")
    );
    assert_eq!(
        bob.decrypt(&alice(), &mid(1), &wire, NOW).unwrap_err(),
        SenderKeyError::HeaderMismatch("message id")
    );
    assert_eq!(bob.to_bytes(), before);
    assert_eq!(decrypt(&mut bob, &wire, 0).unwrap(), "hi");
}

#[test]
fn unknown_group_sender_or_key_is_refused() {
    let (mut own, _) = setup();
    let wire = own.encrypt(&mid(0), b"hi").unwrap();
    let mut carol = GroupSenderKeys::new();
    assert_eq!(
        decrypt(&mut carol, &wire, 0),
        Err(SenderKeyError::UnknownKey {
            key_id: own.key_id()
        })
    );
    // Holding another group's key of the same sender does not help.
    let other = OwnSenderKey::generate(&mut OsRng, GroupId::generate(&mut OsRng), alice());
    carol
        .process_distribution(&alice(), &other.distribution(), NOW)
        .unwrap();
    assert_eq!(
        decrypt(&mut carol, &wire, 0),
        Err(SenderKeyError::UnknownKey {
            key_id: own.key_id()
        })
    );
    // Not a group message.
    assert!(matches!(
        carol.decrypt(&alice(), &mid(0), &[0x01; 200], NOW),
        Err(SenderKeyError::Decode(DecodeError::UnknownType {
            found: 0x01,
            ..
        }))
    ));
}

#[test]
fn distribution_from_the_wrong_device_is_refused() {
    let own = OwnSenderKey::generate(&mut OsRng, GroupId::generate(&mut OsRng), alice());
    let mut bob = GroupSenderKeys::new();
    for from in [addr("carol", 7), addr("alice", 8)] {
        assert_eq!(
            bob.process_distribution(&from, &own.distribution(), NOW),
            Err(SenderKeyError::WrongDistributor)
        );
    }
    assert!(bob.record(&own.group_id(), &alice()).is_none());
    assert!(matches!(
        bob.process_distribution(&alice(), &own.distribution()[1..], NOW),
        Err(SenderKeyError::Decode(_))
    ));
}

#[test]
fn distribution_already_held_is_ignored() {
    let (mut own, mut bob) = setup();
    let first = own.distribution();
    let wires = send(&mut own, 3);
    decrypt(&mut bob, &wires[2], 2).unwrap();
    decrypt(&mut bob, &wires[1], 1).unwrap();
    let before = bob.to_bytes();
    // Neither the old distribution (iteration 0) nor a newer one of the same key changes
    // anything: replays stay refused.
    for d in [first, own.distribution()] {
        assert_eq!(
            bob.process_distribution(&alice(), &d, NOW).unwrap(),
            DistributionOutcome::AlreadyHeld
        );
        assert_eq!(bob.to_bytes(), before);
    }
    assert_eq!(
        decrypt(&mut bob, &wires[1], 1),
        Err(SenderKeyError::Replay(1))
    );
    assert_eq!(decrypt(&mut bob, &wires[0], 0).unwrap(), "message 0");
}

#[test]
fn new_member_reads_from_the_current_iteration_only() {
    let (mut own, _) = setup();
    let early = send(&mut own, 3);
    let mut dave = GroupSenderKeys::new();
    dave.process_distribution(&alice(), &own.distribution(), NOW)
        .unwrap();
    assert_eq!(
        decrypt(&mut dave, &early[2], 2),
        Err(SenderKeyError::Replay(2))
    );
    let later = send(&mut own, 1);
    assert_eq!(decrypt(&mut dave, &later[0], 3).unwrap(), "message 3");
}

#[test]
fn rotation_locks_out_a_removed_member() {
    let (mut own, mut bob) = setup();
    let mut carol = GroupSenderKeys::new();
    carol
        .process_distribution(&alice(), &own.distribution(), NOW)
        .unwrap();
    let old_key = own.key_id();
    let old = send(&mut own, 3);
    decrypt(&mut bob, &old[0], 0).unwrap();
    decrypt(&mut carol, &old[0], 0).unwrap();

    // Carol is removed: alice rotates and distributes to bob only.
    let mut rotated = own.rotate(&mut OsRng);
    assert_ne!(rotated.key_id(), old_key);
    assert_eq!(
        (rotated.group_id(), rotated.sender(), rotated.iteration()),
        (own.group_id(), &alice(), 0)
    );
    assert_ne!(rotated.signing_key(), own.signing_key());
    assert_eq!(
        bob.process_distribution(&alice(), &rotated.distribution(), NOW + 1)
            .unwrap(),
        DistributionOutcome::Stored
    );
    assert_eq!(
        bob.record(&own.group_id(), &alice()).unwrap().key_ids(),
        vec![rotated.key_id(), old_key]
    );
    let new = send(&mut rotated, 2);

    assert_eq!(
        decrypt(&mut carol, &new[0], 0),
        Err(SenderKeyError::UnknownKey {
            key_id: rotated.key_id()
        })
    );
    assert_eq!(decrypt(&mut bob, &new[0], 0).unwrap(), "message 0");
    // Late messages under the old key still decrypt for members (carol too: she held it).
    assert_eq!(decrypt(&mut bob, &old[1], 1).unwrap(), "message 1");
    assert_eq!(decrypt(&mut carol, &old[1], 1).unwrap(), "message 1");

    // Thirty days after the rotation the old state is gone.
    let expired = NOW + 1 + OLD_SENDER_KEY_KEEP_MS + 1;
    assert_eq!(OLD_SENDER_KEY_KEEP_MS, 30 * DAY_MS);
    let before = bob.to_bytes();
    assert_eq!(
        decrypt_at(&mut bob, &old[2], 2, expired),
        Err(SenderKeyError::UnknownKey { key_id: old_key })
    );
    assert_eq!(bob.to_bytes(), before, "a refused message changes nothing");
    assert_eq!(
        decrypt_at(&mut bob, &old[2], 2, NOW + 1 + OLD_SENDER_KEY_KEEP_MS).unwrap(),
        "message 2"
    );
    bob.prune(expired);
    assert_eq!(
        bob.record(&own.group_id(), &alice()).unwrap().key_ids(),
        vec![rotated.key_id()]
    );
    assert_eq!(decrypt(&mut bob, &new[1], 1).unwrap(), "message 1");
}

#[test]
fn at_most_two_previous_key_ids_are_kept() {
    let (mut own, mut bob) = setup();
    let mut keys = vec![own.key_id()];
    let mut late = vec![send(&mut own, 1).remove(0)];
    for _ in 0..3 {
        own = own.rotate(&mut OsRng);
        bob.process_distribution(&alice(), &own.distribution(), NOW)
            .unwrap();
        keys.push(own.key_id());
        late.push(send(&mut own, 1).remove(0));
    }
    let held = bob.record(&own.group_id(), &alice()).unwrap().key_ids();
    assert_eq!(held.len(), 1 + MAX_OLD_SENDER_KEYS);
    assert_eq!(held, vec![keys[3], keys[2], keys[1]]);
    assert_eq!(
        decrypt(&mut bob, &late[0], 0),
        Err(SenderKeyError::UnknownKey { key_id: keys[0] })
    );
    for w in &late[1..] {
        assert_eq!(decrypt(&mut bob, w, 0).unwrap(), "message 0");
    }
    // Removing the member forgets its keys.
    bob.remove_sender(&own.group_id(), &alice()).unwrap();
    assert!(bob.record(&own.group_id(), &alice()).is_none());
}

#[test]
fn chain_exhaustion() {
    let (own, mut bob) = setup();
    // Only the iteration matters here: patch it without walking four billion steps.
    let l = own_layout(&own);
    let mut bytes = own.to_bytes().to_vec();
    bytes[l.iteration..l.iteration + 4].copy_from_slice(&(u32::MAX - 1).to_be_bytes());
    let mut last = OwnSenderKey::from_bytes(&bytes).unwrap();
    last.encrypt(&mid(0), b"last").unwrap();
    assert_eq!(last.iteration(), u32::MAX);
    let before = last.to_bytes();
    assert_eq!(
        last.encrypt(&mid(0), b"more"),
        Err(SenderKeyError::ChainExhausted)
    );
    assert_eq!(last.to_bytes(), before);
    // A signed message claiming iteration 2^32-1 is refused while parsing.
    let mut m = message_at(&own, 0);
    let off = 1 + 16 + 2 + 5 + 4 + 4;
    m[off..off + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decrypt(&mut bob, &m, 0),
        Err(SenderKeyError::Decode(DecodeError::Invalid { .. }))
    ));
}

#[test]
fn persistence_round_trip_mid_stream() {
    let (mut own, mut bob) = setup();
    let wires = send(&mut own, 5);
    decrypt(&mut bob, &wires[0], 0).unwrap();
    decrypt(&mut bob, &wires[3], 3).unwrap();

    let own_bytes = own.to_bytes();
    let mut own2 = OwnSenderKey::from_bytes(&own_bytes).unwrap();
    assert_eq!(own2.to_bytes(), own_bytes);
    let bob_bytes = bob.to_bytes();
    let mut bob2 = GroupSenderKeys::from_bytes(&bob_bytes).unwrap();
    assert_eq!(bob2.to_bytes(), bob_bytes);

    // One record on its own, as a client persisting records one by one would.
    let record_bytes = bob.record(&own.group_id(), &alice()).unwrap().to_bytes();
    let mut bob3 = GroupSenderKeys::new();
    assert!(bob3
        .insert_record(SenderKeyRecord::from_bytes(&record_bytes).unwrap())
        .is_none());
    assert_eq!(bob3.to_bytes(), bob_bytes);

    for store in [&mut bob2, &mut bob3] {
        assert_eq!(decrypt(store, &wires[0], 0), Err(SenderKeyError::Replay(0)));
        for i in [1u32, 2, 4] {
            assert_eq!(
                decrypt(store, &wires[i as usize], i).unwrap(),
                format!("message {i}")
            );
        }
    }
    // The restored sender continues where it stopped: same bytes as the original would send.
    let next = own2.encrypt(&mid(5), b"message 5").unwrap();
    assert_eq!(next, own.encrypt(&mid(5), b"message 5").unwrap());
    assert_eq!(decrypt(&mut bob2, &next, 5).unwrap(), "message 5");

    // Rotated records (old states with their replacement time) survive too.
    let rotated = own.rotate(&mut OsRng);
    bob.process_distribution(&alice(), &rotated.distribution(), NOW + 5)
        .unwrap();
    let other_group = OwnSenderKey::generate(&mut OsRng, GroupId::generate(&mut OsRng), alice());
    bob.process_distribution(&alice(), &other_group.distribution(), NOW)
        .unwrap();
    let b = bob.to_bytes();
    assert_eq!(GroupSenderKeys::from_bytes(&b).unwrap().to_bytes(), b);
    bob.remove_group(&other_group.group_id());
    assert!(bob.record(&other_group.group_id(), &alice()).is_none());
    assert!(bob.record(&own.group_id(), &alice()).is_some());
}

#[test]
fn persistence_refuses_unknown_versions_and_garbage() {
    let (mut own, mut bob) = setup();
    let wires = send(&mut own, 3);
    decrypt(&mut bob, &wires[2], 2).unwrap();
    let own_bytes = own.to_bytes().to_vec();
    let bob_bytes = bob.to_bytes().to_vec();
    let record_bytes = bob
        .record(&own.group_id(), &alice())
        .unwrap()
        .to_bytes()
        .to_vec();

    for (bytes, what) in [
        (&own_bytes, "own sender key state"),
        (&bob_bytes, "group sender keys"),
        (&record_bytes, "sender key record"),
    ] {
        let mut v2 = bytes.clone();
        v2[0] = 2;
        let err = match what {
            "own sender key state" => OwnSenderKey::from_bytes(&v2).map(|_| ()),
            "group sender keys" => GroupSenderKeys::from_bytes(&v2).map(|_| ()),
            _ => SenderKeyRecord::from_bytes(&v2).map(|_| ()),
        }
        .unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnsupportedVersion {
                what,
                found: 2,
                supported: 1
            }
        );
    }
    let mut long = own_bytes.clone();
    long.push(0);
    assert!(matches!(
        OwnSenderKey::from_bytes(&long),
        Err(DecodeError::TrailingBytes { .. })
    ));
    assert!(matches!(
        GroupSenderKeys::from_bytes(&bob_bytes[..bob_bytes.len() - 1]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(SenderKeyRecord::from_bytes(&record_bytes[..10]).is_err());
}

#[test]
fn debug_output_holds_no_secret_bytes() {
    let (mut own, mut bob) = setup();
    let ck0 = chain_key(&own);
    let sks = seed(&own);
    let wires = send(&mut own, 3);
    decrypt(&mut bob, &wires[2], 2).unwrap(); // caches mk_0 and mk_1, holds ck_3
    let ck1 = re::hmac(&ck0, &[0x02]);
    let secrets = [
        ck0,
        sks,
        re::hmac(&ck0, &[0x01]),
        re::hmac(&ck1, &[0x01]),
        chain_key(&own),
    ];
    let dist = SenderKeyDistribution::from_bytes(&own.distribution()).unwrap();
    let record = bob.record(&own.group_id(), &alice()).unwrap();
    let shown = format!("{own:?} {bob:?} {dist:?} {record:?}");
    assert!(
        shown.contains("OwnSenderKey") && shown.contains("skipped_keys: 2"),
        "{shown}"
    );
    for secret in secrets {
        let h = hx(secret);
        assert!(!shown.contains(&h[..16]), "{shown}");
        // Nor as a list of decimal bytes.
        let dec = format!("{:?}", &secret[..4]);
        assert!(!shown.contains(dec.trim_matches(['[', ']'])), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// Test vector: five messages, delivered in the order 0, 1, 3, 4, 2.

const CONTENTS: [&str; 5] = [
    "hello group",
    "second message",
    "",
    // 160 bytes: the padding takes a whole second block.
    concat!(
        "0123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789",
        "0123456789012345678901234567890123456789",
    ),
    "last one",
];

#[test]
fn sender_key_vectors() {
    let inputs = Inputs::new();
    let group_id = GroupId(inputs.array::<16>("group_id"));
    let device_id = inputs.u32("sender_device_id");
    let sender = addr("alice", device_id);
    let mut rng = inputs.rng(&[
        ("sender_key_id", Kind::Bytes),
        ("sender_chain_key", Kind::Bytes),
        ("sender_signing_key", Kind::Ed25519),
    ]);
    let mut own = OwnSenderKey::generate(&mut rng, group_id, sender.clone());
    assert_eq!(
        rng.remaining(),
        0,
        "generate draws key id, chain key, signing key"
    );

    // The same inputs, taken straight from the seed scheme.
    let key_id = u32::from_be_bytes(support::seed("sender_key_id")[..4].try_into().unwrap());
    let ck0 = support::seed("sender_chain_key");
    let sks = SigningKey::from_bytes(&support::seed("sender_signing_key"));
    let sks_pub = sks.verifying_key().to_bytes();
    assert_eq!(own.key_id(), key_id);
    assert_eq!(own.signing_key().to_bytes(), sks_pub);

    // sender = u16be(len) || user_id || u32be(device_id)
    let mut sender_bytes = 5u16.to_be_bytes().to_vec();
    sender_bytes.extend_from_slice(b"alice");
    sender_bytes.extend_from_slice(&device_id.to_be_bytes());

    let mut dist = vec![0x04];
    dist.extend_from_slice(&group_id.0);
    dist.extend_from_slice(&sender_bytes);
    dist.extend_from_slice(&key_id.to_be_bytes());
    dist.extend_from_slice(&0u32.to_be_bytes());
    dist.extend_from_slice(&ck0);
    dist.extend_from_slice(&sks_pub);
    let distribution = own.distribution();
    assert_eq!(hx(&distribution[..]), hx(&dist));

    let mut ck = ck0;
    let mut wires = Vec::new();
    let mut messages = Vec::new();
    for (i, text) in CONTENTS.iter().enumerate() {
        let message_id = inputs.array::<16>(&format!("group_message_id_{i}"));
        let wire = own
            .encrypt(&MessageId(message_id), text.as_bytes())
            .unwrap();

        let mk = re::hmac(&ck, &[0x01]);
        let (key, nonce) = re::kn(&mk, LABEL);
        let mut hdr = vec![0x03];
        hdr.extend_from_slice(&group_id.0);
        hdr.extend_from_slice(&sender_bytes);
        hdr.extend_from_slice(&key_id.to_be_bytes());
        hdr.extend_from_slice(&(i as u32).to_be_bytes());
        hdr.extend_from_slice(&message_id);
        let mut padded = text.as_bytes().to_vec();
        padded.push(0x80);
        padded.resize((text.len() / 160 + 1) * 160, 0);
        assert_eq!(padded, pad(text.as_bytes()).unwrap().to_vec());
        let ct = re::seal(&key, &nonce, &padded, &hdr);
        let mut m = hdr.clone();
        m.extend_from_slice(&ct);
        let sig = sks.sign(&m);
        VerifyingKey::from_bytes(&sks_pub)
            .unwrap()
            .verify_strict(&m, &sig)
            .unwrap();
        let mut expected = m.clone();
        expected.extend_from_slice(&sig.to_bytes());
        assert_eq!(hx(&wire), hx(&expected), "message {i}");
        assert_eq!(Signature::from_slice(&wire[m.len()..]).unwrap(), sig);

        messages.push(json!({
            "iteration": i,
            "message_id": hx(message_id),
            "content_text": text,
            "content": hx(text.as_bytes()),
            "content_padded": hx(&padded),
            "chain_key": hx(ck),
            "message_key": hx(mk),
            "key": hx(key),
            "nonce": hx(nonce),
            "header": hx(&hdr),
            "ciphertext": hx(&ct),
            "signature": hx(sig.to_bytes()),
            "wire": hx(&wire),
        }));
        wires.push((MessageId(message_id), wire));
        ck = re::hmac(&ck, &[0x02]);
    }
    assert_eq!(own.iteration(), 5);
    assert_eq!(chain_key(&own), ck);

    // Delivery to a member in the order 0, 1, 3, 4, 2; `cached_after` is the set of
    // iterations whose message keys the receiver holds after each delivery.
    let mut bob = GroupSenderKeys::new();
    assert_eq!(
        bob.process_distribution(&sender, &distribution, NOW)
            .unwrap(),
        DistributionOutcome::Stored
    );
    let order = [0usize, 1, 3, 4, 2];
    let mut next = 0usize;
    let mut cached: Vec<usize> = Vec::new();
    let mut deliveries = Vec::new();
    for i in order {
        let (message_id, wire) = &wires[i];
        let got = bob.decrypt(&sender, message_id, wire, NOW).unwrap();
        assert_eq!(
            (got.iteration as usize, &got.content[..]),
            (i, CONTENTS[i].as_bytes())
        );
        if i >= next {
            cached.extend(next..i);
            next = i + 1;
        } else {
            cached.retain(|&c| c != i);
        }
        deliveries.push(json!({
            "iteration": i,
            "content_text": CONTENTS[i],
            "cached_after": cached.clone(),
        }));
    }
    for (i, (message_id, wire)) in wires.iter().enumerate() {
        assert_eq!(
            bob.decrypt(&sender, message_id, wire, NOW).unwrap_err(),
            SenderKeyError::Replay(i as u32)
        );
    }

    let value: Value = json!({
        "inputs": inputs.to_json(),
        "group_id": hx(group_id.0),
        "sender": {"user_id": "alice", "device_id": device_id, "encoded": hx(&sender_bytes)},
        "key_id": key_id,
        "signing_public": hx(sks_pub),
        "distribution": hx(&distribution[..]),
        "messages": messages,
        "final_iteration": own.iteration(),
        "final_chain_key": hx(ck),
        "delivery_order": order,
        "deliveries": deliveries,
    });
    check_vectors("sender_key.json", &value);
}

#[test]
fn the_public_header_parses_without_keys_and_refuses_other_bytes() {
    let (mut own, _) = setup();
    own.encrypt(&mid(1), b"first").unwrap();
    let wire = own.encrypt(&mid(2), b"second").unwrap();
    let h = SenderKeyMessageHeader::parse(&wire).unwrap();
    assert_eq!(h.group_id, own.group_id());
    assert_eq!(h.sender, alice());
    assert_eq!(h.key_id, own.key_id());
    assert_eq!(h.iteration, 1);
    assert_eq!(h.message_id, mid(2));
    // A distribution, a truncated message and a message without room for tag and signature
    // are not group messages.
    assert!(SenderKeyMessageHeader::parse(&own.distribution()).is_err());
    assert!(SenderKeyMessageHeader::parse(&wire[..40]).is_err());
    let header_len = 1 + 16 + 2 + 5 + 4 + 4 + 4 + 16;
    assert!(SenderKeyMessageHeader::parse(&wire[..header_len + 79]).is_err());
    assert!(SenderKeyMessageHeader::parse(&[]).is_err());
}

/// Issue #9: the server accepted group messages cut anywhere past tag and signature room (it
/// checked only that room). The sealed content is `content_padded` plus the tag, so every cut
/// that is not a whole number of 160-byte pad blocks, and any message longer than the longest
/// content padded, is refused by the header parse the server uses.
#[test]
fn the_public_header_refuses_truncated_and_oversized_messages() {
    let (mut own, _) = setup();
    let wire = own.encrypt(&mid(1), b"hello").unwrap();
    let header_len = 1 + 16 + 2 + 5 + 4 + 4 + 4 + 16;
    assert_eq!(wire.len(), header_len + 160 + 16 + 64);
    for cut in [
        wire.len() - 1,
        wire.len() - 65,
        wire.len() / 2,
        header_len + 80,
    ] {
        let e = SenderKeyMessageHeader::parse(&wire[..cut]).unwrap_err();
        assert!(e.to_string().contains("pad blocks"), "{cut}: {e}");
    }
    // One byte more (in the ciphertext: the signature stays last) is refused as well.
    let mut longer = wire[..wire.len() - 64].to_vec();
    longer.push(0);
    longer.extend_from_slice(&wire[wire.len() - 64..]);
    assert!(SenderKeyMessageHeader::parse(&longer).is_err());
    // The longest content passes; one pad block more does not.
    let big = own
        .encrypt(
            &mid(2),
            &vec![7; cipherpost_protocol::consts::MAX_CONTENT_LEN],
        )
        .unwrap();
    assert!(SenderKeyMessageHeader::parse(&big).is_ok());
    let mut over = big[..big.len() - 64].to_vec();
    over.extend_from_slice(&[0; 160]);
    over.extend_from_slice(&big[big.len() - 64..]);
    let e = SenderKeyMessageHeader::parse(&over).unwrap_err();
    assert!(e.to_string().contains("longest content"), "{e}");
}
