//! Deterministic simulation of whole clusters of the real [`Replica`], with a seeded
//! network and clock, and invariant checks after every step.
//!
//! `PAXOS_SIM_SEEDS=N cargo test --release -p paxos-core sim` runs N seeds;
//! `PAXOS_SIM_SEED=S` replays one seed exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::mutation::Mutation;
use crate::{
    Ballot, ClientId, Config, MemStorage, Message, NodeId, PersistOp, Replica, Reply, Request,
    Response, RestoreError, Slot, StateMachine, Storage, Value,
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
        }
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
}

struct SimClient {
    id: ClientId,
    next_seq: u64,
    total: u64,
    registered: bool,
    outstanding: Option<(u64, u64)>, // (seq, tick sent)
    target: NodeId,
    results: HashMap<u64, Bytes>,
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
    clients: Vec<SimClient>,
    now: u64,
    stats: Stats,
    // Checker state.
    accepts: HashMap<(Slot, Ballot), (Value, HashSet<NodeId>)>,
    chosen: BTreeMap<Slot, Value>,
    history: Vec<(ClientId, u64)>,
    history_set: HashSet<(ClientId, u64)>,
    mutation: Mutation,
}

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
                let replica = Replica::new(
                    Self::config(id, &members, seed, mutation, &faults),
                    Recorder::default(),
                    crate::PersistentState::default(),
                )
                .expect("valid config");
                Node {
                    id,
                    replica: Some(replica),
                    storage,
                    durable_promised: Ballot::ZERO,
                    durable_commit: 0,
                    checked: 0,
                    dirty: false,
                    down_until: 0,
                }
            })
            .collect();
        let clients = (0..faults.clients)
            .map(|i| SimClient {
                id: 1000 + i as u64,
                next_seq: 1,
                total: faults.requests_per_client,
                registered: false,
                outstanding: None,
                target: members[i % members.len()],
                results: HashMap::new(),
            })
            .collect();
        let quorum = faults.nodes / 2 + 1;
        Sim {
            seed,
            rng,
            faults,
            nodes,
            members,
            quorum,
            network: Vec::new(),
            blocked: HashSet::new(),
            clients,
            now: 0,
            stats: Stats::default(),
            accepts: HashMap::new(),
            chosen: BTreeMap::new(),
            history: Vec::new(),
            history_set: HashSet::new(),
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
        cfg.max_sessions = 1024;
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
            if self.now > heal_at && self.clients.iter().all(|c| c.next_seq > c.total) {
                break;
            }
            if self.now > deadline {
                let pending: Vec<String> = self
                    .clients
                    .iter()
                    .filter(|c| c.next_seq <= c.total)
                    .map(|c| format!("c{} at #{} (registered {})", c.id, c.next_seq, c.registered))
                    .collect();
                return Err(self.violation(format!(
                    "liveness: requests still pending {} ticks after healing: {}",
                    deadline - heal_at,
                    pending.join(", ")
                )));
            }
        }
        self.stats.max_slot = self.chosen.keys().next_back().map_or(0, |s| s + 1);
        Ok(self.stats)
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            tick: self.now,
            what,
        }
    }

    // ------------------------------------------------------------------ faults

    fn inject_faults(&mut self) {
        let f = (self.faults.nodes - 1) / 2;
        if self.faults.crashes {
            // Restart nodes whose downtime is over.
            for i in 0..self.nodes.len() {
                if self.nodes[i].replica.is_none() && self.now >= self.nodes[i].down_until {
                    self.restart(i);
                }
            }
            let down = self.nodes.iter().filter(|n| n.replica.is_none()).count();
            if down < f && chance(&mut self.rng, 0.004) {
                let i = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
                if self.nodes[i].replica.is_some() {
                    self.nodes[i].replica = None;
                    self.nodes[i].down_until = self.now + 20 + self.rng.next_u64() % 200;
                    self.stats.crashes += 1;
                }
            }
        }
        if self.faults.partitions && chance(&mut self.rng, 0.006) {
            self.blocked.clear();
            if chance(&mut self.rng, 0.3) {
                return; // heal for a while
            }
            let mut group = Vec::new();
            for &m in &self.members {
                if chance(&mut self.rng, 0.5) {
                    group.push(m);
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
        self.faults.loss = 0.0;
        self.faults.duplicate = 0.0;
        self.faults.long_delay = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.restart(i);
            }
        }
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
            self.stats.delivered += 1;
            self.stats.trace = trace_mix(self.stats.trace, self.now, &env);
            match env {
                Envelope::Peer { from, to, message } => {
                    if self.blocked.contains(&(from, to)) {
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
            && self.nodes.iter().filter(|n| n.replica.is_none()).count()
                < (self.faults.nodes - 1) / 2
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
        self.nodes[i].down_until = self.now + 20 + self.rng.next_u64() % 200;
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
        for (to, message) in ready.messages {
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
        if chance(&mut self.rng, self.faults.duplicate) {
            let delay = self.delay();
            self.network.push((self.now + delay, duplicate(&env)));
        }
        let delay = self.delay();
        self.network.push((self.now + delay, env));
    }

    fn delay(&mut self) -> u64 {
        if chance(&mut self.rng, self.faults.long_delay) {
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
            if client.next_seq > client.total {
                continue;
            }
            let resend = match client.outstanding {
                None => true,
                Some((_, sent)) => self.now - sent >= timeout,
            };
            if !resend {
                continue;
            }
            let timed_out = client.outstanding.is_some();
            let seq = if client.registered {
                client.next_seq
            } else {
                0
            };
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
        let request = if seq == 0 {
            Request::register(client.id)
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
        let Some(c) = self.clients.iter().position(|c| c.id == reply.client) else {
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
                let client = &mut self.clients[c];
                if seq == 0 {
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
                    self.stats.completed += 1;
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
                // Retry a little later, same request number.
                client.outstanding = Some((seq, self.now.saturating_sub(25)));
            }
            Response::Busy => {
                self.clients[c].outstanding = Some((seq, self.now.saturating_sub(20)));
            }
            Response::Stale => {}
            Response::SessionExpired => {
                return Err(self.violation(format!("client {} lost its session", reply.client)));
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
                let quorum = self.quorum;
                let entry = self
                    .accepts
                    .entry((*slot, *ballot))
                    .or_insert_with(|| (value.clone(), HashSet::new()));
                if entry.0 != *value {
                    return Err(self.violation(format!(
                        "two values proposed in slot {slot} at ballot {ballot}"
                    )));
                }
                entry.1.insert(node);
                if entry.1.len() >= quorum {
                    let v = entry.0.clone();
                    self.chose(*slot, v, "an accept quorum")?;
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
            | PersistOp::Compact(_) => {}
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
                if !self.history_set.insert(*item) {
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
                }
                Err(v) => panic!(
                    "{name}: seed {seed} failed: {v}\nreplay: PAXOS_SIM_SEED={seed} cargo test --release -p paxos-core sim::tests -- --nocapture"
                ),
            }
        }
        // Written to stderr directly so the counts show without `--nocapture`.
        let line = format!(
            "{name}: {} seeds, {} steps, {} ticks, {} messages, {} crashes ({} mid-round), {} new views, {} snapshots sent, {} requests completed",
            seeds.len(),
            total.steps,
            total.ticks,
            total.delivered,
            total.crashes,
            total.torn_crashes,
            total.elections,
            total.snapshots,
            total.completed
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
