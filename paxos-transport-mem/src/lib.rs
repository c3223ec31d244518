//! An in-process [`Transport`](paxos_core::Transport) for paxos-core over tokio channels,
//! with a network that injects faults.
//!
//! A [`MemNetwork`] connects any number of nodes in one process; each node gets a
//! [`MemTransport`] from [`MemNetwork::join`] (or all at once from
//! [`MemNetwork::cluster`]). Tests and examples use it to run real node drivers without
//! sockets, and to break the network under them:
//!
//! - crash and restart a node ([`MemNetwork::crash`], [`MemNetwork::restart`]);
//! - isolate a node, partition the cluster, or block one direction of a link
//!   ([`MemNetwork::isolate`], [`MemNetwork::partition`], [`MemNetwork::block`]), and undo
//!   all of that with [`MemNetwork::heal`];
//! - drop, duplicate, delay and so reorder messages at random ([`MemNetwork::set_faults`]
//!   with [`Faults`]), every choice drawn from a seeded RNG so a seed gives the same
//!   sequence of choices every run.
//!
//! With no faults set, a send is a plain non-blocking channel send: no lock on the
//! network, no task spawned, messages between two nodes in order. That keeps the
//! transport fit for throughput benchmarks of the node driver.
//!
//! Each node's inbound queue is bounded ([`DEFAULT_QUEUE_CAPACITY`] by default); a send to
//! a full queue drops the message rather than waiting, as the protocol tolerates loss.
//! [`MemNetwork::stats`] counts what was sent, delivered, dropped and duplicated.
//!
//! # Example
//! ```
//! use std::time::Duration;
//!
//! use paxos_core::{Ballot, Message, Transport};
//! use paxos_transport_mem::{Faults, MemNetwork};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Three nodes, ids 1, 2 and 3; the seed drives every random fault.
//!     let (network, mut nodes) = MemNetwork::cluster(7, [1, 2, 3]);
//!     let heartbeat = Message::Heartbeat { ballot: Ballot::new(1, 1), commit_point: 0 };
//!
//!     nodes[0].send(2, heartbeat.clone())?;
//!     let (from, message) = nodes[1].recv().await.ok_or("network closed")?;
//!     assert_eq!((from, message), (1, heartbeat.clone()));
//!
//!     // Cut node 3 off: what is sent to it is lost.
//!     network.isolate(3);
//!     nodes[0].send(3, heartbeat.clone())?;
//!     assert_eq!(nodes[2].try_recv(), None);
//!     network.heal();
//!
//!     // Lose a tenth of all messages and delay the rest by up to 5 ms.
//!     network.set_faults(Faults {
//!         drop_rate: 0.1,
//!         max_delay: Duration::from_millis(5),
//!         ..Faults::none()
//!     });
//!
//!     let stats = network.stats();
//!     assert_eq!((stats.sent, stats.delivered, stats.dropped), (2, 1, 1));
//!     Ok(())
//! }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod faults;
mod network;
mod transport;

pub use faults::Faults;
pub use network::{MemNetwork, NetStats, DEFAULT_QUEUE_CAPACITY};
pub use transport::MemTransport;
