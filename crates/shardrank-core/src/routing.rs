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
    const BLOCK: usize = 512;
    // One allocation per shard, sized for an even spread plus slack (and, for the
    // vector path, room for one block's worth and a store's overhang).
    let even = ids.len() / n + ids.len() / (4 * n) + 16;
    let cap = even.max(ids.len().min(BLOCK) + 8);
    let mut parts: Vec<Vec<u64>> = (0..n).map(|_| Vec::with_capacity(cap)).collect();
    let mut owners = [0u32; BLOCK];
    for block in ids.chunks(BLOCK) {
        let owners = &mut owners[..block.len()];
        crate::md5x8::shards(block, num_shards, owners);
        push_by_owner(block, owners, &mut parts);
    }
    parts
}

/// Appends each id of `ids` to the list of its owner (`owners[i]`), in order.
#[inline]
fn push_by_owner(ids: &[u64], owners: &[u32], parts: &mut [Vec<u64>]) {
    #[cfg(target_arch = "x86_64")]
    if parts.len() <= 8 && crate::simd::Simd::detect() == crate::simd::Simd::Avx512 {
        // SAFETY: the CPU has AVX-512F (`Simd::detect`), and popcnt with it.
        unsafe { push_by_owner_avx512(ids, owners, parts) };
        return;
    }
    for (&id, &s) in ids.iter().zip(owners) {
        parts[s as usize].push(id);
    }
}

/// [`push_by_owner`] eight ids at a time: per owner, the ids it owns packed to the
/// front of a register (`vpcompressq`) and stored whole at the end of its list, which
/// then grows by their count. A push per id is a load, compare and store of the list's
/// length, and the next push to the same list waits on that store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,popcnt")]
unsafe fn push_by_owner_avx512(ids: &[u64], owners: &[u32], parts: &mut [Vec<u64>]) {
    use core::arch::x86_64::*;
    debug_assert!(parts.len() <= 8 && ids.len() == owners.len());
    // Every store writes eight lanes past a list's end: room for all of `ids` and that.
    for p in parts.iter_mut() {
        p.reserve(ids.len() + 8);
    }
    let n = parts.len();
    let mut ends = [std::ptr::null_mut::<u64>(); 8];
    for (e, p) in ends.iter_mut().zip(parts.iter_mut()) {
        // SAFETY: within the allocation (len <= capacity).
        *e = unsafe { p.as_mut_ptr().add(p.len()) };
    }
    let mut chunks = ids.chunks_exact(8);
    let mut owner_chunks = owners.chunks_exact(8);
    for (c, o) in (&mut chunks).zip(&mut owner_chunks) {
        // SAFETY: eight u64s and eight u32s; unaligned loads.
        let v = unsafe { _mm512_loadu_si512(c.as_ptr() as *const _) };
        let o = unsafe { _mm256_loadu_si256(o.as_ptr() as *const __m256i) };
        let o = _mm512_zextsi256_si512(o);
        for (s, end) in ends.iter_mut().enumerate().take(n) {
            // Lanes 8..16 of `o` are zero: only the low eight bits of the mask count.
            let k = _mm512_cmpeq_epi32_mask(o, _mm512_set1_epi32(s as i32)) as u8;
            // SAFETY: at most `ids.len()` ids go to a list, and eight lanes past them
            // were reserved above.
            unsafe {
                _mm512_storeu_si512(*end as *mut _, _mm512_maskz_compress_epi64(k, v));
                *end = end.add(k.count_ones() as usize);
            }
        }
    }
    // Indexed within the `n` lists: an owner out of range panics here rather than
    // writing through a null end.
    let lists = &mut ends[..n];
    for (&id, &s) in chunks.remainder().iter().zip(owner_chunks.remainder()) {
        let end = &mut lists[s as usize];
        // SAFETY: reserved above.
        unsafe {
            end.write(id);
            *end = end.add(1);
        }
    }
    for (p, &end) in parts.iter_mut().zip(&ends) {
        // SAFETY: the ids up to `end` were written above, within the capacity.
        unsafe { p.set_len(end.offset_from(p.as_ptr()) as usize) };
    }
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

    /// The vector push (where the CPU has it) against one push per id: lists that
    /// already hold ids, every owner count it takes, lengths around its eight lanes.
    #[test]
    fn pushing_by_owner_keeps_order_on_every_path() {
        let mut r = crate::rng::Rng::new(8);
        for n in 1..=9usize {
            for len in [0usize, 1, 7, 8, 9, 63, 512] {
                let ids: Vec<u64> = (0..len).map(|_| r.next_u64()).collect();
                let owners: Vec<u32> = (0..len).map(|_| r.below(n as u64) as u32).collect();
                let start: Vec<Vec<u64>> = (0..n).map(|s| vec![s as u64; s % 3]).collect();
                let mut want = start.clone();
                for (&id, &s) in ids.iter().zip(&owners) {
                    want[s as usize].push(id);
                }
                let mut got = start.clone();
                push_by_owner(&ids, &owners, &mut got);
                assert_eq!(got, want, "dispatched, n {n}, len {len}");
                #[cfg(target_arch = "x86_64")]
                if n <= 8 && crate::simd::Simd::detect() == crate::simd::Simd::Avx512 {
                    let mut got = start.clone();
                    // SAFETY: the CPU has AVX-512F.
                    unsafe { push_by_owner_avx512(&ids, &owners, &mut got) };
                    assert_eq!(got, want, "avx512, n {n}, len {len}");
                }
            }
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
