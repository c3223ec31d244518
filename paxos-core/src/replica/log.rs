//! The log: what a replica holds per slot, where it starts after compaction, and how far
//! it is known to be chosen (the commit point).

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::RangeBounds;

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
/// The fields are private to this file so that only these methods can move the commit
/// point or the start.
#[derive(Debug)]
pub(super) struct SlotLog {
    entries: BTreeMap<Slot, Entry>,
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
        SlotLog {
            entries,
            start: 0,
            commit_point: 0,
            #[cfg(test)]
            skip_gaps,
        }
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
        self.entries.last_key_value().map_or(0, |(s, _)| s + 1)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn get(&self, slot: Slot) -> Option<&Entry> {
        self.entries.get(&slot)
    }

    /// True when `slot` holds an entry known to be chosen.
    pub(super) fn is_chosen(&self, slot: Slot) -> bool {
        self.entries.get(&slot).is_some_and(|e| e.chosen)
    }

    pub(super) fn range(&self, range: impl RangeBounds<Slot>) -> btree_map::Range<'_, Slot, Entry> {
        self.entries.range(range)
    }

    /// Holds `value` in `slot` as accepted at `ballot`, not (yet) known chosen.
    pub(super) fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        self.entries.insert(
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
        if let Some(e) = self.entries.get_mut(&slot) {
            e.chosen = true;
        }
    }

    /// Marks chosen every entry from the start up to `below` (a commit point read back
    /// from storage).
    pub(super) fn mark_chosen_below(&mut self, below: Slot) {
        let start = self.start;
        for (_, e) in self.entries.range_mut(start..below.max(start)) {
            e.chosen = true;
        }
    }

    /// A commit point `below` announced by the leader of `ballot`: marks chosen the
    /// entries between our commit point and `below` that were accepted at exactly
    /// `ballot` (see `Replica::learn_commit_point`).
    pub(super) fn mark_chosen_at(&mut self, ballot: Ballot, below: Slot) {
        for (_, e) in self.entries.range_mut(self.commit_point..below) {
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
        match self.entries.get_mut(&slot) {
            Some(e) if e.chosen => return false,
            Some(e) => {
                if e.value != value && !keep_ballot {
                    e.ballot = Ballot::ZERO;
                }
                e.value = value;
                e.chosen = true;
            }
            None => {
                self.entries.insert(
                    slot,
                    Entry {
                        ballot: Ballot::ZERO,
                        value,
                        chosen: true,
                    },
                );
            }
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
        let mut c = from;
        #[cfg(test)]
        let skip_gaps = self.skip_gaps;
        for (s, e) in self.entries.range(from..) {
            if *s != c {
                #[cfg(test)]
                if skip_gaps && e.chosen {
                    c = *s + 1;
                    continue;
                }
                break;
            }
            if !e.chosen {
                break;
            }
            c += 1;
        }
        c
    }

    /// Drops the entries below `below` (covered by a checkpoint). Returns false, changing
    /// nothing, unless that raises the start.
    pub(super) fn compact(&mut self, below: Slot) -> bool {
        if below <= self.start {
            return false;
        }
        self.entries = self.entries.split_off(&below);
        self.start = below;
        true
    }

    /// A checkpoint at `slot` was installed: everything below it is gone and chosen.
    pub(super) fn install(&mut self, slot: Slot) {
        self.entries = self.entries.split_off(&slot);
        self.start = slot;
        self.commit_point = self.commit_point.max(slot);
        self.commit_point = self.first_unchosen(self.commit_point);
    }
}
