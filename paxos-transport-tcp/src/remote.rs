//! The client side of [`NodeServer`](crate::NodeServer)s: [`RemoteCluster`],
//! [`RemoteNode`] and the [`Endpoint`] they give [`paxos_core::Client`]s.
//!
//! Calls to a node are pipelined: each connection carries up to
//! [`RemoteOptions::calls_per_connection`] calls at once, over at most
//! [`RemoteOptions::connections_per_node`] connections per node.
//!
//! Every answer is matched to its request twice: the server answers a connection's
//! calls in the order they were sent, and the transport hands each response frame to
//! the oldest call still outstanding on its connection, which must carry the call id the
//! frame echoes (a call whose caller gave up keeps its place until its answer comes, and
//! that answer is discarded, so a cancelled call never shifts later answers onto other
//! callers); and the reply to a [`NodeRequest::Submit`] names the `(client, seq)` of the
//! request it answers, which [`RemoteNode`] checks before returning anything.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use paxos_core::{
    Client, ClientId, Endpoint, EndpointError, EndpointErrorKind, NodeId, Reply, Request, Slot,
    SlotInfo, StateMachine, ViewChange,
};
use thiserror::Error;
use tracing::debug;

use crate::cluster_file::{ClusterConfig, ClusterConfigError};
use crate::pipeline::{AcquireError, Lease, Pool, PoolConfig};
use crate::protocol::{
    mismatch, NodeRequest, NodeResponse, NodeStatus, ProtocolError, ServerError, StateView,
};
use crate::{ClientConfig, TcpError};

/// The default [`RemoteOptions::calls_per_connection`]: 64, the default
/// [`TcpConfig::max_client_inflight`](crate::TcpConfig::max_client_inflight) of a node.
pub const DEFAULT_CALLS_PER_CONNECTION: usize = 64;

/// The largest [`RemoteOptions::connections_per_node`] and
/// [`RemoteOptions::calls_per_connection`] accepted.
const MAX_COUNT: usize = 1 << 16;

/// How a [`RemoteCluster`] talks to the nodes. One timeout per call kind, each covering
/// the whole call (waiting for a free slot on a connection, connecting, the answer).
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// How long opening a connection to a node may take. Default 1 s.
    pub connect_timeout: Duration,
    /// How long the connection handshake may take. Default 1 s.
    pub handshake_timeout: Duration,
    /// How long an inspection, query, test-control or administrative call may take.
    /// Default 3 s.
    pub call_timeout: Duration,
    /// How long a submitted request may wait for its answer ([`Client`]s usually give
    /// up sooner: their attempt timeout cancels the call). Default 10 s.
    ///
    /// A node answers every call within its own limits
    /// ([`NodeServerOptions::submit_timeout`](crate::NodeServerOptions::submit_timeout),
    /// 10 s by default), so a connection whose oldest call has gone unanswered for
    /// twice the longer of this and [`call_timeout`](Self::call_timeout) is taken for
    /// dead and closed, failing the calls on it. Keep the node's limits below that.
    pub submit_timeout: Duration,
    /// The most connections open to one node at once, each carrying up to
    /// [`calls_per_connection`](Self::calls_per_connection) calls: a call takes an idle
    /// connection if there is one, else opens another while there are fewer than this,
    /// else shares the least loaded one; with every connection full it waits for a
    /// free slot. Connections are opened on demand and kept for reuse (the node closes
    /// one idle for its
    /// [`client_idle_timeout`](crate::TcpConfig::client_idle_timeout)). Keep it within
    /// the node's
    /// [`max_client_connections_per_ip`](crate::TcpConfig::max_client_connections_per_ip)
    /// (64 by default), shared by every client process on the same address: the node
    /// refuses connections beyond that, and the calls that opened them fail.
    ///
    /// A node answers a connection's calls in order, so a call that shares a connection
    /// waits behind the calls before it: a quick one (a status, a query) behind a
    /// submission that a node without a quorum holds for up to its `submit_timeout`. A
    /// call gets a connection of its own while fewer than this many are busy; the
    /// default 16 keeps status calls and leader discovery going through an outage unless
    /// 16 held submissions are all in flight at once (where one call per connection
    /// would have made it wait for a connection as well). Default 16.
    pub connections_per_node: usize,
    /// The most calls in flight on one connection (pipelined: sent without waiting for
    /// earlier answers, answered in order). A call cut short keeps its slot until its
    /// answer arrives, as the node still counts it. Keep it at most the node's
    /// [`max_client_inflight`](crate::TcpConfig::max_client_inflight): beyond that the
    /// node stops reading the connection until answers go out, which delays the calls
    /// behind. Default [`DEFAULT_CALLS_PER_CONNECTION`] (64).
    pub calls_per_connection: usize,
    /// Test only: deliberately break how answers are matched to calls (the pool's
    /// `broken_matching`).
    #[cfg(test)]
    pub(crate) broken_matching: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
            submit_timeout: Duration::from_secs(10),
            connections_per_node: 16,
            calls_per_connection: DEFAULT_CALLS_PER_CONNECTION,
            #[cfg(test)]
            broken_matching: false,
        }
    }
}

/// A call to a node failed. Every variant but the first two names the node.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The cluster file is invalid.
    #[error("invalid cluster config")]
    Config(#[from] ClusterConfigError),
    /// The options are unusable.
    #[error("invalid remote options: {0}")]
    Options(&'static str),
    /// The cluster has no node with this id.
    #[error("no node n{0} in this cluster")]
    UnknownNode(NodeId),
    /// The connection failed: refused, closed, timed out, rejected by the handshake.
    #[error("n{node} at {addr}: {source}")]
    Transport {
        /// The node.
        node: NodeId,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: TcpError,
    },
    /// The address answered as another node than the cluster file says.
    #[error("{addr} is node {found}, not node {expected}: check the cluster config")]
    WrongNode {
        /// The address.
        addr: SocketAddr,
        /// The id the cluster file gives it.
        expected: NodeId,
        /// The id its handshake gave.
        found: NodeId,
    },
    /// The node did not answer within the call's time limit.
    #[error("n{node}: no answer within {limit:?}")]
    Timeout {
        /// The node.
        node: NodeId,
        /// The limit.
        limit: Duration,
    },
    /// The node's answer is not a message of the protocol.
    #[error("n{node} sent a malformed answer: {source}")]
    Protocol {
        /// The node.
        node: NodeId,
        /// Why.
        #[source]
        source: ProtocolError,
    },
    /// The node could not serve the request.
    #[error("n{node}: {source}")]
    Server {
        /// The node.
        node: NodeId,
        /// What it answered.
        #[source]
        source: ServerError,
    },
    /// The replica is unavailable and refused a submitted request.
    #[error("n{0} is unavailable")]
    Unavailable(NodeId),
    /// The node answered with a response of the wrong kind.
    #[error("n{node} answered {request} with {response}")]
    Unexpected {
        /// The node.
        node: NodeId,
        /// What was asked.
        request: &'static str,
        /// What came back (its kind).
        response: &'static str,
    },
    /// The node's answer to a submitted request belongs to another request.
    #[error("n{node} answered c{}#{} to request c{}#{}", .found.0, .found.1, .expected.0, .expected.1)]
    Mismatch {
        /// The node.
        node: NodeId,
        /// The `(client, seq)` of the request sent.
        expected: (ClientId, u64),
        /// The `(client, seq)` the answer names.
        found: (ClientId, u64),
    },
}

impl RemoteError {
    /// The kind of [`EndpointError`] this error is, for a [`Client`].
    fn endpoint_kind(&self) -> EndpointErrorKind {
        match self {
            RemoteError::Timeout { .. } => EndpointErrorKind::Timeout,
            RemoteError::Server {
                source: ServerError::Stopped,
                ..
            } => EndpointErrorKind::Stopped,
            RemoteError::Protocol { .. }
            | RemoteError::Unexpected { .. }
            | RemoteError::Mismatch { .. } => EndpointErrorKind::Protocol,
            _ => EndpointErrorKind::Unreachable,
        }
    }
}

struct NodeInner {
    id: NodeId,
    addr: SocketAddr,
    call_timeout: Duration,
    submit_timeout: Duration,
    pool: Pool,
}

/// One node of a [`RemoteCluster`]: its address and its pipelined connections.
/// Cloning is cheap and shares the connections. They close, and their tasks end, when
/// the last clone is dropped.
#[derive(Clone)]
pub struct RemoteNode(Arc<NodeInner>);

impl fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteNode")
            .field("id", &self.0.id)
            .field("addr", &self.0.addr)
            .finish()
    }
}

impl RemoteNode {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.0.id
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// An [`Endpoint`] for [`Client`]s that submits through this node.
    pub fn endpoint(&self) -> RemoteEndpoint {
        RemoteEndpoint(self.clone())
    }

    /// Sends one request and returns the node's response, within
    /// [`RemoteOptions::submit_timeout`] for a submission and
    /// [`RemoteOptions::call_timeout`] otherwise.
    ///
    /// The answer to a [`NodeRequest::Submit`] must name the request's `(client, seq)`,
    /// or the call fails with [`RemoteError::Mismatch`]. Other responses (an error, a
    /// refusal, another kind than asked) come back as they are; the typed methods
    /// ([`submit`](Self::submit), [`status`](Self::status), …) turn them into errors.
    ///
    /// Calls may run concurrently: they share the node's connections, many on each.
    /// Dropping the returned future is safe: the request may still reach the node and
    /// be executed, and its answer is then read and discarded.
    ///
    /// A connection that closes or breaks fails every call in flight on it. Such a
    /// call is tried once more, on another connection, unless it opened the failed
    /// connection itself (then the node is likely down): a pooled connection may have
    /// been closed by the node (its idle timeout) just as the call went out, and every
    /// request may be repeated (submissions are deduplicated by the session table).
    /// Nothing else is retried. A request larger than the node's
    /// [`max_client_frame_size`](crate::TcpConfig::max_client_frame_size) (1 MiB by
    /// default) makes the node close the connection, so it fails the calls in flight
    /// beside it too (they are tried again as above).
    pub async fn call(&self, request: &NodeRequest) -> Result<NodeResponse, RemoteError> {
        let n = &self.0;
        let limit = match request {
            NodeRequest::Submit(_) => n.submit_timeout,
            _ => n.call_timeout,
        };
        let bytes = request
            .encode()
            .map_err(|source| RemoteError::Protocol { node: n.id, source })?;
        let response = match tokio::time::timeout(limit, self.exchange(bytes)).await {
            Ok(result) => result?,
            Err(_) => return Err(RemoteError::Timeout { node: n.id, limit }),
        };
        let response = NodeResponse::decode(&response)
            .map_err(|source| RemoteError::Protocol { node: n.id, source })?;
        if let Some((expected, found)) = mismatch(request, &response) {
            return Err(RemoteError::Mismatch {
                node: n.id,
                expected,
                found,
            });
        }
        Ok(response)
    }

    /// One call on one of the node's connections.
    ///
    /// A call that fails because its connection closed or broke ([`TcpError::Closed`],
    /// [`TcpError::Io`]) is tried once more, on another connection, if its connection
    /// was not opened for it: a pooled connection may have been closed by the node
    /// (its idle timeout) just as the call was sent, and every call fails with the
    /// connection that carried it. Repeating is safe because every request of the
    /// protocol may be repeated (submissions are deduplicated by the session table),
    /// and it happens at most once and within the call's time limit. Nothing else is
    /// retried: not a call that timed out or whose connection stalled (no answer for
    /// longer than any call may wait), not a refused connection or handshake, not an
    /// answer from the node (busy, no response, too large, a malformed frame).
    async fn exchange(&self, request: Bytes) -> Result<Bytes, RemoteError> {
        let n = &self.0;
        let transport = |source| RemoteError::Transport {
            node: n.id,
            addr: n.addr,
            source,
        };
        let mut retry = true;
        loop {
            let lease = self.lease().await?;
            let fresh = lease.is_fresh();
            match lease.call(request.clone()).await {
                Err(e @ (TcpError::Closed | TcpError::Io(_))) if retry && !fresh => {
                    debug!(node = n.id, addr = %n.addr, error = %e, "pooled connection lost under a call; trying once more");
                    retry = false;
                }
                result => return result.map_err(transport),
            }
        }
    }

    /// A slot on one of the node's connections, which must be the node the cluster
    /// file names.
    async fn lease(&self) -> Result<Lease, RemoteError> {
        let n = &self.0;
        let lease = n.pool.acquire().await.map_err(|e| match e {
            AcquireError::Tcp(source) => RemoteError::Transport {
                node: n.id,
                addr: n.addr,
                source,
            },
            AcquireError::WrongNode(found) => self.wrong_node(found),
        })?;
        // The pool keeps only connections to the right node; checked again here so
        // that a misconfigured address is never trusted.
        self.check_identity(lease.server())?;
        Ok(lease)
    }

    /// Responses read and discarded because their callers had given up.
    #[cfg(test)]
    pub(crate) fn discarded_responses(&self) -> u64 {
        self.0.pool.discarded_responses()
    }

    /// The node's connection pool.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &Pool {
        &self.0.pool
    }

    fn wrong_node(&self, found: NodeId) -> RemoteError {
        RemoteError::WrongNode {
            addr: self.0.addr,
            expected: self.0.id,
            found,
        }
    }

    fn check_identity(&self, found: NodeId) -> Result<(), RemoteError> {
        if found == self.0.id {
            Ok(())
        } else {
            Err(self.wrong_node(found))
        }
    }

    /// The response, unless it is an error, a refusal, or another kind than asked
    /// (`want` returns that kind's name for it).
    async fn typed<T>(
        &self,
        request: NodeRequest,
        want: impl FnOnce(NodeResponse) -> Result<T, &'static str>,
    ) -> Result<T, RemoteError> {
        let node = self.0.id;
        match self.call(&request).await? {
            NodeResponse::Error(source) => Err(RemoteError::Server { node, source }),
            NodeResponse::Unavailable => Err(RemoteError::Unavailable(node)),
            response => want(response).map_err(|kind| RemoteError::Unexpected {
                node,
                request: request.kind(),
                response: kind,
            }),
        }
    }

    /// Submits a request to the replica and returns its reply (checked to name the
    /// request): a result, or a redirect to the leader. Most callers want a
    /// [`Client`] ([`RemoteCluster::client`]), which registers a session, numbers
    /// requests and follows redirects.
    pub async fn submit(&self, request: Request) -> Result<Reply, RemoteError> {
        self.typed(NodeRequest::Submit(request), |r| match r {
            NodeResponse::Replied(reply) => Ok(reply),
            other => Err(other.kind()),
        })
        .await
    }

    /// The replica's status and availability.
    pub async fn status(&self) -> Result<NodeStatus, RemoteError> {
        self.typed(NodeRequest::Status, |r| match r {
            NodeResponse::Status(s) => Ok(s),
            other => Err(other.kind()),
        })
        .await
    }

    /// The slots of `range` the replica knows, oldest first, at most the server's limits
    /// of them (a number of slots and of bytes; the latest ones). The answer covers
    /// every known slot from its first entry's slot to the end of `range`: to read
    /// further back, ask for `range.start..first` next (see [`NodeRequest::Log`]).
    pub async fn log(&self, range: Range<Slot>) -> Result<Vec<SlotInfo>, RemoteError> {
        let request = NodeRequest::Log {
            start: range.start,
            end: range.end,
        };
        self.typed(request, |r| match r {
            NodeResponse::Log(log) => Ok(log),
            other => Err(other.kind()),
        })
        .await
    }

    /// One slot's status and value.
    pub async fn slot(&self, slot: Slot) -> Result<SlotInfo, RemoteError> {
        self.typed(NodeRequest::Slot(slot), |r| match r {
            NodeResponse::Slot(info) => Ok(info),
            other => Err(other.kind()),
        })
        .await
    }

    /// The view changes the replica sent or received, oldest first.
    pub async fn view_changes(&self) -> Result<Vec<ViewChange>, RemoteError> {
        self.typed(NodeRequest::Views, |r| match r {
            NodeResponse::Views(views) => Ok(views),
            other => Err(other.kind()),
        })
        .await
    }

    /// Asks the node's query hook for a read-only view of its state machine.
    pub async fn query(&self, query: Bytes) -> Result<StateView, RemoteError> {
        self.typed(NodeRequest::Query(query), |r| match r {
            NodeResponse::Query(view) => Ok(view),
            other => Err(other.kind()),
        })
        .await
    }

    /// Makes the replica available or unavailable: a test control, refused
    /// ([`ServerError::Forbidden`]) by a node that runs without test controls.
    pub async fn set_available(&self, available: bool) -> Result<(), RemoteError> {
        self.typed(NodeRequest::SetAvailable(available), |r| match r {
            NodeResponse::AvailabilitySet(a) if a == available => Ok(()),
            other => Err(other.kind()),
        })
        .await
    }

    /// Asks the replica, which must lead, to hand leadership over to member `to`
    /// ([`NodeRequest::TransferLeader`]). `Ok` means the transfer has started: poll
    /// `to`'s [`status`](Self::status) to see it lead (a transfer not done within an
    /// election timeout is abandoned). Refusals come back as [`RemoteError::Server`]:
    /// [`ServerError::NotLeader`] (naming the leader this replica believes in),
    /// [`ServerError::NotAMember`], [`ServerError::AlreadyLeader`], or
    /// [`ServerError::Forbidden`] from a node that runs without admin calls
    /// ([`NodeServerOptions::admin_calls`](crate::NodeServerOptions::admin_calls)).
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), RemoteError> {
        self.typed(NodeRequest::TransferLeader(to), |r| match r {
            NodeResponse::TransferStarted => Ok(()),
            other => Err(other.kind()),
        })
        .await
    }

    /// The configuration the replica is in ([`NodeRequest::Members`]).
    pub async fn members(&self) -> Result<paxos_core::Membership, RemoteError> {
        self.typed(NodeRequest::Members, |r| match r {
            NodeResponse::Members(m) => Ok(m),
            other => Err(other.kind()),
        })
        .await
    }

    /// Asks the replica, which must lead, to change the membership to `members`
    /// ([`NodeRequest::Reconfigure`]); returns the slot of the stop-sign it proposed.
    /// `Ok` means proposed: poll [`members`](Self::members) for the new epoch.
    /// Refusals come back as [`RemoteError::Server`] (see the request's doc), or
    /// [`ServerError::Forbidden`] from a node without admin calls.
    pub async fn reconfigure(
        &self,
        members: Vec<paxos_core::Member>,
    ) -> Result<paxos_core::Slot, RemoteError> {
        self.typed(NodeRequest::Reconfigure(members), |r| match r {
            NodeResponse::ReconfigureStarted(slot) => Ok(slot),
            other => Err(other.kind()),
        })
        .await
    }
}

/// A [`paxos_core::Endpoint`] that submits through one [`RemoteNode`].
///
/// Errors keep their cause ([`RemoteError`]) and say what kind of failure they are: a
/// timeout, a stopped replica, a protocol violation (an answer for another request), or
/// anything else as unreachable (refused connection, unavailable replica).
#[derive(Clone, Debug)]
pub struct RemoteEndpoint(RemoteNode);

#[async_trait]
impl Endpoint for RemoteEndpoint {
    fn node(&self) -> NodeId {
        self.0.id()
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        self.0.submit(request).await.map_err(|e| {
            let kind = e.endpoint_kind();
            EndpointError::with_cause(self.0.id(), kind, e)
        })
    }
}

/// The nodes of a cluster of [`NodeServer`](crate::NodeServer)s, reached over TCP at the
/// addresses of a [`ClusterConfig`].
///
/// Connections are opened on first use and kept per node, each carrying many calls at
/// once ([`RemoteOptions::connections_per_node`],
/// [`RemoteOptions::calls_per_connection`]), so concurrent callers rarely wait for
/// each other. Every call is bounded in time: a node that is not running answers
/// "connection refused" at once, one that does not answer is given up after its
/// timeout.
///
/// ```no_run
/// # use paxos_core::{RestoreError, StateMachine};
/// # #[derive(Default)] struct Counter(u64);
/// # impl StateMachine for Counter {
/// #     type Command = u64; type Output = u64;
/// #     fn apply(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
/// #     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
/// #     fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> { Ok(()) }
/// # }
/// use paxos_transport_tcp::{ClusterConfig, RemoteCluster, RemoteOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = RemoteCluster::new(&ClusterConfig::localhost(3, 7101), RemoteOptions::default())?;
/// let mut client = cluster.client::<Counter>();
/// println!("{}", client.execute(&5).await?);
/// for node in cluster.members() {
///     match node.status().await {
///         Ok(status) => println!("n{}: {:?}", node.id(), status.replica.role),
///         Err(e) => println!("{e}"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RemoteCluster {
    nodes: Vec<RemoteNode>,
    learners: Vec<RemoteNode>,
}

impl fmt::Debug for RemoteCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.nodes
                    .iter()
                    .chain(&self.learners)
                    .map(|n| (n.id(), n.addr())),
            )
            .finish()
    }
}

impl RemoteCluster {
    /// A cluster of the nodes `config` lists. Connects lazily: nothing is dialed until
    /// the first call, so this succeeds whether or not the nodes are running.
    pub fn new(
        config: &ClusterConfig,
        options: RemoteOptions,
    ) -> Result<RemoteCluster, RemoteError> {
        config.validate()?;
        if !(1..=MAX_COUNT).contains(&options.connections_per_node) {
            return Err(RemoteError::Options(
                "connections_per_node must be between 1 and 65536",
            ));
        }
        if !(1..=MAX_COUNT).contains(&options.calls_per_connection) {
            return Err(RemoteError::Options(
                "calls_per_connection must be between 1 and 65536",
            ));
        }
        let timeouts = [
            options.connect_timeout,
            options.handshake_timeout,
            options.call_timeout,
            options.submit_timeout,
        ];
        if timeouts.iter().any(Duration::is_zero) {
            return Err(RemoteError::Options("timeouts must be positive"));
        }
        let mut client_config = ClientConfig::new(config.cluster_id);
        client_config.connect_timeout = options.connect_timeout;
        client_config.handshake_timeout = options.handshake_timeout;
        // Every call waits at most its own limit; the node answers each within its own
        // limits. A connection whose oldest call has waited twice the longest limit is
        // dead or wedged, and is closed.
        let stall_limit = options
            .call_timeout
            .max(options.submit_timeout)
            .saturating_mul(2);
        let remote = |n: &crate::NodeConfig| {
            let pool = Pool::new(PoolConfig {
                node: n.id,
                addr: n.addr,
                client: client_config.clone(),
                max_connections: options.connections_per_node,
                max_inflight: options.calls_per_connection,
                stall_limit,
                #[cfg(test)]
                broken_matching: options.broken_matching,
            });
            RemoteNode(Arc::new(NodeInner {
                id: n.id,
                addr: n.addr,
                call_timeout: options.call_timeout,
                submit_timeout: options.submit_timeout,
                pool,
            }))
        };
        let mut nodes: Vec<RemoteNode> = config.nodes.iter().map(remote).collect();
        nodes.sort_by_key(RemoteNode::id);
        let mut learners: Vec<RemoteNode> = config.learners.iter().map(remote).collect();
        learners.sort_by_key(RemoteNode::id);
        Ok(RemoteCluster { nodes, learners })
    }

    /// The voting nodes, by ascending id.
    pub fn members(&self) -> &[RemoteNode] {
        &self.nodes
    }

    /// The learners ([`ClusterConfig::learners`]), by ascending id.
    pub fn learners(&self) -> &[RemoteNode] {
        &self.learners
    }

    /// The node or learner with this id.
    pub fn node(&self, id: NodeId) -> Result<&RemoteNode, RemoteError> {
        self.nodes
            .iter()
            .chain(&self.learners)
            .find(|n| n.id() == id)
            .ok_or(RemoteError::UnknownNode(id))
    }

    /// The address of a node.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.node(id).ok().map(RemoteNode::addr)
    }

    /// Sends one request to a node: [`RemoteNode::call`].
    pub async fn call(
        &self,
        id: NodeId,
        request: &NodeRequest,
    ) -> Result<NodeResponse, RemoteError> {
        self.node(id)?.call(request).await
    }

    /// One [`Endpoint`] per voting node, for a [`Client`] (learners answer only
    /// stale reads, so a client that writes does not try them).
    pub fn endpoints(&self) -> Vec<Arc<dyn Endpoint>> {
        self.nodes
            .iter()
            .map(|n| Arc::new(n.endpoint()) as Arc<dyn Endpoint>)
            .collect()
    }

    /// One [`Endpoint`] per voting node, then one per learner: for a [`Client`] that
    /// makes stale reads ([`Client::read_stale_at`](paxos_core::Client::read_stale_at)
    /// can then name a learner).
    pub fn endpoints_with_learners(&self) -> Vec<Arc<dyn Endpoint>> {
        self.nodes
            .iter()
            .chain(&self.learners)
            .map(|n| Arc::new(n.endpoint()) as Arc<dyn Endpoint>)
            .collect()
    }

    /// A [`Client`] of the cluster's state machine `S`, with default options: it
    /// registers a session on first use, follows redirects and retries.
    pub fn client<S: StateMachine>(&self) -> Client<S> {
        Client::new(self.endpoints())
    }
}
