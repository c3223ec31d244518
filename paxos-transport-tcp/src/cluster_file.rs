//! The cluster address file: which nodes make up a cluster and where they listen.

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

/// Which replicas make up the cluster and where they listen: the file every node
/// process and every client of a cluster reads.
///
/// [`NodeServer`](crate::NodeServer) listens on its own node's address and dials the
/// others; [`RemoteCluster`](crate::RemoteCluster) connects to them.
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
///
/// [[learners]]                # optional: replicas that copy the log without voting
/// id = 6
/// addr = "127.0.0.1:7006"
/// ```
/// Addresses are `IP:port` (no host names). Unknown keys are errors, so a typo does not
/// go unnoticed.
///
/// ```
/// use paxos_transport_tcp::ClusterConfig;
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
    /// Learners ([`paxos_core::Config::learner`]): replicas that copy the chosen log
    /// from the `nodes` and serve stale reads, but never vote. Their ids and addresses
    /// are distinct from the nodes'. Every member's file must list a learner (its
    /// transport accepts only the peers it knows), but nothing else changes for them.
    /// At most [`MAX_LEARNERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<NodeConfig>,
}

/// The most learners a cluster file may list.
pub const MAX_LEARNERS: usize = 64;

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
pub enum ClusterConfigError {
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
    /// More learners than [`MAX_LEARNERS`] are listed.
    #[error("{count} learners configured, at most {max} allowed")]
    TooManyLearners {
        /// How many are listed.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// `checkpoint_interval` is 0.
    #[error("checkpoint_interval must be positive")]
    ZeroCheckpointInterval,
    /// An entry of an endpoint list ([`ClusterConfig::from_endpoints`]) is malformed.
    #[error("invalid endpoint {entry:?}: {reason}")]
    BadEndpoint {
        /// The entry (at most 40 characters of it).
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
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
    /// cluster id and checkpoint interval: [`localhost(5, 7001)`](Self::localhost).
    pub fn local_default() -> ClusterConfig {
        ClusterConfig::localhost(5, 7001)
    }

    /// `count` nodes, ids 1 to `count`, on `127.0.0.1` at ports `first_port`,
    /// `first_port + 1`, … (ports past 65535 are left out), with the default cluster id
    /// and checkpoint interval.
    ///
    /// ```
    /// use paxos_transport_tcp::ClusterConfig;
    /// let c = ClusterConfig::localhost(3, 7101);
    /// assert_eq!(c.ids(), vec![1, 2, 3]);
    /// assert_eq!(c.addr(3), Some("127.0.0.1:7103".parse().unwrap()));
    /// ```
    pub fn localhost(count: u16, first_port: u16) -> ClusterConfig {
        ClusterConfig {
            cluster_id: DEFAULT_CLUSTER_ID,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            nodes: (0..count)
                .map_while(|i| {
                    let port = first_port.checked_add(i)?;
                    Some(NodeConfig {
                        id: NodeId::from(i) + 1,
                        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    })
                })
                .collect(),
            learners: Vec::new(),
        }
    }

    /// Parses and [validates](ClusterConfig::validate) TOML text.
    pub fn from_toml_str(text: &str) -> Result<ClusterConfig, ClusterConfigError> {
        let config: ClusterConfig =
            toml::from_str(text).map_err(|e| ClusterConfigError::Parse {
                line: e
                    .span()
                    .map(|span| 1 + text[..span.start.min(text.len())].matches('\n').count()),
                message: e.message().split_whitespace().collect::<Vec<_>>().join(" "),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file, refusing one over [`MAX_CONFIG_BYTES`].
    pub fn load(path: impl AsRef<Path>) -> Result<ClusterConfig, ClusterConfigError> {
        let path = path.as_ref();
        let io = |source| ClusterConfigError::Io {
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
            return Err(ClusterConfigError::TooLarge {
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

    /// A configuration from a comma-separated endpoint list (as a `--cluster` or
    /// `--endpoints` flag takes it): either every entry `ID=IP:PORT` (`1=127.0.0.1:7001,2=127.0.0.1:7002`,
    /// the `id` and `addr` of a `[[nodes]]` table) or every entry `IP:PORT`, the nodes
    /// then numbered 1, 2, … in the order given. Spaces around entries are ignored.
    /// The cluster id is `cluster_id` ([`DEFAULT_CLUSTER_ID`] when `None`), the
    /// checkpoint interval the default; the result is
    /// [validated](ClusterConfig::validate).
    ///
    /// ```
    /// use paxos_transport_tcp::ClusterConfig;
    /// let c = ClusterConfig::from_endpoints("1=127.0.0.1:7001, 3=127.0.0.1:7003", Some(9))
    ///     .unwrap();
    /// assert_eq!((c.ids(), c.cluster_id), (vec![1, 3], 9));
    /// let c = ClusterConfig::from_endpoints("127.0.0.1:7001,127.0.0.1:7002", None).unwrap();
    /// assert_eq!(c.ids(), vec![1, 2]);
    /// assert!(ClusterConfig::from_endpoints("1=localhost:7001", None).is_err());
    /// ```
    pub fn from_endpoints(
        list: &str,
        cluster_id: Option<u64>,
    ) -> Result<ClusterConfig, ClusterConfigError> {
        let bad = |entry: &str, reason| ClusterConfigError::BadEndpoint {
            entry: entry.chars().take(40).collect(),
            reason,
        };
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        if entries.iter().all(|e| e.is_empty()) {
            return Err(ClusterConfigError::NoNodes);
        }
        let numbered = entries.iter().any(|e| e.contains('='));
        let mut nodes = Vec::with_capacity(entries.len());
        for (i, &entry) in entries.iter().enumerate() {
            if entry.is_empty() {
                return Err(bad(entry, "empty entry"));
            }
            let (id, addr) = match entry.split_once('=') {
                Some((id, addr)) => {
                    let id = id
                        .trim()
                        .parse::<NodeId>()
                        .map_err(|_| bad(entry, "the id before `=` must be a number"))?;
                    (id, addr.trim())
                }
                None if numbered => {
                    return Err(bad(entry, "give every entry an id (ID=IP:PORT), or none"));
                }
                None => (NodeId::try_from(i + 1).unwrap_or(NodeId::MAX), entry),
            };
            let addr = addr
                .parse::<SocketAddr>()
                .map_err(|_| bad(entry, "expected IP:PORT, e.g. 127.0.0.1:7001"))?;
            nodes.push(NodeConfig { id, addr });
        }
        let config = ClusterConfig {
            cluster_id: cluster_id.unwrap_or(DEFAULT_CLUSTER_ID),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            nodes,
            learners: Vec::new(),
        };
        config.validate()?;
        Ok(config)
    }

    /// Rewrites the `cluster_id` of a configuration file's text to `cluster_id`,
    /// keeping every other line (comments included) as it is; adds the key at the top
    /// if the text has none. The result must parse to a valid configuration with that
    /// id, or it is an error.
    ///
    /// ```
    /// use paxos_transport_tcp::ClusterConfig;
    /// let text = "# mine\ncluster_id = 7  # set once\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
    /// let new = ClusterConfig::replace_cluster_id(text, 8).unwrap();
    /// assert_eq!(new, text.replace("= 7 ", "= 8 "));
    /// let text = "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
    /// let new = ClusterConfig::replace_cluster_id(text, 9).unwrap();
    /// assert_eq!(ClusterConfig::from_toml_str(&new).unwrap().cluster_id, 9);
    /// ```
    pub fn replace_cluster_id(text: &str, cluster_id: u64) -> Result<String, ClusterConfigError> {
        let mut out = String::with_capacity(text.len() + 32);
        let mut replaced = false;
        let mut top_level = true;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                top_level = false;
            }
            let value_at = trimmed
                .strip_prefix("cluster_id")
                .and_then(|rest| rest.trim_start().strip_prefix('='))
                .map(|value| line.len() - value.len());
            match value_at {
                Some(at) if top_level && !replaced => {
                    let (key, value) = line.split_at(at);
                    let spaces = value.len() - value.trim_start().len();
                    let token = value.trim_start();
                    let end = token
                        .find(|c: char| c.is_whitespace() || c == '#')
                        .unwrap_or(token.len());
                    out.push_str(key);
                    out.push_str(&value[..spaces]);
                    out.push_str(&cluster_id.to_string());
                    out.push_str(&token[end..]);
                    replaced = true;
                }
                _ => out.push_str(line),
            }
        }
        if !replaced {
            out.insert_str(0, &format!("cluster_id = {cluster_id}\n"));
        }
        let config = ClusterConfig::from_toml_str(&out)?;
        if config.cluster_id != cluster_id {
            return Err(ClusterConfigError::Parse {
                line: None,
                message: "cannot rewrite cluster_id".into(),
            });
        }
        Ok(out)
    }

    /// The configuration as TOML, which [`from_toml_str`](ClusterConfig::from_toml_str)
    /// reads back.
    pub fn to_toml_string(&self) -> String {
        // A struct of integers and addresses always serializes.
        toml::to_string(self).unwrap_or_default()
    }

    /// Checks the rules listed on [`ClusterConfig`].
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if self.nodes.is_empty() {
            return Err(ClusterConfigError::NoNodes);
        }
        if self.nodes.len() > MAX_MEMBERS {
            return Err(ClusterConfigError::TooManyNodes {
                count: self.nodes.len(),
                max: MAX_MEMBERS,
            });
        }
        if self.learners.len() > MAX_LEARNERS {
            return Err(ClusterConfigError::TooManyLearners {
                count: self.learners.len(),
                max: MAX_LEARNERS,
            });
        }
        if self.checkpoint_interval == 0 {
            return Err(ClusterConfigError::ZeroCheckpointInterval);
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for node in self.nodes.iter().chain(&self.learners) {
            if node.id == 0 {
                return Err(ClusterConfigError::ZeroId);
            }
            if !ids.insert(node.id) {
                return Err(ClusterConfigError::DuplicateId(node.id));
            }
            if !addrs.insert(node.addr) {
                return Err(ClusterConfigError::DuplicateAddr(node.addr));
            }
        }
        Ok(())
    }

    /// The voting nodes' ids, in file order (learners are not among them).
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The learners' ids, in file order.
    pub fn learner_ids(&self) -> Vec<NodeId> {
        self.learners.iter().map(|n| n.id).collect()
    }

    /// True when `id` is one of the [`learners`](ClusterConfig::learners).
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.iter().any(|n| n.id == id)
    }

    /// The node or learner with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().chain(&self.learners).find(|n| n.id == id)
    }

    /// The address of the node or learner with this id.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.node(id).map(|n| n.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_with_and_without_ids() {
        let c = ClusterConfig::from_endpoints(" 2=127.0.0.1:7002 ,1=127.0.0.1:7001", None).unwrap();
        assert_eq!(c.ids(), vec![2, 1]);
        assert_eq!(c.addr(1), Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(c.cluster_id, DEFAULT_CLUSTER_ID);
        assert_eq!(c.checkpoint_interval, DEFAULT_CHECKPOINT_INTERVAL);
        let c = ClusterConfig::from_endpoints("127.0.0.1:1,[::1]:2,127.0.0.1:3", Some(42)).unwrap();
        assert_eq!((c.ids(), c.cluster_id), (vec![1, 2, 3], 42));
        // The same nodes as a config file lists them.
        let file = ClusterConfig::from_toml_str(
            "cluster_id = 42\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\n\
             [[nodes]]\nid = 2\naddr = \"[::1]:2\"\n[[nodes]]\nid = 3\naddr = \"127.0.0.1:3\"\n",
        )
        .unwrap();
        assert_eq!(c, file);
    }

    #[test]
    fn bad_endpoints_are_refused() {
        let err = |list: &str| {
            ClusterConfig::from_endpoints(list, None)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err(""), "no nodes configured");
        assert_eq!(err(" , "), "no nodes configured");
        assert!(
            err("1=127.0.0.1:1,,2=127.0.0.1:2").contains("empty entry"),
            "{}",
            err("1=127.0.0.1:1,,")
        );
        assert!(err("x=127.0.0.1:1").contains("the id before `=` must be a number"));
        assert!(err("1=127.0.0.1:1,127.0.0.1:2").contains("give every entry an id"));
        assert!(err("1=localhost:7001").contains("expected IP:PORT"));
        assert!(err("127.0.0.1").contains("expected IP:PORT"));
        assert_eq!(
            err("1=127.0.0.1:1,1=127.0.0.1:2"),
            "node id 1 is listed twice"
        );
        assert_eq!(
            err("0=127.0.0.1:1"),
            "node id 0 is reserved: ids start at 1"
        );
        assert_eq!(
            err("127.0.0.1:1,127.0.0.1:1"),
            "address 127.0.0.1:1 is listed twice"
        );
        let long = format!("{}=1", "9".repeat(200));
        assert!(err(&long).len() < 150, "{}", err(&long));
    }

    #[test]
    fn cluster_id_is_rewritten_in_place() {
        let text = "# my cluster\ncluster_id=7# old\ncheckpoint_interval = 10\n\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
        let new = ClusterConfig::replace_cluster_id(text, 1_700_000_000).unwrap();
        assert_eq!(new, text.replace("=7#", "=1700000000#"));
        // Without the key, it goes at the top, before any table.
        let nested = "[[nodes]]\nid = 1\naddr = \"127.0.0.1:7001\"\n";
        let new = ClusterConfig::replace_cluster_id(nested, 5).unwrap();
        assert_eq!(new, format!("cluster_id = 5\n{nested}"));
        // What cannot be made valid is an error, not a broken file.
        assert!(ClusterConfig::replace_cluster_id("[[nodes]\n", 5).is_err());
    }
}
