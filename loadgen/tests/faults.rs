//! Faults (issue #9): the load generator's real clients send 1:1 and group messages through a
//! local gateway whose DynamoDB traffic passes a fault-injecting proxy (a real network hop in
//! front of moto: throttling and 500 answers, connections reset before forwarding, answers
//! dropped after moto applied the request, delays), and the gateway is killed and started
//! again in the middle of the load. After the clients' retries every accepted message must
//! reach every addressed device exactly once (events and stored rows), each offline device's
//! queue must hold exactly one item per message before it syncs and none after, every fault
//! kind must have been injected, and no handler may have panicked.
//!
//! Needs the local cloud's environment (`AWS_ENDPOINT_URL` of moto and the table variables, as
//! `./dev test` sets them) and the built gateway binary (`./dev test` builds it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CIPHERPOST_GATEWAY_BIN") {
        return p.into();
    }
    // target/debug/deps/faults-<hash> -> target/debug/cipherpost-local-gateway
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("cipherpost-local-gateway")
}

/// Starts the gateway on `addr` with its DynamoDB (and S3) endpoint at `aws`, logging to `log`.
fn gateway(addr: &str, aws: &str, log: &Path) -> Killed {
    let bin = gateway_binary();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cipherpost-local-gateway` (./dev test does)",
        bin.display()
    );
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(&bin)
        .env("AWS_ENDPOINT_URL", aws)
        .env("CIPHERPOST_LISTEN", addr)
        .env("CIPHERPOST_WS_ENDPOINT", format!("http://{addr}"))
        .env("RUST_BACKTRACE", "1")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("the gateway exited: {status}");
        }
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

#[test]
fn every_message_arrives_once_through_store_faults_and_a_gateway_restart() {
    let moto = std::env::var("AWS_ENDPOINT_URL")
        .expect("AWS_ENDPOINT_URL (moto) must be set: eval \"$(localstack/cloud.sh env)\"");
    let upstream = moto.trim_start_matches("http://").trim_end_matches('/');
    let queue_table =
        std::env::var("CIPHERPOST_TABLE_QUEUE").unwrap_or_else(|_| "cipherpost-queue".into());
    let dir = tempfile::tempdir().unwrap();
    let proxy_port = free_port();
    let addr = format!("127.0.0.1:{}", free_port());
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let json = dir.path().join("faults.json");

    let mut loadgen = Killed(
        Command::new(env!("CARGO_BIN_EXE_cipherpost-loadgen"))
            .args([
                "--endpoint",
                &format!("http://{addr}"),
                "--accounts",
                "4",
                "--devices",
                "8",
                "--online",
                "4",
                "--rate",
                "3",
                "--duration",
                "12",
                "--group-share",
                "0.3",
                "--group-size",
                "4",
                "--drain",
                "30",
                "--count-dynamodb-proxy-port",
                &proxy_port.to_string(),
                "--dynamodb-upstream",
                upstream,
                "--faults",
                "throttle=7,error500=11,reset=13,drop=17,delay=5:150",
                "--retry-for",
                "90",
                "--queue-table",
                &queue_table,
                "--json",
                json.to_str().unwrap(),
            ])
            .env("AWS_ENDPOINT_URL", &moto)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The proxy is the load generator's: wait for it before the gateway's first request.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the load generator's proxy did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log1 = dir.path().join("gateway-1.log");
    let log2 = dir.path().join("gateway-2.log");
    let mut gw = gateway(&addr, &proxy, &log1);

    // Forward the load generator's output, noting when the measured phase starts.
    let (tx, rx) = mpsc::channel();
    let stderr = loadgen.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("measured phase") {
                let _ = tx.send(());
            }
            eprintln!("loadgen: {line}");
        }
    });
    let stdout = loadgen.0.stdout.take().unwrap();
    let printed = std::thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    });
    rx.recv_timeout(Duration::from_secs(400))
        .expect("the load generator never reached its measured phase");

    // Kill the gateway mid-load (no graceful shutdown) and start it again on the same port.
    std::thread::sleep(Duration::from_secs(4));
    drop(gw);
    std::thread::sleep(Duration::from_millis(1500));
    gw = gateway(&addr, &proxy, &log2);

    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = loadgen.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the load generator did not finish in 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(gw);
    eprintln!("{}", printed.join().unwrap());
    assert!(status.success(), "the load generator failed: {status}");

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["check"]["ok"], true, "{}", r["check"]);
    assert_eq!(r["check"]["queue_checked"], true);
    assert_eq!(r["check"]["lost"], 0);
    assert_eq!(r["check"]["duplicates"], 0);
    assert_eq!(r["sent"]["failed"], 0);
    assert_eq!(r["sent"]["accepted"], r["sent"]["attempted"]);
    assert!(
        r["sent"]["accepted"].as_u64().unwrap() >= 30,
        "{}",
        r["sent"]
    );
    for kind in ["throttle", "error500", "reset", "drop", "delay"] {
        assert!(
            r["faults"]["injected"][kind].as_u64().unwrap_or(0) >= 1,
            "no {kind} fault was injected: {}",
            r["faults"]
        );
    }
    for log in [&log1, &log2] {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            !text.contains("panicked"),
            "a handler panicked ({}):\n{text}",
            log.display()
        );
    }
}
