//! Replica configuration.

use crate::error::ConfigError;
use crate::types::NodeId;

/// The most members a cluster may have (acknowledgements are tracked in a bitmask).
pub const MAX_MEMBERS: usize = 64;

/// The default [`Config::snapshot_chunk_bytes`]: 1 MiB.
pub const DEFAULT_SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The default [`Config::max_snapshot_bytes`]: 1 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

/// The default [`Config::session_ttl_ticks`]: one hour at a 10 ms tick.
pub const DEFAULT_SESSION_TTL_TICKS: u64 = 360_000;

/// The default [`Config::session_clock_ticks`]: 10 s at a 10 ms tick.
pub const DEFAULT_SESSION_CLOCK_TICKS: u64 = 1_000;

/// The default [`Config::max_message_bytes`]: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What [`Config::max_message_bytes`] counts per log value beyond its payload: the
/// slot, ballot, session and request number around it on the wire, rounded up.
pub const VALUE_OVERHEAD_BYTES: usize = 48;

/// How a [`Replica`](crate::Replica) behaves. Times are counted in ticks: the driver
/// decides how long a tick is ([`NodeOptions::tick`](crate::NodeOptions)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// This replica's id.
    pub id: NodeId,
    /// Every voting replica of the cluster, this one included unless it is a
    /// [`learner`](Config::learner).
    pub members: Vec<NodeId>,
    /// This replica is a *learner*: it is not among `members`, never votes and never
    /// leads, and copies the chosen log from the members (polling them with FETCHes and
    /// pulling their checkpoints), executing it like any replica. It serves stale reads
    /// ([`Client::read_stale`](crate::Client::read_stale)) and keeps a durable copy of
    /// the log; the members need no configuration for it, beyond a transport that can
    /// reach it. Build one with [`Config::learner`]. Default `false`.
    pub learner: bool,
    /// Seed of the replica's random number generator (election timeouts). Give each
    /// replica a different seed; [`Config::new`] derives one from the id.
    /// [`spawn_node`](crate::spawn_node) mixes fresh OS randomness into it at every
    /// start: a replica that lost its storage must not draw the same nonces (for
    /// PREPAREs and recoveries) as in its previous life. Whoever drives a [`Replica`](crate::Replica)
    /// by hand outside a simulation should do the same.
    pub seed: u64,
    /// A leader sends a heartbeat after this many ticks without other traffic.
    pub heartbeat_ticks: u64,
    /// A follower that hears nothing from its leader for a random number of ticks in
    /// `election_ticks..2 * election_ticks` starts an election. Must exceed
    /// `heartbeat_ticks`.
    pub election_ticks: u64,
    /// Unacknowledged proposals, prepares and fetches are sent again after this many ticks.
    pub retransmit_ticks: u64,
    /// The most slots a leader has in flight (proposed, not yet committed) at once.
    /// It also sizes the acceptance window (four times this many slots above an
    /// acceptor's commit point), which a candidate applies to the PROMISEs it gets:
    /// set it the same on every member.
    pub max_inflight: u64,
    /// The most entries in one ACCEPT, FETCH-REPLY or PROMISE batch of chosen entries.
    pub max_batch: usize,
    /// The most bytes of log values in one ACCEPT or FETCH-REPLY, in a PROMISE's batch
    /// of chosen entries, and in a leader's in-flight (proposed, uncommitted) entries,
    /// counted as each value's payload plus [`VALUE_OVERHEAD_BYTES`]; a batch always
    /// carries at least one entry, and a leader always has one proposal in flight. Keep it
    /// well below the transport's frame limit (the TCP transport's `max_frame_size`, 16
    /// MiB by default): a batch of `max_batch` large commands would otherwise exceed the
    /// frame, be dropped by the transport, and be sent again, the same size, for ever.
    /// `NodeServer` lowers it to a quarter of its frame limit. Default 4 MiB.
    ///
    /// PROMISE and NEW-VIEW are cut too: a PROMISE reports the entries above the
    /// sender's commit point in pages of this size (the candidate asks for each next
    /// page), and a new leader's NEW-VIEW carries this much of its merged log, the
    /// rest going out as ACCEPTs as its in-flight budget allows. Not cut: the entries
    /// a RECOVER-GRANT reports above the sender's commit point. Two bounds keep those
    /// small: each leader's in-flight bytes (what recent leaders left uncommitted),
    /// and an acceptor's byte window: it accepts a proposal only while the entries it
    /// holds from its commit point up to that slot come to less than twice this (in
    /// slots, it also stays within four times `max_inflight`); a follower behind a
    /// gap fetches before it accepts more. A slot can carry a batch of requests
    /// (`max_requests_per_slot`), so a window in slots alone would not do.
    pub max_message_bytes: usize,
    /// The most client requests a leader packs into one slot
    /// ([`Value::Batch`](crate::Value::Batch)) when several wait in its queue. A batch
    /// also stays within `max_message_bytes`. Batching costs no latency: the leader
    /// packs only what is already waiting when it proposes, and proposes as soon as
    /// the window has room. 1 gives every request a slot of its own. Positive.
    ///
    /// Default 64. PROMISE and NEW-VIEW come in pages of `max_message_bytes`, so
    /// what a deposed leader left in batches never makes phase 1 outgrow a frame.
    /// (A RECOVER-GRANT is not paged yet: a replica that recovered from lost state
    /// holds what a majority held above its commit point until its commit point
    /// moves, and its own grant to another recovering replica can then be large.)
    pub max_requests_per_slot: usize,
    /// With several requests per slot: while slots the leader proposed earlier are in
    /// flight (proposed, not yet committed), a slot that would not be full (fewer than
    /// `max_requests_per_slot` requests wait) waits for them, and the requests that
    /// arrive meanwhile join it. It waits for the slots in flight when its first
    /// request began to wait, not for any proposed since, so the wait is bounded by
    /// one round of those. A lone client seldom waits at all (nothing is in flight when
    /// its request comes, unless a session clock entry is); under load it turns many
    /// small ACCEPT rounds, each an fsync on every member, into fewer, fuller ones.
    /// `false` proposes what waits at the end of every round, full or not: more rounds
    /// in flight, for clusters whose round trips cost more than their writes. Default
    /// `true`.
    pub hold_partial_slots: bool,
    /// The most client requests a leader queues while its window is full; beyond that
    /// it answers [`Response::Busy`](crate::Response::Busy). Also bounds the requests a
    /// replica tracks for replies.
    pub max_pending: usize,
    /// The most client sessions kept; the least recently used is dropped beyond it.
    pub max_sessions: usize,
    /// Client sessions idle for this many ticks expire (0: never). Counted from the
    /// moment the leader received the session's last request that executed, on the
    /// leaders' clocks: a session is never dropped sooner, and is dropped within about
    /// `session_ttl_ticks + 2 × session_clock_ticks` while the cluster can commit. See
    /// [`Sessions`](crate::Sessions) for the rule and for what the client then sees.
    ///
    /// Default 360,000 (one hour at a 10 ms tick): long enough that a live client
    /// rarely idles past it (and a [`Client`](crate::Client) idle for
    /// [`ClientOptions::session_idle_limit`](crate::ClientOptions), 30 minutes by
    /// default, registers afresh before it could), short enough that the sessions of
    /// clients that died stop taking memory and checkpoint space within the hour,
    /// rather than only when `max_sessions` is reached. It is the leader's value that
    /// counts (it is written into the log with each clock entry), so replicas that
    /// disagree about it do not diverge; set it the same everywhere all the same (a
    /// leader with expiry off does not open its reign with a clock step, which weakens
    /// the time-to-live guarantee for the others' sessions).
    pub session_ttl_ticks: u64,
    /// While sessions exist and `session_ttl_ticks` is not 0, the leader proposes a
    /// clock entry ([`Value::ClockStep`](crate::Value::ClockStep)) every this many ticks: the
    /// resolution of session expiry, at the cost of one log entry per period.
    /// Positive. Default 1,000 (10 s at a 10 ms tick).
    pub session_clock_ticks: u64,
    /// Every this many executed slots the replica checkpoints its state machine and
    /// session table and compacts its log below the previous checkpoint. 0 disables
    /// checkpoints (the log then grows without bound). See also
    /// [`checkpoint_slots_per_session`](Config::checkpoint_slots_per_session). Taking
    /// one calls [`StateMachine::snapshot`](crate::StateMachine::snapshot) on the
    /// replica's own thread (see its cost there): a large state wants a larger interval.
    pub checkpoint_interval: u64,
    /// Checkpoints are also at least this many slots apart per client session: each
    /// one encodes the whole session table, so with the default 1 its cost stays at
    /// most one session per executed slot however many clients there are (4,096
    /// clients: a checkpoint every 4,096 slots rather than every `checkpoint_interval`,
    /// and a log of up to twice that many entries), up to 16 times
    /// `checkpoint_interval`, so that clients cannot make the log hold much more than
    /// the interval asks for. 0: `checkpoint_interval` alone decides. Default 1.
    pub checkpoint_slots_per_session: u64,
    /// State transfer sends a checkpoint in pieces of at most this many bytes of data
    /// ([`Message::SnapshotChunk`](crate::Message::SnapshotChunk)), one round trip
    /// each, so that no message carries a whole large state. Keep it well below the
    /// transport's frame limit (the TCP transport's `max_frame_size`, 16 MiB by
    /// default; a chunk adds a few dozen bytes of header). Default 1 MiB.
    pub snapshot_chunk_bytes: usize,
    /// The largest checkpoint this replica accepts by state transfer, in bytes. A
    /// transfer announcing more is refused before anything is buffered, so this bounds
    /// the memory a peer can make the replica hold for an incoming snapshot. Must be
    /// at least the size of the largest checkpoint the cluster takes, on every replica:
    /// a replica that falls behind a larger checkpoint can never catch up (a warning is
    /// logged when a replica takes a checkpoint above its own limit). Default 1 GiB.
    pub max_snapshot_bytes: u64,
    #[cfg(test)]
    pub(crate) mutation: crate::mutation::Mutation,
}

impl Config {
    /// A configuration with defaults suited to a tick of about 10 ms.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            id,
            members,
            learner: false,
            seed: id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed,
            heartbeat_ticks: 3,
            election_ticks: 20,
            retransmit_ticks: 5,
            max_inflight: 8192,
            max_batch: 1024,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_requests_per_slot: 64,
            hold_partial_slots: true,
            max_pending: 65_536,
            max_sessions: 100_000,
            session_ttl_ticks: DEFAULT_SESSION_TTL_TICKS,
            session_clock_ticks: DEFAULT_SESSION_CLOCK_TICKS,
            checkpoint_interval: 1000,
            checkpoint_slots_per_session: 1,
            snapshot_chunk_bytes: DEFAULT_SNAPSHOT_CHUNK_BYTES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            #[cfg(test)]
            mutation: crate::mutation::Mutation::None,
        }
    }

    /// A configuration for learner `id` of the cluster whose voting members are
    /// `members` (see [`Config::learner`]).
    ///
    /// ```
    /// use paxos_core::Config;
    /// let config = Config::learner(6, vec![1, 2, 3, 4, 5]);
    /// assert!(config.learner && config.validate().is_ok());
    /// assert!(Config::learner(3, vec![1, 2, 3]).validate().is_err()); // a member
    /// ```
    pub fn learner(id: NodeId, members: Vec<NodeId>) -> Self {
        Config {
            learner: true,
            ..Config::new(id, members)
        }
    }

    /// Checks that the configuration is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.members.is_empty() {
            return Err(ConfigError::NoMembers);
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(ConfigError::TooManyMembers {
                max: MAX_MEMBERS,
                got: self.members.len(),
            });
        }
        for (i, m) in self.members.iter().enumerate() {
            if self.members[..i].contains(m) {
                return Err(ConfigError::DuplicateMember(*m));
            }
        }
        if self.learner && self.members.contains(&self.id) {
            return Err(ConfigError::LearnerIsAMember(self.id));
        }
        if !self.learner && !self.members.contains(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        let positive = [
            ("heartbeat_ticks", self.heartbeat_ticks),
            ("retransmit_ticks", self.retransmit_ticks),
            ("max_inflight", self.max_inflight),
            ("max_batch", self.max_batch as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_requests_per_slot", self.max_requests_per_slot as u64),
            ("max_pending", self.max_pending as u64),
            ("max_sessions", self.max_sessions as u64),
            ("session_clock_ticks", self.session_clock_ticks),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes as u64),
            ("max_snapshot_bytes", self.max_snapshot_bytes),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(ConfigError::OutOfRange {
                    name,
                    requirement: "positive",
                });
            }
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError::OutOfRange {
                name: "election_ticks",
                requirement: "greater than heartbeat_ticks",
            });
        }
        Ok(())
    }

    /// The number of replicas that form a majority.
    pub fn quorum(&self) -> usize {
        self.members.len() / 2 + 1
    }
}
