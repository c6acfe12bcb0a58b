// SlidingWindow: the C++ tree's shape over tcpx-core's request window (ffi-cxx/src/window.rs).
// The state machine is in Rust; waiting for a receive's event happens here (CUDA, or a waiter
// the caller installed).
//
// Every wait is bounded by UCCL_TCPX_DRAIN_TIMEOUT_MS (default kDrainTimeoutMs), read at each
// wait: drain_all's whole drain, and each event wait of the default (CUDA) waiter, which polls
// cudaEventQuery (gpu_wait.h). The event completes only after whatever the caller queued on its
// stream before it, which the glue does not control, so it gets the window's tunable bound
// rather than kGpuWaitTimeout. An event whose wait failed stays alive and in the window with
// its request (a later release waits again; clear() destroys it).
#include "sliding_window.h"

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "glue.h"
#include "gpu_wait.h"
#include "tcpx_interface.h"
#include "tcpx_window_io.h"

namespace tcpx {
namespace detail {

struct WindowImpl {
  rust::Box<ffi::Window> w;
};

namespace {

/// UCCL_TCPX_DRAIN_TIMEOUT_MS when unset.
constexpr uint64_t kDrainTimeoutMs = 60000;

std::chrono::milliseconds drain_timeout() {
  return std::chrono::milliseconds(env_ms("UCCL_TCPX_DRAIN_TIMEOUT_MS", kDrainTimeoutMs));
}

#ifdef TCPX_WITH_CUDA
/// The default waiter: 0 once the event completed and was destroyed. Otherwise nonzero
/// (kGpuTimedOut when the deadline passed) with the last error set, and the event left alive.
int cuda_event_wait(void* event, void*) {
  const std::chrono::milliseconds within = drain_timeout();
  const int rc = wait_until_done(&gpu_event_query, event, within);
  if (rc != kGpuDone) {
    set_last_error(gpu_wait_failure("the event", rc, within) +
                   (rc == kGpuTimedOut ? " (UCCL_TCPX_DRAIN_TIMEOUT_MS)" : ""));
    return rc;
  }
  const cudaError_t e = cudaEventDestroy(static_cast<cudaEvent_t>(event));
  if (e != cudaSuccess) {
    set_last_error(std::string("cudaEventDestroy of the receive's event failed: ") +
                   cudaGetErrorString(e));
    return -1;
  }
  return 0;
}
constexpr SlidingWindow::EventWaiter kDefaultWaiter = &cuda_event_wait;
void destroy_event(void* event) { cudaEventDestroy(static_cast<cudaEvent_t>(event)); }
#else
constexpr SlidingWindow::EventWaiter kDefaultWaiter = nullptr;
void destroy_event(void*) {}
#endif

}  // namespace
}  // namespace detail
}  // namespace tcpx

namespace tcpx {
namespace ffi {

// Called from the Rust window: the linked tcpx_* symbols (ours, or the C++ tree's).
TestIo window_io_test(uint64_t request) {
  TestIo t{-1, 0};
  try {
    int done = 0;
    t.rc = ::tcpx_test(detail::ptr(request), &done, nullptr);
    t.done = done;
  } catch (...) {
    t.rc = -1;
  }
  return t;
}

int32_t window_io_consume(uint64_t comm, uint64_t request) {
  try {
    return ::tcpx_irecv_consumed(detail::ptr(comm), 1, detail::ptr(request));
  } catch (...) {
    return -1;
  }
}

}  // namespace ffi
}  // namespace tcpx

using tcpx::Status;
using tcpx::detail::from_ffi;
using tcpx::detail::ptr;
using tcpx::detail::tok;

SlidingWindow::SlidingWindow(int max_inflight)
    : SlidingWindow(max_inflight, tcpx::detail::kDefaultWaiter, nullptr) {}

SlidingWindow::SlidingWindow(int max_inflight, EventWaiter waiter, void* user)
    : waiter_(waiter), user_(user) {
  try {
    impl_.reset(new tcpx::detail::WindowImpl{tcpx::ffi::window_new(max_inflight)});
  } catch (const rust::Error& e) {
    throw std::invalid_argument(e.what());
  }
}

SlidingWindow::~SlidingWindow() {
  try {
    clear();
  } catch (...) {
  }
}

bool SlidingWindow::is_full() const { return tcpx::ffi::window_is_full(*impl_->w); }

int SlidingWindow::size() const { return tcpx::ffi::window_len(*impl_->w); }

int SlidingWindow::max_inflight() const { return tcpx::ffi::window_capacity(*impl_->w); }

int SlidingWindow::add_request_raw(void* request, int chunk_idx, void* event) {
  try {
    last_ = from_ffi(tcpx::ffi::window_add(*impl_->w, tok(request), chunk_idx, tok(event)));
  } catch (...) {
    last_ = Status::Internal;
  }
  tcpx::detail::set_last_status(last_);
  if (last_ != Status::Ok) tcpx::detail::debug_failure("SlidingWindow::add_request");
  return last_ == Status::Ok ? 0 : -1;
}

void SlidingWindow::set_unpack_hook(UnpackHook hook, void* user) {
  unpack_ = hook;
  unpack_user_ = user;
  tcpx::ffi::window_set_unpack(*impl_->w, hook != nullptr);
}

int SlidingWindow::try_release_oldest(void* comm, bool is_recv) {
  try {
    // At most: a call that tests (and hands back the receive to unpack), a call that reports
    // the event to wait for, a call that consumes and releases.
    for (int step = 0; step < 3; ++step) {
      auto r = tcpx::ffi::window_try_release(*impl_->w, tok(comm), is_recv);
      last_ = from_ffi(r.status);
      tcpx::detail::set_last_status(last_);
      if (r.code < 0) tcpx::detail::debug_failure("SlidingWindow::try_release_oldest");
      if (r.unpack_request != 0) {
        void* event = nullptr;
        if (unpack_ == nullptr ||
            unpack_(ptr(r.unpack_request), r.unpack_chunk, &event, unpack_user_) != 0) {
          last_ = tcpx::Status::Internal;
          tcpx::detail::set_last_status(last_);
          tcpx::detail::set_last_error("SlidingWindow::try_release_oldest: the unpack hook failed");
          tcpx::detail::debug_failure("SlidingWindow::try_release_oldest");
          return -1;
        }
        tcpx::ffi::window_set_event(*impl_->w, tok(event));
        continue;
      }
      if (r.wait_event == 0) return r.code;
      const int waited = waiter_ != nullptr ? waiter_(ptr(r.wait_event), user_) : 0;
      if (waited != 0) {
        // The default waiter says why in the last error (and kGpuTimedOut for its deadline);
        // a custom one does not.
        const bool ours = waiter_ == tcpx::detail::kDefaultWaiter;
        last_ = ours && waited == tcpx::detail::kGpuTimedOut ? Status::Timeout : Status::Internal;
        tcpx::detail::set_last_status(last_);
        std::string why = "SlidingWindow::try_release_oldest: waiting for the receive's event failed";
        if (ours) why = why + ": " + tcpx::detail::last_error_c();
        tcpx::detail::set_last_error(why);
        tcpx::detail::debug_failure("SlidingWindow::try_release_oldest");
        return -1;
      }
      tcpx::ffi::window_event_done(*impl_->w);
    }
    return 1;
  } catch (...) {
    last_ = Status::Internal;
    tcpx::detail::set_last_status(last_);
    return -1;
  }
}

int SlidingWindow::drain_all(void* comm, bool is_recv) {
  const auto deadline = std::chrono::steady_clock::now() + tcpx::detail::drain_timeout();
  unsigned spins = 0;
  while (size() > 0) {
    int r = try_release_oldest(comm, is_recv);
    if (r < 0) return -1;
    if (r == 1) {
      if ((++spins & 63) == 0 && std::chrono::steady_clock::now() >= deadline) {
        last_ = Status::Timeout;
        tcpx::detail::set_last_status(last_);
        tcpx::detail::set_last_error("SlidingWindow::drain_all: deadline passed");
        return -1;
      }
      std::this_thread::yield();
    }
  }
  last_ = Status::Ok;
  return 0;
}

void SlidingWindow::clear() {
  if (!impl_) return;
  rust::Vec<uint64_t> events = tcpx::ffi::window_clear(*impl_->w);
  // The window owns CUDA events only with the default waiter; a custom waiter owns its events.
  if (waiter_ != tcpx::detail::kDefaultWaiter) return;
  for (uint64_t e : events) tcpx::detail::destroy_event(ptr(e));
}
