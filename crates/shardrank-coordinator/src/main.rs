//! `shardrank-coordinator`: checks its flags, loads the user store while waiting for
//! every shard to be loaded and to agree on the partition layout, then binds and serves
//! until SIGTERM, draining in-flight requests.

use clap::Parser;
use shardrank_coordinator::config::CoordinatorConfig;
use shardrank_coordinator::metrics::{CoordinatorMetrics, Rpc, RpcCode};
use shardrank_coordinator::pipeline;
use shardrank_coordinator::rank::Ranker;
use shardrank_coordinator::replica::ReplicaSet;
use shardrank_coordinator::service::CoordinatorService;
use shardrank_coordinator::shard_client::{self, ShardGroup, ShardHandle};
use shardrank_coordinator::timeline::Timeline;
use shardrank_coordinator::users::UserStore;
use shardrank_core::model::Models;
use shardrank_proto::v1::coordinator_server::CoordinatorServer;
use shardrank_proto::{addr_file, admin, serving};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    serving::exit_error("shardrank-coordinator", msg)
}

fn main() -> ExitCode {
    let cfg = CoordinatorConfig::parse();
    match serving::runtime(cfg.worker_threads.map(usize::from)) {
        Ok(rt) => rt.block_on(serve(cfg)),
        Err(e) => fail(format!("starting the runtime: {e}")),
    }
}

async fn serve(cfg: CoordinatorConfig) -> ExitCode {
    let otlp = match serving::init_tracing_with(
        cfg.log_format,
        cfg.otlp_endpoint
            .as_deref()
            .map(|endpoint| shardrank_proto::otlp::OtlpConfig {
                endpoint,
                service: "shardrank-coordinator",
                attributes: vec![],
            }),
    ) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    let shard_urls = match cfg.validate() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let source = match cfg.source() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let live = match cfg.data.live() {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    if let Some(dir) = &cfg.model_dir {
        if let Err(e) = Models::load_dir(dir) {
            return fail(format!("--model-dir: {e}"));
        }
    }
    let num_shards = shard_urls.len() as u32;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(CoordinatorMetrics::register(&mut registry));
    serving::register_runtime(&mut registry);
    let mut handles: Vec<Vec<ShardHandle>> = Vec::with_capacity(shard_urls.len());
    for (i, replicas) in shard_urls.iter().enumerate() {
        let mut group = Vec::with_capacity(replicas.len());
        for url in replicas {
            match ShardHandle::connect_lazy(
                i as u32,
                url,
                cfg.max_message_bytes,
                cfg.batch_policy(),
                cfg.shard_stream,
                metrics.shard_batch_items.clone(),
            ) {
                Ok(h) => group.push(h),
                Err(e) => return fail(format!("--shards: {e}")),
            }
        }
        handles.push(group);
    }
    let replica_counts: Vec<usize> = handles.iter().map(Vec::len).collect();
    let pipelines = [
        (
            cfg.pipeline_config.as_deref(),
            pipeline::config::DEFAULT_TIMELINE,
            "--pipeline-config",
        ),
        (
            cfg.rank_pipeline_config.as_deref(),
            pipeline::config::DEFAULT_RANK,
            "--rank-pipeline-config",
        ),
    ];
    let mut texts = Vec::new();
    for (path, default, flag) in pipelines {
        match pipeline::config::read(path, default, flag) {
            Ok(t) => texts.push(t),
            Err(e) => return fail(e),
        }
    }
    let users = Arc::new(RwLock::new(UserStore::default()));
    // The components' environment: the shards, the user store, the exact Rank path.
    let make_env = |groups: Vec<ShardGroup>, metrics: Arc<CoordinatorMetrics>| {
        let ranker = Arc::new(Ranker {
            metrics,
            shards: groups.clone(),
            users: users.clone(),
            heavy_candidates: cfg.heavy_candidates,
            max_candidates: cfg.max_candidates,
            policy: cfg.call_policy(),
            min_coverage: cfg.min_coverage,
        });
        pipeline::registry::Env {
            shards: pipeline::fan_out::Shards {
                groups: Arc::new(groups),
                policy: cfg.call_policy(),
            },
            users: users.clone(),
            ranker,
        }
    };
    // Checked before anything heavy starts: a bad pipeline fails start-up naming it.
    {
        let mut scratch = prometheus_client::registry::Registry::default();
        let env = make_env(
            Vec::new(),
            Arc::new(CoordinatorMetrics::register(&mut scratch)),
        );
        for (text, origin) in &texts {
            if let Err(e) = pipeline::config::build(text, origin, &env) {
                return fail(e);
            }
        }
    }
    if cfg.check_config {
        println!(
            "shardrank-coordinator: configuration ok: {num_shards} shards, replicas {replica_counts:?}, {}, heavy depth {}, max in flight {}, pipelines {} and {}",
            source.describe(),
            cfg.heavy_candidates,
            cfg.max_in_flight,
            texts[0].1,
            texts[1].1
        );
        return ExitCode::SUCCESS;
    }

    // Load users and wait for the shards at the same time.
    let t0 = Instant::now();
    let describe = source.describe();
    let kafka = cfg.kafka();
    metrics.init_labels(&replica_counts);
    let load = {
        let (kafka, metrics) = (kafka.clone(), metrics.clone());
        tokio::spawn(async move {
            let consumer = match &kafka {
                Some(k) => Some(
                    shardrank_coordinator::ingest::open(k, num_shards)
                        .await
                        .map_err(|e| format!("kafka: {e}"))?,
                ),
                None => None,
            };
            tokio::task::spawn_blocking(move || {
                let mut users = UserStore::default();
                users.begin_load();
                let report = source
                    .for_each(|e| users.apply(&e))
                    .map_err(|e| format!("loading users from {describe}: {e}"))?;
                let consumer = consumer.map(|mut c| {
                    shardrank_coordinator::ingest::catch_up(&mut c, &mut users, &metrics);
                    c
                });
                users.finish_load();
                Ok::<_, String>((users, report, consumer))
            })
            .await
            .map_err(|e| format!("loading users: {e}"))?
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.shard_wait_secs);
    // Every shard index needs one ready replica; replicas not ready yet start out of
    // rotation and join when their health check passes.
    let waits = handles.iter().enumerate().map(|(i, h)| {
        let probe = ShardGroup {
            index: i as u32,
            handles: h.clone().into(),
            set: Arc::new(ReplicaSet::new(i as u32, &shard_urls[i], &[], 0.0, None)),
        };
        async move { probe.wait_ready(num_shards, deadline).await }
    });
    // The first configuration error (a replica of another layout) ends the wait.
    let ready = match futures_util::future::try_join_all(waits).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let mut posts = 0u64;
    let mut shards = Vec::with_capacity(handles.len());
    for (i, (ready, p)) in ready.into_iter().enumerate() {
        posts += p;
        shards.push(ShardGroup {
            index: i as u32,
            handles: handles[i].clone().into(),
            set: Arc::new(ReplicaSet::new(
                i as u32,
                &shard_urls[i],
                &ready,
                cfg.hedge_max_ratio,
                Some(metrics.clone()),
            )),
        });
    }
    let (loaded, consumer) = match load.await {
        Ok(Ok((u, report, consumer))) => {
            report.log_skipped();
            metrics.events_malformed.inc_by(report.malformed);
            (u, consumer)
        }
        Ok(Err(e)) => return fail(e),
        Err(e) => return fail(format!("loading users: {e}")),
    };
    let mut loaded = loaded;
    // From now on new posts fan out to their authors' followers' inboxes.
    loaded.fan_out = true;
    loaded.collect_updates = consumer.as_ref().is_some_and(|c| c.publishes_updates());
    *users.write().unwrap_or_else(|p| p.into_inner()) = loaded;
    let (n_users, watermark_ms) = {
        let u = users.read().unwrap_or_else(|p| p.into_inner());
        (u.len(), u.watermark_ms)
    };
    tracing::info!(
        shards = num_shards,
        posts,
        users = n_users,
        watermark_ms,
        secs = t0.elapsed().as_secs_f64(),
        "shards ready, users loaded"
    );

    let admin_addr = match admin::admin_addr(cfg.admin_listen.as_deref(), cfg.listen) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let admin = Arc::new(admin::Admin {
        registry,
        serving: false.into(),
    });
    let admin_bound = match admin_addr {
        Some(addr) => match admin::serve(addr, admin.clone()).await {
            Ok(a) => Some(a),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => return fail(format!("--listen {}: {e}", cfg.listen)),
    };
    let listen = match addr_file::report(cfg.addr_file.as_deref(), &listener, admin_bound) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    for group in &shards {
        tokio::spawn(shard_client::health_loop(
            group.clone(),
            num_shards,
            Duration::from_millis(cfg.health_check_ms),
        ));
    }
    let shed_metrics = metrics.clone();
    let admission = shardrank_proto::admission::Admission::new(
        cfg.max_in_flight,
        &[
            "/shardrank.v1.Coordinator/Rank",
            "/shardrank.v1.Coordinator/Timeline",
        ],
        Arc::new(move |path: &str| {
            let rpc = if path.ends_with("/Rank") {
                "Rank"
            } else {
                "Timeline"
            };
            shed_metrics.requests_shed.get_or_create(&Rpc { rpc }).inc();
            shed_metrics
                .requests
                .get_or_create(&RpcCode {
                    rpc,
                    code: "RESOURCE_EXHAUSTED",
                })
                .inc();
        }),
    );
    metrics.watermark_seconds.set(watermark_ms as f64 / 1e3);
    if let Some((spec, rate)) = live {
        tokio::spawn(shardrank_coordinator::ingest::run_live(
            users.clone(),
            metrics.clone(),
            spec,
            rate,
        ));
    }
    if let Some(c) = consumer {
        let (users, metrics) = (users.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("kafka-ingest".into())
            .spawn(move || shardrank_coordinator::ingest::run(c, users, metrics));
        if let Err(e) = spawned {
            return fail(format!("kafka: cannot start the ingest thread: {e}"));
        }
    }
    let env = make_env(shards, metrics.clone());
    let ranker = env.ranker.clone();
    let mut built = Vec::new();
    for (text, origin) in &texts {
        match pipeline::config::build(text, origin, &env) {
            Ok(p) => built.push(p),
            Err(e) => return fail(e),
        }
    }
    let rank_pipeline = Arc::new(built.pop().expect("two pipelines"));
    let timeline = Arc::new(Timeline {
        pipeline: built.pop().expect("two pipelines"),
        users: users.clone(),
        metrics: metrics.clone(),
    });
    let service = CoordinatorServer::new(CoordinatorService {
        ranker,
        rank_pipeline,
        timeline,
        default_timeout: Duration::from_millis(cfg.request_timeout_ms),
    })
    .max_decoding_message_size(cfg.max_message_bytes)
    .max_encoding_message_size(cfg.max_message_bytes);
    let (health, health_service) =
        serving::health(shardrank_proto::COORDINATOR_SERVICE, Some(admin)).await;
    let (reflection_v1, reflection_v1alpha) = serving::reflection();
    health.set(true).await;
    tracing::info!(%listen, admin = ?admin_bound, "coordinator serving");
    let shutdown = serving::Shutdown::on_signal(health.clone());
    let server = serving::server_builder()
        .layer(admission)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.requested(),
        );
    let res = tokio::select! {
        res = server => res,
        _ = shutdown.drain_expired(Duration::from_secs(cfg.drain_secs)) => Ok(()),
    };
    if let Some(g) = &otlp {
        g.shutdown();
    }
    match res {
        Ok(()) => {
            tracing::info!("coordinator stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("server: {e}")),
    }
}
