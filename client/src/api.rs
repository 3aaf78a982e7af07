//! Client-side JSON of the HTTP API (`api/openapi.yaml`). Defined here rather than taken from
//! `cipherpost-backend::api` so that the CLI does not compile the AWS SDK the backend links.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Bytes carried as unpadded base64url text.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

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
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(|_| de::Error::custom("not unpadded base64url"))
    }
}

/// A signed prekey.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedPreKeyJson {
    /// `spk_id`.
    pub id: u32,
    /// `SPK.pub`.
    pub key: B64,
    /// Its signature under `IKs`.
    pub signature: B64,
}

/// A one-time prekey.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimePreKeyJson {
    /// `opk_id`.
    pub id: u32,
    /// `OPK.pub`.
    pub key: B64,
}

/// A device being registered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewDevice {
    /// `cert_msg || signature`.
    pub certificate: B64,
    /// The signed prekey.
    pub signed_prekey: SignedPreKeyJson,
    /// One-time prekeys (at most 100).
    pub one_time_prekeys: Vec<OneTimePreKeyJson>,
}

/// `PUT /v1/accounts/{user}`.
#[derive(Debug, Clone, Serialize)]
pub struct CreateAccountRequest {
    /// `AK.pub`.
    pub account_key: B64,
    /// The first device.
    pub device: NewDevice,
}

/// `POST /v1/accounts/{user}/devices`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkDeviceRequest {
    /// The new device.
    pub device: NewDevice,
}

/// `PUT /v1/keys`.
#[derive(Debug, Clone, Serialize)]
pub struct UploadKeysRequest {
    /// A new signed prekey.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_prekey: Option<SignedPreKeyJson>,
    /// New one-time prekeys.
    pub one_time_prekeys: Vec<OneTimePreKeyJson>,
}

/// `GET /v1/keys`.
#[derive(Debug, Clone, Deserialize)]
pub struct PreKeyCount {
    /// One-time prekeys the server still holds.
    pub one_time_prekeys: u64,
}

/// One device of a key bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceBundle {
    /// The device id.
    pub device_id: u32,
    /// `cert_msg || signature`.
    pub certificate: B64,
    /// The signed prekey.
    pub signed_prekey: SignedPreKeyJson,
    /// One one-time prekey, if any was left.
    pub one_time_prekey: Option<OneTimePreKeyJson>,
}

/// `GET /v1/keys/{user}`.
#[derive(Debug, Clone, Deserialize)]
pub struct KeyBundleResponse {
    /// The account.
    pub user: String,
    /// The account key the server holds.
    pub account_key: B64,
    /// Every active device.
    pub devices: Vec<DeviceBundle>,
    /// Every revocation.
    pub revocations: Vec<B64>,
    /// Every rotation.
    pub rotations: Vec<B64>,
}

/// A device by account and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceRef {
    /// The account.
    pub user: String,
    /// The device id.
    pub device_id: u32,
}

/// One key envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeKey {
    /// Destination account.
    pub user: String,
    /// Destination device.
    pub device_id: u32,
    /// The pairwise ratchet message sealing `K || H(body)`.
    pub key: B64,
}

/// `PUT /v1/messages`.
#[derive(Debug, Clone, Serialize)]
pub struct SendRequest {
    /// The message id.
    pub message_id: B64,
    /// The recipient account.
    pub to: String,
    /// The body.
    pub body: B64,
    /// One envelope per destination device.
    pub envelopes: Vec<EnvelopeKey>,
    /// Typing indicators: pushed, never stored.
    pub ephemeral: bool,
}

/// Answer to a send.
#[derive(Debug, Clone, Deserialize)]
pub struct SendResponse {
    /// When the server accepted it.
    pub server_ts: u64,
}

/// A queued envelope.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// Queue position (ack with it).
    pub id: String,
    /// The message id.
    pub message_id: B64,
    /// The sending device.
    pub sender: DeviceRef,
    /// The body.
    pub body: B64,
    /// This device's key envelope.
    pub key: B64,
    /// Server acceptance time.
    pub server_ts: u64,
}

/// `GET /v1/messages`.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncResponse {
    /// Envelopes in queue order.
    pub envelopes: Vec<Envelope>,
    /// Next page, `null` at the end.
    pub next_cursor: Option<String>,
}

/// `POST /v1/messages/ack`.
#[derive(Debug, Clone, Serialize)]
pub struct AckRequest {
    /// Envelope ids.
    pub ids: Vec<String>,
}

/// A 409 `device_mismatch` (and other error bodies).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    /// Machine code.
    #[serde(default)]
    pub error: String,
    /// Human message.
    #[serde(default)]
    pub message: String,
    /// Devices without an envelope.
    #[serde(default)]
    pub missing: Vec<DeviceRef>,
    /// Envelopes for devices that are not active.
    #[serde(default)]
    pub stale: Vec<DeviceRef>,
}

/// A WebSocket push.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Push {
    /// A new queued envelope.
    Envelope {
        /// The envelope.
        envelope: Envelope,
    },
    /// Sync now.
    Sync,
    /// An ephemeral message.
    Ephemeral {
        /// The envelope (empty id).
        envelope: Envelope,
    },
    /// One-time prekeys run low.
    PrekeysLow {
        /// How many are left.
        remaining: u64,
    },
}
