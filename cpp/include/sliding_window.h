/**
 * @file sliding_window.h
 * @brief Drop-in for the C++ tree's SlidingWindow, backed by tcpx-core's request window.
 *
 * One window per comm holds at most `max_inflight` (1..16) requests in FIFO order.
 * try_release_oldest looks only at the oldest request: it tests it, waits for its event (a
 * receive with an unpack event), consumes it (receives) and removes it.
 *
 * Kept from the tree: the constructor, is_full, size, add_request(req, chunk_idx, event),
 * try_release_oldest → 0 / 1 / -1, drain_all, clear, the window owning (and destroying, in CUDA
 * builds) the events it is given.
 *
 * Changed:
 *  - add_request returns int: 0 added, -1 refused — a full window (the tree silently accepted a
 *    17th request, which TCPX then refused) or something that is not a tcpx request.
 *  - max_inflight outside 1..16 throws std::invalid_argument.
 *  - try_release_oldest returns -1 (not 1) when test fails for real — peer closed, plugin error,
 *    a bad comm — so a dead peer ends a drain instead of spinning forever. 1 still means "not
 *    done yet" or "not this request's turn". last_status() says which.
 *  - The first try_release_oldest fixes the window's direction; a later call with the other
 *    is_recv, or a comm of the other kind, is -1.
 *  - drain_all gives up with -1 after UCCL_TCPX_DRAIN_TIMEOUT_MS (default 60000); in CUDA builds
 *    each wait for a receive's event has the same bound (Timeout).
 */
#pragma once

#include <memory>

#include "tcpx/status.h"

#ifdef TCPX_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace tcpx {
#ifdef TCPX_WITH_CUDA
using event_t = cudaEvent_t;
#else
/// Host builds have no events: pass nullptr (a non-null event counts as complete unless a
/// waiter is installed).
using event_t = void*;
#endif
namespace detail {
struct WindowImpl;
}
}  // namespace tcpx

class SlidingWindow {
 public:
  /// Waits for an event attached to a receive; returns 0 when it completed. Nonzero fails the
  /// release (-1) and leaves the request and its event in the window: a later release waits
  /// again. The default (CUDA builds) polls cudaEventQuery for at most
  /// UCCL_TCPX_DRAIN_TIMEOUT_MS (default 60000; never cudaEventSynchronize, which has no
  /// deadline), then destroys the event; past the deadline the release is -1 with
  /// last_status() Timeout. Host builds have none.
  using EventWaiter = int (*)(void* event, void* user);

  /// Throws std::invalid_argument unless 1 <= max_inflight <= 16.
  explicit SlidingWindow(int max_inflight);
  /// As above with a custom event waiter (e.g. the CUDA driver API, or a test double). The
  /// waiter then owns the events: clear() drops them without destroying them.
  SlidingWindow(int max_inflight, EventWaiter waiter, void* user);

  /// Unpacks a receive that test just reported done: copies its fragments out of the bounce
  /// pool (launches the unpack kernel) and sets *event to an event that completes when the copy
  /// has (nullptr: already complete). Returns 0, or -1 to fail the release.
  using UnpackHook = int (*)(void* request, int chunk_idx, void** event, void* user);

  /// With a hook set, every receive added without an event goes done → hook → event → consume.
  /// nullptr removes it.
  void set_unpack_hook(UnpackHook hook, void* user);
  ~SlidingWindow();

  SlidingWindow(const SlidingWindow&) = delete;
  SlidingWindow& operator=(const SlidingWindow&) = delete;

  bool is_full() const;
  int size() const;
  int max_inflight() const;

  /// 0 added; -1 refused (full, or not a tcpx request; nothing is added).
  int add_request(void* request, int chunk_idx, tcpx::event_t event = nullptr) {
    return add_request_raw(request, chunk_idx, static_cast<void*>(event));
  }

  /// 0: released the oldest request, or the window is empty; 1: not ready (not done, or not
  /// its turn); -1: error (see last_status()).
  int try_release_oldest(void* comm, bool is_recv);

  /// Releases every request: 0, or -1 on an error or the deadline.
  int drain_all(void* comm, bool is_recv);

  /// Drops every request without waiting; destroys pending events (CUDA builds, default
  /// waiter).
  void clear();

  /// Status behind the last add_request / try_release_oldest / drain_all.
  tcpx::Status last_status() const { return last_; }

 private:
  int add_request_raw(void* request, int chunk_idx, void* event);

  std::unique_ptr<tcpx::detail::WindowImpl> impl_;
  EventWaiter waiter_;
  void* user_;
  UnpackHook unpack_ = nullptr;
  void* unpack_user_ = nullptr;
  tcpx::Status last_ = tcpx::Status::Ok;
};
