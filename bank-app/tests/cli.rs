//! The `bank` binary's handling of bad input: bad arguments, bad config files, bad
//! scripts and an unreachable cluster each end in one `error: ...` line and a non-zero
//! exit, never a panic or a backtrace. No cluster is started here.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

fn bank(args: &[&str]) -> Output {
    Command::new(BANK)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run bank")
}

/// Asserts a failure with one `error:` line on stderr mentioning every `needle`, and
/// the exit code `code`.
#[track_caller]
fn assert_one_line_error(args: &[&str], code: i32, needles: &[&str]) {
    let out = bank(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: exit {:?}, stderr {stderr:?}",
        out.status
    );
    assert_eq!(lines.len(), 1, "{args:?}: one line wanted, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {stderr:?}");
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "{args:?}: {needle:?} not in {stderr:?}"
        );
    }
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{args:?}: {stderr:?}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_str().expect("utf-8 path").to_string()
}

/// A config of five nodes on ports nothing listens on.
fn dead_cluster(dir: &Path) -> String {
    let listeners: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind"))
        .collect();
    let mut text = String::new();
    for (i, l) in listeners.iter().enumerate() {
        let port = l.local_addr().expect("addr").port();
        text.push_str(&format!(
            "[[nodes]]\nid = {}\naddr = \"127.0.0.1:{port}\"\n\n",
            i + 1
        ));
    }
    write(dir, "dead.toml", &text)
}

#[test]
fn bad_arguments_are_one_line_usage_errors() {
    assert_one_line_error(&["frobnicate"], 2, &["frobnicate"]);
    assert_one_line_error(&["db", "--bogus"], 2, &["--bogus"]);
    assert_one_line_error(&["node"], 2, &["--id"]);
    assert_one_line_error(&["node", "--id", "x"], 2, &["x"]);
    assert_one_line_error(&["log"], 2, &["--node"]);
    assert_one_line_error(&["status", "--seq", "-1"], 2, &[]);
    assert_one_line_error(
        &["transfer", "--client", "A", "A", "B", "lots"],
        2,
        &["lots"],
    );
    assert_one_line_error(&["transfer", "--client", "7", "A", "B", "1"], 2, &["7"]);
    assert_one_line_error(&["transfer", "--client", "A", "A", "B"], 2, &[]);
    assert_one_line_error(&["client", "--set-timeout", "0", "x.csv"], 2, &["0"]);
    assert_one_line_error(&["client"], 2, &["SCRIPT"]);
}

#[test]
fn help_and_version_succeed() {
    let help = bank(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in ["node", "client", "db", "log", "status", "view", "transfer"] {
        assert!(text.contains(sub), "{sub} missing from {text}");
    }
    let node = bank(&["node", "--help"]);
    assert!(node.status.success());
    assert!(String::from_utf8_lossy(&node.stdout).contains("bank-data/node-N"));
    assert!(bank(&["--version"]).status.success());
}

#[test]
fn bad_configs_are_one_line_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    assert_one_line_error(
        &["db", "--config", "/nonexistent/cluster.toml"],
        1,
        &["cannot read", "/nonexistent/cluster.toml"],
    );
    let not_toml = write(d, "broken.toml", "[[nodes]\nid = 1\n");
    assert_one_line_error(
        &["db", "--config", &not_toml],
        1,
        &["broken.toml", "invalid cluster config at line 1"],
    );
    let typo = write(
        d,
        "typo.toml",
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\nprot = 3\n",
    );
    assert_one_line_error(
        &["view", "--config", &typo],
        1,
        &["typo.toml", "line 4", "prot"],
    );
    let twice = write(
        d,
        "twice.toml",
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7002\"\n",
    );
    assert_one_line_error(
        &["node", "--id", "1", "--config", &twice],
        1,
        &["listed twice"],
    );
    let one = write(
        d,
        "one.toml",
        "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n",
    );
    assert_one_line_error(
        &["node", "--id", "9", "--config", &one],
        1,
        &["node 9 is not in the cluster config"],
    );
    let file = write(d, "a-file", "");
    assert_one_line_error(
        &["node", "--id", "1", "--config", &one, "--data-dir", &file],
        1,
        &["not a directory"],
    );
}

#[test]
fn bad_scripts_are_one_line_errors_with_line_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    // Scripts are checked before the cluster is contacted: no nodes are needed.
    let config = dead_cluster(d);
    let bad_row = write(
        d,
        "bad.csv",
        "Set Number,Transactions,Live Nodes\n1,\"(A, B, 2)\",\"[n1, n2, n3]\"\n,\"(A, B, two)\",\n",
    );
    assert_one_line_error(
        &["client", "--yes", "--config", &config, &bad_row],
        1,
        &["bad.csv", "line 3"],
    );
    let bad_node = write(
        d,
        "node.csv",
        "Set Number,Transactions,Live Nodes\n1,\"(A, B, 2)\",\"[n1, n9]\"\n",
    );
    assert_one_line_error(
        &["client", "--yes", "--config", &config, &bad_node],
        1,
        &["line 2"],
    );
    let binary = d.join("binary.csv");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x01]).expect("write");
    assert_one_line_error(
        &[
            "client",
            "--yes",
            "--config",
            &config,
            binary.to_str().expect("utf-8"),
        ],
        1,
        &["line 1"],
    );
    assert_one_line_error(
        &[
            "client",
            "--yes",
            "--config",
            &config,
            "/nonexistent/script.csv",
        ],
        1,
        &["cannot read"],
    );
}

#[test]
fn an_unreachable_cluster_fails_fast_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dead_cluster(dir.path());
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/sample.csv");
    let started = Instant::now();
    assert_one_line_error(
        &[
            "transfer", "--config", &config, "--client", "A", "A", "B", "1",
        ],
        1,
        &["no replica of the cluster can be reached"],
    );
    assert_one_line_error(
        &["client", "--yes", "--config", &config, sample],
        1,
        &["no replica of the cluster can be reached"],
    );
    assert_one_line_error(
        &["log", "--node", "2", "--config", &config],
        1,
        &["n2 unreachable"],
    );
    assert_one_line_error(
        &["log", "--node", "7", "--config", &config],
        1,
        &["no replica n7"],
    );
    // Inspection commands print a row (or a JSON line) per replica, then the error.
    for json in [false, true] {
        let mut args = vec!["db", "--config", &config];
        if json {
            args.push("--json");
        }
        assert_one_line_error(&args, 1, &["no replica of the cluster can be reached"]);
        let out = bank(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let rows = stdout.lines().filter(|l| l.contains("unreachable")).count();
        assert_eq!(rows, 5, "{stdout}");
        if json {
            for line in stdout.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
                assert!(v["node"].is_u64() && v["error"].is_string(), "{line}");
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
