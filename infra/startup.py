#!/usr/bin/env python3
"""Sizes and start-up times of the Lambda bootstraps that `cargo lambda build` wrote.

For each function binary (functions/*/Cargo.toml [[bin]]) this reports the size of
target/lambda/<bin>/bootstrap, its size zipped (what Lambda stores), and its start-up time: from
process start to its first `GET /2018-06-01/runtime/invocation/next`, i.e. to the moment it is
ready for its first event. The Runtime API is a tiny local HTTP server that records that request
and never answers it; the process is then killed. No AWS endpoint is contacted: the backend builds
its SDK clients at start-up but sends nothing until the first event.

This is the initialisation a cold start pays inside the sandbox (Lambda's "Init Duration" less its
own set-up), measured on this machine; Lambda's CPU share (256 MB is ~1/7 of a vCPU) makes it
slower there.

Usage: infra/startup.py [--runs N] [--out FILE] [--list]
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import io
import json
import os
import platform
import re
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEXT = "/2018-06-01/runtime/invocation/next"


def function_binaries() -> list[tuple[str, str]]:
    """(package, binary) of every crate under functions/ that has a binary."""
    out = []
    for manifest in sorted((ROOT / "functions").glob("*/Cargo.toml")):
        text = manifest.read_text()
        package = re.search(r'^\[package\][^\[]*?^name\s*=\s*"([^"]+)"', text, re.M | re.S)
        for section in re.split(r"^\[\[bin\]\]\s*$", text, flags=re.M)[1:]:
            m = re.search(r'^\s*name\s*=\s*"([^"]+)"', section.split("\n[")[0], re.M)
            if m and package:
                out.append((package.group(1), m.group(1)))
    return out


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _runtime_api():
    """A Runtime API that notes when /next is first asked for and keeps the request open."""
    first = threading.Event()
    state: dict[str, float] = {}
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == NEXT:
                if not first.is_set():
                    state["t"] = time.perf_counter()
                    first.set()
                release.wait(30)  # never answered: the process is killed meanwhile
                return
            self.send_error(404)

        def do_POST(self):  # noqa: N802 (an init error report, if any)
            length = int(self.headers.get("content-length") or 0)
            state["init_error"] = self.rfile.read(length).decode("utf-8", "replace")
            self.send_response(202)
            self.end_headers()
            first.set()

        def log_message(self, *args):
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server, first, state, release


def _env(binary: str, port: int, home: str) -> dict[str, str]:
    defs = json.loads((ROOT / "infra" / "tables.json").read_text())
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": home,  # no ~/.aws of this machine
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": f"cipherpost-{binary}",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/cipherpost-{binary}",
        "AWS_LAMBDA_LOG_STREAM_NAME": "startup",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
        "CIPHERPOST_WS_ENDPOINT": "https://abcdef1234.execute-api.us-east-1.amazonaws.com/prod",
        "RUST_LOG": "info",
    }
    for t in defs["tables"].values():
        env[t["env"]] = t["default_name"]
    for b in defs["buckets"].values():
        env[b["env"]] = b["default_name"]
    return env


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(binary: str, bootstrap: Path, home: str) -> tuple[float, int | None]:
    """Seconds from spawn to the first /next, and the RSS then."""
    server, first, state, release = _runtime_api()
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(bootstrap)],
            env=_env(binary, server.server_address[1], home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while not first.wait(0.01):
                if proc.poll() is not None:
                    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
                    raise RuntimeError(f"{binary} exited with {proc.returncode} before asking for an event:\n{err[-2000:]}")
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"{binary} did not ask for an event within 30 s")
            if "init_error" in state:
                raise RuntimeError(f"{binary} reported an init error: {state['init_error']}")
            rss = _rss_kib(proc.pid)
            return state["t"] - t0, rss
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def zipped_size(path: Path) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(path, "bootstrap")
    return len(buf.getvalue())


def mib(n: int) -> str:
    return f"{n / 1048576:.2f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="start-ups per function (default 20)")
    ap.add_argument("--out", default=str(ROOT / "target" / "lambda" / "startup.md"))
    ap.add_argument("--list", action="store_true", help="print 'package binary' per function and exit")
    args = ap.parse_args()

    functions = function_binaries()
    if args.list:
        for package, binary in functions:
            print(package, binary)
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as home:
        for _package, binary in functions:
            bootstrap = ROOT / "target" / "lambda" / binary / "bootstrap"
            if not bootstrap.exists():
                print(f"missing {bootstrap}: run cargo lambda build --release first", file=sys.stderr)
                return 1
            measure(binary, bootstrap, home)  # warm the page cache: the first run reads the file
            times, rss = [], []
            for _ in range(args.runs):
                t, r = measure(binary, bootstrap, home)
                times.append(t * 1000)
                if r:
                    rss.append(r)
            times.sort()
            p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
            size = bootstrap.stat().st_size
            rss_text = f"{statistics.median(rss) / 1024:.1f} MiB" if rss else "?"
            rows.append(
                f"| `{binary}` | {mib(size)} | {mib(zipped_size(bootstrap))} | "
                f"{statistics.median(times):.1f} | {times[0]:.1f} | {p90:.1f} | {rss_text} |"
            )

    arch = subprocess.run(["file", "-b", str(ROOT / "target" / "lambda" / functions[0][1] / "bootstrap")],
                          capture_output=True, text=True).stdout.split(",")[:2] if functions else []
    lines = [
        "## Lambda bootstraps: size and start-up",
        "",
        f"Measured {datetime.date.today().isoformat()} by `infra/build.sh` on this machine "
        f"({os.cpu_count()} cores, {platform.machine()}; binaries: {', '.join(a.strip() for a in arch)}), "
        f"`cargo lambda build --release`. Start-up: process spawn to the first "
        f"`GET {NEXT}` (ready for the first event), {args.runs} runs after one warm-up; "
        f"RSS at that moment.",
        "",
        "| function | bootstrap | zipped | start-up median (ms) | min (ms) | p90 (ms) | RSS when ready |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"(written to {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
