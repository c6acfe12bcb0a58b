//! Checked, owned wrappers over the few CUDA driver calls CUDA mode makes (through cudarc's
//! dynamically loaded `sys` bindings; no cudart).
//!
//! * Every call's `CUresult` is checked; a failure is [`SimError::Cuda`] naming the call, which
//!   the plugin returns as `ncclUnhandledCudaError` (1) with a WARN.
//! * All device work runs in **primary contexts** (what the CUDA runtime, NCCL and PyTorch use;
//!   TCPX too, `NCCL_GPUDIRECTTCPX_CUDA_USE_PRIMARY_CTX=1`): [`primary`] retains a device's
//!   primary context once and keeps it for the life of the process.
//! * Calls on a caller's thread (plugin calls) run inside [`Entered`], which pushes the context
//!   and pops it again, so the caller's current context is left as it was. Helper threads own
//!   their thread and make their context current once ([`make_current`]).
//! * Owned resources ([`PinnedBuf`], [`DeviceBuf`], [`Stream`], [`Event`], [`Module`]) free
//!   themselves on drop, with their context pushed; drop errors are ignored (nothing to report
//!   them to, and the process may be tearing CUDA down).
//!
//! ```no_run
//! # fn demo() -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::cuda::driver;
//! driver::open()?;
//! let ctx = driver::primary(0)?;
//! let _in = driver::Entered::new(ctx)?;
//! let buf = driver::DeviceBuf::new(ctx, 1 << 20)?;
//! # let _ = buf; Ok(()) }
//! ```

use core::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, OnceLock};

use cudarc::driver::sys::{self, CUresult};

use crate::error::SimError;
use crate::gpu_wait::{wait_until_done, Query, GPU_WAIT_TIMEOUT};

/// Maps a `CUresult` to `Ok` or [`SimError::Cuda`] naming `call`.
pub fn check(call: &'static str, r: CUresult) -> Result<(), SimError> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(SimError::Cuda {
            call,
            code: r as u32,
        })
    }
}

/// A stream or event query's answer: done, not ready, or the call's error.
fn query(call: &'static str, r: CUresult) -> Result<Query, SimError> {
    match r {
        CUresult::CUDA_SUCCESS => Ok(Query::Done),
        CUresult::CUDA_ERROR_NOT_READY => Ok(Query::NotReady),
        other => check(call, other).map(|()| Query::Done),
    }
}

/// Whether the driver library (libcuda) can be loaded with every symbol cudarc binds. cudarc
/// panics on first use without it, so nothing else here runs before this returned true.
fn library_present() -> bool {
    // SAFETY: only tries to dlopen libcuda and resolve its symbols; the library is dropped again.
    // cudarc panics (rather than returning an error) on a missing symbol: caught here.
    catch_unwind(AssertUnwindSafe(|| unsafe { sys::is_culib_present() })).unwrap_or(false)
}

/// Number of CUDA devices, once the driver was opened by [`open`].
static DEVICES: OnceLock<Result<i32, SimError>> = OnceLock::new();

/// Loads libcuda, `cuInit(0)`s and counts the GPUs (once per process); fails with
/// [`SimError::CudaUnavailable`] when there is no libcuda or no GPU.
pub fn open() -> Result<i32, SimError> {
    DEVICES
        .get_or_init(|| {
            if !library_present() {
                return Err(SimError::CudaUnavailable {
                    why: "libcuda.so (the CUDA driver) could not be loaded".to_owned(),
                });
            }
            // SAFETY: libcuda is loaded (checked above); cuInit has no other precondition.
            let r = unsafe { sys::cuInit(0) };
            if let Err(e) = check("cuInit", r) {
                return Err(SimError::CudaUnavailable { why: e.to_string() });
            }
            let mut n = 0;
            // SAFETY: `n` is a writable int; the driver is initialised.
            let r = unsafe { sys::cuDeviceGetCount(&mut n) };
            check("cuDeviceGetCount", r)
                .map_err(|e| SimError::CudaUnavailable { why: e.to_string() })?;
            if n <= 0 {
                return Err(SimError::CudaUnavailable {
                    why: "cuDeviceGetCount found no GPU".to_owned(),
                });
            }
            Ok(n)
        })
        .clone()
}

/// The device count; [`open`] must have succeeded.
pub fn device_count() -> Result<i32, SimError> {
    match DEVICES.get() {
        Some(r) => r.clone(),
        None => Err(SimError::CudaUnavailable {
            why: "the CUDA driver was not opened".to_owned(),
        }),
    }
}

/// A CUDA context handle (a primary context, retained for the life of the process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    raw: sys::CUcontext,
    /// Its device ordinal.
    pub device: i32,
}

// SAFETY: a CUcontext is a process-wide handle the driver lets any thread use (push/pop or
// set-current); the primary contexts here are retained forever, so the handle never dangles.
unsafe impl Send for Context {}
// SAFETY: as for Send; the handle is only copied, never mutated.
unsafe impl Sync for Context {}

static PRIMARY: Mutex<Vec<Option<Context>>> = Mutex::new(Vec::new());

/// The primary context of `device`, retained on first use and kept for the process.
pub fn primary(device: i32) -> Result<Context, SimError> {
    let n = device_count()?;
    if !(0..n).contains(&device) {
        return Err(SimError::Cuda {
            call: "cuDeviceGet",
            code: CUresult::CUDA_ERROR_INVALID_DEVICE as u32,
        });
    }
    let mut all = PRIMARY.lock().map_err(|_| SimError::Poisoned)?;
    if all.len() < n as usize {
        all.resize(n as usize, None);
    }
    if let Some(c) = all[device as usize] {
        return Ok(c);
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: the driver is initialised (device_count succeeded); `dev` is writable.
    check("cuDeviceGet", unsafe { sys::cuDeviceGet(&mut dev, device) })?;
    let mut raw: sys::CUcontext = core::ptr::null_mut();
    // SAFETY: `dev` is a valid device handle; `raw` is writable. Never released: the context
    // stays valid for every handle copied out of this table.
    check("cuDevicePrimaryCtxRetain", unsafe {
        sys::cuDevicePrimaryCtxRetain(&mut raw, dev)
    })?;
    let c = Context { raw, device };
    all[device as usize] = Some(c);
    Ok(c)
}

/// The device of the calling thread's current context (TCPX: `cudaGetDevice` on the caller's
/// thread), or `None` when the thread has no current context.
pub fn current_device() -> Result<Option<i32>, SimError> {
    let mut raw: sys::CUcontext = core::ptr::null_mut();
    // SAFETY: `raw` is writable; the driver is initialised by `open`.
    check("cuCtxGetCurrent", unsafe { sys::cuCtxGetCurrent(&mut raw) })?;
    if raw.is_null() {
        return Ok(None);
    }
    let mut dev: sys::CUdevice = 0;
    // SAFETY: a context is current on this thread, so cuCtxGetDevice reports its device.
    check("cuCtxGetDevice", unsafe { sys::cuCtxGetDevice(&mut dev) })?;
    Ok(Some(dev))
}

/// Makes `ctx` current on the calling thread for good (helper threads, which run only sim code).
pub fn make_current(ctx: Context) -> Result<(), SimError> {
    // SAFETY: `ctx` is a retained primary context.
    check("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(ctx.raw) })
}

/// `ctx` pushed on the calling thread until drop, which pops it: the caller's own current
/// context is untouched afterwards.
/// Not `Send`: it must be dropped on the thread that pushed.
#[derive(Debug)]
pub struct Entered(core::marker::PhantomData<*const ()>);

impl Entered {
    /// Pushes `ctx`.
    pub fn new(ctx: Context) -> Result<Entered, SimError> {
        // SAFETY: `ctx` is a retained primary context.
        check("cuCtxPushCurrent", unsafe {
            sys::cuCtxPushCurrent_v2(ctx.raw)
        })?;
        Ok(Entered(core::marker::PhantomData))
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut popped: sys::CUcontext = core::ptr::null_mut();
        // SAFETY: `new` pushed a context on this thread (Entered is not Send), so there is one
        // to pop; `popped` is writable.
        let _ = unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
    }
}

/// Pinned, device-mapped, portable host memory (`cuMemHostAlloc(DEVICEMAP | PORTABLE)`):
/// readable and writable by the host at `host`, by kernels at `dev`.
#[derive(Debug)]
pub struct PinnedBuf {
    host: *mut u8,
    dev: u64,
    len: usize,
    ctx: Context,
}

// SAFETY: owned memory; the pointers are plain addresses valid in every thread; whoever holds
// the buffer decides who touches its bytes.
unsafe impl Send for PinnedBuf {}
// SAFETY: `&PinnedBuf` hands out only addresses; all byte access is through raw pointers under
// the owner's rules.
unsafe impl Sync for PinnedBuf {}

impl PinnedBuf {
    /// Allocates `len` zeroed bytes in `ctx`.
    pub fn new(ctx: Context, len: usize) -> Result<PinnedBuf, SimError> {
        let _in = Entered::new(ctx)?;
        let mut p: *mut c_void = core::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: `p` is writable; a context is current.
        check("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut p, len, flags as c_uint)
        })?;
        let mut buf = PinnedBuf {
            host: p.cast(),
            dev: 0,
            len,
            ctx,
        };
        // SAFETY: a context is current; `p` is a live DEVICEMAP allocation; `dev` writable.
        check("cuMemHostGetDevicePointer", unsafe {
            sys::cuMemHostGetDevicePointer_v2(&mut buf.dev, p, 0)
        })?;
        // SAFETY: `host..host+len` is our fresh allocation, not yet shared.
        unsafe { buf.host.write_bytes(0, len) };
        Ok(buf)
    }

    /// Host address.
    pub fn host(&self) -> *mut u8 {
        self.host
    }

    /// Device address (equal to the host address under UVA).
    pub fn dev(&self) -> u64 {
        self.dev
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        if let Ok(_in) = Entered::new(self.ctx) {
            // SAFETY: allocated by cuMemHostAlloc in `new`, freed once; the owner guarantees no
            // kernel or copy still uses it (streams are synchronised before their buffers go).
            let _ = unsafe { sys::cuMemFreeHost(self.host.cast()) };
        }
    }
}

/// Device memory (`cuMemAlloc`).
#[derive(Debug)]
pub struct DeviceBuf {
    ptr: u64,
    len: usize,
    ctx: Context,
}

impl DeviceBuf {
    /// Allocates `len` bytes in `ctx` (contents undefined).
    pub fn new(ctx: Context, len: usize) -> Result<DeviceBuf, SimError> {
        let _in = Entered::new(ctx)?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: `ptr` is writable; a context is current.
        check("cuMemAlloc", unsafe { sys::cuMemAlloc_v2(&mut ptr, len) })?;
        Ok(DeviceBuf { ptr, len, ctx })
    }

    /// Device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `bytes` to offset 0 and waits for the copy. Runs on a private non-blocking
    /// stream: it never waits for (or on) work of the context's other users (NCCL, PyTorch).
    pub fn write(&self, bytes: &[u8]) -> Result<(), SimError> {
        if bytes.len() > self.len {
            return Err(SimError::Protocol {
                why: "device write past the end of its buffer",
            });
        }
        let stream = Stream::new(self.ctx)?;
        let _in = Entered::new(self.ctx)?;
        // SAFETY: the destination is our allocation and large enough (checked); the source is
        // a live slice that outlives this function, and `stream`'s drop waits for the copy
        // even when the bounded wait below gives up.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(self.ptr, bytes.as_ptr().cast(), bytes.len(), stream.raw())
        })?;
        stream.synchronize()
    }

    /// Sets every byte to `value` and waits, on a private non-blocking stream (see `write`).
    pub fn fill(&self, value: u8) -> Result<(), SimError> {
        let stream = Stream::new(self.ctx)?;
        let _in = Entered::new(self.ctx)?;
        // SAFETY: our allocation, `len` bytes.
        check("cuMemsetD8Async", unsafe {
            sys::cuMemsetD8Async(self.ptr, value, self.len, stream.raw())
        })?;
        stream.synchronize()
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        if let Ok(_in) = Entered::new(self.ctx) {
            // SAFETY: allocated by cuMemAlloc in `new`, freed once; the owner guarantees no
            // kernel still uses it.
            let _ = unsafe { sys::cuMemFree_v2(self.ptr) };
        }
    }
}

/// A non-blocking stream of one context.
#[derive(Debug)]
pub struct Stream {
    raw: sys::CUstream,
    ctx: Context,
}

// SAFETY: a stream handle may be used from any thread with its context current; each owner
// uses it from one thread at a time.
unsafe impl Send for Stream {}

impl Stream {
    /// Creates a stream in `ctx`.
    pub fn new(ctx: Context) -> Result<Stream, SimError> {
        let _in = Entered::new(ctx)?;
        let mut raw: sys::CUstream = core::ptr::null_mut();
        // SAFETY: `raw` is writable; a context is current.
        check("cuStreamCreate", unsafe {
            sys::cuStreamCreate(
                &mut raw,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as c_uint,
            )
        })?;
        Ok(Stream { raw, ctx })
    }

    /// The raw handle (for launches and copies, with the stream's context current).
    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    /// Waits for everything queued on the stream, for at most [`GPU_WAIT_TIMEOUT`]
    /// ([`crate::gpu_wait`]: polls `cuStreamQuery` instead of blocking without a deadline).
    pub fn synchronize(&self) -> Result<(), SimError> {
        wait_until_done("cuStreamQuery", GPU_WAIT_TIMEOUT, || {
            // SAFETY: a live stream; querying needs no particular current context.
            query("cuStreamQuery", unsafe { sys::cuStreamQuery(self.raw) })
        })
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Ok(_in) = Entered::new(self.ctx) {
            // The one unbounded wait (crate::gpu_wait): owners free the memory this stream's
            // work touches after dropping it, which is sound only once that work is done. A
            // wait that timed out earlier has already failed the comm loudly.
            // SAFETY: created in `new`, destroyed once; pending work completes on its own.
            let _ = unsafe { sys::cuStreamSynchronize(self.raw) };
            // SAFETY: as above.
            let _ = unsafe { sys::cuStreamDestroy_v2(self.raw) };
        }
    }
}

/// A timing-free event of one context.
#[derive(Debug)]
pub struct Event {
    raw: sys::CUevent,
    ctx: Context,
}

// SAFETY: as for Stream.
unsafe impl Send for Event {}

impl Event {
    /// Creates an event in `ctx`.
    pub fn new(ctx: Context) -> Result<Event, SimError> {
        let _in = Entered::new(ctx)?;
        let mut raw: sys::CUevent = core::ptr::null_mut();
        // SAFETY: `raw` is writable; a context is current.
        check("cuEventCreate", unsafe {
            sys::cuEventCreate(
                &mut raw,
                sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as c_uint,
            )
        })?;
        Ok(Event { raw, ctx })
    }

    /// Records the event on `stream` (same context; that context must be current).
    pub fn record(&self, stream: &Stream) -> Result<(), SimError> {
        // SAFETY: live event and stream of the same context.
        check("cuEventRecord", unsafe {
            sys::cuEventRecord(self.raw, stream.raw())
        })
    }

    /// Waits until the work before the last record finished, for at most
    /// [`GPU_WAIT_TIMEOUT`] (polls `cuEventQuery`, see [`crate::gpu_wait`]).
    pub fn synchronize(&self) -> Result<(), SimError> {
        wait_until_done("cuEventQuery", GPU_WAIT_TIMEOUT, || {
            // SAFETY: a live event.
            query("cuEventQuery", unsafe { sys::cuEventQuery(self.raw) })
        })
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Ok(_in) = Entered::new(self.ctx) {
            // SAFETY: created in `new`, destroyed once.
            let _ = unsafe { sys::cuEventDestroy_v2(self.raw) };
        }
    }
}

/// A loaded module and two of its kernels.
#[derive(Debug)]
pub struct Module {
    raw: sys::CUmodule,
    ctx: Context,
}

// SAFETY: a module handle (and its functions) may be used from any thread with its context
// current; it is immutable after load.
unsafe impl Send for Module {}
// SAFETY: as for Send.
unsafe impl Sync for Module {}

/// A kernel of a [`Module`] (valid while the module is loaded).
#[derive(Clone, Copy, Debug)]
pub struct Function(sys::CUfunction);

// SAFETY: see Module.
unsafe impl Send for Function {}
// SAFETY: see Module.
unsafe impl Sync for Function {}

impl Module {
    /// JIT-loads NUL-terminated PTX into `ctx`.
    pub fn load_ptx(ctx: Context, ptx: &core::ffi::CStr) -> Result<Module, SimError> {
        let _in = Entered::new(ctx)?;
        let mut raw: sys::CUmodule = core::ptr::null_mut();
        // SAFETY: `ptx` is a NUL-terminated PTX image; `raw` writable; a context is current.
        check("cuModuleLoadData", unsafe {
            sys::cuModuleLoadData(&mut raw, ptx.as_ptr().cast())
        })?;
        Ok(Module { raw, ctx })
    }

    /// The kernel called `name`.
    pub fn function(&self, name: &core::ffi::CStr) -> Result<Function, SimError> {
        let mut f: sys::CUfunction = core::ptr::null_mut();
        // SAFETY: a live module; `name` NUL-terminated; `f` writable.
        check("cuModuleGetFunction", unsafe {
            sys::cuModuleGetFunction(&mut f, self.raw, name.as_ptr())
        })?;
        Ok(Function(f))
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let Ok(_in) = Entered::new(self.ctx) {
            // SAFETY: loaded in `load_ptx`, unloaded once; its owner synchronised its launches.
            let _ = unsafe { sys::cuModuleUnload(self.raw) };
        }
    }
}

/// Launches `f` with `grid` blocks of `block` threads on `stream`; `params` are the kernel's
/// arguments, each a pointer to a `u64`/`u32` value as the kernel declares it.
///
/// # Safety
/// The stream's context is current; `f` belongs to a module loaded in that context; `params`
/// match the kernel's parameter list in number, order and size; every address passed stays
/// valid until the launch completes.
pub unsafe fn launch(
    f: Function,
    grid: u32,
    block: u32,
    stream: &Stream,
    params: &mut [*mut c_void],
) -> Result<(), SimError> {
    // SAFETY: guaranteed by the caller; `params` outlives the call (the driver copies the
    // argument values before cuLaunchKernel returns).
    check("cuLaunchKernel", unsafe {
        sys::cuLaunchKernel(
            f.0,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream.raw(),
            params.as_mut_ptr(),
            core::ptr::null_mut(),
        )
    })
}

/// The CUDA device that owns `[addr, addr + size)`, checked at both ends: the memory type must
/// be device memory and both ends on the same GPU. Runs with the caller's current context, or
/// device 0's primary context when the thread has none.
pub fn device_of(addr: usize, size: usize) -> Result<i32, SimError> {
    let _in = match current_device()? {
        Some(_) => None,
        None => Some(Entered::new(primary(0)?)?),
    };
    let not_device = SimError::NotDeviceMemory { addr, size };
    let probe = |p: usize| -> Result<i32, SimError> {
        let mut ty: c_uint = 0;
        // SAFETY: `ty` is a writable unsigned int, the attribute's type; any address may be
        // queried (non-CUDA ones fail with CUDA_ERROR_INVALID_VALUE).
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut ty as *mut c_uint).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                p as u64,
            )
        };
        if r != CUresult::CUDA_SUCCESS
            || ty != sys::CUmemorytype_enum::CU_MEMORYTYPE_DEVICE as c_uint
        {
            return Err(not_device.clone());
        }
        let mut dev: i32 = -1;
        // SAFETY: `dev` is a writable int, the attribute's type.
        let r = unsafe {
            sys::cuPointerGetAttribute(
                (&mut dev as *mut i32).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                p as u64,
            )
        };
        check("cuPointerGetAttribute", r)?;
        Ok(dev)
    };
    let first = probe(addr)?;
    if size > 1 {
        let end = addr.checked_add(size - 1).ok_or(not_device.clone())?;
        let last = probe(end)?;
        if last != first {
            return Err(not_device);
        }
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_calls_are_unhandled_cuda_errors_naming_the_call() {
        assert_eq!(check("cuInit", CUresult::CUDA_SUCCESS), Ok(()));
        let e = check("cuMemAlloc", CUresult::CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(
            e,
            Err(SimError::Cuda {
                call: "cuMemAlloc",
                code: 2
            })
        );
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("cuMemAlloc") && msg.contains("CUDA_ERROR_OUT_OF_MEMORY"),
            "{msg}"
        );
    }
}
