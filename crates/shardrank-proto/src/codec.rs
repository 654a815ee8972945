//! The gRPC codec of every `shardrank.v1` service: prost's wire format, with candidate
//! id lists decoded and encoded in bulk, and the shards' answers' arrays decoded in bulk.
//!
//! tonic buffers a whole message before it decodes it, but hands prost a `DecodeBuf`
//! over a `BytesMut`; prost then reads each value through `Buf::chunk` and
//! `Buf::advance` (several branches and a bookkeeping update each), a varint byte by
//! byte, into a vector grown by doubling. A ranking request carries up to 100,000
//! candidate ids, so that was paid 100,000 times per request at the coordinator and
//! 25,000 times per shard: measured, about 33 ns per id for a `RankRequest` and 7 ns
//! for a `ShardRankRequest`. Here a message is decoded from a `&[u8]`, and the two id
//! lists by hand (a varint eight bytes at a time into a vector sized once, fixed64s as
//! one copy); every other field goes to prost's generated `merge_field`, so the result
//! is prost's, which the tests check on random and damaged messages.
//!
//! Encoding is prost's, into a buffer reserved for the whole message at once (tonic's
//! starts at 8 KiB and doubles, copying, as a 200 KB shard request is written), and a
//! `ShardRankRequest`'s ids as one block written last (fields may come in any order).

use crate::v1;
use bytes::BufMut;
use prost::encoding::{
    decode_key, decode_varint, encode_key, encode_varint, DecodeContext, WireType,
};
use prost::{DecodeError, Message};
use std::marker::PhantomData;
use std::sync::Arc;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// How a message goes to and from the wire: prost's way unless a message says
/// otherwise. Every message a service sends or receives needs an impl (the list below).
pub trait WireMessage: Message + Default {
    fn decode_slice(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(Self::decode(bytes)?)
    }

    /// Writes the message, `encoded_len()` bytes (reserved by the encoder first).
    fn encode_into(self, buf: &mut impl BufMut) {
        self.encode_raw(buf);
    }
}

/// A message that does not parse: prost's error, or one of the hand decoders'.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Prost(#[from] DecodeError),
    #[error("failed to decode Protobuf message: packed candidate_ids: {0}")]
    Ids(&'static str),
    #[error("failed to decode Protobuf message: a packed fixed-width field: {0}")]
    Packed(&'static str),
    #[error("failed to decode Protobuf message: a nested message runs past its end")]
    Truncated,
}

/// The codec named in `build.rs` for the generated clients and servers.
#[derive(Debug, Clone)]
pub struct WireCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for WireCodec<T, U> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<T, U> Codec for WireCodec<T, U>
where
    T: WireMessage + Send + 'static,
    U: WireMessage + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = WireEncoder<T>;
    type Decoder = WireDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

#[derive(Debug, Clone)]
pub struct WireEncoder<T>(PhantomData<T>);

impl<T: WireMessage> Encoder for WireEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode_into(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U` from the message's bytes as one slice.
#[derive(Debug, Clone)]
pub struct WireDecoder<U>(PhantomData<U>);

impl<U: WireMessage> Decoder for WireDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        let len = buf.remaining();
        let decoded = if buf.chunk().len() == len {
            let item = U::decode_slice(buf.chunk());
            buf.advance(len);
            item
        } else {
            // Not contiguous (tonic does not do this today): one copy, then the slice.
            U::decode_slice(&buf.copy_to_bytes(len)[..])
        };
        // As prost's codec does: a message that does not parse is INTERNAL.
        decoded
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl WireMessage for v1::RankRequest {
    fn decode_slice(bytes: &[u8]) -> Result<Self, WireError> {
        decode_with_ids(bytes, 2, |packed, msg: &mut Self| {
            decode_packed_varints(packed, &mut msg.candidate_ids)
        })
    }
}

impl WireMessage for v1::ShardRankRequest {
    fn decode_slice(bytes: &[u8]) -> Result<Self, WireError> {
        decode_with_ids(bytes, SHARD_IDS_TAG, |packed, msg: &mut Self| {
            decode_packed_fixed64(packed, &mut msg.candidate_ids)
        })
    }

    fn encode_into(mut self, buf: &mut impl BufMut) {
        let ids = std::mem::take(&mut self.candidate_ids);
        encode_shard_request(&self, &ids, buf);
    }
}

/// A shard request without its ids (`head`), then `ids` as one block, last (fields may
/// come in any order).
fn encode_shard_request(head: &v1::ShardRankRequest, ids: &[u64], buf: &mut impl BufMut) {
    head.encode_raw(buf);
    encode_packed_fixed64(SHARD_IDS_TAG, ids, buf);
}

impl WireMessage for v1::RankResponse {}
impl WireMessage for v1::TimelineRequest {}
impl WireMessage for v1::TimelineResponse {}
impl WireMessage for v1::ShardRankResponse {
    /// The four parallel arrays each as one copy into a vector sized once. prost pushes
    /// them value by value into vectors grown by doubling: for a 300-item answer, seven
    /// reallocations per array, 28 per answer, four answers per request; past 1 KB each
    /// one sent glibc's malloc to consolidate its free lists (about 4% of the
    /// coordinator's CPU at rank-1k).
    fn decode_slice(bytes: &[u8]) -> Result<Self, WireError> {
        decode_with_fields(
            bytes,
            &[1, 2, 3, 4],
            |tag, packed, m: &mut Self| match tag {
                1 => decode_packed_fixed64(packed, &mut m.ids),
                2 => decode_packed_fixed64(packed, &mut m.author_ids),
                3 => decode_packed_f32(packed, &mut m.light_scores),
                _ => decode_packed_f32(packed, &mut m.heavy_scores),
            },
            || WireError::Truncated,
        )
    }
}
impl WireMessage for v1::ShardInfoRequest {}
impl WireMessage for v1::ShardInfoResponse {}
impl WireMessage for v1::RetrieveRequest {}
impl WireMessage for v1::RetrieveResponse {}
impl WireMessage for v1::ShardRankBatchResponse {
    /// Each result's response through the response's decoder (its arrays in bulk).
    fn decode_slice(buf: &[u8]) -> Result<Self, WireError> {
        decode_batch(
            buf,
            |m: &mut Self| &mut m.results,
            3,
            |payload, result: &mut v1::ShardRankBatchResult| {
                set_or_merge(&mut result.response, payload)
            },
        )
    }
}

impl WireMessage for v1::ShardRankBatchRequest {
    /// Each item's request through the shard request's decoder (its ids in bulk).
    fn decode_slice(buf: &[u8]) -> Result<Self, WireError> {
        decode_batch(
            buf,
            |m: &mut Self| &mut m.items,
            1,
            |payload, item: &mut v1::ShardRankBatchItem| set_or_merge(&mut item.request, payload),
        )
    }
}

/// Decodes a batch: a message whose field 1 is a repeated message (its `items`), each
/// item's field `inner` through `nested`, every other field through prost.
fn decode_batch<M: Message + Default, I: Message + Default>(
    mut buf: &[u8],
    items: fn(&mut M) -> &mut Vec<I>,
    inner: u32,
    nested: impl Fn(&[u8], &mut I) -> Result<(), WireError>,
) -> Result<M, WireError> {
    let mut msg = M::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let item = decode_with_nested(&mut buf, inner, &nested)?;
            items(&mut msg).push(item);
        } else {
            msg.merge_field(tag, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(msg)
}

/// A message field from `payload`, or, if the field came before, `payload` merged into
/// it (prost's rule for a message field seen twice).
fn set_or_merge<T: WireMessage>(field: &mut Option<T>, payload: &[u8]) -> Result<(), WireError> {
    match field {
        Some(m) => m.merge(payload)?,
        None => *field = Some(T::decode_slice(payload)?),
    }
    Ok(())
}

/// Decodes the length-delimited message at the front of `buf` (advanced past it): its
/// field `tag`, if length-delimited, through `field`, every other field through prost.
fn decode_with_nested<M: Message + Default>(
    buf: &mut &[u8],
    tag: u32,
    field: impl Fn(&[u8], &mut M) -> Result<(), WireError>,
) -> Result<M, WireError> {
    let len = decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(WireError::Truncated);
    }
    let (inner, rest) = buf.split_at(len as usize);
    *buf = rest;
    decode_with_field(inner, tag, field, || WireError::Truncated)
}

/// A `ShardRankRequest` whose candidate ids are shared rather than owned. The
/// coordinator sends one shard's ids to a replica, then perhaps to a hedge, a retry or a
/// second round; each attempt used to copy them (200 KB per shard at `rank-100k`, 3% of
/// the coordinator's CPU in `memmove`). On the wire it is exactly the request it stands
/// for (tested), so the shard decodes it as a `ShardRankRequest`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedShardRankRequest {
    /// Every field but `candidate_ids`, which is kept empty here.
    head: v1::ShardRankRequest,
    ids: Arc<Vec<u64>>,
}

/// `candidate_ids` in `ShardRankRequest`.
const SHARD_IDS_TAG: u32 = 4;

impl SharedShardRankRequest {
    /// The request `head` with `ids` as its candidates (any ids of `head`'s own are
    /// dropped).
    pub fn new(mut head: v1::ShardRankRequest, ids: Arc<Vec<u64>>) -> Self {
        head.candidate_ids = Vec::new();
        SharedShardRankRequest { head, ids }
    }

    pub fn head(&self) -> &v1::ShardRankRequest {
        &self.head
    }

    pub fn ids(&self) -> &Arc<Vec<u64>> {
        &self.ids
    }
}

impl From<v1::ShardRankRequest> for SharedShardRankRequest {
    fn from(mut req: v1::ShardRankRequest) -> Self {
        let ids = std::mem::take(&mut req.candidate_ids);
        SharedShardRankRequest::new(req, Arc::new(ids))
    }
}

impl Message for SharedShardRankRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_shard_request(&self.head, &self.ids, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == SHARD_IDS_TAG {
            let ids = Arc::make_mut(&mut self.ids);
            prost::encoding::fixed64::merge_repeated(wire_type, ids, buf, ctx)
        } else {
            self.head.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.head.encoded_len()
            + prost::encoding::fixed64::encoded_len_packed(SHARD_IDS_TAG, &self.ids)
    }

    fn clear(&mut self) {
        self.head.clear();
        self.ids = Arc::default();
    }
}

impl WireMessage for SharedShardRankRequest {
    fn decode_slice(bytes: &[u8]) -> Result<Self, WireError> {
        Ok(v1::ShardRankRequest::decode_slice(bytes)?.into())
    }

    fn encode_into(self, buf: &mut impl BufMut) {
        encode_shard_request(&self.head, &self.ids, buf);
    }
}

/// One item of a [`SharedShardRankBatch`]: a `ShardRankBatchItem` whose request's ids
/// are shared.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedBatchItem {
    pub request: SharedShardRankRequest,
    pub timeout_us: u64,
    pub traceparent: String,
}

impl SharedBatchItem {
    /// Fields as prost writes them: in order, scalars only when not zero or empty.
    fn encode_fields(&self, buf: &mut impl BufMut) {
        prost::encoding::message::encode(1, &self.request, buf);
        if self.timeout_us != 0 {
            prost::encoding::uint64::encode(2, &self.timeout_us, buf);
        }
        if !self.traceparent.is_empty() {
            prost::encoding::string::encode(3, &self.traceparent, buf);
        }
    }

    fn encoded_len(&self) -> usize {
        prost::encoding::message::encoded_len(1, &self.request)
            + if self.timeout_us != 0 {
                prost::encoding::uint64::encoded_len(2, &self.timeout_us)
            } else {
                0
            }
            + if self.traceparent.is_empty() {
                0
            } else {
                prost::encoding::string::encoded_len(3, &self.traceparent)
            }
    }
}

/// A `ShardRankBatchRequest` whose items' ids are shared, not copied (as
/// [`SharedShardRankRequest`] for `Rank`). On the wire it is exactly the batch it
/// stands for (tested).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedShardRankBatch {
    /// Shared, so that the sender keeps the items the call consumes (to send them one by
    /// one to a shard that does not serve RankBatch).
    pub items: Arc<Vec<SharedBatchItem>>,
    /// On `RankStream`, the sender's number for the batch (0 on `RankBatch`).
    pub sequence: u64,
}

impl Message for SharedShardRankBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for item in self.items.iter() {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(item.encoded_len() as u64, buf);
            item.encode_fields(buf);
        }
        if self.sequence != 0 {
            prost::encoding::uint64::encode(2, &self.sequence, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            let mut item = v1::ShardRankBatchItem::default();
            prost::encoding::message::merge(wire_type, &mut item, buf, ctx)?;
            Arc::make_mut(&mut self.items).push(SharedBatchItem {
                request: item.request.unwrap_or_default().into(),
                timeout_us: item.timeout_us,
                traceparent: item.traceparent,
            });
            Ok(())
        } else if tag == 2 {
            prost::encoding::uint64::merge(wire_type, &mut self.sequence, buf, ctx)
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.items
            .iter()
            .map(|i| {
                let n = i.encoded_len();
                prost::encoding::key_len(1) + prost::encoding::encoded_len_varint(n as u64) + n
            })
            .sum::<usize>()
            + if self.sequence != 0 {
                prost::encoding::uint64::encoded_len(2, &self.sequence)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.items = Arc::default();
        self.sequence = 0;
    }
}

impl WireMessage for SharedShardRankBatch {
    fn encode_into(self, buf: &mut impl BufMut) {
        self.encode_raw(buf);
    }
}

/// A `shardrank.v1.Shard` method whose request the coordinator sends with shared ids
/// (the generated client takes only the owned types).
pub trait ShardMethod: WireMessage + Send + 'static {
    type Response: WireMessage + Send + 'static;
    const NAME: &'static str;
    /// `/shardrank.v1.Shard/{NAME}`.
    const PATH: &'static str;
}

impl ShardMethod for SharedShardRankRequest {
    type Response = v1::ShardRankResponse;
    const NAME: &'static str = "Rank";
    const PATH: &'static str = "/shardrank.v1.Shard/Rank";
}

impl ShardMethod for SharedShardRankBatch {
    type Response = v1::ShardRankBatchResponse;
    const NAME: &'static str = "RankBatch";
    const PATH: &'static str = "/shardrank.v1.Shard/RankBatch";
}

/// A unary call of `Req::PATH`: what the generated client's method
/// does, for a request with shared ids.
pub async fn shard_unary<T, Req: ShardMethod>(
    grpc: &mut tonic::client::Grpc<T>,
    mut request: tonic::Request<Req>,
) -> Result<tonic::Response<Req::Response>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(Req::PATH);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("shardrank.v1.Shard", Req::NAME));
    grpc.unary(request, path, WireCodec::default()).await
}

/// Opens `RankStream`: `batches` go out as they come, and their answers come back on the
/// returned stream (each with its batch's `sequence`).
pub async fn rank_stream<T, S>(
    grpc: &mut tonic::client::Grpc<T>,
    mut request: tonic::Request<S>,
) -> Result<tonic::Response<tonic::Streaming<v1::ShardRankBatchResponse>>, Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    S: tonic::codegen::tokio_stream::Stream<Item = SharedShardRankBatch> + Send + 'static,
{
    grpc.ready()
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(RANK_STREAM_PATH);
    request
        .extensions_mut()
        .insert(tonic::GrpcMethod::new("shardrank.v1.Shard", "RankStream"));
    grpc.streaming(request, path, WireCodec::default()).await
}

/// The path of `Shard/RankStream`.
pub const RANK_STREAM_PATH: &str = "/shardrank.v1.Shard/RankStream";

/// Decodes `bytes` as an `M`: the packed form of field `ids_tag` through `packed`,
/// every other field (and an unpacked `ids_tag`) through prost.
fn decode_with_ids<M: Message + Default>(
    buf: &[u8],
    ids_tag: u32,
    packed: impl Fn(&[u8], &mut M) -> Result<(), WireError>,
) -> Result<M, WireError> {
    decode_with_field(buf, ids_tag, packed, || {
        WireError::Ids("length beyond the message")
    })
}

/// Decodes `buf` as an `M`: the payload of length-delimited field `tag` through `field`
/// (`past_end` when its length runs past the message), every other field through prost.
fn decode_with_field<M: Message + Default>(
    buf: &[u8],
    tag: u32,
    field: impl Fn(&[u8], &mut M) -> Result<(), WireError>,
    past_end: fn() -> WireError,
) -> Result<M, WireError> {
    decode_with_fields(buf, &[tag], |_, payload, m| field(payload, m), past_end)
}

/// [`decode_with_field`] for several fields: `field` gets the tag too.
fn decode_with_fields<M: Message + Default>(
    mut buf: &[u8],
    tags: &[u32],
    field: impl Fn(u32, &[u8], &mut M) -> Result<(), WireError>,
    past_end: fn() -> WireError,
) -> Result<M, WireError> {
    let mut msg = M::default();
    while !buf.is_empty() {
        let (t, wire_type) = decode_key(&mut buf)?;
        if tags.contains(&t) && wire_type == WireType::LengthDelimited {
            let len = decode_varint(&mut buf)?;
            if len > buf.len() as u64 {
                return Err(past_end());
            }
            let (payload, rest) = buf.split_at(len as usize);
            field(t, payload, &mut msg)?;
            buf = rest;
        } else {
            msg.merge_field(t, wire_type, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(msg)
}

/// Appends the varints of a packed field's payload to `out`, with prost's rules (at
/// most ten bytes, the tenth 0 or 1), by [`packed_varints`]. Where the CPU has BMI2 and
/// AVX-512, each varint's seven-bit groups are gathered by one `pext`: the CPUs that
/// have AVX-512 (Intel's, AMD's from Zen 4) run it in one micro-op, where Zen 2
/// microcodes it at up to hundreds of cycles, so BMI2 alone does not choose it.
fn decode_packed_varints(p: &[u8], out: &mut Vec<u64>) -> Result<(), WireError> {
    #[cfg(target_arch = "x86_64")]
    if fast_pext() {
        // SAFETY: the CPU has BMI2 (`fast_pext`).
        return unsafe { decode_packed_varints_bmi2(p, out) };
    }
    packed_varints(p, out, seven_bit_groups)
}

/// Whether `pext` is there and fast: BMI2 and AVX-512 (asked once).
#[cfg(target_arch = "x86_64")]
fn fast_pext() -> bool {
    use std::arch::is_x86_feature_detected as has;
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| has!("bmi2") && has!("avx512f"))
}

/// [`packed_varints`] with `pext` gathering the groups.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn decode_packed_varints_bmi2(p: &[u8], out: &mut Vec<u64>) -> Result<(), WireError> {
    use std::arch::x86_64::_pext_u64;
    packed_varints(p, out, |x| _pext_u64(x, 0x7f7f_7f7f_7f7f_7f7f))
}

/// The body of [`decode_packed_varints`], over `groups` (the low seven bits of each
/// byte of a word, packed). The varint at the front is read as one little-endian
/// word: its end is the first byte without the top bit.
#[inline(always)]
fn packed_varints(
    mut p: &[u8],
    out: &mut Vec<u64>,
    groups: impl Fn(u64) -> u64,
) -> Result<(), WireError> {
    out.reserve(count_varints(p));
    while p.len() >= 10 {
        let w = u64::from_le_bytes(p[..8].try_into().expect("eight bytes"));
        let stops = !w & 0x8080_8080_8080_8080;
        if stops != 0 {
            // The varint is the bytes up to and including the first stop.
            let bits = stops.trailing_zeros() + 1;
            let x = if bits == 64 { w } else { w & ((1 << bits) - 1) };
            out.push(groups(x));
            p = &p[bits as usize / 8..];
        } else if p[8] < 0x80 {
            out.push(groups(w) | (p[8] as u64) << 56);
            p = &p[9..];
        } else if p[9] < 2 {
            out.push(groups(w) | ((p[8] & 0x7f) as u64) << 56 | (p[9] as u64) << 63);
            p = &p[10..];
        } else {
            return Err(WireError::Ids("a varint longer than ten bytes"));
        }
    }
    while !p.is_empty() {
        out.push(decode_varint(&mut p)?);
    }
    Ok(())
}

/// How many varints `p` holds: each ends at a byte without the top bit. Summed in u8
/// lanes over blocks of 255 bytes (no overflow), which the compiler vectorises; the
/// plain filter-and-count widened every byte to 64 bits and was half of the decoding.
fn count_varints(p: &[u8]) -> usize {
    p.chunks(255)
        .map(|c| c.len() - c.iter().fold(0u8, |n, &b| n.wrapping_add(b >> 7)) as usize)
        .sum()
}

/// The low seven bits of each byte of `x`, packed together (little-endian groups).
#[inline(always)]
fn seven_bit_groups(x: u64) -> u64 {
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// Writes `values` as packed fixed64 field `tag` (nothing if empty, as prost does).
fn encode_packed_fixed64(tag: u32, values: &[u64], buf: &mut impl BufMut) {
    if values.is_empty() {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(8 * values.len() as u64, buf);
    // In blocks: one bounds check and copy per 512 ids rather than one per id.
    let mut block = [0u8; 4096];
    for chunk in values.chunks(512) {
        for (out, v) in block.chunks_exact_mut(8).zip(chunk) {
            out.copy_from_slice(&v.to_le_bytes());
        }
        buf.put_slice(&block[..8 * chunk.len()]);
    }
}

/// Appends the little-endian u64s of a packed fixed64 payload to `out`.
fn decode_packed_fixed64(p: &[u8], out: &mut Vec<u64>) -> Result<(), WireError> {
    if !p.len().is_multiple_of(8) {
        return Err(WireError::Packed(
            "fixed64 payload not a multiple of 8 bytes",
        ));
    }
    out.extend(
        p.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("eight bytes"))),
    );
    Ok(())
}

/// Appends the little-endian f32s of a packed float payload to `out`.
fn decode_packed_f32(p: &[u8], out: &mut Vec<f32>) -> Result<(), WireError> {
    if !p.len().is_multiple_of(4) {
        return Err(WireError::Packed("float payload not a multiple of 4 bytes"));
    }
    out.extend(
        p.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("four bytes"))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use v1::{RankRequest, ShardRankRequest, UserContext};

    /// A small deterministic generator (xorshift): ids of every varint length.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn id(&mut self) -> u64 {
            let r = self.next();
            match r % 5 {
                0 => r >> (r % 64),
                1 => [0, 1, 127, 128, 1 << 56, (1 << 63) - 1, 1 << 63, u64::MAX]
                    [(r >> 8) as usize % 8],
                _ => r >> 3,
            }
        }
    }

    fn rank_request(g: &mut Gen, n: usize) -> RankRequest {
        RankRequest {
            user_id: g.id(),
            candidate_ids: (0..n).map(|_| g.id()).collect(),
            top_k: (g.next() % 2000) as u32,
            include_stats: g.next().is_multiple_of(2),
        }
    }

    fn shard_request(g: &mut Gen, n: usize) -> ShardRankRequest {
        ShardRankRequest {
            shard_index: (g.next() % 8) as u32,
            num_shards: 8,
            user: Some(UserContext {
                user_id: g.id(),
                known: true,
                lang: "ja".into(),
                followees: (0..g.next() % 40).map(|_| g.id()).collect(),
                ..Default::default()
            }),
            candidate_ids: (0..n).map(|_| g.id()).collect(),
            now_ms: g.next() as i64,
            heavy_skip: 3,
            heavy_count: 700,
            light_only: g.next().is_multiple_of(2),
        }
    }

    /// Both decoders give the same message, or both refuse.
    fn agree<M: WireMessage + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> bool {
        agree_by::<M>(bytes, |a, b| a == b)
    }

    /// [`agree`] with messages compared by `same`.
    fn agree_by<M: WireMessage + std::fmt::Debug>(
        bytes: &[u8],
        same: impl Fn(&M, &M) -> bool,
    ) -> bool {
        let ours = M::decode_slice(bytes);
        let prost = M::decode(bytes);
        match (&ours, &prost) {
            (Ok(a), Ok(b)) => assert!(same(a, b), "ours {a:?}, prost {b:?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("ours {ours:?}, prost {prost:?} for {bytes:?}"),
        }
        prost.is_ok()
    }

    #[test]
    fn requests_decode_as_prost_decodes_them() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for n in [0, 1, 2, 7, 8, 9, 10, 11, 100, 1000] {
            let r = rank_request(&mut g, n);
            let bytes = r.encode_to_vec();
            assert_eq!(RankRequest::decode_slice(&bytes).unwrap(), r);
            assert!(agree::<RankRequest>(&bytes));
            let s = shard_request(&mut g, n);
            let bytes = s.encode_to_vec();
            assert_eq!(ShardRankRequest::decode_slice(&bytes).unwrap(), s);
            assert!(agree::<ShardRankRequest>(&bytes));
        }
    }

    #[test]
    fn shard_requests_encode_to_what_prost_decodes_in_as_many_bytes() {
        let mut g = Gen(91);
        for n in [0, 1, 511, 512, 513, 3000] {
            let s = shard_request(&mut g, n);
            let mut bytes = Vec::new();
            s.clone().encode_into(&mut bytes);
            assert_eq!(bytes.len(), s.encoded_len());
            assert_eq!(ShardRankRequest::decode(&bytes[..]).unwrap(), s);
            assert_eq!(ShardRankRequest::decode_slice(&bytes).unwrap(), s);
        }
    }

    #[test]
    fn a_shared_batch_is_on_the_wire_the_batch_it_stands_for() {
        let mut g = Gen(57);
        for (sequence, sizes) in [vec![], vec![0], vec![1, 513], vec![3000, 0, 7]]
            .into_iter()
            .enumerate()
        {
            // On RankStream a batch carries its number (0, as on RankBatch, is not written).
            let sequence = sequence as u64 * 300;
            let owned = v1::ShardRankBatchRequest {
                sequence,
                items: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| v1::ShardRankBatchItem {
                        request: Some(shard_request(&mut g, n)),
                        timeout_us: (i as u64) * 1000,
                        traceparent: if i % 2 == 0 {
                            String::new()
                        } else {
                            "00-ab".into()
                        },
                    })
                    .collect(),
            };
            let shared = SharedShardRankBatch {
                items: Arc::new(
                    owned
                        .items
                        .iter()
                        .map(|i| SharedBatchItem {
                            request: i.request.clone().unwrap().into(),
                            timeout_us: i.timeout_us,
                            traceparent: i.traceparent.clone(),
                        })
                        .collect(),
                ),
                sequence,
            };
            let mut bytes = Vec::new();
            shared.clone().encode_into(&mut bytes);
            assert_eq!(bytes.len(), shared.encoded_len());
            assert_eq!(bytes.len(), owned.encoded_len());
            assert_eq!(
                v1::ShardRankBatchRequest::decode(&bytes[..]).unwrap(),
                owned
            );
            assert_eq!(
                v1::ShardRankBatchRequest::decode_slice(&bytes).unwrap(),
                owned
            );
            assert!(agree::<v1::ShardRankBatchRequest>(&owned.encode_to_vec()));
            assert_eq!(SharedShardRankBatch::decode(&bytes[..]).unwrap(), shared);
        }
    }

    #[test]
    fn damaged_batches_are_refused_as_prost_refuses_them() {
        let mut g = Gen(3);
        let owned = v1::ShardRankBatchRequest {
            items: (0..3)
                .map(|i| v1::ShardRankBatchItem {
                    request: Some(shard_request(&mut g, 40 * i)),
                    timeout_us: 5,
                    traceparent: "x".into(),
                })
                .collect(),
            sequence: 12,
        };
        let bytes = owned.encode_to_vec();
        let mut refused = 0;
        for cut in 0..bytes.len() {
            refused += !agree::<v1::ShardRankBatchRequest>(&bytes[..cut]) as u32;
        }
        for i in (0..bytes.len()).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0x80;
            agree::<v1::ShardRankBatchRequest>(&b);
        }
        assert!(refused > 0);
    }

    #[test]
    fn a_shared_request_is_on_the_wire_the_request_it_stands_for() {
        let mut g = Gen(23);
        for n in [0, 1, 513, 3000] {
            let s = shard_request(&mut g, n);
            let shared = SharedShardRankRequest::from(s.clone());
            assert_eq!(shared.ids().len(), n);
            assert!(shared.head().candidate_ids.is_empty());
            assert_eq!(shared.encoded_len(), s.encoded_len());
            // The services' encoder: the same bytes as the owned request's.
            let (mut owned_bytes, mut shared_bytes) = (Vec::new(), Vec::new());
            s.clone().encode_into(&mut owned_bytes);
            shared.clone().encode_into(&mut shared_bytes);
            assert_eq!(shared_bytes, owned_bytes);
            // prost's encoding of it decodes to the request too, and back to itself.
            let prost_bytes = shared.encode_to_vec();
            assert_eq!(ShardRankRequest::decode(&prost_bytes[..]).unwrap(), s);
            assert_eq!(
                SharedShardRankRequest::decode(&prost_bytes[..]).unwrap(),
                shared
            );
            assert_eq!(
                SharedShardRankRequest::decode_slice(&shared_bytes).unwrap(),
                shared
            );
        }
        // A head's own ids never go out beside the shared ones.
        let s = shard_request(&mut g, 10);
        let other = SharedShardRankRequest::new(s.clone(), Arc::new(vec![1, 2, 3]));
        let back = ShardRankRequest::decode(&other.encode_to_vec()[..]).unwrap();
        assert_eq!(back.candidate_ids, vec![1, 2, 3]);
    }

    #[test]
    fn ids_split_over_fields_unpacked_or_late_are_all_kept() {
        let mut g = Gen(77);
        let a = rank_request(&mut g, 30);
        let b = rank_request(&mut g, 5);
        // Two packed runs of field 2 append; a field after the ids still counts.
        let mut bytes = a.encode_to_vec();
        bytes.extend(b.encode_to_vec());
        assert!(agree::<RankRequest>(&bytes));
        let both = RankRequest::decode_slice(&bytes).unwrap();
        assert_eq!(both.candidate_ids.len(), 35);
        assert_eq!(both.top_k, b.top_k);
        // Unpacked: one varint field per id (proto2 writers), which parsers must accept.
        let mut unpacked = Vec::new();
        for &id in &a.candidate_ids {
            prost::encoding::uint64::encode(2, &id, &mut unpacked);
        }
        assert!(agree::<RankRequest>(&unpacked));
        assert_eq!(
            RankRequest::decode_slice(&unpacked).unwrap().candidate_ids,
            a.candidate_ids
        );
    }

    #[test]
    fn damaged_requests_are_refused_as_prost_refuses_them() {
        let mut g = Gen(5);
        let mut refused = 0;
        for round in 0..400 {
            let r = rank_request(&mut g, 1 + round % 40).encode_to_vec();
            let s = shard_request(&mut g, 1 + round % 40).encode_to_vec();
            for bytes in [r, s] {
                // Every cut, then random byte changes.
                for cut in 0..bytes.len() {
                    refused += !agree::<RankRequest>(&bytes[..cut]) as usize;
                    agree::<ShardRankRequest>(&bytes[..cut]);
                }
                let mut bad = bytes.clone();
                for _ in 0..3 {
                    let at = g.next() as usize % bad.len();
                    bad[at] = g.next() as u8;
                }
                agree::<RankRequest>(&bad);
                agree::<ShardRankRequest>(&bad);
            }
        }
        assert!(refused > 1000, "cuts should mostly be refused: {refused}");
    }

    fn shard_response(g: &mut Gen, n: usize) -> v1::ShardRankResponse {
        let score = |g: &mut Gen| f32::from_bits(g.next() as u32);
        v1::ShardRankResponse {
            ids: (0..n).map(|_| g.id()).collect(),
            author_ids: (0..n).map(|_| g.id()).collect(),
            light_scores: (0..n).map(|_| score(g)).collect(),
            heavy_scores: (0..n).map(|_| score(g)).collect(),
            eligible: g.next() as u32,
            unknown: 3,
            excluded: 1,
            light_ms: 0.25,
            ..Default::default()
        }
    }

    /// Equal as prost compares, but NaN scores (random bits make some) by their bits.
    fn same_response(a: &v1::ShardRankResponse, b: &v1::ShardRankResponse) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let strip = |r: &v1::ShardRankResponse| v1::ShardRankResponse {
            light_scores: vec![],
            heavy_scores: vec![],
            ..r.clone()
        };
        strip(a) == strip(b)
            && bits(&a.light_scores) == bits(&b.light_scores)
            && bits(&a.heavy_scores) == bits(&b.heavy_scores)
    }

    fn same_batch(a: &v1::ShardRankBatchResponse, b: &v1::ShardRankBatchResponse) -> bool {
        a.results.len() == b.results.len()
            && a.results.iter().zip(&b.results).all(|(x, y)| {
                (x.code, &x.message) == (y.code, &y.message)
                    && match (&x.response, &y.response) {
                        (Some(p), Some(q)) => same_response(p, q),
                        (p, q) => p.is_none() && q.is_none(),
                    }
            })
    }

    #[test]
    fn shard_responses_decode_as_prost_decodes_them() {
        let mut g = Gen(77);
        for n in [0, 1, 2, 300, 1001] {
            let r = shard_response(&mut g, n);
            let bytes = r.encode_to_vec();
            assert!(same_response(
                &v1::ShardRankResponse::decode_slice(&bytes).unwrap(),
                &r
            ));
            // The arrays unpacked (one key per value) and a second packed run later in
            // the message: prost appends them all, in order, and so must we.
            let mut split = Vec::new();
            for &id in &r.ids {
                encode_key(1, WireType::SixtyFourBit, &mut split);
                split.put_u64_le(id);
            }
            let tail = shard_response(&mut g, 3);
            split.extend(tail.encode_to_vec());
            let ours = v1::ShardRankResponse::decode_slice(&split).unwrap();
            let prost = v1::ShardRankResponse::decode(&split[..]).unwrap();
            assert!(same_response(&ours, &prost));
            assert_eq!(ours.ids.len(), n + 3);
            // In a batch, with an error result and a response given in two parts.
            let batch = v1::ShardRankBatchResponse {
                results: vec![
                    v1::ShardRankBatchResult {
                        code: 0,
                        message: String::new(),
                        response: Some(r.clone()),
                    },
                    v1::ShardRankBatchResult {
                        code: 4,
                        message: "deadline".into(),
                        response: None,
                    },
                ],
                // As on RankStream.
                sequence: 77,
            };
            let mut bytes = batch.encode_to_vec();
            let twice = v1::ShardRankBatchResult {
                code: 0,
                message: String::new(),
                response: Some(tail.clone()),
            }
            .encode_to_vec();
            let mut item = twice.clone();
            item.extend(&twice);
            encode_key(1, WireType::LengthDelimited, &mut bytes);
            encode_varint(item.len() as u64, &mut bytes);
            bytes.extend(&item);
            let ours = v1::ShardRankBatchResponse::decode_slice(&bytes).unwrap();
            let prost = v1::ShardRankBatchResponse::decode(&bytes[..]).unwrap();
            assert_eq!(ours.results.len(), 3);
            assert!(same_batch(&ours, &prost));
            assert_eq!(ours.results[2].response.as_ref().unwrap().ids.len(), 6);
        }
    }

    /// A batch item whose request comes in two parts: prost merges them (the second
    /// part's ids appended), and so must the bulk decoder.
    #[test]
    fn a_request_given_twice_in_a_batch_item_merges() {
        let mut g = Gen(31);
        let part = |g: &mut Gen, n| {
            v1::ShardRankBatchItem {
                request: Some(shard_request(g, n)),
                timeout_us: 9,
                traceparent: String::new(),
            }
            .encode_to_vec()
        };
        let mut item = part(&mut g, 3);
        item.extend(part(&mut g, 600));
        let mut bytes = Vec::new();
        encode_key(1, WireType::LengthDelimited, &mut bytes);
        encode_varint(item.len() as u64, &mut bytes);
        bytes.extend(&item);
        assert!(agree::<v1::ShardRankBatchRequest>(&bytes));
        let got = v1::ShardRankBatchRequest::decode_slice(&bytes).unwrap();
        assert_eq!(
            got.items[0].request.as_ref().unwrap().candidate_ids.len(),
            603
        );
    }

    #[test]
    fn damaged_responses_are_refused_as_prost_refuses_them() {
        let mut g = Gen(13);
        let mut refused = 0;
        for round in 0..100 {
            let r = shard_response(&mut g, 1 + round % 20);
            let one = r.encode_to_vec();
            let batch = v1::ShardRankBatchResponse {
                results: vec![v1::ShardRankBatchResult {
                    code: 0,
                    message: "m".into(),
                    response: Some(r),
                }],
                sequence: round as u64,
            }
            .encode_to_vec();
            for cut in 0..one.len() {
                refused += !agree_by(&one[..cut], same_response) as usize;
            }
            for cut in 0..batch.len() {
                refused += !agree_by(&batch[..cut], same_batch) as usize;
            }
            for bytes in [one, batch] {
                let mut bad = bytes.clone();
                for _ in 0..3 {
                    let at = g.next() as usize % bad.len();
                    bad[at] = g.next() as u8;
                }
                agree_by(&bad, same_response);
                agree_by(&bad, same_batch);
            }
        }
        assert!(refused > 1000, "cuts should mostly be refused: {refused}");
    }

    #[test]
    fn varints_are_counted_across_block_borders() {
        let mut g = Gen(11);
        for len in [0usize, 1, 254, 255, 256, 509, 510, 511, 4096] {
            let bytes: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
            let want = bytes.iter().filter(|&&b| b < 0x80).count();
            assert_eq!(count_varints(&bytes), want, "len {len}");
        }
        assert_eq!(count_varints(&[0x80; 600]), 0);
        assert_eq!(count_varints(&[0x7f; 600]), 600);
    }

    /// The word-at-a-time decoder, with either way of gathering the groups, against
    /// one varint at a time: every length, and damaged bytes.
    #[test]
    fn packed_varints_decode_alike_by_every_path() {
        let mut g = Gen(23);
        for round in 0..200 {
            let mut bytes = Vec::new();
            for _ in 0..(round % 40) {
                let v = g.next() >> (g.next() % 64);
                prost::encoding::encode_varint(v, &mut bytes);
            }
            if round % 3 == 0 && !bytes.is_empty() {
                let at = g.next() as usize % bytes.len();
                bytes[at] = g.next() as u8;
            }
            let mut one_by_one = Vec::new();
            let mut p = &bytes[..];
            let want = loop {
                if p.is_empty() {
                    break Ok(one_by_one);
                }
                match decode_varint(&mut p) {
                    Ok(v) => one_by_one.push(v),
                    Err(e) => break Err(e),
                }
            };
            let mut paths = vec![("swar", {
                let mut out = Vec::new();
                packed_varints(&bytes, &mut out, seven_bit_groups).map(|()| out)
            })];
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("bmi2") {
                let mut out = Vec::new();
                // SAFETY: the CPU has BMI2, checked.
                let got = unsafe { decode_packed_varints_bmi2(&bytes, &mut out) };
                paths.push(("pext", got.map(|()| out)));
            }
            for (path, got) in paths {
                match (&got, &want) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{path}: {bytes:?}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{path}: {got:?}, one by one {want:?}, for {bytes:?}"),
                }
            }
        }
    }

    #[test]
    fn overlong_varints_follow_prosts_ten_byte_rule() {
        // Field 2, packed, one varint: nine continuation bytes, then the tenth byte.
        for tenth in 0..=255u8 {
            let mut bytes = vec![0x12, 10];
            bytes.extend([0xff; 9]);
            bytes.push(tenth);
            // Padded past ten bytes so that the word-at-a-time path reads it.
            let mut padded = bytes.clone();
            padded[1] = 20;
            padded.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
            let ok = agree::<RankRequest>(&bytes);
            assert_eq!(agree::<RankRequest>(&padded), ok);
            assert_eq!(ok, tenth < 2, "tenth byte {tenth:#x}");
        }
    }
}
