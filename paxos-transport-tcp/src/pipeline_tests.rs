//! Pipelined calls of [`RemoteNode`]: many calls on one connection, answers matched to
//! their callers through cancellations, connections that fail or stall, the bounds on
//! connections and calls, and nothing left running once the cluster is dropped.
//!
//! The node is a scripted server on 127.0.0.1 (port 0) that speaks the client protocol
//! by hand: it pipelines and answers in request order like a real node, and does what
//! each [`NodeRequest::Query`] asks (answer after a delay, close the connection, never
//! answer, answer with a wrong call id). It counts the connections it accepts and holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};
use paxos_core::{AcceptorStatus, NodeId};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::wire::{self, Hello, HelloReply, PROTOCOL_VERSION};
use crate::{
    ClusterConfig, NodeConfig, NodeRequest, NodeResponse, RemoteCluster, RemoteError, RemoteNode,
    RemoteOptions, StateView, TcpConfig, TcpError,
};

const CLUSTER: u64 = 0x91FE;
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: Future>(f: F) -> F::Output {
    timeout(LIMIT, f).await.expect("test step timed out")
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(5)).await;
    }
}

// ------------------------------------------------------------ the scripted node

/// What the scripted node does with a query.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Act {
    /// Echo the query's bytes as its answer, after its delay.
    Echo = 0,
    /// Close the connection after the delay, answering nothing more, even the calls
    /// before it.
    Close = 1,
    /// Like `Close` the first time the node sees it; `Echo` after that.
    CloseOnce = 2,
    /// Never answer (the answers behind it wait too, as answers go in order).
    Hang = 3,
    /// Answer after the delay, with a call id that is not the request's.
    WrongId = 4,
}

/// A query for the scripted node: its delay, what to do, and a name (the answer, when
/// echoed, is the query's bytes, so it names its request).
fn q(delay_ms: u16, act: Act, name: &str) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u16(delay_ms);
    b.put_u8(act as u8);
    b.put_slice(name.as_bytes());
    b.freeze()
}

fn parse(query: &[u8]) -> (u64, u8) {
    match query {
        [a, b, act, ..] => (u64::from(u16::from_be_bytes([*a, *b])), *act),
        _ => (0, Act::Echo as u8),
    }
}

struct Script {
    addr: std::net::SocketAddr,
    /// Connections accepted (handshake done), ever.
    accepted: Arc<AtomicUsize>,
    /// Connections whose task still runs.
    open: Arc<AtomicUsize>,
    /// The most requests outstanding at once on one connection.
    max_outstanding: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Drop for Script {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[derive(Clone)]
struct Counters {
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    max_outstanding: Arc<AtomicUsize>,
    closed_once: Arc<AtomicBool>,
}

/// Starts a scripted node whose handshake says it is node `node_id`.
async fn script(node_id: NodeId) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counters = Counters {
        accepted: Arc::default(),
        open: Arc::default(),
        max_outstanding: Arc::default(),
        closed_once: Arc::default(),
    };
    let c = counters.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let c = c.clone();
            c.open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                serve(stream, node_id, &c).await;
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Script {
        addr,
        accepted: counters.accepted,
        open: counters.open,
        max_outstanding: counters.max_outstanding,
        accept,
    }
}

type Answer = Pin<Box<dyn Future<Output = (u64, Bytes)> + Send>>;

/// One connection of the scripted node: handshake, then requests read and answered in
/// order, many outstanding at once (like a real node's connection). Ends when the
/// client goes away or a query says to close.
async fn serve(stream: TcpStream, node_id: NodeId, c: &Counters) {
    let mut framed = Framed::new(stream, LengthDelimitedCodec::new());
    let Some(Ok(hello)) = framed.next().await else {
        return;
    };
    if wire::decode_handshake::<Hello>(&hello).is_err() {
        return;
    }
    let reply = HelloReply::Accepted {
        cluster_id: CLUSTER,
        node_id,
    };
    let reply = wire::encode_handshake(PROTOCOL_VERSION, &reply).expect("encode");
    if framed.send(reply).await.is_err() {
        return;
    }
    c.accepted.fetch_add(1, Ordering::SeqCst);
    let mut pending: FuturesOrdered<Answer> = FuturesOrdered::new();
    loop {
        tokio::select! {
            frame = framed.next() => {
                let Some(Ok(frame)) = frame else { return };
                let Some((id, body)) = frame.split_first_chunk::<8>() else { return };
                let call = u64::from_be_bytes(*id);
                let query = match NodeRequest::decode(body) {
                    Ok(NodeRequest::Query(query)) => query,
                    _ => Bytes::from_static(b"not a query"),
                };
                let (delay, act) = parse(&query);
                let act = match act {
                    2 if !c.closed_once.swap(true, Ordering::SeqCst) => Act::Close as u8,
                    2 => Act::Echo as u8,
                    other => other,
                };
                if act == Act::Close as u8 {
                    // At once, whatever is outstanding before it.
                    sleep(Duration::from_millis(delay)).await;
                    return;
                }
                let answer: Answer = Box::pin(async move {
                    sleep(Duration::from_millis(delay)).await;
                    match act {
                        3 => futures::future::pending().await,
                        4 => (call + 1000, query),
                        _ => (call, query),
                    }
                });
                pending.push_back(answer);
                c.max_outstanding.fetch_max(pending.len(), Ordering::SeqCst);
            }
            Some(answer) = pending.next(), if !pending.is_empty() => {
                let (call, query) = answer;
                let view = StateView {
                    node: node_id,
                    available: true,
                    acceptor: AcceptorStatus::Voter,
                    executed: 0,
                    answer: query,
                };
                let body = NodeResponse::Query(view).encode().expect("encode");
                let mut out = BytesMut::new();
                out.put_u64(call);
                out.put_u8(wire::tag::OK);
                out.put_slice(&body);
                if framed.send(out.freeze()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn options() -> RemoteOptions {
    RemoteOptions {
        call_timeout: Duration::from_secs(3),
        ..RemoteOptions::default()
    }
}

/// A cluster of one node, 1, at the scripted node's address.
fn cluster(script: &Script, options: RemoteOptions) -> RemoteCluster {
    let config = ClusterConfig {
        cluster_id: CLUSTER,
        nodes: vec![NodeConfig {
            id: 1,
            addr: script.addr,
        }],
        ..ClusterConfig::local_default()
    };
    RemoteCluster::new(&config, options).expect("remote cluster")
}

/// Queries; `Err` unless the answer is the query's own.
async fn own(node: &RemoteNode, query: Bytes) -> Result<(), String> {
    match node.query(query.clone()).await {
        Ok(view) if view.answer == query => Ok(()),
        Ok(view) => Err(format!(
            "query {query:?} was answered {:?}, another call's answer",
            view.answer
        )),
        Err(e) => Err(format!("query {query:?} failed: {e}")),
    }
}

// ------------------------------------------------------------ the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_on_one_connection_get_their_own_answers() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    let calls = (0..300u16).map(|i| {
        let node = node.clone();
        tokio::spawn(async move { own(&node, q(i % 17, Act::Echo, &format!("call {i}"))).await })
    });
    for result in within(futures::future::join_all(calls)).await {
        result.expect("task").expect("own answer");
    }
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 1);
    let most = node_server.max_outstanding.load(Ordering::SeqCst);
    // Pipelined, and never more than the node takes at once on one connection.
    assert!(most > 16, "at most {most} calls were in flight at once");
    assert!(
        most <= TcpConfig::new(1, 1, node_server.addr).max_client_inflight,
        "{most} calls in flight at once"
    );
    assert_eq!(node.discarded_responses(), 0);
}

/// Calls cut short, with their answers still outstanding, while other calls run on the
/// same connection: every call that returns an answer gets its own, the connection is
/// kept, the late answers are read and discarded, and their slots come back. `Err`
/// says what went wrong (the test with matching deliberately broken expects one).
async fn cancelled_calls_keep_later_answers_in_place(broken: bool) -> Result<(), String> {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            call_timeout: Duration::from_secs(2),
            broken_matching: broken,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();

    // Cut short while its answer is still outstanding; later calls queue behind it.
    let cut = timeout(
        Duration::from_millis(50),
        node.query(q(300, Act::Echo, "first")),
    )
    .await;
    if cut.is_ok() {
        return Err(format!("not cut: {cut:?}"));
    }
    let later = (0..5).map(|i| own(&node, q(0, Act::Echo, &format!("second {i}"))));
    for r in futures::future::join_all(later).await {
        r?;
    }

    // Calls cut at random among calls that complete, from several tasks at once.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15_u64 ^ (t + 1).wrapping_mul(0xA24B_AED4_963E_E407);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            for i in 0..30 {
                let delay = next(20) as u16;
                let query = q(delay, Act::Echo, &format!("task {t} call {i}"));
                if next(3) == 0 {
                    let cut = Duration::from_millis(next(15));
                    let _ = timeout(cut, node.query(query)).await;
                } else {
                    own(&node, query).await?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    own(&node, q(0, Act::Echo, "last")).await?;

    let accepted = node_server.accepted.load(Ordering::SeqCst);
    if accepted != 1 {
        return Err(format!("{accepted} connections; cancellations closed some"));
    }
    // Every late answer arrives, is discarded, and frees its slot.
    let deadline = Instant::now() + LIMIT;
    while node.pool().loads() != [0] {
        if Instant::now() > deadline {
            return Err(format!("slots still taken: {:?}", node.pool().loads()));
        }
        sleep(Duration::from_millis(5)).await;
    }
    if node.discarded_responses() == 0 {
        return Err("no late answer was discarded".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_do_not_shift_answers_onto_other_callers() {
    within(cancelled_calls_keep_later_answers_in_place(false))
        .await
        .unwrap();
}

/// The check above catches a pipeline that forgets cancelled calls: with matching
/// deliberately broken (each answer to the oldest caller still waiting, whatever its
/// call id), a later call gets the answer of the call cut short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_matching_is_caught() {
    let e = within(cancelled_calls_keep_later_answers_in_place(true))
        .await
        .unwrap_err();
    assert!(
        e.contains("another call's answer") && e.contains("first"),
        "{e}"
    );
}

/// A connection the node drops with calls in flight fails every one of them with a
/// transport error; the next call opens a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_fails_its_calls_in_flight_and_the_next_call_reconnects() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    let pool = node.pool();
    let lease = within(pool.acquire()).await.expect("lease");
    assert!(lease.is_fresh());
    let warm = NodeRequest::Query(q(0, Act::Echo, "warm"))
        .encode()
        .expect("encode");
    within(lease.call(warm)).await.expect("answered");

    let mut calls = Vec::new();
    for i in 0..8 {
        let lease = within(pool.acquire()).await.expect("lease");
        assert!(!lease.is_fresh());
        let request = NodeRequest::Query(q(2000, Act::Echo, &format!("slow {i}")))
            .encode()
            .expect("encode");
        calls.push(tokio::spawn(lease.call(request)));
    }
    let lease = within(pool.acquire()).await.expect("lease");
    let close = NodeRequest::Query(q(50, Act::Close, "close"))
        .encode()
        .expect("encode");
    calls.push(tokio::spawn(lease.call(close)));
    let started = Instant::now();
    for call in calls {
        let r = within(call).await.expect("task");
        assert!(
            matches!(r, Err(TcpError::Closed | TcpError::Io(_))),
            "{r:?}"
        );
    }
    // Failed when the connection went, not after the slow answers' delay.
    assert!(started.elapsed() < Duration::from_millis(1500));
    until("the connection's tasks end", || {
        pool.open_connections() == 0
    })
    .await;

    within(own(&node, q(0, Act::Echo, "after"))).await.unwrap();
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 2);
}

/// Calls on a pooled connection that the node drops are tried once more, on a new
/// connection, and succeed; the call that asked the node to close is answered when
/// repeated (the node closes only once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_pooled_connection_the_node_dropped_are_tried_once_more() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    within(own(&node, q(0, Act::Echo, "warm"))).await.unwrap();
    let mut calls = Vec::new();
    for i in 0..8 {
        let node = node.clone();
        calls.push(tokio::spawn(async move {
            own(&node, q(200, Act::Echo, &format!("slow {i}"))).await
        }));
    }
    sleep(Duration::from_millis(20)).await;
    calls.push(tokio::spawn({
        let node = node.clone();
        async move { own(&node, q(20, Act::CloseOnce, "close once")).await }
    }));
    for call in calls {
        within(call)
            .await
            .expect("task")
            .expect("answered when tried again");
    }
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 2);
}

/// An answer with another call id than the oldest outstanding call's is a protocol
/// violation: every call on the connection fails, none is retried, none gets another's
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_out_of_order_fails_the_connection() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    within(own(&node, q(0, Act::Echo, "warm"))).await.unwrap();
    let wrong = tokio::spawn({
        let node = node.clone();
        async move { node.query(q(50, Act::WrongId, "wrong")).await }
    });
    sleep(Duration::from_millis(10)).await;
    let behind = node.query(q(0, Act::Echo, "behind"));
    let (wrong, behind) = within(async { tokio::join!(wrong, behind) }).await;
    for r in [wrong.expect("task"), behind] {
        assert!(
            matches!(
                r,
                Err(RemoteError::Transport {
                    source: TcpError::Protocol(_),
                    ..
                })
            ),
            "{r:?}"
        );
    }
    within(own(&node, q(0, Act::Echo, "after"))).await.unwrap();
}

/// A call the node never answers times out; once its connection's oldest call has
/// waited past the stall limit the connection is closed (the calls behind it fail),
/// and later calls use a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_is_closed() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            call_timeout: Duration::from_millis(100),
            submit_timeout: Duration::from_millis(100),
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    let r = within(node.query(q(0, Act::Hang, "hang"))).await;
    assert!(matches!(r, Err(RemoteError::Timeout { .. })), "{r:?}");
    // Stall limit: twice the longest call timeout.
    until("the node sees the stalled connection close", || {
        node_server.open.load(Ordering::SeqCst) == 0
    })
    .await;
    within(own(&node, q(0, Act::Echo, "after"))).await.unwrap();
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 2);
}

/// Calls spread over up to `connections_per_node` connections, at most
/// `calls_per_connection` on each; beyond that they wait for a free slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_a_bounded_number_of_connections() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 3,
            calls_per_connection: 4,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    // One caller at a time needs one connection.
    for i in 0..5 {
        within(own(&node, q(0, Act::Echo, &format!("one {i}"))))
            .await
            .unwrap();
    }
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 1);

    let mut calls = Vec::new();
    for i in 0..13 {
        let node = node.clone();
        calls.push(tokio::spawn(async move {
            own(&node, q(300, Act::Echo, &format!("busy {i}"))).await
        }));
    }
    until("three connections carry four calls each", || {
        let mut loads = node.pool().loads();
        loads.sort_unstable();
        loads == [4, 4, 4]
    })
    .await;
    for call in calls {
        within(call).await.expect("task").expect("own answer");
    }
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 3);
    assert!(node_server.max_outstanding.load(Ordering::SeqCst) <= 4);
    assert_eq!(node.pool().open_connections(), 3);
}

/// A call cut short keeps its slot until its answer arrives (the node still counts
/// it), so a connection is never asked to carry more than its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_keeps_its_slot_until_its_answer_arrives() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            calls_per_connection: 2,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    for name in ["a", "b"] {
        let cut = timeout(
            Duration::from_millis(30),
            node.query(q(300, Act::Echo, name)),
        )
        .await;
        assert!(cut.is_err(), "{cut:?}");
    }
    assert_eq!(node.pool().loads(), [2]);
    let started = Instant::now();
    within(own(&node, q(0, Act::Echo, "c"))).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(node.discarded_responses(), 2);
    assert_eq!(node_server.max_outstanding.load(Ordering::SeqCst), 2);
    assert_eq!(node_server.accepted.load(Ordering::SeqCst), 1);
}

/// With every slot taken, callers get slots in the order they asked: callers that call
/// again as soon as they have their answers (two of them here) do not starve one
/// already waiting. Ten rounds, as an unfair pool lets the waiter through now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_callers_are_served_in_turn() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            connections_per_node: 1,
            calls_per_connection: 1,
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hot: Vec<_> = (0..2)
        .map(|h| {
            let (node, served, stop) = (node.clone(), served.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    own(&node, q(0, Act::Echo, &format!("hot {h}.{i}"))).await?;
                    served.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    until("the hot callers are under way", || {
        served.load(Ordering::SeqCst) >= 4
    })
    .await;
    let mut overtaken = Vec::new();
    for round in 0..10 {
        let asked = served.load(Ordering::SeqCst);
        within(own(&node, q(0, Act::Echo, &format!("waiter {round}"))))
            .await
            .unwrap();
        overtaken.push(served.load(Ordering::SeqCst) - asked);
    }
    stop.store(true, Ordering::SeqCst);
    for hot in hot {
        within(hot).await.expect("task").unwrap();
    }
    // Each hot caller may have an answer not yet counted when the waiter asks, and
    // one call in flight or in line before the waiter's: at most two each.
    assert!(
        overtaken.iter().all(|&n| n <= 4),
        "hot calls served while each waiter waited: {overtaken:?}"
    );
}

/// An address that answers as another node is refused, and no connection to it is kept.
#[tokio::test]
async fn a_connection_to_the_wrong_node_is_not_used() {
    let node_server = script(9).await;
    let remote = cluster(&node_server, options());
    let node = remote.node(1).expect("node").clone();
    for _ in 0..2 {
        let r = within(node.query(q(0, Act::Echo, "who"))).await;
        assert!(
            matches!(
                r,
                Err(RemoteError::WrongNode {
                    expected: 1,
                    found: 9,
                    ..
                })
            ),
            "{r:?}"
        );
    }
    assert!(node.pool().loads().is_empty());
    assert_eq!(node.pool().open_connections(), 0);
}

/// Dropping the cluster, even with answers still outstanding, ends every connection's
/// tasks and closes every socket: the node sees its connections close, and the runtime
/// is back to the tasks it had before.
#[tokio::test]
async fn dropping_the_cluster_ends_its_tasks_and_closes_its_connections() {
    let node_server = script(1).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let remote = cluster(&node_server, options());
    let node = remote.node(1).expect("node").clone();
    let calls = (0..100).map(|i| own(&node, q(i % 7, Act::Echo, &format!("call {i}"))));
    for r in within(futures::future::join_all(calls)).await {
        r.unwrap();
    }
    // Calls cut short: their answers are still outstanding when the cluster goes.
    for i in 0..3 {
        let cut = timeout(
            Duration::from_millis(20),
            node.query(q(5000, Act::Echo, &format!("late {i}"))),
        )
        .await;
        assert!(cut.is_err());
    }
    let connections = node.pool().open_connections();
    assert!((1..=16).contains(&connections), "{connections} connections");
    assert!(metrics.num_alive_tasks() >= before + 2 * connections);
    drop(node);
    drop(remote);
    until("the node sees every connection close", || {
        node_server.open.load(Ordering::SeqCst) == 0
    })
    .await;
    until("the tasks end", || metrics.num_alive_tasks() == before).await;
}

#[test]
fn options_are_checked_and_defaults_fit_a_node() {
    let config = ClusterConfig::localhost(1, 7001);
    for bad in [
        RemoteOptions {
            calls_per_connection: 0,
            ..RemoteOptions::default()
        },
        RemoteOptions {
            connections_per_node: 0,
            ..RemoteOptions::default()
        },
        RemoteOptions {
            calls_per_connection: (1 << 16) + 1,
            ..RemoteOptions::default()
        },
    ] {
        assert!(matches!(
            RemoteCluster::new(&config, bad),
            Err(RemoteError::Options(_))
        ));
    }
    let node = TcpConfig::new(1, 1, "127.0.0.1:7001".parse().expect("addr"));
    let remote = RemoteOptions::default();
    assert_eq!(remote.calls_per_connection, node.max_client_inflight);
    assert_eq!(
        remote.calls_per_connection,
        crate::DEFAULT_CALLS_PER_CONNECTION
    );
    assert!(remote.connections_per_node <= node.max_client_connections_per_ip);
}

/// Review: the node answers a connection's calls in order, so a quick call (status,
/// query, log) that shares a connection with a slow one (a Submit the node holds up to
/// its `submit_timeout` while it has no quorum, even one its caller gave up on) waits
/// behind it. With the default options a call gets a connection of its own while fewer
/// than `connections_per_node` (16) are busy: four slow calls do not hold up a fifth
/// (with the first default of 4 connections, this failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_a_quick_call_is_not_stuck_behind_slow_ones() {
    let node_server = script(1).await;
    let remote = cluster(
        &node_server,
        RemoteOptions {
            call_timeout: Duration::from_secs(1),
            ..options()
        },
    );
    let node = remote.node(1).expect("node").clone();
    let slow: Vec<_> = (0..4)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                let _ = node.query(q(4000, Act::Echo, &format!("slow {i}"))).await;
            })
        })
        .collect();
    until("every connection carries a slow call", || {
        node.pool().loads() == [1, 1, 1, 1]
    })
    .await;
    let r = own(&node, q(0, Act::Echo, "quick")).await;
    for s in slow {
        s.abort();
    }
    assert!(r.is_ok(), "{r:?}");
}

/// Review: a runtime that shuts down drops the connections' tasks without running
/// `ConnState::fail`, so the pool keeps the dead connections (their tokens never
/// cancelled, their load 0): every later call, on any runtime, takes one, finds its
/// writer gone (`Closed`), is retried once on the same dead connection, and fails. The
/// pool never reconnects. (The `TcpClient` pool before reconnected on the next call.)
#[test]
fn review_a_cluster_outlives_the_runtime_that_first_used_it() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let server_rt = runtime();
    let node_server = server_rt.block_on(script(1));
    let remote = cluster(&node_server, options());
    let node = remote.node(1).expect("node").clone();
    let first = runtime();
    first
        .block_on(within(own(&node, q(0, Act::Echo, "first"))))
        .unwrap();
    drop(first);
    let second = runtime();
    let r = second.block_on(within(own(&node, q(0, Act::Echo, "second"))));
    assert!(r.is_ok(), "{r:?}");
}
