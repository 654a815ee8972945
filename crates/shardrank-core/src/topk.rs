//! The one rank order every stage uses, and bounded top-m selection.
//!
//! Order: score descending, then id ascending. Ids are unique, so the order is total and
//! the answer is the same whichever shard or chunk a candidate went through.

use std::cmp::Ordering;

/// Something with a score and an id.
pub trait Ranked {
    fn score(&self) -> f32;
    fn id(&self) -> u64;
}

/// Rank order: `Less` means `a` comes first (higher score, or same score and lower id).
#[inline]
pub fn rank_cmp(a_score: f32, a_id: u64, b_score: f32, b_id: u64) -> Ordering {
    b_score.total_cmp(&a_score).then(a_id.cmp(&b_id))
}

#[inline]
pub fn cmp<T: Ranked>(a: &T, b: &T) -> Ordering {
    rank_cmp(a.score(), a.id(), b.score(), b.id())
}

/// Keeps the best `m` of `v`, sorted in rank order. O(n + m log m): a selection, then a
/// sort of the kept part only, never a sort of everything.
pub fn keep_top<T: Ranked + Copy>(v: &mut Vec<T>, m: usize) {
    keep_best(v, m);
    sort_ranked(v);
}

/// The score as a u32 whose ascending order is the rank order's: `f32::total_cmp`'s
/// order of the bits (sign flipped, or all bits of a negative), then reversed.
#[inline]
fn descending_key(score: f32) -> u32 {
    let b = score.to_bits();
    let ascending = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    !ascending
}

/// Sorts `v` in rank order. The comparator sort spent most of its time on mispredicted
/// branches of the float-then-id compare; this sorts one u64 per item (the score's key
/// above its position) with integer compares, gathers the items in that order, and
/// sorts runs of equal scores by id. 2-2.5x faster for the few hundred to few thousand
/// items a shard keeps.
pub fn sort_ranked<T: Ranked + Copy>(v: &mut [T]) {
    let n = v.len();
    if n < 32 || n > u32::MAX as usize {
        v.sort_unstable_by(cmp);
        return;
    }
    let mut keys: Vec<u64> = v
        .iter()
        .enumerate()
        .map(|(i, x)| (u64::from(descending_key(x.score())) << 32) | i as u64)
        .collect();
    keys.sort_unstable();
    let sorted: Vec<T> = keys.iter().map(|&k| v[k as u32 as usize]).collect();
    v.copy_from_slice(&sorted);
    let mut i = 0;
    while i < n {
        let score = keys[i] >> 32;
        let mut j = i + 1;
        while j < n && keys[j] >> 32 == score {
            j += 1;
        }
        if j - i > 1 {
            v[i..j].sort_unstable_by(cmp);
        }
        i = j;
    }
}

/// Keeps the best `m` of `v` in no particular order (a set, for a stage that orders it
/// by something else next). O(n).
pub fn keep_best<T: Ranked>(v: &mut Vec<T>, m: usize) {
    if m == 0 {
        v.clear();
        return;
    }
    if v.len() > m {
        v.select_nth_unstable_by(m - 1, cmp);
        v.truncate(m);
    }
}

/// The best `m` of a stream, without keeping the stream: items are gathered until
/// there are twice `m`, the best `m` are selected, and from then on an item scoring
/// below the worst of those is turned away with one compare. On a shard's chunk of
/// 4,096 candidates keeping 300, this replaced a selection over all 4,096 (most of
/// the 3-4% of a shard's CPU that went to partitioning at `rank-100k`).
pub struct Best<T> {
    items: Vec<T>,
    m: usize,
    /// The worst kept score once a selection has run: anything below cannot be in the
    /// best `m` (equal scores are let in; the id decides later).
    floor: Option<f32>,
}

impl<T: Ranked> Best<T> {
    /// The best `m` of at most `len` items (`len` only sizes the buffer: a chunk asked
    /// for all its candidates must not reserve twice a whole request's worth).
    pub fn new(m: usize, len: usize) -> Self {
        Best {
            items: Vec::with_capacity(m.saturating_mul(2).min(len)),
            m,
            floor: None,
        }
    }

    /// Whether an item with `score` could be among the best `m` (so far).
    #[inline]
    fn admits(&self, score: f32) -> bool {
        self.m > 0 && self.floor.is_none_or(|f| score.total_cmp(&f).is_ge())
    }

    #[inline]
    pub fn push(&mut self, item: T) {
        if !self.admits(item.score()) {
            return;
        }
        self.items.push(item);
        if self.items.len() >= self.m.saturating_mul(2) {
            keep_best(&mut self.items, self.m);
            self.floor = self.items.iter().map(|i| i.score()).min_by(f32::total_cmp);
        }
    }

    /// The best `m` pushed, in no particular order.
    pub fn into_set(mut self) -> Vec<T> {
        keep_best(&mut self.items, self.m);
        self.items
    }
}

/// Merges lists that are each sorted in rank order into their best `m`, sorted.
pub fn merge_top<T: Ranked + Copy>(lists: &[Vec<T>], m: usize) -> Vec<T> {
    let mut all: Vec<T> = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    for l in lists {
        all.extend_from_slice(l);
    }
    keep_top(&mut all, m);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct S(f32, u64);
    impl Ranked for S {
        fn score(&self) -> f32 {
            self.0
        }
        fn id(&self) -> u64 {
            self.1
        }
    }

    #[test]
    fn ties_break_by_id() {
        let mut v = vec![S(1.0, 9), S(2.0, 5), S(1.0, 3), S(2.0, 4)];
        keep_top(&mut v, 3);
        assert_eq!(v, vec![S(2.0, 4), S(2.0, 5), S(1.0, 3)]);
    }

    /// Against the comparator sort, bit for bit: ties in long runs, both zeros, NaNs of
    /// both signs, infinities, subnormals, and sizes on both sides of the cut-over.
    #[test]
    fn sort_ranked_equals_the_comparator_sort() {
        let mut r = Rng::new(17);
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 4.0,
            -f32::MIN_POSITIVE / 4.0,
            f32::MAX,
            f32::MIN,
        ];
        for n in [0usize, 1, 31, 32, 33, 300, 4000] {
            for coarse in [false, true] {
                let v: Vec<S> = (0..n)
                    .map(|i| {
                        let s = match r.below(20) {
                            k @ 0..=9 => specials[k as usize],
                            _ if coarse => r.below(5) as f32 - 2.0,
                            _ => (r.f64() * 200.0 - 100.0) as f32,
                        };
                        S(s, (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20)
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_by(cmp);
                let mut got = v.clone();
                sort_ranked(&mut got);
                let bits = |v: &[S]| v.iter().map(|s| (s.0.to_bits(), s.1)).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n={n} coarse={coarse}");
            }
        }
    }

    #[test]
    fn keep_top_equals_full_sort_prefix() {
        let mut r = Rng::new(3);
        for n in [0usize, 1, 5, 100, 1000] {
            for m in [0usize, 1, 7, 100, 2000] {
                // Coarse scores so that ties happen.
                let v: Vec<S> = (0..n)
                    .map(|i| S((r.below(20)) as f32, i as u64 * 13 % 1009))
                    .collect();
                let mut full = v.clone();
                full.sort_by(cmp);
                full.truncate(m);
                let mut top = v.clone();
                keep_top(&mut top, m);
                assert_eq!(top, full, "n={n} m={m}");
                // The same set, in whatever order.
                let mut best = v.clone();
                keep_best(&mut best, m);
                best.sort_by(cmp);
                assert_eq!(best, full, "keep_best n={n} m={m}");
            }
        }
    }

    #[test]
    fn best_of_a_stream_equals_keep_top() {
        let mut r = Rng::new(8);
        for n in [0usize, 1, 5, 599, 600, 601, 5000] {
            for m in [0usize, 1, 3, 300, 6000] {
                // Coarse scores so that ties straddle the floor; some NaNs and
                // infinities, which the rank order places too.
                let v: Vec<S> = (0..n)
                    .map(|i| {
                        let s = match r.below(50) {
                            0 => f32::NAN,
                            1 => -f32::NAN,
                            2 => f32::INFINITY,
                            3 => f32::NEG_INFINITY,
                            x => (x % 17) as f32,
                        };
                        S(s, (i as u64 * 7919) % 10007)
                    })
                    .collect();
                let mut want = v.clone();
                keep_top(&mut want, m);
                let mut best = Best::new(m, n);
                for s in v.iter().cloned() {
                    best.push(s);
                }
                let mut got = best.into_set();
                got.sort_unstable_by(cmp);
                // NaN != NaN: compare the bits.
                let bits = |v: &[S]| v.iter().map(|s| (s.0.to_bits(), s.1)).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n={n} m={m}");
            }
        }
    }

    #[test]
    fn merge_of_sorted_parts_equals_top_of_whole() {
        let mut r = Rng::new(5);
        let whole: Vec<S> = (0..3000).map(|i| S(r.f64() as f32, i)).collect();
        let mut parts: Vec<Vec<S>> = vec![Vec::new(); 4];
        for s in &whole {
            parts[(s.1 % 4) as usize].push(*s);
        }
        for p in &mut parts {
            keep_top(p, 200);
        }
        let mut want = whole.clone();
        keep_top(&mut want, 200);
        assert_eq!(merge_top(&parts, 200), want);
    }
}
