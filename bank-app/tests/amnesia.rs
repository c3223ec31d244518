//! Three real `bank node` processes on 127.0.0.1, one of which loses its state: its
//! data directory deleted (or, run with `--memory`, simply restarted). A replica that
//! starts without state must not vote as if it had never promised or accepted anything:
//! it recovers from a majority of its peers first, so a transfer acknowledged by it and
//! one other replica survives. And a second `bank node` on a live data directory is
//! refused without touching it.
//!
//! Every process a test starts is killed and reaped when the test ends, pass or fail
//! (the `Processes` and `Running` guards of `common`), and every wait is bounded.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use bank_app::Account;
use common::{initial_balances, json_lines, runtime, serial, Finished, Processes};
use paxos_core::{AcceptorStatus, NodeId};
use serde_json::Value;

/// `A->B 1` with every replica up, then `A->B 5` with n3 down: only n1 and n2 accept it.
const SCRIPT_1: &str = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3]\"
2,\"(A, B, 5)\",\"[n1, n2]\"
";

/// After n2 lost its state: `C->D 7` with n1 down (n2 and n3 are a majority only if n2
/// votes again, which it may do only once it has recovered `A->B 5` from n1), then
/// `E->F 1` with everyone up.
const SCRIPT_2: &str = "Set Number,Transactions,Live Nodes
1,\"(C, D, 7)\",\"[n2, n3]\"
2,\"(E, F, 1)\",\"[n1, n2, n3]\"
";

const ALL: [NodeId; 3] = [1, 2, 3];

fn acc(c: char) -> Account {
    Account::new(c).expect("a letter")
}

/// Plays `script` with `bank client --yes --json` and returns the run and its transfer
/// lines, after checking it succeeded.
fn play(procs: &Processes, name: &str, script: &str, set_timeout: &str) -> (Finished, Vec<Value>) {
    let path = procs.dir.path().join(name);
    std::fs::write(&path, script).expect("write script");
    let path = path.to_str().expect("utf-8 path");
    let run = procs
        .bank(&[
            "client",
            "--yes",
            "--json",
            "--set-timeout",
            set_timeout,
            path,
        ])
        .finish(Duration::from_secs(60));
    assert!(
        run.status.success(),
        "bank client failed: {}\n{}",
        run.status,
        run.stderr
    );
    let transfers = json_lines(&run.stdout)
        .into_iter()
        .filter(|l| l["type"] == "transfer")
        .collect();
    (run, transfers)
}

/// Asserts that transfer `index` (from 1) of a run moved money, and returns the set it
/// completed in.
fn assert_moved(transfers: &[Value], index: usize, run: &Finished) -> u64 {
    let t = &transfers[index - 1];
    assert_eq!(t["index"], index as u64, "{t}");
    assert_eq!(
        t["outcome"], "moved",
        "transfer {index}: {t}\n{}",
        run.stderr
    );
    t["completed_in_set"].as_u64().expect("completed")
}

/// Waits until every replica has executed the same number of slots and holds the same
/// balances; returns them.
fn await_identical(procs: &Processes, limit: Duration) -> (u64, BTreeMap<Account, i64>) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = procs.bank_db();
        let first = seen.get(&1).cloned();
        if let Some(first) = first {
            if ALL.iter().all(|n| seen.get(n) == Some(&first)) {
                return first;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not converge within {limit:?}: {seen:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// n2 loses its state between two scripts; every replica must still end with the same
/// balances, `A->B 5` (acknowledged by n1 and n2 only) included.
fn a_replica_that_lost_its_state_recovers_before_voting(memory: bool) {
    let _serial = serial();
    let started = Instant::now();
    let rt = runtime();
    let in_memory: BTreeSet<NodeId> = if memory {
        [2].into_iter().collect()
    } else {
        BTreeSet::new()
    };
    let mut procs = Processes::start_cluster(&rt, 3, &in_memory, |_| {});

    // 1. A->B 1 with everyone, A->B 5 with n1 and n2 only: both acknowledged as moved.
    let (run, transfers) = play(&procs, "script-1.csv", SCRIPT_1, "5");
    assert_moved(&transfers, 1, &run);
    assert_eq!(assert_moved(&transfers, 2, &run), 2, "{}", run.stderr);
    eprintln!("script 1 done at {:?}", started.elapsed());

    // 2. n2 dies and comes back without its state; n3 is still unavailable (the last
    //    set left it so), so n2 cannot recover yet and must not vote.
    procs.kill(2);
    if !memory {
        let dir = procs.data_dir(2);
        std::fs::remove_dir_all(&dir).expect("delete n2's data directory");
        assert!(!dir.exists());
    }
    let status = procs.restart(&rt, 2);
    assert_ne!(
        status.acceptor,
        AcceptorStatus::Voter,
        "n2 votes right after losing its state: {status:?}"
    );
    eprintln!(
        "n2 restarted without state ({:?}) at {:?}",
        status.acceptor,
        started.elapsed()
    );

    // 3. C->D 7 with n2 and n3 (n1 down), then E->F 1 with everyone.
    let (run, transfers) = play(&procs, "script-2.csv", SCRIPT_2, "3");
    let c_to_d = assert_moved(&transfers, 1, &run);
    let e_to_f = assert_moved(&transfers, 2, &run);
    eprintln!(
        "script 2 done at {:?}: C->D 7 completed in set {c_to_d}, E->F 1 in set {e_to_f}",
        started.elapsed()
    );
    for line in run.stderr.lines().filter(|l| l.contains("  set ")) {
        eprintln!("{line}");
    }

    // 4. Every replica executes the same slots, holds the same balances, and A->B 5
    //    is among them.
    let (executed, balances) = await_identical(&procs, Duration::from_secs(20));
    let mut expected = initial_balances();
    for (from, to, amount) in [('A', 'B', 1), ('A', 'B', 5), ('C', 'D', 7), ('E', 'F', 1)] {
        *expected.get_mut(&acc(from)).expect("from") -= amount;
        *expected.get_mut(&acc(to)).expect("to") += amount;
    }
    assert_eq!(balances[&acc('A')], 4, "A->B 5 was lost: {balances:?}");
    assert_eq!(balances, expected);
    let n2 = procs.status(&rt, 2);
    assert!(n2.is_voter(), "{n2:?}");
    assert!(
        n2.incarnation >= 1,
        "n2 recovered under a new incarnation: {n2:?}"
    );
    eprintln!(
        "all three agree on {executed} slots at {:?}; n2 is incarnation {}",
        started.elapsed(),
        n2.incarnation
    );
}

#[test]
fn a_wiped_data_directory_is_recovered_from_the_peers() {
    a_replica_that_lost_its_state_recovers_before_voting(false);
}

#[test]
fn a_restarted_memory_node_is_recovered_from_the_peers() {
    a_replica_that_lost_its_state_recovers_before_voting(true);
}

/// The names of a directory's files, with the sizes of those that must not change (all
/// but the write-ahead log segments, which grow with every write).
fn files(dir: &Path) -> BTreeMap<String, Option<u64>> {
    std::fs::read_dir(dir)
        .expect("read data dir")
        .map(|e| {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let size = e.metadata().expect("metadata").len();
            let growing = name.starts_with("wal-");
            (name, (!growing).then_some(size))
        })
        .collect()
}

/// `bank transfer` of one unit as client `from`.
fn transfer(procs: &Processes, from: &str, to: &str) -> Finished {
    procs
        .bank(&["transfer", "--client", from, from, to, "1"])
        .finish(Duration::from_secs(30))
}

#[test]
fn a_second_node_on_a_live_data_directory_is_refused() {
    let _serial = serial();
    let rt = runtime();
    let mut procs = Processes::start_cluster(&rt, 3, &BTreeSet::new(), |_| {});
    let first = transfer(&procs, "A", "B");
    assert!(first.status.success(), "{}", first.stderr);
    let dir = procs.data_dir(1);
    let before = files(&dir);
    let pid = procs.pid(1);
    let executed = procs.status(&rt, 1).replica.executed;

    // The same node again, on the same directory: refused at once, naming it.
    let started = Instant::now();
    let second = procs
        .bank(&[
            "node",
            "--id",
            "1",
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ])
        .finish(Duration::from_secs(10));
    let took = started.elapsed();
    eprintln!(
        "the second node exited in {took:?}: {}",
        second.stderr.trim()
    );
    assert!(!second.status.success(), "{}", second.stderr);
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let message = format!(
        "error: data directory {} is in use by another process",
        dir.display()
    );
    assert!(
        second.stderr.contains(&message),
        "{message:?} not in {:?}",
        second.stderr
    );
    let errors = second.stderr.lines().filter(|l| l.starts_with("error:"));
    assert_eq!(errors.count(), 1, "{}", second.stderr);

    // The first node is untouched and keeps serving.
    assert_eq!(files(&dir), before, "the directory changed");
    assert!(procs.is_alive(1), "the first node died");
    assert_eq!(procs.pid(1), pid);
    let again = transfer(&procs, "B", "C");
    assert!(again.status.success(), "{}", again.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.status(&rt, 1).replica.executed <= executed {
        assert!(Instant::now() < deadline, "n1 no longer executes");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        files(&dir).keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    let (_, balances) = await_identical(&procs, Duration::from_secs(10));
    assert_eq!(
        (
            balances[&acc('A')],
            balances[&acc('B')],
            balances[&acc('C')]
        ),
        (9, 10, 11)
    );
}
