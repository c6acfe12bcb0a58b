/**
 * @file unpack_launch.h
 * @brief The unpack step of a TCPX receive: copy each fragment (`loadMeta`: `len` bytes from
 *        bounce_buffer + src_off to dst_buffer + dst_off) once test reported the receive done,
 *        then irecv_consumed after the copy finished.
 *
 * Drop-in for the C++ tree's UnpackLauncher / UnpackDescriptorBlock with two fixes: the block's
 * header comes before the descriptor array (the tree's upstream layout copied only the array to
 * the device, so its kernel read an unwritten header), and every block is validated before use
 * — every source inside the bounce pool, every destination byte of the chunk written exactly
 * once, at most 2048 fragments (tcpx-core's fragment validation) — where the tree checked only
 * the count.
 *
 * The host path (launch_host) is complete in every build. The GPU path (launch) exists only
 * with TCPX_WITH_CUDA and calls the CUDA kernel's C launcher from cuda/unpack.h.
 *
 * Return codes (the tree's): 0 ok, -1 launch/allocation failure, -2 copy failure,
 * -3 invalid block, -4 sync failure (a failed or timed-out wait).
 *
 * GPU waits (CUDA builds) poll cudaEventQuery / cudaStreamQuery for at most 10 s and never
 * block without a deadline. Pinned descriptor staging the GPU may still read is not reused or
 * freed after a wait that failed or timed out: launch fails with -4, a destructor leaks the
 * staging and says so on stderr (and in tcpx_last_error()).
 */
#pragma once

#include <cstddef>
#include <cstdint>

#ifdef TCPX_WITH_CUDA
#include <cuda_runtime.h>

#include "tcpx_handles.h"
#endif

namespace tcpx {

/// NCCL's `union loadMeta`: one fragment.
struct alignas(16) LoadMeta {
  uint32_t src_off;  ///< offset in the bounce pool
  uint32_t len;      ///< bytes
  uint64_t dst_off;  ///< offset from the irecv destination pointer
};
static_assert(sizeof(LoadMeta) == 16, "loadMeta is 16 bytes");

constexpr int kMaxUnpackFragments = 2048;

/// The fragments of one receive and where they go. Header first, then the descriptors.
struct UnpackDescriptorBlock {
  uint32_t count = 0;             ///< fragments in use
  uint32_t total_bytes = 0;       ///< sum of their lengths (set by build_descriptor_block)
  const void* bounce_buffer = nullptr;  ///< base of the bounce pool
  uint64_t bounce_bytes = 0;      ///< size of the bounce pool (for validation)
  void* dst_buffer = nullptr;     ///< the irecv destination
  uint64_t dst_bytes = 0;         ///< the chunk length
  const void* ready_flag = nullptr;  ///< the slot's cnt (host-mapped), for the kernel's barrier
  LoadMeta descriptors[kMaxUnpackFragments];
};

/// Fills a block from `count` metas; -3 if count is out of range.
int build_descriptor_block(const LoadMeta* metas, uint32_t count, const void* bounce_buffer,
                           uint64_t bounce_bytes, void* dst_buffer, uint64_t dst_bytes,
                           UnpackDescriptorBlock* out);

struct UnpackLaunchConfig {
  void* stream = nullptr;  ///< cudaStream_t in CUDA builds
  bool use_small_kernel = true;
  int max_descriptors = kMaxUnpackFragments;
};

struct UnpackStats {
  uint64_t launches = 0;
  uint64_t descriptors = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
};

class UnpackLauncher {
 public:
  explicit UnpackLauncher(const UnpackLaunchConfig& config = UnpackLaunchConfig());

  /// 0 if the block may be unpacked, -3 otherwise (tcpx_last_error() says why).
  int validate(const UnpackDescriptorBlock& block) const;

  /// Unpacks on the host (bounce_buffer and dst_buffer are host pointers): validate, then
  /// memcpy every fragment. Synchronous.
  int launch_host(const UnpackDescriptorBlock& block);

#ifdef TCPX_WITH_CUDA
  /// Validates, then launches the CUDA unpack kernel (tcpx_unpack_launch, cuda/unpack.h) on
  /// config().stream. Asynchronous: record an event after it and consume the receive once the
  /// event completed. bounce_buffer and dst_buffer are device addresses. First waits (at most
  /// 10 s) for the previous launch to stop reading the staging: -4 if that wait failed or timed
  /// out, with the staging untouched.
  int launch(const UnpackDescriptorBlock& block);
  /// Waits (at most 10 s) for the last launch, then frees the staging; leaks it if the wait
  /// failed or timed out.
  ~UnpackLauncher();
  UnpackLauncher(const UnpackLauncher&) = delete;
  UnpackLauncher& operator=(const UnpackLauncher&) = delete;
#endif

  const UnpackLaunchConfig& config() const { return config_; }
  const UnpackStats& stats() const { return stats_; }
  void reset_stats() { stats_ = UnpackStats(); }

 private:
  UnpackLaunchConfig config_;
  UnpackStats stats_;
#ifdef TCPX_WITH_CUDA
  void* staging_ = nullptr;       // pinned, device-mapped tcpx_unpack_desc[kMaxUnpackFragments]
  cudaEvent_t staging_done_ = nullptr;  // recorded after the launch that last read staging_
#endif
};

#ifdef TCPX_WITH_CUDA
/// NCCL's `netUnpackMeta`: a recv comm's unpack queue, in pinned device-mapped host memory.
struct NetUnpackMeta {
  LoadMeta mem[16][kMaxUnpackFragments];
  uint64_t cnt[16];
};
static_assert(sizeof(NetUnpackMeta) == 524416, "netUnpackMeta is 524416 bytes");

/// The GPU unpack of one receive comm (CUDA builds): reads the comm's unpack handle once (the
/// device handle tcpx_accept_v5 filled), then, for each receive test reported done, copies its
/// slot's fragments from the bounce pool to the receive's buffer — one tcpx_unpack_launch
/// (kernel mode) or one cudaMemcpyAsync per fragment (d2d mode) — and records an event.
///
/// Use it as a SlidingWindow unpack hook: the window consumes the receive only after the event
/// completed.
class RecvUnpacker {
 public:
  enum class Mode { Kernel, D2D };

  /// `bounce_bytes`: the bounce pool's size for validation (0: unknown, sources unchecked).
  RecvUnpacker(const tcpx_net_device_handle& dev_handle, cudaStream_t stream,
               Mode mode = Mode::Kernel, uint64_t bounce_bytes = 0);
  /// Waits (at most 10 s) for `stream`, then frees the staging; leaks it if the wait failed or
  /// timed out.
  ~RecvUnpacker();
  RecvUnpacker(const RecvUnpacker&) = delete;
  RecvUnpacker& operator=(const RecvUnpacker&) = delete;

  /// 0 when the handle was read and staging allocated; otherwise a negative code.
  int status() const { return status_; }

  /// Unpacks the done receive `request` (of this comm) into dst..dst+len; `*event` gets a new
  /// event recorded after the copy (SlidingWindow's CUDA waiter waits for it, bounded, and
  /// destroys it).
  /// 0, -1 (launch), -2 (copy), -3 (invalid metadata).
  int unpack(void* request, void* dst, uint64_t len, cudaEvent_t* event);

  const UnpackStats& stats() const { return stats_; }

 private:
  cudaStream_t stream_;
  Mode mode_;
  uint64_t bounce_bytes_;
  const NetUnpackMeta* meta_ = nullptr;  // host view
  uint64_t bounce_ = 0;                  // device address of the bounce pool
  void* staging_ = nullptr;              // pinned, device-mapped: 16 slots x 2048 descriptors
  UnpackDescriptorBlock* block_ = nullptr;
  int status_ = -3;
  UnpackStats stats_;
};
#endif

}  // namespace tcpx
