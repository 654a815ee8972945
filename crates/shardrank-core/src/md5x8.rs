//! MD5 of eight decimal ids at once, for routing.
//!
//! A decimal u64 is at most 20 bytes, so its MD5 is one 64-byte block. Eight blocks go
//! through the 64 steps side by side, one lane each: the lane loops below are plain
//! array arithmetic that LLVM turns into SIMD (4 lanes with SSE2, all 8 with AVX2, which
//! is used when the CPU has it). Integer arithmetic: every path gives the same digest as
//! the `md-5` crate, which the tests check.

pub const LANES: usize = 8;
type V = [u32; LANES];

#[inline(always)]
fn map2(a: V, b: V, f: impl Fn(u32, u32) -> u32) -> V {
    let mut o = [0u32; LANES];
    for l in 0..LANES {
        o[l] = f(a[l], b[l]);
    }
    o
}

#[inline(always)]
fn map3(a: V, b: V, c: V, f: impl Fn(u32, u32, u32) -> u32) -> V {
    let mut o = [0u32; LANES];
    for l in 0..LANES {
        o[l] = f(a[l], b[l], c[l]);
    }
    o
}

const INIT: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

#[inline(always)]
fn ff(b: V, c: V, d: V) -> V {
    map3(b, c, d, |b, c, d| (b & c) | (!b & d))
}
#[inline(always)]
fn gg(b: V, c: V, d: V) -> V {
    map3(b, c, d, |b, c, d| (d & b) | (!d & c))
}
#[inline(always)]
fn hh(b: V, c: V, d: V) -> V {
    map3(b, c, d, |b, c, d| b ^ c ^ d)
}
#[inline(always)]
fn ii(b: V, c: V, d: V) -> V {
    map3(b, c, d, |b, c, d| c ^ (b | !d))
}

/// One MD5 step: `b + rotl(a + f + m + k, S)`, with a constant rotation so that it
/// compiles to two shifts and an or per vector.
#[inline(always)]
fn step<const S: u32>(a: V, b: V, f: V, mg: V, k: u32) -> V {
    let t = map3(a, f, mg, |a, f, mg| {
        a.wrapping_add(f).wrapping_add(mg).wrapping_add(k)
    });
    map2(b, t, |b, t| b.wrapping_add(t.rotate_left(S)))
}

/// The 64 steps over eight one-block messages `m` (16 words per lane), unrolled
/// (generated from RFC 1321's tables: rotation, message word and constant per step).
#[inline(always)]
fn compress(m: &[V; 16]) -> [V; 4] {
    let (mut a, mut b, mut c, mut d) = (
        [INIT[0]; LANES],
        [INIT[1]; LANES],
        [INIT[2]; LANES],
        [INIT[3]; LANES],
    );
    a = step::<7>(a, b, ff(b, c, d), m[0], 0xd76aa478);
    d = step::<12>(d, a, ff(a, b, c), m[1], 0xe8c7b756);
    c = step::<17>(c, d, ff(d, a, b), m[2], 0x242070db);
    b = step::<22>(b, c, ff(c, d, a), m[3], 0xc1bdceee);
    a = step::<7>(a, b, ff(b, c, d), m[4], 0xf57c0faf);
    d = step::<12>(d, a, ff(a, b, c), m[5], 0x4787c62a);
    c = step::<17>(c, d, ff(d, a, b), m[6], 0xa8304613);
    b = step::<22>(b, c, ff(c, d, a), m[7], 0xfd469501);
    a = step::<7>(a, b, ff(b, c, d), m[8], 0x698098d8);
    d = step::<12>(d, a, ff(a, b, c), m[9], 0x8b44f7af);
    c = step::<17>(c, d, ff(d, a, b), m[10], 0xffff5bb1);
    b = step::<22>(b, c, ff(c, d, a), m[11], 0x895cd7be);
    a = step::<7>(a, b, ff(b, c, d), m[12], 0x6b901122);
    d = step::<12>(d, a, ff(a, b, c), m[13], 0xfd987193);
    c = step::<17>(c, d, ff(d, a, b), m[14], 0xa679438e);
    b = step::<22>(b, c, ff(c, d, a), m[15], 0x49b40821);
    a = step::<5>(a, b, gg(b, c, d), m[1], 0xf61e2562);
    d = step::<9>(d, a, gg(a, b, c), m[6], 0xc040b340);
    c = step::<14>(c, d, gg(d, a, b), m[11], 0x265e5a51);
    b = step::<20>(b, c, gg(c, d, a), m[0], 0xe9b6c7aa);
    a = step::<5>(a, b, gg(b, c, d), m[5], 0xd62f105d);
    d = step::<9>(d, a, gg(a, b, c), m[10], 0x02441453);
    c = step::<14>(c, d, gg(d, a, b), m[15], 0xd8a1e681);
    b = step::<20>(b, c, gg(c, d, a), m[4], 0xe7d3fbc8);
    a = step::<5>(a, b, gg(b, c, d), m[9], 0x21e1cde6);
    d = step::<9>(d, a, gg(a, b, c), m[14], 0xc33707d6);
    c = step::<14>(c, d, gg(d, a, b), m[3], 0xf4d50d87);
    b = step::<20>(b, c, gg(c, d, a), m[8], 0x455a14ed);
    a = step::<5>(a, b, gg(b, c, d), m[13], 0xa9e3e905);
    d = step::<9>(d, a, gg(a, b, c), m[2], 0xfcefa3f8);
    c = step::<14>(c, d, gg(d, a, b), m[7], 0x676f02d9);
    b = step::<20>(b, c, gg(c, d, a), m[12], 0x8d2a4c8a);
    a = step::<4>(a, b, hh(b, c, d), m[5], 0xfffa3942);
    d = step::<11>(d, a, hh(a, b, c), m[8], 0x8771f681);
    c = step::<16>(c, d, hh(d, a, b), m[11], 0x6d9d6122);
    b = step::<23>(b, c, hh(c, d, a), m[14], 0xfde5380c);
    a = step::<4>(a, b, hh(b, c, d), m[1], 0xa4beea44);
    d = step::<11>(d, a, hh(a, b, c), m[4], 0x4bdecfa9);
    c = step::<16>(c, d, hh(d, a, b), m[7], 0xf6bb4b60);
    b = step::<23>(b, c, hh(c, d, a), m[10], 0xbebfbc70);
    a = step::<4>(a, b, hh(b, c, d), m[13], 0x289b7ec6);
    d = step::<11>(d, a, hh(a, b, c), m[0], 0xeaa127fa);
    c = step::<16>(c, d, hh(d, a, b), m[3], 0xd4ef3085);
    b = step::<23>(b, c, hh(c, d, a), m[6], 0x04881d05);
    a = step::<4>(a, b, hh(b, c, d), m[9], 0xd9d4d039);
    d = step::<11>(d, a, hh(a, b, c), m[12], 0xe6db99e5);
    c = step::<16>(c, d, hh(d, a, b), m[15], 0x1fa27cf8);
    b = step::<23>(b, c, hh(c, d, a), m[2], 0xc4ac5665);
    a = step::<6>(a, b, ii(b, c, d), m[0], 0xf4292244);
    d = step::<10>(d, a, ii(a, b, c), m[7], 0x432aff97);
    c = step::<15>(c, d, ii(d, a, b), m[14], 0xab9423a7);
    b = step::<21>(b, c, ii(c, d, a), m[5], 0xfc93a039);
    a = step::<6>(a, b, ii(b, c, d), m[12], 0x655b59c3);
    d = step::<10>(d, a, ii(a, b, c), m[3], 0x8f0ccc92);
    c = step::<15>(c, d, ii(d, a, b), m[10], 0xffeff47d);
    b = step::<21>(b, c, ii(c, d, a), m[1], 0x85845dd1);
    a = step::<6>(a, b, ii(b, c, d), m[8], 0x6fa87e4f);
    d = step::<10>(d, a, ii(a, b, c), m[15], 0xfe2ce6e0);
    c = step::<15>(c, d, ii(d, a, b), m[6], 0xa3014314);
    b = step::<21>(b, c, ii(c, d, a), m[13], 0x4e0811a1);
    a = step::<6>(a, b, ii(b, c, d), m[4], 0xf7537e82);
    d = step::<10>(d, a, ii(a, b, c), m[11], 0xbd3af235);
    c = step::<15>(c, d, ii(d, a, b), m[2], 0x2ad7d2bb);
    b = step::<21>(b, c, ii(c, d, a), m[9], 0xeb86d391);
    [
        map2(a, [INIT[0]; LANES], u32::wrapping_add),
        map2(b, [INIT[1]; LANES], u32::wrapping_add),
        map2(c, [INIT[2]; LANES], u32::wrapping_add),
        map2(d, [INIT[3]; LANES], u32::wrapping_add),
    ]
}

/// Lays out the padded MD5 block of each id's decimal string, word-major. A decimal
/// u64 is at most 20 bytes, so only words 0..=5 (digits and the 0x80 pad byte) and word
/// 14 (the bit length) are not zero: only those are written.
#[inline(always)]
fn blocks(ids: &[u64; LANES]) -> [V; 16] {
    let mut m = [[0u32; LANES]; 16];
    let mut buf = itoa::Buffer::new();
    for (l, &id) in ids.iter().enumerate() {
        let s = buf.format(id).as_bytes();
        let mut head = [0u8; 24];
        head[..s.len()].copy_from_slice(s);
        head[s.len()] = 0x80;
        for w in 0..6 {
            m[w][l] = u32::from_le_bytes([
                head[4 * w],
                head[4 * w + 1],
                head[4 * w + 2],
                head[4 * w + 3],
            ]);
        }
        m[14][l] = (s.len() as u32) * 8;
    }
    m
}

/// The digests as big-endian u128s (as `int(hexdigest, 16)` reads them).
#[inline(always)]
fn digests(ids: &[u64; LANES]) -> [u128; LANES] {
    let [a, b, c, d] = compress(&blocks(ids));
    let mut out = [0u128; LANES];
    for l in 0..LANES {
        let hi = ((a[l].swap_bytes() as u64) << 32) | b[l].swap_bytes() as u64;
        let lo = ((c[l].swap_bytes() as u64) << 32) | d[l].swap_bytes() as u64;
        out[l] = ((hi as u128) << 64) | lo as u128;
    }
    out
}

/// `x mod n` without a division instruction (a 64-bit `div` is ~40 cycles here, a
/// u128 remainder a library call): Barrett reduction with a precomputed reciprocal,
/// then a correction loop that makes it exact.
#[derive(Clone, Copy, Debug)]
pub struct Modulus {
    n: u64,
    /// floor((2^64 - 1) / n): `x * m >> 64` is at most 2 below `x / n`.
    m: u64,
    /// 2^64 mod n.
    two64: u64,
}

impl Modulus {
    pub fn new(n: u32) -> Self {
        assert!(n > 0);
        let n = n as u64;
        Modulus {
            n,
            m: u64::MAX / n,
            two64: (u64::MAX % n + 1) % n,
        }
    }

    #[inline(always)]
    fn rem64(&self, x: u64) -> u64 {
        let q = ((x as u128 * self.m as u128) >> 64) as u64;
        let mut r = x - q * self.n;
        while r >= self.n {
            r -= self.n;
        }
        r
    }

    /// `x mod n` for a 128-bit `x = hi * 2^64 + lo`.
    #[inline(always)]
    pub fn rem128(&self, x: u128) -> u32 {
        let (hi, lo) = ((x >> 64) as u64, x as u64);
        // Both terms are below n^2 < 2^64.
        self.rem64(self.rem64(hi) * self.two64 + self.rem64(lo)) as u32
    }
}

/// `x mod n` for a 128-bit `x`.
#[inline]
pub fn mod_u128(x: u128, n: u32) -> u32 {
    Modulus::new(n).rem128(x)
}

#[inline(always)]
fn shards_impl(ids: &[u64], n: u32, out: &mut [u32]) {
    let modulus = Modulus::new(n);
    let mut chunks = ids.chunks_exact(LANES);
    let mut outs = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        let d = digests(c.try_into().expect("exact chunk"));
        for l in 0..LANES {
            o[l] = modulus.rem128(d[l]);
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut lane = [0u64; LANES];
        lane[..rest.len()].copy_from_slice(rest);
        let d = digests(&lane);
        for (o, dl) in outs.into_remainder().iter_mut().zip(d) {
            *o = modulus.rem128(dl);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn shards_avx2(ids: &[u64], n: u32, out: &mut [u32]) {
    shards_impl(ids, n, out)
}

/// The owning shard of every id: `out[i] = int(md5(str(ids[i]))) mod n`.
pub fn shards(ids: &[u64], n: u32, out: &mut [u32]) {
    assert_eq!(ids.len(), out.len());
    assert!(n > 0);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { shards_avx2(ids, n, out) };
    }
    shards_impl(ids, n, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::routing::digest_u128;

    #[test]
    fn lanes_agree_with_the_md5_crate() {
        let mut r = Rng::new(99);
        let mut ids: Vec<u64> = vec![
            0,
            1,
            9,
            10,
            99,
            100,
            12345678901234567890,
            u64::MAX,
            1 << 63,
        ];
        ids.extend((0..5000).map(|_| r.next_u64()));
        ids.extend((0..500).map(|_| r.below(1_000_000)));
        for l in 0..LANES {
            let chunk: [u64; LANES] = std::array::from_fn(|i| ids[(l * 8 + i) % ids.len()]);
            let d = digests(&chunk);
            for i in 0..LANES {
                assert_eq!(d[i], digest_u128(chunk[i]), "id {}", chunk[i]);
            }
        }
        for n in [1u32, 2, 3, 4, 7, 16, 1000, u32::MAX] {
            let mut out = vec![0u32; ids.len()];
            shards(&ids, n, &mut out);
            for (id, s) in ids.iter().zip(&out) {
                assert_eq!(*s, (digest_u128(*id) % n as u128) as u32, "id {id} n {n}");
            }
            // The portable path too, whatever this CPU has.
            let mut out2 = vec![0u32; ids.len()];
            shards_impl(&ids, n, &mut out2);
            assert_eq!(out, out2);
        }
    }

    #[test]
    fn barrett_is_exact() {
        let mut r = Rng::new(12);
        for n in [
            1u32,
            2,
            3,
            7,
            10,
            255,
            65_537,
            1 << 31,
            u32::MAX - 1,
            u32::MAX,
        ] {
            let m = Modulus::new(n);
            for x in [
                0u128,
                1,
                u64::MAX as u128,
                u128::MAX,
                (u64::MAX as u128) << 64,
                n as u128 - 1,
                n as u128,
            ] {
                assert_eq!(m.rem128(x), (x % n as u128) as u32, "x {x} n {n}");
            }
            for _ in 0..2000 {
                let x = ((r.next_u64() as u128) << 64) | r.next_u64() as u128;
                assert_eq!(m.rem128(x), (x % n as u128) as u32, "x {x} n {n}");
            }
        }
    }

    #[test]
    fn short_inputs() {
        for len in 0..20 {
            let ids: Vec<u64> = (0..len as u64).map(|i| i * 1_000_003).collect();
            let mut out = vec![0u32; len];
            shards(&ids, 5, &mut out);
            for (id, s) in ids.iter().zip(&out) {
                assert_eq!(*s, (digest_u128(*id) % 5) as u32);
            }
        }
    }
}
