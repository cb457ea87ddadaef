#!/usr/bin/env bash
# `make test`: everything a change must pass, on a fresh machine or a warm one.
#   1. tools (etcd, kube-apiserver, kube-controller-manager, kubectl, helm, Kafka) into the cache
#   2. cargo fmt --check, clippy -D warnings, unit tests (no environment needed)
#   3. the local environment (unless one is already up, which is then left running)
#   4. integration and end-to-end tests against it
#   5. a second environment with 3 Kafka brokers beside the first, the multi-broker suite in
#      it (a broker killed mid-stream), and that environment stopped again, also on failure
#   6. the container image built and its binaries started (localenv/image.sh)
#   7. the environment stopped again, also on failure
set -euo pipefail
cd "$(dirname "$0")/.."
export HOOKLINE_CACHE="${HOOKLINE_CACHE:-$HOME/.cache/hookline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOOKLINE_CACHE/target}"
# Two cores: let cargo use both, and keep debug info small so links stay fast.
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}"

start=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }

for tool in cargo go java mvn openssl python3; do
  command -v "$tool" >/dev/null || { echo "make test: '$tool' is not on PATH; install it (see README, Requirements)" >&2; exit 1; }
done

step "tools (cold: ~20 min for the Go builds; warm: seconds)"
localenv/tools.sh

step "cargo fmt --check"
cargo fmt --all --check

step "layout: core free of I/O crates, controller apart from dispatcher, no module cycles"
python3 localenv/check-layout.py

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build binaries and tests"
cargo build --workspace --bins --locked
cargo test --workspace --no-run --locked

step "unit tests"
cargo test --workspace --lib --bins --locked

if localenv/status.sh --quiet; then
  step "local environment already up; using it and leaving it running"
else
  step "start the local environment"
  trap 'step "stop the local environment"; localenv/down.sh' EXIT
  localenv/up.sh
fi

step "integration and end-to-end tests"
# The test binaries share one environment; each test makes its own namespace and topics.
cargo test --workspace --locked --no-fail-fast --test '*' -- --test-threads="${HOOKLINE_TEST_THREADS:-4}"

# Its own run directory, ports and Pod IPs (127.3.x.y; the main one's are 127.1.x.y), so the
# main environment keeps running beside it, untouched. Stopped when the step ends, however.
multibroker() {
  local main_pod_ips=${HOOKLINE_POD_IP_BASE:-127.1}
  export HOOKLINE_RUN_DIR=$HOOKLINE_CACHE/run-3brokers HOOKLINE_LOCALENV_KAFKA_BROKERS=3
  export HOOKLINE_POD_IP_BASE=127.3
  [[ $main_pod_ips != 127.3 ]] || HOOKLINE_POD_IP_BASE=127.4
  trap 'localenv/down.sh' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  localenv/up.sh
  cargo test -p hookline-tests --locked --test multibroker -- --ignored
}
if [[ ${HOOKLINE_SKIP_MULTIBROKER:-0} == 1 ]]; then
  step "multi-broker Kafka: SKIPPED because HOOKLINE_SKIP_MULTIBROKER=1"
else
  step "multi-broker Kafka: a second environment with 3 brokers, one killed mid-stream (tests/tests/multibroker.rs)"
  (multibroker)
fi

if [[ ${HOOKLINE_SKIP_IMAGE:-0} == 1 ]]; then
  step "container image: SKIPPED because HOOKLINE_SKIP_IMAGE=1"
else
  step "container image (static release build, buildah FROM scratch, binaries start from it)"
  localenv/image.sh
fi

step "all passed in $(( $(date +%s) - start ))s"
