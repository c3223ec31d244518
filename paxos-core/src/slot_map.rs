//! A map from slots to entries, indexed by slot.

use std::collections::{btree_map, BTreeMap, VecDeque};
use std::fmt;
use std::iter::Peekable;
use std::ops::{Bound, RangeBounds};

use crate::types::Slot;

/// The longest run of empty slots the slot-indexed part of a [`SlotMap`] creates. An
/// entry that would open a longer gap (a recovering replica handed entries far above
/// its commit point, a stray slot number from a broken peer or a damaged file) is kept
/// in a sorted side map instead, so that no slot number can make the map allocate
/// without bound.
pub const MAX_SLOT_GAP: Slot = 1 << 16;

/// A sorted map from [`Slot`]s to entries, for logs: what a replica holds per slot,
/// and what a [`Storage`](crate::Storage) keeps of it
/// ([`PersistentState::log`](crate::PersistentState::log)).
///
/// A log's slots are dense and grow at the top while compaction drops a prefix, so the
/// map is a ring indexed by slot (`ring[i]` holds slot `base + i`, `None` for a gap):
/// finding, inserting or appending a slot costs an index, not a tree walk and an
/// allocation per entry, and dropping a prefix frees it in one go. An entry that
/// would open a gap of more than [`MAX_SLOT_GAP`] empty slots, or grow the ring to more
/// than [`MAX_SLOT_GAP`] places beyond twice its entries, goes to a sorted side map
/// instead (so the ring's memory stays linear in the entries with a small factor,
/// whatever the slot numbers); the two never hold the same slot, and every method sees their union, in
/// slot order, as a `BTreeMap<Slot, E>` would.
///
/// ```
/// use paxos_core::SlotMap;
/// let mut log = SlotMap::new();
/// log.insert(4, "d");
/// log.insert(2, "b");
/// log.insert(u64::MAX - 1, "far");
/// assert_eq!(log.len(), 3);
/// assert_eq!(log[&2], "b");
/// let slots: Vec<u64> = log.keys().collect();
/// assert_eq!(slots, [2, 4, u64::MAX - 1]);
/// log.remove_below(3);
/// assert_eq!(log.range(..10).collect::<Vec<_>>(), [(4, &"d")]);
/// ```
#[derive(Clone)]
pub struct SlotMap<E> {
    /// `ring[i]` holds slot `base + i`.
    ring: VecDeque<Option<E>>,
    base: Slot,
    /// Entries outside `base..base + ring.len()` whose slot is too far from it.
    far: BTreeMap<Slot, E>,
    /// How many entries the two hold.
    len: usize,
}

impl<E> Default for SlotMap<E> {
    fn default() -> Self {
        SlotMap {
            ring: VecDeque::new(),
            base: 0,
            far: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<E> SlotMap<E> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many slots hold an entry.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no slot holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn index(&self, slot: Slot) -> Option<usize> {
        let i = slot.checked_sub(self.base)?;
        (i < self.ring.len() as Slot).then_some(i as usize)
    }

    /// The entry in `slot`.
    pub fn get(&self, slot: Slot) -> Option<&E> {
        match self.index(slot) {
            Some(i) => self.ring[i].as_ref(),
            None => self.far.get(&slot),
        }
    }

    /// The entry in `slot`, to change it.
    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut E> {
        match self.index(slot) {
            Some(i) => self.ring[i].as_mut(),
            None => self.far.get_mut(&slot),
        }
    }

    /// True when `slot` holds an entry.
    pub fn contains_key(&self, slot: Slot) -> bool {
        self.get(slot).is_some()
    }

    /// The lowest slot holding an entry.
    pub fn first_slot(&self) -> Option<Slot> {
        let ring = self.ring.iter().position(Option::is_some);
        let ring = ring.map(|i| self.base + i as Slot);
        let far = self.far.keys().next().copied();
        match (ring, far) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The highest slot holding an entry.
    pub fn last_slot(&self) -> Option<Slot> {
        let ring = self.ring.iter().rposition(Option::is_some);
        let ring = ring.map(|i| self.base + i as Slot);
        let far = self.far.keys().next_back().copied();
        ring.max(far)
    }

    /// Stores `entry` in `slot`, returning the entry it replaces.
    pub fn insert(&mut self, slot: Slot, entry: E) -> Option<E> {
        if let Some(i) = self.index(slot) {
            let old = self.ring[i].replace(entry);
            if old.is_none() {
                self.len += 1;
            }
            return old;
        }
        // The usual insert: the slot after the ring's last, with nothing far away,
        // within the ring's bound (which a compaction can leave the ring beyond).
        // (Kept apart from the rest, which is out of line: the hot path stays small.)
        let places = self.ring.len() as Slot + 1;
        if self.far.is_empty()
            && !self.ring.is_empty()
            && slot == self.base + self.ring.len() as Slot
            && slot != Slot::MAX
            && places <= MAX_SLOT_GAP.saturating_add(2 * (self.len as Slot + 1))
        {
            self.len += 1;
            self.ring.push_back(Some(entry));
            return None;
        }
        self.insert_elsewhere(slot, entry)
    }

    /// [`insert`](Self::insert) of a slot that is neither in the ring nor right after it.
    #[cold]
    #[inline(never)]
    fn insert_elsewhere(&mut self, slot: Slot, entry: E) -> Option<E> {
        // (`far` is empty but for crafted or broken input: checked before it is searched.)
        if !self.far.is_empty() {
            if let Some(e) = self.far.get_mut(&slot) {
                return Some(std::mem::replace(e, entry));
            }
        }
        self.len += 1;
        if slot == Slot::MAX {
            // One past it is not a slot: the ring never reaches it.
            self.far.insert(slot, entry);
            return None;
        }
        // The ring never grows to more than `MAX_SLOT_GAP` places beyond twice its
        // entries: slots spaced just under the gap limit (a crafted file, a broken
        // peer) would otherwise cost `MAX_SLOT_GAP` places each.
        let places = if self.ring.is_empty() {
            1
        } else if slot < self.base {
            (self.ring.len() as Slot).saturating_add(self.base - slot)
        } else {
            (slot - self.base).saturating_add(1)
        };
        let most = MAX_SLOT_GAP.saturating_add(2 * self.len as Slot);
        if places > most {
            self.far.insert(slot, entry);
            return None;
        }
        if self.ring.is_empty() {
            self.base = slot;
            self.ring.push_back(Some(entry));
        } else if slot < self.base {
            if self.base - slot > MAX_SLOT_GAP {
                self.far.insert(slot, entry);
                return None;
            }
            for _ in slot + 1..self.base {
                self.ring.push_front(None);
            }
            self.ring.push_front(Some(entry));
            self.base = slot;
        } else {
            let end = self.base + self.ring.len() as Slot;
            if slot - end > MAX_SLOT_GAP {
                self.far.insert(slot, entry);
                return None;
            }
            if slot > end {
                self.ring.resize_with((slot - self.base) as usize, || None);
            }
            self.ring.push_back(Some(entry));
        }
        // Whatever `far` held inside the grown span moves in: the two stay disjoint.
        let end = self.base + self.ring.len() as Slot;
        if !self.far.is_empty() && self.far.range(self.base..end).next().is_some() {
            let mut inside = self.far.split_off(&self.base);
            let mut above = inside.split_off(&end);
            self.far.append(&mut above);
            for (s, e) in inside {
                let i = (s - self.base) as usize;
                self.ring[i] = Some(e);
            }
        }
        None
    }

    /// The entry in `slot`, inserted with `make` if there is none.
    pub fn get_or_insert_with(&mut self, slot: Slot, make: impl FnOnce() -> E) -> &mut E {
        if !self.contains_key(slot) {
            self.insert(slot, make());
        }
        self.get_mut(slot).expect("just inserted")
    }

    /// Drops every entry below `below`.
    pub fn remove_below(&mut self, below: Slot) {
        let n = below.saturating_sub(self.base).min(self.ring.len() as Slot) as usize;
        let dropped = self.ring.drain(..n).filter(Option::is_some).count();
        self.base = self.base.max(below);
        // Keep the slot-indexed part starting with an entry.
        while self.ring.front().is_some_and(Option::is_none) {
            self.ring.pop_front();
            self.base += 1;
        }
        if self.ring.is_empty() {
            self.base = below;
        }
        let mut dropped_far = 0;
        if !self.far.is_empty() {
            let kept = self.far.split_off(&below);
            dropped_far = self.far.len();
            self.far = kept;
        }
        self.len -= dropped + dropped_far;
    }

    /// The indexes of `ring` that hold slots in `lo..hi`.
    fn window(&self, lo: Slot, hi: Slot) -> (usize, usize) {
        let len = self.ring.len() as Slot;
        let from = lo.saturating_sub(self.base).min(len);
        let to = hi.saturating_sub(self.base).min(len).max(from);
        (from as usize, to as usize)
    }

    /// The entries in `range`, in slot order.
    pub fn range(&self, range: impl RangeBounds<Slot>) -> Range<'_, E> {
        let (lo, hi) = bounds(&range);
        let (from, to) = self.window(lo, hi.unwrap_or(Slot::MAX));
        let far = match hi {
            Some(hi) => self.far.range(lo..hi.max(lo)),
            None => self.far.range(lo..),
        };
        Range {
            ring: self.ring.range(from..to),
            at: self.base + from as Slot,
            far: far.peekable(),
            next_ring: None,
        }
    }

    /// Every entry in `lo..hi`, to change them, in no particular order.
    pub fn values_in_mut(&mut self, lo: Slot, hi: Slot) -> impl Iterator<Item = &mut E> + '_ {
        let (from, to) = self.window(lo, hi);
        let far = self.far.range_mut(lo..hi.max(lo)).map(|(_, e)| e);
        self.ring
            .range_mut(from..to)
            .filter_map(Option::as_mut)
            .chain(far)
    }

    /// Every entry, in slot order.
    pub fn iter(&self) -> Range<'_, E> {
        self.range(..)
    }

    /// Every slot holding an entry, in order.
    pub fn keys(&self) -> impl Iterator<Item = Slot> + '_ {
        self.iter().map(|(s, _)| s)
    }

    /// Every entry, in slot order.
    pub fn values(&self) -> impl Iterator<Item = &E> + '_ {
        self.iter().map(|(_, e)| e)
    }

    /// How many places the slot-indexed part holds (entries and gaps): what bounds its
    /// memory.
    #[cfg(test)]
    pub(crate) fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Panics unless the layout holds: the two parts are disjoint, the ring starts with
    /// an entry, and `len` counts both.
    #[cfg(test)]
    pub(crate) fn check_layout(&self) {
        let end = self.base + self.ring.len() as Slot;
        assert!(self
            .far
            .range(self.base..end.max(self.base))
            .next()
            .is_none());
        if let Some(front) = self.ring.front() {
            assert!(front.is_some());
        }
        let in_ring = self.ring.iter().filter(|e| e.is_some()).count();
        assert_eq!(self.len, in_ring + self.far.len());
    }
}

/// `range`'s bounds as `lo..hi` (`None`: unbounded above).
fn bounds(range: &impl RangeBounds<Slot>) -> (Slot, Option<Slot>) {
    let lo = match range.start_bound() {
        Bound::Included(s) => *s,
        // Nothing lies after the last slot.
        Bound::Excluded(&Slot::MAX) => return (Slot::MAX, Some(Slot::MAX)),
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(s) => Some(s.saturating_add(1)).filter(|_| *s < Slot::MAX),
        Bound::Excluded(s) => Some(*s),
        Bound::Unbounded => None,
    };
    (lo, hi)
}

/// The entries of a [`SlotMap`] in a range of slots, in slot order:
/// [`SlotMap::range`], [`SlotMap::iter`].
pub struct Range<'a, E> {
    ring: std::collections::vec_deque::Iter<'a, Option<E>>,
    /// The slot of the ring's next place.
    at: Slot,
    far: Peekable<btree_map::Range<'a, Slot, E>>,
    /// The ring's next entry, read ahead.
    next_ring: Option<(Slot, &'a E)>,
}

impl<'a, E> Iterator for Range<'a, E> {
    type Item = (Slot, &'a E);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_ring.is_none() {
            for e in self.ring.by_ref() {
                let slot = self.at;
                self.at += 1;
                if let Some(e) = e {
                    self.next_ring = Some((slot, e));
                    break;
                }
            }
        }
        match (self.next_ring, self.far.peek()) {
            (Some((a, _)), Some((b, _))) if **b < a => self.far.next().map(|(s, e)| (*s, e)),
            (Some(x), _) => {
                self.next_ring = None;
                Some(x)
            }
            (None, _) => self.far.next().map(|(s, e)| (*s, e)),
        }
    }
}

impl<'a, E> IntoIterator for &'a SlotMap<E> {
    type Item = (Slot, &'a E);
    type IntoIter = Range<'a, E>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The entries of a [`SlotMap`], by value, in slot order.
pub struct IntoIter<E> {
    ring: std::collections::vec_deque::IntoIter<Option<E>>,
    at: Slot,
    far: Peekable<btree_map::IntoIter<Slot, E>>,
    next_ring: Option<(Slot, E)>,
}

impl<E> Iterator for IntoIter<E> {
    type Item = (Slot, E);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next_ring.is_none() {
            for e in self.ring.by_ref() {
                let slot = self.at;
                self.at += 1;
                if let Some(e) = e {
                    self.next_ring = Some((slot, e));
                    break;
                }
            }
        }
        let far_first = match (&self.next_ring, self.far.peek()) {
            (Some((a, _)), Some((b, _))) => b < a,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if far_first {
            self.far.next()
        } else {
            self.next_ring.take()
        }
    }
}

impl<E> IntoIterator for SlotMap<E> {
    type Item = (Slot, E);
    type IntoIter = IntoIter<E>;

    fn into_iter(self) -> Self::IntoIter {
        IntoIter {
            ring: self.ring.into_iter(),
            at: self.base,
            far: self.far.into_iter().peekable(),
            next_ring: None,
        }
    }
}

impl<E> FromIterator<(Slot, E)> for SlotMap<E> {
    fn from_iter<I: IntoIterator<Item = (Slot, E)>>(iter: I) -> Self {
        let mut map = SlotMap::new();
        map.extend(iter);
        map
    }
}

impl<E> Extend<(Slot, E)> for SlotMap<E> {
    fn extend<I: IntoIterator<Item = (Slot, E)>>(&mut self, iter: I) {
        for (slot, e) in iter {
            self.insert(slot, e);
        }
    }
}

impl<E: PartialEq> PartialEq for SlotMap<E> {
    /// Equal when the same slots hold equal entries, however each map lays them out.
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<E: Eq> Eq for SlotMap<E> {}

impl<E: fmt::Debug> fmt::Debug for SlotMap<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<E> std::ops::Index<&Slot> for SlotMap<E> {
    type Output = E;

    /// The entry in a slot; panics when it holds none (use [`SlotMap::get`] then).
    fn index(&self, slot: &Slot) -> &E {
        self.get(*slot).expect("no entry in this slot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};

    /// The map against a `BTreeMap` model through random inserts, lookups, ranges and
    /// prefix drops, with slots near each other, far apart (the side map), below the
    /// ring and at the very top of the slot space.
    #[test]
    fn appends_after_a_compaction_keep_the_ring_within_its_bound() {
        // A compaction can leave a long, sparse ring: appends after it go to the side
        // map until the entries justify the ring's length, as any insert does.
        let mut m = SlotMap::default();
        for s in 0..200_000u64 {
            m.insert(s, s);
        }
        for j in 1..=3u64 {
            m.insert(199_999 + j * (MAX_SLOT_GAP + 1), 0);
        }
        m.remove_below(200_000);
        let ring = m.ring_len();
        assert!(ring as Slot > MAX_SLOT_GAP + 2 * m.len() as Slot);
        let end = 199_999 + 3 * (MAX_SLOT_GAP + 1) + 1; // right after the ring's last
        for s in end..end + 10 {
            m.insert(s, s);
            m.check_layout();
        }
        assert_eq!(m.ring_len(), ring, "the ring grew beyond its bound");
        assert_eq!(m.len(), 13);
        assert_eq!(m.get(end + 9), Some(&(end + 9)));
    }

    #[test]
    fn a_slot_map_behaves_like_a_btree_map() {
        for seed in 0..60 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut map = SlotMap::new();
            let mut model: BTreeMap<Slot, u64> = BTreeMap::new();
            let mut start = 0;
            for step in 0..300u64 {
                let slot = match rng.next_u64() % 12 {
                    0 => start + MAX_SLOT_GAP + rng.next_u64() % (4 * MAX_SLOT_GAP),
                    1 => start + rng.next_u64() % (3 * MAX_SLOT_GAP),
                    2 => Slot::MAX - rng.next_u64() % 3,
                    3 => start.saturating_sub(rng.next_u64() % (2 * MAX_SLOT_GAP)),
                    _ => start + rng.next_u64() % 64,
                };
                match rng.next_u64() % 8 {
                    0 => {
                        let below = start + rng.next_u64() % 80;
                        map.remove_below(below);
                        model = model.split_off(&below);
                        start = below;
                    }
                    1 => {
                        let got = map.get_or_insert_with(slot, || step);
                        let want = model.entry(slot).or_insert(step);
                        assert_eq!(got, want);
                        *got += 1;
                        *want += 1;
                    }
                    2 => {
                        for e in map.values_in_mut(start, start + 40) {
                            *e += 1000;
                        }
                        for e in model.range_mut(start..start + 40).map(|(_, e)| e) {
                            *e += 1000;
                        }
                    }
                    _ => assert_eq!(map.insert(slot, step), model.insert(slot, step)),
                }
                let got: Vec<(Slot, u64)> = map.iter().map(|(s, e)| (s, *e)).collect();
                let want: Vec<(Slot, u64)> = model.iter().map(|(s, e)| (*s, *e)).collect();
                assert_eq!(got, want, "seed {seed} step {step}");
                assert_eq!(map.len(), model.len());
                let (lo, hi) = (start + 10, start + 2 * MAX_SLOT_GAP);
                let got: Vec<Slot> = map.range(lo..hi).map(|(s, _)| s).collect();
                let want: Vec<Slot> = model.range(lo..hi).map(|(s, _)| *s).collect();
                assert_eq!(got, want, "seed {seed} step {step}: range");
                let got: Vec<Slot> = map.range(lo..=Slot::MAX).map(|(s, _)| s).collect();
                let want: Vec<Slot> = model.range(lo..=Slot::MAX).map(|(s, _)| *s).collect();
                assert_eq!(got, want, "seed {seed} step {step}: inclusive range");
                assert_eq!(map.get(slot), model.get(&slot));
                assert_eq!(map.first_slot(), model.keys().next().copied());
                assert_eq!(map.last_slot(), model.keys().next_back().copied());
                assert!(map.ring_len() as Slot <= 64 + 8 * MAX_SLOT_GAP);
                map.check_layout();
                if step % 50 == 0 {
                    let owned: Vec<(Slot, u64)> = map.clone().into_iter().collect();
                    assert_eq!(owned, want_all(&model));
                    let rebuilt: SlotMap<u64> = model.clone().into_iter().collect();
                    assert_eq!(rebuilt, map);
                }
            }
        }
    }

    fn want_all(model: &BTreeMap<Slot, u64>) -> Vec<(Slot, u64)> {
        model.iter().map(|(s, e)| (*s, *e)).collect()
    }

    /// Review: slot numbers from outside (a crafted or damaged storage file's base
    /// entries, a peer) spaced just under the side-map threshold make the ring allocate
    /// MAX_SLOT_GAP + 1 places per entry: the memory is linear in the entries, but with
    /// a factor of 65,537 (a ~12-byte base entry in a file costs ~4 MiB of
    /// `Option<StoredEntry>`). A `BTreeMap` costs a few dozen bytes per entry.
    #[test]
    fn review_spaced_slots_do_not_make_the_ring_outgrow_its_entries() {
        let mut up = SlotMap::new();
        let mut down = SlotMap::new();
        for k in 0..64u64 {
            up.insert(k * (MAX_SLOT_GAP + 1), 0u8);
            down.insert((64 - k) * (MAX_SLOT_GAP + 1), 0u8);
        }
        assert_eq!(up.len(), 64);
        for map in [&up, &down] {
            assert!(
                map.ring_len() <= 4 * map.len() + MAX_SLOT_GAP as usize,
                "{} ring places for {} entries",
                map.ring_len(),
                map.len()
            );
        }
    }

    /// Review: `(Excluded(MAX), Unbounded)` is an empty range (BTreeMap returns
    /// nothing), but `bounds` saturates the start to MAX and yields the entry in MAX.
    #[test]
    fn review_a_range_starting_after_the_last_slot_is_empty() {
        let mut map = SlotMap::new();
        map.insert(Slot::MAX, 1u8);
        let got: Vec<Slot> = map
            .range((Bound::Excluded(Slot::MAX), Bound::Unbounded))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(got, Vec::<Slot>::new());
    }

    #[test]
    fn maps_with_the_same_entries_are_equal_whatever_their_layout() {
        let a: SlotMap<u8> = [(5, 1), (6, 2)].into_iter().collect();
        let mut b = SlotMap::new();
        b.insert(1, 0);
        b.insert(6, 2);
        b.insert(5, 1);
        assert_ne!(a, b);
        b.remove_below(2);
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "{5: 1, 6: 2}");
    }
}
