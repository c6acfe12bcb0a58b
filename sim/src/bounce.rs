//! The device-memory seam: CUDA registrations, the bounce pool and each recv comm's unpack queue,
//! and the choice between host mode and CUDA mode.
//!
//! On TCPX a receive lands in a GPU bounce pool as scattered 4 KiB pages and `test` publishes,
//! per unpack slot, a list of `loadMeta` fragments in pinned, device-mapped memory; `accept`
//! hands out a device pointer to `{meta, bounce_buf, head}`. tcpx-sim has two backends behind
//! the traits here ([`select_memory`] picks one at `init`):
//!
//! * **Host mode** ([`HostMemory`], always built): no GPU. The unpack queue
//!   ([`HostUnpackQueue`]) is ordinary host memory: `accept` writes the address of a host
//!   `unpackNetDeviceHandle` into `NetDeviceHandle::handle`; its `meta` points at a host
//!   `netUnpackMeta` (one allocation per comm, stable until `closeRecv`); `bounce_buf` is NULL;
//!   `head` starts at `u64::MAX` like TCPX. Host receives go straight into the irecv buffer and
//!   publish `cnt[slot] = 0`. `regMr(NCCL_PTR_CUDA)` passes TCPX's checks
//!   ([`check_cuda_registration`]) and then fails with "CUDA memory needs tcpx-sim CUDA mode".
//! * **CUDA mode** (`crate::cuda`, feature `cuda`): TCPX's layout for real — the handle in
//!   device memory, the metadata in pinned device-mapped memory, a per-GPU bounce pool in device
//!   memory that receives into CUDA buffers are scattered into page by page
//!   ([`UnpackQueue::place`]), pages poisoned and recycled on `irecvConsumed`
//!   ([`UnpackQueue::release`]), sends from CUDA buffers copied device→host by the helper
//!   threads ([`Stager`]).
//!
//! Who calls what: `accept` asks [`DeviceMemory::new_unpack_queue`] for the comm's queue; `test`
//! calls [`UnpackQueue::place`] for each chunk of a CUDA receive when it hands the chunk to a
//! helper thread, and [`UnpackQueue::publish`] when the receive is done; `irecvConsumed` calls
//! [`UnpackQueue::release`]. Helper threads move device chunks through a [`Stager`] made by the
//! comm's [`DeviceIo`].
//!
//! Invariants:
//! * `publish` writes `cnt[slot]` last, with release ordering, after every fragment of the
//!   receive is in `mem[slot]`, as TCPX does (`std::atomic_thread_fence(release)` then the store).
//! * The queue's memory is never referenced through a Rust `&`/`&mut` after creation: the
//!   caller (and NCCL's kernel) read it and write `head` concurrently, so all access is by raw
//!   pointer.
//!
//! ```
//! use tcpx_sim::bounce::{DeviceMemory, HostMemory, UnpackQueue};
//! use tcpx_sim::log::Logger;
//! fn sink(_: i32, _: &str) {}
//! let mut q = HostMemory.new_unpack_queue(&Logger::Sink(sink)).unwrap();
//! q.publish(3, 0).unwrap();
//! assert!(!q.device_handle().is_null());
//! assert!(q.device_io().is_none());
//! ```

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tcpx::net::abi::{NetUnpackMeta, UnpackNetDeviceHandle, NET_PAGE_SIZE, UNPACK_QUEUE_DEPTH};

use crate::config::{Config, CudaMode};
use crate::error::SimError;
use crate::helper::PhaseCell;
use crate::log::Logger;

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
    /// The CUDA device (ordinal) the memory belongs to.
    pub device: i32,
}

impl CudaRegistration {
    /// The sub-range `[addr, addr + len)`, or None when it is not inside the registration.
    pub fn range(&self, addr: usize, len: usize) -> Option<DeviceRange> {
        let end = addr.checked_add(len)?;
        if addr < self.addr || end > self.addr.checked_add(self.size)? {
            return None;
        }
        Some(DeviceRange {
            addr,
            len,
            device: self.device,
        })
    }
}

/// Device memory one request (or one chunk of it) reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    /// Device address.
    pub addr: usize,
    /// Length in bytes.
    pub len: usize,
    /// The CUDA device (ordinal).
    pub device: i32,
}

impl DeviceRange {
    /// The sub-range `[offset, offset + len)` of this range, or None when out of bounds.
    pub fn sub(&self, offset: usize, len: usize) -> Option<DeviceRange> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(DeviceRange {
            addr: self.addr + offset,
            len,
            device: self.device,
        })
    }
}

/// A chunk of a CUDA receive as a helper thread sees it: `len` bytes to read from the socket and
/// scatter into the bounce pool along `nfrags` fragments published at `frags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedChunk {
    /// Device-visible address of the chunk's first `loadMeta` (inside the comm's metadata).
    pub frags: usize,
    /// Its fragments: one per 4 KiB of the chunk, the last one possibly short.
    pub nfrags: u32,
    /// Chunk bytes.
    pub len: u32,
}

/// A helper thread's device I/O: blocking socket I/O through host staging (or, with a host
/// bounce pool, straight into the pool's pages).
///
/// Made on the thread that sets the comm up and moved into its helper thread, so it must own
/// everything it allocates (`Send`) and allocate nothing later.
pub trait Stager: Send {
    /// Called once on the helper thread before its first task: makes the stager's CUDA context
    /// current there. Must not allocate or wait for the GPU.
    fn bind(&mut self) -> Result<(), SimError> {
        Ok(())
    }
    /// Copies `src` device→host and sends it on `sock` (data socket `index`), keeping `phase`
    /// up to date (CUDA waits, socket I/O).
    fn send(
        &mut self,
        sock: &TcpStream,
        index: usize,
        src: DeviceRange,
        phase: &PhaseCell,
    ) -> Result<(), SimError>;
    /// Receives `chunk.len` bytes from `sock` (data socket `index`) into the bounce pool along the
    /// chunk's fragments; returns once the bytes are in the pool. Keeps `phase` up to date.
    fn recv(
        &mut self,
        sock: &TcpStream,
        index: usize,
        chunk: StagedChunk,
        phase: &PhaseCell,
    ) -> Result<(), SimError>;
}

/// Makes [`Stager`]s for a comm's helper threads (CUDA mode only).
pub trait DeviceIo: Send + Sync {
    /// A stager for one helper thread; called by [`crate::helper::Helpers::spawn`] on the thread
    /// that sets the comm up (`connect`/`accept`), once per helper, so all staging is allocated
    /// before NCCL can launch a kernel on the comm and never per chunk.
    fn stager(&self) -> Result<Box<dyn Stager>, SimError>;
}

/// One recv comm's unpack queue: the metadata NCCL's unpack kernel reads, and (CUDA mode) the
/// bounce pages of its receives.
pub trait UnpackQueue: Send {
    /// The pointer `accept` stores in `NetDeviceHandle::handle` (a device pointer on TCPX).
    fn device_handle(&self) -> *mut UnpackNetDeviceHandle;
    /// Helper-thread I/O for chunks of CUDA receives; `None` in host mode.
    fn device_io(&self) -> Option<Arc<dyn DeviceIo>>;
    /// Places a `len`-byte chunk at offset `dst_off` of the CUDA receive in `slot`: takes
    /// bounce pages for it and writes its fragments to `mem[slot][first..]`, where `first` is
    /// the number of fragments placed for that receive so far. `Ok(None)` when the pool has too
    /// few free pages right now (the receive waits, as when NIC RX pages run dry).
    fn place(
        &mut self,
        slot: usize,
        first: usize,
        dst_off: u64,
        len: u32,
    ) -> Result<Option<StagedChunk>, SimError>;
    /// Publishes a completed receive of `count` fragments (all placed already) for unpack slot
    /// `slot` (< 16): `cnt[slot] = count`, written last with release ordering.
    fn publish(&mut self, slot: usize, count: usize) -> Result<(), SimError>;
    /// `irecvConsumed` of the receive in `slot` with `count` fragments: its pages are
    /// overwritten (poisoned) and go back to the pool. A no-op for `count == 0`.
    fn release(&mut self, slot: usize, count: usize) -> Result<(), SimError>;
}

/// Where CUDA memory and unpack queues come from.
pub trait DeviceMemory: Send + Sync {
    /// `"host"` or `"cuda"`, for logs.
    fn mode(&self) -> &'static str;
    /// `regMr(NCCL_PTR_CUDA)` after [`check_cuda_registration`] passed.
    fn register_cuda(
        &self,
        addr: usize,
        size: usize,
        log: &Logger,
    ) -> Result<CudaRegistration, SimError>;
    /// A new unpack queue for a recv comm (at `accept`, when a device handle is requested),
    /// on the GPU of the calling thread.
    fn new_unpack_queue(&self, log: &Logger) -> Result<Box<dyn UnpackQueue>, SimError>;
    /// Helper-thread I/O for a new send comm (sends from CUDA memory), staged on the calling
    /// thread's GPU (`connect`); `None` in host mode.
    fn send_io(&self) -> Result<Option<Arc<dyn DeviceIo>>, SimError>;
}

/// Picks the backend for `init`: host mode for `TCPX_SIM_CUDA=0`; CUDA mode when the build has
/// the `cuda` feature, libcuda loads and a GPU exists; otherwise host mode (an INFO says why),
/// or, with `TCPX_SIM_CUDA=1`, [`SimError::CudaUnavailable`].
pub fn select_memory(cfg: &Config, log: &Logger) -> Result<Box<dyn DeviceMemory>, SimError> {
    if cfg.cuda == CudaMode::Off {
        return Ok(Box::new(HostMemory));
    }
    #[cfg(feature = "cuda")]
    let opened =
        crate::cuda::CudaMemory::open(cfg, log).map(|m| Box::new(m) as Box<dyn DeviceMemory>);
    #[cfg(not(feature = "cuda"))]
    let opened: Result<Box<dyn DeviceMemory>, SimError> = Err(SimError::CudaUnavailable {
        why: "this tcpx-sim was built without the `cuda` feature".to_owned(),
    });
    match opened {
        Ok(m) => Ok(m),
        Err(e) if cfg.cuda == CudaMode::On => Err(e),
        Err(e) => {
            log.info(
                tcpx::net::abi::log_subsys::INIT | tcpx::net::abi::log_subsys::NET,
                crate::log::Call::Init,
                format_args!("host mode ({e}); set TCPX_SIM_CUDA=1 to require CUDA mode"),
            );
            Ok(Box::new(HostMemory))
        }
    }
}

/// Host mode: no GPU; CUDA registrations fail, unpack queues live in host memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMemory;

impl DeviceMemory for HostMemory {
    fn mode(&self) -> &'static str {
        "host"
    }

    fn register_cuda(
        &self,
        _addr: usize,
        _size: usize,
        _log: &Logger,
    ) -> Result<CudaRegistration, SimError> {
        Err(SimError::CudaNeedsCudaMode)
    }

    fn new_unpack_queue(&self, _log: &Logger) -> Result<Box<dyn UnpackQueue>, SimError> {
        Ok(Box::new(HostUnpackQueue::new()?))
    }

    fn send_io(&self) -> Result<Option<Arc<dyn DeviceIo>>, SimError> {
        Ok(None)
    }
}

/// Writes `cnt[slot] = count` with release ordering (after the fragments), as TCPX does.
///
/// # Safety
/// `meta` points at a live `netUnpackMeta` in host-accessible memory whose `cnt` entries are
/// only ever read, never written, by anyone else.
pub(crate) unsafe fn store_count(meta: *mut NetUnpackMeta, slot: usize, count: usize) {
    // SAFETY: `cnt[slot]` is an aligned u64 inside the caller's live allocation (slot < 16 is
    // checked by every caller); others only read it, atomically or after `test` returned, so
    // treating it as an AtomicU64 is sound.
    let cnt =
        unsafe { AtomicU64::from_ptr(core::ptr::addr_of_mut!((*meta).cnt[slot]).cast::<u64>()) };
    cnt.store(count as u64, Ordering::Release);
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

    fn device_io(&self) -> Option<Arc<dyn DeviceIo>> {
        None
    }

    fn place(
        &mut self,
        _slot: usize,
        _first: usize,
        _dst_off: u64,
        _len: u32,
    ) -> Result<Option<StagedChunk>, SimError> {
        Err(SimError::CudaNeedsCudaMode)
    }

    fn publish(&mut self, slot: usize, count: usize) -> Result<(), SimError> {
        if slot >= UNPACK_QUEUE_DEPTH || count != 0 {
            return Err(SimError::Protocol {
                why: "host-mode publish needs a slot < 16 and no fragments",
            });
        }
        // SAFETY: `meta` is our live host allocation; only we write `cnt`.
        unsafe { store_count(self.meta.as_ptr(), slot, 0) };
        Ok(())
    }

    fn release(&mut self, _slot: usize, count: usize) -> Result<(), SimError> {
        if count == 0 {
            Ok(())
        } else {
            Err(SimError::Protocol {
                why: "host-mode receives have no bounce pages",
            })
        }
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

    fn sink(_: i32, _: &str) {}

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
            HostMemory.register_cuda(0x10000, 4096, &Logger::Sink(sink)),
            Err(SimError::CudaNeedsCudaMode)
        );
    }

    #[test]
    fn device_ranges_are_bounds_checked() {
        let reg = CudaRegistration {
            addr: 0x10000,
            size: 8192,
            device: 1,
        };
        let r = reg.range(0x10000 + 4096, 4096).unwrap();
        assert_eq!((r.addr, r.len, r.device), (0x11000, 4096, 1));
        assert!(reg.range(0x10000 + 4097, 4096).is_none());
        assert!(reg.range(0xF000, 16).is_none());
        assert!(reg.range(usize::MAX, 2).is_none());
        assert_eq!(r.sub(100, 10).map(|s| s.addr), Some(0x11000 + 100));
        assert!(r.sub(4090, 10).is_none());
    }

    #[test]
    fn host_queue_layout_and_publish() {
        let mut q = HostUnpackQueue::new().unwrap();
        let h = q.device_handle();
        // SAFETY: `h` points at the live handle of `q`; the test reads it while nothing writes.
        let handle = unsafe { h.read() };
        assert_eq!(handle.head, u64::MAX);
        assert!(handle.bounce_buf.is_null());
        let meta = handle.meta;
        // SAFETY: `meta` is the live metadata of `q`; nothing else touches it.
        unsafe { core::ptr::addr_of_mut!((*meta).cnt[5]).write(77) };
        q.publish(5, 0).unwrap();
        // SAFETY: as above.
        let cnt5 = unsafe { (*meta).cnt[5] };
        assert_eq!(cnt5, 0);
        assert!(q.publish(16, 0).is_err());
        assert!(q.publish(1, 3).is_err());
        assert_eq!(q.place(0, 0, 0, 4096), Err(SimError::CudaNeedsCudaMode));
        assert_eq!(q.release(0, 0), Ok(()));
        assert!(q.release(0, 1).is_err());
    }

    #[test]
    fn cuda_off_selects_host_mode() {
        let env = |k: &str| match k {
            "NCCL_DYNAMIC_CHUNK_SIZE" => Some("65536".to_owned()),
            "TCPX_SIM_CUDA" => Some("0".to_owned()),
            _ => None,
        };
        let cfg = Config::from_env(&env).unwrap();
        let m = select_memory(&cfg, &Logger::Sink(sink)).unwrap();
        assert_eq!(m.mode(), "host");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_mode_follows_the_driver() {
        let env = |k: &str| match k {
            "NCCL_DYNAMIC_CHUNK_SIZE" => Some("65536".to_owned()),
            _ => None,
        };
        let auto = Config::from_env(&env).unwrap();
        let driver = crate::cuda::driver::open();
        let mode = select_memory(&auto, &Logger::Sink(sink)).map(|m| m.mode());
        assert_eq!(mode, Ok(if driver.is_ok() { "cuda" } else { "host" }));
        let on = Config {
            cuda: CudaMode::On,
            ..auto
        };
        match (driver, select_memory(&on, &Logger::Sink(sink))) {
            (Ok(_), Ok(m)) => assert_eq!(m.mode(), "cuda"),
            (Err(_), Err(e)) => assert!(matches!(e, SimError::CudaUnavailable { .. }), "{e}"),
            (d, m) => panic!(
                "driver {d:?} but TCPX_SIM_CUDA=1 gave {:?}",
                m.map(|m| m.mode())
            ),
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_on_without_the_feature_fails_init() {
        let env = |k: &str| match k {
            "NCCL_DYNAMIC_CHUNK_SIZE" => Some("65536".to_owned()),
            "TCPX_SIM_CUDA" => Some("1".to_owned()),
            _ => None,
        };
        let cfg = Config::from_env(&env).unwrap();
        let e = select_memory(&cfg, &Logger::Sink(sink)).err();
        assert!(matches!(e, Some(SimError::CudaUnavailable { .. })), "{e:?}");
        let auto = Config {
            cuda: CudaMode::Auto,
            ..cfg
        };
        assert_eq!(
            select_memory(&auto, &Logger::Sink(sink)).map(|m| m.mode()),
            Ok("host")
        );
    }
}
