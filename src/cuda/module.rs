//! The unpack kernels: the fatbin `build.rs` compiled from `cuda/unpack.cu`, embedded here and
//! loaded into a context with `cuModuleLoadData`.
//!
//! Invariants:
//! * The embedded image is 64-byte aligned (the driver reads its headers in place).
//! * A [`Kernels`] value holds a loaded module and the three functions looked up in it; the
//!   functions are valid until it is dropped (which unloads the module).

use core::ffi::{c_char, c_int, c_void, CStr};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUfunction, CUmodule};

use super::desc::BLOCK_THREADS;
use super::driver::{check, Gpu};
use super::CudaError;

#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

/// `cuda/unpack.cu` as a fatbin: sm_90 SASS and compute_90 PTX.
static FATBIN: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/unpack.fatbin")));

/// Names of the kernels in `cuda/unpack.cu` (extern "C").
const UNPACK: &CStr = c"tcpx_unpack_kernel";
const UNPACK_INLINE: &CStr = c"tcpx_unpack_inline_kernel";
const EMPTY: &CStr = c"tcpx_empty_kernel";

/// The loaded module and its kernels.
#[derive(Debug)]
pub(crate) struct Kernels {
    /// None for a module kept for the process lifetime (the C ABI's cache).
    gpu: Option<Arc<Gpu>>,
    module: CUmodule,
    /// `tcpx_unpack_kernel(const tcpx_unpack_desc*, uint32_t)`.
    pub(crate) unpack: CUfunction,
    /// `tcpx_unpack_inline_kernel(tcpx_unpack_inline_batch)`.
    pub(crate) unpack_inline: CUfunction,
    /// `tcpx_empty_kernel()`.
    pub(crate) empty: CUfunction,
    /// The most blocks worth launching: SMs × resident blocks per SM of the unpack kernel.
    pub(crate) max_grid: u32,
}

// SAFETY: module and function handles may be used from any thread with their context current.
unsafe impl Send for Kernels {}

impl Kernels {
    /// Loads the kernels into `gpu`'s primary context.
    pub(crate) fn load(gpu: &Arc<Gpu>) -> Result<Self, CudaError> {
        gpu.make_current()?;
        let mut kernels = Self::load_current(gpu.sm_count())?;
        kernels.gpu = Some(Arc::clone(gpu));
        Ok(kernels)
    }

    /// Loads the kernels into the context current on this thread (the caller made one current
    /// and keeps it alive as long as the result is used); `sm_count` sizes the grid.
    pub(crate) fn load_current(sm_count: u32) -> Result<Self, CudaError> {
        let mut module: CUmodule = core::ptr::null_mut();
        // SAFETY: the image is a complete fatbin, aligned, and 'static; a context is current.
        check("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut module, FATBIN.0.as_ptr().cast::<c_void>())
        })?;
        let mut kernels = Self {
            gpu: None,
            module,
            unpack: core::ptr::null_mut(),
            unpack_inline: core::ptr::null_mut(),
            empty: core::ptr::null_mut(),
            max_grid: 1,
        };
        kernels.unpack = kernels.function(UNPACK)?;
        kernels.unpack_inline = kernels.function(UNPACK_INLINE)?;
        kernels.empty = kernels.function(EMPTY)?;
        let mut per_sm: c_int = 0;
        // SAFETY: valid out-pointer and function; no dynamic shared memory.
        check("cuOccupancyMaxActiveBlocksPerMultiprocessor", unsafe {
            sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                &mut per_sm,
                kernels.unpack,
                BLOCK_THREADS as c_int,
                0,
            )
        })?;
        let per_sm = u32::try_from(per_sm).unwrap_or(1).max(1);
        kernels.max_grid = sm_count.max(1).saturating_mul(per_sm);
        Ok(kernels)
    }

    fn function(&self, name: &CStr) -> Result<CUfunction, CudaError> {
        let mut f: CUfunction = core::ptr::null_mut();
        // SAFETY: valid out-pointer, loaded module, NUL-terminated name.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut f, self.module, name.as_ptr().cast::<c_char>())
        })?;
        Ok(f)
    }
}

impl Drop for Kernels {
    fn drop(&mut self) {
        if let Some(gpu) = &self.gpu {
            let _ = gpu.make_current();
            // SAFETY: loaded in `load`, unloaded once; the owner (the Unpacker) synchronised
            // its stream before dropping this, so no launch of these kernels is pending.
            let _ = unsafe { sys::cuModuleUnload(self.module) };
        }
    }
}
