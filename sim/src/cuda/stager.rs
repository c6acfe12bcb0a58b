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
//! The thread's context is made current once, when the thread starts (`cuCtxSetCurrent`; helper
//! threads run nothing but sim code): the recv comm's GPU, or for a send comm the GPU current at
//! `connect`; again only if a send comm's chunks come from another GPU. Staging, stream and
//! events are allocated then — while the comm is set up — and kept until the thread ends:
//! nothing is allocated per chunk.
//!
//! ```no_run
//! # fn demo(sock: &std::net::TcpStream) -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::bounce::{DeviceRange, Stager};
//! use tcpx_sim::cuda::stager::CudaStager;
//! let mut s = CudaStager::new(None, 0)?;
//! s.send(sock, 0, DeviceRange { addr: 0x7f00_0000_0000, len: 1 << 20, device: 0 })?;
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use cudarc::driver::sys;

use super::driver::{self, Context, Event, PinnedBuf, Stream};
use super::pool::GpuPool;
use crate::bounce::{DeviceRange, StagedChunk, Stager};
use crate::error::SimError;
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
    fn new(ctx: Context) -> Result<Lane, SimError> {
        driver::make_current(ctx)?;
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
        // SAFETY: the lane's context is current on this thread (set in `new`); the destination
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
    /// its staging set up on `device` and made current on the calling (helper) thread.
    pub fn new(pool: Option<Arc<GpuPool>>, device: i32) -> Result<CudaStager, SimError> {
        let mut s = CudaStager { pool, lane: None };
        s.lane(device)?;
        Ok(s)
    }

    /// The lane of `device`, created (and made current) on first use or when the device changes.
    fn lane(&mut self, device: i32) -> Result<&Lane, SimError> {
        if self.lane.as_ref().map(|l| l.ctx.device) != Some(device) {
            self.lane = None;
            self.lane = Some(Lane::new(driver::primary(device)?)?);
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
) -> Result<(), SimError> {
    let len = src.len;
    lane.copy_in(src.addr as u64, len.min(PIECE), 0)?;
    let (mut off, mut h) = (0usize, 0usize);
    while off < len {
        let n = (len - off).min(PIECE);
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
) -> Result<(), SimError> {
    let len = chunk.len as usize;
    let mut pending = [false; 2];
    let (mut off, mut h) = (0usize, 0usize);
    while off < len {
        let n = (len - off).min(PIECE);
        if pending[h] {
            lane.events[h].synchronize()?;
            pending[h] = false;
        }
        // SAFETY: `n <= PIECE` bytes of half `h` of the lane's staging, which only this helper
        // thread uses; the kernel that last read it completed (`pending[h]` was synchronised
        // above) and the next one is queued only after this read returned.
        let bytes = unsafe { std::slice::from_raw_parts_mut(lane.half_host(h), n) };
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
    lane.stream.synchronize()
}

impl Stager for CudaStager {
    fn send(&mut self, sock: &TcpStream, index: usize, src: DeviceRange) -> Result<(), SimError> {
        if src.len == 0 {
            return Ok(());
        }
        let lane = self.lane(src.device)?;
        let r = send_pieces(lane, sock, index, src);
        if r.is_err() {
            let _ = lane.stream.synchronize();
        }
        r
    }

    fn recv(&mut self, sock: &TcpStream, index: usize, chunk: StagedChunk) -> Result<(), SimError> {
        let pool = self.pool.clone().ok_or(SimError::Protocol {
            why: "a device receive chunk on a send comm's helper",
        })?;
        if chunk.len == 0 || pages_for(chunk.len) != chunk.nfrags as usize {
            return Err(SimError::Protocol {
                why: "a device receive chunk whose fragments do not cover it",
            });
        }
        let lane = self.lane(pool.ctx().device)?;
        let r = recv_pieces(lane, &pool, sock, index, chunk);
        if r.is_err() {
            let _ = lane.stream.synchronize();
        }
        r
    }
}
