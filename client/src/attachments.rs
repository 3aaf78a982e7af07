//! Encrypted attachments (PROTOCOL.md, "Attachments"; DESIGN.md, "Attachments").
//!
//! Sending: each file is encrypted while it streams from disk into an object file under
//! `<profile>/outbox-files/` ([`Client::queue_files`]); the message waits in the outbox with
//! the caption and the attachment rows. When the outbox is flushed, every object not uploaded
//! yet gets a fresh presigned URL (`POST /v1/attachments`) and is streamed to S3 with a `PUT`;
//! only when all are uploaded is the body built (the pointers carry the object ids the server
//! chose) and the message sent. A failed upload leaves the message in the outbox for the next
//! flush, which asks for a new URL. The local objects are deleted once the message is sent.
//!
//! Receiving: the pointers are stored with the message. Unless automatic download is off, the
//! object is streamed to a temporary file under `<profile>/attachments/`, its length checked,
//! then decrypted (which checks every segment's tag and the digest) into a second temporary
//! file that is renamed to `<message id>-<file name>` only when everything verified. On any
//! failure both temporary files are removed, the attachment is marked `failed` with the reason,
//! and `cipherpost fetch MESSAGE_ID` retries it. Memory stays bounded by a few 64 KiB buffers
//! whatever the file's size.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufReader, BufWriter, IsTerminal},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use cipherpost_protocol::{
    attachment_object_len, decrypt_attachment, encrypt_attachment, encrypt_body, AttachmentKey,
    AttachmentSecrets, MessageId, UserId,
};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand_core::{OsRng, RngCore};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::{
    api::{AttachmentDownload, AttachmentUpload, CreateAttachmentRequest},
    client::{contact, dev, Client, Event},
    content::Content,
    error::ClientError,
    now_ms,
};

/// The largest attachment, in plaintext bytes (DESIGN.md, "Limits": 100 MiB).
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;
/// At most this many files in one message (their pointers must fit the 96 KiB body).
pub const MAX_FILES_PER_MESSAGE: usize = 32;
/// Buffer size of file reads and writes: one segment.
const BUF: usize = 64 * 1024;

/// Store migration 2: the attachments of messages, sent and received.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE attachments (
    message_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    outgoing INTEGER NOT NULL,
    object_id TEXT,              -- the server's object id; NULL until uploaded (outgoing)
    size INTEGER NOT NULL,       -- plaintext bytes
    digest BLOB NOT NULL,        -- H(object), 32 bytes
    key BLOB NOT NULL,           -- K_att, 32 bytes
    content_type TEXT NOT NULL,
    name TEXT NOT NULL,          -- the file name as the sender gave it
    object_path TEXT,            -- outgoing: the encrypted object waiting for its upload
    path TEXT,                   -- the plaintext file: the source (outgoing), the download (incoming)
    state TEXT NOT NULL,         -- outgoing: encrypted, uploaded, sent, failed; incoming: pending, downloaded, failed
    error TEXT,                  -- why the last download failed
    PRIMARY KEY (message_id, idx)
);
"#;

/// An attachment pointer inside a text message (content format 1, field `attachments`):
/// everything a recipient needs to fetch, verify and decrypt the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentPointer {
    /// The object id the server gave (16 bytes, unpadded base64url).
    pub id: String,
    /// Plaintext bytes.
    pub size: u64,
    /// `H(object)` (32 bytes, unpadded base64url).
    pub digest: String,
    /// `K_att` (32 bytes, unpadded base64url). Secret.
    pub key: String,
    /// MIME type, guessed by the sender from the file's extension.
    pub content_type: String,
    /// The file name (no directories); sanitized again by the receiver before use.
    pub name: String,
}

/// An attachment as shown to the user.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentInfo {
    /// Position in the message, from 0.
    pub index: u32,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Plaintext bytes.
    pub size: u64,
    /// Outgoing: `encrypted`, `uploaded`, `sent` or `failed`; incoming: `pending` (not
    /// downloaded), `downloaded` or `failed`.
    pub state: String,
    /// The file on this device: the source file (outgoing) or the decrypted download.
    pub path: Option<String>,
    /// Why the last download failed.
    pub error: Option<String>,
}

/// Per-client attachment settings that are not stored in the profile.
#[derive(Debug)]
pub(crate) struct AttachmentSettings {
    /// The profile directory.
    pub(crate) dir: PathBuf,
    /// Show progress bars (on a terminal only).
    pub(crate) progress: bool,
    /// Do not download automatically in this process, whatever the setting.
    pub(crate) no_auto_download: bool,
    /// For S3 transfers: no overall timeout (a 100 MiB upload takes long on a slow link), but
    /// connect and read timeouts.
    transfer: reqwest::Client,
}

impl AttachmentSettings {
    pub(crate) fn new(dir: &Path) -> Result<Self, ClientError> {
        let transfer = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ClientError::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            progress: false,
            no_auto_download: false,
            transfer,
        })
    }
}

/// The MIME type for a file name, from its extension (`application/octet-stream` otherwise).
pub fn guess_content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "svg" => "image/svg+xml",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "json" => "application/json",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

/// A file name that is safe to create in the attachments folder: the last path component only,
/// no control characters, no leading dots (so neither `..` nor a hidden file), at most 120
/// bytes; `attachment` when nothing is left.
pub fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in last.chars() {
        if c.is_control() || matches!(c, ':' | '\u{202e}' | '\u{202d}') {
            continue;
        }
        if out.len() + c.len_utf8() > 120 {
            break;
        }
        out.push(c);
    }
    let out = out.trim_start_matches('.').trim().to_string();
    if out.is_empty() {
        "attachment".to_string()
    } else {
        out
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64<const N: usize>(s: &str, what: &str) -> Result<[u8; N], ClientError> {
    URL_SAFE_NO_PAD
        .decode(s.as_bytes())
        .ok()
        .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ClientError::Content(format!("the attachment's {what} is malformed")))
}

/// Creates `dir` (0700) if needed.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ClientError> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// A new file, 0600, failing if it exists.
pub(crate) fn create_private(path: &Path) -> Result<File, ClientError> {
    Ok(OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?)
}

/// Removes a file, ignoring "not found".
pub(crate) fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary file");
        }
    }
}

/// One stored attachment row.
struct Row {
    message_id: String,
    idx: u32,
    object_id: Option<String>,
    size: u64,
    digest: Vec<u8>,
    key: Vec<u8>,
    content_type: String,
    name: String,
    object_path: Option<String>,
    path: Option<String>,
    state: String,
    error: Option<String>,
}

const ROW_COLUMNS: &str = "message_id, idx, object_id, size, digest, key, content_type, name, object_path, path, state, error";

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        message_id: r.get(0)?,
        idx: r.get(1)?,
        object_id: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        digest: r.get(4)?,
        key: r.get(5)?,
        content_type: r.get(6)?,
        name: r.get(7)?,
        object_path: r.get(8)?,
        path: r.get(9)?,
        state: r.get(10)?,
        error: r.get(11)?,
    })
}

fn rows(
    conn: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Row>, ClientError> {
    let mut st = conn.prepare(&format!(
        "SELECT {ROW_COLUMNS} FROM attachments WHERE {filter} ORDER BY message_id, idx"
    ))?;
    let out = st.query_map(p, read_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok(out)
}

impl Row {
    fn info(&self) -> AttachmentInfo {
        AttachmentInfo {
            index: self.idx,
            name: self.name.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            state: self.state.clone(),
            path: self.path.clone(),
            error: self.error.clone(),
        }
    }

    fn secrets(&self) -> Result<AttachmentSecrets, ClientError> {
        let key: [u8; 32] = self
            .key
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Internal("stored attachment key".into()))?;
        let digest: [u8; 32] = self
            .digest
            .as_slice()
            .try_into()
            .map_err(|_| ClientError::Internal("stored attachment digest".into()))?;
        Ok(AttachmentSecrets {
            key: AttachmentKey::from_bytes(&key),
            size: self.size,
            digest,
        })
    }
}

/// The attachments of one message, in order (for display).
pub fn for_message(
    conn: &Connection,
    message_id: &str,
) -> Result<Vec<AttachmentInfo>, ClientError> {
    Ok(rows(conn, "message_id = ?1", [message_id])?
        .iter()
        .map(Row::info)
        .collect())
}

/// Stores the pointers of a received message (state `pending`). A malformed pointer is stored
/// as `failed` with the reason, so the message still shows what it carried.
pub(crate) fn store_incoming(
    conn: &Connection,
    message_id: &str,
    pointers: &[AttachmentPointer],
) -> Result<(), ClientError> {
    for (i, p) in pointers.iter().enumerate().take(MAX_FILES_PER_MESSAGE) {
        store_incoming_one(conn, message_id, i as u32, p)?;
    }
    Ok(())
}

/// Stores one received pointer as attachment `idx` of a message (see [`store_incoming`]).
pub(crate) fn store_incoming_one(
    conn: &Connection,
    message_id: &str,
    idx: u32,
    p: &AttachmentPointer,
) -> Result<(), ClientError> {
    let key = unb64::<32>(&p.key, "key");
    let digest = unb64::<32>(&p.digest, "digest");
    let id_ok = unb64::<16>(&p.id, "id").is_ok();
    let (state, error) = match (&key, &digest) {
        _ if !id_ok => (
            "failed",
            Some("the attachment's id is malformed".to_string()),
        ),
        (Err(e), _) | (_, Err(e)) => ("failed", Some(e.to_string())),
        _ if p.size > MAX_ATTACHMENT_BYTES => (
            "failed",
            Some(format!(
                "the attachment claims {} bytes, more than the {MAX_ATTACHMENT_BYTES} allowed",
                p.size
            )),
        ),
        _ => ("pending", None),
    };
    let content_type: String = p
        .content_type
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect();
    conn.execute(
        "INSERT OR IGNORE INTO attachments (message_id, idx, outgoing, object_id, size, digest, key, content_type, name, state, error)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            message_id,
            i64::from(idx),
            p.id,
            p.size.min(i64::MAX as u64) as i64,
            digest.map(|d| d.to_vec()).unwrap_or_default(),
            key.map(|k| k.to_vec()).unwrap_or_default(),
            content_type,
            safe_file_name(&p.name),
            state,
            error
        ],
    )?;
    Ok(())
}

/// A progress bar for `len` bytes: drawn on a terminal's stderr only when enabled.
fn progress_bar(enabled: bool, len: u64, what: String) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what);
    bar
}

fn transfer_error(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Unreachable {
        endpoint: "the attachment store".into(),
        reason: format!("{what}: {e}"),
    }
}

impl Client {
    /// Shows upload and download progress bars (on a terminal only; never with `--json`).
    pub fn set_progress(&mut self, on: bool) {
        self.attachments.progress = on;
    }

    /// Leaves received attachments undownloaded in this process, whatever the setting.
    pub fn set_no_auto_download(&mut self, off: bool) {
        self.attachments.no_auto_download = off;
    }

    /// Whether received attachments are downloaded automatically (default on).
    pub fn auto_download(&self) -> Result<bool, ClientError> {
        Ok(self.store.meta_str("auto_download")?.as_deref() != Some("off"))
    }

    /// Turns automatic download of received attachments on or off.
    pub fn set_auto_download(&self, on: bool) -> Result<(), ClientError> {
        self.store
            .set_meta("auto_download", if on { b"on" } else { b"off" })
    }

    /// The attachments of a stored message.
    pub fn attachments_of(&self, message_id: &str) -> Result<Vec<AttachmentInfo>, ClientError> {
        for_message(&self.store.conn, message_id)
    }

    /// Encrypts `files` (streaming, one segment at a time) into objects under
    /// `<profile>/outbox-files/` and queues a message to `to` with the caption and their
    /// pointers; returns the message id (hex). [`Client::flush_outbox`] uploads the objects,
    /// then sends the message.
    pub fn queue_files(
        &mut self,
        to: &str,
        caption: &str,
        files: &[PathBuf],
    ) -> Result<String, ClientError> {
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
        if files.is_empty() {
            return Err(ClientError::Usage("no file to send".into()));
        }
        if files.len() > MAX_FILES_PER_MESSAGE {
            return Err(ClientError::Usage(format!(
                "at most {MAX_FILES_PER_MESSAGE} files per message"
            )));
        }
        // Check every file before encrypting any: bad input changes nothing.
        let mut sources = Vec::new();
        for f in files {
            let meta = fs::metadata(f)
                .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", f.display())))?;
            if !meta.is_file() {
                return Err(ClientError::Usage(format!(
                    "{} is not a regular file",
                    f.display()
                )));
            }
            if meta.len() > MAX_ATTACHMENT_BYTES {
                return Err(ClientError::Usage(format!(
                    "{} is {} bytes; attachments are limited to {MAX_ATTACHMENT_BYTES} bytes (100 MiB)",
                    f.display(),
                    meta.len()
                )));
            }
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let source = fs::canonicalize(f).unwrap_or_else(|_| f.clone());
            sources.push((source, safe_file_name(&name)));
        }

        let mid = MessageId::generate(&mut OsRng);
        let id = hex::encode(mid.as_bytes());
        let out_dir = self.attachments.dir.join("outbox-files");
        private_dir(&out_dir)?;
        let mut made: Vec<PathBuf> = Vec::new();
        let mut encrypted = Vec::new();
        let result = (|| {
            for (i, (source, name)) in sources.iter().enumerate() {
                let object_path = out_dir.join(format!("{id}-{i}.obj"));
                let input = File::open(source).map_err(|e| {
                    ClientError::Usage(format!("cannot read {}: {e}", source.display()))
                })?;
                let output = create_private(&object_path)?;
                made.push(object_path.clone());
                let secrets = encrypt_attachment(
                    &mut OsRng,
                    BufReader::with_capacity(BUF, input),
                    BufWriter::with_capacity(BUF, output),
                )
                .map_err(|e| {
                    ClientError::Usage(format!("cannot encrypt {}: {e}", source.display()))
                })?;
                if secrets.size > MAX_ATTACHMENT_BYTES {
                    return Err(ClientError::Usage(format!(
                        "{} grew past {MAX_ATTACHMENT_BYTES} bytes while it was read",
                        source.display()
                    )));
                }
                encrypted.push((object_path, source.clone(), name.clone(), secrets));
            }
            Ok::<(), ClientError>(())
        })();
        let stored = result.and_then(|()| {
            let tx = self.store.write_tx()?;
            tx.execute("INSERT OR IGNORE INTO contacts (user) VALUES (?1)", [to])?;
            tx.execute(
                "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, 'pending')",
                params![id, to, me.user.as_str(), dev(me.device), caption, now_ms() as i64],
            )?;
            for (i, (object_path, source, name, secrets)) in encrypted.iter().enumerate() {
                tx.execute(
                    "INSERT INTO attachments (message_id, idx, outgoing, size, digest, key, content_type, name, object_path, path, state)
                     VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'encrypted')",
                    params![
                        id,
                        i as i64,
                        secrets.size as i64,
                        &secrets.digest[..],
                        &secrets.key.to_bytes()[..],
                        guess_content_type(name),
                        name,
                        object_path.to_string_lossy(),
                        source.to_string_lossy()
                    ],
                )?;
            }
            // The body is built once every object is uploaded (the pointers carry the ids the
            // server gives): an empty body and key mark it as not built yet.
            tx.execute(
                "INSERT INTO outbox (message_id, to_user, body, body_key) VALUES (?1, ?2, x'', x'')",
                params![id, to],
            )?;
            tx.commit()?;
            Ok(())
        });
        if let Err(e) = stored {
            for p in &made {
                remove_quietly(p);
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Before the outbox row `seq` is delivered: uploads its attachment objects that are not
    /// uploaded yet (each with a fresh presigned URL), then builds its body with the pointers.
    /// Does nothing for a message without attachments. A failed upload is
    /// [`ClientError::Unreachable`]: the message stays in the outbox.
    pub(crate) async fn upload_attachments(&mut self, seq: i64) -> Result<(), ClientError> {
        let row: Option<(String, String, Vec<u8>)> = self
            .store
            .conn
            .query_row(
                "SELECT message_id, to_user, body_key FROM outbox WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((message_id, to, body_key)) = row else {
            return Ok(());
        };
        if !body_key.is_empty() {
            return Ok(()); // built already (or no attachments)
        }
        let pending = rows(
            &self.store.conn,
            "message_id = ?1 AND outgoing = 1",
            [&message_id],
        )?;
        if pending.is_empty() {
            return Err(ClientError::Protocol(
                "a queued message has neither a body nor attachments".into(),
            ));
        }
        for a in pending.iter().filter(|a| a.object_id.is_none()) {
            let object_id = self.upload_one(a).await?;
            self.store.conn.execute(
                "UPDATE attachments SET object_id = ?3, state = 'uploaded' WHERE message_id = ?1 AND idx = ?2",
                params![a.message_id, a.idx, object_id],
            )?;
        }

        // Every object is uploaded: build the body.
        let rows_now = rows(
            &self.store.conn,
            "message_id = ?1 AND outgoing = 1",
            [&message_id],
        )?;
        let mut pointers = Vec::new();
        for a in &rows_now {
            let id = a
                .object_id
                .clone()
                .ok_or_else(|| ClientError::Internal("an attachment lost its upload".into()))?;
            pointers.push(AttachmentPointer {
                id,
                size: a.size,
                digest: b64(&a.digest),
                key: b64(&a.key),
                content_type: a.content_type.clone(),
                name: a.name.clone(),
            });
        }
        let (caption, sent_ms): (String, i64) = self.store.conn.query_row(
            "SELECT text, sent_ms FROM messages WHERE message_id = ?1",
            [&message_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let content = Content::Text {
            to: to.clone(),
            text: caption,
            sent_ms: sent_ms as u64,
            attachments: pointers,
        };
        let mid = MessageId(
            hex::decode(&message_id)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| ClientError::Internal("stored message id".into()))?,
        );
        let (body, key) =
            encrypt_body(&mut OsRng, &mid, &content.encode()?).map_err(ClientError::protocol)?;
        self.store.conn.execute(
            "UPDATE outbox SET body = ?2, body_key = ?3 WHERE seq = ?1 AND envelopes IS NULL",
            params![seq, body.bytes, &key.to_bytes()[..]],
        )?;
        Ok(())
    }

    /// Uploads one object: a fresh presigned URL, then a streamed `PUT` of the file.
    async fn upload_one(&self, a: &Row) -> Result<String, ClientError> {
        let path = PathBuf::from(a.object_path.clone().ok_or_else(|| {
            ClientError::Protocol(format!("the encrypted file of {} is gone", a.name))
        })?);
        self.upload_object(&path, a.size, &a.name).await
    }

    /// Uploads the encrypted object at `path` (of `size` plaintext bytes): a fresh presigned
    /// URL, then a streamed `PUT` of the file. Returns the object id the server gave.
    pub(crate) async fn upload_object(
        &self,
        path: &Path,
        size: u64,
        name: &str,
    ) -> Result<String, ClientError> {
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| {
                ClientError::Protocol(format!("the encrypted file of {name} is gone: {e}"))
            })?
            .len();
        if Some(len) != attachment_object_len(size) {
            return Err(ClientError::Protocol(format!(
                "the encrypted file of {name} has the wrong length"
            )));
        }
        let upload: AttachmentUpload = self
            .call_json(
                "POST",
                "/v1/attachments",
                Some(
                    serde_json::to_vec(&CreateAttachmentRequest { size: len })
                        .map_err(|e| ClientError::Internal(e.to_string()))?,
                ),
            )
            .await?;
        if upload.method != "PUT" {
            return Err(ClientError::Internal(format!(
                "the server asks for an upload by {}",
                upload.method
            )));
        }
        let file = tokio::fs::File::open(path).await?;
        let bar = progress_bar(self.attachments.progress, len, format!("upload {name}"));
        let progress = bar.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, BUF).inspect(move |chunk| {
            if let Ok(c) = chunk {
                progress.inc(c.len() as u64);
            }
        });
        let mut rb = self
            .attachments
            .transfer
            .put(&upload.upload_url)
            .body(reqwest::Body::wrap_stream(stream));
        for (name, value) in &upload.headers {
            rb = rb.header(name.as_str(), value.as_str());
        }
        if !upload.headers.contains_key("content-length") {
            rb = rb.header("content-length", len.to_string());
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| transfer_error(&format!("uploading {name}"), e))?;
        bar.finish_and_clear();
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let detail: String = text.chars().take(300).collect();
            return Err(transfer_error(
                &format!("uploading {name}"),
                format!("{status} {detail}"),
            ));
        }
        tracing::info!(name = %name, id = %upload.id, bytes = len, "attachment uploaded");
        Ok(upload.id)
    }

    /// After a flush: deletes the encrypted objects of messages that left the outbox (sent, or
    /// refused for good) and records the outcome.
    pub(crate) fn cleanup_attachment_objects(&self) -> Result<(), ClientError> {
        let done = rows(
            &self.store.conn,
            "outgoing = 1 AND object_path IS NOT NULL AND message_id NOT IN (SELECT message_id FROM outbox)",
            [],
        )?;
        for a in done {
            if let Some(p) = &a.object_path {
                remove_quietly(Path::new(p));
            }
            self.store.conn.execute(
                "UPDATE attachments SET object_path = NULL,
                   state = CASE WHEN object_id IS NOT NULL AND
                     (SELECT state FROM messages WHERE message_id = ?1) NOT IN ('failed', 'pending')
                     THEN 'sent' ELSE 'failed' END
                 WHERE message_id = ?1 AND idx = ?2",
                params![a.message_id, a.idx],
            )?;
        }
        Ok(())
    }

    /// Downloads every received attachment still `pending`, unless automatic download is off.
    /// Failures are recorded on the attachment (and returned as events), not raised.
    pub(crate) async fn download_pending(&mut self) -> Result<Vec<Event>, ClientError> {
        if self.attachments.no_auto_download || !self.auto_download()? {
            return Ok(Vec::new());
        }
        let pending = rows(&self.store.conn, "outgoing = 0 AND state = 'pending'", [])?;
        let mut events = Vec::new();
        for a in pending {
            let info = self.download(&a).await?;
            events.push(self.attachment_event(&a.message_id, info)?);
        }
        Ok(events)
    }

    fn attachment_event(
        &self,
        message_id: &str,
        info: AttachmentInfo,
    ) -> Result<Event, ClientError> {
        let conversation: Option<String> = self
            .store
            .conn
            .query_row(
                "SELECT conversation FROM messages WHERE message_id = ?1",
                [message_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(Event::Attachment {
            conversation: conversation.unwrap_or_default(),
            message_id: message_id.to_string(),
            attachment: info,
        })
    }

    /// Downloads (again) the received attachments of one message that are not downloaded yet:
    /// `cipherpost fetch`. Fails, naming the first failure, when any could not be downloaded
    /// and verified; the others are kept.
    pub async fn fetch(&mut self, message_id: &str) -> Result<Vec<AttachmentInfo>, ClientError> {
        self.me()?;
        let message_id = message_id.trim().to_ascii_lowercase();
        let exists: Option<i64> = self
            .store
            .conn
            .query_row(
                "SELECT outgoing FROM messages WHERE message_id = ?1",
                [&message_id],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_none() {
            return Err(ClientError::Usage(format!("no message {message_id}")));
        }
        let all = rows(&self.store.conn, "message_id = ?1", [&message_id])?;
        if all.is_empty() {
            return Err(ClientError::Usage(format!(
                "message {message_id} has no attachments"
            )));
        }
        let mut out = Vec::new();
        let mut first_error = None;
        for a in all {
            if a.state == "downloaded" && a.path.as_deref().is_some_and(|p| Path::new(p).is_file())
            {
                out.push(a.info());
                continue;
            }
            if a.state != "pending" && a.state != "failed" && a.state != "downloaded" {
                out.push(a.info()); // outgoing: the source file is here
                continue;
            }
            let info = self.download(&a).await?;
            if first_error.is_none() {
                if let Some(e) = &info.error {
                    first_error = Some(format!("attachment {}: {e}", info.name));
                }
            }
            out.push(info);
        }
        match first_error {
            Some(e) => Err(ClientError::Content(e)),
            None => Ok(out),
        }
    }

    /// Downloads, verifies and decrypts one attachment; records the outcome on its row.
    /// Errors only when the store itself fails.
    async fn download(&mut self, a: &Row) -> Result<AttachmentInfo, ClientError> {
        let outcome = self.download_verified(a).await;
        let (state, path, error) = match outcome {
            Ok(path) => (
                "downloaded",
                Some(path.to_string_lossy().into_owned()),
                None,
            ),
            Err(e) => {
                tracing::warn!(name = %a.name, error = %e, "attachment download failed");
                ("failed", None, Some(e.to_string()))
            }
        };
        self.store.conn.execute(
            "UPDATE attachments SET state = ?3, path = ?4, error = ?5 WHERE message_id = ?1 AND idx = ?2",
            params![a.message_id, a.idx, state, path, error],
        )?;
        let mut info = a.info();
        info.state = state.to_string();
        info.path = path;
        info.error = error;
        Ok(info)
    }

    async fn download_verified(&self, a: &Row) -> Result<PathBuf, ClientError> {
        if a.state == "failed" && a.key.len() != 32 {
            return Err(ClientError::Content(
                a.error
                    .clone()
                    .unwrap_or_else(|| "the pointer is malformed".into()),
            ));
        }
        let secrets = a.secrets()?;
        let object_id = a
            .object_id
            .clone()
            .ok_or_else(|| ClientError::Content("the pointer has no object id".into()))?;
        unb64::<16>(&object_id, "id")?;
        attachment_object_len(a.size)
            .ok_or_else(|| ClientError::Content("the attachment is too large".into()))?;
        let dir = self.attachments.dir.join("attachments");
        private_dir(&dir)?;
        let mut nonce = [0u8; 8];
        OsRng.fill_bytes(&mut nonce);
        let tag = hex::encode(nonce);
        let object_tmp = dir.join(format!(".{}-{}-{tag}.download", a.message_id, a.idx));
        let plain_tmp = dir.join(format!(".{}-{}-{tag}.part", a.message_id, a.idx));
        let result = match self
            .download_object(&object_id, a.size, &a.name, &object_tmp)
            .await
        {
            Ok(()) => decrypt_file(&object_tmp, &plain_tmp, secrets).await,
            Err(e) => Err(e),
        };
        remove_quietly(&object_tmp);
        if let Err(e) = result {
            remove_quietly(&plain_tmp);
            return Err(e);
        }
        let safe = safe_file_name(&a.name);
        let mut target = dir.join(format!("{}-{safe}", a.message_id));
        if target.exists() && a.path.as_deref() != Some(&*target.to_string_lossy()) {
            target = dir.join(format!("{}-{}-{safe}", a.message_id, a.idx));
        }
        if let Err(e) = fs::rename(&plain_tmp, &target) {
            remove_quietly(&plain_tmp);
            return Err(e.into());
        }
        Ok(target)
    }

    /// Downloads the stored object `object_id` (of `size` plaintext bytes) into the new file
    /// `object_tmp` (0600) through a presigned `GET`, refusing an object of the wrong length
    /// before and while it streams. The caller removes `object_tmp` whatever the outcome.
    pub(crate) async fn download_object(
        &self,
        object_id: &str,
        size: u64,
        name: &str,
        object_tmp: &Path,
    ) -> Result<(), ClientError> {
        let expected = attachment_object_len(size)
            .ok_or_else(|| ClientError::Content("the attachment is too large".into()))?;
        let dl: AttachmentDownload = self
            .call_json("GET", &format!("/v1/attachments/{object_id}"), None)
            .await?;
        if dl.size != expected {
            return Err(ClientError::Content(format!(
                "refused: the stored object is {} bytes, but {size} bytes of content need {expected}; it was truncated, extended or replaced",
                dl.size
            )));
        }
        let url = dl.download_url.as_str();
        let what = format!("downloading {name}");
        let resp = self
            .attachments
            .transfer
            .get(url)
            .send()
            .await
            .map_err(|e| transfer_error(&what, e))?;
        if !resp.status().is_success() {
            return Err(transfer_error(&what, resp.status()));
        }
        if let Some(n) = resp.content_length() {
            if n != expected {
                return Err(ClientError::Content(format!(
                    "refused: the object is {n} bytes, {expected} were expected"
                )));
            }
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(object_tmp)
            .await?;
        let mut out = tokio::io::BufWriter::with_capacity(BUF, file);
        let bar = progress_bar(
            self.attachments.progress,
            expected,
            format!("download {name}"),
        );
        let mut got = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| transfer_error(&what, e))?;
            got += chunk.len() as u64;
            if got > expected {
                bar.finish_and_clear();
                return Err(ClientError::Content(format!(
                    "refused: the object is longer than the {expected} bytes expected"
                )));
            }
            out.write_all(&chunk).await?;
            bar.inc(chunk.len() as u64);
        }
        out.flush().await?;
        drop(out);
        bar.finish_and_clear();
        if got != expected {
            return Err(ClientError::Content(format!(
                "refused: the object is {got} bytes, {expected} were expected (truncated)"
            )));
        }
        Ok(())
    }
}

/// Decrypts the downloaded `object_tmp` into the new file `plain_tmp` (0600) in a blocking
/// thread; `plain_tmp` is valid only on `Ok` (the caller removes it otherwise).
async fn decrypt_file(
    object_tmp: &Path,
    plain_tmp: &Path,
    secrets: AttachmentSecrets,
) -> Result<(), ClientError> {
    // Decrypt in a blocking thread: single pass, tags and digest checked; the output is
    // valid only on Ok (the caller removes the part file otherwise).
    let object_tmp = object_tmp.to_path_buf();
    let plain_tmp = plain_tmp.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ClientError> {
        let input = File::open(&object_tmp)?;
        let len = input.metadata()?.len();
        let output = create_private(&plain_tmp)?;
        let mut writer = BufWriter::with_capacity(BUF, output);
        decrypt_attachment(
            &secrets,
            Some(len),
            BufReader::with_capacity(BUF, input),
            &mut writer,
        )
        .map_err(|e| ClientError::Content(format!("refused: {e}")))?;
        let file = writer
            .into_inner()
            .map_err(|e| ClientError::Io(e.into_error()))?;
        file.sync_all()?;
        Ok(())
    })
    .await
    .map_err(|e| ClientError::Internal(format!("decryption task: {e}")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(safe_file_name("photo.jpg"), "photo.jpg");
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("..\\..\\boot.ini"), "boot.ini");
        assert_eq!(safe_file_name(".."), "attachment");
        assert_eq!(safe_file_name("..."), "attachment");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name("a\nb\u{0}c\u{1b}[31m.txt"), "abc[31m.txt");
        assert_eq!(safe_file_name(""), "attachment");
        assert_eq!(safe_file_name("dir/"), "attachment");
        assert_eq!(safe_file_name("evil\u{202e}gpj.exe"), "evilgpj.exe");
        assert!(safe_file_name(&"é".repeat(200)).len() <= 120);
    }

    #[test]
    fn content_types_from_extensions() {
        assert_eq!(guess_content_type("a.JPG"), "image/jpeg");
        assert_eq!(guess_content_type("movie.mp4"), "video/mp4");
        assert_eq!(guess_content_type("noext"), "application/octet-stream");
        assert_eq!(guess_content_type("x.unknown"), "application/octet-stream");
    }
}
