//! `bank members` between `bank node` processes on 127.0.0.1, under load: a learner
//! joins the voting members, a member leaves, a joined member restarts, and no
//! acknowledged transfer is lost.

mod common;

use std::time::Duration;

use paxos_core::AcceptorStatus;
use paxos_transport_tcp::RemoteCluster;

use common::{assert_balances, json_lines, runtime, serial, Load, Processes};

/// Three clients through every node and learner of `cluster` (the learner may lead
/// once it is a member).
fn load(rt: &tokio::runtime::Runtime, cluster: &RemoteCluster) -> Load {
    Load::start(
        rt,
        cluster.endpoints_with_learners(),
        3,
        Duration::from_secs(30),
    )
}

/// Stops the load; checks that every acknowledged transfer is in the balances of
/// every running replica (learners included).
fn finish(load: Load, rt: &tokio::runtime::Runtime, procs: &Processes, what: &str) {
    let log = load.stop(rt);
    let total = log.total();
    eprintln!("{what}: {total} transfers acknowledged");
    assert!(total > 20, "the load barely ran: {total}");
    assert_balances(
        procs,
        &procs.running(),
        &log.expected_balances(),
        Duration::from_secs(30),
    );
}

/// Runs `bank ARGS`, which must succeed, and returns its JSON lines and its stderr.
fn run(procs: &Processes, args: &[&str]) -> (Vec<serde_json::Value>, String) {
    let run = procs.bank(args).finish(Duration::from_secs(60));
    assert!(
        run.status.success(),
        "bank {args:?} failed: {}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    (json_lines(&run.stdout), run.stderr)
}

#[test]
fn members_join_and_leave_under_load() {
    let _serial = serial();
    let rt = runtime();
    // Members 1-3, learner 4 (listed under [[learners]] in the cluster file).
    let mut procs = Processes::start_with_learner_as(&rt, 3, true);
    procs.leader(&rt, Duration::from_secs(20));
    let load = load(&rt, &procs.remote());
    std::thread::sleep(Duration::from_millis(800));

    let (added, _) = run(
        &procs,
        &["members", "add", "--id", "4", "--timeout", "30", "--json"],
    );
    assert_eq!(added[0]["added"], true, "{added:?}");
    assert_eq!(added[0]["epoch"], 1);
    assert_eq!(added[0]["members"], serde_json::json!([1, 2, 3, 4]));
    let (removed, _) = run(
        &procs,
        &[
            "members",
            "remove",
            "--id",
            "3",
            "--timeout",
            "30",
            "--json",
        ],
    );
    assert_eq!(removed[0]["removed"], true, "{removed:?}");
    assert_eq!(removed[0]["epoch"], 2);
    assert_eq!(removed[0]["members"], serde_json::json!([1, 2, 4]));

    // A joined member restarts: it learns its membership from its own log, not from
    // the cluster file (which still calls it a learner).
    procs.kill(4);
    procs.restart(&rt, 4);
    std::thread::sleep(Duration::from_millis(800));

    let (listed, _) = run(&procs, &["members", "--json"]);
    assert_eq!(listed[0]["epoch"], 2, "{listed:?}");
    let reported: Vec<u64> = listed[0]["reported_by"]
        .as_array()
        .expect("reported_by")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        reported.contains(&4),
        "the restarted member is in epoch 2: {listed:?}"
    );
    // Every acknowledged transfer is in every replica's balances, the removed one's
    // (now a learner) included.
    finish(load, &rt, &procs, "membership changes under load");
}

/// The members' cluster file does not list node 4: it is added by address. It copies
/// the log before the change (the members admit it as a joining node), and the change
/// is asked for only once it has caught up.
#[test]
fn a_node_the_members_do_not_know_catches_up_then_joins_under_load() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start_with_outside_learner(&rt, 3);
    procs.leader(&rt, Duration::from_secs(20));
    let load = load(&rt, &procs.remote());
    std::thread::sleep(Duration::from_millis(800));

    let addr = procs.config.addr(4).expect("n4's address").to_string();
    let (added, stderr) = run(
        &procs,
        &[
            "members",
            "add",
            "--id",
            "4",
            "--addr",
            &addr,
            "--timeout",
            "30",
            "--json",
        ],
    );
    assert!(stderr.contains("n4 has caught up to slot"), "{stderr}");
    assert_eq!(added[0]["added"], true, "{added:?}");
    assert_eq!(added[0]["epoch"], 1);
    assert_eq!(added[0]["members"], serde_json::json!([1, 2, 3, 4]));

    // The members learned n4's address from the change.
    let (listed, _) = run(&procs, &["members", "--json"]);
    let n4 = listed[0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["node"] == 4)
        .cloned();
    assert_eq!(
        n4.as_ref().map(|m| m["address"].clone()),
        Some(serde_json::json!(addr)),
        "{listed:?}"
    );
    // n4 votes soon: it had the log already, its recovery has little to copy.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = procs.status(&rt, 4);
        if status.replica.acceptor == AcceptorStatus::Voter {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "n4 does not vote 10 s after joining: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The operator's file now lists n4 (as a learner: its vote comes from the change),
    // so that `bank db` asks it too. The members never read their file again.
    std::fs::write(&procs.config_path, procs.config.to_toml_string()).expect("config");
    finish(load, &rt, &procs, "a node added by address under load");
}
