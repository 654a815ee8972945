//! Coalescing: the concurrent requests' Rank calls to one replica go out together, as
//! one batch (a message on the replica's `RankStream`, see [`crate::shard_stream`], or a
//! `RankBatch` call). Every request calls every shard, and a call is HTTP/2 frames,
//! syscalls and wake-ups on both ends whatever it carries: at rank-1k under load the
//! calls were half of the request's writes. Coalesced, a rank-1k request makes half the
//! writes, the cluster serves about 10% more, and its p99 at a rate near capacity fell
//! from about 80 to 15 ms (BENCHMARKS.md, "Coalesced shard calls").
//!
//! The rule is a group commit's: a replica has at most `in_flight` batch calls under
//! way; an item that finds a free slot goes at once, alone (no added latency when the
//! cluster is idle), and items that arrive while every slot is taken wait for the next
//! free one and go together, up to `max_items`. Batches grow with load and only with
//! load. Each item keeps its own deadline, trace and outcome; the policies above (retry,
//! hedging, replica choice) see one call per item as before. Large requests are not
//! coalesced: their call is a small part of their cost, and an item's answer waits for
//! its whole batch.

use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;
use tonic::Status;

/// When calls to a replica are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Batch calls under way per replica; 0 turns coalescing off.
    pub in_flight: usize,
    /// Most items in one batch call.
    pub max_items: usize,
    /// Requests with more candidate ids than this are sent alone.
    pub max_item_ids: usize,
}

impl BatchPolicy {
    pub const OFF: BatchPolicy = BatchPolicy {
        in_flight: 0,
        max_items: 1,
        max_item_ids: 0,
    };

    /// Whether a request with `ids` candidates goes through the batcher.
    pub fn admits(&self, ids: usize) -> bool {
        self.in_flight > 0 && self.max_items > 1 && ids <= self.max_item_ids
    }
}

/// One item waiting for its batch.
struct Pending<Req, Resp> {
    req: Req,
    deadline: Instant,
    reply: oneshot::Sender<Result<Resp, Status>>,
}

/// A replica's coalescing queue, with its dispatcher task (which ends when the last
/// clone of the batcher is dropped).
pub struct Batcher<Req, Resp> {
    tx: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

/// Sends one batch: the items with their deadlines, in order. Ok holds one outcome per
/// item, in the same order; Err is the whole call's failure.
pub trait SendBatch<Req, Resp>: Send + Sync + 'static {
    fn send(
        &self,
        items: Vec<(Req, Instant)>,
    ) -> impl Future<Output = Result<Vec<Result<Resp, Status>>, Status>> + Send + 'static;
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the dispatcher on the current tokio runtime. `sizes` sees the length of
    /// every batch sent.
    pub fn spawn(
        policy: BatchPolicy,
        sender: impl SendBatch<Req, Resp>,
        sizes: impl Fn(usize) + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(policy, rx, sender, sizes));
        Batcher { tx }
    }

    /// Queues `req` and waits for its outcome. The caller bounds the wait (an item
    /// whose caller has gone by the time its batch leaves is not sent).
    pub async fn call(&self, req: Req, deadline: Instant) -> Result<Resp, Status> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                req,
                deadline,
                reply,
            })
            .map_err(|_| Status::unavailable("the shard call queue is closed"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::internal("a batched shard call lost its answer")))
    }
}

async fn dispatch<Req, Resp, S>(
    policy: BatchPolicy,
    mut rx: mpsc::UnboundedReceiver<Pending<Req, Resp>>,
    sender: S,
    sizes: impl Fn(usize),
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    S: SendBatch<Req, Resp>,
{
    let slots = Arc::new(Semaphore::new(policy.in_flight.max(1)));
    let max_items = policy.max_items.max(1);
    while let Some(first) = rx.recv().await {
        // Items that come while every slot is taken join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // never closed
        };
        let mut batch = vec![first];
        while batch.len() < max_items {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // A hedge that lost or a request that gave up: no work for nobody.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        sizes(batch.len());
        let (items, replies): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|p| ((p.req, p.deadline), p.reply))
            .unzip();
        let call = sender.send(items);
        tokio::spawn(async move {
            let outcome = call.await;
            drop(slot);
            deliver(outcome, replies);
        });
    }
}

/// Hands each item its outcome; a failed call is every item's failure, and so is an
/// answer that does not hold one result per item.
fn deliver<Resp>(
    outcome: Result<Vec<Result<Resp, Status>>, Status>,
    replies: Vec<oneshot::Sender<Result<Resp, Status>>>,
) {
    match outcome {
        Ok(results) if results.len() == replies.len() => {
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(r);
            }
        }
        Ok(results) => {
            let status = Status::internal(format!(
                "a batch of {} items was answered with {} results",
                replies.len(),
                results.len()
            ));
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
        Err(status) => {
            for reply in replies {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tonic::Code;

    /// A fake replica: answers every batch after `delay` with each item doubled (or an
    /// error for an item of 13), and logs the batches it was sent.
    #[derive(Clone)]
    struct Fake {
        delay: Duration,
        fail_call: Option<Code>,
        short_answer: bool,
        log: Arc<Mutex<Vec<Vec<u32>>>>,
    }

    impl Fake {
        fn new(delay_ms: u64) -> Self {
            Fake {
                delay: Duration::from_millis(delay_ms),
                fail_call: None,
                short_answer: false,
                log: Arc::default(),
            }
        }
        fn batches(&self) -> Vec<Vec<u32>> {
            self.log.lock().unwrap().clone()
        }
    }

    impl SendBatch<u32, u32> for Fake {
        fn send(
            &self,
            items: Vec<(u32, Instant)>,
        ) -> impl Future<Output = Result<Vec<Result<u32, Status>>, Status>> + Send + 'static
        {
            self.log
                .lock()
                .unwrap()
                .push(items.iter().map(|i| i.0).collect());
            let f = self.clone();
            async move {
                tokio::time::sleep(f.delay).await;
                if let Some(code) = f.fail_call {
                    return Err(Status::new(code, "the call failed"));
                }
                let n = items.len() - f.short_answer as usize;
                Ok(items[..n]
                    .iter()
                    .map(|&(x, _)| {
                        if x == 13 {
                            Err(Status::invalid_argument("13"))
                        } else {
                            Ok(2 * x)
                        }
                    })
                    .collect())
            }
        }
    }

    fn policy(in_flight: usize, max_items: usize) -> BatchPolicy {
        BatchPolicy {
            in_flight,
            max_items,
            max_item_ids: 10_000,
        }
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(1)
    }

    /// Sends `xs` at once from as many tasks; their answers in order.
    async fn concurrently(b: &Batcher<u32, u32>, xs: &[u32]) -> Vec<Result<u32, Status>> {
        let calls: Vec<_> = xs
            .iter()
            .map(|&x| {
                let b = b.clone();
                tokio::spawn(async move { b.call(x, later()).await })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_replica_gets_each_item_at_once_alone() {
        let fake = Fake::new(5);
        let b = Batcher::spawn(policy(1, 16), fake.clone(), |_| {});
        for x in 1..=3 {
            let t0 = Instant::now();
            assert_eq!(b.call(x, later()).await.unwrap(), 2 * x);
            assert_eq!(t0.elapsed(), Duration::from_millis(5), "no wait added");
        }
        assert_eq!(fake.batches(), vec![vec![1], vec![2], vec![3]]);
    }

    #[tokio::test(start_paused = true)]
    async fn items_that_find_every_slot_taken_go_together_in_order() {
        let fake = Fake::new(5);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let b = Batcher::spawn(policy(1, 16), fake.clone(), move |n| {
            seen.lock().unwrap().push(n)
        });
        let answers = concurrently(&b, &[1, 2, 3, 4, 5]).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, vec![2, 4, 6, 8, 10]);
        let batches = fake.batches();
        // The first takes the slot; the rest queue behind it and leave as one call.
        assert_eq!(batches.concat(), vec![1, 2, 3, 4, 5]);
        assert!(batches.len() < 5, "{batches:?}");
        assert_eq!(
            *sizes.lock().unwrap(),
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_hold_at_most_max_items_and_slots_bound_the_calls() {
        let fake = Fake::new(5);
        let b = Batcher::spawn(policy(2, 3), fake.clone(), |_| {});
        let xs: Vec<u32> = (1..=21).filter(|&x| x != 13).collect();
        let answers = concurrently(&b, &xs).await;
        assert!(answers
            .iter()
            .zip(&xs)
            .all(|(a, x)| *a.as_ref().unwrap() == 2 * x));
        let batches = fake.batches();
        assert!(batches.iter().all(|b| b.len() <= 3), "{batches:?}");
        let mut all = batches.concat();
        all.sort_unstable();
        assert_eq!(all, xs, "each item sent once");
        // 20 items, two calls at a time of at most 3: at least 7 calls, in 4 rounds
        // or more of 5 ms.
        assert!(batches.len() >= 7);
    }

    #[tokio::test(start_paused = true)]
    async fn each_item_has_its_own_outcome() {
        let fake = Fake::new(5);
        let b = Batcher::spawn(policy(1, 16), fake.clone(), |_| {});
        let answers = concurrently(&b, &[1, 13, 2, 13]).await;
        assert_eq!(*answers[0].as_ref().unwrap(), 2);
        assert_eq!(
            answers[1].as_ref().unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(*answers[2].as_ref().unwrap(), 4);
        assert_eq!(
            answers[3].as_ref().unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_fails_each_of_its_items_and_a_short_answer_too() {
        let mut fake = Fake::new(5);
        fake.fail_call = Some(Code::Unavailable);
        let b = Batcher::spawn(policy(1, 16), fake.clone(), |_| {});
        for a in concurrently(&b, &[1, 2, 3]).await {
            assert_eq!(a.unwrap_err().code(), Code::Unavailable);
        }
        let mut fake = Fake::new(5);
        fake.short_answer = true;
        let b = Batcher::spawn(policy(1, 16), fake.clone(), |_| {});
        for a in concurrently(&b, &[1, 2, 3]).await {
            let e = a.unwrap_err();
            assert_eq!(e.code(), Code::Internal);
            assert!(e.message().contains("answered with"), "{}", e.message());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_item_whose_caller_left_is_not_sent() {
        let fake = Fake::new(10);
        let b = Batcher::spawn(policy(1, 16), fake.clone(), |_| {});
        // 1 takes the slot; 2 queues, then its caller gives up; 3 queues.
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.call(1, later()).await }
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
        let gone = tokio::time::timeout(Duration::from_millis(2), b.call(2, later())).await;
        assert!(gone.is_err());
        assert_eq!(b.call(3, later()).await.unwrap(), 6);
        assert_eq!(first.await.unwrap().unwrap(), 2);
        assert_eq!(fake.batches(), vec![vec![1], vec![3]]);
    }

    #[test]
    fn only_small_requests_are_coalesced_and_off_means_off() {
        let p = policy(1, 16);
        assert!(p.admits(0) && p.admits(10_000));
        assert!(!p.admits(10_001));
        assert!(!BatchPolicy::OFF.admits(0));
        assert!(!policy(0, 16).admits(1));
        assert!(!policy(2, 1).admits(1));
    }
}
