//! `bank client`: play a transaction script against the cluster.

use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bank_app::{
    await_agreement, format_db, gather_db, load_scenario, run_scenario, BankCommand, BankOutput,
    Cluster, ClusterConfig, Console, LineEditor, RemoteCluster, RunError, RunOptions, RunProgress,
    RunReport, ScenarioOptions, TrackedCluster, TransferOutcome,
};
use paxos_core::NodeId;
use serde_json::{json, Value};

use crate::options::{parse_secs, remote, require_reachable};
use crate::output::{node_list, stdout_line};
use crate::progress::{run_progress_bar, BarWriter};
use crate::signals::{Signals, StopSignal};

/// Scripts with at least this many transfers get a progress bar (on a terminal).
const LONG_SCRIPT: usize = 100;

/// The command line of `bank client` (what the run uses of it is [`ClientArgs`]).
#[derive(clap::Args, Debug)]
pub(crate) struct ClientCliArgs {
    /// Never pause between sets.
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Print one JSON object per line (a line per transfer, then a summary) instead
    /// of tables; progress goes to stderr and the run never pauses.
    #[arg(long)]
    pub(crate) json: bool,
    /// Print the summary only: no line per set or transfer, no table of transfers,
    /// no progress bar, no pauses (with --json: the summary line only).
    #[arg(long, short = 'q')]
    pub(crate) quiet: bool,
    /// A set ends when everything released so far completed, or after this many
    /// seconds.
    #[arg(long, value_name = "SECS", default_value = "3", value_parser = parse_secs)]
    pub(crate) set_timeout: Duration,
    /// The transaction script.
    #[arg(value_name = "SCRIPT.csv")]
    pub(crate) script: PathBuf,
}

/// Options of `bank client`, as the run uses them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientArgs {
    pub(crate) yes: bool,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    pub(crate) set_timeout: Duration,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    script: &Path,
    args: ClientArgs,
) -> anyhow::Result<ExitCode> {
    // From here on Ctrl-C and SIGTERM are handled here, never by the default action.
    let mut signals = Signals::listen()?;
    let options = ScenarioOptions {
        // Live-node ids a script may name: those of the config.
        nodes: config.ids().into_iter().max().unwrap_or(0),
        ..ScenarioOptions::default()
    };
    let scenario = load_scenario(script, &options)?;
    let cluster = remote(config)?;
    tokio::select! {
        reachable = require_reachable(&cluster) => reachable?,
        signal = signals.recv() => return Ok(signal?.exit_code()),
    }
    let transfers = scenario.commands().count();
    let interactive = !args.yes && !args.json && !args.quiet && std::io::stdin().is_terminal();
    let bar = (!args.quiet
        && !interactive
        && (transfers >= LONG_SCRIPT)
        && std::io::stderr().is_terminal())
    .then(|| run_progress_bar(transfers));
    let output: Box<dyn Write + Send> = if args.quiet {
        Box::new(std::io::sink())
    } else if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let output: Box<dyn Write + Send> = match &bar {
        Some(bar) => Box::new(BarWriter::new(output, bar.clone())),
        None => output,
    };
    let mut console = if interactive {
        // Line editing needs the terminal on both sides; otherwise plain lines.
        let editor = if std::io::stdout().is_terminal() {
            LineEditor::new().ok()
        } else {
            None
        };
        match editor {
            Some(editor) => Console::with_input(editor, output),
            None => Console::interactive(BufReader::new(std::io::stdin()), output),
        }
    } else {
        Console::new(output)
    };
    if let Some(bar) = bar.clone() {
        console = console.on_progress(move |p: &RunProgress| {
            bar.set_position(p.completed as u64);
            bar.set_message(format!("set {} ({}/{})", p.set, p.sets_started, p.sets));
        });
    }
    let out = console.output();
    writeln!(
        out,
        "Playing {}: {} sets, {transfers} transfers, against replicas {}.",
        script.display(),
        scenario.sets.len(),
        node_list(&cluster.nodes()),
    )?;
    if interactive {
        writeln!(
            out,
            "stdin is a terminal: the run pauses between sets (Enter continues, quit stops)."
        )?;
    }
    let run_options = RunOptions {
        set_timeout: args.set_timeout,
        ..RunOptions::default()
    };
    let tracked = TrackedCluster::new(&cluster);
    let ended = tokio::select! {
        result = run_scenario(&tracked, &scenario, &run_options, &mut console) => match result {
            // Ctrl-C at the prompt, where the line editor reads it as a key.
            Err(RunError::Interrupted) => Err(Ok(StopSignal::Interrupt)),
            Err(e) => Err(Err(e)),
            Ok(report) => Ok(report),
        },
        signal = signals.recv() => Err(Ok(signal?)),
    };
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let _ = console.output().flush();
    let report = match ended {
        Ok(report) => report,
        Err(Ok(signal)) => {
            let why = format!("interrupted ({})", signal.name());
            restore_availability(&tracked, &why, &mut signals).await;
            return Ok(signal.exit_code());
        }
        Err(Err(e)) => {
            restore_availability(&tracked, "the run failed", &mut signals).await;
            return Err(e.into());
        }
    };
    if report.stopped_early {
        restore_availability(&tracked, "quit", &mut signals).await;
    }
    // The run is over: a signal now only cuts the summary short.
    tokio::select! {
        printed = print_summary(&cluster, &report, args) => printed?,
        signal = signals.recv() => return Ok(signal?.exit_code()),
    }
    Ok(ExitCode::SUCCESS)
}

/// The end of a run: the summary (and PrintDB unless quiet), or its JSON line.
async fn print_summary(
    cluster: &RemoteCluster,
    report: &RunReport,
    args: ClientArgs,
) -> anyhow::Result<()> {
    let agreement = await_agreement(cluster, Duration::from_secs(3)).await;
    if args.json {
        return print_report_json(report, &agreement, args.quiet);
    }
    let dbs = gather_db(cluster).await;
    let mut out = std::io::stdout().lock();
    if args.quiet {
        write!(out, "{}", report.summary_head())?;
    } else {
        writeln!(out, "\n== Summary ==\n{}", report.summary())?;
        writeln!(out, "== PrintDB ==\n{}", format_db(&dbs))?;
    }
    writeln!(out, "{agreement}")?;
    let left_down: Vec<NodeId> = dbs
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .filter(|db| !db.available)
        .map(|db| db.node)
        .collect();
    if !left_down.is_empty() {
        writeln!(
            out,
            "still unavailable as the last set left them: {} (`bank heal` makes every replica available)",
            node_list(&left_down)
        )?;
    }
    Ok(())
}

/// Makes the replicas the run made unavailable available again, saying so on stderr.
/// A second signal meanwhile gives up at once.
async fn restore_availability(
    tracked: &TrackedCluster<'_, RemoteCluster>,
    why: &str,
    signals: &mut Signals,
) {
    let down = tracked.made_unavailable();
    if down.is_empty() {
        if why != "quit" {
            eprintln!("{why}");
        }
        return;
    }
    let results = tokio::select! {
        results = tracked.restore() => results,
        _ = signals.recv() => {
            eprintln!(
                "{why}; interrupted again: {} left unavailable (run `bank heal`)",
                node_list(&down)
            );
            return;
        }
    };
    let restored: Vec<NodeId> = results
        .iter()
        .filter(|r| r.result.is_ok())
        .map(|r| r.node)
        .collect();
    if !restored.is_empty() {
        eprintln!("{why}: made {} available again", node_list(&restored));
    }
    for r in &results {
        if let Err(e) = &r.result {
            eprintln!(
                "n{} could not be made available again ({e}): run `bank heal` once it can be reached",
                r.node
            );
        }
    }
}

fn print_report_json(
    report: &RunReport,
    agreement: &bank_app::Agreement,
    quiet: bool,
) -> anyhow::Result<()> {
    let transfers = if quiet {
        &[][..]
    } else {
        &report.transfers[..]
    };
    for (i, t) in transfers.iter().enumerate() {
        let BankCommand::Transfer { from, to, amount } = t.command else {
            continue;
        };
        let (outcome, detail) = match &t.outcome {
            TransferOutcome::Committed(BankOutput::Rejected(r)) => ("rejected", r.to_string()),
            TransferOutcome::Committed(o) => ("moved", o.to_string()),
            TransferOutcome::Pending => ("pending", String::new()),
            TransferOutcome::Failed(e) => ("failed", e.clone()),
            TransferOutcome::NotSubmitted => ("not_submitted", String::new()),
        };
        stdout_line(&json!({
            "type": "transfer",
            "index": i + 1,
            "set": t.set,
            "client": t.client,
            "session": report.clients.get(&t.client),
            "from": from,
            "to": to,
            "amount": amount,
            "outcome": outcome,
            "detail": detail,
            "completed_in_set": t.completed_in_set,
            "latency_ms": t.latency.map(|d| d.as_secs_f64() * 1000.0),
        }))?;
    }
    let failures: Vec<Value> = report
        .leader_failures()
        .map(|f| json!({"set": f.set, "node": f.node}))
        .collect();
    let committed = report.committed();
    let rejected = report.rejected();
    stdout_line(&json!({
        "type": "summary",
        "transfers": report.transfers.len(),
        "committed": committed,
        "moved": committed.saturating_sub(rejected),
        "rejected": rejected,
        "pending": report.pending(),
        "failed": report.failed(),
        "not_submitted": report.not_submitted(),
        "stopped_early": report.stopped_early,
        "sessions": report.clients,
        "leader_failures": failures,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        "agree": agreement.agree,
        "agreeing_nodes": agreement.nodes,
        "balances": agreement.balances,
        "total": agreement.total(),
    }))
}
