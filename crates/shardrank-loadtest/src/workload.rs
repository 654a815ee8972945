//! The standard workloads (bench/WORKLOADS.md) and the requests they send.
//!
//! Requests are drawn once, before the run, and kept encoded: a 100k-candidate request is
//! 900 KB of protobuf, and drawing and encoding it on every send would make the client,
//! not the server, the bottleneck. They are then sent round-robin from the pool.

use bytes::Bytes;
use prost::Message;
use shardrank_core::corpus::{generate, CorpusSpec};
use shardrank_core::events::Event;
use shardrank_core::rng::Rng;
use shardrank_proto::v1::{RankRequest, TimelineRequest};
use std::io::BufRead;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    Rank,
    Timeline,
}

impl Rpc {
    pub fn path(&self) -> &'static str {
        match self {
            Rpc::Rank => "/shardrank.v1.Coordinator/Rank",
            Rpc::Timeline => "/shardrank.v1.Coordinator/Timeline",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    pub id: &'static str,
    pub rpc: Rpc,
    pub candidates: usize,
    pub top_k: u32,
}

pub const WORKLOADS: [Workload; 4] = [
    Workload {
        id: "rank-1k",
        rpc: Rpc::Rank,
        candidates: 1_000,
        top_k: 100,
    },
    Workload {
        id: "rank-10k",
        rpc: Rpc::Rank,
        candidates: 10_000,
        top_k: 100,
    },
    Workload {
        id: "rank-100k",
        rpc: Rpc::Rank,
        candidates: 100_000,
        top_k: 100,
    },
    Workload {
        id: "timeline",
        rpc: Rpc::Timeline,
        candidates: 0,
        top_k: 20,
    },
];

/// Parses a comma-separated list of workload ids.
pub fn parse_list(s: &str) -> Result<Vec<Workload>, String> {
    s.split(',')
        .map(str::trim)
        .map(|id| {
            WORKLOADS
                .iter()
                .copied()
                .find(|w| w.id == id)
                .ok_or_else(|| {
                    let known: Vec<&str> = WORKLOADS.iter().map(|w| w.id).collect();
                    format!(
                        "--workload: unknown workload {id:?}; known: {}",
                        known.join(", ")
                    )
                })
        })
        .collect()
}

/// What requests are drawn from.
pub struct Universe {
    pub tweets: Vec<u64>,
    /// Users in popularity order (index 0 most popular); empty: random (cold-start) ids.
    pub users: Vec<u64>,
}

impl Universe {
    pub fn from_corpus(spec: &CorpusSpec) -> Universe {
        let (mut tweets, mut users) = (Vec::with_capacity(spec.tweets as usize), Vec::new());
        generate(spec, |e| match e {
            Event::NewTweet(t) => tweets.push(t.id),
            Event::User(u) => users.push(u.user_id),
            _ => {}
        });
        Universe { tweets, users }
    }

    /// One decimal id per line; blank lines are skipped; anything else is an error
    /// naming the line.
    pub fn from_ids_file(path: &Path) -> Result<Universe, String> {
        let f =
            std::fs::File::open(path).map_err(|e| format!("--ids-file {}: {e}", path.display()))?;
        let mut tweets = Vec::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| format!("--ids-file {}: {e}", path.display()))?;
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            tweets.push(t.parse::<u64>().map_err(|_| {
                format!(
                    "--ids-file {} line {}: {t:?} is not an unsigned 64-bit id",
                    path.display(),
                    i + 1
                )
            })?);
        }
        if tweets.is_empty() {
            return Err(format!("--ids-file {}: no ids", path.display()));
        }
        Ok(Universe {
            tweets,
            users: Vec::new(),
        })
    }

    fn user(&self, rng: &mut Rng) -> u64 {
        if self.users.is_empty() {
            rng.next_u64()
        } else {
            // Popular users repeat, as on a real timeline service.
            self.users[rng.zipf(self.users.len() as u64, 0.8) as usize]
        }
    }
}

/// `n` encoded requests of workload `w`.
pub fn build_pool(w: &Workload, u: &Universe, n: usize, seed: u64) -> Vec<Bytes> {
    let mut rng = Rng::fork(seed, w.candidates as u64 ^ w.top_k as u64);
    (0..n)
        .map(|_| {
            let user_id = u.user(&mut rng);
            let bytes = match w.rpc {
                Rpc::Rank => RankRequest {
                    user_id,
                    candidate_ids: (0..w.candidates)
                        .map(|_| u.tweets[rng.below(u.tweets.len() as u64) as usize])
                        .collect(),
                    top_k: w.top_k,
                    ..Default::default()
                }
                .encode_to_vec(),
                Rpc::Timeline => TimelineRequest {
                    user_id,
                    limit: w.top_k,
                    ..Default::default()
                }
                .encode_to_vec(),
            };
            Bytes::from(bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lists() {
        let ws = parse_list("rank-1k, rank-100k").unwrap();
        assert_eq!(
            ws.iter().map(|w| w.candidates).collect::<Vec<_>>(),
            vec![1_000, 100_000]
        );
        let err = parse_list("rank-1k,rank-2k").unwrap_err();
        assert!(err.contains("rank-2k") && err.contains("rank-10k"), "{err}");
    }

    #[test]
    fn pool_requests_decode_to_the_workload() {
        let u = Universe {
            tweets: (1..=500).collect(),
            users: vec![7, 8, 9],
        };
        let w = parse_list("rank-1k").unwrap()[0];
        let pool = build_pool(&w, &u, 3, 1);
        assert_eq!(pool.len(), 3);
        for b in &pool {
            let r = RankRequest::decode(b.clone()).unwrap();
            assert_eq!(r.candidate_ids.len(), 1000);
            assert_eq!(r.top_k, 100);
            assert!(r.candidate_ids.iter().all(|id| (1..=500).contains(id)));
            assert!([7, 8, 9].contains(&r.user_id));
        }
        assert_eq!(build_pool(&w, &u, 3, 1), pool, "deterministic");
    }

    #[test]
    fn ids_file_errors_name_the_line() {
        let dir = std::env::temp_dir().join(format!("ids-{}", std::process::id()));
        std::fs::write(&dir, "1\n\n2\nx3\n").unwrap();
        let err = Universe::from_ids_file(&dir).err().unwrap();
        assert!(err.contains("line 4"), "{err}");
        std::fs::write(&dir, "1\n\n2\n").unwrap();
        assert_eq!(Universe::from_ids_file(&dir).unwrap().tweets, vec![1, 2]);
        let _ = std::fs::remove_file(dir);
    }
}
