//! TCPX unpack metadata: the layouts the plugin publishes, per-comm slot accounting, and fragment
//! validation.
//!
//! On TCPX a received chunk lands in a GPU bounce pool as scattered 4 KiB pages; when `test`
//! reports `done=1` the plugin has written, for the request's *slot*, a list of fragments
//! (`loadMeta`: copy `len` bytes from `bounce_buf + src_off` to `irecv_data + dst_off`) and then
//! `cnt[slot]`. Layouts follow `NVIDIA/nccl: src/device/network/unpack/unpack_defs.h`.
//!
//! This module holds, besides the layouts:
//! * [`SlotCounter`]: which unpack [`Slot`] a receive uses. TCPX takes slots in FIFO order, size-0
//!   receives included, so the k-th `irecv` on a comm (0-based) uses slot `k % 16`. Counting is
//!   all it takes; no peeking into the plugin's private request layout.
//! * [`fragments`]: a slot's fragment list, read from a `&NetUnpackMeta`, with its count checked.
//! * [`validate_fragments`]: proof that a fragment list is safe to hand to the unpack kernel:
//!   every source inside the bounce pool, every destination byte of the chunk written exactly
//!   once, nothing outside the chunk written. The C++ tree checked only the fragment count.
//!
//! Invariants:
//! * [`LoadMeta`] is 16 bytes, 16-byte aligned; [`NetUnpackMeta`] is `mem[16][2048]` then
//!   `cnt[16]` (524 416 bytes, `cnt` at 524 288). Both are asserted at compile time.
//! * A [`Slot`] is always `< UNPACK_QUEUE_DEPTH`, so indexing `cnt`/`mem` with it cannot fail.
//! * A list that passes [`validate_fragments`] is sorted by `dst_off`, non-overlapping, and its
//!   lengths sum to the chunk length: together these mean it covers `[0, chunk_len)` exactly.
//!
//! # Example
//!
//! ```
//! use tcpx_core::unpack::{validate_fragments, FragmentError, LoadMeta, SlotCounter};
//!
//! // Slots go round in FIFO order, one per irecv (size-0 receives included).
//! let mut slots = SlotCounter::new();
//! assert_eq!(slots.next_slot().index(), 0);
//! assert_eq!(slots.next_slot().index(), 1);
//!
//! // An 8 KiB chunk that landed in two 4 KiB pages of the bounce pool, in reverse order.
//! let frags = [
//!     LoadMeta { src_off: 8192, len: 4096, dst_off: 0 },
//!     LoadMeta { src_off: 0, len: 4096, dst_off: 4096 },
//! ];
//! let summary = validate_fragments(&frags, 1 << 20, 8192)?;
//! assert_eq!((summary.count, summary.bytes, summary.alignment), (2, 8192, 16));
//!
//! // A fragment that would write past the chunk is refused.
//! assert!(matches!(
//!     validate_fragments(&frags, 1 << 20, 4096),
//!     Err(FragmentError::DstOutOfChunk { index: 1, .. })
//! ));
//! # Ok::<(), FragmentError>(())
//! ```

use core::fmt;
use core::mem::{align_of, offset_of, size_of};

/// `NCCL_NET_DEVICE_UNPACK_MAX_QUEUE_DEPTH`: unpack slots per comm.
pub const UNPACK_QUEUE_DEPTH: usize = 16;
/// `NET_UNPACK_MAX_SLICE_PAGES`: the most fragments one receive may have (4 MiB / 4 KiB × 2).
pub const MAX_FRAGMENTS: usize = 2048;

/// `loadMeta`: one fragment of a received chunk.
#[repr(C, align(16))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LoadMeta {
    /// Offset of the fragment in the bounce pool.
    pub src_off: u32,
    /// Length of the fragment in bytes.
    pub len: u32,
    /// Offset of the fragment in the destination (relative to the `irecv` data pointer).
    pub dst_off: u64,
}

const _: () = {
    assert!(size_of::<LoadMeta>() == 16);
    assert!(align_of::<LoadMeta>() == 16);
    assert!(offset_of!(LoadMeta, src_off) == 0);
    assert!(offset_of!(LoadMeta, len) == 4);
    assert!(offset_of!(LoadMeta, dst_off) == 8);
};

/// `netUnpackMeta`: a comm's unpack queue, in pinned, device-mapped host memory.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetUnpackMeta {
    /// Fragments per slot.
    pub mem: [[LoadMeta; MAX_FRAGMENTS]; UNPACK_QUEUE_DEPTH],
    /// Fragment count per slot, written last when the receive completes.
    pub cnt: [u64; UNPACK_QUEUE_DEPTH],
}

const _: () = {
    assert!(size_of::<NetUnpackMeta>() == 524_416);
    assert!(offset_of!(NetUnpackMeta, mem) == 0);
    assert!(offset_of!(NetUnpackMeta, cnt) == 524_288);
};

/// One of a comm's [`UNPACK_QUEUE_DEPTH`] unpack slots: the row of [`NetUnpackMeta`] where the
/// plugin publishes a receive's fragments. Always `< UNPACK_QUEUE_DEPTH`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot(u8);

impl Slot {
    /// The slot numbered `index`, if `index < UNPACK_QUEUE_DEPTH`.
    pub const fn new(index: usize) -> Option<Slot> {
        if index < UNPACK_QUEUE_DEPTH {
            // `index < 16`, so it fits in a u8.
            Some(Slot(index as u8))
        } else {
            None
        }
    }

    /// The slot's number, `< UNPACK_QUEUE_DEPTH`: index `cnt` and `mem` with it.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unpack slot {}", self.0)
    }
}

/// Hands out unpack slots for one receive comm: the k-th receive (0-based) gets slot `k % 16`.
///
/// Call [`next_slot`](Self::next_slot) once per `irecv` **at post time**, right after the plugin
/// returned a non-NULL request, and keep the slot with the request. A failed `irecv` (an error,
/// or a NULL request) takes no slot and must not be counted. Size-0 receives do take a slot (the
/// plugin publishes `cnt = 0` for them).
///
/// Counting at post time gives the same numbers as counting at completion: the plugin assigns
/// slots in FIFO order as requests become active, and receives complete in FIFO order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounter {
    next: Slot,
}

impl SlotCounter {
    /// A counter for a fresh comm: its first receive uses slot 0.
    pub const fn new() -> Self {
        Self { next: Slot(0) }
    }

    /// The slot of the receive being posted now; advances the counter.
    pub fn next_slot(&mut self) -> Slot {
        let slot = self.next;
        self.next = Slot::new(slot.index() + 1).unwrap_or(Slot(0));
        slot
    }

    /// The slot the next receive will use, without advancing.
    pub const fn peek(&self) -> Slot {
        self.next
    }
}

/// Why a fragment list is refused. Indices count fragments from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FragmentError {
    /// More than [`MAX_FRAGMENTS`] fragments (or a `cnt` above it in the metadata).
    TooMany {
        /// The fragment count.
        count: u64,
    },
    /// A fragment of length 0 in a non-empty chunk.
    Empty {
        /// The fragment.
        index: usize,
    },
    /// `[src_off, src_off + len)` is not inside the bounce pool `[0, pool_len)`.
    SrcOutOfPool {
        /// The fragment.
        index: usize,
        /// Its offset in the bounce pool.
        src_off: u32,
        /// Its length.
        len: u32,
        /// The bounce pool's length.
        pool_len: u64,
    },
    /// `[dst_off, dst_off + len)` is not inside the chunk `[0, chunk_len)`.
    DstOutOfChunk {
        /// The fragment.
        index: usize,
        /// Its offset in the chunk.
        dst_off: u64,
        /// Its length.
        len: u32,
        /// The chunk's length.
        chunk_len: u64,
    },
    /// The fragment starts before the previous one ends: it overlaps it, or the list is not in
    /// ascending `dst_off` order.
    Overlap {
        /// The fragment.
        index: usize,
        /// Its offset in the chunk.
        dst_off: u64,
        /// Where the previous fragment ends in the chunk.
        prev_end: u64,
    },
    /// The lengths do not add up to the chunk length (part of the chunk would stay unwritten).
    LengthMismatch {
        /// Sum of the fragment lengths.
        sum: u64,
        /// The chunk's length.
        chunk_len: u64,
    },
}

impl fmt::Display for FragmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            FragmentError::TooMany { count } => {
                write!(f, "{count} fragments, more than the {MAX_FRAGMENTS} TCPX allows")
            }
            FragmentError::Empty { index } => write!(f, "fragment {index} is empty"),
            FragmentError::SrcOutOfPool {
                index,
                src_off,
                len,
                pool_len,
            } => write!(
                f,
                "fragment {index} reads [{src_off}, +{len}) outside the {pool_len}-byte bounce pool"
            ),
            FragmentError::DstOutOfChunk {
                index,
                dst_off,
                len,
                chunk_len,
            } => write!(
                f,
                "fragment {index} writes [{dst_off}, +{len}) outside the {chunk_len}-byte chunk"
            ),
            FragmentError::Overlap {
                index,
                dst_off,
                prev_end,
            } => write!(
                f,
                "fragment {index} starts at {dst_off}, before the previous fragment ends at {prev_end}"
            ),
            FragmentError::LengthMismatch { sum, chunk_len } => write!(
                f,
                "fragment lengths sum to {sum} bytes, the chunk has {chunk_len}"
            ),
        }
    }
}

impl core::error::Error for FragmentError {}

/// What [`validate_fragments`] learned about a valid fragment list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FragmentSummary {
    /// Number of fragments.
    pub count: usize,
    /// Bytes they carry (equal to the chunk length).
    pub bytes: u64,
    /// The largest power of two ≤ 16 that divides every `src_off`, `dst_off` and `len` (16 for an
    /// empty list). The unpack kernel picks its vector width (16/8/4/2/1 bytes) from it; the
    /// offsets are relative to the bounce pool and the `irecv` pointer, which the caller keeps
    /// 4 KiB aligned.
    pub alignment: u32,
}

/// Checks that `frags` may be handed to the unpack kernel for a chunk of `chunk_len` bytes,
/// reading from a bounce pool of `bounce_len` bytes.
///
/// The checks, in order: at most [`MAX_FRAGMENTS`] fragments; then per fragment: non-empty
/// (unless the chunk is empty), source inside `[0, bounce_len)`, destination inside
/// `[0, chunk_len)`, starting at or after the end of the previous fragment; finally the lengths
/// sum to `chunk_len`. Sorted, non-overlapping, inside the chunk and summing to its length means
/// every destination byte is written exactly once. TCPX writes `dst_off` as the running offset in
/// the request, so real metadata is sorted.
///
/// # Errors
///
/// The first [`FragmentError`] found, naming the fragment and the values involved.
pub fn validate_fragments(
    frags: &[LoadMeta],
    bounce_len: u64,
    chunk_len: u64,
) -> Result<FragmentSummary, FragmentError> {
    if frags.len() > MAX_FRAGMENTS {
        return Err(FragmentError::TooMany {
            count: frags.len() as u64,
        });
    }
    let mut prev_end = 0u64;
    let mut sum = 0u64;
    let mut bits = 0u64;
    for (index, frag) in frags.iter().enumerate() {
        let len = u64::from(frag.len);
        if len == 0 && chunk_len != 0 {
            return Err(FragmentError::Empty { index });
        }
        if u64::from(frag.src_off) + len > bounce_len {
            return Err(FragmentError::SrcOutOfPool {
                index,
                src_off: frag.src_off,
                len: frag.len,
                pool_len: bounce_len,
            });
        }
        let dst_end = match frag.dst_off.checked_add(len) {
            Some(end) if end <= chunk_len => end,
            _ => {
                return Err(FragmentError::DstOutOfChunk {
                    index,
                    dst_off: frag.dst_off,
                    len: frag.len,
                    chunk_len,
                })
            }
        };
        if frag.dst_off < prev_end {
            return Err(FragmentError::Overlap {
                index,
                dst_off: frag.dst_off,
                prev_end,
            });
        }
        prev_end = dst_end;
        // At most 2048 lengths below 2^32 each: no overflow.
        sum += len;
        bits |= u64::from(frag.src_off) | frag.dst_off | len;
    }
    if sum != chunk_len {
        return Err(FragmentError::LengthMismatch { sum, chunk_len });
    }
    Ok(FragmentSummary {
        count: frags.len(),
        bytes: sum,
        alignment: common_alignment(bits),
    })
}

/// The largest power of two ≤ 16 dividing every value OR-ed into `bits`.
const fn common_alignment(bits: u64) -> u32 {
    let low = (bits | 16).trailing_zeros();
    1 << low
}

/// The fragments the plugin published for `slot`: `meta.mem[slot][..meta.cnt[slot]]`.
///
/// Read it only after `test` reported the slot's receive done (the plugin writes `cnt` last,
/// after a fence) and before calling `irecvConsumed` for it (which frees the slot for reuse).
///
/// # Errors
///
/// [`FragmentError::TooMany`] if `cnt` is above [`MAX_FRAGMENTS`].
pub fn fragments(meta: &NetUnpackMeta, slot: Slot) -> Result<&[LoadMeta], FragmentError> {
    let count = meta.cnt.get(slot.index()).copied().unwrap_or(u64::MAX);
    let too_many = FragmentError::TooMany { count };
    let len = usize::try_from(count).map_err(|_| too_many)?;
    if len > MAX_FRAGMENTS {
        return Err(too_many);
    }
    meta.mem
        .get(slot.index())
        .and_then(|row| row.get(..len))
        .ok_or(too_many)
}

/// [`fragments`] then [`validate_fragments`]: the fragments of `slot`, checked against a chunk of
/// `chunk_len` bytes and a bounce pool of `bounce_len` bytes.
///
/// # Errors
///
/// As [`fragments`] and [`validate_fragments`].
pub fn validated_fragments(
    meta: &NetUnpackMeta,
    slot: Slot,
    bounce_len: u64,
    chunk_len: u64,
) -> Result<(&[LoadMeta], FragmentSummary), FragmentError> {
    let frags = fragments(meta, slot)?;
    let summary = validate_fragments(frags, bounce_len, chunk_len)?;
    Ok((frags, summary))
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use proptest::prelude::*;
    use std::boxed::Box;
    use std::string::ToString;
    use std::vec::Vec;

    const ZERO_META: NetUnpackMeta = NetUnpackMeta {
        mem: [[LoadMeta {
            src_off: 0,
            len: 0,
            dst_off: 0,
        }; MAX_FRAGMENTS]; UNPACK_QUEUE_DEPTH],
        cnt: [0; UNPACK_QUEUE_DEPTH],
    };

    fn frag(src_off: u32, len: u32, dst_off: u64) -> LoadMeta {
        LoadMeta {
            src_off,
            len,
            dst_off,
        }
    }

    /// `chunk_len / 4096` pages placed in the pool in a scrambled order.
    fn shuffled_pages(pages: u32) -> Vec<LoadMeta> {
        (0..pages)
            .map(|i| frag(((i * 37 + 11) % pages) * 4096, 4096, u64::from(i) * 4096))
            .collect()
    }

    #[test]
    fn slots_go_round_in_fifo_order() {
        let mut c = SlotCounter::new();
        assert_eq!(c, SlotCounter::default());
        for k in 0..100usize {
            assert_eq!(c.peek().index(), k % 16);
            assert_eq!(c.next_slot().index(), k % 16);
        }
        assert_eq!(Slot::new(15).map(Slot::index), Some(15));
        assert_eq!(Slot::new(16), None);
        assert_eq!(Slot::new(3).unwrap().to_string(), "unpack slot 3");
    }

    #[test]
    fn shuffled_pages_validate() {
        let frags = shuffled_pages(128);
        let s = validate_fragments(&frags, 128 * 4096, 512 * 1024).unwrap();
        assert_eq!((s.count, s.bytes, s.alignment), (128, 512 * 1024, 16));
        // The pool may be bigger than what the chunk uses.
        assert!(validate_fragments(&frags, 1 << 32, 512 * 1024).is_ok());
    }

    #[test]
    fn odd_lengths_validate_with_small_alignment() {
        let frags = [frag(4096, 100, 0), frag(0, 3, 100), frag(9000, 4000, 103)];
        let s = validate_fragments(&frags, 16384, 4103).unwrap();
        assert_eq!((s.count, s.bytes, s.alignment), (3, 4103, 1));
        let frags = [frag(4096, 8, 0), frag(24, 8, 8)];
        assert_eq!(validate_fragments(&frags, 8192, 16).unwrap().alignment, 8);
        let frags = [frag(4096, 4, 0), frag(20, 12, 4)];
        assert_eq!(validate_fragments(&frags, 8192, 16).unwrap().alignment, 4);
        let frags = [frag(2, 2, 0)];
        assert_eq!(validate_fragments(&frags, 8192, 2).unwrap().alignment, 2);
    }

    #[test]
    fn size_zero_chunk() {
        let s = validate_fragments(&[], 0, 0).unwrap();
        assert_eq!((s.count, s.bytes, s.alignment), (0, 0, 16));
        // An empty fragment is tolerated only for an empty chunk.
        assert!(validate_fragments(&[frag(0, 0, 0)], 4096, 0).is_ok());
        assert_eq!(
            validate_fragments(&[frag(0, 1, 0)], 4096, 0),
            Err(FragmentError::DstOutOfChunk {
                index: 0,
                dst_off: 0,
                len: 1,
                chunk_len: 0
            })
        );
        assert_eq!(
            validate_fragments(&[], 4096, 10),
            Err(FragmentError::LengthMismatch {
                sum: 0,
                chunk_len: 10
            })
        );
    }

    #[test]
    fn too_many() {
        let frags = std::vec![frag(0, 1, 0); MAX_FRAGMENTS + 1];
        assert_eq!(
            validate_fragments(&frags, 1 << 20, 2049),
            Err(FragmentError::TooMany { count: 2049 })
        );
        let frags: Vec<_> = (0..MAX_FRAGMENTS as u64)
            .map(|i| frag(i as u32, 1, i))
            .collect();
        assert_eq!(validate_fragments(&frags, 4096, 2048).unwrap().count, 2048);
    }

    #[test]
    fn empty_fragment() {
        let frags = [
            frag(0, 4096, 0),
            frag(4096, 0, 4096),
            frag(4096, 4096, 4096),
        ];
        assert_eq!(
            validate_fragments(&frags, 8192, 8192),
            Err(FragmentError::Empty { index: 1 })
        );
    }

    #[test]
    fn source_outside_the_pool() {
        let frags = [frag(0, 4096, 0), frag(8192, 4096, 4096)];
        assert_eq!(
            validate_fragments(&frags, 12287, 8192),
            Err(FragmentError::SrcOutOfPool {
                index: 1,
                src_off: 8192,
                len: 4096,
                pool_len: 12287
            })
        );
        assert!(validate_fragments(&frags, 12288, 8192).is_ok());
        // No wrap-around at the top of the u32 range.
        let frags = [frag(u32::MAX, u32::MAX, 0)];
        assert!(matches!(
            validate_fragments(&frags, u64::from(u32::MAX), u64::from(u32::MAX)),
            Err(FragmentError::SrcOutOfPool { index: 0, .. })
        ));
    }

    #[test]
    fn destination_outside_the_chunk() {
        let frags = [frag(0, 4096, 0), frag(4096, 4096, 4097)];
        assert_eq!(
            validate_fragments(&frags, 1 << 20, 8192),
            Err(FragmentError::DstOutOfChunk {
                index: 1,
                dst_off: 4097,
                len: 4096,
                chunk_len: 8192
            })
        );
        // dst_off + len overflows u64.
        let frags = [frag(0, 16, u64::MAX - 7)];
        assert!(matches!(
            validate_fragments(&frags, 1 << 20, u64::MAX),
            Err(FragmentError::DstOutOfChunk { index: 0, .. })
        ));
    }

    #[test]
    fn overlap_and_disorder() {
        let overlapping = [
            frag(0, 4096, 0),
            frag(4096, 4096, 4095),
            frag(8192, 1, 8191),
        ];
        assert_eq!(
            validate_fragments(&overlapping, 1 << 20, 8192),
            Err(FragmentError::Overlap {
                index: 1,
                dst_off: 4095,
                prev_end: 4096
            })
        );
        let descending = [frag(0, 4096, 4096), frag(4096, 4096, 0)];
        assert_eq!(
            validate_fragments(&descending, 1 << 20, 8192),
            Err(FragmentError::Overlap {
                index: 1,
                dst_off: 0,
                prev_end: 8192
            })
        );
    }

    #[test]
    fn length_mismatch() {
        // A gap: sorted and in range, but a byte is never written.
        let frags = [frag(0, 4096, 0), frag(4096, 4095, 4097)];
        assert_eq!(
            validate_fragments(&frags, 1 << 20, 8192),
            Err(FragmentError::LengthMismatch {
                sum: 8191,
                chunk_len: 8192
            })
        );
    }

    #[test]
    fn fragments_of_a_slot() {
        let mut meta = Box::new(ZERO_META);
        let slot = Slot::new(5).unwrap();
        assert_eq!(fragments(&meta, slot), Ok(&[][..]));
        for (i, f) in shuffled_pages(4).into_iter().enumerate() {
            meta.mem[5][i] = f;
        }
        meta.mem[5][4] = frag(1, 1, 1); // beyond cnt: must not be returned
        meta.cnt[5] = 4;
        meta.cnt[6] = 1;
        let got = fragments(&meta, slot).unwrap();
        assert_eq!(got, &shuffled_pages(4)[..]);
        let (frags, summary) = validated_fragments(&meta, slot, 4 * 4096, 4 * 4096).unwrap();
        assert_eq!((frags.len(), summary.bytes), (4, 4 * 4096));
        assert!(matches!(
            validated_fragments(&meta, Slot::new(6).unwrap(), 4096, 4096),
            Err(FragmentError::Empty { index: 0 })
        ));
        meta.cnt[5] = 2048;
        assert_eq!(fragments(&meta, slot).map(<[_]>::len), Ok(2048));
        meta.cnt[5] = 2049;
        assert_eq!(
            fragments(&meta, slot),
            Err(FragmentError::TooMany { count: 2049 })
        );
        meta.cnt[5] = u64::MAX;
        assert_eq!(
            fragments(&meta, slot),
            Err(FragmentError::TooMany { count: u64::MAX })
        );
    }

    #[test]
    fn displays() {
        let errors = [
            FragmentError::TooMany { count: 3000 },
            FragmentError::Empty { index: 2 },
            FragmentError::SrcOutOfPool {
                index: 1,
                src_off: 8192,
                len: 4096,
                pool_len: 10000,
            },
            FragmentError::DstOutOfChunk {
                index: 1,
                dst_off: 4097,
                len: 4096,
                chunk_len: 8192,
            },
            FragmentError::Overlap {
                index: 3,
                dst_off: 5,
                prev_end: 9,
            },
            FragmentError::LengthMismatch {
                sum: 1,
                chunk_len: 2,
            },
        ];
        let texts: Vec<_> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(texts[0], "3000 fragments, more than the 2048 TCPX allows");
        assert_eq!(
            texts[2],
            "fragment 1 reads [8192, +4096) outside the 10000-byte bounce pool"
        );
        assert_eq!(
            texts[4],
            "fragment 3 starts at 5, before the previous fragment ends at 9"
        );
        for (i, t) in texts.iter().enumerate() {
            assert!(texts[..i].iter().all(|u| u != t));
        }
    }

    /// Independent check of a fragment list on small values: a byte map of the chunk.
    fn oracle(frags: &[LoadMeta], pool: u64, chunk: u64) -> bool {
        if frags.len() > MAX_FRAGMENTS {
            return false;
        }
        let mut writes = std::vec![0u32; chunk as usize];
        let mut prev_end = 0;
        for f in frags {
            let (src, len, dst) = (u64::from(f.src_off), u64::from(f.len), f.dst_off);
            if (len == 0 && chunk != 0) || src + len > pool || dst < prev_end {
                return false;
            }
            for b in dst..dst + len {
                match writes.get_mut(b as usize) {
                    Some(w) => *w += 1,
                    None => return false,
                }
            }
            if dst > chunk {
                return false;
            }
            prev_end = dst + len;
        }
        writes.iter().all(|&w| w == 1)
    }

    fn naive_alignment(frags: &[LoadMeta]) -> u32 {
        [16u32, 8, 4, 2, 1]
            .into_iter()
            .find(|&a| {
                let a = u64::from(a);
                frags.iter().all(|f| {
                    u64::from(f.src_off) % a == 0 && f.dst_off % a == 0 && u64::from(f.len) % a == 0
                })
            })
            .unwrap_or(1)
    }

    /// A chunk cut into random pieces, each placed at its own spot in a pool of 8 KiB cells.
    fn valid_layout() -> impl Strategy<Value = (Vec<LoadMeta>, u64, u64)> {
        const CELL: u32 = 8192;
        (
            proptest::collection::vec(
                prop_oneof![
                    Just(4096u32),
                    1u32..=CELL,
                    (1u32..=512).prop_map(|n| n * 16)
                ],
                0..200,
            ),
            0usize..64,
        )
            .prop_flat_map(|(lens, spare)| {
                let n = lens.len();
                let cells = (0..(n + spare) as u32).collect::<Vec<_>>();
                (
                    Just(lens),
                    Just(cells).prop_shuffle(),
                    proptest::collection::vec(0u32..CELL, n),
                    Just(n + spare),
                )
            })
            .prop_map(|(lens, cells, shifts, total_cells)| {
                let mut dst = 0u64;
                let frags = lens
                    .iter()
                    .zip(cells)
                    .zip(shifts)
                    .map(|((&len, cell), shift)| {
                        let shift = shift % (CELL - len + 1);
                        let f = frag(cell * CELL + shift, len, dst);
                        dst += u64::from(len);
                        f
                    })
                    .collect();
                (frags, total_cells as u64 * u64::from(CELL), dst)
            })
    }

    fn any_frag() -> impl Strategy<Value = LoadMeta> {
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(s, l, d)| frag(s, l, d))
    }

    fn small_frag() -> impl Strategy<Value = LoadMeta> {
        (0u32..64, 0u32..24, 0u64..64).prop_map(|(s, l, d)| frag(s, l, d))
    }

    proptest! {
        #[test]
        fn valid_layouts_validate((frags, pool, chunk) in valid_layout()) {
            let s = validate_fragments(&frags, pool, chunk).unwrap();
            prop_assert_eq!(s.count, frags.len());
            prop_assert_eq!(s.bytes, chunk);
            prop_assert_eq!(s.alignment, naive_alignment(&frags));
            prop_assert!(oracle(&frags, pool, chunk));
        }

        #[test]
        fn garbage_never_panics(
            frags in proptest::collection::vec(any_frag(), 0..40),
            pool in any::<u64>(),
            chunk in any::<u64>(),
        ) {
            if let Ok(s) = validate_fragments(&frags, pool, chunk) {
                prop_assert_eq!(s.bytes, chunk);
            }
        }

        #[test]
        fn small_garbage_matches_the_oracle(
            frags in proptest::collection::vec(small_frag(), 0..8),
            pool in 0u64..96,
            chunk in 0u64..64,
        ) {
            let got = validate_fragments(&frags, pool, chunk);
            prop_assert_eq!(got.is_ok(), oracle(&frags, pool, chunk), "{:?}", got);
        }

        #[test]
        fn sorted_small_garbage_matches_the_oracle(
            mut frags in proptest::collection::vec(small_frag(), 0..6),
            pool in 0u64..96,
            chunk in 0u64..40,
        ) {
            // Sorting by dst makes exact covers (and so valid lists) common.
            frags.sort_by_key(|f| f.dst_off);
            let mut dst = 0;
            for f in &mut frags {
                if f.len % 3 != 0 {
                    f.dst_off = dst;
                }
                dst = f.dst_off + u64::from(f.len);
            }
            let got = validate_fragments(&frags, pool, chunk);
            prop_assert_eq!(got.is_ok(), oracle(&frags, pool, chunk), "{:?}", got);
        }
    }
}
