//! Leader transfer: the leader hands leadership to a follower it names, without waiting
//! for an election timeout.
//!
//! The leader stops proposing (requests wait in its queue), waits until the target has
//! accepted every proposal in flight, then sends it [`Message::TimeoutNow`]. The target
//! runs for leader at once, its PREPAREs flagged `handover` so that acceptors (the old
//! leader included) promise although they still hear the old leader. Phase 1 is the same
//! as in any election, so a transfer cannot lose a chosen value; it only saves the
//! election timeout. A transfer that has not completed within an election timeout is
//! abandoned and the leader proposes again. TIMEOUT-NOW cannot be taken back: one that
//! went out before the leader gave up and arrives late still makes the target run, and
//! it may then take over (a leader change the operator asked for, only later; found by
//! review, kept deliberately as Raft does, and tested in `handover_tests.rs`).

use super::*;
use crate::error::TransferError;
use crate::message::Message;
use crate::traits::StateMachine;
use crate::types::{Ballot, NodeId};

/// A transfer in progress.
#[derive(Debug)]
pub(super) struct Transfer {
    pub(super) to: NodeId,
    /// Expires when the transfer is abandoned.
    give_up: Timeout,
    /// Whether TIMEOUT-NOW went out.
    sent: bool,
}

impl<S: StateMachine> Replica<S> {
    /// Hands leadership over to member `to`: this replica stops proposing, waits until
    /// `to` has accepted every proposal in flight, and tells it to run for leader at
    /// once. Watch [`Replica::leader`] for the outcome; a transfer that has not completed
    /// within an election timeout is abandoned and this replica proposes again (though a
    /// TIMEOUT-NOW already sent and delivered late can still hand leadership over).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), TransferError> {
        if to == self.cfg.id {
            return Err(TransferError::AlreadyLeader);
        }
        if self.index_of(to).is_none() {
            return Err(TransferError::NotAMember(to));
        }
        let now = self.now;
        let election_ticks = self.cfg.election_ticks;
        let RoleState::Leader(l) = &mut self.role else {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        };
        tracing::info!(node = self.cfg.id, to, ballot = %l.ballot, "handing leadership over");
        l.transfer = Some(Transfer {
            to,
            give_up: Timeout::after(now, election_ticks),
            sent: false,
        });
        self.check_transfer();
        Ok(())
    }

    /// Sends TIMEOUT-NOW once the target has accepted every proposal in flight.
    pub(super) fn check_transfer(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(t) = &mut l.transfer else {
            return;
        };
        if t.sent {
            return;
        }
        let Some(idx) = self.cfg.members.iter().position(|m| *m == t.to) else {
            return;
        };
        let bit = 1u64 << idx;
        if !l.readopt.is_empty() || l.inflight.values().any(|inf| inf.acks & bit == 0) {
            return;
        }
        t.sent = true;
        let (to, ballot) = (t.to, l.ballot);
        self.send(to, Message::TimeoutNow { ballot });
    }

    /// On ticks: abandon a transfer that took too long, and resume proposing.
    pub(super) fn transfer_tick(&mut self) {
        let now = self.now;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.transfer.as_ref().is_some_and(|t| t.give_up.expired(now)) {
            let to = l.transfer.take().map(|t| t.to);
            tracing::info!(node = self.cfg.id, ?to, "leader transfer abandoned");
            self.pump();
        }
    }

    /// TIMEOUT-NOW: our leader hands over to us: run for leader at once.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_timeout_now(&mut self, from: NodeId, ballot: Ballot) {
        if self.leader != Some(from) || ballot != self.promised {
            return; // not from the leader we follow, or stale
        }
        if !matches!(self.role, RoleState::Follower) {
            return;
        }
        self.start_election(true);
    }
}
