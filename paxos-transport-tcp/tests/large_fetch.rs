//! A replica that fell behind fetches the chosen entries it missed, over TCP on
//! 127.0.0.1; here the log has not been compacted (no checkpoint yet), so a fetch is
//! the only way to catch up.
//!
//! The entries missed add up to five times the peer frame limit. A FETCH-REPLY used to
//! carry up to `Config::max_batch` entries whatever their bytes: above the frame the
//! transport dropped it, and the late replica asked for the same range for ever (found
//! by `benchmarks -- snapshot`). Batches now stop at `Config::max_message_bytes`, which
//! `NodeServer` lowers to a quarter of its frame limit, so the reply comes in pieces
//! and the replica catches up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use paxos_core::{MemStorage, NodeOptions, RestoreError, StateMachine};
use paxos_transport_tcp::{
    ClusterConfig, NodeConfig, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions,
};
use tokio::net::TcpListener;

/// The peer frame limit of every node in this test.
const FRAME: usize = 64 * 1024;
/// The payload of each command: well inside a frame on its own.
const COMMAND: usize = 16 * 1024;
/// Commands executed while the late replica is cut off: together 5× the frame.
const COMMANDS: usize = 20;
const LIMIT: Duration = Duration::from_secs(20);

/// A state machine whose state is the concatenation of the byte strings it was given.
#[derive(Default)]
struct Concat(Vec<u8>);

impl StateMachine for Concat {
    type Command = Vec<u8>;
    type Output = u64;

    fn apply(&mut self, bytes: Vec<u8>) -> u64 {
        self.0.extend_from_slice(&bytes);
        self.0.len() as u64
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.0 = snapshot.to_vec();
        Ok(())
    }
}

fn options() -> NodeServerOptions<Concat> {
    NodeServerOptions::default()
        .with_node(NodeOptions::default().with_tick(Duration::from_millis(10)))
        .with_tcp(|c| {
            c.max_frame_size = FRAME;
            c.backoff_min = Duration::from_millis(10);
            c.backoff_max = Duration::from_millis(200);
            c.handshake_timeout = Duration::from_millis(500);
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replica_fetches_entries_that_together_exceed_the_frame_limit() {
    let mut listeners = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = l.local_addr().expect("addr");
        nodes.push(NodeConfig { id, addr });
        listeners.push(l);
    }
    // The default checkpoint interval (1000): no checkpoint, no compaction.
    let cluster = ClusterConfig {
        nodes,
        ..ClusterConfig::default()
    };
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let s = NodeServer::start_on(
            l,
            &cluster,
            id,
            Concat::default(),
            MemStorage::new(),
            options(),
        )
        .expect("start");
        servers.push(s);
    }
    let late = servers.pop().expect("node 3");
    let remote = RemoteCluster::new(&cluster, RemoteOptions::default()).expect("remote");
    let mut client = remote.client::<Concat>();
    tokio::time::timeout(LIMIT, client.execute(&Vec::new()))
        .await
        .expect("the cluster founded within the limit")
        .expect("a command executes");

    // Node 3 is cut off while the others execute entries worth 5 frames.
    late.gate().close();
    let mut len = 0;
    for i in 0..COMMANDS {
        len = tokio::time::timeout(LIMIT, client.execute(&vec![i as u8; COMMAND]))
            .await
            .expect("a command within the limit")
            .expect("a command executes");
    }
    assert_eq!(len, (COMMAND * COMMANDS) as u64);
    let target = servers[0]
        .handle()
        .status()
        .await
        .expect("status")
        .commit_point;

    // Node 3 comes back: it must fetch the entries it missed.
    late.gate().open();
    let start = Instant::now();
    let caught_up = loop {
        let status = late.handle().status().await.expect("status");
        if status.commit_point >= target {
            break true;
        }
        if start.elapsed() > LIMIT {
            eprintln!("node 3 stuck below commit point {target}: {status:?}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    late.shutdown().await;
    for s in servers {
        s.shutdown().await;
    }
    assert!(caught_up, "node 3 caught up by fetching");
}
