//! The acceptor: which ballots it admits, its promises, and the ACCEPTs and heartbeats
//! it acknowledges.

use super::*;
use crate::message::Message;
use crate::traits::{PersistOp, StateMachine};
use crate::types::{Ballot, NodeId, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

/// How far above its commit point an acceptor accepts proposals, in units of
/// [`Config::max_inflight`]. Bounds the uncommitted entries an acceptor holds (and so the
/// size of its PROMISE); a follower further behind catches up by fetching first.
pub(super) const ACCEPT_WINDOW_FACTOR: u64 = 4;

/// How many bytes of values (counted as [`Value::size_hint`]s) an acceptor holds above
/// its commit point before a proposal, in units of
/// [`Config::max_message_bytes`](crate::Config::max_message_bytes): a proposal is
/// accepted only if the entries held below it, from the commit point up, come to less
/// (the first one always is). The slot window alone bounds slots, not bytes: a slot
/// may carry a batch of requests. What a PROMISE reports above the sender's commit
/// point is never cut, so it has to stay well within a message: with `NodeServer`'s
/// quarter-frame `max_message_bytes`, twice that plus a cut batch of chosen entries
/// stays within the frame. Entries above the proposal do not count, so stale values a
/// deposed leader left higher up never block the current leader's proposals below
/// them.
pub(super) const ACCEPT_BYTES_FACTOR: usize = 2;

/// Accepts `value` in `slot` at `ballot`: in the log, and as a write to persist.
pub(super) fn store_accept(
    ready: &mut Ready,
    log: &mut SlotLog,
    slot: Slot,
    ballot: Ballot,
    value: Value,
) {
    ready.persist.push(PersistOp::Accept {
        slot,
        ballot,
        value: value.clone(),
    });
    log.accept(slot, ballot, value);
}

impl<S: StateMachine> Replica<S> {
    /// Vets a message that `from` sent under `ballot`: ignored unless `from` owns the
    /// ballot; refused with a NACK when the ballot is below our promise (unless
    /// `allow_stale`). Returns whether to handle it.
    pub(super) fn admit(&mut self, from: NodeId, ballot: Ballot, allow_stale: bool) -> bool {
        if ballot.node != from {
            return false;
        }
        self.saw_round(ballot.round);
        if ballot < self.promised && !allow_stale {
            let promised = self.promised;
            self.send(from, Message::Nack { ballot, promised });
            // A sender of an epoch before ours was left behind (see `membership.rs`).
            self.tell_behind(from, ballot);
            return false;
        }
        true
    }

    /// Remembers the highest round seen, for the next ballot. A round of a later
    /// configuration epoch than ours is not one this replica may use (its members
    /// are not ours): it only marks the replica as left behind (see `membership.rs`).
    pub(super) fn saw_round(&mut self, round: u64) {
        if Ballot::new(round, 0).epoch() > self.membership.epoch {
            self.later_epoch_seen = true;
            return;
        }
        self.max_round_seen = self.max_round_seen.max(round);
    }

    pub(super) fn set_promised(&mut self, ballot: Ballot) {
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.persist.push(PersistOp::Promise(ballot));
        }
    }

    pub(super) fn accept_local(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        store_accept(&mut self.ready, &mut self.log, slot, ballot, value);
    }

    /// ACCEPT: store the leader's proposals (phase 2).
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_point: Slot,
        entries: Vec<(Slot, Value)>,
    ) {
        self.accept_entries(from, ballot, commit_point, entries, false);
    }

    /// NEW-VIEW: the new leader's merged log, accepted like an ACCEPT; it also tells a
    /// follower that the leader's phase 1 is over (it records the view change).
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_new_view(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_point: Slot,
        entries: Vec<(Slot, Value)>,
    ) {
        self.accept_entries(from, ballot, commit_point, entries, true);
    }

    /// What ACCEPT and NEW-VIEW share: admit the ballot, store and acknowledge.
    fn accept_entries(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_point: Slot,
        entries: Vec<(Slot, Value)>,
        new_view: bool,
    ) {
        #[cfg(test)]
        let below_ok = self.cfg.mutation == Mutation::AcceptBelowPromise;
        #[cfg(not(test))]
        let below_ok = false;
        if !self.admit(from, ballot, below_ok) {
            return;
        }
        self.follow(from, ballot);
        if new_view {
            self.record_new_view(from, ballot, commit_point, &entries);
        }
        // Learn the leader's commit point first: what it says is chosen no longer
        // counts against the byte window below (a large request proposed right after
        // a full batch committed is then accepted at once, not a retransmission
        // later). Learned again at the end, for the entries stored meanwhile.
        #[cfg(test)]
        let learn_first = self.cfg.mutation != Mutation::CommitPointLearnedLast;
        #[cfg(not(test))]
        let learn_first = true;
        if learn_first {
            self.learn_commit_point(from, ballot, commit_point);
        }
        let window_end = self.log.commit_point().saturating_add(self.accept_window());
        let mut acked = Vec::with_capacity(entries.len());
        // The byte window: proposals in slot order, each measured against what the log
        // holds from the commit point up to it (`held`, sizes in slot order).
        let byte_budget = self.accept_bytes_budget();
        let mut entries = entries;
        entries.sort_by_key(|(slot, _)| *slot);
        let held: Vec<(Slot, usize)> = self
            .log
            .range(self.log.commit_point()..)
            .map(|(s, e)| (s, e.value.size_hint()))
            .collect();
        let mut next_held = 0;
        let mut below = 0usize;
        #[cfg(test)]
        let blind = self.cfg.mutation == Mutation::AckChosenBlindly;
        #[cfg(not(test))]
        let blind = false;
        // Decided slots the leader still proposes that we cannot vouch for: it is behind.
        let mut decided = Vec::new();
        let mut leader_behind = false;
        for (slot, value) in entries {
            // Bytes held from the commit point up to this slot, and this slot's own.
            while next_held < held.len() && held[next_held].0 < slot {
                below = below.saturating_add(held[next_held].1);
                next_held += 1;
            }
            let mut here = 0;
            if next_held < held.len() && held[next_held].0 == slot {
                here = held[next_held].1;
                next_held += 1;
            }
            if slot < self.log.commit_point() || self.log.is_chosen(slot) {
                // Decided here already. An ACCEPTED vouches for holding this value at
                // this ballot: give it only when the decided value is the proposed one
                // (a leader whose proposal lost must not count us towards a quorum).
                // A compacted slot's value is gone, so it cannot be vouched for.
                let held = self.log.get(slot);
                let same = held.is_some_and(|e| e.value == value);
                if same || blind {
                    acked.push(slot);
                } else {
                    leader_behind = true;
                    if let Some(e) = held {
                        decided.push((slot, e.value.clone()));
                    }
                }
                below = below.saturating_add(here);
                continue;
            }
            let size = value.size_hint();
            if slot >= window_end || (below > 0 && below.saturating_add(size) > byte_budget) {
                // Beyond what we hold above our commit point: fetch first.
                below = below.saturating_add(here);
                continue;
            }
            below = below.saturating_add(size);
            self.accept_local(slot, ballot, value);
            acked.push(slot);
        }
        if !acked.is_empty() {
            let incarnation = self.incarnation;
            self.send(
                from,
                Message::Accepted {
                    ballot,
                    slots: acked,
                    incarnation,
                },
            );
        }
        #[cfg(test)]
        let leader_behind = leader_behind && self.cfg.mutation != Mutation::SilentAboutDecided;
        if leader_behind {
            self.tell_leader_behind(from, decided);
        }
        self.learn_commit_point(from, ballot, commit_point);
    }

    /// The leader proposed slots decided here: tell it what we know of them.
    #[cold]
    #[inline(never)]
    fn tell_leader_behind(&mut self, leader: NodeId, decided: Vec<(Slot, Value)>) {
        // Without our vote for those slots the leader may never reach a quorum for
        // them (if the others compacted them too); and nothing else tells a leader
        // that its followers are ahead. Tell it what we know, as a FETCH-REPLY: our
        // commit point (it then fetches, a snapshot if we compacted) and the chosen
        // values we still hold (which it learns, stepping down if they are not its
        // own).
        self.send_fetch_reply(leader, decided);
    }

    /// Records the view change a NEW-VIEW announces (once per ballot).
    #[cold]
    #[inline(never)]
    fn record_new_view(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_point: Slot,
        entries: &[(Slot, Value)],
    ) {
        let start = entries
            .iter()
            .map(|(s, _)| *s)
            .min()
            .unwrap_or(commit_point);
        let end = entries.iter().map(|(s, _)| s + 1).max().unwrap_or(start);
        let noops = entries.iter().filter(|(_, v)| *v == Value::Noop).count() as u64;
        if !self
            .views
            .iter()
            .any(|v| v.ballot == ballot && v.direction == ViewDirection::Received)
        {
            self.views
                .retain(|v| !(v.ballot == ballot && v.direction == ViewDirection::Adopted));
            self.record_view(ViewChange {
                ballot,
                leader: from,
                direction: ViewDirection::Received,
                slots: start..end,
                noops,
                tick: self.now,
            });
        }
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit_point: Slot) {
        if !self.admit(from, ballot, false) {
            return;
        }
        self.follow(from, ballot);
        // An empty ACCEPTED acknowledges the heartbeat: the leader counts who it hears
        // from to notice when it is cut off from a majority.
        let incarnation = self.incarnation;
        self.send(
            from,
            Message::Accepted {
                ballot,
                slots: Vec::new(),
                incarnation,
            },
        );
        self.learn_commit_point(from, ballot, commit_point);
    }

    /// COMMIT: the leader's commit point moved. Handled like a heartbeat, without the
    /// acknowledgement.
    pub(super) fn on_commit(&mut self, from: NodeId, ballot: Ballot, commit_point: Slot) {
        if !self.admit(from, ballot, false) {
            return;
        }
        self.follow(from, ballot);
        self.learn_commit_point(from, ballot, commit_point);
    }

    /// How far above its commit point an acceptor holds entries.
    pub(super) fn accept_window(&self) -> Slot {
        ACCEPT_WINDOW_FACTOR.saturating_mul(self.cfg.max_inflight)
    }

    /// How many bytes of values below a proposal an acceptor may hold above its commit
    /// point and still accept it (see [`ACCEPT_BYTES_FACTOR`]).
    pub(super) fn accept_bytes_budget(&self) -> usize {
        #[cfg(test)]
        if matches!(
            self.cfg.mutation,
            Mutation::AcceptIgnoresBytes | Mutation::BatchesIgnoreBytes
        ) {
            return usize::MAX;
        }
        ACCEPT_BYTES_FACTOR.saturating_mul(self.cfg.max_message_bytes)
    }
}
