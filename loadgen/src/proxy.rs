//! Two small HTTP/1.1 proxies, each a real network hop (one upstream connection per client
//! connection, keep-alive, `Content-Length` framing):
//!
//! - [`DynamoProxy`] sits between the gateway and moto (point the gateway's `AWS_ENDPOINT_URL`
//!   at it) and counts DynamoDB requests by `X-Amz-Target`, with the time moto took to answer
//!   each (request written to answer read), so the store's time can be told apart from the
//!   handlers'.
//! - [`SendProxy`] sits between the sending clients and the gateway and records, for every
//!   `PUT /v1/messages`, the sizes of what was sent: the body and each key envelope.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Instant,
};

use cipherpost_api::SendRequest;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// One HTTP message read off a stream.
struct Message {
    bytes: Vec<u8>,
    head: String,
    body_start: usize,
}

/// Reads one HTTP/1.1 message (head and a `Content-Length` body; no body when `no_body`).
/// `buf` keeps what was read past the message for the next call. `None` at end of stream.
async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, no_body: bool) -> Option<Message> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let lower = head.to_ascii_lowercase();
            let len: usize = if no_body {
                0
            } else {
                lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            if buf.len() >= end + 4 + len {
                let rest = buf.split_off(end + 4 + len);
                let bytes = std::mem::replace(buf, rest);
                return Some(Message {
                    bytes,
                    head,
                    body_start: end + 4,
                });
            }
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs a proxy from `listener` to `upstream`, calling `seen(request, answer, store time in
/// microseconds)` for each exchange.
fn serve<F>(listener: TcpListener, upstream: String, seen: F)
where
    F: Fn(&Message, Option<&Message>, u64) + Send + Sync + 'static,
{
    let seen = Arc::new(seen);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut cbuf, mut sbuf) = (Vec::new(), Vec::new());
                loop {
                    let Some(request) = read_message(&mut client, &mut cbuf, false).await else {
                        return;
                    };
                    let started = Instant::now();
                    if server.write_all(&request.bytes).await.is_err() {
                        return;
                    }
                    let head_only = request.head.starts_with("HEAD ");
                    let answer = read_message(&mut server, &mut sbuf, head_only).await;
                    let micros = started.elapsed().as_micros() as u64;
                    seen(&request, answer.as_ref(), micros);
                    let Some(answer) = answer else { return };
                    if client.write_all(&answer.bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Counts of one DynamoDB operation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct OpCount {
    /// Requests.
    pub(crate) requests: u64,
    /// Sum of moto's answer times, microseconds.
    pub(crate) store_micros: u64,
}

/// The counting proxy in front of moto.
#[derive(Clone, Default)]
pub(crate) struct DynamoProxy {
    ops: Arc<Mutex<BTreeMap<String, OpCount>>>,
}

impl DynamoProxy {
    /// Listens on `127.0.0.1:port` and forwards to `upstream` (`host:port`).
    pub(crate) async fn start(port: u16, upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let me = Self::default();
        let ops = me.ops.clone();
        serve(listener, upstream.to_string(), move |req, _, micros| {
            let op = req
                .head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("x-amz-target")
                        .then(|| v.trim().rsplit('.').next().unwrap_or("").to_string())
                })
                .unwrap_or_else(|| "S3/other".to_string());
            if let Ok(mut m) = ops.lock() {
                let e = m.entry(op).or_default();
                e.requests += 1;
                e.store_micros += micros;
            }
        });
        Ok(me)
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> BTreeMap<String, OpCount> {
        self.ops.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// `after - before`, per operation (DynamoDB operations only).
pub(crate) fn diff(
    before: &BTreeMap<String, OpCount>,
    after: &BTreeMap<String, OpCount>,
) -> BTreeMap<String, OpCount> {
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "S3/other")
        .map(|(k, v)| {
            let b = before.get(k).cloned().unwrap_or_default();
            (
                k.clone(),
                OpCount {
                    requests: v.requests - b.requests,
                    store_micros: v.store_micros - b.store_micros,
                },
            )
        })
        .filter(|(_, v)| v.requests > 0)
        .collect()
}

/// What one `PUT /v1/messages` carried.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendSize {
    /// Encrypted body bytes.
    pub(crate) body: usize,
    /// Key envelopes (one per destination device; none for a group message).
    pub(crate) envelopes: usize,
    /// Bytes of all key envelopes (the sealed keys).
    pub(crate) envelope_bytes: usize,
    /// The HTTP request's size, head and body.
    pub(crate) request_bytes: usize,
}

/// The recording proxy in front of the gateway, for the sending clients.
#[derive(Clone)]
pub(crate) struct SendProxy {
    /// `http://127.0.0.1:port`.
    pub(crate) url: String,
    sizes: Arc<Mutex<HashMap<String, SendSize>>>,
}

impl SendProxy {
    /// Listens on an ephemeral port and forwards to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let sizes: Arc<Mutex<HashMap<String, SendSize>>> = Arc::default();
        let log = sizes.clone();
        serve(listener, upstream.to_string(), move |req, _, _| {
            if !req.head.starts_with("PUT /v1/messages ") {
                return;
            }
            let Ok(send) = serde_json::from_slice::<SendRequest>(&req.bytes[req.body_start..])
            else {
                return;
            };
            let size = SendSize {
                body: send.body.0.len(),
                envelopes: send.envelopes.len(),
                envelope_bytes: send.envelopes.iter().map(|e| e.key.0.len()).sum(),
                request_bytes: req.bytes.len(),
            };
            if let Ok(mut m) = log.lock() {
                m.insert(hex(&send.message_id.0), size);
            }
        });
        Ok(Self { url, sizes })
    }

    /// What the send of the message with hex id `id` carried.
    pub(crate) fn size(&self, id: &str) -> Option<SendSize> {
        self.sizes.lock().ok()?.get(id).copied()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
