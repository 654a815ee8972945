//! Ingestion through a real Kafka-protocol broker (noida-db, started per test on a free
//! loopback port): `shardrank produce` loads a corpus with the md5 partitioner, shards
//! consume their partition and coordinators the user topic; what they build equals what
//! the events file builds; live events move the ranking; a shard killed mid-stream
//! resumes from its snapshot's offsets without loss or double counting; malformed
//! messages go to the dead-letter topic; a broker that goes away is waited out.

use shardrank_core::events::{
    read_events, Engagement, EngagementKind, Event, OnMalformed, Social, SocialKind,
};
use shardrank_core::routing::shard_of;
use shardrank_kafka::EventProducer;
use shardrank_proto::v1::shard_client::ShardClient;
use shardrank_proto::v1::{RankRequest, ShardRankRequest, TimelineRequest, UserContext};
use shardrank_tests::corpus_facts::Facts;
use shardrank_tests::kafka::{new_post, Broker};
use shardrank_tests::{http_get, metric, plain, run, scratch_dir, Cluster, Proc, ScratchDir};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

fn gen_tiny(dir: &Path) -> PathBuf {
    let file = dir.join("tiny.jsonl");
    shardrank_tests::gen_tiny(&file, "json");
    file
}

fn produce(broker: &Broker, file: &Path, n: u32) -> (Option<i32>, String) {
    let (code, _, err) = run(
        "shardrank",
        &[
            "produce",
            "--brokers",
            &broker.addr,
            "--events",
            file.to_str().unwrap(),
            "--num-shards",
            &n.to_string(),
        ],
        TIMEOUT,
    );
    (code, err)
}

/// Everything a shard's store makes of every post of the corpus, as ranked with a fixed
/// clock and user: ids with their light and heavy scores (engagement counts, windows and
/// author features all feed them).
async fn fingerprint(
    url: &str,
    index: u32,
    n: u32,
    ids: &[u64],
    now_ms: i64,
) -> Vec<(u64, u32, u32)> {
    let mut c = ShardClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    let r = c
        .rank(ShardRankRequest {
            shard_index: index,
            num_shards: n,
            user: Some(UserContext {
                user_id: 1,
                ..Default::default()
            }),
            candidate_ids: ids.to_vec(),
            now_ms,
            heavy_skip: 0,
            heavy_count: ids.len() as u32,
            light_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    r.ids
        .iter()
        .zip(&r.light_scores)
        .zip(&r.heavy_scores)
        .map(|((&id, l), h)| (id, l.to_bits(), h.to_bits()))
        .collect()
}

async fn wait_fingerprint(
    url: &str,
    index: u32,
    n: u32,
    ids: &[u64],
    now_ms: i64,
    want: &[(u64, u32, u32)],
) -> Vec<(u64, u32, u32)> {
    let t0 = Instant::now();
    loop {
        let got = fingerprint(url, index, n, ids, now_ms).await;
        if got == want || t0.elapsed() > TIMEOUT {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read_file(file: &Path) -> Vec<Event> {
    let f = std::io::BufReader::new(std::fs::File::open(file).unwrap());
    let mut v = Vec::new();
    read_events(f, OnMalformed::Stop, |e| v.push(e)).unwrap();
    v
}

/// A broker holding the tiny corpus produced for 2 shards, and what was produced.
struct Loaded {
    broker: Broker,
    dir: ScratchDir,
    events: Vec<Event>,
    /// The newest event time of the corpus.
    now: i64,
}

fn loaded(tag: &str) -> Loaded {
    let broker = Broker::start();
    let dir = scratch_dir(tag);
    let file = gen_tiny(&dir);
    let events = read_file(&file);
    let now = events.iter().map(Event::time).max().unwrap();
    assert_eq!(produce(&broker, &file, 2).0, Some(0));
    Loaded {
        broker,
        dir,
        events,
        now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_fed_cluster_builds_exactly_what_the_events_file_builds() {
    let broker = Broker::start();
    let dir = scratch_dir("kafka-equal");
    let file = gen_tiny(&dir);
    let events = read_file(&file);
    let (code, out) = produce(&broker, &file, 2);
    assert_eq!(code, Some(0), "{out}");
    // Counts: every event once, posts' events by partition, users' plus post copies.
    let tweets = events
        .iter()
        .filter(|e| matches!(e, Event::NewTweet(_)))
        .count();
    let engagements = events
        .iter()
        .filter(|e| matches!(e, Event::Engagement(_)))
        .count();
    let per_part = |p: u32| {
        events
            .iter()
            .filter(|e| match e {
                Event::NewTweet(t) => shard_of(t.id, 2) == p,
                Event::Engagement(g) => shard_of(g.tweet_id, 2) == p,
                _ => false,
            })
            .count()
    };
    let want = format!("produced {} events from {}", events.len(), file.display());
    assert!(out.contains(&want), "{out}");
    let want = format!(
        "{} messages to tweet_events (created, 2 partitions: {} {})",
        tweets + engagements,
        per_part(0),
        per_part(1)
    );
    assert!(out.contains(&want), "{want} in {out}");
    let want = format!("{} to user_events (created)", events.len() - engagements);
    assert!(out.contains(&want), "{want} in {out}");
    // A layout the topics were not made for is refused, naming the topic.
    let (code, out) = produce(&broker, &file, 3);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("tweet_events: has 2 partitions but the layout has 3"),
        "{out}"
    );

    let kafka = Cluster::start(2, &["--kafka-brokers", &broker.addr]).await;
    let from_file = Cluster::start(2, &["--events", file.to_str().unwrap()]).await;
    let facts = Facts::of("tiny", 42);
    let now = events.iter().map(Event::time).max().unwrap();
    for i in 0..2u32 {
        let want = fingerprint(&from_file.shard_urls[i as usize], i, 2, &facts.tweets, now).await;
        assert!(want.len() > 4000, "shard {i} holds {} posts", want.len());
        let got = fingerprint(&kafka.shard_urls[i as usize], i, 2, &facts.tweets, now).await;
        assert!(
            got == want,
            "shard {i}: the Kafka-fed store differs from the file-fed one"
        );
        let (_, m) = http_get(&format!("{}/metrics", kafka.shard_admin[i as usize])).await;
        assert_eq!(
            metric(&m, "shardrank_shard_store_posts"),
            Some(want.len() as f64)
        );
        assert_eq!(
            metric(
                &m,
                "shardrank_shard_consumer_lag_events{topic=\"tweet_events\"}"
            ),
            Some(0.0)
        );
        assert_eq!(metric(&m, "shardrank_shard_events_misrouted"), Some(0.0));
    }
    // The dashboard's Kafka panels read series these processes export.
    let (_, mut exported) = http_get(&format!("{}/metrics", kafka.admin)).await;
    exported.push_str(
        &http_get(&format!("{}/metrics", kafka.shard_admin[0]))
            .await
            .1,
    );
    let lag: Vec<String> = shardrank_tests::dashboard_metrics()
        .into_iter()
        .filter(|w| w.contains("consumer_lag"))
        .collect();
    assert_eq!(lag.len(), 2);
    for w in lag {
        assert!(shardrank_tests::exports(&exported, &w), "{w} not exported");
    }
    // The coordinator's user store came from the user topic: blocks and mutes hold.
    let (&user, excluded) = facts
        .excluded
        .iter()
        .max_by_key(|(u, v)| (v.len(), **u))
        .unwrap();
    let r = kafka
        .client()
        .await
        .rank(RankRequest {
            user_id: user,
            candidate_ids: facts.tweets.clone(),
            top_k: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.candidates.len(), 1000);
    for c in &r.candidates {
        assert!(
            !excluded.contains(&facts.author_of[&c.id]),
            "post {} by an author user {user} blocked or muted",
            c.id
        );
    }
}

fn like(user: u64, tweet: u64, t: i64, kind: EngagementKind) -> Event {
    Event::Engagement(Engagement {
        kind,
        user_id: user,
        tweet_id: tweet,
        timestamp: t,
    })
}

fn social(kind: SocialKind, user: u64, target: u64, t: i64) -> Event {
    Event::Social(Social {
        kind,
        user_id: user,
        target_id: target,
        timestamp: t,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_move_the_ranking_block_authors_and_fill_the_in_network_source() {
    let Loaded {
        broker,
        dir: _dir,
        now,
        ..
    } = loaded("kafka-live");
    let c = Cluster::start(2, &["--kafka-brokers", &broker.addr]).await;
    let facts = Facts::of("tiny", 42);
    let producer = EventProducer::new(&broker.addr, "tweet_events", "user_events", 2).unwrap();
    let mut client = c.client().await;
    let user = facts.users[7];
    let rank = |client: &mut shardrank_proto::v1::coordinator_client::CoordinatorClient<_>| {
        let req = RankRequest {
            user_id: user,
            candidate_ids: facts.tweets[..300].to_vec(),
            top_k: 300,
            ..Default::default()
        };
        let mut client = client.clone();
        async move { client.rank(req).await.unwrap().into_inner() }
    };
    let before = rank(&mut client).await;
    assert_eq!(before.candidates.len(), 300);
    // The built-in heavy network is a seeded placeholder (its response to engagement has
    // no set sign), so the move is checked in the light ranker's order, which engagement
    // raises by construction, on the post's own shard; Rank's score must change too.
    let (target, target_score) = (before.candidates[150].id, before.candidates[150].score);
    let owner = shard_of(target, 2);
    let light_order = || {
        let url = c.shard_urls[owner as usize].clone();
        let ids = facts.tweets[..300].to_vec();
        async move {
            let mut s = ShardClient::connect(url).await.unwrap();
            let r = s
                .rank(ShardRankRequest {
                    shard_index: owner,
                    num_shards: 2,
                    user: Some(UserContext {
                        user_id: 1,
                        ..Default::default()
                    }),
                    heavy_count: ids.len() as u32,
                    candidate_ids: ids,
                    now_ms: now,
                    heavy_skip: 0,
                    light_only: true,
                })
                .await
                .unwrap()
                .into_inner();
            r.ids
        }
    };
    let light_before = light_order().await;
    let was = light_before.iter().position(|&id| id == target).unwrap();
    assert!(
        was > 0,
        "the post is already first in its shard's light order"
    );

    // Engagement: the post gets liked and retweeted a lot, now; it moves up.
    for (k, u) in facts.users.iter().take(300).enumerate() {
        let kind = if k % 3 == 0 {
            EngagementKind::Retweet
        } else {
            EngagementKind::Like
        };
        producer.send_event(&like(*u, target, now, kind)).unwrap();
    }
    producer.raw.flush(Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    loop {
        let order = light_order().await;
        let p = order.iter().position(|&id| id == target).unwrap();
        if p < was {
            eprintln!(
                "liked post moved from {was} to {p} in the light order after {:?}",
                t0.elapsed()
            );
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "the liked post did not move up: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rank(&mut client).await;
    let now_score = after
        .candidates
        .iter()
        .find(|c| c.id == target)
        .unwrap()
        .score;
    assert_ne!(now_score, target_score, "Rank did not see the engagement");

    // A block: the top post's author disappears from the user's answers.
    let top_author = facts.author_of[&before.candidates[0].id];
    producer
        .send_event(&social(SocialKind::Block, user, top_author, now))
        .unwrap();
    producer.raw.flush(Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    loop {
        let r = rank(&mut client).await;
        if r.candidates
            .iter()
            .all(|c| facts.author_of[&c.id] != top_author)
        {
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "the blocked author's posts are still ranked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A follow, then a new post by the followee: in the follower's in-network source.
    let follower = facts.users[11];
    let followee = *facts
        .users
        .iter()
        .rev()
        .find(|&&u| u != follower && u != user)
        .unwrap();
    let post = 9_000_000_000_001u64;
    producer
        .send_event(&social(SocialKind::Follow, follower, followee, now))
        .unwrap();
    producer.send_event(&new_post(post, followee, now)).unwrap();
    producer.raw.flush(Duration::from_secs(10)).unwrap();
    let t0 = Instant::now();
    loop {
        let r = client
            .timeline(TimelineRequest {
                user_id: follower,
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(e) = r.entries.iter().find(|e| e.tweet_id == post) {
            assert_eq!(e.source, "in_network");
            assert_eq!(e.author_id, followee);
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "the followee's new post never reached the timeline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, m) = http_get(&format!("{}/metrics", c.admin)).await;
    assert!(
        metric(
            &m,
            "shardrank_coordinator_events_applied_total{type=\"follow\"}"
        )
        .unwrap()
            > 0.0
    );
    // Fanned out on write: into the follower's inbox, and published to timeline_updates.
    assert!(metric(&m, "shardrank_coordinator_fanout_deliveries_total").unwrap() >= 1.0);
    let t0 = Instant::now();
    loop {
        let msgs =
            shardrank_kafka::read_all(&broker.addr, "timeline_updates", Duration::from_secs(10))
                .unwrap();
        let delivered = msgs.iter().any(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            v["updates"].as_array().unwrap().iter().any(|u| {
                u["user_id"] == follower && u["tweet_id"] == post && u["author_id"] == followee
            })
        });
        if delivered {
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "no timeline update for the follower: {msgs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_killed_mid_stream_resumes_from_its_snapshot_without_loss_or_double_counting() {
    let Loaded {
        broker,
        dir,
        events,
        now,
        ..
    } = loaded("kafka-kill");
    let snaps = dir.join("snapshots");
    let c = &mut Cluster::start_full(
        2,
        1,
        &["--kafka-brokers", &broker.addr],
        &[
            "--snapshot-dir",
            snaps.to_str().unwrap(),
            "--snapshot-interval-secs",
            "1",
        ],
        &[],
    )
    .await;
    // A shard 0 that never stops, without snapshots: the reference.
    let port = shardrank_tests::free_port();
    let admin_port = shardrank_tests::free_port();
    let reference_admin = format!("http://127.0.0.1:{admin_port}");
    let reference_url = format!("http://127.0.0.1:{port}");
    let mut reference = Proc::spawn(
        "shardrank-shard",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin_port}"),
            "--shard-index".into(),
            "0".into(),
            "--num-shards".into(),
            "2".into(),
            "--kafka-brokers".into(),
            broker.addr.clone(),
        ],
        dir.join("reference.log"),
    );
    shardrank_tests::wait_serving(&reference_url, "", &mut reference, TIMEOUT).await;

    // The stream goes on while shard 0 is killed and restarted.
    let facts = Facts::of("tiny", 42);
    let mine: Vec<u64> = facts
        .tweets
        .iter()
        .copied()
        .filter(|&t| shard_of(t, 2) == 0)
        .collect();
    let addr = broker.addr.clone();
    let (users, targets) = (facts.users.clone(), mine.clone());
    let stream = std::thread::spawn(move || {
        let p = EventProducer::new(&addr, "tweet_events", "user_events", 2).unwrap();
        for k in 0..20_000usize {
            let kind = [
                EngagementKind::Like,
                EngagementKind::Retweet,
                EngagementKind::Reply,
            ][k % 3];
            let e = like(
                users[k % users.len()],
                targets[(k * 7) % targets.len()],
                now + k as i64,
                kind,
            );
            p.send_event(&e).unwrap();
            if k % 1000 == 999 {
                std::thread::sleep(Duration::from_millis(150));
            }
        }
        p.raw.flush(Duration::from_secs(30)).unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.kill_shard(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.restart_shard(0);
    let delivered = stream.join().unwrap();
    assert_eq!(delivered, 20_000);
    let url = c.shard_urls[0].clone();
    shardrank_tests::wait_serving(&url, "", &mut c.shards[0], TIMEOUT).await;
    let log = plain(&std::fs::read_to_string(&c.shards[0].log).unwrap());
    assert!(
        log.contains("from_snapshot=true"),
        "the restarted shard did not load its snapshot:\n{log}"
    );

    // The reference has the whole stream once it has applied every engagement of its
    // partition: the file's and the 20,000.
    let base = events
        .iter()
        .filter(|e| matches!(e, Event::Engagement(g) if shard_of(g.tweet_id, 2) == 0))
        .count() as f64;
    let t0 = Instant::now();
    loop {
        let (_, m) = http_get(&format!("{reference_admin}/metrics")).await;
        let applied: f64 = ["like", "retweet", "reply"]
            .iter()
            .filter_map(|t| {
                metric(
                    &m,
                    &format!("shardrank_shard_events_applied_total{{type=\"{t}\"}}"),
                )
            })
            .sum();
        if applied == base + 20_000.0 {
            break;
        }
        assert!(
            t0.elapsed() < TIMEOUT,
            "the reference applied {applied} of {}",
            base + 20_000.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let clock = now + 30_000;
    let want = fingerprint(&reference_url, 0, 2, &mine, clock).await;
    let got = wait_fingerprint(&url, 0, 2, &mine, clock, &want).await;
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the restarted shard's store differs from the one that never stopped"
    );
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert!(metric(&m, "shardrank_shard_last_snapshot_timestamp_seconds").unwrap() > 1.7e9);
}

fn owned_id(shard: u32, n: u32) -> u64 {
    (9_100_000_000_000u64..)
        .find(|&id| shard_of(id, n) == shard)
        .unwrap()
}

/// Whether shard `index` of `n` at `url` holds post `id` (ranks it).
async fn holds(url: &str, index: u32, n: u32, id: u64) -> bool {
    let Ok(mut s) = ShardClient::connect(url.to_string()).await else {
        return false;
    };
    s.rank(ShardRankRequest {
        shard_index: index,
        num_shards: n,
        user: Some(UserContext::default()),
        candidate_ids: vec![id],
        heavy_count: 1,
        ..Default::default()
    })
    .await
    .is_ok_and(|r| r.into_inner().ids == [id])
}

async fn wait_holds(url: &str, index: u32, n: u32, id: u64) {
    let t0 = Instant::now();
    while !holds(url, index, n, id).await {
        assert!(
            t0.elapsed() < TIMEOUT,
            "post {id} never became rankable on shard {index}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_counted_dead_lettered_and_the_partition_goes_on() {
    let Loaded {
        broker,
        dir: _dir,
        events,
        now,
        ..
    } = loaded("kafka-dead");
    let c = Cluster::start(2, &["--kafka-brokers", &broker.addr]).await;
    // Where the bad message lands: after the file's events of partition 0.
    let offset = events
        .iter()
        .filter(|e| match e {
            Event::NewTweet(t) => shard_of(t.id, 2) == 0,
            Event::Engagement(g) => shard_of(g.tweet_id, 2) == 0,
            _ => false,
        })
        .count();
    let producer = EventProducer::new(&broker.addr, "tweet_events", "user_events", 2).unwrap();
    let bad = br#"{"type":"like","user_id":1,"tweet_id":"#;
    producer
        .raw
        .send("tweet_events", 0, b"1", bad, None)
        .unwrap();
    let id = owned_id(0, 2);
    producer.send_event(&new_post(id, 5, now)).unwrap();
    producer.raw.flush(Duration::from_secs(10)).unwrap();

    // The event after it is applied: the partition did not stall.
    wait_holds(&c.shard_urls[0], 0, 2, id).await;
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[0])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_events_malformed_total"),
        Some(1.0)
    );
    let log = plain(&std::fs::read_to_string(&c.shards[0].log).unwrap());
    assert!(
        log.lines()
            .any(|l| l.contains("malformed event skipped")
                && l.contains(&format!("offset={offset}"))),
        "no log line naming offset {offset}:\n{log}"
    );
    // In the dead-letter topic, as it was, with where it came from and why.
    let t0 = Instant::now();
    let dead = loop {
        let d = shardrank_kafka::read_all(&broker.addr, "dead_letters", Duration::from_secs(10))
            .unwrap();
        if !d.is_empty() || t0.elapsed() > TIMEOUT {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:?}");
    let h = |k: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(dead[0].payload, bad);
    assert_eq!(h("source_topic"), "tweet_events");
    assert_eq!(h("source_partition"), "0");
    assert_eq!(h("source_offset"), offset.to_string());
    assert_eq!(h("consumer_group"), "shardrank-shard-0-of-2");
    assert!(h("error").contains("invalid JSON"), "{}", h("error"));
    // Shard 1 never saw it.
    let (_, m) = http_get(&format!("{}/metrics", c.shard_admin[1])).await;
    assert_eq!(
        metric(&m, "shardrank_shard_events_malformed_total"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_is_waited_out_and_the_cluster_serves_meanwhile() {
    let Loaded {
        mut broker,
        dir: _dir,
        now,
        ..
    } = loaded("kafka-away");
    let c = Cluster::start(2, &["--kafka-brokers", &broker.addr]).await;
    let facts = Facts::of("tiny", 42);
    let mut client = c.client().await;
    let req = RankRequest {
        user_id: facts.users[3],
        candidate_ids: facts.tweets[..2000].to_vec(),
        top_k: 50,
        ..Default::default()
    };

    broker.stop();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let r = client.rank(req.clone()).await.unwrap().into_inner();
        assert_eq!(r.candidates.len(), 50);
        assert!(r.missing_shards.is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.restart();
    // The broker listens before it has loaded its topics; a producer asking in between
    // may be told of a partition it cannot know yet (UnknownPartition). Wait for them.
    let t0 = Instant::now();
    while shardrank_kafka::EventConsumer::partitions(&broker.addr, "tweet_events").unwrap()
        != Some(2)
    {
        assert!(
            t0.elapsed() < TIMEOUT,
            "the restarted broker lost tweet_events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let producer = EventProducer::new(&broker.addr, "tweet_events", "user_events", 2).unwrap();
    let id = owned_id(1, 2);
    producer.send_event(&new_post(id, 9, now)).unwrap();
    producer.raw.flush(Duration::from_secs(20)).unwrap();
    wait_holds(&c.shard_urls[1], 1, 2, id).await;
    let r = client
        .rank(RankRequest {
            user_id: facts.users[3],
            candidate_ids: vec![id],
            top_k: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.candidates.len(), 1);
}

/// `n` post ids that shard `index` of 2 owns, from `from` on.
fn owned_from(from: u64, index: u32, n: usize) -> Vec<u64> {
    (from..)
        .filter(|&id| shard_of(id, 2) == index)
        .take(n)
        .collect()
}

/// Produces new posts `ids` (author 7, at `now`) to `broker` through the CLI, as a
/// file in `dir` named `name`.
fn produce_posts(broker: &Broker, dir: &Path, name: &str, ids: &[u64], now: i64) {
    let file = dir.join(name);
    let mut w =
        shardrank_core::events::EventWriter::new(std::fs::File::create(&file).unwrap(), "none", 0)
            .unwrap();
    for &id in ids {
        w.write(&new_post(id, 7, now)).unwrap();
    }
    w.finish().unwrap();
    let (code, err) = produce(broker, &file, 2);
    assert_eq!(code, Some(0), "{err}");
}

/// Shard 0 of 2 reading `brokers`, with live snapshots every second into `snaps`.
fn live_shard(dir: &Path, snaps: &Path, brokers: &str, log: &str) -> (Proc, String, String) {
    let (port, admin) = (shardrank_tests::free_port(), shardrank_tests::free_port());
    let p = Proc::spawn(
        "shardrank-shard",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--shard-index".into(),
            "0".into(),
            "--num-shards".into(),
            "2".into(),
            "--kafka-brokers".into(),
            brokers.to_string(),
            "--snapshot-dir".into(),
            snaps.to_str().unwrap().into(),
            "--snapshot-interval-secs".into(),
            "1".into(),
        ],
        dir.join(log),
    );
    (
        p,
        format!("http://127.0.0.1:{port}"),
        format!("http://127.0.0.1:{admin}"),
    )
}

/// Waits until the shard has counted a cut.
async fn wait_cut_counted(admin: &str) {
    let t0 = Instant::now();
    loop {
        let (_, m) = http_get(&format!("{admin}/metrics")).await;
        match metric(&m, "shardrank_shard_log_truncations_total") {
            Some(n) if n >= 1.0 => return,
            _ => assert!(t0.elapsed() < TIMEOUT, "no cut counted:\n{m}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A shard restarted from a snapshot that is ahead of the log (the broker lost records
/// the shard had applied: here, a replacement broker with a shorter log) finds the cut
/// before it serves, so a record produced afterwards, at an offset below the restored
/// position, is applied and not skipped as a replay. The replacement's partition of
/// shard 0 is empty: the cut can only be seen by comparing the partition's end with
/// the position, since no old record comes in to reveal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_while_a_shard_was_down_is_found_at_start_and_new_records_are_applied() {
    let Loaded {
        broker, dir, now, ..
    } = loaded("kafka-cut");
    let snaps = dir.join("snapshots");
    let (mut first, url, _) = live_shard(&dir, &snaps, &broker.addr, "first.log");
    shardrank_tests::wait_serving(&url, "", &mut first, TIMEOUT).await;
    let snapshot = snaps.join("shard-0-of-2.snap");
    let t0 = Instant::now();
    while !snapshot.exists() {
        assert!(t0.elapsed() < TIMEOUT, "no snapshot written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill();

    // The replacement broker holds three posts, all of shard 1.
    let other = Broker::start();
    let theirs = owned_from(9_200_000_000_000, 1, 3);
    produce_posts(&other, &dir, "three.jsonl", &theirs, now);
    let (mut second, url, admin) = live_shard(&dir, &snaps, &other.addr, "second.log");
    shardrank_tests::wait_serving(&url, "", &mut second, TIMEOUT).await;
    let log = plain(&std::fs::read_to_string(&second.log).unwrap());
    assert!(log.contains("from_snapshot=true"), "{log}");
    assert!(
        log.contains("below this consumer's position")
            && log.contains("topic=\"tweet_events\" partition=0 "),
        "the cut of shard 0's partition was not reported before serving:\n{log}"
    );

    // A post produced now takes offset 0, far below the restored position.
    let mine = owned_from(9_200_000_000_000, 0, 1)[0];
    let producer = EventProducer::new(&other.addr, "tweet_events", "user_events", 2).unwrap();
    producer.send_event(&new_post(mine, 7, now)).unwrap();
    producer.raw.flush(Duration::from_secs(20)).unwrap();
    wait_holds(&url, 0, 2, mine).await;
    wait_cut_counted(&admin).await;
}

/// A log cut under a running shard (its broker replaced by an empty one at the same
/// address) is found by the first record below the position: reported, counted, and
/// reading goes on from the log's end, so what is produced after it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_under_a_running_shard_is_reported_and_later_records_are_applied() {
    let Loaded {
        mut broker,
        dir,
        now,
        ..
    } = loaded("kafka-cut-live");
    let snaps = dir.join("snapshots");
    let (mut shard, url, admin) = live_shard(&dir, &snaps, &broker.addr, "shard.log");
    shardrank_tests::wait_serving(&url, "", &mut shard, TIMEOUT).await;

    broker.replace();
    let mine = owned_from(9_300_000_000_000, 0, 4);
    produce_posts(&broker, &dir, "three.jsonl", &mine[..3], now);
    wait_cut_counted(&admin).await;
    let log = plain(&std::fs::read_to_string(&shard.log).unwrap());
    assert!(
        log.contains("below this consumer's position") && log.contains("are not applied"),
        "the cut was not reported:\n{log}"
    );

    let producer = EventProducer::new(&broker.addr, "tweet_events", "user_events", 2).unwrap();
    producer.send_event(&new_post(mine[3], 7, now)).unwrap();
    producer.raw.flush(Duration::from_secs(20)).unwrap();
    wait_holds(&url, 0, 2, mine[3]).await;
}
