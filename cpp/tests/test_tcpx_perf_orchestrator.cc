// test_tcpx_perf_orchestrator: every GPU of a node in one process (the C++ tree's "Step 3"),
// written against the drop-in headers, with every byte verified and the GPUs' chunks
// interleaved (the tree posted GPU 0's chunks, then GPU 1's, ...).
//
//   test_tcpx_perf_orchestrator server
//   test_tcpx_perf_orchestrator client <server_ip>
//
// Variables (the tree's): UCCL_TCPX_NUM_CHANNELS (8 per GPU, server decides),
// UCCL_TCPX_BOOTSTRAP_PORT_BASE (20000; GPU g uses base + g), UCCL_TCPX_PERF_SIZE (64 MiB per
// GPU, at most 256 MiB), UCCL_TCPX_PERF_ITERS (20), UCCL_TCPX_CHUNK_BYTES (512 KiB),
// NCCL_GPUDIRECTTCPX_PLUGIN_PATH or UCCL_TCPX_PLUGIN_PATH, UCCL_TCPX_UNPACK_IMPL; and
// UCCL_TCPX_NUM_GPUS (the CUDA device count with TCPX_WITH_CUDA, else 8).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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

struct GpuContext {
  int gpu = 0;
  int port = 0;
  int fd = -1;
  std::unique_ptr<ChannelManager> cm;
  std::vector<ncclNetHandle_v7> handles;
  Buffer buf;
  std::vector<std::unique_ptr<SlidingWindow>> windows;
#ifdef TCPX_WITH_CUDA
  cudaStream_t cuda_stream = nullptr;
  std::vector<std::unique_ptr<tcpx::RecvUnpacker>> unpackers;
  std::vector<std::unique_ptr<UnpackCtx>> unpack_ctxs;
#endif
};

uint64_t seed_of(int gpu, uint32_t iter) {
  return 0x0C000000ull | (static_cast<uint64_t>(gpu) << 32) | iter;
}

int default_gpus() {
#ifdef TCPX_WITH_CUDA
  int n = 0;
  if (cudaGetDeviceCount(&n) == cudaSuccess && n > 0) return n;
#endif
  return 8;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || (std::strcmp(argv[1], "server") != 0 && std::strcmp(argv[1], "client") != 0) ||
      (std::strcmp(argv[1], "client") == 0 && argc < 3)) {
    std::fprintf(stderr, "Usage: %s server\n       %s client <server_ip>\n", argv[0], argv[0]);
    return 2;
  }
  const bool is_server = std::strcmp(argv[1], "server") == 0;
  const bool is_recv = is_server;
  const char* who = is_server ? "SERVER" : "CLIENT";
  const char* server_ip = is_server ? nullptr : argv[2];

  default_env("NCCL_DYNAMIC_CHUNK_SIZE", "524288");
  const char* plugin = std::getenv("NCCL_GPUDIRECTTCPX_PLUGIN_PATH");
  if (plugin != nullptr && tcpx_load_plugin(plugin) != 0) {
    std::fprintf(stderr, "[%s] loading %s failed: %s\n", who, plugin, tcpx_last_error());
    return 1;
  }
  UnpackMode mode;
  if (!unpack_mode(&mode)) return 2;

  const int num_gpus = static_cast<int>(env_int("UCCL_TCPX_NUM_GPUS", default_gpus()));
  const int base = static_cast<int>(env_int("UCCL_TCPX_BOOTSTRAP_PORT_BASE", 20000));
  int num_channels = static_cast<int>(env_int("UCCL_TCPX_NUM_CHANNELS", 8));
  BootstrapPlan plan;
  plan.bytes = std::min<uint64_t>(env_size("UCCL_TCPX_PERF_SIZE", 64ull << 20), kMaxSize);
  plan.iters = static_cast<uint32_t>(env_int("UCCL_TCPX_PERF_ITERS", 20));
  plan.chunk_bytes = static_cast<uint32_t>(env_size("UCCL_TCPX_CHUNK_BYTES", 512 << 10));
  if (num_gpus <= 0 || num_channels <= 0 || plan.bytes == 0 || plan.iters == 0 ||
      plan.chunk_bytes == 0) {
    std::fprintf(stderr, "[%s] GPUs, channels, size, iterations and chunk must be positive\n",
                 who);
    return 2;
  }
  std::printf("[%s] %d GPUs, unpack %s\n", who, num_gpus, mode.name.c_str());

  std::vector<GpuContext> gpus(static_cast<size_t>(num_gpus));
  for (int g = 0; g < num_gpus; ++g) {
    gpus[static_cast<size_t>(g)].gpu = g;
    gpus[static_cast<size_t>(g)].port = base + g;
  }

#ifdef TCPX_WITH_CUDA
  for (auto& c : gpus) {
    if (mode.cuda && (cudaSetDevice(c.gpu) != cudaSuccess ||
                      cudaStreamCreateWithFlags(&c.cuda_stream, cudaStreamNonBlocking) != cudaSuccess)) {
      std::fprintf(stderr, "[%s] cannot use GPU %d\n", who, c.gpu);
      return 1;
    }
  }
  auto use_gpu = [&](int g) { return !mode.cuda || cudaSetDevice(g) == cudaSuccess; };
#else
  auto use_gpu = [](int) { return true; };
#endif

  if (is_server) {
    // Listen on every GPU first (handles cached), then bootstrap GPU by GPU, then accept.
    for (auto& c : gpus) {
      if (!use_gpu(c.gpu)) return 1;
      c.cm.reset(new ChannelManager(num_channels, c.gpu));
      if (c.cm->get_num_channels() != num_channels || c.cm->server_listen_all(c.handles) != 0) {
        std::fprintf(stderr, "[SERVER] GPU %d: channel setup failed: %s\n", c.gpu,
                     tcpx_last_error());
        return 1;
      }
    }
    for (auto& c : gpus) {
      BootstrapPlan p = plan;
      p.gpu = static_cast<uint32_t>(c.gpu);
      if (bootstrap_server_create(c.port, &c.fd) != 0 ||
          bootstrap_server_send_handles(c.fd, c.handles, p) != 0)
        return 1;
    }
    for (auto& c : gpus) {
      if (!use_gpu(c.gpu) || c.cm->server_accept_all() != 0) return 1;
    }
  } else {
    for (auto& c : gpus) {
      if (bootstrap_client_connect(server_ip, c.port, c.gpu, &c.fd) != 0 ||
          bootstrap_client_recv_handles(c.fd, c.handles, &plan) != 0)
        return 1;
    }
    num_channels = static_cast<int>(gpus[0].handles.size());
    for (auto& c : gpus) {
      if (!use_gpu(c.gpu)) return 1;
      c.cm.reset(new ChannelManager(static_cast<int>(c.handles.size()), c.gpu));
      if (c.cm->get_num_channels() != static_cast<int>(c.handles.size()) ||
          c.cm->client_connect_all(c.handles) != 0) {
        std::fprintf(stderr, "[CLIENT] GPU %d: channel setup failed: %s\n", c.gpu,
                     tcpx_last_error());
        return 1;
      }
    }
  }
  std::printf("[%s] %d channels per GPU, %llu bytes per GPU x %u iterations\n", who,
              num_channels, static_cast<unsigned long long>(plan.bytes), plan.iters);

  std::vector<Stream> streams;
  for (auto& c : gpus) {
    if (!use_gpu(c.gpu)) return 1;
    if (!c.buf.alloc(plan.bytes, mode.cuda)) return 1;
    const uint64_t reg = (plan.bytes + 4095) / 4096 * 4096;
    if (c.cm->register_memory(c.buf.ptr, reg, mode.cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST,
                              is_recv) != 0)
      return 1;
    Stream s;
    s.base = static_cast<unsigned char*>(c.buf.ptr);
    s.size = plan.bytes;
    for (int i = 0; i < c.cm->get_num_channels(); ++i) {
      ChannelResources& ch = c.cm->get_channel(i);
      c.windows.emplace_back(new SlidingWindow(is_recv ? 16 : 12));
      ChannelIO io;
      io.comm = is_recv ? ch.recv_comm : ch.send_comm;
      io.mhandle = ch.mhandle;
      io.window = c.windows.back().get();
      s.chs.push_back(io);
    }
#ifdef TCPX_WITH_CUDA
    if (mode.cuda && is_recv) {
      std::vector<const tcpx_net_device_handle*> dev_handles;
      for (int i = 0; i < c.cm->get_num_channels(); ++i)
        dev_handles.push_back(
            static_cast<const tcpx_net_device_handle*>(c.cm->get_channel(i).recv_dev_handle));
      if (setup_gpu_unpack(s, dev_handles, c.cuda_stream, mode.name == "d2d", plan.chunk_bytes,
                           c.gpu, c.unpackers, c.unpack_ctxs) != 0)
        return 1;
    }
#endif
    streams.push_back(s);
  }
  for (auto& c : gpus) {
    if (bootstrap_barrier(c.fd, 1) != 0) return 1;
  }

  const uint64_t all_bytes = plan.bytes * static_cast<uint64_t>(num_gpus);
  double total_ms = 0;
  int bad = 0;
  std::vector<uint64_t> sums(gpus.size(), 0xcbf29ce484222325ULL);
  for (uint32_t iter = 0; iter < plan.iters; ++iter) {
    for (auto& c : gpus) {
      bool ok = is_recv ? c.buf.clear() : c.buf.fill(seed_of(c.gpu, iter));
      if (!ok) return 1;
    }
    const double t0 = now_ms();
    if (run_streams(streams, is_recv, plan.chunk_bytes, who) != 0) {
      std::fprintf(stderr, "[%s] iteration %u failed\n", who, iter);
      return 1;
    }
    const double ms = now_ms() - t0;
    total_ms += ms;
    std::printf("[%s] Iteration %u completed in %.3f ms, bandwidth: %.2f GB/s\n", who, iter, ms,
                gbps(all_bytes, ms));
    for (size_t g = 0; g < gpus.size(); ++g) {
      const unsigned char* view = gpus[g].buf.host_view();
      if (view == nullptr) return 1;
      sums[g] = checksum(view, plan.bytes, sums[g]);
      if (is_recv && mode.verify) {
        int64_t off = check_pattern(view, plan.bytes, seed_of(gpus[g].gpu, iter));
        if (off >= 0) {
          ++bad;
          std::printf("[VERIFY] GPU %zu iter %u: MISMATCH at byte %lld\n", g, iter,
                      static_cast<long long>(off));
        }
      }
    }
    if (is_recv && mode.verify && bad == 0)
      std::printf("[VERIFY] Iter %u: OK (%d GPUs x %llu bytes)\n", iter, num_gpus,
                  static_cast<unsigned long long>(plan.bytes));
  }
  const double avg = total_ms / plan.iters;
  std::printf("[%s] Average bandwidth: %.2f GB/s\n", who, gbps(all_bytes, avg));
  std::printf("[PERF] Avg (%u iter): %.3f ms, BW: %.2f GB/s\n", plan.iters, avg,
              gbps(all_bytes, avg));

  bool match = true;
  for (size_t g = 0; g < gpus.size(); ++g) {
    BootstrapSummary ours;
    ours.bytes = plan.bytes * plan.iters;
    ours.checksum = sums[g];
    ours.iters = plan.iters;
    BootstrapSummary theirs;
    if (bootstrap_finish(gpus[g].fd, ours, &theirs) != 0) return 1;
    if (theirs.checksum != ours.checksum || theirs.bytes != ours.bytes) {
      match = false;
      std::printf("[VERIFY] GPU %zu checksum MISMATCH: ours %016llx, peer %016llx\n", g,
                  static_cast<unsigned long long>(ours.checksum),
                  static_cast<unsigned long long>(theirs.checksum));
    }
  }
  for (auto& c : gpus) {
    c.cm->deregister_memory(is_recv);
    c.cm->close_all(is_recv);
    bootstrap_close(c.fd);
  }
  if (mode.verify && (bad > 0 || !match)) {
    std::printf("[VERIFY] FAILED\n");
    return 1;
  }
  if (mode.verify)
    std::printf("[VERIFY] all %u iterations of %d GPUs verified, checksums match\n", plan.iters,
                num_gpus);
  return 0;
}
