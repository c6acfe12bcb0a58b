#!/usr/bin/env bash
# Host-memory figures on a GPU machine (16–32 cores), run from the repo root there:
#   loopback vs N parallel iperf3 pairs (N = 8 and 4), GB/s vs channels × chunk size,
#   engine ns/chunk, core ns/op. Needs what scripts/gpu/build-for-device.sh and
#   `scripts/install-iperf3.sh --download .dev/debs` put under .dev/. Logs go to $OUT (or /tmp).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tcpx-out}; mkdir -p "$OUT"
BENCH=.dev/bin/tcpx-bench
ROOT=/tmp/iperf3-root; mkdir -p "$ROOT"
for d in .dev/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
{
  echo "== machine"; nproc; lscpu | grep -E 'Model name|Socket|NUMA node' ; nvidia-smi -L 2>/dev/null
  date -u; git log -1 --format=%H 2>/dev/null || cat .dev/COMMIT 2>/dev/null
} 2>&1 | tee "$OUT/machine.txt"
for n in 8 4; do
  scripts/bench-vs-iperf3.sh -n $n -t 10 --bench $BENCH --iperf3-root $ROOT 2>&1 | tail -6 | tee -a "$OUT/iperf3.txt"
done
SWEEP_JSON="$OUT/sweep.jsonl" scripts/sweep.sh --bench $BENCH 2>&1 | tee "$OUT/sweep.md"
$BENCH engine 2>&1 | tee "$OUT/engine.txt"
$BENCH core 2>&1 | tee "$OUT/core.txt"
