//! Partition snapshots: the store's state written to one file, so that a restarted shard
//! loads it in milliseconds instead of replaying the whole stream, and resumes the live
//! stream where the snapshot left it.
//!
//! Format (little-endian): magic and version, the layout (shard index, count), the
//! source it was built from, the live-stream position, the Kafka positions (topic,
//! partition, next offset) it reflects, the watermark and ingest counts,
//! then the post columns and the author columns, and an FNV-1a checksum of everything
//! before it. Derived state (the id indexes, the light parts, which depend on the light
//! model of the process that loads it) is rebuilt on load. Written to a temporary file and
//! renamed, so a crash mid-write leaves the previous snapshot.

use super::{Author, Authors, Counts, Hot, IngestStats, PostStore};
use shardrank_core::model::LightModel;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"SRSNAP04";

/// What a snapshot is of, besides the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The start-up source the store was built from (`Source::describe`).
    pub source: String,
    /// Live-stream events applied after it.
    pub live_position: u64,
    /// Kafka partitions it reflects: (topic, partition, next offset to read).
    pub kafka: Vec<(String, i32, i64)>,
}

/// The snapshot file of partition `index` of `num_shards` in `dir`.
pub fn path(dir: &Path, index: u32, num_shards: u32) -> PathBuf {
    dir.join(format!("shard-{index}-of-{num_shards}.snap"))
}

struct Hashing<W> {
    inner: W,
    hash: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash = (self.hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.feed(bytes);
        self.inner.write_all(bytes)
    }
}

impl<R: Read> Hashing<R> {
    fn take<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.inner.read_exact(&mut b)?;
        self.feed(&b);
        Ok(b)
    }
}

macro_rules! put_col {
    ($w:expr, $col:expr) => {
        for x in $col {
            $w.put(&x.to_le_bytes())?;
        }
    };
}

macro_rules! take_col {
    ($r:expr, $t:ty, $n:expr) => {{
        let mut v: Vec<$t> = Vec::with_capacity($n);
        for _ in 0..$n {
            v.push(<$t>::from_le_bytes($r.take()?));
        }
        v
    }};
}

/// Reads one column of the file into field `$field` of every row of `$rows`.
macro_rules! take_field {
    ($r:expr, $rows:expr, $field:ident, $t:ty) => {
        for row in $rows.iter_mut() {
            row.$field = <$t>::from_le_bytes($r.take()?);
        }
    };
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl PostStore {
    /// Writes the store to `file` (atomically: a temporary file renamed).
    pub fn write_snapshot(&self, file: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
        // Per process: replicas of one shard may share a directory.
        let tmp = file.with_extension(format!("snap.tmp.{}", std::process::id()));
        {
            let mut w = Hashing::new(BufWriter::with_capacity(
                1 << 20,
                std::fs::File::create(&tmp)?,
            ));
            w.put(MAGIC)?;
            w.put(&self.shard_index.to_le_bytes())?;
            w.put(&self.num_shards.to_le_bytes())?;
            w.put(&(meta.source.len() as u64).to_le_bytes())?;
            w.put(meta.source.as_bytes())?;
            w.put(&meta.live_position.to_le_bytes())?;
            w.put(&(meta.kafka.len() as u32).to_le_bytes())?;
            for (topic, partition, next) in &meta.kafka {
                w.put(&(topic.len() as u16).to_le_bytes())?;
                w.put(topic.as_bytes())?;
                w.put(&partition.to_le_bytes())?;
                w.put(&next.to_le_bytes())?;
            }
            w.put(&self.watermark_ms.to_le_bytes())?;
            let s = &self.stats;
            for x in [
                s.events,
                s.posts_added,
                s.duplicate_posts,
                s.engagements_applied,
                s.orphan_engagements,
                s.late_engagements,
                s.misrouted,
            ] {
                w.put(&x.to_le_bytes())?;
            }
            w.put(&(self.len() as u64).to_le_bytes())?;
            put_col!(w, self.ids());
            put_col!(w, self.hot.iter().map(|h| h.created_at));
            put_col!(w, self.hot.iter().map(|h| h.author));
            put_col!(w, self.hot.iter().map(|h| h.lang));
            put_col!(w, self.hot.iter().map(|h| h.flags));
            put_col!(w, self.counts.iter().map(|c| c.text_len));
            put_col!(w, self.counts.iter().map(|c| c.likes));
            put_col!(w, self.counts.iter().map(|c| c.retweets));
            put_col!(w, self.counts.iter().map(|c| c.replies));
            put_col!(w, self.windows.iter().map(|x| x.newest));
            for x in &self.windows {
                put_col!(w, x.counts);
            }
            let a = &self.authors;
            w.put(&(a.len() as u64).to_le_bytes())?;
            put_col!(w, &a.ids);
            put_col!(w, a.rows.iter().map(|x| x.followers));
            put_col!(w, a.rows.iter().map(|x| x.posts));
            put_col!(w, a.rows.iter().map(|x| x.cluster));
            put_col!(w, &a.lang);
            let sum = w.hash;
            w.inner.write_all(&sum.to_le_bytes())?;
            w.inner.flush()?;
            w.inner.get_ref().sync_all()?;
        }
        std::fs::rename(&tmp, file)
    }

    /// Loads a snapshot written for partition `index` of `num_shards` from `source`;
    /// an error says why it cannot be used (then the caller rebuilds from the source).
    pub fn read_snapshot(
        file: &Path,
        index: u32,
        num_shards: u32,
        source: &str,
        light: LightModel,
    ) -> std::io::Result<(PostStore, SnapshotMeta)> {
        let mut r = Hashing::new(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(file)?,
        ));
        if &r.take::<8>()? != MAGIC {
            return Err(bad("not a shardrank snapshot (or another version)"));
        }
        let (i, n) = (u32::from_le_bytes(r.take()?), u32::from_le_bytes(r.take()?));
        if (i, n) != (index, num_shards) {
            return Err(bad(format!(
                "snapshot of shard {i} of {n}, this is shard {index} of {num_shards}"
            )));
        }
        let len = u64::from_le_bytes(r.take()?) as usize;
        if len > 1 << 16 {
            return Err(bad("source name too long"));
        }
        let mut name = vec![0u8; len];
        r.inner.read_exact(&mut name)?;
        r.feed(&name);
        let snap_source = String::from_utf8(name).map_err(|_| bad("source name not UTF-8"))?;
        if snap_source != source {
            return Err(bad(format!(
                "snapshot of {snap_source:?}, this shard loads {source:?}"
            )));
        }
        let live_position = u64::from_le_bytes(r.take()?);
        let parts = u32::from_le_bytes(r.take()?);
        if parts > 1 << 16 {
            return Err(bad("too many Kafka positions"));
        }
        let mut kafka = Vec::with_capacity(parts as usize);
        for _ in 0..parts {
            let len = u16::from_le_bytes(r.take()?) as usize;
            let mut topic = vec![0u8; len];
            r.inner.read_exact(&mut topic)?;
            r.feed(&topic);
            let topic = String::from_utf8(topic).map_err(|_| bad("topic name not UTF-8"))?;
            kafka.push((
                topic,
                i32::from_le_bytes(r.take()?),
                i64::from_le_bytes(r.take()?),
            ));
        }
        let mut store = PostStore::new(index, num_shards, light);
        store.watermark_ms = i64::from_le_bytes(r.take()?);
        let mut counts = [0u64; 7];
        for c in &mut counts {
            *c = u64::from_le_bytes(r.take()?);
        }
        store.stats = IngestStats {
            events: counts[0],
            posts_added: counts[1],
            duplicate_posts: counts[2],
            engagements_applied: counts[3],
            orphan_engagements: counts[4],
            late_engagements: counts[5],
            misrouted: counts[6],
        };
        let n = u64::from_le_bytes(r.take()?) as usize;
        // A bound before allocating: a corrupt count must not ask for terabytes.
        let file_len = std::fs::metadata(file)?.len() as usize;
        if n > file_len / 8 {
            return Err(bad(format!(
                "post count {n} does not fit a {file_len}-byte file"
            )));
        }
        // Columns in the file, rows in memory: each column fills one field of every row.
        store.hot = vec![Hot::default(); n];
        take_field!(r, store.hot, id, u64);
        take_field!(r, store.hot, created_at, i64);
        take_field!(r, store.hot, author, u32);
        take_field!(r, store.hot, lang, u16);
        take_field!(r, store.hot, flags, u8);
        store.counts = vec![Counts::default(); n];
        take_field!(r, store.counts, text_len, u16);
        take_field!(r, store.counts, likes, u32);
        take_field!(r, store.counts, retweets, u32);
        take_field!(r, store.counts, replies, u32);
        let newest = take_col!(r, i32, n);
        store.windows = Vec::with_capacity(n);
        for &newest in &newest {
            let mut counts = [0u16; crate::windows::KEPT as usize];
            for c in &mut counts {
                *c = u16::from_le_bytes(r.take()?);
            }
            store
                .windows
                .push(crate::windows::Windows { newest, counts });
        }
        for (h, w) in store.hot.iter_mut().zip(&store.windows) {
            h.newest_window = w.newest;
        }
        let na = u64::from_le_bytes(r.take()?) as usize;
        if na > file_len / 8 {
            return Err(bad(format!("author count {na} does not fit the file")));
        }
        let ids = take_col!(r, u64, na);
        let mut rows = vec![Author::default(); na];
        take_field!(r, rows, followers, u32);
        take_field!(r, rows, posts, u32);
        take_field!(r, rows, cluster, u32);
        let mut authors = Authors {
            ids,
            rows,
            lang: take_col!(r, u16, na),
            ..Default::default()
        };
        let want = r.hash;
        let mut sum = [0u8; 8];
        r.inner.read_exact(&mut sum)?;
        if u64::from_le_bytes(sum) != want {
            return Err(bad("checksum mismatch: the file is damaged"));
        }
        if store.hot.iter().any(|h| h.author as usize >= na) {
            return Err(bad("a post names an author row out of range"));
        }
        authors.index.reserve(na);
        for (row, &id) in authors.ids.iter().enumerate() {
            authors.index.insert(id, row as u32);
        }
        store.authors = authors;
        let hot = &store.hot;
        store.index.reserve(0, n, |r| hot[r as usize].id);
        for (row, h) in hot.iter().enumerate() {
            store.index.insert(h.id, row as u32, |r| hot[r as usize].id);
        }
        // Derived parts from this process's light model.
        store.begin_load();
        store.finish_load();
        Ok((
            store,
            SnapshotMeta {
                source: snap_source,
                live_position,
                kafka,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::corpus::{generate, CorpusSpec};
    use shardrank_core::model::Models;

    fn tiny(index: u32, n: u32) -> PostStore {
        let spec = CorpusSpec::named("tiny", 42).unwrap();
        let mut s = PostStore::new(index, n, Models::builtin().light);
        generate(&spec, |e| s.apply(&e));
        s
    }

    #[test]
    fn a_snapshot_restores_the_same_store_and_refuses_what_does_not_fit() {
        let dir = std::env::temp_dir().join(format!("srsnap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = tiny(1, 2);
        let file = path(&dir, 1, 2);
        let meta = SnapshotMeta {
            source: "corpus tiny (seed 42)".into(),
            live_position: 77,
            kafka: vec![
                ("tweet_events".into(), 1, 1234),
                ("user_events".into(), 0, 9),
            ],
        };
        s.write_snapshot(&file, &meta).unwrap();
        let light = Models::builtin().light;
        let (t, m) = PostStore::read_snapshot(&file, 1, 2, &meta.source, light.clone()).unwrap();
        assert_eq!(m, meta);
        assert!(t.ids().eq(s.ids()));
        assert_eq!(t.stats, s.stats);
        assert_eq!(t.watermark_ms, s.watermark_ms);
        for r in 0..s.len() {
            let (a, b) = (&s.hot[r], &t.hot[r]);
            assert_eq!(
                (a.created_at, a.author, a.lang, a.flags),
                (b.created_at, b.author, b.lang, b.flags)
            );
            assert_eq!(
                a.light_part.to_bits(),
                b.light_part.to_bits(),
                "derived parts agree"
            );
            assert_eq!(t.row(s.id(r as u32)), Some(r as u32));
        }
        assert_eq!(t.counts, s.counts);
        assert_eq!(t.windows, s.windows);
        assert_eq!(t.authors.ids, s.authors.ids);
        assert_eq!(t.authors.rows, s.authors.rows);
        assert_eq!(t.authors.lang, s.authors.lang);
        for (a, &id) in s.authors.ids.iter().enumerate() {
            assert_eq!(t.authors.get(id), Some(a as u32));
        }
        // Another layout or source: refused, named.
        let e = PostStore::read_snapshot(&file, 0, 2, &meta.source, light.clone())
            .err()
            .unwrap();
        assert!(e.to_string().contains("shard 1 of 2"), "{e}");
        let e = PostStore::read_snapshot(&file, 1, 2, "events file x", light.clone())
            .err()
            .unwrap();
        assert!(e.to_string().contains("corpus tiny"), "{e}");
        // A flipped byte: the checksum catches it.
        let mut bytes = std::fs::read(&file).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&file, &bytes).unwrap();
        let e = PostStore::read_snapshot(&file, 1, 2, &meta.source, light.clone())
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("checksum") || e.to_string().contains("fit"),
            "{e}"
        );
        // Truncated: an error, not a panic.
        std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
        assert!(PostStore::read_snapshot(&file, 1, 2, &meta.source, light).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
