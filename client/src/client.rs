//! The client: registration, linking, the outbox, sync, receipts and the WebSocket listener.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::{
    encrypt_body, open_body, x25519_public_key, AccountChain, AccountKey, BodyKey, ConnectAuth,
    DeviceCertificate, DeviceId, DeviceIdentity, DeviceIdentityPublic, IdentityError, MessageId,
    OneTimePreKeyPublic, PeerSessions, PreKeyBundle, PreKeyStore, RequestAuth, Revocation,
    Rotation, SafetyNumber, Signature, SignedPreKey, SignedPreKeyPublic, UserId, VerifyingKey,
};
use futures::{SinkExt, StreamExt};
use rand_core::OsRng;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    api::*,
    attachments::{AttachmentInfo, AttachmentSettings},
    content::{Content, LinkedContact, ReceiptKind},
    error::ClientError,
    now_ms,
    store::{self, Store},
};

mod groups;
mod history;
mod revocation;

pub use groups::GroupInfo;
pub use history::{HistoryImported, HistorySent, HISTORY_CONTENT_TYPE};
pub use revocation::DeviceRevocation;

/// An outbox row: message id, body, body key, stored envelopes.
type OutboxRow = (String, Vec<u8>, Vec<u8>, Option<String>);

/// One-time prekeys uploaded at a time, and the level below which more are uploaded.
const OPK_BATCH: u32 = 100;
const OPK_LOW: u64 = 10;
/// The signed prekey rotates weekly.
const SPK_ROTATE_MS: u64 = 7 * 24 * 3600 * 1000;
/// A link code is valid for 10 minutes.
const LINK_CODE_VALID_MS: u64 = 10 * 60 * 1000;
/// Link codes of format 2 (format 1 lacked the link secret and is refused).
const LINK_CODE_PREFIX: &str = "cplink2.";
const LINK_CODE_VERSION: u8 = 2;
const OLD_LINK_CODE_PREFIX: &str = "cplink1.";
/// The bytes of the secret a link code carries (kept by the new device, never sent to the
/// server; the approver returns it inside the encrypted DeviceLink).
const LINK_SECRET_LEN: usize = 16;

/// What [`Client::link_approve_with`] did.
#[derive(Debug, Clone, Serialize)]
pub struct LinkApproval {
    /// The new device.
    pub device_id: u32,
    /// The history sent to it (none when not asked for or when it failed).
    pub history: Option<HistorySent>,
    /// Why the history could not be sent.
    pub history_error: Option<String>,
}

/// What [`Client::maintain_prekeys`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PrekeyMaintenance {
    /// The id of the new signed prekey, when the old one was a week old and was rotated.
    pub signed_prekey_rotated_to: Option<u32>,
    /// How many one-time prekeys were uploaded.
    pub one_time_prekeys_uploaded: usize,
}
/// Sends retried after a 409 before giving up for this flush.
const MAX_MISMATCH_RETRIES: u32 = 4;

/// Something the user should see.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A text message arrived (or was sent by one of this account's other devices).
    Message {
        /// The contact.
        conversation: String,
        /// `user#device` of the writer.
        from: String,
        /// The text.
        text: String,
        /// Hex message id.
        message_id: String,
        /// Written by this account.
        outgoing: bool,
    },
    /// Receipts for messages of this account.
    Receipt {
        /// The contact.
        conversation: String,
        /// Delivered or read.
        kind: ReceiptKind,
        /// How many messages.
        count: usize,
    },
    /// Another device of this account read messages.
    ReadSync {
        /// How many messages.
        count: usize,
    },
    /// A contact is (or stopped) typing.
    Typing {
        /// The contact.
        from: String,
        /// Typing or stopped.
        typing: bool,
    },
    /// This device received its account key and contacts.
    Linked {
        /// The account.
        user: String,
    },
    /// A notice (new device, key change...).
    Notice {
        /// The text.
        text: String,
    },
    /// A received attachment was downloaded and verified, or failed (`attachment.error`).
    Attachment {
        /// The contact.
        conversation: String,
        /// Hex message id (for `cipherpost fetch`).
        message_id: String,
        /// The attachment, with its path when downloaded.
        attachment: AttachmentInfo,
    },
}

/// This device's identity.
pub(crate) struct Me {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    identity: DeviceIdentity,
}

/// The safety number of a contact.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The contact.
    pub user: String,
    /// Safety number with the pinned key (12 groups of 5 digits).
    pub safety_number: String,
    /// When the key changed: the safety number with the new key, to compare before accepting.
    pub changed_safety_number: Option<String>,
    /// True when sending is blocked until the change is accepted.
    pub blocked: bool,
}

/// A cipherpost device profile.
pub struct Client {
    pub(crate) store: Store,
    http: reqwest::Client,
    endpoint: String,
    ws_url: String,
    me: Option<Me>,
    /// A group message waits for its sender key (left queued in this sync pass).
    awaiting_sender_key: bool,
    /// A sender key arrived in this sync pass.
    received_sender_key: bool,
    pub(crate) attachments: AttachmentSettings,
}

/// A device id as a decimal string for SQL.
pub(crate) fn dev(d: DeviceId) -> i64 {
    i64::from(d.get())
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(s: &str, what: &str) -> Result<Vec<u8>, ClientError> {
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .map_err(|_| ClientError::Content(format!("{what} is not base64url")))
}

fn arr<const N: usize>(b: &[u8], what: &str) -> Result<[u8; N], ClientError> {
    <[u8; N]>::try_from(b)
        .map_err(|_| ClientError::Content(format!("{what} must be {N} bytes, got {}", b.len())))
}

fn vkey(b: &[u8], what: &'static str) -> Result<VerifyingKey, ClientError> {
    cipherpost_protocol::verifying_key(&arr::<32>(b, what)?, what).map_err(ClientError::protocol)
}

fn to_prekey_bundle(b: &DeviceBundle) -> Result<PreKeyBundle, ClientError> {
    let certificate =
        DeviceCertificate::from_bytes(&b.certificate.0).map_err(ClientError::protocol)?;
    let signed_prekey = SignedPreKeyPublic {
        id: b.signed_prekey.id,
        key: x25519_public_key(&arr(&b.signed_prekey.key.0, "signed prekey")?)
            .map_err(ClientError::protocol)?,
        signature: Signature::from_bytes(&arr(&b.signed_prekey.signature.0, "signature")?),
    };
    let one_time_prekey = match &b.one_time_prekey {
        Some(o) => Some(OneTimePreKeyPublic {
            id: o.id,
            key: x25519_public_key(&arr(&o.key.0, "one-time prekey")?)
                .map_err(ClientError::protocol)?,
        }),
        None => None,
    };
    Ok(PreKeyBundle {
        certificate,
        signed_prekey,
        one_time_prekey,
    })
}

fn spk_json(spk: &SignedPreKey) -> SignedPreKeyJson {
    let p = spk.public();
    SignedPreKeyJson {
        id: p.id,
        key: B64(p.key.to_bytes().to_vec()),
        signature: B64(p.signature.to_bytes().to_vec()),
    }
}

fn opk_json(o: &OneTimePreKeyPublic) -> OneTimePreKeyJson {
    OneTimePreKeyJson {
        id: o.id,
        key: B64(o.key.to_bytes().to_vec()),
    }
}

fn load_prekeys(conn: &Connection) -> Result<PreKeyStore, ClientError> {
    match store::meta(conn, "prekeys")? {
        Some(b) => PreKeyStore::from_bytes(&b).map_err(ClientError::protocol),
        None => Ok(PreKeyStore::new()),
    }
}

fn load_sessions(conn: &Connection, user: &str, device: u32) -> Result<PeerSessions, ClientError> {
    let state: Option<Vec<u8>> = conn
        .query_row(
            "SELECT state FROM sessions WHERE user = ?1 AND device_id = ?2",
            params![user, device],
            |r| r.get(0),
        )
        .optional()?;
    match state {
        Some(b) => PeerSessions::from_bytes(&b).map_err(ClientError::protocol),
        None => Ok(PeerSessions::new()),
    }
}

fn save_sessions(
    conn: &Connection,
    user: &str,
    device: u32,
    s: &PeerSessions,
) -> Result<(), ClientError> {
    conn.execute(
        "INSERT INTO sessions (user, device_id, state) VALUES (?1, ?2, ?3)
         ON CONFLICT(user, device_id) DO UPDATE SET state = excluded.state",
        params![user, device, &s.to_bytes()[..]],
    )?;
    Ok(())
}

/// A contact row.
pub(crate) struct Contact {
    pinned: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
    pub(crate) blocked: bool,
    fetched: bool,
}

pub(crate) fn contact(conn: &Connection, user: &str) -> Result<Option<Contact>, ClientError> {
    Ok(conn
        .query_row(
            "SELECT pinned_key, pending_key, blocked, fetched FROM contacts WHERE user = ?1",
            [user],
            |r| {
                Ok(Contact {
                    pinned: r.get(0)?,
                    pending: r.get(1)?,
                    blocked: r.get::<_, i64>(2)? != 0,
                    fetched: r.get::<_, i64>(3)? != 0,
                })
            },
        )
        .optional()?)
}

/// Builds a body for `content` and puts it in the outbox (and, for a text, in the history).
fn queue_content(
    conn: &Connection,
    me: &Me,
    to: &str,
    content: &Content,
) -> Result<String, ClientError> {
    let mid = MessageId::generate(&mut OsRng);
    let (body, key) =
        encrypt_body(&mut OsRng, &mid, &content.encode()?).map_err(ClientError::protocol)?;
    let id = hex::encode(mid.as_bytes());
    conn.execute(
        "INSERT INTO outbox (message_id, to_user, body, body_key) VALUES (?1, ?2, ?3, ?4)",
        params![id, to, body.bytes, &key.to_bytes()[..]],
    )?;
    if let Content::Text { text, sent_ms, .. } = content {
        conn.execute(
            "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, 'pending')",
            params![id, to, me.user.as_str(), dev(me.device), text, *sent_ms as i64],
        )?;
    }
    Ok(id)
}

/// Seals `K || H(body)` for every destination device that lacks an envelope (starting
/// sessions from stored bundles), drops envelopes of devices no longer listed, and persists
/// the advanced sessions. The caller commits before anything is sent. Returns the envelopes
/// and whether any was newly sealed.
fn seal_envelopes(
    conn: &Connection,
    me: &Me,
    to: &str,
    body: &[u8],
    key: &BodyKey,
    existing: Vec<EnvelopeKey>,
) -> Result<(Vec<EnvelopeKey>, bool), ClientError> {
    let mut st = conn.prepare(
        "SELECT user, device_id, bundle FROM devices WHERE user = ?1 OR (user = ?2 AND device_id != ?3)",
    )?;
    let targets = st
        .query_map(params![to, me.user.as_str(), dev(me.device)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    let mut sealed = false;
    for (user, device, bundle) in targets {
        if let Some(e) = existing
            .iter()
            .find(|e| e.user == user && e.device_id == device)
        {
            out.push(e.clone());
            continue;
        }
        let mut sessions = load_sessions(conn, &user, device)?;
        if !sessions.has_session() {
            let Some(bundle) = bundle else {
                // No session and no bundle: the 409 that follows refreshes the bundles.
                continue;
            };
            let bundle: DeviceBundle = serde_json::from_str(&bundle)
                .map_err(|e| ClientError::Internal(format!("stored bundle: {e}")))?;
            let pinned = contact(conn, &user)?
                .and_then(|c| c.pinned)
                .ok_or_else(|| ClientError::Internal(format!("{user} has no pinned key")))?;
            let pinned = vkey(&pinned, "account key")?;
            let uid = UserId::new(&user).map_err(ClientError::protocol)?;
            let chain = AccountChain::verify(&uid, &pinned, &pinned, &[], &[])
                .map_err(ClientError::protocol)?;
            sessions
                .initiate(
                    &mut OsRng,
                    &me.identity,
                    &chain,
                    &to_prekey_bundle(&bundle)?,
                )
                .map_err(ClientError::protocol)?;
            conn.execute(
                "UPDATE devices SET bundle = NULL WHERE user = ?1 AND device_id = ?2",
                params![user, device],
            )?;
        }
        let wire = sessions
            .encrypt(&key.envelope_plaintext(body)[..])
            .map_err(ClientError::protocol)?;
        // Persist the advanced chain before the ciphertext can leave (PROTOCOL.md).
        save_sessions(conn, &user, device, &sessions)?;
        sealed = true;
        out.push(EnvelopeKey {
            user,
            device_id: device,
            key: B64(wire),
        });
    }
    Ok((out, sealed))
}

/// Checks a DeviceLink transfer before anything of it is used: it must carry this device's
/// link secret (compared in constant time), and the certificate must verify under the
/// transferred account key and name this device (account, device id, identity keys).
fn check_device_link(
    expected_secret: Option<&[u8]>,
    link_secret: &str,
    account: &VerifyingKey,
    cert: &DeviceCertificate,
    me: &Me,
) -> Result<(), ClientError> {
    use subtle::ConstantTimeEq;
    let refused =
        |why: &str| ClientError::Content(format!("a device link transfer was refused: {why}"));
    let got = URL_SAFE_NO_PAD
        .decode(link_secret.as_bytes())
        .unwrap_or_default();
    let matches = match expected_secret {
        Some(want) if want.len() == LINK_SECRET_LEN && got.len() == LINK_SECRET_LEN => {
            bool::from(want.ct_eq(&got))
        }
        _ => false,
    };
    if !matches {
        return Err(refused(
            "it does not carry this device's link code (approve the code this device printed)",
        ));
    }
    if cert.verify(account).is_err() {
        return Err(refused("the certificate is not signed by the account key"));
    }
    if cert.user_id != me.user
        || cert.device_id != me.device
        || cert.identity != me.identity.public()
    {
        return Err(refused("the certificate is for another device"));
    }
    Ok(())
}

/// Takes the account key, certificate and contacts of a checked DeviceLink. A contact pinned
/// here (from the server) with another key than the approving device had takes that device's
/// key: its devices and sessions are dropped and fetched again.
fn accept_device_link(
    tx: &Connection,
    me: &Me,
    account_key: &str,
    certificate: &str,
    contacts: &[LinkedContact],
    link_secret: &str,
) -> Result<(), ClientError> {
    let seed = zeroize::Zeroizing::new(unb64(account_key, "account key")?);
    let seed = zeroize::Zeroizing::new(arr::<32>(&seed, "account key")?);
    let ak = AccountKey::from_bytes(&seed);
    let cert = DeviceCertificate::from_bytes(&unb64(certificate, "certificate")?)
        .map_err(ClientError::protocol)?;
    let expected = store::meta(tx, "link_secret")?.map(zeroize::Zeroizing::new);
    check_device_link(
        expected.as_deref().map(|v| &v[..]),
        link_secret,
        &ak.public_key(),
        &cert,
        me,
    )?;
    let pinned = contact(tx, me.user.as_str())?.and_then(|c| c.pinned);
    if pinned.as_deref() != Some(&ak.public_key().to_bytes()[..]) {
        return Err(ClientError::Content(
            "a device link transfer did not match the account key the server holds; ignored".into(),
        ));
    }
    store::set_meta(tx, "account_key", &ak.to_bytes()[..])?;
    store::set_meta(tx, "certificate", &cert.to_bytes())?;
    store::set_meta(tx, "state", b"registered")?;
    tx.execute("DELETE FROM meta WHERE key = 'link_secret'", [])?;
    for c in contacts {
        if c.user == me.user.as_str() {
            continue;
        }
        let key = unb64(&c.account_key, "contact key")?;
        vkey(&key, "contact key")?;
        let before = contact(tx, &c.user)?.and_then(|c| c.pinned);
        match before {
            Some(b) if b == key => {}
            Some(_) => {
                tx.execute(
                    "UPDATE contacts SET pinned_key = ?2, pending_key = NULL, blocked = 0, fetched = 0 WHERE user = ?1",
                    params![c.user, key],
                )?;
                tx.execute("DELETE FROM devices WHERE user = ?1", [&c.user])?;
                tx.execute("DELETE FROM sessions WHERE user = ?1", [&c.user])?;
                store::notice(
                    tx,
                    &format!(
                        "{}: the account key your other device had verified replaces the one this device fetched",
                        c.user
                    ),
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO contacts (user, pinned_key, fetched) VALUES (?1, ?2, 0)
                     ON CONFLICT(user) DO UPDATE SET pinned_key = excluded.pinned_key, fetched = 0",
                    params![c.user, key],
                )?;
            }
        }
    }
    Ok(())
}

/// The `(user, device)` pairs a list of envelopes addresses.
fn addressed(envelopes: &[EnvelopeKey]) -> BTreeSet<(String, u32)> {
    envelopes
        .iter()
        .map(|e| (e.user.clone(), e.device_id))
        .collect()
}

/// What the outbox does with a message whose delivery failed.
#[derive(Debug, PartialEq, Eq)]
enum Disposition {
    /// Keep everything queued and stop this flush (the server is unreachable or refuses
    /// requests for a reason that is not this message's).
    Stop,
    /// Keep the message queued; later messages to the same recipient wait behind it.
    Skip,
    /// Refused for good: mark it failed and drop it.
    Drop,
}

/// Sorts a delivery failure (see [`Client::flush_outbox`]).
fn disposition(e: &ClientError) -> Disposition {
    match e {
        ClientError::Unreachable { .. } | ClientError::Store(_) | ClientError::Io(_) => {
            Disposition::Stop
        }
        ClientError::NoSuchAccount(_) => Disposition::Drop,
        ClientError::Server { status, code, .. } => match status {
            400 | 403 | 404 | 413 => Disposition::Drop,
            401 | 408 | 429 => Disposition::Stop,
            409 if code != "device_mismatch" && code != "group_changed" => Disposition::Stop,
            _ => Disposition::Skip,
        },
        _ => Disposition::Skip,
    }
}

impl Client {
    /// Opens the profile in `dir`, talking to `endpoint` (`http://host:port`) and the
    /// WebSocket at `ws_url` (default: the endpoint with `ws` and `/ws`).
    pub fn open(dir: &Path, endpoint: &str, ws_url: Option<&str>) -> Result<Self, ClientError> {
        // wss:// needs a process-wide TLS provider; an error means one is installed already.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let store = Store::open(dir)?;
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let ws_url = match ws_url {
            Some(u) => u.to_string(),
            None => {
                let base = endpoint
                    .strip_prefix("http")
                    .map(|rest| format!("ws{rest}"))
                    .unwrap_or_else(|| endpoint.clone());
                format!("{base}/ws")
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| ClientError::Internal(format!("HTTP client: {e}")))?;
        let mut client = Self {
            store,
            http,
            endpoint,
            ws_url,
            me: None,
            awaiting_sender_key: false,
            received_sender_key: false,
            attachments: AttachmentSettings::new(dir)?,
        };
        client.me = client.load_me()?;
        Ok(client)
    }

    fn load_me(&self) -> Result<Option<Me>, ClientError> {
        let (Some(user), Some(device), Some(identity)) = (
            self.store.meta_str("user")?,
            self.store.meta_str("device_id")?,
            self.store.meta("identity")?,
        ) else {
            return Ok(None);
        };
        let device: u32 = device
            .parse()
            .map_err(|_| ClientError::Internal("stored device id".into()))?;
        Ok(Some(Me {
            user: UserId::new(&user).map_err(ClientError::protocol)?,
            device: DeviceId::new(device).map_err(ClientError::protocol)?,
            identity: DeviceIdentity::from_bytes_versioned(&identity)
                .map_err(ClientError::protocol)?,
        }))
    }

    /// The local store (for inspection).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `(user, device id)` of this profile, if it has one.
    pub fn whoami(&self) -> Option<(String, u32)> {
        self.me
            .as_ref()
            .map(|m| (m.user.to_string(), m.device.get()))
    }

    /// True once the device holds its account key (registered, or linked and synced).
    pub fn is_linked(&self) -> Result<bool, ClientError> {
        Ok(self.store.meta_str("state")?.as_deref() == Some("registered"))
    }

    pub(crate) fn me(&self) -> Result<&Me, ClientError> {
        self.me.as_ref().ok_or(ClientError::NotRegistered)
    }

    pub(crate) fn linked_me(&self) -> Result<&Me, ClientError> {
        let me = self.me()?;
        if !self.is_linked()? {
            return Err(ClientError::NotLinked);
        }
        Ok(me)
    }

    fn account_key(&self) -> Result<AccountKey, ClientError> {
        let seed = self
            .store
            .meta("account_key")?
            .ok_or(ClientError::NotLinked)?;
        Ok(AccountKey::from_bytes(&arr(&seed, "account key")?))
    }

    // ----- HTTP -----

    /// A signed request; idempotent ones (reads, acks, message sends) are retried on 503.
    async fn call(
        &self,
        signer: Option<&Me>,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let idempotent = method == "GET"
            || path_and_query == "/v1/messages"
            || path_and_query == "/v1/messages/ack";
        let mut wait = Duration::from_millis(500);
        for _ in 0..3 {
            let answer = self
                .call_once(signer, method, path_and_query, body.clone())
                .await?;
            if !(idempotent && answer.0 == 503) {
                return Ok(answer);
            }
            tracing::info!(path = path_and_query, "server busy (503); retrying");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        self.call_once(signer, method, path_and_query, body).await
    }

    async fn call_once(
        &self,
        signer: Option<&Me>,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let body = body.unwrap_or_default();
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| ClientError::Internal(format!("method {method}")))?;
        let mut rb = self
            .http
            .request(m, format!("{}{}", self.endpoint, path_and_query));
        if let Some(me) = signer.or(self.me.as_ref()) {
            let auth = RequestAuth::sign(
                &me.identity,
                &me.user,
                me.device,
                method,
                path_and_query,
                now_ms(),
                &body,
            );
            rb = rb.header("authorization", auth.to_header());
        }
        if !body.is_empty() {
            rb = rb.header("content-type", "application/json").body(body);
        }
        let unreachable = |e: reqwest::Error| {
            // reqwest's own message is terse ("error sending request"); the cause says why.
            let mut reason = if e.is_timeout() {
                "timed out".to_string()
            } else {
                "no answer".to_string()
            };
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                reason = s.to_string();
                source = s.source();
            }
            ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason,
            }
        };
        let resp = rb.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        tracing::debug!(method, path = path_and_query, status, "request");
        Ok((status, bytes.to_vec()))
    }

    fn server_error(status: u16, bytes: &[u8]) -> ClientError {
        let e: ErrorBody = serde_json::from_slice(bytes).unwrap_or_else(|_| {
            // Not the JSON error of the API (a proxy's page, say): shown as text, shortened.
            let text = String::from_utf8_lossy(bytes);
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let message = match text.char_indices().nth(200) {
                Some((i, _)) => format!("{}...", &text[..i]),
                None if text.is_empty() => "(no explanation)".to_string(),
                None => text,
            };
            ErrorBody {
                error: "unexpected_answer".into(),
                message,
                ..Default::default()
            }
        });
        if status >= 500 {
            return ClientError::Unreachable {
                endpoint: "the server".into(),
                reason: format!("{status} {}", e.message),
            };
        }
        ClientError::Server {
            status,
            code: e.error,
            message: e.message,
        }
    }

    pub(crate) async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.call(None, method, path_and_query, body).await?;
        if !(200..300).contains(&status) {
            return Err(Self::server_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Internal(format!("unexpected answer to {path_and_query}: {e}"))
        })
    }

    fn json<T: Serialize>(v: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(v).map_err(|e| ClientError::Internal(e.to_string()))
    }

    // ----- registration and linking -----

    /// Creates the account `user` with this profile as its first device.
    pub async fn register(&mut self, user: &str) -> Result<(String, u32), ClientError> {
        let user = UserId::new(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if self.store.meta_str("state")?.as_deref() == Some("registering") {
            // A previous attempt stored its keys but never saw the answer: ask the server
            // whether the account exists with this profile's key (signed by its device).
            if let Some(done) = self.confirm_registration(&user).await? {
                return Ok(done);
            }
            self.forget_identity()?;
        } else if self.me.is_some() {
            return Err(ClientError::Usage(
                "this profile already has an account; use another --profile".into(),
            ));
        }
        let account = AccountKey::generate(&mut OsRng);
        let me = Me {
            user: user.clone(),
            device: DeviceId::generate(&mut OsRng),
            identity: DeviceIdentity::generate(&mut OsRng),
        };
        let now = now_ms();
        let cert = account.certify(&user, me.device, &me.identity.public(), now);
        let mut prekeys = PreKeyStore::new();
        prekeys.add_signed_prekey(
            SignedPreKey::generate(&mut OsRng, &me.identity, 1, now),
            now,
        );
        let opks = prekeys.generate_one_time_prekeys(&mut OsRng, OPK_BATCH);
        let spk = prekeys
            .current_signed_prekey()
            .ok_or_else(|| ClientError::Internal("no signed prekey".into()))?;
        let req = CreateAccountRequest {
            account_key: B64(account.public_key().to_bytes().to_vec()),
            device: NewDevice {
                certificate: B64(cert.to_bytes()),
                signed_prekey: spk_json(spk),
                one_time_prekeys: opks.iter().map(opk_json).collect(),
            },
        };
        // The secrets are stored before anything is published.
        let tx = self.store.write_tx()?;
        store::set_meta(&tx, "user", user.as_str().as_bytes())?;
        store::set_meta(&tx, "device_id", me.device.to_string().as_bytes())?;
        store::set_meta(&tx, "identity", &me.identity.to_bytes())?;
        store::set_meta(&tx, "account_key", &account.to_bytes()[..])?;
        store::set_meta(&tx, "certificate", &cert.to_bytes())?;
        store::set_meta(&tx, "prekeys", &prekeys.to_bytes())?;
        store::set_meta(&tx, "state", b"registering")?;
        tx.commit()?;
        self.me = Some(me);
        let answer = self
            .call(
                None,
                "PUT",
                &format!("/v1/accounts/{user}"),
                Some(Self::json(&req)?),
            )
            .await;
        let (status, bytes) = match answer {
            Ok(a) => a,
            Err(ClientError::Unreachable { endpoint, reason }) => {
                return Err(ClientError::Unreachable {
                    endpoint,
                    reason: format!(
                        "{reason}; run `cipherpost register {user}` again to finish (it checks whether the account was created)"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        if status >= 500 {
            return Err(ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "the server answered {status}; run `cipherpost register {user}` again to finish"
                ),
            });
        }
        if !(200..300).contains(&status) {
            self.forget_identity()?;
            if status == 409 {
                return Err(ClientError::Usage(format!(
                    "the user id {user} is taken; choose another"
                )));
            }
            return Err(Self::server_error(status, &bytes));
        }
        // A 2xx is a success only when it names this account and device; anything else is an
        // answer we cannot trust, handled like a lost one (the identity is kept, and running
        // `register` again checks with the server whether the account exists).
        let registered: Option<DeviceRegistered> = serde_json::from_slice(&bytes).ok();
        let expected = self
            .me
            .as_ref()
            .map(|m| (m.user.to_string(), m.device.get()));
        if registered.map(|r| (r.user, r.device_id)) != expected {
            return Err(ClientError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: format!(
                    "the server answered {status} with a body that is not this registration ({}); run `cipherpost register {user}` again to finish (it checks whether the account was created)",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            });
        }
        self.finish_registration()
    }

    /// After an unanswered registration: `Some` when the server holds this profile's account.
    async fn confirm_registration(
        &mut self,
        user: &UserId,
    ) -> Result<Option<(String, u32)>, ClientError> {
        let Some(me) = self.me.as_ref().filter(|m| m.user == *user) else {
            return Ok(None);
        };
        let (status, bytes) = self
            .call(Some(me), "GET", &format!("/v1/keys/{user}"), None)
            .await?;
        if status >= 500 {
            return Err(Self::server_error(status, &bytes));
        }
        if status != 200 {
            return Ok(None);
        }
        let resp: KeyBundleResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Internal(format!("key bundle: {e}")))?;
        if resp.account_key.0 != self.account_key()?.public_key().to_bytes() {
            return Ok(None);
        }
        self.finish_registration().map(Some)
    }

    fn finish_registration(&mut self) -> Result<(String, u32), ClientError> {
        let me = self.me()?;
        let out = (me.user.to_string(), me.device.get());
        let key = self.account_key()?.public_key().to_bytes().to_vec();
        let tx = self.store.write_tx()?;
        store::set_meta(&tx, "state", b"registered")?;
        tx.execute(
            "INSERT OR REPLACE INTO contacts (user, pinned_key, fetched) VALUES (?1, ?2, 1)",
            params![out.0, key],
        )?;
        tx.commit()?;
        Ok(out)
    }

    fn forget_identity(&mut self) -> Result<(), ClientError> {
        self.store.conn.execute(
            "DELETE FROM meta WHERE key IN ('user', 'device_id', 'identity', 'account_key', 'certificate', 'prekeys', 'state')",
            [],
        )?;
        self.me = None;
        Ok(())
    }

    /// On a new device: makes its identity and signed prekey and returns the link code to
    /// approve on an existing device of `user` (valid 10 minutes).
    pub fn link_request(&mut self, user: &str) -> Result<String, ClientError> {
        self.link_request_at(user, now_ms())
    }

    /// [`Client::link_request`] with the code dated `now` (milliseconds since the epoch): the
    /// approving device refuses a code older than 10 minutes.
    pub fn link_request_at(&mut self, user: &str, now: u64) -> Result<String, ClientError> {
        let user = UserId::new(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        if self.me.is_some() && self.is_linked()? {
            return Err(ClientError::Usage(
                "this profile already has an account; use another --profile".into(),
            ));
        }
        let (me, mut prekeys, secret) = match self.me.take() {
            Some(m) if m.user == user => {
                let secret = store::meta(&self.store.conn, "link_secret")?
                    .filter(|s| s.len() == LINK_SECRET_LEN);
                (m, load_prekeys(&self.store.conn)?, secret)
            }
            // A new identity (or another account after a typo): new prekeys and secret too,
            // nothing signed by a previous identity is kept.
            _ => (
                Me {
                    user: user.clone(),
                    device: DeviceId::generate(&mut OsRng),
                    identity: DeviceIdentity::generate(&mut OsRng),
                },
                PreKeyStore::new(),
                None,
            ),
        };
        let secret = match secret {
            Some(s) => s,
            None => {
                let mut s = vec![0u8; LINK_SECRET_LEN];
                rand_core::RngCore::fill_bytes(&mut OsRng, &mut s);
                s
            }
        };
        if prekeys.current_signed_prekey().is_none() {
            prekeys.add_signed_prekey(
                SignedPreKey::generate(&mut OsRng, &me.identity, 1, now),
                now,
            );
        }
        let spk = prekeys
            .current_signed_prekey()
            .ok_or_else(|| ClientError::Internal("no signed prekey".into()))?
            .public();
        let tx = self.store.write_tx()?;
        store::set_meta(&tx, "user", user.as_str().as_bytes())?;
        store::set_meta(&tx, "device_id", me.device.to_string().as_bytes())?;
        store::set_meta(&tx, "identity", &me.identity.to_bytes())?;
        store::set_meta(&tx, "prekeys", &prekeys.to_bytes())?;
        store::set_meta(&tx, "link_secret", &secret)?;
        store::set_meta(&tx, "state", b"linking")?;
        tx.commit()?;
        let ids = me.identity.public().to_bytes();
        let mut code = Vec::new();
        code.push(LINK_CODE_VERSION);
        code.extend_from_slice(&(user.as_str().len() as u16).to_be_bytes());
        code.extend_from_slice(user.as_str().as_bytes());
        code.extend_from_slice(&me.device.get().to_be_bytes());
        code.extend_from_slice(&ids);
        code.extend_from_slice(&spk.id.to_be_bytes());
        code.extend_from_slice(spk.key.as_bytes());
        code.extend_from_slice(&spk.signature.to_bytes());
        code.extend_from_slice(&now.to_be_bytes());
        code.extend_from_slice(&secret);
        self.me = Some(me);
        Ok(format!("{LINK_CODE_PREFIX}{}", b64(&code)))
    }

    /// On an existing device: certifies the device of a link code, registers it and sends it
    /// the account key and contacts, then the history ([`Client::send_history`]). Returns the
    /// new device id. A history that could not be sent leaves a notice (the device is linked
    /// all the same; [`Client::send_history`] tries again).
    pub async fn link_approve(&mut self, code: &str) -> Result<u32, ClientError> {
        Ok(self.link_approve_with(code, true).await?.device_id)
    }

    /// [`Client::link_approve`], with or without the history.
    pub async fn link_approve_with(
        &mut self,
        code: &str,
        with_history: bool,
    ) -> Result<LinkApproval, ClientError> {
        let device_id = self.link_approve_device(code).await?;
        let mut approval = LinkApproval {
            device_id,
            history: None,
            history_error: None,
        };
        if with_history {
            match self.send_history(device_id).await {
                Ok(sent) => approval.history = Some(sent),
                Err(e) => {
                    tracing::warn!(error = %e, "history not sent");
                    self.store.notice(&format!("the history was not sent to device {device_id}: {e}; `cipherpost link history {device_id}` tries again"))?;
                    approval.history_error = Some(e.to_string());
                }
            }
        }
        Ok(approval)
    }

    async fn link_approve_device(&mut self, code: &str) -> Result<u32, ClientError> {
        let me = self.linked_me()?;
        let bad = || ClientError::Usage("that is not a valid link code".into());
        if code.trim().starts_with(OLD_LINK_CODE_PREFIX) {
            return Err(ClientError::Usage(
                "this link code (cplink1) comes from an older cipherpost that this version no longer accepts: update cipherpost on the new device and run `cipherpost link request` again".into(),
            ));
        }
        let raw = code
            .trim()
            .strip_prefix(LINK_CODE_PREFIX)
            .ok_or_else(bad)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c).map_err(|_| bad()))?;
        if raw.first() != Some(&LINK_CODE_VERSION) || raw.len() < 3 {
            return Err(bad());
        }
        let ulen = u16::from_be_bytes([raw[1], raw[2]]) as usize;
        let rest = raw.get(3..).ok_or_else(bad)?;
        if rest.len() != ulen + 4 + 64 + 4 + 32 + 64 + 8 + LINK_SECRET_LEN {
            return Err(bad());
        }
        let (uname, rest) = rest.split_at(ulen);
        let (dev_b, rest) = rest.split_at(4);
        let (ids, rest) = rest.split_at(64);
        let (spk_id, rest) = rest.split_at(4);
        let (spk_key, rest) = rest.split_at(32);
        let (spk_sig, rest) = rest.split_at(64);
        let (created, link_secret) = rest.split_at(8);
        let uname = std::str::from_utf8(uname).map_err(|_| bad())?;
        if uname != me.user.as_str() {
            return Err(ClientError::Usage(format!(
                "this link code is for the account {uname}, not {}",
                me.user
            )));
        }
        let created = u64::from_be_bytes(arr(created, "time")?);
        let now = now_ms();
        if now.saturating_sub(created) > LINK_CODE_VALID_MS || created > now + 300_000 {
            return Err(ClientError::Usage(
                "this link code expired (codes are valid 10 minutes): run `cipherpost link request` again on the new device".into(),
            ));
        }
        let device = DeviceId::new(u32::from_be_bytes(arr(dev_b, "device")?)).map_err(|_| bad())?;
        let identity =
            DeviceIdentityPublic::from_bytes(&arr(ids, "identity")?).map_err(|_| bad())?;
        let spk = SignedPreKeyJson {
            id: u32::from_be_bytes(arr(spk_id, "prekey id")?),
            key: B64(spk_key.to_vec()),
            signature: B64(spk_sig.to_vec()),
        };
        let account = self.account_key()?;
        let cert = account.certify(&me.user, device, &identity, now);
        let bundle = DeviceBundle {
            device_id: device.get(),
            certificate: B64(cert.to_bytes()),
            signed_prekey: spk.clone(),
            one_time_prekey: None,
        };
        // Checks the prekey signature under the certified identity before registering.
        let pb = to_prekey_bundle(&bundle)?;
        pb.signed_prekey.verify(&identity.signing).map_err(|_| {
            ClientError::Usage("the link code's prekey signature does not verify".into())
        })?;
        let req = LinkDeviceRequest {
            device: NewDevice {
                certificate: B64(cert.to_bytes()),
                signed_prekey: spk,
                one_time_prekeys: Vec::new(),
            },
        };
        let path = format!("/v1/accounts/{}/devices", me.user);
        let (status, bytes) = self
            .call(None, "POST", &path, Some(Self::json(&req)?))
            .await?;
        if status == 409 {
            // A retry after a lost answer: the device may be registered already. It is, with
            // this very identity, when the account's key bundle lists it so.
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            if err.error != "device_exists" || !self.device_registered(device, &identity).await? {
                return Err(Self::server_error(status, &bytes));
            }
            tracing::info!(
                device = device.get(),
                "device registered by an earlier attempt"
            );
        } else if !(200..300).contains(&status) {
            return Err(Self::server_error(status, &bytes));
        }
        let me = self.me()?;
        let tx = self.store.write_tx()?;
        tx.execute(
            "INSERT OR REPLACE INTO devices (user, device_id, identity, bundle) VALUES (?1, ?2, ?3, ?4)",
            params![me.user.as_str(), device.get(), identity.to_bytes().to_vec(), Self::json(&bundle).map(|b| String::from_utf8_lossy(&b).into_owned())?],
        )?;
        let contacts = {
            let mut st = tx.prepare(
                "SELECT user, pinned_key FROM contacts WHERE pinned_key IS NOT NULL AND user != ?1",
            )?;
            let rows = st
                .query_map([me.user.as_str()], |r| {
                    Ok(LinkedContact {
                        user: r.get(0)?,
                        account_key: b64(&r.get::<_, Vec<u8>>(1)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let content = Content::DeviceLink {
            account_key: b64(&account.to_bytes()[..]),
            certificate: b64(&cert.to_bytes()),
            contacts,
            link_secret: b64(link_secret),
        };
        queue_content(&tx, me, me.user.as_str(), &content)?;
        tx.commit()?;
        self.flush_outbox().await?;
        Ok(device.get())
    }

    /// Whether this account's key bundle lists `device` with `identity` (signed by a
    /// certificate under the account key).
    async fn device_registered(
        &self,
        device: DeviceId,
        identity: &DeviceIdentityPublic,
    ) -> Result<bool, ClientError> {
        let me = self.me()?;
        let resp: KeyBundleResponse = self
            .call_json("GET", &format!("/v1/keys/{}", me.user), None)
            .await?;
        let account = self.account_key()?.public_key();
        Ok(resp.devices.iter().any(|b| {
            b.device_id == device.get()
                && DeviceCertificate::from_bytes(&b.certificate.0).is_ok_and(|c| {
                    c.verify(&account).is_ok()
                        && c.user_id == me.user
                        && c.device_id == device
                        && c.identity == *identity
                })
        }))
    }

    // ----- contacts and device lists -----

    /// Fetches `user`'s bundles, verifies them against the pinned key (pinning on first
    /// contact), and updates the device list: new devices get a stored bundle to start a
    /// session from, devices no longer listed are dropped with their sessions.
    pub async fn refresh_devices(&mut self, user: &str) -> Result<(), ClientError> {
        let me = self.me()?;
        let uid = UserId::new(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        let (status, bytes) = self
            .call(None, "GET", &format!("/v1/keys/{user}"), None)
            .await?;
        if status == 404 {
            return Err(ClientError::NoSuchAccount(user.to_string()));
        }
        if !(200..300).contains(&status) {
            return Err(Self::server_error(status, &bytes));
        }
        let resp: KeyBundleResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Internal(format!("key bundle: {e}")))?;
        let current = vkey(&resp.account_key.0, "account key")?;
        let rotations: Vec<Rotation> = resp
            .rotations
            .iter()
            .filter_map(|r| Rotation::from_bytes(&r.0).ok())
            .collect();
        let revocations: Vec<Revocation> = resp
            .revocations
            .iter()
            .filter_map(|r| Revocation::from_bytes(&r.0).ok())
            .collect();
        let is_self = uid == me.user;
        let me_device = me.device;
        let tx = self.store.write_tx()?;
        let c = contact(&tx, user)?;
        let first_contact = c.as_ref().and_then(|c| c.pinned.as_ref()).is_none();
        let known_before = c.as_ref().is_some_and(|c| c.fetched);
        let pinned = match c.as_ref().and_then(|c| c.pinned.clone()) {
            Some(p) => vkey(&p, "pinned key")?,
            None => current,
        };
        let chain = match AccountChain::verify(&uid, &pinned, &current, &rotations, &revocations) {
            Ok(c) => c,
            Err(IdentityError::AccountKeyChanged(_)) => {
                tx.execute(
                    "INSERT INTO contacts (user, pinned_key, pending_key, blocked) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT(user) DO UPDATE SET pending_key = excluded.pending_key, blocked = 1",
                    params![user, pinned.to_bytes().to_vec(), current.to_bytes().to_vec()],
                )?;
                store::notice(&tx, &format!("the account key of {user} changed; compare safety numbers with `cipherpost verify {user}`"))?;
                tx.commit()?;
                return Err(ClientError::KeyChanged(user.to_string()));
            }
            Err(e) => {
                // Not a key change the user could accept (a broken rotation or revocation,
                // say): nothing is stored as blocked, so `verify --accept` is not asked to
                // clear what it cannot; the contact is fetched again before the next send,
                // and the error stands until the chain verifies.
                tx.execute("UPDATE contacts SET fetched = 0 WHERE user = ?1", [user])?;
                tx.commit()?;
                return Err(ClientError::KeysInvalid {
                    user: user.to_string(),
                    reason: e.to_string(),
                });
            }
        };
        revocation::chain_notices(
            &tx,
            me,
            revocation::my_account_key(&tx)?.as_ref(),
            user,
            &chain,
        )?;
        if c.as_ref().is_some_and(|c| c.blocked) {
            store::notice(
                &tx,
                &format!("the account key of {user} is again the one you had accepted; sending to {user} is allowed again"),
            )?;
        }
        // The chain verifies from the pinned key: whatever blocked the contact is over.
        tx.execute(
            "INSERT INTO contacts (user, pinned_key, fetched) VALUES (?1, ?2, 1)
             ON CONFLICT(user) DO UPDATE SET pinned_key = excluded.pinned_key, fetched = 1,
                 pending_key = NULL, blocked = 0",
            params![user, chain.latest().to_bytes().to_vec()],
        )?;
        let mut listed = BTreeSet::new();
        for b in &resp.devices {
            if is_self && b.device_id == me_device.get() {
                continue;
            }
            let pb = to_prekey_bundle(b).ok();
            if !pb.as_ref().is_some_and(|pb| {
                chain.verify_device(&pb.certificate).is_ok()
                    && pb.certificate.device_id.get() == b.device_id
                    && pb
                        .signed_prekey
                        .verify(&pb.certificate.identity.signing)
                        .is_ok()
            }) {
                tracing::warn!(
                    user,
                    device = b.device_id,
                    "bundle does not verify; ignored"
                );
                // The server lists a device that the account key did not certify (or whose
                // signed prekey its identity did not sign): nothing is encrypted to it, and
                // the user is told, since only a faulty or malicious server does this.
                store::notice(
                    &tx,
                    &format!(
                        "the server lists a device {} of {user} whose keys do not verify under the account key you have for {user}; it was ignored and nothing is sent to it",
                        b.device_id
                    ),
                )?;
                continue;
            }
            let Some(pb) = pb else { continue };
            listed.insert(b.device_id);
            let identity = pb.certificate.identity.to_bytes().to_vec();
            let known: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT identity FROM devices WHERE user = ?1 AND device_id = ?2",
                    params![user, b.device_id],
                    |r| r.get(0),
                )
                .optional()?;
            let bundle_json = String::from_utf8_lossy(&Self::json(b)?).into_owned();
            match known {
                Some(k) if k == identity => {
                    tx.execute(
                        "UPDATE devices SET bundle = ?3 WHERE user = ?1 AND device_id = ?2",
                        params![user, b.device_id, bundle_json],
                    )?;
                }
                _ => {
                    tx.execute(
                        "DELETE FROM sessions WHERE user = ?1 AND device_id = ?2",
                        params![user, b.device_id],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO devices (user, device_id, identity, bundle) VALUES (?1, ?2, ?3, ?4)",
                        params![user, b.device_id, identity, bundle_json],
                    )?;
                    if known_before && !first_contact {
                        let who = if is_self {
                            "your account".to_string()
                        } else {
                            user.to_string()
                        };
                        store::notice(&tx, &format!("{who} has a new device ({})", b.device_id))?;
                    }
                }
            }
        }
        let stale: Vec<u32> = {
            let mut st = tx.prepare("SELECT device_id FROM devices WHERE user = ?1")?;
            let rows = st
                .query_map([user], |r| r.get::<_, u32>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().filter(|d| !listed.contains(d)).collect()
        };
        for d in stale {
            // Its sessions, sender keys and group keys sent to it go; groups rekey.
            revocation::device_gone(&tx, user, d)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// This account's devices: `(device id, is this device)`, refreshed from the server.
    pub async fn devices(&mut self) -> Result<Vec<(u32, bool)>, ClientError> {
        let me = self.linked_me()?;
        let user = me.user.to_string();
        let mine = me.device.get();
        self.refresh_devices(&user).await?;
        let mut st = self
            .store
            .conn
            .prepare("SELECT device_id FROM devices WHERE user = ?1 ORDER BY device_id")?;
        let mut out: Vec<(u32, bool)> = st
            .query_map([&user], |r| r.get::<_, u32>(0))?
            .map(|d| d.map(|d| (d, false)))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((mine, true));
        out.sort();
        Ok(out)
    }

    // ----- sending -----

    /// Stores a text for `to` and puts it in the outbox; returns its id (hex). Call
    /// [`Client::flush_outbox`] to deliver.
    pub fn queue_text(&mut self, to: &str, text: &str) -> Result<String, ClientError> {
        let me = self.linked_me()?;
        UserId::new(to).map_err(|e| ClientError::Usage(e.to_string()))?;
        if to == me.user.as_str() {
            return Err(ClientError::Usage(
                "send to a contact, not to yourself".into(),
            ));
        }
        if contact(&self.store.conn, to)?.is_some_and(|c| c.blocked) {
            return Err(ClientError::KeyChanged(to.to_string()));
        }
        let content = Content::Text {
            to: to.to_string(),
            text: text.to_string(),
            sent_ms: now_ms(),
            attachments: Vec::new(),
        };
        let tx = self.store.write_tx()?;
        tx.execute("INSERT OR IGNORE INTO contacts (user) VALUES (?1)", [to])?;
        let id = queue_content(&tx, me, to, &content)?;
        tx.commit()?;
        Ok(id)
    }

    /// Delivers the outbox in order. Returns the number of messages delivered.
    ///
    /// A message that cannot be delivered now does not hold up the others: messages to a
    /// contact whose key changed wait (a notice says so); a message refused for good (no such
    /// account, or a 400/403/404/413 from the server) is marked failed and dropped with a
    /// notice; any other failure particular to a message (keys that do not verify, an
    /// unexpected answer) leaves it and the later messages to the same recipient queued for
    /// the next flush, with a notice. An unreachable server, a store failure or a refusal that
    /// is not about the message (401, 408, 429, an unexpected 409) stops the flush with that
    /// error, everything staying queued.
    pub async fn flush_outbox(&mut self) -> Result<usize, ClientError> {
        self.linked_me()?;
        let rows: Vec<(i64, String, Option<String>)> = {
            let mut st = self
                .store
                .conn
                .prepare("SELECT seq, to_user, group_id FROM outbox ORDER BY seq")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let mut waiting = BTreeSet::new();
        let mut sent = 0;
        for (seq, to, group) in rows {
            let queue = group.clone().unwrap_or_else(|| to.clone());
            if waiting.contains(&queue) {
                continue;
            }
            let delivered = match &group {
                Some(g) => self.deliver_group(seq, g).await,
                None => self.deliver(seq, &to).await,
            };
            let e = match delivered {
                Ok(()) => {
                    sent += 1;
                    continue;
                }
                Err(ClientError::KeyChanged(u)) => {
                    waiting.insert(u);
                    waiting.insert(queue);
                    continue;
                }
                Err(e) => e,
            };
            let what = match &group {
                Some(g) => format!(
                    "a message to the group {}",
                    self.conversation_title(&groups::conversation(g))
                ),
                None => format!("a message to {to}"),
            };
            match disposition(&e) {
                Disposition::Stop => {
                    if let ClientError::Server {
                        status: 401,
                        code,
                        message,
                    } = e
                    {
                        return Err(ClientError::Server {
                            status: 401,
                            code,
                            message: format!(
                                "{message} (check that this device's clock is right: requests are signed with the time)"
                            ),
                        });
                    }
                    return Err(e);
                }
                Disposition::Skip => {
                    tracing::warn!(error = %e, "message kept queued");
                    waiting.insert(queue);
                    let reason = e.to_string();
                    let tx = self.store.write_tx()?;
                    let changed = tx.execute(
                        "UPDATE outbox SET last_error = ?2 WHERE seq = ?1 AND last_error IS NOT ?2",
                        params![seq, reason],
                    )?;
                    if changed > 0 {
                        store::notice(&tx, &format!("{what} waits in the outbox: {reason}"))?;
                    }
                    if changed > 0 && group.is_none() {
                        // The next attempt fetches the recipient's keys again (once per new
                        // reason: each fetch hands out one-time prekeys).
                        tx.execute("UPDATE contacts SET fetched = 0 WHERE user = ?1", [&to])?;
                    }
                    tx.commit()?;
                }
                Disposition::Drop => {
                    tracing::warn!(error = %e, "message dropped");
                    let tx = self.store.write_tx()?;
                    let id: Option<String> = tx
                        .query_row("SELECT message_id FROM outbox WHERE seq = ?1", [seq], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    if let Some(id) = id {
                        tx.execute(
                            "UPDATE messages SET state = 'failed' WHERE message_id = ?1 AND outgoing = 1",
                            [&id],
                        )?;
                    }
                    tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
                    store::notice(&tx, &format!("{what} could not be sent: {e}"))?;
                    tx.commit()?;
                }
            }
        }
        self.cleanup_attachment_objects()?;
        Ok(sent)
    }

    /// The server accepted outbox entry `seq` (1:1 or group): it leaves the outbox and its
    /// message becomes `sent`, in one transaction.
    fn outbox_sent(&self, seq: i64, message_id: &str, answer: &[u8]) -> Result<(), ClientError> {
        let resp: SendResponse = serde_json::from_slice(answer)
            .map_err(|e| ClientError::Internal(format!("send answer: {e}")))?;
        let tx = self.store.write_tx()?;
        tx.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        tx.execute(
            "UPDATE messages SET state = 'sent', server_ts = ?2 WHERE message_id = ?1 AND outgoing = 1 AND state = 'pending'",
            params![message_id, resp.server_ts as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    async fn deliver(&mut self, seq: i64, to: &str) -> Result<(), ClientError> {
        let me_user = self.me()?.user.to_string();
        let c = contact(&self.store.conn, to)?;
        if c.as_ref().is_some_and(|c| c.blocked) {
            return Err(ClientError::KeyChanged(to.to_string()));
        }
        if !c.is_some_and(|c| c.fetched) {
            self.refresh_devices(to).await?;
        }
        if to != me_user {
            // Every device the server listed was refused (keys that do not verify): the
            // message waits for keys that do, rather than going out to no one and failing.
            let verified: i64 = self.store.conn.query_row(
                "SELECT COUNT(*) FROM devices WHERE user = ?1",
                [to],
                |r| r.get(0),
            )?;
            if verified == 0 {
                return Err(ClientError::KeysInvalid {
                    user: to.to_string(),
                    reason: "no device of theirs has keys that verify under their account key"
                        .into(),
                });
            }
        }
        self.upload_attachments(seq).await?;
        for _ in 0..MAX_MISMATCH_RETRIES {
            let (message_id, body, envelopes) = {
                let me = self.me()?;
                let tx = self.store.write_tx()?;
                let row: Option<OutboxRow> = tx
                    .query_row(
                        "SELECT message_id, body, body_key, envelopes FROM outbox WHERE seq = ?1",
                        [seq],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?;
                let Some((message_id, body, key, envs)) = row else {
                    return Ok(()); // another process delivered it
                };
                let existing: Vec<EnvelopeKey> = match &envs {
                    Some(j) => serde_json::from_str(j)
                        .map_err(|e| ClientError::Internal(format!("stored envelopes: {e}")))?,
                    None => Vec::new(),
                };
                let had = addressed(&existing);
                let key = BodyKey::from_bytes(&arr(&key, "body key")?);
                let (new, sealed) = seal_envelopes(&tx, me, to, &body, &key, existing)?;
                // Saved whenever the envelopes differ from the stored ones, so a retry
                // resends exactly the bytes that may already have reached the server.
                if envs.is_none() || sealed || addressed(&new) != had {
                    let j = String::from_utf8_lossy(&Self::json(&new)?).into_owned();
                    tx.execute(
                        "UPDATE outbox SET envelopes = ?2, attempts = attempts + 1 WHERE seq = ?1",
                        params![seq, j],
                    )?;
                }
                tx.commit()?;
                (message_id, body, new)
            };
            if envelopes.is_empty() && to == me_user {
                // No other own device to tell.
                self.store
                    .conn
                    .execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
                return Ok(());
            }
            let req = SendRequest {
                message_id: B64(
                    hex::decode(&message_id).map_err(|e| ClientError::Internal(e.to_string()))?
                ),
                to: Some(to.to_string()),
                group: None,
                body: B64(body),
                envelopes,
                ephemeral: false,
            };
            let (status, bytes) = self
                .call(None, "PUT", "/v1/messages", Some(Self::json(&req)?))
                .await?;
            if (200..300).contains(&status) {
                self.outbox_sent(seq, &message_id, &bytes)?;
                // Each recipient device's delivery receipt is awaited (a missing one is
                // reported, see `delivery`).
                let devices: Vec<u32> = req
                    .envelopes
                    .iter()
                    .filter(|e| e.user == to)
                    .map(|e| e.device_id)
                    .collect();
                if to != me_user {
                    crate::delivery::sent(&self.store.conn, &message_id, to, &devices)?;
                }
                return Ok(());
            }
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            if status == 409 && err.error == "device_mismatch" {
                tracing::info!(
                    missing = err.missing.len(),
                    stale = err.stale.len(),
                    "device lists changed; re-encrypting"
                );
                let users: BTreeSet<String> = err
                    .missing
                    .iter()
                    .chain(err.stale.iter())
                    .map(|d| d.user.clone())
                    .collect();
                for u in users {
                    self.refresh_devices(&u).await?;
                }
                continue;
            }
            return Err(Self::server_error(status, &bytes));
        }
        Err(ClientError::Server {
            status: 409,
            code: "device_mismatch".into(),
            message: format!("the device lists of {to} kept changing; will retry"),
        })
    }

    /// Sends a typing indicator to `to` (ephemeral: pushed to online devices, never stored).
    pub async fn send_typing(&mut self, to: &str, typing: bool) -> Result<(), ClientError> {
        self.linked_me()?;
        let c = contact(&self.store.conn, to)?;
        if c.as_ref().is_some_and(|c| c.blocked) {
            return Err(ClientError::KeyChanged(to.to_string()));
        }
        if !c.is_some_and(|c| c.fetched) {
            self.refresh_devices(to).await?;
        }
        let mid = MessageId::generate(&mut OsRng);
        let (body, key) = encrypt_body(&mut OsRng, &mid, &Content::Typing { typing }.encode()?)
            .map_err(ClientError::protocol)?;
        // One retry after a 409: the device lists named in it are fetched again first.
        for attempt in 0..2 {
            let envelopes = {
                let me = self.me()?;
                let tx = self.store.write_tx()?;
                let (e, _) = seal_envelopes(&tx, me, to, &body.bytes, &key, Vec::new())?;
                tx.commit()?;
                e
            };
            let req = SendRequest {
                message_id: B64(mid.as_bytes().to_vec()),
                to: Some(to.to_string()),
                group: None,
                body: B64(body.bytes.clone()),
                envelopes,
                ephemeral: true,
            };
            let (status, bytes) = self
                .call(None, "PUT", "/v1/messages", Some(Self::json(&req)?))
                .await?;
            if (200..300).contains(&status) {
                return Ok(());
            }
            let err: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            if attempt == 0 && status == 409 && err.error == "device_mismatch" {
                let users: BTreeSet<String> = err
                    .missing
                    .iter()
                    .chain(err.stale.iter())
                    .map(|d| d.user.clone())
                    .collect();
                for u in users {
                    self.refresh_devices(&u).await?;
                }
                continue;
            }
            return Err(Self::server_error(status, &bytes));
        }
        Err(ClientError::Server {
            status: 409,
            code: "device_mismatch".into(),
            message: format!("the device lists of {to} kept changing"),
        })
    }

    /// Marks `conversation` read: a read-sync to this account's other devices and, unless
    /// read receipts are off, read receipts to the contact.
    pub async fn read(
        &mut self,
        conversation: &str,
    ) -> Result<Vec<crate::store::StoredMessage>, ClientError> {
        let receipts = self.read_receipts()?;
        {
            let me = self.linked_me()?;
            let tx = self.store.write_tx()?;
            let ids: Vec<String> = {
                let mut st = tx.prepare("SELECT message_id FROM messages WHERE conversation = ?1 AND outgoing = 0 AND state = 'received' ORDER BY seq")?;
                let rows = st
                    .query_map([conversation], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            };
            if !ids.is_empty() {
                tx.execute("UPDATE messages SET state = 'read' WHERE conversation = ?1 AND outgoing = 0 AND state = 'received'", [conversation])?;
                for chunk in ids.chunks(500) {
                    // Own devices always learn what was read here (the read-sync names the
                    // conversation); the contact only with read receipts on.
                    queue_content(
                        &tx,
                        me,
                        me.user.as_str(),
                        &Content::ReadSync {
                            conversation: conversation.to_string(),
                            message_ids: chunk.to_vec(),
                        },
                    )?;
                    if receipts {
                        queue_content(
                            &tx,
                            me,
                            conversation,
                            &Content::Receipt {
                                kind: ReceiptKind::Read,
                                message_ids: chunk.to_vec(),
                            },
                        )?;
                    }
                }
            }
            tx.commit()?;
        }
        let history = self.store.history(conversation, 50)?;
        if let Err(e) = self.flush_outbox().await {
            tracing::warn!(error = %e, "receipts stay in the outbox");
        }
        Ok(history)
    }

    /// Whether read receipts are sent (default on).
    pub fn read_receipts(&self) -> Result<bool, ClientError> {
        Ok(self.store.meta_str("read_receipts")?.as_deref() != Some("off"))
    }

    /// Turns read receipts on or off.
    pub fn set_read_receipts(&self, on: bool) -> Result<(), ClientError> {
        self.store
            .set_meta("read_receipts", if on { b"on" } else { b"off" })
    }

    // ----- receiving -----

    async fn sender_identity(
        &mut self,
        user: &str,
        device: u32,
    ) -> Result<Option<DeviceIdentityPublic>, ClientError> {
        let lookup = |conn: &Connection| -> Result<Option<Vec<u8>>, ClientError> {
            Ok(conn
                .query_row(
                    "SELECT identity FROM devices WHERE user = ?1 AND device_id = ?2",
                    params![user, device],
                    |r| r.get(0),
                )
                .optional()?)
        };
        let mut found = lookup(&self.store.conn)?;
        if found.is_none() {
            self.refresh_devices(user).await?;
            found = lookup(&self.store.conn)?;
        }
        match found {
            Some(b) => Ok(Some(
                DeviceIdentityPublic::from_bytes(&arr(&b, "identity")?)
                    .map_err(ClientError::protocol)?,
            )),
            None => Ok(None),
        }
    }

    /// Decrypts and stores one envelope. Returns whether to acknowledge it and what to show.
    async fn process_envelope(
        &mut self,
        env: &Envelope,
        ephemeral: bool,
    ) -> Result<(bool, Vec<Event>), ClientError> {
        let id = hex::encode(&env.message_id.0);
        let seen: Option<String> = self
            .store
            .conn
            .query_row(
                "SELECT message_id FROM seen WHERE sender_user = ?1 AND message_id = ?2",
                params![env.sender.user, id],
                |r| r.get(0),
            )
            .optional()?;
        if seen.is_some() {
            return Ok((true, Vec::new()));
        }
        if let Some(group) = &env.group {
            return self.process_group_envelope(env, group, ephemeral).await;
        }
        let sender_user = env.sender.user.clone();
        let sender_identity = match self
            .sender_identity(&sender_user, env.sender.device_id)
            .await
        {
            Ok(Some(i)) => i,
            Ok(None) => {
                self.store.notice(&format!(
                    "dropped a message from an unknown or removed device {}#{}",
                    sender_user, env.sender.device_id
                ))?;
                return Ok((true, Vec::new()));
            }
            // Kept queued until the key change is accepted.
            Err(ClientError::KeyChanged(_)) => return Ok((false, Vec::new())),
            // Only a failure to ask (or to store) leaves the envelope for a later sync.
            // (A 401, 408 or 429 is about this device's requests, not the sender.)
            Err(
                e @ (ClientError::Unreachable { .. }
                | ClientError::Store(_)
                | ClientError::Io(_)
                | ClientError::Server {
                    status: 401 | 408 | 429,
                    ..
                }),
            ) => return Err(e),
            // The sender cannot be known (no such account, keys that do not verify, a
            // refusal): an unknown sender.
            Err(e) => {
                self.store.notice(&format!(
                    "dropped a message from {}#{}, whose keys could not be checked: {e}",
                    sender_user, env.sender.device_id
                ))?;
                return Ok((true, Vec::new()));
            }
        };
        let Ok(mid) = arr::<16>(&env.message_id.0, "message id").map(MessageId) else {
            return Ok((true, Vec::new()));
        };
        let me = self.me()?;
        let tx = self.store.write_tx()?;
        // Checked again under the write lock: another process on this profile may have
        // stored it since (decrypting twice would fail and advance nothing).
        let seen_now: Option<String> = tx
            .query_row(
                "SELECT message_id FROM seen WHERE sender_user = ?1 AND message_id = ?2",
                params![sender_user, id],
                |r| r.get(0),
            )
            .optional()?;
        if seen_now.is_some() {
            return Ok((true, Vec::new()));
        }
        let mut sessions = load_sessions(&tx, &sender_user, env.sender.device_id)?;
        let mut prekeys = load_prekeys(&tx)?;
        let content = sessions
            .decrypt(
                &mut OsRng,
                &me.identity,
                &mut prekeys,
                &sender_identity,
                &env.key.0,
            )
            .map_err(ClientError::protocol);
        let (new_session, content) = match content {
            Err(e) => {
                drop(tx);
                tracing::warn!(error = %e, sender = %sender_user, "undecryptable message dropped");
                self.store.notice(&format!(
                    "a message from {}#{} could not be read: {e}",
                    sender_user, env.sender.device_id
                ))?;
                return Ok((!ephemeral, Vec::new()));
            }
            Ok(d) => (d.new_session, d.plaintext),
        };
        // The body must match the key envelope (its hash and the message id) before anything
        // is kept: a server that pairs a real key envelope with a tampered body or another
        // message id must not use up the ratchet key of the real message (which would then
        // never open). Rolled back, the session is as if the forgery never came.
        let plain = match open_body(&content, &env.body.0, &mid) {
            Ok(p) => p,
            Err(e) => {
                drop(tx);
                tracing::warn!(error = %e, sender = %sender_user, "forged or mismatched body dropped");
                self.store.notice(&format!(
                    "a message from {}#{} could not be read: {e}",
                    sender_user, env.sender.device_id
                ))?;
                return Ok((!ephemeral, Vec::new()));
            }
        };
        // Decrypted: the advanced session is kept whatever the content turns out to be.
        save_sessions(&tx, &sender_user, env.sender.device_id, &sessions)?;
        if new_session {
            store::set_meta(&tx, "prekeys", &prekeys.to_bytes())?;
        }
        let from_self = sender_user == me.user.as_str();
        let mut events = Vec::new();
        let mut got_sender_key = false;
        if !ephemeral {
            tx.execute(
                "INSERT OR IGNORE INTO seen (sender_user, message_id) VALUES (?1, ?2)",
                params![sender_user, id],
            )?;
        }
        // What the content does is undone as a whole when it fails (a notice says why); the
        // session and `seen` stay, and the envelope is acknowledged.
        tx.execute_batch("SAVEPOINT content")?;
        let applied = (|| -> Result<(), ClientError> {
            match Content::decode(&plain)? {
                Content::Text {
                    to,
                    text,
                    sent_ms,
                    attachments,
                } if !ephemeral => {
                    let (conversation, state) = if from_self {
                        (to, "sent")
                    } else {
                        (sender_user.clone(), "received")
                    };
                    tx.execute(
                    "INSERT OR IGNORE INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![id, conversation, from_self as i64, sender_user, env.sender.device_id, text, sent_ms as i64, env.server_ts as i64, state],
                )?;
                    crate::attachments::store_incoming(&tx, &id, &attachments)?;
                    tx.execute(
                        "INSERT OR IGNORE INTO contacts (user) VALUES (?1)",
                        [&conversation],
                    )?;
                    if !from_self {
                        tx.execute(
                        "INSERT OR IGNORE INTO pending_receipts (user, message_id) VALUES (?2, ?1)",
                        params![id, sender_user],
                    )?;
                    }
                    events.push(Event::Message {
                        conversation,
                        from: format!("{}#{}", sender_user, env.sender.device_id),
                        text,
                        message_id: id.clone(),
                        outgoing: from_self,
                    });
                }
                // A receipt names the messages of one conversation only by id; this account's own
                // devices learn what was read here from the ReadSync, which names it.
                Content::Receipt { kind, message_ids } if !ephemeral && !from_self => {
                    let mut count = 0;
                    for mid in &message_ids {
                        count += match kind {
                        ReceiptKind::Delivered => tx.execute("UPDATE messages SET state = 'delivered' WHERE message_id = ?1 AND outgoing = 1 AND conversation = ?2 AND state IN ('pending', 'sent')", params![mid, sender_user])?,
                        ReceiptKind::Read => tx.execute("UPDATE messages SET state = 'read' WHERE message_id = ?1 AND outgoing = 1 AND conversation = ?2 AND state != 'read'", params![mid, sender_user])?,
                    };
                    }
                    crate::delivery::confirmed(
                        &tx,
                        &sender_user,
                        env.sender.device_id,
                        &message_ids,
                        kind == ReceiptKind::Delivered,
                    )?;
                    events.push(Event::Receipt {
                        conversation: sender_user.clone(),
                        kind,
                        count,
                    });
                }
                Content::SenderKey {
                    group_id,
                    distribution,
                } if !ephemeral => {
                    match groups::receive_distribution(&tx, &env.sender, &group_id, &distribution) {
                        Ok(()) => got_sender_key = true,
                        Err(e) => store::notice(
                            &tx,
                            &format!("a sender key from {sender_user} was refused: {e}"),
                        )?,
                    }
                }
                Content::ReadSync {
                    conversation,
                    message_ids,
                } if from_self && !ephemeral => {
                    let mut count = 0;
                    for mid in &message_ids {
                        count += tx.execute("UPDATE messages SET state = 'read' WHERE message_id = ?1 AND conversation = ?2 AND outgoing = 0 AND state = 'received'", params![mid, conversation])?;
                    }
                    events.push(Event::ReadSync { count });
                }
                Content::Typing { typing } if !from_self => {
                    events.push(Event::Typing {
                        from: sender_user.clone(),
                        typing,
                    });
                }
                Content::DeviceLink {
                    account_key,
                    certificate,
                    contacts,
                    link_secret,
                } if from_self && !ephemeral => {
                    if store::meta(&tx, "account_key")?.is_none() {
                        accept_device_link(
                            &tx,
                            me,
                            &account_key,
                            &certificate,
                            &contacts,
                            &link_secret,
                        )?;
                        events.push(Event::Linked {
                            user: me.user.to_string(),
                        });
                    }
                }
                Content::AccountRotated {
                    account_key,
                    rotation,
                    revocation: revoked,
                    certificates,
                } if from_self && !ephemeral => revocation::accept_rotation(
                    &tx,
                    me,
                    env.sender.device_id,
                    &account_key,
                    &rotation,
                    &revoked,
                    &certificates,
                )?,
                Content::HistoryPointer {
                    device_id,
                    archive,
                    messages,
                } if from_self && !ephemeral => {
                    history::receive_pointer(&tx, me, device_id, &archive, messages)?;
                }
                other => {
                    tracing::debug!(kind = other.kind(), "content ignored in this context");
                }
            }
            Ok(())
        })();
        match applied {
            Ok(()) => tx.execute_batch("RELEASE content")?,
            Err(e @ (ClientError::Store(_) | ClientError::Io(_))) => return Err(e),
            Err(e) => {
                tx.execute_batch("ROLLBACK TO content; RELEASE content")?;
                events.clear();
                got_sender_key = false;
                tracing::warn!(error = %e, sender = %sender_user, "message content refused");
                store::notice(
                    &tx,
                    &format!(
                        "a message from {}#{} could not be used: {e}",
                        sender_user, env.sender.device_id
                    ),
                )?;
            }
        }
        tx.commit()?;
        if got_sender_key {
            self.received_sender_key = true;
        }
        Ok((!ephemeral, events))
    }

    /// Turns stored pending delivery receipts into outbox messages (one per contact).
    fn queue_pending_receipts(&mut self) -> Result<(), ClientError> {
        let Ok(me) = self.linked_me() else {
            return Ok(());
        };
        let tx = self.store.write_tx()?;
        let rows: Vec<(String, String)> = {
            let mut st = tx.prepare("SELECT user, message_id FROM pending_receipts")?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        let mut by_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (u, m) in rows {
            by_user.entry(u).or_default().push(m);
        }
        for (u, ids) in by_user {
            for chunk in ids.chunks(500) {
                queue_content(
                    &tx,
                    me,
                    &u,
                    &Content::Receipt {
                        kind: ReceiptKind::Delivered,
                        message_ids: chunk.to_vec(),
                    },
                )?;
            }
        }
        tx.execute("DELETE FROM pending_receipts", [])?;
        tx.commit()?;
        Ok(())
    }

    async fn ack(&self, ids: Vec<String>) -> Result<(), ClientError> {
        for chunk in ids.chunks(100) {
            let req = AckRequest {
                ids: chunk.to_vec(),
            };
            let (status, bytes) = self
                .call(None, "POST", "/v1/messages/ack", Some(Self::json(&req)?))
                .await?;
            if !(200..300).contains(&status) {
                return Err(Self::server_error(status, &bytes));
            }
        }
        Ok(())
    }

    /// Fetches and stores everything queued for this device, acknowledges it, sends delivery
    /// receipts and the outbox, and tops up prekeys. Returns what to show.
    pub async fn sync(&mut self) -> Result<Vec<Event>, ClientError> {
        self.me()?;
        let mut events = Vec::new();
        // A group message can come before the sender key it needs (they travel apart): when a
        // pass left one queued and also brought a sender key, one more pass opens it.
        for _ in 0..2 {
            self.awaiting_sender_key = false;
            self.received_sender_key = false;
            self.sync_pass(&mut events).await?;
            if !(self.awaiting_sender_key && self.received_sender_key) {
                break;
            }
        }
        self.import_pending_history().await?;
        events.extend(self.download_pending().await?);
        self.store
            .set_meta("last_sync_ms", now_ms().to_string().as_bytes())?;
        if self.is_linked()? {
            self.maintain_prekeys(false).await?;
            self.flush_outbox().await?;
        }
        events.extend(self.take_notices()?);
        Ok(events)
    }

    async fn sync_pass(&mut self, events: &mut Vec<Event>) -> Result<(), ClientError> {
        let mut cursor: Option<String> = None;
        loop {
            let pq = match &cursor {
                // Cursors are the server's own tokens (a-z 0-9 : . _ -), all legal in a query
                // string as they are; the server reads the parameter without decoding.
                Some(c) => format!("/v1/messages?limit=100&cursor={c}"),
                None => "/v1/messages?limit=100".to_string(),
            };
            let (status, bytes) = self.call(None, "GET", &pq, None).await?;
            if status == 401 && !self.is_linked()? {
                return Err(ClientError::NotLinked);
            }
            if !(200..300).contains(&status) {
                return Err(Self::server_error(status, &bytes));
            }
            let page: SyncResponse = serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Internal(format!("sync answer: {e}")))?;
            let mut acks = Vec::new();
            for env in &page.envelopes {
                let (ack, ev) = self.process_envelope(env, false).await?;
                if ack {
                    acks.push(env.id.clone());
                }
                events.extend(ev);
            }
            self.ack(acks).await?;
            self.queue_pending_receipts()?;
            match page.next_cursor {
                // A page may be empty while more follow (expired envelopes are skipped); a
                // cursor that does not move ends the loop rather than spinning.
                Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => break,
            }
        }
        Ok(())
    }

    /// Notices not shown yet, as events.
    pub fn take_notices(&self) -> Result<Vec<Event>, ClientError> {
        Ok(self
            .store
            .take_notices()?
            .into_iter()
            .map(|text| Event::Notice { text })
            .collect())
    }

    /// How many one-time prekeys the server still holds for this device.
    pub async fn server_prekey_count(&self) -> Result<u64, ClientError> {
        self.me()?;
        let count: PreKeyCount = self.call_json("GET", "/v1/keys", None).await?;
        Ok(count.one_time_prekeys)
    }

    /// Uploads 100 one-time prekeys when the server holds fewer than 10 (or when `force`),
    /// and rotates the signed prekey when it is a week old.
    pub async fn maintain_prekeys(
        &mut self,
        force: bool,
    ) -> Result<PrekeyMaintenance, ClientError> {
        self.maintain_prekeys_at(force, now_ms()).await
    }

    /// [`Client::maintain_prekeys`] as if the local clock read `now` (milliseconds since the
    /// epoch) for the signed prekey's age; requests are still signed with the real time.
    pub async fn maintain_prekeys_at(
        &mut self,
        force: bool,
        now: u64,
    ) -> Result<PrekeyMaintenance, ClientError> {
        let me = self.me()?;
        let count: PreKeyCount = self.call_json("GET", "/v1/keys", None).await?;
        let tx = self.store.write_tx()?;
        let mut prekeys = load_prekeys(&tx)?;
        let mut signed_prekey = None;
        if prekeys
            .current_signed_prekey()
            .is_some_and(|s| now.saturating_sub(s.created_ms()) > SPK_ROTATE_MS)
        {
            let id = prekeys
                .current_signed_prekey()
                .map_or(1, |s| s.id().wrapping_add(1).max(1));
            prekeys.add_signed_prekey(
                SignedPreKey::generate(&mut OsRng, &me.identity, id, now),
                now,
            );
            prekeys.prune(now);
            signed_prekey = prekeys.current_signed_prekey().map(spk_json);
        }
        let opks = if force || count.one_time_prekeys < OPK_LOW {
            prekeys.generate_one_time_prekeys(&mut OsRng, OPK_BATCH)
        } else {
            Vec::new()
        };
        let done = PrekeyMaintenance {
            signed_prekey_rotated_to: signed_prekey.as_ref().map(|s| s.id),
            one_time_prekeys_uploaded: opks.len(),
        };
        if signed_prekey.is_none() && opks.is_empty() {
            return Ok(done);
        }
        // The secrets are stored before the public halves are published.
        store::set_meta(&tx, "prekeys", &prekeys.to_bytes())?;
        tx.commit()?;
        let req = UploadKeysRequest {
            signed_prekey,
            one_time_prekeys: opks.iter().map(opk_json).collect(),
        };
        let _: PreKeyCount = self
            .call_json("PUT", "/v1/keys", Some(Self::json(&req)?))
            .await?;
        tracing::info!(
            uploaded = opks.len(),
            rotated = done.signed_prekey_rotated_to.is_some(),
            "prekeys uploaded"
        );
        Ok(done)
    }

    // ----- verification -----

    /// The safety number with `user`; with `accept`, pins a changed key and unblocks sending.
    pub async fn verify(&mut self, user: &str, accept: bool) -> Result<Verification, ClientError> {
        let me = self.linked_me()?;
        let my_user = me.user.clone();
        // A contact without a pinned key is fetched; a blocked one too, so that a key that
        // went back to the accepted one unblocks it (and a pending key is current).
        if contact(&self.store.conn, user)?.is_none_or(|c| c.pinned.is_none() || c.blocked) {
            match self.refresh_devices(user).await {
                Ok(()) | Err(ClientError::KeyChanged(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let my_key = self.account_key()?.public_key();
        let uid = UserId::new(user).map_err(|e| ClientError::Usage(e.to_string()))?;
        // With `accept`, what is shown and what is pinned are read and written in one
        // transaction: the key accepted is the key whose safety number is shown.
        let tx = if accept {
            Some(self.store.write_tx()?)
        } else {
            None
        };
        let conn: &Connection = match &tx {
            Some(tx) => tx,
            None => &self.store.conn,
        };
        let c = contact(conn, user)?
            .ok_or_else(|| ClientError::Usage(format!("{user} is not a contact")))?;
        let pinned = vkey(c.pinned.as_deref().unwrap_or_default(), "pinned key")?;
        let number =
            |k: &VerifyingKey| SafetyNumber::new((&my_user, &my_key), (&uid, k)).to_string();
        let mut v = Verification {
            user: user.to_string(),
            safety_number: number(&pinned),
            changed_safety_number: None,
            blocked: c.blocked,
        };
        if let Some(p) = &c.pending {
            let pending = vkey(p, "changed key")?;
            v.changed_safety_number = Some(number(&pending));
            if let Some(tx) = tx {
                let n = tx.execute("UPDATE contacts SET pinned_key = pending_key, pending_key = NULL, blocked = 0, fetched = 0 WHERE user = ?1 AND pending_key = ?2", params![user, p])?;
                if n != 1 {
                    return Err(ClientError::Internal(format!(
                        "the key of {user} changed while it was being accepted"
                    )));
                }
                tx.execute("DELETE FROM devices WHERE user = ?1", [user])?;
                tx.execute("DELETE FROM sessions WHERE user = ?1", [user])?;
                tx.commit()?;
                v.safety_number = number(&pending);
                v.changed_safety_number = None;
                v.blocked = false;
            }
        }
        Ok(v)
    }

    // ----- WebSocket -----

    /// Listens on the WebSocket (reconnecting with backoff), storing what arrives and flushing
    /// the outbox, for `duration` or forever. `on_event` sees everything to show.
    pub async fn watch(
        &mut self,
        duration: Option<Duration>,
        mut on_event: impl FnMut(&Event),
    ) -> Result<(), ClientError> {
        self.me()?;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let far = tokio::time::Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let end = deadline.unwrap_or(far);
        let mut backoff = Duration::from_millis(500);
        while tokio::time::Instant::now() < end {
            let url = {
                let me = self.me()?;
                let auth =
                    ConnectAuth::sign(&mut OsRng, &me.identity, &me.user, me.device, now_ms());
                format!("{}?{}", self.ws_url, auth.to_query())
            };
            let connected = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(url),
            )
            .await;
            let mut ws = match connected {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => {
                    // A refused upgrade: when this device's requests are refused too (it was
                    // revoked), reconnecting cannot help.
                    if matches!(&e, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401)
                    {
                        if let Err(e @ ClientError::Server { status: 401, .. }) =
                            self.server_prekey_count().await
                        {
                            return Err(e);
                        }
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "WebSocket connect failed");
                    tokio::time::sleep_until(end.min(tokio::time::Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
                Err(_) => {
                    tracing::warn!(retry_in = ?backoff, "WebSocket connect timed out");
                    tokio::time::sleep_until(end.min(tokio::time::Instant::now() + backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            tracing::info!("connected");
            // Catch up on what was queued while disconnected.
            // Set when a push or the catch-up failed: the next tick syncs (what failed stays
            // queued on the server until acknowledged).
            let mut need_sync = false;
            match self.sync().await {
                Ok(ev) => ev.iter().for_each(&mut on_event),
                Err(ClientError::NotLinked) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "sync failed; retrying on the next tick");
                    need_sync = true;
                }
            }
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            let mut ticks: u32 = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => {
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                    _ = tick.tick() => {
                        ticks = ticks.wrapping_add(1);
                        // Keeps idle connections open through proxies and gateways.
                        if ticks % 12 == 0 && ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                            tracing::warn!("WebSocket ping failed; reconnecting");
                            break;
                        }
                        if ticks > 12 {
                            // The connection held a minute: the next drop starts a fresh backoff.
                            backoff = Duration::from_millis(500);
                        }
                        if need_sync {
                            match self.sync().await {
                                Ok(ev) => {
                                    need_sync = false;
                                    ev.iter().for_each(&mut on_event);
                                }
                                Err(ClientError::NotLinked) => need_sync = false,
                                Err(e) => tracing::warn!(error = %e, "sync failed; retrying on the next tick"),
                            }
                        } else if self.is_linked()? {
                            if let Err(e) = self.flush_outbox().await {
                                tracing::warn!(error = %e, "outbox flush failed");
                            }
                        }
                        for ev in self.take_notices()? { on_event(&ev); }
                    }
                    msg = ws.next() => {
                        let text = match msg {
                            Some(Ok(WsMessage::Text(t))) => t.as_str().to_string(),
                            Some(Ok(WsMessage::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
                            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => {
                                tracing::warn!("WebSocket closed; reconnecting");
                                break;
                            }
                            Some(Ok(_)) => continue,
                        };
                        let push: Push = match serde_json::from_str(&text) {
                            Ok(p) => p,
                            Err(e) => { tracing::warn!(error = %e, "unknown push ignored"); continue; }
                        };
                        if let Err(e) = self.handle_push(push, &mut on_event).await {
                            tracing::warn!(error = %e, "push handling failed; syncing on the next tick");
                            need_sync = true;
                        }
                    }
                }
            }
            // Dropped: wait before reconnecting so a flapping connection does not spin.
            tokio::time::sleep_until(end.min(tokio::time::Instant::now() + backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        Ok(())
    }

    async fn handle_push(
        &mut self,
        push: Push,
        on_event: &mut impl FnMut(&Event),
    ) -> Result<(), ClientError> {
        match push {
            Push::Envelope { envelope } => {
                self.received_sender_key = false;
                let (ack, ev) = self.process_envelope(&envelope, false).await?;
                if envelope.group.is_some() && !ack {
                    self.awaiting_sender_key = true;
                }
                ev.iter().for_each(&mut *on_event);
                if ack {
                    self.ack(vec![envelope.id.clone()]).await?;
                }
                self.import_pending_history().await?;
                self.download_pending()
                    .await?
                    .iter()
                    .for_each(&mut *on_event);
                self.queue_pending_receipts()?;
                if self.awaiting_sender_key && self.received_sender_key {
                    // The key a queued group message waited for is here: open it now.
                    self.sync().await?.iter().for_each(&mut *on_event);
                } else if self.is_linked()? {
                    self.flush_outbox().await?;
                } else if ev.iter().any(|e| matches!(e, Event::Linked { .. })) {
                    self.maintain_prekeys(false).await?;
                }
            }
            Push::Ephemeral { envelope } => {
                let (_, ev) = self.process_envelope(&envelope, true).await?;
                ev.iter().for_each(&mut *on_event);
            }
            Push::Sync => {
                self.sync().await?.iter().for_each(&mut *on_event);
            }
            Push::PrekeysLow { remaining } => {
                tracing::info!(remaining, "server prekeys low");
                if self.is_linked()? {
                    self.maintain_prekeys(true).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A DeviceLink is taken only with this device's link secret and a certificate that the
    /// transferred account key signed for this very device.
    #[test]
    fn a_device_link_needs_the_link_secret_and_this_devices_certificate() {
        let account = AccountKey::generate(&mut OsRng);
        let me = Me {
            user: UserId::new("alice").unwrap(),
            device: DeviceId::generate(&mut OsRng),
            identity: DeviceIdentity::generate(&mut OsRng),
        };
        let cert = account.certify(&me.user, me.device, &me.identity.public(), 1);
        let pk = account.public_key();
        let secret = [7u8; LINK_SECRET_LEN];
        let good = b64(&secret);
        assert!(check_device_link(Some(&secret), &good, &pk, &cert, &me).is_ok());
        // Without the secret of this device's code: refused.
        for wrong in [
            b64(&[8u8; LINK_SECRET_LEN]),
            String::new(),
            b64(&secret[..15]),
        ] {
            let e = check_device_link(Some(&secret), &wrong, &pk, &cert, &me).unwrap_err();
            assert!(e.to_string().contains("link code"), "{e}");
        }
        assert!(check_device_link(None, &good, &pk, &cert, &me).is_err());
        // A certificate the transferred key did not sign.
        let other = AccountKey::generate(&mut OsRng);
        assert!(check_device_link(Some(&secret), &good, &other.public_key(), &cert, &me).is_err());
        // Certificates for another device id, other identity keys, another account.
        let another_device = account.certify(
            &me.user,
            DeviceId::generate(&mut OsRng),
            &me.identity.public(),
            1,
        );
        let other_keys = account.certify(
            &me.user,
            me.device,
            &DeviceIdentity::generate(&mut OsRng).public(),
            1,
        );
        let other_user = account.certify(
            &UserId::new("mallory").unwrap(),
            me.device,
            &me.identity.public(),
            1,
        );
        for c in [another_device, other_keys, other_user] {
            assert!(check_device_link(Some(&secret), &good, &pk, &c, &me).is_err());
        }
    }

    /// Only explicit, permanent refusals drop a message; the server being unreachable or
    /// refusing for reasons that are not the message's stops the flush; the rest waits.
    #[test]
    fn outbox_failures_are_sorted() {
        let server = |status: u16, code: &str| ClientError::Server {
            status,
            code: code.into(),
            message: String::new(),
        };
        for s in [400, 403, 404, 413] {
            assert_eq!(disposition(&server(s, "x")), Disposition::Drop, "{s}");
        }
        for s in [401, 408, 429] {
            assert_eq!(disposition(&server(s, "x")), Disposition::Stop, "{s}");
        }
        assert_eq!(
            disposition(&server(409, "too_many_devices")),
            Disposition::Stop
        );
        assert_eq!(
            disposition(&server(409, "device_mismatch")),
            Disposition::Skip
        );
        assert_eq!(
            disposition(&ClientError::NoSuchAccount("x".into())),
            Disposition::Drop
        );
        assert_eq!(
            disposition(&ClientError::Unreachable {
                endpoint: String::new(),
                reason: String::new()
            }),
            Disposition::Stop
        );
        for e in [
            ClientError::Usage(String::new()),
            ClientError::Internal(String::new()),
            ClientError::Content(String::new()),
            ClientError::KeysInvalid {
                user: "x".into(),
                reason: String::new(),
            },
        ] {
            assert_eq!(disposition(&e), Disposition::Skip, "{e}");
        }
    }

    /// An error answer that is not the API's JSON is shown as (shortened) text.
    #[test]
    fn a_non_json_error_body_is_readable() {
        let e = Client::server_error(413, b"<html>\n  Request Entity Too Large\n</html>");
        let shown = e.to_string();
        assert!(
            shown.contains("<html> Request Entity Too Large </html>"),
            "{shown}"
        );
        let long = Client::server_error(400, "x".repeat(1000).as_bytes()).to_string();
        assert!(long.len() < 400, "{long}");
    }
}
