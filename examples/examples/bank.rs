//! `cargo run --example bank [SCRIPT.csv]` — five bank replicas and ten clients (A–J) in
//! one process over the in-memory transport, playing a transaction script.
//!
//! Without an argument it plays the bundled sample (`bank_app::SAMPLE_SCENARIO`, the
//! same as `shared/csv/sample.csv`): five sets, two leader failures (`LF`), one set
//! without a majority and one transfer, `(I, A, 20)`, that no schedule can honour. The
//! replicas a set does not list are made unavailable (they drop all protocol traffic,
//! as if crashed); `LF` makes the current leader unavailable at that point of the set.
//!
//! When stdin is a terminal the run pauses between sets for `printdb`, `printlog N`,
//! `printstatus SEQ`, `printview` (Enter continues); otherwise
//! (`cargo run --example bank < /dev/null`) it finishes by itself in a few seconds.
//! At the end it prints PrintDB for every replica, PrintLog of the leader, PrintStatus
//! of a few telling slots, PrintView, and checks that the replicas agree.
//!
//! Logging goes to stderr; set `RUST_LOG` (e.g. `RUST_LOG=info`) to see more than
//! warnings.

use std::error::Error;
use std::io::{BufReader, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use bank_app::{
    await_agreement, format_db, format_log, format_status, format_views, gather_db, gather_status,
    gather_views, load_scenario, run_scenario, Bank, Cluster, Console, EntryValue, Item,
    LocalCluster, LocalClusterOptions, LogEntry, RunOptions, Scenario, ScenarioOptions,
    SAMPLE_SCENARIO,
};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: cargo run --example bank [SCRIPT.csv]

Plays the script (default: the bundled sample) against five replicas in this process,
then prints PrintDB, PrintLog, PrintStatus and PrintView. Pauses between sets for
printdb, printlog N, printstatus SEQ, printview (Enter continues) when stdin is a
terminal. RUST_LOG sets the log level (default: warn).";

fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let loaded = match args.as_slice() {
        [] => Scenario::parse(SAMPLE_SCENARIO)
            .map(|s| (s, "the bundled sample script".to_string()))
            .map_err(|e| e.to_string()),
        [path] => load_scenario(path, &ScenarioOptions::default())
            .map(|s| (s, std::path::Path::new(path).display().to_string()))
            .map_err(|e| e.to_string()),
        _ => Err(format!("too many arguments\n{USAGE}")),
    };
    let (scenario, source) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(scenario, source)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Plays the script and prints the tables; `Ok(false)` when the final check fails.
async fn run(scenario: Scenario, source: String) -> Result<bool, Box<dyn Error>> {
    let cluster = LocalCluster::start(LocalClusterOptions::default())?;
    let transfers = scenario.commands().count();
    let failures = scenario
        .sets
        .iter()
        .flat_map(|s| &s.items)
        .filter(|i| matches!(i, Item::LeaderFail))
        .count();
    let interactive = std::io::stdin().is_terminal();
    let mut console = if interactive {
        Console::interactive(BufReader::new(std::io::stdin()), std::io::stdout())
    } else {
        Console::new(std::io::stdout())
    };
    let out = console.output();
    writeln!(
        out,
        "Bank example: replicas n1-n5 and clients A-J in one process, over the in-memory network."
    )?;
    writeln!(
        out,
        "Playing {source}: {} sets, {transfers} transfers, {failures} leader failures.",
        scenario.sets.len()
    )?;
    if interactive {
        writeln!(
            out,
            "stdin is a terminal: the run pauses between sets (Enter continues)."
        )?;
    }
    writeln!(out)?;

    let report = run_scenario(&cluster, &scenario, &RunOptions::default(), &mut console).await?;
    let names = report.client_names();
    let agreement = await_agreement(&cluster, Duration::from_secs(3)).await;
    let out = console.output();

    writeln!(out, "\n== Summary ==\n{}", report.summary())?;

    writeln!(out, "== PrintDB (every replica) ==")?;
    write!(out, "{}", format_db(&gather_db(&cluster).await))?;

    let shown = match cluster.leader().await {
        Some(leader) => leader,
        None => cluster.nodes().first().copied().unwrap_or(1),
    };
    let log = cluster.log(shown).await;
    writeln!(out, "\n== PrintLog n{shown} (the leader) ==")?;
    write!(out, "{}", format_log(shown, &log, &names))?;

    writeln!(out, "\n== PrintStatus of a few slots ==")?;
    let log = log.as_deref().unwrap_or_default();
    let mut slots = telling_slots(log);
    // A transfer that waited out a set without a majority.
    let late = report
        .transfers
        .iter()
        .find(|t| t.completed_in_set.is_some_and(|s| s != t.set));
    if let Some(t) = late {
        let client = report.clients.get(&t.client).copied();
        let found = log.iter().find(|e| {
            matches!(&e.value, EntryValue::Command { client: c, command, .. }
                if Some(*c) == client && *command == t.command)
        });
        if let (Some(e), Some(done)) = (found, t.completed_in_set) {
            // First, so that it wins over "the last slot" when it is that slot too.
            slots.insert(
                0,
                (
                    e.slot,
                    format!(
                        "slot {}: {}, submitted in set {} and committed in set {done}",
                        e.slot, e.value, t.set
                    ),
                ),
            );
        }
    }
    slots.sort_by_key(|(s, _)| *s);
    slots.dedup_by_key(|(s, _)| *s);
    for (slot, why) in slots {
        let rows = gather_status(&cluster, slot).await;
        writeln!(out, "-- {why}")?;
        write!(out, "{}", format_status(slot, &rows, &names))?;
    }

    writeln!(out, "\n== PrintView (view changes per replica) ==")?;
    write!(out, "{}", format_views(&gather_views(&cluster).await))?;

    let expected_total = Bank::new().total();
    let ok = agreement.agree && agreement.total() == expected_total;
    writeln!(
        out,
        "\ncheck: {agreement}; expected total {expected_total}: {}",
        if ok { "OK" } else { "FAILED" }
    )?;
    out.flush()?;
    cluster.shutdown().await;
    Ok(ok)
}

/// Slots worth a PrintStatus: the first transfer the bank rejected (found by replaying
/// the log, skipping a request logged twice as the session table does), the first no-op
/// (left by a view change), and the last slot.
fn telling_slots(log: &[LogEntry]) -> Vec<(u64, String)> {
    let mut slots = Vec::new();
    let mut bank = Bank::new();
    let mut seen = std::collections::HashSet::new();
    let rejected = log.iter().find(|e| match &e.value {
        EntryValue::Command {
            client,
            seq,
            command,
        } => seen.insert((*client, *seq)) && !bank.execute(command).is_ok(),
        _ => false,
    });
    if let Some(e) = rejected {
        slots.push((e.slot, format!("slot {}: {}, rejected", e.slot, e.value)));
    }
    if let Some(e) = log.iter().find(|e| e.value == EntryValue::Noop) {
        slots.push((
            e.slot,
            format!("slot {}: a no-op filled in by a new leader", e.slot),
        ));
    }
    if let Some(e) = log.last() {
        slots.push((e.slot, format!("slot {}: the last slot", e.slot)));
    }
    slots
}
