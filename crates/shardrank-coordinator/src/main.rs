//! `shardrank-coordinator`: checks its flags, loads the user store while waiting for
//! every shard to be loaded and to agree on the partition layout, then binds and serves
//! until SIGTERM, draining in-flight requests.

use clap::Parser;
use shardrank_coordinator::config::CoordinatorConfig;
use shardrank_coordinator::metrics::CoordinatorMetrics;
use shardrank_coordinator::rank::Ranker;
use shardrank_coordinator::service::CoordinatorService;
use shardrank_coordinator::shard_client::ShardHandle;
use shardrank_coordinator::users::UserStore;
use shardrank_core::model::Models;
use shardrank_proto::v1::coordinator_server::CoordinatorServer;
use shardrank_proto::{admin, serving};
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    serving::exit_error("shardrank-coordinator", msg)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = CoordinatorConfig::parse();
    serving::init_tracing(cfg.log_format);
    let shard_urls = match cfg.validate() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let source = match cfg.data.source() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if let Some(dir) = &cfg.model_dir {
        if let Err(e) = Models::load_dir(dir) {
            return fail(format!("--model-dir: {e}"));
        }
    }
    let num_shards = shard_urls.len() as u32;
    let mut shards = Vec::with_capacity(shard_urls.len());
    for (i, replicas) in shard_urls.iter().enumerate() {
        match ShardHandle::connect_lazy(i as u32, &replicas[0], cfg.max_message_bytes) {
            Ok(h) => shards.push(h),
            Err(e) => return fail(format!("--shards: {e}")),
        }
    }
    if cfg.check_config {
        println!(
            "shardrank-coordinator: configuration ok: {num_shards} shards, {}, heavy depth {}",
            source.describe(),
            cfg.heavy_candidates
        );
        return ExitCode::SUCCESS;
    }

    // Load users and wait for the shards at the same time.
    let t0 = Instant::now();
    let describe = source.describe();
    let load = tokio::task::spawn_blocking(move || {
        let mut users = UserStore::default();
        source.for_each(|e| users.apply(&e)).map(|_| users)
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.shard_wait_secs);
    let mut waits = tokio::task::JoinSet::new();
    for h in &shards {
        let h = h.clone();
        waits.spawn(async move { h.wait_ready(num_shards, deadline).await });
    }
    let mut posts = 0u64;
    while let Some(res) = waits.join_next().await {
        match res {
            Ok(Ok(p)) => posts += p,
            Ok(Err(e)) => return fail(e),
            Err(e) => return fail(format!("waiting for shards: {e}")),
        }
    }
    let users = match load.await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => return fail(format!("loading users from {describe}: {e}")),
        Err(e) => return fail(format!("loading users: {e}")),
    };
    tracing::info!(
        shards = num_shards,
        posts,
        users = users.len(),
        watermark_ms = users.watermark_ms,
        secs = t0.elapsed().as_secs_f64(),
        "shards ready, users loaded"
    );

    let admin_addr = match admin::admin_addr(cfg.admin_listen.as_deref(), cfg.listen) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(CoordinatorMetrics::register(&mut registry));
    metrics.init_labels(num_shards);
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
    let ranker = Arc::new(Ranker {
        metrics,
        shards,
        users: Arc::new(RwLock::new(users)),
        heavy_candidates: cfg.heavy_candidates,
        max_candidates: cfg.max_candidates,
    });
    let service = CoordinatorServer::new(CoordinatorService {
        ranker,
        default_timeout: Duration::from_millis(cfg.request_timeout_ms),
    })
    .max_decoding_message_size(cfg.max_message_bytes)
    .max_encoding_message_size(cfg.max_message_bytes);
    let (health, health_service) =
        serving::health(shardrank_proto::COORDINATOR_SERVICE, Some(admin)).await;
    let (reflection_v1, reflection_v1alpha) = serving::reflection();
    health.set(true).await;
    tracing::info!(listen = %cfg.listen, admin = ?admin_bound, "coordinator serving");
    let shutdown = serving::Shutdown::on_signal(health.clone());
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
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
    match res {
        Ok(()) => {
            tracing::info!("coordinator stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("server: {e}")),
    }
}
