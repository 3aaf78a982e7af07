//! Identities: ids, certificates, revocations, rotations, the account chain a sender follows,
//! fingerprints and safety numbers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use cipherpost_protocol::{
    verifying_key, x25519_public_key, AccountChain, AccountKey, DeviceCertificate, DeviceId,
    DeviceIdentity, IdentityError, Revocation, Rotation, SafetyNumber, UserId,
};
use rand_core::OsRng;
use support::mutations;

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

#[test]
fn user_and_device_ids_are_validated() {
    for ok in ["abc", "a.b-c_d", "0123456789abcdefghijklmnopqrstuv"] {
        assert!(UserId::new(ok).is_ok(), "{ok}");
    }
    for bad in [
        "ab",
        "",
        "Alice",
        "al ice",
        "alice!",
        "ålice",
        "0123456789abcdefghijklmnopqrstuvw",
        "../x",
    ] {
        assert_eq!(UserId::new(bad), Err(IdentityError::InvalidUserId), "{bad}");
    }
    assert_eq!(DeviceId::new(0), Err(IdentityError::InvalidDeviceId));
    assert_eq!(DeviceId::new(7).unwrap().get(), 7);
}

#[test]
fn certificate_verifies_only_under_its_account_key_and_resists_tampering() {
    let ak = AccountKey::generate(&mut OsRng);
    let dev = DeviceIdentity::generate(&mut OsRng);
    let cert = ak.certify(&alice(), DeviceId::new(42).unwrap(), &dev.public(), 123);
    cert.verify(&ak.public_key()).unwrap();
    assert_eq!(
        cert.verify(&AccountKey::generate(&mut OsRng).public_key()),
        Err(IdentityError::BadSignature("device certificate"))
    );
    let bytes = cert.to_bytes();
    for bad in mutations(&bytes) {
        // Either it no longer parses, or it no longer verifies.
        if let Ok(c) = DeviceCertificate::from_bytes(&bad) {
            assert!(c.verify(&ak.public_key()).is_err());
        }
    }
}

#[test]
fn revocation_and_rotation_round_trip_and_verify() {
    let ak = AccountKey::generate(&mut OsRng);
    let dev = DeviceIdentity::generate(&mut OsRng);
    let rev = ak.revoke(
        &alice(),
        DeviceId::new(9).unwrap(),
        &dev.public().signing,
        5,
    );
    rev.verify(&ak.public_key()).unwrap();
    assert_eq!(Revocation::from_bytes(&rev.to_bytes()).unwrap(), rev);
    let ak2 = AccountKey::generate(&mut OsRng);
    let rot = ak.rotate_to(&alice(), &ak2.public_key(), 6);
    rot.verify().unwrap();
    assert_eq!(Rotation::from_bytes(&rot.to_bytes()).unwrap(), rot);
    for bad in mutations(&rot.to_bytes()) {
        if let Ok(r) = Rotation::from_bytes(&bad) {
            assert!(r.verify().is_err());
        }
    }
}

#[test]
fn account_chain_follows_rotations_and_refuses_unreached_keys() {
    let u = alice();
    let k1 = AccountKey::generate(&mut OsRng);
    let k2 = AccountKey::generate(&mut OsRng);
    let k3 = AccountKey::generate(&mut OsRng);
    let r12 = k1.rotate_to(&u, &k2.public_key(), 1);
    let r23 = k2.rotate_to(&u, &k3.public_key(), 2);

    // Pinned k1, server says k3, with both rotations (in any order): accepted, rotated.
    let chain = AccountChain::verify(
        &u,
        &k1.public_key(),
        &k3.public_key(),
        &[r23.clone(), r12.clone()],
        &[],
    )
    .unwrap();
    assert_eq!(chain.latest(), &k3.public_key());
    assert!(chain.rotated());

    // Without the middle rotation, k3 is not reached: a key change the user must accept.
    let e = AccountChain::verify(
        &u,
        &k1.public_key(),
        &k3.public_key(),
        std::slice::from_ref(&r23),
        &[],
    );
    assert!(matches!(e, Err(IdentityError::AccountKeyChanged(_))));

    // A rotation signed by a stranger is ignored.
    let mallory = AccountKey::generate(&mut OsRng);
    let mut forged = k1.rotate_to(&u, &mallory.public_key(), 1);
    forged.signature = mallory.rotate_to(&u, &mallory.public_key(), 1).signature;
    let e = AccountChain::verify(&u, &k1.public_key(), &mallory.public_key(), &[forged], &[]);
    assert!(matches!(e, Err(IdentityError::AccountKeyChanged(_))));

    // Two different rotations under the same key: refuse the account.
    let fork = k1.rotate_to(&u, &mallory.public_key(), 3);
    let e = AccountChain::verify(
        &u,
        &k1.public_key(),
        &k2.public_key(),
        &[r12.clone(), fork],
        &[],
    );
    assert!(matches!(e, Err(IdentityError::ConflictingRotations(_))));

    // A rotation for another account does not count.
    let other = UserId::new("bob").unwrap();
    let r_other = k1.rotate_to(&other, &k2.public_key(), 1);
    let e = AccountChain::verify(&u, &k1.public_key(), &k2.public_key(), &[r_other], &[]);
    assert!(matches!(e, Err(IdentityError::AccountKeyChanged(_))));
}

#[test]
fn revocations_count_under_any_key_of_the_chain_and_bad_ones_are_ignored() {
    let u = alice();
    let k1 = AccountKey::generate(&mut OsRng);
    let k2 = AccountKey::generate(&mut OsRng);
    let dev = DeviceIdentity::generate(&mut OsRng);
    let other = DeviceIdentity::generate(&mut OsRng);
    let d = DeviceId::new(5).unwrap();
    let rev = k1.revoke(&u, d, &dev.public().signing, 1);
    let stranger = AccountKey::generate(&mut OsRng).revoke(&u, d, &other.public().signing, 1);
    let rot = k1.rotate_to(&u, &k2.public_key(), 2);
    let chain = AccountChain::verify(
        &u,
        &k1.public_key(),
        &k2.public_key(),
        &[rot],
        &[rev, stranger],
    )
    .unwrap();
    assert!(chain.is_revoked(d, &dev.public().signing));
    assert!(!chain.is_revoked(d, &other.public().signing));
    // The revoked device stays refused even with a fresh certificate under the new key.
    let cert = k2.certify(&u, d, &dev.public(), 3);
    assert!(chain.verify_device(&cert).is_err());
    // A device certified under the new key is accepted.
    let ok = k2.certify(&u, DeviceId::new(6).unwrap(), &other.public(), 3);
    chain.verify_device(&ok).unwrap();
}

#[test]
fn safety_number_is_symmetric_and_changes_with_the_key() {
    let (a, b) = (alice(), UserId::new("bob").unwrap());
    let ka = AccountKey::generate(&mut OsRng).public_key();
    let kb = AccountKey::generate(&mut OsRng).public_key();
    let s1 = SafetyNumber::new((&a, &ka), (&b, &kb));
    assert_eq!(s1, SafetyNumber::new((&b, &kb), (&a, &ka)));
    assert_eq!(s1.digits().len(), 60);
    assert!(s1.digits().bytes().all(|c| c.is_ascii_digit()));
    assert_eq!(s1.to_string().split(' ').count(), 12);
    let kb2 = AccountKey::generate(&mut OsRng).public_key();
    assert_ne!(s1, SafetyNumber::new((&a, &ka), (&b, &kb2)));
}

#[test]
fn public_key_decoding_refuses_weak_and_non_canonical_keys() {
    // The Ed25519 identity point is a small-order ("weak") key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(verifying_key(&identity, "k").is_err());
    let mut top = [1u8; 32];
    top[31] |= 0x80;
    assert!(x25519_public_key(&top).is_err());
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    assert!(x25519_public_key(&p).is_err());
    assert!(x25519_public_key(&[9u8; 32]).is_ok());
}

#[test]
fn identity_state_round_trip() {
    let id = DeviceIdentity::generate(&mut OsRng);
    let back = DeviceIdentity::from_bytes_versioned(&id.to_bytes()).unwrap();
    assert_eq!(back.public(), id.public());
    let ak = AccountKey::generate(&mut OsRng);
    assert_eq!(
        AccountKey::from_bytes(&ak.to_bytes()).public_key(),
        ak.public_key()
    );
}
