//! The shared network: who is connected to whom, the fault settings, and message routing.
//!
//! # How it fits together
//! The authoritative settings live in a [`Topology`] behind the network's control mutex.
//! Every change makes a new copy (copy-on-write through an `Arc`) and bumps a version
//! counter. Each transport caches the `Arc<Topology>` it last saw and the version it saw
//! it at; a send only loads the version (one atomic read of a word that changes only when
//! a test changes the network) and, when it has not moved, routes with the cached copy.
//! With no faults set that is a plain `try_send` on the destination's channel. Only a
//! send under message-level faults takes the control mutex, briefly, to draw from the
//! seeded RNG; no lock is ever held across an await.
//!
//! Crashes are tracked with a per-node epoch: a crash bumps the node's epoch, every
//! message is stamped with the epoch its destination had when it was sent, and the
//! receiving transport discards messages whose stamp is stale. So a crash loses the
//! messages queued for or in flight to the node, even if it restarts before they land.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use paxos_core::{Message, NodeId, TransportError};
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc;

use crate::faults::{Faults, Plan};
use crate::transport::MemTransport;

/// The default capacity of each node's inbound queue, in messages.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// The largest accepted queue capacity; larger requests are clamped to it.
const MAX_QUEUE_CAPACITY: usize = 1 << 28;

/// Locks a mutex, recovering the data if a panicking thread poisoned it. Every critical
/// section in this crate leaves the data consistent, so the data is still good.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What travels through a node's inbound channel.
#[derive(Debug)]
pub(crate) enum Envelope {
    /// A message from `from`, stamped with the destination's epoch at send time.
    Message {
        from: NodeId,
        epoch: u64,
        message: Message,
    },
    /// Wakes the receiver after the node was removed or the network dropped.
    Close,
}

/// Per-endpoint state shared between the network and the endpoint's transport. The
/// counters are written only by the code paths of the node they belong to, so different
/// nodes do not contend on them.
#[derive(Debug, Default)]
pub(crate) struct NodeShared {
    /// The node's current epoch; bumped by every crash.
    pub(crate) epoch: AtomicU64,
    /// Set when the node is removed, replaced by a new `join`, or the network dropped.
    pub(crate) removed: AtomicBool,
    pub(crate) sent: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) duplicated: AtomicU64,
}

impl NodeShared {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A route to one node.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    pub(crate) id: NodeId,
    pub(crate) tx: mpsc::Sender<Envelope>,
    pub(crate) shared: Arc<NodeShared>,
    /// Copy of `shared.epoch`, for stamping messages without touching the receiver's
    /// cache line.
    pub(crate) epoch: u64,
}

/// An immutable snapshot of the network settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Topology {
    /// Sorted by id.
    links: Vec<Link>,
    crashed: BTreeSet<NodeId>,
    isolated: BTreeSet<NodeId>,
    /// Node -> group index, when partitioned.
    groups: Option<BTreeMap<NodeId, usize>>,
    /// One-way `(from, to)` blocks.
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub(crate) faults: Faults,
    /// True when no crash, isolation, partition or block is in force, so every link is
    /// open and `open` need not look.
    pristine: bool,
}

impl Topology {
    pub(crate) fn link(&self, id: NodeId) -> Option<&Link> {
        self.links
            .binary_search_by_key(&id, |l| l.id)
            .ok()
            .and_then(|i| self.links.get(i))
    }

    /// Whether a message from `from` to `to` may pass; the reason when it may not.
    pub(crate) fn open(&self, from: NodeId, to: NodeId) -> Result<(), &'static str> {
        if self.pristine {
            return Ok(());
        }
        if self.crashed.contains(&from) {
            return Err("sender crashed");
        }
        if self.crashed.contains(&to) {
            return Err("receiver crashed");
        }
        if from == to {
            return Ok(());
        }
        if self.isolated.contains(&from) || self.isolated.contains(&to) {
            return Err("isolated");
        }
        if let Some(groups) = &self.groups {
            match (groups.get(&from), groups.get(&to)) {
                (Some(a), Some(b)) if a == b => {}
                _ => return Err("partitioned"),
            }
        }
        if self.blocked.contains(&(from, to)) {
            return Err("link blocked");
        }
        Ok(())
    }

    fn refresh(&mut self) {
        self.pristine = self.crashed.is_empty()
            && self.isolated.is_empty()
            && self.groups.is_none()
            && self.blocked.is_empty();
    }
}

/// The network's mutable core, behind one mutex.
struct Control {
    topo: Arc<Topology>,
    rng: ChaCha8Rng,
    /// Every endpoint ever joined, for the counters.
    endpoints: Vec<Arc<NodeShared>>,
    capacity: usize,
}

/// State shared by the network handles, the transports and the delay tasks.
pub(crate) struct Inner {
    /// Bumped (under the control lock) by every change to the topology.
    pub(crate) version: AtomicU64,
    /// Set when every [`MemNetwork`] handle is gone.
    pub(crate) closed: AtomicBool,
    control: Mutex<Control>,
}

impl Inner {
    /// The current topology and its version.
    pub(crate) fn snapshot(&self) -> (u64, Arc<Topology>) {
        let c = lock(&self.control);
        (self.version.load(Ordering::Acquire), Arc::clone(&c.topo))
    }

    /// Applies `f` to a private copy of the topology and publishes it.
    fn update<R>(&self, f: impl FnOnce(&mut Topology) -> R) -> R {
        let mut c = lock(&self.control);
        let mut topo = Topology::clone(&c.topo);
        let r = f(&mut topo);
        topo.refresh();
        c.topo = Arc::new(topo);
        self.version.fetch_add(1, Ordering::AcqRel);
        r
    }

    fn plan(&self, faults: &Faults) -> Plan {
        faults.plan(&mut lock(&self.control).rng)
    }

    /// Routes one message from `from` (whose counters are `from_shared`) using `topo`.
    pub(crate) fn route(
        self: &Arc<Self>,
        topo: &Topology,
        from: NodeId,
        from_shared: &Arc<NodeShared>,
        to: NodeId,
        message: Message,
    ) -> Result<(), TransportError> {
        let Some(link) = topo.link(to) else {
            return Err(TransportError::UnknownPeer(to));
        };
        NodeShared::count(&from_shared.sent);
        if let Err(reason) = topo.open(from, to) {
            tracing::trace!(from, to, kind = message.kind(), reason, "message dropped");
            NodeShared::count(&from_shared.dropped);
            return Ok(());
        }
        if topo.faults.is_none() {
            deliver(link, from, from_shared, message);
            return Ok(());
        }
        match self.plan(&topo.faults) {
            Plan::Drop => {
                tracing::trace!(from, to, kind = message.kind(), "message lost");
                NodeShared::count(&from_shared.dropped);
            }
            Plan::Deliver { first, second } => {
                if let Some(delay) = second {
                    NodeShared::count(&from_shared.duplicated);
                    self.deliver_after(delay, link, from, from_shared, message.clone());
                }
                self.deliver_after(first, link, from, from_shared, message);
            }
        }
        Ok(())
    }

    /// Delivers now when `delay` is zero, else from a timer task. Without a tokio runtime
    /// to run the timer, delivers now.
    fn deliver_after(
        self: &Arc<Self>,
        delay: Duration,
        link: &Link,
        from: NodeId,
        from_shared: &Arc<NodeShared>,
        message: Message,
    ) {
        if delay.is_zero() {
            deliver(link, from, from_shared, message);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("no tokio runtime to delay a message; delivering it now");
            deliver(link, from, from_shared, message);
            return;
        };
        let inner = Arc::clone(self);
        let from_shared = Arc::clone(from_shared);
        let link = link.clone();
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            inner.deliver_late(&link, from, &from_shared, message);
        });
    }

    /// Delivers a delayed message if its link is still open and the destination is the
    /// same endpoint it was sent to.
    fn deliver_late(&self, link: &Link, from: NodeId, from_shared: &NodeShared, message: Message) {
        if self.closed.load(Ordering::Acquire) {
            NodeShared::count(&from_shared.dropped);
            return;
        }
        let (_, topo) = self.snapshot();
        let same_endpoint = topo
            .link(link.id)
            .is_some_and(|now| now.tx.same_channel(&link.tx));
        if !same_endpoint {
            tracing::trace!(from, to = link.id, "delayed message dropped: receiver left");
            NodeShared::count(&from_shared.dropped);
            return;
        }
        if let Err(reason) = topo.open(from, link.id) {
            tracing::trace!(from, to = link.id, reason, "delayed message dropped");
            NodeShared::count(&from_shared.dropped);
            return;
        }
        deliver(link, from, from_shared, message);
    }

    /// Marks the network closed and wakes every receiver.
    fn close(&self) {
        let mut c = lock(&self.control);
        self.closed.store(true, Ordering::Release);
        for link in &c.topo.links {
            close_endpoint(link);
        }
        // Drop the network's senders; transports drop theirs on their next send.
        c.topo = Arc::new(Topology {
            pristine: true,
            ..Topology::default()
        });
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Queues a message on `link` without waiting; a full or closed queue drops it.
fn deliver(link: &Link, from: NodeId, from_shared: &NodeShared, message: Message) {
    let envelope = Envelope::Message {
        from,
        epoch: link.epoch,
        message,
    };
    if let Err(e) = link.tx.try_send(envelope) {
        let reason = match e {
            mpsc::error::TrySendError::Full(_) => "receiver queue full",
            mpsc::error::TrySendError::Closed(_) => "receiver gone",
        };
        tracing::trace!(from, to = link.id, reason, "message dropped");
        NodeShared::count(&from_shared.dropped);
    }
}

/// Marks an endpoint removed and wakes its receiver. If the queue is full the wake-up
/// is not needed: the receiver checks the flag after each message it takes.
fn close_endpoint(link: &Link) {
    link.shared.removed.store(true, Ordering::Release);
    let _ = link.tx.try_send(Envelope::Close);
}

/// Counters over all messages a [`MemNetwork`] has carried, for tests.
///
/// Every message accepted by a send is eventually counted once as delivered or dropped,
/// unless it is still queued or in flight, so
/// `sent + duplicated == delivered + dropped + (queued or in flight)`.
/// Messages still queued at a node when it is removed are never counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NetStats {
    /// Messages accepted by [`Transport::send`](paxos_core::Transport::send) (sends that
    /// returned an error are not counted).
    pub sent: u64,
    /// Messages handed to a receiver by `recv` or `try_recv`; duplicates count twice.
    pub delivered: u64,
    /// Messages lost: to or from a crashed node, across a cut link, by the drop rate, on
    /// a full queue, or stale after a crash.
    pub dropped: u64,
    /// Extra copies made by the duplicate rate.
    pub duplicated: u64,
}

/// Owns the network; dropping the last [`MemNetwork`] handle closes it.
struct Owner {
    inner: Arc<Inner>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.close();
    }
}

/// An in-process network connecting [`MemTransport`]s, with fault injection.
///
/// Cloning gives another handle to the same network. When the last handle is dropped,
/// the network closes: every transport's `recv` returns `None` and `send` returns
/// [`TransportError::Closed`].
///
/// # Faults
/// - [`crash`](Self::crash) / [`restart`](Self::restart): a crashed node neither sends
///   nor receives; messages to or from it are dropped, including those already queued
///   for it or in flight when it crashed.
/// - [`isolate`](Self::isolate), [`partition`](Self::partition) and
///   [`block`](Self::block) cut links; [`heal`](Self::heal) restores them all (but does
///   not restart crashed nodes).
/// - [`set_faults`](Self::set_faults): random loss, duplication and delay (which
///   reorders), drawn from the RNG seeded by [`MemNetwork::new`].
///
/// Link cuts apply when a message is sent and again when a delayed message lands: a
/// message in flight across a link that is cut before it arrives is lost.
///
/// # Queues
/// Each node has a bounded inbound queue ([`DEFAULT_QUEUE_CAPACITY`] messages unless set
/// with [`with_queue_capacity`](Self::with_queue_capacity)). A send to a full queue
/// drops the message instead of waiting: the protocol tolerates loss, and a slow node
/// must not stall its peers or grow memory without bound.
#[derive(Clone)]
pub struct MemNetwork {
    owner: Arc<Owner>,
}

impl MemNetwork {
    /// A network with no nodes and no faults, whose random choices come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_queue_capacity(seed, DEFAULT_QUEUE_CAPACITY)
    }

    /// Like [`new`](Self::new), with each node's inbound queue holding `capacity`
    /// messages (clamped to at least 1 and at most 2^28).
    pub fn with_queue_capacity(seed: u64, capacity: usize) -> Self {
        let control = Control {
            topo: Arc::new(Topology {
                pristine: true,
                ..Topology::default()
            }),
            rng: ChaCha8Rng::seed_from_u64(seed),
            endpoints: Vec::new(),
            capacity: capacity.clamp(1, MAX_QUEUE_CAPACITY),
        };
        let inner = Arc::new(Inner {
            version: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            control: Mutex::new(control),
        });
        MemNetwork {
            owner: Arc::new(Owner { inner }),
        }
    }

    /// A network with one transport per id in `ids`, returned in the same order.
    pub fn cluster(seed: u64, ids: impl IntoIterator<Item = NodeId>) -> (Self, Vec<MemTransport>) {
        let network = Self::new(seed);
        let transports = ids.into_iter().map(|id| network.join(id)).collect();
        (network, transports)
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.inner
    }

    /// Adds node `id` and returns its transport.
    ///
    /// If `id` already has a transport, the new one replaces it (as when a process
    /// restarts with a fresh connection): the old transport's `recv` returns `None` and
    /// its `send` fails with [`TransportError::Closed`]. Fault settings naming `id`
    /// (crash, isolation, partition, blocks) stay in force.
    pub fn join(&self, id: NodeId) -> MemTransport {
        let inner = self.inner();
        let mut c = lock(&inner.control);
        let (tx, rx) = mpsc::channel(c.capacity);
        let shared = Arc::new(NodeShared::default());
        c.endpoints.push(Arc::clone(&shared));
        let mut topo = Topology::clone(&c.topo);
        let link = Link {
            id,
            tx,
            shared: Arc::clone(&shared),
            epoch: 0,
        };
        match topo.links.binary_search_by_key(&id, |l| l.id) {
            Ok(i) => {
                if let Some(slot) = topo.links.get_mut(i) {
                    close_endpoint(slot);
                    *slot = link;
                }
            }
            Err(i) => topo.links.insert(i, link),
        }
        topo.refresh();
        let topo = Arc::new(topo);
        c.topo = Arc::clone(&topo);
        let version = inner.version.fetch_add(1, Ordering::AcqRel) + 1;
        drop(c);
        MemTransport::new(id, rx, shared, Arc::clone(inner), version, topo)
    }

    /// Removes node `id`: its transport's `recv` returns `None`, its `send` fails with
    /// [`TransportError::Closed`], and sends to it fail with
    /// [`TransportError::UnknownPeer`]. Returns false if `id` had no transport.
    pub fn remove(&self, id: NodeId) -> bool {
        self.inner().update(
            |topo| match topo.links.binary_search_by_key(&id, |l| l.id) {
                Ok(i) => {
                    let link = topo.links.remove(i);
                    close_endpoint(&link);
                    true
                }
                Err(_) => false,
            },
        )
    }

    /// The ids of the nodes that have a transport, in ascending order.
    pub fn nodes(&self) -> Vec<NodeId> {
        let (_, topo) = self.inner().snapshot();
        topo.links.iter().map(|l| l.id).collect()
    }

    /// Crashes node `id`: until [`restart`](Self::restart), messages to or from it are
    /// dropped, and so are messages already queued for it or in flight to it. The node's
    /// task keeps running; its `recv` just waits. `id` need not have joined yet.
    pub fn crash(&self, id: NodeId) {
        self.inner().update(|topo| {
            topo.crashed.insert(id);
            if let Ok(i) = topo.links.binary_search_by_key(&id, |l| l.id) {
                if let Some(link) = topo.links.get_mut(i) {
                    link.epoch = link.epoch.wrapping_add(1);
                    link.shared.epoch.store(link.epoch, Ordering::Release);
                }
            }
        });
        tracing::debug!(node = id, "crashed");
    }

    /// Restarts a crashed node: messages flow to and from it again. Messages lost while
    /// it was down stay lost. Does nothing if `id` is not crashed.
    pub fn restart(&self, id: NodeId) {
        self.inner().update(|topo| topo.crashed.remove(&id));
        tracing::debug!(node = id, "restarted");
    }

    /// True when `id` is crashed.
    pub fn is_crashed(&self, id: NodeId) -> bool {
        self.inner().snapshot().1.crashed.contains(&id)
    }

    /// Cuts every link to and from `id` (except to itself) until [`heal`](Self::heal).
    /// Unlike a crash, the node keeps running and keeps its queued messages.
    pub fn isolate(&self, id: NodeId) {
        self.inner().update(|topo| topo.isolated.insert(id));
        tracing::debug!(node = id, "isolated");
    }

    /// Splits the network: only nodes in the same group can talk. A node in no group
    /// can talk to nobody but itself; a node listed in several groups belongs to the
    /// last. Replaces any earlier partition; [`heal`](Self::heal) removes it.
    ///
    /// ```
    /// # let network = paxos_transport_mem::MemNetwork::new(0);
    /// network.partition(&[&[1, 2], &[3]]); // 1 and 2 talk; 3 is alone
    /// ```
    pub fn partition(&self, groups: &[&[NodeId]]) {
        let map: BTreeMap<NodeId, usize> = groups
            .iter()
            .enumerate()
            .flat_map(|(g, ids)| ids.iter().map(move |&id| (id, g)))
            .collect();
        self.inner().update(|topo| topo.groups = Some(map));
        tracing::debug!(?groups, "partitioned");
    }

    /// Cuts the one-way link from `from` to `to` until [`heal`](Self::heal); messages
    /// from `to` to `from` still pass.
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.inner().update(|topo| topo.blocked.insert((from, to)));
        tracing::debug!(from, to, "link blocked");
    }

    /// Removes every isolation, partition and block. Crashed nodes stay crashed, and
    /// message-level [`Faults`] stay set.
    pub fn heal(&self) {
        self.inner().update(|topo| {
            topo.isolated.clear();
            topo.groups = None;
            topo.blocked.clear();
        });
        tracing::debug!("healed");
    }

    /// Sets the message-level faults applied from now on. [`Faults::none`] restores
    /// direct, in-order delivery.
    pub fn set_faults(&self, faults: Faults) {
        self.inner().update(|topo| topo.faults = faults);
        tracing::debug!(?faults, "faults set");
    }

    /// The message-level faults in force.
    pub fn faults(&self) -> Faults {
        self.inner().snapshot().1.faults
    }

    /// Counters over everything this network has carried.
    pub fn stats(&self) -> NetStats {
        let c = lock(&self.inner().control);
        let mut s = NetStats::default();
        for e in &c.endpoints {
            s.sent = s.sent.saturating_add(e.sent.load(Ordering::Relaxed));
            s.delivered = s
                .delivered
                .saturating_add(e.delivered.load(Ordering::Relaxed));
            s.dropped = s.dropped.saturating_add(e.dropped.load(Ordering::Relaxed));
            s.duplicated = s
                .duplicated
                .saturating_add(e.duplicated.load(Ordering::Relaxed));
        }
        s
    }
}

impl fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (version, topo) = self.inner().snapshot();
        f.debug_struct("MemNetwork")
            .field(
                "nodes",
                &topo.links.iter().map(|l| l.id).collect::<Vec<_>>(),
            )
            .field("crashed", &topo.crashed)
            .field("isolated", &topo.isolated)
            .field("groups", &topo.groups)
            .field("blocked", &topo.blocked)
            .field("faults", &topo.faults)
            .field("version", &version)
            .finish()
    }
}
