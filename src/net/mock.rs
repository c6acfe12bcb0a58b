//! Test support (compiled only for unit tests): an in-process mock `ncclNet_v7_t` and a
//! per-thread allocation counter.
//!
//! The mock keeps no global state: comms are heap objects, requests live inside their comm,
//! and setup/close events go to a thread-local log (each test runs on its own thread).
//! Behaviour is picked by inputs:
//! * `connect` needs three calls on the *same* handle buffer (it counts in `handle[100]`);
//!   `handle[1] == 0xEE` makes it fail with `ncclSystemError`, `handle[2] == 0xFF` never
//!   completes.
//! * `listen(dev)`: dev 0 accepts normally (and fills an UNPACK v7 device handle pointing at
//!   host memory), dev 1's accept fails, dev 2's accept never completes.
//! * A request completes on its second `test`; the hot path of the mock does not allocate.

use core::cell::{Cell, RefCell};
use core::ffi::{c_int, c_void};
use core::ptr;
use std::alloc::{GlobalAlloc, Layout, System};

use super::abi::{
    net_device_type, DebugLogger, NcclResult, NetDeviceHandle, NetPluginV7, NetProperties,
    UnpackNetDeviceHandle, NET_DEVICE_UNPACK_VERSION,
};

/// Requests a mock comm can hold (more than the loader's table, so the loader's limit shows).
const MOCK_REQUESTS: usize = 64;

thread_local! {
    static LOG: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

/// Counts allocations per thread, forwarding to the system allocator.
pub(crate) struct CountingAllocator;

// SAFETY: forwards every call unchanged to `System`; the counter is a const-initialised
// thread-local Cell (no lazy init, no destructor), so counting never allocates or recurses.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(p, layout, new_size) }
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, layout) }
    }
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations made by this thread so far.
pub(crate) fn allocations() -> usize {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

/// Takes this thread's event log.
pub(crate) fn take_log() -> Vec<&'static str> {
    LOG.with(|l| core::mem::take(&mut *l.borrow_mut()))
}

fn log(event: &'static str) {
    LOG.with(|l| l.borrow_mut().push(event));
}

#[derive(Clone, Copy)]
struct MockRequest {
    busy: bool,
    recv: bool,
    tests_left: u32,
    done: bool,
}

struct MockComm {
    requests: [MockRequest; MOCK_REQUESTS],
}

struct MockListen {
    dev: c_int,
}

static UNPACK: SyncUnpack = SyncUnpack(UnpackNetDeviceHandle {
    meta: 0x1000 as *mut _,
    bounce_buf: 0x2000 as *mut c_void,
    head: u64::MAX,
});

struct SyncUnpack(UnpackNetDeviceHandle);
// SAFETY: immutable plain data; its pointers are fake addresses, never dereferenced.
unsafe impl Sync for SyncUnpack {}

/// The mock table; with `init_ok == false` its `init` logs a warning and fails.
pub(crate) fn table(init_ok: bool) -> NetPluginV7 {
    NetPluginV7 {
        name: c"mock_v7".as_ptr(),
        init: Some(if init_ok { init } else { init_fails }),
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
        close_send: Some(close_send),
        close_recv: Some(close_recv),
        close_listen: Some(close_listen),
        get_device_mr: None,
        irecv_consumed: Some(irecv_consumed),
    }
}

unsafe extern "C" fn init(logger: Option<DebugLogger>) -> NcclResult {
    if logger.is_none() {
        return NcclResult::INVALID_ARGUMENT;
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn init_fails(logger: Option<DebugLogger>) -> NcclResult {
    if let Some(log) = logger {
        // SAFETY: the loader's shim; a valid format with a matching argument.
        unsafe {
            log(
                2,
                0x1,
                c"init_fails".as_ptr(),
                1,
                c"mock init refusing: %d".as_ptr(),
                3 as c_int,
            )
        };
    }
    NcclResult::INTERNAL_ERROR
}

unsafe extern "C" fn devices(n: *mut c_int) -> NcclResult {
    // SAFETY: the loader passes a writable int.
    unsafe { n.write(3) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn get_properties(dev: c_int, p: *mut NetProperties) -> NcclResult {
    if !(0..3).contains(&dev) {
        return NcclResult::INVALID_ARGUMENT;
    }
    let mut props = NetProperties::zeroed();
    props.name = c"mock0".as_ptr().cast_mut();
    props.pci_path = if dev == 0 {
        c"/sys/devices/pci0000:00/0000:00:04.0".as_ptr().cast_mut()
    } else {
        ptr::null_mut()
    };
    props.guid = dev as u64;
    props.ptr_support = 1;
    props.speed = 100_000;
    props.max_comms = 65536;
    props.max_recvs = 1;
    props.net_device_type = net_device_type::UNPACK;
    props.net_device_version = NET_DEVICE_UNPACK_VERSION;
    // SAFETY: the loader passes a writable struct.
    unsafe { p.write(props) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn listen(dev: c_int, handle: *mut c_void, comm: *mut *mut c_void) -> NcclResult {
    log("listen");
    // SAFETY: the loader passes 128 writable bytes and a writable pointer slot.
    unsafe {
        handle.cast::<u8>().write(0xAB);
        comm.write(Box::into_raw(Box::new(MockListen { dev })).cast());
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn connect(
    _dev: c_int,
    handle: *mut c_void,
    comm: *mut *mut c_void,
    _dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    let h = handle.cast::<u8>();
    // SAFETY: the loader passes the same 128 writable bytes on every retry.
    unsafe {
        if *h.add(1) == 0xEE {
            return NcclResult::SYSTEM_ERROR;
        }
        comm.write(ptr::null_mut());
        if *h.add(2) == 0xFF {
            return NcclResult::SUCCESS;
        }
        if *h.add(100) < 2 {
            *h.add(100) += 1;
            return NcclResult::SUCCESS;
        }
        log("connect");
        comm.write(new_comm());
    }
    NcclResult::SUCCESS
}

fn new_comm() -> *mut c_void {
    let idle = MockRequest {
        busy: false,
        recv: false,
        tests_left: 0,
        done: false,
    };
    Box::into_raw(Box::new(MockComm {
        requests: [idle; MOCK_REQUESTS],
    }))
    .cast()
}

unsafe extern "C" fn accept(
    listen: *mut c_void,
    comm: *mut *mut c_void,
    dev_comm: *mut *mut NetDeviceHandle,
) -> NcclResult {
    // SAFETY: `listen` came from our listen; the slots are writable; `*dev_comm` points at
    // caller storage (the v7 contract TCPX relies on).
    unsafe {
        comm.write(ptr::null_mut());
        match (*listen.cast::<MockListen>()).dev {
            1 => return NcclResult::SYSTEM_ERROR,
            2 => return NcclResult::SUCCESS,
            _ => {}
        }
        log("accept");
        (*dev_comm).write(NetDeviceHandle {
            net_device_type: net_device_type::UNPACK,
            net_device_version: NET_DEVICE_UNPACK_VERSION,
            handle: ptr::addr_of!(UNPACK.0).cast_mut().cast(),
            size: core::mem::size_of::<UnpackNetDeviceHandle>(),
            needs_proxy_progress: 1,
        });
        comm.write(new_comm());
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn reg_mr(
    _comm: *mut c_void,
    data: *mut c_void,
    _size: c_int,
    _type: c_int,
    mhandle: *mut *mut c_void,
) -> NcclResult {
    log("regMr");
    // SAFETY: writable slot.
    unsafe { mhandle.write(data) };
    NcclResult::SUCCESS
}

unsafe extern "C" fn dereg_mr(_comm: *mut c_void, _mhandle: *mut c_void) -> NcclResult {
    log("deregMr");
    NcclResult::SUCCESS
}

/// Posts a request on a mock comm (no allocation).
///
/// # Safety
///
/// `comm` is a live mock comm, `request` writable.
unsafe fn post(comm: *mut c_void, recv: bool, request: *mut *mut c_void) -> NcclResult {
    // SAFETY: the caller passes a live mock comm, used by one thread at a time.
    let comm = unsafe { &mut *comm.cast::<MockComm>() };
    let Some(r) = comm.requests.iter_mut().find(|r| !r.busy) else {
        return NcclResult::INTERNAL_ERROR;
    };
    *r = MockRequest {
        busy: true,
        recv,
        tests_left: 1,
        done: false,
    };
    // SAFETY: writable slot.
    unsafe { request.write(ptr::from_mut(r).cast()) };
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
    // SAFETY: the loader passes its open comm and a writable slot.
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
    // SAFETY: as for isend.
    unsafe { post(comm, true, request) }
}

unsafe extern "C" fn test(
    request: *mut c_void,
    done: *mut c_int,
    _sizes: *mut c_int,
) -> NcclResult {
    // SAFETY: the loader passes an outstanding request of ours and a writable int.
    unsafe {
        let r = &mut *request.cast::<MockRequest>();
        if !r.busy || r.done {
            return NcclResult::INTERNAL_ERROR;
        }
        if r.tests_left > 0 {
            r.tests_left -= 1;
            done.write(0);
        } else {
            done.write(1);
            if r.recv {
                r.done = true;
            } else {
                r.busy = false;
            }
        }
    }
    NcclResult::SUCCESS
}

unsafe extern "C" fn irecv_consumed(
    _comm: *mut c_void,
    n: c_int,
    request: *mut c_void,
) -> NcclResult {
    // SAFETY: the loader passes a request of ours.
    let r = unsafe { &mut *request.cast::<MockRequest>() };
    if n != 1 || !r.recv || !r.done {
        return NcclResult::INTERNAL_ERROR;
    }
    r.busy = false;
    r.done = false;
    NcclResult::SUCCESS
}

unsafe extern "C" fn close_send(comm: *mut c_void) -> NcclResult {
    log("closeSend");
    // SAFETY: from Box::into_raw in new_comm; closed once.
    drop(unsafe { Box::from_raw(comm.cast::<MockComm>()) });
    NcclResult::SUCCESS
}

unsafe extern "C" fn close_recv(comm: *mut c_void) -> NcclResult {
    log("closeRecv");
    // SAFETY: from Box::into_raw in new_comm; closed once.
    drop(unsafe { Box::from_raw(comm.cast::<MockComm>()) });
    NcclResult::SUCCESS
}

unsafe extern "C" fn close_listen(comm: *mut c_void) -> NcclResult {
    log("closeListen");
    // SAFETY: from Box::into_raw in listen; closed once.
    drop(unsafe { Box::from_raw(comm.cast::<MockListen>()) });
    NcclResult::SUCCESS
}
