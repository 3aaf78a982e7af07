//! Which recipient devices have confirmed a sent text, and the detection of texts the server
//! dropped for one of them.
//!
//! Every device that stores a text sends its sender a delivery receipt, and a device receives
//! its queue in server order (`PROTOCOL.md`, sync), so its receipts confirm the sender's texts
//! in the order the server accepted them. When a recipient device confirms a text but not an
//! earlier one addressed to it, the earlier one never reached it: the server dropped it (or
//! its receipt), or the device could not read it. The sender cannot resend it (sends are
//! idempotent on the message id, and a new id would show a second copy on the recipient's
//! other devices), so it reports it: a notice naming the message, the contact and the device,
//! given once, if that device is still in the contact's verified device list. A device that is
//! offline confirms nothing and is never reported.

use rusqlite::{params, Connection, OptionalExtension};

use crate::{error::ClientError, store};

/// Store migration 6: per sent text, the recipient devices that have not confirmed it yet.
pub(crate) const MIGRATION: &str = r#"
CREATE TABLE awaiting_receipts (
    message_id TEXT NOT NULL,
    user TEXT NOT NULL,          -- the contact
    device_id INTEGER NOT NULL,  -- a device of the contact the text was encrypted to
    server_ts INTEGER NOT NULL,  -- when the server accepted the text
    reported INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, user, device_id)
);
CREATE INDEX awaiting_receipts_device ON awaiting_receipts (user, device_id, server_ts);
"#;

/// The server accepted `message_id` for `to` with key envelopes for `devices` of `to`: if it
/// is a text of this account's (the only content that is confirmed), each device's receipt is
/// awaited.
pub(crate) fn sent(
    conn: &Connection,
    message_id: &str,
    to: &str,
    devices: &[u32],
) -> Result<(), ClientError> {
    let server_ts: Option<Option<i64>> = conn
        .query_row(
            "SELECT server_ts FROM messages WHERE message_id = ?1 AND outgoing = 1 AND conversation = ?2",
            params![message_id, to],
            |r| r.get(0),
        )
        .optional()?;
    let Some(Some(server_ts)) = server_ts else {
        return Ok(());
    };
    for d in devices {
        conn.execute(
            "INSERT OR IGNORE INTO awaiting_receipts (message_id, user, device_id, server_ts) VALUES (?1, ?2, ?3, ?4)",
            params![message_id, to, d, server_ts],
        )?;
    }
    Ok(())
}

/// `user`'s `device` confirmed `message_ids` (`delivered`: a delivery receipt, which that
/// device sends for every text it stores, in queue order). Texts sent before the newest one
/// confirmed that are still unconfirmed by this device are reported as undelivered.
pub(crate) fn confirmed(
    conn: &Connection,
    user: &str,
    device: u32,
    message_ids: &[String],
    delivered: bool,
) -> Result<(), ClientError> {
    let mut newest: Option<i64> = None;
    for id in message_ids {
        let ts: Option<i64> = conn
            .query_row(
                "SELECT server_ts FROM awaiting_receipts WHERE message_id = ?1 AND user = ?2 AND device_id = ?3",
                params![id, user, device],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(ts) = ts {
            newest = Some(newest.map_or(ts, |n| n.max(ts)));
            conn.execute(
                "DELETE FROM awaiting_receipts WHERE message_id = ?1 AND user = ?2 AND device_id = ?3",
                params![id, user, device],
            )?;
        }
    }
    let Some(newest) = newest.filter(|_| delivered) else {
        return Ok(());
    };
    let listed = conn
        .query_row(
            "SELECT 1 FROM devices WHERE user = ?1 AND device_id = ?2",
            params![user, device],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    let missed: Vec<String> = {
        let mut st = conn.prepare(
            "SELECT message_id FROM awaiting_receipts
             WHERE user = ?1 AND device_id = ?2 AND server_ts < ?3 AND reported = 0
             ORDER BY server_ts",
        )?;
        let rows = st
            .query_map(params![user, device, newest], |r| r.get(0))?
            .collect::<Result<Vec<_>, _>>()?;
        rows
    };
    for id in &missed {
        if listed {
            // By id only: notices are logged, and a log never holds plaintext.
            store::notice(
                conn,
                &format!(
                    "your message {id} to {user} was not delivered to their device {device}, which confirmed a later message: the server dropped it, or the device could not read it"
                ),
            )?;
        }
        conn.execute(
            "UPDATE awaiting_receipts SET reported = 1 WHERE message_id = ?1 AND user = ?2 AND device_id = ?3",
            params![id, user, device],
        )?;
    }
    Ok(())
}
