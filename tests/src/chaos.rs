//! Fault scenarios under load: a cluster on loopback, `shardrank-loadtest` sending an
//! open-loop rate before, during and after a fault. The integration tests
//! (`tests/chaos.rs`) assert each scenario's outcome; `make chaos` (the `chaos` binary)
//! runs the same scenarios with the standard corpus and prints them.

use crate::{http_get, peak_rss, run, scratch_dir, Cluster};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the scenarios run with.
#[derive(Clone, Debug)]
pub struct Setup {
    pub corpus: &'static str,
    pub workload: &'static str,
    /// Open-loop rate of the normal load (requests per second).
    pub rate: f64,
    /// Length of each measured phase.
    pub phase: Duration,
    /// Client deadline of every request (grpc-timeout).
    pub deadline: Duration,
    /// How long a replica is stopped in the stall scenario.
    pub stall: Duration,
    /// How long the overload lasts.
    pub overload: Duration,
}

impl Setup {
    /// Small and quick, for `make test`.
    pub fn test() -> Self {
        Setup {
            corpus: "tiny",
            workload: "rank-1k",
            rate: 100.0,
            phase: Duration::from_secs(2),
            deadline: Duration::from_millis(500),
            stall: Duration::from_secs(5),
            overload: Duration::from_secs(4),
        }
    }
}

/// One scenario's figures: a load-test report per phase, and coordinator counters.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub cluster: String,
    pub phases: Vec<(String, Value)>,
    /// Counter deltas over the scenario (hedges, retries, ejections, shed requests).
    pub counters: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// Restart scenarios: time from the restart to the first full answer.
    pub recovery: Option<Duration>,
    /// Overload: the coordinator's peak memory before and after the overload (bytes).
    pub peak_rss: Option<(u64, u64)>,
}

impl Outcome {
    /// An outcome of phases named and measured in order, nothing else noted yet.
    fn of(
        name: impl Into<String>,
        cluster: &str,
        phases: [(&str, Value); 3],
        counters: BTreeMap<String, f64>,
    ) -> Self {
        Outcome {
            name: name.into(),
            cluster: cluster.into(),
            phases: phases
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            counters,
            notes: Vec::new(),
            recovery: None,
            peak_rss: None,
        }
    }

    pub fn phase(&self, name: &str) -> &Value {
        &self
            .phases
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no phase {name} in {}", self.name))
            .1
    }

    /// A markdown table: requests, errors by code, partial answers, p50/p99 per phase.
    pub fn table(&self) -> String {
        let mut s = format!("### {} ({})\n\n", self.name, self.cluster);
        s.push_str("| phase | rate | requests | errors (by code) | partial | p50 ms | p99 ms | max ms |\n|---|---:|---:|---|---:|---:|---:|---:|\n");
        for (name, r) in &self.phases {
            let codes = r["errors_by_code"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            s.push_str(&format!(
                "| {name} | {:.0} | {} | {} {} | {} | {:.1} | {:.1} | {:.1} |\n",
                r["concurrency_or_rate"].as_f64().unwrap_or(0.0),
                r["requests"],
                r["errors"],
                if codes.is_empty() {
                    String::new()
                } else {
                    format!("({codes})")
                },
                r["partial"],
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
            ));
        }
        if !self.counters.is_empty() {
            let c: Vec<String> = self
                .counters
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!("\ncoordinator: {}\n", c.join(", ")));
        }
        for n in &self.notes {
            s.push_str(&format!("\n{n}\n"));
        }
        s
    }
}

/// Runs `shardrank-loadtest` in open loop against `url` for `duration`, on a thread;
/// the handle gives its JSON report.
pub fn load(
    url: &str,
    setup: &Setup,
    rate: f64,
    duration: Duration,
) -> std::thread::JoinHandle<Value> {
    let dir = scratch_dir("chaos-load");
    let json = dir.join("run.json");
    let args: Vec<String> = [
        "--target",
        url,
        "--workload",
        setup.workload,
        "--corpus",
        setup.corpus,
        "--rate",
        &format!("{rate}"),
        "--duration",
        &format!("{}ms", duration.as_millis()),
        "--warmup",
        "0s",
        "--timeout",
        &format!("{}ms", setup.deadline.as_millis()),
        "--json",
        json.to_str().unwrap(),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(
            "shardrank-loadtest",
            &a,
            duration + Duration::from_secs(120),
        );
        assert_eq!(code, Some(0), "load test failed:\n{out}\n{err}");
        let text = std::fs::read_to_string(&json).unwrap();
        let _keep = dir;
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    })
}

/// Closed-loop throughput at concurrency 8 over `d`: what the cluster sustains.
pub fn capacity(url: &str, setup: &Setup, d: Duration) -> f64 {
    let dir = scratch_dir("chaos-capacity");
    let json = dir.join("run.json");
    let (code, out, err) = run(
        "shardrank-loadtest",
        &[
            "--target",
            url,
            "--workload",
            setup.workload,
            "--corpus",
            setup.corpus,
            "--concurrency",
            "8",
            "--duration",
            &format!("{}ms", d.as_millis()),
            "--warmup",
            "500ms",
            "--json",
            json.to_str().unwrap(),
            "--quiet",
        ],
        d + Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    r["qps"].as_f64().unwrap()
}

/// The sum of every series of a metric family (`name` with its `_total` suffix).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const COUNTERS: [&str; 6] = [
    "shardrank_coordinator_shard_retries_total",
    "shardrank_coordinator_shard_hedges_total",
    "shardrank_coordinator_shard_hedges_won_total",
    "shardrank_coordinator_replica_ejections_total",
    "shardrank_coordinator_requests_shed_total",
    "shardrank_coordinator_missing_shards_total",
];

async fn counters(c: &Cluster) -> BTreeMap<String, f64> {
    let (_, text) = http_get(&format!("{}/metrics", c.admin)).await;
    COUNTERS
        .iter()
        .map(|n| {
            let short = n
                .trim_start_matches("shardrank_coordinator_")
                .trim_end_matches("_total");
            (short.to_string(), metric_sum(&text, n))
        })
        .collect()
}

fn delta(after: BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .collect()
}

/// Requests the coordinator has answered so far, whatever their outcome.
async fn answered(c: &Cluster) -> f64 {
    let (_, text) = http_get(&format!("{}/metrics", c.admin)).await;
    metric_sum(&text, "shardrank_coordinator_requests_total")
}

/// A phase of load, with `fault` applied to the cluster `at` into it. "Into it" counts
/// from the first answered request: the load test first draws its ids from the corpus
/// (a second or more for the standard one), and a fault that comes before any traffic
/// (a replica ejected by its health check before the first call) tests nothing.
async fn phase_with(
    c: &mut Cluster,
    setup: &Setup,
    duration: Duration,
    at: Duration,
    fault: impl FnOnce(&mut Cluster),
) -> Value {
    let before = answered(c).await;
    let h = load(&c.url, setup, setup.rate, duration);
    let t0 = Instant::now();
    while answered(c).await <= before && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(at).await;
    fault(c);
    tokio::task::spawn_blocking(move || h.join().unwrap())
        .await
        .unwrap()
}

/// A phase of load at `rate`, no fault.
async fn phase(c: &Cluster, setup: &Setup, rate: f64, duration: Duration) -> Value {
    let h = load(&c.url, setup, rate, duration);
    tokio::task::spawn_blocking(move || h.join().unwrap())
        .await
        .unwrap()
}

/// Polls Rank until an answer has no missing shard; the time it took.
async fn until_full(c: &Cluster, setup: &Setup, limit: Duration) -> Option<Duration> {
    let facts = crate::corpus_facts::Facts::of(setup.corpus, 42);
    let ids: Vec<u64> = facts.tweets.iter().copied().take(2000).collect();
    let t0 = Instant::now();
    let mut client = c.client().await;
    while t0.elapsed() < limit {
        let r = client
            .rank(shardrank_proto::v1::RankRequest {
                user_id: facts.users[0],
                candidate_ids: ids.clone(),
                top_k: 10,
                ..Default::default()
            })
            .await;
        if matches!(&r, Ok(r) if r.get_ref().missing_shards.is_empty()) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn data(setup: &Setup) -> [&'static str; 2] {
    ["--corpus", setup.corpus]
}

/// kill -9 one of 4 shards (one replica each) under load, then restart it.
pub async fn kill_shard(setup: &Setup) -> Outcome {
    let mut c = Cluster::start_replicated(4, 1, &data(setup), &[]).await;
    let c0 = counters(&c).await;
    let before = phase(&c, setup, setup.rate, setup.phase).await;
    let during = phase_with(&mut c, setup, setup.phase, setup.phase / 4, |c| {
        c.kill_shard(2)
    })
    .await;
    c.restart_shard(2);
    let recovered = until_full(&c, setup, Duration::from_secs(120)).await;
    let after = phase(&c, setup, setup.rate, setup.phase).await;
    Outcome {
        notes: vec![match recovered {
            Some(d) => format!(
                "full answers again {:.2} s after the restart (coordinator untouched)",
                d.as_secs_f64()
            ),
            None => "no full answer within 120 s of the restart".into(),
        }],
        recovery: recovered,
        ..Outcome::of(
            "kill -9 one shard, then restart it",
            "4x1",
            [
                ("before", before),
                ("during", during),
                ("after restart", after),
            ],
            delta(counters(&c).await, &c0),
        )
    }
}

/// kill -9 one replica of one shard (4 shards x 2 replicas) under load.
pub async fn kill_replica(setup: &Setup) -> Outcome {
    let mut c = Cluster::start_replicated(4, 2, &data(setup), &[]).await;
    let c0 = counters(&c).await;
    let before = phase(&c, setup, setup.rate, setup.phase).await;
    let victim = c.replica(1, 0);
    let during = phase_with(&mut c, setup, setup.phase, setup.phase / 4, |c| {
        c.kill_shard(victim)
    })
    .await;
    let after = phase(&c, setup, setup.rate, setup.phase).await;
    Outcome::of(
        "kill -9 one replica",
        "4x2",
        [("before", before), ("during", during), ("after", after)],
        delta(counters(&c).await, &c0),
    )
}

/// SIGSTOP one replica for `setup.stall` under load (a stall, not a crash), then
/// SIGCONT. `hedging` false runs the coordinator with `--hedge-max-ratio 0`.
pub async fn stall_replica(setup: &Setup, hedging: bool) -> Outcome {
    let args: &[&str] = if hedging {
        &[]
    } else {
        &["--hedge-max-ratio", "0"]
    };
    let mut c = Cluster::start_replicated(4, 2, &data(setup), args).await;
    let c0 = counters(&c).await;
    let before = phase(&c, setup, setup.rate, setup.phase).await;
    // The replica of shard 1 that is taking its calls now: with two replicas the
    // balancer sends each call to the cheaper one, so stopping the other would test
    // nothing (its calls would be only the hedges sent to it, and those lose).
    let served = |c: &Cluster| {
        let urls: Vec<String> = (0..2)
            .map(|r| format!("{}/metrics", c.shard_admin[c.replica(1, r)]))
            .collect();
        async move {
            let mut n = Vec::new();
            for u in urls {
                n.push(metric_sum(
                    &http_get(&u).await.1,
                    "shardrank_shard_requests_total",
                ));
            }
            n
        }
    };
    let n0 = served(&c).await;
    phase(&c, setup, setup.rate, Duration::from_millis(500)).await;
    let n1 = served(&c).await;
    let busier = u32::from(n1[1] - n0[1] > n1[0] - n0[0]);
    let victim = c.replica(1, busier);
    // The stall lasts from the first request of the phase to its end.
    let during = phase_with(&mut c, setup, setup.stall, Duration::ZERO, |c| {
        c.signal_shard(victim, "STOP")
    })
    .await;
    c.signal_shard(victim, "CONT");
    let after = phase(&c, setup, setup.rate, setup.phase).await;
    Outcome::of(
        format!(
            "SIGSTOP one replica for {} s, hedging {}",
            setup.stall.as_secs(),
            if hedging { "on" } else { "off" }
        ),
        "4x2",
        [("before", before), ("during", during), ("after", after)],
        delta(counters(&c).await, &c0),
    )
}

/// 10x the sustainable rate for `setup.overload`, with normal load before and after.
pub async fn overload(setup: &Setup) -> Outcome {
    let c = Cluster::start_replicated(4, 1, &data(setup), &[]).await;
    let cap = capacity(&c.url, setup, Duration::from_secs(2));
    let normal = (cap * 0.5).max(1.0);
    let c0 = counters(&c).await;
    let pid = c.coordinator.child.id();
    let before = phase(&c, setup, normal, setup.phase).await;
    let rss_before = peak_rss(pid).unwrap_or(0);
    let during = phase(&c, setup, cap * 10.0, setup.overload).await;
    let rss_during = peak_rss(pid).unwrap_or(0);
    let after = phase(&c, setup, normal, setup.phase).await;
    Outcome {
        notes: vec![format!(
            "coordinator peak RSS {:.0} MiB before the overload, {:.0} MiB after it",
            rss_before as f64 / 1048576.0,
            rss_during as f64 / 1048576.0
        )],
        peak_rss: Some((rss_before, rss_during)),
        ..Outcome::of(
            format!(
                "10x the sustainable rate ({cap:.0}/s) for {} s",
                setup.overload.as_secs()
            ),
            "4x1",
            [("before", before), ("10x", during), ("after", after)],
            delta(counters(&c).await, &c0),
        )
    }
}
