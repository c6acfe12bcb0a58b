#!/usr/bin/env bash
# Every GPU check of the CUDA issue that needs no second GPU, ON THE GPU MACHINE, from the repo
# root, with the binaries scripts/gpu/build-for-device.sh collected in .dev/bin:
#   1. scripts/gpu/unpack-check.sh     kernel vs CPU reference, memcheck, `tcpx-bench unpack`
#   2. scripts/gpu/sim-cuda-check.sh   tcpx-sim CUDA mode through the loader, sanitizers
#   3. gpu_transport                   the engine GPU → GPU over tcpx-sim (CUDA mode), verified
#   4. tcpx-bench loopback --mem gpu   GPU → GPU throughput, kernel / d2d / host unpack, verified
#      (rx endpoint on GPU 0, tx on GPU 1 where there are two)
# Logs under $OUT (or .dev/out). Exit status: non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-.dev/out}; mkdir -p "$OUT"
bin=.dev/bin
fail=0
nvidia-smi -L | tee "$OUT/gpus.txt"
scripts/gpu/unpack-check.sh "$bin" 2>&1 | tail -n 8 || fail=1
scripts/gpu/sim-cuda-check.sh "$bin" 2>&1 | tail -n 5 || fail=1
echo "== gpu_transport"
if "$bin/gpu_transport" >"$OUT/gpu_transport.log" 2>&1; then
  grep -E '^test result' "$OUT/gpu_transport.log"
else
  echo "FAIL gpu_transport"; tail -n 30 "$OUT/gpu_transport.log"; fail=1
fi
for imp in kernel d2d host; do
  echo "== loopback --mem gpu --unpack $imp"
  "$bin/tcpx-bench" loopback --mem gpu --unpack $imp --channels 8 --size 256MiB --iters 10 \
    --json >"$OUT/loopback-gpu-$imp.json" 2>"$OUT/loopback-gpu-$imp.err" || {
      echo "FAIL"; tail -n 5 "$OUT/loopback-gpu-$imp.err"; fail=1; continue; }
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d["summary"]; print("avg %.2f GB/s median %.2f, verified=%s" % (s["avg_gbps"], s["median_gbps"], d["verified"]))' "$OUT/loopback-gpu-$imp.json"
done
echo "== loopback --mem host (same binary, for reference)"
"$bin/tcpx-bench" loopback --channels 8 --size 256MiB --iters 10 --json 2>/dev/null |
  python3 -c 'import json,sys; s=json.load(sys.stdin)["summary"]; print("avg %.2f GB/s" % s["avg_gbps"])'
exit $fail
