//! A bank replica serving its peers and clients on one TCP address: what `bank node`
//! runs.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use paxos_core::{spawn_node, Config, NodeError, NodeHandle, NodeId, NodeOptions, Storage};
use paxos_transport_tcp::{ClientRequests, Responder, TcpConfig, TcpError, TcpTransport};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::bank::Bank;
use crate::cluster::read;
use crate::config::ClusterConfig;
use crate::gate::{Gate, GatedTransport};
use crate::remote::{RemoteRequest, RemoteResponse};

/// How a [`NodeServer`] runs.
#[derive(Clone, Debug)]
pub struct NodeServerOptions {
    /// How the replica's driver runs. Default [`NodeOptions::default`] (10 ms ticks).
    pub node: NodeOptions,
    /// How long a submitted request may wait for the replica's reply before the server
    /// answers with an error (the request may still execute later). Default 10 s.
    pub submit_timeout: Duration,
    /// How long an inspection may wait for the replica. Default 2 s.
    pub inspect_timeout: Duration,
}

impl Default for NodeServerOptions {
    fn default() -> Self {
        NodeServerOptions {
            node: NodeOptions::default(),
            submit_timeout: Duration::from_secs(10),
            inspect_timeout: Duration::from_secs(2),
        }
    }
}

/// A [`NodeServer`] could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The configuration does not list this node.
    #[error("node {0} is not in the cluster config")]
    UnknownNode(NodeId),
    /// Listening on the node's address failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The transport refused to start.
    #[error("cannot start the transport: {0}")]
    Transport(#[from] TcpError),
    /// The replica refused to start (bad configuration, unreadable storage).
    #[error("{0}")]
    Node(#[from] NodeError),
    /// It was started outside a tokio runtime.
    #[error("a node server must be started inside a tokio runtime")]
    NoRuntime,
}

/// One bank replica with its TCP transport and its client service.
///
/// The replica runs behind a [`GatedTransport`], so clients can make it unavailable
/// ([`RemoteRequest::SetAvailable`]), as the scenario runner does for the replicas a
/// set does not list. Each client call is served in its own task:
/// - [`RemoteRequest::Submit`] is refused at once with [`RemoteResponse::Unavailable`]
///   while the gate is closed; otherwise it is handed to the replica and answered
///   with its reply (a result, or a redirect to the leader) as a
///   [`RemoteResponse::Replied`] naming the request's `(client, seq)`, or with an error
///   after [`NodeServerOptions::submit_timeout`].
/// - Availability and inspection calls are always answered, within
///   [`NodeServerOptions::inspect_timeout`].
/// - Bytes that are not a [`RemoteRequest`] are answered [`RemoteResponse::Error`].
///
/// ```no_run
/// use bank_app::{ClusterConfig, NodeServer, NodeServerOptions};
/// use paxos_core::MemStorage;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let config = ClusterConfig::local_default();
/// let server = NodeServer::start(&config, 1, MemStorage::new(), NodeServerOptions::default()).await?;
/// tokio::signal::ctrl_c().await?;
/// server.shutdown().await;
/// # Ok(()) }
/// ```
pub struct NodeServer {
    id: NodeId,
    addr: SocketAddr,
    handle: NodeHandle<Bank>,
    gate: Gate,
    service: JoinHandle<()>,
}

impl fmt::Debug for NodeServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeServer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("gate", &self.gate)
            .finish()
    }
}

impl NodeServer {
    /// Listens on node `id`'s address from `config` and starts the replica with
    /// `storage` (which it loads first).
    pub async fn start<St: Storage>(
        config: &ClusterConfig,
        id: NodeId,
        storage: St,
        options: NodeServerOptions,
    ) -> Result<NodeServer, ServeError> {
        let addr = config.addr(id).ok_or(ServeError::UnknownNode(id))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        NodeServer::start_on(listener, config, id, storage, options)
    }

    /// Like [`start`](NodeServer::start), on a listener the caller bound (the
    /// configuration's address for this node is then not used for listening).
    pub fn start_on<St: Storage>(
        listener: TcpListener,
        config: &ClusterConfig,
        id: NodeId,
        storage: St,
        options: NodeServerOptions,
    ) -> Result<NodeServer, ServeError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ServeError::NoRuntime);
        }
        if config.node(id).is_none() {
            return Err(ServeError::UnknownNode(id));
        }
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.addr(id).unwrap_or_else(|| ([0, 0, 0, 0], 0).into()),
            source,
        })?;
        let mut tcp = TcpConfig::new(id, config.cluster_id, addr);
        for node in &config.nodes {
            tcp = tcp.with_peer(node.id, node.addr);
        }
        let (transport, calls) = TcpTransport::from_listener(tcp, listener)?;
        let gate = Gate::new(true);
        let mut replica = Config::new(id, config.ids());
        replica.checkpoint_interval = config.checkpoint_interval;
        let handle = spawn_node(
            replica,
            Bank::new(),
            GatedTransport::new(transport, gate.clone()),
            storage,
            options.node.clone(),
        )?;
        let service = tokio::spawn(serve(calls, handle.clone(), gate.clone(), options));
        info!(node = id, %addr, "bank node serving peers and clients");
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

    /// The replica's handle.
    pub fn handle(&self) -> &NodeHandle<Bank> {
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
        // with an error by their own tasks.
        if tokio::time::timeout(Duration::from_secs(2), self.service)
            .await
            .is_err()
        {
            debug!(node = self.id, "client service did not stop in time");
        }
        info!(node = self.id, "bank node stopped");
    }
}

/// Takes client calls until the transport shuts down, each in its own task.
async fn serve(
    mut calls: ClientRequests,
    handle: NodeHandle<Bank>,
    gate: Gate,
    options: NodeServerOptions,
) {
    while let Some(call) = calls.recv().await {
        let remote = call.remote_addr();
        let (request, responder) = call.into_parts();
        let handle = handle.clone();
        let gate = gate.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let response = handle_call(&handle, &gate, &request, &options).await;
            if let RemoteResponse::Error(e) = &response {
                debug!(%remote, error = %e, "client call failed");
            }
            respond(responder, &response);
        });
    }
}

fn respond(responder: Responder, response: &RemoteResponse) {
    let bytes = response.encode().or_else(|e| {
        warn!(error = %e, "cannot encode a response");
        RemoteResponse::Error(format!("cannot encode the response: {e}")).encode()
    });
    // Without bytes the responder is dropped and the client hears "no response".
    if let Ok(bytes) = bytes {
        responder.respond(bytes);
    }
}

/// Serves one call's bytes: decode, act, answer. Never panics on any input.
pub(crate) async fn handle_call(
    handle: &NodeHandle<Bank>,
    gate: &Gate,
    request: &Bytes,
    options: &NodeServerOptions,
) -> RemoteResponse {
    let request = match RemoteRequest::decode(request) {
        Ok(r) => r,
        Err(e) => return RemoteResponse::Error(format!("bad request: {e}")),
    };
    let available = gate.is_open();
    let limit = options.inspect_timeout;
    let result = match request {
        RemoteRequest::Submit(request) => {
            if !available {
                return RemoteResponse::Unavailable;
            }
            let limit = options.submit_timeout;
            // The answer names the request it answers (the replica's own reply), for
            // the client to check.
            match tokio::time::timeout(limit, handle.submit(request)).await {
                Ok(r) => r.map(RemoteResponse::Replied),
                Err(_) => {
                    return RemoteResponse::Error(format!("no reply within {limit:?}"));
                }
            }
        }
        RemoteRequest::SetAvailable(open) => {
            if handle.is_stopped() {
                Err(NodeError::Stopped)
            } else {
                if open != available {
                    info!(
                        node = handle.id(),
                        available = open,
                        "availability changed by a client"
                    );
                }
                gate.set(open);
                Ok(RemoteResponse::AvailabilitySet(open))
            }
        }
        other => {
            let inspect = handle.inspect(move |r| match other {
                RemoteRequest::ReplicaStatus => RemoteResponse::Status(read::status(r, available)),
                RemoteRequest::Db => RemoteResponse::Db(read::db(r, available)),
                RemoteRequest::Log => RemoteResponse::Log(read::log(r)),
                RemoteRequest::SlotStatus(slot) => RemoteResponse::Slot(read::slot(r, slot)),
                RemoteRequest::Views => RemoteResponse::Views(read::views(r)),
                RemoteRequest::Submit(_) | RemoteRequest::SetAvailable(_) => {
                    RemoteResponse::Error("unreachable request kind".into())
                }
            });
            match tokio::time::timeout(limit, inspect).await {
                Ok(r) => r,
                Err(_) => return RemoteResponse::Error(format!("no answer within {limit:?}")),
            }
        }
    };
    result.unwrap_or_else(|e| RemoteResponse::Error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use paxos_core::{MemStorage, Reply, Request, Response};

    use super::*;
    use crate::config::NodeConfig;

    #[tokio::test]
    async fn a_single_node_serves_calls_and_refuses_garbage() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = ClusterConfig {
            nodes: vec![NodeConfig { id: 1, addr }],
            ..ClusterConfig::local_default()
        };
        let server = NodeServer::start_on(
            listener,
            &config,
            1,
            MemStorage::new(),
            NodeServerOptions::default(),
        )
        .unwrap();
        let options = NodeServerOptions::default();
        let call = |r: RemoteRequest| {
            let handle = server.handle().clone();
            let gate = server.gate().clone();
            let options = options.clone();
            async move { handle_call(&handle, &gate, &r.encode().unwrap(), &options).await }
        };
        let garbage = handle_call(
            server.handle(),
            server.gate(),
            &Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            &options,
        )
        .await;
        assert!(matches!(garbage, RemoteResponse::Error(_)), "{garbage:?}");

        // A lone replica elects itself and executes; the answer names its request.
        let mut registered = false;
        for _ in 0..200 {
            if let RemoteResponse::Replied(Reply {
                client: 5,
                seq: 0,
                response: Response::Ok(_),
            }) = call(RemoteRequest::Submit(Request::register(5))).await
            {
                registered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(registered);

        assert_eq!(
            call(RemoteRequest::SetAvailable(false)).await,
            RemoteResponse::AvailabilitySet(false)
        );
        assert_eq!(
            call(RemoteRequest::Submit(Request::register(6))).await,
            RemoteResponse::Unavailable
        );
        match call(RemoteRequest::Db).await {
            RemoteResponse::Db(db) => assert!(!db.available && db.total() == 100),
            other => panic!("{other:?}"),
        }
        match call(RemoteRequest::Log).await {
            RemoteResponse::Log(log) => assert!(!log.is_empty()),
            other => panic!("{other:?}"),
        }
        server.shutdown().await;
    }
}
