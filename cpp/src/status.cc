// tcpx::Status names, the per-thread last status / last error shared by all glue.
#include <cstdio>
#include <cstring>
#include <exception>

#include "glue.h"

namespace tcpx {

static_assert(static_cast<int32_t>(ffi::Status::Ok) == static_cast<int32_t>(Status::Ok), "Ok");
static_assert(static_cast<int32_t>(ffi::Status::NotReady) == static_cast<int32_t>(Status::NotReady), "NotReady");
static_assert(static_cast<int32_t>(ffi::Status::Busy) == static_cast<int32_t>(Status::Busy), "Busy");
static_assert(static_cast<int32_t>(ffi::Status::InvalidArgument) == static_cast<int32_t>(Status::InvalidArgument), "InvalidArgument");
static_assert(static_cast<int32_t>(ffi::Status::NotHead) == static_cast<int32_t>(Status::NotHead), "NotHead");
static_assert(static_cast<int32_t>(ffi::Status::NotDone) == static_cast<int32_t>(Status::NotDone), "NotDone");
static_assert(static_cast<int32_t>(ffi::Status::PeerClosed) == static_cast<int32_t>(Status::PeerClosed), "PeerClosed");
static_assert(static_cast<int32_t>(ffi::Status::PluginError) == static_cast<int32_t>(Status::PluginError), "PluginError");
static_assert(static_cast<int32_t>(ffi::Status::Timeout) == static_cast<int32_t>(Status::Timeout), "Timeout");
static_assert(static_cast<int32_t>(ffi::Status::NoPlugin) == static_cast<int32_t>(Status::NoPlugin), "NoPlugin");
static_assert(static_cast<int32_t>(ffi::Status::Internal) == static_cast<int32_t>(Status::Internal), "Internal");

const char* status_name(Status s) noexcept {
  switch (s) {
    case Status::Ok: return "Ok";
    case Status::NotReady: return "NotReady";
    case Status::Busy: return "Busy";
    case Status::InvalidArgument: return "InvalidArgument";
    case Status::NotHead: return "NotHead";
    case Status::NotDone: return "NotDone";
    case Status::PeerClosed: return "PeerClosed";
    case Status::PluginError: return "PluginError";
    case Status::Timeout: return "Timeout";
    case Status::NoPlugin: return "NoPlugin";
    case Status::Internal: return "Internal";
  }
  return "Unknown";
}

namespace detail {

namespace {
thread_local Status t_last_status = Status::Ok;
thread_local std::string t_message;  // storage behind tcpx_last_error()
}  // namespace

void set_last_status(Status s) noexcept { t_last_status = s; }
Status last_status() noexcept { return t_last_status; }

void set_last_error(const std::string& message) noexcept {
  try {
    ffi::record_error(rust::Str(message.data(), message.size()));
  } catch (...) {
  }
}

const char* last_error_c() noexcept {
  try {
    rust::String s = ffi::last_error();
    t_message = std::string(s.data(), s.size());
  } catch (...) {
    t_message = "(error message unavailable)";
  }
  return t_message.c_str();
}

void report_failure(const char* what) noexcept {
  const char* message = last_error_c();
  const size_t n = std::strlen(what);
  if (std::strncmp(message, what, n) == 0) {
    std::fprintf(stderr, "[tcpx] %s\n", message);  // the message names the call already
  } else {
    std::fprintf(stderr, "[tcpx] %s: %s\n", what, message);
  }
}

void debug_failure(const char* what) noexcept {
  const char* d = std::getenv("UCCL_TCPX_DEBUG");
  if (d != nullptr && *d != '\0' && *d != '0') report_failure(what);
}

}  // namespace detail
}  // namespace tcpx
