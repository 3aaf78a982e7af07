//! The device's local SQLite store: one file per profile, created 0600, migrated by
//! `PRAGMA user_version`.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    time::Duration,
};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::error::ClientError;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE contacts (
    user TEXT PRIMARY KEY,
    pinned_key BLOB,             -- pinned account key (32 bytes)
    pending_key BLOB,            -- a changed key not reached by the chain, awaiting acceptance
    blocked INTEGER NOT NULL DEFAULT 0,
    fetched INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE devices (
    user TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    identity BLOB NOT NULL,      -- certified IKs.pub || IKd.pub
    bundle TEXT,                 -- unused bundle (JSON) to start a session from
    PRIMARY KEY (user, device_id)
);
CREATE TABLE sessions (
    user TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    state BLOB NOT NULL,         -- PeerSessions::to_bytes
    PRIMARY KEY (user, device_id)
);
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    conversation TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    text TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    server_ts INTEGER,
    state TEXT NOT NULL          -- pending, sent, delivered, read (outgoing); received, read
);
CREATE INDEX messages_conversation ON messages (conversation, seq);
CREATE TABLE received (message_id TEXT PRIMARY KEY);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    to_user TEXT NOT NULL,
    body BLOB NOT NULL,
    body_key BLOB NOT NULL,
    envelopes TEXT,              -- JSON [EnvelopeKey], the exact bytes every retry resends
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE pending_receipts (message_id TEXT PRIMARY KEY, user TEXT NOT NULL);
CREATE TABLE notices (seq INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER NOT NULL, text TEXT NOT NULL, shown INTEGER NOT NULL DEFAULT 0);
"#,
    // 2: messages are told apart by (sending account, message id), not by the id alone, so that a
    // contact who reuses another's message id cannot make a message look like a duplicate.
    r#"
CREATE TABLE seen (
    sender_user TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (sender_user, message_id)
);
INSERT OR IGNORE INTO seen (sender_user, message_id)
    SELECT m.sender_user, r.message_id FROM received r JOIN messages m ON m.message_id = r.message_id;
DROP TABLE received;
CREATE TABLE messages_v2 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    text TEXT NOT NULL,
    sent_ms INTEGER NOT NULL,
    server_ts INTEGER,
    state TEXT NOT NULL,         -- pending, sent, delivered, read (outgoing); received, read
    UNIQUE (sender_user, message_id)
);
INSERT INTO messages_v2 SELECT seq, message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
CREATE INDEX messages_conversation ON messages (conversation, seq);
CREATE INDEX messages_id ON messages (message_id);
"#,
    // 3: groups. Group messages are filed under the conversation `group:<hex id>`.
    r#"
CREATE TABLE groups (
    group_id TEXT PRIMARY KEY,   -- hex of the 16-byte id
    name TEXT NOT NULL DEFAULT '',
    version INTEGER NOT NULL,
    members TEXT NOT NULL,       -- JSON [GroupMember], as the server last said
    devices TEXT NOT NULL,       -- JSON [DeviceRef], as the server last said
    rotate INTEGER NOT NULL DEFAULT 0,  -- a member left: new sender key before the next send
    active INTEGER NOT NULL DEFAULT 1   -- 0 once this account left or was removed
);
CREATE TABLE own_sender_keys (group_id TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE sender_keys (
    group_id TEXT NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    record BLOB NOT NULL,        -- SenderKeyRecord::to_bytes
    PRIMARY KEY (group_id, sender_user, sender_device)
);
CREATE TABLE sender_key_sent (   -- which member device was sent which of our key ids
    group_id TEXT NOT NULL,
    user TEXT NOT NULL,
    device_id INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    PRIMARY KEY (group_id, user, device_id)
);
ALTER TABLE outbox ADD COLUMN group_id TEXT;  -- a group message (body empty until sealed)
ALTER TABLE outbox ADD COLUMN content BLOB;   -- its content, sealed again after a 409
"#,
    // 4: a pending delivery receipt is one per (contact, message id), so that two contacts
    // using the same message id each get theirs; an outbox entry remembers why its last
    // attempt failed (a notice is given once per new reason, not on every flush).
    r#"
CREATE TABLE pending_receipts_v4 (
    user TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (user, message_id)
);
INSERT OR IGNORE INTO pending_receipts_v4 (user, message_id) SELECT user, message_id FROM pending_receipts;
DROP TABLE pending_receipts;
ALTER TABLE pending_receipts_v4 RENAME TO pending_receipts;
ALTER TABLE outbox ADD COLUMN last_error TEXT;
"#,
    // 5: attachments (the pointers of received and sent files, and their download state).
    crate::attachments::MIGRATION,
    // 6: the recipient devices that have not confirmed a sent text (dropped-message reports).
    crate::delivery::MIGRATION,
];

/// The store of one profile.
pub struct Store {
    pub(crate) conn: Connection,
}

/// One stored message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredMessage {
    /// Hex message id.
    pub message_id: String,
    /// The contact.
    pub conversation: String,
    /// Sent by this account.
    pub outgoing: bool,
    /// Sending account.
    pub sender_user: String,
    /// Sending device.
    pub sender_device: u32,
    /// Text.
    pub text: String,
    /// Writer's clock.
    pub sent_ms: u64,
    /// pending, sent, delivered, read, received.
    pub state: String,
    /// Attached files (empty when none).
    pub attachments: Vec<crate::attachments::AttachmentInfo>,
}

impl Store {
    /// Opens (creating 0600 if needed) `DIR/cipherpost.db` and migrates it.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            // Only a directory made here is made private: an existing one (say `$HOME`) keeps
            // the mode its owner gave it.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join("cipherpost.db");
        // Create the file ourselves so it is 0600 from the first byte; SQLite gives its
        // journal and WAL files the database file's mode.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Self { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), ClientError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version as usize > MIGRATIONS.len() {
            return Err(ClientError::Usage(format!(
                "this profile was written by a newer cipherpost (schema {version}); update cipherpost"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// An immediate (write-locking) transaction: session state is read, advanced and written
    /// under it so two processes on one profile never reuse a message key.
    pub fn write_tx(&self) -> Result<Transaction<'_>, ClientError> {
        // `new_unchecked` only skips the nested-transaction check that `&mut` gives; this
        // store never nests transactions.
        Ok(Transaction::new_unchecked(
            &self.conn,
            TransactionBehavior::Immediate,
        )?)
    }

    /// A meta value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        meta(&self.conn, key)
    }

    /// A meta value as text.
    pub fn meta_str(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .meta(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets a meta value.
    pub fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        set_meta(&self.conn, key, value)
    }

    /// Adds a notice for the user.
    pub fn notice(&self, text: &str) -> Result<(), ClientError> {
        notice(&self.conn, text)
    }

    /// Notices not shown yet (marks them shown).
    pub fn take_notices(&self) -> Result<Vec<String>, ClientError> {
        // Read and marked in one transaction: a notice added in between is neither lost nor
        // shown twice.
        let tx = self.write_tx()?;
        let out = {
            let mut st =
                tx.prepare("SELECT seq, text FROM notices WHERE shown = 0 ORDER BY seq")?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            rows
        };
        if let Some((last, _)) = out.last() {
            tx.execute(
                "UPDATE notices SET shown = 1 WHERE shown = 0 AND seq <= ?1",
                [last],
            )?;
        }
        tx.commit()?;
        Ok(out.into_iter().map(|(_, t)| t).collect())
    }

    /// What became of an outgoing message: whether it is still in the outbox, and its state
    /// in the history (`None` for a message without one, such as a receipt).
    pub fn outgoing_status(&self, message_id: &str) -> Result<(bool, Option<String>), ClientError> {
        let queued: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE message_id = ?1",
            [message_id],
            |r| r.get(0),
        )?;
        let state: Option<String> = self
            .conn
            .query_row(
                "SELECT state FROM messages WHERE message_id = ?1 AND outgoing = 1",
                [message_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok((queued > 0, state))
    }

    /// True while sending to `user` waits for a changed account key to be accepted.
    pub fn is_blocked(&self, user: &str) -> Result<bool, ClientError> {
        Ok(self
            .conn
            .query_row(
                "SELECT blocked FROM contacts WHERE user = ?1",
                [user],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|b| b != 0))
    }

    /// Messages of a conversation, oldest first (the last `limit`).
    pub fn history(
        &self,
        conversation: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let mut st = self.conn.prepare(
            "SELECT message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state
             FROM (SELECT * FROM messages WHERE conversation = ?1 ORDER BY seq DESC LIMIT ?2) ORDER BY sent_ms, seq",
        )?;
        let rows = st
            .query_map(params![conversation, limit], row_message)?
            .collect::<Result<Vec<_>, _>>()?;
        self.with_attachments(rows)
    }

    /// Every message, oldest first.
    pub fn all_messages(&self) -> Result<Vec<StoredMessage>, ClientError> {
        let mut st = self.conn.prepare(
            "SELECT message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state
             FROM messages ORDER BY seq",
        )?;
        let rows = st
            .query_map([], row_message)?
            .collect::<Result<Vec<_>, _>>()?;
        self.with_attachments(rows)
    }

    fn with_attachments(
        &self,
        mut rows: Vec<StoredMessage>,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        for m in &mut rows {
            m.attachments = crate::attachments::for_message(&self.conn, &m.message_id)?;
        }
        Ok(rows)
    }

    /// Conversations with their unread count and last text (with its attachments: name and
    /// path, `not downloaded` or `FAILED`).
    pub fn inbox(&self) -> Result<Vec<(String, u32, String)>, ClientError> {
        let mut st = self.conn.prepare(
            "SELECT conversation,
                    SUM(CASE WHEN outgoing = 0 AND state = 'received' THEN 1 ELSE 0 END),
                    (SELECT m2.text || COALESCE((SELECT ' [file: ' || GROUP_CONCAT(a.name || ' -> ' ||
                              CASE WHEN a.state = 'failed' THEN 'FAILED' ELSE COALESCE(a.path, 'not downloaded') END, ', ') || ']'
                            FROM attachments a WHERE a.message_id = m2.message_id HAVING COUNT(*) > 0), '')
                     FROM messages m2 WHERE m2.conversation = m.conversation ORDER BY seq DESC LIMIT 1)
             FROM messages m GROUP BY conversation ORDER BY MAX(seq) DESC",
        )?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Number of messages waiting in the outbox.
    pub fn outbox_len(&self) -> Result<u32, ClientError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?)
    }
}

fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        message_id: r.get(0)?,
        conversation: r.get(1)?,
        outgoing: r.get::<_, i64>(2)? != 0,
        sender_user: r.get(3)?,
        sender_device: r.get(4)?,
        text: r.get(5)?,
        sent_ms: r.get::<_, i64>(6)? as u64,
        state: r.get(7)?,
        attachments: Vec::new(),
    })
}

/// A meta value on any connection or transaction.
pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Sets a meta value on any connection or transaction.
pub(crate) fn set_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), ClientError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// Adds a notice.
pub(crate) fn notice(conn: &Connection, text: &str) -> Result<(), ClientError> {
    tracing::info!(notice = text);
    conn.execute(
        "INSERT INTO notices (ts, text) VALUES (?1, ?2)",
        params![crate::now_ms() as i64, text],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A profile written by schema 1 (messages unique by id alone) migrates to schema 2 keeping
    /// its messages and what it had seen, and from then on two senders' messages with the same
    /// id are both kept.
    #[test]
    fn schema_2_tells_messages_apart_by_sender_and_id() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let conn = Connection::open(dir.path().join("cipherpost.db")).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
                 VALUES ('00aa', 'bob', 0, 'bob', 7, 'hi', 1, 'received')",
                [],
            )
            .unwrap();
            conn.execute("INSERT INTO received (message_id) VALUES ('00aa')", [])
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, MIGRATIONS.len());
        let h = store.history("bob", 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].text.as_str(), h[0].sender_device), ("hi", 7));
        let seen: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM seen WHERE sender_user = 'bob' AND message_id = '00aa'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seen, 1);
        // carol reusing bob's id is a different message; bob repeating it is not.
        let insert = |sender: &str| {
            store.conn.execute(
                "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, state)
                 VALUES ('00aa', ?1, 0, ?1, 1, 'x', 2, 'received')",
                [sender],
            )
        };
        assert!(insert("carol").is_ok());
        assert!(insert("bob").is_err());
        assert_eq!(store.history("carol", 10).unwrap().len(), 1);
        assert_eq!(store.history("bob", 10).unwrap().len(), 1);
    }

    /// Schema 4: a pending receipt per (contact, message id), so two contacts' messages with
    /// one id both get theirs; receipts pending before the migration are kept.
    #[test]
    fn schema_4_keys_pending_receipts_by_contact_and_id() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let conn = Connection::open(dir.path().join("cipherpost.db")).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO pending_receipts (message_id, user) VALUES ('00aa', 'bob')",
                [],
            )
            .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let insert = |user: &str| {
            store.conn.execute(
                "INSERT OR IGNORE INTO pending_receipts (user, message_id) VALUES (?1, '00aa')",
                [user],
            )
        };
        assert_eq!(insert("carol").unwrap(), 1);
        assert_eq!(insert("bob").unwrap(), 0);
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM pending_receipts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }
}
