//! `failover`: five `bank node` processes on 127.0.0.1 with durable data directories,
//! a few closed-loop clients sending one-unit transfers through the library's client
//! path ([`RemoteCluster`] endpoints), and per trial: SIGKILL the leader, then measure
//! the time from the kill to the first commit a client sees answered by another node.
//! The killed node is restarted (same data directory) before the next trial.
//!
//! Every node process is killed and reaped when [`Nodes`] drops: at the end, on an
//! error, on a panic, and on Ctrl-C or SIGTERM (the run's future is dropped). Data
//! directories, logs and the cluster file live in a temporary directory removed then.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use bank_app::{await_agreement, Account, Bank, BankCommand, RemoteCluster, RemoteOptions};
use indicatif::{ProgressBar, ProgressStyle};
use paxos_core::{Client, ClientOptions, Endpoint, NodeId};

use crate::bank_nodes::{bank_binary, interrupted, Nodes, PATIENCE};
use crate::{median, NODES};

/// The options of `failover` (its help text is the `Command::Failover` variant's).
#[derive(clap::Args)]
pub(crate) struct FailoverArgs {
    /// Trials: each kills the leader once.
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// Concurrent closed-loop clients (one transfer in flight each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Seconds the healthy cluster serves the clients before each kill.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// The clients' longest backoff between attempts while no leader answers, in
    /// milliseconds (the library's default is 500; a long one measures the client's
    /// sleep more than the cluster's failover).
    #[arg(long, default_value_t = 50)]
    max_backoff_ms: u64,
    /// The `bank` binary (default: `bank` next to this executable, as
    /// `cargo build --release -p bank-app` leaves it in `target/release/`).
    #[arg(long)]
    bank: Option<PathBuf>,
}

/// One leader kill, as the clients see it.
struct Kill {
    /// The leader killed.
    victim: NodeId,
    /// Just before the SIGKILL.
    at: Instant,
    /// The first commit after `at` answered by another node, and that node.
    first: Option<(Instant, NodeId)>,
}

/// What the clients share with the trial loop.
#[derive(Default)]
struct Shared {
    /// Transfers committed so far (moved or rejected by the bank: both executed).
    commits: AtomicU64,
    /// Transfers the clients gave up on.
    failed: AtomicU64,
    /// The kill of the trial under way, if any.
    kill: Mutex<Option<Kill>>,
    /// Set once the trials are over: clients return after their command in flight.
    stop: AtomicBool,
}

impl Shared {
    /// A client saw a commit answered by `node` now.
    fn committed(&self, node: Option<NodeId>) {
        let now = Instant::now();
        self.commits.fetch_add(1, Ordering::Relaxed);
        let mut kill = self.kill.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(k), Some(node)) = (kill.as_mut(), node) {
            if k.first.is_none() && node != k.victim && now > k.at {
                k.first = Some((now, node));
            }
        }
    }
}

/// One closed-loop client: one-unit transfers over the accounts, round-robin, until
/// told to stop.
async fn client(
    endpoints: Vec<Arc<dyn Endpoint>>,
    index: usize,
    options: ClientOptions,
    shared: Arc<Shared>,
) {
    let accounts: Vec<Account> = Account::default_set().collect();
    let mut client: Client<Bank> = Client::with_options(endpoints, options);
    let mut k = index;
    while !shared.stop.load(Ordering::Relaxed) {
        let command = BankCommand::Transfer {
            from: accounts[k % accounts.len()],
            to: accounts[(k + 1) % accounts.len()],
            amount: 1,
        };
        k += 1;
        match client.execute_within(&command, PATIENCE).await {
            Ok(_) => shared.committed(client.leader()),
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One trial's outcome.
struct Trial {
    /// The leader killed.
    victim: NodeId,
    /// The node that answered the first commit after the kill.
    successor: NodeId,
    /// From the kill to that commit.
    gap: Duration,
}

/// Waits until the clients have committed something since `since` commits.
async fn await_progress(shared: &Shared, since: u64) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while shared.commits.load(Ordering::Relaxed) <= since {
        if Instant::now() >= deadline {
            bail!("the clients committed nothing for {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The trials: a healthy cluster serving the clients, the leader killed, the gap until
/// the next commit, the victim restarted.
async fn trials(
    args: &FailoverArgs,
    nodes: &mut Nodes,
    cluster: &RemoteCluster,
    shared: &Shared,
    bar: &ProgressBar,
) -> Result<Vec<Trial>> {
    let settle = Duration::try_from_secs_f64(args.settle)?;
    let mut out = Vec::new();
    for t in 1..=args.trials {
        bar.set_message(format!("trial {t}/{}: settling", args.trials));
        nodes.await_serving(cluster).await?;
        let before = shared.commits.load(Ordering::Relaxed);
        tokio::time::sleep(settle).await;
        await_progress(shared, before).await?;
        let victim = nodes.await_serving(cluster).await?;

        bar.set_message(format!(
            "trial {t}/{}: killed leader n{victim}",
            args.trials
        ));
        let at = Instant::now();
        *shared.kill.lock().unwrap_or_else(|e| e.into_inner()) = Some(Kill {
            victim,
            at,
            first: None,
        });
        nodes.kill(victim)?;
        let deadline = at + PATIENCE;
        let (next, successor) = loop {
            let first = shared
                .kill
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .and_then(|k| k.first);
            if let Some(first) = first {
                break first;
            }
            if Instant::now() >= deadline {
                bail!("no commit within {PATIENCE:?} of killing n{victim}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        *shared.kill.lock().unwrap_or_else(|e| e.into_inner()) = None;
        out.push(Trial {
            victim,
            successor,
            gap: next - at,
        });

        bar.set_message(format!("trial {t}/{}: restarting n{victim}", args.trials));
        nodes.spawn(victim)?;
        bar.inc(1);
    }
    nodes.await_serving(cluster).await?;
    Ok(out)
}

/// Starts the nodes and clients, runs the trials, stops the clients and checks that
/// all five replicas agree and the bank's total is unchanged.
async fn run_async(args: &FailoverArgs, bank: PathBuf, bar: &ProgressBar) -> Result<()> {
    bar.set_message("starting five nodes");
    let mut nodes = Nodes::start(bank, false, "failover-")?;
    let cluster = RemoteCluster::new(&nodes.config, RemoteOptions::default())?;
    nodes.await_serving(&cluster).await?;

    let shared = Arc::new(Shared::default());
    let options = ClientOptions::default()
        .with_attempt_timeout(Duration::from_secs(1))
        .with_min_backoff(Duration::from_millis(5))
        .with_max_backoff(Duration::from_millis(args.max_backoff_ms.max(1)));
    let tasks: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(client(
                cluster.endpoints(),
                i,
                options.clone(),
                Arc::clone(&shared),
            ))
        })
        .collect();

    let result = trials(args, &mut nodes, &cluster, &shared, bar).await;
    shared.stop.store(true, Ordering::Relaxed);
    if result.is_err() {
        for t in &tasks {
            t.abort();
        }
    }
    for t in tasks {
        // An aborted client's join error says nothing the run's error does not.
        let _ = t.await;
    }
    let trials = result?;
    bar.finish_and_clear();

    let agreement = await_agreement(&cluster, Duration::from_secs(10)).await;
    ensure!(
        agreement.agree && agreement.nodes.len() == NODES,
        "replicas disagree after the run (or not all answered): {:?}",
        agreement.nodes
    );
    ensure!(
        agreement.total() == Bank::new().total(),
        "money was created or destroyed: total {}",
        agreement.total()
    );

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let gaps: Vec<f64> = trials.iter().map(|t| ms(t.gap)).collect();
    let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = gaps.iter().copied().fold(0.0, f64::max);
    println!(
        "failover: 5 `bank node` processes on 127.0.0.1 (data dirs, fsync), {} clients (max backoff {} ms), {} trials; {} transfers committed, {} given up; all 5 replicas agreed at the end ({} slots executed, total {})",
        args.clients,
        args.max_backoff_ms,
        trials.len(),
        shared.commits.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        agreement.executed,
        agreement.total()
    );
    println!();
    println!("| trial | killed leader | next commit answered by | kill → next commit (ms) |");
    println!("|---:|---:|---:|---:|");
    for (i, t) in trials.iter().enumerate() {
        println!(
            "| {} | n{} | n{} | {:.0} |",
            i + 1,
            t.victim,
            t.successor,
            ms(t.gap)
        );
    }
    println!();
    println!(
        "kill → next commit: min {min:.0} ms, median {:.0} ms, max {max:.0} ms",
        median(gaps)
    );
    Ok(())
}

/// The `failover` subcommand.
pub(crate) fn run(args: FailoverArgs) -> Result<()> {
    ensure!(
        args.trials > 0 && args.clients > 0 && args.settle >= 0.0,
        "--trials and --clients must be positive, --settle not negative"
    );
    let bank = bank_binary(args.bank.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bar = ProgressBar::new(args.trials as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let outcome = rt.block_on(async {
        tokio::select! {
            // Dropping the run's future (on a signal) drops its `Nodes`: every node is
            // killed and reaped before this returns.
            r = run_async(&args, bank, &bar) => r,
            r = interrupted() => r.and(Err(anyhow!("interrupted; every node was stopped"))),
        }
    });
    bar.finish_and_clear();
    outcome
}
