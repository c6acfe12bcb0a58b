//! The GPU side of a TCPX receive: unpacking fragments from the bounce pool (feature `cuda`).
//!
//! On TCPX a received chunk lands in the GPU's bounce pool as scattered 4 KiB pages; the plugin
//! publishes the fragment list (`loadMeta`, see [`tcpx_core::unpack`]) and this module copies the
//! fragments into the chunk's destination with one kernel launch per *batch* of chunks (many
//! chunks of many comms), on a persistent stream, signalling completion through pooled events.
//!
//! Layers, as in cudarc (whose raw `sys` bindings load `libcuda.so` at run time; no CUDA
//! runtime is linked):
//!
//! | layer | items |
//! |---|---|
//! | checked calls | every driver call goes through one `check(name, result)` → [`CudaError::Driver`] |
//! | RAII types | [`Gpu`] (primary context), [`CudaBuffer`] (device memory, a [`Region`](crate::net::Region)), [`Stream`], [`EventPool`] |
//! | descriptors | [`UnpackDesc`] / [`InlineBatch`], the `#[repr(C)]` mirrors of `cuda/unpack.h`; pure Rust, tested without a GPU |
//! | the unpacker | [`Unpacker`]: validate → stage descriptors → one launch → an [`EventId`] |
//! | C ABI | `tcpx_unpack_launch` (declared in `cuda/unpack.h`) for the C++ drop-in |
//!
//! The kernels (`cuda/unpack.cu`) are compiled by `build.rs` into a fatbin (sm_90 SASS + compute_90
//! PTX), embedded in the library and loaded with `cuModuleLoadData`.
//!
//! Invariants:
//! * No driver call is made before [`driver`] found a CUDA ≥ 13.0 `libcuda.so`; without one every
//!   constructor returns [`CudaError::NoDriver`] (or [`CudaError::DriverTooOld`]) instead of the
//!   panic cudarc would raise.
//! * On the receive hot path ([`Unpacker::push_chunk`], [`Unpacker::launch`],
//!   [`Unpacker::event_complete`], [`Unpacker::release_event`]) nothing allocates and nothing
//!   waits for the GPU: staging memory and events are allocated once, and running out of either
//!   is a typed error.
//! * Fragments are validated ([`tcpx_core::unpack::validate_fragments`]) before anything is
//!   staged; a rejected chunk leaves the batch as it was.
//! * Staging memory is never rewritten while a launch may still read it: each staging slot
//!   remembers the event of the last launch that read it.
//! * Every wait for the GPU has a deadline: [`Stream::synchronize`], [`EventPool::synchronize`]
//!   and [`StreamTimer::elapsed_ms`] poll the driver's query ([`crate::wait`]) and end with
//!   [`CudaError::WaitTimeout`] after [`WAIT_TIMEOUT`]. They wait only for this crate's own
//!   work, never for the whole context (no `cuCtxSynchronize`), so another library's persistent
//!   kernel on the same GPU cannot hold them up. The one exception is a device → host copy into
//!   page-locked memory that outlives its deadline: the caller's slice is still being written,
//!   so [`CudaBuffer::copy_to_host`] waits for it to end before it returns the timeout.
//! * Memory the GPU may still read is never freed after a wait for it failed: the
//!   [`Unpacker`] leaks its staging memory and module instead (with an error in the log).
//!
//! # Example
//!
//! ```no_run
//! use tcpx::cuda::{CudaBuffer, DeviceDst, Gpu, UnpackConfig, Unpacker};
//! use tcpx::core::unpack::LoadMeta;
//!
//! let gpu = Gpu::new(0)?;
//! let pool = CudaBuffer::new(&gpu, 1 << 20)?; // stands in for the bounce pool
//! let dst = CudaBuffer::new(&gpu, 8192)?;
//! let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default())?;
//!
//! // Two pages of an 8 KiB chunk that landed in reverse order.
//! let frags = [
//!     LoadMeta { src_off: 8192, len: 4096, dst_off: 0 },
//!     LoadMeta { src_off: 0, len: 4096, dst_off: 4096 },
//! ];
//! let dst_range = DeviceDst::in_region(&dst, 0, 8192)?;
//! unpacker.push_chunk(&frags, pool.device_ptr(), pool.len() as u64, dst_range)?;
//! let event = unpacker.launch()?.expect("one chunk was pushed");
//! while !unpacker.event_complete(event)? {
//!     std::hint::spin_loop();
//! }
//! unpacker.release_event(event)?; // once per chunk of the batch
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use core::str::FromStr;
use std::time::Duration;

use tcpx_core::unpack::FragmentError;
use tcpx_core::window::EventId;

mod capi;
mod desc;
mod driver;
mod memory;
mod meta;
mod module;
mod stream;
mod unpack;

pub use capi::{
    tcpx_unpack_launch, TCPX_UNPACK_ERR_CUDA, TCPX_UNPACK_ERR_INVALID, TCPX_UNPACK_ERR_NO_CONTEXT,
    TCPX_UNPACK_ERR_NO_DRIVER, TCPX_UNPACK_ERR_PANIC, TCPX_UNPACK_OK,
};
pub use cudarc::driver::sys::CUresult;
pub use desc::{
    grid_size, pieces_needed, vector_width, InlineBatch, UnpackDesc, BLOCK_THREADS, INLINE_MAX,
    PIECE_BYTES,
};
pub use driver::{driver, Gpu};
pub use memory::CudaBuffer;
pub use meta::{QueueError, UnpackQueueView};
pub use stream::{EventPool, Stream, StreamTimer};
pub use unpack::{
    mapped_host_ptr, read_unpack_handle, DescPath, DeviceDst, UnpackConfig, UnpackStats, Unpacker,
};

/// How long this crate waits for one of its own GPU operations: a host copy, a fill, an
/// unpack batch (microseconds to milliseconds when the GPU runs them).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A CUDA driver failure, or a misuse of a CUDA resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CudaError {
    /// `libcuda.so` could not be loaded: this machine has no NVIDIA driver.
    NoDriver,
    /// The driver is older than CUDA 13.0, the API version these bindings load.
    DriverTooOld {
        /// `cuDriverGetVersion`, e.g. 12040 for 12.4.
        version: i32,
    },
    /// `libcuda.so` reports CUDA 13.0 or newer but lacks a symbol the 13.0 bindings load.
    DriverIncomplete {
        /// `cuDriverGetVersion`.
        version: i32,
    },
    /// No GPU with this ordinal.
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// GPUs the driver sees.
        count: usize,
    },
    /// A driver call returned an error.
    Driver {
        /// The driver function, e.g. `"cuLaunchKernel"`.
        call: &'static str,
        /// What it returned.
        result: CUresult,
    },
    /// A host ↔ device copy outside a buffer.
    OutOfBounds {
        /// Offset into the buffer.
        offset: usize,
        /// Bytes to copy.
        len: usize,
        /// The buffer's length.
        buf_len: usize,
    },
    /// An allocation whose size overflows.
    TooLarge {
        /// Bytes asked for.
        len: usize,
    },
    /// This crate's own GPU work (a copy, an unpack) did not finish within its bound
    /// ([`WAIT_TIMEOUT`]): the GPU is not running it (wedged, or queued behind other work).
    WaitTimeout {
        /// The query that was polled, e.g. `"cuStreamQuery"`.
        call: &'static str,
        /// How long it was polled.
        after: Duration,
    },
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CudaError::NoDriver => write!(
                f,
                "no CUDA driver: libcuda.so could not be loaded (is this a GPU machine?)"
            ),
            CudaError::DriverTooOld { version } => write!(
                f,
                "the CUDA driver supports CUDA {}.{}; tcpx needs 13.0 or newer",
                version / 1000,
                version % 1000 / 10
            ),
            CudaError::DriverIncomplete { version } => write!(
                f,
                "the CUDA driver (CUDA {}.{}) lacks a function of the CUDA 13.0 driver API",
                version / 1000,
                version % 1000 / 10
            ),
            CudaError::NoDevice { ordinal, count } => {
                write!(f, "no GPU {ordinal}: the driver sees {count}")
            }
            CudaError::Driver { call, result } => write!(f, "{call} failed: {result:?}"),
            CudaError::OutOfBounds {
                offset,
                len,
                buf_len,
            } => write!(
                f,
                "copy of [{offset}, +{len}) is outside the {buf_len}-byte device buffer"
            ),
            CudaError::TooLarge { len } => write!(f, "cannot allocate {len} bytes"),
            CudaError::WaitTimeout { call, after } => write!(
                f,
                "GPU work did not finish within {after:?} ({call} still not ready): is the GPU \
                 wedged, or busy with another library's kernel?"
            ),
        }
    }
}

impl std::error::Error for CudaError {}

/// Why the unpack path refused a chunk, a launch or an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UnpackError {
    /// The chunk's fragment list is corrupt or out of range; nothing was staged.
    Fragment(FragmentError),
    /// The chunk's descriptors do not fit into what is left of the batch's staging area
    /// ([`UnpackConfig::max_descriptors`]); launch the batch, then push the chunk again.
    StagingFull {
        /// Descriptors the chunk needs.
        needed: usize,
        /// Descriptors still free in this batch.
        free: usize,
    },
    /// The batch already holds [`UnpackConfig::max_chunks`] chunks; launch it first.
    TooManyChunks {
        /// The limit.
        max: usize,
    },
    /// The next staging slot is still read by an earlier launch that has not completed (all
    /// [`UnpackConfig::staging_slots`] are in flight); retry after an event completed.
    StagingBusy,
    /// Every event of the pool is in use; release events of completed launches first.
    NoFreeEvent {
        /// Events in the pool.
        capacity: usize,
    },
    /// The event is not one handed out by this pool, or it was already released.
    UnknownEvent {
        /// The event.
        event: EventId,
    },
    /// The destination region is host memory; the kernel writes device memory only.
    NotDeviceMemory,
    /// The destination range does not fit in its region.
    DstOutOfRegion {
        /// Offset in the region.
        offset: usize,
        /// Length of the range.
        len: usize,
        /// The region's length.
        region_len: usize,
    },
    /// `bounce_buf + bounce_len` (or a destination's end) overflows the address space.
    AddressOverflow,
    /// [`UnpackImpl::Host`] needs a host scratch buffer, and the unpacker was created without
    /// one (set [`UnpackConfig::host_scratch_bytes`]).
    NoHostScratch,
    /// A CUDA call failed. After a failed launch the batch is discarded.
    Cuda(CudaError),
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            UnpackError::Fragment(e) => write!(f, "chunk rejected before unpack: {e}"),
            UnpackError::StagingFull { needed, free } => write!(
                f,
                "the chunk needs {needed} unpack descriptors, the batch has {free} left"
            ),
            UnpackError::TooManyChunks { max } => {
                write!(f, "the unpack batch already holds {max} chunks")
            }
            UnpackError::StagingBusy => write!(
                f,
                "every unpack staging slot is still read by a launch in flight"
            ),
            UnpackError::NoFreeEvent { capacity } => {
                write!(f, "all {capacity} unpack events are in use")
            }
            UnpackError::UnknownEvent { event } => {
                write!(f, "{event} is not in use in this event pool")
            }
            UnpackError::NotDeviceMemory => {
                write!(
                    f,
                    "the unpack destination is host memory, not device memory"
                )
            }
            UnpackError::DstOutOfRegion {
                offset,
                len,
                region_len,
            } => write!(
                f,
                "destination [{offset}, +{len}) is outside the {region_len}-byte region"
            ),
            UnpackError::AddressOverflow => write!(f, "a device address range overflows"),
            UnpackError::NoHostScratch => write!(
                f,
                "the host unpack variant needs UnpackConfig::host_scratch_bytes > 0"
            ),
            UnpackError::Cuda(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for UnpackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UnpackError::Fragment(e) => Some(e),
            UnpackError::Cuda(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CudaError> for UnpackError {
    fn from(e: CudaError) -> Self {
        UnpackError::Cuda(e)
    }
}

impl From<FragmentError> for UnpackError {
    fn from(e: FragmentError) -> Self {
        UnpackError::Fragment(e)
    }
}

/// The environment variable that picks the unpack implementation (the C++ tree's name).
pub const UNPACK_IMPL_ENV: &str = "UCCL_TCPX_UNPACK_IMPL";

/// How received fragments are moved out of the bounce pool: the ablation knob
/// `UCCL_TCPX_UNPACK_IMPL` = `kernel` (default) | `d2d` | `host` | `none`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum UnpackImpl {
    /// One kernel launch per batch (the fast path).
    #[default]
    Kernel,
    /// One `cuMemcpyDtoDAsync` per descriptor (≤ 4 KiB piece of a fragment) on the stream.
    D2d,
    /// Through pinned host memory: device → host → device copies, synchronous (the launch
    /// returns after the copies finished).
    Host,
    /// Copies nothing: only the event is recorded. The destination is NOT written; for
    /// measuring everything but the unpack.
    None,
}

impl UnpackImpl {
    /// The value as `UCCL_TCPX_UNPACK_IMPL` spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            UnpackImpl::Kernel => "kernel",
            UnpackImpl::D2d => "d2d",
            UnpackImpl::Host => "host",
            UnpackImpl::None => "none",
        }
    }

    /// Reads [`UNPACK_IMPL_ENV`]; unset or empty means [`UnpackImpl::Kernel`].
    ///
    /// # Errors
    ///
    /// The variable is set to something else than the four names.
    pub fn from_env() -> Result<Self, ParseUnpackImplError> {
        match std::env::var(UNPACK_IMPL_ENV) {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(UnpackImpl::Kernel),
        }
    }
}

impl fmt::Display for UnpackImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value of `UCCL_TCPX_UNPACK_IMPL` that is not `kernel`, `d2d`, `host` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParseUnpackImplError;

impl fmt::Display for ParseUnpackImplError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown unpack implementation (expected kernel, d2d, host or none)"
        )
    }
}

impl std::error::Error for ParseUnpackImplError {}

impl FromStr for UnpackImpl {
    type Err = ParseUnpackImplError;

    /// Case-insensitive; surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        [
            UnpackImpl::Kernel,
            UnpackImpl::D2d,
            UnpackImpl::Host,
            UnpackImpl::None,
        ]
        .into_iter()
        .find(|i| i.as_str().eq_ignore_ascii_case(s))
        .ok_or(ParseUnpackImplError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpack_impl_parses_and_prints() {
        for (s, i) in [
            ("kernel", UnpackImpl::Kernel),
            ("D2D", UnpackImpl::D2d),
            (" host ", UnpackImpl::Host),
            ("none", UnpackImpl::None),
        ] {
            assert_eq!(s.parse::<UnpackImpl>(), Ok(i));
            assert_eq!(i.to_string().parse::<UnpackImpl>(), Ok(i));
        }
        assert_eq!("".parse::<UnpackImpl>(), Err(ParseUnpackImplError));
        assert_eq!("kernels".parse::<UnpackImpl>(), Err(ParseUnpackImplError));
        assert_eq!(UnpackImpl::default(), UnpackImpl::Kernel);
    }

    #[test]
    fn errors_display() {
        let texts = [
            CudaError::NoDriver.to_string(),
            CudaError::DriverTooOld { version: 12040 }.to_string(),
            CudaError::Driver {
                call: "cuLaunchKernel",
                result: CUresult::CUDA_ERROR_INVALID_VALUE,
            }
            .to_string(),
            UnpackError::StagingFull {
                needed: 10,
                free: 3,
            }
            .to_string(),
            UnpackError::from(FragmentError::Empty { index: 2 }).to_string(),
        ];
        assert!(texts[0].contains("libcuda.so"));
        assert!(texts[1].contains("CUDA 12.4"));
        assert_eq!(texts[2], "cuLaunchKernel failed: CUDA_ERROR_INVALID_VALUE");
        assert_eq!(
            texts[3],
            "the chunk needs 10 unpack descriptors, the batch has 3 left"
        );
        assert_eq!(
            texts[4],
            "chunk rejected before unpack: fragment 2 is empty"
        );
    }
}
