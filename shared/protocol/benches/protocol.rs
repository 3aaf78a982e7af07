//! Criterion benchmarks of the protocol: `cargo bench -p cipherpost-protocol` (or `./dev bench`).
//! Results and the command that produced them are in BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use cipherpost_protocol::{
    decrypt_attachment, encrypt_attachment, encrypt_body, AccountChain, AccountKey, DeviceAddress,
    DeviceCertificate, DeviceId, DeviceIdentity, GroupId, GroupSenderKeys, MessageId, OwnSenderKey,
    PeerSessions, PreKeyBundle, PreKeyStore, RequestAuth, SignedPreKey, UserId,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ed25519_dalek::{Signer, SigningKey};
use rand_core::OsRng;
use x25519_dalek::{PublicKey, StaticSecret};

const MSG: [u8; 200] = [0x42; 200];

struct Device {
    identity: DeviceIdentity,
    cert: DeviceCertificate,
    chain: AccountChain,
    prekeys: PreKeyStore,
}

fn device(name: &str, id: u32) -> Device {
    let user = UserId::new(name).unwrap();
    let ak = AccountKey::generate(&mut OsRng);
    let identity = DeviceIdentity::generate(&mut OsRng);
    let cert = ak.certify(&user, DeviceId::new(id).unwrap(), &identity.public(), 0);
    let mut prekeys = PreKeyStore::new();
    prekeys.add_signed_prekey(SignedPreKey::generate(&mut OsRng, &identity, 1, 0), 0);
    let k = ak.public_key();
    let chain = AccountChain::verify(&user, &k, &k, &[], &[]).unwrap();
    Device {
        identity,
        cert,
        chain,
        prekeys,
    }
}

fn bundle(d: &mut Device) -> PreKeyBundle {
    PreKeyBundle {
        certificate: d.cert.clone(),
        signed_prekey: d.prekeys.current_signed_prekey().unwrap().public(),
        one_time_prekey: Some(d.prekeys.generate_one_time_prekeys(&mut OsRng, 1)[0]),
    }
}

/// Alice and Bob with an established session (one message each way).
fn established() -> (Device, Device, PeerSessions, PeerSessions) {
    let alice = device("alice", 1);
    let mut bob = device("bob", 2);
    let mut a2b = PeerSessions::new();
    let b = bundle(&mut bob);
    a2b.initiate(&mut OsRng, &alice.identity, &bob.chain, &b)
        .unwrap();
    let mut b2a = PeerSessions::new();
    let m = a2b.encrypt(&MSG).unwrap();
    b2a.decrypt(
        &mut OsRng,
        &bob.identity,
        &mut bob.prekeys,
        &alice.identity.public(),
        &m,
    )
    .unwrap();
    let r = b2a.encrypt(&MSG).unwrap();
    let mut none = PreKeyStore::new();
    a2b.decrypt(
        &mut OsRng,
        &alice.identity,
        &mut none,
        &bob.identity.public(),
        &r,
    )
    .unwrap();
    (alice, bob, a2b, b2a)
}

fn primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitives");
    let a = StaticSecret::random_from_rng(OsRng);
    let b = PublicKey::from(&StaticSecret::random_from_rng(OsRng));
    g.bench_function("x25519 diffie_hellman", |bn| {
        bn.iter(|| black_box(a.diffie_hellman(&b)))
    });
    g.bench_function("x25519 keygen (base point)", |bn| {
        bn.iter(|| black_box(PublicKey::from(&StaticSecret::random_from_rng(OsRng))))
    });
    let sk = SigningKey::generate(&mut OsRng);
    let vk = sk.verifying_key();
    let sig = sk.sign(&MSG);
    g.bench_function("ed25519 sign 200 B", |bn| {
        bn.iter(|| black_box(sk.sign(&MSG)))
    });
    g.bench_function("ed25519 verify_strict 200 B", |bn| {
        bn.iter(|| black_box(vk.verify_strict(&MSG, &sig).is_ok()))
    });
    // The attachment digest: SHA-256 over the whole object (software on CPUs without SHA-NI).
    let big = vec![0u8; 1 << 20];
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("sha256 1 MiB", |bn| {
        bn.iter(|| black_box(<sha2::Sha256 as sha2::Digest>::digest(&big)))
    });
    let seg = vec![0u8; 64 * 1024];
    let cipher = <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new(&[7u8; 32].into());
    g.throughput(Throughput::Bytes(seg.len() as u64));
    g.bench_function("aes-256-gcm seal 64 KiB", |bn| {
        bn.iter(|| {
            black_box(aes_gcm::aead::Aead::encrypt(
                &cipher,
                &[1u8; 12].into(),
                &seg[..],
            ))
        })
    });
    g.finish();
}

fn sessions(c: &mut Criterion) {
    let mut g = c.benchmark_group("session");
    g.bench_function("full setup (bundle, X3DH, first message both ways)", |bn| {
        let alice = device("alice", 1);
        let mut bob = device("bob", 2);
        bn.iter(|| {
            // Bob's side of the bundle: a fresh signed prekey and one-time prekey.
            let spk = SignedPreKey::generate(&mut OsRng, &bob.identity, 2, 0);
            bob.prekeys.add_signed_prekey(spk, 0);
            let b = bundle(&mut bob);
            let mut a2b = PeerSessions::new();
            a2b.initiate(&mut OsRng, &alice.identity, &bob.chain, &b)
                .unwrap();
            let m = a2b.encrypt(&MSG).unwrap();
            let mut b2a = PeerSessions::new();
            b2a.decrypt(
                &mut OsRng,
                &bob.identity,
                &mut bob.prekeys,
                &alice.identity.public(),
                &m,
            )
            .unwrap();
            let r = b2a.encrypt(&MSG).unwrap();
            let mut none = PreKeyStore::new();
            a2b.decrypt(
                &mut OsRng,
                &alice.identity,
                &mut none,
                &bob.identity.public(),
                &r,
            )
            .unwrap();
            // Keep the store from growing across iterations.
            bob.prekeys = PreKeyStore::new();
            bob.prekeys
                .add_signed_prekey(SignedPreKey::generate(&mut OsRng, &bob.identity, 1, 0), 0);
            black_box(a2b)
        })
    });
    g.bench_function("X3DH initiate + respond (no bundle keygen)", |bn| {
        let alice = device("alice", 1);
        let bob = std::cell::RefCell::new(device("bob", 2));
        bn.iter_batched(
            || bundle(&mut bob.borrow_mut()),
            |b| {
                let bob = &mut *bob.borrow_mut();
                let mut a2b = PeerSessions::new();
                a2b.initiate(&mut OsRng, &alice.identity, &bob.chain, &b)
                    .unwrap();
                let m = a2b.encrypt(&MSG).unwrap();
                let mut b2a = PeerSessions::new();
                b2a.decrypt(
                    &mut OsRng,
                    &bob.identity,
                    &mut bob.prekeys,
                    &alice.identity.public(),
                    &m,
                )
                .unwrap();
                black_box(b2a)
            },
            BatchSize::SmallInput,
        )
    });

    g.throughput(Throughput::Elements(1));
    g.bench_function("ratchet encrypt + decrypt 200 B, same direction", |bn| {
        let (alice, mut bob, mut a2b, mut b2a) = established();
        let sender = alice.identity.public();
        bn.iter(|| {
            let m = a2b.encrypt(&MSG).unwrap();
            black_box(
                b2a.decrypt(&mut OsRng, &bob.identity, &mut bob.prekeys, &sender, &m)
                    .unwrap(),
            )
        })
    });
    g.bench_function("ratchet encrypt + decrypt 200 B, alternating", |bn| {
        let (mut alice, mut bob, mut a2b, mut b2a) = established();
        let (pa, pb) = (alice.identity.public(), bob.identity.public());
        let mut turn = false;
        bn.iter(|| {
            turn = !turn;
            if turn {
                let m = a2b.encrypt(&MSG).unwrap();
                black_box(
                    b2a.decrypt(&mut OsRng, &bob.identity, &mut bob.prekeys, &pa, &m)
                        .unwrap(),
                )
            } else {
                let m = b2a.encrypt(&MSG).unwrap();
                black_box(
                    a2b.decrypt(&mut OsRng, &alice.identity, &mut alice.prekeys, &pb, &m)
                        .unwrap(),
                )
            }
        })
    });
    g.bench_function("session state to_bytes + from_bytes", |bn| {
        let (_, _, a2b, _) = established();
        bn.iter(|| black_box(PeerSessions::from_bytes(&a2b.to_bytes()).unwrap()))
    });
    g.finish();
}

/// A message body for `n` devices: encrypt once, one ratchet envelope per device.
fn bodies(c: &mut Criterion) {
    let mut g = c.benchmark_group("body");
    for n in [1usize, 8, 100] {
        let mut sessions: Vec<PeerSessions> = (0..n).map(|_| established().2).collect();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encrypt 200 B for {n} devices"), |bn| {
            bn.iter(|| {
                let id = MessageId::generate(&mut OsRng);
                let (body, key) = encrypt_body(&mut OsRng, &id, &MSG).unwrap();
                let pt = key.envelope_plaintext(&body.bytes);
                let envelopes: Vec<Vec<u8>> = sessions
                    .iter_mut()
                    .map(|s| s.encrypt(&pt[..]).unwrap())
                    .collect();
                black_box((body, envelopes))
            })
        });
    }
    g.finish();
}

fn sender_keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("sender_key");
    g.throughput(Throughput::Elements(1));
    let me = DeviceAddress::new(UserId::new("alice").unwrap(), DeviceId::new(1).unwrap());
    let group = GroupId::generate(&mut OsRng);
    let mut own = OwnSenderKey::generate(&mut OsRng, group, me.clone());
    g.bench_function("encrypt 200 B (signed)", |bn| {
        bn.iter(|| black_box(own.encrypt(&MessageId::generate(&mut OsRng), &MSG).unwrap()))
    });
    let mut sender = OwnSenderKey::generate(&mut OsRng, group, me.clone());
    let mut receiver = GroupSenderKeys::new();
    receiver
        .process_distribution(&me, &sender.distribution(), 0)
        .unwrap();
    g.bench_function("decrypt 200 B (verify)", |bn| {
        bn.iter_batched(
            || {
                let id = MessageId::generate(&mut OsRng);
                (id, sender.encrypt(&id, &MSG).unwrap())
            },
            |(id, wire)| black_box(receiver.decrypt(&me, &id, &wire, 0).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn attachments(c: &mut Criterion) {
    const SIZE: usize = 16 << 20;
    let plaintext = vec![0x5au8; SIZE];
    let mut object = Vec::with_capacity(SIZE + SIZE / 4096 + 64);
    let secrets = encrypt_attachment(&mut OsRng, &plaintext[..], &mut object).unwrap();
    let mut g = c.benchmark_group("attachment");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.bench_function("encrypt 16 MiB", |bn| {
        let mut out = Vec::with_capacity(object.len());
        bn.iter(|| {
            out.clear();
            black_box(encrypt_attachment(&mut OsRng, &plaintext[..], &mut out).unwrap())
        })
    });
    g.bench_function("decrypt 16 MiB (digest + every tag)", |bn| {
        let mut out = Vec::with_capacity(SIZE);
        bn.iter(|| {
            out.clear();
            decrypt_attachment(&secrets, Some(object.len() as u64), &object[..], &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.finish();
}

fn request_auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_auth");
    let identity = DeviceIdentity::generate(&mut OsRng);
    let user = UserId::new("alice").unwrap();
    let device = DeviceId::new(7).unwrap();
    let body = vec![b'x'; 1024];
    g.bench_function("sign (1 KiB body)", |bn| {
        bn.iter(|| {
            black_box(
                RequestAuth::sign(&identity, &user, device, "PUT", "/v1/messages", 1, &body)
                    .to_header(),
            )
        })
    });
    let header =
        RequestAuth::sign(&identity, &user, device, "PUT", "/v1/messages", 1, &body).to_header();
    let key = identity.public().signing;
    g.bench_function("parse + verify (1 KiB body)", |bn| {
        bn.iter(|| {
            let a = RequestAuth::parse_header(&header).unwrap();
            black_box(a.verify(&key, "PUT", "/v1/messages", &body, 1).is_ok())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    primitives,
    sessions,
    bodies,
    sender_keys,
    attachments,
    request_auth
);
criterion_main!(benches);
