#!/usr/bin/env bash
# Check tcpx-sim's CUDA mode ON THE GPU MACHINE, from the repo root, with binaries built here:
#
#   scripts/gpu/sim-cuda-check.sh [BIN_DIR]
#
# BIN_DIR (default .dev/bin) must hold `sim_cuda` (the test binary of tests/sim_cuda.rs, built
# with `cargo test --release --features cuda --no-run`) and, next to it, `libtcpx_sim.so` built
# with `cargo build --release -p tcpx-sim --features cuda` (the test dlopens the library beside
# its own executable).
#
# Steps (logs under $OUT if set, else .dev/out):
#   1. sim_cuda                                      -> sim_cuda.log
#   2. compute-sanitizer --tool memcheck --leak-check full on it -> sim_cuda-memcheck.log
#   3. compute-sanitizer --tool initcheck on it      -> sim_cuda-initcheck.log
# Both sanitizer runs use --report-api-errors no: one test registers host memory as CUDA on
# purpose, and the sim's cuPointerGetAttribute on it fails by design (every driver result is
# checked by the sim and the tests anyway); memory errors still count.
# Exit status 0 only when the tests pass and both sanitizer runs report 0 errors. Without a GPU
# (or with a sim built without `cuda`) the tests fail, they never skip.
set -uo pipefail

bin="${1:-.dev/bin}"
out="${OUT:-.dev/out}"
mkdir -p "$out"
summary=()
fail=0

if [ ! -x "$bin/sim_cuda" ] || [ ! -f "$bin/libtcpx_sim.so" ]; then
  echo "sim-cuda-check.sh: $bin/sim_cuda or $bin/libtcpx_sim.so is missing" >&2
  echo "  build here: cargo test --release --features cuda --test sim_cuda --no-run" >&2
  echo "              cargo build --release -p tcpx-sim --features cuda" >&2
  echo "  and copy the test executable (as sim_cuda) and libtcpx_sim.so into $bin" >&2
  exit 2
fi

{ nvidia-smi || true; } >"$out/nvidia-smi.txt" 2>&1

# The tests share one GPU bounce pool and serialise themselves; one thread keeps logs readable.
tests=(--test-threads=1)

echo "== 1. tcpx-sim CUDA-mode tests: $bin/sim_cuda"
if timeout 600 "$bin/sim_cuda" "${tests[@]}" 2>&1 | tee "$out/sim_cuda.log"; then
  summary+=("PASS  sim_cuda: $(grep -E '^test result:' "$out/sim_cuda.log" | tail -n 1)")
else
  summary+=("FAIL  sim_cuda (see $out/sim_cuda.log)")
  fail=1
fi

sanitizer="$(command -v compute-sanitizer || true)"
for cand in "${CUDA_HOME:-}/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  if [ -z "$sanitizer" ] && [ -x "$cand" ]; then sanitizer="$cand"; fi
done

sanitize() { # sanitize STEP TOOL LOG EXTRA...
  local step="$1" tool="$2" log="$3"
  shift 3
  echo "== $step. compute-sanitizer --tool $tool $* $bin/sim_cuda"
  if [ -z "$sanitizer" ]; then
    summary+=("FAIL  $tool: compute-sanitizer not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)")
    fail=1
    return
  fi
  timeout 900 "$sanitizer" --tool "$tool" "$@" --report-api-errors no --error-exitcode 99 \
    "$bin/sim_cuda" "${tests[@]}" >"$log" 2>&1
  local rc=$?
  tail -n 5 "$log"
  if [ "$rc" -eq 0 ] && grep -q 'ERROR SUMMARY: 0 errors' "$log" && grep -q '^test result: ok' "$log"; then
    summary+=("PASS  $tool: $(grep 'ERROR SUMMARY' "$log" | tail -n 1)")
  else
    summary+=("FAIL  $tool (exit $rc): $(grep 'ERROR SUMMARY' "$log" | tail -n 1) (see $log)")
    fail=1
  fi
}

sanitize 2 memcheck "$out/sim_cuda-memcheck.log" --leak-check full
sanitize 3 initcheck "$out/sim_cuda-initcheck.log"

echo
echo "== summary (logs in $out)"
printf '%s\n' "${summary[@]}"
exit "$fail"
