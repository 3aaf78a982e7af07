#!/usr/bin/env bash
# The cipherpost demo (`./dev demo` calls this after bringing up the local cloud): alice with two
# devices, bob with three, all linked through the real link flow; messages both ways while one
# of bob's devices is offline; that device comes back; each device's view is shown with its
# delivery and read states. Exits 0 only if every device saw every message exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."

ENDPOINT="${CIPHERPOST_API:-http://127.0.0.1:8787}"
if ! curl -s -o /dev/null --max-time 3 "$ENDPOINT/v1/keys"; then
  echo "demo: no local cloud answers at $ENDPOINT; start it with ./dev up" >&2
  exit 1
fi
cargo build -q -p cipherpost-client
CP="$PWD/target/debug/cipherpost"
HOMES="$(mktemp -d)"
trap 'rm -rf "$HOMES"' EXIT
export CIPHERPOST_ENDPOINT="$ENDPOINT"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
on() { local d="$1"; shift; "$CP" --profile "$HOMES/$d" "$@"; }
code_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)["code"])'; }
link() { # link NEW_PROFILE EXISTING_PROFILE USER
  local code
  code="$(on "$1" --json link request "$3" | code_of)"
  on "$2" link approve "$code"
  on "$1" sync
}

SUFFIX="$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
ALICE="alice-$SUFFIX"; BOB="bob-$SUFFIX"

say "alice registers on her phone (a1) and links her laptop (a2)"
on a1 register "$ALICE"
link a2 a1 "$ALICE"
say "bob registers on his phone (b1) and links a tablet (b2) and a desktop (b3)"
on b1 register "$BOB"
link b2 b1 "$BOB"
link b3 b1 "$BOB"
on b1 devices

say "b3 goes offline; messages both ways"
on a1 send "$BOB" "hello bob, from alice's phone"
on b1 send "$ALICE" "hi alice, from bob's phone"
on a2 send "$BOB" "and from alice's laptop"
on b2 send "$ALICE" "bob's tablet says hi"
for d in a1 a2 b1 b2; do say "sync $d"; on "$d" sync; done
say "bob reads on his phone, alice on her laptop"
on b1 read "$ALICE" >/dev/null
on a2 read "$BOB" >/dev/null
for d in a1 a2 b1 b2; do on "$d" sync >/dev/null; done
say "b3 comes back online"
on b3 sync

say "every device's view"
for d in a1 a2; do echo "--- $d (alice)"; on "$d" history "$BOB"; done
for d in b1 b2 b3; do echo "--- $d (bob)"; on "$d" history "$ALICE"; done

say "checking: every device saw all 4 messages exactly once"
fail=0
for spec in "a1:$BOB" "a2:$BOB" "b1:$ALICE" "b2:$ALICE" "b3:$ALICE"; do
  d="${spec%%:*}"; peer="${spec#*:}"
  on "$d" --json history "$peer" | python3 -c '
import json, sys
msgs = json.load(sys.stdin)
texts = sorted(m["text"] for m in msgs)
ids = [m["message_id"] for m in msgs]
want = sorted(["hello bob, from alice'"'"'s phone", "hi alice, from bob'"'"'s phone", "and from alice'"'"'s laptop", "bob'"'"'s tablet says hi"])
ok = texts == want and len(set(ids)) == len(ids)
print(("ok  " if ok else "FAIL"), sys.argv[1], texts)
sys.exit(0 if ok else 1)' "$d" || fail=1
done
if [ "$fail" = 0 ]; then say "demo passed"; else say "demo FAILED"; fi
exit "$fail"
