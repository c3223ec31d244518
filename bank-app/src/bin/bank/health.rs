//! `bank health`: every replica's role, ballot, leader, commit and executed points and
//! lag behind the leader.

use std::process::ExitCode;

use bank_app::{format_health, gather_health, health_rows, ClusterConfig};

use crate::options::remote;
use crate::output::{none_answered, stdout_line, stdout_text};

pub(crate) async fn run(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let answers = gather_health(&cluster).await;
    let rows = health_rows(&answers);
    if json {
        for row in &rows {
            stdout_line(&serde_json::to_value(row)?)?;
        }
    } else {
        stdout_text(&format_health(&rows))?;
    }
    none_answered(&answers)?;
    Ok(ExitCode::SUCCESS)
}
