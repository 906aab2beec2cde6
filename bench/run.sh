#!/usr/bin/env bash
# Issue 3's benchmark, all of it: builds the example server, the tool, the `octopus` command
# (which the control scenario runs), the baseline and the ecdysis peer in release, runs every
# scenario and the wrk cross-check, and rewrites BENCHMARKS.md and the plots from the JSON
# results in bench/results/.
#
#   bash bench/run.sh            # ~6 minutes on 2 cores (plus the build)
#
# Traffic goes to 127.0.0.1 only; every run is bounded in time; every process started is
# stopped (SIGTERM, then SIGKILL after a bound) and reaped by the tool.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
    apt-get update && apt-get install -y wrk
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --example hello -p octopus
cargo build --release -p octopus-bench --bins -p octopus-cli
bench="$CARGO_TARGET_DIR/release/octopus-bench"

for scenario in keepalive control new-conn inflight usr1 shutdown; do
    "$bench" run "$scenario"
done
"$bench" run overhead --rounds 9 --secs 4
"$bench" run wrk --secs 28 --upgrades 100 --interval-ms 250
"$bench" run supervisor  # needs Go (Debian: golang-go)
"$bench" report --results bench/results --out BENCHMARKS.md
