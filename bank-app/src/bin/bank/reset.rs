//! `bank reset`: remove the data directories of a stopped cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use bank_app::{inspect_data_dir, remove_data_dir, Cluster, ClusterConfig, DataDir, DataDirOwner};
use paxos_core::NodeId;

use crate::errors::usage;
use crate::node::{default_data_dir, DEFAULT_DATA_ROOT};
use crate::options::{remote, ConfigSource};
use crate::output::{node_list, stdout_text};

/// Options of `bank reset`.
#[derive(clap::Args, Debug)]
pub(crate) struct ResetArgs {
    /// A data directory to remove instead of the default ones (repeat for each
    /// node: --data-dir d1 --data-dir d2 ...).
    #[arg(long = "data-dir", value_name = "DIR")]
    pub(crate) data_dirs: Vec<PathBuf>,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Also write a new `cluster_id` into the --config file (other lines are kept),
    /// so that no old node or client can mix with the new cluster.
    #[arg(long)]
    pub(crate) new_cluster_id: bool,
}

pub(crate) async fn run(
    config: &ClusterConfig,
    source: &ConfigSource,
    data_dirs: &[PathBuf],
    dry_run: bool,
    new_cluster_id: bool,
) -> anyhow::Result<ExitCode> {
    let config_file = match source {
        ConfigSource::File(path) => Some(path),
        _ => None,
    };
    if new_cluster_id && config_file.is_none() {
        return Err(usage(
            "--new-cluster-id rewrites the cluster_id of a config file: give one with --config",
        ));
    }
    // 1. Every node must be stopped.
    let cluster = remote(config)?;
    let nodes = cluster.nodes();
    let answers = futures::future::join_all(nodes.iter().map(|&n| cluster.replica_status(n))).await;
    let running: Vec<NodeId> = nodes
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.is_ok())
        .map(|(&n, _)| n)
        .collect();
    if !running.is_empty() {
        bail!(
            "{} still answer{}: stop every node of the cluster first; nothing was removed",
            node_list(&running),
            if running.len() == 1 { "s" } else { "" }
        );
    }
    // 2. Every directory must be this cluster's data directory (or absent).
    let dirs: Vec<(PathBuf, DataDirOwner)> = if data_dirs.is_empty() {
        nodes
            .iter()
            .map(|&n| {
                let owner = DataDirOwner {
                    cluster_id: config.cluster_id,
                    nodes: vec![n],
                };
                (default_data_dir(n), owner)
            })
            .collect()
    } else {
        let owner = DataDirOwner {
            cluster_id: config.cluster_id,
            nodes: nodes.clone(),
        };
        data_dirs
            .iter()
            .map(|d| (d.clone(), owner.clone()))
            .collect()
    };
    let mut problems = 0;
    let mut found = Vec::new();
    for (dir, owner) in &dirs {
        match inspect_data_dir(dir, owner) {
            Ok(what) => found.push((dir, owner, what)),
            Err(e) => {
                problems += 1;
                stdout_text(&format!("refused: {e}\n"))?;
            }
        }
    }
    if problems > 0 {
        bail!(
            "{problems} of the directories {} not this cluster's data directories (see above); nothing was removed",
            if problems == 1 { "is" } else { "are" }
        );
    }
    // 3. Remove them.
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut removed = 0;
    for (dir, owner, what) in found {
        let what = if dry_run || what == DataDir::Missing {
            what
        } else {
            remove_data_dir(dir, owner)?
        };
        let line = match &what {
            DataDir::Missing => format!("{}: nothing there", dir.display()),
            DataDir::Empty => format!("{}: {verb} (empty)", dir.display()),
            DataDir::Node { node, files, .. } => format!(
                "{}: {verb} (node {node}'s data directory, {} files)",
                dir.display(),
                files.len()
            ),
        };
        if what != DataDir::Missing {
            removed += 1;
        }
        stdout_text(&format!("{line}\n"))?;
    }
    if data_dirs.is_empty() && !dry_run {
        // The default parent, if nothing else is left in it.
        let _ = std::fs::remove_dir(DEFAULT_DATA_ROOT);
    }
    // 4. The cluster id.
    match (config_file, new_cluster_id) {
        (Some(path), true) => {
            let new_id = next_cluster_id(config.cluster_id);
            if dry_run {
                stdout_text(&format!(
                    "{}: would set cluster_id = {new_id} (now {})\n",
                    path.display(),
                    config.cluster_id
                ))?;
            } else {
                write_cluster_id(path, new_id)?;
                stdout_text(&format!(
                    "{}: cluster_id = {new_id} (was {})\n",
                    path.display(),
                    config.cluster_id
                ))?;
            }
        }
        (Some(path), false) if removed > 0 => stdout_text(&format!(
            "{} keeps cluster_id = {}: to keep every old node and client out of the new \
             cluster, give it a new one (`bank reset --new-cluster-id` does)\n",
            path.display(),
            config.cluster_id
        ))?,
        (None, _) if removed > 0 && matches!(source, ConfigSource::Endpoints(_)) => {
            stdout_text(&format!(
                "the cluster id is {}: to keep every old node and client out of the new \
                 cluster, start it with another --cluster-id\n",
                config.cluster_id
            ))?
        }
        _ => {}
    }
    if !dry_run && removed > 0 {
        stdout_text(
            "start every node again: they found a new cluster with the initial balances\n",
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A cluster id that differs from `old` and from the ids handed out before: the
/// current Unix time in seconds, or `old + 1` if that is not larger.
fn next_cluster_id(old: u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // TOML integers are signed 64-bit.
    let id = now.max(old.saturating_add(1)).min(i64::MAX as u64);
    if id == old {
        old - 1
    } else {
        id
    }
}

/// Rewrites the `cluster_id` of a config file in place (through a temporary file and a
/// rename, so the file is never half-written).
fn write_cluster_id(path: &Path, cluster_id: u64) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let new = ClusterConfig::replace_cluster_id(&text, cluster_id)
        .with_context(|| format!("{}: cannot set its cluster_id", path.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_cluster_id_is_new() {
        assert!(next_cluster_id(1) > 1_700_000_000);
        assert_eq!(next_cluster_id(u64::MAX - 5), i64::MAX as u64);
        assert_eq!(next_cluster_id(i64::MAX as u64), i64::MAX as u64 - 1);
        let far = 1u64 << 40;
        assert_eq!(next_cluster_id(far), far + 1);
    }
}
