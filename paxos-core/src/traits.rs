//! The three seams of the library: what is replicated, how replicas talk, and where the
//! acceptor's durable state lives.

use std::collections::BTreeMap;
use std::future::Future;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{StorageError, TransportError};
use crate::message::Message;
use crate::slot_map::SlotMap;
use crate::types::{Ballot, NodeId, Slot, Value};

/// A deterministic state machine replicated by the cluster.
///
/// # Contract
/// - [`apply`](StateMachine::apply) must be deterministic: the same sequence of commands
///   applied to the same initial state gives the same outputs and the same state on every
///   replica. No clocks, no randomness, no IO, no iteration over `HashMap`s whose order
///   leaks into the output.
/// - `apply` must not panic on any command; reject invalid ones through `Output`.
/// - [`snapshot`](StateMachine::snapshot) followed by [`restore`](StateMachine::restore)
///   on a fresh instance must give an equal state.
///
/// Commands and outputs travel as postcard-encoded bytes, so both are serde types.
/// Exactly-once execution is the library's job, not the state machine's: a retried
/// request is answered from the replicated session table and never applied twice.
///
/// # Example
/// ```
/// use paxos_core::{StateMachine, RestoreError};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default)]
/// struct Counter(i64);
///
/// #[derive(Serialize, Deserialize)]
/// enum Op { Add(i64), Get }
///
/// impl StateMachine for Counter {
///     type Command = Op;
///     type Output = i64;
///     fn apply(&mut self, op: Op) -> i64 {
///         if let Op::Add(n) = op { self.0 = self.0.saturating_add(n); }
///         self.0
///     }
///     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
///     fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
///         let raw: [u8; 8] = bytes.try_into().map_err(|_| RestoreError::new("want 8 bytes"))?;
///         self.0 = i64::from_le_bytes(raw);
///         Ok(())
///     }
/// }
/// ```
pub trait StateMachine {
    /// A command, as submitted by clients.
    type Command: Serialize + DeserializeOwned;
    /// The result of applying a command, returned to the client that submitted it.
    type Output: Serialize + DeserializeOwned;

    /// Applies one command and returns its output. Must be deterministic.
    fn apply(&mut self, command: Self::Command) -> Self::Output;

    /// Serializes the whole state.
    ///
    /// # Cost
    /// Called by the replica itself, synchronously, every
    /// [`Config::checkpoint_interval`](crate::Config) executed slots: while it runs the
    /// replica handles nothing else (no messages, ticks or requests), and the checkpoint
    /// holds the returned bytes, copied once more into the encoded checkpoint with the
    /// session table, until the next one replaces it. For a large state, keep this to a
    /// plain copy of already-encoded bytes (keep the state serialized, or in a
    /// persistent structure you can serialize quickly) and raise `checkpoint_interval`
    /// so that the pause is rare. Sending the checkpoint to a peer that fell behind
    /// costs no further copy: it goes out as slices of the checkpoint, in pieces of
    /// [`Config::snapshot_chunk_bytes`](crate::Config), and a peer refuses checkpoints
    /// above its [`Config::max_snapshot_bytes`](crate::Config).
    fn snapshot(&self) -> Vec<u8>;

    /// Optionally takes the snapshot **off the replica's thread**: return a
    /// [`SnapshotJob`] that captures the current state cheaply (an `Arc` clone of an
    /// immutable or persistent structure, a copy-on-write handle) and, when run later on
    /// another thread, returns exactly the bytes [`snapshot`](Self::snapshot) would
    /// return now. The replica goes on executing meanwhile; the checkpoint is stored when
    /// the job is done, at the slot where it was taken. The default, `None`, snapshots
    /// synchronously with [`snapshot`](Self::snapshot).
    ///
    /// The job is handed to the driver in [`Ready::checkpoint_jobs`](crate::Ready): the
    /// node driver (`spawn_node`) runs it on Tokio's blocking pool, and
    /// [`Replica::drive`](crate::Replica::drive) runs it at once; the result goes back
    /// through [`Replica::checkpoint_finished`](crate::Replica::checkpoint_finished).
    /// Checkpoints fall due at the same slots as without jobs (replicas that executed
    /// the same log hold the same checkpoints, and a lagging replica can resume a
    /// transfer from any of them); a few jobs may be out at once, and while the driver
    /// holds four, further checkpoints are skipped. A job that panics stores nothing.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use paxos_core::{RestoreError, SnapshotJob, StateMachine};
    ///
    /// /// A large, append-only state: snapshots share the entries, never copy them
    /// /// on the replica's thread.
    /// #[derive(Default)]
    /// struct Journal(Arc<Vec<u64>>);
    ///
    /// impl StateMachine for Journal {
    ///     type Command = u64;
    ///     type Output = usize;
    ///     fn apply(&mut self, entry: u64) -> usize {
    ///         Arc::make_mut(&mut self.0).push(entry); // copies only while a job holds it
    ///         self.0.len()
    ///     }
    ///     fn snapshot(&self) -> Vec<u8> { postcard::to_allocvec(&*self.0).unwrap() }
    ///     fn snapshot_job(&self) -> Option<SnapshotJob> {
    ///         let captured = Arc::clone(&self.0);
    ///         Some(SnapshotJob::new(move || postcard::to_allocvec(&*captured).unwrap()))
    ///     }
    ///     fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
    ///         let entries = postcard::from_bytes(bytes).map_err(|e| RestoreError::new(e.to_string()))?;
    ///         self.0 = Arc::new(entries);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn snapshot_job(&self) -> Option<SnapshotJob> {
        None
    }

    /// Replaces the whole state with a snapshot taken by [`StateMachine::snapshot`].
    /// On error the state must be left as it was.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), crate::RestoreError>;

    /// Answers `command` without changing the state, if it is a read-only command: the
    /// answer must be what [`apply`](Self::apply) would return for it now. Such commands
    /// can be sent as [reads](crate::Request::read), which never enter the log or the
    /// session table. The default answers none (`None`): every command goes through
    /// the log.
    fn query(&self, command: &Self::Command) -> Option<Self::Output> {
        let _ = command;
        None
    }
}

/// A state machine's snapshot, captured now and serialized later on any thread (see
/// [`StateMachine::snapshot_job`]).
pub struct SnapshotJob(Box<dyn FnOnce() -> Vec<u8> + Send>);

impl SnapshotJob {
    /// A job whose `serialize` returns the bytes [`StateMachine::snapshot`] would have
    /// returned when the job was made.
    pub fn new(serialize: impl FnOnce() -> Vec<u8> + Send + 'static) -> Self {
        SnapshotJob(Box::new(serialize))
    }

    /// Runs the serialization.
    pub fn run(self) -> Vec<u8> {
        (self.0)()
    }
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotJob")
    }
}

/// Moves [`Message`]s between replicas.
///
/// # Contract
/// - `send` is synchronous: it hands a message to the transport and returns without
///   waiting for the network. A transport queues, and may drop under pressure or when
///   the peer is unreachable. The protocol tolerates loss, duplication, delay and
///   reordering, so dropping is always allowed; blocking never is.
/// - `recv` waits for the next inbound message and returns it with the sender's id;
///   `None` means the transport is closed for good and the node should stop.
/// - `try_recv` returns an already-queued message without waiting, letting the driver
///   batch many inputs into one persist (group commit). The default returns `None`.
/// - A transport authenticates the sender's id as far as it can (the TCP transport
///   checks a handshake); messages from unknown ids must not be delivered.
pub trait Transport: Send + 'static {
    /// Queues `message` for `to` and returns at once. Errors are for a closed transport
    /// or unknown peer; a message dropped because the peer is slow or down is not an
    /// error.
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError>;

    /// Waits for the next inbound message. Implementations may write `async fn recv`.
    fn recv(&mut self) -> impl Future<Output = Option<(NodeId, Message)>> + Send;

    /// Returns a message that is already queued, without waiting.
    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        None
    }

    /// The cluster moved to configuration `membership` (a
    /// [`Value::Reconfigure`](crate::Value::Reconfigure) executed, or a checkpoint of a
    /// later configuration installed): from now on the node sends to its members, at
    /// the addresses they carry ([`Member::address`](crate::Member::address)).
    /// A transport that reaches any node by id needs nothing (the default); one with an
    /// address book adds the members it did not know. Keep connections to former
    /// members: they may still ask this node for the log as learners.
    ///
    /// [`spawn_node`](crate::spawn_node) calls it before sending anything of the round
    /// in which the change happened, and at start-up when the stored log already holds
    /// changes.
    fn update_membership(&mut self, membership: &crate::Membership) {
        let _ = membership;
    }
}

/// One log entry as the acceptor stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The ballot the value was accepted at; [`Ballot::ZERO`] when the value was learned
    /// as chosen without being accepted here at the ballot that proposed it.
    pub ballot: Ballot,
    /// The value.
    pub value: Value,
    /// True when the value is known to be chosen.
    pub chosen: bool,
}

/// A durable snapshot of the replicated state at a slot boundary: the state machine and
/// the session table after executing every slot below `slot`.
///
/// `data` is opaque to storage; `digest` (CRC-32 of `data`) lets a receiver or a
/// recovering replica detect damage before installing it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every slot below this is reflected in the snapshot.
    pub slot: Slot,
    /// CRC-32 of `data`.
    pub digest: u32,
    /// The encoded state machine snapshot and session table.
    pub data: Bytes,
}

impl Checkpoint {
    /// True when `data` matches `digest`.
    pub fn verify(&self) -> bool {
        crc32fast::hash(&self.data) == self.digest
    }
}

/// Whether an acceptor may vote (promise and accept), as its storage remembers it.
///
/// An acceptor that lost its storage cannot tell that from a brand-new one: both find
/// [`AcceptorStatus::Pristine`]. Neither may vote until it has found out which it is
/// from its peers (see [`Replica`](crate::Replica)'s docs, "Starting and recovering").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AcceptorStatus {
    /// Nothing was ever stored: the first start of a new cluster, or an acceptor whose
    /// state was lost. It does not vote until every member has said it never voted
    /// either (a new cluster) or a majority has handed it their state (a recovery).
    #[default]
    Pristine,
    /// The acceptor knows the cluster exists and is recovering its state from a
    /// majority; it does not vote until the recovery is complete.
    Recovering,
    /// A full acceptor.
    Voter,
}

/// Everything an acceptor must find again after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersistentState {
    /// Whether this acceptor may vote; see [`AcceptorStatus`].
    pub status: AcceptorStatus,
    /// This acceptor's incarnation: 0 for a founding member, raised by every recovery
    /// from lost state, so that peers can tell its old votes from its new ones.
    pub incarnation: u64,
    /// The latest incarnation known of each peer that ever recovered (absent = 0).
    pub peer_incarnations: BTreeMap<NodeId, u64>,
    /// The highest ballot promised.
    pub promised: Ballot,
    /// Accepted or chosen entries by slot.
    pub log: SlotMap<StoredEntry>,
    /// Every slot below this is chosen and its stored value is the chosen one (or is
    /// covered by the checkpoint).
    pub commit_point: Slot,
    /// The latest checkpoint; log entries below its slot may be gone.
    pub checkpoint: Option<Checkpoint>,
}

impl PersistentState {
    /// The state of a member of a brand-new cluster whose members all start this way:
    /// a voter with nothing promised or accepted. Only for clusters bootstrapped by
    /// hand (tests, a deployment tool that knows the cluster is new); a replica started
    /// from [`PersistentState::default`] finds out by itself whether the cluster is new.
    /// Never use it for a replica that may have voted before: that is the amnesia the
    /// recovery protocol exists to prevent.
    pub fn founding() -> Self {
        PersistentState {
            status: AcceptorStatus::Voter,
            ..Default::default()
        }
    }
}

/// A write the core needs to be durable. Produced in [`Ready::persist`](crate::Ready).
///
/// Serde-ready so that a write-ahead log can store the operations themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PersistOp {
    /// Raise the promised ballot.
    Promise(Ballot),
    /// Store `value` as accepted at `ballot` in `slot` (replacing any earlier value).
    Accept {
        /// The slot.
        slot: Slot,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
    /// Store `value` as the chosen value of `slot`.
    Learn {
        /// The slot.
        slot: Slot,
        /// The chosen value.
        value: Value,
    },
    /// Raise the commit point: every slot below it is chosen.
    CommitPoint(Slot),
    /// Store a checkpoint, replacing an older one. Also raises the commit point to its
    /// slot. Ignored when the stored checkpoint is at a higher slot.
    Checkpoint(Checkpoint),
    /// Drop log entries below this slot: a checkpoint covers them.
    Compact(Slot),
    /// Record this acceptor's status and incarnation.
    Status {
        /// The new status.
        status: AcceptorStatus,
        /// This acceptor's incarnation.
        incarnation: u64,
    },
    /// Record that peer `node` recovered from lost state as `incarnation`: its votes
    /// from earlier incarnations no longer count. Ignored when not above what is held.
    PeerIncarnation {
        /// The peer.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
    },
}

/// The acceptor's durable state.
///
/// # Contract
/// - [`persist`](Storage::persist) applies the operations in order and returns only once
///   they are durable (for a disk-backed store: written and fsync'ed). The driver calls it
///   with every [`PersistOp`] of a [`Ready`](crate::Ready) *before* sending any of that
///   `Ready`'s messages or replies, so a PROMISE or ACCEPTED never leaves a node before
///   the state it vouches for is stored. One call covers a whole batch: an implementation
///   should make it one fsync (group commit), never one per operation.
///   One relaxation: a `Checkpoint` the stored log already covers (every slot from the
///   stored checkpoint up to its slot is in the log, below a commit point the log
///   records, and no `Compact` of the batch goes past the stored checkpoint) may become
///   durable later, as long as no entry it covers is dropped before it is. A crash in
///   between loads the previous checkpoint with those entries: the state the replica
///   had before taking it, which it replays to the same point. A checkpoint installed
///   from a peer is never covered that way and must be durable on return.
///   `paxos-storage-file` writes covered checkpoints on a thread of its own.
/// - [`load`](Storage::load) returns what was persisted, for [`Replica::new`](crate::Replica::new).
/// - The promised ballot and the commit point never go back: an implementation ignores a
///   `Promise` or `CommitPoint` lower than what it holds.
/// - An error from `persist` is fatal for the node: the driver stops rather than send
///   replies that vouch for state that may not be stored.
pub trait Storage: Send + 'static {
    /// Reads the stored state.
    fn load(&mut self) -> Result<PersistentState, StorageError>;

    /// Makes `ops` durable, in order.
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError>;

    /// [`persist`](Storage::persist), handed the operations to keep: a store that holds
    /// them in memory ([`MemStorage`]) moves their values out of `ops` rather than
    /// cloning them. The caller clears whatever is left in `ops` afterwards and keeps
    /// its capacity for the next round, so a store may take all, some or none; every
    /// operation, taken or left, must be durable before it returns `Ok`. The
    /// drivers ([`Ready::deliver_mut`](crate::Ready::deliver_mut)) call this one.
    /// Default: `self.persist(ops)`.
    fn persist_owned(&mut self, ops: &mut Vec<PersistOp>) -> Result<(), StorageError> {
        self.persist(ops)
    }

    /// True when [`persist`](Storage::persist) may block the thread (on a disk, on a
    /// lock another process holds...). The node driver then writes on tokio's
    /// blocking pool ([`tokio::task::spawn_blocking`]), the store moved there and back
    /// for each write, and goes on handling inputs meanwhile; what they produce waits
    /// for the write (see [`spawn_node`](crate::spawn_node)). That hand-over costs a
    /// thread wake-up per write, which a store that never waits ([`MemStorage`]) skips
    /// by answering `false`: the driver then writes in place. Default `true`: a store
    /// that blocks but answers `false` stalls every task sharing the thread for the
    /// length of each write.
    fn blocks(&self) -> bool {
        true
    }
}

/// A [`Storage`] in memory: for tests, simulations and throwaway clusters.
///
/// It keeps its contents as long as the value lives, so a test can "restart" a replica
/// by building a new one from the same `MemStorage`.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    state: PersistentState,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored state, for inspection.
    pub fn state(&self) -> &PersistentState {
        &self.state
    }
}

impl Storage for MemStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        Ok(self.state.clone())
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        for op in ops {
            apply_op(&mut self.state, op);
        }
        Ok(())
    }

    fn persist_owned(&mut self, ops: &mut Vec<PersistOp>) -> Result<(), StorageError> {
        for op in ops.drain(..) {
            apply_owned_op(&mut self.state, op);
        }
        Ok(())
    }

    /// Never: it only updates memory.
    fn blocks(&self) -> bool {
        false
    }
}

/// Applies one operation to a [`PersistentState`]: the reference semantics every
/// [`Storage`] implements.
pub fn apply_op(state: &mut PersistentState, op: &PersistOp) {
    apply_owned_op(state, op.clone());
}

/// [`apply_op`], moving the operation's values into the state instead of cloning them.
pub fn apply_owned_op(state: &mut PersistentState, op: PersistOp) {
    match op {
        PersistOp::Promise(b) => state.promised = state.promised.max(b),
        PersistOp::Accept {
            slot,
            ballot,
            value,
        } => match state.log.get_mut(slot) {
            None => {
                state.log.insert(
                    slot,
                    StoredEntry {
                        ballot,
                        value,
                        chosen: false,
                    },
                );
            }
            Some(e) => {
                if !e.chosen {
                    e.ballot = ballot;
                    e.value = value;
                }
            }
        },
        PersistOp::Learn { slot, value } => match state.log.get_mut(slot) {
            None => {
                state.log.insert(
                    slot,
                    StoredEntry {
                        ballot: Ballot::ZERO,
                        value,
                        chosen: true,
                    },
                );
            }
            Some(e) => {
                if e.value != value {
                    // The stored ballot proposed another value: keep no ballot for this
                    // one (a learned value is never left under a ballot that did not
                    // propose it).
                    e.ballot = Ballot::ZERO;
                    e.value = value;
                }
                e.chosen = true;
            }
        },
        PersistOp::CommitPoint(c) => state.commit_point = state.commit_point.max(c),
        PersistOp::Checkpoint(cp) => {
            if state
                .checkpoint
                .as_ref()
                .is_none_or(|old| old.slot < cp.slot)
            {
                state.commit_point = state.commit_point.max(cp.slot);
                state.checkpoint = Some(cp);
            }
        }
        PersistOp::Compact(below) => state.log.remove_below(below),
        PersistOp::Status {
            status,
            incarnation,
        } => {
            state.status = status;
            state.incarnation = incarnation;
        }
        PersistOp::PeerIncarnation { node, incarnation } => {
            let known = state.peer_incarnations.entry(node).or_insert(0);
            *known = (*known).max(incarnation);
        }
    }
}
