//! Builds the partition from the start-up event source, then keeps it current from the
//! live stream (the built-in generator now; Kafka with the ingestion work) through the
//! same `PostStore::apply`.

use crate::store::{PostStore, APPLY_BATCH};
use shardrank_core::events::{EventError, ReadReport};
use shardrank_core::model::LightModel;
use shardrank_core::source::Source;

/// Loads a new store for partition `index` of `num_shards` from `source`, with the
/// report of what was read (and which malformed lines were skipped).
pub fn load(
    source: &Source,
    index: u32,
    num_shards: u32,
    light: LightModel,
) -> Result<(PostStore, ReadReport), EventError> {
    let mut store = PostStore::new(index, num_shards, light);
    store.begin_load();
    if let Some(tweets) = source.expected_tweets() {
        // An even md5 spread plus slack, so the columns are allocated once.
        store.reserve(
            (tweets / num_shards as u64 + tweets / (20 * num_shards as u64) + 64) as usize,
        );
    }
    // Applied in batches (routing in MD5 lanes, index slots prefetched), in order.
    let mut batch = Vec::with_capacity(APPLY_BATCH);
    let report = source.for_each(|e| {
        batch.push(e);
        if batch.len() == APPLY_BATCH {
            store.apply_batch(&batch);
            batch.clear();
        }
    })?;
    store.apply_batch(&batch);
    store.finish_load();
    Ok((store, report))
}

/// Applies the built-in live stream to the loaded store, for ever: every 10 ms the events
/// due by then, in one short write-locked batch (requests wait at most that long).
pub async fn run_live(
    state: std::sync::Arc<crate::service::ShardState>,
    spec: shardrank_core::corpus::CorpusSpec,
    rate: f64,
) {
    use crate::metrics::EventType;
    let mut generator = shardrank_core::live::LiveGenerator::new(&spec, rate);
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = state.store.get() else {
            continue;
        };
        let events = generator.take_due(start.elapsed().as_secs_f64(), 50_000);
        if events.is_empty() {
            continue;
        }
        let (posts, watermark) = {
            let mut st = store.write().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                st.apply(e);
            }
            (st.len(), st.watermark_ms)
        };
        let m = &state.metrics;
        for e in &events {
            m.events_applied
                .get_or_create(&EventType {
                    r#type: e.type_name(),
                })
                .inc();
        }
        m.posts.set(posts as i64);
        m.watermark_seconds.set(watermark as f64 / 1e3);
    }
}
