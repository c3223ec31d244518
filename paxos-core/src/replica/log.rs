//! The log: what a replica holds per slot, where it starts after compaction, and how far
//! it is known to be chosen (the commit point).

use std::collections::BTreeMap;
use std::ops::RangeBounds;

use crate::slot_map::SlotMap;
#[cfg(test)]
use crate::slot_map::MAX_SLOT_GAP as MAX_GAP;
use crate::types::{Ballot, Slot, Value};

/// One slot's entry: the value held, the ballot it was accepted at, and whether it is
/// known to be chosen.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The ballot the value was accepted at; [`Ballot::ZERO`] for a value learned
    /// rather than accepted (see [`SlotLog::learn`]).
    pub(super) ballot: Ballot,
    pub(super) value: Value,
    pub(super) chosen: bool,
}

/// A replica's log of slots, from its compaction point up.
///
/// # Invariants
/// - `start <= commit_point`: compaction only ever drops executed (hence chosen) slots,
///   and installing a checkpoint raises the commit point to at least its slot.
/// - Every slot in `start..commit_point` holds an entry, and it is chosen: the commit
///   point only advances over a contiguous run of chosen entries
///   ([`advance_commit`](Self::advance_commit)). (The test-only `SkipGaps` mutation breaks
///   this on purpose, to show the simulation notices.)
/// - No entry lies below `start`: [`compact`](Self::compact) and
///   [`install`](Self::install) drop them, and nothing is inserted there afterwards by a
///   correct caller (learning ignores slots below the commit point).
/// - The commit point never moves down, and a chosen entry is never un-chosen.
///
/// Slot-indexed ([`SlotMap`]): finding a slot costs an index, not a tree walk, and
/// compaction drops a prefix; no slot number makes it allocate without bound.
///
/// The fields are private to this file so that only these methods can move the commit
/// point or the start.
#[derive(Debug)]
pub(super) struct SlotLog {
    entries: SlotMap<Entry>,
    /// Entries below this slot were compacted into a checkpoint.
    start: Slot,
    /// Every slot below this is chosen.
    commit_point: Slot,
    /// The `SkipGaps` mutation: the commit point jumps over missing slots.
    #[cfg(test)]
    skip_gaps: bool,
}

impl SlotLog {
    /// A log holding `entries` (as storage recovered them), starting at slot 0 with a
    /// commit point of 0; the caller then installs the checkpoint and marks what was
    /// committed.
    pub(super) fn new(entries: BTreeMap<Slot, Entry>, #[cfg(test)] skip_gaps: bool) -> Self {
        let mut log = SlotLog {
            entries: SlotMap::new(),
            start: 0,
            commit_point: 0,
            #[cfg(test)]
            skip_gaps,
        };
        for (slot, e) in entries {
            log.put(slot, e);
        }
        log
    }

    /// Entries below this slot were compacted away.
    pub(super) fn start(&self) -> Slot {
        self.start
    }

    /// Every slot below this is chosen.
    pub(super) fn commit_point(&self) -> Slot {
        self.commit_point
    }

    /// One past the highest slot holding an entry (0 when empty).
    pub(super) fn end(&self) -> Slot {
        self.entries.last_slot().map_or(0, |s| s + 1)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn get(&self, slot: Slot) -> Option<&Entry> {
        self.entries.get(slot)
    }

    fn get_mut(&mut self, slot: Slot) -> Option<&mut Entry> {
        self.entries.get_mut(slot)
    }

    /// True when `slot` holds an entry known to be chosen.
    pub(super) fn is_chosen(&self, slot: Slot) -> bool {
        self.get(slot).is_some_and(|e| e.chosen)
    }

    /// The entries held in `range`, in slot order.
    pub(super) fn range(
        &self,
        range: impl RangeBounds<Slot>,
    ) -> impl Iterator<Item = (Slot, &Entry)> + '_ {
        self.entries.range(range)
    }

    /// Every entry held in `lo..hi`, in no particular order.
    fn range_mut(&mut self, lo: Slot, hi: Slot) -> impl Iterator<Item = &mut Entry> + '_ {
        self.entries.values_in_mut(lo, hi)
    }

    /// Stores `entry` in `slot`.
    fn put(&mut self, slot: Slot, entry: Entry) {
        if slot == Slot::MAX {
            // No log reaches it (one past it would not be a slot): a stray number from
            // a broken peer, stored nowhere.
            return;
        }
        self.entries.insert(slot, entry);
    }

    /// Holds `value` in `slot` as accepted at `ballot`, not (yet) known chosen.
    pub(super) fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        self.put(
            slot,
            Entry {
                ballot,
                value,
                chosen: false,
            },
        );
    }

    /// Marks the entry held in `slot`, if any, chosen.
    pub(super) fn mark_chosen(&mut self, slot: Slot) {
        if let Some(e) = self.get_mut(slot) {
            e.chosen = true;
        }
    }

    /// Marks chosen every entry from the start up to `below` (a commit point read back
    /// from storage).
    pub(super) fn mark_chosen_below(&mut self, below: Slot) {
        let start = self.start;
        for e in self.range_mut(start, below.max(start)) {
            e.chosen = true;
        }
    }

    /// A commit point `below` announced by the leader of `ballot`: marks chosen the
    /// entries between our commit point and `below` that were accepted at exactly
    /// `ballot` (see `Replica::learn_commit_point`).
    pub(super) fn mark_chosen_at(&mut self, ballot: Ballot, below: Slot) {
        let from = self.commit_point;
        for e in self.range_mut(from, below) {
            if !e.chosen && e.ballot == ballot {
                e.chosen = true;
            }
        }
    }

    /// Records `value` as chosen in `slot`, learned rather than accepted. An entry whose
    /// value it replaces loses its ballot ([`Ballot::ZERO`]) unless `keep_ballot` (the
    /// test-only `SupersededLeaderAnnounces` mutation). Returns false, changing nothing,
    /// when the slot is already chosen.
    pub(super) fn learn(&mut self, slot: Slot, value: Value, keep_ballot: bool) -> bool {
        match self.get_mut(slot) {
            Some(e) if e.chosen => return false,
            Some(e) => {
                if e.value != value && !keep_ballot {
                    e.ballot = Ballot::ZERO;
                }
                e.value = value;
                e.chosen = true;
            }
            None => self.put(
                slot,
                Entry {
                    ballot: Ballot::ZERO,
                    value,
                    chosen: true,
                },
            ),
        }
        true
    }

    /// Moves the commit point over the chosen entries that follow it. Returns whether
    /// it moved.
    pub(super) fn advance_commit(&mut self) -> bool {
        let c = self.first_unchosen(self.commit_point);
        if c > self.commit_point {
            self.commit_point = c;
            true
        } else {
            false
        }
    }

    fn first_unchosen(&self, from: Slot) -> Slot {
        #[cfg(test)]
        if self.skip_gaps {
            return self.first_unchosen_across_gaps(from);
        }
        // Slot by slot: usually one or two steps (called on every message that may
        // move the commit point), cheaper than an iterator over the log's range.
        let mut c = from;
        while self.get(c).is_some_and(|e| e.chosen) {
            c += 1;
        }
        c
    }

    /// The broken variant's commit point (`skip_gaps`): chosen entries past a gap
    /// count too.
    #[cfg(test)]
    fn first_unchosen_across_gaps(&self, from: Slot) -> Slot {
        let mut c = from;
        for (s, e) in self.range(from..) {
            if !e.chosen {
                break;
            }
            c = s + 1;
        }
        c
    }

    /// Drops the entries below `below` (covered by a checkpoint). Returns false, changing
    /// nothing, unless that raises the start.
    pub(super) fn compact(&mut self, below: Slot) -> bool {
        if below <= self.start {
            return false;
        }
        self.drop_below(below);
        true
    }

    fn drop_below(&mut self, below: Slot) {
        self.entries.remove_below(below);
        self.start = below;
    }

    /// A checkpoint at `slot` was installed: everything below it is gone and chosen.
    pub(super) fn install(&mut self, slot: Slot) {
        self.drop_below(slot);
        self.commit_point = self.commit_point.max(slot);
        self.commit_point = self.first_unchosen(self.commit_point);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log against a `BTreeMap` model, through random puts, lookups, ranges and
    /// compactions, including slots far enough apart to go to the side map.
    #[test]
    fn the_slot_indexed_log_behaves_like_a_sorted_map() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{Rng, SeedableRng};
        for seed in 0..25 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut log = SlotLog::new(BTreeMap::new(), false);
            let mut model: BTreeMap<Slot, u64> = BTreeMap::new();
            let mut start = 0;
            for step in 0..200 {
                let near = start + rng.next_u64() % 64;
                let slot = match rng.next_u64() % 10 {
                    0 => start + MAX_GAP + rng.next_u64() % (4 * MAX_GAP),
                    1 => start + rng.next_u64() % (3 * MAX_GAP),
                    _ => near,
                };
                match rng.next_u64() % 6 {
                    0 if step % 7 == 0 => {
                        let below = start + rng.next_u64() % 80;
                        if log.compact(below) {
                            model = model.split_off(&below);
                            start = below;
                        }
                    }
                    _ => {
                        log.accept(slot, Ballot::new(step, 1), Value::Noop);
                        model.insert(slot, step);
                    }
                }
                let got: Vec<(Slot, u64)> =
                    log.range(..).map(|(s, e)| (s, e.ballot.round)).collect();
                let want: Vec<(Slot, u64)> = model.iter().map(|(s, n)| (*s, *n)).collect();
                assert_eq!(got, want, "seed {seed} step {step}");
                let (lo, hi) = (start + 10, start + MAX_GAP * 2);
                let got: Vec<Slot> = log.range(lo..hi).map(|(s, _)| s).collect();
                let want: Vec<Slot> = model.range(lo..hi).map(|(s, _)| *s).collect();
                assert_eq!(got, want, "seed {seed} step {step}: range");
                assert_eq!(log.end(), model.last_key_value().map_or(0, |(s, _)| s + 1));
                assert_eq!(
                    log.get(slot).map(|e| e.ballot.round),
                    model.get(&slot).copied()
                );
                assert!(log.entries.ring_len() as Slot <= 64 + 4 * MAX_GAP + 8 * MAX_GAP);
            }
        }
    }

    /// The log against a model through every mutating method (accept, learn,
    /// mark_chosen, mark_chosen_at, advance_commit, compact, install), with slots far
    /// above and far below the ring, checking disjointness, bounds and every reader.
    #[test]
    fn the_log_matches_a_model_through_every_method() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{Rng, SeedableRng};
        for seed in 0..100 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut log = SlotLog::new(BTreeMap::new(), false);
            // slot -> (ballot round, chosen)
            let mut model: BTreeMap<Slot, (u64, bool)> = BTreeMap::new();
            let (mut start, mut commit) = (0u64, 0u64);
            let mut puts = 0u64;
            for step in 0..300u64 {
                let r = rng.next_u64();
                let slot = match r % 8 {
                    0 => commit + MAX_GAP + rng.next_u64() % (3 * MAX_GAP),
                    1 => commit + rng.next_u64() % (2 * MAX_GAP + 2),
                    2 => commit + MAX_GAP - 2 + rng.next_u64() % 5,
                    _ => commit + rng.next_u64() % 40,
                };
                let first_unchosen = |m: &BTreeMap<Slot, (u64, bool)>, from: Slot| {
                    let mut c = from;
                    while m.get(&c).is_some_and(|e| e.1) {
                        c += 1;
                    }
                    c
                };
                match rng.next_u64() % 9 {
                    0..=2 => {
                        if slot >= commit && !model.get(&slot).is_some_and(|e| e.1) {
                            log.accept(slot, Ballot::new(step, 1), Value::Noop);
                            model.insert(slot, (step, false));
                            puts += 1;
                        }
                    }
                    3 | 4 => {
                        if slot >= commit {
                            let changed = log.learn(slot, Value::Noop, false);
                            let was = model.get(&slot).is_some_and(|e| e.1);
                            assert_eq!(changed, !was);
                            if !was {
                                let b = model.get(&slot).map_or(0, |e| e.0);
                                model.insert(slot, (b, true));
                                puts += 1;
                            }
                        }
                    }
                    5 => {
                        log.mark_chosen(slot);
                        if let Some(e) = model.get_mut(&slot) {
                            e.1 = true;
                        }
                        let moved = log.advance_commit();
                        let c = first_unchosen(&model, commit);
                        assert_eq!(moved, c > commit);
                        commit = c;
                    }
                    6 => {
                        let below = commit + rng.next_u64() % (3 * MAX_GAP);
                        log.mark_chosen_at(Ballot::new(step / 2, 1), below);
                        for (s, e) in model.range_mut(commit..below.max(commit)) {
                            let _ = s;
                            if e.0 == step / 2 {
                                e.1 = true;
                            }
                        }
                        log.advance_commit();
                        commit = first_unchosen(&model, commit);
                    }
                    7 => {
                        let below = start + rng.next_u64() % (commit - start + 1);
                        if log.compact(below) {
                            model = model.split_off(&below);
                            start = below;
                        }
                    }
                    _ => {
                        if step % 5 == 0 {
                            let at = commit + rng.next_u64() % (2 * MAX_GAP);
                            log.install(at);
                            model = model.split_off(&at);
                            start = at;
                            commit = first_unchosen(&model, commit.max(at));
                        }
                    }
                }
                assert_eq!(log.commit_point(), commit, "seed {seed} step {step}");
                assert_eq!(log.start(), start, "seed {seed} step {step}");
                let got: Vec<(Slot, u64, bool)> = log
                    .range(..)
                    .map(|(s, e)| (s, e.ballot.round, e.chosen))
                    .collect();
                let want: Vec<(Slot, u64, bool)> = model
                    .iter()
                    .map(|(s, (b, c))| {
                        (
                            *s,
                            if *c && got.iter().any(|g| g.0 == *s && g.1 == 0) {
                                0
                            } else {
                                *b
                            },
                            *c,
                        )
                    })
                    .collect();
                let strip = |v: &[(Slot, u64, bool)]| {
                    v.iter().map(|(s, _, c)| (*s, *c)).collect::<Vec<_>>()
                };
                assert_eq!(strip(&got), strip(&want), "seed {seed} step {step}");
                for (lo, hi) in [
                    (commit, commit + MAX_GAP),
                    (start + 3, slot),
                    (slot, slot + 1),
                    (slot + 5, slot),
                ] {
                    let got: Vec<Slot> = log.range(lo..hi.max(lo)).map(|(s, _)| s).collect();
                    let want: Vec<Slot> = model.range(lo..hi.max(lo)).map(|(s, _)| *s).collect();
                    assert_eq!(got, want, "seed {seed} step {step} range {lo}..{hi}");
                    let got: Vec<Slot> = log.range(lo..=hi.max(lo)).map(|(s, _)| s).collect();
                    let want: Vec<Slot> = model.range(lo..=hi.max(lo)).map(|(s, _)| *s).collect();
                    assert_eq!(got, want);
                }
                assert_eq!(log.end(), model.last_key_value().map_or(0, |(s, _)| s + 1));
                assert_eq!(log.is_empty(), model.is_empty());
                assert_eq!(log.get(slot).is_some(), model.contains_key(&slot));
                log.entries.check_layout();
                assert!(log.entries.first_slot().is_none_or(|s| s >= log.start));
                assert!(log.entries.ring_len() as Slot <= (puts + 1) * (MAX_GAP + 1));
                let _ = &mut puts;
            }
        }
    }

    /// An entry at `Slot::MAX` (which no caller produces: accepts, fetches and promises
    /// are capped far below it) is dropped rather than wrap the ring's end around.
    #[test]
    fn an_entry_at_slot_max_is_dropped() {
        let mut log = SlotLog::new(BTreeMap::new(), false);
        log.accept(0, Ballot::new(1, 1), Value::Noop);
        log.accept(10 * MAX_GAP, Ballot::new(1, 1), Value::Noop); // far
        log.learn(0, Value::Noop, false);
        log.advance_commit();
        assert!(log.compact(1)); // the ring is empty, far is not
        log.accept(Slot::MAX, Ballot::new(1, 1), Value::Noop);
        assert!(log.get(Slot::MAX).is_none());
        assert_eq!(log.end(), 10 * MAX_GAP + 1);
    }
}
