//! The cluster as the scenario runner and the CLI see it: a small, transport-agnostic
//! trait, and the serde types its inspection calls return.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paxos_core::{
    AcceptorStatus, Ballot, ClientId, Endpoint, ErrorCause, NodeId, Replica, Request, Slot,
    SlotInfo, SlotStatus, Value, ViewChange,
};
pub(crate) use paxos_transport_tcp::NodeStatus;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::account::Account;
use crate::bank::{Bank, BankCommand};

/// The most log entries [`Cluster::log`] returns: the latest ones are kept.
pub const MAX_LOG_ENTRIES: usize = 10_000;

/// A [`Cluster`] operation on one replica failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The cluster has no replica with this id.
    UnknownNode(NodeId),
    /// The replica did not answer (stopped, crashed, or not reachable over the network).
    Unreachable {
        /// The replica.
        node: NodeId,
        /// Why: the transport's, the node's or the driver's own error.
        cause: ErrorCause,
    },
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::UnknownNode(n) => write!(f, "no replica n{n} in this cluster"),
            ClusterError::Unreachable { node, cause } => write!(f, "n{node} unreachable: {cause}"),
        }
    }
}

// By hand rather than derived: thiserror would hand out the `Arc` as the source, which
// hides the cause's own type from `downcast_ref`.
impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::UnknownNode(_) => None,
            ClusterError::Unreachable { cause, .. } => Some(&**cause),
        }
    }
}

impl ClusterError {
    /// Replica `node` is unreachable because of `cause`.
    pub fn unreachable(
        node: NodeId,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ClusterError::Unreachable {
            node,
            cause: Arc::new(cause),
        }
    }
}

/// A replica did not answer an inspection call in time.
#[derive(Clone, Copy, Debug, Error)]
#[error("no answer within {0:?}")]
pub struct NoAnswer(pub Duration);

/// One replica's copy of the bank (PrintDB).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSnapshot {
    /// The replica.
    pub node: NodeId,
    /// False while the replica is made unavailable.
    pub available: bool,
    /// Whether the replica votes; while it is [recovering](AcceptorStatus::Recovering)
    /// (or [pristine](AcceptorStatus::Pristine)) its balances may lag behind the
    /// cluster's.
    pub acceptor: AcceptorStatus,
    /// How many log slots the replica has executed: the balances reflect slots
    /// `0..executed`.
    pub executed: Slot,
    /// Every account's balance.
    pub balances: BTreeMap<Account, i64>,
}

impl DbSnapshot {
    /// The sum of all balances.
    pub fn total(&self) -> i128 {
        self.balances.values().map(|&b| i128::from(b)).sum()
    }
}

/// One slot of a replica's log, with its value decoded for the bank (PrintLog,
/// PrintStatus).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The slot.
    pub slot: Slot,
    /// Its status at this replica; [`SlotStatus::code`] gives the `X`/`A`/`C`/`E` letter.
    pub status: SlotStatus,
    /// The ballot the value was accepted at; `None` when there is no value, or when the
    /// replica learned the chosen value from a peer without accepting it.
    pub ballot: Option<Ballot>,
    /// The value.
    pub value: EntryValue,
}

impl LogEntry {
    /// Decodes a replica's slot for display.
    pub fn from_slot(info: SlotInfo) -> LogEntry {
        LogEntry {
            slot: info.slot,
            status: info.status,
            // The core reports `Ballot::ZERO` for a value learned by fetching it.
            ballot: info.ballot.filter(|b| *b != Ballot::ZERO),
            value: info.value.map_or(EntryValue::Empty, EntryValue::decode),
        }
    }

    /// The status letter: `X` (nothing), `A` (accepted), `C` (committed), `E` (executed).
    pub fn code(&self) -> char {
        self.status.code()
    }
}

/// What a log slot holds, decoded as a bank command where it is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryValue {
    /// Nothing is known about the slot.
    Empty,
    /// A no-op that filled a gap during a view change.
    Noop,
    /// A client registered a session. The cluster assigns it the session id equal to
    /// this entry's slot; numbered requests of that client name that id.
    Register {
        /// The registration nonce the client chose, which recognises the reply.
        nonce: ClientId,
    },
    /// A bank command.
    Command {
        /// The client's session id.
        client: ClientId,
        /// The request number within the session.
        seq: u64,
        /// The command.
        command: BankCommand,
    },
    /// A clock entry the leader proposed for session expiry (see
    /// [`paxos_core::Sessions`]): log time became `time`, and sessions idle for more
    /// than `idle_limit` ticks of log time were dropped.
    Clock {
        /// The log time it sets, in ticks.
        time: u64,
        /// The idleness, in ticks of log time, beyond which sessions expire.
        idle_limit: u64,
    },
    /// A request whose payload is not a bank command (it was rejected on execution).
    Undecodable {
        /// The client's session id.
        client: ClientId,
        /// The request number within the session.
        seq: u64,
        /// The payload's size.
        bytes: usize,
    },
    /// Several requests the leader packed into this one slot
    /// ([`paxos_core::Value::Batch`]), executed in this order; each is a
    /// [`Command`](EntryValue::Command) or an [`Undecodable`](EntryValue::Undecodable).
    Batch(Vec<EntryValue>),
    /// A membership change ([`paxos_core::Value::Reconfigure`]): from the next slot
    /// on, these nodes vote, in this epoch.
    Members {
        /// The epoch the change starts.
        epoch: u64,
        /// The voting members' ids.
        members: Vec<NodeId>,
    },
}

impl EntryValue {
    /// Decodes a slot value.
    pub fn decode(value: Value) -> EntryValue {
        match value {
            Value::Noop => EntryValue::Noop,
            Value::Request(r) => EntryValue::request(r),
            Value::Clock { time, idle_limit }
            | Value::ClockStep {
                time, idle_limit, ..
            } => EntryValue::Clock { time, idle_limit },
            Value::Batch(requests) => {
                EntryValue::Batch(requests.iter().cloned().map(EntryValue::request).collect())
            }
            Value::Reconfigure(m) => EntryValue::Members {
                epoch: m.epoch,
                members: m.ids(),
            },
        }
    }

    fn request(r: Request) -> EntryValue {
        if r.is_register() {
            return EntryValue::Register { nonce: r.client };
        }
        match postcard::from_bytes::<BankCommand>(&r.payload) {
            Ok(command) => EntryValue::Command {
                client: r.client,
                seq: r.seq,
                command,
            },
            Err(_) => EntryValue::Undecodable {
                client: r.client,
                seq: r.seq,
                bytes: r.payload.len(),
            },
        }
    }

    /// The session id a numbered request names. A registration names none: the
    /// session it creates is its slot. A batch names none either (its requests name
    /// theirs).
    pub fn client(&self) -> Option<ClientId> {
        match self {
            EntryValue::Command { client, .. } | EntryValue::Undecodable { client, .. } => {
                Some(*client)
            }
            EntryValue::Register { .. }
            | EntryValue::Empty
            | EntryValue::Noop
            | EntryValue::Clock { .. }
            | EntryValue::Members { .. }
            | EntryValue::Batch(_) => None,
        }
    }
}

impl fmt::Display for EntryValue {
    /// `A->B 2`, `balance A`, `no-op`, `register c…`, `clock t=…`, `[A->B 2; C->D 1]`
    /// for a batch, `members of epoch 1: n1, n2, n3`, `-` for an empty slot.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryValue::Empty => f.write_str("-"),
            EntryValue::Noop => f.write_str("no-op"),
            EntryValue::Register { nonce } => write!(f, "register {}", ShortClient(*nonce)),
            EntryValue::Command { command, .. } => write!(f, "{}", CommandDisplay(command)),
            EntryValue::Undecodable { bytes, .. } => write!(f, "undecodable ({bytes} bytes)"),
            EntryValue::Clock { time, .. } => write!(f, "clock t={time}"),
            EntryValue::Members { epoch, members } => {
                let ids: Vec<String> = members.iter().map(|m| format!("n{m}")).collect();
                write!(f, "members of epoch {epoch}: {}", ids.join(", "))
            }
            EntryValue::Batch(values) => {
                f.write_str("[")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Displays a client's registration nonce (a random 64-bit number) briefly: `c` and its
/// first 8 hex digits.
pub(crate) struct ShortClient(pub(crate) ClientId);

impl fmt::Display for ShortClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:08x}", self.0 >> 32)
    }
}

/// Displays a bank command compactly: `A->B 2`, `balance A`.
pub(crate) struct CommandDisplay<'a>(pub(crate) &'a BankCommand);

impl fmt::Display for CommandDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            BankCommand::Transfer { from, to, amount } => write!(f, "{from}->{to} {amount}"),
            BankCommand::Balance { account } => write!(f, "balance {account}"),
        }
    }
}

/// A running cluster of bank replicas, as the scenario runner drives it and the CLI
/// inspects it.
///
/// Implementations: [`LocalCluster`](crate::LocalCluster) runs every replica in this
/// process over the in-memory transport; [`RemoteCluster`](crate::RemoteCluster) talks
/// to replica processes (`bank node`) over TCP. The trait says nothing about transports.
///
/// # Contract
/// - A replica that is *unavailable* ([`set_available`](Cluster::set_available) with
///   `false`) drops all protocol traffic, as if crashed, but still answers the
///   inspection calls ([`replica_status`](Cluster::replica_status), [`db`](Cluster::db),
///   [`log`](Cluster::log), [`status`](Cluster::status), [`views`](Cluster::views)).
/// - Its client [endpoint](Cluster::endpoints) does not answer client requests: it fails
///   at once, or waits until the client's attempt times out.
/// - A replica that cannot be reached at all yields [`ClusterError::Unreachable`]; the
///   caller treats it as down and goes on. Implementations bound how long a call to an
///   unreachable replica can take.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// The voting replicas' ids, ascending.
    fn nodes(&self) -> Vec<NodeId>;

    /// The replicas the inspection commands (PrintDB, PrintStatus, PrintView,
    /// health) list: the voting ones, then any learners. By default [`nodes`](Self::nodes).
    fn inspected(&self) -> Vec<NodeId> {
        self.nodes()
    }

    /// One client endpoint per replica, for [`paxos_core::Client`]s.
    fn endpoints(&self) -> Vec<Arc<dyn Endpoint>>;

    /// Makes a replica available (it takes part in the protocol) or unavailable (it
    /// drops all protocol traffic and client requests).
    async fn set_available(&self, node: NodeId, available: bool) -> Result<(), ClusterError>;

    /// A replica's status and availability.
    async fn replica_status(&self, node: NodeId) -> Result<NodeStatus, ClusterError>;

    /// A replica's balances (PrintDB).
    async fn db(&self, node: NodeId) -> Result<DbSnapshot, ClusterError>;

    /// A replica's log, oldest slot first: at most the latest [`MAX_LOG_ENTRIES`]
    /// slots it knows about (PrintLog).
    async fn log(&self, node: NodeId) -> Result<Vec<LogEntry>, ClusterError>;

    /// One slot's status and value at a replica (PrintStatus).
    async fn status(&self, node: NodeId, slot: Slot) -> Result<LogEntry, ClusterError>;

    /// The view changes a replica sent or received, oldest first (PrintView).
    async fn views(&self, node: NodeId) -> Result<Vec<ViewChange>, ClusterError>;

    /// The current leader: among the available replicas that say they lead, the one
    /// with the highest ballot. `None` while no available replica leads (an election is
    /// under way, or no majority is available). Asks every replica, concurrently.
    async fn leader(&self) -> Option<NodeId> {
        let nodes = self.nodes();
        let statuses =
            futures::future::join_all(nodes.iter().map(|&n| self.replica_status(n))).await;
        statuses
            .into_iter()
            .filter_map(Result::ok)
            .filter(NodeStatus::is_available_leader)
            .max_by_key(|s| s.replica.promised)
            .map(|s| s.replica.id)
    }
}

/// The answers to the [`Cluster`] inspection calls, read from a replica inside its node
/// task. Shared by every implementation (in-process and the node server), so they all
/// report the same things.
pub(crate) mod read {
    use super::*;

    /// [`Cluster::replica_status`].
    pub(crate) fn status(r: &Replica<Bank>, available: bool) -> NodeStatus {
        NodeStatus::of(r, available)
    }

    /// [`Cluster::db`].
    pub(crate) fn db(r: &Replica<Bank>, available: bool) -> DbSnapshot {
        DbSnapshot {
            node: r.id(),
            available,
            acceptor: r.acceptor_status(),
            executed: r.executed(),
            balances: r.state_machine().balances().clone(),
        }
    }

    /// [`Cluster::log`]: the latest [`MAX_LOG_ENTRIES`] slots.
    pub(crate) fn log(r: &Replica<Bank>) -> Vec<LogEntry> {
        let end = r.status().log_end;
        let start = end.saturating_sub(MAX_LOG_ENTRIES as u64);
        r.log(start..end)
            .into_iter()
            .map(LogEntry::from_slot)
            .collect()
    }

    /// [`Cluster::status`].
    pub(crate) fn slot(r: &Replica<Bank>, slot: Slot) -> LogEntry {
        LogEntry::from_slot(r.slot(slot))
    }

    /// [`Cluster::views`].
    pub(crate) fn views(r: &Replica<Bank>) -> Vec<ViewChange> {
        r.view_changes().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use paxos_core::Request;

    use super::*;

    #[test]
    fn slot_values_decode_for_display() {
        let command = BankCommand::Transfer {
            from: Account::new('I').unwrap(),
            to: Account::A,
            amount: 20,
        };
        let payload = postcard::to_allocvec(&command).unwrap();
        let request = |seq, payload: Vec<u8>| {
            Value::Request(Request {
                client: 0xabcd_ef01_2345_6789,
                seq,
                payload: payload.into(),
            })
        };
        let decoded = EntryValue::decode(request(3, payload));
        assert_eq!(decoded.to_string(), "I->A 20");
        assert_eq!(decoded.client(), Some(0xabcd_ef01_2345_6789));
        let register = EntryValue::decode(Value::Request(Request::register(0xabcd_ef01_2345_6789)));
        assert_eq!(register.to_string(), "register cabcdef01");
        assert_eq!(register.client(), None);
        assert_eq!(EntryValue::decode(Value::Noop).to_string(), "no-op");
        let clock = EntryValue::decode(Value::Clock {
            time: 4000,
            idle_limit: 361_000,
        });
        assert_eq!(clock.to_string(), "clock t=4000");
        assert_eq!(clock.client(), None);
        let step = EntryValue::decode(Value::ClockStep {
            ballot: paxos_core::Ballot::new(3, 1),
            from: 3900,
            time: 4000,
            idle_limit: 361_000,
        });
        assert_eq!(step, clock);
        let junk = EntryValue::decode(request(4, vec![9, 9, 9]));
        assert_eq!(junk.to_string(), "undecodable (3 bytes)");
        let balance = BankCommand::Balance {
            account: Account::J,
        };
        assert_eq!(CommandDisplay(&balance).to_string(), "balance J");

        let fetched = LogEntry::from_slot(SlotInfo::new(
            5,
            SlotStatus::Executed,
            Some(Ballot::ZERO),
            Some(Value::Noop),
        ));
        assert_eq!((fetched.ballot, fetched.code()), (None, 'E'));
        let empty = LogEntry::from_slot(SlotInfo::new(6, SlotStatus::None, None, None));
        assert_eq!(
            (empty.value.to_string(), empty.code()),
            ("-".to_string(), 'X')
        );
    }
}
