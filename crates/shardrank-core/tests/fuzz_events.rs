//! Property tests of the event parser: whatever a line holds, parsing returns an event or
//! an error naming the line, never a panic; valid events survive a write and a read;
//! a lenient read of any stream loses no good line. Inputs that once failed stay as
//! regression cases: proptest's own (`proptest-regressions/`) and the hand-kept
//! `tests/regressions/events.jsonl`.

use proptest::prelude::*;
use shardrank_core::events::{
    parse_line, read_events, Engagement, EngagementKind, Event, EventError, EventWriter, NewTweet,
    OnMalformed, Social, SocialKind, UserProfile,
};

fn check_line(text: &str, line_no: u64) {
    match parse_line(text, line_no) {
        Ok(_) => {}
        Err(EventError::Malformed { line, msg }) => {
            assert_eq!(line, line_no);
            assert!(!msg.is_empty());
        }
        Err(EventError::Version { line, .. }) => assert_eq!(line, line_no),
        Err(EventError::Io(e)) => panic!("parse_line returned an I/O error: {e}"),
        Err(e @ EventError::Binary { .. }) => {
            panic!("parse_line returned a binary-form error: {e}")
        }
    }
}

#[test]
fn regression_corpus_parses_or_is_refused_without_panic() {
    let corpus = include_str!("regressions/events.jsonl");
    for (i, line) in corpus.lines().enumerate() {
        check_line(line, i as u64 + 1);
    }
    // Ids and counts out of range or of the wrong kind are refused, not wrapped; a
    // text length beyond u16 saturates by design (line 3); a repeated key is ambiguous
    // and refused (line 16).
    let lines: Vec<&str> = corpus.lines().collect();
    for n in [2, 4, 5, 6, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21] {
        assert!(
            parse_line(lines[n - 1], 1).is_err(),
            "line {n}: {}",
            lines[n - 1]
        );
    }
    for n in [1, 3, 7, 22] {
        assert!(
            parse_line(lines[n - 1], 1).is_ok(),
            "line {n}: {}",
            lines[n - 1]
        );
    }
}

/// A JSON value of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const TYPES: [&str; 11] = [
    "schema",
    "user",
    "new_tweet",
    "like",
    "retweet",
    "reply",
    "follow",
    "unfollow",
    "block",
    "mute",
    "nope",
];
const FIELDS: [&str; 16] = [
    "id",
    "author_id",
    "created_at",
    "lang",
    "has_media",
    "reply_to",
    "text_len",
    "text",
    "likes",
    "user_id",
    "tweet_id",
    "target_id",
    "timestamp",
    "known_for",
    "version",
    "retweets",
];

/// An object with a known type and a random subset of the known fields, of random types:
/// the lines a buggy producer would write.
fn event_like_object() -> impl Strategy<Value = String> {
    (
        prop::sample::select(TYPES.to_vec()),
        prop::collection::vec((prop::sample::select(FIELDS.to_vec()), json_value()), 0..8),
    )
        .prop_map(|(t, fields)| {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), t.into());
            for (k, v) in fields {
                m.insert(k.into(), v);
            }
            serde_json::Value::Object(m).to_string()
        })
}

fn lang() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        (b'a'..=b'z', b'a'..=b'z').prop_map(|(a, b)| ((a as u16) << 8) | b as u16)
    ]
}

fn valid_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (any::<u64>(), lang(), any::<u32>(), any::<i64>()).prop_map(|(u, l, k, t)| {
            Event::User(UserProfile {
                user_id: u,
                lang: l,
                known_for: k,
                created_at: t,
            })
        }),
        (
            (
                any::<u64>(),
                any::<u64>(),
                any::<i64>(),
                lang(),
                any::<bool>()
            ),
            (
                any::<Option<u64>>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
        )
            .prop_map(|((id, a, t, l, m), (r, len, likes, rts, reps))| {
                Event::NewTweet(NewTweet {
                    id,
                    author_id: a,
                    created_at: t,
                    lang: l,
                    has_media: m,
                    reply_to: r,
                    text_len: len,
                    likes,
                    retweets: rts,
                    replies: reps,
                })
            }),
        (0..3u8, any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(k, u, t, ts)| {
            Event::Engagement(Engagement {
                kind: [
                    EngagementKind::Like,
                    EngagementKind::Retweet,
                    EngagementKind::Reply,
                ][k as usize],
                user_id: u,
                tweet_id: t,
                timestamp: ts,
            })
        }),
        (0..4u8, any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(k, u, t, ts)| {
            Event::Social(Social {
                kind: [
                    SocialKind::Follow,
                    SocialKind::Unfollow,
                    SocialKind::Block,
                    SocialKind::Mute,
                ][k as usize],
                user_id: u,
                target_id: t,
                timestamp: ts,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_text_is_an_event_or_a_named_error(text in ".{0,200}", n in 1u64..1_000_000) {
        check_line(&text, n);
    }

    #[test]
    fn any_json_object_is_an_event_or_a_named_error(text in event_like_object(), n in 1u64..1000) {
        check_line(&text, n);
    }

    #[test]
    fn valid_events_survive_a_write_and_a_read(events in prop::collection::vec(valid_event(), 0..20)) {
        let mut w = EventWriter::new(Vec::new(), "prop", 1).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut back = Vec::new();
        let r = read_events(&bytes[..], OnMalformed::Stop, |e| back.push(e)).unwrap();
        prop_assert_eq!(r.events as usize, events.len());
        prop_assert_eq!(back, events);
    }

    #[test]
    fn a_lenient_read_keeps_every_good_line(
        events in prop::collection::vec(valid_event(), 0..20),
        junk in prop::collection::vec((0usize..25, prop::collection::vec(any::<u8>(), 0..40)), 0..6),
    ) {
        let mut w = EventWriter::new(Vec::new(), "prop", 1).unwrap();
        for e in &events {
            w.write(e).unwrap();
        }
        let text = w.finish().unwrap();
        let mut lines: Vec<Vec<u8>> = text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        for (at, bytes) in junk {
            // Junk without newlines, inserted after the header.
            let bytes: Vec<u8> = bytes.into_iter().filter(|&b| b != b'\n').collect();
            lines.insert(1 + at.min(lines.len() - 1), bytes);
        }
        let stream = lines.join(&b'\n');
        let mut back = Vec::new();
        let r = read_events(&stream[..], OnMalformed::Skip, |e| back.push(e));
        // Junk that happens to be a valid event or a schema line may be read as one;
        // what must hold is that no good event is lost, in order.
        if let Ok(r) = r {
            let mut it = back.iter();
            for e in &events {
                prop_assert!(it.any(|b| b == e), "lost {:?}", e);
            }
            prop_assert!(r.events as usize >= events.len());
        }
    }
}
