//! Our sans-IO core in the lockstep shape: five [`Replica`]s in one thread, messages
//! moved by hand until the cluster is quiet, sessions and execution on. Every write is
//! persisted to a [`MemStorage`] through [`Replica::drive`] (persist, then send, then
//! reply), or, with `persist == false`, dropped (the replica keeps its own log either
//! way; OmniPaxos' in-memory storage *is* its log, so it cannot skip it).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use paxos_core::{
    Config, MemStorage, Message, NodeId, Ready, Replica, Request, Response, RestoreError,
    StateMachine, Storage,
};

use crate::{Progress, RunResult, NODES};

/// A counter: the cheapest state machine, so the protocol's cost shows. Each command
/// adds its operand; the output is the new total (also the state machine of `runtime`'s
/// nodes, [`crate::nodes`]).
#[derive(Default)]
pub(crate) struct Counter(pub(crate) u64);

impl StateMachine for Counter {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(n);
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> {
        let raw: [u8; 8] = b
            .try_into()
            .map_err(|_| RestoreError::new("want 8 bytes"))?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

struct Cluster {
    replicas: Vec<Replica<Counter>>,
    storages: Vec<MemStorage>,
    persist: bool,
    leader: usize,
    queue: Vec<(NodeId, NodeId, Message)>,
    /// `Ok` replies seen (reset after each registration).
    ok: u64,
    /// Replies other than `Ok` (redirects, busy, ...): none is expected.
    other: u64,
    /// The payload of the last `Ok` reply (registration replies carry the session id).
    last_ok: Bytes,
    /// One `Ready` per replica, reused every round (`Replica::take_ready_into`).
    readies: Vec<Ready>,
}

impl Cluster {
    fn new(persist: bool) -> Result<Self> {
        let ids: Vec<NodeId> = (1..=NODES as NodeId).collect();
        let mut replicas = Vec::new();
        let mut storages = Vec::new();
        for &id in &ids {
            let mut storage = MemStorage::new();
            let state = storage.load()?;
            // The defaults a user gets, checkpoints (every 1,000 slots) included.
            let mut cfg = Config::new(id, ids.clone());
            // Several requests per slot (off by default in the library).
            cfg.max_requests_per_slot = 64;
            replicas.push(Replica::new(cfg, Counter::default(), state)?);
            storages.push(storage);
        }
        let mut c = Cluster {
            replicas,
            storages,
            persist,
            leader: 0,
            queue: Vec::new(),
            ok: 0,
            other: 0,
            last_ok: Bytes::new(),
            readies: (0..NODES).map(|_| Ready::default()).collect(),
        };
        for _ in 0..1000 {
            for r in &mut c.replicas {
                r.tick();
            }
            c.settle()?;
            if c.replicas.iter().any(|r| r.is_leader()) {
                break;
            }
        }
        c.leader = c
            .replicas
            .iter()
            .position(|r| r.is_leader())
            .context("no leader elected")?;
        Ok(c)
    }

    /// Moves messages until no replica has anything to send.
    fn settle(&mut self) -> Result<()> {
        loop {
            let each = self.replicas.iter_mut().zip(&mut self.storages);
            for ((r, storage), ready) in each.zip(&mut self.readies) {
                let from = r.id();
                let queue = &mut self.queue;
                let (ok, other, last_ok) = (&mut self.ok, &mut self.other, &mut self.last_ok);
                let persist = self.persist;
                r.take_ready_into(ready);
                ready.deliver_mut(
                    |ops| {
                        if persist {
                            storage.persist_owned(ops)
                        } else {
                            Ok(())
                        }
                    },
                    |to, m| queue.push((from, to, m)),
                    |reply| match reply.response {
                        Response::Ok(payload) => {
                            *ok += 1;
                            *last_ok = payload;
                        }
                        _ => *other += 1,
                    },
                )?;
            }
            if self.queue.is_empty() {
                return Ok(());
            }
            for (from, to, m) in self.queue.drain(..) {
                self.replicas[(to - 1) as usize].handle_message(from, m);
            }
        }
    }

    /// Registers a session and returns its id.
    fn register(&mut self, nonce: u64) -> Result<u64> {
        self.replicas[self.leader].handle_request(Request::register(nonce));
        self.settle()?;
        ensure!(self.ok == 1 && self.other == 0, "registration not answered");
        self.ok = 0;
        Ok(postcard::from_bytes(&self.last_ok)?)
    }
}

/// Runs `commands` commands in rounds of `batch` (the last one may be shorter) over
/// `sessions` sessions, round-robin, each with increasing request numbers, and checks
/// that every replica executed the same commands to the same state.
pub(crate) fn run(
    batch: u64,
    commands: u64,
    sessions: u64,
    persist: bool,
    progress: &Progress,
) -> Result<RunResult> {
    let mut c = Cluster::new(persist)?;
    let ids = (1..=sessions.max(1))
        .map(|nonce| c.register(nonce))
        .collect::<Result<Vec<_>>>()?;
    let mut seqs = vec![0u64; ids.len()];
    let payload = Bytes::from(postcard::to_allocvec(&1u64)?);
    let mut next = 0usize;
    let mut done = 0u64;

    let start = Instant::now();
    while done < commands {
        let n = batch.min(commands - done);
        let leader = &mut c.replicas[c.leader];
        for _ in 0..n {
            seqs[next] += 1;
            leader.handle_request(Request {
                client: ids[next],
                seq: seqs[next],
                payload: payload.clone(),
            });
            next = (next + 1) % ids.len();
        }
        c.settle()?;
        done += n;
        progress.advance(done);
    }
    let elapsed: Duration = start.elapsed();

    if c.ok != commands || c.other != 0 {
        bail!(
            "ours: {} ok replies and {} others for {commands} commands",
            c.ok,
            c.other
        );
    }
    let state = c.replicas[0].state_machine().0;
    let executed = c.replicas[0].executed();
    for r in &c.replicas {
        ensure!(
            r.state_machine().0 == state && r.executed() == executed,
            "ours: replica {} disagrees (state {} at slot {}, replica 1 has {state} at {executed})",
            r.id(),
            r.state_machine().0,
            r.executed()
        );
    }
    ensure!(state == commands, "ours: state {state}, want {commands}");
    Ok(RunResult { elapsed, commands })
}
