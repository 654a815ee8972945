//! `exp` and `ln` for f32 in plain arithmetic, for the features and the sigmoid.
//!
//! libm's `expf`/`log1pf` are calls the compiler cannot inline or vectorise, and the
//! light ranker needs three of them per candidate (age, freshness, sigmoid): at 100,000
//! candidates they were a third of a shard's light stage. These are the Cephes
//! single-precision polynomials (as in SLEEF, Eigen and `wide`), branch-free so that a
//! loop over a batch vectorises, within 2 ulp of libm over the ranges the features use
//! (tested below). Every feature and both rankers use these, so every shard and every
//! path computes the same bits.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 x 2^23: adding and subtracting it rounds an f32 of magnitude < 2^22 to an
/// integer without a call to `roundf` (SSE2 has no rounding instruction).
const ROUND: f32 = 12_582_912.0;

/// The polynomial of `exp` on the reduced argument, highest power first (Horner).
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];

/// e^x. Arguments are clamped to [-87, 88] (results stay normal floats: below that
/// the features need no more than "about 0").
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    // 2^n from the exponent bits; n is in [-126, 127] after the clamp.
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`exp`] of 16 lanes in AVX-512 registers: the same operations in the same order,
/// none fused, so every lane has [`exp`]'s bits (NaN included: the clamp's operands are
/// ordered so that a NaN goes through, as `f32::clamp` lets it).
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub fn exp_avx512(x: core::arch::x86_64::__m512) -> core::arch::x86_64::__m512 {
    use core::arch::x86_64::*;
    let c = _mm512_set1_ps;
    // min/max return their second operand when either is NaN.
    let x = _mm512_max_ps(c(-87.0), _mm512_min_ps(c(88.0), x));
    let n = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(x, c(LOG2E)), c(ROUND)),
        c(ROUND),
    );
    let r = _mm512_sub_ps(
        _mm512_sub_ps(x, _mm512_mul_ps(n, c(LN2_HI))),
        _mm512_mul_ps(n, c(LN2_LO)),
    );
    let mut p = c(EXP_POLY[0]);
    for &k in &EXP_POLY[1..] {
        p = _mm512_add_ps(_mm512_mul_ps(p, r), c(k));
    }
    let y = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(p, r), r), r),
        c(1.0),
    );
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvttps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(y, _mm512_castsi512_ps(e))
}

/// ln(x) for a positive, normal `x` (the features pass counts + 1 and ages + 1).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 126;
    // The mantissa as a number in [0.5, 1).
    let m = f32::from_bits((bits & 0x807f_ffff) | 0x3f00_0000);
    let small = m < SQRT_HALF;
    e -= small as i32;
    let m = if small { m + m - 1.0 } else { m - 1.0 };
    let e = e as f32;
    let z = m * m;
    let mut p = 7.037_683_6e-2f32;
    p = p * m - 1.151_461e-1;
    p = p * m + 1.167_699_9e-1;
    p = p * m - 1.242_014_1e-1;
    p = p * m + 1.424_932_3e-1;
    p = p * m - 1.666_805_8e-1;
    p = p * m + 2.000_071_4e-1;
    p = p * m - 2.499_999_4e-1;
    p = p * m + 3.333_333e-1;
    let mut y = p * m * z;
    y += LN2_LO * e;
    y -= 0.5 * z;
    m + y + LN2_HI * e
}

/// ln(1 + x) for x >= 0 (1 + x rounds for x below 2^-24, where the features do not
/// care).
#[inline(always)]
pub fn ln_1p(x: f32) -> f32 {
    ln(1.0 + x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// Every 97th float in [lo, hi] (and both ends), as the bits walk.
    fn sweep(lo: f32, hi: f32) -> impl Iterator<Item = f32> {
        (lo.to_bits()..=hi.to_bits())
            .step_by(97)
            .map(f32::from_bits)
            .chain([lo, hi])
    }

    #[test]
    fn exp_is_within_two_ulps_of_libm() {
        for x in sweep(0.0, 88.0).chain(sweep(0.0, 87.0).map(|x| -x)) {
            let (got, want) = (exp(x), x.exp());
            assert!(ulps(got, want) <= 2, "exp({x}) = {got}, libm {want}");
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_exp_gives_the_scalar_bits() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let special = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            87.0,
            -87.0,
            88.0,
            88.5,
            -87.5,
            -1000.0,
            1000.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
        ];
        let xs: Vec<f32> = special
            .into_iter()
            .chain(sweep(0.0, 100.0))
            .chain(sweep(0.0, 100.0).map(|x| -x))
            .collect();
        for lanes in xs.chunks(16) {
            let mut v = [0.0f32; 16];
            v[..lanes.len()].copy_from_slice(lanes);
            let mut got = [0.0f32; 16];
            // SAFETY: AVX-512F is checked above; 16-float arrays on both sides.
            unsafe {
                use core::arch::x86_64::*;
                let r = exp_avx512(_mm512_loadu_ps(v.as_ptr()));
                _mm512_storeu_ps(got.as_mut_ptr(), r);
            }
            for (x, g) in v.iter().zip(got) {
                assert_eq!(
                    g.to_bits(),
                    exp(*x).to_bits(),
                    "exp({x}): {g} vs {}",
                    exp(*x)
                );
            }
        }
    }

    #[test]
    fn exp_clamps_instead_of_overflowing() {
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
        assert_eq!(exp(f32::NEG_INFINITY), exp(-87.0));
    }

    #[test]
    fn ln_is_within_two_ulps_of_libm() {
        for x in sweep(f32::MIN_POSITIVE, 4e9) {
            let (got, want) = (ln(x), x.ln());
            assert!(
                ulps(got, want) <= 2 || (got - want).abs() < 1e-7,
                "ln({x}) = {got}, libm {want}"
            );
        }
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(ln_1p(0.0), 0.0);
    }

    #[test]
    fn ln_1p_of_counts_matches_libm() {
        for n in (0u32..100_000).chain([1 << 20, 1 << 24, u32::MAX]) {
            let x = n as f32;
            let (got, want) = (ln_1p(x), x.ln_1p());
            assert!(ulps(got, want) <= 2, "ln_1p({n}) = {got}, libm {want}");
        }
    }
}
