//! Partition snapshots (--snapshot-dir): a restarted shard loads its snapshot instead of
//! replaying the source and answers exactly as before; a damaged snapshot is rebuilt over;
//! with the live stream a restarted shard resumes where its snapshot left the stream,
//! without applying an event twice.

use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, plain, scratch_dir, Cluster};
use std::time::{Duration, Instant};

/// Waits until shard process `k`'s log has a line containing `what`.
async fn wait_log(c: &Cluster, k: usize, what: &str) -> String {
    let t0 = Instant::now();
    loop {
        let log = plain(&std::fs::read_to_string(&c.shards[k].log).unwrap_or_default());
        if log.contains(what) {
            return log;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no {what:?} in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn full_answer(c: &Cluster, req: &RankRequest) -> shardrank_proto::v1::RankResponse {
    let t0 = Instant::now();
    loop {
        if let Ok(mut client) = tonic::transport::Channel::from_shared(c.url.clone())
            .unwrap()
            .connect()
            .await
            .map(shardrank_proto::v1::coordinator_client::CoordinatorClient::new)
        {
            if let Ok(r) = client.rank(req.clone()).await {
                let r = r.into_inner();
                if r.missing_shards.is_empty() {
                    return r;
                }
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no full answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_loads_its_snapshot_and_answers_the_same() {
    let dir = scratch_dir("snapshots");
    let d = dir.to_str().unwrap().to_string();
    let mut c =
        Cluster::start_full(2, 1, &["--corpus", "tiny"], &["--snapshot-dir", &d], &[]).await;
    let facts = Facts::of("tiny", 42);
    let req = RankRequest {
        user_id: facts.users[4],
        candidate_ids: facts.tweets[..5000].to_vec(),
        top_k: 50,
        ..Default::default()
    };
    let before = full_answer(&c, &req).await;
    for k in 0..2 {
        wait_log(&c, k, "snapshot written").await;
        assert!(dir.join(format!("shard-{k}-of-2.snap")).exists());
    }

    // kill -9, restart: loaded from the snapshot, the same answer.
    c.kill_shard(0);
    c.restart_shard(0);
    let log = wait_log(&c, 0, "partition loaded").await;
    assert!(log.contains("from_snapshot=true"), "{log}");
    let after = full_answer(&c, &req).await;
    assert_eq!(after.candidates, before.candidates);

    // A damaged snapshot: refused (checksum), rebuilt from the source, written anew.
    let file = dir.join("shard-1-of-2.snap");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();
    c.kill_shard(1);
    c.restart_shard(1);
    let log = wait_log(&c, 1, "partition loaded").await;
    assert!(
        log.contains("snapshot unusable") && log.contains("from_snapshot=false"),
        "{log}"
    );
    assert!(log.contains("snapshot written"), "{log}");
    assert_eq!(full_answer(&c, &req).await.candidates, before.candidates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_live_stream_a_restarted_shard_resumes_without_applying_twice() {
    let dir = scratch_dir("live-snapshots");
    let d = dir.to_str().unwrap().to_string();
    let mut c = Cluster::start_full(
        2,
        1,
        &["--corpus", "tiny", "--live-events-per-sec", "400"],
        &["--snapshot-dir", &d, "--snapshot-interval-secs", "1"],
        &[],
    )
    .await;
    // A snapshot taken while the stream runs (after the first one at load).
    let t0 = Instant::now();
    while plain(&std::fs::read_to_string(&c.shards[0].log).unwrap())
        .matches("snapshot written")
        .count()
        < 2
    {
        assert!(t0.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill_shard(0);
    c.restart_shard(0);
    let log = wait_log(&c, 0, "partition loaded").await;
    assert!(log.contains("from_snapshot=true"), "{log}");
    let position: u64 = log
        .split("live_position=")
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(position > 0, "{log}");
    // The stream goes on from there: new posts arrive, none is applied a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    let applied = metric(
        &m,
        "shardrank_shard_events_applied_total{type=\"new_tweet\"}",
    )
    .unwrap_or(0.0);
    assert!(applied > 0.0, "{m}");
    assert_eq!(
        metric(&m, "shardrank_shard_duplicate_posts"),
        Some(0.0),
        "{m}"
    );
}
