//! Builds the partition from the start-up event source. Live streams (Kafka, the live
//! generator) feed the same `PostStore::apply`.

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
