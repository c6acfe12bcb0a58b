/**
 * @file tcpx/status.h
 * @brief tcpx::Status: what every hot-path call of the drop-in reports.
 *
 * The values match the Rust bridge's `tcpx::ffi::Status` (checked at compile time in the glue).
 * The int-returning functions of the C++ tree's API (tcpx_*, SlidingWindow, ChannelManager,
 * bootstrap) keep their return codes; tcpx_last_status() / SlidingWindow::last_status() give
 * the Status behind the last code, tcpx_last_error() the message.
 */
#pragma once

#include <cstdint>

namespace tcpx {

enum class Status : int32_t {
  Ok = 0,               ///< done
  NotReady = 1,         ///< not yet (request not done, window head not releasable, no completion)
  Busy = 2,             ///< no room: 16 requests on the comm, a full window, too many transfers
  InvalidArgument = 3,  ///< null / unknown / closed / foreign handle, wrong comm kind, bad size
  NotHead = 4,          ///< test or consume of a request that is not the oldest of its comm
  NotDone = 5,          ///< irecv_consumed before test reported the receive done
  PeerClosed = 6,       ///< the peer closed or died (TCPX rc 2)
  PluginError = 7,      ///< another plugin error (see the rc)
  Timeout = 8,          ///< a deadline passed
  NoPlugin = 9,         ///< no plugin could be loaded
  Internal = 10,        ///< a bug in the library, caught; the process stays usable
};

/// "Ok", "NotReady", ... ("Unknown" for other values).
const char* status_name(Status s) noexcept;

}  // namespace tcpx
