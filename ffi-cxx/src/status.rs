//! Statuses, errors and the panic guard of the boundary.
//!
//! * [`Status`] (declared in the bridge) is what hot-path calls return; [`from_plugin`] maps a
//!   [`PluginError`] onto it together with the return code the C++ tree's `tcpx_*` wrapper
//!   would have given (the plugin's `ncclResult_t`, or TCPX's own answer for the misuses this
//!   layer catches before the plugin sees them).
//! * [`Error`] is what setup calls return; cxx turns it into a `rust::Error` exception whose
//!   `what()` is the message.
//! * Every call records its failure message in a per-thread slot that C++ reads with
//!   `last_error()` (`tcpx_last_error()` in `tcpx_interface.h`); success leaves it alone.
//! * [`guard`] / [`guard_result`] run a body under `catch_unwind`: nothing unwinds into C++.
//!
//! ```
//! use tcpx_ffi_cxx::bridge::ffi::Status;
//! use tcpx_ffi_cxx::status::{from_plugin, C_REFUSED};
//! use tcpx::net::{abi::NcclResult, Call, PluginError};
//! let e = PluginError::Call { call: Call::Test, rc: NcclResult::SYSTEM_ERROR };
//! assert_eq!(from_plugin(&e), (Status::PeerClosed, 2));
//! let e = PluginError::WrongComm { call: Call::Isend };
//! assert_eq!(from_plugin(&e), (Status::InvalidArgument, C_REFUSED));
//! ```

use std::cell::RefCell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tcpx::net::{abi::NcclResult, PluginError};

use crate::bridge::ffi::{Outcome, Status};

/// The C return code of a call this layer refused without asking the plugin (the C++ tree's
/// wrappers returned -1 for a missing plugin or a NULL argument).
pub const C_REFUSED: i32 = -1;
/// TCPX's `ncclInternalError`: its answer to a 17th request, a test that is not the head and an
/// out-of-order `irecvConsumed`. This layer gives the same code when it catches those first.
pub const C_TCPX_BUSY: i32 = 3;
/// TCPX's `ncclSystemError`: socket error or peer closed.
pub const C_PEER_CLOSED: i32 = 2;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `message` as this thread's last error.
pub fn set_last_error(message: impl fmt::Display) {
    LAST_ERROR.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            m.clear();
            let _ = fmt::Write::write_fmt(&mut *m, format_args!("{message}"));
        }
    });
}

/// Records a message from the C++ glue as this thread's last error.
pub fn record_error(message: &str) {
    guard(|| set_last_error(message), || ());
}

/// The message of this thread's last failed call ("" if none failed yet).
pub fn last_error() -> String {
    LAST_ERROR.with(|m| m.try_borrow().map(|m| m.clone()).unwrap_or_default())
}

/// A setup failure: a status for code that wants one, and the message the exception carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The closest status.
    pub status: Status,
    /// What went wrong, naming the call and its arguments.
    pub message: String,
}

impl Error {
    /// An error with a status and a message.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// An [`Status::InvalidArgument`] error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The status and C return code for a plugin-layer error.
pub fn from_plugin(e: &PluginError) -> (Status, i32) {
    match e {
        PluginError::Call { rc, .. } | PluginError::DeviceCall { rc, .. } => {
            if *rc == NcclResult::SYSTEM_ERROR {
                (Status::PeerClosed, rc.0)
            } else {
                (Status::PluginError, rc.0)
            }
        }
        PluginError::Init { rc, .. } => (Status::NoPlugin, rc.0),
        PluginError::NotFound { .. }
        | PluginError::NotSharedLibrary { .. }
        | PluginError::Open { .. }
        | PluginError::MissingSymbol { .. }
        | PluginError::NullSlots { .. } => (Status::NoPlugin, C_REFUSED),
        PluginError::Timeout { .. } => (Status::Timeout, C_REFUSED),
        PluginError::TooManyRequests { .. } => (Status::Busy, C_TCPX_BUSY),
        PluginError::NotDone { .. } => (Status::NotDone, C_TCPX_BUSY),
        PluginError::NoRequest { .. } => (Status::NotReady, C_REFUSED),
        PluginError::Busy { .. } | PluginError::Locked { .. } | PluginError::InUse { .. } => {
            (Status::Busy, C_REFUSED)
        }
        _ => (Status::InvalidArgument, C_REFUSED),
    }
}

/// An [`Outcome`] for success with `value`.
pub fn ok(value: u64) -> Outcome {
    Outcome {
        status: Status::Ok,
        rc: 0,
        value,
    }
}

/// A failed [`Outcome`]; records `message` as the thread's last error.
pub fn fail(status: Status, rc: i32, message: impl fmt::Display) -> Outcome {
    set_last_error(message);
    Outcome {
        status,
        rc,
        value: 0,
    }
}

/// A failed [`Outcome`] for a plugin-layer error.
pub fn fail_plugin(e: &PluginError) -> Outcome {
    let (status, rc) = from_plugin(e);
    fail(status, rc, e)
}

/// Runs `body`; a panic becomes `on_panic()` and a recorded message instead of unwinding.
pub fn guard<T>(body: impl FnOnce() -> T, on_panic: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(format_args!("internal error: {}", panic_text(&*payload)));
            on_panic()
        }
    }
}

/// [`guard`] for setup calls: a panic becomes an [`Status::Internal`] error; any error is also
/// recorded as the thread's last error.
pub fn guard_result<T>(body: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let r = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(payload) => Err(Error::new(
            Status::Internal,
            format!("internal error: {}", panic_text(&*payload)),
        )),
    };
    if let Err(e) = &r {
        set_last_error(&e.message);
    }
    r
}

/// An [`Outcome`] for a caught panic.
pub fn internal() -> Outcome {
    Outcome {
        status: Status::Internal,
        rc: C_REFUSED,
        value: 0,
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match *self {
            Status::Ok => "Ok",
            Status::NotReady => "NotReady",
            Status::Busy => "Busy",
            Status::InvalidArgument => "InvalidArgument",
            Status::NotHead => "NotHead",
            Status::NotDone => "NotDone",
            Status::PeerClosed => "PeerClosed",
            Status::PluginError => "PluginError",
            Status::Timeout => "Timeout",
            Status::NoPlugin => "NoPlugin",
            Status::Internal => "Internal",
            _ => "Unknown",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpx::net::Call;

    #[test]
    fn plugin_errors_map_to_the_trees_codes() {
        let call = |rc| PluginError::Call {
            call: Call::Isend,
            rc: NcclResult(rc),
        };
        assert_eq!(from_plugin(&call(2)), (Status::PeerClosed, 2));
        assert_eq!(from_plugin(&call(3)), (Status::PluginError, 3));
        assert_eq!(
            from_plugin(&PluginError::TooManyRequests {
                call: Call::Isend,
                limit: 32
            }),
            (Status::Busy, C_TCPX_BUSY)
        );
        assert_eq!(
            from_plugin(&PluginError::UnknownRequest { call: Call::Test }),
            (Status::InvalidArgument, C_REFUSED)
        );
    }

    #[test]
    fn panics_become_statuses_and_messages() {
        let o = guard(|| -> Outcome { panic!("boom") }, internal);
        assert_eq!(o.status, Status::Internal);
        assert!(last_error().contains("boom"), "{}", last_error());
        let r: Result<(), Error> = guard_result(|| panic!("bang"));
        assert_eq!(r.unwrap_err().status, Status::Internal);
        let r: Result<(), Error> = guard_result(|| Err(Error::invalid("nope")));
        assert_eq!(r.unwrap_err().message, "nope");
        assert_eq!(last_error(), "nope");
    }
}
