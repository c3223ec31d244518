//! Multi-Paxos with a stable leader, for replicating any deterministic state machine
//! across `2f + 1` replicas while tolerating `f` crashed ones.
//!
//! # Layers
//! - [`Replica`]: the protocol, sans-IO. Synchronous and deterministic: inputs are peer
//!   messages, client requests and ticks; outputs ([`Ready`]) are writes to persist,
//!   messages to send and replies to clients. It reads no clock, touches no socket and
//!   draws randomness only from [`Config::seed`], so the crate's simulation can drive
//!   whole clusters of it under seeded faults.
//! - The seams: [`StateMachine`] (what is replicated), [`Transport`] (how replicas
//!   talk) and [`Storage`] (where an acceptor's promises and accepted values live;
//!   [`MemStorage`] for tests).
//! - [`Replica::drive`] / [`Ready::deliver`]: the drive loop, persist then send then
//!   reply, shared by the node driver, the simulation and the benchmarks.
//! - Feature `runtime` (default): `spawn_node`, the tokio driver that owns a replica, a
//!   transport and a storage and gives out a cloneable `NodeHandle`; `Client`:
//!   exactly-once submission with sessions, redirects and retries. Without it the crate
//!   depends on no async runtime.
//! - Feature `testing`: `testing`, the test kit: the deterministic simulation for your
//!   own state machine, the linearizability checker, the storage conformance suite.
//!
//! # The protocol
//! Ballots are `(round, node_id)`. A replica that hears nothing from a leader for a
//! randomized election timeout runs phase 1 once for every slot above its commit point:
//! PREPARE, then PROMISEs carrying the acceptors' accepted entries. The new leader keeps,
//! per slot, the value accepted at the highest ballot, fills gaps with no-ops, and
//! announces the merged log in a NEW-VIEW. It then runs phase 2 (ACCEPT / ACCEPTED) with
//! many slots in flight and many slots per ACCEPT; commit points ride on ACCEPTs and
//! heartbeats, and replicas fetch chosen values they missed. Every replica executes the
//! log strictly in slot order. A replicated session table ([`Sessions`]) answers a retried
//! request from its cache, so each request is executed at most once even across leader
//! changes.
//!
//! # Driving a replica by hand
//! ```
//! use paxos_core::{Config, MemStorage, Replica, Request, Response, Storage};
//! # use paxos_core::{StateMachine, RestoreError};
//! # #[derive(Default)] struct Counter(u64);
//! # impl StateMachine for Counter {
//! #     type Command = u64; type Output = u64;
//! #     fn apply(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
//! #     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//! #     fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> {
//! #         self.0 = u64::from_le_bytes(b.try_into().map_err(|_| RestoreError::new("8 bytes"))?); Ok(())
//! #     }
//! # }
//! // Three replicas, their storage, and a network that is a plain queue.
//! let ids = vec![1, 2, 3];
//! let mut storage: Vec<MemStorage> = ids.iter().map(|_| MemStorage::new()).collect();
//! let mut replicas: Vec<Replica<Counter>> = ids
//!     .iter()
//!     .zip(&mut storage)
//!     .map(|(&id, s)| Replica::new(Config::new(id, ids.clone()), Counter::default(), s.load().unwrap()).unwrap())
//!     .collect();
//! let mut in_flight = Vec::new();
//! let mut replies: Vec<paxos_core::Reply> = Vec::new();
//! let payload = postcard::to_allocvec(&5u64).unwrap();
//! for round in 0..200 {
//!     for (i, r) in replicas.iter_mut().enumerate() {
//!         r.tick();
//!         if round == 100 && r.is_leader() {
//!             r.handle_request(Request::register(9)); // 9: a nonce to spot the reply
//!         }
//!         if round == 150 && r.is_leader() {
//!             // The registration's reply carries the session id the cluster assigned.
//!             let Response::Ok(id) = &replies.iter().find(|r| r.client == 9).unwrap().response
//!             else { panic!("registered") };
//!             let session: u64 = postcard::from_bytes(id).unwrap();
//!             r.handle_request(Request { client: session, seq: 1, payload: payload.clone().into() });
//!         }
//!         // Persist, then send, then reply (see `Ready::deliver`).
//!         let id = r.id();
//!         r.drive(&mut storage[i], |to, m| in_flight.push((id, to, m)), |reply| replies.push(reply))
//!             .unwrap();
//!     }
//!     for (from, to, m) in std::mem::take(&mut in_flight) {
//!         let i = ids.iter().position(|id| *id == to).unwrap();
//!         replicas[i].handle_message(from, m);
//!     }
//! }
//! let five = postcard::to_allocvec(&5u64).unwrap();
//! assert!(replies.iter().any(|r| r.seq == 1 && r.response == Response::Ok(five.clone().into())));
//! assert!(replicas.iter().all(|r| r.state_machine().0 == 5));
//! ```
//!
//! # Running nodes
//! `spawn_node` (feature `runtime`) does the above with real timers and a real [`Transport`] (the
//! `paxos-transport-mem` and `paxos-transport-tcp` crates provide two); see its docs and
//! the `kv` example (`cargo run --example kv`).
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod attack_tests;
#[cfg(test)]
mod attack_tests2;
#[cfg(test)]
mod batch_tests;
#[cfg(feature = "runtime")]
mod client;
#[cfg(test)]
mod clock_tests;
mod config;
mod counters;
mod drive;
mod error;
#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod held_slot_review_tests;
#[cfg(test)]
mod learner_tests;
#[cfg(test)]
mod membership_attack_tests;
#[cfg(test)]
mod membership_attack_tests2;
#[cfg(test)]
mod membership_attack_tests3;
mod message;
#[cfg(test)]
mod mutation;
#[cfg(feature = "runtime")]
mod node;
#[cfg(all(test, feature = "runtime"))]
mod node_inspect_tests;
#[cfg(feature = "runtime")]
mod node_metrics;
#[cfg(all(test, feature = "runtime"))]
mod node_order_tests;
#[cfg(all(test, feature = "runtime"))]
mod node_transfer_tests;
#[cfg(all(test, feature = "runtime"))]
mod pipeline_review_tests;
#[cfg(test)]
mod read_tests;
mod replica;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod scripted;
mod sessions;
#[cfg(test)]
mod sim;
pub mod slot_map;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
#[cfg(test)]
mod torn_round_tests;
mod traits;
mod types;
#[cfg(test)]
mod unwritten_commit_tests;

#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub use client::{
    Client, ClientOptions, Endpoint, EndpointError, EndpointErrorKind, MismatchedReply,
};
pub use config::{
    Config, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_SNAPSHOT_BYTES, DEFAULT_SESSION_CLOCK_TICKS,
    DEFAULT_SESSION_TTL_TICKS, DEFAULT_SNAPSHOT_CHUNK_BYTES, MAX_MEMBERS, VALUE_OVERHEAD_BYTES,
};
pub use counters::Counters;
pub use error::{
    CheckpointError, ClientError, ConfigError, ErrorCause, NodeError, ReconfigureError,
    ReplicaError, RestoreError, StorageError, TransferError, TransportError,
};
pub use message::{Message, PromiseEntry};
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub use node::{spawn_node, NodeHandle, NodeOptions};
#[cfg(feature = "runtime")]
#[cfg_attr(docsrs, doc(cfg(feature = "runtime")))]
pub use node_metrics::names as metric_names;
pub use replica::{
    CheckpointJob, FinishedCheckpoint, Ready, Replica, ReplicaStatus, Role, SlotInfo, SlotStatus,
    ViewChange, ViewDirection,
};
pub use sessions::{CachedReply, Session, SessionCheck, Sessions};
pub use slot_map::SlotMap;
pub use traits::{
    apply_op, apply_owned_op, AcceptorStatus, Checkpoint, MemStorage, PersistOp, PersistentState,
    SnapshotJob, StateMachine, Storage, StoredEntry, Transport,
};
pub use types::{
    Ballot, ClientId, Member, Membership, NodeId, Reply, Request, Response, Slot, StaleAnswer,
    Value, READ_SEQ, STALE_READ_BASE,
};
