//! What travels inside the frames: handshakes, peer messages, client requests and
//! responses.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use paxos_core::{Message, NodeId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

use crate::codec::{ClientCodec, FrameCodec};
use crate::error::TcpError;

/// The version of the wire protocol this crate speaks. Both ends of a connection must
/// speak the same version; the handshake refuses a mismatch.
///
/// Version 2 opens every client request and response frame with a call id, which the
/// server echoes and the client checks (version 1 had none). Version 3 adds the
/// read-index messages (`ReadIndex`, `ReadIndexAck`) and the envelopes of the generic
/// client path (`NodeRequest`, `NodeResponse`). Version 4 transfers snapshots in pieces
/// (`SnapshotChunk`, `SnapshotRequest`), so that a state larger than
/// [`TcpConfig::max_frame_size`](crate::TcpConfig::max_frame_size) can reach a replica
/// that fell behind; a version-3 node would not understand them. Version 5 adds
/// `Commit`, the unacknowledged commit-point announcement, and the clock entries of
/// session expiry (`Value::Clock`) to the log values that ACCEPT, NEW-VIEW, PROMISE and
/// FETCH-REPLY carry and that log inspection returns; a version-4 node could decode
/// neither. Version 6 adds batches of requests in one slot (`Value::Batch`) and the
/// chained clock steps of session expiry (`Value::ClockStep`) to the same log values.
/// Version 7 adds membership changes: the stop-sign value (`Value::Reconfigure`) in
/// those log values, and the `Members` and `Reconfigure` client calls. Version 8 adds
/// the address a node listens on to its handshake, so that a node the acceptor does
/// not know yet (one about to be added) can copy the log as a learner.
pub const PROTOCOL_VERSION: u16 = 8;

/// The first bytes of every handshake frame.
pub(crate) const MAGIC: [u8; 4] = *b"PXTC";

/// The limit on frames before the handshake completes, so that an unauthenticated
/// connection cannot make a node buffer a large frame.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 1024;

/// Longest rejection reason sent to a remote.
const MAX_REASON_LEN: usize = 256;

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Role {
    /// A node, with its id and the address it listens on; it will send [`Message`]s.
    /// A node the acceptor does not know may join as a learner, within
    /// [`TcpConfig::max_joining_nodes`](crate::TcpConfig::max_joining_nodes): the
    /// acceptor then dials it back at `listen`.
    Peer {
        /// The node's id.
        id: NodeId,
        /// Where the node accepts connections (an unspecified IP stands for the
        /// connection's source address).
        listen: SocketAddr,
    },
    /// A client; it will send requests and wait for responses.
    Client,
}

/// The body of the connector's handshake frame (after magic and version).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) cluster_id: u64,
    pub(crate) role: Role,
}

/// The body of the acceptor's answer to a [`Hello`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum HelloReply {
    /// The connection is accepted; the acceptor is `node_id` of `cluster_id`.
    Accepted { cluster_id: u64, node_id: NodeId },
    /// The connection is refused and will be closed.
    Rejected { reason: String },
}

/// Encodes a handshake frame: magic, version (big-endian `u16`), postcard body.
pub(crate) fn encode_handshake<T: Serialize>(version: u16, body: &T) -> Result<Bytes, TcpError> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    let out = postcard::to_extend(body, out).map_err(|e| TcpError::Encode(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Decodes a handshake frame, checking magic and version before the body.
pub(crate) fn decode_handshake<T: DeserializeOwned>(frame: &[u8]) -> Result<T, TcpError> {
    let Some((magic, rest)) = frame.split_first_chunk::<4>() else {
        return Err(TcpError::NotPaxos(sniff(frame)));
    };
    if *magic != MAGIC {
        return Err(TcpError::NotPaxos(sniff(frame)));
    }
    let Some((version, body)) = rest.split_first_chunk::<2>() else {
        return Err(TcpError::Malformed("handshake too short".into()));
    };
    let version = u16::from_be_bytes(*version);
    if version != PROTOCOL_VERSION {
        return Err(TcpError::VersionMismatch {
            remote: version,
            local: PROTOCOL_VERSION,
        });
    }
    decode_exact(body)
}

/// Decodes a postcard value that must fill `bytes` exactly.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TcpError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(TcpError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        ))),
        Err(e) => Err(TcpError::Malformed(e.to_string())),
    }
}

/// Encodes a peer message frame.
pub(crate) fn encode_message(message: &Message) -> Result<Bytes, TcpError> {
    postcard::to_stdvec(message)
        .map(Bytes::from)
        .map_err(|e| TcpError::Encode(e.to_string()))
}

/// Decodes a peer message frame.
pub(crate) fn decode_message(frame: &[u8]) -> Result<Message, TcpError> {
    decode_exact(frame)
}

/// A guess at what a non-paxos connection is, for the log.
pub(crate) fn sniff(bytes: &[u8]) -> &'static str {
    const HTTP: [&[u8]; 10] = [
        b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC", b"PRI ",
    ];
    match bytes {
        [] => "no data",
        [0x16, 0x03, ..] => "looks like a TLS handshake",
        b if HTTP.iter().any(|m| b.starts_with(m)) => "looks like an HTTP request",
        b if b.starts_with(b"SSH-") => "looks like an SSH client",
        _ => "unrecognized bytes",
    }
}

/// Refines an error from reading the first frame of a connection using the bytes that
/// were buffered: a bad length prefix is usually some other protocol talking.
pub(crate) fn classify_first_frame_error(err: TcpError, buffered: &[u8]) -> TcpError {
    match err {
        TcpError::FrameTooLarge { .. } | TcpError::TruncatedFrame => match sniff(buffered) {
            "unrecognized bytes" | "no data" => err,
            what => TcpError::NotPaxos(what),
        },
        other => other,
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Idle time before TCP keepalive probes start on a connection.
const KEEPALIVE_TIME: Duration = Duration::from_secs(30);

/// Sets the socket options every connection uses: `TCP_NODELAY` (frames are flushed in
/// batches already, so Nagle only adds latency) and TCP keepalive (so a connection whose
/// remote vanished is noticed even when idle).
pub(crate) fn tune_socket(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE_TIME);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive.with_interval(Duration::from_secs(10));
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Bytes of the call id that opens every client frame: a big-endian `u64`.
pub(crate) const CALL_ID_LEN: usize = 8;

/// Bytes before the payload of a response frame: the call id and the tag.
pub(crate) const RESPONSE_HEAD_LEN: usize = CALL_ID_LEN + 1;

/// Client response tags: the byte after the call id in every response frame.
pub(crate) mod tag {
    /// The application's response follows.
    pub(crate) const OK: u8 = 0;
    /// The server's request queue was full.
    pub(crate) const BUSY: u8 = 1;
    /// The server dropped the request unanswered.
    pub(crate) const NO_RESPONSE: u8 = 2;
    /// The application's response did not fit in a frame.
    pub(crate) const TOO_LARGE: u8 = 3;
}

/// A client frame as it is written: the call id, a tag byte for responses (none for
/// requests), and the body. The codec writes the three after the length prefix without
/// joining them first, so the body is not copied an extra time.
#[derive(Debug)]
pub(crate) struct ClientFrame {
    pub(crate) call: u64,
    pub(crate) tag: Option<u8>,
    pub(crate) body: Bytes,
}

impl ClientFrame {
    /// A request frame: call id and request bytes.
    pub(crate) fn request(call: u64, body: Bytes) -> Self {
        ClientFrame {
            call,
            tag: None,
            body,
        }
    }

    /// The frame's length, without the length prefix.
    pub(crate) fn len(&self) -> usize {
        CALL_ID_LEN + usize::from(self.tag.is_some()) + self.body.len()
    }
}

/// Splits a request frame into its call id and the request bytes (no copy).
pub(crate) fn decode_request(mut frame: BytesMut) -> Result<(u64, Bytes), TcpError> {
    let Some(id) = frame.first_chunk::<CALL_ID_LEN>() else {
        return Err(TcpError::Malformed(
            "client request shorter than its call id".into(),
        ));
    };
    let id = u64::from_be_bytes(*id);
    frame.advance(CALL_ID_LEN);
    let request = frame.freeze();
    Ok((id, request))
}

/// The outcome of a client request, as the server reports it.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ok(Bytes),
    Busy,
    NoResponse,
}

/// The response frame answering call `call`; a response that does not fit in
/// `max_frame` becomes `TOO_LARGE` (the `bool` says so).
pub(crate) fn encode_outcome(call: u64, outcome: Outcome, max_frame: usize) -> (ClientFrame, bool) {
    let (tag, body, too_large) = match outcome {
        Outcome::Ok(b) if b.len() <= max_frame.saturating_sub(RESPONSE_HEAD_LEN) => {
            (tag::OK, b, false)
        }
        Outcome::Ok(_) => (tag::TOO_LARGE, Bytes::new(), true),
        Outcome::Busy => (tag::BUSY, Bytes::new(), false),
        Outcome::NoResponse => (tag::NO_RESPONSE, Bytes::new(), false),
    };
    let frame = ClientFrame {
        call,
        tag: Some(tag),
        body,
    };
    (frame, too_large)
}

/// Decodes a response frame into the call id it answers and the server's answer.
///
/// The outer error is a frame that is not a response (the connection is unusable); the
/// inner one is the server's answer that the call failed (busy, no response, too large).
pub(crate) fn decode_response(
    mut frame: BytesMut,
) -> Result<(u64, Result<Bytes, TcpError>), TcpError> {
    let head = frame
        .split_first_chunk::<CALL_ID_LEN>()
        .and_then(|(id, rest)| Some((u64::from_be_bytes(*id), *rest.first()?)));
    let Some((id, tag)) = head else {
        return Err(TcpError::Malformed(format!(
            "response of {} bytes is shorter than its head",
            frame.len()
        )));
    };
    let answer = match tag {
        tag::OK => {
            frame.advance(RESPONSE_HEAD_LEN);
            Ok(frame.freeze())
        }
        tag::BUSY => Err(TcpError::Busy),
        tag::NO_RESPONSE => Err(TcpError::NoResponse),
        tag::TOO_LARGE => Err(TcpError::ResponseTooLarge),
        other => return Err(TcpError::Malformed(format!("unknown response tag {other}"))),
    };
    Ok((id, answer))
}

/// A framed connection.
pub(crate) type Conn<S> = Framed<S, FrameCodec>;

/// A client connection after its handshake: frames carry call ids.
pub(crate) type ClientConn<S> = Framed<S, ClientCodec>;

/// Turns a connection whose handshake made it a client connection into one, keeping
/// whatever is already buffered. Frames written may be up to `max_out` bytes.
pub(crate) fn into_client<S: AsyncRead + AsyncWrite>(
    conn: Conn<S>,
    max_out: usize,
) -> ClientConn<S> {
    conn.map_codec(|codec| ClientCodec::new(codec, max_out))
}

/// Opens a TCP connection to `addr` within `connect_timeout`, tunes the socket, and runs
/// the connector's side of the handshake with `hello`. Returns the connection (still at
/// the handshake's frame limit) and the acceptor's node id.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    hello: &Hello,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<(Conn<TcpStream>, NodeId), TcpError> {
    let stream = timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TcpError::ConnectTimeout)??;
    tune_socket(&stream)?;
    let mut conn = Conn::new(stream, FrameCodec::new(HANDSHAKE_MAX_FRAME));
    let acceptor = connector_handshake(&mut conn, hello, handshake_timeout).await?;
    Ok((conn, acceptor))
}

/// Runs the connector's side of the handshake: sends `hello`, waits for the acceptor's
/// answer, checks it. Returns the acceptor's node id.
pub(crate) async fn connector_handshake<S>(
    conn: &mut Conn<S>,
    hello: &Hello,
    handshake_timeout: Duration,
) -> Result<NodeId, TcpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = encode_handshake(PROTOCOL_VERSION, hello)?;
    let exchange = async {
        conn.send(frame).await?;
        match conn.next().await {
            None => Err(TcpError::Closed),
            Some(Err(e)) => Err(e),
            Some(Ok(frame)) => decode_handshake::<HelloReply>(&frame),
        }
    };
    let reply = timeout(handshake_timeout, exchange)
        .await
        .map_err(|_| TcpError::HandshakeTimeout)??;
    match reply {
        HelloReply::Accepted {
            cluster_id,
            node_id,
        } => {
            if cluster_id != hello.cluster_id {
                return Err(TcpError::ClusterMismatch {
                    remote: cluster_id,
                    local: hello.cluster_id,
                });
            }
            Ok(node_id)
        }
        HelloReply::Rejected { reason } => Err(TcpError::Rejected(reason)),
    }
}

/// Runs the acceptor's side of the handshake: waits for a [`Hello`], checks it with
/// `check` (which may hand back a value, such as a connection slot, kept only when the
/// handshake succeeds), answers. On a refusal the remote is told why (best effort) and
/// the error is returned for the caller to log.
pub(crate) async fn acceptor_handshake<S, G>(
    conn: &mut Conn<S>,
    cluster_id: u64,
    node_id: NodeId,
    handshake_timeout: Duration,
    check: impl FnOnce(&Hello) -> Result<G, TcpError>,
) -> Result<(Role, G), TcpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let first = timeout(handshake_timeout, conn.next())
        .await
        .map_err(|_| TcpError::HandshakeTimeout)?;
    let frame = match first {
        None => return Err(TcpError::Closed),
        Some(Err(e)) => return Err(classify_first_frame_error(e, conn.read_buffer())),
        Some(Ok(frame)) => frame,
    };
    let checked = decode_handshake::<Hello>(&frame).and_then(|hello| {
        if hello.cluster_id != cluster_id {
            return Err(TcpError::ClusterMismatch {
                remote: hello.cluster_id,
                local: cluster_id,
            });
        }
        let kept = check(&hello)?;
        Ok((hello.role, kept))
    });
    let reply = match &checked {
        Ok(_) => HelloReply::Accepted {
            cluster_id,
            node_id,
        },
        // Tell a remote that speaks this protocol why it is refused; stay silent to
        // anything else.
        Err(
            e @ (TcpError::VersionMismatch { .. }
            | TcpError::ClusterMismatch { .. }
            | TcpError::UnknownNode(_)
            | TcpError::TooManyConnections { .. }),
        ) => HelloReply::Rejected {
            reason: truncated(e.to_string(), MAX_REASON_LEN),
        },
        Err(_) => return checked,
    };
    let frame = encode_handshake(PROTOCOL_VERSION, &reply)?;
    let sent = timeout(handshake_timeout, conn.send(frame)).await;
    let accepted = checked?;
    sent.map_err(|_| TcpError::HandshakeTimeout)??;
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Encoder;

    use super::*;

    #[test]
    fn handshake_round_trip() {
        let hello = Hello {
            cluster_id: 7,
            role: Role::Peer {
                id: 3,
                listen: "127.0.0.1:7003".parse().expect("address"),
            },
        };
        let frame = encode_handshake(PROTOCOL_VERSION, &hello).ok();
        let back = frame.and_then(|f| decode_handshake::<Hello>(&f).ok());
        assert_eq!(back, Some(hello));
    }

    #[test]
    fn handshake_checks_magic_version_and_length() {
        let hello = Hello {
            cluster_id: 7,
            role: Role::Client,
        };
        let other = encode_handshake(PROTOCOL_VERSION + 1, &hello).unwrap_or_default();
        assert!(matches!(
            decode_handshake::<Hello>(&other),
            Err(TcpError::VersionMismatch { .. })
        ));
        assert!(matches!(
            decode_handshake::<Hello>(b"GET / HTTP/1.1\r\n"),
            Err(TcpError::NotPaxos("looks like an HTTP request"))
        ));
        assert!(matches!(
            decode_handshake::<Hello>(b"PXTC"),
            Err(TcpError::Malformed(_))
        ));
        let mut long = encode_handshake(PROTOCOL_VERSION, &hello)
            .unwrap_or_default()
            .to_vec();
        long.push(0);
        assert!(matches!(
            decode_handshake::<Hello>(&long),
            Err(TcpError::Malformed(_))
        ));
    }

    #[test]
    fn reasons_are_cut_on_char_boundaries() {
        assert_eq!(truncated("héllo".into(), 2), "h");
        assert_eq!(truncated("hello".into(), 10), "hello");
    }

    fn response(call: u64, outcome: Outcome, max: usize) -> (BytesMut, bool) {
        let (frame, too_large) = encode_outcome(call, outcome, max);
        let mut codec = ClientCodec::new(FrameCodec::new(max), max);
        let mut buf = BytesMut::new();
        assert!(codec.encode(frame, &mut buf).is_ok());
        (buf.split_off(4), too_large)
    }

    #[test]
    fn outcomes_round_trip_with_their_call_id() {
        let (f, too_large) = response(7, Outcome::Ok(Bytes::from_static(b"abc")), 1024);
        assert!(!too_large);
        let (id, answer) = decode_response(f).unwrap_or((0, Err(TcpError::Closed)));
        assert_eq!(id, 7);
        assert_eq!(answer.ok(), Some(Bytes::from_static(b"abc")));
        // The largest payload that fits, and one byte more.
        let fits = Bytes::from(vec![1; 1024 - RESPONSE_HEAD_LEN]);
        let (f, too_large) = response(u64::MAX, Outcome::Ok(fits.clone()), 1024);
        assert!(!too_large);
        assert_eq!(f.len(), 1024);
        let decoded = decode_response(f).ok();
        assert!(matches!(decoded, Some((u64::MAX, Ok(b))) if b == fits));
        let big = Bytes::from(vec![1; 1024 - RESPONSE_HEAD_LEN + 1]);
        let (f, too_large) = response(3, Outcome::Ok(big), 1024);
        assert!(too_large);
        assert!(matches!(
            decode_response(f),
            Ok((3, Err(TcpError::ResponseTooLarge)))
        ));
        let (f, _) = response(4, Outcome::Busy, 1024);
        assert!(matches!(decode_response(f), Ok((4, Err(TcpError::Busy)))));
        let (f, _) = response(5, Outcome::NoResponse, 1024);
        assert!(matches!(
            decode_response(f),
            Ok((5, Err(TcpError::NoResponse)))
        ));
    }

    #[test]
    fn malformed_responses_and_requests_are_errors() {
        for bytes in [&[][..], &[0; 8][..], &[0, 0, 0, 0, 0, 0, 0, 1, 9][..]] {
            assert!(
                matches!(
                    decode_response(BytesMut::from(bytes)),
                    Err(TcpError::Malformed(_))
                ),
                "{bytes:?}"
            );
        }
        assert!(matches!(
            decode_request(BytesMut::from(&[1u8; 7][..])),
            Err(TcpError::Malformed(_))
        ));
        let (id, request) = decode_request(BytesMut::from(&[0, 0, 0, 0, 0, 0, 1, 2, 42][..]))
            .unwrap_or((0, Bytes::new()));
        assert_eq!((id, &request[..]), (258, &[42u8][..]));
    }
}
