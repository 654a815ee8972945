//! A shard worker: owns the posts whose ids md5-route to its index, and ranks
//! candidates among them.
//!
//! Where a request goes: [`service`] (gRPC `shardrank.v1.Shard`) checks the partition
//! layout and hands the request to [`rank`], which looks candidates up in the
//! [`store`], light-scores all of them in parallel chunks, keeps the requested slice of
//! the local light order, and heavy-scores it. The store is filled by [`ingest`] from
//! the generator or an events file. [`config`] is the command line.

pub mod config;
pub mod error;
pub mod huge_pages;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod rank;
pub mod retrieve;
pub mod service;
pub mod store;
pub mod windows;
