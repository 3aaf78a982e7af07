//! Sessions with one peer device (PROTOCOL.md, "X3DH" and "Double Ratchet"): building a
//! session from a bundle or from a PreKey message, the PreKey-to-session mapping, the older
//! sessions kept for decryption, and the versioned persistence of all of it.
//!
//! Never reuse a message key: [`PeerSessions::encrypt`] advances the chain before it returns
//! the ciphertext, and the caller must persist [`PeerSessions::to_bytes`] before the
//! ciphertext leaves the device. A retry resends the stored bytes; it never encrypts again.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::PublicKey;
use zeroize::Zeroizing;

use crate::{
    codec::{Reader, Writer},
    consts::MAX_OLD_SESSIONS,
    error::{DecodeError, SessionError},
    identity::{AccountChain, DeviceIdentity, DeviceIdentityPublic},
    keys::DhSecret,
    message::{pairwise_message_kind, PairwiseMessageKind, PreKeyMessage, WhisperMessage},
    prekey::{PreKeyBundle, PreKeyStore},
    primitives::ct_eq,
    ratchet::Ratchet,
    x3dh,
};

/// What the initiator repeats in every message until it has decrypted a reply.
#[derive(Clone, Copy)]
struct PendingPreKey {
    spk_id: u32,
    opk_id: u32,
}

/// One Double Ratchet session with a peer device.
struct Session {
    /// `EK_A.pub`: identifies the session for PreKey messages on both sides.
    base_key: [u8; 32],
    /// `Some` on the initiator until it has decrypted a message on this session.
    pending: Option<PendingPreKey>,
    ratchet: Ratchet,
}

impl Session {
    /// The peer's identity keys, from the session's associated data.
    fn peer_identity(&self, initiator: bool) -> &[u8] {
        let ad = self.ratchet.ad();
        if initiator {
            &ad[64..]
        } else {
            &ad[..64]
        }
    }

    fn is_initiator(&self, own: &DeviceIdentityPublic) -> bool {
        self.ratchet.ad()[..64] == own.to_bytes()
    }

    fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        let whisper = self.ratchet.encrypt(plaintext)?;
        Ok(match self.pending {
            Some(p) => {
                let mut id = [0u8; 64];
                id.copy_from_slice(&self.ratchet.ad()[..64]);
                let identity = DeviceIdentityPublic::from_bytes(&id)?;
                PreKeyMessage::encode(
                    &identity,
                    &PublicKey::from(self.base_key),
                    p.spk_id,
                    p.opk_id,
                    &whisper,
                )
            }
            None => whisper,
        })
    }

    fn decrypt(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        whisper: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let msg = WhisperMessage::parse(whisper)?;
        let pt = self.ratchet.decrypt(rng, &msg)?;
        self.pending = None;
        Ok(pt)
    }

    fn write(&self, w: &mut Writer) {
        w.put(&self.base_key).bool(self.pending.is_some());
        let p = self.pending.unwrap_or(PendingPreKey {
            spk_id: 0,
            opk_id: 0,
        });
        w.u32(p.spk_id).u32(p.opk_id);
        self.ratchet.write(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let base_key = r.array::<32>()?;
        let has_pending = r.bool()?;
        let p = PendingPreKey {
            spk_id: r.u32()?,
            opk_id: r.u32()?,
        };
        let ratchet = Ratchet::read(r)?;
        Ok(Self {
            base_key,
            pending: has_pending.then_some(p),
            ratchet,
        })
    }
}

/// Every session with one peer device: the one sent on first, then up to five older ones kept
/// for decryption only, newest first.
#[derive(Default)]
pub struct PeerSessions {
    sessions: Vec<Session>,
}

const PEER_SESSIONS_VERSION: u8 = 1;

/// The outcome of a successful decryption.
pub struct Decrypted {
    /// The plaintext (zeroized when dropped).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// True when the message built a new session from this device's prekeys.
    pub new_session: bool,
    /// The one-time prekey the message consumed, if any (delete it on the server side view).
    pub consumed_one_time_prekey: Option<u32>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("plaintext_len", &self.plaintext.len())
            .field("new_session", &self.new_session)
            .field("consumed_one_time_prekey", &self.consumed_one_time_prekey)
            .finish()
    }
}

impl PeerSessions {
    /// No session yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when a session exists to send on.
    pub fn has_session(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Number of sessions held (the current one and the older ones).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// True when the next message will be a PreKey message (no reply decrypted yet).
    pub fn awaiting_reply(&self) -> bool {
        self.sessions.first().is_some_and(|s| s.pending.is_some())
    }

    /// X3DH as initiator with a device's bundle: verifies its certificate under the account
    /// chain (latest key, not revoked) and its prekey signature under the certified `IKs`, then
    /// starts a session that becomes the one sent on. Draws `EK_A`, then `DHs`, from `rng`.
    pub fn initiate(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        own: &DeviceIdentity,
        account: &AccountChain,
        bundle: &PreKeyBundle,
    ) -> Result<(), SessionError> {
        account.verify_device(&bundle.certificate)?;
        let peer = bundle.certificate.identity;
        bundle.signed_prekey.verify(&peer.signing)?;
        let ek = DhSecret::generate(rng);
        let opk = bundle.one_time_prekey;
        let secret = x3dh::initiate(
            own,
            &ek,
            &peer,
            &bundle.signed_prekey.key,
            opk.as_ref().map(|o| &o.key),
        )?;
        let dhs = DhSecret::generate(rng);
        let ratchet = Ratchet::initiator(&secret.sk, secret.ad, dhs, bundle.signed_prekey.key)?;
        let session = Session {
            base_key: ek.public_key().to_bytes(),
            pending: Some(PendingPreKey {
                spk_id: bundle.signed_prekey.id,
                opk_id: opk.map_or(0, |o| o.id),
            }),
            ratchet,
        };
        self.push_current(session);
        Ok(())
    }

    /// Encrypts on the current session: a PreKey message until a reply was decrypted, a
    /// Whisper message after. Persist [`PeerSessions::to_bytes`] before sending the result.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, SessionError> {
        self.sessions
            .first_mut()
            .ok_or(SessionError::NoSession)?
            .encrypt(plaintext)
    }

    /// Decrypts a PreKey or Whisper message from the peer device whose certified identity keys
    /// are `sender` (from its certificate, verified by the caller under the sender's pinned
    /// account key). All-or-nothing: on error nothing changes, here or in `prekeys`.
    pub fn decrypt(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        own: &DeviceIdentity,
        prekeys: &mut PreKeyStore,
        sender: &DeviceIdentityPublic,
        message: &[u8],
    ) -> Result<Decrypted, SessionError> {
        match pairwise_message_kind(message)? {
            PairwiseMessageKind::Whisper => self.decrypt_whisper(rng, own, sender, message),
            PairwiseMessageKind::PreKey => self.decrypt_prekey(rng, own, prekeys, sender, message),
        }
    }

    fn decrypt_whisper(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        own: &DeviceIdentity,
        sender: &DeviceIdentityPublic,
        message: &[u8],
    ) -> Result<Decrypted, SessionError> {
        let own = own.public();
        let sender = sender.to_bytes();
        let mut first_err = None;
        for i in 0..self.sessions.len() {
            let s = &mut self.sessions[i];
            if !ct_eq(s.peer_identity(s.is_initiator(&own)), &sender) {
                continue;
            }
            match s.decrypt(rng, message) {
                Ok(plaintext) => {
                    self.promote(i);
                    return Ok(Decrypted {
                        plaintext,
                        new_session: false,
                        consumed_one_time_prekey: None,
                    });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(SessionError::NoSession))
    }

    fn decrypt_prekey(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        own: &DeviceIdentity,
        prekeys: &mut PreKeyStore,
        sender: &DeviceIdentityPublic,
        message: &[u8],
    ) -> Result<Decrypted, SessionError> {
        let msg = PreKeyMessage::parse(message)?;
        if !ct_eq(&msg.identity.to_bytes(), &sender.to_bytes()) {
            return Err(SessionError::IdentityMismatch);
        }
        let base_key = msg.base_key.to_bytes();
        let own_public = own.public();
        // A known EK_A goes to that session's ratchet.
        if let Some(i) = self
            .sessions
            .iter()
            .position(|s| s.base_key == base_key && !s.is_initiator(&own_public))
        {
            let plaintext = self.sessions[i].decrypt(rng, msg.whisper)?;
            self.promote(i);
            return Ok(Decrypted {
                plaintext,
                new_session: false,
                consumed_one_time_prekey: None,
            });
        }
        if prekeys.was_used(msg.spk_id, &base_key) {
            return Err(SessionError::PreKeyReuse);
        }
        let spk = prekeys
            .signed_prekey(msg.spk_id)
            .ok_or(SessionError::UnknownSignedPreKey(msg.spk_id))?;
        let opk = match msg.opk_id {
            0 => None,
            id => Some(
                prekeys
                    .one_time_prekey(id)
                    .ok_or(SessionError::UnknownOneTimePreKey(id))?,
            ),
        };
        let secret = x3dh::respond(own, spk.secret(), opk, &msg.identity, &msg.base_key)?;
        let mut session = Session {
            base_key,
            pending: None,
            ratchet: Ratchet::responder(&secret.sk, secret.ad, spk.secret().clone()),
        };
        let plaintext = session.decrypt(rng, msg.whisper)?;
        prekeys.consume(msg.spk_id, base_key, msg.opk_id);
        self.push_current(session);
        Ok(Decrypted {
            plaintext,
            new_session: true,
            consumed_one_time_prekey: (msg.opk_id != 0).then_some(msg.opk_id),
        })
    }

    /// A new session becomes the one sent on; at most five older ones are kept.
    fn push_current(&mut self, session: Session) {
        self.sessions.insert(0, session);
        self.sessions.truncate(1 + MAX_OLD_SESSIONS);
    }

    /// The session that most recently decrypted a message is the one sent on.
    fn promote(&mut self, i: usize) {
        if i > 0 {
            let s = self.sessions.remove(i);
            self.sessions.insert(0, s);
        }
    }

    /// `(Ns, Nr, PN, stored skipped keys)` of the current session.
    pub fn counters(&self) -> Option<(u32, u32, u32, usize)> {
        self.sessions.first().map(|s| s.ratchet.counters())
    }

    /// The versioned persistence form (format 1). Holds secrets: store it encrypted at rest.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(PEER_SESSIONS_VERSION).u8(self.sessions.len() as u8);
        for s in &self.sessions {
            s.write(&mut w);
        }
        w.finish()
    }

    /// Restores from [`PeerSessions::to_bytes`]; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "peer sessions");
        r.version(PEER_SESSIONS_VERSION)?;
        let n = r.u8()? as usize;
        if n > 1 + MAX_OLD_SESSIONS {
            return Err(r.invalid("more sessions than a peer device may have"));
        }
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            sessions.push(Session::read(&mut r)?);
        }
        r.finish()?;
        Ok(Self { sessions })
    }
}

impl fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerSessions")
            .field("sessions", &self.sessions.len())
            .field("awaiting_reply", &self.awaiting_reply())
            .field("counters", &self.counters())
            .finish()
    }
}
