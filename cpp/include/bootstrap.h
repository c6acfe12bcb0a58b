/**
 * @file bootstrap.h
 * @brief Drop-in for the C++ tree's bootstrap (TCP exchange of TCPX handles), backed by
 *        tcpx-rs: framed, versioned messages, a deadline on every step.
 *
 * Kept: the four calls, their arguments and 0 / -1 returns; the server sends one handle per
 * channel and the client learns the channel count from it.
 *
 * Changed:
 *  - The wire format is framed and versioned (magic "TCPX", version, kind, length), with a
 *    hello from the client first. Both sides must use this library; a peer speaking the tree's
 *    raw format is refused with a clear error, not misread.
 *  - The client retries its connect until the server listens, and every step ends at
 *    UCCL_TCPX_BOOTSTRAP_TIMEOUT_MS (default 60000) instead of blocking forever.
 *  - The int handed out is a bootstrap handle, not an OS descriptor: it is >= 2^30, so close()
 *    on it is a harmless EBADF. Release it with bootstrap_close().
 *  - Additions: the server's plan (GPU, chunk size, bytes, iterations) travels with the
 *    handles; barriers; bootstrap_finish exchanges end-of-run summaries so neither side closes
 *    its comms while the other still tests them (the tree's rc=2 at the end of a run).
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tcpx_handles.h"

constexpr int kBootstrapPort = 12347;
constexpr size_t kHandleBytes = 128;

/// What the server decided; sent with its handles.
struct BootstrapPlan {
  uint32_t gpu = 0;
  uint32_t chunk_bytes = 0;
  uint64_t bytes = 0;
  uint32_t iters = 0;
};

/// End-of-run summary.
struct BootstrapSummary {
  uint64_t bytes = 0;
  uint64_t checksum = 0;
  uint32_t iters = 0;
};

// ---- server ----
/// Listens on 0.0.0.0:port and accepts one client (and its hello).
int bootstrap_server_create(int port, int* client_fd);
int bootstrap_server_send_handles(int client_fd, const std::vector<ncclNetHandle_v7>& handles);
int bootstrap_server_send_handles(int client_fd, const std::vector<ncclNetHandle_v7>& handles,
                                  const BootstrapPlan& plan);

// ---- client ----
/// Connects to server_ip:port (retrying until the server listens) and says hello as GPU 0.
int bootstrap_client_connect(const char* server_ip, int port, int* server_fd);
/// As above, saying hello as GPU `gpu`.
int bootstrap_client_connect(const char* server_ip, int port, int gpu, int* server_fd);
int bootstrap_client_recv_handles(int server_fd, std::vector<ncclNetHandle_v7>& handles);
int bootstrap_client_recv_handles(int server_fd, std::vector<ncclNetHandle_v7>& handles,
                                  BootstrapPlan* plan);

// ---- both ----
/// Both sides send `token` and check the peer's.
int bootstrap_barrier(int fd, uint32_t token);
/// Exchange end-of-run summaries (then goodbyes); `theirs` may be NULL.
int bootstrap_finish(int fd, const BootstrapSummary& ours, BootstrapSummary* theirs);
/// Release a bootstrap handle. 0, or -1 if it was not open.
int bootstrap_close(int fd);
