//! Sender keys for groups (PROTOCOL.md, "Sender keys"), after libsignal's: each device keeps
//! one sending chain per group ([`OwnSenderKey`]), hands its current state to the other members
//! inside their pairwise sessions (a distribution), and signs every group message.
//!
//! ```text
//! sender        = u16be(len(user_id)) || user_id || u32be(device_id)
//! distribution  = 0x04 || group_id || sender || u32be(key_id) || u32be(iteration)
//!                 || chain_key || SKs.pub
//! seal i:       mk_i = HMAC(ck_i, 0x01); (key, nonce) = KN(mk_i, "cipherpost/senderkey/msg/v1")
//!               state becomes (i + 1, HMAC(ck_i, 0x02))
//! hdr           = 0x03 || group_id || sender || u32be(key_id) || u32be(i) || message_id (16)
//! m             = hdr || SEAL(key, nonce, content_padded, hdr)
//! wire          = m || SIG(SKs, m)
//! ```
//!
//! Never reuse a message key: [`OwnSenderKey::encrypt`] advances the chain before it returns
//! the wire bytes, and the caller must persist [`OwnSenderKey::to_bytes`] before those bytes
//! leave the device. A retry resends the stored bytes; it never encrypts again. Sender-key
//! state is never copied to another device nor restored from a backup.
//!
//! Receivers keep a [`GroupSenderKeys`]: per (group, sending device) a [`SenderKeyRecord`]
//! with the current state and the previous [`MAX_OLD_SENDER_KEYS`] states (kept
//! [`OLD_SENDER_KEY_KEEP_MS`] after being replaced), each caching up to
//! [`MAX_SENDER_KEY_SKIPPED`] skipped message keys. Every refused message or distribution
//! leaves the state unchanged.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
};

use ed25519_dalek::{Signature, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::{
    body::{pad, unpad, MessageId},
    codec::{Reader, Writer},
    consts::{
        CHAIN_EXHAUSTED, LABEL_SENDER_KEY_MSG, MAX_CONTENT_LEN, MAX_OLD_SENDER_KEYS,
        MAX_SENDER_KEY_JUMP, MAX_SENDER_KEY_SKIPPED, OLD_SENDER_KEY_KEEP_MS, PAD_BLOCK, TAG_LEN,
    },
    error::{DecodeError, SenderKeyError},
    identity::{DeviceId, UserId},
    keys::{hex_short, random_32, verify_sig, verifying_key, SigningSecret},
    primitives::{hmac_sha256, kn, open, seal},
};

/// First byte of a group message.
const SENDER_KEY_MESSAGE_TYPE: u8 = 0x03;
/// First byte of a sender key distribution.
const SENDER_KEY_DISTRIBUTION_TYPE: u8 = 0x04;
/// Ed25519 signature length.
const SIGNATURE_LEN: usize = 64;
/// Persistence format of [`OwnSenderKey`].
const OWN_SENDER_KEY_VERSION: u8 = 1;
/// Persistence format of [`SenderKeyRecord`].
const SENDER_KEY_RECORD_VERSION: u8 = 1;
/// Persistence format of [`GroupSenderKeys`].
const GROUP_SENDER_KEYS_VERSION: u8 = 1;

crate::random_id! {
    /// A group's id: 16 random bytes.
    GroupId
}

/// One device of one account: the sender of a group message, or the peer of a pairwise session.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceAddress {
    /// The account.
    pub user_id: UserId,
    /// The device within the account.
    pub device_id: DeviceId,
}

impl DeviceAddress {
    /// The address of `device_id` of `user_id`.
    pub fn new(user_id: UserId, device_id: DeviceId) -> Self {
        Self { user_id, device_id }
    }

    /// `sender = u16be(len(user_id)) || user_id || u32be(device_id)`.
    fn encode(&self, w: &mut Writer) {
        self.user_id.encode(w);
        w.u32(self.device_id.get());
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let user_id = UserId::decode(r)?;
        let device_id = DeviceId::decode(r)?;
        Ok(Self { user_id, device_id })
    }
}

/// `mk_i = HMAC(ck_i, 0x01)`.
fn message_key(chain_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    hmac_sha256(chain_key, &[0x01])
}

/// `ck_{i+1} = HMAC(ck_i, 0x02)`.
fn next_chain_key(chain_key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    hmac_sha256(chain_key, &[0x02])
}

/// `hdr = 0x03 || group_id || sender || u32be(key_id) || u32be(i) || message_id`.
fn header(
    group_id: &GroupId,
    sender: &DeviceAddress,
    key_id: u32,
    iteration: u32,
    message_id: &MessageId,
) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(SENDER_KEY_MESSAGE_TYPE).put(&group_id.0);
    sender.encode(&mut w);
    w.u32(key_id).u32(iteration).put(&message_id.0);
    w.finish().to_vec()
}

/// This device's sending state for one group: `key_id`, `iteration` (the next to send),
/// `chain_key` and the signing pair `SKs`. Zeroized on drop; `Debug` shows only public parts.
pub struct OwnSenderKey {
    group_id: GroupId,
    sender: DeviceAddress,
    key_id: u32,
    iteration: u32,
    chain_key: Zeroizing<[u8; 32]>,
    signing: SigningSecret,
}

impl OwnSenderKey {
    /// A fresh sender key for `group_id`, sent from `me`, starting at iteration 0.
    ///
    /// Draws from `rng`, in this order: `key_id` (4 bytes read as `u32be`), `chain_key`
    /// (32 bytes), then the seed of `SKs` (32 bytes).
    pub fn generate(
        rng: &mut (impl RngCore + CryptoRng),
        group_id: GroupId,
        me: DeviceAddress,
    ) -> Self {
        let mut key_id = [0u8; 4];
        rng.fill_bytes(&mut key_id);
        let chain_key = random_32(rng);
        let signing = SigningSecret::generate(rng);
        Self {
            group_id,
            sender: me,
            key_id: u32::from_be_bytes(key_id),
            iteration: 0,
            chain_key,
            signing,
        }
    }

    /// A new sender key for the same group and device, with a `key_id` different from this
    /// one's (drawn as [`OwnSenderKey::generate`] does, again if the `key_id` repeats). Used when
    /// a member leaves or the chain is exhausted; distribute it to the remaining members only.
    pub fn rotate(&self, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        loop {
            let next = Self::generate(rng, self.group_id, self.sender.clone());
            if next.key_id != self.key_id {
                return next;
            }
        }
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The sending device.
    pub fn sender(&self) -> &DeviceAddress {
        &self.sender
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The iteration of the next message to send.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// `SKs.pub`.
    pub fn signing_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The distribution of the current state (its `iteration` and `chain_key`): a new member
    /// can read messages from here on, not earlier ones. It holds the chain key: send it only
    /// inside a pairwise session with each member's device.
    pub fn distribution(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(SENDER_KEY_DISTRIBUTION_TYPE).put(&self.group_id.0);
        self.sender.encode(&mut w);
        w.u32(self.key_id)
            .u32(self.iteration)
            .put(self.chain_key.as_ref());
        w.put(self.signing.verifying_key().as_bytes());
        w.finish()
    }

    /// Encrypts and signs a group message at the current iteration, then advances the chain.
    ///
    /// The caller persists [`OwnSenderKey::to_bytes`] before the returned bytes leave the device
    /// and resends those exact bytes on a retry. At `iteration == 2^32-1` nothing more is sent
    /// ([`SenderKeyError::ChainExhausted`]): rotate to a new key id.
    pub fn encrypt(
        &mut self,
        message_id: &MessageId,
        content: &[u8],
    ) -> Result<Vec<u8>, SenderKeyError> {
        if self.iteration == CHAIN_EXHAUSTED {
            return Err(SenderKeyError::ChainExhausted);
        }
        let padded = pad(content)?;
        let mk = message_key(&self.chain_key);
        let keys = kn(mk.as_ref(), LABEL_SENDER_KEY_MSG);
        let mut wire = header(
            &self.group_id,
            &self.sender,
            self.key_id,
            self.iteration,
            message_id,
        );
        let ct = seal(&keys.key, &keys.nonce, &padded, &wire);
        wire.extend_from_slice(&ct);
        let signature = self.signing.sign(&wire);
        wire.extend_from_slice(&signature.to_bytes());
        self.chain_key = next_chain_key(&self.chain_key);
        self.iteration += 1;
        Ok(wire)
    }

    /// The versioned persistence form (format 1): `group_id || sender || key_id || iteration ||
    /// chain_key || SKs seed`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(OWN_SENDER_KEY_VERSION).put(&self.group_id.0);
        self.sender.encode(&mut w);
        w.u32(self.key_id)
            .u32(self.iteration)
            .put(self.chain_key.as_ref());
        w.put(self.signing.to_bytes().as_ref());
        w.finish()
    }

    /// Restores from [`OwnSenderKey::to_bytes`]; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "own sender key state");
        r.version(OWN_SENDER_KEY_VERSION)?;
        let group_id = GroupId(r.array()?);
        let sender = DeviceAddress::decode(&mut r)?;
        let key_id = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = r.secret::<32>()?;
        let seed = r.secret::<32>()?;
        r.finish()?;
        Ok(Self {
            group_id,
            sender,
            key_id,
            iteration,
            chain_key,
            signing: SigningSecret::from_bytes(&seed),
        })
    }
}

impl fmt::Debug for OwnSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnSenderKey")
            .field("group_id", &self.group_id)
            .field("sender", &self.sender)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field(
                "signing_key",
                &hex_short(self.signing.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

/// A decoded sender key distribution (`0x04 || group_id || sender || key_id || iteration ||
/// chain_key || SKs.pub`). It holds a chain key: zeroized on drop, hidden from `Debug`.
pub struct SenderKeyDistribution {
    group_id: GroupId,
    sender: DeviceAddress,
    key_id: u32,
    iteration: u32,
    chain_key: Zeroizing<[u8; 32]>,
    signing_key: VerifyingKey,
}

impl SenderKeyDistribution {
    /// Decodes a distribution, refusing an invalid or small-order signing key. Lets a client
    /// check the group and sender before [`GroupSenderKeys::process_distribution`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "sender key distribution");
        let kind = r.u8()?;
        if kind != SENDER_KEY_DISTRIBUTION_TYPE {
            return Err(DecodeError::UnknownType {
                what: "sender key distribution",
                found: kind,
            });
        }
        let group_id = GroupId(r.array()?);
        let sender = DeviceAddress::decode(&mut r)?;
        let key_id = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = r.secret::<32>()?;
        let signing_key = verifying_key(&r.array()?, "sender signing key")
            .map_err(|_| r.invalid("the signing key is not a valid Ed25519 public key"))?;
        r.finish()?;
        Ok(Self {
            group_id,
            sender,
            key_id,
            iteration,
            chain_key,
            signing_key,
        })
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The device whose sending state this is.
    pub fn sender(&self) -> &DeviceAddress {
        &self.sender
    }

    /// The key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The first iteration the distribution lets the receiver decrypt.
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// `SKs.pub`.
    pub fn signing_key(&self) -> VerifyingKey {
        self.signing_key
    }
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("group_id", &self.group_id)
            .field("sender", &self.sender)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("signing_key", &hex_short(self.signing_key.as_bytes()))
            .finish_non_exhaustive()
    }
}

/// What [`GroupSenderKeys::process_distribution`] did with a distribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistributionOutcome {
    /// The state was stored; a state it replaced is kept for late messages.
    Stored,
    /// A state with this `(group_id, sender, key_id)` is already held: nothing changed.
    AlreadyHeld,
}

/// A decrypted group message.
pub struct DecryptedGroupMessage {
    /// The group named by the (signed) header.
    pub group_id: GroupId,
    /// The sending device, as the header names it and the server delivered it.
    pub sender: DeviceAddress,
    /// The sender key it was sealed under.
    pub key_id: u32,
    /// Its iteration.
    pub iteration: u32,
    /// The content, padding removed.
    pub content: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for DecryptedGroupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptedGroupMessage")
            .field("group_id", &self.group_id)
            .field("sender", &self.sender)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// The public header of a group message (`hdr`), read without any key: what the server checks
/// against the authenticated sender, the group and the message id before it fans the message
/// out. Parsing checks only the framing (type byte, field lengths, room for the tag and the
/// signature); the signature can be verified only by members holding the sender key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKeyMessageHeader {
    /// The group.
    pub group_id: GroupId,
    /// The sending device.
    pub sender: DeviceAddress,
    /// The sender key it is sealed under.
    pub key_id: u32,
    /// Its iteration.
    pub iteration: u32,
    /// The group message's server `message_id`.
    pub message_id: MessageId,
}

impl SenderKeyMessageHeader {
    /// Parses the header of a wire group message (`0x03 || group_id || sender || key_id || i ||
    /// message_id || SEAL(...) || SIG`), refusing anything that is not a well-framed one.
    pub fn parse(wire: &[u8]) -> Result<Self, DecodeError> {
        let m = GroupMessage::parse(wire)?;
        Ok(Self {
            group_id: m.group_id,
            sender: m.sender,
            key_id: m.key_id,
            iteration: m.iteration,
            message_id: m.message_id,
        })
    }
}

/// A parsed group message, borrowing the wire bytes.
struct GroupMessage<'a> {
    group_id: GroupId,
    sender: DeviceAddress,
    key_id: u32,
    iteration: u32,
    message_id: MessageId,
    /// `hdr`, the associated data.
    header: &'a [u8],
    /// `SEAL(key, nonce, content_padded, hdr)`.
    ciphertext: &'a [u8],
    /// `m = hdr || ciphertext`, the signed bytes.
    signed: &'a [u8],
    signature: Signature,
}

impl<'a> GroupMessage<'a> {
    fn parse(wire: &'a [u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "sender key message";
        let mut r = Reader::new(wire, WHAT);
        let kind = r.u8()?;
        if kind != SENDER_KEY_MESSAGE_TYPE {
            return Err(DecodeError::UnknownType {
                what: WHAT,
                found: kind,
            });
        }
        let group_id = GroupId(r.array()?);
        let sender = DeviceAddress::decode(&mut r)?;
        let key_id = r.u32()?;
        let iteration = r.u32()?;
        if iteration == CHAIN_EXHAUSTED {
            return Err(r.invalid("iteration 2^32-1 is never sent"));
        }
        let message_id = MessageId(r.array()?);
        let header_len = wire.len() - r.remaining();
        let rest = r.rest();
        if rest.len() < TAG_LEN + SIGNATURE_LEN {
            return Err(DecodeError::Truncated {
                what: WHAT,
                needed: TAG_LEN + SIGNATURE_LEN - rest.len(),
            });
        }
        // `SEAL` of `content_padded`: a whole number (at least one) of 160-byte pad blocks, at
        // most those of the longest content, plus the tag.
        let sealed = rest.len() - TAG_LEN - SIGNATURE_LEN;
        let max_padded = PAD_BLOCK * (MAX_CONTENT_LEN + 1).div_ceil(PAD_BLOCK);
        if sealed == 0 || sealed % PAD_BLOCK != 0 {
            return Err(r.invalid(
                "its sealed content is not a whole number of 160-byte pad blocks \
                 (truncated or padded wrongly)",
            ));
        }
        if sealed > max_padded {
            return Err(r.invalid("its sealed content is longer than the longest content padded"));
        }
        let (signed, signature) = wire.split_at(wire.len() - SIGNATURE_LEN);
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(signature);
        Ok(Self {
            group_id,
            sender,
            key_id,
            iteration,
            message_id,
            header: &wire[..header_len],
            ciphertext: &signed[header_len..],
            signed,
            signature: Signature::from_bytes(&sig),
        })
    }
}

/// A receiving state for one `key_id` of one sender.
struct ReceiverChain {
    key_id: u32,
    /// The next iteration the chain key derives.
    iteration: u32,
    chain_key: Zeroizing<[u8; 32]>,
    signing_key: VerifyingKey,
    /// Message keys of skipped iterations; iterations are stored in increasing order, so the
    /// smallest is the earliest stored and goes first.
    skipped: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl ReceiverChain {
    fn from_distribution(d: &SenderKeyDistribution) -> Self {
        Self {
            key_id: d.key_id,
            iteration: d.iteration,
            chain_key: d.chain_key.clone(),
            signing_key: d.signing_key,
            skipped: BTreeMap::new(),
        }
    }

    fn verify(&self, msg: &GroupMessage<'_>) -> Result<(), SenderKeyError> {
        verify_sig(
            &self.signing_key,
            msg.signed,
            &msg.signature,
            "sender key message",
        )
        .map_err(|_| SenderKeyError::BadSignature)
    }

    /// Decrypts a message whose signature verified; changes the state only on success.
    fn decrypt(&mut self, msg: &GroupMessage<'_>) -> Result<Zeroizing<Vec<u8>>, SenderKeyError> {
        let i = msg.iteration;
        if i < self.iteration {
            let mk = self.skipped.get(&i).ok_or(SenderKeyError::Replay(i))?;
            let content = open_message(mk, msg)?;
            self.skipped.remove(&i);
            return Ok(content);
        }
        let jump = i - self.iteration;
        if jump > MAX_SENDER_KEY_JUMP {
            return Err(SenderKeyError::TooFarAhead {
                jump,
                max: MAX_SENDER_KEY_JUMP,
            });
        }
        // Only the last MAX_SENDER_KEY_SKIPPED skipped keys could survive the cache bound.
        let keep_from = i.saturating_sub(MAX_SENDER_KEY_SKIPPED as u32);
        let mut fresh = Vec::new();
        let mut ck = self.chain_key.clone();
        for n in self.iteration..i {
            if n >= keep_from {
                fresh.push((n, message_key(&ck)));
            }
            ck = next_chain_key(&ck);
        }
        let content = open_message(&message_key(&ck), msg)?;
        // The tag verified and the padding is sound: commit.
        self.chain_key = next_chain_key(&ck);
        self.iteration = i + 1; // i < 2^32-1 (checked when parsing)
        self.skipped.extend(fresh);
        while self.skipped.len() > MAX_SENDER_KEY_SKIPPED {
            self.skipped.pop_first();
        }
        Ok(content)
    }

    fn encode(&self, w: &mut Writer) {
        w.u32(self.key_id)
            .u32(self.iteration)
            .put(self.chain_key.as_ref());
        w.put(self.signing_key.as_bytes());
        w.u32(self.skipped.len() as u32); // at most MAX_SENDER_KEY_SKIPPED
        for (n, mk) in &self.skipped {
            w.u32(*n).put(mk.as_ref());
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let key_id = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = r.secret::<32>()?;
        let signing_key = verifying_key(&r.array()?, "sender signing key")
            .map_err(|_| r.invalid("a signing key is not a valid Ed25519 public key"))?;
        let count = r.count(MAX_SENDER_KEY_SKIPPED)?;
        let mut skipped = BTreeMap::new();
        let mut previous: Option<u32> = None;
        for _ in 0..count {
            let n = r.u32()?;
            if n >= iteration || previous.is_some_and(|p| n <= p) {
                return Err(r.invalid("skipped iterations must increase and precede the chain"));
            }
            previous = Some(n);
            skipped.insert(n, r.secret::<32>()?);
        }
        Ok(Self {
            key_id,
            iteration,
            chain_key,
            signing_key,
            skipped,
        })
    }
}

impl fmt::Debug for ReceiverChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyState")
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("signing_key", &hex_short(self.signing_key.as_bytes()))
            .field("skipped_keys", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// `OPEN` with the keys of `mk`, then strip the padding.
fn open_message(
    mk: &[u8; 32],
    msg: &GroupMessage<'_>,
) -> Result<Zeroizing<Vec<u8>>, SenderKeyError> {
    let keys = kn(mk, LABEL_SENDER_KEY_MSG);
    let padded = open(&keys.key, &keys.nonce, msg.ciphertext, msg.header)
        .map_err(|_| SenderKeyError::DecryptionFailed)?;
    Ok(unpad(&padded)?)
}

/// A state replaced by a newer `key_id`, kept for late messages.
struct OldChain {
    replaced_ms: u64,
    chain: ReceiverChain,
}

impl OldChain {
    fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.replaced_ms) > OLD_SENDER_KEY_KEEP_MS
    }
}

/// The receiving states of one sending device in one group: the current `key_id` state and up
/// to [`MAX_OLD_SENDER_KEYS`] replaced ones (newest first), each kept
/// [`OLD_SENDER_KEY_KEEP_MS`] after it was replaced. Zeroized on drop; `Debug` shows only
/// public parts.
pub struct SenderKeyRecord {
    group_id: GroupId,
    sender: DeviceAddress,
    current: ReceiverChain,
    old: VecDeque<OldChain>,
}

impl SenderKeyRecord {
    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The sending device.
    pub fn sender(&self) -> &DeviceAddress {
        &self.sender
    }

    /// The key id of the current state.
    pub fn key_id(&self) -> u32 {
        self.current.key_id
    }

    /// The key ids held, current first, then the replaced ones newest first (expired ones
    /// included until the next prune).
    pub fn key_ids(&self) -> Vec<u32> {
        std::iter::once(self.current.key_id)
            .chain(self.old.iter().map(|o| o.chain.key_id))
            .collect()
    }

    fn holds(&self, key_id: u32) -> bool {
        self.current.key_id == key_id || self.old.iter().any(|o| o.chain.key_id == key_id)
    }

    fn prune(&mut self, now_ms: u64) {
        self.old.retain(|o| !o.expired(now_ms));
    }

    /// The state for `key_id`, if held and not expired.
    fn chain_mut(&mut self, key_id: u32, now_ms: u64) -> Option<&mut ReceiverChain> {
        if self.current.key_id == key_id {
            return Some(&mut self.current);
        }
        self.old
            .iter_mut()
            .find(|o| o.chain.key_id == key_id && !o.expired(now_ms))
            .map(|o| &mut o.chain)
    }

    fn replace_current(&mut self, chain: ReceiverChain, now_ms: u64) {
        let replaced = std::mem::replace(&mut self.current, chain);
        self.old.push_front(OldChain {
            replaced_ms: now_ms,
            chain: replaced,
        });
        self.old.truncate(MAX_OLD_SENDER_KEYS);
    }

    /// The versioned persistence form (format 1): `group_id || sender || current state ||
    /// u32be(count) || (u64be(replaced_ms) || state)*`, each state being `key_id || iteration ||
    /// chain_key || SKs.pub || u32be(count) || (u32be(i) || mk_i)*`.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(SENDER_KEY_RECORD_VERSION).put(&self.group_id.0);
        self.sender.encode(&mut w);
        self.current.encode(&mut w);
        w.u32(self.old.len() as u32); // at most MAX_OLD_SENDER_KEYS
        for o in &self.old {
            w.u64(o.replaced_ms);
            o.chain.encode(&mut w);
        }
        w.finish()
    }

    /// Restores from [`SenderKeyRecord::to_bytes`]; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "sender key record");
        r.version(SENDER_KEY_RECORD_VERSION)?;
        let group_id = GroupId(r.array()?);
        let sender = DeviceAddress::decode(&mut r)?;
        let current = ReceiverChain::decode(&mut r)?;
        let count = r.count(MAX_OLD_SENDER_KEYS)?;
        let mut record = Self {
            group_id,
            sender,
            current,
            old: VecDeque::new(),
        };
        for _ in 0..count {
            let replaced_ms = r.u64()?;
            let chain = ReceiverChain::decode(&mut r)?;
            if record.holds(chain.key_id) {
                return Err(r.invalid("a key id appears twice"));
            }
            record.old.push_back(OldChain { replaced_ms, chain });
        }
        r.finish()?;
        Ok(record)
    }
}

impl fmt::Debug for SenderKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let old: Vec<_> = self.old.iter().map(|o| (&o.chain, o.replaced_ms)).collect();
        f.debug_struct("SenderKeyRecord")
            .field("group_id", &self.group_id)
            .field("sender", &self.sender)
            .field("current", &self.current)
            .field("old", &old)
            .finish()
    }
}

/// Every sender key this device received: one [`SenderKeyRecord`] per (group, sending device).
#[derive(Default)]
pub struct GroupSenderKeys {
    records: BTreeMap<(GroupId, DeviceAddress), SenderKeyRecord>,
}

impl GroupSenderKeys {
    /// No sender keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes a distribution that arrived inside the pairwise session with `from`.
    ///
    /// Refuses one naming another device than `from` ([`SenderKeyError::WrongDistributor`]);
    /// ignores one whose `(group_id, sender, key_id)` is already held
    /// ([`DistributionOutcome::AlreadyHeld`]). A new `key_id` becomes the current state; the
    /// state it replaces is kept for late messages. Replaced states older than 30 days at
    /// `now_ms` are deleted. Checking that `from` is a member of the group is the caller's.
    pub fn process_distribution(
        &mut self,
        from: &DeviceAddress,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<DistributionOutcome, SenderKeyError> {
        let dist = SenderKeyDistribution::from_bytes(bytes)?;
        if dist.sender != *from {
            return Err(SenderKeyError::WrongDistributor);
        }
        let chain = ReceiverChain::from_distribution(&dist);
        match self.records.get_mut(&(dist.group_id, dist.sender.clone())) {
            Some(record) => {
                record.prune(now_ms);
                if record.holds(dist.key_id) {
                    return Ok(DistributionOutcome::AlreadyHeld);
                }
                record.replace_current(chain, now_ms);
            }
            None => {
                let record = SenderKeyRecord {
                    group_id: dist.group_id,
                    sender: dist.sender.clone(),
                    current: chain,
                    old: VecDeque::new(),
                };
                self.records
                    .insert((dist.group_id, dist.sender.clone()), record);
            }
        }
        Ok(DistributionOutcome::Stored)
    }

    /// Decrypts a group message the server delivered as sent by `delivered_sender` with
    /// `delivered_message_id`.
    ///
    /// Finds the state by (group_id, sender) and key_id, verifies the signature before anything
    /// else, then refuses a header whose sender or message id differs from the delivered ones,
    /// a jump of more than [`MAX_SENDER_KEY_JUMP`] iterations, and an earlier iteration whose
    /// key is not cached (replay). Replaced states older than 30 days at `now_ms` are not used.
    /// The state changes only when the message decrypts.
    pub fn decrypt(
        &mut self,
        delivered_sender: &DeviceAddress,
        delivered_message_id: &MessageId,
        wire: &[u8],
        now_ms: u64,
    ) -> Result<DecryptedGroupMessage, SenderKeyError> {
        let msg = GroupMessage::parse(wire)?;
        let unknown = SenderKeyError::UnknownKey { key_id: msg.key_id };
        let record = self
            .records
            .get_mut(&(msg.group_id, msg.sender.clone()))
            .ok_or(unknown)?;
        let chain = record
            .chain_mut(msg.key_id, now_ms)
            .ok_or(SenderKeyError::UnknownKey { key_id: msg.key_id })?;
        chain.verify(&msg)?;
        if msg.sender != *delivered_sender {
            return Err(SenderKeyError::HeaderMismatch("sender"));
        }
        if msg.message_id != *delivered_message_id {
            return Err(SenderKeyError::HeaderMismatch("message id"));
        }
        let content = chain.decrypt(&msg)?;
        record.prune(now_ms);
        Ok(DecryptedGroupMessage {
            group_id: msg.group_id,
            sender: msg.sender,
            key_id: msg.key_id,
            iteration: msg.iteration,
            content,
        })
    }

    /// The record of `sender` in `group_id`, if any.
    pub fn record(&self, group_id: &GroupId, sender: &DeviceAddress) -> Option<&SenderKeyRecord> {
        self.records.get(&(*group_id, sender.clone()))
    }

    /// Adds a record (restored from [`SenderKeyRecord::from_bytes`] by a client that persists
    /// records one by one), returning the one it replaces.
    pub fn insert_record(&mut self, record: SenderKeyRecord) -> Option<SenderKeyRecord> {
        self.records
            .insert((record.group_id, record.sender.clone()), record)
    }

    /// Forgets the sender keys of `sender` in `group_id` (a member removed from the group).
    pub fn remove_sender(
        &mut self,
        group_id: &GroupId,
        sender: &DeviceAddress,
    ) -> Option<SenderKeyRecord> {
        self.records.remove(&(*group_id, sender.clone()))
    }

    /// Forgets every sender key of `group_id` (this device left the group).
    pub fn remove_group(&mut self, group_id: &GroupId) {
        self.records.retain(|(g, _), _| g != group_id);
    }

    /// Deletes replaced states older than 30 days at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        for record in self.records.values_mut() {
            record.prune(now_ms);
        }
    }

    /// The versioned persistence form (format 1): `u32be(count) || (u32be(len) || record)*`,
    /// each record as [`SenderKeyRecord::to_bytes`].
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new();
        w.u8(GROUP_SENDER_KEYS_VERSION)
            .u32(self.records.len() as u32);
        for record in self.records.values() {
            w.bytes32(&record.to_bytes());
        }
        w.finish()
    }

    /// Restores from [`GroupSenderKeys::to_bytes`]; refuses unknown versions.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "group sender keys");
        r.version(GROUP_SENDER_KEYS_VERSION)?;
        let count = r.u32()?;
        let mut out = Self::new();
        for _ in 0..count {
            let record = SenderKeyRecord::from_bytes(r.bytes32()?)?;
            if out.insert_record(record).is_some() {
                return Err(r.invalid("a (group, sender) record appears twice"));
            }
        }
        r.finish()?;
        Ok(out)
    }
}

impl fmt::Debug for GroupSenderKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.records.values()).finish()
    }
}
