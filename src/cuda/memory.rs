//! Device memory ([`CudaBuffer`], a [`Region`] that TCPX can register) and the pinned,
//! device-mapped host memory that stages unpack descriptors.
//!
//! TCPX's `regMr` refuses CUDA memory whose address is not a multiple of 4 KiB, so a
//! [`CudaBuffer`] has a 4 KiB-aligned base and a length rounded up to whole 4 KiB pages.
//!
//! Invariants:
//! * A [`CudaBuffer`]'s device pointer and length never change; its memory is zeroed at
//!   allocation and freed on drop (the `Arc<Gpu>` it holds keeps the context alive until then).
//! * The host never forms a reference to device memory: bytes move only through driver copies
//!   ([`CudaBuffer::copy_from_host`], [`CudaBuffer::copy_to_host`], [`CudaBuffer::fill`]). Each
//!   runs on a private non-blocking [`Stream`] and has finished when it returns: it waits for
//!   nothing else on the GPU (another library's kernel cannot hold it up), so the caller orders
//!   it after the work that writes the buffer (an unpack's event, a receive's completion). The
//!   wait is bounded ([`WAIT_TIMEOUT`](super::WAIT_TIMEOUT)).
//!
//! ```no_run
//! use tcpx::cuda::{CudaBuffer, Gpu};
//! use tcpx::net::{MemKind, Region};
//! let gpu = Gpu::new(0)?;
//! let buf = CudaBuffer::new(&gpu, 10_000)?;
//! assert_eq!((buf.len(), buf.device_ptr() % 4096, buf.kind()), (12_288, 0, MemKind::Cuda));
//! buf.copy_from_host(b"hello", 100)?;
//! let mut back = [0u8; 5];
//! buf.copy_to_host(&mut back, 100)?;
//! assert_eq!(&back, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::ffi::c_void;
use core::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr};

use super::driver::{check, Gpu};
use super::stream::Stream;
use super::CudaError;
use crate::net::{MemKind, Region};

/// The alignment and length granule of a [`CudaBuffer`] (a devmem page).
const PAGE: usize = 4096;

/// A raw `cuMemAlloc` allocation, freed on drop.
#[derive(Debug)]
pub(crate) struct DeviceAlloc {
    gpu: Arc<Gpu>,
    base: CUdeviceptr,
}

impl DeviceAlloc {
    /// `len` bytes (not zeroed). `len` must be non-zero.
    pub(crate) fn new(gpu: &Arc<Gpu>, len: usize) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let mut base: CUdeviceptr = 0;
        // SAFETY: valid out-pointer; the context is current.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut base, len) })?;
        Ok(Self {
            gpu: Arc::clone(gpu),
            base,
        })
    }

    pub(crate) fn ptr(&self) -> CUdeviceptr {
        self.base
    }
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: allocated by cuMemAlloc in `new`, freed once.
        let _ = unsafe { sys::cuMemFree_v2(self.base) };
    }
}

/// Pinned host memory mapped into the device's address space (`cuMemHostAlloc` with
/// `DEVICEMAP | PORTABLE`), freed on drop. The host writes it through [`PinnedHost::as_ptr`];
/// kernels read it at [`PinnedHost::device_ptr`].
#[derive(Debug)]
pub(crate) struct PinnedHost {
    gpu: Arc<Gpu>,
    ptr: NonNull<u8>,
    len: usize,
    device_ptr: CUdeviceptr,
}

impl PinnedHost {
    /// `len` bytes, zeroed. `len` must be non-zero.
    pub(crate) fn new(gpu: &Arc<Gpu>, len: usize) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let mut raw: *mut c_void = core::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: valid out-pointer; the context is current.
        check("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut raw, len, flags)
        })?;
        let ptr = NonNull::new(raw.cast::<u8>()).ok_or(CudaError::Driver {
            call: "cuMemHostAlloc",
            result: sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        })?;
        // From here on drop frees it.
        let mut pinned = Self {
            gpu: Arc::clone(gpu),
            ptr,
            len,
            device_ptr: 0,
        };
        // SAFETY: `raw` is a live cuMemHostAlloc allocation of `len` bytes.
        unsafe { core::ptr::write_bytes(raw.cast::<u8>(), 0, len) };
        let mut device_ptr: CUdeviceptr = 0;
        // SAFETY: valid out-pointer; `raw` was allocated with DEVICEMAP; flags must be 0.
        check("cuMemHostGetDevicePointer", unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, raw, 0)
        })?;
        pinned.device_ptr = device_ptr;
        Ok(pinned)
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn device_ptr(&self) -> CUdeviceptr {
        self.device_ptr
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: allocated by cuMemHostAlloc in `new`, freed once; the owner made sure no
        // launch still reads it.
        let _ = unsafe { sys::cuMemFreeHost(self.ptr.as_ptr().cast()) };
    }
}

/// Device memory: 4 KiB-aligned, a whole number of 4 KiB pages, zeroed at allocation.
///
/// A [`Region`] of kind [`MemKind::Cuda`], so it can be registered with a TCPX comm (and
/// receive into it) or be the destination of an unpack. Its bytes are reached from the host
/// only through the synchronous copies below.
#[derive(Debug)]
pub struct CudaBuffer {
    alloc: DeviceAlloc,
    ptr: CUdeviceptr,
    len: usize,
}

impl CudaBuffer {
    /// Allocates at least `len` bytes (rounded up to whole 4 KiB pages; a zero-length buffer
    /// still gets one page so its address is real), 4 KiB-aligned and zeroed.
    ///
    /// # Errors
    ///
    /// [`CudaError::TooLarge`] when the rounded size overflows; a failing `cuMemAlloc` or
    /// `cuMemsetD8` (e.g. out of memory).
    pub fn new(gpu: &Arc<Gpu>, len: usize) -> Result<Self, CudaError> {
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or(CudaError::TooLarge { len })?;
        // cuMemAlloc returns at least 256-byte (in practice 2 MiB for large sizes) aligned
        // memory; if this one is not page-aligned, allocate a page more and align up.
        let mut alloc = DeviceAlloc::new(gpu, size)?;
        if alloc.ptr() % PAGE as u64 != 0 {
            let padded = size.checked_add(PAGE).ok_or(CudaError::TooLarge { len })?;
            drop(alloc);
            alloc = DeviceAlloc::new(gpu, padded)?;
        }
        let ptr = alloc.ptr().next_multiple_of(PAGE as u64);
        let buf = Self {
            alloc,
            ptr,
            len: size,
        };
        buf.fill(0)?;
        Ok(buf)
    }

    /// The device address of the first byte (a multiple of 4096).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Length in bytes (a multiple of 4096).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a buffer has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The GPU the buffer lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.alloc.gpu
    }

    fn range(&self, offset: usize, len: usize) -> Result<CUdeviceptr, CudaError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.ptr + offset as u64),
            _ => Err(CudaError::OutOfBounds {
                offset,
                len,
                buf_len: self.len,
            }),
        }
    }

    /// Copies `src` into the buffer at `offset` and returns when the bytes are in device
    /// memory. Waits for no other GPU work: order it after whatever else uses the range.
    ///
    /// # Errors
    ///
    /// [`CudaError::OutOfBounds`], [`CudaError::WaitTimeout`], or a failing driver call
    /// (including an earlier asynchronous fault the stream reports).
    pub fn copy_from_host(&self, src: &[u8], offset: usize) -> Result<(), CudaError> {
        let dst = self.range(offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let stream = Stream::new(&self.alloc.gpu)?;
        // SAFETY: `dst..dst + len` is inside this allocation (checked); `src` is valid for
        // `len` bytes; the stream is alive and its context current (Stream::new made it so).
        // The copy only reads `src`: pageable memory is staged before the call returns, and a
        // page-locked `src` is at worst read after a timed-out wait.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr().cast(), src.len(), stream.as_raw())
        })?;
        stream.synchronize()
    }

    /// Copies `dst.len()` bytes at `offset` out of the buffer and returns when they are in
    /// `dst`. Waits for no other GPU work: order it after whatever writes the range.
    ///
    /// # Errors
    ///
    /// As [`copy_from_host`](Self::copy_from_host). After a [`CudaError::WaitTimeout`] the
    /// copy may still be writing `dst` (page-locked memory is written by DMA after the call
    /// returned), so this waits for the copy to end before it returns the timeout: the one
    /// wait of this crate that can outlast its deadline.
    pub fn copy_to_host(&self, dst: &mut [u8], offset: usize) -> Result<(), CudaError> {
        let src = self.range(offset, dst.len())?;
        device_to_host(&self.alloc.gpu, src, dst)
    }

    /// Sets every byte to `byte` (e.g. to poison a destination before a test) and returns when
    /// it is done. Waits for no other GPU work.
    ///
    /// # Errors
    ///
    /// [`CudaError::WaitTimeout`], or a failing `cuMemsetD8Async` / stream query.
    pub fn fill(&self, byte: u8) -> Result<(), CudaError> {
        let stream = Stream::new(&self.alloc.gpu)?;
        // SAFETY: `ptr..ptr + len` is inside this allocation; the stream is alive and its
        // context current.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(self.ptr, byte, self.len, stream.as_raw())
        })?;
        stream.synchronize()
    }
}

/// Copies `dst.len()` bytes from the device address `src` into `dst` on a private stream and
/// returns when they are there ([`CudaBuffer::copy_to_host`] says what a timeout does).
///
/// # Errors
///
/// [`CudaError::WaitTimeout`], or a failing driver call (an address that is not device memory
/// is the copy's error, not a host access).
pub(crate) fn device_to_host(
    gpu: &Arc<Gpu>,
    src: CUdeviceptr,
    dst: &mut [u8],
) -> Result<(), CudaError> {
    if dst.is_empty() {
        return Ok(());
    }
    let stream = Stream::new(gpu)?;
    // SAFETY: `dst` is valid for writes of `len` bytes and exclusively borrowed until the copy
    // has ended (below); the driver checks `src`; the stream is alive and its context current.
    check("cuMemcpyDtoHAsync", unsafe {
        sys::cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), src, dst.len(), stream.as_raw())
    })?;
    match stream.synchronize() {
        Err(timeout @ CudaError::WaitTimeout { .. }) => {
            tracing::error!(
                "{timeout}; waiting for the device → host copy of {} bytes to end, as it writes \
                 the caller's memory",
                dst.len()
            );
            // SAFETY: the stream is alive; this blocks until the copy into `dst` has ended.
            let _ = unsafe { sys::cuStreamSynchronize(stream.as_raw()) };
            Err(timeout)
        }
        other => other,
    }
}

// SAFETY: the device pointer and length are fixed at allocation; the memory is one cuMemAlloc
// allocation of device memory, valid until drop; the host gets no reference to it (only copies),
// so the plugin and kernels may write it at any time.
unsafe impl Region for CudaBuffer {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr as usize as *mut u8
    }
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> MemKind {
        MemKind::Cuda
    }
}

// SAFETY: PinnedHost owns its allocation like a Box<[u8]>; its owner (the Unpacker, which is not
// Sync) is the only writer.
unsafe impl Send for PinnedHost {}
