//! Session expiry end to end, on 127.0.0.1: a replica configured through
//! `NodeServerOptions::with_replica` with a short time-to-live drops the session of a
//! client that idles past it; the client sees `SessionExpired` for one command, which
//! is not executed, and carries on under a new session.

use std::net::SocketAddr;
use std::time::Duration;

use paxos_core::{Client, ClientError, MemStorage, NodeOptions, RestoreError, StateMachine};
use paxos_transport_tcp::{
    ClusterConfig, NodeConfig, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions,
};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(20);

/// Adds its command to a total and answers the new total.
#[derive(Default)]
struct Sum(u64);

impl StateMachine for Sum {
    type Command = u64;
    type Output = u64;

    fn apply(&mut self, n: u64) -> u64 {
        self.0 += n;
        self.0
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let bytes: [u8; 8] = snapshot
            .try_into()
            .map_err(|_| RestoreError::new("not a u64"))?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

/// Executes `n`, failing the test if no answer comes within [`LIMIT`].
async fn run(client: &mut Client<Sum>, n: u64) -> Result<u64, ClientError> {
    tokio::time::timeout(LIMIT, client.execute(&n))
        .await
        .expect("an answer within the limit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_expires_and_the_client_carries_on_under_a_new_one() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let cluster = ClusterConfig {
        nodes: vec![NodeConfig { id: 1, addr }],
        ..ClusterConfig::default()
    };
    // 5 ms ticks: sessions idle for 300 ms expire, clock entries every 25 ms.
    let options = NodeServerOptions::<Sum>::default()
        .with_node(NodeOptions::default().with_tick(Duration::from_millis(5)))
        .with_replica(|c| {
            c.session_ttl_ticks = 60;
            c.session_clock_ticks = 5;
        });
    let server = NodeServer::start_on(
        listener,
        &cluster,
        1,
        Sum::default(),
        MemStorage::new(),
        options,
    )
    .expect("start");
    let remote = RemoteCluster::new(&cluster, RemoteOptions::default()).expect("remote");
    let mut client = remote.client::<Sum>();
    assert_eq!(run(&mut client, 1).await, Ok(1));
    let first = client.session().expect("registered");
    // Used more often than the time-to-live: the session stays.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        run(&mut client, 1).await.expect("executes");
    }
    assert_eq!(client.session(), Some(first));
    // Idle for well over the time-to-live and a few clock periods.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        run(&mut client, 100).await,
        Err(ClientError::SessionExpired)
    );
    assert_eq!(run(&mut client, 1).await, Ok(7), "the 100 was not executed");
    assert_ne!(client.session(), Some(first), "a new session");
    let status = server.handle().status().await.expect("status");
    assert_eq!(status.sessions, 1, "only the new session is left");
    let total = server
        .handle()
        .with_state(|s: &Sum| s.0)
        .await
        .expect("state");
    assert_eq!(total, 7);
}
