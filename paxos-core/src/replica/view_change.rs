//! View change: PREPARE, PROMISE, the merge of the promised logs, and NEW-VIEW.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::*;
use crate::message::{Message, PromiseEntry};
use crate::traits::StateMachine;
use crate::types::{Ballot, NodeId, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

#[derive(Debug)]
pub(super) struct Promised {
    /// The slot the promiser reported from: the PREPARE's `from_slot`.
    pub(super) answers: Slot,
    pub(super) commit_point: Slot,
    pub(super) entries: Vec<PromiseEntry>,
    pub(super) truncated: bool,
    /// The promiser's incarnation when it promised.
    pub(super) incarnation: u64,
}

/// The pages of one PROMISE received so far.
#[derive(Debug)]
pub(super) struct Paged {
    /// The entries of the pages so far, in slot order.
    pub(super) entries: Vec<PromiseEntry>,
    /// Where the next page starts: the slot after the last entry so far.
    pub(super) next: Slot,
    /// The promiser's incarnation on the first page: a page from another life starts
    /// the promise over.
    pub(super) incarnation: u64,
}

#[derive(Debug)]
pub(super) struct Candidate {
    pub(super) ballot: Ballot,
    /// Running because the leader handed over (see [`Message::TimeoutNow`]).
    pub(super) handover: bool,
    /// Echoed by the promises that count (see `recovery.rs`).
    pub(super) nonce: u64,
    /// The latest incarnation known of each peer: ours, and what promises told us.
    pub(super) known: BTreeMap<NodeId, u64>,
    pub(super) from_slot: Slot,
    pub(super) promises: BTreeMap<NodeId, Promised>,
    /// PROMISEs that came in pages (entries above the promiser's commit point beyond a
    /// message): what the pages so far carried, until the last one completes it.
    pub(super) pages: BTreeMap<NodeId, Paged>,
    /// Expires when the election failed (randomized): the candidate asks for
    /// pre-votes again.
    pub(super) give_up: Timeout,
    /// Expires when PREPARE is due again to the peers that have not promised.
    pub(super) resend: Timeout,
}

impl<S: StateMachine> Replica<S> {
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        nonce: u64,
        handover: bool,
    ) {
        if !self.admit(from, ballot, false) {
            return;
        }
        if ballot > self.promised {
            #[cfg(test)]
            let handover = handover && self.cfg.mutation != Mutation::HandoverIgnored;
            if self.leader_alive() && self.leader != Some(from) && !handover {
                return;
            }
            self.set_promised(ballot);
            self.become_follower(None);
            self.restart_election_timers();
        }
        // Report everything at or above `from_slot`: chosen entries below our commit
        // point up to a batch, then every entry from the commit point up (bounded by the
        // acceptance window).
        // Slots below our compaction point are gone from the log: the candidate must
        // fetch our checkpoint first.
        let mut entries = Vec::new();
        let mut truncated = from_slot < self.log.start();
        let below = from_slot..self.log.commit_point().max(from_slot);
        let (max_batch, max_bytes) = self.batch_limits();
        #[cfg(test)]
        let unpaged = self.cfg.mutation == Mutation::PromisesUnpaged;
        #[cfg(not(test))]
        let unpaged = false;
        let mut bytes = 0usize;
        for (s, e) in self.log.range(below) {
            bytes = bytes.saturating_add(e.value.size_hint());
            if truncated || entries.len() >= max_batch || (!entries.is_empty() && bytes > max_bytes)
            {
                truncated = true;
                break;
            }
            entries.push(PromiseEntry {
                slot: s,
                ballot: e.ballot,
                value: e.value.clone(),
                chosen: true,
            });
        }
        if !truncated {
            // Entries above the commit point come in pages of `max_bytes` (at least one
            // entry each): a page cut here ends above our commit point, and the
            // candidate asks for the rest from the slot after it (see `on_promise`).
            for (s, e) in self.log.range(self.log.commit_point().max(from_slot)..) {
                let size = e.value.size_hint();
                if !entries.is_empty() && bytes.saturating_add(size) > max_bytes && !unpaged {
                    truncated = true;
                    break;
                }
                bytes = bytes.saturating_add(size);
                entries.push(PromiseEntry {
                    slot: s,
                    ballot: e.ballot,
                    value: e.value.clone(),
                    chosen: e.chosen,
                });
            }
        }
        let commit_point = self.log.commit_point();
        let incarnation = self.incarnation;
        let incarnations = self.incarnation_table();
        self.send(
            from,
            Message::Promise {
                ballot,
                commit_point,
                entries,
                truncated,
                nonce,
                incarnation,
                incarnations,
                from_slot,
            },
        );
    }

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        nonce: u64,
        incarnations: &[(NodeId, u64)],
        mut promised: Promised,
    ) {
        let window = self.accept_window();
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || c.nonce != nonce {
            return;
        }
        #[cfg(test)]
        let forgetful = self.cfg.mutation == Mutation::RecoveryWithoutIncarnations;
        #[cfg(not(test))]
        let forgetful = false;
        if !forgetful {
            for &(node, inc) in incarnations {
                let k = c.known.entry(node).or_insert(0);
                *k = (*k).max(inc);
            }
        }
        // An acceptor holds nothing beyond its acceptance window, nor anything below what
        // we asked for: drop such entries rather than let them size the new view.
        let limit = c
            .from_slot
            .max(promised.commit_point)
            .saturating_add(window);
        let from_slot = c.from_slot;
        // A page of a PROMISE cut above the promiser's commit point (see `on_prepare`):
        // the entries there are not known chosen, and the merge needs all of them.
        // Keep the page and ask for the next from the slot after it.
        let paged_to = match promised.entries.last() {
            Some(last) if promised.truncated && last.slot >= promised.commit_point => {
                Some(last.slot.saturating_add(1))
            }
            _ => None,
        };
        // Each reply names the slot it reports from. Part-way through a paged PROMISE
        // only the page asked for counts; otherwise a reply from our `from_slot` or
        // below (an earlier PREPARE's, covering more) starts afresh. Anything else is a
        // duplicate or a page of an earlier attempt: taken as a whole PROMISE it would
        // hide the entries below it.
        #[cfg(test)]
        if self.cfg.mutation == Mutation::PageRepliesUnchecked {
            promised.answers = c.pages.get(&from).map_or(from_slot, |p| p.next);
        }
        match c.pages.remove(&from) {
            Some(p)
                if promised.answers == p.next
                    && p.incarnation == promised.incarnation
                    && paged_to.is_none_or(|next| next > p.next) =>
            {
                // A page holds nothing below where it was asked to start (a correct
                // promiser never sends it; kept out, pages only ever grow upwards).
                promised.entries.retain(|e| e.slot >= p.next);
                let mut entries = p.entries;
                entries.append(&mut promised.entries);
                promised.entries = entries;
            }
            Some(p) if promised.incarnation > p.incarnation => {
                // Another life of the promiser: its earlier pages no longer count. Ask
                // again from the start.
                let handover = c.handover;
                self.send(
                    from,
                    Message::Prepare {
                        ballot,
                        from_slot,
                        nonce,
                        handover,
                    },
                );
                return;
            }
            Some(p) => {
                c.pages.insert(from, p);
                return;
            }
            None if promised.answers > from_slot => return,
            None => {}
        }
        promised
            .entries
            .retain(|e| e.slot >= from_slot && e.slot < limit);
        let a_page = paged_to.is_some();
        #[cfg(test)]
        let paged_to = paged_to.filter(|_| self.cfg.mutation != Mutation::PromisePageTakenWhole);
        if let Some(next) = paged_to.filter(|next| *next < limit) {
            let handover = c.handover;
            c.pages.insert(
                from,
                Paged {
                    entries: promised.entries,
                    next,
                    incarnation: promised.incarnation,
                },
            );
            self.send(
                from,
                Message::Prepare {
                    ballot,
                    from_slot: next,
                    nonce,
                    handover,
                },
            );
            return;
        }
        // The last page, or a PROMISE cut below its commit point (learned from, then
        // prepared again: see `check_promises`).
        promised.truncated = promised.truncated && !a_page;
        c.promises.insert(from, promised);
        self.check_promises();
    }

    pub(super) fn check_promises(&mut self) {
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        // A promise from an incarnation older than the latest we know of its sender
        // was made by a state that is gone: it does not count (see `recovery.rs`).
        let known = &c.known;
        c.promises
            .retain(|n, p| p.incarnation >= known.get(n).copied().unwrap_or(0));
        if c.promises.len() as u32 + 1 < self.quorum {
            return;
        }
        let candidate = match std::mem::replace(&mut self.role, RoleState::Follower) {
            RoleState::Candidate(c) => c,
            _ => return,
        };
        if candidate.promises.values().any(|p| p.truncated) {
            // Too far behind to merge in one go: learn the chosen entries we were sent,
            // then prepare again (same ballot) from the new commit point. What was
            // compacted away at the promisers comes by state transfer (fetch).
            let before = self.log.commit_point();
            for (node, p) in &candidate.promises {
                self.catch_up.heard(*node, p.commit_point);
                for e in &p.entries {
                    if e.chosen {
                        self.learn(e.slot, e.value.clone());
                    }
                }
            }
            self.advance_commit();
            if candidate.ballot.epoch() != self.membership.epoch {
                // What we learned held a stop-sign: this epoch's candidacy is over.
                return;
            }
            let from_slot = self.log.commit_point();
            let ballot = candidate.ballot;
            let nonce = candidate.nonce;
            let handover = candidate.handover;
            self.role = RoleState::Candidate(Candidate {
                ballot,
                nonce,
                handover,
                known: candidate.known,
                from_slot,
                promises: BTreeMap::new(),
                pages: BTreeMap::new(),
                give_up: candidate.give_up,
                resend: Timeout::after(self.now, self.cfg.retransmit_ticks),
            });
            // Without progress, wait for the catch-up and let the tick resend.
            if from_slot > before {
                self.broadcast(Message::Prepare {
                    ballot,
                    from_slot,
                    nonce,
                    handover,
                });
            }
            return;
        }
        self.become_leader(candidate);
    }

    pub(super) fn become_leader(&mut self, c: Candidate) {
        let ballot = c.ballot;
        let min_incarnation: Vec<u64> = self
            .cfg
            .members
            .iter()
            .map(|m| c.known.get(m).copied().unwrap_or(0))
            .collect();
        let promised_commit = c
            .promises
            .values()
            .map(|p| p.commit_point)
            .max()
            .unwrap_or(0);
        self.catch_up.raise(promised_commit);
        // Merge: per slot, a chosen value wins; otherwise the highest ballot's value.
        // After a membership change, entries accepted under an older epoch's ballots
        // above our commit point (past the stop-sign) were never chosen: left out
        // (R3 of `membership.rs`).
        let epoch = self.membership.epoch;
        #[cfg(test)]
        let old_epochs_count = self.cfg.mutation == Mutation::OldEpochEntriesMerged;
        #[cfg(not(test))]
        let old_epochs_count = false;
        let current = |b: Ballot, chosen: bool| chosen || b.epoch() >= epoch || old_epochs_count;
        let mut merged: BTreeMap<Slot, (Ballot, Value, bool)> = self
            .log
            .range(c.from_slot..)
            .map(|(s, e)| {
                (
                    s,
                    (
                        e.ballot,
                        e.value.clone(),
                        e.chosen || s < self.log.commit_point(),
                    ),
                )
            })
            .filter(|(_, (b, _, chosen))| current(*b, *chosen))
            .collect();
        #[cfg(test)]
        let ignore_promises = self.cfg.mutation == Mutation::IgnorePromisedValues;
        #[cfg(not(test))]
        let ignore_promises = false;
        if !ignore_promises {
            for p in c.promises.into_values() {
                for e in p.entries {
                    if !current(e.ballot, e.chosen) {
                        continue;
                    }
                    match merged.get_mut(&e.slot) {
                        None => {
                            merged.insert(e.slot, (e.ballot, e.value, e.chosen));
                        }
                        Some(cur) => {
                            if cur.2 {
                                continue;
                            }
                            if e.chosen || self.merge_prefers(e.ballot, cur.0) {
                                *cur = (e.ballot, e.value, e.chosen);
                            }
                        }
                    }
                }
            }
        }
        // R2: a stop-sign of this epoch is kept, with nothing above it, unless the
        // merge shows it was not chosen.
        let stop_sign = membership::stop_sign_rule(
            &mut merged,
            epoch,
            #[cfg(test)]
            self.cfg.mutation,
        );
        for (s, (_, v, chosen)) in &merged {
            if *chosen {
                self.learn(*s, v.clone());
            }
        }
        self.advance_commit();
        if self.membership.epoch != epoch {
            // The merge showed the stop-sign chosen, and executing it ended this
            // epoch (and the candidacy): the new members elect the next leader.
            return;
        }
        let start = self.log.commit_point();
        let end = merged
            .last_key_value()
            .map_or(start, |(s, _)| (s + 1).max(start));
        let mut entries = Vec::new();
        let mut inflight = BTreeMap::new();
        let mut noops = 0;
        let self_bit = 1u64 << self.me;
        // NEW-VIEW carries the merged log up to a message's worth of bytes (at least one
        // entry); the rest is re-proposed through the in-flight byte budget, first
        // thing, as the window drains (`pump`). The merge can hold several promisers'
        // windows of batches: sent or adopted whole, it could exceed a frame, and so
        // could this leader's own PROMISE later.
        #[cfg(test)]
        let unpaged = self.cfg.mutation == Mutation::NewViewUnpaged;
        #[cfg(not(test))]
        let unpaged = false;
        let max_bytes = self.batch_limits().1;
        let mut view_bytes = 0usize;
        let mut readopt = BTreeMap::new();
        for s in start..end {
            let (value, chosen) = match merged.remove(&s) {
                Some((_, v, chosen)) => (v, chosen),
                None => {
                    noops += 1;
                    (Value::Noop, false)
                }
            };
            let size = value.size_hint();
            if !readopt.is_empty()
                || (!entries.is_empty() && view_bytes.saturating_add(size) > max_bytes && !unpaged)
            {
                readopt.insert(s, value);
                continue;
            }
            view_bytes = view_bytes.saturating_add(size);
            if !chosen {
                self.accept_local(s, ballot, value.clone());
                inflight.insert(
                    s,
                    Inflight {
                        acks: self_bit,
                        resend: Timeout::after(self.now, self.cfg.retransmit_ticks),
                        bytes: value.size_hint(),
                    },
                );
            }
            entries.push((s, value));
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::MergeBeyondViewDropped {
            readopt.clear();
        }
        self.exec.count().elections_won += 1;
        tracing::info!(
            node = self.cfg.id,
            %ballot,
            slots = ?(start..end),
            noops,
            "elected leader"
        );
        self.set_leader(Some(self.cfg.id));
        #[allow(unused_mut)]
        let mut clock_from = self.log_time_at(end, &readopt);
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ClockIgnoresReadopt {
            clock_from = self.log_time_at(end, &BTreeMap::new());
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::LeaderClockFromExecuted {
            clock_from = self.exec.sessions().log_time();
        }
        self.role = RoleState::Leader(Box::new(Leader {
            ballot,
            next_slot: end,
            inflight_bytes: inflight.values().map(|i: &Inflight| i.bytes).sum(),
            inflight,
            queue: VecDeque::new(),
            proposed: HashMap::default(),
            fresh: Vec::new(),
            heartbeat: Timeout::after(self.now, self.cfg.heartbeat_ticks),
            announced_commit: self.log.commit_point(),
            contact: vec![
                Timeout::after(self.now, self.cfg.election_ticks * 2);
                self.cfg.members.len()
            ],
            min_incarnation,
            view_end: end,
            readopt,
            reads: Reads::new(self.now),
            transfer: None,
            clock: SessionClock::start(clock_from, self.now, self.cfg.session_clock_ticks),
            stop_sign: stop_sign.filter(|s| *s >= start),
            voted_at: vec![None; self.cfg.members.len()],
            held_until: None,
        }));
        self.record_view(ViewChange {
            ballot,
            leader: self.cfg.id,
            direction: ViewDirection::Sent,
            slots: start..end,
            noops,
            tick: self.now,
        });
        let commit_point = self.log.commit_point();
        self.broadcast(Message::NewView {
            ballot,
            commit_point,
            entries,
        });
        // With expiry on, the clock step that opens the reign goes first.
        self.clock_opened();
        self.check_commits();
        self.pump();
    }

    pub(super) fn merge_prefers(&self, incoming: Ballot, current: Ballot) -> bool {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::LowestBallotWins {
            return incoming < current;
        }
        incoming > current
    }
}
