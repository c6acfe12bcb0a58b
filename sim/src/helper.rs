//! A comm's helper threads: blocking socket I/O for chunks that `test` already queued.
//!
//! TCPX emulation: each comm has `nthreads` helper threads and data socket `i` is served by thread
//! `i % nthreads`. Helpers only move bytes of tasks handed to them — they never read control
//! messages, pick sockets or complete requests; all of that happens in `test` (see
//! [`crate::comm`]). A driver that stops calling `test` therefore stalls, as on TCPX.
//!
//! Hot path, per chunk: the comm pushes a `Copy` [`Task`] into the thread's bounded queue
//! (`std::sync::mpsc::sync_channel`, preallocated, lock-free unless the helper is parked idle);
//! the helper does one blocking `send`/`recv` loop straight from/into the caller's buffer and bumps
//! the socket's completion counter (`AtomicU64`, release). The comm reads the counters (acquire)
//! in `test`. No allocation, no lock.
//!
//! CUDA mode: a chunk of device memory ([`Io::DeviceSend`], [`Io::DeviceRecv`]) goes through the
//! thread's [`Stager`] (host staging, device copies; [`crate::bounce`]), made from the comm's
//! [`DeviceIo`] by [`Helpers::spawn`] on the calling thread — inside `connect`/`accept`, before
//! the comm is handed out — and moved into the thread, which only binds its CUDA context
//! ([`Stager::bind`]). No CUDA allocation ever happens on a helper thread: NCCL launches its
//! kernel right after connecting, and a driver call that waits for the GPU while that kernel
//! spins on the proxy would never return. A device receive counts as completed only once its
//! bytes are in the bounce pool.
//!
//! Each thread publishes what it is doing ([`Phase`], since when) in a [`PhaseCell`] — one atomic
//! store per step — so a `test` that waits too long can say whether the bytes are stuck in a
//! socket, in a CUDA call or in nobody's hands ([`Helpers::describe`]).
//!
//! Invariants:
//! * Per socket, tasks complete in submission order (one thread serves a socket, FIFO queue).
//! * Each side queues the tasks of a socket in the same order (the receiver follows the sender's
//!   control messages), so the two helpers of a socket never wait on each other in a cycle.
//! * The first I/O error is recorded once and stops that helper; `Drop` shuts the sockets down,
//!   closes the queues and joins every helper before returning.
//!
//! ```no_run
//! # use tcpx_sim::helper::{Direction, Helpers};
//! # fn demo(socks: Vec<std::net::TcpStream>) -> Result<(), tcpx_sim::error::SimError> {
//! let helpers = Helpers::spawn(Direction::Send, socks, 1, 6, None)?;
//! assert_eq!(helpers.completed(0), 0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bounce::{DeviceIo, DeviceRange, StagedChunk, Stager};
use crate::error::SimError;
use crate::hostmem::IoRange;

/// Whether a comm's helpers send or receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Send comm.
    Send,
    /// Recv comm.
    Recv,
}

/// The bytes of one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Io {
    /// Host memory, sent from or received into directly.
    Host(IoRange),
    /// Device memory to send (copied to host staging first).
    DeviceSend(DeviceRange),
    /// A chunk of a CUDA receive, scattered into the bounce pool.
    DeviceRecv(StagedChunk),
}

/// One chunk for one data socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Data socket index.
    pub sock: usize,
    /// The bytes to send or fill.
    pub io: Io,
}

/// What a helper thread is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Binding its CUDA context, before its first task.
    Starting,
    /// Waiting for a task from `test`.
    Idle,
    /// Writing a chunk to its socket.
    SocketSend,
    /// Reading a chunk from its socket.
    SocketRecv,
    /// Waiting for a device→host staging copy (CUDA send).
    CudaCopy,
    /// Waiting for the kernel that scatters staged bytes into the bounce pool (CUDA receive).
    CudaScatter,
    /// Stopped by an error (reported by the comm's next `test`).
    Failed,
    /// Ended (comm closing).
    Ended,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Starting,
        Phase::Idle,
        Phase::SocketSend,
        Phase::SocketRecv,
        Phase::CudaCopy,
        Phase::CudaScatter,
        Phase::Failed,
        Phase::Ended,
    ];

    fn code(self) -> u64 {
        Phase::ALL.iter().position(|p| *p == self).unwrap_or(0) as u64
    }

    /// Whether the thread is inside a CUDA call that waits for the GPU.
    pub fn is_cuda(self) -> bool {
        matches!(self, Phase::CudaCopy | Phase::CudaScatter)
    }

    /// The phase in words.
    pub fn describe(self) -> &'static str {
        match self {
            Phase::Starting => "binding its CUDA context",
            Phase::Idle => "idle (no chunk queued by test)",
            Phase::SocketSend => "writing a chunk to its socket",
            Phase::SocketRecv => "reading a chunk from its socket",
            Phase::CudaCopy => "waiting for a device-to-host staging copy",
            Phase::CudaScatter => "waiting for the scatter kernel into the bounce pool",
            Phase::Failed => "stopped by an error",
            Phase::Ended => "ended",
        }
    }
}

/// Nanoseconds are counted from the first use in the process.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

const SINCE_BITS: u32 = 56;
const SINCE_MASK: u64 = (1 << SINCE_BITS) - 1;

/// A helper thread's [`Phase`] and when it began, in one atomic word (phase in the top 8 bits,
/// nanoseconds since the process epoch below): the helper stores, `test` loads, no lock.
#[derive(Debug)]
pub struct PhaseCell(AtomicU64);

impl Default for PhaseCell {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseCell {
    /// A cell in [`Phase::Starting`], starting now.
    pub fn new() -> PhaseCell {
        let c = PhaseCell(AtomicU64::new(0));
        c.set(Phase::Starting);
        c
    }

    /// Enters `p` now.
    pub fn set(&self, p: Phase) {
        let ns = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(SINCE_MASK) & SINCE_MASK;
        self.0.store(p.code() << SINCE_BITS | ns, Ordering::Relaxed);
    }

    /// The current phase and how long it has lasted.
    pub fn get(&self) -> (Phase, Duration) {
        let w = self.0.load(Ordering::Relaxed);
        let phase = Phase::ALL
            .get((w >> SINCE_BITS) as usize)
            .copied()
            .unwrap_or(Phase::Starting);
        let since = Duration::from_nanos(w & SINCE_MASK);
        (phase, epoch().elapsed().saturating_sub(since))
    }
}

/// How one helper thread's time went since its first task (relaxed counters, read at close).
#[derive(Default)]
struct Clock {
    chunks: AtomicU64,
    /// Blocked on the task queue: no chunk handed over by `test`.
    waiting_ns: AtomicU64,
    /// Inside `move_bytes`: socket (and CUDA) calls.
    moving_ns: AtomicU64,
}

impl Clock {
    /// Adds the time since `since` to `counter`; returns now, where the next span starts.
    fn add(counter: &AtomicU64, since: Instant) -> Instant {
        let now = Instant::now();
        let ns = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(ns, Ordering::Relaxed);
        now
    }
}

struct Shared {
    completed: Vec<AtomicU64>,
    phases: Vec<PhaseCell>,
    clocks: Vec<Clock>,
    failed: AtomicBool,
    stopping: AtomicBool,
    error: Mutex<Option<SimError>>,
}

impl Shared {
    fn fail(&self, e: SimError) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut slot) = self.error.lock() {
            if slot.is_none() {
                *slot = Some(e);
            }
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// The helper threads and data sockets of one comm.
pub struct Helpers {
    queues: Vec<SyncSender<Task>>,
    threads: Vec<JoinHandle<()>>,
    sockets: Vec<Arc<TcpStream>>,
    shared: Arc<Shared>,
    nthreads: usize,
    dir: Direction,
}

impl std::fmt::Debug for Helpers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpers")
            .field("sockets", &self.sockets.len())
            .field("nthreads", &self.nthreads)
            .finish()
    }
}

impl Helpers {
    /// Starts `nthreads` helpers (at most one per socket) over `sockets`, each queue holding up
    /// to `tasks_per_socket` tasks per socket it serves. `device` moves device chunks (CUDA
    /// mode); without it a device task fails the helper. The threads' stagers are made here, on
    /// the calling thread, so a failure fails the call and no helper allocates anything.
    pub fn spawn(
        dir: Direction,
        sockets: Vec<TcpStream>,
        nthreads: usize,
        tasks_per_socket: usize,
        device: Option<Arc<dyn DeviceIo>>,
    ) -> Result<Helpers, SimError> {
        let nsocks = sockets.len();
        let nthreads = nthreads.clamp(1, nsocks.max(1));
        let sockets: Vec<Arc<TcpStream>> = sockets.into_iter().map(Arc::new).collect();
        let shared = Arc::new(Shared {
            completed: (0..nsocks).map(|_| AtomicU64::new(0)).collect(),
            phases: (0..nthreads).map(|_| PhaseCell::new()).collect(),
            clocks: (0..nthreads).map(|_| Default::default()).collect(),
            failed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let stagers = match &device {
            Some(d) => (0..nthreads)
                .map(|_| d.stager().map(Some))
                .collect::<Result<Vec<_>, _>>()?,
            None => (0..nthreads).map(|_| None).collect(),
        };
        let mut helpers = Helpers {
            queues: Vec::with_capacity(nthreads),
            threads: Vec::with_capacity(nthreads),
            sockets,
            shared,
            nthreads,
            dir,
        };
        for (t, stager) in stagers.into_iter().enumerate() {
            let served = (t..nsocks).step_by(nthreads).count();
            let (tx, rx) = sync_channel::<Task>(tasks_per_socket * served + 1);
            let socks = helpers.sockets.clone();
            let shared = Arc::clone(&helpers.shared);
            let name = helpers.thread_name(t);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || run(dir, t, rx, socks, shared, stager))
                .map_err(|e| SimError::Io {
                    op: "spawn helper thread",
                    errno: e.raw_os_error(),
                    kind: e.kind(),
                })?;
            helpers.queues.push(tx);
            helpers.threads.push(handle);
        }
        Ok(helpers)
    }

    /// Data sockets of the comm.
    pub fn nsocks(&self) -> usize {
        self.sockets.len()
    }

    fn thread_name(&self, t: usize) -> String {
        match self.dir {
            Direction::Send => format!("tcpx-sim-tx{t}"),
            Direction::Recv => format!("tcpx-sim-rx{t}"),
        }
    }

    /// Helper thread `t`'s phase and how long it has lasted.
    pub fn phase(&self, t: usize) -> Option<(Phase, Duration)> {
        self.shared.phases.get(t).map(PhaseCell::get)
    }

    /// The longest-lasting CUDA wait of any helper, if one is in a CUDA call now.
    pub fn cuda_wait(&self) -> Option<(usize, Phase, Duration)> {
        (0..self.nthreads)
            .filter_map(|t| self.phase(t).map(|(p, d)| (t, p, d)))
            .filter(|(_, p, _)| p.is_cuda())
            .max_by_key(|(_, _, d)| *d)
    }

    /// One line per helper thread (what it does, for how long, the sockets it serves and their
    /// completed chunks), for a WARN.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for t in 0..self.nthreads {
            let (p, d) = self.phase(t).unwrap_or((Phase::Starting, Duration::ZERO));
            let socks: Vec<String> = (t..self.sockets.len())
                .step_by(self.nthreads)
                .map(|s| format!("{s}:{}", self.completed(s)))
                .collect();
            let _ = write!(
                out,
                "{}{} {} for {:.1?} (socket:chunks done {})",
                if t > 0 { "; " } else { "" },
                self.thread_name(t),
                p.describe(),
                d,
                socks.join(" ")
            );
        }
        out
    }

    /// One line per helper thread: chunks moved and how its time since the start went —
    /// waiting for `test` to queue a chunk, or inside socket (and CUDA) calls — for the INFO
    /// line at close. A helper that mostly waits for chunks points at the driver's `test`
    /// cadence; one that is mostly inside socket calls at the socket or its peer.
    pub fn time_summary(&self) -> String {
        let mut out = String::new();
        for (t, c) in self.shared.clocks.iter().enumerate() {
            let [tasks, wait, moving] =
                [&c.chunks, &c.waiting_ns, &c.moving_ns].map(|a| a.load(Ordering::Relaxed));
            let total = (wait + moving).max(1) as f64;
            let _ = write!(
                out,
                "{}{}: {tasks} chunks, {:.0} % waiting for a chunk, {:.0} % in socket/CUDA calls \
                 ({:.2} s)",
                if t > 0 { "; " } else { "" },
                self.thread_name(t),
                wait as f64 * 100.0 / total,
                moving as f64 * 100.0 / total,
                total / 1e9
            );
        }
        out
    }

    /// Queues a chunk on its socket's helper. Never blocks: the comm keeps at most
    /// `tasks_per_socket` tasks in flight per socket, which the queue always has room for.
    pub fn submit(&self, task: Task) -> Result<(), SimError> {
        let Some(q) = self.queues.get(task.sock % self.nthreads) else {
            return Err(SimError::Protocol {
                why: "task for a socket without helper",
            });
        };
        match q.try_send(task) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SimError::Protocol {
                why: "helper queue overflow (more tasks than MAX_TASKS in flight)",
            }),
            Err(TrySendError::Disconnected(_)) => Err(self.error().unwrap_or(SimError::Io {
                op: "helper thread",
                errno: None,
                kind: std::io::ErrorKind::BrokenPipe,
            })),
        }
    }

    /// Tasks completed so far on socket `sock` (acquire: the task's bytes are in place).
    pub fn completed(&self, sock: usize) -> u64 {
        self.shared
            .completed
            .get(sock)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The first error a helper hit, if any.
    pub fn error(&self) -> Option<SimError> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        for s in &self.sockets {
            // Unblocks a helper stuck in send/recv; errors (already closed) do not matter here.
            let _ = s.shutdown(Shutdown::Both);
        }
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Moves one task's bytes.
fn move_bytes(
    dir: Direction,
    task: Task,
    sock: &TcpStream,
    stager: Option<&mut Box<dyn Stager>>,
    phase: &PhaseCell,
) -> Result<(), SimError> {
    let op = match dir {
        Direction::Send => "send",
        Direction::Recv => "recv",
    };
    let host = |r: std::io::Result<()>| r.map_err(|e| SimError::from_io(op, Some(task.sock), &e));
    let no_cuda = || SimError::Protocol {
        why: "a device chunk on a comm without CUDA mode",
    };
    match (dir, task.io) {
        (Direction::Send, Io::Host(r)) => {
            phase.set(Phase::SocketSend);
            host(r.send_all(sock))
        }
        (Direction::Recv, Io::Host(r)) => {
            phase.set(Phase::SocketRecv);
            host(r.recv_all(sock))
        }
        (Direction::Send, Io::DeviceSend(r)) => {
            stager.ok_or_else(no_cuda)?.send(sock, task.sock, r, phase)
        }
        (Direction::Recv, Io::DeviceRecv(c)) => {
            stager.ok_or_else(no_cuda)?.recv(sock, task.sock, c, phase)
        }
        _ => Err(SimError::Protocol {
            why: "a device chunk of the wrong direction",
        }),
    }
}

fn run(
    dir: Direction,
    t: usize,
    rx: Receiver<Task>,
    sockets: Vec<Arc<TcpStream>>,
    shared: Arc<Shared>,
    mut stager: Option<Box<dyn Stager>>,
) {
    let (Some(phase), Some(clock)) = (shared.phases.get(t), shared.clocks.get(t)) else {
        shared.fail(SimError::Protocol {
            why: "helper thread without a phase cell",
        });
        return;
    };
    let body = AssertUnwindSafe(|| {
        // The stager (CUDA mode) was made by `spawn`; binding its context allocates nothing.
        if let Some(s) = stager.as_mut() {
            if let Err(e) = s.bind() {
                phase.set(Phase::Failed);
                shared.fail(e);
                return;
            }
        }
        let mut since = Instant::now();
        loop {
            phase.set(Phase::Idle);
            let Ok(task) = rx.recv() else { break };
            // Waiting counts from the first task on: before it the comm was being set up.
            since = if clock.chunks.load(Ordering::Relaxed) > 0 {
                Clock::add(&clock.waiting_ns, since)
            } else {
                Instant::now()
            };
            let Some(sock) = sockets.get(task.sock) else {
                phase.set(Phase::Failed);
                shared.fail(SimError::Protocol {
                    why: "task for an unknown socket",
                });
                return;
            };
            match move_bytes(dir, task, sock, stager.as_mut(), phase) {
                Ok(()) => {
                    // Counted before the completion is published (release), so whoever sees
                    // the completion sees the count too.
                    since = Clock::add(&clock.moving_ns, since);
                    clock.chunks.fetch_add(1, Ordering::Relaxed);
                    if let Some(c) = shared.completed.get(task.sock) {
                        c.fetch_add(1, Ordering::Release);
                    }
                }
                Err(e) => {
                    phase.set(Phase::Failed);
                    shared.fail(e);
                    return;
                }
            }
        }
        phase.set(Phase::Ended);
    });
    if catch_unwind(body).is_err() {
        phase.set(Phase::Failed);
        shared.fail(SimError::Panic);
    }
    // Dropped (staging freed) only now, after the last task.
    drop(stager);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostmem::region_of;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..n {
            a.push(TcpStream::connect(l.local_addr().unwrap()).unwrap());
            b.push(l.accept().unwrap().0);
        }
        (a, b)
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(20), "timed out");
            std::thread::yield_now();
        }
    }

    #[test]
    fn tasks_move_bytes_and_count_per_socket() {
        let (a, b) = pairs(3);
        let tx = Helpers::spawn(Direction::Send, a, 2, 6, None).unwrap();
        let rx = Helpers::spawn(Direction::Recv, b, 2, 6, None).unwrap();
        let mut src: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![0u8; 300_000];
        // Both vectors outlive the helpers and are not touched until the completions were seen.
        let (rs, rd) = (region_of(&mut src), region_of(&mut dst));
        let s = rs.range(rs.base(), rs.len()).unwrap();
        let d = rd.range(rd.base(), rd.len()).unwrap();
        for (i, off) in (0..300_000).step_by(50_000).enumerate() {
            let sock = i % 3;
            tx.submit(Task {
                sock,
                io: Io::Host(s.sub(off, 50_000).unwrap()),
            })
            .unwrap();
            rx.submit(Task {
                sock,
                io: Io::Host(d.sub(off, 50_000).unwrap()),
            })
            .unwrap();
        }
        // A send completes once its bytes are in the socket, possibly after the receive.
        wait_for(|| (0..3).all(|s| rx.completed(s) == 2 && tx.completed(s) == 2));
        assert_eq!(src, dst);
        assert!(tx.error().is_none() && rx.error().is_none());
        // Thread 0 serves sockets 0 and 2, thread 1 socket 1.
        let summary = rx.time_summary();
        assert!(summary.starts_with("tcpx-sim-rx0: 4 chunks, "), "{summary}");
        assert!(summary.contains("; tcpx-sim-rx1: 2 chunks, "), "{summary}");
    }

    #[test]
    fn peer_close_is_recorded_as_peer_closed() {
        let (a, b) = pairs(1);
        let rx = Helpers::spawn(Direction::Recv, b, 1, 6, None).unwrap();
        let mut dst = vec![0u8; 1000];
        // `dst` outlives `rx` (dropped first below).
        let rd = region_of(&mut dst);
        rx.submit(Task {
            sock: 0,
            io: Io::Host(rd.range(rd.base(), 1000).unwrap()),
        })
        .unwrap();
        drop(a);
        wait_for(|| rx.error().is_some());
        assert_eq!(rx.error(), Some(SimError::PeerClosed { socket: Some(0) }));
        assert_eq!(rx.completed(0), 0);
        drop(rx);
        drop(dst);
    }

    #[test]
    fn device_chunks_without_cuda_mode_fail_the_helper() {
        let (_a, b) = pairs(1);
        let rx = Helpers::spawn(Direction::Recv, b, 1, 6, None).unwrap();
        rx.submit(Task {
            sock: 0,
            io: Io::DeviceRecv(StagedChunk {
                frags: 0x1000,
                nfrags: 1,
                len: 4096,
            }),
        })
        .unwrap();
        wait_for(|| rx.error().is_some());
        assert!(matches!(rx.error(), Some(SimError::Protocol { .. })));
        assert_eq!(rx.completed(0), 0);
    }

    #[test]
    fn drop_unblocks_and_joins() {
        let (a, _b) = pairs(2);
        let tx = Helpers::spawn(Direction::Send, a, 1, 6, None).unwrap();
        let mut src = vec![7u8; 64 << 20];
        // `src` outlives `tx`, which joins its helpers in drop before `src` is touched again.
        let rs = region_of(&mut src);
        // 64 MiB to a peer that never reads: the helper blocks in send until drop shuts it down.
        tx.submit(Task {
            sock: 1,
            io: Io::Host(rs.range(rs.base(), rs.len()).unwrap()),
        })
        .unwrap();
        wait_for(|| matches!(tx.phase(0), Some((Phase::SocketSend, d)) if d > Duration::ZERO));
        if !crate::testing::dropped_within(tx, Duration::from_secs(20)) {
            // A helper may still read `src`: keep it alive past the failing test.
            std::mem::forget(src);
            panic!("dropping the helpers did not unblock the send");
        }
        src[0] = 1;
    }
}
