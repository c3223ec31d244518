//! Transaction scripts: the CSV format the banking example runs.
//!
//! The parser is written by hand rather than with the `csv` crate because the format
//! allows spaces before a quoted field (`1, "(A, B, 2)", "[n1, n2]"`), which a strict
//! RFC 4180 reader splits at the commas inside the quotes, and because every error must
//! name its line, which is simplest when the parser walks the lines itself. Fields never
//! span lines in this format.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use paxos_core::NodeId;
use thiserror::Error;

use crate::account::{Account, AccountError};
use crate::bank::{Bank, BankCommand, Rejection};

/// The transaction script shipped with the project (`bank-app/scenarios/sample.csv`):
/// five sets, two leader failures, one set without a majority.
pub const SAMPLE_SCENARIO: &str = include_str!("../scenarios/sample.csv");

/// The header every script starts with.
pub const SCENARIO_HEADER: &str = "Set Number,Transactions,Live Nodes";

/// Default for [`ScenarioOptions::max_bytes`]: 1 MiB.
pub const MAX_SCENARIO_BYTES: usize = 1 << 20;

/// Default for [`ScenarioOptions::max_lines`].
pub const MAX_SCENARIO_LINES: usize = 100_000;

/// Default for [`ScenarioOptions::max_line_bytes`].
pub const MAX_LINE_BYTES: usize = 1024;

/// The most characters of offending input quoted back in an error.
const MAX_QUOTED: usize = 40;

/// A parsed transaction script: sets in script order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scenario {
    /// The sets, with strictly increasing numbers.
    pub sets: Vec<TxSet>,
}

/// One set of a script: which replicas are up, and what happens while they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxSet {
    /// The set's number from the script.
    pub number: u32,
    /// The replicas up during this set, ascending, without duplicates. Every other
    /// replica is down.
    pub live: Vec<NodeId>,
    /// The set's transfers and leader failures, in script order.
    pub items: Vec<Item>,
}

/// One row of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    /// The client `from` asks the cluster to move `amount` from `from` to `to`.
    ///
    /// The parser checks the syntax and that both accounts exist. A transfer that
    /// cannot succeed whatever the balances (a zero amount, a transfer to oneself) is
    /// refused too ([`LineError::InvalidTransfer`]), unless
    /// [`ScenarioOptions::allow_invalid_transfers`] lets it through to be rejected by
    /// the [`Bank`](crate::Bank) when it runs.
    Transfer {
        /// The sender, which is also the submitting client.
        from: Account,
        /// The receiver.
        to: Account,
        /// The amount: positive, or at least 0 with
        /// [`ScenarioOptions::allow_invalid_transfers`].
        amount: i64,
    },
    /// `LF`: the current leader fails at this point of the set.
    LeaderFail,
}

impl Item {
    /// The bank command a transfer submits; `None` for [`Item::LeaderFail`].
    pub fn command(&self) -> Option<BankCommand> {
        match *self {
            Item::Transfer { from, to, amount } => Some(BankCommand::Transfer { from, to, amount }),
            Item::LeaderFail => None,
        }
    }
}

impl TxSet {
    /// True when the live replicas are a majority of a cluster of `cluster_size`, so
    /// the set's transfers can commit while it runs.
    pub fn has_majority(&self, cluster_size: usize) -> bool {
        self.live.len() > cluster_size / 2
    }

    /// The set's transfers as bank commands, in script order.
    pub fn commands(&self) -> impl Iterator<Item = BankCommand> + '_ {
        self.items.iter().filter_map(Item::command)
    }
}

/// What the parser accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioOptions {
    /// The cluster size `N`: live-node ids must be in `1..=N`. Default 5.
    pub nodes: u64,
    /// The accounts transfers may name. Default `A` to `J`.
    pub accounts: BTreeSet<Account>,
    /// The largest script accepted, in bytes. Default [`MAX_SCENARIO_BYTES`].
    pub max_bytes: usize,
    /// The most lines accepted (trailing blank lines do not count). Default
    /// [`MAX_SCENARIO_LINES`].
    pub max_lines: usize,
    /// The longest line accepted, in bytes. Default [`MAX_LINE_BYTES`].
    pub max_line_bytes: usize,
    /// Accept transfers that cannot succeed whatever the balances (a zero amount, a
    /// transfer to oneself), for scripts that exercise the bank's own rejections.
    /// Default `false`: such a row is a [`LineError::InvalidTransfer`], so a script
    /// never submits a transfer the bank is bound to reject.
    pub allow_invalid_transfers: bool,
}

impl Default for ScenarioOptions {
    fn default() -> Self {
        ScenarioOptions {
            nodes: 5,
            accounts: Account::default_set().collect(),
            max_bytes: MAX_SCENARIO_BYTES,
            max_lines: MAX_SCENARIO_LINES,
            max_line_bytes: MAX_LINE_BYTES,
            allow_invalid_transfers: false,
        }
    }
}

/// A script that cannot be parsed. Nothing of it is returned.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ScenarioError {
    /// The script is larger than [`ScenarioOptions::max_bytes`].
    #[error("script is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// The script's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A line is malformed.
    #[error("line {line}: {kind}")]
    Line {
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        kind: LineError,
    },
}

impl ScenarioError {
    /// The 1-based number of the offending line, if the error is about one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ScenarioError::Line { line, .. } => Some(*line),
            ScenarioError::TooLarge { .. } => None,
        }
    }

    /// What is wrong with the offending line, if the error is about one.
    pub fn kind(&self) -> Option<&LineError> {
        match self {
            ScenarioError::Line { kind, .. } => Some(kind),
            ScenarioError::TooLarge { .. } => None,
        }
    }
}

/// What is wrong with one line of a script.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum LineError {
    /// The bytes are not UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// The line is longer than [`ScenarioOptions::max_line_bytes`].
    #[error("line is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The line's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The script has more than [`ScenarioOptions::max_lines`] lines.
    #[error("more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// The script has no header row.
    #[error("missing header {SCENARIO_HEADER:?}")]
    MissingHeader,
    /// The first row is not the header.
    #[error("expected header {SCENARIO_HEADER:?}, found {0:?}")]
    BadHeader(String),
    /// A quoted field has no closing quote.
    #[error("unterminated quoted field")]
    UnterminatedQuote,
    /// Something other than a comma follows a quoted field's closing quote.
    #[error("unexpected text after a quoted field")]
    TextAfterQuote,
    /// A row has the wrong number of columns.
    #[error("expected 3 columns (set number, transaction, live nodes), found {0}")]
    WrongColumns(usize),
    /// The set number is not a number in `0..=4294967295`.
    #[error("invalid set number {0:?}")]
    BadSetNumber(String),
    /// A set's number is not greater than the previous set's.
    #[error("set number {number} does not follow set {previous}: numbers must increase")]
    SetNotIncreasing {
        /// This set's number.
        number: u32,
        /// The previous set's number.
        previous: u32,
    },
    /// A row starting a set has no live-node list.
    #[error("a row starting a set needs a live-node list such as \"[n1, n2, n3]\"")]
    MissingLiveNodes,
    /// A row not starting a set has a live-node list.
    #[error("live nodes given on a row that does not start a set")]
    LiveNodesWithoutSet,
    /// A transfer or `LF` comes before the first set.
    #[error("transaction before the first set")]
    ItemBeforeSet,
    /// The transaction column is neither `LF` nor `(Sender, Receiver, Amount)`.
    #[error("invalid transaction {0:?}: expected \"(Sender, Receiver, Amount)\" or \"LF\"")]
    BadTransaction(String),
    /// An account name is not a letter.
    #[error(transparent)]
    BadAccount(#[from] AccountError),
    /// An account is a letter but not one of [`ScenarioOptions::accounts`].
    #[error("unknown account {0}")]
    UnknownAccount(Account),
    /// A transfer that cannot succeed whatever the balances: the amount is 0 or the
    /// sender is the receiver (see [`ScenarioOptions::allow_invalid_transfers`]).
    #[error("transfer ({from}, {to}, {amount}) cannot succeed: {reason}")]
    InvalidTransfer {
        /// The sender.
        from: Account,
        /// The receiver.
        to: Account,
        /// The amount.
        amount: i64,
        /// What the bank would answer.
        reason: Rejection,
    },
    /// The amount is negative.
    #[error("negative amount {0:?}")]
    NegativeAmount(String),
    /// The amount is not a whole number.
    #[error("invalid amount {0:?}: expected a whole number")]
    BadAmount(String),
    /// The amount does not fit in an `i64`.
    #[error("amount {0:?} is too large")]
    AmountTooLarge(String),
    /// The live-node column is not a bracketed list.
    #[error("invalid live-node list {0:?}: expected e.g. \"[n1, n2, n3]\"")]
    BadNodeList(String),
    /// A live-node entry is not `nK` or `K`.
    #[error("invalid node {0:?}: expected e.g. \"n3\"")]
    BadNode(String),
    /// A node id is outside `1..=N`.
    #[error("node {node} is outside 1..={max}")]
    NodeOutOfRange {
        /// The id given.
        node: u64,
        /// `N`, the cluster size.
        max: u64,
    },
    /// A node is listed twice.
    #[error("node {0} is listed twice")]
    DuplicateNode(u64),
}

impl Scenario {
    /// Parses a script with [`ScenarioOptions::default`].
    ///
    /// ```
    /// use bank_app::{Item, Scenario, SAMPLE_SCENARIO};
    /// let s = Scenario::parse(SAMPLE_SCENARIO).unwrap();
    /// assert_eq!(s.sets.len(), 5);
    /// assert_eq!(s.sets[1].items[2], Item::LeaderFail);
    ///
    /// let err = Scenario::parse("Set Number,Transactions,Live Nodes\n,\"(A, B, 1)\",\n")
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "line 2: transaction before the first set");
    /// ```
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse_with(text, &ScenarioOptions::default())
    }

    /// Parses a script.
    pub fn parse_with(text: &str, options: &ScenarioOptions) -> Result<Scenario, ScenarioError> {
        if text.len() > options.max_bytes {
            return Err(ScenarioError::TooLarge {
                size: text.len(),
                max: options.max_bytes,
            });
        }
        Parser::new(options).run(text)
    }

    /// Parses a script given as bytes, which must be UTF-8.
    pub fn parse_bytes(bytes: &[u8], options: &ScenarioOptions) -> Result<Scenario, ScenarioError> {
        if bytes.len() > options.max_bytes {
            return Err(ScenarioError::TooLarge {
                size: bytes.len(),
                max: options.max_bytes,
            });
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Scenario::parse_with(text, options),
            Err(e) => {
                let valid = bytes.get(..e.valid_up_to()).unwrap_or_default();
                Err(ScenarioError::Line {
                    line: 1 + valid.iter().filter(|&&b| b == b'\n').count(),
                    kind: LineError::NotUtf8,
                })
            }
        }
    }

    /// Every transfer as a bank command, in script order.
    pub fn commands(&self) -> impl Iterator<Item = BankCommand> + '_ {
        self.sets.iter().flat_map(TxSet::commands)
    }

    /// Each client's transfers in the order it submits them, keyed by the sender.
    ///
    /// A client submits its own transfers one after another, so the cluster applies
    /// each client's transfers in this order. Transfers of different clients run
    /// concurrently, and their interleaving is chosen by the cluster.
    pub fn per_client(&self) -> BTreeMap<Account, Vec<BankCommand>> {
        let mut out: BTreeMap<Account, Vec<BankCommand>> = BTreeMap::new();
        for cmd in self.commands() {
            if let BankCommand::Transfer { from, .. } = cmd {
                out.entry(from).or_default().push(cmd);
            }
        }
        out
    }
}

/// Quotes at most [`MAX_QUOTED`] characters of `s`.
fn quoted(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_QUOTED).collect();
    if s.chars().nth(MAX_QUOTED).is_some() {
        out.push('…');
    }
    out
}

struct Parser<'o> {
    options: &'o ScenarioOptions,
    /// A bank of the options' accounts, whose [`Bank::check`] judges transfers.
    bank: Bank,
    seen_header: bool,
    sets: Vec<TxSet>,
}

impl<'o> Parser<'o> {
    fn new(options: &'o ScenarioOptions) -> Self {
        let accounts = options.accounts.iter().copied();
        Parser {
            options,
            // With a balance of 0 nothing can fail.
            bank: Bank::with_accounts(accounts, 0).unwrap_or_default(),
            seen_header: false,
            sets: Vec::new(),
        }
    }

    fn run(mut self, text: &str) -> Result<Scenario, ScenarioError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, raw) in text.split('\n').enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            self.line(line, raw)
                .map_err(|kind| ScenarioError::Line { line, kind })?;
        }
        if !self.seen_header {
            return Err(ScenarioError::Line {
                line: 1,
                kind: LineError::MissingHeader,
            });
        }
        Ok(Scenario { sets: self.sets })
    }

    fn line(&mut self, line: usize, raw: &str) -> Result<(), LineError> {
        if raw.trim().is_empty() {
            return Ok(());
        }
        if line > self.options.max_lines {
            return Err(LineError::TooManyLines {
                max: self.options.max_lines,
            });
        }
        if raw.len() > self.options.max_line_bytes {
            return Err(LineError::TooLong {
                len: raw.len(),
                max: self.options.max_line_bytes,
            });
        }
        let fields = split_fields(raw)?;
        if fields.iter().all(|f| f.is_empty()) {
            return Ok(());
        }
        if !self.seen_header {
            return self.header(raw, &fields);
        }
        self.row(&fields)
    }

    fn header(&mut self, raw: &str, fields: &[String]) -> Result<(), LineError> {
        let want: Vec<&str> = SCENARIO_HEADER.split(',').collect();
        let ok =
            fields.len() == want.len() && fields.iter().zip(&want).all(|(f, w)| same_words(f, w));
        if !ok {
            return Err(LineError::BadHeader(quoted(raw.trim())));
        }
        self.seen_header = true;
        Ok(())
    }

    fn row(&mut self, fields: &[String]) -> Result<(), LineError> {
        if !(2..=3).contains(&fields.len()) {
            return Err(LineError::WrongColumns(fields.len()));
        }
        let (set, tx) = (fields[0].as_str(), fields[1].as_str());
        let live = fields.get(2).map_or("", String::as_str);
        if !set.is_empty() {
            let number = parse_set_number(set)?;
            if let Some(prev) = self.sets.last() {
                if number <= prev.number {
                    return Err(LineError::SetNotIncreasing {
                        number,
                        previous: prev.number,
                    });
                }
            }
            if live.is_empty() {
                return Err(LineError::MissingLiveNodes);
            }
            let live = parse_live(live, self.options.nodes)?;
            let item = self.item(tx)?;
            self.sets.push(TxSet {
                number,
                live,
                items: item.into_iter().collect(),
            });
            return Ok(());
        }
        if !live.is_empty() {
            return Err(LineError::LiveNodesWithoutSet);
        }
        let item = self.item(tx)?;
        let current = self.sets.last_mut().ok_or(LineError::ItemBeforeSet)?;
        current.items.extend(item);
        Ok(())
    }
}

impl Parser<'_> {
    /// The transaction column, refusing a transfer that cannot succeed unless the
    /// options allow it.
    fn item(&self, tx: &str) -> Result<Option<Item>, LineError> {
        let item = parse_item(tx, &self.options.accounts)?;
        if let (false, Some(Item::Transfer { from, to, amount })) =
            (self.options.allow_invalid_transfers, item)
        {
            let command = BankCommand::Transfer { from, to, amount };
            if let Err(reason) = self.bank.check(&command) {
                return Err(LineError::InvalidTransfer {
                    from,
                    to,
                    amount,
                    reason,
                });
            }
        }
        Ok(item)
    }
}

/// Splits one line into trimmed fields. A field may be quoted (`"…"`, with `""` for a
/// quote) and may have spaces around the quotes; in an unquoted field, commas inside
/// `(…)` or `[…]` do not split.
fn split_fields(line: &str) -> Result<Vec<String>, LineError> {
    let bytes = line.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'"' {
            let mut field = String::new();
            i += 1;
            let mut start = i;
            loop {
                match bytes.get(i) {
                    None => return Err(LineError::UnterminatedQuote),
                    Some(b'"') if bytes.get(i + 1) == Some(&b'"') => {
                        field.push_str(&line[start..=i]);
                        i += 2;
                        start = i;
                    }
                    Some(b'"') => {
                        field.push_str(&line[start..i]);
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            fields.push(field.trim().to_owned());
            match bytes.get(i) {
                None => return Ok(fields),
                Some(b',') => i += 1,
                Some(_) => return Err(LineError::TextAfterQuote),
            }
        } else {
            let start = i;
            let mut depth = 0usize;
            while i < bytes.len() {
                match bytes[i] {
                    b'(' | b'[' => depth += 1,
                    b')' | b']' => depth = depth.saturating_sub(1),
                    b',' if depth == 0 => break,
                    _ => {}
                }
                i += 1;
            }
            fields.push(line[start..i].trim().to_owned());
            if i >= bytes.len() {
                return Ok(fields);
            }
            i += 1;
        }
    }
}

/// True when `a` and `b` have the same words, ignoring ASCII case and spacing.
fn same_words(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split_whitespace(), b.split_whitespace());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return true,
            (Some(p), Some(q)) if p.eq_ignore_ascii_case(q) => {}
            _ => return false,
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_set_number(s: &str) -> Result<u32, LineError> {
    if !is_digits(s) {
        return Err(LineError::BadSetNumber(quoted(s)));
    }
    s.parse().map_err(|_| LineError::BadSetNumber(quoted(s)))
}

fn parse_item(tx: &str, accounts: &BTreeSet<Account>) -> Result<Option<Item>, LineError> {
    if tx.is_empty() {
        return Ok(None);
    }
    if tx.eq_ignore_ascii_case("LF") {
        return Ok(Some(Item::LeaderFail));
    }
    let bad = || LineError::BadTransaction(quoted(tx));
    let inner = tx
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(bad)?;
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    let [from, to, amount] = parts[..] else {
        return Err(bad());
    };
    let account = |s: &str| -> Result<Account, LineError> {
        let a: Account = s.parse()?;
        if accounts.contains(&a) {
            Ok(a)
        } else {
            Err(LineError::UnknownAccount(a))
        }
    };
    let from = account(from)?;
    let to = account(to)?;
    let amount = parse_amount(amount)?;
    Ok(Some(Item::Transfer { from, to, amount }))
}

fn parse_amount(s: &str) -> Result<i64, LineError> {
    if let Some(rest) = s.strip_prefix('-') {
        if is_digits(rest.trim_start()) {
            return Err(LineError::NegativeAmount(quoted(s)));
        }
    }
    if !is_digits(s) {
        return Err(LineError::BadAmount(quoted(s)));
    }
    s.parse().map_err(|_| LineError::AmountTooLarge(quoted(s)))
}

fn parse_live(s: &str, max: u64) -> Result<Vec<NodeId>, LineError> {
    let inner = s
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| LineError::BadNodeList(quoted(s)))?
        .trim();
    let mut live = BTreeSet::new();
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    for entry in inner.split(',').map(str::trim) {
        let digits = entry.strip_prefix(['n', 'N']).unwrap_or(entry);
        if !is_digits(digits) {
            return Err(LineError::BadNode(quoted(entry)));
        }
        // All digits, so the only possible failure is overflow, which is out of range.
        let node: u64 = digits.parse().unwrap_or(u64::MAX);
        if node == 0 || node > max {
            return Err(LineError::NodeOutOfRange { node, max });
        }
        if !live.insert(node) {
            return Err(LineError::DuplicateNode(node));
        }
    }
    Ok(live.into_iter().collect())
}

impl fmt::Display for Item {
    /// `(A, B, 2)` or `LF`, as in a script.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Transfer { from, to, amount } => write!(f, "({from}, {to}, {amount})"),
            Item::LeaderFail => f.write_str("LF"),
        }
    }
}
