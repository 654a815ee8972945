//! `shardrank up`: start, health, a Rank request, a dead shard reported, a clean stop
//! with no process left behind; with replicas, a dead replica costs no answer.

use shardrank_proto::v1::RankRequest;
use shardrank_tests::{bin, scratch_dir, ScratchDir};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

fn alive(pid: u32) -> bool {
    // A zombie has no cmdline; a running process does.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| !c.is_empty())
        .unwrap_or(false)
}

/// The value a process was started with for `flag`.
fn started_with(pid: u32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

struct Up {
    child: UpChild,
    /// Kept open: `up` keeps printing, and a closed pipe must not be what stops it.
    _stdout: BufReader<ChildStdout>,
    /// Started processes in the order `up` printed them: shards, then the coordinator.
    pids: Vec<u32>,
    target: String,
    /// The coordinator's admin URL (/metrics).
    admin: String,
    logs: ScratchDir,
}

/// Runs `shardrank up` with `args` and waits for its "cluster up" line.
fn start(args: &[&str]) -> Up {
    let logs = scratch_dir("up");
    let mut child = Command::new(bin("shardrank"))
        .arg("up")
        .args(args)
        .args(["--corpus", "tiny", "--base-port", "0", "--log-dir"])
        .arg(logs.to_str().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let (mut pids, mut target, mut admin) = (Vec::new(), String::new(), String::new());
    let t0 = Instant::now();
    while target.is_empty() || admin.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no 'cluster up' line"
        );
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("shardrank up ended early ({status}):\n{err}");
        }
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
        if let Some(rest) = line.strip_prefix("metrics: coordinator ") {
            admin = rest.split("/metrics").next().unwrap().to_string();
        }
    }
    Up {
        child: UpChild(child),
        _stdout: out,
        pids,
        target,
        admin,
        logs,
    }
}

/// `up`'s process: stopped when dropped, so that a test that fails midway leaves no
/// cluster running.
struct UpChild(Child);

impl std::ops::Deref for UpChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for UpChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for UpChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            shardrank_tests::send_signal(self.0.id(), "TERM");
            let t0 = Instant::now();
            while matches!(self.0.try_wait(), Ok(None)) && t0.elapsed().as_secs() < 15 {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn kill9(pid: u32) {
    shardrank_tests::send_signal(pid, "KILL");
}

/// SIGTERMs `up`, checks it exits 0 with no process left; returns its stderr.
/// Stops `up`; its standard error, and its log directory (kept until dropped).
async fn stop(mut up: Up) -> (String, ScratchDir) {
    shardrank_tests::send_signal(up.child.id(), "TERM");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
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
    std::io::Read::read_to_string(&mut up.child.stderr.take().unwrap(), &mut err).unwrap();
    for &p in &up.pids {
        assert!(!alive(p), "process {p} left behind");
    }
    (err, up.logs)
}

async fn rank(target: &str) -> shardrank_proto::v1::RankResponse {
    let facts = shardrank_tests::corpus_facts::Facts::of("tiny", 42);
    let mut client = shardrank_proto::v1::coordinator_client::CoordinatorClient::new(
        shardrank_tests::channel(target).await,
    );
    client
        .rank(RankRequest {
            user_id: 1,
            candidate_ids: facts.tweets[..500].to_vec(),
            top_k: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_cluster_reports_deaths_and_stops_cleanly() {
    let up = start(&["--shards", "3"]);
    assert_eq!(up.pids.len(), 4, "3 shards and a coordinator");
    assert!(up.pids.iter().all(|&p| alive(p)));
    // The corpus was generated once, for all the processes, and is removed at the end.
    let corpus = up.logs.join("corpus-tiny-42.events.bin");
    assert!(corpus.exists());
    let r = rank(&up.target).await;
    assert_eq!(r.candidates.len(), 10);
    // Three shards share the machine's cores: each gets its share, at least one.
    let want = shardrank_proto::serving::share_of_cores(shardrank_proto::serving::cores(), 3);
    for &p in &up.pids[..3] {
        assert_eq!(
            started_with(p, "--worker-threads"),
            Some(want.to_string()),
            "pid {p}"
        );
    }
    assert_eq!(started_with(up.pids[3], "--worker-threads"), None);

    // A shard that dies is reported, and the cluster answers without it.
    kill9(up.pids[1]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = rank(&up.target).await;
    assert_eq!(r.missing_shards, vec![1]);
    let (err, logs) = stop(up).await;
    assert!(err.contains("shard 1 exited"), "{err}");
    assert!(!corpus.exists(), "left {}", corpus.display());
    let log = std::fs::read_to_string(logs.join("shard-0.log")).unwrap();
    assert!(log.contains("corpus tiny (seed 42)"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_replicas_survives_a_dead_replica() {
    let up = start(&[
        "--shards",
        "2",
        "--replicas",
        "2",
        "--shard-worker-threads",
        "2",
    ]);
    assert_eq!(up.pids.len(), 5, "2 shards x 2 replicas and a coordinator");
    for &p in &up.pids[..4] {
        assert_eq!(started_with(p, "--worker-threads").as_deref(), Some("2"));
    }
    // "cluster up" means every replica in the coordinator's rotation, not only one of
    // each shard: losing one now must cost nothing.
    let (_, m) = shardrank_tests::http_get(&format!("{}/metrics", up.admin)).await;
    for (shard, replica) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let series =
            format!("shardrank_coordinator_replica_up{{shard=\"{shard}\",replica=\"{replica}\"}}");
        assert_eq!(shardrank_tests::metric(&m, &series), Some(1.0), "{series}");
    }
    let full = rank(&up.target).await;
    assert!(full.missing_shards.is_empty());
    // Replica 0 of shard 1 is the second process started.
    kill9(up.pids[1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let r = rank(&up.target).await;
        assert!(r.missing_shards.is_empty(), "{:?}", r.missing_shards);
        assert_eq!(r.candidates, full.candidates);
    }
    let (err, _logs) = stop(up).await;
    assert!(err.contains("shard 1 replica 0 exited"), "{err}");
}

#[test]
fn up_refuses_what_it_cannot_do() {
    for (args, names) in [
        (
            &["up", "--replicas", "0", "--corpus", "tiny"][..],
            "--replicas",
        ),
        (&["up", "--shards", "0"][..], "--shards"),
    ] {
        let (code, _, err) = shardrank_tests::run("shardrank", args, Duration::from_secs(30));
        assert_eq!(code, Some(2), "{args:?}");
        assert!(err.contains(names), "{err}");
    }
}

/// `up` killed with SIGKILL cannot stop its processes itself: they get SIGTERM from
/// the kernel when it dies, and exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_up_takes_its_cluster_with_it() {
    let up = start(&["--shards", "2"]);
    assert_eq!(up.pids.len(), 3);
    assert_eq!(rank(&up.target).await.candidates.len(), 10);
    kill9(up.child.id());
    let t0 = Instant::now();
    while up.pids.iter().any(|&p| alive(p)) {
        if t0.elapsed() > Duration::from_secs(20) {
            let left: Vec<u32> = up.pids.iter().copied().filter(|&p| alive(p)).collect();
            left.iter().for_each(|&p| kill9(p));
            panic!("left behind: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
