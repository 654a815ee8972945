//! The coordinator's errors, and the gRPC code each one is. A shard that fails is not
//! an error of the request: it is listed in `missing_shards` of a successful answer.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("no shard answered: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    NotFound(String),
    /// A pipeline component whose policy is to fail the request failed.
    #[error("{0}")]
    PipelineFailed(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoordinatorError {
    pub fn grpc_code(&self) -> Code {
        match self {
            CoordinatorError::InvalidArgument(_) => Code::InvalidArgument,
            CoordinatorError::Unavailable(_) => Code::Unavailable,
            CoordinatorError::Unimplemented(_) => Code::Unimplemented,
            CoordinatorError::NotFound(_) => Code::NotFound,
            CoordinatorError::PipelineFailed(_) => Code::Unavailable,
            CoordinatorError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Status {
        Status::new(e.grpc_code(), e.to_string())
    }
}
