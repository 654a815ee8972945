//! The id -> row index: open addressing with linear probing over one flat array.
//!
//! A ranking request looks up tens of thousands of random ids, each a cache miss in a
//! multi-megabyte table. A flat table lets the caller compute where an id's slot is
//! and prefetch it several ids ahead ([`IdIndex::prefetch`]), so the misses overlap
//! instead of following one another. Slots are 16 bytes; the table stays at most 70%
//! full, so a probe almost always ends at the first slot.

use shardrank_core::rng::mix64;

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    id: u64,
    /// `EMPTY` for a free slot (id 0 is a valid id).
    row: u32,
}

const EMPTY: u32 = u32::MAX;

pub struct IdIndex {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
}

impl Default for IdIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unused_unsafe)]
    // SAFETY: a prefetch is a hint; it never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

impl IdIndex {
    /// An index with room for `n` ids before it grows.
    pub fn with_capacity(n: usize) -> Self {
        let slots = ((n * 10 / 7) + 1).next_power_of_two().max(16);
        IdIndex {
            slots: vec![Slot { id: 0, row: EMPTY }; slots],
            mask: slots - 1,
            len: 0,
        }
    }

    #[inline(always)]
    fn home(&self, id: u64) -> usize {
        mix64(id) as usize & self.mask
    }

    /// Hints the CPU to fetch `id`'s slot now, for a `get` a little later.
    #[inline(always)]
    pub fn prefetch(&self, id: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.home(id)));
    }

    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        let mut i = self.home(id);
        loop {
            let s = self.slots[i];
            if s.row == EMPTY {
                return None;
            }
            if s.id == id {
                return Some(s.row);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Inserts `id -> row`; false (and no change) if `id` is already there.
    pub fn insert(&mut self, id: u64, row: u32) -> bool {
        debug_assert_ne!(row, EMPTY);
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let mut i = self.home(id);
        loop {
            let s = &mut self.slots[i];
            if s.row == EMPTY {
                *s = Slot { id, row };
                self.len += 1;
                return true;
            }
            if s.id == id {
                return false;
            }
            i = (i + 1) & self.mask;
        }
    }

    pub fn reserve(&mut self, additional: usize) {
        let want = self.len + additional;
        if want * 10 > self.slots.len() * 7 {
            self.rebuild(Self::with_capacity(want));
        }
    }

    fn grow(&mut self) {
        let bigger = Self::with_capacity(self.slots.len());
        self.rebuild(bigger);
    }

    fn rebuild(&mut self, mut into: IdIndex) {
        for s in &self.slots {
            if s.row != EMPTY {
                into.insert(s.id, s.row);
            }
        }
        *self = into;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardrank_core::rng::Rng;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        let mut idx = IdIndex::default();
        let mut reference = HashMap::new();
        let mut r = Rng::new(4);
        for row in 0..20_000u32 {
            // Small ids collide often; 0 is a valid id.
            let id = if row % 3 == 0 {
                r.below(5000)
            } else {
                r.next_u64()
            };
            let fresh = idx.insert(id, row);
            assert_eq!(fresh, !reference.contains_key(&id));
            reference.entry(id).or_insert(row);
        }
        assert_eq!(idx.len(), reference.len());
        for (&id, &row) in &reference {
            assert_eq!(idx.get(id), Some(row));
        }
        for _ in 0..1000 {
            let id = r.next_u64();
            assert_eq!(idx.get(id), reference.get(&id).copied());
        }
        assert!(idx.bytes() <= 16 * 2 * (reference.len() * 10 / 7 + 1).next_power_of_two());
    }
}
