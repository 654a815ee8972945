//! One ingestion path: a corpus written by `shardrank gen` (JSON lines or the binary
//! form) and loaded with --events gives exactly the answers of the same corpus generated
//! in-process.

use shardrank_core::rng::Rng;
use shardrank_proto::v1::RankRequest;
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{gen_tiny, scratch_dir, Cluster};
use std::time::Duration;

#[tokio::test]
async fn events_file_and_generator_agree() {
    let dir = scratch_dir("gen");
    let file = dir.join("tiny.jsonl");
    gen_tiny(&file, "json");
    let facts = Facts::of("tiny", 42);
    let lines = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(lines > facts.tweets.len());
    let bin = dir.join("tiny.bin");
    let err = gen_tiny(&bin, "binary");
    assert!(
        err.contains(&format!("wrote {} events", lines - 1)),
        "{err}"
    );

    let file_args = ["--events", file.to_str().unwrap()];
    let bin_args = ["--events", bin.to_str().unwrap()];
    let (from_file, generated, from_bin) = tokio::join!(
        Cluster::start(2, &file_args),
        Cluster::start(3, &["--corpus", "tiny"]),
        Cluster::start(2, &bin_args)
    );
    let (mut a, mut b) = (from_file.client().await, generated.client().await);
    let mut c = from_bin.client().await;
    let mut rng = Rng::new(9);
    for n in [10usize, 1000, 20_000] {
        let user = facts.users[rng.below(facts.users.len() as u64) as usize];
        let req = RankRequest {
            user_id: user,
            candidate_ids: facts.draw(&mut rng, n),
            top_k: 50,
            ..Default::default()
        };
        let x = a.rank(req.clone()).await.unwrap().into_inner();
        let z = c.rank(req.clone()).await.unwrap().into_inner();
        let y = b.rank(req).await.unwrap().into_inner();
        let key = |r: &shardrank_proto::v1::RankResponse| -> Vec<(u64, u32)> {
            r.candidates
                .iter()
                .map(|c| (c.id, c.score.to_bits()))
                .collect()
        };
        assert!(!x.candidates.is_empty());
        assert_eq!(key(&x), key(&y), "n={n}");
        assert_eq!(key(&z), key(&y), "binary, n={n}");
    }
}

/// Malformed lines are skipped, counted and named; every other event is applied, so the
/// cluster answers exactly as one loaded from the clean stream.
#[tokio::test]
async fn malformed_lines_are_skipped_counted_and_nothing_else_is_lost() {
    let dir = scratch_dir("gen-bad");
    let clean = dir.join("tiny.jsonl");
    gen_tiny(&clean, "json");
    let text = std::fs::read_to_string(&clean).unwrap();
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    // 1-based line numbers of the bad lines in the corrupted file.
    lines.insert(9, b"{\"type\":\"like\",\"user_id\":1}".to_vec());
    lines.insert(4999, b"this is not json".to_vec());
    lines.push(b"\xff\xfe{not utf-8}".to_vec());
    let bad_line_numbers = [10, 5000, lines.len()];
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, lines.join(&b'\n')).unwrap();

    let bad_args = ["--events", bad.to_str().unwrap()];
    let (corrupted, generated) = tokio::join!(
        Cluster::start(2, &bad_args),
        Cluster::start(2, &["--corpus", "tiny"])
    );
    let facts = Facts::of("tiny", 42);
    let (mut a, mut b) = (corrupted.client().await, generated.client().await);
    let req = RankRequest {
        user_id: facts.users[5],
        candidate_ids: facts.tweets.clone(),
        top_k: 100,
        ..Default::default()
    };
    let x = a.rank(req.clone()).await.unwrap().into_inner();
    let y = b.rank(req).await.unwrap().into_inner();
    assert_eq!(x.candidates, y.candidates);
    assert_eq!(x.unknown_candidates, 0, "no post lost");

    for (i, admin) in corrupted.shard_admin.iter().enumerate() {
        let (_, m) = shardrank_tests::http_get(&format!("{admin}/metrics")).await;
        assert_eq!(
            shardrank_tests::metric(&m, "shardrank_shard_events_malformed_total"),
            Some(3.0),
            "shard {i}"
        );
        let log = std::fs::read_to_string(&corrupted.shards[i].log).unwrap();
        for n in bad_line_numbers {
            assert!(
                log.contains(&format!("line {n}:")),
                "line {n} not named:\n{log}"
            );
        }
    }
    // The coordinator reads the same stream: it skips and counts the same lines.
    let log = std::fs::read_to_string(&corrupted.coordinator.log).unwrap();
    let plain = shardrank_tests::plain(&log);
    assert!(
        plain.contains("malformed=3") && plain.contains("line 5000:"),
        "{plain}"
    );

    // With --dead-letter-file the skipped lines are kept, as they were, with their place.
    let dead = dir.join("dead.jsonl");
    let port = shardrank_tests::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut shard = shardrank_tests::Proc::spawn(
        "shardrank-shard",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            "none".into(),
            "--events".into(),
            bad.display().to_string(),
            "--dead-letter-file".into(),
            dead.display().to_string(),
        ],
        dir.join("dead-letter-shard.log"),
    );
    shardrank_tests::wait_serving(&url, "", &mut shard, Duration::from_secs(60)).await;
    let kept: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    for (k, n) in bad_line_numbers.iter().enumerate() {
        assert_eq!(kept[k]["line"], *n as u64);
        assert_eq!(kept[k]["source"], bad.display().to_string());
        assert!(!kept[k]["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(kept[1]["raw"], "this is not json");
    assert!(kept[0]["error"].as_str().unwrap().contains("tweet_id"));
}
