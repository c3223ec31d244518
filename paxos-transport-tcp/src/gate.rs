//! Making a replica unavailable without stopping it: a shared flag and a transport
//! wrapper that honours it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use paxos_core::{Message, NodeId, Transport, TransportError};

/// A shared availability flag: open (the replica takes part in the protocol) or closed
/// (it is cut off, as if crashed).
///
/// Cloning is cheap and every clone shares the same flag, so the code that decides
/// availability (a test, a scenario runner, a [`NodeServer`](crate::NodeServer)'s
/// test controls) and the transport that enforces it
/// ([`GatedTransport`]) each hold one. Reads and writes are single atomic operations;
/// a change takes effect for the next message sent or received.
///
/// ```
/// use paxos_transport_tcp::Gate;
/// let gate = Gate::new(true);
/// let seen_by_transport = gate.clone();
/// gate.close();
/// assert!(!seen_by_transport.is_open());
/// ```
#[derive(Clone, Default)]
pub struct Gate {
    open: Arc<AtomicBool>,
}

impl Gate {
    /// A gate, open or closed.
    pub fn new(open: bool) -> Gate {
        Gate {
            open: Arc::new(AtomicBool::new(open)),
        }
    }

    /// True when protocol traffic flows.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens or closes the gate.
    pub fn set(&self, open: bool) {
        self.open.store(open, Ordering::Release);
    }

    /// Lets protocol traffic flow again.
    pub fn open(&self) {
        self.set(true);
    }

    /// Drops all protocol traffic from now on.
    pub fn close(&self) {
        self.set(false);
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Gate").field(&self.is_open()).finish()
    }
}

/// A [`Transport`] that drops every message, outbound and inbound, while its [`Gate`]
/// is closed.
///
/// This is how a replica is made *unavailable*: it keeps running, ticking and answering
/// inspection requests made through its handle, but takes no part in the protocol — to
/// its peers it looks crashed, and it hears nothing from them. Its own timers still
/// fire, so it starts elections nobody answers, like a replica on the wrong side of a
/// partition; when the gate opens again it rejoins and catches up. The protocol
/// tolerates all of that.
///
/// While closed, [`send`](Transport::send) discards the message and reports success (a
/// lost message is not an error), and [`recv`](Transport::recv) keeps draining the
/// inner transport, discarding what arrives, so no backlog of stale messages is
/// delivered when the gate opens. `recv` is cancel safe if the inner transport's is.
///
/// It wraps any transport (the in-memory one of `paxos-transport-mem` as well as
/// [`TcpTransport`](crate::TcpTransport)), so an in-process test cluster and a TCP node
/// process use the same mechanism.
pub struct GatedTransport<T> {
    inner: T,
    gate: Gate,
}

impl<T> GatedTransport<T> {
    /// Wraps `inner`; traffic flows while `gate` is open.
    pub fn new(inner: T, gate: Gate) -> GatedTransport<T> {
        GatedTransport { inner, gate }
    }

    /// The gate this transport obeys.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: fmt::Debug> fmt::Debug for GatedTransport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatedTransport")
            .field("inner", &self.inner)
            .field("gate", &self.gate)
            .finish()
    }
}

impl<T: Transport> Transport for GatedTransport<T> {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        if !self.gate.is_open() {
            tracing::trace!(to, kind = message.kind(), "gate closed: message dropped");
            return Ok(());
        }
        self.inner.send(to, message)
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        loop {
            let (from, message) = self.inner.recv().await?;
            if self.gate.is_open() {
                return Some((from, message));
            }
            tracing::trace!(from, kind = message.kind(), "gate closed: message dropped");
        }
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        loop {
            let (from, message) = self.inner.try_recv()?;
            if self.gate.is_open() {
                return Some((from, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use paxos_core::Ballot;
    use paxos_transport_mem::MemNetwork;

    use super::*;

    fn heartbeat() -> Message {
        Message::Heartbeat {
            ballot: Ballot::new(1, 1),
            commit_point: 0,
        }
    }

    #[tokio::test]
    async fn a_closed_gate_drops_traffic_both_ways() {
        let (_network, mut ts) = MemNetwork::cluster(1, [1, 2]);
        let (Some(t2), Some(t1)) = (ts.pop(), ts.pop()) else {
            panic!("two transports");
        };
        let (g1, g2) = (Gate::new(true), Gate::new(true));
        let a = GatedTransport::new(t1, g1.clone());
        let mut b = GatedTransport::new(t2, g2.clone());

        a.send(2, heartbeat()).unwrap();
        assert_eq!(b.try_recv(), Some((1, heartbeat())));

        // Closed sender: nothing leaves, and that is not an error.
        g1.close();
        a.send(2, heartbeat()).unwrap();
        assert_eq!(b.try_recv(), None);
        g1.open();

        // Closed receiver: what arrives is drained and discarded, by recv and try_recv.
        g2.close();
        a.send(2, heartbeat()).unwrap();
        a.send(2, heartbeat()).unwrap();
        assert_eq!(b.try_recv(), None);
        a.send(2, heartbeat()).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(50), b.recv()).await;
        assert!(waited.is_err(), "a closed gate delivered {waited:?}");

        // Open again: no stale backlog, new traffic flows.
        g2.open();
        assert_eq!(b.try_recv(), None);
        a.send(2, heartbeat()).unwrap();
        assert_eq!(b.recv().await, Some((1, heartbeat())));
        assert!(b.gate().is_open());
        assert_eq!(format!("{g2:?}"), "Gate(true)");
    }
}
