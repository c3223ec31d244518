//! Issue 9's benchmark suite: our core against its peers, in the same harness and the
//! same run, so that the ratio is printed rather than remembered. From the workspace root:
//!
//! ```sh
//! cargo run --release -p benchmarks -- core --plot docs/benchmarks-core.svg
//! ```
//!
//! `core` runs, per round and interleaved, our sans-IO core and OmniPaxos in the lockstep
//! shape: five replicas in one thread, B requests submitted at the leader, messages moved
//! until the cluster is quiet, repeated until `--commands` commands have executed; every
//! run ends by checking that all replicas agree. The table gives the median of the rounds.
//! Results and how to read them: `docs/benchmarks.md`.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod omni;
mod ours;
mod plot;

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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Core(args) => core(args),
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

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
