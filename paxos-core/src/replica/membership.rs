//! Membership changes: stop-signs and configuration epochs.
//!
//! Each configuration ([`Membership`]) is its own Paxos instance over a range of slots,
//! in the manner of Vertical Paxos (Lamport, Malkhi and Zhou, PODC 2009) and of
//! OmniPaxos's stop-signs: a change is a log value, [`Value::Reconfigure`] for epoch
//! `k + 1`, proposed by the leader of epoch `k`. Once it is chosen in slot `s`, the
//! members it names decide every slot above `s`, with ballots of epoch `k + 1`
//! ([`Ballot::epoch`]), which are above every ballot of epoch `k`.
//!
//! The danger is a value chosen above `s` in epoch `k` as well: a later leader of
//! epoch `k` could find the stop-sign accepted by a minority and, above it, a value
//! accepted by another, re-propose both, and have both chosen in epoch `k`, while the
//! new members decide slot `s + 1` afresh. Four rules make that impossible (see
//! `docs/design-membership.md` for the argument, and `docs/membership-model/` for the
//! model checker that tested it):
//!
//! - **R1.** A leader that proposes, or re-proposes, a stop-sign in slot `s` proposes
//!   nothing above `s` (`Leader::stop_sign`): no request, no clock step.
//! - **R2.** A new leader's merge ([`stop_sign_rule`]), scanning up from its commit
//!   point: at the first stop-sign of the next epoch, if an entry above it is flagged
//!   chosen or was accepted at a higher ballot, the stop-sign cannot have been chosen
//!   and becomes a no-op; otherwise the stop-sign is kept and everything above it is
//!   dropped (R1 then holds for the new leader too).
//! - **R3.** A replica moves to epoch `k + 1` when it *executes* the stop-sign, in the
//!   step in which its commit point passes `s` ([`Replica::execute_stop_sign`]): it
//!   promises [`Ballot::epoch_base`]`(k + 1)` (so no ballot of epoch `k` counts with
//!   it again), adopts the new members, and gives up any leadership or candidacy of
//!   epoch `k`. A candidate of epoch `k + 1` ignores promised entries above `s` that
//!   were accepted under an older epoch's ballots (they cannot have been chosen).
//! - **R4.** Learning from a peer is contiguous: once a cluster has changed its
//!   membership, a FETCH is answered only with values below the sender's own commit
//!   point, so whoever holds a value marked chosen above a stop-sign also holds the
//!   stop-sign marked chosen (what R2's "flagged chosen" clause relies on).
//!
//! A replica that is not a member of the new configuration becomes a
//! [learner](crate::Config::learner): it keeps copying the chosen log from the members.
//! A learner that the new configuration names becomes a member; unless its durable
//! state says it is a voter already, it first recovers (`recovery.rs`), so that a
//! replica that lost its disk and came back as a "new" node cannot vote twice.
//!
//! A replica votes only in its own epoch: a message with a ballot of a later one is
//! not handled, but tells it whom to catch up from. So an acceptor never promises
//! the next epoch's leader before holding the stop-sign: otherwise, with that leader
//! gone, nobody might know the stop-sign was chosen, and the old members could run
//! phase 1 in neither epoch. A replica left behind in an epoch whose members moved on
//! (say it was cut off while the stop-sign was chosen) cannot win an election there:
//! the new members answer its PRE-VOTE, PREPARE and RECOVER with their commit point
//! instead (a FETCH-REPLY without entries), and it catches up as any replica behind
//! does. One that has seen a later epoch asks its peers where the log went before
//! each election, and campaigns (in its own epoch) only when none knows more.
//!
//! A recovery (`recovery.rs`) is granted by a majority of the recovering replica's
//! configuration, which may be behind: a replica wiped after voting in epoch `k + 1`
//! can recover among epoch-`k` members that never heard of `k + 1`. So a recovery
//! does not complete while a stop-sign of a later epoch lies at or above the
//! replica's commit point ([`Replica::undecided_stop_sign`]): it waits until that slot
//! is decided. If the stop-sign is chosen, executing it moves the replica to the next
//! epoch while it still recovers, and the recovery starts over among that epoch's
//! members (by installing a checkpoint of a later epoch, too). A stop-sign chosen
//! before the grants is in one of them, or below a grantor's commit point (then
//! executed during the catch-up): the grant majority meets the quorum that chose it.
//! So a recovery that completes in epoch `k` completes before epoch `k + 1` began,
//! and the lost life cannot have voted in it or any later one.

use std::sync::Arc;

use super::*;
use crate::error::ReconfigureError;
use crate::types::{Member, Membership, Value};

#[cfg(test)]
use crate::mutation::Mutation;

impl<S: StateMachine> Replica<S> {
    /// The configuration this replica is in: the voting members and the epoch.
    ///
    /// It changes when the replica executes a [`Value::Reconfigure`], or installs a
    /// checkpoint taken after one. Before any change it is
    /// [`Config::members`](crate::Config::members), in epoch 0, without addresses.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Proposes a new configuration: `members` will vote on every slot after the one
    /// this stop-sign is chosen in. Only the leader accepts a change; it proposes
    /// nothing else until the stop-sign is executed, then steps down so that the new
    /// members elect a leader of the next epoch (usually this replica again, if it
    /// stays a member: it starts an election at its next tick).
    ///
    /// Returns the slot the stop-sign is proposed in. Whether it is chosen is seen
    /// when [`membership`](Self::membership)'s epoch moves on (or, if the leader is
    /// deposed first, perhaps never: a later leader may turn an unchosen stop-sign into
    /// a no-op, and the change must be asked for again).
    ///
    /// Add members as [learners](crate::Config::learner) first and let them catch up:
    /// a new configuration whose majority is far behind cannot choose anything until
    /// it has caught up. At most as many members as the new configuration tolerates
    /// failures may be new at once (one for three or four members, two for five):
    /// each new member votes only once a majority of the others granted its recovery.
    /// So a cluster of one cannot grow this way (start it with its final members).
    ///
    /// ```
    /// use paxos_core::{Config, Member, MemStorage, Replica, Storage, StateMachine, RestoreError};
    /// # #[derive(Default)] struct Noop;
    /// # impl StateMachine for Noop {
    /// #     type Command = u8; type Output = u8;
    /// #     fn apply(&mut self, c: u8) -> u8 { c }
    /// #     fn snapshot(&self) -> Vec<u8> { vec![] }
    /// #     fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> { Ok(()) }
    /// # }
    /// let mut storage = MemStorage::new();
    /// let mut replica = Replica::new(Config::new(1, vec![1]), Noop, storage.load().unwrap()).unwrap();
    /// while replica.status().leader != Some(1) {
    ///     replica.tick();
    ///     replica.drive(&mut storage, |_, _| {}, |_| {}).unwrap();
    /// }
    /// let member = |id: u64| Member { id, address: String::new() };
    /// // Two new members at once is more than three members tolerate failing.
    /// assert!(replica.reconfigure(vec![member(1), member(2), member(3)]).is_err());
    /// // A cluster of one chooses a stop-sign with its own vote, at once (here, one
    /// // that gives the member an address).
    /// let me = Member { id: 1, address: "127.0.0.1:7001".into() };
    /// replica.reconfigure(vec![me]).unwrap();
    /// replica.drive(&mut storage, |_, _| {}, |_| {}).unwrap();
    /// assert_eq!(replica.membership().epoch, 1);
    /// assert_eq!(replica.membership().address(1), Some("127.0.0.1:7001"));
    /// ```
    pub fn reconfigure(&mut self, members: Vec<Member>) -> Result<Slot, ReconfigureError> {
        let membership = Membership {
            epoch: self.membership.epoch + 1,
            members,
        };
        membership.validate().map_err(ReconfigureError::Invalid)?;
        let added = membership
            .members
            .iter()
            .filter(|m| !self.membership.contains(m.id))
            .count();
        let max = (membership.members.len() - 1) / 2;
        if added > max {
            return Err(ReconfigureError::TooManyNewMembers { added, max });
        }
        let window_end = self.log.commit_point().saturating_add(self.accept_window());
        let RoleState::Leader(l) = &mut self.role else {
            return Err(ReconfigureError::NotLeader {
                leader: self.leader.filter(|l| *l != self.cfg.id),
            });
        };
        // A member that has not voted for this leader may be recovering (or down):
        // counted with the new members, who recover before they vote, it must leave a
        // majority of the new configuration able to vote.
        let (me, now, lately) = (self.cfg.id, self.now, self.cfg.election_ticks);
        let silent: Vec<NodeId> = self
            .cfg
            .members
            .iter()
            .zip(&l.voted_at)
            .filter(|(id, at)| {
                **id != me
                    && membership.contains(**id)
                    && at.is_none_or(|t| now.saturating_sub(t) > lately)
            })
            .map(|(id, _)| *id)
            .collect();
        if added + silent.len() > max {
            return Err(ReconfigureError::MembersNotVoting {
                members: silent,
                added,
            });
        }
        if l.stop_sign.is_some()
            || !l.readopt.is_empty()
            || l.transfer.is_some()
            || l.next_slot >= window_end
        {
            return Err(ReconfigureError::Busy);
        }
        let slot = l.next_slot;
        if self.log.is_chosen(slot) {
            // Decided under another ballot: this leader is superseded.
            self.step_down_superseded(slot);
            return Err(ReconfigureError::NotLeader { leader: None });
        }
        l.next_slot += 1;
        l.stop_sign = Some(slot);
        tracing::info!(
            node = self.cfg.id,
            slot,
            epoch = membership.epoch,
            members = ?membership.ids(),
            "proposing a membership change"
        );
        let resend = Timeout::after(self.now, self.cfg.retransmit_ticks);
        let value = Value::Reconfigure(Arc::new(membership));
        l.propose(&mut self.ready, &mut self.log, self.me, resend, slot, value);
        if self.quorum == 1 {
            self.check_commits();
        }
        Ok(slot)
    }

    /// Executes the stop-sign chosen in `slot` (R3): the configuration `m` governs the
    /// slots above it. One whose epoch is not the next is a no-op, on every replica
    /// alike.
    pub(super) fn execute_stop_sign(&mut self, slot: Slot, m: Arc<Membership>) {
        if m.epoch != self.membership.epoch + 1 || m.validate().is_err() {
            tracing::warn!(
                node = self.cfg.id,
                slot,
                epoch = m.epoch,
                current = self.membership.epoch,
                "a stop-sign for another epoch than the next executes as a no-op"
            );
            return;
        }
        self.enter_epoch(Membership::clone(&m), slot + 1);
    }

    /// Moves to configuration `m` (of a later epoch than ours), which governs the slots
    /// from `start` on (at most: a checkpoint's slot).
    pub(super) fn enter_epoch(&mut self, m: Membership, start: Slot) {
        if m.epoch <= self.membership.epoch {
            return;
        }
        let was_leader = matches!(self.role, RoleState::Leader(_));
        let before = self.cfg.members.clone();
        self.exec.count().membership_changes += 1;
        tracing::info!(
            node = self.cfg.id,
            epoch = m.epoch,
            start,
            old_members = ?before,
            new_members = ?m.ids(),
            "membership changed"
        );
        // Leadership, candidacy and pre-votes of the old epoch end here: their
        // quorums and acknowledgement masks are those of the old members.
        self.prevote = None;
        if !matches!(self.role, RoleState::Follower) {
            self.become_follower(None);
        } else {
            self.set_leader(None);
        }
        self.cfg.members = m.ids();
        self.me = self.index_of(self.cfg.id).unwrap_or(0);
        #[allow(unused_mut)]
        let mut quorum = self.cfg.quorum() as u32;
        #[cfg(test)]
        if self.cfg.mutation == Mutation::QuorumOfTwo {
            quorum = 2.min(self.cfg.members.len() as u32);
        }
        self.quorum = quorum;
        let base = Ballot::epoch_base(m.epoch);
        #[cfg(test)]
        let keeps_promise = self.cfg.mutation == Mutation::EpochKeepsOldPromise;
        #[cfg(not(test))]
        let keeps_promise = false;
        if self.promised < base && !keeps_promise {
            self.set_promised(base);
        }
        self.max_round_seen = self.max_round_seen.max(base.round);
        self.later_epoch_seen = false;
        self.membership = Arc::new(m);
        let member = self.membership.contains(self.cfg.id);
        if member && self.cfg.learner {
            // Promoted. Unless its durable state says it is a voter, it votes only once
            // it is sure what it voted before (a wiped former member may come back as
            // a "new" node): it recovers, as any replica without state.
            self.cfg.learner = false;
        } else if !member && !self.cfg.learner {
            // Removed: copy the chosen log as a learner from now on.
            self.cfg.learner = true;
            self.recovery = None;
            self.timers.fetch = Timeout::after(self.now, 1);
        }
        if !self.cfg.learner && self.status != AcceptorStatus::Voter {
            // (Re)start founding or recovery among the new members: grants of the old
            // ones say nothing about votes cast in this epoch.
            let incarnation = self
                .recovery
                .as_ref()
                .map_or(self.incarnation.max(1), |r| r.incarnation());
            self.start_recovery(incarnation);
        }
        if was_leader && member {
            // The new members need a leader: run at the next tick.
            self.timers.election = Timeout::after(self.now, 1);
        } else {
            self.restart_election_timers();
        }
    }

    /// A stop-sign of a later epoch than ours in the log at or above the commit point:
    /// a recovery does not complete while there is one (see `maybe_finish_recovery`).
    pub(super) fn undecided_stop_sign(&self) -> Option<Slot> {
        self.log
            .range(self.log.commit_point()..)
            .find(|(_, e)| matches!(&e.value, Value::Reconfigure(m) if m.epoch > self.membership.epoch))
            .map(|(s, _)| s)
    }

    /// A message of a later epoch than ours, from a leader or candidate of it (`None`
    /// for anything else): we have not executed the stop-sign that started it, so we
    /// do not vote in it. An acceptor that promised a later epoch's ballot without
    /// holding the stop-sign could leave the stop-sign's being chosen known to nobody
    /// but that epoch's leader (and learners): if the leader then lost its disk, the
    /// old epoch's members could neither run phase 1 in their epoch (their promise is
    /// above it) nor in the next (they do not know its members). Instead, catch up from
    /// the sender: its commit point is past the stop-sign.
    pub(super) fn sent_in_later_epoch(&mut self, from: NodeId, message: &Message) -> bool {
        let (ballot, commit_point) = match message {
            Message::Prepare {
                ballot, from_slot, ..
            } => (*ballot, Some(*from_slot)),
            Message::PreVote { ballot } | Message::TimeoutNow { ballot } => (*ballot, None),
            other => match other.leader_commit_point() {
                Some((ballot, commit_point)) => (ballot, Some(commit_point)),
                None => return false,
            },
        };
        if ballot.epoch() <= self.membership.epoch {
            return false;
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::VotesInUnknownEpoch {
            return false;
        }
        self.saw_round(ballot.round);
        if let Some(c) = commit_point {
            self.catch_up.heard(from, c);
        }
        true
    }

    /// Proposes a no-op in `slot` if this replica leads, `slot` is its next slot and
    /// its commit point, and it is idle (nothing queued, in flight, to re-propose or
    /// handed over, and no stop-sign of its own: R1). A recovering replica that adopted
    /// a stop-sign from its grants waits until that slot is decided; an idle leader
    /// would otherwise decide nothing there until a request came.
    pub(super) fn fill_next_slot(&mut self, slot: Slot) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let idle = l.queue.is_empty()
            && l.inflight.is_empty()
            && l.readopt.is_empty()
            && l.transfer.is_none()
            && l.stop_sign.is_none();
        if !idle || l.next_slot != slot || self.log.commit_point() != slot {
            return;
        }
        if self.log.is_chosen(slot) {
            self.step_down_superseded(slot);
            return;
        }
        l.next_slot += 1;
        let resend = Timeout::after(self.now, self.cfg.retransmit_ticks);
        l.propose(
            &mut self.ready,
            &mut self.log,
            self.me,
            resend,
            slot,
            Value::Noop,
        );
        if self.quorum == 1 {
            self.check_commits();
        }
    }

    /// Asks every peer for its commit point (a FETCH from our own): a replica that may
    /// be behind a membership change finds out whom to catch up from.
    pub(super) fn probe_peers(&mut self) {
        let lo = self.log.commit_point();
        let hi = lo.saturating_add(self.cfg.max_batch as u64);
        self.broadcast(Message::Fetch { from: lo, to: hi });
    }

    /// A message of an epoch before ours from `from` (a PRE-VOTE, PREPARE or RECOVER):
    /// its sender was left behind. Tell it our commit point (a FETCH-REPLY without
    /// entries) so that it catches up, rather than ignore it.
    pub(super) fn tell_behind(&mut self, from: NodeId, ballot: Ballot) {
        if ballot.epoch() >= self.membership.epoch {
            return;
        }
        let commit_point = self.log.commit_point();
        self.send(
            from,
            Message::FetchReply {
                commit_point,
                entries: Vec::new(),
            },
        );
    }
}

/// R2, on a new leader's merged log of epoch `epoch` (slots from its commit point up):
/// at the first stop-sign of the next epoch that is not flagged chosen, if any entry
/// above it is flagged chosen or was accepted at a higher ballot, the stop-sign was
/// not chosen: it becomes a no-op, and the scan goes on. Otherwise (or if it is flagged
/// chosen) it is kept and every entry above it dropped. Returns the slot of the kept
/// stop-sign.
pub(super) fn stop_sign_rule(
    merged: &mut BTreeMap<Slot, (Ballot, Value, bool)>,
    epoch: u64,
    #[cfg(test)] mutation: Mutation,
) -> Option<Slot> {
    #[cfg(test)]
    if mutation == Mutation::StopSignMergedNaively {
        return None;
    }
    let mut from = 0;
    loop {
        let (s, b_ss, chosen) = merged.range(from..).find_map(|(s, (b, v, chosen))| {
            matches!(v, Value::Reconfigure(m) if m.epoch == epoch + 1).then_some((*s, *b, *chosen))
        })?;
        #[cfg(test)]
        let flags_count = mutation != Mutation::StopSignIgnoresFlags;
        #[cfg(not(test))]
        let flags_count = true;
        let overtaken = !chosen
            && merged
                .range(s + 1..)
                .any(|(_, (b, _, c))| (*c && flags_count) || *b > b_ss);
        if overtaken {
            if let Some(e) = merged.get_mut(&s) {
                e.1 = Value::Noop;
            }
            from = s + 1;
            continue;
        }
        merged.split_off(&(s + 1));
        return Some(s);
    }
}
