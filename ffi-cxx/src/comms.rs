//! The comm registry behind the `tcpx_*` wrappers: listen, send and receive comms, their
//! outstanding requests and registrations, addressed from C++ by [tokens](crate::token).
//!
//! Each comm lives in a registry slot as an `Arc<Mutex<Entry>>`; a call looks the token up
//! (checking slot, generation and kind), then works on the entry under its own lock, so comms
//! of different channels can be driven from different threads (TCPX comms themselves are not
//! thread-safe; the lock serialises calls on one comm).
//!
//! On top of the [`tcpx::net`] loader (bounds checks, request table, registrations kept alive)
//! this layer enforces the TCPX rules the C++ tree left to the plugin, answering with TCPX's own
//! return codes so the tree's callers see what they would have seen, minus the crash:
//! * at most [`MAX_REQUESTS_PER_COMM`] (16) outstanding requests per comm: the 17th `isend` /
//!   `irecv` is refused with rc 3 ([`Status::Busy`]) before the plugin sees it;
//! * `test` only on the oldest not-done request of a comm: rc 3 ([`Status::NotHead`]);
//! * `irecvConsumed` only on a done receive ([`Status::NotDone`], rc 3), oldest first
//!   ([`Status::NotHead`], rc 3);
//! * a null, unknown, closed or foreign comm / request / memory handle, or a pointer outside
//!   the registration: rc -1 ([`Status::InvalidArgument`]), never a dereference.
//!
//! `connect` and `accept` wait for TCPX's background handshake themselves (until
//! `UCCL_TCPX_CONNECT_TIMEOUT_MS` / `UCCL_TCPX_ACCEPT_TIMEOUT_MS`, default 60 s) instead of
//! returning success with a NULL comm; a caller's retry loop sees the comm on its first call.
//!
//! ```no_run
//! use tcpx_ffi_cxx::bridge::ffi::Status;
//! use tcpx_ffi_cxx::comms::{comm_isend, request_test};
//! # let (send_comm, buf, mhandle) = (0u64, 0u64, 0u64);
//! let posted = comm_isend(send_comm, buf, 4096, mhandle);
//! assert_eq!(posted.status, Status::Ok);
//! while request_test(posted.value).done == 0 {}
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tcpx::net::abi::{NetHandle, NET_HANDLE_MAXSIZE};
use tcpx::net::{ListenComm, MemHandle, MemKind, RecvComm, Request, SendComm, TestResult};
use tcpx_core::unpack::SlotCounter;
use tcpx_core::window::TCPX_MAX_REQUESTS;

use crate::bridge::ffi::{AcceptOutcome, CommKind, DeviceHandle, Outcome, Status, TestOutcome};
use crate::plugin::{env_millis, plugin};
use crate::region::ForeignRegion;
use crate::status::{self, fail, fail_plugin, guard, ok, C_REFUSED, C_TCPX_BUSY};
use crate::token::{Token, TokenKind};

/// TCPX's per-comm request limit, enforced here.
pub const MAX_REQUESTS_PER_COMM: usize = TCPX_MAX_REQUESTS;
/// Variable for the `connect` deadline in milliseconds.
pub const CONNECT_TIMEOUT_ENV: &str = "UCCL_TCPX_CONNECT_TIMEOUT_MS";
/// Variable for the `accept` deadline in milliseconds.
pub const ACCEPT_TIMEOUT_ENV: &str = "UCCL_TCPX_ACCEPT_TIMEOUT_MS";
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

const KIND_LISTEN: u32 = 1;
const KIND_SEND: u32 = 2;
const KIND_RECV: u32 = 3;

/// One outstanding request.
#[derive(Clone, Copy, Debug)]
struct Posted {
    seq: u32,
    req: Request,
    size: i32,
    /// The unpack slot of a receive (the k-th `irecv` of the comm uses slot k % 16).
    slot: u8,
    /// A receive `test` reported done, waiting for `irecvConsumed`.
    done: bool,
}

/// A send or receive comm with its requests (FIFO, oldest first) and registrations.
struct Side<C> {
    comm: C,
    reqs: VecDeque<Posted>,
    regs: Vec<(u32, MemHandle)>,
    next_seq: u32,
    next_reg: u32,
    /// Unpack slots, taken in `irecv` order (receive comms).
    slots: SlotCounter,
}

impl<C> Side<C> {
    fn new(comm: C) -> Self {
        Self {
            comm,
            reqs: VecDeque::with_capacity(MAX_REQUESTS_PER_COMM),
            regs: Vec::new(),
            next_seq: 1,
            next_reg: 1,
            slots: SlotCounter::new(),
        }
    }

    fn reg(&self, id: u32) -> Option<&MemHandle> {
        self.regs.iter().find(|(i, _)| *i == id).map(|(_, mh)| mh)
    }

    fn find(&self, seq: u32) -> Option<usize> {
        self.reqs.iter().position(|p| p.seq == seq)
    }

    /// The oldest request `test` has not reported done: the only one TCPX lets you test.
    fn head_to_test(&self) -> Option<usize> {
        self.reqs.iter().position(|p| !p.done)
    }

    fn pending(&self) -> bool {
        self.reqs.iter().any(|p| !p.done)
    }
}

enum Entry {
    Listen(Option<ListenComm>),
    Send(Side<SendComm>),
    Recv(Side<RecvComm>),
    Closed,
}

impl Entry {
    fn kind(&self) -> u32 {
        match self {
            Entry::Listen(_) => KIND_LISTEN,
            Entry::Send(_) => KIND_SEND,
            Entry::Recv(_) => KIND_RECV,
            Entry::Closed => 0,
        }
    }
}

type Shared = Arc<Mutex<Entry>>;

struct Slot {
    gen: u32,
    entry: Option<Shared>,
}

static REGISTRY: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

fn registry() -> MutexGuard<'static, Vec<Slot>> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lock(e: &Shared) -> MutexGuard<'_, Entry> {
    e.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Stores `entry`; returns its comm token.
fn insert(entry: Entry) -> Result<u64, &'static str> {
    let kind = entry.kind();
    let mut reg = registry();
    let index = match reg.iter().position(|s| s.entry.is_none()) {
        Some(i) => i,
        None if reg.len() <= usize::from(u16::MAX) => {
            reg.push(Slot {
                gen: 0,
                entry: None,
            });
            reg.len() - 1
        }
        None => return Err("too many open comms (65536)"),
    };
    let slot = &mut reg[index];
    slot.entry = Some(Arc::new(Mutex::new(entry)));
    Ok(Token {
        kind: TokenKind::Comm,
        slot: index as u16,
        gen: slot.gen as u8,
        low: kind,
    }
    .encode())
}

/// The entry a token's slot and generation name, if it is still registered.
fn lookup(t: &Token) -> Option<Shared> {
    let reg = registry();
    let slot = reg.get(usize::from(t.slot))?;
    if slot.gen as u8 != t.gen {
        return None;
    }
    slot.entry.clone()
}

/// The entry of a comm token.
fn comm_entry(raw: u64, what: &str) -> Result<(Token, Shared), Outcome> {
    let refuse = |why: &str| {
        Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: {why} comm {raw:#x}"),
        ))
    };
    if raw == 0 {
        return refuse("NULL");
    }
    let Some(t) = Token::decode(raw, TokenKind::Comm) else {
        return refuse("not a tcpx");
    };
    match lookup(&t) {
        Some(e) => Ok((t, e)),
        None => refuse("closed or unknown"),
    }
}

fn deadline(env: &str) -> Instant {
    Instant::now() + env_millis(env, DEFAULT_HANDSHAKE_TIMEOUT)
}

fn handle_from(bytes: &[u8]) -> Option<NetHandle> {
    bytes.get(..NET_HANDLE_MAXSIZE)?.try_into().ok()
}

/// `tcpx_listen`: writes the 128-byte handle; the listen comm's token in `value`.
pub fn comm_listen(dev: i32, handle: &mut [u8]) -> Outcome {
    guard(
        || {
            let Some(out) = handle.get_mut(..NET_HANDLE_MAXSIZE) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "listen: the handle buffer is shorter than 128 bytes",
                );
            };
            let p = match plugin() {
                Ok(p) => p,
                Err(e) => return fail(e.status, C_REFUSED, e),
            };
            let Ok(dev) = usize::try_from(dev) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "listen: negative device",
                );
            };
            let listen = match p.listen(dev) {
                Ok(l) => l,
                Err(e) => return fail_plugin(&e),
            };
            out.copy_from_slice(listen.handle());
            match insert(Entry::Listen(Some(listen))) {
                Ok(t) => ok(t),
                Err(why) => fail(Status::Busy, C_REFUSED, why),
            }
        },
        status::internal,
    )
}

/// `tcpx_connect_v5`: waits for the handshake; the send comm's token in `value`.
pub fn comm_connect(dev: i32, handle: &[u8]) -> Outcome {
    guard(
        || {
            let Some(h) = handle_from(handle) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "connect: the handle is shorter than 128 bytes",
                );
            };
            let p = match plugin() {
                Ok(p) => p,
                Err(e) => return fail(e.status, C_REFUSED, e),
            };
            let Ok(dev) = usize::try_from(dev) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "connect: negative device",
                );
            };
            let send = match p.connect(dev, &h, deadline(CONNECT_TIMEOUT_ENV)) {
                Ok(s) => s,
                Err(e) => return fail_plugin(&e),
            };
            match insert(Entry::Send(Side::new(send))) {
                Ok(t) => ok(t),
                Err(why) => fail(Status::Busy, C_REFUSED, why),
            }
        },
        status::internal,
    )
}

const NO_DEVICE_HANDLE: DeviceHandle = DeviceHandle {
    net_device_type: 0,
    net_device_version: 0,
    handle: 0,
    size: 0,
    needs_proxy_progress: 0,
};

/// `tcpx_accept_v5`: waits for the peer; the receive comm's token and its device handle.
pub fn comm_accept(listen: u64) -> AcceptOutcome {
    let failed = |o: Outcome| AcceptOutcome {
        status: o.status,
        rc: o.rc,
        comm: 0,
        dev_handle: NO_DEVICE_HANDLE,
    };
    guard(
        || {
            let (_, entry) = match comm_entry(listen, "accept") {
                Ok(x) => x,
                Err(o) => return failed(o),
            };
            let taken = match &mut *lock(&entry) {
                Entry::Listen(l) => l.take(),
                _ => {
                    return failed(fail(
                        Status::InvalidArgument,
                        C_REFUSED,
                        "accept: the comm is not a listen comm",
                    ))
                }
            };
            let Some(l) = taken else {
                return failed(fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "accept: this listen comm already accepted (TCPX allows one accept per listen comm)",
                ));
            };
            let recv = match l.accept(deadline(ACCEPT_TIMEOUT_ENV)) {
                Ok(r) => r,
                Err(e) => return failed(fail_plugin(&e)),
            };
            let h = recv.device_handle();
            let dev_handle = DeviceHandle {
                net_device_type: h.net_device_type,
                net_device_version: h.net_device_version,
                handle: h.handle as u64,
                size: h.size as u64,
                needs_proxy_progress: h.needs_proxy_progress,
            };
            match insert(Entry::Recv(Side::new(recv))) {
                Ok(t) => AcceptOutcome {
                    status: Status::Ok,
                    rc: 0,
                    comm: t,
                    dev_handle,
                },
                Err(why) => failed(fail(Status::Busy, C_REFUSED, why)),
            }
        },
        || failed(status::internal()),
    )
}

/// `tcpx_reg_mr`: the memory handle's token in `value`. The caller keeps `data..data+size`
/// alive until `tcpx_dereg_mr` or the comm's close.
pub fn comm_reg_mr(comm: u64, data: u64, size: u64, ptr_type: i32) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "regMr") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let kind = match ptr_type {
                1 => MemKind::Host,
                2 => MemKind::Cuda,
                other => {
                    return fail(
                        Status::InvalidArgument,
                        C_REFUSED,
                        format_args!(
                        "regMr: type {other} is neither NCCL_PTR_HOST (1) nor NCCL_PTR_CUDA (2)"
                    ),
                    )
                }
            };
            let Some(region) = ForeignRegion::new(data, size, kind) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    format_args!("regMr: NULL or empty buffer ({data:#x}, {size} bytes)"),
                );
            };
            let mut guard = lock(&entry);
            let registered =
                match &mut *guard {
                    Entry::Send(s) => s.comm.register(Arc::new(region)).map(|mh| add_reg(s, mh)),
                    Entry::Recv(s) => s.comm.register(Arc::new(region)).map(|mh| add_reg(s, mh)),
                    _ => return fail(
                        Status::InvalidArgument,
                        C_REFUSED,
                        "regMr: memory registers with a send or receive comm, not a listen comm",
                    ),
                };
            match registered {
                Ok(id) => ok(Token {
                    kind: TokenKind::MemHandle,
                    slot: t.slot,
                    gen: t.gen,
                    low: id,
                }
                .encode()),
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

fn add_reg<C>(side: &mut Side<C>, mh: MemHandle) -> u32 {
    let id = side.next_reg;
    side.next_reg = side.next_reg.wrapping_add(1).max(1);
    side.regs.push((id, mh));
    id
}

/// The registration id a memory-handle token names, if it belongs to comm `t`.
fn reg_id(t: &Token, mhandle: u64, what: &str) -> Result<u32, Outcome> {
    match Token::decode(mhandle, TokenKind::MemHandle) {
        Some(m) if m.slot == t.slot && m.gen == t.gen => Ok(m.low),
        Some(_) => Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: memory handle {mhandle:#x} belongs to another comm"),
        )),
        None => Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: {mhandle:#x} is not a tcpx memory handle"),
        )),
    }
}

/// `tcpx_dereg_mr`. Refused while requests of the comm are pending.
pub fn comm_dereg_mr(comm: u64, mhandle: u64) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "deregMr") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let id = match reg_id(&t, mhandle, "deregMr") {
                Ok(id) => id,
                Err(o) => return o,
            };
            let mut guard = lock(&entry);
            match &mut *guard {
                Entry::Send(s) => dereg(s, id, |c, mh| c.deregister(mh)),
                Entry::Recv(s) => dereg(s, id, |c, mh| c.deregister(mh)),
                _ => fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "deregMr: not a send or receive comm",
                ),
            }
        },
        status::internal,
    )
}

fn dereg<C>(
    side: &mut Side<C>,
    id: u32,
    deregister: impl FnOnce(&C, MemHandle) -> Result<(), tcpx::net::PluginError>,
) -> Outcome {
    if side.pending() {
        return fail(
            Status::Busy,
            C_REFUSED,
            "deregMr: requests on this comm are still pending",
        );
    }
    let Some(i) = side.regs.iter().position(|(r, _)| *r == id) else {
        return fail(
            Status::InvalidArgument,
            C_REFUSED,
            "deregMr: unknown or already deregistered memory handle",
        );
    };
    let (_, mh) = side.regs.swap_remove(i);
    match deregister(&side.comm, mh) {
        Ok(()) => ok(0),
        Err(e) => fail_plugin(&e),
    }
}

/// Checks a post: room for a 17th request, the handle, the pointer inside it; returns the
/// offset into the registration.
fn prepare<C>(
    side: &Side<C>,
    t: &Token,
    data: u64,
    size: i32,
    mhandle: u64,
    what: &str,
) -> Result<(usize, usize, u32), Outcome> {
    if side.reqs.len() >= MAX_REQUESTS_PER_COMM {
        return Err(fail(
            Status::Busy,
            C_TCPX_BUSY,
            format_args!(
                "{what}: {MAX_REQUESTS_PER_COMM} requests already outstanding on this comm (TCPX's limit); test/consume the oldest first"
            ),
        ));
    }
    let Ok(len) = usize::try_from(size) else {
        return Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: negative size {size}"),
        ));
    };
    let id = reg_id(t, mhandle, what)?;
    let Some(mh) = side.reg(id) else {
        return Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: memory handle {mhandle:#x} was deregistered"),
        ));
    };
    let base = mh.base() as u64;
    let Some(offset) = data.checked_sub(base).and_then(|o| usize::try_from(o).ok()) else {
        return Err(fail(
            Status::InvalidArgument,
            C_REFUSED,
            format_args!("{what}: pointer {data:#x} is below the registered buffer {base:#x}"),
        ));
    };
    Ok((offset, len, id))
}

fn push<C>(side: &mut Side<C>, t: &Token, req: Request, size: i32, is_recv: bool) -> Outcome {
    let seq = side.next_seq;
    side.next_seq = side.next_seq.wrapping_add(1).max(1);
    let slot = if is_recv {
        side.slots.next_slot().index() as u8
    } else {
        0
    };
    side.reqs.push_back(Posted {
        seq,
        req,
        size,
        slot,
        done: false,
    });
    ok(Token {
        kind: TokenKind::Request,
        slot: t.slot,
        gen: t.gen,
        low: seq,
    }
    .encode())
}

/// `tcpx_isend`: the request's token in `value`.
pub fn comm_isend(comm: u64, data: u64, size: i32, mhandle: u64) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "isend") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let mut guard = lock(&entry);
            let Entry::Send(side) = &mut *guard else {
                return fail(Status::InvalidArgument, C_REFUSED, "isend: not a send comm");
            };
            let (offset, len, id) = match prepare(side, &t, data, size, mhandle, "isend") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let posted = match side.reg(id) {
                Some(mh) => side.comm.isend(mh, offset, len),
                None => return status::internal(),
            };
            match posted {
                Ok(req) => push(side, &t, req, size, false),
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

/// `tcpx_irecv` (n = 1): the request's token in `value`.
pub fn comm_irecv(comm: u64, data: u64, size: i32, mhandle: u64) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "irecv") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let mut guard = lock(&entry);
            let Entry::Recv(side) = &mut *guard else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "irecv: not a receive comm",
                );
            };
            let (offset, len, id) = match prepare(side, &t, data, size, mhandle, "irecv") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let posted = match side.reg(id) {
                Some(mh) => side.comm.irecv(mh, offset, len),
                None => return status::internal(),
            };
            match posted {
                Ok(req) => push(side, &t, req, size, true),
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

fn test_failed(o: Outcome) -> TestOutcome {
    TestOutcome {
        status: o.status,
        rc: o.rc,
        done: 0,
        size: 0,
    }
}

/// `tcpx_test`: `done` 1 when complete; `size` is the size posted (TCPX never writes it).
pub fn request_test(request: u64) -> TestOutcome {
    guard(
        || {
            let Some(t) = Token::decode(request, TokenKind::Request) else {
                return test_failed(fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    format_args!("test: {request:#x} is not a tcpx request"),
                ));
            };
            let Some(entry) = lookup(&t) else {
                return test_failed(fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "test: the request's comm is closed",
                ));
            };
            let mut guard = lock(&entry);
            match &mut *guard {
                Entry::Send(s) => test_on(s, t.low, false, |c, r| c.test(r)),
                Entry::Recv(s) => test_on(s, t.low, true, |c, r| c.test(r)),
                _ => test_failed(fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "test: the request's comm is closed",
                )),
            }
        },
        || test_failed(status::internal()),
    )
}

fn test_on<C>(
    side: &mut Side<C>,
    seq: u32,
    is_recv: bool,
    test: impl FnOnce(&C, Request) -> Result<TestResult, tcpx::net::PluginError>,
) -> TestOutcome {
    let Some(i) = side.find(seq) else {
        return test_failed(fail(
            Status::InvalidArgument,
            C_REFUSED,
            "test: the request is not outstanding (already completed or consumed)",
        ));
    };
    let p = side.reqs[i];
    if p.done {
        return TestOutcome {
            status: Status::Ok,
            rc: 0,
            done: 1,
            size: p.size,
        };
    }
    if side.head_to_test() != Some(i) {
        return test_failed(fail(
            Status::NotHead,
            C_TCPX_BUSY,
            "test: not the oldest outstanding request of its comm (TCPX tests in FIFO order)",
        ));
    }
    match test(&side.comm, p.req) {
        Ok(TestResult::Pending) => TestOutcome {
            status: Status::NotReady,
            rc: 0,
            done: 0,
            size: 0,
        },
        Ok(TestResult::Done) => {
            if is_recv {
                side.reqs[i].done = true;
            } else {
                side.reqs.remove(i);
            }
            TestOutcome {
                status: Status::Ok,
                rc: 0,
                done: 1,
                size: p.size,
            }
        }
        Err(e) => test_failed(fail_plugin(&e)),
    }
}

/// `tcpx_irecv_consumed` (n = 1).
pub fn comm_irecv_consumed(comm: u64, request: u64) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "irecvConsumed") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let seq = match Token::decode(request, TokenKind::Request) {
                Some(r) if r.slot == t.slot && r.gen == t.gen => r.low,
                Some(_) => {
                    return fail(
                        Status::InvalidArgument,
                        C_REFUSED,
                        "irecvConsumed: the request belongs to another comm",
                    )
                }
                None => {
                    return fail(
                        Status::InvalidArgument,
                        C_REFUSED,
                        format_args!("irecvConsumed: {request:#x} is not a tcpx request"),
                    )
                }
            };
            let mut guard = lock(&entry);
            let Entry::Recv(side) = &mut *guard else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "irecvConsumed: not a receive comm",
                );
            };
            let Some(i) = side.find(seq) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "irecvConsumed: the request is not outstanding (already consumed?)",
                );
            };
            if !side.reqs[i].done {
                return fail(
                    Status::NotDone,
                    C_TCPX_BUSY,
                    "irecvConsumed: test has not reported this receive done",
                );
            }
            if i != 0 {
                return fail(
                    Status::NotHead,
                    C_TCPX_BUSY,
                    "irecvConsumed: an older receive of this comm is not consumed yet (TCPX consumes in FIFO order)",
                );
            }
            match side.comm.irecv_consumed(side.reqs[0].req) {
                Ok(()) => {
                    side.reqs.pop_front();
                    ok(0)
                }
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

/// `tcpx_close_listen` / `tcpx_close_send` / `tcpx_close_recv`: closes the comm (deregistering
/// what is left) and retires its token, even if the plugin's close fails.
pub fn comm_close(comm: u64, kind: CommKind) -> Outcome {
    guard(
        || {
            let (t, entry) = match comm_entry(comm, "close") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let want = match kind {
                CommKind::Listen => KIND_LISTEN,
                CommKind::Send => KIND_SEND,
                CommKind::Recv => KIND_RECV,
                _ => 0,
            };
            let mut guard = lock(&entry);
            if guard.kind() != want {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "close: the comm is of another kind (closeListen/closeSend/closeRecv)",
                );
            }
            {
                let mut reg = registry();
                if let Some(slot) = reg.get_mut(usize::from(t.slot)) {
                    slot.entry = None;
                    slot.gen = slot.gen.wrapping_add(1);
                }
            }
            let closed = match std::mem::replace(&mut *guard, Entry::Closed) {
                Entry::Listen(Some(l)) => l.close(),
                Entry::Send(s) => s.comm.close(),
                Entry::Recv(s) => s.comm.close(),
                Entry::Listen(None) | Entry::Closed => Ok(()),
            };
            match closed {
                Ok(()) => ok(0),
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

/// Outstanding requests of a comm (posted, or done and not yet consumed) in `value`.
pub fn comm_outstanding(comm: u64) -> Outcome {
    guard(
        || {
            let (_, entry) = match comm_entry(comm, "outstanding") {
                Ok(x) => x,
                Err(o) => return o,
            };
            let n = match &*lock(&entry) {
                Entry::Send(s) => s.reqs.len(),
                Entry::Recv(s) => s.reqs.len(),
                _ => 0,
            };
            ok(n as u64)
        },
        status::internal,
    )
}

/// The unpack slot of an outstanding receive in `value`: TCPX publishes the fragments of the
/// k-th `irecv` of a comm (0-based) in row `k % 16` of the comm's `netUnpackMeta`.
pub fn request_unpack_slot(request: u64) -> Outcome {
    guard(
        || {
            let Some(t) = Token::decode(request, TokenKind::Request) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    format_args!("unpack slot: {request:#x} is not a tcpx request"),
                );
            };
            let Some(entry) = lookup(&t) else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "unpack slot: the request's comm is closed",
                );
            };
            let guard = lock(&entry);
            let Entry::Recv(side) = &*guard else {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "unpack slot: not a receive request",
                );
            };
            match side.find(t.low) {
                Some(i) => ok(u64::from(side.reqs[i].slot)),
                None => fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    "unpack slot: the request is not outstanding",
                ),
            }
        },
        status::internal,
    )
}
