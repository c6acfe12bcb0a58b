//! Bounded polling waits for work that only reports itself through a query: CUDA streams and
//! events (`cuStreamQuery`, `cuEventQuery`), in this crate and in tcpx-sim.
//!
//! The driver's own waits (`cuStreamSynchronize`, `cuEventSynchronize`) have no deadline, and
//! work queued behind another library's persistent kernel may never run. So every GPU wait of
//! tcpx-rs polls the query instead and gives up at a deadline, and the caller turns that into
//! its own typed timeout error — a loud error where a silent hang would be. The policy is
//! written against a query closure, so it is tested without a GPU.
//!
//! Invariants:
//! * A wait that finishes within its first [`SPINS`] queries never reads the clock (hot waits,
//!   such as the sim's once per piece of every chunk, cost no clock reads).
//! * After that each further query yields the CPU, and the clock is read every [`SPINS`]
//!   queries; the wait ends at the first clock read at or past its deadline, so it ends at most
//!   [`SPINS`] queries after the deadline.
//! * A failing query ends the wait at once with its own error.
//!
//! ```
//! use std::time::Duration;
//! let mut left = 100;
//! let waited: Result<(), &str> = tcpx::wait::poll_until(
//!     Duration::from_secs(1),
//!     || {
//!         left -= 1;
//!         Ok(left == 0)
//!     },
//!     || "timed out",
//! );
//! assert_eq!(waited, Ok(()));
//! ```

use std::time::{Duration, Instant};

/// Queries spun before the first clock read, and between clock reads after it.
pub const SPINS: u32 = 64;

/// Calls `done` until it returns `Ok(true)`, for at most `within` (measured from the first
/// clock read, [`SPINS`] queries in); then returns `expired()`. An `Err` from `done` is
/// returned at once.
///
/// # Errors
///
/// `done`'s error, or `expired()` when the deadline passed first.
pub fn poll_until<E>(
    within: Duration,
    mut done: impl FnMut() -> Result<bool, E>,
    expired: impl FnOnce() -> E,
) -> Result<(), E> {
    let mut deadline: Option<Instant> = None;
    let mut polls = 0u32;
    loop {
        if done()? {
            return Ok(());
        }
        polls = polls.wrapping_add(1);
        if polls < SPINS {
            std::hint::spin_loop();
            continue;
        }
        if polls % SPINS == 0 {
            let now = Instant::now();
            match deadline {
                None => deadline = Some(now + within),
                Some(d) if now >= d => return Err(expired()),
                Some(_) => {}
            }
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum E {
        Expired,
        Query(u32),
    }

    #[test]
    fn done_at_once_or_after_some_queries_is_ok() {
        assert_eq!(
            poll_until(Duration::ZERO, || Ok(true), || E::Expired),
            Ok(())
        );
        let mut left = 1000;
        let r = poll_until(
            Duration::from_secs(60),
            || {
                left -= 1;
                Ok(left == 0)
            },
            || E::Expired,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(left, 0);
    }

    #[test]
    fn work_that_never_finishes_expires() {
        let mut polls = 0u64;
        let r = poll_until(
            Duration::from_millis(20),
            || {
                polls += 1;
                Ok(false)
            },
            || E::Expired,
        );
        assert_eq!(r, Err(E::Expired));
        // At least the spins and the query that read the deadline's clock.
        assert!(polls > u64::from(SPINS), "{polls}");
    }

    #[test]
    fn a_failing_query_ends_the_wait_with_its_error() {
        let mut polls = 0;
        let r = poll_until(
            Duration::from_secs(60),
            || {
                polls += 1;
                if polls < 3 {
                    Ok(false)
                } else {
                    Err(E::Query(700))
                }
            },
            || E::Expired,
        );
        assert_eq!(r, Err(E::Query(700)));
        assert_eq!(polls, 3);
    }
}
