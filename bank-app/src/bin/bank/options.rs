//! The options every subcommand shares: where the cluster is (`--config`,
//! `--endpoints`, `--cluster-id`), `--json`, durations in seconds.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};
use bank_app::{Cluster, ClusterConfig, ConfigError, RemoteCluster, RemoteOptions};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};

use crate::errors::usage;
use crate::Cli;

#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct JsonFlag {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_secs(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Where the cluster's description comes from.
#[derive(Clone, Debug)]
pub(crate) enum ConfigSource {
    /// `--config FILE` or `BANK_CONFIG`.
    File(PathBuf),
    /// `--endpoints LIST` or `BANK_ENDPOINTS`.
    Endpoints(String),
    /// Neither: five nodes on 127.0.0.1:7001-7005.
    Default,
}

/// `--config` or `--endpoints`, from the command line or the environment: a flag wins
/// over a variable; two flags, or two variables, are an error.
pub(crate) fn config_source(cli: &Cli, matches: &ArgMatches) -> anyhow::Result<ConfigSource> {
    let from_flag = |id| matches.value_source(id) == Some(ValueSource::CommandLine);
    // An empty environment variable counts as unset.
    let file = cli
        .config
        .clone()
        .filter(|f| from_flag("config") || !f.as_os_str().is_empty())
        .map(ConfigSource::File);
    let endpoints = cli
        .endpoints
        .clone()
        .filter(|e| from_flag("endpoints") || !e.trim().is_empty())
        .map(ConfigSource::Endpoints);
    Ok(match (file, endpoints) {
        (Some(file), Some(endpoints)) => match (from_flag("config"), from_flag("endpoints")) {
            (true, false) => file,
            (false, true) => endpoints,
            (true, true) => return Err(usage("--config and --endpoints cannot be used together")),
            (false, false) => {
                return Err(usage(
                    "BANK_CONFIG and BANK_ENDPOINTS are both set: unset one, or pass --config or --endpoints",
                ))
            }
        },
        (Some(source), None) | (None, Some(source)) => source,
        (None, None) => ConfigSource::Default,
    })
}

pub(crate) fn load_config(
    source: &ConfigSource,
    cluster_id: Option<u64>,
) -> anyhow::Result<ClusterConfig> {
    match source {
        ConfigSource::Default => {
            let mut config = ClusterConfig::local_default();
            if let Some(id) = cluster_id {
                config.cluster_id = id;
            }
            Ok(config)
        }
        ConfigSource::Endpoints(list) => ClusterConfig::from_endpoints(list, cluster_id)
            .map_err(|e| usage(format!("--endpoints: {e}"))),
        ConfigSource::File(path) => {
            let config = ClusterConfig::load(path).map_err(|e| match e {
                // These already name the file.
                ConfigError::Io { .. } | ConfigError::TooLarge { .. } => anyhow!(e),
                other => anyhow!("{}: {other}", path.display()),
            })?;
            match cluster_id {
                Some(id) if id != config.cluster_id => Err(usage(format!(
                    "--cluster-id {id} disagrees with {} (cluster_id = {})",
                    path.display(),
                    config.cluster_id
                ))),
                _ => Ok(config),
            }
        }
    }
}

pub(crate) fn remote(config: &ClusterConfig) -> anyhow::Result<RemoteCluster> {
    Ok(RemoteCluster::new(config, RemoteOptions::default())?)
}

/// Fails unless at least one replica answers.
pub(crate) async fn require_reachable(cluster: &RemoteCluster) -> anyhow::Result<()> {
    let nodes = cluster.nodes();
    let answers = futures::future::join_all(nodes.iter().map(|&n| cluster.replica_status(n))).await;
    if answers.iter().any(Result::is_ok) {
        return Ok(());
    }
    let first = answers
        .into_iter()
        .find_map(Result::err)
        .map(|e| e.to_string())
        .unwrap_or_default();
    bail!("no replica of the cluster can be reached (is it running?): {first}")
}

/// A client for one command (`bank transfer`, `bank balance`): the cluster must answer,
/// then the command is retried across nodes until `timeout`.
pub(crate) async fn one_shot_client(
    config: &ClusterConfig,
    timeout: std::time::Duration,
) -> anyhow::Result<paxos_core::Client<bank_app::Bank>> {
    client_of(config, timeout, false).await
}

/// As [`one_shot_client`], with the learners among the endpoints (after the voting
/// nodes) when `learners` is true: for stale reads.
pub(crate) async fn client_of(
    config: &ClusterConfig,
    timeout: std::time::Duration,
    learners: bool,
) -> anyhow::Result<paxos_core::Client<bank_app::Bank>> {
    use std::time::Duration;
    let cluster = remote(config)?;
    require_reachable(&cluster).await?;
    let options = paxos_core::ClientOptions::default()
        .with_attempt_timeout(Duration::from_secs(1))
        .with_min_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(300))
        .with_default_deadline(timeout);
    let endpoints = if learners {
        cluster.endpoints_with_learners()
    } else {
        cluster.endpoints()
    };
    Ok(paxos_core::Client::with_options(endpoints, options))
}
