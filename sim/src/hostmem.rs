//! Caller-owned host memory: registrations and the byte ranges helper threads move.
//!
//! This is where the sim touches memory it does not own, so it is one of the modules with `unsafe`
//! (with `ffi`, `bounce`, `cuda` and the logger call in `log`). A [`HostRegion`] is created only by `regMr`, whose caller
//! promises — as with any NCCL plugin — that the memory stays valid until `deregMr`, and that a
//! buffer passed to `isend`/`irecv` is neither freed nor touched until `test` reports the request
//! done. An [`IoRange`] can only be cut from a region, bounds-checked, so every slice the helper
//! threads build lies inside memory the caller registered.
//!
//! Invariants:
//! * `IoRange` never outlives the guarantee: comms join their helper threads before `close`
//!   returns, so no helper touches a range after the caller may reclaim it.
//! * Ranges handed to different helper threads of one request are disjoint (chunks).
//!
//! ```
//! use tcpx_sim::hostmem::HostRegion;
//! let mut buf = vec![0u8; 64];
//! // SAFETY: `buf` outlives `region` and nothing else touches it meanwhile.
//! let region = unsafe { HostRegion::new(buf.as_mut_ptr() as usize, buf.len()) };
//! let r = region.range(buf.as_ptr() as usize + 16, 32).unwrap();
//! assert_eq!(r.len(), 32);
//! assert!(region.range(buf.as_ptr() as usize + 40, 32).is_none());
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;

/// A registered host buffer (`regMr(NCCL_PTR_HOST)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRegion {
    base: usize,
    len: usize,
}

impl HostRegion {
    /// Records a caller's registration.
    ///
    /// # Safety
    /// `[base, base + len)` must be memory the caller owns, readable and writable, that stays
    /// valid until the registration is dropped; every sub-range passed to a request must not be
    /// accessed by anyone else until that request completes (the NCCL net-plugin contract).
    pub unsafe fn new(base: usize, len: usize) -> HostRegion {
        HostRegion { base, len }
    }

    /// Start address.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `[addr, addr + len)`, or None when it is not inside the region.
    pub fn range(&self, addr: usize, len: usize) -> Option<IoRange> {
        let end = addr.checked_add(len)?;
        if addr < self.base || end > self.base.checked_add(self.len)? {
            return None;
        }
        Some(IoRange { addr, len })
    }
}

/// A byte range inside a [`HostRegion`] that one request reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRange {
    addr: usize,
    len: usize,
}

impl IoRange {
    /// The empty range (size-0 messages).
    pub const EMPTY: IoRange = IoRange { addr: 0, len: 0 };

    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `[offset, offset + len)` of this range, or None when out of bounds.
    pub fn sub(&self, offset: usize, len: usize) -> Option<IoRange> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(IoRange {
            addr: self.addr + offset,
            len,
        })
    }

    /// Sends the whole range on `sock` (blocking), straight from the caller's memory.
    pub fn send_all(&self, mut sock: &TcpStream) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: an IoRange is only built by `HostRegion::range`/`IoRange::sub`, so it lies in
        // a registration whose creator guaranteed validity (see `HostRegion::new`); the request
        // owning this range is outstanding, so nobody writes it meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) };
        sock.write_all(bytes)
    }

    /// Fills the whole range from `sock` (blocking), straight into the caller's memory. A peer
    /// that closes first yields `UnexpectedEof`.
    pub fn recv_all(&self, mut sock: &TcpStream) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: as in `send_all`; in addition the chunks of one receive are disjoint, so this is
        // the only live reference to these bytes while the helper thread fills them.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) };
        sock.read_exact(bytes)
    }
}

/// Test helper: a region over `buf` (the caller keeps `buf` alive while the region is used).
#[cfg(test)]
pub(crate) fn region_of(buf: &mut [u8]) -> HostRegion {
    // SAFETY: test code only; every caller keeps `buf` alive and untouched while it uses the
    // region.
    unsafe { HostRegion::new(buf.as_mut_ptr() as usize, buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn ranges_are_bounds_checked() {
        let mut buf = vec![0u8; 100];
        let base = buf.as_mut_ptr() as usize;
        // SAFETY: `buf` outlives the region; the test only does arithmetic and I/O below.
        let region = unsafe { HostRegion::new(base, 100) };
        assert!(region.range(base, 100).is_some());
        assert!(region.range(base + 100, 0).is_some());
        assert!(region.range(base + 1, 100).is_none());
        assert!(region.range(base - 1, 2).is_none());
        assert!(region.range(usize::MAX, 2).is_none());
        let r = region.range(base + 10, 50).unwrap();
        assert_eq!(r.sub(40, 10).map(|s| s.addr()), Some(base + 50));
        assert!(r.sub(41, 10).is_none());
        assert!(r.sub(usize::MAX, 1).is_none());
    }

    #[test]
    fn send_and_recv_move_exact_bytes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let mut src: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; 4096];
        // SAFETY: both vectors outlive the regions and are only touched through them here.
        let (rs, rd) = unsafe {
            (
                HostRegion::new(src.as_mut_ptr() as usize, src.len()),
                HostRegion::new(dst.as_mut_ptr() as usize, dst.len()),
            )
        };
        let s = rs.range(rs.base() + 100, 1000).unwrap();
        let d = rd.range(rd.base() + 3000, 1000).unwrap();
        s.send_all(&a).unwrap();
        d.recv_all(&b).unwrap();
        assert_eq!(&dst[3000..4000], &src[100..1100]);
        assert!(dst[..3000].iter().all(|x| *x == 0));
        drop(a);
        let e = d.recv_all(&b).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
