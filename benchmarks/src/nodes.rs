//! Our node driver in the `runtime` shape: five [`spawn_node`] nodes on one tokio
//! runtime over the in-memory transport, each with a [`MemStorage`], the defaults a user
//! gets ([`Config::new`], [`NodeOptions::default`]), the counter of [`crate::ours`]
//! as state machine, and one [`Client`] per closed-loop client (a session each,
//! exactly-once, redirects followed). With `BENCH_DEBUG` set in the environment, each
//! run ends by printing every node's role and counters (batch sizes, elections...).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use paxos_core::{
    spawn_node, Client, ClientOptions, Config, Endpoint, MemStorage, NodeHandle, NodeId,
    NodeOptions, Role,
};
use paxos_transport_mem::MemNetwork;

use crate::ours::Counter;
use crate::runtime::{self, Phase, Recorder, RunStats, Timing};
use crate::{Progress, NODES};

/// One closed-loop client: `execute(1)` after `execute(1)` until the phase says stop.
async fn client(endpoints: Vec<Arc<dyn Endpoint>>, phase: Phase) -> Recorder {
    // A loaded leader answers late, not never: a long attempt timeout keeps the client
    // from retrying elsewhere (openraft's `client_write` has no timeout at all).
    let options = ClientOptions::default().with_attempt_timeout(Duration::from_secs(10));
    let mut client: Client<Counter> = Client::with_options(endpoints, options);
    let mut rec = Recorder::new(phase);
    while rec.running() {
        let started = Instant::now();
        match client.execute(&1).await {
            Ok(_) => rec.completed(started),
            Err(_) => rec.failed(),
        }
    }
    rec
}

/// Waits until one node leads, up to 10 s.
async fn await_leader(nodes: &[NodeHandle<Counter>]) -> Result<NodeId> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for n in nodes {
            if n.status().await?.role == Role::Leader {
                return Ok(n.id());
            }
        }
        if Instant::now() >= deadline {
            bail!("ours: no leader within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Each node's (executed slots, counter).
async fn views(nodes: &[NodeHandle<Counter>]) -> Result<Vec<(u64, u64)>> {
    let mut views = Vec::new();
    for n in nodes {
        let executed = n.status().await?.executed;
        views.push((executed, n.with_state(|c| c.0).await?));
    }
    Ok(views)
}

/// Runs `clients` closed-loop clients against a fresh five-node cluster for `timing`,
/// then checks that every node executed the same slots to the same counter, and that
/// the counter equals the commands the clients saw complete.
pub(crate) async fn run(clients: usize, timing: &Timing, progress: &Progress) -> Result<RunStats> {
    let ids: Vec<NodeId> = (1..=NODES as NodeId).collect();
    let (network, transports) = MemNetwork::cluster(7, ids.clone());
    let mut nodes = Vec::new();
    for (transport, &id) in transports.into_iter().zip(&ids) {
        let mut config = Config::new(id, ids.clone());
        // Several requests per slot (off by default in the library).
        config.max_requests_per_slot = 64;
        nodes.push(spawn_node(
            config,
            Counter::default(),
            transport,
            MemStorage::new(),
            NodeOptions::default(),
        )?);
    }
    await_leader(&nodes).await?;
    let endpoints: Vec<Arc<dyn Endpoint>> = nodes
        .iter()
        .map(|n| Arc::new(n.clone()) as Arc<dyn Endpoint>)
        .collect();

    let phase = Phase::new();
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(endpoints.clone(), phase.clone())))
        .collect();
    let window = runtime::drive(&phase, timing, progress).await;
    let mut recorders = Vec::new();
    for t in tasks {
        recorders.push(t.await?);
    }
    let stats = RunStats::of(recorders, window);

    // Agreement: followers learn the last commits a heartbeat later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = views(&nodes).await?;
    while !(last.windows(2).all(|w| w[0] == w[1]) && last[0].1 >= stats.completed) {
        if Instant::now() >= deadline {
            bail!("ours: nodes disagree after 10 s (executed, counter): {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = views(&nodes).await?;
    }
    let total = last[0].1;
    if total > stats.completed + stats.failed {
        bail!(
            "ours: counter {total} for {} completed and {} failed commands",
            stats.completed,
            stats.failed
        );
    }
    if std::env::var_os("BENCH_DEBUG").is_some() {
        for n in &nodes {
            let c = n.counters().await?;
            let st = n.status().await?;
            eprintln!("n{}: {:?} leader={:?} {:?}", n.id(), st.role, st.leader, c);
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
    drop(network);
    Ok(stats)
}
