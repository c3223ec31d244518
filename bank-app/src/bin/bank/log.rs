//! `bank log`: PrintLog, one replica's log.

use std::process::ExitCode;

use bank_app::{format_log, ClientNames, Cluster, ClusterConfig, LogEntry};
use paxos_core::NodeId;
use serde_json::{json, Value};

use crate::options::{remote, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// Options of `bank log`.
#[derive(clap::Args, Debug)]
pub(crate) struct LogArgs {
    /// The replica.
    #[arg(long, value_name = "N")]
    pub(crate) node: NodeId,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) fn entry_json(node: NodeId, e: &LogEntry) -> Value {
    json!({
        "node": node,
        "slot": e.slot,
        "status": e.code().to_string(),
        "ballot": e.ballot,
        "value": e.value.to_string(),
        "entry": e.value,
    })
}

pub(crate) async fn run(
    config: &ClusterConfig,
    node: NodeId,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let log = cluster.log(node).await;
    match (&log, json) {
        (Ok(entries), true) => {
            for e in entries {
                stdout_line(&entry_json(node, e))?;
            }
        }
        (Err(e), true) => stdout_line(&json!({"node": node, "error": e.to_string()}))?,
        (Ok(_), false) => stdout_text(&format_log(node, &log, &ClientNames::new()))?,
        (Err(_), false) => {}
    }
    log?;
    Ok(ExitCode::SUCCESS)
}
