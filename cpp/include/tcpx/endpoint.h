/**
 * @file tcpx/endpoint.h
 * @brief tcpx::Endpoint: the whole tcpx-rs engine for C++ transports.
 *
 * One endpoint per GPU owns a progress thread that keeps every channel of every connection
 * busy (posts while windows have room, tests every head, consumes in FIFO order). A connection
 * moves data one way: serve() receives, connect() sends; both sides post transfers of the same
 * lengths in the same order.
 *
 * Setup calls throw tcpx::Error (a std::runtime_error with a status); the data path (post,
 * poll, wait) returns tcpx::Status, never throws, and allocates nothing.
 *
 *   tcpx::Endpoint ep({.channels = 4});
 *   auto conn = ep.serve(20000);                  // or ep.connect("10.0.0.2", 20000, bytes, iters)
 *   uint32_t buf = ep.register_memory(ptr, len);  // caller keeps ptr alive
 *   uint64_t id;
 *   if (ep.post(conn.id, buf, 0, len, &id) == tcpx::Status::Ok) ep.wait(id, 30000, &result);
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "tcpx/status.h"

namespace tcpx {

namespace detail {
struct EndpointImpl;
}

/// A setup failure.
class Error : public std::runtime_error {
 public:
  Error(Status status, const std::string& what) : std::runtime_error(what), status_(status) {}
  Status status() const noexcept { return status_; }

 private:
  Status status_;
};

struct EndpointConfig {
  std::string plugin_path;      ///< "" = UCCL_TCPX_PLUGIN_PATH or the default path
  uint32_t gpu = 0;             ///< GPU index (topology key)
  uint16_t channels = 8;        ///< channels per connection (the serving side decides)
  uint32_t chunk_bytes = 512 * 1024;  ///< <= 4 MiB, a multiple of 4 KiB (serving side decides)
  std::string nics;             ///< comma-separated interface names; "" = by PCI topology
  bool pin_progress_thread = false;  ///< pin to the GPU's NUMA node
  /// A connection whose transfers make no progress this long fails them; it also bounds a
  /// setup call's wait for the progress thread and the destructor's wait for it to stop.
  uint64_t stall_timeout_ms = 30000;
};

enum class MemoryKind { Host, Cuda };

struct ConnectionInfo {
  uint32_t id = 0;
  uint32_t peer_gpu = 0;
  uint16_t channels = 0;
  uint32_t chunk_bytes = 0;
  uint64_t bytes = 0;  ///< bytes per iteration the client proposed
  uint32_t iters = 0;
};

struct TransferResult {
  Status status = Status::NotReady;
  uint64_t id = 0;
  uint64_t bytes = 0;
  uint32_t chunks = 0;
  uint64_t elapsed_ns = 0;
};

struct RunSummary {
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  uint32_t iters = 0;
};

class Endpoint {
 public:
  explicit Endpoint(const EndpointConfig& config);
  ~Endpoint();
  Endpoint(Endpoint&&) noexcept;
  Endpoint& operator=(Endpoint&&) noexcept;
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  /// Registers caller-owned memory on every channel; it must outlive the endpoint.
  uint32_t register_memory(void* ptr, size_t len, MemoryKind kind = MemoryKind::Host);
  /// Accepts one client on 0.0.0.0:port; a receive connection.
  ConnectionInfo serve(int port, uint64_t timeout_ms = 60000);
  /// Connects to a serving endpoint; a send connection.
  ConnectionInfo connect(const std::string& host, int port, uint64_t bytes, uint32_t iters,
                         uint64_t timeout_ms = 60000);

  /// Posts a transfer of `len` bytes at `offset` in buffer `buf`; its id in *id.
  Status post(uint32_t conn, uint32_t buf, uint64_t offset, uint64_t len, uint64_t* id) noexcept;
  /// One completion if any (NotReady if none); *out gets it.
  Status poll(TransferResult* out) noexcept;
  /// Waits for transfer `id`; InvalidArgument for an id not in flight.
  Status wait(uint64_t id, uint64_t timeout_ms, TransferResult* out) noexcept;
  /// Transfers posted and not yet taken.
  uint32_t in_flight() const noexcept;

  void barrier(uint32_t conn, uint32_t token, uint64_t timeout_ms = 60000);
  /// Exchanges end-of-run summaries; returns the peer's.
  RunSummary finish(uint32_t conn, const RunSummary& ours, uint64_t timeout_ms = 60000);

 private:
  std::unique_ptr<detail::EndpointImpl> impl_;
};

}  // namespace tcpx
