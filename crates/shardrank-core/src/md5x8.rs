//! MD5 of eight decimal ids at once, for routing.
//!
//! A decimal u64 is at most 20 bytes, so its MD5 is one 64-byte block. Eight blocks go
//! through the 64 steps side by side, one lane each: portably as lane loops over arrays
//! that LLVM turns into SSE2; with AVX2 (when the CPU has it) as two blocks of eight in
//! 256-bit registers; with AVX-512 as two blocks of sixteen in 512-bit registers, with
//! its one-instruction round functions and rotations. The digits are built in
//! registers, lane by lane (`decimal_words`), or for all lanes at once when a chunk of
//! ids shares a decimal length (`uniform`, the usual case), and the shard taken by a
//! division-free remainder (`Modulus`), or with AVX-512 by a mask when the shard count
//! is a power of two. Every path gives the same digest as the `md-5` crate, which the
//! tests check.

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

/// The 64 steps of MD5 (generated from RFC 1321's tables: rotation, message word and
/// constant per step), over message words `$m` and from the state `$init`, with the
/// `step`, `ff`, `gg`, `hh` and `ii` of the place it is used: the portable lanes below
/// and the AVX2 registers of [`avx2`] run the same listing.
macro_rules! md5_steps {
    ($m:expr, $init:expr) => {{
        let m = $m;
        let (mut a, mut b, mut c, mut d) = $init;
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
        (a, b, c, d)
    }};
}

/// The compression of eight one-block messages `m` (16 words per lane), unrolled.
#[inline(always)]
fn compress(m: &[V; 16]) -> [V; 4] {
    let init = |i: usize| [INIT[i]; LANES];
    let (a, b, c, d) = md5_steps!(m, (init(0), init(1), init(2), init(3)));
    [
        map2(a, init(0), u32::wrapping_add),
        map2(b, init(1), u32::wrapping_add),
        map2(c, init(2), u32::wrapping_add),
        map2(d, init(3), u32::wrapping_add),
    ]
}

/// The same compression in 256-bit registers. Written with intrinsics because the
/// portable lane loops compile, even with AVX2 enabled, to 128-bit halves that spill
/// the state to the stack at every step (measured: about 40 ns per id).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, V};
    use core::arch::x86_64::*;

    /// Two blocks' registers, stepped together.
    type Y = [__m256i; 2];

    #[inline]
    #[target_feature(enable = "avx2")]
    fn each(a: Y, b: Y, c: Y, f: impl Fn(__m256i, __m256i, __m256i) -> __m256i) -> Y {
        [f(a[0], b[0], c[0]), f(a[1], b[1], c[1])]
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ff(b: Y, c: Y, d: Y) -> Y {
        each(b, c, d, |b, c, d| {
            _mm256_or_si256(_mm256_and_si256(b, c), _mm256_andnot_si256(b, d))
        })
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn gg(b: Y, c: Y, d: Y) -> Y {
        each(b, c, d, |b, c, d| {
            _mm256_or_si256(_mm256_and_si256(d, b), _mm256_andnot_si256(d, c))
        })
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hh(b: Y, c: Y, d: Y) -> Y {
        each(b, c, d, |b, c, d| {
            _mm256_xor_si256(_mm256_xor_si256(b, c), d)
        })
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn ii(b: Y, c: Y, d: Y) -> Y {
        each(b, c, d, |b, c, d| {
            let not_d = _mm256_xor_si256(d, _mm256_set1_epi32(-1));
            _mm256_xor_si256(c, _mm256_or_si256(b, not_d))
        })
    }
    #[inline]
    #[target_feature(enable = "avx2")]
    fn step<const S: u32>(a: Y, b: Y, f: Y, mg: Y, k: u32) -> Y {
        let one = |a, b, f, mg| {
            let t = _mm256_add_epi32(
                _mm256_add_epi32(a, f),
                _mm256_add_epi32(mg, _mm256_set1_epi32(k as i32)),
            );
            let rot = _mm256_or_si256(
                _mm256_sllv_epi32(t, _mm256_set1_epi32(S as i32)),
                _mm256_srlv_epi32(t, _mm256_set1_epi32(32 - S as i32)),
            );
            _mm256_add_epi32(b, rot)
        };
        [one(a[0], b[0], f[0], mg[0]), one(a[1], b[1], f[1], mg[1])]
    }

    /// Two blocks of eight lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn compress2(m: &[[V; 16]; 2]) -> [[V; 4]; 2] {
        // SAFETY (both blocks): V is [u32; 8], 32 bytes; unaligned loads.
        let load = |v: &V| unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) };
        compress2_regs(std::array::from_fn(|w| [load(&m[0][w]), load(&m[1][w])]))
    }

    /// Two blocks of eight lanes, message words in registers.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn compress2_regs(m: [Y; 16]) -> [[V; 4]; 2] {
        let init = |i: usize| [_mm256_set1_epi32(super::INIT[i] as i32); 2];
        let (a, b, c, d) = md5_steps!(m, (init(0), init(1), init(2), init(3)));
        let mut out = [[[0u32; LANES]; 4]; 2];
        for (i, v) in [a, b, c, d].into_iter().enumerate() {
            for (blk, o) in out.iter_mut().enumerate() {
                let sum = _mm256_add_epi32(v[blk], init(i)[blk]);
                // SAFETY: V is [u32; 8], 32 bytes; an unaligned store.
                unsafe { _mm256_storeu_si256(o[i].as_mut_ptr() as *mut __m256i, sum) };
            }
        }
        out
    }
}

/// The compression in AVX-512's 512-bit registers: two blocks of sixteen lanes, 32 ids
/// per pass. Each round function is one three-input logic instruction (`vpternlogd`,
/// where AVX2 takes two or three) and each rotation one `vprold` (where AVX2 takes two
/// shifts and an or), so a step is about six instructions instead of ten. Two blocks
/// because a step's chain (logic, add, rotate, add) is four cycles long; sixteen lanes
/// because 512-bit instructions issue on two ports where 256-bit ones issue on three,
/// so that each instruction does twice the work for two thirds of the rate. (Measured
/// with the blocks built in 512-bit registers too: routing about 10 ns per id, from 23
/// on 256-bit registers.) The same arithmetic: the same digests.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    /// Sixteen lanes.
    pub(super) const WIDE: usize = 16;

    /// Two blocks' registers, stepped together.
    pub(super) type Z = [__m512i; 2];

    /// `f(b, c, d)` as a truth table: bit `4b + 2c + d` of `T` is the result for
    /// those input bits (so `T` is `f(0xf0, 0xcc, 0xaa)`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn table<const T: i32>(b: Z, c: Z, d: Z) -> Z {
        [
            _mm512_ternarylogic_epi32::<T>(b[0], c[0], d[0]),
            _mm512_ternarylogic_epi32::<T>(b[1], c[1], d[1]),
        ]
    }
    /// `(b & c) | (!b & d)`
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ff(b: Z, c: Z, d: Z) -> Z {
        table::<0xca>(b, c, d)
    }
    /// `(d & b) | (!d & c)`
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn gg(b: Z, c: Z, d: Z) -> Z {
        table::<0xe4>(b, c, d)
    }
    /// `b ^ c ^ d`
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hh(b: Z, c: Z, d: Z) -> Z {
        table::<0x96>(b, c, d)
    }
    /// `c ^ (b | !d)`
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn ii(b: Z, c: Z, d: Z) -> Z {
        table::<0x39>(b, c, d)
    }
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn step<const S: i32>(a: Z, b: Z, f: Z, mg: Z, k: u32) -> Z {
        let one = |a, b, f, mg| {
            // The message word and constant first: off the chain through `f`.
            let t = _mm512_add_epi32(_mm512_add_epi32(a, mg), _mm512_set1_epi32(k as i32));
            _mm512_add_epi32(b, _mm512_rol_epi32::<S>(_mm512_add_epi32(t, f)))
        };
        [one(a[0], b[0], f[0], mg[0]), one(a[1], b[1], f[1], mg[1])]
    }

    /// Two blocks of sixteen lanes, message words in registers: the state words
    /// (a, b, c, d) of each block.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn compress2_regs(m: [Z; 16]) -> [[__m512i; 4]; 2] {
        let init = |i: usize| [_mm512_set1_epi32(super::INIT[i] as i32); 2];
        let (a, b, c, d) = md5_steps!(m, (init(0), init(1), init(2), init(3)));
        let s = [a, b, c, d];
        std::array::from_fn(|blk| {
            std::array::from_fn(|i| _mm512_add_epi32(s[i][blk], init(i)[blk]))
        })
    }
}

/// Message blocks built in registers, all lanes at once, for ids of one decimal length:
/// the usual case (snowflake ids have 19 digits until the 2080s), where building each
/// lane's digits on its own was more than half of routing's time. Mixed lengths take
/// the per-lane path ([`super::blocks`]).
#[cfg(target_arch = "x86_64")]
mod uniform {
    use super::LANES;
    use core::arch::x86_64::*;

    /// `x / 10^4` per u32 lane: `x * ceil(2^45 / 10^4) >> 45`, exact for every u32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn div_1e4(x: __m256i) -> __m256i {
        let magic = _mm256_set1_epi32(0xD1B7_1759u32 as i32);
        // Even lanes, then odd lanes, through the 32x32 -> 64-bit multiply.
        let even = _mm256_srli_epi64(_mm256_mul_epu32(x, magic), 45);
        let odd = _mm256_srli_epi64(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), magic), 45);
        _mm256_or_si256(even, _mm256_slli_epi64(odd, 32))
    }

    /// The four ASCII digits of `y < 10^4` per u32 lane, first digit in the lowest
    /// byte (the SWAR of `eight_digits`, in 32-bit lanes).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn four_digits(y: __m256i) -> __m256i {
        let k = |c: u32| _mm256_set1_epi32(c as i32);
        // Hundreds: y * 5243 >> 19 is y / 100 below 43,699.
        let a = _mm256_srli_epi32(_mm256_mullo_epi32(y, k(5243)), 19);
        let b = _mm256_sub_epi32(y, _mm256_mullo_epi32(a, k(100)));
        let v = _mm256_or_si256(a, _mm256_slli_epi32(b, 16));
        // Tens of both halves: v * 103 >> 10 is v / 10 below 179, per 16-bit half.
        let q = _mm256_and_si256(
            _mm256_srli_epi32(_mm256_mullo_epi32(v, k(103)), 10),
            k(0x000f_000f),
        );
        let units = _mm256_sub_epi32(v, _mm256_mullo_epi32(q, k(10)));
        let v = _mm256_or_si256(q, _mm256_slli_epi32(units, 8));
        _mm256_add_epi32(v, k(0x3030_3030))
    }

    /// The sixteen message words of the MD5 blocks of eight ids that all have `len`
    /// decimal digits.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn block(ids: &[u64; LANES], len: usize) -> [__m256i; 16] {
        const E8: u64 = 100_000_000;
        // The three base-10^8 limbs of each id, on the scalar side (64-bit quotients).
        let mut limbs = [[0u32; LANES]; 3];
        for (l, &id) in ids.iter().enumerate() {
            let q = id / E8;
            limbs[0][l] = (q / E8) as u32;
            limbs[1][l] = (q % E8) as u32;
            limbs[2][l] = (id % E8) as u32;
        }
        // SAFETY: each limb array is [u32; 8], 32 bytes; unaligned loads.
        let [hi, mid, lo] =
            limbs.map(|v| unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) });
        let (mid_hi, lo_hi) = (div_1e4(mid), div_1e4(lo));
        let tenk = _mm256_set1_epi32(10_000);
        let mid_lo = _mm256_sub_epi32(mid, _mm256_mullo_epi32(mid_hi, tenk));
        let lo_lo = _mm256_sub_epi32(lo, _mm256_mullo_epi32(lo_hi, tenk));
        // The twenty-digit zero-padded string, four digits per word (hi < 1845).
        let zero = _mm256_setzero_si256();
        let w = [
            four_digits(hi),
            four_digits(mid_hi),
            four_digits(mid_lo),
            four_digits(lo_hi),
            four_digits(lo_lo),
            zero,
            zero,
        ];
        // Drop the 20 - len leading zeros: whole words, then a funnel shift of bytes
        // (a shift by 32 gives 0, which is what r = 0 needs).
        let z = 20 - len;
        let (k, r) = (z / 4, 8 * (z % 4) as i64);
        let (right, left) = (_mm_set_epi64x(0, r), _mm_set_epi64x(0, 32 - r));
        let mut m = [zero; 16];
        for (j, word) in m.iter_mut().take(6).enumerate() {
            let (a, b) = (w.get(j + k).copied(), w.get(j + k + 1).copied());
            let (a, b) = (a.unwrap_or(zero), b.unwrap_or(zero));
            *word = _mm256_or_si256(_mm256_srl_epi32(a, right), _mm256_sll_epi32(b, left));
        }
        // The pad byte after the digits, and the bit length.
        let pad = _mm256_set1_epi32((0x80u32 << (8 * (len % 4))) as i32);
        m[len / 4] = _mm256_or_si256(m[len / 4], pad);
        m[14] = _mm256_set1_epi32(8 * len as i32);
        m
    }

    /// `(x / 10^8, x % 10^8)` per u64 lane. The quotient through f64: the id's
    /// rounding (at most 2^10) and the multiply's leave it within one of the truth, and
    /// one correction each way makes it exact.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn divmod_1e8(x: __m512i) -> (__m512i, __m512i) {
        let e8 = _mm512_set1_epi64(100_000_000);
        let one = _mm512_set1_epi64(1);
        let q = _mm512_cvttpd_epu64(_mm512_mul_pd(_mm512_cvtepu64_pd(x), _mm512_set1_pd(1e-8)));
        let r = _mm512_sub_epi64(x, _mm512_mullo_epi64(q, e8));
        let low = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
        let (q, r) = (
            _mm512_mask_sub_epi64(q, low, q, one),
            _mm512_mask_add_epi64(r, low, r, e8),
        );
        let high = _mm512_cmpge_epi64_mask(r, e8);
        (
            _mm512_mask_add_epi64(q, high, q, one),
            _mm512_mask_sub_epi64(r, high, r, e8),
        )
    }

    /// `x / 10^4` per u32 lane ([`div_1e4`] in sixteen lanes).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn div_1e4_16(x: __m512i) -> __m512i {
        let magic = _mm512_set1_epi32(0xD1B7_1759u32 as i32);
        let even = _mm512_srli_epi64(_mm512_mul_epu32(x, magic), 45);
        let odd = _mm512_srli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(x, 32), magic), 45);
        _mm512_or_si512(even, _mm512_slli_epi64(odd, 32))
    }

    /// [`four_digits`] in sixteen lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn four_digits_16(y: __m512i) -> __m512i {
        let k = |c: u32| _mm512_set1_epi32(c as i32);
        let a = _mm512_srli_epi32(_mm512_mullo_epi32(y, k(5243)), 19);
        let b = _mm512_sub_epi32(y, _mm512_mullo_epi32(a, k(100)));
        let v = _mm512_or_si512(a, _mm512_slli_epi32(b, 16));
        let q = _mm512_and_si512(
            _mm512_srli_epi32(_mm512_mullo_epi32(v, k(103)), 10),
            k(0x000f_000f),
        );
        let units = _mm512_sub_epi32(v, _mm512_mullo_epi32(q, k(10)));
        let v = _mm512_or_si512(q, _mm512_slli_epi32(units, 8));
        _mm512_add_epi32(v, k(0x3030_3030))
    }

    /// [`block`] for thirty-two ids in 512-bit registers, the limbs too: the message
    /// words of two blocks of sixteen lanes, as [`super::avx512::compress2_regs`] takes
    /// them.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    pub(super) fn block32(ids: &[u64; 4 * LANES], len: usize) -> [[__m512i; 2]; 16] {
        let zero = _mm512_setzero_si512();
        let z = 20 - len;
        let (k, r) = (z / 4, 8 * (z % 4) as i64);
        let (right, left) = (_mm_set_epi64x(0, r), _mm_set_epi64x(0, 32 - r));
        let pad = _mm512_set1_epi32((0x80u32 << (8 * (len % 4))) as i32);
        let mut m = [[zero; 2]; 16];
        m[14] = [_mm512_set1_epi32(8 * len as i32); 2];
        for blk in 0..2 {
            // Each id's base-10^8 limbs, eight u64 lanes at a time, then narrowed and
            // joined into sixteen u32 lanes.
            let mut limbs = [[_mm256_setzero_si256(); 2]; 3];
            for half in 0..2 {
                // SAFETY: eight u64s, 64 bytes, in bounds; an unaligned load.
                let x = unsafe {
                    _mm512_loadu_si512(ids[(2 * blk + half) * LANES..].as_ptr() as *const _)
                };
                let (q, lo) = divmod_1e8(x);
                let (hi, mid) = divmod_1e8(q);
                for (l, v) in limbs.iter_mut().zip([hi, mid, lo]) {
                    l[half] = _mm512_cvtepi64_epi32(v);
                }
            }
            let [hi, mid, lo] =
                limbs.map(|[a, b]| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b));
            let (mid_hi, lo_hi) = (div_1e4_16(mid), div_1e4_16(lo));
            let tenk = _mm512_set1_epi32(10_000);
            let mid_lo = _mm512_sub_epi32(mid, _mm512_mullo_epi32(mid_hi, tenk));
            let lo_lo = _mm512_sub_epi32(lo, _mm512_mullo_epi32(lo_hi, tenk));
            let w = [
                four_digits_16(hi),
                four_digits_16(mid_hi),
                four_digits_16(mid_lo),
                four_digits_16(lo_hi),
                four_digits_16(lo_lo),
                zero,
                zero,
            ];
            for (j, word) in m.iter_mut().take(6).enumerate() {
                let (a, b) = (w.get(j + k).copied(), w.get(j + k + 1).copied());
                let (a, b) = (a.unwrap_or(zero), b.unwrap_or(zero));
                word[blk] = _mm512_or_si512(_mm512_srl_epi32(a, right), _mm512_sll_epi32(b, left));
            }
            m[len / 4][blk] = _mm512_or_si512(m[len / 4][blk], pad);
        }
        m
    }
}

/// The decimal length shared by all of `ids`, if they share one: the length grows with
/// the value, so the least and the greatest id decide (a min and a max the compiler
/// vectorises, with the caller's features).
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn common_len(ids: &[u64]) -> Option<usize> {
    let (min, max) = ids
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &id| (lo.min(id), hi.max(id)));
    let len = |x: u64| x.checked_ilog10().unwrap_or(0) as usize + 1;
    (len(min) == len(max)).then_some(len(min))
}

/// The eight ASCII digits of `x < 10^8` (leading zeros), first digit in the lowest
/// byte: SWAR, the halves, then the pairs, then the digits split in parallel lanes of
/// one u64 by multiplying with reciprocals (exact below 10^4, 10^2 and 10^1 as used).
#[inline(always)]
fn eight_digits(x: u64) -> u64 {
    let v = (x / 10_000) | ((x % 10_000) << 32);
    let q = ((v * 5243) >> 19) & 0x0000_007f_0000_007f;
    let v = q | ((v - q * 100) << 16);
    let q = ((v * 103) >> 10) & 0x000f_000f_000f_000f;
    let v = q | ((v - q * 10) << 8);
    v + 0x3030_3030_3030_3030
}

/// The first six words of the MD5 block of `id`'s decimal string (the string, then the
/// 0x80 pad byte, then zeros), and the string's length. In registers: the digits are
/// built in 64-bit words and the leading zeros shifted out, where writing the digits
/// byte by byte and reading them back as words stalled on store forwarding (most of
/// the time of routing an id).
#[inline(always)]
fn decimal_words(id: u64) -> ([u32; 6], usize) {
    const E8: u64 = 100_000_000;
    let len = id.checked_ilog10().unwrap_or(0) as usize + 1;
    // Twenty-four digits, zero-padded, as three little-endian words (id < 10^20).
    let w = [
        eight_digits(id / (E8 * E8)),
        eight_digits(id / E8 % E8),
        eight_digits(id % E8),
        0,
    ];
    // Drop the 24 - len leading zeros: a shift right of the 24-byte string.
    let z = 24 - len;
    let (k, r) = (z / 8, 8 * (z % 8));
    let mut out = [0u64; 3];
    for (i, o) in out.iter_mut().enumerate() {
        let lo = w.get(i + k).copied().unwrap_or(0) as u128;
        let hi = w.get(i + k + 1).copied().unwrap_or(0) as u128;
        *o = ((lo | (hi << 64)) >> r) as u64;
    }
    out[len / 8] |= 0x80 << (8 * (len % 8));
    let words = std::array::from_fn(|j| (out[j / 2] >> (32 * (j % 2))) as u32);
    (words, len)
}

/// Lays out the padded MD5 block of each id's decimal string, word-major. A decimal
/// u64 is at most 20 bytes, so only words 0..=5 (digits and the 0x80 pad byte) and word
/// 14 (the bit length) are not zero: only those are written.
#[inline(always)]
fn blocks(ids: &[u64; LANES]) -> [V; 16] {
    let mut m = [[0u32; LANES]; 16];
    for (l, &id) in ids.iter().enumerate() {
        let (words, len) = decimal_words(id);
        for (w, &word) in words.iter().enumerate() {
            m[w][l] = word;
        }
        m[14][l] = (len as u32) * 8;
    }
    m
}

/// The digests of a compressed state as big-endian u128s (as `int(hexdigest, 16)`
/// reads them).
#[inline(always)]
fn to_u128([a, b, c, d]: [V; 4]) -> [u128; LANES] {
    let mut out = [0u128; LANES];
    for l in 0..LANES {
        let hi = ((a[l].swap_bytes() as u64) << 32) | b[l].swap_bytes() as u64;
        let lo = ((c[l].swap_bytes() as u64) << 32) | d[l].swap_bytes() as u64;
        out[l] = ((hi as u128) << 64) | lo as u128;
    }
    out
}

/// The digests of eight ids, portably.
#[cfg(test)]
fn digests(ids: &[u64; LANES]) -> [u128; LANES] {
    to_u128(compress(&blocks(ids)))
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
        let r = x - q * self.n;
        // At most two corrections, without branches: digests are random, so a branch
        // here was mispredicted about once per id.
        let r = r - self.n * (r >= self.n) as u64;
        r - self.n * (r >= self.n) as u64
    }

    /// `x mod n` for a 128-bit `x = hi * 2^64 + lo`.
    #[inline(always)]
    pub fn rem128(&self, x: u128) -> u32 {
        let (hi, lo) = ((x >> 64) as u64, x as u64);
        if self.n.is_power_of_two() {
            // 2^64 is a multiple of n: only the low bits count.
            return (lo & (self.n - 1)) as u32;
        }
        // Both terms are below n^2 < 2^64.
        self.rem64(self.rem64(hi) * self.two64 + self.rem64(lo)) as u32
    }
}

/// `x mod n` for a 128-bit `x`.
#[inline]
pub fn mod_u128(x: u128, n: u32) -> u32 {
    Modulus::new(n).rem128(x)
}

/// Each lane's `int(digest) mod n`, into `out` (up to eight).
#[inline(always)]
fn lanes_mod(state: [V; 4], modulus: Modulus, out: &mut [u32]) {
    for (o, d) in out.iter_mut().zip(to_u128(state)) {
        *o = modulus.rem128(d);
    }
}

/// Routes `ids` eight at a time.
#[inline(always)]
fn shards_impl(ids: &[u64], modulus: Modulus, out: &mut [u32]) {
    let mut chunks = ids.chunks_exact(LANES);
    let mut outs = out.chunks_exact_mut(LANES);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        lanes_mod(
            compress(&blocks(c.try_into().expect("exact chunk"))),
            modulus,
            o,
        );
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut lane = [0u64; LANES];
        lane[..rest.len()].copy_from_slice(rest);
        lanes_mod(compress(&blocks(&lane)), modulus, outs.into_remainder());
    }
}

/// Sixteen at a time: MD5's steps depend one on the next, so one block of eight lanes
/// waits on latency; two independent blocks fill the pipeline.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn shards_avx2(ids: &[u64], modulus: Modulus, out: &mut [u32]) {
    let mut chunks = ids.chunks_exact(2 * LANES);
    let mut outs = out.chunks_exact_mut(2 * LANES);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        let [c0, c1] = eights(c);
        let [s0, s1] = match common_len(c) {
            Some(len) => {
                let (m0, m1) = (uniform::block(c0, len), uniform::block(c1, len));
                avx2::compress2_regs(std::array::from_fn(|w| [m0[w], m1[w]]))
            }
            None => avx2::compress2(&[blocks(c0), blocks(c1)]),
        };
        let (o0, o1) = o.split_at_mut(LANES);
        lanes_mod(s0, modulus, o0);
        lanes_mod(s1, modulus, o1);
    }
    shards_impl(chunks.remainder(), modulus, outs.into_remainder())
}

/// Thirty-two at a time in 512-bit registers ([`avx512`]); what is left, sixteen and
/// eight at a time. A chunk of one decimal length has its blocks built in 512-bit
/// registers ([`uniform::block32`]); a mixed one lane by lane, in halves of eight
/// lanes joined.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512dq")]
unsafe fn shards_avx512(ids: &[u64], modulus: Modulus, out: &mut [u32]) {
    use avx512::WIDE;
    use core::arch::x86_64::*;
    let join = |lo, hi| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    // SAFETY: V is [u32; 8], 32 bytes; unaligned loads.
    let load = |v: &V| unsafe { _mm256_loadu_si256(v.as_ptr() as *const __m256i) };
    // With a power-of-two shard count, the low bits of the digest decide: those of the
    // last word, byte-swapped (the digest is read big-endian).
    let pow2 = modulus
        .n
        .is_power_of_two()
        .then(|| _mm512_set1_epi32((modulus.n - 1) as i32));
    let bswap = |d| {
        let byte = |x, m: u32| _mm512_and_si512(x, _mm512_set1_epi32(m as i32));
        _mm512_or_si512(
            _mm512_or_si512(
                _mm512_srli_epi32(d, 24),
                byte(_mm512_srli_epi32(d, 8), 0xff00),
            ),
            _mm512_or_si512(
                byte(_mm512_slli_epi32(d, 8), 0xff_0000),
                _mm512_slli_epi32(d, 24),
            ),
        )
    };
    let mut chunks = ids.chunks_exact(2 * WIDE);
    let mut outs = out.chunks_exact_mut(2 * WIDE);
    for (c, o) in (&mut chunks).zip(&mut outs) {
        let m: [avx512::Z; 16] = match common_len(c) {
            Some(len) => uniform::block32(c.try_into().expect("thirty-two"), len),
            None => {
                let b = eights::<4>(c).map(blocks);
                std::array::from_fn(|w| {
                    [
                        join(load(&b[0][w]), load(&b[1][w])),
                        join(load(&b[2][w]), load(&b[3][w])),
                    ]
                })
            }
        };
        for (state, o) in avx512::compress2_regs(m)
            .into_iter()
            .zip(o.chunks_exact_mut(WIDE))
        {
            if let Some(mask) = pow2 {
                let shard = _mm512_and_si512(bswap(state[3]), mask);
                // SAFETY: `o` is sixteen u32s, 64 bytes; an unaligned store.
                unsafe { _mm512_storeu_si512(o.as_mut_ptr() as *mut _, shard) };
                continue;
            }
            let mut words = [[0u32; WIDE]; 4];
            for (w, v) in words.iter_mut().zip(state) {
                // SAFETY: each word array is [u32; 16], 64 bytes; an unaligned store.
                unsafe { _mm512_storeu_si512(w.as_mut_ptr() as *mut _, v) };
            }
            for (half, o) in o.chunks_exact_mut(LANES).enumerate() {
                let lanes = |w: &[u32; WIDE]| -> V { std::array::from_fn(|l| w[half * LANES + l]) };
                lanes_mod(words.each_ref().map(lanes), modulus, o);
            }
        }
    }
    shards_avx2(chunks.remainder(), modulus, outs.into_remainder())
}

/// `ids` (a multiple of eight long) as its chunks of eight.
#[inline(always)]
fn eights<const K: usize>(ids: &[u64]) -> [&[u64; LANES]; K] {
    std::array::from_fn(|i| ids[i * LANES..][..LANES].try_into().expect("eight ids"))
}

/// The shard of each id, `int(md5(str(id))) mod n`, into `out` (as long as `ids`).
pub fn shards(ids: &[u64], n: u32, out: &mut [u32]) {
    assert_eq!(ids.len(), out.len());
    assert!(n > 0);
    let modulus = Modulus::new(n);
    use crate::simd::Simd;
    match Simd::detect() {
        // SAFETY: the CPU has the level's features (`Simd::detect`).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { shards_avx512(ids, modulus, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { shards_avx2(ids, modulus, out) },
        Simd::Portable => shards_impl(ids, modulus, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::routing::digest_u128;

    /// The shards of `ids` by the dispatched path and by every path this CPU can run
    /// (portable, AVX2, AVX-512), each named.
    fn every_path(ids: &[u64], n: u32) -> Vec<(&'static str, Vec<u32>)> {
        let run = |f: &dyn Fn(&mut [u32])| {
            let mut out = vec![0u32; ids.len()];
            f(&mut out);
            out
        };
        let m = Modulus::new(n);
        let mut paths = vec![
            ("dispatched", run(&|o| shards(ids, n, o))),
            ("portable", run(&|o| shards_impl(ids, m, o))),
        ];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") {
                // SAFETY: the CPU has AVX2 (and AVX-512F and DQ below), checked.
                paths.push(("avx2", run(&|o| unsafe { shards_avx2(ids, m, o) })));
                if has!("avx512f") && has!("avx512dq") {
                    paths.push(("avx512", run(&|o| unsafe { shards_avx512(ids, m, o) })));
                }
            }
        }
        paths
    }

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
            9_999_999_999,
            10_000_000_000,
            10_000_000_001,
            10_000_000_099,
            99_999_999_999,
            100_000_000_000,
        ];
        ids.extend((1..20).flat_map(|k| {
            let p = 10u64.pow(k);
            [p - 1, p, p + 1, p + 10]
        }));
        ids.extend((0..5000).map(|_| r.next_u64()));
        ids.extend((0..5000).map(|_| r.next_u64() >> 16));
        ids.extend((0..500).map(|_| r.below(1_000_000)));
        for l in 0..LANES {
            let chunk: [u64; LANES] = std::array::from_fn(|i| ids[(l * 8 + i) % ids.len()]);
            let d = digests(&chunk);
            for i in 0..LANES {
                assert_eq!(d[i], digest_u128(chunk[i]), "id {}", chunk[i]);
            }
        }
        for n in [1u32, 2, 3, 4, 7, 16, 1000, 1 << 31, u32::MAX] {
            for (path, out) in every_path(&ids, n) {
                for (id, s) in ids.iter().zip(&out) {
                    let want = (digest_u128(*id) % n as u128) as u32;
                    assert_eq!(*s, want, "{path}: id {id} n {n}");
                }
            }
        }
    }

    /// Chunks of sixteen ids of one length take the all-lanes block builder: every
    /// length, its edges, and chunks where one id differs (the per-lane path).
    #[test]
    fn ids_of_one_length_agree_with_the_md5_crate() {
        let mut r = Rng::new(7);
        for len in 1..=20u32 {
            let lower = if len == 1 { 0 } else { 10u64.pow(len - 1) };
            let upper = 10u64.checked_pow(len).map_or(u64::MAX, |u| u - 1);
            let mut ids = vec![lower, upper, lower + 1, upper - 1];
            ids.extend((0..28).map(|_| lower + r.below(upper - lower)));
            // The second chunk of 32: ids next to multiples of 10^8 and 10^16, where
            // the AVX-512 limbs' quotient through f64 is one off either way, and for
            // twenty digits ids known to need each correction (found by search: the
            // quotient one low for the first six, one high for the last three).
            if len == 20 {
                ids.extend([
                    11187032160400000000,
                    10492401570000000000,
                    10990585512400000000,
                    11437495870800000000,
                    12155254525200000000,
                    11021360245200000000,
                    16277534333399999999,
                    16557966728299999999,
                    10992981713599999999,
                ]);
            }
            for step in [100_000_000u64, 10u64.pow(16)] {
                for _ in 0..5 {
                    let base = lower + r.below(upper - lower);
                    let base = base - base % step;
                    let near = [base.wrapping_sub(1), base, base + 1];
                    ids.extend(near.map(|x| x.clamp(lower, upper)));
                }
            }
            ids.extend((ids.len()..64).map(|_| lower + r.below(upper - lower)));
            ids.truncate(64);
            let mut mixed = ids.clone();
            mixed[20] = if len == 20 { 7 } else { upper + 1 };
            assert_eq!(common_len(&ids[..32]), Some(len as usize));
            for ids in [ids, mixed] {
                for n in [3u32, 4] {
                    for (path, out) in every_path(&ids, n) {
                        for (id, s) in ids.iter().zip(&out) {
                            let want = (digest_u128(*id) % n as u128) as u32;
                            assert_eq!(*s, want, "{path}: id {id} len {len} n {n}");
                        }
                    }
                }
                assert_eq!(ids.len(), 64);
                assert_eq!(
                    common_len(&ids[32..]),
                    Some(len as usize),
                    "second chunk is uniform"
                );
            }
        }
    }

    #[test]
    fn barrett_is_exact() {
        let mut r = Rng::new(12);
        for n in [
            1u32,
            2,
            3,
            4,
            7,
            64,
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
