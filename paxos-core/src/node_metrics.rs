//! What the node driver publishes through the [`metrics`] facade.
//!
//! The replica keeps its own [`Counters`](crate::Counters) and status without any IO;
//! the driver copies them into the facade (gauges and totals on every tick) and adds
//! what only the driver sees: how long each persist (fsync) took, how many writes and
//! proposals each round carried, the depth of its queues and the messages it received.
//! Every metric carries a `node` label. Without an installed recorder (see
//! `metrics::set_global_recorder`, or an exporter such as `metrics-exporter-prometheus`)
//! every call is a no-op; handles are bound when the node starts, so install the
//! recorder before [`spawn_node`](crate::spawn_node).

use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::message::Message;
use crate::replica::{Replica, Role};
use crate::traits::StateMachine;

/// The name of every metric the node driver publishes through the `metrics` facade
/// (each with a `node` label), e.g. to configure an exporter's histogram buckets.
pub mod names {
    /// Gauge: the round of the highest ballot this replica promised.
    pub const BALLOT_ROUND: &str = "paxos_ballot_round";
    /// Gauge: the node that owns the highest ballot this replica promised.
    pub const BALLOT_NODE: &str = "paxos_ballot_node";
    /// Gauge: the leader this replica believes in, -1 when it knows none.
    pub const LEADER: &str = "paxos_leader";
    /// Gauge: 1 on a replica that leads, else 0.
    pub const IS_LEADER: &str = "paxos_is_leader";
    /// Gauge: 0 follower, 1 candidate, 2 leader, 3 learner.
    pub const ROLE: &str = "paxos_role";
    /// Gauge: every slot below it is chosen.
    pub const COMMIT_POINT: &str = "paxos_commit_point";
    /// Gauge: every slot below it was executed.
    pub const EXECUTED: &str = "paxos_executed";
    /// Gauge: one past the highest slot the replica knows of.
    pub const LOG_END: &str = "paxos_log_end";
    /// Gauge: live client sessions.
    pub const SESSIONS: &str = "paxos_sessions";
    /// Gauge: client requests accepted and not answered yet.
    pub const AWAITING_REPLIES: &str = "paxos_awaiting_replies";
    /// Gauge: client requests a leader holds until its window has room.
    pub const QUEUED_REQUESTS: &str = "paxos_queued_requests";
    /// Gauge: commands (requests, inspections) waiting in the node handle's queue.
    pub const COMMAND_QUEUE: &str = "paxos_command_queue_depth";
    /// Gauge: 1 while the replica votes, 0 while it founds or recovers.
    pub const VOTING: &str = "paxos_voting";
    /// Counter: client requests proposed as leader.
    pub const PROPOSALS: &str = "paxos_proposals_total";
    /// Counter: ACCEPT batches sent as leader.
    pub const ACCEPT_BATCHES: &str = "paxos_accept_batches_total";
    /// Counter: entries in those batches.
    pub const ACCEPT_ENTRIES: &str = "paxos_accept_entries_total";
    /// Counter: pre-votes started (election timeouts).
    pub const PREVOTES: &str = "paxos_prevotes_started_total";
    /// Counter: elections (phase 1) started.
    pub const ELECTIONS: &str = "paxos_elections_started_total";
    /// Counter: elections won.
    pub const ELECTIONS_WON: &str = "paxos_elections_won_total";
    /// Counter: times the replica came to believe in a new leader.
    pub const LEADER_CHANGES: &str = "paxos_leader_changes_total";
    /// Counter: snapshots sent to lagging peers.
    pub const SNAPSHOTS_SENT: &str = "paxos_snapshots_sent_total";
    /// Counter: snapshots received and installed.
    pub const SNAPSHOTS_INSTALLED: &str = "paxos_snapshots_installed_total";
    /// Counter: checkpoints taken.
    pub const CHECKPOINTS: &str = "paxos_checkpoints_taken_total";
    /// Counter: client sessions dropped for being idle past their time-to-live.
    pub const SESSIONS_EXPIRED: &str = "paxos_sessions_expired_total";
    /// Counter: clock entries (for session expiry) proposed as leader.
    pub const CLOCKS_PROPOSED: &str = "paxos_clocks_proposed_total";
    /// Counter: clock steps executed without effect (a deposed leader's, off the
    /// log's chain).
    pub const CLOCK_STEPS_IGNORED: &str = "paxos_clock_steps_ignored_total";
    /// Counter: slots proposed as leader that carry several requests.
    pub const BATCHED_SLOTS: &str = "paxos_batched_slots_total";
    /// Gauge: the epoch of the configuration the replica is in (0 until the membership
    /// first changes).
    pub const EPOCH: &str = "paxos_epoch";
    /// Gauge: the number of voting members of that configuration.
    pub const MEMBERS: &str = "paxos_members";
    /// Counter: membership changes the replica went through.
    pub const MEMBERSHIP_CHANGES: &str = "paxos_membership_changes_total";
    /// Counter: driver rounds (inputs folded, then persist, send, reply).
    pub const ROUNDS: &str = "paxos_rounds_total";
    /// Counter, label `kind`: protocol messages received from peers.
    pub const MESSAGES_RECEIVED: &str = "paxos_messages_received_total";
    /// Histogram: seconds each persist call (the round's fsync) took.
    pub const PERSIST_SECONDS: &str = "paxos_persist_seconds";
    /// Histogram: writes per persist call (group commit).
    pub const PERSIST_OPS: &str = "paxos_persist_ops";
    /// Histogram: client requests a leader proposed in one round (its batch).
    pub const BATCH_SIZE: &str = "paxos_batch_size";
}

/// The message kinds counted apart; anything else counts as `other`.
const KINDS: [&str; 23] = [
    "prevote",
    "prevote_granted",
    "prepare",
    "promise",
    "nack",
    "accept",
    "new_view",
    "accepted",
    "heartbeat",
    "fetch",
    "fetch_reply",
    "snapshot",
    "recover",
    "recover_grant",
    "recover_refused",
    "never_voted",
    "read_index",
    "read_index_ack",
    "timeout_now",
    "snapshot_chunk",
    "snapshot_request",
    "commit",
    "other",
];

fn kind_index(m: &Message) -> usize {
    // The wildcard keeps this compiling when message kinds are added; they count as
    // `other` until they get a name here.
    #[allow(unreachable_patterns)]
    match m {
        Message::PreVote { .. } => 0,
        Message::PreVoteGranted { .. } => 1,
        Message::Prepare { .. } => 2,
        Message::Promise { .. } => 3,
        Message::Nack { .. } => 4,
        Message::Accept { .. } => 5,
        Message::NewView { .. } => 6,
        Message::Accepted { .. } => 7,
        Message::Heartbeat { .. } => 8,
        Message::Fetch { .. } => 9,
        Message::FetchReply { .. } => 10,
        Message::Snapshot { .. } => 11,
        Message::Recover { .. } => 12,
        Message::RecoverGrant { .. } => 13,
        Message::RecoverRefused { .. } => 14,
        Message::NeverVoted { .. } => 15,
        Message::ReadIndex { .. } => 16,
        Message::ReadIndexAck { .. } => 17,
        Message::TimeoutNow { .. } => 18,
        Message::SnapshotChunk { .. } => 19,
        Message::SnapshotRequest { .. } => 20,
        Message::Commit { .. } => 21,
        _ => 22,
    }
}

/// The driver's metric handles, bound once to the recorder installed at start-up.
pub(crate) struct NodeMetrics {
    ballot_round: Gauge,
    ballot_node: Gauge,
    leader: Gauge,
    is_leader: Gauge,
    role: Gauge,
    commit_point: Gauge,
    executed: Gauge,
    log_end: Gauge,
    sessions: Gauge,
    awaiting: Gauge,
    queued: Gauge,
    command_queue: Gauge,
    voting: Gauge,
    proposals: Counter,
    accept_batches: Counter,
    accept_entries: Counter,
    prevotes: Counter,
    elections: Counter,
    elections_won: Counter,
    leader_changes: Counter,
    snapshots_sent: Counter,
    snapshots_installed: Counter,
    checkpoints: Counter,
    sessions_expired: Counter,
    clocks_proposed: Counter,
    clock_steps_ignored: Counter,
    batched_slots: Counter,
    epoch: Gauge,
    members: Gauge,
    membership_changes: Counter,
    rounds: Counter,
    received: Vec<Counter>,
    persist_seconds: Histogram,
    persist_ops: Histogram,
    batch_size: Histogram,
    /// Proposals counted at the end of the previous round.
    last_proposals: u64,
}

impl NodeMetrics {
    pub(crate) fn new(node: crate::NodeId) -> Self {
        use names::*;
        let n = node.to_string();
        NodeMetrics {
            ballot_round: gauge!(BALLOT_ROUND, "node" => n.clone()),
            ballot_node: gauge!(BALLOT_NODE, "node" => n.clone()),
            leader: gauge!(LEADER, "node" => n.clone()),
            is_leader: gauge!(IS_LEADER, "node" => n.clone()),
            role: gauge!(ROLE, "node" => n.clone()),
            commit_point: gauge!(COMMIT_POINT, "node" => n.clone()),
            executed: gauge!(EXECUTED, "node" => n.clone()),
            log_end: gauge!(LOG_END, "node" => n.clone()),
            sessions: gauge!(SESSIONS, "node" => n.clone()),
            awaiting: gauge!(AWAITING_REPLIES, "node" => n.clone()),
            queued: gauge!(QUEUED_REQUESTS, "node" => n.clone()),
            command_queue: gauge!(COMMAND_QUEUE, "node" => n.clone()),
            voting: gauge!(VOTING, "node" => n.clone()),
            proposals: counter!(PROPOSALS, "node" => n.clone()),
            accept_batches: counter!(ACCEPT_BATCHES, "node" => n.clone()),
            accept_entries: counter!(ACCEPT_ENTRIES, "node" => n.clone()),
            prevotes: counter!(PREVOTES, "node" => n.clone()),
            elections: counter!(ELECTIONS, "node" => n.clone()),
            elections_won: counter!(ELECTIONS_WON, "node" => n.clone()),
            leader_changes: counter!(LEADER_CHANGES, "node" => n.clone()),
            snapshots_sent: counter!(SNAPSHOTS_SENT, "node" => n.clone()),
            snapshots_installed: counter!(SNAPSHOTS_INSTALLED, "node" => n.clone()),
            checkpoints: counter!(CHECKPOINTS, "node" => n.clone()),
            sessions_expired: counter!(SESSIONS_EXPIRED, "node" => n.clone()),
            clocks_proposed: counter!(CLOCKS_PROPOSED, "node" => n.clone()),
            clock_steps_ignored: counter!(CLOCK_STEPS_IGNORED, "node" => n.clone()),
            batched_slots: counter!(BATCHED_SLOTS, "node" => n.clone()),
            epoch: gauge!(EPOCH, "node" => n.clone()),
            members: gauge!(MEMBERS, "node" => n.clone()),
            membership_changes: counter!(MEMBERSHIP_CHANGES, "node" => n.clone()),
            rounds: counter!(ROUNDS, "node" => n.clone()),
            received: KINDS
                .iter()
                .map(|k| counter!(MESSAGES_RECEIVED, "node" => n.clone(), "kind" => *k))
                .collect(),
            persist_seconds: histogram!(PERSIST_SECONDS, "node" => n.clone()),
            persist_ops: histogram!(PERSIST_OPS, "node" => n.clone()),
            batch_size: histogram!(BATCH_SIZE, "node" => n),
            last_proposals: 0,
        }
    }

    /// A message arrived from a peer.
    pub(crate) fn received(&self, m: &Message) {
        if let Some(c) = self.received.get(kind_index(m)) {
            c.increment(1);
        }
    }

    /// A persist call of `ops` writes took `took`.
    pub(crate) fn persisted(&self, ops: usize, took: Duration) {
        self.persist_seconds.record(took.as_secs_f64());
        self.persist_ops.record(ops as f64);
    }

    /// A round ended: count it, and the proposals it made as one batch.
    pub(crate) fn round_done<S: StateMachine>(&mut self, replica: &Replica<S>) {
        self.rounds.increment(1);
        let proposals = replica.counters().proposals;
        if proposals > self.last_proposals {
            self.batch_size
                .record((proposals - self.last_proposals) as f64);
            self.last_proposals = proposals;
        }
    }

    /// Copies the replica's status and totals into the gauges and counters (on every
    /// tick: cheap, and fresh enough for any scrape interval).
    pub(crate) fn publish<S: StateMachine>(&self, replica: &Replica<S>, command_queue: usize) {
        let s = replica.status();
        self.ballot_round.set(s.promised.round as f64);
        self.ballot_node.set(s.promised.node as f64);
        self.leader.set(s.leader.map_or(-1.0, |l| l as f64));
        let role = match s.role {
            Role::Follower => 0.0,
            Role::Candidate => 1.0,
            Role::Leader => 2.0,
            Role::Learner => 3.0,
        };
        self.role.set(role);
        self.is_leader
            .set(if s.role == Role::Leader { 1.0 } else { 0.0 });
        self.commit_point.set(s.commit_point as f64);
        self.executed.set(s.executed as f64);
        self.log_end.set(s.log_end as f64);
        self.sessions.set(s.sessions as f64);
        self.awaiting.set(replica.awaiting_replies() as f64);
        self.queued.set(replica.queued_requests() as f64);
        self.command_queue.set(command_queue as f64);
        let voting = s.acceptor == crate::AcceptorStatus::Voter;
        self.voting.set(if voting { 1.0 } else { 0.0 });
        let c = replica.counters();
        self.proposals.absolute(c.proposals);
        self.accept_batches.absolute(c.accept_batches);
        self.accept_entries.absolute(c.accept_entries);
        self.prevotes.absolute(c.prevotes_started);
        self.elections.absolute(c.elections_started);
        self.elections_won.absolute(c.elections_won);
        self.leader_changes.absolute(c.leader_changes);
        self.snapshots_sent.absolute(c.snapshots_sent);
        self.snapshots_installed.absolute(c.snapshots_installed);
        self.checkpoints.absolute(c.checkpoints_taken);
        self.sessions_expired.absolute(c.sessions_expired);
        self.clocks_proposed.absolute(c.clocks_proposed);
        self.clock_steps_ignored.absolute(c.clock_steps_ignored);
        self.batched_slots.absolute(c.batched_slots);
        self.membership_changes.absolute(c.membership_changes);
        let m = replica.membership();
        self.epoch.set(m.epoch as f64);
        self.members.set(m.members.len() as f64);
    }
}
