//! Replica choice: power of two choices over a cost of peak-EWMA latency times
//! (outstanding calls + 1). Two random candidates and the cheaper one avoid both the
//! herd that "always the fastest" creates and the blindness of round robin to a slow
//! replica.

use std::time::Duration;

/// The latency assumed for a replica that has not answered yet.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Peak EWMA of latency: a slower sample is taken at once (a stall shows on the next
/// call), faster samples pull the average down with time constant `tau`.
#[derive(Clone, Copy, Debug)]
pub struct PeakEwma {
    pub nanos: f64,
    /// When the last sample came, in nanoseconds on the caller's clock.
    pub at_nanos: u64,
}

impl PeakEwma {
    pub fn new(initial: Duration) -> Self {
        PeakEwma {
            nanos: initial.as_nanos() as f64,
            at_nanos: 0,
        }
    }

    /// Folds in `sample`, observed at `now_nanos`.
    pub fn observe(&mut self, sample: Duration, now_nanos: u64, tau: Duration) {
        let s = sample.as_nanos() as f64;
        if s > self.nanos {
            self.nanos = s;
        } else {
            let dt = now_nanos.saturating_sub(self.at_nanos) as f64;
            let w = (-dt / tau.as_nanos().max(1) as f64).exp();
            self.nanos = self.nanos * w + s * (1.0 - w);
        }
        self.at_nanos = now_nanos;
    }

    /// The estimate as the balancer reads it at `now_nanos`: decayed toward zero since the
    /// last sample, as tower's and Finagle's peak EWMA do. A replica that gets no calls
    /// (with two, the dearer one gets none) would otherwise keep its last estimate for
    /// ever; decayed, it looks cheaper with time and is tried again, so every replica
    /// keeps fresh samples (for its hedge delay too) and a stall of one that was idle
    /// shows within a time constant or so.
    pub fn decayed(&self, now_nanos: u64, tau: Duration) -> f64 {
        let dt = now_nanos.saturating_sub(self.at_nanos) as f64;
        self.nanos * (-dt / tau.as_nanos().max(1) as f64).exp()
    }
}

/// The cost of sending one more call to a replica.
pub fn cost(ewma_nanos: f64, outstanding: u32) -> f64 {
    ewma_nanos * (outstanding as f64 + 1.0)
}

/// Power of two choices: `costs[i]` is `None` for a replica that may not be chosen.
/// `r` is a random number; two distinct candidates are drawn from it and the cheaper
/// wins (the first on a tie). `None` when no replica may be chosen.
pub fn p2c(costs: &[Option<f64>], r: u64) -> Option<usize> {
    let open: Vec<usize> = (0..costs.len()).filter(|&i| costs[i].is_some()).collect();
    match open.len() {
        0 => None,
        1 => Some(open[0]),
        n => {
            let a = (r % n as u64) as usize;
            let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            let (ia, ib) = (open[a], open[b]);
            Some(if costs[ib] < costs[ia] { ib } else { ia })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let tau = Duration::from_secs(1);
        let mut e = PeakEwma::new(Duration::from_millis(1));
        e.observe(Duration::from_millis(50), 1_000, tau);
        assert_eq!(e.nanos, 50e6, "a slower sample is taken at once");
        // One time constant later, a fast sample moves it about 63% of the way.
        e.observe(Duration::from_millis(1), 1_000 + 1_000_000_000, tau);
        assert!((e.nanos - (50e6 * (-1f64).exp() + 1e6 * (1.0 - (-1f64).exp()))).abs() < 1.0);
        // Many fast samples bring it back near the fast latency.
        for i in 2..20u64 {
            e.observe(Duration::from_millis(1), i * 1_000_000_000, tau);
        }
        assert!(e.nanos < 1.1e6, "{}", e.nanos);
    }

    #[test]
    fn an_estimate_read_later_has_decayed() {
        let tau = Duration::from_secs(1);
        let mut e = PeakEwma::new(Duration::from_millis(1));
        e.observe(Duration::from_millis(4), 5_000, tau);
        assert_eq!(e.decayed(5_000, tau), 4e6);
        assert!((e.decayed(5_000 + 1_000_000_000, tau) - 4e6 * (-1f64).exp()).abs() < 1.0);
        // Reading does not change it; a clock read before the sample does not grow it.
        assert_eq!(e.nanos, 4e6);
        assert_eq!(e.decayed(0, tau), 4e6);
    }

    #[test]
    fn p2c_prefers_the_cheaper_of_two_and_skips_closed_ones() {
        assert_eq!(p2c(&[], 7), None);
        assert_eq!(p2c(&[None, None], 7), None);
        assert_eq!(p2c(&[None, Some(5.0)], 7), Some(1));
        // With two open replicas both are always drawn: the cheaper one wins.
        for r in 0..64u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(p2c(&[Some(9.0), Some(1.0)], r), Some(1));
            assert_eq!(p2c(&[Some(1.0), None, Some(9.0)], r), Some(0));
        }
        // With three, the most expensive is never chosen and the others both are.
        let mut seen = [0; 3];
        for r in 0..3000u64 {
            let r = r.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            seen[p2c(&[Some(1.0), Some(2.0), Some(3.0)], r).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0);
        assert!(seen[0] > seen[1] && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn outstanding_calls_raise_the_cost() {
        assert!(cost(1e6, 3) > cost(2e6, 0));
        assert_eq!(cost(1e6, 0), 1e6);
    }
}
