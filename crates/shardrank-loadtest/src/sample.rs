//! `--stats-sample N`: after a run, N requests of the same workload ask for their own
//! stats (`include_stats`), one after the other, and the load test prints where their
//! time went: routing, merge, each shard's latency and server time, retries, hedges and
//! coverage for Rank; each pipeline component for Timeline (medians over the sample).

use crate::workload::{build_pool, Rpc, Universe, Workload};
use prost::Message;
use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use shardrank_proto::v1::{RankRequest, TimelineRequest};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use tonic::transport::Channel;

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sends `n` requests of `w` with their stats asked for; the printable summary.
pub async fn sample(
    ch: Channel,
    w: &Workload,
    u: &Universe,
    n: usize,
    seed: u64,
    timeout: Duration,
) -> Result<String, String> {
    let mut client = CoordinatorClient::new(ch).max_decoding_message_size(64 << 20);
    let pool = build_pool(w, u, n, seed ^ 0x5A5A);
    let mut out = format!("stats of {n} sampled {} requests (medians):\n", w.id);
    match w.rpc {
        Rpc::Rank => {
            let (mut route, mut merge, mut cover) = (Vec::new(), Vec::new(), Vec::new());
            let mut per_shard: BTreeMap<u32, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            let (mut retries, mut hedges, mut hedges_won, mut second) = (0, 0, 0, 0);
            for bytes in pool {
                let mut req = RankRequest::decode(bytes).map_err(|e| e.to_string())?;
                req.include_stats = true;
                let mut r = tonic::Request::new(req);
                r.set_timeout(timeout);
                let resp = client
                    .rank(r)
                    .await
                    .map_err(|s| format!("sampled Rank: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let st = resp.stats.unwrap_or_default();
                route.push(st.route_ms);
                merge.push(st.merge_ms);
                cover.push(st.coverage);
                for c in st.shard_calls {
                    let e = per_shard.entry(c.shard).or_default();
                    e.0.push(c.latency_ms);
                    e.1.push(c.server_ms);
                    retries += c.retried as u32;
                    hedges += c.hedged as u32;
                    hedges_won += c.hedge_won as u32;
                    second += c.second_round as u32;
                }
            }
            let _ = writeln!(
                out,
                "  route {:.2} ms, merge {:.2} ms, coverage {:.2}; second-round calls {second}, retries {retries}, hedges {hedges} ({hedges_won} won)",
                median(&mut route),
                median(&mut merge),
                median(&mut cover)
            );
            for (shard, (mut lat, mut server)) in per_shard {
                let _ = writeln!(
                    out,
                    "  shard {shard}: call {:.2} ms at the coordinator, {:.2} ms in the shard",
                    median(&mut lat),
                    median(&mut server)
                );
            }
        }
        Rpc::Timeline => {
            let mut per: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
            for bytes in pool {
                let mut req = TimelineRequest::decode(bytes).map_err(|e| e.to_string())?;
                req.include_stats = true;
                let mut r = tonic::Request::new(req);
                r.set_timeout(timeout);
                let resp = client
                    .timeline(r)
                    .await
                    .map_err(|s| format!("sampled Timeline: {:?}: {}", s.code(), s.message()))?
                    .into_inner();
                for (i, c) in resp
                    .stats
                    .unwrap_or_default()
                    .components
                    .into_iter()
                    .enumerate()
                {
                    if per.len() <= i {
                        per.push((format!("{} ({})", c.name, c.kind), Vec::new(), Vec::new()));
                    }
                    per[i].1.push(c.latency_ms);
                    per[i].2.push(c.candidates_out as f64);
                }
            }
            for (name, mut ms, mut outn) in per {
                let _ = writeln!(
                    out,
                    "  {name:<30} {:>8.2} ms  {:>7.0} candidates out",
                    median(&mut ms),
                    median(&mut outn)
                );
            }
        }
    }
    Ok(out)
}
