//! Merging the shards' answers into the exact global answer.
//!
//! Each shard returns a prefix of its local light order (light score descending, id
//! ascending), heavy-scored. The global top H by light score is the top H of the union
//! of those prefixes *if* no shard stopped too early: a shard whose last returned
//! candidate ranks above the union's H-th may hold more of the global top H. Such a
//! shard is asked for the rest of its local top H in a second round ([`shortfall`]);
//! after that its local top H is fully known, which is always enough. Then [`select`]
//! takes the global top H by light score and returns its top k by heavy score.

use shardrank_core::topk::{keep_best, keep_top, rank_cmp, Ranked};
use std::cmp::Ordering;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub author_id: u64,
    pub light: f32,
    pub heavy: f32,
    pub shard: u32,
}

/// What one shard has returned so far: a prefix of its local light order.
#[derive(Clone, Debug, Default)]
pub struct ShardPart {
    pub shard: u32,
    /// Sorted in light order: the first `items.len()` of the shard's local order.
    pub items: Vec<Candidate>,
    /// How many eligible candidates the shard has in all.
    pub eligible: usize,
}

/// A second-round ask: positions `[skip, skip + count)` of `part`'s local order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refetch {
    pub part: usize,
    pub skip: usize,
    pub count: usize,
}

#[derive(Clone, Copy)]
struct ByLight(Candidate);
impl Ranked for ByLight {
    fn score(&self) -> f32 {
        self.0.light
    }
    fn id(&self) -> u64 {
        self.0.id
    }
}

#[derive(Clone, Copy)]
struct ByHeavy(Candidate);
impl Ranked for ByHeavy {
    fn score(&self) -> f32 {
        self.0.heavy
    }
    fn id(&self) -> u64 {
        self.0.id
    }
}

fn light_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    rank_cmp(a.light, a.id, b.light, b.id)
}

/// The H-th best candidate by light score among all parts, if there are H.
fn hth_best(parts: &[ShardPart], h: usize) -> Option<Candidate> {
    let total: usize = parts.iter().map(|p| p.items.len()).sum();
    if total < h || h == 0 {
        return None;
    }
    let mut all: Vec<ByLight> = parts
        .iter()
        .flat_map(|p| p.items.iter().map(|c| ByLight(*c)))
        .collect();
    all.select_nth_unstable_by(h - 1, shardrank_core::topk::cmp);
    Some(all[h - 1].0)
}

/// Which parts may hold more of the global top `h` than they returned, and what to ask.
pub fn shortfall(parts: &[ShardPart], h: usize) -> Vec<Refetch> {
    // Exhausted, or its whole local top h is known: nothing more to ask of it.
    let done = |p: &ShardPart| p.items.len() >= p.eligible || p.items.len() >= h;
    // The usual case when a request's candidates fit in one round (rank-1k): no cut
    // to compute (a copy and a selection of every candidate returned).
    if parts.iter().all(done) {
        return Vec::new();
    }
    let cut = hth_best(parts, h);
    parts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let got = p.items.len();
            if done(p) {
                return None;
            }
            let needs_more = match (cut, p.items.last()) {
                // Fewer than h in the union: every unexhausted shard may add to the top h.
                (None, _) => true,
                (Some(_), None) => true,
                // Items after `last` are worse than it; they matter only if it beats the cut.
                (Some(cut), Some(last)) => light_cmp(last, &cut) == Ordering::Less,
            };
            needs_more.then(|| Refetch {
                part: i,
                skip: got,
                count: h.min(p.eligible) - got,
            })
        })
        .collect()
}

/// The global top `h` by light score, then its top `k` by heavy score (score
/// descending, id ascending).
pub fn select(parts: &[ShardPart], h: usize, k: usize) -> Vec<Candidate> {
    let mut by_light: Vec<ByLight> = parts
        .iter()
        .flat_map(|p| p.items.iter().map(|c| ByLight(*c)))
        .collect();
    // Only the set of the best h by light counts: the heavy order comes next.
    keep_best(&mut by_light, h);
    let mut by_heavy: Vec<ByHeavy> = by_light.into_iter().map(|c| ByHeavy(c.0)).collect();
    keep_top(&mut by_heavy, k);
    by_heavy.into_iter().map(|c| c.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::rng::Rng;

    fn cand(id: u64, light: f32, heavy: f32, shard: u32) -> Candidate {
        Candidate {
            id,
            author_id: 0,
            light,
            heavy,
            shard,
        }
    }

    /// A random global candidate set, split over `n` shards.
    fn world(seed: u64, total: usize, n: u32) -> Vec<Vec<Candidate>> {
        let mut r = Rng::new(seed);
        let mut shards = vec![Vec::new(); n as usize];
        for id in 0..total as u64 {
            // Coarse light scores force ties; shard 0 holding better candidates than its
            // share forces shortfalls (placement only sees counts).
            let s = r.below(n as u64) as u32;
            let boost = if s == 0 && seed.is_multiple_of(2) {
                25
            } else {
                0
            };
            shards[s as usize].push(cand(
                id * 31 % 100_003,
                (r.below(50) + boost) as f32,
                r.f64() as f32,
                s,
            ));
        }
        for s in &mut shards {
            s.sort_by(light_cmp);
        }
        shards
    }

    fn single_machine(world: &[Vec<Candidate>], h: usize, k: usize) -> Vec<Candidate> {
        let all = ShardPart {
            shard: 0,
            items: world.concat(),
            eligible: 0,
        };
        let mut all = all;
        all.items.sort_by(light_cmp);
        select(&[all], h, k)
    }

    /// Simulates the protocol: first round by `placement`, second round by `shortfall`.
    fn distributed(world: &[Vec<Candidate>], h: usize, k: usize) -> (Vec<Candidate>, usize) {
        let counts: Vec<usize> = world.iter().map(Vec::len).collect();
        let depth = crate::placement::first_round(&counts, h);
        let mut parts: Vec<ShardPart> = world
            .iter()
            .zip(&depth)
            .enumerate()
            .map(|(i, (w, &d))| ShardPart {
                shard: i as u32,
                items: w[..d].to_vec(),
                eligible: w.len(),
            })
            .collect();
        let refetch = shortfall(&parts, h);
        for r in &refetch {
            let w = &world[r.part];
            let more = w[r.skip..r.skip + r.count].to_vec();
            parts[r.part].items.extend(more);
        }
        assert!(
            shortfall(&parts, h).is_empty(),
            "one second round is always enough"
        );
        (select(&parts, h, k), refetch.len())
    }

    #[test]
    fn distributed_equals_single_machine() {
        let mut second_rounds = 0;
        for seed in 0..60 {
            for &(total, n, h, k) in &[
                (5000usize, 4u32, 1000usize, 100usize),
                (300, 4, 1000, 100),
                (2000, 3, 50, 50),
                (1000, 8, 100, 7),
            ] {
                let w = world(seed, total, n);
                let (got, rounds) = distributed(&w, h, k);
                second_rounds += rounds;
                let want = single_machine(&w, h, k);
                assert_eq!(got, want, "seed {seed} total {total} n {n}");
                assert_eq!(got.len(), k.min(total));
            }
        }
        // The skewed worlds must have exercised the second round.
        assert!(second_rounds > 0);
    }

    #[test]
    fn exhausted_and_sufficient_parts_are_not_refetched() {
        let a = ShardPart {
            shard: 0,
            items: vec![cand(1, 9.0, 0.0, 0), cand(2, 8.0, 0.0, 0)],
            eligible: 2,
        };
        let b = ShardPart {
            shard: 1,
            items: vec![cand(3, 7.0, 0.0, 1), cand(4, 1.0, 0.0, 1)],
            eligible: 10,
        };
        // h = 3: the cut is id 3 (light 7); b's last (light 1) is below it.
        assert!(shortfall(&[a.clone(), b.clone()], 3).is_empty());
        // h = 5: only 4 in the union, b has more.
        assert_eq!(
            shortfall(&[a, b], 5),
            vec![Refetch {
                part: 1,
                skip: 2,
                count: 3
            }]
        );
    }
}
