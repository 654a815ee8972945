//! A small, fixed pseudo-random generator for the corpus.
//!
//! The corpus must be the same forever for a given seed (benchmarks on different days
//! and outside tools compare against it), so it cannot depend on a crate whose value
//! stream may change between versions. SplitMix64 is 10 lines, passes BigCrush, and is
//! what Java and many generators use to seed; the samplers below are closed-form.

#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// A generator for a sub-stream, independent of the others drawn from one seed.
    pub fn fork(seed: u64, stream: u64) -> Self {
        Rng(mix64(
            seed ^ mix64(stream.wrapping_add(0x5851_F42D_4C95_7F2D)),
        ))
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean.
    #[inline]
    pub fn exp(&mut self, mean: f64) -> f64 {
        -(1.0 - self.f64()).ln() * mean
    }

    /// Pareto with minimum 1 and tail index `alpha` (heavy-tailed).
    #[inline]
    pub fn pareto(&mut self, alpha: f64) -> f64 {
        (1.0 - self.f64()).powf(-1.0 / alpha)
    }

    /// A rank in [0, n) drawn from a power law with density ~ (rank+1)^-s, s in (0, 1):
    /// rank 0 is the most popular. Inverse CDF of the continuous law, so O(1).
    #[inline]
    pub fn zipf(&mut self, n: u64, s: f64) -> u64 {
        Zipf::new(n, s).sample(self)
    }
}

/// [`Rng::zipf`] with its constants computed once, for drawing many ranks of one law.
#[derive(Clone, Copy, Debug)]
pub struct Zipf {
    n: u64,
    top: f64,
    inv_a: f64,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Zipf {
        let a = 1.0 - s;
        Zipf {
            n,
            top: ((n + 1) as f64).powf(a) - 1.0,
            inv_a: 1.0 / a,
        }
    }

    #[inline]
    pub fn sample(&self, r: &mut Rng) -> u64 {
        let x = (r.f64() * self.top + 1.0).powf(self.inv_a);
        ((x as u64).saturating_sub(1)).min(self.n - 1)
    }
}

/// The SplitMix64 finaliser: a bijection on u64 that mixes every bit.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_fixed() {
        // The first outputs of SplitMix64 seeded with 0 (the reference implementation).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let mut r = Rng::new(7);
        let n = 1000;
        let mut counts = vec![0u32; n as usize];
        for _ in 0..100_000 {
            counts[r.zipf(n, 0.8) as usize] += 1;
        }
        let head: u32 = counts[..10].iter().sum();
        let tail: u32 = counts[990..].iter().sum();
        assert!(head > 10 * tail, "head {head} tail {tail}");
        assert!(counts.iter().all(|&c| c > 0) || counts[500..].iter().any(|&c| c > 0));
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut r = Rng::new(1);
        let mut c = [0u32; 4];
        for _ in 0..40_000 {
            c[r.below(4) as usize] += 1;
        }
        assert!(c.iter().all(|&x| (9_000..11_000).contains(&x)), "{c:?}");
    }
}
