// The unpack launcher's host path and validation (tcpx-core's fragment checks via the bridge).
// The CUDA launch lives in unpack_launch_cuda.cc, compiled only with TCPX_WITH_CUDA.
#include "unpack_launch.h"

#include <cstring>
#include <string>

#include "glue.h"

namespace tcpx {

int build_descriptor_block(const LoadMeta* metas, uint32_t count, const void* bounce_buffer,
                           uint64_t bounce_bytes, void* dst_buffer, uint64_t dst_bytes,
                           UnpackDescriptorBlock* out) {
  if (out == nullptr || count > static_cast<uint32_t>(kMaxUnpackFragments) ||
      (count > 0 && metas == nullptr)) {
    detail::set_last_error("build_descriptor_block: NULL block or more than 2048 fragments");
    return -3;
  }
  out->count = count;
  out->bounce_buffer = bounce_buffer;
  out->bounce_bytes = bounce_bytes;
  out->dst_buffer = dst_buffer;
  out->dst_bytes = dst_bytes;
  uint64_t total = 0;
  for (uint32_t i = 0; i < count; ++i) {
    out->descriptors[i] = metas[i];
    total += metas[i].len;
  }
  out->total_bytes = static_cast<uint32_t>(total);
  return 0;
}

UnpackLauncher::UnpackLauncher(const UnpackLaunchConfig& config) : config_(config) {}

int UnpackLauncher::validate(const UnpackDescriptorBlock& block) const {
  if (block.count > static_cast<uint32_t>(config_.max_descriptors) ||
      block.count > static_cast<uint32_t>(kMaxUnpackFragments)) {
    detail::set_last_error("unpack: " + std::to_string(block.count) +
                           " fragments exceed max_descriptors");
    return -3;
  }
  if (block.count > 0 && (block.bounce_buffer == nullptr || block.dst_buffer == nullptr)) {
    detail::set_last_error("unpack: NULL bounce or destination buffer");
    return -3;
  }
  try {
    static_assert(sizeof(LoadMeta) == 2 * sizeof(uint64_t), "two words per fragment");
    // LoadMeta is {u32 src_off, u32 len, u64 dst_off}: word 0 = src_off | len << 32.
    rust::Slice<const uint64_t> words(reinterpret_cast<const uint64_t*>(block.descriptors),
                                      2 * static_cast<size_t>(block.count));
    auto o = ffi::unpack_validate(words, block.bounce_bytes, block.dst_bytes);
    return o.status == ffi::Status::Ok ? 0 : -3;
  } catch (...) {
    detail::set_last_error("unpack: validation failed unexpectedly");
    return -3;
  }
}

int UnpackLauncher::launch_host(const UnpackDescriptorBlock& block) {
  if (validate(block) != 0) {
    ++stats_.errors;
    return -3;
  }
  const auto* src = static_cast<const unsigned char*>(block.bounce_buffer);
  auto* dst = static_cast<unsigned char*>(block.dst_buffer);
  uint64_t bytes = 0;
  for (uint32_t i = 0; i < block.count; ++i) {
    const LoadMeta& m = block.descriptors[i];
    std::memcpy(dst + m.dst_off, src + m.src_off, m.len);
    bytes += m.len;
  }
  ++stats_.launches;
  stats_.descriptors += block.count;
  stats_.bytes += bytes;
  return 0;
}

}  // namespace tcpx
