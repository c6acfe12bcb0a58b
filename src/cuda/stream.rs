//! A persistent [`Stream`] and a fixed [`EventPool`]: how the receive path learns, without
//! waiting, that an unpack has finished.
//!
//! The C++ tree created a stream per chunk and synchronised after every launch (~4 ms per
//! chunk). Here one non-blocking stream lives as long as the [`Unpacker`](super::Unpacker) and
//! completions are observed by polling pooled events (`cuEventQuery`, no timing, no blocking).
//!
//! Invariants:
//! * No wait here blocks in the driver: [`Stream::synchronize`], [`EventPool::synchronize`] and
//!   [`StreamTimer::elapsed_ms`] poll the query for at most [`WAIT_TIMEOUT`].
//! * The pool never allocates after [`EventPool::new`]: a free list of indices over a fixed
//!   array of events.
//! * An [`EventId`] handed out by [`EventPool::record`] stays valid until it was released as
//!   many times as the `refs` it was recorded with (one per chunk of a batch); only then can the
//!   event be recorded again.
//!
//! ```no_run
//! use tcpx::cuda::{EventPool, Gpu, Stream};
//! let gpu = Gpu::new(0)?;
//! let stream = Stream::new(&gpu)?;
//! let mut events = EventPool::new(&gpu, 4)?;
//! let e = events.record(&stream, 1)?; // after whatever was enqueued on the stream
//! while !events.query(e)? {
//!     std::hint::spin_loop();
//! }
//! events.release(e)?;
//! assert_eq!(events.available(), 4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use cudarc::driver::sys::{self, CUevent, CUevent_flags, CUstream, CUstream_flags};
use tcpx_core::window::EventId;

use super::driver::{check, ready, Gpu};
use super::memory::CudaBuffer;
use super::{CudaError, UnpackError, WAIT_TIMEOUT};

/// A non-blocking CUDA stream (it does not synchronise with the legacy default stream),
/// destroyed on drop.
#[derive(Debug)]
pub struct Stream {
    gpu: Arc<Gpu>,
    raw: CUstream,
}

// SAFETY: a CUstream handle may be used from any thread that has its context current (every
// method makes it current).
unsafe impl Send for Stream {}
// SAFETY: the driver's stream operations are thread-safe; &Stream exposes only the handle.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a stream with `CU_STREAM_NON_BLOCKING`.
    ///
    /// # Errors
    ///
    /// A failing `cuStreamCreate`.
    pub fn new(gpu: &Arc<Gpu>) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let mut raw: CUstream = core::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(
                &mut raw,
                CUstream_flags::CU_STREAM_NON_BLOCKING as core::ffi::c_uint,
            )
        })?;
        Ok(Self {
            gpu: Arc::clone(gpu),
            raw,
        })
    }

    /// The raw handle (for `tcpx_unpack_launch` or other driver calls).
    pub fn as_raw(&self) -> CUstream {
        self.raw
    }

    /// The GPU the stream belongs to.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Waits until everything enqueued on the stream has finished, for at most
    /// [`WAIT_TIMEOUT`] (polling `cuStreamQuery`). Not for the hot path.
    ///
    /// # Errors
    ///
    /// [`CudaError::WaitTimeout`], or a failing `cuStreamQuery`, including an asynchronous
    /// fault of enqueued work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        bounded_wait("cuStreamQuery", || self.query_current())
    }

    /// Whether everything enqueued on the stream has finished. Never blocks.
    ///
    /// # Errors
    ///
    /// A failing `cuStreamQuery`, including an asynchronous fault of enqueued work.
    pub fn query(&self) -> Result<bool, CudaError> {
        self.gpu.make_current()?;
        self.query_current()
    }

    /// `cuStreamQuery`; the caller made the context current.
    fn query_current(&self) -> Result<bool, CudaError> {
        // SAFETY: the stream is alive.
        ready("cuStreamQuery", unsafe { sys::cuStreamQuery(self.raw) })
    }
}

/// Polls `query` (a stream or event query of this crate's own work) until it is done, for at
/// most [`WAIT_TIMEOUT`] ([`crate::wait::poll_until`]).
pub(crate) fn bounded_wait(
    call: &'static str,
    query: impl FnMut() -> Result<bool, CudaError>,
) -> Result<(), CudaError> {
    crate::wait::poll_until(WAIT_TIMEOUT, query, || CudaError::WaitTimeout {
        call,
        after: WAIT_TIMEOUT,
    })
}

impl Stream {
    /// Enqueues a copy of `len` bytes from `src` at `src_off` to `dst` at `dst_off`
    /// (`cuMemcpyDtoDAsync`): the device-to-device baseline of `tcpx-bench unpack`.
    ///
    /// # Errors
    ///
    /// [`CudaError::OutOfBounds`] when a range does not fit its buffer; a failing copy.
    pub fn copy(
        &self,
        dst: &CudaBuffer,
        dst_off: usize,
        src: &CudaBuffer,
        src_off: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let fits = |buf: &CudaBuffer, off: usize| match off.checked_add(len) {
            Some(end) if end <= buf.len() => Ok(buf.device_ptr() + off as u64),
            _ => Err(CudaError::OutOfBounds {
                offset: off,
                len,
                buf_len: buf.len(),
            }),
        };
        let (to, from) = (fits(dst, dst_off)?, fits(src, src_off)?);
        self.gpu.make_current()?;
        // SAFETY: both ranges are inside live device allocations (checked); the stream is
        // alive; the context is current.
        check("cuMemcpyDtoDAsync", unsafe {
            sys::cuMemcpyDtoDAsync_v2(to, from, len, self.raw)
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: created in `new`, destroyed once; pending work still completes (the driver
        // releases the stream's resources when it is done).
        let _ = unsafe { sys::cuStreamDestroy_v2(self.raw) };
    }
}

/// A fixed set of events (created with `CU_EVENT_DISABLE_TIMING`), handed out as [`EventId`]s.
#[derive(Debug)]
pub struct EventPool {
    gpu: Arc<Gpu>,
    events: Box<[CUevent]>,
    /// Releases still expected per event; 0 = free.
    refs: Box<[u32]>,
    /// Indices of free events; `free[..free_len]` are valid.
    free: Box<[u32]>,
    free_len: usize,
}

// SAFETY: CUevent handles may be used from any thread with the context current; the pool is
// mutated only through &mut.
unsafe impl Send for EventPool {}

impl EventPool {
    /// Creates `capacity` events (at least 1).
    ///
    /// # Errors
    ///
    /// A failing `cuEventCreate`; the events created so far are destroyed.
    pub fn new(gpu: &Arc<Gpu>, capacity: u32) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let capacity = capacity.max(1);
        let mut pool = Self {
            gpu: Arc::clone(gpu),
            events: Box::default(),
            refs: vec![0; capacity as usize].into_boxed_slice(),
            free: (0..capacity).rev().collect(),
            free_len: capacity as usize,
        };
        let mut events = Vec::with_capacity(capacity as usize);
        for _ in 0..capacity {
            let mut ev: CUevent = core::ptr::null_mut();
            // SAFETY: valid out-pointer; the context is current.
            let rc = unsafe {
                sys::cuEventCreate(
                    &mut ev,
                    CUevent_flags::CU_EVENT_DISABLE_TIMING as core::ffi::c_uint,
                )
            };
            if let Err(e) = check("cuEventCreate", rc) {
                pool.events = events.into_boxed_slice();
                return Err(e);
            }
            events.push(ev);
        }
        pool.events = events.into_boxed_slice();
        Ok(pool)
    }

    /// Events in the pool.
    pub fn capacity(&self) -> usize {
        self.events.len()
    }

    /// Events free to record.
    pub fn available(&self) -> usize {
        self.free_len
    }

    /// Records a free event on `stream` (it completes when everything enqueued before it has)
    /// and hands it out; it returns to the pool after `refs` calls of
    /// [`release`](Self::release) (`refs` 0 counts as 1).
    ///
    /// # Errors
    ///
    /// [`UnpackError::NoFreeEvent`], or a failing `cuEventRecord` (the event stays free).
    pub fn record(&mut self, stream: &Stream, refs: u32) -> Result<EventId, UnpackError> {
        let top = self
            .free_len
            .checked_sub(1)
            .ok_or(UnpackError::NoFreeEvent {
                capacity: self.capacity(),
            })?;
        let index = self.free[top];
        let ev = self.events[index as usize];
        // SAFETY: the event and the stream are alive and belong to the same context; the
        // caller made the context current (Unpacker::launch does).
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(ev, stream.raw)
        })?;
        self.free_len = top;
        self.refs[index as usize] = refs.max(1);
        Ok(EventId(index))
    }

    /// Whether everything enqueued before event `id` was recorded has finished. Never blocks.
    ///
    /// # Errors
    ///
    /// [`UnpackError::UnknownEvent`] for an event not handed out (or already released); a
    /// failing `cuEventQuery`, which also reports an asynchronous fault of the work before it.
    #[inline]
    pub fn query(&self, id: EventId) -> Result<bool, UnpackError> {
        let ev = self.in_use(id)?;
        self.gpu.make_current()?;
        Ok(Self::query_raw(ev)?)
    }

    /// Waits until event `id` has completed, for at most [`WAIT_TIMEOUT`] (polling
    /// `cuEventQuery`). For tests and benchmarks, not the hot path.
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query), and [`CudaError::WaitTimeout`].
    pub fn synchronize(&self, id: EventId) -> Result<(), UnpackError> {
        let ev = self.in_use(id)?;
        self.gpu.make_current()?;
        Ok(bounded_wait("cuEventQuery", || Self::query_raw(ev))?)
    }

    /// Gives one reference of event `id` back; after the last one the event is free.
    ///
    /// # Errors
    ///
    /// [`UnpackError::UnknownEvent`] for an event not handed out (or released too often).
    pub fn release(&mut self, id: EventId) -> Result<(), UnpackError> {
        self.in_use(id)?;
        let index = id.0 as usize;
        self.refs[index] -= 1;
        if self.refs[index] == 0 {
            self.free[self.free_len] = id.0;
            self.free_len += 1;
        }
        Ok(())
    }

    fn in_use(&self, id: EventId) -> Result<CUevent, UnpackError> {
        match self.refs.get(id.0 as usize) {
            Some(&r) if r > 0 => Ok(self.events[id.0 as usize]),
            _ => Err(UnpackError::UnknownEvent { event: id }),
        }
    }

    /// The raw event of `id`, in use or not (the unpacker's staging guard: an event keeps the
    /// state of its last record until it is recorded again, later on the same stream).
    pub(crate) fn raw(&self, id: EventId) -> Option<CUevent> {
        self.events.get(id.0 as usize).copied()
    }

    /// `cuEventQuery`: done, not yet, or an error. The caller made the context current.
    #[inline]
    pub(crate) fn query_raw(ev: CUevent) -> Result<bool, CudaError> {
        // SAFETY: callers pass a live event (of a pool or a timer).
        ready("cuEventQuery", unsafe { sys::cuEventQuery(ev) })
    }
}

impl Drop for EventPool {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        for &ev in self.events.iter() {
            // SAFETY: created in `new`, destroyed once.
            let _ = unsafe { sys::cuEventDestroy_v2(ev) };
        }
    }
}

/// Two timing events around work enqueued on a stream: device time, for benchmarks.
#[derive(Debug)]
pub struct StreamTimer {
    gpu: Arc<Gpu>,
    start: CUevent,
    end: CUevent,
}

// SAFETY: event handles may be used from any thread with the context current.
unsafe impl Send for StreamTimer {}

impl StreamTimer {
    /// Creates the two events (with timing).
    ///
    /// # Errors
    ///
    /// A failing `cuEventCreate`.
    pub fn new(gpu: &Arc<Gpu>) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let mut timer = Self {
            gpu: Arc::clone(gpu),
            start: core::ptr::null_mut(),
            end: core::ptr::null_mut(),
        };
        for ev in [&mut timer.start, &mut timer.end] {
            // SAFETY: valid out-pointer; the context is current.
            check("cuEventCreate", unsafe {
                sys::cuEventCreate(ev, CUevent_flags::CU_EVENT_DEFAULT as core::ffi::c_uint)
            })?;
        }
        Ok(timer)
    }

    /// Records the start event on `stream`.
    ///
    /// # Errors
    ///
    /// A failing `cuEventRecord`.
    pub fn start(&self, stream: &Stream) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: live event and stream of the same context.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(self.start, stream.raw)
        })
    }

    /// Records the end event on `stream`.
    ///
    /// # Errors
    ///
    /// A failing `cuEventRecord`.
    pub fn stop(&self, stream: &Stream) -> Result<(), CudaError> {
        self.gpu.make_current()?;
        // SAFETY: live event and stream of the same context.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(self.end, stream.raw)
        })
    }

    /// Waits for the end event (at most [`WAIT_TIMEOUT`]) and returns the device time between
    /// the two, in milliseconds (resolution about 0.5 µs).
    ///
    /// # Errors
    ///
    /// [`CudaError::WaitTimeout`], a failing `cuEventQuery` / `cuEventElapsedTime`.
    pub fn elapsed_ms(&self) -> Result<f32, CudaError> {
        self.gpu.make_current()?;
        // The end event is alive (owned by self).
        bounded_wait("cuEventQuery", || EventPool::query_raw(self.end))?;
        let mut ms = 0f32;
        // SAFETY: valid out-pointer; both events were recorded and the end one completed.
        check("cuEventElapsedTime", unsafe {
            sys::cuEventElapsedTime_v2(&mut ms, self.start, self.end)
        })?;
        Ok(ms)
    }
}

impl Drop for StreamTimer {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        for ev in [self.start, self.end] {
            if !ev.is_null() {
                // SAFETY: created in `new`, destroyed once.
                let _ = unsafe { sys::cuEventDestroy_v2(ev) };
            }
        }
    }
}
