//! `bank health`: every replica's role, ballot, leader, commit and executed points, and
//! how far it lags behind the leader, from each replica's status
//! ([`Cluster::replica_status`]).

use paxos_core::{AcceptorStatus, Ballot, NodeId, Role, Slot};
use serde::Serialize;

use crate::cluster::{Cluster, NodeStatus};
use crate::inspect::{gather, NodeResult};
use crate::table::{Align, Table};

/// One replica's health, as `bank health` shows it (one JSON object per replica with
/// `--json`). A replica that did not answer has `reachable: false`, an `error`, and no
/// other value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthRow {
    /// The replica.
    pub node: NodeId,
    /// Whether it answered.
    pub reachable: bool,
    /// `leader`, `candidate` or `follower`.
    pub role: Option<&'static str>,
    /// The leader it believes in.
    pub leader: Option<NodeId>,
    /// The highest ballot it promised.
    pub ballot: Option<Ballot>,
    /// Every slot below this is chosen, as far as it knows.
    pub commit: Option<Slot>,
    /// Every slot below this was executed here.
    pub executed: Option<Slot>,
    /// The leader's commit point minus this replica's executed point: how many chosen
    /// slots it has still to execute. Unknown (`None`) when no reachable replica leads.
    pub lag: Option<Slot>,
    /// `voting`, `founding` (new, waiting to learn whether the cluster is new) or
    /// `recovering` (rebuilding lost state from its peers).
    pub acceptor: Option<&'static str>,
    /// False while a test control keeps the replica unavailable.
    pub available: Option<bool>,
    /// One past the highest slot it knows of.
    pub log_end: Option<Slot>,
    /// Live client sessions.
    pub live_sessions: Option<usize>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// The leader the health table measures lag against: the available replica that says
/// it leads, at the highest ballot if several do (a deposed leader may not know yet).
pub fn health_leader(rows: &[NodeResult<NodeStatus>]) -> Option<&NodeStatus> {
    rows.iter()
        .filter_map(|r| r.result.as_ref().ok())
        .filter(|s| s.is_available_leader())
        .max_by_key(|s| s.replica.promised)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        _ => "follower",
    }
}

fn acceptor_name(status: AcceptorStatus) -> &'static str {
    match status {
        AcceptorStatus::Voter => "voting",
        AcceptorStatus::Recovering => "recovering",
        _ => "founding",
    }
}

/// Every replica's [`HealthRow`], from their statuses.
pub fn health_rows(rows: &[NodeResult<NodeStatus>]) -> Vec<HealthRow> {
    let leader_commit = health_leader(rows).map(|l| l.replica.commit_point);
    rows.iter()
        .map(|row| match &row.result {
            Ok(s) => HealthRow {
                node: row.node,
                reachable: true,
                role: Some(role_name(s.replica.role)),
                leader: s.replica.leader,
                ballot: Some(s.replica.promised),
                commit: Some(s.replica.commit_point),
                executed: Some(s.replica.executed),
                lag: leader_commit.map(|c| c.saturating_sub(s.replica.executed)),
                // A learner never votes: its acceptor status says nothing.
                acceptor: Some(if s.replica.role == Role::Learner {
                    "not voting"
                } else {
                    acceptor_name(s.acceptor)
                }),
                available: Some(s.available),
                log_end: Some(s.replica.log_end),
                live_sessions: Some(s.replica.sessions),
                error: None,
            },
            Err(e) => HealthRow {
                node: row.node,
                reachable: false,
                role: None,
                leader: None,
                ballot: None,
                commit: None,
                executed: None,
                lag: None,
                acceptor: None,
                available: None,
                log_end: None,
                live_sessions: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// Asks every replica for its status, concurrently.
pub async fn gather_health<C: Cluster + ?Sized>(cluster: &C) -> Vec<NodeResult<NodeStatus>> {
    gather(cluster, |c, n| c.replica_status(n)).await
}

/// The health table: a row per replica (a note for one that did not answer), then a
/// line naming the leader.
///
/// ```
/// use bank_app::{format_health, HealthRow};
/// assert_eq!(format_health(&[]), "node  role  leader  ballot  commit  executed  lag  state\n\
///                                 ----  ----  ------  ------  ------  --------  ---  -----\n\
///                                 no replica leads: lag unknown\n");
/// ```
pub fn format_health(rows: &[HealthRow]) -> String {
    let mut table = Table::new([
        ("node", Align::Left),
        ("role", Align::Left),
        ("leader", Align::Left),
        ("ballot", Align::Left),
        ("commit", Align::Right),
        ("executed", Align::Right),
        ("lag", Align::Right),
        ("state", Align::Left),
    ]);
    let dash = || "-".to_string();
    let num = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
    for row in rows {
        let node = format!("n{}", row.node);
        if !row.reachable {
            let why = row.error.as_deref().unwrap_or("no answer");
            table.note(node, format!("unreachable: {why}"));
            continue;
        }
        let state = match (row.available, row.acceptor) {
            (Some(false), _) => "unavailable",
            (_, Some(a)) => a,
            _ => "-",
        };
        table.row([
            node,
            row.role.unwrap_or("-").to_string(),
            row.leader.map_or_else(dash, |l| format!("n{l}")),
            row.ballot.map_or_else(dash, |b| b.to_string()),
            num(row.commit),
            num(row.executed),
            num(row.lag),
            state.to_string(),
        ]);
    }
    let leaders: Vec<String> = rows
        .iter()
        .filter(|r| r.role == Some("leader") && r.available == Some(true))
        .map(|r| format!("n{}", r.node))
        .collect();
    let summary = if leaders.is_empty() {
        "no replica leads: lag unknown\n".to_string()
    } else {
        format!(
            "leader: {} (lag: its commit point minus each replica's executed point)\n",
            leaders.join(", ")
        )
    };
    format!("{table}{summary}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reachable(node: NodeId, role: &'static str, commit: Slot, executed: Slot) -> HealthRow {
        HealthRow {
            node,
            reachable: true,
            role: Some(role),
            leader: Some(1),
            ballot: Some(Ballot::new(2, 1)),
            commit: Some(commit),
            executed: Some(executed),
            lag: Some(10 - executed),
            acceptor: Some("voting"),
            available: Some(true),
            log_end: Some(commit),
            live_sessions: Some(3),
            error: None,
        }
    }

    #[test]
    fn the_table_shows_every_replica_and_the_unreachable_as_such() {
        let mut down = reachable(3, "follower", 0, 0);
        down.reachable = false;
        down.error = Some("replica 3 is unreachable: connection refused".into());
        let rows = [
            reachable(1, "leader", 10, 10),
            reachable(2, "follower", 10, 7),
            down,
        ];
        let text = format_health(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "node  role      leader  ballot   commit  executed  lag  state"
        );
        assert_eq!(
            lines[2],
            "n1    leader    n1      (2, n1)      10        10    0  voting"
        );
        assert_eq!(
            lines[3],
            "n2    follower  n1      (2, n1)      10         7    3  voting"
        );
        assert!(lines[4].starts_with("n3    unreachable: "), "{text}");
        assert!(lines[5].starts_with("leader: n1 "), "{text}");
    }

    #[test]
    fn json_rows_carry_the_documented_keys() {
        let value = serde_json::to_value(reachable(2, "follower", 10, 7)).unwrap();
        for key in [
            "node", "role", "leader", "ballot", "commit", "executed", "lag",
        ] {
            assert!(value.get(key).is_some(), "{key} missing from {value}");
        }
        assert_eq!(value["lag"], 3);
        assert_eq!(value["ballot"], serde_json::json!({"round": 2, "node": 1}));
    }
}
