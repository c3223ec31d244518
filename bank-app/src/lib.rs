//! A bank ledger replicated with `paxos-core`: the state machine, transaction scripts and
//! the cluster configuration of the `bank` CLI.
//!
//! - [`Bank`] is a [`StateMachine`](paxos_core::StateMachine) over accounts `A` to `J`
//!   (by default), applying [`BankCommand`]s: a transfer either moves its amount or is
//!   [rejected](Rejection) without change.
//! - [`Scenario`] parses the CSV transaction scripts (see [`SAMPLE_SCENARIO`]) into sets
//!   of live replicas, transfers and leader failures.
//! - [`expected_balances`] and [`replay`] compute reference outcomes for tests.
//! - [`ClusterConfig`] is the TOML file naming the replicas and their addresses.
//!
//! ```
//! use bank_app::{expected_balances, Bank, Scenario, SAMPLE_SCENARIO};
//!
//! let scenario = Scenario::parse(SAMPLE_SCENARIO).unwrap();
//! let run = expected_balances(&scenario, &Bank::new());
//! println!("{}", run.bank); // A=4 B=12 …
//! assert_eq!(run.bank.total(), 100);
//! ```

mod account;
mod bank;
mod config;
mod reference;
mod scenario;
#[cfg(test)]
mod tests;

pub use account::{Account, AccountError};
pub use bank::{Bank, BankCommand, BankError, BankOutput, Rejection, DEFAULT_INITIAL_BALANCE};
pub use config::{
    ClusterConfig, ConfigError, NodeConfig, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_CLUSTER_ID,
    MAX_CONFIG_BYTES,
};
pub use reference::{expected_balances, replay, Outcome, ReferenceRun};
pub use scenario::{
    Item, LineError, Scenario, ScenarioError, ScenarioOptions, TxSet, MAX_LINE_BYTES,
    MAX_SCENARIO_BYTES, MAX_SCENARIO_LINES, SAMPLE_SCENARIO, SCENARIO_HEADER,
};
