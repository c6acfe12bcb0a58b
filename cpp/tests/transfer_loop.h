// The progress loop the test programs share: post chunks round-robin over channels, each
// channel's SlidingWindow bounding its requests, and progress every channel after every post
// (the cadence TCPX needs: nothing moves unless test is called).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "sliding_window.h"
#include "tcpx_interface.h"
#ifdef TCPX_WITH_CUDA
#include <cuda_runtime.h>

#include "unpack_launch.h"
#endif

namespace tcpx_programs {

/// One channel of a transfer: its comm, the registration of the buffer, its window.
struct ChannelIO {
  void* comm = nullptr;
  void* mhandle = nullptr;
  SlidingWindow* window = nullptr;
};

/// One GPU's share: `size` bytes at `base`, chunk i on channel i % chs.size().
struct Stream {
  std::vector<ChannelIO> chs;
  unsigned char* base = nullptr;
  uint64_t size = 0;
};

inline int release_once(ChannelIO& c, bool is_recv, const char* who) {
  int r = c.window->try_release_oldest(c.comm, is_recv);
  if (r < 0) {
    std::fprintf(stderr, "[%s] try_release_oldest failed (%s): %s\n", who,
                 tcpx::status_name(c.window->last_status()), tcpx_last_error());
  }
  return r;
}

/// One pass of try_release_oldest over every channel of every stream.
inline int progress_all(std::vector<Stream>& streams, bool is_recv, const char* who) {
  for (auto& s : streams)
    for (auto& c : s.chs)
      if (release_once(c, is_recv, who) < 0) return -1;
  return 0;
}

/// Moves every stream's bytes (chunk by chunk, streams interleaved), then drains. 0 or -1.
inline int run_streams(std::vector<Stream>& streams, bool is_recv, uint64_t chunk,
                       const char* who) {
  uint64_t max_chunks = 0;
  for (auto& s : streams) max_chunks = std::max(max_chunks, (s.size + chunk - 1) / chunk);
  for (uint64_t i = 0; i < max_chunks; ++i) {
    for (auto& s : streams) {
      if (i * chunk >= s.size) continue;
      ChannelIO& c = s.chs[i % s.chs.size()];
      while (c.window->is_full()) {
        if (release_once(c, is_recv, who) < 0) return -1;
        if (c.window->is_full()) {
          if (progress_all(streams, is_recv, who) < 0) return -1;
          std::this_thread::yield();
        }
      }
      void* data = s.base + i * chunk;
      int len = static_cast<int>(std::min<uint64_t>(chunk, s.size - i * chunk));
      int tag = static_cast<int>(i);
      void* req = nullptr;
      int rc = is_recv ? tcpx_irecv(c.comm, 1, &data, &len, &tag, &c.mhandle, &req)
                       : tcpx_isend(c.comm, data, len, tag, c.mhandle, &req);
      if (rc != 0 || req == nullptr) {
        std::fprintf(stderr, "[%s] %s of chunk %llu failed (rc=%d): %s\n", who,
                     is_recv ? "tcpx_irecv" : "tcpx_isend",
                     static_cast<unsigned long long>(i), rc, tcpx_last_error());
        return -1;
      }
      if (c.window->add_request(req, static_cast<int>(i)) != 0) {
        std::fprintf(stderr, "[%s] add_request failed: %s\n", who, tcpx_last_error());
        return -1;
      }
      if (progress_all(streams, is_recv, who) < 0) return -1;
    }
  }
  for (auto& s : streams) {
    for (auto& c : s.chs) {
      if (c.window->drain_all(c.comm, is_recv) != 0) {
        std::fprintf(stderr, "[%s] drain_all failed (%s): %s\n", who,
                     tcpx::status_name(c.window->last_status()), tcpx_last_error());
        return -1;
      }
    }
  }
  return 0;
}

#ifdef TCPX_WITH_CUDA
/// What the GPU receive path needs per channel: the comm's unpacker, the stream's buffer, and
/// how chunk indices map to bytes (chunk i covers [i*chunk, min((i+1)*chunk, size))).
struct UnpackCtx {
  tcpx::RecvUnpacker* unpacker = nullptr;
  unsigned char* base = nullptr;
  uint64_t size = 0;
  uint64_t chunk = 0;
  int gpu = 0;
};

/// A SlidingWindow unpack hook: unpack chunk `chunk_idx` of the receive, return its event.
inline int unpack_hook(void* request, int chunk_idx, void** event, void* user) {
  auto* c = static_cast<UnpackCtx*>(user);
  if (cudaSetDevice(c->gpu) != cudaSuccess) return -1;
  const uint64_t off = static_cast<uint64_t>(chunk_idx) * c->chunk;
  if (chunk_idx < 0 || off >= c->size) return -1;
  const uint64_t len = std::min(c->chunk, c->size - off);
  cudaEvent_t ev = nullptr;
  int rc = c->unpacker->unpack(request, c->base + off, len, &ev);
  if (rc != 0) {
    std::fprintf(stderr, "[unpack] chunk %d failed (%d): %s\n", chunk_idx, rc, tcpx_last_error());
    return -1;
  }
  *event = static_cast<void*>(ev);
  return 0;
}

/// Sets up the GPU receive path on every channel of `stream`: one RecvUnpacker per comm (from
/// the device handle its accept filled) and the unpack hook on its window. 0 or -1.
inline int setup_gpu_unpack(Stream& s, const std::vector<const tcpx_net_device_handle*>& handles,
                            cudaStream_t cuda_stream, bool d2d, uint64_t chunk, int gpu,
                            std::vector<std::unique_ptr<tcpx::RecvUnpacker>>& unpackers,
                            std::vector<std::unique_ptr<UnpackCtx>>& ctxs) {
  for (size_t i = 0; i < s.chs.size(); ++i) {
    unpackers.emplace_back(new tcpx::RecvUnpacker(
        *handles[i], cuda_stream,
        d2d ? tcpx::RecvUnpacker::Mode::D2D : tcpx::RecvUnpacker::Mode::Kernel));
    if (unpackers.back()->status() != 0) {
      std::fprintf(stderr, "RecvUnpacker: %s\n", tcpx_last_error());
      return -1;
    }
    ctxs.emplace_back(new UnpackCtx{unpackers.back().get(), s.base, s.size, chunk, gpu});
    s.chs[i].window->set_unpack_hook(&unpack_hook, ctxs.back().get());
  }
  return 0;
}
#endif

}  // namespace tcpx_programs
