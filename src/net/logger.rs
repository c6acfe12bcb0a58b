//! The plugin logger: NCCL's C-variadic `ncclDebugLogger_t`, forwarded to `tracing`.
//!
//! A plugin receives a logger in `init` and calls it for every WARN and INFO (TCPX stores it and
//! never checks it for NULL, so the loader always passes one). The logger is C-variadic, which
//! Rust cannot define on stable, so a C shim (`logger_shim.c`, compiled by `build.rs`) formats
//! the message with `vsnprintf` into a 2 KiB stack buffer and hands the finished string to
//! `tcpx_rs_net_log_sink` here, which emits a `tracing` event.
//!
//! Invariants:
//! * Events use the target `"tcpx::plugin"`; levels map VERSION→info, WARN→warn, INFO→info,
//!   ABORT→error, TRACE→trace (NONE is dropped; an unknown level becomes info).
//! * The shim asks `tcpx_rs_net_log_enabled` first, so a disabled level costs one call and no
//!   formatting. Nothing on this path allocates (`String::from_utf8_lossy` only allocates for
//!   invalid UTF-8).
//! * The sink never unwinds into C: a panicking subscriber is caught and dropped.
//! * Event fields: `flags` (NCCL subsystem bits), `file` (TCPX passes `__PRETTY_FUNCTION__`),
//!   `line`, `truncated` (the message was longer than the buffer) and the message.
//!
//! Example (what a plugin does with the pointer it got from `init`):
//!
//! ```
//! use tcpx::net::{abi::log_level, logger};
//! let log = logger::shim();
//! // SAFETY: a valid NUL-terminated format and matching arguments.
//! unsafe { log(log_level::INFO, 0x10, c"fn".as_ptr(), 1, c"%s %d".as_ptr(), c"ready".as_ptr(), 3) };
//! ```

use core::ffi::{c_char, c_int, c_ulong, CStr};
use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use tracing::Level;

use super::abi::{log_level, DebugLogger};

/// The `tracing` target of every plugin log event.
pub const TARGET: &str = "tcpx::plugin";

extern "C" {
    /// The C-variadic shim from `logger_shim.c`.
    fn tcpx_rs_net_logger(
        level: c_int,
        flags: c_ulong,
        file: *const c_char,
        line: c_int,
        fmt: *const c_char,
        ...
    );
}

/// The logger to hand to a plugin's `init`: a C-variadic function that formats its arguments
/// and forwards the message to `tracing` (target [`TARGET`]). Never NULL; safe to call from any
/// thread.
pub fn shim() -> DebugLogger {
    tcpx_rs_net_logger
}

/// The `tracing` level of an NCCL log level; `None` for `NCCL_LOG_NONE`.
pub const fn tracing_level(level: c_int) -> Option<Level> {
    match level {
        log_level::NONE => None,
        log_level::WARN => Some(Level::WARN),
        log_level::ABORT => Some(Level::ERROR),
        log_level::TRACE => Some(Level::TRACE),
        // VERSION, INFO and anything unknown.
        _ => Some(Level::INFO),
    }
}

/// Called by the C shim before it formats: is this NCCL level enabled for [`TARGET`]?
#[no_mangle]
extern "C" fn tcpx_rs_net_log_enabled(level: c_int) -> c_int {
    let enabled = catch_unwind(|| match tracing_level(level) {
        None => false,
        Some(Level::ERROR) => tracing::enabled!(target: TARGET, Level::ERROR),
        Some(Level::WARN) => tracing::enabled!(target: TARGET, Level::WARN),
        Some(Level::INFO) => tracing::enabled!(target: TARGET, Level::INFO),
        Some(Level::DEBUG) => tracing::enabled!(target: TARGET, Level::DEBUG),
        Some(_) => tracing::enabled!(target: TARGET, Level::TRACE),
    });
    c_int::from(enabled.unwrap_or(false))
}

/// Called by the C shim with the formatted message (`len` bytes at `msg`, not NUL-terminated).
///
/// # Safety
///
/// `file` is null or a NUL-terminated string, and `msg` is null or points to `len` readable
/// bytes; both stay valid for the call. The shim (`logger_shim.c`), its only caller, passes the
/// plugin's `__FILE__` and its own stack buffer.
#[no_mangle]
unsafe extern "C" fn tcpx_rs_net_log_sink(
    level: c_int,
    flags: c_ulong,
    file: *const c_char,
    line: c_int,
    msg: *const c_char,
    len: usize,
    truncated: c_int,
) {
    let file: Cow<'_, str> = if file.is_null() {
        Cow::Borrowed("")
    } else {
        // SAFETY: non-null, so NUL-terminated and valid for this call (the function's contract:
        // the plugin's `__FILE__`/`__PRETTY_FUNCTION__`, passed on by the shim).
        unsafe { CStr::from_ptr(file) }.to_string_lossy()
    };
    let msg: Cow<'_, str> = if msg.is_null() {
        Cow::Borrowed("")
    } else {
        // SAFETY: non-null, so `len` readable bytes valid for this call (the function's
        // contract: the shim's stack buffer).
        let bytes = unsafe { core::slice::from_raw_parts(msg.cast::<u8>(), len) };
        String::from_utf8_lossy(bytes)
    };
    let truncated = truncated != 0;
    // A panicking subscriber must not unwind into C; the event is dropped instead.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        emit(level, flags, &file, line, &msg, truncated)
    }));
}

fn emit(level: c_int, flags: c_ulong, file: &str, line: c_int, msg: &str, truncated: bool) {
    match tracing_level(level) {
        None => {}
        Some(Level::ERROR) => {
            tracing::error!(target: TARGET, flags, file, line, truncated, "{msg}")
        }
        Some(Level::WARN) => {
            tracing::warn!(target: TARGET, flags, file, line, truncated, "{msg}")
        }
        Some(Level::INFO) => {
            tracing::info!(target: TARGET, flags, file, line, truncated, "{msg}")
        }
        Some(Level::DEBUG) => {
            tracing::debug!(target: TARGET, flags, file, line, truncated, "{msg}")
        }
        Some(_) => {
            tracing::trace!(target: TARGET, flags, file, line, truncated, "{msg}")
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fmt::Debug;
    use std::sync::{Arc, Mutex};
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::subscriber::Interest;
    use tracing::{Event, Metadata, Subscriber};

    /// One captured event.
    #[derive(Debug, Default, Clone)]
    pub(crate) struct Captured {
        pub level: Option<Level>,
        pub target: String,
        pub message: String,
        pub file: String,
        pub line: i64,
        pub flags: u64,
        pub truncated: bool,
    }

    /// A minimal subscriber that records every event (no tracing-subscriber needed).
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub Arc<Mutex<Vec<Captured>>>);

    impl Capture {
        pub(crate) fn events(&self) -> Vec<Captured> {
            self.0.lock().map(|v| v.clone()).unwrap_or_default()
        }
    }

    struct Fields<'a>(&'a mut Captured);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            match field.name() {
                "message" => self.0.message = format!("{value:?}"),
                "file" => self.0.file = format!("{value:?}"),
                _ => {}
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.0.message = value.to_owned(),
                "file" => self.0.file = value.to_owned(),
                _ => {}
            }
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            if field.name() == "line" {
                self.0.line = value;
            }
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            match field.name() {
                "flags" => self.0.flags = value,
                "line" => self.0.line = value as i64,
                _ => {}
            }
        }
        fn record_bool(&mut self, field: &Field, value: bool) {
            if field.name() == "truncated" {
                self.0.truncated = value;
            }
        }
    }

    impl Subscriber for Capture {
        fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
            Interest::sometimes()
        }
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut c = Captured {
                level: Some(*event.metadata().level()),
                target: event.metadata().target().to_owned(),
                ..Captured::default()
            };
            event.record(&mut Fields(&mut c));
            if let Ok(mut v) = self.0.lock() {
                v.push(c);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn shim_formats_printf_arguments_and_forwards_to_tracing() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let log = shim();
            // SAFETY: valid NUL-terminated strings; the arguments match the format.
            unsafe {
                log(
                    log_level::WARN,
                    0x10,
                    c"tcpxConnect".as_ptr(),
                    42,
                    c"%s %d".as_ptr(),
                    c"hello".as_ptr(),
                    7 as c_int,
                );
            }
        });
        let events = capture.events();
        let ours: Vec<_> = events.iter().filter(|e| e.target == TARGET).collect();
        assert_eq!(ours.len(), 1, "{events:?}");
        let e = ours[0];
        assert_eq!(e.level, Some(Level::WARN));
        assert_eq!(e.message, "hello 7");
        assert_eq!(e.file, "tcpxConnect");
        assert_eq!(e.line, 42);
        assert_eq!(e.flags, 0x10);
        assert!(!e.truncated);
    }

    #[test]
    fn level_map_follows_nccl_levels() {
        let capture = Capture::default();
        let cases = [
            (log_level::VERSION, Level::INFO),
            (log_level::WARN, Level::WARN),
            (log_level::INFO, Level::INFO),
            (log_level::ABORT, Level::ERROR),
            (log_level::TRACE, Level::TRACE),
        ];
        tracing::subscriber::with_default(capture.clone(), || {
            for (nccl, _) in cases {
                // SAFETY: valid format, matching argument.
                unsafe {
                    shim()(nccl, 0, core::ptr::null(), 0, c"level %d".as_ptr(), nccl);
                }
            }
            // NCCL_LOG_NONE is dropped.
            // SAFETY: valid format without arguments.
            unsafe { shim()(log_level::NONE, 0, core::ptr::null(), 0, c"none".as_ptr()) };
        });
        let events: Vec<_> = capture
            .events()
            .into_iter()
            .filter(|e| e.target == TARGET)
            .collect();
        assert_eq!(events.len(), cases.len(), "{events:?}");
        for ((nccl, want), got) in cases.iter().zip(&events) {
            assert_eq!(got.level, Some(*want));
            assert_eq!(got.message, format!("level {nccl}"));
            assert_eq!(got.file, "");
        }
    }

    #[test]
    fn long_messages_are_truncated_and_flagged() {
        let capture = Capture::default();
        let long = std::ffi::CString::new("x".repeat(5000)).unwrap_or_default();
        tracing::subscriber::with_default(capture.clone(), || {
            // SAFETY: valid format, matching argument.
            unsafe {
                shim()(
                    log_level::INFO,
                    0,
                    c"f".as_ptr(),
                    1,
                    c"%s".as_ptr(),
                    long.as_ptr(),
                )
            };
        });
        let events: Vec<_> = capture
            .events()
            .into_iter()
            .filter(|e| e.target == TARGET)
            .collect();
        assert_eq!(events.len(), 1);
        assert!(events[0].truncated);
        assert_eq!(events[0].message.len(), 2047);
        assert!(events[0].message.bytes().all(|b| b == b'x'));
    }

    #[test]
    fn null_format_is_reported_not_dereferenced() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            // SAFETY: the shim checks `fmt` for NULL before using it.
            unsafe { shim()(log_level::WARN, 0, c"f".as_ptr(), 1, core::ptr::null()) };
        });
        let events: Vec<_> = capture
            .events()
            .into_iter()
            .filter(|e| e.target == TARGET)
            .collect();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "(NULL format string)");
    }
}
