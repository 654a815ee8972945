//! The event stream in a compact binary form, for bulk loads.
//!
//! Generating the standard corpus costs each process about as much as loading it; a
//! local cluster of five processes generated it five times. `shardrank up` now
//! generates it once into this form and every process reads it (`--events FILE`
//! accepts either form): reading a record is a few bytes copied, not a JSON parse.
//!
//! Layout, little-endian:
//! - header: the magic `SREVBIN1`, the corpus name (a length byte, then UTF-8) and the
//!   seed (u64) it was generated from;
//! - records: a type byte, then the event's fields at fixed widths (a new post's
//!   `reply_to` only when its flag says so);
//! - end: the type byte 0xFF, then the counts of events and of new posts (u64 each).
//!
//! There is no resynchronising after a bad byte, so a damaged file is refused whole,
//! naming the byte offset, and a file cut short (no end record, or counts that
//! disagree) is refused as truncated: nothing is silently dropped.

use super::*;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"SREVBIN1";

const USER: u8 = 1;
const NEW_TWEET: u8 = 2;
const LIKE: u8 = 3;
const RETWEET: u8 = 4;
const REPLY: u8 = 5;
const FOLLOW: u8 = 6;
const UNFOLLOW: u8 = 7;
const BLOCK: u8 = 8;
const MUTE: u8 = 9;
const END: u8 = 0xFF;

const FLAG_MEDIA: u8 = 1;
const FLAG_REPLY_TO: u8 = 2;

/// Fixed bytes after the type byte (a new post's `reply_to` comes on top).
fn body_len(tag: u8) -> Option<usize> {
    Some(match tag {
        USER => 8 + 2 + 4 + 8,
        NEW_TWEET => 8 + 8 + 8 + 2 + 1 + 2 + 4 + 4 + 4,
        LIKE..=MUTE => 8 + 8 + 8,
        END => 8 + 8,
        _ => return None,
    })
}

/// What a binary file's header and end record say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub corpus: String,
    pub seed: u64,
}

/// Writes events in the binary form.
pub struct BinaryWriter<W: Write> {
    out: W,
    events: u64,
    tweets: u64,
    buf: Vec<u8>,
}

impl<W: Write> BinaryWriter<W> {
    pub fn new(mut out: W, corpus: &str, seed: u64) -> std::io::Result<Self> {
        let name = corpus.as_bytes();
        let len = u8::try_from(name.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "corpus name too long")
        })?;
        out.write_all(MAGIC)?;
        out.write_all(&[len])?;
        out.write_all(name)?;
        out.write_all(&seed.to_le_bytes())?;
        Ok(BinaryWriter {
            out,
            events: 0,
            tweets: 0,
            buf: Vec::with_capacity(64),
        })
    }

    pub fn write(&mut self, e: &Event) -> std::io::Result<()> {
        self.buf.clear();
        self.tweets += encode_into(&mut self.buf, e) as u64;
        self.events += 1;
        self.out.write_all(&self.buf)
    }

    /// Writes records encoded elsewhere (another thread's part of the stream).
    pub fn write_records(&mut self, r: &Records) -> std::io::Result<()> {
        self.events += r.events;
        self.tweets += r.tweets;
        self.out.write_all(&r.bytes)
    }

    /// Writes the end record and flushes.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[END])?;
        self.out.write_all(&self.events.to_le_bytes())?;
        self.out.write_all(&self.tweets.to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A record's bytes, built in a fixed array and appended at once (field by field, the
/// appends' capacity checks cost as much as generating the event).
struct Rec<const N: usize> {
    b: [u8; N],
    at: usize,
}

impl<const N: usize> Rec<N> {
    #[inline(always)]
    fn new(tag: u8) -> Self {
        let mut b = [0u8; N];
        b[0] = tag;
        Rec { b, at: 1 }
    }
    #[inline(always)]
    fn put<const K: usize>(mut self, bytes: [u8; K]) -> Self {
        self.b[self.at..self.at + K].copy_from_slice(&bytes);
        self.at += K;
        self
    }
    #[inline(always)]
    fn append_to(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.b[..self.at]);
    }
}

/// Appends `e`'s record to `b`; whether it is a new post.
#[inline]
fn encode_into(b: &mut Vec<u8>, e: &Event) -> bool {
    match e {
        Event::User(u) => Rec::<23>::new(USER)
            .put(u.user_id.to_le_bytes())
            .put(u.lang.to_le_bytes())
            .put(u.known_for.to_le_bytes())
            .put(u.created_at.to_le_bytes())
            .append_to(b),
        Event::NewTweet(t) => {
            let flags = if t.has_media { FLAG_MEDIA } else { 0 }
                | if t.reply_to.is_some() {
                    FLAG_REPLY_TO
                } else {
                    0
                };
            let r = Rec::<MAX_RECORD>::new(NEW_TWEET)
                .put(t.id.to_le_bytes())
                .put(t.author_id.to_le_bytes())
                .put(t.created_at.to_le_bytes())
                .put(t.lang.to_le_bytes())
                .put([flags])
                .put(t.text_len.to_le_bytes())
                .put(t.likes.to_le_bytes())
                .put(t.retweets.to_le_bytes())
                .put(t.replies.to_le_bytes());
            match t.reply_to {
                Some(to) => r.put(to.to_le_bytes()).append_to(b),
                None => r.append_to(b),
            }
            return true;
        }
        Event::Engagement(g) => {
            let tag = match g.kind {
                EngagementKind::Like => LIKE,
                EngagementKind::Retweet => RETWEET,
                EngagementKind::Reply => REPLY,
            };
            Rec::<25>::new(tag)
                .put(g.user_id.to_le_bytes())
                .put(g.tweet_id.to_le_bytes())
                .put(g.timestamp.to_le_bytes())
                .append_to(b)
        }
        Event::Social(s) => {
            let tag = match s.kind {
                SocialKind::Follow => FOLLOW,
                SocialKind::Unfollow => UNFOLLOW,
                SocialKind::Block => BLOCK,
                SocialKind::Mute => MUTE,
            };
            Rec::<25>::new(tag)
                .put(s.user_id.to_le_bytes())
                .put(s.target_id.to_le_bytes())
                .put(s.timestamp.to_le_bytes())
                .append_to(b)
        }
    }
    false
}

/// Records encoded in memory, to be written after others ([`BinaryWriter::write_records`]).
#[derive(Default)]
pub struct Records {
    bytes: Vec<u8>,
    events: u64,
    tweets: u64,
}

impl Records {
    pub fn push(&mut self, e: &Event) {
        self.tweets += encode_into(&mut self.bytes, e) as u64;
        self.events += 1;
    }
}

/// Writes built-in corpus `spec` in the binary form, its two parts (the social graph,
/// the posts) generated at once on two threads; the events written. The bytes are those
/// of writing [`crate::corpus::generate`]'s stream in order.
pub fn write_corpus<W: Write>(spec: &crate::corpus::CorpusSpec, out: W) -> std::io::Result<u64> {
    let mut w = BinaryWriter::new(out, spec.name, spec.seed)?;
    let mut posts = Records::default();
    let mut res = Ok(());
    std::thread::scope(|s| {
        s.spawn(|| crate::corpus::generate_posts(spec, |e| posts.push(&e)));
        crate::corpus::generate_social(spec, |e| {
            if res.is_ok() {
                res = w.write(&e);
            }
        });
    });
    res?;
    w.write_records(&posts)?;
    let n = w.events;
    w.finish()?;
    Ok(n)
}

/// Whether `path` starts with the binary form's magic.
pub fn is_binary(f: &mut std::fs::File) -> std::io::Result<bool> {
    f.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..])? {
            0 => return Ok(false),
            n => got += n,
        }
    }
    Ok(&magic == MAGIC)
}

fn corrupt(offset: u64, msg: impl Into<String>) -> EventError {
    EventError::Binary {
        offset,
        msg: msg.into(),
    }
}

/// Reads exactly `buf.len()` bytes at `*offset`, or says what was being read.
fn take<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: &mut u64,
    what: &str,
) -> Result<(), EventError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            corrupt(*offset, format!("the file ends inside {what} (truncated?)"))
        }
        _ => EventError::Io(e),
    })?;
    *offset += buf.len() as u64;
    Ok(())
}

/// Reads the header; the reader is left at the first record.
pub fn read_header<R: Read>(r: &mut R) -> Result<(Header, u64), EventError> {
    let mut offset = 0;
    let mut magic = [0u8; 8];
    take(r, &mut magic, &mut offset, "the header")?;
    if &magic != MAGIC {
        return Err(corrupt(0, "not a binary events file (no SREVBIN1 magic)"));
    }
    let mut len = [0u8; 1];
    take(r, &mut len, &mut offset, "the header")?;
    let mut name = vec![0u8; len[0] as usize];
    take(r, &mut name, &mut offset, "the header")?;
    let corpus = String::from_utf8(name).map_err(|_| corrupt(9, "the corpus name is not UTF-8"))?;
    let mut seed = [0u8; 8];
    take(r, &mut seed, &mut offset, "the header")?;
    Ok((
        Header {
            corpus,
            seed: u64::from_le_bytes(seed),
        },
        offset,
    ))
}

/// The counts in a file's end record (events, new posts), read from its last bytes:
/// sizing the store before the load. None if the file does not end with one.
pub fn end_counts(f: &mut std::fs::File) -> std::io::Result<Option<(u64, u64)>> {
    let len = f.metadata()?.len();
    if len < 17 + MAGIC.len() as u64 {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(len - 17))?;
    let mut end = [0u8; 17];
    f.read_exact(&mut end)?;
    if end[0] != END {
        return Ok(None);
    }
    let n = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    Ok(Some((n(&end[1..9]), n(&end[9..17]))))
}

/// What a start-up source needs of an events file, from one open: None for a file that
/// is not in the binary form, else its header and the new posts its end record counts
/// (None without one: reading it will say it is truncated).
pub fn probe(path: &Path) -> Result<Option<(Header, Option<u64>)>, EventError> {
    let mut f = std::fs::File::open(path)?;
    if !is_binary(&mut f)? {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(0))?;
    let (header, _) = read_header(&mut f)?;
    let tweets = end_counts(&mut f)?.map(|(_, t)| t);
    Ok(Some((header, tweets)))
}

/// Bytes read ahead from a stream, decoded where they lie (a record is not copied out
/// of the buffer first).
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    /// Stream offset of `buf[0]`.
    base: u64,
}

impl<R: Read> Input<R> {
    /// The bytes ready at the current position: at least `n` unless the stream ends
    /// first.
    fn ready(&mut self, n: usize) -> std::io::Result<&[u8]> {
        if self.end - self.pos < n && !self.eof {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
            while self.end < n && !self.eof {
                match self.r.read(&mut self.buf[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(k) => self.end += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }
}

/// The longest record: type, a new post's fixed fields, its reply_to.
const MAX_RECORD: usize = 1 + 41 + 8;

/// Reads every event of a binary stream, in order, calling `apply` for each. Any damage
/// stops the read with its byte offset: the form has no way to skip a bad record.
pub fn read_binary<R: Read>(
    mut r: R,
    mut apply: impl FnMut(Event),
) -> Result<(Header, ReadReport), EventError> {
    let (header, offset) = read_header(&mut r)?;
    let mut input = Input {
        r,
        buf: vec![0; 1 << 20],
        pos: 0,
        end: 0,
        eof: false,
        base: offset,
    };
    let mut report = ReadReport::default();
    let mut tweets = 0u64;
    loop {
        let at = input.offset();
        let b = input.ready(MAX_RECORD)?;
        let Some(&tag) = b.first() else {
            return Err(corrupt(
                at,
                "the file ends without its end record (truncated?)",
            ));
        };
        let len =
            body_len(tag).ok_or_else(|| corrupt(at, format!("unknown record type {tag:#04x}")))?;
        let reply_to = tag == NEW_TWEET && b.len() > 27 && b[27] & FLAG_REPLY_TO != 0;
        let whole = 1 + len + if reply_to { 8 } else { 0 };
        if b.len() < whole {
            return Err(corrupt(at, "the file ends inside a record (truncated?)"));
        }
        let b = &b[1..whole];
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let i64_at = |i: usize| u64_at(i) as i64;
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().expect("2 bytes"));
        let event = match tag {
            USER => Event::User(UserProfile {
                user_id: u64_at(0),
                lang: u16_at(8),
                known_for: u32_at(10),
                created_at: i64_at(14),
            }),
            NEW_TWEET => {
                let flags = b[26];
                if flags & !(FLAG_MEDIA | FLAG_REPLY_TO) != 0 {
                    return Err(corrupt(
                        at,
                        format!("new post with unknown flags {flags:#04x}"),
                    ));
                }
                tweets += 1;
                Event::NewTweet(NewTweet {
                    id: u64_at(0),
                    author_id: u64_at(8),
                    created_at: i64_at(16),
                    lang: u16_at(24),
                    has_media: flags & FLAG_MEDIA != 0,
                    reply_to: reply_to.then(|| u64_at(41)),
                    text_len: u16_at(27),
                    likes: u32_at(29),
                    retweets: u32_at(33),
                    replies: u32_at(37),
                })
            }
            LIKE | RETWEET | REPLY => Event::Engagement(Engagement {
                kind: match tag {
                    LIKE => EngagementKind::Like,
                    RETWEET => EngagementKind::Retweet,
                    _ => EngagementKind::Reply,
                },
                user_id: u64_at(0),
                tweet_id: u64_at(8),
                timestamp: i64_at(16),
            }),
            FOLLOW..=MUTE => Event::Social(Social {
                kind: match tag {
                    FOLLOW => SocialKind::Follow,
                    UNFOLLOW => SocialKind::Unfollow,
                    BLOCK => SocialKind::Block,
                    _ => SocialKind::Mute,
                },
                user_id: u64_at(0),
                target_id: u64_at(8),
                timestamp: i64_at(16),
            }),
            _ => {
                // END: the counts must be those read, and nothing may follow.
                let (events, posts) = (u64_at(0), u64_at(8));
                if (events, posts) != (report.events, tweets) {
                    return Err(corrupt(
                        at,
                        format!(
                            "the end record counts {events} events ({posts} new posts), the file has {} ({tweets})",
                            report.events
                        ),
                    ));
                }
                input.pos += whole;
                if !input.ready(1)?.is_empty() {
                    return Err(corrupt(input.offset(), "bytes after the end record"));
                }
                return Ok((header, report));
            }
        };
        input.pos += whole;
        apply(event);
        report.events += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{generate, CorpusSpec};

    fn tiny_events() -> Vec<Event> {
        let mut v = Vec::new();
        generate(&CorpusSpec::named("tiny", 42).unwrap(), |e| v.push(e));
        v
    }

    fn write(events: &[Event]) -> Vec<u8> {
        let mut w = BinaryWriter::new(Vec::new(), "tiny", 42).unwrap();
        for e in events {
            w.write(e).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_every_kind_of_event() {
        let mut events = tiny_events();
        // Kinds the corpus lacks: unfollows, u64 extremes, negative times.
        events.push(Event::Social(Social {
            kind: SocialKind::Unfollow,
            user_id: u64::MAX,
            target_id: 0,
            timestamp: -5,
        }));
        for kind in [SocialKind::Follow, SocialKind::Block, SocialKind::Mute] {
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::Social(s) if s.kind == kind)));
        }
        for kind in [
            EngagementKind::Like,
            EngagementKind::Retweet,
            EngagementKind::Reply,
        ] {
            assert!(events
                .iter()
                .any(|e| matches!(e, Event::Engagement(g) if g.kind == kind)));
        }
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::NewTweet(t) if t.reply_to.is_some() && t.has_media)));
        let bytes = write(&events);
        let mut back = Vec::new();
        let (header, report) = read_binary(&bytes[..], |e| back.push(e)).unwrap();
        assert_eq!(
            header,
            Header {
                corpus: "tiny".into(),
                seed: 42
            }
        );
        assert_eq!(report.events, events.len() as u64);
        assert_eq!(back, events);
    }

    #[test]
    fn the_two_threaded_corpus_writer_writes_the_stream_in_order() {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut two = Vec::new();
        let n = write_corpus(&spec, &mut two).unwrap();
        let one = write(&tiny_events());
        assert_eq!(n, tiny_events().len() as u64);
        assert!(two == one, "{} vs {} bytes", two.len(), one.len());
    }

    #[test]
    fn damage_is_refused_with_its_offset() {
        let events = tiny_events();
        let bytes = write(&events[..2000]);
        let err = |b: &[u8]| read_binary(b, |_| {}).unwrap_err().to_string();
        // Cut anywhere: truncated, never a shorter stream read as whole.
        for cut in [0, 5, 30, bytes.len() / 2, bytes.len() - 17, bytes.len() - 1] {
            let e = err(&bytes[..cut]);
            assert!(
                e.contains("truncated") || e.contains("ends inside"),
                "cut at {cut}: {e}"
            );
        }
        // A bad type byte, at the first record after the header (8 + 1 + 4 + 8).
        let mut bad = bytes.clone();
        bad[21] = 0x42;
        assert_eq!(err(&bad), "byte 21: unknown record type 0x42");
        // Counts that disagree, and trailing bytes.
        let mut short = write(&events[..10]);
        let n = short.len();
        short[n - 16] = 9;
        assert!(
            err(&short).contains("the end record counts 9 events"),
            "{}",
            err(&short)
        );
        let mut long = write(&events[..10]);
        long.push(0);
        assert!(err(&long).contains("after the end record"));
        assert!(err(b"{\"type\":\"user\"}\n").contains("not a binary events file"));
    }

    #[test]
    fn random_damage_never_panics_and_a_bad_type_is_always_caught() {
        let bytes = write(&tiny_events()[..300]);
        let mut r = crate::rng::Rng::new(3);
        let mut refused = 0;
        for _ in 0..3000 {
            let mut b = bytes.clone();
            for _ in 0..1 + r.below(4) {
                let i = r.below(b.len() as u64) as usize;
                b[i] = r.next_u64() as u8;
            }
            let cut = b.len() - r.below(3) as usize * r.below(40) as usize;
            match read_binary(&b[..cut], |_| {}) {
                Ok((_, report)) => assert_eq!(report.events, 300),
                Err(EventError::Binary { offset, .. }) => {
                    assert!(offset <= cut as u64);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 1000, "{refused}");
    }

    #[test]
    fn end_counts_and_magic_are_read_from_the_file() {
        let events = tiny_events();
        let dir = std::env::temp_dir().join(format!("srbin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (bin, json) = (dir.join("a.bin"), dir.join("a.jsonl"));
        std::fs::write(&bin, write(&events)).unwrap();
        std::fs::write(&json, b"{\"type\":\"schema\",\"version\":1}\n").unwrap();
        let tweets = events
            .iter()
            .filter(|e| matches!(e, Event::NewTweet(_)))
            .count() as u64;
        assert_eq!(
            end_counts(&mut std::fs::File::open(&bin).unwrap()).unwrap(),
            Some((events.len() as u64, tweets))
        );
        let open = |p: &Path| std::fs::File::open(p).unwrap();
        assert_eq!(end_counts(&mut open(&json)).unwrap(), None);
        assert!(is_binary(&mut open(&bin)).unwrap());
        assert!(!is_binary(&mut open(&json)).unwrap());
        assert_eq!(
            probe(&bin).unwrap(),
            Some((
                Header {
                    corpus: "tiny".into(),
                    seed: 42
                },
                Some(tweets)
            ))
        );
        assert_eq!(probe(&json).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
