//! The sans-IO Multi-Paxos replica.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::ReplicaError;
use crate::message::{Message, PromiseEntry};
use crate::sessions::{Session, SessionCheck, Sessions};
use crate::traits::{AcceptorStatus, Checkpoint, PersistOp, PersistentState, StateMachine};
use crate::types::{Ballot, ClientId, NodeId, Reply, Request, Response, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

mod recovery;

/// How many view changes a replica remembers for inspection.
const VIEW_HISTORY: usize = 1024;

/// How far above its commit point an acceptor accepts proposals, in units of
/// [`Config::max_inflight`]. Bounds the uncommitted entries an acceptor holds (and so the
/// size of its PROMISE); a follower further behind catches up by fetching first.
const ACCEPT_WINDOW_FACTOR: u64 = 4;

/// The outputs of a [`Replica`], drained with [`Replica::take_ready`].
///
/// Handle them in this order: make every [`PersistOp`] in `persist` durable (one
/// [`Storage::persist`](crate::Storage::persist) call), *then* send `messages`, *then*
/// deliver `replies`. Messages and replies vouch for the persisted state (a PROMISE for
/// the promised ballot, an ACCEPTED for the accepted value, a reply for a committed
/// entry), so none may leave before the writes they depend on are stored.
#[derive(Debug, Default)]
pub struct Ready {
    /// Writes to make durable before anything else.
    pub persist: Vec<PersistOp>,
    /// Messages to send, as `(destination, message)`.
    pub messages: Vec<(NodeId, Message)>,
    /// Answers to client requests.
    pub replies: Vec<Reply>,
}

impl Ready {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.messages.is_empty() && self.replies.is_empty()
    }
}

/// A replica's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs phase 1 to become leader.
    Candidate,
    /// Leads: proposes, counts acceptances, commits.
    Leader,
}

/// A slot's status, as PrintStatus shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum SlotStatus {
    /// Nothing known about the slot (`X`).
    None,
    /// A value was accepted but is not known to be chosen (`A`).
    Accepted,
    /// The value is known to be chosen but not executed yet (`C`).
    Committed,
    /// The value was executed (`E`).
    Executed,
    /// The slot was executed and then compacted into a checkpoint; its value is gone
    /// from the log (`E` in the original system's terms; shown as `K`).
    Compacted,
}

impl SlotStatus {
    /// The one-letter code of the original system: `X`, `A`, `C` or `E`.
    pub fn code(self) -> char {
        match self {
            SlotStatus::None => 'X',
            SlotStatus::Accepted => 'A',
            SlotStatus::Committed => 'C',
            SlotStatus::Executed => 'E',
            SlotStatus::Compacted => 'K',
        }
    }
}

/// One slot of a replica's log, for inspection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SlotInfo {
    /// The slot.
    pub slot: Slot,
    /// Its status at this replica.
    pub status: SlotStatus,
    /// The ballot it was accepted at, if any.
    pub ballot: Option<Ballot>,
    /// The value, if any.
    pub value: Option<Value>,
}

impl SlotInfo {
    /// A slot's information (for tests and tools that build their own logs).
    pub fn new(
        slot: Slot,
        status: SlotStatus,
        ballot: Option<Ballot>,
        value: Option<Value>,
    ) -> Self {
        SlotInfo {
            slot,
            status,
            ballot,
            value,
        }
    }
}

/// Whether a view change was announced by this replica or received from a new leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ViewDirection {
    /// This replica won phase 1 and sent NEW-VIEW.
    Sent,
    /// This replica received a NEW-VIEW.
    Received,
    /// This replica adopted a new leader from its ACCEPT or heartbeat, its NEW-VIEW
    /// having been lost or delayed.
    Adopted,
}

/// One view change, as PrintView shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ViewChange {
    /// The new leader's ballot.
    pub ballot: Ballot,
    /// The new leader.
    pub leader: NodeId,
    /// Sent or received.
    pub direction: ViewDirection,
    /// The slots the NEW-VIEW covered (`start..end`; empty when adopted).
    pub slots: Range<Slot>,
    /// How many of those were no-op gap fillers.
    pub noops: u64,
    /// The replica's tick count when it happened.
    pub tick: u64,
}

/// A summary of a replica's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// The replica's id.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// The highest ballot it promised.
    pub promised: Ballot,
    /// The leader it believes in.
    pub leader: Option<NodeId>,
    /// Every slot below this is chosen.
    pub commit_point: Slot,
    /// Every slot below this was executed.
    pub executed: Slot,
    /// Log entries below this slot were compacted away (they are covered by the
    /// latest checkpoint). It trails the latest checkpoint by one interval, so a
    /// follower slightly behind can still fetch entries instead of a snapshot.
    pub compacted_below: Slot,
    /// The slot of the latest checkpoint taken or installed, if any.
    pub checkpoint: Option<Slot>,
    /// How many checkpoints received from peers (state transfer) this replica installed
    /// since it started.
    pub snapshots_installed: u64,
    /// One past the highest slot it knows anything about.
    pub log_end: Slot,
    /// Live client sessions.
    pub sessions: usize,
    /// Whether the replica votes, or is still founding or recovering from lost state.
    pub acceptor: AcceptorStatus,
    /// Its incarnation (0 for a founding member, raised by each recovery).
    pub incarnation: u64,
    /// Ticks since it started.
    pub tick: u64,
}

/// What a [`Checkpoint`]'s data holds.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    state_machine: Bytes,
    sessions: Vec<(ClientId, Session)>,
}

#[derive(Clone, Debug)]
struct Entry {
    ballot: Ballot,
    value: Value,
    chosen: bool,
}

#[derive(Debug)]
struct Promised {
    commit_point: Slot,
    entries: Vec<PromiseEntry>,
    truncated: bool,
    /// The promiser's incarnation when it promised.
    incarnation: u64,
}

#[derive(Debug)]
struct Candidate {
    ballot: Ballot,
    /// Echoed by the promises that count (see `recovery.rs`).
    nonce: u64,
    /// The latest incarnation known of each peer: ours, and what promises told us.
    known: BTreeMap<NodeId, u64>,
    from_slot: Slot,
    promises: BTreeMap<NodeId, Promised>,
    deadline: u64,
    last_sent: u64,
}

#[derive(Debug)]
struct Inflight {
    value: Value,
    acks: u64,
    last_sent: u64,
}

#[derive(Debug)]
struct Leader {
    ballot: Ballot,
    next_slot: Slot,
    inflight: BTreeMap<Slot, Inflight>,
    queue: VecDeque<Request>,
    /// Requests proposed and not yet executed, by client.
    proposed: HashMap<ClientId, u64>,
    /// Proposals made since the last flush, to go out in one ACCEPT per peer.
    fresh: Vec<(Slot, Value)>,
    last_broadcast: u64,
    announced_commit: Slot,
    /// Tick at which each member (by index) was last heard from.
    heard: Vec<u64>,
    /// The oldest incarnation of each member (by index) whose ACCEPTEDs count.
    min_incarnation: Vec<u64>,
}

#[derive(Debug)]
enum RoleState {
    Follower,
    Candidate(Candidate),
    Leader(Leader),
}

/// A Multi-Paxos replica: proposer, acceptor and learner in one, with no IO.
///
/// `Replica` is synchronous and deterministic. It never reads a clock (time is the
/// number of [`tick`](Replica::tick) calls), never touches the network or disk, and draws
/// randomness only from [`Config::seed`]. The same inputs always give the same outputs,
/// which is what lets the crate's simulation test it under every interleaving it likes.
///
/// # Driving it
/// Feed it inputs, then drain its outputs:
/// 1. inputs: [`handle_message`](Replica::handle_message) for a message from a peer,
///    [`handle_request`](Replica::handle_request) for a client request, and
///    [`tick`](Replica::tick) at a steady pace (heartbeats, elections and retransmissions
///    count ticks);
/// 2. outputs: [`take_ready`](Replica::take_ready) returns a [`Ready`]. Persist its
///    writes, then send its messages, then deliver its replies — in that order.
///
/// Several inputs may be fed before one `take_ready`: the outputs accumulate, proposals
/// are batched into one ACCEPT per peer and the writes into one persist call (group
/// commit). Committed entries are executed inside the replica, strictly in slot order,
/// against the [`StateMachine`] it owns; their replies wait in the `Ready` like every
/// other output, so a client never hears of a result before the writes it depends on are
/// durable.
///
/// ```
/// use paxos_core::{Config, MemStorage, Replica, Request, Storage, StateMachine, RestoreError};
/// # #[derive(Default)] struct Noop;
/// # impl StateMachine for Noop {
/// #     type Command = u8; type Output = u8;
/// #     fn apply(&mut self, c: u8) -> u8 { c }
/// #     fn snapshot(&self) -> Vec<u8> { vec![] }
/// #     fn restore(&mut self, _: &[u8]) -> Result<(), RestoreError> { Ok(()) }
/// # }
/// let mut storage = MemStorage::new();
/// let config = Config::new(1, vec![1]);
/// let mut replica = Replica::new(config, Noop, storage.load().unwrap()).unwrap();
/// // A single-member cluster elects itself after an election timeout.
/// for _ in 0..100 {
///     replica.tick();
///     let ready = replica.take_ready();
///     storage.persist(&ready.persist).unwrap(); // 1. persist
///     assert!(ready.messages.is_empty());          // 2. send (no peers here)
/// }
/// replica.handle_request(Request::register(7));
/// let ready = replica.take_ready();
/// storage.persist(&ready.persist).unwrap();
/// assert_eq!(ready.replies.len(), 1);                // 3. reply
/// ```
#[derive(Debug)]
pub struct Replica<S> {
    cfg: Config,
    /// This replica's index in `cfg.members`.
    me: usize,
    quorum: u32,
    rng: ChaCha8Rng,
    sm: S,
    sessions: Sessions,

    /// Whether this replica votes; a replica without state recovers first.
    status: AcceptorStatus,
    /// This acceptor's incarnation (raised by each recovery from lost state).
    incarnation: u64,
    /// The latest incarnation known of each peer that recovered from lost state.
    peer_inc: BTreeMap<NodeId, u64>,
    /// A founding or recovery under way (see `recovery.rs`).
    recovery: Option<recovery::Recovery>,
    /// The recovery attempt (incarnation, nonce) this voter last granted to each peer,
    /// so that resends of it are granted again (in memory only: after a restart a
    /// resend is refused and the peer simply tries again).
    granted_recovery: BTreeMap<NodeId, (u64, u64)>,

    promised: Ballot,
    log: BTreeMap<Slot, Entry>,
    commit_point: Slot,
    executed: Slot,

    role: RoleState,
    leader: Option<NodeId>,
    now: u64,
    last_heard_leader: u64,
    election_deadline: u64,
    max_round_seen: u64,
    /// A pre-vote under way: the ballot asked about and who granted it.
    prevote: Option<(Ballot, u64)>,

    /// Entries below this slot were compacted into `checkpoint`.
    log_start: Slot,
    /// The latest checkpoint. The log is kept from the checkpoint before it, so a
    /// follower slightly behind can still fetch entries instead of a snapshot.
    checkpoint: Option<Checkpoint>,

    known_commit: Slot,
    fetch_from: Option<NodeId>,
    last_fetch: u64,
    fetch_attempts: u64,

    snapshots_installed: u64,
    awaiting: HashSet<(ClientId, u64)>,
    views: VecDeque<ViewChange>,
    ready: Ready,
}

impl<S: StateMachine> Replica<S> {
    /// Builds a replica from its configuration, a fresh state machine and the state its
    /// [`Storage`](crate::Storage) recovered. The recovered checkpoint, if any, is
    /// installed, then the entries between it and the recovered commit point are executed
    /// again to rebuild the state machine and the session table.
    ///
    /// Fails on an invalid configuration, and on a checkpoint that is damaged or that
    /// the state machine cannot restore.
    pub fn new(
        cfg: Config,
        state_machine: S,
        state: PersistentState,
    ) -> Result<Self, ReplicaError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let first_timeout = cfg.election_ticks + rng.next_u64() % cfg.election_ticks;
        let log: BTreeMap<Slot, Entry> = state
            .log
            .into_iter()
            .map(|(s, e)| {
                (
                    s,
                    Entry {
                        ballot: e.ballot,
                        value: e.value,
                        chosen: e.chosen,
                    },
                )
            })
            .collect();
        #[allow(unused_mut)]
        let mut quorum = cfg.quorum() as u32;
        #[cfg(test)]
        if cfg.mutation == Mutation::QuorumOfTwo {
            quorum = 2.min(cfg.members.len() as u32);
        }
        let me = cfg.members.iter().position(|m| *m == cfg.id).unwrap_or(0);
        let mut r = Replica {
            me,
            quorum,
            rng,
            sm: state_machine,
            sessions: Sessions::new(),
            status: state.status,
            incarnation: state.incarnation,
            peer_inc: state.peer_incarnations,
            recovery: None,
            granted_recovery: BTreeMap::new(),
            promised: state.promised,
            log,
            commit_point: 0,
            executed: 0,
            role: RoleState::Follower,
            leader: None,
            now: 0,
            last_heard_leader: 0,
            election_deadline: first_timeout,
            prevote: None,
            max_round_seen: state.promised.round,
            log_start: 0,
            checkpoint: None,
            known_commit: state.commit_point,
            fetch_from: None,
            last_fetch: 0,
            fetch_attempts: 0,
            snapshots_installed: 0,
            awaiting: HashSet::new(),
            views: VecDeque::new(),
            ready: Ready::default(),
            cfg,
        };
        // Entries below the stored commit point are chosen; anything missing there is
        // fetched like any other gap.
        if let Some(cp) = state.checkpoint {
            r.install(cp).map_err(ReplicaError::Checkpoint)?;
        }
        let stored_commit = state.commit_point;
        let start = r.log_start;
        for (_, e) in r.log.range_mut(start..stored_commit.max(start)) {
            e.chosen = true;
        }
        r.commit_point = r.first_unchosen(r.commit_point);
        // Replaying may take a checkpoint; its writes go out with the first `Ready`.
        r.execute();
        #[cfg(test)]
        if r.cfg.mutation == Mutation::AmnesiaVotesAtOnce {
            r.status = AcceptorStatus::Voter;
        }
        if r.status != AcceptorStatus::Voter {
            // No state of our own (or a recovery cut short): find out from the peers
            // whether the cluster is new, and recover if it is not.
            let incarnation = r.incarnation.max(1);
            r.start_recovery(incarnation);
        }
        Ok(r)
    }

    /// The replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The state machine, for inspection.
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// The replicated session table.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The current role.
    pub fn role(&self) -> Role {
        match self.role {
            RoleState::Follower => Role::Follower,
            RoleState::Candidate(_) => Role::Candidate,
            RoleState::Leader(_) => Role::Leader,
        }
    }

    /// True when this replica is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// The leader this replica believes in.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this replica votes, or is still founding or recovering (see
    /// [`AcceptorStatus`]).
    pub fn acceptor_status(&self) -> AcceptorStatus {
        self.status
    }

    /// This replica's incarnation: 0 for a founding member, raised by each recovery
    /// from lost state.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// Every slot below this is chosen.
    pub fn commit_point(&self) -> Slot {
        self.commit_point
    }

    /// Every slot below this was executed.
    pub fn executed(&self) -> Slot {
        self.executed
    }

    /// A summary of the replica's state.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            id: self.cfg.id,
            role: self.role(),
            promised: self.promised,
            leader: self.leader,
            commit_point: self.commit_point,
            executed: self.executed,
            compacted_below: self.log_start,
            checkpoint: self.checkpoint.as_ref().map(|c| c.slot),
            snapshots_installed: self.snapshots_installed,
            log_end: self.log.last_key_value().map_or(0, |(s, _)| s + 1),
            sessions: self.sessions.len(),
            acceptor: self.status,
            incarnation: self.incarnation,
            tick: self.now,
        }
    }

    /// The status and value of one slot.
    pub fn slot(&self, slot: Slot) -> SlotInfo {
        match self.log.get(&slot) {
            None if slot < self.log_start => SlotInfo {
                slot,
                status: SlotStatus::Compacted,
                ballot: None,
                value: None,
            },
            None => SlotInfo {
                slot,
                status: SlotStatus::None,
                ballot: None,
                value: None,
            },
            Some(e) => SlotInfo {
                slot,
                status: self.status_of(slot, e),
                ballot: Some(e.ballot),
                value: Some(e.value.clone()),
            },
        }
    }

    /// Every slot the replica knows about in `range`, in order (unknown slots are left out).
    pub fn log(&self, range: Range<Slot>) -> Vec<SlotInfo> {
        self.log
            .range(range)
            .map(|(s, e)| SlotInfo {
                slot: *s,
                status: self.status_of(*s, e),
                ballot: Some(e.ballot),
                value: Some(e.value.clone()),
            })
            .collect()
    }

    /// The latest checkpoint, if one was taken or installed.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The view changes this replica sent or received, oldest first (the latest
    /// 1024 are kept).
    pub fn view_changes(&self) -> impl Iterator<Item = &ViewChange> {
        self.views.iter()
    }

    fn status_of(&self, slot: Slot, e: &Entry) -> SlotStatus {
        if slot < self.executed {
            SlotStatus::Executed
        } else if e.chosen {
            SlotStatus::Committed
        } else {
            SlotStatus::Accepted
        }
    }

    /// Drains the outputs accumulated since the last call. See [`Ready`] for the order
    /// in which to handle them.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_leader();
        std::mem::take(&mut self.ready)
    }

    // ------------------------------------------------------------------ inputs

    /// Advances the replica's clock by one tick: heartbeats, election timeouts,
    /// retransmissions and catch-up all count ticks.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.status != AcceptorStatus::Voter {
            self.recovery_tick();
            return;
        }
        match &mut self.role {
            RoleState::Follower => {
                if self.now >= self.election_deadline {
                    self.start_prevote();
                }
            }
            RoleState::Candidate(c) => {
                if self.now >= c.deadline {
                    // The election failed: ask again before raising the ballot further.
                    self.become_follower(None);
                    self.start_prevote();
                } else if self.now - c.last_sent >= self.cfg.retransmit_ticks {
                    c.last_sent = self.now;
                    let (ballot, from_slot, nonce) = (c.ballot, c.from_slot, c.nonce);
                    let missing: Vec<NodeId> = self
                        .cfg
                        .members
                        .iter()
                        .copied()
                        .filter(|m| *m != self.cfg.id && !c.promises.contains_key(m))
                        .collect();
                    for m in missing {
                        self.send(
                            m,
                            Message::Prepare {
                                ballot,
                                from_slot,
                                nonce,
                            },
                        );
                    }
                }
            }
            RoleState::Leader(_) => self.leader_tick(),
        }
        self.maybe_fetch();
    }

    /// Handles a client request. The answer comes later in [`Ready::replies`]: a
    /// redirect when this replica is not the leader, the cached reply for a request
    /// already executed, or the result once the request is chosen and executed.
    pub fn handle_request(&mut self, request: Request) {
        let RoleState::Leader(leader) = &mut self.role else {
            // Followers, candidates and replicas still founding or recovering.
            let leader = self.leader.filter(|l| *l != self.cfg.id);
            self.reply(request.client, request.seq, Response::Redirect { leader });
            return;
        };
        if !request.is_register() {
            match self.sessions.check(request.client, request.seq) {
                SessionCheck::Duplicate(reply) => {
                    let reply = self.cached_reply(reply);
                    self.reply(request.client, request.seq, Response::Ok(reply));
                    return;
                }
                SessionCheck::Stale => {
                    self.reply(request.client, request.seq, Response::Stale);
                    return;
                }
                SessionCheck::Fresh | SessionCheck::Unknown => {}
            }
            if let Err(e) = postcard::from_bytes::<S::Command>(&request.payload) {
                let reason = format!("undecodable command: {e}");
                self.reply(request.client, request.seq, Response::Invalid { reason });
                return;
            }
        }
        let key = (request.client, request.seq);
        if leader.proposed.get(&request.client) == Some(&request.seq)
            || self.awaiting.contains(&key)
        {
            // Already proposed or queued: the reply goes out when it executes.
            self.awaiting.insert(key);
            return;
        }
        if self.awaiting.len() >= self.cfg.max_pending {
            self.reply(request.client, request.seq, Response::Busy);
            return;
        }
        self.awaiting.insert(key);
        leader.queue.push_back(request);
        self.pump();
    }

    /// Handles a message from peer `from`. Messages from non-members are ignored.
    pub fn handle_message(&mut self, from: NodeId, message: Message) {
        let Some(from_idx) = self.index_of(from) else {
            return;
        };
        if from == self.cfg.id {
            return;
        }
        if self.status != AcceptorStatus::Voter {
            self.handle_message_not_voting(from, message);
            return;
        }
        if let RoleState::Leader(l) = &mut self.role {
            l.heard[from_idx] = self.now;
        }
        match message {
            Message::PreVote { ballot } => self.on_prevote(from, ballot),
            Message::PreVoteGranted { ballot } => self.on_prevote_granted(from_idx, ballot),
            Message::Prepare {
                ballot,
                from_slot,
                nonce,
            } => self.on_prepare(from, ballot, from_slot, nonce),
            Message::Promise {
                ballot,
                commit_point,
                entries,
                truncated,
                nonce,
                incarnation,
                incarnations,
            } => self.on_promise(
                from,
                ballot,
                nonce,
                &incarnations,
                Promised {
                    commit_point,
                    entries,
                    truncated,
                    incarnation,
                },
            ),
            Message::Nack { ballot, promised } => self.on_nack(ballot, promised),
            Message::Accept {
                ballot,
                commit_point,
                entries,
            } => self.on_accept(from, ballot, commit_point, entries, false),
            Message::NewView {
                ballot,
                commit_point,
                entries,
            } => self.on_accept(from, ballot, commit_point, entries, true),
            Message::Accepted {
                ballot,
                slots,
                incarnation,
            } => self.on_accepted(from_idx, ballot, &slots, incarnation),
            Message::Heartbeat {
                ballot,
                commit_point,
            } => self.on_heartbeat(from, ballot, commit_point),
            Message::Fetch { from: lo, to: hi } => self.on_fetch(from, lo, hi),
            Message::FetchReply {
                commit_point,
                entries,
            } => self.on_fetch_reply(from, commit_point, entries),
            Message::Snapshot { checkpoint } => self.on_snapshot(from, checkpoint),
            Message::Recover {
                ballot,
                incarnation,
                nonce,
                pristine,
            } => self.on_recover(from, ballot, incarnation, nonce, pristine),
            // Answers to a recovery this voter is not running.
            Message::RecoverGrant { .. }
            | Message::RecoverRefused { .. }
            | Message::NeverVoted { .. } => {}
        }
    }

    // ------------------------------------------------------------------ phase 1

    fn start_election(&mut self) {
        self.prevote = None;
        self.step_down_queue(None);
        let round = self.max_round_seen.max(self.promised.round) + 1;
        self.max_round_seen = round;
        let ballot = Ballot::new(round, self.cfg.id);
        self.set_promised(ballot);
        self.leader = None;
        let deadline = self.now + self.random_timeout();
        let from_slot = self.commit_point;
        let nonce = self.rng.next_u64();
        self.role = RoleState::Candidate(Candidate {
            ballot,
            nonce,
            known: self.peer_inc.clone(),
            from_slot,
            promises: BTreeMap::new(),
            deadline,
            last_sent: self.now,
        });
        for m in self.peers() {
            self.send(
                m,
                Message::Prepare {
                    ballot,
                    from_slot,
                    nonce,
                },
            );
        }
        self.check_promises();
    }

    /// Starts an election at once, skipping the timeout and the pre-vote: lets tests
    /// choose who runs for leader.
    #[cfg(test)]
    pub(crate) fn start_election_now(&mut self) {
        self.start_election();
    }

    fn start_prevote(&mut self) {
        let round = self.max_round_seen.max(self.promised.round) + 1;
        let ballot = Ballot::new(round, self.cfg.id);
        self.prevote = Some((ballot, 1 << self.me));
        self.election_deadline = self.now + self.random_timeout();
        for m in self.peers() {
            self.send(m, Message::PreVote { ballot });
        }
        self.check_prevotes();
    }

    fn on_prevote(&mut self, from: NodeId, ballot: Ballot) {
        if ballot.node != from || ballot <= self.promised || self.leader_alive() {
            return;
        }
        self.send(from, Message::PreVoteGranted { ballot });
    }

    fn on_prevote_granted(&mut self, from_idx: usize, ballot: Ballot) {
        match &mut self.prevote {
            Some((b, grants)) if *b == ballot => *grants |= 1 << from_idx,
            _ => return,
        }
        self.check_prevotes();
    }

    fn check_prevotes(&mut self) {
        #[allow(unused_mut)]
        let mut needed = self.quorum;
        #[cfg(test)]
        if self.cfg.mutation == Mutation::PreVoteNeedsEveryone {
            needed = self.cfg.members.len() as u32;
        }
        if let Some((_, grants)) = self.prevote {
            if grants.count_ones() >= needed && matches!(self.role, RoleState::Follower) {
                self.start_election();
            }
        }
    }

    /// Leader stickiness: while a live leader is heard, do not help depose it.
    fn leader_alive(&self) -> bool {
        match self.role {
            RoleState::Leader(_) => true,
            RoleState::Candidate(_) => false,
            RoleState::Follower => {
                self.leader.is_some() && self.now - self.last_heard_leader < self.cfg.election_ticks
            }
        }
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot, nonce: u64) {
        if !self.admit(from, ballot, false) {
            return;
        }
        if ballot > self.promised {
            if self.leader_alive() && self.leader != Some(from) {
                return;
            }
            self.set_promised(ballot);
            self.become_follower(None);
            self.last_heard_leader = self.now;
            self.election_deadline = self.now + self.random_timeout();
        }
        // Report everything at or above `from_slot`: chosen entries below our commit
        // point up to a batch, then every entry from the commit point up (bounded by the
        // acceptance window).
        // Slots below our compaction point are gone from the log: the candidate must
        // fetch our checkpoint first.
        let mut entries = Vec::new();
        let mut truncated = from_slot < self.log_start;
        let below = from_slot..self.commit_point.max(from_slot);
        for (s, e) in self.log.range(below) {
            if truncated || entries.len() >= self.cfg.max_batch {
                truncated = true;
                break;
            }
            entries.push(PromiseEntry {
                slot: *s,
                ballot: e.ballot,
                value: e.value.clone(),
                chosen: true,
            });
        }
        if !truncated {
            for (s, e) in self.log.range(self.commit_point.max(from_slot)..) {
                entries.push(PromiseEntry {
                    slot: *s,
                    ballot: e.ballot,
                    value: e.value.clone(),
                    chosen: e.chosen,
                });
            }
        }
        let commit_point = self.commit_point;
        let incarnation = self.incarnation;
        let incarnations = self.incarnation_table();
        self.send(
            from,
            Message::Promise {
                ballot,
                commit_point,
                entries,
                truncated,
                nonce,
                incarnation,
                incarnations,
            },
        );
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        nonce: u64,
        incarnations: &[(NodeId, u64)],
        mut promised: Promised,
    ) {
        let window = self.accept_window();
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        if c.ballot != ballot || c.nonce != nonce {
            return;
        }
        #[cfg(test)]
        let forgetful = self.cfg.mutation == Mutation::RecoveryWithoutIncarnations;
        #[cfg(not(test))]
        let forgetful = false;
        if !forgetful {
            for &(node, inc) in incarnations {
                let k = c.known.entry(node).or_insert(0);
                *k = (*k).max(inc);
            }
        }
        // An acceptor holds nothing beyond its acceptance window, nor anything below what
        // we asked for: drop such entries rather than let them size the new view.
        let limit = c
            .from_slot
            .max(promised.commit_point)
            .saturating_add(window);
        let from_slot = c.from_slot;
        promised
            .entries
            .retain(|e| e.slot >= from_slot && e.slot < limit);
        c.promises.insert(from, promised);
        self.check_promises();
    }

    fn check_promises(&mut self) {
        let RoleState::Candidate(c) = &mut self.role else {
            return;
        };
        // A promise from an incarnation older than the latest we know of its sender
        // was made by a state that is gone: it does not count (see `recovery.rs`).
        let known = &c.known;
        c.promises
            .retain(|n, p| p.incarnation >= known.get(n).copied().unwrap_or(0));
        if c.promises.len() as u32 + 1 < self.quorum {
            return;
        }
        let candidate = match std::mem::replace(&mut self.role, RoleState::Follower) {
            RoleState::Candidate(c) => c,
            _ => return,
        };
        if candidate.promises.values().any(|p| p.truncated) {
            // Too far behind to merge in one go: learn the chosen entries we were sent,
            // then prepare again (same ballot) from the new commit point. What was
            // compacted away at the promisers comes by state transfer (fetch).
            let before = self.commit_point;
            for (node, p) in &candidate.promises {
                if p.commit_point > self.known_commit {
                    self.known_commit = p.commit_point;
                    self.fetch_from = Some(*node);
                }
                for e in &p.entries {
                    if e.chosen {
                        self.learn(e.slot, e.value.clone());
                    }
                }
            }
            self.advance_commit();
            let from_slot = self.commit_point;
            let ballot = candidate.ballot;
            let nonce = candidate.nonce;
            self.role = RoleState::Candidate(Candidate {
                ballot,
                nonce,
                known: candidate.known,
                from_slot,
                promises: BTreeMap::new(),
                deadline: candidate.deadline,
                last_sent: self.now,
            });
            // Without progress, wait for the catch-up and let the tick resend.
            if from_slot > before {
                for m in self.peers() {
                    self.send(
                        m,
                        Message::Prepare {
                            ballot,
                            from_slot,
                            nonce,
                        },
                    );
                }
            }
            return;
        }
        self.become_leader(candidate);
    }

    fn become_leader(&mut self, c: Candidate) {
        let ballot = c.ballot;
        let min_incarnation: Vec<u64> = self
            .cfg
            .members
            .iter()
            .map(|m| c.known.get(m).copied().unwrap_or(0))
            .collect();
        let promised_commit = c
            .promises
            .values()
            .map(|p| p.commit_point)
            .max()
            .unwrap_or(0);
        self.known_commit = self.known_commit.max(promised_commit);
        // Merge: per slot, a chosen value wins; otherwise the highest ballot's value.
        let mut merged: BTreeMap<Slot, (Ballot, Value, bool)> = self
            .log
            .range(c.from_slot..)
            .map(|(s, e)| {
                (
                    *s,
                    (
                        e.ballot,
                        e.value.clone(),
                        e.chosen || *s < self.commit_point,
                    ),
                )
            })
            .collect();
        #[cfg(test)]
        let ignore_promises = self.cfg.mutation == Mutation::IgnorePromisedValues;
        #[cfg(not(test))]
        let ignore_promises = false;
        if !ignore_promises {
            for p in c.promises.into_values() {
                for e in p.entries {
                    match merged.get_mut(&e.slot) {
                        None => {
                            merged.insert(e.slot, (e.ballot, e.value, e.chosen));
                        }
                        Some(cur) => {
                            if cur.2 {
                                continue;
                            }
                            if e.chosen || self.merge_prefers(e.ballot, cur.0) {
                                *cur = (e.ballot, e.value, e.chosen);
                            }
                        }
                    }
                }
            }
        }
        for (s, (_, v, chosen)) in &merged {
            if *chosen {
                self.learn(*s, v.clone());
            }
        }
        self.advance_commit();
        let start = self.commit_point;
        let end = merged
            .last_key_value()
            .map_or(start, |(s, _)| (s + 1).max(start));
        let mut entries = Vec::new();
        let mut inflight = BTreeMap::new();
        let mut noops = 0;
        let self_bit = 1u64 << self.me;
        for s in start..end {
            let (value, chosen) = match merged.remove(&s) {
                Some((_, v, chosen)) => (v, chosen),
                None => {
                    noops += 1;
                    (Value::Noop, false)
                }
            };
            if !chosen {
                self.accept_local(s, ballot, value.clone());
                inflight.insert(
                    s,
                    Inflight {
                        value: value.clone(),
                        acks: self_bit,
                        last_sent: self.now,
                    },
                );
            }
            entries.push((s, value));
        }
        self.leader = Some(self.cfg.id);
        self.role = RoleState::Leader(Leader {
            ballot,
            next_slot: end,
            inflight,
            queue: VecDeque::new(),
            proposed: HashMap::new(),
            fresh: Vec::new(),
            last_broadcast: self.now,
            announced_commit: self.commit_point,
            heard: vec![self.now; self.cfg.members.len()],
            min_incarnation,
        });
        self.record_view(ViewChange {
            ballot,
            leader: self.cfg.id,
            direction: ViewDirection::Sent,
            slots: start..end,
            noops,
            tick: self.now,
        });
        let commit_point = self.commit_point;
        for m in self.peers() {
            self.send(
                m,
                Message::NewView {
                    ballot,
                    commit_point,
                    entries: entries.clone(),
                },
            );
        }
        self.check_commits();
        self.pump();
    }

    fn merge_prefers(&self, incoming: Ballot, current: Ballot) -> bool {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::LowestBallotWins {
            return incoming < current;
        }
        incoming > current
    }

    // ------------------------------------------------------------------ phase 2

    fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_point: Slot,
        entries: Vec<(Slot, Value)>,
        new_view: bool,
    ) {
        #[cfg(test)]
        let below_ok = self.cfg.mutation == Mutation::AcceptBelowPromise;
        #[cfg(not(test))]
        let below_ok = false;
        if !self.admit(from, ballot, below_ok) {
            return;
        }
        self.follow(from, ballot);
        if new_view {
            let start = entries
                .iter()
                .map(|(s, _)| *s)
                .min()
                .unwrap_or(commit_point);
            let end = entries.iter().map(|(s, _)| s + 1).max().unwrap_or(start);
            let noops = entries.iter().filter(|(_, v)| *v == Value::Noop).count() as u64;
            if !self
                .views
                .iter()
                .any(|v| v.ballot == ballot && v.direction == ViewDirection::Received)
            {
                self.views
                    .retain(|v| !(v.ballot == ballot && v.direction == ViewDirection::Adopted));
                self.record_view(ViewChange {
                    ballot,
                    leader: from,
                    direction: ViewDirection::Received,
                    slots: start..end,
                    noops,
                    tick: self.now,
                });
            }
        }
        let window_end = self.commit_point.saturating_add(self.accept_window());
        let mut acked = Vec::with_capacity(entries.len());
        #[cfg(test)]
        let blind = self.cfg.mutation == Mutation::AckChosenBlindly;
        #[cfg(not(test))]
        let blind = false;
        for (slot, value) in entries {
            if slot < self.commit_point || self.log.get(&slot).is_some_and(|e| e.chosen) {
                // Decided here already. An ACCEPTED vouches for holding this value at
                // this ballot: give it only when the decided value is the proposed one
                // (a leader whose proposal lost must not count us towards a quorum).
                // A compacted slot's value is gone, so it cannot be vouched for.
                let same = self.log.get(&slot).is_some_and(|e| e.value == value);
                if same || blind {
                    acked.push(slot);
                }
                continue;
            }
            if slot >= window_end {
                continue;
            }
            self.accept_local(slot, ballot, value);
            acked.push(slot);
        }
        if !acked.is_empty() {
            let incarnation = self.incarnation;
            self.send(
                from,
                Message::Accepted {
                    ballot,
                    slots: acked,
                    incarnation,
                },
            );
        }
        self.learn_commit_point(from, ballot, commit_point);
    }

    fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit_point: Slot) {
        if !self.admit(from, ballot, false) {
            return;
        }
        self.follow(from, ballot);
        // An empty ACCEPTED acknowledges the heartbeat: the leader counts who it hears
        // from to notice when it is cut off from a majority.
        let incarnation = self.incarnation;
        self.send(
            from,
            Message::Accepted {
                ballot,
                slots: Vec::new(),
                incarnation,
            },
        );
        self.learn_commit_point(from, ballot, commit_point);
    }

    /// Adopts `from` (owner of `ballot >= promised`) as leader.
    fn follow(&mut self, from: NodeId, ballot: Ballot) {
        if ballot > self.promised {
            self.set_promised(ballot);
        }
        let changed = self.leader != Some(from) || !matches!(self.role, RoleState::Follower);
        if changed {
            self.become_follower(Some(from));
            if !self.views.iter().any(|v| v.ballot == ballot) {
                self.record_view(ViewChange {
                    ballot,
                    leader: from,
                    direction: ViewDirection::Adopted,
                    slots: 0..0,
                    noops: 0,
                    tick: self.now,
                });
            }
        }
        self.last_heard_leader = self.now;
        self.election_deadline = self.now + self.random_timeout();
    }

    fn on_accepted(&mut self, from_idx: usize, ballot: Ballot, slots: &[Slot], incarnation: u64) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot || incarnation < l.min_incarnation[from_idx] {
            return;
        }
        let bit = 1u64 << from_idx;
        let mut newly_chosen = Vec::new();
        for s in slots {
            if let Some(inf) = l.inflight.get_mut(s) {
                inf.acks |= bit;
                if inf.acks.count_ones() >= self.quorum {
                    newly_chosen.push(*s);
                }
            }
        }
        for s in newly_chosen {
            if let Some(inf) = l.inflight.remove(&s) {
                if let Some(e) = self.log.get_mut(&s) {
                    e.chosen = true;
                } else {
                    self.log.insert(
                        s,
                        Entry {
                            ballot,
                            value: inf.value,
                            chosen: true,
                        },
                    );
                }
            }
        }
        self.advance_commit();
        self.pump();
    }

    fn check_commits(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let quorum = self.quorum;
        let done: Vec<Slot> = l
            .inflight
            .iter()
            .filter(|(_, i)| i.acks.count_ones() >= quorum)
            .map(|(s, _)| *s)
            .collect();
        for s in done {
            l.inflight.remove(&s);
            if let Some(e) = self.log.get_mut(&s) {
                e.chosen = true;
            }
        }
        self.advance_commit();
    }

    fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        self.saw_round(promised.round);
        let mine = match &self.role {
            RoleState::Leader(l) => Some(l.ballot),
            RoleState::Candidate(c) => Some(c.ballot),
            RoleState::Follower => None,
        };
        if mine == Some(ballot) && promised > ballot {
            self.set_promised(promised);
            self.become_follower(None);
            self.last_heard_leader = self.now;
            self.election_deadline = self.now + self.random_timeout();
        }
    }

    // ------------------------------------------------------------------ leader

    fn leader_tick(&mut self) {
        let me = self.me;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let now = self.now;
        l.heard[me] = now;
        let live = l
            .heard
            .iter()
            .filter(|t| now - **t < self.cfg.election_ticks * 2)
            .count() as u32;
        if live < self.quorum {
            // Cut off from a majority: stop accepting requests we cannot commit.
            self.become_follower(None);
            self.last_heard_leader = self.now;
            self.election_deadline = self.now + self.random_timeout();
            return;
        }
        // Retransmit proposals that have waited too long, batched per peer.
        let mut per_peer: Vec<Vec<(Slot, Value)>> = vec![Vec::new(); self.cfg.members.len()];
        for (s, inf) in l.inflight.iter_mut() {
            if now - inf.last_sent < self.cfg.retransmit_ticks {
                continue;
            }
            let mut any = false;
            for (i, batch) in per_peer.iter_mut().enumerate() {
                if i != me && inf.acks & (1 << i) == 0 && batch.len() < self.cfg.max_batch {
                    batch.push((*s, inf.value.clone()));
                    any = true;
                }
            }
            if any {
                inf.last_sent = now;
            }
        }
        let ballot = l.ballot;
        let commit_point = self.commit_point;
        for (i, batch) in per_peer.into_iter().enumerate() {
            if !batch.is_empty() {
                let to = self.cfg.members[i];
                self.send(
                    to,
                    Message::Accept {
                        ballot,
                        commit_point,
                        entries: batch,
                    },
                );
            }
        }
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if now - l.last_broadcast >= self.cfg.heartbeat_ticks {
            l.last_broadcast = now;
            l.announced_commit = commit_point;
            for m in self.peers() {
                self.send(
                    m,
                    Message::Heartbeat {
                        ballot,
                        commit_point,
                    },
                );
            }
        }
    }

    /// Moves queued requests into free slots of the window.
    fn pump(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let self_bit = 1u64 << self.me;
        while l.next_slot < self.commit_point.saturating_add(self.cfg.max_inflight) {
            let Some(req) = l.queue.pop_front() else {
                break;
            };
            let slot = l.next_slot;
            if self.log.get(&slot).is_some_and(|e| e.chosen) {
                // Decided under another ballot: never overwrite a chosen value.
                l.queue.push_front(req);
                self.step_down_superseded(slot);
                return;
            }
            l.next_slot += 1;
            if !req.is_register() {
                l.proposed.insert(req.client, req.seq);
            }
            let value = Value::Request(req);
            l.inflight.insert(
                slot,
                Inflight {
                    value: value.clone(),
                    acks: self_bit,
                    last_sent: self.now,
                },
            );
            l.fresh.push((slot, value.clone()));
            store_accept(&mut self.ready, &mut self.log, slot, ballot, value);
        }
        if self.quorum == 1 {
            self.check_commits();
        }
    }

    /// Turns the proposals made since the last flush into one ACCEPT per peer, and
    /// tells followers about a commit point that moved.
    fn flush_leader(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let commit_point = self.commit_point;
        if l.fresh.is_empty() {
            if l.announced_commit == commit_point {
                return;
            }
            l.announced_commit = commit_point;
            l.last_broadcast = self.now;
            for m in self.peers() {
                self.send(
                    m,
                    Message::Heartbeat {
                        ballot,
                        commit_point,
                    },
                );
            }
            return;
        }
        let fresh = std::mem::take(&mut l.fresh);
        l.announced_commit = commit_point;
        l.last_broadcast = self.now;
        let peers = self.peers();
        for chunk in fresh.chunks(self.cfg.max_batch) {
            for m in &peers {
                self.send(
                    *m,
                    Message::Accept {
                        ballot,
                        commit_point,
                        entries: chunk.to_vec(),
                    },
                );
            }
        }
    }

    // ------------------------------------------------------------------ learning

    /// A commit point heard from the leader of `ballot`: below it, the values that
    /// leader proposed at `ballot` are chosen, so the entries accepted here at exactly
    /// `ballot` are marked chosen; anything else below it is fetched. The leader keeps
    /// its side of this bargain in [`learn`](Self::learn).
    fn learn_commit_point(&mut self, from: NodeId, ballot: Ballot, commit_point: Slot) {
        if commit_point > self.known_commit {
            self.known_commit = commit_point;
            self.fetch_from = Some(from);
        }
        let lo = self.commit_point;
        if commit_point <= lo {
            return;
        }
        for (_, e) in self.log.range_mut(lo..commit_point) {
            if !e.chosen && e.ballot == ballot {
                e.chosen = true;
            }
        }
        self.advance_commit();
    }

    fn on_fetch(&mut self, from: NodeId, lo: Slot, hi: Slot) {
        if lo < self.log_start {
            if let Some(checkpoint) = self.checkpoint.clone() {
                self.send(from, Message::Snapshot { checkpoint });
                return;
            }
        }
        let entries: Vec<(Slot, Value)> = self
            .log
            .range(lo..hi.max(lo))
            .filter(|(s, e)| e.chosen || **s < self.commit_point)
            .take(self.cfg.max_batch)
            .map(|(s, e)| (*s, e.value.clone()))
            .collect();
        let commit_point = self.commit_point;
        self.send(
            from,
            Message::FetchReply {
                commit_point,
                entries,
            },
        );
    }

    fn on_fetch_reply(&mut self, from: NodeId, commit_point: Slot, entries: Vec<(Slot, Value)>) {
        if commit_point > self.known_commit {
            self.known_commit = commit_point;
            self.fetch_from = Some(from);
        }
        let limit = self.commit_point.saturating_add(self.accept_window());
        for (s, v) in entries {
            if s < limit {
                self.learn(s, v);
            }
        }
        self.advance_commit();
    }

    /// How far above its commit point an acceptor holds entries.
    fn accept_window(&self) -> Slot {
        ACCEPT_WINDOW_FACTOR.saturating_mul(self.cfg.max_inflight)
    }

    fn on_snapshot(&mut self, from: NodeId, checkpoint: Checkpoint) {
        // Only a snapshot we asked for is useful: one above our commit point and not
        // beyond the highest commit point we have heard of.
        if checkpoint.slot <= self.commit_point || checkpoint.slot > self.known_commit {
            return;
        }
        let slot = checkpoint.slot;
        // A leader cannot tell whether its own proposals below the checkpoint are the
        // values it covers (see `learn`): it steps down rather than announce a commit
        // point over them. A leader behind a peer's checkpoint was superseded anyway.
        #[cfg(test)]
        let lax = self.cfg.mutation == Mutation::SupersededLeaderAnnounces;
        #[cfg(not(test))]
        let lax = false;
        if self.is_leader() && !lax {
            self.step_down_superseded(slot);
        }
        match self.install(checkpoint.clone()) {
            Ok(()) => {
                self.snapshots_installed += 1;
                tracing::info!(
                    node = self.cfg.id,
                    from,
                    slot,
                    "installed a snapshot (state transfer)"
                );
                self.ready.persist.push(PersistOp::Checkpoint(checkpoint));
                self.ready.persist.push(PersistOp::Compact(slot));
                self.ready
                    .persist
                    .push(PersistOp::CommitPoint(self.commit_point));
                self.execute();
            }
            Err(e) => {
                tracing::warn!(node = self.cfg.id, from, slot, error = %e, "refused a snapshot");
            }
        }
    }

    /// Replaces the replicated state with a checkpoint: verifies its digest, restores the
    /// state machine and the session table, and drops the log below it.
    fn install(&mut self, checkpoint: Checkpoint) -> Result<(), String> {
        if !checkpoint.verify() {
            return Err(format!(
                "checkpoint at slot {} fails its digest",
                checkpoint.slot
            ));
        }
        let body: SnapshotBody = postcard::from_bytes(&checkpoint.data)
            .map_err(|e| format!("undecodable checkpoint: {e}"))?;
        self.sm
            .restore(&body.state_machine)
            .map_err(|e| e.to_string())?;
        self.sessions = Sessions::from_vec(body.sessions);
        let slot = checkpoint.slot;
        self.log = self.log.split_off(&slot);
        self.log_start = slot;
        self.executed = self.executed.max(slot);
        self.commit_point = self.commit_point.max(slot);
        self.known_commit = self.known_commit.max(slot);
        self.commit_point = self.first_unchosen(self.commit_point);
        if let RoleState::Leader(l) = &mut self.role {
            l.inflight = l.inflight.split_off(&slot);
            l.next_slot = l.next_slot.max(slot);
        }
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Snapshots the state machine and session table at `executed`, and compacts the
    /// log below the previous checkpoint.
    fn take_checkpoint(&mut self) {
        #[allow(unused_mut)]
        let mut body = SnapshotBody {
            state_machine: Bytes::from(self.sm.snapshot()),
            sessions: self.sessions.to_sorted_vec(),
        };
        #[cfg(test)]
        if self.cfg.mutation == Mutation::CheckpointWithoutSessions {
            body.sessions.clear();
        }
        let data = match postcard::to_allocvec(&body) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                tracing::warn!(node = self.cfg.id, error = %e, "cannot encode a checkpoint");
                return;
            }
        };
        let slot = self.executed;
        let checkpoint = Checkpoint {
            slot,
            digest: crc32fast::hash(&data),
            data,
        };
        let compact_below = self.checkpoint.as_ref().map_or(0, |c| c.slot);
        self.ready
            .persist
            .push(PersistOp::Checkpoint(checkpoint.clone()));
        self.checkpoint = Some(checkpoint);
        if compact_below > self.log_start {
            self.ready.persist.push(PersistOp::Compact(compact_below));
            self.log = self.log.split_off(&compact_below);
            self.log_start = compact_below;
        }
    }

    fn maybe_fetch(&mut self) {
        if self.known_commit <= self.commit_point {
            self.fetch_attempts = 0;
            return;
        }
        if self.now - self.last_fetch < self.cfg.retransmit_ticks {
            return;
        }
        self.last_fetch = self.now;
        self.fetch_attempts += 1;
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        // First ask whoever told us about the commit point, then go round the others.
        let target = match self.fetch_from {
            Some(f) if self.fetch_attempts % 2 == 1 => f,
            _ => peers[(self.fetch_attempts / 2) as usize % peers.len()],
        };
        let lo = self.commit_point;
        let hi = self
            .known_commit
            .min(lo.saturating_add(self.cfg.max_batch as u64));
        self.send(target, Message::Fetch { from: lo, to: hi });
    }

    /// Records that `value` is chosen in `slot`, learned from anything but this
    /// replica's own accept quorum: a FETCH-REPLY, a PROMISE that reports it chosen, or
    /// the merge of phase 1.
    ///
    /// # Which values a commit point vouches for
    /// A commit point `C` announced under ballot `b` (on ACCEPT, NEW-VIEW or HEARTBEAT)
    /// tells a follower that, below `C`, *the value proposed at `b`* is the chosen one:
    /// the follower marks chosen exactly the entries it accepted at `b`
    /// ([`learn_commit_point`](Self::learn_commit_point)). So the leader of `b` may
    /// announce `C` only if each of its `b`-proposals below `C` is the chosen value.
    /// That holds for what it learns from its own accept quorums at `b`, and for what
    /// phase 1 gave it (its `b`-proposals *are* the merged values). It holds for a value
    /// learned any other way only if that value equals the leader's `b`-proposal in the
    /// slot. A different value — or any chosen value in a slot the leader has not
    /// proposed in yet — can only have been chosen under a higher ballot: the leader is
    /// superseded, and steps down here, before it can announce a commit point over it
    /// (or propose into a slot that is already decided).
    ///
    /// Second half of the rule: an entry whose value is replaced by a learned one loses
    /// its ballot ([`Ballot::ZERO`], which no leader owns), so no path leaves a value
    /// under a ballot that did not propose it.
    fn learn(&mut self, slot: Slot, value: Value) {
        if slot < self.commit_point {
            return;
        }
        #[cfg(test)]
        let lax = self.cfg.mutation == Mutation::SupersededLeaderAnnounces;
        #[cfg(not(test))]
        let lax = false;
        if let RoleState::Leader(l) = &self.role {
            let conflict = slot >= l.next_slot
                || self
                    .log
                    .get(&slot)
                    .is_some_and(|e| e.ballot == l.ballot && e.value != value);
            if conflict && !lax {
                self.step_down_superseded(slot);
            }
        }
        match self.log.get_mut(&slot) {
            Some(e) if e.chosen => return,
            Some(e) => {
                if e.value != value && !lax {
                    e.ballot = Ballot::ZERO;
                }
                e.value = value.clone();
                e.chosen = true;
            }
            None => {
                self.log.insert(
                    slot,
                    Entry {
                        ballot: Ballot::ZERO,
                        value: value.clone(),
                        chosen: true,
                    },
                );
            }
        }
        self.ready.persist.push(PersistOp::Learn { slot, value });
    }

    /// A leader that finds a slot decided under a higher ballot stops leading at once:
    /// see [`learn`](Self::learn).
    fn step_down_superseded(&mut self, slot: Slot) {
        tracing::info!(
            node = self.cfg.id,
            slot,
            "a higher ballot decided a slot this leader owns: stepping down"
        );
        self.become_follower(None);
        self.last_heard_leader = self.now;
        self.election_deadline = self.now + self.random_timeout();
    }

    fn first_unchosen(&self, from: Slot) -> Slot {
        let mut c = from;
        #[cfg(test)]
        let skip_gaps = self.cfg.mutation == Mutation::SkipGaps;
        for (s, e) in self.log.range(from..) {
            if *s != c {
                #[cfg(test)]
                if skip_gaps && e.chosen {
                    c = *s + 1;
                    continue;
                }
                break;
            }
            if !e.chosen {
                break;
            }
            c += 1;
        }
        c
    }

    fn advance_commit(&mut self) {
        let c = self.first_unchosen(self.commit_point);
        if c > self.commit_point {
            self.commit_point = c;
            self.known_commit = self.known_commit.max(c);
            self.ready.persist.push(PersistOp::CommitPoint(c));
            self.execute();
        }
    }

    // ------------------------------------------------------------------ execution

    fn execute(&mut self) {
        let interval = self.cfg.checkpoint_interval;
        while self.executed < self.commit_point {
            if interval > 0
                && self.executed
                    >= self
                        .checkpoint
                        .as_ref()
                        .map_or(0, |c| c.slot)
                        .saturating_add(interval)
            {
                self.take_checkpoint();
            }
            let slot = self.executed;
            self.executed += 1;
            let request = match self.log.get(&slot) {
                Some(Entry {
                    value: Value::Request(r),
                    ..
                }) => r.clone(),
                _ => continue,
            };
            self.execute_request(slot, request);
        }
    }

    fn execute_request(&mut self, slot: Slot, r: Request) {
        if let RoleState::Leader(l) = &mut self.role {
            if l.proposed.get(&r.client) == Some(&r.seq) {
                l.proposed.remove(&r.client);
            }
        }
        if r.is_register() {
            // The session's id is the slot of its registration, not the client's
            // nonce: a late duplicate of this registration executes in another slot
            // and creates another session, which nobody uses, instead of bringing an
            // evicted session back to life (and with it, retries that would execute
            // a second time).
            #[cfg(test)]
            let id = if self.cfg.mutation == Mutation::ClientChosenSessionIds {
                r.client
            } else {
                slot
            };
            #[cfg(not(test))]
            let id = slot;
            self.sessions.register(id, slot, self.cfg.max_sessions);
            let reply = Bytes::from(postcard::to_allocvec(&id).unwrap_or_default());
            self.reply_awaited(r.client, 0, Response::Ok(reply));
            return;
        }
        #[allow(unused_mut)]
        let mut check = self.sessions.check(r.client, r.seq);
        #[cfg(test)]
        if self.cfg.mutation == Mutation::LeaderLocalSessions && check != SessionCheck::Unknown {
            check = SessionCheck::Fresh;
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ExpiredSessionExecutes && check == SessionCheck::Unknown {
            check = SessionCheck::Fresh;
        }
        let response = match check {
            SessionCheck::Fresh => match postcard::from_bytes::<S::Command>(&r.payload) {
                Ok(cmd) => {
                    let out = self.sm.apply(cmd);
                    let bytes = Bytes::from(postcard::to_allocvec(&out).unwrap_or_default());
                    self.sessions.record(r.client, r.seq, bytes.clone(), slot);
                    Response::Ok(bytes)
                }
                Err(e) => {
                    self.sessions.record(r.client, r.seq, Bytes::new(), slot);
                    Response::Invalid {
                        reason: format!("undecodable command: {e}"),
                    }
                }
            },
            SessionCheck::Duplicate(bytes) => Response::Ok(self.cached_reply(bytes)),
            SessionCheck::Stale => Response::Stale,
            SessionCheck::Unknown => Response::SessionExpired,
        };
        self.reply_awaited(r.client, r.seq, response);
    }

    // ------------------------------------------------------------------ helpers

    fn reply(&mut self, client: ClientId, seq: u64, response: Response) {
        self.ready.replies.push(Reply {
            client,
            seq,
            response,
        });
    }

    /// The reply cached in the session table for a duplicate request.
    #[allow(clippy::unused_self)]
    fn cached_reply(&self, reply: Bytes) -> Bytes {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::GarbledCachedReply {
            return Bytes::from_static(&[0x7f]);
        }
        reply
    }

    fn reply_awaited(&mut self, client: ClientId, seq: u64, response: Response) {
        if self.awaiting.remove(&(client, seq)) {
            self.reply(client, seq, response);
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.ready.messages.push((to, message));
    }

    fn peers(&self) -> Vec<NodeId> {
        self.cfg
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.cfg.id)
            .collect()
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        self.cfg.members.iter().position(|m| *m == id)
    }

    fn random_timeout(&mut self) -> u64 {
        self.cfg.election_ticks + self.rng.next_u64() % self.cfg.election_ticks
    }

    /// Vets a message that `from` sent under `ballot`: ignored unless `from` owns the
    /// ballot; refused with a NACK when the ballot is below our promise (unless
    /// `allow_stale`). Returns whether to handle it.
    fn admit(&mut self, from: NodeId, ballot: Ballot, allow_stale: bool) -> bool {
        if ballot.node != from {
            return false;
        }
        self.saw_round(ballot.round);
        if ballot < self.promised && !allow_stale {
            let promised = self.promised;
            self.send(from, Message::Nack { ballot, promised });
            return false;
        }
        true
    }

    fn saw_round(&mut self, round: u64) {
        self.max_round_seen = self.max_round_seen.max(round);
    }

    fn set_promised(&mut self, ballot: Ballot) {
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.persist.push(PersistOp::Promise(ballot));
        }
    }

    fn accept_local(&mut self, slot: Slot, ballot: Ballot, value: Value) {
        store_accept(&mut self.ready, &mut self.log, slot, ballot, value);
    }

    /// Leaves leadership or candidacy. Requests waiting here are answered with a
    /// redirect so their clients retry elsewhere (with the same request numbers).
    fn become_follower(&mut self, leader: Option<NodeId>) {
        if leader.is_some() {
            self.prevote = None;
        }
        if !matches!(self.role, RoleState::Follower) {
            self.step_down_queue(leader);
            self.role = RoleState::Follower;
        }
        self.leader = leader;
    }

    fn step_down_queue(&mut self, leader: Option<NodeId>) {
        if let RoleState::Leader(l) = &mut self.role {
            l.queue.clear();
        }
        // Sorted: the replica's outputs must not depend on hash order.
        let mut waiting: Vec<_> = self.awaiting.drain().collect();
        waiting.sort_unstable();
        for (client, seq) in waiting {
            self.reply(client, seq, Response::Redirect { leader });
        }
    }

    fn record_view(&mut self, v: ViewChange) {
        if self.views.len() >= VIEW_HISTORY {
            self.views.pop_front();
        }
        self.views.push_back(v);
    }
}

/// Accepts `value` in `slot` at `ballot`: in the log, and as a write to persist.
fn store_accept(
    ready: &mut Ready,
    log: &mut BTreeMap<Slot, Entry>,
    slot: Slot,
    ballot: Ballot,
    value: Value,
) {
    ready.persist.push(PersistOp::Accept {
        slot,
        ballot,
        value: value.clone(),
    });
    log.insert(
        slot,
        Entry {
            ballot,
            value,
            chosen: false,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Recorder;
    use crate::traits::{MemStorage, Storage};

    /// A cluster of replicas wired by a perfect in-order network, driven by hand.
    struct Harness {
        replicas: Vec<Replica<Recorder>>,
        /// The session the cluster assigned to each test client.
        sessions: HashMap<ClientId, ClientId>,
        storage: Vec<MemStorage>,
        replies: Vec<Reply>,
        snapshots: usize,
        /// A node whose messages, both ways, are dropped.
        isolated: Option<NodeId>,
    }

    impl Harness {
        fn new(n: u64, tweak: impl Fn(&mut Config)) -> Self {
            let ids: Vec<NodeId> = (1..=n).collect();
            let storage: Vec<MemStorage> = ids.iter().map(|_| MemStorage::new()).collect();
            let replicas = ids
                .iter()
                .map(|&id| {
                    let mut cfg = Config::new(id, ids.clone());
                    tweak(&mut cfg);
                    Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap()
                })
                .collect();
            Harness {
                replicas,
                sessions: HashMap::new(),
                storage,
                replies: Vec::new(),
                snapshots: 0,
                isolated: None,
            }
        }

        /// Delivers every output until the cluster is quiet; returns the replies.
        fn settle(&mut self) {
            loop {
                let mut msgs = Vec::new();
                for (i, r) in self.replicas.iter_mut().enumerate() {
                    let ready = r.take_ready();
                    self.storage[i].persist(&ready.persist).unwrap();
                    msgs.extend(ready.messages.into_iter().map(|(to, m)| (r.id(), to, m)));
                    self.replies.extend(ready.replies);
                }
                if msgs.is_empty() {
                    return;
                }
                for (from, to, m) in msgs {
                    if self.isolated == Some(from) || self.isolated == Some(to) {
                        continue;
                    }
                    if matches!(m, Message::Snapshot { .. }) {
                        self.snapshots += 1;
                    }
                    self.replicas[(to - 1) as usize].handle_message(from, m);
                }
            }
        }

        fn tick(&mut self, n: usize) {
            for _ in 0..n {
                for r in &mut self.replicas {
                    r.tick();
                }
                self.settle();
            }
        }

        fn leader(&self) -> usize {
            self.replicas
                .iter()
                .position(|r| r.is_leader())
                .expect("a leader")
        }

        /// Request `seq` of test client `client` (0 registers it) at replica `at`.
        fn request(&mut self, at: usize, client: ClientId, seq: u64) {
            let request = if seq == 0 {
                Request::register(client)
            } else {
                Request {
                    client: self.sessions.get(&client).copied().unwrap_or(client),
                    seq,
                    payload: postcard::to_allocvec(&(client, seq)).unwrap().into(),
                }
            };
            self.replicas[at].handle_request(request);
            self.settle();
            if seq == 0 {
                if let Some(Reply {
                    response: Response::Ok(b),
                    ..
                }) = self.replies.last()
                {
                    let id = postcard::from_bytes(b).expect("a session id");
                    self.sessions.insert(client, id);
                }
            }
        }

        fn last_reply(&self) -> &Response {
            &self.replies.last().expect("a reply").response
        }
    }

    #[test]
    fn a_follower_redirects_and_the_leader_executes_once() {
        let mut h = Harness::new(3, |_| {});
        h.tick(60);
        let l = h.leader();
        let f = (l + 1) % 3;
        h.request(f, 7, 0);
        assert_eq!(
            *h.last_reply(),
            Response::Redirect {
                leader: Some(h.replicas[l].id())
            }
        );
        h.request(l, 7, 0);
        assert!(matches!(h.last_reply(), Response::Ok(_)), "registered");
        h.request(l, 7, 1);
        let first = h.last_reply().clone();
        assert!(matches!(first, Response::Ok(_)));
        h.request(l, 7, 1); // a retry: answered from the session table
        assert_eq!(*h.last_reply(), first);
        h.tick(5);
        for r in &h.replicas {
            assert_eq!(r.state_machine().applied, vec![(7, 1)], "node {}", r.id());
        }
    }

    #[test]
    fn unregistered_and_evicted_sessions_expire() {
        let mut h = Harness::new(1, |c| c.max_sessions = 1);
        h.tick(60);
        h.request(0, 1, 1);
        assert_eq!(
            *h.last_reply(),
            Response::SessionExpired,
            "never registered"
        );
        h.request(0, 1, 0);
        h.request(0, 2, 0); // evicts client 1
        h.request(0, 1, 1);
        assert_eq!(*h.last_reply(), Response::SessionExpired, "evicted");
        assert!(h.replicas[0].state_machine().applied.is_empty());
    }

    #[test]
    fn a_full_leader_answers_busy() {
        let mut h = Harness::new(3, |c| {
            c.max_pending = 2;
        });
        h.tick(60);
        let l = h.leader();
        // Cut the leader off so nothing commits, then overfill it.
        for c in 1..=3 {
            h.replicas[l].handle_request(Request::register(c));
        }
        let ready = h.replicas[l].take_ready();
        assert!(ready
            .replies
            .iter()
            .any(|r| r.client == 3 && r.response == Response::Busy));
    }

    #[test]
    fn a_restarted_replica_recovers_its_promises_and_state() {
        let mut h = Harness::new(3, |c| c.checkpoint_interval = 4);
        h.tick(60);
        let l = h.leader();
        h.request(l, 9, 0);
        for seq in 1..=10 {
            h.request(l, 9, seq);
        }
        h.tick(5);
        let i = (l + 1) % 3;
        let before = (h.replicas[i].promised(), h.replicas[i].commit_point());
        let applied = h.replicas[i].state_machine().applied.clone();
        assert!(
            h.replicas[i].checkpoint().is_some(),
            "checkpoints were taken"
        );
        let cfg = h.replicas[i].config().clone();
        let restarted =
            Replica::new(cfg, Recorder::default(), h.storage[i].load().unwrap()).unwrap();
        assert_eq!((restarted.promised(), restarted.commit_point()), before);
        assert_eq!(restarted.state_machine().applied, applied);
        assert!(restarted.slot(0).status == SlotStatus::Compacted);
    }

    #[test]
    fn a_damaged_checkpoint_is_refused() {
        let mut h = Harness::new(1, |c| c.checkpoint_interval = 2);
        h.tick(60);
        for seq in 0..=5 {
            h.request(0, 3, seq);
        }
        let mut state = h.storage[0].load().unwrap();
        let cp = state.checkpoint.as_mut().expect("a checkpoint");
        let mut data = cp.data.to_vec();
        data[0] ^= 1;
        cp.data = data.into();
        let cfg = h.replicas[0].config().clone();
        let err = Replica::new(cfg, Recorder::default(), state).unwrap_err();
        assert!(matches!(err, ReplicaError::Checkpoint(_)), "{err}");
    }

    #[test]
    fn a_lagging_follower_catches_up_by_state_transfer() {
        let mut h = Harness::new(3, |c| c.checkpoint_interval = 3);
        h.tick(60);
        let l = h.leader();
        let lagging = (l + 1) % 3;
        let lag_id = h.replicas[lagging].id();
        // Replace the lagging follower with a fresh one that missed everything.
        h.request(l, 5, 0);
        for seq in 1..=20 {
            h.request(l, 5, seq);
        }
        let cfg = h.replicas[lagging].config().clone();
        h.storage[lagging] = MemStorage::new();
        h.replicas[lagging] =
            Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap();
        h.tick(30);
        let follower = &h.replicas[lagging];
        assert_eq!(follower.id(), lag_id);
        assert_eq!(follower.state_machine().applied.len(), 20, "caught up");
        assert!(h.snapshots > 0, "through a snapshot");
        assert_eq!(follower.slot(0).status, SlotStatus::Compacted);
    }

    #[test]
    fn a_promise_reaching_absurdly_far_cannot_size_the_new_view() {
        let cfg = Config::new(1, vec![1, 2, 3]);
        let mut r = Replica::new(cfg, Recorder::default(), PersistentState::founding()).unwrap();
        let mut asked = None;
        for _ in 0..100 {
            r.tick();
            asked = r
                .take_ready()
                .messages
                .into_iter()
                .find_map(|(_, m)| match m {
                    Message::PreVote { ballot } => Some(ballot),
                    _ => None,
                });
            if asked.is_some() {
                break;
            }
        }
        let asked = asked.expect("a pre-vote after an election timeout");
        r.handle_message(2, Message::PreVoteGranted { ballot: asked });
        assert_eq!(r.role(), Role::Candidate);
        let ballot = r.promised();
        let far = PromiseEntry {
            slot: u64::MAX - 1,
            ballot: Ballot::new(1, 2),
            value: Value::Noop,
            chosen: false,
        };
        let near = PromiseEntry {
            slot: 2,
            ballot: Ballot::new(1, 2),
            value: Value::Noop,
            chosen: false,
        };
        let nonce = r
            .take_ready()
            .messages
            .into_iter()
            .find_map(|(_, m)| match m {
                Message::Prepare { nonce, .. } => Some(nonce),
                _ => None,
            })
            .expect("a prepare");
        r.handle_message(
            2,
            Message::Promise {
                ballot,
                commit_point: 0,
                entries: vec![near, far],
                truncated: false,
                nonce,
                incarnation: 0,
                incarnations: Vec::new(),
            },
        );
        assert!(r.is_leader());
        let ready = r.take_ready();
        let new_view = ready.messages.iter().find_map(|(_, m)| match m {
            Message::NewView { entries, .. } => Some(entries.len()),
            _ => None,
        });
        assert_eq!(
            new_view,
            Some(3),
            "slots 0..3: two gap no-ops and the reported one"
        );
    }

    #[test]
    fn an_isolated_follower_does_not_raise_its_ballot_or_depose_the_leader() {
        let mut h = Harness::new(3, |_| {});
        h.tick(60);
        let l = h.leader();
        let f = (l + 1) % 3;
        let ballot = h.replicas[l].promised();
        h.isolated = Some(h.replicas[f].id());
        h.tick(500); // many election timeouts
        assert_eq!(
            h.replicas[f].promised(),
            ballot,
            "pre-votes went unanswered"
        );
        h.isolated = None;
        h.tick(20);
        assert!(h.replicas[l].is_leader(), "the leader kept its place");
        assert_eq!(h.replicas[l].promised(), ballot);
        assert_eq!(h.replicas[f].leader(), Some(h.replicas[l].id()));
    }
}
