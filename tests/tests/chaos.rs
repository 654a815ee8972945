//! The fault scenarios of the fault-tolerance issue, under load from the real load-test
//! client, with their outcomes asserted (`make chaos` prints the same scenarios with the
//! standard corpus). One at a time: they measure latency on a shared 2-core machine.

use serde_json::Value;
use shardrank_tests::chaos::{self, Outcome, Setup};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn n(v: &Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// No errors, and every answer well inside the client's deadline.
fn clean(o: &Outcome, phase: &str, s: &Setup) {
    let r = o.phase(phase);
    assert!(n(r, "requests") > 0.0, "{}", o.table());
    assert_eq!(n(r, "errors"), 0.0, "{phase} had errors:\n{}", o.table());
    assert!(
        n(r, "p99_ms") < s.deadline.as_millis() as f64,
        "{phase} p99 beyond the deadline:\n{}",
        o.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_costs_no_request_and_comes_back_after_a_restart() {
    let _one = SERIAL.lock().await;
    let s = Setup::test();
    let o = chaos::kill_shard(&s).await;
    println!("{}", o.table());
    clean(&o, "before", &s);
    clean(&o, "during", &s);
    assert!(
        n(o.phase("during"), "partial") > 0.0,
        "partial answers are flagged:\n{}",
        o.table()
    );
    let back = o.recovery.expect("full answers after the restart");
    assert!(back.as_secs() < 10, "{back:?}");
    clean(&o, "after restart", &s);
    assert_eq!(n(o.phase("after restart"), "partial"), 0.0, "{}", o.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_costs_no_request_and_no_shard() {
    let _one = SERIAL.lock().await;
    let s = Setup::test();
    let o = chaos::kill_replica(&s).await;
    println!("{}", o.table());
    for phase in ["before", "during", "after"] {
        clean(&o, phase, &s);
        assert_eq!(n(o.phase(phase), "partial"), 0.0, "{phase}:\n{}", o.table());
    }
    assert!(o.counters["replica_ejections"] >= 1.0, "{}", o.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_is_hedged_around_within_the_deadline() {
    let _one = SERIAL.lock().await;
    let s = Setup::test();
    let o = chaos::stall_replica(&s, true).await;
    println!("{}", o.table());
    for phase in ["before", "during", "after"] {
        clean(&o, phase, &s);
    }
    // Hedges answered for the stopped replica, and health checks took it out.
    assert!(o.counters["shard_hedges_won"] >= 1.0, "{}", o.table());
    assert!(o.counters["replica_ejections"] >= 1.0, "{}", o.table());
    // Within a replica's stall most answers stay whole: hedges and ejection, not
    // timeouts, carry the load.
    let during = o.phase("during");
    assert!(
        n(during, "partial") < 0.05 * n(during, "requests"),
        "{}",
        o.table()
    );
    // ... and the tail stays near the no-fault tail, far from the deadline a call to the
    // stopped replica would otherwise wait for (loose: the machine is shared and noisy).
    let before = n(o.phase("before"), "p99_ms");
    assert!(
        n(during, "p99_ms") <= (3.0 * before).max(50.0),
        "{}",
        o.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_sustainable_rate_is_shed_fast_and_recovers() {
    let _one = SERIAL.lock().await;
    let s = Setup::test();
    let o = chaos::overload(&s).await;
    println!("{}", o.table());
    clean(&o, "before", &s);
    let over = o.phase("10x");
    let codes = over["errors_by_code"].as_object().unwrap();
    assert!(
        codes
            .get("RESOURCE_EXHAUSTED")
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
            > 0.0,
        "the excess is refused:\n{}",
        o.table()
    );
    // The excess is shed; of what is admitted, a request may now and then miss its
    // 500 ms deadline while the load test shares the two cores (seen: 1 of 16,920 in
    // CI, 21 of 13,700 in a local run), but no more than that and nothing else fails.
    // Without shedding, queues grow and nearly every admitted request misses it.
    let mut late = 0.0;
    for (code, n) in codes {
        match code.as_str() {
            "RESOURCE_EXHAUSTED" | "CLIENT_OVERLOADED" => {}
            "CANCELLED" | "DEADLINE_EXCEEDED" => late += n.as_f64().unwrap(),
            _ => panic!("only shedding, no failures:\n{}", o.table()),
        }
    }
    assert!(
        late <= 0.005 * n(over, "requests"),
        "deadline misses beyond 0.5%:\n{}",
        o.table()
    );
    assert!(n(over, "qps") > 0.0, "admitted requests are still answered");
    assert!(o.counters["requests_shed"] > 0.0);
    // Load drops: normal service at once.
    clean(&o, "after", &s);
    let (before, during) = o.peak_rss.unwrap();
    assert!(
        during < before + (256 << 20),
        "memory bounded under overload: {before} -> {during} bytes"
    );
}
