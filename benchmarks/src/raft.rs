//! openraft in the same process shape as [`crate::nodes`]: five `Raft` members on one
//! tokio runtime, written here against openraft 0.9's public API (learnt from its docs
//! and from the shape of its own in-process benchmark): an in-memory log store, an
//! in-memory state machine doing the same logical work as ours (a counter behind a
//! session table), and a network that calls the target member's `append_entries`,
//! `vote` and `install_snapshot` directly. Clients call the leader's `client_write`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Config, EmptyNode, Entry, EntryPayload, LogId, LogState, Raft, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StoredMembership, Vote,
};

use crate::runtime::{self, Phase, Recorder, RunStats, Timing};
use crate::{Progress, NODES};

/// A client command, as a request to our node carries it: session, request number and
/// the counter's operand.
#[derive(Clone, Debug)]
pub(crate) struct Cmd {
    /// The client's session (its index: openraft has no registration step).
    client: u64,
    /// The client's request number, from 1.
    seq: u64,
    /// What to add to the counter.
    add: u64,
}

openraft::declare_raft_types!(
    /// The types of this cluster: our command, the counter's output, `u64` node ids,
    /// no per-node data, snapshots as bytes in memory.
    pub(crate) Types:
        D = Cmd,
        R = u64,
        NodeId = u64,
        Node = EmptyNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// One member's handle.
type Member = Raft<Types>;

/// What a storage call fails with.
type StoreResult<T> = Result<T, StorageError<u64>>;

/// Locks a mutex, going on with the data if a panicking thread poisoned it (nothing
/// here leaves it half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The log store's data.
#[derive(Default)]
struct LogData {
    /// The last vote saved.
    vote: Option<Vote<u64>>,
    /// The last commit point saved.
    committed: Option<LogId<u64>>,
    /// The last entry removed from the front of the log.
    purged: Option<LogId<u64>>,
    /// The entries not purged yet, by index.
    log: BTreeMap<u64, Entry<Types>>,
}

/// An in-memory log store: a `BTreeMap` of entries by index, the vote and the commit
/// point, behind a mutex held only for the length of each call (never across an await).
/// Appends are "flushed" at once. Cloning shares the store (openraft reads the log
/// through a clone while the core appends).
#[derive(Clone, Default)]
pub(crate) struct LogStore(Arc<Mutex<LogData>>);

impl RaftLogReader<Types> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<Types>>> {
        Ok(lock(&self.0)
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<Types> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<Types>> {
        let data = lock(&self.0);
        let last = data.log.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: data.purged,
            last_log_id: last.or(data.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        lock(&self.0).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        Ok(lock(&self.0).vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        lock(&self.0).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        Ok(lock(&self.0).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<Types>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<Types>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut data = lock(&self.0);
            for e in entries {
                data.log.insert(e.log_id.index, e);
            }
        }
        // In memory: durable as soon as it is stored.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        lock(&self.0).log.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        let mut data = lock(&self.0);
        let keep = data.log.split_off(&(log_id.index + 1));
        data.log = keep;
        data.purged = Some(log_id);
        Ok(())
    }
}

/// The state machine's data: the counter, the session table and what openraft needs
/// to know about the applied prefix.
#[derive(Default)]
struct SmData {
    /// The last entry applied.
    last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    membership: StoredMembership<u64, EmptyNode>,
    /// The counter.
    total: u64,
    /// Session -> (last request number, its output): O(1) per command, as ours.
    sessions: HashMap<u64, (u64, u64)>,
    /// The last snapshot built or installed, with its encoded state.
    snapshot: Option<(SnapshotMeta<u64, EmptyNode>, Vec<u8>)>,
}

impl SmData {
    /// Executes a command once per (session, request number); a retry gets the output
    /// of its first execution.
    fn execute(&mut self, cmd: &Cmd) -> u64 {
        let session = self.sessions.entry(cmd.client).or_insert((0, 0));
        if cmd.seq <= session.0 {
            return session.1;
        }
        self.total = self.total.wrapping_add(cmd.add);
        *session = (cmd.seq, self.total);
        self.total
    }

    /// The counter and session table, encoded.
    fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let sessions: Vec<(u64, u64, u64)> = self
            .sessions
            .iter()
            .map(|(&c, &(seq, out))| (c, seq, out))
            .collect();
        postcard::to_allocvec(&(self.total, sessions))
    }

    /// Replaces the counter and session table with encoded ones.
    fn decode(&mut self, bytes: &[u8]) -> Result<(), postcard::Error> {
        let (total, sessions): (u64, Vec<(u64, u64, u64)>) = postcard::from_bytes(bytes)?;
        self.total = total;
        self.sessions = sessions
            .into_iter()
            .map(|(c, seq, out)| (c, (seq, out)))
            .collect();
        Ok(())
    }
}

/// A storage error about the state machine, from a codec failure.
fn sm_error(e: postcard::Error, write: bool) -> StorageError<u64> {
    let e = openraft::AnyError::new(&e);
    let io = if write {
        openraft::StorageIOError::write_state_machine(e)
    } else {
        openraft::StorageIOError::read_state_machine(e)
    };
    StorageError::IO { source: io }
}

/// An in-memory state machine: the same counter and session table as the OmniPaxos
/// side of `core`. Snapshots (taken by openraft's default policy, every 5,000 log
/// entries) encode both. Cloning shares the state: the benchmark reads it at the end.
#[derive(Clone, Default)]
pub(crate) struct StateMachine(Arc<Mutex<SmData>>);

impl StateMachine {
    /// The counter and the last applied index.
    fn view(&self) -> (u64, Option<u64>) {
        let data = lock(&self.0);
        (data.total, data.last_applied.map(|l| l.index))
    }
}

impl RaftSnapshotBuilder<Types> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<Types>> {
        let mut data = lock(&self.0);
        let bytes = data.encode().map_err(|e| sm_error(e, false))?;
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.membership.clone(),
            snapshot_id: format!("{}", data.last_applied.map_or(0, |l| l.index)),
        };
        data.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<Types> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, EmptyNode>)> {
        let data = lock(&self.0);
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<u64>>
    where
        I: IntoIterator<Item = Entry<Types>> + Send,
        I::IntoIter: Send,
    {
        let mut data = lock(&self.0);
        let mut outputs = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            outputs.push(match entry.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Normal(cmd) => data.execute(&cmd),
                EntryPayload::Membership(m) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), m);
                    0
                }
            });
        }
        Ok(outputs)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, EmptyNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let mut data = lock(&self.0);
        data.decode(&bytes).map_err(|e| sm_error(e, true))?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        data.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<Types>>> {
        Ok(lock(&self.0)
            .snapshot
            .as_ref()
            .map(|(meta, bytes)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(bytes.clone())),
            }))
    }
}

/// The in-process network: every member's handle by id. Filled once all five exist,
/// before the cluster is initialised (no member sends anything before that).
#[derive(Clone, Default)]
pub(crate) struct Router(Arc<Mutex<BTreeMap<u64, Member>>>);

impl Router {
    fn get(&self, id: u64) -> Option<Member> {
        lock(&self.0).get(&id).cloned()
    }
}

/// No member with this id is in the router (why a [`Peer`] is unreachable).
#[derive(Debug)]
struct NoMember(u64);

impl std::fmt::Display for NoMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no member {}", self.0)
    }
}

impl std::error::Error for NoMember {}

impl RaftNetworkFactory<Types> for Router {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> Peer {
        Peer {
            target,
            raft: self.get(target),
            router: self.clone(),
        }
    }
}

/// One member's view of another: calls go straight to the target's `Raft` handle.
pub(crate) struct Peer {
    /// The member this peer calls.
    target: u64,
    /// Its handle, once looked up.
    raft: Option<Member>,
    /// Where to look it up.
    router: Router,
}

impl Peer {
    /// The target's handle, looked up once.
    fn resolve(&mut self) -> Option<Member> {
        if self.raft.is_none() {
            self.raft = self.router.get(self.target);
        }
        self.raft.clone()
    }
}

/// The error of a call to a member the router does not know.
fn unreachable<E: std::error::Error>(target: u64) -> RPCError<u64, EmptyNode, E> {
    RPCError::Unreachable(Unreachable::new(&NoMember(target)))
}

impl RaftNetwork<Types> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let target = self.resolve().ok_or_else(|| unreachable(self.target))?;
        target
            .append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let target = self.resolve().ok_or_else(|| unreachable(self.target))?;
        target
            .install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        let target = self.resolve().ok_or_else(|| unreachable(self.target))?;
        target
            .vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// How long a client keeps retrying one command (leader changes) before giving up.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// One closed-loop client: command after command at the leader it knows, following
/// `ForwardToLeader` to a new one (same request number, so the session table executes
/// it once), until the phase says stop.
async fn client(id: u64, router: Router, mut leader: Member, phase: Phase) -> Recorder {
    let mut rec = Recorder::new(phase);
    let mut seq = 0;
    while rec.running() {
        seq += 1;
        let cmd = Cmd {
            client: id,
            seq,
            add: 1,
        };
        let started = Instant::now();
        loop {
            match leader.client_write(cmd.clone()).await {
                Ok(_) => {
                    rec.completed(started);
                    break;
                }
                Err(e) => {
                    if started.elapsed() > COMMAND_DEADLINE {
                        rec.failed();
                        break;
                    }
                    match e
                        .forward_to_leader::<EmptyNode>()
                        .and_then(|f| f.leader_id)
                        .and_then(|l| router.get(l))
                    {
                        Some(next) => leader = next,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }
    }
    rec
}

/// Runs `clients` closed-loop clients against a fresh five-member openraft cluster for
/// `timing`, then checks that every member applied the same entries to the same state,
/// and that the counter equals the commands the clients saw complete.
pub(crate) async fn run(clients: usize, timing: &Timing, progress: &Progress) -> Result<RunStats> {
    // The tuning of openraft's own in-process benchmark (longer election timeouts, so a
    // loaded leader keeps its lease; purges in batches); defaults otherwise (heartbeat
    // 50 ms, a snapshot every 5,000 entries).
    let config = Arc::new(
        Config {
            election_timeout_min: 200,
            election_timeout_max: 2000,
            purge_batch_size: 1024,
            ..Default::default()
        }
        .validate()?,
    );
    let router = Router::default();
    let ids: BTreeSet<u64> = (1..=NODES as u64).collect();
    let mut members = Vec::new();
    let mut machines = Vec::new();
    for &id in &ids {
        let sm = StateMachine::default();
        let raft = Raft::new(
            id,
            config.clone(),
            router.clone(),
            LogStore::default(),
            sm.clone(),
        )
        .await?;
        lock(&router.0).insert(id, raft.clone());
        members.push(raft);
        machines.push(sm);
    }
    members[0].initialize(ids.clone()).await?;
    let metrics = members[0]
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?;
    let leader_id = metrics.current_leader.context("no leader")?;
    let leader = router.get(leader_id).context("leader not in the router")?;

    let phase = Phase::new();
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| tokio::spawn(client(c + 1, router.clone(), leader.clone(), phase.clone())))
        .collect();
    let window = runtime::drive(&phase, timing, progress).await;
    let mut recorders = Vec::new();
    for t in tasks {
        recorders.push(t.await?);
    }
    let stats = RunStats::of(recorders, window);

    // Agreement: every member applies up to the leader's last entry, to the same state.
    let last = leader.metrics().borrow().last_log_index;
    for m in &members {
        m.wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(last, "all applied")
            .await?;
    }
    let views: Vec<(u64, Option<u64>)> = machines.iter().map(StateMachine::view).collect();
    for (i, v) in views.iter().enumerate() {
        ensure!(
            *v == views[0],
            "openraft: member {} disagrees (counter {} at index {:?}, member 1 has {} at {:?})",
            i + 1,
            v.0,
            v.1,
            views[0].0,
            views[0].1
        );
    }
    let total = views[0].0;
    if total < stats.completed || total > stats.completed + stats.failed {
        bail!(
            "openraft: counter {total} for {} completed and {} failed commands",
            stats.completed,
            stats.failed
        );
    }
    for m in &members {
        m.shutdown().await?;
    }
    Ok(stats)
}
