//! The scenario runner against an in-process cluster.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bank_app::{
    await_agreement, format_db, format_log, gather_db, heal, run_scenario, Account, BankCommand,
    BankOutput, Cluster, Console, ConsoleInput, ConsoleLine, EntryValue, LocalCluster,
    LocalClusterOptions, Rejection, RunError, RunOptions, RunProgress, Scenario, ScenarioOptions,
    TrackedCluster, TransferOutcome, SAMPLE_SCENARIO,
};
use paxos_core::NodeOptions;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

fn cluster(seed: u64) -> LocalCluster {
    LocalCluster::start(LocalClusterOptions {
        seed,
        node: NodeOptions::default().with_tick(Duration::from_millis(2)),
        ..LocalClusterOptions::default()
    })
    .expect("cluster starts")
}

fn options(set_timeout: Duration) -> RunOptions {
    RunOptions {
        set_timeout,
        ..RunOptions::default()
    }
}

/// Plays `script` without pauses; returns the report and everything the runner printed.
async fn play(
    cluster: &LocalCluster,
    script: &str,
    set_timeout: Duration,
) -> (bank_app::RunReport, String) {
    let scenario = Scenario::parse(script).expect("script parses");
    let out = Shared::default();
    let mut console = Console::new(out.clone());
    let report = run_scenario(cluster, &scenario, &options(set_timeout), &mut console)
        .await
        .expect("run completes");
    (report, out.text())
}

/// A `Write` the test can read after the runner is done with it.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

fn acc(c: char) -> Account {
    Account::new(c).expect("a letter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_commits_everything_and_the_replicas_agree() {
    timeout(LIMIT, async {
        let cluster = cluster(11);
        let (report, text) = play(&cluster, SAMPLE_SCENARIO, Duration::from_secs(2)).await;

        assert_eq!(report.transfers.len(), 18, "{text}");
        assert_eq!(report.pending(), 0, "nothing left pending:\n{text}");
        assert_eq!(report.failed(), 0, "{text}");
        assert_eq!(report.committed(), 18, "{text}");
        assert_eq!(report.rejected(), 1, "{text}");
        let rejected = report
            .transfers
            .iter()
            .find(|t| t.is_rejected())
            .expect("one rejection");
        assert_eq!(
            rejected.command,
            BankCommand::Transfer {
                from: acc('I'),
                to: acc('A'),
                amount: 20
            }
        );
        assert!(
            matches!(
                rejected.outcome,
                TransferOutcome::Committed(BankOutput::Rejected(
                    Rejection::InsufficientFunds { .. }
                ))
            ),
            "{:?}",
            rejected.outcome
        );

        // Set 4 has no majority: its transfers wait for set 5.
        let set4 = &report.sets[3];
        assert!(
            !set4.has_majority && set4.timed_out && set4.carried_over == 2,
            "{set4:?}"
        );
        for t in report.transfers.iter().filter(|t| t.set == 4) {
            assert_eq!(t.completed_in_set, Some(5), "{t:?}");
        }

        // Both LF rows failed a leader, and a new leader with a higher ballot took over.
        let failures: Vec<_> = report.leader_failures().cloned().collect();
        assert_eq!(failures.len(), 2, "{text}");
        let mut views = Vec::new();
        for n in cluster.nodes() {
            views.extend(cluster.views(n).await.expect("inspectable"));
        }
        for f in &failures {
            let (node, ballot) = (
                f.node.expect("a leader was failed"),
                f.ballot.expect("its ballot"),
            );
            assert!(
                views.iter().any(|v| v.ballot > ballot && v.leader != node),
                "no view change after n{node} failed at {ballot}: {views:?}"
            );
        }

        // Every replica ends with the same balances, total 100.
        let agreement = await_agreement(&cluster, Duration::from_secs(5)).await;
        assert!(agreement.agree, "{agreement:?}");
        assert_eq!(agreement.nodes, vec![1, 2, 3, 4, 5]);
        assert_eq!(agreement.total(), 100);
        for db in gather_db(&cluster).await {
            let db = db.result.expect("inspectable");
            assert_eq!(db.balances, agreement.balances, "n{}", db.node);
            assert_eq!(db.total(), 100);
        }

        let summary = report.summary();
        assert!(
            summary.contains("18 committed (17 moved money, 1 rejected), 0 still pending"),
            "{summary}"
        );
        assert!(text.contains("LF: leader n"), "{text}");
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

const TWO_SETS: &str = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3, n4, n5]\"
2,\"(B, C, 1)\",\"[n1, n2, n3, n4, n5]\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_pauses_between_sets() {
    timeout(LIMIT, async {
        let cluster = cluster(12);
        let scenario = Scenario::parse(TWO_SETS).expect("parses");
        let out = Shared::default();
        let input = Cursor::new("printdb\nprintstatus 1\nbogus\nprintlog n2\n\n");
        let mut console = Console::interactive(input, out.clone());
        let report = run_scenario(
            &cluster,
            &scenario,
            &options(Duration::from_secs(5)),
            &mut console,
        )
        .await
        .expect("run completes");
        let text = out.text();
        assert_eq!(report.committed(), 2, "{text}");

        // The commands ran after set 1 and before set 2.
        let between = text
            .split_once("set 1 finished")
            .and_then(|(_, rest)| rest.split_once("== Set 2"))
            .map(|(between, _)| between)
            .unwrap_or_else(|| panic!("no pause between the sets:\n{text}"));
        assert!(between.contains("PrintDB"), "{between}");
        for n in 1..=5 {
            assert!(
                between.contains(&format!("\nn{n}  ")),
                "row n{n}: {between}"
            );
        }
        assert!(between.contains("PrintStatus slot 1"), "{between}");
        assert!(between.contains("unknown command \"bogus\""), "{between}");
        assert!(between.contains("PrintLog n2"), "{between}");
        assert!(between.contains("register (client A)"), "{between}");
        // Five prompts: one per line read, the last one answered by the empty line.
        assert_eq!(between.matches("] > ").count(), 5, "{between}");
        // The last set is not followed by a pause.
        let after = text.split_once("== Set 2").map_or("", |(_, a)| a);
        assert!(!after.contains("] > "), "{after}");
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_input_stops_the_pauses() {
    timeout(LIMIT, async {
        let cluster = cluster(13);
        let scenario = Scenario::parse(TWO_SETS).expect("parses");
        let out = Shared::default();
        let mut console = Console::interactive(Cursor::new("printview\n"), out.clone());
        let report = run_scenario(
            &cluster,
            &scenario,
            &options(Duration::from_secs(5)),
            &mut console,
        )
        .await
        .expect("run completes");
        assert_eq!(report.committed(), 2, "{}", out.text());
        assert!(!console.is_interactive());
        assert!(out.text().contains("PrintView"), "{}", out.text());
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_set_without_a_majority_leaves_its_transfers_pending() {
    timeout(LIMIT, async {
        let cluster = cluster(14);
        let script = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3, n4, n5]\"
2,\"(C, D, 1)\",\"[n1, n2]\"
,\"(C, E, 1)\",
";
        let started = tokio::time::Instant::now();
        let (report, text) = play(&cluster, script, Duration::from_millis(500)).await;
        assert!(started.elapsed() < Duration::from_secs(20), "{text}");
        assert!(report.transfers[0].is_committed(), "{text}");
        assert!(report.transfers[1].is_pending(), "{text}");
        assert!(report.transfers[2].is_pending(), "{text}");
        assert_eq!(report.pending(), 2);
        assert!(text.contains("0 completed, 2 still pending"), "{text}");
        assert!(text.contains("(no majority: nothing can commit)"), "{text}");
        let last = &report.sets[1];
        assert!(
            !last.has_majority && last.timed_out && last.carried_over == 2,
            "{last:?}"
        );
        assert!(
            report
                .summary()
                .contains("1 committed (1 moved money, 0 rejected), 2 still pending"),
            "{}",
            report.summary()
        );
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_is_treated_as_down() {
    timeout(LIMIT, async {
        let cluster = cluster(15);
        // A new cluster is founded only once every replica heard from every other one:
        // stop n5 after that, not before.
        assert!(cluster.await_voters(Duration::from_secs(10)).await);
        cluster.handle(5).expect("n5 exists").shutdown().await;
        let (report, text) = play(&cluster, TWO_SETS, Duration::from_secs(5)).await;
        assert_eq!(report.committed(), 2, "{text}");
        assert_eq!(report.sets[0].unreachable, vec![5], "{text}");
        assert!(
            text.contains("n5 unreachable: node stopped; treated as down"),
            "{text}"
        );

        let table = format_db(&gather_db(&cluster).await);
        assert!(
            table.contains("n5       n5 unreachable: node stopped"),
            "{table}"
        );
        let agreement = await_agreement(&cluster, Duration::from_secs(5)).await;
        assert!(agreement.agree, "{agreement:?}");
        assert_eq!(agreement.nodes, vec![1, 2, 3, 4]);
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_is_founded_before_a_set_takes_replicas_down() {
    timeout(LIMIT, async {
        // The first set leaves n4 and n5 out of a cluster that is still new: cut off at
        // once, they would keep it from ever being founded. The runner waits first.
        let cluster = cluster(16);
        let script = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3]\"
2,\"(B, C, 1)\",\"[n1, n2, n3, n4, n5]\"
";
        let (report, text) = play(&cluster, script, Duration::from_secs(5)).await;
        // (The runner says "waiting until every replica has joined it" only if the
        // founding is still under way when it looks: the outcome is what counts.)
        assert_eq!(report.committed(), 2, "{text}");
        assert_eq!(report.transfers[0].completed_in_set, Some(1), "{text}");

        // Sessions are the cluster's: each client's is the slot of its registration,
        // and its numbered entries name it; PrintLog names the registrations.
        let leader = cluster.leader().await.expect("a leader");
        let log = cluster.log(leader).await.expect("inspectable");
        for (client, command) in [(acc('A'), &report.transfers[0].command), (acc('B'), &report.transfers[1].command)] {
            let session = report.clients[&client];
            assert!(
                matches!(log[session as usize].value, EntryValue::Register { .. }),
                "{client}: session {session} in {log:?}"
            );
            assert!(
                log.iter().any(|e| matches!(&e.value, EntryValue::Command { client: c, command: k, .. } if *c == session && k == command)),
                "{client}: no command of session {session} in {log:?}"
            );
        }
        let table = format_log(leader, &Ok(log), &report.client_names());
        assert!(table.contains("register (client A)"), "{table}");
        assert!(table.contains("register (client B)"), "{table}");
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

/// The runner's future can be spawned on a multi-threaded runtime, for any cluster.
#[allow(dead_code)]
fn run_scenario_is_send(
    cluster: &dyn Cluster,
    scenario: &Scenario,
    options: &RunOptions,
    console: &mut Console<Vec<u8>>,
) {
    fn send<T: Send>(_: &T) {}
    let run = run_scenario(cluster, scenario, options, console);
    send(&run);
}

const THREE_SETS: &str = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3]\"
,\"(C, D, 1)\",
2,\"(B, C, 1)\",\"[n1, n2, n3, n4, n5]\"
3,\"(D, E, 1)\",\"[n1, n2, n3, n4]\"
,\"(E, F, 1)\",
";

/// A console input playing a scripted session, as a line editor would: it shows the
/// prompt itself (and records it), and can answer Ctrl-C.
struct Scripted {
    lines: std::vec::IntoIter<ConsoleLine>,
    prompts: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn new(lines: Vec<ConsoleLine>) -> (Scripted, Arc<Mutex<Vec<String>>>) {
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let input = Scripted {
            lines: lines.into_iter(),
            prompts: Arc::clone(&prompts),
        };
        (input, prompts)
    }
}

impl ConsoleInput for Scripted {
    fn read_line(&mut self, prompt: &str) -> ConsoleLine {
        self.prompts
            .lock()
            .expect("not poisoned")
            .push(prompt.to_owned());
        self.lines.next().unwrap_or(ConsoleLine::End)
    }

    fn shows_prompt(&self) -> bool {
        true
    }
}

fn line(text: &str) -> ConsoleLine {
    ConsoleLine::Line(text.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_at_the_pause_ends_the_run_there() {
    timeout(LIMIT, async {
        let cluster = cluster(21);
        let scenario = Scenario::parse(THREE_SETS).expect("parses");
        let out = Shared::default();
        let (input, prompts) = Scripted::new(vec![line("printview"), line("quit")]);
        let mut console = Console::with_input(input, out.clone());
        let tracked = TrackedCluster::new(&cluster);
        let report = run_scenario(
            &tracked,
            &scenario,
            &options(Duration::from_secs(5)),
            &mut console,
        )
        .await
        .expect("run completes");
        let text = out.text();
        assert!(report.stopped_early, "{text}");
        assert_eq!(report.sets.len(), 1, "{text}");
        assert_eq!(report.committed(), 2, "{text}");
        assert_eq!(report.not_submitted(), 3, "{text}");
        assert!(report.transfers[2..]
            .iter()
            .all(|t| t.outcome == TransferOutcome::NotSubmitted));
        assert!(text.contains("PrintView"), "{text}");
        assert!(
            text.contains("quit: the run stops here; 2 set(s) not played"),
            "{text}"
        );
        assert!(!text.contains("== Set 2"), "{text}");
        // The input showed the prompts; the console did not write them.
        let prompts = prompts.lock().expect("not poisoned").clone();
        assert_eq!(prompts.len(), 2, "{prompts:?}");
        assert!(
            prompts[0].contains("quit") && prompts[0].ends_with("] > "),
            "{prompts:?}"
        );
        assert!(!text.contains("] > "), "{text}");
        let summary = report.summary();
        assert!(
            summary.contains("3 not submitted (the run was stopped after set 1)"),
            "{summary}"
        );
        assert!(
            !report.summary_head().contains("A->B"),
            "{}",
            report.summary_head()
        );
        // Set 1 left n4 and n5 unavailable; the tracker knows, and restores them.
        assert_eq!(tracked.made_unavailable(), vec![4, 5]);
        let restored = tracked.restore().await;
        assert!(restored.iter().all(|r| r.result.is_ok()), "{restored:?}");
        for n in cluster.nodes() {
            assert!(
                cluster.replica_status(n).await.expect("status").available,
                "n{n}"
            );
        }
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_at_the_pause_interrupts_the_run() {
    timeout(LIMIT, async {
        let cluster = cluster(22);
        let scenario = Scenario::parse(THREE_SETS).expect("parses");
        let out = Shared::default();
        let (input, _) = Scripted::new(vec![line("printdb"), ConsoleLine::Interrupted]);
        let mut console = Console::with_input(input, out.clone());
        let tracked = TrackedCluster::new(&cluster);
        let result = run_scenario(
            &tracked,
            &scenario,
            &options(Duration::from_secs(5)),
            &mut console,
        )
        .await;
        assert!(matches!(result, Err(RunError::Interrupted)), "{result:?}");
        assert!(out.text().contains("PrintDB"), "{}", out.text());
        assert_eq!(tracked.made_unavailable(), vec![4, 5]);
        // What `bank heal` does when the client is gone.
        let healed = heal(&cluster).await;
        let was: Vec<(u64, bool)> = healed
            .iter()
            .map(|r| (r.node, *r.result.as_ref().expect("reached")))
            .collect();
        assert_eq!(
            was,
            vec![(1, true), (2, true), (3, true), (4, false), (5, false)]
        );
        for n in cluster.nodes() {
            assert!(
                cluster.replica_status(n).await.expect("status").available,
                "n{n}"
            );
        }
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_per_set_and_per_transfer() {
    timeout(LIMIT, async {
        let cluster = cluster(23);
        let scenario = Scenario::parse(THREE_SETS).expect("parses");
        let seen = Arc::new(Mutex::new(Vec::<RunProgress>::new()));
        let record = Arc::clone(&seen);
        let mut console = Console::new(std::io::sink())
            .on_progress(move |p| record.lock().expect("not poisoned").push(*p));
        let report = run_scenario(
            &cluster,
            &scenario,
            &options(Duration::from_secs(5)),
            &mut console,
        )
        .await
        .expect("run completes");
        assert_eq!(report.committed(), 5);
        let seen = seen.lock().expect("not poisoned").clone();
        // Three set starts and five completions.
        assert_eq!(seen.len(), 8, "{seen:?}");
        assert!(
            seen.iter().all(|p| p.transfers == 5 && p.sets == 3),
            "{seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0].completed <= w[1].completed),
            "{seen:?}"
        );
        let last = seen.last().expect("progress");
        assert_eq!(
            (last.completed, last.sets_started, last.set),
            (5, 3, 3),
            "{seen:?}"
        );
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}

#[test]
fn scripts_with_transfers_that_cannot_succeed_are_refused_unless_allowed() {
    let script = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3]\"
,\"(C, C, 1)\",
";
    let err = Scenario::parse(script).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "line 3: transfer (C, C, 1) cannot succeed: sender and receiver are both C"
    );
    let options = ScenarioOptions {
        allow_invalid_transfers: true,
        ..ScenarioOptions::default()
    };
    assert!(Scenario::parse_with(script, &options).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bank_still_rejects_what_a_script_lets_through() {
    timeout(LIMIT, async {
        let cluster = cluster(24);
        let script = "Set Number,Transactions,Live Nodes
1,\"(A, A, 1)\",\"[n1, n2, n3, n4, n5]\"
,\"(B, C, 0)\",
";
        let options = ScenarioOptions {
            allow_invalid_transfers: true,
            ..ScenarioOptions::default()
        };
        let scenario = Scenario::parse_with(script, &options).expect("parses");
        let mut console = Console::new(std::io::sink());
        let report = run_scenario(
            &cluster,
            &scenario,
            &self::options(Duration::from_secs(5)),
            &mut console,
        )
        .await
        .expect("run completes");
        let outcomes: Vec<&TransferOutcome> = report.transfers.iter().map(|t| &t.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                &TransferOutcome::Committed(BankOutput::Rejected(Rejection::SameAccount(acc('A')))),
                &TransferOutcome::Committed(BankOutput::Rejected(Rejection::NonPositiveAmount(0))),
            ]
        );
        cluster.shutdown().await;
    })
    .await
    .expect("test finished in time");
}
