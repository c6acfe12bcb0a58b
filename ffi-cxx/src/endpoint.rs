//! The engine behind the C++ `tcpx::Endpoint`: [`tcpx::endpoint::Endpoint`] (one progress
//! thread per GPU, SPSC rings, chunk plan, windows) with C++-friendly ids.
//!
//! Setup (`endpoint_new`, `endpoint_register`, `endpoint_serve`, `endpoint_connect`, barriers,
//! finish) returns `Result` — a C++ exception with the message. The data path (`endpoint_post`,
//! `endpoint_poll`, `endpoint_wait`) returns a [`Status`] and allocates nothing: posted ids are
//! tracked in a vector whose capacity is reserved up front, so waiting for an id that was never
//! posted (or already taken) is [`Status::InvalidArgument`] at once, not a timeout.
//!
//! ```no_run
//! use tcpx_ffi_cxx::bridge::ffi::{EndpointOptions, Status, TransferResult};
//! use tcpx_ffi_cxx::endpoint::*;
//! let opts = EndpointOptions { plugin_path: String::new(), gpu: 0, channels: 2,
//!     chunk_bytes: 512 << 10, nics: String::new(), pin_progress_thread: false,
//!     stall_timeout_ms: 30_000 };
//! let mut ep = endpoint_new(&opts)?;
//! let conn = endpoint_serve(&mut ep, 20000, 30_000)?;
//! # let (addr, len) = (0u64, 0u64);
//! let buf = endpoint_register(&mut ep, addr, len, false)?;
//! let mut id = 0;
//! assert_eq!(endpoint_post(&mut ep, conn.id, buf, 0, len, &mut id), Status::Ok);
//! let mut out = TransferResult { status: Status::Ok, id: 0, bytes: 0, chunks: 0, elapsed_ns: 0 };
//! assert_eq!(endpoint_wait(&mut ep, id, 30_000, &mut out), Status::Ok);
//! # Ok::<(), tcpx_ffi_cxx::status::Error>(())
//! ```

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcpx::bootstrap::BootstrapListener;
use tcpx::channel::NicSelection;
use tcpx::core::codec::Done;
use tcpx::endpoint::{
    BufferId, Connection, Endpoint as RsEndpoint, EndpointConfig, Error as EpError, Pinning,
    TransferError, TransferId,
};
use tcpx::engine::{Completion, MAX_IN_FLIGHT};
use tcpx::net::{abi::NcclResult, Call, MemKind, PluginError};

use crate::bridge::ffi::{ConnectionInfo, DoneSummary, EndpointOptions, Status, TransferResult};
use crate::plugin::{load, plugin};
use crate::region::ForeignRegion;
use crate::status::{guard, guard_result, set_last_error, Error};

/// An endpoint and the ids C++ uses for its buffers and connections.
pub struct Endpoint {
    inner: RsEndpoint,
    buffers: Vec<BufferId>,
    conns: Vec<Connection>,
    /// Posted and not yet handed back (capacity MAX_IN_FLIGHT, reserved).
    posted: Vec<u64>,
}

fn ep_err(what: &str, e: EpError) -> Error {
    let status = match &e {
        EpError::Timeout { .. } => Status::Timeout,
        EpError::Busy => Status::Busy,
        EpError::Plugin(p) => crate::status::from_plugin(p).0,
        _ => Status::InvalidArgument,
    };
    Error::new(status, format!("{what}: {e}"))
}

/// `tcpx::Endpoint(config)`: loads the plugin (the configured path, else the process-wide one)
/// and starts the progress thread.
pub fn endpoint_new(options: &EndpointOptions) -> Result<Box<Endpoint>, Error> {
    guard_result(|| {
        let p = if options.plugin_path.is_empty() {
            plugin()?
        } else {
            load(Path::new(&options.plugin_path))?
        };
        let nics = if options.nics.trim().is_empty() {
            NicSelection::Topology
        } else {
            NicSelection::Names(
                options
                    .nics
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )
        };
        let config = EndpointConfig {
            gpu: options.gpu,
            channels: options.channels,
            chunk_bytes: options.chunk_bytes,
            nics,
            pinning: if options.pin_progress_thread {
                Pinning::NumaLocal
            } else {
                Pinning::Off
            },
            stall_timeout: Duration::from_millis(options.stall_timeout_ms.max(1)),
            ..EndpointConfig::default()
        };
        let inner = RsEndpoint::new(p, config).map_err(|e| ep_err("tcpx::Endpoint", e))?;
        Ok(Box::new(Endpoint {
            inner,
            buffers: Vec::new(),
            conns: Vec::new(),
            posted: Vec::with_capacity(MAX_IN_FLIGHT),
        }))
    })
}

/// `register_memory`: the caller keeps `addr..addr+len` alive while the endpoint lives.
pub fn endpoint_register(ep: &mut Endpoint, addr: u64, len: u64, cuda: bool) -> Result<u32, Error> {
    guard_result(|| {
        let kind = if cuda { MemKind::Cuda } else { MemKind::Host };
        let region = ForeignRegion::new(addr, len, kind).ok_or_else(|| {
            Error::invalid(format!(
                "register_memory: NULL or empty buffer ({addr:#x}, {len} bytes)"
            ))
        })?;
        let id = ep
            .inner
            .register(Arc::new(region))
            .map_err(|e| ep_err("register_memory", e))?;
        ep.buffers.push(id);
        Ok((ep.buffers.len() - 1) as u32)
    })
}

fn info(ep: &Endpoint, index: usize) -> ConnectionInfo {
    let a = ep.conns[index].agreement();
    ConnectionInfo {
        id: index as u32,
        peer_gpu: a.peer_gpu,
        channels: a.channels,
        chunk_bytes: a.chunk_bytes,
        bytes: a.bytes,
        iters: a.iters,
    }
}

/// `serve(port)`: accepts one client on `0.0.0.0:port` and sets up a receive connection.
pub fn endpoint_serve(
    ep: &mut Endpoint,
    port: i32,
    timeout_ms: u64,
) -> Result<ConnectionInfo, Error> {
    guard_result(|| {
        let port = u16::try_from(port)
            .map_err(|_| Error::invalid(format!("serve: port {port} is not in 0..=65535")))?;
        let listener = BootstrapListener::bind(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )))
        .map_err(|e| Error::invalid(format!("serve: {e}")))?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let conn = ep
            .inner
            .serve(&listener, deadline)
            .map_err(|e| ep_err("serve", e))?;
        ep.conns.push(conn);
        Ok(info(ep, ep.conns.len() - 1))
    })
}

/// `connect(host, port, bytes, iters)`: sets up a send connection to a serving endpoint.
pub fn endpoint_connect(
    ep: &mut Endpoint,
    host: &str,
    port: i32,
    bytes: u64,
    iters: u32,
    timeout_ms: u64,
) -> Result<ConnectionInfo, Error> {
    guard_result(|| {
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| Error::invalid(format!("connect: port {port} is not in 1..=65535")))?;
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::invalid(format!("connect: cannot resolve {host}: {e}")))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| Error::invalid(format!("connect: {host} has no IPv4 address")))?;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let conn = ep
            .inner
            .connect(addr, bytes, iters, deadline)
            .map_err(|e| ep_err("connect", e))?;
        ep.conns.push(conn);
        Ok(info(ep, ep.conns.len() - 1))
    })
}

/// `post`: the transfer's id in `id`.
pub fn endpoint_post(
    ep: &mut Endpoint,
    conn: u32,
    buf: u32,
    offset: u64,
    len: u64,
    id: &mut u64,
) -> Status {
    guard(
        || {
            let Some(c) = ep.conns.get(conn as usize).map(Connection::id) else {
                set_last_error(format_args!("post: unknown connection {conn}"));
                return Status::InvalidArgument;
            };
            let Some(&b) = ep.buffers.get(buf as usize) else {
                set_last_error(format_args!("post: unknown buffer {buf}"));
                return Status::InvalidArgument;
            };
            match ep.inner.post(c, b, offset, len) {
                Ok(TransferId(t)) => {
                    if ep.posted.len() < ep.posted.capacity() {
                        ep.posted.push(t);
                    }
                    *id = t;
                    Status::Ok
                }
                Err(e) => {
                    let s = ep_err("post", e);
                    set_last_error(&s.message);
                    s.status
                }
            }
        },
        || Status::Internal,
    )
}

fn transfer_status(e: &TransferError) -> Status {
    match e {
        TransferError::Plugin {
            error:
                PluginError::Call {
                    call: Call::Test,
                    rc: NcclResult::SYSTEM_ERROR,
                },
            ..
        } => Status::PeerClosed,
        TransferError::Plugin { error, .. } => crate::status::from_plugin(error).0,
        TransferError::Stalled { .. } => Status::Timeout,
        _ => Status::Internal,
    }
}

fn fill(ep: &mut Endpoint, c: Completion, out: &mut TransferResult) -> Status {
    if let Some(i) = ep.posted.iter().position(|&p| p == c.id.0) {
        ep.posted.swap_remove(i);
    }
    out.id = c.id.0;
    match c.result {
        Ok(r) => {
            out.status = Status::Ok;
            out.bytes = r.bytes;
            out.chunks = r.chunks;
            out.elapsed_ns = u64::try_from(r.elapsed.as_nanos()).unwrap_or(u64::MAX);
        }
        Err(e) => {
            out.status = transfer_status(&e);
            out.bytes = 0;
            out.chunks = 0;
            out.elapsed_ns = 0;
            set_last_error(format_args!("transfer {}: {e}", c.id.0));
        }
    }
    out.status
}

/// `poll`: [`Status::NotReady`] when nothing completed; otherwise the transfer's own status.
pub fn endpoint_poll(ep: &mut Endpoint, out: &mut TransferResult) -> Status {
    guard(
        || match ep.inner.poll() {
            Some(c) => fill(ep, c, out),
            None => Status::NotReady,
        },
        || Status::Internal,
    )
}

/// `wait(id, timeout)`: the transfer's status, [`Status::Timeout`], or
/// [`Status::InvalidArgument`] for an id that is not in flight.
pub fn endpoint_wait(
    ep: &mut Endpoint,
    id: u64,
    timeout_ms: u64,
    out: &mut TransferResult,
) -> Status {
    guard(
        || {
            if !ep.posted.contains(&id) {
                set_last_error(format_args!(
                    "wait: transfer {id} is not in flight (never posted, or already completed)"
                ));
                return Status::InvalidArgument;
            }
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            match ep.inner.wait(TransferId(id), deadline) {
                Ok(r) => fill(
                    ep,
                    Completion {
                        id: TransferId(id),
                        result: Ok(r),
                    },
                    out,
                ),
                Err(EpError::Transfer(e)) => fill(
                    ep,
                    Completion {
                        id: TransferId(id),
                        result: Err(e),
                    },
                    out,
                ),
                Err(e) => {
                    let s = ep_err("wait", e);
                    set_last_error(&s.message);
                    s.status
                }
            }
        },
        || Status::Internal,
    )
}

/// Transfers posted and not yet taken.
pub fn endpoint_in_flight(ep: &Endpoint) -> u32 {
    ep.inner.in_flight() as u32
}

fn conn_mut<'a>(ep: &'a mut Endpoint, conn: u32, what: &str) -> Result<&'a mut Connection, Error> {
    ep.conns
        .get_mut(conn as usize)
        .ok_or_else(|| Error::invalid(format!("{what}: unknown connection {conn}")))
}

/// A barrier with the connection's peer.
pub fn endpoint_barrier(
    ep: &mut Endpoint,
    conn: u32,
    token: u32,
    timeout_ms: u64,
) -> Result<(), Error> {
    guard_result(|| {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        conn_mut(ep, conn, "barrier")?
            .barrier(token, deadline)
            .map_err(|e| ep_err("barrier", e))
    })
}

/// End of run: exchange summaries and `Bye`.
pub fn endpoint_finish(
    ep: &mut Endpoint,
    conn: u32,
    ours: DoneSummary,
    timeout_ms: u64,
) -> Result<DoneSummary, Error> {
    guard_result(|| {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let theirs = conn_mut(ep, conn, "finish")?
            .finish(
                Done {
                    bytes: ours.bytes,
                    checksum: ours.checksum,
                    iters: ours.iters,
                },
                deadline,
            )
            .map_err(|e| ep_err("finish", e))?;
        Ok(DoneSummary {
            bytes: theirs.bytes,
            checksum: theirs.checksum,
            iters: theirs.iters,
        })
    })
}
