//! Settings of a node's transport and of a client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use paxos_core::NodeId;

use crate::error::TcpError;
use crate::wire::HANDSHAKE_MAX_FRAME;

/// The default [`TcpConfig::max_frame_size`] and [`ClientConfig::max_frame_size`]: 16 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// The default [`TcpConfig::max_client_frame_size`]: 1 MiB.
pub const DEFAULT_MAX_CLIENT_FRAME_SIZE: usize = 1024 * 1024;

/// The default [`TcpConfig::max_client_connections_per_ip`]: 64.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP: usize = 64;

/// The largest frame limit a configuration may set: 1 GiB.
pub const MAX_FRAME_SIZE_LIMIT: usize = 1 << 30;

/// How a node's [`TcpTransport`](crate::TcpTransport) behaves.
///
/// Build one with [`TcpConfig::new`], which fills in defaults, then adjust fields:
///
/// ```
/// use std::time::Duration;
/// use paxos_transport_tcp::TcpConfig;
///
/// let mut config = TcpConfig::new(1, 0xC0FFEE, "127.0.0.1:7001".parse().unwrap())
///     .with_peer(2, "127.0.0.1:7002".parse().unwrap())
///     .with_peer(3, "127.0.0.1:7003".parse().unwrap());
/// config.backoff_max = Duration::from_secs(1);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster's id. Every connection's handshake must carry the same id, so nodes of
    /// two clusters (or a stale configuration) never talk to each other by mistake.
    pub cluster_id: u64,
    /// The address to listen on, for peers and clients alike. Port 0 picks a free port
    /// ([`TcpTransport::local_addr`](crate::TcpTransport::local_addr) tells which).
    pub listen: SocketAddr,
    /// The other nodes: where to dial each one. Only these ids may connect as peers.
    /// An entry for [`node_id`](Self::node_id) itself is allowed and ignored, so every
    /// node can be given the same full member map.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The largest peer frame sent or accepted, and the largest response sent to a
    /// client, in bytes. A peer announcing a larger frame is disconnected; a local
    /// message that encodes larger is dropped with a warning.
    pub max_frame_size: usize,
    /// The largest request frame a client may send, in bytes: a client announcing a
    /// larger frame is disconnected as soon as its length prefix is read. Kept small
    /// (default [`DEFAULT_MAX_CLIENT_FRAME_SIZE`]; the smaller of this and
    /// [`max_frame_size`](Self::max_frame_size) applies) because the frame is buffered whole:
    /// a node's client buffers are bounded by this times
    /// [`max_client_connections`](Self::max_client_connections).
    pub max_client_frame_size: usize,
    /// Messages queued per peer while its connection is busy or being established.
    /// When the queue is full, [`send`](paxos_core::Transport::send) drops the message.
    pub peer_queue_capacity: usize,
    /// Inbound messages buffered for [`recv`](paxos_core::Transport::recv). When it is
    /// full, reading from peers pauses (TCP back-pressure) until the node catches up.
    pub inbound_queue_capacity: usize,
    /// Client calls buffered for the application's [`ClientRequests`](crate::ClientRequests).
    /// A request that finds it full is answered [`TcpError::Busy`].
    pub client_queue_capacity: usize,
    /// Requests a client connection may have outstanding (pipelined) at once; beyond it
    /// the server stops reading from that connection until responses go out.
    pub max_client_inflight: usize,
    /// The most inbound connections still in their handshake; a connection beyond it
    /// is closed at once with a warning. Each lasts at most
    /// [`handshake_timeout`](Self::handshake_timeout), and a connection leaves this
    /// count when its handshake completes.
    pub max_handshaking: usize,
    /// The most inbound peer connections open at once. Peers have these slots to
    /// themselves: no number of client connections takes them. A newer connection from
    /// a peer replaces its older one, so a healthy cluster uses one per peer.
    pub max_peer_connections: usize,
    /// The most client connections open at once; a client beyond it is refused in the
    /// handshake ([`TcpError::Rejected`]).
    pub max_client_connections: usize,
    /// The most client connections open at once from one IP address; a client beyond it
    /// is refused in the handshake.
    pub max_client_connections_per_ip: usize,
    /// How many nodes outside the configuration (neither in [`peers`](Self::peers) nor
    /// in a membership the node has learned) may connect as peers. Such a node is one
    /// about to be added as a member (`bank members add --id N --addr A`): it copies
    /// the chosen log as a learner before the change, so that it votes soon after.
    /// The replica answers it only with chosen values and checkpoint pieces, never a
    /// vote. The transport dials it back at the address its handshake gives, and
    /// keeps it until it stops. 0 refuses every node not configured. Default 8.
    pub max_joining_nodes: usize,
    /// A client connection with no request outstanding that sends nothing for this long
    /// is closed. Clients ([`TcpClient`](crate::TcpClient)) reconnect on their next call.
    /// A client that does not read its responses is idle too: a response frame (or a
    /// flush) it does not take within this time, or [`write_timeout`](Self::write_timeout)
    /// if shorter, closes its connection.
    pub client_idle_timeout: Duration,
    /// An inbound peer connection that sends nothing for this long is closed. A leader
    /// and its followers exchange heartbeats every few ticks, far more often than this;
    /// two followers may have nothing to say to each other for long, so a node's writer
    /// closes its own connection to a peer after half this time with nothing to send,
    /// and dials again when a message comes. Keep it the same on every node, and well
    /// above the heartbeat interval. Default 60 s.
    pub peer_idle_timeout: Duration,
    /// The first delay before redialing a peer; it doubles on each failure.
    pub backoff_min: Duration,
    /// The longest delay between two attempts to dial a peer.
    pub backoff_max: Duration,
    /// How long dialing a peer may take.
    pub connect_timeout: Duration,
    /// How long a connection may take to complete its handshake, on either side. A
    /// connection that sends nothing is closed after it.
    pub handshake_timeout: Duration,
    /// How long a batch of writes to a peer may take. A peer that stops reading is
    /// disconnected after it (and redialed), so a half-open connection does not stall
    /// its queue forever. It also bounds each response frame written to a client (and
    /// each flush), together with [`client_idle_timeout`](Self::client_idle_timeout):
    /// a client that stops reading loses its connection, and its slot.
    pub write_timeout: Duration,
}

impl TcpConfig {
    /// A configuration with no peers and default limits and timeouts.
    pub fn new(node_id: NodeId, cluster_id: u64, listen: SocketAddr) -> Self {
        TcpConfig {
            node_id,
            cluster_id,
            listen,
            peers: BTreeMap::new(),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_client_frame_size: DEFAULT_MAX_CLIENT_FRAME_SIZE,
            peer_queue_capacity: 1024,
            inbound_queue_capacity: 4096,
            client_queue_capacity: 4096,
            max_client_inflight: 64,
            max_handshaking: 256,
            max_peer_connections: 64,
            max_client_connections: 1024,
            max_client_connections_per_ip: DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP,
            max_joining_nodes: 8,
            client_idle_timeout: Duration::from_secs(300),
            peer_idle_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }

    /// Adds (or replaces) a peer.
    pub fn with_peer(mut self, id: NodeId, addr: SocketAddr) -> Self {
        self.peers.insert(id, addr);
        self
    }

    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<(), TcpError> {
        check_frame_size(self.max_frame_size)?;
        check_frame_size(self.max_client_frame_size)?;
        let positive = [
            ("peer_queue_capacity", self.peer_queue_capacity),
            ("inbound_queue_capacity", self.inbound_queue_capacity),
            ("client_queue_capacity", self.client_queue_capacity),
            ("max_client_inflight", self.max_client_inflight),
            ("max_handshaking", self.max_handshaking),
            ("max_peer_connections", self.max_peer_connections),
            ("max_client_connections", self.max_client_connections),
            (
                "max_client_connections_per_ip",
                self.max_client_connections_per_ip,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(TcpError::config(format!("{name} must be at least 1")));
            }
        }
        let durations = [
            ("backoff_min", self.backoff_min),
            ("backoff_max", self.backoff_max),
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("write_timeout", self.write_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("peer_idle_timeout", self.peer_idle_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(TcpError::config(format!("{name} must be positive")));
            }
        }
        if self.backoff_min > self.backoff_max {
            return Err(TcpError::config("backoff_min must not exceed backoff_max"));
        }
        // Tokio's semaphore caps permits far above any sane value; stay well below it.
        let limits = [
            self.max_handshaking,
            self.max_peer_connections,
            self.max_client_connections,
        ];
        if limits.iter().any(|&n| n > 1 << 20) {
            return Err(TcpError::config(
                "connection limits must be at most 1048576",
            ));
        }
        Ok(())
    }
}

/// How a [`TcpClient`](crate::TcpClient) behaves.
///
/// ```
/// use std::time::Duration;
/// use paxos_transport_tcp::ClientConfig;
///
/// let mut config = ClientConfig::new(0xC0FFEE);
/// config.call_timeout = Duration::from_secs(2);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The cluster to talk to; the server refuses a client of another cluster.
    pub cluster_id: u64,
    /// How long opening the TCP connection may take.
    pub connect_timeout: Duration,
    /// How long the handshake may take once connected.
    pub handshake_timeout: Duration,
    /// How long one [`call`](crate::TcpClient::call) may take, reconnecting included.
    pub call_timeout: Duration,
    /// The largest request or response frame, in bytes: a request frame holds the
    /// request and an 8-byte call id. Requests above the server's
    /// [`TcpConfig::max_client_frame_size`] close the connection, so keep requests
    /// below that.
    pub max_frame_size: usize,
    /// Deliberately broken variants to run instead of the real client code, in this
    /// crate's own tests only (see [`Broken`]); empty (the default) runs the real code.
    #[cfg(test)]
    pub(crate) broken: Vec<Broken>,
}

/// Deliberately broken variants of [`TcpClient`](crate::TcpClient)'s rules for matching
/// responses to calls, compiled only for this crate's own tests. Each undoes one part of
/// the fix, and a unit test (`broken_variants` in `tests.rs`) shows that a check of the
/// real tests fails against it, so every run proves those tests can still catch the bug.
/// Switched on through [`ClientConfig`]'s test-only `broken` field.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broken {
    /// A call returns the first response frame it reads, whatever call id it carries.
    AnyAnswer,
    /// A connection is reused for a new call while a cancelled call's answer is still
    /// outstanding, as long as the server has not closed it.
    ReuseWithAnswerOutstanding,
}

#[cfg(test)]
impl ClientConfig {
    /// Whether the broken variant `b` is switched on.
    pub(crate) fn is_broken(&self, b: Broken) -> bool {
        self.broken.contains(&b)
    }
}

impl ClientConfig {
    /// A configuration with default timeouts (connect 2 s, handshake 5 s, call 5 s) and
    /// frame limit ([`DEFAULT_MAX_FRAME_SIZE`]).
    pub fn new(cluster_id: u64) -> Self {
        ClientConfig {
            cluster_id,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            #[cfg(test)]
            broken: Vec::new(),
        }
    }

    /// Checks that every setting is usable.
    pub fn validate(&self) -> Result<(), TcpError> {
        check_frame_size(self.max_frame_size)?;
        let durations = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("call_timeout", self.call_timeout),
        ];
        for (name, value) in durations {
            if value.is_zero() {
                return Err(TcpError::config(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

fn check_frame_size(size: usize) -> Result<(), TcpError> {
    if !(HANDSHAKE_MAX_FRAME..=MAX_FRAME_SIZE_LIMIT).contains(&size) {
        return Err(TcpError::config(format!(
            "max_frame_size must be between {HANDSHAKE_MAX_FRAME} and {MAX_FRAME_SIZE_LIMIT}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn defaults_are_valid() {
        assert!(TcpConfig::new(1, 1, addr()).validate().is_ok());
        assert!(ClientConfig::new(1).validate().is_ok());
    }

    #[test]
    fn bad_settings_are_refused() {
        let base = TcpConfig::new(1, 1, addr());
        let mut bad = Vec::new();
        let mut c = base.clone();
        c.max_frame_size = 10;
        bad.push(c);
        let mut c = base.clone();
        c.max_frame_size = MAX_FRAME_SIZE_LIMIT + 1;
        bad.push(c);
        let mut c = base.clone();
        c.peer_queue_capacity = 0;
        bad.push(c);
        let mut c = base.clone();
        c.handshake_timeout = Duration::ZERO;
        bad.push(c);
        let mut c = base.clone();
        c.backoff_min = Duration::from_secs(3);
        bad.push(c);
        for c in bad {
            assert!(matches!(c.validate(), Err(TcpError::Config(_))), "{c:?}");
        }
        let mut c = ClientConfig::new(1);
        c.call_timeout = Duration::ZERO;
        assert!(matches!(c.validate(), Err(TcpError::Config(_))));
    }
}
