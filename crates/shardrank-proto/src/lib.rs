//! The `shardrank.v1` gRPC contract and the serving plumbing the binaries share.
//!
//! - [`v1`]: code generated from `proto/shardrank/v1/*.proto`: the public `Coordinator`
//!   service and the internal `Shard` service.
//! - [`codec`]: the services' gRPC codec (prost, decoding candidate id lists in bulk),
//!   and the shard request whose ids are shared between attempts rather than copied.
//! - [`serving`]: health, reflection, logging and graceful shutdown, identical for every
//!   binary so that probes and operators see one behaviour.
//! - [`admission`]: load shedding (an in-flight limit answered RESOURCE_EXHAUSTED).
//! - [`admin`]: the admin HTTP port (/metrics, /healthz); [`trace`]: W3C traceparent.

pub mod v1 {
    tonic::include_proto!("shardrank.v1");
}

pub mod addr_file;
pub mod admin;
pub mod admission;
pub mod codec;
pub mod otlp;
pub mod serving;
pub mod trace;

/// The encoded descriptor set of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shardrank_descriptor.bin"));

/// Full gRPC service names, as health checks and reflection know them.
pub const COORDINATOR_SERVICE: &str = "shardrank.v1.Coordinator";
pub const SHARD_SERVICE: &str = "shardrank.v1.Shard";
