//! The `bank` binary's handling of bad input: bad arguments, bad config files, bad
//! scripts and an unreachable cluster each end in one `error: ...` line and a non-zero
//! exit, never a panic or a backtrace. No cluster is started here.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BANK: &str = env!("CARGO_BIN_EXE_bank");

fn bank(args: &[&str]) -> Output {
    bank_with(args, &[], None)
}

/// `bank` with extra environment variables, in directory `dir` if given. The `BANK_*`
/// variables of the test's own environment are never passed on.
fn bank_with(args: &[&str], env: &[(&str, &str)], dir: Option<&Path>) -> Output {
    let mut command = Command::new(BANK);
    command
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("BANK_CONFIG")
        .env_remove("BANK_ENDPOINTS")
        .env_remove("BANK_CLUSTER_ID")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command.output().expect("run bank")
}

/// Asserts a failure with one `error:` line on stderr mentioning every `needle`.
#[track_caller]
fn assert_failed(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr {stderr:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line wanted, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    for needle in needles {
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
    }
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
    assert_one_line_error(&["leader", "transfer", "--to", "9"], 2, &["9", "n5"]);
    assert_one_line_error(&["leader", "transfer"], 2, &["--to"]);
    assert_one_line_error(
        &["leader", "transfer", "--to", "2", "--timeout", "0"],
        2,
        &["0"],
    );
}

#[test]
fn help_and_version_succeed() {
    let help = bank(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for sub in [
        "node", "client", "db", "log", "status", "view", "transfer", "bench", "heal", "reset",
        "leader",
    ] {
        assert!(text.contains(sub), "{sub} missing from {text}");
    }
    for documented in [
        "--endpoints",
        "BANK_CONFIG",
        "BANK_ENDPOINTS",
        "BANK_CLUSTER_ID",
        "as strings",
        "130",
    ] {
        assert!(
            text.contains(documented),
            "{documented} missing from {text}"
        );
    }
    let client = String::from_utf8_lossy(&bank(&["client", "--help"]).stdout).into_owned();
    for documented in ["--quiet", "quit", "Ctrl-C", "bank heal"] {
        assert!(
            client.contains(documented),
            "{documented} missing from {client}"
        );
    }
    let node = bank(&["node", "--help"]);
    assert!(node.status.success());
    let node_help = String::from_utf8_lossy(&node.stdout).into_owned();
    assert!(node_help.contains("bank-data/node-N"));
    assert!(node_help.contains("--admin-calls"), "{node_help}");
    assert!(node_help.contains("--session-ttl <SECS>"), "{node_help}");
    assert!(node_help.contains("[default: 3600]"), "{node_help}");
    let leader =
        String::from_utf8_lossy(&bank(&["leader", "transfer", "--help"]).stdout).into_owned();
    for documented in ["--to", "--timeout", "--admin-calls", "--json"] {
        assert!(
            leader.contains(documented),
            "{documented} missing from {leader}"
        );
    }
    // Test controls are explicit, and the help says what they allow.
    assert!(
        node_help.contains("--test-controls") && node_help.contains("availability"),
        "{node_help}"
    );
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

#[test]
fn transfers_that_cannot_succeed_are_refused_before_submission() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing listens: a transfer that got as far as the cluster would fail otherwise.
    let config = dead_cluster(dir.path());
    let started = Instant::now();
    let transfer = |args: &[&str], code: i32, needles: &[&str]| {
        let mut all = vec!["transfer", "--config", &config];
        all.extend_from_slice(args);
        assert_one_line_error(&all, code, needles);
    };
    transfer(
        &["--client", "A", "A", "A", "1"],
        2,
        &["transfer A->A 1 cannot succeed: sender and receiver are both A (not submitted)"],
    );
    transfer(
        &["--client", "A", "A", "B", "0"],
        2,
        &["amount 0 is not positive"],
    );
    transfer(
        &["--client", "A", "A", "B", "-5"],
        2,
        &["amount -5 is not positive"],
    );
    transfer(&["--client", "A", "A", "K", "1"], 2, &["unknown account K"]);
    transfer(
        &["--client", "Z", "A", "B", "1"],
        2,
        &["unknown client Z", "A-J"],
    );
    // A possible transfer gets as far as the cluster (which is not there).
    transfer(
        &["--client", "A", "A", "B", "1"],
        1,
        &["no replica of the cluster can be reached"],
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn scripts_with_transfers_that_cannot_succeed_are_refused_with_their_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dead_cluster(dir.path());
    let script = write(
        dir.path(),
        "doomed.csv",
        "Set Number,Transactions,Live Nodes\n1,\"(A, B, 2)\",\"[n1, n2, n3]\"\n,\"(D, D, 2)\",\n",
    );
    assert_one_line_error(
        &["client", "--yes", "--config", &config, &script],
        1,
        &[
            "doomed.csv",
            "line 3",
            "cannot succeed: sender and receiver are both D",
        ],
    );
}

#[test]
fn endpoints_and_environment_variables_name_the_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dead_cluster(dir.path());
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let endpoint = format!("7=127.0.0.1:{port}");
    let unreachable = "n7 unreachable";
    // --endpoints, and BANK_ENDPOINTS: one replica, n7, on that port.
    for out in [
        bank_with(&["log", "--node", "7", "--endpoints", &endpoint], &[], None),
        bank_with(
            &["log", "--node", "7"],
            &[("BANK_ENDPOINTS", &endpoint)],
            None,
        ),
        bank_with(
            &["log", "--node", "7", "--endpoints", &endpoint],
            &[("BANK_CONFIG", "/nonexistent/cluster.toml")],
            None,
        ),
    ] {
        assert_failed(&out, 1, &[unreachable]);
    }
    // BANK_CONFIG is read; a flag wins over it; --config wins over BANK_ENDPOINTS.
    assert_failed(
        &bank_with(&["db"], &[("BANK_CONFIG", "/nonexistent/env.toml")], None),
        1,
        &["cannot read", "/nonexistent/env.toml"],
    );
    assert_failed(
        &bank_with(
            &["db", "--config", "/nonexistent/flag.toml"],
            &[("BANK_CONFIG", "/nonexistent/env.toml")],
            None,
        ),
        1,
        &["/nonexistent/flag.toml"],
    );
    assert_failed(
        &bank_with(
            &["db", "--config", "/nonexistent/flag.toml"],
            &[("BANK_ENDPOINTS", &endpoint)],
            None,
        ),
        1,
        &["/nonexistent/flag.toml"],
    );
    // An empty variable counts as unset (here BANK_CONFIG is used).
    let out = bank_with(
        &["log", "--node", "7"],
        &[("BANK_ENDPOINTS", ""), ("BANK_CONFIG", &config)],
        None,
    );
    assert_failed(&out, 1, &["no replica n7"]);
    // Two flags, or two variables, are bad arguments; so are bad endpoint lists and a
    // cluster id the config file contradicts.
    assert_failed(
        &bank_with(
            &["db", "--config", &config, "--endpoints", &endpoint],
            &[],
            None,
        ),
        2,
        &["--config and --endpoints cannot be used together"],
    );
    assert_failed(
        &bank_with(
            &["db"],
            &[("BANK_CONFIG", &config), ("BANK_ENDPOINTS", &endpoint)],
            None,
        ),
        2,
        &["BANK_CONFIG and BANK_ENDPOINTS are both set"],
    );
    assert_failed(
        &bank_with(&["db", "--endpoints", "1=localhost:7001"], &[], None),
        2,
        &["--endpoints", "expected IP:PORT"],
    );
    assert_failed(
        &bank_with(
            &["db", "--endpoints", "1=127.0.0.1:1,127.0.0.1:2"],
            &[],
            None,
        ),
        2,
        &["give every entry an id"],
    );
    assert_failed(
        &bank_with(&["db", "--config", &config, "--cluster-id", "9"], &[], None),
        2,
        &["--cluster-id 9 disagrees with", "cluster_id = 1"],
    );
    assert_failed(
        &bank_with(
            &["db", "--config", &config],
            &[("BANK_CLUSTER_ID", "x")],
            None,
        ),
        2,
        &["x"],
    );
}

/// Writes a data directory as `bank node` leaves it.
fn data_dir(path: &Path, cluster_id: u64, node: u64) {
    drop(paxos_storage_file::FileStorage::open(path, cluster_id, node).expect("storage"));
}

#[test]
fn reset_removes_the_data_directories_of_a_stopped_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let config = dead_cluster(d);
    // The default directories, bank-data/node-N, under the current directory; node 3
    // never ran.
    for n in [1, 2, 4, 5] {
        data_dir(&d.join(format!("bank-data/node-{n}")), 1, n);
    }
    std::fs::write(d.join("keep.txt"), "mine").expect("write");
    let dry = bank_with(&["reset", "--dry-run", "--config", &config], &[], Some(d));
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        text.contains("bank-data/node-1: would remove (node 1's data directory"),
        "{text}"
    );
    assert!(text.contains("bank-data/node-3: nothing there"), "{text}");
    assert!(d.join("bank-data/node-1/META").exists());

    let out = bank_with(&["reset", "--config", &config], &[], Some(d));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("bank-data/node-5: removed (node 5's data directory"),
        "{text}"
    );
    assert!(text.contains("keeps cluster_id = 1"), "{text}");
    assert!(text.contains("start every node again"), "{text}");
    assert!(!d.join("bank-data").exists(), "{text}");
    assert_eq!(
        std::fs::read_to_string(d.join("keep.txt")).expect("kept"),
        "mine"
    );
    // Nothing left: nothing to do.
    let again = bank_with(&["reset", "--config", &config], &[], Some(d));
    assert!(again.status.success());
    assert!(!String::from_utf8_lossy(&again.stdout).contains("removed"));
}

#[test]
fn reset_refuses_what_is_not_this_clusters_data_and_removes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let config = dead_cluster(d);
    let (one, two) = (d.join("one"), d.join("two"));
    let (one_s, two_s) = (one.to_str().expect("utf-8"), two.to_str().expect("utf-8"));
    data_dir(&one, 1, 1);
    data_dir(&two, 1, 2);
    let reset = |extra: &[&str]| {
        let mut args = vec![
            "reset",
            "--config",
            &config,
            "--data-dir",
            one_s,
            "--data-dir",
            two_s,
        ];
        args.extend_from_slice(extra);
        bank_with(&args, &[], None)
    };
    let untouched = || {
        assert!(one.join("META").exists() && two.join("META").exists());
    };
    // A stray file in one directory: neither is removed.
    std::fs::write(two.join("notes.txt"), "precious").expect("write");
    let out = reset(&[]);
    assert_failed(
        &out,
        1,
        &[
            "1 of the directories is not this cluster's",
            "nothing was removed",
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("holds \"notes.txt\""));
    untouched();
    std::fs::remove_file(two.join("notes.txt")).expect("remove");
    // Another cluster's directory.
    let other = d.join("other");
    data_dir(&other, 99, 1);
    let out = bank_with(
        &[
            "reset",
            "--config",
            &config,
            "--data-dir",
            other.to_str().expect("utf-8"),
        ],
        &[],
        None,
    );
    assert_failed(&out, 1, &["nothing was removed"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("belongs to cluster 99"));
    assert!(other.join("META").exists());
    // A directory a running node holds.
    let held = paxos_storage_file::FileStorage::open(&one, 1, 1).expect("storage");
    let out = reset(&[]);
    assert_failed(&out, 1, &[]);
    untouched();
    drop(held);
    // Not a config file: --new-cluster-id has nothing to rewrite.
    assert_failed(
        &bank_with(
            &["reset", "--new-cluster-id", "--endpoints", "1=127.0.0.1:1"],
            &[],
            Some(d),
        ),
        2,
        &["--new-cluster-id", "--config"],
    );
    // At last: both removed, and the config gets a new cluster id, comments kept.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("# my cluster\n{text}")).expect("write");
    let out = reset(&["--new-cluster-id"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!one.exists() && !two.exists());
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.starts_with("cluster_id = "), "{text}");
    assert!(text.contains("# my cluster\n[[nodes]]"), "{text}");
    let new_id: u64 = text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cluster_id = "))
        .and_then(|n| n.parse().ok())
        .expect("a cluster id");
    assert!(new_id > 1);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("cluster_id = {new_id} (was 1)"))
    );
}
