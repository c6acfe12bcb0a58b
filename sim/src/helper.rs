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
//! [`DeviceIo`] when the thread starts — during comm setup, not on the data path — and kept until
//! the thread ends (a failure there fails the comm's first `test`). A device receive counts as
//! completed only once its bytes are in the bounce pool.
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

use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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

struct Shared {
    completed: Vec<AtomicU64>,
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
    /// mode); without it a device task fails the helper.
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
            failed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let mut helpers = Helpers {
            queues: Vec::with_capacity(nthreads),
            threads: Vec::with_capacity(nthreads),
            sockets,
            shared,
            nthreads,
        };
        for t in 0..nthreads {
            let served = (t..nsocks).step_by(nthreads).count();
            let (tx, rx) = sync_channel::<Task>(tasks_per_socket * served + 1);
            let socks = helpers.sockets.clone();
            let shared = Arc::clone(&helpers.shared);
            let device = device.clone();
            let name = match dir {
                Direction::Send => format!("tcpx-sim-tx{t}"),
                Direction::Recv => format!("tcpx-sim-rx{t}"),
            };
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || run(dir, rx, socks, shared, device))
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

/// The thread's stager, made from `device` on first use.
fn stager_for<'a>(
    stager: &'a mut Option<Box<dyn Stager>>,
    device: Option<&Arc<dyn DeviceIo>>,
) -> Result<&'a mut dyn Stager, SimError> {
    const NO_CUDA: SimError = SimError::Protocol {
        why: "a device chunk on a comm without CUDA mode",
    };
    if stager.is_none() {
        *stager = Some(device.ok_or(NO_CUDA)?.stager()?);
    }
    match stager {
        Some(s) => Ok(s.as_mut()),
        None => Err(NO_CUDA),
    }
}

/// Moves one task's bytes.
fn move_bytes(
    dir: Direction,
    task: Task,
    sock: &TcpStream,
    device: Option<&Arc<dyn DeviceIo>>,
    stager: &mut Option<Box<dyn Stager>>,
) -> Result<(), SimError> {
    let op = match dir {
        Direction::Send => "send",
        Direction::Recv => "recv",
    };
    let host = |r: std::io::Result<()>| r.map_err(|e| SimError::from_io(op, Some(task.sock), &e));
    match (dir, task.io) {
        (Direction::Send, Io::Host(r)) => host(r.send_all(sock)),
        (Direction::Recv, Io::Host(r)) => host(r.recv_all(sock)),
        (Direction::Send, Io::DeviceSend(r)) => {
            stager_for(stager, device)?.send(sock, task.sock, r)
        }
        (Direction::Recv, Io::DeviceRecv(c)) => {
            stager_for(stager, device)?.recv(sock, task.sock, c)
        }
        _ => Err(SimError::Protocol {
            why: "a device chunk of the wrong direction",
        }),
    }
}

fn run(
    dir: Direction,
    rx: Receiver<Task>,
    sockets: Vec<Arc<TcpStream>>,
    shared: Arc<Shared>,
    device: Option<Arc<dyn DeviceIo>>,
) {
    let body = AssertUnwindSafe(|| {
        // Made at thread start (CUDA mode), dropped (staging freed) when the thread ends.
        let mut stager: Option<Box<dyn Stager>> = None;
        if let Some(d) = &device {
            match d.stager() {
                Ok(s) => stager = Some(s),
                Err(e) => {
                    shared.fail(e);
                    return;
                }
            }
        }
        while let Ok(task) = rx.recv() {
            let Some(sock) = sockets.get(task.sock) else {
                shared.fail(SimError::Protocol {
                    why: "task for an unknown socket",
                });
                return;
            };
            match move_bytes(dir, task, sock, device.as_ref(), &mut stager) {
                Ok(()) => {
                    if let Some(c) = shared.completed.get(task.sock) {
                        c.fetch_add(1, Ordering::Release);
                    }
                }
                Err(e) => {
                    shared.fail(e);
                    return;
                }
            }
        }
    });
    if catch_unwind(body).is_err() {
        shared.fail(SimError::Panic);
    }
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
        wait_for(|| (0..3).all(|s| rx.completed(s) == 2));
        assert!((0..3).all(|s| tx.completed(s) == 2));
        assert_eq!(src, dst);
        assert!(tx.error().is_none() && rx.error().is_none());
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
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        src[0] = 1;
        assert_eq!(src[0], 1);
    }
}
