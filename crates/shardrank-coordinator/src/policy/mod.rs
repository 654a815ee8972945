//! How the coordinator treats the replicas of a shard, as small pure pieces that are
//! unit-tested without a network; [`crate::replica`] holds their state and
//! [`crate::shard_call`] applies them to one call.
//!
//! - [`balance`]: power of two choices over a peak-EWMA latency times outstanding calls
//!   (Finagle's and tower's `PeakEwma`, Elasticsearch's adaptive replica selection).
//! - [`eject`]: when a replica is taken out of rotation, and when it comes back.
//! - [`hedge`]: when a second copy of a slow call is sent, and the budget that caps it.
//! - [`retry`]: which failures are retried once on another replica.

pub mod balance;
pub mod eject;
pub mod hedge;
pub mod retry;
