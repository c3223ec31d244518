//! Catch-up: fetching chosen values a replica missed, and state transfer by snapshot.
//!
//! # State transfer, piece by piece
//! A replica asked (by FETCH) for slots it has compacted away answers with the first
//! piece of its latest checkpoint, a [`Message::SnapshotChunk`] of at most
//! [`Config::snapshot_chunk_bytes`] at offset 0. The receiver keeps one [`Transfer`]:
//! the checkpoint's identity `(slot, digest, total_len)`, the peer it pulls from, and
//! the bytes received so far. It appends a piece only when it belongs to that transfer
//! and starts exactly where the received bytes end, then asks for the next one
//! ([`Message::SnapshotRequest`] with the new offset). Lost, duplicated or reordered
//! pieces are thus ignored or re-requested: on the fetch timer the receiver asks again
//! for the piece at its offset (resuming, not starting over), and after a few
//! unanswered requests asks another peer, which continues from that offset if it holds
//! the same checkpoint and otherwise starts the receiver on its own from offset 0.
//! When every byte is in, the digest is verified and the checkpoint installed as a
//! whole.
//!
//! Bounds: a transfer announcing more than [`Config::max_snapshot_bytes`] is refused
//! before anything is buffered, a piece that does not fit inside its announced length
//! is ignored, and the buffer grows only with bytes actually received. At most one
//! transfer is in progress; it is dropped once the replica's commit point passes its
//! slot (the replica caught up another way).

use bytes::Bytes;

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
    /// A snapshot being received piece by piece.
    transfer: Option<Transfer>,
    /// A learner's polling (see `learner_role.rs`): the member it asks, the polls it
    /// left unanswered, the polls sent in all, and the tick of the last one.
    pub(super) poll_target: Option<NodeId>,
    pub(super) polls_unanswered: u64,
    pub(super) polls: u64,
    pub(super) last_poll: u64,
}

/// Requests for the same piece sent to one peer before asking another.
const TRANSFER_ATTEMPTS_PER_PEER: u64 = 3;

/// A checkpoint being received piece by piece (see the module's docs).
///
/// Invariant: `buf` holds bytes `0..buf.len()` of the checkpoint identified by `slot`,
/// `digest` and `total_len`, and `buf.len() < total_len <= max_snapshot_bytes`.
#[derive(Debug)]
struct Transfer {
    slot: Slot,
    digest: u32,
    total_len: u64,
    /// The peer we ask for the next piece.
    from: NodeId,
    /// The checkpoint data received so far.
    buf: Vec<u8>,
    /// Requests re-sent since the last piece arrived.
    stalled: u64,
    /// The slot of the first checkpoint this transfer pulled, before restarts (for
    /// [`Mutation::SnapshotRestartKeepsOldSlot`]).
    #[cfg(test)]
    first_slot: Slot,
}

/// A piece of a checkpoint, as received in a [`Message::SnapshotChunk`].
struct Chunk {
    slot: Slot,
    digest: u32,
    total_len: u64,
    offset: u64,
    data: Bytes,
}

impl CatchUp {
    /// Starting from the commit point read back from storage.
    pub(super) fn new(known_commit: Slot) -> Self {
        CatchUp {
            known_commit,
            fetch_from: None,
            fetch_attempts: 0,
            transfer: None,
            poll_target: None,
            polls_unanswered: 0,
            polls: 0,
            last_poll: 0,
        }
    }

    /// The highest commit point heard of.
    pub(super) fn known(&self) -> Slot {
        self.known_commit
    }

    /// Who told us about the highest commit point heard of.
    pub(super) fn fetch_from(&self) -> Option<NodeId> {
        self.fetch_from
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
        self.drop_useless_transfer();
        let c = &mut self.catch_up;
        if c.known_commit <= self.log.commit_point() {
            c.fetch_attempts = 0;
            return;
        }
        if !self.timers.fetch.expired(self.now) {
            return;
        }
        self.timers.fetch.reset(self.now, self.cfg.retransmit_ticks);
        if self.resend_snapshot_request() {
            return;
        }
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

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_fetch(&mut self, from: NodeId, lo: Slot, hi: Slot) {
        if lo == hi {
            // A recovering replica waits for this slot to be decided (see
            // `membership.rs`): an idle leader decides it.
            self.fill_next_slot(lo);
        }
        if lo < self.log.start() && self.exec.checkpoint().is_some() {
            if self.membership.epoch > 0 {
                // The sender may be a member left behind by a membership change, whom
                // no leader tells of commit points: a snapshot beyond any commit point
                // it heard of would be of no use to it.
                self.tell_commit_point(from);
            }
            self.send_snapshot_chunk(from, 0);
            return;
        }
        let (max_batch, _) = self.batch_limits();
        #[cfg(test)]
        let serves_unchosen = self.cfg.mutation == Mutation::FetchServesUnchosen;
        #[cfg(not(test))]
        let serves_unchosen = false;
        // Once a cluster changed its membership, only values below our commit point:
        // learning is contiguous (R4 of `membership.rs`), so that whoever holds a
        // value marked chosen above a stop-sign holds the stop-sign marked chosen too.
        #[cfg(test)]
        let r4_broken = self.cfg.mutation == Mutation::FetchAboveCommitAfterChange;
        #[cfg(not(test))]
        let r4_broken = false;
        let contiguous = (self.membership.epoch > 0 || self.promised.epoch() > 0) && !r4_broken;
        let entries: Vec<(Slot, Value)> = self
            .log
            .range(lo..hi.max(lo))
            .filter(|(s, e)| {
                (e.chosen && !contiguous) || *s < self.log.commit_point() || serves_unchosen
            })
            .take(max_batch)
            .map(|(s, e)| (s, e.value.clone()))
            .collect();
        self.send_fetch_reply(from, entries);
    }

    /// Sends `to` a FETCH-REPLY: our commit point and as many of `entries` (chosen
    /// values, in slot order) as fit a message's budget, like any batch of entries.
    pub(super) fn send_fetch_reply(&mut self, to: NodeId, mut entries: Vec<(Slot, Value)>) {
        let (max_batch, max_bytes) = self.batch_limits();
        entries.truncate(batch_len(
            entries.iter().map(|(_, v)| v),
            max_batch,
            max_bytes,
        ));
        let commit_point = self.log.commit_point();
        self.send(
            to,
            Message::FetchReply {
                commit_point,
                entries,
            },
        );
    }

    #[inline(never)] // off the steady-state path (see `handle_message`)
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

    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_snapshot(&mut self, from: NodeId, checkpoint: Checkpoint) {
        // Only a snapshot we asked for is useful: one above our commit point and not
        // beyond the highest commit point we have heard of.
        if checkpoint.slot <= self.log.commit_point()
            || checkpoint.slot > self.catch_up.known_commit
            || checkpoint.data.len() as u64 > self.cfg.max_snapshot_bytes
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

impl<S: StateMachine> Replica<S> {
    /// Sends `to` the piece of our latest checkpoint that starts at `offset`.
    fn send_snapshot_chunk(&mut self, to: NodeId, offset: u64) {
        let Some(cp) = self.exec.checkpoint() else {
            return;
        };
        let total = cp.data.len();
        let Some(start) = usize::try_from(offset).ok().filter(|o| *o <= total) else {
            return;
        };
        if start == total && start > 0 {
            return;
        }
        let end = start
            .saturating_add(self.cfg.snapshot_chunk_bytes)
            .min(total);
        let message = Message::SnapshotChunk {
            slot: cp.slot,
            digest: cp.digest,
            total_len: total as u64,
            offset,
            // A view into the checkpoint's buffer, not a copy.
            data: cp.data.slice(start..end),
        };
        if start == 0 {
            self.exec.count().snapshots_sent += 1;
        }
        self.send(to, message);
    }

    /// A peer asks for the piece of checkpoint `(slot, digest)` at `offset`: sent if we
    /// still hold that checkpoint, else our current checkpoint from the start.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_snapshot_request(
        &mut self,
        from: NodeId,
        slot: Slot,
        digest: u32,
        offset: u64,
    ) {
        let Some(cp) = self.exec.checkpoint() else {
            return;
        };
        let offset = if cp.slot == slot && cp.digest == digest {
            offset
        } else {
            0
        };
        self.send_snapshot_chunk(from, offset);
    }

    /// Forgets a transfer whose checkpoint is no longer ahead of the commit point.
    fn drop_useless_transfer(&mut self) {
        let commit_point = self.log.commit_point();
        if let Some(t) = &self.catch_up.transfer {
            if t.slot <= commit_point {
                self.catch_up.transfer = None;
            }
        }
    }

    /// On the fetch timer, with a transfer in progress: asks again for the piece at its
    /// offset, from another peer after a few unanswered requests. False when there is
    /// no transfer.
    fn resend_snapshot_request(&mut self) -> bool {
        let peers = self.peers();
        let Some(t) = &mut self.catch_up.transfer else {
            return false;
        };
        t.stalled += 1;
        if self.cfg.learner && t.stalled > TRANSFER_ATTEMPTS_PER_PEER * peers.len() as u64 {
            // Every member was asked and none had this checkpoint or a newer one:
            // the one that had it is gone, and the others' logs may hold what it
            // covered. A learner has no leader to tell it more: start again with a
            // FETCH. (Members keep the transfer; their leader keeps them informed.)
            self.catch_up.transfer = None;
            return false;
        }
        if t.stalled % TRANSFER_ATTEMPTS_PER_PEER == 0 && !peers.is_empty() {
            let next = peers.iter().position(|p| *p == t.from).map_or(0, |i| i + 1);
            t.from = peers[next % peers.len()];
        }
        let (to, slot, digest) = (t.from, t.slot, t.digest);
        let offset = t.buf.len() as u64;
        self.request_snapshot_chunk(to, slot, digest, offset);
        true
    }

    fn request_snapshot_chunk(&mut self, to: NodeId, slot: Slot, digest: u32, offset: u64) {
        #[cfg(test)]
        let offset = if self.cfg.mutation == Mutation::SnapshotResumeSkipsAByte && offset > 0 {
            offset + 1
        } else {
            offset
        };
        self.send(
            to,
            Message::SnapshotRequest {
                slot,
                digest,
                offset,
            },
        );
    }

    /// A [`Message::SnapshotChunk`] arrived (any other message is ignored here).
    pub(super) fn on_snapshot_chunk_message(&mut self, from: NodeId, message: Message) {
        if let Message::SnapshotChunk {
            slot,
            digest,
            total_len,
            offset,
            data,
        } = message
        {
            self.on_snapshot_chunk(
                from,
                Chunk {
                    slot,
                    digest,
                    total_len,
                    offset,
                    data,
                },
            );
        }
    }

    /// A piece of a peer's checkpoint arrived.
    fn on_snapshot_chunk(&mut self, from: NodeId, chunk: Chunk) {
        self.drop_useless_transfer();
        let Chunk {
            slot,
            digest,
            total_len,
            offset,
            data,
        } = chunk;
        // As for a whole snapshot: only one above our commit point and not beyond the
        // highest commit point heard of is useful.
        if slot <= self.log.commit_point() || slot > self.catch_up.known_commit {
            return;
        }
        if total_len > self.cfg.max_snapshot_bytes {
            tracing::warn!(
                node = self.cfg.id,
                from,
                slot,
                total_len,
                max = self.cfg.max_snapshot_bytes,
                "refused a snapshot larger than max_snapshot_bytes"
            );
            return;
        }
        let fits = offset
            .checked_add(data.len() as u64)
            .is_some_and(|end| end <= total_len);
        if !fits {
            return;
        }
        let ours = self
            .catch_up
            .transfer
            .as_ref()
            .is_some_and(|t| t.slot == slot && t.digest == digest && t.total_len == total_len);
        if !ours {
            // Only the first piece of a checkpoint starts a transfer: the first one, one
            // from the peer we pull from (it moved on to a newer checkpoint, or is not
            // the one that had ours), or a newer checkpoint than ours.
            if offset != 0 {
                return;
            }
            if let Some(t) = &self.catch_up.transfer {
                if t.from != from && slot <= t.slot {
                    return;
                }
            }
            #[cfg(test)]
            let first_slot = match &self.catch_up.transfer {
                Some(t) if self.cfg.mutation == Mutation::SnapshotRestartKeepsOldSlot => {
                    t.first_slot
                }
                _ => slot,
            };
            if data.len() as u64 == total_len {
                // The whole checkpoint in one piece.
                self.catch_up.transfer = None;
                #[cfg(test)]
                let slot = first_slot;
                self.on_snapshot(from, Checkpoint { slot, digest, data });
                return;
            }
            self.catch_up.transfer = Some(Transfer {
                slot,
                digest,
                total_len,
                from,
                buf: Vec::new(),
                stalled: 0,
                #[cfg(test)]
                first_slot,
            });
        }
        let Some(t) = &mut self.catch_up.transfer else {
            return;
        };
        if offset != t.buf.len() as u64 {
            // A duplicate or a piece out of order: the request timer resumes from
            // where the received bytes end.
            return;
        }
        // Grows with the bytes received, never from the announced length.
        t.buf.extend_from_slice(&data);
        t.from = from;
        t.stalled = 0;
        self.timers.fetch.reset(self.now, self.cfg.retransmit_ticks);
        if (t.buf.len() as u64) < t.total_len {
            let (slot, digest, offset) = (t.slot, t.digest, t.buf.len() as u64);
            self.request_snapshot_chunk(from, slot, digest, offset);
            return;
        }
        let Some(t) = self.catch_up.transfer.take() else {
            return;
        };
        #[cfg(test)]
        let t = Transfer {
            slot: if self.cfg.mutation == Mutation::SnapshotRestartKeepsOldSlot {
                t.first_slot
            } else {
                t.slot
            },
            ..t
        };
        let checkpoint = Checkpoint {
            slot: t.slot,
            digest: t.digest,
            data: Bytes::from(t.buf),
        };
        self.on_snapshot(from, checkpoint);
    }
}
