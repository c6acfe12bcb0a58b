// Bootstrap calls over tcpx-rs's framed, versioned control plane (ffi-cxx/src/bootstrap.rs).
#include "bootstrap.h"

#include <cstring>
#include <string>

#include "glue.h"

namespace {

uint64_t timeout_ms() { return tcpx::detail::env_ms("UCCL_TCPX_BOOTSTRAP_TIMEOUT_MS", 60000); }

int failed(const char* what, const char* message) {
  tcpx::detail::set_last_status(tcpx::Status::InvalidArgument);
  tcpx::detail::set_last_error(std::string(what) + ": " + message);
  tcpx::detail::report_failure(what);
  return -1;
}

int failed(const char* what, const std::exception& e) {
  tcpx::detail::set_last_status(tcpx::Status::InvalidArgument);
  tcpx::detail::set_last_error(e.what());
  tcpx::detail::report_failure(what);
  return -1;
}

int ok() {
  tcpx::detail::set_last_status(tcpx::Status::Ok);
  return 0;
}

}  // namespace

int bootstrap_server_create(int port, int* client_fd) {
  if (client_fd == nullptr) return failed("bootstrap_server_create", "NULL client_fd");
  try {
    *client_fd = tcpx::ffi::bootstrap_serve(port, timeout_ms());
    return ok();
  } catch (const std::exception& e) {
    *client_fd = -1;
    return failed("bootstrap_server_create", e);
  }
}

int bootstrap_server_send_handles(int client_fd, const std::vector<ncclNetHandle_v7>& handles,
                                  const BootstrapPlan& plan) {
  try {
    rust::Slice<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(handles.data()),
                                     handles.size() * sizeof(ncclNetHandle_v7));
    tcpx::ffi::PeerPlan p{plan.gpu, plan.chunk_bytes, plan.bytes, plan.iters};
    tcpx::ffi::bootstrap_send_handles(client_fd, bytes, p, timeout_ms());
    return ok();
  } catch (const std::exception& e) {
    return failed("bootstrap_server_send_handles", e);
  }
}

int bootstrap_server_send_handles(int client_fd, const std::vector<ncclNetHandle_v7>& handles) {
  return bootstrap_server_send_handles(client_fd, handles, BootstrapPlan());
}

int bootstrap_client_connect(const char* server_ip, int port, int gpu, int* server_fd) {
  if (server_ip == nullptr || server_fd == nullptr || gpu < 0)
    return failed("bootstrap_client_connect", "NULL server_ip / server_fd or negative GPU");
  try {
    *server_fd = tcpx::ffi::bootstrap_connect(rust::Str(server_ip), port,
                                              static_cast<uint32_t>(gpu), timeout_ms());
    return ok();
  } catch (const std::exception& e) {
    *server_fd = -1;
    return failed("bootstrap_client_connect", e);
  }
}

int bootstrap_client_connect(const char* server_ip, int port, int* server_fd) {
  return bootstrap_client_connect(server_ip, port, 0, server_fd);
}

int bootstrap_client_recv_handles(int server_fd, std::vector<ncclNetHandle_v7>& handles,
                                  BootstrapPlan* plan) {
  try {
    tcpx::ffi::ReceivedHandles r = tcpx::ffi::bootstrap_recv_handles(server_fd, timeout_ms());
    handles.assign(r.count, ncclNetHandle_v7{});
    if (r.handles.size() != r.count * sizeof(ncclNetHandle_v7))
      return failed("bootstrap_client_recv_handles", "handle bytes do not match the count");
    std::memcpy(handles.data(), r.handles.data(), r.handles.size());
    if (plan != nullptr) {
      plan->gpu = r.plan.gpu;
      plan->chunk_bytes = r.plan.chunk_bytes;
      plan->bytes = r.plan.bytes;
      plan->iters = r.plan.iters;
    }
    return ok();
  } catch (const std::exception& e) {
    return failed("bootstrap_client_recv_handles", e);
  }
}

int bootstrap_client_recv_handles(int server_fd, std::vector<ncclNetHandle_v7>& handles) {
  return bootstrap_client_recv_handles(server_fd, handles, nullptr);
}

int bootstrap_barrier(int fd, uint32_t token) {
  try {
    tcpx::ffi::bootstrap_barrier(fd, token, timeout_ms());
    return ok();
  } catch (const std::exception& e) {
    return failed("bootstrap_barrier", e);
  }
}

int bootstrap_finish(int fd, const BootstrapSummary& ours, BootstrapSummary* theirs) {
  try {
    tcpx::ffi::DoneSummary mine{ours.bytes, ours.checksum, ours.iters};
    tcpx::ffi::DoneSummary peer = tcpx::ffi::bootstrap_finish(fd, mine, timeout_ms());
    if (theirs != nullptr) {
      theirs->bytes = peer.bytes;
      theirs->checksum = peer.checksum;
      theirs->iters = peer.iters;
    }
    return ok();
  } catch (const std::exception& e) {
    return failed("bootstrap_finish", e);
  }
}

int bootstrap_close(int fd) {
  try {
    return tcpx::ffi::bootstrap_close(fd) ? ok() : -1;
  } catch (...) {
    return -1;
  }
}
