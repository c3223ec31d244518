//! One node's endpoint on a [`MemNetwork`](crate::MemNetwork).

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use paxos_core::{Message, NodeId, Transport, TransportError};
use tokio::sync::mpsc;

use crate::network::{lock, Envelope, Inner, NodeShared, Topology};

/// The topology a transport last saw.
struct Cache {
    version: u64,
    topo: Arc<Topology>,
}

/// One node's [`Transport`] on a [`MemNetwork`](crate::MemNetwork), made by
/// [`MemNetwork::join`](crate::MemNetwork::join).
///
/// - [`send`](Transport::send) never waits: it queues the message on the destination's
///   channel (or, under delay faults, on a timer) and returns. A message that the network
///   drops — crash, cut link, loss, full queue — is not an error. Sending to a node that
///   has not joined fails with [`TransportError::UnknownPeer`]; sending from a removed
///   node or on a dropped network fails with [`TransportError::Closed`].
/// - [`recv`](Transport::recv) waits for the next message and is cancel safe: dropping
///   its future before it completes loses no message. It returns `None` once the node is
///   removed or replaced, or the network is dropped, and from then on.
/// - [`try_recv`](Transport::try_recv) returns an already-queued message without waiting.
///
/// Messages between two nodes arrive in the order they were sent unless delay faults
/// are set.
pub struct MemTransport {
    id: NodeId,
    rx: mpsc::Receiver<Envelope>,
    shared: Arc<NodeShared>,
    inner: Arc<Inner>,
    /// Locked only by this transport's own sends, so uncontended unless several tasks
    /// share the transport; never held across an await.
    cache: Mutex<Cache>,
}

/// What to do with an envelope taken from the queue.
enum Step {
    Deliver(NodeId, Message),
    Skip,
    Closed,
}

impl MemTransport {
    pub(crate) fn new(
        id: NodeId,
        rx: mpsc::Receiver<Envelope>,
        shared: Arc<NodeShared>,
        inner: Arc<Inner>,
        version: u64,
        topo: Arc<Topology>,
    ) -> Self {
        MemTransport {
            id,
            rx,
            shared,
            inner,
            cache: Mutex::new(Cache { version, topo }),
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// True once the node was removed or replaced, or the network dropped.
    fn is_closed(&self) -> bool {
        self.shared.removed.load(Ordering::Acquire)
    }

    fn send_now(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        let mut cache = lock(&self.cache);
        if self.inner.version.load(Ordering::Acquire) != cache.version {
            let (version, topo) = self.inner.snapshot();
            cache.version = version;
            cache.topo = topo;
        }
        // Closing bumps the version, so on the fast path (version unchanged since the
        // transport was created or last refreshed) these loads are of unchanging words.
        if self.is_closed() || self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        self.inner
            .route(&cache.topo, self.id, &self.shared, to, message)
    }

    fn accept(&mut self, envelope: Envelope) -> Step {
        match envelope {
            Envelope::Close => Step::Closed,
            Envelope::Message { .. } if self.is_closed() => Step::Closed,
            Envelope::Message {
                from,
                epoch,
                message,
            } => {
                if epoch != self.shared.epoch.load(Ordering::Acquire) {
                    tracing::trace!(
                        from,
                        to = self.id,
                        kind = message.kind(),
                        "message dropped: sent before the receiver crashed"
                    );
                    NodeShared::count(&self.shared.dropped);
                    Step::Skip
                } else {
                    NodeShared::count(&self.shared.delivered);
                    Step::Deliver(from, message)
                }
            }
        }
    }

    fn close(&mut self) {
        self.rx.close();
    }
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        self.send_now(to, message)
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        if self.is_closed() {
            self.close();
            return None;
        }
        loop {
            let envelope = self.rx.recv().await?;
            match self.accept(envelope) {
                Step::Deliver(from, message) => return Some((from, message)),
                Step::Skip => continue,
                Step::Closed => {
                    self.close();
                    return None;
                }
            }
        }
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        if self.is_closed() {
            self.close();
            return None;
        }
        loop {
            let envelope = self.rx.try_recv().ok()?;
            match self.accept(envelope) {
                Step::Deliver(from, message) => return Some((from, message)),
                Step::Skip => continue,
                Step::Closed => {
                    self.close();
                    return None;
                }
            }
        }
    }
}

impl fmt::Debug for MemTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemTransport")
            .field("id", &self.id)
            .field("closed", &self.is_closed())
            .field("queued", &self.rx.len())
            .finish()
    }
}
