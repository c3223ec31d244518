//! The crate's error type.

use std::io;

use paxos_core::NodeId;
use thiserror::Error;

/// Why a TCP operation failed or a connection was closed.
///
/// Returned by [`TcpTransport::bind`](crate::TcpTransport::bind), the [`TcpClient`](crate::TcpClient)
/// methods and the configuration checks; the transport's own connection tasks log the same
/// errors (with `tracing`) when they close a connection.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TcpError {
    /// A configuration setting is unusable.
    #[error("invalid config: {0}")]
    Config(String),
    /// A socket operation failed.
    #[error("io error: {0}")]
    Io(#[from] io::Error),
    /// The remote closed the connection.
    #[error("connection closed by remote")]
    Closed,
    /// Establishing the TCP connection took longer than the connect timeout.
    #[error("connect timed out")]
    ConnectTimeout,
    /// The handshake did not complete within the handshake timeout.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// A client call got no response within the call timeout. The request may or may not
    /// have been processed; the client opens a new connection on its next call.
    #[error("call timed out; the request may or may not have been processed")]
    CallTimeout,
    /// Writing to a peer, or a response to a client, did not complete within the write
    /// timeout.
    #[error("write timed out")]
    WriteTimeout,
    /// A frame (announced by the remote, or about to be sent) is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The frame's length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    TruncatedFrame,
    /// The first frame is not a handshake of this protocol.
    #[error("not a paxos-tcp handshake ({0})")]
    NotPaxos(&'static str),
    /// The remote speaks another version of the wire protocol.
    #[error("protocol version mismatch: remote speaks {remote}, this side {local}")]
    VersionMismatch {
        /// The remote's version.
        remote: u16,
        /// This side's version, [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        local: u16,
    },
    /// The remote belongs to another cluster.
    #[error("cluster id mismatch: remote is in cluster {remote}, this side in {local}")]
    ClusterMismatch {
        /// The remote's cluster id.
        remote: u64,
        /// This side's cluster id.
        local: u64,
    },
    /// A peer handshake named a node id that is not in this node's peer map nor a
    /// membership it learned, when no more joining nodes may connect
    /// ([`TcpConfig::max_joining_nodes`](crate::TcpConfig::max_joining_nodes)) or the
    /// handshake gave no port to answer at (or the id is this node's own).
    #[error("unknown node id {0}")]
    UnknownNode(NodeId),
    /// A dialed peer identified itself with another node id than the peer map says.
    #[error("expected node {expected} but the remote is node {found}")]
    WrongNode {
        /// The id in the peer map.
        expected: NodeId,
        /// The id the remote sent.
        found: NodeId,
    },
    /// The remote refused this side's handshake, for the reason it gives.
    #[error("handshake rejected by remote: {0}")]
    Rejected(String),
    /// A frame could not be decoded.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The remote sent a frame its role does not allow.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// A message could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The server's request queue is full; the request was not processed. Retry later.
    #[error("server busy: its request queue is full")]
    Busy,
    /// The server dropped the request without answering it (its application stopped
    /// taking requests, or dropped the responder).
    #[error("server gave no response")]
    NoResponse,
    /// A connection was refused because a limit on open connections was reached.
    #[error("too many {what} connections (limit {max})")]
    TooManyConnections {
        /// Which limit: `"peer"`, `"client"` or `"client per address"`.
        what: &'static str,
        /// The limit in force.
        max: usize,
    },
    /// A connection (a client's, or a peer's inbound one) was closed after sending
    /// nothing for its idle timeout.
    #[error("connection idle for {0:?}")]
    IdleTimeout(std::time::Duration),
    /// The server's response did not fit in a frame.
    #[error("response too large for a frame")]
    ResponseTooLarge,
}

impl TcpError {
    /// True for the ways a connection ends that are routine rather than a sign of bad
    /// input or misconfiguration: a close or reset by the remote.
    pub(crate) fn is_routine(&self) -> bool {
        match self {
            TcpError::Closed | TcpError::IdleTimeout(_) => true,
            TcpError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    pub(crate) fn config(msg: impl Into<String>) -> Self {
        TcpError::Config(msg.into())
    }
}
