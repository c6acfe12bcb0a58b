#!/usr/bin/env bash
# GPU 0 → GPU 1 on the 2-GPU machine, side by side in one command: NCCL (PyTorch) with tcpx-sim
# in CUDA mode as its net plugin, then our engine over the same tcpx-sim (`tcpx-bench loopback
# --mem gpu`, receiver GPU 0, sender GPU 1), every byte checked by both. Run from the repo root
# with .dev/bin from scripts/gpu/build-for-device.sh. Logs under $OUT (or .dev/out).
#
#   scripts/gpu/nccl-vs-engine.sh [SIZES]      # default 64M,256M,1G
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-.dev/out}; mkdir -p "$out"
sizes=${1:-64M,256M,1G}
lib=$(mktemp -d); trap 'rm -rf "$lib"' EXIT
ln -s "$(readlink -f .dev/bin/libtcpx_sim.so)" "$lib/libnccl-net-tcpxsim.so"
echo "== NCCL over tcpx-sim ($sizes)"
env LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" NCCL_NET_PLUGIN=tcpxsim \
  NCCL_NET=tcpx-sim_v7 NCCL_NET_GDR_LEVEL=SYS NCCL_NET_GDR_READ="${NCCL_NET_GDR_READ:-1}" NCCL_DYNAMIC_CHUNK_SIZE=524288 \
  NCCL_P2P_NET_CHUNKSIZE=524288 NCCL_BUFFSIZE=4194304 NCCL_NSOCKS_PERTHREAD=4 \
  NCCL_SOCKET_NTHREADS=1 NCCL_GPUDIRECTTCPX_SOCKET_IFNAME=lo TCPX_SIM_CUDA=1 NCCL_P2P_DISABLE=1 \
  NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0 NCCL_P2P_PXN_LEVEL=0 NCCL_IB_DISABLE=1 NCCL_PROTO=Simple \
  NCCL_SOCKET_IFNAME=lo NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET \
  timeout "${NCCL_TIMEOUT:-240}" python3 scripts/gpu/nccl_sendrecv.py run --label tcpx-sim --sizes "$sizes" \
  --warmup 2 --iters 5 --json "$out/nccl-tcpx-sim.json" >"$out/nccl-tcpx-sim.log" 2>&1
rc=$?
grep -E "^ *tcpx-sim " "$out/nccl-tcpx-sim.log"
echo "nccl rc=$rc"; grep -E "WARN NET/tcpx-sim|Traceback|Error" "$out/nccl-tcpx-sim.log" | head -n 8
echo "== tcpx-rs engine over tcpx-sim, 8 channels"
for s in ${sizes//,/ }; do
  .dev/bin/tcpx-bench loopback --mem gpu --channels 8 --size "${s}iB" --iters 5 --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["summary"]; print("  tcpx-rs %6d MiB  %.2f GB/s (median %.2f), verified=%s" % (d["size"]>>20, s["avg_gbps"], s["median_gbps"], d["verified"]))'
done
exit $rc
