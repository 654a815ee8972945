//! Connections to the shards: one HTTP/2 channel per replica, connected lazily and
//! reconnected by tonic when a replica restarts. At start-up every shard index needs a
//! replica that answers `Info` with the partition layout the coordinator routes for;
//! afterwards [`health_loop`] checks every replica the same way and feeds the result to
//! its [`ReplicaSet`] (ejection and return).

use crate::replica::ReplicaSet;
use crate::shard_batch::{BatchPolicy, Batcher, SendBatch};
use crate::shard_stream::BatchStream;
use prometheus_client::metrics::histogram::Histogram;
use shardrank_proto::codec::{
    shard_unary, SharedBatchItem, SharedShardRankBatch, SharedShardRankRequest,
};
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{RetrieveRequest, RetrieveResponse, ShardInfoRequest, ShardRankResponse};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// The replicas of one shard index: their connections and their live state.
#[derive(Clone)]
pub struct ShardGroup {
    pub index: u32,
    /// Shared: every request's call to the shard takes the group (a clone per handle,
    /// with its URL and clients, was a few allocations per call).
    pub handles: Arc<[ShardHandle]>,
    pub set: Arc<ReplicaSet>,
}

#[derive(Clone)]
pub struct ShardHandle {
    pub index: u32,
    pub url: String,
    client: ShardClient<Channel>,
    /// The same channel, for `Rank` with a shared request (the generated client takes
    /// only an owned one).
    grpc: tonic::client::Grpc<Channel>,
    batch: BatchPolicy,
    /// Started on the first coalesced call (it needs the runtime).
    batcher: Arc<OnceLock<Batcher<RankItem, ShardRankResponse>>>,
    /// Items per batch call, for the metrics.
    batch_sizes: Histogram,
    /// The replica answered RankBatch with UNIMPLEMENTED (an older shard binary): its
    /// calls go one by one from then on.
    no_batches: Arc<AtomicBool>,
    /// Batches go as messages on a RankStream (see [`crate::shard_stream`]), not as
    /// RankBatch calls.
    stream: bool,
}

/// A coalesced Rank: the request and its trace context.
type RankItem = (SharedShardRankRequest, TraceContext);

impl ShardHandle {
    /// A channel to one replica, connected on first use. Rank calls to it are coalesced
    /// under `batch` (see [`crate::shard_batch`]); `batch_sizes` observes each batch.
    pub fn connect_lazy(
        index: u32,
        url: &str,
        max_message_bytes: usize,
        batch: BatchPolicy,
        stream: bool,
        batch_sizes: Histogram,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("shard {index} URL {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        let client = ShardClient::new(channel.clone())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(ShardHandle {
            index,
            url: url.to_string(),
            client,
            grpc,
            batch,
            batcher: Arc::default(),
            batch_sizes,
            no_batches: Arc::default(),
            stream,
        })
    }

    /// One call bounded by `timeout` (see [`call_replica`]).
    async fn call<Req, Resp, F, Fut>(
        &self,
        req: Req,
        timeout: Duration,
        trace: TraceContext,
        send: F,
    ) -> Result<Resp, tonic::Status>
    where
        F: FnOnce(ShardClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let client = self.client.clone();
        call_replica(self.index, &self.url, req, timeout, trace, |r| {
            send(client, r)
        })
        .await
    }

    /// One Rank call bounded by `timeout`. A shared request's ids are not copied, however
    /// many attempts send them. A small one may travel in a batch with others.
    pub async fn rank(
        &self,
        req: impl Into<SharedShardRankRequest>,
        timeout: Duration,
        trace: TraceContext,
    ) -> Result<ShardRankResponse, tonic::Status> {
        let req = req.into();
        if self.batch.admits(req.ids().len()) && !self.no_batches.load(Ordering::Relaxed) {
            let batcher = self.batcher.get_or_init(|| {
                let sizes = self.batch_sizes.clone();
                let url: Arc<str> = self.url.clone().into();
                Batcher::spawn(
                    self.batch,
                    RankBatchSender {
                        index: self.index,
                        stream: self.stream.then(|| {
                            Arc::new(BatchStream::new(self.index, url.clone(), self.grpc.clone()))
                        }),
                        url,
                        grpc: self.grpc.clone(),
                        no_batches: self.no_batches.clone(),
                    },
                    move |n| sizes.observe(n as f64),
                )
            });
            let call = batcher.call((req, trace), Instant::now() + timeout);
            return match tokio::time::timeout(timeout, call).await {
                Ok(res) => res,
                Err(_) => Err(late(self.index, &self.url, timeout)),
            };
        }
        rank_alone(
            self.grpc.clone(),
            self.index,
            &self.url,
            req,
            timeout,
            trace,
        )
        .await
    }

    /// One Retrieve call bounded by `timeout`.
    pub async fn retrieve(
        &self,
        req: RetrieveRequest,
        timeout: Duration,
        trace: TraceContext,
    ) -> Result<RetrieveResponse, tonic::Status> {
        self.call(req, timeout, trace, |mut c, r| async move {
            c.retrieve(r).await
        })
        .await
    }

    /// One health check: the replica answers `Info` within `timeout`, is loaded, and has
    /// the layout the coordinator routes for. Ok is its post count.
    pub async fn check(&self, num_shards: u32, timeout: Duration) -> Result<u64, CheckError> {
        let mut client = self.client.clone();
        let mut req = tonic::Request::new(ShardInfoRequest {});
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.info(req)).await {
            Err(_) => Err(CheckError::Down(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => Err(CheckError::Down(e.message().to_string())),
            Ok(Ok(r)) => {
                let info = r.into_inner();
                if info.shard_index != self.index || info.num_shards != num_shards {
                    Err(CheckError::Layout(format!(
                        "shard list mismatch: {} is listed as shard {} of {num_shards}, but it is shard {} of {} (check the order of --shards and the shard's --shard-index/--num-shards)",
                        self.url, self.index, info.shard_index, info.num_shards
                    )))
                } else if !info.ready {
                    Err(CheckError::Down("still loading its partition".into()))
                } else {
                    Ok(info.posts)
                }
            }
        }
    }
}

/// A shard call (or batch) that ran out of time: DEADLINE_EXCEEDED, naming the replica.
pub(crate) fn late(index: u32, url: &str, timeout: Duration) -> tonic::Status {
    tonic::Status::deadline_exceeded(format!(
        "shard {index} at {url} did not answer within {timeout:?}"
    ))
}

/// One call to a replica bounded by `timeout` (sent to the shard as grpc-timeout too),
/// with the trace context in its metadata. Errors name the shard and replica; a timeout
/// is DEADLINE_EXCEEDED whichever timer saw it first.
async fn call_replica<Req, Resp, Fut>(
    index: u32,
    url: &str,
    req: Req,
    timeout: Duration,
    trace: TraceContext,
    send: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Result<Resp, tonic::Status>
where
    Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
{
    let mut request = tonic::Request::new(req);
    request.set_timeout(timeout);
    if let Ok(v) = trace.header().parse() {
        request
            .metadata_mut()
            .insert(shardrank_proto::trace::HEADER, v);
    }
    match tokio::time::timeout(timeout, send(request)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        // tonic's own client timer reports CANCELLED "Timeout expired": the same event.
        Ok(Err(s)) if s.code() == tonic::Code::Cancelled && s.message().contains("Timeout") => {
            Err(late(index, url, timeout))
        }
        Ok(Err(s)) => Err(tonic::Status::new(
            s.code(),
            format!("shard {index} at {url}: {}", s.message()),
        )),
        Err(_) => Err(late(index, url, timeout)),
    }
}

/// One Rank call, alone.
async fn rank_alone(
    mut grpc: tonic::client::Grpc<Channel>,
    index: u32,
    url: &str,
    req: SharedShardRankRequest,
    timeout: Duration,
    trace: TraceContext,
) -> Result<ShardRankResponse, tonic::Status> {
    call_replica(index, url, req, timeout, trace, |r| async move {
        shard_unary(&mut grpc, r).await
    })
    .await
}

/// Sends a replica's coalesced Rank calls as one batch, bounded by the latest of its
/// items' deadlines (each item carries its own budget to the shard): a message on the
/// replica's RankStream, or a RankBatch call. A replica that answers RankStream with
/// UNIMPLEMENTED gets RankBatch calls from then on; one that answers RankBatch so (a
/// binary from before it) gets this batch's items one by one, and the handle sends it
/// every later call alone.
struct RankBatchSender {
    index: u32,
    url: Arc<str>,
    grpc: tonic::client::Grpc<Channel>,
    /// None with streams off.
    stream: Option<Arc<BatchStream>>,
    no_batches: Arc<AtomicBool>,
}

impl SendBatch<RankItem, ShardRankResponse> for RankBatchSender {
    fn send(
        &self,
        items: Vec<(RankItem, Instant)>,
    ) -> impl Future<Output = Result<Vec<Result<ShardRankResponse, tonic::Status>>, tonic::Status>>
           + Send
           + 'static {
        let (index, url, mut grpc) = (self.index, self.url.clone(), self.grpc.clone());
        let no_batches = self.no_batches.clone();
        let stream = self.stream.clone();
        async move {
            let now = Instant::now();
            let budget = |d: Instant| {
                d.saturating_duration_since(now)
                    .max(Duration::from_micros(1))
            };
            let timeout = items
                .iter()
                .map(|&(_, d)| budget(d))
                .max()
                .unwrap_or_default();
            let batch = SharedShardRankBatch {
                items: Arc::new(
                    items
                        .into_iter()
                        .map(|((request, trace), d)| SharedBatchItem {
                            request,
                            timeout_us: budget(d).as_micros() as u64,
                            traceparent: trace.header(),
                        })
                        .collect(),
                ),
                sequence: 0,
            };
            let items = batch.items.clone();
            let streamed = match &stream {
                Some(s) if !s.disabled() => match s.send(batch.clone(), timeout).await {
                    Err(e) if e.code() == tonic::Code::Unimplemented => {
                        if !s.disable() {
                            tracing::warn!(shard = index, url = %url, "replica does not serve RankStream (an older binary?): batches go as RankBatch calls");
                        }
                        None
                    }
                    other => Some(other),
                },
                _ => None,
            };
            let res = match streamed {
                Some(res) => res,
                None => {
                    let g = &mut grpc;
                    call_replica(
                        index,
                        &url,
                        batch,
                        timeout,
                        TraceContext::new_root(),
                        move |r| async move { shard_unary(g, r).await },
                    )
                    .await
                }
            };
            let results = match res {
                Err(s) if s.code() == tonic::Code::Unimplemented => {
                    if !no_batches.swap(true, Ordering::Relaxed) {
                        tracing::warn!(shard = index, url = %url, "replica does not serve RankBatch (an older binary?): its calls go one by one");
                    }
                    let alone = items.iter().map(|item| {
                        let left = (now + Duration::from_micros(item.timeout_us))
                            .saturating_duration_since(Instant::now());
                        let trace = TraceContext::parse(&item.traceparent)
                            .unwrap_or_else(TraceContext::new_root);
                        rank_alone(grpc.clone(), index, &url, item.request.clone(), left, trace)
                    });
                    return Ok(futures_util::future::join_all(alone).await);
                }
                other => other?,
            };
            Ok(results
                .results
                .into_iter()
                .map(|r| match (tonic::Code::from_i32(r.code), r.response) {
                    (tonic::Code::Ok, Some(resp)) => Ok(resp),
                    (tonic::Code::Ok, None) => Err(tonic::Status::internal(format!(
                        "shard {index} at {url}: a batch result is OK without a response"
                    ))),
                    (code, _) => Err(tonic::Status::new(
                        code,
                        format!("shard {index} at {url}: {}", r.message),
                    )),
                })
                .collect())
        }
    }
}

/// Why a replica failed a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// Unreachable, slow or still loading: may pass later.
    Down(String),
    /// It serves another partition layout: a configuration error.
    Layout(String),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Down(e) | CheckError::Layout(e) => f.write_str(e),
        }
    }
}

impl ShardGroup {
    /// Start-up: waits until a replica of this shard is ready. A replica with another
    /// layout fails at once. Returns each replica's state (ready or not) and the
    /// partition's post count.
    pub async fn wait_ready(
        &self,
        num_shards: u32,
        deadline: tokio::time::Instant,
    ) -> Result<(Vec<bool>, u64), String> {
        loop {
            let results = futures_util::future::join_all(
                self.handles
                    .iter()
                    .map(|h| h.check(num_shards, Duration::from_secs(1))),
            )
            .await;
            let mut posts = None;
            let mut errors = Vec::new();
            for (h, r) in self.handles.iter().zip(&results) {
                match r {
                    Ok(p) => posts = Some(*p),
                    Err(CheckError::Layout(e)) => return Err(e.clone()),
                    Err(CheckError::Down(e)) => errors.push(format!("{}: {e}", h.url)),
                }
            }
            if let Some(posts) = posts {
                return Ok((results.iter().map(Result::is_ok).collect(), posts));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "shard {}: no replica was ready in time ({})",
                    self.index,
                    errors.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Checks every replica of `group` every `interval`, for ever: a failed check ejects a
/// replica, a passing one (after its back-off) brings it back.
pub async fn health_loop(group: ShardGroup, num_shards: u32, interval: Duration) {
    let timeout = (interval / 2).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Vec<Option<CheckError>> = vec![None; group.handles.len()];
    loop {
        tick.tick().await;
        let checks = group.handles.iter().map(|h| h.check(num_shards, timeout));
        let results = futures_util::future::join_all(checks).await;
        for (i, res) in results.into_iter().enumerate() {
            group.set.health(i, res.is_ok());
            // Log a failing replica once per distinct reason, not every interval.
            let err = res.err();
            if err.is_some() && err != last_error[i] {
                if let Some(e) = &err {
                    tracing::warn!(shard = group.index, replica = i, url = %group.handles[i].url, error = %e, "replica health check failed");
                }
            }
            last_error[i] = err;
        }
    }
}
