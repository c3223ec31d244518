//! The node driver and the client handle, end to end over the in-memory network.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paxos_core::{
    spawn_node, Client, ClientOptions, Config, Endpoint, MemStorage, NodeHandle, NodeOptions,
    Request, Response, RestoreError, Role, StateMachine,
};
use paxos_transport_mem::{Faults, MemNetwork};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

/// A key-value store whose `Add` makes double execution visible.
#[derive(Default, Debug, PartialEq, Eq)]
struct Kv(BTreeMap<String, i64>);

#[derive(Serialize, Deserialize)]
enum Op {
    Add(String, i64),
    Get(String),
}

impl StateMachine for Kv {
    type Command = Op;
    type Output = i64;
    fn apply(&mut self, op: Op) -> i64 {
        match op {
            Op::Add(k, n) => {
                let v = self.0.entry(k).or_default();
                *v += n;
                *v
            }
            Op::Get(k) => self.0.get(&k).copied().unwrap_or(0),
        }
    }
    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).unwrap_or_default()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.0 = postcard::from_bytes(bytes).map_err(|e| RestoreError::new(e.to_string()))?;
        Ok(())
    }
    fn query(&self, op: &Op) -> Option<i64> {
        match op {
            Op::Get(k) => Some(self.0.get(k).copied().unwrap_or(0)),
            Op::Add(..) => None,
        }
    }
}

const LIMIT: Duration = Duration::from_secs(20);

fn options() -> NodeOptions {
    NodeOptions::default().with_tick(Duration::from_millis(2))
}

fn cluster(n: u64, seed: u64) -> (MemNetwork, Vec<NodeHandle<Kv>>) {
    let ids: Vec<u64> = (1..=n).collect();
    let (network, transports) = MemNetwork::cluster(seed, ids.clone());
    let nodes = transports
        .into_iter()
        .zip(&ids)
        .map(|(t, &id)| {
            let mut cfg = Config::new(id, ids.clone());
            cfg.seed = seed ^ id;
            spawn_node(cfg, Kv::default(), t, MemStorage::new(), options()).expect("node starts")
        })
        .collect();
    (network, nodes)
}

fn endpoints(nodes: &[NodeHandle<Kv>]) -> Vec<Arc<dyn Endpoint>> {
    nodes
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn Endpoint>)
        .collect()
}

fn client(nodes: &[NodeHandle<Kv>]) -> Client<Kv> {
    let options = ClientOptions::default().with_attempt_timeout(Duration::from_millis(200));
    Client::with_options(endpoints(nodes), options)
}

async fn leader(nodes: &[NodeHandle<Kv>], skip: &[u64]) -> NodeHandle<Kv> {
    loop {
        for n in nodes.iter().filter(|n| !skip.contains(&n.id())) {
            if let Ok(s) = n.status().await {
                if s.role == Role::Leader {
                    return n.clone();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every node in `nodes` has executed `upto` slots, then returns their states.
async fn converge(nodes: &[NodeHandle<Kv>], upto: u64) -> Vec<BTreeMap<String, i64>> {
    let mut states = Vec::new();
    for n in nodes {
        loop {
            let s = n.status().await.expect("node runs");
            if s.executed >= upto {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        states.push(n.with_state(|kv| kv.0.clone()).await.expect("node runs"));
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_agree() {
    timeout(LIMIT, async {
        let (_net, nodes) = cluster(3, 1);
        let mut c = client(&nodes);
        for i in 1..=50 {
            assert_eq!(
                c.execute(&Op::Add("x".into(), 1)).await.expect("executes"),
                i
            );
        }
        let done = leader(&nodes, &[])
            .await
            .status()
            .await
            .expect("runs")
            .commit_point;
        let states = converge(&nodes, done).await;
        assert!(states.iter().all(|s| s.get("x") == Some(&50)), "{states:?}");
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_to_the_leader() {
    timeout(LIMIT, async {
        let (_net, nodes) = cluster(3, 2);
        let l = leader(&nodes, &[]).await;
        // Wait until every follower knows the leader.
        for n in nodes.iter().filter(|n| n.id() != l.id()) {
            loop {
                if n.status().await.expect("runs").leader == Some(l.id()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let r = n
                .submit(Request::register(99))
                .await
                .expect("answers")
                .response;
            assert_eq!(
                r,
                Response::Redirect {
                    leader: Some(l.id())
                }
            );
        }
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failure_elects_a_new_leader_and_keeps_serving() {
    timeout(LIMIT, async {
        let (net, nodes) = cluster(5, 3);
        let mut c = client(&nodes);
        for _ in 0..10 {
            c.execute(&Op::Add("k".into(), 1)).await.expect("executes");
        }
        let old = leader(&nodes, &[]).await;
        net.crash(old.id());
        old.shutdown().await;
        for _ in 0..10 {
            c.execute(&Op::Add("k".into(), 1))
                .await
                .expect("executes after failover");
        }
        let new = leader(&nodes, &[old.id()]).await;
        assert_ne!(new.id(), old.id());
        let views = new.view_changes().await.expect("runs");
        assert!(
            views.iter().any(|v| v.leader == new.id()),
            "the new leader recorded its NEW-VIEW: {views:?}"
        );
        let alive: Vec<_> = nodes
            .iter()
            .filter(|n| n.id() != old.id())
            .cloned()
            .collect();
        let done = new.status().await.expect("runs").commit_point;
        let states = converge(&alive, done).await;
        assert!(states.iter().all(|s| s.get("k") == Some(&20)), "{states:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_retried_at_a_new_leader_is_not_executed_twice() {
    timeout(LIMIT, async {
        let (net, nodes) = cluster(3, 4);
        let old = leader(&nodes, &[]).await;
        // The cluster assigns the session: the reply to the registration carries its
        // id (the slot of the registration entry), which numbered requests must name.
        let registered = old
            .submit(Request::register(4242))
            .await
            .expect("answers")
            .response;
        let Response::Ok(payload) = registered else {
            panic!("registration answered {registered:?}");
        };
        let session: u64 = postcard::from_bytes(&payload).expect("a session id");
        let add = Request {
            client: session,
            seq: 1,
            payload: postcard::to_allocvec(&Op::Add("m".into(), 5))
                .expect("encodes")
                .into(),
        };
        let first = old.submit(add.clone()).await.expect("answers").response;
        assert!(matches!(first, Response::Ok(_)), "{first:?}");
        // The leader fails; the client, unsure, retries the same request elsewhere.
        net.crash(old.id());
        old.shutdown().await;
        let new = leader(&nodes, &[old.id()]).await;
        let retry = new.submit(add.clone()).await.expect("answers").response;
        assert_eq!(retry, first, "the retry gets the cached reply");
        let again = new.submit(add).await.expect("answers").response;
        assert_eq!(again, first);
        let m = new
            .with_state(|kv| kv.0.get("m").copied())
            .await
            .expect("runs");
        assert_eq!(m, Some(5), "money moved once");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_complete_over_a_lossy_network() {
    timeout(Duration::from_secs(40), async {
        let (net, nodes) = cluster(3, 5);
        net.set_faults(Faults {
            drop_rate: 0.1,
            duplicate_rate: 0.05,
            min_delay: Duration::ZERO,
            max_delay: Duration::from_millis(3),
        });
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut c = client(&nodes);
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    c.execute(&Op::Add("n".into(), 1)).await.expect("executes");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        net.set_faults(Faults::none());
        let done = leader(&nodes, &[])
            .await
            .status()
            .await
            .expect("runs")
            .commit_point;
        let states = converge(&nodes, done).await;
        assert!(states.iter().all(|s| s.get("n") == Some(&40)), "{states:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_refuses_requests() {
    timeout(LIMIT, async {
        let (_net, nodes) = cluster(1, 6);
        let mut c = client(&nodes);
        assert_eq!(
            c.execute(&Op::Add("a".into(), 2)).await.expect("executes"),
            2
        );
        nodes[0].shutdown().await;
        assert!(nodes[0].is_stopped());
        assert!(nodes[0].submit(Request::register(1)).await.is_err());
        let r = c
            .execute_within(&Op::Get("a".into()), Duration::from_millis(100))
            .await;
        assert!(r.is_err());
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_are_answered_by_a_follower_alone_and_never_go_back() {
    let (_net, nodes) = cluster(3, 43);
    let mut writer = client(&nodes);
    let mut reader = client(&nodes);
    timeout(LIMIT, async {
        let mut last = 0;
        for i in 1..=10 {
            writer
                .execute(&Op::Add("k".into(), 1))
                .await
                .expect("write");
            // Each replica in turn: the same client's answers never go back, whichever
            // replica gives them.
            let n = &nodes[i % nodes.len()];
            let seen = reader
                .read_stale_at(n.id(), &Op::Get("k".into()))
                .await
                .expect("stale read");
            assert!(seen >= last, "stale read went back from {last} to {seen}");
            assert!(seen <= i as i64);
            last = seen;
        }
        assert!(reader.stale_floor() > 0);
        // Only one follower left: no majority, so no linearizable read and no write,
        // but the follower still answers stale reads, with every write it executed.
        let l = leader(&nodes, &[]).await;
        let follower = nodes.iter().find(|n| n.id() != l.id()).expect("a follower");
        let upto = l.status().await.expect("status").executed;
        converge(std::slice::from_ref(follower), upto).await;
        for n in nodes.iter().filter(|n| n.id() != follower.id()) {
            n.shutdown().await;
        }
        let seen = reader
            .read_stale_at(follower.id(), &Op::Get("k".into()))
            .await
            .expect("a stale read needs no majority");
        assert_eq!(seen, 10);
        let linearizable = reader
            .read_within(&Op::Get("k".into()), Duration::from_millis(300))
            .await;
        assert!(linearizable.is_err(), "{linearizable:?}");
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_completed_write_without_entering_the_log() {
    let (_net, nodes) = cluster(3, 41);
    let mut writer = client(&nodes);
    let mut reader = client(&nodes);
    timeout(LIMIT, async {
        for i in 1..=20 {
            writer
                .execute(&Op::Add("k".into(), 1))
                .await
                .expect("write");
            // A read sent after the write completed sees it, through any client.
            let seen = reader.read(&Op::Get("k".into())).await.expect("read");
            assert_eq!(seen, i);
        }
        // Reads took no slots: 20 writes and two registrations only.
        let l = leader(&nodes, &[]).await;
        let status = l.status().await.expect("status");
        assert!(status.log_end <= 22 + 3, "log end {}", status.log_end);
        // A command the machine does not answer as a read is refused.
        let refused = reader.read(&Op::Add("k".into(), 5)).await;
        assert!(
            matches!(refused, Err(paxos_core::ClientError::Invalid(_))),
            "{refused:?}"
        );
        assert_eq!(reader.read(&Op::Get("k".into())).await.expect("read"), 20);
    })
    .await
    .expect("in time");
}

/// A learner beside three members, on the same in-memory network: it copies every
/// write (polling the members, which need no configuration for it), answers stale reads
/// by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_copies_the_log_and_answers_stale_reads() {
    let (net, nodes) = cluster(3, 47);
    let mut cfg = Config::learner(4, vec![1, 2, 3]);
    cfg.seed = 47 ^ 4;
    let learner = spawn_node(
        cfg,
        Kv::default(),
        net.join(4),
        MemStorage::new(),
        options(),
    )
    .expect("learner starts");
    let mut writer = client(&nodes);
    timeout(LIMIT, async {
        for _ in 0..20 {
            writer
                .execute(&Op::Add("k".into(), 1))
                .await
                .expect("write");
        }
        let upto = leader(&nodes, &[])
            .await
            .status()
            .await
            .expect("status")
            .executed;
        let states = converge(std::slice::from_ref(&learner), upto).await;
        assert_eq!(states[0].get("k"), Some(&20));
        assert_eq!(learner.status().await.expect("status").role, Role::Learner);
        let mut all = endpoints(&nodes);
        all.push(Arc::new(learner.clone()) as Arc<dyn Endpoint>);
        let mut reader = Client::<Kv>::new(all);
        let seen = reader
            .read_stale_at(4, &Op::Get("k".into()))
            .await
            .expect("the learner answers");
        assert_eq!(seen, 20);
    })
    .await
    .expect("test finished in time");
}

/// A membership change under load: five members, a learner (6) that catches up, then
/// the leader replaces member 5 by 6 while two clients keep writing, then member 5 is
/// stopped. Every acknowledged write is in the final state of every member of the new
/// configuration (exactly once: `Add` counts), and the new configuration serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_member_under_load_loses_no_acknowledged_write() {
    use paxos_core::Member;
    let (net, nodes) = cluster(5, 61);
    let mut cfg = Config::learner(6, vec![1, 2, 3, 4, 5]);
    cfg.seed = 61 ^ 6;
    let joiner = spawn_node(
        cfg,
        Kv::default(),
        net.join(6),
        MemStorage::new(),
        options(),
    )
    .expect("learner starts");
    timeout(Duration::from_secs(60), async {
        let mut all = nodes.clone();
        all.push(joiner.clone());
        // Two writers through the change; each counts its acknowledged writes.
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let mut c = Client::<Kv>::with_options(
                    endpoints(&all),
                    ClientOptions::default().with_attempt_timeout(Duration::from_millis(200)),
                );
                tokio::spawn(async move {
                    let mut acked = 0i64;
                    for _ in 0..150 {
                        if c.execute(&Op::Add(format!("w{w}"), 1)).await.is_ok() {
                            acked += 1;
                        }
                    }
                    acked
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let members: Vec<Member> = [1, 2, 3, 4, 6]
            .into_iter()
            .map(|id| Member {
                id,
                address: String::new(),
            })
            .collect();
        // The leader may be busy re-proposing, or change between the lookup and the
        // call: ask again until it takes the change.
        loop {
            let l = leader(&all, &[]).await;
            match l.reconfigure(members.clone()).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        // Every member of the new configuration reaches epoch 1; 6 votes.
        for n in all.iter().filter(|n| n.id() != 5) {
            loop {
                let m = n.membership().await.expect("runs");
                if m.epoch == 1 {
                    assert_eq!(m.ids(), vec![1, 2, 3, 4, 6]);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        net.crash(5);
        nodes[4].shutdown().await;
        let mut acked = Vec::new();
        for w in writers {
            acked.push(w.await.expect("writer finished"));
        }
        // The new configuration serves without 5 (its leader may be 6: the client
        // knows every survivor).
        let survivors: Vec<_> = all.iter().filter(|n| n.id() != 5).cloned().collect();
        let mut c = client(&survivors);
        c.execute(&Op::Add("after".into(), 1))
            .await
            .expect("the new configuration serves");
        let upto = leader(&survivors, &[])
            .await
            .status()
            .await
            .expect("runs")
            .commit_point;
        let states = converge(&survivors, upto).await;
        for s in &states {
            for (w, n) in acked.iter().enumerate() {
                // At least every acknowledged write (a write whose answer was lost
                // may have been applied too), never more than were sent.
                let got = s.get(&format!("w{w}")).copied().unwrap_or(0);
                assert!(
                    got >= *n && got <= 150,
                    "w{w}: {got} applied, {n} acknowledged"
                );
            }
            assert_eq!(s, &states[0], "members agree");
        }
        assert_eq!(
            joiner.status().await.expect("runs").acceptor,
            paxos_core::AcceptorStatus::Voter,
            "the new member votes"
        );
        for n in &survivors {
            n.shutdown().await;
        }
    })
    .await
    .expect("test finished in time");
}
