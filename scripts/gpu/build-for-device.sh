#!/usr/bin/env bash
# Build the GPU binaries HERE (no GPU needed) and collect them in .dev/bin/ for the GPU machine.
#
#   scripts/gpu/build-for-device.sh [EXTRA CARGO TEST ARGS, e.g. -p tcpx]
#
# Builds, in release mode with the `cuda` feature:
#   * tcpx-bench                      (cargo build --release --features cuda -p tcpx-bench)
#   * every test binary               (cargo test --release --features cuda --no-run); the GPU
#                                     ones (integration tests whose file opens with
#                                     `#![cfg(feature = "cuda")]`, e.g. tests/gpu_unpack.rs,
#                                     tests/sim_cuda.rs) are copied, named without the hash
#   * libtcpx_sim.so in CUDA mode     (cargo build --release --features cuda -p tcpx-sim)
# and copies them into .dev/bin/ (ignored by .gitignore), debug info stripped so the folder stays small
# enough to carry to the device (KEEP_DEBUG=1 keeps it). nvcc comes from CUDA_HOME, PATH, or
# the project's toolkit (installed here by scripts/install-nvcc.sh when none is found).
#
# Then, on the GPU machine, from the repo root: scripts/gpu/unpack-check.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$root/.dev/bin"

if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null 2>&1; then
  eval "$(scripts/install-nvcc.sh | tail -n 1)"
fi
echo "nvcc: ${CUDA_HOME:+$CUDA_HOME/bin/nvcc}${CUDA_HOME:-$(command -v nvcc || true)}" >&2

cargo build --release --features cuda -p tcpx-bench
tests_json="$(mktemp)"
trap 'rm -f "$tests_json"' EXIT
cargo test --release --features cuda --no-run --message-format=json "$@" >"$tests_json"
# Last, so the sim library copied below is the CUDA-mode one.
cargo build --release --features cuda -p tcpx-sim

mkdir -p "$bin"

copy() { # copy SRC NAME
  cp "$1" "$bin/$2"
  if [ "${KEEP_DEBUG:-0}" != 1 ] && command -v strip >/dev/null 2>&1; then
    strip --strip-debug "$bin/$2"
  fi
  echo "  $2  <-  ${1#"$root"/}" >&2
}

echo "copying into ${bin#"$root"/}:" >&2
copy "$CARGO_TARGET_DIR/release/tcpx-bench" tcpx-bench
copy "$CARGO_TARGET_DIR/release/libtcpx_sim.so" libtcpx_sim.so

# Test executables from cargo's JSON messages: integration tests gated on the cuda feature.
found=0
while IFS=$'\t' read -r name exe; do
  copy "$exe" "$name"
  found=$((found + 1))
done < <(python3 - "$tests_json" <<'PY'
import json, sys
seen = set()
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target = msg["target"]
    if "test" not in target["kind"] or target["name"] in seen:
        continue
    try:
        with open(target["src_path"], encoding="utf-8") as f:
            gated = '#![cfg(feature = "cuda")]' in f.read(20000)
    except OSError:
        gated = False
    if gated:
        seen.add(target["name"])
        print(f'{target["name"]}\t{msg["executable"]}')
PY
)
if [ "$found" -eq 0 ]; then
  echo "build-for-device.sh: no cuda-gated test binary was built" >&2
  exit 1
fi

total=$(du -cb "$bin" | tail -n 1 | cut -f1)
echo "done: $found GPU test binaries; ${bin#"$root"/} holds $((total / 1048576)) MiB" >&2
if [ "$total" -gt $((60 * 1048576)) ]; then
  echo "warning: more than 60 MiB; the device carry limit is 64 MiB in all" >&2
fi
