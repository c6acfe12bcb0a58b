// The two plugin calls the Rust request window makes (see ffi-cxx/src/window.rs). They go
// through the linked tcpx_test / tcpx_irecv_consumed symbols, so SlidingWindow works over this
// library's wrappers and over the C++ tree's own tcpx_impl.cc alike.
#pragma once

#include <cstdint>

namespace tcpx {
namespace ffi {
struct TestIo;
TestIo window_io_test(uint64_t request);
int32_t window_io_consume(uint64_t comm, uint64_t request);
}  // namespace ffi
}  // namespace tcpx
