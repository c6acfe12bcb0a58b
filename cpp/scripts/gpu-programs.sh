#!/usr/bin/env bash
# The C++ programs on a GPU: GPU buffers, the CUDA unpack path (kernel and d2d), tcpx-sim in
# CUDA mode, server and client as loopback pairs on GPU 0.
#
#   cpp/scripts/gpu-programs.sh build        # here (no GPU needed): .dev/cxx-cuda/
#   cpp/scripts/gpu-programs.sh run [DIR]    # on the GPU machine, from the repo root
#
# build: cargo build --release --features cuda of tcpx-ffi-cxx and tcpx-sim (nvcc from CUDA_HOME
# or scripts/install-nvcc.sh), then `make -C cpp TCPX_CUDA=1` into .dev/cxx-cuda with the
# CUDA-mode libtcpx_sim.so beside the programs (debug info stripped: ~28 MB to carry).
# run: test_modules and test_window_swap, then each program as a server/client pair; logs in
# $OUT (or .dev/out). Exit status 0 only if every run passed its own data verification.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

if [ "${1:-}" = build ]; then
  set -e
  if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
    eval "$(scripts/install-nvcc.sh | tail -n 1)"
  fi
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
  cargo build --release -p tcpx-ffi-cxx --features cuda
  cargo build --release -p tcpx-sim --features cuda
  make -C cpp TCPX_CUDA=1 CUDA_HOME="$CUDA_HOME" \
    TCPX_RS_LIB="$CARGO_TARGET_DIR/release/libtcpx_ffi_cxx.a" TCPX_BUILD_DIR="$root/.dev/cxx-cuda" tcpx-all
  cp "$CARGO_TARGET_DIR/release/libtcpx_sim.so" .dev/cxx-cuda/
  strip --strip-debug .dev/cxx-cuda/test_* 2>/dev/null || true
  du -sh .dev/cxx-cuda
  exit 0
fi

dir="${2:-.dev/cxx-cuda}"
out="${OUT:-.dev/out}"
mkdir -p "$out"
cd "$dir"
export UCCL_TCPX_PLUGIN_PATH="$PWD/libtcpx_sim.so" NCCL_DYNAMIC_CHUNK_SIZE=524288 \
  NCCL_GPUDIRECTTCPX_SOCKET_IFNAME=lo TCPX_SIM_CUDA=1 UCCL_TCPX_NUM_CHANNELS=4 \
  UCCL_TCPX_PERF_SIZE=64M UCCL_TCPX_PERF_ITERS=5
fail=0
check() { if "$@"; then echo "PASS  $*"; else echo "FAIL  $*"; fail=1; fi; }
pair() { # NAME PORT_BASE IMPL [ARGS...]
  local name=$1 base=$2 impl=$3; shift 3
  local log="$out/$name-$impl"
  UCCL_TCPX_BOOTSTRAP_PORT_BASE=$base UCCL_TCPX_UNPACK_IMPL=$impl \
    timeout 300 "./$name" server "$@" >"$log-server.log" 2>&1 &
  local server=$!
  sleep 1
  UCCL_TCPX_BOOTSTRAP_PORT_BASE=$base UCCL_TCPX_UNPACK_IMPL=$impl \
    timeout 300 "./$name" client 127.0.0.1 "${@:2}" >"$log-client.log" 2>&1
  local crc=$?
  wait "$server"
  local src=$?
  grep -hE '^\[PERF\] Avg|ALL CHANNELS PASSED|verified' "$log-server.log" | sed "s/^/  $name $impl: /"
  [ "$src" = 0 ] && [ "$crc" = 0 ]
}
nvidia-smi -L || true
check env TCPX_TEST_PORT_BASE=30300 timeout 300 ./test_modules
check ./test_window_swap
for impl in kernel d2d host; do check pair test_tcpx_perf_multi 30000 "$impl" 0; done
orchestrator() { UCCL_TCPX_NUM_GPUS=1 pair test_tcpx_perf_orchestrator 30100 kernel; }
devmem() { UCCL_TCPX_PERF_SIZE=16M pair test_devmem_validation 30200 kernel 127.0.0.1 0 0; }
check orchestrator
check devmem
exit $fail
