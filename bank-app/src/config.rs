//! The cluster configuration file.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use paxos_core::{NodeId, MAX_MEMBERS};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// [`ClusterConfig::cluster_id`] when the file gives none.
pub const DEFAULT_CLUSTER_ID: u64 = 1;

/// [`ClusterConfig::checkpoint_interval`] when the file gives none.
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 1000;

/// The largest configuration file [`ClusterConfig::load`] reads: 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Which replicas make up the cluster and where they listen.
///
/// In TOML:
/// ```toml
/// cluster_id = 7              # optional, default 1
/// checkpoint_interval = 500   # optional, default 1000
///
/// [[nodes]]
/// id = 1
/// addr = "127.0.0.1:7001"
///
/// [[nodes]]
/// id = 2
/// addr = "127.0.0.1:7002"
/// ```
/// Addresses are `IP:port` (no host names). Unknown keys are errors, so a typo does not
/// go unnoticed.
///
/// ```
/// use bank_app::ClusterConfig;
/// let config = ClusterConfig::from_toml_str(
///     "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n",
/// ).unwrap();
/// assert_eq!(config.ids(), vec![1]);
/// assert_eq!(ClusterConfig::default().nodes.len(), 5);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Identifies the cluster, so nodes of different clusters do not talk to each other.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: u64,
    /// A replica checkpoints its state every this many executed slots. Positive.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// The replicas: at least one, ids nonzero and unique, addresses unique.
    pub nodes: Vec<NodeConfig>,
}

/// One replica of a [`ClusterConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The replica's id, nonzero.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A configuration that cannot be loaded or is invalid.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The text is not valid TOML for a configuration. The message is one line.
    #[error(
        "invalid cluster config{}: {message}",
        line.map(|l| format!(" at line {l}")).unwrap_or_default()
    )]
    Parse {
        /// The 1-based line the problem is on, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// No nodes are listed.
    #[error("no nodes configured")]
    NoNodes,
    /// More nodes than [`paxos_core::MAX_MEMBERS`] are listed.
    #[error("{count} nodes configured, at most {max} allowed")]
    TooManyNodes {
        /// How many are listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A node has id 0.
    #[error("node id 0 is reserved: ids start at 1")]
    ZeroId,
    /// Two nodes share an id.
    #[error("node id {0} is listed twice")]
    DuplicateId(NodeId),
    /// Two nodes share an address.
    #[error("address {0} is listed twice")]
    DuplicateAddr(SocketAddr),
    /// `checkpoint_interval` is 0.
    #[error("checkpoint_interval must be positive")]
    ZeroCheckpointInterval,
}

fn default_cluster_id() -> u64 {
    DEFAULT_CLUSTER_ID
}

fn default_checkpoint_interval() -> u64 {
    DEFAULT_CHECKPOINT_INTERVAL
}

impl Default for ClusterConfig {
    /// The same as [`ClusterConfig::local_default`].
    fn default() -> Self {
        ClusterConfig::local_default()
    }
}

impl ClusterConfig {
    /// Five nodes, ids 1 to 5, on `127.0.0.1:7001` to `127.0.0.1:7005`, with the default
    /// cluster id and checkpoint interval.
    pub fn local_default() -> ClusterConfig {
        ClusterConfig {
            cluster_id: DEFAULT_CLUSTER_ID,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            nodes: (1..=5u16)
                .map(|i| NodeConfig {
                    id: NodeId::from(i),
                    addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + i)),
                })
                .collect(),
        }
    }

    /// Parses and [validates](ClusterConfig::validate) TOML text.
    pub fn from_toml_str(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            line: e
                .span()
                .map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count()),
            message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file, refusing one over [`MAX_CONFIG_BYTES`].
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ConfigError> {
        let path = path.as_ref();
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // Read at most one byte past the limit, whatever the metadata says.
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                max: MAX_CONFIG_BYTES,
            });
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e.utf8_error(),
            ))
        })?;
        ClusterConfig::from_toml_str(&text)
    }

    /// The configuration as TOML, which [`from_toml_str`](ClusterConfig::from_toml_str)
    /// reads back.
    pub fn to_toml_string(&self) -> String {
        // A struct of integers and addresses always serializes.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks the rules listed on [`ClusterConfig`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        if self.nodes.len() > MAX_MEMBERS {
            return Err(ConfigError::TooManyNodes {
                count: self.nodes.len(),
                max: MAX_MEMBERS,
            });
        }
        if self.checkpoint_interval == 0 {
            return Err(ConfigError::ZeroCheckpointInterval);
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for node in &self.nodes {
            if node.id == 0 {
                return Err(ConfigError::ZeroId);
            }
            if !ids.insert(node.id) {
                return Err(ConfigError::DuplicateId(node.id));
            }
            if !addrs.insert(node.addr) {
                return Err(ConfigError::DuplicateAddr(node.addr));
            }
        }
        Ok(())
    }

    /// The node ids, in file order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The address of the node with this id.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.node(id).map(|n| n.addr)
    }
}
