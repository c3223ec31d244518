//! A bank ledger replicated with `paxos-core`: the state machine, transaction scripts,
//! the scenario runner and the cluster configuration of the `bank` CLI.
//!
//! - [`Bank`] is a [`StateMachine`](paxos_core::StateMachine) over accounts `A` to `J`
//!   (by default), applying [`BankCommand`]s: a transfer either moves its amount or is
//!   [rejected](Rejection) without change.
//! - [`Scenario`] parses the CSV transaction scripts (see [`SAMPLE_SCENARIO`]) into sets
//!   of live replicas, transfers and leader failures; [`load_scenario`] reads one from a
//!   file.
//! - [`run_scenario`] plays a script against a [`Cluster`]: ten logical clients sending
//!   their transfers concurrently, replicas made available or not per set, `LF` failing
//!   the leader, and a [`RunReport`] of what was committed, rejected or left pending.
//!   [`Console`] decides whether it pauses between sets for inspection commands.
//! - [`Cluster`] is the small, transport-agnostic view of a running cluster the runner
//!   and the CLI use; [`LocalCluster`] runs one in this process over the in-memory
//!   transport, each replica behind a [`Gate`] (from `paxos-transport-tcp`) that makes
//!   it unavailable (it drops all protocol traffic) without stopping it.
//! - PrintDB, PrintLog, PrintStatus and PrintView: [`gather_db`], [`Cluster::log`],
//!   [`gather_status`], [`gather_views`] return serde types, and [`format_db`],
//!   [`format_log`], [`format_status`], [`format_views`] render them as [`Table`]s.
//! - [`expected_balances`] and [`replay`] compute reference outcomes for tests.
//! - [`TrackedCluster`] remembers which replicas a run made unavailable, so an
//!   interrupted run can [restore](TrackedCluster::restore) them; [`heal`] makes every
//!   replica available (`bank heal`).
//! - [`inspect_data_dir`] and [`remove_data_dir`] recognise and remove a replica's data
//!   directory (`bank reset`).
//! - Replica processes use the library's client path (`paxos-transport-tcp`, re-exported
//!   here): [`ClusterConfig`] is the TOML file naming the replicas and their addresses;
//!   [`NodeServer`] runs one bank replica on its TCP address (what `bank node` does,
//!   with the bank's query hook from [`node_options`]); [`RemoteCluster`] talks to such
//!   processes, and this crate makes it a [`Cluster`], which the other `bank`
//!   subcommands use.
//!
//! ```
//! use bank_app::{expected_balances, Bank, Scenario, SAMPLE_SCENARIO};
//!
//! let scenario = Scenario::parse(SAMPLE_SCENARIO).unwrap();
//! let run = expected_balances(&scenario, &Bank::new());
//! println!("{}", run.bank); // A=4 B=12 …
//! assert_eq!(run.bank.total(), 100);
//! ```
//!
//! Playing a script against five replicas in this process:
//!
//! ```
//! use bank_app::{
//!     await_agreement, run_scenario, Console, LocalCluster, LocalClusterOptions,
//!     RunOptions, Scenario,
//! };
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let script = "Set Number,Transactions,Live Nodes
//! 1,\"(A, B, 3)\",\"[n1, n2, n3, n4, n5]\"
//! ,LF,
//! ,\"(B, C, 13)\",
//! ";
//! let scenario = Scenario::parse(script)?;
//! let cluster = LocalCluster::start(LocalClusterOptions::default())?;
//! let mut console = Console::new(std::io::sink()); // never pauses
//! let report = run_scenario(&cluster, &scenario, &RunOptions::default(), &mut console).await?;
//! assert_eq!((report.committed(), report.rejected(), report.pending()), (2, 0, 0));
//! assert!(report.leader_failures().all(|f| f.node.is_some()));
//! println!("{}", report.summary());
//!
//! let agreement = await_agreement(&cluster, Duration::from_secs(5)).await;
//! assert!(agreement.agree && agreement.total() == 100);
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod account;
mod availability;
mod bank;
mod bench;
mod cluster;
mod datadir;
mod health;
mod inspect;
mod local;
mod reference;
mod remote;
mod runner;
mod scenario;
mod table;
#[cfg(test)]
mod tests;

pub use account::{Account, AccountError};
pub use availability::{heal, TrackedCluster};
pub use bank::{Bank, BankCommand, BankError, BankOutput, Rejection, DEFAULT_INITIAL_BALANCE};
pub use bench::{run_bench, BenchOptions, BenchProgress, BenchReport, BenchWorkload};
pub use cluster::{
    Cluster, ClusterError, DbSnapshot, EntryValue, LogEntry, NoAnswer, MAX_LOG_ENTRIES,
};
pub use datadir::{inspect_data_dir, remove_data_dir, DataDir, DataDirError, DataDirOwner};
pub use health::{format_health, gather_health, health_leader, health_rows, HealthRow};
pub use inspect::{
    format_db, format_log, format_status, format_views, gather_db, gather_status, gather_views,
    run_command, ClientNames, CommandError, ConsoleCommand, NodeResult, CONSOLE_HELP,
};
pub use local::{LocalCluster, LocalClusterError, LocalClusterOptions};
pub use paxos_transport_tcp::{
    ClusterConfig, ClusterConfigError as ConfigError, Gate, GatedTransport, NodeConfig, NodeStatus,
    RemoteCluster, RemoteError, RemoteOptions, ServeError, DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_CLUSTER_ID, MAX_CONFIG_BYTES,
};
pub use reference::{expected_balances, replay, Outcome, ReferenceRun};
pub use remote::node_options;
pub use runner::{
    await_agreement, load_scenario, run_scenario, Agreement, Console, ConsoleInput, ConsoleLine,
    LeaderFailure, LineEditor, LoadError, RunError, RunOptions, RunProgress, RunReport, SetReport,
    TransferOutcome, TransferRecord,
};
pub use scenario::{
    Item, LineError, Scenario, ScenarioError, ScenarioOptions, TxSet, MAX_LINE_BYTES,
    MAX_SCENARIO_BYTES, MAX_SCENARIO_LINES, SAMPLE_SCENARIO, SCENARIO_HEADER,
};

/// A bank replica serving its peers and clients on one TCP address (`bank node`):
/// the library's node server over [`Bank`]. Start it with [`node_options`].
pub type NodeServer = paxos_transport_tcp::NodeServer<Bank>;

/// How a [`NodeServer`] runs; [`node_options`] gives the bank's.
pub type NodeServerOptions = paxos_transport_tcp::NodeServerOptions<Bank>;
pub use table::{Align, Table};
