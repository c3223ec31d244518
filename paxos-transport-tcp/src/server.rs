//! [`NodeServer`]: one replica of any state machine, serving its peers and its clients
//! on one TCP address.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use paxos_core::{
    spawn_node, Config, NodeError, NodeHandle, NodeId, NodeOptions, ReconfigureError, Replica,
    Slot, SlotInfo, StateMachine, Storage, TransferError,
};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster_file::{ClusterConfig, ClusterConfigError};
use crate::gate::{Gate, GatedTransport};
use crate::protocol::{NodeRequest, NodeResponse, NodeStatus, ServerError, StateView};
use crate::{
    ClientRequests, Responder, TcpConfig, TcpError, TcpTransport, DEFAULT_MAX_CLIENT_FRAME_SIZE,
};

/// Room left in a response frame for everything around a log's entries: the frame's
/// call id and tag, the response's variant and the entry count.
const LOG_RESPONSE_OVERHEAD: usize = 32;

/// A read-only view of the state machine, for [`NodeRequest::Query`]: given the state
/// and the query's bytes, the answer's bytes. It runs inside the replica's task, so it
/// must be quick. Its input comes from any client: a panic in it is caught, and the
/// client is answered [`ServerError::QueryFailed`] while the replica keeps running
/// (the panic message still goes to the process's panic hook, normally stderr).
pub type QueryFn<S> = Arc<dyn Fn(&S, &[u8]) -> Vec<u8> + Send + Sync>;

type TcpTweak = Arc<dyn Fn(&mut TcpConfig) + Send + Sync>;
type ReplicaTweak = Arc<dyn Fn(&mut Config) + Send + Sync>;

/// How a [`NodeServer`] runs. Start from [`NodeServerOptions::default`] and adjust with
/// the `with_` methods (or the public fields).
#[non_exhaustive]
pub struct NodeServerOptions<S> {
    /// How the replica's driver runs. Default [`NodeOptions::default`].
    pub node: NodeOptions,
    /// How long a submitted request may wait for the replica's reply before the server
    /// answers [`ServerError::Timeout`] (the request may still execute later).
    /// Default 10 s.
    pub submit_timeout: Duration,
    /// How long an inspection or query may wait for the replica. Default 2 s.
    pub inspect_timeout: Duration,
    /// The most slots one [`NodeRequest::Log`] returns. Default 10 000.
    pub max_log_entries: u64,
    /// The most bytes the entries of one [`NodeRequest::Log`] answer may take, encoded.
    /// The server stops adding entries (newest first) at this budget, so a request of a
    /// few bytes never makes it copy and encode more than about one frame of the log;
    /// it also never exceeds the response frame limit
    /// ([`TcpConfig::max_frame_size`]). The newest entry in range is always sent if
    /// it fits in a response frame by itself. Default
    /// [`DEFAULT_MAX_CLIENT_FRAME_SIZE`](crate::DEFAULT_MAX_CLIENT_FRAME_SIZE) (1 MiB).
    pub max_log_bytes: usize,
    /// Whether clients may use the test controls ([`NodeRequest::SetAvailable`]):
    /// making the replica unavailable from any client connection is a way to switch
    /// the cluster off, so it is refused ([`ServerError::Forbidden`]) unless this is
    /// set. Default off. Turn it on only for tests and scenario runners on a trusted
    /// network. It governs availability only: leader transfer is an administrative
    /// call, allowed by [`admin_calls`](Self::admin_calls).
    pub test_controls: bool,
    /// Whether clients may make administrative calls: [`NodeRequest::TransferLeader`]
    /// (hand leadership to another member). A leader transfer does not switch the
    /// cluster off, but it costs a short pause in service and any client could repeat
    /// it, so it is refused ([`ServerError::Forbidden`]) unless this is set. Default
    /// off. Turn it on for operators on a trusted network; it does not allow the test
    /// controls.
    pub admin_calls: bool,
    pub(crate) query: Option<QueryFn<S>>,
    tcp: Option<TcpTweak>,
    replica: Option<ReplicaTweak>,
}

impl<S> Default for NodeServerOptions<S> {
    fn default() -> Self {
        NodeServerOptions {
            node: NodeOptions::default(),
            submit_timeout: Duration::from_secs(10),
            inspect_timeout: Duration::from_secs(2),
            max_log_entries: 10_000,
            max_log_bytes: DEFAULT_MAX_CLIENT_FRAME_SIZE,
            test_controls: false,
            admin_calls: false,
            query: None,
            tcp: None,
            replica: None,
        }
    }
}

impl<S> Clone for NodeServerOptions<S> {
    fn clone(&self) -> Self {
        NodeServerOptions {
            node: self.node.clone(),
            submit_timeout: self.submit_timeout,
            inspect_timeout: self.inspect_timeout,
            max_log_entries: self.max_log_entries,
            max_log_bytes: self.max_log_bytes,
            test_controls: self.test_controls,
            admin_calls: self.admin_calls,
            query: self.query.clone(),
            tcp: self.tcp.clone(),
            replica: self.replica.clone(),
        }
    }
}

impl<S> fmt::Debug for NodeServerOptions<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeServerOptions")
            .field("node", &self.node)
            .field("submit_timeout", &self.submit_timeout)
            .field("inspect_timeout", &self.inspect_timeout)
            .field("max_log_entries", &self.max_log_entries)
            .field("max_log_bytes", &self.max_log_bytes)
            .field("test_controls", &self.test_controls)
            .field("admin_calls", &self.admin_calls)
            .field("query", &self.query.is_some())
            .field("replica", &self.replica.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> NodeServerOptions<S> {
    /// Answers [`NodeRequest::Query`] with `query(state, bytes)`.
    pub fn with_query(
        mut self,
        query: impl Fn(&S, &[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.query = Some(Arc::new(query));
        self
    }

    /// Sets [`test_controls`](Self::test_controls).
    pub fn with_test_controls(mut self, on: bool) -> Self {
        self.test_controls = on;
        self
    }

    /// Sets [`admin_calls`](Self::admin_calls).
    pub fn with_admin_calls(mut self, on: bool) -> Self {
        self.admin_calls = on;
        self
    }

    /// Sets [`node`](Self::node).
    pub fn with_node(mut self, node: NodeOptions) -> Self {
        self.node = node;
        self
    }

    /// Adjusts the transport's settings (connection limits, timeouts) after the server
    /// fills in the node id, cluster id, address and peers.
    pub fn with_tcp(mut self, tweak: impl Fn(&mut TcpConfig) + Send + Sync + 'static) -> Self {
        self.tcp = Some(Arc::new(tweak));
        self
    }

    /// Adjusts the replica's [`Config`] (session limits and time-to-live, timeouts,
    /// batch sizes) after the server fills in the node id, the members, the cluster
    /// file's `checkpoint_interval` and a `snapshot_chunk_bytes` that fits the frame
    /// limit. Times in the configuration count ticks of [`NodeOptions::tick`]. A
    /// configuration the replica refuses makes [`NodeServer::start`] fail.
    ///
    /// ```
    /// use paxos_transport_tcp::NodeServerOptions;
    /// # struct MyMachine;
    /// // Sessions idle for 10 minutes (at the default 10 ms tick) expire.
    /// let options = NodeServerOptions::<MyMachine>::default()
    ///     .with_replica(|config| config.session_ttl_ticks = 60_000);
    /// ```
    pub fn with_replica(mut self, tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        self.replica = Some(Arc::new(tweak));
        self
    }
}

/// A [`NodeServer`] could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The cluster file is invalid.
    #[error("invalid cluster config")]
    Config(#[from] ClusterConfigError),
    /// The cluster file does not list this node.
    #[error("node {0} is not in the cluster config")]
    UnknownNode(NodeId),
    /// Listening on the node's address failed.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The transport refused to start.
    #[error("cannot start the transport")]
    Transport(#[from] TcpError),
    /// The replica refused to start (bad configuration, unreadable storage).
    #[error("the replica cannot start")]
    Node(#[from] NodeError),
    /// It was started outside a tokio runtime.
    #[error("a node server must be started inside a tokio runtime")]
    NoRuntime,
}

/// One replica of a state machine `S` with its TCP transport and its client service:
/// what a node process runs.
///
/// The replica runs behind a [`GatedTransport`]. Each client call (a [`NodeRequest`]) is
/// served in its own task and answered with one [`NodeResponse`]:
/// - [`NodeRequest::Submit`] goes to the replica and is answered with its reply (a
///   result, or a redirect to the leader) naming the request's `(client, seq)`, or
///   [`ServerError::Timeout`] after [`NodeServerOptions::submit_timeout`];
///   [`NodeResponse::Unavailable`] at once while the gate is closed.
/// - Status, log, slot, view changes and queries are answered within
///   [`NodeServerOptions::inspect_timeout`], whether or not the replica is available.
/// - [`NodeRequest::SetAvailable`] is refused unless [`NodeServerOptions::test_controls`].
/// - [`NodeRequest::TransferLeader`] is refused unless [`NodeServerOptions::admin_calls`];
///   otherwise answered [`NodeResponse::TransferStarted`] or the replica's refusal
///   within [`NodeServerOptions::inspect_timeout`].
/// - Bytes that are not a [`NodeRequest`] are answered [`ServerError::Malformed`].
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
/// use paxos_core::MemStorage;
/// use paxos_transport_tcp::{ClusterConfig, NodeServer, NodeServerOptions};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = ClusterConfig::localhost(3, 7101);
/// let options = NodeServerOptions::default()
///     .with_query(|counter: &Counter, _query: &[u8]| counter.0.to_le_bytes().to_vec());
/// let server = NodeServer::start(&cluster, 1, Counter::default(), MemStorage::new(), options).await?;
/// server.stopped().await; // until its storage fails; or `shutdown` it
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NodeServer<S: StateMachine + Send + 'static> {
    id: NodeId,
    addr: SocketAddr,
    handle: NodeHandle<S>,
    gate: Gate,
    service: JoinHandle<()>,
}

impl<S: StateMachine + Send + 'static> fmt::Debug for NodeServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeServer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("gate", &self.gate)
            .finish()
    }
}

impl<S: StateMachine + Send + 'static> NodeServer<S> {
    /// Listens on node `id`'s address from `cluster` and starts the replica with
    /// `state_machine` and `storage` (which it loads first).
    pub async fn start<St: Storage>(
        cluster: &ClusterConfig,
        id: NodeId,
        state_machine: S,
        storage: St,
        options: NodeServerOptions<S>,
    ) -> Result<NodeServer<S>, ServeError> {
        let addr = cluster.addr(id).ok_or(ServeError::UnknownNode(id))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        NodeServer::start_on(listener, cluster, id, state_machine, storage, options)
    }

    /// Like [`start`](NodeServer::start), on a listener the caller bound (the cluster
    /// file's address for this node is then not used for listening).
    pub fn start_on<St: Storage>(
        listener: TcpListener,
        cluster: &ClusterConfig,
        id: NodeId,
        state_machine: S,
        storage: St,
        options: NodeServerOptions<S>,
    ) -> Result<NodeServer<S>, ServeError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ServeError::NoRuntime);
        }
        cluster.validate()?;
        let configured = cluster.addr(id).ok_or(ServeError::UnknownNode(id))?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: configured,
            source,
        })?;
        let mut tcp = TcpConfig::new(id, cluster.cluster_id, addr);
        // Learners are peers too: members answer their fetches.
        for node in cluster.nodes.iter().chain(&cluster.learners) {
            tcp = tcp.with_peer(node.id, node.addr);
        }
        // Every node and learner may hold a connection at once (learners poll all the
        // time, so theirs never go idle): room for all of them.
        let peers = cluster.nodes.len() + cluster.learners.len();
        tcp.max_peer_connections = tcp.max_peer_connections.max(peers);
        if let Some(tweak) = &options.tcp {
            tweak(&mut tcp);
        }
        let max_response = tcp.max_frame_size;
        let max_frame_size = tcp.max_frame_size;
        let (transport, calls) = TcpTransport::from_listener(tcp, listener)?;
        let gate = Gate::new(true);
        let mut replica = if cluster.is_learner(id) {
            Config::learner(id, cluster.ids())
        } else {
            Config::new(id, cluster.ids())
        };
        replica.checkpoint_interval = cluster.checkpoint_interval;
        // State transfer pieces must fit in a peer frame, with room for their header.
        replica.snapshot_chunk_bytes = replica.snapshot_chunk_bytes.min(max_frame_size / 2).max(1);
        // So must batches of entries (ACCEPT, FETCH-REPLY), with room for what a
        // value's size hint does not count.
        replica.max_message_bytes = replica.max_message_bytes.min(max_frame_size / 4).max(1);
        if let Some(tweak) = &options.replica {
            tweak(&mut replica);
        }
        let handle = spawn_node(
            replica,
            state_machine,
            GatedTransport::new(transport, gate.clone()),
            storage,
            options.node.clone(),
        )?;
        if options.test_controls {
            warn!(
                node = id,
                "test controls are on: any client can make this replica unavailable"
            );
        }
        if options.admin_calls {
            info!(
                node = id,
                "admin calls are on: any client can ask this replica to hand leadership over"
            );
        }
        let service = tokio::spawn(serve(
            calls,
            handle.clone(),
            gate.clone(),
            options,
            max_response,
        ));
        info!(node = id, %addr, "node serving peers and clients");
        Ok(NodeServer {
            id,
            addr,
            handle,
            gate,
            service,
        })
    }

    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The replica's handle, for inspection in this process.
    pub fn handle(&self) -> &NodeHandle<S> {
        &self.handle
    }

    /// The replica's availability gate.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Waits until the replica stops by itself (its storage failed).
    pub async fn stopped(&self) {
        self.handle.stopped().await;
    }

    /// Stops the replica (which closes its transport and listener) and the client
    /// service, and waits for them.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        // The call stream ends once the transport is gone; calls in flight are answered
        // by their own tasks.
        if tokio::time::timeout(Duration::from_secs(2), self.service)
            .await
            .is_err()
        {
            debug!(node = self.id, "client service did not stop in time");
        }
        info!(node = self.id, "node stopped");
    }
}

/// Takes client calls until the transport shuts down, each in its own task.
async fn serve<S: StateMachine + Send + 'static>(
    mut calls: ClientRequests,
    handle: NodeHandle<S>,
    gate: Gate,
    options: NodeServerOptions<S>,
    max_response: usize,
) {
    let options = Arc::new(options);
    while let Some(call) = calls.recv().await {
        let remote = call.remote_addr();
        let (request, responder) = call.into_parts();
        let handle = handle.clone();
        let gate = gate.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let response = handle_call(&handle, &gate, &request, &options, max_response).await;
            if let NodeResponse::Error(e) = &response {
                debug!(%remote, error = %e, "client call failed");
            }
            respond(responder, &response);
        });
    }
}

fn respond(responder: Responder, response: &NodeResponse) {
    let bytes = response.encode().or_else(|e| {
        warn!(error = %e, "cannot encode a response");
        NodeResponse::Error(ServerError::Malformed).encode()
    });
    // Without bytes the responder is dropped and the client hears "no response".
    if let Ok(bytes) = bytes {
        responder.respond(bytes);
    }
}

/// Serves one call's bytes: decode, act, answer. Never panics on any input.
/// `max_response` is the largest response frame the transport sends.
async fn handle_call<S: StateMachine + Send + 'static>(
    handle: &NodeHandle<S>,
    gate: &Gate,
    request: &Bytes,
    options: &NodeServerOptions<S>,
    max_response: usize,
) -> NodeResponse {
    let Ok(request) = NodeRequest::decode(request) else {
        return NodeResponse::Error(ServerError::Malformed);
    };
    let available = gate.is_open();
    let limit = options.inspect_timeout;
    let inspect = match request {
        NodeRequest::Submit(request) => {
            if !available {
                return NodeResponse::Unavailable;
            }
            let limit = options.submit_timeout;
            // The reply names the request it answers, for the client to check.
            return match tokio::time::timeout(limit, handle.submit(request)).await {
                Ok(Ok(reply)) => NodeResponse::Replied(reply),
                Ok(Err(_)) => NodeResponse::Error(ServerError::Stopped),
                Err(_) => NodeResponse::Error(ServerError::Timeout(limit)),
            };
        }
        NodeRequest::SetAvailable(open) => {
            if !options.test_controls {
                warn!(
                    node = handle.id(),
                    "a client asked to change availability; test controls are off"
                );
                return NodeResponse::Error(ServerError::Forbidden);
            }
            if handle.is_stopped() {
                return NodeResponse::Error(ServerError::Stopped);
            }
            if open != available {
                info!(
                    node = handle.id(),
                    available = open,
                    "availability changed by a client"
                );
            }
            gate.set(open);
            return NodeResponse::AvailabilitySet(open);
        }
        NodeRequest::TransferLeader(to) => {
            return transfer_leader(handle, options, available, to).await;
        }
        NodeRequest::Reconfigure(members) => {
            return reconfigure(handle, options, available, members).await;
        }
        NodeRequest::Query(_) if options.query.is_none() => {
            return NodeResponse::Error(ServerError::NoQuery);
        }
        other => other,
    };
    let query = options.query.clone();
    let max_log = options.max_log_entries;
    let max_entry = max_response.saturating_sub(LOG_RESPONSE_OVERHEAD);
    let log_budget = options.max_log_bytes.min(max_entry);
    let answer = handle.inspect(move |r| match inspect {
        NodeRequest::Status => NodeResponse::Status(NodeStatus::of(r, available)),
        NodeRequest::Log { start, end } => {
            let end = end.min(r.status().log_end);
            let start = start.max(end.saturating_sub(max_log));
            NodeResponse::Log(log_tail(r, start..end, log_budget, max_entry))
        }
        NodeRequest::Slot(slot) => NodeResponse::Slot(r.slot(slot)),
        NodeRequest::Views => NodeResponse::Views(r.view_changes().cloned().collect()),
        NodeRequest::Members => NodeResponse::Members(r.membership().clone()),
        NodeRequest::Query(bytes) => match query {
            Some(query) => {
                // The hook only reads the state, so a panic half-way leaves nothing
                // inconsistent behind; it must not take the replica's task down.
                let answer =
                    panic::catch_unwind(AssertUnwindSafe(|| query(r.state_machine(), &bytes)));
                match answer {
                    Ok(answer) => NodeResponse::Query(StateView {
                        node: r.id(),
                        available,
                        acceptor: r.acceptor_status(),
                        executed: r.executed(),
                        answer: Bytes::from(answer),
                    }),
                    Err(_) => {
                        warn!(node = r.id(), "the query hook panicked");
                        NodeResponse::Error(ServerError::QueryFailed)
                    }
                }
            }
            None => NodeResponse::Error(ServerError::NoQuery),
        },
        NodeRequest::Submit(_)
        | NodeRequest::SetAvailable(_)
        | NodeRequest::TransferLeader(_)
        | NodeRequest::Reconfigure(_) => NodeResponse::Error(ServerError::Malformed),
    });
    match tokio::time::timeout(limit, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => NodeResponse::Error(ServerError::Stopped),
        Err(_) => NodeResponse::Error(ServerError::Timeout(limit)),
    }
}

/// Serves [`NodeRequest::TransferLeader`]: an administrative call, refused unless
/// [`NodeServerOptions::admin_calls`].
async fn transfer_leader<S: StateMachine + Send + 'static>(
    handle: &NodeHandle<S>,
    options: &NodeServerOptions<S>,
    available: bool,
    to: NodeId,
) -> NodeResponse {
    if !options.admin_calls {
        warn!(
            node = handle.id(),
            to, "a client asked for a leader transfer; admin calls are off"
        );
        return NodeResponse::Error(ServerError::Forbidden);
    }
    if !available {
        // It drops all protocol traffic: the target would never hear TIMEOUT-NOW.
        return NodeResponse::Unavailable;
    }
    let limit = options.inspect_timeout;
    match tokio::time::timeout(limit, handle.transfer_leadership(to)).await {
        Ok(Ok(())) => {
            info!(node = handle.id(), to, "leader transfer asked by a client");
            NodeResponse::TransferStarted
        }
        Ok(Err(NodeError::Transfer(refused))) => NodeResponse::Error(match refused {
            TransferError::NotLeader { leader } => ServerError::NotLeader { leader },
            TransferError::NotAMember(id) => ServerError::NotAMember(id),
            TransferError::AlreadyLeader => ServerError::AlreadyLeader,
            _ => ServerError::TransferRefused,
        }),
        Ok(Err(_)) => NodeResponse::Error(ServerError::Stopped),
        Err(_) => NodeResponse::Error(ServerError::Timeout(limit)),
    }
}

/// Serves [`NodeRequest::Reconfigure`]: an administrative call, refused unless
/// [`NodeServerOptions::admin_calls`].
async fn reconfigure<S: StateMachine + Send + 'static>(
    handle: &NodeHandle<S>,
    options: &NodeServerOptions<S>,
    available: bool,
    members: Vec<paxos_core::Member>,
) -> NodeResponse {
    if !options.admin_calls {
        warn!(
            node = handle.id(),
            "a client asked for a membership change; admin calls are off"
        );
        return NodeResponse::Error(ServerError::Forbidden);
    }
    if !available {
        return NodeResponse::Unavailable;
    }
    let ids: Vec<NodeId> = members.iter().map(|m| m.id).collect();
    let limit = options.inspect_timeout;
    match tokio::time::timeout(limit, handle.reconfigure(members)).await {
        Ok(Ok(slot)) => {
            info!(node = handle.id(), slot, members = ?ids, "membership change asked by a client");
            NodeResponse::ReconfigureStarted(slot)
        }
        Ok(Err(NodeError::Reconfigure(refused))) => NodeResponse::Error(match refused {
            ReconfigureError::NotLeader { leader } => ServerError::NotLeader { leader },
            ReconfigureError::TooManyNewMembers { added, max } => {
                ServerError::TooManyNewMembers { added, max }
            }
            ReconfigureError::MembersNotVoting { members, added } => {
                ServerError::MembersNotVoting {
                    silent: members.len(),
                    added,
                }
            }
            ReconfigureError::Invalid(_) => ServerError::InvalidMembership,
            _ => ServerError::ReconfigureBusy,
        }),
        Ok(Err(_)) => NodeResponse::Error(ServerError::Stopped),
        Err(_) => NodeResponse::Error(ServerError::Timeout(limit)),
    }
}

/// The latest entries of `range` whose encodings fit in `budget` bytes together, oldest
/// first: the answer to [`NodeRequest::Log`]. Entries are copied one at a time, newest
/// first, and copying stops at the budget, so a request for a huge range never copies
/// more than about `budget` bytes of values. The newest entry is included alone if it
/// is larger than the budget but at most `max_entry`, so a client paging back through
/// the log (asking for `start..first slot returned` next) always makes progress.
fn log_tail<S: StateMachine>(
    r: &Replica<S>,
    range: Range<Slot>,
    budget: usize,
    max_entry: usize,
) -> Vec<SlotInfo> {
    let mut entries = Vec::new();
    let mut used = 0usize;
    for slot in range.rev() {
        // `log` leaves unknown slots out, as a whole-range `log` call would.
        let Some(info) = r.log(slot..slot + 1).pop() else {
            continue;
        };
        let size = postcard::serialize_with_flavor(&info, postcard::ser_flavors::Size::default())
            .unwrap_or(usize::MAX);
        let fits = match used.checked_add(size) {
            Some(total) => total <= budget || (entries.is_empty() && size <= max_entry),
            None => false,
        };
        if !fits {
            break;
        }
        used += size;
        entries.push(info);
    }
    entries.reverse();
    entries
}
