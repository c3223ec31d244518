//! `bank`: run a replica of the replicated bank, or talk to a running cluster.
//!
//! ```text
//! bank node --id 1 &   # … one per replica, ids 1 to 5
//! bank client bank-app/scenarios/sample.csv
//! bank db
//! ```
//!
//! Every subcommand reads the cluster from `--config FILE` (TOML, see
//! [`bank_app::ClusterConfig`]) or `--endpoints 1=IP:PORT,2=IP:PORT,…` (or the
//! `BANK_CONFIG` / `BANK_ENDPOINTS` environment variables) or, without any of them,
//! assumes five nodes on `127.0.0.1:7001`–`7005`. `bank --help` lists the subcommands.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bank_app::{
    await_agreement, format_db, format_log, format_status, format_views, gather_db, gather_status,
    gather_views, heal, inspect_data_dir, load_scenario, remove_data_dir, run_bench, run_scenario,
    Account, Bank, BankCommand, BankOutput, BenchOptions, BenchProgress, ClientNames, Cluster,
    ClusterConfig, ConfigError, Console, DataDir, DataDirOwner, LineEditor, LogEntry, NodeResult,
    NodeServer, RemoteCluster, RemoteOptions, RunError, RunOptions, RunProgress, RunReport,
    ScenarioOptions, TrackedCluster, TransferOutcome,
};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
/// Scripts with at least this many transfers get a progress bar (on a terminal).
const LONG_SCRIPT: usize = 100;

/// An error in the command line (exit code 2), found after parsing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow!(UsageError(message.into()))
}

#[derive(Parser, Debug)]
#[command(
    name = "bank",
    version,
    about = "A bank ledger replicated with Multi-Paxos: run replicas, play transaction scripts, inspect the cluster",
    after_help = "Without --config or --endpoints (or BANK_CONFIG / BANK_ENDPOINTS) the cluster is five\n\
                  nodes, ids 1-5, on 127.0.0.1:7001-7005. A flag wins over an environment variable.\n\
                  JSON output gives session and client ids as strings (they exceed 2^53).\n\
                  Logs go to stderr; RUST_LOG sets their level (default: info for `node`, warn otherwise).\n\
                  Exit codes: 0 success, 1 error, 2 bad arguments, 3 transfer rejected by the bank,\n\
                  130 / 143 `bank client` stopped by SIGINT (Ctrl-C) / SIGTERM."
)]
struct Cli {
    /// The cluster config: a TOML file with `[[nodes]]` entries (`id = 1`,
    /// `addr = "127.0.0.1:7001"`), optionally `cluster_id` and `checkpoint_interval`.
    #[arg(long, global = true, value_name = "FILE", env = "BANK_CONFIG")]
    config: Option<PathBuf>,
    /// The cluster's nodes instead of a config file: `ID=IP:PORT` entries, comma-separated
    /// (`1=127.0.0.1:7001,2=127.0.0.1:7002,...`, the `id` and `addr` of each `[[nodes]]`
    /// table), or bare `IP:PORT` entries numbered 1, 2, ... in order.
    #[arg(long, global = true, value_name = "LIST", env = "BANK_ENDPOINTS")]
    endpoints: Option<String>,
    /// The cluster id (default 1), for --endpoints or the default cluster; with a config
    /// file it must match the file's `cluster_id`.
    #[arg(long, global = true, value_name = "N", env = "BANK_CLUSTER_ID")]
    cluster_id: Option<u64>,

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
        /// Let any client change this replica's availability, as `bank client` scripts
        /// and `bank heal` do. Off by default: without it the node refuses those calls,
        /// since from any client connection they can switch the cluster off. Use it only
        /// on a trusted network, for scenario runs and tests.
        #[arg(long)]
        test_controls: bool,
    },
    /// Run a transaction script (CSV) against the cluster with ten logical clients A-J.
    ///
    /// Each set makes its listed replicas available and the others unavailable (they
    /// drop all protocol traffic, as if crashed); `LF` makes the current leader
    /// unavailable. Replicas that cannot be reached are treated as down. A script with a
    /// transfer that cannot succeed (amount 0, sender = receiver, unknown account) is
    /// refused before anything runs.
    ///
    /// Between sets the run pauses when stdin is a terminal: printdb, printlog N,
    /// printstatus SEQ, printview, help, quit (ends the run there); Enter continues;
    /// arrow keys edit the line and recall earlier commands. Availability stays as the
    /// last set left it, except after `quit`, Ctrl-C (exit code 130) or SIGTERM (143):
    /// then every replica the run made unavailable is made available again. After a
    /// crash of the client, `bank heal` does that.
    Client {
        /// Never pause between sets.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print one JSON object per line (a line per transfer, then a summary) instead
        /// of tables; progress goes to stderr and the run never pauses.
        #[arg(long)]
        json: bool,
        /// Print the summary only: no line per set or transfer, no table of transfers,
        /// no progress bar, no pauses (with --json: the summary line only).
        #[arg(long, short = 'q')]
        quiet: bool,
        /// A set ends when everything released so far completed, or after this many
        /// seconds.
        #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
        set_timeout: Duration,
        /// The transaction script.
        #[arg(value_name = "SCRIPT.csv")]
        script: PathBuf,
    },
    /// Make every replica available again.
    ///
    /// For after a `bank client` that was killed (or left replicas unavailable as its
    /// last set said). Replicas that are not running need nothing: a replica always
    /// starts available.
    Heal(JsonFlag),
    /// Start over: remove the data directories of a stopped cluster.
    ///
    /// Refuses while any node of the cluster answers. Removes each node's data
    /// directory (`bank-data/node-N` under the current directory, or the --data-dir
    /// given), and only after checking that it is one: a META file of this cluster
    /// naming one of its nodes, no file a node does not write, no node holding its lock.
    /// If any directory fails these checks nothing is removed. Files are removed one by
    /// one, never recursively. Then start every node again: they found a new cluster,
    /// with the initial balances.
    Reset {
        /// A data directory to remove instead of the default ones (repeat for each
        /// node: --data-dir d1 --data-dir d2 ...).
        #[arg(long = "data-dir", value_name = "DIR")]
        data_dirs: Vec<PathBuf>,
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also write a new `cluster_id` into the --config file (other lines are kept),
        /// so that no old node or client can mix with the new cluster.
        #[arg(long)]
        new_cluster_id: bool,
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
    ///
    /// A transfer that cannot succeed whatever the balances (an amount that is not
    /// positive, sender = receiver, an account or client not among A-J) is refused
    /// before it is submitted (exit code 2); the bank checks it again when it executes.
    Transfer {
        /// The logical client submitting the transfer (an account, A-J; usually the
        /// sender).
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
    /// accounts; prints throughput and latency (progress on stderr: a progress bar on a
    /// terminal, else a line every second).
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
    /// Print the result only: no progress on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
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
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches).map(|cli| (cli, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
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
    let result = runtime.block_on(run(cli, &matches));
    // Tasks still running (connections, timers) are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("error: {}", one_line(&chain_text(&e)));
            ExitCode::from(EXIT_USAGE)
        }
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

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let source = config_source(&cli, matches)?;
    let config = load_config(&source, cli.cluster_id)?;
    match cli.command {
        Command::Node {
            id,
            data_dir,
            memory,
            test_controls,
        } => node(&config, id, data_dir.as_deref(), memory, test_controls).await,
        Command::Client {
            yes,
            json,
            quiet,
            set_timeout,
            script,
        } => {
            let args = ClientArgs {
                yes,
                json,
                quiet,
                set_timeout,
            };
            client(&config, &script, args).await
        }
        Command::Heal(out) => heal_command(&config, out.json).await,
        Command::Reset {
            data_dirs,
            dry_run,
            new_cluster_id,
        } => reset(&config, &source, &data_dirs, dry_run, new_cluster_id).await,
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

/// Where the cluster's description comes from.
#[derive(Clone, Debug)]
enum ConfigSource {
    /// `--config FILE` or `BANK_CONFIG`.
    File(PathBuf),
    /// `--endpoints LIST` or `BANK_ENDPOINTS`.
    Endpoints(String),
    /// Neither: five nodes on 127.0.0.1:7001-7005.
    Default,
}

/// `--config` or `--endpoints`, from the command line or the environment: a flag wins
/// over a variable; two flags, or two variables, are an error.
fn config_source(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<ConfigSource> {
    let from_flag = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
    // An empty environment variable counts as unset.
    let file = cli
        .config
        .clone()
        .filter(|f| from_flag("config") || !f.as_os_str().is_empty())
        .map(ConfigSource::File);
    let endpoints = cli
        .endpoints
        .clone()
        .filter(|e| from_flag("endpoints") || !e.trim().is_empty())
        .map(ConfigSource::Endpoints);
    Ok(match (file, endpoints) {
        (Some(file), Some(endpoints)) => match (from_flag("config"), from_flag("endpoints")) {
            (true, false) => file,
            (false, true) => endpoints,
            (true, true) => return Err(usage("--config and --endpoints cannot be used together")),
            (false, false) => {
                return Err(usage(
                    "BANK_CONFIG and BANK_ENDPOINTS are both set: unset one, or pass --config or --endpoints",
                ))
            }
        },
        (Some(source), None) | (None, Some(source)) => source,
        (None, None) => ConfigSource::Default,
    })
}

fn load_config(source: &ConfigSource, cluster_id: Option<u64>) -> anyhow::Result<ClusterConfig> {
    match source {
        ConfigSource::Default => {
            let mut config = ClusterConfig::local_default();
            if let Some(id) = cluster_id {
                config.cluster_id = id;
            }
            Ok(config)
        }
        ConfigSource::Endpoints(list) => ClusterConfig::from_endpoints(list, cluster_id)
            .map_err(|e| usage(format!("--endpoints: {e}"))),
        ConfigSource::File(path) => {
            let config = ClusterConfig::load(path).map_err(|e| match e {
                // These already name the file.
                ConfigError::Io { .. } | ConfigError::TooLarge { .. } => anyhow!(e),
                other => anyhow!("{}: {other}", path.display()),
            })?;
            match cluster_id {
                Some(id) if id != config.cluster_id => Err(usage(format!(
                    "--cluster-id {id} disagrees with {} (cluster_id = {})",
                    path.display(),
                    config.cluster_id
                ))),
                _ => Ok(config),
            }
        }
    }
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

/// The keys whose integer values are session ids, client ids or registration nonces:
/// random or large 64-bit numbers, which JSON readers that hold numbers as doubles
/// (JavaScript, jq) would round above 2^53.
const ID_KEYS: [&str; 4] = ["client", "session", "nonce", "sessions"];

/// Turns every integer under an [`ID_KEYS`] key (or in an object or array under one)
/// into a string of its decimal digits.
fn ids_as_strings(value: &mut Value) {
    fn all_to_strings(value: &mut Value) {
        match value {
            Value::Number(n) if n.is_u64() || n.is_i64() => *value = Value::String(n.to_string()),
            Value::Array(items) => items.iter_mut().for_each(all_to_strings),
            Value::Object(map) => map.values_mut().for_each(all_to_strings),
            _ => {}
        }
    }
    match value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                if ID_KEYS.contains(&key.as_str()) {
                    all_to_strings(item);
                } else {
                    ids_as_strings(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(ids_as_strings),
        _ => {}
    }
}

/// One JSON line on stdout, with ids as strings ([`ids_as_strings`]).
fn stdout_line(value: &Value) -> anyhow::Result<()> {
    let mut value = value.clone();
    ids_as_strings(&mut value);
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
    test_controls: bool,
) -> anyhow::Result<ExitCode> {
    if config.node(id).is_none() {
        let ids: Vec<String> = config.ids().iter().map(u64::to_string).collect();
        bail!(
            "node {id} is not in the cluster config (its nodes are {})",
            ids.join(", ")
        );
    }
    let options = bank_app::node_options().with_test_controls(test_controls);
    let server = if memory {
        warn!(
            node = id,
            "state is in memory only: every start is a start without state"
        );
        NodeServer::start(config, id, Bank::new(), MemStorage::new(), options).await
    } else {
        let default_dir = default_data_dir(id);
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
        NodeServer::start(config, id, Bank::new(), storage, options).await
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
        Ok((other, incarnation)) => {
            info!(node = id, incarnation, status = ?other, "not voting yet")
        }
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
    Signals::listen()?.recv().await.map(|_| ())
}

/// A signal that asks the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopSignal {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// 128 + the signal's number, as a shell reports a process killed by it.
    fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        })
    }

    fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "SIGINT",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// Listens for SIGINT and SIGTERM from the moment it is created: a signal that arrives
/// before [`recv`](Signals::recv) is polled is kept for it, and neither signal ends the
/// process by itself any more.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(&mut self) -> anyhow::Result<StopSignal> {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => Ok(StopSignal::Interrupt),
                _ = self.terminate.recv() => Ok(StopSignal::Terminate),
            }
        }
        #[cfg(not(unix))]
        {
            tokio::signal::ctrl_c()
                .await
                .context("cannot listen for Ctrl-C")?;
            Ok(StopSignal::Interrupt)
        }
    }
}

// ---------------------------------------------------------------- bank client

/// Options of `bank client`.
#[derive(Clone, Copy, Debug)]
struct ClientArgs {
    yes: bool,
    json: bool,
    quiet: bool,
    set_timeout: Duration,
}

async fn client(
    config: &ClusterConfig,
    script: &Path,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    // From here on Ctrl-C and SIGTERM are handled here, never by the default action.
    let mut signals = Signals::listen()?;
    let options = ScenarioOptions {
        // Live-node ids a script may name: those of the config.
        nodes: config.ids().into_iter().max().unwrap_or(0),
        ..ScenarioOptions::default()
    };
    let scenario = load_scenario(script, &options)?;
    let cluster = remote(config)?;
    tokio::select! {
        reachable = require_reachable(&cluster) => reachable?,
        signal = signals.recv() => return Ok(signal?.exit_code()),
    }
    let transfers = scenario.commands().count();
    let interactive = !args.yes && !args.json && !args.quiet && std::io::stdin().is_terminal();
    let bar = (!args.quiet
        && !interactive
        && (transfers >= LONG_SCRIPT)
        && std::io::stderr().is_terminal())
    .then(|| run_progress_bar(transfers));
    let output: Box<dyn Write + Send> = if args.quiet {
        Box::new(std::io::sink())
    } else if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let output: Box<dyn Write + Send> = match &bar {
        Some(bar) => Box::new(BarWriter::new(output, bar.clone())),
        None => output,
    };
    let mut console = if interactive {
        // Line editing needs the terminal on both sides; otherwise plain lines.
        let editor = if std::io::stdout().is_terminal() {
            LineEditor::new().ok()
        } else {
            None
        };
        match editor {
            Some(editor) => Console::with_input(editor, output),
            None => Console::interactive(BufReader::new(std::io::stdin()), output),
        }
    } else {
        Console::new(output)
    };
    if let Some(bar) = bar.clone() {
        console = console.on_progress(move |p: &RunProgress| {
            bar.set_position(p.completed as u64);
            bar.set_message(format!("set {} ({}/{})", p.set, p.sets_started, p.sets));
        });
    }
    let out = console.output();
    writeln!(
        out,
        "Playing {}: {} sets, {transfers} transfers, against replicas {}.",
        script.display(),
        scenario.sets.len(),
        node_list(&cluster.nodes()),
    )?;
    if interactive {
        writeln!(
            out,
            "stdin is a terminal: the run pauses between sets (Enter continues, quit stops)."
        )?;
    }
    let run_options = RunOptions {
        set_timeout: args.set_timeout,
        ..RunOptions::default()
    };
    let tracked = TrackedCluster::new(&cluster);
    let ended = tokio::select! {
        result = run_scenario(&tracked, &scenario, &run_options, &mut console) => match result {
            // Ctrl-C at the prompt, where the line editor reads it as a key.
            Err(RunError::Interrupted) => Err(Ok(StopSignal::Interrupt)),
            Err(e) => Err(Err(e)),
            Ok(report) => Ok(report),
        },
        signal = signals.recv() => Err(Ok(signal?)),
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let _ = console.output().flush();
    let report = match ended {
        Ok(report) => report,
        Err(Ok(signal)) => {
            let why = format!("interrupted ({})", signal.name());
            restore_availability(&tracked, &why, &mut signals).await;
            return Ok(signal.exit_code());
        }
        Err(Err(e)) => {
            restore_availability(&tracked, "the run failed", &mut signals).await;
            return Err(e.into());
        }
    };
    if report.stopped_early {
        restore_availability(&tracked, "quit", &mut signals).await;
    }
    // The run is over: a signal now only cuts the summary short.
    tokio::select! {
        printed = print_summary(&cluster, &report, args) => printed?,
        signal = signals.recv() => return Ok(signal?.exit_code()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The end of a run: the summary (and PrintDB unless quiet), or its JSON line.
async fn print_summary(
    cluster: &RemoteCluster,
    report: &RunReport,
    args: ClientArgs,
) -> anyhow::Result<()> {
    let agreement = await_agreement(cluster, Duration::from_secs(3)).await;
    if args.json {
        return print_report_json(report, &agreement, args.quiet);
    }
    let dbs = gather_db(cluster).await;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        write!(out, "{}", report.summary_head())?;
    } else {
        writeln!(out, "\n== Summary ==\n{}", report.summary())?;
        writeln!(out, "== PrintDB ==\n{}", format_db(&dbs))?;
    }
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
            "still unavailable as the last set left them: {} (`bank heal` makes every replica available)",
            node_list(&left_down)
        )?;
    }
    Ok(())
}

/// Makes the replicas the run made unavailable available again, saying so on stderr.
/// A second signal meanwhile gives up at once.
async fn restore_availability(
    tracked: &TrackedCluster<'_, RemoteCluster>,
    why: &str,
    signals: &mut Signals,
) {
    let down = tracked.made_unavailable();
    if down.is_empty() {
        if why != "quit" {
            eprintln!("{why}");
        }
        return;
    }
    let results = tokio::select! {
        results = tracked.restore() => results,
        _ = signals.recv() => {
            eprintln!(
                "{why}; interrupted again: {} left unavailable (run `bank heal`)",
                node_list(&down)
            );
            return;
        }
    };
    let restored: Vec<NodeId> = results
        .iter()
        .filter(|r| r.result.is_ok())
        .map(|r| r.node)
        .collect();
    if !restored.is_empty() {
        eprintln!("{why}: made {} available again", node_list(&restored));
    }
    for r in &results {
        if let Err(e) = &r.result {
            eprintln!(
                "n{} could not be made available again ({e}): run `bank heal` once it can be reached",
                r.node
            );
        }
    }
}

/// A progress bar on stderr for a script of `transfers` transfers.
fn run_progress_bar(transfers: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(transfers as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {msg} [{bar:25}] {pos}/{len} transfers {elapsed}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Writes whole lines to `inner` with the progress bar hidden meanwhile, so lines and
/// bar do not overwrite each other on a terminal.
struct BarWriter {
    inner: Box<dyn Write + Send>,
    bar: ProgressBar,
    pending: Vec<u8>,
}

impl BarWriter {
    fn new(inner: Box<dyn Write + Send>, bar: ProgressBar) -> BarWriter {
        BarWriter {
            inner,
            bar,
            pending: Vec::new(),
        }
    }

    fn write_through(&mut self, upto: usize) -> std::io::Result<()> {
        let chunk: Vec<u8> = self.pending.drain(..upto).collect();
        let inner = &mut self.inner;
        self.bar.suspend(|| {
            inner.write_all(&chunk)?;
            inner.flush()
        })
    }
}

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.write_through(last + 1)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let all = self.pending.len();
        if all > 0 {
            self.write_through(all)?;
        }
        Ok(())
    }
}

fn node_list(nodes: &[NodeId]) -> String {
    let names: Vec<String> = nodes.iter().map(|n| format!("n{n}")).collect();
    names.join(" ")
}

fn print_report_json(
    report: &RunReport,
    agreement: &bank_app::Agreement,
    quiet: bool,
) -> anyhow::Result<()> {
    let transfers = if quiet {
        &[][..]
    } else {
        &report.transfers[..]
    };
    for (i, t) in transfers.iter().enumerate() {
        let BankCommand::Transfer { from, to, amount } = t.command else {
            continue;
        };
        let (outcome, detail) = match &t.outcome {
            TransferOutcome::Committed(BankOutput::Rejected(r)) => ("rejected", r.to_string()),
            TransferOutcome::Committed(o) => ("moved", o.to_string()),
            TransferOutcome::Pending => ("pending", String::new()),
            TransferOutcome::Failed(e) => ("failed", e.clone()),
            TransferOutcome::NotSubmitted => ("not_submitted", String::new()),
        };
        stdout_line(&json!({
            "type": "transfer",
            "index": i + 1,
            "set": t.set,
            "client": t.client,
            "session": report.clients.get(&t.client),
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
        "not_submitted": report.not_submitted(),
        "stopped_early": report.stopped_early,
        "sessions": report.clients,
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
        _ => "other",
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

// ---------------------------------------------------------------- bank heal

async fn heal_command(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = heal(&cluster).await;
    for row in &rows {
        if json {
            stdout_line(&match &row.result {
                Ok(was) => json!({"node": row.node, "available": true, "was_available": was}),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        } else {
            let text = match &row.result {
                Ok(true) => "available (it was already)".to_string(),
                Ok(false) => "made available".to_string(),
                Err(e) => {
                    format!("not reached ({e}); a replica starts available when it is started")
                }
            };
            stdout_text(&format!("n{}: {text}\n", row.node))?;
        }
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------- bank reset

async fn reset(
    config: &ClusterConfig,
    source: &ConfigSource,
    data_dirs: &[PathBuf],
    dry_run: bool,
    new_cluster_id: bool,
) -> anyhow::Result<ExitCode> {
    let config_file = match source {
        ConfigSource::File(path) => Some(path),
        _ => None,
    };
    if new_cluster_id && config_file.is_none() {
        return Err(usage(
            "--new-cluster-id rewrites the cluster_id of a config file: give one with --config",
        ));
    }
    // 1. Every node must be stopped.
    let cluster = remote(config)?;
    let nodes = cluster.nodes();
    let answers = futures::future::join_all(nodes.iter().map(|&n| cluster.replica_status(n))).await;
    let running: Vec<NodeId> = nodes
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_ok())
        .map(|(&n, _)| n)
        .collect();
    if !running.is_empty() {
        bail!(
            "{} still answer{}: stop every node of the cluster first; nothing was removed",
            node_list(&running),
            if running.len() == 1 { "s" } else { "" }
        );
    }
    // 2. Every directory must be this cluster's data directory (or absent).
    let dirs: Vec<(PathBuf, DataDirOwner)> = if data_dirs.is_empty() {
        nodes
            .iter()
            .map(|&n| {
                let owner = DataDirOwner {
                    cluster_id: config.cluster_id,
                    nodes: vec![n],
                };
                (default_data_dir(n), owner)
            })
            .collect()
    } else {
        let owner = DataDirOwner {
            cluster_id: config.cluster_id,
            nodes: nodes.clone(),
        };
        data_dirs
            .iter()
            .map(|d| (d.clone(), owner.clone()))
            .collect()
    };
    let mut problems = 0;
    let mut found = Vec::new();
    for (dir, owner) in &dirs {
        match inspect_data_dir(dir, owner) {
            Ok(what) => found.push((dir, owner, what)),
            Err(e) => {
                problems += 1;
                stdout_text(&format!("refused: {e}\n"))?;
            }
        }
    }
    if problems > 0 {
        bail!(
            "{problems} of the directories {} not this cluster's data directories (see above); nothing was removed",
            if problems == 1 { "is" } else { "are" }
        );
    }
    // 3. Remove them.
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut removed = 0;
    for (dir, owner, what) in found {
        let what = if dry_run || what == DataDir::Missing {
            what
        } else {
            remove_data_dir(dir, owner)?
        };
        let line = match &what {
            DataDir::Missing => format!("{}: nothing there", dir.display()),
            DataDir::Empty => format!("{}: {verb} (empty)", dir.display()),
            DataDir::Node { node, files, .. } => format!(
                "{}: {verb} (node {node}'s data directory, {} files)",
                dir.display(),
                files.len()
            ),
        };
        if what != DataDir::Missing {
            removed += 1;
        }
        stdout_text(&format!("{line}\n"))?;
    }
    if data_dirs.is_empty() && !dry_run {
        // The default parent, if nothing else is left in it.
        let _ = std::fs::remove_dir(DEFAULT_DATA_ROOT);
    }
    // 4. The cluster id.
    match (config_file, new_cluster_id) {
        (Some(path), true) => {
            let new_id = next_cluster_id(config.cluster_id);
            if dry_run {
                stdout_text(&format!(
                    "{}: would set cluster_id = {new_id} (now {})\n",
                    path.display(),
                    config.cluster_id
                ))?;
            } else {
                write_cluster_id(path, new_id)?;
                stdout_text(&format!(
                    "{}: cluster_id = {new_id} (was {})\n",
                    path.display(),
                    config.cluster_id
                ))?;
            }
        }
        (Some(path), false) if removed > 0 => stdout_text(&format!(
            "{} keeps cluster_id = {}: to keep every old node and client out of the new \
             cluster, give it a new one (`bank reset --new-cluster-id` does)\n",
            path.display(),
            config.cluster_id
        ))?,
        (None, _) if removed > 0 && matches!(source, ConfigSource::Endpoints(_)) => {
            stdout_text(&format!(
                "the cluster id is {}: to keep every old node and client out of the new \
                 cluster, start it with another --cluster-id\n",
                config.cluster_id
            ))?
        }
        _ => {}
    }
    if !dry_run && removed > 0 {
        stdout_text(
            "start every node again: they found a new cluster with the initial balances\n",
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `bank node` keeps its data without --data-dir.
const DEFAULT_DATA_ROOT: &str = "bank-data";

fn default_data_dir(id: NodeId) -> PathBuf {
    Path::new(DEFAULT_DATA_ROOT).join(format!("node-{id}"))
}

/// A cluster id that differs from `old` and from the ids handed out before: the
/// current Unix time in seconds, or `old + 1` if that is not larger.
fn next_cluster_id(old: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // TOML integers are signed 64-bit.
    let id = now.max(old.saturating_add(1)).min(i64::MAX as u64);
    if id == old {
        old - 1
    } else {
        id
    }
}

/// Rewrites the `cluster_id` of a config file in place (through a temporary file and a
/// rename, so the file is never half-written).
fn write_cluster_id(path: &Path, cluster_id: u64) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let new = ClusterConfig::replace_cluster_id(&text, cluster_id)
        .with_context(|| format!("{}: cannot set its cluster_id", path.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------- bank transfer

async fn transfer(
    config: &ClusterConfig,
    client_name: Account,
    command: BankCommand,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Refused here rather than by the bank, two consensus rounds later (it would be).
    let bank = Bank::new();
    if bank.balance(client_name).is_none() {
        return Err(usage(format!(
            "unknown client {client_name}: the clients are named after the accounts {}",
            account_range(&bank)
        )));
    }
    if let Err(reason) = bank.check(&command) {
        return Err(usage(format!(
            "transfer {} cannot succeed: {reason} (not submitted)",
            command_text(&command)
        )));
    }
    let cluster = remote(config)?;
    require_reachable(&cluster).await?;
    let options = ClientOptions::default()
        .with_attempt_timeout(Duration::from_secs(1))
        .with_min_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(300))
        .with_default_deadline(timeout);
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

/// `A-J`: the bank's first and last accounts.
fn account_range(bank: &Bank) -> String {
    let accounts = bank.balances();
    match (accounts.keys().next(), accounts.keys().last()) {
        (Some(first), Some(last)) => format!("{first}-{last}"),
        _ => "(none)".into(),
    }
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
    // A bar on a terminal, a line a second otherwise, nothing with --quiet.
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(Some(args.transfers), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{bar:25}] {pos}/{len} transfers {msg} {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let lines = !args.quiet && bar.is_none();
    let mut last = 0;
    let mut ticker = tokio::time::interval(if bar.is_some() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    });
    ticker.tick().await;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = ticker.tick() => {
                let done = progress.completed();
                if let Some(bar) = &bar {
                    bar.set_position(done);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{:.0}/s", done as f64 / secs));
                } else if lines {
                    eprintln!(
                        "{:>6.1} s  {done:>9} transfers  {:>8} /s",
                        started.elapsed().as_secs_f64(),
                        done - last
                    );
                }
                last = done;
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_strings_and_nothing_else_does() {
        let big = u64::MAX - 1;
        let mut value = json!({
            "node": 3,
            "slot": 9,
            "session": 12,
            "client": "A",
            "sessions": {"A": big, "B": 2},
            "entry": {"Command": {"client": big, "seq": 4, "command": {"Transfer": {"amount": 5}}}},
            "views": [{"entry": {"Register": {"nonce": big}}, "tick": 7}],
            "missing": {"session": null},
        });
        ids_as_strings(&mut value);
        assert_eq!(
            value,
            json!({
                "node": 3,
                "slot": 9,
                "session": "12",
                "client": "A",
                "sessions": {"A": big.to_string(), "B": "2"},
                "entry": {"Command": {"client": big.to_string(), "seq": 4, "command": {"Transfer": {"amount": 5}}}},
                "views": [{"entry": {"Register": {"nonce": big.to_string()}}, "tick": 7}],
                "missing": {"session": null},
            })
        );
    }

    #[test]
    fn the_next_cluster_id_is_new() {
        assert!(next_cluster_id(1) > 1_700_000_000);
        assert_eq!(next_cluster_id(u64::MAX - 5), i64::MAX as u64);
        assert_eq!(next_cluster_id(i64::MAX as u64), i64::MAX as u64 - 1);
        let far = 1u64 << 40;
        assert_eq!(next_cluster_id(far), far + 1);
    }
}
