//! TCPX unpack metadata: the layouts the plugin publishes, per-comm slot accounting, and fragment
//! validation.
//!
//! On TCPX a received chunk lands in a GPU bounce pool as scattered 4 KiB pages; when `test`
//! reports `done=1` the plugin has written, for the request's *slot*, a list of fragments
//! (`loadMeta`: copy `len` bytes from `bounce_buf + src_off` to `irecv_data + dst_off`) and then
//! `cnt[slot]`. Layouts follow `NVIDIA/nccl: src/device/network/unpack/unpack_defs.h`.
//!
//! Invariants:
//! * [`LoadMeta`] is 16 bytes, 16-byte aligned; [`NetUnpackMeta`] is `mem[16][2048]` then
//!   `cnt[16]` (524 416 bytes, `cnt` at 524 288). Both are asserted at compile time.

use core::mem::{align_of, offset_of, size_of};

/// `NCCL_NET_DEVICE_UNPACK_MAX_QUEUE_DEPTH`: unpack slots per comm.
pub const UNPACK_QUEUE_DEPTH: usize = 16;
/// `NET_UNPACK_MAX_SLICE_PAGES`: the most fragments one receive may have (4 MiB / 4 KiB × 2).
pub const MAX_FRAGMENTS: usize = 2048;

/// `loadMeta`: one fragment of a received chunk.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoadMeta {
    /// Offset of the fragment in the bounce pool.
    pub src_off: u32,
    /// Length of the fragment in bytes.
    pub len: u32,
    /// Offset of the fragment in the destination (relative to the `irecv` data pointer).
    pub dst_off: u64,
}

const _: () = {
    assert!(size_of::<LoadMeta>() == 16);
    assert!(align_of::<LoadMeta>() == 16);
    assert!(offset_of!(LoadMeta, src_off) == 0);
    assert!(offset_of!(LoadMeta, len) == 4);
    assert!(offset_of!(LoadMeta, dst_off) == 8);
};

/// `netUnpackMeta`: a comm's unpack queue, in pinned, device-mapped host memory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetUnpackMeta {
    /// Fragments per slot.
    pub mem: [[LoadMeta; MAX_FRAGMENTS]; UNPACK_QUEUE_DEPTH],
    /// Fragment count per slot, written last when the receive completes.
    pub cnt: [u64; UNPACK_QUEUE_DEPTH],
}

const _: () = {
    assert!(size_of::<NetUnpackMeta>() == 524_416);
    assert!(offset_of!(NetUnpackMeta, mem) == 0);
    assert!(offset_of!(NetUnpackMeta, cnt) == 524_288);
};
