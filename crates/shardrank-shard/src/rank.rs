//! Ranks one request on this shard.
//!
//! 1. Look up each candidate (a repeated id counts once: a bitset over rows per chunk,
//!    repeats across chunks dropped at the merge), drop unknown ids and posts by
//!    excluded authors, light-score the rest in batches (vectorised). Large requests
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
use shardrank_core::features::{extract_batch, light_parts, UserView, NUM_FEATURES};
use shardrank_core::model::heavy::Scratch;
use shardrank_core::model::HeavyModel;
use shardrank_core::topk::{keep_best, Best, Ranked};
use std::time::Instant;

/// Candidates per parallel chunk: large enough to amortise a task, small enough that a
/// 100k request spreads over the cores.
pub const CHUNK: usize = 4096;

/// The user as this shard needs it: author rows rather than ids.
pub struct RequestUser {
    pub view: UserView,
    /// Author rows the user follows.
    pub followees: AuthorSet,
    /// Author rows whose posts are dropped.
    pub excluded: AuthorSet,
}

impl RequestUser {
    pub fn new(store: &PostStore, view: UserView, followees: &[u64], excluded: &[u64]) -> Self {
        let authors = store.authors.len();
        let set = |ids: &[u64]| {
            AuthorSet::new(authors, ids.iter().filter_map(|&id| store.authors.get(id)))
        };
        RequestUser {
            view,
            followees: set(followees),
            excluded: set(excluded),
        }
    }
}

/// A set of author rows, asked once per candidate: a bitset over the author table
/// (12.5 KB for 100,000 authors, built once per request), where a binary search over
/// a user's followees cost a few mispredicted branches per candidate.
#[derive(Default)]
pub struct AuthorSet {
    bits: Vec<u64>,
    len: usize,
}

impl AuthorSet {
    pub fn new(authors: usize, rows: impl Iterator<Item = u32>) -> Self {
        let mut set = AuthorSet::default();
        for r in rows {
            let (w, bit) = ((r / 64) as usize, 1u64 << (r % 64));
            if set.bits.is_empty() {
                set.bits = vec![0; authors / 64 + 1];
            }
            if w < set.bits.len() && set.bits[w] & bit == 0 {
                set.bits[w] |= bit;
                set.len += 1;
            }
        }
        set
    }

    #[inline]
    pub fn contains(&self, row: u32) -> bool {
        self.bits
            .get((row / 64) as usize)
            .is_some_and(|w| w & (1u64 << (row % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
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
    /// The chunk's best `keep`, in no particular order.
    top: Vec<Scored>,
    eligible: usize,
    excluded_rows: Vec<u32>,
    unknown_ids: Vec<u64>,
    seen: Seen,
}

/// The heavy ranker's features of `rows`, into `out`. The batch's column entries are
/// prefetched first, so that their misses overlap (they were most of a shard's time at
/// `rank-1k` when taken one after another).
fn features(
    store: &PostStore,
    user: &RequestUser,
    rows: impl Iterator<Item = u32> + Clone,
    now_ms: i64,
    out: &mut [[f32; NUM_FEATURES]],
) {
    for row in rows.clone() {
        store.prefetch_view(row);
    }
    let mut posts = Vec::with_capacity(out.len());
    let mut followed = Vec::with_capacity(out.len());
    for row in rows {
        posts.push(store.view(row, now_ms));
        followed.push(user.view.known && user.followees.contains(store.author(row)));
    }
    extract_batch(&posts, &followed, &user.view, now_ms, out);
}

/// Ids looked up together, in stages: their index slots are prefetched, then their hot
/// rows, then their authors' rows, so that the cache misses of a batch overlap
/// instead of queueing one by one.
const BATCH: usize = light_parts::BATCH;

/// Rows one chunk has seen: a plain bitset of its own. A shared atomic bitset cost a
/// locked instruction per candidate, and a locked instruction fences the loads after
/// it, which serialised the next candidates' cache misses. Repeats across chunks are
/// dropped where the chunks' lists are merged.
struct Seen(Vec<u64>);

impl Seen {
    fn new(rows: usize) -> Self {
        Seen(vec![0; rows / 64 + 1])
    }

    /// Marks `row`; false if it was marked already.
    #[inline]
    fn insert(&mut self, row: u32) -> bool {
        let (w, bit) = ((row / 64) as usize, 1u64 << (row % 64));
        let fresh = self.0[w] & bit == 0;
        self.0[w] |= bit;
        fresh
    }
}

fn light_chunk(
    store: &PostStore,
    user: &RequestUser,
    ids: &[u64],
    now_ms: i64,
    keep: usize,
) -> ChunkResult {
    let mut top = Best::new(keep, ids.len());
    let mut eligible = 0;
    let mut unknown_ids = Vec::new();
    let mut excluded_rows = Vec::new();
    let mut seen = Seen::new(store.len());
    let light = store.light_model();
    let index = store.index();
    let authors = &store.authors;
    let now_window = crate::windows::window(now_ms);
    let mut rows = [0u32; BATCH];
    let mut row_ids = [0u64; BATCH];
    let mut parts = light_parts::Batch::default();
    let mut scores = [0.0f32; BATCH];
    // The index slots of the next batch are fetched while this one is ranked: its
    // rows', authors' and scoring's time then overlaps those misses.
    let mut batches = ids.chunks(BATCH).peekable();
    for &id in batches.peek().copied().unwrap_or_default() {
        index.prefetch(id);
    }
    while let Some(batch) = batches.next() {
        for &id in batches.peek().copied().unwrap_or_default() {
            index.prefetch(id);
        }
        let mut n = 0;
        for &id in batch {
            match index.probable_row(id) {
                Some(row) => {
                    store.prefetch_hot(row);
                    rows[n] = row;
                    row_ids[n] = id;
                    n += 1;
                }
                None => unknown_ids.push(id),
            }
        }
        // The row confirms the index's fingerprint match (a wrong row is about one
        // probe in four billion: then the exact lookup). A repeated id is ranked once;
        // the first time, its author's row is fetched while the rest of the batch
        // is looked at.
        let mut m = 0;
        for i in 0..n {
            let mut row = rows[i];
            if store.hot[row as usize].id != row_ids[i] {
                match store.row(row_ids[i]) {
                    Some(r) => row = r,
                    None => {
                        unknown_ids.push(row_ids[i]);
                        continue;
                    }
                }
            }
            if seen.insert(row) {
                let a = store.hot[row as usize].author as usize;
                prefetch(&authors.rows[a]);
                rows[m] = row;
                row_ids[m] = row_ids[i];
                m += 1;
            }
        }
        parts.clear();
        let mut k = 0;
        for i in 0..m {
            let row = rows[i];
            let h = &store.hot[row as usize];
            let a = h.author;
            if user.excluded.contains(a) {
                excluded_rows.push(row);
                continue;
            }
            let au = &authors.rows[a as usize];
            parts.push(
                light,
                h.light_part,
                au.light_part,
                h.created_at,
                h.lang,
                h.has_media(),
                au.cluster,
                user.view.known && user.followees.contains(a),
                light_parts::velocity(light, store.velocity_in(row, now_ms, now_window)),
                &user.view,
                now_ms,
            );
            rows[k] = row;
            row_ids[k] = row_ids[i];
            k += 1;
        }
        if k == 0 {
            // Nothing eligible (unknown, repeated or excluded ids): nothing to score.
            continue;
        }
        parts.score(light, &mut scores);
        eligible += k;
        for i in 0..k {
            top.push(Scored {
                light: scores[i],
                id: row_ids[i],
                row: rows[i],
            });
        }
    }
    ChunkResult {
        top: top.into_set(),
        eligible,
        excluded_rows,
        unknown_ids,
        seen,
    }
}

/// The chunks' results as one: their best sets merged with repeats across chunks
/// dropped (each chunk kept `keep` distinct rows, so the union less its repeats still
/// holds the best `keep`), sorted, and distinct counts.
fn merge_chunks(chunks: Vec<ChunkResult>, keep: usize, out: &mut RankOutput) -> Vec<Scored> {
    let mut unknown: Vec<u64> = Vec::new();
    let mut excluded: Vec<u32> = Vec::new();
    let mut all: Vec<Scored> = Vec::new();
    let mut rows = Vec::new();
    let one = chunks.len() == 1;
    for c in chunks {
        out.eligible += c.eligible;
        unknown.extend(c.unknown_ids);
        excluded.extend(c.excluded_rows);
        all.extend(c.top);
        rows.push(c.seen);
    }
    if !one {
        excluded.sort_unstable();
        excluded.dedup();
        // Distinct rows seen by any chunk, less the excluded ones.
        let mut union = rows.pop().map(|s| s.0).unwrap_or_default();
        for s in &rows {
            for (u, w) in union.iter_mut().zip(&s.0) {
                *u |= w;
            }
        }
        let seen: usize = union.iter().map(|w| w.count_ones() as usize).sum();
        out.eligible = seen - excluded.len();
        let mut kept = Seen(vec![0; union.len()]);
        all.retain(|c| kept.insert(c.row));
        keep_best(&mut all, keep);
    }
    shardrank_core::topk::sort_ranked(&mut all);
    out.unknown = distinct(&unknown);
    out.excluded = excluded.len();
    all
}

/// How many distinct values `ids` holds, counted through an id index used as a set.
/// A request of ids this shard does not hold has tens of thousands of them, and
/// sorting them to drop repeats was 10% of such a request's CPU (2.5x a hash set's).
fn distinct(ids: &[u64]) -> usize {
    let mut set = crate::index::IdIndex::with_capacity(ids.len());
    ids.iter().filter(|&&id| set.insert(id, 0)).count()
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
    let chunks: Vec<ChunkResult> = if p.ids.len() > CHUNK {
        p.ids
            .par_chunks(CHUNK)
            .map(|c| light_chunk(store, user, c, p.now_ms, keep))
            .collect()
    } else {
        vec![light_chunk(store, user, p.ids, p.now_ms, keep)]
    };
    let mut out = RankOutput::default();
    let merged = merge_chunks(chunks, keep, &mut out);
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
        features(store, user, cb.iter().map(|s| s.row), p.now_ms, xb);
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
        let ids: Vec<u64> = s.ids().take(500).collect();
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
        let ids: Vec<u64> = s.ids().step_by(3).collect();
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
    fn distinct_counts_as_sort_and_dedup_do() {
        let mut r = shardrank_core::rng::Rng::new(8);
        for len in [0usize, 1, 2, 15, 16, 17, 1000, 30_000] {
            // Narrow ranges give many repeats; u64::MAX and 0 are ids too.
            for range in [3u64, 1000, u64::MAX] {
                let mut ids: Vec<u64> = (0..len).map(|_| r.next_u64() % range).collect();
                if len > 2 {
                    ids[0] = u64::MAX;
                    ids[len / 2] = u64::MAX;
                    ids[len - 1] = 0;
                }
                let mut sorted = ids.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(distinct(&ids), sorted.len(), "len {len}, range {range}");
            }
        }
    }

    /// A request of ids the shard does not hold, in several chunks with repeats across
    /// them: every id counted once, nothing eligible, nothing returned.
    #[test]
    fn a_request_of_unknown_ids_counts_each_once() {
        let s = store(0, 1);
        let absent: Vec<u64> = (0..3 * CHUNK as u64)
            .map(|i| 10u64.pow(18) + i % 5000)
            .filter(|id| s.row(*id).is_none())
            .collect();
        assert!(absent.len() > 2 * CHUNK);
        let out = ranked(&s, &cold(&s), &absent, 0, 100);
        assert_eq!(out.unknown, 5000);
        assert_eq!(out.eligible, 0);
        assert!(out.items.is_empty());
    }

    #[test]
    fn duplicates_unknowns_and_exclusions_are_counted_once() {
        let s = store(0, 1);
        let a = s.id(0);
        let b = s.id(1);
        let author_b = s.authors.ids[s.author(1) as usize];
        let u = RequestUser::new(&s, UserView::default(), &[], &[author_b]);
        let excluded_rows = s.hot.iter().filter(|h| h.author == s.author(1)).count();
        let mut ids: Vec<u64> = vec![a, a, 5, 5, 6, b];
        ids.extend(s.ids());
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
        // Many candidates with repeats across chunk borders, unknown ids repeated in
        // several chunks, and an excluded author whose posts come up in several chunks.
        let s = store(0, 1);
        let author = s.authors.ids[s.author(0) as usize];
        let u = RequestUser::new(&s, UserView::default(), &[], &[author]);
        let mut ids: Vec<u64> = s.ids().collect();
        ids.extend(s.ids().rev());
        ids.extend([7, 7, 8]);
        ids.insert(0, 7);
        assert!(ids.len() > 3 * CHUNK);
        let par = ranked(&s, &u, &ids, 0, 300);
        let mut one = light_chunk(&s, &u, &ids, CORPUS_END_MS, 300);
        one.top.sort_by(shardrank_core::topk::cmp);
        let excluded = s.hot.iter().filter(|h| h.author == s.author(0)).count();
        assert!(excluded > 0);
        assert_eq!(one.excluded_rows.len(), excluded);
        assert_eq!(
            (par.eligible, par.excluded, par.unknown),
            (s.len() - excluded, excluded, 2)
        );
        assert_eq!(one.eligible, par.eligible);
        assert_eq!(
            par.items.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            one.top
        );
    }

    /// With index fingerprints of 2 bits, most lookups first land on another post's
    /// row; the light stage must notice and still rank exactly as with full ones.
    #[test]
    fn fingerprint_collisions_rank_as_exact_lookups() {
        let exact = store(0, 1);
        let mut narrow = store(0, 1);
        narrow.narrow_index_fingerprints(2);
        let author = exact.authors.ids[exact.author(0) as usize];
        let mut ids: Vec<u64> = exact.ids().step_by(3).collect();
        ids.extend([7, 7, 10u64.pow(18)]);
        let want = ranked(
            &exact,
            &RequestUser::new(&exact, UserView::default(), &[], &[author]),
            &ids,
            0,
            200,
        );
        let got = ranked(
            &narrow,
            &RequestUser::new(&narrow, UserView::default(), &[], &[author]),
            &ids,
            0,
            200,
        );
        assert_eq!(want.items.len(), 200);
        assert!(want.excluded > 0 && want.unknown == 2);
        assert_eq!(
            (got.items, got.eligible, got.excluded, got.unknown),
            (want.items, want.eligible, want.excluded, want.unknown)
        );
    }

    #[test]
    fn partitions_score_candidates_identically() {
        let whole = store(0, 1);
        let ids: Vec<u64> = whole.ids().step_by(7).collect();
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
