//! The simulation engine: whole clusters of the real [`Replica`] with a seeded network
//! and clock, driven by simulated clients, with invariant checks after every step.

mod checks;
mod clients;
mod faults;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

#[cfg(test)]
pub(crate) use crate::mutation::Mutation;
use crate::testing::linearizability::{check_with_budget, AppendLog, CheckError, Model, Operation};
use crate::testing::sim::{Gen, Workload};

use crate::types::{StaleAnswer, READ_SEQ, STALE_READ_BASE};
use crate::{
    AcceptorStatus, Ballot, ClientId, Config, MemStorage, Message, NodeId, PersistOp, Replica,
    Reply, Request, Response, RestoreError, Slot, StateMachine, Storage, Value,
};
pub(crate) use faults::Faults;
use faults::{chance, unit};

/// Without the crate's tests there are no broken variants: the correct protocol only.
#[cfg(not(test))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mutation {
    #[default]
    None,
}

/// Wraps the workload's state machine so that every command carries its request's
/// identity and every output the position at which it was applied: the checkers compare
/// executed histories across replicas and explain each reply by a position.
///
/// It also keeps the encoded output of every command it applied itself (not those a
/// snapshot brought), so that replicas can be compared output by output: a replica whose
/// state diverged (a `restore` that loses something, nondeterminism) shows at the next
/// command whose output depends on it, whoever answers the client. And it remembers a
/// `restore` that failed.
#[derive(Debug, Default)]
pub(crate) struct Recording<M> {
    pub(crate) applied: Vec<(ClientId, u64)>,
    pub(crate) outputs: Vec<(u64, Vec<u8>)>,
    pub(crate) restore_failed: Option<String>,
    /// Snapshots are taken as [`SnapshotJob`](crate::SnapshotJob)s.
    deferred: bool,
    inner: M,
}

impl<M> Recording<M> {
    pub(crate) fn new(inner: M) -> Self {
        Recording {
            applied: Vec::new(),
            outputs: Vec::new(),
            restore_failed: None,
            deferred: false,
            inner,
        }
    }

    /// Takes snapshots off the replica's thread (or not).
    pub(crate) fn deferred(mut self, on: bool) -> Self {
        self.deferred = on;
        self
    }
}

impl<M: StateMachine> StateMachine for Recording<M> {
    type Command = (ClientId, u64, M::Command);
    type Output = (u64, M::Output);

    fn apply(&mut self, (client, seq, command): Self::Command) -> Self::Output {
        let output = self.inner.apply(command);
        self.applied.push((client, seq));
        let position = self.applied.len() as u64 - 1;
        self.outputs
            .push((position, postcard::to_allocvec(&output).unwrap_or_default()));
        (position, output)
    }

    /// A read reports how many commands the state it read had executed.
    fn query(&self, (_, _, command): &Self::Command) -> Option<Self::Output> {
        let output = self.inner.query(command)?;
        Some((self.applied.len() as u64, output))
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&(&self.applied, self.inner.snapshot())).unwrap_or_default()
    }

    /// The state is captured now (a copy: the simulation's states are small); the job
    /// only hands it over, whenever the simulation runs it.
    fn snapshot_job(&self) -> Option<crate::SnapshotJob> {
        if !self.deferred {
            return None;
        }
        let captured = self.snapshot();
        Some(crate::SnapshotJob::new(move || captured))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let (applied, inner): (Vec<(ClientId, u64)>, Vec<u8>) =
            postcard::from_bytes(snapshot).map_err(|e| RestoreError::new(e.to_string()))?;
        if let Err(e) = self.inner.restore(&inner) {
            self.restore_failed = Some(e.to_string());
            return Err(e);
        }
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
/// A state machine with nothing in it: the crate's own simulation checks the protocol
/// with commands that are only their identity (`Recording<Unit>`), whose encoding is
/// exactly `(client, request number)`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Unit;

#[cfg(test)]
impl StateMachine for Unit {
    type Command = ();
    type Output = ();

    fn apply(&mut self, _: ()) {}

    fn query(&self, _: &()) -> Option<()> {
        Some(())
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

#[cfg(test)]
/// The crate's own simulation state machine (see [`Unit`]).
pub(crate) type Recorder = Recording<Unit>;

#[cfg(test)]
/// The crate's own workload: [`Unit`] commands, so that only the protocol is under test.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Protocol;

#[cfg(test)]
/// The sequential model of [`Unit`]: nothing to remember, nothing to answer.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UnitModel;

#[cfg(test)]
impl Model for UnitModel {
    type State = ();
    type Input = ();
    type Output = ();

    fn init(&self) {}

    fn step(&self, _: &(), _: &()) -> ((), ()) {
        ((), ())
    }
}

#[cfg(test)]
impl Workload for Protocol {
    type Machine = Unit;
    type Model = UnitModel;

    fn machine(&self) -> Unit {
        Unit
    }

    fn model(&self) -> UnitModel {
        UnitModel
    }

    fn command(&self, _: &mut Gen, _: usize) {}

    fn read(&self, gen: &mut Gen, _: usize) -> Option<()> {
        gen.chance(0.25).then_some(())
    }
}

#[cfg(test)]
impl Sim<Protocol> {
    /// A run of the crate's own workload, with the fault profile adjusted by `tweak`.
    pub(crate) fn protocol(seed: u64, mutation: Mutation, tweak: impl FnOnce(&mut Faults)) -> Self {
        Sim::with_faults(Protocol, seed, mutation, tweak)
    }

    /// A run of the crate's own workload with the fault profile the seed draws.
    pub(crate) fn protocol_default(seed: u64, mutation: Mutation) -> Self {
        Self::protocol(seed, mutation, |_| {})
    }
}

/// What a run found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) tick: u64,
    pub(crate) what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tick {}: {}", self.tick, self.what)
    }
}

/// Counters of a successful run.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) steps: u64,
    pub(crate) ticks: u64,
    pub(crate) delivered: u64,
    pub(crate) crashes: u64,
    pub(crate) elections: u64,
    pub(crate) completed: u64,
    pub(crate) max_slot: Slot,
    pub(crate) snapshots: u64,
    /// Pieces of snapshots sent.
    pub(crate) snapshot_chunks: u64,
    pub(crate) torn_crashes: u64,
    pub(crate) amnesia: u64,
    pub(crate) recoveries: u64,
    pub(crate) pauses: u64,
    /// Requests answered `SessionExpired` (their session evicted or expired).
    pub(crate) expired: u64,
    /// Clock entries chosen (session expiry on).
    pub(crate) clocks: u64,
    /// Slots chosen with a batch of several requests.
    pub(crate) batches: u64,
    /// Reads answered.
    pub(crate) reads: u64,
    /// Of which stale reads (answered by any replica from its own state).
    pub(crate) stale_reads: u64,
    /// Stale reads answered by learners.
    pub(crate) learner_reads: u64,
    /// Slots the learners had executed at the end, and the snapshots they installed.
    pub(crate) learner_executed: u64,
    pub(crate) learner_snapshots: u64,
    /// Members crashed for good at healing.
    pub(crate) lost_for_good: u64,
    /// Checkpoints handed out as jobs to finish off the replica's thread.
    pub(crate) checkpoint_jobs: u64,
    /// Leader transfers asked for.
    pub(crate) transfers: u64,
    /// Membership changes asked for, and the epochs reached (stop-signs chosen).
    pub(crate) reconfigurations: u64,
    pub(crate) epochs: u64,
    /// A digest of every delivery, to show that a seed replays identically.
    pub(crate) trace: u64,
}

enum Envelope {
    Peer {
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Request {
        to: NodeId,
        request: Request,
    },
    Reply {
        from: NodeId,
        reply: Reply,
    },
}

/// A node's storage: [`MemStorage`], which in the seeds with deferred snapshots also
/// takes the relaxation of the [`Storage`] contract that `FileStorage` takes: a
/// checkpoint the stored log already covers becomes durable only at the next `persist`
/// call (a background write), and is lost if the node crashes first.
#[derive(Debug, Default)]
struct SimStorage {
    mem: MemStorage,
    late: bool,
    /// A checkpoint persisted but not durable yet.
    held: Option<crate::Checkpoint>,
    /// The commit point the stored operations record, without the raise of a
    /// checkpoint (durable or held).
    logged_commit: Slot,
    /// Tests only: hold every checkpoint, covered or not (as if installed ones too).
    hold_all: bool,
}

impl SimStorage {
    fn new(late: bool, hold_all: bool) -> Self {
        SimStorage {
            late,
            hold_all,
            ..SimStorage::default()
        }
    }

    /// The durable state.
    fn state(&self) -> &crate::PersistentState {
        self.mem.state()
    }

    /// The node crashed: a checkpoint not yet written is lost.
    fn crash(&mut self) {
        self.held = None;
    }

    fn durable_checkpoint(&self) -> Slot {
        self.mem.state().checkpoint.as_ref().map_or(0, |c| c.slot)
    }

    /// Writes the held checkpoint, if any.
    fn finish(&mut self) -> Result<(), crate::StorageError> {
        if let Some(cp) = self.held.take() {
            self.logged_commit = self.logged_commit.max(cp.slot);
            self.mem.persist(&[PersistOp::Checkpoint(cp)])?;
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    fn load(&mut self) -> Result<crate::PersistentState, crate::StorageError> {
        self.crash();
        self.logged_commit = self.mem.state().commit_point;
        self.mem.load()
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), crate::StorageError> {
        // The background write of the previous round is done by now.
        self.finish()?;
        if !self.late {
            return self.mem.persist(ops);
        }
        let durable = self.durable_checkpoint();
        let max_compact = ops
            .iter()
            .filter_map(|op| match op {
                PersistOp::Compact(b) => Some(*b),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let mut rest = Vec::with_capacity(ops.len());
        let mut late = None;
        let mut commit = self.logged_commit;
        for op in ops {
            match op {
                PersistOp::CommitPoint(c) => {
                    commit = commit.max(*c);
                    rest.push(op.clone());
                }
                PersistOp::Checkpoint(cp) if cp.slot > durable => {
                    late = Some((cp.clone(), commit));
                }
                _ => rest.push(op.clone()),
            }
        }
        self.mem.persist(&rest)?;
        self.logged_commit = commit;
        if let Some((cp, commit_before)) = late {
            let log = &self.mem.state().log;
            let covered = max_compact <= durable
                && cp.slot <= commit_before
                && log.range(durable..cp.slot).count() as u64 == cp.slot - durable;
            if covered || self.hold_all {
                self.held = Some(cp);
            } else {
                self.mem.persist(&[PersistOp::Checkpoint(cp)])?;
            }
        }
        Ok(())
    }
}

/// A node's storage for a run: checkpoints written late in the seeds whose snapshots
/// are deferred too.
fn sim_storage(mutation: Mutation, faults: &Faults) -> SimStorage {
    #[cfg(test)]
    let hold_all = mutation == Mutation::LateInstalledCheckpoint;
    #[cfg(not(test))]
    let hold_all = {
        let _ = mutation;
        false
    };
    SimStorage::new(faults.deferred_snapshots, hold_all)
}

struct Node<M> {
    id: NodeId,
    replica: Option<Replica<Recording<M>>>,
    storage: SimStorage,
    /// Highest promised ballot and commit point this node ever made durable.
    durable_promised: Ballot,
    durable_commit: Slot,
    /// How much of this incarnation's applied history was checked.
    checked: usize,
    /// How many of this incarnation's outputs were compared.
    checked_outputs: usize,
    dirty: bool,
    down_until: u64,
    /// While `now < paused_until` the replica neither ticks nor receives.
    paused_until: u64,
    /// Probability of ticking at each tick of the simulation (clock skew).
    tick_rate: f64,
    /// The replica is recovering from lost storage (counts as faulty until it votes).
    recovering: bool,
    /// A checkpoint being finished off the replica's thread, and the tick it is done.
    checkpoint_jobs: Vec<(u64, crate::CheckpointJob)>,
}

struct SimClient<C> {
    /// Recognises the reply to the registration.
    nonce: ClientId,
    /// The session the cluster assigned (valid once `registered`).
    id: ClientId,
    next_seq: u64,
    /// Requests still to submit (a request whose session expired counts as done: its
    /// outcome is unknown).
    remaining: u64,
    registered: bool,
    outstanding: Option<(u64, u64)>, // (seq, tick sent)
    target: NodeId,
    /// The last answer was a redirect: resend to `target`, it is not a timeout.
    redirected: bool,
    results: HashMap<u64, Bytes>,
    /// The command of the request being sent, by session and request number: a retry
    /// resends it.
    command: Option<((ClientId, u64), C)>,
    /// The read in progress: its nonce and its index in `Sim::reads`.
    read: Option<(ClientId, usize)>,
    /// The executed slot of the newest stale read answer: the floor of the next one.
    stale_floor: Slot,
    /// When the registration of the current session was first sent.
    registered_at: u64,
}

/// One read as its client saw it.
#[derive(Clone, Debug)]
pub(crate) struct ReadOp<C, O> {
    nonce: ClientId,
    /// When it was first sent.
    call: u64,
    /// When the answer came.
    ret: Option<u64>,
    command: C,
    /// The answer: how many commands the state had executed, and the output.
    seen: Option<(u64, O)>,
    /// A [stale read](Request::stale_read) with this floor, from this client (index):
    /// not linearizable, but a prefix of the log and never older than the client's
    /// previous stale answer.
    stale: Option<(Slot, usize)>,
}

/// One client request as the client saw it, for the real-time order check.
#[derive(Clone, Copy, Debug)]
struct ClientOp {
    call: u64,
    /// When the client got its answer; `None` while pending or when the outcome is
    /// unknown (session expired).
    ret: Option<u64>,
    /// The position the reply reported.
    pos: Option<u64>,
}

pub(crate) struct Sim<W: Workload> {
    seed: u64,
    rng: ChaCha8Rng,
    /// The workload's own randomness (commands), apart from the adversary's, so that a
    /// workload drawing nothing leaves the adversary's choices as they were.
    gen: Gen,
    workload: W,
    faults: Faults,
    nodes: Vec<Node<W::Machine>>,
    members: Vec<NodeId>,
    /// The learners' ids (after the members'; none unless the profile asks).
    learners: Vec<NodeId>,
    /// Members crashed for good at healing (`Faults::lose_leader_at_heal`).
    lost: Vec<NodeId>,
    quorum: usize,
    /// The members of each epoch, from the stop-signs chosen in slot order (the
    /// founding members first); `members` and `quorum` are the latest's.
    epochs: Vec<Vec<NodeId>>,
    /// The membership last asked for, until a stop-sign is chosen.
    asked_members: Option<Vec<NodeId>>,
    /// The slot of the stop-sign that ended each epoch.
    stop_signs: Vec<Slot>,
    /// The slots the scan for stop-signs has passed (every one chosen).
    epochs_scanned: Slot,
    /// The epoch of the ballot each slot was chosen at by an accept quorum.
    chosen_epoch: HashMap<Slot, u64>,
    network: Vec<(u64, Envelope)>,
    blocked: HashSet<(NodeId, NodeId)>,
    /// Selective loss: message kinds dropped on which directed links, and how often.
    lossy: HashSet<(NodeId, NodeId, &'static str)>,
    /// Message kinds that cross the current partition (a partial partition).
    leaky: HashSet<&'static str>,
    clients: Vec<SimClient<Cmd<W>>>,
    now: u64,
    stats: Stats,
    next_client: ClientId,
    // Checker state.
    /// Per (slot, ballot): the value proposed, and who vouched for it (the proposer by
    /// storing it, acceptors by sending ACCEPTED).
    accepts: HashMap<(Slot, Ballot), (Value, HashSet<NodeId>)>,
    chosen: BTreeMap<Slot, Value>,
    history: Vec<(ClientId, u64)>,
    history_pos: HashMap<(ClientId, u64), usize>,
    /// The encoded output of the command at each position, as the first replica to
    /// apply it computed it.
    outputs_at: HashMap<u64, (NodeId, Vec<u8>)>,
    /// The ballots whose NEW-VIEW went out (leaderships).
    views: HashSet<Ballot>,
    ops: HashMap<(ClientId, u64), ClientOp>,
    /// Every command a client sent, and the output each completed request returned:
    /// the workload's model replays the executed order against them.
    commands: HashMap<(ClientId, u64), Cmd<W>>,
    outputs: HashMap<(ClientId, u64), Out<W>>,
    /// Every read, and the last read nonce used.
    reads: Vec<ReadOp<Cmd<W>, Out<W>>>,
    next_read: ClientId,
    /// How many commands a replica's state machine had applied when it had executed
    /// the slots below each slot seen (the same for every replica): what a stale read
    /// answered at that slot must report.
    applied_at: HashMap<Slot, u64>,
    /// Liveness during faults: since when a majority has been up and connected.
    good_since: Option<(u64, Vec<NodeId>)>,
    last_completion: u64,
    mutation: Mutation,
}

/// The workload's command and output types.
pub(crate) type Cmd<W> = <<W as Workload>::Machine as StateMachine>::Command;
pub(crate) type Out<W> = <<W as Workload>::Machine as StateMachine>::Output;

/// The message kinds the adversarial network treats differently.
const KINDS: [&str; 9] = [
    "accept",
    "accepted",
    "nack",
    "heartbeat",
    "new-view",
    "promise",
    "prepare",
    "fetch",
    "fetch-reply",
];

/// Model steps the WGL search of one run may take.
const MODEL_CHECK_BUDGET: u64 = 200_000;

/// A majority that stays up, unpaused and connected this long must complete requests.
const LIVENESS_WINDOW: u64 = 1_000;

impl<W: Workload> Sim<W> {
    /// A run of `seed`, with the drawn fault profile adjusted by `tweak` (to weight
    /// a run towards one class of faults).
    pub(crate) fn with_faults(
        workload: W,
        seed: u64,
        mutation: Mutation,
        tweak: impl FnOnce(&mut Faults),
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut faults = Faults::draw(&mut rng);
        // From the seed, not the generator: a draw here would change every seed's run.
        faults.checkpoint_slots_per_session = u64::from(seed.is_multiple_of(5));
        faults.deferred_snapshots = seed.is_multiple_of(2);
        faults.stale_reads = seed % 4 == 2;
        faults.requests_per_slot = if seed % 3 == 1 {
            2 + (seed / 3 % 7) as usize
        } else {
            1
        };
        if faults.requests_per_slot > 1 {
            // Enough clients at once for batches to form.
            faults.clients = faults.clients.max(3);
        }
        tweak(&mut faults);
        let members: Vec<NodeId> = (1..=faults.nodes as u64).collect();
        let learners: Vec<NodeId> = (1..=faults.learners as u64)
            .map(|k| faults.nodes as u64 + k)
            .collect();
        let nodes = members
            .iter()
            .chain(&learners)
            .map(|&id| {
                let storage = sim_storage(mutation, &faults);
                // Every replica starts without state: the cluster founds itself.
                let replica = Replica::new(
                    Self::config(id, &members, seed, mutation, &faults),
                    Recording::new(workload.machine()).deferred(faults.deferred_snapshots),
                    crate::PersistentState::default(),
                )
                .expect("valid config");
                let tick_rate = if faults.skew {
                    0.5 + unit(&mut rng) * 0.5
                } else {
                    1.0
                };
                Node {
                    id,
                    replica: Some(replica),
                    storage,
                    durable_promised: Ballot::ZERO,
                    durable_commit: 0,
                    checked: 0,
                    checked_outputs: 0,
                    dirty: true,
                    down_until: 0,
                    paused_until: 0,
                    tick_rate,
                    recovering: false,
                    checkpoint_jobs: Vec::new(),
                }
            })
            .collect();
        let clients = (0..faults.clients)
            .map(|i| SimClient {
                nonce: 1000 + i as u64,
                id: 0,
                next_seq: 1,
                remaining: faults.requests_per_client,
                registered: false,
                outstanding: None,
                target: members[i % members.len()],
                redirected: false,
                results: HashMap::new(),
                command: None,
                read: None,
                stale_floor: 0,
                registered_at: 0,
            })
            .collect();
        let quorum = faults.nodes / 2 + 1;
        let next_client = 1000 + faults.clients as u64;
        Sim {
            seed,
            rng,
            gen: Gen::new(seed ^ 0x6f72_6b6c_6f61_6400),
            workload,
            faults,
            nodes,
            epochs: vec![members.clone()],
            stop_signs: Vec::new(),
            asked_members: None,
            epochs_scanned: 0,
            chosen_epoch: HashMap::new(),
            members,
            learners,
            lost: Vec::new(),
            quorum,
            network: Vec::new(),
            blocked: HashSet::new(),
            lossy: HashSet::new(),
            leaky: HashSet::new(),
            clients,
            now: 0,
            stats: Stats::default(),
            next_client,
            accepts: HashMap::new(),
            chosen: BTreeMap::new(),
            history: Vec::new(),
            history_pos: HashMap::new(),
            outputs_at: HashMap::new(),
            views: HashSet::new(),
            ops: HashMap::new(),
            commands: HashMap::new(),
            outputs: HashMap::new(),
            reads: Vec::new(),
            applied_at: HashMap::new(),
            // Far from registration nonces and session ids.
            next_read: 1 << 62,
            good_since: None,
            last_completion: 0,
            mutation,
        }
    }

    fn config(
        id: NodeId,
        members: &[NodeId],
        seed: u64,
        mutation: Mutation,
        faults: &Faults,
    ) -> Config {
        let mut cfg = Config::new(id, members.to_vec());
        cfg.learner = !members.contains(&id);
        cfg.checkpoint_interval = faults.checkpoint_interval;
        cfg.checkpoint_slots_per_session = faults.checkpoint_slots_per_session;
        cfg.seed = seed.wrapping_mul(31).wrapping_add(id);
        cfg.heartbeat_ticks = 2;
        cfg.election_ticks = 10;
        cfg.retransmit_ticks = 4;
        cfg.max_inflight = 8;
        cfg.max_batch = 4;
        cfg.max_requests_per_slot = faults.requests_per_slot;
        cfg.hold_partial_slots = faults.hold_partial_slots;
        cfg.max_message_bytes = faults.max_message_bytes;
        cfg.max_sessions = faults.max_sessions;
        cfg.session_ttl_ticks = faults.session_ttl;
        cfg.session_clock_ticks = faults.session_clock;
        // Checkpoints here are tens to hundreds of bytes: pieces of 8 to 32 bytes make every
        // state transfer take several round trips, which the network's loss,
        // duplication and reordering then interrupt (drawn from the seed, not from the
        // fault generator, so that a seed's faults stay what they were).
        cfg.snapshot_chunk_bytes = 8 << (seed % 3);
        #[cfg(test)]
        {
            cfg.mutation = mutation;
        }
        #[cfg(not(test))]
        let _ = mutation;
        cfg
    }

    /// With expiry on, every session idles once the clients are done: the healed
    /// cluster must drop them all, on every replica, within the time-to-live plus a
    /// few clock periods of its leaders' clocks (generously counted: skewed replicas
    /// tick at half the rate at worst, and a leader may change meanwhile). A leader
    /// whose clock entries stopped counting (say, clock steps that no longer chain
    /// onto the log) keeps idle sessions forever: caught here.
    fn check_sessions_expire(&mut self) -> Result<(), Violation> {
        let bound = 2 * (self.faults.session_ttl + 4 * self.faults.session_clock) + 200;
        let until = self.now + bound;
        while self.now < until {
            self.now += 1;
            self.stats.ticks = self.now;
            self.tick_nodes()?;
            self.deliver()?;
            self.flush_all()?;
            self.drive_clients();
            self.check_progress()?;
            let live: usize = self
                .nodes
                .iter()
                .filter_map(|n| n.replica.as_ref())
                .map(|r| r.sessions().len())
                .sum();
            if live == 0 {
                return Ok(());
            }
        }
        let left: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref().map(|r| (n.id, r)))
            .map(|(id, r)| {
                format!(
                    "n{id}: {} sessions at log time {}",
                    r.sessions().len(),
                    r.sessions().log_time()
                )
            })
            .collect();
        Err(self.violation(format!(
            "liveness: idle sessions not expired {bound} ticks after the clients finished: {}",
            left.join(", ")
        )))
    }

    /// How many replicas this run has.
    pub(crate) fn replicas(&self) -> usize {
        self.nodes.len()
    }

    /// Runs the whole scenario: faults, then healing, then the liveness bound.
    pub(crate) fn run(mut self) -> Result<Stats, Violation> {
        let heal_at = self.faults.fault_ticks;
        let deadline = heal_at + 2_000;
        loop {
            self.now += 1;
            self.stats.ticks = self.now;
            if self.now < heal_at {
                self.inject_faults()?;
            } else if self.now == heal_at {
                self.heal()?;
            } else {
                self.maybe_lose_leader();
            }
            self.tick_nodes()?;
            self.deliver()?;
            self.flush_all()?;
            self.drive_clients();
            self.check_progress()?;
            // Done when every request completed, every replica votes again (a
            // replica stuck founding or recovering is a liveness failure too) and has
            // caught up with the highest commit point (by fetching or by state
            // transfer: a replica stuck behind is a liveness failure even while the
            // others serve).
            if self.now > heal_at
                && self.clients.iter().all(|c| c.remaining == 0)
                && self.faulty() == 0
                && self.lagging().is_empty()
            {
                break;
            }
            if self.now > deadline {
                let mut pending: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|c| c.remaining > 0)
                    .map(|c| format!("c{} at #{} (registered {})", c.id, c.next_seq, c.registered))
                    .collect();
                for n in &self.nodes {
                    if let Some(r) = &n.replica {
                        if r.acceptor_status() != AcceptorStatus::Voter
                            && !self.learners.contains(&n.id)
                        {
                            pending.push(format!("n{} still {:?}", n.id, r.acceptor_status()));
                        }
                    }
                }
                pending.extend(self.lagging());
                pending.push(self.describe_nodes());
                return Err(self.violation(format!(
                    "liveness: requests still pending {} ticks after healing: {}",
                    deadline - heal_at,
                    pending.join(", ")
                )));
            }
        }
        if self.faults.session_ttl > 0 {
            self.check_sessions_expire()?;
        }
        self.stats.max_slot = self.chosen.keys().next_back().map_or(0, |s| s + 1);
        self.stats.clocks = self
            .chosen
            .values()
            .filter(|v| matches!(v, Value::Clock { .. } | Value::ClockStep { .. }))
            .count() as u64;
        self.stats.batches = self
            .chosen
            .values()
            .filter(|v| matches!(v, Value::Batch(_)))
            .count() as u64;
        for n in &self.nodes {
            if let (true, Some(r)) = (self.learners.contains(&n.id), &n.replica) {
                self.stats.learner_executed += r.executed();
                self.stats.learner_snapshots += r.counters().snapshots_installed;
            }
        }
        self.check_real_time_order()?;
        self.check_model()?;
        self.check_reads()?;
        Ok(self.stats)
    }

    /// The replicas that are up but behind the highest commit point of the cluster.
    fn lagging(&self) -> Vec<String> {
        let up = || {
            self.nodes
                .iter()
                .filter_map(|n| Some((n.id, n.replica.as_ref()?)))
        };
        let highest = up().map(|(_, r)| r.commit_point()).max().unwrap_or(0);
        up().filter(|(_, r)| r.commit_point() < highest)
            .map(|(id, r)| {
                format!(
                    "n{id} behind at commit point {} of {highest}",
                    r.commit_point()
                )
            })
            .collect()
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            tick: self.now,
            what,
        }
    }

    // ------------------------------------------------------------------ stepping

    fn tick_nodes(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused_until > self.now {
                continue;
            }
            let rate = self.nodes[i].tick_rate;
            if rate < 1.0 && !chance(&mut self.rng, rate) {
                continue;
            }
            // Checkpoint jobs done by now come back, in whatever order they finish.
            let now = self.now;
            let node = &mut self.nodes[i];
            if let Some(r) = node.replica.as_mut() {
                let mut k = 0;
                while k < node.checkpoint_jobs.len() {
                    if node.checkpoint_jobs[k].0 <= now {
                        let (_, job) = node.checkpoint_jobs.swap_remove(k);
                        r.checkpoint_finished(job.run());
                        node.dirty = true;
                    } else {
                        k += 1;
                    }
                }
            }
            if let Some(r) = self.nodes[i].replica.as_mut() {
                r.tick();
                self.nodes[i].dirty = true;
                self.stats.steps += 1;
                self.after_input(i)?;
            }
        }
        Ok(())
    }

    fn deliver(&mut self) -> Result<(), Violation> {
        let now = self.now;
        let mut due = Vec::new();
        let mut later = Vec::with_capacity(self.network.len());
        for (at, env) in self.network.drain(..) {
            if at <= now {
                due.push(env);
            } else {
                later.push((at, env));
            }
        }
        self.network = later;
        // Shuffle: reordering among messages due at the same tick.
        for i in (1..due.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            due.swap(i, j);
        }
        for env in due {
            // A paused replica receives nothing: its inbound waits until it resumes.
            let held = match &env {
                Envelope::Peer { to, .. } | Envelope::Request { to, .. } => self
                    .index(*to)
                    .map(|i| self.nodes[i].paused_until)
                    .filter(|until| *until > self.now),
                Envelope::Reply { .. } => None,
            };
            if let Some(until) = held {
                self.network.push((until, env));
                continue;
            }
            self.stats.delivered += 1;
            self.stats.trace = trace_mix(self.stats.trace, self.now, &env);
            match env {
                Envelope::Peer { from, to, message } => {
                    if self.blocked.contains(&(from, to)) && !self.leaky.contains(message.kind()) {
                        continue;
                    }
                    let Some(i) = self.index(to) else { continue };
                    let Some(r) = self.nodes[i].replica.as_mut() else {
                        continue;
                    };
                    r.handle_message(from, message);
                    self.nodes[i].dirty = true;
                    self.stats.steps += 1;
                    self.after_input(i)?;
                }
                Envelope::Request { to, request } => {
                    let Some(i) = self.index(to) else { continue };
                    let Some(r) = self.nodes[i].replica.as_mut() else {
                        continue;
                    };
                    r.handle_request(request);
                    self.nodes[i].dirty = true;
                    self.stats.steps += 1;
                    if self.faults.requests_per_slot > 1 && chance(&mut self.rng, 0.8) {
                        // Most requests wait for the end of the tick, with whatever
                        // else arrives meanwhile, as a driver folding many requests
                        // into one round does: the leader packs them into batches.
                        self.check_node(i)?;
                    } else {
                        self.after_input(i)?;
                    }
                }
                Envelope::Reply { from, reply } => self.client_reply(from, reply)?,
            }
        }
        Ok(())
    }

    /// After an input, either handle the node's outputs now or (batching) leave them to
    /// accumulate until the end of the tick.
    fn after_input(&mut self, i: usize) -> Result<(), Violation> {
        if self.faults.crashes
            && self.faults.batch_inputs
            && self.now < self.faults.fault_ticks
            && self.faulty() < (self.faults.nodes - 1) / 2
            && chance(&mut self.rng, self.faults.torn_crash)
        {
            // Crash in the middle of a round: only a prefix of its writes reached the
            // disk (the last one may be torn, i.e. lost), and only what waits for no
            // write was sent.
            return self.crash_mid_round(i);
        }
        if !self.faults.batch_inputs || chance(&mut self.rng, 0.5) {
            self.flush(i)?;
        }
        self.check_node(i)
    }

    fn crash_mid_round(&mut self, i: usize) -> Result<(), Violation> {
        // What it executed in memory counts: its early replies may tell of it.
        self.check_node(i)?;
        let Some(mut r) = self.nodes[i].replica.take() else {
            return Ok(());
        };
        self.nodes[i].checkpoint_jobs.clear();
        let mut ready = r.take_ready();
        let id = self.nodes[i].id;
        // What waits for nothing left before the crash, as the drive loop sends it.
        let now = std::mem::take(&mut ready.messages_now);
        let replies_now = std::mem::take(&mut ready.replies_now);
        self.emit(id, now, replies_now)?;
        let keep = (self.rng.next_u64() % (ready.persist.len() as u64 + 1)) as usize;
        let durable = &ready.persist[..keep];
        self.nodes[i]
            .storage
            .persist(durable)
            .map_err(|e| self.violation(e.to_string()))?;
        for op in durable {
            self.observe_persist(id, op)?;
        }
        self.nodes[i].storage.crash();
        self.nodes[i].dirty = false;
        self.nodes[i].down_until = self.now + 20 + self.rng.next_u64() % self.faults.downtime;
        self.stats.crashes += 1;
        self.stats.torn_crashes += 1;
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            self.flush(i)?;
            self.check_node(i)?;
        }
        Ok(())
    }

    /// Persist, then send, then reply, through the drive loop the node driver uses
    /// ([`Ready::deliver`](crate::Ready::deliver)).
    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].dirty {
            return Ok(());
        }
        self.nodes[i].dirty = false;
        let node = &mut self.nodes[i];
        let id = node.id;
        let Some(r) = node.replica.as_mut() else {
            return Ok(());
        };
        let storage = &mut node.storage;
        let (mut persisted, mut messages, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        let mut ready = r.take_ready();
        for job in std::mem::take(&mut ready.checkpoint_jobs) {
            let at = self.now + self.rng.next_u64() % 41;
            node.checkpoint_jobs.push((at, job));
            self.stats.checkpoint_jobs += 1;
        }
        ready
            .deliver(
                |ops| {
                    storage.persist(&ops)?;
                    persisted = ops;
                    Ok(())
                },
                |to, message| messages.push((to, message)),
                |reply| replies.push(reply),
            )
            .map_err(|e: crate::StorageError| Violation {
                tick: self.now,
                what: e.to_string(),
            })?;
        for op in &persisted {
            self.observe_persist(id, op)?;
        }
        // What is now durable may never be lost, whatever happens next.
        let node = &mut self.nodes[i];
        let stored = node.storage.state();
        node.durable_promised = node.durable_promised.max(stored.promised);
        node.durable_commit = node.durable_commit.max(stored.commit_point);
        if node.recovering && stored.status == AcceptorStatus::Voter {
            node.recovering = false;
            self.stats.recoveries += 1;
        }
        self.emit(id, messages, replies)
    }

    /// Puts a node's messages and replies on the network, noting what they vouch for.
    fn emit(
        &mut self,
        id: NodeId,
        messages: Vec<(NodeId, Message)>,
        replies: Vec<Reply>,
    ) -> Result<(), Violation> {
        for (to, message) in messages {
            if let Message::Accepted { ballot, slots, .. } = &message {
                // An ACCEPTED vouches for the proposal at that ballot: the sender holds
                // it durably (accepted there at that ballot or a later one, or known
                // chosen, or covered by its stored checkpoint), or a crash could lose a
                // vote that counted.
                self.check_vouched(id, *ballot, slots)?;
                for s in slots {
                    self.vote(id, *s, *ballot)?;
                }
            }
            if let Message::Promise { ballot, .. } = &message {
                // A PROMISE vouches for the promise: the sender durably promised that
                // ballot or a later one, or a crash could take back a promise a
                // candidate counted (the check at restart sees that only after a
                // crash that happens to expose it).
                self.check_promised(id, *ballot)?;
            }
            if let Message::NewView { ballot, .. } = &message {
                // One per leadership, not one per follower it is sent to.
                if self.views.insert(*ballot) {
                    self.stats.elections += 1;
                }
            }
            if matches!(
                message,
                Message::Snapshot { .. } | Message::SnapshotChunk { offset: 0, .. }
            ) {
                self.stats.snapshots += 1;
            }
            if matches!(message, Message::SnapshotChunk { .. }) {
                self.stats.snapshot_chunks += 1;
            }
            self.send(Envelope::Peer {
                from: id,
                to,
                message,
            });
        }
        for reply in replies {
            self.send(Envelope::Reply { from: id, reply });
        }
        Ok(())
    }

    /// `id`'s storage durably holds an accept at `ballot` or later (or a chosen
    /// value, or a checkpoint past it) in each of `slots`.
    fn check_vouched(&self, id: NodeId, ballot: Ballot, slots: &[Slot]) -> Result<(), Violation> {
        let Some(node) = self.nodes.iter().find(|n| n.id == id) else {
            return Ok(());
        };
        let stored = node.storage.state();
        let below = stored
            .checkpoint
            .as_ref()
            .map_or(0, |c| c.slot)
            .max(stored.commit_point);
        for &slot in slots {
            let held = slot < below
                || stored
                    .log
                    .get(slot)
                    .is_some_and(|e| e.chosen || e.ballot >= ballot);
            // An acceptor acknowledges a slot it knows decided (from a commit point it
            // may not have written yet): a vote for the chosen value (the agreement
            // check sees to that), which no crash can un-choose.
            if !held && !self.chosen.contains_key(&slot) {
                return Err(self.violation(format!(
                    "node {id} sent ACCEPTED for slot {slot} at {ballot} without holding it durably"
                )));
            }
        }
        Ok(())
    }

    /// Fails unless `id`'s storage holds a promise of `ballot` or a later one.
    fn check_promised(&self, id: NodeId, ballot: Ballot) -> Result<(), Violation> {
        let Some(node) = self.nodes.iter().find(|n| n.id == id) else {
            return Ok(());
        };
        let stored = node.storage.state().promised;
        if stored < ballot {
            return Err(self.violation(format!(
                "node {id} sent PROMISE for {ballot} while its storage holds a promise of {stored} only"
            )));
        }
        Ok(())
    }

    fn send(&mut self, env: Envelope) {
        if chance(&mut self.rng, self.faults.loss) {
            return;
        }
        if let Envelope::Peer { from, to, message } = &env {
            if self.lossy.contains(&(*from, *to, message.kind())) && chance(&mut self.rng, 0.9) {
                return;
            }
        }
        if chance(&mut self.rng, self.faults.duplicate) {
            let delay = self.delay();
            self.network.push((self.now + delay, duplicate(&env)));
        }
        let delay = self.delay();
        self.network.push((self.now + delay, env));
    }

    fn delay(&mut self) -> u64 {
        if chance(&mut self.rng, self.faults.long_delay) {
            // Now and then long enough to reach a replica's next life (downtimes are
            // 20..220 ticks): answers meant for a life that lost its state.
            if chance(&mut self.rng, 0.1) {
                return 1 + self.rng.next_u64() % 400;
            }
            return 1 + self.rng.next_u64() % 60;
        }
        1 + if self.faults.max_delay > 0 {
            self.rng.next_u64() % self.faults.max_delay
        } else {
            0
        }
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }
}

fn trace_mix(h: u64, now: u64, env: &Envelope) -> u64 {
    let (a, b, c) = match env {
        Envelope::Peer { from, to, message } => (*from, *to, message.kind().len() as u64),
        Envelope::Request { to, request } => (*to, request.client, request.seq),
        Envelope::Reply { from, reply } => (*from, reply.client, reply.seq),
    };
    let mut x = h ^ now.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for v in [a, b, c] {
        x = (x ^ v).wrapping_mul(0x100_0000_01B3).rotate_left(17);
    }
    x
}

fn duplicate(env: &Envelope) -> Envelope {
    match env {
        Envelope::Peer { from, to, message } => Envelope::Peer {
            from: *from,
            to: *to,
            message: message.clone(),
        },
        Envelope::Request { to, request } => Envelope::Request {
            to: *to,
            request: request.clone(),
        },
        Envelope::Reply { from, reply } => Envelope::Reply {
            from: *from,
            reply: reply.clone(),
        },
    }
}

#[cfg(test)]
/// Runs `seeds` from the environment (`PAXOS_SIM_SEED` = one, `PAXOS_SIM_SEEDS` = how many).
pub(crate) fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("PAXOS_SIM_SEED") {
        if let Ok(s) = s.parse() {
            return vec![s];
        }
    }
    let n = std::env::var("PAXOS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}
