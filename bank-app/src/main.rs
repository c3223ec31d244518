//! `bank`: run a replica of the replicated bank, or talk to a running cluster.
//!
//! ```text
//! bank node --id 1 &   # … one per replica, ids 1 to 5
//! bank client bank-app/scenarios/sample.csv
//! bank db
//! ```
//!
//! Every subcommand reads the cluster from `--config FILE` (TOML, see
//! [`bank_app::ClusterConfig`]) or, without it, assumes five nodes on
//! `127.0.0.1:7001`–`7005`. `bank --help` lists the subcommands.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bank_app::{
    await_agreement, format_db, format_log, format_status, format_views, gather_db, gather_status,
    gather_views, load_scenario, run_bench, run_scenario, Account, Bank, BankCommand, BankOutput,
    BenchOptions, BenchProgress, ClientNames, Cluster, ClusterConfig, ConfigError, Console,
    LogEntry, NodeResult, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions, RunOptions,
    RunReport, ScenarioOptions, TransferOutcome,
};
use clap::{Args, Parser, Subcommand};
use paxos_core::{AcceptorStatus, Client, ClientOptions, MemStorage, NodeId, Slot};
use paxos_storage_file::{FileStorage, OpenError};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

/// Exit code for usage errors (bad arguments).
const EXIT_USAGE: u8 = 2;
/// Exit code of `bank transfer` when the bank rejected the transfer.
const EXIT_REJECTED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "bank",
    version,
    about = "A bank ledger replicated with Multi-Paxos: run replicas, play transaction scripts, inspect the cluster",
    after_help = "Without --config the cluster is five nodes, ids 1-5, on 127.0.0.1:7001-7005.\n\
                  Logs go to stderr; RUST_LOG sets their level (default: info for `node`, warn otherwise).\n\
                  Exit codes: 0 success, 1 error, 2 bad arguments, 3 transfer rejected by the bank."
)]
struct Cli {
    /// The cluster config: a TOML file with `[[nodes]]` entries (`id = 1`,
    /// `addr = "127.0.0.1:7001"`), optionally `cluster_id` and `checkpoint_interval`.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run replica N until killed (Ctrl-C or SIGTERM stop it cleanly).
    ///
    /// The node listens on its address from the config, for its peers and its clients
    /// alike. Its promises, accepted values and checkpoints go to a write-ahead log in
    /// its data directory and are fsync'ed before it answers, so a killed node restarts
    /// with everything it vouched for.
    ///
    /// A node that starts without state (an empty data directory, or --memory) does not
    /// vote until it knows whether the cluster is new: on the first start of a new
    /// cluster it waits until every member is up; otherwise (its directory was wiped or
    /// lost) it recovers its state from a majority of its peers before voting.
    Node {
        /// The replica's id, as listed in the config.
        #[arg(long, value_name = "N")]
        id: NodeId,
        /// Where the replica keeps its durable state (created if missing). Default:
        /// `bank-data/node-N` under the current directory. A directory written by
        /// another cluster or node, or in use by another process, is refused.
        #[arg(long, value_name = "DIR", conflicts_with = "memory")]
        data_dir: Option<PathBuf>,
        /// Keep the state in memory only (a throwaway node). It starts empty every time:
        /// on the first start of a new cluster it waits until every member is up;
        /// otherwise it recovers its state from a majority of its peers and catches up
        /// before it votes.
        #[arg(long)]
        memory: bool,
    },
    /// Run a transaction script (CSV) against the cluster with ten logical clients A-J.
    ///
    /// Each set makes its listed replicas available and the others unavailable (they
    /// drop all protocol traffic, as if crashed); `LF` makes the current leader
    /// unavailable. Replicas that cannot be reached are treated as down. Between sets
    /// the run pauses for printdb, printlog N, printstatus SEQ, printview (Enter
    /// continues) when stdin is a terminal. Availability stays as the last set left it.
    Client {
        /// Never pause between sets.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print one JSON object per line (a line per transfer, then a summary) instead
        /// of tables; progress goes to stderr and the run never pauses.
        #[arg(long)]
        json: bool,
        /// A set ends when everything released so far completed, or after this many
        /// seconds.
        #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
        set_timeout: Duration,
        /// The transaction script.
        #[arg(value_name = "SCRIPT.csv")]
        script: PathBuf,
    },
    /// PrintDB: every replica's balances.
    Db(JsonFlag),
    /// PrintLog: one replica's log, a row per slot (X nothing, A accepted, C committed,
    /// E executed, K compacted into a checkpoint).
    Log {
        /// The replica.
        #[arg(long, value_name = "N")]
        node: NodeId,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// PrintStatus: one slot's status on every replica (X, A, C or E).
    Status {
        /// The slot, numbered from 0 as `bank log` shows them.
        #[arg(long, value_name = "S")]
        seq: Slot,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// PrintView: the view changes each replica saw.
    View(JsonFlag),
    /// Submit one transfer as logical client C (with a fresh session) and print the
    /// outcome.
    Transfer {
        /// The logical client submitting the transfer (a letter; usually the sender).
        #[arg(long, value_name = "C")]
        client: Account,
        /// The account debited.
        from: Account,
        /// The account credited.
        to: Account,
        /// The amount.
        #[arg(allow_negative_numbers = true)]
        amount: i64,
        /// Give up after this many seconds (the transfer may still execute later).
        #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
        timeout: Duration,
        #[command(flatten)]
        output: JsonFlag,
    },
    /// Load the cluster: many concurrent clients send one-unit transfers between random
    /// accounts; prints throughput and latency (progress on stderr every second).
    Bench(BenchArgs),
}

/// Options of `bank bench`.
#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Transfers to complete in all.
    #[arg(long, default_value = "100000")]
    transfers: u64,
    /// Concurrent clients, each with one transfer in flight.
    #[arg(long, default_value = "64")]
    clients: usize,
    /// Seed of the transfer choices.
    #[arg(long, default_value = "1")]
    seed: u64,
    #[command(flatten)]
    output: JsonFlag,
}

#[derive(Args, Debug, Clone, Copy)]
struct JsonFlag {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        eprintln!("error: internal error: {}", one_line(&text));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let default_level = match cli.command {
        Command::Node { .. } => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Tasks still running (connections, timers) are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if !broken_pipe {
                eprintln!("error: {}", one_line(&chain_text(&e)));
            }
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause its parent's message
/// already quotes (many library errors show their source inline).
fn chain_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// Collapses a message onto one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout as usual; a usage error is one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            // Clap's message: a paragraph, tips, then "Usage: ...". Keep the first
            // paragraph and the usage, on one line.
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .collect();
            let message = one_line(&message.join(" "));
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let message = message.trim_end_matches(':');
            let usage = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("Usage: "))
                .map(|u| format!(" (usage: {})", one_line(u)))
                .unwrap_or_default();
            eprintln!("error: {message}{usage}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(cli.config.as_deref())?;
    match cli.command {
        Command::Node {
            id,
            data_dir,
            memory,
        } => node(&config, id, data_dir.as_deref(), memory).await,
        Command::Client {
            yes,
            json,
            set_timeout,
            script,
        } => client(&config, &script, yes, json, set_timeout).await,
        Command::Db(out) => db(&config, out.json).await,
        Command::Log { node, output } => log(&config, node, output.json).await,
        Command::Status { seq, output } => status(&config, seq, output.json).await,
        Command::View(out) => view(&config, out.json).await,
        Command::Transfer {
            client,
            from,
            to,
            amount,
            timeout,
            output,
        } => {
            let command = BankCommand::Transfer { from, to, amount };
            transfer(&config, client, command, timeout, output.json).await
        }
        Command::Bench(args) => bench(&config, args).await,
    }
}

fn load_config(path: Option<&Path>) -> anyhow::Result<ClusterConfig> {
    let Some(path) = path else {
        return Ok(ClusterConfig::local_default());
    };
    ClusterConfig::load(path).map_err(|e| match e {
        // These already name the file.
        ConfigError::Io { .. } | ConfigError::TooLarge { .. } => anyhow!(e),
        other => anyhow!("{}: {other}", path.display()),
    })
}

fn remote(config: &ClusterConfig) -> anyhow::Result<RemoteCluster> {
    Ok(RemoteCluster::new(config, RemoteOptions::default())?)
}

/// Fails unless at least one replica answers.
async fn require_reachable(cluster: &RemoteCluster) -> anyhow::Result<()> {
    let nodes = cluster.nodes();
    let answers = futures::future::join_all(nodes.iter().map(|&n| cluster.replica_status(n))).await;
    if answers.iter().any(Result::is_ok) {
        return Ok(());
    }
    let first = answers
        .into_iter()
        .find_map(Result::err)
        .map(|e| e.to_string())
        .unwrap_or_default();
    bail!("no replica of the cluster can be reached (is it running?): {first}")
}

fn stdout_line(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    Ok(())
}

fn stdout_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// The error for an inspection every replica failed to answer.
fn none_answered<T>(rows: &[NodeResult<T>]) -> anyhow::Result<()> {
    if rows.iter().any(|r| r.result.is_ok()) {
        return Ok(());
    }
    let first = rows
        .iter()
        .find_map(|r| r.result.as_ref().err())
        .map(|e| e.to_string())
        .unwrap_or_else(|| "no replicas configured".into());
    bail!("no replica of the cluster can be reached (is it running?): {first}")
}

// ---------------------------------------------------------------- bank node

async fn node(
    config: &ClusterConfig,
    id: NodeId,
    data_dir: Option<&Path>,
    memory: bool,
) -> anyhow::Result<ExitCode> {
    if config.node(id).is_none() {
        let ids: Vec<String> = config.ids().iter().map(u64::to_string).collect();
        bail!(
            "node {id} is not in the cluster config (its nodes are {})",
            ids.join(", ")
        );
    }
    let options = NodeServerOptions::default();
    let server = if memory {
        warn!(
            node = id,
            "state is in memory only: every start is a start without state"
        );
        NodeServer::start(config, id, MemStorage::new(), options).await
    } else {
        let default_dir = PathBuf::from(format!("bank-data/node-{id}"));
        let dir = data_dir.unwrap_or(&default_dir);
        check_data_dir(dir)?;
        let storage = match FileStorage::open(dir, config.cluster_id, id) {
            Ok(storage) => storage,
            // The message names the directory; nothing in it was read or changed.
            Err(e @ OpenError::Locked { .. }) => {
                bail!("{e} (is another `bank node --id {id}` running on it?)")
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "node {id} cannot open its data directory {}",
                    dir.display()
                )))
            }
        };
        let recovery = storage.recovery();
        info!(node = id, dir = %dir.display(), ?recovery, "storage opened");
        NodeServer::start(config, id, storage, options).await
    }
    .with_context(|| format!("node {id} cannot start"))?;
    log_acceptor_status(&server).await;
    let stopped_by_itself = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!(node = id, "signal received; shutting down");
            false
        }
        _ = server.stopped() => true,
    };
    if tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .is_err()
    {
        warn!(node = id, "shutdown did not finish in time");
    }
    if stopped_by_itself {
        bail!("node {id} stopped: its storage failed (see the log above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Says at start-up whether the replica votes, or what it waits for first.
async fn log_acceptor_status(server: &NodeServer) {
    let id = server.id();
    let status = server
        .handle()
        .inspect(|r| (r.acceptor_status(), r.incarnation()))
        .await;
    match status {
        Ok((AcceptorStatus::Voter, incarnation)) => {
            info!(node = id, incarnation, "state found: voting");
        }
        Ok((AcceptorStatus::Pristine, _)) => info!(
            node = id,
            "no state: not voting until the peers tell whether the cluster is new; on the \
             first start of a new cluster it waits until every member is up, otherwise it \
             recovers its state from a majority of the peers and catches up first"
        ),
        Ok((AcceptorStatus::Recovering, incarnation)) => info!(
            node = id,
            incarnation,
            "an earlier recovery did not finish: not voting until a majority of the peers \
             has handed over its state"
        ),
        Err(e) => warn!(node = id, error = %e, "cannot read the replica's status"),
    }
}

/// The data directory must be a directory; it is created if missing.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--data-dir {} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --data-dir {}", dir.display()))?;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

// ---------------------------------------------------------------- bank client

async fn client(
    config: &ClusterConfig,
    script: &Path,
    yes: bool,
    json: bool,
    set_timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let options = ScenarioOptions {
        // Live-node ids a script may name: those of the config.
        nodes: config.ids().into_iter().max().unwrap_or(0),
        ..ScenarioOptions::default()
    };
    let scenario = load_scenario(script, &options)?;
    let cluster = remote(config)?;
    require_reachable(&cluster).await?;
    let interactive = !yes && !json && std::io::stdin().is_terminal();
    let output: Box<dyn Write + Send> = if json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let mut console = if interactive {
        Console::interactive(BufReader::new(std::io::stdin()), output)
    } else {
        Console::new(output)
    };
    let out = console.output();
    writeln!(
        out,
        "Playing {}: {} sets, {} transfers, against replicas {}.",
        script.display(),
        scenario.sets.len(),
        scenario.commands().count(),
        node_list(&cluster.nodes()),
    )?;
    if interactive {
        writeln!(
            out,
            "stdin is a terminal: the run pauses between sets (Enter continues)."
        )?;
    }
    let run_options = RunOptions {
        set_timeout,
        ..RunOptions::default()
    };
    let report = run_scenario(&cluster, &scenario, &run_options, &mut console).await?;
    let agreement = await_agreement(&cluster, Duration::from_secs(3)).await;
    if json {
        print_report_json(&report, &agreement)?;
    } else {
        let dbs = gather_db(&cluster).await;
        let mut out = std::io::stdout().lock();
        writeln!(out, "\n== Summary ==\n{}", report.summary())?;
        writeln!(out, "== PrintDB ==\n{}", format_db(&dbs))?;
        writeln!(out, "{agreement}")?;
        let left_down: Vec<NodeId> = dbs
            .iter()
            .filter_map(|r| r.result.as_ref().ok())
            .filter(|db| !db.available)
            .map(|db| db.node)
            .collect();
        if !left_down.is_empty() {
            writeln!(
                out,
                "still unavailable as the last set left them: {}",
                node_list(&left_down)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn node_list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
    names.join(" ")
}

fn print_report_json(report: &RunReport, agreement: &bank_app::Agreement) -> anyhow::Result<()> {
    for (i, t) in report.transfers.iter().enumerate() {
        let BankCommand::Transfer { from, to, amount } = t.command else {
            continue;
        };
        let (outcome, detail) = match &t.outcome {
            TransferOutcome::Committed(BankOutput::Rejected(r)) => ("rejected", r.to_string()),
            TransferOutcome::Committed(o) => ("moved", o.to_string()),
            TransferOutcome::Pending => ("pending", String::new()),
            TransferOutcome::Failed(e) => ("failed", e.clone()),
        };
        stdout_line(&json!({
            "type": "transfer",
            "index": i + 1,
            "set": t.set,
            "client": t.client,
            "from": from,
            "to": to,
            "amount": amount,
            "outcome": outcome,
            "detail": detail,
            "completed_in_set": t.completed_in_set,
            "latency_ms": t.latency.map(|d| d.as_secs_f64() * 1000.0),
        }))?;
    }
    let failures: Vec<Value> = report
        .leader_failures()
        .map(|f| json!({"set": f.set, "node": f.node}))
        .collect();
    let committed = report.committed();
    let rejected = report.rejected();
    stdout_line(&json!({
        "type": "summary",
        "transfers": report.transfers.len(),
        "committed": committed,
        "moved": committed.saturating_sub(rejected),
        "rejected": rejected,
        "pending": report.pending(),
        "failed": report.failed(),
        "leader_failures": failures,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        "agree": agreement.agree,
        "agreeing_nodes": agreement.nodes,
        "balances": agreement.balances,
        "total": agreement.total(),
    }))
}

// ---------------------------------------------------------------- inspection

async fn db(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_db(&cluster).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(db) => json!({
                    "node": row.node,
                    "available": db.available,
                    "acceptor": acceptor_text(db.acceptor),
                    "executed": db.executed,
                    "balances": db.balances,
                    "total": db.total(),
                }),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_db(&rows))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}

/// `voter`, `recovering` or `pristine`.
fn acceptor_text(status: AcceptorStatus) -> &'static str {
    match status {
        AcceptorStatus::Voter => "voter",
        AcceptorStatus::Recovering => "recovering",
        AcceptorStatus::Pristine => "pristine",
    }
}

fn entry_json(node: NodeId, e: &LogEntry) -> Value {
    json!({
        "node": node,
        "slot": e.slot,
        "status": e.code().to_string(),
        "ballot": e.ballot,
        "value": e.value.to_string(),
        "entry": e.value,
    })
}

async fn log(config: &ClusterConfig, node: NodeId, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let log = cluster.log(node).await;
    match (&log, json) {
        (Ok(entries), true) => {
            for e in entries {
                stdout_line(&entry_json(node, e))?;
            }
        }
        (Err(e), true) => stdout_line(&json!({"node": node, "error": e.to_string()}))?,
        (Ok(_), false) => stdout_text(&format_log(node, &log, &ClientNames::new()))?,
        (Err(_), false) => {}
    }
    log?;
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &ClusterConfig, slot: Slot, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_status(&cluster, slot).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(e) => entry_json(row.node, e),
                Err(e) => json!({"node": row.node, "slot": slot, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_status(slot, &rows, &ClientNames::new()))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}

async fn view(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_views(&cluster).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(views) => json!({"node": row.node, "views": views}),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_views(&rows))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- bank transfer

async fn transfer(
    config: &ClusterConfig,
    client_name: Account,
    command: BankCommand,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    require_reachable(&cluster).await?;
    let options = ClientOptions {
        attempt_timeout: Duration::from_secs(1),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(300),
        default_deadline: timeout,
    };
    let mut client = Client::<Bank>::with_options(cluster.endpoints(), options);
    let started = Instant::now();
    let text = command_text(&command);
    let output = client
        .execute(&command)
        .await
        .with_context(|| format!("transfer {text} by client {client_name} did not complete"))?;
    let elapsed = started.elapsed();
    let leader = client.leader();
    // The session the cluster assigned (the slot of the registration).
    let session = client.session();
    if json {
        let (outcome, detail) = match &output {
            BankOutput::Rejected(r) => ("rejected", r.to_string()),
            other => ("moved", other.to_string()),
        };
        let BankCommand::Transfer { from, to, amount } = command else {
            bail!("not a transfer");
        };
        stdout_line(&json!({
            "client": client_name,
            "session": session,
            "from": from,
            "to": to,
            "amount": amount,
            "outcome": outcome,
            "detail": detail,
            "output": output,
            "leader": leader,
            "latency_ms": elapsed.as_secs_f64() * 1000.0,
        }))?;
    } else {
        let via = leader
            .map(|l| format!(" via leader n{l}"))
            .unwrap_or_default();
        let session = session
            .map(|s| format!(" (session {s})"))
            .unwrap_or_default();
        stdout_text(&format!(
            "{text} by client {client_name}{session}: {output} [committed{via} in {} ms]\n",
            elapsed.as_millis()
        ))?;
    }
    Ok(if output.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    })
}

fn command_text(command: &BankCommand) -> String {
    match command {
        BankCommand::Transfer { from, to, amount } => format!("{from}->{to} {amount}"),
        BankCommand::Balance { account } => format!("balance {account}"),
    }
}

// ---------------------------------------------------------------- bank bench

async fn bench(config: &ClusterConfig, args: BenchArgs) -> anyhow::Result<ExitCode> {
    // One connection per client to each node, so the clients never queue for one.
    let options = RemoteOptions {
        connections_per_node: args.clients.max(1),
        ..RemoteOptions::default()
    };
    let cluster = RemoteCluster::new(config, options)?;
    require_reachable(&cluster).await?;
    let options = BenchOptions {
        transfers: args.transfers,
        clients: args.clients,
        seed: args.seed,
        ..BenchOptions::default()
    };
    let progress = BenchProgress::default();
    let run = run_bench(cluster.endpoints(), &options, progress.clone());
    tokio::pin!(run);
    let started = Instant::now();
    let mut last = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = ticker.tick() => {
                let done = progress.completed();
                eprintln!(
                    "{:>6.1} s  {done:>9} transfers  {:>8} /s",
                    started.elapsed().as_secs_f64(),
                    done - last
                );
                last = done;
            }
        }
    };
    if args.output.json {
        stdout_line(&serde_json::to_value(&report)?)?;
    } else {
        stdout_text(&format!(
            "{} transfers ({} moved, {} rejected, {} failed) in {:.2} s: {:.0} transfers/s; \
             latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            report.moved + report.rejected + report.failed,
            report.moved,
            report.rejected,
            report.failed,
            report.elapsed_secs,
            report.per_sec,
            report.p50_us as f64 / 1000.0,
            report.p99_us as f64 / 1000.0,
            report.max_us as f64 / 1000.0,
        ))?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
