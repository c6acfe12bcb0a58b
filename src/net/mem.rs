//! Memory that a plugin reads and writes: [`Region`], [`MemKind`], [`HostBuffer`] and the
//! registration token [`MemHandle`].
//!
//! A request makes the plugin read (`isend`) or write (`irecv`) memory *after* the call returned,
//! from its own threads or the kernel. To make `isend`/`irecv` safe functions, a comm stores an
//! `Arc` clone of every region registered with it and releases it only after `deregMr` (refused
//! while requests are pending) or after the comm is closed. A [`MemHandle`] remembers the
//! region's address and length, so every post is bounds-checked without touching the region.
//!
//! Invariants:
//! * A [`Region`]'s address and length never change while it lives, and its memory stays valid
//!   until it is dropped (that is the `unsafe` contract of implementing it).
//! * [`HostBuffer`] memory is 4 KiB aligned, zero-initialised and owned; a buffer of at least
//!   [`HostBuffer::HUGE_PAGE`] bytes is 2 MiB aligned and asks for transparent huge pages (fewer
//!   TLB misses for the kernel's socket copies and the bench's check: reading 128 MiB of them
//!   cold ran at 16 GB/s instead of 9 on the dev box; no change on the H200 host). Its bytes
//!   are reached through [`HostBuffer::lock`], which succeeds only while no request on the
//!   buffer is in flight, and while it is held every post into the buffer fails with
//!   [`PluginError::Locked`]: the owner and the plugin never touch the bytes at the same time.
//!   A request counts as in flight from the post until `test` reports it done (or its comm is
//!   closed).
//! * A [`MemHandle`] is usable only with the comm that registered it (checked).
//!
//! ```
//! use tcpx::net::{HostBuffer, MemKind, Region};
//! let mut buf = HostBuffer::new(10_000).unwrap();
//! buf.as_mut_slice()[..5].copy_from_slice(b"hello");
//! assert_eq!(buf.len(), 10_000);
//! assert_eq!(buf.as_ptr() as usize % 4096, 0);
//! assert_eq!(buf.kind(), MemKind::Host);
//! ```

use core::ffi::{c_int, c_void};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use super::abi::{PTR_CUDA, PTR_HOST};
use super::error::PluginError;

/// Where a region lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemKind {
    /// Host memory (`NCCL_PTR_HOST`).
    Host,
    /// CUDA device memory (`NCCL_PTR_CUDA`); TCPX wants it 4 KiB aligned, a multiple of 4 KiB.
    Cuda,
}

impl MemKind {
    /// The `type` argument of `regMr`.
    pub const fn ptr_type(self) -> c_int {
        match self {
            MemKind::Host => PTR_HOST,
            MemKind::Cuda => PTR_CUDA,
        }
    }
}

/// A contiguous piece of memory that can be registered with a comm.
///
/// # Safety
///
/// Implementors guarantee that, for as long as the value lives:
/// * [`as_ptr`](Region::as_ptr), [`len`](Region::len) and [`kind`](Region::kind) always return
///   the same values;
/// * `as_ptr()..as_ptr() + len()` is one allocation of `kind()` memory (a host pointer for
///   `Host`, a device pointer for `Cuda`), valid for reads and writes;
/// * the plugin may read and write that memory at any time from any thread (it is registered
///   and posted through shared `Arc`s), so the implementor hands out no safe shared view
///   (`&[u8]`) of memory a posted receive may write.
pub unsafe trait Region: Send + Sync {
    /// Start of the region (a device pointer for [`MemKind::Cuda`]).
    fn as_ptr(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Host or device memory.
    fn kind(&self) -> MemKind;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The in-flight accounting of a region whose bytes its owner can reach from the host
    /// ([`HostBuffer`]); `None` (the default) for memory the host never touches directly.
    fn access_state(&self) -> Option<&AccessState> {
        None
    }
}

/// How many requests are in flight on a region, and whether its owner holds it.
///
/// Comms call `begin_io` before posting a request on the region and
/// `end_io` when it is done; the owner's lock succeeds only at zero.
#[derive(Debug, Default)]
pub struct AccessState(AtomicUsize);

const LOCKED: usize = 1 << (usize::BITS - 1);

impl AccessState {
    /// Count one more request in flight, unless the owner holds the region.
    pub(crate) fn begin_io(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            if cur & LOCKED != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(cur, cur + 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// One request fewer in flight. Release: what the plugin wrote happens-before a later lock.
    pub(crate) fn end_io(&self) {
        self.0.fetch_sub(1, Ordering::Release);
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Acquire) & !LOCKED
    }

    fn try_lock(&self) -> Result<(), usize> {
        self.0
            .compare_exchange(0, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .map(drop)
            .map_err(|cur| cur & !LOCKED)
    }

    fn unlock(&self) {
        // While locked no request could begin, so the count is zero.
        self.0.store(0, Ordering::Release);
    }
}

/// An owned, zeroed, 4 KiB-aligned host allocation: an anonymous private mapping of its own.
pub struct HostBuffer {
    ptr: NonNull<u8>,
    len: usize,
    /// Bytes mapped at `ptr` (whole pages, at least one).
    mapped: usize,
    access: AccessState,
}

// SAFETY: HostBuffer owns its mapping like a Box<[u8]>; it holds no thread-affine state.
unsafe impl Send for HostBuffer {}
// SAFETY: through `&HostBuffer` safe code gets raw pointers, lengths, and the bytes only
// through `lock`, which excludes in-flight requests and other holders (an atomic state).
unsafe impl Sync for HostBuffer {}

impl HostBuffer {
    /// Alignment of every host buffer (the devmem page size).
    pub const ALIGN: usize = 4096;

    /// Size of a transparent huge page on x86-64: buffers at least this long are aligned to it
    /// and advised `MADV_HUGEPAGE` (a hint; where THP is off they get small pages).
    pub const HUGE_PAGE: usize = 2 << 20;

    /// Allocates `len` zeroed bytes, 4 KiB aligned (the mapping is rounded up to whole pages;
    /// a zero-length buffer still gets one page so its address is real). From
    /// [`HUGE_PAGE`](Self::HUGE_PAGE) bytes on, the buffer is 2 MiB aligned and backed by huge
    /// pages where the kernel has them.
    pub fn new(len: usize) -> Result<Self, PluginError> {
        let err = PluginError::Alloc { len };
        let huge = len >= Self::HUGE_PAGE;
        let page = if huge { Self::HUGE_PAGE } else { Self::ALIGN };
        let mapped = len
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or(err.clone())?;
        // Over-map by one huge page so an aligned start exists, then unmap the slack.
        let slack = if huge { Self::HUGE_PAGE } else { 0 };
        let total = mapped.checked_add(slack).ok_or(err.clone())?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice touches no
        // existing memory; the result is checked against MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(err);
        }
        let base = raw as usize;
        let start = base.next_multiple_of(page);
        let (head, tail) = (start - base, base + total - (start + mapped));
        // SAFETY: `base..start` and `start + mapped..base + total` lie inside the mapping just
        // made and are page aligned (`base` and `total` are, `mapped` is a multiple of `page`);
        // nothing refers to them. A failed unmap would only leave slack mapped until exit.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + mapped) as *mut c_void, tail);
            }
            if huge {
                // A hint before the first touch, so the first faults take huge pages; where
                // THP is unavailable the call fails and the buffer keeps small pages.
                libc::madvise(start as *mut c_void, mapped, libc::MADV_HUGEPAGE);
            }
        }
        let ptr = NonNull::new(start as *mut u8).ok_or(err)?;
        Ok(Self {
            ptr,
            len,
            mapped,
            access: AccessState::default(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, exclusively. Needs `&mut`, so no comm can have this buffer registered (a comm
    /// holds an `Arc` clone of what it registered).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len` initialised (zeroed) bytes for the lifetime of self,
        // and `&mut self` proves no other reference or registration exists.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Hold the buffer: its bytes, readable and writable, while no request on it is in
    /// flight. Until the guard is dropped, posts into the buffer fail with
    /// [`PluginError::Locked`]; while requests are in flight this fails with
    /// [`PluginError::InUse`].
    ///
    /// ```
    /// use tcpx::net::HostBuffer;
    /// let buf = HostBuffer::new(4096).unwrap();
    /// buf.lock().unwrap()[0] = 7;
    /// assert_eq!(buf.lock().unwrap()[0], 7);
    /// ```
    pub fn lock(&self) -> Result<HostLock<'_>, PluginError> {
        self.access
            .try_lock()
            .map_err(|requests| PluginError::InUse { requests })?;
        Ok(HostLock { buf: self })
    }
}

impl core::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr + mapped` is the mapping made in `new`, unmapped once; no
        // reference into it outlives `self` (registrations hold an `Arc` of the buffer).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
    }
}

// SAFETY: the pointer and length are fixed at allocation; the memory stays valid until drop;
// the only safe view is `as_mut_slice`, which needs exclusive access (so no registration).
unsafe impl Region for HostBuffer {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> MemKind {
        MemKind::Host
    }
    fn access_state(&self) -> Option<&AccessState> {
        Some(&self.access)
    }
}

/// Exclusive access to a [`HostBuffer`]'s bytes; see [`HostBuffer::lock`].
pub struct HostLock<'a> {
    buf: &'a HostBuffer,
}

impl core::fmt::Debug for HostLock<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostLock")
            .field("len", &self.buf.len)
            .finish()
    }
}

impl Deref for HostLock<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `len` initialised bytes while the buffer lives (the guard
        // borrows it); the lock excludes in-flight requests and new posts, and `&self` of the
        // single guard excludes a concurrent `&mut`.
        unsafe { core::slice::from_raw_parts(self.buf.ptr.as_ptr(), self.buf.len) }
    }
}

impl DerefMut for HostLock<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; `&mut self` of the single guard makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(self.buf.ptr.as_ptr(), self.buf.len) }
    }
}

impl Drop for HostLock<'_> {
    fn drop(&mut self) {
        self.buf.access.unlock();
    }
}

/// A registration of a [`Region`] with one comm (`regMr`'s `mhandle`), used to post requests.
///
/// It is a token: the comm keeps the region alive and deregisters it with
/// `deregister(mh)` or when the comm closes. Dropping the token does not deregister.
#[derive(Debug)]
pub struct MemHandle {
    pub(crate) comm_id: u64,
    pub(crate) reg_id: u64,
    pub(crate) mhandle: *mut c_void,
    pub(crate) base: *mut u8,
    pub(crate) len: usize,
    pub(crate) kind: MemKind,
    /// The region's [`AccessState`] (NULL if it has none); valid while the comm keeps the
    /// region alive, i.e. as long as this handle can be used with it.
    pub(crate) access: *const AccessState,
}

// SAFETY: a token: its pointers are never dereferenced by this crate; they are only passed back
// to the plugin through the comm that created them, after checking `comm_id`.
unsafe impl Send for MemHandle {}
// SAFETY: as for Send; `&MemHandle` exposes only copies of the pointers.
unsafe impl Sync for MemHandle {}

impl MemHandle {
    /// Length of the registered region.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the registered region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host or device memory.
    pub fn kind(&self) -> MemKind {
        self.kind
    }

    /// Start of the registered region.
    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// The plugin's `mhandle` (may be NULL for plugins that need none).
    pub fn as_raw(&self) -> *mut c_void {
        self.mhandle
    }

    /// Checks `offset..offset + len` against the region and the v7 `int` size; returns the data
    /// pointer and the size as the ABI wants them.
    pub(crate) fn range(
        &self,
        call: super::Call,
        offset: usize,
        len: usize,
    ) -> Result<(*mut c_void, c_int), PluginError> {
        let inside = match offset.checked_add(len) {
            Some(end) => end <= self.len,
            None => false,
        };
        if !inside {
            return Err(PluginError::OutOfBounds {
                call,
                offset,
                len,
                region_len: self.len,
            });
        }
        let size = c_int::try_from(len).map_err(|_| PluginError::TooLarge { call, len })?;
        // `wrapping_add` because a CUDA region's base is a device address, never dereferenced here.
        Ok((self.base.wrapping_add(offset).cast(), size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Call;

    #[test]
    fn host_buffers_are_page_aligned_zeroed_and_owned() {
        for len in [0, 1, 4095, 4096, 4097, 1 << 20] {
            let mut b = HostBuffer::new(len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % HostBuffer::ALIGN, 0);
            assert!(b.as_mut_slice().iter().all(|&x| x == 0));
            b.as_mut_slice().fill(0xab);
            assert!(b.lock().unwrap().iter().all(|&x| x == 0xab));
        }
        let b = HostBuffer::new(64).unwrap();
        let held = b.lock().unwrap();
        assert_eq!(b.lock().unwrap_err(), PluginError::InUse { requests: 0 });
        assert!(
            !b.access.begin_io(),
            "a post must fail while the owner holds the buffer"
        );
        drop(held);
        assert!(b.access.begin_io());
        assert_eq!(b.lock().unwrap_err(), PluginError::InUse { requests: 1 });
        b.access.end_io();
        assert!(b.lock().is_ok());
        assert_eq!(
            HostBuffer::new(usize::MAX).unwrap_err(),
            PluginError::Alloc { len: usize::MAX }
        );
    }

    #[test]
    fn big_host_buffers_are_huge_page_aligned_and_fully_usable() {
        for len in [
            HostBuffer::HUGE_PAGE - 1,
            HostBuffer::HUGE_PAGE,
            (5 << 20) + 123,
        ] {
            let b = HostBuffer::new(len).unwrap();
            let huge = len >= HostBuffer::HUGE_PAGE;
            let align = if huge {
                HostBuffer::HUGE_PAGE
            } else {
                HostBuffer::ALIGN
            };
            assert_eq!(b.as_ptr() as usize % align, 0, "{len} bytes");
            let mut bytes = b.lock().unwrap();
            assert!(bytes.iter().all(|&x| x == 0));
            bytes.fill(0x5a); // every byte, the last one included, is mapped and writable
            assert_eq!(bytes[len - 1], 0x5a);
        }
        // Many at once: the slack of each mapping is given back, so they do not overlap.
        let bufs: Vec<_> = (0..8).map(|_| HostBuffer::new(3 << 20).unwrap()).collect();
        let mut starts: Vec<usize> = bufs.iter().map(|b| b.as_ptr() as usize).collect();
        starts.sort_unstable();
        assert!(starts.windows(2).all(|w| w[1] - w[0] >= 3 << 20));
    }

    #[test]
    fn ranges_are_bounds_checked() {
        let mh = MemHandle {
            comm_id: 1,
            reg_id: 1,
            mhandle: core::ptr::null_mut(),
            base: 0x1000 as *mut u8,
            len: 100,
            access: core::ptr::null(),
            kind: MemKind::Host,
        };
        assert_eq!(
            mh.range(Call::Isend, 0, 100).unwrap(),
            (0x1000 as *mut c_void, 100)
        );
        assert_eq!(
            mh.range(Call::Isend, 100, 0).unwrap(),
            (0x1064 as *mut c_void, 0)
        );
        assert_eq!(
            mh.range(Call::Irecv, 1, 100).unwrap_err(),
            PluginError::OutOfBounds {
                call: Call::Irecv,
                offset: 1,
                len: 100,
                region_len: 100
            }
        );
        assert!(matches!(
            mh.range(Call::Irecv, usize::MAX, 2).unwrap_err(),
            PluginError::OutOfBounds { .. }
        ));
        let big = MemHandle { len: 1 << 32, ..mh };
        assert_eq!(
            big.range(Call::Isend, 0, 1 << 31).unwrap_err(),
            PluginError::TooLarge {
                call: Call::Isend,
                len: 1 << 31
            }
        );
    }
}
