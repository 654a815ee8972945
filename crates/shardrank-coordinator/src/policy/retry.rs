//! Retries (as Quickwit's root does for failed leaves): a failed shard call is retried
//! once, on another replica, for that shard's part only, when the error says the replica
//! could not serve it and the deadline leaves room for a typical call. A timed-out call
//! is not retried: its time is spent, and a second try would only add load where the
//! cluster is already slow.

use std::time::Duration;
use tonic::Code;

/// Errors worth another replica: the replica, not the request, was the problem.
pub fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::ResourceExhausted
            | Code::Aborted
    )
}

/// Whether to retry after the first attempt failed with `code`, given whether another
/// replica is in rotation, the time left and the latency a call usually takes.
pub fn should_retry(code: Code, other_replica: bool, left: Duration, typical: Duration) -> bool {
    const MIN_LEFT: Duration = Duration::from_millis(2);
    other_replica && retryable(code) && left >= typical.max(MIN_LEFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_replica_failures_with_time_left_only() {
        let ms = Duration::from_millis;
        assert!(should_retry(Code::Unavailable, true, ms(100), ms(5)));
        assert!(should_retry(Code::ResourceExhausted, true, ms(100), ms(5)));
        assert!(
            !should_retry(Code::Unavailable, false, ms(100), ms(5)),
            "no other replica"
        );
        assert!(
            !should_retry(Code::DeadlineExceeded, true, ms(100), ms(5)),
            "timed out"
        );
        assert!(!should_retry(Code::Cancelled, true, ms(100), ms(5)));
        assert!(
            !should_retry(Code::InvalidArgument, true, ms(100), ms(5)),
            "the request's fault"
        );
        assert!(
            !should_retry(Code::Unavailable, true, ms(4), ms(5)),
            "no room left"
        );
        assert!(!should_retry(Code::Unavailable, true, ms(1), ms(0)));
    }
}
