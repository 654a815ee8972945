//! Connections to the shards: one HTTP/2 channel per shard, connected lazily and
//! reconnected by tonic when a shard restarts. At start-up every shard must answer
//! `Info` with the partition layout the coordinator routes for.

use shardrank_proto::trace::TraceContext;
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{ShardInfoRequest, ShardRankRequest, ShardRankResponse};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone)]
pub struct ShardHandle {
    pub index: u32,
    pub url: String,
    client: ShardClient<Channel>,
}

impl ShardHandle {
    pub fn connect_lazy(index: u32, url: &str, max_message_bytes: usize) -> Result<Self, String> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("shard {index} URL {url:?}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client = ShardClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        Ok(ShardHandle {
            index,
            url: url.to_string(),
            client,
        })
    }

    /// One Rank call bounded by `timeout` (sent to the shard as grpc-timeout too).
    pub async fn rank(
        &self,
        req: ShardRankRequest,
        timeout: Duration,
        trace: TraceContext,
    ) -> Result<ShardRankResponse, tonic::Status> {
        let mut request = tonic::Request::new(req);
        request.set_timeout(timeout);
        if let Ok(v) = trace.header().parse() {
            request
                .metadata_mut()
                .insert(shardrank_proto::trace::HEADER, v);
        }
        let mut client = self.client.clone();
        match tokio::time::timeout(timeout, client.rank(request)).await {
            Ok(res) => res.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                "shard {} did not answer within {timeout:?}",
                self.index
            ))),
        }
    }

    /// Waits until the shard answers Info as loaded, then checks its layout.
    pub async fn wait_ready(
        &self,
        num_shards: u32,
        deadline: tokio::time::Instant,
    ) -> Result<u64, String> {
        loop {
            let mut client = self.client.clone();
            let last_err = match client.info(ShardInfoRequest {}).await {
                Ok(resp) => {
                    let info = resp.into_inner();
                    if info.shard_index != self.index || info.num_shards != num_shards {
                        return Err(format!(
                            "shard list mismatch: {} is listed as shard {} of {num_shards}, but it is shard {} of {} (check the order of --shards and the shard's --shard-index/--num-shards)",
                            self.url, self.index, info.shard_index, info.num_shards
                        ));
                    }
                    if info.ready {
                        return Ok(info.posts);
                    }
                    "still loading its partition".to_string()
                }
                Err(e) => e.message().to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "shard {} at {} was not ready in time: {last_err}",
                    self.index, self.url
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
