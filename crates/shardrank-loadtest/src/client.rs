//! Sending pre-encoded requests over a few HTTP/2 connections.
//!
//! A tonic codec whose request type is the already-encoded bytes, and whose response
//! type reads only `missing_shards` (field 2 of both RankResponse and
//! TimelineResponse) and `truncated_shards` (field 6 of RankResponse): the client spends
//! its CPU on the wire, not on protobuf.

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// What the load test reads of an answer.
#[derive(Clone, PartialEq, Message)]
pub struct Outcome {
    #[prost(uint32, repeated, tag = "2")]
    pub missing_shards: Vec<u32>,
    #[prost(uint32, repeated, tag = "6")]
    pub truncated_shards: Vec<u32>,
}

impl Outcome {
    /// A partial answer: a shard missing, or cut short by the deadline.
    pub fn partial(&self) -> bool {
        !self.missing_shards.is_empty() || !self.truncated_shards.is_empty()
    }
}

#[derive(Default, Clone)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct OutcomeDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for OutcomeDecoder {
    type Item = Outcome;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Outcome>, Status> {
        let len = src.remaining();
        Outcome::decode(src.copy_to_bytes(len))
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable answer: {e}")))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Outcome;
    type Encoder = RawEncoder;
    type Decoder = OutcomeDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> OutcomeDecoder {
        OutcomeDecoder
    }
}

/// Opens `n` connections to `target`, failing fast with a clear message.
pub async fn connect(target: &str, n: usize) -> Result<Vec<Channel>, String> {
    let endpoint = Endpoint::from_shared(target.to_string())
        .map_err(|e| format!("--target {target:?}: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("--target {target}: cannot connect: {e}"))?,
        );
    }
    Ok(out)
}

/// One call; `Ok` carries the outcome, `Err` the gRPC code.
pub async fn call(
    ch: &Channel,
    path: &'static str,
    body: Bytes,
    timeout: Duration,
) -> Result<Outcome, tonic::Code> {
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(64 << 20);
    grpc.ready().await.map_err(|_| tonic::Code::Unavailable)?;
    let mut req = tonic::Request::new(body);
    req.set_timeout(timeout);
    grpc.unary(
        req,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
    .map_err(|s| s.code())
}
