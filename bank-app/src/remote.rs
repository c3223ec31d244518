//! The bank's client protocol on a node's port, and [`RemoteCluster`], the [`Cluster`]
//! that speaks it to replica processes.
//!
//! Each replica process (`bank node`) listens on one address for its peers and its
//! clients (see `paxos-transport-tcp`). A client call carries one [`RemoteRequest`],
//! encoded with postcard, in the bytes of a [`TcpClient::call`]; the node answers with
//! one [`RemoteResponse`]. Bytes that do not decode as a request are answered
//! [`RemoteResponse::Error`]; they never stop the node.
//!
//! Every answer is matched to its request twice: the transport pairs each response frame
//! with its call by call id (so a cancelled call's late answer is never taken for the
//! next call's), and the answer to a [`RemoteRequest::Submit`] names the `(client, seq)`
//! of the request it answers ([`RemoteResponse::Replied`]), which [`RemoteCluster`]
//! checks against the request it sent before returning anything.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use paxos_core::{
    ClientId, Endpoint, EndpointError, EndpointErrorKind, NodeId, Reply, Request, Response, Slot,
    ViewChange,
};
use paxos_transport_tcp::{ClientConfig, TcpClient, TcpError};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::cluster::{Cluster, ClusterError, DbSnapshot, LogEntry, NodeStatus};
use crate::config::ClusterConfig;

/// A call to a bank node's client port.
///
/// The variants are encoded by position: new ones are only ever appended, so older
/// clients keep working with newer nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteRequest {
    /// Submit a paxos request (a session registration or a bank command) to this
    /// replica. Refused with [`RemoteResponse::Unavailable`] while the replica is
    /// unavailable; otherwise answered [`RemoteResponse::Replied`] once the replica
    /// replies (with the result, or a redirect to the leader).
    Submit(Request),
    /// Make the replica available (`true`) or unavailable (`false`):
    /// [`Cluster::set_available`].
    SetAvailable(bool),
    /// The replica's status: [`Cluster::replica_status`].
    ReplicaStatus,
    /// The replica's balances: [`Cluster::db`] (PrintDB).
    Db,
    /// The replica's log: [`Cluster::log`] (PrintLog).
    Log,
    /// One slot's status: [`Cluster::status`] (PrintStatus).
    SlotStatus(Slot),
    /// The replica's view changes: [`Cluster::views`] (PrintView).
    Views,
}

/// A bank node's answer to a [`RemoteRequest`].
///
/// Like [`RemoteRequest`], variants are only ever appended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteResponse {
    /// The replica's answer to a [`RemoteRequest::Submit`], once checked: what
    /// [`RemoteCluster::call`] returns for a [`RemoteResponse::Replied`] whose
    /// `(client, seq)` is the request's. Nodes do not send it (it names no request), and
    /// [`RemoteCluster`] refuses it from the wire.
    Submitted(Response),
    /// The replica is unavailable: it refused the submitted request without looking at
    /// it (as a crashed replica would not answer, but at once).
    Unavailable,
    /// The replica's availability is now as given.
    AvailabilitySet(bool),
    /// The answer to [`RemoteRequest::ReplicaStatus`].
    Status(NodeStatus),
    /// The answer to [`RemoteRequest::Db`].
    Db(DbSnapshot),
    /// The answer to [`RemoteRequest::Log`].
    Log(Vec<LogEntry>),
    /// The answer to [`RemoteRequest::SlotStatus`].
    Slot(LogEntry),
    /// The answer to [`RemoteRequest::Views`].
    Views(Vec<ViewChange>),
    /// The request could not be served: it did not decode, the replica has stopped, or
    /// it did not answer in time.
    Error(String),
    /// The replica's answer to a [`RemoteRequest::Submit`], with the `(client, seq)` of
    /// the request it answers: what a node sends.
    Replied(Reply),
}

/// A [`RemoteCluster`] call, or a message of the protocol, failed.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// A message could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Bytes are not a message of the protocol.
    #[error("malformed message: {0}")]
    Decode(String),
    /// The connection failed: refused, timed out, closed, rejected by the handshake.
    #[error(transparent)]
    Transport(#[from] TcpError),
    /// The address answered as another node than the configuration says.
    #[error("{addr} is node {found}, not node {expected}: check the cluster config")]
    WrongNode {
        /// The address.
        addr: SocketAddr,
        /// The id the configuration gives it.
        expected: NodeId,
        /// The id its handshake gave.
        found: NodeId,
    },
    /// The node did not answer within the call's time limit.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered with an error.
    #[error("node error: {0}")]
    Node(String),
    /// The node answered with a response of the wrong kind.
    #[error("unexpected response to {request}: {response}")]
    Unexpected {
        /// What was asked.
        request: &'static str,
        /// What came back (its kind).
        response: &'static str,
    },
    /// The replica is unavailable and refused a submitted request.
    #[error("replica is unavailable")]
    Unavailable,
    /// The node's answer to a submitted request belongs to another request.
    #[error("answer for c{}#{} to request c{}#{}", .found.0, .found.1, .expected.0, .expected.1)]
    Mismatch {
        /// The `(client, seq)` of the request sent.
        expected: (ClientId, u64),
        /// The `(client, seq)` the answer names.
        found: (ClientId, u64),
    },
    /// The client options are unusable.
    #[error("invalid client options: {0}")]
    Options(String),
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, RemoteError> {
    postcard::to_allocvec(value)
        .map(Bytes::from)
        .map_err(|e| RemoteError::Encode(e.to_string()))
}

/// Decodes exactly one value: trailing bytes are an error too.
fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, RemoteError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(RemoteError::Decode(format!(
            "{} unexpected trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(RemoteError::Decode(e.to_string())),
    }
}

impl RemoteRequest {
    /// The request as call bytes.
    pub fn encode(&self) -> Result<Bytes, RemoteError> {
        encode(self)
    }

    /// Decodes call bytes. Any input gives a request or an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<RemoteRequest, RemoteError> {
        decode(bytes)
    }

    /// The request's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RemoteRequest::Submit(_) => "submit",
            RemoteRequest::SetAvailable(_) => "set-available",
            RemoteRequest::ReplicaStatus => "replica-status",
            RemoteRequest::Db => "db",
            RemoteRequest::Log => "log",
            RemoteRequest::SlotStatus(_) => "slot-status",
            RemoteRequest::Views => "views",
        }
    }
}

impl RemoteResponse {
    /// Checks that this response, received from a node, answers `request`, and returns
    /// what the caller should see.
    ///
    /// For a [`RemoteRequest::Submit`], a [`RemoteResponse::Replied`] must name the
    /// request's `(client, seq)`: it becomes [`RemoteResponse::Submitted`], and another
    /// identity is [`RemoteError::Mismatch`]. A [`RemoteResponse::Submitted`] names no
    /// request, so it is refused as [`RemoteError::Unexpected`]. Other responses (a
    /// refusal, an error, or another kind the caller rejects) pass unchanged.
    pub fn answering(self, request: &RemoteRequest) -> Result<RemoteResponse, RemoteError> {
        let RemoteRequest::Submit(sent) = request else {
            return Ok(self);
        };
        match self {
            RemoteResponse::Replied(reply)
                if (reply.client, reply.seq) == (sent.client, sent.seq) =>
            {
                Ok(RemoteResponse::Submitted(reply.response))
            }
            RemoteResponse::Replied(reply) => Err(RemoteError::Mismatch {
                expected: (sent.client, sent.seq),
                found: (reply.client, reply.seq),
            }),
            RemoteResponse::Submitted(_) => Err(RemoteError::Unexpected {
                request: request.kind(),
                response: self.kind(),
            }),
            other => Ok(other),
        }
    }

    /// The response as call bytes.
    pub fn encode(&self) -> Result<Bytes, RemoteError> {
        encode(self)
    }

    /// Decodes response bytes. Any input gives a response or an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<RemoteResponse, RemoteError> {
        decode(bytes)
    }

    /// The response's kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RemoteResponse::Submitted(_) => "submitted",
            RemoteResponse::Unavailable => "unavailable",
            RemoteResponse::AvailabilitySet(_) => "availability-set",
            RemoteResponse::Status(_) => "status",
            RemoteResponse::Db(_) => "db",
            RemoteResponse::Log(_) => "log",
            RemoteResponse::Slot(_) => "slot",
            RemoteResponse::Views(_) => "views",
            RemoteResponse::Error(_) => "error",
            RemoteResponse::Replied(_) => "replied",
        }
    }
}

/// How a [`RemoteCluster`] talks to the nodes.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// How long opening a connection to a node may take. Default 1 s.
    pub connect_timeout: Duration,
    /// How long the connection handshake may take. Default 1 s.
    pub handshake_timeout: Duration,
    /// How long an inspection or availability call may take, connecting included.
    /// Default 3 s.
    pub call_timeout: Duration,
    /// How long a submitted request may wait for its answer, connecting included
    /// ([`paxos_core::Client`]s usually give up sooner: their attempt timeout cancels
    /// the call). Default 10 s.
    pub submit_timeout: Duration,
    /// The most connections open to one node at once; more concurrent callers wait for
    /// one. Idle connections are kept for reuse. Default 16.
    pub connections_per_node: usize,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connect_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
            submit_timeout: Duration::from_secs(10),
            connections_per_node: 16,
        }
    }
}

/// One node: its address and a small pool of connections.
struct RemoteNode {
    id: NodeId,
    addr: SocketAddr,
    client_config: ClientConfig,
    call_timeout: Duration,
    submit_timeout: Duration,
    idle: Mutex<Vec<TcpClient>>,
    permits: Semaphore,
}

impl RemoteNode {
    /// One call on a pooled connection, its answer checked against the request
    /// ([`RemoteResponse::answering`]). A call cut short (timeout, cancellation) drops
    /// its connection with the future that owns it, so the pool never holds a
    /// connection with an answer outstanding; the transport's call ids would discard
    /// such an answer anyway.
    async fn call(
        &self,
        request: &RemoteRequest,
        limit: Duration,
    ) -> Result<RemoteResponse, RemoteError> {
        let bytes = request.encode()?;
        let work = async {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| RemoteError::Node("connection pool closed".into()))?;
            let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut client = match pooled {
                Some(client) => client,
                None => TcpClient::connect(self.addr, self.client_config.clone()).await?,
            };
            // Checked before the call (a fresh or pooled connection) and after it (the
            // call may have reconnected), so a misconfigured address is never trusted.
            self.check_identity(&client)?;
            let result = client.call(bytes).await;
            self.check_identity(&client)?;
            // A client whose call failed reconnects on its next call, so it goes back too.
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(client);
            RemoteResponse::decode(&result?)?.answering(request)
        };
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout(limit)),
        }
    }

    fn check_identity(&self, client: &TcpClient) -> Result<(), RemoteError> {
        let found = client.server_node_id();
        if found == self.id {
            Ok(())
        } else {
            Err(RemoteError::WrongNode {
                addr: self.addr,
                expected: self.id,
                found,
            })
        }
    }

    async fn inspect(&self, request: RemoteRequest) -> Result<RemoteResponse, ClusterError> {
        match self.call(&request, self.call_timeout).await {
            Ok(RemoteResponse::Error(e)) => Err(self.unreachable(RemoteError::Node(e))),
            Ok(response) => Ok(response),
            Err(e) => Err(self.unreachable(e)),
        }
    }

    fn unreachable(&self, e: RemoteError) -> ClusterError {
        ClusterError::Unreachable {
            node: self.id,
            reason: e.to_string(),
        }
    }

    fn unexpected(&self, request: &'static str, response: &RemoteResponse) -> ClusterError {
        self.unreachable(RemoteError::Unexpected {
            request,
            response: response.kind(),
        })
    }
}

/// A [`paxos_core::Client`] endpoint for one node of a [`RemoteCluster`].
struct RemoteEndpoint(Arc<RemoteNode>);

#[async_trait]
impl Endpoint for RemoteEndpoint {
    fn node(&self) -> NodeId {
        self.0.id
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        let node = &self.0;
        let fail = |e: RemoteError| {
            let kind = match &e {
                RemoteError::Unexpected { .. } => EndpointErrorKind::Protocol,
                _ => EndpointErrorKind::Unreachable,
            };
            EndpointError::with_cause(node.id, kind, e)
        };
        let (client, seq) = (request.client, request.seq);
        match node
            .call(&RemoteRequest::Submit(request), node.submit_timeout)
            .await
        {
            // `call` checked that the node's answer named this request.
            Ok(RemoteResponse::Submitted(response)) => Ok(Reply {
                client,
                seq,
                response,
            }),
            Ok(RemoteResponse::Unavailable) => Err(fail(RemoteError::Unavailable)),
            Ok(RemoteResponse::Error(e)) => Err(fail(RemoteError::Node(e))),
            Ok(other) => Err(fail(RemoteError::Unexpected {
                request: "submit",
                response: other.kind(),
            })),
            Err(e) => Err(fail(e)),
        }
    }
}

/// A [`Cluster`] of replica processes (`bank node`), reached over TCP at the addresses
/// of a [`ClusterConfig`].
///
/// Connections are opened on first use and pooled per node
/// ([`RemoteOptions::connections_per_node`]), so concurrent callers (the scenario
/// runner's ten clients, inspection calls) do not wait for each other. Every call is
/// bounded in time: a node that is not running answers "connection refused" at once,
/// one that does not answer is given up after [`RemoteOptions::call_timeout`]; either
/// way the call yields [`ClusterError::Unreachable`] and the caller goes on.
///
/// ```no_run
/// use bank_app::{gather_db, ClusterConfig, RemoteCluster, RemoteOptions};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = RemoteCluster::new(&ClusterConfig::local_default(), RemoteOptions::default())?;
/// for row in gather_db(&cluster).await {
///     match row.result {
///         Ok(db) => println!("n{}: total {}", row.node, db.total()),
///         Err(e) => println!("{e}"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct RemoteCluster {
    nodes: Vec<Arc<RemoteNode>>,
}

impl fmt::Debug for RemoteCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.nodes.iter().map(|n| (n.id, n.addr)))
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
        config
            .validate()
            .map_err(|e| RemoteError::Options(e.to_string()))?;
        if options.connections_per_node == 0 {
            return Err(RemoteError::Options(
                "connections_per_node must be at least 1".into(),
            ));
        }
        let mut client_config = ClientConfig::new(config.cluster_id);
        client_config.connect_timeout = options.connect_timeout;
        client_config.handshake_timeout = options.handshake_timeout;
        client_config.call_timeout = options.call_timeout.max(options.submit_timeout);
        client_config
            .validate()
            .map_err(|e| RemoteError::Options(e.to_string()))?;
        if options.call_timeout.is_zero() || options.submit_timeout.is_zero() {
            return Err(RemoteError::Options("timeouts must be positive".into()));
        }
        let mut nodes: Vec<Arc<RemoteNode>> = config
            .nodes
            .iter()
            .map(|n| {
                Arc::new(RemoteNode {
                    id: n.id,
                    addr: n.addr,
                    client_config: client_config.clone(),
                    call_timeout: options.call_timeout,
                    submit_timeout: options.submit_timeout,
                    idle: Mutex::new(Vec::new()),
                    permits: Semaphore::new(options.connections_per_node),
                })
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        Ok(RemoteCluster { nodes })
    }

    /// The address of a node.
    pub fn addr(&self, node: NodeId) -> Option<SocketAddr> {
        self.node(node).ok().map(|n| n.addr)
    }

    /// Sends one raw request to a node, within [`RemoteOptions::call_timeout`] (or
    /// [`RemoteOptions::submit_timeout`] for a [`RemoteRequest::Submit`]).
    ///
    /// A submit's answer is checked against the request ([`RemoteResponse::answering`]):
    /// the node's [`RemoteResponse::Replied`] comes back as
    /// [`RemoteResponse::Submitted`], and an answer for another request is an error.
    pub async fn call(
        &self,
        node: NodeId,
        request: &RemoteRequest,
    ) -> Result<RemoteResponse, ClusterError> {
        let n = self.node(node)?;
        let limit = match request {
            RemoteRequest::Submit(_) => n.submit_timeout,
            _ => n.call_timeout,
        };
        n.call(request, limit).await.map_err(|e| n.unreachable(e))
    }

    fn node(&self, node: NodeId) -> Result<&Arc<RemoteNode>, ClusterError> {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .ok_or(ClusterError::UnknownNode(node))
    }
}

#[async_trait]
impl Cluster for RemoteCluster {
    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn endpoints(&self) -> Vec<Arc<dyn Endpoint>> {
        self.nodes
            .iter()
            .map(|n| Arc::new(RemoteEndpoint(n.clone())) as Arc<dyn Endpoint>)
            .collect()
    }

    async fn set_available(&self, node: NodeId, available: bool) -> Result<(), ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::SetAvailable(available)).await? {
            RemoteResponse::AvailabilitySet(a) if a == available => Ok(()),
            other => Err(n.unexpected("set-available", &other)),
        }
    }

    async fn replica_status(&self, node: NodeId) -> Result<NodeStatus, ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::ReplicaStatus).await? {
            RemoteResponse::Status(s) => Ok(s),
            other => Err(n.unexpected("replica-status", &other)),
        }
    }

    async fn db(&self, node: NodeId) -> Result<DbSnapshot, ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::Db).await? {
            RemoteResponse::Db(db) => Ok(db),
            other => Err(n.unexpected("db", &other)),
        }
    }

    async fn log(&self, node: NodeId) -> Result<Vec<LogEntry>, ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::Log).await? {
            RemoteResponse::Log(log) => Ok(log),
            other => Err(n.unexpected("log", &other)),
        }
    }

    async fn status(&self, node: NodeId, slot: Slot) -> Result<LogEntry, ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::SlotStatus(slot)).await? {
            RemoteResponse::Slot(entry) => Ok(entry),
            other => Err(n.unexpected("slot-status", &other)),
        }
    }

    async fn views(&self, node: NodeId) -> Result<Vec<ViewChange>, ClusterError> {
        let n = self.node(node)?;
        match n.inspect(RemoteRequest::Views).await? {
            RemoteResponse::Views(views) => Ok(views),
            other => Err(n.unexpected("views", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            RemoteRequest::Submit(Request::register(7)),
            RemoteRequest::SetAvailable(false),
            RemoteRequest::ReplicaStatus,
            RemoteRequest::Db,
            RemoteRequest::Log,
            RemoteRequest::SlotStatus(u64::MAX),
            RemoteRequest::Views,
        ];
        for r in requests {
            let bytes = r.encode().unwrap();
            assert_eq!(RemoteRequest::decode(&bytes).unwrap(), r);
        }
        let responses = [
            RemoteResponse::Submitted(Response::Redirect { leader: Some(3) }),
            RemoteResponse::Unavailable,
            RemoteResponse::AvailabilitySet(true),
            RemoteResponse::Log(vec![]),
            RemoteResponse::Error("boom".into()),
            RemoteResponse::Replied(Reply {
                client: 7,
                seq: 2,
                response: Response::Stale,
            }),
        ];
        for r in responses {
            let bytes = r.encode().unwrap();
            assert_eq!(RemoteResponse::decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = RemoteRequest::Db.encode().unwrap();
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
            assert!(RemoteRequest::decode(&input).is_err(), "{input:?}");
            // Responses too (a client never trusts what comes back).
            let _ = RemoteResponse::decode(&input);
        }
        // Every byte string up to two bytes long decodes or fails cleanly.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let _ = RemoteRequest::decode(&[a, b]);
                let _ = RemoteResponse::decode(&[a, b]);
            }
        }
    }

    fn submit(client: ClientId, seq: u64) -> Request {
        Request {
            client,
            seq,
            payload: Bytes::from_static(b"cmd"),
        }
    }

    fn replied(client: ClientId, seq: u64, response: Response) -> RemoteResponse {
        RemoteResponse::Replied(Reply {
            client,
            seq,
            response,
        })
    }

    #[test]
    fn a_submit_answer_must_name_its_request() {
        let request = RemoteRequest::Submit(submit(5, 3));
        let ok = Response::Ok(Bytes::from_static(b"out"));
        assert_eq!(
            replied(5, 3, ok.clone()).answering(&request).ok(),
            Some(RemoteResponse::Submitted(ok.clone()))
        );
        for (client, seq) in [(5, 2), (5, 4), (6, 3), (4, 0)] {
            let r = replied(client, seq, ok.clone()).answering(&request);
            assert!(
                matches!(
                    r,
                    Err(RemoteError::Mismatch { expected: (5, 3), found }) if found == (client, seq)
                ),
                "{r:?}"
            );
        }
        // An answer that names no request is not trusted.
        let r = RemoteResponse::Submitted(ok.clone()).answering(&request);
        assert!(matches!(r, Err(RemoteError::Unexpected { .. })), "{r:?}");
        // Refusals and errors pass; so do answers to other requests.
        for other in [
            RemoteResponse::Unavailable,
            RemoteResponse::Error("boom".into()),
        ] {
            assert_eq!(other.clone().answering(&request).ok(), Some(other));
        }
        let db = RemoteResponse::AvailabilitySet(true);
        assert_eq!(
            db.clone()
                .answering(&RemoteRequest::SetAvailable(true))
                .ok(),
            Some(db)
        );
    }

    /// A node's client port on 127.0.0.1 that answers every submit with `answer(request)`.
    async fn scripted_node(
        answer: fn(&Request) -> RemoteResponse,
    ) -> (paxos_transport_tcp::TcpTransport, ClusterConfig) {
        let mut config = ClusterConfig::local_default();
        let listen = "127.0.0.1:0".parse().unwrap();
        let tcp = paxos_transport_tcp::TcpConfig::new(1, config.cluster_id, listen);
        let (node, mut calls) = paxos_transport_tcp::TcpTransport::bind(tcp).await.unwrap();
        config.nodes = vec![crate::config::NodeConfig {
            id: 1,
            addr: node.local_addr(),
        }];
        tokio::spawn(async move {
            while let Some(call) = calls.recv().await {
                let response = match RemoteRequest::decode(call.request()) {
                    Ok(RemoteRequest::Submit(request)) => answer(&request),
                    _ => RemoteResponse::Error("not a submit".into()),
                };
                call.respond(response.encode().unwrap());
            }
        });
        (node, config)
    }

    async fn endpoint_call(
        answer: fn(&Request) -> RemoteResponse,
        request: Request,
    ) -> Result<Response, EndpointError> {
        let (mut node, config) = scripted_node(answer).await;
        let options = RemoteOptions {
            call_timeout: Duration::from_secs(5),
            submit_timeout: Duration::from_secs(5),
            ..RemoteOptions::default()
        };
        let cluster = RemoteCluster::new(&config, options).unwrap();
        let endpoint = cluster.endpoints().remove(0);
        let result = tokio::time::timeout(Duration::from_secs(10), endpoint.call(request))
            .await
            .expect("the endpoint answers in time");
        node.shutdown().await;
        result.map(|reply| reply.response)
    }

    #[tokio::test]
    async fn the_endpoint_refuses_an_answer_for_another_request() {
        // The node answers as if for the previous request of the same client.
        let r = endpoint_call(
            |r| replied(r.client, r.seq - 1, Response::Ok(Bytes::new())),
            submit(9, 4),
        )
        .await;
        let e = r.expect_err("a mismatched answer is refused");
        assert!(
            e.to_string().contains("answer for c9#3 to request c9#4"),
            "{e}"
        );
        // Another client's answer.
        let r = endpoint_call(
            |r| replied(r.client + 1, r.seq, Response::Stale),
            submit(9, 4),
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        // An answer that names no request.
        let r = endpoint_call(
            |_| RemoteResponse::Submitted(Response::Ok(Bytes::new())),
            submit(9, 4),
        )
        .await;
        assert!(r.is_err(), "{r:?}");
        // The request's own answer goes through.
        let r = endpoint_call(
            |r| replied(r.client, r.seq, Response::Ok(r.payload.clone())),
            submit(9, 4),
        )
        .await;
        assert_eq!(r.ok(), Some(Response::Ok(Bytes::from_static(b"cmd"))));
    }
}
