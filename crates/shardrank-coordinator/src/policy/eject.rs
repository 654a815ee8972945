//! Outlier ejection, as Envoy and Finagle do it: a replica whose calls keep failing, or
//! whose health check fails, leaves the rotation; it comes back when a health check
//! passes again, but not before a back-off that doubles with each ejection in a row, so
//! a flapping replica does not keep taking traffic.

use std::time::Duration;

/// Consecutive failed calls that eject a replica.
pub const FAILURES_TO_EJECT: u32 = 3;
/// Shortest ejection; doubled per consecutive ejection up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a call's result says about the replica (not about the request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It answered.
    Healthy,
    /// Transport error, UNAVAILABLE, or no answer in time: the replica may be gone.
    Failed,
    /// The replica answered, with an error about the request or its load
    /// (INVALID_ARGUMENT, RESOURCE_EXHAUSTED...): says nothing of its health.
    Neutral,
}

impl Verdict {
    pub fn of(code: tonic::Code) -> Verdict {
        use tonic::Code::*;
        match code {
            Ok => Verdict::Healthy,
            Unavailable | Unknown | DeadlineExceeded | Internal | DataLoss => Verdict::Failed,
            // A shard with the wrong layout (restarted with other flags) must not serve.
            FailedPrecondition => Verdict::Failed,
            _ => Verdict::Neutral,
        }
    }
}

/// A replica changing state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Ejected,
    Restored,
}

#[derive(Clone, Debug, Default)]
pub struct Ejection {
    failures: u32,
    /// Set while ejected: the time (caller's clock, ns) before which it stays out.
    until: Option<u64>,
    /// Ejections since the replica last served a call well.
    streak: u32,
}

impl Ejection {
    /// A replica that starts out of rotation (not ready when the coordinator started).
    pub fn ejected() -> Self {
        Ejection {
            failures: 0,
            until: Some(0),
            streak: 0,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    fn eject(&mut self, now: u64) -> Transition {
        if self.is_ejected() {
            return Transition::None;
        }
        self.streak = self.streak.saturating_add(1);
        let backoff = BASE_BACKOFF
            .saturating_mul(1 << (self.streak - 1).min(16))
            .min(MAX_BACKOFF);
        self.until = Some(now + backoff.as_nanos() as u64);
        self.failures = 0;
        Transition::Ejected
    }

    /// A call's verdict at time `now` (ns).
    pub fn on_call(&mut self, v: Verdict, now: u64) -> Transition {
        match v {
            Verdict::Healthy => {
                self.failures = 0;
                if !self.is_ejected() {
                    self.streak = 0;
                }
                Transition::None
            }
            Verdict::Neutral => Transition::None,
            Verdict::Failed => {
                self.failures += 1;
                if self.failures >= FAILURES_TO_EJECT {
                    self.eject(now)
                } else {
                    Transition::None
                }
            }
        }
    }

    /// A health check's result at time `now` (ns).
    pub fn on_health(&mut self, ok: bool, now: u64) -> Transition {
        match (ok, self.until) {
            (false, _) => self.eject(now),
            (true, Some(until)) if now >= until => {
                self.until = None;
                self.failures = 0;
                Transition::Restored
            }
            _ => Transition::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MS: u64 = 1_000_000;

    #[test]
    fn consecutive_failures_eject_and_a_success_resets_the_count() {
        let mut e = Ejection::default();
        assert_eq!(e.on_call(Verdict::Failed, 0), Transition::None);
        assert_eq!(e.on_call(Verdict::Failed, 0), Transition::None);
        assert_eq!(e.on_call(Verdict::Healthy, 0), Transition::None);
        assert_eq!(e.on_call(Verdict::Failed, 0), Transition::None);
        assert_eq!(e.on_call(Verdict::Neutral, 0), Transition::None);
        assert_eq!(e.on_call(Verdict::Failed, 0), Transition::None);
        assert!(!e.is_ejected());
        assert_eq!(e.on_call(Verdict::Failed, 0), Transition::Ejected);
        assert!(e.is_ejected());
    }

    #[test]
    fn comes_back_on_a_passing_health_check_after_the_backoff() {
        let mut e = Ejection::default();
        assert_eq!(e.on_health(false, 0), Transition::Ejected);
        assert_eq!(e.on_health(true, 100 * MS), Transition::None, "backoff");
        assert_eq!(e.on_health(true, 250 * MS), Transition::Restored);
        // Ejected again before serving well: the backoff doubles.
        assert_eq!(e.on_health(false, 300 * MS), Transition::Ejected);
        assert_eq!(e.on_health(true, 700 * MS), Transition::None);
        assert_eq!(e.on_health(true, 800 * MS), Transition::Restored);
        // A good call ends the streak: the next ejection is short again.
        e.on_call(Verdict::Healthy, 900 * MS);
        assert_eq!(e.on_health(false, 1000 * MS), Transition::Ejected);
        assert_eq!(e.on_health(true, 1250 * MS), Transition::Restored);
    }

    #[test]
    fn backoff_is_capped() {
        let mut e = Ejection::default();
        let mut now = 0;
        for _ in 0..30 {
            e.on_health(false, now);
            now += MAX_BACKOFF.as_nanos() as u64;
            assert_eq!(e.on_health(true, now), Transition::Restored);
        }
    }

    #[test]
    fn starts_ejected_until_healthy() {
        let mut e = Ejection::ejected();
        assert!(e.is_ejected());
        assert_eq!(e.on_health(true, 0), Transition::Restored);
    }

    #[test]
    fn verdicts() {
        assert_eq!(Verdict::of(tonic::Code::Ok), Verdict::Healthy);
        assert_eq!(Verdict::of(tonic::Code::Unavailable), Verdict::Failed);
        assert_eq!(Verdict::of(tonic::Code::DeadlineExceeded), Verdict::Failed);
        assert_eq!(
            Verdict::of(tonic::Code::ResourceExhausted),
            Verdict::Neutral
        );
        assert_eq!(Verdict::of(tonic::Code::InvalidArgument), Verdict::Neutral);
    }
}
