//! The per-comm request window: a fixed-capacity FIFO of outstanding TCPX requests.
//!
//! TCPX keeps at most [`TCPX_MAX_REQUESTS`] (16) requests per comm; a 17th `isend`/`irecv` fails
//! with `ncclInternalError`. A send request frees its place when `test` reports done; a receive
//! holds its place until `irecvConsumed`. `test` may only be called on the oldest request that is
//! not done yet, and `irecvConsumed` only in FIFO order. The window mirrors that contract so the
//! engine cannot break it by accident.
//!
//! # Lifecycle
//!
//! ```text
//! post ──► Posted ──mark_done──► Done ──start_unpack(event)──► Unpacking ──► released
//!                                  └──────────── (send, host receive) ──────────►┘
//! ```
//!
//! * A send request is released as soon as it is done ([`WindowKind::Send`]).
//! * A host-memory receive is consumed right after it is done ([`WindowKind::RecvHost`]).
//! * A GPU receive is unpacked from the bounce pool first: `Done → Unpacking(event)`, and it is
//!   released only after the event completed and `irecvConsumed` succeeded
//!   ([`WindowKind::RecvUnpack`]).
//!
//! # Invariants
//!
//! Because only the oldest posted request may be tested and only the oldest entry may be
//! released, states along the FIFO are monotone:
//!
//! ```text
//! oldest ─► [Unpacking …][Done …][Posted …] ◄─ newest
//! ```
//!
//! The window stores one ring buffer and three run lengths (unpacking, done, posted); the state of
//! an entry is derived from its position, so a Done entry behind a Posted one, or a release out of
//! FIFO order, cannot be represented. Every misuse is a [`WindowError`], never a panic, and the
//! window never holds more than `N` entries. A capacity of 0 is a compile-time error.
//!
//! The C++ tree's `SlidingWindow` used three parallel vectors and got this wrong in three ways:
//! it could test a request that was not the head, consume out of order, and silently accept a
//! 17th request. Here those are [`WindowError::NotHead`], impossible, and [`WindowError::Full`].
//!
//! # Example
//!
//! ```
//! use tcpx_core::window::{EntryState, EventId, TcpxWindow, WindowError, WindowKind};
//!
//! // A GPU receive window; requests are whatever handle the plugin returned (here a u64).
//! let mut window: TcpxWindow<u64> = TcpxWindow::new(WindowKind::RecvUnpack);
//! window.post(0xa0, 0, 512 * 1024)?;
//! window.post(0xa1, 1, 512 * 1024)?;
//!
//! // Only the oldest posted request may be tested.
//! assert_eq!(window.next_to_test().map(|e| e.request), Some(0xa0));
//! assert_eq!(window.mark_done(0xa1), Err(WindowError::NotHead));
//! window.mark_done(0xa0)?; // `test` said done=1
//!
//! // Read and validate the unpack metadata, launch the kernel, record event 7.
//! let entry = window.start_unpack(EventId(7))?;
//! assert_eq!(entry.state, EntryState::Unpacking { event: EventId(7) });
//!
//! // Event 7 completed and `irecvConsumed` succeeded: release the oldest entry.
//! let released = window.release_oldest()?;
//! assert_eq!((released.request, released.chunk), (0xa0, 0));
//! assert_eq!((window.len(), window.posted()), (1, 1));
//! # Ok::<(), WindowError>(())
//! ```

use core::fmt;
use core::iter::FusedIterator;

/// The most requests TCPX keeps outstanding per comm (`MAX_REQUESTS` in the plugin's
/// `work_queue.h`). Send and receive requests of one comm share it.
pub const TCPX_MAX_REQUESTS: usize = 16;

/// A window with TCPX's per-comm capacity.
pub type TcpxWindow<R> = RequestWindow<R, TCPX_MAX_REQUESTS>;

/// Names a completion event in the caller's event pool, recorded after an unpack launch.
///
/// The window never interprets it; it hands it back to [`ReleaseIo::event_complete`]. Several
/// entries may carry the same event (one launch unpacks a whole batch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(pub u32);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event {}", self.0)
    }
}

/// What the requests of a window are, which decides how a done request is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WindowKind {
    /// `isend` requests: released as soon as `test` reports done (TCPX frees them itself).
    Send,
    /// `irecv` into host memory: no unpack; `irecvConsumed` right after done, then released.
    RecvHost,
    /// `irecv` into GPU memory through the bounce pool: done → unpacking (an event) → after the
    /// event completed, `irecvConsumed`, then released. An entry with 0 bytes has nothing to
    /// unpack and may be consumed straight from done.
    RecvUnpack,
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WindowKind::Send => "send",
            WindowKind::RecvHost => "host receive",
            WindowKind::RecvUnpack => "unpack receive",
        })
    }
}

/// Where an entry is in its lifecycle; derived from its position in the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// Posted to the plugin, `test` has not reported done yet.
    Posted,
    /// `test` reported done; not yet unpacking or released.
    Done,
    /// The unpack of this receive was launched; `event` completes when it has finished.
    Unpacking {
        /// The event recorded after the unpack launch.
        event: EventId,
    },
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryState::Posted => f.write_str("posted"),
            EntryState::Done => f.write_str("done"),
            EntryState::Unpacking { event } => write!(f, "unpacking ({event})"),
        }
    }
}

/// One outstanding request, as the window reports it (a copy; entries are small).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry<R> {
    /// The plugin's request handle.
    pub request: R,
    /// The caller's chunk number for this request (e.g. its index in the transfer).
    pub chunk: u32,
    /// Bytes posted with the request (TCPX sizes are C `int`s; chunks are ≤ 4 MiB).
    pub bytes: u32,
    /// The entry's state.
    pub state: EntryState,
}

/// A misuse of the window. Each leaves the window unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WindowError {
    /// `post` on a window that already holds `capacity` requests.
    Full {
        /// The window's capacity.
        capacity: usize,
    },
    /// `mark_done` when no request is in the posted state.
    NothingPosted,
    /// `mark_done` with a request that is not the oldest posted one (TCPX only lets you test
    /// the oldest outstanding request).
    NotHead,
    /// `start_unpack` when no request is done and waiting for its unpack.
    NothingDone,
    /// `start_unpack` on a window whose requests are never unpacked.
    NoUnpack {
        /// The window's kind.
        kind: WindowKind,
    },
    /// `release_oldest` while the oldest request is still posted (not done).
    NotReady,
    /// `release_oldest` on a GPU receive that is done but whose unpack was never started:
    /// consuming it now would let the NIC overwrite data not yet copied out.
    NotUnpacked,
    /// `release_oldest` on an empty window.
    Empty,
}

impl fmt::Display for WindowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WindowError::Full { capacity } => {
                write!(f, "request window full: {capacity} requests outstanding")
            }
            WindowError::NothingPosted => f.write_str("no posted request to mark done"),
            WindowError::NotHead => {
                f.write_str("request is not the oldest posted request of the window")
            }
            WindowError::NothingDone => f.write_str("no done request waiting for an unpack"),
            WindowError::NoUnpack { kind } => {
                write!(f, "a {kind} window has no unpack step")
            }
            WindowError::NotReady => f.write_str("oldest request is not done yet"),
            WindowError::NotUnpacked => {
                f.write_str("oldest receive is done but its unpack was never started")
            }
            WindowError::Empty => f.write_str("request window is empty"),
        }
    }
}

impl core::error::Error for WindowError {}

/// The plugin and GPU calls [`RequestWindow::try_release_oldest`] needs; the caller implements it.
///
/// This trait is the window's only I/O. `Error` is whatever the caller wants back when a call
/// fails (a plugin return code, a CUDA error); it is returned unchanged in [`ReleaseFailure`].
pub trait ReleaseIo<R> {
    /// What a failed call reports.
    type Error;

    /// `test(request)`: `Ok(true)` when the request is done. Return `Ok(false)` for results that
    /// mean "try again later" and `Err` only for real failures.
    ///
    /// The C++ tree treated every non-zero return code as "not ready", which turned a dead peer
    /// (rc 2 with done=0) into an endless wait; the implementation decides here instead.
    fn test(&mut self, request: R) -> Result<bool, Self::Error>;

    /// Whether `event` (recorded after an unpack launch) has completed. Never called for
    /// send or host-receive windows.
    fn event_complete(&mut self, event: EventId) -> Result<bool, Self::Error>;

    /// `irecvConsumed(comm, 1, request)`. Never called for send windows.
    fn consume(&mut self, request: R) -> Result<(), Self::Error>;
}

/// The step of [`RequestWindow::try_release_oldest`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReleaseStep {
    /// [`ReleaseIo::test`].
    Test,
    /// [`ReleaseIo::event_complete`].
    EventQuery,
    /// [`ReleaseIo::consume`].
    Consume,
}

impl fmt::Display for ReleaseStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReleaseStep::Test => "test",
            ReleaseStep::EventQuery => "event query",
            ReleaseStep::Consume => "irecvConsumed",
        })
    }
}

/// A failed call during [`RequestWindow::try_release_oldest`]. The entry stays in the window, in
/// the state it had reached (a request that `test` already reported done stays done and is not
/// tested again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReleaseFailure<R, E> {
    /// Which call failed.
    pub step: ReleaseStep,
    /// The oldest entry, as it is now.
    pub entry: Entry<R>,
    /// What the call returned.
    pub error: E,
}

/// Outcome of [`RequestWindow::try_release_oldest`].
///
/// The C++ tree's `SlidingWindow::try_release_oldest` returned an `int`; [`Release::code`] gives
/// the same numbers: `Empty` and `Released` → 0, `NotReady` → 1, `Failed` → -1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum Release<R, E> {
    /// The window was empty; nothing to do.
    Empty,
    /// The oldest entry was released (it is returned as it was just before).
    Released(Entry<R>),
    /// The oldest entry cannot be released yet: not done, its event has not completed, or it is a
    /// GPU receive whose unpack was not started.
    NotReady,
    /// A call failed; the entry stays in the window.
    Failed(ReleaseFailure<R, E>),
}

impl<R, E> Release<R, E> {
    /// The C++ tree's return code: 0 (released, or nothing to release), 1 (not ready), -1 (error).
    pub const fn code(&self) -> i32 {
        match self {
            Release::Empty | Release::Released(_) => 0,
            Release::NotReady => 1,
            Release::Failed(_) => -1,
        }
    }
}

/// What the window stores per place. `event` is meaningful only while the entry is unpacking
/// (it is written by `start_unpack`); the state itself is never stored.
#[derive(Clone, Copy, Debug)]
struct Stored<R> {
    request: R,
    chunk: u32,
    bytes: u32,
    event: EventId,
}

/// A FIFO of up to `N` outstanding requests of one comm; see the [module docs](self).
///
/// `R` is the plugin's request handle (anything `Copy + PartialEq`, e.g. a pointer newtype).
/// The window lives in a plain array: no allocation, `const` construction.
#[derive(Clone, Debug)]
pub struct RequestWindow<R, const N: usize> {
    /// Places; exactly the `len()` places starting at `head` (wrapping) are `Some`.
    slots: [Option<Stored<R>>; N],
    kind: WindowKind,
    /// Place of the oldest entry, `< N`.
    head: usize,
    /// Entries at offsets `0..unpacking` from `head` are unpacking.
    unpacking: usize,
    /// Entries at offsets `unpacking..unpacking + done` are done.
    done: usize,
    /// Entries at offsets `unpacking + done..len()` are posted.
    posted: usize,
    /// Most entries ever held at once.
    max_depth: usize,
}

impl<R: Copy + PartialEq, const N: usize> RequestWindow<R, N> {
    const CAPACITY_IS_NONZERO: () =
        assert!(N > 0, "a RequestWindow needs a capacity of at least 1");

    /// An empty window for requests of `kind`.
    pub const fn new(kind: WindowKind) -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::CAPACITY_IS_NONZERO;
        Self {
            slots: [None; N],
            kind,
            head: 0,
            unpacking: 0,
            done: 0,
            posted: 0,
            max_depth: 0,
        }
    }

    /// What the window's requests are.
    pub const fn kind(&self) -> WindowKind {
        self.kind
    }

    /// The most entries the window holds (`N`).
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Entries held, in any state.
    pub const fn len(&self) -> usize {
        self.unpacking + self.done + self.posted
    }

    /// Whether the window holds no entry.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the window holds `N` entries, so the next `post` fails.
    pub const fn is_full(&self) -> bool {
        self.len() == N
    }

    /// Entries in the posted state.
    pub const fn posted(&self) -> usize {
        self.posted
    }

    /// Entries in the done state.
    pub const fn done(&self) -> usize {
        self.done
    }

    /// Entries in the unpacking state.
    pub const fn unpacking(&self) -> usize {
        self.unpacking
    }

    /// The most entries the window has held at once (high-water mark).
    pub const fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Records a request that the plugin just accepted. Call it only after `isend`/`irecv`
    /// returned a non-NULL request — and check [`is_full`](Self::is_full) *before* calling the
    /// plugin, since TCPX itself rejects a 17th request.
    ///
    /// # Errors
    ///
    /// [`WindowError::Full`] when `N` entries are held; the window is unchanged.
    pub fn post(&mut self, request: R, chunk: u32, bytes: u32) -> Result<(), WindowError> {
        let len = self.len();
        if len >= N {
            return Err(WindowError::Full { capacity: N });
        }
        let place = self.place(len);
        let Some(slot) = self.slots.get_mut(place) else {
            return Err(WindowError::Full { capacity: N });
        };
        // `event` is written by `start_unpack` before it is ever read.
        *slot = Some(Stored {
            request,
            chunk,
            bytes,
            event: EventId(0),
        });
        self.posted += 1;
        if len + 1 > self.max_depth {
            self.max_depth = len + 1;
        }
        Ok(())
    }

    /// The oldest posted entry: the only request TCPX lets you `test`.
    pub fn next_to_test(&self) -> Option<Entry<R>> {
        if self.posted == 0 {
            return None;
        }
        self.get(self.unpacking + self.done)
    }

    /// Records that `test(request)` reported done. `request` must be the oldest posted one.
    ///
    /// # Errors
    ///
    /// [`WindowError::NothingPosted`] if no entry is posted, [`WindowError::NotHead`] if
    /// `request` is not the oldest posted one. The window is unchanged on error.
    pub fn mark_done(&mut self, request: R) -> Result<(), WindowError> {
        let head = self.next_to_test().ok_or(WindowError::NothingPosted)?;
        if head.request != request {
            return Err(WindowError::NotHead);
        }
        self.posted -= 1;
        self.done += 1;
        Ok(())
    }

    /// Moves the oldest done entry to unpacking with `event` (recorded after the unpack launch
    /// that covers it) and returns it in its new state.
    ///
    /// # Errors
    ///
    /// [`WindowError::NoUnpack`] unless the window is [`WindowKind::RecvUnpack`];
    /// [`WindowError::NothingDone`] if no entry is done. The window is unchanged on error.
    pub fn start_unpack(&mut self, event: EventId) -> Result<Entry<R>, WindowError> {
        if self.kind != WindowKind::RecvUnpack {
            return Err(WindowError::NoUnpack { kind: self.kind });
        }
        if self.done == 0 {
            return Err(WindowError::NothingDone);
        }
        let place = self.place(self.unpacking);
        let Some(Some(stored)) = self.slots.get_mut(place) else {
            return Err(WindowError::NothingDone);
        };
        stored.event = event;
        self.done -= 1;
        self.unpacking += 1;
        self.get(self.unpacking - 1).ok_or(WindowError::NothingDone)
    }

    /// The oldest entry: the next one to be released.
    pub fn oldest(&self) -> Option<Entry<R>> {
        self.get(0)
    }

    /// The entry `index` places after the oldest (0 is the oldest), if there is one.
    pub fn get(&self, index: usize) -> Option<Entry<R>> {
        if index >= self.len() {
            return None;
        }
        let stored = self.slots.get(self.place(index))?.as_ref()?;
        let state = if index < self.unpacking {
            EntryState::Unpacking {
                event: stored.event,
            }
        } else if index < self.unpacking + self.done {
            EntryState::Done
        } else {
            EntryState::Posted
        };
        Some(Entry {
            request: stored.request,
            chunk: stored.chunk,
            bytes: stored.bytes,
            state,
        })
    }

    /// The entries, oldest to newest (for stall dumps and accounting).
    pub fn iter(&self) -> Iter<'_, R, N> {
        Iter {
            window: self,
            front: 0,
            back: self.len(),
        }
    }

    /// Removes and returns the oldest entry. The caller states that everything the entry's kind
    /// needs has happened: a send is done; a receive is done and consumed; a GPU receive's unpack
    /// event completed and `irecvConsumed` succeeded.
    ///
    /// # Errors
    ///
    /// [`WindowError::Empty`] if the window is empty, [`WindowError::NotReady`] if the oldest
    /// entry is still posted, [`WindowError::NotUnpacked`] if it is a done
    /// [`WindowKind::RecvUnpack`] entry with bytes whose unpack was never started. The window is
    /// unchanged on error.
    pub fn release_oldest(&mut self) -> Result<Entry<R>, WindowError> {
        let oldest = self.oldest().ok_or(WindowError::Empty)?;
        match oldest.state {
            EntryState::Posted => return Err(WindowError::NotReady),
            EntryState::Done if self.needs_unpack(&oldest) => return Err(WindowError::NotUnpacked),
            EntryState::Done => self.done -= 1,
            EntryState::Unpacking { .. } => self.unpacking -= 1,
        }
        if let Some(slot) = self.slots.get_mut(self.head) {
            *slot = None;
        }
        self.head = self.place(1);
        Ok(oldest)
    }

    /// Releases the oldest entry if it can be, calling the plugin through `io` as needed — the
    /// C++ tree's `try_release_oldest`, without its bugs.
    ///
    /// Only the oldest entry is looked at:
    /// * empty window → [`Release::Empty`];
    /// * posted, in a send or host-receive window → `io.test`; not done → [`Release::NotReady`];
    ///   done → the entry becomes done and release continues below. In a
    ///   [`WindowKind::RecvUnpack`] window a posted head is **not** tested: done is where the
    ///   caller must read the unpack metadata, so it drives [`next_to_test`](Self::next_to_test)
    ///   and [`mark_done`](Self::mark_done) itself; the result is `NotReady`;
    /// * done: send → released; host receive → `io.consume`, then released; GPU receive →
    ///   `NotReady` until its unpack is started (a 0-byte one is consumed and released);
    /// * unpacking → `io.event_complete`; not complete → `NotReady`; complete → `io.consume`, then
    ///   released.
    ///
    /// Any `Err` from `io` gives [`Release::Failed`] and leaves the entry in the window, in the
    /// state it reached, so a retry never tests a done request again.
    pub fn try_release_oldest<I: ReleaseIo<R>>(&mut self, io: &mut I) -> Release<R, I::Error> {
        let Some(mut oldest) = self.oldest() else {
            return Release::Empty;
        };
        if oldest.state == EntryState::Posted {
            if self.kind == WindowKind::RecvUnpack {
                return Release::NotReady;
            }
            match io.test(oldest.request) {
                Ok(false) => return Release::NotReady,
                Ok(true) => {}
                Err(error) => return failed(ReleaseStep::Test, oldest, error),
            }
            if self.mark_done(oldest.request).is_err() {
                return Release::NotReady;
            }
            oldest.state = EntryState::Done;
        }
        let consume = match (self.kind, oldest.state) {
            (WindowKind::Send, _) => false,
            (_, EntryState::Done) if self.needs_unpack(&oldest) => return Release::NotReady,
            (_, EntryState::Unpacking { event }) => match io.event_complete(event) {
                Ok(true) => true,
                Ok(false) => return Release::NotReady,
                Err(error) => return failed(ReleaseStep::EventQuery, oldest, error),
            },
            _ => true,
        };
        if consume {
            if let Err(error) = io.consume(oldest.request) {
                return failed(ReleaseStep::Consume, oldest, error);
            }
        }
        match self.release_oldest() {
            Ok(entry) => Release::Released(entry),
            Err(_) => Release::NotReady,
        }
    }

    /// Whether a done entry must go through unpacking before it may be consumed.
    fn needs_unpack(&self, entry: &Entry<R>) -> bool {
        self.kind == WindowKind::RecvUnpack && entry.bytes > 0
    }

    /// Array place of the entry `offset` places after the oldest (`offset <= N`).
    const fn place(&self, offset: usize) -> usize {
        let place = self.head + offset;
        if place >= N {
            place - N
        } else {
            place
        }
    }
}

fn failed<R, E>(step: ReleaseStep, entry: Entry<R>, error: E) -> Release<R, E> {
    Release::Failed(ReleaseFailure { step, entry, error })
}

/// Iterator over a window's entries, oldest to newest; see [`RequestWindow::iter`].
#[derive(Clone, Debug)]
pub struct Iter<'a, R, const N: usize> {
    window: &'a RequestWindow<R, N>,
    front: usize,
    back: usize,
}

impl<R: Copy + PartialEq, const N: usize> Iterator for Iter<'_, R, N> {
    type Item = Entry<R>;

    fn next(&mut self) -> Option<Entry<R>> {
        if self.front >= self.back {
            return None;
        }
        let entry = self.window.get(self.front);
        self.front += 1;
        entry
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.back.saturating_sub(self.front);
        (left, Some(left))
    }
}

impl<R: Copy + PartialEq, const N: usize> DoubleEndedIterator for Iter<'_, R, N> {
    fn next_back(&mut self) -> Option<Entry<R>> {
        if self.front >= self.back {
            return None;
        }
        self.back -= 1;
        self.window.get(self.back)
    }
}

impl<R: Copy + PartialEq, const N: usize> ExactSizeIterator for Iter<'_, R, N> {}

impl<R: Copy + PartialEq, const N: usize> FusedIterator for Iter<'_, R, N> {}

impl<'a, R: Copy + PartialEq, const N: usize> IntoIterator for &'a RequestWindow<R, N> {
    type Item = Entry<R>;
    type IntoIter = Iter<'a, R, N>;

    fn into_iter(self) -> Iter<'a, R, N> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::string::ToString;
    use std::vec::Vec;

    type W = TcpxWindow<u64>;

    /// A scripted `ReleaseIo` that logs every call.
    #[derive(Debug, Default)]
    struct Script {
        test: Option<Result<bool, u8>>,
        event: Option<Result<bool, u8>>,
        consume: Option<Result<(), u8>>,
        calls: Vec<Call>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Call {
        Test(u64),
        Event(EventId),
        Consume(u64),
    }

    impl ReleaseIo<u64> for Script {
        type Error = u8;
        fn test(&mut self, request: u64) -> Result<bool, u8> {
            self.calls.push(Call::Test(request));
            self.test.unwrap_or(Ok(true))
        }
        fn event_complete(&mut self, event: EventId) -> Result<bool, u8> {
            self.calls.push(Call::Event(event));
            self.event.unwrap_or(Ok(true))
        }
        fn consume(&mut self, request: u64) -> Result<(), u8> {
            self.calls.push(Call::Consume(request));
            self.consume.unwrap_or(Ok(()))
        }
    }

    fn states(w: &W) -> Vec<EntryState> {
        w.iter().map(|e| e.state).collect()
    }

    fn requests(w: &W) -> Vec<u64> {
        w.iter().map(|e| e.request).collect()
    }

    #[test]
    fn new_window_is_empty_and_const() {
        const W0: W = W::new(WindowKind::RecvHost);
        let w = W0;
        assert_eq!(w.capacity(), TCPX_MAX_REQUESTS);
        assert_eq!(w.kind(), WindowKind::RecvHost);
        assert!(w.is_empty());
        assert!(!w.is_full());
        assert_eq!((w.len(), w.posted(), w.done(), w.unpacking()), (0, 0, 0, 0));
        assert_eq!(w.max_depth(), 0);
        assert_eq!(w.oldest(), None);
        assert_eq!(w.next_to_test(), None);
        assert_eq!(w.iter().count(), 0);
    }

    #[test]
    fn seventeenth_post_is_full_and_changes_nothing() {
        let mut w = W::new(WindowKind::Send);
        for i in 0..16 {
            assert_eq!(w.post(i, i as u32, 100), Ok(()));
        }
        assert!(w.is_full());
        let before: Vec<_> = w.iter().collect();
        assert_eq!(w.post(99, 99, 100), Err(WindowError::Full { capacity: 16 }));
        assert_eq!(w.iter().collect::<Vec<_>>(), before);
        assert_eq!((w.len(), w.max_depth()), (16, 16));
    }

    #[test]
    fn post_records_entry_as_posted() {
        let mut w = W::new(WindowKind::Send);
        w.post(7, 3, 4096).unwrap();
        let e = w.oldest().unwrap();
        assert_eq!(
            e,
            Entry {
                request: 7,
                chunk: 3,
                bytes: 4096,
                state: EntryState::Posted
            }
        );
        assert_eq!(w.next_to_test(), Some(e));
        assert_eq!((w.len(), w.posted(), w.max_depth()), (1, 1, 1));
    }

    #[test]
    fn only_the_oldest_posted_can_be_marked_done() {
        let mut w = W::new(WindowKind::Send);
        assert_eq!(w.mark_done(1), Err(WindowError::NothingPosted));
        w.post(1, 0, 1).unwrap();
        w.post(2, 1, 1).unwrap();
        assert_eq!(w.mark_done(2), Err(WindowError::NotHead));
        assert_eq!(states(&w), [EntryState::Posted, EntryState::Posted]);
        w.mark_done(1).unwrap();
        assert_eq!(w.next_to_test().map(|e| e.request), Some(2));
        assert_eq!(w.mark_done(1), Err(WindowError::NotHead));
        w.mark_done(2).unwrap();
        assert_eq!(w.mark_done(2), Err(WindowError::NothingPosted));
        assert_eq!(states(&w), [EntryState::Done, EntryState::Done]);
        assert_eq!((w.posted(), w.done()), (0, 2));
    }

    #[test]
    fn start_unpack_only_on_unpack_windows_and_done_entries() {
        for kind in [WindowKind::Send, WindowKind::RecvHost] {
            let mut w = W::new(kind);
            w.post(1, 0, 1).unwrap();
            w.mark_done(1).unwrap();
            assert_eq!(
                w.start_unpack(EventId(0)),
                Err(WindowError::NoUnpack { kind })
            );
            assert_eq!(states(&w), [EntryState::Done]);
        }
        let mut w = W::new(WindowKind::RecvUnpack);
        assert_eq!(w.start_unpack(EventId(0)), Err(WindowError::NothingDone));
        w.post(1, 0, 10).unwrap();
        w.post(2, 1, 10).unwrap();
        w.post(3, 2, 10).unwrap();
        assert_eq!(w.start_unpack(EventId(0)), Err(WindowError::NothingDone));
        w.mark_done(1).unwrap();
        w.mark_done(2).unwrap();
        let e = w.start_unpack(EventId(5)).unwrap();
        assert_eq!(
            (e.request, e.state),
            (1, EntryState::Unpacking { event: EventId(5) })
        );
        assert_eq!(
            states(&w),
            [
                EntryState::Unpacking { event: EventId(5) },
                EntryState::Done,
                EntryState::Posted
            ]
        );
        let e = w.start_unpack(EventId(6)).unwrap();
        assert_eq!(
            (e.request, e.state),
            (2, EntryState::Unpacking { event: EventId(6) })
        );
        assert_eq!(w.start_unpack(EventId(7)), Err(WindowError::NothingDone));
        assert_eq!((w.unpacking(), w.done(), w.posted()), (2, 0, 1));
    }

    #[test]
    fn release_oldest_misuse() {
        let mut w = W::new(WindowKind::RecvUnpack);
        assert_eq!(w.release_oldest(), Err(WindowError::Empty));
        w.post(1, 0, 10).unwrap();
        assert_eq!(w.release_oldest(), Err(WindowError::NotReady));
        w.mark_done(1).unwrap();
        assert_eq!(w.release_oldest(), Err(WindowError::NotUnpacked));
        assert_eq!(states(&w), [EntryState::Done]);
        w.start_unpack(EventId(1)).unwrap();
        let e = w.release_oldest().unwrap();
        assert_eq!(e.state, EntryState::Unpacking { event: EventId(1) });
        assert!(w.is_empty());
        assert_eq!(w.release_oldest(), Err(WindowError::Empty));
    }

    #[test]
    fn zero_byte_unpack_receive_releases_from_done() {
        let mut w = W::new(WindowKind::RecvUnpack);
        w.post(1, 0, 0).unwrap();
        w.mark_done(1).unwrap();
        assert_eq!(w.release_oldest().map(|e| e.request), Ok(1));
    }

    #[test]
    fn send_and_host_receive_release_from_done() {
        for kind in [WindowKind::Send, WindowKind::RecvHost] {
            let mut w = W::new(kind);
            w.post(1, 0, 10).unwrap();
            w.post(2, 1, 10).unwrap();
            assert_eq!(w.release_oldest(), Err(WindowError::NotReady));
            w.mark_done(1).unwrap();
            let e = w.release_oldest().unwrap();
            assert_eq!((e.request, e.state), (1, EntryState::Done));
            assert_eq!(w.release_oldest(), Err(WindowError::NotReady));
            assert_eq!(requests(&w), [2]);
        }
    }

    #[test]
    fn fifo_order_and_monotone_states() {
        let mut w = W::new(WindowKind::RecvUnpack);
        for i in 0..10 {
            w.post(100 + i, i as u32, 1).unwrap();
        }
        for i in 0..6 {
            w.mark_done(100 + i).unwrap();
        }
        for _ in 0..3 {
            w.start_unpack(EventId(9)).unwrap();
        }
        let s = states(&w);
        assert_eq!(s.len(), 10);
        assert!(s[..3]
            .iter()
            .all(|s| matches!(s, EntryState::Unpacking { .. })));
        assert!(s[3..6].iter().all(|s| *s == EntryState::Done));
        assert!(s[6..].iter().all(|s| *s == EntryState::Posted));
        assert_eq!(requests(&w), (100..110).collect::<Vec<_>>());
        let rev: Vec<_> = w.iter().rev().map(|e| e.request).collect();
        assert_eq!(rev, (100..110).rev().collect::<Vec<_>>());
        assert_eq!(w.iter().len(), 10);
        assert_eq!((&w).into_iter().nth(4).map(|e| e.chunk), Some(4));
        assert_eq!(w.get(9).map(|e| e.request), Some(109));
        assert_eq!(w.get(10), None);
        for i in 0..3 {
            assert_eq!(w.release_oldest().map(|e| e.request), Ok(100 + i));
        }
        assert_eq!(w.release_oldest(), Err(WindowError::NotUnpacked));
    }

    #[test]
    fn wraps_around_many_times() {
        let mut w = W::new(WindowKind::RecvHost);
        let mut next_post = 0u64;
        let mut next_release = 0u64;
        for round in 0..2000u64 {
            let burst = 1 + (round * 7 % 16);
            while w.len() < burst as usize {
                w.post(next_post, next_post as u32, 1).unwrap();
                next_post += 1;
            }
            let drain = 1 + (round * 5 % w.len() as u64);
            for _ in 0..drain {
                let head = w.next_to_test().unwrap().request;
                w.mark_done(head).unwrap();
                let e = w.release_oldest().unwrap();
                assert_eq!(e.request, next_release);
                assert_eq!(e.chunk, next_release as u32);
                next_release += 1;
            }
            assert_eq!(w.len() as u64, next_post - next_release);
            assert_eq!(requests(&w), (next_release..next_post).collect::<Vec<_>>());
        }
        assert!(next_post > 10 * 16);
        assert_eq!(w.max_depth(), 16);
    }

    #[test]
    fn try_release_send() {
        let mut w = W::new(WindowKind::Send);
        let mut io = Script::default();
        assert_eq!(w.try_release_oldest(&mut io), Release::Empty);
        assert!(io.calls.is_empty());
        w.post(1, 0, 10).unwrap();
        w.post(2, 1, 10).unwrap();
        io.test = Some(Ok(false));
        assert_eq!(w.try_release_oldest(&mut io), Release::NotReady);
        io.test = Some(Err(2));
        let r = w.try_release_oldest(&mut io);
        assert_eq!(r.code(), -1);
        let Release::Failed(f) = r else {
            panic!("expected failure, got {r:?}")
        };
        assert_eq!(
            (f.step, f.entry.request, f.error),
            (ReleaseStep::Test, 1, 2)
        );
        assert_eq!(states(&w), [EntryState::Posted, EntryState::Posted]);
        io.test = Some(Ok(true));
        let r = w.try_release_oldest(&mut io);
        assert_eq!(r.code(), 0);
        assert!(matches!(
            r,
            Release::Released(Entry {
                request: 1,
                state: EntryState::Done,
                ..
            })
        ));
        assert_eq!(io.calls, [Call::Test(1), Call::Test(1), Call::Test(1)]);
        assert_eq!(requests(&w), [2]);
    }

    #[test]
    fn try_release_host_receive_consumes_and_never_retests() {
        let mut w = W::new(WindowKind::RecvHost);
        let mut io = Script::default();
        w.post(1, 0, 10).unwrap();
        io.consume = Some(Err(3));
        let r = w.try_release_oldest(&mut io);
        assert!(matches!(
            r,
            Release::Failed(ReleaseFailure {
                step: ReleaseStep::Consume,
                error: 3,
                ..
            })
        ));
        assert_eq!(states(&w), [EntryState::Done]);
        io.consume = None;
        let r = w.try_release_oldest(&mut io);
        assert!(matches!(r, Release::Released(Entry { request: 1, .. })));
        assert_eq!(
            io.calls,
            [Call::Test(1), Call::Consume(1), Call::Consume(1)]
        );
        assert!(w.is_empty());
    }

    #[test]
    fn try_release_unpack_receive() {
        let mut w = W::new(WindowKind::RecvUnpack);
        let mut io = Script::default();
        w.post(1, 0, 10).unwrap();
        w.post(2, 1, 0).unwrap();
        // A posted head is the caller's to test.
        assert_eq!(w.try_release_oldest(&mut io), Release::NotReady);
        assert!(io.calls.is_empty());
        w.mark_done(1).unwrap();
        // Done with bytes but not unpacking: never consumed.
        assert_eq!(w.try_release_oldest(&mut io), Release::NotReady);
        assert!(io.calls.is_empty());
        w.start_unpack(EventId(4)).unwrap();
        io.event = Some(Ok(false));
        assert_eq!(w.try_release_oldest(&mut io), Release::NotReady);
        io.event = Some(Err(1));
        assert!(matches!(
            w.try_release_oldest(&mut io),
            Release::Failed(ReleaseFailure {
                step: ReleaseStep::EventQuery,
                error: 1,
                ..
            })
        ));
        io.event = Some(Ok(true));
        assert!(matches!(
            w.try_release_oldest(&mut io),
            Release::Released(Entry { request: 1, .. })
        ));
        assert_eq!(
            io.calls,
            [
                Call::Event(EventId(4)),
                Call::Event(EventId(4)),
                Call::Event(EventId(4)),
                Call::Consume(1)
            ]
        );
        // The 0-byte receive needs no unpack.
        w.mark_done(2).unwrap();
        io.calls.clear();
        assert!(matches!(
            w.try_release_oldest(&mut io),
            Release::Released(Entry {
                request: 2,
                bytes: 0,
                ..
            })
        ));
        assert_eq!(io.calls, [Call::Consume(2)]);
    }

    #[test]
    fn release_codes_match_the_cpp_tree() {
        let failure = ReleaseFailure {
            step: ReleaseStep::Consume,
            entry: Entry {
                request: 0u64,
                chunk: 0,
                bytes: 0,
                state: EntryState::Done,
            },
            error: (),
        };
        assert_eq!(Release::<u64, ()>::Empty.code(), 0);
        assert_eq!(Release::<u64, ()>::Released(failure.entry).code(), 0);
        assert_eq!(Release::<u64, ()>::NotReady.code(), 1);
        assert_eq!(Release::Failed(failure).code(), -1);
    }

    #[test]
    fn displays() {
        let errors = [
            WindowError::Full { capacity: 16 },
            WindowError::NothingPosted,
            WindowError::NotHead,
            WindowError::NothingDone,
            WindowError::NoUnpack {
                kind: WindowKind::Send,
            },
            WindowError::NotReady,
            WindowError::NotUnpacked,
            WindowError::Empty,
        ];
        let texts: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts[0], "request window full: 16 requests outstanding");
        assert_eq!(texts[4], "a send window has no unpack step");
        for (i, t) in texts.iter().enumerate() {
            assert!(!t.is_empty());
            assert!(texts[..i].iter().all(|u| u != t), "duplicate message {t}");
        }
        assert_eq!(
            EntryState::Unpacking { event: EventId(3) }.to_string(),
            "unpacking (event 3)"
        );
        assert_eq!(ReleaseStep::Consume.to_string(), "irecvConsumed");
        assert_eq!(WindowKind::RecvUnpack.to_string(), "unpack receive");
    }

    #[test]
    fn small_capacity_window() {
        let mut w: RequestWindow<u8, 1> = RequestWindow::new(WindowKind::Send);
        w.post(1, 0, 0).unwrap();
        assert_eq!(w.post(2, 0, 0), Err(WindowError::Full { capacity: 1 }));
        w.mark_done(1).unwrap();
        w.release_oldest().unwrap();
        w.post(2, 0, 0).unwrap();
        assert_eq!(w.oldest().map(|e| e.request), Some(2));
    }

    // ---- model check ----

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Post {
            bytes: u32,
        },
        MarkDoneHead,
        MarkDone(u64),
        StartUnpack(u32),
        Release,
        TryRelease {
            test: Result<bool, u8>,
            event: Result<bool, u8>,
            consume: Result<(), u8>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let io_bool = prop_oneof![Just(Ok(true)), Just(Ok(false)), (0u8..4).prop_map(Err)];
        let io_unit = prop_oneof![3 => Just(Ok(())), 1 => (0u8..4).prop_map(Err)];
        prop_oneof![
            4 => prop_oneof![Just(0u32), 1u32..10_000].prop_map(|bytes| Op::Post { bytes }),
            3 => Just(Op::MarkDoneHead),
            1 => (0u64..40).prop_map(Op::MarkDone),
            2 => (0u32..8).prop_map(Op::StartUnpack),
            2 => Just(Op::Release),
            3 => (io_bool.clone(), io_bool, io_unit)
                .prop_map(|(test, event, consume)| Op::TryRelease { test, event, consume }),
        ]
    }

    fn kind() -> impl Strategy<Value = WindowKind> {
        prop_oneof![
            Just(WindowKind::Send),
            Just(WindowKind::RecvHost),
            Just(WindowKind::RecvUnpack)
        ]
    }

    /// The obvious model: a deque of entries with explicit states, searched linearly.
    struct Model {
        kind: WindowKind,
        q: VecDeque<Entry<u64>>,
        max_depth: usize,
    }

    impl Model {
        fn first(&self, pred: impl Fn(&EntryState) -> bool) -> Option<usize> {
            self.q.iter().position(|e| pred(&e.state))
        }
        fn needs_unpack(&self, e: &Entry<u64>) -> bool {
            self.kind == WindowKind::RecvUnpack && e.bytes > 0
        }
        fn release(&mut self) -> Result<Entry<u64>, WindowError> {
            let e = *self.q.front().ok_or(WindowError::Empty)?;
            match e.state {
                EntryState::Posted => Err(WindowError::NotReady),
                EntryState::Done if self.needs_unpack(&e) => Err(WindowError::NotUnpacked),
                _ => Ok(self.q.pop_front().unwrap()),
            }
        }
        fn mark_done(&mut self, r: u64) -> Result<(), WindowError> {
            let i = self
                .first(|s| *s == EntryState::Posted)
                .ok_or(WindowError::NothingPosted)?;
            if self.q[i].request != r {
                return Err(WindowError::NotHead);
            }
            self.q[i].state = EntryState::Done;
            Ok(())
        }
        fn try_release(&mut self, io: &mut Script) -> Release<u64, u8> {
            let Some(front) = self.q.front().copied() else {
                return Release::Empty;
            };
            let mut e = front;
            if e.state == EntryState::Posted {
                if self.kind == WindowKind::RecvUnpack {
                    return Release::NotReady;
                }
                match io.test(e.request) {
                    Ok(true) => {}
                    Ok(false) => return Release::NotReady,
                    Err(error) => return failed(ReleaseStep::Test, e, error),
                }
                e.state = EntryState::Done;
                self.q[0] = e;
            }
            match e.state {
                EntryState::Done if self.needs_unpack(&e) => return Release::NotReady,
                EntryState::Unpacking { event } => match io.event_complete(event) {
                    Ok(true) => {}
                    Ok(false) => return Release::NotReady,
                    Err(error) => return failed(ReleaseStep::EventQuery, e, error),
                },
                _ => {}
            }
            if self.kind != WindowKind::Send {
                if let Err(error) = io.consume(e.request) {
                    return failed(ReleaseStep::Consume, e, error);
                }
            }
            Release::Released(self.q.pop_front().unwrap())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn agrees_with_model(kind in kind(), ops in proptest::collection::vec(op(), 0..300)) {
            let mut w = W::new(kind);
            let mut m = Model { kind, q: VecDeque::new(), max_depth: 0 };
            let mut next_request = 0u64;
            for op in ops {
                match op {
                    Op::Post { bytes } => {
                        let r = next_request;
                        let expect = if m.q.len() == 16 {
                            Err(WindowError::Full { capacity: 16 })
                        } else {
                            m.q.push_back(Entry {
                                request: r, chunk: r as u32, bytes, state: EntryState::Posted,
                            });
                            m.max_depth = m.max_depth.max(m.q.len());
                            next_request += 1;
                            Ok(())
                        };
                        prop_assert_eq!(w.post(r, r as u32, bytes), expect);
                    }
                    Op::MarkDoneHead => {
                        let r = w.next_to_test().map_or(u64::MAX, |e| e.request);
                        prop_assert_eq!(w.mark_done(r), m.mark_done(r));
                    }
                    Op::MarkDone(r) => prop_assert_eq!(w.mark_done(r), m.mark_done(r)),
                    Op::StartUnpack(ev) => {
                        let event = EventId(ev);
                        let expect = if kind != WindowKind::RecvUnpack {
                            Err(WindowError::NoUnpack { kind })
                        } else if let Some(i) = m.first(|s| *s == EntryState::Done) {
                            m.q[i].state = EntryState::Unpacking { event };
                            Ok(m.q[i])
                        } else {
                            Err(WindowError::NothingDone)
                        };
                        prop_assert_eq!(w.start_unpack(event), expect);
                    }
                    Op::Release => prop_assert_eq!(w.release_oldest(), m.release()),
                    Op::TryRelease { test, event, consume } => {
                        let script = || Script {
                            test: Some(test), event: Some(event), consume: Some(consume),
                            calls: Vec::new(),
                        };
                        let (mut io_w, mut io_m) = (script(), script());
                        let got = w.try_release_oldest(&mut io_w);
                        let want = m.try_release(&mut io_m);
                        prop_assert_eq!(got, want);
                        prop_assert_eq!(io_w.calls, io_m.calls);
                    }
                }
                let entries: Vec<_> = w.iter().collect();
                prop_assert_eq!(&entries, &m.q.iter().copied().collect::<Vec<_>>());
                let count = |f: fn(&EntryState) -> bool| m.q.iter().filter(|e| f(&e.state)).count();
                prop_assert_eq!(w.posted(), count(|s| *s == EntryState::Posted));
                prop_assert_eq!(w.done(), count(|s| *s == EntryState::Done));
                prop_assert_eq!(w.unpacking(), count(|s| matches!(s, EntryState::Unpacking { .. })));
                prop_assert_eq!(w.len(), m.q.len());
                prop_assert_eq!(w.is_full(), m.q.len() == 16);
                prop_assert_eq!(w.max_depth(), m.max_depth);
                prop_assert_eq!(w.oldest(), m.q.front().copied());
                prop_assert_eq!(
                    w.next_to_test(),
                    m.first(|s| *s == EntryState::Posted).map(|i| m.q[i])
                );
                // States along the FIFO are monotone: unpacking, then done, then posted.
                let rank = |s: &EntryState| match s {
                    EntryState::Unpacking { .. } => 0,
                    EntryState::Done => 1,
                    EntryState::Posted => 2,
                };
                prop_assert!(entries.windows(2).all(|p| rank(&p[0].state) <= rank(&p[1].state)));
            }
        }
    }
}
