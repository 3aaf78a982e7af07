//! Two small HTTP/1.1 proxies, each a real network hop (one upstream connection per client
//! connection, keep-alive, `Content-Length` framing):
//!
//! - [`DynamoProxy`] sits between the gateway and moto (point the gateway's `AWS_ENDPOINT_URL`
//!   at it) and counts DynamoDB requests by `X-Amz-Target`, with the time moto took to answer
//!   each (request written to answer read), so the store's time can be told apart from the
//!   handlers'.
//!   It can also inject faults into the DynamoDB requests ([`Faults`]): throttling and 500
//!   answers, connection resets before forwarding, answers dropped after moto applied the
//!   request, and delays, each on every k-th request while armed.
//! - [`SendProxy`] sits between the sending clients and the gateway and records, for every
//!   `PUT /v1/messages`, the sizes of what was sent: the body and each key envelope.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
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

/// What the proxy does with one request.
enum Action {
    /// Forward it and pass the answer back.
    Forward,
    /// Forward it after a pause.
    Delay(Duration),
    /// Answer this instead of forwarding.
    Answer(Vec<u8>),
    /// Close the connection without forwarding.
    Reset,
    /// Forward it, then close the connection instead of passing the answer back.
    DropAnswer,
}

/// Runs a proxy from `listener` to `upstream`, asking `decide(request)` what to do with each
/// request and calling `seen(request, answer, store time in microseconds)` for each one
/// forwarded.
fn serve<D, F>(listener: TcpListener, upstream: String, decide: D, seen: F)
where
    D: Fn(&Message) -> Action + Send + Sync + 'static,
    F: Fn(&Message, Option<&Message>, u64) + Send + Sync + 'static,
{
    let seen = Arc::new(seen);
    let decide = Arc::new(decide);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let seen = seen.clone();
            let decide = decide.clone();
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
                    let drop_answer = match decide(&request) {
                        Action::Forward => false,
                        Action::Delay(d) => {
                            tokio::time::sleep(d).await;
                            false
                        }
                        Action::Answer(bytes) => {
                            if client.write_all(&bytes).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Action::Reset => return,
                        Action::DropAnswer => true,
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
                    if drop_answer || client.write_all(&answer.bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    /// A `400 ThrottlingException` answer (what DynamoDB sends when it throttles).
    Throttle,
    /// A `500 InternalServerError` answer.
    Error500,
    /// The connection closed before the request is forwarded.
    Reset,
    /// The request forwarded (and applied by moto), the connection closed before the answer.
    Drop,
    /// The request forwarded after a pause.
    Delay,
}

impl FaultKind {
    fn name(self) -> &'static str {
        match self {
            FaultKind::Throttle => "throttle",
            FaultKind::Error500 => "error500",
            FaultKind::Reset => "reset",
            FaultKind::Drop => "drop",
            FaultKind::Delay => "delay",
        }
    }
}

/// Faults to inject into DynamoDB requests: each `(kind, k)` hits every k-th DynamoDB request
/// counted while the proxy is armed (the first kind that matches wins).
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    every: Vec<(FaultKind, u64)>,
    delay: Duration,
}

impl Faults {
    /// Parses `kind=k[,kind=k...]` with kinds `throttle`, `error500`, `reset`, `drop` and
    /// `delay` (`delay=k:MS`, default 200 ms).
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let mut f = Faults {
            delay: Duration::from_millis(200),
            ..Faults::default()
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, k) = part
                .split_once('=')
                .ok_or_else(|| format!("fault `{part}`: expected kind=k"))?;
            let (k, ms) = match k.split_once(':') {
                Some((k, ms)) => (k, Some(ms)),
                None => (k, None),
            };
            let kind = match kind {
                "throttle" => FaultKind::Throttle,
                "error500" => FaultKind::Error500,
                "reset" => FaultKind::Reset,
                "drop" => FaultKind::Drop,
                "delay" => FaultKind::Delay,
                other => {
                    return Err(format!(
                        "unknown fault `{other}` (throttle, error500, reset, drop, delay)"
                    ))
                }
            };
            let k: u64 =
                k.parse().ok().filter(|k| *k >= 2).ok_or_else(|| {
                    format!("fault `{part}`: k must be a whole number of 2 or more")
                })?;
            if let Some(ms) = ms {
                if kind != FaultKind::Delay {
                    return Err(format!("fault `{part}`: only delay takes :MS"));
                }
                f.delay = Duration::from_millis(
                    ms.parse()
                        .map_err(|_| format!("fault `{part}`: MS must be a whole number"))?,
                );
            }
            f.every.push((kind, k));
        }
        Ok(f)
    }

    fn pick(&self, n: u64) -> Option<FaultKind> {
        self.every
            .iter()
            .find(|(_, k)| n % *k == 0)
            .map(|(kind, _)| *kind)
    }
}

/// A JSON 1.0 error answer as DynamoDB sends it.
fn dynamo_error(status: &str, kind: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{kind}\",\"message\":\"{message}\"}}"
    );
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.0\r\nx-amzn-requestid: injected-fault\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The DynamoDB operation a request names (`X-Amz-Target`), `None` for S3 and others.
fn dynamo_op(req: &Message) -> Option<String> {
    req.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-amz-target")
            .then(|| v.trim().rsplit('.').next().unwrap_or("").to_string())
    })
}

/// Counts of one DynamoDB operation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct OpCount {
    /// Requests.
    pub(crate) requests: u64,
    /// Sum of moto's answer times, microseconds.
    pub(crate) store_micros: u64,
}

/// The counting (and fault-injecting) proxy in front of moto.
#[derive(Clone, Default)]
pub(crate) struct DynamoProxy {
    ops: Arc<Mutex<BTreeMap<String, OpCount>>>,
    armed: Arc<AtomicBool>,
    injected: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl DynamoProxy {
    /// Listens on `127.0.0.1:port` and forwards to `upstream` (`host:port`), injecting
    /// `faults` while armed.
    pub(crate) async fn start(port: u16, upstream: &str, faults: Faults) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let me = Self::default();
        let ops = me.ops.clone();
        let armed = me.armed.clone();
        let injected = me.injected.clone();
        let counter = AtomicU64::new(0);
        let decide = move |req: &Message| {
            if !armed.load(Ordering::Relaxed) || dynamo_op(req).is_none() {
                return Action::Forward;
            }
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            let Some(kind) = faults.pick(n) else {
                return Action::Forward;
            };
            if let Ok(mut m) = injected.lock() {
                *m.entry(kind.name()).or_default() += 1;
            }
            match kind {
                FaultKind::Throttle => Action::Answer(dynamo_error(
                    "400 Bad Request",
                    "ThrottlingException",
                    "Rate of requests exceeds the allowed throughput (injected).",
                )),
                FaultKind::Error500 => Action::Answer(dynamo_error(
                    "500 Internal Server Error",
                    "InternalServerError",
                    "Internal server error (injected).",
                )),
                FaultKind::Reset => Action::Reset,
                FaultKind::Drop => Action::DropAnswer,
                FaultKind::Delay => Action::Delay(faults.delay),
            }
        };
        serve(
            listener,
            upstream.to_string(),
            decide,
            move |req, _, micros| {
                let op = dynamo_op(req).unwrap_or_else(|| "S3/other".to_string());
                if let Ok(mut m) = ops.lock() {
                    let e = m.entry(op).or_default();
                    e.requests += 1;
                    e.store_micros += micros;
                }
            },
        );
        Ok(me)
    }

    /// Starts or stops injecting faults.
    pub(crate) fn arm(&self, on: bool) {
        self.armed.store(on, Ordering::Relaxed);
    }

    /// The faults injected so far, by kind.
    pub(crate) fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.injected.lock().map(|m| m.clone()).unwrap_or_default()
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
        let forward = |_: &Message| Action::Forward;
        serve(listener, upstream.to_string(), forward, move |req, _, _| {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_and_pick_every_kth() {
        let f = Faults::parse("throttle=3, drop=5,delay=7:50").unwrap();
        assert_eq!(f.delay, Duration::from_millis(50));
        assert_eq!(f.pick(3), Some(FaultKind::Throttle));
        assert_eq!(f.pick(5), Some(FaultKind::Drop));
        assert_eq!(f.pick(15), Some(FaultKind::Throttle));
        assert_eq!(f.pick(14), Some(FaultKind::Delay));
        assert_eq!(f.pick(1), None);
        assert!(Faults::parse("").unwrap().pick(2).is_none());
        for bad in [
            "throttle",
            "oops=3",
            "reset=1",
            "drop=x",
            "reset=3:10",
            "delay=3:x",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn injected_errors_are_dynamodb_json_answers() {
        let a =
            String::from_utf8(dynamo_error("400 Bad Request", "ThrottlingException", "m")).unwrap();
        let (head, body) = a.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["__type"],
            "com.amazonaws.dynamodb.v20120810#ThrottlingException"
        );
    }
}
