//! What the coordinator and the shards must agree on, bit for bit.
//!
//! A request's path: the coordinator [`routing`]s each candidate id to a shard; the
//! shard computes [`features`] for the ids it holds, scores them with the
//! [`model::light`] ranker, heavy-scores the best with [`model::heavy`], and the
//! coordinator merges the shards' lists with [`topk`]. Data reaches both sides as
//! [`events`], written by a file or made by the deterministic [`corpus`] generator.
//!
//! Everything here is pure and deterministic: the same input gives the same output on
//! any number of shards, which is what makes the distributed answer exact.

pub mod corpus;
pub mod events;
pub mod fastmath;
pub mod features;
pub mod ids;
pub mod lang;
pub mod live;
pub mod md5x8;
pub mod model;
pub mod rng;
pub mod routing;
pub mod simd;
pub mod source;
pub mod topk;
