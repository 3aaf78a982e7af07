//! End-to-end tests of encrypted attachments (issue #6) against the local cloud: the client
//! encrypts, uploads to S3 through presigned URLs, receivers download, verify and decrypt.
//! Tampering is done on the stored object directly in the S3 endpoint (moto, path-style over
//! plain HTTP: `AWS_ENDPOINT_URL`, bucket `CIPHERPOST_BUCKET`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

mod support;
use support::{bucket, get_object, put_object, s3};

use cipherpost_client::{Client, ClientError, Event};
use rand_core::{OsRng, RngCore};
use tempfile::TempDir;

const MIB: usize = 1024 * 1024;
const MARKER: &[u8] = b"CIPHERPOST-PLAINTEXT-MARKER-6f2d";

fn endpoint() -> String {
    std::env::var("CIPHERPOST_API").unwrap_or_else(|_| "http://127.0.0.1:8787".into())
}

async fn delete_object(object_id: &str) {
    s3().await
        .delete_object()
        .bucket(bucket())
        .key(format!("attachments/{object_id}"))
        .send()
        .await
        .unwrap();
}

struct Dev {
    c: Client,
    dir: TempDir,
}

impl Dev {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let c = Client::open(dir.path(), &endpoint(), None).unwrap();
        Self { c, dir }
    }
    fn user(&self) -> String {
        self.c.whoami().unwrap().0
    }
    async fn sync(&mut self) -> Vec<Event> {
        self.c.sync().await.unwrap()
    }
    /// The object id the server gave an attachment, from the profile's store.
    fn object_id(&self, message_id: &str, idx: u32) -> String {
        let db = rusqlite::Connection::open(self.dir.path().join("cipherpost.db")).unwrap();
        db.query_row(
            "SELECT object_id FROM attachments WHERE message_id = ?1 AND idx = ?2",
            rusqlite::params![message_id, idx],
            |r| r.get(0),
        )
        .unwrap()
    }
    /// Every file in the attachments folder, hidden temporaries included.
    fn attachment_files(&self) -> Vec<PathBuf> {
        files_in(&self.dir.path().join("attachments"))
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn fresh(prefix: &str) -> String {
    format!("{prefix}-{:08x}", OsRng.next_u32())
}

async fn account(prefix: &str) -> Dev {
    for _ in 0..3 {
        let mut d = Dev::new();
        match d.c.register(&fresh(prefix)).await {
            Ok(_) => return d,
            Err(ClientError::Unreachable { reason, .. }) => eprintln!("retrying: {reason}"),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the local cloud did not create an account in three tries");
}

async fn link(existing: &mut Dev) -> Dev {
    let mut d = Dev::new();
    let code = d.c.link_request(&existing.user()).unwrap();
    assert!(matches!(d.c.sync().await, Err(ClientError::NotLinked)));
    existing.c.link_approve(&code).await.unwrap();
    d.sync().await;
    assert!(d.c.is_linked().unwrap());
    d
}

/// A file of `len` random bytes with the plaintext marker written every MiB.
fn random_file(dir: &Path, name: &str, len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = vec![0u8; len];
    OsRng.fill_bytes(&mut data);
    let mut at = 0;
    while at + MARKER.len() <= len {
        data[at..at + MARKER.len()].copy_from_slice(MARKER);
        at += MIB;
    }
    let path = dir.join(name);
    fs::File::create(&path).unwrap().write_all(&data).unwrap();
    (path, data)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn a_20_mib_file_reaches_three_devices_byte_identical_and_s3_never_holds_plaintext() {
    let mut a1 = account("alice").await;
    let mut a2 = link(&mut a1).await;
    let mut b1 = account("bob").await;
    let mut b2 = link(&mut b1).await;
    let bob = b1.user();
    let alice = a1.user();
    // Bob's devices must know alice's account to accept her first message: the first sync does.
    let src = TempDir::new().unwrap();
    let (path, data) = random_file(src.path(), "holiday video.mp4", 20 * MIB);

    let id =
        a1.c.queue_files(&bob, "from the beach", std::slice::from_ref(&path))
            .unwrap();
    // Encrypted locally while streaming; nothing sent yet.
    let objects = files_in(&a1.dir.path().join("outbox-files"));
    assert_eq!(objects.len(), 1);
    assert_eq!(a1.c.store().outbox_len().unwrap(), 1);
    let sent = a1.c.flush_outbox().await.unwrap();
    assert_eq!(sent, 1);
    assert_eq!(a1.c.store().outbox_len().unwrap(), 0);
    // The local encrypted object is deleted after the send.
    assert!(files_in(&a1.dir.path().join("outbox-files")).is_empty());

    // The stored object is ciphertext: the marker that is in the plaintext 20 times is absent.
    let object_id = a1.object_id(&id, 0);
    let object = get_object(&object_id).await;
    assert_eq!(
        object.len() as u64,
        cipherpost_protocol::attachment_object_len(data.len() as u64).unwrap()
    );
    assert!(contains(&data, MARKER));
    assert!(!contains(&object, MARKER), "the S3 object holds plaintext");

    for (d, conversation) in [(&mut b1, &alice), (&mut b2, &alice), (&mut a2, &bob)] {
        let events = d.sync().await;
        let saved: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Attachment { attachment, .. } => attachment.path.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(saved.len(), 1, "{events:?}");
        let h = d.c.store().history(conversation, 10).unwrap();
        let m = h.iter().find(|m| m.message_id == id).unwrap();
        assert_eq!(m.text, "from the beach");
        assert_eq!(m.attachments.len(), 1);
        let a = &m.attachments[0];
        assert_eq!(a.state, "downloaded");
        assert_eq!(a.name, "holiday video.mp4");
        assert_eq!(a.content_type, "video/mp4");
        assert_eq!(a.size, data.len() as u64);
        let p = PathBuf::from(a.path.clone().unwrap());
        assert_eq!(p, PathBuf::from(&saved[0]));
        assert_eq!(
            p.file_name().unwrap().to_string_lossy(),
            format!("{id}-holiday video.mp4")
        );
        assert!(p.starts_with(d.dir.path().join("attachments")));
        assert!(fs::read(&p).unwrap() == data, "the received file differs");
        // No temporaries left behind.
        assert_eq!(d.attachment_files(), vec![p]);
    }
    // The sender's history points at its source file.
    let h = a1.c.store().history(&bob, 10).unwrap();
    assert_eq!(h[0].attachments[0].state, "sent");
    assert_eq!(
        PathBuf::from(h[0].attachments[0].path.clone().unwrap()),
        fs::canonicalize(&path).unwrap()
    );
}

/// Alice sends bob one file; bob syncs without downloading. Returns the message id, the
/// object id, the plaintext and the devices.
async fn pending_attachment(len: usize) -> (Dev, Dev, String, String, Vec<u8>, TempDir) {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let bob = b1.user();
    let src = TempDir::new().unwrap();
    let (path, data) = random_file(src.path(), "report.pdf", len);
    let id = a1.c.queue_files(&bob, "", &[path]).unwrap();
    a1.c.flush_outbox().await.unwrap();
    b1.c.set_no_auto_download(true);
    b1.sync().await;
    let m = b1.c.store().history(&a1.user(), 10).unwrap();
    assert_eq!(m[0].attachments[0].state, "pending");
    assert_eq!(m[0].attachments[0].path, None);
    let object_id = a1.object_id(&id, 0);
    (a1, b1, id, object_id, data, src)
}

#[tokio::test]
async fn tampered_truncated_and_swapped_objects_are_refused_and_leave_no_file() {
    let (mut a1, mut b1, id, object_id, data, src) = pending_attachment(300_000).await;
    let original = get_object(&object_id).await;

    // Another attachment of the same size, under another key: its object is "swapped" in.
    let (other_path, _) = random_file(src.path(), "other.pdf", 300_000);
    let other_id = a1.c.queue_files(&b1.user(), "", &[other_path]).unwrap();
    a1.c.flush_outbox().await.unwrap();
    let other_object = get_object(&a1.object_id(&other_id, 0)).await;
    assert_eq!(other_object.len(), original.len());

    let mut flipped = original.clone();
    flipped[150_000] ^= 0x01;
    let mut flipped_prefix = original.clone();
    flipped_prefix[0] ^= 0x80;
    let truncated = original[..original.len() - 1000].to_vec();
    let mut extended = original.clone();
    extended.extend_from_slice(b"more");
    for (what, bytes, expect) in [
        ("flipped byte", flipped, "does not decrypt"),
        ("flipped nonce prefix", flipped_prefix, "does not decrypt"),
        ("truncated", truncated, "refused"),
        ("extended", extended, "refused"),
        ("swapped", other_object, "does not decrypt"),
    ] {
        put_object(&object_id, bytes).await;
        let err = b1.c.fetch(&id).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("report.pdf") && msg.contains(expect),
            "{what}: {msg}"
        );
        assert!(
            b1.attachment_files().is_empty(),
            "{what}: files left behind: {:?}",
            b1.attachment_files()
        );
        // The message still shows, its attachment marked failed with the reason.
        let m = b1.c.store().history(&a1.user(), 10).unwrap();
        let a = &m.iter().find(|m| m.message_id == id).unwrap().attachments[0];
        assert_eq!(a.state, "failed", "{what}");
        assert_eq!(a.path, None);
        assert!(a.error.as_deref().unwrap().contains(expect), "{what}");
    }

    // The genuine object back: the retry succeeds.
    put_object(&object_id, original).await;
    let got = b1.c.fetch(&id).await.unwrap();
    assert_eq!(got[0].state, "downloaded");
    let p = PathBuf::from(got[0].path.clone().unwrap());
    assert!(fs::read(&p).unwrap() == data);
    assert_eq!(b1.attachment_files(), vec![p]);
}

#[tokio::test]
async fn a_missing_object_is_a_clear_error_and_auto_download_can_be_turned_off() {
    let (_a1, mut b1, id, object_id, _data, _src) = pending_attachment(1000).await;
    // The setting persists; the per-process switch was used above.
    assert!(b1.c.auto_download().unwrap());
    b1.c.set_auto_download(false).unwrap();
    assert!(!b1.c.auto_download().unwrap());
    // Delete the object in S3: fetch says it is unknown.
    delete_object(&object_id).await;
    let err = b1.c.fetch(&id).await.unwrap_err().to_string();
    assert!(err.contains("unknown_attachment"), "{err}");
    assert!(b1.attachment_files().is_empty());
    // Unknown messages and messages without attachments are usage errors.
    assert!(matches!(
        b1.c.fetch("00112233445566778899aabbccddeeff").await,
        Err(ClientError::Usage(_))
    ));
}

#[tokio::test]
async fn oversized_and_missing_files_are_refused_before_anything_is_queued() {
    let mut a1 = account("alice").await;
    let b1 = account("bob").await;
    let src = TempDir::new().unwrap();
    // Sparse: 100 MiB + 1 byte without writing them.
    let big = src.path().join("big.bin");
    fs::File::create(&big)
        .unwrap()
        .set_len(100 * MIB as u64 + 1)
        .unwrap();
    let (ok, _) = random_file(src.path(), "ok.txt", 10);
    let err =
        a1.c.queue_files(&b1.user(), "x", &[ok.clone(), big])
            .unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err}");
    assert!(err.to_string().contains("100 MiB"), "{err}");
    let err =
        a1.c.queue_files(&b1.user(), "x", &[src.path().join("nope")])
            .unwrap_err();
    assert!(matches!(err, ClientError::Usage(_)), "{err}");
    assert!(a1
        .c
        .queue_files(&b1.user(), "x", &[src.path().to_path_buf()])
        .is_err());
    // Nothing changed.
    assert_eq!(a1.c.store().outbox_len().unwrap(), 0);
    assert!(a1.c.store().history(&b1.user(), 10).unwrap().is_empty());
    assert!(files_in(&a1.dir.path().join("outbox-files")).is_empty());
}

#[tokio::test]
async fn an_upload_that_cannot_happen_leaves_the_message_pending_until_the_next_flush() {
    let mut a1 = account("alice").await;
    let mut b1 = account("bob").await;
    let bob = b1.user();
    let src = TempDir::new().unwrap();
    let (path, data) = random_file(src.path(), "photo.jpg", 200_000);
    // The same profile through an endpoint that does not answer: the upload cannot start.
    let mut offline = Client::open(a1.dir.path(), "http://127.0.0.1:9", None).unwrap();
    let id = offline.queue_files(&bob, "later", &[path]).unwrap();
    let err = offline.flush_outbox().await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    drop(offline);
    assert_eq!(a1.c.store().outbox_len().unwrap(), 1);
    let h = a1.c.store().history(&bob, 10).unwrap();
    assert_eq!(h[0].state, "pending");
    assert_eq!(h[0].attachments[0].state, "encrypted");
    assert_eq!(files_in(&a1.dir.path().join("outbox-files")).len(), 1);

    // Back online: the next flush uploads and sends.
    assert_eq!(a1.c.flush_outbox().await.unwrap(), 1);
    assert_eq!(a1.c.store().outbox_len().unwrap(), 0);
    assert!(files_in(&a1.dir.path().join("outbox-files")).is_empty());
    b1.sync().await;
    let m = b1.c.store().history(&a1.user(), 10).unwrap();
    let m = m.iter().find(|m| m.message_id == id).unwrap();
    assert_eq!(m.text, "later");
    assert_eq!(m.attachments[0].content_type, "image/jpeg");
    assert!(fs::read(m.attachments[0].path.clone().unwrap()).unwrap() == data);
}
