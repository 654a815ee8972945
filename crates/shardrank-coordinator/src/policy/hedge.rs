//! Hedged calls ("The Tail at Scale"): when a replica has not answered by the time it
//! usually has (a high percentile of its recent latencies), the same part goes to
//! another replica and the first answer wins. A token bucket caps the extra load: each
//! call earns a fraction of a token, each hedge spends one, so hedges stay below that
//! fraction of calls however slow the cluster gets.

use std::time::Duration;

/// Recent latencies of one replica, for its percentile.
#[derive(Clone, Debug)]
pub struct LatencyWindow {
    micros: Vec<u32>,
    next: usize,
}

/// Latencies kept per replica.
pub const WINDOW: usize = 256;
/// Fewer samples than this and no percentile is given (no hedging on a guess).
pub const MIN_SAMPLES: usize = 20;

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            micros: Vec::with_capacity(WINDOW),
            next: 0,
        }
    }
}

impl LatencyWindow {
    pub fn record(&mut self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        if self.micros.len() < WINDOW {
            self.micros.push(us);
        } else {
            self.micros[self.next] = us;
        }
        self.next = (self.next + 1) % WINDOW;
    }

    /// The `q` quantile (0..=1) of the window, if it holds enough samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.micros.len() < MIN_SAMPLES {
            return None;
        }
        let mut v = self.micros.clone();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        let (_, x, _) = v.select_nth_unstable(i);
        Some(Duration::from_micros(*x as u64))
    }
}

/// A replica's latency percentile for its hedge delay: its own, or, with too few samples
/// of its own (a new replica, or one that is rarely the cheaper and so rarely called),
/// the highest of its siblings'. Replicas of one shard hold the same partition and take
/// alike; without this, a stall of a replica that had just become the cheaper one would
/// hold every call to it until the deadline, never hedged. `None` when no replica of
/// the shard has an estimate yet.
pub fn estimate(
    own: Option<Duration>,
    siblings: impl IntoIterator<Item = Option<Duration>>,
) -> Option<Duration> {
    own.or_else(|| siblings.into_iter().flatten().max())
}

/// How long to wait before hedging a call: the replica's percentile, at least `min`;
/// `None` (do not hedge) without an estimate or when the hedge could not finish in the
/// time left (it needs about the typical latency itself).
pub fn delay(percentile: Option<Duration>, min: Duration, left: Duration) -> Option<Duration> {
    let d = percentile?.max(min);
    (d + d / 2 < left).then_some(d)
}

/// Token bucket for hedges: `ratio` of a token per call, one token per hedge. Counted
/// in thousandths of a token, so that ten deposits of 0.1 make exactly one.
#[derive(Clone, Debug)]
pub struct HedgeBudget {
    ratio_milli: u64,
    tokens_milli: u64,
    cap_milli: u64,
}

impl HedgeBudget {
    /// `ratio` is the most hedges per call in the long run (0 disables hedging); `burst`
    /// hedges may be sent at once after a quiet period.
    pub fn new(ratio: f64, burst: f64) -> Self {
        HedgeBudget {
            ratio_milli: (ratio.clamp(0.0, 1.0) * 1000.0).round() as u64,
            tokens_milli: 0,
            cap_milli: (burst.max(1.0) * 1000.0).round() as u64,
        }
    }

    pub fn enabled(&self) -> bool {
        self.ratio_milli > 0
    }

    /// A call was sent.
    pub fn deposit(&mut self) {
        self.tokens_milli = (self.tokens_milli + self.ratio_milli).min(self.cap_milli);
    }

    /// Takes a token for a hedge if one is there.
    pub fn try_spend(&mut self) -> bool {
        if self.enabled() && self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_need_samples_and_follow_the_window() {
        let mut w = LatencyWindow::default();
        for i in 1..MIN_SAMPLES as u64 {
            w.record(Duration::from_millis(i));
        }
        assert_eq!(w.quantile(0.95), None);
        w.record(Duration::from_millis(20));
        assert_eq!(w.quantile(0.95), Some(Duration::from_millis(19)));
        assert_eq!(w.quantile(1.0), Some(Duration::from_millis(20)));
        // The window forgets: after WINDOW fast samples the old slow ones are gone.
        for _ in 0..WINDOW {
            w.record(Duration::from_micros(300));
        }
        assert_eq!(w.quantile(1.0), Some(Duration::from_micros(300)));
    }

    #[test]
    fn a_replica_without_samples_takes_its_slowest_siblings_estimate() {
        let ms = Duration::from_millis;
        assert_eq!(estimate(Some(ms(2)), [Some(ms(9))]), Some(ms(2)));
        assert_eq!(
            estimate(None, [Some(ms(3)), None, Some(ms(7))]),
            Some(ms(7))
        );
        assert_eq!(estimate(None, [None, None]), None);
        assert_eq!(estimate(None, []), None);
    }

    #[test]
    fn hedge_delay() {
        let ms = Duration::from_millis;
        assert_eq!(delay(None, ms(1), ms(100)), None);
        assert_eq!(delay(Some(ms(4)), ms(1), ms(100)), Some(ms(4)));
        assert_eq!(delay(Some(Duration::ZERO), ms(1), ms(100)), Some(ms(1)));
        // No room for the hedge to finish: do not send it.
        assert_eq!(delay(Some(ms(40)), ms(1), ms(50)), None);
    }

    #[test]
    fn budget_caps_hedges_at_the_ratio() {
        let mut b = HedgeBudget::new(0.1, 10.0);
        let mut hedges = 0;
        for _ in 0..10_000 {
            b.deposit();
            if b.try_spend() {
                hedges += 1;
            }
        }
        assert_eq!(hedges, 1000);
        // A burst after a quiet time is capped too.
        let mut b = HedgeBudget::new(0.1, 3.0);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!((0..10).filter(|_| b.try_spend()).count(), 3);
        let mut off = HedgeBudget::new(0.0, 10.0);
        off.deposit();
        assert!(!off.try_spend());
    }
}
