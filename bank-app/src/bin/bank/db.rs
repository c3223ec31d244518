//! `bank db`: PrintDB, every replica's balances.

use std::process::ExitCode;

use bank_app::{format_db, gather_db, ClusterConfig};
use paxos_core::AcceptorStatus;
use serde_json::json;

use crate::options::remote;
use crate::output::{none_answered, stdout_line, stdout_text};

pub(crate) async fn run(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_db(&cluster).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(db) => json!({
                    "node": row.node,
                    "available": db.available,
                    "acceptor": acceptor_text(db.acceptor),
                    "executed": db.executed,
                    "balances": db.balances,
                    "total": db.total(),
                }),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_db(&rows))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}

/// `voter`, `recovering` or `pristine`.
fn acceptor_text(status: AcceptorStatus) -> &'static str {
    match status {
        AcceptorStatus::Voter => "voter",
        AcceptorStatus::Recovering => "recovering",
        AcceptorStatus::Pristine => "pristine",
        _ => "other",
    }
}
