//! OmniPaxos in the same lockstep shape as [`crate::ours`]: five servers in one thread
//! with its in-memory storage, messages moved by hand until quiet, decided entries
//! applied to an equivalent state machine (a counter behind a session table).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use omnipaxos::messages::Message;
use omnipaxos::storage::{Entry, NoSnapshot};
use omnipaxos::util::{LogEntry, NodeId};
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use omnipaxos_storage::memory_storage::MemoryStorage;

use crate::{Progress, RunResult, NODES};

/// A client command, as a request to our core carries it: session, request number and
/// the counter's operand.
#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    client: u64,
    seq: u64,
    add: u64,
}

impl Entry for Cmd {
    type Snapshot = NoSnapshot;
}

/// The state machine our core runs, session table included: a command executes once
/// per (session, request number), in order; the last reply is kept for retries.
#[derive(Default)]
struct Executor {
    total: u64,
    /// Session -> (last request number, its output). Hashed as our session table is
    /// (foldhash, fixed seed), so that neither side pays for a slower hash.
    sessions: HashMap<u64, (u64, u64), foldhash::fast::FixedState>,
    /// Decided entries applied so far.
    applied: usize,
}

impl Executor {
    fn apply(&mut self, cmd: &Cmd) -> u64 {
        let session = self.sessions.entry(cmd.client).or_insert((0, 0));
        if cmd.seq <= session.0 {
            return session.1;
        }
        self.total = self.total.wrapping_add(cmd.add);
        *session = (cmd.seq, self.total);
        self.total
    }
}

type Server = OmniPaxos<Cmd, MemoryStorage<Cmd>>;

struct Cluster {
    servers: Vec<Server>,
    executors: Vec<Executor>,
    leader: usize,
    queue: Vec<Message<Cmd>>,
    /// Outputs "returned" by the leader (the analog of our replies).
    replies: u64,
}

impl Cluster {
    fn new() -> Result<Self> {
        let nodes: Vec<NodeId> = (1..=NODES as NodeId).collect();
        let mut servers = Vec::new();
        for &pid in &nodes {
            let config = OmniPaxosConfig {
                cluster_config: ClusterConfig {
                    configuration_id: 1,
                    nodes: nodes.clone(),
                    flexible_quorum: None,
                },
                server_config: ServerConfig {
                    pid,
                    ..ServerConfig::default()
                },
            };
            servers.push(config.build(MemoryStorage::default())?);
        }
        let mut c = Cluster {
            executors: servers.iter().map(|_| Executor::default()).collect(),
            servers,
            leader: 0,
            queue: Vec::new(),
            replies: 0,
        };
        // Tick until every server follows the same leader and is in its accept phase.
        for _ in 0..1000 {
            for s in &mut c.servers {
                s.tick();
            }
            c.settle();
            let leaders: Vec<_> = c.servers.iter().map(|s| s.get_current_leader()).collect();
            if let Some(Some((l, true))) = leaders.first() {
                if leaders.iter().all(|x| *x == Some((*l, true))) {
                    c.leader = (*l - 1) as usize;
                    return Ok(c);
                }
            }
        }
        bail!("omnipaxos elected no leader")
    }

    /// Moves messages until no server has anything to send.
    fn settle(&mut self) {
        loop {
            for s in &mut self.servers {
                s.take_outgoing_messages(&mut self.queue);
            }
            if self.queue.is_empty() {
                return;
            }
            for m in self.queue.drain(..) {
                let to = (m.get_receiver() - 1) as usize;
                self.servers[to].handle_incoming(m);
            }
        }
    }

    /// Every server applies what it has newly decided, as our replicas execute.
    fn apply_decided(&mut self) {
        for (i, (s, e)) in self.servers.iter().zip(&mut self.executors).enumerate() {
            let Some(entries) = s.read_decided_suffix(e.applied) else {
                continue;
            };
            e.applied += entries.len();
            for entry in entries {
                if let LogEntry::Decided(cmd) = entry {
                    std::hint::black_box(e.apply(&cmd));
                    if i == self.leader {
                        self.replies += 1;
                    }
                }
            }
        }
    }
}

/// Runs `commands` commands in rounds of `batch` over `sessions` sessions, as
/// [`crate::ours::run`] does, and checks that every server decided the same log and
/// reached the same state.
pub(crate) fn run(
    batch: u64,
    commands: u64,
    sessions: u64,
    progress: &Progress,
) -> Result<RunResult> {
    let mut c = Cluster::new()?;
    let sessions = sessions.max(1);
    let mut seqs = vec![0u64; sessions as usize];
    let mut next = 0usize;
    let mut done = 0u64;

    let start = Instant::now();
    while done < commands {
        let n = batch.min(commands - done);
        let leader = &mut c.servers[c.leader];
        for _ in 0..n {
            seqs[next] += 1;
            leader
                .append(Cmd {
                    client: next as u64 + 1,
                    seq: seqs[next],
                    add: 1,
                })
                .ok()
                .context("omnipaxos refused an append")?;
            next = (next + 1) % seqs.len();
        }
        c.settle();
        c.apply_decided();
        done += n;
        progress.advance(done);
    }
    let elapsed: Duration = start.elapsed();

    ensure!(
        c.replies == commands,
        "omnipaxos: {} outputs for {commands} commands",
        c.replies
    );
    let first = &c.executors[0];
    for (s, e) in c.servers.iter().zip(&c.executors) {
        ensure!(
            e.total == first.total
                && e.applied == first.applied
                && s.get_decided_idx() == first.applied,
            "omnipaxos: server {} disagrees (state {} after {} entries, server 1 has {} after {})",
            s.get_pid(),
            e.total,
            e.applied,
            first.total,
            first.applied
        );
    }
    ensure!(
        first.total == commands,
        "omnipaxos: state {}, want {commands}",
        first.total
    );
    Ok(RunResult { elapsed, commands })
}
