//! The public API: an [`Endpoint`] per GPU, [`Connection`]s to peers, `post` of registered
//! buffers, completion by polling or waiting.
//!
//! An endpoint owns one progress thread ([`crate::engine`]) that owns every comm of the GPU.
//! The calling thread talks to it through two SPSC rings (submissions in, completions out), so
//! posting and polling allocate nothing and take no lock. Setup — registering buffers, making
//! connections — goes through a channel to the progress thread and may allocate.
//!
//! A connection moves data one way: the side that [`serve`](Endpoint::serve)s listens for TCPX
//! comms and receives; the side that [`connect`](Endpoint::connect)s sends. The bootstrap
//! ([`crate::bootstrap`]) carries the server's listen handles and the agreed chunk size, channel
//! count, transfer size and iteration count, so both sides cut every transfer into the same
//! chunks on the same channels (TCPX matches sends to receives in FIFO order per comm and never
//! checks sizes). Transfers on a connection must be posted in the same order and with the same
//! lengths on both sides.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tcpx::bootstrap::BootstrapListener;
//! use tcpx::endpoint::{Endpoint, EndpointConfig};
//! use tcpx::net::{HostBuffer, Plugin};
//!
//! let plugin = Plugin::load("libtcpx_sim.so")?;
//! let mut rx = Endpoint::new(plugin.clone(), EndpointConfig::default())?;
//! let listener = BootstrapListener::bind("127.0.0.1:20000".parse()?)?;
//! let deadline = Instant::now() + Duration::from_secs(30);
//! let conn = rx.serve(&listener, deadline)?; // a peer calls Endpoint::connect
//! let buf = rx.register(Arc::new(HostBuffer::new(1 << 20)?))?;
//! let id = rx.post(conn.id(), buf, 0, 1 << 20)?;
//! let report = rx.wait(id, deadline)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tcpx_core::codec::{self, Done, Handles, Hello, Message, MessageKind};
use tcpx_core::plan::{PlanConfig, PlanError, Policy, DEFAULT_CHUNK_BYTES};
use tcpx_core::ring::{Consumer, Producer, Ring};

use crate::bootstrap::{BootstrapError, BootstrapListener, Control};
use crate::channel::{ChannelError, ChannelManager, NicSelection};
use crate::engine::{
    self, ChannelReport, Comm, Completion, CompletionRing, ConnSetup, Engine, EngineConfig, Shared,
    Submission, SubmitRing, ThreadReport, TransferReport, MAX_IN_FLIGHT,
};
pub use crate::engine::{BufferId, ConnId, Direction, TransferError, TransferId};
use crate::net::{Plugin, PluginError, Region};
use crate::topology::Sysfs;

/// How the progress thread is placed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Pinning {
    /// On the CPUs of the GPU's NUMA node (from sysfs); unpinned when that is unknown.
    #[default]
    NumaLocal,
    /// Not pinned.
    Off,
    /// On these CPUs.
    Cpus(Vec<usize>),
}

/// Endpoint settings. `Default` gives GPU 0, 8 channels, 512 KiB chunks.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// The GPU index (also the bootstrap port offset and the topology key).
    pub gpu: u32,
    /// Channels (TCPX comms) per connection, decided by the serving side.
    pub channels: u16,
    /// Chunk size in bytes (≤ 4 MiB, a multiple of 4 KiB), decided by the serving side.
    pub chunk_bytes: u32,
    /// How each channel's NIC is chosen.
    pub nics: NicSelection,
    /// Where the progress thread runs.
    pub pinning: Pinning,
    /// A connection whose transfers make no progress this long fails them with `Stalled`. It
    /// also bounds how long a setup request waits for the progress thread's answer and how
    /// long dropping the endpoint waits for that thread to stop.
    pub stall_timeout: Duration,
    /// Let the progress thread yield its CPU while it waits on the network (see
    /// [`EngineConfig::yield_when_waiting`]); turn off on machines with cores to spare.
    pub yield_when_waiting: bool,
    /// The GPU: made current on the calling thread for listen/accept/connect (TCPX uses the
    /// thread's current device) and on the progress thread, which unpacks received chunks out
    /// of the bounce pool when the plugin publishes unpack metadata.
    #[cfg(feature = "cuda")]
    pub cuda: Option<crate::engine::CudaRecvConfig>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            gpu: 0,
            channels: 8,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            nics: NicSelection::Topology,
            pinning: Pinning::NumaLocal,
            stall_timeout: Duration::from_secs(30),
            yield_when_waiting: true,
            #[cfg(feature = "cuda")]
            cuda: None,
        }
    }
}

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A plugin call failed during setup.
    Plugin(PluginError),
    /// Channel setup failed.
    Channel(ChannelError),
    /// The bootstrap failed.
    Bootstrap(BootstrapError),
    /// Chunk size or channel count is not usable.
    Plan(PlanError),
    /// A transfer failed.
    Transfer(TransferError),
    /// [`MAX_IN_FLIGHT`] transfers are already in flight; take completions first.
    Busy,
    /// No such buffer, connection or transfer.
    Unknown(&'static str),
    /// The range is outside the buffer.
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The buffer's length.
        buffer_len: u64,
    },
    /// A wait ended at its deadline.
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// The progress thread is gone (it panicked or was shut down).
    EngineGone,
    /// The GPU receive path could not be set up (no GPU, a device handle that is not device
    /// memory, …).
    Gpu(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plugin(e) => write!(f, "{e}"),
            Self::Channel(e) => write!(f, "{e}"),
            Self::Bootstrap(e) => write!(f, "{e}"),
            Self::Plan(e) => write!(f, "{e}"),
            Self::Transfer(e) => write!(f, "{e}"),
            Self::Busy => write!(f, "{MAX_IN_FLIGHT} transfers already in flight"),
            Self::Unknown(what) => write!(f, "unknown {what}"),
            Self::OutOfRange {
                offset,
                len,
                buffer_len,
            } => write!(
                f,
                "range {offset}..{} is outside the {buffer_len}-byte buffer",
                offset.saturating_add(*len)
            ),
            Self::Timeout { what, waited } => write!(f, "{what} timed out after {waited:.1?}"),
            Self::EngineGone => f.write_str("the progress thread is gone"),
            Self::Gpu(e) => write!(f, "GPU receive path: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Plugin(e) => Some(e),
            Self::Channel(e) => Some(e),
            Self::Bootstrap(e) => Some(e),
            Self::Plan(e) => Some(e),
            Self::Transfer(e) => Some(e),
            _ => None,
        }
    }
}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Self {
        Self::Plugin(e)
    }
}
impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}
impl From<BootstrapError> for Error {
    fn from(e: BootstrapError) -> Self {
        Self::Bootstrap(e)
    }
}
impl From<PlanError> for Error {
    fn from(e: PlanError) -> Self {
        Self::Plan(e)
    }
}

/// What both sides of a connection agreed on in the bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreement {
    /// The peer's GPU index.
    pub peer_gpu: u32,
    /// Channels (TCPX comms).
    pub channels: u16,
    /// Chunk size.
    pub chunk_bytes: u32,
    /// Bytes per iteration, as the client proposed it (informational for library users; the
    /// bench sizes its runs by it).
    pub bytes: u64,
    /// Iterations, likewise.
    pub iters: u32,
}

/// One connection of an endpoint: its channels live in the progress thread; this holds the
/// bootstrap control connection and what was agreed.
#[derive(Debug)]
pub struct Connection {
    id: ConnId,
    direction: Direction,
    agreement: Agreement,
    nics: Vec<(usize, String)>,
    control: Control,
}

impl Connection {
    /// The connection a successful setup made; after a failed one, tell the peer why.
    fn from_setup(
        mut control: Control,
        direction: Direction,
        setup: Result<Established, Error>,
    ) -> Result<Self, Error> {
        match setup {
            Ok(e) => Ok(Self {
                id: e.id,
                direction,
                agreement: e.agreement,
                nics: e.nics,
                control,
            }),
            Err(e) => {
                control.send_error(codec::error_code::UNSPECIFIED, &e.to_string());
                Err(e)
            }
        }
    }

    /// The id to post transfers with.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Which way data moves.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// What the bootstrap agreed.
    pub fn agreement(&self) -> Agreement {
        self.agreement
    }

    /// The (plugin device, interface name) of each channel.
    pub fn nics(&self) -> &[(usize, String)] {
        &self.nics
    }

    /// A barrier with the peer over the bootstrap connection.
    pub fn barrier(&mut self, token: u32, deadline: Instant) -> Result<(), Error> {
        Ok(self.control.barrier(token, deadline)?)
    }

    /// End the run: exchange `Done` summaries (to compare) and `Bye`, so neither side closes
    /// its comms while the other still tests them. Returns the peer's summary.
    pub fn finish(&mut self, ours: Done, deadline: Instant) -> Result<Done, Error> {
        self.control.send(&Message::Done(ours), deadline)?;
        let theirs = match self.control.expect(MessageKind::Done, deadline)? {
            Message::Done(d) => d,
            _ => return Err(Error::Unknown("bootstrap reply")),
        };
        self.control.send(&Message::Bye, deadline)?;
        self.control.expect(MessageKind::Bye, deadline)?;
        Ok(theirs)
    }

    /// Tell the peer why this side gives up.
    pub fn abort(&mut self, reason: &str) {
        self.control
            .send_error(codec::error_code::UNSPECIFIED, reason);
    }
}

/// What a successful bootstrap produced, before it becomes a [`Connection`].
struct Established {
    id: ConnId,
    agreement: Agreement,
    nics: Vec<(usize, String)>,
}

/// An endpoint: one GPU, one progress thread, any number of connections.
pub struct Endpoint {
    plugin: Arc<Plugin>,
    config: EndpointConfig,
    submit: Producer<Submission, MAX_IN_FLIGHT, Arc<SubmitRing>>,
    completions: Consumer<Completion, MAX_IN_FLIGHT, Arc<CompletionRing>>,
    control: Sender<engine::Control>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_id: u64,
    /// Posted and not yet handed to the user as a completion.
    in_flight: usize,
    /// Completions taken off the ring by `wait` for another id; capacity reserved up front.
    stash: Vec<Completion>,
    buffers: Vec<u64>,
    conns: Vec<Direction>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("plugin", &self.plugin.name())
            .field("config", &self.config)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Start an endpoint and its progress thread.
    pub fn new(plugin: Arc<Plugin>, config: EndpointConfig) -> Result<Self, Error> {
        PlanConfig::new(config.chunk_bytes, config.channels, Policy::RoundRobin)?;
        let (submit, submissions) =
            Ring::split(Arc::new(SubmitRing::new())).map_err(|_| Error::EngineGone)?;
        let (completed, completions) =
            Ring::split(Arc::new(CompletionRing::new())).map_err(|_| Error::EngineGone)?;
        let (control, control_rx) = mpsc::channel();
        let shared = Arc::new(Shared::new());
        let cpus = match &config.pinning {
            Pinning::Off => None,
            Pinning::Cpus(c) => Some(c.clone()),
            Pinning::NumaLocal => numa_local_cpus(config.gpu),
        };
        let engine_config = EngineConfig {
            stall_timeout: config.stall_timeout,
            cpus,
            name: format!("tcpx-progress-gpu{}", config.gpu),
            yield_when_waiting: config.yield_when_waiting,
            #[cfg(feature = "cuda")]
            cuda: config.cuda.clone(),
        };
        let engine = Engine::new(
            submissions,
            completed,
            control_rx,
            shared.clone(),
            engine_config.clone(),
        );
        let thread = thread::Builder::new()
            .name(engine_config.name)
            .spawn(move || engine.run())
            .map_err(|_| Error::EngineGone)?;
        Ok(Self {
            plugin,
            config,
            submit,
            completions,
            control,
            shared,
            thread: Some(thread),
            next_id: 0,
            in_flight: 0,
            stash: Vec::with_capacity(MAX_IN_FLIGHT),
            buffers: Vec::new(),
            conns: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    /// A setup-path request to the progress thread, answered at the top of its next loop turn.
    /// A thread that does not answer within the stall timeout (stuck in a plugin call) is a
    /// [`Error::Timeout`], not a hang.
    fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> engine::Control) -> Result<T, Error> {
        let (tx, rx) = mpsc::channel();
        self.control.send(make(tx)).map_err(|_| Error::EngineGone)?;
        self.shared.control_pending.store(true, Ordering::Release);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        let waited = self.config.stall_timeout;
        rx.recv_timeout(waited).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => Error::Timeout {
                what: "the progress thread's answer",
                waited,
            },
            mpsc::RecvTimeoutError::Disconnected => Error::EngineGone,
        })
    }

    /// Register a buffer on every channel of every connection (and of connections made later).
    pub fn register(&mut self, region: Arc<dyn Region>) -> Result<BufferId, Error> {
        let len = region.len() as u64;
        let id = self.ask(|tx| engine::Control::Register(region, tx))??;
        self.buffers.push(len);
        Ok(id)
    }

    fn add_conn(
        &mut self,
        direction: Direction,
        comms: Vec<Comm>,
        plan: PlanConfig,
    ) -> Result<ConnId, Error> {
        let setup = ConnSetup {
            direction,
            comms,
            plan,
        };
        let id = self.ask(|tx| engine::Control::AddConn(setup, tx))??;
        self.conns.push(direction);
        Ok(id)
    }

    /// The receiving side: accept a client on `listener`, read its hello, listen on every
    /// channel, send the handles, accept the comms, then meet the client at a barrier.
    pub fn serve(
        &mut self,
        listener: &BootstrapListener,
        deadline: Instant,
    ) -> Result<Connection, Error> {
        let mut control = listener.accept(deadline)?;
        let setup = self.serve_on(&mut control, deadline);
        Connection::from_setup(control, Direction::Recv, setup)
    }

    fn serve_on(&mut self, control: &mut Control, deadline: Instant) -> Result<Established, Error> {
        let Message::Hello(hello) = control.expect(MessageKind::Hello, deadline)? else {
            return Err(Error::Unknown("bootstrap message"));
        };
        self.make_gpu_current()?;
        let channels = self.config.channels;
        let chunk = self.config.chunk_bytes;
        let plan = PlanConfig::new(chunk, channels, Policy::RoundRobin)?;
        let cm = ChannelManager::new(
            &self.plugin,
            self.config.gpu,
            channels.into(),
            &self.config.nics,
        )?;
        let listens = cm.server_listen_all()?;
        let handles: Vec<_> = listens.iter().map(|l| *l.handle()).collect();
        let msg = Handles::new(self.config.gpu, chunk, hello.bytes, hello.iters, &handles)
            .map_err(BootstrapError::Encode)?;
        control.send(&Message::Handles(msg), deadline)?;
        let comms = ChannelManager::server_accept_all(listens, deadline)?;
        let agreement = Agreement {
            peer_gpu: hello.gpu,
            channels,
            chunk_bytes: chunk,
            bytes: hello.bytes,
            iters: hello.iters,
        };
        let comms = comms.into_iter().map(Comm::Recv).collect();
        self.establish(
            control,
            &cm,
            Direction::Recv,
            comms,
            plan,
            agreement,
            deadline,
        )
    }

    /// Hand the comms to the progress thread, then meet the peer at a barrier (both sides'
    /// channels exist before either posts).
    #[allow(clippy::too_many_arguments)]
    fn establish(
        &mut self,
        control: &mut Control,
        cm: &ChannelManager,
        direction: Direction,
        comms: Vec<Comm>,
        plan: PlanConfig,
        agreement: Agreement,
        deadline: Instant,
    ) -> Result<Established, Error> {
        let id = self.add_conn(direction, comms, plan)?;
        control.barrier(0, deadline)?;
        let nics = cm
            .nics()
            .iter()
            .map(|&d| (d, cm.nic_name(d).to_owned()))
            .collect();
        Ok(Established {
            id,
            agreement,
            nics,
        })
    }

    /// The sending side: connect to a server's bootstrap at `addr`, propose `bytes` × `iters`,
    /// take its handles, connect every channel, then meet it at a barrier.
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        bytes: u64,
        iters: u32,
        deadline: Instant,
    ) -> Result<Connection, Error> {
        let mut control = Control::connect(addr, deadline)?;
        let setup = self.connect_on(&mut control, bytes, iters, deadline);
        Connection::from_setup(control, Direction::Send, setup)
    }

    fn connect_on(
        &mut self,
        control: &mut Control,
        bytes: u64,
        iters: u32,
        deadline: Instant,
    ) -> Result<Established, Error> {
        let hello = Hello {
            gpu: self.config.gpu,
            channels: 0,
            chunk_bytes: 0,
            bytes,
            iters,
        };
        control.send(&Message::Hello(hello), deadline)?;
        let Message::Handles(h) = control.expect(MessageKind::Handles, deadline)? else {
            return Err(Error::Unknown("bootstrap message"));
        };
        // The server decides channels and chunk size; size and iterations are ours, echoed.
        for (what, ours, theirs) in [
            ("bytes per iteration", bytes, h.bytes),
            ("iterations", iters.into(), h.iters.into()),
        ] {
            if ours != theirs {
                return Err(BootstrapError::Mismatch {
                    addr: control.peer(),
                    what,
                    ours,
                    theirs,
                }
                .into());
            }
        }
        let plan = PlanConfig::new(h.chunk_bytes, h.channels(), Policy::RoundRobin)?;
        self.make_gpu_current()?;
        let cm = ChannelManager::new(
            &self.plugin,
            self.config.gpu,
            h.channels().into(),
            &self.config.nics,
        )?;
        let comms = cm.client_connect_all(h.handles(), deadline)?;
        let agreement = Agreement {
            peer_gpu: h.gpu,
            channels: h.channels(),
            chunk_bytes: h.chunk_bytes,
            bytes: h.bytes,
            iters: h.iters,
        };
        let comms = comms.into_iter().map(Comm::Send).collect();
        self.establish(
            control,
            &cm,
            Direction::Send,
            comms,
            plan,
            agreement,
            deadline,
        )
    }

    /// Post a transfer of `len` bytes at `offset` in `buf` on connection `conn` (a send or a
    /// receive, as the connection's direction says). Allocates nothing and takes no lock.
    pub fn post(
        &mut self,
        conn: ConnId,
        buf: BufferId,
        offset: u64,
        len: u64,
    ) -> Result<TransferId, Error> {
        if self.in_flight >= MAX_IN_FLIGHT {
            return Err(Error::Busy);
        }
        if usize::from(conn.0) >= self.conns.len() {
            return Err(Error::Unknown("connection"));
        }
        let buffer_len = *self
            .buffers
            .get(buf.0 as usize)
            .ok_or(Error::Unknown("buffer"))?;
        if offset.checked_add(len).is_none_or(|end| end > buffer_len) {
            return Err(Error::OutOfRange {
                offset,
                len,
                buffer_len,
            });
        }
        let id = TransferId(self.next_id);
        let s = Submission {
            id,
            conn,
            buf,
            offset,
            len,
        };
        self.submit.push(s).map_err(|_| Error::Busy)?;
        self.next_id += 1;
        self.in_flight += 1;
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        Ok(id)
    }

    /// Take one completion, if any.
    pub fn poll(&mut self) -> Option<Completion> {
        let c = self.stash.pop().or_else(|| self.completions.pop())?;
        self.in_flight -= 1;
        Some(c)
    }

    /// Wait for transfer `id` until `deadline`; completions of other transfers that arrive
    /// meanwhile are kept for [`poll`](Self::poll) / later waits.
    pub fn wait(&mut self, id: TransferId, deadline: Instant) -> Result<TransferReport, Error> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(i) = self.stash.iter().position(|c| c.id == id) {
                let c = self.stash.swap_remove(i);
                self.in_flight -= 1;
                return c.result.map_err(Error::Transfer);
            }
            while let Some(c) = self.completions.pop() {
                if c.id == id {
                    self.in_flight -= 1;
                    return c.result.map_err(Error::Transfer);
                }
                // Within the reserved capacity: at most MAX_IN_FLIGHT completions exist.
                self.stash.push(c);
            }
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                return Err(Error::EngineGone);
            }
            spins = spins.wrapping_add(1);
            if spins % 64 == 0 && Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "transfer",
                    waited: start.elapsed(),
                });
            }
            if spins < 256 {
                // A completion often follows closely.
                std::hint::spin_loop();
            } else {
                self.park_until_completion(deadline);
            }
        }
    }

    /// Park until the progress thread pushes a completion (or briefly, as a safety net), so a
    /// waiting user thread leaves its CPU to the progress thread and the plugin's threads.
    fn park_until_completion(&mut self, deadline: Instant) {
        if let Ok(mut w) = self.shared.waiter.lock() {
            if w.as_ref().is_none_or(|t| t.id() != thread::current().id()) {
                *w = Some(thread::current());
            }
        }
        self.shared.waiting.store(true, Ordering::SeqCst);
        // Re-check after announcing: a completion pushed before the store is visible now.
        if self.completions.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            thread::park_timeout(left.min(Duration::from_millis(1)));
        }
        self.shared.waiting.store(false, Ordering::SeqCst);
    }

    /// TCPX uses the calling thread's current CUDA device in listen, accept, connect and regMr.
    fn make_gpu_current(&self) -> Result<(), Error> {
        #[cfg(feature = "cuda")]
        if let Some(c) = &self.config.cuda {
            c.gpu
                .make_current()
                .map_err(|e| Error::Gpu(e.to_string()))?;
        }
        Ok(())
    }

    /// Transfers posted and not yet taken as completions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Per-channel counters and where the progress thread runs.
    pub fn stats(&self) -> Result<(Vec<ChannelReport>, ThreadReport), Error> {
        self.ask(engine::Control::Stats)
    }
}

impl Drop for Endpoint {
    /// Stop the progress thread (it fails what is in flight with `Shutdown` and closes every
    /// comm) and join it — for at most the stall timeout: a thread stuck in a plugin call is
    /// left behind with an error in the log rather than hanging the caller.
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let Some(t) = self.thread.take() else { return };
        t.thread().unpark();
        let deadline = Instant::now() + self.config.stall_timeout;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                tracing::error!(
                    gpu = self.config.gpu,
                    "the progress thread did not stop within {:.1?}; leaving it behind",
                    self.config.stall_timeout
                );
                return;
            }
            thread::sleep(Duration::from_micros(100));
        }
        let _ = t.join();
    }
}

/// The CPUs of GPU `gpu`'s NUMA node, from sysfs.
pub fn numa_local_cpus(gpu: u32) -> Option<Vec<usize>> {
    let sys = Sysfs::default();
    let path = sys.gpu_pci_paths().into_iter().nth(gpu as usize)?;
    let node = sys.numa_node(&path)?;
    let cpus = sys.node_cpus(node);
    (!cpus.is_empty()).then_some(cpus)
}
