//! Everything that talks to an NCCL net plugin: the v7 ABI mirror ([`abi`]), the plugin loader
//! ([`Plugin`]), comms and requests ([`SendComm`], [`RecvComm`], [`ListenComm`], [`Request`]),
//! registered memory ([`Region`], [`HostBuffer`], [`MemHandle`]), the logger shim ([`logger`])
//! and the errors ([`PluginError`], [`Call`]).
//!
//! This and [`crate::cuda`] (feature `cuda`) are the crate's only modules with `unsafe` code: every block carries a `// SAFETY:`
//! comment, every `unsafe fn` a `# Safety` section. The public hot path (`register`, `isend`,
//! `irecv`, `test`, `irecv_consumed`) is safe: posts are bounds-checked against regions the comm
//! keeps alive until it is closed, and only requests the comm knows to be outstanding are
//! passed back to the plugin. Soundness assumes the plugin honours the `ncclNet_v7_t` contract
//! (a plugin is trusted native code).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use tcpx::net::{HostBuffer, Plugin, TestResult};
//!
//! let plugin = Plugin::load("/usr/local/tcpx/lib64/libnccl-net.so")?;
//! let deadline = Instant::now() + Duration::from_secs(30);
//! let listen = plugin.listen(0)?;
//! // Loopback: connect to ourselves. TCPX's connect completes only once the peer accepts, so
//! // the two run on different threads.
//! let (p, handle) = (plugin.clone(), *listen.handle());
//! let connecting = std::thread::spawn(move || p.connect(0, &handle, deadline));
//! let recv = listen.accept(deadline)?;
//! let send = connecting.join().expect("connect thread")?;
//!
//! let (src, dst) = (Arc::new(HostBuffer::new(4096)?), Arc::new(HostBuffer::new(4096)?));
//! let (smh, rmh) = (send.register(src)?, recv.register(dst.clone())?);
//! let (sreq, rreq) = (send.isend(&smh, 0, 4096)?, recv.irecv(&rmh, 0, 4096)?);
//! while send.test(sreq)? == TestResult::Pending {}
//! while recv.test(rreq)? == TestResult::Pending {}
//! recv.irecv_consumed(rreq)?;
//! # Ok::<(), tcpx::net::PluginError>(())
//! ```
pub mod abi;
mod comm;
mod error;
pub mod logger;
mod mem;
#[cfg(test)]
mod mock;
pub mod null;
mod plugin;

pub use comm::{ListenComm, RecvComm, Request, SendComm, TestResult, REQUEST_TABLE_CAPACITY};
pub use error::{Call, PluginError};
pub use mem::{AccessState, HostBuffer, HostLock, MemHandle, MemKind, Region};
pub use plugin::{DeviceProperties, Plugin, KNOWN_COLLNET_SYMBOLS};
