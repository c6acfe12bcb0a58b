#!/usr/bin/env bash
# One command, two measurements on loopback, side by side:
#   1. N parallel iperf3 client/server pairs (N processes each side; not `iperf3 -P N`, which
#      serves every stream from one thread in iperf3 3.12), summed;
#   2. `tcpx-bench loopback` with N channels over tcpx-sim, every byte verified: by default 16
#      iterations of 1 MiB in flight (a stream, like iperf3's: one chunk each, two per channel
#      with 8 channels), checked on idle-priority threads, one per CPU, while the next ones
#      move.
# Prints both, their ratio and where tcpx-bench's CPU time went, then one JSON line. With -r R
# it measures R rounds, each iperf3 then tcpx-bench, and reports every round's ratio and their
# median (the figure to quote on a machine whose runs vary by ±10 %).
#
# usage: scripts/bench-vs-iperf3.sh [-n N] [-t SECONDS] [-r ROUNDS] [--bench PATH]
#                                   [--iperf3-root DIR] [-- tcpx-bench loopback arguments]
#   -n N                pairs and channels (default 8); -t iperf3 seconds (default 10)
#   -r ROUNDS           rounds, interleaved (default 1); the JSON's gbps and ratio are medians
#   after --            replaces the default `--depth 16 --size 1MiB --iters 64000 --chunk-bytes 1MiB` (e.g.
#                       `--size 256MiB --iters 20`: one iteration at a time, checked between)
#   --bench PATH        tcpx-bench binary (default: target/release/tcpx-bench, built if missing)
#   --iperf3-root DIR   a folder where iperf3's .deb files were unpacked with `dpkg -x`
#                       (machines without network; see scripts/install-iperf3.sh --download)
set -euo pipefail
N=8 T=10 R=1 BENCH= ROOT=
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) N=$2; shift 2 ;;
    -t) T=$2; shift 2 ;;
    -r) R=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --iperf3-root) ROOT=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
IPERF3=iperf3
if [[ -n "$ROOT" ]]; then
  IPERF3="$ROOT/usr/bin/iperf3"
  export LD_LIBRARY_PATH="$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
command -v "$IPERF3" >/dev/null || { echo "iperf3 not found: run scripts/install-iperf3.sh" >&2; exit 1; }
if [[ -z "$BENCH" ]]; then
  BENCH=target/release/tcpx-bench
  [[ -x $BENCH ]] || cargo build --release -p tcpx-bench
fi
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

[[ $R =~ ^[1-9][0-9]*$ ]] || { echo "-r: expected a number of rounds >= 1, got $R" >&2; exit 2; }
if [[ $# -eq 0 ]]; then set -- --depth 16 --size 1MiB --iters 64000 --chunk-bytes 1MiB; fi

iperf3_round() { # prints the summed GB/s of N pairs
  echo "== $N parallel iperf3 pairs on loopback, ${T}s" >&2
  for i in $(seq 0 $((N - 1))); do
    "$IPERF3" -s -1 -p $((5301 + i)) >/dev/null 2>&1 &
  done
  sleep 1
  for i in $(seq 0 $((N - 1))); do
    "$IPERF3" -c 127.0.0.1 -p $((5301 + i)) -t "$T" -J >"$tmp/iperf$i.json" &
  done
  wait
  python3 - "$tmp" "$N" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
total = sum(json.load(open(f"{d}/iperf{i}.json"))["end"]["sum_received"]["bits_per_second"] for i in range(n))
print(f"{total / 8 / 1e9:.3f}")
PY
}

iperf=() tcpx=() ratios=() verified=true
for r in $(seq 1 "$R"); do
  if [[ $R -gt 1 ]]; then echo "== round $r of $R" >&2; fi
  iperf_gbps=$(iperf3_round)
  echo "iperf3: $iperf_gbps GB/s" >&2
  echo "== tcpx-bench loopback, $N channels" >&2
  echo "   tcpx-bench loopback --channels $N $*" >&2
  "$BENCH" loopback --channels "$N" --json "$@" >"$tmp/tcpx.json"
  tcpx_gbps=$(python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["summary"]["avg_gbps"])' "$tmp/tcpx.json")
  v=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["verified"]))' "$tmp/tcpx.json")
  [[ $v == true ]] || verified=false
  python3 - "$tmp/tcpx.json" >&2 <<'PY'
import json, sys
cpu = json.load(open(sys.argv[1])).get("cpu", {})
for g in cpu.get("groups", []):
    print(f'   {g["group"]:<18} {g["threads"]:>3} threads {g["cores"]:5.2f} cores')
if cpu.get("machine_idle") is not None:
    print(f'   machine idle {100 * cpu["machine_idle"]:.0f} % of {cpu["cpus"]} CPUs')
PY
  iperf+=("$iperf_gbps") tcpx+=("$tcpx_gbps") ratios+=("$(python3 -c "print(f'{$tcpx_gbps / $iperf_gbps:.3f}')")")
  if [[ $R -gt 1 ]]; then echo "   round $r: ratio ${ratios[-1]}" >&2; fi
done

median() { python3 -c 'import statistics,sys; print("%.3f" % statistics.median(map(float, sys.argv[1:])))' "$@"; }
list() { local IFS=,; echo "[$*]"; }
iperf_gbps=$(median "${iperf[@]}") tcpx_gbps=$(median "${tcpx[@]}") ratio=$(median "${ratios[@]}")
what=""; if [[ $R -gt 1 ]]; then what=" (median of $R)"; fi
printf '\n%-48s %10s\n' "what$what" "GB/s"
printf '%-48s %10s\n' "$N parallel iperf3 pairs (loopback)" "$iperf_gbps"
printf '%-48s %10s\n' "tcpx-bench loopback, $N channels ($([[ $verified == true ]] && echo verified || echo NOT verified))" "$tcpx_gbps"
printf '%-48s %10s\n' "ratio (target >= 0.8)" "$ratio"
if [[ $R -gt 1 ]]; then printf '%-48s %10s\n' "ratios, round by round" "$(list "${ratios[@]}")"; fi
echo "{\"channels\": $N, \"iperf3_gbps\": $iperf_gbps, \"tcpx_gbps\": $tcpx_gbps, \"ratio\": $ratio, \"verified\": $verified, \"cores\": $(nproc), \"rounds\": $R, \"ratios\": $(list "${ratios[@]}")}"
