//! Multi-Paxos with a stable leader.
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod client;
mod config;
mod error;
mod message;
#[cfg(test)]
mod mutation;
mod node;
mod replica;
mod sessions;
#[cfg(test)]
mod sim;
mod traits;
mod types;

pub use client::{Client, ClientOptions, Endpoint, EndpointError};
pub use config::{Config, MAX_MEMBERS};
pub use error::{ClientError, ConfigError, NodeError, RestoreError, StorageError, TransportError};
pub use message::{Message, PromiseEntry};
pub use node::{spawn_node, NodeHandle, NodeOptions};
pub use replica::{
    Ready, Replica, ReplicaStatus, Role, SlotInfo, SlotStatus, ViewChange, ViewDirection,
};
pub use sessions::{Session, SessionCheck, Sessions};
pub use traits::{
    apply_op, MemStorage, PersistOp, PersistentState, StateMachine, Storage, StoredEntry, Transport,
};
pub use types::{Ballot, ClientId, NodeId, Reply, Request, Response, Slot, Value};
