//! The bootstrap calls behind `bootstrap.h`: the C++ tree's `bootstrap_server_create` /
//! `bootstrap_server_send_handles` / `bootstrap_client_connect` / `bootstrap_client_recv_handles`
//! on top of [`tcpx::bootstrap`] (framed, versioned messages from [`tcpx_core::codec`], a
//! deadline on every step).
//!
//! The `int` the C++ calls hand out is a bootstrap handle, not an OS file descriptor: it is at
//! least [`FIRST_HANDLE`] (2^30), above any descriptor Linux can allocate (`fs.nr_open` is at
//! most 2^30 − 8), so `close()` on it is a harmless `EBADF`. Release it with `bootstrap_close`;
//! the connection also closes at exit.
//!
//! Protocol (both sides must be this library): the client connects and sends `Hello`; the
//! server accepts and reads it (`bootstrap_server_create`), then sends `Handles` — the listen
//! handles and its plan: GPU, chunk size, bytes per iteration, iterations. Both sides may then
//! meet at barriers and end with `bootstrap_finish` (`Done` + `Bye` both ways), so neither
//! closes its TCPX comms while the other still tests them.
//!
//! ```no_run
//! use tcpx_ffi_cxx::bootstrap::{bootstrap_close, bootstrap_serve};
//! let fd = bootstrap_serve(20000, 30_000)?; // blocks until a client connected
//! assert!(bootstrap_close(fd));
//! # Ok::<(), tcpx_ffi_cxx::status::Error>(())
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tcpx::bootstrap::{BootstrapListener, Control};
use tcpx::net::abi::NET_HANDLE_MAXSIZE;
use tcpx_core::codec::{Done, Handles, Hello, Message, MessageKind};

use crate::bridge::ffi::{DoneSummary, PeerPlan, ReceivedHandles, Status};
use crate::status::{guard, guard_result, Error};

/// The smallest bootstrap handle.
pub const FIRST_HANDLE: i32 = 1 << 30;

struct Table {
    next: i32,
    open: HashMap<i32, Control>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn with_table<T>(f: impl FnOnce(&mut Table) -> T) -> T {
    let mut guard = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    let table = guard.get_or_insert_with(|| Table {
        next: FIRST_HANDLE,
        open: HashMap::new(),
    });
    f(table)
}

fn store(control: Control) -> i32 {
    with_table(|t| {
        let mut fd = t.next;
        while t.open.contains_key(&fd) {
            fd = if fd == i32::MAX { FIRST_HANDLE } else { fd + 1 };
        }
        t.next = if fd == i32::MAX { FIRST_HANDLE } else { fd + 1 };
        t.open.insert(fd, control);
        fd
    })
}

/// Runs `f` on the connection `fd`, taken out of the table meanwhile (a second thread using the
/// same handle at the same time gets an error instead of interleaved messages).
fn with_control<T>(
    fd: i32,
    what: &str,
    f: impl FnOnce(&mut Control) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut control = with_table(|t| t.open.remove(&fd)).ok_or_else(|| {
        Error::invalid(format!(
            "{what}: {fd} is not an open bootstrap handle (closed, or in use by another thread)"
        ))
    })?;
    let r = f(&mut control);
    with_table(|t| t.open.insert(fd, control));
    r
}

fn deadline(timeout_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(timeout_ms)
}

fn port(port: i32, what: &str) -> Result<u16, Error> {
    u16::try_from(port)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| Error::invalid(format!("{what}: port {port} is not in 1..=65535")))
}

fn boot_err(what: &str, e: impl std::fmt::Display) -> Error {
    let text = e.to_string();
    let status = if text.contains("timed out") {
        Status::Timeout
    } else {
        Status::InvalidArgument
    };
    Error::new(status, format!("{what}: {e}"))
}

/// `bootstrap_server_create`: binds `0.0.0.0:port`, accepts one client and reads its hello.
pub fn bootstrap_serve(port_num: i32, timeout_ms: u64) -> Result<i32, Error> {
    guard_result(|| {
        let what = "bootstrap_server_create";
        let port = port(port_num, what)?;
        let deadline = deadline(timeout_ms);
        let listener = BootstrapListener::bind(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )))
        .map_err(|e| boot_err(what, e))?;
        let mut control = listener.accept(deadline).map_err(|e| boot_err(what, e))?;
        control
            .expect(MessageKind::Hello, deadline)
            .map_err(|e| boot_err(what, e))?;
        Ok(store(control))
    })
}

/// `bootstrap_client_connect`: connects to `host:port` (retrying until the server listens or
/// the deadline passes) and says hello as GPU `gpu`.
pub fn bootstrap_connect(
    host: &str,
    port_num: i32,
    gpu: u32,
    timeout_ms: u64,
) -> Result<i32, Error> {
    guard_result(|| {
        let what = "bootstrap_client_connect";
        let port = port(port_num, what)?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("{what}: cannot resolve {host}: {e}")))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| Error::invalid(format!("{what}: {host} has no IPv4 address")))?;
        let deadline = deadline(timeout_ms);
        let mut control = Control::connect(addr, deadline).map_err(|e| boot_err(what, e))?;
        let hello = Hello {
            gpu,
            channels: 0,
            chunk_bytes: 0,
            bytes: 0,
            iters: 0,
        };
        control
            .send(&Message::Hello(hello), deadline)
            .map_err(|e| boot_err(what, e))?;
        Ok(store(control))
    })
}

/// `bootstrap_server_send_handles`: `handles` is `n × 128` bytes, 1 ≤ n ≤ 64.
pub fn bootstrap_send_handles(
    fd: i32,
    handles: &[u8],
    plan: PeerPlan,
    timeout_ms: u64,
) -> Result<(), Error> {
    guard_result(|| {
        let what = "bootstrap_server_send_handles";
        if handles.is_empty() || handles.len() % NET_HANDLE_MAXSIZE != 0 {
            return Err(Error::invalid(format!(
                "{what}: {} bytes are not a whole number of 128-byte handles",
                handles.len()
            )));
        }
        let list: Vec<[u8; NET_HANDLE_MAXSIZE]> = handles
            .chunks_exact(NET_HANDLE_MAXSIZE)
            .filter_map(|c| c.try_into().ok())
            .collect();
        let msg = Handles::new(plan.gpu, plan.chunk_bytes, plan.bytes, plan.iters, &list)
            .map_err(|e| Error::invalid(format!("{what}: {e}")))?;
        with_control(fd, what, |c| {
            c.send(&Message::Handles(msg), deadline(timeout_ms))
                .map_err(|e| boot_err(what, e))
        })
    })
}

/// `bootstrap_client_recv_handles`.
pub fn bootstrap_recv_handles(fd: i32, timeout_ms: u64) -> Result<ReceivedHandles, Error> {
    guard_result(|| {
        let what = "bootstrap_client_recv_handles";
        with_control(fd, what, |c| {
            match c
                .expect(MessageKind::Handles, deadline(timeout_ms))
                .map_err(|e| boot_err(what, e))?
            {
                Message::Handles(h) => Ok(ReceivedHandles {
                    plan: PeerPlan {
                        gpu: h.gpu,
                        chunk_bytes: h.chunk_bytes,
                        bytes: h.bytes,
                        iters: h.iters,
                    },
                    count: u32::from(h.channels()),
                    handles: h.handles().concat(),
                }),
                _ => Err(Error::invalid(format!("{what}: unexpected message"))),
            }
        })
    })
}

/// A barrier with the peer: both send `Ready(token)` and check the other's.
pub fn bootstrap_barrier(fd: i32, token: u32, timeout_ms: u64) -> Result<(), Error> {
    guard_result(|| {
        let what = "bootstrap_barrier";
        with_control(fd, what, |c| {
            c.barrier(token, deadline(timeout_ms))
                .map_err(|e| boot_err(what, e))
        })
    })
}

/// End of run: exchange `Done` summaries, then `Bye`; returns the peer's summary.
pub fn bootstrap_finish(fd: i32, ours: DoneSummary, timeout_ms: u64) -> Result<DoneSummary, Error> {
    guard_result(|| {
        let what = "bootstrap_finish";
        with_control(fd, what, |c| {
            let deadline = deadline(timeout_ms);
            let done = Done {
                bytes: ours.bytes,
                checksum: ours.checksum,
                iters: ours.iters,
            };
            c.send(&Message::Done(done), deadline)
                .map_err(|e| boot_err(what, e))?;
            let theirs = match c
                .expect(MessageKind::Done, deadline)
                .map_err(|e| boot_err(what, e))?
            {
                Message::Done(d) => d,
                _ => return Err(Error::invalid(format!("{what}: unexpected message"))),
            };
            c.send(&Message::Bye, deadline)
                .map_err(|e| boot_err(what, e))?;
            c.expect(MessageKind::Bye, deadline)
                .map_err(|e| boot_err(what, e))?;
            Ok(DoneSummary {
                bytes: theirs.bytes,
                checksum: theirs.checksum,
                iters: theirs.iters,
            })
        })
    })
}

/// Closes a bootstrap handle; `false` if it was not open.
pub fn bootstrap_close(fd: i32) -> bool {
    guard(|| with_table(|t| t.open.remove(&fd)).is_some(), || false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_over_loopback_and_bad_handles() {
        // Port 0 is refused: a server needs a port the client can name.
        assert!(bootstrap_serve(0, 5_000).is_err());

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let server = std::thread::spawn(move || {
            let fd = bootstrap_serve(i32::from(port), 10_000).unwrap();
            assert!(fd >= FIRST_HANDLE);
            let handles: Vec<u8> = (0..256).map(|i| i as u8).collect();
            let plan = PeerPlan {
                gpu: 3,
                chunk_bytes: 4096,
                bytes: 1 << 20,
                iters: 2,
            };
            bootstrap_send_handles(fd, &handles, plan, 5_000).unwrap();
            bootstrap_barrier(fd, 7, 5_000).unwrap();
            let theirs = bootstrap_finish(
                fd,
                DoneSummary {
                    bytes: 1,
                    checksum: 2,
                    iters: 3,
                },
                5_000,
            )
            .unwrap();
            assert_eq!((theirs.bytes, theirs.checksum, theirs.iters), (4, 5, 6));
            assert!(bootstrap_close(fd));
        });
        let fd = bootstrap_connect("127.0.0.1", i32::from(port), 1, 10_000).unwrap();
        let got = bootstrap_recv_handles(fd, 5_000).unwrap();
        assert_eq!(got.count, 2);
        assert_eq!(got.handles.len(), 256);
        assert_eq!(got.handles[129], 129);
        assert_eq!(
            (got.plan.gpu, got.plan.chunk_bytes, got.plan.iters),
            (3, 4096, 2)
        );
        bootstrap_barrier(fd, 7, 5_000).unwrap();
        let theirs = bootstrap_finish(
            fd,
            DoneSummary {
                bytes: 4,
                checksum: 5,
                iters: 6,
            },
            5_000,
        )
        .unwrap();
        assert_eq!(theirs.checksum, 2);
        server.join().unwrap();
        assert!(bootstrap_close(fd));
        assert!(!bootstrap_close(fd));
        let e = bootstrap_barrier(fd, 1, 100).unwrap_err();
        assert_eq!(e.status, Status::InvalidArgument);
        assert!(bootstrap_send_handles(
            FIRST_HANDLE - 1,
            &[0; 100],
            PeerPlan {
                gpu: 0,
                chunk_bytes: 0,
                bytes: 0,
                iters: 0
            },
            10
        )
        .is_err());
    }
}
