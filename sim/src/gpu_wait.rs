//! Bounded waits for the sim's own GPU work (CUDA mode): bounce-pool copies, scatters and
//! poison kernels on its private non-blocking streams.
//!
//! `cuStreamSynchronize` / `cuEventSynchronize` block with no deadline, and under NCCL with a
//! device bounce pool the GPU need not run the sim's work at all (it can queue behind NCCL's
//! persistent kernel, which waits for the sim: a deadlock). So `crate::cuda`'s waits poll the
//! driver's query instead and end after [`GPU_WAIT_TIMEOUT`] with
//! [`SimError::CudaWaitTimeout`] — a loud error where a silent hang would be. The policy (spins,
//! clock reads, the deadline) is [`tcpx::wait::poll_until`]'s, tested there without a GPU; this
//! module names the sim's bound and maps the outcome to its errors.

use std::time::Duration;

use crate::error::SimError;

/// How long the sim waits for one of its own GPU operations (*sim*; a copy or kernel of at
/// most a chunk takes microseconds to milliseconds).
pub const GPU_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

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
    tcpx::wait::poll_until(
        within,
        || Ok(query()? == Query::Done),
        || SimError::CudaWaitTimeout {
            call,
            after: within,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_after_some_queries_is_ok() {
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
        let e = wait_until_done("cuEventQuery", Duration::from_millis(20), || {
            Ok(Query::NotReady)
        })
        .unwrap_err();
        assert!(
            matches!(e, SimError::CudaWaitTimeout { call: "cuEventQuery", after }
                if after == Duration::from_millis(20)),
            "{e}"
        );
        assert!(e.to_string().contains("cuEventQuery"), "{e}");
    }

    #[test]
    fn a_failing_query_ends_the_wait_with_its_error() {
        let e = wait_until_done("q", GPU_WAIT_TIMEOUT, || {
            Err(SimError::Cuda {
                call: "cuStreamQuery",
                code: 700,
            })
        })
        .unwrap_err();
        assert!(matches!(e, SimError::Cuda { code: 700, .. }), "{e}");
    }
}
