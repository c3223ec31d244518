//! The deterministic simulation, for your own state machine.
//!
//! [`Simulation`] runs whole clusters of the real [`Replica`](crate::Replica) (three or
//! five of them) in one thread, with a seeded network and clock, against your
//! [`StateMachine`]. Each seed draws a different mix of faults (swarm testing): message
//! loss, duplication, reordering and long delays; partitions, one-way and partial ones;
//! crashes and restarts, some in the middle of a write; replicas that lose their storage
//! (within the fault bound) and must recover; paused replicas that come back with stale
//! beliefs; clocks running at different rates; session eviction; clients retrying and
//! following redirects. After every step it checks:
//! - one value per slot, and no replica executing anything else;
//! - identical executed prefixes on every replica, no request executed twice;
//! - promised ballots and commit points that never go back, across restarts;
//! - every reply equal to what the cluster executed for that request, and every
//!   replica computing the same output for the command at each position (a replica
//!   whose state diverged, after a `restore` that lost something say, shows at its next
//!   output, whoever answers the client); a `restore` that fails is a failure too;
//! - liveness: a majority up and connected for long enough completes requests, and
//!   every replica votes again once the faults heal;
//!
//! and at the end of each run, that what your clients saw is linearizable: the
//! positions the replies report are consistent with real time, your [`Model`] replayed
//! in the order the cluster executed the commands gives every client the output it
//! got, and the clients' history alone passes the [WGL](crate::testing::check) search
//! against the model.
//!
//! A failing seed is reported with the command that replays it: runs are deterministic,
//! so `PAXOS_SIM_SEED=<seed>` reproduces the failure exactly.
//!
//! # Example
//!
//! A counter that adds and reads, simulated for 200 seeds:
//!
//! ```
//! use paxos_core::testing::{Gen, Model, Simulation, Workload};
//! use paxos_core::{RestoreError, StateMachine};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! enum Op { Add(u64), Get }
//!
//! impl StateMachine for Counter {
//!     type Command = Op;
//!     type Output = u64;
//!     fn apply(&mut self, op: Op) -> u64 {
//!         if let Op::Add(n) = op { self.0 += n }
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(&mut self, s: &[u8]) -> Result<(), RestoreError> {
//!         let bytes = s.try_into().map_err(|_| RestoreError::new("not 8 bytes"))?;
//!         self.0 = u64::from_le_bytes(bytes);
//!         Ok(())
//!     }
//! }
//!
//! /// The sequential specification: what one counter does, one operation at a time.
//! #[derive(Clone)]
//! struct CounterModel;
//!
//! impl Model for CounterModel {
//!     type State = u64;
//!     type Input = Op;
//!     type Output = u64;
//!     fn init(&self) -> u64 { 0 }
//!     fn step(&self, n: &u64, op: &Op) -> (u64, u64) {
//!         let next = match op { Op::Add(k) => n + k, Op::Get => *n };
//!         (next, next)
//!     }
//! }
//!
//! #[derive(Clone)]
//! struct Counting;
//!
//! impl Workload for Counting {
//!     type Machine = Counter;
//!     type Model = CounterModel;
//!     fn machine(&self) -> Counter { Counter::default() }
//!     fn model(&self) -> CounterModel { CounterModel }
//!     fn command(&self, gen: &mut Gen, _client: usize) -> Op {
//!         if gen.chance(0.3) { Op::Get } else { Op::Add(gen.below(10)) }
//!     }
//! }
//!
//! let report = Simulation::new(Counting).seeds(0..200).run().expect("no seed fails");
//! // 200, unless PAXOS_SIM_SEEDS in the environment asks for another number.
//! assert!(report.seeds > 0);
//! assert!(report.completed > 0);
//! ```

pub(crate) mod engine;
mod gen;

use std::fmt;
use std::ops::Range;

use crate::testing::linearizability::Model;
use crate::StateMachine;

use engine::{Sim, Stats};
pub use gen::Gen;

/// What [`Simulation`] runs: your state machine, the sequential model it must agree
/// with, and how clients draw commands.
///
/// Each run works on its own clone of the workload, so state kept in it (a counter of
/// machines made, say) starts afresh with each seed and replays.
///
/// The machine's commands and outputs cross the simulated network in postcard, as they
/// would between processes; outputs are compared with the model's by `==`.
pub trait Workload: Clone {
    /// The replicated state machine under test.
    type Machine: StateMachine<Command: Clone + fmt::Debug, Output: Clone + fmt::Debug + PartialEq>;
    /// Its sequential specification: given the same commands in the same order, the
    /// same outputs.
    type Model: Model<
        Input = <Self::Machine as StateMachine>::Command,
        Output = <Self::Machine as StateMachine>::Output,
    >;

    /// A fresh state machine, as a replica starts with (every replica of every run gets
    /// its own, and a restarted replica a new one).
    fn machine(&self) -> Self::Machine;

    /// The model (its [`Model::init`] is the state of a fresh machine).
    fn model(&self) -> Self::Model;

    /// The next command of simulated client `client` (0-based). Draw any randomness from
    /// `gen`, never from elsewhere, so that runs replay.
    fn command(&self, gen: &mut Gen, client: usize) -> <Self::Machine as StateMachine>::Command;

    /// Whether client `client`'s next operation is a [read](crate::Request::read), and
    /// which read-only command (one your [`StateMachine::query`] answers). The default,
    /// `None`, sends every command through the log. Reads are checked like everything
    /// else: each answer must be what the model gives for the state after some prefix of
    /// the executed commands, a prefix that holds every write completed before the read
    /// was sent, nothing sent after it returned, and no less than an earlier read saw.
    fn read(
        &self,
        gen: &mut Gen,
        client: usize,
    ) -> Option<<Self::Machine as StateMachine>::Command> {
        let _ = (gen, client);
        None
    }
}

/// Runs a [`Workload`] for many seeds. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Simulation<W> {
    workload: W,
    seeds: Range<u64>,
    replicas: Option<usize>,
    environment: bool,
}

impl<W: Workload> Simulation<W> {
    /// A simulation of `workload` for seeds `0..100`, three or five replicas as each seed
    /// draws.
    pub fn new(workload: W) -> Self {
        Simulation {
            workload,
            seeds: 0..100,
            replicas: None,
            environment: true,
        }
    }

    /// The seeds to run. `PAXOS_SIM_SEEDS=N` in the environment replaces the range with
    /// `0..N`, and `PAXOS_SIM_SEED=S` with the one seed `S` (see
    /// [`Simulation::ignore_environment`]).
    pub fn seeds(mut self, seeds: Range<u64>) -> Self {
        self.seeds = seeds;
        self
    }

    /// Every seed runs `n` replicas (3 or 5 are the interesting sizes; 1 to 7 are
    /// allowed) instead of drawing three or five. With fewer than three there is no
    /// fault budget (`f = 0`): the network still loses, delays and partitions, but no
    /// replica crashes or loses its storage, so snapshots are rarely installed.
    ///
    /// # Panics
    /// If `n` is 0 or above 7.
    pub fn replicas(mut self, n: usize) -> Self {
        assert!((1..=7).contains(&n), "1 to 7 replicas, not {n}");
        self.replicas = Some(n);
        self
    }

    /// Runs exactly the seeds given, whatever `PAXOS_SIM_SEED(S)` say.
    pub fn ignore_environment(mut self) -> Self {
        self.environment = false;
        self
    }

    /// The seeds this simulation will run.
    pub fn seed_list(&self) -> Vec<u64> {
        if self.environment {
            if let Some(s) = env_u64("PAXOS_SIM_SEED") {
                return vec![s];
            }
            if let Some(n) = env_u64("PAXOS_SIM_SEEDS") {
                return (0..n).collect();
            }
        }
        self.seeds.clone().collect()
    }

    /// Runs one seed.
    pub fn run_seed(&self, seed: u64) -> Result<Report, Failure> {
        let replicas = self.replicas;
        let sim = Sim::with_faults(self.workload.clone(), seed, engine::Mutation::None, |f| {
            if let Some(n) = replicas {
                f.nodes = n;
            }
        });
        let nodes = sim.replicas();
        match sim.run() {
            Ok(stats) => Ok(Report::from_stats(1, &stats)),
            Err(v) => Err(Failure {
                seed,
                replicas: nodes,
                tick: v.tick,
                what: v.what,
            }),
        }
    }

    /// Runs every seed, stopping at the first that fails.
    pub fn run(&self) -> Result<Report, Failure> {
        let mut total = Report::default();
        for seed in self.seed_list() {
            let r = self.run_seed(seed)?;
            total.add(&r);
        }
        Ok(total)
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// What a successful [`Simulation::run`] did, summed over its seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Seeds run.
    pub seeds: u64,
    /// Replica steps (messages, requests and ticks handled).
    pub steps: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Client requests completed (writes through the log).
    pub completed: u64,
    /// Reads answered (not through the log).
    pub reads: u64,
    /// Replica crashes (some in the middle of a write).
    pub crashes: u64,
    /// Replicas that lost their storage.
    pub amnesia: u64,
    /// Recoveries from lost storage completed.
    pub recoveries: u64,
    /// Leaderships that announced a new view to followers (a single replica announces
    /// none).
    pub elections: u64,
    /// Snapshots sent (state transfers).
    pub snapshots: u64,
    /// Client sessions that expired (evicted).
    pub expired: u64,
}

impl Report {
    fn from_stats(seeds: u64, s: &Stats) -> Self {
        Report {
            seeds,
            steps: s.steps,
            delivered: s.delivered,
            completed: s.completed,
            reads: s.reads,
            crashes: s.crashes,
            amnesia: s.amnesia,
            recoveries: s.recoveries,
            elections: s.elections,
            snapshots: s.snapshots,
            expired: s.expired,
        }
    }

    fn add(&mut self, o: &Report) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.delivered += o.delivered;
        self.completed += o.completed;
        self.reads += o.reads;
        self.crashes += o.crashes;
        self.amnesia += o.amnesia;
        self.recoveries += o.recoveries;
        self.elections += o.elections;
        self.snapshots += o.snapshots;
        self.expired += o.expired;
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} seeds: {} steps, {} messages, {} requests completed, {} reads, {} crashes, \
             {} wiped and {} recovered, {} new views, {} snapshots sent, {} expired sessions",
            self.seeds,
            self.steps,
            self.delivered,
            self.completed,
            self.reads,
            self.crashes,
            self.amnesia,
            self.recoveries,
            self.elections,
            self.snapshots,
            self.expired
        )
    }
}

/// A seed that broke a check. Its `Display` names the seed, what broke and how to
/// replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// How many replicas it ran.
    pub replicas: usize,
    /// The simulated tick at which the check failed.
    pub tick: u64,
    /// What was wrong.
    pub what: String,
}

impl Failure {
    /// The command that replays this seed: the current test (when run by the standard
    /// test harness, whose threads are named after their tests) with `PAXOS_SIM_SEED`.
    pub fn replay_command(&self) -> String {
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(|n| format!(" {n} -- --exact --nocapture"))
            .unwrap_or_default();
        format!("PAXOS_SIM_SEED={} cargo test{test}", self.seed)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} ({} replicas) failed at tick {}: {}\nreplay: {}",
            self.seed,
            self.replicas,
            self.tick,
            self.what,
            self.replay_command()
        )
    }
}

impl std::error::Error for Failure {}
