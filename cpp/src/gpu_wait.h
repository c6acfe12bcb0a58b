// Bounded GPU waits of the C++ glue (not installed): every wait for CUDA work polls the
// runtime's query (cudaEventQuery / cudaStreamQuery) instead of cudaEventSynchronize /
// cudaStreamSynchronize, which have no deadline — and work queued behind another library's
// persistent kernel may never run. The caller turns the timeout into its own failure code and
// a last-error message, a loud error where a silent hang would be.
//
// The policy is the Rust side's (src/wait.rs, tcpx::wait::poll_until), written against a query
// function so it is compiled and unit-tested in host builds too (cpp/tests/test_modules.cc):
//  * A wait that finishes within its first kGpuWaitSpins queries never reads the clock.
//  * After that each further query yields the CPU, and the clock is read every kGpuWaitSpins
//    queries; the deadline is `within` after the first clock read, and the wait ends at the
//    first clock read at or past it (so at most kGpuWaitSpins queries after the deadline).
//  * A failing query ends the wait at once with its own error.
//
// Soundness rule for callers: memory the GPU may still read or write (pinned staging) is never
// freed or reused after a wait that did not end in kGpuDone — it is leaked, and the message
// says so.
//
// Header-only and self-contained (no bridge headers) so the test programs can include it.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#ifdef TCPX_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace tcpx {
namespace detail {

/// What a GpuQuery and wait_until_done return. A query's errors must be positive (a CUDA
/// query returns its cudaError_t), so they never collide with these.
constexpr int kGpuDone = 0;        ///< the work finished (cudaSuccess)
constexpr int kGpuNotReady = -1;   ///< query only: still running (cudaErrorNotReady)
constexpr int kGpuTimedOut = -2;   ///< wait_until_done only: the deadline passed first

/// Queries spun before the first clock read, and between clock reads after it.
constexpr uint32_t kGpuWaitSpins = 64;

/// How long the glue waits for its own GPU work (an unpack kernel, a 24-byte handle copy:
/// microseconds to milliseconds when the GPU runs them). The SlidingWindow's event waits use
/// UCCL_TCPX_DRAIN_TIMEOUT_MS instead (see sliding_window.cc).
constexpr std::chrono::milliseconds kGpuWaitTimeout{10000};

/// kGpuDone, kGpuNotReady, or the query's own (positive) error.
using GpuQuery = int (*)(void* arg);

/// Calls query(arg) until it returns kGpuDone, for at most `within` (measured from the first
/// clock read, kGpuWaitSpins queries in). Returns kGpuDone, kGpuTimedOut, or the first error
/// the query returned.
inline int wait_until_done(GpuQuery query, void* arg, std::chrono::milliseconds within) {
  using Clock = std::chrono::steady_clock;
  Clock::time_point deadline;
  bool deadline_set = false;
  uint32_t polls = 0;
  for (;;) {
    const int q = query(arg);
    if (q == kGpuDone) return kGpuDone;
    if (q != kGpuNotReady) return q;
    ++polls;  // wraps after 2^32 queries: then 63 spins without yielding, harmless
    if (polls < kGpuWaitSpins) continue;
    if (polls % kGpuWaitSpins == 0) {
      const Clock::time_point now = Clock::now();
      if (!deadline_set) {
        deadline = now + within;
        deadline_set = true;
      } else if (now >= deadline) {
        return kGpuTimedOut;
      }
    }
    std::this_thread::yield();
  }
}

#ifdef TCPX_WITH_CUDA
inline int gpu_query_result(cudaError_t e) {
  if (e == cudaSuccess) return kGpuDone;
  if (e == cudaErrorNotReady) return kGpuNotReady;
  return static_cast<int>(e);
}
/// GpuQuery over cudaEventQuery; arg is the cudaEvent_t.
inline int gpu_event_query(void* event) {
  return gpu_query_result(cudaEventQuery(static_cast<cudaEvent_t>(event)));
}
/// GpuQuery over cudaStreamQuery; arg is the cudaStream_t.
inline int gpu_stream_query(void* stream) {
  return gpu_query_result(cudaStreamQuery(static_cast<cudaStream_t>(stream)));
}

/// "<what> did not finish within N ms" or "<what> failed: <CUDA error>", for a wait_until_done
/// result other than kGpuDone.
inline std::string gpu_wait_failure(const std::string& what, int rc,
                                    std::chrono::milliseconds within) {
  if (rc == kGpuTimedOut)
    return what + " did not finish within " + std::to_string(within.count()) + " ms";
  return what + " failed: " + cudaGetErrorString(static_cast<cudaError_t>(rc));
}
#endif

}  // namespace detail
}  // namespace tcpx
