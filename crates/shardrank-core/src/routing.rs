//! Which shard owns an id: `int(md5(str(id))) mod N`.
//!
//! The digest of the id's decimal string is read as one big-endian u128, exactly like
//! Python's `int(hashlib.md5(str(id).encode()).hexdigest(), 16) % n`, so any outside
//! tool can route the same way. No heap allocation: the decimal string is written into
//! a stack buffer.

use md5::{Digest, Md5};

/// The shard (0..num_shards) that owns `id`.
#[inline]
pub fn shard_of(id: u64, num_shards: u32) -> u32 {
    debug_assert!(num_shards > 0);
    if num_shards == 1 {
        return 0;
    }
    crate::md5x8::mod_u128(digest_u128(id), num_shards)
}

/// The MD5 digest of the decimal string of `id`, as a big-endian integer.
#[inline]
pub fn digest_u128(id: u64) -> u128 {
    let mut buf = itoa::Buffer::new();
    let s = buf.format(id);
    let digest = Md5::digest(s.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Splits `ids` by owning shard, keeping each shard's ids in request order. Hashes in
/// blocks of a few hundred ids (eight MD5 lanes at a time, see `md5x8`), so the shard
/// numbers stay in L1 and nothing is allocated per id.
pub fn partition(ids: &[u64], num_shards: u32) -> Vec<Vec<u64>> {
    let n = num_shards as usize;
    if n == 1 {
        return vec![ids.to_vec()];
    }
    // One allocation per shard, sized for an even spread plus slack.
    let cap = ids.len() / n + ids.len() / (4 * n) + 16;
    let mut parts: Vec<Vec<u64>> = (0..n).map(|_| Vec::with_capacity(cap)).collect();
    let mut owners = [0u32; 512];
    for block in ids.chunks(owners.len()) {
        let owners = &mut owners[..block.len()];
        crate::md5x8::shards(block, num_shards, owners);
        for (&id, &s) in block.iter().zip(owners.iter()) {
            parts[s as usize].push(id);
        }
    }
    parts
}

/// [`partition`] on `threads` cores: contiguous pieces of `ids` routed at once, then
/// each shard's lists joined in piece order (so still in request order). For the
/// largest requests, whose routing is the serial part of their latency.
pub fn partition_parallel(ids: &[u64], num_shards: u32, threads: usize) -> Vec<Vec<u64>> {
    let piece = ids.len().div_ceil(threads.max(1)).max(1);
    if threads <= 1 || ids.len() <= piece {
        return partition(ids, num_shards);
    }
    let parts: Vec<Vec<Vec<u64>>> = std::thread::scope(|s| {
        let rest: Vec<_> = ids[piece..]
            .chunks(piece)
            .map(|c| s.spawn(move || partition(c, num_shards)))
            .collect();
        let mut parts = vec![partition(&ids[..piece], num_shards)];
        // A panic in a routing thread is a bug: re-raise it here.
        parts.extend(
            rest.into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
        );
        parts
    });
    let mut pieces = parts.into_iter();
    let mut out = pieces.next().unwrap_or_default();
    for p in pieces {
        for (o, more) in out.iter_mut().zip(p) {
            o.extend_from_slice(&more);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with Python: `int(hashlib.md5(str(i).encode()).hexdigest(), 16) % n`.
    #[test]
    fn parallel_partition_equals_serial() {
        let mut r = crate::rng::Rng::new(21);
        for len in [0usize, 1, 7, 1000, 10_001] {
            let ids: Vec<u64> = (0..len).map(|_| r.next_u64() >> (r.below(40))).collect();
            for threads in [1, 2, 3, 8] {
                for n in [1u32, 3, 4] {
                    assert_eq!(
                        partition_parallel(&ids, n, threads),
                        partition(&ids, n),
                        "len {len}, threads {threads}, n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_python_vectors() {
        // (id, digest, id%2, id%3, id%4, id%7, id%16)
        let vectors: &[(u64, u128, [u32; 5])] = &[
            (0, 0xcfcd208495d565ef66e7dff9f98764da, [0, 1, 2, 0, 10]),
            (1, 0xc4ca4238a0b923820dcc509a6f75849b, [1, 1, 3, 2, 11]),
            (7, 0x8f14e45fceea167a5a36dedd4bea2543, [1, 0, 3, 5, 3]),
            (42, 0xa1d0c6e83f027327d8461063f4ac58a6, [0, 1, 2, 0, 6]),
            (100000, 0x14ee22eaba297944c96afdbe5b16c65b, [1, 0, 3, 2, 11]),
            (
                1234567890123456789,
                0xd7cce89c9208b38edde414c3eb02e19b,
                [1, 1, 3, 1, 11],
            ),
            (
                u64::MAX,
                0x7e7825a3d8588a756abd0ce2ed07e121,
                [1, 0, 1, 1, 1],
            ),
        ];
        for &(id, digest, mods) in vectors {
            assert_eq!(digest_u128(id), digest, "digest of {id}");
            for (n, want) in [2u32, 3, 4, 7, 16].into_iter().zip(mods) {
                assert_eq!(shard_of(id, n), want, "shard_of({id}, {n})");
            }
            assert_eq!(shard_of(id, 1), 0);
        }
    }

    #[test]
    fn partition_keeps_every_id_on_its_shard() {
        let ids: Vec<u64> = (0..10_000u64).map(|i| i * 7919 + 3).collect();
        let parts = partition(&ids, 4);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), ids.len());
        for (s, part) in parts.iter().enumerate() {
            assert!(part.iter().all(|&id| shard_of(id, 4) == s as u32));
            // An even spread: each shard within 10% of a quarter.
            assert!(
                (2250..2750).contains(&part.len()),
                "shard {s}: {}",
                part.len()
            );
        }
    }
}
