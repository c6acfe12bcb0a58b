//! Counters: plain `Copy` structs the progress engine bumps and the caller reads.
//!
//! A [`ChannelStats`] counts what happened on one channel (one send or receive comm). The
//! engine owns it and updates it on its own thread; readers get copies. Channels add up with
//! `+`, `+=` or [`Iterator::sum`]: every counter is summed (saturating, so nothing wraps or
//! panics), except `max_window_depth`, which takes the larger value.
//!
//! Invariants: counters only grow; `chunks <= requests` (a chunk is released only after its
//! request was posted), kept by the engine that bumps them.
//!
//! # Example
//!
//! ```
//! use tcpx_core::stats::ChannelStats;
//!
//! let mut a = ChannelStats::default();
//! a.record_post();
//! a.record_release(512 * 1024);
//! a.observe_window_depth(3);
//!
//! let mut b = ChannelStats::default();
//! b.record_post();
//! b.observe_window_depth(9);
//!
//! let total: ChannelStats = [a, b].into_iter().sum();
//! assert_eq!((total.requests, total.chunks, total.bytes), (2, 1, 512 * 1024));
//! assert_eq!(total.max_window_depth, 9);
//! ```

use core::iter::Sum;
use core::ops::{Add, AddAssign};

/// What happened on one channel, or (summed) on several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ChannelStats {
    /// Payload bytes of released chunks (sent, or received and — on GPU — unpacked and consumed).
    pub bytes: u64,
    /// Chunks released from the request window.
    pub chunks: u64,
    /// Requests the plugin accepted (`isend`/`irecv` calls that returned a request).
    pub requests: u64,
    /// `test` calls made, whatever they returned.
    pub test_calls: u64,
    /// Times a chunk could not be posted because the channel's window was full, so the engine
    /// progressed instead (back-pressure; not an error, and not a stall timeout).
    pub stalls: u64,
    /// Most requests the channel's window held at once (high-water mark).
    pub max_window_depth: usize,
}

impl ChannelStats {
    /// Counts a request the plugin accepted.
    pub fn record_post(&mut self) {
        self.requests = self.requests.saturating_add(1);
    }

    /// Counts a released chunk of `bytes` bytes.
    pub fn record_release(&mut self, bytes: u64) {
        self.chunks = self.chunks.saturating_add(1);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Counts a `test` call.
    pub fn record_test(&mut self) {
        self.test_calls = self.test_calls.saturating_add(1);
    }

    /// Counts a post that found the window full.
    pub fn record_stall(&mut self) {
        self.stalls = self.stalls.saturating_add(1);
    }

    /// Raises `max_window_depth` to `depth` if it is larger.
    pub fn observe_window_depth(&mut self, depth: usize) {
        self.max_window_depth = self.max_window_depth.max(depth);
    }

    /// Adds `other`'s counters to these (`max_window_depth` takes the larger).
    pub fn merge(&mut self, other: &ChannelStats) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.chunks = self.chunks.saturating_add(other.chunks);
        self.requests = self.requests.saturating_add(other.requests);
        self.test_calls = self.test_calls.saturating_add(other.test_calls);
        self.stalls = self.stalls.saturating_add(other.stalls);
        self.observe_window_depth(other.max_window_depth);
    }
}

impl AddAssign for ChannelStats {
    fn add_assign(&mut self, other: ChannelStats) {
        self.merge(&other);
    }
}

impl Add for ChannelStats {
    type Output = ChannelStats;

    fn add(mut self, other: ChannelStats) -> ChannelStats {
        self.merge(&other);
        self
    }
}

impl Sum for ChannelStats {
    fn sum<I: Iterator<Item = ChannelStats>>(iter: I) -> ChannelStats {
        iter.fold(ChannelStats::default(), Add::add)
    }
}

impl<'a> Sum<&'a ChannelStats> for ChannelStats {
    fn sum<I: Iterator<Item = &'a ChannelStats>>(iter: I) -> ChannelStats {
        iter.fold(ChannelStats::default(), |acc, s| acc + *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64, depth: usize) -> ChannelStats {
        ChannelStats {
            bytes: n * 1000,
            chunks: n * 10,
            requests: n * 11,
            test_calls: n * 100,
            stalls: n,
            max_window_depth: depth,
        }
    }

    #[test]
    fn default_is_zero() {
        let s = ChannelStats::default();
        assert_eq!(
            (
                s.bytes,
                s.chunks,
                s.requests,
                s.test_calls,
                s.stalls,
                s.max_window_depth
            ),
            (0, 0, 0, 0, 0, 0)
        );
    }

    #[test]
    fn recorders_count() {
        let mut s = ChannelStats::default();
        s.record_post();
        s.record_post();
        s.record_test();
        s.record_test();
        s.record_test();
        s.record_release(4096);
        s.record_release(100);
        s.record_stall();
        s.observe_window_depth(5);
        s.observe_window_depth(2);
        assert_eq!(
            s,
            ChannelStats {
                bytes: 4196,
                chunks: 2,
                requests: 2,
                test_calls: 3,
                stalls: 1,
                max_window_depth: 5,
            }
        );
    }

    #[test]
    fn merge_sums_and_takes_max_depth() {
        let (a, b) = (sample(1, 16), sample(2, 4));
        let want = ChannelStats {
            bytes: 3000,
            chunks: 30,
            requests: 33,
            test_calls: 300,
            stalls: 3,
            max_window_depth: 16,
        };
        let mut m = a;
        m.merge(&b);
        assert_eq!(m, want);
        assert_eq!(a + b, want);
        assert_eq!(b + a, want);
        let mut c = b;
        c += a;
        assert_eq!(c, want);
        assert_eq!([a, b].into_iter().sum::<ChannelStats>(), want);
        assert_eq!([a, b].iter().sum::<ChannelStats>(), want);
        assert_eq!(
            core::iter::empty::<ChannelStats>().sum::<ChannelStats>(),
            ChannelStats::default()
        );
    }

    #[test]
    fn counters_saturate() {
        let mut s = sample(1, 1);
        s.bytes = u64::MAX - 1;
        s.record_release(10);
        assert_eq!(s.bytes, u64::MAX);
        let t = s + s;
        assert_eq!((t.bytes, t.chunks), (u64::MAX, 22));
    }
}
