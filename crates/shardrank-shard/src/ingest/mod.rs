//! Builds the partition from the start-up event source (or its snapshot), then keeps it
//! current from a live stream through the same `PostStore::apply`: the built-in
//! generator ([`live`]) or Kafka ([`kafka`]).

pub mod kafka;
pub mod live;

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

/// What start-up produced: the store, what the source read skipped, and where the live
/// stream resumes.
pub struct Loaded {
    pub store: PostStore,
    pub report: ReadReport,
    pub live_position: u64,
    /// Kafka positions the store reflects (from its snapshot).
    pub kafka: Vec<(String, i32, i64)>,
    /// Loaded from a snapshot rather than rebuilt from the source.
    pub restored: bool,
}

/// The partition from its snapshot in `snapshot_dir` if there is a usable one (same
/// layout, same source, intact), else rebuilt from `source` and snapshotted for the next
/// start. An unusable snapshot is logged and rebuilt over, never fatal.
pub fn load_or_restore(
    source: &Source,
    index: u32,
    num_shards: u32,
    light: LightModel,
    snapshot_dir: Option<&std::path::Path>,
) -> Result<Loaded, EventError> {
    let file = snapshot_dir.map(|d| crate::store::snapshot_path(d, index, num_shards));
    if let Some(f) = &file {
        match PostStore::read_snapshot(f, index, num_shards, &source.describe(), light.clone()) {
            Ok((store, meta)) => {
                return Ok(Loaded {
                    store,
                    report: ReadReport::default(),
                    live_position: meta.live_position,
                    kafka: meta.kafka,
                    restored: true,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(file = %f.display(), "no snapshot yet: building from the source");
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "snapshot unusable: rebuilding from the source");
            }
        }
    }
    let (store, report) = load(source, index, num_shards, light)?;
    // Nothing to keep of an empty start (Kafka alone): the catch-up snapshots.
    if let (Some(f), false) = (&file, matches!(source, Source::Empty)) {
        write_snapshot(&store, f, source, 0, Vec::new());
    }
    Ok(Loaded {
        store,
        report,
        live_position: 0,
        kafka: Vec::new(),
        restored: false,
    })
}

/// Writes a snapshot; a failure is logged (the shard serves on without it). Returns
/// whether it was written.
pub fn write_snapshot(
    store: &PostStore,
    file: &std::path::Path,
    source: &Source,
    live_position: u64,
    kafka: Vec<(String, i32, i64)>,
) -> bool {
    let t0 = std::time::Instant::now();
    let meta = crate::store::SnapshotMeta {
        source: source.describe(),
        live_position,
        kafka,
    };
    match store.write_snapshot(file, &meta) {
        Ok(()) => tracing::info!(
            file = %file.display(),
            posts = store.len(),
            live_position,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "snapshot written"
        ),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "writing the snapshot failed");
            return false;
        }
    }
    true
}

/// Where and how often a live loop snapshots the store.
#[derive(Clone)]
pub struct LiveSnapshots {
    pub dir: std::path::PathBuf,
    pub every: std::time::Duration,
    pub source: Source,
}

/// Seconds since the Unix epoch, for the last-snapshot metric.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Publishes what the store holds after live events were applied.
pub fn publish(
    m: &crate::metrics::ShardMetrics,
    store: &PostStore,
    events: &[shardrank_core::events::Event],
) {
    use crate::metrics::EventType;
    for e in events {
        m.events_applied
            .get_or_create(&EventType {
                r#type: e.type_name(),
            })
            .inc();
    }
    m.posts.set(store.len() as i64);
    m.post_bytes.set(store.post_bytes() as i64);
    m.watermark_seconds.set(store.watermark_ms as f64 / 1e3);
    m.duplicate_posts.set(store.stats.duplicate_posts as i64);
    m.late_events.set(store.stats.late_engagements as i64);
    m.events_misrouted.set(store.stats.misrouted as i64);
}
