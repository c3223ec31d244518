//! `bank members`: the cluster's configuration, and changing it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use bank_app::{
    gather_health, health_leader, ClusterConfig, NodeConfig, RemoteCluster, RemoteError,
};
use paxos_core::{Member, Membership, NodeId};
use paxos_transport_tcp::ServerError;
use serde_json::json;
use tokio::time::Instant;

use crate::errors::usage;
use crate::options::{parse_secs, remote, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// How often the nodes are polled while waiting for the change to take effect.
const POLL: Duration = Duration::from_millis(20);
/// How long to wait before asking the leader again (a leader deposed before the
/// stop-sign was chosen may have lost it).
const ASK_AGAIN: Duration = Duration::from_secs(1);

/// Options of `bank members`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct MembersArgs {
    #[command(subcommand)]
    pub(crate) change: Option<MembersCommand>,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

/// `bank members add` and `bank members remove`.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum MembersCommand {
    /// Add node N to the voting members.
    ///
    /// Start node N first (`bank node --id N` with a cluster file that lists it, as a
    /// learner, beside the current members): it copies the log as a learner. The
    /// members need not know it: give its address with --addr if their cluster file
    /// does not. The command waits until N has caught up with the leader's commit
    /// point, then asks for the change; N votes once the change is chosen and it has
    /// recovered. The members learn its address from the change itself (no cluster
    /// file to edit on them). At most as
    /// many members as the new configuration tolerates failures may be new at once:
    /// one for three or four members, two for five.
    ///
    /// Needs the nodes to run with `bank node --admin-calls`.
    Add(ChangeArgs),
    /// Remove node N from the voting members. It keeps running as a learner (stop it
    /// once the change took effect). Needs `--admin-calls` on the nodes.
    Remove(ChangeArgs),
}

/// Options of `bank members add` / `remove`.
#[derive(clap::Args, Debug)]
pub(crate) struct ChangeArgs {
    /// The node to add or remove.
    #[arg(long, value_name = "N")]
    pub(crate) id: NodeId,
    /// The node's address (`IP:PORT`), when the cluster file does not give it.
    #[arg(long, value_name = "ADDR")]
    pub(crate) addr: Option<std::net::SocketAddr>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub(crate) timeout: Duration,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(config: &ClusterConfig, args: MembersArgs) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    match args.change {
        None => list(&cluster, args.output.json).await,
        Some(MembersCommand::Add(change)) => {
            let json = change.output.json || args.output.json;
            change_members(config, &cluster, change, true, json).await
        }
        Some(MembersCommand::Remove(change)) => {
            let json = change.output.json || args.output.json;
            change_members(config, &cluster, change, false, json).await
        }
    }
}

/// The newest configuration any node reports, with who reported it.
async fn newest(cluster: &RemoteCluster) -> Option<(Membership, Vec<NodeId>)> {
    let nodes: Vec<_> = cluster
        .members()
        .iter()
        .chain(cluster.learners())
        .cloned()
        .collect();
    let answers = futures::future::join_all(nodes.iter().map(|n| n.members())).await;
    let mut best: Option<(Membership, Vec<NodeId>)> = None;
    for (n, answer) in nodes.iter().zip(answers) {
        let Ok(m) = answer else { continue };
        match &mut best {
            Some((b, who)) if b.epoch == m.epoch => who.push(n.id()),
            Some((b, _)) if b.epoch > m.epoch => {}
            _ => best = Some((m, vec![n.id()])),
        }
    }
    best
}

async fn list(cluster: &RemoteCluster, json: bool) -> anyhow::Result<ExitCode> {
    let Some((m, who)) = newest(cluster).await else {
        bail!("no node answered: is the cluster running?");
    };
    if json {
        stdout_line(&json!({
            "epoch": m.epoch,
            "members": m.members.iter().map(|x| json!({"node": x.id, "address": x.address})).collect::<Vec<_>>(),
            "reported_by": who,
        }))?;
    } else {
        let mut text = format!("epoch {} ({} voting members)\n", m.epoch, m.members.len());
        for x in &m.members {
            let addr = if x.address.is_empty() {
                "(from the cluster file)"
            } else {
                &x.address
            };
            text.push_str(&format!("  n{:<4} {addr}\n", x.id));
        }
        let who: Vec<String> = who.iter().map(|n| format!("n{n}")).collect();
        text.push_str(&format!("as reported by {}\n", who.join(", ")));
        stdout_text(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn change_members(
    config: &ClusterConfig,
    cluster: &RemoteCluster,
    change: ChangeArgs,
    add: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let ChangeArgs {
        id, addr, timeout, ..
    } = change;
    let deadline = Instant::now() + timeout;
    let Some((current, _)) = newest(cluster).await else {
        bail!("no node answered: is the cluster running?");
    };
    let address = |node: NodeId, given: Option<std::net::SocketAddr>, known: &str| {
        given
            .or_else(|| config.addr(node))
            .map(|a| a.to_string())
            .unwrap_or_else(|| known.to_string())
    };
    let mut members: Vec<Member> = current
        .members
        .iter()
        .map(|m| Member {
            id: m.id,
            address: address(m.id, None, &m.address),
        })
        .collect();
    if add {
        if current.contains(id) {
            stdout_text(&format!(
                "n{id} is a member already (epoch {})\n",
                current.epoch
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        let address = address(id, addr, "");
        if address.is_empty() {
            return Err(usage(format!(
                "--id {id}: the cluster file has no address for it; give --addr IP:PORT"
            )));
        }
        let joining: std::net::SocketAddr = address
            .parse()
            .map_err(|e| anyhow!("n{id}'s address {address:?} is not IP:PORT: {e}"))?;
        members.push(Member { id, address });
        catch_up(config, cluster, id, joining, deadline).await?;
    } else {
        if !current.contains(id) {
            stdout_text(&format!(
                "n{id} is not a member (epoch {})\n",
                current.epoch
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        members.retain(|m| m.id != id);
        if members.is_empty() {
            return Err(usage("cannot remove the last member".to_string()));
        }
    }
    let started = Instant::now();
    let mut asked: Option<Instant> = None;
    loop {
        if let Some((now, _)) = newest(cluster).await {
            if now.epoch > current.epoch {
                let done = now.contains(id) == add;
                report(json, &now, id, add, started.elapsed(), done)?;
                return Ok(if done {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the change did not take effect within {} s: check `bank health` and try again",
                timeout.as_secs_f64()
            );
        }
        if asked.is_none_or(|t| t.elapsed() >= ASK_AGAIN) {
            let answers = gather_health(cluster).await;
            if let Some(leader) = health_leader(&answers).map(|s| s.replica.id) {
                ask(cluster, leader, members.clone()).await?;
                asked = Some(Instant::now());
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until node `id` (at `addr`), which copies the log as a learner, has reached
/// the commit point the leader had when the wait began: a new member that votes soon
/// after the change, not one that first copies the whole log while the configuration
/// counts on it.
async fn catch_up(
    config: &ClusterConfig,
    cluster: &RemoteCluster,
    id: NodeId,
    addr: std::net::SocketAddr,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut with = config.clone();
    if with.node(id).is_none() {
        with.learners.push(NodeConfig { id, addr });
    }
    let joining = remote(&with)?;
    let node = joining.node(id)?;
    let started = Instant::now();
    let mut target = None;
    let mut reached = None;
    loop {
        if target.is_none() {
            let answers = gather_health(cluster).await;
            target = health_leader(&answers).map(|s| s.replica.commit_point);
        }
        if let Ok(status) = node.status().await {
            reached = Some(status.replica.commit_point);
        }
        if let (Some(t), Some(r)) = (target, reached) {
            if r >= t {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                // On stderr: stdout is the change's outcome (JSON with --json).
                eprintln!("n{id} has caught up to slot {r} ({ms:.1} ms)");
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            let at = reached.map_or("it did not answer".to_string(), |r| {
                format!("it is at slot {r}")
            });
            let of = target.map_or("no leader answered".to_string(), |t| {
                format!("the leader was at slot {t}")
            });
            bail!(
                "n{id} at {addr} did not catch up in time ({at}; {of}): start it first \
                 (`bank node --id {id}` with a cluster file that lists it under [[learners]]), \
                 or give more --timeout"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks `leader` for the change; refusals an operator must act on end the command,
/// the others (busy, a leader that just lost office) are asked again later.
async fn ask(cluster: &RemoteCluster, leader: NodeId, members: Vec<Member>) -> anyhow::Result<()> {
    match cluster.node(leader)?.reconfigure(members).await {
        Ok(_) => Ok(()),
        Err(RemoteError::Server { source, .. }) => match source {
            ServerError::Forbidden => Err(anyhow!(
                "n{leader} refused the membership change: start the nodes with `bank node --admin-calls` to allow it"
            )),
            ServerError::TooManyNewMembers { .. } | ServerError::InvalidMembership => {
                Err(anyhow!("n{leader} refused the membership change: {source}"))
            }
            other => {
                tracing::debug!(error = %other, "the leader refused for now; asking again");
                Ok(())
            }
        },
        Err(e) => {
            tracing::debug!(error = %e, "asking the leader failed; asking again");
            Ok(())
        }
    }
}

fn report(
    json: bool,
    now: &Membership,
    id: NodeId,
    add: bool,
    took: Duration,
    done: bool,
) -> anyhow::Result<()> {
    let ms = took.as_secs_f64() * 1000.0;
    let ids: Vec<NodeId> = now.ids();
    if json {
        return stdout_line(&json!({
            "node": id,
            "added": add && done,
            "removed": !add && done,
            "epoch": now.epoch,
            "members": ids,
            "elapsed_ms": (ms * 10.0).round() / 10.0,
        }));
    }
    let names: Vec<String> = ids.iter().map(|n| format!("n{n}")).collect();
    let what = match (add, done) {
        (true, true) => format!("n{id} added"),
        (false, true) => format!("n{id} removed"),
        (true, false) => format!("another change took effect first; n{id} is not a member"),
        (false, false) => format!("another change took effect first; n{id} is still a member"),
    };
    stdout_text(&format!(
        "{what}: epoch {} members {} ({ms:.1} ms)\n",
        now.epoch,
        names.join(", ")
    ))
}
