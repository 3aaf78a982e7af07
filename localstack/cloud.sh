#!/usr/bin/env bash
# The local AWS emulator for cipherpost: moto in server mode as the DynamoDB and S3 endpoint,
# with the tables and bucket of infra/tables.json. See localstack/README.md.
#
#   localstack/cloud.sh install     venv at .venv with moto[server] (quick when present)
#   localstack/cloud.sh start       install if needed, start moto (or reuse one), bootstrap
#   localstack/cloud.sh bootstrap   create the tables and bucket (idempotent)
#   localstack/cloud.sh check       check that they exist as infra/tables.json defines them
#   localstack/cloud.sh status      is it answering, and which process
#   localstack/cloud.sh stop        stop the moto this script started
#   localstack/cloud.sh env         print the export lines for functions, gateway and tests
#
# Variables: CIPHERPOST_MOTO_PORT (default 4566), AWS_ENDPOINT_URL (default
# http://127.0.0.1:$CIPHERPOST_MOTO_PORT), CIPHERPOST_LOCAL_STATE (pid and log folder, default
# target/local), CIPHERPOST_MOTO_START_SECS (start timeout, default 30), CIPHERPOST_PYTHON
# (interpreter for the venv, default python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
VENV="$ROOT/.venv"
PORT="${CIPHERPOST_MOTO_PORT:-4566}"
ENDPOINT="${AWS_ENDPOINT_URL:-http://127.0.0.1:$PORT}"
STATE="${CIPHERPOST_LOCAL_STATE:-$ROOT/target/local}"
PIDFILE="$STATE/moto-$PORT.pid"
LOGFILE="$STATE/moto-$PORT.log"
START_SECS="${CIPHERPOST_MOTO_START_SECS:-30}"
MOTO_SPEC='moto[server]>=5.2,<5.3'

say() { printf '\033[1mcloud: %s\033[0m\n' "$*" >&2; }
die() { printf 'cloud: error: %s\n' "$*" >&2; exit 1; }

python_bin() {
  if [[ -x "$VENV/bin/python" ]]; then echo "$VENV/bin/python"; else echo "${CIPHERPOST_PYTHON:-python3}"; fi
}

# True when an emulator answers at $ENDPOINT (moto's /moto-api/, or LocalStack's health page).
answers() {
  "$(python_bin)" - "$ENDPOINT" <<'PY' >/dev/null 2>&1
import sys, urllib.request
base = sys.argv[1].rstrip("/")
for path in ("/moto-api/", "/_localstack/health"):
    try:
        with urllib.request.urlopen(base + path, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
sys.exit(1)
PY
}

running_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q moto_server "/proc/$pid/cmdline" 2>/dev/null \
    && { echo "$pid"; return 0; }
  return 1
}

cmd_install() {
  if [[ -x "$VENV/bin/moto_server" ]] && "$VENV/bin/python" -c 'import moto, boto3' 2>/dev/null; then
    say "moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)') already installed in .venv"
    return 0
  fi
  local py="${CIPHERPOST_PYTHON:-python3}"
  command -v "$py" >/dev/null || die "$py not found (set CIPHERPOST_PYTHON to a Python 3.9+ interpreter)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    "$py" -m venv "$VENV"
  fi
  say "installing $MOTO_SPEC into .venv (about a minute)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$MOTO_SPEC"
  say "installed moto $("$VENV/bin/python" -c 'import moto; print(moto.__version__)')"
}

cmd_bootstrap() {
  [[ -x "$VENV/bin/python" ]] || die "no .venv: run '$0 install' first"
  AWS_ENDPOINT_URL="$ENDPOINT" AWS_REGION="${AWS_REGION:-us-east-1}" \
    AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}" \
    "$VENV/bin/python" "$HERE/bootstrap.py" "$@"
}

cmd_start() {
  if answers; then
    say "an emulator already answers at $ENDPOINT: reusing it"
  else
    cmd_install
    mkdir -p "$STATE"
    say "starting moto_server on 127.0.0.1:$PORT (log: $LOGFILE)"
    # setsid: its own session, so a Ctrl-C meant for a foreground command does not reach it;
    # `stop` ends it by the pid written here.
    # moto_server_serialized.py is moto_server with one lock around DynamoDB requests (moto's
    # TransactWriteItems is not thread-safe; see that file).
    setsid "$VENV/bin/python" "$HERE/moto_server_serialized.py" -H 127.0.0.1 -p "$PORT" \
      >"$LOGFILE" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    local deadline=$((SECONDS + START_SECS))
    until answers; do
      if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PIDFILE"
        tail -n 20 "$LOGFILE" >&2 || true
        die "moto_server exited during start-up (port $PORT in use? see $LOGFILE)"
      fi
      if ((SECONDS >= deadline)); then
        kill "$pid" 2>/dev/null || true
        rm -f "$PIDFILE"
        tail -n 20 "$LOGFILE" >&2 || true
        die "moto_server did not answer GET $ENDPOINT/moto-api/ within ${START_SECS}s"
      fi
      sleep 0.2
    done
    say "moto_server (pid $pid) answers at $ENDPOINT"
  fi
  cmd_bootstrap
}

cmd_stop() {
  local pid
  if pid="$(running_pid)"; then
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    say "stopped moto_server (pid $pid)"
  else
    rm -f "$PIDFILE"
    if answers; then
      say "an emulator answers at $ENDPOINT but this script did not start it: left running"
    else
      say "nothing to stop on port $PORT"
    fi
  fi
}

cmd_status() {
  local pid
  if answers; then
    if pid="$(running_pid)"; then
      say "moto_server (pid $pid, started by this script) answers at $ENDPOINT"
    else
      say "an emulator answers at $ENDPOINT (not started by this script)"
    fi
  else
    say "nothing answers at $ENDPOINT"
    return 1
  fi
}

cmd_env() {
  cat <<EOF
export AWS_ENDPOINT_URL=$ENDPOINT
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_DEFAULT_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export CIPHERPOST_WS_ENDPOINT=${CIPHERPOST_WS_ENDPOINT:-http://${CIPHERPOST_LISTEN:-127.0.0.1:8787}}
EOF
  "$(python_bin)" "$HERE/bootstrap.py" --env
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

case "${1:-help}" in
  install) cmd_install ;;
  start) cmd_start ;;
  bootstrap) shift; cmd_bootstrap "$@" ;;
  check) cmd_bootstrap --check ;;
  list) cmd_bootstrap --list ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  help | -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
