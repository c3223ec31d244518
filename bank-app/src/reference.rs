//! A reference executor: what a script does when its transfers run one at a time.

use crate::bank::{Bank, BankCommand, BankOutput};
use crate::scenario::{Item, Scenario};

/// One transfer of a reference run and what it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The number of the set the transfer belongs to.
    pub set: u32,
    /// The transfer.
    pub command: BankCommand,
    /// What the bank answered.
    pub output: BankOutput,
}

/// The result of [`expected_balances`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceRun {
    /// The bank after every transfer.
    pub bank: Bank,
    /// Each transfer and its output, in the order they were applied.
    pub outcomes: Vec<Outcome>,
}

impl ReferenceRun {
    /// The transfers that were rejected.
    pub fn rejected(&self) -> impl Iterator<Item = &Outcome> {
        self.outcomes.iter().filter(|o| !o.output.is_ok())
    }
}

/// Applies the script's transfers to a copy of `initial`, one at a time in script order
/// (sets in order, rows in order; `LF` rows and live-node lists change nothing here).
///
/// This is the outcome of one valid schedule, the one a single client submitting every
/// transfer in turn would get. The cluster runs each account's client concurrently with
/// the others, and a set without a majority leaves its transfers pending until a later
/// set, so a real run may interleave different clients' transfers differently and end
/// with other balances (a transfer rejected here may succeed there, and the reverse).
/// What every correct run shares with this one: the [total](Bank::total) is conserved,
/// no balance goes negative, each client's transfers apply in its own order
/// ([`Scenario::per_client`]), and all replicas agree. To check a real run exactly,
/// take the order its replicas executed and [`replay`] it.
///
/// ```
/// use bank_app::{expected_balances, Account, Bank, Scenario, SAMPLE_SCENARIO};
/// let scenario = Scenario::parse(SAMPLE_SCENARIO).unwrap();
/// let run = expected_balances(&scenario, &Bank::new());
/// assert_eq!(run.bank.total(), 100);
/// // (I, A, 20) is rejected in every schedule.
/// assert_eq!(run.rejected().count(), 1);
/// ```
pub fn expected_balances(scenario: &Scenario, initial: &Bank) -> ReferenceRun {
    let mut bank = initial.clone();
    let mut outcomes = Vec::new();
    for set in &scenario.sets {
        for item in &set.items {
            if let Some(command) = Item::command(item) {
                let output = bank.execute(&command);
                outcomes.push(Outcome {
                    set: set.number,
                    command,
                    output,
                });
            }
        }
    }
    ReferenceRun { bank, outcomes }
}

/// Applies `commands` in the given order to a copy of `initial`, returning the final
/// bank and each command's output: the reference for a run whose execution order is
/// known, such as one replica's executed log.
pub fn replay(
    initial: &Bank,
    commands: impl IntoIterator<Item = BankCommand>,
) -> (Bank, Vec<BankOutput>) {
    let mut bank = initial.clone();
    let outputs = commands.into_iter().map(|c| bank.execute(&c)).collect();
    (bank, outputs)
}
