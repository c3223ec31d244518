//! `bank balance`: read one account's balance without a log round.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bank_app::{Account, Bank, BankCommand, BankOutput, ClusterConfig};
use serde_json::json;
use tokio::time::Instant;

use crate::errors::usage;
use crate::options::{client_of, parse_secs, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// Options of `bank balance`.
#[derive(clap::Args, Debug)]
pub(crate) struct BalanceArgs {
    /// The account to read (A-J).
    pub(crate) account: Account,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) timeout: Duration,
    /// A stale read: the first replica that can (or the one --node names) answers
    /// from its own state, with no message to the others. Possibly older than writes
    /// that already completed; answered even by a replica cut off from the majority.
    #[arg(long)]
    pub(crate) stale: bool,
    /// With --stale: the replica to ask first (a node or a learner of the cluster file).
    #[arg(long, value_name = "ID", requires = "stale")]
    pub(crate) node: Option<paxos_core::NodeId>,
    /// With --stale: the least executed slot the answer may reflect (the `executed` an
    /// earlier stale read printed), so that a series of reads never goes back in time.
    #[arg(long, value_name = "SLOT", requires = "stale", default_value_t = 0)]
    pub(crate) floor: u64,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(config: &ClusterConfig, args: BalanceArgs) -> anyhow::Result<ExitCode> {
    let BalanceArgs {
        account,
        timeout,
        stale,
        node,
        floor,
        output,
    } = args;
    let json = output.json;
    if Bank::new().balance(account).is_none() {
        return Err(usage(format!("unknown account {account}")));
    }
    if let Some(n) = node {
        if config.node(n).is_none() {
            return Err(usage(format!("node {n} is not in the cluster file")));
        }
    }
    let mut client = client_of(config, timeout, stale).await?;
    client.set_stale_floor(floor);
    let started = Instant::now();
    let command = BankCommand::Balance { account };
    let output = match (stale, node) {
        (false, _) => client.read(&command).await,
        (true, None) => client.read_stale(&command).await,
        (true, Some(n)) => client.read_stale_at(n, &command).await,
    }
    .with_context(|| format!("reading the balance of {account} did not complete"))?;
    let elapsed = started.elapsed();
    let BankOutput::Balance { balance, .. } = output else {
        anyhow::bail!("the cluster answered a balance read with {output}");
    };
    if stale {
        let executed = client.stale_floor();
        if json {
            stdout_line(&json!({
                "account": account,
                "balance": balance,
                "stale": true,
                "executed": executed,
                "latency_ms": elapsed.as_secs_f64() * 1000.0,
            }))?;
        } else {
            stdout_text(&format!(
                "{account}: {balance} [stale read in {} ms: the state after slots below \
                 {executed}; writes after them may be missing]\n",
                elapsed.as_millis()
            ))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
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
