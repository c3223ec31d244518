//! `bank view`: PrintView, the view changes each replica saw.

use std::process::ExitCode;

use bank_app::{format_views, gather_views, ClusterConfig};
use serde_json::json;

use crate::options::remote;
use crate::output::{none_answered, stdout_line, stdout_text};

pub(crate) async fn run(config: &ClusterConfig, json: bool) -> anyhow::Result<ExitCode> {
    let cluster = remote(config)?;
    let rows = gather_views(&cluster).await;
    if json {
        for row in &rows {
            stdout_line(&match &row.result {
                Ok(views) => json!({"node": row.node, "views": views}),
                Err(e) => json!({"node": row.node, "error": e.to_string()}),
            })?;
        }
    } else {
        stdout_text(&format_views(&rows))?;
    }
    none_answered(&rows)?;
    Ok(ExitCode::SUCCESS)
}
