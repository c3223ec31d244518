//! Issue 9's benchmark suite: our code against its peers, in the same harness and the
//! same run, so that the ratio is printed rather than remembered. From the workspace root:
//!
//! ```sh
//! cargo run --release -p benchmarks -- core --plot docs/benchmarks-core.svg
//! cargo run --release -p benchmarks -- runtime --plot docs/benchmarks-runtime.svg
//! cargo build --release -p bank-app && cargo run --release -p benchmarks -- failover
//! cargo run --release -p benchmarks -- snapshot
//! cargo build --release -p bank-app && cargo run --release -p benchmarks --features etcd -- tcp
//! ```
//!
//! `core` runs, per round and interleaved, our sans-IO core and OmniPaxos in the lockstep
//! shape: five replicas in one thread, B requests submitted at the leader, messages moved
//! until the cluster is quiet, repeated until `--commands` commands have executed; every
//! run ends by checking that all replicas agree. The table gives the median of the rounds.
//!
//! `runtime` runs, per round and interleaved, our node driver and openraft in one shape:
//! five nodes in this process on one tokio runtime, C closed-loop clients for a fixed
//! time after a warm-up; throughput and p50/p99 latency, agreement checked after every
//! run.
//!
//! `failover` starts five `bank node` processes on 127.0.0.1, keeps a few clients busy,
//! kills the leader with SIGKILL and measures the time until a client sees its next
//! commit, over several trials.
//!
//! `snapshot` fills a state of 100 MiB through the log of three replicas over TCP with
//! durable storage, wipes a follower and times its recovery by chunked state transfer,
//! with the leader's checkpoint stall and the process's peak RSS.
//!
//! `tcp` runs, per round and interleaved, five `bank node` processes over TCP and a
//! five-member etcd cluster on 127.0.0.1, durable and in memory, at 1 / 64 / 256
//! closed-loop clients: throughput and p50/p99 latency, agreement checked after every
//! run. etcd's client is behind the `etcd` feature (off by default, so that the
//! workspace's default build does not compile a gRPC stack); without it `tcp` measures
//! our side only.
//!
//! Results and how to read them: `docs/benchmarks.md`.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod bank_nodes;
#[cfg(feature = "etcd")]
mod etcd;
mod failover;
mod nodes;
mod omni;
mod ours;
mod plot;
mod raft;
mod runtime;
mod snapshot;
mod tcp;

/// Replicas per cluster.
const NODES: usize = 5;

#[derive(Parser)]
#[command(about = "Benchmarks of paxos-core against its peers, measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The sans-IO core against OmniPaxos: 5 replicas in one thread, lockstep batches.
    Core(CoreArgs),
    /// The node driver against openraft: 5 nodes in one process, C closed-loop clients.
    Runtime(RuntimeArgs),
    /// Five `bank node` processes over TCP: time from SIGKILL of the leader to the next
    /// commit a client sees.
    Failover(failover::FailoverArgs),
    /// Three replicas over TCP with durable storage: a 100 MiB state transferred to a
    /// wiped replica, and the leader's checkpoint stall.
    Snapshot(snapshot::SnapshotArgs),
    /// Five `bank node` processes over TCP against five etcd members (`--features
    /// etcd`), durable and in memory, C closed-loop clients.
    Tcp(tcp::TcpArgs),
}

#[derive(clap::Args)]
struct CoreArgs {
    /// Requests submitted at the leader before the cluster is pumped until quiet.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 100, 1000])]
    batches: Vec<u64>,
    /// Commands per run (each system, each batch size, each round).
    #[arg(long, default_value_t = 200_000)]
    commands: u64,
    /// Rounds; the table reports each figure's median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client sessions the commands are spread over, round-robin.
    #[arg(long, default_value_t = 8)]
    sessions: u64,
    /// Persist our replicas' writes to `MemStorage` (`mem`), or drop them (`skip`).
    /// OmniPaxos always writes its in-memory storage: that is where its log lives.
    #[arg(long, value_enum, default_value_t = Persist::Mem)]
    persist: Persist,
    /// Write a plot of throughput against batch size here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The options of `runtime` (its help text is the `Command::Runtime` variant's).
#[derive(clap::Args)]
struct RuntimeArgs {
    /// Concurrent closed-loop clients (one command in flight each), per point.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 256, 1024, 4096])]
    clients: Vec<usize>,
    /// Seconds each run measures (after its warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds each run warms up first (clients register their sessions, the leader
    /// settles); nothing is counted meanwhile.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds; the table reports each figure's median. Odd rounds run ours first, even
    /// rounds openraft first.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker threads of the tokio runtime both clusters and their clients share
    /// (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write a plot of throughput against clients here (SVG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// What our replicas do with their writes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Persist {
    /// Into `MemStorage`, as a user's test setup would.
    Mem,
    /// Nowhere: the protocol's cost alone.
    Skip,
}

/// One measured run.
struct RunResult {
    elapsed: Duration,
    commands: u64,
}

impl RunResult {
    fn ops_per_sec(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
}

/// Progress over the whole invocation, on stderr (hidden when it is not a terminal).
struct Progress {
    bar: ProgressBar,
    /// Position at the start of the current run.
    base: Cell<u64>,
    /// Commands of the current run last reported.
    last: Cell<u64>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {percent:>3}% {msg} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Progress {
            bar,
            base: Cell::new(0),
            last: Cell::new(0),
        }
    }

    fn start_run(&self, message: String) {
        self.base.set(self.bar.position());
        self.last.set(0);
        self.bar.set_message(message);
    }

    /// Reports `done` commands of the current run, at most every 4,096 so that the
    /// bar costs nothing measurable.
    fn advance(&self, done: u64) {
        if done - self.last.get() >= 4096 {
            self.last.set(done);
            self.bar.set_position(self.base.get() + done);
        }
    }

    fn end_run(&self, commands: u64) {
        self.bar.set_position(self.base.get() + commands);
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Medians per batch size: (batch, ours ops/s, OmniPaxos ops/s).
type CoreRow = (u64, f64, f64);

fn run_core(args: &CoreArgs, progress: &Progress) -> Result<Vec<CoreRow>> {
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); args.batches.len()];
    let mut omni: Vec<Vec<f64>> = vec![Vec::new(); args.batches.len()];
    for round in 1..=args.rounds {
        for (i, &batch) in args.batches.iter().enumerate() {
            // Alternate which system goes first, so neither always runs on a warmer
            // (or more throttled) machine.
            for ours_now in [round % 2 == 1, round % 2 == 0] {
                let name = if ours_now { "ours" } else { "omnipaxos" };
                progress.start_run(format!("round {round}/{} B={batch} {name}", args.rounds));
                let r = if ours_now {
                    ours::run(
                        batch,
                        args.commands,
                        args.sessions,
                        args.persist == Persist::Mem,
                        progress,
                    )?
                } else {
                    omni::run(batch, args.commands, args.sessions, progress)?
                };
                progress.end_run(args.commands);
                let into = if ours_now { &mut ours } else { &mut omni };
                into[i].push(r.ops_per_sec());
            }
        }
    }
    Ok(args
        .batches
        .iter()
        .zip(ours.into_iter().zip(omni))
        .map(|(&b, (o, p))| (b, median(o), median(p)))
        .collect())
}

fn core(args: CoreArgs) -> Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.commands > 0,
        "--rounds and --commands must be positive"
    );
    anyhow::ensure!(
        !args.batches.is_empty() && args.batches.iter().all(|&b| b > 0),
        "--batches must list positive sizes"
    );
    let total = 2 * args.rounds as u64 * args.batches.len() as u64 * args.commands;
    let progress = Progress::new(total);
    let rows = run_core(&args, &progress)?;
    progress.bar.finish_and_clear();

    println!(
        "core, lockstep: 5 replicas in one thread, {} commands per run, {} sessions, ours persisting {}, median of {} rounds; replicas agreed after every run",
        args.commands,
        args.sessions,
        match args.persist {
            Persist::Mem => "to MemStorage",
            Persist::Skip => "nothing",
        },
        args.rounds
    );
    println!();
    println!("| batch | ours (ops/s) | OmniPaxos (ops/s) | ours / OmniPaxos |");
    println!("|---:|---:|---:|---:|");
    for &(b, o, p) in &rows {
        println!("| {b} | {o:.0} | {p:.0} | {:.3} |", o / p);
    }
    if let Some(path) = &args.plot {
        plot::core(path, &rows)?;
        println!();
        println!("plot written to {}", path.display());
    }
    Ok(())
}

/// Medians per client count, one [`runtime::RunStats`] per system.
pub(crate) struct RuntimeRow {
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Our node driver.
    pub(crate) ours: runtime::RunStats,
    /// openraft.
    pub(crate) raft: runtime::RunStats,
}

/// The median of each figure over the rounds.
fn median_stats(runs: &[runtime::RunStats]) -> runtime::RunStats {
    let of = |f: fn(&runtime::RunStats) -> f64| median(runs.iter().map(f).collect());
    runtime::RunStats {
        ops_per_sec: of(|r| r.ops_per_sec),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        completed: runs.iter().map(|r| r.completed).sum(),
        failed: runs.iter().map(|r| r.failed).sum(),
        starved: runs.iter().map(|r| r.starved).sum(),
    }
}

/// Runs every round of `runtime`: per round, per client count, both systems back to
/// back (ours first in odd rounds); returns the medians per client count.
async fn run_runtime(
    args: &RuntimeArgs,
    timing: &runtime::Timing,
    progress: &Progress,
) -> Result<Vec<RuntimeRow>> {
    let mut ours: Vec<Vec<runtime::RunStats>> = vec![Vec::new(); args.clients.len()];
    let mut raft: Vec<Vec<runtime::RunStats>> = vec![Vec::new(); args.clients.len()];
    for round in 1..=args.rounds {
        for (i, &clients) in args.clients.iter().enumerate() {
            // Alternate which system goes first, as `core` does.
            for ours_now in [round % 2 == 1, round % 2 == 0] {
                let name = if ours_now { "ours" } else { "openraft" };
                progress
                    .bar
                    .set_message(format!("round {round}/{} C={clients} {name}", args.rounds));
                if ours_now {
                    ours[i].push(nodes::run(clients, timing, progress).await?);
                } else {
                    raft[i].push(raft::run(clients, timing, progress).await?);
                }
            }
        }
    }
    Ok(args
        .clients
        .iter()
        .zip(ours.iter().zip(&raft))
        .map(|(&clients, (o, r))| RuntimeRow {
            clients,
            ours: median_stats(o),
            raft: median_stats(r),
        })
        .collect())
}

/// The `runtime` subcommand: checks the options, runs the rounds on a runtime of its
/// own, prints the table and writes the plot.
fn runtime(args: RuntimeArgs) -> Result<()> {
    anyhow::ensure!(
        args.rounds > 0 && args.seconds > 0.0 && args.warmup >= 0.0,
        "--rounds and --seconds must be positive, --warmup not negative"
    );
    anyhow::ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list positive counts"
    );
    let timing = runtime::Timing {
        warmup: Duration::try_from_secs_f64(args.warmup)?,
        measure: Duration::try_from_secs_f64(args.seconds)?,
    };
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    let per_run = (timing.warmup + timing.measure).as_millis() as u64;
    let progress = Progress::new(2 * args.rounds as u64 * args.clients.len() as u64 * per_run);
    let rows = rt.block_on(run_runtime(&args, &timing, &progress))?;
    progress.bar.finish_and_clear();

    println!(
        "runtime: 5 nodes in one process, {threads} runtime threads, closed-loop clients, {:.1} s warm-up + {:.1} s measured per run, median of {} rounds; replicas agreed after every run",
        args.warmup, args.seconds, args.rounds
    );
    println!();
    println!("| clients | ours (ops/s) | openraft (ops/s) | ours / openraft | ours p50 / p99 (ms) | openraft p50 / p99 (ms) |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.2} / {:.2} | {:.2} / {:.2} |",
            r.clients,
            r.ours.ops_per_sec,
            r.raft.ops_per_sec,
            r.ours.ops_per_sec / r.raft.ops_per_sec,
            r.ours.p50_ms,
            r.ours.p99_ms,
            r.raft.p50_ms,
            r.raft.p99_ms
        );
    }
    let failed: u64 = rows.iter().map(|r| r.ours.failed + r.raft.failed).sum();
    if failed > 0 {
        println!();
        println!(
            "commands given up on (all runs): ours {}, openraft {}",
            rows.iter().map(|r| r.ours.failed).sum::<u64>(),
            rows.iter().map(|r| r.raft.failed).sum::<u64>()
        );
    }
    let starved: u64 = rows.iter().map(|r| r.ours.starved + r.raft.starved).sum();
    if starved > 0 {
        println!();
        println!("clients that completed nothing in a window (all runs): {starved}");
    }
    if let Some(path) = &args.plot {
        plot::runtime(path, &rows)?;
        println!();
        println!("plot written to {}", path.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Core(args) => core(args),
        Command::Runtime(args) => runtime(args),
        Command::Failover(args) => failover::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Tcp(args) => tcp::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One small run of each system at B = 10: both finish and agree (the runs check
    /// agreement themselves and fail otherwise).
    #[test]
    fn smoke_core_agrees() {
        let progress = Progress::new(0);
        progress
            .bar
            .set_draw_target(indicatif::ProgressDrawTarget::hidden());
        let ours = ours::run(10, 2_000, 8, true, &progress).expect("ours runs and agrees");
        let omni = omni::run(10, 2_000, 8, &progress).expect("omnipaxos runs and agrees");
        assert_eq!(ours.commands, 2_000);
        assert_eq!(omni.commands, 2_000);
    }

    /// One short run of each system at 8 clients: both finish, complete commands and
    /// agree (the runs check agreement themselves and fail otherwise).
    #[test]
    fn smoke_runtime_agrees() {
        let progress = Progress::new(0);
        progress
            .bar
            .set_draw_target(indicatif::ProgressDrawTarget::hidden());
        let timing = runtime::Timing {
            warmup: Duration::from_millis(200),
            measure: Duration::from_millis(300),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let ours = rt
            .block_on(nodes::run(8, &timing, &progress))
            .expect("ours runs and agrees");
        let raft = rt
            .block_on(raft::run(8, &timing, &progress))
            .expect("openraft runs and agrees");
        assert!(ours.ops_per_sec > 0.0 && ours.failed == 0);
        assert!(raft.ops_per_sec > 0.0 && raft.failed == 0);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
