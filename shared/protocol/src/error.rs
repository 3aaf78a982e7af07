//! One error enum per failure domain. Every variant says what was wrong in words a client
//! developer can act on; none carries secret bytes.

use thiserror::Error;

/// A wire message, key or persisted state could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("{what} is truncated: {needed} more bytes were expected")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// How many more bytes the next field needed.
        needed: usize,
    },
    /// Bytes were left over after the structure ended.
    #[error("{what} has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// The structure being read.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// The first byte names no known message type.
    #[error("{what} starts with unknown type byte {found:#04x}")]
    UnknownType {
        /// The structure being read.
        what: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A persisted state was written by a format version this build does not read.
    #[error("{what} uses format version {found}; this build reads only version {supported}")]
    UnsupportedVersion {
        /// The state being read.
        what: &'static str,
        /// The version byte found.
        found: u8,
        /// The version this build reads.
        supported: u8,
    },
    /// A field holds a value the format forbids.
    #[error("{what} is invalid: {reason}")]
    Invalid {
        /// The structure being read.
        what: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
}

/// A certificate, revocation, rotation, prekey signature or account-key chain did not verify.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// A user id is not 3 to 32 bytes of `[a-z0-9._-]`.
    #[error("user id must be 3 to 32 characters of a-z, 0-9, '.', '_' or '-'")]
    InvalidUserId,
    /// A device id of zero.
    #[error("device id must be a non-zero 32-bit number")]
    InvalidDeviceId,
    /// A public key could not be decoded or is not allowed.
    #[error("{0} is not a valid public key")]
    InvalidPublicKey(&'static str),
    /// A signature did not verify under the key it must verify under.
    #[error("the {0} signature does not verify")]
    BadSignature(&'static str),
    /// The account key offered is not the pinned key nor reached from it by signed rotations.
    #[error("the account key of {0} changed and is not reached from the pinned key by a signed rotation; compare safety numbers before accepting it")]
    AccountKeyChanged(String),
    /// Two different rotations verify under the same key: the account is forked.
    #[error("the account {0} has two conflicting key rotations; nothing is sent to it")]
    ConflictingRotations(String),
}

/// X3DH or a Double Ratchet session refused an operation. The session state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionError {
    /// The input could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The peer's bundle or identity did not verify.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A Diffie-Hellman result was all zeros: the peer sent a small-order public key.
    #[error("a Diffie-Hellman result was all zeros: the {0} is a small-order point")]
    LowOrderPoint(&'static str),
    /// The message did not authenticate under the session.
    #[error("the message does not decrypt under any session with this device")]
    DecryptionFailed,
    /// The message number was already used or its key was deleted.
    #[error("message {n} was already received (replay) or its key expired")]
    Replay {
        /// The message number in the header.
        n: u32,
    },
    /// The message asks to skip more keys than the protocol allows.
    #[error("the message would skip {skip} message keys; at most {max} are allowed")]
    TooManySkipped {
        /// Keys the message would skip.
        skip: u64,
        /// The limit.
        max: u32,
    },
    /// The sending chain used every message number; a new session is needed.
    #[error("the sending chain is exhausted; start a new session")]
    ChainExhausted,
    /// The responder cannot send before it has decrypted a message.
    #[error("this session cannot send before it has received a message")]
    NotYetReceived,
    /// The PreKey message names a signed prekey this device does not hold.
    #[error("signed prekey {0} is unknown or expired")]
    UnknownSignedPreKey(u32),
    /// The PreKey message names a one-time prekey this device does not hold.
    #[error("one-time prekey {0} is unknown or already used")]
    UnknownOneTimePreKey(u32),
    /// The `(spk_id, EK_A)` pair already built a session.
    #[error("this PreKey message's ephemeral key was already used to build a session")]
    PreKeyReuse,
    /// The identity keys in a PreKey message differ from the sender's certificate.
    #[error("the PreKey message's identity keys do not match the sender's certificate")]
    IdentityMismatch,
    /// No session exists with the peer device.
    #[error("no session with this device")]
    NoSession,
}

/// A message body or key envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    /// The content is larger than the protocol allows.
    #[error("content is {len} bytes; at most {max} are allowed")]
    TooLarge {
        /// Content length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The padding is not `0x80 0x00*` within one 160-byte block.
    #[error("malformed padding: expected one 0x80 byte then zero bytes, 160 bytes at most")]
    BadPadding,
    /// The padded content is not a positive multiple of 160 bytes.
    #[error("the padded content is {0} bytes, not a positive multiple of 160")]
    BadPaddedLength(usize),
    /// The key envelope is not 64 bytes.
    #[error("the key envelope must hold 64 bytes, it holds {0}")]
    BadKeyEnvelope(usize),
    /// The body's hash differs from the one sealed in the key envelope.
    #[error("the body does not match the hash in its key envelope")]
    DigestMismatch,
    /// The body did not authenticate (wrong key, message id or tampered bytes).
    #[error("the body does not decrypt")]
    DecryptionFailed,
    /// The body is too short to hold a nonce and a tag.
    #[error("the body is truncated")]
    Truncated,
}

/// A sender-key (group) message or distribution was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SenderKeyError {
    /// The input could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The content was refused.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// No state for this sender and key id.
    #[error("no sender key {key_id} for this sender in this group")]
    UnknownKey {
        /// The key id named by the message.
        key_id: u32,
    },
    /// The signature does not verify under the state's signing key.
    #[error("the group message signature does not verify")]
    BadSignature,
    /// The header's sender or message id differs from what the server delivered.
    #[error("the group message header does not match its envelope ({0})")]
    HeaderMismatch(&'static str),
    /// The iteration is far ahead of the state.
    #[error("the group message jumps {jump} iterations ahead; at most {max} are allowed")]
    TooFarAhead {
        /// Iterations it would skip.
        jump: u32,
        /// The limit.
        max: u32,
    },
    /// The iteration was already used and its key is not cached.
    #[error("group message iteration {0} was already received (replay) or its key expired")]
    Replay(u32),
    /// The message did not decrypt.
    #[error("the group message does not decrypt")]
    DecryptionFailed,
    /// A distribution arrived over a session with a different device than it names.
    #[error("a sender key distribution must come from the device it names")]
    WrongDistributor,
    /// The sending chain is exhausted.
    #[error("the sender key is exhausted; rotate to a new key id")]
    ChainExhausted,
}

/// An attachment object could not be encrypted or was refused while decrypting. After an error
/// while decrypting, whatever was written to the output must be discarded.
#[derive(Debug, Error)]
pub enum AttachmentError {
    /// Reading the input or writing the output failed.
    #[error("attachment I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The object's length does not fit the declared size (known upfront, or the stream ended
    /// early).
    #[error("the attachment object is {actual} bytes; {expected} were expected for {size} bytes of content")]
    WrongLength {
        /// Declared plaintext size.
        size: u64,
        /// Expected object length.
        expected: u64,
        /// Actual object length.
        actual: u64,
    },
    /// The object continues after its last segment.
    #[error("the attachment object is longer than the {expected} bytes expected for {size} bytes of content")]
    TrailingBytes {
        /// Declared plaintext size.
        size: u64,
        /// Expected object length.
        expected: u64,
    },
    /// The object's SHA-256 differs from the pointer's digest.
    #[error("the attachment digest does not match: the object was changed or swapped")]
    DigestMismatch,
    /// A segment did not authenticate.
    #[error("attachment segment {0} does not decrypt: the object was changed, reordered, truncated or swapped, or the key is wrong")]
    BadSegment(u64),
    /// The size is larger than the limit.
    #[error("the attachment is {size} bytes; at most {max} are allowed")]
    TooLarge {
        /// Declared (or, while encrypting, read so far) size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

/// A signed request or WebSocket connect was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The `Authorization` header is malformed.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// The WebSocket connect query string is malformed.
    #[error("malformed connect query: {0}")]
    MalformedQuery(&'static str),
    /// The method or path handed to the verifier cannot have been signed.
    #[error("the request cannot be verified: {0}")]
    InvalidRequest(&'static str),
    /// The signed time is more than 5 minutes from the server's clock.
    #[error(
        "the signed time is {skew_ms} ms away from the server clock; at most 300000 ms are allowed"
    )]
    Expired {
        /// Absolute difference in milliseconds.
        skew_ms: u64,
    },
    /// The signature does not verify under the device's identity key.
    #[error("the request signature does not verify")]
    BadSignature,
}
