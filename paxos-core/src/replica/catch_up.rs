//! Catch-up: fetching chosen values a replica missed, and state transfer by snapshot.

use super::*;
use crate::message::Message;
use crate::traits::{Checkpoint, PersistOp, StateMachine};
use crate::types::{NodeId, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

/// What a replica knows about chosen values it does not hold yet, and whom it asks.
///
/// Invariant: `known_commit` only grows; the replica is behind exactly while it is
/// above the log's commit point, and then fetches (every
/// [`Config::retransmit_ticks`](crate::Config), on the `fetch` timer).
#[derive(Debug)]
pub(super) struct CatchUp {
    /// The highest commit point heard of (from a leader, a promise, a fetch reply, a
    /// recovery grant, or our own).
    known_commit: Slot,
    /// Who told us about `known_commit`: asked first.
    fetch_from: Option<NodeId>,
    /// Fetches sent since we were last up to date; picks the peer to ask.
    fetch_attempts: u64,
}

impl CatchUp {
    /// Starting from the commit point read back from storage.
    pub(super) fn new(known_commit: Slot) -> Self {
        CatchUp {
            known_commit,
            fetch_from: None,
            fetch_attempts: 0,
        }
    }

    /// `from` reports the commit point `commit_point`: if it is the highest heard of,
    /// remember it, and ask `from` first.
    pub(super) fn heard(&mut self, from: NodeId, commit_point: Slot) {
        if commit_point > self.known_commit {
            self.known_commit = commit_point;
            self.fetch_from = Some(from);
        }
    }

    /// Slots below `slot` are known chosen, nobody in particular to ask.
    pub(super) fn raise(&mut self, slot: Slot) {
        self.known_commit = self.known_commit.max(slot);
    }
}

impl<S: StateMachine> Replica<S> {
    pub(super) fn maybe_fetch(&mut self) {
        let c = &mut self.catch_up;
        if c.known_commit <= self.log.commit_point() {
            c.fetch_attempts = 0;
            return;
        }
        if !self.timers.fetch.expired(self.now) {
            return;
        }
        self.timers.fetch.reset(self.now, self.cfg.retransmit_ticks);
        self.catch_up.fetch_attempts += 1;
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        // First ask whoever told us about the commit point, then go round the others.
        let c = &self.catch_up;
        let target = match c.fetch_from {
            Some(f) if c.fetch_attempts % 2 == 1 => f,
            _ => peers[(c.fetch_attempts / 2) as usize % peers.len()],
        };
        let lo = self.log.commit_point();
        let hi = self
            .catch_up
            .known_commit
            .min(lo.saturating_add(self.cfg.max_batch as u64));
        self.send(target, Message::Fetch { from: lo, to: hi });
    }

    pub(super) fn on_fetch(&mut self, from: NodeId, lo: Slot, hi: Slot) {
        if lo < self.log.start() {
            if let Some(checkpoint) = self.exec.checkpoint().cloned() {
                self.exec.count().snapshots_sent += 1;
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
        self.catch_up.heard(from, commit_point);
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
        if checkpoint.slot <= self.log.commit_point()
            || checkpoint.slot > self.catch_up.known_commit
        {
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
                self.exec.count().snapshots_installed += 1;
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
