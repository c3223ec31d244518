//! etcd, the peer of `tcp` (built with `--features etcd`): five `etcd` member processes
//! on 127.0.0.1, a fresh cluster per run, and closed-loop clients that each Put a small
//! value under a key of their own through etcd's native gRPC KV API, talking to the
//! leader.
//!
//! The gRPC client is written here: the few messages we need are declared by hand with
//! prost's derive (field numbers from etcd's `rpc.proto`) and called through tonic's
//! generic unary client. The `etcd-client` crate would do the same, but its build
//! script generates its code from .proto files and so needs a system `protoc`.
//!
//! Every member is killed and reaped when [`Members`] drops (at the end, on an error, on
//! a panic, and when the run's future is dropped on Ctrl-C or SIGTERM), then its
//! temporary directory (data directories and logs) is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::transport::{Channel, Endpoint};

use crate::bank_nodes::{free_ports, PATIENCE};
use crate::runtime::{self, Phase, Recorder, RunStats, Timing};
use crate::{Progress, NODES};

/// `etcdserverpb.PutRequest`: the fields we set (the others are left at their
/// defaults, which is what leaving them out of the encoding means).
#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    cluster_id: u64,
    #[prost(uint64, tag = "2")]
    member_id: u64,
    #[prost(int64, tag = "3")]
    revision: i64,
    #[prost(uint64, tag = "4")]
    raft_term: u64,
}

/// `etcdserverpb.PutResponse` without `prev_kv` (not asked for; unknown fields are
/// skipped when decoding).
#[derive(Clone, PartialEq, prost::Message)]
struct PutResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
}

/// `etcdserverpb.RangeRequest`: a count of the keys in `[key, range_end)`, answered
/// by the member asked (`serializable`) from its own state.
#[derive(Clone, PartialEq, prost::Message)]
struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    range_end: Vec<u8>,
    #[prost(bool, tag = "7")]
    serializable: bool,
    #[prost(bool, tag = "9")]
    count_only: bool,
}

/// `etcdserverpb.RangeResponse` without the key-values (none with `count_only`).
#[derive(Clone, PartialEq, prost::Message)]
struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(int64, tag = "4")]
    count: i64,
}

/// `etcdserverpb.StatusRequest` (empty).
#[derive(Clone, PartialEq, prost::Message)]
struct StatusRequest {}

/// `etcdserverpb.StatusResponse`: the fields we read.
#[derive(Clone, PartialEq, prost::Message)]
struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    header: Option<ResponseHeader>,
    #[prost(string, tag = "2")]
    version: String,
    #[prost(uint64, tag = "4")]
    leader: u64,
}

/// One unary call of `path` on `channel`.
async fn call<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    request: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(
        tonic::Request::new(request),
        PathAndQuery::from_static(path),
        codec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The benchmark's keys: `bench/<client>`; `[KEYS_FROM, KEYS_TO)` covers them all.
const KEYS_FROM: &[u8] = b"bench/";
/// See [`KEYS_FROM`] (`'0'` follows `'/'`).
const KEYS_TO: &[u8] = b"bench0";

/// Bytes in each value put.
const VALUE_BYTES: usize = 16;

/// How long one Put may take before the client gives up on it (as our clients' attempt
/// timeout in `tcp`).
const PUT_TIMEOUT: Duration = Duration::from_secs(10);

/// The etcd binary `tcp` runs: found, and its version.
pub(crate) struct Etcd {
    /// The `etcd` executable.
    pub(crate) path: PathBuf,
    /// The first line of `etcd --version` ("etcd Version: 3.4.23").
    pub(crate) version: String,
    /// Where the in-memory comparison keeps the members' data directories (a tmpfs).
    pub(crate) tmpfs: PathBuf,
}

/// The flags every member gets besides its name, URLs, data directory and the initial
/// cluster; listed in the output. Everything else is etcd's default (heartbeat 100 ms,
/// election timeout 1,000 ms, snapshot every 100,000 entries, fsync on).
pub(crate) const FLAGS: &str =
    "--initial-cluster-state new --logger zap --log-outputs stderr --log-level warn";

impl Etcd {
    /// Finds `etcd` (the path given, or the first on `PATH`) and reads its version.
    /// A missing binary is an error that says how to install it.
    pub(crate) fn find(given: Option<PathBuf>, tmpfs: PathBuf) -> Result<Etcd> {
        const HINT: &str = "install it with `apt-get install -y etcd-server` (Debian; 3.4.23 in bookworm), pass --etcd PATH, or run with --ours-only";
        let path = match given {
            Some(p) => {
                ensure!(p.is_file(), "no etcd binary at {} ({HINT})", p.display());
                p
            }
            None => std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("etcd"))
                .find(|p| p.is_file())
                .with_context(|| format!("no `etcd` binary on PATH ({HINT})"))?,
        };
        ensure!(
            tmpfs.is_dir(),
            "--tmpfs {} is not a directory (etcd's in-memory comparison keeps its data there)",
            tmpfs.display()
        );
        let version = first_line_of(&path, "--version")?;
        Ok(Etcd {
            path,
            version,
            tmpfs,
        })
    }
}

/// The first line `program arg` prints, waiting at most 10 s.
fn first_line_of(program: &Path, arg: &str) -> Result<String> {
    let mut child = Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {} {arg}", program.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} {arg} did not finish within 10 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_string(&mut stdout, &mut out)?;
    }
    Ok(out.lines().next().unwrap_or("").trim().to_owned())
}

/// The five member processes of one run and the temporary directory holding their
/// data directories and logs. Dropping it kills (SIGKILL) and reaps every member, then
/// removes the directory.
pub(crate) struct Members {
    /// The members, in order.
    children: Vec<Child>,
    /// Their client ports on 127.0.0.1, in the same order.
    client_ports: Vec<u16>,
    /// One lazily connected channel per member (client URL), in the same order.
    channels: Vec<Channel>,
    /// Declared last: removed after `drop` has killed the members using it.
    dir: tempfile::TempDir,
}

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A channel to `port` on 127.0.0.1, connecting when first used.
fn channel(port: u16) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(PUT_TIMEOUT)
        .tcp_nodelay(true))
}

impl Members {
    /// Starts a new five-member cluster on free ports of 127.0.0.1, its data directories
    /// in a temporary directory under `parent` (the system's temporary directory when
    /// `None`).
    fn start(etcd: &Path, parent: Option<&Path>) -> Result<Members> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("tcp-etcd-");
        let dir = match parent {
            Some(p) => builder.tempdir_in(p)?,
            None => builder.tempdir()?,
        };
        let ports = free_ports(2 * NODES)?;
        let (client_ports, peer_ports) = ports.split_at(NODES);
        let initial_cluster = peer_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}=http://127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("bench-{}-{}", std::process::id(), client_ports[0]);
        let mut members = Members {
            children: Vec::new(),
            client_ports: client_ports.to_vec(),
            channels: client_ports
                .iter()
                .map(|&p| Ok(channel(p)?.connect_lazy()))
                .collect::<Result<_>>()?,
            dir,
        };
        for i in 0..NODES {
            let name = format!("m{}", i + 1);
            let client_url = format!("http://127.0.0.1:{}", client_ports[i]);
            let peer_url = format!("http://127.0.0.1:{}", peer_ports[i]);
            let log = std::fs::File::create(members.log_path(i))?;
            let mut command = Command::new(etcd);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD") {
                    command.env_remove(key);
                }
            }
            let child = command
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(members.dir.path().join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", &token])
                .args(FLAGS.split(' '))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} --name {name}", etcd.display()))?;
            members.children.push(child);
        }
        Ok(members)
    }

    /// Member `i`'s log (its stderr).
    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{}.log", i + 1))
    }

    /// Fails if a member exited by itself, naming its log.
    fn check_running(&mut self) -> Result<()> {
        for i in 0..self.children.len() {
            if let Some(status) = self.children[i].try_wait()? {
                bail!(
                    "etcd member m{} exited ({status}); its log: {}",
                    i + 1,
                    self.log_path(i).display()
                );
            }
        }
        Ok(())
    }

    /// Waits until all five members answer and agree on a leader; returns its index.
    async fn await_leader(&mut self) -> Result<usize> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.check_running()?;
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for ch in &self.channels {
                let answer = tokio::time::timeout(
                    Duration::from_secs(1),
                    call::<_, StatusResponse>(
                        ch,
                        "/etcdserverpb.Maintenance/Status",
                        StatusRequest {},
                    ),
                )
                .await;
                if let Ok(Ok(status)) = answer {
                    ids.push(status.header.map_or(0, |h| h.member_id));
                    leaders.push(status.leader);
                }
            }
            if ids.len() == NODES && leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]) {
                if let Some(i) = ids.iter().position(|&id| id == leaders[0]) {
                    return Ok(i);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd: five members with one leader did not answer within {PATIENCE:?}; logs in {}",
                    self.dir.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each member's store revision, read from its own state.
    async fn revisions(&self) -> Result<Vec<i64>> {
        let mut out = Vec::new();
        for (i, ch) in self.channels.iter().enumerate() {
            let request = RangeRequest {
                key: KEYS_FROM.to_vec(),
                range_end: KEYS_TO.to_vec(),
                serializable: true,
                count_only: true,
            };
            let answer: RangeResponse = call(ch, "/etcdserverpb.KV/Range", request)
                .await
                .with_context(|| format!("etcd member m{}: Range", i + 1))?;
            out.push(answer.header.map_or(0, |h| h.revision));
        }
        Ok(out)
    }
}

/// One closed-loop client: Put after Put of a fresh 16-byte value under its own key,
/// until the phase says stop.
async fn client(channel: Channel, index: usize, phase: Phase) -> Recorder {
    let key = format!("bench/{index:05}").into_bytes();
    let mut rec = Recorder::new(phase);
    let mut n: u64 = 0;
    while rec.running() {
        n += 1;
        let mut value = vec![0u8; VALUE_BYTES];
        value[..8].copy_from_slice(&n.to_le_bytes());
        let request = PutRequest {
            key: key.clone(),
            value,
        };
        let started = Instant::now();
        match call::<_, PutResponse>(&channel, "/etcdserverpb.KV/Put", request).await {
            Ok(_) => rec.completed(started),
            Err(_) => {
                rec.failed();
                // Do not spin on a member that refuses at once.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    rec
}

/// Runs `clients` closed-loop clients, sharing `connections` gRPC connections to the
/// leader, against a fresh five-member etcd cluster (data directories under `parent`,
/// or the system's temporary directory) for `timing`. Then checks that every member
/// reaches the same revision, and that the Puts it counts lie between those the clients
/// saw complete and those plus the ones they gave up on.
pub(crate) async fn run(
    etcd: &Etcd,
    in_memory: bool,
    clients: usize,
    connections: usize,
    timing: &Timing,
    progress: &Progress,
) -> Result<RunStats> {
    let parent = in_memory.then_some(etcd.tmpfs.as_path());
    let mut members = Members::start(&etcd.path, parent)?;
    let leader = members.await_leader().await?;
    let before = members.revisions().await?[leader];

    // Each `connect` opens a connection (an HTTP/2 one) of its own to the leader.
    let mut channels = Vec::new();
    for _ in 0..connections.clamp(1, clients.max(1)) {
        let endpoint = channel(members.client_ports[leader])?;
        channels.push(
            endpoint
                .connect()
                .await
                .with_context(|| format!("etcd: connecting to the leader m{}", leader + 1))?,
        );
    }

    let phase = Phase::new();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(client(
                channels[i % channels.len()].clone(),
                i,
                phase.clone(),
            ))
        })
        .collect();
    let window = runtime::drive(&phase, timing, progress).await;
    let mut recorders = Vec::new();
    for t in tasks {
        recorders.push(t.await?);
    }
    let stats = RunStats::of(recorders, window);
    members.check_running()?;

    // Agreement: followers apply the last Puts a heartbeat later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut revisions = members.revisions().await?;
    while !revisions.windows(2).all(|w| w[0] == w[1]) {
        if Instant::now() >= deadline {
            bail!("etcd: members' revisions differ after 10 s: {revisions:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        revisions = members.revisions().await?;
    }
    let puts = u64::try_from(revisions[0] - before).unwrap_or(0);
    ensure!(
        stats.completed <= puts && puts <= stats.completed + stats.failed,
        "etcd: {puts} Puts applied for {} completed and {} failed",
        stats.completed,
        stats.failed
    );
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The hand-declared messages encode as protobuf says etcd's do: field 1 (key) and
    /// 2 (value) length-delimited; `serializable` is field 7 and `count_only` field 9.
    #[test]
    fn messages_match_etcd_field_numbers() {
        let put = PutRequest {
            key: b"k".to_vec(),
            value: b"vv".to_vec(),
        };
        assert_eq!(put.encode_to_vec(), [0x0a, 1, b'k', 0x12, 2, b'v', b'v']);
        let range = RangeRequest {
            key: b"a".to_vec(),
            range_end: b"b".to_vec(),
            serializable: true,
            count_only: true,
        };
        assert_eq!(
            range.encode_to_vec(),
            [0x0a, 1, b'a', 0x12, 1, b'b', 0x38, 1, 0x48, 1]
        );
        // A StatusResponse with header { member_id: 5 } and leader 5, plus a field we
        // do not declare (dbSize = 3), which is skipped.
        let status =
            StatusResponse::decode(&[0x0a, 2, 0x10, 5, 0x18, 3, 0x20, 5][..]).expect("decodes");
        assert_eq!(status.header.map(|h| h.member_id), Some(5));
        assert_eq!(status.leader, 5);
    }
}
