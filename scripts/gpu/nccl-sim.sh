#!/usr/bin/env bash
# NCCL send/recv GPU 0 -> GPU 1 on ONE host (the 2-GPU machine), PyTorch + NCCL, three
# configurations in one command, every received byte checked:
#
#   1. tcpx-sim     NCCL loads tcpx-sim (CUDA mode, host-memory bounce pool: with the device
#                   pool the sim's own CUDA work queues behind NCCL's persistent kernel and NCCL
#                   hangs, see sim/README.md) as its net plugin; P2P and SHM off, so the
#                   bytes go GPU -> tcpx-sim -> loopback TCP -> bounce pool -> NCCL's unpack.
#                   Fails unless NCCL's log shows the plugin loaded and used with GPU buffers.
#   2. socket-best  NCCL's built-in socket transport over lo, best of
#                   NCCL_SOCKET_NTHREADS 1..4 x NCCL_NSOCKS_PERTHREAD 1..4 (a short grid run at
#                   GRID_SIZES, then the winner re-run at all SIZES).
#   3. socket-default  the same transport with NCCL's own thread/socket defaults.
# Prints a table (median GB/s per size), the grid, and a JSON line; exits non-zero when a run
# fails, a byte differs, or tcpx-sim was not used (or WARNed, unless --allow-sim-warn).
#
#   scripts/gpu/nccl-sim.sh [--plugin PATH] [--sizes LIST] [--grid-sizes LIST] [--quick]
#                           [--allow-sim-warn]
#
#   --plugin PATH      tcpx-sim built with `--features cuda` (default .dev/bin/libtcpx_sim.so,
#                      from scripts/gpu/build-for-device.sh)
#   --sizes LIST       default 1M,16M,64M,256M,1G
#   --grid-sizes LIST  sizes of the socket grid runs (default 64M,1G; best = fastest at the last)
#   --quick            grid 1,4 x 1,4 only, fewer iterations
# Logs and per-run JSON go to $OUT/nccl (default .dev/out/nccl). Needs python3 with torch (CUDA,
# NCCL backend) and 2 GPUs. Always NCCL_NVLS_ENABLE=0 on these machines.
#
# How NCCL finds the plugin (NVIDIA/nccl, read with the code search; 2.28 and HEAD):
#  * src/plugin/plugin_open.cc (openPluginLib): NCCL_NET_PLUGIN=<name> is first dlopen()ed as
#    given (so a full path works), then as "libnccl-net-<name>.so" from the library path;
#    unset means "libnccl-net.so". We use the suffix form plus LD_LIBRARY_PATH, which every
#    release since 2.x understands.
#  * src/plugin/net.cc (ncclNetPluginLoad): tries ncclNetPlugin_v12 ... v6 in turn; a v7 table
#    goes through src/plugin/net/net_v7.cc (getNcclNet_v7, "NET/Plugin: Loaded net plugin %s
#    (v7)"), which maps v7's int sizes and keeps accept's device handle and irecvConsumed.
#  * NCCL_NET=<table name> picks the plugin by name (comm->config.netName, strcasecmp); then
#    ncclNetCheckDeviceVersion requires NCCL_NET_DEVICE_UNPACK_VERSION == 7 (still 0x7).
#  * GPU buffers (GDR) only when the NIC is close enough to the GPU; `lo` has no PCI path, so
#    NCCL_NET_GDR_LEVEL=SYS, as on a real box the TCPX NICs sit under the GPU's switch (GCP
#    uses PIX); NCCL_NET_GDR_READ=0 with TCPX_SIM_BOUNCE_MEM=host, so that the sim's CUDA work
#    does not queue behind NCCL's persistent kernel (sim/README.md).
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
py="$root/scripts/gpu/nccl_sendrecv.py"
out="${OUT:-$root/.dev/out}/nccl"
plugin="$root/.dev/bin/libtcpx_sim.so"
sizes="1M,16M,64M,256M,1G"
grid_sizes="64M,1G"
threads=(1 2 3 4)
socks=(1 2 3 4)
warmup=3
iters=10
grid_warmup=1
grid_iters=3
allow_warn=0
run_timeout=420

while [ $# -gt 0 ]; do
  case "$1" in
    --plugin) plugin="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --grid-sizes) grid_sizes="$2"; shift 2 ;;
    --quick) threads=(1 4); socks=(1 4); iters=5; grid_iters=2; shift ;;
    --allow-sim-warn) allow_warn=1; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$out"
start_all=$(date +%s)
failures=()

[ -f "$plugin" ] || { echo "tcpx-sim plugin not found: $plugin (scripts/gpu/build-for-device.sh)" >&2; exit 2; }
python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.device_count() >= 2 else 1)' || {
  echo "needs python3 with torch and 2 GPUs" >&2; exit 2; }

{
  echo "== $(date -u)"; nvidia-smi -L 2>/dev/null; nproc
  python3 -c 'import torch; print("torch", torch.__version__, "nccl", torch.cuda.nccl.version())'
  git -C "$root" log -1 --format=%H 2>/dev/null || cat "$root/.dev/COMMIT" 2>/dev/null
} 2>&1 | tee "$out/machine.txt"

# Settings every configuration shares: one host, no NVLink/SHM shortcuts, Simple protocol only
# (as GCP runs TCPX), bootstrap on lo.
common=(
  NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0 NCCL_P2P_PXN_LEVEL=0
  NCCL_IB_DISABLE=1 NCCL_PROTO=Simple NCCL_SOCKET_IFNAME=lo
  NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET,ENV
)

# run LABEL SIZES WARMUP ITERS ENV... : one torch run; log and JSON under $out.
run() {
  local label="$1" sz="$2" wu="$3" it="$4"; shift 4
  local log="$out/$label.log" json="$out/$label.json"
  rm -f "$json"
  echo "-- $label: $*" >&2
  env -u NCCL_NET_PLUGIN -u NCCL_NET -u NCCL_SOCKET_NTHREADS -u NCCL_NSOCKS_PERTHREAD \
    "${common[@]}" "$@" \
    timeout "$run_timeout" python3 "$py" run --label "$label" --sizes "$sz" \
      --warmup "$wu" --iters "$it" --json "$json" >"$log" 2>&1
  local rc=$?
  grep -E "^ *$label " "$log" >&2
  if [ $rc -ne 0 ] || [ ! -s "$json" ]; then
    echo "   FAILED (rc $rc), last lines of $log:" >&2
    tail -n 25 "$log" >&2
    failures+=("$label: run failed (rc $rc)")
    return 1
  fi
  return 0
}

# ---- 1. tcpx-sim ------------------------------------------------------------------------------
libdir="$(mktemp -d)"
trap 'rm -rf "$libdir"' EXIT
ln -s "$(readlink -f "$plugin")" "$libdir/libnccl-net-tcpxsim.so"
sim_env=(
  LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  NCCL_NET_PLUGIN=tcpxsim NCCL_NET=tcpx-sim_v7
  NCCL_NET_GDR_LEVEL=SYS NCCL_NET_GDR_READ=0 TCPX_SIM_BOUNCE_MEM=host
  NCCL_DYNAMIC_CHUNK_SIZE=524288 NCCL_P2P_NET_CHUNKSIZE=524288 NCCL_BUFFSIZE=4194304
  NCCL_NSOCKS_PERTHREAD="${SIM_NSOCKS:-4}" NCCL_SOCKET_NTHREADS="${SIM_NTHREADS:-1}"
  NCCL_GPUDIRECTTCPX_SOCKET_IFNAME=lo TCPX_SIM_CUDA=1
)
if run tcpx-sim "$sizes" "$warmup" "$iters" "${sim_env[@]}"; then
  log="$out/tcpx-sim.log"
  need() { # need WHAT REGEX
    if grep -Eq "$2" "$log"; then echo "   ok: $1" >&2; else
      echo "   MISSING in $log: $1 (/$2/)" >&2; failures+=("tcpx-sim: $1 not in the NCCL log"); fi
  }
  need "NCCL chose tcpx-sim as its network" "Using network tcpx-sim_v7|Assigned NET plugin tcpx-sim_v7"
  need "tcpx-sim initialised in CUDA mode" "NET/tcpx-sim : init: tcpx-sim_v7 \(cuda mode\)"
  need "NCCL accepted a connection through tcpx-sim" "NET/tcpx-sim : accept: recv comm on GPU"
  need "NCCL registered GPU buffers (GDR) with tcpx-sim" "NET/tcpx-sim : regMr: CUDA buffer"
  echo "   info: $(grep -c GDRDMA "$log") log lines mention GDRDMA" >&2
  if grep -q "WARN NET/tcpx-sim" "$log"; then
    echo "   tcpx-sim WARNed (a TCPX contract violation or a sim failure):" >&2
    grep "WARN NET/tcpx-sim" "$log" | head -n 10 >&2
    [ "$allow_warn" = 1 ] || failures+=("tcpx-sim: WARN lines in the NCCL log")
  fi
fi

# ---- 2. socket grid, then the best at full size list -------------------------------------------
best_label=""
best_gbps=0
grid_jsons=()
for t in "${threads[@]}"; do
  for s in "${socks[@]}"; do
    label="socket-${t}x${s}"
    if run "$label" "$grid_sizes" "$grid_warmup" "$grid_iters" \
        NCCL_NET=Socket NCCL_SOCKET_NTHREADS="$t" NCCL_NSOCKS_PERTHREAD="$s"; then
      grep -q "Using network Socket\|Assigned NET plugin Socket" "$out/$label.log" ||
        failures+=("$label: NCCL did not report the Socket network")
      grid_jsons+=("$out/$label.json")
      g=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"]; print(max(r, key=lambda x: x["bytes"])["gbps"])' "$out/$label.json")
      if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$g" "$best_gbps"; then
        best_gbps="$g"; best_label="$label"; best_t="$t"; best_s="$s"
      fi
    fi
  done
done
if [ -n "$best_label" ]; then
  echo "socket grid winner: $best_label ($best_gbps GB/s at the largest grid size)" >&2
  run socket-best "$sizes" "$warmup" "$iters" \
    NCCL_NET=Socket NCCL_SOCKET_NTHREADS="$best_t" NCCL_NSOCKS_PERTHREAD="$best_s" &&
    python3 - "$out/socket-best.json" "$best_label" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["label"] = sys.argv[2]
json.dump(d, open(sys.argv[1], "w"), indent=1)
PY
else
  failures+=("socket grid: no run succeeded")
fi

# ---- 3. socket with NCCL's defaults ----------------------------------------------------------
run socket-default "$sizes" "$warmup" "$iters" NCCL_NET=Socket

# ---- summary ----------------------------------------------------------------------------------
if [ -s "$out/tcpx-sim.json" ] && [ -s "$out/socket-best.json" ]; then
  summary=(--sim "$out/tcpx-sim.json" --socket-best "$out/socket-best.json")
  [ -s "$out/socket-default.json" ] && summary+=(--socket-default "$out/socket-default.json")
  python3 "$py" summarize "${summary[@]}" --grid "${grid_jsons[@]}" | tee "$out/summary.txt"
fi
echo "elapsed $(( $(date +%s) - start_all )) s; logs in $out" >&2
if [ ${#failures[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failures[@]}" >&2
  exit 1
fi
echo "PASSED" >&2
