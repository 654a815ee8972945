//! `shardrank-shard`: checks its flags and models, binds, loads its partition (health
//! NOT_SERVING until then), serves, and drains on SIGTERM.

use clap::Parser;
use shardrank_core::model::Models;
use shardrank_proto::v1::shard_server::ShardServer;
use shardrank_proto::{addr_file, admin, serving};
use shardrank_shard::config::ShardConfig;
use shardrank_shard::ingest;
use shardrank_shard::metrics::ShardMetrics;
use shardrank_shard::service::{ShardService, ShardState};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    serving::exit_error("shardrank-shard", msg)
}

fn main() -> ExitCode {
    let cfg = ShardConfig::parse();
    match serving::runtime(cfg.worker_threads.map(usize::from)) {
        Ok(rt) => rt.block_on(serve(cfg)),
        Err(e) => fail(format!("starting the runtime: {e}")),
    }
}

async fn serve(cfg: ShardConfig) -> ExitCode {
    let otlp = match serving::init_tracing_with(
        cfg.log_format,
        cfg.otlp_endpoint
            .as_deref()
            .map(|endpoint| shardrank_proto::otlp::OtlpConfig {
                endpoint,
                service: "shardrank-shard",
                attributes: vec![("shardrank.shard_index", cfg.shard_index.to_string())],
            }),
    ) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    if let Err(e) = cfg.validate() {
        return fail(e);
    }
    shardrank_shard::huge_pages::set_enabled(cfg.huge_pages);
    let source = match cfg.source() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let live = match cfg.data.live() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let models = match &cfg.model_dir {
        Some(dir) => match Models::load_dir(dir) {
            Ok(m) => m,
            Err(e) => return fail(format!("--model-dir: {e}")),
        },
        None => Models::builtin(),
    };
    if cfg.check_config {
        println!(
            "shardrank-shard: configuration ok: shard {} of {}, {}{}, models {}",
            cfg.shard_index,
            cfg.num_shards,
            source.describe(),
            cfg.kafka().map_or(String::new(), |k| format!(
                ", kafka {} ({} partition {}, {})",
                k.brokers, k.post_topic, cfg.shard_index, k.user_topic
            )),
            cfg.model_dir
                .as_ref()
                .map_or("built-in".to_string(), |d| d.display().to_string())
        );
        return ExitCode::SUCCESS;
    }
    // Created here, not in check mode: a check changes nothing on the machine.
    if let Some(dir) = &cfg.snapshot_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(format!("--snapshot-dir {}: {e}", dir.display()));
        }
    }
    let admin_addr = match admin::admin_addr(cfg.admin_listen.as_deref(), cfg.listen) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ShardMetrics::register(&mut registry);
    serving::register_runtime(&mut registry);
    metrics.init_labels();
    let admin = Arc::new(admin::Admin {
        registry,
        serving: false.into(),
    });
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("--listen {}: {e}", cfg.listen)),
    };
    let admin_bound = match admin_addr {
        Some(addr) => match admin::serve(addr, admin.clone()).await {
            Ok(a) => Some(a),
            Err(e) => return fail(e),
        },
        None => None,
    };
    // Before loading: a supervisor that passed port 0 learns the ports now, and can
    // start the coordinator while this shard loads.
    let listen = match addr_file::report(cfg.addr_file.as_deref(), &listener, admin_bound) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let state = Arc::new(ShardState {
        metrics,
        index: cfg.shard_index,
        num_shards: cfg.num_shards,
        models,
        source: source.describe(),
        store: OnceLock::new(),
        live_position: Default::default(),
    });
    let (health, health_service) =
        serving::health(shardrank_proto::SHARD_SERVICE, Some(admin)).await;
    let (reflection_v1, reflection_v1alpha) = serving::reflection();
    tracing::info!(%listen, admin = ?admin_bound, shard = cfg.shard_index, num_shards = cfg.num_shards, source = %source.describe(), heavy_kernel = shardrank_core::model::heavy::kernel_name(), "shard starting: loading partition");
    // (On aarch64 fused multiply-adds are always in hardware.)
    if cfg!(target_arch = "x86_64") && !shardrank_core::model::heavy::hardware_fma() {
        tracing::warn!("this CPU has no AVX2+FMA: the heavy ranker runs its portable path, whose fused multiply-adds are software (same scores, many times slower)");
    }

    // Load in the background: the port answers health checks (NOT_SERVING) meanwhile.
    let kafka = cfg.kafka();
    let snapshots = cfg.snapshot_dir.clone().map(|dir| ingest::LiveSnapshots {
        dir,
        every: Duration::from_secs(cfg.snapshot_interval_secs.max(1)),
        source: source.clone(),
    });
    let (load_done_tx, load_done) = tokio::sync::oneshot::channel();
    {
        let state = state.clone();
        let health = health.clone();
        let (index, n) = (cfg.shard_index, cfg.num_shards);
        let snapshot_dir = cfg.snapshot_dir.clone();
        let source = source.clone();
        let kafka = kafka.clone();
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            let user_partitions = match &kafka {
                Some(k) => match ingest::kafka::prepare(k, n).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = load_done_tx.send(Err(format!("kafka: {e}")));
                        return;
                    }
                },
                None => 0,
            };
            let loader = state.clone();
            let (kafka_, snapshots_) = (kafka.clone(), snapshots.clone());
            let res = tokio::task::spawn_blocking(move || {
                let (kafka, snapshots) = (kafka_, snapshots_);
                let light = loader.models.light.clone();
                let mut loaded =
                    ingest::load_or_restore(&source, index, n, light, snapshot_dir.as_deref())
                        .map_err(|e| e.to_string())?;
                let consumer = match &kafka {
                    Some(k) => {
                        let mut c = ingest::kafka::open(k, index, user_partitions, &loaded.kafka)
                            .map_err(|e| format!("kafka: {e}"))?;
                        ingest::kafka::catch_up(&mut c, &mut loaded.store, k, &loader.metrics);
                        if let Some(s) = &snapshots {
                            ingest::kafka::snapshot(
                                &loaded.store,
                                &c,
                                s,
                                index,
                                n,
                                &loader.metrics,
                            );
                        }
                        Some(c)
                    }
                    None => None,
                };
                Ok::<_, String>((loaded, consumer))
            })
            .await;
            match res {
                Ok(Ok((loaded, consumer))) => {
                    let ingest::Loaded {
                        store,
                        report,
                        live_position,
                        restored,
                        ..
                    } = loaded;
                    state
                        .live_position
                        .store(live_position, std::sync::atomic::Ordering::Release);
                    report.log_skipped();
                    state.metrics.events_malformed.inc_by(report.malformed);
                    tracing::info!(
                        malformed_lines = report.malformed,
                        from_snapshot = restored,
                        live_position,
                        posts = store.len(),
                        authors = store.authors.len(),
                        events = store.stats.events,
                        bytes_per_post = store.post_bytes() as f64 / store.len().max(1) as f64,
                        author_table_bytes = store.author_bytes(),
                        huge_page_bytes = shardrank_shard::huge_pages::resident_bytes(),
                        watermark_ms = store.watermark_ms,
                        secs = t0.elapsed().as_secs_f64(),
                        "partition loaded: serving"
                    );
                    ingest::publish(&state.metrics, &store, &[]);
                    let _ = state.store.set(RwLock::new(store));
                    health.set(true).await;
                    let _ = load_done_tx.send(Ok(()));
                    if let (Some(c), Some(k)) = (consumer, kafka) {
                        let state = state.clone();
                        let spawned = std::thread::Builder::new()
                            .name("kafka-ingest".into())
                            .spawn(move || ingest::kafka::run(c, state, k, snapshots));
                        if let Err(e) = spawned {
                            tracing::error!(error = %e, "kafka: cannot start the ingest thread");
                        }
                    }
                }
                Ok(Err(e)) => {
                    let _ = load_done_tx.send(Err(e));
                }
                Err(e) => {
                    let _ = load_done_tx.send(Err(format!("loading task failed: {e}")));
                }
            }
        });
    }
    // A load that fails stops the process with the reason (a bad events line, say).
    let load_failed = async {
        match load_done.await {
            Ok(Err(e)) => e,
            _ => std::future::pending().await,
        }
    };

    if let Some((spec, rate)) = live {
        tokio::spawn(ingest::live::run_live(state.clone(), spec, rate, snapshots));
    }
    let shutdown = serving::Shutdown::on_signal(health.clone());
    let shed_state = state.clone();
    let admission = shardrank_proto::admission::Admission::new(
        cfg.max_in_flight,
        &["/shardrank.v1.Shard/Rank", "/shardrank.v1.Shard/RankBatch"],
        Arc::new(move |_: &str| {
            let m = &shed_state.metrics;
            m.requests_shed.inc();
            m.requests
                .get_or_create(&shardrank_shard::metrics::Code {
                    code: "RESOURCE_EXHAUSTED",
                })
                .inc();
        }),
    );
    let service = ShardServer::new(ShardService {
        state,
        admission: Some(admission.clone()),
        shutdown: Some(shutdown.clone()),
    })
    .max_decoding_message_size(cfg.max_message_bytes)
    .max_encoding_message_size(cfg.max_message_bytes);
    let server = serving::server_builder()
        .layer(admission)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.requested());
    let code = tokio::select! {
        _ = shutdown.drain_expired(Duration::from_secs(cfg.drain_secs)) => ExitCode::SUCCESS,
        res = server => match res {
            Ok(()) => {
                tracing::info!("shard stopped");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("server: {e}")),
        },
        e = load_failed => fail(format!("loading the partition: {e}")),
    };
    if let Some(g) = &otlp {
        g.shutdown();
    }
    code
}

fn incoming(l: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true))
}
