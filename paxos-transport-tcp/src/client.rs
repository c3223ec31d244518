//! Client connections: the server side (calls handed to the application) and
//! [`TcpClient`].

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use paxos_core::NodeId;
use socket2::SockRef;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

#[cfg(test)]
use crate::config::Broken;
use crate::config::ClientConfig;
use crate::error::TcpError;
use crate::wire::{self, ClientConn, ClientFrame, Conn, Hello, Outcome, Role};

/// The client calls arriving at a node, for the application to answer.
///
/// Returned by [`TcpTransport::bind`](crate::TcpTransport::bind). The application takes
/// calls with [`recv`](Self::recv) (or as a [`Stream`]) and answers each through its
/// [`Responder`]. The queue is bounded by
/// [`TcpConfig::client_queue_capacity`](crate::TcpConfig::client_queue_capacity): a
/// request that finds it full is answered [`TcpError::Busy`] without reaching the
/// application. If this value is dropped, clients get [`TcpError::NoResponse`].
///
/// The stream ends when the transport shuts down.
pub struct ClientRequests {
    rx: mpsc::Receiver<ClientCall>,
}

impl ClientRequests {
    pub(crate) fn new(rx: mpsc::Receiver<ClientCall>) -> Self {
        ClientRequests { rx }
    }

    /// Waits for the next call; `None` once the transport has shut down.
    pub async fn recv(&mut self) -> Option<ClientCall> {
        self.rx.recv().await
    }

    /// Returns a call that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<ClientCall> {
        self.rx.try_recv().ok()
    }
}

impl Stream for ClientRequests {
    type Item = ClientCall;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ClientCall>> {
        self.rx.poll_recv(cx)
    }
}

impl fmt::Debug for ClientRequests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRequests")
            .field("queued", &self.rx.len())
            .finish()
    }
}

/// One request from a client, and the way to answer it.
///
/// The request is opaque bytes: the application defines (and decodes) its own request
/// type. Answer with [`respond`](Self::respond), or split the call with
/// [`into_parts`](Self::into_parts) to answer later from another task. A call dropped
/// without an answer is reported to the client as [`TcpError::NoResponse`].
#[derive(Debug)]
pub struct ClientCall {
    request: Bytes,
    remote: SocketAddr,
    responder: Responder,
}

impl ClientCall {
    /// The request bytes.
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// Answers the call. Returns `false` when the client is gone (the answer is dropped).
    pub fn respond(self, response: Bytes) -> bool {
        self.responder.respond(response)
    }

    /// Splits the call into its request and its responder.
    pub fn into_parts(self) -> (Bytes, Responder) {
        (self.request, self.responder)
    }
}

/// Answers one [`ClientCall`]. Dropping it unanswered tells the client
/// [`TcpError::NoResponse`].
#[derive(Debug)]
pub struct Responder {
    tx: oneshot::Sender<Bytes>,
}

impl Responder {
    /// Sends the response. Returns `false` when the client is gone.
    ///
    /// A response larger than the server's frame limit less 9 bytes (the response
    /// frame's call id and tag) is not sent; the client gets
    /// [`TcpError::ResponseTooLarge`] instead.
    pub fn respond(self, response: Bytes) -> bool {
        self.tx.send(response).is_ok()
    }

    /// True when the client's connection has closed, so the answer would be dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A response the connection is waiting for, in request order, with the call id it
/// answers.
struct PendingReply {
    call: u64,
    state: PendingState,
}

enum PendingState {
    Waiting(oneshot::Receiver<Bytes>),
    Ready(Option<Outcome>),
}

impl Future for PendingReply {
    type Output = (u64, Outcome);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(u64, Outcome)> {
        let this = self.get_mut();
        let outcome = match &mut this.state {
            PendingState::Waiting(rx) => ready!(Pin::new(rx).poll(cx))
                .map(Outcome::Ok)
                .unwrap_or(Outcome::NoResponse),
            PendingState::Ready(outcome) => outcome.take().unwrap_or(Outcome::NoResponse),
        };
        Poll::Ready((this.call, outcome))
    }
}

/// The limits a server applies to one client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientLimits {
    /// Requests that may be outstanding at once.
    pub(crate) max_inflight: usize,
    /// The largest response frame.
    pub(crate) max_response: usize,
    /// How long the connection may stay silent with nothing outstanding.
    pub(crate) idle_timeout: Duration,
    /// How long writing one response frame, or flushing, may take.
    pub(crate) write_timeout: Duration,
}

impl ClientLimits {
    /// The bound on each write to the client: the write timeout, or the idle timeout if
    /// shorter. A client that stops reading its responses is as idle as one that stops
    /// sending, and must not keep its connection (and its slot) for longer.
    fn write_limit(&self) -> Duration {
        self.write_timeout.min(self.idle_timeout)
    }
}

/// Serves a client connection after its handshake: requests are handed to the
/// application in order, responses go back in the same order, each carrying the call id
/// of the request it answers. Up to `limits.max_inflight` requests may be outstanding;
/// a connection with none outstanding that sends nothing for `limits.idle_timeout` is
/// closed, and so is one that does not take a response frame (or a flush) within
/// [`ClientLimits::write_limit`].
pub(crate) async fn serve_client(
    conn: Conn<TcpStream>,
    remote: SocketAddr,
    calls: mpsc::Sender<ClientCall>,
    limits: ClientLimits,
) -> Result<(), TcpError> {
    let max_frame = limits.max_response;
    let max_inflight = limits.max_inflight;
    let write_limit = limits.write_limit();
    let mut conn = wire::into_client(conn, max_frame);
    let mut pending: FuturesOrdered<PendingReply> = FuturesOrdered::new();
    let mut reading = true;
    let idle = tokio::time::sleep(limits.idle_timeout);
    tokio::pin!(idle);
    loop {
        if !reading && pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            () = &mut idle, if pending.is_empty() => {
                return Err(TcpError::IdleTimeout(limits.idle_timeout));
            }
            frame = conn.next(), if reading && pending.len() < max_inflight => {
                idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                match frame {
                    None => reading = false,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(frame)) => {
                        let (call, request) = wire::decode_request(frame)?;
                        let (tx, rx) = oneshot::channel();
                        let client_call = ClientCall {
                            request,
                            remote,
                            responder: Responder { tx },
                        };
                        let state = match calls.try_send(client_call) {
                            Ok(()) => PendingState::Waiting(rx),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                debug!(%remote, "client request queue full; answering busy");
                                PendingState::Ready(Some(Outcome::Busy))
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                PendingState::Ready(Some(Outcome::NoResponse))
                            }
                        };
                        pending.push_back(PendingReply { call, state });
                    }
                }
            }
            Some((call, outcome)) = pending.next(), if !pending.is_empty() => {
                // Every write is bounded: while one waits, nothing else on this
                // connection (reading, the idle timer) is polled.
                bounded(write_limit, write_outcome(&mut conn, remote, call, outcome, max_frame)).await?;
                while let Some(Some((call, outcome))) = pending.next().now_or_never() {
                    bounded(write_limit, write_outcome(&mut conn, remote, call, outcome, max_frame)).await?;
                }
                bounded(write_limit, conn.flush()).await?;
                idle.as_mut().reset(Instant::now() + limits.idle_timeout);
            }
            else => return Ok(()),
        }
    }
}

/// Runs one write to a client within `limit`; [`TcpError::WriteTimeout`] after it.
async fn bounded(
    limit: Duration,
    write: impl Future<Output = Result<(), TcpError>>,
) -> Result<(), TcpError> {
    timeout(limit, write)
        .await
        .map_err(|_| TcpError::WriteTimeout)?
}

async fn write_outcome(
    conn: &mut ClientConn<TcpStream>,
    remote: SocketAddr,
    call: u64,
    outcome: Outcome,
    max_frame: usize,
) -> Result<(), TcpError> {
    let (frame, too_large) = wire::encode_outcome(call, outcome, max_frame);
    if too_large {
        warn!(%remote, max_frame, "response does not fit in a frame; sending an error instead");
    }
    conn.feed(frame).await
}

/// A connection to a node's client port: sends opaque requests, returns their responses.
///
/// Requests are sent one at a time over one connection. When a call fails in a way
/// that leaves the connection unusable (timeout, close, protocol error), the client
/// drops it and the next call reconnects, so one `TcpClient` can outlive server
/// restarts. The client does not retry a failed call: whether the request was processed
/// is unknown, and only the application knows whether repeating it is safe.
///
/// # Matching responses to calls
///
/// Every request frame carries a call id (per connection, counting up from 1) that the
/// server echoes in its response frame. A call returns only the response whose id is
/// its own; any other response frame is discarded, traced at debug level and counted
/// ([`discarded_responses`](Self::discarded_responses)). A response can therefore never
/// be handed to a call other than the one that sent its request.
///
/// # Cancellation
///
/// [`call`](Self::call) is cancel-safe: its future may be dropped at any await point (an
/// outer timeout, a `select!`) and the client stays usable. A dropped call's request may
/// already be on its way, and the server may still execute it. On the next call, the
/// client reads the late answers that have already arrived and discards them; if every
/// call sent on the connection is then answered, the connection is reused. Otherwise
/// (an answer is still outstanding, or the connection is half-way through a frame) the
/// connection is closed and a new one opened, so a new call never waits behind a
/// request its caller gave up on, and a late answer can only ever arrive on a
/// connection nobody reads.
///
/// ```no_run
/// use bytes::Bytes;
/// use paxos_transport_tcp::{ClientConfig, TcpClient};
///
/// # async fn run() -> Result<(), paxos_transport_tcp::TcpError> {
/// let addr = "127.0.0.1:7001".parse().unwrap();
/// let mut client = TcpClient::connect(addr, ClientConfig::new(0xC0FFEE)).await?;
/// let response: Bytes = client.call(Bytes::from_static(b"balance alice")).await?;
/// # let _ = response; Ok(())
/// # }
/// ```
pub struct TcpClient {
    addr: SocketAddr,
    config: ClientConfig,
    conn: Option<CallConn>,
    server: NodeId,
    discarded: u64,
}

/// A client connection and the calls it carried.
struct CallConn {
    framed: ClientConn<TcpStream>,
    /// The id of the last call sent (or being sent) on this connection; 0 before the
    /// first.
    sent: u64,
    /// The highest call id whose answer has been read (returned or discarded).
    answered: u64,
}

impl CallConn {
    fn new(framed: ClientConn<TcpStream>) -> Self {
        CallConn {
            framed,
            sent: 0,
            answered: 0,
        }
    }

    /// Makes the connection ready for a new call, without waiting: reads and discards
    /// the answers of cancelled calls that have already arrived, then checks that every
    /// call sent has been answered and nothing else waits on the socket. False means the
    /// connection must be replaced.
    fn settle(&mut self, addr: SocketAddr, discarded: &mut u64) -> bool {
        while self.answered < self.sent {
            // Polled once: a frame that is not fully here yet counts as outstanding.
            let frame = match self.framed.next().now_or_never() {
                Some(Some(Ok(frame))) => frame,
                // Not arrived yet, closed, or broken.
                _ => return false,
            };
            match wire::decode_response(frame) {
                Ok((call, _)) => {
                    self.discard(addr, call, discarded);
                }
                Err(_) => return false,
            }
        }
        !is_stale(&self.framed)
    }

    /// Discards a response frame that answers `call`, which nobody waits for.
    fn discard(&mut self, addr: SocketAddr, call: u64, discarded: &mut u64) {
        *discarded += 1;
        let late = call > self.answered && call <= self.sent;
        if late {
            self.answered = call;
        }
        debug!(
            %addr,
            call,
            last_sent = self.sent,
            late,
            "discarding a response that answers no waiting call"
        );
    }
}

impl TcpClient {
    /// Connects to the node at `addr` and runs the handshake.
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<TcpClient, TcpError> {
        config.validate()?;
        let (conn, server) = open(addr, &config).await?;
        Ok(TcpClient {
            addr,
            config,
            conn: Some(CallConn::new(conn)),
            server,
            discarded: 0,
        })
    }

    /// Sends `request` and waits for the response, within
    /// [`ClientConfig::call_timeout`] (reconnecting first if the previous connection was
    /// lost, or if a cancelled call left it with an answer outstanding).
    ///
    /// [`TcpError::Busy`], [`TcpError::NoResponse`] and [`TcpError::ResponseTooLarge`]
    /// are answers from the server, which keep the connection; a request that does not
    /// fit in a frame of [`ClientConfig::max_frame_size`] with its 8-byte call id fails
    /// with [`TcpError::FrameTooLarge`] without being sent. Other errors drop the
    /// connection. Dropping the returned future is safe (see [Cancellation](Self#cancellation)).
    pub async fn call(&mut self, request: Bytes) -> Result<Bytes, TcpError> {
        let frame_len = request.len().saturating_add(wire::CALL_ID_LEN);
        if frame_len > self.config.max_frame_size {
            return Err(TcpError::FrameTooLarge {
                len: frame_len as u64,
                max: self.config.max_frame_size,
            });
        }
        let result = match timeout(self.config.call_timeout, self.call_inner(request)).await {
            Ok(result) => result,
            Err(_) => Err(TcpError::CallTimeout),
        };
        if let Err(e) = &result {
            if !matches!(
                e,
                TcpError::Busy | TcpError::NoResponse | TcpError::ResponseTooLarge
            ) {
                self.conn = None;
            }
        }
        result
    }

    /// The call itself. Every await point leaves `self` consistent: a call id is counted
    /// as sent before its frame is written, and as answered as soon as its response
    /// frame is read, so a cancelled call is seen by the next one's [`CallConn::settle`].
    async fn call_inner(&mut self, request: Bytes) -> Result<Bytes, TcpError> {
        // A connection the server already closed (idle timeout, restart), or that a
        // cancelled call left waiting for an answer, is replaced before sending.
        if let Some(conn) = &mut self.conn {
            let settled = conn.settle(self.addr, &mut self.discarded);
            // Deliberately broken (tests only): the client before call ids reused every
            // connection the server had not closed.
            #[cfg(test)]
            let settled = settled
                || (self.config.is_broken(Broken::ReuseWithAnswerOutstanding)
                    && !is_stale(&conn.framed));
            if !settled {
                debug!(
                    addr = %self.addr,
                    outstanding = conn.sent - conn.answered,
                    "client connection cannot carry a new call; reconnecting"
                );
                self.conn = None;
            }
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let (conn, server) = open(self.addr, &self.config).await?;
                self.server = server;
                self.conn.insert(CallConn::new(conn))
            }
        };
        let call = conn.sent + 1;
        conn.sent = call;
        conn.framed
            .send(ClientFrame::request(call, request))
            .await?;
        loop {
            let frame = match conn.framed.next().await {
                None => return Err(TcpError::Closed),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => frame,
            };
            let (answers, answer) = wire::decode_response(frame)?;
            // Deliberately broken (tests only): any response answers the call.
            #[cfg(test)]
            if self.config.is_broken(Broken::AnyAnswer) {
                conn.answered = call;
                return answer;
            }
            if answers == call {
                conn.answered = call;
                return answer;
            }
            conn.discard(self.addr, answers, &mut self.discarded);
        }
    }

    /// The id of the node this client talks to, as its handshake said.
    pub fn server_node_id(&self) -> NodeId {
        self.server
    }

    /// The address this client connects to.
    pub fn server_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many response frames this client has discarded because they answered no
    /// waiting call: the late answers of cancelled calls, or frames a faulty server sent
    /// with a wrong call id.
    pub fn discarded_responses(&self) -> u64 {
        self.discarded
    }
}

impl fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpClient")
            .field("addr", &self.addr)
            .field("server", &self.server)
            .field("connected", &self.conn.is_some())
            .field("discarded", &self.discarded)
            .finish()
    }
}

/// True when an idle connection can no longer carry a call: the server closed or reset
/// it, or sent something unasked. Peeks at the socket itself, since the runtime may not
/// have noticed yet.
fn is_stale(conn: &ClientConn<TcpStream>) -> bool {
    if !conn.read_buffer().is_empty() {
        return true;
    }
    let mut probe = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(conn.get_ref()).peek(&mut probe) {
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        // End of stream, or bytes nobody asked for.
        Ok(_) => true,
    }
}

/// Opens a client connection and runs the handshake. Returns the connection, with the
/// frame limit of `config` both ways, and the node id the server's handshake gave.
pub(crate) async fn open(
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<(ClientConn<TcpStream>, NodeId), TcpError> {
    let hello = Hello {
        cluster_id: config.cluster_id,
        role: Role::Client,
    };
    let (mut conn, server) = wire::connect(
        addr,
        &hello,
        config.connect_timeout,
        config.handshake_timeout,
    )
    .await?;
    conn.codec_mut().set_max_frame_size(config.max_frame_size);
    Ok((wire::into_client(conn, config.max_frame_size), server))
}
