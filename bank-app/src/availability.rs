//! Undoing what a run did to the replicas' availability: [`TrackedCluster`] remembers
//! which replicas it made unavailable, so an interrupted `bank client` can make them
//! available again; [`heal`] makes every replica available (`bank heal`), for when the
//! client that switched them off is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paxos_core::{Endpoint, NodeId, Slot, ViewChange};

use crate::cluster::{Cluster, ClusterError, DbSnapshot, LogEntry, NodeStatus};
use crate::inspect::NodeResult;

/// A [`Cluster`] that remembers the availability it was last asked to give each
/// replica, so the replicas it made unavailable can be made available again
/// ([`restore`](TrackedCluster::restore)), e.g. when a run is interrupted.
///
/// A replica asked to become unavailable counts as made unavailable even if the call
/// failed (it may have taken effect all the same); one asked to become available
/// again counts as restored only once that call succeeded.
///
/// ```
/// use bank_app::{Cluster, LocalCluster, LocalClusterOptions, TrackedCluster};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cluster = LocalCluster::start(LocalClusterOptions::default())?;
/// let tracked = TrackedCluster::new(&cluster);
/// tracked.set_available(2, false).await?;
/// tracked.set_available(3, false).await?;
/// tracked.set_available(3, true).await?;
/// assert_eq!(tracked.made_unavailable(), vec![2]);
/// let restored = tracked.restore().await;
/// assert!(restored.iter().all(|r| r.result.is_ok()));
/// assert!(cluster.replica_status(2).await?.available);
/// assert!(tracked.made_unavailable().is_empty());
/// cluster.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TrackedCluster<'a, C: ?Sized> {
    inner: &'a C,
    /// The availability last asked for (or obtained, for `true`), per replica.
    asked: Mutex<BTreeMap<NodeId, bool>>,
}

impl<'a, C: Cluster + ?Sized> TrackedCluster<'a, C> {
    /// Wraps `inner`; nothing is tracked yet.
    pub fn new(inner: &'a C) -> TrackedCluster<'a, C> {
        TrackedCluster {
            inner,
            asked: Mutex::new(BTreeMap::new()),
        }
    }

    fn asked(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, bool>> {
        self.asked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replicas made unavailable through this wrapper and not made available
    /// again, ascending.
    pub fn made_unavailable(&self) -> Vec<NodeId> {
        self.asked()
            .iter()
            .filter(|(_, &available)| !available)
            .map(|(&node, _)| node)
            .collect()
    }

    /// Makes every replica of [`made_unavailable`](TrackedCluster::made_unavailable)
    /// available again, concurrently; one result per such replica.
    ///
    /// Each replica's status is read back afterwards, and the call repeated if it still
    /// says unavailable: a request to make it unavailable that was cut short (its
    /// caller interrupted) may have reached it after the first call.
    pub async fn restore(&self) -> Vec<NodeResult<()>> {
        let nodes = self.made_unavailable();
        let results = futures::future::join_all(nodes.iter().map(|&n| async move {
            self.set_available(n, true).await?;
            if !self.inner.replica_status(n).await?.available {
                self.set_available(n, true).await?;
            }
            Ok(())
        }))
        .await;
        nodes
            .into_iter()
            .zip(results)
            .map(|(node, result)| NodeResult { node, result })
            .collect()
    }
}

#[async_trait]
impl<C: Cluster + ?Sized> Cluster for TrackedCluster<'_, C> {
    fn nodes(&self) -> Vec<NodeId> {
        self.inner.nodes()
    }

    fn endpoints(&self) -> Vec<Arc<dyn Endpoint>> {
        self.inner.endpoints()
    }

    async fn set_available(&self, node: NodeId, available: bool) -> Result<(), ClusterError> {
        if !available {
            self.asked().insert(node, false);
        }
        let result = self.inner.set_available(node, available).await;
        if available && result.is_ok() {
            self.asked().insert(node, true);
        }
        result
    }

    async fn replica_status(&self, node: NodeId) -> Result<NodeStatus, ClusterError> {
        self.inner.replica_status(node).await
    }

    async fn db(&self, node: NodeId) -> Result<DbSnapshot, ClusterError> {
        self.inner.db(node).await
    }

    async fn log(&self, node: NodeId) -> Result<Vec<LogEntry>, ClusterError> {
        self.inner.log(node).await
    }

    async fn status(&self, node: NodeId, slot: Slot) -> Result<LogEntry, ClusterError> {
        self.inner.status(node, slot).await
    }

    async fn views(&self, node: NodeId) -> Result<Vec<ViewChange>, ClusterError> {
        self.inner.views(node).await
    }

    async fn leader(&self) -> Option<NodeId> {
        self.inner.leader().await
    }
}

/// Makes every replica of `cluster` available, concurrently (`bank heal`). Per
/// replica: whether it was available before (`Ok(true)`: nothing changed), or why it
/// could not be reached. A replica that is not running needs no healing: a replica
/// process always starts available.
pub async fn heal<C: Cluster + ?Sized>(cluster: &C) -> Vec<NodeResult<bool>> {
    let nodes = cluster.nodes();
    let results = futures::future::join_all(nodes.iter().map(|&node| async move {
        let was = cluster.replica_status(node).await?.available;
        if !was {
            cluster.set_available(node, true).await?;
        }
        Ok(was)
    }))
    .await;
    nodes
        .into_iter()
        .zip(results)
        .map(|(node, result)| NodeResult { node, result })
        .collect()
}
