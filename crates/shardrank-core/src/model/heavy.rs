//! The heavy ranker: an MLP (F -> H1 -> H2 -> 4 heads) predicting like, retweet, reply
//! and negative feedback, combined with weights into one score.
//!
//! Scoring is batched: rows go through in blocks of [`BLOCK`], each weight row is read
//! once per block, and the inner loop runs over output units (contiguous, so it
//! vectorises). Every output is summed over its inputs in the same order whatever the
//! batch or block, so a candidate gets the same bits on any shard. No allocation per
//! candidate: callers keep a [`Scratch`].
//!
//! Every multiply-add is fused (`f32::mul_add`: one rounding), which is the same bits
//! whether the CPU does it in one instruction (x86-64 with FMA, every x86 since 2013;
//! aarch64) or not (a correctly rounded software fma, much slower): shards on different
//! CPUs still agree on every score. Fused, the kernel does half the instructions.

use super::file::{write, Reader};
use super::light::check_feature_names;
use super::{sigmoid, ModelError};
use crate::features::{FEATURE_NAMES, NUM_FEATURES};
/// The kernels: all give the same bits (the same fused operations in the same order per
/// output), they differ in how many lanes run at once.
use crate::simd::Simd as Kernel;
use std::collections::HashMap;

pub const HEADS: [&str; 4] = ["like", "retweet", "reply", "negative_feedback"];
/// The published home-timeline weights for the heads.
pub const DEFAULT_HEAD_WEIGHTS: [f32; 4] = [0.5, 1.0, 13.5, -74.0];
const BLOCK: usize = 8;

/// Whether scoring runs on hardware fused multiply-adds (the AVX2+FMA or AVX-512
/// kernels), else the portable path: the same bits, with software fused multiply-adds
/// on x86 CPUs without FMA.
pub fn hardware_fma() -> bool {
    Kernel::detect() != Kernel::Portable
}

/// The name of the kernel this CPU scores with (`portable`, `avx2+fma` or `avx512`).
pub fn kernel_name() -> &'static str {
    Kernel::detect().name()
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeavyModel {
    h1: usize,
    h2: usize,
    /// Input-major (transposed from the file's `[out, in]`): `w1[k * h1 + j]`.
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    w3: Vec<f32>,
    b3: [f32; 4],
    pub head_weights: [f32; 4],
}

/// Reusable buffers for [`HeavyModel::score_batch`].
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    a1: Vec<f32>,
    a2: Vec<f32>,
}

/// Transposes a row-major `[rows, cols]` matrix.
fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// Rows and outputs of the register-blocked micro-kernel: 4 x 16 accumulators fit in
/// the vector registers (8 AVX registers of 8 lanes), so each weight row is loaded once
/// per 4 candidates and no accumulator goes back to memory inside the input loop.
const MR: usize = 4;
const NR: usize = 16;

/// `out[r][j] = relu(b[j] + sum_k x[r][k] * w[k][j])` for the rows of one block, `w`
/// input-major. Every output sums bias first, then inputs in order, in every path
/// (blocked or tail), so the bits do not depend on where a row falls.
#[inline(always)]
fn dense_relu(x: &[f32], rows: usize, n_in: usize, w: &[f32], b: &[f32], out: &mut [f32]) {
    let n_out = b.len();
    let mut r0 = 0;
    while r0 < rows {
        let rb = (rows - r0).min(MR);
        let mut j0 = 0;
        while j0 + NR <= n_out {
            let mut acc = [[0.0f32; NR]; MR];
            for a in acc.iter_mut() {
                a.copy_from_slice(&b[j0..j0 + NR]);
            }
            for k in 0..n_in {
                let wk: &[f32; NR] = w[k * n_out + j0..k * n_out + j0 + NR]
                    .try_into()
                    .expect("NR wide");
                for (r, a) in acc.iter_mut().enumerate() {
                    // Rows past the block's end compute garbage that is never stored.
                    let xv = if r < rb { x[(r0 + r) * n_in + k] } else { 0.0 };
                    for j in 0..NR {
                        a[j] = xv.mul_add(wk[j], a[j]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(rb) {
                let o = &mut out[(r0 + r) * n_out + j0..(r0 + r) * n_out + j0 + NR];
                for j in 0..NR {
                    o[j] = a[j].max(0.0);
                }
            }
            j0 += NR;
        }
        // Outputs beyond a multiple of NR (a model with odd hidden sizes).
        for r in r0..r0 + rb {
            for j in j0..n_out {
                let mut v = b[j];
                for k in 0..n_in {
                    v = x[r * n_in + k].mul_add(w[k * n_out + j], v);
                }
                out[r * n_out + j] = v.max(0.0);
            }
        }
        r0 += MR;
    }
}

/// The same computation as [`dense_relu`] for a compile-time shape: every bound is a
/// constant, so the accumulators stay in registers and no index is checked. Same
/// order of additions per output (bias, then inputs in order): the same bits.
#[inline(always)]
fn dense_relu_fixed<const NIN: usize, const NOUT: usize>(
    x: &[[[f32; NIN]; MR]],
    w: &[[f32; NOUT]],
    b: &[f32; NOUT],
    out: &mut [[[f32; NOUT]; MR]],
) {
    let w: &[[f32; NOUT]; NIN] = w.try_into().expect("NIN rows");
    for (xg, og) in x.iter().zip(out.iter_mut()) {
        for jb in 0..NOUT / NR {
            let j0 = jb * NR;
            let mut acc = [[0.0f32; NR]; MR];
            for a in acc.iter_mut() {
                a.copy_from_slice(&b[j0..j0 + NR]);
            }
            for (k, wk) in w.iter().enumerate() {
                for r in 0..MR {
                    let xv = xg[r][k];
                    for j in 0..NR {
                        acc[r][j] = xv.mul_add(wk[j0 + j], acc[r][j]);
                    }
                }
            }
            for r in 0..MR {
                for j in 0..NR {
                    og[r][j0 + j] = acc[r][j].max(0.0);
                }
            }
        }
    }
}

/// [`dense_relu_fixed`] in AVX2 registers with hardware fused multiply-adds: the
/// compiler does not vectorise `mul_add` there (it spilled scalar fmas to the stack,
/// 20 times slower than the unfused vector code), so the 4 x 16 accumulators are
/// written out as eight 8-lane registers. The same fused operations in the same order:
/// the same bits.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dense_relu_fixed_fma<const NIN: usize, const NOUT: usize>(
    x: &[[[f32; NIN]; MR]],
    w: &[[f32; NOUT]],
    b: &[f32; NOUT],
    out: &mut [[[f32; NOUT]; MR]],
) {
    use core::arch::x86_64::*;
    let w: &[[f32; NOUT]; NIN] = w.try_into().expect("NIN rows");
    let zero = _mm256_setzero_ps();
    for (xg, og) in x.iter().zip(out.iter_mut()) {
        for jb in 0..NOUT / NR {
            let j0 = jb * NR;
            // SAFETY (all loads and stores): j0 + 16 <= NOUT, so both 8-lane halves
            // are inside the NOUT-wide rows.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_ps(b.as_ptr().add(j0)),
                    _mm256_loadu_ps(b.as_ptr().add(j0 + 8)),
                )
            };
            let mut acc = [[b0, b1]; MR];
            for (k, wk) in w.iter().enumerate() {
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_ps(wk.as_ptr().add(j0)),
                        _mm256_loadu_ps(wk.as_ptr().add(j0 + 8)),
                    )
                };
                for r in 0..MR {
                    let xv = _mm256_set1_ps(xg[r][k]);
                    acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
                }
            }
            for r in 0..MR {
                let o = og[r].as_mut_ptr();
                unsafe {
                    _mm256_storeu_ps(o.add(j0), _mm256_max_ps(acc[r][0], zero));
                    _mm256_storeu_ps(o.add(j0 + 8), _mm256_max_ps(acc[r][1], zero));
                }
            }
        }
    }
}

/// [`dense_relu_fixed`] in AVX-512 registers: a group's MR rows by 64 outputs are 16
/// accumulators of 16 lanes (of 32 registers), so each weight row is loaded once per
/// group and the two FMA ports have 16 independent sums to interleave. The same fused
/// operations in the same order: the same bits.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dense_relu_fixed_avx512<const NIN: usize, const NOUT: usize>(
    x: &[[[f32; NIN]; MR]],
    w: &[[f32; NOUT]],
    b: &[f32; NOUT],
    out: &mut [[[f32; NOUT]; MR]],
) {
    use core::arch::x86_64::*;
    /// Lanes per register, and registers per row of a 64-output block.
    const L: usize = 16;
    const Q: usize = 4;
    const { assert!(NOUT.is_multiple_of(L * Q)) };
    let w: &[[f32; NOUT]; NIN] = w.try_into().expect("NIN rows");
    let zero = _mm512_setzero_ps();
    for (xg, og) in x.iter().zip(out.iter_mut()) {
        for jb in 0..NOUT / (L * Q) {
            let j0 = jb * L * Q;
            // SAFETY (all loads and stores): j0 + 64 <= NOUT, so the four 16-lane
            // registers are inside the NOUT-wide rows.
            let bias: [__m512; Q] =
                std::array::from_fn(|q| unsafe { _mm512_loadu_ps(b.as_ptr().add(j0 + q * L)) });
            let mut acc = [bias; MR];
            for (k, wk) in w.iter().enumerate() {
                let wv: [__m512; Q] = std::array::from_fn(|q| unsafe {
                    _mm512_loadu_ps(wk.as_ptr().add(j0 + q * L))
                });
                for r in 0..MR {
                    let xv = _mm512_set1_ps(xg[r][k]);
                    for q in 0..Q {
                        acc[r][q] = _mm512_fmadd_ps(xv, wv[q], acc[r][q]);
                    }
                }
            }
            for (o, a) in og.iter_mut().zip(&acc) {
                for (q, &v) in a.iter().enumerate() {
                    unsafe {
                        _mm512_storeu_ps(o.as_mut_ptr().add(j0 + q * L), _mm512_max_ps(v, zero))
                    };
                }
            }
        }
    }
}

/// The four head logits of up to [`BLOCK`] rows of `a2` (`h2` wide, the scratch holds
/// BLOCK rows) with hardware FMA: a row's four heads in one 4-lane register, the
/// block's rows as independent sums, so the FMA ports are kept busy (a head is a
/// chain of h2 dependent multiply-adds) and the input needs only a broadcast load,
/// no shuffle (two rows per 8-lane register took three shuffles per multiply-add, and
/// the shuffle port bound the heads). Each lane sums bias, then inputs in order,
/// fused: the portable loop's bits.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn heads_fma(a2: &[f32], h2: usize, w3: &[f32], b3: [f32; 4], logits: &mut [[f32; 4]]) {
    use core::arch::x86_64::*;
    assert!(a2.len() >= BLOCK * h2 && w3.len() >= 4 * h2 && logits.len() <= BLOCK);
    let b = _mm_loadu_ps(b3.as_ptr());
    let mut acc = [b; BLOCK];
    for k in 0..h2 {
        // SAFETY: 4 * k + 4 <= w3.len() and r * h2 + k < BLOCK * h2 <= a2.len(),
        // asserted above.
        let w = unsafe { _mm_loadu_ps(w3.as_ptr().add(4 * k)) };
        // Rows past `logits.len()` sum stale scratch and are never stored.
        for (r, a) in acc.iter_mut().enumerate() {
            let x = _mm_set1_ps(unsafe { *a2.get_unchecked(r * h2 + k) });
            *a = _mm_fmadd_ps(x, w, *a);
        }
    }
    for (l, a) in logits.iter_mut().zip(&acc) {
        // SAFETY: 4 floats into a 4-float array.
        unsafe { _mm_storeu_ps(l.as_mut_ptr(), *a) };
    }
}

/// The blended scores of up to [`BLOCK`] rows' head logits into `out`, four rows (16
/// logits) per register: the portable loop's operations (each head's sigmoid through
/// `fastmath::exp`, then `s = 0; s += w_h * p_h` head by head), none fused, lane by
/// lane, so the same bits. One row at a time, the four sigmoids' scalar `exp` were as
/// much time as the heads' multiply-adds.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn blend_avx512(logits: &[[f32; 4]; BLOCK], head_weights: [f32; 4], out: &mut [f32]) {
    use core::arch::x86_64::*;
    const { assert!(BLOCK.is_multiple_of(4)) };
    // SAFETY: 4 floats from a 4-float array.
    let w = _mm512_broadcast_f32x4(unsafe { _mm_loadu_ps(head_weights.as_ptr()) });
    let one = _mm512_set1_ps(1.0);
    let sign = _mm512_set1_epi32(i32::MIN);
    let mut blended = [0.0f32; BLOCK];
    for g in 0..BLOCK / 4 {
        // Lane 4r + h: row r's head h. SAFETY: rows 4g..4g+4 of the BLOCK-row array.
        let l = unsafe { _mm512_loadu_ps(logits[4 * g].as_ptr()) };
        // sigmoid(l) = 1 / (1 + exp(-l)); -l flips the sign bit, as f32's negation.
        let neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(l), sign));
        let p = _mm512_div_ps(one, _mm512_add_ps(one, crate::fastmath::exp_avx512(neg)));
        let t = _mm512_mul_ps(w, p);
        // Head by head into lane 4r: ((((0 + t0) + t1) + t2) + t3).
        let mut acc = _mm512_add_ps(_mm512_setzero_ps(), t);
        acc = _mm512_add_ps(acc, _mm512_permute_ps::<0b01_01_01_01>(t));
        acc = _mm512_add_ps(acc, _mm512_permute_ps::<0b10_10_10_10>(t));
        acc = _mm512_add_ps(acc, _mm512_permute_ps::<0b11_11_11_11>(t));
        let rows = _mm512_maskz_compress_ps(0x1111, acc);
        // SAFETY: 4 floats into blended[4g..4g+4].
        unsafe {
            _mm_storeu_ps(
                blended.as_mut_ptr().add(4 * g),
                _mm512_castps512_ps128(rows),
            )
        };
    }
    out.copy_from_slice(&blended[..out.len()]);
}

/// The fixed-shape layer on `kernel`.
#[inline(always)]
fn fixed<const NIN: usize, const NOUT: usize>(
    kernel: Kernel,
    x: &[[[f32; NIN]; MR]],
    w: &[[f32; NOUT]],
    b: &[f32; NOUT],
    out: &mut [[[f32; NOUT]; MR]],
) {
    match kernel {
        // SAFETY: a kernel is only chosen under its CPU check ([`Kernel::detect`]).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { dense_relu_fixed_fma(x, w, b, out) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { dense_relu_fixed_avx512(x, w, b, out) },
        Kernel::Portable => dense_relu_fixed(x, w, b, out),
    }
}

/// The hidden width the default model has and the fixed-shape kernel is built for.
const FIXED_HIDDEN: usize = 64;

impl HeavyModel {
    /// Builds a model from `[out, in]` matrices, as stored in files.
    #[allow(clippy::too_many_arguments)]
    pub fn from_layers(
        h1: usize,
        h2: usize,
        w1: &[f32],
        b1: &[f32],
        w2: &[f32],
        b2: &[f32],
        w3: &[f32],
        b3: [f32; 4],
        head_weights: [f32; 4],
    ) -> Self {
        assert_eq!(w1.len(), h1 * NUM_FEATURES);
        assert_eq!(w2.len(), h2 * h1);
        assert_eq!(w3.len(), 4 * h2);
        HeavyModel {
            h1,
            h2,
            w1: transpose(w1, h1, NUM_FEATURES),
            b1: b1.to_vec(),
            w2: transpose(w2, h2, h1),
            b2: b2.to_vec(),
            w3: transpose(w3, 4, h2),
            b3,
            head_weights,
        }
    }

    pub fn hidden(&self) -> (usize, usize) {
        (self.h1, self.h2)
    }

    /// The four head probabilities of one feature vector (unbatched; for tests and
    /// explanations).
    pub fn heads(&self, x: &[f32; NUM_FEATURES]) -> [f32; 4] {
        let mut s = Scratch::default();
        let mut logits = [[0.0f32; 4]; 1];
        self.forward_block(x, 1, &mut s, &mut logits, Kernel::Portable);
        logits[0].map(sigmoid)
    }

    /// Scores `xs` (a row of NUM_FEATURES per candidate) into `out`.
    pub fn score_batch(&self, xs: &[[f32; NUM_FEATURES]], out: &mut [f32], scratch: &mut Scratch) {
        assert_eq!(xs.len(), out.len());
        self.score_batch_on(Kernel::detect(), xs, out, scratch)
    }

    /// Scores on `kernel`, which must be one this CPU has ([`Kernel::detect`] or
    /// below it).
    fn score_batch_on(
        &self,
        kernel: Kernel,
        xs: &[[f32; NUM_FEATURES]],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        match kernel {
            // SAFETY: the CPU has the kernel's features. The fused multiply-adds give
            // the portable path's bits, 8 or 16 lanes at a time.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { self.score_batch_avx2(xs, out, scratch) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { self.score_batch_avx512(xs, out, scratch) },
            Kernel::Portable => self.score_batch_impl(xs, out, scratch, Kernel::Portable),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn score_batch_avx2(
        &self,
        xs: &[[f32; NUM_FEATURES]],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        self.score_batch_impl(xs, out, scratch, Kernel::Avx2)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn score_batch_avx512(
        &self,
        xs: &[[f32; NUM_FEATURES]],
        out: &mut [f32],
        scratch: &mut Scratch,
    ) {
        self.score_batch_impl(xs, out, scratch, Kernel::Avx512)
    }

    /// Inlined into each kernel's `target_feature` function, so that the whole batch
    /// loop is compiled for that kernel's instructions.
    #[inline(always)]
    fn score_batch_impl(
        &self,
        xs: &[[f32; NUM_FEATURES]],
        out: &mut [f32],
        scratch: &mut Scratch,
        kernel: Kernel,
    ) {
        let mut logits = [[0.0f32; 4]; BLOCK];
        for (xb, ob) in xs.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
            let rows = xb.len();
            self.forward_block(xb.as_flattened(), rows, scratch, &mut logits, kernel);
            #[cfg(target_arch = "x86_64")]
            if kernel == Kernel::Avx512 {
                // SAFETY: the AVX-512 kernel is only chosen on CPUs with AVX-512F. Rows
                // past `rows` blend stale logits that are not stored.
                unsafe { blend_avx512(&logits, self.head_weights, ob) };
                continue;
            }
            for (o, l) in ob.iter_mut().zip(&logits[..rows]) {
                let mut s = 0.0f32;
                for (hw, &logit) in self.head_weights.iter().zip(l) {
                    s += hw * sigmoid(logit);
                }
                *o = s;
            }
        }
    }

    #[inline(always)]
    fn forward_block(
        &self,
        x: &[f32],
        rows: usize,
        s: &mut Scratch,
        logits: &mut [[f32; 4]],
        kernel: Kernel,
    ) {
        s.a1.resize(BLOCK * self.h1, 0.0);
        s.a2.resize(BLOCK * self.h2, 0.0);
        if self.h1 == FIXED_HIDDEN && self.h2 == FIXED_HIDDEN {
            // Pad to whole groups of MR rows so the fixed kernel has no partial group.
            let groups = rows.div_ceil(MR);
            s.x.clear();
            s.x.extend_from_slice(&x[..rows * NUM_FEATURES]);
            s.x.resize(groups * MR * NUM_FEATURES, 0.0);
            let (xg, _) = s.x.as_chunks::<NUM_FEATURES>();
            let (xg, _) = xg.as_chunks::<MR>();
            let (w1, _) = self.w1.as_chunks::<FIXED_HIDDEN>();
            let (w2, _) = self.w2.as_chunks::<FIXED_HIDDEN>();
            let b1: &[f32; FIXED_HIDDEN] = self.b1[..].try_into().expect("64 wide");
            let b2: &[f32; FIXED_HIDDEN] = self.b2[..].try_into().expect("64 wide");
            {
                let (a1, _) = s.a1.as_chunks_mut::<FIXED_HIDDEN>();
                let (a1, _) = a1.as_chunks_mut::<MR>();
                fixed::<NUM_FEATURES, FIXED_HIDDEN>(kernel, xg, w1, b1, &mut a1[..groups]);
            }
            let (a1, _) = s.a1.as_chunks::<FIXED_HIDDEN>();
            let (a1, _) = a1.as_chunks::<MR>();
            let (a2, _) = s.a2.as_chunks_mut::<FIXED_HIDDEN>();
            let (a2, _) = a2.as_chunks_mut::<MR>();
            fixed::<FIXED_HIDDEN, FIXED_HIDDEN>(kernel, &a1[..groups], w2, b2, &mut a2[..groups]);
        } else {
            dense_relu(x, rows, NUM_FEATURES, &self.w1, &self.b1, &mut s.a1);
            dense_relu(&s.a1, rows, self.h1, &self.w2, &self.b2, &mut s.a2);
        }
        #[cfg(target_arch = "x86_64")]
        if kernel != Kernel::Portable {
            // SAFETY: both vector kernels are only chosen on CPUs with AVX2 and FMA.
            unsafe { heads_fma(&s.a2, self.h2, &self.w3, self.b3, &mut logits[..rows]) };
            return;
        }
        for (r, l) in logits.iter_mut().enumerate().take(rows) {
            *l = self.b3;
            let a = &s.a2[r * self.h2..(r + 1) * self.h2];
            for (k, &av) in a.iter().enumerate() {
                let wk = &self.w3[k * 4..k * 4 + 4];
                for (lh, wh) in l.iter_mut().zip(wk) {
                    *lh = av.mul_add(*wh, *lh);
                }
            }
        }
    }

    pub fn from_safetensors(bytes: &[u8], path: &str) -> Result<Self, ModelError> {
        let r = Reader::new(bytes, path)?;
        check_feature_names(&r, path)?;
        let (w1, s1) = r.f32s("layer1.weight", &[None, Some(NUM_FEATURES)])?;
        let h1 = s1[0];
        let (b1, _) = r.f32s("layer1.bias", &[Some(h1)])?;
        let (w2, s2) = r.f32s("layer2.weight", &[None, Some(h1)])?;
        let h2 = s2[0];
        let (b2, _) = r.f32s("layer2.bias", &[Some(h2)])?;
        let (w3, _) = r.f32s("heads.weight", &[Some(4), Some(h2)])?;
        let (b3, _) = r.f32s("heads.bias", &[Some(4)])?;
        let (hw, _) = r.f32s("head_weights", &[Some(4)])?;
        let four = |v: &[f32]| [v[0], v[1], v[2], v[3]];
        Ok(HeavyModel::from_layers(
            h1,
            h2,
            &w1,
            &b1,
            &w2,
            &b2,
            &w3,
            four(&b3),
            four(&hw),
        ))
    }

    pub fn to_safetensors(&self) -> Vec<u8> {
        let (h1, h2) = (self.h1, self.h2);
        let w1 = transpose(&self.w1, NUM_FEATURES, h1);
        let w2 = transpose(&self.w2, h1, h2);
        let w3 = transpose(&self.w3, h2, 4);
        let meta = HashMap::from([
            ("model".to_string(), "shardrank.heavy.v1".to_string()),
            ("features".to_string(), FEATURE_NAMES.join(",")),
            ("heads".to_string(), HEADS.join(",")),
        ]);
        write(
            &[
                ("layer1.weight", vec![h1, NUM_FEATURES], &w1),
                ("layer1.bias", vec![h1], &self.b1),
                ("layer2.weight", vec![h2, h1], &w2),
                ("layer2.bias", vec![h2], &self.b2),
                ("heads.weight", vec![4, h2], &w3),
                ("heads.bias", vec![4], &self.b3),
                ("head_weights", vec![4], &self.head_weights),
            ],
            meta,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A plain, obviously-correct forward pass over the `[out, in]` file layout.
    fn reference(m: &HeavyModel, x: &[f32; NUM_FEATURES]) -> f64 {
        let bytes = m.to_safetensors();
        let r = Reader::new(&bytes, "ref").unwrap();
        let get = |n: &str| {
            r.f32s(n, &[None; 2][..if n.ends_with("weight") { 2 } else { 1 }])
                .unwrap()
                .0
        };
        let layer = |w: &[f32], b: &[f32], input: &[f64], relu: bool| -> Vec<f64> {
            (0..b.len())
                .map(|j| {
                    let z = b[j] as f64
                        + (0..input.len())
                            .map(|k| w[j * input.len() + k] as f64 * input[k])
                            .sum::<f64>();
                    if relu {
                        z.max(0.0)
                    } else {
                        z
                    }
                })
                .collect()
        };
        let a0: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let a1 = layer(&get("layer1.weight"), &get("layer1.bias"), &a0, true);
        let a2 = layer(&get("layer2.weight"), &get("layer2.bias"), &a1, true);
        let l = layer(&get("heads.weight"), &get("heads.bias"), &a2, false);
        let hw = get("head_weights");
        (0..4).map(|h| hw[h] as f64 / (1.0 + (-l[h]).exp())).sum()
    }

    fn rows(n: usize, seed: u64) -> Vec<[f32; NUM_FEATURES]> {
        let mut r = Rng::new(seed);
        (0..n)
            .map(|_| std::array::from_fn(|_| (r.f64() * 4.0 - 1.0) as f32))
            .collect()
    }

    #[test]
    fn batched_scores_match_an_independent_forward_pass() {
        let m = super::super::defaults::heavy();
        let xs = rows(37, 1);
        let mut out = vec![0.0; xs.len()];
        m.score_batch(&xs, &mut out, &mut Scratch::default());
        for (x, &got) in xs.iter().zip(&out) {
            let want = reference(&m, x);
            assert!(
                (got as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                "got {got} want {want}"
            );
        }
    }

    #[test]
    fn a_candidate_scores_the_same_bits_in_any_batch() {
        let m = super::super::defaults::heavy();
        let xs = rows(50, 2);
        let mut all = vec![0.0; 50];
        m.score_batch(&xs, &mut all, &mut Scratch::default());
        for start in [0usize, 3, 17, 49] {
            let mut one = vec![0.0; 50 - start];
            m.score_batch(&xs[start..], &mut one, &mut Scratch::default());
            for (a, b) in all[start..].iter().zip(&one) {
                assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }

    #[test]
    fn fixed_shape_kernel_gives_the_generic_bits() {
        let m = super::super::defaults::heavy();
        let xs = rows(8, 4);
        let flat = xs.as_flattened();
        let mut s = Scratch::default();
        let mut fixed = [[0.0f32; 4]; 8];
        m.forward_block(flat, 7, &mut s, &mut fixed, Kernel::Portable);
        // The generic kernel on the same rows.
        let mut a1 = vec![0.0; BLOCK * 64];
        let mut a2 = vec![0.0; BLOCK * 64];
        dense_relu(flat, 7, NUM_FEATURES, &m.w1, &m.b1, &mut a1);
        dense_relu(&a1, 7, 64, &m.w2, &m.b2, &mut a2);
        assert_eq!(
            a2[..7 * 64].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            s.a2[..7 * 64]
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
    }

    /// Every kernel this CPU has (the detected one and those below it) gives the
    /// portable bits.
    #[test]
    fn every_kernel_gives_the_portable_bits() {
        let m = super::super::defaults::heavy();
        // 61: a last block of 5 rows, an odd one out in the two-rows-per-register heads.
        let xs = rows(61, 3);
        let mut want = vec![0.0; 61];
        m.score_batch_on(Kernel::Portable, &xs, &mut want, &mut Scratch::default());
        let detected = Kernel::detect();
        #[cfg(target_arch = "x86_64")]
        let kernels = match detected {
            Kernel::Avx512 => vec![Kernel::Avx2, Kernel::Avx512],
            Kernel::Avx2 => vec![Kernel::Avx2],
            Kernel::Portable => vec![],
        };
        #[cfg(not(target_arch = "x86_64"))]
        let kernels: Vec<Kernel> = vec![];
        eprintln!("kernels beside the portable one: {kernels:?} (detected {detected:?})");
        for kernel in kernels {
            let mut got = vec![0.0; 61];
            m.score_batch_on(kernel, &xs, &mut got, &mut Scratch::default());
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{kernel:?}"
            );
        }
        let mut dispatched = vec![0.0; 61];
        m.score_batch(&xs, &mut dispatched, &mut Scratch::default());
        assert_eq!(
            dispatched.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    /// The vector blend against the portable loop, on logits from far below to far
    /// above the sigmoid's saturation, both zeros, and every block length.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_blend_gives_the_portable_bits() {
        if Kernel::detect() != Kernel::Avx512 {
            eprintln!("no AVX-512 on this CPU: nothing to compare");
            return;
        }
        let mut r = Rng::new(9);
        let edges = [0.0, -0.0, 1e-30, -1e-30, 87.5, -88.5, 200.0, -200.0];
        for round in 0..2_000 {
            let rows = round % BLOCK + 1;
            let logits: [[f32; 4]; BLOCK] = std::array::from_fn(|_| {
                std::array::from_fn(|_| match r.below(8) {
                    0 => edges[r.below(edges.len() as u64) as usize],
                    _ => ((r.f64() - 0.5) * 40.0) as f32,
                })
            });
            let mut got = vec![f32::NAN; rows];
            // SAFETY: AVX-512F, checked above.
            unsafe { blend_avx512(&logits, DEFAULT_HEAD_WEIGHTS, &mut got) };
            for (g, l) in got.iter().zip(&logits) {
                let mut want = 0.0f32;
                for (hw, &logit) in DEFAULT_HEAD_WEIGHTS.iter().zip(l) {
                    want += hw * sigmoid(logit);
                }
                assert_eq!(g.to_bits(), want.to_bits(), "logits {l:?}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn file_round_trip_and_wrong_shape() {
        let m = super::super::defaults::heavy();
        let back = HeavyModel::from_safetensors(&m.to_safetensors(), "h").unwrap();
        assert_eq!(back, m);

        // layer2 expecting 32 inputs while layer1 has 64 units.
        let h1 = 64;
        let w1 = vec![0.0; h1 * NUM_FEATURES];
        let w2 = vec![0.0; 64 * 32];
        let bytes = write(
            &[
                ("layer1.weight", vec![h1, NUM_FEATURES], &w1),
                ("layer1.bias", vec![h1], &vec![0.0; h1]),
                ("layer2.weight", vec![64, 32], &w2),
            ],
            HashMap::new(),
        );
        let err = HeavyModel::from_safetensors(&bytes, "models/heavy.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`layer2.weight`") && err.contains("[64, 32]") && err.contains("[*, 64]"),
            "{err}"
        );
        assert!(err.contains("models/heavy.safetensors"), "{err}");
    }
}
