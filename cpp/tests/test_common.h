// Shared helpers of the C++ test programs: environment knobs (the C++ tree's variables),
// the data pattern every program writes and checks, checksums, buffers (host, or CUDA with
// TCPX_WITH_CUDA), timing.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifdef TCPX_WITH_CUDA
#include <cuda_runtime.h>

#include "../src/gpu_wait.h"  // the glue's bounded GPU wait, header-only
#endif

namespace tcpx_programs {

inline const char* env_str(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : fallback;
}

/// An integer with optional K/M/G (binary) suffix, e.g. "64M", "524288".
inline uint64_t parse_size(const char* s, uint64_t fallback) {
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s) return fallback;
  switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
  }
  return static_cast<uint64_t>(v);
}

inline uint64_t env_size(const char* name, uint64_t fallback) {
  return parse_size(std::getenv(name), fallback);
}

inline long env_int(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end != v) ? x : fallback;
}

/// Sets a variable only when the user has not (the tree's programs did the same).
inline void default_env(const char* name, const char* value) { setenv(name, value, 0); }

/// The 8-byte word at byte offset `off` of a transfer with `seed` (an iteration, a GPU, a
/// channel): distinct for every (seed, offset), so a misplaced or stale chunk is caught.
inline uint64_t pattern_word(uint64_t seed, uint64_t off) {
  uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ULL ^ (off / 8) * 0xD1B54A32D192ED03ULL;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 29;
  return x;
}

inline void fill_pattern(void* buf, uint64_t len, uint64_t seed) {
  auto* p = static_cast<unsigned char*>(buf);
  uint64_t off = 0;
  for (; off + 8 <= len; off += 8) {
    uint64_t w = pattern_word(seed, off);
    std::memcpy(p + off, &w, 8);
  }
  if (off < len) {
    uint64_t w = pattern_word(seed, off);
    std::memcpy(p + off, &w, static_cast<size_t>(len - off));
  }
}

/// Offset of the first byte that differs from the pattern, or -1.
inline int64_t check_pattern(const void* buf, uint64_t len, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(buf);
  uint64_t off = 0;
  for (; off + 8 <= len; off += 8) {
    uint64_t w = pattern_word(seed, off);
    if (std::memcmp(p + off, &w, 8) != 0) return static_cast<int64_t>(off);
  }
  if (off < len) {
    uint64_t w = pattern_word(seed, off);
    if (std::memcmp(p + off, &w, static_cast<size_t>(len - off)) != 0)
      return static_cast<int64_t>(off);
  }
  return -1;
}

/// Order-dependent checksum (FNV-1a over 8-byte words), chained across calls.
inline uint64_t checksum(const void* buf, uint64_t len, uint64_t h = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(buf);
  uint64_t off = 0;
  for (; off + 8 <= len; off += 8) {
    uint64_t w;
    std::memcpy(&w, p + off, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; off < len; ++off) h = (h ^ p[off]) * 0x100000001b3ULL;
  return h;
}

/// A 4 KiB-aligned buffer (TCPX wants CUDA buffers 4 KiB aligned; host ones are too).
///
/// A CUDA buffer is zeroed, filled and read back through pinned staging on its own
/// non-blocking stream, each step waited for with the glue's bounded wait (cpp/src/gpu_wait.h,
/// at most kGpuWaitTimeout): cudaMemcpy / cudaMemset have no deadline, and the legacy stream
/// would order nothing against the programs' non-blocking unpack streams anyway. After a wait
/// that did not finish, the buffer and its staging are leaked (the GPU may still use them).
struct Buffer {
  void* ptr = nullptr;
  uint64_t len = 0;
  bool cuda = false;
#ifdef TCPX_WITH_CUDA
  unsigned char* staging = nullptr;  // pinned host copy of a CUDA buffer for fill/check
  cudaStream_t stream = nullptr;     // on `device`
  int device = 0;
  bool leaked = false;
#endif

  bool alloc(uint64_t n, bool want_cuda) {
    len = n;
    cuda = want_cuda;
    uint64_t rounded = (n + 4095) / 4096 * 4096;
    if (!cuda) {
      ptr = std::aligned_alloc(4096, static_cast<size_t>(rounded));
      if (ptr != nullptr) std::memset(ptr, 0, static_cast<size_t>(rounded));
      return ptr != nullptr;
    }
#ifdef TCPX_WITH_CUDA
    void* host = nullptr;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
        cudaHostAlloc(&host, static_cast<size_t>(rounded), cudaHostAllocDefault) != cudaSuccess)
      return false;
    staging = static_cast<unsigned char*>(host);
    if (cudaMalloc(&ptr, static_cast<size_t>(rounded)) != cudaSuccess) {
      ptr = nullptr;
      return false;
    }
    return step([&] { return cudaMemsetAsync(ptr, 0, static_cast<size_t>(rounded), stream); },
                "zeroing");
#else
    std::fprintf(stderr, "CUDA buffers need a build with TCPX_WITH_CUDA\n");
    return false;
#endif
  }

  ~Buffer() {
#ifdef TCPX_WITH_CUDA
    if (cuda) {
      if (leaked) return;
      if (ptr != nullptr) cudaFree(ptr);
      if (staging != nullptr) cudaFreeHost(staging);
      if (stream != nullptr) cudaStreamDestroy(stream);
      return;
    }
#endif
    std::free(ptr);
  }

  bool fill(uint64_t seed) {
    if (!cuda) {
      fill_pattern(ptr, len, seed);
      return true;
    }
#ifdef TCPX_WITH_CUDA
    fill_pattern(staging, len, seed);
    return step([&] {
      return cudaMemcpyAsync(ptr, staging, static_cast<size_t>(len), cudaMemcpyHostToDevice,
                             stream);
    }, "filling");
#else
    return false;
#endif
  }

  bool clear() {
    if (!cuda) {
      std::memset(ptr, 0, static_cast<size_t>(len));
      return true;
    }
#ifdef TCPX_WITH_CUDA
    return step([&] { return cudaMemsetAsync(ptr, 0, static_cast<size_t>(len), stream); },
                "clearing");
#else
    return false;
#endif
  }

  /// Host view of the contents (copies a CUDA buffer to the host first).
  const unsigned char* host_view() {
    if (!cuda) return static_cast<const unsigned char*>(ptr);
#ifdef TCPX_WITH_CUDA
    if (!step([&] {
          return cudaMemcpyAsync(staging, ptr, static_cast<size_t>(len),
                                 cudaMemcpyDeviceToHost, stream);
        }, "reading back"))
      return nullptr;
    return staging;
#else
    return nullptr;
#endif
  }

#ifdef TCPX_WITH_CUDA
 private:
  /// Queues one step on `stream` (`queue()`, on the buffer's device; the caller's current
  /// device is kept) and waits for it.
  template <typename Queue>
  bool step(Queue queue, const char* what) {
    using namespace tcpx::detail;
    int current = device;
    if (cudaGetDevice(&current) == cudaSuccess && current != device) cudaSetDevice(device);
    const cudaError_t queued = queue();
    if (current != device) cudaSetDevice(current);
    const int rc = queued == cudaSuccess
                       ? wait_until_done(&gpu_stream_query, stream, kGpuWaitTimeout)
                       : static_cast<int>(queued);
    if (rc == kGpuDone) return true;
    leaked = leaked || queued == cudaSuccess;
    std::fprintf(stderr, "%s%s\n",
                 gpu_wait_failure(std::string("Buffer: ") + what, rc, kGpuWaitTimeout).c_str(),
                 leaked ? "; leaking the buffer" : "");
    return false;
  }
#endif
};

inline double now_ms() {
  using namespace std::chrono;
  return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

/// GB/s as the C++ tree printed it: bytes / 2^30 per second.
inline double gbps(uint64_t bytes, double ms) {
  return ms > 0 ? static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0) / (ms / 1000.0) : 0.0;
}

/// Which memory and unpack the receive side uses, from UCCL_TCPX_UNPACK_IMPL:
/// "host" (default): host buffers, data lands in place, verified;
/// "none": host buffers, received but not verified (the tree's ablation mode);
/// "kernel" / "d2d": CUDA buffers and the CUDA unpack path (TCPX_WITH_CUDA builds only).
struct UnpackMode {
  std::string name;
  bool cuda = false;
  bool verify = true;
};

inline bool unpack_mode(UnpackMode* out) {
  out->name = env_str("UCCL_TCPX_UNPACK_IMPL", "host");
  if (out->name == "host") return true;
  if (out->name == "none") {
    out->verify = false;
    return true;
  }
  if (out->name == "kernel" || out->name == "d2d") {
#ifdef TCPX_WITH_CUDA
    out->cuda = true;
    return true;
#else
    std::fprintf(stderr, "UCCL_TCPX_UNPACK_IMPL=%s needs a build with TCPX_WITH_CUDA "
                 "(make TCPX_CUDA=1)\n", out->name.c_str());
    return false;
#endif
  }
  std::fprintf(stderr, "UCCL_TCPX_UNPACK_IMPL=%s: expected host, none, kernel or d2d\n",
               out->name.c_str());
  return false;
}

}  // namespace tcpx_programs
