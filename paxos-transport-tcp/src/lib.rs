//! A [`Transport`](paxos_core::Transport) for `paxos-core` over TCP, and the whole client
//! path of a replica process, generic over the state machine.
//!
//! Each node listens on one address that serves both its peers and its clients.
//!
//! - **The client path** (what a node process and its clients use):
//!   [`NodeServer`] runs one replica of any [`StateMachine`](paxos_core::StateMachine)
//!   on its address, with its transport, and answers client calls: submissions (with
//!   redirects to the leader), status, a range of the log, one slot, view changes, and
//!   a read-only query of the state machine through a hook of your own
//!   ([`NodeServerOptions::with_query`]). [`RemoteCluster`] and [`RemoteNode`] are the
//!   other side: typed calls, and a [`RemoteEndpoint`] per node for a
//!   [`paxos_core::Client`]. [`ClusterConfig`] is the cluster address file (TOML: cluster
//!   id and the nodes' `id` and `addr`). One call is one [`NodeRequest`] and one
//!   [`NodeResponse`], in one frame whose call id the transport echoes and checks; a
//!   submission's reply also names the request it answers. Errors are typed and keep
//!   their causes ([`ServeError`], [`RemoteError`], [`ServerError`]).
//! - **Test controls.** [`Gate`] and [`GatedTransport`] make a replica unavailable
//!   without stopping it (it drops all protocol traffic, as if crashed), around any
//!   transport. A [`NodeServer`] lets clients do that ([`NodeRequest::SetAvailable`])
//!   only when started with [`NodeServerOptions::test_controls`].
//! - **Administrative calls.** [`NodeRequest::TransferLeader`] asks the leader to hand
//!   leadership to a member it names ([`RemoteNode::transfer_leadership`]); a
//!   [`NodeServer`] allows it only when started with [`NodeServerOptions::admin_calls`]
//!   (distinct from the test controls, which it does not imply).
//! - **The transport itself**: [`TcpTransport::bind`] returns the transport (give it to
//!   the node driver) and a [`ClientRequests`] stream of client calls; [`TcpClient`] is
//!   the matching client for opaque request bytes.
//!
//! # A state machine of your own across processes
//!
//! ```
//! use paxos_core::{MemStorage, RestoreError, StateMachine};
//! use paxos_transport_tcp::{
//!     ClusterConfig, NodeConfig, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions,
//! };
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Command = u64;
//!     type Output = u64;
//!     fn apply(&mut self, n: u64) -> u64 { self.0 = self.0.saturating_add(n); self.0 }
//!     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
//!     fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> {
//!         let raw: [u8; 8] = b.try_into().map_err(|_| RestoreError::new("want 8 bytes"))?;
//!         self.0 = u64::from_le_bytes(raw);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The cluster file every process reads; here one node on a free port. In TOML:
//! // `cluster_id = 1` and one `[[nodes]]` table (`id = 1`, `addr = "127.0.0.1:7101"`)
//! // per node; `ClusterConfig::load(path)` reads it.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let cluster = ClusterConfig {
//!     nodes: vec![NodeConfig { id: 1, addr: listener.local_addr()? }],
//!     ..ClusterConfig::default()
//! };
//!
//! // A node process: the replica, its transport and its client service.
//! let options = NodeServerOptions::default()
//!     .with_query(|c: &Counter, _query: &[u8]| c.0.to_le_bytes().to_vec());
//! let server =
//!     NodeServer::start_on(listener, &cluster, 1, Counter::default(), MemStorage::new(), options)?;
//!
//! // A client process: exactly-once commands through a `Client`, and typed inspection.
//! let remote = RemoteCluster::new(&cluster, RemoteOptions::default())?;
//! let mut client = remote.client::<Counter>();
//! assert_eq!(client.execute(&5).await?, 5);
//! let node = remote.node(1)?;
//! let status = node.status().await?;
//! assert!(status.is_available_leader());
//! let view = node.query(Default::default()).await?;
//! assert_eq!(&view.answer[..], &5u64.to_le_bytes());
//!
//! // Availability is a test control: refused unless the server was started with it.
//! assert!(node.set_available(false).await.is_err());
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Two nodes exchanging a message
//!
//! ```no_run
//! use paxos_core::{Ballot, Message, Transport};
//! use paxos_transport_tcp::{TcpConfig, TcpTransport};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! const CLUSTER: u64 = 0xC0FFEE;
//! let a = "127.0.0.1:7001".parse()?;
//! let b = "127.0.0.1:7002".parse()?;
//!
//! let (node1, _clients1) = TcpTransport::bind(TcpConfig::new(1, CLUSTER, a).with_peer(2, b)).await?;
//! let (mut node2, _clients2) = TcpTransport::bind(TcpConfig::new(2, CLUSTER, b).with_peer(1, a)).await?;
//!
//! // `send` only queues: it never waits for the network.
//! let hello = Message::Heartbeat { ballot: Ballot::new(1, 1), commit_point: 0 };
//! node1.send(2, hello.clone())?;
//!
//! // Messages are attributed to the id the sender's connection proved in its handshake.
//! assert_eq!(node2.recv().await, Some((1, hello)));
//! # Ok(())
//! # }
//! ```
//!
//! # Serving clients
//!
//! ```
//! use bytes::Bytes;
//! use paxos_transport_tcp::{ClientConfig, TcpClient, TcpConfig, TcpTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), paxos_transport_tcp::TcpError> {
//! let config = TcpConfig::new(1, 7, "127.0.0.1:0".parse().unwrap());
//! let (node, mut calls) = TcpTransport::bind(config).await?;
//!
//! // The application's loop: decode the request, act, respond.
//! tokio::spawn(async move {
//!     while let Some(call) = calls.recv().await {
//!         let mut reply = b"echo: ".to_vec();
//!         reply.extend_from_slice(call.request());
//!         call.respond(Bytes::from(reply));
//!     }
//! });
//!
//! let mut client = TcpClient::connect(node.local_addr(), ClientConfig::new(7)).await?;
//! let response = client.call(Bytes::from_static(b"hi")).await?;
//! assert_eq!(&response[..], b"echo: hi");
//! assert_eq!(client.server_node_id(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Connections
//!
//! - **Framing.** Every frame is a 4-byte big-endian length followed by that many bytes
//!   (tokio-util's `LengthDelimitedCodec`). A frame longer than
//!   [`TcpConfig::max_frame_size`] closes the connection as soon as its length prefix is
//!   read; until the handshake completes the limit is 1 KiB, so an unauthenticated
//!   connection cannot make a node allocate much.
//! - **Handshake.** The connecting side sends a first frame of `b"PXTC"`, the protocol
//!   version ([`PROTOCOL_VERSION`], big-endian `u16`) and a postcard body with the cluster
//!   id and its role: a peer node with its node id and the address it listens on, or a
//!   client. The accepting side checks the version, the cluster id and (for a peer) that
//!   the id is in its peer map or a membership it learned, then answers with the same
//!   preamble and its own cluster and node id, or with the reason for refusing. A peer
//!   it does not know is a node about to be added: up to
//!   [`TcpConfig::max_joining_nodes`] of them are admitted, and dialed back at the
//!   address they gave, so that they copy the chosen log as learners before they
//!   vote (the replica answers them nothing else). Any mismatch, and a handshake not completed within
//!   [`TcpConfig::handshake_timeout`], closes the connection with a `tracing` warning.
//! - **Peers.** Each node keeps one outbound connection per peer, used only for sending,
//!   and accepts inbound connections only for receiving; two nodes that dial each other
//!   therefore have two connections, one per direction. Connections are not
//!   deduplicated across directions, which keeps reconnection simple and symmetric. A
//!   message received on an inbound connection is attributed to the node id proved by
//!   that connection's handshake, never to anything inside the frame; a newer inbound
//!   connection from the same peer replaces the older one.
//! - **Sending.** [`Transport::send`](paxos_core::Transport::send) never waits for the
//!   network: it puts the message on the peer's bounded queue
//!   ([`TcpConfig::peer_queue_capacity`]) and returns. When the queue is full the message
//!   is dropped (traced at debug level, counted by [`TcpTransport::dropped_messages`]),
//!   which the protocol tolerates. A writer task per peer owns the connection: it encodes
//!   messages with postcard, feeds a batch of frames and flushes once. When the
//!   connection breaks it redials with capped exponential backoff
//!   ([`TcpConfig::backoff_min`] to [`TcpConfig::backoff_max`], jittered); while the peer
//!   is unreachable its queue is emptied rather than delivered stale. All sockets use
//!   `TCP_NODELAY` and TCP keepalive, and a write that stalls longer than
//!   [`TcpConfig::write_timeout`] drops the connection and redials. A writer with
//!   nothing to send for half of [`TcpConfig::peer_idle_timeout`] closes its
//!   connection and dials again when the next message comes.
//! - **Receiving.** Inbound messages wait in one bounded queue for
//!   [`Transport::recv`](paxos_core::Transport::recv) /
//!   [`Transport::try_recv`](paxos_core::Transport::try_recv); when it is full, reading
//!   pauses and TCP pushes back on the senders.
//! - **Clients.** After a client handshake, each frame from the client is one request:
//!   a call id (big-endian `u64`, per connection, increasing) and the request bytes,
//!   handed to the application as a [`ClientCall`]. Each frame back is one response: the
//!   call id of the request it answers, a tag byte (0 ok, 1 busy, 2 no response,
//!   3 response too large) and the response bytes. Responses go back in request order; a
//!   client may pipeline up to [`TcpConfig::max_client_inflight`] requests
//!   ([`TcpClient`] sends one at a time; a [`RemoteNode`] pipelines up to
//!   [`RemoteOptions::calls_per_connection`] on each of its connections, and hands each
//!   response to the oldest call outstanding, which must carry its call id; a call cut
//!   short keeps its place until its answer is read and discarded). [`TcpClient`] returns a response only to the
//!   call whose id it carries and discards any other, so a call that was cancelled
//!   (its future dropped by an outer timeout) never hands its late answer to the next
//!   call; see [`TcpClient`]'s section on cancellation. A request frame too short to hold
//!   a call id closes the connection.
//! - **Bad input.** Random bytes, an HTTP request, a length prefix that is too large (or
//!   negative as a signed number), a truncated frame, a frame that does not decode, or
//!   silence until the handshake timeout close only that connection, with a warning; the
//!   node keeps serving.
//! - **Limits.** A public port must survive idle and greedy clients, so each kind of
//!   connection has its own limits: [`TcpConfig::max_handshaking`] bounds connections
//!   still in their handshake (each for at most [`TcpConfig::handshake_timeout`]);
//!   after it, peers count against [`TcpConfig::max_peer_connections`], a reserve
//!   clients cannot take, and clients against [`TcpConfig::max_client_connections`] and
//!   [`TcpConfig::max_client_connections_per_ip`] (refused in the handshake beyond
//!   them). A client connection with nothing outstanding that stays silent for
//!   [`TcpConfig::client_idle_timeout`] is closed, and so is one that stops reading its
//!   responses (each response frame and flush must go out within
//!   [`TcpConfig::write_timeout`], or the idle timeout if shorter); client request
//!   frames have their
//!   own small limit, [`TcpConfig::max_client_frame_size`] (1 MiB by default, against
//!   16 MiB for peer frames), checked on the length prefix before anything is buffered.
//!   An inbound peer connection that sends nothing for [`TcpConfig::peer_idle_timeout`]
//!   (60 s by default; leaders send heartbeats every few ticks) is closed too.
//! - **Shutdown.** Dropping the transport stops its listener, connections and tasks;
//!   [`TcpTransport::shutdown`] does the same and waits for them.
//!
//! **Peer connections are trusted.** The handshake guards against misconfiguration,
//! not against attackers: there is no authentication and no encryption, and anyone who
//! can reach the port and knows (or guesses) the cluster id can claim to be any peer,
//! and then vote, propose and inject protocol messages as that node. The client limits
//! above protect a node's resources from clients; they do not make the peer side safe
//! to expose. Make the port reachable only from the cluster's own network (a private
//! network, firewall rules or a VPN between the nodes); clients use the same port, so
//! they must be inside that network too.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The crate README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod backoff;
mod client;
mod cluster_file;
mod codec;
mod config;
mod error;
mod gate;
mod pipeline;
mod protocol;
mod remote;
mod server;
mod transport;
mod wire;

#[cfg(test)]
mod pipeline_tests;
#[cfg(test)]
mod server_tests;
#[cfg(test)]
mod tests;

pub use client::{ClientCall, ClientRequests, Responder, TcpClient};
pub use cluster_file::{
    ClusterConfig, ClusterConfigError, NodeConfig, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_CLUSTER_ID,
    MAX_CONFIG_BYTES, MAX_LEARNERS,
};
pub use config::{
    ClientConfig, TcpConfig, DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP, DEFAULT_MAX_CLIENT_FRAME_SIZE,
    DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT,
};
pub use error::TcpError;
pub use gate::{Gate, GatedTransport};
pub use protocol::{NodeRequest, NodeResponse, NodeStatus, ProtocolError, ServerError, StateView};
pub use remote::{
    RemoteCluster, RemoteEndpoint, RemoteError, RemoteNode, RemoteOptions,
    DEFAULT_CALLS_PER_CONNECTION,
};
pub use server::{NodeServer, NodeServerOptions, QueryFn, ServeError};
pub use transport::TcpTransport;
pub use wire::PROTOCOL_VERSION;
