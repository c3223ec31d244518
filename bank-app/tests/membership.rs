//! `bank members` between `bank node` processes on 127.0.0.1, under load: a learner
//! joins the voting members, a member leaves, a joined member restarts, and no
//! acknowledged transfer is lost.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bank_app::{Account, Bank, BankCommand};
use paxos_core::{AcceptorStatus, Client, ClientOptions};
use paxos_transport_tcp::RemoteCluster;

use common::{assert_balances, initial_balances, json_lines, runtime, serial, Processes};

/// Three clients moving one unit back and forth between their own pair of accounts
/// until stopped, through every node and learner of `cluster`.
struct Load {
    stop: Arc<AtomicBool>,
    moved: Arc<Mutex<BTreeMap<(Account, Account), i64>>>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, cluster: &RemoteCluster) -> Load {
        let accounts: Vec<Account> = Account::default_set().collect();
        let stop = Arc::new(AtomicBool::new(false));
        let moved: Arc<Mutex<BTreeMap<(Account, Account), i64>>> = Arc::default();
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (a, b) = (accounts[2 * i], accounts[2 * i + 1]);
            let options = ClientOptions::default()
                .with_attempt_timeout(Duration::from_millis(500))
                .with_default_deadline(Duration::from_secs(30));
            // Every node, the learner too: it may lead once it is a member.
            let mut client =
                Client::<Bank>::with_options(cluster.endpoints_with_learners(), options);
            let (stop, moved, failures) = (stop.clone(), moved.clone(), failures.clone());
            tasks.push(rt.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (from, to) = if n.is_multiple_of(2) { (a, b) } else { (b, a) };
                    let command = BankCommand::Transfer {
                        from,
                        to,
                        amount: 1,
                    };
                    match client.execute(&command).await {
                        Ok(out) if out.is_ok() => {
                            *moved.lock().expect("moved").entry((from, to)).or_default() += 1;
                            n += 1;
                        }
                        other => {
                            failures
                                .lock()
                                .expect("failures")
                                .push(format!("{from}->{to}: {other:?}"));
                            return;
                        }
                    }
                }
            }));
        }
        Load {
            stop,
            moved,
            failures,
            tasks,
        }
    }

    /// Stops the clients; checks none failed and that every acknowledged transfer is
    /// in the balances of every running replica (learners included).
    fn finish(self, rt: &tokio::runtime::Runtime, procs: &Processes, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(40), t)
                    .await
                    .expect("a load client did not stop within 40 s")
                    .expect("load client task");
            });
        }
        let failures = self.failures.lock().expect("failures");
        assert!(failures.is_empty(), "load failures: {failures:?}");
        let mut expected = initial_balances();
        let moved = self.moved.lock().expect("moved");
        for (&(from, to), &units) in moved.iter() {
            *expected.get_mut(&from).expect("from") -= units;
            *expected.get_mut(&to).expect("to") += units;
        }
        let total: i64 = moved.values().sum();
        eprintln!("{what}: {total} transfers acknowledged");
        assert!(total > 20, "the load barely ran: {total}");
        assert_balances(procs, &procs.running(), &expected, Duration::from_secs(30));
    }
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
    let load = Load::start(&rt, &procs.remote());
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
    load.finish(&rt, &procs, "membership changes under load");
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
    let load = Load::start(&rt, &procs.remote());
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
    load.finish(&rt, &procs, "a node added by address under load");
}
