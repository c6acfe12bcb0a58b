//! [`Unpacker`]: the receive hot path's batch builder and launcher.
//!
//! Per received chunk the engine calls [`Unpacker::push_chunk`] with the fragments the plugin
//! published for its slot; once per progress-loop turn it calls [`Unpacker::launch`], which
//! issues ONE kernel for every chunk pushed since the last launch (chunks of any comm) and
//! returns an [`EventId`]. Window entries become `Unpacking(event)`; when
//! [`Unpacker::event_complete`] says so, the engine calls `irecvConsumed` and
//! [`Unpacker::release_event`] once per chunk.
//!
//! How descriptors reach the GPU ([`DescPath`]):
//! * up to [`INLINE_MAX`] (170) descriptors — a 512 KiB chunk of 4 KiB pages has 128 — travel in
//!   the kernel parameters (4 KiB): no copy and no host-memory read precede the unpack, so the
//!   launch → event time stays close to an empty kernel's;
//! * larger batches are read by the kernel straight from the pinned, device-mapped staging
//!   memory the host wrote them into (one contiguous read per block and round, the next
//!   round's read overlapping the copy),
//!   or, with [`DescPath::Copy`]/[`DescPath::AutoCopy`], copied to device memory by one
//!   `cuMemcpyHtoDAsync` before the kernel. `tcpx-bench unpack` measures all three.
//!
//! Staging is a ring of [`UnpackConfig::staging_slots`] pinned buffers; a batch fills one slot,
//! and a slot is refilled only after the event of the last launch that read it has completed
//! ([`UnpackError::StagingBusy`] otherwise, never a wait or a reallocation).
//!
//! ```no_run
//! use tcpx::cuda::{CudaBuffer, DeviceDst, Gpu, UnpackConfig, Unpacker};
//! use tcpx::core::unpack::LoadMeta;
//!
//! let gpu = Gpu::new(0)?;
//! let pool = CudaBuffer::new(&gpu, 1 << 20)?;
//! let dst = CudaBuffer::new(&gpu, 1 << 20)?;
//! let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default())?;
//! // Two chunks (of possibly different comms) in one launch.
//! for (i, chunk) in [0u64, 4096].into_iter().enumerate() {
//!     let frags = [LoadMeta { src_off: 8192 * i as u32, len: 4096, dst_off: 0 }];
//!     let dst_range = DeviceDst::in_region(&dst, chunk as usize, 4096)?;
//!     unpacker.push_chunk(&frags, pool.device_ptr(), pool.len() as u64, dst_range)?;
//! }
//! let event = unpacker.launch()?.expect("two chunks were pushed");
//! unpacker.wait_event(event)?; // tests only; the engine polls event_complete
//! unpacker.release_event(event)?;
//! unpacker.release_event(event)?; // once per chunk
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::ffi::c_void;
use core::mem::ManuallyDrop;
use core::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdeviceptr, CUfunction, CUpointer_attribute};
use tcpx_core::unpack::{validate_fragments, LoadMeta, NetUnpackMeta};
use tcpx_core::window::EventId;

use super::desc::{
    grid_size, pieces_needed, write_chunk, InlineBatch, UnpackDesc, BLOCK_THREADS, INLINE_MAX,
    PIECE_BYTES,
};
use super::driver::{check, Gpu};
use super::memory::{device_to_host, DeviceAlloc, PinnedHost};
use super::module::Kernels;
use super::stream::{EventPool, Stream};
use super::{CudaError, UnpackError, UnpackImpl};
use crate::net::abi::UnpackNetDeviceHandle;
use crate::net::{MemHandle, MemKind, Region};

/// Where an unpack may write: `len` bytes of device memory at `ptr` (a chunk's destination).
///
/// Built from a registered [`Region`] or [`MemHandle`] of kind [`MemKind::Cuda`] (checked), so
/// the kernel writes only memory the owner handed to the transport. The memory must stay
/// allocated until the launch's event completed; the engine keeps the region's `Arc` until the
/// chunk is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceDst {
    ptr: u64,
    len: u64,
}

impl DeviceDst {
    /// `[offset, offset + len)` of a CUDA region.
    ///
    /// # Errors
    ///
    /// [`UnpackError::NotDeviceMemory`] for a host region, [`UnpackError::DstOutOfRegion`] when
    /// the range does not fit.
    pub fn in_region<R: Region + ?Sized>(
        region: &R,
        offset: usize,
        len: usize,
    ) -> Result<Self, UnpackError> {
        Self::checked(
            region.kind(),
            region.as_ptr() as u64,
            region.len(),
            offset,
            len,
        )
    }

    /// `[offset, offset + len)` of the region a registration refers to.
    ///
    /// # Errors
    ///
    /// As [`in_region`](Self::in_region).
    pub fn in_mem_handle(mh: &MemHandle, offset: usize, len: usize) -> Result<Self, UnpackError> {
        Self::checked(mh.kind(), mh.base() as u64, mh.len(), offset, len)
    }

    fn checked(
        kind: MemKind,
        base: u64,
        region_len: usize,
        offset: usize,
        len: usize,
    ) -> Result<Self, UnpackError> {
        if kind != MemKind::Cuda {
            return Err(UnpackError::NotDeviceMemory);
        }
        match offset.checked_add(len) {
            Some(end) if end <= region_len => {}
            _ => {
                return Err(UnpackError::DstOutOfRegion {
                    offset,
                    len,
                    region_len,
                })
            }
        }
        let ptr = base
            .checked_add(offset as u64)
            .ok_or(UnpackError::AddressOverflow)?;
        ptr.checked_add(len as u64)
            .ok_or(UnpackError::AddressOverflow)?;
        Ok(Self {
            ptr,
            len: len as u64,
        })
    }

    /// A destination from a raw device address.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` is device memory (or device-mapped host memory) that nothing reads or
    /// writes — on the host or the device — from the [`Unpacker::push_chunk`] with this
    /// destination until the event of its launch has completed, and that stays allocated until
    /// then; `ptr + len` does not overflow.
    pub unsafe fn from_raw(ptr: u64, len: u64) -> Self {
        Self { ptr, len }
    }

    /// The device address of the first byte.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes (the chunk length).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the range is empty (a size-0 receive).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How a batch's descriptors reach the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DescPath {
    /// Kernel parameters for ≤ [`INLINE_MAX`] descriptors, else the kernel reads the mapped
    /// pinned staging memory directly.
    #[default]
    Auto,
    /// Kernel parameters for ≤ [`INLINE_MAX`] descriptors, else an async host-to-device copy
    /// into device staging before the kernel.
    AutoCopy,
    /// Always read from mapped pinned host memory.
    Mapped,
    /// Always copied into device memory first.
    Copy,
}

/// The path taken by one launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Inline,
    Mapped,
    Copy,
}

impl DescPath {
    fn route(self, count: usize) -> Route {
        match self {
            DescPath::Auto if count <= INLINE_MAX => Route::Inline,
            DescPath::AutoCopy if count <= INLINE_MAX => Route::Inline,
            DescPath::Auto | DescPath::Mapped => Route::Mapped,
            DescPath::AutoCopy | DescPath::Copy => Route::Copy,
        }
    }

    fn needs_device_staging(self) -> bool {
        matches!(self, DescPath::AutoCopy | DescPath::Copy)
    }
}

/// Sizes and policies of an [`Unpacker`], fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackConfig {
    /// Descriptors (fragment pieces of ≤ 4 KiB) per launch: the staging capacity of a batch.
    /// Default 32 768 (128 MiB of 4 KiB pages).
    pub max_descriptors: usize,
    /// Chunks per launch. Default 4096.
    pub max_chunks: usize,
    /// Staging buffers, i.e. launches whose descriptors may be read at the same time.
    /// Default 4.
    pub staging_slots: usize,
    /// Events in the pool: launches handed out and not yet fully released. Default 256.
    pub events: u32,
    /// How descriptors reach the kernel. Default [`DescPath::Auto`].
    pub desc_path: DescPath,
    /// What [`Unpacker::launch`] does. Default [`UnpackImpl::Kernel`].
    pub imp: UnpackImpl,
    /// Pinned host scratch for [`UnpackImpl::Host`], allocated only when `imp` is `Host`
    /// (at least 4 KiB). Default 4 MiB.
    pub host_scratch_bytes: usize,
}

impl Default for UnpackConfig {
    fn default() -> Self {
        Self {
            max_descriptors: 32_768,
            max_chunks: 4096,
            staging_slots: 4,
            events: 256,
            desc_path: DescPath::Auto,
            imp: UnpackImpl::Kernel,
            host_scratch_bytes: 4 << 20,
        }
    }
}

/// Counters of an [`Unpacker`] (plain numbers, `Copy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnpackStats {
    /// Successful launches (any [`UnpackImpl`]), empty-kernel launches not included.
    pub launches: u64,
    /// Kernel launches with descriptors in the kernel parameters.
    pub inline_launches: u64,
    /// Kernel launches reading mapped pinned staging.
    pub mapped_launches: u64,
    /// Kernel launches after a host-to-device descriptor copy.
    pub copy_launches: u64,
    /// Chunks launched.
    pub chunks: u64,
    /// Descriptors launched.
    pub descriptors: u64,
    /// Bytes launched.
    pub bytes: u64,
    /// Chunks refused by fragment validation.
    pub rejected_chunks: u64,
    /// Pushes refused with [`UnpackError::StagingBusy`].
    pub staging_busy: u64,
}

/// One staging buffer of the ring.
#[derive(Debug)]
struct Slot {
    host: PinnedHost,
    device: Option<DeviceAlloc>,
    /// The last launch that reads this slot (or a later one on the same stream).
    guard: Option<EventId>,
}

impl Slot {
    fn capacity(&self) -> usize {
        self.host.len() / core::mem::size_of::<UnpackDesc>()
    }

    fn descs(&self) -> &[UnpackDesc] {
        // SAFETY: the pinned allocation is page-aligned, zero-initialised at allocation and
        // holds `capacity` descriptors (any bit pattern is a valid UnpackDesc); the device only
        // reads it, and the host writes it only through `descs_mut` (&mut self).
        unsafe {
            core::slice::from_raw_parts(self.host.as_ptr().cast::<UnpackDesc>(), self.capacity())
        }
    }

    fn descs_mut(&mut self) -> &mut [UnpackDesc] {
        // SAFETY: as in `descs`; &mut self makes this the only host reference, and the caller
        // checked the guard, so no launch reads the slot any more.
        unsafe {
            core::slice::from_raw_parts_mut(
                self.host.as_ptr().cast::<UnpackDesc>(),
                self.capacity(),
            )
        }
    }
}

/// Builds batches of unpack descriptors and launches them on a persistent stream.
///
/// Not `Sync`: one progress thread owns it. `Send`, so it can be created before the thread
/// starts; every method that calls the driver makes the GPU's context current first.
///
/// What launches read (the staging slots, the host scratch, the kernels' module) is freed on
/// drop only after the stream drained; if that wait fails (a timeout, a faulted context) it is
/// leaked instead.
#[derive(Debug)]
pub struct Unpacker {
    config: UnpackConfig,
    slots: ManuallyDrop<Box<[Slot]>>,
    /// The slot the current batch fills.
    cur: usize,
    /// Descriptors, chunks and bytes in the current batch.
    count: usize,
    chunks: usize,
    bytes: u64,
    inline: Box<InlineBatch>,
    host_scratch: ManuallyDrop<Option<PinnedHost>>,
    stats: UnpackStats,
    events: EventPool,
    kernels: ManuallyDrop<Kernels>,
    stream: Stream,
    gpu: Arc<Gpu>,
}

// SAFETY: every field is owned; the raw driver handles inside may be used from any thread with
// the context current, which each driver-calling method ensures.
unsafe impl Send for Unpacker {}

impl Unpacker {
    /// Loads the kernels and allocates everything the hot path needs: a stream, the event
    /// pool, `staging_slots` pinned staging buffers of `max_descriptors` descriptors each (plus
    /// device twins for [`DescPath::Copy`]/[`DescPath::AutoCopy`]), the host scratch for
    /// [`UnpackImpl::Host`].
    ///
    /// # Errors
    ///
    /// A failing driver call (module load, allocation).
    pub fn new(gpu: &Arc<Gpu>, config: UnpackConfig) -> Result<Self, CudaError> {
        let mut config = config;
        config.max_descriptors = config.max_descriptors.clamp(1, u32::MAX as usize);
        config.max_chunks = config.max_chunks.clamp(1, u32::MAX as usize);
        config.staging_slots = config.staging_slots.max(1);
        let staging_bytes = config
            .max_descriptors
            .checked_mul(core::mem::size_of::<UnpackDesc>())
            .ok_or(CudaError::TooLarge {
                len: config.max_descriptors,
            })?;
        let stream = Stream::new(gpu)?;
        let kernels = Kernels::load(gpu)?;
        let events = EventPool::new(gpu, config.events)?;
        let mut slots = Vec::with_capacity(config.staging_slots);
        for _ in 0..config.staging_slots {
            let device = if config.desc_path.needs_device_staging() {
                Some(DeviceAlloc::new(gpu, staging_bytes)?)
            } else {
                None
            };
            slots.push(Slot {
                host: PinnedHost::new(gpu, staging_bytes)?,
                device,
                guard: None,
            });
        }
        let host_scratch = if config.imp == UnpackImpl::Host {
            config.host_scratch_bytes = config.host_scratch_bytes.max(PIECE_BYTES as usize);
            Some(PinnedHost::new(gpu, config.host_scratch_bytes)?)
        } else {
            None
        };
        Ok(Self {
            config,
            slots: ManuallyDrop::new(slots.into_boxed_slice()),
            cur: 0,
            count: 0,
            chunks: 0,
            bytes: 0,
            inline: Box::new(InlineBatch::new()),
            host_scratch: ManuallyDrop::new(host_scratch),
            stats: UnpackStats::default(),
            events,
            kernels: ManuallyDrop::new(kernels),
            stream,
            gpu: Arc::clone(gpu),
        })
    }

    /// Adds one received chunk to the current batch: `frags` (the plugin's `loadMeta`s for the
    /// chunk's slot) say where its bytes are in the bounce pool `bounce_buf..+bounce_len` (a
    /// device address and length) and where they go in `dst`.
    ///
    /// The fragments are validated first ([`validate_fragments`]: sources inside the pool,
    /// every destination byte of the chunk written exactly once, at most 2048 fragments); a
    /// refused chunk leaves the batch unchanged. Then each fragment becomes one descriptor per
    /// started 4 KiB, written into pinned staging memory. No allocation and no driver call,
    /// except one `cuEventQuery` when a batch starts in a staging slot an earlier launch read.
    ///
    /// # Errors
    ///
    /// [`UnpackError::Fragment`], [`UnpackError::AddressOverflow`],
    /// [`UnpackError::TooManyChunks`], [`UnpackError::StagingFull`] (launch, then push again),
    /// [`UnpackError::StagingBusy`] (wait for an event, then push again), or a failing
    /// `cuEventQuery`.
    pub fn push_chunk(
        &mut self,
        frags: &[LoadMeta],
        bounce_buf: u64,
        bounce_len: u64,
        dst: DeviceDst,
    ) -> Result<(), UnpackError> {
        let summary = match validate_fragments(frags, bounce_len, dst.len) {
            Ok(summary) => summary,
            Err(e) => {
                self.stats.rejected_chunks += 1;
                return Err(UnpackError::Fragment(e));
            }
        };
        if bounce_buf.checked_add(bounce_len).is_none() {
            return Err(UnpackError::AddressOverflow);
        }
        if self.chunks >= self.config.max_chunks {
            return Err(UnpackError::TooManyChunks {
                max: self.config.max_chunks,
            });
        }
        if self.chunks == 0 {
            self.claim_slot()?;
        }
        let count = self.count;
        let free = self.config.max_descriptors.saturating_sub(count);
        let Some(slot) = self.slots.get_mut(self.cur) else {
            return Err(UnpackError::StagingBusy);
        };
        let written = slot
            .descs_mut()
            .get_mut(count..)
            .and_then(|room| write_chunk(frags, bounce_buf, dst.ptr, room));
        let Some(written) = written else {
            return Err(UnpackError::StagingFull {
                needed: pieces_needed(frags),
                free,
            });
        };
        self.count += written;
        self.chunks += 1;
        self.bytes += summary.bytes;
        Ok(())
    }

    /// Makes the current slot writable: the last launch that read it must have completed.
    fn claim_slot(&mut self) -> Result<(), UnpackError> {
        let Some(slot) = self.slots.get_mut(self.cur) else {
            return Err(UnpackError::StagingBusy);
        };
        if let Some(guard) = slot.guard {
            self.gpu.make_current()?;
            let done = match self.events.raw(guard) {
                Some(ev) => EventPool::query_raw(ev)?,
                None => true,
            };
            if !done {
                self.stats.staging_busy += 1;
                return Err(UnpackError::StagingBusy);
            }
            slot.guard = None;
        }
        Ok(())
    }

    /// Launches the current batch with the configured [`UnpackImpl`]; see
    /// [`launch_with`](Self::launch_with).
    ///
    /// # Errors
    ///
    /// As [`launch_with`](Self::launch_with).
    #[inline]
    pub fn launch(&mut self) -> Result<Option<EventId>, UnpackError> {
        self.launch_with(self.config.imp)
    }

    /// Unpacks every chunk pushed since the last launch with ONE kernel launch (or, for the
    /// ablation, `cuMemcpyDtoDAsync`s / host copies / nothing), records an event after it and
    /// returns it. `None` when nothing was pushed. The event must be released once per chunk of
    /// the batch ([`release_event`](Self::release_event)). Never waits for the GPU (except
    /// [`UnpackImpl::Host`], which is synchronous by design).
    ///
    /// # Errors
    ///
    /// [`UnpackError::NoFreeEvent`] / [`UnpackError::NoHostScratch`] leave the batch in place
    /// (release events, then launch again). A failing driver call discards the batch: its
    /// chunks were not unpacked (and the context may be unusable).
    pub fn launch_with(&mut self, imp: UnpackImpl) -> Result<Option<EventId>, UnpackError> {
        if self.chunks == 0 {
            return Ok(None);
        }
        if self.events.available() == 0 {
            return Err(UnpackError::NoFreeEvent {
                capacity: self.events.capacity(),
            });
        }
        if imp == UnpackImpl::Host && self.host_scratch.is_none() {
            return Err(UnpackError::NoHostScratch);
        }
        let outcome = self.enqueue_and_record(imp);
        if outcome.is_ok() {
            self.stats.launches += 1;
            self.stats.chunks += self.chunks as u64;
            self.stats.descriptors += self.count as u64;
            self.stats.bytes += self.bytes;
        }
        // The batch is launched, or discarded after a driver error.
        self.cur = (self.cur + 1) % self.slots.len();
        self.count = 0;
        self.chunks = 0;
        self.bytes = 0;
        outcome.map(Some)
    }

    fn enqueue_and_record(&mut self, imp: UnpackImpl) -> Result<EventId, UnpackError> {
        self.gpu.make_current()?;
        let reads_slot = match self.enqueue(imp) {
            Ok(reads_slot) => reads_slot,
            Err(e) => {
                // Part of the batch may be enqueued (a descriptor copy, some memcpys): let it
                // drain so nothing reads the slot after it is refilled. The drain is bounded;
                // past WAIT_TIMEOUT the GPU is not running this stream at all, and every later
                // launch queues behind the same stalled work.
                let _ = self.stream.synchronize();
                return Err(e);
            }
        };
        // chunks <= max_chunks <= u32::MAX.
        match self.events.record(&self.stream, self.chunks as u32) {
            Ok(event) => {
                if reads_slot {
                    if let Some(slot) = self.slots.get_mut(self.cur) {
                        slot.guard = Some(event);
                    }
                }
                Ok(event)
            }
            Err(e) => {
                let _ = self.stream.synchronize();
                Err(e)
            }
        }
    }

    /// Enqueues the batch's copies; true when the GPU reads the staging slot later.
    fn enqueue(&mut self, imp: UnpackImpl) -> Result<bool, UnpackError> {
        let count = self.count;
        if count == 0 {
            // Only size-0 chunks: nothing to copy, the event alone marks them.
            return Ok(false);
        }
        match imp {
            UnpackImpl::None => Ok(false),
            UnpackImpl::Kernel => self.enqueue_kernel(count),
            UnpackImpl::D2d => self.enqueue_d2d(count).map(|()| false),
            UnpackImpl::Host => self.enqueue_host(count).map(|()| false),
        }
    }

    fn enqueue_kernel(&mut self, count: usize) -> Result<bool, UnpackError> {
        let grid = grid_size(count, self.kernels.max_grid);
        // count <= max_descriptors <= u32::MAX.
        let mut n = count as u32;
        let Some(slot) = self.slots.get(self.cur) else {
            return Err(UnpackError::StagingBusy);
        };
        match self.config.desc_path.route(count) {
            Route::Inline => {
                let descs = slot.descs().get(..count).unwrap_or(&[]);
                if !self.inline.fill(descs) {
                    return Err(UnpackError::StagingFull {
                        needed: count,
                        free: INLINE_MAX,
                    });
                }
                let mut params = [(&mut *self.inline as *mut InlineBatch).cast::<c_void>()];
                self.launch_kernel(self.kernels.unpack_inline, grid, &mut params)?;
                self.stats.inline_launches += 1;
                // The driver copied the parameters during the call.
                Ok(false)
            }
            Route::Mapped => {
                // The descriptors were written with ordinary stores; keep them before the
                // launch (PCIe reads of pinned memory snoop the CPU caches).
                fence(Ordering::SeqCst);
                let mut descs: CUdeviceptr = slot.host.device_ptr();
                let mut params = [
                    (&mut descs as *mut CUdeviceptr).cast::<c_void>(),
                    (&mut n as *mut u32).cast::<c_void>(),
                ];
                self.launch_kernel(self.kernels.unpack, grid, &mut params)?;
                self.stats.mapped_launches += 1;
                Ok(true)
            }
            Route::Copy => {
                // Device staging exists for every DescPath that routes here (see `new`).
                let Some(device) = slot.device.as_ref() else {
                    return Err(UnpackError::Cuda(CudaError::Driver {
                        call: "cuMemcpyHtoDAsync",
                        result: sys::CUresult::CUDA_ERROR_INVALID_VALUE,
                    }));
                };
                let mut descs: CUdeviceptr = device.ptr();
                let bytes = count * core::mem::size_of::<UnpackDesc>();
                // SAFETY: both buffers hold max_descriptors >= count descriptors; the host
                // buffer is pinned (a true async copy) and not rewritten before the slot's
                // guard event completes; the context is current.
                check("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(
                        descs,
                        slot.host.as_ptr().cast::<c_void>(),
                        bytes,
                        self.stream.as_raw(),
                    )
                })?;
                let mut params = [
                    (&mut descs as *mut CUdeviceptr).cast::<c_void>(),
                    (&mut n as *mut u32).cast::<c_void>(),
                ];
                self.launch_kernel(self.kernels.unpack, grid, &mut params)?;
                self.stats.copy_launches += 1;
                Ok(true)
            }
        }
    }

    fn launch_kernel(
        &self,
        f: CUfunction,
        grid: u32,
        params: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        // SAFETY: `f` belongs to the loaded module; `params` holds one pointer per kernel
        // parameter, each to a live value of the parameter's type (the driver copies them
        // during the call); every descriptor was built from a validated chunk whose source is
        // the caller's bounce pool and whose destination is a DeviceDst; the context is
        // current. Launch errors are returned here; faults during the kernel surface on the
        // event (query/synchronize).
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                f,
                grid,
                1,
                1,
                BLOCK_THREADS,
                1,
                1,
                0,
                self.stream.as_raw(),
                params.as_mut_ptr(),
                core::ptr::null_mut(),
            )
        })
    }

    /// One `cuMemcpyDtoDAsync` per descriptor.
    fn enqueue_d2d(&self, count: usize) -> Result<(), UnpackError> {
        let Some(slot) = self.slots.get(self.cur) else {
            return Err(UnpackError::StagingBusy);
        };
        for d in slot.descs().get(..count).unwrap_or(&[]) {
            // SAFETY: src/dst ranges come from a validated chunk (bounce pool, DeviceDst); the
            // context is current.
            check("cuMemcpyDtoDAsync", unsafe {
                sys::cuMemcpyDtoDAsync_v2(d.dst, d.src, d.len as usize, self.stream.as_raw())
            })?;
        }
        Ok(())
    }

    /// Device → pinned host scratch → device, in rounds of at most the scratch size, each
    /// round waited for (the variant is synchronous).
    fn enqueue_host(&self, count: usize) -> Result<(), UnpackError> {
        let (Some(scratch), Some(slot)) = (self.host_scratch.as_ref(), self.slots.get(self.cur))
        else {
            return Err(UnpackError::NoHostScratch);
        };
        let descs = slot.descs().get(..count).unwrap_or(&[]);
        let stream = self.stream.as_raw();
        let mut next = 0;
        while next < descs.len() {
            let start = next;
            let mut used = 0usize;
            while let Some(d) = descs.get(next) {
                let len = d.len as usize;
                if used + len > scratch.len() {
                    break;
                }
                // SAFETY: `used + len <= scratch.len()`; the source comes from a validated
                // chunk; the context is current.
                check("cuMemcpyDtoHAsync", unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        scratch.as_ptr().add(used).cast::<c_void>(),
                        d.src,
                        len,
                        stream,
                    )
                })?;
                used += len;
                next += 1;
            }
            if next == start {
                // Host-built descriptors are <= 4 KiB and the scratch is >= 4 KiB.
                return Err(UnpackError::NoHostScratch);
            }
            let mut at = 0usize;
            for d in descs.get(start..next).unwrap_or(&[]) {
                // SAFETY: as above; the destination is a DeviceDst.
                check("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(
                        d.dst,
                        scratch.as_ptr().add(at).cast::<c_void>(),
                        d.len as usize,
                        stream,
                    )
                })?;
                at += d.len as usize;
            }
            self.stream.synchronize()?;
        }
        Ok(())
    }

    /// Launches the empty kernel (one warp) and records an event after it: the launch → event
    /// baseline the unpack's latency is compared with. Leaves the current batch alone.
    ///
    /// # Errors
    ///
    /// [`UnpackError::NoFreeEvent`], or a failing launch / record.
    pub fn launch_empty(&mut self) -> Result<EventId, UnpackError> {
        if self.events.available() == 0 {
            return Err(UnpackError::NoFreeEvent {
                capacity: self.events.capacity(),
            });
        }
        self.gpu.make_current()?;
        // SAFETY: the empty kernel takes no parameters; the context is current.
        check("cuLaunchKernel", unsafe {
            sys::cuLaunchKernel(
                self.kernels.empty,
                1,
                1,
                1,
                32,
                1,
                1,
                0,
                self.stream.as_raw(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
            )
        })?;
        self.events.record(&self.stream, 1)
    }

    /// Whether the launch behind `event` has finished. One `cuEventQuery`; never blocks.
    ///
    /// # Errors
    ///
    /// [`UnpackError::UnknownEvent`], or a failing query (which also reports a fault of the
    /// kernel, e.g. an illegal address).
    #[inline]
    pub fn event_complete(&self, event: EventId) -> Result<bool, UnpackError> {
        self.events.query(event)
    }

    /// Blocks until `event` completed. For tests and benchmarks; the engine polls
    /// [`event_complete`](Self::event_complete).
    ///
    /// # Errors
    ///
    /// As [`event_complete`](Self::event_complete).
    pub fn wait_event(&self, event: EventId) -> Result<(), UnpackError> {
        self.events.synchronize(event)
    }

    /// Releases one chunk's reference on `event`; after the last chunk of its batch the event
    /// returns to the pool.
    ///
    /// # Errors
    ///
    /// [`UnpackError::UnknownEvent`] when the event is not in use (released too often).
    #[inline]
    pub fn release_event(&mut self, event: EventId) -> Result<(), UnpackError> {
        self.events.release(event)
    }

    /// Chunks in the current (not yet launched) batch.
    pub fn pending_chunks(&self) -> usize {
        self.chunks
    }

    /// Descriptors in the current batch.
    pub fn pending_descriptors(&self) -> usize {
        self.count
    }

    /// Descriptors the current batch can still take.
    pub fn free_descriptors(&self) -> usize {
        self.config.max_descriptors - self.count
    }

    /// Events free to hand out.
    pub fn free_events(&self) -> usize {
        self.events.available()
    }

    /// The configuration (after clamping to at least 1 slot, descriptor and chunk).
    pub fn config(&self) -> &UnpackConfig {
        &self.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> UnpackStats {
        self.stats
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The persistent stream every launch goes to.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }
}

impl Drop for Unpacker {
    fn drop(&mut self) {
        // Nothing may read the staging memory or run the module's code after they are freed.
        match self.stream.synchronize() {
            Ok(()) => {
                // SAFETY: the stream drained, so no launch reads these any more; each is dropped
                // once, here, and `self` is never used again.
                unsafe {
                    ManuallyDrop::drop(&mut self.slots);
                    ManuallyDrop::drop(&mut self.host_scratch);
                    ManuallyDrop::drop(&mut self.kernels);
                }
            }
            Err(e) => tracing::error!(
                "dropping an unpacker whose launches may still run ({e}): leaking its staging \
                 memory and kernels rather than freeing what the GPU may read"
            ),
        }
    }
}

/// Reads the 24-byte `unpackNetDeviceHandle {meta, bounce_buf, head}` that a TCPX receive
/// comm's device handle points at (`NetDeviceHandle::handle`, a DEVICE address). One bounded
/// device-to-host copy on a private stream: call it once per comm, after `accept`.
///
/// # Errors
///
/// A failing copy (e.g. `handle` is not device memory), [`CudaError::WaitTimeout`].
pub fn read_unpack_handle(
    gpu: &Arc<Gpu>,
    handle: *const c_void,
) -> Result<UnpackNetDeviceHandle, CudaError> {
    let mut bytes = [0u8; core::mem::size_of::<UnpackNetDeviceHandle>()];
    device_to_host(gpu, handle as CUdeviceptr, &mut bytes)?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    Ok(UnpackNetDeviceHandle {
        meta: word(0) as usize as *mut NetUnpackMeta,
        bounce_buf: word(1) as usize as *mut c_void,
        head: word(2),
    })
}

/// The host address of pinned, device-mapped host memory given its device address (e.g. the
/// `meta` pointer of an [`UnpackNetDeviceHandle`]), asked from the driver
/// (`CU_POINTER_ATTRIBUTE_HOST_POINTER`) rather than assumed equal under UVA.
///
/// # Errors
///
/// A failing `cuPointerGetAttribute` (e.g. the address is not mapped host memory).
pub fn mapped_host_ptr(gpu: &Gpu, device_ptr: *const c_void) -> Result<*mut c_void, CudaError> {
    gpu.make_current()?;
    let mut host: *mut c_void = core::ptr::null_mut();
    // SAFETY: the out-pointer is valid for one pointer, the attribute's type; the driver
    // checks the address.
    check("cuPointerGetAttribute", unsafe {
        sys::cuPointerGetAttribute(
            (&mut host as *mut *mut c_void).cast::<c_void>(),
            CUpointer_attribute::CU_POINTER_ATTRIBUTE_HOST_POINTER,
            device_ptr as CUdeviceptr,
        )
    })?;
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::HostBuffer;

    #[test]
    fn routes() {
        assert_eq!(DescPath::Auto.route(1), Route::Inline);
        assert_eq!(DescPath::Auto.route(INLINE_MAX), Route::Inline);
        assert_eq!(DescPath::Auto.route(INLINE_MAX + 1), Route::Mapped);
        assert_eq!(DescPath::AutoCopy.route(128), Route::Inline);
        assert_eq!(DescPath::AutoCopy.route(16_384), Route::Copy);
        assert_eq!(DescPath::Mapped.route(1), Route::Mapped);
        assert_eq!(DescPath::Copy.route(1), Route::Copy);
        assert!(!DescPath::Auto.needs_device_staging());
        assert!(DescPath::Copy.needs_device_staging());
    }

    /// A CUDA region stand-in: only its address, length and kind are used.
    struct FakeCuda;
    // SAFETY: never dereferenced; the test only builds DeviceDst values from it.
    unsafe impl Region for FakeCuda {
        fn as_ptr(&self) -> *mut u8 {
            0x7000_0000_1000usize as *mut u8
        }
        fn len(&self) -> usize {
            1 << 20
        }
        fn kind(&self) -> MemKind {
            MemKind::Cuda
        }
    }

    #[test]
    fn destinations_are_checked() {
        let d = DeviceDst::in_region(&FakeCuda, 4096, 8192).unwrap();
        assert_eq!(
            (d.ptr(), d.len(), d.is_empty()),
            (0x7000_0000_2000, 8192, false)
        );
        assert!(DeviceDst::in_region(&FakeCuda, 1 << 20, 0)
            .unwrap()
            .is_empty());
        assert_eq!(
            DeviceDst::in_region(&FakeCuda, (1 << 20) - 1, 2),
            Err(UnpackError::DstOutOfRegion {
                offset: (1 << 20) - 1,
                len: 2,
                region_len: 1 << 20
            })
        );
        assert!(matches!(
            DeviceDst::in_region(&FakeCuda, usize::MAX, 2),
            Err(UnpackError::DstOutOfRegion { .. })
        ));
        let host = HostBuffer::new(4096).unwrap();
        assert_eq!(
            DeviceDst::in_region(&host, 0, 16),
            Err(UnpackError::NotDeviceMemory)
        );
    }

    #[test]
    fn default_config() {
        let c = UnpackConfig::default();
        assert_eq!(c.desc_path, DescPath::Auto);
        assert_eq!(c.imp, UnpackImpl::Kernel);
        assert!(
            c.max_descriptors >= 16_384,
            "a 64 MiB batch of 4 KiB pages fits"
        );
        assert!(c.staging_slots >= 2);
    }
}
