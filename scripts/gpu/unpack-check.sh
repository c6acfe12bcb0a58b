#!/usr/bin/env bash
# Check the GPU unpack path ON THE GPU MACHINE, from the repo root, with the binaries that
# scripts/gpu/build-for-device.sh collected (default .dev/bin; or pass a folder):
#
#   scripts/gpu/unpack-check.sh [BIN_DIR]
#
# Steps (logs under $OUT if set, else .dev/out):
#   1. gpu_unpack                 the GPU tests (tests/gpu_unpack.rs)         -> gpu_unpack.log
#   2. compute-sanitizer memcheck on the same binary (leak check on)          -> memcheck.log
#   3. tcpx-bench unpack          table and --json                            -> unpack-bench.txt/.json
# The last lines are a summary. Exit status 0 only when the tests pass and memcheck reports
# 0 errors; the benchmark's targets (kernel >= 90 % of D2D, 512 KiB launch -> event <= 1.5x an
# empty kernel) are reported as MET / MISSED without failing the run.
set -uo pipefail

bin="${1:-.dev/bin}"
out="${OUT:-.dev/out}"
mkdir -p "$out"

summary=()
fail=0

if [ ! -x "$bin/gpu_unpack" ] || [ ! -x "$bin/tcpx-bench" ]; then
  echo "unpack-check.sh: $bin/gpu_unpack or $bin/tcpx-bench is missing (run scripts/gpu/build-for-device.sh first)" >&2
  exit 2
fi

{ nvidia-smi || true; } >"$out/nvidia-smi.txt" 2>&1

echo "== 1. GPU tests: $bin/gpu_unpack"
if "$bin/gpu_unpack" 2>&1 | tee "$out/gpu_unpack.log"; then
  summary+=("PASS  gpu_unpack: $(grep -E '^test result:' "$out/gpu_unpack.log" | tail -n 1)")
else
  summary+=("FAIL  gpu_unpack (see $out/gpu_unpack.log)")
  fail=1
fi

echo "== 2. compute-sanitizer --tool memcheck $bin/gpu_unpack"
sanitizer="$(command -v compute-sanitizer || true)"
for cand in "${CUDA_HOME:-}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if [ -z "$sanitizer" ] && [ -x "$cand" ]; then sanitizer="$cand"; fi
done
if [ -z "$sanitizer" ]; then
  summary+=("FAIL  memcheck: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)")
  fail=1
else
  "$sanitizer" --tool memcheck --leak-check full --error-exitcode 99 \
    "$bin/gpu_unpack" --test-threads=1 >"$out/memcheck.log" 2>&1
  rc=$?
  tail -n 5 "$out/memcheck.log"
  if [ "$rc" -eq 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$out/memcheck.log"; then
    summary+=("PASS  memcheck: $(grep 'ERROR SUMMARY' "$out/memcheck.log" | tail -n 1)")
  else
    summary+=("FAIL  memcheck (exit $rc): $(grep 'ERROR SUMMARY' "$out/memcheck.log" | tail -n 1) (see $out/memcheck.log)")
    fail=1
  fi
fi

echo "== 3. $bin/tcpx-bench unpack"
if "$bin/tcpx-bench" unpack 2>&1 | tee "$out/unpack-bench.txt" &&
  "$bin/tcpx-bench" unpack --json >"$out/unpack-bench.json" 2>"$out/unpack-bench.err"; then
  verdict="$(python3 - "$out/unpack-bench.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
best = {}
for row in r["bandwidth"]:
    if "ratio_to_d2d" in row and row["ratio_to_d2d"] > best.get(row["batch_bytes"], ("", -1.0))[1]:
        best[row["batch_bytes"]] = (row["path"], row["ratio_to_d2d"])
bw = "; ".join(f'{b >> 20} MiB: {ratio * 100:.1f} % ({path})' for b, (path, ratio) in sorted(best.items()))
bw_ok = bool(best) and all(ratio >= 0.9 for _, ratio in best.values())
lat = r["latency"]
inline = lat["rows"][1]
print(f'bandwidth vs D2D, best path per batch: {bw} -> {"MET" if bw_ok else "MISSED"} (>= 90 %); '
      f'latency: {inline["us_median"]:.2f} us = {inline["ratio_to_empty"]:.2f}x empty '
      f'({lat["rows"][0]["us_median"]:.2f} us) -> {"MET" if lat["meets_target"] else "MISSED"} (<= 1.5x)')
PY
)"
  summary+=("DONE  tcpx-bench unpack: $verdict")
else
  summary+=("FAIL  tcpx-bench unpack (see $out/unpack-bench.txt, $out/unpack-bench.err)")
  fail=1
fi

echo
echo "== summary (logs in $out)"
printf '%s\n' "${summary[@]}"
exit "$fail"
