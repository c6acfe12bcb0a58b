//! The null plugin: an in-process `ncclNet_v7_t` that moves no bytes, for measuring the engine
//! itself (`tcpx-bench engine`) and for tests that need comms without sockets.
//!
//! * one device, `null0`, host and CUDA pointers, no unpack (device type HOST);
//! * `listen` fills a handle; `connect` and `accept` complete on their first call, no peer
//!   needed (a connect is not paired with any accept);
//! * `isend`/`irecv` take one of the comm's 16 request slots (a 17th is `ncclInternalError`,
//!   as on TCPX) and complete on their first `test`; sends free their slot there, receives at
//!   `irecvConsumed`;
//! * nothing on the request path allocates or locks.
//!
//! Safety: the entry points are private `unsafe extern "C" fn`s reached only through the table
//! [`plugin`] hands the loader. Each one's contract is its `ncclNet_v7_t` slot's, as the loader
//! keeps it (`super::comm`): out-pointers are null or writable, comms are ones this plugin
//! returned and not yet closed, requests are outstanding ones of that comm. Each checks for
//! null where the loader could pass it and says why the rest holds in its `// SAFETY:` comments.
//!
//! ```
//! use std::time::{Duration, Instant};
//! let plugin = tcpx::net::null::plugin().unwrap();
//! let deadline = Instant::now() + Duration::from_secs(1);
//! let listen = plugin.listen(0).unwrap();
//! let recv = listen.accept(deadline).unwrap();
//! let send = plugin.connect(0, &[0; 128], deadline).unwrap();
//! # let _ = (send, recv);
//! ```

use core::cell::Cell;
use core::ffi::{c_char, c_int, c_void};
use core::ptr;
use std::sync::Arc;

use super::abi::{
    net_device_type, DebugLogger, NcclResult, NetDeviceHandle, NetPluginV7, NetProperties,
    MAX_REQUESTS, PTR_CUDA, PTR_HOST,
};
use super::{Plugin, PluginError};

/// The null plugin, initialised (`init` is a no-op that always succeeds).
pub fn plugin() -> Result<Arc<Plugin>, PluginError> {
    // SAFETY: TABLE is a complete, 'static v7 table whose functions follow the v7 contract.
    unsafe { Plugin::from_static(&TABLE.0, "null (in-process)") }
}

struct SyncTable(NetPluginV7);
// SAFETY: the table is immutable; its only pointer is to a 'static C string.
unsafe impl Sync for SyncTable {}

static TABLE: SyncTable = SyncTable(NetPluginV7 {
    name: c"null".as_ptr(),
    init: Some(init),
    devices: Some(devices),
    get_properties: Some(get_properties),
    listen: Some(listen),
    connect: Some(connect),
    accept: Some(accept),
    reg_mr: Some(reg_mr),
    reg_mr_dma_buf: None,
    dereg_mr: Some(dereg_mr),
    isend: Some(isend),
    irecv: Some(irecv),
    iflush: None,
    test: Some(test),
    close_send: Some(close),
    close_recv: Some(close),
    close_listen: Some(close_listen),
    get_device_mr: None,
    irecv_consumed: Some(irecv_consumed),
});

const NAME: &core::ffi::CStr = c"null0";

/// A request slot; the request pointer handed out is the slot's address.
struct Slot {
    comm: *const NullComm,
    busy: Cell<bool>,
    recv: Cell<bool>,
}

/// A comm: its request slots. Boxed; the slots point back at it.
struct NullComm {
    slots: [Slot; MAX_REQUESTS],
}

fn new_comm() -> *mut c_void {
    let comm = Box::into_raw(Box::new(NullComm {
        slots: core::array::from_fn(|_| Slot {
            comm: ptr::null(),
            busy: Cell::new(false),
            recv: Cell::new(false),
        }),
    }));
    // SAFETY: `comm` was just allocated and is exclusively ours here.
    for s in unsafe { &mut (*comm).slots } {
        s.comm = comm;
    }
    comm.cast()
}

unsafe extern "C" fn init(_logger: Option<DebugLogger>) -> NcclResult {
    NcclResult::SUCCESS
}

unsafe extern "C" fn devices(n: *mut c_int) -> NcclResult {
    if n.is_null() {
        return NcclResult::INTERNAL_ERROR;
    }
    // SAFETY: non-NULL out pointer from the caller.
    unsafe { n.write(1) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn get_properties(dev: c_int, props: *mut NetProperties) -> NcclResult {
    if dev != 0 || props.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    let p = NetProperties {
        name: NAME.as_ptr().cast_mut(),
        pci_path: ptr::null_mut::<c_char>(),
        guid: 0,
        ptr_support: PTR_HOST | PTR_CUDA,
        speed: 400_000,
        port: 0,
        latency: 0.0,
        max_comms: 65536,
        max_recvs: 1,
        net_device_type: net_device_type::HOST,
        net_device_version: 0,
    };
    // SAFETY: non-NULL out pointer to a v7 properties struct.
    unsafe { props.write(p) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn listen(dev: c_int, handle: *mut c_void, comm: *mut *mut c_void) -> NcclResult {
    if dev != 0 || handle.is_null() || comm.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: the handle is a 128-byte caller buffer; `comm` a writable pointer slot. The
    // listen comm is a token that is never dereferenced, only freed by close_listen.
    unsafe {
        ptr::write_bytes(handle.cast::<u8>(), 0x4e, 128);
        comm.write(Box::into_raw(Box::new(0u8)).cast());
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn connect(
    _dev: c_int,
    handle: *mut c_void,
    comm: *mut *mut c_void,
    _dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    if handle.is_null() || comm.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: writable pointer slot from the caller.
    unsafe { comm.write(new_comm()) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn accept(
    listen: *mut c_void,
    comm: *mut *mut c_void,
    _dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    if listen.is_null() || comm.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: writable pointer slot from the caller.
    unsafe { comm.write(new_comm()) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn reg_mr(
    comm: *mut c_void,
    _data: *mut c_void,
    _size: c_int,
    _ptr_type: c_int,
    mhandle: *mut *mut c_void,
) -> NcclResult {
    if comm.is_null() || mhandle.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: writable pointer slot; the handle is a non-NULL token never dereferenced.
    unsafe { mhandle.write(comm) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn dereg_mr(_comm: *mut c_void, _mhandle: *mut c_void) -> NcclResult {
    NcclResult::SUCCESS
}

/// Take a free slot of `comm`.
///
/// # Safety
///
/// `comm` is a live comm from `connect`/`accept`; `request` a writable pointer slot.
unsafe fn post(comm: *mut c_void, recv: bool, request: *mut *mut c_void) -> NcclResult {
    if comm.is_null() || request.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: per the contract, a live NullComm; accessed from one thread at a time (v7).
    let comm = unsafe { &*comm.cast::<NullComm>() };
    let Some(slot) = comm.slots.iter().find(|s| !s.busy.get()) else {
        return NcclResult::INTERNAL_ERROR; // TCPX: "unable to allocate requests"
    };
    slot.busy.set(true);
    slot.recv.set(recv);
    // SAFETY: writable pointer slot from the caller.
    unsafe { request.write(ptr::from_ref(slot).cast_mut().cast()) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn isend(
    comm: *mut c_void,
    _data: *mut c_void,
    _size: c_int,
    _tag: c_int,
    _mhandle: *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    // SAFETY: forwarded contract of `isend`.
    unsafe { post(comm, false, request) }
}

unsafe extern "C" fn irecv(
    comm: *mut c_void,
    n: c_int,
    _data: *mut *mut c_void,
    _sizes: *mut c_int,
    _tags: *mut c_int,
    _mhandles: *mut *mut c_void,
    request: *mut *mut c_void,
) -> NcclResult {
    if n != 1 {
        return NcclResult::INTERNAL_ERROR;
    }
    // SAFETY: forwarded contract of `irecv`.
    unsafe { post(comm, true, request) }
}

unsafe extern "C" fn test(
    request: *mut c_void,
    done: *mut c_int,
    _sizes: *mut c_int,
) -> NcclResult {
    if request.is_null() || done.is_null() {
        return NcclResult::INVALID_ARGUMENT;
    }
    // SAFETY: a request pointer is a slot of a live comm (v7 contract: requests are tested
    // only while their comm is open).
    let slot = unsafe { &*request.cast::<Slot>() };
    if !slot.recv.get() {
        slot.busy.set(false);
    }
    // SAFETY: non-NULL out pointer.
    unsafe { done.write(1) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn irecv_consumed(
    comm: *mut c_void,
    n: c_int,
    request: *mut c_void,
) -> NcclResult {
    if comm.is_null() || request.is_null() || n != 1 {
        return NcclResult::INTERNAL_ERROR;
    }
    // SAFETY: as in `test`.
    let slot = unsafe { &*request.cast::<Slot>() };
    if !ptr::eq(slot.comm, comm.cast::<NullComm>()) || !slot.recv.get() {
        return NcclResult::INTERNAL_ERROR;
    }
    slot.busy.set(false);
    NcclResult::SUCCESS
}

unsafe extern "C" fn close(comm: *mut c_void) -> NcclResult {
    if !comm.is_null() {
        // SAFETY: from `new_comm` (Box::into_raw), closed exactly once (v7 contract).
        drop(unsafe { Box::from_raw(comm.cast::<NullComm>()) });
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn close_listen(comm: *mut c_void) -> NcclResult {
    if !comm.is_null() {
        // SAFETY: from `listen` (Box::into_raw of a u8), closed exactly once.
        drop(unsafe { Box::from_raw(comm.cast::<u8>()) });
    }
    NcclResult::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{HostBuffer, TestResult};
    use std::time::{Duration, Instant};

    #[test]
    fn requests_complete_at_first_test_and_the_17th_is_refused() {
        let plugin = plugin().unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let send = plugin.connect(0, &[0; 128], deadline).unwrap();
        let recv = plugin.listen(0).unwrap().accept(deadline).unwrap();
        let buf = Arc::new(HostBuffer::new(4096).unwrap());
        let (smh, rmh) = (
            send.register(buf.clone()).unwrap(),
            recv.register(buf).unwrap(),
        );
        let reqs: Vec<_> = (0..16).map(|_| recv.irecv(&rmh, 0, 64).unwrap()).collect();
        assert!(
            recv.irecv(&rmh, 0, 64).is_err(),
            "a 17th request must be refused"
        );
        for r in reqs {
            assert_eq!(recv.test(r).unwrap(), TestResult::Done);
            recv.irecv_consumed(r).unwrap();
        }
        let s = send.isend(&smh, 0, 4096).unwrap();
        assert_eq!(send.test(s).unwrap(), TestResult::Done);
    }
}
