//! `shardrank up`: a whole cluster as local processes on loopback.
//!
//! Starts N shards and a coordinator (each logging to a file), waits until the
//! coordinator is healthy, prints its address and the command to load-test it, and then
//! watches: a process that exits is reported at once (with its log tail), not hidden;
//! Ctrl-C or SIGTERM stops every process (SIGTERM, then SIGKILL after the drain time),
//! and nothing is left behind, even if `up` itself fails or is killed (its children
//! get SIGTERM when it dies, whatever killed it).

use shardrank_proto::addr_file::BoundAddrs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// Prints a line, ignoring a closed stdout/stderr: `up` runs a cluster, and a reader
/// that went away (`shardrank up | head`) must not take the cluster down with a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

macro_rules! warn {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Shard count (partitions).
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Replicas per shard: each shard index is served by this many shard processes, and
    /// the coordinator spreads load over them, retries and hedges across them.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Built-in corpus: generated once into the log directory in the binary events form,
    /// which every process then loads (ignored with --events); removed when `up` exits.
    #[arg(long, default_value = "standard", value_parser = clap::builder::PossibleValuesParser::new(shardrank_core::corpus::CorpusSpec::NAMES))]
    corpus: String,
    #[arg(long, default_value_t = shardrank_core::corpus::DEFAULT_SEED)]
    corpus_seed: u64,
    /// Events file every process loads instead of a corpus.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Shards keep snapshots of their partitions here (--snapshot-dir): a second `up`
    /// with the same data starts the shards from them in a fraction of the time.
    #[arg(long, value_name = "DIR")]
    snapshot_dir: Option<PathBuf>,
    /// Model directory passed to every process.
    #[arg(long, value_name = "DIR")]
    model_dir: Option<PathBuf>,
    /// The coordinator listens on this port, replica r of shard i on
    /// port + 1 + r * shards + i; admin ports are these + 1000. 0: every process binds
    /// a free port of its own and reports it (--addr-file in the log directory).
    #[arg(long, default_value_t = 7000)]
    base_port: u16,
    /// Directory holding shardrank-shard and shardrank-coordinator; by default the one
    /// this binary is in.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where each process's log goes; by default a new temporary directory.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Async worker threads per shard process. Default: this machine's cores divided
    /// among the shard processes, at least one each (`serving::share_of_cores`).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    shard_worker_threads: Option<u16>,
    /// How long to wait for the cluster to be healthy.
    #[arg(long, default_value_t = 180, value_name = "SECS")]
    wait_secs: u64,
}

/// A file `up` made for its processes, removed when `up` returns.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct Member {
    name: String,
    child: Child,
    log: PathBuf,
    /// Where it writes the addresses it bound (--addr-file).
    addr_file: PathBuf,
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Starts `bin` with `args`, logging to `<dir>/<file>.log` and reporting its addresses
/// in `<dir>/<file>.addr`.
fn spawn(
    bin: &Path,
    mut args: Vec<String>,
    dir: &Path,
    file: &str,
    name: String,
) -> Result<Member, String> {
    let log = dir.join(format!("{file}.log"));
    let addr_file = dir.join(format!("{file}.addr"));
    // A file left by an earlier `up` in this directory would give old ports.
    match std::fs::remove_file(&addr_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!("{}: {e}", addr_file.display()))
        }
        _ => {}
    }
    args.extend(["--addr-file".into(), addr_file.display().to_string()]);
    let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new(bin);
    let parent = std::process::id();
    // SAFETY: runs in the child between fork and exec, and calls only prctl and
    // getppid, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // `up` killed by any signal, SIGKILL included (when kill_on_drop cannot
            // run), still takes its cluster with it: each process drains on SIGTERM.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // `up` died before the prctl: nobody would send the signal.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("shardrank up exited"));
            }
            Ok(())
        });
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    Ok(Member {
        name,
        child,
        log,
        addr_file,
    })
}

/// SIGTERM to everyone, then SIGKILL to whoever is still there after `drain`.
async fn stop_all(members: &mut [Member], drain: Duration) {
    for m in members.iter() {
        if let Some(pid) = m.child.id() {
            // SAFETY: kill(2) on a pid of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + drain;
    for m in members.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, m.child.wait()).await.is_err() {
            let _ = m.child.kill().await;
        }
    }
}

async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

/// The first member to exit, with its status.
async fn first_exit(members: &mut [Member]) -> (usize, std::process::ExitStatus) {
    loop {
        for (i, m) in members.iter_mut().enumerate() {
            if let Ok(Some(status)) = m.child.try_wait() {
                return (i, status);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `step`'s result, unless a member exits first: then an error naming it, with the last
/// lines of its log.
async fn unless_one_exits<T>(
    members: &mut [Member],
    step: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = step => r,
        (i, status) = first_exit(members) => Err(format!(
            "{} exited during start-up ({status}); last log lines ({}):\n{}",
            members[i].name, members[i].log.display(), log_tail(&members[i].log)
        )),
    }
}

/// The addresses in `path`, once the process has bound them and written it.
async fn bound_addrs(path: &Path, deadline: tokio::time::Instant) -> Result<BoundAddrs, String> {
    loop {
        if let Some(b) = BoundAddrs::read(path)? {
            return Ok(b);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "no addresses in {} before --wait-secs ran out",
                path.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `shardrank_coordinator_replica_up` series of a coordinator's /metrics that are 0: replicas
/// it has out of rotation.
fn out_of_rotation(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("shardrank_coordinator_replica_up"))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(_, v)| v.trim().parse::<f64>() == Ok(0.0))
        .map(|(labels, _)| labels)
        .collect()
}

/// Waits until the coordinator at `admin` has every replica in rotation.
async fn all_replicas_in_rotation(
    admin: std::net::SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    loop {
        let (_, metrics) = shardrank_proto::admin::get(admin, "/metrics").await?;
        let out = out_of_rotation(&metrics);
        if out.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "replicas still out of the coordinator's rotation when --wait-secs ran out: {}",
                out.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run(a: UpArgs) -> Result<String, String> {
    if a.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    if a.replicas == 0 {
        return Err("--replicas must be at least 1".into());
    }
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .ok_or("cannot tell where this binary is; give --bin-dir")?,
    };
    let (shard_bin, coord_bin) = (
        bin_dir.join("shardrank-shard"),
        bin_dir.join("shardrank-coordinator"),
    );
    for b in [&shard_bin, &coord_bin] {
        if !b.exists() {
            return Err(format!(
                "{} is missing (build with cargo build --release --bins, or give --bin-dir)",
                b.display()
            ));
        }
    }
    let log_dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("shardrank-up-{}", std::process::id())),
    };
    std::fs::create_dir_all(&log_dir)
        .map_err(|e| format!("--log-dir {}: {e}", log_dir.display()))?;
    let t0 = Instant::now();
    let mut _corpus_file = None;
    let mut data: Vec<String> = match &a.events {
        Some(f) => vec!["--events".into(), f.display().to_string()],
        None => {
            // Generating the corpus costs a process about what loading it does: once
            // here instead of in each of the processes, which share the cores.
            let spec = shardrank_core::corpus::CorpusSpec::named(&a.corpus, a.corpus_seed)
                .ok_or_else(|| format!("--corpus {:?} is not a known corpus", a.corpus))?;
            let file = log_dir.join(format!("corpus-{}-{}.events.bin", spec.name, spec.seed));
            // Armed first: a file left half written by a failure goes too.
            _corpus_file = Some(RemoveOnDrop(file.clone()));
            let path = file.clone();
            let n = tokio::task::spawn_blocking(move || {
                crate::write_corpus(&spec, crate::Format::Binary, &path)
            })
            .await
            .map_err(|e| format!("generating the corpus: {e}"))?
            .map_err(|e| format!("generating the corpus into --log-dir: {e}"))?;
            say!(
                "generated corpus {} (seed {}): {n} events in {:.2} s into {}",
                a.corpus,
                a.corpus_seed,
                t0.elapsed().as_secs_f64(),
                file.display()
            );
            let data = vec![
                "--events".into(),
                file.display().to_string(),
                // For the live stream's users, should one be turned on.
                "--corpus".into(),
                a.corpus.clone(),
                "--corpus-seed".into(),
                a.corpus_seed.to_string(),
            ];
            data
        }
    };
    if let Some(m) = &a.model_dir {
        data.extend(["--model-dir".into(), m.display().to_string()]);
    }
    // With --base-port 0 every process binds port 0 and reports the port it got in its
    // --addr-file: picking free ports here and passing them would race with every other
    // process on the machine for them.
    let ports = |offset: u16| -> Result<(u16, u16), String> {
        if a.base_port == 0 {
            return Ok((0, 0));
        }
        let p = a.base_port.checked_add(offset).ok_or_else(|| {
            format!(
                "--base-port {} leaves no room for {} shards",
                a.base_port, a.shards
            )
        })?;
        let admin = p
            .checked_add(1000)
            .ok_or("--base-port too high for admin ports (+1000)")?;
        Ok((p, admin))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.wait_secs);

    let workers = a.shard_worker_threads.unwrap_or_else(|| {
        let processes = a.shards.saturating_mul(a.replicas);
        shardrank_proto::serving::share_of_cores(shardrank_proto::serving::cores(), processes)
    });
    say!("each shard runs {workers} async worker thread(s)");
    let mut members = Vec::new();
    let mut shard_of = Vec::new();
    for r in 0..a.replicas {
        for i in 0..a.shards {
            let offset = u16::try_from(1 + r * a.shards + i)
                .map_err(|_| "--shards x --replicas leaves no room for ports".to_string())?;
            let (p, admin) = ports(offset)?;
            let mut args = vec![
                "--listen".to_string(),
                format!("127.0.0.1:{p}"),
                "--admin-listen".into(),
                format!("127.0.0.1:{admin}"),
                "--shard-index".into(),
                i.to_string(),
                "--num-shards".into(),
                a.shards.to_string(),
                "--worker-threads".into(),
                workers.to_string(),
            ];
            args.extend(data.iter().cloned());
            if let Some(d) = &a.snapshot_dir {
                args.extend(["--snapshot-dir".into(), d.display().to_string()]);
            }
            let (file, name) = if a.replicas == 1 {
                (format!("shard-{i}"), format!("shard {i}"))
            } else {
                (format!("shard-{i}-r{r}"), format!("shard {i} replica {r}"))
            };
            members.push(spawn(&shard_bin, args, &log_dir, &file, name)?);
            shard_of.push(i as usize);
        }
    }
    // Shards bind before they load: their addresses come at once, and the coordinator
    // starts while they load.
    let mut urls: Vec<Vec<String>> = vec![Vec::new(); a.shards as usize];
    let mut shard_admins = Vec::new();
    for k in 0..members.len() {
        let path = members[k].addr_file.clone();
        let bound = match unless_one_exits(&mut members, bound_addrs(&path, deadline)).await {
            Ok(b) => b,
            Err(e) => {
                stop_all(&mut members, Duration::from_secs(5)).await;
                return Err(e);
            }
        };
        let url = format!("http://{}", bound.grpc);
        say!(
            "started {} (pid {}) on {url}",
            members[k].name,
            members[k].child.id().unwrap_or(0)
        );
        urls[shard_of[k]].push(url);
        shard_admins.extend(bound.admin);
    }
    let (cp, admin_port) = ports(0)?;
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{cp}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin_port}"),
        "--shards".into(),
        urls.iter()
            .map(|r| r.join("|"))
            .collect::<Vec<_>>()
            .join(","),
    ];
    args.extend(data.iter().cloned());
    members.push(spawn(
        &coord_bin,
        args,
        &log_dir,
        "coordinator",
        "coordinator".into(),
    )?);

    // Healthy with every replica in rotation, or a member died, or the wait ran out. The
    // coordinator binds once one replica of each shard is ready; it takes the others
    // into rotation as their health checks pass, and "up" means all of them.
    let coordinator = members.len() - 1;
    let path = members[coordinator].addr_file.clone();
    let ready = async {
        let bound = bound_addrs(&path, deadline).await?;
        let target = format!("http://{}", bound.grpc);
        let within = deadline.saturating_duration_since(tokio::time::Instant::now());
        crate::rank::wait_serving(&target, shardrank_proto::COORDINATOR_SERVICE, within).await?;
        let admin = bound
            .admin
            .ok_or("the coordinator reported no admin address")?;
        all_replicas_in_rotation(admin, deadline).await?;
        Ok((target, admin))
    };
    let (target, admin) = match unless_one_exits(&mut members, ready).await {
        Ok(t) => t,
        Err(e) => {
            stop_all(&mut members, Duration::from_secs(5)).await;
            return Err(e);
        }
    };
    say!(
        "started coordinator (pid {}) on {target}",
        members[coordinator].child.id().unwrap_or(0)
    );
    say!(
        "cluster up in {:.2} s: coordinator {target} ({} shards x {} replicas, {}), logs in {}",
        t0.elapsed().as_secs_f64(),
        a.shards,
        a.replicas,
        a.events
            .as_ref()
            .map_or(format!("corpus {}", a.corpus), |f| format!(
                "events {}",
                f.display()
            )),
        log_dir.display()
    );
    let shard_metrics: Vec<String> = shard_admins
        .iter()
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    say!(
        "metrics: coordinator http://{admin}/metrics, shards {}",
        shard_metrics.join(" ")
    );
    say!("load-test it: shardrank-loadtest --target {target} --workload rank-1k --concurrency 8 --duration 15s --warmup 3s");
    say!("stop it: Ctrl-C (or SIGTERM to pid {})", std::process::id());

    // Watch until asked to stop; a member that exits is reported, the rest keep serving.
    let mut watching: Vec<usize> = (0..members.len()).collect();
    loop {
        tokio::select! {
            _ = signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                watching.retain(|&i| match members[i].child.try_wait() {
                    Ok(Some(status)) => {
                        warn!(
                            "shardrank up: {} exited ({status}); the cluster runs on without it. Last log lines ({}):\n{}",
                            members[i].name, members[i].log.display(), log_tail(&members[i].log)
                        );
                        false
                    }
                    _ => true,
                });
            }
        }
    }
    stop_all(&mut members, Duration::from_secs(15)).await;
    Ok("cluster stopped".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_out_of_rotation_are_read_from_the_coordinators_metrics() {
        let metrics = "# HELP shardrank_coordinator_replica_up Replica in rotation.\n\
            # TYPE shardrank_coordinator_replica_up gauge\n\
            shardrank_coordinator_replica_up{shard=\"0\",replica=\"0\"} 1\n\
            shardrank_coordinator_replica_up{shard=\"0\",replica=\"1\"} 0\n\
            shardrank_coordinator_replica_ejections_total{shard=\"0\",replica=\"1\"} 0\n\
            shardrank_coordinator_replica_up{shard=\"1\",replica=\"0\"} 1\n";
        assert_eq!(
            out_of_rotation(metrics),
            vec!["{shard=\"0\",replica=\"1\"}"]
        );
        assert!(out_of_rotation(&metrics.replace("} 0\n", "} 1\n")).is_empty());
    }
}
