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
/// Polling step of the accept thread (so `closeListen` can stop it).
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

/// Reads exactly `buf.len()` bytes, retrying read timeouts until `stop` is set.
fn read_full(s: &mut TcpStream, buf: &mut [u8], stop: Option<&AtomicBool>) -> Result<(), SimError> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(SimError::PeerClosed { socket: None }),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if stop.is_some_and(|s| s.load(Ordering::Acquire)) {
                    return Err(handshake("listen comm closed during accept"));
                }
            }
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
                state: AcceptState::Idle,
            },
            bytes,
        ))
    }

    /// The handle this listener wrote.
    pub fn handle(&self) -> &ListenHandle {
        &self.handle
    }

    /// `accept`: Ok(None) while the accept thread runs, then the connection once.
    pub fn accept(&mut self) -> Result<Option<Link>, SimError> {
        match &self.state {
            AcceptState::Idle => {
                let data = self.data.try_clone().map_err(io("dup"))?;
                let ctrl = self.ctrl.try_clone().map_err(io("dup"))?;
                let stop = Arc::new(AtomicBool::new(false));
                let (h, nthreads, wait, st) =
                    (self.handle, self.nthreads, self.wait, Arc::clone(&stop));
                let thread = std::thread::Builder::new()
                    .name("tcpx-sim-accept".into())
                    .spawn(move || accept_thread(data, ctrl, h, nthreads, wait, &st))
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
            // The thread polls `stop` at least every 100 ms; a finished connection is dropped.
            let _ = thread.join();
        }
    }
}

fn accept_one(l: &TcpListener, stop: &AtomicBool) -> Result<TcpStream, SimError> {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(io("fcntl"))?;
                s.set_nodelay(true).map_err(io("setsockopt"))?;
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .map_err(io("setsockopt"))?;
                return Ok(s);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                if stop.load(Ordering::Acquire) {
                    return Err(handshake("listen comm closed during accept"));
                }
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(e) => return Err(SimError::from_io("accept", None, &e)),
        }
    }
}

fn read_hello(s: &mut TcpStream, stop: &AtomicBool) -> Result<Hello, SimError> {
    let mut b = [0u8; HELLO_LEN];
    read_full(s, &mut b, Some(stop))?;
    Hello::decode(&b)
}

fn send_state(ctrl: &mut TcpStream, st: ConnState) -> Result<(), SimError> {
    ctrl.write_all(&st.encode()).map_err(io("send"))
}

fn accept_thread(
    data: TcpListener,
    ctrl: TcpListener,
    h: ListenHandle,
    nthreads: usize,
    wait: Duration,
    stop: &AtomicBool,
) -> Result<Link, SimError> {
    data.set_nonblocking(true).map_err(io("fcntl"))?;
    ctrl.set_nonblocking(true).map_err(io("fcntl"))?;
    let nsocks = h.nsocks as usize;

    let mut c = accept_one(&ctrl, stop)?;
    let hello = read_hello(&mut c, stop)?;
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
        let mut d = accept_one(&data, stop)?;
        let dh = read_hello(&mut d, stop)?;
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
    while t0.elapsed() < wait {
        if stop.load(Ordering::Acquire) {
            return Err(handshake("listen comm closed during accept"));
        }
        std::thread::sleep((wait - t0.elapsed()).min(Duration::from_millis(10)));
    }
    c.set_read_timeout(None).map_err(io("setsockopt"))?;
    Ok(Link {
        ctrl: c,
        data: socks.into_iter().flatten().collect(),
        nthreads,
    })
}

/// Opens a TCP connection from `local` (port 0) to `remote`, retrying like TCPX.
pub fn connect_from(local: IpAddr, remote: SocketAddr) -> Result<TcpStream, SimError> {
    let family = match remote {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(handshake(format!(
            "local NIC address {local} and listener {remote} are of different families"
        )));
    }
    let deadline = Instant::now() + CONNECT_REFUSED_RETRY;
    let mut timeouts = 0;
    loop {
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
        match nsock::connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)) {
            Ok(()) => {
                let s = TcpStream::from(fd);
                s.set_nodelay(true).map_err(io("setsockopt"))?;
                return Ok(s);
            }
            Err(Errno::ECONNREFUSED) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::ETIMEDOUT) if timeouts < CONNECT_TIMEOUT_RETRIES => timeouts += 1,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(nix_err("connect", e)),
        }
    }
}

fn expect_ok(ctrl: &mut TcpStream) -> Result<(), SimError> {
    let mut b = [0u8; 4];
    read_full(ctrl, &mut b, None)?;
    match ConnState::decode(b) {
        ConnState::Ok => Ok(()),
        _ => Err(handshake(
            "the acceptor refused the connection (wrong listener, or a second connect to it)",
        )),
    }
}

fn connect_thread(local: IpAddr, ctrl_local: IpAddr, h: ListenHandle) -> Result<Link, SimError> {
    let conn_id = random_u64();
    let nsocks = h.nsocks as usize;
    let mut c = connect_from(ctrl_local, h.ctrl_addr)?;
    let hello = Hello {
        role: Role::Ctrl,
        nonce: h.nonce,
        conn_id,
        index: h.nsocks,
        nsocks: h.nsocks,
    };
    c.write_all(&hello.encode()).map_err(io("send"))?;
    expect_ok(&mut c)?;
    let mut socks: Vec<Option<TcpStream>> = (0..nsocks).map(|_| None).collect();
    for i in (0..nsocks).rev() {
        let mut d = connect_from(local, h.data_addr)?;
        let dh = Hello {
            role: Role::Data,
            index: i as u32,
            ..hello
        };
        d.write_all(&dh.encode()).map_err(io("send"))?;
        expect_ok(&mut c)?;
        socks[i] = Some(d);
    }
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

/// `connect(dev, handle)`: Ok(None) while the connect thread runs, then the connection once.
/// `handle` is the caller's 128-byte buffer; the first call writes `connect_args` into it.
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
        let thread = std::thread::Builder::new()
            .name("tcpx-sim-connect".into())
            .spawn(move || connect_thread(local, ctrl_local, lh))
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
        drop(l);
    }

    #[test]
    fn refused_connections_are_retried_until_a_listener_appears() {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let t = std::thread::spawn(move || connect_from("127.0.0.1".parse().unwrap(), addr));
        std::thread::sleep(Duration::from_millis(30));
        let l = TcpListener::bind(addr).unwrap();
        let s = t.join().unwrap().unwrap();
        let (peer, _) = l.accept().unwrap();
        assert_eq!(peer.peer_addr().unwrap(), s.local_addr().unwrap());
    }
}
