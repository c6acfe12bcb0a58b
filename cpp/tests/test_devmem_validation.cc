// test_devmem_validation: several channels on ONE NIC in one process, each set up by its own
// thread at the same time (listen / bootstrap / accept / connect / register concurrently) —
// the C++ tree's check that channels can share a NIC — then one verified transfer per channel.
//
//   test_devmem_validation server <peer_ip> [gpu_id] [dev_id]
//   test_devmem_validation client <peer_ip> [gpu_id] [dev_id]
//
// Channel c of GPU g bootstraps on port UCCL_TCPX_BOOTSTRAP_PORT_BASE (20000) + g*8 + c, as in
// the tree. Variables: UCCL_TCPX_NUM_CHANNELS (4), UCCL_TCPX_PERF_SIZE (16 MiB per channel),
// UCCL_TCPX_CHUNK_BYTES (512 KiB; the tree posted all 16 MiB as one irecv, beyond TCPX's 4 MiB
// per-request limit), NCCL_GPUDIRECTTCPX_PLUGIN_PATH or UCCL_TCPX_PLUGIN_PATH,
// UCCL_TCPX_UNPACK_IMPL.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap.h"
#include "sliding_window.h"
#include "tcpx_handles.h"
#include "tcpx_interface.h"
#include "test_common.h"
#include "transfer_loop.h"

using namespace tcpx_programs;

namespace {

std::atomic<int> g_success{0};
std::atomic<int> g_fail{0};

struct Config {
  bool is_server = false;
  std::string peer_ip;
  int gpu = 0;
  int dev = 0;
  int base = 20000;
  uint64_t size = 16ull << 20;
  uint32_t chunk = 512 << 10;
  UnpackMode mode;
};

uint64_t seed_of(int gpu, int ch) { return 0xDE000000ull + static_cast<uint64_t>(gpu * 8 + ch); }

#define FAIL(...)                                   \
  do {                                              \
    std::fprintf(stderr, "[GPU %d CH %d] ", cfg.gpu, ch); \
    std::fprintf(stderr, __VA_ARGS__);              \
    std::fprintf(stderr, ": %s\n", tcpx_last_error()); \
    ++g_fail;                                       \
    return;                                         \
  } while (0)

void run_channel(const Config& cfg, int ch) {
  const int port = cfg.base + cfg.gpu * 8 + ch;
  const bool is_recv = cfg.is_server;
  std::printf("[GPU %d CH %d] %s on dev %d, bootstrap port %d\n", cfg.gpu, ch,
              cfg.is_server ? "server" : "client", cfg.dev, port);
#ifdef TCPX_WITH_CUDA
  if (cfg.mode.cuda && cudaSetDevice(cfg.gpu) != cudaSuccess) FAIL("cudaSetDevice");
#endif
  Buffer buf;
  if (!buf.alloc(cfg.size, cfg.mode.cuda)) FAIL("allocating %llu bytes", (unsigned long long)cfg.size);
  const uint64_t reg = (cfg.size + 4095) / 4096 * 4096;

  void* listen_comm = nullptr;
  void* comm = nullptr;
  void* mhandle = nullptr;
  int fd = -1;
  alignas(16) unsigned char dev_handle_storage[512] = {};
  if (cfg.is_server) {
    ncclNetHandle_v7 handle;
    std::memset(&handle, 0, sizeof(handle));
    if (tcpx_listen(cfg.dev, &handle, &listen_comm) != 0) FAIL("tcpx_listen");
    BootstrapPlan plan;
    plan.gpu = static_cast<uint32_t>(cfg.gpu);
    plan.chunk_bytes = cfg.chunk;
    plan.bytes = cfg.size;
    plan.iters = 1;
    if (bootstrap_server_create(port, &fd) != 0) FAIL("bootstrap_server_create");
    std::vector<ncclNetHandle_v7> handles{handle};
    if (bootstrap_server_send_handles(fd, handles, plan) != 0) FAIL("bootstrap_server_send_handles");
    void* dev_handle = dev_handle_storage;
    if (tcpx_accept_v5(listen_comm, &comm, &dev_handle) != 0 || comm == nullptr)
      FAIL("tcpx_accept_v5");
    std::printf("[GPU %d CH %d] Channel accepted (server)\n", cfg.gpu, ch);
  } else {
    if (bootstrap_client_connect(cfg.peer_ip.c_str(), port, cfg.gpu, &fd) != 0)
      FAIL("bootstrap_client_connect");
    std::vector<ncclNetHandle_v7> handles;
    if (bootstrap_client_recv_handles(fd, handles) != 0 || handles.size() != 1)
      FAIL("bootstrap_client_recv_handles");
    void* send_dev_handle = nullptr;
    if (tcpx_connect_v5(cfg.dev, &handles[0], &comm, &send_dev_handle) != 0 || comm == nullptr)
      FAIL("tcpx_connect_v5");
    std::printf("[GPU %d CH %d] Channel connected (client)\n", cfg.gpu, ch);
  }
  if (tcpx_reg_mr(comm, buf.ptr, reg, cfg.mode.cuda ? NCCL_PTR_CUDA : NCCL_PTR_HOST, &mhandle) != 0)
    FAIL("tcpx_reg_mr");
  std::printf("[GPU %d CH %d] Memory registered\n", cfg.gpu, ch);

  if (!is_recv && !buf.fill(seed_of(cfg.gpu, ch))) FAIL("filling the buffer");
  SlidingWindow window(is_recv ? 16 : 12);
  std::vector<Stream> streams(1);
  streams[0].base = static_cast<unsigned char*>(buf.ptr);
  streams[0].size = cfg.size;
  streams[0].chs.push_back(ChannelIO{comm, mhandle, &window});
#ifdef TCPX_WITH_CUDA
  cudaStream_t cuda_stream = nullptr;
  std::vector<std::unique_ptr<tcpx::RecvUnpacker>> unpackers;
  std::vector<std::unique_ptr<UnpackCtx>> unpack_ctxs;
  if (cfg.mode.cuda && is_recv) {
    if (cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking) != cudaSuccess)
      FAIL("cudaStreamCreate");
    std::vector<const tcpx_net_device_handle*> dev_handles{
        reinterpret_cast<const tcpx_net_device_handle*>(dev_handle_storage)};
    if (setup_gpu_unpack(streams[0], dev_handles, cuda_stream, cfg.mode.name == "d2d", cfg.chunk,
                         cfg.gpu, unpackers, unpack_ctxs) != 0)
      FAIL("setting up the GPU unpack");
  }
#endif
  std::string who = "GPU " + std::to_string(cfg.gpu) + " CH " + std::to_string(ch);
  if (bootstrap_barrier(fd, static_cast<uint32_t>(ch)) != 0) FAIL("bootstrap_barrier");
  if (run_streams(streams, is_recv, cfg.chunk, who.c_str()) != 0) FAIL("transfer");

  const unsigned char* view = buf.host_view();
  if (view == nullptr) FAIL("reading the buffer back");
  bool ok = true;
  if (is_recv && cfg.mode.verify) {
    int64_t bad = check_pattern(view, cfg.size, seed_of(cfg.gpu, ch));
    ok = bad < 0;
    if (ok) {
      std::printf("[GPU %d CH %d] Recv OK (%llu bytes verified)\n", cfg.gpu, ch,
                  static_cast<unsigned long long>(cfg.size));
    } else {
      std::printf("[GPU %d CH %d] Recv MISMATCH at byte %lld\n", cfg.gpu, ch,
                  static_cast<long long>(bad));
    }
  }
  BootstrapSummary ours;
  ours.bytes = cfg.size;
  ours.checksum = checksum(view, cfg.size);
  ours.iters = 1;
  BootstrapSummary theirs;
  if (bootstrap_finish(fd, ours, &theirs) != 0) FAIL("bootstrap_finish");
  if (cfg.mode.verify && theirs.checksum != ours.checksum) ok = false;

  if (tcpx_dereg_mr(comm, mhandle) != 0) FAIL("tcpx_dereg_mr");
  if ((is_recv ? tcpx_close_recv(comm) : tcpx_close_send(comm)) != 0) FAIL("close");
  if (listen_comm != nullptr && tcpx_close_listen(listen_comm) != 0) FAIL("tcpx_close_listen");
  bootstrap_close(fd);
  if (!ok) {
    std::fprintf(stderr, "[GPU %d CH %d] data verification failed\n", cfg.gpu, ch);
    ++g_fail;
    return;
  }
  std::printf("[GPU %d CH %d] Test PASSED\n", cfg.gpu, ch);
  ++g_success;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || (std::strcmp(argv[1], "server") != 0 && std::strcmp(argv[1], "client") != 0)) {
    std::fprintf(stderr, "Usage: %s <server|client> <peer_ip> [gpu_id] [dev_id]\n", argv[0]);
    return 2;
  }
  Config cfg;
  cfg.is_server = std::strcmp(argv[1], "server") == 0;
  cfg.peer_ip = argv[2];
  cfg.gpu = argc > 3 ? std::atoi(argv[3]) : 0;
  cfg.dev = argc > 4 ? std::atoi(argv[4]) : 0;
  cfg.base = static_cast<int>(env_int("UCCL_TCPX_BOOTSTRAP_PORT_BASE", 20000));
  cfg.size = env_size("UCCL_TCPX_PERF_SIZE", 16ull << 20);
  cfg.chunk = static_cast<uint32_t>(env_size("UCCL_TCPX_CHUNK_BYTES", 512 << 10));
  const int channels = static_cast<int>(env_int("UCCL_TCPX_NUM_CHANNELS", 4));
  if (!unpack_mode(&cfg.mode)) return 2;
  if (cfg.size == 0 || cfg.chunk == 0 || channels <= 0 || channels > 8) {
    std::fprintf(stderr, "size and chunk must be positive, channels 1..8\n");
    return 2;
  }
  default_env("NCCL_DYNAMIC_CHUNK_SIZE", "524288");

  const char* plugin = std::getenv("NCCL_GPUDIRECTTCPX_PLUGIN_PATH");
  if (plugin != nullptr && tcpx_load_plugin(plugin) != 0) {
    std::fprintf(stderr, "Failed to load TCPX plugin from %s: %s\n", plugin, tcpx_last_error());
    return 1;
  }
  std::printf("=== Devmem Validation Test ===\n");
  std::printf("Role: %s, GPU %d, dev %d, %d channels, %llu bytes each\n", argv[1], cfg.gpu,
              cfg.dev, channels, static_cast<unsigned long long>(cfg.size));
  const int devs = tcpx_get_device_count();
  if (devs < 0) {
    std::fprintf(stderr, "tcpx_get_device_count failed: %s\n", tcpx_last_error());
    return 1;
  }
  if (cfg.dev < 0 || cfg.dev >= devs) {
    std::fprintf(stderr, "Invalid dev_id %d (%d devices)\n", cfg.dev, devs);
    return 1;
  }
  tcpx_net_properties props;
  if (tcpx_get_properties(cfg.dev, &props) == 0)
    std::printf("Device %d: %s (speed=%d Mbps)\n", cfg.dev, props.name, props.speed);

  std::vector<std::thread> threads;
  for (int ch = 0; ch < channels; ++ch) threads.emplace_back(run_channel, std::cref(cfg), ch);
  for (auto& t : threads) t.join();

  std::printf("\n=== TEST RESULTS ===\n");
  std::printf("Success: %d / %d\n", g_success.load(), channels);
  std::printf("Failed:  %d / %d\n", g_fail.load(), channels);
  if (g_success.load() == channels) {
    std::printf("=== ALL CHANNELS PASSED ===\n");
    return 0;
  }
  std::printf("=== TEST FAILED ===\n");
  return 1;
}
