//! A replica's coalesced batches as messages on one long-lived `RankStream`, rather than
//! a `RankBatch` call each. A call opens an HTTP/2 stream, encodes and parses headers
//! and trailers, and goes through the client's and the server's per-call dispatch
//! (tonic's buffer task, hyper's, a task per call on the shard); a message on an open
//! stream is a DATA frame each way. At rank-1k that took a fifth of the cluster's CPU
//! per request off (interleaved pairs, BENCHMARKS.md at dd0bcb0).
//!
//! The stream is opened on the first batch and again on the first batch after it ends
//! (the replica restarted, drained, or the connection broke). Batches in flight when it
//! ends fail UNAVAILABLE, as a call on a broken connection would, so that the policies
//! above retry them elsewhere. Answers are matched to batches by `sequence`.

use crate::shard_client::late;
use shardrank_proto::codec::{rank_stream, SharedShardRankBatch};
use shardrank_proto::v1::ShardRankBatchResponse;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

type Reply = oneshot::Sender<Result<ShardRankBatchResponse, Status>>;

/// One replica's stream, opened on demand.
pub struct BatchStream {
    index: u32,
    url: Arc<str>,
    grpc: tonic::client::Grpc<Channel>,
    open: Mutex<Option<Arc<Open>>>,
    sequence: AtomicU64,
    /// The replica answered UNIMPLEMENTED: it does not serve RankStream.
    unsupported: AtomicBool,
}

/// An open stream: where batches go, and the batches waiting for their answers. Only
/// the sender holds `tx`: when it is dropped the stream is closed from this side.
struct Open {
    tx: mpsc::UnboundedSender<SharedShardRankBatch>,
    pending: Arc<Pending>,
}

/// The batches waiting for their answers; None once the stream has ended (no batch
/// may wait on it then).
struct Pending(Mutex<Option<HashMap<u64, Reply>>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, Reply>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The reply of batch `sequence`, if its caller still waits.
    fn take(&self, sequence: u64) -> Option<Reply> {
        self.lock().as_mut().and_then(|p| p.remove(&sequence))
    }

    /// Fails every waiting batch with `status` and refuses new ones; returns how many
    /// were waiting.
    fn end(&self, status: &Status) -> usize {
        let waiting = self.lock().take().unwrap_or_default();
        let n = waiting.len();
        for (_, reply) in waiting {
            let _ = reply.send(Err(status.clone()));
        }
        n
    }
}

/// Removes a batch from the waiting set when its caller stops waiting (timed out or
/// dropped), so that a lost answer leaves nothing behind.
struct Waiting<'a> {
    open: &'a Open,
    sequence: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.open.pending.take(self.sequence);
    }
}

impl BatchStream {
    pub fn new(index: u32, url: Arc<str>, grpc: tonic::client::Grpc<Channel>) -> Self {
        BatchStream {
            index,
            url,
            grpc,
            open: Mutex::default(),
            sequence: AtomicU64::new(0),
            unsupported: AtomicBool::new(false),
        }
    }

    /// Marks the replica as one without RankStream (its batches go as calls from then
    /// on); true if that was known already.
    pub fn disable(&self) -> bool {
        self.unsupported.swap(true, Ordering::Relaxed)
    }

    /// Whether the replica is known not to serve RankStream.
    pub fn disabled(&self) -> bool {
        self.unsupported.load(Ordering::Relaxed)
    }

    /// Sends `batch` and waits at most `timeout` for its answer. UNIMPLEMENTED means
    /// the replica does not serve RankStream (a binary from before it).
    pub async fn send(
        &self,
        mut batch: SharedShardRankBatch,
        timeout: Duration,
    ) -> Result<ShardRankBatchResponse, Status> {
        batch.sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let sequence = batch.sequence;
        let (reply, answer) = oneshot::channel();
        let open = self.register(sequence, reply);
        let _waiting = Waiting {
            open: &open,
            sequence,
        };
        if open.tx.send(batch).is_err() {
            return Err(self.ended("the stream is closed"));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(self.ended("the stream ended without an answer")),
            Err(_) => Err(late(self.index, &self.url, timeout)),
        }
    }

    fn ended(&self, why: &str) -> Status {
        lost(self.index, &self.url, why)
    }

    /// Registers a batch's reply on the open stream, opening one if there is none or
    /// the last has ended.
    fn register(&self, sequence: u64, reply: Reply) -> Arc<Open> {
        let mut slot = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = slot.as_ref() {
            if let Some(p) = open.pending.lock().as_mut() {
                p.insert(sequence, reply);
                return open.clone();
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending(Mutex::new(Some(HashMap::from([(
            sequence, reply,
        )])))));
        let open = Arc::new(Open {
            tx,
            pending: pending.clone(),
        });
        *slot = Some(open.clone());
        tracing::debug!(shard = self.index, url = %self.url, "opening a RankStream");
        tokio::spawn(run(
            self.grpc.clone(),
            self.index,
            self.url.clone(),
            rx,
            pending,
        ));
        open
    }
}

/// A batch the stream lost: UNAVAILABLE (retryable elsewhere), naming the replica.
fn lost(index: u32, url: &str, why: &str) -> Status {
    Status::unavailable(format!("shard {index} at {url}: {why}"))
}

/// Opens the stream with `batches` as its requests and hands each answer to its batch;
/// when the stream ends, fails whatever still waits.
async fn run(
    mut grpc: tonic::client::Grpc<Channel>,
    index: u32,
    url: Arc<str>,
    mut batches: mpsc::UnboundedReceiver<SharedShardRankBatch>,
    pending: Arc<Pending>,
) {
    let outgoing = futures_util::stream::poll_fn(move |cx| batches.poll_recv(cx));
    let status = match rank_stream(&mut grpc, tonic::Request::new(outgoing)).await {
        Err(s) => s,
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => {
                        // None: its caller stopped waiting.
                        if let Some(reply) = pending.take(answer.sequence) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Ok(None) => break Status::unavailable("the replica closed the stream"),
                    Err(s) => break s,
                }
            }
        }
    };
    let status = match status.code() {
        // Kept as they are: the caller falls back to calls on UNIMPLEMENTED.
        tonic::Code::Unimplemented => status,
        // Whatever else ended the stream, its batches are as good as unsent.
        _ => lost(index, &url, &format!("stream ended: {}", status.message())),
    };
    let failed = pending.end(&status);
    // A replica that restarts or drains ends its streams: worth a line when batches
    // were caught in it (they are retried elsewhere), not when a quiet stream closes.
    if failed > 0 && status.code() != tonic::Code::Unimplemented {
        tracing::info!(shard = index, url = %url, batches = failed, error = %status.message(), "shard stream ended with batches in flight: they fail UNAVAILABLE");
    } else {
        tracing::debug!(shard = index, url = %url, error = %status.message(), "shard stream ended");
    }
}
