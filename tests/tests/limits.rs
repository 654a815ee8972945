//! Bad input and overload at the door: requests too large or too many candidates are
//! refused clearly and lose nothing; a cancelled request cancels its fan-out; a shard
//! at its in-flight limit sheds at once (Rank and RankBatch calls, and batches on a
//! RankStream, alike); a minimum
//! coverage turns a thin answer into UNAVAILABLE.

use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{
    RankRequest, ShardRankBatchItem, ShardRankBatchRequest, ShardRankRequest,
};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::{http_get, metric, Cluster};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

fn request(facts: &Facts, ids: Vec<u64>) -> RankRequest {
    RankRequest {
        user_id: facts.users[1],
        candidate_ids: ids,
        top_k: 10,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_clearly_and_nothing_is_lost() {
    let c = Cluster::start_with(
        2,
        &["--corpus", "tiny"],
        &["--max-candidates", "5000", "--max-message-bytes", "200000"],
    )
    .await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let ok = client
        .rank(request(&facts, facts.tweets[..5000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.candidates.len(), 10);

    let err = client
        .rank(request(&facts, facts.tweets[..5001].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit of 5000"), "{}", err.message());

    // Over the message size: refused before decoding, as RESOURCE_EXHAUSTED.
    let big: Vec<u64> = facts.tweets.iter().copied().cycle().take(30_000).collect();
    let err = client.rank(request(&facts, big)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("too large") && err.message().contains("200000"),
        "{}",
        err.message()
    );

    // The same connection serves the next request as before.
    let again = client
        .rank(request(&facts, facts.tweets[..5000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.candidates, ok.candidates);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_candidate_limit_is_a_million() {
    let c = Cluster::start(1, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let ids: Vec<u64> = facts
        .tweets
        .iter()
        .copied()
        .cycle()
        .take(1_000_001)
        .collect();
    let err = c
        .client()
        .await
        .rank(request(&facts, ids))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("limit of 1000000"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_cancels_its_fan_out() {
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    // A stalled shard keeps the request's call to it waiting.
    c.signal_shard(1, "STOP");
    let mut client = c.client().await;
    let mut req = tonic::Request::new(request(&facts, facts.tweets[..2000].to_vec()));
    req.set_timeout(Duration::from_secs(30));
    let t0 = Instant::now();
    let gave_up = tokio::time::timeout(Duration::from_millis(500), client.rank(req)).await;
    if let Ok(answer) = &gave_up {
        // It should still be waiting on the stalled shard; say what came back instead.
        let summary = answer.as_ref().map(|r| {
            let r = r.get_ref();
            (r.candidates.len(), r.missing_shards.clone())
        });
        panic!(
            "the call returned within 500 ms instead of waiting on the stalled shard: {summary:?}\ncoordinator log:\n{}",
            c.coordinator.log_tail()
        );
    }
    // The client dropped its call: the coordinator drops the request and its calls.
    let m = loop {
        let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
        if metric(&m, "shardrank_coordinator_shard_calls_in_flight") == Some(0.0) {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "shard calls still in flight:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        metric(
            &m,
            "shardrank_coordinator_requests_cancelled_total{rpc=\"Rank\"}"
        ),
        Some(1.0)
    );
    c.signal_shard(1, "CONT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_minimum_coverage_a_request_fails_unavailable() {
    let mut c = Cluster::start_with(4, &["--corpus", "tiny"], &["--min-coverage", "0.9"]).await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let full = client
        .rank(request(&facts, facts.tweets[..3000].to_vec()))
        .await
        .unwrap()
        .into_inner();
    assert!(full.missing_shards.is_empty());
    c.kill_shard(3);
    let err = client
        .rank(request(&facts, facts.tweets[..3000].to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("only 3 of 4 shards answered") && err.message().contains("0.9"),
        "{}",
        err.message()
    );
}

/// Six large calls at once to a shard that admits one at a time: each is answered
/// (`call` checks the answer) or refused at once with RESOURCE_EXHAUSTED naming the
/// flag, and both happen. Returns the cluster and the count refused.
async fn at_a_shards_limit<F, Fut>(call: F) -> (Cluster, u32)
where
    F: Fn(ShardClient<Channel>, ShardRankRequest) -> Fut,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static,
{
    let c = Cluster::start(1, &["--corpus", "tiny", "--max-in-flight", "1"]).await;
    let facts = Facts::of("tiny", 42);
    let shard = shardrank_tests::channel(&c.shard_urls[0]).await;
    let ids: Vec<u64> = facts.tweets.iter().copied().cycle().take(200_000).collect();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let client = ShardClient::new(shard.clone()).max_encoding_message_size(64 << 20);
        let req = ShardRankRequest {
            shard_index: 0,
            num_shards: 1,
            candidate_ids: ids.clone(),
            heavy_count: 100,
            ..Default::default()
        };
        let answer = call(client, req);
        calls.spawn(async move {
            let t0 = Instant::now();
            (answer.await, t0.elapsed())
        });
    }
    let (mut ok, mut shed) = (0, 0);
    while let Some(r) = calls.join_next().await {
        match r.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(s), took) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("--max-in-flight"), "{}", s.message());
                assert!(took < Duration::from_secs(2), "refused at once, not queued");
                shed += 1;
            }
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    (c, shed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_at_its_in_flight_limit_sheds_at_once() {
    let (c, shed) =
        at_a_shards_limit(|mut client, req| async move { client.rank(req).await.map(|_| ()) })
            .await;
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_requests_shed_total"),
        Some(shed as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_pass_the_shards_admission_limit_as_rank_calls_do() {
    at_a_shards_limit(|mut client, req| async move {
        let batch = ShardRankBatchRequest {
            items: vec![ShardRankBatchItem {
                request: Some(req),
                ..Default::default()
            }],
            sequence: 0,
        };
        let b = client.rank_batch(batch).await?.into_inner();
        assert_eq!(b.results[0].code, 0, "{}", b.results[0].message);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_a_stream_pass_the_shards_admission_limit_one_by_one() {
    // A stream is not a request: it stays open. Each batch on it is admitted as a call
    // would be, and a refused one is answered with each item RESOURCE_EXHAUSTED.
    let (c, shed) = at_a_shards_limit(|mut client, req| async move {
        let batch = ShardRankBatchRequest {
            items: vec![ShardRankBatchItem {
                request: Some(req),
                ..Default::default()
            }],
            sequence: 5,
        };
        let mut answers = client
            .rank_stream(tokio_stream::iter([batch]))
            .await?
            .into_inner();
        let b = answers.message().await?.expect("an answer");
        assert_eq!(b.sequence, 5);
        let r = &b.results[0];
        if r.code != 0 {
            return Err(tonic::Status::new(r.code.into(), r.message.clone()));
        }
        assert!(r.response.is_some());
        assert!(answers.message().await?.is_none(), "one answer");
        Ok(())
    })
    .await;
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_requests_shed_total"),
        Some(shed as f64)
    );
}

/// A client that sends hand-made bytes, to reach the servers' decoders with damage a
/// generated client cannot produce. Answers are only counted.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::{transport::Channel, Status};

    pub struct Raw;
    pub struct Enc;
    pub struct Dec;
    impl Encoder for Enc {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Dec {
        type Item = usize;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
            let n = src.remaining();
            src.advance(n);
            Ok(Some(n))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = usize;
        type Encoder = Enc;
        type Decoder = Dec;
        fn encoder(&mut self) -> Enc {
            Enc
        }
        fn decoder(&mut self) -> Dec {
            Dec
        }
    }

    /// Calls `path` with `body`; the answer's size or the status.
    pub async fn call(ch: &Channel, path: &'static str, body: Vec<u8>) -> Result<usize, Status> {
        let mut grpc = tonic::client::Grpc::new(ch.clone());
        grpc.ready().await.unwrap();
        grpc.unary(
            tonic::Request::new(body),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            Raw,
        )
        .await
        .map(tonic::Response::into_inner)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_id_lists_are_refused_with_what_was_wrong() {
    use prost_free_encoding::*;
    let c = Cluster::start(2, &["--corpus", "tiny"]).await;
    let facts = Facts::of("tiny", 42);
    let coordinator = shardrank_tests::channel(&c.url).await;
    let shard = shardrank_tests::channel(&c.shard_urls[0]).await;
    const RANK: &str = "/shardrank.v1.Coordinator/Rank";
    const SHARD_RANK: &str = "/shardrank.v1.Shard/Rank";

    // A well-formed request by hand: the bytes this test damages below.
    let user = facts.users[1];
    let good = rank_request(user, &facts.tweets[..10]);
    assert!(raw::call(&coordinator, RANK, good.clone()).await.unwrap() > 0);

    // An eleven-byte varint among the ids; the packed length running past the end; the
    // message cut inside the ids.
    let mut long_varint = rank_request(user, &facts.tweets[..3]);
    let at = long_varint.len() - 2;
    long_varint.splice(at..at, [0xff; 11]);
    fix_packed_len(&mut long_varint, user, 11);
    let mut past_end = good.clone();
    fix_packed_len(&mut past_end, user, 1);
    let cut = good[..good.len() - 4].to_vec();
    for (what, body, says) in [
        ("long varint", long_varint, "candidate_ids"),
        ("length past the end", past_end, "candidate_ids"),
        ("cut", cut, "decode"),
    ] {
        let err = raw::call(&coordinator, RANK, body).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {err:?}");
    }

    // A shard: fixed64 ids whose payload is not a whole number of ids.
    let mut odd = vec![0x22, 12];
    odd.extend([7u8; 12]);
    let err = raw::call(&shard, SHARD_RANK, odd).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("fixed64"), "{err:?}");

    // Nothing broke: the same well-formed request is still answered.
    assert!(raw::call(&coordinator, RANK, good).await.unwrap() > 0);
}

/// Protobuf by hand for the damaged-request test (field 1 user_id, field 2 packed ids,
/// field 3 top_k), so that the damage lands at known places.
mod prost_free_encoding {
    pub fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// user_id, then top_k 10, then the packed ids (one length byte: a few ids), which
    /// are last.
    pub fn rank_request(user: u64, ids: &[u64]) -> Vec<u8> {
        let mut out = vec![0x08];
        varint(user, &mut out);
        out.extend([0x18, 10]);
        let mut packed = Vec::new();
        for &id in ids {
            varint(id, &mut packed);
        }
        assert!(packed.len() < 0x80, "one length byte");
        out.extend([0x12, packed.len() as u8]);
        out.extend(packed);
        out
    }

    /// Adds `more` to the one-byte length of the packed ids of a `rank_request` of
    /// `user` (after the tag and user_id, top_k and the ids' tag).
    pub fn fix_packed_len(msg: &mut [u8], user: u64, more: u8) {
        let mut head = Vec::new();
        varint(user, &mut head);
        let pos = 1 + head.len() + 2 + 1;
        assert_eq!(msg[pos - 1], 0x12);
        msg[pos] += more;
    }
}
