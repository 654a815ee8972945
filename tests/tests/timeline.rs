//! Coordinator.Timeline through the timeline pipeline, on a real cluster: follows bring
//! recent posts, blocked and muted authors never appear, no author more than M times,
//! every source contributes, a user without follows still gets a timeline, an unknown
//! user is NOT_FOUND; a failing source is skipped when it fails open and fails the
//! request when it does not; bad pipeline configs stop start-up naming the component.

use shardrank_core::corpus::{generate, CorpusSpec, CORPUS_END_MS};
use shardrank_core::events::{Event, SocialKind};
use shardrank_proto::v1::{TimelineRequest, TimelineResponse};
use shardrank_tests::{run, scratch_dir, Cluster, ScratchDir};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tonic::Code;

const U1: u64 = 9_000_000_001;
const U2: u64 = 9_000_000_002;
const M: usize = 3;

struct World {
    /// Authors with the most posts in the last 48 hours and fewer than 5 reports:
    /// [followed, followed-and-blocked, followed-and-muted].
    a: u64,
    b: u64,
    c: u64,
    author_of: HashMap<u64, u64>,
    recent_by_a: HashSet<u64>,
    _dir: ScratchDir,
    events: String,
}

/// The tiny corpus as an events file, plus two users: U1 follows a, b and c, blocks b
/// and mutes c; U2 follows nobody.
fn world() -> World {
    let spec = CorpusSpec::named("tiny", 42).unwrap();
    let since = CORPUS_END_MS - 48 * 3_600_000;
    let mut recent: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut reports: HashMap<u64, u32> = HashMap::new();
    let mut author_of = HashMap::new();
    generate(&spec, |e| match e {
        Event::NewTweet(t) => {
            author_of.insert(t.id, t.author_id);
            if t.created_at >= since {
                recent.entry(t.author_id).or_default().push(t.id);
            }
        }
        Event::Social(s) if matches!(s.kind, SocialKind::Block | SocialKind::Mute) => {
            *reports.entry(s.target_id).or_default() += 1
        }
        _ => {}
    });
    let mut authors: Vec<(usize, u64)> = recent
        .iter()
        .filter(|(a, _)| reports.get(a).copied().unwrap_or(0) < 5)
        .map(|(a, p)| (p.len(), *a))
        .collect();
    authors.sort_unstable_by(|x, y| y.cmp(x));
    let (a, b, c) = (authors[0].1, authors[1].1, authors[2].1);
    assert!(
        authors[0].0 > M,
        "the followed author posts more than M times"
    );

    let dir = scratch_dir("timeline");
    let file = dir.join("events.jsonl");
    shardrank_tests::gen_tiny(&file, "json");
    let t = CORPUS_END_MS - 1;
    let mut extra = String::new();
    for (u, known_for) in [(U1, 3), (U2, 5)] {
        extra.push_str(&format!(
            "{{\"type\":\"user\",\"user_id\":{u},\"lang\":\"und\",\"known_for\":{known_for},\"created_at\":{t}}}\n"
        ));
    }
    for (kind, target) in [
        ("follow", a),
        ("follow", b),
        ("follow", c),
        ("block", b),
        ("mute", c),
    ] {
        extra.push_str(&format!(
            "{{\"type\":\"{kind}\",\"user_id\":{U1},\"target_id\":{target},\"timestamp\":{t}}}\n"
        ));
    }
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str(&extra);
    std::fs::write(&file, text).unwrap();
    World {
        a,
        b,
        c,
        recent_by_a: recent[&a].iter().copied().collect(),
        author_of,
        events: file.to_str().unwrap().to_string(),
        _dir: dir,
    }
}

async fn timeline(
    c: &Cluster,
    user_id: u64,
    limit: u32,
) -> Result<TimelineResponse, tonic::Status> {
    c.client()
        .await
        .timeline(TimelineRequest {
            user_id,
            limit,
            include_stats: true,
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

fn brought(r: &TimelineResponse, source: &str) -> u32 {
    r.stats
        .as_ref()
        .unwrap()
        .components
        .iter()
        .find(|c| c.name == source)
        .unwrap_or_else(|| panic!("no stats for {source}"))
        .candidates_out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_timeline_follows_blocks_diversity_and_sources() {
    let w = world();
    let c = Cluster::start(4, &["--events", &w.events]).await;

    let r = timeline(&c, U1, 50).await.unwrap();
    assert!(r.missing_shards.is_empty());
    assert!(!r.entries.is_empty() && r.entries.len() <= 50);
    let authors: Vec<u64> = r.entries.iter().map(|e| e.author_id).collect();
    // Followed: a's recent posts are in it, marked in-network.
    let from_a: Vec<_> = r.entries.iter().filter(|e| e.author_id == w.a).collect();
    assert!(
        !from_a.is_empty(),
        "a followed author's recent posts appear"
    );
    for e in &from_a {
        assert!(w.recent_by_a.contains(&e.tweet_id));
        assert_eq!(e.source, "in_network");
    }
    // Blocked and muted: never, although followed.
    assert!(!authors.contains(&w.b) && !authors.contains(&w.c));
    // Diversity: no author more than M times.
    let mut per: HashMap<u64, usize> = HashMap::new();
    for a in &authors {
        *per.entry(*a).or_default() += 1;
    }
    assert!(per.values().all(|&n| n <= M), "{per:?}");
    // Each entry is a real post by the author it names, from a named source, best first.
    for e in &r.entries {
        assert_eq!(w.author_of.get(&e.tweet_id), Some(&e.author_id));
        assert!(["in_network", "out_of_network", "trending"].contains(&e.source.as_str()));
    }
    for p in r.entries.windows(2) {
        assert!(p[0].score >= p[1].score);
    }
    // Every source brought candidates; the stats name every component.
    for s in ["in_network", "out_of_network", "trending"] {
        assert!(brought(&r, s) > 0, "{s} brought nothing");
    }
    let stats = r.stats.as_ref().unwrap();
    assert_eq!(stats.pipeline, "timeline");
    assert!(stats.components.iter().all(|c| c.outcome == "ok"));
    assert!(stats.components.iter().any(|c| c.name == "heavy_ranker"));
    let sources: HashSet<&str> = r.entries.iter().map(|e| e.source.as_str()).collect();
    assert!(sources.len() >= 2, "{sources:?}");

    // The default limit is 20, and seen posts are not shown again.
    let r20 = timeline(&c, U1, 0).await.unwrap();
    assert_eq!(r20.entries.len(), 20);
    let seen: Vec<u64> = r20.entries.iter().take(5).map(|e| e.tweet_id).collect();
    let again = c
        .client()
        .await
        .timeline(TimelineRequest {
            user_id: U1,
            seen_ids: seen.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.entries.iter().all(|e| !seen.contains(&e.tweet_id)));

    // No follows: out-of-network and trending still fill a timeline.
    let r2 = timeline(&c, U2, 20).await.unwrap();
    assert_eq!(r2.entries.len(), 20);
    assert_eq!(brought(&r2, "in_network"), 0);
    assert!(brought(&r2, "out_of_network") > 0 && brought(&r2, "trending") > 0);

    // Unknown user: NOT_FOUND, saying so.
    let e = timeline(&c, 424_242_424_242, 20).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("424242424242"), "{}", e.message());
    let e = timeline(&c, U1, 501).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

/// The default pipeline with a `fault` source added to the sources step.
fn config_with_fault(dir: &std::path::Path, settings: &str) -> String {
    let text = shardrank_coordinator::pipeline::config::DEFAULT_TIMELINE.replace(
        r#"components = ["in_network", "out_of_network", "trending"]"#,
        r#"components = ["in_network", "out_of_network", "trending", "fault"]"#,
    );
    assert!(text.contains("\"fault\""));
    let path = dir.join(format!("pipeline-{}.toml", settings.len()));
    std::fs::write(&path, format!("{text}\n[components.fault]\n{settings}\n")).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_skipped_when_it_fails_open() {
    let dir = scratch_dir("pipelines");
    let failing = config_with_fault(&dir, "error = \"injected failure\"");
    let slow = config_with_fault(&dir, "delay_ms = 10000\ntimeout_ms = 50");
    let strict = config_with_fault(&dir, "error = \"injected failure\"\nfail_open = false");
    let data = ["--corpus", "tiny"];
    let users = shardrank_tests::corpus_facts::Facts::of("tiny", 42).users;
    let user = users[7];
    for (config, outcome, error) in [
        (&failing, "skipped", "injected failure"),
        (&slow, "skipped", "timed out"),
    ] {
        let c = Cluster::start_with(2, &data, &["--pipeline-config", config]).await;
        let t0 = std::time::Instant::now();
        let r = timeline(&c, user, 20).await.unwrap();
        assert_eq!(r.entries.len(), 20, "the timeline comes back anyway");
        assert!(t0.elapsed() < Duration::from_secs(5));
        let f = r
            .stats
            .unwrap()
            .components
            .into_iter()
            .find(|x| x.name == "fault")
            .unwrap();
        assert_eq!(f.outcome, outcome);
        assert!(f.error.contains(error), "{}", f.error);
        let (_, m) = shardrank_tests::http_get(&format!("{}/metrics", c.admin)).await;
        assert_eq!(
            shardrank_tests::metric(
                &m,
                "shardrank_coordinator_component_outcomes_total{pipeline=\"timeline\",component=\"fault\",outcome=\"skipped\"}"
            ),
            Some(1.0)
        );
    }
    let c = Cluster::start_with(2, &data, &["--pipeline-config", &strict]).await;
    let e = timeline(&c, user, 20).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(
        e.message().contains("component fault") && e.message().contains("injected failure"),
        "{}",
        e.message()
    );
}

#[test]
fn a_bad_pipeline_config_stops_start_up_naming_the_component() {
    let dir = scratch_dir("bad-pipelines");
    for (text, names) in [
        (
            "name = \"timeline\"\nsteps = [{ kind = \"source\", components = [\"in_network\", \"crystal_ball\"] }]\n",
            "unknown component \"crystal_ball\"",
        ),
        (
            "name = \"timeline\"\nsteps = [{ kind = \"scorer\", components = [\"heavy_ranker\"] }, { kind = \"source\", components = [\"trending\"] }]\n",
            "\"heavy_ranker\" (scorer) comes before any candidate source",
        ),
    ] {
        let path = dir.join(format!("p{}.toml", names.len()));
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run(
            "shardrank-coordinator",
            &[
                "--corpus",
                "tiny",
                "--pipeline-config",
                path.to_str().unwrap(),
                "--check-config",
            ],
            Duration::from_secs(30),
        );
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(names) && err.contains(path.to_str().unwrap()), "{err}");
    }
}
