//! The payload inside an encrypted body (format 1, documented in the crate README): UTF-8 JSON
//! `{"v": 1, "type": ..., ...}`.

use serde::{Deserialize, Serialize};

use crate::{attachments::AttachmentPointer, error::ClientError};

/// The payload format version this client writes and reads.
pub const CONTENT_VERSION: u32 = 1;

/// Delivery or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The message reached a device of the recipient.
    Delivered,
    /// The recipient read it.
    Read,
}

/// A contact handed to a newly linked device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkedContact {
    /// The account.
    pub user: String,
    /// Its pinned account key (b64).
    pub account_key: String,
}

/// What a message carries. `Debug` names the kind only: some kinds carry secrets.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// A text message. `to` names the conversation, so the sender's own devices file it.
    Text {
        /// The recipient account.
        to: String,
        /// The text.
        text: String,
        /// When it was written (Unix ms, sender's clock).
        sent_ms: u64,
        /// Attached files (absent when none; older clients ignore it and show the text).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<AttachmentPointer>,
    },
    /// Delivery or read receipts for messages of the receiving account.
    Receipt {
        /// Delivered or read.
        kind: ReceiptKind,
        /// Message ids (hex).
        message_ids: Vec<String>,
    },
    /// To one's own devices: these messages of `conversation` were read here.
    ReadSync {
        /// The conversation (contact user id).
        conversation: String,
        /// Message ids (hex).
        message_ids: Vec<String>,
    },
    /// A typing indicator (sent ephemeral, never stored).
    Typing {
        /// True while typing.
        typing: bool,
    },
    /// This device's sender key for a group (the distribution bytes of PROTOCOL.md, "Sender
    /// keys"), sent over the pairwise sessions to every member device. Secret.
    SenderKey {
        /// The group (hex of the 16-byte id).
        group_id: String,
        /// The distribution (b64).
        distribution: String,
    },
    /// A text in a group, sent as a sender-key message.
    GroupText {
        /// The group (hex); must be the group the sender-key message names.
        group_id: String,
        /// The text.
        text: String,
        /// When it was written (Unix ms, sender's clock).
        sent_ms: u64,
    },
    /// Group details, sent as a sender-key message by the member who set them (after creating
    /// the group, adding or removing members, or renaming it). The server never sees them.
    GroupUpdate {
        /// The group (hex); must be the group the sender-key message names.
        group_id: String,
        /// The group's name.
        name: String,
    },
    /// To one's own devices, from the device that approved a link: the account key, the new
    /// device's certificate and the contacts.
    DeviceLink {
        /// The account key seed (b64). Secret.
        account_key: String,
        /// The new device's certificate (b64 of `cert_msg || signature`).
        certificate: String,
        /// The contacts with their pinned keys.
        contacts: Vec<LinkedContact>,
        /// The secret of the link code (b64): proves the transfer answers this device's own
        /// code, not a device the server slipped in. Absent (empty) from older approvers,
        /// whose transfers are refused.
        #[serde(default)]
        link_secret: String,
    },
    /// To one's own remaining devices, from the device that revoked one of them: the new
    /// account key with the rotation and revocation it signed (under the old key, which the
    /// receiver holds and checks them with) and every remaining device's new certificate.
    AccountRotated {
        /// The new account key seed (b64). Secret.
        account_key: String,
        /// `rotate_msg || signature` (b64), signed by the old account key.
        rotation: String,
        /// `revoke_msg || signature` (b64), signed by the old account key.
        revocation: String,
        /// The remaining devices' certificates under the new key (b64 each).
        certificates: Vec<String>,
    },
    /// To one's own devices, from the device that approved a link: where the encrypted
    /// history archive of the account is (an attachment object) and its key. Only the device
    /// it names imports it; the others ignore it.
    HistoryPointer {
        /// The newly linked device that is to import the archive.
        device_id: u32,
        /// The archive object (content type `application/x-cipherpost-history`). Secret.
        archive: AttachmentPointer,
        /// How many messages the archive holds (shown while importing).
        messages: u64,
    },
}

impl Content {
    /// The kind, as the JSON `type` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Receipt { .. } => "receipt",
            Self::ReadSync { .. } => "read_sync",
            Self::Typing { .. } => "typing",
            Self::SenderKey { .. } => "sender_key",
            Self::GroupText { .. } => "group_text",
            Self::GroupUpdate { .. } => "group_update",
            Self::DeviceLink { .. } => "device_link",
            Self::AccountRotated { .. } => "account_rotated",
            Self::HistoryPointer { .. } => "history_pointer",
        }
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content::{}", self.kind())
    }
}

#[derive(Serialize, Deserialize)]
struct Payload {
    v: u32,
    #[serde(flatten)]
    content: Content,
}

impl Content {
    /// The JSON bytes of format 1.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(&Payload {
            v: CONTENT_VERSION,
            content: self.clone(),
        })
        .map_err(|e| ClientError::Internal(format!("encoding a message: {e}")))
    }

    /// Parses a payload; refuses other versions and unknown types.
    pub fn decode(bytes: &[u8]) -> Result<Self, ClientError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|_| ClientError::Content("the message payload is not JSON".into()))?;
        match v.get("v").and_then(|x| x.as_u64()) {
            Some(1) => {}
            Some(n) => {
                return Err(ClientError::Content(format!(
                    "payload format {n} is newer than this client understands"
                )))
            }
            None => return Err(ClientError::Content("the payload has no version".into())),
        }
        serde_json::from_value::<Payload>(v)
            .map(|p| p.content)
            .map_err(|e| ClientError::Content(format!("unreadable payload: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_versions() {
        let c = Content::Text {
            to: "bob".into(),
            text: "hi".into(),
            sent_ms: 5,
            attachments: Vec::new(),
        };
        let b = c.encode().unwrap();
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#"{"v":1,"type":"text","to":"bob","text":"hi","sent_ms":5}"#
        );
        assert!(matches!(Content::decode(&b).unwrap(), Content::Text { .. }));
        assert!(Content::decode(br#"{"v":2,"type":"text"}"#).is_err());
        assert!(Content::decode(br#"{"v":1,"type":"nope"}"#).is_err());
    }
}
