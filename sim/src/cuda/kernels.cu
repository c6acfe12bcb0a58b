// tcpx-sim CUDA-mode kernels. Not built by cargo: `regen-ptx.sh` compiles this file to
// `kernels.ptx` (checked in, embedded with include_str!), so the sim needs no nvcc to build.
//
// Both kernels take the fragment list of a chunk straight from the comm's device-mapped
// unpack metadata (`loadMeta mem[slot][...]`): the scatter is the exact inverse of NCCL's
// unpack, driven by the same `{src_off, len}` entries the driver will read.

#include <stdint.h>

// `union loadMeta` of NCCL's unpack_defs.h: {u32 src_off; u32 len; u64 dst_off}, 16 bytes.
struct LoadMeta {
  uint32_t src_off;
  uint32_t len;
  uint64_t dst_off;
};

#define PAGE 4096u

// Block b copies fragment b of a staged piece: frags[b].len (<= 4096) bytes from
// src + b * 4096 (pinned, device-mapped host staging) to pool + frags[b].src_off.
// src and every src_off are 4096-byte aligned, so the 16-byte path covers all but the tail.
extern "C" __global__ void __launch_bounds__(256)
tcpx_sim_scatter(const unsigned char* src, unsigned char* pool, const LoadMeta* frags) {
  const uint32_t off = frags[blockIdx.x].src_off;
  const uint32_t len = frags[blockIdx.x].len;
  const unsigned char* s = src + (size_t)blockIdx.x * PAGE;
  unsigned char* d = pool + off;
  const uint32_t nvec = len >> 4;
  for (uint32_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    reinterpret_cast<uint4*>(d)[i] = reinterpret_cast<const uint4*>(s)[i];
  }
  for (uint32_t i = (nvec << 4) + threadIdx.x; i < len; i += blockDim.x) {
    d[i] = s[i];
  }
}

// Block b overwrites the whole 4 KiB page of fragment b with `pattern` (the bytes of a
// consumed receive, so a driver that consumed before its unpack finished reads poison).
extern "C" __global__ void __launch_bounds__(256)
tcpx_sim_poison(unsigned char* pool, const LoadMeta* frags, uint32_t pattern) {
  const uint32_t page = frags[blockIdx.x].src_off & ~(PAGE - 1u);
  uint4* d = reinterpret_cast<uint4*>(pool + page);
  const uint4 v = make_uint4(pattern, pattern, pattern, pattern);
  for (uint32_t i = threadIdx.x; i < PAGE / 16u; i += blockDim.x) {
    d[i] = v;
  }
}
