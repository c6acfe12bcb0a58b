//! A lock-free, fixed-capacity, single-producer single-consumer ring.
//!
//! The progress thread takes submissions (`recv`, `send`) from one ring and hands completions to
//! the user through another; exactly one thread pushes and exactly one thread pops each ring.
//! [`Ring`] owns the storage; [`Ring::split`] hands out its one [`Producer`] and its one
//! [`Consumer`].
//!
//! # Capacity
//!
//! A `Ring<T, N>` holds **N** items, not N − 1: a ring of 16 takes 16 pushes before
//! [`Producer::push`] gives a value back. Any `N` from 1 to `usize::MAX / 2` works (it need not be a
//! power of two); `N = 0` is a compile-time error. The head and tail indices run over `0..2N`, so
//! "empty" (`head == tail`) and "full" (`tail − head ≡ N`) are different states without a spare
//! slot.
//!
//! # Handles
//!
//! The halves are generic over the handle `P: Deref<Target = Ring<T, N>> + Clone` that they reach
//! the ring through: `&Ring` for a ring on the stack or in a `static` (scoped threads, tests), or
//! `Arc<Ring>` in the `tcpx` crate, where the progress thread outlives any stack frame (this crate
//! has no `alloc`, so it never names `Arc`). A handle is split at most once per ring, which is what
//! makes `push(&mut self)` and `pop(&mut self)` sound: there is never a second producer or a second
//! consumer. Each half also remembers the address its handle pointed at when split and checks it on
//! every call, so a `Deref` impl that later points somewhere else reaches no ring at all (the ring
//! then looks permanently full to the producer and empty to the consumer).
//!
//! # Invariants
//!
//! * `head` is written only by the consumer and `tail` only by the producer; each side keeps its
//!   own index in the half (the authoritative copy) and a cached copy of the other side's, which
//!   it re-reads from the shared atomic only when the cache says "full" (producer) or "empty"
//!   (consumer), crossbeam-SPSC style.
//! * The slots `head, head+1, …, tail−1` (mod 2N, mapped to `0..N`) hold initialised values; all
//!   other slots are uninitialised. Dropping the ring drops exactly the initialised ones.
//!
//! # Memory ordering
//!
//! * The producer writes a slot, then stores `tail` with `Release`; the consumer loads `tail` with
//!   `Acquire` before reading any slot below it. The slot write therefore happens-before the read.
//! * The consumer moves a value out of a slot, then stores `head` with `Release`; the producer loads
//!   `head` with `Acquire` before reusing a slot below it. The read therefore happens-before the
//!   overwrite.
//! * Each side's cache of the other's index only ever lags the real value, so a stale cache can
//!   make the ring look fuller (to the producer) or emptier (to the consumer) than it is, never the
//!   other way round; both then re-load with `Acquire`.
//!
//! The protocol is model-checked with loom: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo
//! test -p tcpx-core --release --lib ring::loom_tests`.
//!
//! # Example
//!
//! ```
//! use tcpx_core::ring::Ring;
//!
//! let ring: Ring<u32, 4> = Ring::new();
//! let (mut tx, mut rx) = Ring::split(&ring).unwrap();
//! std::thread::scope(|s| {
//!     s.spawn(move || {
//!         for i in 0..100 {
//!             let mut v = i;
//!             while let Err(back) = tx.push(v) {
//!                 v = back;
//!                 std::hint::spin_loop();
//!             }
//!         }
//!     });
//!     let mut next = 0;
//!     while next < 100 {
//!         if let Some(v) = rx.pop() {
//!             assert_eq!(v, next);
//!             next += 1;
//!         }
//!     }
//! });
//! ```

use core::fmt;
use core::marker::PhantomData;
use core::mem::MaybeUninit;
use core::ops::{Deref, DerefMut};

use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// A value padded and aligned to 128 bytes, so that two of them never share a cache line (nor an
/// adjacent-line prefetch pair on x86).
///
/// ```
/// use tcpx_core::ring::CachePadded;
///
/// let counter = CachePadded::new(7_u64);
/// assert_eq!(*counter, 7);
/// assert_eq!(core::mem::align_of_val(&counter), 128);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(align(128))]
pub struct CachePadded<T> {
    value: T,
}

impl<T> CachePadded<T> {
    /// Pads `value`.
    ///
    /// ```
    /// use tcpx_core::ring::CachePadded;
    ///
    /// let padded = CachePadded::new([0_u8; 3]);
    /// assert_eq!(core::mem::size_of_val(&padded), 128);
    /// ```
    #[inline]
    pub const fn new(value: T) -> Self {
        Self { value }
    }

    /// Removes the padding.
    ///
    /// ```
    /// use tcpx_core::ring::CachePadded;
    ///
    /// assert_eq!(CachePadded::new(5_u32).into_inner(), 5);
    /// ```
    #[inline]
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for CachePadded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for CachePadded<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

/// Why [`Ring::split`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SplitError {
    /// The ring was split before; it has (or had) its one producer and one consumer.
    AlreadySplit,
    /// The handle and its clone dereference to different rings, so they cannot share one.
    HandleMismatch,
}

impl fmt::Display for SplitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AlreadySplit => {
                f.write_str("ring was already split into a producer and a consumer")
            }
            Self::HandleMismatch => {
                f.write_str("ring handle and its clone point at different rings")
            }
        }
    }
}

impl core::error::Error for SplitError {}

/// A fixed-capacity single-producer single-consumer ring of `N` values of `T` (see the
/// [module docs](self) for capacity, handles and ordering).
///
/// A ring does nothing until [`split`](Ring::split); dropping it drops the values still inside.
///
/// ```
/// use tcpx_core::ring::Ring;
///
/// static COMPLETIONS: Ring<u64, 8> = Ring::new();
/// let (mut tx, mut rx) = Ring::split(&COMPLETIONS).unwrap();
/// tx.push(42).unwrap();
/// assert_eq!(rx.pop(), Some(42));
/// ```
///
/// Values cross threads, so the halves can be sent to another thread only when `T: Send`:
///
/// ```compile_fail
/// use std::rc::Rc;
/// use tcpx_core::ring::Ring;
///
/// let ring: Ring<Rc<u8>, 2> = Ring::new();
/// let (tx, _rx) = Ring::split(&ring).unwrap();
/// std::thread::scope(|s| {
///     s.spawn(move || drop(tx)); // `Rc` is not `Send`
/// });
/// ```
pub struct Ring<T, const N: usize> {
    /// Index (in `0..2N`) of the next value to pop. Stored only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Index (in `0..2N`) of the next slot to fill. Stored only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Set once by the first successful [`Ring::split`].
    split: AtomicBool,
    /// `slots[i mod N]` is initialised exactly for the indices `i` in `head..tail` (mod 2N).
    slots: [UnsafeCell<MaybeUninit<T>>; N],
}

// SAFETY: `&Ring` gives access to the slots only through the one `Producer` and the one `Consumer`
// that `split` ever creates (the `split` flag is swapped atomically, so a second split fails).
// The producer only writes slots outside `head..tail` and the consumer only reads slots inside it;
// the Release/Acquire pairs on `tail` and `head` order every write before the matching read and
// every read before the next overwrite (module docs, "Memory ordering"). Each value is written
// on the producer's thread and moved out (or dropped) on another, so `T: Send` is required and
// sufficient; no `&T` is ever reachable from two threads at once (`peek` borrows the consumer), so
// `T: Sync` is not needed.
unsafe impl<T: Send, const N: usize> Sync for Ring<T, N> {}

impl<T, const N: usize> Ring<T, N> {
    /// Evaluated (at compile time) by every constructor: `N` must be in `1..=usize::MAX / 2` so
    /// that the indices `0..2N` exist and never overflow.
    const VALID_CAPACITY: () = assert!(
        N > 0 && N <= usize::MAX / 2,
        "Ring capacity N must be in 1..=usize::MAX / 2"
    );

    /// An empty ring that holds up to `N` values. `const`, so a ring can live in a `static`.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u8, 3> = Ring::new();
    /// assert_eq!(ring.capacity(), 3);
    /// ```
    #[cfg(not(loom))]
    #[must_use]
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID_CAPACITY;
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            split: AtomicBool::new(false),
            slots: [const { UnsafeCell::new(MaybeUninit::uninit()) }; N],
        }
    }

    /// An empty ring that holds up to `N` values (loom build: loom's cells are not `const`).
    #[cfg(loom)]
    #[must_use]
    pub fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::VALID_CAPACITY;
        Self {
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            split: AtomicBool::new(false),
            slots: core::array::from_fn(|_| UnsafeCell::new(MaybeUninit::uninit())),
        }
    }

    /// How many values the ring holds when full: `N`.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<(), 16> = Ring::new();
    /// assert_eq!(ring.capacity(), 16);
    /// ```
    #[inline]
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Splits the ring behind `handle` into its one producer and its one consumer.
    ///
    /// `handle` is cloned once, so that each half holds its own copy: pass `&ring` to borrow, or
    /// an `Arc<Ring>` so that each half keeps the ring alive on its own thread.
    ///
    /// # Errors
    ///
    /// [`SplitError::AlreadySplit`] if this ring was split before (even if both halves are gone);
    /// [`SplitError::HandleMismatch`] if `handle` and its clone dereference to different rings.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tcpx_core::ring::{Ring, SplitError};
    ///
    /// let ring = Arc::new(Ring::<u32, 4>::new());
    /// let (mut tx, mut rx) = Ring::split(Arc::clone(&ring)).unwrap();
    /// assert_eq!(Ring::split(&*ring).err(), Some(SplitError::AlreadySplit));
    ///
    /// let consumer = std::thread::spawn(move || loop {
    ///     if let Some(v) = rx.pop() {
    ///         return v;
    ///     }
    /// });
    /// tx.push(9).unwrap();
    /// assert_eq!(consumer.join().unwrap(), 9);
    /// ```
    #[allow(clippy::type_complexity)] // the pair of halves reads best spelled out
    pub fn split<P>(handle: P) -> Result<(Producer<T, N, P>, Consumer<T, N, P>), SplitError>
    where
        P: Deref<Target = Self> + Clone,
    {
        let other = handle.clone();
        let addr = address(&*handle);
        if address(&*other) != addr {
            return Err(SplitError::HandleMismatch);
        }
        let ring: &Self = &handle;
        // The swap is a read-modify-write, so of any number of racing splits exactly one reads
        // `false`. AcqRel orders it with the index loads below (they are 0 either way: nothing
        // stores an index before a split).
        if ring.split.swap(true, Ordering::AcqRel) {
            return Err(SplitError::AlreadySplit);
        }
        let head = ring.head.load(Ordering::Acquire);
        let tail = ring.tail.load(Ordering::Acquire);
        let producer = Producer {
            ring: handle,
            addr,
            tail,
            head_cache: head,
            _values: PhantomData,
        };
        let consumer = Consumer {
            ring: other,
            addr,
            head,
            tail_cache: tail,
            _values: PhantomData,
        };
        Ok((producer, consumer))
    }

    /// The index after `i` in `0..2N`.
    #[inline]
    const fn next_index(i: usize) -> usize {
        if i == 2 * N - 1 {
            0
        } else {
            i + 1
        }
    }

    /// The slot (in `0..N`) that index `i` (in `0..2N`) names.
    #[inline]
    const fn slot_index(i: usize) -> usize {
        if i >= N {
            i - N
        } else {
            i
        }
    }

    /// How many values lie in `from..to` (indices in `0..2N`, `to` at most N ahead of `from`).
    #[inline]
    const fn distance(from: usize, to: usize) -> usize {
        if to >= from {
            to - from
        } else {
            2 * N - from + to
        }
    }
}

impl<T, const N: usize> Default for Ring<T, N> {
    /// Same as [`Ring::new`].
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u8, 2> = Default::default();
    /// assert_eq!(ring.capacity(), 2);
    /// ```
    fn default() -> Self {
        Self::new()
    }
}

impl<T, const N: usize> Drop for Ring<T, N> {
    fn drop(&mut self) {
        // `&mut self`: both halves are gone (each held a handle that borrowed or shared this
        // ring), and whatever ended their lifetimes (a join, an `Arc` drop) ordered their last
        // index stores before this point; Acquire costs nothing here.
        let mut head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        while head != tail {
            self.slots[Self::slot_index(head)].with_mut(|slot| {
                // SAFETY: indices in `head..tail` name initialised slots (type invariant), each
                // is visited once, and nothing else can touch the slots during `drop`.
                unsafe { (*slot).assume_init_drop() }
            });
            head = Self::next_index(head);
        }
    }
}

impl<T, const N: usize> fmt::Debug for Ring<T, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &N)
            .field("head", &self.head.load(Ordering::Relaxed))
            .field("tail", &self.tail.load(Ordering::Relaxed))
            .field("split", &self.split.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The address of a ring, for the handle-stability check (a plain integer, so the halves stay
/// `Send`/`Sync` exactly when their handle is).
#[inline]
fn address<R>(ring: &R) -> usize {
    core::ptr::from_ref(ring) as usize
}

/// The ring behind `handle`, if it is still the one that was split (see "Handles" in the module
/// docs).
#[inline]
fn checked<T, const N: usize, P>(handle: &P, addr: usize) -> Option<&Ring<T, N>>
where
    P: Deref<Target = Ring<T, N>>,
{
    let ring: &Ring<T, N> = handle;
    (address(ring) == addr).then_some(ring)
}

/// The pushing half of a [`Ring`]; there is at most one per ring.
///
/// `Send` when its handle is (for `&Ring` and `Arc<Ring>` that means `T: Send`).
///
/// ```
/// use tcpx_core::ring::Ring;
///
/// let ring: Ring<&str, 2> = Ring::new();
/// let (mut tx, mut rx) = Ring::split(&ring).unwrap();
/// tx.push("recv").unwrap();
/// assert_eq!(rx.pop(), Some("recv"));
/// ```
pub struct Producer<T, const N: usize, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    ring: P,
    /// The ring's address at split time.
    addr: usize,
    /// The producer's own index: the authoritative copy of `ring.tail`.
    tail: usize,
    /// The last `ring.head` seen; never ahead of the real one.
    head_cache: usize,
    /// The producer moves `T`s but owns none (the ring does).
    _values: PhantomData<fn(T) -> T>,
}

impl<T, const N: usize, P> Producer<T, N, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    /// Appends `value`, or gives it back in `Err` when the ring is full.
    ///
    /// # Errors
    ///
    /// `Err(value)` when all `N` slots are taken (the consumer has not popped yet).
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 2> = Ring::new();
    /// let (mut tx, mut rx) = Ring::split(&ring).unwrap();
    /// assert_eq!(tx.push(1), Ok(()));
    /// assert_eq!(tx.push(2), Ok(()));
    /// assert_eq!(tx.push(3), Err(3)); // full: N = 2 values fit
    /// assert_eq!(rx.pop(), Some(1));
    /// assert_eq!(tx.push(3), Ok(()));
    /// ```
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let Some(ring) = checked(&self.ring, self.addr) else {
            return Err(value);
        };
        let tail = self.tail;
        if Ring::<T, N>::distance(self.head_cache, tail) == N {
            // Acquire pairs with the consumer's Release store of `head`: its move out of the slot
            // we are about to reuse happens-before our write.
            self.head_cache = ring.head.load(Ordering::Acquire);
            if Ring::<T, N>::distance(self.head_cache, tail) == N {
                return Err(value);
            }
        }
        ring.slots[Ring::<T, N>::slot_index(tail)].with_mut(|slot| {
            // SAFETY: we are the only producer (split once), so nobody else writes; the slot is
            // outside `head..tail` (the ring is not full and `head` only grows), so it is
            // uninitialised and the consumer does not read it until we publish `tail` below.
            unsafe {
                (*slot).write(value);
            }
        });
        let next = Ring::<T, N>::next_index(tail);
        // Release publishes the slot write to the consumer's Acquire load of `tail`.
        ring.tail.store(next, Ordering::Release);
        self.tail = next;
        Ok(())
    }

    /// How many more values fit right now (the consumer may free more at any moment).
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 4> = Ring::new();
    /// let (mut tx, _rx) = Ring::split(&ring).unwrap();
    /// tx.push(1).unwrap();
    /// assert_eq!(tx.free_slots(), 3);
    /// ```
    #[must_use]
    pub fn free_slots(&self) -> usize {
        match checked(&self.ring, self.addr) {
            // Acquire: same pairing as in `push`. `tail` is at most N ahead of any `head` the
            // consumer has published, so the distance is in 0..=N.
            Some(ring) => N - Ring::<T, N>::distance(ring.head.load(Ordering::Acquire), self.tail),
            None => 0,
        }
    }

    /// Whether a [`push`](Producer::push) would give its value back right now.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 1> = Ring::new();
    /// let (mut tx, _rx) = Ring::split(&ring).unwrap();
    /// assert!(!tx.is_full());
    /// tx.push(1).unwrap();
    /// assert!(tx.is_full());
    /// ```
    #[must_use]
    pub fn is_full(&self) -> bool {
        self.free_slots() == 0
    }

    /// The ring's capacity, `N`.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 5> = Ring::new();
    /// let (tx, _rx) = Ring::split(&ring).unwrap();
    /// assert_eq!(tx.capacity(), 5);
    /// ```
    #[inline]
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize, P> fmt::Debug for Producer<T, N, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &N)
            .field("tail", &self.tail)
            .field("head_cache", &self.head_cache)
            .finish_non_exhaustive()
    }
}

/// The popping half of a [`Ring`]; there is at most one per ring.
///
/// `Send` when its handle is (for `&Ring` and `Arc<Ring>` that means `T: Send`).
///
/// ```
/// use tcpx_core::ring::Ring;
///
/// let ring: Ring<u8, 2> = Ring::new();
/// let (mut tx, mut rx) = Ring::split(&ring).unwrap();
/// assert_eq!(rx.pop(), None);
/// tx.push(7).unwrap();
/// assert_eq!(rx.pop(), Some(7));
/// ```
pub struct Consumer<T, const N: usize, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    ring: P,
    /// The ring's address at split time.
    addr: usize,
    /// The consumer's own index: the authoritative copy of `ring.head`.
    head: usize,
    /// The last `ring.tail` seen; never ahead of the real one.
    tail_cache: usize,
    /// The consumer moves `T`s but owns none (the ring does).
    _values: PhantomData<fn(T) -> T>,
}

impl<T, const N: usize, P> Consumer<T, N, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    /// Removes the oldest value, or returns `None` when the ring is empty.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 3> = Ring::new();
    /// let (mut tx, mut rx) = Ring::split(&ring).unwrap();
    /// tx.push(1).unwrap();
    /// tx.push(2).unwrap();
    /// assert_eq!(rx.pop(), Some(1));
    /// assert_eq!(rx.pop(), Some(2));
    /// assert_eq!(rx.pop(), None);
    /// ```
    pub fn pop(&mut self) -> Option<T> {
        let ring = checked(&self.ring, self.addr)?;
        let head = self.head;
        if head == self.tail_cache {
            // Acquire pairs with the producer's Release store of `tail`: its slot writes below
            // the new tail happen-before our reads.
            self.tail_cache = ring.tail.load(Ordering::Acquire);
            if head == self.tail_cache {
                return None;
            }
        }
        let value = ring.slots[Ring::<T, N>::slot_index(head)].with(|slot| {
            // SAFETY: `head` is in `head..tail`, so the slot is initialised and its write
            // happens-before this read (Acquire above, or at an earlier call that cached this
            // tail); the producer does not touch it until we publish the new `head` below, and we
            // are the only consumer, so the value is moved out exactly once.
            unsafe { (*slot).assume_init_read() }
        });
        let next = Ring::<T, N>::next_index(head);
        // Release orders our read of the slot before the producer's next write to it.
        ring.head.store(next, Ordering::Release);
        self.head = next;
        Some(value)
    }

    /// The oldest value, left in the ring, or `None` when the ring is empty.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 2> = Ring::new();
    /// let (mut tx, mut rx) = Ring::split(&ring).unwrap();
    /// assert_eq!(rx.peek(), None);
    /// tx.push(5).unwrap();
    /// assert_eq!(rx.peek(), Some(&5));
    /// assert_eq!(rx.pop(), Some(5));
    /// ```
    #[must_use]
    pub fn peek(&self) -> Option<&T> {
        let ring = checked(&self.ring, self.addr)?;
        let head = self.head;
        let tail = if head == self.tail_cache {
            // Acquire: same pairing as in `pop`.
            ring.tail.load(Ordering::Acquire)
        } else {
            self.tail_cache
        };
        if head == tail {
            return None;
        }
        let value = ring.slots[Ring::<T, N>::slot_index(head)].with(|slot| {
            // SAFETY: the slot is initialised and its write is visible (as in `pop`). The
            // returned reference borrows `self`, so `pop` (which takes `&mut self`) cannot move
            // the value out while it lives, and the producer never writes a slot in
            // `head..tail`; the handle in `self` keeps the ring alive for the borrow.
            unsafe { (*slot).assume_init_ref() }
        });
        Some(value)
    }

    /// How many values are waiting right now (the producer may add more at any moment).
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 4> = Ring::new();
    /// let (mut tx, rx) = Ring::split(&ring).unwrap();
    /// tx.push(1).unwrap();
    /// tx.push(2).unwrap();
    /// assert_eq!(rx.len(), 2);
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        match checked(&self.ring, self.addr) {
            // Acquire: same pairing as in `pop`. The producer keeps `tail` at most N ahead of
            // our `head`, so the distance is in 0..=N.
            Some(ring) => Ring::<T, N>::distance(self.head, ring.tail.load(Ordering::Acquire)),
            None => 0,
        }
    }

    /// Whether a [`pop`](Consumer::pop) would return `None` right now.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 4> = Ring::new();
    /// let (mut tx, rx) = Ring::split(&ring).unwrap();
    /// assert!(rx.is_empty());
    /// tx.push(1).unwrap();
    /// assert!(!rx.is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ring's capacity, `N`.
    ///
    /// ```
    /// use tcpx_core::ring::Ring;
    ///
    /// let ring: Ring<u32, 5> = Ring::new();
    /// let (_tx, rx) = Ring::split(&ring).unwrap();
    /// assert_eq!(rx.capacity(), 5);
    /// ```
    #[inline]
    #[must_use]
    pub const fn capacity(&self) -> usize {
        N
    }
}

impl<T, const N: usize, P> fmt::Debug for Consumer<T, N, P>
where
    P: Deref<Target = Ring<T, N>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &N)
            .field("head", &self.head)
            .field("tail_cache", &self.tail_cache)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use core::cell::Cell;
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::vec::Vec;

    use super::*;

    /// Counts its drops in a shared cell.
    #[derive(Debug)]
    struct Counted<'a> {
        id: u32,
        drops: &'a Cell<usize>,
    }

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn assert_send<X: Send>() {}
    fn assert_sync<X: Sync>() {}

    #[test]
    fn halves_are_send_and_sync_for_send_values() {
        assert_send::<Producer<u64, 4, &Ring<u64, 4>>>();
        assert_send::<Consumer<u64, 4, &Ring<u64, 4>>>();
        assert_send::<Producer<u64, 4, Arc<Ring<u64, 4>>>>();
        assert_send::<Consumer<u64, 4, Arc<Ring<u64, 4>>>>();
        assert_sync::<Ring<std::cell::Cell<u8>, 4>>(); // Send but not Sync values: fine
        assert_sync::<Producer<u64, 4, Arc<Ring<u64, 4>>>>();
    }

    #[test]
    fn fills_to_exactly_n_and_gives_the_value_back_when_full() {
        let ring: Ring<u32, 4> = Ring::new();
        let (mut tx, mut rx) = Ring::split(&ring).unwrap();
        assert_eq!(tx.free_slots(), 4);
        assert!(rx.is_empty());
        for i in 0..4 {
            assert!(!tx.is_full());
            assert_eq!(tx.push(i), Ok(()));
            assert_eq!(rx.len(), i as usize + 1);
        }
        assert!(tx.is_full());
        assert_eq!(tx.free_slots(), 0);
        assert_eq!(tx.push(99), Err(99));
        assert_eq!(rx.len(), 4);
        for i in 0..4 {
            assert_eq!(rx.peek(), Some(&i));
            assert_eq!(rx.pop(), Some(i));
        }
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.peek(), None);
        assert_eq!(tx.free_slots(), 4);
    }

    #[test]
    fn capacity_one_alternates() {
        let ring: Ring<u32, 1> = Ring::new();
        let (mut tx, mut rx) = Ring::split(&ring).unwrap();
        for i in 0..10 {
            assert_eq!(tx.push(i), Ok(()));
            assert_eq!(tx.push(i + 100), Err(i + 100));
            assert_eq!(rx.pop(), Some(i));
            assert_eq!(rx.pop(), None);
        }
    }

    #[test]
    fn wraps_around_many_times_like_a_deque() {
        // N = 5 is not a power of two; batch sizes vary so every head/tail offset occurs, with
        // the ring both full and empty along the way.
        let ring: Ring<u64, 5> = Ring::new();
        let (mut tx, mut rx) = Ring::split(&ring).unwrap();
        let mut model = VecDeque::new();
        let (mut next, mut popped, mut refused, mut empty) = (0_u64, 0_u64, 0_u64, 0_u64);
        for round in 0..2_000_u64 {
            for _ in 0..(round * 3) % 7 {
                let full = model.len() == 5;
                match tx.push(next) {
                    Ok(()) => {
                        assert!(!full);
                        model.push_back(next);
                    }
                    Err(v) => {
                        assert!(full);
                        assert_eq!(v, next);
                        refused += 1;
                    }
                }
                next += 1;
            }
            assert_eq!(rx.len(), model.len());
            assert_eq!(tx.free_slots(), 5 - model.len());
            for _ in 0..(round * 5 + 1) % 7 {
                assert_eq!(rx.peek().copied(), model.front().copied());
                let got = rx.pop();
                assert_eq!(got, model.pop_front());
                match got {
                    Some(_) => popped += 1,
                    None => empty += 1,
                }
            }
        }
        assert!(popped > 1_000, "{popped}");
        assert!(refused > 0 && empty > 0, "{refused} {empty}");
    }

    #[test]
    fn drops_the_values_left_inside_exactly_once() {
        let drops = Cell::new(0);
        {
            let ring: Ring<Counted<'_>, 4> = Ring::new();
            let (mut tx, mut rx) = Ring::split(&ring).unwrap();
            // Wrap once so the leftovers straddle the end of the slot array.
            for id in 0..3 {
                tx.push(Counted { id, drops: &drops }).unwrap();
            }
            for id in 0..3 {
                assert_eq!(rx.pop().map(|c| c.id), Some(id));
            }
            assert_eq!(drops.get(), 3);
            for id in 3..7 {
                tx.push(Counted { id, drops: &drops }).unwrap();
            }
            let refused = tx
                .push(Counted {
                    id: 7,
                    drops: &drops,
                })
                .unwrap_err();
            assert_eq!(refused.id, 7);
            drop(refused);
            assert_eq!(drops.get(), 4);
            assert_eq!(rx.pop().map(|c| c.id), Some(3));
            assert_eq!(drops.get(), 5);
            // The halves go first (they borrow the ring); 4, 5, 6 are still inside.
        }
        assert_eq!(drops.get(), 8);
    }

    #[test]
    fn an_unsplit_ring_drops_nothing() {
        // Its slots were never written: dropping one would drop an uninitialised `String`,
        // which `cargo miri test` reports (natively it may or may not crash).
        let ring: Ring<std::string::String, 3> = Ring::new();
        drop(ring);
    }

    #[test]
    fn splits_only_once() {
        let ring: Ring<u8, 2> = Ring::new();
        {
            let _halves = Ring::split(&ring).unwrap();
            assert_eq!(Ring::split(&ring).err(), Some(SplitError::AlreadySplit));
        }
        // Not even after the halves are gone.
        assert_eq!(Ring::split(&ring).err(), Some(SplitError::AlreadySplit));
        assert!(std::format!("{ring:?}").contains("split: true"));
    }

    /// A handle that owns its ring by value, so every clone (and every move) is another ring.
    #[derive(Default)]
    struct Inline(Ring<u8, 2>);

    impl Clone for Inline {
        fn clone(&self) -> Self {
            Self::default()
        }
    }

    impl Deref for Inline {
        type Target = Ring<u8, 2>;
        fn deref(&self) -> &Ring<u8, 2> {
            &self.0
        }
    }

    #[test]
    fn a_handle_whose_clone_is_another_ring_is_refused() {
        assert_eq!(
            Ring::split(Inline::default()).err(),
            Some(SplitError::HandleMismatch)
        );
    }

    /// A handle that points at one ring until told to point at another.
    #[derive(Clone)]
    struct Switching<'a> {
        rings: &'a [Ring<u8, 2>; 2],
        which: &'a Cell<usize>,
    }

    impl Deref for Switching<'_> {
        type Target = Ring<u8, 2>;
        fn deref(&self) -> &Ring<u8, 2> {
            &self.rings[self.which.get()]
        }
    }

    #[test]
    fn halves_whose_handle_moved_reach_no_ring() {
        let rings = [Ring::new(), Ring::new()];
        let which = Cell::new(0);
        let handle = Switching {
            rings: &rings,
            which: &which,
        };
        let (mut tx, mut rx) = Ring::split(handle).unwrap();
        tx.push(1).unwrap();
        which.set(1);
        // Ring 1 was never split by these halves: they must not touch it.
        assert_eq!(tx.push(2), Err(2));
        assert!(tx.is_full());
        assert_eq!(rx.pop(), None);
        assert_eq!(rx.peek(), None);
        assert_eq!(rx.len(), 0);
        // Ring 1 can still get its own (only) halves.
        let (mut tx1, mut rx1) = Ring::split(&rings[1]).unwrap();
        tx1.push(3).unwrap();
        assert_eq!(rx1.pop(), Some(3));
        which.set(0);
        assert_eq!(rx.pop(), Some(1));
    }

    #[test]
    fn display_names_the_problem() {
        assert!(std::format!("{}", SplitError::AlreadySplit).contains("already split"));
        assert!(std::format!("{}", SplitError::HandleMismatch).contains("different rings"));
    }

    /// Items per stress run: enough to wrap a small ring tens of thousands of times, small enough
    /// for a debug build.
    const STRESS_ITEMS: u64 = 200_000;

    fn push_spinning<P: Deref<Target = Ring<u64, 8>>>(tx: &mut Producer<u64, 8, P>, v: u64) {
        let mut v = v;
        while let Err(back) = tx.push(v) {
            v = back;
            std::thread::yield_now();
        }
    }

    #[test]
    fn stress_threads_through_an_arc_ring_in_order() {
        let ring = Arc::new(Ring::<u64, 8>::new());
        let (mut tx, mut rx) = Ring::split(Arc::clone(&ring)).unwrap();
        let producer = std::thread::spawn(move || {
            for i in 0..STRESS_ITEMS {
                push_spinning(&mut tx, i);
            }
        });
        let consumer = std::thread::spawn(move || {
            let mut expected = 0;
            let mut sum = 0_u64;
            while expected < STRESS_ITEMS {
                match rx.pop() {
                    Some(v) => {
                        assert_eq!(v, expected);
                        sum += v;
                        expected += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
            assert_eq!(rx.pop(), None);
            sum
        });
        producer.join().unwrap();
        let sum = consumer.join().unwrap();
        assert_eq!(sum, STRESS_ITEMS * (STRESS_ITEMS - 1) / 2);
        // The halves are gone; this Arc is the last one.
        assert_eq!(Arc::strong_count(&ring), 1);
    }

    #[test]
    fn stress_scoped_threads_with_boxed_values() {
        // Heap values make a double drop or a lost value visible to the allocator and to Miri.
        let ring: Ring<std::boxed::Box<u64>, 3> = Ring::new();
        let (mut tx, mut rx) = Ring::split(&ring).unwrap();
        let n = STRESS_ITEMS / 4;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..n {
                    let mut v = std::boxed::Box::new(i);
                    while let Err(back) = tx.push(v) {
                        v = back;
                        std::thread::yield_now();
                    }
                }
            });
            s.spawn(move || {
                let mut got = Vec::new();
                while (got.len() as u64) < n {
                    match rx.pop() {
                        Some(v) => got.push(*v),
                        None => std::thread::yield_now(),
                    }
                }
                assert!(got.iter().copied().eq(0..n));
            });
        });
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p tcpx-core --release
    //! --lib ring::loom_tests`.

    use loom::sync::atomic::{AtomicUsize as LoomCounter, Ordering as LoomOrdering};
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    fn push_yielding<T, const N: usize, P>(tx: &mut Producer<T, N, P>, mut v: T)
    where
        P: Deref<Target = Ring<T, N>>,
    {
        loop {
            match tx.push(v) {
                Ok(()) => return,
                Err(back) => {
                    v = back;
                    thread::yield_now();
                }
            }
        }
    }

    fn pop_yielding<T, const N: usize, P>(rx: &mut Consumer<T, N, P>) -> T
    where
        P: Deref<Target = Ring<T, N>>,
    {
        loop {
            if let Some(v) = rx.pop() {
                return v;
            }
            thread::yield_now();
        }
    }

    /// Pushes `items` values through a ring of `N` on two threads; checks order and no loss.
    fn order_and_no_loss<const N: usize>(items: u32) {
        loom::model(move || {
            let ring = Arc::new(Ring::<u32, N>::new());
            let (mut tx, mut rx) = Ring::split(ring).unwrap();
            let producer = thread::spawn(move || {
                for i in 0..items {
                    push_yielding(&mut tx, i);
                }
            });
            for i in 0..items {
                assert_eq!(pop_yielding(&mut rx), i);
            }
            producer.join().unwrap();
            assert_eq!(rx.pop(), None);
        });
    }

    #[test]
    fn capacity_two_wraps_in_order() {
        // 4 values through 2 slots: both slots are reused and the indices wrap past 2N = 4.
        order_and_no_loss::<2>(4);
    }

    #[test]
    fn capacity_one_in_order() {
        order_and_no_loss::<1>(3);
    }

    #[test]
    fn peek_sees_what_pop_returns() {
        loom::model(|| {
            let ring = Arc::new(Ring::<u32, 2>::new());
            let (mut tx, mut rx) = Ring::split(ring).unwrap();
            let producer = thread::spawn(move || {
                for i in 0..3 {
                    push_yielding(&mut tx, i);
                }
            });
            for i in 0..3 {
                let seen = rx.peek().copied();
                assert!(seen.is_none() || seen == Some(i));
                assert_eq!(pop_yielding(&mut rx), i);
            }
            producer.join().unwrap();
        });
    }

    /// Counts its drops.
    struct Counted(Arc<LoomCounter>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, LoomOrdering::Relaxed);
        }
    }

    #[test]
    fn values_left_inside_are_dropped_once_by_whoever_drops_the_ring_last() {
        loom::model(|| {
            let drops = Arc::new(LoomCounter::new(0));
            let ring = Arc::new(Ring::<Counted, 2>::new());
            // The halves hold the only handles, so the ring is dropped on whichever thread
            // finishes last, racing (in the model) with the other thread's last access.
            let (mut tx, mut rx) = Ring::split(ring).unwrap();
            let counter = Arc::clone(&drops);
            let producer = thread::spawn(move || {
                for _ in 0..2 {
                    assert!(tx.push(Counted(Arc::clone(&counter))).is_ok());
                }
            });
            let consumer = thread::spawn(move || {
                let popped = rx.pop();
                drop(popped);
            });
            producer.join().unwrap();
            consumer.join().unwrap();
            assert_eq!(drops.load(LoomOrdering::Relaxed), 2);
        });
    }
}
