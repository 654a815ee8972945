//! The shard's errors, and the gRPC code each one is.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {index} is still loading its partition")]
    Loading { index: u32 },
    #[error("routing mismatch: the coordinator sent a request for shard {got_index} of {got_shards}, but this is shard {index} of {num_shards}; fix the coordinator's --shards list or this shard's --shard-index/--num-shards")]
    Layout {
        got_index: u32,
        got_shards: u32,
        index: u32,
        num_shards: u32,
    },
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the request's deadline passed before ranking started ({0})")]
    DeadlineExceeded(String),
}

impl ShardError {
    pub fn grpc_code(&self) -> Code {
        match self {
            ShardError::Loading { .. } => Code::Unavailable,
            ShardError::Layout { .. } => Code::FailedPrecondition,
            ShardError::InvalidArgument(_) => Code::InvalidArgument,
            ShardError::Internal(_) => Code::Internal,
            ShardError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }
}

impl From<ShardError> for Status {
    fn from(e: ShardError) -> Status {
        Status::new(e.grpc_code(), e.to_string())
    }
}
