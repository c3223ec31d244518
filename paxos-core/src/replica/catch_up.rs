//! Catch-up: fetching chosen values a replica missed, and state transfer by snapshot.

use super::*;
use crate::message::Message;
use crate::traits::{Checkpoint, PersistOp, StateMachine};
use crate::types::{NodeId, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

impl<S: StateMachine> Replica<S> {
    pub(super) fn maybe_fetch(&mut self) {
        if self.known_commit <= self.log.commit_point() {
            self.fetch_attempts = 0;
            return;
        }
        if !self.timers.fetch.expired(self.now) {
            return;
        }
        self.timers.fetch.reset(self.now, self.cfg.retransmit_ticks);
        self.fetch_attempts += 1;
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        // First ask whoever told us about the commit point, then go round the others.
        let target = match self.fetch_from {
            Some(f) if self.fetch_attempts % 2 == 1 => f,
            _ => peers[(self.fetch_attempts / 2) as usize % peers.len()],
        };
        let lo = self.log.commit_point();
        let hi = self
            .known_commit
            .min(lo.saturating_add(self.cfg.max_batch as u64));
        self.send(target, Message::Fetch { from: lo, to: hi });
    }

    pub(super) fn on_fetch(&mut self, from: NodeId, lo: Slot, hi: Slot) {
        if lo < self.log.start() {
            if let Some(checkpoint) = self.checkpoint.clone() {
                self.send(from, Message::Snapshot { checkpoint });
                return;
            }
        }
        let entries: Vec<(Slot, Value)> = self
            .log
            .range(lo..hi.max(lo))
            .filter(|(s, e)| e.chosen || **s < self.log.commit_point())
            .take(self.cfg.max_batch)
            .map(|(s, e)| (*s, e.value.clone()))
            .collect();
        let commit_point = self.log.commit_point();
        self.send(
            from,
            Message::FetchReply {
                commit_point,
                entries,
            },
        );
    }

    pub(super) fn on_fetch_reply(
        &mut self,
        from: NodeId,
        commit_point: Slot,
        entries: Vec<(Slot, Value)>,
    ) {
        if commit_point > self.known_commit {
            self.known_commit = commit_point;
            self.fetch_from = Some(from);
        }
        let limit = self.log.commit_point().saturating_add(self.accept_window());
        for (s, v) in entries {
            if s < limit {
                self.learn(s, v);
            }
        }
        self.advance_commit();
    }

    pub(super) fn on_snapshot(&mut self, from: NodeId, checkpoint: Checkpoint) {
        // Only a snapshot we asked for is useful: one above our commit point and not
        // beyond the highest commit point we have heard of.
        if checkpoint.slot <= self.log.commit_point() || checkpoint.slot > self.known_commit {
            return;
        }
        let slot = checkpoint.slot;
        // A leader cannot tell whether its own proposals below the checkpoint are the
        // values it covers (see `learn`): it steps down rather than announce a commit
        // point over them. A leader behind a peer's checkpoint was superseded anyway.
        #[cfg(test)]
        let lax = self.cfg.mutation == Mutation::SupersededLeaderAnnounces;
        #[cfg(not(test))]
        let lax = false;
        if self.is_leader() && !lax {
            self.step_down_superseded(slot);
        }
        match self.install(checkpoint.clone()) {
            Ok(()) => {
                self.snapshots_installed += 1;
                tracing::info!(
                    node = self.cfg.id,
                    from,
                    slot,
                    "installed a snapshot (state transfer)"
                );
                self.ready.persist.push(PersistOp::Checkpoint(checkpoint));
                self.ready.persist.push(PersistOp::Compact(slot));
                self.ready
                    .persist
                    .push(PersistOp::CommitPoint(self.log.commit_point()));
                self.execute();
            }
            Err(e) => {
                tracing::warn!(node = self.cfg.id, from, slot, error = %e, "refused a snapshot");
            }
        }
    }
}
