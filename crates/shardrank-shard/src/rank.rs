//! Ranks one request on this shard.
//!
//! 1. Look up each candidate (a repeated id counts once: a bitset over rows), drop
//!    unknown ids and posts by excluded authors, light-score the rest. Large requests
//!    are split into chunks scored on all cores, each keeping only its local top list
//!    (map), which are then merged (reduce): no full sort of all candidates.
//! 2. Take the slice `[skip, skip + count)` of the local light order and heavy-score it
//!    in one batch.
//!
//! The coordinator chooses the slice (see its `placement` and `merge`) so that the
//! union of the shards' slices holds the global top H by light score.

use crate::index::prefetch;
use crate::store::PostStore;
use rayon::prelude::*;
use shardrank_core::features::{extract, light_parts, UserView, NUM_FEATURES};
use shardrank_core::model::heavy::Scratch;
use shardrank_core::model::HeavyModel;
use shardrank_core::topk::{keep_top, merge_top, Ranked};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Candidates per parallel chunk: large enough to amortise a task, small enough that a
/// 100k request spreads over the cores.
pub const CHUNK: usize = 4096;

/// The user as this shard needs it: author rows rather than ids.
pub struct RequestUser {
    pub view: UserView,
    /// Author rows the user follows, sorted.
    pub followees: Vec<u32>,
    /// Author rows whose posts are dropped, sorted.
    pub excluded: Vec<u32>,
}

impl RequestUser {
    pub fn new(store: &PostStore, view: UserView, followees: &[u64], excluded: &[u64]) -> Self {
        let rows = |ids: &[u64]| {
            let mut v: Vec<u32> = ids.iter().filter_map(|&id| store.authors.get(id)).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        RequestUser {
            view,
            followees: rows(followees),
            excluded: rows(excluded),
        }
    }
}

pub struct RankParams<'a> {
    pub ids: &'a [u64],
    pub now_ms: i64,
    pub skip: usize,
    pub count: usize,
    /// When the caller stops waiting: the heavy stage stops there and returns what it
    /// scored (a prefix of the slice), flagged `truncated`.
    pub deadline: Option<Instant>,
    /// Stop after the light stage: the slice comes back with heavy scores of 0.
    pub light_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub light: f32,
    pub id: u64,
    pub row: u32,
}

impl Ranked for Scored {
    fn score(&self) -> f32 {
        self.light
    }
    fn id(&self) -> u64 {
        self.id
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct RankOutput {
    /// The requested slice of the local light order: (candidate, heavy score).
    pub items: Vec<(Scored, f32)>,
    pub eligible: usize,
    pub unknown: usize,
    pub excluded: usize,
    pub light_ms: f64,
    pub heavy_ms: f64,
    /// The deadline came before the whole slice was heavy-scored.
    pub truncated: bool,
}

/// Candidates heavy-scored between two looks at the clock (about 0.1 ms of work).
const HEAVY_BATCH: usize = 128;

struct ChunkResult {
    top: Vec<Scored>,
    eligible: usize,
    excluded: usize,
    unknown_ids: Vec<u64>,
}

#[inline]
fn features(
    store: &PostStore,
    user: &RequestUser,
    row: u32,
    now_ms: i64,
    out: &mut [f32; NUM_FEATURES],
) {
    let post = store.view(row, now_ms);
    let followed = user.view.known && user.followees.binary_search(&store.author(row)).is_ok();
    extract(&post, followed, &user.view, now_ms, out);
}

/// Ids looked up together: their index slots are prefetched first, then their hot
/// rows, so the cache misses of a batch overlap instead of queueing one by one.
const BATCH: usize = 32;

fn light_chunk(
    store: &PostStore,
    user: &RequestUser,
    ids: &[u64],
    seen: &[AtomicU64],
    now_ms: i64,
    keep: usize,
) -> ChunkResult {
    let mut top = Vec::with_capacity(ids.len());
    let mut unknown_ids = Vec::new();
    let mut excluded = 0;
    let light = store.light_model();
    let index = store.index();
    let now_window = crate::windows::window(now_ms);
    let mut rows = [0u32; BATCH];
    for batch in ids.chunks(BATCH) {
        for &id in batch {
            index.prefetch(id);
        }
        for (r, &id) in rows.iter_mut().zip(batch) {
            *r = match index.get(id) {
                Some(row) => {
                    prefetch(&store.hot[row as usize]);
                    row
                }
                None => u32::MAX,
            };
        }
        for (&row, &id) in rows.iter().zip(batch) {
            if row == u32::MAX {
                unknown_ids.push(id);
                continue;
            }
            let bit = 1u64 << (row % 64);
            if seen[(row / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                continue; // a repeated id: ranked once
            }
            let h = &store.hot[row as usize];
            let a = h.author;
            if !user.excluded.is_empty() && user.excluded.binary_search(&a).is_ok() {
                excluded += 1;
                continue;
            }
            let followed = user.view.known && user.followees.binary_search(&a).is_ok();
            let score = light_parts::score(
                light,
                h.light_part,
                store.authors.light_part[a as usize],
                h.created_at,
                h.lang,
                h.has_media(),
                store.authors.cluster[a as usize],
                followed,
                light_parts::velocity(light, store.velocity_in(row, now_ms, now_window)),
                &user.view,
                now_ms,
            );
            top.push(Scored {
                light: score,
                id,
                row,
            });
        }
    }
    let eligible = top.len();
    keep_top(&mut top, keep);
    ChunkResult {
        top,
        eligible,
        excluded,
        unknown_ids,
    }
}

/// Ranks `p.ids` for `user`; see the module docs.
pub fn rank(
    store: &PostStore,
    heavy: &HeavyModel,
    user: &RequestUser,
    p: &RankParams,
) -> RankOutput {
    let t0 = Instant::now();
    let keep = p.skip.saturating_add(p.count).min(p.ids.len());
    let seen: Vec<AtomicU64> = (0..store.len() / 64 + 1)
        .map(|_| AtomicU64::new(0))
        .collect();
    let chunks: Vec<ChunkResult> = if p.ids.len() > CHUNK {
        p.ids
            .par_chunks(CHUNK)
            .map(|c| light_chunk(store, user, c, &seen, p.now_ms, keep))
            .collect()
    } else {
        vec![light_chunk(store, user, p.ids, &seen, p.now_ms, keep)]
    };
    let mut out = RankOutput::default();
    let mut unknown: Vec<u64> = Vec::new();
    let mut tops = Vec::with_capacity(chunks.len());
    for c in chunks {
        out.eligible += c.eligible;
        out.excluded += c.excluded;
        unknown.extend(c.unknown_ids);
        tops.push(c.top);
    }
    unknown.sort_unstable();
    unknown.dedup();
    out.unknown = unknown.len();
    let merged = merge_top(&tops, keep);
    let slice = &merged[p.skip.min(merged.len())..];
    let t1 = Instant::now();
    out.light_ms = (t1 - t0).as_secs_f64() * 1e3;

    if p.light_only {
        out.items = slice.iter().map(|&c| (c, 0.0)).collect();
        return out;
    }

    // Heavy stage, in batches, looking at the deadline before each: past it, the
    // answer is the prefix scored so far (the caller still gets the best of it in time).
    let mut xs = vec![[0.0f32; NUM_FEATURES]; slice.len()];
    let mut scores = vec![0.0f32; slice.len()];
    let mut scratch = Scratch::default();
    let mut done = 0;
    for (xb, (sb, cb)) in xs.chunks_mut(HEAVY_BATCH).zip(
        scores
            .chunks_mut(HEAVY_BATCH)
            .zip(slice.chunks(HEAVY_BATCH)),
    ) {
        if p.deadline.is_some_and(|d| Instant::now() >= d) {
            out.truncated = true;
            break;
        }
        for (x, s) in xb.iter_mut().zip(cb) {
            features(store, user, s.row, p.now_ms, x);
        }
        heavy.score_batch(xb, sb, &mut scratch);
        done += cb.len();
    }
    out.items = slice[..done].iter().copied().zip(scores).collect();
    out.heavy_ms = t1.elapsed().as_secs_f64() * 1e3;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::corpus::{generate, CorpusSpec, CORPUS_END_MS};
    use shardrank_core::model::Models;
    use shardrank_core::routing::shard_of;

    fn store(index: u32, n: u32) -> PostStore {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut s = PostStore::new(index, n, Models::builtin().light);
        generate(&spec, |e| s.apply(&e));
        s
    }

    fn cold(s: &PostStore) -> RequestUser {
        RequestUser::new(s, UserView::default(), &[], &[])
    }

    /// `rank` with the built-in heavy model at the corpus' end of time.
    fn ranked(
        s: &PostStore,
        u: &RequestUser,
        ids: &[u64],
        skip: usize,
        count: usize,
    ) -> RankOutput {
        rank(
            s,
            &Models::builtin().heavy,
            u,
            &RankParams {
                ids,
                now_ms: CORPUS_END_MS,
                skip,
                count,
                deadline: None,
                light_only: false,
            },
        )
    }

    #[test]
    fn a_passed_deadline_stops_the_heavy_stage_with_a_flag() {
        let s = store(0, 1);
        let ids: Vec<u64> = s.ids.iter().copied().take(500).collect();
        let u = cold(&s);
        let full = ranked(&s, &u, &ids, 0, 300);
        assert!(!full.truncated);
        assert_eq!(full.items.len(), 300);
        let params = |deadline| RankParams {
            ids: &ids,
            now_ms: CORPUS_END_MS,
            skip: 0,
            count: 300,
            deadline,
            light_only: false,
        };
        let heavy = &Models::builtin().heavy;
        let late = rank(&s, heavy, &u, &params(Some(Instant::now())));
        assert!(late.truncated);
        assert!(late.items.is_empty());
        assert_eq!(late.eligible, full.eligible, "the light stage still ran");
        let ample = rank(
            &s,
            heavy,
            &u,
            &params(Some(Instant::now() + std::time::Duration::from_secs(60))),
        );
        assert_eq!(ample.items, full.items, "batches score as one pass does");
        assert!(!ample.truncated);
    }

    #[test]
    fn slices_of_the_light_order_tile_it() {
        let s = store(0, 1);
        let ids: Vec<u64> = s.ids.iter().copied().step_by(3).collect();
        let u = cold(&s);
        let all = ranked(&s, &u, &ids, 0, ids.len());
        assert_eq!(all.eligible, ids.len());
        assert_eq!(all.items.len(), ids.len());
        assert!(all
            .items
            .windows(2)
            .all(|w| shardrank_core::topk::cmp(&w[0].0, &w[1].0).is_lt()));
        let head = ranked(&s, &u, &ids, 0, 100);
        let tail = ranked(&s, &u, &ids, 100, 50);
        assert_eq!(head.items[..], all.items[..100]);
        assert_eq!(tail.items[..], all.items[100..150]);
    }

    #[test]
    fn duplicates_unknowns_and_exclusions_are_counted_once() {
        let s = store(0, 1);
        let a = s.ids[0];
        let b = s.ids[1];
        let author_b = s.authors.ids[s.author(1) as usize];
        let u = RequestUser::new(&s, UserView::default(), &[], &[author_b]);
        let excluded_rows = s.hot.iter().filter(|h| h.author == s.author(1)).count();
        let mut ids: Vec<u64> = vec![a, a, 5, 5, 6, b];
        ids.extend(s.ids.iter().copied());
        let out = ranked(&s, &u, &ids, 0, 10);
        assert_eq!(out.unknown, 2);
        assert_eq!(out.excluded, excluded_rows);
        assert_eq!(out.eligible, s.len() - excluded_rows);
        assert!(out
            .items
            .iter()
            .all(|(c, _)| s.author(c.row) != s.author(1)));
    }

    #[test]
    fn chunked_parallel_equals_one_chunk() {
        // Many candidates with repeats across chunk borders.
        let s = store(0, 1);
        let u = cold(&s);
        let mut ids: Vec<u64> = s.ids.clone();
        ids.extend(s.ids.iter().rev().copied());
        let par = ranked(&s, &u, &ids, 0, 300);
        let one = light_chunk(
            &s,
            &u,
            &ids,
            &(0..s.len() / 64 + 1)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
            CORPUS_END_MS,
            300,
        );
        assert_eq!(par.eligible, s.len());
        assert_eq!(
            par.items.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            one.top
        );
    }

    #[test]
    fn partitions_score_candidates_identically() {
        let whole = store(0, 1);
        let ids: Vec<u64> = whole.ids.iter().copied().step_by(7).collect();
        let one = ranked(&whole, &cold(&whole), &ids, 0, ids.len());
        for i in 0..3 {
            let part = store(i, 3);
            let mine: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|&id| shard_of(id, 3) == i)
                .collect();
            let got = ranked(&part, &cold(&part), &mine, 0, mine.len());
            for (c, h) in got.items {
                let (wc, wh) = one.items.iter().find(|(w, _)| w.id == c.id).unwrap();
                assert_eq!(
                    (c.light.to_bits(), h.to_bits()),
                    (wc.light.to_bits(), wh.to_bits())
                );
            }
        }
    }
}
