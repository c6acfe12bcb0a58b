//! CUDA mode (feature `cuda`): tcpx-sim with TCPX's device-side contract for real, so the
//! engine's unpack kernel and NCCL's own unpack path run against it on a GPU machine.
//!
//! | piece | what it is | module |
//! |---|---|---|
//! | device handle | 24 B `{meta, bounce_buf, head = u64::MAX}` in device memory (`cuMemAlloc`), its device address in `NetDeviceHandle::handle` | [`queue`] |
//! | metadata | the comm's `netUnpackMeta` in pinned, device-mapped memory (`cuMemHostAlloc(DEVICEMAP \| PORTABLE)`) | [`queue`] |
//! | bounce pool | one per GPU per process, shared by its recv comms (`TCPX_SIM_BOUNCE_BYTES`, default 512 MiB); device memory, or pinned device-mapped host memory with `TCPX_SIM_BOUNCE_MEM=host`; pages handed out FIFO | [`pool`], [`crate::pages`] |
//! | CUDA receive | chunks read into pinned staging by the helpers and scattered as shuffled 4 KiB pages into the pool by a kernel (host pool: read straight into the pages, no GPU work); fragments in `mem[slot]`, `cnt[slot]` last; the irecv buffer is never written — the driver must unpack | [`queue`], [`stager`] |
//! | irecvConsumed | the receive's pages are poisoned (`0xdb`; kernel, or CPU for a host pool) and freed; a pool without free pages makes receives wait (WARN after 10 s) | [`queue`], [`crate::comm`] |
//! | CUDA send | device→host copy into pinned staging, then the socket (TCPX's zero-copy devmem TX, emulated) | [`stager`] |
//! | regMr(CUDA) | TCPX's checks (`NCCL_USE_DMA_BUF`, 4096 alignment), then: both ends of the range are device memory of one GPU | [`driver::device_of`] |
//! | host buffers | unchanged: host sends/receives move bytes directly, `cnt = 0` | [`crate::comm`] |
//!
//! **Which GPU.** TCPX uses the calling thread's current device (`cudaGetDevice`) in
//! listen/connect/accept/regMr and that device's primary context. The sim takes the device of
//! the current context of the thread that completes `accept` (`cuCtxGetCurrent` +
//! `cuCtxGetDevice`) for the comm's pool and metadata; a thread without a current context gets
//! GPU 0, as the CUDA runtime would, with an INFO line. All work runs in **primary** contexts
//! (retained once per GPU, kept for the process). A CUDA registration belongs to the GPU that
//! owns its memory (`cuPointerGetAttribute`); sends copy in that GPU's context.
//!
//! **Errors.** Every driver call is checked; a failure inside a plugin call is a WARN and
//! `ncclUnhandledCudaError` (1); inside a helper thread it fails the comm's next `test` the same
//! way. Without libcuda or a GPU, CUDA mode is not entered (host mode with an INFO), unless
//! `TCPX_SIM_CUDA=1`, which makes `init` fail.
//!
//! ```no_run
//! # fn demo(cfg: &tcpx_sim::config::Config, log: &tcpx_sim::log::Logger)
//! #     -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::bounce::DeviceMemory;
//! let mem = tcpx_sim::cuda::CudaMemory::open(cfg, log)?;
//! assert_eq!(mem.mode(), "cuda");
//! let queue = mem.new_unpack_queue(log)?; // on the calling thread's GPU
//! assert!(!queue.device_handle().is_null());
//! # Ok(()) }
//! ```

pub mod driver;
pub mod pool;
pub mod queue;
pub mod stager;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tcpx::net::abi::log_subsys;

use crate::bounce::{CudaRegistration, DeviceIo, DeviceMemory, Stager, UnpackQueue};
use crate::config::{BounceMem, Config};
use crate::error::SimError;
use crate::log::{Call, Logger};
use pool::GpuPool;
use queue::CudaUnpackQueue;
use stager::CudaStager;

/// Helper-thread I/O of a send comm: device→host staging, set up on the GPU that was current
/// at `connect` (chunks of another GPU's memory move the staging there).
#[derive(Clone, Copy, Debug)]
pub struct CudaSendIo {
    device: i32,
}

impl DeviceIo for CudaSendIo {
    fn stager(&self) -> Result<Box<dyn Stager>, SimError> {
        Ok(Box::new(CudaStager::new(None, self.device)?))
    }
}

/// The CUDA-mode backend.
#[derive(Debug)]
pub struct CudaMemory {
    bounce_bytes: usize,
    bounce_mem: BounceMem,
    comms: AtomicU64,
}

impl CudaMemory {
    /// Opens the driver (libcuda, `cuInit`, at least one GPU); fails with
    /// [`SimError::CudaUnavailable`] otherwise.
    pub fn open(cfg: &Config, log: &Logger) -> Result<CudaMemory, SimError> {
        let n = driver::open()?;
        log.info(
            log_subsys::INIT | log_subsys::NET,
            Call::Init,
            format_args!(
                "CUDA mode: {n} GPUs; each GPU's bounce pool is {} MiB (TCPX_SIM_BOUNCE_BYTES) of \
                 {} memory (TCPX_SIM_BOUNCE_MEM), created by its first accept",
                cfg.bounce_bytes >> 20,
                match cfg.bounce_mem {
                    BounceMem::Device => "device",
                    BounceMem::Host => "pinned host",
                }
            ),
        );
        Ok(CudaMemory {
            bounce_bytes: cfg.bounce_bytes,
            bounce_mem: cfg.bounce_mem,
            comms: AtomicU64::new(0),
        })
    }
}

impl DeviceMemory for CudaMemory {
    fn mode(&self) -> &'static str {
        "cuda"
    }

    fn register_cuda(
        &self,
        addr: usize,
        size: usize,
        log: &Logger,
    ) -> Result<CudaRegistration, SimError> {
        let device = driver::device_of(addr, size.max(1))?;
        log.info(
            log_subsys::NET,
            Call::RegMr,
            format_args!("CUDA buffer {addr:#x}+{size} on GPU {device}"),
        );
        Ok(CudaRegistration { addr, size, device })
    }

    fn new_unpack_queue(&self, log: &Logger) -> Result<Box<dyn UnpackQueue>, SimError> {
        let device = match driver::current_device()? {
            Some(d) => d,
            None => {
                log.info(
                    log_subsys::INIT | log_subsys::NET,
                    Call::Accept,
                    format_args!(
                        "no current CUDA context on the accepting thread (TCPX uses \
                         cudaGetDevice there); using GPU 0's primary context, as the CUDA \
                         runtime would"
                    ),
                );
                0
            }
        };
        let pool = GpuPool::for_device(device, self.bounce_bytes, self.bounce_mem, log)?;
        let seed = self.comms.fetch_add(1, Ordering::Relaxed);
        let q = CudaUnpackQueue::new(pool, seed)?;
        log.info(
            log_subsys::NET,
            Call::Accept,
            format_args!(
                "recv comm on GPU {device}: device handle {:#x}",
                q.device_handle() as usize
            ),
        );
        Ok(Box::new(q))
    }

    fn send_io(&self) -> Result<Option<Arc<dyn DeviceIo>>, SimError> {
        let device = driver::current_device()?.unwrap_or(0);
        Ok(Some(Arc::new(CudaSendIo { device })))
    }
}
