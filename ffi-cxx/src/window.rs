//! The request window behind the C++ `SlidingWindow`: [`tcpx_core::window`] driven through the
//! comm registry.
//!
//! Shape kept from the C++ tree: `SlidingWindow(max_inflight)`, `add_request(req, chunk,
//! event)`, `try_release_oldest(comm, is_recv)` → 0 / 1 / -1, `drain_all`, `clear`. What
//! changed:
//! * `max_inflight` must be 1..=16 (TCPX's per-comm limit); an add beyond it is refused with
//!   [`Status::Busy`] (the tree silently accepted a 17th request, which TCPX then refused).
//! * Only the oldest request is tested, and a receive is consumed only after `test` reported it
//!   done and its event (if any) completed — the window's states make anything else
//!   unrepresentable.
//! * A test that fails for real (peer closed, plugin error, a bad comm) is -1, not "not ready",
//!   so a dead peer ends a drain instead of spinning forever. "Not your turn" (another request
//!   of the comm is older) is still 1.
//! * The window's direction is fixed by its first `try_release_oldest`; a later call with the
//!   other `is_recv` is -1 ([`Status::InvalidArgument`]).
//!
//! The window calls the plugin through the `tcpx_test` / `tcpx_irecv_consumed` symbols the
//! program links (via `cpp/src/tcpx_window_io.h`): this library's wrappers, or the C++ tree's
//! own `tcpx_impl.cc` — so a tree can swap its `SlidingWindow` before anything else. Requests are
//! whatever non-null pointer those wrappers handed out.
//!
//! Events: C++ attaches an opaque event (a `cudaEvent_t`) to a receive; once `test` reports the
//! receive done, [`window_try_release`] hands the event back (`wait_event`) instead of
//! consuming, C++ waits for it and calls [`window_event_done`], and the next call consumes and
//! releases. A receive without an event is consumed as soon as it is done.
//!
//! Unpack: with [`window_set_unpack`] on (C++ installed an unpack hook), a receive added
//! without an event is handed back when `test` reports it done (`unpack_request`); C++ unpacks
//! it (launches the kernel), gives the event with [`window_set_event`] (0 when the copy already
//! finished), and release continues as above: wait, then consume. The order TCPX needs — done,
//! unpack, event complete, `irecvConsumed` — is the only one the window allows.
//!
//! ```
//! use tcpx_ffi_cxx::bridge::ffi::Status;
//! use tcpx_ffi_cxx::window::{window_add, window_is_full, window_len, window_new};
//! let mut w = window_new(2).unwrap();
//! assert_eq!(window_add(&mut w, 0x7D00_0000_0000_0001, 0, 0), Status::Ok);
//! assert_eq!(window_add(&mut w, 0x7D00_0000_0000_0002, 1, 0), Status::Ok);
//! assert!(window_is_full(&w));
//! assert_eq!(window_add(&mut w, 0x7D00_0000_0000_0003, 2, 0), Status::Busy);
//! assert_eq!(window_len(&w), 2);
//! ```

use tcpx_core::window::{
    EntryState, EventId, Release, ReleaseIo, TcpxWindow, WindowKind, TCPX_MAX_REQUESTS,
};

use crate::bridge::ffi::{window_io_consume, window_io_test, Status, WindowRelease};
use crate::status::{
    guard, guard_result, set_last_error, Error, C_PEER_CLOSED, C_REFUSED, C_TCPX_BUSY,
};

/// Bytes recorded for every entry: `add_request` does not know the size, and a receive must
/// never skip its event step (the core window lets a 0-byte receive do that).
const UNKNOWN_BYTES: u32 = u32::MAX;

/// A `SlidingWindow`'s state.
pub struct Window {
    max_inflight: usize,
    inner: TcpxWindow<u64>,
    /// `Some(is_recv)` once the first `try_release_oldest` fixed the direction.
    direction: Option<bool>,
    /// Event of each entry, by `seq % 16` (at most 16 entries live, in FIFO order).
    events: [u64; TCPX_MAX_REQUESTS],
    /// Whether C++ reported that event complete.
    event_done: [bool; TCPX_MAX_REQUESTS],
    /// Sequence number of the oldest entry and of the next add.
    oldest_seq: u64,
    next_seq: u64,
    /// C++ unpacks done receives that came without an event.
    unpack: bool,
    /// The oldest entry was handed to C++ for its unpack; its event is not set yet.
    unpack_pending: bool,
}

fn key(seq: u64) -> usize {
    (seq % TCPX_MAX_REQUESTS as u64) as usize
}

/// `SlidingWindow(max_inflight)`; throws unless `1 <= max_inflight <= 16`.
pub fn window_new(max_inflight: i32) -> Result<Box<Window>, Error> {
    guard_result(|| {
        let max = usize::try_from(max_inflight)
            .ok()
            .filter(|m| (1..=TCPX_MAX_REQUESTS).contains(m))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "SlidingWindow: max_inflight {max_inflight} is not in 1..={TCPX_MAX_REQUESTS} (TCPX keeps at most 16 requests per comm)"
                ))
            })?;
        Ok(Box::new(Window {
            max_inflight: max,
            inner: TcpxWindow::new(WindowKind::Send),
            direction: None,
            events: [0; TCPX_MAX_REQUESTS],
            event_done: [false; TCPX_MAX_REQUESTS],
            oldest_seq: 0,
            next_seq: 0,
            unpack: false,
            unpack_pending: false,
        }))
    })
}

/// `add_request`: [`Status::Busy`] when `max_inflight` requests are held,
/// [`Status::InvalidArgument`] for a NULL request or a negative chunk.
pub fn window_add(w: &mut Window, request: u64, chunk: i32, event: u64) -> Status {
    guard(
        || {
            if request == 0 {
                set_last_error("SlidingWindow::add_request: NULL request");
                return Status::InvalidArgument;
            }
            let Ok(chunk) = u32::try_from(chunk) else {
                set_last_error("SlidingWindow::add_request: negative chunk index");
                return Status::InvalidArgument;
            };
            if w.inner.len() >= w.max_inflight {
                set_last_error(format_args!(
                    "SlidingWindow::add_request: {} requests in flight already (max_inflight); release the oldest first",
                    w.max_inflight
                ));
                return Status::Busy;
            }
            if w.inner.post(request, chunk, UNKNOWN_BYTES).is_err() {
                return Status::Busy;
            }
            let k = key(w.next_seq);
            w.events[k] = event;
            w.event_done[k] = event == 0;
            w.next_seq += 1;
            Status::Ok
        },
        || Status::Internal,
    )
}

/// Requests held.
pub fn window_len(w: &Window) -> i32 {
    w.inner.len() as i32
}

/// `max_inflight`.
pub fn window_capacity(w: &Window) -> i32 {
    w.max_inflight as i32
}

/// Whether `max_inflight` requests are held.
pub fn window_is_full(w: &Window) -> bool {
    w.inner.len() >= w.max_inflight
}

/// The plugin calls, for the core window.
struct Io {
    comm: u64,
    /// The event C++ must wait for, when `event_complete` said no.
    wait: u64,
    events: [u64; TCPX_MAX_REQUESTS],
    event_done: [bool; TCPX_MAX_REQUESTS],
}

impl ReleaseIo<u64> for Io {
    type Error = Status;

    fn test(&mut self, request: u64) -> Result<bool, Status> {
        let t = window_io_test(request);
        match (t.rc, t.done) {
            (0, done) => Ok(done != 0),
            // "Not this request's turn": an older request of the comm goes first (TCPX's rc 3
            // for a test that is not the head).
            (C_TCPX_BUSY, _) => Ok(false),
            // The peer closed after this request completed (the C++ tree's rc 2, done 1).
            (C_PEER_CLOSED, 1) => Ok(true),
            (rc, _) => Err(rc_status(rc)),
        }
    }

    fn event_complete(&mut self, event: EventId) -> Result<bool, Status> {
        let k = event.0 as usize % TCPX_MAX_REQUESTS;
        if self.event_done[k] {
            Ok(true)
        } else {
            self.wait = self.events[k];
            Ok(false)
        }
    }

    fn consume(&mut self, request: u64) -> Result<(), Status> {
        match window_io_consume(self.comm, request) {
            0 => Ok(()),
            rc => Err(rc_status(rc)),
        }
    }
}

/// The status of a failed `tcpx_*` return code.
fn rc_status(rc: i32) -> Status {
    match rc {
        C_REFUSED => Status::InvalidArgument,
        C_PEER_CLOSED => Status::PeerClosed,
        _ => Status::PluginError,
    }
}

fn release(code: i32, status: Status) -> WindowRelease {
    WindowRelease {
        code,
        status,
        wait_event: 0,
        unpack_request: 0,
        unpack_chunk: 0,
    }
}

/// Rebuilds the window as a receive window: only possible while every entry is still posted
/// (nothing was tested yet), which holds before the first `try_release_oldest`.
fn bind(w: &mut Window, is_recv: bool) -> bool {
    match w.direction {
        Some(d) => d == is_recv,
        None => {
            if is_recv {
                let mut recv = TcpxWindow::new(WindowKind::RecvUnpack);
                for e in w.inner.iter() {
                    if e.state != EntryState::Posted
                        || recv.post(e.request, e.chunk, e.bytes).is_err()
                    {
                        return false;
                    }
                }
                w.inner = recv;
            }
            w.direction = Some(is_recv);
            true
        }
    }
}

/// One `try_release_oldest` step; see the module docs.
pub fn window_try_release(w: &mut Window, comm: u64, is_recv: bool) -> WindowRelease {
    guard(
        || {
            if w.inner.is_empty() {
                return release(0, Status::Ok);
            }
            if !bind(w, is_recv) {
                set_last_error(
                    "SlidingWindow::try_release_oldest: this window already releases the other direction",
                );
                return release(-1, Status::InvalidArgument);
            }
            if w.unpack_pending {
                // C++ has not given the unpack's event yet: hand the request back again.
                let Some(oldest) = w.inner.oldest() else {
                    return release(-1, Status::Internal);
                };
                return WindowRelease {
                    unpack_request: oldest.request,
                    unpack_chunk: oldest.chunk as i32,
                    ..release(1, Status::NotReady)
                };
            }
            let mut io = Io {
                comm,
                wait: 0,
                events: w.events,
                event_done: w.event_done,
            };
            if is_recv {
                // A receive window never tests inside the core's try_release (done is where an
                // unpack would start): test the head here and move it to "unpacking" with its
                // event, completed or not.
                if let Some(head) = w.inner.next_to_test() {
                    if head.request == w.inner.oldest().map_or(0, |o| o.request) {
                        match io.test(head.request) {
                            Ok(false) => return release(1, Status::NotReady),
                            Ok(true) => {
                                let k = key(w.oldest_seq);
                                if w.inner.mark_done(head.request).is_err()
                                    || w.inner.start_unpack(EventId(k as u32)).is_err()
                                {
                                    return release(-1, Status::Internal);
                                }
                                if w.unpack && w.events[k] == 0 {
                                    w.event_done[k] = false;
                                    w.unpack_pending = true;
                                    return WindowRelease {
                                        unpack_request: head.request,
                                        unpack_chunk: head.chunk as i32,
                                        ..release(1, Status::NotReady)
                                    };
                                }
                            }
                            Err(s) => return failed(s),
                        }
                    }
                }
            }
            match w.inner.try_release_oldest(&mut io) {
                Release::Empty => release(0, Status::Ok),
                Release::Released(_) => {
                    let k = key(w.oldest_seq);
                    w.events[k] = 0;
                    w.event_done[k] = false;
                    w.oldest_seq += 1;
                    release(0, Status::Ok)
                }
                Release::NotReady => WindowRelease {
                    wait_event: io.wait,
                    ..release(1, Status::NotReady)
                },
                Release::Failed(f) => failed(f.error),
            }
        },
        || release(-1, Status::Internal),
    )
}

fn failed(status: Status) -> WindowRelease {
    release(-1, status)
}

/// C++ waited for the oldest entry's event.
pub fn window_event_done(w: &mut Window) -> Status {
    guard(
        || {
            if w.inner.is_empty() {
                return Status::InvalidArgument;
            }
            w.event_done[key(w.oldest_seq)] = true;
            Status::Ok
        },
        || Status::Internal,
    )
}

/// Whether C++ unpacks done receives that came without an event (an unpack hook is set).
pub fn window_set_unpack(w: &mut Window, on: bool) {
    w.unpack = on;
}

/// The event of the unpack C++ just launched for the oldest receive (0: already finished).
pub fn window_set_event(w: &mut Window, event: u64) -> Status {
    guard(
        || {
            if !w.unpack_pending {
                set_last_error("SlidingWindow: no receive is waiting for its unpack event");
                return Status::InvalidArgument;
            }
            let k = key(w.oldest_seq);
            w.events[k] = event;
            w.event_done[k] = event == 0;
            w.unpack_pending = false;
            Status::Ok
        },
        || Status::Internal,
    )
}

/// `clear`: drops every entry without waiting; returns the events C++ should destroy.
pub fn window_clear(w: &mut Window) -> Vec<u64> {
    guard(
        || {
            let mut events = Vec::new();
            for i in 0..w.inner.len() as u64 {
                let k = key(w.oldest_seq + i);
                if w.events[k] != 0 && !w.event_done[k] {
                    events.push(w.events[k]);
                }
            }
            let kind = w.inner.kind();
            w.inner = TcpxWindow::new(kind);
            w.events = [0; TCPX_MAX_REQUESTS];
            w.event_done = [false; TCPX_MAX_REQUESTS];
            w.oldest_seq = w.next_seq;
            w.unpack_pending = false;
            events
        },
        Vec::new,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::token::{Token, TokenKind};

    fn req(n: u32) -> u64 {
        Token {
            kind: TokenKind::Request,
            slot: 0,
            gen: 0,
            low: n,
        }
        .encode()
    }

    #[test]
    fn capacity_is_checked_at_construction_and_on_add() {
        assert!(window_new(0).is_err());
        assert!(window_new(17).is_err());
        let mut w = window_new(16).unwrap();
        for i in 0..16 {
            assert_eq!(window_add(&mut w, req(i + 1), i as i32, 0), Status::Ok);
        }
        assert_eq!(window_add(&mut w, req(17), 16, 0), Status::Busy);
        assert_eq!(window_len(&w), 16);
        assert_eq!(window_add(&mut w, 0, 0, 0), Status::InvalidArgument);
        assert_eq!(window_add(&mut w, 0x1000, -1, 0), Status::InvalidArgument);
    }

    #[test]
    fn an_unknown_request_is_minus_one_and_an_empty_window_zero() {
        let mut w = window_new(4).unwrap();
        assert_eq!(window_try_release(&mut w, 0, false).code, 0);
        // A request token whose comm does not exist: the linked tcpx_test refuses it (-1).
        assert_eq!(window_add(&mut w, req(1), 0, 0), Status::Ok);
        let r = window_try_release(&mut w, 0, false);
        assert_eq!((r.code, r.status), (-1, Status::InvalidArgument));
        // The direction is fixed now.
        let r = window_try_release(&mut w, 0, true);
        assert_eq!((r.code, r.status), (-1, Status::InvalidArgument));
    }

    #[test]
    fn clear_returns_pending_events() {
        let mut w = window_new(4).unwrap();
        assert_eq!(window_add(&mut w, req(1), 0, 0xE1), Status::Ok);
        assert_eq!(window_add(&mut w, req(2), 1, 0), Status::Ok);
        assert_eq!(window_clear(&mut w), vec![0xE1]);
        assert_eq!(window_len(&w), 0);
        assert_eq!(window_event_done(&mut w), Status::InvalidArgument);
    }
}
