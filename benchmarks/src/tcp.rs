//! `tcp`: five `bank node` processes over TCP on 127.0.0.1 against a five-member etcd
//! cluster on 127.0.0.1, both durable (data directories on the normal disk, fsync on)
//! and in memory (`bank node --memory`; etcd's data directories on a tmpfs), at several
//! counts of closed-loop clients. Each run starts a fresh cluster, lets the clients run
//! for a warm-up, then counts for a window the commands that complete in it and their
//! latencies ([`mod@crate::runtime`]'s harness, the same for both systems). Per round, each
//! storage mode and client count runs both systems back to back (ours first in odd
//! rounds); the table gives the median of the rounds and the ratio.
//!
//! Ours: one-unit transfers through the library's TCP client path ([`RemoteCluster`]
//! endpoints, a [`Client`] with a session each, redirects followed to the leader).
//! etcd (`etcd.rs`, feature `etcd`): Puts of 16-byte values through its gRPC KV
//! API, each client under a key of its own, sent to the leader. Without the feature, or
//! with `--ours-only`, only our side is measured.
//!
//! Every process started (nodes, members) is killed and reaped on every way out (their
//! guards drop), and their temporary directories removed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Result};
use bank_app::{await_agreement, Account, Bank, BankCommand, RemoteCluster, RemoteOptions};
use paxos_core::{Client, ClientOptions, Endpoint};

use crate::bank_nodes::{bank_binary, interrupted, Nodes, PATIENCE, REQUESTS_PER_SLOT};
use crate::runtime::{self, Phase, Recorder, RunStats, Timing};
use crate::{median_stats, Progress, NODES};

/// The options of `tcp` (its help text is the `Command::Tcp` variant's).
#[derive(clap::Args)]
pub(crate) struct TcpArgs {
    /// Concurrent closed-loop clients (one command in flight each), per point.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 64, 256])]
    clients: Vec<usize>,
    /// Storage modes: `durable` (ours: a data directory per node, fsync before
    /// answering; etcd: data directories on the same disk) and `memory` (ours:
    /// `bank node --memory`; etcd: data directories on --tmpfs).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Storage::Durable, Storage::Memory])]
    storage: Vec<Storage>,
    /// Seconds each run measures (after its warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Seconds each run warms up first (clients connect, ours register their sessions);
    /// nothing is counted meanwhile.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds; the table reports each figure's median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Connections the clients of one system share: ours open at most this many to each
    /// node (`RemoteCluster` pipelines up to 64 calls on each), etcd's clients spread
    /// over this many gRPC connections to the leader (HTTP/2: many calls at a time on
    /// each). Default: one per client up to 64, the most client connections a `bank
    /// node` accepts from one IP address.
    #[arg(long)]
    connections: Option<usize>,
    /// The `bank` binary (default: `bank` next to this executable, as
    /// `cargo build --release -p bank-app` leaves it in `target/release/`).
    #[arg(long)]
    bank: Option<PathBuf>,
    /// The `etcd` binary (default: `etcd` on PATH; Debian: `apt-get install -y
    /// etcd-server`). Needs the `etcd` feature.
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Where etcd's in-memory comparison puts its data directories (a tmpfs).
    #[arg(long, default_value = "/dev/shm")]
    tmpfs: PathBuf,
    /// Measure our side only.
    #[arg(long)]
    ours_only: bool,
}

/// The most client connections a `bank node` accepts from one IP address
/// (`TcpConfig::max_client_connections_per_ip`, not settable from the cluster file); a
/// client beyond it is refused in the handshake and retries in vain. All of this
/// benchmark's clients come from 127.0.0.1.
const MAX_CONNECTIONS: usize = 64;

/// Where each system keeps its state.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Storage {
    /// On the normal disk, synced before answering.
    Durable,
    /// In memory (ours) or on a tmpfs (etcd).
    Memory,
}

impl Storage {
    fn name(self) -> &'static str {
        match self {
            Storage::Durable => "durable",
            Storage::Memory => "memory",
        }
    }
}

/// The peer, when built in (`--features etcd`) and not turned off.
#[cfg(feature = "etcd")]
type Peer = crate::etcd::Etcd;

/// Without the `etcd` feature there is no peer to measure.
#[cfg(not(feature = "etcd"))]
enum Peer {}

/// Finds the peer: none with `--ours-only`; otherwise etcd, failing (with how to install
/// it) when its binary is missing.
#[cfg(feature = "etcd")]
fn find_peer(args: &TcpArgs) -> Result<Option<Peer>> {
    if args.ours_only {
        return Ok(None);
    }
    crate::etcd::Etcd::find(args.etcd.clone(), args.tmpfs.clone()).map(Some)
}

/// Without the `etcd` feature: no peer, and a word on how to get one.
#[cfg(not(feature = "etcd"))]
fn find_peer(args: &TcpArgs) -> Result<Option<Peer>> {
    if !args.ours_only {
        eprintln!(
            "etcd is not built in: measuring our side only (for etcd: cargo run --release -p benchmarks --features etcd -- tcp)"
        );
    }
    Ok(None)
}

/// One run of the peer.
#[cfg(feature = "etcd")]
async fn run_peer(
    peer: &Peer,
    storage: Storage,
    clients: usize,
    connections: usize,
    timing: &Timing,
    progress: &Progress,
) -> Result<RunStats> {
    crate::etcd::run(
        peer,
        storage == Storage::Memory,
        clients,
        connections,
        timing,
        progress,
    )
    .await
}

/// One run of the peer (there is none without the feature).
#[cfg(not(feature = "etcd"))]
async fn run_peer(
    peer: &Peer,
    _: Storage,
    _: usize,
    _: usize,
    _: &Timing,
    _: &Progress,
) -> Result<RunStats> {
    match *peer {}
}

/// One closed-loop client: one-unit transfers over the bank's accounts, round-robin,
/// until the phase says stop.
async fn client(endpoints: Vec<Arc<dyn Endpoint>>, index: usize, phase: Phase) -> Recorder {
    // A loaded leader answers late, not never: a long attempt timeout keeps the client
    // from retrying elsewhere (etcd's clients wait as long).
    let options = ClientOptions::default().with_attempt_timeout(Duration::from_secs(10));
    let accounts: Vec<Account> = Account::default_set().collect();
    let mut client: Client<Bank> = Client::with_options(endpoints, options);
    let mut rec = Recorder::new(phase);
    let mut k = index;
    while rec.running() {
        let command = BankCommand::Transfer {
            from: accounts[k % accounts.len()],
            to: accounts[(k + 1) % accounts.len()],
            amount: 1,
        };
        k += 1;
        let started = Instant::now();
        // Moved or rejected by the bank (the sender ran dry): executed either way.
        match client.execute_within(&command, PATIENCE).await {
            Ok(_) => rec.completed(started),
            Err(_) => rec.failed(),
        }
    }
    rec
}

/// One run of ours: five fresh `bank node`s, `clients` closed-loop clients for
/// `timing`, then a check that all five executed the same slots to the same balances,
/// at least as many as the transfers the clients saw complete, with the bank's total
/// unchanged.
async fn run_ours(
    bank: &std::path::Path,
    storage: Storage,
    clients: usize,
    connections: usize,
    timing: &Timing,
    progress: &Progress,
) -> Result<RunStats> {
    let mut nodes = Nodes::start(bank.to_path_buf(), storage == Storage::Memory, "tcp-")?;
    let options = RemoteOptions {
        connections_per_node: connections.max(1),
        ..RemoteOptions::default()
    };
    let cluster = RemoteCluster::new(&nodes.config, options)?;
    nodes.await_serving(&cluster).await?;

    let phase = Phase::new();
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(client(cluster.endpoints(), i, phase.clone())))
        .collect();
    let window = runtime::drive(&phase, timing, progress).await;
    let mut recorders = Vec::new();
    for t in tasks {
        recorders.push(t.await?);
    }
    let stats = RunStats::of(recorders, window);
    nodes.check_running()?;

    let agreement = await_agreement(&cluster, Duration::from_secs(10)).await;
    ensure!(
        agreement.agree && agreement.nodes.len() == NODES,
        "ours: replicas disagree after the run (or not all answered): {agreement}"
    );
    ensure!(
        agreement.total() == Bank::new().total(),
        "ours: money was created or destroyed: total {}",
        agreement.total()
    );
    // A slot holds at most `--requests-per-slot` transfers.
    ensure!(
        agreement.executed.saturating_mul(REQUESTS_PER_SLOT) >= stats.completed,
        "ours: {} slots executed for {} completed transfers ({REQUESTS_PER_SLOT} per slot at most)",
        agreement.executed,
        stats.completed
    );
    Ok(stats)
}

/// Medians per storage mode and client count.
struct Row {
    storage: Storage,
    clients: usize,
    ours: RunStats,
    /// `None` when the peer was not measured.
    peer: Option<RunStats>,
}

/// Every round: per storage mode, per client count, both systems back to back (ours
/// first in odd rounds).
async fn rounds(
    args: &TcpArgs,
    bank: &std::path::Path,
    peer: Option<&Peer>,
    timing: &Timing,
    progress: &Progress,
) -> Result<Vec<Row>> {
    let points: Vec<(Storage, usize)> = args
        .storage
        .iter()
        .flat_map(|&s| args.clients.iter().map(move |&c| (s, c)))
        .collect();
    let mut ours: Vec<Vec<RunStats>> = vec![Vec::new(); points.len()];
    let mut theirs: Vec<Vec<RunStats>> = vec![Vec::new(); points.len()];
    for round in 1..=args.rounds {
        for (i, &(storage, clients)) in points.iter().enumerate() {
            let connections = args
                .connections
                .unwrap_or(clients.min(MAX_CONNECTIONS))
                .max(1);
            for ours_now in [round % 2 == 1, round % 2 == 0] {
                let name = if ours_now { "ours" } else { "etcd" };
                if ours_now {
                    progress.bar.set_message(format!(
                        "round {round}/{} {} C={clients} {name}",
                        args.rounds,
                        storage.name()
                    ));
                    ours[i].push(
                        run_ours(bank, storage, clients, connections, timing, progress).await?,
                    );
                } else if let Some(peer) = peer {
                    progress.bar.set_message(format!(
                        "round {round}/{} {} C={clients} {name}",
                        args.rounds,
                        storage.name()
                    ));
                    theirs[i].push(
                        run_peer(peer, storage, clients, connections, timing, progress).await?,
                    );
                }
            }
        }
    }
    Ok(points
        .into_iter()
        .zip(ours.iter().zip(&theirs))
        .map(|((storage, clients), (o, t))| Row {
            storage,
            clients,
            ours: median_stats(o),
            peer: (!t.is_empty()).then(|| median_stats(t)),
        })
        .collect())
}

/// The `tcp` subcommand: checks the options and the binaries, runs the rounds (stopping
/// every process on Ctrl-C or SIGTERM), prints the table.
pub(crate) fn run(args: TcpArgs) -> Result<()> {
    ensure!(
        args.rounds > 0 && args.seconds > 0.0 && args.warmup >= 0.0,
        "--rounds and --seconds must be positive, --warmup not negative"
    );
    ensure!(
        !args.clients.is_empty() && args.clients.iter().all(|&c| c > 0),
        "--clients must list positive counts"
    );
    ensure!(!args.storage.is_empty(), "--storage must list a mode");
    ensure!(
        args.connections.is_none_or(|c| (1..=MAX_CONNECTIONS).contains(&c)),
        "--connections must be 1 to {MAX_CONNECTIONS}: a `bank node` refuses more client connections from one IP address"
    );
    let bank = bank_binary(args.bank.clone())?;
    let peer = find_peer(&args)?;
    let timing = Timing {
        warmup: Duration::try_from_secs_f64(args.warmup)?,
        measure: Duration::try_from_secs_f64(args.seconds)?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let systems = if peer.is_some() { 2 } else { 1 };
    let per_run = (timing.warmup + timing.measure).as_millis() as u64;
    let progress = Progress::new(
        systems * args.rounds as u64 * (args.storage.len() * args.clients.len()) as u64 * per_run,
    );
    let outcome = rt.block_on(async {
        tokio::select! {
            // Dropping the rounds' future (on a signal) drops the running cluster's
            // guard: every process is killed and reaped before this returns.
            r = rounds(&args, &bank, peer.as_ref(), &timing, &progress) => r,
            r = interrupted() => r.and(Err(anyhow!("interrupted; every process was stopped"))),
        }
    });
    progress.bar.finish_and_clear();
    let rows = outcome?;

    println!(
        "tcp: 5 processes per system on 127.0.0.1, {} runtime threads for the clients, closed-loop clients, connections: {}, {:.1} s warm-up + {:.1} s measured per run, a fresh cluster per run, median of {} rounds; agreement checked after every run",
        rt.metrics().num_workers(),
        args.connections.map_or(
            format!("one per client up to {MAX_CONNECTIONS}"),
            |c| c.to_string()
        ),
        args.warmup,
        args.seconds,
        args.rounds
    );
    print_peer(peer.as_ref());
    println!();
    println!("| storage | clients | ours (ops/s) | etcd (ops/s) | ours / etcd | ours p50 / p99 (ms) | etcd p50 / p99 (ms) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let (theirs, ratio, latency) = match &r.peer {
            Some(p) => (
                format!("{:.0}", p.ops_per_sec),
                format!("{:.2}", r.ours.ops_per_sec / p.ops_per_sec),
                format!("{:.2} / {:.2}", p.p50_ms, p.p99_ms),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {} | {:.0} | {theirs} | {ratio} | {:.2} / {:.2} | {latency} |",
            r.storage.name(),
            r.clients,
            r.ours.ops_per_sec,
            r.ours.p50_ms,
            r.ours.p99_ms,
        );
    }
    let failed_ours: u64 = rows.iter().map(|r| r.ours.failed).sum();
    let failed_peer: u64 = rows.iter().filter_map(|r| r.peer).map(|p| p.failed).sum();
    if failed_ours + failed_peer > 0 {
        println!();
        println!("commands given up on (all runs): ours {failed_ours}, etcd {failed_peer}");
    }
    let starved_ours: u64 = rows.iter().map(|r| r.ours.starved).sum();
    let starved_peer: u64 = rows.iter().filter_map(|r| r.peer).map(|p| p.starved).sum();
    if starved_ours + starved_peer > 0 {
        println!();
        println!(
            "clients that completed nothing in a window (all runs): ours {starved_ours}, etcd {starved_peer}"
        );
    } else {
        println!();
        println!("every client completed commands in every window");
    }
    Ok(())
}

/// Says which etcd ran, and how.
#[cfg(feature = "etcd")]
fn print_peer(peer: Option<&Peer>) {
    match peer {
        Some(e) => println!(
            "etcd: {} ({}), members started with {} (durable: data dirs under the system's temporary directory; memory: under {})",
            e.version,
            e.path.display(),
            crate::etcd::FLAGS,
            e.tmpfs.display()
        ),
        None => println!("etcd: not measured (--ours-only)"),
    }
}

/// Says that etcd was not measured.
#[cfg(not(feature = "etcd"))]
fn print_peer(_: Option<&Peer>) {
    println!("etcd: not measured (build with --features etcd)");
}
