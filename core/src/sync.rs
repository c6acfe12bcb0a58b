//! The atomics and cells that [`ring`](crate::ring) is built from, swappable for loom's.
//!
//! Normally this re-exports `core`'s atomics and wraps `core::cell::UnsafeCell` in a type with
//! loom's closure API (`with` / `with_mut`). Built with `RUSTFLAGS="--cfg loom"` it re-exports
//! `loom`'s instead, so the ring's loom model checks exactly the code that ships.
//!
//! Invariant: the two builds expose the same names and method shapes; only `new` differs in
//! constness (loom's constructors are not `const`).
//!
//! ```text
//! // crate-private; inside the crate:
//! use crate::sync::{AtomicUsize, Ordering, UnsafeCell};
//! let cell = UnsafeCell::new(1_u32);
//! let two = cell.with(|p| p.wrapping_add(1));
//! ```

#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `core::cell::UnsafeCell` with loom's closure-scoped API, so callers compile unchanged under
/// `cfg(loom)`. The closures receive raw pointers; dereferencing them is the caller's `unsafe`.
#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with a shared pointer to the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Runs `f` with a mutable pointer to the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
