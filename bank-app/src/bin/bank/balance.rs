//! `bank balance`: read one account's balance without a log round.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bank_app::{Account, Bank, BankCommand, BankOutput, ClusterConfig};
use serde_json::json;
use tokio::time::Instant;

use crate::errors::usage;
use crate::options::{one_shot_client, parse_secs, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// Options of `bank balance`.
#[derive(clap::Args, Debug)]
pub(crate) struct BalanceArgs {
    /// The account to read (A-J).
    pub(crate) account: Account,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    account: Account,
    timeout: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if Bank::new().balance(account).is_none() {
        return Err(usage(format!("unknown account {account}")));
    }
    let mut client = one_shot_client(config, timeout).await?;
    let started = Instant::now();
    let output = client
        .read(&BankCommand::Balance { account })
        .await
        .with_context(|| format!("reading the balance of {account} did not complete"))?;
    let elapsed = started.elapsed();
    let BankOutput::Balance { balance, .. } = output else {
        anyhow::bail!("the cluster answered a balance read with {output}");
    };
    let leader = client.leader();
    if json {
        stdout_line(&json!({
            "account": account,
            "balance": balance,
            "leader": leader,
            "latency_ms": elapsed.as_secs_f64() * 1000.0,
        }))?;
    } else {
        let via = leader
            .map(|l| format!(" via leader n{l}"))
            .unwrap_or_default();
        stdout_text(&format!(
            "{account}: {balance} [read{via} in {} ms, no log round]\n",
            elapsed.as_millis()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
