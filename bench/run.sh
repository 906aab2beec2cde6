#!/usr/bin/env bash
# Issues 3 and 12's benchmark, all of it: builds the example server, the tool, the `octopus`
# command (which the control scenario runs), the baseline, the http1-only server, the axum
# router and the ecdysis peer in release, runs every scenario, the pinned overhead mode, the
# curves over scale and the wrk cross-check, and rewrites BENCHMARKS.md and the plots from the
# JSON results in bench/results/.
#
#   bash bench/run.sh            # ~30 minutes on 2 cores (plus the build)
#
# Traffic goes to 127.0.0.1 only; every run is bounded in time; every process started is
# stopped (SIGTERM, then SIGKILL after a bound) and reaped by the tool.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null || ! command -v h2load >/dev/null; then
    apt-get update && apt-get install -y wrk nghttp2-client
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --example hello -p octopus
cargo build --release -p octopus-bench --bins -p octopus-cli
bench="$CARGO_TARGET_DIR/release/octopus-bench"

for scenario in keepalive keepalive-10k control new-conn inflight usr1 shutdown; do
    "$bench" run "$scenario"
done
"$bench" run overhead --rounds 9 --secs 4
# Server on CPU 0, load on CPU 1; prints one line per comparison.
"$bench" run pinned --rounds 10 --secs 3
"$bench" run curves
"$bench" run wrk --secs 28 --upgrades 100 --interval-ms 250
"$bench" run supervisor  # needs Go (Debian: golang-go)
"$bench" report --results bench/results --out BENCHMARKS.md
