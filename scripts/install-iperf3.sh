#!/usr/bin/env bash
# Install iperf3 (the loopback baseline of scripts/bench-vs-iperf3.sh) from Debian/Ubuntu packages.
# With --download DIR, only fetch the .deb files into DIR (to carry to a machine without network,
# where `dpkg -x` unpacks them; see scripts/bench-vs-iperf3.sh --iperf3-root).
set -euo pipefail
if [[ "${1:-}" == "--download" ]]; then
  dir=${2:?usage: install-iperf3.sh --download DIR}
  mkdir -p "$dir"
  (cd "$dir" && apt-get download iperf3 libiperf0 libsctp1)
  ls -l "$dir"
  exit 0
fi
if command -v iperf3 >/dev/null 2>&1; then
  iperf3 --version | head -n 1
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq iperf3 >/dev/null
iperf3 --version | head -n 1
