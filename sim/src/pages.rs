//! Bounce-pool pages in pure Rust: the page allocator, the per-comm page shuffler and the
//! fragment builder of CUDA mode (no CUDA here, so all of it is unit-tested on any machine).
//!
//! On TCPX the NIC writes a receive into free 4 KiB pages of the GPU's RX pool, wherever they
//! happen to be, and the plugin publishes one `loadMeta` per page (`{src_off, len, dst_off}`).
//! tcpx-sim's CUDA mode does the same with its own pool:
//! * [`PageAllocator`]: the pool's free pages, handed out **FIFO** (a page freed now is reused
//!   only after every other free page — like an RX ring) and tracked in a bitmap, so a page is
//!   never given to two receives and a double free is caught. The free list starts in a
//!   shuffled order, so fragment sources are scattered over the whole pool from the first
//!   receive on.
//! * [`Shuffler`]: a small deterministic PRNG (xorshift64*, seeded per comm) that permutes the
//!   pages of each chunk, so consecutive 4 KiB of a chunk never sit in consecutive pages and a
//!   driver that ignores `src_off` fails.
//! * [`chunk_fragments`]: the fragments of one chunk: fragment `i` covers chunk bytes
//!   `[i·4096, min((i+1)·4096, len))`, sits at `src_off = page_i · 4096`, and lands at
//!   `dst_off = chunk offset + i·4096` (the running offset in the receive). Only the last one
//!   may be short.
//!
//! Invariants:
//! * An allocated page is owned by exactly one chunk until [`PageAllocator::release`] returns
//!   it; `release` refuses pages that are out of range or not allocated.
//! * Nothing here allocates after construction: the allocator's free list and bitmap are sized
//!   for the whole pool up front, and callers pass their own page buffers.
//!
//! ```
//! use tcpx_sim::pages::{chunk_fragments, pages_for, PageAllocator, Shuffler};
//! let mut pool = PageAllocator::new(64, 1);
//! let mut pages = [0u32; 3];
//! assert_eq!(pages_for(9000), 3);
//! assert!(pool.alloc_into(&mut pages));
//! Shuffler::new(7).shuffle(&mut pages);
//! let frags: Vec<_> = chunk_fragments(&pages, 4096, 9000).collect();
//! assert_eq!(frags[2].len, 9000 - 8192);
//! assert_eq!(frags[1].dst_off, 4096 + 4096);
//! pool.release(pages.iter().copied()).unwrap();
//! assert_eq!(pool.free_pages(), 64);
//! ```
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use tcpx::net::abi::{LoadMeta, NET_PAGE_SIZE};

/// Bytes per bounce-pool page (TCPX's devmem page, `NCCL_NET_MTU_SIZE`).
pub const PAGE: usize = NET_PAGE_SIZE;

/// Pages a chunk of `len` bytes occupies (the last one may be partly used).
pub fn pages_for(len: u32) -> usize {
    (len as usize).div_ceil(PAGE)
}

/// A deterministic xorshift64* generator; one per comm, so a run is reproducible.
#[derive(Clone, Debug)]
pub struct Shuffler(u64);

impl Shuffler {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Shuffler {
        // splitmix64 of the seed: never 0, and nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Shuffler(z | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (`n > 0`; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Fisher–Yates shuffle of `items`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Why [`PageAllocator::release`] refused a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageError {
    /// The page number is not in the pool.
    OutOfRange {
        /// The page.
        page: u32,
    },
    /// The page is free already (freed twice, or never handed out).
    NotAllocated {
        /// The page.
        page: u32,
    },
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PageError::OutOfRange { page } => write!(f, "page {page} is outside the bounce pool"),
            PageError::NotAllocated { page } => {
                write!(f, "page {page} was released but is not allocated")
            }
        }
    }
}

impl std::error::Error for PageError {}

/// The free pages of one bounce pool, handed out first-in first-out.
#[derive(Debug)]
pub struct PageAllocator {
    free: VecDeque<u32>,
    used: Vec<u64>,
    npages: u32,
}

impl PageAllocator {
    /// A pool of `npages` pages, all free, in an order shuffled with `seed`.
    pub fn new(npages: u32, seed: u64) -> PageAllocator {
        let mut order: Vec<u32> = (0..npages).collect();
        Shuffler::new(seed).shuffle(&mut order);
        PageAllocator {
            free: order.into(),
            used: vec![0; (npages as usize).div_ceil(64)],
            npages,
        }
    }

    /// Pages in the pool.
    pub fn npages(&self) -> u32 {
        self.npages
    }

    /// Pages free now.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Whether `page` is handed out.
    pub fn is_allocated(&self, page: u32) -> bool {
        page < self.npages && self.used[page as usize / 64] & (1 << (page % 64)) != 0
    }

    /// Takes `out.len()` pages, oldest-freed first, into `out`; all or nothing. `false` (and
    /// `out` untouched) when fewer are free: the caller waits for releases.
    pub fn alloc_into(&mut self, out: &mut [u32]) -> bool {
        if out.len() > self.free.len() {
            return false;
        }
        for slot in out.iter_mut() {
            let Some(p) = self.free.pop_front() else {
                return false;
            };
            self.used[p as usize / 64] |= 1 << (p % 64);
            *slot = p;
        }
        true
    }

    /// Returns pages to the back of the free list. Stops at the first page that is out of range
    /// or not allocated (the pages before it are released).
    pub fn release(&mut self, pages: impl IntoIterator<Item = u32>) -> Result<(), PageError> {
        for p in pages {
            if p >= self.npages {
                return Err(PageError::OutOfRange { page: p });
            }
            let (w, bit) = (p as usize / 64, 1u64 << (p % 64));
            if self.used[w] & bit == 0 {
                return Err(PageError::NotAllocated { page: p });
            }
            self.used[w] &= !bit;
            self.free.push_back(p);
        }
        Ok(())
    }
}

/// The fragments of a chunk of `len` bytes that starts at offset `dst_off` of its receive and
/// lies in `pages` (one page per 4 KiB, in chunk order; `pages.len() == pages_for(len)`).
pub fn chunk_fragments(
    pages: &[u32],
    dst_off: u64,
    len: u32,
) -> impl ExactSizeIterator<Item = LoadMeta> + '_ {
    pages.iter().enumerate().map(move |(i, &p)| {
        let start = (i * PAGE) as u32;
        LoadMeta {
            src_off: p.wrapping_mul(PAGE as u32),
            len: len.saturating_sub(start).min(PAGE as u32),
            dst_off: dst_off + u64::from(start),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpx_core::unpack::validate_fragments;

    #[test]
    fn shuffler_is_deterministic_and_a_permutation() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        Shuffler::new(42).shuffle(&mut a);
        Shuffler::new(42).shuffle(&mut b);
        assert_eq!(a, b, "same seed, same order");
        let mut c: Vec<u32> = (0..1000).collect();
        Shuffler::new(43).shuffle(&mut c);
        assert_ne!(a, c, "another seed, another order");
        assert_ne!(a, (0..1000).collect::<Vec<u32>>(), "actually shuffled");
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<u32>>(), "a permutation");
        // Seed 0 works and does not get stuck.
        let mut z = Shuffler::new(0);
        assert_ne!(z.next_u64(), z.next_u64());
    }

    #[test]
    fn fragments_tile_the_chunk_with_a_running_dst_offset() {
        for len in [1u32, 100, 4095, 4096, 4097, 8192, 524_288, 524_288 + 17] {
            let n = pages_for(len);
            let mut pages: Vec<u32> = (0..n as u32).map(|p| p * 3 + 1).collect();
            Shuffler::new(u64::from(len)).shuffle(&mut pages);
            let dst = 3 * 524_288u64 + 12;
            let frags: Vec<LoadMeta> = chunk_fragments(&pages, dst, len).collect();
            assert_eq!(frags.len(), n);
            let mut at = dst;
            for (i, f) in frags.iter().enumerate() {
                assert_eq!(f.dst_off, at, "running dst_off");
                assert_eq!(
                    f.src_off,
                    pages[i] * PAGE as u32,
                    "src is the page's offset"
                );
                assert_eq!(f.src_off as usize % PAGE, 0);
                let expect = if i + 1 < n {
                    PAGE as u32
                } else {
                    len - (i * PAGE) as u32
                };
                assert_eq!(f.len, expect, "only the last page is short");
                at += u64::from(f.len);
            }
            assert_eq!(at - dst, u64::from(len), "lengths sum to the chunk");
            // The same list, relative to the chunk, passes the core's unpack validation.
            let rel: Vec<LoadMeta> = frags
                .iter()
                .map(|f| LoadMeta {
                    dst_off: f.dst_off - dst,
                    ..*f
                })
                .collect();
            let pool = (n * 3 + 1) * PAGE;
            assert!(
                validate_fragments(&rel, pool as u64, u64::from(len)).is_ok(),
                "len {len}"
            );
        }
    }

    #[test]
    fn allocator_hands_out_each_page_once_until_released() {
        let mut a = PageAllocator::new(100, 9);
        let mut first = [0u32; 60];
        assert!(a.alloc_into(&mut first));
        let mut second = [0u32; 40];
        assert!(a.alloc_into(&mut second));
        let mut all: Vec<u32> = first.iter().chain(second.iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<u32>>(), "every page once");
        // Exhausted: all or nothing, `out` untouched.
        let mut more = [7u32; 1];
        assert!(!a.alloc_into(&mut more));
        assert_eq!(more, [7]);
        assert!(first.iter().all(|p| a.is_allocated(*p)));
        // Released pages come back, the others stay owned.
        a.release(first[..10].iter().copied()).unwrap();
        assert_eq!(a.free_pages(), 10);
        let mut again = [0u32; 10];
        assert!(a.alloc_into(&mut again));
        assert_eq!(
            again[..],
            first[..10],
            "FIFO: the freed pages, in release order"
        );
        assert!(second.iter().all(|p| a.is_allocated(*p)));
    }

    #[test]
    fn freed_pages_are_reused_last() {
        let mut a = PageAllocator::new(8, 1);
        let mut x = [0u32; 2];
        assert!(a.alloc_into(&mut x));
        a.release(x).unwrap();
        // Six other free pages come before the two just freed.
        let mut y = [0u32; 6];
        assert!(a.alloc_into(&mut y));
        assert!(y.iter().all(|p| !x.contains(p)));
        let mut z = [0u32; 2];
        assert!(a.alloc_into(&mut z));
        assert_eq!(z, x);
    }

    #[test]
    fn release_refuses_foreign_and_double_frees() {
        let mut a = PageAllocator::new(10, 3);
        let mut p = [0u32; 1];
        assert!(a.alloc_into(&mut p));
        assert_eq!(a.release([10]), Err(PageError::OutOfRange { page: 10 }));
        a.release(p).unwrap();
        assert_eq!(a.release(p), Err(PageError::NotAllocated { page: p[0] }));
        assert_eq!(a.free_pages(), 10);
    }

    #[test]
    fn chunk_pages_from_a_shuffled_pool_are_scattered() {
        // A fresh pool's free list is shuffled: a 64-page chunk is not one contiguous run.
        let mut a = PageAllocator::new(4096, 5);
        let mut pages = [0u32; 64];
        assert!(a.alloc_into(&mut pages));
        let contiguous = pages.windows(2).all(|w| w[1] == w[0] + 1);
        assert!(!contiguous);
    }
}
