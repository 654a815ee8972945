//! Counting a run and reporting it: an HDR histogram of latencies (µs), errors by gRPC
//! code, partial answers; a readable summary and the WORKLOADS.md JSON object.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Stats {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub partial: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            // 1 µs to 10 minutes at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
            ok: 0,
            partial: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Stats {
    pub fn record(&mut self, latency: Duration, outcome: Result<bool, tonic::Code>) {
        let us = (latency.as_micros() as u64).clamp(1, 600_000_000);
        self.latency_us.saturating_record(us);
        match outcome {
            Ok(partial) => {
                self.ok += 1;
                self.partial += partial as u64;
            }
            Err(code) => *self.errors.entry(code_name(code)).or_default() += 1,
        }
    }

    /// A request the client could not send (open loop over its in-flight cap).
    pub fn record_client_overload(&mut self) {
        *self.errors.entry("CLIENT_OVERLOADED".into()).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.ok += other.ok;
        self.partial += other.partial;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// The gRPC code's name as the metrics label it (INVALID_ARGUMENT, ...).
pub fn code_name(code: tonic::Code) -> String {
    shardrank_proto::admin::code_label(code).to_string()
}

/// One run, as WORKLOADS.md specifies (plus what helps read it).
#[derive(Serialize, Debug, Clone)]
pub struct RunReport {
    pub workload: String,
    pub cluster: String,
    pub mode: String,
    pub concurrency_or_rate: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub partial: u64,
    pub qps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub client_cpu_pct: f64,
    pub connections: usize,
    pub target: String,
    pub data: String,
    pub unix_time: u64,
}

impl RunReport {
    pub fn new(stats: &Stats, measured: Duration, head: RunHead) -> RunReport {
        let h = &stats.latency_us;
        let ms = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let secs = measured.as_secs_f64().max(1e-9);
        RunReport {
            workload: head.workload,
            cluster: head.cluster,
            mode: head.mode,
            concurrency_or_rate: head.level,
            duration_s: secs,
            requests: stats.requests(),
            errors: stats.errors.values().sum(),
            partial: stats.partial,
            qps: stats.ok as f64 / secs,
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1000.0
            },
            errors_by_code: stats.errors.clone(),
            client_cpu_pct: head.client_cpu_pct,
            connections: head.connections,
            target: head.target,
            data: head.data,
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    pub fn summary(&self) -> String {
        let level = if self.mode == "closed" {
            format!("concurrency {}", self.concurrency_or_rate)
        } else {
            format!("rate {}/s", self.concurrency_or_rate)
        };
        let errors = if self.errors_by_code.is_empty() {
            "none".to_string()
        } else {
            self.errors_by_code
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "{} ({} loop, {level}) against {} [{}]\n  requests {}  qps {:.1}  partial {}  errors {}\n  latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}\n  client CPU {:.0}% of one core over {:.1} s",
            self.workload,
            self.mode,
            self.target,
            self.cluster,
            self.requests,
            self.qps,
            self.partial,
            errors,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.client_cpu_pct,
            self.duration_s
        )
    }
}

/// What a report says about its run besides the counts.
pub struct RunHead {
    pub workload: String,
    pub cluster: String,
    pub mode: String,
    pub level: f64,
    pub client_cpu_pct: f64,
    pub connections: usize,
    pub target: String,
    pub data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_quantiles() {
        let mut s = Stats::default();
        for ms in 1..=100u64 {
            s.record(Duration::from_millis(ms), Ok(ms % 10 == 0));
        }
        s.record(
            Duration::from_millis(5),
            Err(tonic::Code::ResourceExhausted),
        );
        let mut t = Stats::default();
        t.record(
            Duration::from_millis(7),
            Err(tonic::Code::ResourceExhausted),
        );
        s.merge(&t);
        let head = RunHead {
            workload: "rank-1k".into(),
            cluster: "4x1".into(),
            mode: "closed".into(),
            level: 8.0,
            client_cpu_pct: 12.0,
            connections: 4,
            target: "t".into(),
            data: "d".into(),
        };
        let r = RunReport::new(&s, Duration::from_secs(10), head);
        assert_eq!(r.requests, 102);
        assert_eq!(r.errors, 2);
        assert_eq!(r.partial, 10);
        assert_eq!(r.errors_by_code["RESOURCE_EXHAUSTED"], 2);
        assert!((r.qps - 10.0).abs() < 1e-9);
        assert!((r.p50_ms - 50.0).abs() < 1.5, "{}", r.p50_ms);
        assert!((r.max_ms - 100.0).abs() < 0.2);
        let json = serde_json::to_value(&r).unwrap();
        for field in [
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
            assert!(json.get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn code_names_are_grpc_style() {
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
