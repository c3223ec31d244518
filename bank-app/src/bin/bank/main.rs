//! `bank`: run a replica of the replicated bank, or talk to a running cluster.
//!
//! ```text
//! bank node --id 1 --test-controls &   # … one per replica, ids 1 to 5 (scripts switch
//!                                     # replicas on and off: --test-controls)
//! bank client bank-app/scenarios/sample.csv
//! bank db
//! bank health                          # every replica's role, leader, ballot and lag
//! bank leader transfer --to 3          # hand leadership to n3 (nodes run --admin-calls)
//! ```
//!
//! Every subcommand reads the cluster from `--config FILE` (TOML, see
//! [`bank_app::ClusterConfig`]) or `--endpoints 1=IP:PORT,2=IP:PORT,…` (or the
//! `BANK_CONFIG` / `BANK_ENDPOINTS` environment variables) or, without any of them,
//! assumes five nodes on `127.0.0.1:7001`–`7005`. `bank --help` lists the subcommands.

mod balance;
mod bench;
mod client;
mod db;
mod errors;
mod heal;
mod health;
mod leader;
mod log;
mod members;
mod node;
mod options;
mod output;
mod progress;
mod reset;
mod signals;
mod status;
mod transfer;
mod view;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bank_app::BankCommand;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::errors::{chain_text, one_line, usage_error, UsageError, EXIT_USAGE};
use crate::options::{config_source, load_config};

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
    Node(node::NodeArgs),
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
    Client(client::ClientCliArgs),
    /// Make every replica available again.
    ///
    /// For after a `bank client` that was killed (or left replicas unavailable as its
    /// last set said). Replicas that are not running need nothing: a replica always
    /// starts available.
    Heal(options::JsonFlag),
    /// Start over: remove the data directories of a stopped cluster.
    ///
    /// Refuses while any node of the cluster answers. Removes each node's data
    /// directory (`bank-data/node-N` under the current directory, or the --data-dir
    /// given), and only after checking that it is one: a META file of this cluster
    /// naming one of its nodes, no file a node does not write, no node holding its lock.
    /// If any directory fails these checks nothing is removed. Files are removed one by
    /// one, never recursively. Then start every node again: they found a new cluster,
    /// with the initial balances.
    Reset(reset::ResetArgs),
    /// PrintDB: every replica's balances.
    Db(options::JsonFlag),
    /// PrintLog: one replica's log, a row per slot (X nothing, A accepted, C committed,
    /// E executed, K compacted into a checkpoint).
    Log(log::LogArgs),
    /// PrintStatus: one slot's status on every replica (X, A, C or E).
    Status(status::StatusArgs),
    /// PrintView: the view changes each replica saw.
    View(options::JsonFlag),
    /// Every replica's role, ballot, leader, commit and executed points, and its lag
    /// behind the leader (the leader's commit point minus its executed point; `-` when
    /// no reachable replica leads).
    ///
    /// A replica that does not answer is listed as unreachable (with --json:
    /// `"reachable": false` and an `error`). Fails (exit code 1) only when none answers.
    Health(options::JsonFlag),
    /// Submit one transfer as logical client C (with a fresh session) and print the
    /// outcome.
    ///
    /// A transfer that cannot succeed whatever the balances (an amount that is not
    /// positive, sender = receiver, an account or client not among A-J) is refused
    /// before it is submitted (exit code 2); the bank checks it again when it executes.
    Transfer(transfer::TransferArgs),
    /// Read one account's balance, linearizably, without a log round: the leader
    /// confirms with a majority that it still leads, then answers from its state once it
    /// has executed everything chosen before the read arrived.
    Balance(balance::BalanceArgs),
    /// Load the cluster: many concurrent clients send one-unit transfers between random
    /// accounts; prints throughput and latency (progress on stderr: a progress bar on a
    /// terminal, else a line every second).
    Bench(bench::BenchArgs),
    /// Leadership: `bank leader transfer --to N` hands it over to node N (the nodes must
    /// run with --admin-calls).
    #[command(subcommand)]
    Leader(leader::LeaderCommand),
    /// The voting members (`bank members`), and changing them: `bank members add --id N
    /// [--addr IP:PORT]`, `bank members remove --id N` (the nodes must run with
    /// --admin-calls). The change goes through the log; every node, and a node that
    /// restarts, learns it from there.
    Members(members::MembersArgs),
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

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let source = config_source(&cli, matches)?;
    let config = load_config(&source, cli.cluster_id)?;
    match cli.command {
        Command::Node(args) => node::run(&config, args).await,
        Command::Client(client::ClientCliArgs {
            yes,
            json,
            quiet,
            set_timeout,
            script,
        }) => {
            let args = client::ClientArgs {
                yes,
                json,
                quiet,
                set_timeout,
            };
            client::run(&config, &script, args).await
        }
        Command::Heal(out) => heal::run(&config, out.json).await,
        Command::Reset(reset::ResetArgs {
            data_dirs,
            dry_run,
            new_cluster_id,
        }) => reset::run(&config, &source, &data_dirs, dry_run, new_cluster_id).await,
        Command::Db(out) => db::run(&config, out.json).await,
        Command::Log(log::LogArgs { node, output }) => log::run(&config, node, output.json).await,
        Command::Status(status::StatusArgs { seq, output }) => {
            status::run(&config, seq, output.json).await
        }
        Command::View(out) => view::run(&config, out.json).await,
        Command::Health(out) => health::run(&config, out.json).await,
        Command::Transfer(transfer::TransferArgs {
            client,
            from,
            to,
            amount,
            timeout,
            output,
        }) => {
            let command = BankCommand::Transfer { from, to, amount };
            transfer::run(&config, client, command, timeout, output.json).await
        }
        Command::Balance(args) => balance::run(&config, args).await,
        Command::Bench(args) => bench::run(&config, args).await,
        Command::Leader(command) => leader::run(&config, command).await,
        Command::Members(args) => members::run(&config, args).await,
    }
}
