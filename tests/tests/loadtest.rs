//! shardrank-loadtest against a real cluster: the report's fields, both loop modes,
//! --ids-file, and bad flags.

use shardrank_tests::{run, scratch_dir, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_open_loop_runs_report_the_workload_fields() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let dir = scratch_dir("loadtest");
    let json = dir.join("runs.jsonl");
    let (url, json_s) = (c.url.clone(), json.to_str().unwrap().to_string());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(
            "shardrank-loadtest",
            &[
                "--target",
                &url,
                "--workload",
                "rank-1k,rank-10k",
                "--corpus",
                "tiny",
                "--concurrency",
                "4",
                "--duration",
                "1s",
                "--warmup",
                "200ms",
                "--cluster",
                "2x1",
                "--json",
                &json_s,
            ],
            T,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("rank-1k (closed loop, concurrency 4)") && out.contains("p99.9"),
        "{out}"
    );
    let url = c.url.clone();
    let json_s = json.to_str().unwrap().to_string();
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(
            "shardrank-loadtest",
            &[
                "--target",
                &url,
                "--workload",
                "rank-1k",
                "--corpus",
                "tiny",
                "--rate",
                "50",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--json",
                &json_s,
            ],
            T,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");

    let runs = json_lines(&json);
    assert_eq!(runs.len(), 3);
    for r in &runs {
        for f in [
            "workload",
            "cluster",
            "mode",
            "concurrency_or_rate",
            "duration_s",
            "requests",
            "errors",
            "partial",
            "qps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
        ] {
            assert!(r.get(f).is_some(), "missing {f} in {r}");
        }
        assert_eq!(r["errors"], 0, "{r}");
        assert_eq!(r["partial"], 0);
        assert!(r["requests"].as_u64().unwrap() > 0);
        assert!(r["p50_ms"].as_f64().unwrap() <= r["p99_ms"].as_f64().unwrap());
        assert!(r["p99_ms"].as_f64().unwrap() <= r["max_ms"].as_f64().unwrap());
    }
    assert_eq!(runs[0]["workload"], "rank-1k");
    assert_eq!(runs[1]["workload"], "rank-10k");
    assert_eq!(runs[0]["cluster"], "2x1");
    assert_eq!(runs[2]["mode"], "open");
    // Open loop at 50/s for 1 s: about 50 requests, whatever the server's speed.
    let n = runs[2]["requests"].as_u64().unwrap();
    assert!((40..=60).contains(&n), "{n} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_file_and_errors_by_code() {
    let mut c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let dir = scratch_dir("idsfile");
    let ids = dir.join("ids.txt");
    let facts = shardrank_tests::corpus_facts::Facts::of("tiny", 42);
    std::fs::write(
        &ids,
        facts
            .tweets
            .iter()
            .map(|t| format!("{t}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let json = dir.join("runs.jsonl");
    let url = c.url.clone();
    let args = |json: &std::path::Path| -> Vec<String> {
        [
            "--target",
            &url,
            "--workload",
            "rank-1k",
            "--ids-file",
            ids.to_str().unwrap(),
            "--concurrency",
            "2",
            "--duration",
            "500ms",
            "--warmup",
            "0s",
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args(&json);
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(
            "shardrank-loadtest",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            T,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(json_lines(&json)[0]["errors"], 0);

    // With a shard gone, answers are partial, and counted as such.
    c.kill_shard(1);
    let json2 = dir.join("partial.jsonl");
    let a = args(&json2);
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        run(
            "shardrank-loadtest",
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            T,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let r = &json_lines(&json2)[0];
    assert!(r["partial"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["partial"], r["requests"], "every answer misses shard 1");
}

#[test]
fn bad_flags_exit_non_zero_with_a_clear_message() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--target",
                "http://127.0.0.1:1",
                "--workload",
                "rank-2k",
                "--concurrency",
                "1",
            ],
            "rank-2k",
        ),
        (&["--target", "http://127.0.0.1:1", "--rate", "0"], "--rate"),
        (
            &["--target", "http://127.0.0.1:1", "--concurrency", "0"],
            "--concurrency",
        ),
        (&["--target", "http://127.0.0.1:1"], "--concurrency C"),
        (
            &["--target", "127.0.0.1:1", "--concurrency", "1"],
            "--target",
        ),
        (
            &[
                "--target",
                "http://127.0.0.1:1",
                "--concurrency",
                "1",
                "--duration",
                "1s",
            ],
            "cannot connect",
        ),
        (
            &[
                "--target",
                "http://127.0.0.1:1",
                "--concurrency",
                "1",
                "--duration",
                "soon",
            ],
            "--duration",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, err) = run("shardrank-loadtest", args, T);
        assert!(code.is_some_and(|c| c != 0), "{args:?}: exit {code:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_of_requests_prints_its_own_stats() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let url = c.url.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        run(
            "shardrank-loadtest",
            &[
                "--target",
                &url,
                "--workload",
                "rank-1k,timeline",
                "--corpus",
                "tiny",
                "--concurrency",
                "2",
                "--duration",
                "300ms",
                "--warmup",
                "0s",
                "--stats-sample",
                "3",
            ],
            T,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("stats of 3 sampled rank-1k requests"), "{out}");
    assert!(
        out.contains("shard 0: call") && out.contains("shard 1: call"),
        "{out}"
    );
    assert!(out.contains("coverage 1.00"), "{out}");
    assert!(
        out.contains("stats of 3 sampled timeline requests"),
        "{out}"
    );
    assert!(
        out.contains("heavy_ranker (scorer)") && out.contains("in_network (source)"),
        "{out}"
    );
}
