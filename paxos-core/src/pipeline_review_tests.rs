//! Adversarial review of the pipelined node driver (commit d0e6a79): a cluster of
//! one (its own vote chooses a request as soon as it is fed) on a slow blocking
//! store, under many concurrent clients, inspections, reconfigurations, transfer
//! requests and a shutdown under load. Every reply and every inspection must rest on
//! durable state; the node must not stall or hang on shutdown.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::node::{spawn_node, NodeHandle, NodeOptions};
use crate::node_inspect_tests::Alone;
use crate::node_transfer_tests::Sum;
use crate::{
    Config, MemStorage, Member, PersistOp, PersistentState, Reply, Request, Response, Storage,
    StorageError,
};

struct SlowStorage {
    durable: Arc<Mutex<MemStorage>>,
    delay: Duration,
    writes: Arc<AtomicU64>,
    fail_after: Option<u64>,
}

impl Storage for SlowStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        self.durable.lock().expect("store").load()
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.fail_after.is_some_and(|f| n >= f) {
            return Err(StorageError::io_because(
                "injected",
                std::io::Error::other("disk gone"),
            ));
        }
        self.durable.lock().expect("store").persist(ops)
    }
}

/// Whether `reply` says Ok to `(client, seq)` while no durable log entry holds it.
fn answered_before_write(
    reply: &Reply,
    durable: &Mutex<MemStorage>,
    client: u64,
    seq: u64,
) -> bool {
    matches!(reply.response, Response::Ok(_)) && !durably_holds(durable, client, seq)
}

/// Whether `(client, seq)` is in a durable log entry.
fn durably_holds(durable: &Mutex<MemStorage>, client: u64, seq: u64) -> bool {
    let store = durable.lock().expect("store");
    let found = store.state().log.values().any(|e| {
        e.value
            .requests()
            .iter()
            .any(|r| r.client == client && r.seq == seq)
    });
    found
}

fn missing_below_commit(durable: &Mutex<MemStorage>, commit: u64) -> Vec<u64> {
    let store = durable.lock().expect("store");
    let stored = store.state();
    (stored.checkpoint.as_ref().map_or(0, |c| c.slot)..commit)
        .filter(|s| stored.log.get(*s).is_none())
        .collect()
}

async fn register(node: &NodeHandle<Sum>, nonce: u64) -> Option<u64> {
    loop {
        let reply = node.submit(Request::register(nonce)).await.ok()?;
        if let Response::Ok(bytes) = reply.response {
            return Some(postcard::from_bytes::<u64>(&bytes).expect("a session id"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Returns the number of violations found.
async fn stress(max_inputs: usize, per_slot: usize, shutdown_under_load: bool) -> Vec<String> {
    stress_with(
        max_inputs,
        per_slot,
        shutdown_under_load,
        crate::node::FlushOrder::PersistFirst,
    )
    .await
}

async fn stress_with(
    max_inputs: usize,
    per_slot: usize,
    shutdown_under_load: bool,
    order: crate::node::FlushOrder,
) -> Vec<String> {
    let durable = Arc::new(Mutex::new(MemStorage::new()));
    let storage = SlowStorage {
        durable: durable.clone(),
        delay: Duration::from_millis(2),
        writes: Arc::new(AtomicU64::new(0)),
        fail_after: None,
    };
    let options = NodeOptions::default()
        .with_tick(Duration::from_millis(1))
        .with_max_inputs_per_round(max_inputs);
    let mut config = Config::new(1, vec![1]);
    config.max_requests_per_slot = per_slot;
    config.checkpoint_interval = 0;
    let node: NodeHandle<Sum> =
        crate::node::spawn_node_with_order(config, Sum::default(), Alone, storage, options, order)
            .expect("node starts");
    let violations = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..12u64 {
        let (node, durable, violations) = (node.clone(), durable.clone(), violations.clone());
        tasks.push(tokio::spawn(async move {
            let Some(session) = register(&node, 5000 + c).await else {
                return;
            };
            let payload = bytes::Bytes::from(postcard::to_allocvec(&1u64).expect("encodes"));
            for seq in 1..=40u64 {
                let r = Request {
                    client: session,
                    seq,
                    payload: payload.clone(),
                };
                match node.submit(r).await {
                    Ok(reply) => {
                        if answered_before_write(&reply, &durable, session, seq) {
                            violations
                                .lock()
                                .unwrap()
                                .push(format!("reply to ({session}, {seq}) before its write"));
                        }
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    // Inspections, reconfigurations (to itself, with a new address each time) and
    // refused transfers, all the while.
    let side = {
        let (node, durable, violations, stop) = (
            node.clone(),
            durable.clone(),
            violations.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let d = durable.clone();
                let Ok((commit, missing)) = node
                    .inspect(move |r| {
                        let commit = r.status().commit_point;
                        (commit, missing_below_commit(&d, commit))
                    })
                    .await
                else {
                    return;
                };
                if !missing.is_empty() {
                    violations.lock().unwrap().push(format!(
                        "inspection saw commit point {commit} with slots not stored {missing:?}"
                    ));
                }
                if i.is_multiple_of(7) {
                    let _ = node
                        .reconfigure(vec![Member {
                            id: 1,
                            address: format!("a{i}"),
                        }])
                        .await;
                }
                if i.is_multiple_of(5) {
                    let _ = node.transfer_leadership(1).await;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    if shutdown_under_load {
        tokio::time::sleep(Duration::from_millis(60)).await;
        tokio::time::timeout(Duration::from_secs(10), node.shutdown())
            .await
            .expect("shutdown under load finishes");
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("clients finish (the node does not stall)")
            .expect("client task");
    }
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), side)
        .await
        .expect("side task ends")
        .expect("side task");
    tokio::time::timeout(Duration::from_secs(10), node.shutdown())
        .await
        .expect("shutdown finishes");
    let v = violations.lock().unwrap().clone();
    v
}

/// [`stress`] with each `(max_inputs_per_round, requests per slot)`: no violation.
async fn stress_each(settings: &[(usize, usize)], shutdown_under_load: bool) {
    for &(max_inputs, per_slot) in settings {
        let v = stress(max_inputs, per_slot, shutdown_under_load).await;
        assert!(
            v.is_empty(),
            "max_inputs {max_inputs} per_slot {per_slot}: {v:#?}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn review_pipeline_current_thread() {
    stress_each(&[(1, 1), (3, 4), (512, 64), (2, 64)], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_pipeline_multi_thread() {
    stress_each(&[(1, 1), (3, 4), (512, 64)], false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn review_pipeline_shutdown_under_load() {
    stress_each(&[(1, 1), (3, 4), (512, 64)], true).await;
}

/// A store that fails after a few writes: the node stops, every caller gets an
/// answer (an error), nothing hangs, and no reply was given for a write that failed.
#[tokio::test(flavor = "current_thread")]
async fn review_pipeline_storage_failure_stops_cleanly() {
    let durable = Arc::new(Mutex::new(MemStorage::new()));
    let storage = SlowStorage {
        durable: durable.clone(),
        delay: Duration::from_millis(2),
        writes: Arc::new(AtomicU64::new(0)),
        fail_after: Some(30),
    };
    let options = NodeOptions::default().with_tick(Duration::from_millis(1));
    let node: NodeHandle<Sum> = spawn_node(
        Config::new(1, vec![1]),
        Sum::default(),
        Alone,
        storage,
        options,
    )
    .expect("node starts");
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let (node, durable) = (node.clone(), durable.clone());
        tasks.push(tokio::spawn(async move {
            let session = loop {
                match node.submit(Request::register(6000 + c)).await {
                    Ok(reply) => {
                        if let Response::Ok(bytes) = reply.response {
                            break postcard::from_bytes::<u64>(&bytes).expect("a session id");
                        }
                    }
                    Err(_) => return Ok(()),
                }
            };
            let payload = bytes::Bytes::from(postcard::to_allocvec(&1u64).expect("encodes"));
            for seq in 1..=100u64 {
                let r = Request {
                    client: session,
                    seq,
                    payload: payload.clone(),
                };
                match node.submit(r).await {
                    Ok(reply) => {
                        if answered_before_write(&reply, &durable, session, seq) {
                            return Err(format!("reply to ({session}, {seq}) before its write"));
                        }
                    }
                    Err(_) => return Ok(()),
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("callers are answered once the node stops")
            .expect("task");
        assert_eq!(r, Ok(()));
    }
    tokio::time::timeout(Duration::from_secs(5), node.stopped())
        .await
        .expect("the node stopped");
}

/// The checks have teeth: the broken driver that sends and replies before it writes
/// is caught by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_pipeline_checks_catch_send_first() {
    let v = stress_with(512, 1, false, crate::node::FlushOrder::SendFirst).await;
    assert!(!v.is_empty(), "SendFirst not caught");
}
