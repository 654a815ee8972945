//! The deterministic corpus generator (`standard`, `tiny`), as an event stream.
//!
//! Same seed, same events, whatever the number of shards: every process that needs the
//! corpus (each shard, the coordinator, the load test) can generate it itself, so nothing
//! is shipped and start-up needs no file (`shardrank up`, whose processes share the
//! cores, generates it once in the binary events form for all of them instead). The
//! stream, in order:
//! 1. a `user` event per user (language, the interest cluster it is known for);
//! 2. the follow graph: about 50 followees per user, power-law popularity (a few
//!    accounts with very many followers), 60% of follows inside the user's community;
//!    then a few blocks and mutes;
//! 3. a week of tweets in time order (authorship Zipf-like: some users post a lot),
//!    with heavy-tailed engagement counts carried over, interleaved with a stream of
//!    like/retweet/reply events over the last two hours.
//!
//! Ids are not dense: tweet ids are snowflakes (time in the high bits), user ids an
//! affine bijection of the index scattered over 48 bits.

use crate::events::*;
use crate::lang::{self, Lang};
use crate::rng::{Rng, Zipf};

/// A corpus: its name, sizes and seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorpusSpec {
    pub name: &'static str,
    pub users: u64,
    pub tweets: u64,
    pub seed: u64,
}

pub const DEFAULT_SEED: u64 = 42;
/// The end of the corpus' time line: 2026-01-01T00:00:00Z, in ms.
pub const CORPUS_END_MS: i64 = 1_767_225_600_000;
const WEEK_MS: i64 = 7 * 24 * 3600 * 1000;
const ENGAGEMENT_WINDOW_MS: i64 = 2 * 3600 * 1000;
/// Twitter's snowflake epoch, so ids look like the real thing.
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;
pub const COMMUNITIES: u32 = 64;
const LANGS: [(&str, f64); 10] = [
    ("en", 0.45),
    ("ja", 0.15),
    ("es", 0.10),
    ("pt", 0.08),
    ("ar", 0.05),
    ("fr", 0.05),
    ("de", 0.04),
    ("ko", 0.03),
    ("hi", 0.03),
    ("tr", 0.02),
];

impl CorpusSpec {
    /// `standard` (100,000 users, 1,000,000 tweets) or `tiny` (1,000 and 10,000).
    pub fn named(name: &str, seed: u64) -> Option<CorpusSpec> {
        match name {
            "standard" => Some(CorpusSpec {
                name: "standard",
                users: 100_000,
                tweets: 1_000_000,
                seed,
            }),
            "tiny" => Some(CorpusSpec {
                name: "tiny",
                users: 1_000,
                tweets: 10_000,
                seed,
            }),
            _ => None,
        }
    }

    pub const NAMES: &'static [&'static str] = &["standard", "tiny"];

    /// The id of user number `i` (0 is the most popular).
    pub fn user_id(&self, i: u64) -> u64 {
        // An odd multiplier is invertible mod 2^48, so distinct indexes give distinct ids.
        (i + 1)
            .wrapping_mul(0x9E37_79B9_7F4B)
            .wrapping_add(self.seed.wrapping_mul(0x1_0000_0001))
            & ((1 << 48) - 1)
    }

    /// Every tweet id of the corpus, in creation order, without generating the rest.
    pub fn tweet_ids(&self) -> Vec<u64> {
        let mut ids = Vec::with_capacity(self.tweets as usize);
        generate(self, |e| {
            if let Event::NewTweet(t) = e {
                ids.push(t.id);
            }
        });
        ids
    }
}

fn community_of(spec: &CorpusSpec, i: u64) -> u32 {
    (crate::rng::mix64(i ^ spec.seed.rotate_left(17)) % COMMUNITIES as u64) as u32
}

fn pick_lang(r: &mut Rng) -> Lang {
    let mut x = r.f64();
    for (code, p) in LANGS {
        if x < p {
            return lang::parse(code).expect("table codes are valid");
        }
        x -= p;
    }
    lang::parse("en").expect("valid")
}

/// Generates the corpus, calling `sink` with each event in stream order.
pub fn generate(spec: &CorpusSpec, mut sink: impl FnMut(Event)) {
    let user_lang = users(spec, &mut sink);
    social(spec, &mut sink);
    posts(spec, &user_lang, sink);
}

/// The first part of the stream: users, then follows, blocks and mutes. The two parts
/// draw from independent random streams, so they can be generated at once on two
/// threads and concatenated: [`generate`]'s stream (tested in `events::binary`).
pub fn generate_social(spec: &CorpusSpec, mut sink: impl FnMut(Event)) {
    users(spec, &mut sink);
    social(spec, sink);
}

/// The second part: posts over a week, engagement over its last two hours.
pub fn generate_posts(spec: &CorpusSpec, sink: impl FnMut(Event)) {
    // Posts take their author's language mostly: the users' draws again, unsent.
    let user_lang = users(spec, |_| {});
    posts(spec, &user_lang, sink);
}

/// 1. Users; their languages.
fn users(spec: &CorpusSpec, mut sink: impl FnMut(Event)) -> Vec<Lang> {
    let n = spec.users;
    let start = CORPUS_END_MS - WEEK_MS;
    let mut rng = Rng::fork(spec.seed, 1);
    let mut user_lang = Vec::with_capacity(n as usize);
    for i in 0..n {
        let l = pick_lang(&mut rng);
        user_lang.push(l);
        sink(Event::User(UserProfile {
            user_id: spec.user_id(i),
            lang: l,
            known_for: community_of(spec, i),
            created_at: start - 86_400_000 - (rng.below(365 * 86_400) as i64) * 1000,
        }));
    }

    user_lang
}

/// 2. Follows, blocks, mutes.
fn social(spec: &CorpusSpec, mut sink: impl FnMut(Event)) {
    let n = spec.users;
    let start = CORPUS_END_MS - WEEK_MS;
    // Members of each community, most popular first.
    let mut members: Vec<Vec<u64>> = vec![Vec::new(); COMMUNITIES as usize];
    for i in 0..n {
        members[community_of(spec, i) as usize].push(i);
    }
    let social_time = start - 3_600_000;
    let mut rng = Rng::fork(spec.seed, 2);
    let mut picks: Vec<u64> = Vec::with_capacity(256);
    // picked[j] == i + 1 when user i already follows j: an O(1) duplicate check (the
    // draws, and so the corpus, are those of a plain "already picked?" test).
    let mut picked: Vec<u32> = vec![0; n as usize];
    let global = Zipf::new(n, 0.85);
    let within: Vec<Zipf> = members
        .iter()
        .map(|m| Zipf::new(m.len().max(1) as u64, 0.8))
        .collect();
    for i in 0..n {
        let want = (5.0 + rng.exp(45.0)).min(n as f64 - 1.0) as usize;
        let community = community_of(spec, i) as usize;
        let own = &members[community];
        picks.clear();
        // Draw until `want` distinct followees (small communities repeat themselves),
        // with a bound on attempts so a tiny corpus cannot loop.
        for _ in 0..want * 4 {
            if picks.len() == want {
                break;
            }
            let j = if rng.chance(0.6) && own.len() > 1 {
                own[within[community].sample(&mut rng) as usize]
            } else {
                global.sample(&mut rng)
            };
            if j != i && picked[j as usize] != i as u32 + 1 {
                picked[j as usize] = i as u32 + 1;
                picks.push(j);
            }
        }
        picks.sort_unstable();
        for &j in &picks {
            sink(Event::Social(Social {
                kind: SocialKind::Follow,
                user_id: spec.user_id(i),
                target_id: spec.user_id(j),
                timestamp: social_time,
            }));
        }
    }
    for i in 0..n {
        for (kind, p) in [(SocialKind::Block, 0.03), (SocialKind::Mute, 0.05)] {
            if rng.chance(p) {
                for _ in 0..1 + rng.below(3) {
                    let j = global.sample(&mut rng);
                    if j != i {
                        sink(Event::Social(Social {
                            kind,
                            user_id: spec.user_id(i),
                            target_id: spec.user_id(j),
                            timestamp: social_time,
                        }));
                    }
                }
            }
        }
    }
}

/// 3. Tweets over a week, engagement events over the last two hours.
fn posts(spec: &CorpusSpec, user_lang: &[Lang], mut sink: impl FnMut(Event)) {
    let n = spec.users;
    let start = CORPUS_END_MS - WEEK_MS;
    let mut rng = Rng::fork(spec.seed, 3);
    let mut eng = Rng::fork(spec.seed, 4);
    let gap = WEEK_MS as f64 / spec.tweets as f64;
    let eng_rate_gap = ENGAGEMENT_WINDOW_MS as f64 / (spec.tweets as f64 * 0.3);
    let mut next_eng = (CORPUS_END_MS - ENGAGEMENT_WINDOW_MS) as f64 + eng.exp(eng_rate_gap);
    let mut t = start as f64;
    let mut last_ms = i64::MIN;
    let mut seq = 0u64;
    let worker = spec.seed % 1024;
    let mut recent: Vec<u64> = Vec::with_capacity(spec.tweets as usize);
    let (authorship, engagers) = (Zipf::new(n, 0.8), Zipf::new(n, 0.5));
    for _ in 0..spec.tweets {
        t += rng.exp(gap);
        let created = (t as i64).min(CORPUS_END_MS - 1);
        while next_eng < t && !recent.is_empty() {
            // Engagement favours recent tweets: an exponential look-back.
            let back = (eng.exp(2000.0) as usize).min(recent.len() - 1);
            let tweet_id = recent[recent.len() - 1 - back];
            let x = eng.f64();
            let kind = if x < 0.7 {
                EngagementKind::Like
            } else if x < 0.9 {
                EngagementKind::Retweet
            } else {
                EngagementKind::Reply
            };
            sink(Event::Engagement(Engagement {
                kind,
                user_id: spec.user_id(engagers.sample(&mut eng)),
                tweet_id,
                timestamp: next_eng as i64,
            }));
            next_eng += eng.exp(eng_rate_gap);
        }
        if created == last_ms {
            seq += 1;
        } else {
            seq = 0;
            last_ms = created;
        }
        let id = (((created - SNOWFLAKE_EPOCH_MS) as u64) << 22) | (worker << 12) | (seq & 0xFFF);
        let author = authorship.sample(&mut rng);
        let lang = if rng.chance(0.9) {
            user_lang[author as usize]
        } else {
            pick_lang(&mut rng)
        };
        let reply_to = if rng.chance(0.2) && !recent.is_empty() {
            Some(recent[rng.below(recent.len() as u64) as usize])
        } else {
            None
        };
        // Popular authors draw more engagement; the tail is heavy either way.
        let reach = 1.0 + 30.0 / ((author + 1) as f64).sqrt();
        let likes = ((rng.pareto(1.2) - 1.0) * 4.0 * reach).min(2.0e6) as u32;
        let retweets = (likes as f64 * 0.25 * rng.f64()) as u32;
        let replies = (likes as f64 * 0.1 * rng.f64()) as u32;
        sink(Event::NewTweet(NewTweet {
            id,
            author_id: spec.user_id(author),
            created_at: created,
            lang,
            has_media: rng.chance(0.25),
            reply_to,
            text_len: (10.0 + rng.exp(70.0)).min(280.0) as u16,
            likes,
            retweets,
            replies,
        }));
        recent.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn tiny() -> CorpusSpec {
        CorpusSpec::named("tiny", DEFAULT_SEED).unwrap()
    }

    #[test]
    fn same_seed_same_corpus_other_seed_other() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        generate(&tiny(), |e| a.push(e));
        generate(&tiny(), |e| b.push(e));
        generate(&CorpusSpec::named("tiny", 7).unwrap(), |e| c.push(e));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn tiny_has_the_documented_shape() {
        let spec = tiny();
        let (mut users, mut follows, mut tweets) = (0u64, 0u64, Vec::new());
        let mut followers: HashMap<u64, u32> = HashMap::new();
        let mut authors: HashMap<u64, u32> = HashMap::new();
        let mut last_time = i64::MIN;
        generate(&spec, |e| match e {
            Event::User(_) => users += 1,
            Event::Social(s) if s.kind == SocialKind::Follow => {
                follows += 1;
                *followers.entry(s.target_id).or_default() += 1;
            }
            Event::NewTweet(t) => {
                assert!(t.created_at >= last_time, "tweets come in time order");
                last_time = t.created_at;
                *authors.entry(t.author_id).or_default() += 1;
                tweets.push(t.id);
            }
            _ => {}
        });
        assert_eq!(users, 1_000);
        assert_eq!(tweets.len(), 10_000);
        let distinct: HashSet<u64> = tweets.iter().copied().collect();
        assert_eq!(distinct.len(), tweets.len(), "tweet ids are unique");
        let per_user = follows as f64 / users as f64;
        assert!(
            (35.0..60.0).contains(&per_user),
            "followees per user {per_user}"
        );
        // Power law: the most followed account has far more than the median one.
        let mut f: Vec<u32> = followers.values().copied().collect();
        f.sort_unstable();
        assert!(
            f[f.len() - 1] > 10 * f[f.len() / 2].max(1),
            "max {} median {}",
            f[f.len() - 1],
            f[f.len() / 2]
        );
        let mut a: Vec<u32> = authors.values().copied().collect();
        a.sort_unstable();
        assert!(a[a.len() - 1] > 20 * a[a.len() / 2].max(1));
        assert_eq!(spec.tweet_ids(), tweets);
    }

    #[test]
    fn user_ids_are_distinct() {
        let spec = CorpusSpec::named("standard", 42).unwrap();
        let ids: HashSet<u64> = (0..spec.users).map(|i| spec.user_id(i)).collect();
        assert_eq!(ids.len() as u64, spec.users);
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::events::EventWriter;

    /// A digest of the tiny corpus as written by `shardrank gen`. Outside tools, saved
    /// events files and every benchmark figure depend on the corpus never changing for
    /// a seed: a change to the generator that moves this value is a breaking change
    /// (give it a new corpus name instead).
    #[test]
    fn tiny_corpus_is_frozen() {
        let mut w = EventWriter::new(Vec::new(), "tiny", 42).unwrap();
        generate(&CorpusSpec::named("tiny", 42).unwrap(), |e| {
            w.write(&e).unwrap()
        });
        let bytes = w.finish().unwrap();
        let digest = bytes.chunks(8).fold(0u64, |h, c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            crate::rng::mix64(h ^ u64::from_le_bytes(b))
        });
        assert_eq!(
            (bytes.len(), digest),
            (GOLDEN_LEN, GOLDEN_DIGEST),
            "the tiny corpus changed"
        );
    }

    const GOLDEN_LEN: usize = 7_318_703;
    const GOLDEN_DIGEST: u64 = 14_433_649_450_401_362_965;
}
