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
        let slots = slots_for(n);
        IdIndex {
            slots: crate::huge_pages::filled_vec(slots, Slot { id: 0, row: EMPTY }),
            len: 0,
        }
    }

    #[inline(always)]
    fn home(&self, id: u64) -> usize {
        mix64(id) as usize & (self.slots.len() - 1)
    }

    /// Hints the CPU to fetch `id`'s slot now, for a `get` a little later.
    #[inline(always)]
    pub fn prefetch(&self, id: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.home(id)));
    }

    #[inline]
    pub fn get(&self, id: u64) -> Option<u32> {
        probe(&self.slots, self.home(id), |s| s.row, |s| s.id == id)
    }

    /// Inserts `id -> row`; false (and no change) if `id` is already there.
    pub fn insert(&mut self, id: u64, row: u32) -> bool {
        debug_assert_ne!(row, EMPTY);
        if too_full(self.len + 1, self.slots.len()) {
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
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    pub fn reserve(&mut self, additional: usize) {
        let want = self.len + additional;
        if too_full(want, self.slots.len()) {
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

    /// Moves the table onto huge pages (see [`crate::huge_pages`]).
    pub fn collapse_pages(&self) {
        crate::huge_pages::collapse(&self.slots);
    }
}

/// Slots for a table of `n` entries: a power of two, at most 70% full.
fn slots_for(n: usize) -> usize {
    ((n * 10 / 7) + 1).next_power_of_two().max(16)
}

/// Whether `len` entries would fill `slots` past 70%.
fn too_full(len: usize, slots: usize) -> bool {
    len * 10 > slots * 7
}

/// Linear probing from `home` in a power-of-two table: the row of the first slot that
/// `hit` accepts, or None at the first free slot (whose row is `EMPTY`).
#[inline(always)]
fn probe<S: Copy>(
    slots: &[S],
    home: usize,
    row: impl Fn(&S) -> u32,
    hit: impl Fn(&S) -> bool,
) -> Option<u32> {
    let mask = slots.len() - 1;
    let mut i = home;
    loop {
        let s = &slots[i];
        if row(s) == EMPTY {
            return None;
        }
        if hit(s) {
            return Some(row(s));
        }
        i = (i + 1) & mask;
    }
}

/// The post index: id -> row through a 32-bit fingerprint of the id, in 8-byte slots.
///
/// Half the size of an [`IdIndex`] (4 MB rather than 8 for a shard of the standard
/// corpus), so more of it stays in cache, and the row a lookup lands on holds the id
/// anyway: the light stage reads the row next, and checks the id there. A fingerprint
/// names the wrong row about once in four billion probes; [`Self::get`] checks each
/// match through `id_of` and goes on probing.
///
/// Rows are numbered from 0 in insertion order and never removed, so the table can be
/// rebuilt from the rows alone (it keeps no ids).
pub struct RowIndex {
    slots: Vec<FpSlot>,
    len: usize,
    /// All ones; tests narrow it so that fingerprints collide and the checks run.
    fp_mask: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct FpSlot {
    fp: u32,
    /// `EMPTY` for a free slot.
    row: u32,
}

impl Default for RowIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl RowIndex {
    /// An index with room for `n` rows before it grows.
    pub fn with_capacity(n: usize) -> Self {
        let slots = slots_for(n);
        RowIndex {
            slots: crate::huge_pages::filled_vec(slots, FpSlot { fp: 0, row: EMPTY }),
            len: 0,
            fp_mask: u32::MAX,
        }
    }

    /// (home slot, fingerprint) of `id`: the low bits of one hash, and its high half.
    #[inline(always)]
    fn hash(&self, id: u64) -> (usize, u32) {
        let h = mix64(id);
        (
            h as usize & (self.slots.len() - 1),
            (h >> 32) as u32 & self.fp_mask,
        )
    }

    /// Hints the CPU to fetch `id`'s home slot now, for a lookup a little later.
    #[inline(always)]
    pub fn prefetch(&self, id: u64) {
        prefetch(self.slots.as_ptr().wrapping_add(self.hash(id).0));
    }

    /// The first row whose fingerprint matches `id`'s (almost always `id`'s row, if it
    /// is here), or None if none does (`id` is not here). Unchecked: the caller compares
    /// the row's id, and on a mismatch asks [`Self::get`].
    #[inline]
    pub fn probable_row(&self, id: u64) -> Option<u32> {
        let (home, fp) = self.hash(id);
        probe(&self.slots, home, |s| s.row, |s| s.fp == fp)
    }

    /// `id`'s row: each fingerprint match checked through `id_of(row)`.
    #[inline]
    pub fn get(&self, id: u64, id_of: impl Fn(u32) -> u64) -> Option<u32> {
        let (home, fp) = self.hash(id);
        probe(
            &self.slots,
            home,
            |s| s.row,
            |s| s.fp == fp && id_of(s.row) == id,
        )
    }

    /// Indexes `row` (the next row: rows `0..row` are the ones already inserted or
    /// refused) under `id`; false (and no change) if `id` has a row already.
    pub fn insert(&mut self, id: u64, row: u32, id_of: impl Fn(u32) -> u64) -> bool {
        debug_assert_ne!(row, EMPTY);
        if self.get(id, &id_of).is_some() {
            return false;
        }
        if too_full(self.len + 1, self.slots.len()) {
            self.rebuild(self.slots.len(), row, &id_of);
        }
        self.place(id, row);
        true
    }

    /// Room for `additional` more rows past the first `rows`.
    pub fn reserve(&mut self, rows: u32, additional: usize, id_of: impl Fn(u32) -> u64) {
        let want = self.len + additional;
        if too_full(want, self.slots.len()) {
            self.rebuild(want, rows, &id_of);
        }
    }

    /// A free slot for `id` (not present) in its probe sequence.
    fn place(&mut self, id: u64, row: u32) {
        let (mut i, fp) = self.hash(id);
        while self.slots[i].row != EMPTY {
            i = (i + 1) & (self.slots.len() - 1);
        }
        self.slots[i] = FpSlot { fp, row };
        self.len += 1;
    }

    /// A table with room for `capacity` rows, holding rows `0..rows` again (a row whose
    /// id an earlier row has stays out, as it did).
    fn rebuild(&mut self, capacity: usize, rows: u32, id_of: &impl Fn(u32) -> u64) {
        let mut into = RowIndex::with_capacity(capacity);
        into.fp_mask = self.fp_mask;
        for row in 0..rows {
            let id = id_of(row);
            if into.get(id, id_of).is_none() {
                into.place(id, row);
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
        self.slots.len() * std::mem::size_of::<FpSlot>()
    }

    /// Moves the table onto huge pages (see [`crate::huge_pages`]).
    pub fn collapse_pages(&self) {
        crate::huge_pages::collapse(&self.slots);
    }

    /// Fingerprints of `bits` bits only, so that they collide (tests of the checks).
    #[cfg(test)]
    pub fn narrow_fingerprints(&mut self, bits: u32, rows: u32, id_of: impl Fn(u32) -> u64) {
        self.fp_mask = (1u32 << bits) - 1;
        self.rebuild(self.len, rows, &id_of);
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

    /// Rows as the store numbers them (a repeated id gets no row), looked up with
    /// fingerprints of full width and of 2 bits (every probe a collision to check).
    #[test]
    fn row_index_behaves_like_a_map() {
        for bits in [32, 2] {
            let mut r = Rng::new(9);
            let mut ids: Vec<u64> = Vec::new();
            let mut idx = RowIndex::default();
            let mut reference = HashMap::new();
            for k in 0..20_000u32 {
                let id = if k % 3 == 0 {
                    r.below(5000)
                } else {
                    r.next_u64()
                };
                let row = ids.len() as u32;
                let fresh = idx.insert(id, row, |r| ids[r as usize]);
                assert_eq!(fresh, !reference.contains_key(&id));
                if fresh {
                    ids.push(id);
                    reference.insert(id, row);
                }
                if k == 1000 && bits < 32 {
                    idx.narrow_fingerprints(bits, ids.len() as u32, |r| ids[r as usize]);
                }
            }
            assert_eq!(idx.len(), reference.len());
            for (&id, &row) in &reference {
                assert_eq!(idx.get(id, |r| ids[r as usize]), Some(row));
                if bits == 32 {
                    assert_eq!(idx.probable_row(id), Some(row));
                }
            }
            for _ in 0..1000 {
                let id = r.next_u64();
                assert_eq!(
                    idx.get(id, |r| ids[r as usize]),
                    reference.get(&id).copied()
                );
            }
            // Grown to hold them, and half an IdIndex's size.
            idx.reserve(ids.len() as u32, 100_000, |r| ids[r as usize]);
            assert!(idx.bytes() >= 8 * 100_000 * 10 / 7);
            for (&id, &row) in &reference {
                assert_eq!(idx.get(id, |r| ids[r as usize]), Some(row));
            }
        }
    }
}
