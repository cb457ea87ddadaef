#!/usr/bin/env bash
# `make bench`: the benchmarks of BENCHMARKS.md, from a fresh clone or a warm machine.
#   1. tools into the cache (as `make test` does)
#   2. the local environment, unless one is already up (then it is used and left running)
#   3. release builds of hookline-dispatcher and hookline-api (the systems under test) and hookline-bench
#   4. hookline-bench with the given flags (`--quick` for a subset), its memory point (issue 17: 64 KiB
#      events under a 256 MiB limit), then the publishing (issue 13),
#      replay (issue 15) and fail-over (issue 16) benchmarks (`--quick` passed on); results in
#      bench/results/runs/ (git-ignored)
#   5. the environment stopped again if this script started it, also on failure
set -euo pipefail
cd "$(dirname "$0")/.."
export HOOKLINE_CACHE="${HOOKLINE_CACHE:-$HOME/.cache/hookline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOOKLINE_CACHE/target}"

localenv/tools.sh
if localenv/status.sh --quiet; then
  echo "==> local environment already up; using it and leaving it running"
else
  echo "==> starting the local environment"
  trap 'echo "==> stopping the local environment"; localenv/down.sh' EXIT
  localenv/up.sh
fi
# The pod runner runs the controller (and the controller's own dispatchers) from the debug build.
cargo build --locked -p hookline-controller -p hookline-dispatcher --bins
cargo build --release --locked -p hookline-dispatcher -p hookline-api -p hookline-bench
"$CARGO_TARGET_DIR/release/hookline-bench" "$@"
quick=()
for arg in "$@"; do [[ $arg == --quick ]] && quick=(--quick); done
# Memory in bytes (issue 17): a backlog of 64 KiB events drained by a dispatcher told a 256 MiB
# limit (the chart's default), as its cgroup tells it in a Pod; the point is its peak RSS.
large=100000
[[ ${#quick[@]} -gt 0 ]] && large=20000
"$CARGO_TARGET_DIR/release/hookline-bench" --scenarios 1 --webhooks 1 --payloads 65536 \
  --large-events "$large" --dispatcher-env HOOKLINE_MEMORY_LIMIT=256Mi "${quick[@]}"
"$CARGO_TARGET_DIR/release/publish" "${quick[@]}"
"$CARGO_TARGET_DIR/release/replay" --e2e-runs 3 "${quick[@]}"
"$CARGO_TARGET_DIR/release/failover" "${quick[@]}"
