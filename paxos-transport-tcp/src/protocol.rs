//! The client protocol of a node's port: one request enum and one response enum, each
//! carried whole in one client frame (whose call id the transport echoes and checks).

use std::time::Duration;

use bytes::Bytes;
use paxos_core::{
    AcceptorStatus, Ballot, ClientId, Member, Membership, NodeId, Replica, ReplicaStatus, Reply,
    Request, Role, Slot, SlotInfo, StateMachine, ViewChange,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// A call to a [`NodeServer`](crate::NodeServer), encoded with postcard as the bytes of
/// one client frame.
///
/// The variants are encoded by position: new ones are only ever appended, so older
/// clients keep working with newer nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NodeRequest {
    /// Submit a request (a session registration or a command) to the replica. Answered
    /// [`NodeResponse::Replied`] with the replica's [`Reply`] (a result, or a redirect
    /// to the leader it believes in), or [`NodeResponse::Unavailable`] while the
    /// replica is made unavailable.
    Submit(Request),
    /// The replica's status: [`NodeResponse::Status`].
    Status,
    /// The slots `start..end` of the replica's log: [`NodeResponse::Log`]. The node
    /// clips `end` to its log's end and, when more than its limits allow remain, keeps
    /// the latest ones (so `0..u64::MAX` asks for the tail of the log). The limits are a
    /// number of slots
    /// ([`NodeServerOptions::max_log_entries`](crate::NodeServerOptions::max_log_entries))
    /// and a number of encoded bytes
    /// ([`NodeServerOptions::max_log_bytes`](crate::NodeServerOptions::max_log_bytes),
    /// 1 MiB by default): the answer holds every slot the node knows from its first
    /// entry's slot to `end`, and nothing before. Its first entry's slot is therefore
    /// where it was cut: to read further back, ask for `start..first` next, until the
    /// answer is empty.
    Log {
        /// The first slot.
        start: Slot,
        /// One past the last slot.
        end: Slot,
    },
    /// One slot of the replica's log: [`NodeResponse::Slot`].
    Slot(Slot),
    /// The view changes the replica sent or received: [`NodeResponse::Views`].
    Views,
    /// A read-only query of the state machine, answered by the server's query hook
    /// ([`NodeServerOptions::with_query`](crate::NodeServerOptions::with_query)) with
    /// [`NodeResponse::Query`]. It does not enter the log: the answer reflects this
    /// replica's state, which may lag behind the leader's.
    Query(Bytes),
    /// Make the replica available (`true`) or unavailable (`false`: it drops all
    /// protocol traffic and refuses submissions, as if crashed). A test control:
    /// refused with [`ServerError::Forbidden`] unless the node runs with
    /// [`NodeServerOptions::test_controls`](crate::NodeServerOptions::test_controls).
    SetAvailable(bool),
    /// Hand leadership over to the member named: the replica, which must lead, stops
    /// proposing, waits until that member has accepted every proposal in flight, and
    /// tells it to run for leader at once
    /// ([`NodeHandle::transfer_leadership`](paxos_core::NodeHandle::transfer_leadership)).
    /// Answered [`NodeResponse::TransferStarted`] once the transfer has started (not
    /// completed: watch the member's status for that; a transfer not done within an
    /// election timeout is abandoned), or refused with [`ServerError::NotLeader`],
    /// [`ServerError::NotAMember`] or [`ServerError::AlreadyLeader`];
    /// [`NodeResponse::Unavailable`] while the replica is made unavailable. An
    /// administrative call: refused with [`ServerError::Forbidden`] unless the node runs
    /// with [`NodeServerOptions::admin_calls`](crate::NodeServerOptions::admin_calls).
    TransferLeader(NodeId),
    /// The configuration the replica is in: [`NodeResponse::Members`].
    Members,
    /// Change the cluster's membership to these members
    /// ([`NodeHandle::reconfigure`](paxos_core::NodeHandle::reconfigure)): the replica,
    /// which must lead, proposes the stop-sign. Answered
    /// [`NodeResponse::ReconfigureStarted`] with its slot (proposed, not yet chosen:
    /// watch [`NodeRequest::Members`] for the new epoch), or refused with
    /// [`ServerError::NotLeader`], [`ServerError::ReconfigureBusy`],
    /// [`ServerError::TooManyNewMembers`], [`ServerError::MembersNotVoting`] or
    /// [`ServerError::InvalidMembership`]. An administrative call, like
    /// [`NodeRequest::TransferLeader`].
    Reconfigure(Vec<Member>),
}

impl NodeRequest {
    /// The request's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeRequest::Submit(_) => "submit",
            NodeRequest::Status => "status",
            NodeRequest::Log { .. } => "log",
            NodeRequest::Slot(_) => "slot",
            NodeRequest::Views => "views",
            NodeRequest::Query(_) => "query",
            NodeRequest::SetAvailable(_) => "set-available",
            NodeRequest::TransferLeader(_) => "transfer-leader",
            NodeRequest::Members => "members",
            NodeRequest::Reconfigure(_) => "reconfigure",
        }
    }

    /// The request as frame bytes.
    pub fn encode(&self) -> Result<Bytes, ProtocolError> {
        encode(self)
    }

    /// Decodes frame bytes. Any input gives a request or an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<NodeRequest, ProtocolError> {
        decode(bytes)
    }
}

/// A [`NodeServer`](crate::NodeServer)'s answer to a [`NodeRequest`].
///
/// Like [`NodeRequest`], variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum NodeResponse {
    /// The replica's answer to [`NodeRequest::Submit`], naming the `(client, seq)` of
    /// the request it answers; [`RemoteNode`](crate::RemoteNode) checks it.
    Replied(Reply),
    /// The replica is unavailable and refused the submission without looking at it.
    Unavailable,
    /// The answer to [`NodeRequest::Status`].
    Status(NodeStatus),
    /// The answer to [`NodeRequest::Log`], oldest slot first: the latest slots of the
    /// range, without gaps among the slots the node knows, up to its limits. The first
    /// entry's slot tells where the answer starts (see [`NodeRequest::Log`]).
    Log(Vec<SlotInfo>),
    /// The answer to [`NodeRequest::Slot`].
    Slot(SlotInfo),
    /// The answer to [`NodeRequest::Views`], oldest first.
    Views(Vec<ViewChange>),
    /// The answer to [`NodeRequest::Query`].
    Query(StateView),
    /// The answer to [`NodeRequest::SetAvailable`]: the availability now in force.
    AvailabilitySet(bool),
    /// The request could not be served.
    Error(ServerError),
    /// The answer to [`NodeRequest::TransferLeader`]: the replica leads and has started
    /// to hand over.
    TransferStarted,
    /// The answer to [`NodeRequest::Members`].
    Members(Membership),
    /// The answer to [`NodeRequest::Reconfigure`]: the stop-sign was proposed in this
    /// slot.
    ReconfigureStarted(Slot),
}

impl NodeResponse {
    /// The response's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeResponse::Replied(_) => "replied",
            NodeResponse::Unavailable => "unavailable",
            NodeResponse::Status(_) => "status",
            NodeResponse::Log(_) => "log",
            NodeResponse::Slot(_) => "slot",
            NodeResponse::Views(_) => "views",
            NodeResponse::Query(_) => "query",
            NodeResponse::AvailabilitySet(_) => "availability-set",
            NodeResponse::Error(_) => "error",
            NodeResponse::TransferStarted => "transfer-started",
            NodeResponse::Members(_) => "members",
            NodeResponse::ReconfigureStarted(_) => "reconfigure-started",
        }
    }

    /// The response as frame bytes.
    pub fn encode(&self) -> Result<Bytes, ProtocolError> {
        encode(self)
    }

    /// Decodes frame bytes. Any input gives a response or an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<NodeResponse, ProtocolError> {
        decode(bytes)
    }
}

/// Why a [`NodeServer`](crate::NodeServer) could not serve a request: the error half
/// of the protocol, sent as [`NodeResponse::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerError {
    /// The request's bytes are not a [`NodeRequest`].
    #[error("the request does not decode")]
    Malformed,
    /// A call this node does not allow: [`NodeRequest::SetAvailable`] on a node that
    /// runs without
    /// [`test_controls`](crate::NodeServerOptions::test_controls), or
    /// [`NodeRequest::TransferLeader`] on one without
    /// [`admin_calls`](crate::NodeServerOptions::admin_calls).
    #[error(
        "this node does not allow the call (availability changes need test controls, \
         leader transfers need admin calls)"
    )]
    Forbidden,
    /// The replica has stopped (its storage failed, or it is shutting down).
    #[error("the replica has stopped")]
    Stopped,
    /// The replica did not answer within the server's limit; a submitted request may
    /// still execute.
    #[error("the replica did not answer within {0:?}")]
    Timeout(Duration),
    /// The node has no query hook.
    #[error("this node answers no queries")]
    NoQuery,
    /// The node's query hook panicked on this query. The replica keeps running; the
    /// panic is the hook's bug (or its answer to input it does not expect).
    #[error("the query hook failed on this query")]
    QueryFailed,
    /// [`NodeRequest::TransferLeader`] reached a replica that does not lead; `leader`
    /// is the one it believes in (ask that one).
    #[error("this replica does not lead (leader: {leader:?})")]
    NotLeader {
        /// The leader the replica believes in, if any.
        leader: Option<NodeId>,
    },
    /// [`NodeRequest::TransferLeader`] named a node that is not a member of the cluster.
    #[error("node {0} is not a member of the cluster")]
    NotAMember(NodeId),
    /// [`NodeRequest::TransferLeader`] named the replica that already leads.
    #[error("this replica leads already")]
    AlreadyLeader,
    /// The replica refused [`NodeRequest::TransferLeader`] for another reason (one this
    /// version of the protocol has no variant for).
    #[error("the replica refused to hand leadership over")]
    TransferRefused,
    /// [`NodeRequest::Reconfigure`]: a change or a hand-over is under way; try again.
    #[error("a membership change or leader hand-over is under way; try again")]
    ReconfigureBusy,
    /// [`NodeRequest::Reconfigure`] added more members at once than the new
    /// configuration tolerates failures.
    #[error("{added} new members at once; at most {max}")]
    TooManyNewMembers {
        /// Members not in the current configuration.
        added: usize,
        /// The most allowed at once.
        max: usize,
    },
    /// [`NodeRequest::Reconfigure`]: `silent` of the staying members have not voted
    /// for the leader lately; with `added` new members the new configuration could not
    /// vote.
    #[error("{silent} staying members have not voted lately; with {added} new members the new configuration could not vote")]
    MembersNotVoting {
        /// Staying members not heard voting.
        silent: usize,
        /// Members not in the current configuration.
        added: usize,
    },
    /// [`NodeRequest::Reconfigure`] named no member, too many, or one twice.
    #[error("invalid membership")]
    InvalidMembership,
}

/// Bytes that are not a message of the protocol, or a message that cannot be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A message could not be encoded.
    #[error("cannot encode a message")]
    Encode(#[source] postcard::Error),
    /// Bytes do not decode as a message.
    #[error("malformed message")]
    Decode(#[source] postcard::Error),
    /// A message decoded with bytes left over.
    #[error("{0} unexpected trailing bytes after a message")]
    TrailingBytes(usize),
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, ProtocolError> {
    postcard::to_allocvec(value)
        .map(Bytes::from)
        .map_err(ProtocolError::Encode)
}

/// Decodes exactly one value: trailing bytes are an error too.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(ProtocolError::TrailingBytes(rest.len())),
        Err(e) => Err(ProtocolError::Decode(e)),
    }
}

/// A replica's protocol status and whether it is available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// False while the replica is made unavailable ([`NodeRequest::SetAvailable`]).
    pub available: bool,
    /// Whether it votes: [`AcceptorStatus::Voter`], or, after starting without state,
    /// [`AcceptorStatus::Pristine`] (waiting to learn whether the cluster is new) or
    /// [`AcceptorStatus::Recovering`] (getting its state back from a majority).
    pub acceptor: AcceptorStatus,
    /// Its incarnation: 0 for a founding member, raised by every recovery from lost
    /// state.
    pub incarnation: u64,
    /// What the replica itself reports.
    pub replica: ReplicaStatus,
}

impl NodeStatus {
    /// Reads a replica's status (inside its node task, e.g. through
    /// [`NodeHandle::inspect`](paxos_core::NodeHandle::inspect)).
    pub fn of<S: StateMachine>(replica: &Replica<S>, available: bool) -> NodeStatus {
        NodeStatus {
            available,
            acceptor: replica.acceptor_status(),
            incarnation: replica.incarnation(),
            replica: replica.status(),
        }
    }

    /// True when the replica is available and believes it leads.
    pub fn is_available_leader(&self) -> bool {
        self.available && self.replica.role == Role::Leader
    }

    /// True when the replica takes part in votes (it is not founding or recovering).
    pub fn is_voter(&self) -> bool {
        self.acceptor == AcceptorStatus::Voter
    }

    /// True when the replica has never voted: it is waiting for a new cluster to be
    /// founded, or founded it and has promised nothing yet. A replica that lost its
    /// state looks the same until a peer tells it the cluster exists.
    pub fn never_voted(&self) -> bool {
        self.acceptor != AcceptorStatus::Recovering
            && self.replica.promised == Ballot::ZERO
            && self.replica.commit_point == 0
            && self.replica.log_end == 0
    }
}

/// The answer to a [`NodeRequest::Query`]: what the query hook returned, and the
/// replica's state it was read from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateView {
    /// The replica.
    pub node: NodeId,
    /// False while the replica is made unavailable.
    pub available: bool,
    /// Whether the replica votes; while it recovers its state may lag the cluster's.
    pub acceptor: AcceptorStatus,
    /// How many log slots the replica had executed: the answer reflects slots
    /// `0..executed`.
    pub executed: Slot,
    /// The query hook's answer.
    pub answer: Bytes,
}

/// Checks that `response`, received for `request`, answers it: for a submission, a
/// [`NodeResponse::Replied`] must name the request's `(client, seq)`. Returns the
/// identities that differ.
pub(crate) fn mismatch(
    request: &NodeRequest,
    response: &NodeResponse,
) -> Option<((ClientId, u64), (ClientId, u64))> {
    match (request, response) {
        (NodeRequest::Submit(sent), NodeResponse::Replied(reply))
            if (reply.client, reply.seq) != (sent.client, sent.seq) =>
        {
            Some(((sent.client, sent.seq), (reply.client, reply.seq)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use paxos_core::Response;

    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            NodeRequest::Submit(Request::register(7)),
            NodeRequest::SetAvailable(false),
            NodeRequest::Status,
            NodeRequest::Query(Bytes::from_static(b"q")),
            NodeRequest::Log { start: 3, end: 9 },
            NodeRequest::Slot(u64::MAX),
            NodeRequest::Views,
            NodeRequest::TransferLeader(3),
        ];
        for r in requests {
            let bytes = r.encode().unwrap();
            assert_eq!(NodeRequest::decode(&bytes).unwrap(), r);
        }
        let responses = [
            NodeResponse::Unavailable,
            NodeResponse::AvailabilitySet(true),
            NodeResponse::Log(vec![]),
            NodeResponse::Error(ServerError::Timeout(Duration::from_millis(5))),
            NodeResponse::Error(ServerError::Forbidden),
            NodeResponse::Error(ServerError::QueryFailed),
            NodeResponse::TransferStarted,
            NodeResponse::Error(ServerError::NotLeader { leader: Some(2) }),
            NodeResponse::Error(ServerError::NotLeader { leader: None }),
            NodeResponse::Error(ServerError::NotAMember(9)),
            NodeResponse::Error(ServerError::AlreadyLeader),
            NodeResponse::Error(ServerError::TransferRefused),
            NodeResponse::Replied(Reply {
                client: 7,
                seq: 2,
                response: Response::Stale,
            }),
        ];
        for r in responses {
            let bytes = r.encode().unwrap();
            assert_eq!(NodeResponse::decode(&bytes).unwrap(), r);
        }
    }

    /// Variants are encoded by position: the ones added later must not move the old
    /// ones, so older clients and nodes keep understanding each other.
    #[test]
    fn appended_variants_leave_the_old_encodings_alone() {
        let bytes = |r: &NodeRequest| r.encode().unwrap().to_vec();
        assert_eq!(bytes(&NodeRequest::Status), [1]);
        assert_eq!(bytes(&NodeRequest::SetAvailable(false)), [6, 0]);
        assert_eq!(bytes(&NodeRequest::TransferLeader(3)), [7, 3]);
        let bytes = |r: &NodeResponse| r.encode().unwrap().to_vec();
        assert_eq!(bytes(&NodeResponse::AvailabilitySet(true)), [7, 1]);
        assert_eq!(bytes(&NodeResponse::Error(ServerError::Forbidden)), [8, 1]);
        assert_eq!(
            bytes(&NodeResponse::Error(ServerError::QueryFailed)),
            [8, 5]
        );
        assert_eq!(
            bytes(&NodeResponse::Error(ServerError::NotLeader {
                leader: Some(2)
            })),
            [8, 6, 1, 2]
        );
        assert_eq!(bytes(&NodeResponse::TransferStarted), [9]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = NodeRequest::Views.encode().unwrap();
        let mut trailing = good.to_vec();
        trailing.push(0);
        let inputs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff],
            vec![0x7f, 1, 2, 3],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // A submit whose payload claims to be enormous.
            vec![0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],
            trailing,
        ];
        for input in inputs {
            assert!(NodeRequest::decode(&input).is_err(), "{input:?}");
            let _ = NodeResponse::decode(&input);
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = NodeRequest::decode(&[a, b]);
                let _ = NodeResponse::decode(&[a, b]);
            }
        }
    }
}
