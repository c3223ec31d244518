//! Operating a cluster of real `bank node` processes on 127.0.0.1 with the CLI: Ctrl-C,
//! SIGTERM and SIGKILL of `bank client` and `bank heal`; the pause between sets under a
//! pseudo-terminal (line editing, history, `quit`, Ctrl-C); `--endpoints` and the
//! `BANK_*` variables; `--quiet`; ids as JSON strings; `bank reset` refusing while
//! nodes answer.
//!
//! Every process a test starts is killed and reaped when the test ends, pass or fail
//! (the `Processes` and `Running` guards of `common`), and every wait is bounded.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{json_lines, runtime, serial, Processes, Running, BANK};
use serde_json::Value;

/// Set 1 takes n4 and n5 down; set 2 leaves no majority (n1 n2), so it lasts its whole
/// timeout; set 3 brings everyone back.
const SCRIPT: &str = "Set Number,Transactions,Live Nodes
1,\"(A, B, 1)\",\"[n1, n2, n3]\"
2,\"(B, C, 1)\",\"[n1, n2]\"
3,\"(C, D, 1)\",\"[n1, n2, n3, n4, n5]\"
";

fn write_script(procs: &Processes) -> String {
    let path = procs.dir.path().join("script.csv");
    std::fs::write(&path, SCRIPT).expect("write script");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Plays the script with a long set timeout and sends `signal` once set 2 (no
/// majority) has started; returns the finished command.
fn interrupted_run(
    rt: &tokio::runtime::Runtime,
    procs: &Processes,
    script: &str,
    signal: &str,
) -> common::Finished {
    let run = procs.bank(&["client", "--json", "--set-timeout", "60", script]);
    wait_for_set_2(rt, procs, &run);
    run.signal(signal);
    run.finish(Duration::from_secs(20))
}

/// Waits until set 2 has started and taken n3 down.
fn wait_for_set_2(rt: &tokio::runtime::Runtime, procs: &Processes, run: &Running) {
    assert!(
        run.wait_for_stderr("== Set 2", Duration::from_secs(30)),
        "set 2 did not start"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs.status(rt, 3).available {
        assert!(Instant::now() < deadline, "set 2 did not take n3 down");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_and_sigterm_restore_availability_and_heal_repairs_a_killed_client() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start(&rt);
    let script = write_script(&procs);

    // SIGINT while set 2 runs: n3, n4 and n5 come back, exit code 130.
    let started = Instant::now();
    let run = interrupted_run(&rt, &procs, &script, "INT");
    assert_eq!(run.status.code(), Some(130), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("interrupted (SIGINT): made n3 n4 n5 available again"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(40), "not prompt");
    procs.assert_all_available(&rt, Duration::from_secs(5));

    // SIGTERM alike, exit code 143.
    let run = interrupted_run(&rt, &procs, &script, "TERM");
    assert_eq!(run.status.code(), Some(143), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("interrupted (SIGTERM): made n3 n4 n5 available again"),
        "{}",
        run.stderr
    );
    procs.assert_all_available(&rt, Duration::from_secs(5));

    // SIGKILL leaves them unavailable; `bank heal` brings them back.
    let run = procs.bank(&["client", "--json", "--set-timeout", "60", &script]);
    wait_for_set_2(&rt, &procs, &run);
    drop(run); // SIGKILL
    for n in [3, 4, 5] {
        assert!(!procs.status(&rt, n).available, "n{n} is available");
    }
    let healed = procs
        .bank(&["heal", "--json"])
        .finish(Duration::from_secs(15));
    assert!(healed.status.success(), "{}", healed.stderr);
    let rows = json_lines(&healed.stdout);
    assert_eq!(rows.len(), 5, "{}", healed.stdout);
    for row in &rows {
        let node = row["node"].as_u64().expect("node");
        assert_eq!(row["available"], true, "{row}");
        assert_eq!(row["was_available"], node <= 2, "{row}");
    }
    procs.assert_all_available(&rt, Duration::from_secs(5));
    let again = procs.bank(&["heal"]).finish(Duration::from_secs(15));
    assert!(again.status.success());
    assert_eq!(
        again.stdout.matches("(it was already)").count(),
        5,
        "{}",
        again.stdout
    );
}

/// A command run under a pseudo-terminal by util-linux `script`, its output collected
/// as it comes; killed when dropped.
struct Terminal {
    child: Child,
    input: std::process::ChildStdin,
    output: Arc<Mutex<String>>,
}

impl Terminal {
    /// `None` when `script` is not installed.
    fn start(command: &str) -> Option<Terminal> {
        let mut child = Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("BANK_CONFIG")
            .env_remove("BANK_ENDPOINTS")
            .env_remove("BANK_CLUSTER_ID")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let input = child.stdin.take().expect("stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&output);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().expect("not poisoned").push_str(&text);
            }
        });
        Some(Terminal {
            child,
            input,
            output,
        })
    }

    fn text(&self) -> String {
        self.output.lock().expect("not poisoned").clone()
    }

    /// Waits until `needle` appears `count` times in the output.
    fn wait_for(&self, needle: &str, count: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.text().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {count} x {needle:?} in:\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_keys(&mut self, keys: &str) {
        self.input.write_all(keys.as_bytes()).expect("type");
        self.input.flush().expect("flush");
    }

    /// Waits for the exit code.
    fn finish(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.text());
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROMPT: &str = "Enter to continue] > ";

#[test]
fn the_pause_between_sets_edits_lines_recalls_history_and_quits_on_a_terminal() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start(&rt);
    let script = write_script(&procs);
    let command = format!(
        "'{BANK}' client --set-timeout 1 --config '{}' '{script}'",
        procs.config_path.display()
    );
    let Some(mut term) = Terminal::start(&command) else {
        eprintln!("`script` (util-linux) is not installed: skipping the terminal test");
        return;
    };
    term.wait_for(PROMPT, 1, Duration::from_secs(30));
    // A command, then the same one from the history (up arrow), then an edited line
    // (left arrow into the middle of "prntview": the missing letter goes in there).
    term.type_keys("printview\r");
    term.wait_for(PROMPT, 2, Duration::from_secs(10));
    term.type_keys("\x1b[A\r");
    term.wait_for(PROMPT, 3, Duration::from_secs(10));
    assert_eq!(
        term.text().matches("\nPrintView").count(),
        2,
        "{}",
        term.text()
    );
    term.type_keys("prntdb\x1b[D\x1b[D\x1b[D\x1b[Di\r");
    term.wait_for("\nPrintDB", 1, Duration::from_secs(10));
    term.wait_for(PROMPT, 4, Duration::from_secs(10));
    assert!(!term.text().contains("unknown command"), "{}", term.text());
    term.type_keys("quit\r");
    assert_eq!(
        term.finish(Duration::from_secs(20)),
        Some(0),
        "{}",
        term.text()
    );
    let text = term.text();
    assert!(
        text.contains("quit: the run stops here; 2 set(s) not played"),
        "{text}"
    );
    assert!(text.contains("quit: made n4 n5 available again"), "{text}");
    assert!(text.contains("2 not submitted"), "{text}");
    procs.assert_all_available(&rt, Duration::from_secs(5));
    drop(term);

    // Ctrl-C at the prompt: the line editor reads it; the run ends with 130 and the
    // replicas set 1 took down come back.
    let mut term = Terminal::start(&command).expect("script ran before");
    term.wait_for(PROMPT, 1, Duration::from_secs(30));
    for n in [4, 5] {
        assert!(!procs.status(&rt, n).available, "n{n}");
    }
    term.type_keys("\x03");
    assert_eq!(
        term.finish(Duration::from_secs(20)),
        Some(130),
        "{}",
        term.text()
    );
    assert!(
        term.text()
            .contains("interrupted (SIGINT): made n4 n5 available again"),
        "{}",
        term.text()
    );
    procs.assert_all_available(&rt, Duration::from_secs(5));
}

fn run_ok(running: Running) -> common::Finished {
    let run = running.finish(Duration::from_secs(30));
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    run
}

/// True when `value` is a string of decimal digits.
fn is_id_string(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn endpoints_environment_quiet_output_json_ids_and_reset() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start(&rt);
    let cluster_id = procs.config.cluster_id.to_string();
    let endpoints = procs.endpoints();

    // --endpoints with --cluster-id, and the same from the environment.
    let mut flags = Command::new(BANK);
    flags.args([
        "db",
        "--json",
        "--endpoints",
        &endpoints,
        "--cluster-id",
        &cluster_id,
    ]);
    let mut env = Command::new(BANK);
    env.args(["db", "--json"])
        .env("BANK_ENDPOINTS", &endpoints)
        .env("BANK_CLUSTER_ID", &cluster_id);
    let mut config_env = Command::new(BANK);
    config_env
        .args(["db", "--json"])
        .env("BANK_CONFIG", &procs.config_path);
    for command in [flags, env, config_env] {
        let run = run_ok(Running::spawn(command));
        let rows = json_lines(&run.stdout);
        assert_eq!(rows.len(), 5, "{}", run.stdout);
        assert!(rows.iter().all(|r| r["total"] == 100), "{}", run.stdout);
    }
    // With the wrong cluster id the nodes refuse the connection.
    let mut wrong = Command::new(BANK);
    wrong.args(["db", "--endpoints", &endpoints]);
    let run = Running::spawn(wrong).finish(Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);

    // --quiet: the summary only.
    let script = procs.dir.path().join("short.csv");
    std::fs::write(&script, common::round_robin_script(2, 2, &[1, 2, 3, 4, 5])).expect("write");
    let script = script.to_str().expect("utf-8");
    let run = run_ok(procs.bank(&["client", "--quiet", script]));
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(
        lines[0].starts_with("40 transfers: 40 committed"),
        "{}",
        run.stdout
    );
    assert!(lines[3].contains("agree"), "{}", run.stdout);
    assert!(!run.stdout.contains("== Set"), "{}", run.stdout);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);
    // --json --quiet: one summary line, its sessions as strings.
    let run = run_ok(procs.bank(&["client", "--json", "--quiet", script]));
    let rows = json_lines(&run.stdout);
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert_eq!(rows[0]["type"], "summary");
    assert_eq!(rows[0]["committed"], 40);
    let sessions = rows[0]["sessions"].as_object().expect("sessions");
    assert_eq!(sessions.len(), 10, "{}", run.stdout);
    assert!(sessions.values().all(is_id_string), "{}", run.stdout);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);
    // Each transfer line of a full JSON run names its session as a string.
    let run = run_ok(procs.bank(&["client", "--json", script]));
    let transfers: Vec<Value> = json_lines(&run.stdout)
        .into_iter()
        .filter(|l| l["type"] == "transfer")
        .collect();
    assert_eq!(transfers.len(), 40);
    assert!(
        transfers.iter().all(|t| is_id_string(&t["session"])),
        "{}",
        run.stdout
    );
    // bench --quiet: the result line only.
    let run = run_ok(procs.bank(&["bench", "--quiet", "--transfers", "200", "--clients", "4"]));
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with("200 transfers"), "{}", run.stdout);
    assert!(run.stderr.trim().is_empty(), "{}", run.stderr);

    // Ids in JSON are strings: the session of `bank transfer`, the registration
    // nonces (random 64-bit numbers) and client ids in `bank log`.
    let run = run_ok(procs.bank(&["transfer", "--json", "--client", "A", "A", "B", "1"]));
    let row = &json_lines(&run.stdout)[0];
    assert!(is_id_string(&row["session"]), "{row}");
    let leader = procs.leader(&rt, Duration::from_secs(10)).to_string();
    let run = run_ok(procs.bank(&["log", "--json", "--node", &leader]));
    let entries = json_lines(&run.stdout);
    let registers: Vec<&Value> = entries
        .iter()
        .filter_map(|e| e["entry"].get("Register"))
        .collect();
    assert!(registers.len() >= 10, "{}", run.stdout);
    assert!(
        registers.iter().all(|r| is_id_string(&r["nonce"])),
        "{}",
        run.stdout
    );
    let commands: Vec<&Value> = entries
        .iter()
        .filter_map(|e| e["entry"].get("Command"))
        .collect();
    assert!(!commands.is_empty());
    assert!(
        commands.iter().all(|c| is_id_string(&c["client"])),
        "{}",
        run.stdout
    );
    // The nonces are large: as numbers, a double would have rounded most of them.
    let big = registers
        .iter()
        .filter_map(|r| r["nonce"].as_str()?.parse::<u64>().ok())
        .filter(|&n| n > 1 << 53)
        .count();
    assert!(big > 0, "{}", run.stdout);

    // bank balance reads without a log round: the ten balances add up to what the bank
    // started with (transfers conserve money), and the leader's log did not grow.
    let log_len = |procs: &Processes| {
        let run = run_ok(procs.bank(&["log", "--json", "--node", &leader]));
        json_lines(&run.stdout).len()
    };
    let before = log_len(&procs);
    let total: i64 = "ABCDEFGHIJ"
        .chars()
        .map(|a| {
            let run = run_ok(procs.bank(&["balance", "--json", &a.to_string()]));
            let row = &json_lines(&run.stdout)[0];
            assert_eq!(row["account"], a.to_string(), "{row}");
            row["balance"].as_i64().expect("a balance")
        })
        .sum();
    assert_eq!(total, 10 * bank_app::DEFAULT_INITIAL_BALANCE);
    // Stale reads from one named replica: the same total (nothing is moving now), and
    // each answer says which executed slot it reflects.
    let stale_total: i64 = "ABCDEFGHIJ"
        .chars()
        .map(|a| {
            let args = [
                "balance",
                "--stale",
                "--node",
                "3",
                "--json",
                &a.to_string(),
            ];
            let run = run_ok(procs.bank(&args));
            let row = &json_lines(&run.stdout)[0];
            assert_eq!(row["stale"], true, "{row}");
            assert!(row["executed"].as_u64().is_some_and(|e| e > 0), "{row}");
            row["balance"].as_i64().expect("a balance")
        })
        .sum();
    assert_eq!(stale_total, 10 * bank_app::DEFAULT_INITIAL_BALANCE);
    assert_eq!(log_len(&procs), before, "reads took log slots");
    let run = procs
        .bank(&["balance", "Z"])
        .finish(Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);

    // bank reset refuses while nodes answer, and removes nothing.
    let run = procs.bank(&["reset"]).finish(Duration::from_secs(30));
    assert_eq!(run.status.code(), Some(1), "{}", run.stdout);
    assert!(
        run.stderr.contains("n1 n2 n3 n4 n5 still answer"),
        "{}",
        run.stderr
    );
    assert!(procs.data_dir(1).join("META").exists());
}

/// Three nodes and a learner process (`[[learners]]` in the cluster file): transfers
/// go through the nodes; the learner copies the ledger, answers stale reads named to
/// it, shows up as a learner in `bank health`, and never counts: with two of the
/// three nodes down, nothing commits though the learner is up.
#[test]
fn a_learner_process_copies_the_ledger_and_answers_stale_reads() {
    let _serial = serial();
    let rt = runtime();
    let mut procs = Processes::start_with_learner(&rt, 3);
    for _ in 0..5 {
        run_ok(procs.bank(&["transfer", "--client", "A", "A", "B", "1"]));
    }
    // The learner catches up within its polling period.
    let deadline = Instant::now() + Duration::from_secs(10);
    let balance_b = loop {
        let run = run_ok(procs.bank(&["balance", "--stale", "--node", "4", "--json", "B"]));
        let row = json_lines(&run.stdout)[0].clone();
        assert_eq!(row["stale"], true, "{row}");
        let b = row["balance"].as_i64().expect("a balance");
        if b == bank_app::DEFAULT_INITIAL_BALANCE + 5 || Instant::now() > deadline {
            break b;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(balance_b, bank_app::DEFAULT_INITIAL_BALANCE + 5);
    let run = run_ok(procs.bank(&["health", "--json"]));
    let rows = json_lines(&run.stdout);
    let learner = rows
        .iter()
        .find(|r| r["node"] == 4)
        .unwrap_or_else(|| panic!("no row for the learner: {}", run.stdout));
    assert_eq!(learner["role"], "learner", "{learner}");
    // A learner is not a majority's third member.
    procs.kill(2);
    procs.kill(3);
    let run = procs
        .bank(&["transfer", "--timeout", "2", "--client", "A", "A", "B", "1"])
        .finish(Duration::from_secs(30));
    assert!(
        !run.status.success(),
        "a transfer committed without a majority: {}",
        run.stdout
    );
}
