// tcpx::Endpoint over the Rust engine (ffi-cxx/src/endpoint.rs).
#include "tcpx/endpoint.h"

#include <string>

#include "glue.h"

namespace tcpx {
namespace detail {
struct EndpointImpl {
  rust::Box<ffi::Endpoint> ep;
};
}  // namespace detail

namespace {

[[noreturn]] void rethrow(const char* what) {
  try {
    throw;
  } catch (const rust::Error& e) {
    // The bridge recorded the status-less message; classify by text where it matters.
    std::string m = e.what();
    Status s = m.find("timed out") != std::string::npos ? Status::Timeout
                                                        : Status::InvalidArgument;
    throw Error(s, std::string(what) + ": " + m);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(Status::Internal, std::string(what) + ": " + e.what());
  }
}

ConnectionInfo to_info(const ffi::ConnectionInfo& c) {
  ConnectionInfo i;
  i.id = c.id;
  i.peer_gpu = c.peer_gpu;
  i.channels = c.channels;
  i.chunk_bytes = c.chunk_bytes;
  i.bytes = c.bytes;
  i.iters = c.iters;
  return i;
}

void to_result(const ffi::TransferResult& r, TransferResult* out) {
  if (out == nullptr) return;
  out->status = detail::from_ffi(r.status);
  out->id = r.id;
  out->bytes = r.bytes;
  out->chunks = r.chunks;
  out->elapsed_ns = r.elapsed_ns;
}

ffi::TransferResult empty_result() { return ffi::TransferResult{ffi::Status::NotReady, 0, 0, 0, 0}; }

}  // namespace

Endpoint::Endpoint(const EndpointConfig& config) {
  try {
    ffi::EndpointOptions o{rust::String(config.plugin_path), config.gpu, config.channels,
                           config.chunk_bytes, rust::String(config.nics),
                           config.pin_progress_thread, config.stall_timeout_ms};
    impl_.reset(new detail::EndpointImpl{ffi::endpoint_new(o)});
  } catch (...) {
    rethrow("tcpx::Endpoint");
  }
}

Endpoint::~Endpoint() = default;
Endpoint::Endpoint(Endpoint&&) noexcept = default;
Endpoint& Endpoint::operator=(Endpoint&&) noexcept = default;

uint32_t Endpoint::register_memory(void* ptr, size_t len, MemoryKind kind) {
  if (!impl_) throw Error(Status::InvalidArgument, "register_memory: moved-from endpoint");
  try {
    return ffi::endpoint_register(*impl_->ep, detail::tok(ptr), static_cast<uint64_t>(len),
                                  kind == MemoryKind::Cuda);
  } catch (...) {
    rethrow("register_memory");
  }
}

ConnectionInfo Endpoint::serve(int port, uint64_t timeout_ms) {
  if (!impl_) throw Error(Status::InvalidArgument, "serve: moved-from endpoint");
  try {
    return to_info(ffi::endpoint_serve(*impl_->ep, port, timeout_ms));
  } catch (...) {
    rethrow("serve");
  }
}

ConnectionInfo Endpoint::connect(const std::string& host, int port, uint64_t bytes,
                                 uint32_t iters, uint64_t timeout_ms) {
  if (!impl_) throw Error(Status::InvalidArgument, "connect: moved-from endpoint");
  try {
    return to_info(ffi::endpoint_connect(*impl_->ep, rust::Str(host), port, bytes, iters,
                                         timeout_ms));
  } catch (...) {
    rethrow("connect");
  }
}

Status Endpoint::post(uint32_t conn, uint32_t buf, uint64_t offset, uint64_t len,
                      uint64_t* id) noexcept {
  if (!impl_ || id == nullptr) return Status::InvalidArgument;
  Status s = detail::from_ffi(ffi::endpoint_post(*impl_->ep, conn, buf, offset, len, *id));
  detail::set_last_status(s);
  return s;
}

Status Endpoint::poll(TransferResult* out) noexcept {
  if (!impl_) return Status::InvalidArgument;
  ffi::TransferResult r = empty_result();
  Status s = detail::from_ffi(ffi::endpoint_poll(*impl_->ep, r));
  if (s != Status::NotReady) to_result(r, out);
  detail::set_last_status(s);
  return s;
}

Status Endpoint::wait(uint64_t id, uint64_t timeout_ms, TransferResult* out) noexcept {
  if (!impl_) return Status::InvalidArgument;
  ffi::TransferResult r = empty_result();
  Status s = detail::from_ffi(ffi::endpoint_wait(*impl_->ep, id, timeout_ms, r));
  if (s != Status::InvalidArgument && s != Status::Timeout) to_result(r, out);
  detail::set_last_status(s);
  return s;
}

uint32_t Endpoint::in_flight() const noexcept {
  return impl_ ? ffi::endpoint_in_flight(*impl_->ep) : 0;
}

void Endpoint::barrier(uint32_t conn, uint32_t token, uint64_t timeout_ms) {
  if (!impl_) throw Error(Status::InvalidArgument, "barrier: moved-from endpoint");
  try {
    ffi::endpoint_barrier(*impl_->ep, conn, token, timeout_ms);
  } catch (...) {
    rethrow("barrier");
  }
}

RunSummary Endpoint::finish(uint32_t conn, const RunSummary& ours, uint64_t timeout_ms) {
  if (!impl_) throw Error(Status::InvalidArgument, "finish: moved-from endpoint");
  try {
    ffi::DoneSummary d = ffi::endpoint_finish(*impl_->ep, conn,
                                              ffi::DoneSummary{ours.bytes, ours.checksum,
                                                               ours.iters},
                                              timeout_ms);
    RunSummary r;
    r.bytes = d.bytes;
    r.checksum = d.checksum;
    r.iters = d.iters;
    return r;
  } catch (...) {
    rethrow("finish");
  }
}

}  // namespace tcpx
