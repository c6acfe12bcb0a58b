#!/usr/bin/env bash
# Install nvcc for building the `cuda` feature, without a system CUDA toolkit.
#
# nvcc, its helpers and headers come from five PyPI wheels pinned to CUDA 13.0.x (the GPU
# machines run driver 580 / CUDA 13.0). They are downloaded with pip into .cuda/wheels and
# unpacked into .cuda/toolkit, which then holds nvidia/cu13/{bin,include,lib,nvvm}: a CUDA_HOME
# that `nvcc --fatbin -arch=sm_90` works with. No libcudart is linked by tcpx; the driver
# (libcuda.so) is loaded at run time on the GPU machine.
#
# Idempotent: a second run finds nvcc and only prints the export line. The last line printed is
#   export CUDA_HOME=<repo>/.cuda/toolkit/nvidia/cu13
# so `eval "$(scripts/install-nvcc.sh | tail -n 1)"` sets it in the calling shell.
#
# Environment: PYTHON (default python3). Needs network access to PyPI on the first run only.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cuda_dir="$root/.cuda"
wheels="$cuda_dir/wheels"
toolkit="$cuda_dir/toolkit"
home="$toolkit/nvidia/cu13"
python="${PYTHON:-python3}"

packages=(
  'nvidia-cuda-nvcc==13.0.*'
  'nvidia-nvvm==13.0.*'
  'nvidia-cuda-runtime==13.0.*'
  'nvidia-cuda-crt==13.0.*'
  'nvidia-cuda-cccl==13.0.*'
)

works() { [ -x "$home/bin/nvcc" ] && "$home/bin/nvcc" --version >/dev/null 2>&1; }

if works; then
  echo "nvcc already installed: $("$home/bin/nvcc" --version | tail -n 1)" >&2
  echo "export CUDA_HOME=$home"
  exit 0
fi

echo "downloading the CUDA 13.0 compiler wheels into $wheels" >&2
mkdir -p "$wheels"
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$wheels" "${packages[@]}" >&2

# Unpack into a fresh folder, then move it into place, so an interrupted run leaves no half
# toolkit behind. Python's zipfile keeps the executable bits (unzip may not be installed).
tmp="$cuda_dir/toolkit.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
for spec in "${packages[@]}"; do
  name="${spec%%==*}"
  stem="${name//-/_}"
  # The newest downloaded 13.0.x wheel of this package.
  wheel="$(ls -1 "$wheels/$stem"-13.0.*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$wheel" ]; then
    echo "install-nvcc.sh: no wheel for $spec in $wheels" >&2
    exit 1
  fi
  "$python" - "$wheel" "$tmp" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
done
rm -rf "$toolkit"
mv "$tmp" "$toolkit"

if ! works; then
  echo "install-nvcc.sh: $home/bin/nvcc does not run after unpacking" >&2
  exit 1
fi
echo "installed $("$home/bin/nvcc" --version | tail -n 1)" >&2
echo "export CUDA_HOME=$home"
