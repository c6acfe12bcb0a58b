//! A GPU's bounce pool: device memory that every CUDA receive on that GPU lands in, as scattered
//! 4 KiB pages, plus the two kernels that move bytes in and out of it.
//!
//! As on TCPX (one RX pool per GPU, shared by every comm of the GPU), there is **one pool per
//! GPU per process** (per [`BounceMem`]), shared by all recv comms accepted on that GPU;
//! `src_off` in the metadata is an offset into it and `bounce_buf` in every comm's device handle
//! is its base. It is created by the first CUDA-mode `accept` on the GPU (`TCPX_SIM_BOUNCE_BYTES`,
//! default 512 MiB) and freed when the last comm using it closes. Fresh memory is filled with the
//! poison byte, so a driver reading a page nobody wrote sees poison too.
//!
//! Where it lives (`TCPX_SIM_BOUNCE_MEM`, [`BounceMem`]):
//! * `device`: GPU memory (`cuMemAlloc`), filled by the scatter kernel and poisoned by the poison
//!   kernel below;
//! * `host`: pinned, device-mapped host memory (`cuMemHostAlloc(DEVICEMAP | PORTABLE)`);
//!   `bounce_buf` is its device address, helper threads receive into it and the CPU poisons it
//!   ([`GpuPool::poison_host`]) — no kernel, no stream: like TCPX's RX path (NIC DMA), the
//!   receive path then issues no GPU work that a resident NCCL kernel would have to let run.
//!
//! Pages are handed out by a [`PageAllocator`] behind a mutex (taken once per chunk in `test`
//! and once per `irecvConsumed`; never by the helpers).
//!
//! Kernels (`kernels.cu`, embedded as PTX and JIT-compiled into the pool's context):
//! * `tcpx_sim_scatter(src, pool, frags)`: block `b` copies fragment `b` of a staged piece from
//!   pinned host staging into the pool — the exact inverse of NCCL's unpack;
//! * `tcpx_sim_poison(pool, frags, pattern)`: block `b` overwrites fragment `b`'s page.
//!
//! ```no_run
//! # fn demo(log: &tcpx_sim::log::Logger) -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::cuda::pool::GpuPool;
//! let pool = GpuPool::for_device(0, 64 << 20, tcpx_sim::config::BounceMem::Device, log)?;
//! let mut pages = [0u32; 4];
//! assert!(pool.alloc(&mut pages)?);
//! pool.free(pages)?;
//! # Ok(()) }
//! ```

use core::ffi::{c_void, CStr};
use std::sync::{Arc, Mutex, Weak};

use tcpx::net::abi::log_subsys;

use super::driver::{self, Context, DeviceBuf, Function, Module, PinnedBuf, Stream};
use crate::config::BounceMem;
use crate::error::SimError;
use crate::log::{Call, Logger};
use crate::pages::{PageAllocator, PAGE};

/// The byte consumed pages (and never-written pool memory) are filled with.
pub const POISON: u8 = 0xdb;
/// Threads per block of both kernels (their `__launch_bounds__`).
const BLOCK: u32 = 256;

/// `kernels.ptx` with a NUL terminator, as `cuModuleLoadData` wants it.
const PTX: &str = concat!(include_str!("kernels.ptx"), "\0");

/// The pool's memory: GPU memory with its two kernels, or pinned, device-mapped host memory.
#[derive(Debug)]
enum Backing {
    Device {
        mem: DeviceBuf,
        scatter: Function,
        poison: Function,
        /// Keeps `scatter` and `poison` loaded; unloaded when the last comm (holding the `Arc`)
        /// is gone, so no launch can follow.
        _module: Module,
    },
    Host {
        mem: PinnedBuf,
    },
}

/// One GPU's bounce pool.
#[derive(Debug)]
pub struct GpuPool {
    ctx: Context,
    pages: Mutex<PageAllocator>,
    backing: Backing,
}

type PoolKey = (i32, BounceMem);

static POOLS: Mutex<Vec<(PoolKey, Weak<GpuPool>)>> = Mutex::new(Vec::new());

impl GpuPool {
    /// The live pool of `device` in memory `kind`, or a new one of `bytes` (a multiple of 4096,
    /// ≤ 4 GiB).
    pub fn for_device(
        device: i32,
        bytes: usize,
        kind: BounceMem,
        log: &Logger,
    ) -> Result<Arc<GpuPool>, SimError> {
        let mut pools = POOLS.lock().map_err(|_| SimError::Poisoned)?;
        pools.retain(|(_, w)| w.strong_count() > 0);
        if let Some(p) = pools
            .iter()
            .find(|(k, _)| *k == (device, kind))
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(p);
        }
        let ctx = driver::primary(device)?;
        let npages = u32::try_from(bytes / PAGE).map_err(|_| SimError::BadEnv {
            var: "TCPX_SIM_BOUNCE_BYTES",
            why: format!("{bytes} bytes is more than 4 GiB"),
        })?;
        let backing = match kind {
            BounceMem::Device => {
                let mem = DeviceBuf::new(ctx, npages as usize * PAGE)?;
                mem.fill(POISON)?;
                let ptx =
                    CStr::from_bytes_with_nul(PTX.as_bytes()).map_err(|_| SimError::Protocol {
                        why: "the embedded PTX is not a C string",
                    })?;
                let module = Module::load_ptx(ctx, ptx)?;
                Backing::Device {
                    scatter: module.function(c"tcpx_sim_scatter")?,
                    poison: module.function(c"tcpx_sim_poison")?,
                    _module: module,
                    mem,
                }
            }
            BounceMem::Host => {
                let mem = PinnedBuf::new(ctx, npages as usize * PAGE)?;
                // SAFETY: our fresh allocation of `len` bytes, not shared with anyone yet.
                unsafe { mem.host().write_bytes(POISON, mem.len()) };
                Backing::Host { mem }
            }
        };
        let pool = Arc::new(GpuPool {
            ctx,
            pages: Mutex::new(PageAllocator::new(npages, u64::from(device as u32))),
            backing,
        });
        pools.push(((device, kind), Arc::downgrade(&pool)));
        let what = match kind {
            BounceMem::Device => "device memory",
            BounceMem::Host => {
                "pinned, device-mapped host memory (TCPX_SIM_BOUNCE_MEM=host: receives issue \
                 no GPU work)"
            }
        };
        log.info(
            log_subsys::INIT | log_subsys::NET,
            Call::Accept,
            format_args!(
                "bounce pool of GPU {device}: {} MiB of {what} at {:#x} ({npages} pages of \
                 4 KiB), shared by this process's recv comms on the GPU",
                (npages as usize * PAGE) >> 20,
                pool.base()
            ),
        );
        Ok(pool)
    }

    /// The pool's context (its GPU's primary context).
    pub fn ctx(&self) -> Context {
        self.ctx
    }

    /// Where the pool lives.
    pub fn kind(&self) -> BounceMem {
        match self.backing {
            Backing::Device { .. } => BounceMem::Device,
            Backing::Host { .. } => BounceMem::Host,
        }
    }

    /// Device address of the pool (`bounce_buf`).
    pub fn base(&self) -> u64 {
        match &self.backing {
            Backing::Device { mem, .. } => mem.ptr(),
            Backing::Host { mem } => mem.dev(),
        }
    }

    /// A host pool's host address and length (None for a device pool).
    pub fn host_base(&self) -> Option<(*mut u8, usize)> {
        match &self.backing {
            Backing::Device { .. } => None,
            Backing::Host { mem } => Some((mem.host(), mem.len())),
        }
    }

    /// Pool size in bytes.
    pub fn len(&self) -> usize {
        match &self.backing {
            Backing::Device { mem, .. } => mem.len(),
            Backing::Host { mem } => mem.len(),
        }
    }

    /// Whether the pool is empty (never: at least one chunk's pages).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn kernels(&self) -> Result<(Function, Function), SimError> {
        match &self.backing {
            Backing::Device {
                scatter, poison, ..
            } => Ok((*scatter, *poison)),
            Backing::Host { .. } => Err(SimError::Protocol {
                why: "a kernel launch on a host bounce pool",
            }),
        }
    }

    /// Host pool: overwrites `pages` with the poison byte on the CPU (no GPU work).
    ///
    /// # Safety
    /// The caller owns `pages` (taken with [`GpuPool::alloc`], not yet freed) and no reader
    /// still uses them (the receive was consumed).
    pub unsafe fn poison_host(&self, pages: impl IntoIterator<Item = u32>) -> Result<(), SimError> {
        let (base, len) = self.host_base().ok_or(SimError::Protocol {
            why: "a CPU poison on a device bounce pool",
        })?;
        for p in pages {
            let at = p as usize * PAGE;
            if at + PAGE > len {
                return Err(SimError::PageAccounting {
                    why: crate::pages::PageError::OutOfRange { page: p },
                });
            }
            // SAFETY: the page is inside the pool's live host mapping (checked) and owned by the
            // caller with no reader left (this function's contract).
            unsafe { base.add(at).write_bytes(POISON, PAGE) };
        }
        Ok(())
    }

    /// Takes `out.len()` free pages (all or none); `Ok(false)` when too few are free.
    pub fn alloc(&self, out: &mut [u32]) -> Result<bool, SimError> {
        Ok(self
            .pages
            .lock()
            .map_err(|_| SimError::Poisoned)?
            .alloc_into(out))
    }

    /// Gives pages back (they are reused after every other free page).
    pub fn free(&self, pages: impl IntoIterator<Item = u32>) -> Result<(), SimError> {
        self.pages
            .lock()
            .map_err(|_| SimError::Poisoned)?
            .release(pages)
            .map_err(|why| SimError::PageAccounting { why })
    }

    /// Free pages now.
    pub fn free_pages(&self) -> Result<usize, SimError> {
        Ok(self
            .pages
            .lock()
            .map_err(|_| SimError::Poisoned)?
            .free_pages())
    }

    /// Queues the scatter of a staged piece: fragment `b` of the `nfrags` at `frags` (device
    /// address of `loadMeta`s) is copied from `src + b·4096` to `pool + src_off`.
    ///
    /// # Safety
    /// The pool's context is current on this thread and `stream` belongs to it; `src` is the
    /// device address of `nfrags · 4096` readable bytes and `frags` of `nfrags` fragments whose
    /// pages this caller owns; both stay unchanged until the stream passed this launch.
    pub unsafe fn scatter(
        &self,
        stream: &Stream,
        src: u64,
        frags: u64,
        nfrags: u32,
    ) -> Result<(), SimError> {
        let (scatter, _) = self.kernels()?;
        let (mut a, mut b, mut c) = (src, self.base(), frags);
        let mut params = [
            (&mut a as *mut u64).cast::<c_void>(),
            (&mut b as *mut u64).cast::<c_void>(),
            (&mut c as *mut u64).cast::<c_void>(),
        ];
        // SAFETY: per this function's contract; the parameters match
        // `tcpx_sim_scatter(const u8*, u8*, const LoadMeta*)`.
        unsafe { driver::launch(scatter, nfrags, BLOCK, stream, &mut params) }
    }

    /// Queues the poisoning of the pages of the `nfrags` fragments at `frags`.
    ///
    /// # Safety
    /// As for [`GpuPool::scatter`] (without `src`).
    pub unsafe fn poison(&self, stream: &Stream, frags: u64, nfrags: u32) -> Result<(), SimError> {
        let (_, poison) = self.kernels()?;
        let (mut a, mut b) = (self.base(), frags);
        let mut pattern = u32::from_ne_bytes([POISON; 4]);
        let mut params = [
            (&mut a as *mut u64).cast::<c_void>(),
            (&mut b as *mut u64).cast::<c_void>(),
            (&mut pattern as *mut u32).cast::<c_void>(),
        ];
        // SAFETY: per this function's contract; the parameters match
        // `tcpx_sim_poison(u8*, const LoadMeta*, u32)`.
        unsafe { driver::launch(poison, nfrags, BLOCK, stream, &mut params) }
    }
}
