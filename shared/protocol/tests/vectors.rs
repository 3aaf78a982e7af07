//! Recomputes the test vectors of PROTOCOL.md ("Test vectors") for identities, fingerprints,
//! X3DH, the Double Ratchet and message bodies, checks every value against an independent
//! re-statement of the formulas (`support::reference`), and compares the result with the files
//! in `tests/vectors/`. `CIPHERPOST_WRITE_VECTORS=1` rewrites the files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod support;

use cipherpost_protocol::{
    fingerprint, fingerprint_digits, AccountChain, AccountKey, DeviceCertificate, DeviceId,
    DeviceIdentity, PeerSessions, PreKeyBundle, PreKeyStore, Revocation, Rotation, SafetyNumber,
    SignedPreKey, UserId,
};
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{json, Value};
use support::{
    check_vectors, hx,
    reference::{self as re, RefRatchet},
    seed, Inputs, Kind,
};

const CREATED_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

/// A device built from named seeds.
struct VectorDevice {
    user: UserId,
    device_id: DeviceId,
    account: AccountKey,
    identity: DeviceIdentity,
    cert: DeviceCertificate,
}

impl VectorDevice {
    fn new(inputs: &Inputs, name: &str, user_id: &str) -> Self {
        let account =
            AccountKey::from_bytes(&inputs.ed25519(&format!("{name}_account")).to_bytes());
        Self::under(inputs, name, user_id, account)
    }

    /// A device certified by an existing account key (another device of the same account).
    fn under(inputs: &Inputs, name: &str, user_id: &str, account: AccountKey) -> Self {
        let user = user(user_id);
        let iks = inputs.ed25519(&format!("{name}_iks"));
        let ikd = inputs.x25519(&format!("{name}_ikd"));
        let identity = DeviceIdentity::from_bytes(&iks.to_bytes(), &ikd.to_bytes());
        let device_id = DeviceId::new(inputs.u32(&format!("{name}_device_id"))).unwrap();
        let cert = account.certify(&user, device_id, &identity.public(), CREATED_MS);
        Self {
            user,
            device_id,
            account,
            identity,
            cert,
        }
    }

    fn iks(&self) -> [u8; 32] {
        self.identity.public().signing.to_bytes()
    }

    fn ikd(&self) -> [u8; 32] {
        self.identity.public().dh.to_bytes()
    }

    fn chain(&self) -> AccountChain {
        let k = self.account.public_key();
        AccountChain::verify(&self.user, &k, &k, &[], &[]).unwrap()
    }
}

fn verify_ed25519(key: &VerifyingKey, msg: &[u8], sig: &Signature) {
    key.verify_strict(msg, sig).unwrap();
}

#[test]
fn identity_vectors() {
    let inputs = Inputs::new();
    let alice = VectorDevice::new(&inputs, "alice", "alice");
    let ak = alice.account.public_key();

    // Certificate: rebuilt byte by byte from the spec.
    let mut cert_msg = b"cipherpost/device-cert/v1".to_vec();
    cert_msg.extend_from_slice(&5u16.to_be_bytes());
    cert_msg.extend_from_slice(b"alice");
    cert_msg.extend_from_slice(&alice.device_id.get().to_be_bytes());
    cert_msg.extend_from_slice(&alice.iks());
    cert_msg.extend_from_slice(&alice.ikd());
    cert_msg.extend_from_slice(&CREATED_MS.to_be_bytes());
    assert_eq!(alice.cert.message(), cert_msg);
    verify_ed25519(&ak, &cert_msg, &alice.cert.signature);
    assert_eq!(
        DeviceCertificate::from_bytes(&alice.cert.to_bytes()).unwrap(),
        alice.cert
    );

    // Revocation of a second device.
    let iks2 = inputs.ed25519("alice_device2_iks");
    let device2 = DeviceId::new(inputs.u32("alice_device2_id")).unwrap();
    let revoked_ms = CREATED_MS + 86_400_000;
    let rev = alice
        .account
        .revoke(&alice.user, device2, &iks2.verifying_key(), revoked_ms);
    let mut rev_msg = b"cipherpost/device-revoke/v1".to_vec();
    rev_msg.extend_from_slice(&5u16.to_be_bytes());
    rev_msg.extend_from_slice(b"alice");
    rev_msg.extend_from_slice(&device2.get().to_be_bytes());
    rev_msg.extend_from_slice(iks2.verifying_key().as_bytes());
    rev_msg.extend_from_slice(&revoked_ms.to_be_bytes());
    assert_eq!(rev.message(), rev_msg);
    verify_ed25519(&ak, &rev_msg, &rev.signature);
    assert_eq!(Revocation::from_bytes(&rev.to_bytes()).unwrap(), rev);

    // Rotation to a new account key, and the certificate re-issued under it.
    let new_account = AccountKey::from_bytes(&inputs.ed25519("alice_account_2").to_bytes());
    let rot = alice
        .account
        .rotate_to(&alice.user, &new_account.public_key(), revoked_ms);
    let mut rot_msg = b"cipherpost/account-key-rotate/v1".to_vec();
    rot_msg.extend_from_slice(&5u16.to_be_bytes());
    rot_msg.extend_from_slice(b"alice");
    rot_msg.extend_from_slice(ak.as_bytes());
    rot_msg.extend_from_slice(new_account.public_key().as_bytes());
    rot_msg.extend_from_slice(&revoked_ms.to_be_bytes());
    assert_eq!(rot.message(), rot_msg);
    verify_ed25519(&ak, &rot_msg, &rot.signature);
    assert_eq!(Rotation::from_bytes(&rot.to_bytes()).unwrap(), rot);
    let recert = new_account.certify(
        &alice.user,
        alice.device_id,
        &alice.identity.public(),
        revoked_ms,
    );

    // What a contact that pinned the old key concludes.
    let chain = AccountChain::verify(
        &alice.user,
        &ak,
        &new_account.public_key(),
        std::slice::from_ref(&rot),
        std::slice::from_ref(&rev),
    )
    .unwrap();
    assert!(chain.rotated());
    assert!(chain.is_revoked(device2, &iks2.verifying_key()));
    chain.verify_device(&recert).unwrap();
    assert!(
        chain.verify_device(&alice.cert).is_err(),
        "old certificate is under the old key"
    );

    let value = json!({
        "inputs": inputs.to_json(),
        "user_id": "alice",
        "certificate": {
            "device_id": alice.device_id.get(),
            "created_ms": CREATED_MS,
            "cert_msg": hx(&cert_msg),
            "signature": hx(alice.cert.signature.to_bytes()),
            "transport": hx(alice.cert.to_bytes()),
        },
        "revocation": {
            "device_id": device2.get(),
            "revoked_ms": revoked_ms,
            "revoke_msg": hx(&rev_msg),
            "signature": hx(rev.signature.to_bytes()),
            "transport": hx(rev.to_bytes()),
        },
        "rotation": {
            "ms": revoked_ms,
            "rotate_msg": hx(&rot_msg),
            "signature": hx(rot.signature.to_bytes()),
            "transport": hx(rot.to_bytes()),
            "recertified": {
                "cert_msg": hx(recert.message()),
                "signature": hx(recert.signature.to_bytes()),
            },
        },
    });
    check_vectors("identity.json", &value);
}

#[test]
fn fingerprint_vectors() {
    let inputs = Inputs::new();
    let alice_ak = inputs.ed25519("alice_account").verifying_key();
    let bob_ak = inputs.ed25519("bob_account").verifying_key();
    let (alice, bob) = (user("alice"), user("bob"));

    let mut cases = Vec::new();
    for (u, k) in [(&alice, &alice_ak), (&bob, &bob_ak)] {
        let f = re::h(&[
            b"cipherpost/fingerprint/v1",
            &(u.as_str().len() as u16).to_be_bytes(),
            u.as_str().as_bytes(),
            k.as_bytes(),
        ]);
        assert_eq!(fingerprint(u, k), f);
        let digits: String = f[..30]
            .chunks(5)
            .map(|g| {
                let v = g.iter().fold(0u64, |a, b| a * 256 + u64::from(*b));
                format!("{:05}", v % 100_000)
            })
            .collect();
        assert_eq!(fingerprint_digits(u, k), digits);
        cases.push(json!({
            "user_id": u.as_str(),
            "account_key": hx(k.as_bytes()),
            "fingerprint": hx(f),
            "digits": digits,
        }));
    }
    let sn = SafetyNumber::new((&bob, &bob_ak), (&alice, &alice_ak));
    assert_eq!(sn, SafetyNumber::new((&alice, &alice_ak), (&bob, &bob_ak)));
    assert_eq!(sn.digits().len(), 60);
    assert_eq!(
        sn.digits(),
        format!(
            "{}{}",
            cases[0]["digits"].as_str().unwrap(),
            cases[1]["digits"].as_str().unwrap()
        )
    );
    let value = json!({
        "inputs": inputs.to_json(),
        "fingerprints": cases,
        "safety_number": sn.digits(),
        "safety_number_display": sn.to_string(),
    });
    check_vectors("fingerprint.json", &value);
}

/// Both sides of a new session, the library's and the reference's.
struct Setup {
    alice: VectorDevice,
    bob: VectorDevice,
    bob_prekeys: PreKeyStore,
    a2b: PeerSessions,
    b2a: PeerSessions,
    ref_a: RefRatchet,
    ref_b: RefRatchet,
    record: Value,
}

fn setup(
    inputs: &Inputs,
    case: &str,
    with_opk: bool,
    alice_steps: usize,
    bob_steps: usize,
) -> Setup {
    let alice = VectorDevice::new(inputs, "alice", "alice");
    let bob = VectorDevice::new(inputs, "bob", "bob");
    let spk_id = inputs.u32("bob_spk_id");
    let spk_secret = inputs.x25519("bob_spk");
    let spk_bytes = spk_secret.to_bytes();
    let spk = SignedPreKey::from_secret(spk_secret, &bob.identity, spk_id, CREATED_MS);
    let mut bob_prekeys = PreKeyStore::new();
    bob_prekeys.add_signed_prekey(spk.clone(), CREATED_MS);
    let opk = with_opk.then(|| {
        let mut rng = inputs.rng(&[("bob_opk", Kind::X25519)]);
        bob_prekeys.generate_one_time_prekeys(&mut rng, 1)[0]
    });
    let bundle = PreKeyBundle {
        certificate: bob.cert.clone(),
        signed_prekey: spk.public(),
        one_time_prekey: opk,
    };

    let ek_name = format!("{case}/alice_ek");
    let mut a_script = vec![(ek_name.clone(), Kind::X25519)];
    for i in 0..alice_steps {
        a_script.push((format!("{case}/alice_ratchet_{i}"), Kind::X25519));
    }
    let a_script: Vec<(&str, Kind)> = a_script.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    let mut a_rng = inputs.rng(&a_script[..2]);
    let mut a2b = PeerSessions::new();
    a2b.initiate(&mut a_rng, &alice.identity, &bob.chain(), &bundle)
        .unwrap();
    assert_eq!(a_rng.remaining(), 0);

    // The reference X3DH.
    let ek = seed(&ek_name);
    let spk_pub = spk.public().key.to_bytes();
    let dh1 = re::x25519(&seed("alice_ikd"), &spk_pub);
    let dh2 = re::x25519(&ek, &bob.ikd());
    let dh3 = re::x25519(&ek, &spk_pub);
    let dh4 = opk.map(|o| re::x25519(&ek, &o.key.to_bytes()));
    let mut ikm = vec![0xFF; 32];
    ikm.extend_from_slice(&dh1);
    ikm.extend_from_slice(&dh2);
    ikm.extend_from_slice(&dh3);
    if let Some(d) = dh4 {
        ikm.extend_from_slice(&d);
    }
    let sk: [u8; 32] = re::hkdf(&[0u8; 32], &ikm, b"cipherpost/x3dh/v1", 32)
        .try_into()
        .unwrap();
    let mut ad = [0u8; 128];
    ad[..32].copy_from_slice(&alice.iks());
    ad[32..64].copy_from_slice(&alice.ikd());
    ad[64..96].copy_from_slice(&bob.iks());
    ad[96..].copy_from_slice(&bob.ikd());
    let dhs0 = seed(&format!("{case}/alice_ratchet_0"));
    let mut ref_a = RefRatchet::initiator(sk, ad, dhs0, spk_pub);
    ref_a.next_keys = (1..alice_steps)
        .map(|i| seed(&format!("{case}/alice_ratchet_{i}")))
        .collect();
    let (rk0, cks0) = (ref_a.rk, ref_a.cks.unwrap());
    let mut ref_b = RefRatchet::responder(sk, ad, *spk_bytes);
    ref_b.next_keys = (1..=bob_steps)
        .map(|i| seed(&format!("{case}/bob_ratchet_{i}")))
        .collect();

    let record = json!({
        "alice": {"user_id": "alice", "device_id": alice.device_id.get(), "certificate": hx(alice.cert.to_bytes())},
        "bob": {"user_id": "bob", "device_id": bob.device_id.get(), "certificate": hx(bob.cert.to_bytes())},
        "bundle": {
            "spk_id": spk_id,
            "spk_pub": hx(spk_pub),
            "spk_sig": hx(spk.public().signature.to_bytes()),
            "opk_id": opk.map_or(0, |o| o.id),
            "opk_pub": opk.map(|o| hx(o.key.as_bytes())),
        },
        "ek_pub": hx(re::x25519_pub(&ek)),
        "dh1": hx(dh1), "dh2": hx(dh2), "dh3": hx(dh3), "dh4": dh4.map(hx),
        "sk": hx(sk),
        "ad": hx(ad),
        "initiator_ratchet": {"dhs_pub": hx(re::x25519_pub(&dhs0)), "rk": hx(rk0), "cks": hx(cks0)},
    });
    Setup {
        alice,
        bob,
        bob_prekeys,
        a2b,
        b2a: PeerSessions::new(),
        ref_a,
        ref_b,
        record,
    }
}

fn message_json(m: &re::RefMessage, from: &str, pt: &[u8], wire: &[u8]) -> Value {
    json!({
        "from": from,
        "plaintext": String::from_utf8_lossy(pt),
        "chain_key": hx(m.chain_key),
        "message_key": hx(m.message_key),
        "key": hx(m.key),
        "nonce": hx(m.nonce),
        "header": hx(m.header),
        "wire": hx(wire),
    })
}

/// The PreKey wrapping of a Whisper message, built from the spec.
fn prekey_wire(s: &Setup, ek_pub: [u8; 32], spk_id: u32, opk_id: u32, whisper: &[u8]) -> Vec<u8> {
    let mut w = vec![0x02];
    w.extend_from_slice(&s.alice.iks());
    w.extend_from_slice(&s.alice.ikd());
    w.extend_from_slice(&ek_pub);
    w.extend_from_slice(&spk_id.to_be_bytes());
    w.extend_from_slice(&opk_id.to_be_bytes());
    w.extend_from_slice(whisper);
    w
}

#[test]
fn x3dh_vectors() {
    let inputs = Inputs::new();
    let mut cases = serde_json::Map::new();
    for (case, with_opk) in [("with_opk", true), ("without_opk", false)] {
        let mut s = setup(&inputs, case, with_opk, 1, 1);
        let pt = b"hello bob";
        let wire = s.a2b.encrypt(pt).unwrap();
        let m = s.ref_a.send(pt);
        let r = &s.record["bundle"];
        let expected = prekey_wire(
            &s,
            re::x25519_pub(&seed(&format!("{case}/alice_ek"))),
            r["spk_id"].as_u64().unwrap() as u32,
            r["opk_id"].as_u64().unwrap() as u32,
            &m.wire,
        );
        assert_eq!(hx(&wire), hx(&expected), "{case}: PreKey message");
        let bob_step = format!("{case}/bob_ratchet_1");
        let mut b_rng = inputs.rng(&[(&bob_step, Kind::X25519)]);
        let d = s
            .b2a
            .decrypt(
                &mut b_rng,
                &s.bob.identity,
                &mut s.bob_prekeys,
                &s.alice.identity.public(),
                &wire,
            )
            .unwrap();
        assert_eq!(&d.plaintext[..], pt);
        s.ref_b.received(m.header[..32].try_into().unwrap());
        let reply = s.b2a.encrypt(b"hi alice").unwrap();
        let rm = s.ref_b.send(b"hi alice");
        assert_eq!(
            hx(&reply),
            hx(&rm.wire),
            "{case}: responder's first message"
        );
        let mut rec = s.record.clone();
        rec["first_message"] = message_json(&m, "alice", pt, &wire);
        let (rk, ckr, cks) = s.ref_b.steps[0];
        rec["responder_step"] = json!({"rk": hx(rk), "ckr": hx(ckr), "cks": hx(cks)});
        rec["reply"] = message_json(&rm, "bob", b"hi alice", &reply);
        cases.insert(case.to_string(), rec);
    }
    check_vectors(
        "x3dh.json",
        &json!({"inputs": inputs.to_json(), "cases": cases}),
    );
}

#[test]
fn ratchet_vectors() {
    let inputs = Inputs::new();
    let case = "ratchet";
    let mut s = setup(&inputs, case, true, 3, 3);
    let a_names: Vec<String> = (1..3)
        .map(|i| format!("{case}/alice_ratchet_{i}"))
        .collect();
    let b_names: Vec<String> = (1..=3).map(|i| format!("{case}/bob_ratchet_{i}")).collect();
    let mut a_rng = inputs.rng(
        &a_names
            .iter()
            .map(|n| (n.as_str(), Kind::X25519))
            .collect::<Vec<_>>(),
    );
    let mut b_rng = inputs.rng(
        &b_names
            .iter()
            .map(|n| (n.as_str(), Kind::X25519))
            .collect::<Vec<_>>(),
    );

    // (sender is alice, plaintext) for messages 0..10, sent in this order, and the deliveries.
    enum Ev {
        Send(usize),
        Deliver(usize),
    }
    use Ev::{Deliver as D, Send as S};
    let from_alice = [
        true, true, true, false, false, true, false, false, false, true,
    ];
    let script = [
        S(0),
        S(1),
        S(2),
        D(0),
        D(2),
        S(3),
        S(4),
        D(4),
        S(5),
        D(5),
        D(1),
        S(6),
        S(7),
        S(8),
        D(8),
        D(6),
        D(3),
        D(7),
        S(9),
        D(9),
    ];
    let ek_pub = re::x25519_pub(&seed(&format!("{case}/alice_ek")));
    let (spk_id, opk_id) = (
        s.record["bundle"]["spk_id"].as_u64().unwrap() as u32,
        s.record["bundle"]["opk_id"].as_u64().unwrap() as u32,
    );
    let mut wires: Vec<Vec<u8>> = vec![Vec::new(); 10];
    let mut messages: Vec<Value> = vec![Value::Null; 10];
    let mut deliveries = Vec::new();
    let mut alice_heard_back = false;
    for ev in script {
        match ev {
            S(i) => {
                let pt = format!("message {i}");
                let (wire, m) = if from_alice[i] {
                    let w = s.a2b.encrypt(pt.as_bytes()).unwrap();
                    let m = s.ref_a.send(pt.as_bytes());
                    let expected = if alice_heard_back {
                        m.wire.clone()
                    } else {
                        prekey_wire(&s, ek_pub, spk_id, opk_id, &m.wire)
                    };
                    assert_eq!(hx(&w), hx(&expected), "message {i}");
                    (w, m)
                } else {
                    let w = s.b2a.encrypt(pt.as_bytes()).unwrap();
                    let m = s.ref_b.send(pt.as_bytes());
                    assert_eq!(hx(&w), hx(&m.wire), "message {i}");
                    (w, m)
                };
                let mut j = message_json(
                    &m,
                    if from_alice[i] { "alice" } else { "bob" },
                    pt.as_bytes(),
                    &wire,
                );
                j["n"] = json!(u32::from_be_bytes(m.header[36..40].try_into().unwrap()));
                j["pn"] = json!(u32::from_be_bytes(m.header[32..36].try_into().unwrap()));
                messages[i] = j;
                wires[i] = wire;
            }
            D(i) => {
                let dh: [u8; 32] = messages[i]["header"]
                    .as_str()
                    .map(|h| hex::decode(h).unwrap()[..32].try_into().unwrap())
                    .unwrap();
                let got = if from_alice[i] {
                    s.ref_b.received(dh);
                    s.b2a.decrypt(
                        &mut b_rng,
                        &s.bob.identity,
                        &mut s.bob_prekeys,
                        &s.alice.identity.public(),
                        &wires[i],
                    )
                } else {
                    alice_heard_back = true;
                    s.ref_a.received(dh);
                    s.a2b.decrypt(
                        &mut a_rng,
                        &s.alice.identity,
                        &mut PreKeyStore::new(),
                        &s.bob.identity.public(),
                        &wires[i],
                    )
                }
                .unwrap();
                assert_eq!(
                    String::from_utf8(got.plaintext.to_vec()).unwrap(),
                    format!("message {i}")
                );
                deliveries.push(i);
            }
        }
    }
    assert_eq!(
        a_rng.remaining() + b_rng.remaining(),
        0,
        "every scripted ratchet key was used"
    );
    let steps = |r: &RefRatchet| -> Vec<Value> {
        r.steps
            .iter()
            .map(|(rk, ckr, cks)| json!({"rk": hx(rk), "ckr": hx(ckr), "cks": hx(cks)}))
            .collect()
    };
    let value = json!({
        "inputs": inputs.to_json(),
        "setup": s.record,
        "messages": messages,
        "send_order": (0..10).collect::<Vec<_>>(),
        "delivery_order": deliveries,
        "alice_steps": steps(&s.ref_a),
        "bob_steps": steps(&s.ref_b),
    });
    check_vectors("ratchet.json", &value);
}

#[test]
fn body_vectors() {
    use cipherpost_protocol::{encrypt_body, open_body, pad, MessageId};
    let inputs = Inputs::new();
    let alice = VectorDevice::new(&inputs, "alice", "alice");
    let message_id = MessageId(inputs.array::<16>("message_id"));
    let content = "a body encrypted once for three devices".as_bytes();
    let mut rng = inputs.rng(&[("body_key", Kind::Bytes), ("body_nonce", Kind::Bytes)]);
    let (body, key) = encrypt_body(&mut rng, &message_id, content).unwrap();

    // The reference: n || SEAL(K, n, content_padded, "cipherpost/body/v1" || message_id).
    let k: [u8; 32] = seed("body_key");
    let n: [u8; 12] = seed("body_nonce")[..12].try_into().unwrap();
    let padded = pad(content).unwrap();
    assert_eq!(padded.len(), 160);
    let mut ad = b"cipherpost/body/v1".to_vec();
    ad.extend_from_slice(&message_id.0);
    let mut expected = n.to_vec();
    expected.extend_from_slice(&re::seal(&k, &n, &padded, &ad));
    assert_eq!(hx(&body.bytes), hx(&expected));
    let digest = re::h(&[&body.bytes]);
    let mut envelope_plaintext = k.to_vec();
    envelope_plaintext.extend_from_slice(&digest);
    assert_eq!(
        key.envelope_plaintext(&body.bytes).to_vec(),
        envelope_plaintext
    );

    // One key envelope per destination device, each over its own new session.
    let mut devices = Vec::new();
    for (name, user_id) in [("bob_1", "bob"), ("bob_2", "bob"), ("alice_2", "alice")] {
        // alice_2 is Alice's other device, certified by her account key.
        let d = if user_id == "alice" {
            VectorDevice::under(&inputs, name, user_id, alice.account.clone())
        } else {
            VectorDevice::new(&inputs, name, user_id)
        };
        let spk_secret = inputs.x25519(&format!("{name}_spk"));
        let spk = SignedPreKey::from_secret(spk_secret, &d.identity, 1, CREATED_MS);
        let mut store = PreKeyStore::new();
        store.add_signed_prekey(spk.clone(), CREATED_MS);
        let bundle = PreKeyBundle {
            certificate: d.cert.clone(),
            signed_prekey: spk.public(),
            one_time_prekey: None,
        };
        let chain = d.chain();
        let (ek, dhs) = (
            format!("body/{name}/alice_ek"),
            format!("body/{name}/alice_ratchet_0"),
        );
        let mut a_rng = inputs.rng(&[(&ek, Kind::X25519), (&dhs, Kind::X25519)]);
        let mut session = PeerSessions::new();
        session
            .initiate(&mut a_rng, &alice.identity, &chain, &bundle)
            .unwrap();
        let envelope = session
            .encrypt(&key.envelope_plaintext(&body.bytes)[..])
            .unwrap();
        // The device opens its envelope, then the body.
        let mut b_rng = inputs.rng(&[(&format!("body/{name}/ratchet_1"), Kind::X25519)]);
        let opened = PeerSessions::new()
            .decrypt(
                &mut b_rng,
                &d.identity,
                &mut store,
                &alice.identity.public(),
                &envelope,
            )
            .unwrap();
        assert_eq!(opened.plaintext.to_vec(), envelope_plaintext);
        let got = open_body(&opened.plaintext, &body.bytes, &message_id).unwrap();
        assert_eq!(&got[..], content);
        devices.push(json!({
            "name": name,
            "user_id": user_id,
            "device_id": d.device_id.get(),
            "certificate": hx(d.cert.to_bytes()),
            "spk_id": 1,
            "spk_pub": hx(spk.public().key.to_bytes()),
            "spk_sig": hx(spk.public().signature.to_bytes()),
            "envelope": hx(&envelope),
        }));
    }
    let value = json!({
        "inputs": inputs.to_json(),
        "sender": {"user_id": "alice", "device_id": alice.device_id.get()},
        "message_id": hx(message_id.0),
        "content": String::from_utf8_lossy(content),
        "content_padded": hx(&padded[..]),
        "body_ad": hx(&ad),
        "body": hx(&body.bytes),
        "body_digest": hx(digest),
        "envelope_plaintext": hx(&envelope_plaintext),
        "devices": devices,
    });
    check_vectors("body.json", &value);
}
