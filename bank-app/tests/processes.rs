//! Five real `bank node` processes on 127.0.0.1: scripts played through `bank client`,
//! the leader killed with SIGKILL in the middle of a run, and a retried request that
//! must not move money twice.
//!
//! Every process a test starts is killed and reaped when the test ends, pass or fail
//! (the [`Processes`] guard), and every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bank_app::{
    Account, BankCommand, BankOutput, Cluster, ClusterConfig, NodeConfig, RemoteCluster,
    RemoteOptions, RemoteRequest, RemoteResponse,
};
use bytes::Bytes;
use paxos_core::{NodeId, Request, Response};
use paxos_transport_tcp::{ClientConfig, TcpClient};
use serde_json::Value;

const BANK: &str = env!("CARGO_BIN_EXE_bank");
const NODES: u64 = 5;
const CLUSTER_ID: u64 = 0xBA4C;

/// Node processes and the temporary directory holding their config and logs. Dropping
/// it kills and reaps every process still running.
struct Processes {
    dir: tempfile::TempDir,
    config: ClusterConfig,
    config_path: PathBuf,
    nodes: BTreeMap<NodeId, Child>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            // Show what the nodes said, to explain the failure.
            for id in 1..=NODES {
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("---- n{id} log (last lines, newest first) ----");
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Ports no one listens on right now (a tiny race with other programs is accepted:
/// [`Processes::start`] retries with new ports if a node cannot bind).
fn free_ports(n: u64) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Processes {
    /// Starts five nodes and waits until each answers; retries with new ports when one
    /// of them exits at once (its port was taken in the meantime).
    fn start(rt: &tokio::runtime::Runtime) -> Processes {
        for attempt in 1..=3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = ClusterConfig {
                cluster_id: CLUSTER_ID,
                nodes: free_ports(NODES)
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
            std::fs::write(&config_path, config.to_toml_string()).expect("write config");
            let mut procs = Processes {
                dir,
                config,
                config_path,
                nodes: BTreeMap::new(),
            };
            for id in 1..=NODES {
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

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("data-n{id}"))
    }

    fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("n{id}.log"))
    }

    fn spawn_node(&self, id: NodeId) -> Child {
        let log = std::fs::File::create(self.log_path(id)).expect("log file");
        Command::new(BANK)
            .args(["node", "--id", &id.to_string(), "--config"])
            .arg(&self.config_path)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bank node")
    }

    /// True once every node answers a status call; false if one exits first or time
    /// runs out.
    fn wait_until_serving(&mut self, rt: &tokio::runtime::Runtime, limit: Duration) -> bool {
        let cluster = self.remote();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            for child in self.nodes.values_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            let answers = rt.block_on(futures::future::join_all(
                (1..=NODES).map(|n| cluster.replica_status(n)),
            ));
            if answers.iter().all(Result::is_ok) {
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn remote(&self) -> RemoteCluster {
        RemoteCluster::new(&self.config, RemoteOptions::default()).expect("remote cluster")
    }

    /// Kills a node with SIGKILL and reaps it.
    fn kill(&mut self, id: NodeId) {
        let child = self.nodes.get_mut(&id).expect("a started node");
        child.kill().expect("kill");
        child.wait().expect("reap");
    }

    /// The leader, waited for.
    fn leader(&self, rt: &tokio::runtime::Runtime, limit: Duration) -> NodeId {
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

    /// A `bank` command against this cluster, with stdout and stderr piped.
    fn bank(&self, args: &[&str]) -> Running {
        let mut child = Command::new(BANK)
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
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
}

/// A running `bank` command; dropping it kills and reaps the process.
struct Running {
    child: Option<Child>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
    lines: mpsc::Receiver<String>,
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Running {
    /// Waits for a stderr line containing `needle`; false on timeout or end of output.
    fn wait_for_stderr(&self, needle: &str, limit: Duration) -> bool {
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
    fn finish(mut self, limit: Duration) -> Finished {
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn account(v: &Value) -> Account {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an account: {v}"))
}

/// Adds the transfers a `bank client --json` run reports as moved to `balances`, after
/// checking that every transfer completed and that its reported balances are possible.
fn apply_moved(balances: &mut BTreeMap<Account, i64>, run: &Finished) -> usize {
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
fn assert_balances(
    procs: &Processes,
    alive: &[NodeId],
    expected: &BTreeMap<Account, i64>,
    limit: Duration,
) {
    assert_eq!(expected.values().sum::<i64>(), 100, "reference total");
    let deadline = Instant::now() + limit;
    loop {
        let run = procs
            .bank(&["db", "--json"])
            .finish(Duration::from_secs(15));
        let rows = json_lines(&run.stdout);
        let mut seen = BTreeMap::new();
        for row in &rows {
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
            seen.insert(node, balances);
        }
        let all_match = alive
            .iter()
            .all(|n| seen.get(n).is_some_and(|b| b == expected));
        if all_match {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas do not hold the reference balances\nexpected {expected:?}\ngot {seen:?}\n{}",
            run.stdout
        );
        thread::sleep(Duration::from_millis(100));
    }
}

fn sample_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/sample.csv")
}

/// Three sets, all replicas live, many one-unit transfers per client.
fn busy_script() -> String {
    let mut s = String::from("Set Number,Transactions,Live Nodes\n");
    let letters: Vec<char> = ('A'..='J').collect();
    for set in 1..=3 {
        let rounds = if set == 2 { 10 } else { 4 };
        for r in 0..rounds {
            for (i, from) in letters.iter().enumerate() {
                let to = letters[(i + 1 + r) % letters.len()];
                let to = if to == *from {
                    letters[(i + 2) % 10]
                } else {
                    to
                };
                if r == 0 && i == 0 {
                    s.push_str(&format!(
                        "{set},\"({from}, {to}, 1)\",\"[n1, n2, n3, n4, n5]\"\n"
                    ));
                } else {
                    s.push_str(&format!(",\"({from}, {to}, 1)\",\n"));
                }
            }
        }
    }
    s
}

#[test]
fn scripts_run_across_five_processes_and_survive_a_killed_leader() {
    let started = Instant::now();
    let rt = runtime();
    let mut procs = Processes::start(&rt);
    let first_leader = procs.leader(&rt, Duration::from_secs(10));
    eprintln!(
        "cluster up in {:?}, leader n{first_leader}",
        started.elapsed()
    );

    // 1. The sample script, to the end.
    let mut expected: BTreeMap<Account, i64> = Account::default_set().map(|a| (a, 10)).collect();
    let sample = sample_script();
    let sample = sample.to_str().expect("utf-8 path");
    let run = procs
        .bank(&["client", "--yes", "--json", "--set-timeout", "2", sample])
        .finish(Duration::from_secs(30));
    let moved = apply_moved(&mut expected, &run);
    assert!(moved >= 10, "the sample moves money: {}", run.stdout);
    assert_balances(&procs, &[1, 2, 3, 4, 5], &expected, Duration::from_secs(5));
    eprintln!("sample script done at {:?}", started.elapsed());

    // 2. A busy script; the leader is killed with SIGKILL as its second set starts.
    let script = procs.dir.path().join("busy.csv");
    std::fs::write(&script, busy_script()).expect("write script");
    let running = procs.bank(&[
        "client",
        "--yes",
        "--json",
        script.to_str().expect("utf-8 path"),
    ]);
    assert!(
        running.wait_for_stderr("== Set 2", Duration::from_secs(20)),
        "the run did not reach set 2"
    );
    let victim = procs.leader(&rt, Duration::from_secs(5));
    procs.kill(victim);
    eprintln!("killed leader n{victim} at {:?}", started.elapsed());
    let run = running.finish(Duration::from_secs(30));
    assert!(
        run.stderr.contains(&format!("n{victim} unreachable")),
        "the run should report the killed node as down:\n{}",
        run.stderr
    );
    for line in run.stderr.lines().filter(|l| l.contains("  set ")) {
        eprintln!("{line}");
    }
    apply_moved(&mut expected, &run);
    let alive: Vec<NodeId> = (1..=NODES).filter(|&n| n != victim).collect();
    assert_balances(&procs, &alive, &expected, Duration::from_secs(5));
    let leader = procs.leader(&rt, Duration::from_secs(5));
    assert_ne!(leader, victim);
    eprintln!("done in {:?}", started.elapsed());
}

fn transfer_request(client: u64, seq: u64, from: char, to: char, amount: i64) -> Request {
    let command = BankCommand::Transfer {
        from: Account::new(from).expect("letter"),
        to: Account::new(to).expect("letter"),
        amount,
    };
    Request {
        client,
        seq,
        payload: postcard::to_allocvec(&command).expect("encode").into(),
    }
}

/// Submits `request` until a replica executes it, following redirects; returns the
/// reply's bytes and the node that answered.
async fn submit_to_leader(
    cluster: &RemoteCluster,
    first: NodeId,
    request: &Request,
    skip: Option<NodeId>,
) -> (Bytes, NodeId) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut target = first;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{request:?} not executed in time"
        );
        let answer = cluster
            .call(target, &RemoteRequest::Submit(request.clone()))
            .await;
        match answer {
            Ok(RemoteResponse::Submitted(Response::Ok(bytes))) => return (bytes, target),
            Ok(RemoteResponse::Submitted(Response::Redirect { leader: Some(l) }))
                if Some(l) != skip =>
            {
                target = l;
                continue;
            }
            Ok(RemoteResponse::Submitted(
                r @ (Response::Stale | Response::SessionExpired | Response::Invalid { .. }),
            )) => panic!("{request:?} answered {r:?}"),
            _ => {}
        }
        // An election is under way, or the target is the dead node: try the next one.
        tokio::time::sleep(Duration::from_millis(50)).await;
        target = target % NODES + 1;
        if Some(target) == skip {
            target = target % NODES + 1;
        }
    }
}

#[test]
fn a_retried_transfer_moves_money_once_across_a_leader_change() {
    let rt = runtime();
    let mut procs = Processes::start(&rt);
    let leader = procs.leader(&rt, Duration::from_secs(10));
    let cluster = procs.remote();
    let addr = procs.config.addr(leader).expect("leader address");

    // Bad input on the node's port: raw HTTP is refused by the handshake, and garbage
    // after a proper client handshake is answered with an error. The node keeps serving.
    if let Ok(mut s) = TcpStream::connect(addr) {
        use std::io::Write;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let garbage = rt.block_on(async {
        let mut raw = TcpClient::connect(addr, ClientConfig::new(CLUSTER_ID))
            .await
            .expect("client handshake");
        let bytes = raw
            .call(Bytes::from_static(b"\xff\xfe garbage \x00"))
            .await
            .expect("an answer");
        RemoteResponse::decode(&bytes).expect("a response")
    });
    assert!(matches!(garbage, RemoteResponse::Error(_)), "{garbage:?}");

    // Register a session and transfer A->B 3 as request 1.
    let client = 0x0E1C_E000_0000_0001;
    let transfer = transfer_request(client, 1, 'A', 'B', 3);
    let (first, answered_by) = rt.block_on(async {
        submit_to_leader(&cluster, leader, &Request::register(client), None).await;
        submit_to_leader(&cluster, leader, &transfer, None).await
    });
    let output: BankOutput = postcard::from_bytes(&first).expect("a bank output");
    assert!(
        matches!(
            output,
            BankOutput::Transferred {
                from_balance: 7,
                to_balance: 13,
                ..
            }
        ),
        "{output:?}"
    );

    // The leader dies before the client hears back (as far as the client knows); the
    // client retries the identical request with the new leader.
    procs.kill(answered_by);
    let new_leader = procs.leader(&rt, Duration::from_secs(10));
    assert_ne!(new_leader, answered_by);
    let (again, _) = rt.block_on(submit_to_leader(
        &cluster,
        new_leader,
        &transfer,
        Some(answered_by),
    ));
    assert_eq!(again, first, "the retry gets the cached reply");

    // A later request of the same session still executes normally.
    let next = transfer_request(client, 2, 'A', 'C', 1);
    let (third, _) = rt.block_on(submit_to_leader(
        &cluster,
        new_leader,
        &next,
        Some(answered_by),
    ));
    let output: BankOutput = postcard::from_bytes(&third).expect("a bank output");
    assert!(
        matches!(
            output,
            BankOutput::Transferred {
                from_balance: 6,
                ..
            }
        ),
        "{output:?}"
    );

    let mut expected: BTreeMap<Account, i64> = Account::default_set().map(|a| (a, 10)).collect();
    expected.insert(Account::A, 6);
    expected.insert(Account::new('B').expect("letter"), 13);
    expected.insert(Account::new('C').expect("letter"), 11);
    let alive: Vec<NodeId> = (1..=NODES).filter(|&n| n != answered_by).collect();
    assert_balances(&procs, &alive, &expected, Duration::from_secs(5));
}
