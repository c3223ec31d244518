//! The scenario runner: plays a transaction script against a [`Cluster`].

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use paxos_core::{Ballot, Client, ClientError, ClientId, ClientOptions, NodeId};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::account::Account;
use crate::bank::{Bank, BankCommand, BankOutput};
use crate::cluster::{Cluster, CommandDisplay, NodeStatus};
use crate::inspect::{gather_db, run_command, ClientNames, ConsoleCommand, CONSOLE_HELP};
use crate::scenario::{Item, Scenario, ScenarioError, ScenarioOptions};
use crate::table::{Align, Table};

/// How long a transfer may take before its client gives up: long enough to outlive any
/// run, so a transfer is never abandoned and resubmitted under a new request number.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(24 * 60 * 60);

/// How often the runner asks for the leader while waiting for one.
const LEADER_POLL: Duration = Duration::from_millis(20);

/// How often the runner asks the replicas whether a new cluster has been founded.
const FOUNDING_POLL: Duration = Duration::from_millis(50);

/// How the runner plays a script.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// A set ends when everything released so far has completed, or this long after it
    /// started, whichever comes first. Default 3 s.
    pub set_timeout: Duration,
    /// How each logical client retries. Default: attempts of 300 ms, backoff from 5 ms
    /// to 200 ms. Its `default_deadline` is not used: a client keeps retrying a transfer
    /// until the run ends.
    pub client: ClientOptions,
    /// A brand-new cluster is founded only once every replica has heard from every
    /// other one. Before a set makes replicas unavailable while that has not happened
    /// yet, the runner waits up to this long for it (see [`run_scenario`]). Default 10 s.
    pub founding_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            set_timeout: Duration::from_secs(3),
            client: ClientOptions::default()
                .with_attempt_timeout(Duration::from_millis(300))
                .with_min_backoff(Duration::from_millis(5))
                .with_max_backoff(Duration::from_millis(200))
                .with_default_deadline(TRANSFER_DEADLINE),
            founding_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the runner writes its progress, and where it reads commands when it pauses.
///
/// [`Console::new`] never pauses. An interactive console
/// ([`Console::interactive`], [`Console::with_input`]) pauses after every set but the
/// last, reading [`ConsoleCommand`]s (`printdb`, `printlog N`, `printstatus SEQ`,
/// `printview`, `help`) line by line until an empty line; `quit` ends the run there
/// ([`RunReport::stopped_early`]), Ctrl-C at the prompt interrupts it
/// ([`RunError::Interrupted`]), and at the end of input it stops pausing.
///
/// A binary passes a [`LineEditor`] (line editing and history) when stdin is a
/// terminal ([`std::io::IsTerminal`]); tests pass a `Cursor` with a scripted session
/// to [`Console::interactive`], or their own [`ConsoleInput`].
/// [`Console::on_progress`] registers a callback the runner calls as the run goes
/// (for a progress bar).
pub struct Console<W> {
    input: Option<Box<dyn ConsoleInput>>,
    output: W,
    progress: Option<ProgressCallback>,
}

/// What [`Console::on_progress`] keeps.
type ProgressCallback = Box<dyn FnMut(&RunProgress) + Send>;

impl<W> fmt::Debug for Console<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Console")
            .field("interactive", &self.input.is_some())
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a [`ConsoleInput`] read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleLine {
    /// A line of input (possibly with its line ending).
    Line(String),
    /// Ctrl-C at the prompt: the run stops with [`RunError::Interrupted`].
    Interrupted,
    /// The end of input (Ctrl-D, a closed stdin) or a read error: the console stops
    /// pausing and the run goes on.
    End,
}

/// Where an interactive [`Console`] reads its commands.
///
/// [`read_line`](ConsoleInput::read_line) may block: the runner calls it on a thread
/// of its own ([`tokio::task::spawn_blocking`]), never on the async runtime's.
pub trait ConsoleInput: Send {
    /// Reads one line. An input that [shows the prompt](ConsoleInput::shows_prompt)
    /// displays `prompt` itself; for any other the console has written it to its
    /// output already.
    fn read_line(&mut self, prompt: &str) -> ConsoleLine;

    /// True when [`read_line`](ConsoleInput::read_line) displays the prompt (a line
    /// editor); false (the default) when the console writes it to its output.
    fn shows_prompt(&self) -> bool {
        false
    }
}

/// Plain lines from a reader, as [`Console::interactive`] reads them.
struct Lines<R>(R);

impl<R: BufRead + Send> ConsoleInput for Lines<R> {
    fn read_line(&mut self, _prompt: &str) -> ConsoleLine {
        let mut line = String::new();
        // Commands are short; a longer line is cut off, never buffered whole.
        match self.0.by_ref().take(4096).read_line(&mut line) {
            Ok(n) if n > 0 => ConsoleLine::Line(line),
            _ => ConsoleLine::End,
        }
    }
}

/// The most lines a [`LineEditor`] keeps in its history.
const HISTORY_LINES: usize = 1000;

/// A [`ConsoleInput`] for a terminal: line editing (arrow keys, Home/End, Ctrl-W, …),
/// a history of the commands typed during the run (up and down arrows, Ctrl-R), Ctrl-C
/// to interrupt the run and Ctrl-D to stop pausing. Built on `rustyline`; the history
/// is kept in memory only.
pub struct LineEditor {
    editor: rustyline::DefaultEditor,
}

impl fmt::Debug for LineEditor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineEditor").finish_non_exhaustive()
    }
}

impl LineEditor {
    /// A line editor on the process's terminal. Fails if the terminal cannot be set up.
    pub fn new() -> Result<LineEditor, rustyline::error::ReadlineError> {
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)?
            .history_ignore_dups(true)?
            .history_ignore_space(true)
            .auto_add_history(true)
            .build();
        Ok(LineEditor {
            editor: rustyline::DefaultEditor::with_config(config)?,
        })
    }
}

impl ConsoleInput for LineEditor {
    fn read_line(&mut self, prompt: &str) -> ConsoleLine {
        use rustyline::error::ReadlineError;
        match self.editor.readline(prompt) {
            Ok(line) => ConsoleLine::Line(line),
            Err(ReadlineError::Interrupted) => ConsoleLine::Interrupted,
            Err(_) => ConsoleLine::End,
        }
    }

    fn shows_prompt(&self) -> bool {
        true
    }
}

/// How far a run is, as [`Console::on_progress`] callbacks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunProgress {
    /// The number of the set being played (or that was played last).
    pub set: u32,
    /// How many sets have started, this one included.
    pub sets_started: usize,
    /// The sets of the script.
    pub sets: usize,
    /// Transfers that completed (committed or failed) so far.
    pub completed: usize,
    /// The transfers of the script.
    pub transfers: usize,
}

impl<W: Write + Send> Console<W> {
    /// Writes to `output` and never pauses.
    pub fn new(output: W) -> Console<W> {
        Console {
            input: None,
            output,
            progress: None,
        }
    }

    /// Writes to `output` and pauses between sets, reading commands line by line from
    /// `input` (the console writes the prompt to `output`).
    pub fn interactive(input: impl BufRead + Send + 'static, output: W) -> Console<W> {
        Console::with_input(Lines(input), output)
    }

    /// Writes to `output` and pauses between sets, reading commands from `input`, e.g.
    /// a [`LineEditor`].
    pub fn with_input(input: impl ConsoleInput + 'static, output: W) -> Console<W> {
        Console {
            input: Some(Box::new(input)),
            output,
            progress: None,
        }
    }

    /// Calls `callback` whenever a set starts and whenever a transfer completes.
    pub fn on_progress(mut self, callback: impl FnMut(&RunProgress) + Send + 'static) -> Self {
        self.progress = Some(Box::new(callback));
        self
    }

    /// True while the console pauses between sets.
    pub fn is_interactive(&self) -> bool {
        self.input.is_some()
    }

    /// The output.
    pub fn output(&mut self) -> &mut W {
        &mut self.output
    }

    /// Gives the output back.
    pub fn into_output(self) -> W {
        self.output
    }

    fn report_progress(&mut self, progress: &RunProgress) {
        if let Some(callback) = &mut self.progress {
            callback(progress);
        }
    }

    /// True when the input shows the prompt itself.
    fn input_shows_prompt(&self) -> bool {
        self.input.as_ref().is_some_and(|i| i.shows_prompt())
    }

    /// Reads one line without blocking the async runtime. At [`ConsoleLine::End`] the
    /// console is no longer interactive.
    async fn read_line(&mut self, prompt: &str) -> ConsoleLine {
        let Some(mut input) = self.input.take() else {
            return ConsoleLine::End;
        };
        let prompt = prompt.to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let line = input.read_line(&prompt);
            (input, line)
        })
        .await;
        match read {
            Ok((_, ConsoleLine::End)) | Err(_) => ConsoleLine::End,
            Ok((input, line)) => {
                self.input = Some(input);
                line
            }
        }
    }
}

/// A run could not go on.
#[derive(Debug, Error)]
pub enum RunError {
    /// Writing progress to the console failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// The run was polled outside a tokio runtime, which its clients and timers need.
    #[error("the scenario runner must run inside a tokio runtime")]
    NoRuntime,
    /// Ctrl-C at the console's prompt ([`ConsoleLine::Interrupted`]) stopped the run.
    #[error("interrupted")]
    Interrupted,
}

/// What became of one transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOutcome {
    /// The transfer was committed and executed; the bank moved the money or rejected it.
    Committed(BankOutput),
    /// It had not completed when the run ended; it may still commit later.
    Pending,
    /// Its client gave up with an error; it may or may not have been executed.
    Failed(String),
    /// The run ended (`quit` at the console) before the transfer's set was played: it
    /// was never submitted.
    NotSubmitted,
}

/// One transfer of the script and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// The set it belongs to.
    pub set: u32,
    /// The command.
    pub command: BankCommand,
    /// The logical client that submitted it (its sender).
    pub client: Account,
    /// What became of it.
    pub outcome: TransferOutcome,
    /// The set during which it completed (or the pause after it).
    pub completed_in_set: Option<u32>,
    /// From the moment its client submitted it to the answer.
    pub latency: Option<Duration>,
}

impl TransferRecord {
    /// True when the transfer was committed (moved or rejected).
    pub fn is_committed(&self) -> bool {
        matches!(self.outcome, TransferOutcome::Committed(_))
    }

    /// True when the transfer was committed and the bank rejected it.
    pub fn is_rejected(&self) -> bool {
        matches!(&self.outcome, TransferOutcome::Committed(o) if !o.is_ok())
    }

    /// True when the transfer was still pending at the end of the run.
    pub fn is_pending(&self) -> bool {
        matches!(self.outcome, TransferOutcome::Pending)
    }

    /// True when the run ended before the transfer's set was played.
    pub fn is_not_submitted(&self) -> bool {
        matches!(self.outcome, TransferOutcome::NotSubmitted)
    }
}

/// An `LF` row: the leader the runner made unavailable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderFailure {
    /// The set.
    pub set: u32,
    /// The row's position among the set's items, from 0.
    pub position: usize,
    /// The leader made unavailable; `None` if no leader emerged before the set's
    /// timeout.
    pub node: Option<NodeId>,
    /// The leader's ballot when it was failed.
    pub ballot: Option<Ballot>,
}

/// How one set went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetReport {
    /// The set's number.
    pub number: u32,
    /// The replicas the script made available.
    pub live: Vec<NodeId>,
    /// Replicas that could not be reached to set their availability (treated as down).
    pub unreachable: Vec<NodeId>,
    /// True when the live replicas were a majority.
    pub has_majority: bool,
    /// The transfers the set released.
    pub released: usize,
    /// Transfers that completed during the set, including ones carried over.
    pub completed: usize,
    /// Transfers still pending when the set ended, carried over to the next set (if any).
    pub carried_over: usize,
    /// True when the set ended on its timeout rather than with everything completed.
    pub timed_out: bool,
    /// The `LF` rows.
    pub leader_failures: Vec<LeaderFailure>,
    /// The leader when the set ended.
    pub leader_at_end: Option<NodeId>,
    /// How long the set ran (not counting a pause after it).
    pub elapsed: Duration,
}

/// Everything a run did: per transfer, per set, and overall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// Every transfer, in script order.
    pub transfers: Vec<TransferRecord>,
    /// Every set, in script order.
    pub sets: Vec<SetReport>,
    /// The session id the cluster assigned to each logical client, for those that
    /// registered (a client registers with its first transfer); numbered log entries
    /// name it ([`EntryValue::Command`](crate::EntryValue::Command)).
    pub clients: BTreeMap<Account, ClientId>,
    /// Every logical client's sessions and registration nonces, for
    /// [`format_log`](crate::format_log) and [`format_status`](crate::format_status).
    pub names: ClientNames,
    /// The whole run, pauses included.
    pub elapsed: Duration,
    /// True when `quit` at the console ended the run before its last set: the sets
    /// after [`sets`](RunReport::sets) were not played, and their transfers are
    /// [not submitted](TransferOutcome::NotSubmitted).
    pub stopped_early: bool,
}

impl RunReport {
    /// Committed transfers, moved or rejected.
    pub fn committed(&self) -> usize {
        self.transfers.iter().filter(|t| t.is_committed()).count()
    }

    /// Committed transfers the bank rejected.
    pub fn rejected(&self) -> usize {
        self.transfers.iter().filter(|t| t.is_rejected()).count()
    }

    /// Transfers still pending.
    pub fn pending(&self) -> usize {
        self.transfers.iter().filter(|t| t.is_pending()).count()
    }

    /// Transfers never submitted because the run stopped early.
    pub fn not_submitted(&self) -> usize {
        self.transfers
            .iter()
            .filter(|t| t.is_not_submitted())
            .count()
    }

    /// Transfers whose client gave up with an error.
    pub fn failed(&self) -> usize {
        self.transfers
            .iter()
            .filter(|t| matches!(t.outcome, TransferOutcome::Failed(_)))
            .count()
    }

    /// Every `LF` row, in order.
    pub fn leader_failures(&self) -> impl Iterator<Item = &LeaderFailure> {
        self.sets.iter().flat_map(|s| &s.leader_failures)
    }

    /// Names for the clients' sessions and registrations, for
    /// [`format_log`](crate::format_log).
    pub fn client_names(&self) -> ClientNames {
        self.names.clone()
    }

    /// Latencies of committed transfers, ascending.
    fn latencies(&self) -> Vec<Duration> {
        let mut l: Vec<Duration> = self
            .transfers
            .iter()
            .filter(|t| t.is_committed())
            .filter_map(|t| t.latency)
            .collect();
        l.sort();
        l
    }

    /// The summary: counts, timings, and a table of every transfer.
    pub fn summary(&self) -> String {
        let mut out = self.summary_head();
        let mut table = Table::new([
            ("#", Align::Right),
            ("set", Align::Right),
            ("transfer", Align::Left),
            ("result", Align::Left),
            ("done in", Align::Left),
            ("latency", Align::Right),
        ]);
        for (i, t) in self.transfers.iter().enumerate() {
            table.row([
                (i + 1).to_string(),
                t.set.to_string(),
                CommandDisplay(&t.command).to_string(),
                OutcomeDisplay(&t.outcome).to_string(),
                t.completed_in_set
                    .map_or_else(|| "-".into(), |s| format!("set {s}")),
                t.latency
                    .map_or_else(|| "-".into(), |d| Millis(d).to_string()),
            ]);
        }
        out.push_str(&table.to_string());
        out
    }

    /// The first lines of the [`summary`](RunReport::summary), without its table of
    /// transfers: counts and timings (what `bank client --quiet` prints).
    pub fn summary_head(&self) -> String {
        let committed = self.committed();
        let rejected = self.rejected();
        let mut out = format!(
            "{} transfers: {} committed ({} moved money, {} rejected), {} still pending",
            self.transfers.len(),
            committed,
            committed.saturating_sub(rejected),
            rejected,
            self.pending(),
        );
        let failed = self.failed();
        if failed > 0 {
            out.push_str(&format!(", {failed} failed"));
        }
        let not_submitted = self.not_submitted();
        if self.stopped_early || not_submitted > 0 {
            let last = self.sets.last().map_or_else(
                || "before the first set".into(),
                |s| format!("after set {}", s.number),
            );
            out.push_str(&format!(
                ", {not_submitted} not submitted (the run was stopped {last})"
            ));
        }
        out.push('\n');
        let l = self.latencies();
        if let (Some(min), Some(median), Some(max)) = (l.first(), l.get(l.len() / 2), l.last()) {
            out.push_str(&format!(
                "latency of committed transfers: min {}, median {}, max {}\n",
                Millis(*min),
                Millis(*median),
                Millis(*max)
            ));
        }
        let sets: Vec<String> = self
            .sets
            .iter()
            .map(|s| format!("set {} {}", s.number, Millis(s.elapsed)))
            .collect();
        out.push_str(&format!(
            "run took {} ({})\n",
            Millis(self.elapsed),
            sets.join(", ")
        ));
        out
    }
}

/// Displays a duration as `12 ms` or `1.23 s`.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < Duration::from_millis(10) {
            write!(f, "{:.1} ms", self.0.as_secs_f64() * 1000.0)
        } else if self.0 < Duration::from_secs(1) {
            write!(f, "{} ms", self.0.as_millis())
        } else {
            write!(f, "{:.2} s", self.0.as_secs_f64())
        }
    }
}

struct OutcomeDisplay<'a>(&'a TransferOutcome);

impl fmt::Display for OutcomeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TransferOutcome::Committed(BankOutput::Transferred {
                from,
                to,
                from_balance,
                to_balance,
                ..
            }) => write!(f, "moved ({from}={from_balance}, {to}={to_balance})"),
            TransferOutcome::Committed(BankOutput::Rejected(r)) => write!(f, "rejected: {r}"),
            TransferOutcome::Committed(other) => write!(f, "{other}"),
            TransferOutcome::Pending => f.write_str("pending"),
            TransferOutcome::Failed(e) => write!(f, "failed: {e}"),
            TransferOutcome::NotSubmitted => f.write_str("not submitted"),
        }
    }
}

/// A script file that cannot be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid script.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ScenarioError,
    },
}

/// Reads and parses a script file, reading at most one byte more than
/// [`ScenarioOptions::max_bytes`].
pub fn load_scenario(
    path: impl AsRef<Path>,
    options: &ScenarioOptions,
) -> Result<Scenario, LoadError> {
    let path = path.as_ref();
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(options.max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(io)?;
    Scenario::parse_bytes(&bytes, options).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// A transfer handed to a logical client.
struct Job {
    index: usize,
    command: BankCommand,
}

/// A client's answer for a transfer.
struct Completion {
    index: usize,
    latency: Duration,
    result: Result<BankOutput, ClientError>,
    /// The client's registration nonce and session after it.
    nonce: ClientId,
    session: Option<ClientId>,
}

/// Aborts the client tasks when the run ends, however it ends.
struct Clients {
    queues: BTreeMap<Account, mpsc::UnboundedSender<Job>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Clients {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn client_task(
    mut client: Client<Bank>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    done: mpsc::UnboundedSender<Completion>,
) {
    while let Some(job) = jobs.recv().await {
        let started = Instant::now();
        // A registration uses the nonce the client has before it; an expired session
        // makes the client pick a new one.
        let nonce = client.id();
        let result = client.execute_within(&job.command, TRANSFER_DEADLINE).await;
        let completion = Completion {
            index: job.index,
            latency: started.elapsed(),
            result,
            nonce,
            session: client.session(),
        };
        if done.send(completion).is_err() {
            break;
        }
    }
}

/// Plays `scenario` against `cluster` and reports what became of every transfer.
///
/// # What a run does
/// - One logical client per sending account (`A` to `J` in the sample), each a
///   [`paxos_core::Client`] task with its own queue: it submits its own transfers one
///   after another, in script order, while the clients run concurrently. A transfer keeps
///   its request number across every retry until it completes; it is never resubmitted
///   under a new one, so it executes at most once.
/// - For each set: the listed replicas are made available and the others unavailable
///   ([`Cluster::set_available`]; a replica that cannot be reached is reported and
///   treated as down). Then the set's rows are released in order: a transfer goes to its
///   client's queue.
/// - A brand-new cluster is founded only once every replica has heard from every other
///   one. If a set would make replicas unavailable while that has not happened yet, the
///   runner first waits for it (up to [`RunOptions::founding_timeout`], saying so on
///   the console); otherwise the cut-off replicas would keep the cluster from forming.
/// - `LF` means "the current leader fails at this point": the runner first waits until
///   everything released so far has completed (bounded by the set's timeout), so the
///   transfers above the `LF` row are committed by the old leader; then it makes the
///   current leader ([`Cluster::leader`], waited for if an election is under way)
///   unavailable; then it releases the rows below, which the next leader commits. If
///   no leader shows up before the set's timeout, the `LF` is reported and skipped.
/// - A set ends when everything released so far — its own transfers and any carried
///   over — has completed, or when [`RunOptions::set_timeout`] has passed since it
///   started. What is unfinished carries over: the clients keep retrying it during
///   the following sets. A set without a majority cannot commit, so its transfers
///   stay pending until a later set restores one.
/// - Between sets, an [interactive](Console::interactive) console pauses for
///   commands; `quit` there ends the run early ([`RunReport::stopped_early`]), Ctrl-C
///   there fails it with [`RunError::Interrupted`]. After the last set the client
///   tasks stop; what has not completed is reported
///   [pending](TransferOutcome::Pending).
///
/// Progress (each set, each completion, each leader failure) is written to the console
/// as it happens; the returned report holds the details, and
/// [`RunReport::summary`] renders the end-of-run summary for the caller to print.
/// The run fails only if the console cannot be written to (or outside a tokio
/// runtime): unreachable replicas, missing leaders and pending transfers are reported,
/// not errors.
pub async fn run_scenario<C, W>(
    cluster: &C,
    scenario: &Scenario,
    options: &RunOptions,
    console: &mut Console<W>,
) -> Result<RunReport, RunError>
where
    C: Cluster + ?Sized,
    W: Write + Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(RunError::NoRuntime);
    }
    let run_start = Instant::now();
    let mut transfers = Vec::new();
    for set in &scenario.sets {
        for item in &set.items {
            if let (Item::Transfer { from, .. }, Some(command)) = (item, item.command()) {
                transfers.push(TransferRecord {
                    set: set.number,
                    command,
                    client: *from,
                    outcome: TransferOutcome::Pending,
                    completed_in_set: None,
                    latency: None,
                });
            }
        }
    }
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let endpoints = cluster.endpoints();
    let mut clients = Clients {
        queues: BTreeMap::new(),
        tasks: Vec::new(),
    };
    let mut names = ClientNames::new();
    for t in &transfers {
        if clients.queues.contains_key(&t.client) {
            continue;
        }
        let client = Client::<Bank>::with_options(endpoints.clone(), options.client.clone());
        names.add_nonce(client.id(), t.client);
        let (tx, rx) = mpsc::unbounded_channel();
        clients.queues.insert(t.client, tx);
        clients
            .tasks
            .push(tokio::spawn(client_task(client, rx, done_tx.clone())));
    }
    drop(done_tx);
    let mut run = Run {
        cluster,
        console,
        options,
        transfers,
        outstanding: 0,
        done_rx,
        clients,
        names,
        sessions: BTreeMap::new(),
        founded: false,
        current_set: 0,
        completed_in_set: 0,
        sets_started: 0,
        sets_total: scenario.sets.len(),
        completed: 0,
    };
    let mut sets = Vec::new();
    let mut next_transfer = 0;
    let mut stopped_early = false;
    for (i, set) in scenario.sets.iter().enumerate() {
        let last = i + 1 == scenario.sets.len();
        run.sets_started = i + 1;
        let report = run.play_set(set, last, &mut next_transfer).await?;
        sets.push(report);
        if !last && run.pause().await? == PauseEnd::Quit {
            stopped_early = true;
            let left = scenario.sets.len() - i - 1;
            writeln!(
                run.out(),
                "  quit: the run stops here; {left} set(s) not played"
            )?;
            break;
        }
    }
    drop(run.clients);
    for t in run.transfers.iter_mut().skip(next_transfer) {
        t.outcome = TransferOutcome::NotSubmitted;
    }
    let report = RunReport {
        transfers: run.transfers,
        sets,
        clients: run.sessions,
        names: run.names,
        elapsed: run_start.elapsed(),
        stopped_early,
    };
    Ok(report)
}

struct Run<'a, C: ?Sized, W> {
    cluster: &'a C,
    console: &'a mut Console<W>,
    options: &'a RunOptions,
    transfers: Vec<TransferRecord>,
    /// Released and not completed.
    outstanding: usize,
    done_rx: mpsc::UnboundedReceiver<Completion>,
    clients: Clients,
    names: ClientNames,
    /// The session of each client that registered.
    sessions: BTreeMap<Account, ClientId>,
    /// True once the cluster is known to have been founded (see `await_founding`).
    founded: bool,
    current_set: u32,
    completed_in_set: usize,
    /// For [`RunProgress`].
    sets_started: usize,
    sets_total: usize,
    completed: usize,
}

/// How a pause between sets ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PauseEnd {
    /// Go on with the next set.
    Continue,
    /// `quit`: stop the run.
    Quit,
}

impl<C: Cluster + ?Sized, W: Write + Send> Run<'_, C, W> {
    fn out(&mut self) -> &mut W {
        self.console.output()
    }

    fn report_progress(&mut self) {
        let progress = RunProgress {
            set: self.current_set,
            sets_started: self.sets_started,
            sets: self.sets_total,
            completed: self.completed,
            transfers: self.transfers.len(),
        };
        self.console.report_progress(&progress);
    }

    async fn play_set(
        &mut self,
        set: &crate::scenario::TxSet,
        last: bool,
        next_transfer: &mut usize,
    ) -> Result<SetReport, RunError> {
        let start = Instant::now();
        let deadline = start + self.options.set_timeout;
        self.current_set = set.number;
        self.completed_in_set = 0;
        let nodes = self.cluster.nodes();
        let has_majority = set.live.iter().filter(|n| nodes.contains(n)).count() > nodes.len() / 2;
        let live: Vec<String> = set.live.iter().map(|n| format!("n{n}")).collect();
        let down: Vec<String> = nodes
            .iter()
            .filter(|n| !set.live.contains(n))
            .map(|n| format!("n{n}"))
            .collect();
        let mut header = format!("== Set {}: live {}", set.number, live.join(" "));
        if !down.is_empty() {
            header.push_str(&format!("; down {}", down.join(" ")));
        }
        if !has_majority {
            header.push_str(" (no majority: nothing can commit)");
        }
        if self.outstanding > 0 {
            header.push_str(&format!("; {} carried over", self.outstanding));
        }
        writeln!(self.out(), "{header} ==")?;
        self.report_progress();
        tracing::info!(set = set.number, live = ?set.live, carried_over = self.outstanding, "set starts");
        for n in set.live.iter().filter(|n| !nodes.contains(n)) {
            writeln!(
                self.out(),
                "  n{n} is not a replica of this cluster; ignored"
            )?;
        }
        let closing: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|n| !set.live.contains(n))
            .collect();
        if !closing.is_empty() && !self.founded {
            self.await_founding().await?;
        }
        let cluster = self.cluster;
        let applied = futures::future::join_all(
            nodes
                .iter()
                .map(|&n| cluster.set_available(n, set.live.contains(&n))),
        )
        .await;
        let mut unreachable = Vec::new();
        for (&node, result) in nodes.iter().zip(applied) {
            if let Err(e) = result {
                writeln!(self.out(), "  {e}; treated as down")?;
                unreachable.push(node);
            }
        }
        let mut released = 0;
        let mut leader_failures = Vec::new();
        for (position, item) in set.items.iter().enumerate() {
            match item {
                Item::Transfer { .. } => {
                    self.release(*next_transfer)?;
                    *next_transfer += 1;
                    released += 1;
                }
                Item::LeaderFail => {
                    self.wait_outstanding(deadline).await?;
                    let failure = self.fail_leader(set.number, position, deadline).await?;
                    leader_failures.push(failure);
                }
            }
        }
        let finished = self.wait_outstanding(deadline).await?;
        let leader_at_end = self.cluster.leader().await;
        let elapsed = start.elapsed();
        let leader = leader_at_end.map_or_else(|| "none".to_string(), |l| format!("n{l}"));
        let line = if finished {
            format!(
                "  set {} finished in {}: {} completed; leader {leader}",
                set.number,
                Millis(elapsed),
                self.completed_in_set
            )
        } else {
            format!(
                "  set {} timed out after {}: {} completed, {} {}; leader {leader}",
                set.number,
                Millis(elapsed),
                self.completed_in_set,
                self.outstanding,
                if last {
                    "still pending"
                } else {
                    "carried over to the next set"
                }
            )
        };
        writeln!(self.out(), "{line}")?;
        tracing::info!(
            set = set.number,
            completed = self.completed_in_set,
            carried_over = self.outstanding,
            timed_out = !finished,
            "set ends"
        );
        Ok(SetReport {
            number: set.number,
            live: set.live.clone(),
            unreachable,
            has_majority,
            released,
            completed: self.completed_in_set,
            carried_over: self.outstanding,
            timed_out: !finished,
            leader_failures,
            leader_at_end,
            elapsed,
        })
    }

    fn release(&mut self, index: usize) -> Result<(), RunError> {
        let Some(t) = self.transfers.get(index) else {
            return Ok(());
        };
        let job = Job {
            index,
            command: t.command,
        };
        let sent = self
            .clients
            .queues
            .get(&t.client)
            .is_some_and(|q| q.send(job).is_ok());
        if sent {
            self.outstanding += 1;
        } else if let Some(t) = self.transfers.get_mut(index) {
            t.outcome = TransferOutcome::Failed("client task stopped".into());
        }
        Ok(())
    }

    /// Records completions until nothing is outstanding (true) or `deadline` (false).
    async fn wait_outstanding(&mut self, deadline: Instant) -> Result<bool, RunError> {
        while self.outstanding > 0 {
            tokio::select! {
                c = self.done_rx.recv() => match c {
                    Some(c) => self.complete(c)?,
                    // Every client task is gone: nothing more will complete.
                    None => return Ok(false),
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
            }
        }
        Ok(true)
    }

    fn complete(&mut self, c: Completion) -> Result<(), RunError> {
        let set = self.current_set;
        let Some(t) = self.transfers.get_mut(c.index) else {
            return Ok(());
        };
        self.names.add_nonce(c.nonce, t.client);
        if let Some(session) = c.session {
            self.names.add_session(session, t.client);
            self.sessions.insert(t.client, session);
        }
        t.outcome = match c.result {
            Ok(output) => TransferOutcome::Committed(output),
            Err(e) => TransferOutcome::Failed(e.to_string()),
        };
        t.latency = Some(c.latency);
        t.completed_in_set = Some(set);
        let carried = if t.set == set {
            String::new()
        } else {
            format!(" [from set {}]", t.set)
        };
        let line = format!(
            "  {:<8} {:>8}  {}{carried}",
            CommandDisplay(&t.command).to_string(),
            Millis(c.latency).to_string(),
            OutcomeDisplay(&t.outcome),
        );
        self.outstanding = self.outstanding.saturating_sub(1);
        self.completed_in_set += 1;
        self.completed += 1;
        writeln!(self.out(), "{}", line.trim_end())?;
        self.report_progress();
        Ok(())
    }

    async fn fail_leader(
        &mut self,
        set: u32,
        position: usize,
        deadline: Instant,
    ) -> Result<LeaderFailure, RunError> {
        loop {
            if let Some(node) = self.cluster.leader().await {
                let ballot = self
                    .cluster
                    .replica_status(node)
                    .await
                    .ok()
                    .map(|s| s.replica.promised);
                tracing::info!(set, node, ?ballot, "LF: making the leader unavailable");
                match self.cluster.set_available(node, false).await {
                    Ok(()) => {
                        let ballot_text = ballot
                            .map(|b| format!(" at ballot {b}"))
                            .unwrap_or_default();
                        writeln!(
                            self.out(),
                            "  LF: leader n{node}{ballot_text} is now unavailable"
                        )?;
                    }
                    Err(e) => writeln!(self.out(), "  LF: cannot fail leader n{node}: {e}")?,
                }
                return Ok(LeaderFailure {
                    set,
                    position,
                    node: Some(node),
                    ballot,
                });
            }
            if Instant::now() >= deadline {
                writeln!(
                    self.out(),
                    "  LF: no leader to fail before the set timed out"
                )?;
                return Ok(LeaderFailure {
                    set,
                    position,
                    node: None,
                    ballot: None,
                });
            }
            // Keep recording completions while an election runs.
            let wake = (Instant::now() + LEADER_POLL).min(deadline);
            tokio::select! {
                Some(c) = self.done_rx.recv() => self.complete(c)?,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Before the first set that makes replicas unavailable: if the cluster is brand new
    /// and still being founded (every replica that answers has never voted, and some do
    /// not vote yet), waits until every replica that answers votes, up to
    /// [`RunOptions::founding_timeout`]. Founding needs every member to hear from every
    /// other, so a replica cut off now would keep the cluster from ever forming.
    async fn await_founding(&mut self) -> Result<(), RunError> {
        let deadline = Instant::now() + self.options.founding_timeout;
        let mut announced = false;
        loop {
            let nodes = self.cluster.nodes();
            let statuses =
                futures::future::join_all(nodes.iter().map(|&n| self.cluster.replica_status(n)))
                    .await;
            let answered: Vec<_> = statuses.into_iter().filter_map(Result::ok).collect();
            // Some replica still waits for every member to say it never voted either.
            let founding = answered.iter().all(NodeStatus::never_voted)
                && !answered.iter().all(NodeStatus::is_voter);
            if !founding {
                // Founded (or an existing cluster): no need to ask again.
                self.founded = !answered.is_empty();
                if announced {
                    writeln!(self.out(), "  every replica has joined the new cluster")?;
                }
                return Ok(());
            }
            if !announced {
                writeln!(
                    self.out(),
                    "  the cluster is new: waiting until every replica has joined it"
                )?;
                announced = true;
            }
            if Instant::now() >= deadline {
                let waited = Millis(self.options.founding_timeout);
                writeln!(
                    self.out(),
                    "  the new cluster was not founded within {waited}: is every replica up?"
                )?;
                return Ok(());
            }
            // Keep recording completions meanwhile.
            let wake = (Instant::now() + FOUNDING_POLL).min(deadline);
            tokio::select! {
                Some(c) = self.done_rx.recv() => self.complete(c)?,
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Between sets: read and run commands until an empty line, `quit`, Ctrl-C or the
    /// end of input.
    async fn pause(&mut self) -> Result<PauseEnd, RunError> {
        let mut end = PauseEnd::Continue;
        let prompt = format!("[{CONSOLE_HELP}] > ");
        while self.console.is_interactive() {
            if !self.console.input_shows_prompt() {
                write!(self.out(), "{prompt}")?;
            }
            self.out().flush()?;
            let line = match self.console.read_line(&prompt).await {
                ConsoleLine::Line(line) => line,
                ConsoleLine::Interrupted => return Err(RunError::Interrupted),
                ConsoleLine::End => {
                    writeln!(self.out())?;
                    break;
                }
            };
            match line.parse::<ConsoleCommand>() {
                Ok(ConsoleCommand::Continue) => break,
                Ok(ConsoleCommand::Quit) => {
                    end = PauseEnd::Quit;
                    break;
                }
                Ok(command) => {
                    run_command(self.cluster, command, &self.names, self.console.output()).await?
                }
                Err(e) => writeln!(self.out(), "{e}")?,
            }
        }
        // Completions that arrived during the pause belong to the set that just ended.
        while let Ok(c) = self.done_rx.try_recv() {
            self.complete(c)?;
        }
        Ok(end)
    }
}

/// What [`await_agreement`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreement {
    /// The available replicas that answered, compared with each other.
    pub nodes: Vec<NodeId>,
    /// True when they all executed the same slots and hold the same balances.
    pub agree: bool,
    /// Their common balances (those of the first one when they disagree).
    pub balances: BTreeMap<Account, i64>,
    /// How many slots they executed (the least, when they disagree).
    pub executed: u64,
}

impl Agreement {
    /// The sum of [`balances`](Agreement::balances).
    pub fn total(&self) -> i128 {
        self.balances.values().map(|&b| i128::from(b)).sum()
    }
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("n{n}")).collect();
        if self.nodes.is_empty() {
            f.write_str("no available replica answered")
        } else if self.agree {
            write!(
                f,
                "the {} available replicas ({}) agree: {} slots executed, total {}",
                self.nodes.len(),
                nodes.join(" "),
                self.executed,
                self.total()
            )
        } else {
            write!(
                f,
                "the available replicas ({}) DISAGREE (or have not caught up)",
                nodes.join(" ")
            )
        }
    }
}

/// Waits up to `timeout` for every available replica to execute the same slots and
/// hold the same balances (followers learn the last commits a heartbeat later), and
/// reports what it saw last.
pub async fn await_agreement<C: Cluster + ?Sized>(cluster: &C, timeout: Duration) -> Agreement {
    let deadline = Instant::now() + timeout;
    loop {
        let dbs: Vec<_> = gather_db(cluster)
            .await
            .into_iter()
            .filter_map(|r| r.result.ok())
            .filter(|db| db.available)
            .collect();
        let agree = !dbs.is_empty()
            && dbs
                .windows(2)
                .all(|w| w[0].executed == w[1].executed && w[0].balances == w[1].balances);
        if agree || Instant::now() >= deadline {
            return Agreement {
                nodes: dbs.iter().map(|d| d.node).collect(),
                agree,
                balances: dbs.first().map(|d| d.balances.clone()).unwrap_or_default(),
                executed: dbs.iter().map(|d| d.executed).min().unwrap_or(0),
            };
        }
        tokio::time::sleep(LEADER_POLL).await;
    }
}
