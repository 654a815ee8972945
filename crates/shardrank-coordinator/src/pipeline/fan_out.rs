//! Calls to every shard at once for pipeline components, through the same replica
//! choice, hedging and retries as Rank ([`crate::shard_call`]).

use crate::rank::shard_budget;
use crate::shard_call::{self, CallPolicy};
use crate::shard_client::{ShardGroup, ShardHandle};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The shards and how to call them.
#[derive(Clone)]
pub struct Shards {
    pub groups: Arc<Vec<ShardGroup>>,
    pub policy: CallPolicy,
}

impl Shards {
    pub fn num_shards(&self) -> u32 {
        self.groups.len() as u32
    }

    /// Sends `parts[i]` (shard index, request) to each shard at once; `send(handle,
    /// request, timeout)` makes one call. Returns each shard's result, in any order.
    pub async fn call_all<R, T, F, Fut>(
        &self,
        parts: Vec<(u32, R)>,
        deadline: Instant,
        send: F,
    ) -> Vec<(u32, Result<T, tonic::Status>)>
    where
        R: Clone + Send + Sync + 'static,
        T: Send + 'static,
        F: Fn(ShardHandle, R, Duration) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, tonic::Status>> + Send + 'static,
    {
        let mut set = tokio::task::JoinSet::new();
        for (shard, req) in parts {
            let group = self.groups[shard as usize].clone();
            let policy = self.policy.clone();
            let send = send.clone();
            set.spawn(async move {
                let out = shard_call::call(&group.set, deadline, &policy, |replica, left| {
                    send(
                        group.handles[replica].clone(),
                        req.clone(),
                        shard_budget(left),
                    )
                })
                .await;
                (shard, out.result)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }
}
