//! Observability across real `bank node` processes on 127.0.0.1: the Prometheus
//! endpoint of `bank node --metrics-addr`, the election and leader-change lines in the
//! nodes' logs, and `bank health` (table and `--json`) with every node up and with one
//! killed.
//!
//! Every process a test starts is killed and reaped when the test ends, pass or fail
//! (the `Processes` guard of `common`), and every wait is bounded.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{json_lines, runtime, serial, Processes};
use paxos_core::NodeId;
use serde_json::Value;

/// The body of `GET /metrics` on `addr` (HTTP/1.1, bounded by timeouts).
fn scrape(addr: SocketAddr) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .take(4 << 20)
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("status line: {head}"));
    }
    Ok(body.to_string())
}

/// The value of the sample `name{node="N"}` (no other label) in Prometheus text.
fn sample(text: &str, name: &str, node: NodeId) -> Option<f64> {
    let prefix = format!("{name}{{node=\"{node}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

/// Every metric the README documents, as it appears in the exposition.
const EXPECTED: [&str; 24] = [
    "paxos_ballot_round",
    "paxos_ballot_node",
    "paxos_leader",
    "paxos_is_leader",
    "paxos_role",
    "paxos_commit_point",
    "paxos_executed",
    "paxos_log_end",
    "paxos_sessions",
    "paxos_awaiting_replies",
    "paxos_queued_requests",
    "paxos_command_queue_depth",
    "paxos_voting",
    "paxos_proposals_total",
    "paxos_accept_batches_total",
    "paxos_elections_started_total",
    "paxos_elections_won_total",
    "paxos_leader_changes_total",
    "paxos_snapshots_sent_total",
    "paxos_snapshots_installed_total",
    "paxos_rounds_total",
    "paxos_persist_seconds_bucket",
    "paxos_batch_size_bucket",
    "paxos_messages_received_total",
];

#[test]
fn metrics_endpoint_serves_prometheus_text_and_logs_name_the_leader() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start_with_metrics(&rt, 3);
    let leader = procs.leader(&rt, Duration::from_secs(10));

    // A few operations: each `bank transfer` registers a session, then transfers.
    for (client, from, to) in [("A", "A", "B"), ("B", "B", "C"), ("C", "C", "A")] {
        let done = procs
            .bank(&["transfer", "--client", client, from, to, "1"])
            .finish(Duration::from_secs(20));
        assert!(done.status.success(), "transfer failed: {}", done.stderr);
    }

    // Gauges and totals are published once a tick: wait for the leader's to show the
    // six proposals (three registrations, three transfers) and their execution.
    let addr = procs.metrics[&leader];
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(addr).unwrap_or_default();
        let proposals = sample(&text, "paxos_proposals_total", leader).unwrap_or(0.0);
        let executed = sample(&text, "paxos_executed", leader).unwrap_or(0.0);
        if proposals >= 6.0 && executed >= 6.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the leader's metrics never showed the operations:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    for name in EXPECTED {
        assert!(
            text.contains(&format!("{name}{{node=\"{leader}\"")),
            "{name} missing from n{leader}'s metrics:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE paxos_persist_seconds histogram"),
        "{text}"
    );
    assert_eq!(sample(&text, "paxos_is_leader", leader), Some(1.0));
    assert_eq!(sample(&text, "paxos_leader", leader), Some(leader as f64));
    assert_eq!(sample(&text, "paxos_role", leader), Some(2.0));
    assert!(sample(&text, "paxos_elections_won_total", leader) >= Some(1.0));
    assert!(sample(&text, "paxos_sessions", leader) >= Some(3.0));
    assert!(sample(&text, "paxos_commit_point", leader) >= Some(6.0));

    // Every follower serves its own endpoint and names the same leader.
    for id in procs.running().into_iter().filter(|&n| n != leader) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = scrape(procs.metrics[&id]).unwrap_or_default();
            if sample(&text, "paxos_leader", id) == Some(leader as f64)
                && sample(&text, "paxos_executed", id) >= Some(6.0)
            {
                assert_eq!(sample(&text, "paxos_is_leader", id), Some(0.0));
                assert!(sample(&text, "paxos_leader_changes_total", id) >= Some(1.0));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "n{id}'s metrics never showed n{leader} leading:\n{text}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    // The info lines: the winner's election, and every replica's leader change.
    let log = |id| std::fs::read_to_string(procs.log_path(id)).unwrap_or_default();
    let winner = log(leader);
    assert!(
        winner.contains("starting an election") && winner.contains("elected leader"),
        "n{leader}'s log:\n{winner}"
    );
    for id in procs.running() {
        let text = log(id);
        let adopted = format!("new_leader={leader}");
        assert!(
            text.lines().any(|l| l.contains("INFO")
                && l.contains("leader changed")
                && l.contains(&adopted)),
            "n{id}'s log has no leader change to n{leader}:\n{text}"
        );
    }
}

/// `bank health --json`, one object per replica, by node.
fn health_json(procs: &Processes) -> BTreeMap<u64, Value> {
    let done = procs
        .bank(&["health", "--json"])
        .finish(Duration::from_secs(20));
    assert!(
        done.status.success(),
        "bank health --json failed: {}",
        done.stderr
    );
    json_lines(&done.stdout)
        .into_iter()
        .map(|v| (v["node"].as_u64().expect("a node id"), v))
        .collect()
}

#[test]
fn health_lists_every_replica_with_its_lag_and_the_unreachable_as_such() {
    let _serial = serial();
    let rt = runtime();
    let mut procs = Processes::start_cluster(&rt, 3, &Default::default(), |_| {});
    let leader = procs.leader(&rt, Duration::from_secs(10));
    let done = procs
        .bank(&["transfer", "--client", "A", "A", "B", "1"])
        .finish(Duration::from_secs(20));
    assert!(done.status.success(), "transfer failed: {}", done.stderr);

    // Every replica up: one leader, everyone following it, lag known everywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = health_json(&procs);
        assert_eq!(rows.len(), 3, "{rows:?}");
        let settled = rows
            .values()
            .all(|r| r["leader"] == leader && r["executed"].as_u64() >= Some(2) && r["lag"] == 0);
        if settled {
            break rows;
        }
        assert!(Instant::now() < deadline, "never settled: {rows:?}");
        thread::sleep(Duration::from_millis(100));
    };
    for (id, row) in &rows {
        for key in [
            "node", "role", "leader", "ballot", "commit", "executed", "lag",
        ] {
            assert!(!row[key].is_null(), "n{id}: {key} is null in {row}");
        }
        assert_eq!(row["reachable"], true);
        let role = if *id == leader { "leader" } else { "follower" };
        assert_eq!(row["role"], role, "{row}");
        assert_eq!(row["ballot"]["node"], leader, "{row}");
    }

    // The table says the same.
    let table = procs.bank(&["health"]).finish(Duration::from_secs(20));
    assert!(table.status.success(), "{}", table.stderr);
    let header = table.stdout.lines().next().unwrap_or_default();
    for column in [
        "node", "role", "leader", "ballot", "commit", "executed", "lag",
    ] {
        assert!(header.contains(column), "{}", table.stdout);
    }
    assert!(
        table.stdout.contains(&format!("leader: n{leader} ")),
        "{}",
        table.stdout
    );

    // A follower killed: listed as unreachable; the others still show their lag.
    let down = (1..=3).find(|&n| n != leader).expect("a follower");
    procs.kill(down);
    let rows = health_json(&procs);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[&down]["reachable"], false, "{rows:?}");
    assert!(rows[&down]["error"].is_string(), "{rows:?}");
    assert!(rows[&down]["role"].is_null(), "{rows:?}");
    for (id, row) in rows.iter().filter(|(id, _)| **id != down) {
        assert_eq!(row["reachable"], true, "n{id}: {row}");
        assert!(row["lag"].is_u64(), "n{id}: {row}");
    }
    let table = procs.bank(&["health"]).finish(Duration::from_secs(20));
    assert!(table.status.success(), "{}", table.stderr);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("n{down} ")) && l.contains("unreachable")),
        "{}",
        table.stdout
    );

    // No replica answers: health still lists them all, and fails.
    for id in procs.running() {
        procs.kill(id);
    }
    let none = procs
        .bank(&["health", "--json"])
        .finish(Duration::from_secs(20));
    assert!(!none.status.success(), "{}", none.stdout);
    assert_eq!(json_lines(&none.stdout).len(), 3, "{}", none.stdout);
}
