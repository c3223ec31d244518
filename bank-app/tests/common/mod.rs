//! The harness shared by the multi-process tests (`processes.rs`, `durability.rs`,
//! `amnesia.rs`): real `bank node` processes on 127.0.0.1 (five unless a test asks for
//! another size) with their config, data directories and logs in a temporary directory,
//! `bank` invocations against them, and checks through [`RemoteCluster`].
//!
//! Every process the harness starts is killed and reaped when its guard drops, pass or
//! fail ([`Processes`], [`Running`]); every wait is bounded; a failing test prints the
//! tail of every node's log.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bank_app::{
    Account, Bank, BankCommand, Cluster, ClusterConfig, DbSnapshot, NodeConfig, NodeStatus,
    RemoteCluster, RemoteOptions,
};
use paxos_core::{Client, ClientOptions, Endpoint, NodeId};
use serde_json::Value;

pub(crate) const BANK: &str = env!("CARGO_BIN_EXE_bank");
pub(crate) const NODES: u64 = 5;
/// The high bits of every test cluster's id; the low 32 bits differ per cluster
/// ([`unique_cluster_id`]). Ids stay below 2^63: TOML integers are signed.
const CLUSTER_ID_BASE: u64 = 0xBA4C << 32;
/// How many lines of each node's log a failing test prints.
const LOG_TAIL: usize = 40;

/// A cluster id no other test cluster on this machine uses (process id, time and a
/// counter), so that if a port is reused by another test's node while one of ours is
/// down, the handshake refuses the stranger instead of letting us talk to it.
fn unique_cluster_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let low = (u64::from(std::process::id()) << 12)
        ^ u64::from(nanos)
        ^ (COUNTER.fetch_add(1, Ordering::Relaxed) << 28);
    CLUSTER_ID_BASE | (low & 0xFFFF_FFFF)
}

/// Serializes the tests of one binary that take it, so that at most one five-node
/// cluster runs at a time (timing-sensitive tests on a small machine).
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Node processes and the temporary directory holding their config, data directories
/// and logs. Dropping it kills and reaps every node still running (and, when the test
/// is failing, prints the end of every node's log first).
pub(crate) struct Processes {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: ClusterConfig,
    pub(crate) config_path: PathBuf,
    /// The nodes running now (a killed node is removed, a restarted one put back).
    nodes: BTreeMap<NodeId, Child>,
    /// Nodes started with `--memory` instead of a data directory.
    memory: BTreeSet<NodeId>,
    /// Where each node serves its Prometheus metrics (`--metrics-addr`), if it does.
    pub(crate) metrics: BTreeMap<NodeId, SocketAddr>,
    /// Whether nodes are started with `--admin-calls` (leader transfer allowed).
    admin_calls: bool,
    /// More arguments for every `bank node` command line.
    node_args: Vec<String>,
    /// Nodes started with a cluster file of their own instead of `config_path`.
    own_config: BTreeMap<NodeId, PathBuf>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (id, child) in &mut self.nodes {
            if let Ok(Some(status)) = child.try_wait() {
                // It should have been running: say so, it may explain the failure.
                eprintln!("n{id} had exited by itself: {status}");
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            // Show what the nodes said, to explain the failure.
            for id in self
                .config
                .ids()
                .into_iter()
                .chain(self.config.learner_ids())
            {
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(LOG_TAIL);
                eprintln!("---- n{id} log (last {} lines) ----", lines.len() - from);
                for line in &lines[from..] {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Ports no one listens on right now (a tiny race with other programs is accepted:
/// [`Processes::start`] retries with new ports if a node cannot bind).
pub(crate) fn free_ports(n: u64) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Processes {
    /// Starts five nodes with the default config (but for the cluster id and ports).
    pub(crate) fn start(rt: &tokio::runtime::Runtime) -> Processes {
        Processes::start_with(rt, |_| {})
    }

    /// Starts five nodes, each with a data directory, and waits until each answers;
    /// `adjust` may change the config first (e.g. its `checkpoint_interval`). Retries
    /// with new ports when a node exits at once (its port was taken in the meantime).
    pub(crate) fn start_with(
        rt: &tokio::runtime::Runtime,
        adjust: impl Fn(&mut ClusterConfig),
    ) -> Processes {
        Processes::start_cluster(rt, NODES, &BTreeSet::new(), adjust)
    }

    /// Starts `size` nodes, ids `1..=size`, each with a data directory except those in
    /// `memory` (started with `--memory`, and restarted so), and waits until each
    /// answers; `adjust` may change the config first. Retries with new ports when a
    /// node exits at once.
    pub(crate) fn start_cluster(
        rt: &tokio::runtime::Runtime,
        size: u64,
        memory: &BTreeSet<NodeId>,
        adjust: impl Fn(&mut ClusterConfig),
    ) -> Processes {
        Processes::start_cluster_serving(rt, size, memory, false, false, &[], adjust)
    }

    /// Starts `size` nodes with data directories, `args` added to each `bank node`
    /// command line.
    pub(crate) fn start_with_node_args(
        rt: &tokio::runtime::Runtime,
        size: u64,
        args: &[&str],
    ) -> Processes {
        Processes::start_cluster_serving(rt, size, &BTreeSet::new(), false, false, args, |_| {})
    }

    /// Starts `size` nodes with data directories and `--admin-calls`, so that `bank
    /// leader transfer` may move leadership among them.
    pub(crate) fn start_with_admin_calls(rt: &tokio::runtime::Runtime, size: u64) -> Processes {
        Processes::start_cluster_serving(rt, size, &BTreeSet::new(), false, true, &[], |_| {})
    }

    /// Starts `size` nodes with data directories, each serving its Prometheus metrics
    /// on a port of its own on 127.0.0.1 ([`Processes::metrics`]).
    pub(crate) fn start_with_metrics(rt: &tokio::runtime::Runtime, size: u64) -> Processes {
        Processes::start_cluster_serving(rt, size, &BTreeSet::new(), true, false, &[], |_| {})
    }

    /// Starts `size` nodes and one learner (id `size + 1`, listed under `[[learners]]`
    /// in the cluster file), each with a data directory.
    pub(crate) fn start_with_learner(rt: &tokio::runtime::Runtime, size: u64) -> Processes {
        Processes::start_with_learner_as(rt, size, false)
    }

    /// [`Processes::start_with_learner`], every node with `--admin-calls` when
    /// `admin_calls` (so that `bank members` may change the membership).
    pub(crate) fn start_with_learner_as(
        rt: &tokio::runtime::Runtime,
        size: u64,
        admin_calls: bool,
    ) -> Processes {
        let learner = size + 1;
        let adjust = |config: &mut ClusterConfig| {
            let port = free_ports(1)[0];
            config.learners = vec![NodeConfig {
                id: learner,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            }];
        };
        let mut procs = Processes::start_cluster_serving(
            rt,
            size,
            &BTreeSet::new(),
            false,
            admin_calls,
            &[],
            adjust,
        );
        procs.start_learner(rt, learner);
        procs
    }

    /// Members `1..=size` (with `--admin-calls`), whose cluster file knows nothing more,
    /// and node `size + 1`, started with a cluster file of its own that lists it as a
    /// learner: a node about to be added with `bank members add --addr`. `config` (and
    /// so [`remote`](Self::remote)) lists it as a learner; `bank` commands use the
    /// members' file.
    pub(crate) fn start_with_outside_learner(rt: &tokio::runtime::Runtime, size: u64) -> Processes {
        let mut procs =
            Processes::start_cluster_serving(rt, size, &BTreeSet::new(), false, true, &[], |_| {});
        let learner = size + 1;
        procs.config.learners = vec![NodeConfig {
            id: learner,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, free_ports(1)[0])),
        }];
        let path = procs.dir.path().join(format!("cluster-n{learner}.toml"));
        std::fs::write(&path, procs.config.to_toml_string()).expect("write config");
        procs.own_config.insert(learner, path);
        procs.start_learner(rt, learner);
        procs
    }

    /// Starts learner `id` and waits until every running node serves.
    fn start_learner(&mut self, rt: &tokio::runtime::Runtime, id: NodeId) {
        let child = self.spawn_node(id);
        self.nodes.insert(id, child);
        assert!(
            self.wait_until_serving(rt, Duration::from_secs(10)),
            "the learner did not start"
        );
    }

    fn start_cluster_serving(
        rt: &tokio::runtime::Runtime,
        size: u64,
        memory: &BTreeSet<NodeId>,
        with_metrics: bool,
        admin_calls: bool,
        node_args: &[&str],
        adjust: impl Fn(&mut ClusterConfig),
    ) -> Processes {
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir");
            // One call for every port, so that none is handed out twice.
            let mut ports = free_ports(if with_metrics { 2 * size } else { size });
            let metrics_ports = ports.split_off(size as usize);
            let mut config = ClusterConfig {
                cluster_id: unique_cluster_id(),
                nodes: ports
                    .into_iter()
                    .zip(1..)
                    .map(|(port, id)| NodeConfig {
                        id,
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    })
                    .collect(),
                ..ClusterConfig::local_default()
            };
            adjust(&mut config);
            let config_path = dir.path().join("cluster.toml");
            std::fs::write(&config_path, config.to_toml_string()).expect("write config");
            let metrics = metrics_ports
                .into_iter()
                .zip(1..)
                .map(|(port, id)| (id, SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
                .collect();
            let mut procs = Processes {
                dir,
                config,
                config_path,
                nodes: BTreeMap::new(),
                memory: memory.clone(),
                metrics,
                admin_calls,
                node_args: node_args.iter().map(|a| a.to_string()).collect(),
                own_config: BTreeMap::new(),
            };
            for id in 1..=size {
                let child = procs.spawn_node(id);
                procs.nodes.insert(id, child);
            }
            if procs.wait_until_serving(rt, Duration::from_secs(10)) {
                return procs;
            }
            eprintln!("attempt {attempt}: a node did not start; retrying with new ports");
        }
        panic!("the cluster did not start");
    }

    pub(crate) fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("data-n{id}"))
    }

    pub(crate) fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    /// Starts node `id` on its configured port and data directory (or `--memory`); its
    /// stderr is appended to its log file, after a line marking the (re)start.
    fn spawn_node(&self, id: NodeId) -> Child {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log file");
        let _ = writeln!(log, "==== test harness: starting n{id} ====");
        let mut command = Command::new(BANK);
        command
            .args([
                "node",
                "--test-controls",
                "--id",
                &id.to_string(),
                "--config",
            ])
            .arg(self.own_config.get(&id).unwrap_or(&self.config_path));
        if self.admin_calls {
            command.arg("--admin-calls");
        }
        command.args(&self.node_args);
        if let Some(addr) = self.metrics.get(&id) {
            command.arg("--metrics-addr").arg(addr.to_string());
        }
        if self.memory.contains(&id) {
            command.arg("--memory");
        } else {
            command.arg("--data-dir").arg(self.data_dir(id));
        }
        command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bank node")
    }

    /// True once every running node answers a status call; false if one exits first
    /// or time runs out.
    pub(crate) fn wait_until_serving(
        &mut self,
        rt: &tokio::runtime::Runtime,
        limit: Duration,
    ) -> bool {
        let cluster = self.remote();
        let deadline = Instant::now() + limit;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        while Instant::now() < deadline {
            for child in self.nodes.values_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            let answers = rt.block_on(futures::future::join_all(
                ids.iter().map(|&n| cluster.replica_status(n)),
            ));
            if answers.iter().all(Result::is_ok) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub(crate) fn remote(&self) -> RemoteCluster {
        RemoteCluster::new(&self.config, RemoteOptions::default()).expect("remote cluster")
    }

    /// The nodes running now.
    pub(crate) fn running(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// True when node `id` was started and not killed since.
    pub(crate) fn is_running(&self, id: NodeId) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Kills a node with SIGKILL and reaps it.
    pub(crate) fn kill(&mut self, id: NodeId) {
        let mut child = self.nodes.remove(&id).expect("a running node");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    /// Starts a killed node again, on the same port and data directory, and waits
    /// until it answers; returns its first status. If it exits at once (its port is
    /// briefly taken, e.g. by some client's ephemeral port), tries again.
    pub(crate) fn restart(&mut self, rt: &tokio::runtime::Runtime, id: NodeId) -> NodeStatus {
        assert!(!self.is_running(id), "n{id} is running");
        let cluster = self.remote();
        for attempt in 1..=5 {
            let mut child = self.spawn_node(id);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("n{id} exited at restart attempt {attempt}: {status}");
                    break;
                }
                if let Ok(status) = rt.block_on(cluster.replica_status(id)) {
                    self.nodes.insert(id, child);
                    return status;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("n{id} did not answer within 10 s of its restart");
                }
                thread::sleep(Duration::from_millis(20));
            }
            thread::sleep(Duration::from_millis(300));
        }
        panic!("n{id} could not be restarted");
    }

    /// The process id of a running node.
    pub(crate) fn pid(&self, id: NodeId) -> u32 {
        self.nodes.get(&id).expect("a running node").id()
    }

    /// True while node `id` was started and has not exited (`false` also for a node
    /// that exited by itself).
    pub(crate) fn is_alive(&mut self, id: NodeId) -> bool {
        self.nodes
            .get_mut(&id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The leader, waited for.
    pub(crate) fn leader(&self, rt: &tokio::runtime::Runtime, limit: Duration) -> NodeId {
        let cluster = self.remote();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = rt.block_on(cluster.leader()) {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader within {limit:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// A replica's status.
    pub(crate) fn status(&self, rt: &tokio::runtime::Runtime, id: NodeId) -> NodeStatus {
        rt.block_on(self.remote().replica_status(id))
            .unwrap_or_else(|e| panic!("status of n{id}: {e}"))
    }

    /// A replica's balances and executed count, or `None` if it does not answer.
    pub(crate) fn db(&self, rt: &tokio::runtime::Runtime, id: NodeId) -> Option<DbSnapshot> {
        rt.block_on(self.remote().db(id)).ok()
    }

    /// A `bank` command against this cluster, with stdout and stderr piped.
    pub(crate) fn bank(&self, args: &[&str]) -> Running {
        let mut command = Command::new(BANK);
        command.args(args).arg("--config").arg(&self.config_path);
        Running::spawn(command)
    }

    /// The cluster's nodes as a `--endpoints` list, `1=127.0.0.1:PORT,…`.
    pub(crate) fn endpoints(&self) -> String {
        let entries: Vec<String> = self
            .config
            .nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect();
        entries.join(",")
    }

    /// Waits until every running node reports itself available.
    pub(crate) fn assert_all_available(&self, rt: &tokio::runtime::Runtime, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let down: Vec<NodeId> = self
                .running()
                .into_iter()
                .filter(|&n| !self.status(rt, n).available)
                .collect();
            if down.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replicas still unavailable: {down:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Running {
    /// Runs `command` with stdin closed and stdout and stderr piped; the `BANK_*`
    /// variables of the test's environment are not passed on (those set on `command`
    /// are).
    pub(crate) fn spawn(mut command: Command) -> Running {
        for var in ["BANK_CONFIG", "BANK_ENDPOINTS", "BANK_CLUSTER_ID"] {
            if !command.get_envs().any(|(k, _)| k == var) {
                command.env_remove(var);
            }
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bank");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let out = thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(stdout).read_to_string(&mut s);
            s
        });
        let (lines_tx, lines) = mpsc::channel();
        let err = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Running {
            child: Some(child),
            out: Some(out),
            err: Some(err),
            lines,
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends the process a signal (`INT`, `TERM`, ...) with `kill`.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Processes {
    /// Runs `bank db --json` and returns, per replica that answered, its `executed`
    /// and balances (checking each total is 100).
    pub(crate) fn bank_db(&self) -> BTreeMap<NodeId, (u64, BTreeMap<Account, i64>)> {
        let run = self.bank(&["db", "--json"]).finish(Duration::from_secs(15));
        let mut seen = BTreeMap::new();
        for row in json_lines(&run.stdout) {
            let node = row["node"].as_u64().expect("node");
            if row.get("error").is_some() {
                continue;
            }
            let balances: BTreeMap<Account, i64> = row["balances"]
                .as_object()
                .expect("balances")
                .iter()
                .map(|(k, v)| (k.parse().expect("account"), v.as_i64().expect("amount")))
                .collect();
            assert_eq!(row["total"], 100, "n{node}: {row}");
            let executed = row["executed"].as_u64().expect("executed");
            seen.insert(node, (executed, balances));
        }
        seen
    }
}

/// A running `bank` command; dropping it kills and reaps the process.
pub(crate) struct Running {
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    lines: mpsc::Receiver<String>,
}

pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Running {
    /// Waits for a stderr line containing `needle`; false on timeout or end of output.
    pub(crate) fn wait_for_stderr(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits for the process to exit, killing it after `limit`.
    pub(crate) fn finish(mut self, limit: Duration) -> Finished {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("bank command did not finish within {limit:?}");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self.out.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.err.take().map(|h| h.join().unwrap_or_default());
        Finished {
            status,
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub(crate) fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

pub(crate) fn account(v: &Value) -> Account {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an account: {v}"))
}

/// Every account with its initial balance, 10.
pub(crate) fn initial_balances() -> BTreeMap<Account, i64> {
    Account::default_set().map(|a| (a, 10)).collect()
}

/// Adds the transfers a `bank client --json` run reports as moved to `balances`, after
/// checking that every transfer completed and that its reported balances are possible.
pub(crate) fn apply_moved(balances: &mut BTreeMap<Account, i64>, run: &Finished) -> usize {
    assert!(
        run.status.success(),
        "bank client failed: {}\n{}",
        run.status,
        run.stderr
    );
    let lines = json_lines(&run.stdout);
    let mut moved = 0;
    for t in lines.iter().filter(|l| l["type"] == "transfer") {
        let outcome = t["outcome"].as_str().unwrap_or_default();
        assert!(
            outcome == "moved" || outcome == "rejected",
            "a transfer did not complete: {t}\n{}",
            run.stderr
        );
        if outcome == "moved" {
            let amount = t["amount"].as_i64().expect("amount");
            *balances.get_mut(&account(&t["from"])).expect("from") -= amount;
            *balances.get_mut(&account(&t["to"])).expect("to") += amount;
            moved += 1;
        }
    }
    let summary = lines
        .iter()
        .find(|l| l["type"] == "summary")
        .expect("a summary line");
    assert_eq!(summary["pending"], 0, "{summary}");
    assert_eq!(summary["moved"].as_u64(), Some(moved as u64), "{summary}");
    moved
}

/// Waits until `bank db --json` shows every node in `alive` with `expected`.
pub(crate) fn assert_balances(
    procs: &Processes,
    alive: &[NodeId],
    expected: &BTreeMap<Account, i64>,
    limit: Duration,
) {
    assert_eq!(expected.values().sum::<i64>(), 100, "reference total");
    let deadline = Instant::now() + limit;
    loop {
        let seen = procs.bank_db();
        let all_match = alive
            .iter()
            .all(|n| seen.get(n).is_some_and(|(_, b)| b == expected));
        if all_match {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas do not hold the reference balances\nexpected {expected:?}\ngot {seen:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn sample_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sample.csv")
}

/// A script of `sets` sets of `rounds` rounds each, every round ten one-unit transfers
/// (each account sends one and receives one, so no account runs dry), with `live` as
/// every set's live nodes.
pub(crate) fn round_robin_script(sets: usize, rounds: usize, live: &[NodeId]) -> String {
    let live: Vec<String> = live.iter().map(|n| format!("n{n}")).collect();
    let live = format!("[{}]", live.join(", "));
    let mut s = String::from("Set Number,Transactions,Live Nodes\n");
    let letters: Vec<char> = ('A'..='J').collect();
    for set in 1..=sets {
        for r in 0..rounds {
            for (i, from) in letters.iter().enumerate() {
                // Each round shifts every account's payee by one; skip the account itself.
                let to = letters[(i + 1 + r % 9) % letters.len()];
                if r == 0 && i == 0 {
                    s.push_str(&format!("{set},\"({from}, {to}, 1)\",\"{live}\"\n"));
                } else {
                    s.push_str(&format!(",\"({from}, {to}, 1)\",\n"));
                }
            }
        }
    }
    s
}

/// What a [`Load`]'s clients did: when each operation completed, how many units each
/// direction moved (acknowledged transfers only), and what failed.
#[derive(Default)]
pub(crate) struct LoadLog {
    pub(crate) completions: Vec<Instant>,
    pub(crate) moved: BTreeMap<(Account, Account), i64>,
    pub(crate) failures: Vec<String>,
}

impl LoadLog {
    /// The balances every replica must hold once the acknowledged transfers executed.
    pub(crate) fn expected_balances(&self) -> BTreeMap<Account, i64> {
        let mut expected = initial_balances();
        for (&(from, to), &units) in &self.moved {
            *expected.get_mut(&from).expect("from") -= units;
            *expected.get_mut(&to).expect("to") += units;
        }
        expected
    }

    /// Units moved by acknowledged transfers.
    pub(crate) fn total(&self) -> i64 {
        self.moved.values().sum()
    }
}

/// A background load from this process: client `i` moves one unit back and forth
/// between two accounts of its own (so nothing is ever rejected), until stopped or
/// until one of its operations fails (then its outcome is unknown and it stops).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    pub(crate) log: Arc<Mutex<LoadLog>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` (at most five) clients over `endpoints`, each operation given
    /// up after `deadline`.
    pub(crate) fn start(
        rt: &tokio::runtime::Runtime,
        endpoints: Vec<Arc<dyn Endpoint>>,
        clients: usize,
        deadline: Duration,
    ) -> Load {
        let accounts: Vec<Account> = Account::default_set().collect();
        assert!(2 * clients <= accounts.len(), "two accounts per client");
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let (a, b) = (accounts[2 * i], accounts[2 * i + 1]);
            let options = ClientOptions::default()
                .with_attempt_timeout(Duration::from_millis(500))
                .with_default_deadline(deadline);
            let mut client = Client::<Bank>::with_options(endpoints.clone(), options);
            let (stop, log) = (stop.clone(), log.clone());
            tasks.push(rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (from, to) = if n.is_multiple_of(2) { (a, b) } else { (b, a) };
                    let command = BankCommand::Transfer {
                        from,
                        to,
                        amount: 1,
                    };
                    let result = client.execute(&command).await;
                    let now = Instant::now();
                    let mut log = log.lock().expect("load log");
                    match result {
                        Ok(out) if out.is_ok() => {
                            log.completions.push(now);
                            *log.moved.entry((from, to)).or_default() += 1;
                            n += 1;
                        }
                        Ok(out) => log.failures.push(format!("{from}->{to} rejected: {out:?}")),
                        Err(e) => log.failures.push(format!("{from}->{to} failed: {e}")),
                    }
                    if !log.failures.is_empty() {
                        return;
                    }
                }
            }));
        }
        Load { stop, log, tasks }
    }

    /// Stops the clients, waits for them (bounded), and checks that none failed.
    pub(crate) fn stop(self, rt: &tokio::runtime::Runtime) -> LoadLog {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(40), t)
                    .await
                    .expect("a load client did not stop within 40 s")
                    .expect("load client task");
            });
        }
        let log = std::mem::take(&mut *self.log.lock().expect("load log"));
        assert!(log.failures.is_empty(), "load failures: {:?}", log.failures);
        log
    }
}
