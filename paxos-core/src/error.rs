//! Error types, one enum per concern.

use std::sync::Arc;

use thiserror::Error;

use crate::types::Slot;

/// The underlying cause an error keeps as its [`source`](std::error::Error::source): any
/// error, shared so that errors holding one stay `Clone`.
pub type ErrorCause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A configuration was rejected by [`Config::validate`](crate::Config::validate).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The member list is empty.
    #[error("cluster has no members")]
    NoMembers,
    /// The replica's own id is not among the members.
    #[error("node {0} is not a member of the cluster")]
    NotAMember(u64),
    /// A node id appears twice.
    #[error("node {0} is listed twice")]
    DuplicateMember(u64),
    /// More members than the replica supports.
    #[error("at most {max} members are supported, got {got}")]
    TooManyMembers {
        /// The limit.
        max: usize,
        /// The number given.
        got: usize,
    },
    /// A numeric setting is out of range.
    #[error("{name} must be {requirement}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// What it must be.
        requirement: &'static str,
    },
}

/// A [`Replica`](crate::Replica) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The recovered checkpoint is damaged or cannot be restored.
    #[error("cannot install the recovered checkpoint: {0}")]
    Checkpoint(#[source] CheckpointError),
}

/// Why a recovered checkpoint could not be installed (see [`ReplicaError::Checkpoint`]).
///
/// Equality compares the variant and its fields, not the cause of
/// [`CheckpointError::Undecodable`].
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The checkpoint's data does not match its digest.
    #[error("checkpoint at slot {slot} fails its digest")]
    Digest {
        /// The slot the checkpoint was taken at.
        slot: Slot,
    },
    /// The replica's snapshot (state machine snapshot and sessions) cannot be decoded.
    #[error("undecodable checkpoint: {cause}")]
    Undecodable {
        /// The slot the checkpoint was taken at.
        slot: Slot,
        /// The decoder's error.
        #[source]
        cause: ErrorCause,
    },
    /// The state machine refused its snapshot.
    #[error("{0}")]
    Restore(#[from] RestoreError),
}

impl PartialEq for CheckpointError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (CheckpointError::Digest { slot: a }, CheckpointError::Digest { slot: b }) => a == b,
            (
                CheckpointError::Undecodable { slot: a, .. },
                CheckpointError::Undecodable { slot: b, .. },
            ) => a == b,
            (CheckpointError::Restore(a), CheckpointError::Restore(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for CheckpointError {}

/// A [`Storage`](crate::Storage) failed. The core's errors carry no `io::Error`;
/// implementations describe the cause in the message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Reading or writing the medium failed.
    #[error("storage io failed: {0}")]
    Io(String),
    /// The stored data is damaged; serving from it would be wrong.
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// The stored data belongs to another cluster or node.
    #[error("storage belongs elsewhere: {0}")]
    Mismatch(String),
}

/// A [`Transport`](crate::Transport) could not take a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport was shut down.
    #[error("transport closed")]
    Closed,
    /// The destination is not a known peer.
    #[error("unknown peer {0}")]
    UnknownPeer(u64),
}

/// A state machine snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("cannot restore snapshot: {reason}")]
pub struct RestoreError {
    reason: String,
}

impl RestoreError {
    /// An error with a reason.
    pub fn new(reason: impl Into<String>) -> Self {
        RestoreError {
            reason: reason.into(),
        }
    }
}

/// A request to a node through a [`NodeHandle`](crate::NodeHandle) failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node has stopped (shut down, or its storage failed).
    #[error("node stopped")]
    Stopped,
    /// The node could not load its state from its [`Storage`](crate::Storage).
    #[error("node cannot start: {0}")]
    Load(#[source] StorageError),
    /// The replica could not be built from the configuration and the loaded state.
    #[error("node cannot start: {0}")]
    Start(#[source] ReplicaError),
}

/// A [`Client`](crate::Client) request did not complete.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The deadline passed; the request may or may not have been executed.
    #[error("request timed out; it may or may not have been executed")]
    Timeout,
    /// The cluster dropped the client's session; the request may or may not have been
    /// executed. Later requests run under a new session.
    #[error("client session expired; the request may or may not have been executed")]
    SessionExpired,
    /// The command could not be encoded, or the output not decoded.
    #[error("codec error: {0}")]
    Codec(String),
    /// The cluster rejected the command as undecodable.
    #[error("command rejected: {0}")]
    Invalid(String),
    /// The client has no endpoints to talk to.
    #[error("client has no endpoints")]
    NoEndpoints,
}
