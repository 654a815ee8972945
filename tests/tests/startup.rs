//! Bad start-up input: a clear message and a non-zero exit, never a hang or a panic.

use shardrank_tests::{free_port, run, scratch_dir, Proc};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn assert_fails(binary: &str, args: &[&str], needle: &str) {
    let (code, _, err) = run(binary, args, T);
    assert!(
        code.is_some_and(|c| c != 0),
        "{binary} {args:?} should fail, exit {code:?}"
    );
    assert!(
        err.contains(needle),
        "{binary} {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_are_named() {
    assert_fails(
        "shardrank-shard",
        &["--shard-index", "4", "--num-shards", "4"],
        "--shard-index 4",
    );
    assert_fails("shardrank-shard", &["--num-shards", "0"], "--num-shards");
    assert_fails("shardrank-shard", &["--no-such-flag"], "--no-such-flag");
    assert_fails("shardrank-shard", &["--corpus", "huge"], "huge");
    assert_fails(
        "shardrank-shard",
        &["--huge-pages", "maybe"],
        "--huge-pages",
    );
    assert_fails(
        "shardrank-shard",
        &["--events", "/nonexistent/events.jsonl"],
        "/nonexistent/events.jsonl",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--shards", "localhost:7001"],
        "http://",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--shards", "http://a:1|http://b:1,http://a:1"],
        "listed twice",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--heavy-candidates", "0", "--check-config"],
        "--heavy-candidates",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--shard-batch-max-items", "0", "--check-config"],
        "--shard-batch-max-items 0",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--shard-batch-max-items", "2000", "--check-config"],
        "between 1 and 1024",
    );
    assert_fails("shardrank", &["gen", "--corpus", "tiny"], "--out");
    assert_fails(
        "shardrank-shard",
        &["--worker-threads", "0"],
        "--worker-threads",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--worker-threads", "0", "--check-config"],
        "--worker-threads",
    );
    assert_fails(
        "shardrank",
        &["up", "--shard-worker-threads", "0"],
        "--shard-worker-threads",
    );
    // Checked at start-up, not when the file is due (a coordinator writes it only once
    // its shards are up).
    let no_dir = "--addr-file /nonexistent-dir/x.addr: not a file in an existing directory";
    assert_fails(
        "shardrank-shard",
        &["--addr-file", "/nonexistent-dir/x.addr"],
        no_dir,
    );
    assert_fails(
        "shardrank-coordinator",
        &[
            "--addr-file",
            "/nonexistent-dir/x.addr",
            "--shards",
            "http://127.0.0.1:1",
        ],
        no_dir,
    );
    // Kafka flags: named, checked before anything connects.
    assert_fails(
        "shardrank-shard",
        &["--kafka-brokers", "localhost", "--check-config"],
        "--kafka-brokers: \"localhost\" is not HOST:PORT",
    );
    assert_fails(
        "shardrank-shard",
        &[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-topic",
            "a b",
            "--check-config",
        ],
        "--kafka-topic",
    );
    assert_fails(
        "shardrank-shard",
        &[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--live-events-per-sec",
            "10",
            "--check-config",
        ],
        "choose one live stream",
    );
    assert_fails(
        "shardrank-coordinator",
        &["--kafka-brokers", "127.0.0.1:0", "--check-config"],
        "--kafka-brokers",
    );
    assert_fails(
        "shardrank",
        &[
            "produce",
            "--brokers",
            "127.0.0.1:9092",
            "--events",
            "/nonexistent.jsonl",
            "--num-shards",
            "2",
        ],
        "--events /nonexistent.jsonl",
    );
    assert_fails(
        "shardrank",
        &[
            "produce",
            "--brokers",
            "127.0.0.1:9092",
            "--events",
            "x",
            "--num-shards",
            "0",
        ],
        "--num-shards 0",
    );
}

#[test]
fn check_config_validates_without_serving() {
    let (code, out, _) = run(
        "shardrank-shard",
        &["--shard-index", "1", "--num-shards", "4", "--check-config"],
        T,
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("shard 1 of 4"), "{out}");
    // With Kafka and no --corpus/--events the topics are the only source.
    let (code, out, _) = run(
        "shardrank-shard",
        &[
            "--shard-index",
            "1",
            "--num-shards",
            "4",
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--check-config",
        ],
        T,
    );
    assert_eq!(code, Some(0));
    assert!(
        out.contains("no start-up source")
            && out.contains("kafka 127.0.0.1:9092 (tweet_events partition 1, user_events)"),
        "{out}"
    );
    let (code, out, _) = run(
        "shardrank-coordinator",
        &[
            "--shards",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--check-config",
        ],
        T,
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("2 shards"), "{out}");
}

#[test]
fn help_documents_every_flag() {
    let (code, out, _) = run("shardrank-shard", &["--help"], T);
    assert_eq!(code, Some(0));
    for flag in [
        "--listen",
        "--shard-index",
        "--num-shards",
        "--corpus",
        "--corpus-seed",
        "--events",
        "--model-dir",
        "--check-config",
        "--admin-listen",
        "--log-format",
        "--kafka-brokers",
        "--kafka-topic",
        "--kafka-user-topic",
        "--snapshot-dir",
        "--live-events-per-sec",
        "--dead-letter-file",
        "--huge-pages",
    ] {
        assert!(out.contains(flag), "shard --help lacks {flag}");
    }
    let (_, out, _) = run("shardrank-coordinator", &["--help"], T);
    for flag in [
        "--listen",
        "--shards",
        "--corpus",
        "--events",
        "--heavy-candidates",
        "--request-timeout-ms",
        "--admin-listen",
        "--log-format",
        "--kafka-brokers",
        "--kafka-user-topic",
        "--kafka-timeline-topic",
        "--live-events-per-sec",
    ] {
        assert!(out.contains(flag), "coordinator --help lacks {flag}");
    }
    let (_, out, _) = run("shardrank", &["produce", "--help"], T);
    for flag in [
        "--brokers",
        "--events",
        "--num-shards",
        "--post-topic",
        "--user-topic",
    ] {
        assert!(out.contains(flag), "produce --help lacks {flag}");
    }
}

#[test]
fn a_model_file_of_the_wrong_shape_names_the_tensor() {
    let dir = scratch_dir("model");
    // Take the shipped models and swap in a light model trained on 3 features.
    let (code, _, err) = run(
        "shardrank",
        &["model", "export", "--out-dir", dir.to_str().unwrap()],
        T,
    );
    assert_eq!(code, Some(0), "{err}");
    // A safetensors file whose `weight` is [1, 3].
    let header = br#"{"weight":{"dtype":"F32","shape":[1,3],"data_offsets":[0,12]},"bias":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 16]);
    std::fs::write(dir.join("light.safetensors"), bytes).unwrap();
    for binary in ["shardrank-shard", "shardrank-coordinator"] {
        assert_fails(
            binary,
            &["--model-dir", dir.to_str().unwrap(), "--check-config"],
            "`weight` has shape [1, 3], expected [1, 18]",
        );
    }
    let (code, _, err) = run(
        "shardrank",
        &["model", "check", "--model-dir", dir.to_str().unwrap()],
        T,
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("light.safetensors"), "{err}");
}

/// Runs a shard on a free port with `flags` until it exits, which it must,
/// unsuccessfully, because of `what`; its log.
fn shard_fails(dir: &std::path::Path, flags: &[&str], what: &str) -> String {
    let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{}", free_port())];
    args.extend(flags.iter().map(|f| f.to_string()));
    let mut p = Proc::spawn("shardrank-shard", &args, dir.join("shard.log"));
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < T, "shard kept running with {what}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "shard exited successfully with {what}");
    std::fs::read_to_string(&p.log).unwrap()
}

#[test]
fn with_strict_a_malformed_events_line_stops_the_shard_naming_the_line() {
    let dir = scratch_dir("events");
    let file = dir.join("events.jsonl");
    let good =
        r#"{"type":"new_tweet","id":1,"author_id":2,"created_at":3,"lang":"en","text_len":5}"#;
    std::fs::write(
        &file,
        format!("{good}\n{good}\n{{\"type\":\"like\",\"user_id\":1}}\n"),
    )
    .unwrap();
    let flags = ["--events", file.to_str().unwrap(), "--strict"];
    let log = shard_fails(&dir, &flags, "a malformed events file");
    assert!(
        log.contains("line 3") && log.contains("tweet_id") && log.contains("events.jsonl"),
        "{log}"
    );
}

#[test]
fn a_truncated_binary_events_file_stops_the_shard_naming_the_offset() {
    let dir = scratch_dir("events-bin");
    let file = dir.join("tiny.bin");
    shardrank_tests::gen_tiny(&file, "binary");
    // Cut off the last record and the end record: a copy that stopped half way.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 30]).unwrap();
    let flags = ["--events", file.to_str().unwrap()];
    let log = shard_fails(&dir, &flags, "a truncated events file");
    assert!(
        log.contains("truncated") && log.contains("byte ") && log.contains("tiny.bin"),
        "{log}"
    );
}

/// Runs a coordinator on the tiny corpus against `shards` to its exit, off the runtime.
async fn run_coordinator(shards: String) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        run(
            "shardrank-coordinator",
            &[
                "--listen",
                "127.0.0.1:0",
                "--shards",
                &shards,
                "--corpus",
                "tiny",
            ],
            T,
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_coordinator_whose_shard_list_is_out_of_order_refuses_to_start() {
    let dir = scratch_dir("mismatch");
    let ports = [free_port(), free_port()];
    let mut shards = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--shard-index",
            &i.to_string(),
            "--num-shards",
            "2",
            "--corpus",
            "tiny",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        shards.push(Proc::spawn(
            "shardrank-shard",
            &args,
            dir.join(format!("s{i}.log")),
        ));
    }
    // Swapped order: the shard at index 0 of the list says it is shard 1.
    let list = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{}",
        ports[1], ports[0]
    );
    let (code, _, err) = run_coordinator(list).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("mismatch"), "{err}");

    // A list of three for shards that say "of 2": also refused.
    let list = format!(
        "http://127.0.0.1:{},http://127.0.0.1:{},http://127.0.0.1:{}",
        ports[0],
        ports[1],
        shardrank_tests::free_port()
    );
    let (code, _, err) = run_coordinator(list).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("of 3"), "{err}");

    // Unreachable shards: a clear error once the wait is over.
    let (code, _, err) = run(
        "shardrank-coordinator",
        &[
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "http://127.0.0.1:1|http://127.0.0.1:2",
            "--corpus",
            "tiny",
            "--shard-wait-secs",
            "1",
        ],
        T,
    );
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no replica was ready in time")
            && err.contains("127.0.0.1:1:")
            && err.contains("127.0.0.1:2:"),
        "{err}"
    );
}
