//! Learning: which values are chosen, from quorums, commit points and peers, and how
//! the commit point advances.

use super::*;
use crate::traits::{PersistOp, StateMachine};
use crate::types::{Ballot, NodeId, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

impl<S: StateMachine> Replica<S> {
    /// A commit point heard from the leader of `ballot`: below it, the values that
    /// leader proposed at `ballot` are chosen, so the entries accepted here at exactly
    /// `ballot` are marked chosen; anything else below it is fetched. The leader keeps
    /// its side of this bargain in [`learn`](Self::learn).
    pub(super) fn learn_commit_point(&mut self, from: NodeId, ballot: Ballot, commit_point: Slot) {
        self.catch_up.heard(from, commit_point);
        let lo = self.log.commit_point();
        if commit_point <= lo {
            return;
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::CommitPointAnyBallot {
            self.log.mark_chosen_below(commit_point);
            self.advance_commit();
            return;
        }
        self.log.mark_chosen_at(ballot, commit_point);
        self.advance_commit();
    }

    /// Records that `value` is chosen in `slot`, learned from anything but this
    /// replica's own accept quorum: a FETCH-REPLY, a PROMISE that reports it chosen, or
    /// the merge of phase 1.
    ///
    /// # Which values a commit point vouches for
    /// A commit point `C` announced under ballot `b` (on ACCEPT, NEW-VIEW or HEARTBEAT)
    /// tells a follower that, below `C`, *the value proposed at `b`* is the chosen one:
    /// the follower marks chosen exactly the entries it accepted at `b`
    /// ([`learn_commit_point`](Self::learn_commit_point)). So the leader of `b` may
    /// announce `C` only if each of its `b`-proposals below `C` is the chosen value.
    /// That holds for what it learns from its own accept quorums at `b`, and for what
    /// phase 1 gave it (its `b`-proposals *are* the merged values). It holds for a value
    /// learned any other way only if that value equals the leader's `b`-proposal in the
    /// slot. A different value — or any chosen value in a slot the leader has not
    /// proposed in yet — can only have been chosen under a higher ballot: the leader is
    /// superseded, and steps down here, before it can announce a commit point over it
    /// (or propose into a slot that is already decided).
    ///
    /// Second half of the rule: an entry whose value is replaced by a learned one loses
    /// its ballot ([`Ballot::ZERO`], which no leader owns), so no path leaves a value
    /// under a ballot that did not propose it.
    pub(super) fn learn(&mut self, slot: Slot, value: Value) {
        if slot < self.log.commit_point() {
            return;
        }
        #[cfg(test)]
        let lax = self.cfg.mutation == Mutation::SupersededLeaderAnnounces;
        #[cfg(not(test))]
        let lax = false;
        if let RoleState::Leader(l) = &self.role {
            let conflict = slot >= l.next_slot
                || l.readopt.get(&slot).is_some_and(|v| *v != value)
                || self
                    .log
                    .get(slot)
                    .is_some_and(|e| e.ballot == l.ballot && e.value != value);
            if conflict && !lax {
                self.step_down_superseded(slot);
            }
        }
        if !self.log.learn(slot, value.clone(), lax) {
            return;
        }
        self.ready.persist.push(PersistOp::Learn { slot, value });
    }

    pub(super) fn advance_commit(&mut self) {
        if self.log.advance_commit() {
            let c = self.log.commit_point();
            if let RoleState::Leader(l) = &mut self.role {
                // Below the commit point every slot is chosen, and a leader that is still
                // leading proposed the chosen value (it steps down on learning another):
                // proposals there need no more votes, even those learned from a peer
                // rather than counted, and must not hold the in-flight byte budget.
                while let Some((&s, _)) = l.inflight.first_key_value() {
                    if s >= c {
                        break;
                    }
                    l.untrack(s);
                }
            }
            self.catch_up.raise(c);
            self.later_epoch_waits = 0;
            self.write_commit_point(c);
            self.execute();
            self.serve_reads();
        }
    }
}
