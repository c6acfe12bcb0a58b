//! [`ForeignRegion`]: memory a C++ caller owns, registered by address and length.
//!
//! The C++ tree's `tcpx_reg_mr(comm, data, size, type, &mhandle)` and
//! `ChannelManager::register_memory(buf, size, type, is_recv)` take a raw pointer; the caller
//! keeps the memory alive and does not free it while it is registered. This type carries that
//! contract into [`tcpx::net::Region`]: it is the only `unsafe` in this crate.
//!
//! Invariants:
//! * Only this crate's C++ entry points build a `ForeignRegion` (`new` is crate-private), so
//!   safe Rust outside it cannot register memory it does not own; those entry points document
//!   the caller's promise.
//! * A `ForeignRegion` is built only from a non-null address and a non-zero length that does not
//!   wrap ([`ForeignRegion::new`] checks); everything else is that promise.
#![allow(unsafe_code)]

use tcpx::net::{MemKind, Region};

/// Caller-owned memory: a host or device address range.
#[derive(Debug)]
pub struct ForeignRegion {
    addr: usize,
    len: usize,
    kind: MemKind,
}

impl ForeignRegion {
    /// A region at `addr` of `len` bytes; `None` for a null address or an empty range, or one
    /// that wraps the address space.
    pub(crate) fn new(addr: u64, len: u64, kind: MemKind) -> Option<Self> {
        let addr = usize::try_from(addr).ok()?;
        let len = usize::try_from(len).ok()?;
        if addr == 0 || len == 0 || addr.checked_add(len).is_none() {
            return None;
        }
        Some(Self { addr, len, kind })
    }
}

// SAFETY: the address, length and kind are fixed at construction. That the range is one live
// allocation of `kind` memory, valid for reads and writes by the plugin until it is
// deregistered or its comm is closed, is the documented contract of every C++ entry point that
// builds a ForeignRegion (`tcpx_reg_mr`, `ChannelManager::register_memory`,
// `tcpx::Endpoint::register_memory`) — the same contract the C++ tree's wrappers had. This type
// hands out no view of the bytes.
unsafe impl Region for ForeignRegion {
    fn as_ptr(&self) -> *mut u8 {
        // An integer-to-pointer cast of the caller's address; never dereferenced in Rust.
        self.addr as *mut u8
    }
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> MemKind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_null_non_empty_ranges_that_do_not_wrap() {
        let r = ForeignRegion::new(0x10000, 4096, MemKind::Host).unwrap();
        assert_eq!((r.as_ptr() as usize, r.len()), (0x10000, 4096));
        assert_eq!(r.kind(), MemKind::Host);
        assert!(ForeignRegion::new(0, 4096, MemKind::Host).is_none());
        assert!(ForeignRegion::new(0x10000, 0, MemKind::Cuda).is_none());
        assert!(ForeignRegion::new(u64::MAX - 10, 4096, MemKind::Host).is_none());
    }
}
