// The tcpx_* wrappers: thin C glue over the bridge's comm registry (ffi-cxx/src/comms.rs).
// Every function catches everything: no exception leaves a C function.
#include "tcpx_interface.h"

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "glue.h"
#include "tcpx_handles.h"

using tcpx::Status;
using tcpx::detail::from_ffi;
using tcpx::detail::ptr;
using tcpx::detail::tok;

namespace {

int finish(const tcpx::ffi::Outcome& o, const char* what) {
  tcpx::detail::set_last_status(from_ffi(o.status));
  if (o.status != tcpx::ffi::Status::Ok) tcpx::detail::debug_failure(what);
  return o.rc;
}

int refuse(const char* what, const char* why) {
  tcpx::detail::set_last_status(Status::InvalidArgument);
  tcpx::detail::set_last_error(std::string(what) + ": " + why);
  tcpx::detail::debug_failure(what);
  return -1;
}

int internal(const char* what) {
  tcpx::detail::set_last_status(Status::Internal);
  tcpx::detail::set_last_error(std::string(what) + ": unexpected C++ exception");
  return -1;
}

struct PropStrings {
  std::string name;
  std::string pci_path;
};

std::mutex g_props_mu;
std::map<int, std::unique_ptr<PropStrings>> g_props;  // strings live until exit

}  // namespace

extern "C" {

int tcpx_load_plugin(char const* plugin_path) {
  if (plugin_path == nullptr) return refuse("tcpx_load_plugin", "NULL path");
  try {
    return finish(tcpx::ffi::plugin_load(rust::Str(plugin_path)), "tcpx_load_plugin");
  } catch (...) {
    return internal("tcpx_load_plugin");
  }
}

int tcpx_get_device_count() {
  try {
    auto o = tcpx::ffi::plugin_device_count();
    finish(o, "tcpx_get_device_count");
    return o.status == tcpx::ffi::Status::Ok ? static_cast<int>(o.value) : -1;
  } catch (...) {
    return internal("tcpx_get_device_count");
  }
}

int tcpx_get_properties(int dev, struct tcpx_net_properties* props) {
  if (props == nullptr) return refuse("tcpx_get_properties", "NULL props");
  try {
    auto p = tcpx::ffi::plugin_properties(dev);
    tcpx::detail::set_last_status(from_ffi(p.status));
    if (p.status != tcpx::ffi::Status::Ok) {
      tcpx::detail::debug_failure("tcpx_get_properties");
      return p.rc;
    }
    const PropStrings* strings;
    {
      std::lock_guard<std::mutex> lock(g_props_mu);
      auto& slot = g_props[dev];
      std::string name(p.name.data(), p.name.size());
      std::string pci(p.pci_path.data(), p.pci_path.size());
      if (!slot || slot->name != name || slot->pci_path != pci) {
        // Never freed while the process runs: earlier pointers stay valid.
        slot.release();
        slot.reset(new PropStrings{name, pci});
      }
      strings = slot.get();
    }
    props->name = strings->name.c_str();
    props->pci_path = p.has_pci_path ? strings->pci_path.c_str() : nullptr;
    props->guid = p.guid;
    props->ptr_support = p.ptr_support;
    props->speed = p.speed;
    props->port = p.port;
    props->latency = p.latency;
    props->max_comms = p.max_comms;
    props->max_recvs = p.max_recvs;
    props->net_device_type = p.net_device_type;
    props->net_device_version = p.net_device_version;
    return 0;
  } catch (...) {
    return internal("tcpx_get_properties");
  }
}

int tcpx_listen(int dev, void* handle, void** listen_comm) {
  if (handle == nullptr || listen_comm == nullptr)
    return refuse("tcpx_listen", "NULL handle or listen_comm");
  try {
    rust::Slice<uint8_t> out(static_cast<uint8_t*>(handle), sizeof(ncclNetHandle_v7));
    auto o = tcpx::ffi::comm_listen(dev, out);
    *listen_comm = o.status == tcpx::ffi::Status::Ok ? ptr(o.value) : nullptr;
    return finish(o, "tcpx_listen");
  } catch (...) {
    return internal("tcpx_listen");
  }
}

int tcpx_connect_v5(int dev, void* handle, void** send_comm, void** send_dev_handle) {
  (void)send_dev_handle;  // TCPX does not write a send device handle
  if (handle == nullptr || send_comm == nullptr)
    return refuse("tcpx_connect_v5", "NULL handle or send_comm");
  try {
    rust::Slice<const uint8_t> in(static_cast<const uint8_t*>(handle), sizeof(ncclNetHandle_v7));
    auto o = tcpx::ffi::comm_connect(dev, in);
    *send_comm = o.status == tcpx::ffi::Status::Ok ? ptr(o.value) : nullptr;
    return finish(o, "tcpx_connect_v5");
  } catch (...) {
    return internal("tcpx_connect_v5");
  }
}

int tcpx_accept_v5(void* listen_comm, void** recv_comm, void** recv_dev_handle) {
  if (recv_comm == nullptr) return refuse("tcpx_accept_v5", "NULL recv_comm");
  try {
    auto a = tcpx::ffi::comm_accept(tok(listen_comm));
    tcpx::detail::set_last_status(from_ffi(a.status));
    if (a.status != tcpx::ffi::Status::Ok) {
      *recv_comm = nullptr;
      tcpx::detail::debug_failure("tcpx_accept_v5");
      return a.rc;
    }
    *recv_comm = ptr(a.comm);
    if (recv_dev_handle != nullptr && *recv_dev_handle != nullptr) {
      tcpx_net_device_handle h;
      std::memset(&h, 0, sizeof(h));
      h.net_device_type = a.dev_handle.net_device_type;
      h.net_device_version = a.dev_handle.net_device_version;
      h.handle = ptr(a.dev_handle.handle);
      h.size = static_cast<size_t>(a.dev_handle.size);
      h.needs_proxy_progress = a.dev_handle.needs_proxy_progress;
      std::memcpy(*recv_dev_handle, &h, sizeof(h));
    }
    return 0;
  } catch (...) {
    return internal("tcpx_accept_v5");
  }
}

int tcpx_reg_mr(void* comm, void* data, size_t size, int type, void** mhandle) {
  if (mhandle == nullptr) return refuse("tcpx_reg_mr", "NULL mhandle");
  try {
    auto o = tcpx::ffi::comm_reg_mr(tok(comm), tok(data), static_cast<uint64_t>(size), type);
    *mhandle = o.status == tcpx::ffi::Status::Ok ? ptr(o.value) : nullptr;
    return finish(o, "tcpx_reg_mr");
  } catch (...) {
    return internal("tcpx_reg_mr");
  }
}

int tcpx_dereg_mr(void* comm, void* mhandle) {
  try {
    return finish(tcpx::ffi::comm_dereg_mr(tok(comm), tok(mhandle)), "tcpx_dereg_mr");
  } catch (...) {
    return internal("tcpx_dereg_mr");
  }
}

int tcpx_isend(void* send_comm, void* data, int size, int tag, void* mhandle, void** request) {
  (void)tag;  // TCPX ignores tags: matching is FIFO per comm
  if (request == nullptr) return refuse("tcpx_isend", "NULL request");
  try {
    auto o = tcpx::ffi::comm_isend(tok(send_comm), tok(data), size, tok(mhandle));
    *request = o.status == tcpx::ffi::Status::Ok ? ptr(o.value) : nullptr;
    return finish(o, "tcpx_isend");
  } catch (...) {
    return internal("tcpx_isend");
  }
}

int tcpx_irecv(void* recv_comm, int n, void** data, int* sizes, int* tags, void** mhandles,
               void** request) {
  (void)tags;
  if (request == nullptr) return refuse("tcpx_irecv", "NULL request");
  *request = nullptr;
  if (n != 1) return refuse("tcpx_irecv", "n must be 1 (TCPX receives one buffer per irecv)");
  if (data == nullptr || sizes == nullptr || mhandles == nullptr)
    return refuse("tcpx_irecv", "NULL data, sizes or mhandles");
  try {
    auto o = tcpx::ffi::comm_irecv(tok(recv_comm), tok(data[0]), sizes[0], tok(mhandles[0]));
    if (o.status == tcpx::ffi::Status::Ok) *request = ptr(o.value);
    return finish(o, "tcpx_irecv");
  } catch (...) {
    return internal("tcpx_irecv");
  }
}

int tcpx_test(void* request, int* done, int* size) {
  if (done == nullptr) return refuse("tcpx_test", "NULL done");
  *done = 0;
  try {
    auto t = tcpx::ffi::request_test(tok(request));
    *done = t.done;
    if (size != nullptr && t.done != 0) *size = t.size;
    tcpx::detail::set_last_status(from_ffi(t.status));
    if (t.status != tcpx::ffi::Status::Ok && t.status != tcpx::ffi::Status::NotReady)
      tcpx::detail::debug_failure("tcpx_test");
    return t.rc;
  } catch (...) {
    return internal("tcpx_test");
  }
}

int tcpx_irecv_consumed(void* comm, int n, void* request) {
  if (n != 1) return refuse("tcpx_irecv_consumed", "n must be 1");
  try {
    return finish(tcpx::ffi::comm_irecv_consumed(tok(comm), tok(request)),
                  "tcpx_irecv_consumed");
  } catch (...) {
    return internal("tcpx_irecv_consumed");
  }
}

int tcpx_close_send(void* send_comm) {
  try {
    return finish(tcpx::ffi::comm_close(tok(send_comm), tcpx::ffi::CommKind::Send),
                  "tcpx_close_send");
  } catch (...) {
    return internal("tcpx_close_send");
  }
}

int tcpx_close_recv(void* recv_comm) {
  try {
    return finish(tcpx::ffi::comm_close(tok(recv_comm), tcpx::ffi::CommKind::Recv),
                  "tcpx_close_recv");
  } catch (...) {
    return internal("tcpx_close_recv");
  }
}

int tcpx_close_listen(void* listen_comm) {
  try {
    return finish(tcpx::ffi::comm_close(tok(listen_comm), tcpx::ffi::CommKind::Listen),
                  "tcpx_close_listen");
  } catch (...) {
    return internal("tcpx_close_listen");
  }
}

int tcpx_comm_outstanding(void* comm) {
  try {
    auto o = tcpx::ffi::comm_outstanding(tok(comm));
    finish(o, "tcpx_comm_outstanding");
    return o.status == tcpx::ffi::Status::Ok ? static_cast<int>(o.value) : -1;
  } catch (...) {
    return internal("tcpx_comm_outstanding");
  }
}

int tcpx_request_unpack_slot(void* request) {
  try {
    auto o = tcpx::ffi::request_unpack_slot(tok(request));
    finish(o, "tcpx_request_unpack_slot");
    return o.status == tcpx::ffi::Status::Ok ? static_cast<int>(o.value) : -1;
  } catch (...) {
    return internal("tcpx_request_unpack_slot");
  }
}

int tcpx_last_status() { return static_cast<int>(tcpx::detail::last_status()); }

const char* tcpx_last_error() { return tcpx::detail::last_error_c(); }

}  // extern "C"
