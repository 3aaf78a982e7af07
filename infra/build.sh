#!/usr/bin/env bash
# Release builds of every Lambda function with cargo lambda, then each bootstrap's size and
# start-up time (process start to ready for the first event), as a markdown table on stdout and
# in target/lambda/startup.md.
#
#   infra/build.sh                 build (x86-64) + sizes + start-up times
#   infra/build.sh --measure-only  sizes + start-up times of the bootstraps already built
#   infra/build.sh --synth         also `npx cdk synth` (offline, x86-64) after the build, timed
#   infra/build.sh --runs N        start-ups per function (default 20)
#
# Architecture: x86-64 here. The stack deploys arm64 by default, which needs
# `cargo lambda build --release --arm64`; that needs the aarch64-unknown-linux-gnu target from
# rustup, which this machine's package registries do not serve, so neither this script nor CI
# depends on it. CIPHERPOST_LAMBDA_ARCH=arm64 builds arm64 where the target is installed (the
# start-up measurement then needs an arm64 host and is skipped elsewhere).
#
# cargo-lambda comes from PyPI (it brings zig for linking) into the project venv .venv, created
# here if missing. A cold release build of the six functions takes many minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

MEASURE_ONLY=0
SYNTH=0
RUNS=20
while [ $# -gt 0 ]; do
  case "$1" in
    --measure-only) MEASURE_ONLY=1 ;;
    --synth) SYNTH=1 ;;
    --runs) RUNS="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

ARCH="${CIPHERPOST_LAMBDA_ARCH:-x86_64}"
case "$ARCH" in
  x86_64) ARCH_FLAG=--x86-64 ;;
  arm64) ARCH_FLAG=--arm64 ;;
  *) echo "CIPHERPOST_LAMBDA_ARCH must be x86_64 or arm64, got $ARCH" >&2; exit 2 ;;
esac

# cargo-lambda in the project venv.
VENV="$PWD/.venv"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "${CIPHERPOST_PYTHON:-python3}" -m venv "$VENV"
fi
if [ ! -x "$VENV/bin/cargo-lambda" ]; then
  say "installing cargo-lambda into $VENV (PyPI, with zig)"
  "$VENV/bin/pip" install --quiet cargo-lambda
fi
export PATH="$VENV/bin:$PATH"

mapfile -t FUNCTIONS < <(python3 infra/startup.py --list)
[ "${#FUNCTIONS[@]}" -gt 0 ] || { echo "no function crates with a binary under functions/" >&2; exit 1; }

if [ "$MEASURE_ONLY" = 0 ]; then
  PACKAGES=()
  for f in "${FUNCTIONS[@]}"; do PACKAGES+=(-p "${f%% *}"); done
  say "cargo lambda build --release $ARCH_FLAG (${#FUNCTIONS[@]} functions; $(cargo lambda --version))"
  start=$(date +%s)
  # The same flags cargo-lambda-cdk passes when it bundles (--release, the architecture), so a
  # later `cdk synth` or `cdk deploy` finds everything compiled.
  cargo lambda build --release "$ARCH_FLAG" --locked "${PACKAGES[@]}"
  say "built in $(( $(date +%s) - start )) s"
fi

if [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
  say "arm64 bootstraps cannot start on $(uname -m): sizes only"
  for f in "${FUNCTIONS[@]}"; do
    b="${f##* }"
    printf '%s\t%s bytes\n' "$b" "$(stat -c %s "target/lambda/$b/bootstrap")"
  done
else
  say "sizes and start-up times ($RUNS runs each)"
  python3 infra/startup.py --runs "$RUNS"
fi

if [ "$SYNTH" = 1 ]; then
  cd infra
  [ -d node_modules ] || { say "npm ci (infra)"; npm ci --no-audit --no-fund; }
  say "npx cdk synth -c arch=$ARCH (offline; bundles with cargo lambda)"
  start=$(date +%s)
  npx cdk synth -c arch="$ARCH" --quiet
  say "synthesized in $(( $(date +%s) - start )) s (template: infra/cdk.out/)"
fi
