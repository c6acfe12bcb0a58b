//! `tcpx_unpack_launch`: the C ABI of the unpack kernel, for the C++ drop-in (declared in
//! `cuda/unpack.h`).
//!
//! A C++ caller builds `tcpx_unpack_desc`s itself (in device memory or mapped pinned host
//! memory), owns its stream and events, and calls this to launch `tcpx_unpack_kernel` in the
//! context current on its thread. The kernels are loaded once per context (keyed by
//! `cuCtxGetId`, which is unique for the life of the process) and kept until the process exits.
//!
//! Invariants:
//! * Nothing unwinds across the C boundary: the body runs under `catch_unwind`, a panic becomes
//!   [`TCPX_UNPACK_ERR_PANIC`].
//! * The status codes equal the `TCPX_UNPACK_*` defines of `cuda/unpack.h`.
//!
//! ```no_run
//! use tcpx::cuda::{tcpx_unpack_launch, CudaBuffer, Gpu, Stream, TCPX_UNPACK_OK};
//! let gpu = Gpu::new(0)?; // makes its context current
//! let stream = Stream::new(&gpu)?;
//! let descs = CudaBuffer::new(&gpu, 4096)?; // filled with tcpx_unpack_desc records
//! // SAFETY: the descriptors are in device memory; every src/dst they name is valid.
//! let rc = unsafe {
//!     tcpx_unpack_launch(stream.as_raw().cast(), descs.device_ptr() as usize as *const _, 0)
//! };
//! assert_eq!(rc, TCPX_UNPACK_OK);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::ffi::{c_int, c_void};
use std::sync::Mutex;

use cudarc::driver::sys::{self, CUcontext, CUdevice, CUdevice_attribute, CUstream};

use super::desc::{grid_size, UnpackDesc, BLOCK_THREADS};
use super::driver::{check, driver};
use super::module::Kernels;
use super::CudaError;

/// `TCPX_UNPACK_OK`.
pub const TCPX_UNPACK_OK: c_int = 0;
/// `TCPX_UNPACK_ERR_INVALID`: NULL or misaligned descriptors with a non-zero count.
pub const TCPX_UNPACK_ERR_INVALID: c_int = -1;
/// `TCPX_UNPACK_ERR_NO_DRIVER`: no loadable CUDA ≥ 13.0 driver.
pub const TCPX_UNPACK_ERR_NO_DRIVER: c_int = -2;
/// `TCPX_UNPACK_ERR_NO_CONTEXT`: no context current on the calling thread.
pub const TCPX_UNPACK_ERR_NO_CONTEXT: c_int = -3;
/// `TCPX_UNPACK_ERR_CUDA`: a driver call failed.
pub const TCPX_UNPACK_ERR_CUDA: c_int = -4;
/// `TCPX_UNPACK_ERR_PANIC`: an internal error was caught.
pub const TCPX_UNPACK_ERR_PANIC: c_int = -5;

/// Kernels loaded per context id.
static LOADED: Mutex<Vec<(u64, Kernels)>> = Mutex::new(Vec::new());

/// Launches `tcpx_unpack_kernel` over `count` descriptors on `stream` (a `CUstream`, NULL for
/// the legacy default stream) in the context current on the calling thread. Returns
/// [`TCPX_UNPACK_OK`] or a negative `TCPX_UNPACK_ERR_*` code; never unwinds.
///
/// # Safety
///
/// * `descs` points at `count` descriptors readable by the device (device memory or mapped
///   pinned host memory) that stay unchanged until the kernel has finished;
/// * every descriptor's `src..src + len` is readable and `dst..dst + len` writable device
///   memory, destinations do not overlap, and nothing else touches the destinations until the
///   kernel has finished;
/// * `stream` is NULL or a live stream of the current context.
#[no_mangle]
pub unsafe extern "C" fn tcpx_unpack_launch(
    stream: *mut c_void,
    descs: *const UnpackDesc,
    count: u32,
) -> c_int {
    std::panic::catch_unwind(|| launch(stream.cast(), descs, count))
        .unwrap_or(TCPX_UNPACK_ERR_PANIC)
}

fn launch(stream: CUstream, descs: *const UnpackDesc, count: u32) -> c_int {
    if count == 0 {
        return TCPX_UNPACK_OK;
    }
    if descs.is_null() || !descs.is_aligned() {
        return TCPX_UNPACK_ERR_INVALID;
    }
    if driver().is_err() {
        return TCPX_UNPACK_ERR_NO_DRIVER;
    }
    let mut context: CUcontext = core::ptr::null_mut();
    // SAFETY: valid out-pointer; the driver is initialised.
    if unsafe { sys::cuCtxGetCurrent(&mut context) } != sys::CUresult::CUDA_SUCCESS {
        return TCPX_UNPACK_ERR_CUDA;
    }
    if context.is_null() {
        return TCPX_UNPACK_ERR_NO_CONTEXT;
    }
    match launch_in(context, stream, descs, count) {
        Ok(()) => TCPX_UNPACK_OK,
        Err(_) => TCPX_UNPACK_ERR_CUDA,
    }
}

fn launch_in(
    context: CUcontext,
    stream: CUstream,
    descs: *const UnpackDesc,
    count: u32,
) -> Result<(), CudaError> {
    let mut id: u64 = 0;
    // SAFETY: `context` is the current context; valid out-pointer.
    check("cuCtxGetId", unsafe { sys::cuCtxGetId(context, &mut id) })?;
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let index = match loaded.iter().position(|(ctx, _)| *ctx == id) {
        Some(index) => index,
        None => {
            let kernels = Kernels::load_current(current_sm_count()?)?;
            loaded.push((id, kernels));
            loaded.len() - 1
        }
    };
    let Some((_, kernels)) = loaded.get(index) else {
        return Err(CudaError::NoDriver);
    };
    let grid = grid_size(count as usize, kernels.max_grid);
    let mut descs = descs as usize as u64;
    let mut n = count;
    let mut params = [
        (&mut descs as *mut u64).cast::<c_void>(),
        (&mut n as *mut u32).cast::<c_void>(),
    ];
    // SAFETY: the function belongs to a module loaded in the current context; `params` points
    // at a u64 device address and a u32, the kernel's two parameters; the caller vouches for the
    // descriptors and the stream (see tcpx_unpack_launch).
    check("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            kernels.unpack,
            grid,
            1,
            1,
            BLOCK_THREADS,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            core::ptr::null_mut(),
        )
    })
}

/// SMs of the current context's device.
fn current_sm_count() -> Result<u32, CudaError> {
    let mut device: CUdevice = 0;
    // SAFETY: valid out-pointer; a context is current.
    check("cuCtxGetDevice", unsafe {
        sys::cuCtxGetDevice(&mut device)
    })?;
    let mut sms: c_int = 0;
    // SAFETY: valid out-pointer and device.
    check("cuDeviceGetAttribute", unsafe {
        sys::cuDeviceGetAttribute(
            &mut sms,
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            device,
        )
    })?;
    Ok(u32::try_from(sms).unwrap_or(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without work the launcher returns before touching the driver; with NULL or misaligned
    /// descriptors it refuses. All hold on any machine.
    #[test]
    fn trivial_calls() {
        // SAFETY: count 0 launches nothing.
        let rc = unsafe { tcpx_unpack_launch(core::ptr::null_mut(), core::ptr::null(), 0) };
        assert_eq!(rc, TCPX_UNPACK_OK);
        // SAFETY: NULL descriptors are refused before any launch.
        let rc = unsafe { tcpx_unpack_launch(core::ptr::null_mut(), core::ptr::null(), 5) };
        assert_eq!(rc, TCPX_UNPACK_ERR_INVALID);
        let descs = [0u64; 8];
        let odd = descs
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(1)
            .cast::<UnpackDesc>();
        // SAFETY: misaligned descriptors are refused before anything is read through them.
        let rc = unsafe { tcpx_unpack_launch(core::ptr::null_mut(), odd, 1) };
        assert_eq!(rc, TCPX_UNPACK_ERR_INVALID);
    }
}
