//! Errors of the plugin loader: [`PluginError`] and [`Call`], the name of a plugin function.
//!
//! Invariants:
//! * Setup errors (loading, symbol lookup, slot checks, `init`) carry the plugin path and the
//!   cause, and may hold `String`s / `Vec`s.
//! * Every error the hot path (`isend`, `irecv`, `test`, `irecv_consumed`) can return is built
//!   from `Copy` fields only, so returning it never allocates.
//! * `Display` uses NCCL's own names for plugin functions (`isend`, `irecvConsumed`, …) and
//!   result codes (`ncclInternalError (3)`).
//!
//! ```
//! use tcpx::net::{Call, PluginError, abi::NcclResult};
//! let e = PluginError::Call { call: Call::IrecvConsumed, rc: NcclResult::INTERNAL_ERROR };
//! assert_eq!(e.to_string(), "plugin call irecvConsumed failed: ncclInternalError (3)");
//! ```

use core::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::abi::{NcclResult, SLOT_NAMES_V7};

/// The 18 functions of an `ncclNet_v7_t` table (slot 0, `name`, is a string, not a function).
/// `Display` prints NCCL's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// `init`.
    Init,
    /// `devices`.
    Devices,
    /// `getProperties`.
    GetProperties,
    /// `listen`.
    Listen,
    /// `connect`.
    Connect,
    /// `accept`.
    Accept,
    /// `regMr`.
    RegMr,
    /// `regMrDmaBuf`.
    RegMrDmaBuf,
    /// `deregMr`.
    DeregMr,
    /// `isend`.
    Isend,
    /// `irecv`.
    Irecv,
    /// `iflush`.
    Iflush,
    /// `test`.
    Test,
    /// `closeSend`.
    CloseSend,
    /// `closeRecv`.
    CloseRecv,
    /// `closeListen`.
    CloseListen,
    /// `getDeviceMr`.
    GetDeviceMr,
    /// `irecvConsumed`.
    IrecvConsumed,
}

impl Call {
    /// Every function, in table order.
    pub const ALL: [Call; 18] = [
        Call::Init,
        Call::Devices,
        Call::GetProperties,
        Call::Listen,
        Call::Connect,
        Call::Accept,
        Call::RegMr,
        Call::RegMrDmaBuf,
        Call::DeregMr,
        Call::Isend,
        Call::Irecv,
        Call::Iflush,
        Call::Test,
        Call::CloseSend,
        Call::CloseRecv,
        Call::CloseListen,
        Call::GetDeviceMr,
        Call::IrecvConsumed,
    ];

    /// The slot index in `ncclNet_v7_t` (1..=18; slot 0 is `name`).
    pub const fn slot(self) -> usize {
        self as usize + 1
    }

    /// NCCL's name of the function, e.g. `"irecvConsumed"`.
    pub const fn name(self) -> &'static str {
        SLOT_NAMES_V7[self.slot()]
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong talking to a net plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PluginError {
    /// The plugin path does not exist.
    NotFound {
        /// The path given to [`Plugin::load`](super::Plugin::load).
        path: PathBuf,
    },
    /// The file exists but is not an ELF shared library.
    NotSharedLibrary {
        /// The plugin path.
        path: PathBuf,
        /// `dlerror` text.
        reason: String,
    },
    /// `dlopen` failed for another reason (missing dependency, wrong architecture, …).
    Open {
        /// The plugin path.
        path: PathBuf,
        /// `dlerror` text.
        reason: String,
    },
    /// The library does not export the table this loader needs.
    MissingSymbol {
        /// The plugin path.
        path: PathBuf,
        /// The symbol looked for (`ncclNetPlugin_v7`).
        symbol: &'static str,
        /// The `ncclNetPlugin_*` / `ncclCollNetPlugin_*` symbols the library does export.
        exported: Vec<&'static str>,
    },
    /// Required slots of the table are NULL.
    NullSlots {
        /// The plugin path.
        path: PathBuf,
        /// The NULL slots, by NCCL name, in table order.
        slots: Vec<&'static str>,
    },
    /// The plugin's `init` failed.
    Init {
        /// The plugin path.
        path: PathBuf,
        /// The table's `name`.
        name: String,
        /// What `init` returned.
        rc: NcclResult,
    },
    /// A plugin function returned an error.
    Call {
        /// Which function.
        call: Call,
        /// What it returned.
        rc: NcclResult,
    },
    /// A per-device plugin function (`getProperties`, `listen`, `connect`, `accept`) failed.
    DeviceCall {
        /// Which function.
        call: Call,
        /// The device index.
        dev: usize,
        /// What it returned.
        rc: NcclResult,
    },
    /// A device index does not fit the ABI's `int`.
    BadDevice {
        /// Which function.
        call: Call,
        /// The device index.
        dev: usize,
    },
    /// The plugin reported success but its output breaks the contract (a NULL comm, a negative
    /// device count, a NULL interface name, …).
    BadOutput {
        /// Which function.
        call: Call,
        /// What was wrong.
        what: &'static str,
    },
    /// `connect` or `accept` kept answering "not yet" until the deadline.
    Timeout {
        /// `connect` or `accept`.
        call: Call,
        /// The device index.
        dev: usize,
        /// How long the loader retried.
        waited: Duration,
    },
    /// A memory handle or request that belongs to another comm.
    WrongComm {
        /// The call it was passed to.
        call: Call,
    },
    /// `offset + len` does not lie inside the registered region.
    OutOfBounds {
        /// The call.
        call: Call,
        /// Requested offset.
        offset: usize,
        /// Requested length.
        len: usize,
        /// Length of the registered region.
        region_len: usize,
    },
    /// A size does not fit the v7 ABI's `int` (2 GiB − 1).
    TooLarge {
        /// The call.
        call: Call,
        /// The size asked for.
        len: usize,
    },
    /// A request that is not outstanding on this comm (already completed, or consumed).
    UnknownRequest {
        /// The call.
        call: Call,
    },
    /// The comm's request table is full; complete (and, for receives, consume) requests first.
    TooManyRequests {
        /// The call.
        call: Call,
        /// The table capacity.
        limit: usize,
    },
    /// `irecvConsumed` on a receive that `test` has not reported done.
    NotDone {
        /// The call.
        call: Call,
    },
    /// The plugin returned success but no request: NCCL's "try again later". Nothing is in
    /// flight; post again.
    NoRequest {
        /// `isend` or `irecv`.
        call: Call,
    },
    /// Deregistration refused while requests on the comm are pending; the registration stays
    /// until the comm is closed.
    Busy {
        /// The call.
        call: Call,
        /// Pending requests on the comm.
        pending: usize,
    },
    /// A post into a host buffer its owner holds with [`HostBuffer::lock`](super::HostBuffer::lock).
    Locked {
        /// `isend` or `irecv`.
        call: Call,
    },
    /// [`HostBuffer::lock`](super::HostBuffer::lock) refused: requests on the buffer are in
    /// flight (or it is locked already).
    InUse {
        /// Requests in flight on the buffer.
        requests: usize,
    },
    /// The device handle `accept` filled is not a usable unpack handle.
    BadDeviceHandle {
        /// What was wrong.
        what: &'static str,
    },
    /// A host buffer of this length could not be allocated.
    Alloc {
        /// Bytes asked for.
        len: usize,
    },
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { path } => {
                write!(f, "net plugin {}: no such file", path.display())
            }
            Self::NotSharedLibrary { path, reason } => write!(
                f,
                "net plugin {} is not a shared library (dlopen: {reason})",
                path.display()
            ),
            Self::Open { path, reason } => {
                write!(f, "cannot dlopen net plugin {}: {reason}", path.display())
            }
            Self::MissingSymbol { path, symbol, exported } => {
                write!(f, "net plugin {} does not export `{symbol}`; ", path.display())?;
                if exported.is_empty() {
                    f.write_str("it exports no ncclNetPlugin_*/ncclCollNetPlugin_* table")
                } else {
                    write!(f, "it exports {} (only ncclNetPlugin_v7 is supported)", exported.join(", "))
                }
            }
            Self::NullSlots { path, slots } => write!(
                f,
                "net plugin {}: required ncclNetPlugin_v7 slot(s) are NULL: {}",
                path.display(),
                slots.join(", ")
            ),
            Self::Init { path, name, rc } => {
                write!(f, "net plugin {} ({name}): init failed: {rc}", path.display())
            }
            Self::Call { call, rc } => write!(f, "plugin call {call} failed: {rc}"),
            Self::DeviceCall { call, dev, rc } => {
                write!(f, "plugin call {call} on device {dev} failed: {rc}")
            }
            Self::BadDevice { call, dev } => {
                write!(f, "{call}: device index {dev} does not fit a C int")
            }
            Self::BadOutput { call, what } => write!(f, "plugin call {call} broke the contract: {what}"),
            Self::Timeout { call, dev, waited } => write!(
                f,
                "plugin call {call} on device {dev} did not produce a comm within {waited:?}"
            ),
            Self::WrongComm { call } => {
                write!(f, "{call}: memory handle or request belongs to another comm")
            }
            Self::OutOfBounds { call, offset, len, region_len } => write!(
                f,
                "{call}: range {offset}+{len} is outside the registered region of {region_len} bytes"
            ),
            Self::TooLarge { call, len } => {
                write!(f, "{call}: {len} bytes do not fit the v7 ABI's int size")
            }
            Self::UnknownRequest { call } => {
                write!(f, "{call}: the request is not outstanding on this comm")
            }
            Self::TooManyRequests { call, limit } => {
                write!(f, "{call}: {limit} requests already outstanding on this comm")
            }
            Self::NotDone { call } => {
                write!(f, "{call}: the receive has not been reported done by test")
            }
            Self::NoRequest { call } => {
                write!(f, "plugin call {call} returned no request (not ready; post again)")
            }
            Self::Busy { call, pending } => write!(
                f,
                "{call}: {pending} request(s) pending on the comm; the registration stays until close"
            ),
            Self::Locked { call } => {
                write!(f, "{call}: the buffer is locked by its owner (HostBuffer::lock)")
            }
            Self::InUse { requests } => write!(
                f,
                "the buffer cannot be locked: {requests} request(s) on it are in flight, or it is locked already"
            ),
            Self::BadDeviceHandle { what } => write!(f, "receive device handle: {what}"),
            Self::Alloc { len } => write!(f, "cannot allocate a host buffer of {len} bytes"),
        }
    }
}

impl std::error::Error for PluginError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_names_are_nccls_slot_names() {
        let names: Vec<_> = Call::ALL.iter().map(|c| c.to_string()).collect();
        assert_eq!(names, SLOT_NAMES_V7[1..].to_vec());
        assert_eq!(Call::IrecvConsumed.slot(), 18);
        assert_eq!(Call::Init.slot(), 1);
    }

    #[test]
    fn setup_errors_name_the_path_and_the_cause() {
        let path = PathBuf::from("/opt/tcpx/libnccl-net.so");
        let e = PluginError::MissingSymbol {
            path: path.clone(),
            symbol: "ncclNetPlugin_v7",
            exported: vec!["ncclNetPlugin_v8", "ncclCollNetPlugin_v8"],
        };
        let s = e.to_string();
        assert!(s.contains("/opt/tcpx/libnccl-net.so"), "{s}");
        assert!(s.contains("ncclNetPlugin_v8, ncclCollNetPlugin_v8"), "{s}");
        let e = PluginError::Init {
            path,
            name: "GPUDirectTCPX_v7".into(),
            rc: NcclResult(3),
        };
        assert_eq!(
            e.to_string(),
            "net plugin /opt/tcpx/libnccl-net.so (GPUDirectTCPX_v7): init failed: ncclInternalError (3)"
        );
    }

    #[test]
    fn hot_path_errors_display_their_numbers() {
        let e = PluginError::OutOfBounds {
            call: Call::Isend,
            offset: 8,
            len: 16,
            region_len: 20,
        };
        assert_eq!(
            e.to_string(),
            "isend: range 8+16 is outside the registered region of 20 bytes"
        );
        let e = PluginError::Timeout {
            call: Call::Accept,
            dev: 3,
            waited: Duration::from_millis(5),
        };
        assert_eq!(
            e.to_string(),
            "plugin call accept on device 3 did not produce a comm within 5ms"
        );
    }
}
