//! The test kit (feature `testing`): what this crate checks itself with, offered for
//! your own state machines and storages.
//!
//! - [`Simulation`]: the deterministic simulation of whole clusters of the real
//!   [`Replica`](crate::Replica), with an adversarial network, crashes, amnesia and
//!   clients, pointed at your [`StateMachine`](crate::StateMachine) and checked against
//!   your sequential [`Model`]. See the [`sim`] module.
//! - [`check`] / [`check_with_budget`]: linearizability of any recorded client history
//!   against a [`Model`] (Wing & Gong with Lowe's memoization). See [`linearizability`].
//! - [`StorageSuite`]: the conformance suite every [`Storage`](crate::Storage) must pass
//!   (the crate's `MemStorage` and `paxos-storage-file`'s `FileStorage` do), in one line.
//!
//! ```toml
//! [dev-dependencies]
//! paxos-core = { version = "0.1", features = ["testing"] }
//! ```

pub mod linearizability;
pub mod sim;
mod storage;

pub use linearizability::{
    check, check_with_budget, AppendLog, AppendLogViolation, CheckError, Counterexample, History,
    HistoryError, Model, OpId, Operation, Return, DEFAULT_MAX_STEPS,
};
pub use sim::{Failure, Gen, Report, Simulation, Workload};
pub use storage::{StorageFactory, StorageSuite, SuiteFailure};
