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

/// What start-up produced: the store, what the source read skipped, and where the live
/// stream resumes.
pub struct Loaded {
    pub store: PostStore,
    pub report: ReadReport,
    pub live_position: u64,
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
    if let Some(f) = &file {
        write_snapshot(&store, f, source, 0);
    }
    Ok(Loaded {
        store,
        report,
        live_position: 0,
        restored: false,
    })
}

/// Writes a snapshot; a failure is logged (the shard serves on without it).
pub fn write_snapshot(
    store: &PostStore,
    file: &std::path::Path,
    source: &Source,
    live_position: u64,
) {
    let t0 = std::time::Instant::now();
    let meta = crate::store::SnapshotMeta {
        source: source.describe(),
        live_position,
        kafka: Vec::new(),
    };
    match store.write_snapshot(file, &meta) {
        Ok(()) => tracing::info!(
            file = %file.display(),
            posts = store.len(),
            live_position,
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "snapshot written"
        ),
        Err(e) => tracing::warn!(file = %file.display(), error = %e, "writing the snapshot failed"),
    }
}

/// Where and how often the live loop snapshots the store.
pub struct LiveSnapshots {
    pub dir: std::path::PathBuf,
    pub every: std::time::Duration,
    pub source: Source,
}

/// Applies the built-in live stream to the loaded store, for ever: every 10 ms the events
/// due by then, in one short write-locked batch (requests wait at most that long). It
/// resumes at the position the store was restored at, and snapshots it now and then.
pub async fn run_live(
    state: std::sync::Arc<crate::service::ShardState>,
    spec: shardrank_core::corpus::CorpusSpec,
    rate: f64,
    snapshots: Option<LiveSnapshots>,
) {
    use crate::metrics::EventType;
    let mut generator = shardrank_core::live::LiveGenerator::new(&spec, rate);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Waits for the partition, then replays the stream up to the restored position
    // (regenerated, not re-applied: the snapshot holds their effect).
    let store = loop {
        tick.tick().await;
        if let Some(s) = state.store.get() {
            break s;
        }
    };
    let resume = state
        .live_position
        .load(std::sync::atomic::Ordering::Acquire);
    for _ in 0..resume {
        generator.next_event();
    }
    let start =
        tokio::time::Instant::now() - std::time::Duration::from_secs_f64(resume as f64 / rate);
    let mut last_snapshot = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if let Some(s) = &snapshots {
            if last_snapshot.elapsed() >= s.every {
                last_snapshot = tokio::time::Instant::now();
                let file = crate::store::snapshot_path(&s.dir, state.index, state.num_shards);
                let position = generator.generated();
                // Under the read lock, so the file is the store at exactly `position`.
                tokio::task::block_in_place(|| {
                    let st = store.read().unwrap_or_else(|p| p.into_inner());
                    write_snapshot(&st, &file, &s.source, position);
                });
            }
        }
        let events = generator.take_due(start.elapsed().as_secs_f64(), 50_000);
        if events.is_empty() {
            continue;
        }
        let (posts, watermark, duplicates, late) = {
            let mut st = store.write().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                st.apply(e);
            }
            let s = &st.stats;
            (
                st.len(),
                st.watermark_ms,
                s.duplicate_posts,
                s.late_engagements,
            )
        };
        state.metrics.duplicate_posts.set(duplicates as i64);
        state.metrics.late_events.set(late as i64);
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
