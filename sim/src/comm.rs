//! Send and recv comms: the TCPX request protocol over one control socket and `nsocks` data
//! sockets.
//!
//! **Sender.** `isend` only posts (slot in the [`RequestRing`]). `test` makes progress:
//! 1. reap: each data socket's completion counter says how many of its queued chunks the helper
//!    finished; their bytes are credited to their requests;
//! 2. dispatch: the posted requests are cut, in order, into chunks of `NCCL_DYNAMIC_CHUNK_SIZE`;
//!    each chunk goes to the next data socket (round robin, like TCPX's `FlowMapperRR`) that has
//!    fewer than [`MAX_TASKS`] chunks in flight, and gets a control message; a size-0 message gets
//!    one "empty" control message and no data;
//! 3. flush: buffered control messages are written to the non-blocking control socket.
//!
//! A send is done when all its chunks were written to their sockets and all its control messages
//! were flushed; its slot is freed at that `test`.
//!
//! **Receiver.** `irecv` posts; `test` reaps like the sender, reads control messages (non-blocking)
//! and matches them, strictly FIFO, to the posted receives: the k-th message goes to the k-th
//! `irecv`, tags are ignored. The first control message of a message carries its size, which
//! must fit the posted size — TCPX overwrites the size and overflows; the sim fails the receive
//! (`ncclInternalError`) and never writes past the buffer. Each chunk becomes a receive task on its
//! data socket, straight into the irecv buffer at the chunk's offset. A receive is done when all
//! its bytes arrived; `test` then publishes `cnt[slot] = 0` in the unpack queue (host memory: no
//! fragments) and the receive keeps its slot until `irecvConsumed`.
//!
//! **CUDA memory** (CUDA mode, [`crate::bounce`]). A send chunk of device memory is copied to host
//! staging by its helper, then sent. A receive into device memory never touches the irecv buffer:
//! when `test` hands a chunk to a helper it first asks the unpack queue to *place* it — bounce
//! pages, fragments written to `mem[slot]` — and the helper scatters the bytes into those pages.
//! When the pool has no pages left the chunk (and every later one) waits for `irecvConsumed` of
//! earlier receives; after [`STARVED_WARN_AFTER`] of waiting the comm reports a WARN once. At done
//! `test` publishes `cnt[slot]` = the receive's fragment count; `irecvConsumed` poisons and frees
//! its pages.
//!
//! **Stalls.** A request that `test` keeps finding pending for [`STALL_WARN_AFTER`] gets one WARN
//! (through [`SendComm::take_warning`] / [`RecvComm::take_warning`]) that says where its bytes
//! are: announced or not, handed to helpers or not, landed or not, what each helper thread is
//! doing and for how long ([`crate::helper::Helpers::describe`]) — and, when a helper sits in a
//! CUDA call, that the GPU is not running the sim's work (see `TCPX_SIM_BOUNCE_MEM`).
//!
//! Errors: a helper's socket error or a closed peer (a control stream that ends while a posted
//! receive still needs control messages, a data socket that ends mid-chunk) fail `test` with
//! `ncclSystemError` (2) like TCPX; any failure is sticky — later calls on the comm return it again
//! ([`SimError::Broken`]).
//!
//! ```no_run
//! # use tcpx_sim::comm::{Link, Memory, SendComm};
//! # use tcpx_sim::hostmem::HostRegion;
//! # fn demo(link: Link, buf: &mut [u8]) -> Result<(), tcpx_sim::error::SimError> {
//! let mut comm = SendComm::new(link, 524288, None)?;
//! // SAFETY: `buf` outlives the comm and is untouched until the send is done.
//! let mh = comm.register(Memory::Host(unsafe { HostRegion::new(buf.as_mut_ptr() as usize, buf.len()) }));
//! let slot = comm.isend(buf.as_ptr() as usize, buf.len() as i32, mh)?;
//! while !comm.test(slot)? {}
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bounce::{CudaRegistration, DeviceIo, DeviceRange, UnpackQueue};
use crate::error::SimError;
use crate::helper::{Direction, Helpers, Io, Task};
use crate::hostmem::{HostRegion, IoRange};
use crate::request::{slot_of, RequestRing};
use crate::wire::{Ctrl, CtrlKind, CTRL_LEN};

/// TCPX's `MAX_TASKS`: chunks in flight per data socket.
pub const MAX_TASKS: usize = 6;
/// How long a CUDA receive may wait for bounce pages before the comm WARNs (once).
pub const STARVED_WARN_AFTER: Duration = Duration::from_secs(10);
/// How long `test` may find the same request pending before the comm WARNs (once per request).
pub const STALL_WARN_AFTER: Duration = Duration::from_secs(10);
/// A helper this long in one CUDA call is called out in the stall WARN.
const CUDA_WAIT_NOTE: Duration = Duration::from_secs(1);
/// Control messages buffered per comm before the socket must drain.
const CTRL_FIFO_MSGS: usize = 64;

/// An established connection: what connect/accept hand to a comm.
#[derive(Debug)]
pub struct Link {
    /// The control socket (set non-blocking by the comm).
    pub ctrl: TcpStream,
    /// The data sockets, by index.
    pub data: Vec<TcpStream>,
    /// Helper threads for the data sockets.
    pub nthreads: usize,
}

/// What a registration covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory (`NCCL_PTR_HOST`).
    Host(HostRegion),
    /// Device memory accepted by the device backend (`NCCL_PTR_CUDA`).
    Cuda(CudaRegistration),
}

/// mhandle values: unique in the process, never 0, never dereferenced.
static NEXT_MHANDLE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0x5100);

/// A comm's registrations, keyed by their mhandle.
#[derive(Debug, Default)]
struct Registrations {
    list: Vec<(usize, Memory)>,
}

impl Registrations {
    fn add(&mut self, mem: Memory) -> usize {
        let id = NEXT_MHANDLE.fetch_add(0x10, std::sync::atomic::Ordering::Relaxed);
        self.list.push((id, mem));
        id
    }

    fn find(&self, id: usize) -> Result<Memory, SimError> {
        self.list
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, m)| *m)
            .ok_or(SimError::UnknownMhandle)
    }

    fn remove(&mut self, id: usize) -> Result<(), SimError> {
        let pos = self
            .list
            .iter()
            .position(|(k, _)| *k == id)
            .ok_or(SimError::UnknownMhandle)?;
        self.list.swap_remove(pos);
        Ok(())
    }
}

/// The memory of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Host memory (and every size-0 request).
    Host(IoRange),
    /// CUDA device memory.
    Device(DeviceRange),
}

impl Target {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Target::Host(r) => r.len(),
            Target::Device(r) => r.len,
        }
    }

    /// Whether the request moves no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the chunk `[offset, offset + len)` for a helper to send.
    fn send_chunk(&self, offset: usize, len: usize) -> Option<Io> {
        match self {
            Target::Host(r) => r.sub(offset, len).map(Io::Host),
            Target::Device(r) => r.sub(offset, len).map(Io::DeviceSend),
        }
    }
}

/// Resolves `[addr, addr + size)` inside registration `mhandle`.
fn resolve(
    regs: &Registrations,
    addr: usize,
    size: i32,
    mhandle: usize,
) -> Result<Target, SimError> {
    if size < 0 {
        return Err(SimError::NegativeSize {
            size: i64::from(size),
        });
    }
    let size = size as usize;
    let mem = regs.find(mhandle)?;
    if size == 0 {
        return Ok(Target::Host(IoRange::EMPTY));
    }
    let outside = |base: usize, len: usize| SimError::OutsideRegistration {
        addr,
        size,
        base,
        len,
    };
    match mem {
        Memory::Host(region) => region
            .range(addr, size)
            .map(Target::Host)
            .ok_or(outside(region.base(), region.len())),
        Memory::Cuda(reg) => reg
            .range(addr, size)
            .map(Target::Device)
            .ok_or(outside(reg.addr, reg.size)),
    }
}

/// A small byte FIFO for control messages.
#[derive(Debug)]
struct ByteFifo {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl ByteFifo {
    fn new(cap: usize) -> Self {
        ByteFifo {
            buf: vec![0u8; cap].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    fn has_room(&mut self, n: usize) -> bool {
        if self.buf.len() - self.end < n {
            self.compact();
        }
        self.buf.len() - self.end >= n
    }

    fn push(&mut self, b: &[u8]) {
        let n = b.len();
        self.buf[self.end..self.end + n].copy_from_slice(b);
        self.end += n;
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn space_mut(&mut self) -> &mut [u8] {
        self.compact();
        let end = self.end;
        &mut self.buf[end..]
    }

    fn produced(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    fn first_msg(&self) -> Option<[u8; CTRL_LEN]> {
        let p = self.pending();
        let mut m = [0u8; CTRL_LEN];
        m.copy_from_slice(p.get(..CTRL_LEN)?);
        Some(m)
    }
}

/// Per data socket: the chunks in flight, in submission order, and how many were reaped.
#[derive(Debug)]
struct SockBook {
    inflight: VecDeque<(u64, u32)>,
    reaped: u64,
}

fn new_books(n: usize) -> Vec<SockBook> {
    (0..n)
        .map(|_| SockBook {
            inflight: VecDeque::with_capacity(MAX_TASKS),
            reaped: 0,
        })
        .collect()
}

/// Credits finished chunks to their requests.
fn reap<T>(
    helpers: &Helpers,
    books: &mut [SockBook],
    reqs: &mut RequestRing<T>,
    mut credit: impl FnMut(&mut T, u32),
) {
    for (s, book) in books.iter_mut().enumerate() {
        let done = helpers.completed(s);
        while book.reaped < done {
            let Some((k, len)) = book.inflight.pop_front() else {
                break;
            };
            if let Some(r) = reqs.get_mut(k) {
                credit(r, len);
            }
            book.reaped += 1;
        }
    }
}

/// The WARN of a CUDA receive that waits for bounce pages.
fn starved_warning(k: u64, waited: Duration, chunk: u32, unconsumed: u64) -> String {
    format!(
        "receive {k} (slot {}) has waited {waited:?} for {} bounce pages: the GPU's bounce pool is \
         exhausted by receives that were not consumed yet ({unconsumed} done and unconsumed on this \
         comm). Call irecvConsumed as soon as each unpack finished, or raise TCPX_SIM_BOUNCE_BYTES",
        slot_of(k),
        crate::pages::pages_for(chunk),
    )
}

/// Sightings of the same pending request between two clock reads: `test` runs millions of
/// times a second in a progress loop, and reading the clock on each would cost more than the
/// rest of the call.
const STALL_CLOCK_EVERY: u32 = 64;

/// The oldest pending request as `test` keeps seeing it: which one, since when, how many more
/// sightings until the clock is read again, WARNed yet. The clock is read when a request is first
/// found pending and every [`STALL_CLOCK_EVERY`]-th sighting after, so a WARN comes at most that
/// many `test` calls late.
#[derive(Debug)]
struct StallWatch {
    after: Duration,
    current: Option<Watched>,
}

#[derive(Debug)]
struct Watched {
    k: u64,
    since: Instant,
    until_clock: u32,
    warned: bool,
}

impl StallWatch {
    fn new() -> StallWatch {
        StallWatch {
            after: STALL_WARN_AFTER,
            current: None,
        }
    }

    /// A new threshold, applied from the next sighting on.
    fn set_after(&mut self, after: Duration) {
        self.after = after;
        if let Some(w) = &mut self.current {
            w.until_clock = 0;
        }
    }

    /// `test` found request `k` pending: how long it has been pending, when that is past the
    /// threshold for the first time.
    fn pending(&mut self, k: u64) -> Option<Duration> {
        let w = match &mut self.current {
            Some(w) if w.k == k => {
                if w.warned {
                    return None;
                }
                if w.until_clock > 0 {
                    w.until_clock -= 1;
                    return None;
                }
                w.until_clock = STALL_CLOCK_EVERY;
                w
            }
            c => c.insert(Watched {
                k,
                since: Instant::now(),
                until_clock: STALL_CLOCK_EVERY,
                warned: false,
            }),
        };
        let waited = w.since.elapsed();
        if waited < self.after {
            return None;
        }
        w.warned = true;
        Some(waited)
    }
}

/// The sentence of a stall WARN about a helper in one CUDA call for at least `min`, if one is.
fn cuda_wait_note(helpers: &Helpers, min: Duration) -> String {
    match helpers.cuda_wait() {
        Some((t, p, d)) if d >= min => format!(
            " Helper {t} has been {} for {d:.1?}: the GPU is not running work the sim queued. \
             Under NCCL the GPU need not run it while NCCL's kernel spins waiting for this very \
             request (TCPX issues no GPU work here: the NIC DMAs); run with \
             TCPX_SIM_BOUNCE_MEM=host (receives without GPU work) and NCCL_NET_GDR_READ=0 (sends \
             from host memory).",
            p.describe()
        ),
        _ => String::new(),
    }
}

fn check_broken(broken: &Option<SimError>) -> Result<(), SimError> {
    match broken {
        Some(e) => Err(SimError::Broken { rc: e.rc() }),
        None => Ok(()),
    }
}

#[derive(Debug)]
struct SendReq {
    range: Target,
    size: u32,
    dispatched: u32,
    completed: u32,
    announced: bool,
    ctrl_end: u64,
    reg: usize,
}

/// The sending side of a connection (`connect`).
#[derive(Debug)]
pub struct SendComm {
    ctrl: TcpStream,
    helpers: Helpers,
    books: Vec<SockBook>,
    reqs: RequestRing<SendReq>,
    regs: Registrations,
    chunk: u32,
    next_sock: usize,
    dispatch: u64,
    out: ByteFifo,
    ctrl_pushed: u64,
    ctrl_written: u64,
    broken: Option<SimError>,
    stall: StallWatch,
    warning: Option<String>,
    last_done: Option<(usize, u32)>,
}

impl SendComm {
    /// Starts the helper threads over an established connection; `device` (CUDA mode) lets
    /// them send from CUDA memory.
    pub fn new(
        link: Link,
        chunk_size: usize,
        device: Option<Arc<dyn DeviceIo>>,
    ) -> Result<SendComm, SimError> {
        link.ctrl
            .set_nonblocking(true)
            .map_err(|e| SimError::from_io("fcntl", None, &e))?;
        let nsocks = link.data.len();
        let helpers = Helpers::spawn(Direction::Send, link.data, link.nthreads, MAX_TASKS, device)?;
        Ok(SendComm {
            ctrl: link.ctrl,
            helpers,
            books: new_books(nsocks),
            reqs: RequestRing::new(),
            regs: Registrations::default(),
            chunk: u32::try_from(chunk_size).unwrap_or(u32::MAX).max(1),
            next_sock: 0,
            dispatch: 0,
            out: ByteFifo::new(CTRL_FIFO_MSGS * CTRL_LEN),
            ctrl_pushed: 0,
            ctrl_written: 0,
            broken: None,
            stall: StallWatch::new(),
            warning: None,
            last_done: None,
        })
    }

    /// `regMr`: records the memory; returns the mhandle.
    pub fn register(&mut self, mem: Memory) -> usize {
        self.regs.add(mem)
    }

    /// `deregMr`. Succeeds like TCPX even while outstanding requests use the registration
    /// (they keep their own copy of the range); returns how many do, for the caller's WARN.
    pub fn deregister(&mut self, mhandle: usize) -> Result<usize, SimError> {
        self.regs.remove(mhandle)?;
        Ok(self.reqs.iter().filter(|r| r.reg == mhandle).count())
    }

    /// `isend`: posts a send of `size` bytes at `data`; returns the request's slot.
    pub fn isend(&mut self, data: usize, size: i32, mhandle: usize) -> Result<usize, SimError> {
        check_broken(&self.broken)?;
        let range = resolve(&self.regs, data, size, mhandle)?;
        let (_, slot) = self.reqs.push(SendReq {
            range,
            size: range.len() as u32,
            dispatched: 0,
            completed: 0,
            announced: false,
            ctrl_end: 0,
            reg: mhandle,
        })?;
        Ok(slot)
    }

    /// `test` on the request in `slot`: progress, then whether it is done.
    pub fn test(&mut self, slot: usize) -> Result<bool, SimError> {
        check_broken(&self.broken)?;
        let k = self.reqs.test_target(slot)?;
        if let Err(e) = self.progress() {
            self.broken = Some(e.clone());
            return Err(e);
        }
        let flushed = self.ctrl_written / CTRL_LEN as u64;
        let done = self
            .reqs
            .get(k)
            .is_some_and(|r| r.announced && r.completed == r.size && flushed >= r.ctrl_end);
        if done {
            self.last_done = self.reqs.get(k).map(|r| (slot, r.size));
            self.reqs.mark_done();
            self.reqs.free_head();
        } else if let Some(waited) = self.stall.pending(k) {
            self.warning = Some(self.stall_warning(k, waited));
        }
        Ok(done)
    }

    /// The WARN of a send that `test` has found pending for `waited`.
    fn stall_warning(&self, k: u64, waited: Duration) -> String {
        let flushed = self.ctrl_written / CTRL_LEN as u64;
        let req = match self.reqs.get(k) {
            Some(r) => format!(
                "{} B from {}; {} B cut into chunks for the helpers, {} B written to the data \
                 sockets; its control messages: {} of the first {} flushed ({} B wait for the \
                 control socket)",
                r.size,
                match r.range {
                    Target::Host(_) => "host memory",
                    Target::Device(_) => "CUDA memory",
                },
                r.dispatched,
                r.completed,
                flushed.min(r.ctrl_end),
                r.ctrl_end,
                self.out.len(),
            ),
            None => "no request state".to_owned(),
        };
        let hint = if self.out.len() > 0 {
            " The control socket is full: the receiver is not reading it (is it calling test?)."
        } else {
            ""
        };
        format!(
            "send {k} (slot {}) still pending after {waited:.1?} of test calls: {req}. Comm: {} \
             requests outstanding. Helpers: {}.{hint}{}",
            slot_of(k),
            self.reqs.live(),
            self.helpers.describe(),
            cuda_wait_note(&self.helpers, self.stall.after.min(CUDA_WAIT_NOTE)),
        )
    }

    /// A WARN the comm wants printed (once per condition): a send pending for
    /// [`STALL_WARN_AFTER`].
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// Slot and size of the last send `test` reported done.
    pub fn last_done(&self) -> Option<(usize, u32)> {
        self.last_done
    }

    /// What registration `mhandle` covers, if it is one of this comm's.
    pub fn memory_of(&self, mhandle: usize) -> Option<Memory> {
        self.regs.find(mhandle).ok()
    }

    /// Sets the stall WARN threshold (tests use zero to assert the WARN without waiting).
    pub fn set_stall_warn_after(&mut self, after: Duration) {
        self.stall.set_after(after);
    }

    /// Requests posted and not yet done.
    pub fn outstanding(&self) -> usize {
        self.reqs.live()
    }

    /// What each helper thread did over the comm's life (INFO at close).
    pub fn helper_summary(&self) -> String {
        self.helpers.time_summary()
    }

    /// The WARN TCPX-like close would print, if any.
    pub fn close_warning(&self) -> Option<String> {
        let n = self.reqs.live();
        (n > 0).then(|| format!("closing a send comm with {n} requests not done"))
    }

    fn progress(&mut self) -> Result<(), SimError> {
        reap(&self.helpers, &mut self.books, &mut self.reqs, |r, len| {
            r.completed += len
        });
        if let Some(e) = self.helpers.error() {
            return Err(e);
        }
        self.dispatch_chunks()?;
        self.flush_ctrl()
    }

    fn pick_socket(&mut self) -> Option<usize> {
        let n = self.books.len();
        for i in 0..n {
            let s = (self.next_sock + i) % n;
            if self.books[s].inflight.len() < MAX_TASKS {
                self.next_sock = (s + 1) % n;
                return Some(s);
            }
        }
        None
    }

    fn dispatch_chunks(&mut self) -> Result<(), SimError> {
        while self.dispatch < self.reqs.tail() {
            let k = self.dispatch;
            let Some(r) = self.reqs.get(k) else {
                return Err(SimError::Protocol {
                    why: "dispatch cursor on a free slot",
                });
            };
            let (size, mut dispatched, range) = (r.size, r.dispatched, r.range);
            if size == 0 {
                if !self.out.has_room(CTRL_LEN) {
                    return Ok(());
                }
                let msg = Ctrl {
                    kind: CtrlKind::Empty,
                    sock: 0,
                    seq: k as u16,
                    len: 0,
                    offset: 0,
                    total: 0,
                };
                self.out.push(&msg.encode());
                self.ctrl_pushed += 1;
            }
            while dispatched < size {
                if !self.out.has_room(CTRL_LEN) {
                    break;
                }
                let Some(s) = self.pick_socket() else { break };
                let len = self.chunk.min(size - dispatched);
                let io = range.send_chunk(dispatched as usize, len as usize).ok_or(
                    SimError::Protocol {
                        why: "chunk outside its send buffer",
                    },
                )?;
                self.helpers.submit(Task { sock: s, io })?;
                self.books[s].inflight.push_back((k, len));
                let msg = Ctrl {
                    kind: CtrlKind::Chunk,
                    sock: s as u8,
                    seq: k as u16,
                    len,
                    offset: dispatched,
                    total: size,
                };
                self.out.push(&msg.encode());
                self.ctrl_pushed += 1;
                dispatched += len;
            }
            // Every control message pushed so far belongs to request k or an older one.
            let pushed = self.ctrl_pushed;
            if let Some(r) = self.reqs.get_mut(k) {
                r.dispatched = dispatched;
                r.ctrl_end = pushed;
                r.announced = dispatched == size;
            }
            if dispatched < size {
                return Ok(());
            }
            self.dispatch += 1;
        }
        Ok(())
    }

    fn flush_ctrl(&mut self) -> Result<(), SimError> {
        while self.out.len() > 0 {
            match (&self.ctrl).write(self.out.pending()) {
                Ok(0) => return Err(SimError::PeerClosed { socket: None }),
                Ok(n) => {
                    self.out.consume(n);
                    self.ctrl_written += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(SimError::from_io("send", None, &e)),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct RecvReq {
    range: Target,
    /// Fragments placed so far (CUDA receives): the next chunk's first index in `mem[slot]`.
    frags: usize,
    posted: u32,
    total: Option<u32>,
    announced: u32,
    fully_announced: bool,
    completed: u32,
    reg: usize,
}

/// The receiving side of a connection (`accept`).
///
/// Field order matters: `helpers` is dropped (its threads joined) before `queue`, so no helper
/// still scatters into bounce pages when the queue gives them back.
pub struct RecvComm {
    ctrl: TcpStream,
    ctrl_eof: bool,
    helpers: Helpers,
    books: Vec<SockBook>,
    reqs: RequestRing<RecvReq>,
    regs: Registrations,
    announce: u64,
    inbuf: ByteFifo,
    queue: Option<Box<dyn UnpackQueue>>,
    broken: Option<SimError>,
    /// Since when the oldest unplaced chunk waits for bounce pages, and whether that was WARNed.
    starved: Option<(Instant, bool)>,
    warning: Option<String>,
    stall: StallWatch,
    last_done: Option<(usize, u32, usize)>,
}

impl std::fmt::Debug for RecvComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvComm")
            .field("helpers", &self.helpers)
            .field("live", &self.reqs.live())
            .field("has_unpack_queue", &self.queue.is_some())
            .finish()
    }
}

impl RecvComm {
    /// Starts the helper threads. `queue` is None when `accept` got no device-handle pointer;
    /// every `irecv` then fails (TCPX segfaults there).
    pub fn new(link: Link, queue: Option<Box<dyn UnpackQueue>>) -> Result<RecvComm, SimError> {
        link.ctrl
            .set_nonblocking(true)
            .map_err(|e| SimError::from_io("fcntl", None, &e))?;
        let nsocks = link.data.len();
        let device = queue.as_ref().and_then(|q| q.device_io());
        let helpers = Helpers::spawn(Direction::Recv, link.data, link.nthreads, MAX_TASKS, device)?;
        Ok(RecvComm {
            ctrl: link.ctrl,
            ctrl_eof: false,
            helpers,
            books: new_books(nsocks),
            reqs: RequestRing::new(),
            regs: Registrations::default(),
            announce: 0,
            inbuf: ByteFifo::new(CTRL_FIFO_MSGS * CTRL_LEN),
            queue,
            broken: None,
            starved: None,
            warning: None,
            stall: StallWatch::new(),
            last_done: None,
        })
    }

    /// The unpack queue's device-handle pointer, when the comm has one.
    pub fn device_handle(&self) -> Option<*mut tcpx::net::abi::UnpackNetDeviceHandle> {
        self.queue.as_ref().map(|q| q.device_handle())
    }

    /// `regMr`: records the memory; returns the mhandle.
    pub fn register(&mut self, mem: Memory) -> usize {
        self.regs.add(mem)
    }

    /// `deregMr`. Succeeds like TCPX even while outstanding requests use the registration
    /// (they keep their own copy of the range); returns how many do, for the caller's WARN.
    pub fn deregister(&mut self, mhandle: usize) -> Result<usize, SimError> {
        self.regs.remove(mhandle)?;
        Ok(self.reqs.iter().filter(|r| r.reg == mhandle).count())
    }

    /// `irecv` with n = 1: posts a receive of up to `size` bytes at `data`; returns its slot
    /// (also its unpack slot).
    pub fn irecv(&mut self, data: usize, size: i32, mhandle: usize) -> Result<usize, SimError> {
        check_broken(&self.broken)?;
        if self.queue.is_none() {
            return Err(SimError::NoDeviceHandle);
        }
        let range = resolve(&self.regs, data, size, mhandle)?;
        let (_, slot) = self.reqs.push(RecvReq {
            range,
            frags: 0,
            posted: range.len() as u32,
            total: None,
            announced: 0,
            fully_announced: false,
            completed: 0,
            reg: mhandle,
        })?;
        Ok(slot)
    }

    /// `test` on the receive in `slot`: progress, then whether it is done.
    pub fn test(&mut self, slot: usize) -> Result<bool, SimError> {
        check_broken(&self.broken)?;
        let k = self.reqs.test_target(slot)?;
        if let Err(e) = self.progress() {
            self.broken = Some(e.clone());
            return Err(e);
        }
        let done = self
            .reqs
            .get(k)
            .filter(|r| r.fully_announced && r.total == Some(r.completed))
            .map(|r| (r.frags, r.completed));
        if let Some((frags, bytes)) = done {
            if let Some(q) = &mut self.queue {
                if let Err(e) = q.publish(slot, frags) {
                    self.broken = Some(e.clone());
                    return Err(e);
                }
            }
            self.last_done = Some((slot, bytes, frags));
            self.reqs.mark_done();
        } else if let Some(waited) = self.stall.pending(k) {
            let w = self.stall_warning(k, waited);
            self.warning = Some(match self.warning.take() {
                Some(prev) => format!("{prev} | {w}"),
                None => w,
            });
        }
        Ok(done.is_some())
    }

    /// The WARN of a receive that `test` has found pending for `waited`.
    fn stall_warning(&self, k: u64, waited: Duration) -> String {
        let unconsumed = self.reqs.done_cursor() - self.reqs.head();
        let (req, hint) = match self.reqs.get(k) {
            Some(r) => {
                let into = match r.range {
                    Target::Host(_) => "host memory",
                    Target::Device(_) => "CUDA memory (lands in the bounce pool)",
                };
                let msg = match r.total {
                    None => "no control message for it has arrived yet".to_owned(),
                    Some(t) => format!(
                        "the sender announced {t} B; {} B handed to helpers, {} B landed",
                        r.announced, r.completed
                    ),
                };
                let hint = match r.total {
                    None if self.ctrl_eof => " The control stream ended.",
                    None => {
                        " The sender has not isend-ed it, or is not calling test (its control \
                         messages go out only inside test)."
                    }
                    Some(t) if r.announced < t && self.starved.is_some() => {
                        " Chunks wait for bounce pages: earlier receives were not consumed."
                    }
                    Some(_) => "",
                };
                (format!("up to {} B into {into}; {msg}", r.posted), hint)
            }
            None => ("no request state".to_owned(), ""),
        };
        format!(
            "receive {k} (slot {}) still pending after {waited:.1?} of test calls: {req}. Comm: \
             {} receives posted and not done, {unconsumed} done but not consumed, {} B of control \
             messages buffered. Helpers: {}.{hint}{}",
            slot_of(k),
            self.reqs.outstanding(),
            self.inbuf.len(),
            self.helpers.describe(),
            cuda_wait_note(&self.helpers, self.stall.after.min(CUDA_WAIT_NOTE)),
        )
    }

    /// Slot, bytes and published fragment count of the last receive `test` reported done.
    pub fn last_done(&self) -> Option<(usize, u32, usize)> {
        self.last_done
    }

    /// What registration `mhandle` covers, if it is one of this comm's.
    pub fn memory_of(&self, mhandle: usize) -> Option<Memory> {
        self.regs.find(mhandle).ok()
    }

    /// Sets the stall WARN threshold (tests use zero to assert the WARN without waiting).
    pub fn set_stall_warn_after(&mut self, after: Duration) {
        self.stall.set_after(after);
    }

    /// `irecvConsumed` on the receive in `slot`: frees the request and (CUDA receives) poisons
    /// and frees its bounce pages.
    pub fn consumed(&mut self, slot: usize) -> Result<(), SimError> {
        check_broken(&self.broken)?;
        let r = self.reqs.consume(slot)?;
        if let Some(q) = &mut self.queue {
            if let Err(e) = q.release(slot, r.frags) {
                self.broken = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// A WARN the comm wants printed (once per condition): a receive starved of bounce pages
    /// for [`STARVED_WARN_AFTER`], or pending for [`STALL_WARN_AFTER`].
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// Receives posted and not yet consumed.
    pub fn outstanding(&self) -> usize {
        self.reqs.live()
    }

    /// What each helper thread did over the comm's life (INFO at close).
    pub fn helper_summary(&self) -> String {
        self.helpers.time_summary()
    }

    /// The WARN TCPX prints at close when receives were not consumed.
    pub fn close_warning(&self) -> Option<String> {
        let n = self.reqs.live();
        (n > 0).then(|| {
            format!(
                "head {} tail {} some pages not yet freed? ({n} receives not consumed at close)",
                self.reqs.head(),
                self.reqs.tail()
            )
        })
    }

    fn progress(&mut self) -> Result<(), SimError> {
        reap(&self.helpers, &mut self.books, &mut self.reqs, |r, len| {
            r.completed += len
        });
        if let Some(e) = self.helpers.error() {
            return Err(e);
        }
        self.read_ctrl()?;
        self.match_ctrl()?;
        if self.ctrl_eof && self.announce < self.reqs.tail() && self.inbuf.len() < CTRL_LEN {
            return Err(SimError::PeerClosed { socket: None });
        }
        Ok(())
    }

    fn read_ctrl(&mut self) -> Result<(), SimError> {
        // Read only when a posted receive still needs control messages and none is buffered:
        // a test that has nothing to learn from the control socket costs no syscall.
        if self.announce >= self.reqs.tail() || self.inbuf.len() >= CTRL_LEN {
            return Ok(());
        }
        while !self.ctrl_eof {
            let space = self.inbuf.space_mut();
            if space.is_empty() {
                break;
            }
            match (&self.ctrl).read(space) {
                Ok(0) => self.ctrl_eof = true,
                Ok(n) => self.inbuf.produced(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(SimError::from_io("recv", None, &e)),
            }
        }
        Ok(())
    }

    fn match_ctrl(&mut self) -> Result<(), SimError> {
        while let Some(raw) = self.inbuf.first_msg() {
            let k = self.announce;
            if k >= self.reqs.tail() {
                break;
            }
            let msg = Ctrl::decode(&raw)?;
            if msg.seq != k as u16 {
                return Err(SimError::Protocol {
                    why: "control message out of sequence",
                });
            }
            let nsocks = self.books.len();
            let unconsumed = self.reqs.done_cursor() - self.reqs.head();
            let Some(r) = self.reqs.get_mut(k) else {
                return Err(SimError::Protocol {
                    why: "matching cursor on a free slot",
                });
            };
            let total = match r.total {
                None => {
                    if msg.total > r.posted {
                        return Err(SimError::MessageTooLarge {
                            sent: msg.total,
                            posted: r.posted,
                        });
                    }
                    r.total = Some(msg.total);
                    msg.total
                }
                Some(t) if t != msg.total => {
                    return Err(SimError::Protocol {
                        why: "message size changed between chunks",
                    })
                }
                Some(t) => t,
            };
            match msg.kind {
                CtrlKind::Empty => {
                    if total != 0 {
                        return Err(SimError::Protocol {
                            why: "empty-message control for a non-empty message",
                        });
                    }
                    r.fully_announced = true;
                    self.inbuf.consume(CTRL_LEN);
                    self.announce += 1;
                }
                CtrlKind::Chunk => {
                    let s = usize::from(msg.sock);
                    let end = msg.offset.checked_add(msg.len);
                    if s >= nsocks
                        || msg.len == 0
                        || msg.offset != r.announced
                        || !matches!(end, Some(e) if e <= total)
                    {
                        return Err(SimError::Protocol {
                            why: "chunk control message with a bad socket, offset or length",
                        });
                    }
                    if self.books[s].inflight.len() >= MAX_TASKS {
                        break;
                    }
                    let io = match r.range {
                        Target::Host(range) => {
                            Io::Host(range.sub(msg.offset as usize, msg.len as usize).ok_or(
                                SimError::Protocol {
                                    why: "chunk outside the receive buffer",
                                },
                            )?)
                        }
                        Target::Device(range) => {
                            if range.sub(msg.offset as usize, msg.len as usize).is_none() {
                                return Err(SimError::Protocol {
                                    why: "chunk outside the receive buffer",
                                });
                            }
                            let Some(q) = self.queue.as_mut() else {
                                return Err(SimError::NoDeviceHandle);
                            };
                            match q.place(slot_of(k), r.frags, u64::from(msg.offset), msg.len)? {
                                Some(chunk) => {
                                    r.frags += chunk.nfrags as usize;
                                    self.starved = None;
                                    Io::DeviceRecv(chunk)
                                }
                                None => {
                                    let now = Instant::now();
                                    let (since, warned) = self.starved.get_or_insert((now, false));
                                    let waited = now.duration_since(*since);
                                    if !*warned && waited >= STARVED_WARN_AFTER {
                                        *warned = true;
                                        self.warning =
                                            Some(starved_warning(k, waited, msg.len, unconsumed));
                                    }
                                    break;
                                }
                            }
                        }
                    };
                    self.helpers.submit(Task { sock: s, io })?;
                    self.books[s].inflight.push_back((k, msg.len));
                    r.announced += msg.len;
                    if r.announced == total {
                        r.fully_announced = true;
                        self.announce += 1;
                    }
                    self.inbuf.consume(CTRL_LEN);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::{DeviceMemory, HostMemory};
    use crate::config::Config;
    use crate::conn::{self, ListenComm};
    use crate::helper::Phase;
    use crate::hostmem::region_of;
    use std::time::{Duration, Instant};

    fn links(nsocks: usize, nthreads: usize) -> (Link, Link) {
        let cfg = Config::loopback_for_tests(nsocks, nthreads);
        let (mut l, mut h) = ListenComm::new(&cfg, 0).unwrap();
        let t0 = Instant::now();
        let (mut s, mut r) = (None, None);
        while s.is_none() || r.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20));
            if s.is_none() {
                s = conn::connect(&cfg, 0, &mut h).unwrap();
            }
            if r.is_none() {
                r = l.accept().unwrap();
            }
        }
        (s.unwrap(), r.unwrap())
    }

    fn sink(_: i32, _: &str) {}

    /// Drives both comms (progress only happens in test) until every request is done.
    fn run_messages(nsocks: usize, nthreads: usize, sizes: &[usize]) {
        let (sl, rl) = links(nsocks, nthreads);
        let mut send = SendComm::new(sl, 4096, None).unwrap();
        let mut recv = RecvComm::new(
            rl,
            Some(
                HostMemory
                    .new_unpack_queue(&crate::log::Logger::Sink(sink))
                    .unwrap(),
            ),
        )
        .unwrap();
        let total: usize = sizes.iter().sum();
        let mut src: Vec<u8> = (0..total).map(|i| (i * 31 + i / 7) as u8).collect();
        let mut dst = vec![0u8; total];
        let smh = send.register(Memory::Host(region_of(&mut src)));
        let rmh = recv.register(Memory::Host(region_of(&mut dst)));
        let (sbase, rbase) = (src.as_ptr() as usize, dst.as_ptr() as usize);
        let offsets: Vec<usize> = sizes
            .iter()
            .scan(0, |o, n| {
                let at = *o;
                *o += n;
                Some(at)
            })
            .collect();
        let (mut posted_s, mut posted_r, mut done_s, mut done_r) = (0, 0, 0, 0);
        let mut recv_slots = std::collections::VecDeque::new();
        let mut send_slots = std::collections::VecDeque::new();
        let t0 = Instant::now();
        while done_r < sizes.len() {
            assert!(t0.elapsed() < Duration::from_secs(30), "stalled");
            while send.outstanding() < 16 && posted_s < sizes.len() {
                let k = posted_s;
                send_slots.push_back(
                    send.isend(sbase + offsets[k], sizes[k] as i32, smh)
                        .unwrap(),
                );
                posted_s += 1;
            }
            while recv.outstanding() < 16 && posted_r < sizes.len() {
                let k = posted_r;
                recv_slots.push_back(
                    recv.irecv(rbase + offsets[k], sizes[k] as i32, rmh)
                        .unwrap(),
                );
                posted_r += 1;
            }
            if let Some(&slot) = send_slots.front() {
                if send.test(slot).unwrap() {
                    send_slots.pop_front();
                    done_s += 1;
                }
            }
            if let Some(&slot) = recv_slots.front() {
                if recv.test(slot).unwrap() {
                    recv.consumed(slot).unwrap();
                    recv_slots.pop_front();
                    done_r += 1;
                }
            }
        }
        // The last receives can complete before their sends are seen done: finish the sends.
        while let Some(&slot) = send_slots.front() {
            assert!(t0.elapsed() < Duration::from_secs(30), "sends stalled");
            if send.test(slot).unwrap() {
                send_slots.pop_front();
                done_s += 1;
            }
        }
        assert_eq!(done_s, sizes.len());
        drop(send);
        drop(recv);
        assert!(src == dst, "bytes differ");
    }

    #[test]
    fn chunks_spread_over_sockets_and_threads_arrive_in_order() {
        let sizes: Vec<usize> = (0..100).map(|i| (i * 7919) % 70_000).collect();
        run_messages(3, 2, &sizes);
        run_messages(8, 8, &sizes);
        run_messages(1, 1, &[0, 0, 1, 4095, 4096, 4097, 1 << 20]);
    }

    #[test]
    fn more_chunks_than_the_control_buffer_holds() {
        // 16 posted messages of 1 MiB in 4 KiB chunks: thousands of control messages, far more
        // than the 64-message control FIFO, with 6 chunks in flight per socket.
        run_messages(2, 1, &[1 << 20; 40]);
    }

    #[test]
    fn byte_fifo_compacts_and_parses() {
        let mut f = ByteFifo::new(48);
        assert!(f.has_room(16));
        f.push(&[1u8; 16]);
        f.push(&[2u8; 16]);
        f.push(&[3u8; 16]);
        assert!(!f.has_room(16));
        f.consume(16);
        assert!(f.has_room(16));
        assert_eq!(f.first_msg(), Some([2u8; 16]));
        f.consume(10);
        assert_eq!(f.len(), 22);
        assert_eq!(f.space_mut().len(), 26);
        f.consume(22);
        assert_eq!(f.len(), 0);
        assert_eq!(f.first_msg(), None);
    }

    #[test]
    fn registrations_resolve_ranges() {
        let mut regs = Registrations::default();
        let mut buf = vec![0u8; 1024];
        let base = buf.as_mut_ptr() as usize;
        let id = regs.add(Memory::Host(crate::hostmem::region_of(&mut buf)));
        assert_eq!(
            resolve(&regs, base + 24, 1000, id).map(|r| r.len()),
            Ok(1000)
        );
        let dev = regs.add(Memory::Cuda(CudaRegistration {
            addr: 0x7000_0000,
            size: 8192,
            device: 1,
        }));
        assert_eq!(
            resolve(&regs, 0x7000_1000, 4096, dev),
            Ok(Target::Device(DeviceRange {
                addr: 0x7000_1000,
                len: 4096,
                device: 1
            }))
        );
        assert!(matches!(
            resolve(&regs, 0x7000_1001, 4096, dev),
            Err(SimError::OutsideRegistration { .. })
        ));
        assert_eq!(
            resolve(&regs, 0x7000_1000, 0, dev),
            Ok(Target::Host(IoRange::EMPTY))
        );
        assert!(matches!(
            resolve(&regs, base + 25, 1000, id),
            Err(SimError::OutsideRegistration { .. })
        ));
        assert_eq!(resolve(&regs, 0, 0, id), Ok(Target::Host(IoRange::EMPTY)));
        assert_eq!(
            resolve(&regs, base, -1, id),
            Err(SimError::NegativeSize { size: -1 })
        );
        assert_eq!(
            resolve(&regs, base, 1, id + 1),
            Err(SimError::UnknownMhandle)
        );
        assert_eq!(regs.remove(id), Ok(()));
        assert_eq!(regs.remove(id), Err(SimError::UnknownMhandle));
    }

    /// CUDA mode without a GPU: "device memory" is host memory behind mutexes, addressed by
    /// fake device addresses; the stager and the queue do on the CPU what the CUDA ones do with
    /// copies and kernels. Drives the comm's device paths (place, scatter, publish, release,
    /// waiting for pages) end to end over real sockets.
    mod fakedev {
        use super::*;
        use crate::bounce::{StagedChunk, Stager};
        use crate::helper::{Phase, PhaseCell};
        use crate::pages::{chunk_fragments, pages_for, PageAllocator, Shuffler, PAGE};
        use std::collections::BTreeMap;
        use std::sync::Mutex;
        use tcpx::net::abi::{LoadMeta, UnpackNetDeviceHandle, MAX_FRAGMENTS};

        pub const POISON: u8 = 0xdb;
        const DEV_BASE: usize = 0xD000_0000_0000;

        /// Device memory: allocations by base address, and the bounce pool.
        pub struct FakeGpu {
            pub mem: Mutex<BTreeMap<usize, Vec<u8>>>,
            pub pool: Mutex<Vec<u8>>,
            pub pages: Mutex<PageAllocator>,
            next: Mutex<usize>,
        }

        impl FakeGpu {
            pub fn new(pool_pages: u32) -> Arc<FakeGpu> {
                Arc::new(FakeGpu {
                    mem: Mutex::new(BTreeMap::new()),
                    pool: Mutex::new(vec![POISON; pool_pages as usize * PAGE]),
                    pages: Mutex::new(PageAllocator::new(pool_pages, 11)),
                    next: Mutex::new(DEV_BASE),
                })
            }

            /// A device allocation holding `bytes`; returns its address.
            pub fn alloc(&self, bytes: Vec<u8>) -> usize {
                let mut next = self.next.lock().unwrap();
                let at = *next;
                *next += bytes.len().div_ceil(PAGE) * PAGE + PAGE;
                self.mem.lock().unwrap().insert(at, bytes);
                at
            }

            pub fn read(&self, addr: usize, len: usize) -> Vec<u8> {
                let mem = self.mem.lock().unwrap();
                let (base, buf) = mem.range(..=addr).next_back().unwrap();
                buf[addr - base..addr - base + len].to_vec()
            }

            /// What a kernel storing `bytes` at `addr` does.
            pub fn write(&self, addr: usize, bytes: &[u8]) {
                let mut mem = self.mem.lock().unwrap();
                let (base, buf) = mem.range_mut(..=addr).next_back().unwrap();
                let at = addr - *base;
                buf[at..at + bytes.len()].copy_from_slice(bytes);
            }
        }

        /// A queue's metadata: `mem[16][2048]` and `cnt[16]`.
        pub struct FakeMeta {
            pub mem: Mutex<Vec<LoadMeta>>,
            pub cnt: Mutex<[u64; 16]>,
        }

        pub struct FakeQueue {
            gpu: Arc<FakeGpu>,
            pub meta: Arc<FakeMeta>,
            rng: Shuffler,
            placed: [usize; 16],
            /// Replaces the helpers' device I/O (a stager that blocks like a GPU that does not
            /// run the sim's work).
            pub io: Option<Arc<dyn DeviceIo>>,
        }

        impl FakeQueue {
            pub fn new(gpu: &Arc<FakeGpu>) -> FakeQueue {
                FakeQueue {
                    gpu: Arc::clone(gpu),
                    meta: Arc::new(FakeMeta {
                        mem: Mutex::new(vec![LoadMeta::default(); 16 * MAX_FRAGMENTS]),
                        cnt: Mutex::new([0; 16]),
                    }),
                    rng: Shuffler::new(5),
                    placed: [0; 16],
                    io: None,
                }
            }
        }

        /// Device I/O whose receives enter [`Phase::CudaScatter`] and stay there until `release`
        /// is dropped: a GPU that does not run the scatter the sim queued.
        pub struct StuckIo {
            release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
        }

        impl StuckIo {
            pub fn new() -> (Arc<StuckIo>, std::sync::mpsc::Sender<()>) {
                let (tx, rx) = std::sync::mpsc::channel();
                (
                    Arc::new(StuckIo {
                        release: Mutex::new(Some(rx)),
                    }),
                    tx,
                )
            }
        }

        struct StuckStager(Option<std::sync::mpsc::Receiver<()>>);

        impl DeviceIo for StuckIo {
            fn stager(&self) -> Result<Box<dyn Stager>, SimError> {
                Ok(Box::new(StuckStager(self.release.lock().unwrap().take())))
            }
        }

        impl Stager for StuckStager {
            fn send(
                &mut self,
                _: &TcpStream,
                _: usize,
                _: DeviceRange,
                _: &PhaseCell,
            ) -> Result<(), SimError> {
                unreachable!("receive side only")
            }

            fn recv(
                &mut self,
                _: &TcpStream,
                _: usize,
                _: StagedChunk,
                phase: &PhaseCell,
            ) -> Result<(), SimError> {
                phase.set(Phase::CudaScatter);
                if let Some(rx) = &self.0 {
                    let _ = rx.recv();
                }
                Err(SimError::Protocol {
                    why: "released stuck stager",
                })
            }
        }

        struct FakeIo {
            gpu: Arc<FakeGpu>,
            meta: Option<Arc<FakeMeta>>,
        }

        impl DeviceIo for FakeIo {
            fn stager(&self) -> Result<Box<dyn Stager>, SimError> {
                Ok(Box::new(FakeIo {
                    gpu: Arc::clone(&self.gpu),
                    meta: self.meta.clone(),
                }))
            }
        }

        impl Stager for FakeIo {
            fn send(
                &mut self,
                sock: &TcpStream,
                index: usize,
                src: DeviceRange,
                phase: &PhaseCell,
            ) -> Result<(), SimError> {
                phase.set(Phase::CudaCopy);
                let bytes = self.gpu.read(src.addr, src.len);
                phase.set(Phase::SocketSend);
                (&*sock)
                    .write_all(&bytes)
                    .map_err(|e| SimError::from_io("send", Some(index), &e))
            }

            fn recv(
                &mut self,
                sock: &TcpStream,
                index: usize,
                chunk: StagedChunk,
                phase: &PhaseCell,
            ) -> Result<(), SimError> {
                phase.set(Phase::SocketRecv);
                let mut staging = vec![0u8; chunk.len as usize];
                (&*sock)
                    .read_exact(&mut staging)
                    .map_err(|e| SimError::from_io("recv", Some(index), &e))?;
                let meta = self.meta.as_ref().unwrap().mem.lock().unwrap();
                let mut pool = self.gpu.pool.lock().unwrap();
                for b in 0..chunk.nfrags as usize {
                    let f = meta[chunk.frags + b];
                    let (s, n) = (f.src_off as usize, f.len as usize);
                    pool[s..s + n].copy_from_slice(&staging[b * PAGE..b * PAGE + n]);
                }
                Ok(())
            }
        }

        impl UnpackQueue for FakeQueue {
            fn device_handle(&self) -> *mut UnpackNetDeviceHandle {
                core::ptr::NonNull::dangling().as_ptr()
            }

            fn device_io(&self) -> Option<Arc<dyn DeviceIo>> {
                if let Some(io) = &self.io {
                    return Some(Arc::clone(io));
                }
                Some(Arc::new(FakeIo {
                    gpu: Arc::clone(&self.gpu),
                    meta: Some(Arc::clone(&self.meta)),
                }))
            }

            fn place(
                &mut self,
                slot: usize,
                first: usize,
                dst_off: u64,
                len: u32,
            ) -> Result<Option<StagedChunk>, SimError> {
                assert_eq!(self.placed[slot], first);
                let n = pages_for(len);
                if first + n > MAX_FRAGMENTS {
                    return Err(SimError::TooManyFragments { count: first + n });
                }
                let mut pages = vec![0u32; n];
                if !self.gpu.pages.lock().unwrap().alloc_into(&mut pages) {
                    return Ok(None);
                }
                self.rng.shuffle(&mut pages);
                let mut mem = self.meta.mem.lock().unwrap();
                for (i, f) in chunk_fragments(&pages, dst_off, len).enumerate() {
                    mem[slot * MAX_FRAGMENTS + first + i] = f;
                }
                self.placed[slot] = first + n;
                Ok(Some(StagedChunk {
                    frags: slot * MAX_FRAGMENTS + first,
                    nfrags: n as u32,
                    len,
                }))
            }

            fn publish(&mut self, slot: usize, count: usize) -> Result<(), SimError> {
                assert_eq!(self.placed[slot], count);
                self.meta.cnt.lock().unwrap()[slot] = count as u64;
                Ok(())
            }

            fn release(&mut self, slot: usize, count: usize) -> Result<(), SimError> {
                assert_eq!(self.placed[slot], count);
                let mem = self.meta.mem.lock().unwrap();
                let frags = &mem[slot * MAX_FRAGMENTS..slot * MAX_FRAGMENTS + count];
                let mut pool = self.gpu.pool.lock().unwrap();
                for f in frags {
                    let p = f.src_off as usize;
                    pool[p..p + PAGE].fill(POISON);
                }
                self.gpu
                    .pages
                    .lock()
                    .unwrap()
                    .release(frags.iter().map(|f| f.src_off / PAGE as u32))
                    .map_err(|why| SimError::PageAccounting { why })?;
                self.placed[slot] = 0;
                Ok(())
            }
        }

        impl Drop for FakeQueue {
            fn drop(&mut self) {
                let mem = self.meta.mem.lock().unwrap();
                let mut pages = self.gpu.pages.lock().unwrap();
                for (slot, &n) in self.placed.iter().enumerate() {
                    let frags = &mem[slot * MAX_FRAGMENTS..slot * MAX_FRAGMENTS + n];
                    pages
                        .release(frags.iter().map(|f| f.src_off / PAGE as u32))
                        .unwrap();
                }
            }
        }

        /// A send comm's device I/O (device→"host" reads of the fake GPU).
        pub fn send_io(gpu: &Arc<FakeGpu>) -> Arc<dyn DeviceIo> {
            Arc::new(FakeIo {
                gpu: Arc::clone(gpu),
                meta: None,
            })
        }

        /// A connected pair in fake CUDA mode: 16 KiB chunks over `nsocks` sockets.
        pub fn comms(
            gpu: &Arc<FakeGpu>,
            nsocks: usize,
            nthreads: usize,
        ) -> (SendComm, RecvComm, Arc<FakeMeta>) {
            comms_with_chunk(gpu, nsocks, nthreads, 16384)
        }

        /// A connected pair in fake CUDA mode with `chunk`-byte chunks.
        pub fn comms_with_chunk(
            gpu: &Arc<FakeGpu>,
            nsocks: usize,
            nthreads: usize,
            chunk: usize,
        ) -> (SendComm, RecvComm, Arc<FakeMeta>) {
            let (sl, rl) = links(nsocks, nthreads);
            let send = SendComm::new(sl, chunk, Some(send_io(gpu))).unwrap();
            let q = FakeQueue::new(gpu);
            let meta = Arc::clone(&q.meta);
            let recv = RecvComm::new(rl, Some(Box::new(q))).unwrap();
            (send, recv, meta)
        }

        /// The bytes of the receive in `slot`, unpacked on the host from its fragments.
        pub fn unpack(gpu: &FakeGpu, meta: &FakeMeta, slot: usize, len: usize) -> Vec<u8> {
            let cnt = meta.cnt.lock().unwrap()[slot] as usize;
            let mem = meta.mem.lock().unwrap();
            let frags = &mem[slot * MAX_FRAGMENTS..slot * MAX_FRAGMENTS + cnt];
            tcpx_core::unpack::validate_fragments(
                frags,
                gpu.pool.lock().unwrap().len() as u64,
                len as u64,
            )
            .unwrap();
            let pool = gpu.pool.lock().unwrap();
            let mut out = vec![0u8; len];
            for f in frags {
                let (s, d, n) = (f.src_off as usize, f.dst_off as usize, f.len as usize);
                out[d..d + n].copy_from_slice(&pool[s..s + n]);
            }
            out
        }

        pub fn pages(meta: &FakeMeta, slot: usize) -> Vec<u32> {
            let cnt = meta.cnt.lock().unwrap()[slot] as usize;
            let mem = meta.mem.lock().unwrap();
            mem[slot * MAX_FRAGMENTS..slot * MAX_FRAGMENTS + cnt]
                .iter()
                .map(|f| f.src_off / PAGE as u32)
                .collect()
        }

        pub fn cuda(addr: usize, size: usize) -> Memory {
            Memory::Cuda(CudaRegistration {
                addr,
                size,
                device: 0,
            })
        }
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 131 + seed * 7919 + i / 4096) % 251) as u8)
            .collect()
    }

    fn wait_until(mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(30), "stalled");
            std::thread::yield_now();
        }
    }

    #[test]
    fn cuda_receives_become_fragments_in_the_bounce_pool() {
        use fakedev::*;
        let gpu = FakeGpu::new(4096);
        let (mut send, mut recv, meta) = comms(&gpu, 3, 2);
        let sizes = [1usize, 4095, 4096, 4097, 16384, 16385, 100_000, 0, 1 << 20];
        let max = *sizes.iter().max().unwrap();
        // Send side: device memory; receive side: a device buffer the sim must never touch.
        let datas: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(k, n)| pattern(k, *n))
            .collect();
        let srcs: Vec<usize> = datas.iter().map(|d| gpu.alloc(d.clone())).collect();
        let smhs: Vec<usize> = srcs
            .iter()
            .zip(&sizes)
            .map(|(a, n)| send.register(cuda(*a, (*n).max(1))))
            .collect();
        let dst = gpu.alloc(vec![0x5a; max]);
        let rmh = recv.register(cuda(dst, max));
        for (k, &n) in sizes.iter().enumerate() {
            let rs = recv.irecv(dst, n as i32, rmh).unwrap();
            let ss = send.isend(srcs[k], n as i32, smhs[k]).unwrap();
            assert_eq!(rs, k % 16);
            let (mut sd, mut rd) = (false, false);
            wait_until(|| {
                sd = sd || send.test(ss).unwrap();
                rd = rd || recv.test(rs).unwrap();
                sd && rd
            });
            assert_eq!(meta.cnt.lock().unwrap()[rs] as usize, n.div_ceil(4096));
            assert!(
                unpack(&gpu, &meta, rs, n) == datas[k],
                "message {k} ({n} B)"
            );
            let p = pages(&meta, rs);
            if p.len() >= 8 {
                assert!(p.windows(2).any(|w| w[1] != w[0] + 1), "pages are shuffled");
            }
            recv.consumed(rs).unwrap();
            // Consumed pages are poisoned and back in the pool.
            let pool = gpu.pool.lock().unwrap();
            assert!(p
                .iter()
                .all(|pg| pool[*pg as usize * 4096..(*pg as usize + 1) * 4096]
                    .iter()
                    .all(|b| *b == POISON)));
            drop(pool);
            assert_eq!(gpu.pages.lock().unwrap().free_pages(), 4096);
        }
        assert!(
            gpu.read(dst, max).iter().all(|b| *b == 0x5a),
            "the receive buffer was written"
        );
    }

    #[test]
    fn cuda_receives_wait_for_pages_until_earlier_ones_are_consumed() {
        use fakedev::*;
        // 64 pages: two 128 KiB receives (32 pages each) fill the pool.
        let gpu = FakeGpu::new(64);
        let (mut send, mut recv, meta) = comms(&gpu, 2, 1);
        let n = 128 << 10;
        let datas: Vec<Vec<u8>> = (0..4).map(|k| pattern(k + 40, n)).collect();
        let src = gpu.alloc(datas.concat());
        let smh = send.register(cuda(src, 4 * n));
        let dst = gpu.alloc(vec![0; 4 * n]);
        let rmh = recv.register(cuda(dst, 4 * n));
        let rslots: Vec<usize> = (0..4)
            .map(|k| recv.irecv(dst + k * n, n as i32, rmh).unwrap())
            .collect();
        let mut sslots: VecDeque<usize> = (0..4)
            .map(|k| send.isend(src + k * n, n as i32, smh).unwrap())
            .collect();
        fn pump(send: &mut SendComm, sslots: &mut VecDeque<usize>) {
            while let Some(&s) = sslots.front() {
                if !send.test(s).unwrap() {
                    break;
                }
                sslots.pop_front();
            }
        }
        for &r in &rslots[..2] {
            wait_until(|| {
                pump(&mut send, &mut sslots);
                recv.test(r).unwrap()
            });
        }
        assert_eq!(gpu.pages.lock().unwrap().free_pages(), 0);
        for _ in 0..500 {
            pump(&mut send, &mut sslots);
            assert!(
                !recv.test(rslots[2]).unwrap(),
                "completed without free pages"
            );
        }
        assert!(unpack(&gpu, &meta, rslots[0], n) == datas[0]);
        assert!(unpack(&gpu, &meta, rslots[1], n) == datas[1]);
        for k in 0..4 {
            if k >= 2 {
                wait_until(|| {
                    pump(&mut send, &mut sslots);
                    recv.test(rslots[k]).unwrap()
                });
                assert!(unpack(&gpu, &meta, rslots[k], n) == datas[k], "message {k}");
            }
            recv.consumed(rslots[k]).unwrap();
        }
        wait_until(|| {
            pump(&mut send, &mut sslots);
            sslots.is_empty()
        });
        assert_eq!(gpu.pages.lock().unwrap().free_pages(), 64);
    }

    #[test]
    fn a_cuda_receive_over_2048_pages_fails() {
        use fakedev::*;
        let gpu = FakeGpu::new(4096);
        let (mut send, mut recv, _meta) = comms(&gpu, 1, 1);
        let n = 2049 * 4096;
        let src = gpu.alloc(vec![1; n]);
        let smh = send.register(cuda(src, n));
        let dst = gpu.alloc(vec![0; n]);
        let rmh = recv.register(cuda(dst, n));
        let r = recv.irecv(dst, n as i32, rmh).unwrap();
        let s = send.isend(src, n as i32, smh).unwrap();
        let t0 = Instant::now();
        let err = loop {
            assert!(t0.elapsed() < Duration::from_secs(30), "stalled");
            let _ = send.test(s);
            match recv.test(r) {
                Ok(false) => {}
                Ok(true) => panic!("a 2049-page receive completed"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, SimError::TooManyFragments { count: 2049 });
        drop(send);
        drop(recv);
        // The failed receive's pages go back when the comm closes.
        assert_eq!(gpu.pages.lock().unwrap().free_pages(), 4096);
    }

    #[test]
    fn host_receives_on_a_cuda_comm_fill_the_buffer() {
        use fakedev::*;
        let gpu = FakeGpu::new(64);
        let (mut send, mut recv, meta) = comms(&gpu, 2, 2);
        let data = pattern(3, 50_000);
        let src = gpu.alloc(data.clone());
        let smh = send.register(cuda(src, data.len()));
        let mut host = vec![0u8; data.len()];
        let rmh = recv.register(Memory::Host(region_of(&mut host)));
        meta.cnt.lock().unwrap()[0] = 99;
        let r = recv
            .irecv(host.as_ptr() as usize, data.len() as i32, rmh)
            .unwrap();
        let s = send.isend(src, data.len() as i32, smh).unwrap();
        let (mut sd, mut rd) = (false, false);
        wait_until(|| {
            sd = sd || send.test(s).unwrap();
            rd = rd || recv.test(r).unwrap();
            sd && rd
        });
        assert_eq!(
            meta.cnt.lock().unwrap()[0],
            0,
            "host receives publish cnt 0"
        );
        recv.consumed(r).unwrap();
        drop(recv);
        drop(send);
        assert!(host == data);
        assert_eq!(gpu.pages.lock().unwrap().free_pages(), 64);
    }

    /// NCCL 2.28's p2p proxy loop over the net transport with shared buffers
    /// (`src/transport/net.cc`: `sendProxyProgress`, `recvProxyProgress`; the kernel side in
    /// `src/device/prims_simple.h` and `src/device/network/unpack/unpack.h`), on two channels —
    /// two comm pairs whose receives all post into ONE registered buffer — with TCPX's GCP
    /// shape (4 sockets on 1 helper thread, chunk = P2P chunk):
    /// * sender: the kernel fills shared slot `step % 8` only with a credit (`step < done + 8`);
    ///   the proxy `isend`s the step's actual size and tests only its oldest send;
    /// * receiver: the proxy `irecv`s the slot's full P2P chunk size (`sharedBuffersGet`) up to 8
    ///   steps ahead of the last consumed one, tests only the oldest; the kernel's own `head`
    ///   (from `u64::MAX`, +1 per step) picks `cnt[head % 16]` and unpacks; only then the proxy
    ///   calls `irecvConsumed`.
    ///
    /// Steps include short, page-unaligned and empty ones. Everything must arrive, unpacked
    /// from the bounce pool, with the irecv buffer untouched.
    #[test]
    fn nccl_p2p_proxy_pattern_over_two_shared_channels() {
        use fakedev::*;
        const STEPS: usize = 8; // NCCL_STEPS
        const SHARED: usize = 16; // NCCL_SHARED_STEPS
        let p2p = 64 << 10;
        let gpu = FakeGpu::new(2 * 16 * (p2p / 4096) as u32);
        let nch = 2;
        let sbuf = gpu.alloc(vec![0; nch * SHARED * p2p]);
        let rbuf = gpu.alloc(vec![0x5a; nch * SHARED * p2p]);
        struct Chan {
            send: SendComm,
            recv: RecvComm,
            meta: Arc<FakeMeta>,
            smh: usize,
            rmh: usize,
            sizes: Vec<usize>,
            sends: VecDeque<usize>,
            recvs: VecDeque<usize>,
            written: usize,
            sent: usize,
            posted: usize,
            received: usize,
            unpacked: usize,
            head: u64,
        }
        let mut ch: Vec<Chan> = (0..nch)
            .map(|c| {
                let (mut send, mut recv, meta) = comms_with_chunk(&gpu, 4, 1, p2p);
                let smh = send.register(cuda(sbuf, nch * SHARED * p2p));
                let rmh = recv.register(cuda(rbuf, nch * SHARED * p2p));
                let sizes = (0..37)
                    .map(|k| match (k + c) % 6 {
                        0 | 1 => p2p,
                        2 => 1000 + k,
                        3 => 0,
                        4 => p2p - 1,
                        _ => 4096 * (k % 5 + 1),
                    })
                    .collect();
                Chan {
                    send,
                    recv,
                    meta,
                    smh,
                    rmh,
                    sizes,
                    sends: VecDeque::new(),
                    recvs: VecDeque::new(),
                    written: 0,
                    sent: 0,
                    posted: 0,
                    received: 0,
                    unpacked: 0,
                    head: u64::MAX,
                }
            })
            .collect();
        let data = |c: usize, k: usize, n: usize| pattern(c * 1000 + k, n);
        let slot_addr = |base: usize, c: usize, k: usize| base + p2p * (c * SHARED + k % STEPS);
        let t0 = Instant::now();
        while ch.iter().any(|x| x.unpacked < x.sizes.len()) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "NCCL's pattern stalled"
            );
            for (c, x) in ch.iter_mut().enumerate() {
                let nsteps = x.sizes.len();
                // Sender: kernel fills a slot with a credit, proxy isends it; then tests.
                if x.written < nsteps && x.written < x.sent + STEPS {
                    let k = x.written;
                    let n = x.sizes[k];
                    gpu.write(slot_addr(sbuf, c, k), &data(c, k, n));
                    let s = x
                        .send
                        .isend(slot_addr(sbuf, c, k), n as i32, x.smh)
                        .unwrap();
                    x.sends.push_back(s);
                    x.written += 1;
                } else if let Some(&s) = x.sends.front() {
                    if x.send.test(s).unwrap() {
                        x.sends.pop_front();
                        x.sent += 1;
                    }
                }
                // Receiver: post up to 8 ahead of the consumed steps, else test the oldest.
                if x.posted < nsteps && x.posted < x.unpacked + STEPS {
                    let k = x.posted;
                    let r = x
                        .recv
                        .irecv(slot_addr(rbuf, c, k), p2p as i32, x.rmh)
                        .unwrap();
                    assert_eq!(
                        r,
                        k % 16,
                        "the k-th irecv of a comm uses unpack slot k % 16"
                    );
                    x.recvs.push_back(r);
                    x.posted += 1;
                } else if x.received < x.posted
                    && x.recv.test(x.recvs[x.received - x.unpacked]).unwrap()
                {
                    x.received += 1;
                }
                // Kernel: the proxy moved the tail; unpack with the kernel's own head; then the
                // proxy sees the kernel's head and consumes.
                if x.unpacked < x.received {
                    let k = x.unpacked;
                    x.head = x.head.wrapping_add(1);
                    let slot = (x.head % 16) as usize;
                    let n = x.sizes[k];
                    assert_eq!(x.meta.cnt.lock().unwrap()[slot] as usize, n.div_ceil(4096));
                    assert!(
                        unpack(&gpu, &x.meta, slot, n) == data(c, k, n),
                        "ch {c} step {k}"
                    );
                    let r = x.recvs.pop_front().unwrap();
                    assert_eq!(r, slot);
                    x.recv.consumed(r).unwrap();
                    x.unpacked += 1;
                }
            }
        }
        for x in &mut ch {
            while let Some(&s) = x.sends.front() {
                assert!(t0.elapsed() < Duration::from_secs(60), "sends stalled");
                if x.send.test(s).unwrap() {
                    x.sends.pop_front();
                }
            }
            assert_eq!((x.send.outstanding(), x.recv.outstanding()), (0, 0));
        }
        drop(ch);
        assert_eq!(
            gpu.pages.lock().unwrap().free_pages(),
            2 * 16 * (p2p / 4096)
        );
        assert!(
            gpu.read(rbuf, nch * SHARED * p2p)
                .iter()
                .all(|b| *b == 0x5a),
            "the irecv buffer was written"
        );
    }

    fn host_pair(nsocks: usize, nthreads: usize) -> (SendComm, RecvComm) {
        let (sl, rl) = links(nsocks, nthreads);
        let send = SendComm::new(sl, 4096, None).unwrap();
        let q = HostMemory
            .new_unpack_queue(&crate::log::Logger::Sink(sink))
            .unwrap();
        (send, RecvComm::new(rl, Some(q)).unwrap())
    }

    #[test]
    fn the_stall_watch_reads_the_clock_every_64th_sighting_and_warns_once() {
        let mut w = StallWatch::new();
        w.set_after(Duration::from_secs(3600));
        assert_eq!(w.pending(7), None, "first sighting, below the threshold");
        // A threshold changed behind the watch's back is seen only when it reads the clock
        // again: after 64 more sightings.
        w.after = Duration::ZERO;
        for i in 0..STALL_CLOCK_EVERY {
            assert_eq!(w.pending(7), None, "sighting {i}");
        }
        assert!(
            w.pending(7).is_some(),
            "the clock is read: past a zero threshold"
        );
        for _ in 0..3 * STALL_CLOCK_EVERY {
            assert_eq!(w.pending(7), None, "once per request");
        }
        // A new head is clocked at its first sighting; `set_after` applies at the next one.
        assert!(w.pending(8).is_some(), "a zero threshold warns at once");
        w.set_after(Duration::from_secs(3600));
        assert_eq!(w.pending(9), None);
        w.set_after(Duration::ZERO);
        assert!(w.pending(9).is_some());
    }

    #[test]
    fn a_receive_nobody_sends_gets_one_stall_warning() {
        let (_send, mut recv) = host_pair(2, 1);
        let mut dst = vec![0u8; 8192];
        let rmh = recv.register(Memory::Host(region_of(&mut dst)));
        let r = recv.irecv(dst.as_ptr() as usize, 8192, rmh).unwrap();
        let t0 = Instant::now();
        while recv.helpers.phase(0).map(|p| p.0) != Some(Phase::Idle) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the helper never started"
            );
            assert!(!recv.test(r).unwrap());
        }
        assert_eq!(recv.take_warning(), None, "not before the threshold");
        recv.set_stall_warn_after(Duration::ZERO);
        assert!(!recv.test(r).unwrap());
        let w = recv.take_warning().expect("a stall WARN");
        assert!(w.starts_with("receive 0 (slot 0) still pending"), "{w}");
        assert!(w.contains("up to 8192 B into host memory"), "{w}");
        assert!(
            w.contains("no control message for it has arrived yet"),
            "{w}"
        );
        assert!(w.contains("The sender has not isend-ed it"), "{w}");
        assert!(w.contains("tcpx-sim-rx0 idle"), "{w}");
        assert!(!recv.test(r).unwrap());
        assert_eq!(recv.take_warning(), None, "once per request");
        drop(recv);
        drop(dst);
    }

    #[test]
    fn a_send_nobody_receives_names_the_blocked_helper() {
        let (mut send, _recv) = host_pair(1, 1);
        // Far more than the socket buffers hold, and no irecv: the helper blocks in write.
        let mut src = vec![7u8; 64 << 20];
        let smh = send.register(Memory::Host(region_of(&mut src)));
        let s = send
            .isend(src.as_ptr() as usize, src.len() as i32, smh)
            .unwrap();
        let t0 = Instant::now();
        // Blocked for good once the socket buffers are full: in a write for 100 ms and more.
        while !matches!(send.helpers.phase(0), Some((Phase::SocketSend, d)) if d > Duration::from_millis(100))
        {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the helper never started"
            );
            assert!(!send.test(s).unwrap());
        }
        assert_eq!(send.take_warning(), None);
        send.set_stall_warn_after(Duration::ZERO);
        assert!(!send.test(s).unwrap());
        let w = send.take_warning().expect("a stall WARN");
        assert!(w.starts_with("send 0 (slot 0) still pending"), "{w}");
        assert!(w.contains("67108864 B from host memory"), "{w}");
        assert!(
            w.contains("tcpx-sim-tx0 writing a chunk to its socket"),
            "{w}"
        );
        assert!(!w.contains("CUDA"), "{w}");
        drop(send);
        drop(src);
    }

    #[test]
    fn a_receive_behind_a_gpu_that_does_not_run_the_scatter_says_so() {
        use fakedev::*;
        let gpu = FakeGpu::new(64);
        let (sl, rl) = links(1, 1);
        let mut send = SendComm::new(sl, 16384, Some(send_io(&gpu))).unwrap();
        let (stuck, release) = StuckIo::new();
        let mut q = FakeQueue::new(&gpu);
        q.io = Some(stuck);
        let mut recv = RecvComm::new(rl, Some(Box::new(q))).unwrap();
        // Declared after `recv`: a failing assertion drops it first, which unblocks the helper
        // that `recv`'s drop joins.
        let release = release;
        let src = gpu.alloc(pattern(1, 16384));
        let smh = send.register(cuda(src, 16384));
        let dst = gpu.alloc(vec![0; 16384]);
        let rmh = recv.register(cuda(dst, 16384));
        let r = recv.irecv(dst, 16384, rmh).unwrap();
        let s = send.isend(src, 16384, smh).unwrap();
        let t0 = Instant::now();
        let mut sent = false;
        while recv.helpers.phase(0).map(|p| p.0) != Some(Phase::CudaScatter) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the chunk never reached the helper"
            );
            sent = sent || send.test(s).unwrap();
            assert!(!recv.test(r).unwrap());
        }
        recv.set_stall_warn_after(Duration::ZERO);
        assert!(!recv.test(r).unwrap());
        let w = recv.take_warning().expect("a stall WARN");
        assert!(
            w.contains("the sender announced 16384 B; 16384 B handed to helpers, 0 B landed"),
            "{w}"
        );
        assert!(
            w.contains("waiting for the scatter kernel into the bounce pool"),
            "{w}"
        );
        assert!(
            w.contains("the GPU is not running work the sim queued"),
            "{w}"
        );
        assert!(w.contains("TCPX_SIM_BOUNCE_MEM=host"), "{w}");
        drop(release);
        // The released stager fails the helper: the comm reports it.
        let t0 = Instant::now();
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the failure never surfaced"
            );
            match recv.test(r) {
                Ok(false) => {}
                Ok(true) => panic!("completed without its bytes"),
                Err(e) => {
                    assert_eq!(
                        e,
                        SimError::Protocol {
                            why: "released stuck stager"
                        }
                    );
                    break;
                }
            }
        }
        drop(recv);
        drop(send);
        assert_eq!(gpu.pages.lock().unwrap().free_pages(), 64);
    }
}
