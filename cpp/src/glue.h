// Internal helpers of the C++ glue (not installed): token <-> void* conversions, statuses,
// the per-thread last status, environment timeouts.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>

#include "rust/cxx.h"
#include "tcpx-ffi-cxx/src/bridge.rs.h"
#include "tcpx/status.h"

namespace tcpx {
namespace detail {

inline uint64_t tok(const void* p) { return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)); }
inline void* ptr(uint64_t t) { return reinterpret_cast<void*>(static_cast<uintptr_t>(t)); }

inline Status from_ffi(ffi::Status s) { return static_cast<Status>(static_cast<int32_t>(s)); }

/// Records the status of this thread's last call (read by tcpx_last_status()).
void set_last_status(Status s) noexcept;
Status last_status() noexcept;
/// Records a message as this thread's last error (the Rust side's per-thread slot).
void set_last_error(const std::string& message) noexcept;
/// This thread's last error message; valid until the next call on this thread.
const char* last_error_c() noexcept;
/// Prints "[tcpx] <what>: <last error>" to stderr when UCCL_TCPX_DEBUG is set.
void debug_failure(const char* what) noexcept;
/// Prints "[tcpx] <what>: <last error>" to stderr.
void report_failure(const char* what) noexcept;

/// Milliseconds from an environment variable, or `fallback`.
inline uint64_t env_ms(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  unsigned long long ms = std::strtoull(v, &end, 10);
  return (end != nullptr && *end == '\0') ? static_cast<uint64_t>(ms) : fallback;
}

}  // namespace detail
}  // namespace tcpx
