//! listen / connect / accept: TCPX's non-blocking, thread-based connection setup.
//!
//! * `listen` binds a data and a control listen socket (ephemeral ports) on the NIC's address
//!   (the control one on `NCCL_GPUDIRECTTCPX_CTRL_DEV` when set) and fills the handle
//!   ([`crate::wire`]). It does not block.
//! * `connect`: the first call with a handle buffer starts a background thread and returns
//!   success with no comm; it writes a key into the handle's `connect_args` (offset 80), where
//!   TCPX writes its thread-args pointer. Later calls with that buffer return no comm while the
//!   thread runs, then the connection, or the thread's error. A call after that is
//!   [`SimError::SecondConnect`] (TCPX: use after free). The key is looked up in a registry,
//!   never dereferenced, so a forged or stale handle is an error instead of a crash.
//! * `accept`: the same on the listen comm; a second accept after it produced a comm or an
//!   error is [`SimError::SecondAccept`].
//!
//! The threads follow TCPX's order: the connector opens the control socket first, then data
//! sockets `nsocks-1 … 0`, each bound to the local NIC address; `ECONNREFUSED` is retried for
//! 20 s in 1 ms steps, `ETIMEDOUT` 3 times. Each socket opens with a [`Hello`]; the acceptor
//! checks it (magic, version, the listener's nonce, one connection id, each index once) and
//! answers each one with a 4-byte `ConnectionState` on the control socket. So, like TCPX,
//! **`connect` completes only after the peer's `accept` thread runs**: drive both sides
//! concurrently. After the last socket the accept thread sleeps
//! `NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS` (sim default 0).
//!
//! Invariants: every wait of the two threads has a deadline (*sim*; TCPX waits forever), so each
//! thread ends and the next `connect` / `accept` reports its result:
//! * The **handshake timeout** (`TCPX_SIM_HANDSHAKE_TIMEOUT_MS`, default
//!   [`DEFAULT_HANDSHAKE_TIMEOUT`]) bounds each thread from its start (the first `connect` or
//!   `accept` call) to its last socket: every `connect()` (through `SO_SNDTIMEO`), every
//!   `ConnectionState` read of the connector, every wait of the acceptor for a connection or a
//!   hello. When it passes the thread ends with [`SimError::HandshakeTimeout`]. `ECONNREFUSED` is
//!   retried for 20 s or until this deadline, whichever comes first.
//! * The **hello timeout** (`TCPX_SIM_HELLO_TIMEOUT_MS`, default [`DEFAULT_HELLO_TIMEOUT`])
//!   bounds the acceptor's wait for the hello of one accepted connection. A connection that
//!   sends no hello in time is not a tcpx-sim connector (a port probe, a stuck process): it is
//!   closed and the acceptor accepts the next one, so one silent connector cannot keep the real
//!   one out. A connection that sends a wrong hello still fails the accept.
//! * `closeListen` (dropping the [`ListenComm`]) stops a running accept thread within
//!   [`HANDSHAKE_POLL`] (plus the flow-steering sleep's 10 ms step); nothing stops a connect
//!   thread early, its deadline ends it. A thread never dereferences caller memory.
//!
//! ```no_run
//! # use tcpx_sim::{config::Config, conn};
//! # fn demo(cfg: &Config) -> Result<(), tcpx_sim::error::SimError> {
//! let (mut listener, mut handle) = conn::ListenComm::new(cfg, 0)?;
//! let send = loop { if let Some(l) = conn::connect(cfg, 0, &mut handle)? { break l } };
//! let recv = loop { if let Some(l) = listener.accept()? { break l } };
//! # let _ = (send, recv); Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self as nsock, AddressFamily, SockFlag, SockType, SockaddrStorage};
use tcpx::net::abi::NetHandle;

use crate::comm::Link;
use crate::config::Config;
use crate::error::SimError;
use crate::wire::{self, ConnState, Hello, ListenHandle, Role, HELLO_LEN};

/// How long `ECONNREFUSED` is retried (TCPX: 20 s).
pub const CONNECT_REFUSED_RETRY: Duration = Duration::from_secs(20);
/// How often `ETIMEDOUT` is retried (TCPX: 3).
pub const CONNECT_TIMEOUT_RETRIES: u32 = 3;
/// Default handshake timeout of a connect or accept thread (`TCPX_SIM_HANDSHAKE_TIMEOUT_MS`;
/// TCPX has none). Generous: three times TCPX's 20 s `ECONNREFUSED` retry.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default wait of the acceptor for the hello of one accepted connection
/// (`TCPX_SIM_HELLO_TIMEOUT_MS`); a connector writes its hello right after `connect()`.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest handshake or hello timeout (one day), so that every deadline is a valid [`Instant`].
pub const MAX_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest single blocking read of a handshake socket, so `closeListen` can stop the acceptor.
pub const HANDSHAKE_POLL: Duration = Duration::from_millis(100);
/// Polling step of the accept thread while no connection is pending.
const ACCEPT_POLL: Duration = Duration::from_millis(1);

/// A random u64 (nonces, connection ids).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> SimError {
    move |e| SimError::from_io(op, None, &e)
}

fn handshake(why: impl Into<String>) -> SimError {
    SimError::Handshake { why: why.into() }
}

/// A point in time a handshake wait must not pass, and the timeout it came from (for the error).
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    /// `timeout` (capped at [`MAX_HANDSHAKE_TIMEOUT`]) from now.
    fn after(timeout: Duration) -> Deadline {
        let timeout = timeout.min(MAX_HANDSHAKE_TIMEOUT);
        Deadline {
            at: Instant::now() + timeout,
            timeout,
        }
    }

    /// The earlier of the two.
    fn min(self, other: Deadline) -> Deadline {
        if other.at < self.at {
            other
        } else {
            self
        }
    }

    /// Time left, or the timeout error when none is.
    fn remaining(&self, waiting_for: &'static str) -> Result<Duration, SimError> {
        match self.at.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(d),
            _ => Err(SimError::HandshakeTimeout {
                waiting_for,
                after: self.timeout,
            }),
        }
    }
}

/// Reads exactly `buf.len()` bytes before `deadline`, in reads of at most [`HANDSHAKE_POLL`],
/// stopping early when `stop` is set. Leaves a read timeout on `s`: reset it before handing the
/// socket on.
fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    stop: Option<&AtomicBool>,
    deadline: Deadline,
    waiting_for: &'static str,
) -> Result<(), SimError> {
    let mut got = 0;
    while got < buf.len() {
        if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
            return Err(handshake("listen comm closed during accept"));
        }
        let left = deadline.remaining(waiting_for)?;
        s.set_read_timeout(Some(left.min(HANDSHAKE_POLL)))
            .map_err(io("setsockopt"))?;
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(SimError::PeerClosed { socket: None }),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(SimError::from_io("recv", None, &e)),
        }
    }
    Ok(())
}

/// A listen comm: the two listen sockets and the state of its one accept.
#[derive(Debug)]
pub struct ListenComm {
    data: TcpListener,
    ctrl: TcpListener,
    handle: ListenHandle,
    nthreads: usize,
    wait: Duration,
    handshake_timeout: Duration,
    hello_timeout: Duration,
    state: AcceptState,
}

#[derive(Debug)]
enum AcceptState {
    Idle,
    Running {
        thread: JoinHandle<Result<Link, SimError>>,
        stop: Arc<AtomicBool>,
    },
    Finished,
}

/// What the accept thread needs besides its sockets.
#[derive(Clone, Copy, Debug)]
struct AcceptParams {
    handle: ListenHandle,
    nthreads: usize,
    wait: Duration,
    deadline: Deadline,
    hello_timeout: Duration,
}

impl ListenComm {
    /// `listen(dev)`: binds the listen sockets; returns the comm and the 128-byte handle.
    pub fn new(cfg: &Config, dev: usize) -> Result<(ListenComm, NetHandle), SimError> {
        let nic = cfg.nics.get(dev).ok_or(SimError::BadDevice {
            dev: i32::try_from(dev).unwrap_or(i32::MAX),
            ndev: cfg.nics.len(),
        })?;
        let data = TcpListener::bind(SocketAddr::new(nic.addr, 0)).map_err(io("bind"))?;
        let ctrl_ip = cfg.ctrl_addr.unwrap_or(nic.addr);
        let ctrl = TcpListener::bind(SocketAddr::new(ctrl_ip, 0)).map_err(io("bind"))?;
        let handle = ListenHandle {
            data_addr: data.local_addr().map_err(io("getsockname"))?,
            ctrl_addr: ctrl.local_addr().map_err(io("getsockname"))?,
            nsocks: cfg.nsocks as u32,
            nthreads: cfg.nthreads as u32,
            redirect_ctrl: cfg.ctrl_addr.is_some(),
            nonce: random_u64(),
        };
        let mut bytes = [0u8; 128];
        handle.encode(&mut bytes);
        Ok((
            ListenComm {
                data,
                ctrl,
                handle,
                nthreads: cfg.nthreads,
                wait: cfg.flow_steering_wait,
                handshake_timeout: cfg.handshake_timeout,
                hello_timeout: cfg.hello_timeout,
                state: AcceptState::Idle,
            },
            bytes,
        ))
    }

    /// The handle this listener wrote.
    pub fn handle(&self) -> &ListenHandle {
        &self.handle
    }

    /// `accept`: Ok(None) while the accept thread runs, then the connection (or the thread's
    /// error, [`SimError::HandshakeTimeout`] included) once.
    pub fn accept(&mut self) -> Result<Option<Link>, SimError> {
        match &self.state {
            AcceptState::Idle => {
                let data = self.data.try_clone().map_err(io("dup"))?;
                let ctrl = self.ctrl.try_clone().map_err(io("dup"))?;
                let stop = Arc::new(AtomicBool::new(false));
                let params = AcceptParams {
                    handle: self.handle,
                    nthreads: self.nthreads,
                    wait: self.wait,
                    deadline: Deadline::after(self.handshake_timeout),
                    hello_timeout: self.hello_timeout,
                };
                let st = Arc::clone(&stop);
                let thread = std::thread::Builder::new()
                    .name("tcpx-sim-accept".into())
                    .spawn(move || accept_thread(data, ctrl, params, &st))
                    .map_err(io("spawn accept thread"))?;
                self.state = AcceptState::Running { thread, stop };
                Ok(None)
            }
            AcceptState::Running { thread, .. } => {
                if !thread.is_finished() {
                    return Ok(None);
                }
                let AcceptState::Running { thread, .. } =
                    std::mem::replace(&mut self.state, AcceptState::Finished)
                else {
                    return Err(SimError::SecondAccept);
                };
                match thread.join() {
                    Ok(r) => r.map(Some),
                    Err(_) => Err(SimError::Panic),
                }
            }
            AcceptState::Finished => Err(SimError::SecondAccept),
        }
    }
}

impl Drop for ListenComm {
    fn drop(&mut self) {
        if let AcceptState::Running { thread, stop } =
            std::mem::replace(&mut self.state, AcceptState::Finished)
        {
            stop.store(true, Ordering::Release);
            // The thread checks `stop` at least every HANDSHAKE_POLL; a finished connection is
            // dropped.
            let _ = thread.join();
        }
    }
}

/// Accepts the next connection on `l` before `deadline`.
fn accept_one(
    l: &TcpListener,
    stop: &AtomicBool,
    deadline: Deadline,
    waiting_for: &'static str,
) -> Result<TcpStream, SimError> {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("fcntl"))?;
                s.set_nodelay(true).map_err(io("setsockopt"))?;
                return Ok(s);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                if stop.load(Ordering::Acquire) {
                    return Err(handshake("listen comm closed during accept"));
                }
                let left = deadline.remaining(waiting_for)?;
                std::thread::sleep(left.min(ACCEPT_POLL));
            }
            Err(e) => return Err(SimError::from_io("accept", None, &e)),
        }
    }
}

/// Accepts connections on `l` until one sends its hello within `hello_timeout`; one that stays
/// silent that long is closed and skipped. Everything ends at `deadline`.
fn accept_hello(
    l: &TcpListener,
    stop: &AtomicBool,
    deadline: Deadline,
    hello_timeout: Duration,
    waiting_for: &'static str,
) -> Result<(TcpStream, Hello), SimError> {
    loop {
        let mut s = accept_one(l, stop, deadline, waiting_for)?;
        let mut b = [0u8; HELLO_LEN];
        let hello_deadline = Deadline::after(hello_timeout).min(deadline);
        match read_full(&mut s, &mut b, Some(stop), hello_deadline, waiting_for) {
            Ok(()) => return Ok((s, Hello::decode(&b)?)),
            // A silent connection: drop it and accept the next one while time is left.
            Err(SimError::HandshakeTimeout { .. }) => {
                deadline.remaining(waiting_for)?;
            }
            Err(e) => return Err(e),
        }
    }
}

fn send_state(ctrl: &mut TcpStream, st: ConnState) -> Result<(), SimError> {
    ctrl.write_all(&st.encode()).map_err(io("send"))
}

fn accept_thread(
    data: TcpListener,
    ctrl: TcpListener,
    p: AcceptParams,
    stop: &AtomicBool,
) -> Result<Link, SimError> {
    data.set_nonblocking(true).map_err(io("fcntl"))?;
    ctrl.set_nonblocking(true).map_err(io("fcntl"))?;
    let h = p.handle;
    let nsocks = h.nsocks as usize;

    let (mut c, hello) = accept_hello(
        &ctrl,
        stop,
        p.deadline,
        p.hello_timeout,
        "the connector's control socket and its hello",
    )?;
    let why = if hello.role != Role::Ctrl {
        Some("first connection is not a control socket")
    } else if hello.nonce != h.nonce {
        Some("the connector's handle is not this listener's (nonce mismatch)")
    } else if hello.nsocks != h.nsocks || hello.index != h.nsocks {
        Some("the connector uses another socket count")
    } else {
        None
    };
    if let Some(why) = why {
        let _ = send_state(&mut c, ConnState::Failed);
        return Err(handshake(why));
    }
    send_state(&mut c, ConnState::Ok)?;

    let mut socks: Vec<Option<TcpStream>> = (0..nsocks).map(|_| None).collect();
    for _ in 0..nsocks {
        let (d, dh) = accept_hello(
            &data,
            stop,
            p.deadline,
            p.hello_timeout,
            "the connector's data sockets and their hellos",
        )?;
        let idx = dh.index as usize;
        let why = if dh.role != Role::Data {
            Some("a control socket arrived on the data listener")
        } else if dh.nonce != h.nonce || dh.conn_id != hello.conn_id {
            Some("a data socket of another connection arrived (one connect per listen comm)")
        } else if idx >= nsocks || socks[idx].is_some() {
            Some("bad or repeated data socket index")
        } else {
            None
        };
        if let Some(why) = why {
            let _ = send_state(&mut c, ConnState::Failed);
            return Err(handshake(why));
        }
        d.set_read_timeout(None).map_err(io("setsockopt"))?;
        socks[idx] = Some(d);
        send_state(&mut c, ConnState::Ok)?;
    }

    let t0 = Instant::now();
    while t0.elapsed() < p.wait {
        if stop.load(Ordering::Acquire) {
            return Err(handshake("listen comm closed during accept"));
        }
        std::thread::sleep(
            p.wait
                .saturating_sub(t0.elapsed())
                .min(Duration::from_millis(10)),
        );
    }
    c.set_read_timeout(None).map_err(io("setsockopt"))?;
    Ok(Link {
        ctrl: c,
        data: socks.into_iter().flatten().collect(),
        nthreads: p.nthreads,
    })
}

/// Opens a TCP connection from `local` (port 0) to `remote`, retrying like TCPX: `ECONNREFUSED`
/// for [`CONNECT_REFUSED_RETRY`], `ETIMEDOUT` [`CONNECT_TIMEOUT_RETRIES`] times. Nothing waits
/// past `timeout` from now: each `connect()` blocks at most until then (`SO_SNDTIMEO`), the
/// retries stop there, and a `connect()` still pending then is
/// [`SimError::HandshakeTimeout`].
pub fn connect_from(
    local: IpAddr,
    remote: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, SimError> {
    connect_before(local, remote, Deadline::after(timeout))
}

fn connect_before(
    local: IpAddr,
    remote: SocketAddr,
    deadline: Deadline,
) -> Result<TcpStream, SimError> {
    connect_observed(local, remote, deadline, || {})
}

/// [`connect_before`], calling `on_refused` after every `ECONNREFUSED` it retries (tests use it
/// to open the listener only once a refusal has happened).
fn connect_observed(
    local: IpAddr,
    remote: SocketAddr,
    deadline: Deadline,
    mut on_refused: impl FnMut(),
) -> Result<TcpStream, SimError> {
    let family = match remote {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(handshake(format!(
            "local NIC address {local} and listener {remote} are of different families"
        )));
    }
    const WAITING_FOR: &str = "connect() to the listener";
    let refused_until = Instant::now() + CONNECT_REFUSED_RETRY;
    let mut timeouts = 0;
    loop {
        let left = deadline.remaining(WAITING_FOR)?;
        let fd =
            nsock::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(|e| {
                SimError::Io {
                    op: "socket",
                    errno: Some(e as i32),
                    kind: std::io::Error::from(e).kind(),
                }
            })?;
        let nix_err = |op: &'static str, e: Errno| SimError::Io {
            op,
            errno: Some(e as i32),
            kind: std::io::Error::from(e).kind(),
        };
        nsock::bind(
            fd.as_raw_fd(),
            &SockaddrStorage::from(SocketAddr::new(local, 0)),
        )
        .map_err(|e| nix_err("bind", e))?;
        // Not connected yet, but a TcpStream sets socket options on any TCP socket. On Linux a
        // blocking connect() gives up with EINPROGRESS once SO_SNDTIMEO passes.
        let s = TcpStream::from(fd);
        s.set_write_timeout(Some(left)).map_err(io("setsockopt"))?;
        match nsock::connect(s.as_raw_fd(), &SockaddrStorage::from(remote)) {
            Ok(()) => {
                s.set_write_timeout(None).map_err(io("setsockopt"))?;
                s.set_nodelay(true).map_err(io("setsockopt"))?;
                return Ok(s);
            }
            Err(Errno::EINPROGRESS | Errno::EAGAIN) => {
                // SO_SNDTIMEO passed: the deadline has (or, by clock granularity, almost has).
                deadline.remaining(WAITING_FOR)?;
            }
            Err(Errno::ECONNREFUSED) if Instant::now() < refused_until => {
                on_refused();
                std::thread::sleep(Duration::from_millis(1).min(left));
            }
            Err(Errno::ETIMEDOUT) if timeouts < CONNECT_TIMEOUT_RETRIES => timeouts += 1,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(nix_err("connect", e)),
        }
    }
}

fn expect_ok(ctrl: &mut TcpStream, deadline: Deadline) -> Result<(), SimError> {
    let mut b = [0u8; 4];
    read_full(
        ctrl,
        &mut b,
        None,
        deadline,
        "the acceptor's ConnectionState (is the peer's accept running?)",
    )?;
    match ConnState::decode(b) {
        ConnState::Ok => Ok(()),
        _ => Err(handshake(
            "the acceptor refused the connection (wrong listener, or a second connect to it)",
        )),
    }
}

fn connect_thread(
    local: IpAddr,
    ctrl_local: IpAddr,
    h: ListenHandle,
    deadline: Deadline,
) -> Result<Link, SimError> {
    let conn_id = random_u64();
    let nsocks = h.nsocks as usize;
    let mut c = connect_before(ctrl_local, h.ctrl_addr, deadline)?;
    let hello = Hello {
        role: Role::Ctrl,
        nonce: h.nonce,
        conn_id,
        index: h.nsocks,
        nsocks: h.nsocks,
    };
    c.write_all(&hello.encode()).map_err(io("send"))?;
    expect_ok(&mut c, deadline)?;
    let mut socks: Vec<Option<TcpStream>> = (0..nsocks).map(|_| None).collect();
    for i in (0..nsocks).rev() {
        let mut d = connect_before(local, h.data_addr, deadline)?;
        let dh = Hello {
            role: Role::Data,
            index: i as u32,
            ..hello
        };
        d.write_all(&dh.encode()).map_err(io("send"))?;
        expect_ok(&mut c, deadline)?;
        socks[i] = Some(d);
    }
    c.set_read_timeout(None).map_err(io("setsockopt"))?;
    Ok(Link {
        ctrl: c,
        data: socks.into_iter().flatten().collect(),
        nthreads: h.nthreads as usize,
    })
}

enum ConnectSlot {
    Running(JoinHandle<Result<Link, SimError>>),
    Consumed,
}

static CONNECTS: Mutex<BTreeMap<u64, ConnectSlot>> = Mutex::new(BTreeMap::new());
static NEXT_KEY: AtomicU64 = AtomicU64::new(0x5349_4d00_0000_0001);

/// `connect(dev, handle)`: Ok(None) while the connect thread runs, then the connection (or the
/// thread's error, [`SimError::HandshakeTimeout`] included) once. `handle` is the caller's
/// 128-byte buffer; the first call writes `connect_args` into it.
pub fn connect(cfg: &Config, dev: usize, handle: &mut NetHandle) -> Result<Option<Link>, SimError> {
    let lh = ListenHandle::decode(handle)?;
    let key = wire::connect_args(handle);
    let mut map = CONNECTS.lock().map_err(|_| SimError::Poisoned)?;
    if key == 0 {
        let nic = cfg.nics.get(dev).ok_or(SimError::BadDevice {
            dev: i32::try_from(dev).unwrap_or(i32::MAX),
            ndev: cfg.nics.len(),
        })?;
        let local = nic.addr;
        let ctrl_local = if lh.redirect_ctrl {
            cfg.ctrl_addr.unwrap_or(local)
        } else {
            local
        };
        let deadline = Deadline::after(cfg.handshake_timeout);
        let thread = std::thread::Builder::new()
            .name("tcpx-sim-connect".into())
            .spawn(move || connect_thread(local, ctrl_local, lh, deadline))
            .map_err(io("spawn connect thread"))?;
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        map.insert(key, ConnectSlot::Running(thread));
        wire::set_connect_args(handle, key);
        return Ok(None);
    }
    match map.get(&key) {
        None => Err(SimError::UnknownConnectArgs),
        Some(ConnectSlot::Consumed) => Err(SimError::SecondConnect),
        Some(ConnectSlot::Running(t)) if !t.is_finished() => Ok(None),
        Some(ConnectSlot::Running(_)) => {
            let Some(ConnectSlot::Running(t)) = map.insert(key, ConnectSlot::Consumed) else {
                return Err(SimError::SecondConnect);
            };
            drop(map);
            match t.join() {
                Ok(r) => r.map(Some),
                Err(_) => Err(SimError::Panic),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nsocks: usize, nthreads: usize) -> Config {
        Config::loopback_for_tests(nsocks, nthreads)
    }

    fn establish(cfg: &Config) -> (Link, Link, NetHandle) {
        let (mut l, mut h) = ListenComm::new(cfg, 0).unwrap();
        assert!(connect(cfg, 0, &mut h).unwrap().is_none());
        assert_ne!(wire::connect_args(&h), 0);
        let t0 = Instant::now();
        let (mut s, mut r) = (None, None);
        while s.is_none() || r.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20));
            if r.is_none() {
                r = l.accept().unwrap();
            }
            if s.is_none() {
                s = connect(cfg, 0, &mut h).unwrap();
            }
        }
        (s.unwrap(), r.unwrap(), h)
    }

    #[test]
    fn connect_and_accept_pair_every_socket_by_index() {
        let cfg = cfg(4, 2);
        let (mut s, mut r, mut h) = establish(&cfg);
        assert_eq!((s.data.len(), r.data.len()), (4, 4));
        assert_eq!((s.nthreads, r.nthreads), (2, 2));
        for i in 0..4 {
            s.data[i].write_all(&[i as u8]).unwrap();
            let mut b = [9u8];
            r.data[i].read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
        s.ctrl.write_all(b"x").unwrap();
        let mut b = [0u8];
        r.ctrl.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        // One connect per handle buffer.
        assert_eq!(
            connect(&cfg, 0, &mut h).err(),
            Some(SimError::SecondConnect)
        );
    }

    #[test]
    fn second_accept_and_forged_connect_args_are_errors() {
        let cfg = cfg(1, 1);
        let (mut l, mut h) = ListenComm::new(&cfg, 0).unwrap();
        let mut forged = h;
        wire::set_connect_args(&mut forged, 12345);
        assert_eq!(
            connect(&cfg, 0, &mut forged).err(),
            Some(SimError::UnknownConnectArgs)
        );
        assert!(connect(&cfg, 0, &mut h).unwrap().is_none());
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(20));
            if l.accept().unwrap().is_some() {
                break;
            }
        }
        assert_eq!(l.accept().err(), Some(SimError::SecondAccept));
    }

    #[test]
    fn a_handle_of_another_listener_is_refused() {
        let cfg = cfg(1, 1);
        let (mut l, h) = ListenComm::new(&cfg, 0).unwrap();
        let mut wrong = h;
        // Same addresses, different nonce: the acceptor must refuse it.
        wrong[96] ^= 0xFF;
        assert!(connect(&cfg, 0, &mut wrong).unwrap().is_none());
        let t0 = Instant::now();
        let (mut a, mut c) = (None, None);
        while a.is_none() || c.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20));
            if a.is_none() {
                match l.accept() {
                    Ok(None) => {}
                    other => a = Some(other.map(|_| ())),
                }
            }
            if c.is_none() {
                match connect(&cfg, 0, &mut wrong) {
                    Ok(None) => {}
                    other => c = Some(other.map(|_| ())),
                }
            }
        }
        assert!(matches!(a, Some(Err(SimError::Handshake { .. }))), "{a:?}");
        assert!(c.is_some_and(|c| c.is_err()));
    }

    #[test]
    fn closing_a_listener_stops_its_accept_thread() {
        let cfg = cfg(1, 1);
        let (mut l, _h) = ListenComm::new(&cfg, 0).unwrap();
        assert!(l.accept().unwrap().is_none());
        // Its handshake deadline is 60 s away: only `stop` can end the thread this soon.
        assert!(
            crate::testing::dropped_within(l, Duration::from_secs(20)),
            "closing the listener did not stop its accept thread"
        );
    }

    #[test]
    fn refused_connections_are_retried_until_a_listener_appears() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let (refused_tx, refused) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            connect_observed(
                "127.0.0.1".parse().unwrap(),
                addr,
                Deadline::after(DEFAULT_HANDSHAKE_TIMEOUT),
                || {
                    // The receiver is gone only if the test already failed.
                    let _ = refused_tx.send(());
                },
            )
        });
        // The listener appears only after a connect() was refused: without the retry the
        // thread would return that refusal, and without a refusal this wait fails.
        refused
            .recv_timeout(Duration::from_secs(20))
            .expect("no connect() was refused before the listener existed");
        let l = TcpListener::bind(addr).unwrap();
        let s = t.join().unwrap().unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(peer.peer_addr().unwrap(), s.local_addr().unwrap());
    }

    /// Polls `f` (a `connect` or `accept`) until it returns a comm or an error; the 20 s guard
    /// only catches a hang, it is not what the tests assert.
    fn drive<T>(mut f: impl FnMut() -> Result<Option<T>, SimError>) -> Result<T, SimError> {
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < Duration::from_secs(20), "still running");
            if let Some(v) = f()? {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn with_timeouts(handshake: u64, hello: u64) -> Config {
        let mut c = cfg(2, 1);
        c.handshake_timeout = Duration::from_millis(handshake);
        c.hello_timeout = Duration::from_millis(hello);
        c
    }

    #[test]
    fn a_connect_whose_peer_never_accepts_fails_with_a_handshake_timeout() {
        let cfg = with_timeouts(200, 200);
        // The listen sockets are open (the kernel completes connect()), but accept never runs,
        // so no ConnectionState ever comes back.
        let (_l, mut h) = ListenComm::new(&cfg, 0).unwrap();
        let r = drive(|| connect(&cfg, 0, &mut h));
        assert!(
            matches!(
                r,
                Err(SimError::HandshakeTimeout { after, .. }) if after == cfg.handshake_timeout
            ),
            "{r:?}"
        );
        // The thread's slot was consumed with its error.
        assert_eq!(
            connect(&cfg, 0, &mut h).err(),
            Some(SimError::SecondConnect)
        );
    }

    #[test]
    fn an_accept_whose_connector_never_comes_fails_with_a_handshake_timeout() {
        let cfg = with_timeouts(200, 200);
        let (mut l, _h) = ListenComm::new(&cfg, 0).unwrap();
        let r = drive(|| l.accept());
        assert!(matches!(r, Err(SimError::HandshakeTimeout { .. })), "{r:?}");
        assert_eq!(l.accept().err(), Some(SimError::SecondAccept));
    }

    #[test]
    fn an_accept_whose_only_connector_stays_silent_fails_with_a_handshake_timeout() {
        let cfg = with_timeouts(300, 100);
        let (mut l, _h) = ListenComm::new(&cfg, 0).unwrap();
        let _silent = TcpStream::connect(l.handle().ctrl_addr).unwrap();
        let r = drive(|| l.accept());
        assert!(
            matches!(r, Err(SimError::HandshakeTimeout { waiting_for, .. })
                if waiting_for.contains("control socket")),
            "{r:?}"
        );
    }

    #[test]
    fn a_silent_connector_is_closed_and_the_real_one_accepted() {
        // Handshake timeout: the default (60 s); hello timeout: 3 s, long enough for the real
        // connector's hello to follow its connect() on a loaded machine.
        let mut cfg = cfg(2, 1);
        cfg.hello_timeout = Duration::from_secs(3);
        let (mut l, mut h) = ListenComm::new(&cfg, 0).unwrap();
        // Both connect (so they queue ahead of the real connector) and never send a hello.
        let mut silent = [
            TcpStream::connect(l.handle().ctrl_addr).unwrap(),
            TcpStream::connect(l.handle().data_addr).unwrap(),
        ];
        let (mut s, mut r) = (None, None);
        let t0 = Instant::now();
        while s.is_none() || r.is_none() {
            assert!(t0.elapsed() < Duration::from_secs(20), "still running");
            if r.is_none() {
                r = l.accept().unwrap();
            }
            if s.is_none() {
                s = connect(&cfg, 0, &mut h).unwrap();
            }
        }
        let (mut s, mut r) = (s.unwrap(), r.unwrap());
        assert_eq!((s.data.len(), r.data.len()), (2, 2));
        for i in 0..2 {
            s.data[i].write_all(&[i as u8 + 1]).unwrap();
            let mut b = [0u8];
            r.data[i].read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8 + 1);
        }
        // The acceptor closed the silent connections (EOF, no bytes).
        for q in &mut silent {
            q.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut b = [0u8; 4];
            assert_eq!(q.read(&mut b).unwrap(), 0);
        }
    }

    #[test]
    fn a_connect_the_listener_never_answers_is_bounded() {
        // A listener whose accept queue is full drops SYNs, so connect() stays pending.
        let fd = nsock::socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        nsock::bind(fd.as_raw_fd(), &SockaddrStorage::from(any)).unwrap();
        nsock::listen(&fd, nsock::Backlog::new(0).unwrap()).unwrap();
        let l = TcpListener::from(fd);
        let addr = l.local_addr().unwrap();
        // Fill the queue (backlog 0 holds one connection).
        let mut fill = Vec::new();
        let r = loop {
            let r = connect_from(
                "127.0.0.1".parse().unwrap(),
                addr,
                Duration::from_millis(300),
            );
            match r {
                Ok(s) if fill.len() < 4 => fill.push(s),
                other => break other,
            }
        };
        assert!(
            matches!(r, Err(SimError::HandshakeTimeout { waiting_for, .. })
                if waiting_for.starts_with("connect()")),
            "{r:?}"
        );
    }
}
