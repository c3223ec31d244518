//! The node server and its remote client, end to end on 127.0.0.1.

use std::time::Duration;

use bytes::Bytes;
use paxos_core::{
    Endpoint, EndpointErrorKind, MemStorage, Reply, Request, Response, RestoreError, StateMachine,
};
use tokio::net::TcpListener;

use crate::{
    ClientConfig, ClusterConfig, NodeConfig, NodeRequest, NodeResponse, NodeServer,
    NodeServerOptions, RemoteCluster, RemoteError, RemoteOptions, ServerError, TcpClient,
    TcpConfig, TcpTransport,
};

const LIMIT: Duration = Duration::from_secs(10);

/// A counter: commands add, the query hook reads the total.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, n: u64) -> u64 {
        self.0 = self.0.saturating_add(n);
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let raw: [u8; 8] = bytes
            .try_into()
            .map_err(|_| RestoreError::new("want 8 bytes"))?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

/// A one-node cluster on a free port, served with `options`.
async fn lone_node(
    options: NodeServerOptions<Counter>,
) -> (NodeServer<Counter>, ClusterConfig, RemoteCluster) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ClusterConfig {
        nodes: vec![NodeConfig { id: 1, addr }],
        ..ClusterConfig::local_default()
    };
    let options = if options.query.is_some() {
        options
    } else {
        options.with_query(|c: &Counter, _: &[u8]| c.0.to_le_bytes().to_vec())
    };
    let server = NodeServer::start_on(
        listener,
        &config,
        1,
        Counter::default(),
        MemStorage::new(),
        options,
    )
    .expect("server starts");
    let remote = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    (server, config, remote)
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test step timed out")
}

#[tokio::test]
async fn a_node_serves_submissions_inspection_and_queries() {
    let (server, config, remote) = lone_node(NodeServerOptions::default()).await;
    let mut client = remote.client::<Counter>();
    assert_eq!(within(client.execute(&5)).await.expect("execute"), 5);
    assert_eq!(within(client.execute(&2)).await.expect("execute"), 7);

    let node = remote.node(1).expect("node 1");
    let status = within(node.status()).await.expect("status");
    assert!(status.available && status.is_voter() && status.is_available_leader());
    let view = within(node.query(Bytes::new())).await.expect("query");
    assert_eq!(&view.answer[..], &7u64.to_le_bytes());
    assert!(view.executed >= 3, "{view:?}");
    let log = within(node.log(0..u64::MAX)).await.expect("log");
    assert_eq!(log.len() as u64, status.replica.log_end);
    let last = within(node.slot(status.replica.log_end - 1))
        .await
        .expect("slot");
    assert_eq!(Some(&last), log.last());
    assert!(!within(node.view_changes()).await.expect("views").is_empty());

    // Bytes that are not a request are answered, and the node keeps serving.
    let mut raw = within(TcpClient::connect(
        server.local_addr(),
        ClientConfig::new(config.cluster_id),
    ))
    .await
    .expect("connect");
    let answer = within(raw.call(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n")))
        .await
        .expect("answered");
    assert_eq!(
        NodeResponse::decode(&answer).ok(),
        Some(NodeResponse::Error(ServerError::Malformed))
    );
    assert_eq!(within(client.execute(&1)).await.expect("execute"), 8);
    server.shutdown().await;
}

#[tokio::test]
async fn the_log_is_capped_to_its_latest_entries() {
    let mut options = NodeServerOptions::default();
    options.max_log_entries = 2;
    let (server, _, remote) = lone_node(options).await;
    let mut client = remote.client::<Counter>();
    for _ in 0..4 {
        within(client.execute(&1)).await.expect("execute");
    }
    let node = remote.node(1).expect("node 1");
    let end = within(node.status()).await.expect("status").replica.log_end;
    let log = within(node.log(0..u64::MAX)).await.expect("log");
    let slots: Vec<u64> = log.iter().map(|s| s.slot).collect();
    assert_eq!(slots, vec![end - 2, end - 1]);
    server.shutdown().await;
}

/// The query hook's input comes from any client: a hook that panics on some input
/// gets that query answered `QueryFailed`, and the replica keeps serving.
#[tokio::test]
async fn a_panicking_query_hook_does_not_stop_the_node() {
    let options = NodeServerOptions::default().with_query(|c: &Counter, q: &[u8]| {
        assert!(q != b"boom", "the hook does not expect this query");
        c.0.to_le_bytes().to_vec()
    });
    let (server, _, remote) = lone_node(options).await;
    let mut client = remote.client::<Counter>();
    assert_eq!(within(client.execute(&3)).await.expect("execute"), 3);
    let node = remote.node(1).expect("node 1");
    let err = within(node.query(Bytes::from_static(b"boom")))
        .await
        .expect_err("the hook panicked");
    assert!(
        matches!(
            err,
            RemoteError::Server {
                source: ServerError::QueryFailed,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!server.handle().is_stopped());
    assert_eq!(within(client.execute(&4)).await.expect("execute"), 7);
    let view = within(node.query(Bytes::new())).await.expect("query");
    assert_eq!(&view.answer[..], &7u64.to_le_bytes());
    server.shutdown().await;
}

/// A few bytes of `Log { 0..u64::MAX }` must not make the node copy and send the
/// whole log: with large values the answer stops at the byte budget (1 MiB by default),
/// says where by its first slot, and the rest can be paged back.
#[tokio::test]
async fn the_log_answer_is_capped_in_bytes() {
    /// Commands are blobs, kept nowhere: only the log holds them.
    #[derive(Default)]
    struct Blobs;
    impl StateMachine for Blobs {
        type Command = Vec<u8>;
        type Output = u64;
        fn apply(&mut self, blob: Vec<u8>) -> u64 {
            blob.len() as u64
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> {
            Ok(())
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ClusterConfig {
        nodes: vec![NodeConfig { id: 1, addr }],
        ..ClusterConfig::local_default()
    };
    let server = NodeServer::start_on(
        listener,
        &config,
        1,
        Blobs,
        MemStorage::new(),
        NodeServerOptions::default(),
    )
    .expect("server starts");
    let remote = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    let mut client = remote.client::<Blobs>();
    let blob = vec![0xAB; 200 * 1024];
    for _ in 0..8 {
        within(client.execute(&blob)).await.expect("execute");
    }
    let node = remote.node(1).expect("node 1");
    let end = within(node.status()).await.expect("status").replica.log_end;
    assert!(end >= 9, "{end}");

    let log = within(node.log(0..u64::MAX)).await.expect("log");
    let size = NodeResponse::Log(log.clone())
        .encode()
        .expect("encode")
        .len();
    assert!(size <= crate::DEFAULT_MAX_CLIENT_FRAME_SIZE, "{size} bytes");
    let slots: Vec<u64> = log.iter().map(|s| s.slot).collect();
    let first = slots[0];
    assert!(first > 0, "the whole log came back: {slots:?}");
    assert_eq!(slots, (first..end).collect::<Vec<_>>());

    // Paging back from the first slot returned reads the rest of the log.
    let mut all = slots;
    let mut before = first;
    while before > 0 {
        let page = within(node.log(0..before)).await.expect("log page");
        let Some(oldest) = page.first() else { break };
        before = oldest.slot;
        let mut page: Vec<u64> = page.iter().map(|s| s.slot).collect();
        page.append(&mut all);
        all = page;
    }
    assert_eq!(all, (0..end).collect::<Vec<_>>());
    server.shutdown().await;
}

/// Administrative calls are not open to every client: without test controls the two
/// bytes of `SetAvailable(false)` are refused and the replica keeps serving.
#[tokio::test]
async fn administrative_calls_need_test_controls() {
    let (server, config, remote) = lone_node(NodeServerOptions::default()).await;
    let node = remote.node(1).expect("node 1");
    let err = within(node.set_available(false))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            RemoteError::Server {
                source: ServerError::Forbidden,
                ..
            }
        ),
        "{err:?}"
    );
    // The raw frame, as any handshaken client could send it.
    let frame = NodeRequest::SetAvailable(false).encode().expect("encode");
    let mut raw = within(TcpClient::connect(
        server.local_addr(),
        ClientConfig::new(config.cluster_id),
    ))
    .await
    .expect("connect");
    for _ in 0..3 {
        let answer = within(raw.call(frame.clone())).await.expect("answered");
        assert_eq!(
            NodeResponse::decode(&answer).ok(),
            Some(NodeResponse::Error(ServerError::Forbidden))
        );
    }
    assert!(server.gate().is_open());
    assert!(within(node.status()).await.expect("status").available);
    let mut client = remote.client::<Counter>();
    assert_eq!(within(client.execute(&3)).await.expect("still serving"), 3);
    server.shutdown().await;

    // With test controls, the same call makes the replica unavailable.
    let (server, _, remote) =
        lone_node(NodeServerOptions::default().with_test_controls(true)).await;
    let node = remote.node(1).expect("node 1");
    within(node.set_available(false)).await.expect("allowed");
    assert!(!server.gate().is_open());
    assert!(!within(node.status()).await.expect("status").available);
    let err = within(node.submit(Request::register(9)))
        .await
        .expect_err("unavailable");
    assert!(matches!(err, RemoteError::Unavailable(1)), "{err:?}");
    within(node.set_available(true)).await.expect("allowed");
    assert!(server.gate().is_open());
    server.shutdown().await;
}

#[tokio::test]
async fn a_node_without_a_query_hook_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = ClusterConfig {
        nodes: vec![NodeConfig { id: 1, addr }],
        ..ClusterConfig::local_default()
    };
    let server = NodeServer::start_on(
        listener,
        &config,
        1,
        Counter::default(),
        MemStorage::new(),
        NodeServerOptions::default(),
    )
    .expect("server");
    let remote = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    let err = within(remote.node(1).expect("node").query(Bytes::new()))
        .await
        .expect_err("no hook");
    assert!(
        matches!(
            err,
            RemoteError::Server {
                source: ServerError::NoQuery,
                ..
            }
        ),
        "{err:?}"
    );
    server.shutdown().await;
}

/// A node's client port on 127.0.0.1 that answers every submit with `answer(request)`.
async fn scripted_node(answer: fn(&Request) -> NodeResponse) -> (TcpTransport, ClusterConfig) {
    let mut config = ClusterConfig::local_default();
    let tcp = TcpConfig::new(1, config.cluster_id, "127.0.0.1:0".parse().expect("addr"));
    let (node, mut calls) = TcpTransport::bind(tcp).await.expect("bind");
    config.nodes = vec![NodeConfig {
        id: 1,
        addr: node.local_addr(),
    }];
    tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            let response = match NodeRequest::decode(call.request()) {
                Ok(NodeRequest::Submit(request)) => answer(&request),
                _ => NodeResponse::Error(ServerError::Malformed),
            };
            call.respond(response.encode().expect("encode"));
        }
    });
    (node, config)
}

fn submit(client: u64, seq: u64) -> Request {
    Request {
        client,
        seq,
        payload: Bytes::from_static(b"cmd"),
    }
}

fn replied(client: u64, seq: u64, response: Response) -> NodeResponse {
    NodeResponse::Replied(Reply {
        client,
        seq,
        response,
    })
}

async fn endpoint_call(
    answer: fn(&Request) -> NodeResponse,
    request: Request,
) -> Result<Response, paxos_core::EndpointError> {
    let (mut node, config) = scripted_node(answer).await;
    let cluster = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    let endpoint = cluster.endpoints().remove(0);
    let result = within(endpoint.call(request)).await;
    node.shutdown().await;
    result.map(|reply| reply.response)
}

#[tokio::test]
async fn the_endpoint_refuses_an_answer_for_another_request() {
    // The node answers as if for the previous request of the same client.
    let e = endpoint_call(
        |r| replied(r.client, r.seq - 1, Response::Ok(Bytes::new())),
        submit(9, 4),
    )
    .await
    .expect_err("a mismatched answer is refused");
    assert_eq!(e.kind(), EndpointErrorKind::Protocol);
    let cause = std::error::Error::source(&e).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("answered c9#3 to request c9#4")),
        "{cause:?}"
    );
    // Another client's answer.
    let r = endpoint_call(
        |r| replied(r.client + 1, r.seq, Response::Stale),
        submit(9, 4),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
    // Not a reply at all.
    let r = endpoint_call(|_| NodeResponse::AvailabilitySet(true), submit(9, 4)).await;
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(EndpointErrorKind::Protocol)
    );
    // A stopped replica and an unavailable one.
    let r = endpoint_call(|_| NodeResponse::Error(ServerError::Stopped), submit(9, 4)).await;
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(EndpointErrorKind::Stopped)
    );
    let r = endpoint_call(|_| NodeResponse::Unavailable, submit(9, 4)).await;
    assert_eq!(
        r.map_err(|e| e.kind()).err(),
        Some(EndpointErrorKind::Unreachable)
    );
    // The request's own answer goes through.
    let r = endpoint_call(
        |r| replied(r.client, r.seq, Response::Ok(r.payload.clone())),
        submit(9, 4),
    )
    .await;
    assert_eq!(r.ok(), Some(Response::Ok(Bytes::from_static(b"cmd"))));
}

#[tokio::test]
async fn an_unreachable_node_fails_fast_with_its_cause() {
    // A port nothing listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let config = ClusterConfig {
        nodes: vec![NodeConfig { id: 4, addr }],
        ..ClusterConfig::local_default()
    };
    let remote = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    let err = within(remote.node(4).expect("node").status())
        .await
        .expect_err("refused");
    assert!(
        matches!(err, RemoteError::Transport { node: 4, .. }),
        "{err:?}"
    );
    assert!(std::error::Error::source(&err).is_some());
    assert!(matches!(remote.node(5), Err(RemoteError::UnknownNode(5))));
}

/// Three nodes on free ports of 127.0.0.1, each served with `options`.
async fn three_nodes(
    options: NodeServerOptions<Counter>,
) -> (Vec<NodeServer<Counter>>, RemoteCluster) {
    let mut listeners = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        nodes.push(NodeConfig { id, addr });
        listeners.push(listener);
    }
    let config = ClusterConfig {
        nodes,
        ..ClusterConfig::local_default()
    };
    let mut servers = Vec::new();
    for (listener, id) in listeners.into_iter().zip(1..) {
        let server = NodeServer::start_on(
            listener,
            &config,
            id,
            Counter::default(),
            MemStorage::new(),
            options.clone(),
        )
        .expect("server starts");
        servers.push(server);
    }
    let remote = RemoteCluster::new(&config, RemoteOptions::default()).expect("remote");
    (servers, remote)
}

/// The node that says it leads (and is available), waited for; not `not`.
async fn remote_leader(remote: &RemoteCluster, not: Option<u64>) -> u64 {
    within(async {
        loop {
            for node in remote.members() {
                if Some(node.id()) == not {
                    continue;
                }
                if node.status().await.is_ok_and(|s| s.is_available_leader()) {
                    return node.id();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

fn refused_with(err: &RemoteError) -> Option<ServerError> {
    match err {
        RemoteError::Server { source, .. } => Some(*source),
        _ => None,
    }
}

/// A leader transfer is an administrative call: without `admin_calls` it is refused
/// (test controls do not allow it either), and leadership stays where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_needs_admin_calls() {
    let (servers, remote) =
        three_nodes(NodeServerOptions::default().with_test_controls(true)).await;
    let mut client = remote.client::<Counter>();
    assert_eq!(within(client.execute(&1)).await.expect("execute"), 1);
    let leader = remote_leader(&remote, None).await;
    let target = if leader == 1 { 2 } else { 1 };
    let node = remote.node(leader).expect("leader");
    let err = within(node.transfer_leadership(target))
        .await
        .expect_err("refused");
    assert_eq!(refused_with(&err), Some(ServerError::Forbidden), "{err:?}");
    let answer = within(remote.call(leader, &NodeRequest::TransferLeader(target)))
        .await
        .expect("answered");
    assert_eq!(answer, NodeResponse::Error(ServerError::Forbidden));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(within(node.status())
        .await
        .expect("status")
        .is_available_leader());
    for s in servers {
        s.shutdown().await;
    }
}

/// With `admin_calls`, the leader hands over to the node named, promptly, and the
/// cluster serves on under it; refusals name their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_the_node_named() {
    let (servers, remote) = three_nodes(NodeServerOptions::default().with_admin_calls(true)).await;
    let mut client = remote.client::<Counter>();
    assert_eq!(within(client.execute(&1)).await.expect("execute"), 1);
    let old = remote_leader(&remote, None).await;
    let target = if old == 3 { 2 } else { 3 };
    let other = (1..=3).find(|&n| n != old && n != target).expect("a third");
    let leader = remote.node(old).expect("leader");

    let err = within(leader.transfer_leadership(old))
        .await
        .expect_err("refused");
    assert_eq!(
        refused_with(&err),
        Some(ServerError::AlreadyLeader),
        "{err:?}"
    );
    let err = within(leader.transfer_leadership(9))
        .await
        .expect_err("refused");
    assert_eq!(
        refused_with(&err),
        Some(ServerError::NotAMember(9)),
        "{err:?}"
    );
    let err = within(
        remote
            .node(other)
            .expect("node")
            .transfer_leadership(target),
    )
    .await
    .expect_err("refused");
    assert!(
        matches!(refused_with(&err), Some(ServerError::NotLeader { .. })),
        "{err:?}"
    );

    let started = std::time::Instant::now();
    within(leader.transfer_leadership(target))
        .await
        .expect("transfer starts");
    let new = remote_leader(&remote, Some(old)).await;
    let took = started.elapsed();
    assert_eq!(new, target);
    assert!(took < Duration::from_secs(5), "the transfer took {took:?}");
    eprintln!("leadership moved n{old} -> n{target} in {took:?}");
    // Nothing chosen is lost; the cluster serves on under its new leader.
    assert_eq!(within(client.execute(&2)).await.expect("execute"), 3);
    let status = within(remote.node(target).expect("node").status())
        .await
        .expect("status");
    assert!(status.is_available_leader(), "{status:?}");
    for s in servers {
        s.shutdown().await;
    }
}
