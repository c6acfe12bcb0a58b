/*
 * tcpx unpack: the layouts shared by the CUDA kernel (cuda/unpack.cu), the Rust glue
 * (src/cuda/, `tcpx::cuda`) and C/C++ callers of the C launcher `tcpx_unpack_launch`.
 *
 * A received TCPX chunk lies in the GPU's bounce pool as scattered fragments (normally 4 KiB
 * devmem pages). The plugin describes each with a `loadMeta {src_off, len, dst_off}`: copy `len`
 * bytes from `bounce_buf + src_off` to `irecv_data + dst_off`. The host turns every fragment into
 * one or more copy descriptors with ABSOLUTE device addresses (below), so one launch can unpack
 * many chunks of many comms at once.
 *
 * The Rust mirror is `tcpx::cuda::UnpackDesc` / `InlineBatch`, with the same size and offset
 * asserts as here. Change both together.
 */
#ifndef TCPX_UNPACK_H
#define TCPX_UNPACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define TCPX_UNPACK_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define TCPX_UNPACK_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* The host splits fragments into pieces of at most this many bytes, at offsets that are
 * multiples of it, so every warp gets about the same work and a piece keeps its fragment's
 * alignment. The kernel itself copies any length. */
#define TCPX_UNPACK_PIECE_BYTES 4096u

/* Threads per block of the unpack kernels: 8 warps, one descriptor per warp at a time. */
#define TCPX_UNPACK_BLOCK_THREADS 256u

/* Descriptors that fit into the kernel parameters of `tcpx_unpack_inline_kernel` (4 KiB, the
 * parameter limit every architecture and driver accepts): 8 + 170 * 24 = 4088 bytes. */
#define TCPX_UNPACK_INLINE_MAX 170u

/* One copy: `len` bytes from device address `src` to device address `dst`.
 *
 * 24 bytes, 8-byte aligned; the kernel reads it once, as three 64-bit words, within one
 * contiguous read of a block's descriptors per round, and hands it to a warp through shared
 * memory.
 * The vector width (16/8/4/2/1 bytes) is chosen by the kernel from the alignment of
 * `src | dst`; a length that is not a multiple of it gets a byte-wise tail. */
typedef struct tcpx_unpack_desc {
  uint64_t src;   /* absolute device address to read: bounce_buf + src_off (+ piece offset) */
  uint64_t dst;   /* absolute device address to write: chunk data + dst_off (+ piece offset) */
  uint32_t len;   /* bytes to copy; 0 copies nothing */
  uint32_t flags; /* reserved, must be 0 */
} tcpx_unpack_desc;

TCPX_UNPACK_STATIC_ASSERT(sizeof(tcpx_unpack_desc) == 24, "tcpx_unpack_desc is 24 bytes");
TCPX_UNPACK_STATIC_ASSERT(offsetof(tcpx_unpack_desc, src) == 0, "src at 0");
TCPX_UNPACK_STATIC_ASSERT(offsetof(tcpx_unpack_desc, dst) == 8, "dst at 8");
TCPX_UNPACK_STATIC_ASSERT(offsetof(tcpx_unpack_desc, len) == 16, "len at 16");
TCPX_UNPACK_STATIC_ASSERT(offsetof(tcpx_unpack_desc, flags) == 20, "flags at 20");

/* The kernel-parameter form of a small batch (`tcpx_unpack_inline_kernel`): the descriptors
 * travel inside the launch itself, so no copy and no read of host memory precedes the copy. */
typedef struct tcpx_unpack_inline_batch {
  uint32_t count;    /* descriptors used, <= TCPX_UNPACK_INLINE_MAX */
  uint32_t reserved; /* 0 */
  tcpx_unpack_desc desc[TCPX_UNPACK_INLINE_MAX];
} tcpx_unpack_inline_batch;

TCPX_UNPACK_STATIC_ASSERT(sizeof(tcpx_unpack_inline_batch) == 4088,
                          "tcpx_unpack_inline_batch is 4088 bytes");
TCPX_UNPACK_STATIC_ASSERT(offsetof(tcpx_unpack_inline_batch, desc) == 8, "desc at 8");

/* Status codes of tcpx_unpack_launch. */
#define TCPX_UNPACK_OK 0
#define TCPX_UNPACK_ERR_INVALID (-1)  /* NULL or misaligned descriptors with count > 0 */
#define TCPX_UNPACK_ERR_NO_DRIVER (-2) /* libcuda.so could not be loaded (or is older than 13.0) */
#define TCPX_UNPACK_ERR_NO_CONTEXT (-3) /* no CUDA context is current on the calling thread */
#define TCPX_UNPACK_ERR_CUDA (-4)     /* a driver call failed (module load, launch) */
#define TCPX_UNPACK_ERR_PANIC (-5)    /* an internal error was caught; nothing was launched */

/* Unpack `count` descriptors with one launch of `tcpx_unpack_kernel` on `stream` (a CUstream;
 * NULL is the legacy default stream), in the CUDA context current on the calling thread.
 *
 * `descs` must be readable by the device until the kernel has finished: device memory, or
 * pinned host memory mapped into the device (cuMemHostAlloc with CU_MEMHOSTALLOC_DEVICEMAP, or
 * registered with cuMemHostRegister ... DEVICEMAP). Every `src` must be readable and every `dst`
 * writable device memory; destinations must not overlap. The call returns after enqueueing; the
 * copy is complete when work recorded on `stream` after it completes (e.g. an event).
 *
 * The first call in a context loads the kernel module (the fatbin embedded in libtcpx); later
 * calls only launch. Returns TCPX_UNPACK_OK or a negative TCPX_UNPACK_ERR_* code; it never
 * unwinds into the caller. count == 0 launches nothing and returns TCPX_UNPACK_OK. */
int tcpx_unpack_launch(void *stream, const tcpx_unpack_desc *descs, uint32_t count);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TCPX_UNPACK_H */
