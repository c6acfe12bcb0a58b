#!/usr/bin/env bash
# Regenerates kernels.ptx from kernels.cu. Run after editing kernels.cu and check both in.
#   CUDA_HOME=/path/to/cuda ./sim/src/cuda/regen-ptx.sh
# PTX for compute_75 (the oldest target CUDA 13 compiles for); the driver JIT-compiles it for the
# GPU at module load (sm_90 on H100/H200). Needs a CUDA 13 driver (PTX ISA of nvcc 13.0).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
nvcc="${CUDA_HOME:?set CUDA_HOME (e.g. from scripts/install-nvcc.sh)}/bin/nvcc"
"$nvcc" --ptx -arch=compute_75 -O3 -o "$here/kernels.ptx" "$here/kernels.cu"
# Also check that the PTX assembles for the GPUs we run on.
"${CUDA_HOME}/bin/ptxas" -arch=sm_90 -o /dev/null "$here/kernels.ptx"
echo "wrote $here/kernels.ptx"
