//! Test harness: starts the real binaries on loopback (free ports), waits for their
//! gRPC health checks, and stops them when dropped. Each process's stderr goes to a log
//! file whose tail is printed when a start-up fails.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test` does).

pub mod chaos;
pub mod corpus_facts;
pub mod kafka;

use shardrank_proto::serving;
use shardrank_proto::v1::coordinator_client::CoordinatorClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The directory holding the workspace's binaries: SHARDRANK_BIN_DIR, or the one this
/// test or binary was built into.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SHARDRANK_BIN_DIR") {
        return PathBuf::from(d);
    }
    // Test binaries live in target/<profile>/deps, the `chaos` binary in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A port that was free a moment ago, and never handed out before by this process (the
/// kernel may offer a port again until someone binds it, and a cluster asks for several
/// before its processes bind them).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A scratch directory, removed when dropped unless the test is failing (its logs are
/// what a failure message points to).
pub struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(tag: &str) -> ScratchDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "shardrank-test-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    ScratchDir(d)
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(binary: &str, args: &[String], log: PathBuf) -> Proc {
        let err = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin(binary))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {binary}: {e}"));
        Proc {
            child,
            name: format!("{binary} {}", args.join(" ")),
            log,
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status (None if it did not exit in `within`).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < within {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every metric name the Grafana dashboard's queries use.
pub fn dashboard_metrics() -> Vec<String> {
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/shardrank.json"
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut names = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            names.extend(
                expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .filter(|w| w.starts_with("shardrank_"))
                    .map(str::to_string),
            );
        }
    }
    names
}

/// Whether a /metrics text declares the family of `name` (a series name, with its
/// `_total`, `_bucket`, ... suffix): its TYPE line is there even before it has samples.
pub fn exports(text: &str, name: &str) -> bool {
    let base = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    text.contains(&format!("# TYPE {base} "))
}

/// A log's text without its ANSI colour codes.
pub fn plain(log: &str) -> String {
    log.split('\x1b')
        .map(|part| match part.strip_prefix('[') {
            Some(rest) => rest.split_once('m').map_or(rest, |(_, t)| t),
            None => part,
        })
        .collect()
}

/// Writes corpus `tiny` (seed 42) to `out` with `shardrank gen --format FORMAT` (`json`
/// or `binary`); returns what it printed.
pub fn gen_tiny(out: &Path, format: &str) -> String {
    let (code, _, err) = run(
        "shardrank",
        &[
            "gen",
            "--corpus",
            "tiny",
            "--corpus-seed",
            "42",
            "--format",
            format,
            "--out",
            out.to_str().expect("UTF-8 path"),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "shardrank gen: {err}");
    err
}

/// Runs a binary to completion; returns (exit code, stdout, stderr).
pub fn run(binary: &str, args: &[&str], timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = Command::new(bin(binary))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!("{binary} {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `url` reports SERVING for `service` ("" for the server as a whole).
pub async fn wait_serving(url: &str, service: &str, proc: &mut Proc, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{} exited with {status} before serving:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        if let Ok(ch) = Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        {
            let mut h = HealthClient::new(ch);
            if let Ok(r) = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
            {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return;
                }
            }
        }
        if t0.elapsed() > timeout {
            panic!(
                "{} not serving after {timeout:?}:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The addresses `proc` bound, once it has written them to `path` (its --addr-file).
pub async fn bound_addrs(proc: &mut Proc, path: &Path) -> shardrank_proto::addr_file::BoundAddrs {
    let t0 = Instant::now();
    loop {
        if let Some(b) = shardrank_proto::addr_file::BoundAddrs::read(path).unwrap() {
            return b;
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{} exited with {status} before binding:\n{}",
                proc.name,
                proc.log_tail()
            );
        }
        assert!(t0.elapsed() < START_TIMEOUT, "{} never bound", proc.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A coordinator and its shards, on loopback. With replicas, shard process `r * n + i`
/// is replica r of shard i ([`Cluster::replica`]).
pub struct Cluster {
    pub shards: Vec<Proc>,
    /// The command line of each shard process, to restart it.
    pub shard_args: Vec<Vec<String>>,
    pub shard_urls: Vec<String>,
    pub num_shards: u32,
    pub replicas: u32,
    /// Admin HTTP base URLs (/metrics, /healthz) of the shards.
    pub shard_admin: Vec<String>,
    pub coordinator: Proc,
    pub url: String,
    pub admin: String,
    pub dir: ScratchDir,
}

pub const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Cluster {
    /// Starts `n` shards and a coordinator, all given the `data` flags (e.g.
    /// `["--corpus", "tiny"]`), and waits until the coordinator serves.
    pub async fn start(n: u32, data: &[&str]) -> Cluster {
        Self::start_with(n, data, &[]).await
    }

    pub async fn start_with(n: u32, data: &[&str], coordinator_args: &[&str]) -> Cluster {
        Self::start_replicated(n, 1, data, coordinator_args).await
    }

    /// `n` shards of `replicas` processes each, and a coordinator given them all.
    pub async fn start_replicated(
        n: u32,
        replicas: u32,
        data: &[&str],
        coordinator_args: &[&str],
    ) -> Cluster {
        Self::start_full(n, replicas, data, &[], coordinator_args).await
    }

    /// As [`Cluster::start_replicated`], with flags for the shards only too.
    pub async fn start_full(
        n: u32,
        replicas: u32,
        data: &[&str],
        shard_flags: &[&str],
        coordinator_args: &[&str],
    ) -> Cluster {
        let dir = scratch_dir("cluster");
        let data: Vec<String> = data.iter().map(|s| s.to_string()).collect();
        let mut shards = Vec::new();
        let mut shard_args = Vec::new();
        let mut shard_urls = Vec::new();
        let mut shard_admin = Vec::new();
        // As `shardrank up` does: shards that share the machine get its cores divided
        // among them, so that every test runs the layout the benchmarks measure.
        let workers = if shard_flags.contains(&"--worker-threads") {
            Vec::new()
        } else {
            let share = serving::share_of_cores(serving::cores(), n * replicas);
            vec!["--worker-threads".to_string(), share.to_string()]
        };
        // Every process binds port 0 and reports what it got in its --addr-file (as
        // `shardrank up` does): ports picked here would race with other processes.
        for k in 0..n * replicas {
            let i = k % n;
            let mut args = vec![
                "--listen".to_string(),
                "127.0.0.1:0".into(),
                "--admin-listen".into(),
                "127.0.0.1:0".into(),
                "--addr-file".into(),
                dir.join(format!("shard-{k}.addr")).display().to_string(),
                "--shard-index".into(),
                i.to_string(),
                "--num-shards".into(),
                n.to_string(),
            ];
            args.extend(data.iter().cloned());
            args.extend(workers.iter().cloned());
            args.extend(shard_flags.iter().map(|a| a.to_string()));
            shards.push(Proc::spawn(
                "shardrank-shard",
                &args,
                dir.join(format!("shard-{k}.log")),
            ));
            shard_args.push(args);
        }
        // Shards bind before they load. A restarted shard gets the ports it bound
        // first: the coordinator knows it by them.
        for (k, args) in shard_args.iter_mut().enumerate() {
            let bound = bound_addrs(&mut shards[k], &dir.join(format!("shard-{k}.addr"))).await;
            let admin = bound.admin.expect("shards have an admin port");
            args[1] = bound.grpc.to_string();
            args[3] = admin.to_string();
            shard_urls.push(format!("http://{}", bound.grpc));
            shard_admin.push(format!("http://{admin}"));
        }
        // Commas between shards, `|` between the replicas of one.
        let shards_flag = (0..n as usize)
            .map(|i| {
                (0..replicas as usize)
                    .map(|r| shard_urls[r * n as usize + i].clone())
                    .collect::<Vec<_>>()
                    .join("|")
            })
            .collect::<Vec<_>>()
            .join(",");
        let addr_file = dir.join("coordinator.addr");
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--addr-file".into(),
            addr_file.display().to_string(),
            "--shards".into(),
            shards_flag,
        ];
        args.extend(data.iter().cloned());
        args.extend(coordinator_args.iter().map(|s| s.to_string()));
        let mut coordinator =
            Proc::spawn("shardrank-coordinator", &args, dir.join("coordinator.log"));
        // The coordinator binds once one replica of each shard is ready. A process
        // that dies at start-up fails the test at once, with its log.
        let t0 = Instant::now();
        let bound = loop {
            if let Some(b) = shardrank_proto::addr_file::BoundAddrs::read(&addr_file).unwrap() {
                break b;
            }
            for s in shards.iter_mut().chain(std::iter::once(&mut coordinator)) {
                if let Ok(Some(status)) = s.child.try_wait() {
                    panic!(
                        "{} exited with {status} during start-up:\n{}",
                        s.name,
                        s.log_tail()
                    );
                }
            }
            assert!(t0.elapsed() < START_TIMEOUT, "the coordinator never bound");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let url = format!("http://{}", bound.grpc);
        wait_serving(&url, "", &mut coordinator, START_TIMEOUT).await;
        let admin = format!("http://{}", bound.admin.expect("an admin port"));
        // The other replicas join the rotation as their health checks pass: a test
        // starts with all of them in.
        if replicas > 1 {
            let t0 = Instant::now();
            loop {
                let (_, m) = http_get(&format!("{admin}/metrics")).await;
                let up = (0..n)
                    .flat_map(|i| (0..replicas).map(move |r| (i, r)))
                    .filter(|(i, r)| {
                        let series = format!(
                            "shardrank_coordinator_replica_up{{shard=\"{i}\",replica=\"{r}\"}}"
                        );
                        metric(&m, &series) == Some(1.0)
                    })
                    .count();
                if up == (n * replicas) as usize {
                    break;
                }
                assert!(
                    t0.elapsed() < START_TIMEOUT,
                    "{up} of {} replicas in rotation",
                    n * replicas
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Cluster {
            shards,
            shard_args,
            shard_urls,
            num_shards: n,
            replicas,
            shard_admin,
            coordinator,
            url,
            admin,
            dir,
        }
    }

    pub async fn client(&self) -> CoordinatorClient<Channel> {
        CoordinatorClient::connect(self.url.clone())
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// The process index of replica `r` of shard `i`.
    pub fn replica(&self, i: u32, r: u32) -> usize {
        (r * self.num_shards + i) as usize
    }

    /// SIGKILLs shard process `k` (with one replica, shard k).
    pub fn kill_shard(&mut self, k: usize) {
        self.shards[k].kill();
    }

    /// Starts shard process `k` again with its command line (after a kill).
    pub fn restart_shard(&mut self, k: usize) {
        self.shards[k].kill();
        let log = self.dir.join(format!("shard-{k}-restarted.log"));
        self.shards[k] = Proc::spawn("shardrank-shard", &self.shard_args[k], log);
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to shard process `k`.
    pub fn signal_shard(&self, k: usize, signal: &str) {
        send_signal(self.shards[k].child.id(), signal);
    }
}

/// Sends `signal` (a name such as "TERM", "STOP", "CONT") to process `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Peak resident memory of process `pid` in bytes (VmHWM), if it is running.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl Cluster {}

impl Drop for Cluster {
    /// Stops every process before the scratch directory (a field) goes.
    fn drop(&mut self) {
        self.coordinator.kill();
        for s in &mut self.shards {
            s.kill();
        }
    }
}

/// A connected channel to `url`.
pub async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// GET `url` over plain HTTP/1.1 (the admin port); returns (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let addr = host.parse().expect("an admin URL is http://IP:PORT");
    shardrank_proto::admin::get(addr, &path).await.unwrap()
}

/// The value of a metric line `name{labels} value` (labels as written, or none).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(name_and_labels)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}
