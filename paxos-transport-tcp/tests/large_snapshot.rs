//! A state several times larger than the peer frame limit reaches a replica that fell
//! behind, by state transfer in pieces, over TCP on 127.0.0.1.
//!
//! Before state transfer was chunked, the whole checkpoint went in one message: a frame
//! above `max_frame_size` that the sender drops, so the late replica stayed at commit
//! point 0 for ever while the others served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use paxos_core::{MemStorage, NodeOptions, RestoreError, StateMachine};
use paxos_transport_tcp::{
    ClusterConfig, NodeConfig, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions,
};
use tokio::net::TcpListener;

/// The peer frame limit of every node in this test.
const FRAME: usize = 64 * 1024;
/// Bytes each command adds to the state.
const GROWTH: u32 = 16 * 1024;
/// Commands executed before the late replica starts: the state ends up 5× the frame.
const COMMANDS: u32 = 20;
const LIMIT: Duration = Duration::from_secs(60);

/// A state machine whose state is a large byte string: each command appends `n`
/// bytes derived from the current length (deterministic), and answers the new length.
#[derive(Default)]
struct Blob(Vec<u8>);

impl StateMachine for Blob {
    type Command = u32;
    type Output = u64;

    fn apply(&mut self, n: u32) -> u64 {
        let start = self.0.len();
        self.0
            .extend((0..n as usize).map(|i| ((start + i) % 251) as u8));
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

fn options() -> NodeServerOptions<Blob> {
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
async fn a_late_replica_catches_up_on_a_state_larger_than_the_frame_limit() {
    let mut listeners = Vec::new();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = l.local_addr().expect("addr");
        nodes.push(NodeConfig { id, addr });
        listeners.push(l);
    }
    let cluster = ClusterConfig {
        nodes,
        checkpoint_interval: 5,
        ..ClusterConfig::default()
    };

    // Three nodes found the cluster; then node 3 is cut off (its transport drops all
    // protocol traffic, as if crashed) while nodes 1 and 2 build a large state.
    let mut servers = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let s = NodeServer::start_on(
            l,
            &cluster,
            id,
            Blob::default(),
            MemStorage::new(),
            options(),
        )
        .expect("start");
        servers.push(s);
    }
    let late = servers.pop().expect("node 3");
    let remote = RemoteCluster::new(&cluster, RemoteOptions::default()).expect("remote");
    let mut client = remote.client::<Blob>();
    let mut len = tokio::time::timeout(LIMIT, client.execute(&0))
        .await
        .expect("the cluster founded within the limit")
        .expect("a command executes");
    assert_eq!(len, 0);
    late.gate().close();
    for _ in 0..COMMANDS {
        len = tokio::time::timeout(LIMIT, client.execute(&GROWTH))
            .await
            .expect("a command within the limit")
            .expect("a command executes");
    }
    let expected = u64::from(GROWTH) * u64::from(COMMANDS);
    assert_eq!(len, expected);
    assert!(
        expected as usize > 4 * FRAME,
        "the state outgrows the frame limit"
    );
    let compacted = servers[0]
        .handle()
        .status()
        .await
        .expect("status")
        .compacted_below;
    assert!(
        compacted > 0,
        "node 1 compacted its log: only a snapshot can help"
    );

    // Node 3 comes back: the slots it missed are compacted away everywhere, so only
    // the snapshot, in pieces below the frame limit, can bring it up to date.
    late.gate().open();
    let start = Instant::now();
    let caught_up = loop {
        let status = late.handle().status().await.expect("status");
        let size = late
            .handle()
            .with_state(|b: &Blob| b.0.len() as u64)
            .await
            .expect("state");
        if size >= expected && status.snapshots_installed > 0 {
            break true;
        }
        if start.elapsed() > LIMIT {
            eprintln!("node 3 stuck: {status:?}, state {size} bytes of {expected}");
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let same = if caught_up {
        let theirs = servers[0]
            .handle()
            .with_state(|b: &Blob| b.0.clone())
            .await
            .expect("state");
        let ours = late
            .handle()
            .with_state(|b: &Blob| b.0.clone())
            .await
            .expect("state");
        ours[..expected as usize] == theirs[..expected as usize]
    } else {
        false
    };
    late.shutdown().await;
    for s in servers {
        s.shutdown().await;
    }
    assert!(caught_up, "node 3 caught up by state transfer");
    assert!(same, "node 3 holds the same state");
}
