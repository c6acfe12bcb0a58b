#!/usr/bin/env bash
# GB/s of `tcpx-bench loopback` (tcpx-sim, every byte verified) against channel count and chunk
# size, as a markdown table (rows: channels; columns: chunk size) plus one JSON line per cell.
#
# usage: scripts/sweep.sh [--bench PATH] [--channels "1 2 4 8"] [--chunks "128KiB 512KiB 1MiB 4MiB"]
#                         [--size 256MiB] [--iters 10] [-- more loopback arguments]
#   e.g. `--size 1MiB --iters 64000 -- --depth 16`: the stream of bench-vs-iperf3.sh
set -euo pipefail
BENCH= CHANNELS="1 2 4 8" CHUNKS="128KiB 512KiB 1MiB 4MiB" SIZE=256MiB ITERS=10
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bench) BENCH=$2; shift 2 ;;
    --channels) CHANNELS=$2; shift 2 ;;
    --chunks) CHUNKS=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
if [[ -z "$BENCH" ]]; then
  BENCH=target/release/tcpx-bench
  [[ -x $BENCH ]] || cargo build --release -p tcpx-bench
fi
printf '| channels |'; for c in $CHUNKS; do printf ' %s |' "$c"; done; echo
printf '|---|'; for c in $CHUNKS; do printf -- '---:|'; done; echo
for n in $CHANNELS; do
  printf '| %s |' "$n"
  for c in $CHUNKS; do
    out=$("$BENCH" loopback --channels "$n" --chunk-bytes "$c" --size "$SIZE" --iters "$ITERS" --json "$@" 2>/dev/null)
    g=$(python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["summary"]["avg_gbps"])' <<<"$out")
    printf ' %s |' "$g"
    echo "{\"channels\": $n, \"chunk\": \"$c\", \"gbps\": $g}" >>"${SWEEP_JSON:-/dev/null}"
  done
  echo
done
