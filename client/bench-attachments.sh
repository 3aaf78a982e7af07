#!/usr/bin/env bash
# End-to-end time and peak memory of attachments on the local cloud (issue #6), through the
# `cipherpost` CLI as a user runs it: one process encrypts a file while streaming it from disk
# and uploads it (`send --file`), another downloads, verifies and decrypts it (`sync`).
#
#   client/bench-attachments.sh [SIZES_MIB...]      default: 1 20 100
#
# Needs the local cloud (./dev up, or localstack/cloud.sh + the gateway) at $CIPHERPOST_API
# (default http://127.0.0.1:8787) and GNU time at /usr/bin/time. Uses target/$PROFILE/cipherpost
# (PROFILE=debug by default; the crypto crates are optimised even in debug builds, see the
# workspace Cargo.toml; PROFILE=release builds with LTO). Peak memory is the process's maximum
# resident set size (VmHWM) as GNU time reports it.
#
# moto keeps S3 objects in memory and grew to several GB over a few 100 MiB runs here: restart
# it (localstack/cloud.sh stop && start) after benchmarking on a shared machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-debug}"
API="${CIPHERPOST_API:-http://127.0.0.1:8787}"
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1 20 100)

if [ "$PROFILE" = release ]; then
  cargo build --release -q -p cipherpost-client --bin cipherpost --manifest-path "$ROOT/Cargo.toml"
else
  cargo build -q -p cipherpost-client --bin cipherpost --manifest-path "$ROOT/Cargo.toml"
fi
BIN="$ROOT/target/$PROFILE/cipherpost"
[ -x /usr/bin/time ] || { echo "needs GNU time at /usr/bin/time" >&2; exit 1; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
CLI=("$BIN" --endpoint "$API" --json)

suffix="$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
alice="bench-a-$suffix"
bob="bench-b-$suffix"
"${CLI[@]}" --profile "$WORK/alice" register "$alice" >/dev/null
"${CLI[@]}" --profile "$WORK/bob" register "$bob" >/dev/null

# Seconds and peak KiB of one command: "<elapsed> <maxrss_kib>".
measure() {
  /usr/bin/time -f '%e %M' -o "$WORK/time" "$@" >"$WORK/out" 2>"$WORK/err" || {
    cat "$WORK/err" >&2
    exit 1
  }
  cat "$WORK/time"
}

printf '%-8s | %-26s | %-26s | %-9s | %s\n' "size" "send: encrypt+upload" "sync: download+decrypt" "total" "identical"
printf '%-8s | %-26s | %-26s | %-9s | %s\n' "--------" "--------------------------" "--------------------------" "---------" "---------"
for mib in "${SIZES[@]}"; do
  file="$WORK/file-$mib.bin"
  head -c "$((mib * 1024 * 1024))" /dev/urandom >"$file"
  read -r s_t s_kb < <(measure "${CLI[@]}" --profile "$WORK/alice" send "$bob" --file "$file")
  grep -q '"sent":true' "$WORK/out" || { echo "send did not complete: $(cat "$WORK/out")" >&2; exit 1; }
  read -r r_t r_kb < <(measure "${CLI[@]}" --profile "$WORK/bob" sync)
  got="$(ls "$WORK/bob/attachments/"*"-file-$mib.bin")"
  same=no
  cmp -s "$file" "$got" && same=yes
  total="$(awk -v a="$s_t" -v b="$r_t" 'BEGIN { printf "%.2f s", a + b }')"
  printf '%-8s | %6.2f s, peak %6.1f MiB   | %6.2f s, peak %6.1f MiB   | %-9s | %s\n' \
    "$mib MiB" "$s_t" "$(awk -v k="$s_kb" 'BEGIN { print k / 1024 }')" \
    "$r_t" "$(awk -v k="$r_kb" 'BEGIN { print k / 1024 }')" "$total" "$same"
  rm -f "$file" "$got"
done
