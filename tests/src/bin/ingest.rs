//! `make ingest-bench`: the real-time ingestion figures on the standard corpus, 4x1,
//! release binaries (SHARDRANK_BIN_DIR=target/release), with rank-10k load running.
//!
//! - Built-in live stream at a few rates: what each shard applies per second and the
//!   freshness (an event's due time to its being applied and rankable, the shards'
//!   `ingest_delay` histogram), with the ranking p99 meanwhile.
//! - Kafka (a noida-db broker on loopback): end-to-end freshness, from producing a new
//!   post to Coordinator.Rank returning it (p50, p99 over single posts); then a burst of
//!   engagement as fast as the producer sends it: events applied per second per shard
//!   until the lag is back to 0, with the ranking p99 meanwhile.

use serde_json::Value;
use shardrank_core::events::{Engagement, EngagementKind, Event};
use shardrank_core::routing::shard_of;
use shardrank_proto::v1::RankRequest;
use shardrank_tests::chaos::{self, metric_sum, Setup};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::kafka::{new_post, Broker};
use shardrank_tests::{http_get, Cluster};
use std::time::{Duration, Instant};

/// Cumulative buckets (upper bound, count) of a histogram, summed over `texts`.
fn buckets(texts: &[String], name: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for t in texts {
        for l in t
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        {
            let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            let le = match le {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or(f64::NAN),
                None => continue,
            };
            let n: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match out.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += n,
                None => out.push((le, n)),
            }
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The q-quantile of the observations between two scrapes, interpolated within its
/// bucket as Prometheus' histogram_quantile does (seconds).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let b = before.iter().find(|(x, _)| *x == le).map_or(0.0, |x| x.1);
            (le, n - b)
        })
        .collect();
    let total = delta.last().map_or(0.0, |x| x.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let within = if n > prev.1 {
                (rank - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, n);
    }
    prev.0
}

async fn scrape(c: &Cluster) -> Vec<String> {
    let mut v = Vec::new();
    for a in &c.shard_admin {
        v.push(http_get(&format!("{a}/metrics")).await.1);
    }
    v
}

fn applied(texts: &[String]) -> Vec<f64> {
    texts
        .iter()
        .map(|t| metric_sum(t, "shardrank_shard_events_applied_total"))
        .collect()
}

fn setup() -> Setup {
    Setup {
        corpus: "standard",
        workload: "rank-10k",
        rate: 100.0,
        phase: Duration::from_secs(10),
        deadline: Duration::from_millis(500),
        stall: Duration::ZERO,
        overload: Duration::ZERO,
    }
}

fn p99(load: &Value) -> String {
    format!(
        "{:.1} ms ({} requests, {} errors)",
        load["p99_ms"].as_f64().unwrap_or(f64::NAN),
        load["requests"],
        load["errors"]
    )
}

async fn built_in(rate: f64) {
    let r = rate.to_string();
    let c = Cluster::start(4, &["--corpus", "standard", "--live-events-per-sec", &r]).await;
    let s = setup();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = scrape(&c).await;
    let t0 = Instant::now();
    let load = chaos::load(&c.url, &s, s.rate, s.phase).join().unwrap();
    let after = scrape(&c).await;
    let secs = t0.elapsed().as_secs_f64();
    let name = "shardrank_shard_ingest_delay_seconds";
    let (b, a) = (buckets(&before, name), buckets(&after, name));
    let per_shard: Vec<String> = applied(&after)
        .iter()
        .zip(applied(&before))
        .map(|(x, y)| format!("{:.0}", (x - y) / secs))
        .collect();
    println!(
        "| built-in stream {rate:.0}/s | {} | {:.1} ms | {:.1} ms | {} |",
        per_shard.join(" / "),
        quantile(&b, &a, 0.5) * 1e3,
        quantile(&b, &a, 0.99) * 1e3,
        p99(&load)
    );
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

async fn kafka() {
    let broker = Broker::start();
    let c = Cluster::start(
        4,
        &["--corpus", "standard", "--kafka-brokers", &broker.addr],
    )
    .await;
    let facts = Facts::of("standard", 42);
    let producer =
        shardrank_kafka::EventProducer::new(&broker.addr, "tweet_events", "user_events", 4)
            .unwrap();
    let now = shardrank_core::corpus::CORPUS_END_MS;
    let mut client = c.client().await;

    // End to end: one new post at a time, produced, then asked for until Rank has it.
    let before = scrape(&c).await;
    let mut took = Vec::new();
    for k in 0..200u64 {
        let id = 9_500_000_000_000 + k;
        let e = new_post(
            id,
            facts.users[k as usize % facts.users.len()],
            now + k as i64,
        );
        // Not flushed: waiting for the broker's acknowledgement is not part of freshness
        // (librdkafka sends within linger.ms, 5 ms).
        let t0 = Instant::now();
        producer.send_event(&e).unwrap();
        loop {
            let r = client
                .rank(RankRequest {
                    user_id: facts.users[1],
                    candidate_ids: vec![id],
                    top_k: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if r.candidates.len() == 1 {
                took.push(t0.elapsed().as_secs_f64() * 1e3);
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "post {id} never rankable"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let after = scrape(&c).await;
    let name = "shardrank_shard_ingest_delay_seconds";
    let (b, a) = (buckets(&before, name), buckets(&after, name));
    println!(
        "| Kafka, one post at a time (produce -> Rank returns it) | - | {:.1} ms | {:.1} ms | (server side: p50 {:.1} ms, p99 {:.1} ms) |",
        pct(&mut took, 0.5),
        pct(&mut took, 0.99),
        quantile(&b, &a, 0.5) * 1e3,
        quantile(&b, &a, 0.99) * 1e3,
    );

    // Throughput: a burst of engagement while rank-10k runs.
    let s = setup();
    let n = 400_000usize;
    let before = scrape(&c).await;
    let load = chaos::load(&c.url, &s, s.rate, Duration::from_secs(15));
    let t0 = Instant::now();
    let mut per_shard = [0f64; 4];
    for k in 0..n {
        let tweet = facts.tweets[(k * 7919) % facts.tweets.len()];
        per_shard[shard_of(tweet, 4) as usize] += 1.0;
        producer
            .send_event(&Event::Engagement(Engagement {
                kind: EngagementKind::Like,
                user_id: facts.users[k % facts.users.len()],
                tweet_id: tweet,
                timestamp: now + 1000 + k as i64 / 100,
            }))
            .unwrap();
    }
    producer.raw.flush(Duration::from_secs(60)).unwrap();
    let produced = t0.elapsed().as_secs_f64();
    let mut done = [0f64; 4];
    let want: Vec<f64> = applied(&before)
        .iter()
        .zip(per_shard)
        .map(|(b, n)| b + n)
        .collect();
    while done.contains(&0.0) && t0.elapsed() < Duration::from_secs(120) {
        let now = applied(&scrape(&c).await);
        for i in 0..4 {
            if done[i] == 0.0 && now[i] >= want[i] {
                done[i] = t0.elapsed().as_secs_f64();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load = load.join().unwrap();
    let rates: Vec<String> = (0..4)
        .map(|i| format!("{:.0}", per_shard[i] / done[i]))
        .collect();
    let after = scrape(&c).await;
    let (b, a) = (buckets(&before, name), buckets(&after, name));
    println!(
        "| Kafka burst of {n} likes (producer {:.0}/s) | {} | {:.1} ms | {:.1} ms | {} |",
        n as f64 / produced,
        rates.join(" / "),
        quantile(&b, &a, 0.5) * 1e3,
        quantile(&b, &a, 0.99) * 1e3,
        p99(&load)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| stream | applied per shard (events/s) | freshness p50 | freshness p99 | rank-10k at 100/s: p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for rate in [10_000.0, 100_000.0] {
        built_in(rate).await;
    }
    kafka().await;
}
