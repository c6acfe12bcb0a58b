//! A CUDA-mode recv comm's unpack queue: TCPX's device handle and metadata, and the bounce pages
//! of its receives.
//!
//! Layout, as TCPX builds it (`shared/reference/tcpx-plugin-contract.md` §2.9):
//! * `netUnpackMeta` (16 slots × 2048 `loadMeta`, then `cnt[16]`) in pinned, device-mapped,
//!   portable host memory (`cuMemHostAlloc(DEVICEMAP | PORTABLE)`); `meta` in the handle is its
//!   device address (`cuMemHostGetDevicePointer`, equal to the host address under UVA);
//! * the 24-byte `unpackNetDeviceHandle {meta, bounce_buf, head = u64::MAX}` in device memory
//!   (`cuMemAlloc`); `accept` hands out its device address; NCCL's kernel writes `head` back;
//! * `bounce_buf` = the base of the GPU's shared [`GpuPool`].
//!
//! Per receive in slot `s`: [`UnpackQueue::place`] takes the pages of each chunk (shuffled with
//! the comm's [`Shuffler`]) and writes its fragments to `mem[s][first..]` before the chunk goes to
//! a helper; [`UnpackQueue::publish`] writes `cnt[s]` last (release); [`UnpackQueue::release`]
//! (irecvConsumed) poisons the pages — with a kernel it waits for (device pool) or the CPU (host
//! pool) — and only then frees them, so a page is never reused while a poison write is pending,
//! and a driver that consumed before its unpack finished reads `0xdb`.
//!
//! Invariants:
//! * `placed[s]` counts the fragments written for the receive in slot `s`; place, publish and
//!   release must agree with it (a mismatch is a sim bug, reported as a protocol error).
//! * Nothing is allocated per chunk: the page scratch is sized for 2048 pages at creation.
//! * On drop (comm closed; its helpers were joined first) the pages still held are freed without
//!   poison.
//!
//! ```no_run
//! # fn demo(log: &tcpx_sim::log::Logger) -> Result<(), tcpx_sim::error::SimError> {
//! use tcpx_sim::bounce::UnpackQueue;
//! use tcpx_sim::cuda::{pool::GpuPool, queue::CudaUnpackQueue};
//! let pool = GpuPool::for_device(0, 64 << 20, tcpx_sim::config::BounceMem::Device, log)?;
//! let mut q = CudaUnpackQueue::new(pool, 1)?;
//! let chunk = q.place(0, 0, 0, 10_000)?.expect("free pages");
//! assert_eq!(chunk.nfrags, 3);
//! # Ok(()) }
//! ```

use core::mem::{offset_of, size_of};
use std::sync::Arc;

use tcpx::net::abi::{
    LoadMeta, NetUnpackMeta, UnpackNetDeviceHandle, MAX_FRAGMENTS, UNPACK_QUEUE_DEPTH,
};

use super::driver::{DeviceBuf, Entered, PinnedBuf, Stream};
use super::pool::GpuPool;
use super::stager::{CudaStager, HostPoolStager};
use crate::bounce::{store_count, DeviceIo, StagedChunk, Stager, UnpackQueue};
use crate::config::BounceMem;
use crate::error::SimError;
use crate::pages::{chunk_fragments, pages_for, Shuffler, PAGE};

/// Helper-thread I/O of a CUDA recv comm: into its GPU's pool — staged and scattered by a
/// kernel (device pool), or read straight into the pages (host pool).
#[derive(Debug)]
pub struct CudaRecvIo {
    pool: Arc<GpuPool>,
    /// The comm's metadata: host address, device address, bytes (for [`HostPoolStager`]).
    meta_host: usize,
    meta_dev: u64,
    meta_len: usize,
}

impl DeviceIo for CudaRecvIo {
    fn stager(&self) -> Result<Box<dyn Stager>, SimError> {
        match self.pool.kind() {
            BounceMem::Device => {
                let device = self.pool.ctx().device;
                Ok(Box::new(CudaStager::new(
                    Some(Arc::clone(&self.pool)),
                    device,
                )?))
            }
            BounceMem::Host => Ok(Box::new(HostPoolStager::new(
                Arc::clone(&self.pool),
                self.meta_host,
                self.meta_dev,
                self.meta_len,
            )?)),
        }
    }
}

/// The unpack queue of one CUDA-mode recv comm.
#[derive(Debug)]
pub struct CudaUnpackQueue {
    pool: Arc<GpuPool>,
    meta: PinnedBuf,
    handle: DeviceBuf,
    stream: Stream,
    rng: Shuffler,
    placed: [usize; UNPACK_QUEUE_DEPTH],
    scratch: Box<[u32]>,
    io: Arc<CudaRecvIo>,
}

fn bug(why: &'static str) -> SimError {
    SimError::Protocol { why }
}

impl CudaUnpackQueue {
    /// Allocates the metadata, the device handle and a stream in `pool`'s context; `seed`
    /// seeds the comm's page shuffler.
    pub fn new(pool: Arc<GpuPool>, seed: u64) -> Result<CudaUnpackQueue, SimError> {
        let ctx = pool.ctx();
        let meta = PinnedBuf::new(ctx, size_of::<NetUnpackMeta>())?;
        let handle = DeviceBuf::new(ctx, size_of::<UnpackNetDeviceHandle>())?;
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&meta.dev().to_ne_bytes());
        bytes[8..16].copy_from_slice(&pool.base().to_ne_bytes());
        bytes[16..].copy_from_slice(&u64::MAX.to_ne_bytes());
        handle.write(&bytes)?;
        let stream = Stream::new(ctx)?;
        Ok(CudaUnpackQueue {
            io: Arc::new(CudaRecvIo {
                pool: Arc::clone(&pool),
                meta_host: meta.host() as usize,
                meta_dev: meta.dev(),
                meta_len: meta.len(),
            }),
            pool,
            meta,
            handle,
            stream,
            rng: Shuffler::new(seed),
            placed: [0; UNPACK_QUEUE_DEPTH],
            scratch: vec![0u32; MAX_FRAGMENTS].into_boxed_slice(),
        })
    }

    /// Host address of the metadata.
    pub fn meta_host(&self) -> *mut NetUnpackMeta {
        self.meta.host().cast()
    }

    /// Byte offset of `mem[slot][i]` in the metadata.
    fn frag_offset(slot: usize, i: usize) -> usize {
        offset_of!(NetUnpackMeta, mem) + (slot * MAX_FRAGMENTS + i) * size_of::<LoadMeta>()
    }

    /// Host address of `mem[slot][i]` (`slot < 16`, `i < 2048`).
    fn frag_host(&self, slot: usize, i: usize) -> *mut LoadMeta {
        self.meta
            .host()
            .wrapping_add(Self::frag_offset(slot, i))
            .cast()
    }

    /// The pages of the first `count` fragments of `slot`.
    fn pages_of(&self, slot: usize, count: usize) -> impl Iterator<Item = u32> + '_ {
        (0..count).map(move |i| {
            // SAFETY: `slot < 16` and `i < count <= 2048` (callers check) keep the read inside
            // our metadata; only this queue writes `mem`, and not concurrently (`&self`).
            let f = unsafe { self.frag_host(slot, i).read() };
            f.src_off / PAGE as u32
        })
    }
}

impl UnpackQueue for CudaUnpackQueue {
    fn device_handle(&self) -> *mut UnpackNetDeviceHandle {
        self.handle.ptr() as *mut UnpackNetDeviceHandle
    }

    fn device_io(&self) -> Option<Arc<dyn DeviceIo>> {
        Some(Arc::clone(&self.io) as Arc<dyn DeviceIo>)
    }

    fn place(
        &mut self,
        slot: usize,
        first: usize,
        dst_off: u64,
        len: u32,
    ) -> Result<Option<StagedChunk>, SimError> {
        if slot >= UNPACK_QUEUE_DEPTH || len == 0 {
            return Err(bug("chunk placed in a bad slot or with no bytes"));
        }
        if self.placed[slot] != first {
            return Err(bug("chunk fragments placed out of order"));
        }
        let n = pages_for(len);
        if first + n > MAX_FRAGMENTS {
            return Err(SimError::TooManyFragments { count: first + n });
        }
        let row = self.frag_host(slot, first);
        let pages = &mut self.scratch[..n];
        if !self.pool.alloc(pages)? {
            return Ok(None);
        }
        self.rng.shuffle(pages);
        for (i, f) in chunk_fragments(pages, dst_off, len).enumerate() {
            // SAFETY: `first + i < first + n <= 2048` and `slot < 16` keep the write inside the
            // metadata; the driver reads `mem[slot]` only after `cnt[slot]` is published for
            // this receive, which happens after its last chunk was placed.
            unsafe { row.add(i).write(f) };
        }
        self.placed[slot] = first + n;
        Ok(Some(StagedChunk {
            frags: (self.meta.dev() as usize) + Self::frag_offset(slot, first),
            nfrags: n as u32,
            len,
        }))
    }

    fn publish(&mut self, slot: usize, count: usize) -> Result<(), SimError> {
        if slot >= UNPACK_QUEUE_DEPTH || self.placed[slot] != count {
            return Err(bug("published fragment count differs from the placed one"));
        }
        // SAFETY: our live metadata; only this queue writes `cnt`.
        unsafe { store_count(self.meta_host(), slot, count) };
        Ok(())
    }

    fn release(&mut self, slot: usize, count: usize) -> Result<(), SimError> {
        if slot >= UNPACK_QUEUE_DEPTH || self.placed[slot] != count {
            return Err(bug("released fragment count differs from the placed one"));
        }
        if count == 0 {
            return Ok(());
        }
        if self.pool.kind() == BounceMem::Host {
            // SAFETY: the pages of this receive's `count` fragments are this comm's until the
            // free below, and irecvConsumed says the driver finished reading them.
            unsafe { self.pool.poison_host(self.pages_of(slot, count)) }?;
            self.pool.free(self.pages_of(slot, count))?;
            self.placed[slot] = 0;
            return Ok(());
        }
        let frags = self.meta.dev() + Self::frag_offset(slot, 0) as u64;
        {
            let _in = Entered::new(self.pool.ctx())?;
            // SAFETY: the pool's context is current and the stream is ours in it; `frags` holds
            // `count` fragments of pages this comm owns, unchanged until the synchronize below.
            unsafe { self.pool.poison(&self.stream, frags, count as u32) }?;
            if let Err(e) = self.stream.synchronize() {
                // The poison kernel may still run: its pages are never freed (nor reused).
                self.placed[slot] = 0;
                return Err(e);
            }
        }
        self.pool.free(self.pages_of(slot, count))?;
        self.placed[slot] = 0;
        Ok(())
    }
}

impl Drop for CudaUnpackQueue {
    fn drop(&mut self) {
        for slot in 0..UNPACK_QUEUE_DEPTH {
            let n = self.placed[slot];
            if n > 0 {
                let _ = self.pool.free(self.pages_of(slot, n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_offsets_follow_the_metadata_layout() {
        assert_eq!(CudaUnpackQueue::frag_offset(0, 0), 0);
        assert_eq!(CudaUnpackQueue::frag_offset(0, 1), 16);
        assert_eq!(CudaUnpackQueue::frag_offset(1, 0), MAX_FRAGMENTS * 16);
        assert_eq!(
            CudaUnpackQueue::frag_offset(UNPACK_QUEUE_DEPTH - 1, MAX_FRAGMENTS - 1) + 16,
            offset_of!(NetUnpackMeta, cnt),
            "the last fragment ends where cnt[] starts"
        );
    }
}
