// test_tcpx_perf_multi: one process per GPU, N channels, chunks round-robin over them — the
// C++ tree's main benchmark, written against the drop-in headers, with every byte verified.
//
//   test_tcpx_perf_multi server <gpu_id>
//   test_tcpx_perf_multi client <server_ip> [gpu_id]
//
// Variables (the tree's): UCCL_TCPX_NUM_CHANNELS (2, server decides), UCCL_TCPX_PERF_SIZE
// (4 MiB, at most 256 MiB), UCCL_TCPX_PERF_ITERS (10), UCCL_TCPX_CHUNK_BYTES
// (NCCL_P2P_NET_CHUNKSIZE, else 512 KiB), UCCL_TCPX_UNPACK_IMPL (host | none | kernel | d2d),
// UCCL_TCPX_BOOTSTRAP_PORT_BASE (12347; port = base + gpu), UCCL_TCPX_PLUGIN_PATH.
// The server's size, chunk and iteration count travel with its handles, so the client follows.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bootstrap.h"
#include "channel_manager.h"
#include "sliding_window.h"
#include "tcpx_interface.h"
#include "test_common.h"
#include "transfer_loop.h"

using namespace tcpx_programs;

namespace {

constexpr uint64_t kMaxSize = 256ull << 20;

int usage(const char* argv0) {
  std::fprintf(stderr,
               "Usage: %s server <gpu_id>\n       %s client <server_ip> [gpu_id]\n", argv0,
               argv0);
  return 2;
}

/// The pattern seed of iteration `iter` of GPU `gpu`.
uint64_t seed_of(int gpu, int iter) { return (static_cast<uint64_t>(gpu) << 32) | static_cast<uint32_t>(iter); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage(argv[0]);
  const bool is_server = std::strcmp(argv[1], "server") == 0;
  if (!is_server && std::strcmp(argv[1], "client") != 0) return usage(argv[0]);
  const int gpu = is_server ? std::atoi(argv[2]) : (argc > 3 ? std::atoi(argv[3]) : 0);
  const char* server_ip = is_server ? nullptr : argv[2];

  default_env("NCCL_MIN_ZCOPY_SIZE", "4096");
  default_env("NCCL_GPUDIRECTTCPX_MIN_ZCOPY_SIZE", "4096");
  default_env("NCCL_GPUDIRECTTCPX_RECV_SYNC", "1");
  default_env("NCCL_DYNAMIC_CHUNK_SIZE", "524288");

  UnpackMode mode;
  if (!unpack_mode(&mode)) return 2;
  const int port = static_cast<int>(env_int("UCCL_TCPX_BOOTSTRAP_PORT_BASE", 12347)) + gpu;
  const bool is_recv = is_server;
  const char* who = is_server ? "SERVER" : "CLIENT";

  int fd = -1;
  BootstrapPlan plan;
  std::vector<ncclNetHandle_v7> handles;
  int num_channels = 0;
  if (is_server) {
    num_channels = static_cast<int>(env_int("UCCL_TCPX_NUM_CHANNELS", 2));
    plan.gpu = static_cast<uint32_t>(gpu);
    plan.bytes = std::min<uint64_t>(env_size("UCCL_TCPX_PERF_SIZE", 4ull << 20), kMaxSize);
    plan.iters = static_cast<uint32_t>(env_int("UCCL_TCPX_PERF_ITERS", 10));
    plan.chunk_bytes = static_cast<uint32_t>(
        env_size("UCCL_TCPX_CHUNK_BYTES", env_size("NCCL_P2P_NET_CHUNKSIZE", 512 << 10)));
    if (plan.bytes == 0 || plan.iters == 0 || plan.chunk_bytes == 0) {
      std::fprintf(stderr, "[SERVER] size, iterations and chunk size must be positive\n");
      return 2;
    }
  }

  std::printf("[%s] GPU %d, port %d, unpack %s\n", who, gpu, port, mode.name.c_str());
#ifdef TCPX_WITH_CUDA
  // TCPX wants the GPU current on the thread that listens, connects, accepts and registers.
  cudaStream_t cuda_stream = nullptr;
  if (mode.cuda && (cudaSetDevice(gpu) != cudaSuccess ||
                    cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking) != cudaSuccess)) {
    std::fprintf(stderr, "[%s] cannot use GPU %d\n", who, gpu);
    return 1;
  }
#endif

  std::unique_ptr<ChannelManager> cm;
  if (is_server) {
    cm.reset(new ChannelManager(num_channels, gpu));
    if (cm->get_num_channels() != num_channels) {
      std::fprintf(stderr, "[SERVER] ChannelManager: %s\n", tcpx_last_error());
      return 1;
    }
    if (cm->server_listen_all(handles) != 0) return 1;
    if (bootstrap_server_create(port, &fd) != 0) return 1;
    if (bootstrap_server_send_handles(fd, handles, plan) != 0) return 1;
    if (cm->server_accept_all() != 0) return 1;
  } else {
    if (bootstrap_client_connect(server_ip, port, gpu, &fd) != 0) return 1;
    if (bootstrap_client_recv_handles(fd, handles, &plan) != 0) return 1;
    num_channels = static_cast<int>(handles.size());
    cm.reset(new ChannelManager(num_channels, gpu));
    if (cm->get_num_channels() != num_channels) {
      std::fprintf(stderr, "[CLIENT] ChannelManager: %s\n", tcpx_last_error());
      return 1;
    }
    if (cm->client_connect_all(handles) != 0) return 1;
  }
  std::printf("[%s] %d channels, %llu bytes x %u iterations, %u-byte chunks\n", who,
              num_channels, static_cast<unsigned long long>(plan.bytes), plan.iters,
              plan.chunk_bytes);
  for (int i = 0; i < num_channels; ++i) {
    std::printf("[%s] channel %d on %s (dev %d)\n", who, i, cm->get_channel(i).nic_name.c_str(),
                cm->get_channel(i).net_dev);
  }

  Buffer buf;
  if (!buf.alloc(plan.bytes, mode.cuda)) {
    std::fprintf(stderr, "[%s] cannot allocate %llu bytes\n", who,
                 static_cast<unsigned long long>(plan.bytes));
    return 1;
  }
  const uint64_t reg_bytes = (plan.bytes + 4095) / 4096 * 4096;
  if (cm->register_memory(buf.ptr, reg_bytes, mode.cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST,
                          is_recv) != 0)
    return 1;

  // Send windows keep headroom below TCPX's 16 like the tree (12); receive windows use 16.
  std::vector<std::unique_ptr<SlidingWindow>> send_windows;
  std::vector<Stream> streams(1);
  streams[0].base = static_cast<unsigned char*>(buf.ptr);
  streams[0].size = plan.bytes;
  for (int i = 0; i < num_channels; ++i) {
    ChannelResources& ch = cm->get_channel(i);
    ChannelIO io;
    io.comm = is_recv ? ch.recv_comm : ch.send_comm;
    io.mhandle = ch.mhandle;
    if (is_recv) {
      io.window = ch.sliding_window;
    } else {
      send_windows.emplace_back(new SlidingWindow(12));
      io.window = send_windows.back().get();
    }
    streams[0].chs.push_back(io);
  }

#ifdef TCPX_WITH_CUDA
  std::vector<std::unique_ptr<tcpx::RecvUnpacker>> unpackers;
  std::vector<std::unique_ptr<UnpackCtx>> unpack_ctxs;
  if (mode.cuda && is_recv) {
    std::vector<const tcpx_net_device_handle*> dev_handles;
    for (int i = 0; i < num_channels; ++i)
      dev_handles.push_back(static_cast<const tcpx_net_device_handle*>(cm->get_channel(i).recv_dev_handle));
    if (setup_gpu_unpack(streams[0], dev_handles, cuda_stream, mode.name == "d2d",
                         plan.chunk_bytes, gpu, unpackers, unpack_ctxs) != 0)
      return 1;
  }
#endif
  if (bootstrap_barrier(fd, 1) != 0) return 1;

  double total_ms = 0;
  uint64_t sum = 0xcbf29ce484222325ULL;
  int bad_iters = 0;
  for (uint32_t iter = 0; iter < plan.iters; ++iter) {
    const uint64_t seed = seed_of(gpu, static_cast<int>(iter));
    bool prepared = is_recv ? buf.clear() : buf.fill(seed);
    if (!prepared) {
      std::fprintf(stderr, "[%s] preparing the buffer failed\n", who);
      return 1;
    }
    const double t0 = now_ms();
    if (run_streams(streams, is_recv, plan.chunk_bytes, who) != 0) {
      std::fprintf(stderr, "[%s] iteration %u failed\n", who, iter);
      return 1;
    }
    const double ms = now_ms() - t0;
    total_ms += ms;
    std::printf("[PERF] Iter %u time=%.3f ms, BW: %.2f GB/s\n", iter, ms, gbps(plan.bytes, ms));

    const unsigned char* view = buf.host_view();
    if (view == nullptr) {
      std::fprintf(stderr, "[%s] reading the buffer back failed\n", who);
      return 1;
    }
    sum = checksum(view, plan.bytes, sum);
    if (is_recv && mode.verify) {
      int64_t bad = check_pattern(view, plan.bytes, seed);
      if (bad >= 0) {
        ++bad_iters;
        std::printf("[VERIFY] Iter %u: MISMATCH at byte %lld\n", iter,
                    static_cast<long long>(bad));
      } else {
        std::printf("[VERIFY] Iter %u: OK (%llu bytes)\n", iter,
                    static_cast<unsigned long long>(plan.bytes));
      }
    }
  }
  const double avg = total_ms / plan.iters;
  std::printf("[PERF] Avg (%u iter): %.3f ms, BW: %.2f GB/s\n", plan.iters, avg,
              gbps(plan.bytes, avg));

  BootstrapSummary ours;
  ours.bytes = plan.bytes * plan.iters;
  ours.checksum = sum;
  ours.iters = plan.iters;
  BootstrapSummary theirs;
  if (bootstrap_finish(fd, ours, &theirs) != 0) return 1;
  bool match = theirs.bytes == ours.bytes && theirs.checksum == ours.checksum;
  if (mode.verify) {
    std::printf("[VERIFY] checksum %s: ours %016llx, peer %016llx (%llu bytes)\n",
                match ? "match" : "MISMATCH", static_cast<unsigned long long>(ours.checksum),
                static_cast<unsigned long long>(theirs.checksum),
                static_cast<unsigned long long>(ours.bytes));
  }

  cm->deregister_memory(is_recv);
  cm->close_all(is_recv);
  bootstrap_close(fd);

#ifdef TCPX_WITH_CUDA
  for (auto& u : unpackers) {
    std::printf("[UNPACK] %s: %llu launches, %llu fragments, %llu bytes\n", mode.name.c_str(),
                static_cast<unsigned long long>(u->stats().launches),
                static_cast<unsigned long long>(u->stats().descriptors),
                static_cast<unsigned long long>(u->stats().bytes));
  }
#endif
  if (mode.verify && (bad_iters > 0 || !match)) {
    std::printf("[VERIFY] FAILED\n");
    return 1;
  }
  if (mode.verify) std::printf("[VERIFY] all %u iterations verified\n", plan.iters);
  return 0;
}
