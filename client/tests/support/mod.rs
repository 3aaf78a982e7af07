//! The harness shared by the client's end-to-end tests: device profiles against the local
//! cloud (endpoint from `CIPHERPOST_API`, default `http://127.0.0.1:8787`) and a recording,
//! answer-losing HTTP proxy.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs
)]

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use cipherpost_client::{Client, ClientError, Event};
use rand_core::{OsRng, RngCore};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

pub(crate) fn endpoint() -> String {
    std::env::var("CIPHERPOST_API").unwrap_or_else(|_| "http://127.0.0.1:8787".into())
}

pub(crate) struct Dev {
    pub(crate) c: Client,
    pub(crate) dir: TempDir,
}

impl Dev {
    pub(crate) fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let c = Client::open(dir.path(), &endpoint(), None).unwrap();
        Self { c, dir }
    }
    /// Reopens the profile, as a restarted process would.
    pub(crate) fn reopen(&mut self) {
        self.c = Client::open(self.dir.path(), &endpoint(), None).unwrap();
    }
    pub(crate) fn user(&self) -> String {
        self.c.whoami().unwrap().0
    }
    pub(crate) async fn sync(&mut self) -> Vec<Event> {
        self.c.sync().await.unwrap()
    }
    pub(crate) fn texts(&self, conversation: &str) -> Vec<(String, String)> {
        self.c
            .store()
            .history(conversation, 100_000)
            .unwrap()
            .into_iter()
            .map(|m| (m.text, m.state))
            .collect()
    }
}

/// Every plaintext the client suites send carries this marker, so that `scan-plaintext`
/// (run by `./dev test` after each suite) can show that none of it reached DynamoDB or S3.
pub(crate) const MARKER: &str = "CIPHERPOST-PLAINTEXT-MARKER-6f2d";

/// `text` with the plaintext marker in front.
pub(crate) fn marked(text: &str) -> String {
    format!("{MARKER} {text}")
}

pub(crate) fn fresh(prefix: &str) -> String {
    format!("{prefix}-{:08x}", OsRng.next_u32())
}

/// A registered first device. The local cloud can be slow under load (account creation
/// answers 503 after its 30 s handler timeout), so a failed creation is retried with a new id.
pub(crate) async fn account(prefix: &str) -> Dev {
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

/// Links a new device to `existing`'s account through the real link flow.
pub(crate) async fn link(existing: &mut Dev) -> Dev {
    let mut d = Dev::new();
    let code = d.c.link_request(&existing.user()).unwrap();
    assert!(matches!(d.c.sync().await, Err(ClientError::NotLinked)));
    existing.c.link_approve(&code).await.unwrap();
    let ev = d.sync().await;
    assert!(
        ev.iter().any(|e| matches!(e, Event::Linked { .. })),
        "{ev:?}"
    );
    assert!(d.c.is_linked().unwrap());
    d
}

pub(crate) fn assert_no_duplicates(d: &Dev, conversation: &str) {
    let h = d.c.store().history(conversation, 100_000).unwrap();
    let mut seen = BTreeMap::new();
    for m in h {
        assert!(
            seen.insert(m.message_id.clone(), ()).is_none(),
            "duplicate {}",
            m.message_id
        );
    }
}

/// Rewrites an answer: `(method, path with query, status, JSON body)`; the body may be
/// changed in place. Answers that are not JSON pass through untouched.
pub(crate) type Rewrite = Arc<dyn Fn(&str, &str, u16, &mut serde_json::Value) + Send + Sync>;

/// What the proxy does with each exchange.
#[derive(Clone)]
pub(crate) enum ProxyMode {
    /// Passes requests and answers through, recording the requests.
    Record,
    /// Passes the request on, waits for the whole answer, then hangs up: a lost answer.
    LoseAnswers,
    /// Passes everything through except acknowledgements (`POST /v1/messages/ack`), which
    /// never reach the server (the client is hung up on): what was fetched is delivered again.
    DropAcks,
    /// A malicious server: passes requests on (recording them) and hands each JSON answer to
    /// the closure before the client sees it.
    Rewrite(Rewrite),
}

/// Applies `rewrite` to one HTTP answer (`head \r\n\r\n body`, `Content-Length` framed),
/// fixing the length; a body that is not JSON is returned unchanged.
fn rewrite_answer(request: &[u8], answer: Vec<u8>, rewrite: &Rewrite) -> Vec<u8> {
    let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return answer;
    };
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&answer[end + 4..]) else {
        return answer;
    };
    let line =
        String::from_utf8_lossy(&request[..request.iter().position(|&b| b == b'\r').unwrap_or(0)])
            .into_owned();
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    rewrite(method, path, status, &mut body);
    let body = serde_json::to_vec(&body).unwrap();
    let mut out = Vec::new();
    for l in head.split("\r\n") {
        if l.to_ascii_lowercase().starts_with("content-length:") {
            out.extend_from_slice(format!("content-length: {}", body.len()).as_bytes());
        } else {
            out.extend_from_slice(l.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// An HTTP/1.1 proxy in front of the gateway (keep-alive, one upstream connection per client
/// connection). `requests` holds every request it saw, head and body.
pub(crate) struct Proxy {
    pub(crate) url: String,
    pub(crate) requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn read_message(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        let n = s.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return buf;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Proxy {
    pub(crate) async fn start(mode: ProxyMode) -> Self {
        let upstream = endpoint()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let log = log.clone();
                let mode = mode.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    loop {
                        let request = read_message(&mut client).await;
                        if request.is_empty() {
                            return;
                        }
                        log.lock().unwrap().push(request.clone());
                        if matches!(mode, ProxyMode::DropAcks)
                            && request.starts_with(b"POST /v1/messages/ack ")
                        {
                            return; // hang up on the client; the server never hears of it
                        }
                        if server.write_all(&request).await.is_err() {
                            return;
                        }
                        let mut answer = read_message(&mut server).await;
                        if matches!(mode, ProxyMode::LoseAnswers) || answer.is_empty() {
                            return; // hang up on the client
                        }
                        if let ProxyMode::Rewrite(f) = &mode {
                            answer = rewrite_answer(&request, answer, f);
                        }
                        if client.write_all(&answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, requests }
    }

    /// The JSON bodies of the recorded requests for `method path`.
    pub(crate) fn bodies(&self, method: &str, path: &str) -> Vec<serde_json::Value> {
        let start = format!("{method} {path} ");
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(start.as_bytes()))
            .filter_map(|r| {
                let end = r.windows(4).position(|w| w == b"\r\n\r\n")?;
                serde_json::from_slice(&r[end + 4..]).ok()
            })
            .collect()
    }
}

// ----- the attachment objects in S3, for the tamper tests (attachments.rs, history.rs) -----

pub(crate) fn bucket() -> String {
    std::env::var("CIPHERPOST_BUCKET").unwrap_or_else(|_| "cipherpost-attachments".into())
}

/// An S3 client on the local endpoint (path-style, as moto needs), with the test credentials.
pub(crate) async fn s3() -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    )
}

pub(crate) async fn get_object(object_id: &str) -> Vec<u8> {
    let out = s3()
        .await
        .get_object()
        .bucket(bucket())
        .key(format!("attachments/{object_id}"))
        .send()
        .await
        .unwrap();
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

pub(crate) async fn put_object(object_id: &str, bytes: Vec<u8>) {
    s3().await
        .put_object()
        .bucket(bucket())
        .key(format!("attachments/{object_id}"))
        .body(bytes.into())
        .send()
        .await
        .unwrap();
}
