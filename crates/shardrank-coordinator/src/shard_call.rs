//! One shard's part of a request, sent to its replicas: pick one ([`ReplicaSet::pick`]),
//! hedge to another when it is slow, retry once on another when it fails. The decisions
//! are [`crate::policy`]'s; this is the small state machine that applies them. It is
//! generic over the send function, so that it is tested with timed fakes and no network.
//!
//! (tower's `Balance`, `Hedge` and `Retry` layers were the other way; they fit a stack of
//! interchangeable endpoints, but a retry here must go to a *different* replica, a hedge
//! must respect the request's own deadline, and the request's stats must say which
//! replica answered and how: state a layer stack hides.)

use crate::policy::{hedge, retry};
use crate::replica::ReplicaSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Code, Status};

/// How calls to a shard's replicas are made.
#[derive(Clone, Debug)]
pub struct CallPolicy {
    /// The percentile of a replica's recent latencies after which a call is hedged.
    pub hedge_quantile: f64,
    /// Never hedge sooner than this.
    pub hedge_min_delay: Duration,
    /// Retry a failed call once on another replica.
    pub retry: bool,
}

impl Default for CallPolicy {
    fn default() -> Self {
        CallPolicy {
            hedge_quantile: 0.95,
            hedge_min_delay: Duration::from_millis(1),
            retry: true,
        }
    }
}

/// What happened to one shard's part.
#[derive(Debug)]
pub struct Outcome<T> {
    pub result: Result<T, Status>,
    /// The replica whose answer (or last error) this is.
    pub replica: usize,
    /// Calls sent: 1, or 2 with a retry or a hedge.
    pub attempts: u32,
    pub retried: bool,
    pub hedged: bool,
    /// The hedge answered first.
    pub hedge_won: bool,
}

type Answer<T> = (usize, Result<T, Status>);

/// One attempt on replica `i`, accounted in the replica's state.
async fn attempt<T, Fut>(set: &Arc<ReplicaSet>, i: usize, fut: Fut) -> Answer<T>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let flight = set.start(i);
    let res = fut.await;
    flight.finish(res.as_ref().map_or_else(Status::code, |_| Code::Ok));
    (i, res)
}

/// Sends a shard's part, with the time left before `deadline`. `send(i, timeout)` calls
/// replica `i`. Each attempt's future is boxed: a tonic call is several kilobytes of
/// state, and three of them inline (primary, hedge, retry) made every shard call's task
/// 26 KB, copied as it was built and spawned (measured: 1.4% of the CPU at rank-1k in
/// `memcpy` under `tokio::spawn`; 1.2 KB boxed).
pub async fn call<T, F, Fut>(
    set: &Arc<ReplicaSet>,
    deadline: Instant,
    policy: &CallPolicy,
    send: F,
) -> Outcome<T>
where
    F: Fn(usize, Duration) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let left = || deadline.saturating_duration_since(Instant::now());
    let Some(first) = set.pick(None) else {
        return Outcome {
            result: Err(Status::unavailable(format!(
                "shard {} has no replicas",
                set.shard
            ))),
            replica: 0,
            attempts: 0,
            retried: false,
            hedged: false,
            hedge_won: false,
        };
    };
    set.deposit();
    let mut out = Outcome {
        result: Err(Status::unknown("not sent")),
        replica: first,
        attempts: 1,
        retried: false,
        hedged: false,
        hedge_won: false,
    };
    let hedge_after = if set.hedging_enabled() {
        hedge::delay(
            set.hedge_percentile(first, policy.hedge_quantile),
            policy.hedge_min_delay,
            left(),
        )
    } else {
        None
    };
    let primary = attempt(set, first, Box::pin(send(first, left())));
    tokio::pin!(primary);
    let (i, res) = match hedge_after {
        None => primary.await,
        Some(delay) => {
            tokio::select! {
                a = &mut primary => a,
                _ = tokio::time::sleep(delay) => {
                    match set.pick(Some(first)).filter(|_| set.try_hedge()) {
                        None => primary.await,
                        Some(second) => {
                            out.hedged = true;
                            out.attempts = 2;
                            set.count_hedge(false);
                            let backup = attempt(set, second, Box::pin(send(second, left())));
                            tokio::pin!(backup);
                            // The first answer wins; an error waits for the other call.
                            let (winner, hedge_first) = tokio::select! {
                                a = &mut primary => (a, false),
                                b = &mut backup => (b, true),
                            };
                            if winner.1.is_ok() {
                                out.hedge_won = hedge_first;
                                winner
                            } else if hedge_first {
                                primary.await
                            } else {
                                let b = backup.await;
                                out.hedge_won = b.1.is_ok();
                                b
                            }
                        }
                    }
                }
            }
        }
    };
    if out.hedge_won {
        set.count_hedge(true);
    }
    out.replica = i;
    out.result = res;
    if let Err(status) = &out.result {
        if policy.retry && !out.hedged {
            if let Some(other) = set.pick(Some(first)) {
                if retry::should_retry(status.code(), true, left(), set.typical(other)) {
                    tracing::debug!(shard = set.shard, from = first, to = other, error = %status.message(), "retrying on another replica");
                    set.count_retry();
                    out.retried = true;
                    out.attempts = 2;
                    let (i, res) = attempt(set, other, Box::pin(send(other, left()))).await;
                    out.replica = i;
                    out.result = res;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake replica: answers after `delay`, or fails with `code`.
    #[derive(Clone, Copy)]
    struct Fake {
        delay: Duration,
        code: Code,
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    type FakeCall = std::pin::Pin<Box<dyn Future<Output = Result<usize, Status>>>>;

    /// A send function over fake replicas, and the log of replicas it was called for.
    fn fakes(
        replicas: Vec<Fake>,
    ) -> (impl Fn(usize, Duration) -> FakeCall, Arc<Mutex<Vec<usize>>>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let send = move |i: usize, timeout: Duration| {
            log.lock().unwrap().push(i);
            let f = replicas[i];
            Box::pin(async move {
                if f.delay > timeout {
                    tokio::time::sleep(timeout).await;
                    return Err(Status::deadline_exceeded("timeout"));
                }
                tokio::time::sleep(f.delay).await;
                if f.code == Code::Ok {
                    Ok(i)
                } else {
                    Err(Status::new(f.code, "fake failure"))
                }
            }) as FakeCall
        };
        (send, sent)
    }

    /// Replica 0 stalled for a second; replica 1 answering in 2 ms, faster than the
    /// 3 ms percentile the tests teach it, so its own calls are never hedged. (Whole
    /// milliseconds: tokio's timers tick in milliseconds.)
    fn stalled_then_quick() -> Vec<Fake> {
        vec![
            Fake {
                delay: ms(1000),
                code: Code::Ok,
            },
            Fake {
                delay: ms(2),
                code: Code::Ok,
            },
        ]
    }

    /// One call with the default policy and `budget` before its deadline.
    async fn call_within<F, Fut>(set: &Arc<ReplicaSet>, budget: Duration, send: F) -> Outcome<usize>
    where
        F: Fn(usize, Duration) -> Fut,
        Fut: Future<Output = Result<usize, Status>>,
    {
        call(set, Instant::now() + budget, &CallPolicy::default(), send).await
    }

    fn replicas(n: usize, hedge_ratio: f64) -> Arc<ReplicaSet> {
        let urls: Vec<String> = (0..n).map(|i| format!("http://r{i}")).collect();
        Arc::new(ReplicaSet::new(0, &urls, &vec![true; n], hedge_ratio, None))
    }

    /// Teaches the set that replica i answers in about `d[i]` (`rounds` samples each),
    /// and fills the hedge budget.
    async fn warm(set: &Arc<ReplicaSet>, d: &[Duration], rounds: usize) {
        for _ in 0..rounds {
            for (i, &d) in d.iter().enumerate() {
                let f = set.start(i);
                tokio::time::advance(d).await;
                f.finish(Code::Ok);
            }
            set.deposit();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_is_retried_once_on_another_replica() {
        let set = replicas(2, 0.0);
        let (send, sent) = fakes(vec![
            Fake {
                delay: ms(1),
                code: Code::Unavailable,
            },
            Fake {
                delay: ms(1),
                code: Code::Unavailable,
            },
        ]);
        let out = call_within(&set, ms(100), &send).await;
        assert!(out.retried && out.attempts == 2);
        assert_eq!(out.result.unwrap_err().code(), Code::Unavailable);
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "once, not more");
        assert_ne!(sent[0], sent[1], "on another replica");
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_reaches_the_healthy_replica() {
        let set = replicas(2, 0.0);
        let (send, sent) = fakes(vec![
            Fake {
                delay: ms(1),
                code: Code::Unavailable,
            },
            Fake {
                delay: ms(1),
                code: Code::Ok,
            },
        ]);
        // Replica 0 looks the faster at first.
        warm(&set, &[ms(1), ms(2)], 1).await;
        for _ in 0..20 {
            let out = call_within(&set, ms(100), &send).await;
            assert_eq!(out.result.unwrap(), 1);
        }
        // A failure counts as a slow call: balancing stops choosing the failing replica
        // (before ejection would).
        let to_0 = sent.lock().unwrap().iter().filter(|&&i| i == 0).count();
        assert!((1..=2).contains(&to_0), "{to_0}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_is_not_retried() {
        let set = replicas(2, 0.0);
        let (send, sent) = fakes(vec![
            Fake {
                delay: ms(500),
                code: Code::Ok,
            },
            Fake {
                delay: ms(500),
                code: Code::Ok,
            },
        ]);
        let out = call_within(&set, ms(50), &send).await;
        assert_eq!(out.result.unwrap_err().code(), Code::DeadlineExceeded);
        assert!(!out.retried);
        assert_eq!(sent.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_error_is_not_retried() {
        let set = replicas(2, 0.0);
        let (send, sent) = fakes(vec![
            Fake {
                delay: ms(1),
                code: Code::InvalidArgument,
            },
            Fake {
                delay: ms(1),
                code: Code::InvalidArgument,
            },
        ]);
        let out = call_within(&set, ms(50), &send).await;
        assert_eq!(out.result.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(sent.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_replica_is_hedged_and_the_hedge_wins() {
        let set = replicas(2, 0.5);
        // Replica 0 looks the faster: it is picked first, then stalls.
        warm(&set, &[ms(1), ms(3)], 40).await;
        let (send, _) = fakes(stalled_then_quick());
        let mut hedged = 0;
        for _ in 0..10 {
            let t0 = Instant::now();
            let out = call_within(&set, ms(500), &send).await;
            assert_eq!(out.result.unwrap(), 1);
            if out.hedged {
                hedged += 1;
                assert!(out.hedge_won);
                // The p95 (1 ms) plus the hedge's own 2 ms: far from the 1 s stall.
                assert!(t0.elapsed() <= ms(3), "{:?}", t0.elapsed());
                // Balancing learnt from the abandoned call: the stalled replica is
                // avoided (until its estimate decays and it is tried, and hedged, again).
                assert_eq!(set.pick(None), Some(1));
            }
        }
        assert!(hedged >= 1, "the stalled replica was picked, and hedged");
    }

    /// A replica with too few samples for a percentile of its own (here: none, it was
    /// never called) is hedged after its sibling's, not left to the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_replica_without_samples_is_hedged_after_its_siblings_percentile() {
        let set = replicas(2, 0.5);
        // Only replica 1 has answered (3 ms); replica 0 keeps the default 1 ms
        // estimate, so it is the cheaper and is picked.
        for _ in 0..40 {
            let f = set.start(1);
            tokio::time::advance(ms(3)).await;
            f.finish(Code::Ok);
            set.deposit();
        }
        assert_eq!(set.pick(None), Some(0));
        let (send, sent) = fakes(stalled_then_quick());
        let t0 = Instant::now();
        let out = call_within(&set, ms(500), &send).await;
        assert_eq!(*sent.lock().unwrap(), [0, 1]);
        assert!(out.hedged && out.hedge_won);
        assert_eq!(out.result.unwrap(), 1);
        // Replica 1's p95 (3 ms), then its 2 ms answer.
        assert_eq!(t0.elapsed(), ms(5));
    }

    #[tokio::test(start_paused = true)]
    async fn hedges_stay_within_budget() {
        let set = replicas(2, 0.1);
        // 200 deposits at 0.1 would be 20 tokens: the bucket holds 10.
        warm(&set, &[ms(2), ms(2)], 200).await;
        let (send, _) = fakes(vec![
            Fake {
                delay: ms(20),
                code: Code::Ok,
            },
            Fake {
                delay: ms(20),
                code: Code::Ok,
            },
        ]);
        let mut hedges = 0;
        for _ in 0..100 {
            let out = call_within(&set, ms(500), &send).await;
            assert!(out.result.is_ok());
            hedges += out.hedged as u32;
        }
        // 10 saved tokens plus 0.1 per call at most; the saved ones are spent while the
        // 2 ms percentile still says the 20 ms calls are slow.
        assert!((10..=20).contains(&hedges), "{hedges}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_replica_is_simply_called() {
        let set = replicas(1, 0.1);
        let (send, sent) = fakes(vec![Fake {
            delay: ms(3),
            code: Code::Unavailable,
        }]);
        let out = call_within(&set, ms(50), &send).await;
        assert!(!out.retried && !out.hedged);
        assert_eq!(out.result.unwrap_err().code(), Code::Unavailable);
        assert_eq!(sent.lock().unwrap().len(), 1);
    }
}
