//! What an inspection ([`NodeHandle::inspect`]: status, the state machine) sees rests
//! on durable writes, even when it arrives in the same round as inputs whose writes are
//! still to be made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::node::{spawn_node, NodeHandle, NodeOptions};
use crate::node_transfer_tests::Sum;
use crate::{
    Config, MemStorage, Message, NodeId, PersistOp, PersistentState, Request, Response, Storage,
    StorageError, Transport, TransportError,
};

/// Writes that wait for permits, one permit per write; each lands in a shared
/// `MemStorage` the test reads.
#[derive(Clone, Default)]
struct Permits(Arc<(Mutex<u64>, Condvar)>);

impl Permits {
    fn set(&self, n: u64) {
        let (count, cv) = &*self.0;
        *count.lock().unwrap_or_else(|e| e.into_inner()) = n;
        cv.notify_all();
    }

    fn take(&self) {
        let (count, cv) = &*self.0;
        let mut n = count.lock().expect("permits");
        while *n == 0 {
            n = cv.wait(n).expect("permits");
        }
        *n -= 1;
    }
}

struct ReleaseOnDrop(Permits);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.set(u64::MAX);
    }
}

struct GatedStorage {
    durable: Arc<Mutex<MemStorage>>,
    permits: Permits,
    started: Arc<AtomicU64>,
}

impl Storage for GatedStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        self.durable.lock().expect("store").load()
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.permits.take();
        self.durable.lock().expect("store").persist(ops)
    }
}

/// A cluster of one needs no network.
pub(crate) struct Alone;

impl Transport for Alone {
    fn send(&self, _: NodeId, _: Message) -> Result<(), TransportError> {
        Ok(())
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        std::future::pending().await
    }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting until {what}");
}

/// In a cluster of one, a request is chosen by the replica's own vote as soon as it is
/// fed, and its round's write makes it durable. An inspection that arrives after it,
/// in the same round (both queued behind a slow write), must wait for that write:
/// otherwise it reports a slot as committed that a crash would lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspection_waits_for_the_write_of_every_input_before_it() {
    let durable = Arc::new(Mutex::new(MemStorage::new()));
    let permits = Permits::default();
    permits.set(u64::MAX);
    // However the test ends, writes go through again: a node blocked in a write
    // would keep the runtime from shutting down.
    let _release = ReleaseOnDrop(permits.clone());
    let started = Arc::new(AtomicU64::new(0));
    let storage = GatedStorage {
        durable: durable.clone(),
        permits: permits.clone(),
        started: started.clone(),
    };
    let options = NodeOptions::default().with_tick(Duration::from_millis(2));
    // One request per slot: a request is proposed, and chosen, as soon as it is fed
    // (with several per slot, the leader proposes at the end of the round).
    let mut config = Config::new(1, vec![1]);
    config.max_requests_per_slot = 1;
    let node: NodeHandle<Sum> =
        spawn_node(config, Sum::default(), Alone, storage, options).expect("node starts");
    // A leader with a session.
    let session = loop {
        let reply = node.submit(Request::register(7)).await.expect("answers");
        if let Response::Ok(bytes) = reply.response {
            break postcard::from_bytes::<u64>(&bytes).expect("a session id");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let payload = bytes::Bytes::from(postcard::to_allocvec(&1u64).expect("encodes"));
    let request = |seq| Request {
        client: session,
        seq,
        payload: payload.clone(),
    };

    // The first request's write is held.
    permits.set(0);
    let before = started.load(Ordering::SeqCst);
    let first = tokio::spawn({
        let (node, r) = (node.clone(), request(1));
        async move { node.submit(r).await }
    });
    wait_until("the first write is in flight", || {
        started.load(Ordering::SeqCst) > before
    })
    .await;
    // The second queues behind it, then the inspection.
    let second = tokio::spawn({
        let (node, r) = (node.clone(), request(2));
        async move { node.submit(r).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    // What the inspection sees committed must be durably accepted here.
    let inspection = tokio::spawn({
        let (node, durable) = (node.clone(), durable.clone());
        async move {
            node.inspect(move |r| {
                let stored = durable.lock().expect("store").load().expect("loads");
                let commit = r.status().commit_point;
                let missing: Vec<_> = (stored.checkpoint.as_ref().map_or(0, |c| c.slot)..commit)
                    .filter(|s| stored.log.get(*s).is_none())
                    .collect();
                (commit, missing)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !inspection.is_finished(),
        "the inspection waits for the write in flight"
    );
    // The first write lands; the second write starts and is held.
    let before = started.load(Ordering::SeqCst);
    permits.set(1);
    wait_until("the second write is in flight", || {
        started.load(Ordering::SeqCst) > before
    })
    .await;
    // A third request comes while the inspection's write is in flight: the node may
    // handle it only after the inspection ran (it is chosen by the replica's own vote
    // as soon as it is fed, and its write comes after the inspection's).
    let third = tokio::spawn({
        let (node, r) = (node.clone(), request(3));
        async move { node.submit(r).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    if inspection.is_finished() {
        let (commit, missing) = inspection.await.expect("task").expect("answers");
        panic!("the inspection ran before the second write: commit point {commit}, slots not stored {missing:?}");
    }
    // The second write lands (and the third's, if it came to that).
    permits.set(u64::MAX);
    let (commit, missing) = inspection.await.expect("task").expect("answers");
    assert!(
        missing.is_empty(),
        "commit point {commit}, slots not stored {missing:?}"
    );
    for call in [first, second, third] {
        let reply = call.await.expect("task").expect("answers");
        assert!(matches!(reply.response, Response::Ok(_)), "{reply:?}");
    }
    node.shutdown().await;
}
