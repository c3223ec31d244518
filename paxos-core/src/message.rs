//! The peer-to-peer protocol messages.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::traits::Checkpoint;
use crate::types::{Ballot, NodeId, Slot, Value};

/// A slot's state as reported in a [`Message::Promise`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromiseEntry {
    /// The slot.
    pub slot: Slot,
    /// The ballot the value was accepted at.
    pub ballot: Ballot,
    /// The accepted value.
    pub value: Value,
    /// True when the acceptor knows this value is chosen (committed).
    pub chosen: bool,
}

/// A message between replicas.
///
/// The protocol tolerates loss, duplication, delay and reordering of any message, so a
/// [`Transport`](crate::Transport) may drop messages under pressure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Before an election: would the receiver promise `ballot`? Asked by a follower
    /// whose leader went silent, so that a node cut off from the cluster cannot raise
    /// its ballot (and later depose a healthy leader) without a majority's consent.
    PreVote {
        /// The ballot the sender would run with.
        ballot: Ballot,
    },
    /// Yes to a [`Message::PreVote`]: the receiver hears no live leader and has not
    /// promised `ballot` or higher.
    PreVoteGranted {
        /// The ballot asked about.
        ballot: Ballot,
    },
    /// Phase 1a: a candidate asks for promises not to accept lower ballots, for every slot
    /// from `from_slot` up (the candidate's commit point).
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// Slots below this are already committed at the candidate.
        from_slot: Slot,
        /// Drawn afresh for each candidacy and echoed by PROMISEs, so that a candidate
        /// never counts a promise made to an earlier life of itself that used the same
        /// ballot before losing its state.
        nonce: u64,
        /// The candidate runs because its leader handed leadership over to it
        /// ([`Message::TimeoutNow`]): acceptors promise even while they hear that
        /// leader (stickiness protects liveness, not safety; phase 1 stays the same).
        handover: bool,
    },
    /// Phase 1b: the acceptor promised `ballot` and reports what it accepted at or above
    /// the candidate's `from_slot`.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The acceptor's commit point: every slot below it is chosen at the acceptor.
        commit_point: Slot,
        /// Accepted entries at or above the requested slot. Chosen entries below
        /// `commit_point` may be cut short at [`Config::max_batch`](crate::Config) entries
        /// or [`Config::max_message_bytes`](crate::Config); the candidate then learns them
        /// and prepares again from its new commit point. Entries above `commit_point`
        /// come in pages of `max_message_bytes` (at least one entry each): a page ends
        /// at or above `commit_point`, and the candidate asks for the next with a
        /// PREPARE from the slot after it.
        entries: Vec<PromiseEntry>,
        /// True when entries were left out for size: chosen ones below `commit_point`,
        /// or the next page above it.
        truncated: bool,
        /// The PREPARE's nonce.
        nonce: u64,
        /// The promiser's incarnation.
        incarnation: u64,
        /// The latest incarnation the promiser knows of each peer that recovered from
        /// lost state: the candidate ignores votes from their earlier incarnations.
        incarnations: Vec<(NodeId, u64)>,
        /// The PREPARE's `from_slot`: where `entries` start. The candidate of a paged
        /// PROMISE asks for each next page from the slot after the last.
        from_slot: Slot,
    },
    /// The receiver refused a message at `ballot` because it promised `promised`.
    Nack {
        /// The ballot that was refused.
        ballot: Ballot,
        /// The higher ballot the sender has promised.
        promised: Ballot,
    },
    /// Phase 2a: the leader asks acceptors to accept values in several slots at once.
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit point (piggybacked commit notification).
        commit_point: Slot,
        /// The proposals, in any order.
        entries: Vec<(Slot, Value)>,
    },
    /// The new leader's merged log, sent once when phase 1 completes: acceptors treat it
    /// as an [`Message::Accept`] and record the view change.
    NewView {
        /// The new leader's ballot.
        ballot: Ballot,
        /// The leader's commit point.
        commit_point: Slot,
        /// Every slot from the merge point up: re-proposed values and no-op gap fillers.
        entries: Vec<(Slot, Value)>,
    },
    /// Phase 2b: the acceptor accepted these slots at `ballot`.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The slots accepted.
        slots: Vec<Slot>,
        /// The acceptor's incarnation: a leader that knows a later one ignores it.
        incarnation: u64,
    },
    /// The leader is alive; everything below `commit_point` is chosen, and the values
    /// accepted at `ballot` are the chosen ones.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit point.
        commit_point: Slot,
    },
    /// Asks for the chosen values of slots in `from..to`.
    Fetch {
        /// First slot wanted.
        from: Slot,
        /// One past the last slot wanted.
        to: Slot,
    },
    /// Chosen values answering a [`Message::Fetch`].
    FetchReply {
        /// The sender's commit point.
        commit_point: Slot,
        /// `(slot, value)` pairs, every one chosen.
        entries: Vec<(Slot, Value)>,
    },
    /// State transfer of a whole checkpoint in one message. Replicas of this version
    /// no longer send it (they send [`Message::SnapshotChunk`]s, so that no message
    /// carries a whole large state), but still accept it, within
    /// [`Config::max_snapshot_bytes`](crate::Config).
    Snapshot {
        /// The checkpoint.
        checkpoint: Checkpoint,
    },
    /// From a replica that has no state (new, or lost): asks a voter to record its
    /// new incarnation, promise `ballot` and hand over its state; asks a replica that
    /// never voted to say so.
    Recover {
        /// The recovery ballot, owned by the sender.
        ballot: Ballot,
        /// The incarnation the sender recovers as.
        incarnation: u64,
        /// Echoed by the answers.
        nonce: u64,
        /// True while the sender does not know that the cluster ever existed (it has
        /// heard from no voter yet).
        pristine: bool,
    },
    /// A voter's answer to [`Message::Recover`]: it recorded the incarnation, promised
    /// the ballot, and reports its state like a PROMISE.
    RecoverGrant {
        /// The recovery's nonce.
        nonce: u64,
        /// The ballot promised.
        ballot: Ballot,
        /// The voter's commit point.
        commit_point: Slot,
        /// The voter's entries from its commit point up.
        entries: Vec<PromiseEntry>,
        /// The incarnations the voter knows (see [`Message::Promise`]).
        incarnations: Vec<(NodeId, u64)>,
    },
    /// A voter refused a [`Message::Recover`]: the sender must try again with an
    /// incarnation above `incarnation` and a ballot above `promised`.
    RecoverRefused {
        /// The recovery's nonce.
        nonce: u64,
        /// The incarnation the voter already knows for the sender.
        incarnation: u64,
        /// The voter's promised ballot.
        promised: Ballot,
    },
    /// The answer of a replica that never voted to a pristine [`Message::Recover`].
    NeverVoted {
        /// The recovery's nonce.
        nonce: u64,
    },
    /// Leader → follower: a read-index round. Answered with [`Message::ReadIndexAck`] by
    /// a follower that has promised nothing above `ballot`; a majority of answers
    /// confirms that the leader still led after the reads of this round arrived. Also
    /// serves as a heartbeat.
    ReadIndex {
        /// The leader's ballot.
        ballot: Ballot,
        /// The round, increasing within a leadership.
        round: u64,
        /// The leader's commit point.
        commit_point: Slot,
    },
    /// Leader → follower: "run for leader now": the leader hands leadership over to
    /// this follower, which has accepted everything the leader proposed.
    TimeoutNow {
        /// The leader's ballot.
        ballot: Ballot,
    },
    /// Follower → leader: the answer to [`Message::ReadIndex`].
    ReadIndexAck {
        /// The ballot of the round.
        ballot: Ballot,
        /// The round.
        round: u64,
        /// The follower's incarnation.
        incarnation: u64,
    },
    /// State transfer, one piece at a time: bytes `offset..offset + data.len()` of the
    /// sender's latest checkpoint. Sent for a [`Message::Fetch`] of slots the sender has
    /// compacted away (the piece at offset 0) and for a [`Message::SnapshotRequest`].
    /// At most [`Config::snapshot_chunk_bytes`](crate::Config) of data.
    SnapshotChunk {
        /// The checkpoint's slot.
        slot: Slot,
        /// The checkpoint's digest (CRC-32 of the whole data).
        digest: u32,
        /// The length of the whole checkpoint data.
        total_len: u64,
        /// Where `data` starts in the checkpoint data.
        offset: u64,
        /// The piece.
        data: Bytes,
    },
    /// Asks for the piece of checkpoint `(slot, digest)` from `offset` on: the next one
    /// after a [`Message::SnapshotChunk`], or the same one again after a timeout (a lost
    /// piece resumes from where the receiver is, not from zero). A sender that no
    /// longer holds that checkpoint answers with its current one from offset 0.
    SnapshotRequest {
        /// The checkpoint's slot.
        slot: Slot,
        /// The checkpoint's digest.
        digest: u32,
        /// The first byte wanted.
        offset: u64,
    },
    /// Leader → follower: the commit point moved. Like [`Message::Heartbeat`] (below
    /// `commit_point` the values accepted at `ballot` are the chosen ones), but **not
    /// acknowledged**: the leader sends one whenever its commit point moves without a
    /// new proposal to carry it, and it learns that its followers are alive from their
    /// ACCEPTEDs and from the answers to its periodic heartbeats. (Acknowledging every
    /// commit announcement cost a third message round per command.)
    Commit {
        /// The leader's ballot.
        ballot: Ballot,
        /// The leader's commit point.
        commit_point: Slot,
    },
}

impl Message {
    /// The ballot and commit point of a leader's message that carries both: ACCEPT,
    /// NEW-VIEW, HEARTBEAT, COMMIT and READ-INDEX.
    pub(crate) fn leader_commit_point(&self) -> Option<(Ballot, Slot)> {
        match self {
            Message::Accept {
                ballot,
                commit_point,
                ..
            }
            | Message::NewView {
                ballot,
                commit_point,
                ..
            }
            | Message::Heartbeat {
                ballot,
                commit_point,
            }
            | Message::Commit {
                ballot,
                commit_point,
            }
            | Message::ReadIndex {
                ballot,
                commit_point,
                ..
            } => Some((*ballot, *commit_point)),
            _ => None,
        }
    }

    /// True for the messages that vouch for the sender's stored state, which must be
    /// durable before they leave: a PROMISE (its promise), an ACCEPTED (its accepts), a
    /// RECOVER (the new incarnation it announces), and a voter's answers to a recovery
    /// (RECOVER-GRANT, RECOVER-REFUSED, NEVER-VOTED). Every other message may leave
    /// before the writes of its round are durable (see [`Ready`](crate::Ready)).
    pub fn vouches_for_writes(&self) -> bool {
        matches!(
            self,
            Message::Promise { .. }
                | Message::Accepted { .. }
                | Message::Recover { .. }
                | Message::RecoverGrant { .. }
                | Message::RecoverRefused { .. }
                | Message::NeverVoted { .. }
        )
    }

    /// A short name for the message kind, for tracing.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "pre-vote",
            Message::PreVoteGranted { .. } => "pre-vote-granted",
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Nack { .. } => "nack",
            Message::Accept { .. } => "accept",
            Message::NewView { .. } => "new-view",
            Message::Accepted { .. } => "accepted",
            Message::Heartbeat { .. } => "heartbeat",
            Message::Fetch { .. } => "fetch",
            Message::FetchReply { .. } => "fetch-reply",
            Message::Snapshot { .. } => "snapshot",
            Message::Recover { .. } => "recover",
            Message::RecoverGrant { .. } => "recover-grant",
            Message::RecoverRefused { .. } => "recover-refused",
            Message::NeverVoted { .. } => "never-voted",
            Message::ReadIndex { .. } => "read-index",
            Message::TimeoutNow { .. } => "timeout-now",
            Message::ReadIndexAck { .. } => "read-index-ack",
            Message::SnapshotChunk { .. } => "snapshot-chunk",
            Message::SnapshotRequest { .. } => "snapshot-request",
            Message::Commit { .. } => "commit",
        }
    }
}
