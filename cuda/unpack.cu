// tcpx unpack kernels: copy received TCPX fragments out of the GPU bounce pool into the
// destinations of their chunks. Layouts and constants: cuda/unpack.h. Design notes:
// cuda/README.md.
//
// One launch unpacks a whole batch (many chunks of many comms) given as a flat array of
// `tcpx_unpack_desc {src, dst, len}` with absolute device addresses. Work split: one warp per
// descriptor, in block rounds (see unpack_batch); the host cuts fragments into pieces of at
// most 4 KiB, so a warp's piece is one round of 8 independent 16-byte loads per lane (4 KiB in
// flight per warp).
//
// Per descriptor:
//   * its three 64-bit words are read once, by one thread each, as part of one contiguous read
//     of the block's descriptors for the round, and broadcast through shared memory; the next
//     round's are loaded before this round is copied, so the read (possibly over PCIe) overlaps
//     the copy;
//   * vector width W = lowest set bit of (src | dst) % 16, or 16 when both are 16-byte aligned;
//   * len / W vectors are copied lane-strided, 8 loads issued before their 8 stores;
//   * the len % W tail bytes are copied one byte per lane.
//
// Entry points (extern "C", looked up by name from the embedded fatbin):
//   tcpx_unpack_kernel(descs, count)      descriptors in device or mapped pinned host memory
//   tcpx_unpack_inline_kernel(batch)      descriptors in the kernel parameters (<= 170)
//   tcpx_empty_kernel()                   does nothing: the launch-latency baseline
#include "unpack.h"

namespace {

constexpr unsigned kWarp = 32;
// Loads in flight per lane before the matching stores.
constexpr unsigned kUnroll = 8;

// Bounce-pool reads: streaming (evict first); every byte is read exactly once.
__device__ __forceinline__ uint4 load_stream(const uint4* p) { return __ldcs(p); }
__device__ __forceinline__ uint2 load_stream(const uint2* p) { return __ldcs(p); }
__device__ __forceinline__ unsigned int load_stream(const unsigned int* p) { return __ldcs(p); }
__device__ __forceinline__ unsigned short load_stream(const unsigned short* p) {
  return __ldcs(p);
}
__device__ __forceinline__ unsigned char load_stream(const unsigned char* p) { return __ldcs(p); }

// Destination writes: ordinary write-back global stores (`st.global.wb`); the consumer of the
// chunk reads them next.
template <typename T>
__device__ __forceinline__ void store(T* p, T v) {
  __stwb(p, v);
}

// Copies n elements of T, lane-strided over the warp.
template <typename T>
__device__ __forceinline__ void copy_vectors(const T* __restrict__ src, T* __restrict__ dst,
                                             uint64_t n, unsigned lane) {
  uint64_t j = lane;
  for (; j + (kUnroll - 1) * kWarp < n; j += kUnroll * kWarp) {
    T v[kUnroll];
#pragma unroll
    for (unsigned u = 0; u < kUnroll; ++u) v[u] = load_stream(src + j + u * kWarp);
#pragma unroll
    for (unsigned u = 0; u < kUnroll; ++u) store(dst + j + u * kWarp, v[u]);
  }
  for (; j < n; j += kWarp) store(dst + j, load_stream(src + j));
}

// The whole warp copies one descriptor.
__device__ __forceinline__ void copy_desc(uint64_t src, uint64_t dst, uint32_t len,
                                          unsigned lane) {
  const unsigned misalign = static_cast<unsigned>((src | dst) & 15u);
  // Lowest set bit of the misalignment: the widest access both addresses allow.
  const unsigned width = misalign ? (misalign & (0u - misalign)) : 16u;
  const unsigned shift = __ffs(width) - 1;
  const uint64_t n = static_cast<uint64_t>(len) >> shift;
  switch (width) {
    case 16:
      copy_vectors(reinterpret_cast<const uint4*>(src), reinterpret_cast<uint4*>(dst), n, lane);
      break;
    case 8:
      copy_vectors(reinterpret_cast<const uint2*>(src), reinterpret_cast<uint2*>(dst), n, lane);
      break;
    case 4:
      copy_vectors(reinterpret_cast<const unsigned int*>(src),
                   reinterpret_cast<unsigned int*>(dst), n, lane);
      break;
    case 2:
      copy_vectors(reinterpret_cast<const unsigned short*>(src),
                   reinterpret_cast<unsigned short*>(dst), n, lane);
      break;
    default:
      copy_vectors(reinterpret_cast<const unsigned char*>(src),
                   reinterpret_cast<unsigned char*>(dst), n, lane);
      break;
  }
  // Tail: fewer than `width` bytes.
  const uint64_t done = n << shift;
  if (lane < len - done) {
    store(reinterpret_cast<unsigned char*>(dst) + done + lane,
          load_stream(reinterpret_cast<const unsigned char*>(src) + done + lane));
  }
}

// Descriptor words. Descriptors in global memory may be pinned host memory that the host
// rewrote since an earlier launch read it: `ld.global.cv` fetches them again instead of trusting
// a cached line. Descriptors in the kernel parameters are read with ordinary loads.
struct GlobalDescs {
  const uint64_t* words;
  __device__ __forceinline__ uint64_t word(uint64_t k) const { return __ldcv(words + k); }
};
struct ParamDescs {
  const uint64_t* words;
  __device__ __forceinline__ uint64_t word(uint64_t k) const { return words[k]; }
};

// Descriptors are handed out in block rounds: in round r, block b takes descriptors
// [r * per_round + b * W, +W) (W = warps per block, per_round = gridDim.x * W), one per warp.
// The W descriptors of a round are one contiguous 24 * W-byte read (threads 0 .. 3W-1 load a
// word each), so descriptors in mapped host memory cross PCIe as one request per block round
// instead of one per warp. They go through shared memory to the warps; the next round's
// words are loaded before this round is copied, so that read overlaps the copy.
template <typename Descs>
__device__ __forceinline__ void unpack_batch(Descs descs, uint32_t count) {
  constexpr unsigned kMaxWarps = TCPX_UNPACK_BLOCK_THREADS / kWarp;
  __shared__ uint64_t round_words[3 * kMaxWarps];

  const unsigned lane = threadIdx.x & (kWarp - 1);
  const unsigned warp = threadIdx.x / kWarp;
  // blockDim.x <= TCPX_UNPACK_BLOCK_THREADS (launch bounds) and a multiple of 32 (launcher).
  const uint64_t warps = blockDim.x / kWarp;
  const uint64_t per_round = static_cast<uint64_t>(gridDim.x) * warps;
  const uint64_t total_words = 3ull * count;
  const bool loader = threadIdx.x < 3 * warps;

  // `base` is the same for every thread of the block, so all of them run the loop together and
  // reach every __syncthreads.
  uint64_t base = static_cast<uint64_t>(blockIdx.x) * warps;
  uint64_t word = 0;
  if (loader && 3 * base + threadIdx.x < total_words) word = descs.word(3 * base + threadIdx.x);
  while (base < count) {
    __syncthreads();  // every warp is done with the previous round's words
    if (loader) round_words[threadIdx.x] = word;
    __syncthreads();
    const uint64_t next = base + per_round;
    if (loader && 3 * next + threadIdx.x < total_words) {
      word = descs.word(3 * next + threadIdx.x);
    }
    if (base + warp < count) {
      const uint64_t src = round_words[3 * warp];
      const uint64_t dst = round_words[3 * warp + 1];
      // Word 2 is `len | flags << 32` (little-endian).
      const uint32_t len = static_cast<uint32_t>(round_words[3 * warp + 2]);
      copy_desc(src, dst, len, lane);
    }
    base = next;
  }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(TCPX_UNPACK_BLOCK_THREADS)
    tcpx_unpack_kernel(const tcpx_unpack_desc* __restrict__ descs, uint32_t count) {
  unpack_batch(GlobalDescs{reinterpret_cast<const uint64_t*>(descs)}, count);
}

extern "C" __global__ void __launch_bounds__(TCPX_UNPACK_BLOCK_THREADS)
    tcpx_unpack_inline_kernel(const __grid_constant__ tcpx_unpack_inline_batch batch) {
  const uint32_t count = batch.count < TCPX_UNPACK_INLINE_MAX ? batch.count : TCPX_UNPACK_INLINE_MAX;
  unpack_batch(ParamDescs{reinterpret_cast<const uint64_t*>(batch.desc)}, count);
}

extern "C" __global__ void tcpx_empty_kernel() {}
