//! The coordinator's command line. Flag names are a contract: manifests and tests use them.

use clap::Parser;
use shardrank_core::source::DataArgs;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The shardrank coordinator: routes each candidate to its shard by md5(id) mod N, fans
/// out to all shards at once, and merges their answers into the exact global top-k.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardrank-coordinator", version)]
pub struct CoordinatorConfig {
    /// Address to serve gRPC on (shardrank.v1.Coordinator, grpc.health.v1, reflection).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// The shards, in index order: the i-th comma-separated URL is shard i, and the
    /// number of URLs is the shard count. (`|` between URLs of one shard will name its
    /// replicas; one replica per shard is supported for now.)
    #[arg(
        long,
        default_value = "http://127.0.0.1:7001",
        value_name = "URL,URL,..."
    )]
    pub shards: String,
    /// Admin HTTP address for GET /metrics and GET /healthz; `none` turns it off.
    /// Default: the --listen host, port + 1000.
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// H: how many of the best candidates by light score the heavy ranker scores (at
    /// least top_k is always scored).
    #[arg(long, default_value_t = 1000)]
    pub heavy_candidates: usize,
    /// Deadline for a request when the client sends none (grpc-timeout); a shard that
    /// has not answered by then is listed in missing_shards.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub request_timeout_ms: u64,
    /// Most candidate ids accepted in one request.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_candidates: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_message_bytes: usize,
    /// How long to wait at start-up for every shard to answer and be loaded.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub shard_wait_secs: u64,
    /// Model directory: accepted for symmetry with the shards, which do the scoring;
    /// checked at start-up so a bad file fails here too.
    #[arg(long, value_name = "DIR")]
    pub model_dir: Option<PathBuf>,
    /// On SIGTERM, how long in-flight requests may take before open connections are
    /// closed and the process exits.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub drain_secs: u64,
    /// Log format on stderr: `text` or `json` (one object per line, with the request's
    /// trace id on every line logged for it). Filter with RUST_LOG.
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    pub log_format: shardrank_proto::serving::LogFormat,
    /// Parse and check the flags, print the configuration, and exit without loading data,
    /// contacting shards or binding the port.
    #[arg(long)]
    pub check_config: bool,
}

/// Parses `--shards`: commas between shards, `|` between replicas of one shard.
pub fn parse_shards(spec: &str) -> Result<Vec<Vec<String>>, String> {
    let shards: Vec<Vec<String>> = spec
        .split(',')
        .map(|s| s.split('|').map(|u| u.trim().to_string()).collect())
        .collect();
    for (i, replicas) in shards.iter().enumerate() {
        for url in replicas {
            if url.is_empty() {
                return Err(format!("--shards: shard {i} has an empty URL in {spec:?}"));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "--shards: shard {i} URL {url:?} must start with http:// or https://"
                ));
            }
            url.parse::<tonic::transport::Uri>()
                .map_err(|e| format!("--shards: shard {i} URL {url:?} is not a valid URI: {e}"))?;
        }
        if replicas.len() > 1 {
            return Err(format!(
                "--shards: shard {i} lists {} replicas; replicas are not supported by this build yet, give one URL per shard",
                replicas.len()
            ));
        }
    }
    Ok(shards)
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<Vec<Vec<String>>, String> {
        if self.heavy_candidates == 0 {
            return Err("--heavy-candidates must be at least 1".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("--request-timeout-ms must be at least 1".into());
        }
        parse_shards(&self.shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_lists() {
        assert_eq!(parse_shards("http://a:1,http://b:2").unwrap().len(), 2);
        assert!(parse_shards("http://a:1,,http://b:2")
            .unwrap_err()
            .contains("shard 1"));
        assert!(parse_shards("a:1").unwrap_err().contains("http://"));
        assert!(parse_shards("http://a:1|http://b:1")
            .unwrap_err()
            .contains("replicas"));
    }
}
