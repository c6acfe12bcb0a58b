//! The progress engine: one thread per GPU that owns every comm of that GPU and keeps each of
//! them busy.
//!
//! TCPX moves nothing unless `test` is called, lets you test only a comm's oldest request, and
//! holds a receive's slot until `irecvConsumed`. The C++ tree stalled at ~2.85 GB/s mostly on
//! progress cadence: it tested one channel at a time, blocked when a window filled, and slept
//! between tests. This engine does the opposite, every loop, on every comm:
//!
//! 1. take new transfers from the submission ring (an SPSC ring: the user thread produces);
//! 2. cut the oldest transfers into chunks ([`tcpx_core::plan`]) and stage each chunk on its
//!    channel (a fixed queue per channel, so one slow channel does not block the others);
//! 3. post staged chunks while the channel's window ([`tcpx_core::window`]) has room;
//! 4. `test` the head of every window, again and again while it reports done; release sends,
//!    `irecvConsumed` host receives in FIFO order; on a comm whose plugin publishes unpack
//!    metadata, unpack GPU receives first (`gpu.rs`, feature `cuda`: validate the fragments,
//!    one kernel launch per turn for every comm, consume when its event completes);
//! 5. when every chunk of a transfer is released, push a [`Completion`] into the completion ring.
//!
//! Invariants:
//! * The loop never sleeps while any transfer is in flight; it parks only when idle, and the
//!   user thread unparks it after each submission. While waiting on the network it yields its
//!   CPU after every empty turn (`EngineConfig::yield_when_waiting`): where CPUs are scarce the
//!   plugin's socket threads get them, where they are not `sched_yield` returns at once.
//! * After setup nothing on this path allocates or makes a syscall of its own beyond the plugin
//!   calls and those yields (a counting-allocator test holds it to the first). The one lock is
//!   taken when a completion is pushed while a user thread is parked in `Endpoint::wait` (to
//!   unpark it): once per transfer, never per chunk. Completions cannot overflow: the
//!   [`Endpoint`](crate::endpoint::Endpoint) admits at most [`MAX_IN_FLIGHT`] transfers.
//! * Dropping the endpoint fails what is still in flight with [`TransferError::Shutdown`].
//! * A connection with transfers in flight that sees no progress of its own (no submission, no
//!   post, no completed request) for the stall timeout fails with [`TransferError::Stalled`],
//!   carrying a dump of its windows — however busy the endpoint's other connections are. The
//!   clock is read once every `CLOCK_EVERY` (64) loop turns while anything is in flight, never per
//!   chunk; the shutdown flag is read there too, so a busy loop notices it as quickly.
//! * Any plugin error on a channel fails its connection: every transfer of that connection
//!   completes with the error, and later ones fail at once. Other connections go on.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tcpx_core::plan::{Chunk, Plan, PlanConfig, Planner};
use tcpx_core::ring::{Consumer, Producer, Ring};
use tcpx_core::stats::ChannelStats;
use tcpx_core::window::{Entry, EntryState, TcpxWindow, WindowKind};

#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
pub use gpu::CudaRecvConfig;

use crate::net::{
    abi::NcclResult, Call, MemHandle, PluginError, RecvComm, Region, Request, SendComm, TestResult,
};

/// The most transfers an endpoint keeps in flight (submitted and not yet taken as completed).
pub const MAX_IN_FLIGHT: usize = 128;

/// How many chunks a channel may have staged (planned, waiting for window room).
const STAGING: usize = 16;

/// While anything is in flight, the stall watch reads the clock (and the loop the shutdown flag)
/// once every this many loop turns, which keeps `Instant::now` off the per-chunk path.
const CLOCK_EVERY: u64 = 64;

/// Names a transfer for its whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transfer {}", self.0)
    }
}

/// A buffer registered with an endpoint (on every channel of every connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BufferId(pub(crate) u32);

/// A connection of an endpoint: a set of channels (TCPX comms) to one peer, one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub(crate) u16);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

/// Which way a connection moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This side posts `isend`s.
    Send,
    /// This side posts `irecv`s.
    Recv,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Send => "send",
            Direction::Recv => "recv",
        })
    }
}

/// What the user thread hands the progress thread for one transfer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Submission {
    pub(crate) id: TransferId,
    pub(crate) conn: ConnId,
    pub(crate) buf: BufferId,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// A finished transfer, as the completion ring reports it.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Which transfer.
    pub id: TransferId,
    /// How it ended.
    pub result: Result<TransferReport, TransferError>,
}

/// What a successful transfer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferReport {
    /// Bytes moved.
    pub bytes: u64,
    /// Chunks (plugin requests) it took.
    pub chunks: u32,
    /// From the progress thread taking it to its last chunk released.
    pub elapsed: Duration,
}

/// Why a transfer failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransferError {
    /// A plugin call failed on a channel of the transfer's connection. `rc` 2
    /// (`ncclSystemError`) from `test` usually means the peer closed or died.
    Plugin {
        /// The connection.
        conn: ConnId,
        /// The channel (comm index within the connection).
        channel: usize,
        /// The NIC (plugin device) of that channel.
        nic: usize,
        /// What failed.
        error: PluginError,
    },
    /// A received chunk could not be unpacked on the GPU: its fragments failed validation
    /// (out of the bounce pool or the chunk, overlapping, more than 2048, lengths not adding up)
    /// or a CUDA call failed.
    Unpack {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: usize,
        /// The NIC of that channel.
        nic: usize,
        /// What went wrong.
        reason: String,
    },
    /// The connection made no progress for the stall timeout; `dump` shows its windows.
    Stalled {
        /// How long nothing moved.
        waited: Duration,
        /// The state of every channel of the connection.
        dump: String,
    },
    /// The endpoint is shutting down.
    Shutdown,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plugin {
                conn,
                channel,
                nic,
                error,
            } => {
                write!(f, "{conn}, channel {channel} (NIC {nic}): {error}")?;
                if let PluginError::Call {
                    call: Call::Test,
                    rc: NcclResult::SYSTEM_ERROR,
                } = error
                {
                    f.write_str(" — the peer closed or died")?;
                }
                Ok(())
            }
            Self::Unpack {
                conn,
                channel,
                nic,
                reason,
            } => write!(f, "{conn}, channel {channel} (NIC {nic}): unpack: {reason}"),
            Self::Stalled { waited, dump } => {
                write!(f, "stalled: no progress for {waited:.1?}\n{dump}")
            }
            Self::Shutdown => f.write_str("the endpoint shut down"),
        }
    }
}

impl std::error::Error for TransferError {}

/// One channel: a TCPX comm and what the engine keeps for it.
pub(crate) enum Comm {
    Send(SendComm),
    Recv(RecvComm),
}

impl Comm {
    fn post(&self, mh: &MemHandle, offset: usize, len: usize) -> Result<Request, PluginError> {
        match self {
            Comm::Send(c) => c.isend(mh, offset, len),
            Comm::Recv(c) => c.irecv(mh, offset, len),
        }
    }

    fn test(&self, req: Request) -> Result<TestResult, PluginError> {
        match self {
            Comm::Send(c) => c.test(req),
            Comm::Recv(c) => c.test(req),
        }
    }

    fn register(&self, region: Arc<dyn Region>) -> Result<MemHandle, PluginError> {
        match self {
            Comm::Send(c) => c.register(region),
            Comm::Recv(c) => c.register(region),
        }
    }

    fn dev(&self) -> usize {
        match self {
            Comm::Send(c) => c.dev(),
            Comm::Recv(c) => c.dev(),
        }
    }
}

/// A chunk planned for a channel and waiting for window room.
#[derive(Clone, Copy, Debug, Default)]
struct Staged {
    transfer: u16,
    chunk: u32,
    offset: u64,
    len: u32,
}

/// What a window entry carries besides the plugin request: the transfer table slot.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Posted {
    req: Request,
    transfer: u16,
    /// Offset of the chunk in its buffer.
    offset: u64,
    /// The unpack slot of a receive on an unpacking comm (k-th receive → k % 16), else 0.
    slot: u8,
}

/// A fixed FIFO (no allocation after construction).
struct Fifo<T: Copy + Default, const N: usize> {
    items: [T; N],
    head: usize,
    len: usize,
}

impl<T: Copy + Default, const N: usize> Fifo<T, N> {
    fn new() -> Self {
        Self {
            items: [T::default(); N],
            head: 0,
            len: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.len == N
    }
    fn front(&self) -> Option<T> {
        (self.len > 0).then(|| self.items[self.head])
    }
    fn push(&mut self, v: T) -> bool {
        if self.is_full() {
            return false;
        }
        self.items[(self.head + self.len) % N] = v;
        self.len += 1;
        true
    }
    fn pop(&mut self) -> Option<T> {
        let v = self.front()?;
        self.head = (self.head + 1) % N;
        self.len -= 1;
        Some(v)
    }
}

pub(crate) struct Channel {
    comm: Comm,
    nic: usize,
    window: TcpxWindow<Posted>,
    staged: Fifo<Staged, STAGING>,
    mhs: Vec<Option<MemHandle>>,
    stats: ChannelStats,
    /// A receive comm whose plugin publishes unpack metadata (TCPX, tcpx-sim CUDA mode):
    /// received chunks are copied out of the bounce pool on the GPU.
    #[cfg(feature = "cuda")]
    unpack: Option<gpu::ChannelUnpack>,
}

impl Channel {
    fn new(comm: Comm) -> Self {
        let kind = match comm {
            Comm::Send(_) => WindowKind::Send,
            Comm::Recv(_) => WindowKind::RecvHost,
        };
        Self {
            nic: comm.dev(),
            comm,
            window: TcpxWindow::new(kind),
            staged: Fifo::new(),
            mhs: Vec::new(),
            stats: ChannelStats::default(),
            #[cfg(feature = "cuda")]
            unpack: None,
        }
    }
}

#[cfg(not(feature = "cuda"))]
impl Channel {
    /// The slot of the receive being posted: slots matter only on the GPU receive path.
    fn next_slot(&mut self) -> u8 {
        0
    }
}

/// Account one released chunk to its channel and transfer; whether that finished the transfer.
fn released(
    stats: &mut ChannelStats,
    transfers: &mut [Option<Transfer>],
    entry: &Entry<Posted>,
) -> bool {
    stats.record_release(u64::from(entry.bytes));
    match transfers[usize::from(entry.request.transfer)].as_mut() {
        Some(t) => {
            t.released += 1;
            t.bytes += u64::from(entry.bytes);
            t.released == t.chunks
        }
        None => false,
    }
}

/// A transfer the progress thread is working on.
#[derive(Clone, Debug)]
struct Transfer {
    id: TransferId,
    buf: BufferId,
    offset: u64,
    plan: Plan,
    /// The next chunk of `plan`, taken but not yet staged (its channel's staging was full).
    next: Option<Chunk>,
    chunks: u32,
    staged: u32,
    released: u32,
    bytes: u64,
    started: Instant,
}

/// Everything needed to hand a connection to the engine.
pub(crate) struct ConnSetup {
    pub(crate) direction: Direction,
    pub(crate) comms: Vec<Comm>,
    pub(crate) plan: PlanConfig,
}

struct Conn {
    direction: Direction,
    channels: Vec<Channel>,
    planner: Planner,
    /// Transfer table; a slot is `Some` from submission to completion.
    transfers: Vec<Option<Transfer>>,
    free: Vec<u16>,
    /// Slots whose chunks are still being staged, oldest first.
    feeding: Fifo<u16, MAX_IN_FLIGHT>,
    failed: Option<TransferError>,
    /// Something of this connection moved since the stall watch last read the clock.
    progressed: bool,
    /// When the stall watch last saw this connection move (or have nothing in flight).
    last_progress: Instant,
}

impl Conn {
    fn in_flight(&self) -> bool {
        self.free.len() < self.transfers.len()
    }
}

/// Counters of one channel, as [`Endpoint::stats`](crate::endpoint::Endpoint::stats) reports
/// them.
#[derive(Clone, Copy, Debug)]
pub struct ChannelReport {
    /// The connection.
    pub conn: ConnId,
    /// Channel index within the connection.
    pub channel: usize,
    /// The NIC (plugin device index).
    pub nic: usize,
    /// Its counters.
    pub stats: ChannelStats,
}

/// Where the progress thread runs.
#[derive(Clone, Debug, Default)]
pub struct ThreadReport {
    /// The CPUs it is pinned to (`None`: not pinned).
    pub pinned: Option<Vec<usize>>,
    /// The CPU it last ran on, if known.
    pub last_cpu: Option<usize>,
    /// Loop turns so far.
    pub loops: u64,
}

/// Setup-path requests from the endpoint to its progress thread.
pub(crate) enum Control {
    AddConn(ConnSetup, Sender<Result<ConnId, crate::endpoint::Error>>),
    Register(Arc<dyn Region>, Sender<Result<BufferId, PluginError>>),
    Stats(Sender<(Vec<ChannelReport>, ThreadReport)>),
}

pub(crate) type SubmitRing = Ring<Submission, MAX_IN_FLIGHT>;
pub(crate) type CompletionRing = Ring<Completion, MAX_IN_FLIGHT>;

/// Shared between the endpoint and its progress thread.
pub(crate) struct Shared {
    pub(crate) control_pending: AtomicBool,
    pub(crate) shutdown: AtomicBool,
    /// Set by a user thread about to park in `Endpoint::wait`; the progress thread unparks
    /// `waiter` after pushing a completion while it is set (one wake per transfer at most).
    pub(crate) waiting: AtomicBool,
    pub(crate) waiter: std::sync::Mutex<Option<thread::Thread>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            control_pending: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            waiter: std::sync::Mutex::new(None),
        }
    }

    /// Wake a parked waiter, if there is one. SeqCst pairs with the waiter's
    /// store-`waiting`-then-check-the-ring, so a completion pushed before this load is seen by
    /// the waiter's check, or this load sees `waiting` and wakes it.
    fn wake_waiter(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            if let Ok(w) = self.waiter.lock() {
                if let Some(t) = w.as_ref() {
                    t.unpark();
                }
            }
        }
    }
}

/// Progress-thread settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Fail a transfer when nothing moved for this long.
    pub stall_timeout: Duration,
    /// Pin the progress thread to these CPUs (`None`: leave it where the OS puts it).
    pub cpus: Option<Vec<usize>>,
    /// The thread's name.
    pub name: String,
    /// Yield the CPU after every loop turn in which work is in flight but nothing moved (the
    /// thread never sleeps while work is in flight either way).
    pub yield_when_waiting: bool,
    /// The GPU receive path: unpack received chunks out of the bounce pool on this GPU.
    #[cfg(feature = "cuda")]
    pub cuda: Option<CudaRecvConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(30),
            cpus: None,
            name: "tcpx-progress".into(),
            yield_when_waiting: true,
            #[cfg(feature = "cuda")]
            cuda: None,
        }
    }
}

pub(crate) struct Engine {
    conns: Vec<Conn>,
    regions: Vec<Arc<dyn Region>>,
    submissions: Consumer<Submission, MAX_IN_FLIGHT, Arc<SubmitRing>>,
    completions: Producer<Completion, MAX_IN_FLIGHT, Arc<CompletionRing>>,
    control: Receiver<Control>,
    shared: Arc<Shared>,
    config: EngineConfig,
    thread: ThreadReport,
    #[cfg(feature = "cuda")]
    gpu: Option<gpu::GpuRecv>,
    /// Why the GPU receive path could not start (reported to every connection added).
    #[cfg(feature = "cuda")]
    gpu_error: Option<String>,
}

impl Engine {
    pub(crate) fn new(
        submissions: Consumer<Submission, MAX_IN_FLIGHT, Arc<SubmitRing>>,
        completions: Producer<Completion, MAX_IN_FLIGHT, Arc<CompletionRing>>,
        control: Receiver<Control>,
        shared: Arc<Shared>,
        config: EngineConfig,
    ) -> Self {
        Self {
            conns: Vec::new(),
            regions: Vec::new(),
            submissions,
            completions,
            control,
            shared,
            config,
            thread: ThreadReport::default(),
            #[cfg(feature = "cuda")]
            gpu: None,
            #[cfg(feature = "cuda")]
            gpu_error: None,
        }
    }

    /// The progress loop; returns when the endpoint shuts down.
    pub(crate) fn run(mut self) {
        self.pin();
        #[cfg(feature = "cuda")]
        if let Some(c) = self.config.cuda.clone() {
            match gpu::GpuRecv::new(&c) {
                Ok(g) => self.gpu = Some(g),
                Err(e) => self.gpu_error = Some(e.to_string()),
            }
        }
        let mut idle_turns: u32 = 0;
        loop {
            self.thread.loops += 1;
            if self.shared.control_pending.swap(false, Ordering::Acquire) {
                self.handle_control();
            }
            let progressed = self.turn();
            let busy = self.conns.iter().any(Conn::in_flight);
            if busy && self.thread.loops % CLOCK_EVERY == 0 {
                if self.shared.shutdown.load(Ordering::Acquire) {
                    break; // the endpoint is going away: fail what is in flight now
                }
                self.check_stall();
            }
            if progressed {
                idle_turns = 0;
                continue;
            }
            idle_turns = idle_turns.wrapping_add(1);
            if busy {
                if self.config.yield_when_waiting {
                    // Waiting on the network: let the plugin's socket threads have this CPU if
                    // they need it. On the 2-core dev box, yielding after every empty turn
                    // instead of every 64th moved 4.9 instead of 3.9 GB/s (BENCHMARKS.md).
                    thread::yield_now();
                }
                continue;
            }
            if self.shared.shutdown.load(Ordering::Acquire) {
                break;
            }
            // Idle: spin briefly (a submission usually follows a completion closely), then
            // park until the endpoint unparks us, with a timeout as a safety net.
            if idle_turns > 4096 {
                thread::park_timeout(Duration::from_millis(5));
            } else {
                std::hint::spin_loop();
            }
        }
        self.fail_all(TransferError::Shutdown);
    }

    fn pin(&mut self) {
        let Some(cpus) = self.config.cpus.clone() else {
            return;
        };
        let mut set = nix::sched::CpuSet::new();
        for &c in &cpus {
            if set.set(c).is_err() {
                tracing::warn!(cpu = c, "cannot pin the progress thread to this CPU");
            }
        }
        match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
            Ok(()) => self.thread.pinned = Some(cpus),
            Err(e) => tracing::warn!(error = %e, "pinning the progress thread failed"),
        }
    }

    fn handle_control(&mut self) {
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                Control::AddConn(setup, reply) => {
                    let _ = reply.send(self.add_conn(setup));
                }
                Control::Register(region, reply) => {
                    let _ = reply.send(self.register(region));
                }
                Control::Stats(reply) => {
                    self.thread.last_cpu = nix::sched::sched_getcpu().ok();
                    let mut out = Vec::new();
                    for (c, conn) in self.conns.iter().enumerate() {
                        for (i, ch) in conn.channels.iter().enumerate() {
                            out.push(ChannelReport {
                                conn: ConnId(c as u16),
                                channel: i,
                                nic: ch.nic,
                                stats: ch.stats,
                            });
                        }
                    }
                    let _ = reply.send((out, self.thread.clone()));
                }
            }
        }
    }

    fn add_conn(&mut self, setup: ConnSetup) -> Result<ConnId, crate::endpoint::Error> {
        let mut channels: Vec<Channel> = setup.comms.into_iter().map(Channel::new).collect();
        #[cfg(feature = "cuda")]
        if let Some(c) = &self.config.cuda {
            if let Some(e) = &self.gpu_error {
                return Err(crate::endpoint::Error::Gpu(e.clone()));
            }
            for ch in &mut channels {
                ch.open_unpack(&c.gpu)?;
            }
        }
        for ch in &mut channels {
            for region in &self.regions {
                ch.mhs.push(Some(ch.comm.register(region.clone())?));
            }
        }
        let id = ConnId(self.conns.len() as u16);
        self.conns.push(Conn {
            direction: setup.direction,
            channels,
            planner: Planner::new(setup.plan),
            transfers: vec![None; MAX_IN_FLIGHT],
            free: (0..MAX_IN_FLIGHT as u16).rev().collect(),
            feeding: Fifo::new(),
            failed: None,
            progressed: false,
            last_progress: Instant::now(),
        });
        Ok(id)
    }

    fn register(&mut self, region: Arc<dyn Region>) -> Result<BufferId, PluginError> {
        let mut handles = Vec::new();
        for (c, conn) in self.conns.iter().enumerate() {
            for (i, ch) in conn.channels.iter().enumerate() {
                handles.push((c, i, ch.comm.register(region.clone())?));
            }
        }
        for (c, i, mh) in handles {
            self.conns[c].channels[i].mhs.push(Some(mh));
        }
        self.regions.push(region);
        Ok(BufferId((self.regions.len() - 1) as u32))
    }

    /// One pass over everything; whether anything moved.
    fn turn(&mut self) -> bool {
        let mut progressed = self.take_submissions();
        for c in 0..self.conns.len() {
            if self.conns[c].failed.is_some() || !self.conns[c].in_flight() {
                continue;
            }
            let result = self.progress_conn(c);
            match result {
                Ok(p) => {
                    self.conns[c].progressed |= p;
                    progressed |= p;
                }
                Err(e) => {
                    self.fail_conn(c, e);
                    progressed = true;
                }
            }
        }
        #[cfg(feature = "cuda")]
        {
            progressed |= self.launch_pending();
        }
        progressed
    }

    /// Launch the unpack batch this turn's receives pushed (one launch for every comm of this
    /// GPU) and hand its event to each pushed entry (the `Done` entries of unpacking windows).
    #[cfg(feature = "cuda")]
    fn launch_pending(&mut self) -> bool {
        let Some(g) = self.gpu.as_mut() else {
            return false;
        };
        if g.unpacker.pending_chunks() == 0 {
            return false;
        }
        match g.unpacker.launch() {
            Ok(Some(event)) => {
                for conn in &mut self.conns {
                    for ch in conn.channels.iter_mut().filter(|ch| ch.unpack.is_some()) {
                        while ch.window.done() > 0 {
                            let _ = ch.window.start_unpack(event);
                        }
                    }
                }
                true
            }
            Ok(None) => false,
            // Every event is held by unpacks still running: launch next turn.
            Err(crate::cuda::UnpackError::NoFreeEvent { .. }) => false,
            Err(e) => {
                let reason = e.to_string();
                for c in 0..self.conns.len() {
                    let unpacking = self.conns[c]
                        .channels
                        .iter()
                        .position(|ch| ch.unpack.is_some());
                    if let (Some(channel), true) = (unpacking, self.conns[c].in_flight()) {
                        let nic = self.conns[c].channels[channel].nic;
                        let err = TransferError::Unpack {
                            conn: ConnId(c as u16),
                            channel,
                            nic,
                            reason: reason.clone(),
                        };
                        self.fail_conn(c, err);
                    }
                }
                true
            }
        }
    }

    fn take_submissions(&mut self) -> bool {
        let mut took = false;
        while let Some(s) = self.submissions.pop() {
            took = true;
            let Some(conn) = self.conns.get_mut(usize::from(s.conn.0)) else {
                self.complete(s.id, Err(TransferError::Shutdown));
                continue;
            };
            if let Some(err) = conn.failed.clone() {
                self.complete(s.id, Err(err));
                continue;
            }
            // The endpoint validated the plan inputs and admits at most MAX_IN_FLIGHT, so a
            // slot is free and planning succeeds.
            let (Some(slot), Ok(plan)) = (conn.free.pop(), conn.planner.plan(s.len)) else {
                self.complete(s.id, Err(TransferError::Shutdown));
                continue;
            };
            let chunks = plan.chunk_count();
            conn.progressed = true;
            conn.transfers[usize::from(slot)] = Some(Transfer {
                id: s.id,
                buf: s.buf,
                offset: s.offset,
                plan,
                next: None,
                chunks,
                staged: 0,
                released: 0,
                bytes: 0,
                started: Instant::now(),
            });
            conn.feeding.push(slot);
        }
        took
    }

    /// Stage, post, test and release on every channel of connection `c`.
    fn progress_conn(&mut self, c: usize) -> Result<bool, TransferError> {
        let conn = &mut self.conns[c];
        let mut progressed = stage(conn);
        let mut any_finished = false;
        for (i, ch) in conn.channels.iter_mut().enumerate() {
            let nic = ch.nic;
            let fail = |error| TransferError::Plugin {
                conn: ConnId(c as u16),
                channel: i,
                nic,
                error,
            };
            // Post while the window has room.
            while !ch.window.is_full() {
                let Some(s) = ch.staged.front() else { break };
                let transfer = conn.transfers[usize::from(s.transfer)]
                    .as_ref()
                    .ok_or(TransferError::Shutdown)?;
                let mh = ch.mhs[transfer.buf.0 as usize]
                    .as_ref()
                    .ok_or(TransferError::Shutdown)?;
                let req = ch
                    .comm
                    .post(mh, s.offset as usize, s.len as usize)
                    .map_err(fail)?;
                let posted = Posted {
                    req,
                    transfer: s.transfer,
                    offset: s.offset,
                    slot: ch.next_slot(),
                };
                // Cannot fail: the window is not full.
                let _ = ch.window.post(posted, s.chunk, s.len);
                ch.staged.pop();
                ch.stats.record_post();
                progressed = true;
            }
            ch.stats.observe_window_depth(ch.window.len());
            #[cfg(feature = "cuda")]
            if ch.unpack.is_some() {
                let Some(gpu) = self.gpu.as_mut() else {
                    return Err(TransferError::Shutdown);
                };
                let (p, f) = gpu::progress_channel(
                    ch,
                    &mut conn.transfers,
                    &self.regions,
                    gpu,
                    ConnId(c as u16),
                    i,
                )?;
                progressed |= p;
                any_finished |= f;
                continue;
            }
            // Test the head, again while it reports done.
            while let Some(entry) = ch.window.next_to_test() {
                ch.stats.record_test();
                match ch.comm.test(entry.request.req).map_err(fail)? {
                    TestResult::Pending => break,
                    TestResult::Done => {}
                }
                // Cannot fail: it is the head we just tested.
                let _ = ch.window.mark_done(entry.request);
                if let Comm::Recv(rc) = &ch.comm {
                    rc.irecv_consumed(entry.request.req).map_err(fail)?;
                }
                let _ = ch.window.release_oldest();
                progressed = true;
                any_finished |= released(&mut ch.stats, &mut conn.transfers, &entry);
            }
        }
        if any_finished {
            self.sweep_finished(c);
        }
        Ok(progressed)
    }

    fn sweep_finished(&mut self, c: usize) {
        for slot in 0..self.conns[c].transfers.len() {
            let done = matches!(&self.conns[c].transfers[slot], Some(t) if t.released == t.chunks);
            if done {
                if let Some(t) = self.conns[c].transfers[slot].take() {
                    self.conns[c].free.push(slot as u16);
                    let report = TransferReport {
                        bytes: t.bytes,
                        chunks: t.chunks,
                        elapsed: t.started.elapsed(),
                    };
                    self.complete(t.id, Ok(report));
                }
            }
        }
    }

    fn complete(&mut self, id: TransferId, result: Result<TransferReport, TransferError>) {
        // Cannot be full: the endpoint admits at most MAX_IN_FLIGHT transfers, and a slot of the
        // completion ring is freed before a new transfer is admitted.
        if self.completions.push(Completion { id, result }).is_err() {
            tracing::error!(%id, "completion ring full; completion lost");
        }
        self.shared.wake_waiter();
    }

    /// The stall watch: fail every connection that has had transfers in flight and no progress
    /// of its own for the stall timeout.
    fn check_stall(&mut self) {
        let now = Instant::now();
        for c in 0..self.conns.len() {
            let conn = &mut self.conns[c];
            let moved = std::mem::take(&mut conn.progressed);
            if moved || !conn.in_flight() || conn.failed.is_some() {
                conn.last_progress = now;
                continue;
            }
            let waited = now - conn.last_progress;
            if waited >= self.config.stall_timeout {
                let dump = self.dump(c);
                tracing::error!(conn = c, "stalled for {waited:.1?}\n{dump}");
                self.fail_conn(c, TransferError::Stalled { waited, dump });
                self.conns[c].last_progress = now;
            }
        }
    }

    /// A human-readable picture of one connection's windows, for stall reports.
    fn dump(&self, c: usize) -> String {
        let conn = &self.conns[c];
        let mut s = String::new();
        let _ = writeln!(s, "connection {c} ({}):", conn.direction);
        for (i, ch) in conn.channels.iter().enumerate() {
            let _ = write!(
                s,
                "  channel {i} (NIC {}): window {}/{} [posted {}, done {}, unpacking {}], staged {}, {} chunks / {} bytes done:",
                ch.nic,
                ch.window.len(),
                ch.window.capacity(),
                ch.window.posted(),
                ch.window.done(),
                ch.window.unpacking(),
                ch.staged.len,
                ch.stats.chunks,
                ch.stats.bytes,
            );
            for e in ch.window.iter() {
                let state = match e.state {
                    EntryState::Posted => "posted".to_string(),
                    other => other.to_string(),
                };
                let _ = write!(s, " [chunk {} {}B {state}]", e.chunk, e.bytes);
            }
            s.push('\n');
        }
        for t in conn.transfers.iter().flatten() {
            let _ = writeln!(
                s,
                "  {}: {} of {} chunks staged, {} released",
                t.id, t.staged, t.chunks, t.released
            );
        }
        s
    }

    fn fail_conn(&mut self, c: usize, err: TransferError) {
        tracing::warn!(conn = c, error = %err, "connection failed");
        let ids: Vec<TransferId> = self.conns[c]
            .transfers
            .iter_mut()
            .filter_map(|t| t.take().map(|t| t.id))
            .collect();
        let conn = &mut self.conns[c];
        conn.free = (0..MAX_IN_FLIGHT as u16).rev().collect();
        conn.feeding = Fifo::new();
        conn.failed = Some(err.clone());
        for id in ids {
            self.complete(id, Err(err.clone()));
        }
    }

    fn fail_all(&mut self, err: TransferError) {
        for c in 0..self.conns.len() {
            if self.conns[c].in_flight() {
                self.fail_conn(c, err.clone());
            }
        }
    }
}

/// Cut the oldest transfers into chunks and stage them on their channels until a channel's
/// staging is full. Returns whether anything was staged.
fn stage(conn: &mut Conn) -> bool {
    let mut staged_any = false;
    while let Some(slot) = conn.feeding.front() {
        let Some(t) = conn.transfers[usize::from(slot)].as_mut() else {
            conn.feeding.pop();
            continue;
        };
        loop {
            let chunk = match t.next.take() {
                Some(c) => c,
                None => match t.plan.next() {
                    Some(c) => c,
                    None => break,
                },
            };
            let ch = &mut conn.channels[usize::from(chunk.channel)];
            let staged = Staged {
                transfer: slot,
                chunk: chunk.index,
                offset: t.offset + chunk.offset,
                len: chunk.len,
            };
            if !ch.staged.push(staged) {
                t.next = Some(chunk);
                return staged_any;
            }
            t.staged += 1;
            staged_any = true;
        }
        conn.feeding.pop();
    }
    staged_any
}
