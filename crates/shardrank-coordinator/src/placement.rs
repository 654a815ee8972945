//! How many candidates each shard heavy-scores in the first round.
//!
//! The answer needs the global top H by light score heavy-scored. Asking every shard
//! for its local top H is exact but heavy-scores N x H candidates. Instead each shard
//! gets its expected share of the top H plus a safety margin, as Vespa's
//! top-k-probability does: if the top H were spread over shards in proportion to their
//! candidates, shard i's share is binomial(H, p_i) with p_i = n_i / n, so
//! `H p + 3 sqrt(H p (1 - p))` covers it in all but about 1 request in 700. When a share
//! was too small, [`crate::merge`] sees it and asks that shard again; the answer stays
//! exact either way, the margin only decides how often a second round happens.

/// Extra candidates on top of the binomial bound: cheap, and it keeps tiny shares safe.
const SLACK: f64 = 4.0;
/// Standard deviations of margin.
const Z: f64 = 3.0;

/// The first-round depth for each shard, given how many candidates each was sent and
/// the global heavy depth `h`. A shard sent nothing gets 0 (and is not called).
pub fn first_round(counts: &[usize], h: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&n| {
            if n == 0 {
                return 0;
            }
            if total <= h {
                return n;
            }
            let p = n as f64 / total as f64;
            let hf = h as f64;
            let m = (hf * p + Z * (hf * p * (1.0 - p)).sqrt() + SLACK).ceil() as usize;
            m.clamp(1, h).min(n)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_requests_take_everything() {
        assert_eq!(first_round(&[3, 0, 5], 1000), vec![3, 0, 5]);
    }

    #[test]
    fn even_spread_asks_for_a_bounded_share() {
        let m = first_round(&[25_000; 4], 1000);
        // 250 expected, 3 sigma = 41, plus slack.
        assert!(m.iter().all(|&x| x == 296), "{m:?}");
        assert!(m.iter().sum::<usize>() < 1300);
    }

    #[test]
    fn one_shard_is_asked_for_exactly_h() {
        assert_eq!(first_round(&[100_000], 1000), vec![1000]);
    }

    #[test]
    fn never_more_than_sent_or_than_h() {
        let m = first_round(&[10, 5000, 50_000], 300);
        assert!((1..=10).contains(&m[0]), "{m:?}");
        assert!(m[1] <= 300 && m[2] <= 300 && m[1] >= 1);
    }
}
