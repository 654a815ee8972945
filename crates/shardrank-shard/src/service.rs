//! The gRPC face of a shard: checks that a request was routed for this partition
//! layout, then runs [`crate::rank`] off the async runtime.

use crate::error::ShardError;
use crate::metrics::{Code, Stage};
use crate::rank::{rank, RankParams, RequestUser};
use crate::retrieve::{retrieve, Params, Source};
use crate::store::PostStore;
use shardrank_core::features::UserView;
use shardrank_core::lang;
use shardrank_core::model::Models;
use shardrank_proto::admission::Admission;
use shardrank_proto::codec::RANK_STREAM_PATH;
use shardrank_proto::serving::Shutdown;
use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::shard_server::Shard;
use shardrank_proto::v1::{
    CandidateSource, RetrieveRequest, RetrieveResponse, ShardInfoRequest, ShardInfoResponse,
    ShardRankBatchItem, ShardRankBatchRequest, ShardRankBatchResponse, ShardRankBatchResult,
    ShardRankRequest, ShardRankResponse, UserContext,
};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Everything a request reads. The store is set once loaded; live ingestion takes the
/// write lock briefly to apply a batch.
pub struct ShardState {
    pub metrics: crate::metrics::ShardMetrics,
    pub index: u32,
    pub num_shards: u32,
    pub models: Models,
    pub source: String,
    pub store: OnceLock<RwLock<PostStore>>,
    /// Live-stream events the store held when it was loaded (from a snapshot).
    pub live_position: std::sync::atomic::AtomicU64,
}

/// Requests up to this many candidates are ranked on the async worker itself.
const INLINE_CANDIDATES: usize = crate::rank::CHUNK;

#[derive(Clone)]
pub struct ShardService {
    pub state: Arc<ShardState>,
    /// The server's load shedding, for RankStream: the layer admits whole calls, and a
    /// stream's batches are requests of their own, admitted one by one. None: no limit.
    pub admission: Option<Admission>,
    /// Open RankStreams stop taking batches when the shard drains, so that their senders
    /// go elsewhere rather than keep the drain waiting. None: never.
    pub shutdown: Option<Shutdown>,
}

impl ShardService {
    /// A service over `state`, with no stream admission or drain (tests, embedding).
    pub fn new(state: Arc<ShardState>) -> Self {
        ShardService {
            state,
            admission: None,
            shutdown: None,
        }
    }
}

fn user_view(ctx: &UserContext) -> Result<UserView, ShardError> {
    if ctx.interest_clusters.len() != ctx.interest_weights.len() {
        return Err(ShardError::InvalidArgument(format!(
            "user context has {} interest clusters but {} weights",
            ctx.interest_clusters.len(),
            ctx.interest_weights.len()
        )));
    }
    let lang = lang::parse(&ctx.lang)
        .map_err(|e| ShardError::InvalidArgument(format!("user context: {e}")))?;
    let mut interests: Vec<(u32, f32)> = ctx
        .interest_clusters
        .iter()
        .copied()
        .zip(ctx.interest_weights.iter().copied())
        .collect();
    interests.sort_unstable_by_key(|&(c, _)| c);
    Ok(UserView {
        known: ctx.known,
        lang,
        interests,
    })
}

impl ShardService {
    fn check_layout(&self, index: u32, shards: u32) -> Result<(), ShardError> {
        if index != self.state.index || shards != self.state.num_shards {
            return Err(ShardError::Layout {
                got_index: index,
                got_shards: shards,
                index: self.state.index,
                num_shards: self.state.num_shards,
            });
        }
        Ok(())
    }
}

/// Counts a request's outcome under its gRPC code.
fn count_by_code<T>(
    family: &prometheus_client::metrics::family::Family<
        Code,
        prometheus_client::metrics::counter::Counter,
    >,
    res: &Result<T, ShardError>,
) {
    let code = shardrank_proto::admin::code_label(
        res.as_ref()
            .map_or_else(|e| e.grpc_code(), |_| tonic::Code::Ok),
    );
    family.get_or_create(&Code { code }).inc();
}

#[tonic::async_trait]
impl Shard for ShardService {
    async fn rank(
        &self,
        request: Request<ShardRankRequest>,
    ) -> Result<Response<ShardRankResponse>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let deadline = shardrank_proto::serving::request_timeout(request.metadata())
            .map(|t| (Instant::now() + t, t));
        self.rank_one(request.into_inner(), trace, deadline)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    async fn rank_batch(
        &self,
        request: Request<ShardRankBatchRequest>,
    ) -> Result<Response<ShardRankBatchResponse>, Status> {
        let now = Instant::now();
        let items = request.into_inner().items;
        check_batch_size(items.len())?;
        let results = self.rank_items(items, now).await;
        Ok(Response::new(ShardRankBatchResponse {
            results,
            sequence: 0,
        }))
    }

    type RankStreamStream =
        Pin<Box<dyn Stream<Item = Result<ShardRankBatchResponse, Status>> + Send + 'static>>;

    async fn rank_stream(
        &self,
        request: Request<Streaming<ShardRankBatchRequest>>,
    ) -> Result<Response<Self::RankStreamStream>, Status> {
        let batches = request.into_inner();
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(self.clone().serve_stream(batches, tx));
        let answers = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(answers)))
    }

    async fn retrieve(
        &self,
        request: Request<RetrieveRequest>,
    ) -> Result<Response<RetrieveResponse>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let span = shardrank_proto::request_span!("shard_retrieve", trace_id = %trace.trace_hex(), shard = self.state.index);
        shardrank_proto::otlp::link(&span, &trace);
        let res = self
            .retrieve_inner(request.into_inner())
            .instrument(span.clone())
            .await;
        if let Err(e) = &res {
            span.in_scope(
                || tracing::info!(trace_id = %trace.trace_hex(), error = %e, "retrieve refused"),
            );
        }
        count_by_code(&self.state.metrics.retrieve_requests, &res);
        res.map(Response::new).map_err(Status::from)
    }

    async fn info(
        &self,
        _: Request<ShardInfoRequest>,
    ) -> Result<Response<ShardInfoResponse>, Status> {
        let s = &self.state;
        let (posts, watermark_ms) = match s.store.get() {
            Some(store) => {
                let st = store.read().unwrap_or_else(|p| p.into_inner());
                (st.len() as u64, st.watermark_ms)
            }
            None => (0, 0),
        };
        Ok(Response::new(ShardInfoResponse {
            shard_index: s.index,
            num_shards: s.num_shards,
            posts,
            watermark_ms,
            ready: s.store.get().is_some(),
            corpus: s.source.clone(),
        }))
    }
}

/// Most items in one RankBatch call (the coordinator sends at most its
/// `--shard-batch-max-items`).
pub const MAX_BATCH_ITEMS: usize = 1024;

fn check_batch_size(items: usize) -> Result<(), Status> {
    if items > MAX_BATCH_ITEMS {
        return Err(Status::invalid_argument(format!(
            "a batch of {items} items: at most {MAX_BATCH_ITEMS}"
        )));
    }
    Ok(())
}

/// Every item of a batch failed with `status` (a batch refused whole on a stream).
fn all_failed(items: usize, status: &Status) -> Vec<ShardRankBatchResult> {
    let result = ShardRankBatchResult {
        code: status.code() as i32,
        message: status.message().to_string(),
        response: None,
    };
    vec![result; items]
}

type Answers = mpsc::UnboundedSender<Result<ShardRankBatchResponse, Status>>;

/// A RankStream counted in the open-streams gauge while it lives.
struct OpenStream<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> OpenStream<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenStream(gauge)
    }
}

impl Drop for OpenStream<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl ShardService {
    /// One RankStream: each batch read is admitted, ranked as RankBatch ranks it (a task
    /// of its own, so that batches overlap as calls would) and answered with its
    /// sequence. The answers end when the sender closes its side and the last batch is
    /// answered, at the first message that does not parse (with its status), or, when
    /// the shard drains, once the batches already read are answered.
    async fn serve_stream(self, mut batches: Streaming<ShardRankBatchRequest>, tx: Answers) {
        let metrics = &self.state.metrics;
        let _open = OpenStream::count(&metrics.rank_streams);
        let drained = async {
            match &self.shutdown {
                Some(s) => s.requested().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(drained);
        loop {
            let batch = tokio::select! {
                biased;
                _ = &mut drained => return,
                b = batches.message() => b,
            };
            let batch = match batch {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(status) => {
                    let _ = tx.send(Err(status));
                    return;
                }
            };
            metrics.rank_stream_batches.inc();
            let now = Instant::now();
            let admitted = check_batch_size(batch.items.len()).and_then(|()| {
                self.admission
                    .as_ref()
                    .map(|a| a.try_admit(RANK_STREAM_PATH))
                    .transpose()
            });
            let (me, tx) = (self.clone(), tx.clone());
            tokio::spawn(async move {
                let results = match admitted {
                    Ok(permit) => {
                        let results = me.rank_items(batch.items, now).await;
                        drop(permit);
                        results
                    }
                    // Counted as a refused RankBatch call is: once, by the admission.
                    Err(status) => all_failed(batch.items.len(), &status),
                };
                let _ = tx.send(Ok(ShardRankBatchResponse {
                    results,
                    sequence: batch.sequence,
                }));
            });
        }
    }

    /// A batch's items, each as Rank would rank it, as a task of its own: the items
    /// spread over the async workers as separate calls would (the first one runs here).
    /// Results in the items' order.
    async fn rank_items(
        &self,
        items: Vec<ShardRankBatchItem>,
        now: Instant,
    ) -> Vec<ShardRankBatchResult> {
        let mut ranked = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let me = self.clone();
            let one = async move {
                let Some(req) = item.request else {
                    let res = Err(ShardError::InvalidArgument(format!(
                        "batch item {i} has no request"
                    )));
                    count_by_code(&me.state.metrics.requests, &res);
                    return res;
                };
                let trace =
                    TraceContext::parse(&item.traceparent).unwrap_or_else(TraceContext::new_root);
                let deadline = (item.timeout_us > 0).then(|| {
                    let t = std::time::Duration::from_micros(item.timeout_us);
                    (now + t, t)
                });
                me.rank_one(req, trace, deadline).await
            };
            ranked.push(if i == 0 {
                futures_util::future::Either::Left(one)
            } else {
                let task = tokio::spawn(one);
                futures_util::future::Either::Right(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(ShardError::Internal(format!("batch item {i} failed: {e}")))
                    })
                })
            });
        }
        futures_util::future::join_all(ranked)
            .await
            .into_iter()
            .map(|res| match res {
                Ok(r) => ShardRankBatchResult {
                    code: 0,
                    message: String::new(),
                    response: Some(r),
                },
                Err(e) => {
                    let status = Status::from(e);
                    ShardRankBatchResult {
                        code: status.code() as i32,
                        message: status.message().to_string(),
                        response: None,
                    }
                }
            })
            .collect()
    }

    /// One Rank request, in its own span, counted under its outcome.
    async fn rank_one(
        &self,
        req: ShardRankRequest,
        trace: TraceContext,
        deadline: Option<(Instant, std::time::Duration)>,
    ) -> Result<ShardRankResponse, ShardError> {
        let span = shardrank_proto::request_span!("shard_rank", trace_id = %trace.trace_hex(), shard = self.state.index);
        shardrank_proto::otlp::link(&span, &trace);
        let res = self
            .rank_inner(req, deadline, &trace)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match &res {
            Ok(r) => tracing::debug!(
                candidates = r.eligible,
                heavy = r.ids.len(),
                ms = r.total_ms,
                "ranked"
            ),
            Err(e) => tracing::info!(trace_id = %trace.trace_hex(), error = %e, "rank refused"),
        });
        count_by_code(&self.state.metrics.requests, &res);
        res
    }

    async fn retrieve_inner(
        &self,
        mut req: RetrieveRequest,
    ) -> Result<RetrieveResponse, ShardError> {
        self.check_layout(req.shard_index, req.num_shards)?;
        if self.state.store.get().is_none() {
            return Err(ShardError::Loading {
                index: self.state.index,
            });
        }
        let source = match CandidateSource::try_from(req.source) {
            Ok(CandidateSource::InNetwork) => Source::InNetwork,
            Ok(CandidateSource::OutOfNetwork) => Source::OutOfNetwork,
            Ok(CandidateSource::Trending) => Source::Trending,
            _ => {
                return Err(ShardError::InvalidArgument(format!(
                    "unknown candidate source {}",
                    req.source
                )))
            }
        };
        const MAX_LIMIT: u32 = 100_000;
        if req.limit > MAX_LIMIT {
            return Err(ShardError::InvalidArgument(format!(
                "limit {} is above {MAX_LIMIT}",
                req.limit
            )));
        }
        let ctx = req.user.take().unwrap_or_default();
        let view = user_view(&ctx)?;
        let state = self.state.clone();
        // A scan of the recent rows: milliseconds at most, off the async workers.
        tokio::task::spawn_blocking(move || {
            let store = state
                .store
                .get()
                .expect("checked above")
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let user = RequestUser::new(&store, view, &ctx.followees, &ctx.excluded_authors);
            let (found, scanned) = retrieve(
                &store,
                &Params {
                    source,
                    user: &user,
                    since_ms: req.since_ms,
                    now_ms: req.now_ms,
                    limit: req.limit as usize,
                },
            );
            RetrieveResponse {
                ids: found.iter().map(|f| f.id).collect(),
                author_ids: found
                    .iter()
                    .map(|f| store.authors.ids[store.author(f.row) as usize])
                    .collect(),
                scores: found.iter().map(|f| f.score).collect(),
                scanned: scanned as u32,
            }
        })
        .await
        .map_err(|e| ShardError::Internal(format!("retrieval task failed: {e}")))
    }

    async fn rank_inner(
        &self,
        mut req: ShardRankRequest,
        deadline: Option<(Instant, std::time::Duration)>,
        trace: &TraceContext,
    ) -> Result<ShardRankResponse, ShardError> {
        let t0 = Instant::now();
        self.check_layout(req.shard_index, req.num_shards)?;
        if self.state.store.get().is_none() {
            return Err(ShardError::Loading {
                index: self.state.index,
            });
        }
        // Waited too long for a thread (the caller has given up): no work for nobody.
        if let Some((at, budget)) = deadline {
            if Instant::now() >= at {
                return Err(ShardError::DeadlineExceeded(format!(
                    "budget {budget:?}, spent before the handler ran"
                )));
            }
        }
        let candidates = req.candidate_ids.len();
        let ctx = req.user.take().unwrap_or_default();
        let req_count = req.heavy_count;
        let view = user_view(&ctx)?;
        let state = self.state.clone();
        let work = move || {
            let store = state
                .store
                .get()
                .expect("checked above")
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let user = RequestUser::new(&store, view, &ctx.followees, &ctx.excluded_authors);
            let params = RankParams {
                ids: &req.candidate_ids,
                now_ms: req.now_ms,
                skip: req.heavy_skip as usize,
                count: req.heavy_count as usize,
                deadline: deadline.map(|(at, _)| at),
                light_only: req.light_only,
            };
            let out = rank(&store, &state.models.heavy, &user, &params);
            let authors: Vec<u64> = out
                .items
                .iter()
                .map(|(c, _)| store.authors.ids[store.author(c.row) as usize])
                .collect();
            let langs: Vec<u32> = if req.light_only {
                out.items
                    .iter()
                    .map(|(c, _)| store.hot[c.row as usize].lang as u32)
                    .collect()
            } else {
                Vec::new()
            };
            (out, authors, langs)
        };
        // A small request ranks in well under a millisecond: running it here saves two
        // thread hand-offs. A large one goes to the blocking pool (and from there to
        // all cores), so it never holds an async worker for long.
        let out = if candidates <= INLINE_CANDIDATES {
            work()
        } else {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| ShardError::Internal(format!("ranking task failed: {e}")))?
        };
        let (out, author_ids, langs) = out;
        let m = &self.state.metrics;
        if out.truncated {
            m.truncated.inc();
            tracing::info!(
                trace_id = %trace.trace_hex(),
                scored = out.items.len(),
                asked = req_count,
                "deadline reached in the heavy stage: answering with what was scored"
            );
        }
        m.candidates
            .get_or_create(&Stage { stage: "light" })
            .inc_by(out.eligible as u64);
        m.candidates
            .get_or_create(&Stage { stage: "heavy" })
            .inc_by(out.items.len() as u64);
        m.stage_seconds
            .get_or_create(&Stage { stage: "light" })
            .observe(out.light_ms / 1e3);
        m.stage_seconds
            .get_or_create(&Stage { stage: "heavy" })
            .observe(out.heavy_ms / 1e3);
        Ok(ShardRankResponse {
            ids: out.items.iter().map(|(c, _)| c.id).collect(),
            author_ids,
            light_scores: out.items.iter().map(|(c, _)| c.light).collect(),
            heavy_scores: if langs.is_empty() {
                out.items.iter().map(|&(_, h)| h).collect()
            } else {
                Vec::new()
            },
            langs,
            eligible: out.eligible as u32,
            unknown: out.unknown as u32,
            excluded: out.excluded as u32,
            light_ms: out.light_ms,
            heavy_ms: out.heavy_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
            truncated: out.truncated,
        })
    }
}
