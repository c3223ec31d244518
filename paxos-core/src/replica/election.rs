//! Election: pre-vote, election timeouts, leader stickiness, starting phase 1, and
//! stepping down.

use std::collections::BTreeMap;

use rand_core::Rng;

use super::*;
use crate::message::Message;
use crate::traits::StateMachine;
use crate::types::{Ballot, NodeId, Response, Slot};

#[cfg(test)]
use crate::mutation::Mutation;

/// Election timeouts a replica that saw a later epoch spends catching up, without its
/// commit point moving, before it campaigns in its own epoch.
const LATER_EPOCH_WAITS: u32 = 3;

impl<S: StateMachine> Replica<S> {
    pub(super) fn start_prevote(&mut self) {
        debug_assert!(!self.cfg.learner, "a learner never campaigns");
        let round = self.max_round_seen.max(self.promised.round) + 1;
        let ticks = self.random_timeout();
        if self.later_epoch_seen {
            // A later configuration exists: our members may have moved on. Ask where
            // the log went; while there is somewhere to catch up from, catch up (the
            // stop-sign changes our members) rather than campaign. With nowhere to go
            // (those that moved on are gone), campaign in our own epoch: a leader
            // there re-proposes the stop-sign (R1, R2) and the epoch ends.
            self.probe_peers();
            // Only for a few timeouts without progress: what we heard of may be gone
            // (a replica that told us its commit point, then lost its disk).
            if self.catch_up.known() > self.log.commit_point()
                && self.later_epoch_waits < LATER_EPOCH_WAITS
            {
                self.later_epoch_waits += 1;
                self.timers.election.reset(self.now, ticks);
                return;
            }
        }
        let ballot = Ballot::new(round, self.cfg.id);
        self.prevote = Some((ballot, 1 << self.me));
        self.exec.count().prevotes_started += 1;
        tracing::debug!(
            node = self.cfg.id,
            %ballot,
            leader = %Who(self.leader),
            "election timeout: asking for pre-votes"
        );
        self.timers.election.reset(self.now, ticks);
        self.broadcast(Message::PreVote { ballot });
        self.check_prevotes();
    }

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_prevote(&mut self, from: NodeId, ballot: Ballot) {
        self.tell_behind(from, ballot);
        if ballot.node != from || ballot <= self.promised || self.leader_alive() {
            return;
        }
        self.send(from, Message::PreVoteGranted { ballot });
    }

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_prevote_granted(&mut self, from_idx: usize, ballot: Ballot) {
        match &mut self.prevote {
            Some((b, grants)) if *b == ballot => *grants |= 1 << from_idx,
            _ => return,
        }
        self.check_prevotes();
    }

    pub(super) fn check_prevotes(&mut self) {
        #[allow(unused_mut)]
        let mut needed = self.quorum;
        #[cfg(test)]
        if self.cfg.mutation == Mutation::PreVoteNeedsEveryone {
            needed = self.cfg.members.len() as u32;
        }
        if let Some((_, grants)) = self.prevote {
            if grants.count_ones() >= needed && matches!(self.role, RoleState::Follower) {
                self.start_election(false);
            }
        }
    }

    /// Leader stickiness: while a live leader is heard, do not help depose it.
    pub(super) fn leader_alive(&self) -> bool {
        match self.role {
            RoleState::Leader(_) => true,
            RoleState::Candidate(_) => false,
            RoleState::Follower => {
                self.leader.is_some() && !self.timers.leader_contact.expired(self.now)
            }
        }
    }

    /// Runs for leader at a new ballot. `handover`: the leader handed over to this
    /// replica ([`Message::TimeoutNow`]), so acceptors promise despite stickiness.
    pub(super) fn start_election(&mut self, handover: bool) {
        debug_assert!(!self.cfg.learner, "a learner never campaigns");
        let round = self.max_round_seen.max(self.promised.round) + 1;
        self.prevote = None;
        self.step_down_queue(None);
        self.max_round_seen = round;
        let ballot = Ballot::new(round, self.cfg.id);
        self.exec.count().elections_started += 1;
        tracing::info!(
            node = self.cfg.id,
            %ballot,
            old_leader = %Who(self.leader),
            commit_point = self.log.commit_point(),
            "starting an election"
        );
        self.set_promised(ballot);
        self.set_leader(None);
        let patience = self.random_timeout() << self.timers.backoff.min(timers::MAX_BACKOFF);
        let give_up = Timeout::after(self.now, patience);
        let from_slot = self.log.commit_point();
        let nonce = self.rng.next_u64();
        self.role = RoleState::Candidate(Candidate {
            ballot,
            nonce,
            handover,
            known: self.peer_inc.clone(),
            from_slot,
            promises: BTreeMap::new(),
            pages: BTreeMap::new(),
            give_up,
            resend: Timeout::after(self.now, self.cfg.retransmit_ticks),
        });
        self.broadcast(Message::Prepare {
            ballot,
            from_slot,
            nonce,
            handover,
        });
        self.check_promises();
    }

    /// Starts an election at once, skipping the timeout and the pre-vote: lets tests
    /// choose who runs for leader.
    #[cfg(test)]
    pub(crate) fn start_election_now(&mut self) {
        self.start_election(false);
    }

    /// Adopts `from` (owner of `ballot >= promised`) as leader.
    pub(super) fn follow(&mut self, from: NodeId, ballot: Ballot) {
        if ballot > self.promised {
            self.set_promised(ballot);
        }
        let changed = self.leader != Some(from) || !matches!(self.role, RoleState::Follower);
        if changed {
            self.become_follower(Some(from));
            if !self.views.iter().any(|v| v.ballot == ballot) {
                self.record_view(ViewChange {
                    ballot,
                    leader: from,
                    direction: ViewDirection::Adopted,
                    slots: 0..0,
                    noops: 0,
                    tick: self.now,
                });
            }
        }
        self.restart_election_timers();
    }

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        self.saw_round(promised.round);
        let mine = match &self.role {
            RoleState::Leader(l) => Some(l.ballot),
            RoleState::Candidate(c) => Some(c.ballot),
            RoleState::Follower => None,
        };
        if mine == Some(ballot) && promised > ballot {
            // A promise of a later epoch is not ours to adopt: we could then vote in
            // neither epoch (`saw_round` noted that we may be behind).
            #[cfg(test)]
            let adopts_any = self.cfg.mutation == Mutation::NackAdoptsLaterEpoch;
            #[cfg(not(test))]
            let adopts_any = false;
            if promised.epoch() <= self.membership.epoch || adopts_any {
                self.set_promised(promised);
            }
            self.become_follower(None);
            self.restart_election_timers();
        }
    }

    /// Leaves leadership or candidacy. Requests waiting here are answered with a
    /// redirect so their clients retry elsewhere (with the same request numbers).
    pub(super) fn become_follower(&mut self, leader: Option<NodeId>) {
        if leader.is_some() {
            self.prevote = None;
        }
        if !matches!(self.role, RoleState::Follower) {
            self.step_down_queue(leader);
            self.role = RoleState::Follower;
        }
        self.set_leader(leader);
    }

    /// Changes the leader this replica believes in, with an `info` line naming the old
    /// and the new one when it changes (and a count in [`Counters::leader_changes`]
    /// when a new leader is known).
    ///
    /// [`Counters::leader_changes`]: crate::Counters::leader_changes
    pub(super) fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader == leader {
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            ballot = %self.promised,
            old_leader = %Who(self.leader),
            new_leader = %Who(leader),
            "leader changed"
        );
        if leader.is_some() {
            self.timers.backoff = 0;
            self.exec.count().leader_changes += 1;
        }
        self.leader = leader;
    }

    pub(super) fn step_down_queue(&mut self, leader: Option<NodeId>) {
        self.step_down_reads(leader);
        if let RoleState::Leader(l) = &mut self.role {
            l.queue.clear();
        }
        // Sorted: the replica's outputs must not depend on hash order.
        let mut waiting: Vec<_> = self.awaiting.drain().collect();
        waiting.sort_unstable();
        for (client, seq) in waiting {
            self.reply(client, seq, Response::Redirect { leader });
        }
    }

    /// A leader that finds a slot decided under a higher ballot stops leading at once:
    /// see [`learn`](Self::learn).
    pub(super) fn step_down_superseded(&mut self, slot: Slot) {
        tracing::info!(
            node = self.cfg.id,
            slot,
            "a higher ballot decided a slot this leader owns: stepping down"
        );
        self.become_follower(None);
        self.restart_election_timers();
    }

    /// Heard from a leader, or left a role: the leader this replica follows (if any)
    /// counts as alive for an election timeout, and the next election waits a fresh
    /// randomized timeout.
    pub(super) fn restart_election_timers(&mut self) {
        self.timers
            .leader_contact
            .reset(self.now, self.cfg.election_ticks);
        let ticks = self.random_timeout();
        self.timers.election.reset(self.now, ticks);
    }
}

/// A leader in a log line: its id, or `none`.
pub(super) struct Who(pub(super) Option<NodeId>);

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("none"),
        }
    }
}
