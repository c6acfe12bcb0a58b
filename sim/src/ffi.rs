//! The exported `ncclNetPlugin_v7` table and its `extern "C"` entry points.
//!
//! Each entry point: checks its pointers (NULL → [`SimError::NullArgument`]), turns the opaque
//! comm/request pointers into references after checking their magic, calls the safe logic in
//! [`crate::plugin`], writes its outputs, and maps the result to an `ncclResult_t`, logging a
//! WARN for every failure. Everything runs inside `catch_unwind`: no panic crosses the C
//! boundary (a caught one is `ncclInternalError`).
//!
//! Invariants:
//! * Outputs are written only on success, except `*done = 0` and `*sendComm`/`*recvComm = NULL`,
//!   which are written first, as TCPX does.
//! * `test` never writes `sizes`; `getDeviceMr` never writes `*dptr_mhandle`; `regMrDmaBuf` is
//!   NULL; `iflush` always fails — all as TCPX.
//! * A comm is freed only by its close call, after its helper threads were joined.
//!
//! ```
//! let t = tcpx_sim::plugin_v7();
//! assert!(t.reg_mr_dma_buf.is_none());
//! assert!(t.irecv_consumed.is_some());
//! ```

use core::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use tcpx::net::abi::{
    log_subsys, net_device_type, DebugLogger, NcclResult, NetDeviceHandle, NetHandle, NetPluginV7,
    NetProperties, UnpackNetDeviceHandle, NET_DEVICE_UNPACK_VERSION, PTR_CUDA, PTR_HOST,
};

use crate::bounce::check_cuda_registration;
use crate::comm::Memory;
use crate::error::{CommKind, SimError};
use crate::hostmem::HostRegion;
use crate::log::{Call, Logger};
use crate::plugin::{
    self, report, CommObject, ListenObject, RequestHandle, LISTEN_MAGIC, RECV_MAGIC, REQUEST_MAGIC,
    SEND_MAGIC,
};

/// `ncclNet_v7_t` wrapped so it can be a `static` (raw pointers are not `Sync`).
#[repr(transparent)]
pub struct ExportedPlugin(pub NetPluginV7);

// SAFETY: the table is immutable for the life of the process; its pointers refer to functions
// and to a string literal, all 'static, so sharing it between threads is sound.
unsafe impl Sync for ExportedPlugin {}

/// The symbol NCCL (and the `tcpx` loader) looks up with `dlsym("ncclNetPlugin_v7")`.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static ncclNetPlugin_v7: ExportedPlugin = ExportedPlugin(NetPluginV7 {
    name: c"tcpx-sim_v7".as_ptr(),
    init: Some(sim_init),
    devices: Some(sim_devices),
    get_properties: Some(sim_get_properties),
    listen: Some(sim_listen),
    connect: Some(sim_connect),
    accept: Some(sim_accept),
    reg_mr: Some(sim_reg_mr),
    reg_mr_dma_buf: None,
    dereg_mr: Some(sim_dereg_mr),
    isend: Some(sim_isend),
    irecv: Some(sim_irecv),
    iflush: Some(sim_iflush),
    test: Some(sim_test),
    close_send: Some(sim_close_send),
    close_recv: Some(sim_close_recv),
    close_listen: Some(sim_close_listen),
    get_device_mr: Some(sim_get_device_mr),
    irecv_consumed: Some(sim_irecv_consumed),
});

fn run_with(
    call: Call,
    logger: Option<Logger>,
    f: impl FnOnce() -> Result<(), SimError>,
) -> NcclResult {
    let r = catch_unwind(AssertUnwindSafe(f)).unwrap_or(Err(SimError::Panic));
    if r.is_ok() {
        // The hot path (isend/irecv/test from several progress threads) never touches the
        // global plugin state: its lock and reference count would bounce between their cores.
        return NcclResult::SUCCESS;
    }
    let logger = logger.or_else(|| plugin::current().ok().map(|p| p.logger));
    report(logger, call, r)
}

fn run(call: Call, f: impl FnOnce() -> Result<(), SimError>) -> NcclResult {
    run_with(call, None, f)
}

fn nonnull<T>(p: *mut T, arg: &'static str) -> Result<*mut T, SimError> {
    if p.is_null() {
        Err(SimError::NullArgument { arg })
    } else {
        Ok(p)
    }
}

/// Reads the magic every plugin object starts with.
///
/// # Safety
/// `p` is non-NULL and points at an object this plugin handed out and that is still live (all of
/// them are `#[repr(C)]` with a `u64` magic first).
unsafe fn magic_of(p: *mut c_void) -> u64 {
    // SAFETY: guaranteed by the caller; the read is aligned because every object is a boxed
    // struct with a u64 first field.
    unsafe { p.cast::<u64>().read() }
}

/// # Safety
/// `p` is NULL or a `listenComm` returned by `listen` and not yet closed.
unsafe fn listen_ref<'a>(p: *mut c_void) -> Result<&'a ListenObject, SimError> {
    let p = nonnull(p, "listenComm")?;
    // SAFETY: non-NULL and, per the contract, one of this plugin's live objects.
    if unsafe { magic_of(p) } != LISTEN_MAGIC {
        return Err(SimError::BadComm {
            expected: CommKind::Listen,
        });
    }
    // SAFETY: the magic identifies a live `ListenObject` allocated by `listen` (Box::into_raw).
    Ok(unsafe { &*p.cast::<ListenObject>() })
}

/// # Safety
/// `p` is NULL or a comm returned by `connect`/`accept` and not yet closed.
unsafe fn comm_ref<'a>(p: *mut c_void, want: Option<CommKind>) -> Result<&'a CommObject, SimError> {
    let expected = want.unwrap_or(CommKind::Send);
    let p = nonnull(
        p,
        match want {
            Some(CommKind::Recv) => "recvComm",
            Some(CommKind::Send) => "sendComm",
            _ => "comm",
        },
    )?;
    // SAFETY: non-NULL and, per the contract, one of this plugin's live objects.
    let magic = unsafe { magic_of(p) };
    let kind = match magic {
        SEND_MAGIC => CommKind::Send,
        RECV_MAGIC => CommKind::Recv,
        _ => return Err(SimError::BadComm { expected }),
    };
    if want.is_some_and(|w| w != kind) {
        return Err(SimError::BadComm { expected });
    }
    // SAFETY: the magic identifies a live `CommObject` allocated by connect/accept.
    Ok(unsafe { &*p.cast::<CommObject>() })
}

/// # Safety
/// `p` is NULL or a request returned by `isend`/`irecv` on a comm that is not closed.
unsafe fn request_ref<'a>(p: *mut c_void) -> Result<&'a RequestHandle, SimError> {
    let p = nonnull(p, "request")?;
    // SAFETY: non-NULL and, per the contract, a request handle inside a live comm.
    if unsafe { magic_of(p) } != REQUEST_MAGIC {
        return Err(SimError::BadRequest);
    }
    // SAFETY: the magic identifies one of the 16 `RequestHandle`s of a live `CommObject`.
    Ok(unsafe { &*p.cast::<RequestHandle>() })
}

fn request_ptr(c: &CommObject, slot: usize) -> *mut c_void {
    (c.request(slot) as *const RequestHandle).cast_mut().cast()
}

/// `init(logger)`.
///
/// # Safety
/// `logger` is NULL or an `ncclDebugLogger_t`.
unsafe extern "C" fn sim_init(logger: Option<DebugLogger>) -> NcclResult {
    let Some(l) = logger else {
        // TCPX would crash on its first log line; there is no logger to WARN through.
        return SimError::NoLogger.rc();
    };
    let lg = Logger::Nccl(l);
    run_with(Call::Init, Some(lg), || {
        plugin::init(lg, &|k| std::env::var(k).ok()).map(drop)
    })
}

/// `devices(&ndev)`.
///
/// # Safety
/// `ndev` is NULL or points at a writable `int`.
unsafe extern "C" fn sim_devices(ndev: *mut c_int) -> NcclResult {
    run(Call::Devices, || {
        let ndev = nonnull(ndev, "ndev")?;
        let p = plugin::current()?;
        let n = c_int::try_from(p.device_count()).unwrap_or(c_int::MAX);
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { ndev.write(n) };
        Ok(())
    })
}

/// `getProperties(dev, props)`.
///
/// # Safety
/// `props` is NULL or points at a writable `ncclNetProperties_v7_t`.
unsafe extern "C" fn sim_get_properties(dev: c_int, props: *mut NetProperties) -> NcclResult {
    run(Call::GetProperties, || {
        let props = nonnull(props, "props")?;
        let v = plugin::current()?.properties(dev)?;
        // SAFETY: non-NULL and writable per the ABI; the strings it points at live as long as the
        // process (every configuration is kept).
        unsafe { props.write(v) };
        Ok(())
    })
}

/// `listen(dev, handle, &listenComm)`.
///
/// # Safety
/// `handle` is NULL or a writable 128-byte buffer; `listen_comm` NULL or a writable `void*`.
unsafe extern "C" fn sim_listen(
    dev: c_int,
    handle: *mut c_void,
    listen_comm: *mut *mut c_void,
) -> NcclResult {
    run(Call::Listen, || {
        let handle = nonnull(handle, "handle")?;
        let listen_comm = nonnull(listen_comm, "listenComm")?;
        let p = plugin::current()?;
        let (obj, h) = ListenObject::new(&p, dev)?;
        // SAFETY: `handle` is a writable NCCL_NET_HANDLE_MAXSIZE (128) byte buffer per the ABI;
        // `h` is 128 bytes and does not overlap it.
        unsafe {
            handle
                .cast::<u8>()
                .copy_from_nonoverlapping(h.as_ptr(), h.len())
        };
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { listen_comm.write(Box::into_raw(obj).cast()) };
        Ok(())
    })
}

/// `connect(dev, handle, &sendComm, &sendDevComm)`; `sendDevComm` is ignored, like TCPX.
///
/// # Safety
/// `handle` is NULL or the writable 128-byte handle buffer; `send_comm` NULL or writable.
unsafe extern "C" fn sim_connect(
    dev: c_int,
    handle: *mut c_void,
    send_comm: *mut *mut c_void,
    _send_dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    run(Call::Connect, || {
        let handle = nonnull(handle, "handle")?;
        let send_comm = nonnull(send_comm, "sendComm")?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { send_comm.write(core::ptr::null_mut()) };
        let p = plugin::current()?;
        // SAFETY: the handle is the caller's writable 128-byte buffer (TCPX writes connect_args
        // into it too); `NetHandle` is `[u8; 128]`, alignment 1, and no other reference to it
        // exists during this call.
        let h = unsafe { &mut *handle.cast::<NetHandle>() };
        if let Some(obj) = p.connect(dev, h)? {
            // SAFETY: as above.
            unsafe { send_comm.write(Box::into_raw(obj).cast()) };
        }
        Ok(())
    })
}

/// `accept(listenComm, &recvComm, &recvDevComm)`.
///
/// # Safety
/// `listen_comm` is NULL or a live listen comm; `recv_comm` NULL or writable; `recv_dev_comm`
/// NULL or a pointer to a (NULL or writable 32-byte `ncclNetDeviceHandle_v7_t`) pointer.
unsafe extern "C" fn sim_accept(
    listen_comm: *mut c_void,
    recv_comm: *mut *mut c_void,
    recv_dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    run(Call::Accept, || {
        let recv_comm = nonnull(recv_comm, "recvComm")?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { recv_comm.write(core::ptr::null_mut()) };
        // SAFETY: per this function's contract.
        let l = unsafe { listen_ref(listen_comm) }?;
        let want = !recv_dev_comm.is_null();
        let Some(obj) = l.accept(want)? else {
            return Ok(());
        };
        if want {
            // SAFETY: non-NULL; points at the caller's `ncclNetDeviceHandle_v7_t*`.
            let storage = unsafe { recv_dev_comm.read() };
            if storage.is_null() {
                return Err(SimError::NullDeviceHandleStorage);
            }
            let dh = obj.device_handle()?.ok_or(SimError::NoDeviceHandle)?;
            let v = NetDeviceHandle {
                net_device_type: net_device_type::UNPACK,
                net_device_version: NET_DEVICE_UNPACK_VERSION,
                handle: dh.cast(),
                size: core::mem::size_of::<UnpackNetDeviceHandle>(),
                needs_proxy_progress: 1,
            };
            // SAFETY: `storage` is the caller's 32-byte device-handle struct (the ABI TCPX relies
            // on: it writes `**recvDevComm`).
            unsafe { storage.write(v) };
        }
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { recv_comm.write(Box::into_raw(obj).cast()) };
        Ok(())
    })
}

/// `regMr(comm, data, size, type, &mhandle)`.
///
/// # Safety
/// `comm` is NULL or a live comm; `mhandle` NULL or writable; for `NCCL_PTR_HOST`,
/// `[data, data+size)` is memory the caller keeps valid until `deregMr`.
unsafe extern "C" fn sim_reg_mr(
    comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> NcclResult {
    run(Call::RegMr, || {
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(comm, None) }?;
        let mhandle = nonnull(mhandle, "mhandle")?;
        let size = usize::try_from(size).map_err(|_| SimError::NegativeSize {
            size: i64::from(size),
        })?;
        let addr = data as usize;
        let mem = match ptr_type {
            PTR_HOST => {
                if data.is_null() && size > 0 {
                    return Err(SimError::NullArgument { arg: "data" });
                }
                // SAFETY: regMr(NCCL_PTR_HOST) is the caller's promise that the buffer stays
                // valid until deregMr and is only touched as the requests allow.
                Memory::Host(unsafe { HostRegion::new(addr, size) })
            }
            PTR_CUDA => {
                let p = c.plugin();
                check_cuda_registration(p.config.use_dma_buf, addr)?;
                Memory::Cuda(p.memory.register_cuda(addr, size, &p.logger)?)
            }
            ty => return Err(SimError::UnknownMemType { ty }),
        };
        let id = c.register(mem)?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { mhandle.write(id as *mut c_void) };
        Ok(())
    })
}

/// `deregMr(comm, mhandle)`; a NULL `mhandle` succeeds, like TCPX.
///
/// # Safety
/// `comm` is NULL or a live comm.
unsafe extern "C" fn sim_dereg_mr(comm: *mut c_void, mhandle: *mut c_void) -> NcclResult {
    run(Call::DeregMr, || {
        if mhandle.is_null() {
            return Ok(());
        }
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(comm, None) }?;
        let in_use = c.deregister(mhandle as usize)?;
        if in_use > 0 {
            c.plugin().logger.warn(
                Call::DeregMr,
                format_args!(
                    "deregMr of a registration that {in_use} outstanding requests still use \
                     [rule: deregister after the requests finished; TCPX: frees its handle under \
                     them; rc ncclSuccess (0)]"
                ),
            );
        }
        Ok(())
    })
}

/// `isend(sendComm, data, size, tag, mhandle, &request)`; `tag` is ignored, like TCPX.
///
/// # Safety
/// `send_comm` is NULL or a live send comm; `request` NULL or writable; the buffer stays valid
/// and unmodified until `test` reports the request done.
unsafe extern "C" fn sim_isend(
    send_comm: *mut c_void,
    data: *mut c_void,
    size: c_int,
    _tag: c_int,
    mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    run(Call::Isend, || {
        let request = nonnull(request, "request")?;
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(send_comm, Some(CommKind::Send)) }?;
        if mhandle.is_null() {
            return Err(SimError::NullMhandle);
        }
        let slot = c.isend(data as usize, size, mhandle as usize)?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { request.write(request_ptr(c, slot)) };
        Ok(())
    })
}

/// `irecv(recvComm, n, data[], sizes[], tags[], mhandles[], &request)`; TCPX needs `n == 1`.
///
/// # Safety
/// `recv_comm` is NULL or a live recv comm; the arrays are NULL or hold at least `n` elements;
/// `request` NULL or writable; the buffer stays valid and untouched until the request is consumed.
unsafe extern "C" fn sim_irecv(
    recv_comm: *mut c_void,
    n: c_int,
    data: *mut *mut c_void,
    sizes: *mut c_int,
    _tags: *mut c_int,
    mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    run(Call::Irecv, || {
        if n != 1 {
            return Err(SimError::IrecvCount { n });
        }
        let request = nonnull(request, "request")?;
        let data = nonnull(data, "data")?;
        let sizes = nonnull(sizes, "sizes")?;
        let mhandles = nonnull(mhandles, "mhandles")?;
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(recv_comm, Some(CommKind::Recv)) }?;
        // SAFETY: n == 1 and the arrays are non-NULL, so each has a readable first element.
        let (d, s, mh) = unsafe { (data.read(), sizes.read(), mhandles.read()) };
        if mh.is_null() {
            return Err(SimError::NullMhandle);
        }
        let slot = c.irecv(d as usize, s, mh as usize)?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { request.write(request_ptr(c, slot)) };
        Ok(())
    })
}

/// `iflush`: always fails (TCPX reads its output argument as a request and crashes).
///
/// # Safety
/// None of the arguments is read.
unsafe extern "C" fn sim_iflush(
    _recv_comm: *mut c_void,
    _n: c_int,
    _data: *mut *mut c_void,
    _sizes: *mut c_int,
    _mhandles: *mut *mut c_void,
    _request: *mut *mut c_void,
) -> NcclResult {
    run(Call::Iflush, || Err(SimError::Iflush))
}

/// `test(request, &done, sizes)`; never writes `sizes`.
///
/// # Safety
/// `request` is NULL or a request of a live comm; `done` NULL or writable.
unsafe extern "C" fn sim_test(
    request: *mut c_void,
    done: *mut c_int,
    _sizes: *mut c_int,
) -> NcclResult {
    run(Call::Test, || {
        let request = nonnull(request, "request")?;
        let done = nonnull(done, "done")?;
        // SAFETY: non-NULL and writable per the ABI.
        unsafe { done.write(0) };
        // SAFETY: per this function's contract.
        let r = unsafe { request_ref(request) }?;
        // SAFETY: a live request handle holds the address of its live comm.
        let c = unsafe { comm_ref(r.comm_addr() as *mut c_void, None) }?;
        if c.test(r.slot())? {
            // SAFETY: as above.
            unsafe { done.write(1) };
        }
        Ok(())
    })
}

/// Shared body of closeSend/closeRecv.
///
/// # Safety
/// `comm` is NULL or a live comm of kind `kind` that no other thread uses.
unsafe fn close_comm(call: Call, comm: *mut c_void, kind: CommKind) -> NcclResult {
    run(call, || {
        if comm.is_null() {
            return Ok(());
        }
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(comm, Some(kind)) }?;
        if c.is_busy() {
            return Err(SimError::ConcurrentUse { kind });
        }
        if let Some(w) = c.close_warning() {
            c.plugin().logger.warn(call, format_args!("{w}"));
        }
        if let Some(i) = c.close_summary() {
            c.plugin()
                .logger
                .info(log_subsys::NET, call, format_args!("{i}"));
        }
        // SAFETY: `comm` came from `Box::into_raw` in connect/accept, is live (magic checked) and
        // unused by other threads (lock checked); after this call the caller no longer uses it.
        drop(unsafe { Box::from_raw(comm.cast::<CommObject>()) });
        Ok(())
    })
}

/// `closeSend(sendComm)`.
///
/// # Safety
/// `send_comm` is NULL or a live send comm that no other thread uses.
unsafe extern "C" fn sim_close_send(send_comm: *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { close_comm(Call::CloseSend, send_comm, CommKind::Send) }
}

/// `closeRecv(recvComm)`.
///
/// # Safety
/// `recv_comm` is NULL or a live recv comm that no other thread uses.
unsafe extern "C" fn sim_close_recv(recv_comm: *mut c_void) -> NcclResult {
    // SAFETY: same contract.
    unsafe { close_comm(Call::CloseRecv, recv_comm, CommKind::Recv) }
}

/// `closeListen(listenComm)`; stops a running accept thread.
///
/// # Safety
/// `listen_comm` is NULL or a live listen comm that no other thread uses.
unsafe extern "C" fn sim_close_listen(listen_comm: *mut c_void) -> NcclResult {
    run(Call::CloseListen, || {
        if listen_comm.is_null() {
            return Ok(());
        }
        // SAFETY: per this function's contract.
        let l = unsafe { listen_ref(listen_comm) }?;
        if l.is_busy() {
            return Err(SimError::ConcurrentUse {
                kind: CommKind::Listen,
            });
        }
        // SAFETY: from `Box::into_raw` in listen, live and unused by other threads (checked).
        drop(unsafe { Box::from_raw(listen_comm.cast::<ListenObject>()) });
        Ok(())
    })
}

/// `getDeviceMr`: a no-op that does not write `*dptr_mhandle`, like TCPX.
///
/// # Safety
/// None of the arguments is read.
unsafe extern "C" fn sim_get_device_mr(
    _comm: *mut c_void,
    _mhandle: *mut c_void,
    _dptr_mhandle: *mut *mut c_void,
) -> NcclResult {
    NcclResult::SUCCESS
}

/// `irecvConsumed(recvComm, n, request)`.
///
/// # Safety
/// `recv_comm` is NULL or a live recv comm; `request` NULL or a request of a live comm.
unsafe extern "C" fn sim_irecv_consumed(
    recv_comm: *mut c_void,
    n: c_int,
    request: *mut c_void,
) -> NcclResult {
    run(Call::IrecvConsumed, || {
        let request = nonnull(request, "request")?;
        if n != 1 {
            return Err(SimError::ConsumedCount { n });
        }
        // SAFETY: per this function's contract.
        let c = unsafe { comm_ref(recv_comm, Some(CommKind::Recv)) }?;
        // SAFETY: per this function's contract.
        let r = unsafe { request_ref(request) }?;
        if r.comm_addr() != recv_comm as usize {
            return Err(SimError::ConsumedInvalid { slot: r.slot() });
        }
        c.consumed(r.slot())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_tcpx_shape() {
        let t = &ncclNetPlugin_v7.0;
        // SAFETY: `name` points at a static NUL-terminated literal.
        let name = unsafe { core::ffi::CStr::from_ptr(t.name) };
        assert_eq!(name.to_str().ok(), Some(plugin::PLUGIN_NAME));
        assert!(t.reg_mr_dma_buf.is_none());
        assert!(t.init.is_some() && t.irecv_consumed.is_some() && t.iflush.is_some());
    }

    #[test]
    fn null_arguments_fail_cleanly() {
        let t = &ncclNetPlugin_v7.0;
        // SAFETY: each call passes NULL where a pointer is expected, which the entry points
        // check before any dereference.
        unsafe {
            assert_eq!((t.init.unwrap())(None), NcclResult::INTERNAL_ERROR);
            assert_eq!(
                (t.test.unwrap())(
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut()
                ),
                NcclResult::INTERNAL_ERROR
            );
            assert_eq!(
                (t.close_send.unwrap())(core::ptr::null_mut()),
                NcclResult::SUCCESS
            );
            assert_eq!(
                (t.iflush.unwrap())(
                    core::ptr::null_mut(),
                    1,
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut(),
                    core::ptr::null_mut()
                ),
                NcclResult::INTERNAL_ERROR
            );
            let mut out = core::ptr::null_mut();
            assert_eq!(
                (t.get_device_mr.unwrap())(core::ptr::null_mut(), core::ptr::null_mut(), &mut out),
                NcclResult::SUCCESS
            );
            assert!(out.is_null());
        }
    }

    #[test]
    fn foreign_pointers_are_rejected_by_magic() {
        let t = &ncclNetPlugin_v7.0;
        let mut fake = [0u64; 8];
        let mut done: c_int = 7;
        // SAFETY: `fake` is a live, aligned buffer bigger than the magic the entry points read.
        unsafe {
            assert_eq!(
                (t.test.unwrap())(fake.as_mut_ptr().cast(), &mut done, core::ptr::null_mut()),
                NcclResult::INVALID_ARGUMENT
            );
            assert_eq!(done, 0);
            assert_eq!(
                (t.close_recv.unwrap())(fake.as_mut_ptr().cast()),
                NcclResult::INVALID_ARGUMENT
            );
        }
    }
}
