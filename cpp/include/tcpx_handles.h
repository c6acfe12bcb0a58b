/**
 * @file tcpx_handles.h
 * @brief The opaque handle types the TCPX plugin exchanges (drop-in for the C++ tree's header).
 *
 * ncclNetHandle_v7 is the 128-byte listen handle a server sends to its client over the
 * bootstrap; tcpx_net_device_handle is the 32-byte receive device handle TCPX writes on accept
 * (NCCL's ncclNetDeviceHandle_v7_t). Both layouts are checked at compile time.
 */
#pragma once

#include <cstddef>
#include <cstdint>

/// The 128-byte listen handle (`NCCL_NET_HANDLE_MAXSIZE`).
struct ncclNetHandle_v7 {
  char data[128];
};
static_assert(sizeof(ncclNetHandle_v7) == 128, "ncclNetHandle_v7 is 128 bytes");

/// The receive device handle `tcpx_accept_v5` copies into the caller's storage.
/// For TCPX, `handle` is a *device* pointer to the 24-byte unpack handle
/// `{netUnpackMeta* meta, void* bounce_buf, uint64_t head}`.
struct tcpx_net_device_handle {
  int net_device_type;     ///< NCCL_NET_DEVICE_* (TCPX: 1, UNPACK)
  int net_device_version;  ///< TCPX: 7
  void* handle;            ///< device pointer to the unpack handle
  size_t size;             ///< size of *handle (24)
  int needs_proxy_progress;
};
static_assert(sizeof(tcpx_net_device_handle) == 32, "ncclNetDeviceHandle_v7_t is 32 bytes");
static_assert(offsetof(tcpx_net_device_handle, handle) == 8, "handle at 8");
static_assert(offsetof(tcpx_net_device_handle, size) == 16, "size at 16");
static_assert(offsetof(tcpx_net_device_handle, needs_proxy_progress) == 24,
              "needs_proxy_progress at 24");
