//! Measures the history transfer of a new device (issue #7) on the local cloud: time and peak
//! memory of the approving device's side (archive written while encrypting, upload, pointer
//! sent) and of the new device's side (download, verify and import while decrypting).
//!
//! ```sh
//! cargo run -p cipherpost-client --example history_transfer -- [MESSAGES...]   # default 10000
//! ```
//!
//! Needs the local cloud at `CIPHERPOST_API` (default `http://127.0.0.1:8787`). Two accounts
//! are registered and exchange one message each way over the cloud (so each has the other
//! pinned and a session); then the history of `MESSAGES` messages (half each way, 60 to 200
//! bytes of text, read states mixed) is written into the first account's profile store
//! directly, as years of use would have left it. A new device is linked through the real link
//! flow with history, and syncs until the history is imported.
//!
//! Peak memory is the process's `VmHWM` from `/proc/self/status`, reset before each side by
//! writing `5` to `/proc/self/clear_refs` (Linux), so each figure is that side's own peak; the
//! resident memory (`VmRSS`) just before each side is printed beside it, since what the setup
//! left allocated counts in both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use cipherpost_client::{Client, Event};
use rand_core::{OsRng, RngCore};

fn endpoint() -> String {
    std::env::var("CIPHERPOST_API").unwrap_or_else(|_| "http://127.0.0.1:8787".into())
}

/// A memory figure of `/proc/self/status` (`VmHWM`: peak, `VmRSS`: now) in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn peak_kib() -> u64 {
    status_kib("VmHWM:")
}

fn reset_peak() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak memory ({e}); figures include earlier phases");
    }
}

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{:08x}", OsRng.next_u32())
}

async fn run(n: u64) {
    let root = tempfile::TempDir::new().unwrap();
    let open = |name: &str| Client::open(&root.path().join(name), &endpoint(), None).unwrap();
    let mut a1 = open("a1");
    let mut b1 = open("b1");
    let alice = a1.register(&fresh("hbench-a")).await.unwrap().0;
    let bob = b1.register(&fresh("hbench-b")).await.unwrap().0;
    a1.queue_text(&bob, "hello").unwrap();
    a1.flush_outbox().await.unwrap();
    b1.sync().await.unwrap();
    b1.queue_text(&alice, "hi").unwrap();
    b1.flush_outbox().await.unwrap();
    a1.sync().await.unwrap();

    // The history, written into alice's store as the client itself stores messages.
    let (_, a1_device) = a1.whoami().unwrap();
    let (_, b1_device) = b1.whoami().unwrap();
    {
        let mut db = rusqlite::Connection::open(root.path().join("a1/cipherpost.db")).unwrap();
        let tx = db.transaction().unwrap();
        let base = cipherpost_client::now_ms() - n * 60_000;
        for i in 0..n {
            let mut id = [0u8; 16];
            OsRng.fill_bytes(&mut id);
            let outgoing = i % 2 == 0;
            let len = 60 + (OsRng.next_u32() % 141) as usize;
            let text: String = std::iter::repeat("history message ")
                .flat_map(|s| s.chars())
                .take(len)
                .collect();
            let (sender, device, state) = if outgoing {
                (
                    &alice,
                    a1_device,
                    if i % 3 == 0 { "delivered" } else { "read" },
                )
            } else {
                (
                    &bob,
                    b1_device,
                    if i + 10 >= n { "received" } else { "read" },
                )
            };
            tx.execute(
                "INSERT INTO messages (message_id, conversation, outgoing, sender_user, sender_device, text, sent_ms, server_ts, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8)",
                rusqlite::params![
                    hex::encode(id),
                    bob,
                    outgoing as i64,
                    sender,
                    device,
                    format!("{i} {text}"),
                    (base + i * 60_000) as i64,
                    state
                ],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    let mut a2 = open("a2");
    let code = a2.link_request(&alice).unwrap();
    reset_peak();
    let send_before = status_kib("VmRSS:");
    let t = Instant::now();
    let approval = a1.link_approve_with(&code, true).await.unwrap();
    let send_ms = t.elapsed().as_millis();
    let send_peak = peak_kib();
    let sent = approval
        .history
        .unwrap_or_else(|| panic!("history not sent: {:?}", approval.history_error));

    reset_peak();
    let import_before = status_kib("VmRSS:");
    let t = Instant::now();
    let events = a2.sync().await.unwrap();
    let import_ms = t.elapsed().as_millis();
    let import_peak = peak_kib();
    assert!(events.iter().any(|e| matches!(e, Event::Linked { .. })));
    let imported = a2.store().history(&bob, u32::MAX).unwrap().len() as u64;
    assert_eq!(imported, n + 2, "every message imported");
    println!(
        "| {n} | {} | {send_ms} | {} ({}) | {import_ms} | {} ({}) |",
        sent.bytes,
        send_peak / 1024,
        send_before / 1024,
        import_peak / 1024,
        import_before / 1024
    );
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("message counts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    };
    println!("| messages | archive bytes | approve + send ms | approver peak MiB (resident before) | new device sync + import ms | new device peak MiB (resident before) |");
    println!("|---|---|---|---|---|---|");
    for n in sizes {
        run(n).await;
    }
}
