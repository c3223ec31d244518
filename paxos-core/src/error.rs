//! Error types, one enum per concern.

use std::fmt;
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
    #[error("node {0} is not a member of the cluster (a learner must say so: Config::learner)")]
    NotAMember(u64),
    /// A learner's id is among the voting members.
    #[error("node {0} is a voting member, so it cannot be a learner")]
    LearnerIsAMember(u64),
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
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The checkpoint's data does not match its digest.
    Digest {
        /// The slot the checkpoint was taken at.
        slot: Slot,
    },
    /// The replica's snapshot (state machine snapshot and sessions) cannot be decoded.
    Undecodable {
        /// The slot the checkpoint was taken at.
        slot: Slot,
        /// The decoder's error.
        cause: ErrorCause,
    },
    /// The state machine refused its snapshot.
    Restore(RestoreError),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Digest { slot } => {
                write!(f, "checkpoint at slot {slot} fails its digest")
            }
            CheckpointError::Undecodable { cause, .. } => {
                write!(f, "undecodable checkpoint: {cause}")
            }
            CheckpointError::Restore(e) => e.fmt(f),
        }
    }
}

// By hand rather than derived: thiserror would hand out the `Arc` as the source, which
// hides the cause's own type from `downcast_ref`.
impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Digest { .. } => None,
            CheckpointError::Undecodable { cause, .. } => Some(&**cause),
            CheckpointError::Restore(e) => Some(e),
        }
    }
}

impl From<RestoreError> for CheckpointError {
    fn from(e: RestoreError) -> Self {
        CheckpointError::Restore(e)
    }
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

/// A [`Storage`](crate::Storage) failed.
///
/// Each variant names a concern and keeps what went wrong as `what` (short and
/// lowercase, naming the file or record where there is one) and the underlying error,
/// if any, as its [`source`](std::error::Error::source): an `io::Error`, a decoder's
/// error, an implementation's own error type. The core itself builds no `io::Error`;
/// implementations pass theirs to the constructors ([`StorageError::io_because`] and
/// the like). The message quotes the cause's.
///
/// Equality compares the variant and `what`, not the causes (which need not be
/// comparable).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StorageError {
    /// Reading or writing the medium failed.
    #[non_exhaustive]
    Io {
        /// What failed, e.g. `cannot write /data/wal-00000000000000000002.log`.
        what: String,
        /// The underlying error, usually an `io::Error`.
        cause: Option<ErrorCause>,
    },
    /// The stored data is damaged; serving from it would be wrong.
    #[non_exhaustive]
    Corrupt {
        /// What is damaged, and where.
        what: String,
        /// The underlying error, e.g. a decoder's.
        cause: Option<ErrorCause>,
    },
    /// The stored data belongs to another cluster or node, or is otherwise intact but
    /// not usable by this replica.
    #[non_exhaustive]
    Mismatch {
        /// Whose data it is, and where.
        what: String,
        /// The underlying error, if any.
        cause: Option<ErrorCause>,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let concern = match self {
            StorageError::Io { .. } => "storage io failed",
            StorageError::Corrupt { .. } => "storage is corrupt",
            StorageError::Mismatch { .. } => "storage belongs elsewhere",
        };
        write!(f, "{concern}: {}", self.what())?;
        if let Some(cause) = self.cause() {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

// By hand rather than derived: thiserror would hand out the `Arc` as the source, which
// hides the cause's own type (an `io::Error`, say) from `downcast_ref`.
impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause().map(|cause| &**cause as _)
    }
}

impl StorageError {
    /// Reading or writing failed, with no underlying error to keep.
    pub fn io(what: impl Into<String>) -> Self {
        StorageError::Io {
            what: what.into(),
            cause: None,
        }
    }

    /// Reading or writing failed because of `cause` (usually an `io::Error`).
    pub fn io_because(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Io {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The stored data is damaged.
    pub fn corrupt(what: impl Into<String>) -> Self {
        StorageError::Corrupt {
            what: what.into(),
            cause: None,
        }
    }

    /// The stored data is damaged, as `cause` (e.g. a decoder's error) shows.
    pub fn corrupt_because(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Corrupt {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The stored data belongs elsewhere.
    pub fn mismatch(what: impl Into<String>) -> Self {
        StorageError::Mismatch {
            what: what.into(),
            cause: None,
        }
    }

    /// The stored data belongs elsewhere, as `cause` shows.
    pub fn mismatch_because(
        what: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StorageError::Mismatch {
            what: what.into(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// What went wrong: the message without the variant's prefix and the cause.
    pub fn what(&self) -> &str {
        match self {
            StorageError::Io { what, .. }
            | StorageError::Corrupt { what, .. }
            | StorageError::Mismatch { what, .. } => what,
        }
    }

    /// The underlying error, if any (what [`source`](std::error::Error::source)
    /// returns).
    pub fn cause(&self) -> Option<&ErrorCause> {
        match self {
            StorageError::Io { cause, .. }
            | StorageError::Corrupt { cause, .. }
            | StorageError::Mismatch { cause, .. } => cause.as_ref(),
        }
    }
}

impl PartialEq for StorageError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other) && self.what() == other.what()
    }
}

impl Eq for StorageError {}

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

/// [`Replica::transfer_leadership`](crate::Replica::transfer_leadership) refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This replica does not lead; `leader` is the one it believes in.
    #[error("this replica does not lead (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica believes in.
        leader: Option<u64>,
    },
    /// The target is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    NotAMember(u64),
    /// The target is this replica, which leads already.
    #[error("this replica leads already")]
    AlreadyLeader,
}

/// A membership change was refused ([`Replica::reconfigure`](crate::Replica::reconfigure)).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReconfigureError {
    /// This replica does not lead; `leader` is the one it believes in.
    #[error("this replica does not lead (leader: {leader:?})")]
    NotLeader {
        /// The leader this replica believes in.
        leader: Option<u64>,
    },
    /// A change is already under way (its stop-sign is not executed yet), or the leader
    /// is still re-proposing what it took over at its election, or handing over:
    /// try again shortly.
    #[error("a membership change or a leader hand-over is under way; try again")]
    Busy,
    /// The new configuration is not valid.
    #[error("invalid membership: {0}")]
    Invalid(#[source] ConfigError),
    /// More new members than the new configuration tolerates failures: a new member
    /// votes only after a majority of the *other* members granted its recovery, so
    /// with more than `max` of them at once none could ever vote. Add them a few at a
    /// time.
    #[error(
        "{added} new members at once; at most {max} (the new configuration's tolerated failures)"
    )]
    TooManyNewMembers {
        /// The members not in the current configuration.
        added: usize,
        /// The most the new configuration allows at once.
        max: usize,
    },
    /// Members that stay have not voted for this leader yet (they may be recovering,
    /// down or behind): with the new members they would leave the new configuration
    /// without a majority able to vote. Try again once they have (or leave them out).
    #[error("members {members:?} have not voted for this leader yet; with {added} new members the new configuration could not vote")]
    MembersNotVoting {
        /// The staying members not heard voting.
        members: Vec<u64>,
        /// The members not in the current configuration.
        added: usize,
    },
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
    /// The replica refused to hand leadership over
    /// ([`NodeHandle::transfer_leadership`](crate::NodeHandle::transfer_leadership)).
    #[error("leader transfer refused: {0}")]
    Transfer(#[source] TransferError),
    /// The replica refused a membership change
    /// ([`NodeHandle::reconfigure`](crate::NodeHandle::reconfigure)).
    #[error("membership change refused: {0}")]
    Reconfigure(#[source] ReconfigureError),
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    #[test]
    fn storage_errors_keep_their_cause_downcastable() {
        let e = StorageError::io_because(
            "cannot write /d/x.log",
            io::Error::new(io::ErrorKind::StorageFull, "disk full"),
        );
        assert_eq!(
            e.to_string(),
            "storage io failed: cannot write /d/x.log: disk full"
        );
        let io = e.source().and_then(|c| c.downcast_ref::<io::Error>());
        assert_eq!(io.map(io::Error::kind), Some(io::ErrorKind::StorageFull));
        assert_eq!(e.what(), "cannot write /d/x.log");

        let plain = StorageError::corrupt("x: offset 3: truncated");
        assert_eq!(
            plain.to_string(),
            "storage is corrupt: x: offset 3: truncated"
        );
        assert!(plain.source().is_none());
        assert_eq!(
            StorageError::mismatch("other node").to_string(),
            "storage belongs elsewhere: other node"
        );
    }

    #[test]
    fn storage_errors_compare_by_concern_and_what() {
        let cause = || io::Error::other("boom");
        assert_eq!(
            StorageError::io_because("w", cause()),
            StorageError::io_because("w", io::Error::other("other"))
        );
        assert_eq!(
            StorageError::io("w"),
            StorageError::io_because("w", cause())
        );
        assert_ne!(StorageError::io("w"), StorageError::corrupt("w"));
        assert_ne!(StorageError::io("w"), StorageError::io("v"));
    }

    #[test]
    fn checkpoint_errors_keep_their_cause() {
        let restore = ReplicaError::Checkpoint(RestoreError::new("bad").into());
        assert_eq!(
            restore.to_string(),
            "cannot install the recovered checkpoint: cannot restore snapshot: bad"
        );
        let inner = restore.source().and_then(|c| c.source());
        assert_eq!(
            inner.and_then(|c| c.downcast_ref::<RestoreError>()),
            Some(&RestoreError::new("bad"))
        );
        let undecodable = CheckpointError::Undecodable {
            slot: 4,
            cause: Arc::new(io::Error::other("eof")),
        };
        assert_eq!(undecodable.to_string(), "undecodable checkpoint: eof");
        assert!(undecodable
            .source()
            .is_some_and(|c| c.downcast_ref::<io::Error>().is_some()));
    }
}
