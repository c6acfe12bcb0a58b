// ChannelManager: NICs listed through the linked tcpx_* wrappers, chosen by tcpx-rs's topology
// code (ffi-cxx/src/channels.rs); listen / accept / connect / register through the wrappers;
// one SlidingWindow per channel.
#include "channel_manager.h"

#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "glue.h"
#include "sliding_window.h"

namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point deadline_from(const char* env) {
  return Clock::now() + std::chrono::milliseconds(tcpx::detail::env_ms(env, 60000));
}

}  // namespace

ChannelManager::ChannelManager(int num_channels, int gpu_id) : gpu_id_(gpu_id) {
  try {
    const int devs = tcpx_get_device_count();
    if (devs <= 0) {
      tcpx::detail::set_last_error("ChannelManager: the plugin reports no devices (or none loaded)");
      tcpx::detail::report_failure("ChannelManager");
      return;
    }
    std::vector<tcpx::ffi::NicDesc> nics;
    for (int d = 0; d < devs; ++d) {
      tcpx_net_properties p;
      if (tcpx_get_properties(d, &p) != 0) continue;
      nics.push_back(tcpx::ffi::NicDesc{d, rust::String(p.name != nullptr ? p.name : ""),
                                        rust::String(p.pci_path != nullptr ? p.pci_path : "")});
    }
    rust::Vec<int32_t> chosen = tcpx::ffi::choose_nics(
        gpu_id, num_channels, rust::Slice<const tcpx::ffi::NicDesc>(nics.data(), nics.size()));
    channels_.resize(chosen.size());
    for (size_t i = 0; i < chosen.size(); ++i) {
      ChannelResources& ch = channels_[i];
      ch.channel_id = static_cast<int>(i);
      ch.net_dev = chosen[i];
      for (const auto& n : nics) {
        if (n.dev == ch.net_dev) ch.nic_name.assign(n.name.data(), n.name.size());
      }
      ch.recv_dev_handle = ch.recv_dev_handle_storage.data();
      ch.send_dev_handle = ch.send_dev_handle_storage.data();
      ch.sliding_window = new SlidingWindow(16);
    }
    num_channels_ = static_cast<int>(channels_.size());
  } catch (const std::exception& e) {
    for (auto& ch : channels_) delete ch.sliding_window;
    channels_.clear();
    num_channels_ = 0;
    tcpx::detail::set_last_error(e.what());
    tcpx::detail::report_failure("ChannelManager");
  }
}

ChannelManager::~ChannelManager() {
  for (auto& ch : channels_) {
    if (ch.mhandle != nullptr) {
      tcpx_dereg_mr(ch.recv_comm != nullptr ? ch.recv_comm : ch.send_comm, ch.mhandle);
      ch.mhandle = nullptr;
    }
  }
  close_all(true);
  close_all(false);
  for (auto& ch : channels_) {
    delete ch.sliding_window;
    ch.sliding_window = nullptr;
  }
}

ChannelResources& ChannelManager::get_channel(int idx) {
  if (idx < 0 || idx >= num_channels_) {
    throw std::out_of_range("ChannelManager::get_channel: index " + std::to_string(idx) +
                            " outside 0.." + std::to_string(num_channels_ - 1));
  }
  return channels_[static_cast<size_t>(idx)];
}

ChannelResources& ChannelManager::get_channel_for_chunk(int chunk_idx) {
  if (num_channels_ <= 0 || chunk_idx < 0) {
    throw std::out_of_range("ChannelManager::get_channel_for_chunk: chunk " +
                            std::to_string(chunk_idx) + " with " +
                            std::to_string(num_channels_) + " channels");
  }
  return channels_[static_cast<size_t>(chunk_idx % num_channels_)];
}

int ChannelManager::server_listen_all(std::vector<ncclNetHandle_v7>& handles) {
  if (num_channels_ <= 0) return -1;
  handles.assign(static_cast<size_t>(num_channels_), ncclNetHandle_v7{});
  for (int i = 0; i < num_channels_; ++i) {
    ChannelResources& ch = channels_[static_cast<size_t>(i)];
    if (tcpx_listen(ch.net_dev, &handles[static_cast<size_t>(i)], &ch.listen_comm) != 0) {
      std::fprintf(stderr, "[ChannelManager] tcpx_listen failed on channel %d (%s): %s\n", i,
                   ch.nic_name.c_str(), tcpx::detail::last_error_c());
      return -1;
    }
  }
  return 0;
}

int ChannelManager::server_accept_all() {
  if (num_channels_ <= 0) return -1;
  const auto deadline = deadline_from("UCCL_TCPX_ACCEPT_TIMEOUT_MS");
  for (auto& ch : channels_) {
    int rc = 0;
    // This library's accept waits; the tree's answers "success, NULL comm" until it is done.
    while ((rc = tcpx_accept_v5(ch.listen_comm, &ch.recv_comm, &ch.recv_dev_handle)) == 0 &&
           ch.recv_comm == nullptr && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (rc != 0 || ch.recv_comm == nullptr) {
      std::fprintf(stderr, "[ChannelManager] tcpx_accept_v5 failed on channel %d (%s): rc=%d %s\n",
                   ch.channel_id, ch.nic_name.c_str(), rc, tcpx::detail::last_error_c());
      return -1;
    }
  }
  return 0;
}

int ChannelManager::client_connect_all(const std::vector<ncclNetHandle_v7>& handles) {
  if (num_channels_ <= 0) return -1;
  if (handles.size() != static_cast<size_t>(num_channels_)) {
    std::fprintf(stderr, "[ChannelManager] %zu handles for %d channels\n", handles.size(),
                 num_channels_);
    return -1;
  }
  const auto deadline = deadline_from("UCCL_TCPX_CONNECT_TIMEOUT_MS");
  for (auto& ch : channels_) {
    // One writable copy per channel, reused across retries (TCPX keeps connect state in it).
    ncclNetHandle_v7 copy = handles[static_cast<size_t>(ch.channel_id)];
    int rc = 0;
    while ((rc = tcpx_connect_v5(ch.net_dev, &copy, &ch.send_comm, &ch.send_dev_handle)) == 0 &&
           ch.send_comm == nullptr && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (rc != 0 || ch.send_comm == nullptr) {
      std::fprintf(stderr, "[ChannelManager] tcpx_connect_v5 failed on channel %d (%s): rc=%d %s\n",
                   ch.channel_id, ch.nic_name.c_str(), rc, tcpx::detail::last_error_c());
      return -1;
    }
  }
  return 0;
}

int ChannelManager::register_memory(void* buffer, size_t size, int ptr_type, bool is_recv) {
  if (num_channels_ <= 0) return -1;
  for (auto& ch : channels_) {
    void* comm = is_recv ? ch.recv_comm : ch.send_comm;
    if (tcpx_reg_mr(comm, buffer, size, ptr_type, &ch.mhandle) != 0) {
      std::fprintf(stderr, "[ChannelManager] tcpx_reg_mr failed on channel %d: %s\n",
                   ch.channel_id, tcpx::detail::last_error_c());
      return -1;
    }
  }
  return 0;
}

int ChannelManager::deregister_memory(bool is_recv) {
  int rc = 0;
  for (auto& ch : channels_) {
    if (ch.mhandle == nullptr) continue;
    void* comm = is_recv ? ch.recv_comm : ch.send_comm;
    if (tcpx_dereg_mr(comm, ch.mhandle) != 0) rc = -1;
    ch.mhandle = nullptr;
  }
  return rc;
}

void ChannelManager::close_all(bool is_recv) {
  for (auto& ch : channels_) {
    if (ch.sliding_window != nullptr) ch.sliding_window->clear();
    if (is_recv) {
      if (ch.recv_comm != nullptr) tcpx_close_recv(ch.recv_comm);
      if (ch.listen_comm != nullptr) tcpx_close_listen(ch.listen_comm);
      ch.recv_comm = nullptr;
      ch.listen_comm = nullptr;
    } else {
      if (ch.send_comm != nullptr) tcpx_close_send(ch.send_comm);
      ch.send_comm = nullptr;
    }
  }
}
