//! Candidate retrieval for the home timeline, on the shard that owns the posts: each
//! source scans this partition's recent posts (newest first) and keeps its best few by
//! its own score. The coordinator merges the partitions' lists per source.
//!
//! - in-network: posts by followed authors, newest first (score: creation time);
//! - out-of-network: posts by authors outside the follow graph whose interest cluster is
//!   one of the user's, scored by the user's weight for that cluster, decayed with age;
//! - trending: posts by engagement velocity, the engagements of their last five
//!   60-second windows (see [`crate::windows`]), newer first on a tie.

use crate::rank::RequestUser;
use crate::store::PostStore;
use shardrank_core::topk::{keep_top, Ranked};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    InNetwork,
    OutOfNetwork,
    Trending,
}

pub struct Params<'a> {
    pub source: Source,
    pub user: &'a RequestUser,
    pub since_ms: i64,
    pub now_ms: i64,
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Found {
    pub score: f32,
    pub id: u64,
    pub row: u32,
}

impl Ranked for Found {
    fn score(&self) -> f32 {
        self.score
    }
    fn id(&self) -> u64 {
        self.id
    }
}

/// Rows are appended in stream order, so creation times fall going backwards; a late
/// event can break the order locally, so the scan stops only after this many rows in a
/// row older than the horizon.
const PAST_HORIZON: usize = 4096;

fn hours(ms: i64) -> f32 {
    (ms.max(0) as f32) / 3_600_000.0
}

/// The best `p.limit` posts of this partition for `p.source`, best first; and the
/// number of rows looked at.
pub fn retrieve(store: &PostStore, p: &Params) -> (Vec<Found>, usize) {
    let user = p.user;
    let mut found = Vec::new();
    let mut old_run = 0;
    let mut scanned = 0;
    for row in (0..store.len() as u32).rev() {
        let h = &store.hot[row as usize];
        scanned += 1;
        if h.created_at < p.since_ms {
            old_run += 1;
            if old_run >= PAST_HORIZON {
                break;
            }
            continue;
        }
        old_run = 0;
        let a = h.author;
        if user.excluded.contains(a) {
            continue;
        }
        let followed = user.followees.contains(a);
        let age_h = hours(p.now_ms - h.created_at);
        let score = match p.source {
            Source::InNetwork if followed => -age_h,
            Source::InNetwork => continue,
            Source::OutOfNetwork if followed => continue,
            Source::OutOfNetwork => {
                let cluster = store.authors.rows[a as usize].cluster;
                match user
                    .view
                    .interests
                    .binary_search_by_key(&cluster, |&(c, _)| c)
                {
                    Ok(i) => user.view.interests[i].1 / (1.0 + age_h / 6.0),
                    Err(_) => continue,
                }
            }
            Source::Trending => {
                let velocity = store.windows[row as usize].velocity(p.now_ms);
                if velocity == 0 {
                    continue;
                }
                velocity as f32 - age_h * 1e-3
            }
        };
        if !score.is_finite() {
            continue;
        }
        found.push(Found {
            score,
            id: store.id(row),
            row,
        });
        // Keep memory bounded on a long scan: trim to the best `limit` now and then.
        if found.len() >= 4 * p.limit.max(256) {
            keep_top(&mut found, p.limit);
        }
    }
    keep_top(&mut found, p.limit);
    (found, scanned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::corpus::{generate, CorpusSpec, CORPUS_END_MS};
    use shardrank_core::features::UserView;
    use shardrank_core::model::Models;

    fn store() -> PostStore {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut s = PostStore::new(0, 1, Models::builtin().light);
        generate(&spec, |e| s.apply(&e));
        s
    }

    fn params<'a>(source: Source, user: &'a RequestUser) -> Params<'a> {
        Params {
            source,
            user,
            since_ms: CORPUS_END_MS - 2 * 86_400_000,
            now_ms: CORPUS_END_MS,
            limit: 50,
        }
    }

    #[test]
    fn in_network_is_recent_posts_of_followed_authors_newest_first() {
        let s = store();
        // Follow the authors of the newest posts.
        let authors: Vec<u64> = (0..20)
            .map(|k| s.authors.ids[s.hot[s.len() - 1 - k * 7].author as usize])
            .collect();
        let user = RequestUser::new(&s, UserView::default(), &authors, &[]);
        let (got, scanned) = retrieve(&s, &params(Source::InNetwork, &user));
        assert!(!got.is_empty() && scanned > 0);
        for w in got.windows(2) {
            assert!(w[0].score >= w[1].score, "newest first");
        }
        for f in &got {
            let h = &s.hot[f.row as usize];
            assert!(user.followees.contains(h.author));
            assert!(h.created_at >= CORPUS_END_MS - 2 * 86_400_000);
        }
    }

    #[test]
    fn out_of_network_matches_interests_and_skips_follows_and_exclusions() {
        let s = store();
        let cluster = s.authors.rows[s.hot[s.len() - 1].author as usize].cluster;
        let view = UserView {
            known: true,
            lang: 0,
            interests: vec![(cluster, 1.0)],
        };
        let followed = s.authors.ids[s.hot[s.len() - 1].author as usize];
        let excluded = s.authors.ids[s.hot[s.len() - 2].author as usize];
        let user = RequestUser::new(&s, view, &[followed], &[excluded]);
        let (got, _) = retrieve(&s, &params(Source::OutOfNetwork, &user));
        assert!(!got.is_empty());
        for f in &got {
            let a = s.hot[f.row as usize].author;
            assert_eq!(s.authors.rows[a as usize].cluster, cluster);
            assert!(!user.followees.contains(a));
            assert!(!user.excluded.contains(a));
        }
    }

    #[test]
    fn trending_is_engaged_posts_by_engagement_velocity() {
        let s = store();
        let user = RequestUser::new(&s, UserView::default(), &[], &[]);
        let (got, _) = retrieve(&s, &params(Source::Trending, &user));
        assert_eq!(got.len(), 50);
        for w in got.windows(2) {
            assert!(w[0].score >= w[1].score);
        }
        let v = |f: &Found| s.windows[f.row as usize].velocity(CORPUS_END_MS);
        assert!(got.iter().all(|f| v(f) > 0));
        // Nothing left out beats the last one in.
        let last = v(got.last().unwrap());
        let since = CORPUS_END_MS - 2 * 86_400_000;
        let better = (0..s.len())
            .filter(|&r| s.hot[r].created_at >= since)
            .filter(|&r| s.windows[r].velocity(CORPUS_END_MS) > last)
            .count();
        assert!(better < 50, "{better}");
    }
}
