//! `snapshot`: a large state transferred to a new replica (issue 10, item 4).
//!
//! Three (or five) replicas run in this process over the real TCP transport on
//! 127.0.0.1 (ephemeral ports), each with a durable [`FileStorage`] (write-ahead log,
//! fsync) in a temporary directory. Their state machine is a map of blobs
//! ([`BlobMap`]), filled to `--state-mib` through the log by a few clients writing
//! values of `--value-kib`; the checkpoint interval is small enough that a checkpoint
//! of the whole state exists. Then:
//!
//! 1. **Probe.** One client writes small commands one at a time across at least one
//!    checkpoint of the full state, timed one by one: the longest commit gap is what a
//!    client sees of `take_checkpoint`. The replicas' own clocks split the leader's
//!    stall into `StateMachine::snapshot`, the rest of the round that took the
//!    checkpoint (encoding it with the session table, its CRC), and the persist call
//!    that wrote it (checkpoint file and fsync, log compaction).
//! 2. **Wipe.** A follower is stopped and its data directory deleted.
//! 3. **Transfer.** It starts again on the same address with an empty directory: it
//!    finds the cluster, recovers through a majority, receives the leader's checkpoint
//!    in chunks and the log suffix, and votes again. Measured: the time until it has
//!    installed the snapshot and until its commit point reaches the leader's, the
//!    chunks and bytes it received (counted by a wrapper around its transport), and
//!    the process's peak RSS (`VmHWM`, reset just before the new replica starts).
//! 4. **Check.** Its state's digest must equal the leader's (and every replica's).
//!
//! Every node is shut down at the end and on an error; on a panic, Ctrl-C or SIGTERM
//! the runtime is dropped, which stops every node task, connection and listener. The
//! data directories live in a temporary directory removed after the runtime.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use paxos_core::{
    spawn_node, AcceptorStatus, Client, ClientOptions, Config, Endpoint, Message, NodeHandle,
    NodeId, NodeOptions, PersistOp, PersistentState, ReplicaStatus, RestoreError, Role,
    StateMachine, Storage, StorageError, Transport, TransportError,
};
use paxos_storage_file::{FileStorage, FileStorageOptions};
use paxos_transport_tcp::{TcpConfig, TcpTransport, DEFAULT_MAX_FRAME_SIZE};
use tokio::net::TcpListener;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// The options of `snapshot` (its help text is the `Command::Snapshot` variant's).
#[derive(clap::Args)]
pub(crate) struct SnapshotArgs {
    /// The state to build, in MiB of values.
    #[arg(long, default_value_t = 100)]
    state_mib: u64,
    /// The size of each value written through the log, in KiB. A command travels in
    /// one peer frame (16 MiB), so at most 8192.
    #[arg(long, default_value_t = 256)]
    value_kib: u64,
    /// Replicas: 3 or 5.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Every replica checkpoints every this many executed slots.
    #[arg(long, default_value_t = 32)]
    checkpoint_interval: u64,
    /// Concurrent clients filling the state (one command in flight each).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Small commands one client writes after the fill, timed one by one (default:
    /// twice the checkpoint interval, so every replica checkpoints the full state at
    /// least once meanwhile).
    #[arg(long)]
    probe: Option<u64>,
    /// Entries per ACCEPT or FETCH-REPLY batch (default: as many values as fit in half
    /// a 16 MiB frame, as the README advises for large commands; the library's default
    /// is 1024).
    #[arg(long)]
    max_batch: Option<usize>,
    /// State transfer chunk size in KiB (the library's default: 1024).
    #[arg(long, default_value_t = 1024)]
    chunk_kib: u64,
    /// The longest wait for any one stage, in seconds.
    #[arg(long, default_value_t = 600)]
    patience: u64,
    /// Take checkpoints on the replica's path, as before snapshot jobs and background
    /// checkpoint files: `snapshot()` on the replica's thread and the checkpoint file
    /// written before `persist` returns.
    #[arg(long)]
    synchronous_checkpoints: bool,
    /// Write each compaction's base segment before `persist` returns, as before
    /// compactions off the path (`FileStorageOptions::background_compaction` off).
    #[arg(long)]
    synchronous_compaction: bool,
}

/// The settings every node of a run shares, derived from [`SnapshotArgs`].
#[derive(Clone)]
struct Settings {
    replicas: u64,
    value_bytes: usize,
    values: u64,
    checkpoint_interval: u64,
    max_batch: usize,
    chunk_bytes: usize,
    clients: usize,
    probe: u64,
    patience: Duration,
    synchronous_checkpoints: bool,
    synchronous_compaction: bool,
}

impl Settings {
    fn of(args: &SnapshotArgs) -> Result<Settings> {
        ensure!(
            args.replicas == 3 || args.replicas == 5,
            "--replicas must be 3 or 5"
        );
        ensure!(
            args.state_mib > 0 && args.clients > 0 && args.checkpoint_interval > 0,
            "--state-mib, --clients and --checkpoint-interval must be positive"
        );
        ensure!(
            (1..=8192).contains(&args.value_kib),
            "--value-kib must be between 1 and 8192 (a command travels in one 16 MiB frame)"
        );
        ensure!(
            (1..=8192).contains(&args.chunk_kib),
            "--chunk-kib must be between 1 and 8192 (a chunk travels in one 16 MiB frame)"
        );
        let value_bytes = (args.value_kib * KIB) as usize;
        let max_batch = args
            .max_batch
            .unwrap_or((DEFAULT_MAX_FRAME_SIZE / 2 / value_bytes).max(1));
        ensure!(max_batch > 0, "--max-batch must be positive");
        Ok(Settings {
            replicas: args.replicas,
            value_bytes,
            values: (args.state_mib * MIB).div_ceil(args.value_kib * KIB),
            checkpoint_interval: args.checkpoint_interval,
            max_batch,
            chunk_bytes: (args.chunk_kib * KIB) as usize,
            clients: args.clients,
            probe: args.probe.unwrap_or(2 * args.checkpoint_interval).max(1),
            patience: Duration::from_secs(args.patience.max(1)),
            synchronous_checkpoints: args.synchronous_checkpoints,
            synchronous_compaction: args.synchronous_compaction,
        })
    }

    fn state_bytes(&self) -> u64 {
        self.values * self.value_bytes as u64
    }
}

// ---------------------------------------------------------------------------------
// What each replica records: its state machine's and its storage's clocks.

/// A point in time on the calling thread: the wall clock, and the thread's time on a
/// CPU and waiting for one (`/proc/thread-self/schedstat`, nanoseconds; zero where it
/// cannot be read). The harness shares two cores with other jobs: the split tells
/// work from waiting.
#[derive(Clone, Copy)]
struct Stamp {
    at: Instant,
    cpu: u64,
    queued: u64,
}

impl Stamp {
    fn now() -> Stamp {
        let read = || -> Option<(u64, u64)> {
            let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            let mut fields = text.split_whitespace().map(str::parse::<u64>);
            Some((fields.next()?.ok()?, fields.next()?.ok()?))
        };
        let (cpu, queued) = read().unwrap_or((0, 0));
        Stamp {
            at: Instant::now(),
            cpu,
            queued,
        }
    }
}

/// What one thread did between two [`Stamp`]s.
#[derive(Clone, Copy, Default)]
struct Span {
    /// Wall-clock time.
    wall: Duration,
    /// Time on a CPU (the rest of `wall` is waiting: for a CPU, see `queued`, or for
    /// IO).
    cpu: Duration,
    /// Time ready to run, waiting for a CPU.
    queued: Duration,
}

impl Span {
    fn between(a: Stamp, b: Stamp) -> Span {
        Span {
            wall: b.at.saturating_duration_since(a.at),
            cpu: Duration::from_nanos(b.cpu.saturating_sub(a.cpu)),
            queued: Duration::from_nanos(b.queued.saturating_sub(a.queued)),
        }
    }
}

/// One checkpoint a replica took, as its state machine and storage timed it. The
/// three spans follow each other on the replica's thread: nothing else runs on the
/// replica meanwhile.
#[derive(Clone, Copy)]
struct CheckpointTiming {
    /// When `snapshot` was called.
    at: Instant,
    /// `StateMachine::snapshot` alone.
    snapshot: Span,
    /// From the end of `snapshot` to the start of the persist call that wrote the
    /// checkpoint: the rest of `take_checkpoint` (encoding the snapshot with the session
    /// table into the checkpoint, its CRC) and of its round.
    encode: Span,
    /// The persist call that wrote it (checkpoint file and fsyncs, log compaction).
    persist: Span,
    /// The checkpoint's encoded size.
    bytes: usize,
}

impl CheckpointTiming {
    /// From the start of `snapshot` to the end of the persist: the replica's stall.
    fn stall(&self) -> Duration {
        self.snapshot.wall + self.encode.wall + self.persist.wall
    }
}

/// What one replica's state machine and storage timed.
#[derive(Default)]
struct ClockRecords {
    /// A `snapshot` call (start, end) whose checkpoint has not been persisted yet.
    pending: Option<(Stamp, Stamp)>,
    /// Checkpoints taken by the replica itself.
    taken: Vec<CheckpointTiming>,
    /// Persist calls that wrote a checkpoint the replica did not take (installed by
    /// state transfer), with when each ended.
    installed: Vec<(Instant, Span)>,
    /// `StateMachine::restore` calls, with when each ended.
    restores: Vec<(Instant, Span)>,
}

/// A replica's clocks, shared by its state machine, its storage and the harness.
#[derive(Default)]
struct NodeClock(Mutex<ClockRecords>);

impl NodeClock {
    fn lock(&self) -> MutexGuard<'_, ClockRecords> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot_taken(&self, start: Stamp, end: Stamp) {
        self.lock().pending = Some((start, end));
    }

    fn restored(&self, start: Stamp, end: Stamp) {
        self.lock()
            .restores
            .push((end.at, Span::between(start, end)));
    }

    fn checkpoint_persisted(&self, start: Stamp, end: Stamp, bytes: usize) {
        let mut r = self.lock();
        match r.pending.take() {
            Some((s0, s1)) => r.taken.push(CheckpointTiming {
                at: s0.at,
                snapshot: Span::between(s0, s1),
                encode: Span::between(s1, start),
                persist: Span::between(start, end),
                bytes,
            }),
            None => r.installed.push((end.at, Span::between(start, end))),
        }
    }
}

// ---------------------------------------------------------------------------------
// The state machine.

/// A map of blobs: each command stores one value under one key and answers the total
/// size of the values. Its snapshot is every `(key, length, bytes)` in key order, so
/// taking one is a plain copy of the state.
struct BlobMap {
    values: BTreeMap<u64, Bytes>,
    /// The sum of the values' lengths.
    bytes: u64,
    clock: Arc<NodeClock>,
    /// Snapshots through [`StateMachine::snapshot_job`]: the map is cloned (a reference
    /// count per value) and encoded off the replica's thread.
    jobs: bool,
}

impl BlobMap {
    fn new(clock: Arc<NodeClock>, jobs: bool) -> Self {
        BlobMap {
            values: BTreeMap::new(),
            bytes: 0,
            clock,
            jobs,
        }
    }

    /// What `snapshot` returns for `values`.
    fn encode(values: &BTreeMap<u64, Bytes>, bytes: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 16 * values.len() + bytes as usize);
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        for (k, v) in values {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    /// A digest of the whole state (keys and values, in order).
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        for (k, v) in &self.values {
            k.hash(&mut h);
            v[..].hash(&mut h);
        }
        h.finish()
    }

    /// Decodes a snapshot, or `None` if it is malformed.
    fn decode(mut b: &[u8]) -> Option<(BTreeMap<u64, Bytes>, u64)> {
        fn u64_at(b: &mut &[u8]) -> Option<u64> {
            let (head, rest) = b.split_first_chunk::<8>()?;
            *b = rest;
            Some(u64::from_le_bytes(*head))
        }
        let count = u64_at(&mut b)?;
        let mut values = BTreeMap::new();
        let mut bytes = 0u64;
        for _ in 0..count {
            let key = u64_at(&mut b)?;
            let len = usize::try_from(u64_at(&mut b)?).ok()?;
            let (value, rest) = b.split_at_checked(len)?;
            b = rest;
            bytes += len as u64;
            values.insert(key, Bytes::copy_from_slice(value));
        }
        b.is_empty().then_some((values, bytes))
    }
}

impl StateMachine for BlobMap {
    type Command = (u64, Bytes);
    type Output = u64;

    fn apply(&mut self, (key, value): (u64, Bytes)) -> u64 {
        self.bytes += value.len() as u64;
        if let Some(old) = self.values.insert(key, value) {
            self.bytes -= old.len() as u64;
        }
        self.bytes
    }

    fn snapshot(&self) -> Vec<u8> {
        let started = Stamp::now();
        let out = BlobMap::encode(&self.values, self.bytes);
        self.clock.snapshot_taken(started, Stamp::now());
        out
    }

    fn snapshot_job(&self) -> Option<paxos_core::SnapshotJob> {
        if !self.jobs {
            return None;
        }
        let started = Stamp::now();
        let (values, bytes) = (self.values.clone(), self.bytes);
        // What the replica's thread spends: the capture.
        self.clock.snapshot_taken(started, Stamp::now());
        Some(paxos_core::SnapshotJob::new(move || {
            BlobMap::encode(&values, bytes)
        }))
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let started = Stamp::now();
        let (values, bytes) =
            BlobMap::decode(snapshot).ok_or_else(|| RestoreError::new("malformed blob map"))?;
        self.values = values;
        self.bytes = bytes;
        self.clock.restored(started, Stamp::now());
        Ok(())
    }
}

/// The value stored under `key`: `len` pseudo-random bytes derived from the key.
fn value_for(key: u64, len: usize) -> Bytes {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

// ---------------------------------------------------------------------------------
// Storage and transport wrappers that only count and time.

/// A [`FileStorage`] whose persist calls that write a checkpoint are timed.
struct TimedStorage {
    inner: FileStorage,
    clock: Arc<NodeClock>,
}

impl Storage for TimedStorage {
    fn load(&mut self) -> Result<PersistentState, StorageError> {
        self.inner.load()
    }

    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        let checkpoint = ops.iter().find_map(|op| match op {
            PersistOp::Checkpoint(cp) => Some(cp.data.len()),
            _ => None,
        });
        let Some(bytes) = checkpoint else {
            return self.inner.persist(ops);
        };
        let started = Stamp::now();
        let result = self.inner.persist(ops);
        self.clock
            .checkpoint_persisted(started, Stamp::now(), bytes);
        result
    }
}

/// The pieces of a state transfer one replica received.
#[derive(Default)]
struct Chunks {
    /// Checkpoint slot of the transfer the pieces belong to.
    slot: u64,
    /// Where the received bytes end (the next offset expected).
    end: u64,
    /// The checkpoint's announced size.
    total: u64,
    /// Pieces received that extended the transfer.
    fresh: u64,
    /// Pieces received that did not (duplicates, pieces of an abandoned transfer).
    stale: u64,
    /// Bytes of data in all pieces received.
    bytes: u64,
    /// When the first and the last piece arrived.
    first: Option<Instant>,
    last: Option<Instant>,
}

/// What one replica's transport carried, counted by [`Counted`].
#[derive(Default)]
struct Traffic {
    /// Messages received, and their encoded size (postcard, without the frame's
    /// length prefix and envelope).
    received: AtomicU64,
    received_bytes: AtomicU64,
    /// Entries received in FETCH-REPLYs, and their encoded size.
    fetched_entries: AtomicU64,
    fetched_bytes: AtomicU64,
    /// SNAPSHOT-REQUESTs sent (one per piece asked for, resends included).
    requests_sent: AtomicU64,
    /// Messages handed to the transport that encode larger than its frame limit: the
    /// TCP transport drops them.
    oversized_sent: AtomicU64,
    chunks: Mutex<Chunks>,
}

impl Traffic {
    fn chunks(&self) -> MutexGuard<'_, Chunks> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_received(&self, message: &Message) {
        let size = postcard::experimental::serialized_size(message).unwrap_or(0) as u64;
        self.received.fetch_add(1, Ordering::Relaxed);
        self.received_bytes.fetch_add(size, Ordering::Relaxed);
        match message {
            Message::FetchReply { entries, .. } => {
                self.fetched_entries
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                self.fetched_bytes.fetch_add(size, Ordering::Relaxed);
            }
            Message::SnapshotChunk {
                slot,
                total_len,
                offset,
                data,
                ..
            } => {
                let mut c = self.chunks();
                let now = Instant::now();
                c.first.get_or_insert(now);
                c.last = Some(now);
                c.bytes += data.len() as u64;
                if *offset == 0 && (*slot != c.slot || c.end == 0 || c.end == c.total) {
                    // The start of a (new) transfer.
                    c.slot = *slot;
                    c.total = *total_len;
                    c.end = 0;
                }
                if *slot == c.slot && *offset == c.end {
                    c.end += data.len() as u64;
                    c.fresh += 1;
                } else {
                    c.stale += 1;
                }
            }
            _ => {}
        }
    }
}

/// A transport that counts what passes through it ([`Traffic`]).
struct Counted<T> {
    inner: T,
    traffic: Arc<Traffic>,
    max_frame: usize,
}

impl<T: Transport> Transport for Counted<T> {
    fn send(&self, to: NodeId, message: Message) -> Result<(), TransportError> {
        if matches!(message, Message::SnapshotRequest { .. }) {
            self.traffic.requests_sent.fetch_add(1, Ordering::Relaxed);
        }
        let size = postcard::experimental::serialized_size(&message).unwrap_or(0);
        if size > self.max_frame {
            self.traffic.oversized_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.send(to, message)
    }

    async fn recv(&mut self) -> Option<(NodeId, Message)> {
        let got = self.inner.recv().await;
        if let Some((_, m)) = &got {
            self.traffic.on_received(m);
        }
        got
    }

    fn try_recv(&mut self) -> Option<(NodeId, Message)> {
        let got = self.inner.try_recv();
        if let Some((_, m)) = &got {
            self.traffic.on_received(m);
        }
        got
    }
}

// ---------------------------------------------------------------------------------
// The cluster.

/// One replica of the cluster: where it listens and keeps its data, and its handle
/// while it runs.
struct Member {
    addr: SocketAddr,
    dir: PathBuf,
    handle: Option<NodeHandle<BlobMap>>,
    clock: Arc<NodeClock>,
    traffic: Arc<Traffic>,
}

/// The replicas of one run, in this process.
struct Cluster {
    cluster_id: u64,
    settings: Settings,
    members: BTreeMap<NodeId, Member>,
}

impl Cluster {
    /// Binds a listener per replica on 127.0.0.1 (ephemeral ports) and starts them all
    /// with empty data directories under `dir`.
    async fn start(settings: &Settings, dir: &Path) -> Result<Cluster> {
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=settings.replicas {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
            members.insert(
                id,
                Member {
                    addr: l.local_addr()?,
                    dir: dir.join(format!("data-n{id}")),
                    handle: None,
                    clock: Arc::default(),
                    traffic: Arc::default(),
                },
            );
            listeners.insert(id, l);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut cluster = Cluster {
            cluster_id: (u64::from(std::process::id()) << 32) ^ u64::from(nanos),
            settings: settings.clone(),
            members,
        };
        for (id, l) in listeners {
            cluster.spawn(id, l)?;
        }
        Ok(cluster)
    }

    fn ids(&self) -> Vec<NodeId> {
        self.members.keys().copied().collect()
    }

    fn member(&self, id: NodeId) -> Result<&Member> {
        self.members
            .get(&id)
            .with_context(|| format!("no replica n{id}"))
    }

    fn handle(&self, id: NodeId) -> Result<&NodeHandle<BlobMap>> {
        self.member(id)?
            .handle
            .as_ref()
            .with_context(|| format!("n{id} is not running"))
    }

    /// The running replicas' handles.
    fn running(&self) -> Vec<NodeHandle<BlobMap>> {
        self.members
            .values()
            .filter_map(|m| m.handle.clone())
            .collect()
    }

    /// Starts replica `id` on `listener`, with its data directory as it is (a new one
    /// if missing) and fresh counters.
    fn spawn(&mut self, id: NodeId, listener: TcpListener) -> Result<()> {
        let ids = self.ids();
        let s = &self.settings;
        let mut tcp = TcpConfig::new(id, self.cluster_id, listener.local_addr()?);
        for (&peer, m) in &self.members {
            tcp = tcp.with_peer(peer, m.addr);
        }
        let max_frame = tcp.max_frame_size;
        let mut config = Config::new(id, ids);
        config.checkpoint_interval = s.checkpoint_interval;
        config.max_batch = s.max_batch;
        config.snapshot_chunk_bytes = s.chunk_bytes;
        let (transport, _calls) = TcpTransport::from_listener(tcp, listener)?;
        let member = self
            .members
            .get_mut(&id)
            .with_context(|| format!("no replica n{id}"))?;
        member.clock = Arc::default();
        member.traffic = Arc::default();
        let options = FileStorageOptions {
            background_checkpoints: !s.synchronous_checkpoints,
            background_compaction: !s.synchronous_compaction,
            ..FileStorageOptions::default()
        };
        let storage = FileStorage::open_with(&member.dir, self.cluster_id, id, options)
            .with_context(|| format!("opening {}", member.dir.display()))?;
        let handle = spawn_node(
            config,
            BlobMap::new(member.clock.clone(), !s.synchronous_checkpoints),
            Counted {
                inner: transport,
                traffic: member.traffic.clone(),
                max_frame,
            },
            TimedStorage {
                inner: storage,
                clock: member.clock.clone(),
            },
            NodeOptions::default(),
        )?;
        member.handle = Some(handle);
        Ok(())
    }

    /// Stops replica `id` and waits until it has stopped (its storage closed, its
    /// listener gone).
    async fn stop(&mut self, id: NodeId) -> Result<()> {
        let handle = self
            .members
            .get_mut(&id)
            .and_then(|m| m.handle.take())
            .with_context(|| format!("n{id} is not running"))?;
        handle.shutdown().await;
        Ok(())
    }

    /// Stops every replica still running.
    async fn shutdown(&mut self) {
        for m in self.members.values_mut() {
            if let Some(h) = m.handle.take() {
                h.shutdown().await;
            }
        }
    }

    /// Waits until one running replica leads and votes; returns its id.
    async fn await_leader(&self) -> Result<NodeId> {
        let deadline = Instant::now() + self.settings.patience;
        loop {
            for h in self.running() {
                let s = h.status().await?;
                if s.role == Role::Leader && s.acceptor == AcceptorStatus::Voter {
                    return Ok(h.id());
                }
            }
            if Instant::now() >= deadline {
                bail!("no leader within {:?}", self.settings.patience);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client of the running replicas, patient enough to wait through a checkpoint
    /// instead of retrying elsewhere.
    fn client(&self) -> Client<BlobMap> {
        let endpoints: Vec<Arc<dyn Endpoint>> = self
            .running()
            .into_iter()
            .map(|h| Arc::new(h) as Arc<dyn Endpoint>)
            .collect();
        let options = ClientOptions::default()
            .with_attempt_timeout(self.settings.patience)
            .with_default_deadline(self.settings.patience);
        Client::with_options(endpoints, options)
    }
}

// ---------------------------------------------------------------------------------
// Memory.

/// A field of /proc/self/status in bytes (`VmRSS`, `VmHWM`), if readable.
fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * KIB)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS (Linux ≥ 4.0).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

// ---------------------------------------------------------------------------------
// The stages.

/// Writes `settings.values` values through the log with `settings.clients` clients.
async fn fill(cluster: &Cluster, bar: &ProgressBar) -> Result<Duration> {
    let s = &cluster.settings;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..s.clients)
        .map(|_| {
            let mut client = cluster.client();
            let next = next.clone();
            let bar = bar.clone();
            let (values, len, patience) = (s.values, s.value_bytes, s.patience);
            tokio::spawn(async move {
                loop {
                    let key = next.fetch_add(1, Ordering::Relaxed);
                    if key >= values {
                        return Ok::<(), anyhow::Error>(());
                    }
                    client
                        .execute_within(&(key, value_for(key, len)), patience)
                        .await
                        .with_context(|| format!("writing value {key}"))?;
                    bar.inc(len as u64);
                }
            })
        })
        .collect();
    let mut result = Ok(());
    for t in tasks {
        let r = t.await.map_err(anyhow::Error::from).and_then(|r| r);
        if result.is_ok() {
            result = r;
        }
    }
    result.map(|()| started.elapsed())
}

/// What one client saw while writing small commands one at a time.
struct Probe {
    /// Each command's latency, in order.
    latencies: Vec<Duration>,
    /// When the longest one started, and its latency.
    longest_at: Instant,
    longest: Duration,
}

/// Writes `settings.probe` small commands one at a time, timing each.
async fn probe(cluster: &Cluster, bar: &ProgressBar) -> Result<Probe> {
    let s = &cluster.settings;
    let mut client = cluster.client();
    let mut latencies = Vec::new();
    let mut longest = (Duration::ZERO, Instant::now());
    for i in 0..s.probe {
        let key = u64::MAX - i;
        let started = Instant::now();
        client
            .execute_within(&(key, value_for(key, 8)), s.patience)
            .await
            .with_context(|| format!("probe command {i}"))?;
        let took = started.elapsed();
        if took > longest.0 {
            longest = (took, started);
        }
        latencies.push(took);
        bar.inc(1);
    }
    Ok(Probe {
        latencies,
        longest_at: longest.1,
        longest: longest.0,
    })
}

/// The new replica's transfer, as measured.
struct Transfer {
    /// The leader's commit point when the new replica started: the target.
    target: u64,
    /// The leader's latest checkpoint slot then.
    leader_checkpoint: Option<u64>,
    /// From the start of the new replica to its first piece, its last piece, the end
    /// of its `restore` (the snapshot installed in memory), the end of the persist
    /// that wrote it, and its commit point at the target with its vote back.
    first_chunk: Duration,
    last_chunk: Duration,
    restored: Option<Duration>,
    persisted: Option<Duration>,
    caught_up: Duration,
    /// `restore`'s own length, and the persist call that wrote the installed
    /// checkpoint.
    restore: Option<Span>,
    install_persist: Option<Span>,
    /// RSS just before the new replica started, the peak (`VmHWM`, reset then) when
    /// it had caught up, and RSS then.
    rss_before: Option<u64>,
    peak: Option<u64>,
    rss_after: Option<u64>,
    /// The replica's final status.
    status: ReplicaStatus,
}

/// Stops follower `victim`, deletes its data directory and starts it again on the same
/// address with an empty one; waits until it has caught up with the leader.
async fn transfer(
    cluster: &mut Cluster,
    leader: NodeId,
    victim: NodeId,
    bar: &ProgressBar,
) -> Result<Transfer> {
    let patience = cluster.settings.patience;
    cluster.stop(victim).await?;
    let (addr, dir) = {
        let m = cluster.member(victim)?;
        (m.addr, m.dir.clone())
    };
    std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    let leader_status = cluster.handle(leader)?.status().await?;
    let target = leader_status.commit_point;
    // The listener of the stopped node may take a moment to close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("binding {addr} again"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };

    let rss_before = proc_status("VmRSS");
    let reset = reset_peak_rss();
    let started = Instant::now();
    cluster.spawn(victim, listener)?;
    let handle = cluster.handle(victim)?.clone();
    let traffic = cluster.member(victim)?.traffic.clone();
    let status = loop {
        let s = handle.status().await?;
        let now = Instant::now();
        {
            let c = traffic.chunks();
            if c.total > 0 {
                bar.set_length(c.total);
                bar.set_position(c.end);
            }
        }
        if s.commit_point >= target && s.executed >= target && s.acceptor == AcceptorStatus::Voter {
            break s;
        }
        if now - started > patience {
            bail!("the new replica did not catch up within {patience:?}: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let caught_up = started.elapsed();
    let peak = if reset { proc_status("VmHWM") } else { None };
    let rss_after = proc_status("VmRSS");
    ensure!(
        status.snapshots_installed > 0,
        "the new replica caught up without installing a snapshot (the log was not compacted?)"
    );
    let (first_chunk, last_chunk) = {
        let c = traffic.chunks();
        let since = |t: Option<Instant>| t.map_or(Duration::ZERO, |t| t - started);
        (since(c.first), since(c.last))
    };
    let clock = cluster.member(victim)?.clock.clone();
    let records = clock.lock();
    let restored = records.restores.first().copied();
    let persisted = records.installed.first().copied();
    Ok(Transfer {
        target,
        leader_checkpoint: leader_status.checkpoint,
        first_chunk,
        last_chunk,
        restored: restored.map(|(end, _)| end - started),
        persisted: persisted.map(|(end, _)| end - started),
        caught_up,
        restore: restored.map(|(_, took)| took),
        install_persist: persisted.map(|(_, took)| took),
        rss_before,
        peak,
        rss_after,
        status,
    })
}

/// Waits until every running replica has executed the same slots, then compares
/// their digests; returns the common digest.
async fn agree(cluster: &Cluster) -> Result<u64> {
    let deadline = Instant::now() + cluster.settings.patience;
    loop {
        let mut views = Vec::new();
        for h in cluster.running() {
            let executed = h.status().await?.executed;
            let (digest, bytes) = h.with_state(|m| (m.digest(), m.bytes)).await?;
            views.push((h.id(), executed, digest, bytes));
        }
        if views
            .windows(2)
            .all(|w| (w[0].1, w[0].2) == (w[1].1, w[1].2))
        {
            return Ok(views[0].2);
        }
        if Instant::now() >= deadline {
            bail!("replicas disagree (id, executed, digest, bytes): {views:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a run measured.
struct Report {
    fill: Duration,
    fill_slots: u64,
    probe: Probe,
    /// The leader's checkpoints taken during the probe (the full state).
    leader_checkpoints: Vec<CheckpointTiming>,
    /// The followers' checkpoints taken during the probe.
    follower_checkpoints: Vec<CheckpointTiming>,
    leader: NodeId,
    victim: NodeId,
    transfer: Transfer,
    chunks: (u64, u64, u64, u64),
    received: (u64, u64),
    fetched: (u64, u64),
    requests_sent: u64,
    oversized: u64,
    digest: u64,
    state_bytes: u64,
    run_peak: Option<u64>,
}

/// Fill, probe, wipe, transfer, check: the whole run on a started cluster.
async fn measure(cluster: &mut Cluster, bar: &ProgressBar) -> Result<Report> {
    let s = cluster.settings.clone();
    bar.set_message("founding the cluster");
    let _ = cluster.await_leader().await?;

    bar.set_style(bytes_style());
    bar.set_length(s.state_bytes());
    bar.set_position(0);
    bar.set_message(format!(
        "filling: {} values of {} KiB",
        s.values,
        s.value_bytes as u64 / KIB
    ));
    let fill_time = fill(cluster, bar).await?;
    let leader = cluster.await_leader().await?;
    let fill_slots = cluster.handle(leader)?.status().await?.commit_point;

    bar.set_style(count_style());
    bar.set_length(s.probe);
    bar.set_position(0);
    bar.set_message("probe: small commands across a checkpoint");
    let probe_started = Instant::now();
    let probe_result = probe(cluster, bar).await?;
    let leader = cluster.await_leader().await?;
    let mut leader_checkpoints = Vec::new();
    let mut follower_checkpoints = Vec::new();
    for (&id, m) in &cluster.members {
        let during: Vec<CheckpointTiming> = m
            .clock
            .lock()
            .taken
            .iter()
            .filter(|c| c.at >= probe_started)
            .copied()
            .collect();
        if id == leader {
            leader_checkpoints = during;
        } else {
            follower_checkpoints.extend(during);
        }
    }
    let _ = agree(cluster).await?;

    let victim = cluster
        .ids()
        .into_iter()
        .rev()
        .find(|&id| id != leader)
        .ok_or_else(|| anyhow!("no follower to wipe"))?;
    bar.set_style(bytes_style());
    bar.set_length(s.state_bytes());
    bar.set_position(0);
    bar.set_message(format!("n{victim} wiped: state transfer from the cluster"));
    let run_peak = proc_status("VmHWM");
    let transfer = transfer(cluster, leader, victim, bar).await?;
    bar.set_message("checking that every replica holds the same state");
    let digest = agree(cluster).await?;
    let leader_bytes = cluster.handle(leader)?.with_state(|m| m.bytes).await?;

    let t = &cluster.member(victim)?.traffic;
    let chunks = {
        let c = t.chunks();
        (c.fresh, c.stale, c.bytes, c.total)
    };
    Ok(Report {
        fill: fill_time,
        fill_slots,
        probe: probe_result,
        leader_checkpoints,
        follower_checkpoints,
        leader,
        victim,
        transfer,
        chunks,
        received: (
            t.received.load(Ordering::Relaxed),
            t.received_bytes.load(Ordering::Relaxed),
        ),
        fetched: (
            t.fetched_entries.load(Ordering::Relaxed),
            t.fetched_bytes.load(Ordering::Relaxed),
        ),
        requests_sent: t.requests_sent.load(Ordering::Relaxed),
        oversized: cluster
            .members
            .values()
            .map(|m| m.traffic.oversized_sent.load(Ordering::Relaxed))
            .sum(),
        digest,
        state_bytes: leader_bytes,
        run_peak,
    })
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

fn count_style() -> ProgressStyle {
    ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Starts the cluster, measures, and shuts every node down whatever happened.
async fn run_async(settings: &Settings, dir: &Path, bar: &ProgressBar) -> Result<Report> {
    let mut cluster = Cluster::start(settings, dir).await?;
    let result = measure(&mut cluster, bar).await;
    bar.set_message("stopping the replicas");
    cluster.shutdown().await;
    result
}

/// Waits for Ctrl-C or SIGTERM.
async fn interrupted() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The `snapshot` subcommand.
pub(crate) fn run(args: SnapshotArgs) -> Result<()> {
    let settings = Settings::of(&args)?;
    // Warnings (a frame too large, a refused snapshot) are findings: show them.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // Declared before the runtime, so removed after it: no node task outlives it.
    let dir = tempfile::Builder::new().prefix("snapshot-").tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bar = ProgressBar::new(0);
    bar.set_style(count_style());
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run_async(&settings, dir.path(), &bar) => r,
            r = interrupted() => r.and(Err(anyhow!("interrupted; every replica was stopped"))),
        }
    });
    bar.finish_and_clear();
    drop(rt);
    print_report(&settings, &outcome?);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_report(s: &Settings, r: &Report) {
    let t = &r.transfer;
    let (fresh, stale, chunk_bytes, total) = r.chunks;
    println!(
        "snapshot: {} replicas in one process over TCP on 127.0.0.1, FileStorage (fsync) in a temp dir; state {:.1} MiB in {} values of {} KiB; checkpoint every {} slots; chunks of {} KiB; max_batch {}; n{} (follower) wiped and restarted empty, n{} leading; every replica's state digest equal ({:016x})",
        s.replicas,
        mib(r.state_bytes),
        s.values,
        s.value_bytes as u64 / KIB,
        s.checkpoint_interval,
        s.chunk_bytes as u64 / KIB,
        s.max_batch,
        r.victim,
        r.leader,
        r.digest,
    );
    println!();
    println!("| what | figure |");
    println!("|---|---:|");
    println!(
        "| fill: {} slots through the log, {} clients | {:.1} s ({:.1} MiB/s) |",
        r.fill_slots,
        s.clients,
        r.fill.as_secs_f64(),
        mib(s.state_bytes()) / r.fill.as_secs_f64().max(1e-9)
    );
    let mut lat = r.probe.latencies.clone();
    lat.sort_unstable();
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or_default();
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or_default();
    let max = lat.last().copied().unwrap_or_default();
    let slow = lat
        .iter()
        .filter(|l| **l > Duration::from_millis(50))
        .count();
    println!(
        "| probe: {} small commands, one client: p50 / p99 / longest commit latency; commits over 50 ms | {:.1} / {:.0} / {:.0} ms; {} |",
        lat.len(),
        ms(p50),
        ms(p99),
        ms(max),
        slow
    );
    let span = |p: &Span| {
        format!(
            "{:.0} (cpu {:.0}, runq {:.0})",
            ms(p.wall),
            ms(p.cpu),
            ms(p.queued)
        )
    };
    for (i, c) in r.leader_checkpoints.iter().enumerate() {
        let during =
            c.at <= r.probe.longest_at + r.probe.longest && r.probe.longest_at <= c.at + c.stall();
        println!(
            "| leader checkpoint {} ({:.1} MiB){}: stall, i.e. `snapshot()` + encode and CRC (the rest of `take_checkpoint` and its round) + persist (checkpoint file, fsyncs, log compaction), ms: wall (on a CPU, waiting for one) | {:.0} = {} + {} + {} |",
            i + 1,
            mib(c.bytes as u64),
            if during { ", during the longest commit" } else { "" },
            ms(c.stall()),
            span(&c.snapshot),
            span(&c.encode),
            span(&c.persist),
        );
    }
    if let Some(worst) = r.follower_checkpoints.iter().max_by_key(|c| c.stall()) {
        println!(
            "| longest follower checkpoint stall in the probe ({} taken), same split | {:.0} = {} + {} + {} |",
            r.follower_checkpoints.len(),
            ms(worst.stall()),
            span(&worst.snapshot),
            span(&worst.encode),
            span(&worst.persist),
        );
    }
    println!(
        "| leader's commit point / latest checkpoint when n{} restarted | {} / {} |",
        r.victim,
        t.target,
        t.leader_checkpoint
            .map_or_else(|| "none".to_string(), |c| c.to_string())
    );
    println!(
        "| new replica: start → first chunk (reconnection, recovery from a majority) | {:.0} ms |",
        ms(t.first_chunk)
    );
    println!(
        "| new replica: first chunk → last chunk | {:.0} ms ({:.0} MiB/s) |",
        ms(t.last_chunk - t.first_chunk),
        mib(chunk_bytes.saturating_sub(s.chunk_bytes as u64))
            / (t.last_chunk - t.first_chunk).as_secs_f64().max(1e-9)
    );
    if let (Some(end), Some(took)) = (t.restored, t.restore) {
        println!(
            "| new replica: last chunk → installed in memory (CRC, decoding, `restore()`); `restore()` alone, ms: wall (on a CPU, waiting for one) | {:.0} ms; {} |",
            ms(end.saturating_sub(t.last_chunk)),
            span(&took),
        );
    }
    if let (Some(end), Some(took)) = (t.persisted, t.install_persist) {
        println!(
            "| new replica: persisting the installed checkpoint (file, fsyncs, log compaction), ms: wall (on a CPU, waiting for one); done at | {}; {:.0} ms |",
            span(&took),
            ms(end)
        );
    }
    println!(
        "| **new replica: start → caught up** (commit point {} ≥ leader's, voting) | **{:.0} ms** |",
        t.status.commit_point,
        ms(t.caught_up)
    );
    println!(
        "| chunks received: extending the transfer / stale (duplicates, resends) | {fresh} / {stale} |"
    );
    println!(
        "| snapshot bytes received (data in chunks) / checkpoint size | {:.1} / {:.1} MiB |",
        mib(chunk_bytes),
        mib(total)
    );
    println!("| SNAPSHOT-REQUESTs sent | {} |", r.requests_sent);
    println!(
        "| log suffix fetched after the snapshot: entries / encoded | {} / {:.1} KiB |",
        r.fetched.0,
        r.fetched.1 as f64 / KIB as f64
    );
    println!(
        "| all messages the new replica received: count / encoded | {} / {:.1} MiB |",
        r.received.0,
        mib(r.received.1)
    );
    let show =
        |b: Option<u64>| b.map_or_else(|| "n/a".to_string(), |b| format!("{:.0} MiB", mib(b)));
    println!(
        "| process RSS before the new replica started / peak during the transfer (VmHWM, reset at start) / RSS after | {} / {} / {} |",
        show(t.rss_before),
        show(t.peak),
        show(t.rss_after)
    );
    if let (Some(b), Some(p)) = (t.rss_before, t.peak) {
        println!(
            "| peak above the RSS before, in checkpoints of {:.1} MiB | {:.0} MiB = {:.2}× |",
            mib(total),
            mib(p.saturating_sub(b)),
            p.saturating_sub(b) as f64 / total.max(1) as f64
        );
    }
    println!(
        "| process peak RSS before the transfer (fill and probe, {} replicas) | {} |",
        s.replicas,
        show(r.run_peak)
    );
    if r.oversized > 0 {
        println!(
            "| messages dropped for exceeding the 16 MiB frame (all replicas) | {} |",
            r.oversized
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_map_snapshot_round_trips_and_refuses_garbage() {
        let mut a = BlobMap::new(Arc::default(), false);
        for key in 0..5 {
            a.apply((key * 7, value_for(key, 100 + key as usize)));
        }
        let snapshot = a.snapshot();
        let mut b = BlobMap::new(Arc::default(), false);
        b.restore(&snapshot).expect("restores");
        assert_eq!((b.digest(), b.bytes), (a.digest(), a.bytes));
        for cut in [1, 9, snapshot.len() - 1] {
            assert!(b.restore(&snapshot[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = snapshot.clone();
        longer.push(0);
        assert!(b.restore(&longer).is_err());
        assert_eq!(b.digest(), a.digest(), "a failed restore changes nothing");
    }

    /// A small run end to end: 1 MiB through the log, a checkpoint every 4 slots, the
    /// wiped replica recovers through 64 KiB chunks and ends with the leader's state
    /// (the run checks the digests itself and fails otherwise).
    #[test]
    fn smoke_small_state_transfer() {
        let args = SnapshotArgs {
            state_mib: 1,
            value_kib: 64,
            replicas: 3,
            checkpoint_interval: 4,
            clients: 2,
            probe: Some(8),
            max_batch: None,
            chunk_kib: 64,
            patience: 60,
            synchronous_checkpoints: false,
            synchronous_compaction: false,
        };
        let settings = Settings::of(&args).expect("valid settings");
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let bar = ProgressBar::hidden();
        let r = rt
            .block_on(run_async(&settings, dir.path(), &bar))
            .expect("runs and agrees");
        // The values, and the probe's 8 values of 8 bytes.
        assert_eq!(r.state_bytes, MIB + 64);
        assert!(r.transfer.status.snapshots_installed > 0);
        assert!(
            r.chunks.0 >= 16,
            "1 MiB in chunks of 64 KiB: {:?}",
            r.chunks
        );
        assert_eq!(r.oversized, 0);
    }
}
