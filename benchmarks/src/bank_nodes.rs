//! Five `bank node` processes on 127.0.0.1 for the benchmarks that run real processes
//! (`failover`, `tcp`): a cluster file on free ports, a data directory per node (or
//! `--memory`), and a guard, [`Nodes`], that kills and reaps every node when it drops
//! (at the end, on an error, on a panic, and when the run's future is dropped on Ctrl-C
//! or SIGTERM) before removing its temporary directory.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bank_app::{Cluster, ClusterConfig, NodeConfig, RemoteCluster};
use paxos_core::NodeId;

use crate::NODES;

/// The longest wait for anything (a node to answer, a leader, the next commit).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// The node processes of one run and the temporary directory holding their cluster
/// file, data directories and logs. Dropping it kills (SIGKILL) and reaps every node
/// still running, then removes the directory.
pub(crate) struct Nodes {
    /// The `bank` binary the nodes run.
    bank: PathBuf,
    /// The five nodes and their addresses on 127.0.0.1.
    pub(crate) config: ClusterConfig,
    /// Where `config` is written, for `bank node --config`.
    config_path: PathBuf,
    /// Nodes keep their state in memory (`bank node --memory`) instead of a data
    /// directory.
    memory: bool,
    /// The nodes running now (a killed node is removed, a restarted one put back).
    children: BTreeMap<NodeId, Child>,
    /// Declared last: removed after `drop` has killed the nodes using it.
    dir: tempfile::TempDir,
}

/// `bank node --requests-per-slot` (the bank's default, 1, keeps one
/// transaction per slot for its scenario inspection; a throughput run packs them).
pub(crate) const REQUESTS_PER_SLOT: u64 = 64;

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Ports nobody listens on now (another program could take one before a node binds
/// it; the node would then exit, and the run fails with its log's path).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

impl Nodes {
    /// Writes a five-node cluster file on free ports of 127.0.0.1 (with a cluster id of
    /// its own, so no stranger's node is mistaken for one of ours) and starts the nodes:
    /// with `memory`, `bank node --memory`; otherwise each on a data directory in a
    /// temporary directory (named `prefix`…) under the system's temporary directory.
    pub(crate) fn start(bank: PathBuf, memory: bool, prefix: &str) -> Result<Nodes> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let config = ClusterConfig {
            // Below 2^63: TOML integers are signed.
            cluster_id: ((u64::from(std::process::id()) << 32) ^ u64::from(nanos)) >> 1,
            nodes: free_ports(NODES)?
                .into_iter()
                .zip(1..)
                .map(|(port, id)| NodeConfig {
                    id,
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                })
                .collect(),
            ..ClusterConfig::local_default()
        };
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config.to_toml_string())?;
        let mut nodes = Nodes {
            bank,
            config,
            config_path,
            memory,
            children: BTreeMap::new(),
            dir,
        };
        for id in nodes.config.ids() {
            nodes.spawn(id)?;
        }
        Ok(nodes)
    }

    /// Node `id`'s log (its stderr).
    pub(crate) fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    /// Starts node `id` on its port and data directory (or in memory), its stderr
    /// appended to its log.
    pub(crate) fn spawn(&mut self, id: NodeId) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let mut command = Command::new(&self.bank);
        command
            .args(["node", "--id", &id.to_string(), "--config"])
            .arg(&self.config_path)
            .args(["--requests-per-slot", &REQUESTS_PER_SLOT.to_string()]);
        if self.memory {
            command.arg("--memory");
        } else {
            command
                .arg("--data-dir")
                .arg(self.dir.path().join(format!("data-n{id}")));
        }
        let child = command
            .env("RUST_LOG", "warn")
            .env_remove("BANK_CONFIG")
            .env_remove("BANK_ENDPOINTS")
            .env_remove("BANK_CLUSTER_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} node --id {id}", self.bank.display()))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Kills node `id` with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self, id: NodeId) -> Result<()> {
        let mut child = self
            .children
            .remove(&id)
            .with_context(|| format!("n{id} is not running"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Fails if a node exited by itself, naming its log.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let mut exited = None;
        for (&id, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                exited = Some((id, status));
                break;
            }
        }
        match exited {
            Some((id, status)) => bail!(
                "n{id} exited ({status}); its log: {}",
                self.log_path(id).display()
            ),
            None => Ok(()),
        }
    }

    /// Waits until every running node answers and one of them leads; returns the
    /// leader.
    pub(crate) async fn await_serving(&mut self, cluster: &RemoteCluster) -> Result<NodeId> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running()?;
            let mut all = true;
            for &id in self.children.keys() {
                all &= cluster.replica_status(id).await.is_ok();
            }
            if all {
                if let Some(leader) = cluster.leader().await {
                    return Ok(leader);
                }
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not serve within {PATIENCE:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `bank` binary: the one given, or the one next to this executable.
pub(crate) fn bank_binary(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => {
            let exe = std::env::current_exe()?;
            exe.parent()
                .map(|d| d.join("bank"))
                .context("this executable has no directory")?
        }
    };
    ensure!(
        path.is_file(),
        "no `bank` binary at {} (build it with `cargo build --release -p bank-app`, or pass --bank PATH)",
        path.display()
    );
    Ok(path)
}

/// Waits for Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
