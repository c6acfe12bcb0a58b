//! The bootstrap control plane: plain TCP between the two sides of a connection, carrying the
//! messages of [`tcpx_core::codec`] — the hello, the server's TCPX listen handles, barriers, the
//! end-of-run summary.
//!
//! Ports: in multi-process mode GPU `g`'s server listens on `base + g`
//! (`UCCL_TCPX_BOOTSTRAP_PORT_BASE`, default [`DEFAULT_PORT_BASE`]); in single-process mode one
//! process binds every GPU's port before it accepts any, and clients connect GPU by GPU in
//! ascending order.
//!
//! Invariants:
//! * Every step has a deadline: connect (retried with backoff while the server is not up yet),
//!   accept, every read and every write. Nothing here blocks past the deadline it was given.
//! * Every byte read is checked by the codec before it is trusted: a peer speaking another
//!   protocol, another version, garbage or a truncated message gets a [`BootstrapError`] naming
//!   the peer and the step, never a panic or a hang. The payload length is bounded before any
//!   payload byte is awaited.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use tcpx::bootstrap::{BootstrapListener, Control};
//! use tcpx::core::codec::{Hello, Message};
//! let deadline = Instant::now() + Duration::from_secs(10);
//! let listener = BootstrapListener::bind("127.0.0.1:20000".parse().unwrap())?;
//! // … in the client: Control::connect("127.0.0.1:20000".parse().unwrap(), deadline)?
//! let mut server = listener.accept(deadline)?;
//! let hello = server.recv(deadline)?;
//! # Ok::<(), tcpx::bootstrap::BootstrapError>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use tcpx_core::codec::{self, DecodeError, Message, MessageKind, HEADER_LEN, MAX_MESSAGE_LEN};

/// Default bootstrap port base (the C++ tree's scripts use 20000).
pub const DEFAULT_PORT_BASE: u16 = 20000;
/// The variable the C++ tree reads for the port base.
pub const PORT_BASE_ENV: &str = "UCCL_TCPX_BOOTSTRAP_PORT_BASE";

/// The bootstrap port of GPU `gpu`: `base + gpu`, or `None` if it overflows.
pub fn port_for(base: u16, gpu: u32) -> Option<u16> {
    u16::try_from(u32::from(base).checked_add(gpu)?).ok()
}

/// What went wrong on the bootstrap connection.
#[derive(Debug)]
#[non_exhaustive]
pub enum BootstrapError {
    /// A socket call failed.
    Io {
        /// What we were doing.
        step: &'static str,
        /// The peer or local address involved.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A step did not finish before its deadline.
    Timeout {
        /// What we were doing.
        step: &'static str,
        /// The peer or local address involved.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
    },
    /// The peer closed the connection.
    Closed {
        /// What we were doing.
        step: &'static str,
        /// The peer.
        addr: SocketAddr,
    },
    /// The peer sent bytes that are not a valid bootstrap message.
    Decode {
        /// The peer.
        addr: SocketAddr,
        /// Why they were refused.
        error: DecodeError,
    },
    /// The peer sent a valid message of the wrong kind.
    Unexpected {
        /// The peer.
        addr: SocketAddr,
        /// What we waited for.
        expected: MessageKind,
        /// What came.
        got: MessageKind,
    },
    /// The peer reported an error and gave up.
    Remote {
        /// The peer.
        addr: SocketAddr,
        /// Its error code.
        code: u32,
        /// Its reason.
        reason: String,
    },
    /// The two sides disagree on a parameter.
    Mismatch {
        /// The peer.
        addr: SocketAddr,
        /// Which parameter.
        what: &'static str,
        /// Our value.
        ours: u64,
        /// Theirs.
        theirs: u64,
    },
    /// A message could not be encoded (a local bug or an oversized value).
    Encode(codec::EncodeError),
}

impl fmt::Display for BootstrapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { step, addr, source } => write!(f, "bootstrap {step} ({addr}): {source}"),
            Self::Timeout { step, addr, waited } => {
                write!(f, "bootstrap {step} ({addr}) timed out after {waited:.1?}")
            }
            Self::Closed { step, addr } => {
                write!(
                    f,
                    "bootstrap peer {addr} closed the connection during {step}"
                )
            }
            Self::Decode { addr, error } => {
                write!(f, "bootstrap peer {addr} sent an invalid message: {error}")
            }
            Self::Unexpected {
                addr,
                expected,
                got,
            } => write!(
                f,
                "bootstrap peer {addr} sent {got} where {expected} was expected"
            ),
            Self::Remote { addr, code, reason } => {
                write!(f, "bootstrap peer {addr} reported error {code}: {reason}")
            }
            Self::Mismatch {
                addr,
                what,
                ours,
                theirs,
            } => write!(
                f,
                "bootstrap peer {addr} disagrees on {what}: ours {ours}, theirs {theirs}"
            ),
            Self::Encode(e) => write!(f, "bootstrap message could not be encoded: {e}"),
        }
    }
}

impl std::error::Error for BootstrapError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Decode { error, .. } => Some(error),
            Self::Encode(e) => Some(e),
            _ => None,
        }
    }
}

/// A bound bootstrap listener (the server side of one GPU).
#[derive(Debug)]
pub struct BootstrapListener {
    inner: TcpListener,
    addr: SocketAddr,
}

impl BootstrapListener {
    /// Bind `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    pub fn bind(addr: SocketAddr) -> Result<Self, BootstrapError> {
        let inner = TcpListener::bind(addr).map_err(|source| BootstrapError::Io {
            step: "bind",
            addr,
            source,
        })?;
        let addr = inner.local_addr().unwrap_or(addr);
        inner
            .set_nonblocking(true)
            .map_err(|source| BootstrapError::Io {
                step: "bind",
                addr,
                source,
            })?;
        Ok(Self { inner, addr })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accept one client before `deadline`.
    pub fn accept(&self, deadline: Instant) -> Result<Control, BootstrapError> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            match self.inner.accept() {
                Ok((stream, peer)) => return Control::from_stream(stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(BootstrapError::Io {
                        step: "accept",
                        addr: self.addr,
                        source,
                    })
                }
            }
            if Instant::now() >= deadline {
                return Err(BootstrapError::Timeout {
                    step: "accept",
                    addr: self.addr,
                    waited: start.elapsed(),
                });
            }
            backoff.sleep(deadline);
        }
    }
}

/// Exponential backoff from 1 ms to 50 ms, never sleeping past a deadline.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(1))
    }

    fn sleep(&mut self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        thread::sleep(self.0.min(left));
        self.0 = (self.0 * 2).min(Duration::from_millis(50));
    }
}

/// One bootstrap connection, either side.
pub struct Control {
    stream: TcpStream,
    peer: SocketAddr,
    buf: Box<[u8; MAX_MESSAGE_LEN]>,
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control").field("peer", &self.peer).finish()
    }
}

impl Control {
    fn from_stream(stream: TcpStream, peer: SocketAddr) -> Result<Self, BootstrapError> {
        let io = |source| BootstrapError::Io {
            step: "setup",
            addr: peer,
            source,
        };
        stream.set_nonblocking(false).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Self {
            stream,
            peer,
            buf: Box::new([0; MAX_MESSAGE_LEN]),
        })
    }

    /// Connect to a server, retrying with backoff while it is not listening yet, until
    /// `deadline`.
    pub fn connect(addr: SocketAddr, deadline: Instant) -> Result<Self, BootstrapError> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BootstrapError::Timeout {
                    step: "connect",
                    addr,
                    waited: start.elapsed(),
                });
            }
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => return Self::from_stream(stream, addr),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    backoff.sleep(deadline)
                }
                Err(source) => {
                    return Err(BootstrapError::Io {
                        step: "connect",
                        addr,
                        source,
                    })
                }
            }
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Send one message, finishing before `deadline`.
    pub fn send(&mut self, msg: &Message, deadline: Instant) -> Result<(), BootstrapError> {
        let len = codec::encode(msg, &mut self.buf[..]).map_err(BootstrapError::Encode)?;
        let Self { stream, peer, buf } = self;
        io_with_deadline(stream, *peer, "send", deadline, &mut buf[..len], Dir::Write)
    }

    /// Receive one message before `deadline`. A peer's `Error` message becomes
    /// [`BootstrapError::Remote`].
    pub fn recv(&mut self, deadline: Instant) -> Result<Message, BootstrapError> {
        let Self { stream, peer, buf } = self;
        let peer = *peer;
        io_with_deadline(
            stream,
            peer,
            "receive",
            deadline,
            &mut buf[..HEADER_LEN],
            Dir::Read,
        )?;
        let header = codec::decode_header(&buf[..HEADER_LEN])
            .map_err(|error| BootstrapError::Decode { addr: peer, error })?;
        let payload = &mut buf[HEADER_LEN..HEADER_LEN + header.payload_size()];
        io_with_deadline(stream, peer, "receive", deadline, payload, Dir::Read)?;
        let msg = codec::decode_payload(&header, payload)
            .map_err(|error| BootstrapError::Decode { addr: peer, error })?;
        match msg {
            Message::Error { code, reason } => Err(BootstrapError::Remote {
                addr: peer,
                code,
                reason: reason.as_str().to_owned(),
            }),
            msg => Ok(msg),
        }
    }

    /// Receive a message and check its kind.
    pub fn expect(
        &mut self,
        expected: MessageKind,
        deadline: Instant,
    ) -> Result<Message, BootstrapError> {
        let msg = self.recv(deadline)?;
        if msg.kind() == expected {
            Ok(msg)
        } else {
            Err(BootstrapError::Unexpected {
                addr: self.peer,
                expected,
                got: msg.kind(),
            })
        }
    }

    /// A barrier: send `Ready { token }`, wait for the peer's `Ready` and check its token.
    pub fn barrier(&mut self, token: u32, deadline: Instant) -> Result<(), BootstrapError> {
        self.send(&Message::Ready { token }, deadline)?;
        match self.expect(MessageKind::Ready, deadline)? {
            Message::Ready { token: theirs } if theirs == token => Ok(()),
            Message::Ready { token: theirs } => Err(BootstrapError::Mismatch {
                addr: self.peer,
                what: "barrier token",
                ours: token.into(),
                theirs: theirs.into(),
            }),
            other => Err(BootstrapError::Unexpected {
                addr: self.peer,
                expected: MessageKind::Ready,
                got: other.kind(),
            }),
        }
    }

    /// Tell the peer why we give up (best effort: errors are ignored, the connection is
    /// closing anyway).
    pub fn send_error(&mut self, code: u32, reason: &str) {
        let msg = Message::Error {
            code,
            reason: codec::Reason::truncated(reason),
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        let _ = self.send(&msg, deadline);
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Read,
    Write,
}

/// Read or write all of `buf`, each syscall bounded by what is left until `deadline`.
fn io_with_deadline(
    stream: &mut TcpStream,
    peer: SocketAddr,
    step: &'static str,
    deadline: Instant,
    buf: &mut [u8],
    dir: Dir,
) -> Result<(), BootstrapError> {
    let start = Instant::now();
    let mut done = 0;
    while done < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || BootstrapError::Timeout {
            step,
            addr: peer,
            waited: start.elapsed(),
        };
        if left.is_zero() {
            return Err(timeout());
        }
        let set = match dir {
            Dir::Read => stream.set_read_timeout(Some(left)),
            Dir::Write => stream.set_write_timeout(Some(left)),
        };
        set.map_err(|source| BootstrapError::Io {
            step,
            addr: peer,
            source,
        })?;
        let r = match dir {
            Dir::Read => stream.read(&mut buf[done..]),
            Dir::Write => stream.write(&buf[done..]),
        };
        match r {
            Ok(0) => return Err(BootstrapError::Closed { step, addr: peer }),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout())
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(BootstrapError::Closed { step, addr: peer })
            }
            Err(source) => {
                return Err(BootstrapError::Io {
                    step,
                    addr: peer,
                    source,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpx_core::codec::{Handles, Hello};

    fn pair() -> (Control, Control) {
        let l = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let deadline = Instant::now() + Duration::from_secs(5);
        let t = thread::spawn(move || Control::connect(addr, deadline).unwrap());
        let server = l.accept(deadline).unwrap();
        (server, t.join().unwrap())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn hello_handles_barrier_round_trip() {
        let (mut s, mut c) = pair();
        let hello = Message::Hello(Hello {
            gpu: 1,
            channels: 4,
            chunk_bytes: 512 << 10,
            bytes: 1 << 20,
            iters: 3,
        });
        c.send(&hello, soon()).unwrap();
        assert_eq!(s.expect(MessageKind::Hello, soon()).unwrap(), hello);
        let handles =
            Message::Handles(Handles::new(1, 512 << 10, 1 << 20, 3, &[[7; 128]; 4]).unwrap());
        s.send(&handles, soon()).unwrap();
        assert_eq!(c.recv(soon()).unwrap(), handles);
        let t = thread::spawn(move || {
            c.barrier(9, soon()).unwrap();
            c
        });
        s.barrier(9, soon()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn garbage_is_a_decode_error_naming_the_peer() {
        let (mut s, mut c) = pair();
        c.stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let err = s.recv(soon()).unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapError::Decode {
                    error: DecodeError::BadMagic(_),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
    }

    #[test]
    fn wrong_version_is_refused() {
        let (mut s, mut c) = pair();
        let mut bytes = [0u8; 64];
        let n = codec::encode(&Message::Bye, &mut bytes).unwrap();
        bytes[4] = 99; // version
        c.stream.write_all(&bytes[..n]).unwrap();
        let err = s.recv(soon()).unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapError::Decode {
                    error: DecodeError::UnsupportedVersion { .. },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_message_then_close_is_closed_not_a_hang() {
        let (mut s, mut c) = pair();
        let mut bytes = [0u8; 64];
        let n = codec::encode(&Message::Ready { token: 1 }, &mut bytes).unwrap();
        c.stream.write_all(&bytes[..n - 2]).unwrap();
        drop(c);
        let err = s.recv(soon()).unwrap_err();
        assert!(matches!(err, BootstrapError::Closed { .. }), "{err}");
    }

    #[test]
    fn silent_peer_times_out_at_the_deadline() {
        let (mut s, _c) = pair();
        let err = s
            .recv(Instant::now() + Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapError::Timeout {
                    step: "receive",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn connect_without_server_times_out() {
        // Bind then drop to find a port nobody listens on.
        let addr = BootstrapListener::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .local_addr();
        let err = Control::connect(addr, Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(
                err,
                BootstrapError::Timeout {
                    step: "connect",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn accept_times_out() {
        let l = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = l
            .accept(Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert!(
            matches!(err, BootstrapError::Timeout { step: "accept", .. }),
            "{err}"
        );
    }

    #[test]
    fn remote_error_is_reported() {
        let (mut s, mut c) = pair();
        c.send_error(7, "no GPU 3 here");
        let err = s.recv(soon()).unwrap_err();
        assert!(err.to_string().contains("no GPU 3 here"), "{err}");
    }

    #[test]
    fn unexpected_kind_and_barrier_mismatch() {
        let (mut s, mut c) = pair();
        c.send(&Message::Bye, soon()).unwrap();
        let err = s.expect(MessageKind::Hello, soon()).unwrap_err();
        assert!(matches!(err, BootstrapError::Unexpected { .. }), "{err}");
        let t = thread::spawn(move || c.barrier(1, soon()));
        let err = s.barrier(2, soon()).unwrap_err();
        assert!(matches!(err, BootstrapError::Mismatch { .. }), "{err}");
        let _ = t.join();
    }

    #[test]
    fn ports() {
        assert_eq!(port_for(20000, 3), Some(20003));
        assert_eq!(port_for(65535, 1), None);
    }
}
