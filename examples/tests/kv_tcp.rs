//! Runs the `kv_tcp` example as it is meant to run: three node processes on 127.0.0.1
//! (free ports, a temporary data directory) and one process per client command. A node
//! is killed halfway and the store keeps working. Every process the test starts is
//! killed and reaped when it ends, pass or fail, and every wait is bounded.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long one client command may run.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// Builds the example (a no-op when it is up to date) and returns its path.
fn example_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "examples", "--example", "kv_tcp"])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the kv_tcp example failed");
    // target/<profile>/deps/kv_tcp-<hash> -> target/<profile>/examples/kv_tcp
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    profile_dir
        .join("examples")
        .join(format!("kv_tcp{}", std::env::consts::EXE_SUFFIX))
}

/// The node processes; dropping it kills and reaps them all.
struct Nodes {
    children: Vec<(u64, Child)>,
}

impl Nodes {
    fn kill(&mut self, id: u64) {
        if let Some(i) = self.children.iter().position(|(n, _)| *n == id) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs one client command to completion within [`COMMAND_LIMIT`].
fn run(bin: &Path, cluster: &str, args: &[&str]) -> Output {
    let mut child = Command::new(bin)
        .arg("--cluster")
        .arg(cluster)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a client command");
    let deadline = Instant::now() + COMMAND_LIMIT;
    while child.try_wait().expect("poll").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kv_tcp {args:?} did not finish within {COMMAND_LIMIT:?}");
        }
        sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Runs a command until it succeeds (the cluster may still be forming), within a bound.
fn run_ok(bin: &Path, cluster: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        let out = run(bin, cluster, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "kv_tcp {args:?} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_processes_serve_puts_and_gets_and_survive_a_killed_node() {
    let bin = example_binary();
    let data = tempfile::tempdir().expect("temp dir");
    // Three free ports, released just before the nodes bind them.
    let ports: Vec<u16> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect();
    let cluster = (1..=3)
        .zip(&ports)
        .map(|(id, port)| format!("{id}=127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(",");

    let mut nodes = Nodes {
        children: Vec::new(),
    };
    for id in 1..=3u64 {
        let log = std::fs::File::create(data.path().join(format!("node-{id}.log"))).expect("log");
        let child = Command::new(&bin)
            .args([
                "--cluster",
                &cluster,
                "node",
                "--id",
                &id.to_string(),
                "--data",
            ])
            .arg(data.path().join(format!("node-{id}")))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn a node");
        nodes.children.push((id, child));
    }

    assert_eq!(
        run_ok(&bin, &cluster, &["put", "alice", "10"]),
        "ok (was unset)\n"
    );
    assert_eq!(
        run_ok(&bin, &cluster, &["put", "alice", "11"]),
        "ok (was 10)\n"
    );
    assert_eq!(run_ok(&bin, &cluster, &["get", "alice"]), "11\n");
    assert_eq!(run_ok(&bin, &cluster, &["get", "bob"]), "(unset)\n");

    let status = run_ok(&bin, &cluster, &["status"]);
    assert_eq!(status.lines().count(), 3, "{status}");
    assert!(!status.contains("unreachable"), "{status}");
    let leader = status
        .lines()
        .find(|l| l.contains("Leader"))
        .and_then(|l| l.strip_prefix('n')?.split(':').next()?.parse::<u64>().ok())
        .unwrap_or(1);

    // Kill the leader: the other two elect a new one and keep serving.
    nodes.kill(leader);
    assert_eq!(
        run_ok(&bin, &cluster, &["put", "bob", "20"]),
        "ok (was unset)\n"
    );
    assert_eq!(run_ok(&bin, &cluster, &["get", "alice"]), "11\n");
    assert_eq!(run_ok(&bin, &cluster, &["get", "bob"]), "20\n");
    let status = run_ok(&bin, &cluster, &["status"]);
    let down = format!("n{leader}: unreachable");
    assert!(status.contains(&down), "{status}");
    assert_eq!(status.matches("unreachable").count(), 1, "{status}");
}
