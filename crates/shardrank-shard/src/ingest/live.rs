//! The built-in live generator as a stream: the demo's moving data, no outside service.

use super::{publish, unix_now, write_snapshot, LiveSnapshots};

/// Applies the built-in live stream to the loaded store, for ever: every 10 ms the events
/// due by then, in one short write-locked batch (requests wait at most that long). It
/// resumes at the position the store was restored at, and snapshots it now and then.
pub async fn run_live(
    state: std::sync::Arc<crate::service::ShardState>,
    spec: shardrank_core::corpus::CorpusSpec,
    rate: f64,
    snapshots: Option<LiveSnapshots>,
) {
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
                let written = tokio::task::block_in_place(|| {
                    let st = store.read().unwrap_or_else(|p| p.into_inner());
                    write_snapshot(&st, &file, &s.source, position, Vec::new())
                });
                if written {
                    state.metrics.last_snapshot_seconds.set(unix_now());
                }
            }
        }
        let first = generator.generated();
        let events = generator.take_due(start.elapsed().as_secs_f64(), 50_000);
        if events.is_empty() {
            continue;
        }
        {
            let mut st = store.write().unwrap_or_else(|p| p.into_inner());
            for e in &events {
                st.apply(e);
            }
            publish(&state.metrics, &st, &events);
        }
        // Event i of the stream is due at (i + 1) / rate seconds after the start.
        let applied = start.elapsed().as_secs_f64();
        for i in first..first + events.len() as u64 {
            let due = (i + 1) as f64 / rate;
            state.metrics.ingest_delay.observe((applied - due).max(0.0));
        }
    }
}
