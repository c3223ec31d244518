//! `bank leader transfer`: hand leadership over to a node the operator names.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use bank_app::{gather_health, health_leader, ClusterConfig, RemoteCluster, RemoteError};
use paxos_core::NodeId;
use paxos_transport_tcp::ServerError;
use serde_json::json;
use tokio::time::Instant;

use crate::errors::usage;
use crate::options::{parse_secs, remote, JsonFlag};
use crate::output::{none_answered, stdout_line, stdout_text};

/// How often the target's status is read while waiting for it to lead.
const POLL: Duration = Duration::from_millis(10);
/// How long to wait for the transfer asked before asking the leader again (a transfer
/// not done within an election timeout is abandoned; the target may have been behind).
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// `bank leader ...`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum LeaderCommand {
    /// Hand leadership over to node N without waiting for an election timeout.
    ///
    /// Finds the current leader (the replica that says it leads, at the highest
    /// ballot), asks it to hand over to N, and waits until N reports itself leader.
    /// The leader stops proposing, waits until N has accepted every proposal in flight,
    /// then tells N to run for leader at once; clients see a pause of about one round
    /// trip plus a write. Prints the old leader, the new one and how long it took.
    ///
    /// Needs the nodes to run with `bank node --admin-calls` (they refuse otherwise).
    /// Fails (exit code 1) when N does not lead within --timeout.
    Transfer(TransferLeaderArgs),
}

/// Options of `bank leader transfer`.
#[derive(clap::Args, Debug)]
pub(crate) struct TransferLeaderArgs {
    /// The node to hand leadership to.
    #[arg(long, value_name = "N")]
    pub(crate) to: NodeId,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    command: LeaderCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        LeaderCommand::Transfer(args) => transfer(config, args).await,
    }
}

async fn transfer(config: &ClusterConfig, args: TransferLeaderArgs) -> anyhow::Result<ExitCode> {
    let TransferLeaderArgs {
        to,
        timeout,
        output,
    } = args;
    if config.node(to).is_none() {
        let ids: Vec<String> = config.ids().iter().map(|n| format!("n{n}")).collect();
        return Err(usage(format!(
            "--to {to}: not a node of the cluster (its nodes are {})",
            ids.join(", ")
        )));
    }
    let cluster = remote(config)?;
    let deadline = Instant::now() + timeout;
    let old = wait_for_leader(&cluster, deadline, timeout).await?;
    if old == to {
        report(output.json, old, to, Duration::ZERO, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    ask(&cluster, old, to).await?;
    let mut asked = Instant::now();
    loop {
        if let Ok(status) = cluster.node(to)?.status().await {
            if status.is_available_leader() {
                report(output.json, old, to, started.elapsed(), false)?;
                return Ok(ExitCode::SUCCESS);
            }
        }
        if Instant::now() >= deadline {
            let now = current_leader(&cluster).await;
            let now = now.map_or_else(|| "none".to_string(), |l| format!("n{l}"));
            bail!(
                "n{to} did not take over within {} (leader now: {now}); the transfer was \
                 abandoned or n{to} is too far behind: check `bank health`",
                secs(timeout)
            );
        }
        if asked.elapsed() >= ASK_AGAIN {
            // The transfer may have been abandoned (the target was catching up), or
            // leadership moved meanwhile: ask whoever leads now.
            if let Some(leader) = current_leader(&cluster).await.filter(|&l| l != to) {
                if let Err(e) = ask(&cluster, leader, to).await {
                    tracing::debug!(error = %e, "asking again failed");
                }
            }
            asked = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The replica that says it leads, at the highest ballot, if any answers so.
async fn current_leader(cluster: &RemoteCluster) -> Option<NodeId> {
    let answers = gather_health(cluster).await;
    health_leader(&answers).map(|s| s.replica.id)
}

/// The current leader, waited for until `deadline`.
async fn wait_for_leader(
    cluster: &RemoteCluster,
    deadline: Instant,
    timeout: Duration,
) -> anyhow::Result<NodeId> {
    loop {
        let answers = gather_health(cluster).await;
        none_answered(&answers)?;
        if let Some(leader) = health_leader(&answers) {
            return Ok(leader.replica.id);
        }
        if Instant::now() >= deadline {
            bail!(
                "no replica leads (none did within {}): nothing to transfer",
                secs(timeout)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks `leader` to hand over to `to`, with a hint for the refusals an operator can fix.
async fn ask(cluster: &RemoteCluster, leader: NodeId, to: NodeId) -> anyhow::Result<()> {
    match cluster.node(leader)?.transfer_leadership(to).await {
        Ok(()) => Ok(()),
        Err(RemoteError::Server {
            source: ServerError::Forbidden,
            ..
        }) => Err(anyhow!(
            "n{leader} refused the leader transfer: start the nodes with `bank node --admin-calls` to allow it"
        )),
        Err(e) => Err(anyhow!(e).context(format!("cannot ask n{leader} to hand over to n{to}"))),
    }
}

fn report(
    json: bool,
    from: NodeId,
    to: NodeId,
    took: Duration,
    already: bool,
) -> anyhow::Result<()> {
    let ms = took.as_secs_f64() * 1000.0;
    if json {
        stdout_line(&json!({
            "old_leader": from,
            "new_leader": to,
            "elapsed_ms": (ms * 10.0).round() / 10.0,
            "already_leader": already,
        }))
    } else if already {
        stdout_text(&format!("n{to} leads already: nothing to do\n"))
    } else {
        stdout_text(&format!(
            "leadership handed over: n{from} -> n{to} in {ms:.1} ms\n"
        ))
    }
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}
