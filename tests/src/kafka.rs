//! A real Kafka-protocol broker for tests: noida-db's broker binary (PyPI `noida-db`,
//! pinned and installed by `.ci/run`), started on a free loopback port with its own data
//! directory, run directly (not through the Python wrapper) so the PID is the broker's.

use crate::{free_port, scratch_dir, Proc, ScratchDir};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The broker binary: SHARDRANK_KAFKA_BROKER, or the one inside the installed package.
pub fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDRANK_KAFKA_BROKER") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.dirname(noida_db.__file__))",
        ])
        .output()
        .expect("running python3 to find noida-db");
    assert!(
        out.status.success(),
        "the Kafka test broker is missing: pip install noida-db==0.2.3 (.ci/run does)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    PathBuf::from(dir).join("noida-db")
}

pub struct Broker {
    pub proc: Proc,
    pub port: u16,
    /// `127.0.0.1:PORT`, for --brokers / --kafka-brokers.
    pub addr: String,
    pub dir: ScratchDir,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = scratch_dir("kafka");
        let port = free_port();
        let proc = Self::spawn(&dir, port, "broker.log");
        let b = Broker {
            proc,
            port,
            addr: format!("127.0.0.1:{port}"),
            dir,
        };
        b.wait_up();
        b
    }

    fn spawn(dir: &std::path::Path, port: u16, log: &str) -> Proc {
        let binary = broker_binary();
        let args = [
            "start".to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--only".into(),
            "kafka".into(),
            "--kafka-port".into(),
            port.to_string(),
        ];
        let err = std::fs::File::create(dir.join(log)).unwrap();
        let child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        Proc {
            child,
            name: format!("{} {}", binary.display(), args.join(" ")),
            log: dir.join(log),
        }
    }

    fn wait_up(&self) {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the Kafka broker did not listen on {}:\n{}",
                self.addr,
                self.proc.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker: clients see it go away. Gracefully (SIGTERM, SIGKILL after 10
    /// s): noida-db does not always keep its data through a SIGKILL (seen in CI: a
    /// restarted broker without the topics, or without the tail of a partition, whose
    /// new records then got offsets the consumers had already passed), and the tests
    /// that restart it are about the clients waiting it out, not about broker
    /// durability.
    pub fn stop(&mut self) {
        if self.proc.terminate(Duration::from_secs(10)).is_none() {
            self.proc.kill();
        }
    }

    /// Stops it and starts an empty broker on the same port: to its clients, a broker
    /// that lost its whole log (every partition now ends below their positions).
    pub fn replace(&mut self) {
        self.stop();
        self.dir = scratch_dir("kafka");
        self.proc = Self::spawn(&self.dir, self.port, "broker.log");
        self.wait_up();
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.proc = Self::spawn(&self.dir, self.port, "broker-restarted.log");
        self.wait_up();
    }
}

/// A new post (`new_tweet`) as tests and benchmarks produce it.
pub fn new_post(id: u64, author: u64, t: i64) -> shardrank_core::events::Event {
    shardrank_core::events::Event::NewTweet(shardrank_core::events::NewTweet {
        id,
        author_id: author,
        created_at: t,
        lang: shardrank_core::lang::parse("en").unwrap(),
        has_media: false,
        reply_to: None,
        text_len: 80,
        likes: 0,
        retweets: 0,
        replies: 0,
    })
}
