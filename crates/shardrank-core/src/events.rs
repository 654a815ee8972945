//! The event stream: the one way data enters the stores.
//!
//! Format: JSON lines, schema version 1. A file may start with a header line
//! `{"type":"schema","version":1,...}`; a file with a version this build does not know is
//! refused. Every other line is one event, `{"type": ..., fields}`:
//!
//! | type | fields |
//! | --- | --- |
//! | `user` | `user_id`, `lang`, `known_for` (interest cluster the user is known for), `created_at` |
//! | `new_tweet` | `id`, `author_id`, `created_at`, `lang`, `has_media`, `reply_to` (id or null), `text_len` (or `text`), optional `likes`, `retweets`, `replies` (counts carried over from before the stream) |
//! | `like`, `retweet`, `reply` | `user_id`, `tweet_id`, `timestamp` |
//! | `follow`, `unfollow`, `block`, `mute` | `user_id`, `target_id`, `timestamp` |
//!
//! Times are milliseconds since the Unix epoch; ids are u64; `lang` is a two-letter
//! ISO 639-1 code or "und". Unknown fields are ignored (forward compatibility); a
//! missing required field or a wrong type is an error naming the field.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

use crate::lang::{self, Lang};

pub mod binary;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    User(UserProfile),
    NewTweet(NewTweet),
    Engagement(Engagement),
    Social(Social),
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserProfile {
    pub user_id: u64,
    pub lang: Lang,
    pub known_for: u32,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewTweet {
    pub id: u64,
    pub author_id: u64,
    pub created_at: i64,
    pub lang: Lang,
    pub has_media: bool,
    pub reply_to: Option<u64>,
    pub text_len: u16,
    pub likes: u32,
    pub retweets: u32,
    pub replies: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngagementKind {
    Like,
    Retweet,
    Reply,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Engagement {
    pub kind: EngagementKind,
    pub user_id: u64,
    pub tweet_id: u64,
    pub timestamp: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocialKind {
    Follow,
    Unfollow,
    Block,
    Mute,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Social {
    pub kind: SocialKind,
    pub user_id: u64,
    pub target_id: u64,
    pub timestamp: i64,
}

impl Event {
    /// The event's type as the schema names it (`new_tweet`, `like`, `follow`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::User(_) => "user",
            Event::NewTweet(_) => "new_tweet",
            Event::Engagement(g) => match g.kind {
                EngagementKind::Like => "like",
                EngagementKind::Retweet => "retweet",
                EngagementKind::Reply => "reply",
            },
            Event::Social(s) => match s.kind {
                SocialKind::Follow => "follow",
                SocialKind::Unfollow => "unfollow",
                SocialKind::Block => "block",
                SocialKind::Mute => "mute",
            },
        }
    }

    /// Every value of [`Event::type_name`].
    pub const TYPE_NAMES: [&'static str; 9] = [
        "user",
        "new_tweet",
        "like",
        "retweet",
        "reply",
        "follow",
        "unfollow",
        "block",
        "mute",
    ];

    /// The event's time (ms since the epoch).
    pub fn time(&self) -> i64 {
        match self {
            Event::User(u) => u.created_at,
            Event::NewTweet(t) => t.created_at,
            Event::Engagement(e) => e.timestamp,
            Event::Social(s) => s.timestamp,
        }
    }
}

/// Why a line could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("line {line}: {msg}")]
    Malformed { line: u64, msg: String },
    #[error("line {line}: schema version {found} is not supported (this build reads version {SCHEMA_VERSION})")]
    Version { line: u64, found: u32 },
    /// A damaged or truncated binary events file ([`binary`]).
    #[error("byte {offset}: {msg}")]
    Binary { offset: u64, msg: String },
    #[error("reading events: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Schema,
    User,
    NewTweet,
    Like,
    Retweet,
    Reply,
    Follow,
    Unfollow,
    Block,
    Mute,
}

/// One line as it is on the wire: every field optional, checked when converted. A flat
/// struct (not a serde-tagged enum) so parsing needs no intermediate buffering.
#[derive(Deserialize, Serialize, Default)]
struct Line<'a> {
    #[serde(rename = "type")]
    kind: Option<Kind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tweet_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    lang: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    known_for: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    has_media: Option<bool>,
    /// Serialized for new tweets even when null, as the schema lists it.
    #[serde(skip_serializing_if = "skip_reply_to", default)]
    reply_to: Option<Option<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text_len: Option<u32>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    likes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retweets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replies: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    corpus: Option<std::borrow::Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

fn skip_reply_to(v: &Option<Option<u64>>) -> bool {
    v.is_none()
}

fn need<T>(v: Option<T>, field: &str, kind: Kind) -> Result<T, String> {
    v.ok_or_else(|| format!("{} event is missing required field `{field}`", kind.name()))
}

impl Kind {
    /// The `type` as written on the wire.
    fn name(self) -> &'static str {
        match self {
            Kind::Schema => "schema",
            Kind::User => "user",
            Kind::NewTweet => "new_tweet",
            Kind::Like => "like",
            Kind::Retweet => "retweet",
            Kind::Reply => "reply",
            Kind::Follow => "follow",
            Kind::Unfollow => "unfollow",
            Kind::Block => "block",
            Kind::Mute => "mute",
        }
    }
}

/// What one line holds.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    Header { version: u32 },
    Event(Event),
}

/// Parses one line (without its newline). `line_no` is 1-based, for the error.
pub fn parse_line(text: &str, line_no: u64) -> Result<Parsed, EventError> {
    let malformed = |msg: String| EventError::Malformed { line: line_no, msg };
    let l: Line =
        serde_json::from_str(text).map_err(|e| malformed(format!("invalid JSON event: {e}")))?;
    let kind = l
        .kind
        .ok_or_else(|| malformed("missing field `type`".into()))?;
    let lang_of = |l: &Line| -> Result<Lang, String> {
        lang::parse(l.lang.as_deref().unwrap_or("")).map_err(|e| format!("field `lang`: {e}"))
    };
    let ev = (|| -> Result<Parsed, String> {
        Ok(Parsed::Event(match kind {
            Kind::Schema => {
                return Ok(Parsed::Header {
                    version: need(l.version, "version", kind)?,
                })
            }
            Kind::User => Event::User(UserProfile {
                user_id: need(l.user_id, "user_id", kind)?,
                lang: lang_of(&l)?,
                known_for: l.known_for.unwrap_or(0),
                created_at: l.created_at.unwrap_or(0),
            }),
            Kind::NewTweet => {
                let text_len = match (l.text_len, &l.text) {
                    (Some(n), _) => n,
                    (None, Some(t)) => t.chars().count() as u32,
                    (None, None) => return Err("new_tweet event needs `text_len` or `text`".into()),
                };
                Event::NewTweet(NewTweet {
                    id: need(l.id, "id", kind)?,
                    author_id: need(l.author_id, "author_id", kind)?,
                    created_at: need(l.created_at, "created_at", kind)?,
                    lang: lang_of(&l)?,
                    has_media: l.has_media.unwrap_or(false),
                    reply_to: l.reply_to.flatten(),
                    text_len: text_len.min(u16::MAX as u32) as u16,
                    likes: l.likes.unwrap_or(0),
                    retweets: l.retweets.unwrap_or(0),
                    replies: l.replies.unwrap_or(0),
                })
            }
            Kind::Like | Kind::Retweet | Kind::Reply => Event::Engagement(Engagement {
                kind: match kind {
                    Kind::Like => EngagementKind::Like,
                    Kind::Retweet => EngagementKind::Retweet,
                    _ => EngagementKind::Reply,
                },
                user_id: need(l.user_id, "user_id", kind)?,
                tweet_id: need(l.tweet_id, "tweet_id", kind)?,
                timestamp: need(l.timestamp, "timestamp", kind)?,
            }),
            Kind::Follow | Kind::Unfollow | Kind::Block | Kind::Mute => Event::Social(Social {
                kind: match kind {
                    Kind::Follow => SocialKind::Follow,
                    Kind::Unfollow => SocialKind::Unfollow,
                    Kind::Block => SocialKind::Block,
                    _ => SocialKind::Mute,
                },
                user_id: need(l.user_id, "user_id", kind)?,
                target_id: need(l.target_id, "target_id", kind)?,
                timestamp: need(l.timestamp, "timestamp", kind)?,
            }),
        }))
    })()
    .map_err(malformed)?;
    if let Parsed::Header { version } = ev {
        if version != SCHEMA_VERSION {
            return Err(EventError::Version {
                line: line_no,
                found: version,
            });
        }
    }
    Ok(ev)
}

/// Parses one event given alone (a Kafka message's value): the error says what is wrong,
/// without a line number (the caller names the message's offset).
pub fn parse_event(bytes: &[u8]) -> Result<Event, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e})"))?;
    match parse_line(text.trim(), 0) {
        Ok(Parsed::Event(e)) => Ok(e),
        Ok(Parsed::Header { .. }) => Err("a schema header, not an event".into()),
        Err(EventError::Malformed { msg, .. }) => Err(msg),
        Err(e) => Err(e.to_string()),
    }
}

/// What a reader does with a malformed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnMalformed {
    /// Stop at the first one, naming its line (`--strict`).
    Stop,
    /// Skip it and count it; every other line is still applied.
    Skip,
}

/// What a read of a stream found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    /// Events applied.
    pub events: u64,
    /// Malformed lines skipped.
    pub malformed: u64,
    /// The first [`ReadReport::KEPT`] skipped lines' errors (each names its line).
    pub skipped: Vec<String>,
}

impl ReadReport {
    pub const KEPT: usize = 100;

    /// Prints the skipped lines (the kept ones, each with its number) to stderr, for a
    /// command-line tool.
    pub fn log_skipped_to_stderr(&self) {
        for line in &self.skipped {
            eprintln!("skipped a malformed events line: {line}");
        }
        if self.malformed as usize > self.skipped.len() {
            eprintln!(
                "... and {} more malformed lines",
                self.malformed as usize - self.skipped.len()
            );
        }
    }

    /// Logs the skipped lines (the kept ones, each with its number), then the total.
    pub fn log_skipped(&self) {
        for line in &self.skipped {
            tracing::warn!("skipped a malformed events line: {line}");
        }
        if self.malformed > 0 {
            tracing::warn!(
                malformed = self.malformed,
                applied = self.events,
                "events read with malformed lines skipped (--strict stops at the first instead)"
            );
        }
    }
}

/// Reads every event of a JSON-lines stream, in order, calling `apply` for each.
/// Blank lines are ignored. A malformed line (bad JSON, a missing or wrong field, not
/// UTF-8) stops the read with its number, or with [`OnMalformed::Skip`] is counted and
/// skipped. An unsupported schema version always stops it: the whole stream is of a
/// format this build does not read.
pub fn read_events<R: BufRead>(
    reader: R,
    on_malformed: OnMalformed,
    apply: impl FnMut(Event),
) -> Result<ReadReport, EventError> {
    read_events_with(reader, on_malformed, apply, |_, _, _| {})
}

/// [`read_events`], handing each skipped line to `reject` as (line number, the line's
/// bytes, what was wrong): the dead-letter file's writer.
pub fn read_events_with<R: BufRead>(
    mut reader: R,
    on_malformed: OnMalformed,
    mut apply: impl FnMut(Event),
    mut reject: impl FnMut(u64, &[u8], &str),
) -> Result<ReadReport, EventError> {
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut report = ReadReport::default();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(report);
        }
        line_no += 1;
        let parsed = match std::str::from_utf8(&buf) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => parse_line(text.trim(), line_no),
            Err(e) => Err(EventError::Malformed {
                line: line_no,
                msg: format!("not UTF-8 text ({e})"),
            }),
        };
        match parsed {
            Ok(Parsed::Event(e)) => {
                apply(e);
                report.events += 1;
            }
            Ok(_) => {}
            Err(e @ EventError::Malformed { .. }) if on_malformed == OnMalformed::Skip => {
                report.malformed += 1;
                if let EventError::Malformed { msg, .. } = &e {
                    let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
                    reject(line_no, raw, msg);
                }
                if report.skipped.len() < ReadReport::KEPT {
                    report.skipped.push(e.to_string());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Writes one event as a JSON object (one line of the format, without its newline).
pub fn write_event<W: Write>(out: W, e: &Event) -> std::io::Result<()> {
    let lang_text;
    let line = match e {
        Event::User(u) => {
            lang_text = lang::format(u.lang);
            Line {
                kind: Some(Kind::User),
                user_id: Some(u.user_id),
                lang: Some(lang_text.as_str().into()),
                known_for: Some(u.known_for),
                created_at: Some(u.created_at),
                ..Default::default()
            }
        }
        Event::NewTweet(t) => {
            lang_text = lang::format(t.lang);
            Line {
                kind: Some(Kind::NewTweet),
                id: Some(t.id),
                author_id: Some(t.author_id),
                created_at: Some(t.created_at),
                lang: Some(lang_text.as_str().into()),
                has_media: Some(t.has_media),
                reply_to: Some(t.reply_to),
                text_len: Some(t.text_len as u32),
                likes: Some(t.likes),
                retweets: Some(t.retweets),
                replies: Some(t.replies),
                ..Default::default()
            }
        }
        Event::Engagement(g) => Line {
            kind: Some(match g.kind {
                EngagementKind::Like => Kind::Like,
                EngagementKind::Retweet => Kind::Retweet,
                EngagementKind::Reply => Kind::Reply,
            }),
            user_id: Some(g.user_id),
            tweet_id: Some(g.tweet_id),
            timestamp: Some(g.timestamp),
            ..Default::default()
        },
        Event::Social(s) => Line {
            kind: Some(match s.kind {
                SocialKind::Follow => Kind::Follow,
                SocialKind::Unfollow => Kind::Unfollow,
                SocialKind::Block => Kind::Block,
                SocialKind::Mute => Kind::Mute,
            }),
            user_id: Some(s.user_id),
            target_id: Some(s.target_id),
            timestamp: Some(s.timestamp),
            ..Default::default()
        },
    };
    serde_json::to_writer(out, &line).map_err(std::io::Error::from)
}

/// One event as the bytes of its line (a Kafka message's value).
pub fn encode(e: &Event) -> Vec<u8> {
    let mut v = Vec::with_capacity(160);
    write_event(&mut v, e).expect("writing to a Vec cannot fail");
    v
}

/// Writes events as JSON lines, with a header line first.
pub struct EventWriter<W: Write> {
    out: W,
}

impl<W: Write> EventWriter<W> {
    pub fn new(mut out: W, corpus: &str, seed: u64) -> std::io::Result<Self> {
        let header = Line {
            kind: Some(Kind::Schema),
            version: Some(SCHEMA_VERSION),
            corpus: Some(corpus.into()),
            seed: Some(seed),
            ..Default::default()
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        Ok(EventWriter { out })
    }

    pub fn write(&mut self, e: &Event) -> std::io::Result<()> {
        write_event(&mut self.out, e)?;
        self.out.write_all(b"\n")
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        vec![
            Event::User(UserProfile {
                user_id: 5,
                lang: lang::parse("ja").unwrap(),
                known_for: 3,
                created_at: 10,
            }),
            Event::NewTweet(NewTweet {
                id: 1 << 40,
                author_id: 5,
                created_at: 1_700_000_000_000,
                lang: lang::parse("en").unwrap(),
                has_media: true,
                reply_to: Some(77),
                text_len: 140,
                likes: 3,
                retweets: 2,
                replies: 1,
            }),
            Event::Engagement(Engagement {
                kind: EngagementKind::Retweet,
                user_id: 9,
                tweet_id: 1 << 40,
                timestamp: 20,
            }),
            Event::Social(Social {
                kind: SocialKind::Mute,
                user_id: 9,
                target_id: 5,
                timestamp: 30,
            }),
        ]
    }

    #[test]
    fn write_then_read_gives_the_same_events() {
        let mut w = EventWriter::new(Vec::new(), "test", 1).unwrap();
        for e in sample() {
            w.write(&e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let mut back = Vec::new();
        let n = read_events(&bytes[..], OnMalformed::Stop, |e| back.push(e)).unwrap();
        assert_eq!(n.events, 4);
        assert_eq!(n.malformed, 0);
        assert_eq!(back, sample());
    }

    #[test]
    fn malformed_lines_are_skipped_and_counted_and_nothing_else_is_lost() {
        let mut w = EventWriter::new(Vec::new(), "test", 1).unwrap();
        for e in sample() {
            w.write(&e).unwrap();
        }
        let good = String::from_utf8(w.finish().unwrap()).unwrap();
        let mut lines: Vec<&str> = good.lines().collect();
        lines.insert(2, "{\"type\":\"like\",\"user_id\":1}");
        lines.insert(4, "garbage");
        let mut text = lines.join("\n").into_bytes();
        text.extend_from_slice(b"\n\xff\xfe not utf-8\n");
        let mut back = Vec::new();
        let r = read_events(&text[..], OnMalformed::Skip, |e| back.push(e)).unwrap();
        assert_eq!(back, sample(), "every good event, in order");
        assert_eq!(r.events, 4);
        assert_eq!(r.malformed, 3);
        assert!(r.skipped[0].starts_with("line 3:"), "{:?}", r.skipped);
        assert!(r.skipped[1].starts_with("line 5:"), "{:?}", r.skipped);
        assert!(r.skipped[2].contains("UTF-8"), "{:?}", r.skipped);
        // Strict: the first bad line stops the read, named.
        let err = read_events(&text[..], OnMalformed::Stop, |_| {}).unwrap_err();
        assert!(err.to_string().starts_with("line 3:"), "{err}");
        // A schema this build does not read stops even a lenient read.
        let v9 = "{\"type\":\"schema\",\"version\":9}\n";
        assert!(matches!(
            read_events(v9.as_bytes(), OnMalformed::Skip, |_| {}),
            Err(EventError::Version { .. })
        ));
    }

    #[test]
    fn errors_name_the_line_and_field() {
        let text = "{\"type\":\"like\",\"user_id\":1,\"tweet_id\":2,\"timestamp\":3}\n\n{\"type\":\"like\",\"user_id\":1,\"timestamp\":3}\n";
        let err = read_events(text.as_bytes(), OnMalformed::Stop, |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3") && err.contains("tweet_id"), "{err}");

        let err = parse_line("{\"type\":\"nope\"}", 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        let err = parse_line("not json", 2).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("invalid JSON"),
            "{err}"
        );
        let err = parse_line("{\"type\":\"schema\",\"version\":9}", 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 9"), "{err}");
        let err = parse_line(
            "{\"type\":\"new_tweet\",\"id\":1,\"author_id\":2,\"created_at\":3,\"lang\":\"English\",\"text_len\":4}",
            8,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 8") && err.contains("lang"), "{err}");
    }

    #[test]
    fn one_event_encodes_and_parses_alone() {
        for e in sample() {
            assert_eq!(parse_event(&encode(&e)).unwrap(), e);
        }
        assert!(parse_event(b"{\"type\":\"like\"}")
            .unwrap_err()
            .contains("user_id"));
        assert!(parse_event(b"\xff").unwrap_err().contains("UTF-8"));
        assert!(parse_event(b"{\"type\":\"schema\",\"version\":1}")
            .unwrap_err()
            .contains("header"));
    }

    #[test]
    fn text_gives_the_length() {
        let p = parse_line(
            "{\"type\":\"new_tweet\",\"id\":1,\"author_id\":2,\"created_at\":3,\"text\":\"héllo\"}",
            1,
        )
        .unwrap();
        match p {
            Parsed::Event(Event::NewTweet(t)) => assert_eq!(t.text_len, 5),
            other => panic!("{other:?}"),
        }
    }
}
