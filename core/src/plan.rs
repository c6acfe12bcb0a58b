//! The chunk plan: how one transfer is cut into chunks and spread over a comm group's channels.
//!
//! TCPX does not check that a send fits the receive it lands in, so both peers must cut every
//! transfer the same way: the same chunk boundaries, in the same order, on the same channels. A
//! plan is a pure function of its inputs (the [`PlanConfig`], the transfer's size and, through a
//! [`Planner`], the sizes of the transfers planned before it), so two peers that agree on those
//! agree on every [`Chunk`].
//!
//! # Invariants
//!
//! * The chunks of a transfer tile `[0, total_bytes)` exactly, in order: chunk `i` starts at
//!   `i × chunk_bytes`, so every offset is a multiple of [`CHUNK_ALIGN`] (4 KiB); every chunk but
//!   the last is `chunk_bytes` long and the last is `1..=chunk_bytes` bytes.
//! * A 0-byte transfer is **one 0-byte chunk**, not zero chunks: TCPX sends a size-0 message
//!   (inline on its ctrl socket) and the receiver's `irecv` still takes a request slot and an
//!   unpack slot for it, so the peer must post exactly one receive for it too.
//! * `chunk_bytes ≤` [`MAX_CHUNK_BYTES`] (4 MiB): a bigger receive can exceed TCPX's 2048
//!   fragments per request, which makes the plugin `exit(1)`.
//! * No allocation: per-channel state lives in fixed arrays of [`MAX_CHANNELS`] entries.
//!
//! # Policies
//!
//! * [`Policy::RoundRobin`]: chunk `i` goes to channel `(first + i) mod channels`. A [`Planner`]
//!   continues the rotation from one transfer to the next (`first` is where the previous transfer
//!   stopped), so a stream of one-chunk transfers still uses every channel.
//! * [`Policy::LeastLoaded`]: each chunk goes to the channel with the fewest bytes assigned so far,
//!   ties to the lowest index. A 0-byte chunk is charged as 1 byte, because it still occupies a
//!   request slot; otherwise a run of empty transfers would all land on one channel. A
//!   [`Planner`] carries the per-channel totals from one transfer to the next (stored relative to
//!   the least-loaded channel, so they stay small). Loads are assigned bytes, never bytes in
//!   flight: in-flight counts differ between the peers, and the plan must not.
//!
//! Under either policy, with a [`Planner`], the charged bytes of any two channels differ by at most
//! one chunk (`chunk_bytes`) after every chunk, which the tests check.
//!
//! # Example
//!
//! ```
//! use tcpx_core::plan::{Chunk, PlanConfig, Planner, Policy};
//!
//! let config = PlanConfig::new(512 * 1024, 4, Policy::RoundRobin).unwrap();
//! let (mut sender, mut receiver) = (Planner::new(config), Planner::new(config));
//!
//! // 1.25 MiB: two full chunks and a short one, on channels 0, 1, 2.
//! let chunks: Vec<Chunk> = sender.plan(1_310_720).unwrap().collect();
//! assert_eq!(chunks.len(), 3);
//! assert_eq!((chunks[2].offset, chunks[2].len, chunks[2].channel), (1_048_576, 262_144, 2));
//!
//! // The next transfer continues the rotation at channel 3, on both sides.
//! assert!(receiver.plan(1_310_720).unwrap().eq(chunks.iter().copied()));
//! assert_eq!(sender.plan(10).unwrap().next().map(|c| c.channel), Some(3));
//! assert_eq!(receiver.plan(10).unwrap().next().map(|c| c.channel), Some(3));
//! ```

use core::fmt;
use core::iter::FusedIterator;

/// The largest chunk: 4 MiB. One TCPX receive holds at most 2048 fragments
/// (`NET_UNPACK_MAX_SLICE_PAGES`), and 4 MiB is what keeps a chunk of 4 KiB pages (plus
/// misaligned edges) under that cap.
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;

/// The default chunk: 512 KiB, the `NCCL_DYNAMIC_CHUNK_SIZE` every GCP configuration uses.
pub const DEFAULT_CHUNK_BYTES: u32 = 512 << 10;

/// Chunk sizes are multiples of 4 KiB, so every chunk starts on a 4 KiB boundary of the transfer
/// (the unpack kernel's wide copies want aligned destination offsets).
pub const CHUNK_ALIGN: u32 = 4096;

/// The most channels one plan spreads over (the size of the per-channel arrays).
pub const MAX_CHANNELS: u16 = 64;

/// How a plan picks each chunk's channel (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// Chunk `i` on channel `(first + i) mod channels`.
    #[default]
    RoundRobin,
    /// Each chunk on the channel with the fewest bytes assigned so far; ties to the lowest index.
    LeastLoaded,
}

/// Why a [`PlanConfig`] or a [`Plan`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlanError {
    /// `chunk_bytes` was 0.
    ZeroChunk,
    /// `chunk_bytes` was above [`MAX_CHUNK_BYTES`].
    ChunkTooLarge {
        /// The requested chunk size.
        chunk_bytes: u32,
    },
    /// `chunk_bytes` was not a multiple of [`CHUNK_ALIGN`].
    MisalignedChunk {
        /// The requested chunk size.
        chunk_bytes: u32,
    },
    /// `channels` was 0.
    ZeroChannels,
    /// `channels` was above [`MAX_CHANNELS`].
    TooManyChannels {
        /// The requested channel count.
        channels: u16,
    },
    /// The transfer would need more than `u32::MAX` chunks.
    TooManyChunks {
        /// The transfer's size.
        total_bytes: u64,
        /// The configured chunk size.
        chunk_bytes: u32,
    },
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroChunk => f.write_str("chunk size is 0"),
            Self::ChunkTooLarge { chunk_bytes } => write!(
                f,
                "chunk size {chunk_bytes} exceeds the {MAX_CHUNK_BYTES}-byte maximum \
                 (TCPX's 2048-fragment cap)"
            ),
            Self::MisalignedChunk { chunk_bytes } => write!(
                f,
                "chunk size {chunk_bytes} is not a multiple of {CHUNK_ALIGN}"
            ),
            Self::ZeroChannels => f.write_str("channel count is 0"),
            Self::TooManyChannels { channels } => write!(
                f,
                "channel count {channels} exceeds the maximum of {MAX_CHANNELS}"
            ),
            Self::TooManyChunks {
                total_bytes,
                chunk_bytes,
            } => write!(
                f,
                "a {total_bytes}-byte transfer needs more than {} chunks of {chunk_bytes} bytes",
                u32::MAX
            ),
        }
    }
}

impl core::error::Error for PlanError {}

/// A validated plan configuration: chunk size, channel count and policy. Both peers must use the
/// same one.
///
/// ```
/// use tcpx_core::plan::{PlanConfig, PlanError, Policy, DEFAULT_CHUNK_BYTES};
///
/// let config = PlanConfig::default();
/// assert_eq!(config.chunk_bytes(), DEFAULT_CHUNK_BYTES);
/// assert_eq!(
///     PlanConfig::new(1000, 2, Policy::RoundRobin),
///     Err(PlanError::MisalignedChunk { chunk_bytes: 1000 })
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanConfig {
    chunk_bytes: u32,
    channels: u16,
    policy: Policy,
}

impl PlanConfig {
    /// Validates a configuration.
    ///
    /// # Errors
    ///
    /// [`PlanError::ZeroChunk`], [`PlanError::ChunkTooLarge`] or [`PlanError::MisalignedChunk`]
    /// for a chunk size outside `CHUNK_ALIGN..=MAX_CHUNK_BYTES` in steps of `CHUNK_ALIGN`;
    /// [`PlanError::ZeroChannels`] or [`PlanError::TooManyChannels`] for a channel count outside
    /// `1..=MAX_CHANNELS`.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, PlanError, Policy, MAX_CHUNK_BYTES};
    ///
    /// assert!(PlanConfig::new(MAX_CHUNK_BYTES, 8, Policy::LeastLoaded).is_ok());
    /// assert_eq!(
    ///     PlanConfig::new(MAX_CHUNK_BYTES + 4096, 8, Policy::LeastLoaded),
    ///     Err(PlanError::ChunkTooLarge { chunk_bytes: MAX_CHUNK_BYTES + 4096 })
    /// );
    /// assert_eq!(PlanConfig::new(4096, 0, Policy::RoundRobin), Err(PlanError::ZeroChannels));
    /// ```
    pub const fn new(chunk_bytes: u32, channels: u16, policy: Policy) -> Result<Self, PlanError> {
        if chunk_bytes == 0 {
            Err(PlanError::ZeroChunk)
        } else if chunk_bytes > MAX_CHUNK_BYTES {
            Err(PlanError::ChunkTooLarge { chunk_bytes })
        } else if chunk_bytes % CHUNK_ALIGN != 0 {
            Err(PlanError::MisalignedChunk { chunk_bytes })
        } else if channels == 0 {
            Err(PlanError::ZeroChannels)
        } else if channels > MAX_CHANNELS {
            Err(PlanError::TooManyChannels { channels })
        } else {
            Ok(Self {
                chunk_bytes,
                channels,
                policy,
            })
        }
    }

    /// The chunk size in bytes (a multiple of [`CHUNK_ALIGN`], at most [`MAX_CHUNK_BYTES`]).
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Policy};
    ///
    /// assert_eq!(PlanConfig::new(8192, 1, Policy::RoundRobin).unwrap().chunk_bytes(), 8192);
    /// ```
    #[must_use]
    pub const fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    /// The number of channels (`1..=MAX_CHANNELS`).
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Policy};
    ///
    /// assert_eq!(PlanConfig::new(8192, 4, Policy::RoundRobin).unwrap().channels(), 4);
    /// ```
    #[must_use]
    pub const fn channels(&self) -> u16 {
        self.channels
    }

    /// The channel policy.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Policy};
    ///
    /// let config = PlanConfig::new(8192, 4, Policy::LeastLoaded).unwrap();
    /// assert_eq!(config.policy(), Policy::LeastLoaded);
    /// ```
    #[must_use]
    pub const fn policy(&self) -> Policy {
        self.policy
    }

    /// How many chunks a `total_bytes` transfer takes: `⌈total_bytes / chunk_bytes⌉`, and 1 for an
    /// empty transfer.
    ///
    /// # Errors
    ///
    /// [`PlanError::TooManyChunks`] when that is more than `u32::MAX`.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Policy};
    ///
    /// let config = PlanConfig::new(4096, 2, Policy::RoundRobin).unwrap();
    /// assert_eq!(config.chunk_count(0), Ok(1));
    /// assert_eq!(config.chunk_count(4096), Ok(1));
    /// assert_eq!(config.chunk_count(4097), Ok(2));
    /// assert!(config.chunk_count(u64::MAX).is_err());
    /// ```
    pub const fn chunk_count(&self, total_bytes: u64) -> Result<u32, PlanError> {
        let count = if total_bytes == 0 {
            1
        } else {
            (total_bytes - 1) / self.chunk_bytes as u64 + 1
        };
        if count > u32::MAX as u64 {
            Err(PlanError::TooManyChunks {
                total_bytes,
                chunk_bytes: self.chunk_bytes,
            })
        } else {
            Ok(count as u32)
        }
    }
}

impl Default for PlanConfig {
    /// [`DEFAULT_CHUNK_BYTES`] chunks on one channel, round-robin.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Policy};
    ///
    /// let config = PlanConfig::default();
    /// assert_eq!((config.channels(), config.policy()), (1, Policy::RoundRobin));
    /// ```
    fn default() -> Self {
        Self {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            channels: 1,
            policy: Policy::RoundRobin,
        }
    }
}

/// One chunk of a transfer: bytes `offset..offset + len` of the buffer, on `channel`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Chunk {
    /// Position of the chunk in its transfer, from 0.
    pub index: u32,
    /// Byte offset of the chunk in the transfer (a multiple of [`CHUNK_ALIGN`]).
    pub offset: u64,
    /// Length in bytes: `chunk_bytes`, except for a short last chunk (0 only for an empty transfer).
    pub len: u32,
    /// The channel that carries it (`0..channels`).
    pub channel: u16,
}

/// Per-channel bytes charged so far (only the first `channels` entries are used).
type Loads = [u64; MAX_CHANNELS as usize];

/// Carries the channel state from one transfer's plan to the next, identically on both peers.
///
/// Feed it the same sequence of transfer sizes on both sides (the sender's sends and the
/// receiver's receives of one comm group, in posting order) and the plans match chunk for chunk.
///
/// ```
/// use tcpx_core::plan::{PlanConfig, Planner, Policy};
///
/// let config = PlanConfig::new(4096, 3, Policy::RoundRobin).unwrap();
/// let mut planner = Planner::new(config);
/// let firsts: Vec<u16> = (0..4)
///     .map(|_| planner.plan(100).unwrap().next().unwrap().channel)
///     .collect();
/// assert_eq!(firsts, [0, 1, 2, 0]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Planner {
    config: PlanConfig,
    /// Round-robin: the channel of the next transfer's first chunk.
    next_channel: u16,
    /// Least-loaded: bytes charged per channel, minus the smallest of them.
    loads: Loads,
}

impl Planner {
    /// A planner in the state both peers start from: rotation at channel 0, no bytes charged.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Planner};
    ///
    /// let planner = Planner::new(PlanConfig::default());
    /// assert_eq!(planner.next_channel(), 0);
    /// ```
    #[must_use]
    pub const fn new(config: PlanConfig) -> Self {
        Self {
            config,
            next_channel: 0,
            loads: [0; MAX_CHANNELS as usize],
        }
    }

    /// The configuration every plan of this planner uses.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Planner};
    ///
    /// assert_eq!(Planner::new(PlanConfig::default()).config(), PlanConfig::default());
    /// ```
    #[must_use]
    pub const fn config(&self) -> PlanConfig {
        self.config
    }

    /// Round-robin: the channel the next transfer's first chunk goes to.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Planner, Policy};
    ///
    /// let mut planner = Planner::new(PlanConfig::new(4096, 4, Policy::RoundRobin).unwrap());
    /// let _ = planner.plan(3 * 4096).unwrap();
    /// assert_eq!(planner.next_channel(), 3);
    /// ```
    #[must_use]
    pub const fn next_channel(&self) -> u16 {
        self.next_channel
    }

    /// Least-loaded: the bytes charged to each channel so far, relative to the least-loaded one
    /// (which reads 0). One entry per channel; all zero under round-robin.
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Planner, Policy};
    ///
    /// let mut planner = Planner::new(PlanConfig::new(4096, 3, Policy::LeastLoaded).unwrap());
    /// let _ = planner.plan(4096 + 100).unwrap(); // 4096 on channel 0, 100 on channel 1
    /// assert_eq!(planner.relative_loads(), &[4096, 100, 0]);
    /// ```
    #[must_use]
    pub fn relative_loads(&self) -> &[u64] {
        self.loads
            .get(..usize::from(self.config.channels))
            .unwrap_or(&[])
    }

    /// Plans the next transfer of `total_bytes` and advances the planner past it (whether or not
    /// the returned plan is iterated to the end).
    ///
    /// Under [`Policy::LeastLoaded`] this walks the plan once to find its end state, so it costs
    /// O(chunks × channels); round-robin is O(1).
    ///
    /// # Errors
    ///
    /// [`PlanError::TooManyChunks`] (and the planner is left as it was).
    ///
    /// ```
    /// use tcpx_core::plan::{PlanConfig, Planner, Policy};
    ///
    /// let mut planner = Planner::new(PlanConfig::new(4096, 2, Policy::LeastLoaded).unwrap());
    /// // An empty transfer is one empty chunk, charged as 1 byte...
    /// let empty: Vec<_> = planner.plan(0).unwrap().map(|c| (c.len, c.channel)).collect();
    /// assert_eq!(empty, [(0, 0)]);
    /// // ...so the next one goes to the other channel.
    /// assert_eq!(planner.plan(0).unwrap().next().map(|c| c.channel), Some(1));
    /// ```
    pub fn plan(&mut self, total_bytes: u64) -> Result<Plan, PlanError> {
        let plan = Plan::with_state(self.config, total_bytes, self.next_channel, self.loads)?;
        match self.config.policy {
            Policy::RoundRobin => {
                let channels = u64::from(self.config.channels);
                let next = (u64::from(self.next_channel) + u64::from(plan.count)) % channels;
                // `next < channels ≤ MAX_CHANNELS`, so it fits.
                self.next_channel = u16::try_from(next).unwrap_or(0);
            }
            Policy::LeastLoaded => {
                let mut end = plan.clone();
                end.by_ref().for_each(drop);
                let used = usize::from(self.config.channels);
                let min = end.loads.iter().take(used).copied().min().unwrap_or(0);
                for (load, end_load) in self.loads.iter_mut().zip(end.loads).take(used) {
                    *load = end_load - min;
                }
            }
        }
        Ok(plan)
    }
}

/// The chunks of one transfer, in order: an iterator of [`Chunk`].
///
/// Built by [`Plan::new`] (a transfer on its own, starting from channel 0 and no load) or by
/// [`Planner::plan`] (continuing from the transfers before it). Cloning a plan clones its position.
///
/// ```
/// use tcpx_core::plan::{Plan, PlanConfig, Policy};
///
/// let config = PlanConfig::new(4096, 2, Policy::RoundRobin).unwrap();
/// let plan = Plan::new(config, 10_000).unwrap();
/// assert_eq!(plan.chunk_count(), 3);
/// let lens: Vec<(u64, u32, u16)> = plan.map(|c| (c.offset, c.len, c.channel)).collect();
/// assert_eq!(lens, [(0, 4096, 0), (4096, 4096, 1), (8192, 1808, 0)]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Plan {
    config: PlanConfig,
    total_bytes: u64,
    /// Chunks in the whole transfer.
    count: u32,
    /// Index of the next chunk to yield.
    next: u32,
    /// Round-robin: the channel of chunk `next`.
    rr_channel: u16,
    /// Least-loaded: bytes charged per channel, including the chunks already yielded.
    loads: Loads,
}

impl Plan {
    /// The plan of one transfer on its own: round-robin from channel 0, least-loaded from zero
    /// load. Same as the first plan of a fresh [`Planner`].
    ///
    /// # Errors
    ///
    /// [`PlanError::TooManyChunks`] when the transfer needs more than `u32::MAX` chunks.
    ///
    /// ```
    /// use tcpx_core::plan::{Plan, PlanConfig};
    ///
    /// let plan = Plan::new(PlanConfig::default(), 0).unwrap();
    /// let chunks: Vec<_> = plan.collect();
    /// assert_eq!(chunks.len(), 1);
    /// assert_eq!((chunks[0].offset, chunks[0].len), (0, 0));
    /// ```
    pub fn new(config: PlanConfig, total_bytes: u64) -> Result<Self, PlanError> {
        Self::with_state(config, total_bytes, 0, [0; MAX_CHANNELS as usize])
    }

    fn with_state(
        config: PlanConfig,
        total_bytes: u64,
        first_channel: u16,
        loads: Loads,
    ) -> Result<Self, PlanError> {
        Ok(Self {
            config,
            total_bytes,
            count: config.chunk_count(total_bytes)?,
            next: 0,
            rr_channel: first_channel,
            loads,
        })
    }

    /// How many chunks the whole transfer takes (including any already yielded); at least 1.
    ///
    /// ```
    /// use tcpx_core::plan::{Plan, PlanConfig, DEFAULT_CHUNK_BYTES};
    ///
    /// let plan = Plan::new(PlanConfig::default(), 3 * u64::from(DEFAULT_CHUNK_BYTES) + 1).unwrap();
    /// assert_eq!(plan.chunk_count(), 4);
    /// ```
    #[must_use]
    pub const fn chunk_count(&self) -> u32 {
        self.count
    }

    /// The transfer's size in bytes.
    ///
    /// ```
    /// use tcpx_core::plan::{Plan, PlanConfig};
    ///
    /// assert_eq!(Plan::new(PlanConfig::default(), 77).unwrap().total_bytes(), 77);
    /// ```
    #[must_use]
    pub const fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The configuration this plan was made with.
    ///
    /// ```
    /// use tcpx_core::plan::{Plan, PlanConfig};
    ///
    /// assert_eq!(Plan::new(PlanConfig::default(), 1).unwrap().config(), PlanConfig::default());
    /// ```
    #[must_use]
    pub const fn config(&self) -> PlanConfig {
        self.config
    }

    /// The least-loaded channel among the configured ones, ties to the lowest index.
    fn least_loaded(&self) -> u16 {
        let mut best = 0_u16;
        let mut best_load = u64::MAX;
        for (channel, &load) in (0..self.config.channels).zip(self.loads.iter()) {
            if load < best_load {
                best = channel;
                best_load = load;
            }
        }
        best
    }
}

impl Iterator for Plan {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.next >= self.count {
            return None;
        }
        let index = self.next;
        let chunk_bytes = self.config.chunk_bytes;
        let offset = u64::from(index) * u64::from(chunk_bytes);
        // `offset < total_bytes` for every chunk of a non-empty transfer (0 for the empty one),
        // and the remainder is capped by `chunk_bytes`, so it fits in a `u32`.
        let len = u32::try_from((self.total_bytes - offset).min(u64::from(chunk_bytes)))
            .unwrap_or(chunk_bytes);
        let channel = match self.config.policy {
            Policy::RoundRobin => {
                let channel = self.rr_channel;
                self.rr_channel = if channel + 1 >= self.config.channels {
                    0
                } else {
                    channel + 1
                };
                channel
            }
            Policy::LeastLoaded => {
                let channel = self.least_loaded();
                if let Some(load) = self.loads.get_mut(usize::from(channel)) {
                    // An empty chunk still takes a request slot: charge it 1 byte.
                    *load += u64::from(len.max(1));
                }
                channel
            }
        };
        self.next = index + 1;
        Some(Chunk {
            index,
            offset,
            len,
            channel,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::try_from(self.count - self.next).unwrap_or(usize::MAX);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Plan {}

impl FusedIterator for Plan {}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn config(chunk_bytes: u32, channels: u16, policy: Policy) -> PlanConfig {
        PlanConfig::new(chunk_bytes, channels, policy).unwrap()
    }

    fn chunks(plan: Plan) -> Vec<(u64, u32, u16)> {
        plan.map(|c| (c.offset, c.len, c.channel)).collect()
    }

    #[test]
    fn config_bounds() {
        let rr = Policy::RoundRobin;
        assert_eq!(PlanConfig::new(0, 1, rr), Err(PlanError::ZeroChunk));
        assert_eq!(
            PlanConfig::new(4095, 1, rr),
            Err(PlanError::MisalignedChunk { chunk_bytes: 4095 })
        );
        assert_eq!(
            PlanConfig::new(DEFAULT_CHUNK_BYTES + 1, 1, rr),
            Err(PlanError::MisalignedChunk {
                chunk_bytes: DEFAULT_CHUNK_BYTES + 1
            })
        );
        assert_eq!(
            PlanConfig::new(MAX_CHUNK_BYTES + CHUNK_ALIGN, 1, rr),
            Err(PlanError::ChunkTooLarge {
                chunk_bytes: MAX_CHUNK_BYTES + CHUNK_ALIGN
            })
        );
        assert_eq!(
            PlanConfig::new(u32::MAX, 1, rr),
            Err(PlanError::ChunkTooLarge {
                chunk_bytes: u32::MAX
            })
        );
        assert_eq!(PlanConfig::new(4096, 0, rr), Err(PlanError::ZeroChannels));
        assert_eq!(
            PlanConfig::new(4096, MAX_CHANNELS + 1, rr),
            Err(PlanError::TooManyChannels {
                channels: MAX_CHANNELS + 1
            })
        );
        let ok = PlanConfig::new(CHUNK_ALIGN, MAX_CHANNELS, Policy::LeastLoaded).unwrap();
        assert_eq!(
            (ok.chunk_bytes(), ok.channels(), ok.policy()),
            (CHUNK_ALIGN, MAX_CHANNELS, Policy::LeastLoaded)
        );
        assert!(PlanConfig::new(MAX_CHUNK_BYTES, 1, rr).is_ok());
        assert_eq!(MAX_CHUNK_BYTES % CHUNK_ALIGN, 0);
        assert_eq!(DEFAULT_CHUNK_BYTES % CHUNK_ALIGN, 0);
    }

    #[test]
    fn errors_display_their_numbers() {
        let cases = [
            (PlanError::ZeroChunk, "0"),
            (PlanError::ChunkTooLarge { chunk_bytes: 5 }, "5"),
            (PlanError::MisalignedChunk { chunk_bytes: 6 }, "6"),
            (PlanError::ZeroChannels, "0"),
            (PlanError::TooManyChannels { channels: 70 }, "70"),
            (
                PlanError::TooManyChunks {
                    total_bytes: 123,
                    chunk_bytes: 4096,
                },
                "123",
            ),
        ];
        for (error, needle) in cases {
            let text = std::format!("{error}");
            assert!(text.contains(needle), "{text}");
        }
    }

    #[test]
    fn chunk_count_limits() {
        let c = config(4096, 1, Policy::RoundRobin);
        let most = u64::from(u32::MAX) * 4096;
        assert_eq!(c.chunk_count(most), Ok(u32::MAX));
        assert_eq!(
            c.chunk_count(most + 1),
            Err(PlanError::TooManyChunks {
                total_bytes: most + 1,
                chunk_bytes: 4096
            })
        );
        assert_eq!(Plan::new(c, most).map(|p| p.len()), Ok(u32::MAX as usize));
        assert!(Plan::new(c, u64::MAX).is_err());
        // The last chunk of the largest plan is still a full, in-range chunk.
        let mut last = Plan::new(c, most).unwrap();
        last.next = u32::MAX - 1;
        assert_eq!(
            last.next(),
            Some(Chunk {
                index: u32::MAX - 1,
                offset: most - 4096,
                len: 4096,
                channel: 0
            })
        );
        assert_eq!(last.next(), None);
    }

    #[test]
    fn an_empty_transfer_is_one_empty_chunk() {
        for policy in [Policy::RoundRobin, Policy::LeastLoaded] {
            let plan = Plan::new(config(4096, 4, policy), 0).unwrap();
            assert_eq!(plan.chunk_count(), 1);
            assert_eq!(
                plan.collect::<Vec<_>>(),
                [Chunk {
                    index: 0,
                    offset: 0,
                    len: 0,
                    channel: 0
                }]
            );
            // Successive empty transfers still rotate over the channels.
            let mut planner = Planner::new(config(4096, 4, policy));
            let channels: Vec<u16> = (0..6)
                .map(|_| planner.plan(0).unwrap().next().unwrap().channel)
                .collect();
            assert_eq!(channels, [0, 1, 2, 3, 0, 1], "{policy:?}");
        }
    }

    #[test]
    fn round_robin_continues_across_transfers() {
        let mut planner = Planner::new(config(4096, 3, Policy::RoundRobin));
        assert_eq!(
            chunks(planner.plan(10_000).unwrap()),
            [(0, 4096, 0), (4096, 4096, 1), (8192, 1808, 2)]
        );
        assert_eq!(planner.next_channel(), 0);
        assert_eq!(
            chunks(planner.plan(8192).unwrap()),
            [(0, 4096, 0), (4096, 4096, 1)]
        );
        assert_eq!(chunks(planner.plan(1).unwrap()), [(0, 1, 2)]);
        assert_eq!(planner.relative_loads(), &[0, 0, 0]);
    }

    #[test]
    fn least_loaded_fills_the_short_channel_first() {
        let mut planner = Planner::new(config(4096, 3, Policy::LeastLoaded));
        assert_eq!(
            chunks(planner.plan(2 * 4096 + 100).unwrap()),
            [(0, 4096, 0), (4096, 4096, 1), (8192, 100, 2)]
        );
        assert_eq!(planner.relative_loads(), &[3996, 3996, 0]);
        // Channel 2 is 3996 bytes short, so it goes first; then the tie 0/1 goes to 0.
        assert_eq!(
            chunks(planner.plan(3 * 4096).unwrap()),
            [(0, 4096, 2), (4096, 4096, 0), (8192, 4096, 1)]
        );
        assert_eq!(planner.relative_loads(), &[3996, 3996, 0]);
        assert_eq!(planner.next_channel(), 0);
    }

    #[test]
    fn a_refused_transfer_leaves_the_planner_as_it_was() {
        for policy in [Policy::RoundRobin, Policy::LeastLoaded] {
            let mut planner = Planner::new(config(4096, 3, policy));
            let _ = planner.plan(4096 + 1).unwrap();
            let before = planner.clone();
            assert!(matches!(
                planner.plan(u64::MAX),
                Err(PlanError::TooManyChunks { .. })
            ));
            assert_eq!(planner, before);
        }
    }

    #[test]
    fn the_planner_advances_even_if_the_plan_is_not_iterated() {
        let c = config(4096, 4, Policy::LeastLoaded);
        let mut lazy = Planner::new(c);
        let mut eager = Planner::new(c);
        let _unused = lazy.plan(3 * 4096 + 5).unwrap();
        eager.plan(3 * 4096 + 5).unwrap().for_each(drop);
        assert_eq!(lazy, eager);
        assert_eq!(chunks(lazy.plan(4096).unwrap()), [(0, 4096, 3)]);
    }

    #[test]
    fn the_iterator_is_exact_and_fused() {
        let mut plan = Plan::new(config(4096, 2, Policy::RoundRobin), 3 * 4096).unwrap();
        for left in (0..3).rev() {
            assert!(plan.next().is_some());
            assert_eq!(plan.len(), left);
        }
        assert_eq!(plan.next(), None);
        assert_eq!(plan.next(), None);
        assert_eq!(plan.chunk_count(), 3);
        assert_eq!(plan.total_bytes(), 3 * 4096);
    }

    fn policy() -> impl Strategy<Value = Policy> {
        prop_oneof![Just(Policy::RoundRobin), Just(Policy::LeastLoaded)]
    }

    /// Configurations over the whole legal range.
    fn any_config() -> impl Strategy<Value = PlanConfig> {
        (
            1..=MAX_CHUNK_BYTES / CHUNK_ALIGN,
            1..=MAX_CHANNELS,
            policy(),
        )
            .prop_map(|(pages, channels, policy)| config(pages * CHUNK_ALIGN, channels, policy))
    }

    /// A transfer size of up to 300 chunks of `c`, biased towards edges (0, exact multiples).
    fn size_for(c: PlanConfig) -> impl Strategy<Value = u64> {
        let chunk = u64::from(c.chunk_bytes());
        prop_oneof![
            Just(0_u64),
            (1..=300_u64).prop_map(move |n| n * chunk),
            (0..=300 * chunk),
        ]
    }

    fn config_and_sizes() -> impl Strategy<Value = (PlanConfig, Vec<u64>)> {
        any_config().prop_flat_map(|c| (Just(c), proptest::collection::vec(size_for(c), 1..8)))
    }

    proptest! {
        #[test]
        fn chunks_tile_the_transfer_in_order((c, sizes) in config_and_sizes()) {
            let mut planner = Planner::new(c);
            for total in sizes {
                let plan = planner.plan(total).unwrap();
                let count = plan.chunk_count();
                prop_assert_eq!(plan.len(), count as usize);
                let mut end = 0_u64;
                let mut seen = 0_u32;
                for chunk in plan {
                    prop_assert_eq!(chunk.index, seen);
                    prop_assert_eq!(chunk.offset, end);
                    prop_assert_eq!(chunk.offset % u64::from(CHUNK_ALIGN), 0);
                    prop_assert!(chunk.len <= c.chunk_bytes());
                    prop_assert!(chunk.channel < c.channels());
                    let last = chunk.index + 1 == count;
                    // Only the last chunk may be short, and only an empty transfer's is empty.
                    prop_assert!(last || chunk.len == c.chunk_bytes());
                    prop_assert_eq!(chunk.len == 0, total == 0);
                    end += u64::from(chunk.len);
                    seen += 1;
                }
                prop_assert_eq!(seen, count);
                prop_assert_eq!(end, total);
            }
        }

        #[test]
        fn both_peers_plan_the_same_chunks((c, sizes) in config_and_sizes()) {
            let (mut sender, mut receiver) = (Planner::new(c), Planner::new(c));
            for &total in &sizes {
                let sent: Vec<Chunk> = sender.plan(total).unwrap().collect();
                let posted: Vec<Chunk> = receiver.plan(total).unwrap().collect();
                prop_assert_eq!(sent, posted);
                prop_assert_eq!(&sender, &receiver);
            }
            // A standalone plan is a fresh planner's first plan.
            let first: Vec<Chunk> = Plan::new(c, sizes[0]).unwrap().collect();
            let fresh: Vec<Chunk> = Planner::new(c).plan(sizes[0]).unwrap().collect();
            prop_assert_eq!(first, fresh);
        }

        #[test]
        fn round_robin_assigns_chunk_i_to_i_mod_n(
            (c, sizes) in config_and_sizes()
                .prop_map(|(c, s)| (config(c.chunk_bytes(), c.channels(), Policy::RoundRobin), s))
        ) {
            let n = u64::from(c.channels());
            for chunk in Plan::new(c, sizes[0]).unwrap() {
                prop_assert_eq!(u64::from(chunk.channel), u64::from(chunk.index) % n);
            }
            // Across transfers the rotation continues: the k-th chunk overall is on k mod n.
            let mut planner = Planner::new(c);
            let mut overall = 0_u64;
            let mut per_channel = [0_u64; MAX_CHANNELS as usize];
            for total in sizes {
                for chunk in planner.plan(total).unwrap() {
                    prop_assert_eq!(u64::from(chunk.channel), overall % n);
                    per_channel[usize::from(chunk.channel)] += 1;
                    overall += 1;
                }
            }
            let used = &per_channel[..usize::from(c.channels())];
            let (min, max) = (used.iter().min().unwrap(), used.iter().max().unwrap());
            prop_assert!(max - min <= 1);
        }

        #[test]
        fn least_loaded_keeps_channels_within_one_chunk(
            (c, sizes) in config_and_sizes()
                .prop_map(|(c, s)| (config(c.chunk_bytes(), c.channels(), Policy::LeastLoaded), s))
        ) {
            let used = usize::from(c.channels());
            let mut planner = Planner::new(c);
            let mut charged = [0_u64; MAX_CHANNELS as usize];
            let mut bytes = [0_u64; MAX_CHANNELS as usize];
            let mut empties = 0_u64;
            for total in sizes {
                for chunk in planner.plan(total).unwrap() {
                    let ch = usize::from(chunk.channel);
                    // The chosen channel was a least-loaded one, and the lowest such index.
                    let least = charged[..used].iter().copied().min().unwrap();
                    prop_assert_eq!(charged[ch], least);
                    prop_assert!(charged[..ch].iter().all(|&l| l > least));
                    charged[ch] += u64::from(chunk.len.max(1));
                    bytes[ch] += u64::from(chunk.len);
                    empties += u64::from(chunk.len == 0);
                    let lo = charged[..used].iter().min().unwrap();
                    let hi = charged[..used].iter().max().unwrap();
                    prop_assert!(hi - lo <= u64::from(c.chunk_bytes()));
                    let lo = bytes[..used].iter().min().unwrap();
                    let hi = bytes[..used].iter().max().unwrap();
                    prop_assert!(hi - lo <= u64::from(c.chunk_bytes()) + empties);
                }
                // The planner's end state is what iterating the plan charged.
                let lo = *charged[..used].iter().min().unwrap();
                let relative: Vec<u64> = charged[..used].iter().map(|l| l - lo).collect();
                prop_assert_eq!(planner.relative_loads(), &relative[..]);
            }
        }

        #[test]
        fn chunk_count_is_the_ceiling(c in any_config(), total in any::<u64>()) {
            let chunk = u64::from(c.chunk_bytes());
            let expected = if total == 0 { 1 } else { total.div_ceil(chunk) };
            match c.chunk_count(total) {
                Ok(n) => prop_assert_eq!(u64::from(n), expected),
                Err(e) => {
                    prop_assert!(expected > u64::from(u32::MAX));
                    prop_assert_eq!(e, PlanError::TooManyChunks { total_bytes: total, chunk_bytes: c.chunk_bytes() });
                }
            }
        }
    }
}
