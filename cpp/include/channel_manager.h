/**
 * @file channel_manager.h
 * @brief Drop-in for the C++ tree's ChannelManager: the channels (one TCPX comm each) of one
 *        GPU, backed by tcpx-rs (NIC choice by PCI topology or UCCL_TCPX_NICS). Comms go
 *        through the linked tcpx_* wrappers — this library's, or the tree's own tcpx_impl.cc.
 *
 * Kept: ChannelResources and every method's name, arguments and 0 / -1 returns; channel i of
 * the server pairs with channel i of the client; one SlidingWindow(16) per channel.
 * Changed:
 *  - get_channel / get_channel_for_chunk throw std::out_of_range on a bad index or no channels
 *    (the tree aborted the process).
 *  - server_accept_all / client_connect_all retry "success with a NULL comm" (the tree's
 *    wrappers) until UCCL_TCPX_ACCEPT_TIMEOUT_MS / UCCL_TCPX_CONNECT_TIMEOUT_MS (60000); this
 *    library's wrappers wait themselves and return the comm on the first call.
 *  - A constructor failure (no plugin, no NIC) leaves 0 channels, as in the tree, and
 *    tcpx_last_error() says why.
 *  - The destructor closes whatever is still open and frees the windows.
 */
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tcpx_handles.h"
#include "tcpx_interface.h"

class SlidingWindow;

/// One channel: one TCPX comm (server: listen + recv; client: send).
struct ChannelResources {
  int channel_id = 0;
  int net_dev = 0;       ///< plugin device (NIC) index
  std::string nic_name;  ///< e.g. "eth1"

  void* listen_comm = nullptr;  ///< server only
  void* recv_comm = nullptr;    ///< server only
  void* send_comm = nullptr;    ///< client only

  alignas(16) std::array<uint8_t, 512> recv_dev_handle_storage{};
  alignas(16) std::array<uint8_t, 512> send_dev_handle_storage{};
  void* recv_dev_handle = nullptr;  ///< points into recv_dev_handle_storage
  void* send_dev_handle = nullptr;  ///< points into send_dev_handle_storage

  void* mhandle = nullptr;  ///< registration of register_memory's buffer on this comm

  SlidingWindow* sliding_window = nullptr;  ///< owned by the ChannelManager

  uint64_t bytes_transferred = 0;
  int chunks_processed = 0;
};

class ChannelManager {
 public:
  ChannelManager(int num_channels, int gpu_id);
  ~ChannelManager();

  ChannelManager(const ChannelManager&) = delete;
  ChannelManager& operator=(const ChannelManager&) = delete;

  int get_num_channels() const { return num_channels_; }
  int get_gpu_id() const { return gpu_id_; }

  /// Throws std::out_of_range for idx outside 0..get_num_channels()-1.
  ChannelResources& get_channel(int idx);
  /// Round-robin: channel chunk_idx % get_num_channels(). Throws std::out_of_range for a
  /// negative chunk_idx or no channels.
  ChannelResources& get_channel_for_chunk(int chunk_idx);

  /// tcpx_listen on every channel's NIC; `handles` is resized to the channel count.
  int server_listen_all(std::vector<ncclNetHandle_v7>& handles);
  /// tcpx_accept_v5 on every channel, in order.
  int server_accept_all();
  /// tcpx_connect_v5 of channel i to handles[i]; the count must match.
  int client_connect_all(const std::vector<ncclNetHandle_v7>& handles);

  /// Registers the same buffer with every channel's recv (is_recv) or send comm. The buffer
  /// must stay valid until deregister_memory / close_all.
  int register_memory(void* buffer, size_t size, int ptr_type, bool is_recv);
  int deregister_memory(bool is_recv);

  /// Receive side: closes recv then listen comms; send side: send comms.
  void close_all(bool is_recv);

 private:
  int num_channels_ = 0;
  int gpu_id_ = 0;
  std::vector<ChannelResources> channels_;
};
