//! Every tuning limit and domain-separation label of the protocol, with the reason beside it.
//!
//! The labels are part of the wire format: changing one breaks interoperability and the test
//! vectors, so they live here and nowhere else.

/// Most skipped message keys one ratchet session stores. Bounds the memory and the work a
/// malicious peer can cause by claiming large message numbers; the earliest stored are dropped.
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Largest forward jump (`n - Nr`, or `pn - Nr`) a single ratchet message may ask for.
pub const MAX_SKIP: u32 = 2000;
/// Older sessions kept per peer device for decryption only, after a newer one replaced them.
pub const MAX_OLD_SESSIONS: usize = 5;
/// Largest forward jump (`i - iteration`) a single sender-key message may ask for.
pub const MAX_SENDER_KEY_JUMP: u32 = 25_000;
/// Skipped message keys cached per sender-key state.
pub const MAX_SENDER_KEY_SKIPPED: usize = 2000;
/// Previous sender-key states kept (for late messages) after a rotation.
pub const MAX_OLD_SENDER_KEYS: usize = 2;
/// How long a replaced sender-key state is kept for late messages (30 days, the queue TTL).
pub const OLD_SENDER_KEY_KEEP_MS: u64 = 30 * DAY_MS;
/// A chain whose counter reaches this value sends nothing more (the last message has `n = 2^32-2`).
pub const CHAIN_EXHAUSTED: u32 = u32::MAX;
/// Padding block of message content.
pub const PAD_BLOCK: usize = 160;
/// Largest `content` a message body or a sender-key message may carry (96 KiB).
pub const MAX_CONTENT_LEN: usize = 98_304;
/// Plaintext bytes per attachment segment.
pub const ATTACHMENT_SEGMENT: usize = 65_536;
/// Length of the random attachment nonce prefix (12-byte nonce less the 5-byte stream counter).
pub const ATTACHMENT_PREFIX_LEN: usize = 7;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Largest accepted difference between a signed request's time and the server's clock (5 min).
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;
/// How long a replaced signed prekey's private key is kept: the queue TTL plus a week.
pub const SIGNED_PREKEY_KEEP_MS: u64 = 37 * DAY_MS;
/// Smallest and largest `user_id` length in bytes.
pub const USER_ID_LEN: (usize, usize) = (3, 32);
/// One day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

pub(crate) const LABEL_CERT: &[u8] = b"cipherpost/device-cert/v1";
pub(crate) const LABEL_REVOKE: &[u8] = b"cipherpost/device-revoke/v1";
pub(crate) const LABEL_ROTATE: &[u8] = b"cipherpost/account-key-rotate/v1";
pub(crate) const LABEL_FINGERPRINT: &[u8] = b"cipherpost/fingerprint/v1";
pub(crate) const LABEL_SPK: &[u8] = b"cipherpost/spk/v1";
pub(crate) const LABEL_X3DH: &[u8] = b"cipherpost/x3dh/v1";
pub(crate) const LABEL_ROOT: &[u8] = b"cipherpost/ratchet/root/v1";
pub(crate) const LABEL_RATCHET_MSG: &[u8] = b"cipherpost/ratchet/msg/v1";
pub(crate) const LABEL_BODY: &[u8] = b"cipherpost/body/v1";
pub(crate) const LABEL_SENDER_KEY_MSG: &[u8] = b"cipherpost/senderkey/msg/v1";
pub(crate) const LABEL_REQUEST: &[u8] = b"cipherpost/request/v1\n";
pub(crate) const LABEL_CONNECT: &[u8] = b"cipherpost/connect/v1\n";
