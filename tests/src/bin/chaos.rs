//! `make chaos`: the fault scenarios of tests/chaos.rs on the standard corpus, printed
//! as tables (requests, errors by code, partial answers, p50/p99 before, during and
//! after each fault). Needs the release binaries (SHARDRANK_BIN_DIR=target/release).

use shardrank_tests::chaos::{self, Setup};
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut setup = Setup {
        corpus: "standard",
        workload: "rank-1k",
        rate: 0.0,
        phase: Duration::from_secs(5),
        deadline: Duration::from_millis(500),
        stall: Duration::from_secs(5),
        overload: Duration::from_secs(10),
    };
    if quick {
        setup = Setup::test();
    }
    // The normal load: half of what a 4x1 cluster sustains here, measured first.
    if setup.rate == 0.0 {
        let c = shardrank_tests::Cluster::start(4, &["--corpus", setup.corpus]).await;
        let cap = chaos::capacity(&c.url, &setup, Duration::from_secs(5));
        setup.rate = (cap * 0.5).round().max(1.0);
        println!(
            "# chaos: {} on the {} corpus, normal load {} req/s open loop (half of the {cap:.0}/s a 4x1 cluster sustains here), deadline {} ms\n",
            setup.workload,
            setup.corpus,
            setup.rate,
            setup.deadline.as_millis()
        );
    }
    let outcomes = [
        chaos::kill_shard(&setup).await,
        chaos::kill_replica(&setup).await,
        chaos::stall_replica(&setup, false).await,
        chaos::stall_replica(&setup, true).await,
        chaos::overload(&setup).await,
    ];
    for o in &outcomes {
        println!("{}", o.table());
    }
}
