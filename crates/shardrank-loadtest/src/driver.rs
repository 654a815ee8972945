//! Driving load: closed loop (a fixed number in flight) and open loop (a fixed arrival
//! rate, latency from the scheduled send time, so a stalled server cannot hide its
//! stall by slowing the client down: no coordinated omission).

use crate::client::call;
use crate::report::Stats;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

pub struct Target {
    pub channels: Vec<Channel>,
    pub path: &'static str,
    pub pool: Vec<Bytes>,
    pub timeout: Duration,
}

impl Target {
    fn pick(&self, i: usize) -> (&Channel, Bytes) {
        (
            &self.channels[i % self.channels.len()],
            self.pool[i % self.pool.len()].clone(),
        )
    }
}

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Progress {
    pub done: AtomicU64,
    pub errors: AtomicU64,
}

#[derive(Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub warmup: Duration,
    pub duration: Duration,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Self {
        Window {
            start: Instant::now(),
            warmup,
            duration,
        }
    }
    fn from(&self) -> Instant {
        self.start + self.warmup
    }
    fn end(&self) -> Instant {
        self.from() + self.duration
    }
}

fn note(p: &Progress, ok: bool) {
    p.done.fetch_add(1, Ordering::Relaxed);
    if !ok {
        p.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Closed loop: `concurrency` workers, each sending its next request when the last one
/// answered. Counts what completes inside the measured window.
pub async fn closed(t: Arc<Target>, concurrency: u32, w: Window, p: Arc<Progress>) -> Stats {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        let (t, next, p) = (t.clone(), next.clone(), p.clone());
        set.spawn(async move {
            let mut stats = Stats::default();
            while Instant::now() < w.end() {
                let (ch, body) = t.pick(next.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let res = call(ch, t.path, body, t.timeout).await;
                let done = Instant::now();
                note(&p, res.is_ok());
                if done >= w.from() && done <= w.end() {
                    stats.record(done - sent, res.map(|o| o.partial()));
                }
            }
            stats
        });
    }
    let mut all = Stats::default();
    while let Some(s) = set.join_next().await {
        all.merge(&s.expect("worker task"));
    }
    all
}

/// Open loop: a request every 1/rate seconds on a fixed schedule. Latency counts from
/// the scheduled time; beyond `max_in_flight` outstanding, new sends are counted as
/// client-overloaded instead of queueing without bound.
pub async fn open(
    t: Arc<Target>,
    rate: f64,
    max_in_flight: usize,
    w: Window,
    p: Arc<Progress>,
) -> Stats {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut stats = Stats::default();
    let mut set: JoinSet<(Instant, Instant, Result<bool, tonic::Code>)> = JoinSet::new();
    let mut i: u32 = 0;
    loop {
        let scheduled = w.start + interval * i;
        if scheduled >= w.end() {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        while let Some(r) = set.try_join_next() {
            let (sched, done, outcome) = r.expect("request task");
            if sched >= w.from() {
                stats.record(done - sched, outcome);
            }
        }
        if set.len() >= max_in_flight {
            if scheduled >= w.from() {
                stats.record_client_overload();
            }
        } else {
            let (ch, body) = t.pick(i as usize);
            let (ch, t2, p) = (ch.clone(), t.clone(), p.clone());
            set.spawn(async move {
                let res = call(&ch, t2.path, body, t2.timeout).await;
                note(&p, res.is_ok());
                (scheduled, Instant::now(), res.map(|o| o.partial()))
            });
        }
        i = i.saturating_add(1);
    }
    // Every request scheduled in the window is waited for (each has its deadline).
    while let Some(r) = set.join_next().await {
        let (sched, done, outcome) = r.expect("request task");
        if sched >= w.from() {
            stats.record(done - sched, outcome);
        }
    }
    stats
}

/// CPU time this process has used (user + system).
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}
