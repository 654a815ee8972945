//! `shardrank up`: start, health, a Rank request, a dead shard reported, a clean stop
//! with no process left behind.

use shardrank_proto::v1::RankRequest;
use shardrank_tests::{bin, scratch_dir};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie has no cmdline; a running process does.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| !c.is_empty())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_cluster_reports_deaths_and_stops_cleanly() {
    let logs = scratch_dir("up");
    let mut up = Command::new(bin("shardrank"))
        .args([
            "up",
            "--shards",
            "3",
            "--corpus",
            "tiny",
            "--base-port",
            "0",
            "--log-dir",
            logs.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let (mut pids, mut target) = (Vec::new(), String::new());
    let t0 = Instant::now();
    while target.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no 'cluster up' line"
        );
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "shardrank up ended early"
        );
        if let Some(p) = line.split("(pid ").nth(1) {
            pids.push(p.split(')').next().unwrap().parse::<u32>().unwrap());
        }
        if line.starts_with("cluster up") {
            target = line
                .split("coordinator ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string();
        }
    }
    assert_eq!(pids.len(), 4, "3 shards and a coordinator");
    assert!(pids.iter().all(|&p| alive(p)));

    let facts = shardrank_tests::corpus_facts::Facts::of("tiny", 42);
    let mut client = shardrank_proto::v1::coordinator_client::CoordinatorClient::new(
        shardrank_tests::channel(&target).await,
    );
    let r = client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: facts.tweets[..500].to_vec(),
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.candidates.len(), 10);

    // A shard that dies is reported, and the cluster answers without it.
    assert!(Command::new("kill")
        .args(["-9", &pids[1].to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: facts.tweets[..500].to_vec(),
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.missing_shards, vec![1]);

    assert!(Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = up.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "shardrank up did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("shard 1 exited"), "{err}");
    for p in pids {
        assert!(!alive(p), "process {p} left behind");
    }
}

#[test]
fn up_refuses_what_it_cannot_do() {
    let (code, _, err) = shardrank_tests::run(
        "shardrank",
        &["up", "--replicas", "2", "--corpus", "tiny"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("--replicas 2"), "{err}");
    let (code, _, err) = shardrank_tests::run(
        "shardrank",
        &["up", "--shards", "0"],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("--shards"), "{err}");
}
