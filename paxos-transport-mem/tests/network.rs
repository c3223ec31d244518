//! Behaviour of the in-process network: delivery, faults, and lifecycle.
//!
//! Most tests run on tokio's paused clock (`start_paused`), where timers fire in deadline
//! order as soon as the runtime is idle: "nothing arrives within 100 ms" costs no real
//! time, and delays are deterministic. A few run on the real clock and several threads.

use std::collections::BTreeMap;
use std::time::Duration;

use paxos_core::{Ballot, Message, NodeId, Transport, TransportError};
use paxos_transport_mem::{Faults, MemNetwork, MemTransport, NetStats};
use tokio::time::timeout;

/// A message carrying a number, so tests can tell messages apart.
fn msg(n: u64) -> Message {
    Message::Heartbeat {
        ballot: Ballot::new(1, 1),
        commit_point: n,
    }
}

/// The number carried by a message made with [`msg`].
fn num(m: &Message) -> u64 {
    match m {
        Message::Heartbeat { commit_point, .. } => *commit_point,
        other => panic!("unexpected message {other:?}"),
    }
}

/// Receives one message, failing the test if none arrives within a second.
async fn expect(t: &mut MemTransport) -> (NodeId, u64) {
    match timeout(Duration::from_secs(1), t.recv()).await {
        Ok(Some((from, m))) => (from, num(&m)),
        Ok(None) => panic!("node {} transport closed", t.id()),
        Err(_) => panic!("node {} received nothing", t.id()),
    }
}

/// Fails the test if a message arrives within 100 ms.
async fn expect_silence(t: &mut MemTransport) {
    if let Ok(got) = timeout(Duration::from_millis(100), t.recv()).await {
        panic!("node {} unexpectedly got {got:?}", t.id());
    }
}

/// Takes the transports of a three-node cluster 1, 2, 3 apart.
fn three(seed: u64) -> (MemNetwork, MemTransport, MemTransport, MemTransport) {
    let (net, nodes) = MemNetwork::cluster(seed, [1, 2, 3]);
    let mut it = nodes.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), Some(c)) => (net, a, b, c),
        _ => panic!("cluster returned too few transports"),
    }
}

#[tokio::test(start_paused = true)]
async fn delivers_in_order_with_sender_id() {
    let (net, n1, mut n2, mut n3) = three(1);
    assert_eq!(net.nodes(), vec![1, 2, 3]);
    for i in 0..1000 {
        n1.send(2, msg(i)).unwrap();
    }
    n3.send(2, msg(5000)).unwrap();
    for i in 0..1000 {
        assert_eq!(expect(&mut n2).await, (1, i));
    }
    assert_eq!(expect(&mut n2).await, (3, 5000));
    expect_silence(&mut n3).await;
    assert_eq!(
        net.stats(),
        NetStats {
            sent: 1001,
            delivered: 1001,
            dropped: 0,
            duplicated: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn try_recv_returns_only_queued_messages() {
    let (_net, n1, mut n2, _n3) = three(1);
    assert_eq!(n2.try_recv(), None);
    for i in 0..3 {
        n1.send(2, msg(i)).unwrap();
    }
    let batch: Vec<_> = std::iter::from_fn(|| n2.try_recv())
        .map(|(from, m)| (from, num(&m)))
        .collect();
    assert_eq!(batch, vec![(1, 0), (1, 1), (1, 2)]);
    assert_eq!(n2.try_recv(), None);
}

#[tokio::test(start_paused = true)]
async fn node_can_send_to_itself() {
    let (_net, mut n1, _n2, _n3) = three(1);
    n1.send(1, msg(9)).unwrap();
    assert_eq!(expect(&mut n1).await, (1, 9));
}

#[tokio::test(start_paused = true)]
async fn unknown_peer_is_an_error() {
    let (net, n1, _n2, _n3) = three(1);
    assert_eq!(n1.send(99, msg(0)), Err(TransportError::UnknownPeer(99)));
    assert_eq!(net.stats().sent, 0, "failed sends are not counted");
}

#[tokio::test(start_paused = true)]
async fn crash_drops_both_directions() {
    let (net, mut n1, mut n2, mut n3) = three(1);
    net.crash(2);
    assert!(net.is_crashed(2));
    // A crashed node's peers and the node itself see sends succeed: loss is silent.
    n1.send(2, msg(1)).unwrap();
    n2.send(1, msg(2)).unwrap();
    n2.send(3, msg(3)).unwrap();
    expect_silence(&mut n2).await;
    expect_silence(&mut n1).await;
    expect_silence(&mut n3).await;
    // The others still talk.
    n1.send(3, msg(4)).unwrap();
    assert_eq!(expect(&mut n3).await, (1, 4));
    let s = net.stats();
    assert_eq!((s.sent, s.dropped, s.delivered), (4, 3, 1));
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_but_messages_lost_in_the_crash_stay_lost() {
    let (net, mut n1, mut n2, _n3) = three(1);
    // Queued at node 2 before the crash: lost with the crash.
    n1.send(2, msg(1)).unwrap();
    net.crash(2);
    net.restart(2);
    assert!(!net.is_crashed(2));
    assert_eq!(n2.try_recv(), None);
    // After the restart, both directions work again.
    n1.send(2, msg(2)).unwrap();
    n2.send(1, msg(3)).unwrap();
    assert_eq!(expect(&mut n2).await, (1, 2));
    assert_eq!(expect(&mut n1).await, (2, 3));
    let s = net.stats();
    assert_eq!((s.sent, s.dropped, s.delivered), (3, 1, 2));
}

#[tokio::test(start_paused = true)]
async fn message_in_flight_to_a_crashing_node_is_lost() {
    let (net, n1, mut n2, _n3) = three(1);
    net.set_faults(Faults {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        ..Faults::none()
    });
    n1.send(2, msg(1)).unwrap();
    net.crash(2);
    net.restart(2); // back before the message lands, but it was addressed to the old life
    expect_silence(&mut n2).await;
    assert_eq!(net.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn partition_splits_and_heal_rejoins() {
    let (net, mut n1, mut n2, mut n3) = three(1);
    let mut n4 = net.join(4); // in no group: talks to nobody
    net.partition(&[&[1, 2], &[3]]);
    n1.send(2, msg(1)).unwrap();
    n2.send(1, msg(2)).unwrap();
    assert_eq!(expect(&mut n2).await, (1, 1));
    assert_eq!(expect(&mut n1).await, (2, 2));
    n1.send(3, msg(3)).unwrap();
    n3.send(1, msg(4)).unwrap();
    n3.send(2, msg(5)).unwrap();
    n4.send(1, msg(6)).unwrap();
    n1.send(4, msg(7)).unwrap();
    expect_silence(&mut n1).await;
    expect_silence(&mut n3).await;
    expect_silence(&mut n4).await;
    assert_eq!(net.stats().dropped, 5);

    net.heal();
    n1.send(3, msg(8)).unwrap();
    n3.send(1, msg(9)).unwrap();
    n4.send(2, msg(10)).unwrap();
    assert_eq!(expect(&mut n3).await, (1, 8));
    assert_eq!(expect(&mut n1).await, (3, 9));
    assert_eq!(expect(&mut n2).await, (4, 10));
}

#[tokio::test(start_paused = true)]
async fn isolate_cuts_a_node_off_until_heal() {
    let (net, mut n1, mut n2, mut n3) = three(1);
    net.isolate(3);
    n1.send(3, msg(1)).unwrap();
    n3.send(2, msg(2)).unwrap();
    expect_silence(&mut n3).await;
    expect_silence(&mut n2).await;
    n1.send(2, msg(3)).unwrap();
    assert_eq!(expect(&mut n2).await, (1, 3));
    n3.send(3, msg(4)).unwrap();
    assert_eq!(expect(&mut n3).await, (3, 4), "a node still reaches itself");

    net.heal();
    n3.send(1, msg(5)).unwrap();
    assert_eq!(expect(&mut n1).await, (3, 5));
}

#[tokio::test(start_paused = true)]
async fn heal_does_not_restart_crashed_nodes() {
    let (net, n1, mut n2, _n3) = three(1);
    net.crash(2);
    net.heal();
    n1.send(2, msg(1)).unwrap();
    expect_silence(&mut n2).await;
}

#[tokio::test(start_paused = true)]
async fn block_is_one_way() {
    let (net, mut n1, mut n2, _n3) = three(1);
    net.block(1, 2);
    n1.send(2, msg(1)).unwrap();
    n2.send(1, msg(2)).unwrap();
    expect_silence(&mut n2).await;
    assert_eq!(expect(&mut n1).await, (2, 2));

    net.heal();
    n1.send(2, msg(3)).unwrap();
    assert_eq!(expect(&mut n2).await, (1, 3));
}

#[tokio::test(start_paused = true)]
async fn drop_rate_one_drops_everything() {
    let (net, n1, mut n2, _n3) = three(1);
    net.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::none()
    });
    for i in 0..100 {
        n1.send(2, msg(i)).unwrap();
    }
    expect_silence(&mut n2).await;
    let s = net.stats();
    assert_eq!((s.sent, s.dropped, s.delivered), (100, 100, 0));

    net.set_faults(Faults::none());
    n1.send(2, msg(7)).unwrap();
    assert_eq!(expect(&mut n2).await, (1, 7));
}

#[tokio::test(start_paused = true)]
async fn duplicate_rate_one_delivers_everything_twice() {
    let (net, n1, mut n2, _n3) = three(1);
    net.set_faults(Faults {
        duplicate_rate: 1.0,
        ..Faults::none()
    });
    for i in 0..10 {
        n1.send(2, msg(i)).unwrap();
    }
    let mut counts = BTreeMap::new();
    for _ in 0..20 {
        let (from, n) = expect(&mut n2).await;
        assert_eq!(from, 1);
        *counts.entry(n).or_insert(0) += 1;
    }
    expect_silence(&mut n2).await;
    assert_eq!(counts, (0..10).map(|i| (i, 2)).collect());
    let s = net.stats();
    assert_eq!((s.sent, s.duplicated, s.delivered), (10, 10, 20));
}

/// Sends `count` numbered messages from 1 to 2 under delays and returns the order in
/// which they arrived.
async fn arrival_order(seed: u64, count: u64) -> Vec<u64> {
    let (net, n1, mut n2, _n3) = three(seed);
    net.set_faults(Faults {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
        ..Faults::none()
    });
    for i in 0..count {
        n1.send(2, msg(i)).unwrap();
    }
    assert_eq!(
        n2.try_recv(),
        None,
        "delayed messages are not there at once"
    );
    let mut order = Vec::new();
    for _ in 0..count {
        order.push(expect(&mut n2).await.1);
    }
    order
}

#[tokio::test(start_paused = true)]
async fn delays_reorder_messages() {
    let order = arrival_order(42, 100).await;
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..100).collect::<Vec<_>>(),
        "each message exactly once"
    );
    let inversions = order.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 10, "expected reordering, got {order:?}");
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_choices() {
    // On the paused clock, timers fire in deadline order, so same choices => same order.
    assert_eq!(arrival_order(5, 50).await, arrival_order(5, 50).await);
    assert_ne!(arrival_order(5, 50).await, arrival_order(6, 50).await);

    async fn survivors(seed: u64) -> Vec<u64> {
        let (net, n1, mut n2, _n3) = three(seed);
        net.set_faults(Faults {
            drop_rate: 0.5,
            ..Faults::none()
        });
        for i in 0..200 {
            n1.send(2, msg(i)).unwrap();
        }
        std::iter::from_fn(|| n2.try_recv())
            .map(|(_, m)| num(&m))
            .collect()
    }
    let a = survivors(9).await;
    assert!((50..150).contains(&a.len()), "{} survived", a.len());
    assert_eq!(a, survivors(9).await);
    assert_ne!(a, survivors(10).await);
}

#[tokio::test(start_paused = true)]
async fn link_cut_while_in_flight_loses_the_message() {
    let (net, n1, mut n2, _n3) = three(1);
    net.set_faults(Faults {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(10),
        ..Faults::none()
    });
    n1.send(2, msg(1)).unwrap();
    net.block(1, 2);
    expect_silence(&mut n2).await;
    assert_eq!(net.stats().dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn full_queue_drops_instead_of_blocking() {
    let net = MemNetwork::with_queue_capacity(1, 4);
    let n1 = net.join(1);
    let mut n2 = net.join(2);
    for i in 0..10 {
        // `send` is synchronous: a full queue drops instead of waiting.
        n1.send(2, msg(i)).unwrap();
    }
    let got: Vec<_> = std::iter::from_fn(|| n2.try_recv())
        .map(|(_, m)| num(&m))
        .collect();
    assert_eq!(got, vec![0, 1, 2, 3]);
    let s = net.stats();
    assert_eq!((s.sent, s.delivered, s.dropped), (10, 4, 6));
}

#[tokio::test(start_paused = true)]
async fn removed_node_closes() {
    let (net, n1, mut n2, _n3) = three(1);
    let waiting = tokio::spawn(async move {
        let got = n2.recv().await;
        (got, n2)
    });
    tokio::task::yield_now().await;
    assert!(net.remove(2));
    assert!(!net.remove(2));
    let (got, n2) = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("a pending recv must wake on removal")
        .unwrap();
    assert_eq!(got, None);
    assert_eq!(net.nodes(), vec![1, 3]);
    assert_eq!(n1.send(2, msg(1)), Err(TransportError::UnknownPeer(2)));
    assert_eq!(n2.send(1, msg(2)), Err(TransportError::Closed));
}

#[tokio::test(start_paused = true)]
async fn removed_node_with_full_queue_closes() {
    let net = MemNetwork::with_queue_capacity(1, 2);
    let n1 = net.join(1);
    let mut n2 = net.join(2);
    for i in 0..2 {
        n1.send(2, msg(i)).unwrap();
    }
    net.remove(2);
    assert_eq!(n2.try_recv(), None);
    let got = timeout(Duration::from_secs(1), n2.recv()).await;
    assert_eq!(got, Ok(None));
}

#[tokio::test(start_paused = true)]
async fn rejoin_replaces_the_old_transport() {
    let (net, n1, mut old, _n3) = three(1);
    let mut new = net.join(2);
    assert_eq!(timeout(Duration::from_secs(1), old.recv()).await, Ok(None));
    assert_eq!(old.send(1, msg(0)), Err(TransportError::Closed));
    n1.send(2, msg(1)).unwrap();
    assert_eq!(expect(&mut new).await, (1, 1));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_network_closes_every_transport() {
    let (net, n1, mut n2, _n3) = three(1);
    let net2 = net.clone();
    let waiting = tokio::spawn(async move { n2.recv().await });
    tokio::task::yield_now().await;
    drop(net);
    // Another handle keeps the network open.
    n1.send(3, msg(1)).unwrap();
    drop(net2);
    let got = timeout(Duration::from_secs(1), waiting)
        .await
        .expect("a pending recv must wake when the network is dropped")
        .unwrap();
    assert_eq!(got, None);
    assert_eq!(n1.send(3, msg(2)), Err(TransportError::Closed));
}

/// Round trip through code that knows only the trait, as the node driver does.
async fn exchange<T: Transport>(a: &T, b: &mut T, m: Message) -> Option<(NodeId, Message)> {
    a.send(2, m).unwrap();
    b.recv().await
}

#[tokio::test(start_paused = true)]
async fn usable_through_the_trait() {
    let (_net, n1, mut n2, _n3) = three(1);
    let got = timeout(Duration::from_secs(1), exchange(&n1, &mut n2, msg(3)))
        .await
        .unwrap();
    assert_eq!(got, Some((1, msg(3))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_lose_nothing_without_faults() {
    const PER_PEER: u64 = 5_000;
    let (net, nodes) = MemNetwork::cluster(1, [1, 2, 3]);
    let ids: Vec<NodeId> = nodes.iter().map(|t| t.id()).collect();
    let mut tasks = Vec::new();
    for mut t in nodes {
        let peers: Vec<NodeId> = ids.iter().copied().filter(|&p| p != t.id()).collect();
        tasks.push(tokio::spawn(async move {
            let expected = PER_PEER * peers.len() as u64;
            let mut last: BTreeMap<NodeId, u64> = BTreeMap::new();
            let mut received = 0;
            for i in 0..PER_PEER {
                for &p in &peers {
                    t.send(p, msg(i)).unwrap();
                }
                while let Some((from, m)) = t.try_recv() {
                    let n = num(&m);
                    if let Some(prev) = last.insert(from, n) {
                        assert_eq!(n, prev + 1, "per-link order");
                    }
                    received += 1;
                }
            }
            while received < expected {
                let (from, m) = t.recv().await.expect("network open");
                let n = num(&m);
                if let Some(prev) = last.insert(from, n) {
                    assert_eq!(n, prev + 1, "per-link order");
                }
                received += 1;
            }
            received
        }));
    }
    let total = timeout(Duration::from_secs(5), async {
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    })
    .await
    .expect("all messages arrive");
    assert_eq!(total, 6 * PER_PEER);
    let s = net.stats();
    assert_eq!((s.sent, s.delivered, s.dropped), (total, total, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_delays_and_duplicates_arrive() {
    let (net, n1, mut n2, _n3) = three(3);
    net.set_faults(Faults {
        duplicate_rate: 0.5,
        min_delay: Duration::from_micros(100),
        max_delay: Duration::from_millis(3),
        ..Faults::none()
    });
    for i in 0..50 {
        n1.send(2, msg(i)).unwrap();
    }
    let s = net.stats();
    let expected = s.sent + s.duplicated;
    let mut seen = BTreeMap::new();
    for _ in 0..expected {
        let (_, n) = expect(&mut n2).await;
        *seen.entry(n).or_insert(0u32) += 1;
    }
    assert_eq!(seen.len(), 50, "every message arrives at least once");
    assert!(s.duplicated > 0);
    assert_eq!(net.stats().delivered, expected);
}
