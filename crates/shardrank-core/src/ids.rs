//! Hash maps keyed by u64 ids.
//!
//! Ids such as snowflakes have structured bits (time high, sequence low); the map hashes
//! them with the SplitMix64 finaliser so every bit is mixed, at the cost of two
//! multiplies, instead of SipHash's dozens of operations.

use crate::rng::mix64;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = mix64(self.0 ^ b as u64);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = mix64(v);
    }
}

pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;
