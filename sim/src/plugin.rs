//! The plugin's state and the objects behind its opaque pointers, in safe Rust.
//!
//! [`crate::ffi`] turns C arguments into references to these objects and calls the methods here;
//! nothing here sees a raw pointer it would dereference.
//!
//! * [`Plugin`]: what `init` read (configuration, logger, device-memory mode). `init` may be
//!   called again (each `dlopen` of the same library shares it); every configuration ever built is
//!   kept alive so the `name`/`pciPath` strings handed out by `getProperties` never dangle.
//! * [`ListenObject`], [`CommObject`]: what `listenComm`/`sendComm`/`recvComm` point at. Each
//!   starts with a magic so a pointer of the wrong kind is caught. A comm's state sits behind a
//!   mutex. The request path (isend, irecv, test, irecvConsumed) takes it with `try_lock`: TCPX's
//!   request ring is not thread-safe, so two threads there fail loudly
//!   ([`SimError::ConcurrentUse`]) instead of racing; regMr/deregMr, which TCPX lets run beside
//!   the request path, wait for the lock.
//! * [`RequestHandle`]: what a `request` points at — one of 16 per comm, slot `k % 16`, never
//!   moved, holding the comm's address so `test(request)` finds its comm like TCPX's
//!   `request->comm`.
//!
//! Diagnostics (INFO, subsystem NET): the first `isend`/`irecv`, the first `test`, the first
//! completed request and the first `irecvConsumed` of every comm are logged once, with the comm's
//! address, slot, sizes and memory — so a log shows how far each comm got. A request that `test`
//! keeps finding pending gets a WARN after [`crate::comm::STALL_WARN_AFTER`].
//!
//! ```no_run
//! use tcpx_sim::{log::Logger, plugin};
//! fn sink(_: i32, m: &str) { eprintln!("{m}") }
//! let p = plugin::init(Logger::Sink(sink), &|k| std::env::var(k).ok()).unwrap();
//! assert!(p.config.nics.len() >= 1);
//! ```
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};

use tcpx::net::abi::{
    log_subsys, net_device_type, NcclResult, NetHandle, NetProperties, MAX_REQUESTS,
    NET_DEVICE_UNPACK_VERSION, PTR_CUDA, PTR_HOST,
};

use crate::bounce::{select_memory, DeviceMemory};
use crate::comm::{Memory, RecvComm, SendComm};
use crate::config::Config;
use crate::conn::{self, ListenComm};
use crate::error::{CommKind, SimError};
use crate::log::{Call, Logger};

/// The plugin's name in the table (`NCCL_NET=tcpx-sim_v7` selects it).
pub const PLUGIN_NAME: &str = "tcpx-sim_v7";

/// State built by `init`.
pub struct Plugin {
    /// The environment `init` read.
    pub config: Config,
    /// NCCL's logger.
    pub logger: Logger,
    /// Host or CUDA mode.
    pub memory: Box<dyn DeviceMemory>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("config", &self.config)
            .field("mode", &self.memory.mode())
            .finish()
    }
}

static CURRENT: RwLock<Option<Arc<Plugin>>> = RwLock::new(None);
static EVERY: Mutex<Vec<Arc<Plugin>>> = Mutex::new(Vec::new());

/// `init`: reads the environment through `env` and makes the result current.
pub fn init(logger: Logger, env: &dyn Fn(&str) -> Option<String>) -> Result<Arc<Plugin>, SimError> {
    let built = Config::from_env(env);
    let mut cur = CURRENT.write().map_err(|_| SimError::Poisoned)?;
    let config = match built {
        Ok(c) => c,
        Err(e) => {
            *cur = None;
            return Err(e);
        }
    };
    let memory = match select_memory(&config, &logger) {
        Ok(m) => m,
        Err(e) => {
            *cur = None;
            return Err(e);
        }
    };
    let p = Arc::new(Plugin {
        config,
        logger,
        memory,
    });
    if let Ok(mut all) = EVERY.lock() {
        all.push(Arc::clone(&p));
    }
    *cur = Some(Arc::clone(&p));
    drop(cur);
    let c = &p.config;
    let nics: Vec<String> = c
        .nics
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "[{i}]{}:{}{}",
                n.name_str(),
                n.addr,
                if n.is_virtual { " (virtual)" } else { "" }
            )
        })
        .collect();
    p.logger.info(
        log_subsys::INIT | log_subsys::NET,
        Call::Init,
        format_args!(
            "{PLUGIN_NAME} ({} mode) using {}; chunk {} B, {} sockets x {} threads per comm",
            p.memory.mode(),
            nics.join(" "),
            c.chunk_size,
            c.nsocks,
            c.nthreads
        ),
    );
    Ok(p)
}

/// The plugin state of the last successful `init`.
pub fn current() -> Result<Arc<Plugin>, SimError> {
    CURRENT
        .read()
        .map_err(|_| SimError::Poisoned)?
        .clone()
        .ok_or(SimError::NotInitialized)
}

impl Plugin {
    /// `devices`.
    pub fn device_count(&self) -> usize {
        self.config.nics.len()
    }

    fn dev(&self, dev: i32) -> Result<usize, SimError> {
        usize::try_from(dev)
            .ok()
            .filter(|d| *d < self.config.nics.len())
            .ok_or(SimError::BadDevice {
                dev,
                ndev: self.config.nics.len(),
            })
    }

    /// `getProperties`: TCPX's values, with this plugin's NIC strings (valid for the process).
    pub fn properties(&self, dev: i32) -> Result<NetProperties, SimError> {
        let nic = &self.config.nics[self.dev(dev)?];
        let mut p = NetProperties::zeroed();
        p.name = nic.name.as_ptr().cast_mut();
        p.pci_path = nic
            .pci_path
            .as_ref()
            .map_or(core::ptr::null_mut(), |s| s.as_ptr().cast_mut());
        p.guid = dev as u64;
        p.ptr_support = PTR_HOST | PTR_CUDA;
        p.speed = nic.speed_mbps;
        p.port = 0;
        p.latency = 0.0;
        p.max_comms = 65536;
        p.max_recvs = 1;
        p.net_device_type = net_device_type::UNPACK;
        p.net_device_version = NET_DEVICE_UNPACK_VERSION;
        Ok(p)
    }

    /// `connect`: Ok(None) until the connection is up.
    pub fn connect(
        self: &Arc<Self>,
        dev: i32,
        handle: &mut NetHandle,
    ) -> Result<Option<Box<CommObject>>, SimError> {
        let dev = self.dev(dev)?;
        match conn::connect(&self.config, dev, handle)? {
            None => Ok(None),
            Some(link) => {
                let comm = SendComm::new(link, self.config.chunk_size, self.memory.send_io()?)?;
                Ok(Some(CommObject::new(Arc::clone(self), Comm::Send(comm))))
            }
        }
    }
}

/// Magic of a listen comm.
pub const LISTEN_MAGIC: u64 = u64::from_le_bytes(*b"SIMlistn");
/// Magic of a send comm.
pub const SEND_MAGIC: u64 = u64::from_le_bytes(*b"SIMsendc");
/// Magic of a recv comm.
pub const RECV_MAGIC: u64 = u64::from_le_bytes(*b"SIMrecvc");
/// Magic of a request.
pub const REQUEST_MAGIC: u64 = u64::from_le_bytes(*b"SIMreqst");

fn lock<T>(m: &Mutex<T>, kind: CommKind) -> Result<MutexGuard<'_, T>, SimError> {
    match m.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(SimError::ConcurrentUse { kind }),
        Err(TryLockError::Poisoned(_)) => Err(SimError::Poisoned),
    }
}

/// What `listenComm` points at.
#[repr(C)]
#[derive(Debug)]
pub struct ListenObject {
    magic: u64,
    plugin: Arc<Plugin>,
    inner: Mutex<ListenComm>,
}

impl ListenObject {
    /// `listen(dev)`: the object and the handle to publish.
    pub fn new(plugin: &Arc<Plugin>, dev: i32) -> Result<(Box<ListenObject>, NetHandle), SimError> {
        let dev = plugin.dev(dev)?;
        let (l, h) = ListenComm::new(&plugin.config, dev)?;
        Ok((
            Box::new(ListenObject {
                magic: LISTEN_MAGIC,
                plugin: Arc::clone(plugin),
                inner: Mutex::new(l),
            }),
            h,
        ))
    }

    /// Whether the magic is intact.
    pub fn is_valid(&self) -> bool {
        self.magic == LISTEN_MAGIC
    }

    /// `accept`. `dev_handle` says whether the caller passed a device-handle pointer (then the
    /// comm gets an unpack queue). Ok(None) until the connection is up.
    pub fn accept(&self, dev_handle: bool) -> Result<Option<Box<CommObject>>, SimError> {
        let link = match lock(&self.inner, CommKind::Listen)?.accept()? {
            None => return Ok(None),
            Some(l) => l,
        };
        let queue = if dev_handle {
            Some(self.plugin.memory.new_unpack_queue(&self.plugin.logger)?)
        } else {
            None
        };
        let comm = RecvComm::new(link, queue)?;
        Ok(Some(CommObject::new(
            Arc::clone(&self.plugin),
            Comm::Recv(comm),
        )))
    }

    /// Whether another thread is inside this listen comm right now.
    pub fn is_busy(&self) -> bool {
        self.inner.try_lock().is_err()
    }
}

/// What a `request` points at.
#[repr(C)]
#[derive(Debug)]
pub struct RequestHandle {
    magic: u64,
    slot: usize,
    comm: usize,
}

impl RequestHandle {
    /// Whether the magic is intact.
    pub fn is_valid(&self) -> bool {
        self.magic == REQUEST_MAGIC
    }

    /// Address of the comm object this request belongs to.
    pub fn comm_addr(&self) -> usize {
        self.comm
    }

    /// The request's slot (`k % 16`).
    pub fn slot(&self) -> usize {
        self.slot
    }
}

/// The state of a send or recv comm.
#[derive(Debug)]
pub enum Comm {
    /// From `connect`.
    Send(SendComm),
    /// From `accept`.
    Recv(RecvComm),
}

/// The first-call INFO lines of a comm, each logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstCall {
    /// The first `isend`.
    Isend,
    /// The first `irecv`.
    Irecv,
    /// The first `test`.
    Test,
    /// The first request `test` reported done.
    Done,
    /// The first `irecvConsumed`.
    Consumed,
}

impl FirstCall {
    fn bit(self) -> u8 {
        match self {
            FirstCall::Isend => 1,
            FirstCall::Irecv => 2,
            FirstCall::Test => 4,
            FirstCall::Done => 8,
            FirstCall::Consumed => 16,
        }
    }
}

/// Which [`FirstCall`]s a comm has logged.
#[derive(Debug, Default)]
pub struct FirstCalls(AtomicU8);

impl FirstCalls {
    /// True exactly once per `c`: the first time it is asked.
    pub fn first(&self, c: FirstCall) -> bool {
        self.0.fetch_or(c.bit(), Ordering::Relaxed) & c.bit() == 0
    }
}

fn memory_words(m: Option<Memory>) -> String {
    match m {
        Some(Memory::Host(_)) => "host memory".to_owned(),
        Some(Memory::Cuda(r)) => format!("CUDA memory of GPU {}", r.device),
        None => "unknown registration".to_owned(),
    }
}

/// What `sendComm`/`recvComm` point at.
#[repr(C)]
#[derive(Debug)]
pub struct CommObject {
    magic: u64,
    requests: [RequestHandle; MAX_REQUESTS],
    plugin: Arc<Plugin>,
    inner: Mutex<Comm>,
    firsts: FirstCalls,
}

impl CommObject {
    fn new(plugin: Arc<Plugin>, comm: Comm) -> Box<CommObject> {
        let magic = match comm {
            Comm::Send(_) => SEND_MAGIC,
            Comm::Recv(_) => RECV_MAGIC,
        };
        let mut b = Box::new(CommObject {
            magic,
            requests: core::array::from_fn(|slot| RequestHandle {
                magic: REQUEST_MAGIC,
                slot,
                comm: 0,
            }),
            plugin,
            inner: Mutex::new(comm),
            firsts: FirstCalls::default(),
        });
        let addr = &*b as *const CommObject as usize;
        for r in &mut b.requests {
            r.comm = addr;
        }
        b
    }

    /// Send or recv, from the magic (None when the magic is not a comm's).
    pub fn kind(&self) -> Option<CommKind> {
        match self.magic {
            SEND_MAGIC => Some(CommKind::Send),
            RECV_MAGIC => Some(CommKind::Recv),
            _ => None,
        }
    }

    /// Fails unless this is a live comm of kind `want`.
    pub fn expect(&self, want: CommKind) -> Result<(), SimError> {
        if self.kind() == Some(want) {
            Ok(())
        } else {
            Err(SimError::BadComm { expected: want })
        }
    }

    /// The request handle of `slot` (the pointer `isend`/`irecv` return).
    pub fn request(&self, slot: usize) -> &RequestHandle {
        &self.requests[slot % MAX_REQUESTS]
    }

    /// The plugin this comm belongs to.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// The comm's state for a request-path call (isend, irecv, test, irecvConsumed): these race
    /// on TCPX's request ring, so a second thread inside the comm is an error.
    fn guard(&self) -> Result<MutexGuard<'_, Comm>, SimError> {
        lock(&self.inner, self.kind().unwrap_or(CommKind::Send))
    }

    /// The comm's state for calls that TCPX lets run beside the request path (regMr, deregMr
    /// touch no request state there): wait for the other thread instead of failing.
    fn guard_wait(&self) -> Result<MutexGuard<'_, Comm>, SimError> {
        self.inner.lock().map_err(|_| SimError::Poisoned)
    }

    /// Whether another thread is inside this comm right now.
    pub fn is_busy(&self) -> bool {
        self.inner.try_lock().is_err()
    }

    /// The recv comm's unpack-queue handle (None for send comms or without a device handle).
    pub fn device_handle(
        &self,
    ) -> Result<Option<*mut tcpx::net::abi::UnpackNetDeviceHandle>, SimError> {
        Ok(match &*self.guard_wait()? {
            Comm::Recv(r) => r.device_handle(),
            Comm::Send(_) => None,
        })
    }

    /// `regMr` of already-validated memory.
    pub fn register(&self, mem: Memory) -> Result<usize, SimError> {
        Ok(match &mut *self.guard_wait()? {
            Comm::Send(s) => s.register(mem),
            Comm::Recv(r) => r.register(mem),
        })
    }

    /// `deregMr`; returns how many outstanding requests still use the registration.
    pub fn deregister(&self, mhandle: usize) -> Result<usize, SimError> {
        match &mut *self.guard_wait()? {
            Comm::Send(s) => s.deregister(mhandle),
            Comm::Recv(r) => r.deregister(mhandle),
        }
    }

    fn addr(&self) -> usize {
        self as *const CommObject as usize
    }

    fn info(&self, call: Call, args: core::fmt::Arguments<'_>) {
        self.plugin.logger.info(log_subsys::NET, call, args);
    }

    /// `isend`; returns the slot.
    pub fn isend(&self, data: usize, size: i32, mhandle: usize) -> Result<usize, SimError> {
        match &mut *self.guard()? {
            Comm::Send(s) => {
                let slot = s.isend(data, size, mhandle)?;
                if self.firsts.first(FirstCall::Isend) {
                    self.info(
                        Call::Isend,
                        format_args!(
                            "first isend on send comm {:#x}: {size} B at {data:#x} ({}) -> slot \
                             {slot}",
                            self.addr(),
                            memory_words(s.memory_of(mhandle))
                        ),
                    );
                }
                Ok(slot)
            }
            Comm::Recv(_) => Err(SimError::BadComm {
                expected: CommKind::Send,
            }),
        }
    }

    /// `irecv` (n = 1); returns the slot.
    pub fn irecv(&self, data: usize, size: i32, mhandle: usize) -> Result<usize, SimError> {
        match &mut *self.guard()? {
            Comm::Recv(r) => {
                let slot = r.irecv(data, size, mhandle)?;
                if self.firsts.first(FirstCall::Irecv) {
                    self.info(
                        Call::Irecv,
                        format_args!(
                            "first irecv on recv comm {:#x}: up to {size} B at {data:#x} ({}) -> \
                             slot {slot} (unpack slot {slot})",
                            self.addr(),
                            memory_words(r.memory_of(mhandle))
                        ),
                    );
                }
                Ok(slot)
            }
            Comm::Send(_) => Err(SimError::BadComm {
                expected: CommKind::Recv,
            }),
        }
    }

    /// `test` on the request in `slot`; logs the WARN the comm raised meanwhile (a request
    /// pending too long, a receive starved of bounce pages) and the first-call INFO lines.
    pub fn test(&self, slot: usize) -> Result<bool, SimError> {
        let mut g = self.guard()?;
        let (kind, done, warning) = match &mut *g {
            Comm::Send(s) => {
                let done = s.test(slot);
                ("send", done, s.take_warning())
            }
            Comm::Recv(r) => {
                let done = r.test(slot);
                ("recv", done, r.take_warning())
            }
        };
        if let Some(w) = warning {
            self.plugin.logger.warn(Call::Test, format_args!("{w}"));
        }
        let done = done?;
        if self.firsts.first(FirstCall::Test) {
            self.info(
                Call::Test,
                format_args!(
                    "first test on {kind} comm {:#x}: slot {slot} {}",
                    self.addr(),
                    if done { "done" } else { "pending" }
                ),
            );
        }
        if done && self.firsts.first(FirstCall::Done) {
            let what = match &*g {
                Comm::Send(s) => match s.last_done() {
                    Some((sl, n)) => format!("send done on slot {sl}: {n} B"),
                    None => "send done".to_owned(),
                },
                Comm::Recv(r) => match r.last_done() {
                    Some((sl, n, f)) => format!(
                        "receive done on slot {sl}: {n} B, cnt[{sl}] = {f} fragments published"
                    ),
                    None => "receive done".to_owned(),
                },
            };
            self.info(
                Call::Test,
                format_args!("first {what} (comm {:#x})", self.addr()),
            );
        }
        Ok(done)
    }

    /// `irecvConsumed` on the request in `slot`.
    pub fn consumed(&self, slot: usize) -> Result<(), SimError> {
        match &mut *self.guard()? {
            Comm::Recv(r) => {
                // Logged before the call: releasing device bounce pages waits (at most
                // gpu_wait::GPU_WAIT_TIMEOUT) for a poison kernel; a log that ends here says
                // where it waited.
                if self.firsts.first(FirstCall::Consumed) {
                    self.info(
                        Call::IrecvConsumed,
                        format_args!(
                            "first irecvConsumed on recv comm {:#x}: slot {slot}, releasing its \
                             bounce pages",
                            self.addr()
                        ),
                    );
                }
                r.consumed(slot)
            }
            Comm::Send(_) => Err(SimError::ConsumedInvalid { slot }),
        }
    }

    /// The INFO line of a comm's close: what its helper threads did.
    pub fn close_summary(&self) -> Option<String> {
        let (kind, helpers) = match &*self.guard_wait().ok()? {
            Comm::Send(s) => ("send", s.helper_summary()),
            Comm::Recv(r) => ("recv", r.helper_summary()),
        };
        Some(format!("{kind} comm {:#x} helpers: {helpers}", self.addr()))
    }

    /// The WARN to print when this comm is closed now, if any.
    pub fn close_warning(&self) -> Option<String> {
        match &*self.guard_wait().ok()? {
            Comm::Send(s) => s.close_warning(),
            Comm::Recv(r) => r.close_warning(),
        }
    }
}

/// Maps a result to the code returned to NCCL, logging failures through `logger`.
pub fn report(logger: Option<Logger>, call: Call, r: Result<(), SimError>) -> NcclResult {
    match r {
        Ok(()) => NcclResult::SUCCESS,
        Err(e) => {
            if let Some(l) = logger {
                l.violation(call, &e);
            }
            e.rc()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_first_call_is_reported_once() {
        let f = FirstCalls::default();
        assert!(f.first(FirstCall::Isend));
        assert!(!f.first(FirstCall::Isend));
        assert!(f.first(FirstCall::Test));
        assert!(f.first(FirstCall::Done));
        assert!(!f.first(FirstCall::Test));
        assert!(f.first(FirstCall::Consumed));
        assert!(f.first(FirstCall::Irecv));
        assert!(!f.first(FirstCall::Irecv));
    }
}
