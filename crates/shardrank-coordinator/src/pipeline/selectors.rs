//! Selectors: the final cut.

use super::{Candidate, Query, Selector};

/// Keeps the first `limit` candidates (the request's limit).
pub struct Truncate;

impl Selector for Truncate {
    fn select(&self, q: &Query, c: &mut Vec<Candidate>) {
        c.truncate(q.limit);
    }
}

/// Mixes sources into the final `limit`, as Twitter's home mixer aims at a share of
/// in-network posts: up to `in_network_share` of the slots go to the best in-network
/// candidates, the rest to the best of the other sources; a short side leaves its slots
/// to the other. The chosen ones keep the current (score) order.
pub struct Blend {
    pub in_network_share: f64,
}

impl Selector for Blend {
    fn select(&self, q: &Query, c: &mut Vec<Candidate>) {
        let limit = q.limit.min(c.len());
        let quota = ((q.limit as f64) * self.in_network_share).ceil() as usize;
        let inn = c.iter().filter(|x| x.source == "in_network").count();
        let take_in = quota.min(inn).max(limit.saturating_sub(c.len() - inn));
        let take_out = limit - take_in.min(limit);
        let (mut got_in, mut got_out) = (0, 0);
        c.retain(|x| {
            let slot = if x.source == "in_network" {
                &mut got_in
            } else {
                &mut got_out
            };
            let cap = if x.source == "in_network" {
                take_in
            } else {
                take_out
            };
            *slot += 1;
            *slot <= cap
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_proto::trace::TraceContext;

    fn q(limit: usize) -> Query {
        Query {
            user_id: 1,
            user: Default::default(),
            user_lang: 0,
            now_ms: 0,
            limit,
            seen: Default::default(),
            deadline: tokio::time::Instant::now(),
            trace: TraceContext::new_root(),
            rank: None,
        }
    }

    fn mixed(sources: &[&'static str]) -> Vec<Candidate> {
        sources
            .iter()
            .enumerate()
            .map(|(i, s)| Candidate::new(i as u64, i as u64, s, 0.0))
            .collect()
    }

    fn ids(v: &[Candidate]) -> Vec<u64> {
        v.iter().map(|x| x.id).collect()
    }

    #[test]
    fn blend_gives_in_network_its_share_and_keeps_order() {
        let all = mixed(&[
            "trending",
            "trending",
            "trending",
            "in_network",
            "trending",
            "in_network",
        ]);
        let mut v = all.clone();
        Blend {
            in_network_share: 0.5,
        }
        .select(&q(4), &mut v);
        assert_eq!(ids(&v), [0, 1, 3, 5]);
        // Too few in-network: the others fill the slots.
        let mut v = all.clone();
        Blend {
            in_network_share: 0.9,
        }
        .select(&q(4), &mut v);
        assert_eq!(ids(&v), [0, 1, 3, 5]);
        let mut v = all.clone();
        Blend {
            in_network_share: 0.0,
        }
        .select(&q(4), &mut v);
        assert_eq!(ids(&v), [0, 1, 2, 4]);
        // Too few of the others: in-network fills them.
        let mut v = mixed(&["in_network", "trending", "in_network", "in_network"]);
        Blend {
            in_network_share: 0.25,
        }
        .select(&q(3), &mut v);
        assert_eq!(ids(&v), [0, 1, 2]);
        let mut v = all;
        Truncate.select(&q(2), &mut v);
        assert_eq!(ids(&v), [0, 1]);
    }
}
