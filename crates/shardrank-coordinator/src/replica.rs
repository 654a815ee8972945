//! The replicas of one shard index and what the coordinator knows of each: calls in
//! flight, a peak-EWMA latency, recent latencies for the hedge delay, and whether it is
//! ejected. The decisions are [`crate::policy`]'s; this module only keeps their state,
//! behind one short lock per replica.

use crate::metrics::{CoordinatorMetrics, ReplicaLabel, Shard};
use crate::policy::balance::{self, PeakEwma, DEFAULT_RTT};
use crate::policy::eject::{Ejection, Transition, Verdict};
use crate::policy::hedge::{self, HedgeBudget, LatencyWindow};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How fast a replica's latency estimate forgets a slow spell.
const EWMA_TAU: Duration = Duration::from_secs(1);
/// A failed call counts as at least this slow, so that balancing steers away from a
/// failing replica before it is ejected (a refused connection fails fast, and would
/// otherwise look like the best replica of all).
const FAILURE_PENALTY: Duration = Duration::from_millis(100);

struct Live {
    ewma: PeakEwma,
    window: LatencyWindow,
    ejection: Ejection,
}

pub struct Replica {
    pub url: String,
    outstanding: AtomicU32,
    live: Mutex<Live>,
}

pub struct ReplicaSet {
    pub shard: u32,
    pub replicas: Vec<Replica>,
    budget: Mutex<HedgeBudget>,
    epoch: Instant,
    rng: AtomicU64,
    metrics: Option<Arc<CoordinatorMetrics>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReplicaSet {
    /// Replicas start in rotation; `ready[i] == false` starts replica i ejected, until a
    /// health check finds it ready.
    pub fn new(
        shard: u32,
        urls: &[String],
        ready: &[bool],
        hedge_ratio: f64,
        metrics: Option<Arc<CoordinatorMetrics>>,
    ) -> Self {
        let replicas = urls
            .iter()
            .enumerate()
            .map(|(i, url)| Replica {
                url: url.clone(),
                outstanding: AtomicU32::new(0),
                live: Mutex::new(Live {
                    ewma: PeakEwma::new(DEFAULT_RTT),
                    window: LatencyWindow::default(),
                    ejection: if ready.get(i).copied().unwrap_or(true) {
                        Ejection::default()
                    } else {
                        Ejection::ejected()
                    },
                }),
            })
            .collect();
        let set = ReplicaSet {
            shard,
            replicas,
            budget: Mutex::new(HedgeBudget::new(hedge_ratio, 10.0)),
            epoch: Instant::now(),
            rng: AtomicU64::new(0x5EED ^ shard as u64),
            metrics,
        };
        for i in 0..set.replicas.len() {
            set.set_up_gauge(i);
        }
        set
    }

    fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn random(&self) -> u64 {
        // One SplitMix64 stream shared by all calls: a step is one atomic add.
        shardrank_core::rng::Rng::new(self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed))
            .next_u64()
    }

    pub fn is_ejected(&self, i: usize) -> bool {
        lock(&self.replicas[i].live).ejection.is_ejected()
    }

    /// The replica for a call: power of two choices over the replicas in rotation,
    /// other than `exclude`. With no `exclude` and every replica ejected, all of them
    /// are candidates again (a guess beats certain failure, as Envoy's panic mode);
    /// with `exclude` (a retry or hedge), `None` when no other replica is in rotation.
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let now = self.now_nanos();
        let costs = |ignore_ejection: bool| -> Vec<Option<f64>> {
            self.replicas
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let live = lock(&r.live);
                    (Some(i) != exclude && (ignore_ejection || !live.ejection.is_ejected())).then(
                        || {
                            let ewma = live.ewma.decayed(now, EWMA_TAU);
                            balance::cost(ewma, r.outstanding.load(Ordering::Relaxed))
                        },
                    )
                })
                .collect()
        };
        let r = self.random();
        balance::p2c(&costs(false), r).or_else(|| {
            exclude
                .is_none()
                .then(|| balance::p2c(&costs(true), r))
                .flatten()
        })
    }

    /// The latency a call to replica `i` usually takes (its EWMA).
    pub fn typical(&self, i: usize) -> Duration {
        Duration::from_nanos(lock(&self.replicas[i].live).ewma.nanos as u64)
    }

    /// The `q` quantile of replica `i`'s recent latencies for its hedge delay, or its
    /// siblings' while it has too few samples ([`hedge::estimate`]).
    pub fn hedge_percentile(&self, i: usize, q: f64) -> Option<Duration> {
        let of = |j: usize| lock(&self.replicas[j].live).window.quantile(q);
        let siblings = (0..self.replicas.len()).filter(|&j| j != i);
        hedge::estimate(of(i), siblings.map(of))
    }

    pub fn hedging_enabled(&self) -> bool {
        self.replicas.len() > 1 && lock(&self.budget).enabled()
    }

    /// A primary call was sent: it earns the hedge budget its share.
    pub fn deposit(&self) {
        lock(&self.budget).deposit();
    }

    pub fn try_hedge(&self) -> bool {
        lock(&self.budget).try_spend()
    }

    /// Marks a call to replica `i` in flight until the guard is finished or dropped.
    pub fn start(self: &Arc<Self>, i: usize) -> InFlight {
        self.replicas[i].outstanding.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.shard_calls_in_flight.inc();
        }
        InFlight {
            set: self.clone(),
            replica: i,
            started: Instant::now(),
            finished: false,
        }
    }

    /// A health check's result for replica `i`.
    pub fn health(&self, i: usize, ok: bool) -> Transition {
        let t = lock(&self.replicas[i].live)
            .ejection
            .on_health(ok, self.now_nanos());
        self.transition(i, t, "health check");
        t
    }

    fn transition(&self, i: usize, t: Transition, why: &str) {
        match t {
            Transition::None => return,
            Transition::Ejected => {
                tracing::warn!(shard = self.shard, replica = i, url = %self.replicas[i].url, "replica ejected after a failed {why}");
                if let Some(m) = &self.metrics {
                    m.replica_ejections
                        .get_or_create(&ReplicaLabel {
                            shard: self.shard,
                            replica: i as u32,
                        })
                        .inc();
                }
            }
            Transition::Restored => {
                tracing::info!(shard = self.shard, replica = i, url = %self.replicas[i].url, "replica back in rotation");
            }
        }
        self.set_up_gauge(i);
    }

    fn set_up_gauge(&self, i: usize) {
        if let Some(m) = &self.metrics {
            m.replica_up
                .get_or_create(&ReplicaLabel {
                    shard: self.shard,
                    replica: i as u32,
                })
                .set(i64::from(!self.is_ejected(i)));
        }
    }

    pub fn count_retry(&self) {
        if let Some(m) = &self.metrics {
            m.shard_retries
                .get_or_create(&Shard { shard: self.shard })
                .inc();
        }
    }

    pub fn count_hedge(&self, won: bool) {
        if let Some(m) = &self.metrics {
            let family = if won {
                &m.shard_hedges_won
            } else {
                &m.shard_hedges
            };
            family.get_or_create(&Shard { shard: self.shard }).inc();
        }
    }
}

/// One call to one replica in flight. `finish` feeds its result to the replica's state;
/// dropped unfinished (a hedge lost, the request was cancelled) it still counts the time
/// the replica took without answering, so a stalled replica looks slow.
pub struct InFlight {
    set: Arc<ReplicaSet>,
    pub replica: usize,
    started: Instant,
    finished: bool,
}

impl InFlight {
    pub fn finish(mut self, code: tonic::Code) -> Duration {
        self.finished = true;
        let took = self.started.elapsed();
        let verdict = Verdict::of(code);
        let now = self.set.now_nanos();
        let t = {
            let mut live = lock(&self.set.replicas[self.replica].live);
            match verdict {
                Verdict::Healthy => {
                    live.ewma.observe(took, now, EWMA_TAU);
                    live.window.record(took);
                }
                Verdict::Failed => live.ewma.observe(took.max(FAILURE_PENALTY), now, EWMA_TAU),
                Verdict::Neutral => {}
            }
            live.ejection.on_call(verdict, now)
        };
        self.set.transition(self.replica, t, "call");
        took
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let r = &self.set.replicas[self.replica];
        r.outstanding.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.set.metrics {
            m.shard_calls_in_flight.dec();
        }
        if !self.finished {
            let now = self.set.now_nanos();
            lock(&r.live)
                .ewma
                .observe(self.started.elapsed(), now, EWMA_TAU);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize) -> Arc<ReplicaSet> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://r{i}")).collect();
        Arc::new(ReplicaSet::new(0, &urls, &vec![true; n], 0.1, None))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_replica_is_avoided() {
        let s = set(2);
        let slow = s.start(0);
        let fast = s.start(1);
        tokio::time::advance(Duration::from_millis(2)).await;
        fast.finish(tonic::Code::Ok);
        tokio::time::advance(Duration::from_millis(48)).await;
        slow.finish(tonic::Code::Ok);
        for _ in 0..50 {
            assert_eq!(s.pick(None), Some(1));
        }
        assert_eq!(s.pick(Some(1)), Some(0));
    }

    /// With two replicas the dearer one gets no calls; its estimate decays until it is
    /// the cheaper, and it is tried again.
    #[tokio::test(start_paused = true)]
    async fn an_idle_replica_is_tried_again_as_its_estimate_decays() {
        let s = set(2);
        for (i, ms) in [(0, 3), (1, 4)] {
            let f = s.start(i);
            tokio::time::advance(Duration::from_millis(ms)).await;
            f.finish(tonic::Code::Ok);
        }
        let t0 = Instant::now();
        loop {
            match s.pick(None) {
                Some(0) => {
                    let f = s.start(0);
                    tokio::time::advance(Duration::from_millis(3)).await;
                    f.finish(tonic::Code::Ok);
                    tokio::time::advance(Duration::from_millis(7)).await;
                }
                other => {
                    assert_eq!(other, Some(1));
                    break;
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "replica 1 never tried"
            );
        }
        // ln(4/3) of the 1 s time constant.
        let t = t0.elapsed().as_millis();
        assert!((250..=350).contains(&t), "{t} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_call_counts_its_time() {
        let s = set(2);
        let ok = s.start(1);
        tokio::time::advance(Duration::from_millis(1)).await;
        ok.finish(tonic::Code::Ok);
        let lost = s.start(0);
        tokio::time::advance(Duration::from_millis(30)).await;
        drop(lost);
        assert!(s.typical(0) >= Duration::from_millis(30));
        assert_eq!(s.pick(None), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_replicas_are_ejected_and_panic_mode_keeps_one_choice() {
        let s = set(2);
        for _ in 0..3 {
            s.start(0).finish(tonic::Code::Unavailable);
        }
        assert!(s.is_ejected(0));
        for _ in 0..20 {
            assert_eq!(s.pick(None), Some(1));
        }
        assert_eq!(s.pick(Some(1)), None, "no other replica in rotation");
        assert_eq!(s.health(1, false), Transition::Ejected);
        // Every replica ejected: a plain pick still returns one.
        assert!(s.pick(None).is_some());
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(s.health(0, true), Transition::Restored);
        assert_eq!(s.pick(None), Some(0));
    }

    #[test]
    fn replicas_not_ready_at_start_are_out_of_rotation() {
        let urls = vec!["http://a".to_string(), "http://b".to_string()];
        let s = ReplicaSet::new(3, &urls, &[false, true], 0.0, None);
        assert!(s.is_ejected(0) && !s.is_ejected(1));
        assert!(!s.hedging_enabled());
    }
}
