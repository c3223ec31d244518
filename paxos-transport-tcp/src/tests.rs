//! Wire-level tests: hostile and malformed connections, handshake refusals, client
//! framing. Each runs on a current-thread runtime, so the log capture sees every task.

use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Ballot, Message, NodeId, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing_subscriber::fmt::MakeWriter;

use crate::wire::{self, Hello, HelloReply, Role, PROTOCOL_VERSION};
use crate::{ClientConfig, ClientRequests, TcpClient, TcpConfig, TcpError, TcpTransport};

const CLUSTER: u64 = 0xC1;
const LIMIT: Duration = Duration::from_secs(10);

/// Log output captured from the current thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Waits until a WARN line containing `needle` has been logged.
    async fn wait_warn(&self, needle: &str) {
        let found = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if self
                    .text()
                    .lines()
                    .any(|l| l.contains("WARN") && l.contains(needle))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "no warning containing {needle:?}; logs:\n{}",
            self.text()
        );
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (logs, guard)
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

fn test_config(id: NodeId, listen: SocketAddr) -> TcpConfig {
    let mut c = TcpConfig::new(id, CLUSTER, listen);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c.handshake_timeout = Duration::from_millis(500);
    c
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// Node 1 (under test, answering clients with an echo) and node 2 (a healthy peer).
/// Node 1 also knows peer 3, which the raw tests impersonate.
struct Cluster {
    a: TcpTransport,
    b: TcpTransport,
    addr: SocketAddr,
}

async fn cluster(tweak: impl FnOnce(&mut TcpConfig)) -> Cluster {
    let (la, lb) = (listener().await, listener().await);
    let (addr_a, addr_b) = (
        la.local_addr().expect("addr"),
        lb.local_addr().expect("addr"),
    );
    // Nothing listens at peer 3's address; node 1 only ever receives from "3".
    let nowhere = listener().await.local_addr().expect("addr");
    let mut ca = test_config(1, addr_a)
        .with_peer(2, addr_b)
        .with_peer(3, nowhere);
    tweak(&mut ca);
    let cb = test_config(2, addr_b).with_peer(1, addr_a);
    let (a, calls) = TcpTransport::from_listener(ca, la).expect("node 1");
    let (b, _) = TcpTransport::from_listener(cb, lb).expect("node 2");
    tokio::spawn(echo(calls));
    Cluster { a, b, addr: addr_a }
}

async fn echo(mut calls: ClientRequests) {
    while let Some(call) = calls.recv().await {
        let reply = call.request().clone();
        call.respond(reply);
    }
}

fn heartbeat(round: u64) -> Message {
    Message::Heartbeat {
        ballot: Ballot::new(round, 2),
        commit_point: round,
    }
}

impl Cluster {
    /// Node 1 still hears node 2 and still answers clients.
    async fn assert_healthy(&mut self) {
        within(async {
            let mut round = 1000;
            loop {
                round += 1;
                self.b.send(1, heartbeat(round)).expect("send");
                let got = tokio::time::timeout(Duration::from_millis(100), self.a.recv()).await;
                if let Ok(Some((2, Message::Heartbeat { .. }))) = got {
                    break;
                }
            }
        })
        .await;
        let mut client = within(TcpClient::connect(self.addr, ClientConfig::new(CLUSTER)))
            .await
            .expect("client connects");
        let got = within(client.call(Bytes::from_static(b"ping")))
            .await
            .expect("call");
        assert_eq!(&got[..], b"ping");
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// A client request frame: call id, then the request.
fn call_frame(call: u64, request: &[u8]) -> Vec<u8> {
    let mut body = call.to_be_bytes().to_vec();
    body.extend_from_slice(request);
    frame(&body)
}

/// The body of a response frame: call id, tag, response.
fn response_body(call: u64, tag: u8, response: &[u8]) -> Vec<u8> {
    let mut body = call.to_be_bytes().to_vec();
    body.push(tag);
    body.extend_from_slice(response);
    body
}

/// A peer's role in a handshake, listening on a port nothing serves.
fn peer_role(id: NodeId) -> Role {
    Role::Peer {
        id,
        listen: SocketAddr::from(([127, 0, 0, 1], 9)),
    }
}

fn hello_frame(version: u16, cluster_id: u64, role: Role) -> Vec<u8> {
    let body = wire::encode_handshake(version, &Hello { cluster_id, role }).expect("encode");
    frame(&body)
}

async fn read_frame(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u32().await?;
    let mut buf = vec![0; len as usize];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Connects and completes a handshake in `role`.
async fn handshaken(addr: SocketAddr, role: Role) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&hello_frame(PROTOCOL_VERSION, CLUSTER, role))
        .await
        .expect("write");
    let reply = within(read_frame(&mut s)).await.expect("reply");
    let reply: HelloReply = wire::decode_handshake(&reply).expect("decode reply");
    assert_eq!(
        reply,
        HelloReply::Accepted {
            cluster_id: CLUSTER,
            node_id: 1
        }
    );
    s
}

/// Waits until the remote closes `stream`; returns what it sent before closing.
async fn expect_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    within(async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    seen
}

/// Sends `bytes` on a fresh connection (after a handshake as peer 3 when `handshake`),
/// optionally half-closes, and checks the node closes the connection and logs `needle`.
async fn bad_input(bytes: &[u8], handshake: bool, half_close: bool, needle: &str) {
    let (logs, _guard) = capture();
    let mut c = cluster(|_| {}).await;
    let mut s = if handshake {
        handshaken(c.addr, peer_role(3)).await
    } else {
        TcpStream::connect(c.addr).await.expect("connect")
    };
    s.write_all(bytes).await.expect("write");
    if half_close {
        s.shutdown().await.expect("shutdown");
    }
    expect_closed(&mut s).await;
    logs.wait_warn(needle).await;
    c.assert_healthy().await;
}

#[tokio::test]
async fn random_bytes_close_only_that_connection() {
    // A fixed pseudo-random sequence (xorshift), so failures replay.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..256)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bad_input(&bytes, false, false, "handshake failed").await;
}

#[tokio::test]
async fn random_bytes_after_handshake() {
    bad_input(
        &[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff],
        true,
        false,
        "malformed frame",
    )
    .await;
}

#[tokio::test]
async fn oversized_length_prefix_before_handshake() {
    // The pre-handshake limit is 1 KiB.
    bad_input(
        &[0, 0, 0x10, 0],
        false,
        false,
        "frame of 4096 bytes exceeds",
    )
    .await;
}

#[tokio::test]
async fn oversized_length_prefix_after_handshake() {
    let too_big = (crate::DEFAULT_MAX_FRAME_SIZE as u32 + 1).to_be_bytes();
    bad_input(&too_big, true, false, "exceeds the limit of 16777216").await;
}

#[tokio::test]
async fn negative_length_prefix() {
    bad_input(
        &[0xff, 0xff, 0xff, 0xff],
        false,
        false,
        "frame of 4294967295",
    )
    .await;
    bad_input(&[0x80, 0, 0, 0], true, false, "frame of 2147483648").await;
}

#[tokio::test]
async fn truncated_frame() {
    // Before the handshake: a prefix announcing 100 bytes, then 10 and end of stream.
    let mut bytes = vec![0, 0, 0, 100];
    bytes.extend_from_slice(&[1; 10]);
    bad_input(&bytes, false, true, "middle of a frame").await;
    // After it, as a peer; and a bare length prefix.
    bad_input(&bytes, true, true, "middle of a frame").await;
    bad_input(&[0, 0, 0, 100], true, true, "middle of a frame").await;
}

#[tokio::test]
async fn undecodable_frames() {
    // A peer message that is not a Message.
    bad_input(&frame(&[0xff; 16]), true, false, "malformed frame").await;
    // A valid message followed by trailing garbage.
    let mut msg = wire::encode_message(&heartbeat(1))
        .expect("encode")
        .to_vec();
    msg.push(0);
    bad_input(&frame(&msg), true, false, "trailing bytes").await;
    // A handshake with the right magic and version but a garbage body.
    let mut hello = b"PXTC".to_vec();
    hello.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    hello.extend_from_slice(&[0xff; 12]);
    bad_input(&frame(&hello), false, false, "malformed frame").await;
    // A first frame without the magic.
    bad_input(
        &frame(b"hello there"),
        false,
        false,
        "not a paxos-tcp handshake",
    )
    .await;
}

#[tokio::test]
async fn http_request_is_refused() {
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";
    bad_input(request, false, false, "looks like an HTTP request").await;
}

#[tokio::test]
async fn tls_client_hello_is_refused() {
    bad_input(
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        false,
        false,
        "looks like a TLS handshake",
    )
    .await;
}

#[tokio::test]
async fn silent_connection_times_out() {
    let (logs, _guard) = capture();
    let mut c = cluster(|_| {}).await;
    let mut silent = TcpStream::connect(c.addr).await.expect("connect");
    // And one that stops half way through its handshake.
    let mut partial = TcpStream::connect(c.addr).await.expect("connect");
    partial.write_all(&[0, 0, 0, 20, 1]).await.expect("write");
    let started = tokio::time::Instant::now();
    expect_closed(&mut silent).await;
    expect_closed(&mut partial).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    logs.wait_warn("handshake timed out").await;
    c.assert_healthy().await;
}

#[tokio::test]
async fn client_that_sends_garbage_after_handshake_is_closed() {
    // Requests are opaque after their call id, so only framing errors apply: an
    // oversized prefix, and a frame too short to hold a call id.
    let (logs, _guard) = capture();
    let mut c = cluster(|_| {}).await;
    let mut s = handshaken(c.addr, Role::Client).await;
    s.write_all(&[0xff, 0xff, 0xff, 0xfe]).await.expect("write");
    expect_closed(&mut s).await;
    logs.wait_warn("closed client connection").await;
    let mut s = handshaken(c.addr, Role::Client).await;
    s.write_all(&frame(&[1, 2, 3])).await.expect("write");
    expect_closed(&mut s).await;
    logs.wait_warn("shorter than its call id").await;
    c.assert_healthy().await;
}

/// Sends a hello and returns the node's answer (if any) and whether it then closed.
async fn refused(addr: SocketAddr, hello: Vec<u8>) -> Option<HelloReply> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(&hello).await.expect("write");
    let rest = expect_closed(&mut s).await;
    let body = rest.get(4..)?;
    wire::decode_handshake(body).ok()
}

#[tokio::test]
async fn handshake_mismatches_are_refused_and_the_node_keeps_serving() {
    let (logs, _guard) = capture();
    let mut c = cluster(|_| {}).await;

    let reply = refused(
        c.addr,
        hello_frame(PROTOCOL_VERSION, CLUSTER + 1, peer_role(3)),
    )
    .await;
    assert!(
        matches!(&reply, Some(HelloReply::Rejected { reason }) if reason.contains("cluster id mismatch")),
        "{reply:?}"
    );
    logs.wait_warn("cluster id mismatch").await;

    let reply = refused(
        c.addr,
        hello_frame(PROTOCOL_VERSION + 1, CLUSTER, peer_role(3)),
    )
    .await;
    assert!(
        matches!(&reply, Some(HelloReply::Rejected { reason }) if reason.contains("version mismatch")),
        "{reply:?}"
    );
    logs.wait_warn("protocol version mismatch").await;

    let nowhere = Role::Peer {
        id: 9,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    for role in [nowhere, peer_role(1)] {
        // An id outside the peer map that gives no address to answer it at, and the
        // node's own id.
        let Role::Peer { id, .. } = role else {
            unreachable!()
        };
        let reply = refused(c.addr, hello_frame(PROTOCOL_VERSION, CLUSTER, role)).await;
        assert!(
            matches!(&reply, Some(HelloReply::Rejected { reason }) if reason.contains("unknown node id")),
            "{reply:?}"
        );
        logs.wait_warn(&format!("unknown node id {id}")).await;
    }

    // A client of another cluster is refused too.
    let mut cfg = ClientConfig::new(CLUSTER + 1);
    cfg.handshake_timeout = Duration::from_secs(2);
    let err = within(TcpClient::connect(c.addr, cfg)).await.err();
    assert!(
        matches!(&err, Some(TcpError::Rejected(r)) if r.contains("cluster id mismatch")),
        "{err:?}"
    );

    c.assert_healthy().await;
}

/// A node outside the configuration (one about to be added) may connect as a peer and
/// copy the log: node 1 delivers its messages and answers it at the address its
/// handshake gave, within `max_joining_nodes`.
#[tokio::test]
async fn a_node_outside_the_configuration_joins_within_the_limit() {
    let c = cluster(|cfg| cfg.max_joining_nodes = 1).await;
    let (mut a, _b) = (c.a, c.b);
    // Node 7 knows node 1; node 1 does not know node 7.
    let l7 = listener().await;
    let c7 = test_config(7, l7.local_addr().expect("addr")).with_peer(1, c.addr);
    let (mut n7, _) = TcpTransport::from_listener(c7, l7).expect("node 7");
    within(async {
        loop {
            n7.send(1, heartbeat(7)).expect("send");
            match tokio::time::timeout(Duration::from_millis(100), a.recv()).await {
                Ok(Some((7, Message::Heartbeat { .. }))) => break,
                Ok(None) => panic!("node 1 stopped"),
                _ => {}
            }
        }
    })
    .await;
    // Node 1 answers it: its transport dialed node 7 back.
    a.send(7, heartbeat(8)).expect("node 1 knows node 7 now");
    let got = within(n7.recv()).await;
    assert!(
        matches!(got, Some((1, Message::Heartbeat { .. }))),
        "{got:?}"
    );

    // A second outsider is over the limit: refused in its handshake.
    let reply = refused(c.addr, hello_frame(PROTOCOL_VERSION, CLUSTER, peer_role(8))).await;
    assert!(
        matches!(&reply, Some(HelloReply::Rejected { reason }) if reason.contains("unknown node id")),
        "{reply:?}"
    );
    assert!(
        matches!(
            a.send(8, heartbeat(9)),
            Err(paxos_core::TransportError::UnknownPeer(8))
        ),
        "a refused outsider is no peer"
    );
}

#[tokio::test]
async fn messages_are_attributed_to_the_handshake_id() {
    let mut c = cluster(|_| {}).await;
    let mut s = handshaken(c.addr, peer_role(3)).await;
    // The ballot names node 2; the connection proved node 3.
    let msg = heartbeat(5);
    s.write_all(&frame(&wire::encode_message(&msg).expect("encode")))
        .await
        .expect("write");
    assert_eq!(within(c.a.recv()).await, Some((3, msg)));
}

#[tokio::test]
async fn newer_peer_connection_replaces_older() {
    let (logs, _guard) = capture();
    let c = cluster(|_| {}).await;
    let mut old = handshaken(c.addr, peer_role(3)).await;
    let _new = handshaken(c.addr, peer_role(3)).await;
    expect_closed(&mut old).await;
    assert!(logs
        .text()
        .contains("newer connection replaces the older one"));
}

/// Connects a client and makes one call; the error if either fails.
async fn client_call(addr: SocketAddr) -> Result<Bytes, TcpError> {
    let mut cfg = ClientConfig::new(CLUSTER);
    cfg.handshake_timeout = Duration::from_secs(2);
    let mut client = within(TcpClient::connect(addr, cfg)).await?;
    within(client.call(Bytes::from_static(b"x"))).await
}

/// Keeps trying until a new client's call succeeds (a closed slot is freed by the
/// server's connection task, shortly after the close).
async fn until_a_client_gets_in(addr: SocketAddr) {
    within(async {
        while client_call(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn connections_still_in_their_handshake_are_capped() {
    let (logs, _guard) = capture();
    let c = cluster(|c| c.max_handshaking = 2).await;
    let one = TcpStream::connect(c.addr).await.expect("connect");
    let _two = TcpStream::connect(c.addr).await.expect("connect");
    let mut three = TcpStream::connect(c.addr).await.expect("connect");
    expect_closed(&mut three).await;
    logs.wait_warn("too many connections in their handshake")
        .await;
    // Closing one makes room again; a handshaken connection no longer counts.
    drop(one);
    until_a_client_gets_in(c.addr).await;
}

/// Today's rule, each with its test: clients fill their own slots and are then
/// refused in the handshake, while a peer still connects and is heard.
#[tokio::test]
async fn peers_keep_reserved_slots_when_clients_fill_theirs() {
    let (logs, _guard) = capture();
    let mut c = cluster(|c| c.max_client_connections = 3).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(handshaken(c.addr, Role::Client).await);
    }
    let err = client_call(c.addr).await.err();
    assert!(
        matches!(&err, Some(TcpError::Rejected(r)) if r.contains("too many client connections")),
        "{err:?}"
    );
    logs.wait_warn("too many client connections (limit 3)")
        .await;
    // A peer that reconnects now still gets in, and is heard.
    let mut peer = handshaken(c.addr, peer_role(3)).await;
    let msg = heartbeat(7);
    peer.write_all(&frame(&wire::encode_message(&msg).expect("encode")))
        .await
        .expect("write");
    assert_eq!(within(c.a.recv()).await, Some((3, msg)));
    // So does the real peer's traffic.
    c.b.send(1, heartbeat(8)).expect("send");
    assert_eq!(within(c.a.recv()).await, Some((2, heartbeat(8))));
    // A client slot freed is a client slot again.
    idle.pop();
    until_a_client_gets_in(c.addr).await;
}

#[tokio::test]
async fn peer_connections_have_their_own_cap() {
    let (logs, _guard) = capture();
    let mut c = cluster(|c| c.max_peer_connections = 1).await;
    // Node 2 holds the one peer slot (its writer dials node 1); wait until it is heard.
    within(async {
        loop {
            c.b.send(1, heartbeat(1)).expect("send");
            let got = tokio::time::timeout(Duration::from_millis(50), c.a.recv()).await;
            if let Ok(Some((2, _))) = got {
                break;
            }
        }
    })
    .await;
    let reply = refused(c.addr, hello_frame(PROTOCOL_VERSION, CLUSTER, peer_role(3))).await;
    assert!(
        matches!(&reply, Some(HelloReply::Rejected { reason }) if reason.contains("too many peer connections")),
        "{reply:?}"
    );
    logs.wait_warn("too many peer connections (limit 1)").await;
    // Clients are not affected.
    assert!(client_call(c.addr).await.is_ok());
}

#[tokio::test]
async fn client_connections_per_address_are_capped() {
    let (logs, _guard) = capture();
    let c = cluster(|c| c.max_client_connections_per_ip = 2).await;
    let one = handshaken(c.addr, Role::Client).await;
    let _two = handshaken(c.addr, Role::Client).await;
    let err = client_call(c.addr).await.err();
    assert!(
        matches!(&err, Some(TcpError::Rejected(r)) if r.contains("too many client per address connections")),
        "{err:?}"
    );
    logs.wait_warn("limit 2").await;
    drop(one);
    until_a_client_gets_in(c.addr).await;
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let c = cluster(|c| c.client_idle_timeout = Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut silent = handshaken(c.addr, Role::Client).await;
    expect_closed(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    // A connection that keeps calling stays open past the timeout...
    let mut client = within(TcpClient::connect(c.addr, ClientConfig::new(CLUSTER)))
        .await
        .expect("connect");
    for _ in 0..6 {
        within(client.call(Bytes::from_static(b"busy")))
            .await
            .expect("call");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // ... and a client whose idle connection was closed reconnects by itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = within(client.call(Bytes::from_static(b"again")))
        .await
        .expect("call after idle close");
    assert_eq!(&got[..], b"again");
}

/// A client that pipelines large requests and never reads the answers must not keep
/// its connection, and its slot, for ever: a response write it does not take is bounded
/// like silence is (here by the 200 ms idle timeout, shorter than the write timeout).
#[tokio::test]
async fn a_client_that_never_reads_its_responses_is_closed() {
    let c = cluster(|c| {
        c.client_idle_timeout = Duration::from_millis(200);
        c.max_client_connections_per_ip = 1;
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut s = within(socket.connect(c.addr)).await.expect("connect");
    s.write_all(&hello_frame(PROTOCOL_VERSION, CLUSTER, Role::Client))
        .await
        .expect("write");
    let reply = within(read_frame(&mut s)).await.expect("reply");
    assert!(matches!(
        wire::decode_handshake::<HelloReply>(&reply),
        Ok(HelloReply::Accepted { .. })
    ));
    // Echoed 1000 KiB requests: far more than the socket buffers hold. The read half
    // is kept, never read.
    let (_unread, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let request = vec![7u8; 1000 * 1024];
        for call in 1..=16 {
            if write.write_all(&call_frame(call, &request)).await.is_err() {
                break;
            }
        }
        write
    });
    // The stalled connection is closed, so the one slot for this address frees up.
    until_a_client_gets_in(c.addr).await;
    writer.abort();
}

/// A connection that handshook as a peer and then says nothing is closed after the
/// peer idle timeout, like an idle client's.
#[tokio::test]
async fn idle_peer_connections_are_closed() {
    let (logs, _guard) = capture();
    let mut c = cluster(|c| c.peer_idle_timeout = Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let mut silent = handshaken(c.addr, peer_role(3)).await;
    expect_closed(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("peer=3") && l.contains("connection idle for")),
        "{text}"
    );
    c.assert_healthy().await;
}

/// A node's writer closes its connection to a peer it has had nothing to send for
/// half the idle timeout, before the peer's timeout does, and dials again when a
/// message comes: a quiet link costs no warning and loses no message.
#[tokio::test]
async fn quiet_outbound_peer_connections_are_closed_and_dialed_again() {
    let (logs, _guard) = capture();
    let mut c = cluster(|c| c.peer_idle_timeout = Duration::from_millis(200)).await;
    c.a.send(2, heartbeat(1)).expect("send");
    assert_eq!(within(c.b.recv()).await, Some((1, heartbeat(1))));
    within(async {
        while !logs.text().contains("closed idle connection to peer") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    c.a.send(2, heartbeat(2)).expect("send");
    assert_eq!(within(c.b.recv()).await, Some((1, heartbeat(2))));
    let text = logs.text();
    assert!(
        !text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("peer=2")),
        "{text}"
    );
}

#[tokio::test]
async fn client_frames_have_their_own_small_limit() {
    let (logs, _guard) = capture();
    // Defaults: peers may send 16 MiB frames, clients 1 MiB.
    let c = cluster(|_| {}).await;
    let mut s = handshaken(c.addr, Role::Client).await;
    s.write_all(&(16u32 << 20).to_be_bytes())
        .await
        .expect("write");
    expect_closed(&mut s).await;
    logs.wait_warn("exceeds the limit of 1048576 bytes").await;
    // A frame just under the client limit is served.
    let request = vec![7u8; crate::DEFAULT_MAX_CLIENT_FRAME_SIZE - 8];
    let mut client = within(TcpClient::connect(c.addr, ClientConfig::new(CLUSTER)))
        .await
        .expect("connect");
    let got = within(client.call(Bytes::from(request.clone())))
        .await
        .expect("call");
    assert_eq!(got.len(), request.len());
    // A peer's frame of the same announced size is within the peer limit: the node
    // waits for its body rather than closing the connection.
    let mut peer = handshaken(c.addr, peer_role(3)).await;
    peer.write_all(&(16u32 << 20).to_be_bytes())
        .await
        .expect("write");
    let waited = tokio::time::timeout(Duration::from_millis(300), peer.read_u8()).await;
    assert!(
        waited.is_err(),
        "the peer connection was closed: {waited:?}"
    );
}

#[tokio::test]
async fn client_requests_can_be_pipelined_and_answer_in_order() {
    let c = cluster(|_| {}).await;
    let mut s = handshaken(c.addr, Role::Client).await;
    let mut burst = Vec::new();
    for i in 0..20u8 {
        // Call ids are the client's business: the server echoes whatever it gets.
        burst.extend_from_slice(&call_frame(1000 - u64::from(i), &[i; 3]));
    }
    s.write_all(&burst).await.expect("write");
    for i in 0..20u8 {
        let response = within(read_frame(&mut s)).await.expect("response");
        assert_eq!(
            response,
            response_body(1000 - u64::from(i), wire::tag::OK, &[i; 3])
        );
    }
}

#[tokio::test]
async fn client_errors_busy_no_response_and_too_large() {
    let (la, addr) = {
        let l = listener().await;
        let a = l.local_addr().expect("addr");
        (l, a)
    };
    let mut config = test_config(1, addr);
    config.client_queue_capacity = 1;
    config.max_frame_size = 2048;
    config.max_client_frame_size = 2048;
    let (_node, mut calls) = TcpTransport::from_listener(config, la).expect("bind");
    let mut cc = ClientConfig::new(CLUSTER);
    cc.call_timeout = Duration::from_secs(5);
    let mut one = within(TcpClient::connect(addr, cc.clone()))
        .await
        .expect("c1");
    let mut two = within(TcpClient::connect(addr, cc)).await.expect("c2");

    // Nobody reads `calls` yet: one request fills the queue, the other is busy.
    let first = tokio::spawn(async move {
        let r = one.call(Bytes::from_static(b"one")).await;
        (one, r)
    });
    let second = tokio::spawn(async move {
        let r = two.call(Bytes::from_static(b"two")).await;
        (two, r)
    });
    let (done, pending) = match within(futures::future::select(first, second)).await {
        futures::future::Either::Left((done, pending))
        | futures::future::Either::Right((done, pending)) => (done, pending),
    };
    let (mut busy, result) = done.expect("join");
    assert!(matches!(result, Err(TcpError::Busy)), "{result:?}");
    // Dropping the queued call unanswered reports NoResponse to its client.
    let queued = within(calls.recv()).await.expect("a call was queued");
    drop(queued);
    let (_, result) = within(pending).await.expect("join");
    assert!(matches!(result, Err(TcpError::NoResponse)), "{result:?}");

    // A too-large response is reported, and the connection stays usable.
    let answer = tokio::spawn(async move {
        let call = calls.recv().await.expect("call");
        call.respond(Bytes::from(vec![0u8; 4096]));
        let call = calls.recv().await.expect("call");
        call.respond(Bytes::from_static(b"fine"));
        calls
    });
    let r = within(busy.call(Bytes::from_static(b"big please"))).await;
    assert!(matches!(r, Err(TcpError::ResponseTooLarge)), "{r:?}");
    let r = within(busy.call(Bytes::from_static(b"small"))).await;
    assert_eq!(r.ok(), Some(Bytes::from_static(b"fine")));
    let _calls = within(answer).await.expect("join");

    // A request over the client's limit is refused locally.
    let mut small = ClientConfig::new(CLUSTER);
    small.max_frame_size = 1024;
    let mut client = within(TcpClient::connect(addr, small)).await.expect("c3");
    // The frame holds the 8-byte call id too.
    let r = client.call(Bytes::from(vec![0u8; 1017])).await;
    assert!(
        matches!(
            r,
            Err(TcpError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn dropped_call_reports_no_response() {
    let l = listener().await;
    let addr = l.local_addr().expect("addr");
    let (_node, mut calls) = TcpTransport::from_listener(test_config(1, addr), l).expect("bind");
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            drop(call);
        }
    });
    let mut client = within(TcpClient::connect(addr, ClientConfig::new(CLUSTER)))
        .await
        .expect("connect");
    let r = within(client.call(Bytes::from_static(b"x"))).await;
    assert!(matches!(r, Err(TcpError::NoResponse)), "{r:?}");
}

#[tokio::test]
async fn dialing_the_wrong_node_is_refused() {
    let (logs, _guard) = capture();
    // Node 1 believes node 2 lives where node 3 actually listens.
    let (l1, l3) = (listener().await, listener().await);
    let (a1, a3) = (
        l1.local_addr().expect("addr"),
        l3.local_addr().expect("addr"),
    );
    let (n1, _) = TcpTransport::from_listener(test_config(1, a1).with_peer(2, a3), l1).expect("n1");
    let (mut n3, _) =
        TcpTransport::from_listener(test_config(3, a3).with_peer(1, a1), l3).expect("n3");
    n1.send(2, heartbeat(1)).expect("send");
    logs.wait_warn("expected node 2 but the remote is node 3")
        .await;
    // Node 3 never hears a message meant for node 2.
    let got = tokio::time::timeout(Duration::from_millis(200), n3.recv()).await;
    assert!(got.is_err(), "{got:?}");
}

#[tokio::test]
async fn bytes_past_a_frame_are_not_lost() {
    // A frame split across writes, and several frames in one write, both decode.
    let c = cluster(|_| {}).await;
    let mut s = handshaken(c.addr, Role::Client).await;
    let mut both = call_frame(1, b"ab");
    both.extend_from_slice(&call_frame(2, b"cd"));
    let (head, tail) = both.split_at(7);
    s.write_all(head).await.expect("write");
    s.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(tail).await.expect("write");
    let mut expected = BytesMut::new();
    expected.put_u64(1);
    expected.put_u8(wire::tag::OK);
    expected.put_slice(b"ab");
    assert_eq!(
        within(read_frame(&mut s)).await.expect("r1"),
        expected.to_vec()
    );
    assert_eq!(
        within(read_frame(&mut s)).await.expect("r2"),
        response_body(2, wire::tag::OK, b"cd")
    );
}

/// A server that speaks the client protocol by hand, wrongly on demand: to a request
/// `b"wrong ids"` it first sends responses with other call ids (a later one, call 0, and
/// an earlier one), then the right one; to `b"short"` it sends a frame too short to be
/// a response; anything else it echoes properly.
async fn scripted_server(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(hello) = read_frame(&mut s).await else {
                return;
            };
            if wire::decode_handshake::<Hello>(&hello).is_err() {
                return;
            }
            let accepted = HelloReply::Accepted {
                cluster_id: CLUSTER,
                node_id: 9,
            };
            let reply = wire::encode_handshake(PROTOCOL_VERSION, &accepted).expect("encode");
            if s.write_all(&frame(&reply)).await.is_err() {
                return;
            }
            while let Ok(request) = read_frame(&mut s).await {
                let Some((id, body)) = request.split_first_chunk::<8>() else {
                    return;
                };
                let call = u64::from_be_bytes(*id);
                let mut out = Vec::new();
                match body {
                    b"wrong ids" => {
                        for (other, text) in [
                            (call + 1, &b"from the future"[..]),
                            (0, b"from call zero"),
                            (call.saturating_sub(1), b"from an older call"),
                        ] {
                            out.extend(frame(&response_body(other, wire::tag::OK, text)));
                        }
                        out.extend(frame(&response_body(call, wire::tag::OK, b"right")));
                    }
                    b"short" => out.extend(frame(&call.to_be_bytes())),
                    _ => out.extend(frame(&response_body(call, wire::tag::OK, body))),
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn responses_with_a_wrong_call_id_are_discarded() {
    let (logs, _guard) = capture();
    check_responses_with_a_wrong_call_id_are_discarded(ClientConfig::new(CLUSTER))
        .await
        .unwrap();
    assert!(
        logs.text()
            .lines()
            .any(|l| l.contains("DEBUG") && l.contains("discarding a response")),
        "{}",
        logs.text()
    );
}

/// The check of `responses_with_a_wrong_call_id_are_discarded`, with a client built
/// from `config`: against [`scripted_server`], every response frame that answers
/// another call is discarded and counted, and the connection stays in step. `Err` says
/// what went wrong. Also run against a broken client (`broken_variants`).
async fn check_responses_with_a_wrong_call_id_are_discarded(
    config: ClientConfig,
) -> Result<(), String> {
    let l = listener().await;
    let addr = l.local_addr().expect("addr");
    let server = tokio::spawn(scripted_server(l));
    let result = wrong_call_id_calls(addr, config).await;
    server.abort();
    result
}

async fn wrong_call_id_calls(addr: SocketAddr, config: ClientConfig) -> Result<(), String> {
    let mut client = within(TcpClient::connect(addr, config))
        .await
        .expect("connect");
    let expect = |got: Result<Bytes, TcpError>, want: &'static [u8]| {
        if got.as_deref().ok() == Some(want) {
            Ok(())
        } else {
            Err(format!(
                "expected {:?}, got {got:?}",
                Bytes::from_static(want)
            ))
        }
    };
    let discarded = |client: &TcpClient, want: u64| {
        let n = client.discarded_responses();
        if n == want {
            Ok(())
        } else {
            Err(format!("{n} responses discarded, expected {want}"))
        }
    };
    expect(
        within(client.call(Bytes::from_static(b"one"))).await,
        b"one",
    )?;
    // Three frames answering other calls come first: each is discarded.
    let r = within(client.call(Bytes::from_static(b"wrong ids"))).await;
    expect(r, b"right")?;
    discarded(&client, 3)?;
    // The connection is still in step: the next call gets its own answer.
    expect(
        within(client.call(Bytes::from_static(b"three"))).await,
        b"three",
    )?;
    // A frame too short to be a response is an error that drops the connection; the
    // next call reconnects.
    let r = within(client.call(Bytes::from_static(b"short"))).await;
    if !matches!(r, Err(TcpError::Malformed(_))) {
        return Err(format!("expected Malformed, got {r:?}"));
    }
    expect(
        within(client.call(Bytes::from_static(b"four"))).await,
        b"four",
    )?;
    discarded(&client, 3)
}

// ------------------------------------------------------------ broken variants
//
// Each test runs a check of the real tests against a client with deliberately broken
// variants of its rules for matching responses to calls (`Broken`, compiled for tests
// only) and asserts that the check fails, so every run proves that the real tests can
// still catch those bugs. The cancellation scenarios are the very code that
// `tests/cancellation.rs` runs against the real client.

/// Shared with `tests/cancellation.rs`; not every helper is used here.
#[allow(dead_code)]
#[path = "../tests/cancellation/checks.rs"]
mod cancellation_checks;

mod broken_variants {
    use super::*;
    use crate::config::Broken;

    fn broken(cluster: u64, variants: &[Broken]) -> ClientConfig {
        let mut config = ClientConfig::new(cluster);
        config.broken = variants.to_vec();
        config
    }

    /// The answer of another call is returned, not discarded.
    #[tokio::test]
    async fn a_client_that_takes_any_answer_is_caught() {
        let e = check_responses_with_a_wrong_call_id_are_discarded(broken(
            CLUSTER,
            &[Broken::AnyAnswer],
        ))
        .await
        .unwrap_err();
        assert!(e.contains("from the future"), "{e}");
    }

    /// With call ids still matched, reusing the connection delays the next call until
    /// the cancelled call's answer arrives.
    #[tokio::test]
    async fn a_client_that_reuses_a_connection_with_an_answer_outstanding_is_caught() {
        let config = broken(
            cancellation_checks::CLUSTER,
            &[Broken::ReuseWithAnswerOutstanding],
        );
        let e = cancellation_checks::a_cancelled_call_does_not_delay_the_next_call(config)
            .await
            .unwrap_err();
        assert!(e.contains("waited behind the cancelled one"), "{e}");
    }

    /// The client before call ids: a call cancelled mid-flight answers the next one.
    /// (Alone, `AnyAnswer` passes this check, because a connection with an answer
    /// outstanding is replaced; `ReuseWithAnswerOutstanding` alone fails it only by its
    /// count of discarded responses, as a late answer on a reused connection is still
    /// discarded.)
    #[tokio::test]
    async fn a_client_without_call_ids_is_caught_by_the_cancellation_check() {
        let config = broken(
            cancellation_checks::CLUSTER,
            &[Broken::AnyAnswer, Broken::ReuseWithAnswerOutstanding],
        );
        let e = cancellation_checks::a_call_cancelled_by_a_timeout_does_not_answer_the_next_call(
            config,
        )
        .await
        .unwrap_err();
        assert!(e.contains("second") && e.contains("first"), "{e}");
    }
}
