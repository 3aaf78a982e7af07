//! History transfer to a newly linked device (DESIGN.md, "Multi-device and trust"; issue #7).
//!
//! The approving device writes the account's state as an archive of JSON lines (format 1,
//! below) straight from the store into the streaming attachment encryption (PROTOCOL.md,
//! "Attachments"), uploads the object through a presigned URL and sends its pointer and key to
//! the new device in a `history_pointer` message over their pairwise session. The new device
//! downloads the object, then decrypts it into an importer that applies one record at a time
//! inside a single store transaction: the archive's last segment is released only after every
//! tag and the digest verified, so an object that does not verify rolls the transaction back
//! and nothing is imported. Memory stays at a page of rows and a few segment buffers whatever
//! the history's size.
//!
//! Never in an archive: sessions, sender keys, prekeys, identity keys (PROTOCOL.md: session and
//! sender-key state is never copied to another device). The new device starts its own
//! sessions and receives and hands out sender keys like any new device.
//!
//! Archive format 1, one JSON object per line (`t` names the record):
//! `header` (`format`, `user`, `device_id` of the importing device, `from_device`,
//! `created_ms`), then `setting` (`key`, `value`), `contact` (`user`, `account_key`, optional
//! `pending_key`, `blocked`), `group` (`group_id`, `name`, `version`, `members`, `devices`,
//! `active`), `message` (the stored message: `message_id`, `conversation`, `outgoing`,
//! `sender_user`, `sender_device`, `text`, `sent_ms`, `server_ts`, `state`), `attachment` (a
//! message's attachment pointer: `message_id`, `idx`, `object_id`, `size`, `digest`, `key`,
//! `content_type`, `name`), and last `end` (`records`: how many records came before it).

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::{
    decrypt_attachment, encrypt_attachment, AttachmentKey, AttachmentSecrets,
};
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{contact, queue_content, vkey, Client, Me};
use crate::{
    api::{DeviceRef, GroupMember},
    attachments::{
        create_private, private_dir, remove_quietly, AttachmentPointer, MAX_ATTACHMENT_BYTES,
    },
    content::Content,
    error::ClientError,
    now_ms,
    store::{self, Store},
};

/// The archive format this client writes and reads.
const ARCHIVE_FORMAT: u32 = 1;
/// The content type of a history archive object.
pub const HISTORY_CONTENT_TYPE: &str = "application/x-cipherpost-history";
/// The longest record line accepted on import: a 96 KiB text with every character escaped
/// stays below it; a longer line is a broken archive, not a reason to grow the buffer.
const MAX_RECORD: usize = 1 << 20;
/// Rows read from the store at a time while an archive is written.
const PAGE: i64 = 500;
/// The settings that travel (both `on`/`off`).
const SETTINGS: &[&str] = &["read_receipts", "auto_download"];
/// The meta key of a received pointer waiting for its import.
const PENDING: &str = "history_pending";
/// Buffer size of the archive object's reads and writes: one segment.
const BUF: usize = 64 * 1024;

/// What [`Client::send_history`] sent.
#[derive(Debug, Clone, Serialize)]
pub struct HistorySent {
    /// The device the archive is for.
    pub device_id: u32,
    /// The archive's object id in the attachment store (not secret: the server chose it).
    pub archive_id: String,
    /// Messages in the archive.
    pub messages: u64,
    /// Plaintext bytes of the archive.
    pub bytes: u64,
}

/// What an import took in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryImported {
    /// Messages added.
    pub messages: u64,
    /// Messages that were here already (received by sync, or an earlier import).
    pub already_present: u64,
    /// Contacts added or updated.
    pub contacts: u64,
    /// Groups added.
    pub groups: u64,
}

/// One archive line. Carries secrets (attachment keys, texts): no `Debug`.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case", deny_unknown_fields)]
enum Record {
    Header {
        format: u32,
        user: String,
        device_id: u32,
        from_device: u32,
        created_ms: u64,
    },
    Setting {
        key: String,
        value: String,
    },
    Contact {
        user: String,
        account_key: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pending_key: Option<String>,
        blocked: bool,
    },
    Group {
        group_id: String,
        name: String,
        version: u64,
        members: Vec<GroupMember>,
        devices: Vec<DeviceRef>,
        active: bool,
    },
    Message {
        message_id: String,
        conversation: String,
        outgoing: bool,
        sender_user: String,
        sender_device: u32,
        text: String,
        sent_ms: u64,
        server_ts: Option<u64>,
        state: String,
    },
    Attachment {
        message_id: String,
        idx: u32,
        object_id: String,
        size: u64,
        digest: String,
        key: String,
        content_type: String,
        name: String,
    },
    End {
        records: u64,
    },
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64_n<const N: usize>(s: &str, what: &str) -> Result<[u8; N], ClientError> {
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ClientError::Content(format!("{what} is malformed")))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Header,
    Settings,
    Contacts,
    Groups,
    Messages,
    Attachments,
    End,
    Done,
}

/// Writes the archive of one store as a byte stream, a page of rows at a time.
struct ArchiveReader<'c> {
    conn: &'c Connection,
    user: String,
    device_id: u32,
    from_device: u32,
    section: Section,
    cursor: i64,
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    records: u64,
    messages: u64,
}

impl<'c> ArchiveReader<'c> {
    fn new(conn: &'c Connection, user: String, device_id: u32, from_device: u32) -> Self {
        Self {
            conn,
            user,
            device_id,
            from_device,
            section: Section::Header,
            cursor: 0,
            buf: Zeroizing::new(Vec::with_capacity(2 * BUF)),
            pos: 0,
            records: 0,
            messages: 0,
        }
    }

    fn push(&mut self, r: &Record) -> Result<(), ClientError> {
        serde_json::to_writer(&mut *self.buf, r)
            .map_err(|e| ClientError::Internal(format!("writing the archive: {e}")))?;
        self.buf.push(b'\n');
        if !matches!(r, Record::End { .. }) {
            self.records += 1;
        }
        Ok(())
    }

    /// The next page of rows of the current section after `cursor`, as `(rowid, record)`.
    fn page(&self) -> Result<Vec<(i64, Record)>, ClientError> {
        let conn = self.conn;
        let rows = match self.section {
            Section::Contacts => {
                let mut st = conn.prepare(
                    "SELECT rowid, user, pinned_key, pending_key, blocked FROM contacts
                     WHERE rowid > ?1 AND pinned_key IS NOT NULL AND user != ?2 ORDER BY rowid LIMIT ?3",
                )?;
                let rows = st
                    .query_map(params![self.cursor, self.user, PAGE], |r| {
                        let pending: Option<Vec<u8>> = r.get(3)?;
                        Ok((
                            r.get(0)?,
                            Record::Contact {
                                user: r.get(1)?,
                                account_key: b64(&r.get::<_, Vec<u8>>(2)?),
                                pending_key: pending.map(|p| b64(&p)),
                                blocked: r.get::<_, i64>(4)? != 0,
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            }
            Section::Groups => {
                let mut st = conn.prepare(
                    "SELECT rowid, group_id, name, version, members, devices, active FROM groups
                     WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                )?;
                let raw = st
                    .query_map(params![self.cursor, PAGE], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                let corrupt =
                    |e: serde_json::Error| ClientError::Internal(format!("stored group: {e}"));
                let mut rows = Vec::new();
                for (rowid, group_id, name, version, members, devices, active) in raw {
                    rows.push((
                        rowid,
                        Record::Group {
                            group_id,
                            name,
                            version: version as u64,
                            members: serde_json::from_str(&members).map_err(corrupt)?,
                            devices: serde_json::from_str(&devices).map_err(corrupt)?,
                            active: active != 0,
                        },
                    ));
                }
                rows
            }
            // Messages still waiting in the outbox are left out: they reach the new device
            // when they are sent (a new device of the account is addressed like any other).
            Section::Messages => {
                let mut st = conn.prepare(
                    "SELECT seq, message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state
                     FROM messages WHERE seq > ?1 AND state != 'pending' ORDER BY seq LIMIT ?2",
                )?;
                let rows = st
                    .query_map(params![self.cursor, PAGE], |r| {
                        Ok((
                            r.get(0)?,
                            Record::Message {
                                message_id: r.get(1)?,
                                conversation: r.get(2)?,
                                outgoing: r.get::<_, i64>(3)? != 0,
                                sender_user: r.get(4)?,
                                sender_device: r.get(5)?,
                                text: r.get(6)?,
                                sent_ms: r.get::<_, i64>(7)? as u64,
                                server_ts: r.get::<_, Option<i64>>(8)?.map(|t| t as u64),
                                state: r.get(9)?,
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            }
            Section::Attachments => {
                let mut st = conn.prepare(
                    "SELECT a.rowid, a.message_id, a.idx, a.object_id, a.size, a.digest, a.key, a.content_type, a.name
                     FROM attachments a WHERE a.rowid > ?1 AND a.object_id IS NOT NULL
                       AND length(a.key) = 32 AND length(a.digest) = 32
                       AND EXISTS (SELECT 1 FROM messages m WHERE m.message_id = a.message_id AND m.state != 'pending')
                     ORDER BY a.rowid LIMIT ?2",
                )?;
                let rows = st
                    .query_map(params![self.cursor, PAGE], |r| {
                        Ok((
                            r.get(0)?,
                            Record::Attachment {
                                message_id: r.get(1)?,
                                idx: r.get(2)?,
                                object_id: r.get(3)?,
                                size: r.get::<_, i64>(4)? as u64,
                                digest: b64(&r.get::<_, Vec<u8>>(5)?),
                                key: b64(&Zeroizing::new(r.get::<_, Vec<u8>>(6)?)),
                                content_type: r.get(7)?,
                                name: r.get(8)?,
                            },
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows
            }
            _ => Vec::new(),
        };
        Ok(rows)
    }

    /// Fills `buf` with the next records; leaves it empty at the end.
    fn refill(&mut self) -> Result<(), ClientError> {
        self.buf.clear();
        self.pos = 0;
        while self.buf.is_empty() && self.section != Section::Done {
            match self.section {
                Section::Header => {
                    let header = Record::Header {
                        format: ARCHIVE_FORMAT,
                        user: self.user.clone(),
                        device_id: self.device_id,
                        from_device: self.from_device,
                        created_ms: now_ms(),
                    };
                    self.push(&header)?;
                    self.section = Section::Settings;
                }
                Section::Settings => {
                    for key in SETTINGS {
                        if let Some(v) = store::meta(self.conn, key)? {
                            let value = String::from_utf8_lossy(&v).into_owned();
                            self.push(&Record::Setting {
                                key: (*key).to_string(),
                                value,
                            })?;
                        }
                    }
                    self.section = Section::Contacts;
                }
                Section::End => {
                    let end = Record::End {
                        records: self.records,
                    };
                    self.push(&end)?;
                    self.section = Section::Done;
                }
                Section::Done => {}
                section => {
                    let rows = self.page()?;
                    match rows.last() {
                        None => {
                            self.cursor = 0;
                            self.section = match section {
                                Section::Contacts => Section::Groups,
                                Section::Groups => Section::Messages,
                                Section::Messages => Section::Attachments,
                                _ => Section::End,
                            };
                        }
                        Some((last, _)) => {
                            self.cursor = *last;
                            for (_, r) in &rows {
                                if matches!(r, Record::Message { .. }) {
                                    self.messages += 1;
                                }
                                self.push(r)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Read for ArchiveReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.buf.len() {
            self.refill().map_err(|e| io::Error::other(e.to_string()))?;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes the archive of the store in `profile` for `device_id` into the new file `object`;
/// returns the archive's secrets and how many messages it holds.
fn build_archive(
    profile: &Path,
    object: &Path,
    user: String,
    device_id: u32,
    from_device: u32,
) -> Result<(AttachmentSecrets, u64), ClientError> {
    let mut store = Store::open(profile)?;
    // One read transaction: the archive is a consistent snapshot (WAL lets others write on).
    let tx = store.conn.transaction()?;
    let mut reader = ArchiveReader::new(&tx, user, device_id, from_device);
    let output = create_private(object)?;
    let mut writer = BufWriter::with_capacity(BUF, output);
    let secrets = encrypt_attachment(&mut OsRng, &mut reader, &mut writer)
        .map_err(|e| ClientError::Internal(format!("writing the history archive: {e}")))?;
    let file = writer
        .into_inner()
        .map_err(|e| ClientError::Io(e.into_error()))?;
    file.sync_all()?;
    let messages = reader.messages;
    drop(reader);
    tx.commit()?;
    Ok((secrets, messages))
}

/// The rank of a message state: an import never moves a message back (a message read here
/// stays read, a delivered one does not become sent again).
const STATE_RANK: &str = "CASE ?1 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 ELSE 1 END";

/// Applies archive records, one line at a time, inside the caller's transaction.
struct Importer<'t> {
    tx: &'t Connection,
    me_user: String,
    me_device: u32,
    line: Zeroizing<Vec<u8>>,
    records: u64,
    header: bool,
    ended: bool,
    stats: HistoryImported,
    /// The first error: the write that met it fails, and the caller rolls back.
    error: Option<ClientError>,
}

impl Importer<'_> {
    fn refuse(why: impl std::fmt::Display) -> ClientError {
        ClientError::Content(format!("the history archive is not valid: {why}"))
    }

    fn apply_line(&mut self) -> Result<(), ClientError> {
        let record: Record = serde_json::from_slice(&self.line)
            .map_err(|e| Self::refuse(format!("record {}: {e}", self.records + 1)))?;
        if self.ended {
            return Err(Self::refuse("records after its end"));
        }
        if !self.header && !matches!(record, Record::Header { .. }) {
            return Err(Self::refuse("it does not start with its header"));
        }
        let tx = self.tx;
        match record {
            Record::Header {
                format,
                user,
                device_id,
                ..
            } => {
                if self.header {
                    return Err(Self::refuse("a second header"));
                }
                if format != ARCHIVE_FORMAT {
                    return Err(ClientError::Content(format!(
                        "the history archive has format {format}, which this client does not read"
                    )));
                }
                if user != self.me_user || device_id != self.me_device {
                    return Err(Self::refuse(format!(
                        "it was made for {user}#{device_id}, not this device"
                    )));
                }
                self.header = true;
            }
            Record::Setting { key, value } => {
                if SETTINGS.contains(&key.as_str()) && (value == "on" || value == "off") {
                    store::set_meta(tx, &key, value.as_bytes())?;
                }
            }
            Record::Contact {
                user,
                account_key,
                pending_key,
                blocked,
            } => {
                cipherpost_protocol::UserId::new(&user)
                    .map_err(|_| Self::refuse(format!("contact {user:?}")))?;
                if user == self.me_user {
                    return Ok(());
                }
                let key = unb64_n::<32>(&account_key, "a contact's key")?;
                vkey(&key, "contact key")?;
                let pending = match &pending_key {
                    Some(p) => {
                        let p = unb64_n::<32>(p, "a contact's changed key")?;
                        vkey(&p, "contact key")?;
                        Some(p.to_vec())
                    }
                    None => None,
                };
                let before = contact(tx, &user)?;
                match before.as_ref().and_then(|c| c.pinned.clone()) {
                    // The other device's pinned key wins, as in the device link itself.
                    Some(b) if b != key => {
                        tx.execute(
                            "UPDATE contacts SET pinned_key = ?2, fetched = 0 WHERE user = ?1",
                            params![user, &key[..]],
                        )?;
                        tx.execute("DELETE FROM devices WHERE user = ?1", [&user])?;
                        tx.execute("DELETE FROM sessions WHERE user = ?1", [&user])?;
                    }
                    Some(_) => {}
                    None => {
                        tx.execute(
                            "INSERT INTO contacts (user, pinned_key, fetched) VALUES (?1, ?2, 0)
                             ON CONFLICT(user) DO UPDATE SET pinned_key = excluded.pinned_key, fetched = 0",
                            params![user, &key[..]],
                        )?;
                    }
                }
                // A key change the other device was holding for the user's decision stays
                // held here: nothing is sent to that contact until it is accepted.
                if let (true, Some(p)) = (blocked, pending) {
                    tx.execute(
                        "UPDATE contacts SET pending_key = ?2, blocked = 1 WHERE user = ?1",
                        params![user, p],
                    )?;
                }
                self.stats.contacts += 1;
            }
            Record::Group {
                group_id,
                name,
                version,
                members,
                devices,
                active,
            } => {
                let ok = group_id.len() == 32
                    && group_id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(Self::refuse(format!("group id {group_id:?}")));
                }
                let n = tx.execute(
                    "INSERT INTO groups (group_id, name, version, members, devices, rotate, active)
                     VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)
                     ON CONFLICT(group_id) DO UPDATE SET name = CASE WHEN groups.name = '' THEN excluded.name ELSE groups.name END
                     WHERE groups.name = ''",
                    params![
                        group_id,
                        name,
                        version.min(i64::MAX as u64) as i64,
                        to_json(&members)?,
                        to_json(&devices)?,
                        active as i64
                    ],
                )?;
                self.stats.groups += n as u64;
            }
            Record::Message {
                message_id,
                conversation,
                outgoing,
                sender_user,
                sender_device,
                text,
                sent_ms,
                server_ts,
                state,
            } => {
                let id_ok = message_id.len() == 32
                    && message_id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                let states: &[&str] = if outgoing {
                    &["sent", "delivered", "read", "failed"]
                } else {
                    &["received", "read"]
                };
                if !id_ok || conversation.is_empty() || !states.contains(&state.as_str()) {
                    return Err(Self::refuse(format!(
                        "message record {} is malformed",
                        self.records + 1
                    )));
                }
                let exists: Option<String> = tx
                    .query_row(
                        "SELECT state FROM messages WHERE sender_user = ?1 AND message_id = ?2",
                        params![sender_user, message_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match exists {
                    Some(_) => {
                        // Received by sync, or imported before: only a later state is taken.
                        tx.execute(
                            &format!(
                                "UPDATE messages SET state = ?1 WHERE sender_user = ?2 AND message_id = ?3
                                 AND {STATE_RANK} > (CASE state WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 ELSE 1 END)"
                            ),
                            params![state, sender_user, message_id],
                        )?;
                        self.stats.already_present += 1;
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                            params![
                                message_id,
                                conversation,
                                outgoing as i64,
                                sender_user,
                                sender_device,
                                text,
                                sent_ms.min(i64::MAX as u64) as i64,
                                server_ts.map(|t| t.min(i64::MAX as u64) as i64),
                                state
                            ],
                        )?;
                        if !conversation.starts_with("group:") {
                            tx.execute(
                                "INSERT OR IGNORE INTO contacts (user) VALUES (?1)",
                                [&conversation],
                            )?;
                        }
                        self.stats.messages += 1;
                    }
                }
            }
            Record::Attachment {
                message_id,
                idx,
                object_id,
                size,
                digest,
                key,
                content_type,
                name,
            } => {
                if idx as usize >= crate::attachments::MAX_FILES_PER_MESSAGE {
                    return Err(Self::refuse("an attachment index is out of range"));
                }
                let pointer = AttachmentPointer {
                    id: object_id,
                    size,
                    digest,
                    key,
                    content_type,
                    name,
                };
                validate_pointer(&pointer)?;
                // Only for a message that is here; never over an attachment already known
                // (this device's own download, say). Downloaded here like a received one.
                let known: Option<i64> = tx
                    .query_row(
                        "SELECT 1 FROM attachments WHERE message_id = ?1 AND idx = ?2",
                        params![message_id, idx],
                        |r| r.get(0),
                    )
                    .optional()?;
                if known.is_none() {
                    crate::attachments::store_incoming_one(tx, &message_id, idx, &pointer)?;
                }
            }
            Record::End { records } => {
                if records != self.records {
                    return Err(Self::refuse(format!(
                        "it announces {records} records but holds {}",
                        self.records
                    )));
                }
                self.ended = true;
                return Ok(());
            }
        }
        self.records += 1;
        Ok(())
    }
}

/// JSON text of the group columns.
fn to_json<T: Serialize>(v: &T) -> Result<String, ClientError> {
    serde_json::to_string(v).map_err(|e| ClientError::Internal(e.to_string()))
}

impl Write for Importer<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("the history archive was refused"));
        }
        for part in data.split_inclusive(|b| *b == b'\n') {
            let (body, complete) = match part.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (part, false),
            };
            if self.line.len() + body.len() > MAX_RECORD {
                self.error = Some(Self::refuse("a record is too long"));
                return Err(io::Error::other("the history archive was refused"));
            }
            self.line.extend_from_slice(body);
            if complete {
                let applied = self.apply_line();
                self.line.clear();
                if let Err(e) = applied {
                    self.error = Some(e);
                    return Err(io::Error::other("the history archive was refused"));
                }
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn validate_pointer(p: &AttachmentPointer) -> Result<(), ClientError> {
    unb64_n::<16>(&p.id, "the archive's object id")?;
    unb64_n::<32>(&p.digest, "the archive's digest")?;
    unb64_n::<32>(&p.key, "the archive's key")?;
    if p.size > MAX_ATTACHMENT_BYTES {
        return Err(ClientError::Content(format!(
            "an attachment of {} bytes is more than the {MAX_ATTACHMENT_BYTES} allowed",
            p.size
        )));
    }
    Ok(())
}

/// Decrypts the downloaded archive `object` into the store of `profile`, in one transaction
/// that also forgets the pending pointer; nothing is kept unless every record applied and the
/// whole object verified.
fn import_file(
    profile: &Path,
    object: &Path,
    pointer: &AttachmentPointer,
    me_user: String,
    me_device: u32,
) -> Result<HistoryImported, ClientError> {
    let secrets = AttachmentSecrets {
        key: AttachmentKey::from_bytes(&Zeroizing::new(unb64_n::<32>(&pointer.key, "key")?)),
        size: pointer.size,
        digest: unb64_n::<32>(&pointer.digest, "digest")?,
    };
    let store = Store::open(profile)?;
    let tx = store.write_tx()?;
    let input = File::open(object)?;
    let len = input.metadata()?.len();
    let mut importer = Importer {
        tx: &tx,
        me_user,
        me_device,
        line: Zeroizing::new(Vec::new()),
        records: 0,
        header: false,
        ended: false,
        stats: HistoryImported::default(),
        error: None,
    };
    let decrypted = decrypt_attachment(
        &secrets,
        Some(len),
        BufReader::with_capacity(BUF, input),
        &mut importer,
    );
    if let Some(e) = importer.error.take() {
        return Err(e); // the transaction rolls back when dropped
    }
    decrypted
        .map_err(|e| ClientError::Content(format!("the history archive does not verify ({e})")))?;
    if !importer.ended || !importer.line.is_empty() {
        return Err(Importer::refuse("it ends early"));
    }
    let stats = importer.stats.clone();
    drop(importer);
    tx.execute("DELETE FROM meta WHERE key = ?1", [PENDING])?;
    tx.commit()?;
    Ok(stats)
}

/// Takes a `history_pointer` from one of this account's devices (inside the caller's
/// transaction): kept for [`Client::import_pending_history`] when it names this device.
pub(super) fn receive_pointer(
    tx: &Connection,
    me: &Me,
    device_id: u32,
    archive: &AttachmentPointer,
    messages: u64,
) -> Result<(), ClientError> {
    if device_id != me.device.get() {
        tracing::debug!(device_id, "a history archive for another device ignored");
        return Ok(());
    }
    if archive.content_type != HISTORY_CONTENT_TYPE {
        return Err(ClientError::Content(
            "a history pointer that does not point at a history archive".into(),
        ));
    }
    validate_pointer(archive)?;
    let json = Zeroizing::new(
        serde_json::to_vec(archive).map_err(|e| ClientError::Internal(e.to_string()))?,
    );
    store::set_meta(tx, PENDING, &json)?;
    store::notice(
        tx,
        &format!("your other device sent the history ({messages} messages); importing it"),
    )?;
    Ok(())
}

impl Client {
    /// On the device that approved a link: writes the account's history (contacts with their
    /// pinned keys, groups, conversations and messages with their states, settings; never
    /// session or sender-key state) as an encrypted archive, uploads it and sends its pointer
    /// and key to `device_id`, one of this account's devices, over the pairwise session.
    pub async fn send_history(&mut self, device_id: u32) -> Result<HistorySent, ClientError> {
        let me = self.linked_me()?;
        let user = me.user.to_string();
        let from_device = me.device.get();
        if device_id == from_device {
            return Err(ClientError::Usage(
                "the history goes to another device of this account".into(),
            ));
        }
        let known: Option<i64> = self
            .store
            .conn
            .query_row(
                "SELECT 1 FROM devices WHERE user = ?1 AND device_id = ?2",
                params![user, device_id],
                |r| r.get(0),
            )
            .optional()?;
        if known.is_none() {
            return Err(ClientError::Usage(format!(
                "{device_id} is not a device of this account (see `cipherpost devices`)"
            )));
        }
        let profile = self.attachments.dir.clone();
        let out_dir = profile.join("outbox-files");
        private_dir(&out_dir)?;
        let mut tag = [0u8; 8];
        OsRng.fill_bytes(&mut tag);
        let object: PathBuf = out_dir.join(format!("history-{device_id}-{}.obj", hex::encode(tag)));
        let started = std::time::Instant::now();
        let built = {
            let object = object.clone();
            let user = user.clone();
            tokio::task::spawn_blocking(move || {
                build_archive(&profile, &object, user, device_id, from_device)
            })
            .await
            .map_err(|e| ClientError::Internal(format!("archive task: {e}")))?
        };
        let (secrets, messages) = match built {
            Ok(b) => b,
            Err(e) => {
                remove_quietly(&object);
                return Err(e);
            }
        };
        if secrets.size > MAX_ATTACHMENT_BYTES {
            remove_quietly(&object);
            return Err(ClientError::Usage(format!(
                "the history archive is {} bytes, more than the {MAX_ATTACHMENT_BYTES} an upload may hold",
                secrets.size
            )));
        }
        let uploaded = self
            .upload_object(&object, secrets.size, "history archive")
            .await;
        remove_quietly(&object);
        let archive_id = uploaded?;
        let archive = AttachmentPointer {
            id: archive_id.clone(),
            size: secrets.size,
            digest: b64(&secrets.digest),
            key: b64(&secrets.key.to_bytes()[..]),
            content_type: HISTORY_CONTENT_TYPE.to_string(),
            name: "history".to_string(),
        };
        {
            let me = self.linked_me()?;
            let tx = self.store.write_tx()?;
            queue_content(
                &tx,
                me,
                me.user.as_str(),
                &Content::HistoryPointer {
                    device_id,
                    archive,
                    messages,
                },
            )?;
            tx.commit()?;
        }
        self.flush_outbox().await?;
        tracing::info!(
            device_id,
            messages,
            bytes = secrets.size,
            ms = started.elapsed().as_millis() as u64,
            "history sent"
        );
        Ok(HistorySent {
            device_id,
            archive_id,
            messages,
            bytes: secrets.size,
        })
    }

    /// Whether a received history archive waits for its import (it is retried on every sync
    /// while the download fails for reasons that may pass).
    pub fn history_pending(&self) -> Result<bool, ClientError> {
        Ok(self.store.meta(PENDING)?.is_some())
    }

    /// Downloads, verifies and imports a received history archive, if one waits. An archive
    /// that does not verify (or is not for this device) is dropped and nothing of it is
    /// imported; a notice says so. Returns what was imported.
    pub async fn import_pending_history(&mut self) -> Result<Option<HistoryImported>, ClientError> {
        if !self.is_linked()? {
            return Ok(None);
        }
        let Some(raw) = self.store.meta(PENDING)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        let pointer: AttachmentPointer = match serde_json::from_slice(&raw) {
            Ok(p) => p,
            Err(e) => {
                self.forget_pending_history(&format!("its pointer is unreadable ({e})"))?;
                return Ok(None);
            }
        };
        let me = self.linked_me()?;
        let (me_user, me_device) = (me.user.to_string(), me.device.get());
        let dir = self.attachments.dir.join("attachments");
        private_dir(&dir)?;
        let mut tag = [0u8; 8];
        OsRng.fill_bytes(&mut tag);
        let object = dir.join(format!(".history-{}.download", hex::encode(tag)));
        let started = std::time::Instant::now();
        let downloaded = self
            .download_object(&pointer.id, pointer.size, "history archive", &object)
            .await;
        let result = match downloaded {
            Ok(()) => {
                let profile = self.attachments.dir.clone();
                let object = object.clone();
                tokio::task::spawn_blocking(move || {
                    import_file(&profile, &object, &pointer, me_user, me_device)
                })
                .await
                .map_err(|e| ClientError::Internal(format!("import task: {e}")))
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        remove_quietly(&object);
        match result {
            Ok(stats) => {
                tracing::info!(
                    messages = stats.messages,
                    ms = started.elapsed().as_millis() as u64,
                    "history imported"
                );
                self.store.notice(&format!(
                    "history imported from your other device: {} messages ({} were here already), {} contacts, {} groups",
                    stats.messages, stats.already_present, stats.contacts, stats.groups
                ))?;
                Ok(Some(stats))
            }
            // May pass: the pointer stays for the next sync.
            Err(
                e @ (ClientError::Unreachable { .. }
                | ClientError::Store(_)
                | ClientError::Io(_)
                | ClientError::Server {
                    status: 401 | 408 | 429,
                    ..
                }),
            ) => {
                tracing::warn!(error = %e, "history import failed; retrying on the next sync");
                Ok(None)
            }
            Err(e) => {
                self.forget_pending_history(&e.to_string())?;
                Ok(None)
            }
        }
    }

    fn forget_pending_history(&self, why: &str) -> Result<(), ClientError> {
        tracing::warn!(reason = why, "history archive refused");
        let tx = self.store.write_tx()?;
        tx.execute("DELETE FROM meta WHERE key = ?1", [PENDING])?;
        store::notice(
            &tx,
            &format!(
                "the history from your other device was refused and nothing of it was imported: {why}"
            ),
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// An archive of a store holds its messages, contacts, groups and settings, and never a
    /// session, sender key, prekey or identity; its import into another store takes them in
    /// once, however often it is repeated.
    #[test]
    fn archive_round_trip_is_idempotent_and_holds_no_session_state() {
        let src = tempfile::TempDir::new().unwrap();
        let store = Store::open(src.path()).unwrap();
        let c = &store.conn;
        c.execute_batch(
            "INSERT INTO meta (key, value) VALUES ('read_receipts', CAST('off' AS BLOB)), ('identity', x'0102');
             INSERT INTO sessions (user, device_id, state) VALUES ('bob', 7, x'5e55');
             INSERT INTO own_sender_keys (group_id, state) VALUES ('00112233445566778899aabbccddeeff', x'5e4d');
             INSERT INTO groups (group_id, name, version, members, devices) VALUES ('00112233445566778899aabbccddeeff', 'team', 3, '[]', '[]');",
        )
        .unwrap();
        let bob_key = cipherpost_protocol::AccountKey::generate(&mut OsRng)
            .public_key()
            .to_bytes();
        c.execute(
            "INSERT INTO contacts (user, pinned_key, fetched) VALUES ('bob', ?1, 1)",
            [&bob_key[..]],
        )
        .unwrap();
        for i in 0..1200u32 {
            c.execute(
                "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
                 VALUES (?1, 'bob', ?2, ?3, 7, ?4, ?5, ?6)",
                params![
                    format!("{i:032x}"),
                    (i % 2) as i64,
                    if i % 2 == 1 { "alice" } else { "bob" },
                    format!("message {i} \n with \"quotes\""),
                    i64::from(i),
                    if i % 2 == 1 { "delivered" } else { "read" }
                ],
            )
            .unwrap();
        }
        let object = src.path().join("archive.obj");
        let (secrets, messages) = build_archive(src.path(), &object, "alice".into(), 9, 1).unwrap();
        assert_eq!(messages, 1200);
        // The plaintext holds no session or sender-key state.
        let mut plain = Vec::new();
        decrypt_attachment(
            &secrets,
            None,
            BufReader::new(File::open(&object).unwrap()),
            &mut plain,
        )
        .unwrap();
        let text = String::from_utf8(plain).unwrap();
        assert!(!text.contains("5e55") && !text.contains("XlU") && !text.contains("identity"));
        assert!(text.lines().all(|l| !l.contains("\"t\":\"session")));
        assert_eq!(text.lines().count(), 1 + 1 + 1 + 1 + 1200 + 1);

        let pointer = AttachmentPointer {
            id: b64(&[1u8; 16]),
            size: secrets.size,
            digest: b64(&secrets.digest),
            key: b64(&secrets.key.to_bytes()[..]),
            content_type: HISTORY_CONTENT_TYPE.into(),
            name: "history".into(),
        };
        let dst = tempfile::TempDir::new().unwrap();
        let first = import_file(dst.path(), &object, &pointer, "alice".into(), 9).unwrap();
        assert_eq!((first.messages, first.groups, first.contacts), (1200, 1, 1));
        let again = import_file(dst.path(), &object, &pointer, "alice".into(), 9).unwrap();
        assert_eq!((again.messages, again.already_present), (0, 1200));
        let d = Store::open(dst.path()).unwrap();
        let count = |sql: &str| -> i64 { d.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM messages"), 1200);
        assert_eq!(count("SELECT COUNT(*) FROM sessions"), 0);
        assert_eq!(count("SELECT COUNT(*) FROM own_sender_keys"), 0);
        assert_eq!(d.meta_str("read_receipts").unwrap().as_deref(), Some("off"));
        let h = d.history("bob", 5).unwrap();
        assert_eq!(h.last().unwrap().text, "message 1199 \n with \"quotes\"");
        // For another device: refused, nothing taken.
        let other = tempfile::TempDir::new().unwrap();
        let e = import_file(other.path(), &object, &pointer, "alice".into(), 10).unwrap_err();
        assert!(e.to_string().contains("not this device"), "{e}");
        let o = Store::open(other.path()).unwrap();
        let n: i64 = o
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    /// A flipped byte in the last segment fails only after earlier segments' records were
    /// applied: the transaction rolls back and nothing stays.
    #[test]
    fn a_tampered_archive_imports_nothing() {
        let src = tempfile::TempDir::new().unwrap();
        let store = Store::open(src.path()).unwrap();
        for i in 0..600u32 {
            store
                .conn
                .execute(
                    "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
                     VALUES (?1, 'bob', 0, 'bob', 7, ?2, ?3, 'received')",
                    params![format!("{i:032x}"), "x".repeat(300), i64::from(i)],
                )
                .unwrap();
        }
        let object = src.path().join("archive.obj");
        let (secrets, _) = build_archive(src.path(), &object, "alice".into(), 9, 1).unwrap();
        assert!(secrets.size > 2 * 65536);
        let mut bytes = std::fs::read(&object).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        std::fs::write(&object, &bytes).unwrap();
        let pointer = AttachmentPointer {
            id: b64(&[1u8; 16]),
            size: secrets.size,
            digest: b64(&secrets.digest),
            key: b64(&secrets.key.to_bytes()[..]),
            content_type: HISTORY_CONTENT_TYPE.into(),
            name: "history".into(),
        };
        let dst = tempfile::TempDir::new().unwrap();
        let e = import_file(dst.path(), &object, &pointer, "alice".into(), 9).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        let d = Store::open(dst.path()).unwrap();
        let n: i64 = d
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
