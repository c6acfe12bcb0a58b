//! A helper thread's device I/O in CUDA mode: socket bytes go through pinned host staging.
//!
//! TCPX sends straight from GPU memory (devmem TX, zero-copy) and the NIC writes received
//! payload straight into the GPU's RX pool. Over kernel TCP the sim stages instead, per helper
//! thread, in two pinned, device-mapped pieces of [`PIECE`] bytes, double-buffered:
//! * **send**: `cuMemcpyDtoHAsync` of piece `j+1` runs while piece `j` is written to the socket;
//! * **recv**: piece `j` is read from the socket while the scatter kernel of piece `j-1` copies
//!   the previous piece from staging into its bounce pages (the kernel reads the staging through
//!   its device mapping and the fragment list straight from the comm's metadata).
//!
//! A task returns once its bytes are in the socket (send) or in the bounce pool (recv, stream
//! synchronised), so the comm may complete the request. On any error the stream is synchronised
//! before returning, so no kernel or copy still uses the staging when the thread ends.
//!
//! Staging, stream and events are allocated by [`CudaStager::new`] on the thread that sets the
//! comm up (inside `connect`/`accept`, with the context pushed and popped again) and moved into
//! the helper thread, which makes the context current once ([`Stager::bind`], `cuCtxSetCurrent`;
//! helper threads run nothing but sim code): the recv comm's GPU, or for a send comm the GPU
//! current at `connect`. Nothing is allocated per chunk, nor on a helper thread — except when a
//! send comm's chunks come from another GPU than the one current at `connect`, which builds a
//! lane for that GPU on first use.
//!
//! [`HostPoolStager`] is the receive side with a host bounce pool (`TCPX_SIM_BOUNCE_MEM=host`):
//! it reads each chunk from the socket straight into the pool's pages ([`recv_into_pages`], one
//! vectored read per up to [`IOV_BATCH`] fragments) and makes no CUDA call at all.
//!
//! ```no_run
//! # fn demo(sock: &std::net::TcpStream) -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::bounce::{DeviceRange, Stager};
//! use tcpx_sim::cuda::stager::CudaStager;
//! let mut s = CudaStager::new(None, 0)?;
//! s.bind()?; // on the helper thread
//! let phase = tcpx_sim::helper::PhaseCell::new();
//! s.send(sock, 0, DeviceRange { addr: 0x7f00_0000_0000, len: 1 << 20, device: 0 }, &phase)?;
//! # Ok(()) }
//! ```

use std::io::{ErrorKind, IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use cudarc::driver::sys;
use tcpx::net::abi::LoadMeta;

use super::driver::{self, Context, Event, PinnedBuf, Stream};
use super::pool::GpuPool;
use crate::bounce::{DeviceRange, StagedChunk, Stager};
use crate::error::SimError;
use crate::helper::{Phase, PhaseCell};
use crate::pages::{pages_for, PAGE};

/// Bytes per staging piece (a multiple of the 4 KiB page, so pieces split chunks on fragment
/// boundaries).
pub const PIECE: usize = 256 << 10;

const _: () = assert!(PIECE % PAGE == 0);

/// Staging, stream and events of one context. Field order: the events and the stream (whose
/// drop synchronises it) go before the staging they may still use.
#[derive(Debug)]
struct Lane {
    ctx: Context,
    events: [Event; 2],
    stream: Stream,
    staging: PinnedBuf,
}

impl Lane {
    /// Allocates in `ctx` (each allocation pushes and pops it): the calling thread's current
    /// context is left as it was.
    fn new(ctx: Context) -> Result<Lane, SimError> {
        let staging = PinnedBuf::new(ctx, 2 * PIECE)?;
        let stream = Stream::new(ctx)?;
        Ok(Lane {
            ctx,
            events: [Event::new(ctx)?, Event::new(ctx)?],
            stream,
            staging,
        })
    }

    /// Host address of half `h` (0 or 1) of the staging.
    fn half_host(&self, h: usize) -> *mut u8 {
        self.staging.host().wrapping_add(h.min(1) * PIECE)
    }

    fn half_dev(&self, h: usize) -> u64 {
        self.staging.dev() + (h * PIECE) as u64
    }

    /// Queues the device→host copy of `n` bytes at `src` into half `h`, then its event.
    fn copy_in(&self, src: u64, n: usize, h: usize) -> Result<(), SimError> {
        // SAFETY: the lane's context is current on this thread (`bind`, or `lane` for a lane
        // made on the helper thread); the destination
        // is `n <= PIECE` bytes of half `h` of our pinned staging, which the caller does not
        // touch until the event below completed; `src` is inside a CUDA registration whose
        // request is outstanding (the caller's contract).
        driver::check("cuMemcpyDtoHAsync", unsafe {
            sys::cuMemcpyDtoHAsync_v2(self.half_host(h).cast(), src, n, self.stream.raw())
        })?;
        self.events[h].record(&self.stream)
    }
}

/// The [`Stager`] of CUDA mode (one per helper thread).
#[derive(Debug)]
pub struct CudaStager {
    pool: Option<Arc<GpuPool>>,
    lane: Option<Lane>,
}

impl CudaStager {
    /// A stager for a send comm (`pool` None) or a recv comm's helpers (its GPU's pool), with
    /// its staging allocated on `device` now, on the calling thread, whose current context is
    /// left unchanged; the helper thread binds it ([`Stager::bind`]).
    pub fn new(pool: Option<Arc<GpuPool>>, device: i32) -> Result<CudaStager, SimError> {
        let lane = Lane::new(driver::primary(device)?)?;
        Ok(CudaStager {
            pool,
            lane: Some(lane),
        })
    }

    /// The lane of `device` (helper thread): the bound one, or a new one (made current) when a
    /// chunk comes from another GPU.
    fn lane(&mut self, device: i32) -> Result<&Lane, SimError> {
        if self.lane.as_ref().map(|l| l.ctx.device) != Some(device) {
            self.lane = None;
            let lane = Lane::new(driver::primary(device)?)?;
            driver::make_current(lane.ctx)?;
            self.lane = Some(lane);
        }
        self.lane.as_ref().ok_or(SimError::Protocol {
            why: "no CUDA lane on a helper thread",
        })
    }
}

fn send_pieces(
    lane: &Lane,
    sock: &TcpStream,
    index: usize,
    src: DeviceRange,
    phase: &PhaseCell,
) -> Result<(), SimError> {
    let len = src.len;
    lane.copy_in(src.addr as u64, len.min(PIECE), 0)?;
    let (mut off, mut h) = (0usize, 0usize);
    while off < len {
        let n = (len - off).min(PIECE);
        phase.set(Phase::CudaCopy);
        lane.events[h].synchronize()?;
        let next = off + n;
        if next < len {
            // Half h^1 was sent in the previous round (send_all returned): free to refill.
            lane.copy_in((src.addr + next) as u64, (len - next).min(PIECE), h ^ 1)?;
        }
        // SAFETY: `n <= PIECE` bytes of half `h` of the lane's staging, which only this helper
        // thread uses; the copy that filled it completed (its event was synchronised) and the
        // next copy into it is queued only after this write returned.
        let bytes = unsafe { std::slice::from_raw_parts(lane.half_host(h), n) };
        phase.set(Phase::SocketSend);
        (&*sock)
            .write_all(bytes)
            .map_err(|e| SimError::from_io("send", Some(index), &e))?;
        off = next;
        h ^= 1;
    }
    Ok(())
}

fn recv_pieces(
    lane: &Lane,
    pool: &GpuPool,
    sock: &TcpStream,
    index: usize,
    chunk: StagedChunk,
    phase: &PhaseCell,
) -> Result<(), SimError> {
    let len = chunk.len as usize;
    let mut pending = [false; 2];
    let (mut off, mut h) = (0usize, 0usize);
    while off < len {
        let n = (len - off).min(PIECE);
        if pending[h] {
            phase.set(Phase::CudaScatter);
            lane.events[h].synchronize()?;
            pending[h] = false;
        }
        // SAFETY: `n <= PIECE` bytes of half `h` of the lane's staging, which only this helper
        // thread uses; the kernel that last read it completed (`pending[h]` was synchronised
        // above) and the next one is queued only after this read returned.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lane.half_host(h), n) };
        phase.set(Phase::SocketRecv);
        (&*sock)
            .read_exact(bytes)
            .map_err(|e| SimError::from_io("recv", Some(index), &e))?;
        let nfrags = pages_for(n as u32) as u32;
        let frags =
            (chunk.frags + (off / PAGE) * core::mem::size_of::<tcpx::net::abi::LoadMeta>()) as u64;
        // SAFETY: the pool's context is current (the lane is the pool's device); the stream is
        // the lane's; half `h` holds the piece's `n` bytes and is not touched again before its
        // event completed; `frags` are this piece's fragments (a page-aligned slice of the
        // chunk's, placed by the comm, whose pages it owns until irecvConsumed).
        unsafe { pool.scatter(&lane.stream, lane.half_dev(h), frags, nfrags) }?;
        lane.events[h].record(&lane.stream)?;
        pending[h] = true;
        off += n;
        h ^= 1;
    }
    phase.set(Phase::CudaScatter);
    lane.stream.synchronize()
}

fn check_chunk(chunk: &StagedChunk) -> Result<(), SimError> {
    if chunk.len == 0 || pages_for(chunk.len) != chunk.nfrags as usize {
        return Err(SimError::Protocol {
            why: "a device receive chunk whose fragments do not cover it",
        });
    }
    Ok(())
}

impl Stager for CudaStager {
    fn bind(&mut self) -> Result<(), SimError> {
        match &self.lane {
            Some(l) => driver::make_current(l.ctx),
            None => Ok(()),
        }
    }

    fn send(
        &mut self,
        sock: &TcpStream,
        index: usize,
        src: DeviceRange,
        phase: &PhaseCell,
    ) -> Result<(), SimError> {
        if src.len == 0 {
            return Ok(());
        }
        let lane = self.lane(src.device)?;
        let r = send_pieces(lane, sock, index, src, phase);
        if r.is_err() {
            let _ = lane.stream.synchronize();
        }
        r
    }

    fn recv(
        &mut self,
        sock: &TcpStream,
        index: usize,
        chunk: StagedChunk,
        phase: &PhaseCell,
    ) -> Result<(), SimError> {
        let pool = self.pool.clone().ok_or(SimError::Protocol {
            why: "a device receive chunk on a send comm's helper",
        })?;
        check_chunk(&chunk)?;
        let lane = self.lane(pool.ctx().device)?;
        let r = recv_pieces(lane, &pool, sock, index, chunk, phase);
        if r.is_err() {
            let _ = lane.stream.synchronize();
        }
        r
    }
}

/// Fragments per vectored read of [`recv_into_pages`] (64 pages: 256 KiB per `readv`).
pub const IOV_BATCH: usize = 64;

/// Reads, in order, `frags[i].len` bytes into `base + frags[i].src_off` for every fragment, from
/// `sock` — with `readv` over up to [`IOV_BATCH`] fragments at a time, so a 512 KiB chunk costs
/// a couple of system calls and no copy besides the kernel's. A fragment outside `[0, len)` of
/// the pool is `InvalidData`; a peer that closes early is `UnexpectedEof`.
///
/// # Safety
/// `base..base + len` is memory of the caller, writable for the whole call, that no Rust
/// reference points into and nobody else writes meanwhile; the fragments' ranges do not overlap.
pub unsafe fn recv_into_pages(
    sock: &TcpStream,
    base: *mut u8,
    len: usize,
    frags: &[LoadMeta],
) -> std::io::Result<()> {
    let bad = || std::io::Error::new(ErrorKind::InvalidData, "fragment outside the bounce pool");
    for f in frags {
        let end = (f.src_off as usize)
            .checked_add(f.len as usize)
            .ok_or_else(bad)?;
        if end > len {
            return Err(bad());
        }
    }
    // (fragment, bytes of it already read)
    let (mut i, mut done) = (0usize, 0usize);
    loop {
        while i < frags.len() && frags[i].len == 0 {
            i += 1;
        }
        if i == frags.len() {
            break;
        }
        let mut iov: [IoSliceMut<'_>; IOV_BATCH] =
            core::array::from_fn(|_| IoSliceMut::new(&mut []));
        let mut n = 0;
        for (k, f) in frags[i..].iter().take(IOV_BATCH).enumerate() {
            let skip = if k == 0 { done } else { 0 };
            // SAFETY: `src_off + len <= len` of the pool (checked above), so the range is inside
            // the caller's memory; fragments do not overlap and no other reference exists
            // (the caller's contract), so each slice is the only access to its bytes until the
            // read below returns, after which the slices are gone.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(
                    base.add(f.src_off as usize + skip),
                    f.len as usize - skip,
                )
            };
            iov[k] = IoSliceMut::new(buf);
            n = k + 1;
        }
        let got = match (&*sock).read_vectored(&mut iov[..n]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut left = got;
        while left > 0 && i < frags.len() {
            let room = frags[i].len as usize - done;
            if left >= room {
                left -= room;
                i += 1;
                done = 0;
            } else {
                done += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// The receive side of a recv comm whose GPU has a host bounce pool (`TCPX_SIM_BOUNCE_MEM=host`):
/// chunks go from the socket straight into their pool pages; no CUDA call, no staging.
#[derive(Debug)]
pub struct HostPoolStager {
    pool: Arc<GpuPool>,
    /// Host and device addresses of the comm's `netUnpackMeta`, and its size.
    meta_host: usize,
    meta_dev: u64,
    meta_len: usize,
}

impl HostPoolStager {
    /// A stager for a helper of the recv comm whose metadata is at `meta_host` (host) /
    /// `meta_dev` (device), `meta_len` bytes; `pool` must be a host pool.
    pub fn new(
        pool: Arc<GpuPool>,
        meta_host: usize,
        meta_dev: u64,
        meta_len: usize,
    ) -> Result<HostPoolStager, SimError> {
        if pool.host_base().is_none() {
            return Err(SimError::Protocol {
                why: "a host-pool stager over a device bounce pool",
            });
        }
        Ok(HostPoolStager {
            pool,
            meta_host,
            meta_dev,
            meta_len,
        })
    }
}

impl Stager for HostPoolStager {
    fn send(
        &mut self,
        _sock: &TcpStream,
        _index: usize,
        _src: DeviceRange,
        _phase: &PhaseCell,
    ) -> Result<(), SimError> {
        Err(SimError::Protocol {
            why: "a device send chunk on a recv comm's helper",
        })
    }

    fn recv(
        &mut self,
        sock: &TcpStream,
        index: usize,
        chunk: StagedChunk,
        phase: &PhaseCell,
    ) -> Result<(), SimError> {
        check_chunk(&chunk)?;
        let bug = SimError::Protocol {
            why: "a receive chunk whose fragments are outside the comm's metadata",
        };
        let n = chunk.nfrags as usize;
        let off = (chunk.frags as u64)
            .checked_sub(self.meta_dev)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|o| {
                o % core::mem::size_of::<LoadMeta>() == 0
                    && o + n * core::mem::size_of::<LoadMeta>() <= self.meta_len
            })
            .ok_or(bug)?;
        let mut frags = [LoadMeta::default(); IOV_BATCH];
        let (base, len) = self.pool.host_base().ok_or(SimError::Protocol {
            why: "a host-pool stager over a device bounce pool",
        })?;
        phase.set(Phase::SocketRecv);
        let mut first = 0;
        while first < n {
            let m = (n - first).min(IOV_BATCH);
            for (k, f) in frags[..m].iter_mut().enumerate() {
                let at = self.meta_host + off + (first + k) * core::mem::size_of::<LoadMeta>();
                // SAFETY: inside the comm's live metadata (checked above; the queue outlives its
                // helpers); the comm wrote these entries in `place` before queueing the chunk
                // (the queue's channel orders that write before this read) and does not touch
                // them again before the receive is consumed.
                *f = unsafe { (at as *const LoadMeta).read() };
            }
            // SAFETY: the pool's host mapping `base..base + len` lives as long as `self.pool`;
            // the fragments' pages belong to this receive alone (the page allocator hands each
            // page to one receive, until irecvConsumed), so nothing else writes them and no Rust
            // reference points into them; each fragment has its own page.
            unsafe { recv_into_pages(sock, base, len, &frags[..m]) }
                .map_err(|e| SimError::from_io("recv", Some(index), &e))?;
            first += m;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn receives_land_in_their_pages_in_fragment_order() {
        // 200 fragments (more than one vectored batch) over shuffled pages, the last one short,
        // written by the peer in small pieces so reads end mid-fragment.
        let pages = 256usize;
        let mut pool = vec![0xdbu8; pages * PAGE];
        let order: Vec<u32> = (0..200u32).map(|i| (i * 77) % pages as u32).collect();
        let total = 199 * PAGE + 1000;
        let frags: Vec<LoadMeta> = order
            .iter()
            .enumerate()
            .map(|(i, p)| LoadMeta {
                src_off: p * PAGE as u32,
                len: if i == 199 { 1000 } else { PAGE as u32 },
                dst_off: (i * PAGE) as u64,
            })
            .collect();
        let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
        let (a, b) = pair();
        let sender = {
            let data = data.clone();
            std::thread::spawn(move || {
                for piece in data.chunks(3001) {
                    (&a).write_all(piece).unwrap();
                }
            })
        };
        // SAFETY: `pool` is a live Vec not otherwise referenced during the call; distinct pages.
        unsafe { recv_into_pages(&b, pool.as_mut_ptr(), pool.len(), &frags) }.unwrap();
        sender.join().unwrap();
        for f in &frags {
            let (s, d, n) = (f.src_off as usize, f.dst_off as usize, f.len as usize);
            assert!(pool[s..s + n] == data[d..d + n], "fragment at {d}");
        }
        // Pages nobody received into keep their poison.
        let used: std::collections::HashSet<u32> = order.iter().copied().collect();
        for p in (0..pages as u32).filter(|p| !used.contains(p)) {
            let at = p as usize * PAGE;
            assert!(pool[at..at + PAGE].iter().all(|b| *b == 0xdb), "page {p}");
        }
    }

    #[test]
    fn fragments_outside_the_pool_and_early_close_fail() {
        let mut pool = vec![0u8; 2 * PAGE];
        let (a, b) = pair();
        let outside = [LoadMeta {
            src_off: PAGE as u32,
            len: PAGE as u32 + 1,
            dst_off: 0,
        }];
        // SAFETY: as above.
        let e = unsafe { recv_into_pages(&b, pool.as_mut_ptr(), pool.len(), &outside) };
        assert_eq!(e.map_err(|e| e.kind()), Err(ErrorKind::InvalidData));
        (&a).write_all(&[1u8; 100]).unwrap();
        drop(a);
        let one = [LoadMeta {
            src_off: 0,
            len: PAGE as u32,
            dst_off: 0,
        }];
        // SAFETY: as above.
        let e = unsafe { recv_into_pages(&b, pool.as_mut_ptr(), pool.len(), &one) };
        assert_eq!(e.map_err(|e| e.kind()), Err(ErrorKind::UnexpectedEof));
        assert!(pool[..100].iter().all(|b| *b == 1));
    }
}
