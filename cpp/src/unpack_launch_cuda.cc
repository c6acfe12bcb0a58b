// The CUDA half of unpack_launch.h (compiled only with TCPX_WITH_CUDA, i.e. the `cuda`
// feature): UnpackLauncher::launch over tcpx_unpack_launch (cuda/unpack.h, exported by the
// tcpx crate), and RecvUnpacker, which turns a done receive's slot of the comm's netUnpackMeta
// into copy descriptors.
//
// Every GPU wait here is wait_until_done (gpu_wait.h) for at most kGpuWaitTimeout: the work
// waited for is the glue's own (a kernel reading the descriptor staging, a 24-byte handle
// copy). Pinned staging the GPU may still read is never rewritten or freed unless a wait
// confirmed the GPU is done with it: a failed or timed-out wait fails the launch (staging
// untouched) or, in a destructor or constructor, leaks the staging and says so on stderr.
#include <atomic>
#include <cstring>
#include <string>

#include "glue.h"
#include "gpu_wait.h"
#include "tcpx_interface.h"
#include "unpack.h"
#include "unpack_launch.h"

namespace tcpx {

static_assert(sizeof(tcpx_unpack_desc) == 24, "tcpx_unpack_desc");

namespace {

/// NCCL's unpackNetDeviceHandle, the 24 bytes the device handle points at.
struct UnpackHandle {
  void* meta;
  void* bounce_buf;
  uint64_t head;
};
static_assert(sizeof(UnpackHandle) == 24, "unpackNetDeviceHandle is 24 bytes");

constexpr uint64_t kUnknownBounce = UINT64_MAX / 2;

int fill_descs(const UnpackDescriptorBlock& block, tcpx_unpack_desc* out) {
  const uint64_t src = reinterpret_cast<uintptr_t>(block.bounce_buffer);
  const uint64_t dst = reinterpret_cast<uintptr_t>(block.dst_buffer);
  for (uint32_t i = 0; i < block.count; ++i) {
    const LoadMeta& m = block.descriptors[i];
    out[i].src = src + m.src_off;
    out[i].dst = dst + m.dst_off;
    out[i].len = m.len;
    out[i].flags = 0;
  }
  return 0;
}

/// Copies the 24-byte handle into the pinned `staging` on a private non-blocking stream: a
/// cudaMemcpy would queue on the legacy default stream behind other libraries' work, and a copy
/// into pageable memory returns only once it completed — neither can be bounded. 0, or -1 with
/// the last error set; a copy that was queued but not seen to finish leaves `staging` nullptr
/// (leaked: the copy may still write it).
int read_unpack_handle(const void* handle, void*& staging, UnpackHandle* out) {
  cudaStream_t s = nullptr;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
    detail::set_last_error("RecvUnpacker: creating a stream to read the unpack handle failed");
    return -1;
  }
  const cudaError_t queued =
      cudaMemcpyAsync(staging, handle, sizeof(UnpackHandle), cudaMemcpyDeviceToHost, s);
  const int rc = queued == cudaSuccess
                     ? detail::wait_until_done(&detail::gpu_stream_query, s, detail::kGpuWaitTimeout)
                     : static_cast<int>(queued);
  cudaStreamDestroy(s);  // safe while pending: released once its work completed
  if (rc == detail::kGpuDone) {
    std::memcpy(out, staging, sizeof(UnpackHandle));
    return 0;
  }
  std::string why = detail::gpu_wait_failure("RecvUnpacker: reading the unpack handle", rc,
                                             detail::kGpuWaitTimeout);
  if (queued == cudaSuccess) {
    staging = nullptr;
    why += "; the descriptor staging is leaked (the copy may still write it)";
  }
  detail::set_last_error(why);
  return -1;
}

/// A destructor's end: frees the pinned `staging` (nullptr: nothing) once `waited`, the
/// wait_until_done result for the work that read it, is kGpuDone; otherwise leaks it (the GPU
/// may still read it) and reports why on stderr.
void free_staging_after(int waited, const char* who, const char* what, void* staging) {
  if (staging == nullptr) return;
  if (waited != detail::kGpuDone) {
    detail::set_last_error(
        detail::gpu_wait_failure(std::string(who) + ": " + what, waited, detail::kGpuWaitTimeout) +
        "; its descriptor staging is leaked (the GPU may still read it)");
    detail::report_failure(who);
    return;
  }
  cudaFreeHost(staging);
}

}  // namespace

UnpackLauncher::~UnpackLauncher() {
  int rc = detail::kGpuDone;
  if (staging_done_ != nullptr) {
    rc = detail::wait_until_done(&detail::gpu_event_query, staging_done_, detail::kGpuWaitTimeout);
    cudaEventDestroy(staging_done_);  // safe while pending: released once it completes
  }
  free_staging_after(rc, "~UnpackLauncher", "the last unpack launch", staging_);
}

int UnpackLauncher::launch(const UnpackDescriptorBlock& block) {
  if (validate(block) != 0) {
    ++stats_.errors;
    return -3;
  }
  if (staging_ == nullptr) {
    // Made together or not at all: a staging without its event would fail every later wait.
    void* staging = nullptr;
    cudaEvent_t done = nullptr;
    if (cudaHostAlloc(&staging, sizeof(tcpx_unpack_desc) * kMaxUnpackFragments,
                      cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
      detail::set_last_error("UnpackLauncher: allocating the descriptor staging failed");
      ++stats_.errors;
      return -1;
    }
    if (cudaEventCreateWithFlags(&done, cudaEventDisableTiming) != cudaSuccess) {
      cudaFreeHost(staging);  // nothing was launched with it
      detail::set_last_error("UnpackLauncher: creating the staging's event failed");
      ++stats_.errors;
      return -1;
    }
    staging_ = staging;
    staging_done_ = done;
  } else if (int rc = detail::wait_until_done(&detail::gpu_event_query, staging_done_,
                                              detail::kGpuWaitTimeout);
             rc != detail::kGpuDone) {
    // The previous launch may still read the staging memory: leave it alone.
    detail::set_last_error(detail::gpu_wait_failure("UnpackLauncher::launch: the previous launch",
                                                    rc, detail::kGpuWaitTimeout) +
                           "; its descriptor staging is still in use");
    ++stats_.errors;
    return -4;
  }
  auto* descs = static_cast<tcpx_unpack_desc*>(staging_);
  fill_descs(block, descs);
  void* device_view = nullptr;
  if (cudaHostGetDevicePointer(&device_view, staging_, 0) != cudaSuccess) return -1;
  auto stream = static_cast<cudaStream_t>(config_.stream);
  int rc = tcpx_unpack_launch(stream, static_cast<const tcpx_unpack_desc*>(device_view), block.count);
  if (rc != TCPX_UNPACK_OK || cudaEventRecord(staging_done_, stream) != cudaSuccess) {
    detail::set_last_error("UnpackLauncher: tcpx_unpack_launch failed (" + std::to_string(rc) + ")");
    ++stats_.errors;
    return -1;
  }
  ++stats_.launches;
  stats_.descriptors += block.count;
  stats_.bytes += block.total_bytes;
  return 0;
}

RecvUnpacker::RecvUnpacker(const tcpx_net_device_handle& dev_handle, cudaStream_t stream,
                           Mode mode, uint64_t bounce_bytes)
    : stream_(stream), mode_(mode), bounce_bytes_(bounce_bytes == 0 ? kUnknownBounce : bounce_bytes) {
  if (dev_handle.net_device_type != 1 || dev_handle.net_device_version != 7 ||
      dev_handle.handle == nullptr || dev_handle.size < sizeof(UnpackHandle)) {
    detail::set_last_error("RecvUnpacker: the receive device handle is not a TCPX unpack handle");
    return;
  }
  if (cudaHostAlloc(&staging_, sizeof(tcpx_unpack_desc) * kMaxUnpackFragments * 16,
                    cudaHostAllocMapped | cudaHostAllocPortable) != cudaSuccess) {
    staging_ = nullptr;
    detail::set_last_error("RecvUnpacker: allocating the descriptor staging failed");
    status_ = -1;
    return;
  }
  UnpackHandle h;
  if (read_unpack_handle(dev_handle.handle, staging_, &h) != 0) {
    status_ = -2;
    return;
  }
  if (h.meta == nullptr || h.bounce_buf == nullptr) {
    detail::set_last_error("RecvUnpacker: the unpack handle has no metadata or bounce pool");
    status_ = -2;
    return;
  }
  // The handle holds the metadata's device address; under UVA it is also the host address,
  // but ask the runtime for the host view to be sure.
  cudaPointerAttributes attr;
  std::memset(&attr, 0, sizeof(attr));
  void* host = h.meta;
  if (cudaPointerGetAttributes(&attr, h.meta) == cudaSuccess && attr.hostPointer != nullptr)
    host = attr.hostPointer;
  meta_ = static_cast<const NetUnpackMeta*>(host);
  bounce_ = reinterpret_cast<uintptr_t>(h.bounce_buf);
  block_ = new UnpackDescriptorBlock;
  status_ = 0;
}

RecvUnpacker::~RecvUnpacker() {
  delete block_;
  if (staging_ == nullptr) return;
  // The kernels that read the staging ran on stream_.
  const int rc = detail::wait_until_done(&detail::gpu_stream_query, stream_, detail::kGpuWaitTimeout);
  free_staging_after(rc, "~RecvUnpacker", "the unpack stream", staging_);
}

int RecvUnpacker::unpack(void* request, void* dst, uint64_t len, cudaEvent_t* event) {
  if (status_ != 0 || event == nullptr) return status_ != 0 ? status_ : -3;
  const int slot = tcpx_request_unpack_slot(request);
  if (slot < 0 || slot >= 16) return -3;
  // cnt[slot] is written last by the plugin (release); read it, then the fragments.
  const uint64_t cnt = reinterpret_cast<const volatile uint64_t*>(meta_->cnt)[slot];
  std::atomic_thread_fence(std::memory_order_acquire);
  if (cnt > static_cast<uint64_t>(kMaxUnpackFragments)) {
    detail::set_last_error("RecvUnpacker: " + std::to_string(cnt) + " fragments (max 2048)");
    ++stats_.errors;
    return -3;
  }
  if (build_descriptor_block(meta_->mem[slot], static_cast<uint32_t>(cnt),
                             reinterpret_cast<const void*>(static_cast<uintptr_t>(bounce_)),
                             bounce_bytes_, dst, len, block_) != 0) {
    ++stats_.errors;
    return -3;
  }
  UnpackLauncher check;
  if (check.validate(*block_) != 0) {
    ++stats_.errors;
    return -3;
  }
  if (mode_ == Mode::Kernel) {
    // Staging row `slot`: reused only 16 receives later, which TCPX lets the sender post only
    // after this receive was consumed — i.e. after this launch's event completed.
    auto* descs = static_cast<tcpx_unpack_desc*>(staging_) + static_cast<size_t>(slot) * kMaxUnpackFragments;
    fill_descs(*block_, descs);
    void* base = nullptr;
    if (cudaHostGetDevicePointer(&base, staging_, 0) != cudaSuccess) return -1;
    auto* device_descs = static_cast<const tcpx_unpack_desc*>(base) + static_cast<size_t>(slot) * kMaxUnpackFragments;
    int rc = tcpx_unpack_launch(stream_, device_descs, block_->count);
    if (rc != TCPX_UNPACK_OK) {
      detail::set_last_error("RecvUnpacker: tcpx_unpack_launch failed (" + std::to_string(rc) + ")");
      ++stats_.errors;
      return -1;
    }
  } else {
    auto* d = static_cast<unsigned char*>(dst);
    for (uint32_t i = 0; i < block_->count; ++i) {
      const LoadMeta& m = block_->descriptors[i];
      const void* src = reinterpret_cast<const void*>(static_cast<uintptr_t>(bounce_ + m.src_off));
      if (cudaMemcpyAsync(d + m.dst_off, src, m.len, cudaMemcpyDeviceToDevice, stream_) != cudaSuccess) {
        ++stats_.errors;
        return -2;
      }
    }
  }
  if (cudaEventCreateWithFlags(event, cudaEventDisableTiming) != cudaSuccess ||
      cudaEventRecord(*event, stream_) != cudaSuccess) {
    ++stats_.errors;
    return -1;
  }
  ++stats_.launches;
  stats_.descriptors += block_->count;
  stats_.bytes += block_->total_bytes;
  return 0;
}

}  // namespace tcpx
