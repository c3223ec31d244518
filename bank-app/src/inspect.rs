//! PrintDB, PrintLog, PrintStatus and PrintView: asking the replicas, and showing
//! the answers as tables.
//!
//! Each view has a `gather_*` function returning serde types (for `--json`) and a
//! `format_*` function rendering them for people; [`ConsoleCommand`] parses the
//! commands a user types between sets and [`run_command`] does both steps.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::str::FromStr;

use paxos_core::{AcceptorStatus, ClientId, NodeId, Slot, ViewChange, ViewDirection};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::account::Account;
use crate::cluster::{Cluster, ClusterError, DbSnapshot, EntryValue, LogEntry, ShortClient};
use crate::table::{Align, Table};

/// Names of logical clients, so logs can say `register (client A)`.
///
/// The cluster assigns a client its session id when it registers: the slot of its
/// registration entry. That entry names the registration nonce the client chose, so a
/// registration is named by its slot (a known session) or by its nonce.
///
/// ```
/// use bank_app::{Account, ClientNames};
///
/// let mut names = ClientNames::new();
/// names.add_nonce(0x5eed_0001, Account::A);
/// names.add_session(7, Account::J);
/// assert_eq!(names.registration(3, 0x5eed_0001), Some(Account::A));
/// assert_eq!(names.registration(7, 0x1234), Some(Account::J));
/// assert_eq!(names.session(7), Some(Account::J));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientNames {
    /// Session id (the slot of the registration) to client.
    sessions: BTreeMap<ClientId, Account>,
    /// Registration nonce to client.
    nonces: BTreeMap<ClientId, Account>,
}

impl ClientNames {
    /// No names.
    pub fn new() -> ClientNames {
        ClientNames::default()
    }

    /// Names the session the cluster assigned to `client`.
    pub fn add_session(&mut self, session: ClientId, client: Account) {
        self.sessions.insert(session, client);
    }

    /// Names a registration nonce `client` used.
    pub fn add_nonce(&mut self, nonce: ClientId, client: Account) {
        self.nonces.insert(nonce, client);
    }

    /// The client of a session.
    pub fn session(&self, session: ClientId) -> Option<Account> {
        self.sessions.get(&session).copied()
    }

    /// The client of the registration entry at `slot` with `nonce`.
    pub fn registration(&self, slot: Slot, nonce: ClientId) -> Option<Account> {
        self.session(slot)
            .or_else(|| self.nonces.get(&nonce).copied())
    }

    /// True when nothing is named.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.nonces.is_empty()
    }
}

/// One replica's answer to an inspection call.
#[derive(Clone, Debug)]
pub struct NodeResult<T> {
    /// The replica.
    pub node: NodeId,
    /// Its answer, or why there is none.
    pub result: Result<T, ClusterError>,
}

/// Asks every replica, concurrently, with `f`.
pub(crate) async fn gather<'c, C, T, F, Fut>(cluster: &'c C, f: F) -> Vec<NodeResult<T>>
where
    C: Cluster + ?Sized,
    F: Fn(&'c C, NodeId) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClusterError>> + 'c,
{
    let nodes = cluster.inspected();
    let results = futures::future::join_all(nodes.iter().map(|&n| f(cluster, n))).await;
    nodes
        .into_iter()
        .zip(results)
        .map(|(node, result)| NodeResult { node, result })
        .collect()
}

/// Every replica's balances (PrintDB).
pub async fn gather_db<C: Cluster + ?Sized>(cluster: &C) -> Vec<NodeResult<DbSnapshot>> {
    gather(cluster, |c, n| c.db(n)).await
}

/// One slot's status on every replica (PrintStatus).
pub async fn gather_status<C: Cluster + ?Sized>(
    cluster: &C,
    slot: Slot,
) -> Vec<NodeResult<LogEntry>> {
    gather(cluster, move |c, n| c.status(n, slot)).await
}

/// Every replica's view changes (PrintView).
pub async fn gather_views<C: Cluster + ?Sized>(cluster: &C) -> Vec<NodeResult<Vec<ViewChange>>> {
    gather(cluster, |c, n| c.views(n)).await
}

fn node_name(node: NodeId) -> String {
    format!("n{node}")
}

/// A slot's value, with the client's name for a registration.
fn value_text(entry: &LogEntry, names: &ClientNames) -> String {
    match &entry.value {
        EntryValue::Register { nonce } => match names.registration(entry.slot, *nonce) {
            Some(account) => format!("register (client {account})"),
            None => format!("register {}", ShortClient(*nonce)),
        },
        other => other.to_string(),
    }
}

/// PrintDB: one row per replica with every account's balance, the total, how many slots
/// it executed, and whether it is up (`yes`, or `no` when unavailable; `(recovering)`
/// or `(joining)` after it while it does not vote yet, see [`DbSnapshot::acceptor`]).
pub fn format_db(rows: &[NodeResult<DbSnapshot>]) -> String {
    let accounts: BTreeSet<Account> = rows
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .flat_map(|db| db.balances.keys().copied())
        .collect();
    let mut columns = vec![
        ("replica".to_string(), Align::Left),
        ("up".into(), Align::Left),
    ];
    columns.extend(accounts.iter().map(|a| (a.to_string(), Align::Right)));
    columns.push(("total".into(), Align::Right));
    columns.push(("executed".into(), Align::Right));
    let mut table = Table::new(columns);
    for row in rows {
        match &row.result {
            Ok(db) => {
                let mut cells = vec![node_name(row.node), up_text(db)];
                cells.extend(accounts.iter().map(|a| {
                    db.balances
                        .get(a)
                        .map_or_else(|| "-".to_string(), i64::to_string)
                }));
                cells.push(db.total().to_string());
                cells.push(db.executed.to_string());
                table.row(cells);
            }
            Err(e) => {
                table.note(node_name(row.node), e.to_string());
            }
        }
    }
    table.to_string()
}

fn up_text(db: &DbSnapshot) -> String {
    let up = if db.available { "yes" } else { "no" };
    match db.acceptor {
        AcceptorStatus::Voter => up.to_string(),
        AcceptorStatus::Recovering => format!("{up} (recovering)"),
        AcceptorStatus::Pristine => format!("{up} (joining)"),
        _ => format!("{up} (not voting)"),
    }
}

/// PrintLog: one replica's log, a row per slot: status letter, ballot, value.
pub fn format_log(
    node: NodeId,
    log: &Result<Vec<LogEntry>, ClusterError>,
    names: &ClientNames,
) -> String {
    match log {
        Err(e) => format!("{}  {e}\n", node_name(node)),
        Ok(entries) if entries.is_empty() => format!("{}  (empty log)\n", node_name(node)),
        Ok(entries) => {
            let mut table = Table::new([
                ("slot", Align::Right),
                ("st", Align::Left),
                ("ballot", Align::Left),
                ("value", Align::Left),
            ]);
            for e in entries {
                table.row([
                    e.slot.to_string(),
                    e.code().to_string(),
                    e.ballot.map_or_else(|| "-".into(), |b| b.to_string()),
                    value_text(e, names),
                ]);
            }
            table.to_string()
        }
    }
}

/// PrintStatus: one slot on every replica: status letter (`X` nothing, `A` accepted,
/// `C` committed, `E` executed), ballot and value.
pub fn format_status(slot: Slot, rows: &[NodeResult<LogEntry>], names: &ClientNames) -> String {
    let mut table = Table::new([
        ("replica", Align::Left),
        ("st", Align::Left),
        ("ballot", Align::Left),
        ("value", Align::Left),
    ]);
    for row in rows {
        match &row.result {
            Ok(e) => {
                table.row([
                    node_name(row.node),
                    e.code().to_string(),
                    e.ballot.map_or_else(|| "-".into(), |b| b.to_string()),
                    value_text(e, names),
                ]);
            }
            Err(e) => {
                table.note(node_name(row.node), e.to_string());
            }
        }
    }
    format!("slot {slot} (X = nothing, A = accepted, C = committed, E = executed)\n{table}")
}

/// PrintView: every replica's view changes, oldest first: the new ballot and leader,
/// whether this replica sent the NEW-VIEW or received (or adopted) it, the slots it
/// covered and how many of them were filled with no-ops.
pub fn format_views(rows: &[NodeResult<Vec<ViewChange>>]) -> String {
    let mut table = Table::new([
        ("replica", Align::Left),
        ("ballot", Align::Left),
        ("leader", Align::Left),
        ("how", Align::Left),
        ("slots", Align::Left),
        ("no-ops", Align::Right),
        ("tick", Align::Right),
    ]);
    for row in rows {
        match &row.result {
            Ok(views) if views.is_empty() => {
                table.note(node_name(row.node), "(no view changes)");
            }
            Ok(views) => {
                for v in views {
                    let how = match v.direction {
                        ViewDirection::Sent => "sent",
                        ViewDirection::Received => "received",
                        ViewDirection::Adopted => "adopted",
                        _ => "other",
                    };
                    let slots = if v.slots.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{}..{}", v.slots.start, v.slots.end)
                    };
                    table.row([
                        node_name(row.node),
                        v.ballot.to_string(),
                        node_name(v.leader),
                        how.into(),
                        slots,
                        v.noops.to_string(),
                        v.tick.to_string(),
                    ]);
                }
            }
            Err(e) => {
                table.note(node_name(row.node), e.to_string());
            }
        }
    }
    table.to_string()
}

/// A command typed at the pause between sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// An empty line: go on with the next set.
    Continue,
    /// `printdb`: every replica's balances.
    PrintDb,
    /// `printlog N`: replica `N`'s log (`N` or `nN`).
    PrintLog(NodeId),
    /// `printstatus SEQ`: slot `SEQ` on every replica (slots as numbered by `printlog`,
    /// from 0).
    PrintStatus(Slot),
    /// `printview`: every replica's view changes.
    PrintView,
    /// `help` or `?`: list the commands.
    Help,
    /// `quit` or `exit`: stop the run here; the remaining sets are not played.
    Quit,
}

/// The commands [`ConsoleCommand`] accepts, for a prompt or a help line.
pub const CONSOLE_HELP: &str =
    "printdb | printlog N | printstatus SEQ | printview | help | quit | Enter to continue";

/// A line that is not a [`ConsoleCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CommandError {
    /// The first word is not a command.
    #[error("unknown command {0:?} (try: {CONSOLE_HELP})")]
    Unknown(String),
    /// The command needs an argument.
    #[error("{command} needs {argument}")]
    MissingArgument {
        /// The command.
        command: &'static str,
        /// What it needs.
        argument: &'static str,
    },
    /// The argument is not a number.
    #[error("{0:?} is not a number")]
    BadNumber(String),
    /// More words than the command takes.
    #[error("too many arguments")]
    TooManyArguments,
}

impl FromStr for ConsoleCommand {
    type Err = CommandError;

    /// Case-insensitive; `PrintDB` and `printdb` are the same.
    fn from_str(line: &str) -> Result<ConsoleCommand, CommandError> {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            return Ok(ConsoleCommand::Continue);
        };
        let arg = words.next();
        if words.next().is_some() {
            return Err(CommandError::TooManyArguments);
        }
        let number = |command: &'static str, argument: &'static str| {
            let raw = arg.ok_or(CommandError::MissingArgument { command, argument })?;
            let digits = raw.strip_prefix(['n', 'N']).unwrap_or(raw);
            digits
                .parse::<u64>()
                .map_err(|_| CommandError::BadNumber(raw.chars().take(20).collect()))
        };
        let no_arg = |c: ConsoleCommand| match arg {
            None => Ok(c),
            Some(_) => Err(CommandError::TooManyArguments),
        };
        match first.to_ascii_lowercase().as_str() {
            "printdb" => no_arg(ConsoleCommand::PrintDb),
            "printview" => no_arg(ConsoleCommand::PrintView),
            "help" | "?" => no_arg(ConsoleCommand::Help),
            "quit" | "exit" => no_arg(ConsoleCommand::Quit),
            "printlog" => Ok(ConsoleCommand::PrintLog(number(
                "printlog",
                "a replica id",
            )?)),
            "printstatus" => Ok(ConsoleCommand::PrintStatus(number(
                "printstatus",
                "a slot number",
            )?)),
            _ => Err(CommandError::Unknown(first.chars().take(20).collect())),
        }
    }
}

/// Runs one inspection command against the cluster and writes its table to `out`.
/// [`ConsoleCommand::Continue`] and [`ConsoleCommand::Quit`] write nothing.
pub async fn run_command<C, W>(
    cluster: &C,
    command: ConsoleCommand,
    names: &ClientNames,
    out: &mut W,
) -> std::io::Result<()>
where
    C: Cluster + ?Sized,
    W: Write + ?Sized,
{
    match command {
        ConsoleCommand::Continue | ConsoleCommand::Quit => Ok(()),
        ConsoleCommand::Help => writeln!(out, "commands: {CONSOLE_HELP}"),
        ConsoleCommand::PrintDb => {
            let rows = gather_db(cluster).await;
            write!(out, "PrintDB\n{}", format_db(&rows))
        }
        ConsoleCommand::PrintLog(node) => {
            let log = cluster.log(node).await;
            write!(out, "PrintLog n{node}\n{}", format_log(node, &log, names))
        }
        ConsoleCommand::PrintStatus(slot) => {
            let rows = gather_status(cluster, slot).await;
            write!(out, "PrintStatus {}", format_status(slot, &rows, names))
        }
        ConsoleCommand::PrintView => {
            let rows = gather_views(cluster).await;
            write!(out, "PrintView\n{}", format_views(&rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use paxos_core::{Ballot, SlotStatus};

    use super::*;
    use crate::bank::BankCommand;

    #[test]
    fn commands_parse() {
        use ConsoleCommand::*;
        let ok = [
            ("", Continue),
            ("   \n", Continue),
            ("printdb", PrintDb),
            ("PrintDB\r\n", PrintDb),
            ("printlog 3", PrintLog(3)),
            ("printlog n3", PrintLog(3)),
            ("PRINTSTATUS 17", PrintStatus(17)),
            ("printview", PrintView),
            ("help", Help),
            ("?", Help),
            ("quit", Quit),
            (" EXIT ", Quit),
        ];
        for (line, want) in ok {
            assert_eq!(line.parse::<ConsoleCommand>(), Ok(want), "{line:?}");
        }
        let bad = [
            ("printlog", "printlog needs a replica id"),
            ("printstatus x", "\"x\" is not a number"),
            ("printdb 3", "too many arguments"),
            ("printlog 1 2", "too many arguments"),
            ("quit now", "too many arguments"),
            ("stop", "unknown command \"stop\" (try: printdb | printlog N | printstatus SEQ | printview | help | quit | Enter to continue)"),
        ];
        for (line, want) in bad {
            let err = line.parse::<ConsoleCommand>().unwrap_err();
            assert_eq!(err.to_string(), want, "{line:?}");
        }
    }

    fn entry(slot: Slot, status: SlotStatus, value: EntryValue) -> LogEntry {
        LogEntry {
            slot,
            status,
            ballot: Some(Ballot::new(2, 3)),
            value,
        }
    }

    #[test]
    fn tables_show_errors_as_rows() {
        let a = Account::new('A').unwrap();
        let b = Account::new('B').unwrap();
        let rows = vec![
            NodeResult {
                node: 1,
                result: Ok(DbSnapshot {
                    node: 1,
                    available: true,
                    acceptor: AcceptorStatus::Voter,
                    executed: 4,
                    balances: [(a, 8), (b, 12)].into_iter().collect(),
                }),
            },
            NodeResult {
                node: 2,
                result: Err(ClusterError::unreachable(
                    2,
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ),
                )),
            },
        ];
        assert_eq!(
            format_db(&rows),
            "replica  up   A   B  total  executed\n\
             -------  ---  -  --  -----  --------\n\
             n1       yes  8  12     20         4\n\
             n2       n2 unreachable: connection refused\n"
        );

        let recovering = NodeResult {
            node: 3,
            result: Ok(DbSnapshot {
                node: 3,
                available: false,
                acceptor: AcceptorStatus::Recovering,
                executed: 0,
                balances: [(a, 10), (b, 10)].into_iter().collect(),
            }),
        };
        let table = format_db(&[recovering]);
        assert!(
            table.contains("\nn3       no (recovering)  10  10"),
            "{table}"
        );

        let mut names = ClientNames::new();
        names.add_nonce(0x77_0000_0001, a);
        names.add_session(3, b);
        let log = Ok(vec![
            entry(
                0,
                SlotStatus::Executed,
                EntryValue::Register {
                    nonce: 0x77_0000_0001,
                },
            ),
            entry(
                1,
                SlotStatus::Committed,
                EntryValue::Command {
                    client: 77,
                    seq: 1,
                    command: BankCommand::Transfer {
                        from: a,
                        to: b,
                        amount: 2,
                    },
                },
            ),
            entry(2, SlotStatus::Accepted, EntryValue::Noop),
            // Session 3 is B's, whatever nonce it registered with.
            entry(3, SlotStatus::Executed, EntryValue::Register { nonce: 5 }),
            entry(
                4,
                SlotStatus::Executed,
                EntryValue::Register {
                    nonce: 0xabcd_ef01_0000_0000,
                },
            ),
        ]);
        assert_eq!(
            format_log(3, &log, &names),
            "slot  st  ballot   value\n\
             ----  --  -------  -------------------\n   \
             0  E   (2, n3)  register (client A)\n   \
             1  C   (2, n3)  A->B 2\n   \
             2  A   (2, n3)  no-op\n   \
             3  E   (2, n3)  register (client B)\n   \
             4  E   (2, n3)  register cabcdef01\n"
        );
        assert_eq!(format_log(3, &Ok(vec![]), &names), "n3  (empty log)\n");

        let status = vec![NodeResult {
            node: 4,
            result: Ok(LogEntry {
                slot: 9,
                status: SlotStatus::None,
                ballot: None,
                value: EntryValue::Empty,
            }),
        }];
        assert!(format_status(9, &status, &names).ends_with("n4       X   -       -\n"));
        let views = vec![NodeResult {
            node: 1,
            result: Ok(vec![]),
        }];
        assert_eq!(
            format_views(&views).lines().last(),
            Some("n1       (no view changes)")
        );
    }
}
