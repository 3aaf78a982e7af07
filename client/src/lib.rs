//! # cipherpost-client
//!
//! The cipherpost client library: a per-profile SQLite store, the outbox, sync and the
//! WebSocket listener, receipts, typing, device linking and key verification, all on
//! `cipherpost-protocol`. The `cipherpost` binary is a thin CLI over [`Client`].

pub mod api;
pub mod attachments;
mod client;
pub mod content;
mod delivery;
mod error;
pub mod store;

pub use crate::{
    attachments::{AttachmentInfo, AttachmentPointer},
    client::{
        Client, DeviceRevocation, Event, GroupInfo, HistoryImported, HistorySent, LinkApproval,
        PrekeyMaintenance, Verification, HISTORY_CONTENT_TYPE,
    },
    error::ClientError,
    store::{Store, StoredMessage},
};

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
