//! `bank heal`: make every replica available again.

use std::process::ExitCode;

use bank_app::{heal, ClusterConfig};
use serde_json::json;

use crate::options::remote;
use crate::output::{none_answered, stdout_line, stdout_text};

pub(crate) async fn run(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = heal(&cluster).await;
    for row in &rows {
        if json {
            stdout_line(&match &row.result {
                Ok(was) => json!({"node": row.node, "available": true, "was_available": was}),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        } else {
            let text = match &row.result {
                Ok(true) => "available (it was already)".to_string(),
                Ok(false) => "made available".to_string(),
                Err(e) => {
                    format!("not reached ({e}); a replica starts available when it is started")
                }
            };
            stdout_text(&format!("n{}: {text}\n", row.node))?;
        }
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}
