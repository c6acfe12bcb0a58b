/**
 * @file tcpx_interface.h
 * @brief Drop-in for the C++ tree's TCPX plugin wrappers, backed by tcpx-rs.
 *
 * Same names, signatures and meaning as the tree's `tcpx_interface.h`: int return codes,
 * opaque `void*` comms, requests and memory handles. What changed is in cpp/README.md; in
 * short:
 *
 *  - Return codes: 0 success; the plugin's ncclResult_t (1..7) when the plugin call failed
 *    (2: socket error / peer closed); 3 — TCPX's own answer — for a 17th outstanding request
 *    on a comm, a test of a request that is not the comm's oldest, and an irecv_consumed out of
 *    order or before done (caught here, before the plugin sees them); -1 when the wrapper
 *    refused the call (no plugin, NULL / unknown / closed / foreign handle, wrong comm kind,
 *    pointer outside the registration, n != 1, deadline passed). Nothing aborts the process.
 *  - Comms, requests and mhandles are opaque tokens, not the plugin's pointers: never
 *    dereference them (the tree read `tcpxRequest` fields through the request pointer; use
 *    unpack_launch.h instead).
 *  - tcpx_connect_v5 / tcpx_accept_v5 wait for TCPX's background handshake themselves (up to
 *    UCCL_TCPX_CONNECT_TIMEOUT_MS / UCCL_TCPX_ACCEPT_TIMEOUT_MS, default 60000) and return the
 *    comm, instead of "success with a NULL comm"; retry loops written for the tree still work.
 *  - The plugin is loaded once per process (UCCL_TCPX_PLUGIN_PATH, default
 *    /usr/local/tcpx/lib64/libnccl-net-tcpx.so, or tcpx_load_plugin); init's result is checked.
 *
 * Thread safety: any function may be called from any thread; calls on one comm are
 * serialised internally (TCPX comms are not thread-safe).
 */
#pragma once

#include <cstddef>
#include <cstdint>

// NCCL memory type constants
#define NCCL_PTR_HOST 0x1
#define NCCL_PTR_CUDA 0x2

extern "C" {

/// Loads the plugin at `plugin_path` (once per process; the same path again is a no-op,
/// another path is refused). 0 or -1.
int tcpx_load_plugin(char const* plugin_path);

/// Number of NICs the plugin drives (loads the plugin lazily), or -1.
int tcpx_get_device_count();

struct tcpx_net_properties {
  const char* name;      ///< interface name, e.g. "eth1" (valid until process exit)
  const char* pci_path;  ///< PCI path in /sys, or NULL
  uint64_t guid;
  int ptr_support;  ///< NCCL_PTR_HOST | NCCL_PTR_CUDA
  int speed;        ///< Mbps
  int port;
  float latency;  ///< µs
  int max_comms;
  int max_recvs;
  int net_device_type;
  int net_device_version;
};

int tcpx_get_properties(int dev, struct tcpx_net_properties* props);

/// Listen on device `dev`; writes the 128-byte handle to send to the peer.
int tcpx_listen(int dev, void* handle, void** listen_comm);
/// Connect to a peer's handle; waits until the peer accepted. Does not write send_dev_handle.
int tcpx_connect_v5(int dev, void* handle, void** send_comm, void** send_dev_handle);
/// Accept the one connection of `listen_comm`; waits for it. If `recv_dev_handle` and
/// `*recv_dev_handle` are non-NULL, the 32-byte device handle is copied into that storage.
int tcpx_accept_v5(void* listen_comm, void** recv_comm, void** recv_dev_handle);

/// Register `data..data+size` (host or CUDA memory; CUDA: 4 KiB aligned, size < 2 GiB) with a
/// send or receive comm. The memory must stay valid until tcpx_dereg_mr or the comm's close.
int tcpx_reg_mr(void* comm, void* data, size_t size, int type, void** mhandle);
/// Deregister; refused (-1) while requests of the comm are pending.
int tcpx_dereg_mr(void* comm, void* mhandle);

/// Post a send of `size` bytes at `data` (inside the registration of `mhandle`). The tag is
/// ignored (TCPX matches in FIFO order per comm).
int tcpx_isend(void* send_comm, void* data, int size, int tag, void* mhandle, void** request);
/// Post a receive; `n` must be 1.
int tcpx_irecv(void* recv_comm, int n, void** data, int* sizes, int* tags, void** mhandles,
               void** request);
/// Test a request (only the oldest not-done request of its comm). On done, `*size` gets the
/// size posted (TCPX itself never writes it).
int tcpx_test(void* request, int* done, int* size);
/// Release a completed receive (n must be 1), oldest first, after its data was unpacked.
int tcpx_irecv_consumed(void* comm, int n, void* request);

int tcpx_close_send(void* send_comm);
int tcpx_close_recv(void* recv_comm);
int tcpx_close_listen(void* listen_comm);

// ---- additions (not in the C++ tree) --------------------------------------------------------

/// Outstanding requests of a comm (posted, or done and not yet consumed), or -1.
int tcpx_comm_outstanding(void* comm);
/// The unpack slot (0..15) of an outstanding receive: TCPX publishes its fragments in row
/// `slot` of the comm's netUnpackMeta (`mem[slot][0..cnt[slot]]`). -1 for anything else.
int tcpx_request_unpack_slot(void* request);
/// tcpx::Status (as int) of this thread's last tcpx_* call.
int tcpx_last_status();
/// Message of this thread's last failed call ("" if none); valid until the next call.
const char* tcpx_last_error();
}
