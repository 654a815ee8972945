//! Which vector instructions the hot loops run on: one decision for routing, features
//! and both rankers, from what the CPU reports. Every level gives the same bits (the
//! same operations in the same order per lane); the levels differ in lanes per
//! instruction and in instructions per operation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// Plain Rust (SSE2 on x86-64; fused multiply-adds in software without FMA).
    Portable,
    /// AVX2 with FMA: 8 lanes.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512F, VL and DQ, with AVX2 and FMA: 16 lanes, one-instruction three-input logic
    /// and rotations, 32 registers.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    /// The best level this CPU has: asked once, then kept (the hot loops ask per
    /// batch, and five feature checks per batch showed in the shards' profile).
    #[inline]
    pub fn detect() -> Simd {
        static LEVEL: std::sync::OnceLock<Simd> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(Simd::ask)
    }

    fn ask() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return if has!("avx512f") && has!("avx512vl") && has!("avx512dq") {
                    Simd::Avx512
                } else {
                    Simd::Avx2
                };
            }
        }
        Simd::Portable
    }

    /// The level's name, for start-up logs.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => "avx512",
        }
    }
}
