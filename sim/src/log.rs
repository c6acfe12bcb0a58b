//! Logging through the NCCL logger that `init` received.
//!
//! NCCL's logger is C-variadic (`void (*)(level, flags, file, line, fmt, ...)`). The sim calls it
//! with `fmt = "%s"` and one already formatted, NUL-terminated message, which is a valid variadic
//! call. `file` is the name of the plugin call (TCPX passes `__PRETTY_FUNCTION__` there), `line` 0.
//!
//! Invariants:
//! * Every message starts with `NET/tcpx-sim : ` so logs tell the sim from the real plugin
//!   (`NET/GPUDirectTCPX`).
//! * A contract violation is logged once, at the C boundary, as
//!   `"<call>: <what> [rule: <rule>; TCPX: <what TCPX does>; rc <code>]"` ([`Logger::violation`]).
//! * A [`Logger::Sink`] (a plain Rust fn) stands in for NCCL in unit tests.
//!
//! ```
//! use tcpx_sim::log::{Call, Logger};
//! fn sink(level: i32, msg: &str) { assert_eq!(level, 2); assert!(msg.contains("isend")); }
//! Logger::Sink(sink).warn(Call::Isend, format_args!("hello"));
//! ```

use core::ffi::{c_int, CStr};
use core::fmt;
use std::ffi::CString;

use tcpx::net::abi::{log_level, log_subsys, DebugLogger};

use crate::error::SimError;

/// The plugin call (or internal actor) a log line comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
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
    /// The call's name as NCCL's `ncclNet_v7_t` field.
    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("?")
    }

    /// The call's name as a C string (the logger's `file` argument).
    pub fn c_name(self) -> &'static CStr {
        match self {
            Call::Init => c"init",
            Call::Devices => c"devices",
            Call::GetProperties => c"getProperties",
            Call::Listen => c"listen",
            Call::Connect => c"connect",
            Call::Accept => c"accept",
            Call::RegMr => c"regMr",
            Call::DeregMr => c"deregMr",
            Call::Isend => c"isend",
            Call::Irecv => c"irecv",
            Call::Iflush => c"iflush",
            Call::Test => c"test",
            Call::CloseSend => c"closeSend",
            Call::CloseRecv => c"closeRecv",
            Call::CloseListen => c"closeListen",
            Call::GetDeviceMr => c"getDeviceMr",
            Call::IrecvConsumed => c"irecvConsumed",
        }
    }
}

/// Where log lines go.
#[derive(Clone, Copy)]
pub enum Logger {
    /// NCCL's logger, as passed to `init`.
    Nccl(DebugLogger),
    /// A Rust function (tests, in-process use): `(level, message)`.
    Sink(fn(level: c_int, msg: &str)),
}

impl fmt::Debug for Logger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Logger::Nccl(p) => write!(f, "Logger::Nccl({:p})", *p as *const ()),
            Logger::Sink(_) => write!(f, "Logger::Sink"),
        }
    }
}

impl Logger {
    /// Logs a WARN line.
    pub fn warn(&self, call: Call, args: fmt::Arguments<'_>) {
        self.emit(log_level::WARN, log_subsys::NET, call, args);
    }

    /// Logs an INFO line with the given NCCL subsystem flags.
    pub fn info(&self, flags: core::ffi::c_ulong, call: Call, args: fmt::Arguments<'_>) {
        self.emit(log_level::INFO, flags, call, args);
    }

    /// Logs the WARN line for a failed call: what happened, the TCPX rule, what TCPX does, the code.
    pub fn violation(&self, call: Call, e: &SimError) {
        let rc = e.rc();
        self.warn(
            call,
            format_args!(
                "{e} [rule: {}; TCPX: {}; rc {} ({})]",
                e.rule(),
                e.tcpx(),
                rc.name(),
                rc.0
            ),
        );
    }

    fn emit(&self, level: c_int, flags: core::ffi::c_ulong, call: Call, args: fmt::Arguments<'_>) {
        let text = format!("NET/tcpx-sim : {}: {args}", call.name());
        match self {
            Logger::Sink(f) => f(level, &text),
            Logger::Nccl(logger) => {
                let msg = CString::new(text.replace('\0', "?")).unwrap_or_default();
                // SAFETY: `logger` is the function NCCL (or the loader) passed to `init`, with the
                // ncclDebugLogger_t signature. The call passes the five fixed arguments with their C
                // types and one variadic `const char*` matching the "%s" format; both strings are
                // NUL-terminated and outlive the call.
                unsafe {
                    logger(
                        level,
                        flags,
                        call.c_name().as_ptr(),
                        0,
                        c"%s".as_ptr(),
                        msg.as_ptr(),
                    )
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static LINES: Mutex<Vec<(c_int, String)>> = Mutex::new(Vec::new());

    fn sink(level: c_int, msg: &str) {
        if let Ok(mut l) = LINES.lock() {
            l.push((level, msg.to_owned()));
        }
    }

    #[test]
    fn violation_line_names_rule_and_code() {
        Logger::Sink(sink).violation(Call::Irecv, &SimError::IrecvCount { n: 2 });
        let lines = LINES.lock().map(|l| l.clone()).unwrap_or_default();
        let (level, line) = lines
            .iter()
            .find(|(_, l)| l.contains("n=2"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(level, log_level::WARN);
        assert!(line.starts_with("NET/tcpx-sim : irecv: "), "{line}");
        assert!(line.contains("rule: irecv n == 1"), "{line}");
        assert!(line.contains("ncclInternalError (3)"), "{line}");
    }

    #[test]
    fn call_names_match_nccl_fields() {
        assert_eq!(Call::IrecvConsumed.name(), "irecvConsumed");
        assert_eq!(Call::GetProperties.name(), "getProperties");
    }
}
