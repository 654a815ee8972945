//! The coordinator: the cluster's front door.
//!
//! Where a Rank request goes: [`service`] (gRPC `shardrank.v1.Coordinator`) ->
//! [`rank`], which validates it, looks the user up in the [`users`] store, splits the
//! candidates by md5 owner, asks [`placement`] how deep each shard must go, fans out
//! through the [`shard_client`]s, and lets [`merge`] decide whether a shard must be
//! asked for more (a second round) and pick the exact global top-k. [`config`] is the
//! command line, [`error`] the error enum with its gRPC codes.
//!
//! A Timeline request: [`service`] -> [`timeline`], which runs the timeline
//! [`pipeline`]: candidate sources, light ranking, filters, heavy ranking, selection,
//! each a named component calling the shards through the same [`shard_call`].

pub mod config;
pub mod error;
pub mod ingest;
pub mod merge;
pub mod metrics;
pub mod pipeline;
pub mod placement;
pub mod policy;
pub mod rank;
pub mod replica;
pub mod service;
pub mod shard_batch;
pub mod shard_call;
pub mod shard_client;
pub mod shard_stream;
pub mod timeline;
pub mod users;
