//! Deterministic simulation of whole clusters of the real [`Replica`], with a seeded
//! network and clock, and invariant checks after every step.
//!
//! `PAXOS_SIM_SEEDS=N cargo test --release -p paxos-core sim` runs N seeds;
//! `PAXOS_SIM_SEED=S` replays one seed exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::linearizability::{AppendLog, Operation};
use crate::mutation::Mutation;
use crate::{
    AcceptorStatus, Ballot, ClientId, Config, MemStorage, Message, NodeId, PersistOp, Replica,
    Reply, Request, Response, RestoreError, Slot, StateMachine, Storage, Value,
};

/// A state machine that records every command it applies, so the checker can compare
/// executed histories. Its output is the command's position in the history.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) applied: Vec<(ClientId, u64)>,
}

impl StateMachine for Recorder {
    type Command = (ClientId, u64);
    type Output = u64;

    fn apply(&mut self, command: (ClientId, u64)) -> u64 {
        self.applied.push(command);
        self.applied.len() as u64 - 1
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.applied).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.applied =
            postcard::from_bytes(snapshot).map_err(|e| RestoreError::new(e.to_string()))?;
        Ok(())
    }
}

/// The fault profile of one seed, drawn at random (swarm testing: each seed enables a
/// different mix of faults).
#[derive(Clone, Debug)]
pub(crate) struct Faults {
    pub(crate) nodes: usize,
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) max_delay: u64,
    /// Fraction of messages held back for up to a few election timeouts (stale traffic).
    pub(crate) long_delay: f64,
    pub(crate) partitions: bool,
    pub(crate) one_way: bool,
    pub(crate) crashes: bool,
    pub(crate) fault_ticks: u64,
    pub(crate) clients: usize,
    pub(crate) requests_per_client: u64,
    pub(crate) batch_inputs: bool,
    /// Slots between checkpoints (0: never), small so that compaction and state
    /// transfer happen within a run.
    pub(crate) checkpoint_interval: u64,
    /// Some restarts lose the replica's storage (amnesia), for at most `f` replicas at
    /// a time counting the crashed and the still-recovering ones.
    pub(crate) amnesia: bool,
    /// Replicas are paused for long stretches (no ticks, inbound held back), then
    /// resume with stale beliefs and a burst of old messages.
    pub(crate) pauses: bool,
    /// Each replica ticks with its own probability: clocks that run at different rates.
    pub(crate) skew: bool,
    /// Sessions the replicas keep; below the number of clients, sessions get evicted
    /// and clients see their requests expire.
    pub(crate) max_sessions: usize,
    /// An adversarial network that loses some kinds of messages on some links much more
    /// than others (say, ACCEPTs and NACKs but not FETCHes), redrawn from time to time.
    pub(crate) selective: bool,
    /// Crashed replicas stay down for 20 to 20 + `downtime` ticks.
    pub(crate) downtime: u64,
}

impl Faults {
    fn draw(rng: &mut ChaCha8Rng) -> Self {
        let nodes = if rng.next_u64().is_multiple_of(2) {
            3
        } else {
            5
        };
        Faults {
            nodes,
            loss: if chance(rng, 0.8) {
                unit(rng) * 0.3
            } else {
                0.0
            },
            duplicate: if chance(rng, 0.5) {
                unit(rng) * 0.2
            } else {
                0.0
            },
            max_delay: if chance(rng, 0.7) {
                rng.next_u64() % 12
            } else {
                0
            },
            long_delay: if chance(rng, 0.5) {
                unit(rng) * 0.05
            } else {
                0.0
            },
            partitions: chance(rng, 0.6),
            one_way: chance(rng, 0.4),
            crashes: chance(rng, 0.7),
            fault_ticks: 300 + rng.next_u64() % 1200,
            clients: 1 + (rng.next_u64() % 5) as usize,
            requests_per_client: 3 + rng.next_u64() % 20,
            batch_inputs: chance(rng, 0.5),
            checkpoint_interval: if chance(rng, 0.7) {
                2 + rng.next_u64() % 30
            } else {
                0
            },
            amnesia: chance(rng, 0.3),
            pauses: chance(rng, 0.3),
            skew: chance(rng, 0.3),
            max_sessions: 1024,
            selective: chance(rng, 0.3),
            downtime: 200,
        }
        .with_eviction(rng)
    }

    fn with_eviction(mut self, rng: &mut ChaCha8Rng) -> Self {
        if chance(rng, 0.25) {
            self.clients = self.clients.max(3);
            self.max_sessions = self.clients - 1;
        }
        self
    }
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    unit(rng) < p
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
    pub(crate) torn_crashes: u64,
    pub(crate) amnesia: u64,
    pub(crate) recoveries: u64,
    pub(crate) pauses: u64,
    pub(crate) expired: u64,
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

struct Node {
    id: NodeId,
    replica: Option<Replica<Recorder>>,
    storage: MemStorage,
    /// Highest promised ballot and commit point this node ever made durable.
    durable_promised: Ballot,
    durable_commit: Slot,
    /// How much of this incarnation's applied history was checked.
    checked: usize,
    dirty: bool,
    down_until: u64,
    /// While `now < paused_until` the replica neither ticks nor receives.
    paused_until: u64,
    /// Probability of ticking at each tick of the simulation (clock skew).
    tick_rate: f64,
    /// The replica is recovering from lost storage (counts as faulty until it votes).
    recovering: bool,
}

struct SimClient {
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

pub(crate) struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    faults: Faults,
    nodes: Vec<Node>,
    members: Vec<NodeId>,
    quorum: usize,
    network: Vec<(u64, Envelope)>,
    blocked: HashSet<(NodeId, NodeId)>,
    /// Selective loss: message kinds dropped on which directed links, and how often.
    lossy: HashSet<(NodeId, NodeId, &'static str)>,
    /// Message kinds that cross the current partition (a partial partition).
    leaky: HashSet<&'static str>,
    clients: Vec<SimClient>,
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
    ops: HashMap<(ClientId, u64), ClientOp>,
    /// Liveness during faults: since when a majority has been up and connected.
    good_since: Option<(u64, Vec<NodeId>)>,
    last_completion: u64,
    mutation: Mutation,
}

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

/// A majority that stays up, unpaused and connected this long must complete requests.
const LIVENESS_WINDOW: u64 = 1_000;

impl Sim {
    pub(crate) fn new(seed: u64, mutation: Mutation) -> Self {
        Self::with_faults(seed, mutation, |_| {})
    }

    /// Like [`Sim::new`], with the drawn fault profile adjusted by `tweak` (to weight
    /// a run towards one class of faults).
    pub(crate) fn with_faults(
        seed: u64,
        mutation: Mutation,
        tweak: impl FnOnce(&mut Faults),
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut faults = Faults::draw(&mut rng);
        tweak(&mut faults);
        let members: Vec<NodeId> = (1..=faults.nodes as u64).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let storage = MemStorage::new();
                // Every replica starts without state: the cluster founds itself.
                let replica = Replica::new(
                    Self::config(id, &members, seed, mutation, &faults),
                    Recorder::default(),
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
                    dirty: true,
                    down_until: 0,
                    paused_until: 0,
                    tick_rate,
                    recovering: false,
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
            })
            .collect();
        let quorum = faults.nodes / 2 + 1;
        let next_client = 1000 + faults.clients as u64;
        Sim {
            seed,
            rng,
            faults,
            nodes,
            members,
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
            ops: HashMap::new(),
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
        cfg.checkpoint_interval = faults.checkpoint_interval;
        cfg.seed = seed.wrapping_mul(31).wrapping_add(id);
        cfg.heartbeat_ticks = 2;
        cfg.election_ticks = 10;
        cfg.retransmit_ticks = 4;
        cfg.max_inflight = 8;
        cfg.max_batch = 4;
        cfg.max_sessions = faults.max_sessions;
        cfg.mutation = mutation;
        cfg
    }

    /// Runs the whole scenario: faults, then healing, then the liveness bound.
    pub(crate) fn run(mut self) -> Result<Stats, Violation> {
        let heal_at = self.faults.fault_ticks;
        let deadline = heal_at + 2_000;
        loop {
            self.now += 1;
            self.stats.ticks = self.now;
            if self.now < heal_at {
                self.inject_faults();
            } else if self.now == heal_at {
                self.heal();
            }
            self.tick_nodes()?;
            self.deliver()?;
            self.flush_all()?;
            self.drive_clients();
            self.check_progress()?;
            // Done when every request completed and every replica votes again (a
            // replica stuck founding or recovering is a liveness failure too).
            if self.now > heal_at
                && self.clients.iter().all(|c| c.remaining == 0)
                && self.faulty() == 0
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
                        if r.acceptor_status() != AcceptorStatus::Voter {
                            pending.push(format!("n{} still {:?}", n.id, r.acceptor_status()));
                        }
                    }
                }
                pending.push(self.describe_nodes());
                return Err(self.violation(format!(
                    "liveness: requests still pending {} ticks after healing: {}",
                    deadline - heal_at,
                    pending.join(", ")
                )));
            }
        }
        self.stats.max_slot = self.chosen.keys().next_back().map_or(0, |s| s + 1);
        self.check_real_time_order()?;
        Ok(self.stats)
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            tick: self.now,
            what,
        }
    }

    // ------------------------------------------------------------------ faults

    /// Replicas that count against the fault bound: crashed, or recovering from lost
    /// storage (and the replicas still founding the cluster, at the start).
    fn faulty(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                n.recovering
                    || n.replica
                        .as_ref()
                        .is_none_or(|r| r.acceptor_status() != AcceptorStatus::Voter)
            })
            .count()
    }

    fn inject_faults(&mut self) {
        let f = (self.faults.nodes - 1) / 2;
        if self.faults.pauses && chance(&mut self.rng, 0.003) {
            let i = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
            if self.nodes[i].paused_until <= self.now {
                self.nodes[i].paused_until = self.now + 40 + self.rng.next_u64() % 300;
                self.stats.pauses += 1;
            }
        }
        if self.faults.crashes {
            // Restart nodes whose downtime is over; some come back without their
            // storage, within the fault bound (they stay faulty until recovered).
            for i in 0..self.nodes.len() {
                if self.nodes[i].replica.is_none() && self.now >= self.nodes[i].down_until {
                    let wipe = self.faults.amnesia && chance(&mut self.rng, 0.4);
                    if wipe {
                        self.wipe(i);
                    }
                    self.restart(i);
                }
            }
            let down = self.faulty();
            if down < f && chance(&mut self.rng, 0.004) {
                let i = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
                if self.nodes[i].replica.is_some() {
                    self.nodes[i].replica = None;
                    self.nodes[i].down_until =
                        self.now + 20 + self.rng.next_u64() % self.faults.downtime;
                    self.stats.crashes += 1;
                }
            }
        }
        if self.faults.selective && chance(&mut self.rng, 0.01) {
            self.lossy.clear();
            self.leaky.clear();
            for k in KINDS {
                if chance(&mut self.rng, 0.3) {
                    self.leaky.insert(k);
                }
            }
            for &a in &self.members {
                for &b in &self.members {
                    if a == b || !chance(&mut self.rng, 0.5) {
                        continue;
                    }
                    for k in KINDS {
                        if chance(&mut self.rng, 0.4) {
                            self.lossy.insert((a, b, k));
                        }
                    }
                }
            }
        }
        if self.faults.partitions && chance(&mut self.rng, 0.006) {
            self.blocked.clear();
            if chance(&mut self.rng, 0.3) {
                return; // heal for a while
            }
            let mut group = Vec::new();
            let leader = self
                .nodes
                .iter()
                .find(|n| n.replica.as_ref().is_some_and(|r| r.is_leader()))
                .map(|n| n.id);
            match leader {
                // Often cut the leader off with one follower: a stale leader in a
                // minority, still believed by the follower.
                Some(l) if self.faults.selective && chance(&mut self.rng, 0.5) => {
                    group.push(l);
                    let other =
                        self.members[(self.rng.next_u64() % self.members.len() as u64) as usize];
                    if other != l {
                        group.push(other);
                    }
                }
                _ => {
                    for &m in &self.members {
                        if chance(&mut self.rng, 0.5) {
                            group.push(m);
                        }
                    }
                }
            }
            let one_way = self.faults.one_way && chance(&mut self.rng, 0.5);
            for &a in &group {
                for &b in &self.members {
                    if !group.contains(&b) {
                        self.blocked.insert((a, b));
                        if !one_way {
                            self.blocked.insert((b, a));
                        }
                    }
                }
            }
        }
    }

    fn heal(&mut self) {
        self.blocked.clear();
        self.lossy.clear();
        self.leaky.clear();
        for n in &mut self.nodes {
            n.paused_until = 0;
        }
        self.faults.loss = 0.0;
        self.faults.duplicate = 0.0;
        self.faults.long_delay = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.restart(i);
            }
        }
    }

    /// The node's storage is lost: it restarts as a new incarnation with nothing.
    fn wipe(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.storage = MemStorage::new();
        node.durable_promised = Ballot::ZERO;
        node.durable_commit = 0;
        node.recovering = true;
        self.stats.amnesia += 1;
    }

    fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let state = node.storage.load().expect("mem storage loads");
        let cfg = Self::config(
            node.id,
            &self.members,
            self.seed ^ self.now,
            self.mutation,
            &self.faults,
        );
        node.replica = Some(Replica::new(cfg, Recorder::default(), state).expect("valid config"));
        node.checked = 0;
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
                    self.after_input(i)?;
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
            && chance(&mut self.rng, 0.0005)
        {
            // Crash in the middle of a round: only a prefix of its writes reached the
            // disk (the last one may be torn, i.e. lost), and nothing was sent.
            return self.crash_mid_round(i);
        }
        if !self.faults.batch_inputs || chance(&mut self.rng, 0.5) {
            self.flush(i)?;
        }
        self.check_node(i)
    }

    fn crash_mid_round(&mut self, i: usize) -> Result<(), Violation> {
        let Some(mut r) = self.nodes[i].replica.take() else {
            return Ok(());
        };
        let ready = r.take_ready();
        let keep = (self.rng.next_u64() % (ready.persist.len() as u64 + 1)) as usize;
        let durable = &ready.persist[..keep];
        let id = self.nodes[i].id;
        self.nodes[i]
            .storage
            .persist(durable)
            .map_err(|e| self.violation(e.to_string()))?;
        for op in durable {
            self.observe_persist(id, op)?;
        }
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

    /// Persist, then send, then reply: the order the driver uses.
    fn flush(&mut self, i: usize) -> Result<(), Violation> {
        if !self.nodes[i].dirty {
            return Ok(());
        }
        self.nodes[i].dirty = false;
        let Some(r) = self.nodes[i].replica.as_mut() else {
            return Ok(());
        };
        let ready = r.take_ready();
        let id = self.nodes[i].id;
        self.nodes[i]
            .storage
            .persist(&ready.persist)
            .map_err(|e| Violation {
                tick: self.now,
                what: e.to_string(),
            })?;
        for op in &ready.persist {
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
        for (to, message) in ready.messages {
            if let Message::Accepted { ballot, slots, .. } = &message {
                // An ACCEPTED vouches for the proposal at that ballot.
                for s in slots {
                    self.vote(id, *s, *ballot)?;
                }
            }
            if matches!(message, Message::NewView { .. }) {
                self.stats.elections += 1;
            }
            if matches!(message, Message::Snapshot { .. }) {
                self.stats.snapshots += 1;
            }
            self.send(Envelope::Peer {
                from: id,
                to,
                message,
            });
        }
        for reply in ready.replies {
            self.send(Envelope::Reply { from: id, reply });
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

    // ------------------------------------------------------------------ clients

    fn drive_clients(&mut self) {
        let timeout = 30;
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.remaining == 0 {
                continue;
            }
            let resend = match client.outstanding {
                None => true,
                Some((_, sent)) => self.now - sent >= timeout,
            };
            if !resend {
                continue;
            }
            let timed_out = client.outstanding.is_some() && !client.redirected;
            let seq = if client.registered {
                client.next_seq
            } else {
                0
            };
            self.clients[c].redirected = false;
            if timed_out {
                // Retry elsewhere, with the same request number.
                let t = self.members[(self.rng.next_u64() % self.members.len() as u64) as usize];
                self.clients[c].target = t;
            }
            self.send_request(c, seq);
        }
    }

    fn send_request(&mut self, c: usize, seq: u64) {
        let client = &mut self.clients[c];
        client.outstanding = Some((seq, self.now));
        if seq > 0 {
            let now = self.now;
            self.ops.entry((client.id, seq)).or_insert(ClientOp {
                call: now,
                ret: None,
                pos: None,
            });
        }
        let request = if seq == 0 {
            Request::register(client.nonce)
        } else {
            Request {
                client: client.id,
                seq,
                payload: Bytes::from(postcard::to_allocvec(&(client.id, seq)).unwrap_or_default()),
            }
        };
        let to = client.target;
        self.send(Envelope::Request { to, request });
    }

    fn client_reply(&mut self, from: NodeId, reply: Reply) -> Result<(), Violation> {
        let Some(c) = self.clients.iter().position(|c| {
            if reply.seq == 0 {
                !c.registered && c.nonce == reply.client
            } else {
                c.registered && c.id == reply.client
            }
        }) else {
            return Ok(());
        };
        let Some((seq, _)) = self.clients[c].outstanding else {
            return Ok(());
        };
        if reply.seq != seq {
            return Ok(()); // a late reply to an earlier request
        }
        match reply.response {
            Response::Ok(bytes) => {
                if seq > 0 {
                    self.check_reply(reply.client, seq, &bytes)?;
                }
                let client = &mut self.clients[c];
                if seq == 0 {
                    let Ok(id) = postcard::from_bytes::<ClientId>(&bytes) else {
                        return Err(self.violation(format!(
                            "registration {} answered without a session id",
                            reply.client
                        )));
                    };
                    client.id = id;
                    client.registered = true;
                } else {
                    if let Some(prev) = client.results.get(&seq) {
                        if *prev != bytes {
                            return Err(self.violation(format!(
                                "client {} got two different replies for #{seq}",
                                reply.client
                            )));
                        }
                    }
                    client.results.insert(seq, bytes);
                    client.next_seq += 1;
                    client.remaining -= 1;
                    self.stats.completed += 1;
                    self.last_completion = self.now;
                }
                let client = &mut self.clients[c];
                client.outstanding = None;
                client.target = from;
            }
            Response::Redirect { leader } => {
                let t = match leader {
                    Some(l) => l,
                    None => {
                        self.members[(self.rng.next_u64() % self.members.len() as u64) as usize]
                    }
                };
                let client = &mut self.clients[c];
                client.target = t;
                client.redirected = true;
                // Retry a little later, same request number.
                client.outstanding = Some((seq, self.now.saturating_sub(25)));
            }
            Response::Busy => {
                self.clients[c].outstanding = Some((seq, self.now.saturating_sub(20)));
            }
            Response::Stale => {}
            Response::SessionExpired => {
                if self.faults.max_sessions >= self.clients.len() {
                    return Err(self.violation(format!("client {} lost its session", reply.client)));
                }
                // Evicted: the request's outcome is unknown (it stays pending in the
                // real-time check). Carry on under a new session.
                self.stats.expired += 1;
                self.next_client += 1;
                let nonce = self.next_client;
                let client = &mut self.clients[c];
                client.nonce = nonce;
                client.registered = false;
                client.next_seq = 1;
                client.remaining -= 1;
                client.outstanding = None;
                client.results.clear();
            }
            Response::Invalid { reason } => {
                return Err(self.violation(format!("valid command rejected: {reason}")));
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ checks

    fn observe_persist(&mut self, node: NodeId, op: &PersistOp) -> Result<(), Violation> {
        match op {
            PersistOp::Accept {
                slot,
                ballot,
                value,
            } => {
                let entry = self
                    .accepts
                    .entry((*slot, *ballot))
                    .or_insert_with(|| (value.clone(), HashSet::new()));
                if entry.0 != *value {
                    return Err(self.violation(format!(
                        "two values proposed in slot {slot} at ballot {ballot}"
                    )));
                }
                // The proposer vouches for its own proposal by storing it; acceptors
                // by sending ACCEPTED (a recovering replica stores entries it heard
                // of without vouching for them).
                if ballot.node == node {
                    self.vote(node, *slot, *ballot)?;
                }
            }
            PersistOp::Learn { slot, value } => {
                if let Some(c) = self.chosen.get(slot) {
                    if c != value {
                        return Err(self.violation(format!(
                            "node {node} learned {} in slot {slot} but {} was chosen",
                            value.summary(),
                            c.summary()
                        )));
                    }
                }
            }
            PersistOp::Promise(_)
            | PersistOp::CommitPoint(_)
            | PersistOp::Checkpoint(_)
            | PersistOp::Compact(_)
            | PersistOp::Status { .. }
            | PersistOp::PeerIncarnation { .. } => {}
        }
        Ok(())
    }

    /// `node` vouched for the proposal in `slot` at `ballot`: a majority of vouchers
    /// chooses it.
    fn vote(&mut self, node: NodeId, slot: Slot, ballot: Ballot) -> Result<(), Violation> {
        let quorum = self.quorum;
        let Some(entry) = self.accepts.get_mut(&(slot, ballot)) else {
            return Ok(());
        };
        entry.1.insert(node);
        if entry.1.len() >= quorum {
            let v = entry.0.clone();
            self.chose(slot, v, "an accept quorum")?;
        }
        Ok(())
    }

    /// A reply must be what the cluster executed for that request: the Recorder
    /// answers with the position at which it applied the command.
    fn check_reply(&mut self, client: ClientId, seq: u64, bytes: &Bytes) -> Result<(), Violation> {
        let Some(&pos) = self.history_pos.get(&(client, seq)) else {
            return Err(self.violation(format!(
                "client {client} got a reply for #{seq}, which no replica executed"
            )));
        };
        let expected = postcard::to_allocvec(&(pos as u64)).unwrap_or_default();
        if bytes[..] != expected[..] {
            return Err(self.violation(format!(
                "client {client} got {bytes:?} for #{seq}, executed at position {pos}"
            )));
        }
        let now = self.now;
        if let Some(op) = self.ops.get_mut(&(client, seq)) {
            if op.ret.is_none() {
                op.ret = Some(now);
                op.pos = Some(pos as u64);
            }
        }
        Ok(())
    }

    /// Linearizability of what clients saw, against the sequential Recorder (an
    /// append-only log whose output is the position): every executed request comes
    /// after every request that had completed before it was first sent.
    fn check_real_time_order(&self) -> Result<(), Violation> {
        // What the clients saw alone, checked by the reusable checker: completed
        // requests with the positions their replies reported, the rest pending.
        let mut keys: Vec<&(ClientId, u64)> = self.ops.keys().collect();
        keys.sort_unstable();
        let seen: Vec<Operation<(ClientId, u64), u64>> = keys
            .iter()
            .map(|k| {
                let o = self.ops[*k];
                match (o.ret, o.pos) {
                    (Some(ret), Some(pos)) => Operation::completed(o.call, ret, **k, pos),
                    _ => Operation::pending(o.call, **k),
                }
            })
            .collect();
        if let Err(e) = AppendLog::check_fast(&seen) {
            return Err(self.violation(format!("the clients' history is not linearizable: {e}")));
        }
        // And with the cluster's knowledge: requests whose outcome the client never
        // learned still come after everything that completed before they were sent.
        let mut done: Vec<(u64, u64)> = self
            .ops
            .values()
            .filter_map(|o| Some((o.ret?, o.pos?)))
            .collect();
        done.sort_unstable();
        let mut calls: Vec<(u64, usize, ClientId, u64)> = self
            .ops
            .iter()
            .filter_map(|(k, o)| Some((o.call, *self.history_pos.get(k)?, k.0, k.1)))
            .collect();
        calls.sort_unstable();
        let mut j = 0;
        let mut latest: Option<u64> = None;
        for (call, pos, client, seq) in calls {
            while j < done.len() && done[j].0 < call {
                latest = latest.max(Some(done[j].1));
                j += 1;
            }
            if let Some(l) = latest {
                if l >= pos as u64 {
                    return Err(self.violation(format!(
                        "not linearizable: c{client}#{seq}, sent at tick {call}, executed at \
                         position {pos}, before a request that had completed at position {l}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each replica's state in one line, for liveness reports.
    fn describe_nodes(&self) -> String {
        let mut out = Vec::new();
        for n in &self.nodes {
            match &n.replica {
                None => out.push(format!("n{} down", n.id)),
                Some(r) => {
                    let st = r.status();
                    out.push(format!(
                        "n{} {:?}/{:?} promised {} leader {:?} commit {} known {} paused {}",
                        n.id,
                        st.acceptor,
                        st.role,
                        st.promised,
                        st.leader,
                        st.commit_point,
                        st.log_end,
                        n.paused_until > self.now
                    ))
                }
            }
        }
        for c in &self.clients {
            if c.remaining > 0 {
                out.push(format!(
                    "client nonce {} session {} registered {} #{} outstanding {:?} target n{}",
                    c.nonce, c.id, c.registered, c.next_seq, c.outstanding, c.target
                ));
            }
        }
        out.join("; ")
    }

    /// Liveness during faults: a majority up, unpaused, voting and connected for
    /// [`LIVENESS_WINDOW`] ticks completes requests, whatever the others do.
    fn check_progress(&mut self) -> Result<(), Violation> {
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| {
                n.paused_until <= self.now
                    && n.replica
                        .as_ref()
                        .is_some_and(|r| r.acceptor_status() == AcceptorStatus::Voter)
            })
            .map(|n| n.id)
            .collect();
        let lossy = !self.lossy.is_empty();
        let connected = |a: NodeId, b: NodeId| {
            !lossy && !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
        };
        let mut group: Option<Vec<NodeId>> = None;
        for &a in &up {
            let g: Vec<NodeId> = up.iter().copied().filter(|&b| connected(a, b)).collect();
            let clique = g.iter().all(|&x| g.iter().all(|&y| connected(x, y)));
            if clique && g.len() >= self.quorum {
                group = Some(g);
                break;
            }
        }
        match (group, &self.good_since) {
            (None, _) => self.good_since = None,
            (Some(g), Some((_, prev))) if *prev == g => {}
            (Some(g), _) => self.good_since = Some((self.now, g)),
        }
        let Some((since, g)) = &self.good_since else {
            return Ok(());
        };
        let waiting = self.clients.iter().any(|c| c.remaining > 0);
        let quiet_since = (*since).max(self.last_completion);
        if waiting && self.now - quiet_since > LIVENESS_WINDOW {
            return Err(self.violation(format!(
                "liveness: {g:?} up and connected since tick {since}, yet no request \
                 completed for {LIVENESS_WINDOW} ticks; {}",
                self.describe_nodes()
            )));
        }
        Ok(())
    }

    fn chose(&mut self, slot: Slot, value: Value, how: &str) -> Result<(), Violation> {
        match self.chosen.get(&slot) {
            Some(prev) if *prev != value => Err(self.violation(format!(
                "two values chosen in slot {slot}: {} and then {} by {how}",
                prev.summary(),
                value.summary()
            ))),
            Some(_) => Ok(()),
            None => {
                self.chosen.insert(slot, value);
                Ok(())
            }
        }
    }

    fn check_node(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[i];
        let Some(r) = node.replica.as_ref() else {
            return Ok(());
        };
        let id = node.id;
        // Promised ballot and commit point never go back below what was made durable
        // (and so may have been vouched for), across restarts too.
        if r.promised() < node.durable_promised {
            return Err(Violation {
                tick: now,
                what: format!(
                    "node {id} promised went back from {} to {}",
                    node.durable_promised,
                    r.promised()
                ),
            });
        }
        if r.commit_point() < node.durable_commit {
            return Err(Violation {
                tick: now,
                what: format!(
                    "node {id} commit point went back from {} to {}",
                    node.durable_commit,
                    r.commit_point()
                ),
            });
        }
        // Executed histories are prefixes of one another, with no request twice.
        let applied = &r.state_machine().applied;
        let from = node.checked;
        for (k, item) in applied.iter().enumerate().skip(from) {
            if k < self.history.len() {
                if self.history[k] != *item {
                    return Err(Violation {
                        tick: now,
                        what: format!("node {id} executed c{}#{} at position {k} where others executed c{}#{}", item.0, item.1, self.history[k].0, self.history[k].1),
                    });
                }
            } else {
                if self.history_pos.insert(*item, k).is_some() {
                    return Err(Violation {
                        tick: now,
                        what: format!("request c{}#{} executed twice", item.0, item.1),
                    });
                }
                self.history.push(*item);
            }
        }
        node.checked = applied.len();
        // Executed slots hold chosen values.
        let executed = r.executed();
        let info: Vec<_> = r.log(executed.saturating_sub(4)..executed);
        for s in info {
            if let (Some(v), Some(c)) = (s.value.as_ref(), self.chosen.get(&s.slot)) {
                if v != c {
                    return Err(Violation {
                        tick: now,
                        what: format!(
                            "node {id} executed {} in slot {} but {} was chosen",
                            v.summary(),
                            s.slot,
                            c.summary()
                        ),
                    });
                }
            }
        }
        Ok(())
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

/// Runs `seeds` from the environment (`PAXOS_SIM_SEED` = one, `PAXOS_SIM_SEEDS` = how many).
fn seeds(default: u64) -> Vec<u64> {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn simulation_holds_invariants_under_faults() {
        run_seeds("simulation", seeds(1000), |_| {});
    }

    #[test]
    fn simulation_holds_invariants_under_stale_traffic() {
        run_seeds("simulation (stale traffic)", seeds(500), stale_traffic);
    }

    #[test]
    fn simulation_holds_invariants_with_dueling_leaders() {
        run_seeds("simulation (dueling leaders)", seeds(500), dueling_leaders);
    }

    #[test]
    fn simulation_holds_invariants_with_five_dueling_leaders() {
        run_seeds(
            "simulation (five dueling leaders)",
            seeds(300),
            five_dueling_leaders,
        );
    }

    #[test]
    fn simulation_holds_invariants_with_stale_leaders() {
        run_seeds("simulation (stale leaders)", seeds(300), stale_leaders);
    }

    #[test]
    fn simulation_holds_invariants_under_amnesia() {
        run_seeds("simulation (amnesia)", seeds(300), amnesia);
    }

    #[test]
    fn simulation_holds_invariants_with_long_outages() {
        run_seeds("simulation (long outages)", seeds(200), crashes_only);
    }

    #[test]
    fn simulation_holds_invariants_with_session_eviction() {
        run_seeds("simulation (session eviction)", seeds(300), eviction);
    }

    fn run_seeds(name: &str, seeds: Vec<u64>, tweak: fn(&mut Faults)) {
        let mut total = Stats::default();
        for &seed in &seeds {
            match Sim::with_faults(seed, Mutation::None, tweak).run() {
                Ok(s) => {
                    total.steps += s.steps;
                    total.ticks += s.ticks;
                    total.delivered += s.delivered;
                    total.crashes += s.crashes;
                    total.elections += s.elections;
                    total.completed += s.completed;
                    total.snapshots += s.snapshots;
                    total.torn_crashes += s.torn_crashes;
                    total.amnesia += s.amnesia;
                    total.recoveries += s.recoveries;
                    total.pauses += s.pauses;
                    total.expired += s.expired;
                }
                Err(v) => panic!(
                    "{name}: seed {seed} failed: {v}\nreplay: PAXOS_SIM_SEED={seed} cargo test --release -p paxos-core sim::tests -- --nocapture"
                ),
            }
        }
        // Written to stderr directly so the counts show without `--nocapture`.
        let line = format!(
            "{name}: {} seeds, {} steps, {} ticks, {} messages, {} crashes ({} mid-round), {} new views, {} snapshots sent, {} requests completed, {} wiped and {} recovered, {} pauses, {} expired sessions",
            seeds.len(),
            total.steps,
            total.ticks,
            total.delivered,
            total.crashes,
            total.torn_crashes,
            total.elections,
            total.snapshots,
            total.completed,
            total.amnesia,
            total.recoveries,
            total.pauses,
            total.expired
        );
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    #[test]
    fn a_seed_replays_identically() {
        let a = Sim::new(7, Mutation::None).run().expect("seed 7 passes");
        let b = Sim::new(7, Mutation::None).run().expect("seed 7 passes");
        assert_eq!((a.steps, a.ticks, a.trace), (b.steps, b.ticks, b.trace));
        let c = Sim::new(8, Mutation::None).run().expect("seed 8 passes");
        assert_ne!(
            a.trace, c.trace,
            "different seeds should give different runs"
        );
    }

    fn caught(m: Mutation, max_seeds: u64) -> Option<(u64, Violation)> {
        (0..max_seeds).find_map(|seed| Sim::new(seed, m).run().err().map(|v| (seed, v)))
    }

    /// Old leaders whose proposals arrive long after a new leader took over: three
    /// nodes, much stale traffic, crashes and partitions.
    fn dueling_leaders(f: &mut Faults) {
        f.nodes = 3;
        f.crashes = true;
        f.partitions = true;
        f.loss = f.loss.min(0.1);
        f.long_delay = 0.3;
    }

    /// Stale traffic from crashed leaders: messages held back past an election.
    fn stale_traffic(f: &mut Faults) {
        f.crashes = true;
        f.long_delay = f.long_delay.max(0.2);
    }

    /// Competing leaders among five replicas, where a quorum is three.
    fn five_dueling_leaders(f: &mut Faults) {
        dueling_leaders(f);
        f.nodes = 5;
    }

    /// Leaders paused for long stretches that resume believing they still lead, with
    /// skewed clocks and long one-way delays, among five replicas.
    fn stale_leaders(f: &mut Faults) {
        f.nodes = 5;
        f.selective = true;
        f.pauses = true;
        f.skew = true;
        f.partitions = true;
        f.one_way = true;
        f.long_delay = f.long_delay.max(0.1);
        f.loss = f.loss.min(0.15);
    }

    /// Restarts that lose the replica's storage, within the fault bound.
    fn amnesia(f: &mut Faults) {
        f.crashes = true;
        f.amnesia = true;
    }

    /// More clients than sessions: every run evicts.
    fn eviction(f: &mut Faults) {
        f.clients = f.clients.max(4);
        f.max_sessions = f.clients - 1;
        f.requests_per_client = f.requests_per_client.max(10);
        // Late duplicates of registrations and retries.
        f.duplicate = f.duplicate.max(0.2);
        f.long_delay = f.long_delay.max(0.1);
    }

    fn caught_in(
        m: Mutation,
        profile: fn(&mut Faults),
        max_seeds: u64,
    ) -> Option<(u64, Violation)> {
        (0..max_seeds).find_map(|seed| {
            Sim::with_faults(seed, m, profile)
                .run()
                .err()
                .map(|v| (seed, v))
        })
    }

    fn assert_caught(m: Mutation, profile: fn(&mut Faults), max_seeds: u64) {
        let found = caught_in(m, profile, max_seeds);
        assert!(found.is_some(), "the simulation did not catch {m:?}");
        println!("{m:?} caught at seed {found:?}");
    }

    /// Crashes only, no partitions: a replica is often down while the rest could serve.
    fn crashes_only(f: &mut Faults) {
        f.crashes = true;
        f.partitions = false;
        f.selective = false;
        f.pauses = false;
        f.amnesia = false;
        // Down for longer than the liveness window: the others must carry on.
        f.downtime = 2_000;
        f.fault_ticks = f.fault_ticks.max(3_000);
    }

    #[test]
    fn mutant_needing_every_prevote_is_caught_by_the_liveness_check() {
        let found = caught_in(Mutation::PreVoteNeedsEveryone, crashes_only, 300);
        let (seed, v) = found.expect("the simulation did not catch pre-votes needing everyone");
        assert!(
            v.what.contains("up and connected"),
            "seed {seed}: caught, but not by the liveness check during faults: {v}"
        );
    }

    #[test]
    fn mutant_voting_after_amnesia_is_caught() {
        assert_caught(Mutation::AmnesiaVotesAtOnce, amnesia, 500);
    }

    #[test]
    fn mutant_with_client_chosen_session_ids_is_caught() {
        assert_caught(Mutation::ClientChosenSessionIds, eviction, 1000);
    }

    #[test]
    fn mutant_garbling_cached_replies_is_caught() {
        assert_caught(Mutation::GarbledCachedReply, stale_traffic, 300);
    }

    #[test]
    fn mutant_executing_expired_sessions_is_caught() {
        assert_caught(Mutation::ExpiredSessionExecutes, eviction, 500);
    }

    #[test]
    fn mutant_with_quorums_of_two_is_caught_with_five_replicas() {
        assert_caught(Mutation::QuorumOfTwo, five_dueling_leaders, 500);
    }

    // `SupersededLeaderAnnounces` and `AckChosenBlindly` are caught by the scripted
    // replays in `scenarios.rs`; random search has not reached them yet (more than
    // 10,000 seeds of targeted profiles).

    #[test]
    fn mutant_ignoring_promised_values_is_caught() {
        let found = caught(Mutation::IgnorePromisedValues, 300);
        assert!(
            found.is_some(),
            "simulation did not catch a leader that ignores promises"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_accepting_below_promise_is_caught() {
        let found = (0..1000).find_map(|seed| {
            Sim::with_faults(seed, Mutation::AcceptBelowPromise, dueling_leaders)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch an acceptor accepting below its promise"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_with_leader_local_sessions_is_caught() {
        let found = caught(Mutation::LeaderLocalSessions, 300);
        assert!(
            found.is_some(),
            "simulation did not catch leader-local sessions"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_skipping_gaps_is_caught() {
        let found = caught(Mutation::SkipGaps, 300);
        assert!(
            found.is_some(),
            "simulation did not catch execution skipping a gap"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_preferring_lowest_ballot_is_caught() {
        let found = (0..1000).find_map(|seed| {
            Sim::with_faults(seed, Mutation::LowestBallotWins, dueling_leaders)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch a merge that prefers the lowest ballot"
        );
        println!("caught at seed {:?}", found);
    }

    #[test]
    fn mutant_checkpointing_without_sessions_is_caught() {
        let found = (0..300).find_map(|seed| {
            Sim::with_faults(seed, Mutation::CheckpointWithoutSessions, stale_traffic)
                .run()
                .err()
                .map(|v| (seed, v))
        });
        assert!(
            found.is_some(),
            "simulation did not catch checkpoints that drop the session table"
        );
        println!("caught at seed {:?}", found);
    }
}
