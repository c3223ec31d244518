//! `bank status`: PrintStatus, one slot on every replica.

use std::process::ExitCode;

use bank_app::{format_status, gather_status, ClientNames, ClusterConfig};
use paxos_core::Slot;
use serde_json::json;

use crate::log::entry_json;
use crate::options::{remote, JsonFlag};
use crate::output::{none_answered, stdout_line, stdout_text};

/// Options of `bank status`.
#[derive(clap::Args, Debug)]
pub(crate) struct StatusArgs {
    /// The slot, numbered from 0 as `bank log` shows them.
    #[arg(long, value_name = "S")]
    pub(crate) seq: Slot,
    #[command(flatten)]
    pub(crate) output: JsonFlag,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    slot: Slot,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_status(&cluster, slot).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(e) => entry_json(row.node, e),
                Err(e) => json!({"node": row.node, "slot": slot, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_status(slot, &rows, &ClientNames::new()))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}
