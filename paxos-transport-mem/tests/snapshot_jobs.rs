//! Snapshots taken off the replica's thread ([`StateMachine::snapshot_job`]) through the
//! node driver: while a job is held, the replicas go on executing and answering; once it
//! is released, the checkpoint is stored at the slot where it was taken.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use paxos_core::{
    spawn_node, Client, ClientOptions, Config, Endpoint, MemStorage, NodeHandle, NodeOptions,
    RestoreError, SnapshotJob, StateMachine,
};
use paxos_transport_mem::MemNetwork;
use tokio::time::timeout;

/// Closed: snapshot jobs wait. Shared by every replica of the test.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().expect("gate lock") = true;
        cv.notify_all();
    }

    fn wait(&self) {
        let (open, cv) = &*self.0;
        let mut is_open = open.lock().expect("gate lock");
        while !*is_open {
            is_open = cv.wait(is_open).expect("gate lock");
        }
    }
}

/// Opens its gate when dropped, on success or while a failure unwinds.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// An append-only journal whose snapshots share the entries (an `Arc`), serialized by
/// the job once the gate opens.
struct Journal {
    entries: Arc<Vec<u64>>,
    gate: Gate,
}

impl StateMachine for Journal {
    type Command = u64;
    type Output = usize;
    fn apply(&mut self, entry: u64) -> usize {
        Arc::make_mut(&mut self.entries).push(entry);
        self.entries.len()
    }
    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&*self.entries).unwrap_or_default()
    }
    fn snapshot_job(&self) -> Option<SnapshotJob> {
        let (entries, gate) = (Arc::clone(&self.entries), self.gate.clone());
        Some(SnapshotJob::new(move || {
            gate.wait();
            postcard::to_allocvec(&*entries).unwrap_or_default()
        }))
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        let entries = postcard::from_bytes(bytes).map_err(|e| RestoreError::new(e.to_string()))?;
        self.entries = Arc::new(entries);
        Ok(())
    }
}

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_executing_while_their_snapshot_jobs_run() {
    let gate = Gate::default();
    // Opens the gate however the test ends: the runtime's shutdown waits for every
    // blocking task, so a failed assertion with jobs still waiting would hang the test
    // instead of failing it.
    let _open_at_end = OpenOnDrop(gate.clone());
    let ids = vec![1, 2, 3];
    let (_network, transports) = MemNetwork::cluster(51, ids.clone());
    let nodes: Vec<NodeHandle<Journal>> = transports
        .into_iter()
        .zip(&ids)
        .map(|(t, &id)| {
            let mut cfg = Config::new(id, ids.clone());
            cfg.seed = 51 ^ id;
            cfg.checkpoint_interval = 10;
            let journal = Journal {
                entries: Arc::default(),
                gate: gate.clone(),
            };
            let options = NodeOptions::default().with_tick(Duration::from_millis(2));
            spawn_node(cfg, journal, t, MemStorage::new(), options).expect("node starts")
        })
        .collect();
    let endpoints: Vec<Arc<dyn Endpoint>> = nodes
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn Endpoint>)
        .collect();
    let options = ClientOptions::default().with_attempt_timeout(Duration::from_millis(200));
    let mut client: Client<Journal> = Client::with_options(endpoints, options);
    timeout(LIMIT, async {
        // Past the first checkpoint's slot, and far beyond it while its jobs wait.
        for i in 0..60u64 {
            let len = client.execute(&i).await.expect("executes");
            assert_eq!(len, i as usize + 1);
        }
        // The leader has executed 60 commands; a follower learns the last commit points
        // a little later (its task may not have run since).
        for n in &nodes {
            loop {
                let s = n.status().await.expect("status");
                assert_eq!(
                    s.checkpoint, None,
                    "n{}: no checkpoint while its job waits",
                    s.id
                );
                if s.executed >= 60 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        gate.open();
        // Each replica stores its checkpoints at the slots where it took them (every ten
        // slots, up to four jobs out at once), then takes the next ones as execution goes
        // on.
        for n in &nodes {
            loop {
                let s = n.status().await.expect("status");
                if let Some(slot) = s.checkpoint {
                    assert!(
                        (10..=62).contains(&slot) && slot % 10 <= 2,
                        "n{}: checkpoint at {slot}",
                        s.id
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        for i in 60..100u64 {
            client.execute(&i).await.expect("executes");
        }
        for n in &nodes {
            loop {
                let s = n.status().await.expect("status");
                if s.checkpoint.is_some_and(|c| c >= 60) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await
    .expect("test finished in time");
}
