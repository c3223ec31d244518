//! A replicated key-value store as three OS processes, built from the library crates
//! only (paxos-core, paxos-transport-tcp, paxos-storage-file):
//!
//! ```text
//! cargo run --example kv_tcp -- node --id 1 &    # one process per node, ids 1 to 3
//! cargo run --example kv_tcp -- node --id 2 &
//! cargo run --example kv_tcp -- node --id 3 &
//! cargo run --example kv_tcp -- put alice 10
//! cargo run --example kv_tcp -- get alice
//! cargo run --example kv_tcp -- status
//! ```
//!
//! The nodes listen on 127.0.0.1:7101-7103 and keep their durable state in
//! `kv-data/node-N`. To run across machines give every process the same
//! `--cluster 1=IP:PORT,2=IP:PORT,3=IP:PORT` (and `--data DIR` where the state goes).
//! To replicate your own state machine, replace `Kv` and `KvCommand`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use paxos_core::{NodeId, RestoreError, StateMachine};
use paxos_storage_file::FileStorage;
use paxos_transport_tcp::{
    ClusterConfig, NodeServer, NodeServerOptions, RemoteCluster, RemoteOptions,
};
use serde::{Deserialize, Serialize};

/// The replicated state: any deterministic type works.
#[derive(Default)]
struct Kv(BTreeMap<String, String>);

/// Commands travel as postcard bytes, so they are serde types.
#[derive(Serialize, Deserialize)]
enum KvCommand {
    Put(String, String),
    Get(String),
}

impl StateMachine for Kv {
    type Command = KvCommand;
    type Output = Option<String>;

    fn apply(&mut self, command: KvCommand) -> Option<String> {
        match command {
            KvCommand::Put(k, v) => self.0.insert(k, v),
            KvCommand::Get(k) => self.0.get(&k).cloned(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.0).unwrap_or_default()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), RestoreError> {
        self.0 = postcard::from_bytes(bytes).map_err(|e| RestoreError::new(e.to_string()))?;
        Ok(())
    }

    /// A `Get` is read-only: `Client::read` answers it without a log round.
    fn query(&self, command: &KvCommand) -> Option<Option<String>> {
        let KvCommand::Get(k) = command else {
            return None;
        };
        Some(self.0.get(k).cloned())
    }
}

#[derive(Parser)]
#[command(about = "A key-value store replicated with Multi-Paxos over TCP")]
struct Cli {
    /// The nodes, `ID=IP:PORT` comma-separated [default: 127.0.0.1:7101-7103 as ids 1-3]
    #[arg(long, global = true, value_name = "LIST")]
    cluster: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run node N until killed.
    Node {
        #[arg(long)]
        id: NodeId,
        /// Where the node keeps its state [default: kv-data/node-N]
        #[arg(long, value_name = "DIR")]
        data: Option<PathBuf>,
    },
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Print KEY's value (a linearizable read, without a log round).
    Get { key: String },
    /// Print every node's role, progress and key count.
    Status,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cluster = match &cli.cluster {
        Some(list) => ClusterConfig::from_endpoints(list, None)?,
        None => ClusterConfig::localhost(3, 7101),
    };
    let remote = || RemoteCluster::new(&cluster, RemoteOptions::default());
    match cli.command {
        Command::Node { id, data } => {
            let dir = data.unwrap_or_else(|| PathBuf::from(format!("kv-data/node-{id}")));
            std::fs::create_dir_all(&dir)?;
            let storage = FileStorage::open(&dir, cluster.cluster_id, id)?;
            // A read-only view that skips the log: this replica's number of keys.
            let options = NodeServerOptions::default()
                .with_query(|kv: &Kv, _: &[u8]| (kv.0.len() as u64).to_le_bytes().to_vec());
            let server = NodeServer::start(&cluster, id, Kv::default(), storage, options).await?;
            eprintln!("node {id} serving on {}", server.local_addr());
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = server.stopped() => {}
            }
            server.shutdown().await;
        }
        Command::Put { key, value } => {
            let mut client = remote()?.client::<Kv>();
            let old = client.execute(&KvCommand::Put(key, value)).await?;
            println!("ok (was {})", old.as_deref().unwrap_or("unset"));
        }
        Command::Get { key } => {
            let mut client = remote()?.client::<Kv>();
            match client.read(&KvCommand::Get(key)).await? {
                Some(value) => println!("{value}"),
                None => println!("(unset)"),
            }
        }
        Command::Status => {
            for node in remote()?.members() {
                let status = node.status().await;
                let keys = node.query(Default::default()).await;
                match (status, keys) {
                    (Ok(s), Ok(view)) => {
                        let keys = <[u8; 8]>::try_from(&view.answer[..]).map(u64::from_le_bytes);
                        let (r, keys) = (s.replica, keys.unwrap_or_default());
                        println!(
                            "n{}: {:?}, executed {}, {keys} keys",
                            r.id, r.role, r.executed
                        );
                    }
                    (Err(e), _) | (_, Err(e)) => println!("n{}: unreachable ({e})", node.id()),
                }
            }
        }
    }
    Ok(())
}
