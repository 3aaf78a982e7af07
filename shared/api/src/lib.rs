//! # cipherpost-api
//!
//! The JSON of every request, response and WebSocket push of the cipherpost API (documented in
//! `api/openapi.yaml`), shared by the server and the client so that the two cannot drift. It has
//! no AWS dependency, so the CLI does not compile the SDK.
//!
//! Binary fields are unpadded base64url ([`B64`]). What the server reads (requests) refuses
//! unknown fields, so that a typo is an error and not a silently ignored setting; what the
//! client reads (responses, pushes) accepts them, so that a newer server does not break an
//! older client.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Bytes carried as unpadded base64url text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl B64 {
    /// The bytes as a fixed-size array, or an error naming the field.
    pub fn array<const N: usize>(&self, field: &'static str) -> Result<[u8; N], FieldLengthError> {
        <[u8; N]>::try_from(self.0.as_slice()).map_err(|_| FieldLengthError {
            field,
            expected: N,
            got: self.0.len(),
        })
    }
}

/// A binary field of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLengthError {
    /// The field's name as the API spells it.
    pub field: &'static str,
    /// The length it must have.
    pub expected: usize,
    /// The length it had.
    pub got: usize,
}

impl std::fmt::Display for FieldLengthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} must be {} bytes, got {}",
            self.field, self.expected, self.got
        )
    }
}

impl std::error::Error for FieldLengthError {}

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({} bytes)", self.0.len())
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| de::Error::custom("not unpadded base64url"))
    }
}

/// A signed prekey as uploaded and as handed out in bundles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPreKeyJson {
    /// `spk_id`.
    pub id: u32,
    /// `SPK.pub` (32 bytes).
    pub key: B64,
    /// `SIG(IKs, "cipherpost/spk/v1" || u32be(spk_id) || SPK.pub)` (64 bytes).
    pub signature: B64,
}

/// A one-time prekey.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneTimePreKeyJson {
    /// `opk_id`, non-zero, strictly increasing per device.
    pub id: u32,
    /// `OPK.pub` (32 bytes).
    pub key: B64,
}

/// A device being registered: its certificate (which names the device id and identity keys)
/// and its prekeys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// `cert_msg || signature` (PROTOCOL.md, "Identities").
    pub certificate: B64,
    /// The device's signed prekey.
    pub signed_prekey: SignedPreKeyJson,
    /// Up to 100 one-time prekeys.
    #[serde(default)]
    pub one_time_prekeys: Vec<OneTimePreKeyJson>,
}

/// `PUT /v1/accounts/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    /// `AK.pub` (32 bytes).
    pub account_key: B64,
    /// The first device.
    pub device: NewDevice,
}

/// `POST /v1/accounts/{user}/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDeviceRequest {
    /// The new device.
    pub device: NewDevice,
}

/// Answer to account creation and device linking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRegistered {
    /// The account.
    pub user: String,
    /// The registered device.
    pub device_id: u32,
}

/// `DELETE /v1/accounts/{user}/devices/{device}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeDeviceRequest {
    /// `revoke_msg || signature` under the current account key.
    pub revocation: B64,
    /// `rotate_msg || signature`: the current account key rotates to a new one.
    pub rotation: B64,
    /// Fresh certificates under the new key for every remaining active device.
    pub certificates: Vec<B64>,
}

/// Answer to a revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRevoked {
    /// The account.
    pub user: String,
    /// The revoked device.
    pub device_id: u32,
    /// The account key now in force.
    pub account_key: B64,
}

/// `PUT /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadKeysRequest {
    /// A new signed prekey, replacing the current one.
    #[serde(default)]
    pub signed_prekey: Option<SignedPreKeyJson>,
    /// Up to 100 one-time prekeys, ids strictly increasing and above every stored id.
    #[serde(default)]
    pub one_time_prekeys: Vec<OneTimePreKeyJson>,
}

/// `GET /v1/keys` and the answer to `PUT /v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreKeyCount {
    /// One-time prekeys the server still holds for the caller.
    pub one_time_prekeys: u64,
}

/// One device in a key bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceBundle {
    /// The device id.
    pub device_id: u32,
    /// Its certificate (`cert_msg || signature`).
    pub certificate: B64,
    /// Its signed prekey.
    pub signed_prekey: SignedPreKeyJson,
    /// One one-time prekey, handed out to this caller only; `null` when none was left.
    pub one_time_prekey: Option<OneTimePreKeyJson>,
}

/// `GET /v1/keys/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyBundleResponse {
    /// The account.
    pub user: String,
    /// The account key the server holds (the sender verifies the chain to it).
    pub account_key: B64,
    /// Every active device.
    pub devices: Vec<DeviceBundle>,
    /// Every revocation of the account (`revoke_msg || signature`).
    pub revocations: Vec<B64>,
    /// Every account-key rotation (`rotate_msg || signature`), oldest first.
    pub rotations: Vec<B64>,
}

/// A device, by account and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The account.
    pub user: String,
    /// The device id.
    pub device_id: u32,
}

/// One per-device key envelope of a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeKey {
    /// The destination account.
    pub user: String,
    /// The destination device.
    pub device_id: u32,
    /// The pairwise ratchet message sealing `K || H(body)`.
    pub key: B64,
}

/// `PUT /v1/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    /// 16 random bytes chosen by the sender; sends are idempotent on (sender device, id).
    pub message_id: B64,
    /// The recipient account (the sender's own for messages to its other devices only). Exactly
    /// one of `to` and `group` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A group message: the group and the membership the sender encrypted for. Exactly one of
    /// `to` and `group` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSend>,
    /// The body, encrypted once (for a group message: the sender-key message).
    pub body: B64,
    /// One key envelope per destination device: every active device of `to` and every other
    /// active device of the sender. Empty for a group message.
    pub envelopes: Vec<EnvelopeKey>,
    /// Pushed to online devices only, never stored (typing indicators).
    #[serde(default)]
    pub ephemeral: bool,
}

/// Answer to a send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendResponse {
    /// The message id.
    pub message_id: B64,
    /// When the server accepted it (Unix ms); the same on a retry.
    pub server_ts: u64,
    /// Devices the message was queued for (0 for ephemeral messages).
    pub queued: usize,
}

/// A queued envelope as a device receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The queue position; acknowledge it with `POST /v1/messages/ack`.
    pub id: String,
    /// The sender's message id.
    pub message_id: B64,
    /// The sending device.
    pub sender: DeviceRef,
    /// The body, encrypted once.
    pub body: B64,
    /// This device's key envelope (empty for a group message).
    pub key: B64,
    /// When the server accepted the message (Unix ms).
    pub server_ts: u64,
    /// The group of a group message (its `body` is a sender-key message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<B64>,
}

/// `GET /v1/messages`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Envelopes in queue order.
    pub envelopes: Vec<Envelope>,
    /// Pass as `cursor` for the next page; `null` at the end of the queue.
    pub next_cursor: Option<String>,
}

/// `POST /v1/messages/ack`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Envelope ids to delete from the caller's queue (at most 100).
    pub ids: Vec<String>,
}

/// Answer to an ack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckResponse {
    /// How many ids were acknowledged.
    pub acknowledged: usize,
}

/// What the server pushes over a device's WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    /// A new queued envelope (ack it like a synced one).
    Envelope {
        /// The envelope.
        envelope: Envelope,
    },
    /// A new envelope too large for a push: sync now.
    Sync,
    /// An ephemeral message (never stored, nothing to ack).
    Ephemeral {
        /// The envelope; its `id` is empty.
        envelope: Envelope,
    },
    /// The device's one-time prekeys run low: upload more.
    PrekeysLow {
        /// How many are left.
        remaining: u64,
    },
}

/// The body of every error answer: `{"error", "message"}`, plus, for a 409 `device_mismatch`,
/// the devices the send missed and those it addressed that are not active.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    #[serde(default)]
    pub error: String,
    /// A sentence for a person.
    #[serde(default)]
    pub message: String,
    /// Active devices without an envelope (409 `device_mismatch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<DeviceRef>,
    /// Envelopes for devices that are not active (409 `device_mismatch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale: Vec<DeviceRef>,
    /// The group as it is now (409 `group_changed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// What a group send names besides the body: the group and the membership the sender encrypted
/// for. A send whose `version` or `devices_digest` differs from the group's current ones is
/// refused with 409 `group_changed` (and the current [`Group`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSend {
    /// The group id (16 bytes).
    pub group_id: B64,
    /// The group version the sender knows.
    pub version: u64,
    /// [`devices_digest`] of the devices the sender encrypted for (32 bytes): [`Group::devices`]
    /// as the sender knows it, its own devices included.
    pub devices_digest: B64,
}

/// `POST /v1/groups`: the caller becomes the group's first admin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// 16 random bytes chosen by the creator.
    pub group_id: B64,
    /// The other members (existing accounts, no duplicates; the caller may be listed).
    pub members: Vec<String>,
}

/// `POST /v1/groups/{group}/members` (admins only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMembersRequest {
    /// Accounts to add as members (current members are ignored).
    pub users: Vec<String>,
}

/// `POST /v1/groups/{group}/leave`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveGroupRequest {
    /// Another member who becomes admin; required when the last admin leaves others behind.
    #[serde(default)]
    pub successor: Option<String>,
}

/// A member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    /// The account.
    pub user: String,
    /// Whether it may add, remove, promote and demote.
    pub admin: bool,
}

/// A group as the server keeps it: members, admins and every device a group message goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// The group id (16 bytes).
    pub group_id: B64,
    /// Increases by one with every change of members or admins.
    pub version: u64,
    /// The members, sorted by user.
    pub members: Vec<GroupMember>,
    /// Every active device of every member, sorted by (user, device_id).
    pub devices: Vec<DeviceRef>,
}

/// The digest a group send names: SHA-256 over `devices` sorted by (user, device_id), each as
/// `u16be(len(user)) || user || u32be(device_id)`. Server and clients compute it with this one
/// function; the order of `devices` does not matter, duplicates count.
pub fn devices_digest(devices: &[DeviceRef]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&DeviceRef> = devices.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for d in sorted {
        // User ids are at most 32 bytes (PROTOCOL.md); a longer string is cut at u16::MAX,
        // which no valid id reaches.
        let user = d.user.as_bytes();
        let len = u16::try_from(user.len()).unwrap_or(u16::MAX);
        h.update(len.to_be_bytes());
        h.update(&user[..usize::from(len)]);
        h.update(d.device_id.to_be_bytes());
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use sha2::{Digest, Sha256};

    use super::*;

    fn d(user: &str, device_id: u32) -> DeviceRef {
        DeviceRef {
            user: user.into(),
            device_id,
        }
    }

    #[test]
    fn devices_digest_is_sha256_of_the_sorted_encoded_devices() {
        let mut expected = Sha256::new();
        expected.update([0, 5]);
        expected.update(b"alice");
        expected.update(7u32.to_be_bytes());
        expected.update([0, 3]);
        expected.update(b"bob");
        expected.update(1u32.to_be_bytes());
        expected.update([0, 3]);
        expected.update(b"bob");
        expected.update(2u32.to_be_bytes());
        let expected: [u8; 32] = expected.finalize().into();
        let sorted = [d("alice", 7), d("bob", 1), d("bob", 2)];
        let shuffled = [d("bob", 2), d("alice", 7), d("bob", 1)];
        assert_eq!(devices_digest(&sorted), expected);
        assert_eq!(devices_digest(&shuffled), expected, "order does not matter");
        assert_ne!(devices_digest(&sorted[..2]), expected);
        assert_eq!(devices_digest(&[]), <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn send_request_has_exactly_the_given_recipient_fields() {
        let one: SendRequest = serde_json::from_str(
            r#"{"message_id":"AAAAAAAAAAAAAAAAAAAAAA","to":"bob","body":"","envelopes":[]}"#,
        )
        .unwrap();
        assert_eq!(one.to.as_deref(), Some("bob"));
        assert!(one.group.is_none());
        let text = serde_json::to_string(&one).unwrap();
        assert!(!text.contains("group"), "{text}");
        let group: SendRequest = serde_json::from_str(
            r#"{"message_id":"AAAAAAAAAAAAAAAAAAAAAA","group":{"group_id":"AAAAAAAAAAAAAAAAAAAAAA","version":3,"devices_digest":"AA"},"body":"","envelopes":[]}"#,
        )
        .unwrap();
        assert!(group.to.is_none());
        assert_eq!(group.group.unwrap().version, 3);
        let leave: LeaveGroupRequest = serde_json::from_str("{}").unwrap();
        assert!(leave.successor.is_none());
        assert!(serde_json::from_str::<AddMembersRequest>(r#"{"users":[],"x":1}"#).is_err());
    }
}

/// `POST /v1/attachments`: ask for an upload URL for an encrypted attachment object.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAttachmentRequest {
    /// The encrypted object's length in bytes (`7 + size + 16 * segments`, PROTOCOL.md).
    pub size: u64,
}

/// Answer to `POST /v1/attachments`: where to `PUT` the object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentUpload {
    /// The object id (16 random bytes, unpadded base64url), to put in the pointer.
    pub id: String,
    /// A presigned S3 URL for one `PUT` of exactly `size` bytes.
    pub upload_url: String,
    /// Seconds the URL stays valid.
    pub expires_in: u64,
    /// The HTTP method to use (`PUT`).
    pub method: String,
    /// Headers the upload must send exactly (the signature covers them).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

/// Answer to `GET /v1/attachments/{id}`: where to `GET` the object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentDownload {
    /// The object id.
    pub id: String,
    /// A presigned S3 URL for `GET`.
    pub download_url: String,
    /// Seconds the URL stays valid.
    pub expires_in: u64,
    /// The stored object's length in bytes.
    pub size: u64,
}
