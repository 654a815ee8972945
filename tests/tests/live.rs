//! The built-in live stream (`--live-events-per-sec`): the shards and the coordinator
//! apply the same events after the corpus' end, so new posts become rankable within
//! moments, the event-time clock moves, and the counts show in the metrics.

use shardrank_core::corpus::{CorpusSpec, CORPUS_END_MS};
use shardrank_core::events::Event;
use shardrank_core::live::{is_live_post, LiveGenerator};
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{RankRequest, ShardInfoRequest};
use shardrank_tests::{channel, http_get, metric, Cluster};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_posts_become_rankable_and_the_clock_moves() {
    const RATE: f64 = 500.0;
    let c = Cluster::start(2, &["--corpus", "tiny", "--live-events-per-sec", "500"]).await;
    // The first 300 events of the stream, as every process generates them.
    let spec = CorpusSpec::named("tiny", 42).unwrap();
    let mut g = LiveGenerator::new(&spec, RATE);
    let live_posts: Vec<u64> = (0..300)
        .filter_map(|_| match g.next_event() {
            Event::NewTweet(t) => Some(t.id),
            _ => None,
        })
        .collect();
    assert!(live_posts.len() > 30 && live_posts.iter().all(|&id| is_live_post(id)));

    // 300 events at 500/s: applied within about 0.6 s of start-up; allow a margin.
    let t0 = Instant::now();
    let mut client = c.client().await;
    let r = loop {
        let r = client
            .rank(RankRequest {
                user_id: spec.user_id(3),
                candidate_ids: live_posts.clone(),
                top_k: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if r.unknown_candidates == 0 {
            break r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "live posts not rankable: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.candidates.len(), 10);
    assert!(r.candidates.iter().all(|x| live_posts.contains(&x.id)));

    for (i, url) in c.shard_urls.iter().enumerate() {
        let info = ShardClient::new(channel(url).await)
            .info(ShardInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            info.watermark_ms >= CORPUS_END_MS + 600,
            "shard {i}'s clock moved with the stream: {}",
            info.watermark_ms - CORPUS_END_MS
        );
        let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[i])).await;
        let posts = metric(
            &m,
            "shardrank_shard_events_applied_total{type=\"new_tweet\"}",
        );
        assert!(posts.unwrap_or(0.0) >= live_posts.len() as f64, "{m}");
    }
    let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
    assert!(
        metric(
            &m,
            "shardrank_coordinator_events_applied_total{type=\"follow\"}"
        )
        .unwrap_or(0.0)
            > 0.0
    );
    assert!(
        metric(&m, "shardrank_coordinator_watermark_seconds").unwrap() * 1e3
            >= (CORPUS_END_MS + 600) as f64
    );
}
