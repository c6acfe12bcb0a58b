//! A receive comm's unpack queue, seen from the host: where its fragment lists are published
//! and where its bounce pool is.
//!
//! TCPX's device handle (filled by `accept`) points, in device memory, at
//! `{meta, bounce_buf, head}`. `meta` is pinned, device-mapped host memory holding
//! `netUnpackMeta` (`mem[16][2048]` fragments, then `cnt[16]`); when `test` reports a receive
//! done, its slot's fragments are in place and `cnt[slot]` was written last. The slot stays
//! untouched by the plugin until that receive is consumed.
//!
//! Invariants:
//! * [`UnpackQueueView::fragments`] reads `cnt[slot]` with a volatile load followed by an
//!   acquire fence, so the fragments written before it are visible; it refuses counts above
//!   2048 before forming a slice.
//! * The bounce pool's extent comes from the driver (`cuMemGetAddressRange`), so fragment
//!   validation checks `src_off + len` against the real allocation, not a guess.
//! * A handle smaller than `{meta, bounce_buf, head}` or a `meta` not aligned for
//!   `netUnpackMeta` is refused when the view opens, before anything is read through it.

use core::ffi::c_void;
use core::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr};
use tcpx_core::unpack::{FragmentError, LoadMeta, NetUnpackMeta, Slot, MAX_FRAGMENTS};

use super::driver::check;
use super::{mapped_host_ptr, read_unpack_handle, CudaError, Gpu};
use crate::net::abi::{
    net_device_type, NetDeviceHandle, UnpackNetDeviceHandle, NET_DEVICE_UNPACK_VERSION,
};

/// Why a receive comm's unpack queue cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueError {
    /// The comm's device handle is not an UNPACK v7 handle (the plugin does not unpack, or
    /// `accept` filled nothing).
    NotUnpack,
    /// The unpack metadata's host address is not aligned for `netUnpackMeta` (a plugin that
    /// is not TCPX, or a corrupt handle).
    MisalignedMeta {
        /// The host address.
        addr: usize,
    },
    /// A driver call failed (e.g. the handle does not point at device memory).
    Cuda(CudaError),
}

impl core::fmt::Display for QueueError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotUnpack => f.write_str(
                "the receive comm's device handle is not an NCCL_NET_DEVICE_UNPACK v7 handle",
            ),
            Self::MisalignedMeta { addr } => write!(
                f,
                "the receive comm's unpack metadata at {addr:#x} is not {}-byte aligned",
                core::mem::align_of::<NetUnpackMeta>()
            ),
            Self::Cuda(e) => write!(f, "reading the receive comm's unpack handle: {e}"),
        }
    }
}

impl std::error::Error for QueueError {}

impl From<CudaError> for QueueError {
    fn from(e: CudaError) -> Self {
        Self::Cuda(e)
    }
}

/// The host view of one receive comm's unpack queue.
#[derive(Debug)]
pub struct UnpackQueueView {
    meta: *const NetUnpackMeta,
    bounce_buf: u64,
    bounce_len: u64,
    _gpu: Arc<Gpu>,
}

// SAFETY: the view holds addresses only; the metadata it reads is process-wide pinned memory
// (not tied to a thread), and the owning comm outlives the view by construction of the engine.
unsafe impl Send for UnpackQueueView {}

impl UnpackQueueView {
    /// Read the comm's `{meta, bounce_buf}` (one device-to-host copy) and map `meta` to a host
    /// address.
    pub fn open(gpu: &Arc<Gpu>, handle: &NetDeviceHandle) -> Result<Self, QueueError> {
        if handle.net_device_type != net_device_type::UNPACK
            || handle.net_device_version != NET_DEVICE_UNPACK_VERSION
            || handle.handle.is_null()
            || handle.size < core::mem::size_of::<UnpackNetDeviceHandle>()
        {
            return Err(QueueError::NotUnpack);
        }
        let unpack = read_unpack_handle(gpu, handle.handle)?;
        let meta = mapped_host_ptr(gpu, unpack.meta.cast::<c_void>())?;
        if !meta.cast::<NetUnpackMeta>().is_aligned() {
            return Err(QueueError::MisalignedMeta {
                addr: meta as usize,
            });
        }
        let bounce_buf = unpack.bounce_buf as u64;
        let (mut base, mut size): (CUdeviceptr, usize) = (0, 0);
        // SAFETY: two writable locals; the driver checks the address (an address outside any
        // allocation is an error, not an access).
        check("cuMemGetAddressRange", unsafe {
            sys::cuMemGetAddressRange_v2(&mut base, &mut size, bounce_buf as CUdeviceptr)
        })?;
        let bounce_len = (base + size as u64).saturating_sub(bounce_buf);
        Ok(Self {
            meta: meta.cast_const().cast(),
            bounce_buf,
            bounce_len,
            _gpu: gpu.clone(),
        })
    }

    /// The bounce pool: device address and the bytes from it to the end of its allocation.
    pub fn bounce(&self) -> (u64, u64) {
        (self.bounce_buf, self.bounce_len)
    }

    /// The fragments of the receive in `slot`, valid from the `test` that reported it done
    /// until it is consumed.
    pub fn fragments(&self, slot: Slot) -> Result<&[LoadMeta], FragmentError> {
        let s = slot.index();
        // SAFETY: `meta` is the host address of the comm's mapped `NetUnpackMeta` (from the
        // driver), alive while the comm is open; `s` < 16. The volatile read does not assume
        // the plugin's writer is Rust.
        let cnt = unsafe { core::ptr::addr_of!((*self.meta).cnt[s]).read_volatile() };
        fence(Ordering::Acquire);
        if cnt > MAX_FRAGMENTS as u64 {
            return Err(FragmentError::TooMany { count: cnt });
        }
        let count = cnt as usize;
        // SAFETY: as above; `count` ≤ 2048 entries of slot `s`, which the plugin published
        // before `cnt` (acquire fence) and does not write again until the receive is consumed.
        Ok(unsafe {
            core::slice::from_raw_parts(core::ptr::addr_of!((*self.meta).mem[s][0]), count)
        })
    }
}
