//! `bank transfer`: submit one transfer.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bank_app::{Account, Bank, BankCommand, BankOutput, ClusterConfig};
use serde_json::json;
use tokio::time::Instant;

use crate::errors::usage;
use crate::options::{one_shot_client, parse_secs, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// Exit code of `bank transfer` when the bank rejected the transfer.
const EXIT_REJECTED: u8 = 3;

/// Options of `bank transfer`.
#[derive(clap::Args, Debug)]
pub(crate) struct TransferArgs {
    /// The logical client submitting the transfer (an account, A-J; usually the
    /// sender).
    #[arg(long, value_name = "C")]
    pub(crate) client: Account,
    /// The account debited.
    pub(crate) from: Account,
    /// The account credited.
    pub(crate) to: Account,
    /// The amount.
    #[arg(allow_negative_numbers = true)]
    pub(crate) amount: i64,
    /// Give up after this many seconds (the transfer may still execute later).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    client_name: Account,
    command: BankCommand,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Refused here rather than by the bank, two consensus rounds later (it would be).
    let bank = Bank::new();
    if bank.balance(client_name).is_none() {
        return Err(usage(format!(
            "unknown client {client_name}: the clients are named after the accounts {}",
            account_range(&bank)
        )));
    }
    if let Err(reason) = bank.check(&command) {
        return Err(usage(format!(
            "transfer {} cannot succeed: {reason} (not submitted)",
            command_text(&command)
        )));
    }
    let mut client = one_shot_client(config, timeout).await?;
    let started = Instant::now();
    let text = command_text(&command);
    let output = client
        .execute(&command)
        .await
        .with_context(|| format!("transfer {text} by client {client_name} did not complete"))?;
    let elapsed = started.elapsed();
    let leader = client.leader();
    // The session the cluster assigned (the slot of the registration).
    let session = client.session();
    if json {
        let (outcome, detail) = match &output {
            BankOutput::Rejected(r) => ("rejected", r.to_string()),
            other => ("moved", other.to_string()),
        };
        let BankCommand::Transfer { from, to, amount } = command else {
            bail!("not a transfer");
        };
        stdout_line(&json!({
            "client": client_name,
            "session": session,
            "from": from,
            "to": to,
            "amount": amount,
            "outcome": outcome,
            "detail": detail,
            "output": output,
            "leader": leader,
            "latency_ms": elapsed.as_secs_f64() * 1000.0,
        }))?;
    } else {
        let via = leader
            .map(|l| format!(" via leader n{l}"))
            .unwrap_or_default();
        let session = session
            .map(|s| format!(" (session {s})"))
            .unwrap_or_default();
        stdout_text(&format!(
            "{text} by client {client_name}{session}: {output} [committed{via} in {} ms]\n",
            elapsed.as_millis()
        ))?;
    }
    Ok(if output.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    })
}

/// `A-J`: the bank's first and last accounts.
fn account_range(bank: &Bank) -> String {
    let accounts = bank.balances();
    match (accounts.keys().next(), accounts.keys().last()) {
        (Some(first), Some(last)) => format!("{first}-{last}"),
        _ => "(none)".into(),
    }
}

fn command_text(command: &BankCommand) -> String {
    match command {
        BankCommand::Transfer { from, to, amount } => format!("{from}->{to} {amount}"),
        BankCommand::Balance { account } => format!("balance {account}"),
    }
}
