//! Pipelined client connections for [`RemoteNode`](crate::RemoteNode): many calls in
//! flight on one connection, and a bounded pool of such connections per node.
//!
//! # One connection
//!
//! A [`NodeServer`](crate::NodeServer)'s client connection already takes pipelined
//! requests (up to [`TcpConfig::max_client_inflight`](crate::TcpConfig::max_client_inflight)
//! at once) and answers them in request order, each response frame carrying the call
//! id of the request it answers. A pipelined connection is two tasks around the framed
//! socket ([`ClientCodec`](crate::codec::ClientCodec), split in halves):
//!
//! - the **writer** takes calls from a bounded queue, numbers them (1, 2, … per
//!   connection), records each in the connection's FIFO of outstanding calls *before*
//!   writing its frame, feeds a batch of frames and flushes once;
//! - the **reader** reads response frames and hands each to the oldest outstanding
//!   call, which must carry the response's call id. Any other id is a protocol
//!   violation that closes the connection: an answer is never handed to a call other
//!   than the one that sent its request.
//!
//! A call whose caller gave up (timeout, future dropped) stays in the FIFO, and keeps
//! its slot, until its answer arrives; the answer is then read and discarded. So a
//! cancelled call never shifts later answers onto the wrong callers, and a connection
//! never has more calls outstanding than the server counts. A call cancelled before
//! the writer took it is not sent at all.
//!
//! A connection fails as a whole: end of stream, an I/O error, a malformed or
//! out-of-order frame, or its oldest call unanswered for longer than the stall limit
//! (the server answers every call within its own time limits, so a connection that
//! does not is dead or wedged). Every call in flight on it then fails with the error,
//! both tasks end, and the pool opens a new connection for later calls.
//!
//! # The pool
//!
//! A [`Pool`] holds at most `max_connections` connections to one node, each with at
//! most `max_inflight` calls in flight. A call takes a slot on an idle connection if
//! there is one; otherwise it opens a new connection while the pool has fewer than
//! `max_connections` (open or still closing); otherwise it takes the least loaded
//! connection with a free slot. So calls spread over the connections. With every slot
//! taken, callers wait in line for one, first come first served (a fair semaphore with
//! a permit per slot of `max_connections` full connections, which a call holds with
//! its slot). The queues are all bounded: a connection's writer queue and its FIFO by
//! `max_inflight`, and the callers waiting for a slot by the callers themselves (each
//! waits in its own future, within its own time limit).
//!
//! Dropping the pool (with its [`RemoteNode`](crate::RemoteNode)) closes the writer
//! queues: each writer ends, which ends its reader and closes the socket. Tasks hold no
//! reference to the pool that would keep them alive.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use paxos_core::NodeId;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::client;
use crate::config::ClientConfig;
use crate::error::TcpError;
use crate::wire::{self, ClientConn, ClientFrame};

/// What a call's caller is told: the server's answer, or why there is none.
type Answer = Result<Bytes, TcpError>;

/// How a [`Pool`] connects and how much it carries.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    /// The node's id, which every connection's handshake must give.
    pub(crate) node: NodeId,
    /// The node's address.
    pub(crate) addr: SocketAddr,
    /// Cluster id, connect and handshake timeouts, frame limit.
    pub(crate) client: ClientConfig,
    /// The most connections open (or closing) at once.
    pub(crate) max_connections: usize,
    /// The most calls in flight on one connection.
    pub(crate) max_inflight: usize,
    /// How long a connection's oldest call may go unanswered before the connection is
    /// declared dead.
    pub(crate) stall_limit: Duration,
    /// Test only: the reader hands each response to the oldest call whose caller still
    /// waits, whatever its call id (the classic bug of forgetting cancelled calls).
    #[cfg(test)]
    pub(crate) broken_matching: bool,
}

/// Why a [`Pool`] could not give a call a connection.
#[derive(Debug)]
pub(crate) enum AcquireError {
    /// Connecting or the handshake failed.
    Tcp(TcpError),
    /// The address answered as another node (whose id this is).
    WrongNode(NodeId),
}

/// A node's pipelined connections.
pub(crate) struct Pool {
    config: PoolConfig,
    /// A permit per slot of `max_connections` full connections: callers queue here, in
    /// order, when every slot is taken.
    gate: Arc<Semaphore>,
    /// The connections calls may use. Closed ones are pruned when a call looks.
    conns: Mutex<Vec<Arc<Conn>>>,
    shared: Arc<PoolShared>,
}

/// What the pool shares with its connections' tasks and slots. Holds nothing that
/// keeps a task alive.
#[derive(Default)]
struct PoolShared {
    /// Connections being opened, open, or closing (their tasks not yet ended).
    open: AtomicUsize,
    /// Told when a call slot frees (one waiter) or a connection opens or ends (all).
    freed: Notify,
    /// Responses read for calls whose callers had given up.
    discarded: AtomicU64,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.config.addr)
            .field("open", &self.shared.open.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a call may do next.
enum Choice {
    Use(Lease),
    Open(Ticket),
    Wait,
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Self {
        Pool {
            gate: Arc::new(Semaphore::new(
                config
                    .max_connections
                    .saturating_mul(config.max_inflight)
                    .min(Semaphore::MAX_PERMITS),
            )),
            config,
            conns: Mutex::new(Vec::new()),
            shared: Arc::new(PoolShared::default()),
        }
    }

    /// A slot for one call on one of the node's connections, opening a connection if
    /// the pool has room for one and none is idle, or waiting for a slot to free.
    /// Cancel-safe: a slot or a connection being opened is given back when the
    /// returned future is dropped.
    pub(crate) async fn acquire(&self) -> Result<Lease, AcquireError> {
        // First in line for the pool's capacity (the gate is fair, and never closed):
        // with every slot taken, callers get them in the order they asked.
        let Ok(gate) = self.gate.clone().acquire_owned().await else {
            return Err(AcquireError::Tcp(TcpError::Closed));
        };
        let mut gate = Some(gate);
        loop {
            // Registered before looking, so a connection that opens or ends (or a slot
            // freed) meanwhile is not missed.
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.choose(&mut gate) {
                Choice::Use(lease) => return Ok(lease),
                Choice::Open(ticket) => {
                    let gate = gate.take().ok_or(AcquireError::Tcp(TcpError::Closed))?;
                    return self.dial(ticket, gate).await;
                }
                Choice::Wait => freed.await,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots are reserved, and connections counted, only under the lock: releases only
    /// lower the counts, so a count seen below its limit stays below it until reserved.
    ///
    /// A caller holding a gate permit waits here only while a connection is being
    /// opened or is closing: the gate has a permit per slot of `max_connections` full
    /// connections, so with every live connection full, fewer than `max_connections`
    /// are live.
    fn choose(&self, gate: &mut Option<OwnedSemaphorePermit>) -> Choice {
        let mut conns = self.lock();
        conns.retain(|c| !c.state.is_closed.load(Ordering::Acquire));
        let least = conns.iter().min_by_key(|c| c.state.load());
        if let Some(c) = least.filter(|c| c.state.load() == 0) {
            return Choice::Use(self.reserve(c, gate, false));
        }
        if self.shared.open.load(Ordering::Acquire) < self.config.max_connections {
            self.shared.open.fetch_add(1, Ordering::AcqRel);
            return Choice::Open(Ticket(self.shared.clone()));
        }
        match least {
            Some(c) if c.state.load() < self.config.max_inflight => {
                Choice::Use(self.reserve(c, gate, false))
            }
            _ => Choice::Wait,
        }
    }

    /// Takes a slot on `conn` for a caller that holds `gate` (which the slot keeps).
    fn reserve(
        &self,
        conn: &Arc<Conn>,
        gate: &mut Option<OwnedSemaphorePermit>,
        fresh: bool,
    ) -> Lease {
        conn.state.inflight.fetch_add(1, Ordering::AcqRel);
        Lease {
            conn: conn.clone(),
            slot: Slot {
                conn: conn.state.clone(),
                pool: self.shared.clone(),
                _gate: gate.take(),
            },
            fresh,
        }
    }

    /// Opens a connection (counted by `ticket`), checks who answers, starts its tasks
    /// and takes its first slot.
    async fn dial(
        &self,
        ticket: Ticket,
        gate: OwnedSemaphorePermit,
    ) -> Result<Lease, AcquireError> {
        let c = &self.config;
        let (framed, server) = client::open(c.addr, &c.client)
            .await
            .map_err(AcquireError::Tcp)?;
        if server != c.node {
            // Dropped with the ticket: never pooled, never used.
            return Err(AcquireError::WrongNode(server));
        }
        let conn = Conn::start(framed, server, ticket, &self.shared, c);
        let lease = self.reserve(&conn, &mut Some(gate), true);
        self.lock().push(conn);
        // Room for more calls: every waiter looks again.
        self.shared.freed.notify_waiters();
        Ok(lease)
    }

    /// Responses read and discarded because their callers had given up.
    #[cfg(test)]
    pub(crate) fn discarded_responses(&self) -> u64 {
        self.shared.discarded.load(Ordering::Relaxed)
    }

    /// Connections being opened, open, or closing.
    #[cfg(test)]
    pub(crate) fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Calls in flight on each pooled connection (closed ones included until pruned).
    #[cfg(test)]
    pub(crate) fn loads(&self) -> Vec<usize> {
        self.lock().iter().map(|c| c.state.load()).collect()
    }
}

/// A connection of the pool being opened, open or closing: one of
/// [`PoolConfig::max_connections`]. Given back when dropped; a connection's two tasks
/// share it, so it is given back once both have ended (and dropped their halves of the
/// socket).
struct Ticket(Arc<PoolShared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        // A waiter may open a connection now.
        self.0.freed.notify_waiters();
    }
}

/// One call's place on a connection, from the moment a caller reserves it until the
/// call's answer is read (or the connection fails): what the server counts against its
/// per-connection limit.
struct Slot {
    conn: Arc<ConnState>,
    pool: Arc<PoolShared>,
    /// The caller's place in the pool's capacity, given back after the slot (fields
    /// drop after `drop` runs), so the next caller in line finds the slot free.
    _gate: Option<OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conn.inflight.fetch_sub(1, Ordering::AcqRel);
        self.pool.freed.notify_one();
    }
}

/// A reserved slot on a connection, for one call.
pub(crate) struct Lease {
    conn: Arc<Conn>,
    slot: Slot,
    fresh: bool,
}

impl Lease {
    /// The id the connection's handshake gave.
    pub(crate) fn server(&self) -> NodeId {
        self.conn.server
    }

    /// True when the connection was opened for this call (it carried no call before).
    pub(crate) fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// Sends `request` and waits for its answer. Cancel-safe: dropped before the
    /// writer takes the call, the request is not sent; dropped later, its answer is
    /// read and discarded when it comes.
    pub(crate) async fn call(self, request: Bytes) -> Answer {
        let max = self.conn.max_frame;
        let len = request.len().saturating_add(wire::CALL_ID_LEN);
        if len > max {
            // Refused here: the writer could not encode it, and a frame the server
            // refuses would close the connection under every call on it.
            return Err(TcpError::FrameTooLarge {
                len: len as u64,
                max,
            });
        }
        let (reply, answer) = oneshot::channel();
        let call = Outgoing {
            request,
            reply,
            slot: self.slot,
        };
        // Never waits: the queue holds at most one call per slot.
        if self.conn.tx.send(call).await.is_err() {
            return Err(TcpError::Closed);
        }
        drop(self.conn);
        // Without an answer, the connection ended before the call was written.
        answer.await.unwrap_or(Err(TcpError::Closed))
    }
}

/// The handle of one pipelined connection: its writer's queue.
struct Conn {
    tx: mpsc::Sender<Outgoing>,
    state: Arc<ConnState>,
    server: NodeId,
    max_frame: usize,
}

/// A call on its way to the writer.
struct Outgoing {
    request: Bytes,
    reply: oneshot::Sender<Answer>,
    slot: Slot,
}

/// A call written (or being written), waiting for its answer.
struct Pending {
    call: u64,
    reply: oneshot::Sender<Answer>,
    sent: Instant,
    slot: Slot,
}

/// What a connection's tasks, its handle and its slots share.
struct ConnState {
    /// Calls reserved on it and not yet answered.
    inflight: AtomicUsize,
    /// Cancelled when the connection fails or its writer ends; both tasks then end.
    closed: CancellationToken,
    /// Set just before `closed` is cancelled: what the pool checks on every call,
    /// without the token's lock.
    is_closed: AtomicBool,
    /// The calls written, oldest first.
    fifo: Mutex<Fifo>,
    /// Told when a call joins an empty FIFO, so the reader arms its stall timer.
    armed: Notify,
    addr: SocketAddr,
}

#[derive(Default)]
struct Fifo {
    calls: VecDeque<Pending>,
    /// Set once the connection failed: no call joins it after that.
    failed: bool,
}

impl ConnState {
    fn load(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn fifo(&self) -> MutexGuard<'_, Fifo> {
        self.fifo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a call about to be written; gives it back if the connection has failed.
    fn push(&self, call: Pending) -> Result<(), Pending> {
        let mut fifo = self.fifo();
        if fifo.failed {
            return Err(call);
        }
        if fifo.calls.is_empty() {
            self.armed.notify_one();
        }
        fifo.calls.push_back(call);
        Ok(())
    }

    /// When the oldest outstanding call was written.
    fn oldest(&self) -> Option<Instant> {
        self.fifo().calls.front().map(|p| p.sent)
    }

    /// Takes the outstanding call that `call` answers: the oldest, if it carries that
    /// id. `None` means the response answers no call it may answer.
    fn answered(&self, call: u64, _broken: bool) -> Option<Pending> {
        let mut fifo = self.fifo();
        #[cfg(test)]
        if _broken {
            // Deliberately broken: the oldest call still waited for takes it.
            while let Some(p) = fifo.calls.pop_front() {
                if !p.reply.is_closed() {
                    return Some(p);
                }
            }
            return None;
        }
        match fifo.calls.front() {
            Some(p) if p.call == call => fifo.calls.pop_front(),
            _ => None,
        }
    }

    /// Closes the connection for good and fails every call in flight with `error`
    /// (the first failure wins; later ones find nothing left).
    fn fail(&self, error: TcpError) {
        let calls = {
            let mut fifo = self.fifo();
            fifo.failed = true;
            std::mem::take(&mut fifo.calls)
        };
        self.is_closed.store(true, Ordering::Release);
        self.closed.cancel();
        if !calls.is_empty() {
            debug!(
                addr = %self.addr,
                %error,
                in_flight = calls.len(),
                "pipelined connection failed; failing its calls in flight"
            );
        }
        for Pending { reply, slot, .. } in calls {
            drop(slot);
            let _ = reply.send(Err(replicate(&error)));
        }
    }
}

impl Conn {
    /// Splits the connection between a writer task and a reader task.
    fn start(
        framed: ClientConn<TcpStream>,
        server: NodeId,
        ticket: Ticket,
        pool: &Arc<PoolShared>,
        config: &PoolConfig,
    ) -> Arc<Conn> {
        let state = Arc::new(ConnState {
            inflight: AtomicUsize::new(0),
            closed: CancellationToken::new(),
            is_closed: AtomicBool::new(false),
            fifo: Mutex::new(Fifo::default()),
            armed: Notify::new(),
            addr: config.addr,
        });
        let (tx, rx) = mpsc::channel(config.max_inflight);
        let (sink, stream) = framed.split();
        let ticket = Arc::new(ticket);
        tokio::spawn(write_task(
            sink,
            rx,
            FailOnDrop(state.clone()),
            ticket.clone(),
        ));
        #[cfg(test)]
        let broken = config.broken_matching;
        #[cfg(not(test))]
        let broken = false;
        let reader = Reader {
            state: FailOnDrop(state.clone()),
            pool: pool.clone(),
            stall_limit: config.stall_limit,
            broken,
        };
        tokio::spawn(reader.run(stream, ticket));
        debug!(addr = %config.addr, node = server, "pipelined connection open");
        Arc::new(Conn {
            tx,
            state,
            server,
            max_frame: config.client.max_frame_size,
        })
    }
}

/// A connection's state, held by each of its tasks: failed when dropped, so that a task
/// dropped without running to its end (its runtime shut down) leaves no connection
/// the pool would still hand out, and no call holding its slot (and its place in the
/// pool's capacity) for ever.
struct FailOnDrop(Arc<ConnState>);

impl Drop for FailOnDrop {
    fn drop(&mut self) {
        self.0.fail(TcpError::Closed);
    }
}

impl std::ops::Deref for FailOnDrop {
    type Target = ConnState;

    fn deref(&self) -> &ConnState {
        &self.0
    }
}

/// Writes calls until the queue closes (the pool dropped this connection's handle) or
/// the connection fails.
async fn write_task(
    mut sink: SplitSink<ClientConn<TcpStream>, ClientFrame>,
    mut rx: mpsc::Receiver<Outgoing>,
    state: FailOnDrop,
    ticket: Arc<Ticket>,
) {
    let result = tokio::select! {
        result = write_calls(&mut sink, &mut rx, &state) => result,
        () = state.closed.cancelled() => Ok(()),
    };
    drop(sink);
    // Ending normally means no caller is left to use the connection.
    state.fail(result.err().unwrap_or(TcpError::Closed));
    // Calls still queued are dropped: their callers hear that the connection closed.
    drop(rx);
    drop(ticket);
}

async fn write_calls(
    sink: &mut SplitSink<ClientConn<TcpStream>, ClientFrame>,
    rx: &mut mpsc::Receiver<Outgoing>,
    state: &ConnState,
) -> Result<(), TcpError> {
    let mut last: u64 = 0;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(Outgoing {
            request,
            reply,
            slot,
        }) = next.take()
        {
            // A caller that gave up before its call was written: nothing to send.
            if !reply.is_closed() {
                last += 1;
                let pending = Pending {
                    call: last,
                    reply,
                    sent: Instant::now(),
                    slot,
                };
                // In the FIFO before its frame is written, so its answer finds it.
                if let Err(p) = state.push(pending) {
                    let _ = p.reply.send(Err(TcpError::Closed));
                    return Err(TcpError::Closed);
                }
                sink.feed(ClientFrame::request(last, request)).await?;
            }
            next = rx.try_recv().ok();
        }
        sink.flush().await?;
    }
    Ok(())
}

/// The reading half of a connection.
struct Reader {
    state: FailOnDrop,
    pool: Arc<PoolShared>,
    stall_limit: Duration,
    broken: bool,
}

impl Reader {
    async fn run(self, stream: SplitStream<ClientConn<TcpStream>>, ticket: Arc<Ticket>) {
        let error = self.read(stream).await;
        self.state.fail(error);
        drop(ticket);
    }

    /// Reads answers until the connection fails; returns why.
    async fn read(&self, mut stream: SplitStream<ClientConn<TcpStream>>) -> TcpError {
        let state = &self.state;
        let stall = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(stall);
        loop {
            let oldest = state.oldest();
            // A limit too far to count is no limit.
            let deadline = oldest.and_then(|sent| sent.checked_add(self.stall_limit));
            if let Some(deadline) = deadline {
                stall.as_mut().reset(deadline);
            }
            tokio::select! {
                biased;
                () = state.closed.cancelled() => return TcpError::Closed,
                frame = stream.next() => {
                    let frame = match frame {
                        None => return TcpError::Closed,
                        Some(Err(e)) => return e,
                        Some(Ok(frame)) => frame,
                    };
                    if let Err(e) = self.deliver(frame) {
                        return e;
                    }
                }
                () = state.armed.notified(), if oldest.is_none() => {}
                () = &mut stall, if deadline.is_some() => {
                    debug!(
                        addr = %state.addr,
                        limit = ?self.stall_limit,
                        "no answer to the oldest call on a pipelined connection; closing it"
                    );
                    return TcpError::CallTimeout;
                }
            }
        }
    }

    /// Hands a response frame to the call it answers.
    fn deliver(&self, frame: bytes::BytesMut) -> Result<(), TcpError> {
        let (call, answer) = wire::decode_response(frame)?;
        let Some(pending) = self.state.answered(call, self.broken) else {
            return Err(TcpError::Protocol(
                "a response that does not answer the oldest outstanding call",
            ));
        };
        let Pending { reply, slot, .. } = pending;
        // Freed first, so that a caller who calls again at once finds it free.
        drop(slot);
        if reply.send(answer).is_err() {
            self.pool.discarded.fetch_add(1, Ordering::Relaxed);
            debug!(
                addr = %self.state.addr,
                call,
                "discarding a response whose caller gave up"
            );
        }
        Ok(())
    }
}

/// A copy of a connection's error for each call that fails with it.
fn replicate(error: &TcpError) -> TcpError {
    match error {
        TcpError::Io(e) => TcpError::Io(io::Error::new(e.kind(), e.to_string())),
        TcpError::Closed => TcpError::Closed,
        TcpError::CallTimeout => TcpError::CallTimeout,
        TcpError::WriteTimeout => TcpError::WriteTimeout,
        TcpError::TruncatedFrame => TcpError::TruncatedFrame,
        TcpError::FrameTooLarge { len, max } => TcpError::FrameTooLarge {
            len: *len,
            max: *max,
        },
        TcpError::Malformed(m) => TcpError::Malformed(m.clone()),
        TcpError::Protocol(m) => TcpError::Protocol(m),
        TcpError::Encode(m) => TcpError::Encode(m.clone()),
        other => TcpError::Malformed(other.to_string()),
    }
}
