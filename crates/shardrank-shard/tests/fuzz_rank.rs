//! Property tests of a shard's request handling, through the real gRPC handler
//! in-process: any request (ids known or not, repeated, any slice, any user context,
//! NaN weights, bad languages, another layout) gets an answer that keeps the contract
//! or a clear status, never a panic. Cases that once failed are kept by proptest in
//! `proptest-regressions/`.

use proptest::prelude::*;
use shardrank_core::corpus::{CorpusSpec, CORPUS_END_MS};
use shardrank_core::model::Models;
use shardrank_core::source::Source;
use shardrank_proto::v1::shard_server::Shard;
use shardrank_proto::v1::{ShardRankRequest, UserContext};
use shardrank_shard::metrics::ShardMetrics;
use shardrank_shard::service::{ShardService, ShardState};
use std::sync::{Arc, OnceLock, RwLock};

const N: u32 = 2;

/// Shard 0 of 2 on the tiny corpus, built once.
fn service() -> &'static (ShardService, Vec<u64>) {
    static S: OnceLock<(ShardService, Vec<u64>)> = OnceLock::new();
    S.get_or_init(|| {
        let models = Models::builtin();
        let source = Source::Corpus(CorpusSpec::named("tiny", 42).unwrap());
        let (store, _) =
            shardrank_shard::ingest::load(&source, 0, N, models.light.clone()).unwrap();
        let ids: Vec<u64> = store.ids().collect();
        let mut registry = prometheus_client::registry::Registry::default();
        let state = ShardState {
            metrics: ShardMetrics::register(&mut registry),
            index: 0,
            num_shards: N,
            models,
            source: "tiny".into(),
            store: OnceLock::new(),
            live_position: Default::default(),
        };
        let _ = state.store.set(RwLock::new(store));
        (ShardService::new(Arc::new(state)), ids)
    })
}

fn user() -> impl Strategy<Value = UserContext> {
    (
        any::<bool>(),
        prop_oneof![Just(String::new()), Just("en".to_string()), ".{0,4}"],
        prop::collection::vec(any::<u64>(), 0..20),
        prop::collection::vec(any::<u64>(), 0..20),
        prop::collection::vec((any::<u32>(), any::<f32>()), 0..10),
        0usize..3,
    )
        .prop_map(
            |(known, lang, followees, excluded, interests, skew)| UserContext {
                user_id: 1,
                known,
                lang,
                followees,
                excluded_authors: excluded,
                // A malformed context (arrays of different lengths) now and then.
                interest_clusters: interests.iter().map(|p| p.0).skip(skew / 2).collect(),
                interest_weights: interests.iter().map(|p| p.1).collect(),
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_request_is_answered_within_the_contract_or_refused(
        picks in prop::collection::vec(any::<prop::sample::Index>(), 0..400),
        strangers in prop::collection::vec(any::<u64>(), 0..50),
        skip in prop_oneof![0u32..50, any::<u32>()],
        count in prop_oneof![0u32..500, any::<u32>()],
        layout in prop_oneof![4 => Just((0u32, N)), 1 => (any::<u32>(), any::<u32>())],
        user in prop::option::of(user()),
        now_ms in prop_oneof![Just(CORPUS_END_MS), any::<i64>()],
        light_only in any::<bool>(),
    ) {
        let (svc, known) = service();
        let mut ids: Vec<u64> = picks.iter().map(|i| known[i.index(known.len())]).collect();
        ids.extend(&strangers);
        let req = ShardRankRequest {
            shard_index: layout.0,
            num_shards: layout.1,
            user,
            candidate_ids: ids.clone(),
            now_ms,
            heavy_skip: skip,
            heavy_count: count,
            light_only,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(svc.rank(tonic::Request::new(req))) {
            Ok(resp) => {
                let r = resp.into_inner();
                let n = r.ids.len();
                prop_assert_eq!(r.author_ids.len(), n);
                prop_assert_eq!(r.light_scores.len(), n);
                if light_only {
                    prop_assert!(r.heavy_scores.is_empty());
                    prop_assert_eq!(r.langs.len(), n);
                } else {
                    prop_assert_eq!(r.heavy_scores.len(), n);
                    prop_assert!(r.langs.is_empty());
                }
                prop_assert!(n <= count as usize);
                let mut distinct = ids.clone();
                distinct.sort_unstable();
                distinct.dedup();
                prop_assert!((r.eligible + r.unknown + r.excluded) as usize <= distinct.len());
                prop_assert!(n <= (r.eligible as usize).saturating_sub(skip as usize));
                // The slice is in the local light order: score descending, id ascending.
                for w in 0..n.saturating_sub(1) {
                    let (a, b) = ((r.light_scores[w], r.ids[w]), (r.light_scores[w + 1], r.ids[w + 1]));
                    prop_assert!(a.0 > b.0 || (a.0 == b.0 && a.1 < b.1) || a.0.is_nan() || b.0.is_nan(), "{:?} then {:?}", a, b);
                }
                for id in &r.ids {
                    prop_assert!(ids.contains(id));
                }
            }
            Err(status) => {
                prop_assert!(matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ), "{:?}", status);
                prop_assert!(!status.message().is_empty());
            }
        }
    }
}
