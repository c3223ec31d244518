//! A whole bank cluster in this process, over the in-memory transport.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use paxos_core::{
    spawn_node, AcceptorStatus, Config, Endpoint, EndpointError, EndpointErrorKind, MemStorage,
    NodeError, NodeHandle, NodeId, NodeOptions, Reply, Request, Slot, ViewChange,
};
use paxos_transport_mem::MemNetwork;
use thiserror::Error;

use crate::bank::Bank;
use paxos_transport_tcp::{Gate, GatedTransport, NodeStatus};

use crate::cluster::{read, Cluster, ClusterError, DbSnapshot, LogEntry, NoAnswer};

/// How a [`LocalCluster`] is built.
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    /// How many replicas, with ids `1..=nodes`. Default 5.
    pub nodes: u64,
    /// Seeds the network and each replica's election timeouts (replica `i` uses
    /// `seed ^ i`). Default 1.
    pub seed: u64,
    /// How each replica's driver runs (tick length, queues). Default
    /// [`NodeOptions::default`].
    pub node: NodeOptions,
}

impl Default for LocalClusterOptions {
    fn default() -> Self {
        LocalClusterOptions {
            nodes: 5,
            seed: 1,
            node: NodeOptions::default(),
        }
    }
}

/// A [`LocalCluster`] could not start.
#[derive(Debug, Error)]
pub enum LocalClusterError {
    /// It was started outside a tokio runtime, which its replicas need.
    #[error("a local cluster must be started inside a tokio runtime")]
    NoRuntime,
    /// `nodes` is 0 or larger than the protocol supports.
    #[error("a local cluster needs 1 to {max} replicas, got {got}")]
    BadSize {
        /// The size asked for.
        got: u64,
        /// The largest supported.
        max: usize,
    },
    /// A replica failed to start.
    #[error("replica n{node} cannot start: {source}")]
    Node {
        /// The replica.
        node: NodeId,
        /// Why.
        #[source]
        source: NodeError,
    },
}

struct LocalNode {
    handle: NodeHandle<Bank>,
    gate: Gate,
}

/// Bank replicas running as tasks of this process, connected by a
/// [`MemNetwork`], each behind a [`GatedTransport`] so the runner can make it
/// unavailable.
///
/// Every replica starts available and without state (a [`MemStorage`]): the cluster is
/// new, and it is founded once every replica has heard from every other one — only then
/// do they vote. So a replica made unavailable or stopped before that keeps the others
/// from ever forming a cluster: wait with [`await_voters`](LocalCluster::await_voters)
/// first ([`run_scenario`](crate::run_scenario) does so itself). Dropping the cluster
/// (or calling [`shutdown`](LocalCluster::shutdown)) stops the replicas.
///
/// ```
/// use bank_app::{Cluster, LocalCluster, LocalClusterOptions};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = LocalCluster::start(LocalClusterOptions::default())?;
/// assert_eq!(cluster.nodes(), vec![1, 2, 3, 4, 5]);
/// assert!(cluster.await_voters(Duration::from_secs(10)).await);
/// cluster.set_available(3, false).await?;
/// assert!(!cluster.replica_status(3).await?.available);
/// assert_eq!(cluster.db(3).await?.total(), 100); // inspection still works
/// cluster.shutdown().await;
/// # Ok(()) }
/// ```
pub struct LocalCluster {
    network: MemNetwork,
    nodes: Vec<(NodeId, LocalNode)>,
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field(
                "nodes",
                &self.nodes.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LocalCluster {
    /// Starts the replicas on the current tokio runtime.
    pub fn start(options: LocalClusterOptions) -> Result<LocalCluster, LocalClusterError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(LocalClusterError::NoRuntime);
        }
        if options.nodes == 0 || options.nodes > paxos_core::MAX_MEMBERS as u64 {
            return Err(LocalClusterError::BadSize {
                got: options.nodes,
                max: paxos_core::MAX_MEMBERS,
            });
        }
        let ids: Vec<NodeId> = (1..=options.nodes).collect();
        let (network, transports) = MemNetwork::cluster(options.seed, ids.iter().copied());
        let mut nodes = Vec::with_capacity(ids.len());
        for (transport, &id) in transports.into_iter().zip(&ids) {
            let mut config = Config::new(id, ids.clone());
            config.seed = options.seed ^ id;
            // One transaction per slot, as in the system this bank replaces: a
            // scenario's PrintLog and PrintStatus read slot by slot. (`bank node`
            // keeps the library's default and packs waiting requests into one slot.)
            config.max_requests_per_slot = 1;
            let gate = Gate::new(true);
            let transport = GatedTransport::new(transport, gate.clone());
            let handle = spawn_node(
                config,
                Bank::new(),
                transport,
                MemStorage::new(),
                options.node.clone(),
            )
            .map_err(|source| LocalClusterError::Node { node: id, source })?;
            nodes.push((id, LocalNode { handle, gate }));
        }
        Ok(LocalCluster { network, nodes })
    }

    /// The replica's node handle, for direct inspection or to shut it down.
    pub fn handle(&self, node: NodeId) -> Option<&NodeHandle<Bank>> {
        self.node(node).ok().map(|n| &n.handle)
    }

    /// The replica's availability gate.
    pub fn gate(&self, node: NodeId) -> Option<&Gate> {
        self.node(node).ok().map(|n| &n.gate)
    }

    /// The in-memory network, to inject faults beyond availability.
    pub fn network(&self) -> &MemNetwork {
        &self.network
    }

    /// Waits until every replica votes (the new cluster has been founded), up to
    /// `timeout`; false if some replica still does not (or has stopped) by then.
    pub async fn await_voters(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let statuses = futures::future::join_all(self.nodes.iter().map(|(_, n)| {
                tokio::time::timeout(INSPECT_TIMEOUT, n.handle.inspect(|r| r.acceptor_status()))
            }))
            .await;
            let all = statuses
                .into_iter()
                .all(|s| matches!(s, Ok(Ok(AcceptorStatus::Voter))));
            if all {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops every replica and waits until they have stopped.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.nodes.iter().map(|(_, n)| n.handle.shutdown())).await;
    }

    fn node(&self, node: NodeId) -> Result<&LocalNode, ClusterError> {
        self.nodes
            .iter()
            .find(|(id, _)| *id == node)
            .map(|(_, n)| n)
            .ok_or(ClusterError::UnknownNode(node))
    }
}

fn unreachable(node: NodeId, e: NodeError) -> ClusterError {
    ClusterError::unreachable(node, e)
}

/// A client endpoint that refuses requests at once while its replica is unavailable.
struct GatedEndpoint {
    handle: NodeHandle<Bank>,
    gate: Gate,
}

#[async_trait]
impl Endpoint for GatedEndpoint {
    fn node(&self) -> NodeId {
        self.handle.id()
    }

    async fn call(&self, request: Request) -> Result<Reply, EndpointError> {
        if !self.gate.is_open() {
            return Err(EndpointError::new(
                self.handle.id(),
                EndpointErrorKind::Unreachable,
            ));
        }
        self.handle
            .submit(request)
            .await
            .map_err(|e| EndpointError::with_cause(self.handle.id(), EndpointErrorKind::Stopped, e))
    }
}

/// How long [`LocalCluster`] waits for a replica's answer to an inspection call.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

impl LocalCluster {
    async fn inspect<R, F>(&self, node: NodeId, f: F) -> Result<R, ClusterError>
    where
        R: Send + 'static,
        F: FnOnce(&paxos_core::Replica<Bank>, bool) -> R + Send + 'static,
    {
        let n = self.node(node)?;
        let available = n.gate.is_open();
        let call = n.handle.inspect(move |r| f(r, available));
        match tokio::time::timeout(INSPECT_TIMEOUT, call).await {
            Ok(result) => result.map_err(|e| unreachable(node, e)),
            Err(_) => Err(ClusterError::unreachable(node, NoAnswer(INSPECT_TIMEOUT))),
        }
    }
}

#[async_trait]
impl Cluster for LocalCluster {
    fn nodes(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|(id, _)| *id).collect()
    }

    fn endpoints(&self) -> Vec<Arc<dyn Endpoint>> {
        self.nodes
            .iter()
            .map(|(_, n)| {
                Arc::new(GatedEndpoint {
                    handle: n.handle.clone(),
                    gate: n.gate.clone(),
                }) as Arc<dyn Endpoint>
            })
            .collect()
    }

    async fn set_available(&self, node: NodeId, available: bool) -> Result<(), ClusterError> {
        let n = self.node(node)?;
        if n.handle.is_stopped() {
            return Err(unreachable(node, NodeError::Stopped));
        }
        n.gate.set(available);
        Ok(())
    }

    async fn replica_status(&self, node: NodeId) -> Result<NodeStatus, ClusterError> {
        self.inspect(node, read::status).await
    }

    async fn db(&self, node: NodeId) -> Result<DbSnapshot, ClusterError> {
        self.inspect(node, read::db).await
    }

    async fn log(&self, node: NodeId) -> Result<Vec<LogEntry>, ClusterError> {
        self.inspect(node, |r, _| read::log(r)).await
    }

    async fn status(&self, node: NodeId, slot: Slot) -> Result<LogEntry, ClusterError> {
        self.inspect(node, move |r, _| read::slot(r, slot)).await
    }

    async fn views(&self, node: NodeId) -> Result<Vec<ViewChange>, ClusterError> {
        self.inspect(node, |r, _| read::views(r)).await
    }
}
