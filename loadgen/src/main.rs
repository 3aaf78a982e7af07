//! `cipherpost-loadgen`: a load generator for cipherpost built on the real client library.
//!
//! It registers accounts (linking their extra devices through the real link flow), one
//! profile per device in a temporary directory; keeps some devices online with `watch` (real
//! WebSockets); sends 1:1 and group messages at a target rate with real encryption, each text
//! carrying its own id and send time; then brings the offline devices online to `sync`. It
//! measures throughput, send and send-to-delivery latency, bytes stored per message and
//! (through a counting proxy between the gateway and moto) DynamoDB requests per message, and
//! checks that every message reached every addressed device exactly once, exiting 1 otherwise.

mod plot;
mod proxy;
mod queue;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use cipherpost_client::{now_ms, Client, ClientError, Event};
use clap::Parser;
use futures::{stream, StreamExt};
use rand_core::{OsRng, RngCore};
use serde_json::json;

use crate::proxy::{DynamoProxy, OpCount, SendProxy};

/// Load generator for cipherpost (real clients: encryption, WebSockets, sync).
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// The HTTP API.
    #[arg(long, env = "CIPHERPOST_API", default_value = "http://127.0.0.1:8787")]
    endpoint: String,
    /// The WebSocket URL (default: the endpoint with ws:// and /ws).
    #[arg(long)]
    ws_url: Option<String>,
    /// Accounts.
    #[arg(long, default_value_t = 10)]
    accounts: usize,
    /// Devices, spread over the accounts (device i belongs to account i mod accounts).
    #[arg(long, default_value_t = 30)]
    devices: usize,
    /// Devices kept online with a WebSocket (the first K, so spread over the accounts).
    #[arg(long, default_value_t = 20)]
    online: usize,
    /// Target messages per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Fraction of the sends that are group messages.
    #[arg(long, default_value_t = 0.0)]
    group_share: f64,
    /// Members (accounts) per group.
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Devices per group that send group messages (their sender keys are distributed before
    /// the measured phase).
    #[arg(long, default_value_t = 3)]
    group_senders: usize,
    /// Extra text bytes per message (the text is `lg SEQ SENT_MS` plus this padding).
    #[arg(long, default_value_t = 100)]
    pad: usize,
    /// Seconds to wait after the last send for online deliveries.
    #[arg(long, default_value_t = 30)]
    drain: u64,
    /// Parallel account set-ups and catch-up syncs.
    #[arg(long, default_value_t = 4)]
    setup_parallel: usize,
    /// Start a counting proxy on this port that forwards to `--dynamodb-upstream`; start the
    /// gateway with `AWS_ENDPOINT_URL=http://127.0.0.1:PORT` to count DynamoDB requests.
    #[arg(long)]
    count_dynamodb_proxy_port: Option<u16>,
    /// Where the counting proxy forwards (moto).
    #[arg(long, default_value = "127.0.0.1:4566")]
    dynamodb_upstream: String,
    /// The gateway's log (its `http METHOD path -> status (N ms)` lines give per-request
    /// handler times for the measured phase).
    #[arg(long)]
    gateway_log: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the CDF of send-to-delivery latency here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Inject faults into the DynamoDB requests through the counting proxy (needs
    /// `--count-dynamodb-proxy-port`) from the measured phase to the end of the catch-up:
    /// `kind=k[,kind=k...]`, each hitting every k-th DynamoDB request; kinds `throttle` (400
    /// ThrottlingException), `error500`, `reset` (connection closed before forwarding), `drop`
    /// (forwarded and applied, the answer dropped), `delay` (`delay=k:MS`).
    #[arg(long, value_parser = proxy::Faults::parse)]
    faults: Option<proxy::Faults>,
    /// Keep retrying a send that did not go through (its message stays in the outbox), and a
    /// catch-up sync that failed, for up to this many seconds; 0 reports them as failures at
    /// once. Use with `--faults` or when the gateway is restarted during the run.
    #[arg(long, default_value_t = 0)]
    retry_for: u64,
    /// After the catch-up, scan this queue table (DynamoDB from the environment:
    /// `AWS_ENDPOINT_URL`) before the offline devices sync, checking that every accepted message
    /// has exactly one queue item per addressed offline device, and after it, that none is left.
    #[arg(long)]
    queue_table: Option<String>,
}

type Err = Box<dyn std::error::Error + Send + Sync>;

fn err(s: impl Into<String>) -> Err {
    s.into().into()
}

/// How a message reached a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Pushed to an online device (or its catch-up on connect).
    Online,
    /// The final sync of a device (offline devices; online ones catching up what they missed).
    CatchUp,
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    device: usize,
    seq: u64,
    sent_ms: u64,
    at_ms: u64,
    via: Via,
}

#[derive(Debug, Clone)]
struct SendRec {
    seq: u64,
    group: bool,
    sender: usize,
    expected: Vec<usize>,
    /// Scheduled time (ms since the phase started) and when it was queued.
    scheduled_ms: u64,
    queued_ms: u64,
    accepted_ms: Option<u64>,
    error: Option<String>,
    /// The message id (hex), once queued.
    id: Option<String>,
    /// Flushes again after the first (with `--retry-for`).
    retries: u32,
    bytes_stored: Option<usize>,
    request_bytes: Option<usize>,
}

struct Device {
    account: usize,
    sender: tokio::sync::Mutex<Client>,
}

struct Group {
    hex: String,
    /// Member accounts.
    members: Vec<usize>,
    /// Devices that send to it.
    senders: Vec<usize>,
}

struct Shared {
    devices: Vec<Device>,
    users: Vec<String>,
    /// Devices of each account.
    account_devices: Vec<Vec<usize>>,
    groups: Vec<Group>,
    deliveries: Mutex<Vec<Delivery>>,
    delivered_online: AtomicU64,
    sends: Mutex<Vec<SendRec>>,
    sent_ok: AtomicU64,
    send_failed: AtomicU64,
    send_proxy: Option<SendProxy>,
    pad: String,
    retry_for: u64,
}

fn parse_text(text: &str) -> Option<(u64, u64)> {
    let mut it = text.strip_prefix("lg ")?.split(' ');
    let seq = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((seq, sent))
}

fn record(shared: &Shared, device: usize, ev: &Event, via: Via) {
    if let Event::Message { text, .. } = ev {
        if let Some((seq, sent_ms)) = parse_text(text) {
            if let Ok(mut d) = shared.deliveries.lock() {
                d.push(Delivery {
                    device,
                    seq,
                    sent_ms,
                    at_ms: now_ms(),
                    via,
                });
            }
            if via == Via::Online {
                shared.delivered_online.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Syncs the devices in `order` (at most `parallel` at a time), recording what they show as
/// catch-up deliveries; a failed sync is tried again for up to `retry_for` seconds. The errors
/// of the syncs that never went through.
async fn sync_all(
    shared: &Arc<Shared>,
    order: Vec<usize>,
    parallel: usize,
    retry_for: u64,
) -> Vec<String> {
    let synced: Vec<Result<(), String>> = stream::iter(order)
        .map(|j| {
            let sh = shared.clone();
            async move {
                let end = Instant::now() + Duration::from_secs(retry_for);
                loop {
                    let mut c = sh.devices[j].sender.lock().await;
                    match c.sync().await {
                        Ok(events) => {
                            for ev in events {
                                record(&sh, j, &ev, Via::CatchUp);
                            }
                            return Ok(());
                        }
                        Err(e) if Instant::now() >= end => {
                            return Err(format!("device {j}: sync: {e}"))
                        }
                        Err(_) => {
                            drop(c);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    synced.into_iter().filter_map(|r| r.err()).collect()
}

fn pick(n: usize) -> usize {
    (OsRng.next_u64() % n.max(1) as u64) as usize
}

fn percentiles(v: &mut [u64]) -> serde_json::Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_unstable();
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({"n": v.len(), "p50": p(0.50), "p95": p(0.95), "p99": p(0.99), "max": v[v.len() - 1],
           "mean": v.iter().sum::<u64>() as f64 / v.len() as f64})
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Registers account `a` on its first device and links the others through the link flow.
async fn setup_account(
    user: String,
    mut clients: Vec<(usize, Client)>,
) -> Result<Vec<(usize, Client)>, Err> {
    let (first, rest) = clients
        .split_first_mut()
        .ok_or_else(|| err("an account without devices"))?;
    let mut tries = 0;
    loop {
        match first.1.register(&user).await {
            Ok(_) => break,
            Err(ClientError::Unreachable { reason, .. }) if tries < 3 => {
                tries += 1;
                eprintln!("register {user}: {reason}; retrying");
            }
            Err(e) => return Err(err(format!("register {user}: {e}"))),
        }
    }
    for (_, d) in rest.iter_mut() {
        let code = d.link_request(&user)?;
        first.1.link_approve(&code).await?;
        let ev = d.sync().await?;
        if !d.is_linked()? {
            return Err(err(format!("a device of {user} did not link: {ev:?}")));
        }
    }
    Ok(clients)
}

fn gateway_log_len(p: &Option<PathBuf>) -> u64 {
    p.as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

/// Per-route handler times from the gateway's log between two offsets.
fn gateway_times(p: &Option<PathBuf>, from: u64, to: u64) -> serde_json::Value {
    let Some(p) = p else { return json!(null) };
    let Ok(all) = std::fs::read(p) else {
        return json!(null);
    };
    let slice = &all[(from as usize).min(all.len())..(to as usize).min(all.len())];
    let text = String::from_utf8_lossy(slice);
    let mut routes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in text.lines() {
        // ... http PUT /v1/messages -> 200 (12 ms)
        let Some(pos) = ["http ", "@connections ", "websocket "]
            .iter()
            .filter_map(|k| line.find(k))
            .min()
        else {
            continue;
        };
        let rest = &line[pos..];
        let Some((req, tail)) = rest.split_once(" -> ") else {
            continue;
        };
        let Some(ms) = tail
            .split_once('(')
            .and_then(|(_, t)| t.split_once(" ms)"))
            .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let status = tail.split_whitespace().next().unwrap_or("");
        let mut parts = req.split_whitespace();
        let kind = parts.next().unwrap_or("");
        let method = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        let path: String = if kind == "@connections" {
            "/@connections/{id}".into()
        } else {
            path.split('?')
                .next()
                .unwrap_or("")
                .split('/')
                .take(4)
                .collect::<Vec<_>>()
                .join("/")
        };
        routes
            .entry(format!("{kind} {method} {path} {status}"))
            .or_default()
            .push(ms);
    }
    let mut out = serde_json::Map::new();
    for (k, mut v) in routes {
        let sum: u64 = v.iter().sum();
        let mut p = percentiles(&mut v);
        if let Some(o) = p.as_object_mut() {
            o.insert("total_ms".into(), json!(sum));
        }
        out.insert(k, p);
    }
    serde_json::Value::Object(out)
}

fn ops_json(ops: &BTreeMap<String, OpCount>) -> serde_json::Value {
    json!(ops)
}

/// The clients' futures are not `Send` (a profile's SQLite connection is used across awaits),
/// so they run as local tasks on the main thread; the proxies run on the runtime's workers.
fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cipherpost-loadgen: runtime: {e}");
            std::process::exit(2);
        }
    };
    let local = tokio::task::LocalSet::new();
    match rt.block_on(local.run_until(run(args))) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("cipherpost-loadgen: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> Result<bool, Err> {
    let m = args.accounts.max(2);
    let n = args.devices.max(m);
    let k = args.online.min(n);
    let started_all = Instant::now();
    let dynamo = match args.count_dynamodb_proxy_port {
        Some(port) => Some(
            DynamoProxy::start(
                port,
                &args.dynamodb_upstream,
                args.faults.clone().unwrap_or_default(),
            )
            .await?,
        ),
        None => None,
    };
    let send_proxy = SendProxy::start(&host_port(&args.endpoint)).await?;
    let root = tempfile::Builder::new()
        .prefix("cipherpost-loadgen")
        .tempdir()?;
    let run_id = format!("{:08x}", OsRng.next_u32());
    let users: Vec<String> = (0..m).map(|a| format!("lg{run_id}-{a}")).collect();
    let account_devices: Vec<Vec<usize>> = (0..m)
        .map(|a| (0..n).filter(|j| j % m == a).collect())
        .collect();
    let dir = |j: usize| root.path().join(format!("dev{j}"));
    eprintln!(
        "setting up {m} accounts, {n} devices ({k} online) in {}",
        root.path().display()
    );

    // ----- accounts and linked devices -----
    let mut clients: Vec<Option<Client>> = Vec::with_capacity(n);
    for j in 0..n {
        clients.push(Some(Client::open(&dir(j), &send_proxy.url, None)?));
    }
    let mut per_account = Vec::new();
    for (a, devs) in account_devices.iter().enumerate() {
        let mut cs = Vec::new();
        for &j in devs {
            cs.push((
                j,
                clients[j].take().ok_or_else(|| err("client taken twice"))?,
            ));
        }
        per_account.push(setup_account(users[a].clone(), cs));
    }
    let done: Vec<Result<Vec<(usize, Client)>, Err>> = stream::iter(per_account)
        .buffer_unordered(args.setup_parallel.max(1))
        .collect()
        .await;
    for r in done {
        for (j, c) in r? {
            clients[j] = Some(c);
        }
    }
    let mut clients: Vec<Client> = clients
        .into_iter()
        .map(|c| c.ok_or_else(|| err("a device was not set up")))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "accounts ready after {:.1} s",
        started_all.elapsed().as_secs_f64()
    );

    // ----- groups -----
    let g_size = args.group_size.clamp(2, m);
    let n_groups = if args.group_share > 0.0 {
        (m / g_size).max(1)
    } else {
        0
    };
    let mut groups = Vec::new();
    for g in 0..n_groups {
        let members: Vec<usize> = (0..g_size).map(|i| (g * g_size + i) % m).collect();
        let creator = account_devices[members[0]][0];
        let others: Vec<String> = members[1..].iter().map(|&a| users[a].clone()).collect();
        let name = format!("load{g}");
        let info = clients[creator].group_create(&name, &others).await?;
        clients[creator].flush_outbox().await?;
        let senders: Vec<usize> = members
            .iter()
            .take(args.group_senders.max(1))
            .map(|&a| account_devices[a][0])
            .collect();
        for &s in &senders[1..] {
            clients[s].sync().await?;
            if !clients[s]
                .groups()?
                .iter()
                .any(|i| i.group_id == info.group_id)
            {
                return Err(err(format!("a member did not learn group {name}")));
            }
        }
        groups.push(Group {
            hex: info.group_id.clone(),
            members,
            senders,
        });
    }

    // ----- warm-up: every device opens its sessions to its contact, group senders send their
    // sender keys; then every device syncs what that produced -----
    let partner = |a: usize| (a + 1) % m;
    let warm: Vec<Result<(), Err>> = stream::iter(clients.iter_mut().enumerate())
        .map(|(j, c)| {
            let to = users[partner(j % m)].clone();
            let gs: Vec<String> = groups
                .iter()
                .filter(|g| g.senders.contains(&j))
                .map(|g| g.hex.clone())
                .collect();
            async move {
                c.queue_text(&to, "warmup")?;
                for g in gs {
                    c.queue_group_text(&g, "warmup")?;
                }
                c.flush_outbox().await?;
                Ok(())
            }
        })
        .buffer_unordered(args.setup_parallel.max(1))
        .collect()
        .await;
    warm.into_iter().collect::<Result<Vec<()>, Err>>()?;
    for _ in 0..2 {
        let synced: Vec<Result<(), Err>> = stream::iter(clients.iter_mut())
            .map(|c| async move {
                c.sync().await?;
                Ok(())
            })
            .buffer_unordered(args.setup_parallel.max(1))
            .collect()
            .await;
        synced.into_iter().collect::<Result<Vec<()>, Err>>()?;
    }
    eprintln!(
        "sessions and groups warmed up after {:.1} s",
        started_all.elapsed().as_secs_f64()
    );
    let setup_secs = started_all.elapsed().as_secs_f64();

    let shared = Arc::new(Shared {
        devices: clients
            .into_iter()
            .enumerate()
            .map(|(j, c)| Device {
                account: j % m,
                sender: tokio::sync::Mutex::new(c),
            })
            .collect(),
        users: users.clone(),
        account_devices: account_devices.clone(),
        groups,
        deliveries: Mutex::new(Vec::new()),
        delivered_online: AtomicU64::new(0),
        sends: Mutex::new(Vec::new()),
        sent_ok: AtomicU64::new(0),
        send_failed: AtomicU64::new(0),
        send_proxy: Some(send_proxy.clone()),
        pad: "x".repeat(args.pad),
        retry_for: args.retry_for,
    });

    // ----- online devices: a second client on each profile runs `watch` -----
    let ws_url = args.ws_url.clone();
    let mut watchers = Vec::new();
    for j in 0..k {
        let mut c = Client::open(&dir(j), &args.endpoint, ws_url.as_deref())?;
        let sh = shared.clone();
        watchers.push(tokio::task::spawn_local(async move {
            let r = c.watch(None, |ev| record(&sh, j, ev, Via::Online)).await;
            if let Err(e) = r {
                eprintln!("device {j}: watch ended: {e}");
            }
        }));
    }
    // Let the sockets connect and catch up.
    tokio::time::sleep(Duration::from_millis(2000 + 30 * k as u64)).await;
    shared.deliveries.lock().map(|mut d| d.clear()).ok();
    shared.delivered_online.store(0, Ordering::Relaxed);

    // ----- the measured phase -----
    let total = (args.rate * args.duration as f64).round() as u64;
    let online: BTreeSet<usize> = (0..k).collect();
    let ops_before = dynamo.as_ref().map(|d| d.snapshot());
    let log_before = gateway_log_len(&args.gateway_log);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} queued {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if let Some(d) = &dynamo {
        d.arm(args.faults.is_some());
    }
    eprintln!("measured phase: {total} messages over {} s", args.duration);
    let phase = Instant::now();
    let phase_ms = now_ms();
    let mut tasks = Vec::new();
    let mut expected_online: u64 = 0;
    for seq in 0..total {
        let at = phase + Duration::from_secs_f64(seq as f64 / args.rate);
        tokio::time::sleep_until(at.into()).await;
        let group = !shared.groups.is_empty()
            && (OsRng.next_u64() as f64 / u64::MAX as f64) < args.group_share;
        let (sender, target, expected): (usize, String, Vec<usize>) = if group {
            let g = &shared.groups[pick(shared.groups.len())];
            let s = g.senders[pick(g.senders.len())];
            let exp = g
                .members
                .iter()
                .flat_map(|&a| shared.account_devices[a].iter().copied())
                .filter(|&d| d != s)
                .collect();
            (s, g.hex.clone(), exp)
        } else {
            let s = pick(n);
            let a = shared.devices[s].account;
            let b = partner(a);
            let exp = shared.account_devices[b]
                .iter()
                .chain(shared.account_devices[a].iter())
                .copied()
                .filter(|&d| d != s)
                .collect();
            (s, shared.users[b].clone(), exp)
        };
        expected_online += expected.iter().filter(|d| online.contains(d)).count() as u64;
        let sh = shared.clone();
        let scheduled_ms = (seq as f64 * 1000.0 / args.rate) as u64;
        tasks.push(tokio::task::spawn_local(async move {
            let mut c = sh.devices[sender].sender.lock().await;
            let queued_ms = now_ms();
            let text = format!("lg {seq} {queued_ms} {}", sh.pad);
            let queued = if group {
                c.queue_group_text(&target, &text)
            } else {
                c.queue_text(&target, &text)
            };
            let mut rec = SendRec {
                seq,
                group,
                sender,
                expected,
                scheduled_ms,
                queued_ms,
                accepted_ms: None,
                error: None,
                id: queued.as_ref().ok().cloned(),
                retries: 0,
                bytes_stored: None,
                request_bytes: None,
            };
            match queued {
                Err(e) => rec.error = Some(format!("queue: {e}")),
                Ok(id) => {
                    // With --retry-for, a send that did not go through stays in the outbox and
                    // is flushed again (the lock is let go between tries, so the device's other
                    // sends go on, and one of their flushes may carry it).
                    let retry_end = Instant::now() + Duration::from_secs(sh.retry_for);
                    loop {
                        let flushed = c.flush_outbox().await;
                        let done = now_ms();
                        let status = c.store().outgoing_status(&id);
                        rec.error = match (flushed, status) {
                            (_, Ok((false, Some(s)))) if s != "pending" && s != "failed" => {
                                rec.accepted_ms = Some(done);
                                None
                            }
                            (Err(e), _) => Some(format!("flush: {e}")),
                            (_, s) => Some(format!("not sent: {s:?}")),
                        };
                        let queued_still = matches!(c.store().outgoing_status(&id), Ok((true, _)));
                        if rec.accepted_ms.is_some() || !queued_still || Instant::now() >= retry_end
                        {
                            break;
                        }
                        rec.retries += 1;
                        drop(c);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        c = sh.devices[sender].sender.lock().await;
                    }
                    if let Some(size) = sh.send_proxy.as_ref().and_then(|p| p.size(&id)) {
                        let n = rec.expected.len();
                        rec.bytes_stored = Some(if group {
                            size.body * n
                        } else {
                            size.body * size.envelopes + size.envelope_bytes
                        });
                        rec.request_bytes = Some(size.request_bytes);
                    }
                }
            }
            if rec.accepted_ms.is_some() {
                sh.sent_ok.fetch_add(1, Ordering::Relaxed);
            } else {
                sh.send_failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(c);
            if let Ok(mut s) = sh.sends.lock() {
                s.push(rec);
            }
        }));
        bar.set_position(seq + 1);
        bar.set_message(format!(
            "accepted {} failed {} delivered {}/{}",
            shared.sent_ok.load(Ordering::Relaxed),
            shared.send_failed.load(Ordering::Relaxed),
            shared.delivered_online.load(Ordering::Relaxed),
            expected_online
        ));
    }
    for t in tasks {
        let _ = t.await;
    }
    let send_secs = phase.elapsed().as_secs_f64();
    // Drain: wait for every online delivery, at most `drain` seconds.
    let drain_end = Instant::now() + Duration::from_secs(args.drain);
    while shared.delivered_online.load(Ordering::Relaxed) < expected_online
        && Instant::now() < drain_end
    {
        bar.set_message(format!(
            "accepted {} failed {} delivered {}/{} (draining)",
            shared.sent_ok.load(Ordering::Relaxed),
            shared.send_failed.load(Ordering::Relaxed),
            shared.delivered_online.load(Ordering::Relaxed),
            expected_online
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let online_secs = phase.elapsed().as_secs_f64();
    let ops_after = dynamo.as_ref().map(|d| d.snapshot());
    let log_after = gateway_log_len(&args.gateway_log);
    for w in &watchers {
        w.abort();
    }
    for w in watchers {
        let _ = w.await;
    }

    // ----- the queue, before the offline devices sync: every accepted message has exactly one
    // item per addressed offline device -----
    let device_keys: Vec<String> = {
        let mut v = Vec::with_capacity(n);
        for dev in &shared.devices {
            let c = dev.sender.lock().await;
            let (user, device) = c
                .whoami()
                .ok_or_else(|| err("a device lost its identity"))?;
            v.push(format!("{user}#{device}"));
        }
        v
    };
    let prefix = format!("lg{run_id}-");
    let sends_now = shared
        .sends
        .lock()
        .map(|s| s.clone())
        .map_err(|_| err("lock"))?;
    let run_ids: BTreeSet<String> = sends_now.iter().filter_map(|s| s.id.clone()).collect();
    let mut queue_problems: Vec<serde_json::Value> = Vec::new();
    if let Some(table) = &args.queue_table {
        let items = queue::scan(table, &prefix, &run_ids).await?;
        let mut want: BTreeMap<(String, String), usize> = BTreeMap::new();
        for s in sends_now.iter().filter(|s| s.accepted_ms.is_some()) {
            let Some(id) = &s.id else { continue };
            for &d in s.expected.iter().filter(|&&d| d >= k) {
                want.insert((device_keys[d].clone(), id.clone()), 0);
            }
        }
        let offline_keys: BTreeSet<&String> = device_keys[k..].iter().collect();
        for key in items.iter().filter(|(dk, _)| offline_keys.contains(dk)) {
            match want.get_mut(key) {
                Some(c) => *c += 1,
                None => queue_problems.push(
                    json!({"stage": "before catch-up", "unexpected_item": format!("{} {}", key.0, key.1)}),
                ),
            }
        }
        for ((dk, id), c) in &want {
            if *c != 1 {
                queue_problems.push(
                    json!({"stage": "before catch-up", "device": dk, "message": id, "items": c}),
                );
            }
        }
        eprintln!(
            "queue before catch-up: {} items for {} expected offline deliveries, {} problems",
            items.len(),
            want.len(),
            queue_problems.len()
        );
    }

    // ----- catch-up: offline devices come online and sync; online ones sync what they
    // missed (counted apart) -----
    let catchup = Instant::now();
    let order: Vec<usize> = (k..n).chain(0..k).collect();
    let catchup_errors = sync_all(&shared, order, args.setup_parallel, args.retry_for).await;
    let catchup_secs = catchup.elapsed().as_secs_f64();
    let ops_final = dynamo.as_ref().map(|d| d.snapshot());
    let faults_injected = dynamo.as_ref().map(|d| d.injected()).unwrap_or_default();
    if let Some(d) = &dynamo {
        d.arm(false);
    }
    // With faults, one more sync of every device without them (an ack lost to a fault is
    // made good here; anything it shows is counted, so a duplicate would show); then nothing of
    // this run may be left in any queue.
    let mut final_sync_errors = Vec::new();
    if args.faults.is_some() || args.queue_table.is_some() {
        final_sync_errors = sync_all(&shared, (0..n).collect(), args.setup_parallel, 0).await;
    }
    if let Some(table) = &args.queue_table {
        let left = queue::scan(table, &prefix, &run_ids).await?;
        for (dk, id) in left.iter().take(50) {
            queue_problems
                .push(json!({"stage": "after catch-up", "left_item": format!("{dk} {id}")}));
        }
        eprintln!(
            "queue after catch-up: {} items of this run left",
            left.len()
        );
    }
    let catchup_errors: Vec<String> = catchup_errors
        .into_iter()
        .chain(final_sync_errors)
        .collect();

    // ----- checks -----
    let sends = shared
        .sends
        .lock()
        .map(|s| s.clone())
        .map_err(|_| err("lock"))?;
    let deliveries = shared
        .deliveries
        .lock()
        .map(|d| d.clone())
        .map_err(|_| err("lock"))?;
    let mut got: HashMap<(u64, usize), Vec<Via>> = HashMap::new();
    for d in &deliveries {
        got.entry((d.seq, d.device)).or_default().push(d.via);
    }
    // Also count the stored copies: a duplicate row would show here even without an event.
    let mut stored: HashMap<(u64, usize), usize> = HashMap::new();
    for (j, dev) in shared.devices.iter().enumerate() {
        let c = dev.sender.lock().await;
        for msg in c.store().all_messages()? {
            if let Some((seq, _)) = parse_text(&msg.text) {
                if msg.outgoing && msg.sender_device == c.whoami().map_or(0, |w| w.1) {
                    continue; // the sender's own copy
                }
                *stored.entry((seq, j)).or_default() += 1;
            }
        }
    }
    let mut lost = Vec::new();
    let mut dups = Vec::new();
    let mut late_online = 0u64;
    let accepted: Vec<&SendRec> = sends.iter().filter(|s| s.accepted_ms.is_some()).collect();
    let mut addressed = 0u64;
    for s in &accepted {
        for &d in &s.expected {
            addressed += 1;
            let v = got.get(&(s.seq, d)).map_or(&[][..], |v| v.as_slice());
            let st = stored.get(&(s.seq, d)).copied().unwrap_or(0);
            if v.is_empty() && st == 0 {
                lost.push(json!({"seq": s.seq, "device": d, "group": s.group, "sender": s.sender}));
            } else if v.len() > 1 || st > 1 {
                dups.push(json!({"seq": s.seq, "device": d, "events": v.len(), "stored": st}));
            }
            if online.contains(&d) && v.first() == Some(&Via::CatchUp) {
                late_online += 1;
            }
        }
    }
    let failed: Vec<serde_json::Value> = sends
        .iter()
        .filter(|s| s.accepted_ms.is_none())
        .map(|s| json!({"seq": s.seq, "sender": s.sender, "error": s.error}))
        .collect();

    // ----- numbers -----
    let mut send_lat: Vec<u64> = accepted
        .iter()
        .filter_map(|s| s.accepted_ms.map(|a| a - s.queued_ms))
        .collect();
    let mut lag: Vec<u64> = sends
        .iter()
        .map(|s| (s.queued_ms - phase_ms).saturating_sub(s.scheduled_ms))
        .collect();
    let mut deliv: Vec<u64> = deliveries
        .iter()
        .filter(|d| d.via == Via::Online)
        .map(|d| d.at_ms.saturating_sub(d.sent_ms))
        .collect();
    let cdf = {
        let mut v = deliv.clone();
        v.sort_unstable();
        v
    };
    let split = |group: bool| {
        let seqs: BTreeSet<u64> = sends
            .iter()
            .filter(|s| s.group == group)
            .map(|s| s.seq)
            .collect();
        let mut v: Vec<u64> = deliveries
            .iter()
            .filter(|d| d.via == Via::Online && seqs.contains(&d.seq))
            .map(|d| d.at_ms.saturating_sub(d.sent_ms))
            .collect();
        percentiles(&mut v)
    };
    let online_delivered = deliveries.iter().filter(|d| d.via == Via::Online).count();
    let catchup_delivered = deliveries.iter().filter(|d| d.via == Via::CatchUp).count();
    let bytes = |group: bool| {
        let v: Vec<(usize, usize, usize)> = accepted
            .iter()
            .filter(|s| s.group == group)
            .filter_map(|s| Some((s.bytes_stored?, s.expected.len(), s.request_bytes?)))
            .collect();
        if v.is_empty() {
            return json!(null);
        }
        let n = v.len() as f64;
        json!({
            "messages": v.len(),
            "stored_bytes_per_message": v.iter().map(|x| x.0).sum::<usize>() as f64 / n,
            "addressed_devices_per_message": v.iter().map(|x| x.1).sum::<usize>() as f64 / n,
            "stored_bytes_per_addressed_device": v.iter().map(|x| x.0).sum::<usize>() as f64 / v.iter().map(|x| x.1).sum::<usize>().max(1) as f64,
            "send_request_bytes": v.iter().map(|x| x.2).sum::<usize>() as f64 / n,
        })
    };
    let n1 = accepted.iter().filter(|s| !s.group).count() as f64;
    let ng = accepted.iter().filter(|s| s.group).count() as f64;
    let dynamo_json = match (&ops_before, &ops_after, &ops_final) {
        (Some(b), Some(a), Some(f)) => {
            let phase = proxy::diff(b, a);
            let catch = proxy::diff(a, f);
            let reqs: u64 = phase.values().map(|o| o.requests).sum();
            let micros: u64 = phase.values().map(|o| o.store_micros).sum();
            json!({
                "measured_phase": ops_json(&phase),
                "catch_up": ops_json(&catch),
                "requests_measured_phase": reqs,
                "requests_per_message_measured_phase": reqs as f64 / accepted.len().max(1) as f64,
                "store_ms_measured_phase": micros as f64 / 1000.0,
                "store_ms_per_message": micros as f64 / 1000.0 / accepted.len().max(1) as f64,
                "requests_catch_up": catch.values().map(|o| o.requests).sum::<u64>(),
            })
        }
        _ => json!(null),
    };
    let gw = gateway_times(&args.gateway_log, log_before, log_after);
    let ok = lost.is_empty()
        && dups.is_empty()
        && failed.is_empty()
        && catchup_errors.is_empty()
        && queue_problems.is_empty();
    let retried = accepted.iter().filter(|s| s.retries > 0).count();
    let result = json!({
        "config": {
            "endpoint": args.endpoint, "accounts": m, "devices": n, "online": k,
            "rate": args.rate, "duration_s": args.duration, "group_share": args.group_share,
            "group_size": g_size, "groups": shared.groups.len(), "group_senders": args.group_senders,
            "text_bytes": format!("lg {} {} {}", total, phase_ms, shared.pad).len(),
        },
        "setup_s": setup_secs,
        "sent": {"attempted": sends.len(), "accepted": accepted.len(), "one_to_one": n1, "group": ng,
                  "failed": failed.len(), "per_s": accepted.len() as f64 / send_secs,
                  "send_phase_s": send_secs},
        "generator_lag_ms": percentiles(&mut lag),
        "send_latency_ms": percentiles(&mut send_lat),
        "delivery_latency_ms": percentiles(&mut deliv),
        "delivery_latency_ms_one_to_one": split(false),
        "delivery_latency_ms_group": split(true),
        "delivered": {
            "addressed_deliveries": addressed,
            "online_expected": expected_online,
            "online_pushed": online_delivered,
            "online_per_s": online_delivered as f64 / online_secs,
            "online_caught_up_late": late_online,
            "catch_up": catchup_delivered,
            "catch_up_s": catchup_secs,
            "catch_up_per_s": catchup_delivered as f64 / catchup_secs.max(1e-9),
        },
        "bytes_one_to_one": bytes(false),
        "bytes_group": bytes(true),
        "dynamodb": dynamo_json,
        "gateway_ms": gw,
        "faults": {"injected": faults_injected, "sends_retried": retried,
                   "send_retries": accepted.iter().map(|s| s.retries as u64).sum::<u64>()},
        "check": {"ok": ok, "lost": lost.len(), "duplicates": dups.len(), "send_failures": failed.len(),
                  "catch_up_errors": catchup_errors,
                  "queue_checked": args.queue_table.is_some(),
                  "queue_problems": queue_problems,
                  "lost_list": lost.iter().take(50).collect::<Vec<_>>(),
                  "duplicate_list": dups.iter().take(50).collect::<Vec<_>>(),
                  "failure_list": failed.iter().take(50).collect::<Vec<_>>()},
    });
    print_table(&result);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&result)?)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &args.plot {
        let title = format!(
            "send-to-delivery CDF: {} devices online, {} msg/s, {:.0}% group",
            k,
            args.rate,
            args.group_share * 100.0
        );
        plot::cdf(p, &title, &cdf).map_err(|e| err(format!("plot: {e}")))?;
        eprintln!("wrote {}", p.display());
    }
    if !ok {
        eprintln!(
            "FAILED: {} lost, {} duplicated, {} sends failed, {} catch-up errors, {} queue problems",
            lost.len(),
            dups.len(),
            failed.len(),
            result["check"]["catch_up_errors"]
                .as_array()
                .map_or(0, |a| a.len()),
            queue_problems.len()
        );
        for q in queue_problems.iter().take(20) {
            eprintln!("  queue: {q}");
        }
        for l in lost.iter().take(20) {
            eprintln!("  lost: {l}");
        }
        for d in dups.iter().take(20) {
            eprintln!("  duplicate: {d}");
        }
        for f in failed.iter().take(20) {
            eprintln!("  send failed: {f}");
        }
    }
    Ok(ok)
}

fn print_table(r: &serde_json::Value) {
    let c = &r["config"];
    println!(
        "cipherpost-loadgen: {} accounts, {} devices, {} online, {} msg/s for {} s, group share {} (groups of {})",
        c["accounts"], c["devices"], c["online"], c["rate"], c["duration_s"], c["group_share"], c["group_size"]
    );
    let f = |v: &serde_json::Value| match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
        None => "-".into(),
    };
    println!("| metric | value |");
    println!("|---|---:|");
    let s = &r["sent"];
    println!(
        "| sent (accepted / attempted) | {} / {} ({} 1:1, {} group) |",
        s["accepted"],
        s["attempted"],
        f(&s["one_to_one"]),
        f(&s["group"])
    );
    println!("| sent per second | {} |", f(&s["per_s"]));
    let d = &r["delivered"];
    println!(
        "| online deliveries (pushed / expected) | {} / {} |",
        d["online_pushed"], d["online_expected"]
    );
    println!(
        "| online deliveries per second | {} |",
        f(&d["online_per_s"])
    );
    println!(
        "| catch-up deliveries (offline devices) | {} in {} s ({}/s) |",
        d["catch_up"],
        f(&d["catch_up_s"]),
        f(&d["catch_up_per_s"])
    );
    for (name, key) in [
        ("generator lag", "generator_lag_ms"),
        ("send latency (queue → accepted)", "send_latency_ms"),
        ("send-to-delivery, all", "delivery_latency_ms"),
        ("send-to-delivery, 1:1", "delivery_latency_ms_one_to_one"),
        ("send-to-delivery, group", "delivery_latency_ms_group"),
    ] {
        let p = &r[key];
        println!(
            "| {name} p50 / p95 / p99 / max (ms) | {} / {} / {} / {} |",
            f(&p["p50"]),
            f(&p["p95"]),
            f(&p["p99"]),
            f(&p["max"])
        );
    }
    for (name, key) in [("1:1", "bytes_one_to_one"), ("group", "bytes_group")] {
        let b = &r[key];
        if !b.is_null() {
            println!(
                "| bytes stored per {name} message (devices) | {} ({} devices, {} per device) |",
                f(&b["stored_bytes_per_message"]),
                f(&b["addressed_devices_per_message"]),
                f(&b["stored_bytes_per_addressed_device"])
            );
        }
    }
    let dy = &r["dynamodb"];
    if !dy.is_null() {
        println!(
            "| DynamoDB requests per message (measured phase, all traffic) | {} |",
            f(&dy["requests_per_message_measured_phase"])
        );
        println!(
            "| moto time per message (sum of its answer times) | {} ms |",
            f(&dy["store_ms_per_message"])
        );
        if let Some(o) = dy["measured_phase"].as_object() {
            let parts: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{k} {}", v["requests"]))
                .collect();
            println!("| DynamoDB requests by operation | {} |", parts.join(", "));
        }
    }
    if let Some(o) = r["gateway_ms"].as_object() {
        for (k, v) in o {
            println!(
                "| gateway {k}: n, p50 / p95 / max (ms) | {}, {} / {} / {} |",
                v["n"],
                f(&v["p50"]),
                f(&v["p95"]),
                f(&v["max"])
            );
        }
    }
    if let Some(inj) = r["faults"]["injected"]
        .as_object()
        .filter(|m| !m.is_empty())
    {
        let list: Vec<String> = inj.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "| faults injected into DynamoDB requests | {} (sends flushed again: {} of them, {} retries) |",
            list.join(", "),
            r["faults"]["sends_retried"],
            r["faults"]["send_retries"]
        );
    }
    if r["check"]["queue_checked"] == true {
        println!(
            "| queue check (one item per message and offline device before its sync, none after) | {} problems |",
            r["check"]["queue_problems"].as_array().map_or(0, |a| a.len())
        );
    }
    let ch = &r["check"];
    println!(
        "| check: lost / duplicates / failed sends | {} / {} / {} → {} |",
        ch["lost"],
        ch["duplicates"],
        ch["send_failures"],
        if ch["ok"].as_bool() == Some(true) {
            "OK"
        } else {
            "FAILED"
        }
    );
}
