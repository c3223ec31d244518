//! Inspection: what a replica shows of itself (status, slots, view changes), and the
//! public types it shows them in.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::*;
use crate::config::Config;
use crate::counters::Counters;
use crate::sessions::Sessions;
use crate::traits::{AcceptorStatus, Checkpoint, StateMachine};
use crate::types::{Ballot, NodeId, Slot, Value};

/// How many view changes a replica remembers for inspection.
const VIEW_HISTORY: usize = 1024;

/// A replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs phase 1 to become leader.
    Candidate,
    /// Leads: proposes, counts acceptances, commits.
    Leader,
    /// Copies the chosen log without voting ([`Config::learner`](crate::Config::learner)).
    Learner,
}

/// A slot's status, as PrintStatus shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SlotStatus {
    /// Nothing known about the slot (`X`).
    None,
    /// A value was accepted but is not known to be chosen (`A`).
    Accepted,
    /// The value is known to be chosen but not executed yet (`C`).
    Committed,
    /// The value was executed (`E`).
    Executed,
    /// The slot was executed and then compacted into a checkpoint; its value is gone
    /// from the log (`E` in the original system's terms; shown as `K`).
    Compacted,
}

impl SlotStatus {
    /// The one-letter code of the original system: `X`, `A`, `C` or `E`.
    pub fn code(self) -> char {
        match self {
            SlotStatus::None => 'X',
            SlotStatus::Accepted => 'A',
            SlotStatus::Committed => 'C',
            SlotStatus::Executed => 'E',
            SlotStatus::Compacted => 'K',
        }
    }
}

/// One slot of a replica's log, for inspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot.
    pub slot: Slot,
    /// Its status at this replica.
    pub status: SlotStatus,
    /// The ballot it was accepted at, if any.
    pub ballot: Option<Ballot>,
    /// The value, if any.
    pub value: Option<Value>,
}

impl SlotInfo {
    /// A slot's information (for tests and tools that build their own logs).
    pub fn new(
        slot: Slot,
        status: SlotStatus,
        ballot: Option<Ballot>,
        value: Option<Value>,
    ) -> Self {
        SlotInfo {
            slot,
            status,
            ballot,
            value,
        }
    }
}

/// Whether a view change was announced by this replica or received from a new leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ViewDirection {
    /// This replica won phase 1 and sent NEW-VIEW.
    Sent,
    /// This replica received a NEW-VIEW.
    Received,
    /// This replica adopted a new leader from its ACCEPT or heartbeat, its NEW-VIEW
    /// having been lost or delayed.
    Adopted,
}

/// One view change, as PrintView shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ViewChange {
    /// The new leader's ballot.
    pub ballot: Ballot,
    /// The new leader.
    pub leader: NodeId,
    /// Sent or received.
    pub direction: ViewDirection,
    /// The slots the NEW-VIEW covered (`start..end`; empty when adopted).
    pub slots: Range<Slot>,
    /// How many of those were no-op gap fillers.
    pub noops: u64,
    /// The replica's tick count when it happened.
    pub tick: u64,
}

/// A summary of a replica's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// The highest ballot it promised.
    pub promised: Ballot,
    /// The leader it believes in.
    pub leader: Option<NodeId>,
    /// Every slot below this is chosen.
    pub commit_point: Slot,
    /// Every slot below this was executed.
    pub executed: Slot,
    /// Log entries below this slot were compacted away (they are covered by the
    /// latest checkpoint). It trails the latest checkpoint by one interval, so a
    /// follower slightly behind can still fetch entries instead of a snapshot.
    pub compacted_below: Slot,
    /// The slot of the latest checkpoint taken or installed, if any.
    pub checkpoint: Option<Slot>,
    /// How many checkpoints received from peers (state transfer) this replica installed
    /// since it started.
    pub snapshots_installed: u64,
    /// One past the highest slot it knows anything about.
    pub log_end: Slot,
    /// Live client sessions.
    pub sessions: usize,
    /// Whether the replica votes, or is still founding or recovering from lost state.
    pub acceptor: AcceptorStatus,
    /// Its incarnation (0 for a founding member, raised by each recovery).
    pub incarnation: u64,
    /// Ticks since it started.
    pub tick: u64,
}

impl<S: StateMachine> Replica<S> {
    /// The replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state machine, for inspection.
    pub fn state_machine(&self) -> &S {
        self.exec.state_machine()
    }

    /// The replicated session table.
    pub fn sessions(&self) -> &Sessions {
        self.exec.sessions()
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            _ if self.cfg.learner => Role::Learner,
            RoleState::Follower => Role::Follower,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// True when this replica is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The leader this replica believes in.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this replica votes, or is still founding or recovering (see
    /// [`AcceptorStatus`]).
    pub fn acceptor_status(&self) -> AcceptorStatus {
        self.status
    }

    /// This replica's incarnation: 0 for a founding member, raised by each recovery
    /// from lost state.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot below this is chosen.
    pub fn commit_point(&self) -> Slot {
        self.log.commit_point()
    }

    /// Every slot below this was executed.
    pub fn executed(&self) -> Slot {
        self.exec.executed()
    }

    /// A summary of the replica's state.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self.cfg.id,
            role: self.role(),
            promised: self.promised,
            leader: self.leader,
            commit_point: self.log.commit_point(),
            executed: self.exec.executed(),
            compacted_below: self.log.start(),
            checkpoint: self.exec.checkpoint().map(|c| c.slot),
            snapshots_installed: self.exec.counters().snapshots_installed,
            log_end: self.log.end(),
            sessions: self.exec.sessions().len(),
            acceptor: self.status,
            incarnation: self.incarnation,
            tick: self.now,
        }
    }

    /// The replica's running totals (proposals, batches, elections, leader changes,
    /// snapshots...): see [`Counters`].
    pub fn counters(&self) -> Counters {
        *self.exec.counters()
    }

    /// Client requests this replica accepted and has not answered yet (it answers them
    /// once they execute, or redirects them when it stops leading).
    pub fn awaiting_replies(&self) -> usize {
        self.awaiting.len()
    }

    /// Client requests a leader holds until a slot in its window is free (0 on a
    /// replica that does not lead).
    pub fn queued_requests(&self) -> usize {
        match &self.role {
            RoleState::Leader(l) => l.queue.len(),
            _ => 0,
        }
    }

    /// The status and value of one slot.
    pub fn slot(&self, slot: Slot) -> SlotInfo {
        match self.log.get(slot) {
            None if slot < self.log.start() => SlotInfo {
                slot,
                status: SlotStatus::Compacted,
                ballot: None,
                value: None,
            },
            None => SlotInfo {
                slot,
                status: SlotStatus::None,
                ballot: None,
                value: None,
            },
            Some(e) => SlotInfo {
                slot,
                status: self.status_of(slot, e),
                ballot: Some(e.ballot),
                value: Some(e.value.clone()),
            },
        }
    }

    /// Every slot the replica knows about in `range`, in order (unknown slots are left out).
    pub fn log(&self, range: Range<Slot>) -> Vec<SlotInfo> {
        self.log
            .range(range)
            .map(|(s, e)| SlotInfo {
                slot: s,
                status: self.status_of(s, e),
                ballot: Some(e.ballot),
                value: Some(e.value.clone()),
            })
            .collect()
    }

    /// The latest checkpoint, if one was taken or installed.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.exec.checkpoint()
    }

    /// The view changes this replica sent or received, oldest first (the latest
    /// 1024 are kept).
    pub fn view_changes(&self) -> impl Iterator<Item = &ViewChange> {
        self.views.iter()
    }

    pub(super) fn status_of(&self, slot: Slot, e: &Entry) -> SlotStatus {
        if slot < self.exec.executed() {
            SlotStatus::Executed
        } else if e.chosen {
            SlotStatus::Committed
        } else {
            SlotStatus::Accepted
        }
    }

    pub(super) fn record_view(&mut self, v: ViewChange) {
        if self.views.len() >= VIEW_HISTORY {
            self.views.pop_front();
        }
        self.views.push_back(v);
    }
}
