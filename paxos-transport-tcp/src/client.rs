//! Client connections: the server side (calls handed to the application) and
//! [`TcpClient`].

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, Stream, StreamExt};
use paxos_core::NodeId;
use socket2::SockRef;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, warn};

use crate::config::ClientConfig;
use crate::error::TcpError;
use crate::wire::{self, Conn, Hello, Outcome, Role};

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
    /// A response larger than the server's frame limit (less one byte) is not sent; the
    /// client gets [`TcpError::ResponseTooLarge`] instead.
    pub fn respond(self, response: Bytes) -> bool {
        self.tx.send(response).is_ok()
    }

    /// True when the client's connection has closed, so the answer would be dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A response the connection is waiting for, in request order.
enum PendingReply {
    Waiting(oneshot::Receiver<Bytes>),
    Ready(Option<Outcome>),
}

impl Future for PendingReply {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        match self.get_mut() {
            PendingReply::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| match r {
                Ok(bytes) => Outcome::Ok(bytes),
                Err(_) => Outcome::NoResponse,
            }),
            PendingReply::Ready(outcome) => {
                Poll::Ready(outcome.take().unwrap_or(Outcome::NoResponse))
            }
        }
    }
}

/// Serves a client connection after its handshake: requests are handed to the
/// application in order, responses go back in the same order. Up to `max_inflight`
/// requests may be outstanding.
pub(crate) async fn serve_client(
    mut conn: Conn<TcpStream>,
    remote: SocketAddr,
    calls: mpsc::Sender<ClientCall>,
    max_inflight: usize,
) -> Result<(), TcpError> {
    let max_frame = conn.codec().max_frame_size();
    let mut pending: FuturesOrdered<PendingReply> = FuturesOrdered::new();
    let mut reading = true;
    loop {
        if !reading && pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            frame = conn.next(), if reading && pending.len() < max_inflight => {
                match frame {
                    None => reading = false,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(request)) => {
                        let (tx, rx) = oneshot::channel();
                        let call = ClientCall {
                            request: request.freeze(),
                            remote,
                            responder: Responder { tx },
                        };
                        let reply = match calls.try_send(call) {
                            Ok(()) => PendingReply::Waiting(rx),
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                debug!(%remote, "client request queue full; answering busy");
                                PendingReply::Ready(Some(Outcome::Busy))
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                PendingReply::Ready(Some(Outcome::NoResponse))
                            }
                        };
                        pending.push_back(reply);
                    }
                }
            }
            Some(outcome) = pending.next(), if !pending.is_empty() => {
                write_outcome(&mut conn, remote, outcome, max_frame).await?;
                while let Some(Some(outcome)) = pending.next().now_or_never() {
                    write_outcome(&mut conn, remote, outcome, max_frame).await?;
                }
                conn.flush().await?;
            }
            else => return Ok(()),
        }
    }
}

async fn write_outcome(
    conn: &mut Conn<TcpStream>,
    remote: SocketAddr,
    outcome: Outcome,
    max_frame: usize,
) -> Result<(), TcpError> {
    let (frame, too_large) = wire::encode_outcome(outcome, max_frame);
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
    conn: Option<Conn<TcpStream>>,
    server: NodeId,
}

impl TcpClient {
    /// Connects to the node at `addr` and runs the handshake.
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<TcpClient, TcpError> {
        config.validate()?;
        let (conn, server) = open(addr, &config).await?;
        Ok(TcpClient {
            addr,
            config,
            conn: Some(conn),
            server,
        })
    }

    /// Sends `request` and waits for the response, within
    /// [`ClientConfig::call_timeout`] (reconnecting first if the previous connection was
    /// lost).
    ///
    /// [`TcpError::Busy`], [`TcpError::NoResponse`] and [`TcpError::ResponseTooLarge`]
    /// are answers from the server, which keep the connection; a request larger than
    /// [`ClientConfig::max_frame_size`] fails with [`TcpError::FrameTooLarge`] without
    /// being sent. Other errors drop the connection.
    pub async fn call(&mut self, request: Bytes) -> Result<Bytes, TcpError> {
        if request.len() > self.config.max_frame_size {
            return Err(TcpError::FrameTooLarge {
                len: request.len() as u64,
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

    async fn call_inner(&mut self, request: Bytes) -> Result<Bytes, TcpError> {
        // A connection the server already closed (idle timeout, restart) is replaced
        // before sending, rather than failing the call.
        if self.conn.as_ref().is_some_and(is_stale) {
            debug!(addr = %self.addr, "client connection was closed; reconnecting");
            self.conn = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let (conn, server) = open(self.addr, &self.config).await?;
                self.server = server;
                self.conn.insert(conn)
            }
        };
        conn.send(request).await?;
        match conn.next().await {
            None => Err(TcpError::Closed),
            Some(Err(e)) => Err(e),
            Some(Ok(frame)) => wire::decode_outcome(frame),
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
}

impl fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpClient")
            .field("addr", &self.addr)
            .field("server", &self.server)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

/// True when an idle connection can no longer carry a call: the server closed or reset
/// it, or sent something unasked. Peeks at the socket itself, since the runtime may not
/// have noticed yet.
fn is_stale(conn: &Conn<TcpStream>) -> bool {
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

/// Opens a client connection and runs the handshake.
async fn open(
    addr: SocketAddr,
    config: &ClientConfig,
) -> Result<(Conn<TcpStream>, NodeId), TcpError> {
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
    Ok((conn, server))
}
