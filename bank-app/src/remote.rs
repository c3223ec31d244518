//! The bank's view of replica processes: [`Cluster`] for the library's
//! [`RemoteCluster`], which talks to `bank node` processes over TCP.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use paxos_core::{Endpoint, NodeId, Slot, ViewChange};
use paxos_transport_tcp::{NodeServerOptions, RemoteCluster, RemoteError, RemoteNode, StateView};

use crate::account::Account;
use crate::bank::Bank;
use crate::cluster::{Cluster, ClusterError, DbSnapshot, LogEntry, NodeStatus};

/// The options of a bank replica process (`bank node`): the library's defaults, with
/// the bank's query hook, which answers any query with the replica's balances.
/// Test controls stay off; turn them on with
/// [`with_test_controls`](NodeServerOptions::with_test_controls).
pub fn node_options() -> NodeServerOptions<Bank> {
    NodeServerOptions::default().with_query(|bank: &Bank, _query: &[u8]| {
        // A map of accounts to integers always encodes.
        postcard::to_allocvec(bank.balances()).unwrap_or_default()
    })
}

/// A [`ClusterError`] for `node`, keeping the most specific typed cause.
fn unreachable(node: NodeId, e: RemoteError) -> ClusterError {
    match e {
        RemoteError::UnknownNode(n) => ClusterError::UnknownNode(n),
        RemoteError::Transport { source, .. } => ClusterError::unreachable(node, source),
        RemoteError::Server { source, .. } => ClusterError::unreachable(node, source),
        RemoteError::Protocol { source, .. } => ClusterError::unreachable(node, source),
        other => ClusterError::unreachable(node, other),
    }
}

impl TryFrom<StateView> for DbSnapshot {
    type Error = postcard::Error;

    /// The balances a bank node's query hook ([`node_options`]) answered.
    fn try_from(view: StateView) -> Result<DbSnapshot, postcard::Error> {
        let balances: BTreeMap<Account, i64> = postcard::from_bytes(&view.answer)?;
        Ok(DbSnapshot {
            node: view.node,
            available: view.available,
            acceptor: view.acceptor,
            executed: view.executed,
            balances,
        })
    }
}

fn member(cluster: &RemoteCluster, node: NodeId) -> Result<&RemoteNode, ClusterError> {
    cluster
        .node(node)
        .map_err(|_| ClusterError::UnknownNode(node))
}

#[async_trait]
impl Cluster for RemoteCluster {
    fn nodes(&self) -> Vec<NodeId> {
        self.members().iter().map(RemoteNode::id).collect()
    }

    fn inspected(&self) -> Vec<NodeId> {
        // Learners too: the inspection commands show them beside the members.
        self.members()
            .iter()
            .chain(self.learners())
            .map(RemoteNode::id)
            .collect()
    }

    fn endpoints(&self) -> Vec<Arc<dyn Endpoint>> {
        RemoteCluster::endpoints(self)
    }

    async fn set_available(&self, node: NodeId, available: bool) -> Result<(), ClusterError> {
        let n = member(self, node)?;
        n.set_available(available)
            .await
            .map_err(|e| unreachable(node, e))
    }

    async fn replica_status(&self, node: NodeId) -> Result<NodeStatus, ClusterError> {
        let n = member(self, node)?;
        n.status().await.map_err(|e| unreachable(node, e))
    }

    async fn db(&self, node: NodeId) -> Result<DbSnapshot, ClusterError> {
        let n = member(self, node)?;
        let view = n
            .query(Bytes::new())
            .await
            .map_err(|e| unreachable(node, e))?;
        DbSnapshot::try_from(view).map_err(|e| ClusterError::unreachable(node, e))
    }

    async fn log(&self, node: NodeId) -> Result<Vec<LogEntry>, ClusterError> {
        let n = member(self, node)?;
        // The node answers with the latest entries of the range, at most its limits
        // (`max_log_entries` entries and `max_log_bytes` bytes, by default 10,000 and
        // 1 MiB): PrintLog shows the tail of a long log.
        let log = n
            .log(0..Slot::MAX)
            .await
            .map_err(|e| unreachable(node, e))?;
        Ok(log.into_iter().map(LogEntry::from_slot).collect())
    }

    async fn status(&self, node: NodeId, slot: Slot) -> Result<LogEntry, ClusterError> {
        let n = member(self, node)?;
        let info = n.slot(slot).await.map_err(|e| unreachable(node, e))?;
        Ok(LogEntry::from_slot(info))
    }

    async fn views(&self, node: NodeId) -> Result<Vec<ViewChange>, ClusterError> {
        let n = member(self, node)?;
        n.view_changes().await.map_err(|e| unreachable(node, e))
    }
}
