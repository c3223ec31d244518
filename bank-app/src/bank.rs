//! The bank ledger state machine.

use std::collections::BTreeMap;
use std::fmt;

use paxos_core::{RestoreError, StateMachine};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::account::Account;

/// Each account's balance in a [`Bank::new`] bank.
pub const DEFAULT_INITIAL_BALANCE: i64 = 10;

/// The first byte of every [`Bank`] snapshot: the snapshot format's version.
const SNAPSHOT_VERSION: u8 = 1;

/// A command to the bank, as submitted by a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankCommand {
    /// Move `amount` from `from` to `to`, or change nothing and say why not.
    Transfer {
        /// The account debited.
        from: Account,
        /// The account credited.
        to: Account,
        /// How much to move; must be positive.
        amount: i64,
    },
    /// Read one account's balance. Submitted as a command it goes through the log; sent
    /// as a [read](paxos_core::Request::read) (`Client::read`, `bank balance`) it does
    /// not, and is just as linearizable.
    Balance {
        /// The account to read.
        account: Account,
    },
}

/// What applying a [`BankCommand`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankOutput {
    /// The transfer happened.
    Transferred {
        /// The account debited.
        from: Account,
        /// The account credited.
        to: Account,
        /// The amount moved.
        amount: i64,
        /// `from`'s balance afterwards.
        from_balance: i64,
        /// `to`'s balance afterwards.
        to_balance: i64,
    },
    /// The answer to a [`BankCommand::Balance`] query.
    Balance {
        /// The account read.
        account: Account,
        /// Its balance.
        balance: i64,
    },
    /// The command was rejected and changed nothing.
    Rejected(Rejection),
}

impl BankOutput {
    /// True unless the command was rejected.
    pub fn is_ok(&self) -> bool {
        !matches!(self, BankOutput::Rejected(_))
    }

    /// The rejection, if the command was rejected.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            BankOutput::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for BankOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankOutput::Transferred {
                from,
                to,
                amount,
                from_balance,
                to_balance,
            } => write!(
                f,
                "moved {amount} from {from} to {to} ({from}={from_balance}, {to}={to_balance})"
            ),
            BankOutput::Balance { account, balance } => write!(f, "{account}={balance}"),
            BankOutput::Rejected(r) => write!(f, "rejected: {r}"),
        }
    }
}

/// Why a command was rejected. Checked in the order of the variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Error)]
pub enum Rejection {
    /// The amount is zero or negative.
    #[error("amount {0} is not positive")]
    NonPositiveAmount(i64),
    /// Sender and receiver are the same account.
    #[error("sender and receiver are both {0}")]
    SameAccount(Account),
    /// The bank has no such account.
    #[error("unknown account {0}")]
    UnknownAccount(Account),
    /// The sender's balance is below the amount.
    #[error("insufficient funds: {account} has {balance}, needs {amount}")]
    InsufficientFunds {
        /// The sender.
        account: Account,
        /// The sender's balance.
        balance: i64,
        /// The amount asked for.
        amount: i64,
    },
    /// The receiver's balance would exceed `i64::MAX`.
    #[error("balance of {0} would overflow")]
    Overflow(Account),
}

/// A bank that cannot be built as asked.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum BankError {
    /// Balances may not be negative.
    #[error("negative balance {balance} for account {account}")]
    NegativeBalance {
        /// The account.
        account: Account,
        /// Its balance.
        balance: i64,
    },
}

/// A ledger of account balances, replicated as a [`StateMachine`].
///
/// Balances are never negative: a transfer either moves the whole amount or is
/// [rejected](Rejection) and changes nothing. Arithmetic is checked, so no command
/// panics. State lives in a `BTreeMap`, so iteration and snapshots are deterministic.
///
/// ```
/// use bank_app::{Account, Bank, BankCommand, BankOutput, Rejection};
/// use paxos_core::StateMachine;
///
/// let a: Account = "A".parse().unwrap();
/// let b: Account = "B".parse().unwrap();
/// let mut bank = Bank::new();
/// let out = bank.apply(BankCommand::Transfer { from: a, to: b, amount: 4 });
/// assert!(out.is_ok());
/// assert_eq!(bank.balance(a), Some(6));
/// let out = bank.apply(BankCommand::Transfer { from: a, to: b, amount: 7 });
/// assert!(matches!(out, BankOutput::Rejected(Rejection::InsufficientFunds { .. })));
/// assert_eq!(bank.total(), 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bank {
    balances: BTreeMap<Account, i64>,
}

impl Default for Bank {
    fn default() -> Self {
        Bank::new()
    }
}

impl Bank {
    /// Accounts `A` to `J` with [`DEFAULT_INITIAL_BALANCE`] each.
    pub fn new() -> Bank {
        Bank {
            balances: Account::default_set()
                .map(|a| (a, DEFAULT_INITIAL_BALANCE))
                .collect(),
        }
    }

    /// The given accounts (duplicates collapse), each holding `initial`.
    pub fn with_accounts(
        accounts: impl IntoIterator<Item = Account>,
        initial: i64,
    ) -> Result<Bank, BankError> {
        Bank::from_balances(accounts.into_iter().map(|a| (a, initial)).collect())
    }

    /// A bank holding exactly these balances, which must not be negative.
    pub fn from_balances(balances: BTreeMap<Account, i64>) -> Result<Bank, BankError> {
        if let Some((&account, &balance)) = balances.iter().find(|(_, &b)| b < 0) {
            return Err(BankError::NegativeBalance { account, balance });
        }
        Ok(Bank { balances })
    }

    /// Every account and its balance, in account order.
    pub fn balances(&self) -> &BTreeMap<Account, i64> {
        &self.balances
    }

    /// One account's balance, or `None` if the bank has no such account.
    pub fn balance(&self, account: Account) -> Option<i64> {
        self.balances.get(&account).copied()
    }

    /// The sum of all balances. An `i128`, so it cannot overflow; transfers conserve it.
    pub fn total(&self) -> i128 {
        self.balances.values().map(|&b| i128::from(b)).sum()
    }

    /// The checks that do not depend on balances: a transfer's amount must be
    /// positive, its sender and receiver different and both accounts of this bank; a
    /// balance query must name an account of this bank. A command failing them is
    /// rejected by [`execute`](Bank::execute) whatever the balances, with the same
    /// [`Rejection`], so a client can refuse it before submitting it (what `bank
    /// transfer` and `bank client` do, with a fresh [`Bank::new`], whose accounts every
    /// replica has); the state machine still checks it.
    ///
    /// ```
    /// use bank_app::{Account, Bank, BankCommand, Rejection};
    /// let a = Account::A;
    /// let bank = Bank::new();
    /// let same = BankCommand::Transfer { from: a, to: a, amount: 1 };
    /// assert_eq!(bank.check(&same), Err(Rejection::SameAccount(a)));
    /// let z = Account::new('Z').unwrap();
    /// let unknown = BankCommand::Transfer { from: a, to: z, amount: 1 };
    /// assert_eq!(bank.check(&unknown), Err(Rejection::UnknownAccount(z)));
    /// // Funds are not checked: they depend on what executes before.
    /// assert!(bank.check(&BankCommand::Transfer { from: a, to: Account::J, amount: 99 }).is_ok());
    /// ```
    pub fn check(&self, command: &BankCommand) -> Result<(), Rejection> {
        match *command {
            BankCommand::Transfer { from, to, amount } => {
                if amount <= 0 {
                    return Err(Rejection::NonPositiveAmount(amount));
                }
                if from == to {
                    return Err(Rejection::SameAccount(from));
                }
                for account in [from, to] {
                    if !self.balances.contains_key(&account) {
                        return Err(Rejection::UnknownAccount(account));
                    }
                }
                Ok(())
            }
            BankCommand::Balance { account } => {
                if self.balances.contains_key(&account) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownAccount(account))
                }
            }
        }
    }

    /// Applies `command` (the same as [`StateMachine::apply`], by reference).
    pub fn execute(&mut self, command: &BankCommand) -> BankOutput {
        match *command {
            BankCommand::Transfer { from, to, amount } => match self.transfer(from, to, amount) {
                Ok((from_balance, to_balance)) => BankOutput::Transferred {
                    from,
                    to,
                    amount,
                    from_balance,
                    to_balance,
                },
                Err(r) => BankOutput::Rejected(r),
            },
            BankCommand::Balance { account } => match self.balance(account) {
                Some(balance) => BankOutput::Balance { account, balance },
                None => BankOutput::Rejected(Rejection::UnknownAccount(account)),
            },
        }
    }

    /// Moves `amount` from `from` to `to` and returns both new balances, or changes
    /// nothing and says why.
    pub fn transfer(
        &mut self,
        from: Account,
        to: Account,
        amount: i64,
    ) -> Result<(i64, i64), Rejection> {
        // The checks a client can make before submitting, then the balances.
        self.check(&BankCommand::Transfer { from, to, amount })?;
        let from_balance = self.balance(from).ok_or(Rejection::UnknownAccount(from))?;
        let to_balance = self.balance(to).ok_or(Rejection::UnknownAccount(to))?;
        if from_balance < amount {
            return Err(Rejection::InsufficientFunds {
                account: from,
                balance: from_balance,
                amount,
            });
        }
        let new_to = to_balance
            .checked_add(amount)
            .ok_or(Rejection::Overflow(to))?;
        // Cannot fail: 0 < amount <= from_balance.
        let new_from = from_balance
            .checked_sub(amount)
            .ok_or(Rejection::Overflow(from))?;
        self.balances.insert(from, new_from);
        self.balances.insert(to, new_to);
        Ok((new_from, new_to))
    }
}

impl fmt::Display for Bank {
    /// `A=10 B=10 …`, in account order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (account, balance)) in self.balances.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{account}={balance}")?;
        }
        Ok(())
    }
}

/// The snapshot body: balances as a list, checked on restore to be strictly ascending.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    balances: Vec<(Account, i64)>,
}

impl StateMachine for Bank {
    type Command = BankCommand;
    type Output = BankOutput;

    fn apply(&mut self, command: BankCommand) -> BankOutput {
        self.execute(&command)
    }

    /// A [`BankCommand::Balance`] can be answered as a read, without the log; a
    /// transfer cannot.
    fn query(&self, command: &BankCommand) -> Option<BankOutput> {
        match *command {
            BankCommand::Balance { account } => Some(match self.balance(account) {
                Some(balance) => BankOutput::Balance { account, balance },
                None => return None,
            }),
            BankCommand::Transfer { .. } => None,
        }
    }

    /// A version byte followed by the postcard-encoded balances.
    fn snapshot(&self) -> Vec<u8> {
        let body = SnapshotBody {
            balances: self.balances.iter().map(|(&a, &b)| (a, b)).collect(),
        };
        let mut out = vec![SNAPSHOT_VERSION];
        // Serializing plain chars and integers into a Vec cannot fail.
        out.extend(postcard::to_stdvec(&body).unwrap_or_default());
        out
    }

    /// Rejects, leaving the bank unchanged, anything [`snapshot`](Bank::snapshot) would
    /// not produce: another version, bad encoding, trailing bytes, accounts out of order
    /// or repeated, negative balances.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let (&version, rest) = snapshot
            .split_first()
            .ok_or_else(|| RestoreError::new("empty bank snapshot"))?;
        if version != SNAPSHOT_VERSION {
            return Err(RestoreError::new(format!(
                "unsupported bank snapshot version {version}"
            )));
        }
        let (body, trailing): (SnapshotBody, _) = postcard::take_from_bytes(rest)
            .map_err(|e| RestoreError::new(format!("bad bank snapshot: {e}")))?;
        if !trailing.is_empty() {
            return Err(RestoreError::new(format!(
                "bad bank snapshot: {} trailing bytes",
                trailing.len()
            )));
        }
        if body.balances.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(RestoreError::new(
                "bad bank snapshot: accounts not strictly ascending",
            ));
        }
        let bank = Bank::from_balances(body.balances.into_iter().collect())
            .map_err(|e| RestoreError::new(format!("bad bank snapshot: {e}")))?;
        *self = bank;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acc(s: &str) -> Account {
        s.parse().unwrap()
    }

    fn transfer(from: &str, to: &str, amount: i64) -> BankCommand {
        BankCommand::Transfer {
            from: acc(from),
            to: acc(to),
            amount,
        }
    }

    #[test]
    fn default_bank() {
        let bank = Bank::new();
        assert_eq!(bank.balances().len(), 10);
        assert!(bank.balances().values().all(|&b| b == 10));
        assert_eq!(bank.total(), 100);
        assert_eq!(bank.balance(acc("K")), None);
        assert_eq!(Bank::default(), bank);
        assert_eq!(
            bank.to_string(),
            "A=10 B=10 C=10 D=10 E=10 F=10 G=10 H=10 I=10 J=10"
        );
    }

    #[test]
    fn transfer_moves_money() {
        let mut bank = Bank::new();
        let out = bank.apply(transfer("A", "B", 10));
        assert_eq!(
            out,
            BankOutput::Transferred {
                from: acc("A"),
                to: acc("B"),
                amount: 10,
                from_balance: 0,
                to_balance: 20
            }
        );
        assert!(out.is_ok());
        assert_eq!(out.rejection(), None);
        assert_eq!(bank.balance(acc("A")), Some(0));
        assert_eq!(bank.balance(acc("B")), Some(20));
        assert_eq!(bank.total(), 100);
    }

    fn assert_rejected(bank: &mut Bank, cmd: BankCommand, want: Rejection) {
        let before = bank.clone();
        let out = bank.apply(cmd);
        assert_eq!(out, BankOutput::Rejected(want));
        assert!(!out.is_ok());
        assert_eq!(out.rejection(), Some(&want));
        assert_eq!(*bank, before, "a rejected command changed the bank");
    }

    #[test]
    fn rejects_insufficient_funds() {
        let mut bank = Bank::new();
        let want = Rejection::InsufficientFunds {
            account: acc("I"),
            balance: 10,
            amount: 20,
        };
        assert_rejected(&mut bank, transfer("I", "A", 20), want);
        assert_eq!(want.to_string(), "insufficient funds: I has 10, needs 20");
    }

    #[test]
    fn rejects_unknown_accounts() {
        let mut bank = Bank::new();
        assert_rejected(
            &mut bank,
            transfer("K", "A", 1),
            Rejection::UnknownAccount(acc("K")),
        );
        assert_rejected(
            &mut bank,
            transfer("A", "Z", 1),
            Rejection::UnknownAccount(acc("Z")),
        );
        assert_rejected(
            &mut bank,
            BankCommand::Balance { account: acc("Q") },
            Rejection::UnknownAccount(acc("Q")),
        );
        assert_eq!(
            Rejection::UnknownAccount(acc("K")).to_string(),
            "unknown account K"
        );
    }

    #[test]
    fn rejects_non_positive_amounts() {
        let mut bank = Bank::new();
        for amount in [0, -1, i64::MIN] {
            assert_rejected(
                &mut bank,
                transfer("A", "B", amount),
                Rejection::NonPositiveAmount(amount),
            );
        }
        assert_eq!(
            Rejection::NonPositiveAmount(-3).to_string(),
            "amount -3 is not positive"
        );
    }

    #[test]
    fn rejects_same_account() {
        let mut bank = Bank::new();
        assert_rejected(
            &mut bank,
            transfer("C", "C", 1),
            Rejection::SameAccount(acc("C")),
        );
        assert_eq!(
            Rejection::SameAccount(acc("C")).to_string(),
            "sender and receiver are both C"
        );
    }

    #[test]
    fn rejects_overflow() {
        let mut balances = BTreeMap::new();
        balances.insert(acc("A"), 5);
        balances.insert(acc("B"), i64::MAX - 2);
        let mut bank = Bank::from_balances(balances).unwrap();
        assert_rejected(
            &mut bank,
            transfer("A", "B", 3),
            Rejection::Overflow(acc("B")),
        );
        assert!(bank.apply(transfer("A", "B", 2)).is_ok());
        assert_eq!(bank.balance(acc("B")), Some(i64::MAX));
        assert_eq!(bank.total(), i128::from(i64::MAX) + 3);
        assert_eq!(
            Rejection::Overflow(acc("B")).to_string(),
            "balance of B would overflow"
        );
    }

    #[test]
    fn balance_query() {
        let mut bank = Bank::new();
        assert_eq!(
            bank.apply(BankCommand::Balance { account: acc("e") }),
            BankOutput::Balance {
                account: acc("E"),
                balance: 10
            }
        );
    }

    #[test]
    fn custom_accounts() {
        let bank = Bank::with_accounts([acc("X"), acc("Y"), acc("X")], 7).unwrap();
        assert_eq!(bank.balances().len(), 2);
        assert_eq!(bank.total(), 14);
        assert_eq!(
            Bank::with_accounts([acc("X")], -1),
            Err(BankError::NegativeBalance {
                account: acc("X"),
                balance: -1
            })
        );
    }

    #[test]
    fn snapshot_round_trip() {
        let mut bank = Bank::new();
        bank.apply(transfer("A", "B", 3));
        bank.apply(transfer("J", "C", 9));
        let snap = bank.snapshot();
        let mut other = Bank::with_accounts([acc("Z")], 1).unwrap();
        other.restore(&snap).unwrap();
        assert_eq!(other, bank);
        assert_eq!(other.snapshot(), snap);
    }

    #[test]
    fn restore_rejects_garbage() {
        let good = Bank::new().snapshot();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut version = good.clone();
        version[0] = 9;
        let negative = {
            let body = SnapshotBody {
                balances: vec![(acc("A"), -1)],
            };
            let mut v = vec![SNAPSHOT_VERSION];
            v.extend(postcard::to_stdvec(&body).unwrap());
            v
        };
        let unordered = {
            let body = SnapshotBody {
                balances: vec![(acc("B"), 1), (acc("A"), 1)],
            };
            let mut v = vec![SNAPSHOT_VERSION];
            v.extend(postcard::to_stdvec(&body).unwrap());
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("version", version),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("trailing", trailing),
            (
                "huge length",
                vec![SNAPSHOT_VERSION, 0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            ("bad account", vec![SNAPSHOT_VERSION, 1, b'1', 2]),
            ("negative", negative),
            ("unordered", unordered),
        ];
        for (name, bytes) in cases {
            let mut bank = Bank::new();
            bank.apply(transfer("A", "B", 1));
            let before = bank.clone();
            assert!(bank.restore(&bytes).is_err(), "{name} restored");
            assert_eq!(bank, before, "{name} changed the bank");
        }
    }

    fn arb_command() -> impl Strategy<Value = BankCommand> {
        let account = (b'A'..=b'L').prop_map(|c| Account::new(char::from(c)).unwrap());
        prop_oneof![
            (account.clone(), account.clone(), -3i64..15)
                .prop_map(|(from, to, amount)| { BankCommand::Transfer { from, to, amount } }),
            (account.clone(), account, any::<i64>())
                .prop_map(|(from, to, amount)| BankCommand::Transfer { from, to, amount }),
            (b'A'..=b'L').prop_map(|c| BankCommand::Balance {
                account: Account::new(char::from(c)).unwrap()
            }),
        ]
    }

    proptest! {
        #[test]
        fn commands_conserve_money(cmds in proptest::collection::vec(arb_command(), 0..64)) {
            let mut bank = Bank::new();
            for cmd in cmds {
                let before = bank.clone();
                let out = bank.apply(cmd);
                prop_assert_eq!(bank.total(), 100);
                prop_assert!(bank.balances().values().all(|&b| b >= 0));
                if !out.is_ok() {
                    prop_assert_eq!(&bank, &before);
                }
            }
            let mut copy = Bank::with_accounts([], 0).unwrap();
            copy.restore(&bank.snapshot()).unwrap();
            prop_assert_eq!(copy, bank);
        }

        #[test]
        fn restore_never_panics(
            versioned in any::<bool>(),
            mut bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            if versioned {
                bytes.insert(0, SNAPSHOT_VERSION);
            }
            let mut bank = Bank::new();
            let _ = bank.restore(&bytes);
            prop_assert!(bank.balances().values().all(|&b| b >= 0));
        }
    }
}
