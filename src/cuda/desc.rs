//! Unpack descriptors: the `#[repr(C)]` mirrors of `cuda/unpack.h` and the host-side work that
//! turns a chunk's fragments into them. Pure Rust, so it is tested without a GPU.
//!
//! Why flat descriptors with absolute addresses (`{src, dst, len}`, 24 bytes) rather than
//! per-chunk headers plus the plugin's raw `loadMeta`s (16 bytes each): one launch unpacks chunks
//! of many comms, so with raw metadata every warp would first have to find its chunk (a search
//! over headers); with absolute addresses descriptor `i` is all warp `i` needs. The host pays
//! two additions per fragment while it copies the 16-byte `loadMeta` anyway, and the 8 extra
//! bytes per 4 KiB fragment are 0.2 % of the data moved.
//!
//! Fragments longer than [`PIECE_BYTES`] are cut into pieces at multiples of it, so each warp
//! gets at most 4 KiB (one round of eight 16-byte loads per lane) and large fragments do not
//! serialise on one warp. Cutting at multiples of 4096 keeps `src | dst` modulo 16, so a piece
//! gets the same vector width as its fragment.
//!
//! Invariants:
//! * [`UnpackDesc`] is 24 bytes (src @0, dst @8, len @16, flags @20), [`InlineBatch`] 4088 bytes
//!   (desc @8): asserted at compile time, equal to the `static_assert`s in `cuda/unpack.h`.
//! * Every descriptor written for a fragment has `1 ..= PIECE_BYTES` bytes; their lengths add up
//!   to the fragment's.
//!
//! ```
//! use tcpx::core::unpack::LoadMeta;
//! use tcpx::cuda::{pieces_needed, vector_width, PIECE_BYTES};
//!
//! let frags = [LoadMeta { src_off: 0, len: 10_000, dst_off: 0 }];
//! assert_eq!(pieces_needed(&frags), 3); // 4096 + 4096 + 1808
//! assert_eq!(vector_width(0x7000_0000, 0x1000_0008), 8);
//! assert_eq!(PIECE_BYTES, 4096);
//! ```

use core::mem::{align_of, offset_of, size_of};

use tcpx_core::unpack::LoadMeta;

/// `TCPX_UNPACK_PIECE_BYTES`: the most bytes one descriptor built by the host carries.
pub const PIECE_BYTES: u32 = 4096;
/// `TCPX_UNPACK_BLOCK_THREADS`: threads per block of the unpack kernels (8 warps).
pub const BLOCK_THREADS: u32 = 256;
/// `TCPX_UNPACK_INLINE_MAX`: descriptors that fit into the kernel parameters.
pub const INLINE_MAX: usize = 170;

const WARPS_PER_BLOCK: usize = (BLOCK_THREADS / 32) as usize;

/// `tcpx_unpack_desc`: copy `len` bytes from device address `src` to device address `dst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnpackDesc {
    /// Absolute device address to read (bounce pool + `src_off` + piece offset).
    pub src: u64,
    /// Absolute device address to write (chunk data + `dst_off` + piece offset).
    pub dst: u64,
    /// Bytes to copy.
    pub len: u32,
    /// Reserved, 0.
    pub flags: u32,
}

const _: () = {
    assert!(size_of::<UnpackDesc>() == 24);
    assert!(align_of::<UnpackDesc>() == 8);
    assert!(offset_of!(UnpackDesc, src) == 0);
    assert!(offset_of!(UnpackDesc, dst) == 8);
    assert!(offset_of!(UnpackDesc, len) == 16);
    assert!(offset_of!(UnpackDesc, flags) == 20);
};

/// `tcpx_unpack_inline_batch`: a small batch carried in the kernel parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InlineBatch {
    /// Descriptors used, `<= INLINE_MAX`.
    pub count: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The descriptors; only the first `count` are read.
    pub desc: [UnpackDesc; INLINE_MAX],
}

const _: () = {
    assert!(size_of::<InlineBatch>() == 4088);
    assert!(offset_of!(InlineBatch, count) == 0);
    assert!(offset_of!(InlineBatch, desc) == 8);
};

impl InlineBatch {
    /// An empty batch.
    pub const fn new() -> Self {
        Self {
            count: 0,
            reserved: 0,
            desc: [UnpackDesc {
                src: 0,
                dst: 0,
                len: 0,
                flags: 0,
            }; INLINE_MAX],
        }
    }

    /// Copies `descs` in; `false` (and nothing changed) when there are more than
    /// [`INLINE_MAX`].
    pub fn fill(&mut self, descs: &[UnpackDesc]) -> bool {
        match self.desc.get_mut(..descs.len()) {
            Some(room) => {
                room.copy_from_slice(descs);
                // descs.len() <= INLINE_MAX = 170.
                self.count = descs.len() as u32;
                true
            }
            None => false,
        }
    }
}

impl Default for InlineBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// The vector width (bytes per access) the kernel uses for a copy from `src` to `dst`: the
/// lowest set bit of `(src | dst) % 16`, or 16 when both are 16-byte aligned. A length that is
/// not a multiple of it is finished with single bytes.
pub const fn vector_width(src: u64, dst: u64) -> u32 {
    let misalign = ((src | dst) & 15) as u32;
    if misalign == 0 {
        16
    } else {
        misalign & misalign.wrapping_neg()
    }
}

/// Descriptors the host writes for `frags`: one per started [`PIECE_BYTES`] of each fragment.
pub fn pieces_needed(frags: &[LoadMeta]) -> usize {
    frags
        .iter()
        .map(|f| f.len.div_ceil(PIECE_BYTES) as usize)
        .sum()
}

/// Blocks to launch for `descriptors` descriptors: one warp per descriptor, at most `max_grid`
/// blocks (the kernel grid-strides over the rest), at least 1.
pub const fn grid_size(descriptors: usize, max_grid: u32) -> u32 {
    let blocks = descriptors.div_ceil(WARPS_PER_BLOCK);
    let cap = if max_grid == 0 { 1 } else { max_grid as usize };
    let g = if blocks < cap { blocks } else { cap };
    if g == 0 {
        1
    } else {
        // g <= cap <= u32::MAX.
        g as u32
    }
}

/// Writes the descriptors of one chunk into the front of `out`: every fragment cut into
/// pieces of at most [`PIECE_BYTES`], with `src = bounce_buf + src_off + k * 4096` and
/// `dst = dst + dst_off + k * 4096`. Returns how many were written, or `None` when `out` is too
/// small (then `out` may hold some of them; the caller does not count them).
///
/// The caller validated `frags` for this chunk and bounce pool, and checked that neither
/// address range overflows; the additions wrap rather than panic if it did not.
pub(crate) fn write_chunk(
    frags: &[LoadMeta],
    bounce_buf: u64,
    dst: u64,
    out: &mut [UnpackDesc],
) -> Option<usize> {
    let mut slots = out.iter_mut();
    let mut written = 0;
    for f in frags {
        let mut src = bounce_buf.wrapping_add(u64::from(f.src_off));
        let mut to = dst.wrapping_add(f.dst_off);
        let mut left = f.len;
        while left > 0 {
            let len = left.min(PIECE_BYTES);
            *slots.next()? = UnpackDesc {
                src,
                dst: to,
                len,
                flags: 0,
            };
            written += 1;
            src = src.wrapping_add(u64::from(len));
            to = to.wrapping_add(u64::from(len));
            left -= len;
        }
    }
    Some(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frag(src_off: u32, len: u32, dst_off: u64) -> LoadMeta {
        LoadMeta {
            src_off,
            len,
            dst_off,
        }
    }

    #[test]
    fn widths_follow_the_lowest_misaligned_bit() {
        let cases = [
            ((0, 0), 16),
            ((4096, 0x7f00_0000_0000), 16),
            ((8, 0), 8),
            ((0, 24), 8),
            ((4100, 0), 4),
            ((12, 0), 4),
            ((2, 16), 2),
            ((6, 0), 2),
            ((0, 14), 2),
            ((1, 0), 1),
            ((3, 5), 1),
            ((16, 4095), 1),
        ];
        for ((src, dst), width) in cases {
            assert_eq!(vector_width(src, dst), width, "src {src} dst {dst}");
        }
        // Every width divides both addresses, and twice the width (up to 16) does not.
        for src in 0..64u64 {
            for dst in 0..64u64 {
                let w = u64::from(vector_width(src, dst));
                assert!(src % w == 0 && dst % w == 0);
                assert!(w == 16 || src % (2 * w) != 0 || dst % (2 * w) != 0);
            }
        }
    }

    #[test]
    fn fragments_are_cut_into_pieces_that_keep_their_alignment() {
        let frags = [
            frag(6, 10_000, 0),
            frag(20_000, 4096, 10_000),
            frag(1, 1, 14_096),
        ];
        let mut out = [UnpackDesc::default(); 8];
        let n = write_chunk(&frags, 0x1000_0000, 0x2000_0002, &mut out).unwrap();
        assert_eq!(n, 5);
        assert_eq!(n, pieces_needed(&frags));
        let want = [
            (0x1000_0006, 0x2000_0002, 4096),
            (0x1000_1006, 0x2000_1002, 4096),
            (0x1000_2006, 0x2000_2002, 1808),
            (0x1000_4e20, 0x2000_2712, 4096),
            (0x1000_0001, 0x2000_3712, 1),
        ];
        for (d, (src, dst, len)) in out.iter().zip(want) {
            assert_eq!((d.src, d.dst, d.len, d.flags), (src, dst, len, 0));
        }
        assert!(out[..3]
            .iter()
            .all(|d| vector_width(d.src, d.dst) == vector_width(0x1000_0006, 0x2000_0002)));
        // One slot short: None.
        assert_eq!(write_chunk(&frags, 0, 0, &mut out[..4]), None);
        // An empty chunk needs nothing (a zero-length fragment is allowed there).
        assert_eq!(write_chunk(&[frag(0, 0, 0)], 0, 0, &mut []), Some(0));
        assert_eq!(pieces_needed(&[frag(0, 0, 0)]), 0);
    }

    #[test]
    fn grid_sizes() {
        assert_eq!(grid_size(0, 100), 1);
        assert_eq!(grid_size(1, 100), 1);
        assert_eq!(grid_size(8, 100), 1);
        assert_eq!(grid_size(9, 100), 2);
        assert_eq!(grid_size(128, 100), 16);
        assert_eq!(grid_size(16_384, 528), 528);
        assert_eq!(grid_size(16_384, 0), 1);
    }

    #[test]
    fn inline_batches() {
        let mut b = InlineBatch::default();
        let d = [UnpackDesc {
            src: 1,
            dst: 2,
            len: 3,
            flags: 0,
        }; INLINE_MAX];
        assert!(b.fill(&d[..5]));
        assert_eq!(b.count, 5);
        assert_eq!(b.desc[4].len, 3);
        assert!(b.fill(&d));
        assert_eq!(b.count as usize, INLINE_MAX);
        let too_many = [UnpackDesc::default(); INLINE_MAX + 1];
        assert!(!b.fill(&too_many));
        assert_eq!(b.count as usize, INLINE_MAX);
    }

    /// Applies descriptors to host memory standing in for device memory: `pool` at address
    /// `pool_base`, `out` at `out_base`.
    fn apply(descs: &[UnpackDesc], pool_base: u64, pool: &[u8], out_base: u64, out: &mut [u8]) {
        for d in descs {
            let s = (d.src - pool_base) as usize;
            let t = (d.dst - out_base) as usize;
            let n = d.len as usize;
            out[t..t + n].copy_from_slice(&pool[s..s + n]);
        }
    }

    proptest! {
        #[test]
        fn descriptors_copy_what_the_fragments_say(
            lens in proptest::collection::vec(1u32..20_000, 1..40),
            seed in any::<u64>(),
            dst_shift in 0u64..4096,
        ) {
            // Place fragment i at a scrambled spot of a pool of 20 000-byte cells.
            let n = lens.len() as u64;
            let mut dst_off = 0;
            let frags: Vec<LoadMeta> = lens
                .iter()
                .enumerate()
                .map(|(i, &len)| {
                    let cell = (i as u64 * 7 + seed % n) % n;
                    let f = frag((cell * 20_000 + seed % (20_000 - u64::from(len) + 1)) as u32, len, dst_off);
                    dst_off += u64::from(len);
                    f
                })
                .collect();
            let pool: Vec<u8> = (0..n * 20_000).map(|i| (i * 31 + i / 251) as u8).collect();
            let (pool_base, out_base) = (0x7000_0000_0000u64, 0x7100_0000_0000 + dst_shift);
            let mut descs = vec![UnpackDesc::default(); pieces_needed(&frags)];
            let written = write_chunk(&frags, pool_base, out_base, &mut descs).unwrap();
            prop_assert_eq!(written, descs.len());
            prop_assert!(descs.iter().all(|d| (1..=PIECE_BYTES).contains(&d.len)));
            let mut got = vec![0u8; dst_off as usize];
            apply(&descs, pool_base, &pool, out_base, &mut got);
            let mut want = vec![0u8; dst_off as usize];
            for f in &frags {
                let (s, t, l) = (f.src_off as usize, f.dst_off as usize, f.len as usize);
                want[t..t + l].copy_from_slice(&pool[s..s + l]);
            }
            prop_assert_eq!(got, want);
        }
    }
}
