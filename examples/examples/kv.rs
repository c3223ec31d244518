//! A replicated key-value store in under a hundred lines: run it with
//! `cargo run --example kv`.
//!
//! Three replicas run in this process over the in-memory transport. A client writes a
//! few keys, the leader is crashed, and the client carries on against the new leader;
//! at the end every surviving replica holds the same map.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use paxos_core::{
    spawn_node, Client, Config, Endpoint, MemStorage, NodeOptions, RestoreError, Role, StateMachine,
};
use paxos_transport_mem::MemNetwork;
use serde::{Deserialize, Serialize};

/// The replicated state: any deterministic type works.
#[derive(Default)]
struct Kv(BTreeMap<String, String>);

/// Commands travel as postcard bytes, so they are serde types.
#[derive(Serialize, Deserialize)]
enum KvCommand {
    Put(String, String),
    Get(String),
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Output = Option<String>;

    fn apply(&mut self, command: KvCommand) -> Option<String> {
        match command {
            KvCommand::Put(k, v) => self.0.insert(k, v),
            KvCommand::Get(k) => self.0.get(&k).cloned(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.0 = postcard::from_bytes(bytes).map_err(|e| RestoreError::new(e.to_string()))?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids = vec![1, 2, 3];
    let (network, transports) = MemNetwork::cluster(42, ids.clone());
    let mut nodes = Vec::new();
    for (transport, &id) in transports.into_iter().zip(&ids) {
        let config = Config::new(id, ids.clone());
        nodes.push(spawn_node(
            config,
            Kv::default(),
            transport,
            MemStorage::new(),
            NodeOptions::default(),
        )?);
    }
    let endpoints: Vec<Arc<dyn Endpoint>> = nodes
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn Endpoint>)
        .collect();
    let mut client: Client<Kv> = Client::new(endpoints);

    for (k, v) in [("alice", "10"), ("bob", "20"), ("carol", "30")] {
        client.execute(&KvCommand::Put(k.into(), v.into())).await?;
    }
    let leader = client.leader().ok_or("no leader yet")?;
    println!("wrote 3 keys through leader n{leader}; crashing it");
    network.crash(leader);

    // The client retries with the same request number until a new leader answers.
    let old = client
        .execute(&KvCommand::Put("alice".into(), "11".into()))
        .await?;
    println!(
        "alice was {old:?}; new leader is n{}",
        client.leader().unwrap_or_default()
    );

    tokio::time::sleep(Duration::from_millis(100)).await; // let followers learn the commit
    for node in nodes.iter().filter(|n| n.id() != leader) {
        let status = node.status().await?;
        let map = node.with_state(|kv| kv.0.clone()).await?;
        let role = if status.role == Role::Leader {
            "leader"
        } else {
            "follower"
        };
        println!(
            "n{} ({role}, executed {} slots): {map:?}",
            node.id(),
            status.executed
        );
    }
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
