//! Comms: [`ListenComm`], [`SendComm`], [`RecvComm`] — RAII owners of the plugin's comm
//! pointers — and the hot path on them ([`SendComm::isend`], [`RecvComm::irecv`],
//! [`SendComm::test`] / [`RecvComm::test`], [`RecvComm::irecv_consumed`]).
//!
//! Invariants:
//! * A comm is closed exactly once: `closeListen` / `closeSend` / `closeRecv` on drop or
//!   [`close`](SendComm::close). Before `closeSend`/`closeRecv`, every registration still held
//!   is deregistered; the registered regions are released only after the close returned, so
//!   no request can outlive the memory it reads or writes.
//! * Each comm tracks its outstanding requests in a fixed table of [`REQUEST_TABLE_CAPACITY`]
//!   entries (NCCL's `NCCL_NET_MAX_REQUESTS`; TCPX itself allows 16 and answers the 17th with
//!   `ncclInternalError`, which the loader passes through). Only requests in the table are ever
//!   handed to the plugin, so a stale or foreign [`Request`] is an error, never UB.
//! * Send requests leave the table when `test` reports done; receive requests when
//!   `irecvConsumed` succeeds (TCPX holds their slot until then). `irecvConsumed` before
//!   `test` reported done is refused by the loader ([`PluginError::NotDone`]).
//! * The hot path (`isend`, `irecv`, `test`, `irecv_consumed`) takes no lock, does not
//!   allocate and does not log.
//! * Comms are `Send` (they may move to a progress thread) but not `Sync`: TCPX comms are not
//!   thread-safe, so one thread at a time uses a comm. On TCPX the calling thread's current
//!   CUDA device matters for `listen`/`connect`/`accept`/`regMr`.
//!
//! ```compile_fail,E0277
//! fn needs_sync<T: Sync>() {}
//! needs_sync::<tcpx::net::SendComm>(); // comms are not Sync
//! ```
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tcpx::net::{HostBuffer, Plugin, TestResult};
//! let plugin = Plugin::load("libnccl-net.so")?;
//! # let peer_handle = [0u8; 128];
//! let send = plugin.connect(0, &peer_handle, Instant::now() + Duration::from_secs(30))?;
//! let buf = Arc::new(HostBuffer::new(1 << 20)?);
//! let mh = send.register(buf)?;
//! let req = send.isend(&mh, 0, 4096)?;
//! while send.test(req)? == TestResult::Pending {}
//! # Ok::<(), tcpx::net::PluginError>(())
//! ```

use core::cell::Cell;
use core::ffi::{c_int, c_void};
use core::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::abi::{
    net_device_type, NcclResult, NetDeviceHandle, NetHandle, UnpackNetDeviceHandle,
    NET_DEVICE_UNPACK_VERSION,
};
use super::error::{Call, PluginError};
use super::mem::{AccessState, MemHandle, Region};
use super::plugin::{check, retry_until, slot, Plugin};

/// Capacity of a comm's request table (NCCL's `NCCL_NET_MAX_REQUESTS`).
pub const REQUEST_TABLE_CAPACITY: usize = 32;

/// The tag passed to `isend`/`irecv`; TCPX ignores tags and matches in FIFO order.
const TAG: c_int = 0;

static NEXT_COMM_ID: AtomicU64 = AtomicU64::new(1);

/// An outstanding request of one comm: the plugin's `void*` plus the table entry it occupies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    ptr: *mut c_void,
    comm_id: u64,
    gen: u32,
    index: u16,
}

// SAFETY: a token: the pointer is never dereferenced by this crate; it is handed back to the
// plugin only through the comm that created it, after checking it is still outstanding there.
unsafe impl Send for Request {}
// SAFETY: as for Send.
unsafe impl Sync for Request {}

impl Request {
    /// The plugin's request pointer.
    pub fn as_raw(&self) -> *mut c_void {
        self.ptr
    }
}

/// What `test` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TestResult {
    /// The request completed: for a send the buffer may be reused; for a receive the data is
    /// in place (host memory) or in the bounce pool (TCPX, to be unpacked), and the request
    /// still needs [`RecvComm::irecv_consumed`].
    Done,
    /// Not yet; keep calling `test` (all TCPX progress happens inside it).
    Pending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Pending,
    /// A receive `test` reported done, waiting for `irecvConsumed`.
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    ptr: *mut c_void,
    gen: u32,
    state: State,
    /// The region's in-flight accounting (NULL if none); `end_io` once the request is done.
    access: *const AccessState,
}

const FREE: Entry = Entry {
    ptr: ptr::null_mut(),
    gen: 0,
    state: State::Free,
    access: ptr::null(),
};

/// The outstanding requests of a comm (fixed size: the hot path never allocates).
struct Requests {
    entries: [Cell<Entry>; REQUEST_TABLE_CAPACITY],
    next_gen: Cell<u32>,
    pending: Cell<usize>,
}

impl Requests {
    fn new() -> Self {
        Self {
            entries: core::array::from_fn(|_| Cell::new(FREE)),
            next_gen: Cell::new(0),
            pending: Cell::new(0),
        }
    }

    fn free_index(&self, call: Call) -> Result<usize, PluginError> {
        self.entries
            .iter()
            .position(|e| e.get().state == State::Free)
            .ok_or(PluginError::TooManyRequests {
                call,
                limit: REQUEST_TABLE_CAPACITY,
            })
    }

    fn insert(
        &self,
        index: usize,
        ptr: *mut c_void,
        comm_id: u64,
        access: *const AccessState,
    ) -> Request {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        if let Some(e) = self.entries.get(index) {
            e.set(Entry {
                ptr,
                gen,
                state: State::Pending,
                access,
            });
        }
        self.pending.set(self.pending.get() + 1);
        // `index` < REQUEST_TABLE_CAPACITY (32), so it fits u16.
        Request {
            ptr,
            comm_id,
            gen,
            index: index as u16,
        }
    }

    /// The index and entry of an outstanding request of this comm.
    fn find(&self, call: Call, req: Request, comm_id: u64) -> Result<(usize, Entry), PluginError> {
        if req.comm_id != comm_id {
            return Err(PluginError::WrongComm { call });
        }
        let index = usize::from(req.index);
        match self.entries.get(index).map(Cell::get) {
            Some(e) if e.state != State::Free && e.gen == req.gen && e.ptr == req.ptr => {
                Ok((index, e))
            }
            _ => Err(PluginError::UnknownRequest { call }),
        }
    }

    fn set_state(&self, index: usize, state: State) {
        if let Some(e) = self.entries.get(index) {
            let old = e.get();
            if old.state == State::Pending && state != State::Pending {
                self.pending.set(self.pending.get().saturating_sub(1));
                end_io(old.access);
            }
            e.set(if state == State::Free {
                FREE
            } else {
                Entry { state, ..old }
            });
        }
    }

    fn outstanding(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.get().state != State::Free)
            .count()
    }
}

/// A region registered with a comm; the `Arc` keeps it alive until deregistration or close.
struct Registration {
    id: u64,
    mhandle: *mut c_void,
    /// `false` once `deregMr` was called on it (even if it failed).
    registered: bool,
    _region: Arc<dyn Region>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Send,
    Recv,
}

/// What send and receive comms share: the pointer, the request table, the registrations.
struct Comm {
    plugin: Arc<Plugin>,
    raw: NonNull<c_void>,
    dev: usize,
    id: u64,
    side: Side,
    open: bool,
    requests: Requests,
    registrations: Cell<Vec<Registration>>,
    next_registration: Cell<u64>,
}

impl Comm {
    fn new(plugin: Arc<Plugin>, raw: NonNull<c_void>, dev: usize, side: Side) -> Self {
        Self {
            plugin,
            raw,
            dev,
            id: NEXT_COMM_ID.fetch_add(1, Ordering::Relaxed),
            side,
            open: true,
            requests: Requests::new(),
            registrations: Cell::new(Vec::new()),
            next_registration: Cell::new(1),
        }
    }

    fn register(&self, region: Arc<dyn Region>) -> Result<MemHandle, PluginError> {
        let reg_mr = slot(self.plugin.table().reg_mr, Call::RegMr)?;
        let (base, len, kind) = (region.as_ptr(), region.len(), region.kind());
        let region_access: *const AccessState = region
            .access_state()
            .map_or(ptr::null(), |a| a as *const AccessState);
        let size = c_int::try_from(len).map_err(|_| PluginError::TooLarge {
            call: Call::RegMr,
            len,
        })?;
        let mut mhandle: *mut c_void = ptr::null_mut();
        // SAFETY: the comm is open (closing needs `&mut`/drop); `base..base+len` is memory of
        // `kind` that the Arc stored below keeps alive until after deregMr or close.
        let rc = unsafe {
            reg_mr(
                self.raw.as_ptr(),
                base.cast(),
                size,
                kind.ptr_type(),
                &mut mhandle,
            )
        };
        check(Call::RegMr, rc)?;
        let id = self.next_registration.get();
        self.next_registration.set(id + 1);
        let mut regs = self.registrations.take();
        regs.push(Registration {
            id,
            mhandle,
            registered: true,
            _region: region,
        });
        self.registrations.set(regs);
        Ok(MemHandle {
            comm_id: self.id,
            reg_id: id,
            mhandle,
            base,
            len,
            kind,
            access: region_access,
        })
    }

    fn deregister(&self, mh: MemHandle) -> Result<(), PluginError> {
        if mh.comm_id != self.id {
            return Err(PluginError::WrongComm {
                call: Call::DeregMr,
            });
        }
        let pending = self.requests.pending.get();
        if pending > 0 {
            return Err(PluginError::Busy {
                call: Call::DeregMr,
                pending,
            });
        }
        let dereg_mr = slot(self.plugin.table().dereg_mr, Call::DeregMr)?;
        let mut regs = self.registrations.take();
        let Some(i) = regs.iter().position(|r| r.id == mh.reg_id && r.registered) else {
            self.registrations.set(regs);
            return Err(PluginError::WrongComm {
                call: Call::DeregMr,
            });
        };
        // SAFETY: `mhandle` came from regMr on this open comm and was not deregistered yet; no
        // request is pending, so the plugin no longer touches the region.
        let rc = unsafe { dereg_mr(self.raw.as_ptr(), regs[i].mhandle) };
        let released = if rc.is_success() {
            Some(regs.swap_remove(i))
        } else {
            // Keep the region alive until close: the plugin may still hold it.
            regs[i].registered = false;
            None
        };
        self.registrations.set(regs);
        drop(released);
        check(Call::DeregMr, rc)
    }

    /// Checks a post: the handle is ours, the range fits, the table has room.
    fn prepare(
        &self,
        call: Call,
        mh: &MemHandle,
        offset: usize,
        len: usize,
    ) -> Result<(*mut c_void, c_int, usize), PluginError> {
        if mh.comm_id != self.id {
            return Err(PluginError::WrongComm { call });
        }
        let (data, size) = mh.range(call, offset, len)?;
        let index = self.requests.free_index(call)?;
        if !begin_io(mh.access) {
            return Err(PluginError::Locked { call });
        }
        Ok((data, size, index))
    }

    /// Records a post that `prepare` admitted; on any failure the in-flight count it took is
    /// given back.
    fn posted(
        &self,
        call: Call,
        mh: &MemHandle,
        index: usize,
        rc: NcclResult,
        req: *mut c_void,
    ) -> Result<Request, PluginError> {
        if let Err(e) = check(call, rc) {
            end_io(mh.access);
            return Err(e);
        }
        if req.is_null() {
            end_io(mh.access);
            return Err(PluginError::NoRequest { call });
        }
        Ok(self.requests.insert(index, req, self.id, mh.access))
    }

    fn test(&self, req: Request) -> Result<TestResult, PluginError> {
        let (index, entry) = self.requests.find(Call::Test, req, self.id)?;
        if entry.state == State::Done {
            return Ok(TestResult::Done);
        }
        let test = slot(self.plugin.table().test, Call::Test)?;
        let mut done: c_int = 0;
        // TCPX never writes sizes; other plugins write at most n (= 1) entries.
        let mut sizes: [c_int; 1] = [0];
        // SAFETY: `entry.ptr` is a request the plugin returned on this open comm that is still
        // outstanding (checked against the table); `done` and `sizes` are writable locals.
        let rc = unsafe { test(entry.ptr, &mut done, sizes.as_mut_ptr()) };
        check(Call::Test, rc)?;
        if done == 0 {
            return Ok(TestResult::Pending);
        }
        let next = match self.side {
            Side::Send => State::Free,
            Side::Recv => State::Done,
        };
        self.requests.set_state(index, next);
        Ok(TestResult::Done)
    }

    /// Deregisters what is left, closes the comm, then releases the regions. Idempotent.
    fn close(&mut self) -> Result<(), PluginError> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        let outstanding = self.requests.outstanding();
        if outstanding > 0 {
            tracing::debug!(target: "tcpx::net", dev = self.dev, outstanding, "closing a comm with outstanding requests");
        }
        let regs = self.registrations.take();
        let mut first_error = None;
        if let Some(dereg_mr) = self.plugin.table().dereg_mr {
            for r in regs.iter().filter(|r| r.registered) {
                // SAFETY: `mhandle` came from regMr on this comm, which is still open, and was
                // not deregistered.
                let rc = unsafe { dereg_mr(self.raw.as_ptr(), r.mhandle) };
                if let Err(e) = check(Call::DeregMr, rc) {
                    first_error.get_or_insert(e);
                }
            }
        }
        let (call, close) = match self.side {
            Side::Send => (Call::CloseSend, self.plugin.table().close_send),
            Side::Recv => (Call::CloseRecv, self.plugin.table().close_recv),
        };
        match slot(close, call) {
            Ok(close) => {
                // SAFETY: the comm came from connect/accept and is closed exactly once (`open`).
                let rc = unsafe { close(self.raw.as_ptr()) };
                if let Err(e) = check(call, rc) {
                    first_error.get_or_insert(e);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        // The plugin stopped using the regions when the comm closed: requests still pending are
        // no longer in flight, and only now may the regions go.
        for e in &self.requests.entries {
            if e.get().state == State::Pending {
                end_io(e.get().access);
            }
            e.set(FREE);
        }
        drop(regs);
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(target: "tcpx::net", dev = self.dev, "closing a comm: {e}");
        }
    }
}

/// A listening comm from [`Plugin::listen`]; `closeListen` on drop.
pub struct ListenComm {
    plugin: Arc<Plugin>,
    raw: NonNull<c_void>,
    dev: usize,
    handle: NetHandle,
    close_on_drop: bool,
}

// SAFETY: the listen comm is a heap object of the plugin, not tied to the creating thread;
// `ListenComm` is not Sync (NonNull), so one thread at a time uses it.
unsafe impl Send for ListenComm {}

impl core::fmt::Debug for ListenComm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ListenComm")
            .field("raw", &self.raw)
            .field("dev", &self.dev)
            .finish()
    }
}

impl ListenComm {
    pub(crate) fn new(
        plugin: Arc<Plugin>,
        raw: NonNull<c_void>,
        dev: usize,
        handle: NetHandle,
    ) -> Self {
        Self {
            plugin,
            raw,
            dev,
            handle,
            close_on_drop: true,
        }
    }

    /// The 128-byte handle the peer passes to [`Plugin::connect`].
    pub fn handle(&self) -> &NetHandle {
        &self.handle
    }

    /// The device index.
    pub fn dev(&self) -> usize {
        self.dev
    }

    /// The plugin's listen-comm pointer.
    pub fn as_raw(&self) -> *mut c_void {
        self.raw.as_ptr()
    }

    /// `accept` the one connection of this listen comm (TCPX allows one accept per listen comm,
    /// hence `self` by value), retrying until the comm appears, `accept` fails, or `deadline`
    /// passes ([`PluginError::Timeout`]).
    ///
    /// The plugin writes the receive device handle into storage owned by the returned
    /// [`RecvComm`] (boxed, stable address). `closeListen` runs after `accept` succeeded or
    /// failed; on timeout the listen comm and the device-handle storage are leaked instead,
    /// because the plugin's accept thread may still use them.
    pub fn accept(mut self, deadline: Instant) -> Result<RecvComm, PluginError> {
        let accept = slot(self.plugin.table().accept, Call::Accept)?;
        let storage = NonNull::from(Box::leak(Box::new(NetDeviceHandle::zeroed())));
        let mut dev_handle: *mut NetDeviceHandle = storage.as_ptr();
        let listen = self.raw.as_ptr();
        let result = retry_until(Call::Accept, self.dev, deadline, || {
            let mut comm: *mut c_void = ptr::null_mut();
            // SAFETY: the listen comm is open (we own it); `comm` and `dev_handle` are writable
            // pointer slots; `dev_handle` points at our 32-byte device-handle storage, which
            // stays allocated until the RecvComm is dropped (or forever on timeout).
            let rc = unsafe { accept(listen, &mut comm, &mut dev_handle) };
            if !rc.is_success() {
                return Err(PluginError::DeviceCall {
                    call: Call::Accept,
                    dev: self.dev,
                    rc,
                });
            }
            Ok(NonNull::new(comm))
        });
        match result {
            Ok(comm) => {
                if !dev_handle.is_null() && dev_handle != storage.as_ptr() {
                    // The plugin replaced the pointer with its own handle instead of filling
                    // ours: keep a copy in our storage.
                    // SAFETY: a v7 plugin that sets `*recvDevComm` points it at a valid host
                    // `ncclNetDeviceHandle_v7_t`; `storage` is ours and not aliased.
                    unsafe { storage.as_ptr().write(dev_handle.read()) };
                }
                Ok(RecvComm::new(
                    Arc::clone(&self.plugin),
                    comm,
                    self.dev,
                    storage,
                ))
            }
            Err(e @ PluginError::Timeout { .. }) => {
                self.close_on_drop = false;
                tracing::warn!(target: "tcpx::net", dev = self.dev, "{e}; leaking the listen comm");
                Err(e)
            }
            Err(e) => {
                // SAFETY: from Box::leak above; accept finished with an error, so the plugin
                // no longer uses the storage.
                drop(unsafe { Box::from_raw(storage.as_ptr()) });
                Err(e)
            }
        }
    }

    /// `closeListen` now, reporting its result (drop does the same and logs failures).
    pub fn close(mut self) -> Result<(), PluginError> {
        self.close_on_drop = false;
        self.close_now()
    }

    fn close_now(&self) -> Result<(), PluginError> {
        let close = slot(self.plugin.table().close_listen, Call::CloseListen)?;
        // SAFETY: the listen comm came from listen and is closed exactly once (`close_on_drop`
        // is cleared by `close`, and drop runs once).
        let rc = unsafe { close(self.raw.as_ptr()) };
        check(Call::CloseListen, rc)
    }
}

impl Drop for ListenComm {
    fn drop(&mut self) {
        if self.close_on_drop {
            if let Err(e) = self.close_now() {
                tracing::warn!(target: "tcpx::net", dev = self.dev, "closing a listen comm: {e}");
            }
        }
    }
}

/// The sending end of a connection, from [`Plugin::connect`]; `closeSend` on drop.
pub struct SendComm {
    inner: Comm,
}

// SAFETY: the plugin's comm is not tied to the creating thread (NCCL's proxy thread uses comms
// created elsewhere); the Cells and registrations move with it. Not Sync (Cell): one thread at
// a time, as TCPX requires. Regions are `Send + Sync` by the `Region` bound.
unsafe impl Send for SendComm {}

impl core::fmt::Debug for SendComm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SendComm")
            .field("raw", &self.inner.raw)
            .field("dev", &self.inner.dev)
            .finish()
    }
}

impl SendComm {
    pub(crate) fn new(plugin: Arc<Plugin>, raw: NonNull<c_void>, dev: usize) -> Self {
        Self {
            inner: Comm::new(plugin, raw, dev, Side::Send),
        }
    }

    /// `regMr`: registers `region` with this comm, which keeps it alive until
    /// [`deregister`](Self::deregister) or close. Sizes above `c_int::MAX` are refused.
    pub fn register(&self, region: Arc<dyn Region>) -> Result<MemHandle, PluginError> {
        self.inner.register(region)
    }

    /// `deregMr`. Refused with [`PluginError::Busy`] while requests are pending (the
    /// registration then stays until close).
    pub fn deregister(&self, mh: MemHandle) -> Result<(), PluginError> {
        self.inner.deregister(mh)
    }

    /// `isend` of `len` bytes at `offset` in the registered region.
    pub fn isend(&self, mh: &MemHandle, offset: usize, len: usize) -> Result<Request, PluginError> {
        let isend = slot(self.inner.plugin.table().isend, Call::Isend)?;
        let (data, size, index) = self.inner.prepare(Call::Isend, mh, offset, len)?;
        let mut req: *mut c_void = ptr::null_mut();
        // SAFETY: the comm is open; `data..data+size` lies inside a region registered with this
        // comm (checked) and kept alive by it until close; `mh.mhandle` is that registration's
        // handle; `req` is a writable local.
        let rc = unsafe {
            isend(
                self.inner.raw.as_ptr(),
                data,
                size,
                TAG,
                mh.mhandle,
                &mut req,
            )
        };
        self.inner.posted(Call::Isend, mh, index, rc, req)
    }

    /// `test` a send request. Done frees its table entry; the buffer may be reused.
    pub fn test(&self, req: Request) -> Result<TestResult, PluginError> {
        self.inner.test(req)
    }

    /// Requests posted and not yet reported done.
    pub fn pending(&self) -> usize {
        self.inner.requests.pending.get()
    }

    /// The device index.
    pub fn dev(&self) -> usize {
        self.inner.dev
    }

    /// The plugin's comm pointer.
    pub fn as_raw(&self) -> *mut c_void {
        self.inner.raw.as_ptr()
    }

    /// The plugin this comm belongs to.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// Deregisters what is left and `closeSend`s now, reporting the first failure.
    pub fn close(mut self) -> Result<(), PluginError> {
        self.inner.close()
    }
}

/// The receiving end of a connection, from [`ListenComm::accept`]; `closeRecv` on drop.
pub struct RecvComm {
    inner: Comm,
    /// Caller-owned device-handle storage that `accept` filled (from `Box::leak`).
    dev_handle: NonNull<NetDeviceHandle>,
}

// SAFETY: as for SendComm; the device-handle storage is a plain heap allocation we own.
unsafe impl Send for RecvComm {}

impl core::fmt::Debug for RecvComm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecvComm")
            .field("raw", &self.inner.raw)
            .field("dev", &self.inner.dev)
            .field("device_handle", self.device_handle())
            .finish()
    }
}

impl RecvComm {
    pub(crate) fn new(
        plugin: Arc<Plugin>,
        raw: NonNull<c_void>,
        dev: usize,
        dev_handle: NonNull<NetDeviceHandle>,
    ) -> Self {
        Self {
            inner: Comm::new(plugin, raw, dev, Side::Recv),
            dev_handle,
        }
    }

    /// `regMr`: registers `region` with this comm, which keeps it alive until
    /// [`deregister`](Self::deregister) or close. Sizes above `c_int::MAX` are refused.
    pub fn register(&self, region: Arc<dyn Region>) -> Result<MemHandle, PluginError> {
        self.inner.register(region)
    }

    /// `deregMr`. Refused with [`PluginError::Busy`] while requests are pending (the
    /// registration then stays until close).
    pub fn deregister(&self, mh: MemHandle) -> Result<(), PluginError> {
        self.inner.deregister(mh)
    }

    /// `irecv` (n = 1) of up to `len` bytes at `offset` in the registered region. TCPX does not
    /// check that the sender's size fits `len`: never send more than the peer posted.
    pub fn irecv(&self, mh: &MemHandle, offset: usize, len: usize) -> Result<Request, PluginError> {
        let irecv = slot(self.inner.plugin.table().irecv, Call::Irecv)?;
        let (data, size, index) = self.inner.prepare(Call::Irecv, mh, offset, len)?;
        let mut datas = [data];
        let mut sizes = [size];
        let mut tags = [TAG];
        let mut mhandles = [mh.mhandle];
        let mut req: *mut c_void = ptr::null_mut();
        // SAFETY: the comm is open; n = 1 and each array has one element (NCCL also passes
        // stack arrays, so plugins copy them); `data..data+size` lies inside a region
        // registered with this comm (checked) and kept alive by it until close.
        let rc = unsafe {
            irecv(
                self.inner.raw.as_ptr(),
                1,
                datas.as_mut_ptr(),
                sizes.as_mut_ptr(),
                tags.as_mut_ptr(),
                mhandles.as_mut_ptr(),
                &mut req,
            )
        };
        self.inner.posted(Call::Irecv, mh, index, rc, req)
    }

    /// `test` a receive request. Testing one already reported done answers `Done` again
    /// without calling the plugin.
    pub fn test(&self, req: Request) -> Result<TestResult, PluginError> {
        self.inner.test(req)
    }

    /// `irecvConsumed` (n = 1): give the request's bounce pages and slot back, after the data
    /// was unpacked. Requires `test` to have reported it done ([`PluginError::NotDone`]);
    /// TCPX also requires FIFO order and answers otherwise with `ncclInternalError`.
    pub fn irecv_consumed(&self, req: Request) -> Result<(), PluginError> {
        let consumed = slot(
            self.inner.plugin.table().irecv_consumed,
            Call::IrecvConsumed,
        )?;
        let (index, entry) = self
            .inner
            .requests
            .find(Call::IrecvConsumed, req, self.inner.id)?;
        if entry.state != State::Done {
            return Err(PluginError::NotDone {
                call: Call::IrecvConsumed,
            });
        }
        // SAFETY: the comm is open; `entry.ptr` is a completed, not yet consumed request the
        // plugin returned on this comm (checked against the table).
        let rc = unsafe { consumed(self.inner.raw.as_ptr(), 1, entry.ptr) };
        check(Call::IrecvConsumed, rc)?;
        self.inner.requests.set_state(index, State::Free);
        Ok(())
    }

    /// Requests posted and not yet reported done.
    pub fn pending(&self) -> usize {
        self.inner.requests.pending.get()
    }

    /// Requests in the table: pending, or done and not yet consumed.
    pub fn outstanding(&self) -> usize {
        self.inner.requests.outstanding()
    }

    /// The device handle `accept` wrote (TCPX: type UNPACK, version 7, `handle` a device
    /// pointer to the 24-byte [`UnpackNetDeviceHandle`], size 24). All zero (HOST) when the
    /// plugin filled nothing.
    pub fn device_handle(&self) -> &NetDeviceHandle {
        // SAFETY: our own allocation, freed only in drop; the plugin wrote it during accept
        // and does not write it afterwards (v7 contract).
        unsafe { self.dev_handle.as_ref() }
    }

    /// `device_handle().handle` as a pointer to the unpack handle. On real TCPX this is a
    /// **device** pointer: reading it needs a CUDA device-to-host copy.
    pub fn unpack_handle_ptr(&self) -> *const UnpackNetDeviceHandle {
        self.device_handle().handle.cast_const().cast()
    }

    /// Reads `{meta, bounce_buf, head}` through the device handle from host memory, after
    /// checking the handle is an UNPACK v7 handle of at least 24 bytes.
    ///
    /// # Safety
    ///
    /// `device_handle().handle` must be a host-readable pointer — true for tcpx-sim in host
    /// mode. On real TCPX it is a device pointer (`cuMemAlloc`) and must be read with a CUDA
    /// copy instead; dereferencing it on the host is undefined behaviour.
    pub unsafe fn read_unpack_handle_host(&self) -> Result<UnpackNetDeviceHandle, PluginError> {
        let h = self.device_handle();
        if h.net_device_type != net_device_type::UNPACK {
            return Err(PluginError::BadDeviceHandle {
                what: "the device type is not NCCL_NET_DEVICE_UNPACK",
            });
        }
        if h.net_device_version != NET_DEVICE_UNPACK_VERSION {
            return Err(PluginError::BadDeviceHandle {
                what: "the unpack version is not 7",
            });
        }
        if h.handle.is_null() {
            return Err(PluginError::BadDeviceHandle {
                what: "the handle pointer is NULL",
            });
        }
        if h.size < core::mem::size_of::<UnpackNetDeviceHandle>() {
            return Err(PluginError::BadDeviceHandle {
                what: "the handle is smaller than 24 bytes",
            });
        }
        // SAFETY: non-NULL and at least 24 bytes (checked); the caller guarantees it is a
        // host-readable pointer.
        Ok(unsafe { ptr::read_unaligned(h.handle.cast::<UnpackNetDeviceHandle>()) })
    }

    /// The device index.
    pub fn dev(&self) -> usize {
        self.inner.dev
    }

    /// The plugin's comm pointer.
    pub fn as_raw(&self) -> *mut c_void {
        self.inner.raw.as_ptr()
    }

    /// The plugin this comm belongs to.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.inner.plugin
    }

    /// Deregisters what is left and `closeRecv`s now, reporting the first failure.
    pub fn close(mut self) -> Result<(), PluginError> {
        self.inner.close()
    }
}

impl Drop for RecvComm {
    fn drop(&mut self) {
        if let Err(e) = self.inner.close() {
            tracing::warn!(target: "tcpx::net", dev = self.inner.dev, "closing a recv comm: {e}");
        }
        // SAFETY: from Box::leak in accept; the comm is closed, so the plugin no longer uses
        // the storage; freed exactly once.
        drop(unsafe { Box::from_raw(self.dev_handle.as_ptr()) });
    }
}

/// Count a request in flight on a region with host access (see [`AccessState`]); `false` if its
/// owner holds it. NULL (a region without host access) always admits.
fn begin_io(access: *const AccessState) -> bool {
    // SAFETY: non-NULL `access` points into a region the posting comm keeps alive (an `Arc`
    // clone held from registration until after close).
    access.is_null() || unsafe { &*access }.begin_io()
}

/// The matching end of [`begin_io`].
fn end_io(access: *const AccessState) {
    if !access.is_null() {
        // SAFETY: as in `begin_io`: the region outlives every request of the comm on it.
        unsafe { &*access }.end_io();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::abi::{NcclResult, NetPluginV7};
    use crate::net::{mock, HostBuffer};
    use std::time::Duration;

    fn plugin() -> Arc<Plugin> {
        let table: &'static NetPluginV7 = Box::leak(Box::new(mock::table(true)));
        // SAFETY: the mock implements the v7 contract for the inputs these tests give it.
        unsafe { Plugin::from_static(table, "(mock)") }.unwrap()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn pair(plugin: &Arc<Plugin>) -> (SendComm, RecvComm) {
        let listen = plugin.listen(0).unwrap();
        let send = plugin.connect(0, listen.handle(), later()).unwrap();
        let recv = listen.accept(later()).unwrap();
        (send, recv)
    }

    fn buffer(len: usize) -> Arc<HostBuffer> {
        Arc::new(HostBuffer::new(len).unwrap())
    }

    fn assert_send<T: Send>() {}

    #[test]
    fn comms_are_send() {
        assert_send::<SendComm>();
        assert_send::<RecvComm>();
        assert_send::<ListenComm>();
        assert_send::<Request>();
        assert_send::<MemHandle>();
    }

    #[test]
    fn connect_retries_on_the_same_handle_buffer_and_accept_fills_caller_storage() {
        let p = plugin();
        let (send, recv) = pair(&p);
        // The mock needs 3 connect calls on one buffer; accept closed the listen comm.
        assert_eq!(
            mock::take_log(),
            ["listen", "connect", "accept", "closeListen"]
        );
        let h = recv.device_handle();
        assert_eq!(h.net_device_type, net_device_type::UNPACK);
        assert_eq!(h.net_device_version, 7);
        assert_eq!(h.size, 24);
        assert_eq!(
            recv.unpack_handle_ptr().cast::<u8>(),
            h.handle.cast::<u8>().cast_const()
        );
        // SAFETY: the mock's device handle points at host memory.
        let u = unsafe { recv.read_unpack_handle_host() }.unwrap();
        assert_eq!(
            (u.meta as usize, u.bounce_buf as usize, u.head),
            (0x1000, 0x2000, u64::MAX)
        );
        drop(send);
        drop(recv);
        assert_eq!(mock::take_log(), ["closeSend", "closeRecv"]);
    }

    #[test]
    fn connect_errors_and_timeouts_name_the_device() {
        let p = plugin();
        let mut handle = [0u8; 128];
        handle[1] = 0xEE;
        let e = p.connect(2, &handle, later()).unwrap_err();
        assert_eq!(
            e,
            PluginError::DeviceCall {
                call: Call::Connect,
                dev: 2,
                rc: NcclResult::SYSTEM_ERROR
            }
        );

        let mut handle = [0u8; 128];
        handle[2] = 0xFF;
        let e = p
            .connect(1, &handle, Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::Timeout {
                    call: Call::Connect,
                    dev: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("device 1"), "{e}");
    }

    #[test]
    fn accept_failure_closes_the_listen_comm_and_timeout_leaks_it() {
        let p = plugin();
        let e = p.listen(1).unwrap().accept(later()).unwrap_err();
        assert_eq!(
            e,
            PluginError::DeviceCall {
                call: Call::Accept,
                dev: 1,
                rc: NcclResult::SYSTEM_ERROR
            }
        );
        assert_eq!(mock::take_log(), ["listen", "closeListen"]);

        let e = p
            .listen(2)
            .unwrap()
            .accept(Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert!(
            matches!(
                e,
                PluginError::Timeout {
                    call: Call::Accept,
                    dev: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            mock::take_log(),
            ["listen"],
            "a timed-out listen comm is not closed"
        );

        let l = p.listen(0).unwrap();
        l.close().unwrap();
        assert_eq!(mock::take_log(), ["listen", "closeListen"]);
    }

    #[test]
    fn send_and_receive_requests_follow_the_tcpx_lifecycle() {
        let p = plugin();
        let (send, recv) = pair(&p);
        let smh = send.register(buffer(8192)).unwrap();
        let rmh = recv.register(buffer(8192)).unwrap();

        let s = send.isend(&smh, 4096, 4096).unwrap();
        assert_eq!(send.pending(), 1);
        assert_eq!(send.test(s), Ok(TestResult::Pending));
        assert_eq!(send.test(s), Ok(TestResult::Done));
        assert_eq!(send.pending(), 0);
        // A completed send request is gone.
        assert_eq!(
            send.test(s),
            Err(PluginError::UnknownRequest { call: Call::Test })
        );

        let r = recv.irecv(&rmh, 0, 8192).unwrap();
        assert_eq!(
            recv.irecv_consumed(r),
            Err(PluginError::NotDone {
                call: Call::IrecvConsumed
            })
        );
        assert_eq!(recv.test(r), Ok(TestResult::Pending));
        assert_eq!(recv.test(r), Ok(TestResult::Done));
        // Done again without asking the plugin (the mock would answer InternalError).
        assert_eq!(recv.test(r), Ok(TestResult::Done));
        assert_eq!((recv.pending(), recv.outstanding()), (0, 1));
        recv.irecv_consumed(r).unwrap();
        assert_eq!(recv.outstanding(), 0);
        assert_eq!(
            recv.irecv_consumed(r),
            Err(PluginError::UnknownRequest {
                call: Call::IrecvConsumed
            })
        );
    }

    #[test]
    fn foreign_handles_and_requests_and_bad_ranges_are_refused() {
        let p = plugin();
        let (send_a, recv_a) = pair(&p);
        let (send_b, _recv_b) = pair(&p);
        let mh_a = send_a.register(buffer(100)).unwrap();
        let mh_b = send_b.register(buffer(100)).unwrap();
        assert_eq!(
            send_a.isend(&mh_b, 0, 1),
            Err(PluginError::WrongComm { call: Call::Isend })
        );
        assert_eq!(
            send_a.isend(&mh_a, 50, 51),
            Err(PluginError::OutOfBounds {
                call: Call::Isend,
                offset: 50,
                len: 51,
                region_len: 100
            })
        );
        let req_b = send_b.isend(&mh_b, 0, 100).unwrap();
        assert_eq!(
            send_a.test(req_b),
            Err(PluginError::WrongComm { call: Call::Test })
        );
        assert_eq!(
            recv_a.irecv_consumed(req_b),
            Err(PluginError::WrongComm {
                call: Call::IrecvConsumed
            })
        );
        assert_eq!(
            send_a.deregister(mh_b),
            Err(PluginError::WrongComm {
                call: Call::DeregMr
            })
        );
        // Nothing reached the plugin for the refused calls: only the one isend is pending.
        assert_eq!((send_a.pending(), send_b.pending()), (0, 1));
    }

    #[test]
    fn the_request_table_has_a_fixed_capacity() {
        let p = plugin();
        let (send, _recv) = pair(&p);
        let mh = send.register(buffer(64)).unwrap();
        let reqs: Vec<_> = (0..REQUEST_TABLE_CAPACITY)
            .map(|_| send.isend(&mh, 0, 64).unwrap())
            .collect();
        assert_eq!(
            send.isend(&mh, 0, 64),
            Err(PluginError::TooManyRequests {
                call: Call::Isend,
                limit: REQUEST_TABLE_CAPACITY
            })
        );
        // Completing one frees one entry.
        while send.test(reqs[0]).unwrap() == TestResult::Pending {}
        assert!(send.isend(&mh, 0, 64).is_ok());
    }

    #[test]
    fn regions_live_until_deregistration_or_close_and_close_deregisters_first() {
        let p = plugin();
        let (send, recv) = pair(&p);
        let _ = mock::take_log();
        let a = buffer(4096);
        let b = buffer(4096);
        let mh_a = send.register(a.clone()).unwrap();
        let _mh_b = send.register(b.clone()).unwrap();
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (2, 2));

        let req = send.isend(&mh_a, 0, 4096).unwrap();
        let e = send.deregister(mh_a).unwrap_err();
        assert_eq!(
            e,
            PluginError::Busy {
                call: Call::DeregMr,
                pending: 1
            }
        );
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "a refused deregistration keeps the region"
        );
        while send.test(req).unwrap() == TestResult::Pending {}

        let mh_a = send.register(a.clone()).unwrap();
        send.deregister(mh_a).unwrap();
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "the first registration is kept until close"
        );

        drop(send);
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (1, 1));
        // regMr ×3, deregMr of the third, then close deregisters the two left, then closeSend.
        assert_eq!(
            mock::take_log(),
            [
                "regMr",
                "regMr",
                "regMr",
                "deregMr",
                "deregMr",
                "deregMr",
                "closeSend"
            ]
        );
        recv.close().unwrap();
        assert_eq!(mock::take_log(), ["closeRecv"]);
    }

    #[test]
    fn a_no_request_answer_is_not_an_outstanding_request() {
        let p = plugin();
        let (send, _recv) = pair(&p);
        let buf = Arc::new(HostBuffer::new(4096).unwrap());
        let mh = send.register(buf.clone()).unwrap();
        assert!(begin_io(mh.access));
        assert_eq!(
            send.inner
                .posted(Call::Isend, &mh, 0, NcclResult::SUCCESS, ptr::null_mut()),
            Err(PluginError::NoRequest { call: Call::Isend })
        );
        assert!(
            buf.lock().is_ok(),
            "a refused post gives its in-flight count back"
        );
        assert_eq!(send.pending(), 0);
    }

    #[test]
    fn the_steady_state_hot_path_does_not_allocate() {
        let p = plugin();
        let (send, recv) = pair(&p);
        let smh = send.register(buffer(1 << 16)).unwrap();
        let rmh = recv.register(buffer(1 << 16)).unwrap();
        let round = || {
            let s = send.isend(&smh, 0, 4096).unwrap();
            let r = recv.irecv(&rmh, 4096, 4096).unwrap();
            while send.test(s).unwrap() == TestResult::Pending {}
            while recv.test(r).unwrap() == TestResult::Pending {}
            recv.irecv_consumed(r).unwrap();
            // Error paths of the hot path too.
            assert!(send.isend(&smh, 1 << 16, 1).is_err());
            assert!(send.test(s).is_err());
            assert!(recv.irecv_consumed(r).is_err());
        };
        round(); // warm-up
        let before = mock::allocations();
        drop(core::hint::black_box(Box::new(0u64)));
        assert_eq!(
            mock::allocations(),
            before + 1,
            "the counter sees allocations"
        );
        let before = mock::allocations();
        for _ in 0..1000 {
            round();
        }
        assert_eq!(mock::allocations() - before, 0);
    }
}
