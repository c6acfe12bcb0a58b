//! Bounded waits for the sim's own GPU work (CUDA mode): bounce-pool copies, scatters and
//! poison kernels on its private non-blocking streams.
//!
//! `cuStreamSynchronize` / `cuEventSynchronize` block with no deadline, and under NCCL with a
//! device bounce pool the GPU need not run the sim's work at all (it can queue behind NCCL's
//! persistent kernel, which waits for the sim: a deadlock). So `crate::cuda`'s waits poll the
//! driver's query instead and end after [`GPU_WAIT_TIMEOUT`] with
//! [`SimError::CudaWaitTimeout`] — a loud error where a silent hang would be. The policy is
//! written against a query closure, so it is tested without a GPU.
//!
//! Invariants:
//! * A wait that finishes within its first [`SPINS`] queries never reads the clock (the
//!   helper threads wait like this once per piece of every chunk).
//! * After that each further query yields the CPU, and the clock is read every [`SPINS`]
//!   queries; the wait ends at the first query at or past its deadline that is not done.
//! * A failing query ends the wait at once with its own error.

use std::time::{Duration, Instant};

use crate::error::SimError;

/// How long the sim waits for one of its own GPU operations (*sim*; a copy or kernel of at
/// most a chunk takes microseconds to milliseconds).
pub const GPU_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Queries spun before the first clock read, and between clock reads after it.
pub const SPINS: u32 = 64;

/// What one query of the driver says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// The work is finished.
    Done,
    /// Still running (`CUDA_ERROR_NOT_READY`).
    NotReady,
}

/// Query until done, for at most `within`; `call` names the query in the timeout error.
pub fn wait_until_done(
    call: &'static str,
    within: Duration,
    mut query: impl FnMut() -> Result<Query, SimError>,
) -> Result<(), SimError> {
    let mut deadline: Option<Instant> = None;
    let mut polls = 0u32;
    loop {
        if query()? == Query::Done {
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
                Some(d) if now >= d => {
                    return Err(SimError::CudaWaitTimeout {
                        call,
                        after: within,
                    })
                }
                Some(_) => {}
            }
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_at_once_or_after_some_queries_is_ok() {
        assert!(wait_until_done("q", Duration::ZERO, || Ok(Query::Done)).is_ok());
        let mut left = 1000;
        let r = wait_until_done("q", GPU_WAIT_TIMEOUT, || {
            left -= 1;
            Ok(if left == 0 {
                Query::Done
            } else {
                Query::NotReady
            })
        });
        assert!(r.is_ok());
        assert_eq!(left, 0);
    }

    #[test]
    fn work_that_never_finishes_is_a_timeout_naming_the_query() {
        let mut polls = 0u64;
        let e = wait_until_done("cuEventQuery", Duration::from_millis(20), || {
            polls += 1;
            Ok(Query::NotReady)
        })
        .unwrap_err();
        assert!(
            matches!(e, SimError::CudaWaitTimeout { call: "cuEventQuery", after }
                if after == Duration::from_millis(20)),
            "{e}"
        );
        assert!(polls > u64::from(SPINS), "{polls}");
        assert!(e.to_string().contains("cuEventQuery"), "{e}");
    }

    #[test]
    fn a_failing_query_ends_the_wait_with_its_error() {
        let mut polls = 0;
        let e = wait_until_done("q", GPU_WAIT_TIMEOUT, || {
            polls += 1;
            if polls < 3 {
                Ok(Query::NotReady)
            } else {
                Err(SimError::Cuda {
                    call: "cuStreamQuery",
                    code: 700,
                })
            }
        })
        .unwrap_err();
        assert!(matches!(e, SimError::Cuda { code: 700, .. }), "{e}");
        assert_eq!(polls, 3);
    }
}
