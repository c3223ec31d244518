//! The transport through its public API: nodes on 127.0.0.1 with ephemeral ports.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::{Ballot, Message, NodeId, Request, Transport, TransportError, Value};
use paxos_transport_tcp::{
    ClientConfig, ClientRequests, TcpClient, TcpConfig, TcpError, TcpTransport,
};
use tokio::net::TcpListener;

const CLUSTER: u64 = 42;
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

fn config(id: NodeId, listen: SocketAddr) -> TcpConfig {
    let mut c = TcpConfig::new(id, CLUSTER, listen);
    c.backoff_min = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(100);
    c.handshake_timeout = Duration::from_millis(500);
    c
}

async fn listeners(n: usize) -> Vec<(TcpListener, SocketAddr)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = l.local_addr().expect("addr");
        out.push((l, a));
    }
    out
}

fn heartbeat(round: u64, node: NodeId) -> Message {
    Message::Heartbeat {
        ballot: Ballot::new(round, node),
        commit_point: round,
    }
}

/// Sends from `from` to `to` until one arrives (connections may still be forming).
async fn deliver(from: &TcpTransport, to: &mut TcpTransport) {
    within(async {
        let mut round = 0;
        loop {
            round += 1;
            from.send(to.node_id(), heartbeat(round, from.node_id()))
                .expect("send");
            if let Ok(Some((sender, _))) =
                tokio::time::timeout(Duration::from_millis(50), to.recv()).await
            {
                assert_eq!(sender, from.node_id());
                break;
            }
        }
        // Let earlier attempts that were still in flight arrive, and discard them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        while to.try_recv().is_some() {}
    })
    .await;
}

async fn echo(mut calls: ClientRequests) {
    while let Some(call) = calls.recv().await {
        let reply = call.request().clone();
        call.respond(reply);
    }
}

#[tokio::test]
async fn two_nodes_exchange_messages_both_ways() {
    let mut ls = listeners(2).await;
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    let (mut n1, _) = TcpTransport::from_listener(config(1, a1).with_peer(2, a2), l1).expect("n1");
    let (mut n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");

    deliver(&n1, &mut n2).await;
    deliver(&n2, &mut n1).await;

    // Once connected, everything arrives, in order, with payloads intact.
    let big = Message::Accept {
        ballot: Ballot::new(3, 1),
        commit_point: 7,
        entries: (0..100)
            .map(|slot| {
                let value = Value::Request(Request {
                    client: 9,
                    seq: slot + 1,
                    payload: Bytes::from(vec![slot as u8; 1000]),
                });
                (slot, value)
            })
            .collect(),
    };
    for round in 0..500 {
        n1.send(2, heartbeat(round, 1)).expect("send");
    }
    n1.send(2, big.clone()).expect("send");
    for round in 0..500 {
        let got = within(n2.recv()).await;
        assert_eq!(got, Some((1, heartbeat(round, 1))));
    }
    assert_eq!(within(n2.recv()).await, Some((1, big)));

    // try_recv drains what is already queued without waiting.
    for round in 0..10 {
        n2.send(1, heartbeat(round, 2)).expect("send");
    }
    let first = within(n1.recv()).await;
    assert_eq!(first, Some((2, heartbeat(0, 2))));
    let mut rest = Vec::new();
    within(async {
        while rest.len() < 9 {
            match n1.try_recv() {
                Some(m) => rest.push(m),
                None => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert_eq!(rest.last(), Some(&(2, heartbeat(9, 2))));
    assert_eq!(n1.try_recv(), None);
    assert_eq!(n1.dropped_messages(), 0);
}

#[tokio::test]
async fn send_to_self_loops_back_and_unknown_peers_are_errors() {
    let (mut n1, _) = TcpTransport::bind(config(1, "127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    n1.send(1, heartbeat(1, 1)).expect("send");
    assert_eq!(within(n1.recv()).await, Some((1, heartbeat(1, 1))));
    assert_eq!(
        n1.send(5, heartbeat(1, 1)),
        Err(TransportError::UnknownPeer(5))
    );
}

#[tokio::test]
async fn reconnects_after_a_peer_restarts() {
    let mut ls = listeners(2).await;
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    let (mut n1, _) = TcpTransport::from_listener(config(1, a1).with_peer(2, a2), l1).expect("n1");
    let (mut n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");
    deliver(&n1, &mut n2).await;
    deliver(&n2, &mut n1).await;

    // Node 2 goes away; sending to it still never blocks nor fails.
    drop(n2);
    for round in 0..100 {
        n1.send(2, heartbeat(round, 1)).expect("send while down");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Node 2 comes back on the same port (once the old listener is gone).
    let (mut n2, _) = within(async {
        loop {
            match TcpTransport::bind(config(2, a2).with_peer(1, a1)).await {
                Ok(n) => return n,
                Err(TcpError::Io(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => panic!("rebind: {e}"),
            }
        }
    })
    .await;
    deliver(&n1, &mut n2).await;
    deliver(&n2, &mut n1).await;
}

#[tokio::test]
async fn send_never_blocks_and_drops_when_the_queue_is_full() {
    // A peer that accepts TCP connections but never answers the handshake.
    let mut ls = listeners(2).await;
    let (_stuck, stuck_addr) = ls.pop().expect("stuck");
    let (l1, a1) = ls.pop().expect("l1");
    let mut c = config(1, a1).with_peer(2, stuck_addr);
    c.peer_queue_capacity = 8;
    c.handshake_timeout = Duration::from_secs(5);
    let (n1, _) = TcpTransport::from_listener(c, l1).expect("n1");
    let started = Instant::now();
    for round in 0..10_000 {
        n1.send(2, heartbeat(round, 1)).expect("send");
    }
    assert!(started.elapsed() < Duration::from_secs(2), "send blocked");
    assert!(
        n1.dropped_messages() >= 10_000 - 8,
        "{}",
        n1.dropped_messages()
    );
}

#[tokio::test]
async fn oversized_messages_are_dropped_and_the_connection_survives() {
    let mut ls = listeners(2).await;
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    let mut c1 = config(1, a1).with_peer(2, a2);
    c1.max_frame_size = 4096;
    let (n1, _) = TcpTransport::from_listener(c1, l1).expect("n1");
    let (mut n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");
    deliver(&n1, &mut n2).await;

    let too_big = Message::Accept {
        ballot: Ballot::new(1, 1),
        commit_point: 0,
        entries: vec![(
            0,
            Value::Request(Request {
                client: 1,
                seq: 1,
                payload: Bytes::from(vec![7u8; 8192]),
            }),
        )],
    };
    n1.send(2, too_big).expect("send");
    n1.send(2, heartbeat(99, 1)).expect("send");
    assert_eq!(within(n2.recv()).await, Some((1, heartbeat(99, 1))));
    assert_eq!(n1.dropped_messages(), 1);
}

#[tokio::test]
async fn peers_with_wrong_cluster_or_unknown_id_are_refused() {
    let mut ls = listeners(4).await;
    let (l9, a9) = ls.pop().expect("l9");
    let (lx, ax) = ls.pop().expect("lx");
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    // Node 1 admits no node outside its configuration (by default a few may join, to
    // copy the log before they are added: see `max_joining_nodes`).
    let mut c1 = config(1, a1).with_peer(2, a2);
    c1.max_joining_nodes = 0;
    let (mut n1, _) = TcpTransport::from_listener(c1, l1).expect("n1");
    let (n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");
    // Node 3 of another cluster, and node 9 that node 1 does not know, both dial node 1.
    let mut other = config(3, ax).with_peer(1, a1);
    other.cluster_id = CLUSTER + 1;
    let (stranger, _) = TcpTransport::from_listener(other, lx).expect("stranger");
    let (unknown, _) = TcpTransport::from_listener(config(9, a9).with_peer(1, a1), l9).expect("n9");
    for round in 0..20 {
        stranger.send(1, heartbeat(round, 3)).expect("send");
        unknown.send(1, heartbeat(round, 9)).expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Node 1 keeps serving node 2, and hears nobody else.
    deliver(&n2, &mut n1).await;
    while let Some((from, _)) = n1.try_recv() {
        assert_eq!(from, 2);
    }
    assert!(stranger.dropped_messages() > 0);
    assert!(unknown.dropped_messages() > 0);
}

#[tokio::test]
async fn client_round_trip_and_reconnect() {
    let (node, calls) = TcpTransport::bind(config(1, "127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let addr = node.local_addr();
    tokio::spawn(echo(calls));
    let mut client = within(TcpClient::connect(addr, ClientConfig::new(CLUSTER)))
        .await
        .expect("connect");
    assert_eq!(client.server_node_id(), 1);
    for i in 0..100u32 {
        let request = Bytes::from(i.to_be_bytes().to_vec());
        let response = within(client.call(request.clone())).await.expect("call");
        assert_eq!(response, request);
    }
    // An empty request is a valid request.
    assert_eq!(
        within(client.call(Bytes::new())).await.ok(),
        Some(Bytes::new())
    );

    // The server restarts (as node 5) on the same port: the client reconnects.
    let mut node = node;
    node.shutdown().await;
    let (node5, calls) = TcpTransport::bind(config(5, addr)).await.expect("rebind");
    tokio::spawn(echo(calls));
    let response = within(client.call(Bytes::from_static(b"again"))).await;
    assert_eq!(response.ok(), Some(Bytes::from_static(b"again")));
    assert_eq!(client.server_node_id(), 5);
    drop(node5);
}

#[tokio::test]
async fn client_call_times_out_and_recovers() {
    let (node, mut calls) = TcpTransport::bind(config(1, "127.0.0.1:0".parse().expect("addr")))
        .await
        .expect("bind");
    let mut cc = ClientConfig::new(CLUSTER);
    cc.call_timeout = Duration::from_millis(200);
    let mut client = within(TcpClient::connect(node.local_addr(), cc))
        .await
        .expect("connect");
    // The application sits on the first call.
    let r = client.call(Bytes::from_static(b"slow")).await;
    assert!(matches!(r, Err(TcpError::CallTimeout)), "{r:?}");
    let held = within(calls.recv()).await.expect("call");
    tokio::spawn(echo(calls));
    // The late answer goes to the dropped connection, not to the next call.
    held.respond(Bytes::from_static(b"late"));
    let r = within(client.call(Bytes::from_static(b"fast"))).await;
    assert_eq!(r.ok(), Some(Bytes::from_static(b"fast")));
}

#[tokio::test]
async fn client_connect_failures() {
    // Nothing listens there.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let r = within(TcpClient::connect(addr, ClientConfig::new(CLUSTER))).await;
    assert!(matches!(r, Err(TcpError::Io(_))), "{r:?}");

    // Something listens but never answers the handshake.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut cc = ClientConfig::new(CLUSTER);
    cc.handshake_timeout = Duration::from_millis(100);
    let r = within(TcpClient::connect(silent.local_addr().expect("addr"), cc)).await;
    assert!(matches!(r, Err(TcpError::HandshakeTimeout)), "{r:?}");

    // A bad configuration is refused up front.
    let mut cc = ClientConfig::new(CLUSTER);
    cc.max_frame_size = 0;
    let r = TcpClient::connect(addr, cc).await;
    assert!(matches!(r, Err(TcpError::Config(_))), "{r:?}");
}

#[tokio::test]
async fn shutdown_stops_everything_and_frees_the_port() {
    let mut ls = listeners(2).await;
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    let (mut n1, mut calls) =
        TcpTransport::from_listener(config(1, a1).with_peer(2, a2), l1).expect("n1");
    let (n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");
    deliver(&n2, &mut n1).await;

    within(n1.shutdown()).await;
    assert_eq!(within(n1.recv()).await, None);
    assert_eq!(n1.try_recv(), None);
    assert_eq!(n1.send(2, heartbeat(1, 1)), Err(TransportError::Closed));
    assert!(within(calls.recv()).await.is_none());
    // The port is free at once.
    let again = TcpTransport::bind(config(1, a1).with_peer(2, a2)).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let mut c = config(1, "127.0.0.1:0".parse().expect("addr"));
    c.peer_queue_capacity = 0;
    let r = TcpTransport::bind(c).await;
    assert!(matches!(r, Err(TcpError::Config(_))), "{:?}", r.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_on_a_multi_thread_runtime() {
    let mut ls = listeners(2).await;
    let (l2, a2) = ls.pop().expect("l2");
    let (l1, a1) = ls.pop().expect("l1");
    let (mut n1, calls) =
        TcpTransport::from_listener(config(1, a1).with_peer(2, a2), l1).expect("n1");
    let (mut n2, _) = TcpTransport::from_listener(config(2, a2).with_peer(1, a1), l2).expect("n2");
    tokio::spawn(echo(calls));
    deliver(&n1, &mut n2).await;
    deliver(&n2, &mut n1).await;
    let mut clients = Vec::new();
    for i in 0..4u8 {
        clients.push(tokio::spawn(async move {
            let mut c = TcpClient::connect(a1, ClientConfig::new(CLUSTER)).await?;
            for j in 0..50u8 {
                let r = c.call(Bytes::from(vec![i, j])).await?;
                assert_eq!(&r[..], &[i, j]);
            }
            Ok::<_, TcpError>(())
        }));
    }
    for c in clients {
        within(c).await.expect("join").expect("client");
    }
    n1.shutdown().await;
    n2.shutdown().await;
}
