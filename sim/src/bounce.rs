//! The device-memory seam: CUDA registrations, the bounce pool and each recv comm's unpack queue.
//!
//! On TCPX a receive lands in a GPU bounce pool as scattered 4 KiB pages and `test` publishes,
//! per unpack slot, a list of `loadMeta` fragments in pinned, device-mapped memory; `accept`
//! hands out a device pointer to `{meta, bounce_buf, head}`. tcpx-sim's **host mode** (this
//! build) keeps the shape and leaves out the GPU:
//! * the unpack queue ([`HostUnpackQueue`]) is ordinary host memory: `accept` writes the address
//!   of a host `unpackNetDeviceHandle` into `NetDeviceHandle::handle`; its `meta` points at a
//!   host `netUnpackMeta` (one allocation per comm, stable until `closeRecv`); `bounce_buf` is
//!   NULL (there is no pool); `head` starts at `u64::MAX` like TCPX;
//! * host receives go straight into the irecv buffer, so `publish` writes `cnt[slot] = 0`;
//! * `regMr(NCCL_PTR_CUDA)` passes TCPX's checks ([`check_cuda_registration`]) and then fails
//!   in [`HostMemory::register_cuda`] with "CUDA memory needs tcpx-sim CUDA mode".
//!
//! A CUDA mode plugs in here by implementing [`DeviceMemory`]: `register_cuda` records the
//! device buffer, `new_unpack_queue` allocates the metadata with `cuMemHostAlloc(DEVICEMAP)` and
//! the 24-byte handle with `cuMemAlloc`, and its queue's `publish` writes the fragments of pages
//! it copied into a GPU bounce pool in shuffled order.
//!
//! Invariants:
//! * `publish` writes `mem[slot][..n]` first and `cnt[slot]` last, with release ordering, as
//!   TCPX does (`std::atomic_thread_fence(release)` then the store).
//! * The queue's memory is never referenced through a Rust `&`/`&mut` after creation: the
//!   caller (and NCCL's kernel) read it and write `head` concurrently, so all access is by raw
//!   pointer.
//!
//! ```
//! use tcpx_sim::bounce::{DeviceMemory, HostMemory};
//! let q = HostMemory.new_unpack_queue().unwrap();
//! q.publish(3, &[]).unwrap();
//! assert!(!q.device_handle().is_null());
//! ```

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering};

use tcpx::net::abi::{
    LoadMeta, NetUnpackMeta, UnpackNetDeviceHandle, MAX_FRAGMENTS, NET_PAGE_SIZE,
    UNPACK_QUEUE_DEPTH,
};

use crate::error::SimError;

/// TCPX's CUDA registration rules, checked before any backend sees the buffer: `NCCL_USE_DMA_BUF`
/// must be on and `data % 4096 == 0`.
pub fn check_cuda_registration(use_dma_buf: bool, addr: usize) -> Result<(), SimError> {
    if !use_dma_buf {
        return Err(SimError::CudaNeedsDmaBuf);
    }
    if addr % NET_PAGE_SIZE != 0 {
        return Err(SimError::CudaNotAligned { addr });
    }
    Ok(())
}

/// A CUDA registration accepted by a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaRegistration {
    /// Device address.
    pub addr: usize,
    /// Size in bytes.
    pub size: usize,
}

/// One recv comm's unpack queue: the metadata NCCL's unpack kernel reads.
pub trait UnpackQueue: Send {
    /// The pointer `accept` stores in `NetDeviceHandle::handle` (a device pointer on TCPX).
    fn device_handle(&self) -> *mut UnpackNetDeviceHandle;
    /// Publishes a completed receive's fragments for unpack slot `slot` (< 16): the entries
    /// first, then `cnt[slot]`.
    fn publish(&self, slot: usize, frags: &[LoadMeta]) -> Result<(), SimError>;
}

/// Where CUDA memory and unpack queues come from.
pub trait DeviceMemory: Send + Sync {
    /// `"host"` or `"cuda"`, for logs.
    fn mode(&self) -> &'static str;
    /// `regMr(NCCL_PTR_CUDA)` after [`check_cuda_registration`] passed.
    fn register_cuda(&self, addr: usize, size: usize) -> Result<CudaRegistration, SimError>;
    /// A new unpack queue for a recv comm (at `accept`, when a device handle is requested).
    fn new_unpack_queue(&self) -> Result<Box<dyn UnpackQueue>, SimError>;
}

/// Host mode: no GPU; CUDA registrations fail, unpack queues live in host memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMemory;

impl DeviceMemory for HostMemory {
    fn mode(&self) -> &'static str {
        "host"
    }

    fn register_cuda(&self, _addr: usize, _size: usize) -> Result<CudaRegistration, SimError> {
        Err(SimError::CudaNeedsCudaMode)
    }

    fn new_unpack_queue(&self) -> Result<Box<dyn UnpackQueue>, SimError> {
        Ok(Box::new(HostUnpackQueue::new()?))
    }
}

/// An unpack queue in host memory: a `netUnpackMeta` and the 24-byte handle pointing at it.
#[derive(Debug)]
pub struct HostUnpackQueue {
    meta: NonNull<NetUnpackMeta>,
    handle: NonNull<UnpackNetDeviceHandle>,
}

// SAFETY: the queue owns both allocations; the raw pointers are only dereferenced by the owner
// (one thread at a time, behind the comm's lock) and by the caller through the published address,
// which is the documented sharing.
unsafe impl Send for HostUnpackQueue {}

impl HostUnpackQueue {
    /// Allocates zeroed metadata and a handle `{meta, bounce_buf: NULL, head: u64::MAX}`.
    pub fn new() -> Result<HostUnpackQueue, SimError> {
        let meta_layout = Layout::new::<NetUnpackMeta>();
        let handle_layout = Layout::new::<UnpackNetDeviceHandle>();
        // SAFETY: both layouts have non-zero size.
        let meta = unsafe { alloc_zeroed(meta_layout) }.cast::<NetUnpackMeta>();
        let meta = NonNull::new(meta).ok_or(SimError::Io {
            op: "alloc netUnpackMeta",
            errno: None,
            kind: std::io::ErrorKind::OutOfMemory,
        })?;
        // SAFETY: non-zero size, see above.
        let handle = unsafe { alloc_zeroed(handle_layout) }.cast::<UnpackNetDeviceHandle>();
        let Some(handle) = NonNull::new(handle) else {
            // SAFETY: `meta` came from `alloc_zeroed(meta_layout)` and is not used again.
            unsafe { dealloc(meta.as_ptr().cast(), meta_layout) };
            return Err(SimError::Io {
                op: "alloc unpackNetDeviceHandle",
                errno: None,
                kind: std::io::ErrorKind::OutOfMemory,
            });
        };
        // SAFETY: `handle` is a fresh, aligned allocation of the right size that nobody else
        // knows about yet.
        unsafe {
            handle.as_ptr().write(UnpackNetDeviceHandle {
                meta: meta.as_ptr(),
                bounce_buf: core::ptr::null_mut(),
                head: u64::MAX,
            })
        };
        Ok(HostUnpackQueue { meta, handle })
    }
}

impl UnpackQueue for HostUnpackQueue {
    fn device_handle(&self) -> *mut UnpackNetDeviceHandle {
        self.handle.as_ptr()
    }

    fn publish(&self, slot: usize, frags: &[LoadMeta]) -> Result<(), SimError> {
        if slot >= UNPACK_QUEUE_DEPTH || frags.len() > MAX_FRAGMENTS {
            return Err(SimError::Protocol {
                why: "unpack slot or fragment count out of range",
            });
        }
        let meta = self.meta.as_ptr();
        // SAFETY: `meta` is our live allocation; `slot < 16` and `frags.len() <= 2048` keep every
        // write inside `mem[slot]`; raw-pointer writes create no references that could alias the
        // caller's concurrent reads of other slots.
        unsafe {
            let row = core::ptr::addr_of_mut!((*meta).mem[slot]).cast::<LoadMeta>();
            for (i, f) in frags.iter().enumerate() {
                row.add(i).write(*f);
            }
        }
        // SAFETY: `cnt[slot]` is an aligned u64 inside our allocation; the caller only reads it
        // atomically (or after `test` returned), so treating it as an AtomicU64 is sound.
        let cnt = unsafe {
            AtomicU64::from_ptr(core::ptr::addr_of_mut!((*meta).cnt[slot]).cast::<u64>())
        };
        cnt.store(frags.len() as u64, Ordering::Release);
        Ok(())
    }
}

impl Drop for HostUnpackQueue {
    fn drop(&mut self) {
        // SAFETY: both pointers came from `alloc_zeroed` with these layouts in `new` and are
        // freed exactly once, here; the comm is closed, so the caller may no longer use them.
        unsafe {
            dealloc(self.meta.as_ptr().cast(), Layout::new::<NetUnpackMeta>());
            dealloc(
                self.handle.as_ptr().cast(),
                Layout::new::<UnpackNetDeviceHandle>(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_rules() {
        assert_eq!(check_cuda_registration(true, 0x10000), Ok(()));
        assert_eq!(
            check_cuda_registration(true, 0x10010),
            Err(SimError::CudaNotAligned { addr: 0x10010 })
        );
        assert_eq!(
            check_cuda_registration(false, 0x10000),
            Err(SimError::CudaNeedsDmaBuf)
        );
        assert_eq!(
            HostMemory.register_cuda(0x10000, 4096),
            Err(SimError::CudaNeedsCudaMode)
        );
    }

    #[test]
    fn host_queue_layout_and_publish() {
        let q = HostUnpackQueue::new().unwrap();
        let h = q.device_handle();
        // SAFETY: `h` points at the live handle of `q`; the test reads it while nothing writes.
        let handle = unsafe { h.read() };
        assert_eq!(handle.head, u64::MAX);
        assert!(handle.bounce_buf.is_null());
        let meta = handle.meta;
        let frags = [
            LoadMeta {
                src_off: 4096,
                len: 100,
                dst_off: 0,
            },
            LoadMeta {
                src_off: 0,
                len: 50,
                dst_off: 100,
            },
        ];
        q.publish(5, &frags).unwrap();
        q.publish(6, &[]).unwrap();
        // SAFETY: `meta` is the live metadata of `q`; nothing writes during these reads.
        let (cnt5, cnt6, m0, m1) = unsafe {
            (
                (*meta).cnt[5],
                (*meta).cnt[6],
                (*meta).mem[5][0],
                (*meta).mem[5][1],
            )
        };
        assert_eq!((cnt5, cnt6), (2, 0));
        assert_eq!((m0, m1), (frags[0], frags[1]));
        assert!(q.publish(16, &[]).is_err());
    }
}
