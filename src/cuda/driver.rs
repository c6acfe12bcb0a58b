//! The CUDA driver: loading it without panicking, checked calls, and [`Gpu`] (a device and its
//! primary context).
//!
//! cudarc's dynamically loaded bindings panic on the first call when `libcuda.so` is missing or
//! lacks a symbol of the API version they were generated for (13.0). [`driver`] therefore first
//! opens the library itself, asks `cuDriverGetVersion`, and only then lets cudarc load it (with
//! the panic caught as a last resort), and calls `cuInit`. Every constructor of this module goes
//! through it, so on a machine without a GPU they return [`CudaError::NoDriver`] (and with a
//! driver older than 13.0, [`CudaError::DriverTooOld`]) instead of panicking.
//!
//! Invariants:
//! * [`check`] is the only place a `CUresult` becomes a `Result`.
//! * A [`Gpu`] holds a reference on its device's primary context from `new` until drop; every
//!   other CUDA type holds an `Arc<Gpu>`, so the context outlives them.
//! * Driver calls need the context current on the calling thread: methods that make them call
//!   [`Gpu::make_current`] (one `cuCtxGetCurrent`, plus `cuCtxSetCurrent` on a new thread).
//!
//! ```no_run
//! use tcpx::cuda::{Gpu, CudaError};
//! match Gpu::new(0) {
//!     Ok(gpu) => println!("{} with {} SMs", gpu.name(), gpu.sm_count()),
//!     Err(CudaError::NoDriver) => println!("not a GPU machine"),
//!     Err(e) => return Err(e.into()),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::ffi::{c_char, c_int};
use std::sync::{Arc, OnceLock};

use cudarc::driver::sys::{self, CUcontext, CUdevice, CUdevice_attribute, CUresult};

use super::CudaError;

/// The oldest driver API version the bindings work with (CUDA 13.0).
const MIN_DRIVER_VERSION: c_int = 13_000;

/// Turns a driver result into a `Result`, naming the call.
#[inline]
pub(crate) fn check(call: &'static str, result: CUresult) -> Result<(), CudaError> {
    match result {
        CUresult::CUDA_SUCCESS => Ok(()),
        result => Err(CudaError::Driver { call, result }),
    }
}

/// Turns a query's result (`cuStreamQuery`, `cuEventQuery`) into done (`true`), not yet
/// (`false`, `CUDA_ERROR_NOT_READY`) or an error naming the call.
#[inline]
pub(crate) fn ready(call: &'static str, result: CUresult) -> Result<bool, CudaError> {
    match result {
        CUresult::CUDA_SUCCESS => Ok(true),
        CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        result => Err(CudaError::Driver { call, result }),
    }
}

/// Loads and initialises the CUDA driver once per process; later calls return the first
/// answer.
///
/// # Errors
///
/// [`CudaError::NoDriver`] without a loadable `libcuda.so`, [`CudaError::DriverTooOld`] below
/// CUDA 13.0, [`CudaError::DriverIncomplete`] when cudarc cannot bind it, [`CudaError::Driver`]
/// when `cuInit` fails (e.g. no GPU visible).
pub fn driver() -> Result<(), CudaError> {
    static DRIVER: OnceLock<Result<(), CudaError>> = OnceLock::new();
    *DRIVER.get_or_init(load_driver)
}

fn load_driver() -> Result<(), CudaError> {
    let version = probe_version()?;
    if version < MIN_DRIVER_VERSION {
        return Err(CudaError::DriverTooOld { version });
    }
    // cudarc opens the library on its own and panics on a missing symbol; with a driver that
    // reports 13.0+ that cannot happen, but a panic must not escape to the caller either way.
    // SAFETY: `is_culib_present` only loads the library and resolves symbols.
    let present = std::panic::catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false);
    if !present {
        return Err(CudaError::DriverIncomplete { version });
    }
    // SAFETY: cuInit takes a flags word that must be 0; the library is loaded (checked above).
    check("cuInit", unsafe { sys::cuInit(0) })
}

/// Opens `libcuda` with libloading (not through cudarc) and asks its version.
fn probe_version() -> Result<c_int, CudaError> {
    const NAMES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];
    // SAFETY: loading the NVIDIA driver library runs its initialisers, which have no
    // preconditions; a failed load is an Err.
    let lib = NAMES
        .iter()
        .find_map(|name| unsafe { libloading::Library::new(name) }.ok())
        .ok_or(CudaError::NoDriver)?;
    // SAFETY: `cuDriverGetVersion(int*)` has this C signature in every driver version.
    let get_version =
        unsafe { lib.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cuDriverGetVersion\0") }
            .map_err(|_| CudaError::NoDriver)?;
    let mut version: c_int = 0;
    // SAFETY: the out-pointer is valid for one int; cuDriverGetVersion may be called before
    // cuInit.
    let rc = unsafe { get_version(&mut version) };
    if rc != 0 {
        return Err(CudaError::NoDriver);
    }
    Ok(version)
}

/// One GPU, with its primary context retained; made current on the thread that created it.
#[derive(Debug)]
pub struct Gpu {
    ordinal: usize,
    device: CUdevice,
    context: CUcontext,
    sm_count: u32,
    name: String,
}

// SAFETY: a primary context may be made current on, and used from, any thread; Gpu only keeps
// its handle and immutable facts about the device.
unsafe impl Send for Gpu {}
// SAFETY: as for Send; every method takes &self and only reads the fields.
unsafe impl Sync for Gpu {}

impl Gpu {
    /// Opens GPU `ordinal`: loads the driver ([`driver`]), retains the device's primary context
    /// and makes it current on the calling thread.
    ///
    /// # Errors
    ///
    /// As [`driver`]; [`CudaError::NoDevice`] when the ordinal is out of range; a
    /// [`CudaError::Driver`] from any call.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let mut device: CUdevice = 0;
        // ordinal < count <= c_int::MAX.
        // SAFETY: valid out-pointer; the driver is initialised.
        check("cuDeviceGet", unsafe {
            sys::cuDeviceGet(&mut device, ordinal as c_int)
        })?;
        let mut context: CUcontext = core::ptr::null_mut();
        // SAFETY: valid out-pointer and device.
        check("cuDevicePrimaryCtxRetain", unsafe {
            sys::cuDevicePrimaryCtxRetain(&mut context, device)
        })?;
        // From here on, drop releases the context.
        let mut gpu = Gpu {
            ordinal,
            device,
            context,
            sm_count: 0,
            name: String::new(),
        };
        gpu.make_current()?;
        gpu.sm_count = u32::try_from(
            gpu.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        )
        .unwrap_or(1)
        .max(1);
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds 256 chars; the driver NUL-terminates within that length.
        check("cuDeviceGetName", unsafe {
            sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as c_int, device)
        })?;
        name[255] = 0;
        // SAFETY: NUL-terminated by cuDeviceGetName, and the buffer's last byte is 0 anyway.
        let cname = unsafe { core::ffi::CStr::from_ptr(name.as_ptr()) };
        gpu.name = cname.to_string_lossy().into_owned();
        Ok(Arc::new(gpu))
    }

    /// GPUs the driver sees.
    ///
    /// # Errors
    ///
    /// As [`driver`], or a failing `cuDeviceGetCount`.
    pub fn count() -> Result<usize, CudaError> {
        driver()?;
        let mut count: c_int = 0;
        // SAFETY: valid out-pointer; the driver is initialised.
        check("cuDeviceGetCount", unsafe {
            sys::cuDeviceGetCount(&mut count)
        })?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device name, e.g. `NVIDIA H100 80GB HBM3`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Streaming multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// Makes this GPU's primary context current on the calling thread (cheap when it already
    /// is). Every method of this module that calls the driver does it first.
    ///
    /// # Errors
    ///
    /// A failing `cuCtxGetCurrent` / `cuCtxSetCurrent`.
    #[inline]
    pub fn make_current(&self) -> Result<(), CudaError> {
        let mut current: CUcontext = core::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check("cuCtxGetCurrent", unsafe {
            sys::cuCtxGetCurrent(&mut current)
        })?;
        if current != self.context {
            // SAFETY: the context is retained for as long as self lives.
            check("cuCtxSetCurrent", unsafe {
                sys::cuCtxSetCurrent(self.context)
            })?;
        }
        Ok(())
    }

    /// A device attribute.
    ///
    /// # Errors
    ///
    /// A failing `cuDeviceGetAttribute`.
    pub fn attribute(&self, attribute: CUdevice_attribute) -> Result<i32, CudaError> {
        let mut value: c_int = 0;
        // SAFETY: valid out-pointer and device.
        check("cuDeviceGetAttribute", unsafe {
            sys::cuDeviceGetAttribute(&mut value, attribute, self.device)
        })?;
        Ok(value)
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: balances the retain in `new`; nothing holds the context any more (every
        // other CUDA type holds an Arc<Gpu>).
        let _ = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_maps_query_results() {
        assert_eq!(ready("cuEventQuery", CUresult::CUDA_SUCCESS), Ok(true));
        assert_eq!(
            ready("cuEventQuery", CUresult::CUDA_ERROR_NOT_READY),
            Ok(false)
        );
        assert_eq!(
            ready("cuStreamQuery", CUresult::CUDA_ERROR_ILLEGAL_ADDRESS),
            Err(CudaError::Driver {
                call: "cuStreamQuery",
                result: CUresult::CUDA_ERROR_ILLEGAL_ADDRESS
            })
        );
    }

    #[test]
    fn check_maps_results() {
        assert_eq!(check("cuInit", CUresult::CUDA_SUCCESS), Ok(()));
        assert_eq!(
            check("cuInit", CUresult::CUDA_ERROR_NO_DEVICE),
            Err(CudaError::Driver {
                call: "cuInit",
                result: CUresult::CUDA_ERROR_NO_DEVICE
            })
        );
    }

    /// Runs on any machine: with a driver it opens GPU 0 (or says there is none), without one
    /// it returns NoDriver; it must never panic (cudarc would, if called blindly).
    #[test]
    fn opening_a_gpu_never_panics() {
        match Gpu::new(0) {
            Ok(gpu) => {
                assert_eq!(gpu.ordinal(), 0);
                assert!(gpu.sm_count() >= 1);
            }
            Err(CudaError::NoDriver | CudaError::NoDevice { .. } | CudaError::Driver { .. }) => {
                assert_eq!(driver().is_ok(), Gpu::count().is_ok());
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        assert_eq!(Gpu::new(usize::MAX).ok().map(|g| g.ordinal()), None);
    }
}
