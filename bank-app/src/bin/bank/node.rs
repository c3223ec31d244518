//! `bank node`: run a replica.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bank_app::{Bank, ClusterConfig, NodeServer};
use paxos_core::{AcceptorStatus, MemStorage, NodeId};
use paxos_storage_file::{FileStorage, OpenError};
use tracing::{info, warn};

use crate::signals::shutdown_signal;

/// Options of `bank node`.
#[derive(clap::Args, Debug)]
pub(crate) struct NodeArgs {
    /// The replica's id, as listed in the config.
    #[arg(long, value_name = "N")]
    pub(crate) id: NodeId,
    /// Where the replica keeps its durable state (created if missing). Default:
    /// `bank-data/node-N` under the current directory. A directory written by
    /// another cluster or node, or in use by another process, is refused.
    #[arg(long, value_name = "DIR", conflicts_with = "memory")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Keep the state in memory only (a throwaway node). It starts empty every time:
    /// on the first start of a new cluster it waits until every member is up;
    /// otherwise it recovers its state from a majority of its peers and catches up
    /// before it votes.
    #[arg(long)]
    pub(crate) memory: bool,
    /// Let any client change this replica's availability, as `bank client` scripts
    /// and `bank heal` do. Off by default: without it the node refuses those calls,
    /// since from any client connection they can switch the cluster off. Use it only
    /// on a trusted network, for scenario runs and tests.
    #[arg(long)]
    pub(crate) test_controls: bool,
    /// Let any client make administrative calls: `bank leader transfer` (ask this
    /// replica, when it leads, to hand leadership to another node). Off by default:
    /// without it the node refuses them. It does not allow the test controls (and
    /// --test-controls does not allow these). Use it on a trusted network.
    #[arg(long)]
    pub(crate) admin_calls: bool,
    /// Serve the node's metrics (ballot, leader, commit and executed points, proposals,
    /// batch sizes, fsync latency, queue depths, sessions, snapshots, elections) as
    /// Prometheus text over HTTP on this address, e.g. `127.0.0.1:9101`; any path
    /// answers (`curl http://127.0.0.1:9101/metrics`). Off by default.
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) metrics_addr: Option<SocketAddr>,
    /// Drop client sessions idle for this many seconds; 0 keeps them until
    /// `max_sessions` forces the least recently used out. A client whose session was
    /// dropped gets "session expired" for its next command (not executed) and
    /// registers a new session. It is the leader's setting that applies, so give
    /// every node the same.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SESSION_TTL_SECS)]
    pub(crate) session_ttl: u64,
    /// The most transfers the leader packs into one log slot when several wait (the
    /// library's `Config::max_requests_per_slot`). 1, the default, keeps one
    /// transaction per slot, as the system this bank replaces did: `bank log` and
    /// `bank status --seq` read slot by slot. Under load a larger value (64, as the
    /// benchmarks use) multiplies throughput: a slot's log entry, write and place in
    /// each message are then shared by the transfers in it. Only the leader's setting
    /// matters; every node executes whatever batches are chosen.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) requests_per_slot: u16,
}

/// `--session-ttl` when not given: one hour, the library's default.
const DEFAULT_SESSION_TTL_SECS: u64 = 3600;

/// `secs` seconds in ticks of `tick` (at least one tick unless `secs` is 0), saturating.
fn seconds_to_ticks(secs: u64, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    let ticks = (u128::from(secs) * 1_000_000_000).div_ceil(tick);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

pub(crate) async fn run(config: &ClusterConfig, args: NodeArgs) -> anyhow::Result<ExitCode> {
    let NodeArgs {
        id,
        data_dir,
        memory,
        test_controls,
        admin_calls,
        metrics_addr,
        session_ttl,
        requests_per_slot,
    } = args;
    let data_dir = data_dir.as_deref();
    if config.node(id).is_none() {
        let ids: Vec<String> = config
            .ids()
            .iter()
            .chain(&config.learner_ids())
            .map(u64::to_string)
            .collect();
        bail!(
            "node {id} is not in the cluster config (its nodes are {})",
            ids.join(", ")
        );
    }
    // Before the node starts: the driver binds its metric handles to the recorder
    // installed when it is spawned.
    if let Some(addr) = metrics_addr {
        serve_metrics(addr).with_context(|| format!("node {id} cannot serve metrics on {addr}"))?;
        info!(node = id, %addr, "serving Prometheus metrics over HTTP");
    }
    let options = bank_app::node_options()
        .with_test_controls(test_controls)
        .with_admin_calls(admin_calls);
    let ttl_ticks = seconds_to_ticks(session_ttl, options.node.tick);
    let options = options.with_replica(move |config| {
        config.session_ttl_ticks = ttl_ticks;
        config.max_requests_per_slot = usize::from(requests_per_slot);
    });
    let server = if memory {
        warn!(
            node = id,
            "state is in memory only: every start is a start without state"
        );
        NodeServer::start(config, id, Bank::new(), MemStorage::new(), options).await
    } else {
        let default_dir = default_data_dir(id);
        let dir = data_dir.unwrap_or(&default_dir);
        check_data_dir(dir)?;
        let storage = match FileStorage::open(dir, config.cluster_id, id) {
            Ok(storage) => storage,
            // The message names the directory; nothing in it was read or changed.
            Err(e @ OpenError::Locked { .. }) => {
                bail!("{e} (is another `bank node --id {id}` running on it?)")
            }
            Err(e) => {
                return Err(anyhow!(e).context(format!(
                    "node {id} cannot open its data directory {}",
                    dir.display()
                )))
            }
        };
        let recovery = storage.recovery();
        info!(node = id, dir = %dir.display(), ?recovery, "storage opened");
        NodeServer::start(config, id, Bank::new(), storage, options).await
    }
    .with_context(|| format!("node {id} cannot start"))?;
    log_acceptor_status(&server).await;
    let stopped_by_itself = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            info!(node = id, "signal received; shutting down");
            false
        }
        _ = server.stopped() => true,
    };
    if tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .is_err()
    {
        warn!(node = id, "shutdown did not finish in time");
    }
    if stopped_by_itself {
        bail!("node {id} stopped: its storage failed (see the log above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the Prometheus exporter as the process's `metrics` recorder, with its HTTP
/// listener on `addr` (on the current tokio runtime).
fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use paxos_core::metric_names as names;
    const SECONDS: &[f64] = &[
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5,
    ];
    const COUNTS: &[f64] = &[
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
    ];
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Full(names::PERSIST_SECONDS.into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full(names::PERSIST_OPS.into()), COUNTS)?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), COUNTS)?
        .install()?;
    Ok(())
}

/// Says at start-up whether the replica votes, or what it waits for first.
async fn log_acceptor_status(server: &NodeServer) {
    let id = server.id();
    let status = server
        .handle()
        .inspect(|r| (r.acceptor_status(), r.incarnation(), r.config().learner))
        .await;
    if let Ok((_, _, true)) = status {
        info!(
            node = id,
            "a learner: copies the chosen log from the nodes and serves stale reads; never votes"
        );
        return;
    }
    let status = status.map(|(status, incarnation, _)| (status, incarnation));
    match status {
        Ok((AcceptorStatus::Voter, incarnation)) => {
            info!(node = id, incarnation, "state found: voting");
        }
        Ok((AcceptorStatus::Pristine, _)) => info!(
            node = id,
            "no state: not voting until the peers tell whether the cluster is new; on the \
             first start of a new cluster it waits until every member is up, otherwise it \
             recovers its state from a majority of the peers and catches up first"
        ),
        Ok((AcceptorStatus::Recovering, incarnation)) => info!(
            node = id,
            incarnation,
            "an earlier recovery did not finish: not voting until a majority of the peers \
             has handed over its state"
        ),
        Ok((other, incarnation)) => {
            info!(node = id, incarnation, status = ?other, "not voting yet")
        }
        Err(e) => warn!(node = id, error = %e, "cannot read the replica's status"),
    }
}

/// The data directory must be a directory; it is created if missing.
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--data-dir {} is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --data-dir {}", dir.display()))?;
    Ok(())
}

/// Where `bank node` keeps its data without --data-dir.
pub(crate) const DEFAULT_DATA_ROOT: &str = "bank-data";

pub(crate) fn default_data_dir(id: NodeId) -> PathBuf {
    Path::new(DEFAULT_DATA_ROOT).join(format!("node-{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ttl_seconds_become_ticks() {
        let tick = Duration::from_millis(10);
        assert_eq!(seconds_to_ticks(0, tick), 0, "0 keeps expiry off");
        assert_eq!(seconds_to_ticks(1, tick), 100);
        assert_eq!(
            seconds_to_ticks(3600, tick),
            paxos_core::DEFAULT_SESSION_TTL_TICKS
        );
        assert_eq!(
            seconds_to_ticks(1, Duration::from_millis(3)),
            334,
            "rounded up"
        );
        assert_eq!(
            seconds_to_ticks(u64::MAX, Duration::from_nanos(1)),
            u64::MAX
        );
    }
}
