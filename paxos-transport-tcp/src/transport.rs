//! [`TcpTransport`]: the listener, the per-peer writers and the inbound readers.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use paxos_core::{Message, NodeId, Transport, TransportError};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::{serve_client, ClientCall, ClientLimits, ClientRequests};
use crate::codec::FrameCodec;
use crate::config::TcpConfig;
use crate::error::TcpError;
use crate::wire::{self, Conn, Hello, Role, HANDSHAKE_MAX_FRAME};

/// The most messages a peer writer feeds before flushing.
const MAX_WRITE_BATCH: usize = 256;

/// Buffered output at which a peer writer flushes even inside a batch.
const WRITE_BUFFER_HIGH: usize = 256 * 1024;

/// Pause after a failed `accept` (for example out of file descriptors), so the loop
/// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// State shared by the transport's tasks.
struct Shared {
    config: TcpConfig,
    /// Cancelled when the transport shuts down; every task stops on it.
    token: CancellationToken,
    /// Set just before `token` is cancelled: what every send checks, without the
    /// token's lock.
    stopped: AtomicBool,
    /// Messages dropped by [`TcpTransport::send`] or by a writer.
    dropped: AtomicU64,
    /// The current inbound connection of each peer: a newer one replaces an older one.
    inbound_peers: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    next_conn: AtomicU64,
    /// Slots for handshaken peer connections, which clients never take.
    peer_slots: Arc<Semaphore>,
    /// Slots for handshaken client connections.
    client_slots: Arc<Semaphore>,
    /// Open client connections per remote IP address.
    client_ips: Mutex<HashMap<IpAddr, usize>>,
    /// Peers learned from the cluster's configurations after start-up
    /// ([`Transport::update_membership`]): they may connect as peers too.
    joined: Mutex<HashMap<NodeId, SocketAddr>>,
    /// Nodes outside the configuration admitted by their handshake (at most
    /// [`TcpConfig::max_joining_nodes`]), at the address each listens on.
    joining: Mutex<HashMap<NodeId, SocketAddr>>,
    /// Set when [`joining`](Self::joining) gained a node the transport has no queue
    /// for yet.
    new_joiners: AtomicBool,
    /// The address this node's handshakes give as the one it listens on.
    advertise: SocketAddr,
}

impl Shared {
    /// Whether `id` may connect as a peer: a node of the configuration the transport
    /// started with, or a member it learned of since.
    fn knows_peer(&self, id: NodeId) -> bool {
        self.config.peers.contains_key(&id)
            || self
                .joined
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(&id)
    }

    /// Admits node `id`, which the configuration does not list, as a joining node
    /// listening on `listen` (an unspecified IP stands for `remote`'s), within
    /// [`TcpConfig::max_joining_nodes`]. The transport adds it as a peer at its next
    /// receive, before the replica sees the node's first message.
    fn admit_joining(
        &self,
        id: NodeId,
        listen: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), TcpError> {
        if listen.port() == 0 {
            return Err(TcpError::UnknownNode(id));
        }
        let listen = if listen.ip().is_unspecified() {
            SocketAddr::new(remote.ip(), listen.port())
        } else {
            listen
        };
        let mut joining = self
            .joining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !joining.contains_key(&id) {
            if joining.len() >= self.config.max_joining_nodes {
                return Err(TcpError::UnknownNode(id));
            }
            info!(node = self.config.node_id, peer = id, %listen, "a node outside the configuration connected; it may copy the log");
            joining.insert(id, listen);
            self.new_joiners.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// A handshaken connection's place under the connection limits; dropping it frees the
/// place.
#[allow(dead_code)] // Held only to be dropped with the connection.
enum Slot {
    Peer(OwnedSemaphorePermit),
    Client(ClientSlot),
}

/// A client connection's place under [`TcpConfig::max_client_connections`] and
/// [`TcpConfig::max_client_connections_per_ip`].
struct ClientSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut ips = self.shared.client_ips();
        if let Some(n) = ips.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                ips.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    fn inbound_peers(&self) -> MutexGuard<'_, HashMap<NodeId, (u64, CancellationToken)>> {
        // The map stays consistent even if a holder panicked: every update is one call.
        self.inbound_peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn client_ips(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.client_ips
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a connection that completed its handshake as `role`, or says
    /// which limit refuses it.
    fn take_slot(self: &Arc<Self>, role: Role, remote: SocketAddr) -> Result<Slot, TcpError> {
        let config = &self.config;
        match role {
            Role::Peer { .. } => self
                .peer_slots
                .clone()
                .try_acquire_owned()
                .map(Slot::Peer)
                .map_err(|_| TcpError::TooManyConnections {
                    what: "peer",
                    max: config.max_peer_connections,
                }),
            Role::Client => {
                let permit = self.client_slots.clone().try_acquire_owned().map_err(|_| {
                    TcpError::TooManyConnections {
                        what: "client",
                        max: config.max_client_connections,
                    }
                })?;
                let ip = remote.ip();
                {
                    let mut ips = self.client_ips();
                    let n = ips.entry(ip).or_insert(0);
                    if *n >= config.max_client_connections_per_ip {
                        return Err(TcpError::TooManyConnections {
                            what: "client per address",
                            max: config.max_client_connections_per_ip,
                        });
                    }
                    *n += 1;
                }
                Ok(Slot::Client(ClientSlot {
                    shared: self.clone(),
                    ip,
                    _permit: permit,
                }))
            }
        }
    }

    fn dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// A [`Transport`] over TCP.
///
/// Created by [`bind`](Self::bind) (or [`from_listener`](Self::from_listener)), which
/// also returns the [`ClientRequests`] arriving on the same address. See the
/// [crate documentation](crate) for how connections, handshakes and queues work.
///
/// Dropping the transport stops its listener and every task it started (asynchronously:
/// the port is released shortly after). [`shutdown`](Self::shutdown) does the same and
/// waits until everything has stopped.
pub struct TcpTransport {
    node_id: NodeId,
    local_addr: SocketAddr,
    queues: HashMap<NodeId, mpsc::Sender<Message>>,
    loopback: mpsc::Sender<(NodeId, Message)>,
    inbound: mpsc::Receiver<(NodeId, Message)>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl TcpTransport {
    /// Validates `config`, listens on [`TcpConfig::listen`] and starts dialing the peers.
    ///
    /// Must be called from within a tokio runtime. Returns the transport and the stream
    /// of client calls arriving on the same address.
    pub async fn bind(config: TcpConfig) -> Result<(TcpTransport, ClientRequests), TcpError> {
        config.validate()?;
        let listener = TcpListener::bind(config.listen).await?;
        Self::from_listener(config, listener)
    }

    /// Like [`bind`](Self::bind), but serves on a listener the caller already bound
    /// ([`TcpConfig::listen`] is ignored). Useful to learn every node's port before any
    /// node starts, or to take a socket handed over by a service manager.
    ///
    /// Must be called from within a tokio runtime.
    pub fn from_listener(
        config: TcpConfig,
        listener: TcpListener,
    ) -> Result<(TcpTransport, ClientRequests), TcpError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TcpError::config("a tcp transport must be started inside a tokio runtime")
        })?;
        let local_addr = listener.local_addr()?;
        let (inbound_tx, inbound) = mpsc::channel(config.inbound_queue_capacity);
        let (calls_tx, calls_rx) = mpsc::channel(config.client_queue_capacity);
        let (peer_slots, client_slots) =
            (config.max_peer_connections, config.max_client_connections);
        let shared = Arc::new(Shared {
            config,
            token: CancellationToken::new(),
            stopped: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            inbound_peers: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            peer_slots: Arc::new(Semaphore::new(peer_slots)),
            client_slots: Arc::new(Semaphore::new(client_slots)),
            client_ips: Mutex::new(HashMap::new()),
            joined: Mutex::new(HashMap::new()),
            joining: Mutex::new(HashMap::new()),
            new_joiners: AtomicBool::new(false),
            advertise: local_addr,
        });
        let config = &shared.config;

        let mut tasks = Vec::with_capacity(config.peers.len() + 1);
        let mut queues = HashMap::with_capacity(config.peers.len());
        for (&peer, &addr) in &config.peers {
            if peer == config.node_id {
                continue;
            }
            let (tx, rx) = mpsc::channel(config.peer_queue_capacity);
            queues.insert(peer, tx);
            let writer = peer_writer(shared.clone(), peer, addr, rx);
            tasks.push(runtime.spawn(until_cancelled(shared.token.clone(), writer)));
        }
        let acceptor = accept_loop(shared.clone(), listener, inbound_tx.clone(), calls_tx);
        tasks.push(runtime.spawn(acceptor));
        info!(
            node = config.node_id,
            cluster = config.cluster_id,
            addr = %local_addr,
            peers = queues.len(),
            "tcp transport listening"
        );

        let transport = TcpTransport {
            node_id: config.node_id,
            local_addr,
            queues,
            loopback: inbound_tx,
            inbound,
            shared,
            tasks,
        };
        Ok((transport, ClientRequests::new(calls_rx)))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The address the transport listens on (with the actual port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many outbound messages were dropped so far because a peer's queue was full,
    /// because the peer was unreachable, or because a message did not fit in a frame.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Queues `message` for `to` without waiting: the synchronous core of
    /// [`Transport::send`].
    ///
    /// Sending to this node's own id delivers the message to its own
    /// [`recv`](Transport::recv). A full queue drops the message (traced at debug level
    /// and counted in [`dropped_messages`](Self::dropped_messages)) and still returns
    /// `Ok`: the protocol tolerates loss.
    pub fn enqueue(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let result = if to == self.node_id {
            self.loopback
                .try_send((to, message))
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Closed(_)))
        } else {
            let queue = self
                .queues
                .get(&to)
                .ok_or(TransportError::UnknownPeer(to))?;
            queue
                .try_send(message)
                .map_err(|e| matches!(e, mpsc::error::TrySendError::Closed(_)))
        };
        match result {
            Ok(()) => Ok(()),
            Err(true) => Err(TransportError::Closed),
            Err(false) => {
                self.shared.dropped(1);
                debug!(peer = to, "outbound queue full; message dropped");
                Ok(())
            }
        }
    }

    /// Stops the listener, every connection and every task, and waits until they have
    /// stopped: the listening port is free when this returns. Afterwards
    /// [`recv`](Transport::recv) returns what was already queued and then `None`, and
    /// [`send`](Transport::send) fails with [`TransportError::Closed`].
    pub async fn shutdown(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.token.cancel();
        self.inbound.close();
        for task in self.tasks.drain(..) {
            // A task that panicked has nothing left to clean up.
            let _ = task.await;
        }
        debug!(node = self.node_id, "tcp transport shut down");
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.token.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("node_id", &self.node_id)
            .field("local_addr", &self.local_addr)
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .field("dropped", &self.dropped_messages())
            .finish()
    }
}

impl TcpTransport {
    /// Adds peer `id` at `addr`: dials it for outbound messages and lets it connect as
    /// a peer. A peer already known keeps its address (a node's address does not
    /// change under a running transport; restart it to move a node). Returns whether
    /// the peer was new.
    pub fn add_peer(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        if id == self.node_id || self.queues.contains_key(&id) {
            return false;
        }
        self.shared
            .joined
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, addr);
        let (tx, rx) = mpsc::channel(self.shared.config.peer_queue_capacity);
        self.queues.insert(id, tx);
        let writer = peer_writer(self.shared.clone(), id, addr, rx);
        self.tasks.push(tokio::spawn(until_cancelled(
            self.shared.token.clone(),
            writer,
        )));
        info!(node = self.node_id, peer = id, %addr, "peer added");
        true
    }
}

impl TcpTransport {
    /// Adds as peers the joining nodes admitted since the last call (see
    /// [`TcpConfig::max_joining_nodes`]), so that the replica's answers reach them.
    fn add_joiners(&mut self) {
        // A load first: this runs at every receive, and joiners are rare.
        if !self.shared.new_joiners.load(Ordering::Acquire)
            || !self.shared.new_joiners.swap(false, Ordering::AcqRel)
        {
            return;
        }
        let joining: Vec<(NodeId, SocketAddr)> = self
            .shared
            .joining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(&id, &addr)| (id, addr))
            .collect();
        for (id, addr) in joining {
            self.add_peer(id, addr);
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        self.enqueue(to, message)
    }

    /// Adds the members this transport has no address for, at the address each
    /// member carries (`host:port`; one that does not parse is skipped with a
    /// warning, and messages to that member are then refused as to an unknown peer).
    fn update_membership(&mut self, membership: &paxos_core::Membership) {
        for m in &membership.members {
            if m.id == self.node_id || self.queues.contains_key(&m.id) {
                continue;
            }
            match m.address.parse::<SocketAddr>() {
                Ok(addr) => {
                    self.add_peer(m.id, addr);
                }
                Err(e) => warn!(
                    node = self.node_id,
                    peer = m.id,
                    address = %m.address,
                    error = %e,
                    "a new member's address is not host:port; cannot reach it"
                ),
            }
        }
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        let received = self.inbound.recv().await;
        self.add_joiners();
        received
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        let received = self.inbound.try_recv().ok();
        self.add_joiners();
        received
    }
}

/// Runs `task` until it ends or `token` is cancelled.
async fn until_cancelled<F: std::future::Future<Output = ()>>(token: CancellationToken, task: F) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = task => {}
    }
}

/// Accepts connections until the transport shuts down; each runs in its own task.
async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    inbound: mpsc::Sender<(NodeId, Message)>,
    calls: mpsc::Sender<ClientCall>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_handshaking));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shared.token.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // Reap finished connection tasks so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a connection failed");
                sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%remote, max = shared.config.max_handshaking, "too many connections in their handshake; closing new one");
            drop(stream);
            continue;
        };
        conns.spawn(handle_inbound(
            shared.clone(),
            stream,
            remote,
            inbound.clone(),
            calls.clone(),
            permit,
        ));
    }
    drop(listener);
    conns.shutdown().await;
}

/// Runs one inbound connection: handshake, then serve it as a peer or a client. Bad input
/// ends only this connection, with a warning.
async fn handle_inbound(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    inbound: mpsc::Sender<(NodeId, Message)>,
    calls: mpsc::Sender<ClientCall>,
    handshaking: OwnedSemaphorePermit,
) {
    let config = &shared.config;
    if let Err(e) = wire::tune_socket(&stream) {
        debug!(%remote, error = %e, "cannot set socket options");
    }
    let mut conn = Conn::new(stream, FrameCodec::new(HANDSHAKE_MAX_FRAME));
    let handshake = wire::acceptor_handshake(
        &mut conn,
        config.cluster_id,
        config.node_id,
        config.handshake_timeout,
        |hello| match hello.role {
            Role::Peer { id, .. } if id == config.node_id => Err(TcpError::UnknownNode(id)),
            Role::Peer { id, listen } if !shared.knows_peer(id) => {
                shared.admit_joining(id, listen, remote)?;
                shared.take_slot(hello.role, remote)
            }
            role => shared.take_slot(role, remote),
        },
    );
    let accepted = tokio::select! {
        _ = shared.token.cancelled() => return,
        accepted = handshake => accepted,
    };
    // The handshake is over either way: the connection now counts under its role's
    // limit, or is closed.
    drop(handshaking);
    let (role, _slot) = match accepted {
        Ok(accepted) => accepted,
        Err(TcpError::Closed) => {
            debug!(%remote, "connection closed before its handshake");
            return;
        }
        Err(e) => {
            warn!(%remote, error = %e, "refused connection: handshake failed");
            return;
        }
    };
    match role {
        Role::Peer { id: peer, .. } => {
            conn.codec_mut().set_max_frame_size(config.max_frame_size);
            serve_peer(&shared, conn, remote, peer, inbound).await
        }
        Role::Client => {
            debug!(%remote, "client connected");
            conn.codec_mut()
                .set_max_frame_size(config.max_client_frame_size.min(config.max_frame_size));
            let limits = ClientLimits {
                max_inflight: config.max_client_inflight,
                max_response: config.max_frame_size,
                idle_timeout: config.client_idle_timeout,
                write_timeout: config.write_timeout,
            };
            let served = tokio::select! {
                _ = shared.token.cancelled() => return,
                served = serve_client(conn, remote, calls, limits) => served,
            };
            match served {
                Ok(()) => debug!(%remote, "client disconnected"),
                Err(e) if e.is_routine() => debug!(%remote, error = %e, "client connection closed"),
                Err(e) => warn!(%remote, error = %e, "closed client connection"),
            }
        }
    }
}

/// Reads messages from a peer's connection and delivers them, attributed to the id from
/// the handshake. A newer connection from the same peer replaces this one.
async fn serve_peer(
    shared: &Shared,
    mut conn: Conn<TcpStream>,
    remote: SocketAddr,
    peer: NodeId,
    inbound: mpsc::Sender<(NodeId, Message)>,
) {
    let seq = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let token = shared.token.child_token();
    if let Some((_, older)) = shared.inbound_peers().insert(peer, (seq, token.clone())) {
        debug!(peer, "newer connection replaces the older one");
        older.cancel();
    }
    debug!(peer, %remote, "peer connected");
    let idle = shared.config.peer_idle_timeout;
    let read = async {
        loop {
            let frame = match timeout(idle, conn.next()).await {
                Err(_) => return Err(TcpError::IdleTimeout(idle)),
                Ok(None) => break,
                Ok(Some(frame)) => frame,
            };
            let message = wire::decode_message(&frame?)?;
            if inbound.send((peer, message)).await.is_err() {
                break;
            }
        }
        Ok::<(), TcpError>(())
    };
    let result = tokio::select! {
        _ = token.cancelled() => Ok(()),
        result = read => result,
    };
    {
        let mut peers = shared.inbound_peers();
        if peers.get(&peer).is_some_and(|(s, _)| *s == seq) {
            peers.remove(&peer);
        }
    }
    match result {
        Ok(()) => debug!(peer, %remote, "peer connection closed"),
        Err(e) if e.is_routine() => debug!(peer, %remote, error = %e, "peer connection closed"),
        Err(e) => warn!(peer, %remote, error = %e, "closed peer connection"),
    }
}

/// Owns the outbound connection to one peer: dials with backoff, writes queued messages
/// in batches, redials when the connection breaks. Ends when the transport is dropped.
async fn peer_writer(
    shared: Arc<Shared>,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.backoff_min,
        config.backoff_max,
        config.node_id.rotate_left(32) ^ peer,
    );
    let mut failures: u32 = 0;
    // A message taken from the queue while no connection was open: the first to send.
    let mut first: Option<Message> = None;
    loop {
        match dial(config, shared.advertise, peer, addr).await {
            Ok((reader, writer)) => {
                if failures > 0 {
                    info!(peer, %addr, "connected to peer");
                } else {
                    debug!(peer, %addr, "connected to peer");
                }
                failures = 0;
                backoff.reset();
                match write_loop(&shared, peer, reader, writer, &mut queue, first.take()).await {
                    Ok(WriterEnd::QueueClosed) => return,
                    Ok(WriterEnd::Idle) => {
                        debug!(peer, %addr, "closed idle connection to peer; will dial again when there is something to send");
                        match queue.recv().await {
                            Some(message) => first = Some(message),
                            None => return,
                        }
                        continue;
                    }
                    Err(e) if e.is_routine() => {
                        info!(peer, %addr, error = %e, "lost connection to peer")
                    }
                    Err(e) => warn!(peer, %addr, error = %e, "closed connection to peer"),
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let misconfigured = matches!(
                    e,
                    TcpError::Rejected(_)
                        | TcpError::ClusterMismatch { .. }
                        | TcpError::VersionMismatch { .. }
                        | TcpError::WrongNode { .. }
                        | TcpError::NotPaxos(_)
                        | TcpError::Malformed(_)
                );
                if misconfigured {
                    warn!(peer, %addr, error = %e, "peer refused or is not a peer");
                } else if failures == 1 {
                    info!(peer, %addr, error = %e, "cannot reach peer; will retry");
                } else {
                    debug!(peer, %addr, error = %e, failures, "cannot reach peer");
                }
                // Messages queued for an unreachable peer are stale by the time it is
                // back; the protocol retransmits what still matters.
                let mut stale = u64::from(first.take().is_some());
                while queue.try_recv().is_ok() {
                    stale += 1;
                }
                if stale > 0 {
                    shared.dropped(stale);
                    debug!(
                        peer,
                        stale, "dropped messages queued for an unreachable peer"
                    );
                }
            }
        }
        if queue.is_closed() {
            return;
        }
        sleep(backoff.next_delay()).await;
    }
}

/// Dials a peer, runs the handshake, and splits the connection.
async fn dial(
    config: &TcpConfig,
    listen: SocketAddr,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<
    (
        FramedRead<OwnedReadHalf, FrameCodec>,
        FramedWrite<OwnedWriteHalf, FrameCodec>,
    ),
    TcpError,
> {
    let hello = Hello {
        cluster_id: config.cluster_id,
        role: Role::Peer {
            id: config.node_id,
            listen,
        },
    };
    let (conn, found) = wire::connect(
        addr,
        &hello,
        config.connect_timeout,
        config.handshake_timeout,
    )
    .await?;
    if found != peer {
        return Err(TcpError::WrongNode {
            expected: peer,
            found,
        });
    }
    let parts = conn.into_parts();
    let (read, write) = parts.io.into_split();
    let mut reader = FramedRead::new(read, FrameCodec::new(config.max_frame_size));
    *reader.read_buffer_mut() = parts.read_buf;
    let mut writer = FramedWrite::new(write, FrameCodec::new(config.max_frame_size));
    writer.set_backpressure_boundary(WRITE_BUFFER_HIGH);
    Ok((reader, writer))
}

/// Why [`write_loop`] ended without an error.
enum WriterEnd {
    /// The transport is gone.
    QueueClosed,
    /// Nothing was sent for half of [`TcpConfig::peer_idle_timeout`]; the connection is
    /// closed before the peer's idle timeout does it.
    Idle,
}

/// Writes `first`, then queued messages, to a connected peer until the connection
/// breaks (`Err`), the queue closes or nothing is sent for a while (`Ok`). The peer
/// never sends on this connection; reading only notices when it closes.
async fn write_loop(
    shared: &Shared,
    peer: NodeId,
    mut reader: FramedRead<OwnedReadHalf, FrameCodec>,
    mut writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    queue: &mut mpsc::Receiver<Message>,
    first: Option<Message>,
) -> Result<WriterEnd, TcpError> {
    let write_timeout = shared.config.write_timeout;
    if let Some(message) = first {
        let write = async {
            feed(shared, peer, &mut writer, &message).await?;
            writer.flush().await
        };
        timeout(write_timeout, write)
            .await
            .map_err(|_| TcpError::WriteTimeout)??;
    }
    let idle_after = shared.config.peer_idle_timeout / 2;
    let idle = sleep(idle_after);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            biased;
            frame = reader.next() => {
                return match frame {
                    None => Err(TcpError::Closed),
                    Some(Err(e)) => Err(e),
                    Some(Ok(_)) => Err(TcpError::Protocol("peer sent a frame on an outbound connection")),
                };
            }
            message = queue.recv() => {
                let Some(message) = message else { return Ok(WriterEnd::QueueClosed) };
                let batch = async {
                    feed(shared, peer, &mut writer, &message).await?;
                    let mut n = 1;
                    while n < MAX_WRITE_BATCH && writer.write_buffer().len() < WRITE_BUFFER_HIGH {
                        let Ok(message) = queue.try_recv() else { break };
                        feed(shared, peer, &mut writer, &message).await?;
                        n += 1;
                    }
                    writer.flush().await
                };
                timeout(write_timeout, batch).await.map_err(|_| TcpError::WriteTimeout)??;
                idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
            }
            () = &mut idle => return Ok(WriterEnd::Idle),
        }
    }
}

/// Encodes one message into the writer's buffer; a message that cannot be encoded or
/// does not fit in a frame is dropped with a warning.
async fn feed(
    shared: &Shared,
    peer: NodeId,
    writer: &mut FramedWrite<OwnedWriteHalf, FrameCodec>,
    message: &Message,
) -> Result<(), TcpError> {
    let frame = match wire::encode_message(message) {
        Ok(frame) if frame.len() <= shared.config.max_frame_size => frame,
        Ok(frame) => {
            shared.dropped(1);
            warn!(
                peer,
                kind = message.kind(),
                len = frame.len(),
                max = shared.config.max_frame_size,
                "message larger than the frame limit; dropped"
            );
            return Ok(());
        }
        Err(e) => {
            shared.dropped(1);
            warn!(peer, kind = message.kind(), error = %e, "cannot encode message; dropped");
            return Ok(());
        }
    };
    writer.feed(frame).await
}
