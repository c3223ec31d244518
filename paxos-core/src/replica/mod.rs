//! The sans-IO Multi-Paxos replica.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

use crate::config::Config;
use crate::error::ReplicaError;
use crate::message::Message;
use crate::sessions::SessionCheck;
use crate::traits::{AcceptorStatus, PersistOp, PersistentState, StateMachine};
use crate::types::{Ballot, ClientId, Member, Membership, NodeId, Reply, Request, Response, Slot};

#[cfg(test)]
use crate::mutation::Mutation;

mod acceptor;
mod catch_up;
mod election;
mod executor;
mod handover;
mod inspect;
mod leader;
mod learner;
mod learner_role;
mod log;
mod membership;
mod reads;
mod recovery;

#[cfg(test)]
mod tests;
mod timers;
mod view_change;

use acceptor::store_accept;
use catch_up::CatchUp;
use executor::Executor;
pub use executor::{CheckpointJob, FinishedCheckpoint};
pub use inspect::{ReplicaStatus, Role, SlotInfo, SlotStatus, ViewChange, ViewDirection};
use leader::{batch_len, Inflight, Leader, SessionClock};
use learner_role::ParkedFetch;
use log::{Entry, SlotLog};
use reads::Reads;
use timers::{Timeout, Timers};
use view_change::{Candidate, Promised};

/// The outputs of a [`Replica`], drained with [`Replica::take_ready`]. Each output says
/// what it waits for.
///
/// Handle them in this order ([`Ready::deliver`] does): send `messages_now` and deliver
/// `replies_now` (they vouch for none of this round's writes, so they may leave at once,
/// while the writes are being made durable); make every [`PersistOp`] in `persist`
/// durable (one [`Storage::persist`](crate::Storage::persist) call); *then* send
/// `messages` and deliver `replies`, which vouch for those writes (a PROMISE for the
/// promised ballot, an ACCEPTED for the accepted value), so none may leave before the
/// writes it depends on are stored.
///
/// What may leave at once, and why it is safe:
/// - A leader's ACCEPT (and NEW-VIEW) goes out while the leader makes its own accept of
///   the same proposals durable: the leader counts its own vote at once, but only
///   ACCEPTEDs handled in a *later* round can complete a quorum with it, and a later
///   round starts after this round's writes are durable. So a commit waits for one fsync
///   in series (the leader's and the followers' run in parallel), not two.
/// - A reply says that its request was chosen (and executed) in some slot; being chosen
///   means durably accepted by a majority, which this round's writes do not change,
///   unless the round itself made the slot chosen with the replica's own, not yet
///   durable, accept (a single-member cluster): such replies are in `replies`. So the
///   reply does not wait for the commit point the same round persists.
/// - Commit points (COMMIT, HEARTBEAT), catch-up (FETCH, FETCH-REPLY, snapshot pieces),
///   elections' requests (PRE-VOTE, PREPARE), read-index rounds, refusals (NACK) and
///   leader transfer vouch for no stored state of the sender's. The exception is the
///   one that makes replies wait: in a cluster of one whose round chose slots with its
///   own, not yet durable, vote, the answers serving chosen values (FETCH-REPLY,
///   snapshot pieces, to learners) are in `messages` too.
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages that vouch for no write of this round: send them at once, without
    /// waiting for `persist`.
    pub messages_now: Vec<(NodeId, Message)>,
    /// Answers to client requests that depend on no write of this round: deliver them at
    /// once.
    pub replies_now: Vec<Reply>,
    /// Writes to make durable before `messages` and `replies` leave.
    ///
    /// A new commit point that would be a round's only write is held back (nothing
    /// vouches for a stored commit point, and writing it alone would cost an fsync in
    /// series with the next request): it comes first in the next `Ready` that writes
    /// anything, or alone in the first one after a [`Replica::tick`].
    pub persist: Vec<PersistOp>,
    /// Messages that vouch for `persist` (PROMISE, ACCEPTED, the answers to a
    /// recovery), as `(destination, message)`: send them only once it is durable.
    pub messages: Vec<(NodeId, Message)>,
    /// Answers to client requests that depend on `persist`: deliver them only once it is
    /// durable.
    pub replies: Vec<Reply>,
    /// Checkpoints to finish off the replica's thread, when the state machine offers
    /// [`snapshot_job`](crate::StateMachine::snapshot_job)s: run each
    /// ([`CheckpointJob::run`], on any thread, whenever convenient) and hand the result
    /// to [`Replica::checkpoint_finished`]. They depend on nothing in this `Ready`.
    /// [`Ready::deliver`] leaves them alone (take them out first); [`Replica::drive`]
    /// runs them at once.
    pub checkpoint_jobs: Vec<CheckpointJob>,
}

impl Ready {
    /// Every message, in the order [`Ready::deliver`] sends them: `messages_now`, then
    /// `messages` (for tests and inspection; a driver must keep the two apart).
    pub fn into_all_messages(self) -> Vec<(NodeId, Message)> {
        let mut all = self.messages_now;
        all.extend(self.messages);
        all
    }

    /// Moves `other`'s outputs after this one's, leaving `other` empty.
    pub fn append(&mut self, other: &mut Ready) {
        self.messages_now.append(&mut other.messages_now);
        self.replies_now.append(&mut other.replies_now);
        self.persist.append(&mut other.persist);
        self.messages.append(&mut other.messages);
        self.replies.append(&mut other.replies);
        self.checkpoint_jobs.append(&mut other.checkpoint_jobs);
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.messages_now.is_empty()
            && self.replies_now.is_empty()
            && self.checkpoint_jobs.is_empty()
    }
}

#[derive(Debug)]
enum RoleState {
    Follower,
    Candidate(Candidate),
    Leader(Box<Leader>),
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
/// 2. outputs: [`take_ready`](Replica::take_ready) returns a [`Ready`]. Send its
///    `messages_now` and deliver its `replies_now` (they wait for nothing), persist its
///    writes, then send its `messages` and deliver its `replies` — in that order.
///    [`Ready::deliver`] (or [`Replica::drive`] with a [`Storage`](crate::Storage)) does
///    exactly that; a driver that only handled `messages` and `replies` would never send
///    a PREPARE, an ACCEPT or a commit point.
///
/// Several inputs may be fed before one `take_ready`: the outputs accumulate, proposals
/// are batched into one ACCEPT per peer and the writes into one persist call (group
/// commit). Committed entries are executed inside the replica, strictly in slot order,
/// against the [`StateMachine`] it owns; each reply is in the `Ready` list that says
/// what it waits for, so a client never hears of a result before the writes it depends on
/// are durable. Finish each round's persist before feeding the next input, or hold
/// back *every* output of the inputs fed meanwhile until it is finished (what the node
/// driver does, to handle inputs while a write is in flight): a round's `Ready` says
/// what waits for its own writes only, and assumes those of earlier rounds are durable.
/// That is what lets the leader's ACCEPTs leave before its own write (see [`Ready`]).
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
///     assert!(ready.messages_now.is_empty());      // 1. send at once (no peers here)
///     storage.persist(&ready.persist).unwrap();    // 2. persist
///     assert!(ready.messages.is_empty());          // 3. send what vouches for it
/// }
/// replica.handle_request(Request::register(7));
/// let ready = replica.take_ready();
/// storage.persist(&ready.persist).unwrap();
/// // Its own vote chose the slot: the reply waits for the write.
/// assert!(ready.replies_now.is_empty());
/// assert_eq!(ready.replies.len(), 1);                // 4. reply
///
/// // The same, in one call: `Replica::drive` hands every output over in order.
/// replica.handle_request(Request::register(8));
/// let mut replies = Vec::new();
/// replica
///     .drive(&mut storage, |_to, _message| {}, |reply| replies.push(reply))
///     .unwrap();
/// assert_eq!(replies.len(), 1);
/// ```
#[derive(Debug)]
pub struct Replica<S> {
    cfg: Config,
    /// This replica's index in `cfg.members`.
    me: usize,
    quorum: u32,
    /// The configuration in force: `cfg.members` are its ids (see `membership.rs`).
    membership: std::sync::Arc<Membership>,
    /// A ballot of a later epoch than ours was seen: our members may have moved on.
    later_epoch_seen: bool,
    /// Election timeouts spent catching up since then, without the commit point
    /// moving (see `start_prevote`).
    later_epoch_waits: u32,
    rng: ChaCha8Rng,
    /// The state machine, the session table, what was executed and the checkpoint.
    exec: Executor<S>,

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
    /// The slots, from the compaction point up, and the commit point.
    log: SlotLog,

    role: RoleState,
    leader: Option<NodeId>,
    now: u64,
    /// The election, leader-stickiness and fetch timers.
    timers: Timers,
    max_round_seen: u64,
    /// A pre-vote under way: the ballot asked about and who granted it.
    prevote: Option<(Ballot, u64)>,

    /// The highest commit point heard of, and whom to fetch from.
    catch_up: CatchUp,
    /// A learner serves stale reads once this is set: it restarted with a state of
    /// its own, or caught up with the first commit point it heard of.
    catch_up_done: bool,
    /// Learners' FETCHes this member holds until its commit point moves (long-poll):
    /// at most one per learner (see `learner_role.rs`).
    parked_fetches: Vec<ParkedFetch>,

    /// Client requests this leader will answer once they execute.
    awaiting: HashSet<(ClientId, u64), foldhash::fast::RandomState>,
    /// Stale reads waiting for execution to reach their floor, with the tick they
    /// arrived (see `reads.rs`).
    stale_reads: VecDeque<(Request, u64)>,
    /// The bytes of the commands in `stale_reads` (at most `max_message_bytes`).
    stale_read_bytes: usize,
    /// The lowest floor among `stale_reads` (`Slot::MAX` when none waits).
    stale_min_floor: Slot,
    views: VecDeque<ViewChange>,
    /// The newest commit point not written yet, and the tick it was reached: see
    /// [`write_commit_point`](Self::write_commit_point).
    unwritten_commit: Option<(Slot, u64)>,
    /// How many of `ready`'s writes come from a `Ready` handed back undelivered
    /// ([`take_ready_into`](Self::take_ready_into)), ahead of the round's own.
    held_writes: usize,
    /// What `Mutation::DeferRoundsWithCommits` left unwritten, and since when.
    #[cfg(test)]
    mutant_unwritten: (Vec<PersistOp>, u64),
    ready: Ready,
    /// The emptied `Ready` the crate's own drivers keep between calls, for its
    /// vectors (`take_spare_ready`, `return_spare_ready`).
    spare_ready: Ready,
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
        let first_timeout = timers::election_ticks(&cfg, &mut rng);
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
        let membership = std::sync::Arc::new(Membership {
            epoch: 0,
            members: cfg
                .members
                .iter()
                .map(|&id| Member {
                    id,
                    address: String::new(),
                })
                .collect(),
        });
        let mut r = Replica {
            me,
            quorum,
            membership,
            later_epoch_seen: false,
            later_epoch_waits: 0,
            rng,
            exec: Executor::new(state_machine),
            status: state.status,
            incarnation: state.incarnation,
            peer_inc: state.peer_incarnations,
            recovery: None,
            granted_recovery: BTreeMap::new(),
            promised: state.promised,
            log: SlotLog::new(
                log,
                #[cfg(test)]
                (cfg.mutation == Mutation::SkipGaps),
            ),
            role: RoleState::Follower,
            leader: None,
            now: 0,
            timers: Timers::new(&cfg, first_timeout),
            prevote: None,
            max_round_seen: state.promised.round,
            catch_up: CatchUp::new(state.commit_point),
            catch_up_done: state.commit_point > 0,
            parked_fetches: Vec::new(),
            awaiting: HashSet::default(),
            stale_reads: VecDeque::new(),
            stale_read_bytes: 0,
            stale_min_floor: Slot::MAX,
            unwritten_commit: None,
            held_writes: 0,
            #[cfg(test)]
            mutant_unwritten: (Vec::new(), 0),
            views: VecDeque::new(),
            ready: Ready::default(),
            spare_ready: Ready::default(),
            cfg,
        };
        // Entries below the stored commit point are chosen; anything missing there is
        // fetched like any other gap.
        if let Some(cp) = state.checkpoint {
            r.install(cp).map_err(ReplicaError::Checkpoint)?;
        }
        let stored_commit = state.commit_point;
        r.log.mark_chosen_below(stored_commit);
        r.log.advance_commit();
        // Replaying may take a checkpoint; its writes go out with the first `Ready`.
        r.execute();
        #[cfg(test)]
        if r.cfg.mutation == Mutation::AmnesiaVotesAtOnce {
            r.status = AcceptorStatus::Voter;
        }
        if r.cfg.learner {
            // A learner polls at its first tick.
            r.timers.fetch = Timeout::after(0, 1);
        }
        if r.status != AcceptorStatus::Voter && !r.cfg.learner {
            // No state of our own (or a recovery cut short): find out from the peers
            // whether the cluster is new, and recover if it is not.
            let incarnation = r.incarnation.max(1);
            r.start_recovery(incarnation);
        }
        Ok(r)
    }

    /// Drains the outputs accumulated since the last call. See [`Ready`] for the order
    /// in which to handle them.
    ///
    /// A driver that runs many rounds can use [`take_ready_into`](Self::take_ready_into)
    /// and [`Ready::deliver_mut`] instead, which reuse one `Ready`'s vectors.
    pub fn take_ready(&mut self) -> Ready {
        if !self.prepare_ready() {
            // Most calls in a busy cluster (every replica is asked after every
            // delivery): nothing to move.
            return Ready::default();
        }
        std::mem::take(&mut self.ready)
    }

    /// [`take_ready`](Self::take_ready) into `ready`, which was emptied by
    /// [`Ready::deliver_mut`]: the replica takes back its vectors, so that in steady
    /// state rounds allocate none. Anything still in `ready` (a `Ready` not delivered)
    /// is kept, ahead of the new outputs.
    ///
    /// ```
    /// # use paxos_core::{Config, MemStorage, Ready, Replica, Storage};
    /// # #[derive(Default)] struct Counter(u64);
    /// # impl paxos_core::StateMachine for Counter {
    /// #     type Command = u64; type Output = u64;
    /// #     fn apply(&mut self, n: u64) -> u64 { self.0 += n; self.0 }
    /// #     fn snapshot(&self) -> Vec<u8> { self.0.to_le_bytes().to_vec() }
    /// #     fn restore(&mut self, _: &[u8]) -> Result<(), paxos_core::RestoreError> { Ok(()) }
    /// # }
    /// let mut storage = MemStorage::new();
    /// let mut replica = Replica::new(Config::new(1, vec![1]), Counter::default(), storage.load()?)?;
    /// let mut ready = Ready::default(); // one per replica, reused every round
    /// for _ in 0..1000 {
    ///     replica.tick();
    ///     replica.take_ready_into(&mut ready);
    ///     ready.deliver_mut(|ops| storage.persist_owned(ops), |_to, _m| {}, |_reply| {})?;
    ///     assert!(ready.is_empty());
    ///     if replica.is_leader() {
    ///         break;
    ///     }
    /// }
    /// assert!(replica.is_leader());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_ready_into(&mut self, ready: &mut Ready) {
        if !ready.is_empty() {
            // Not delivered: nothing of it is dropped, and it goes ahead of this
            // round's outputs *before* they are sorted, so that what waits for a write
            // is decided against the held writes too (a reply whose slot was chosen
            // with a held, not yet durable, accept of this replica's must wait).
            let mut fresh = std::mem::take(&mut self.ready);
            std::mem::swap(&mut self.ready, ready);
            self.held_writes = self.ready.persist.len();
            self.ready.append(&mut fresh);
        }
        let prepared = self.prepare_ready();
        self.held_writes = 0;
        if prepared {
            std::mem::swap(&mut self.ready, ready);
        }
    }

    /// [`take_ready_into`](Self::take_ready_into) the replica's spare `Ready`: for the
    /// crate's drivers ([`Replica::drive`], the node), which hand it back emptied
    /// with [`return_spare_ready`](Self::return_spare_ready).
    pub(crate) fn take_spare_ready(&mut self) -> Ready {
        let mut ready = std::mem::take(&mut self.spare_ready);
        self.take_ready_into(&mut ready);
        ready
    }

    /// Keeps a delivered `Ready`'s vectors for the next [`take_spare_ready`](Self::take_spare_ready).
    pub(crate) fn return_spare_ready(&mut self, ready: Ready) {
        self.spare_ready = ready;
    }

    /// The work [`take_ready`](Self::take_ready) does before it hands `self.ready`
    /// over, rearranged in place (`Ready` is too big to copy twice on every call).
    /// False when there is nothing to hand over.
    fn prepare_ready(&mut self) -> bool {
        if self.requests_per_slot() > 1
            && matches!(&self.role, RoleState::Leader(l) if !l.queue.is_empty())
        {
            self.pump();
        }
        self.flush_leader();
        self.flush_reads();
        self.serve_stale_reads();
        if !self.parked_fetches.is_empty() {
            self.answer_parked_fetches(false);
        }
        if self.ready.is_empty() {
            // A commit point left unwritten since an earlier tick is written now.
            return match self.unwritten_commit {
                Some((_, since)) if since < self.now => {
                    self.place_unwritten_commit();
                    true
                }
                _ => false,
            };
        }
        let ready = &mut self.ready;
        // A reply waits for this round's writes only if the round accepted, here, a
        // value in a slot that is now committed: that slot may be chosen thanks to this
        // replica's own vote, which is not durable yet (a single-member cluster).
        let committed = self.log.commit_point();
        let own_vote_counts = ready
            .persist
            .iter()
            .any(|op| matches!(op, PersistOp::Accept { slot, .. } if *slot < committed));
        if !own_vote_counts {
            if ready.replies_now.is_empty() {
                std::mem::swap(&mut ready.replies_now, &mut ready.replies);
            } else {
                ready.replies_now.append(&mut ready.replies);
            }
        } else if self.quorum == 1 {
            hold_chosen_values(ready);
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::DeferRoundsWithCommits {
            self.defer_rounds_with_commits();
            return !self.ready.is_empty();
        }
        if self.unwritten_commit.is_some() {
            // After the sorting above: what waits for the writes is known.
            self.place_unwritten_commit();
        }
        !self.ready.is_empty()
    }

    /// Stores commit point `c`, or leaves it unwritten when it would be the round's
    /// only write.
    ///
    /// Nothing vouches for a stored commit point: it is a lower bound on the chosen
    /// slots, kept so that a restarted replica executes what it knew to be chosen
    /// without asking, and one that is lost is learned again from the leader (the
    /// simulation's crashes lose the unwritten one). Writing it on its own cost a
    /// leader an fsync after every commit, in series with the next request it could
    /// propose (and a follower one after every COMMIT, ahead of the next ACCEPT). So
    /// when nothing else is written yet this round, the newest one waits
    /// ([`place_unwritten_commit`](Self::place_unwritten_commit)) for the round's
    /// other writes, or the next round that writes anything, or at most a tick. A
    /// round whose messages or replies wait for its writes writes it, as before.
    pub(super) fn write_commit_point(&mut self, c: Slot) {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::DeferRoundsWithCommits {
            self.ready.persist.push(PersistOp::CommitPoint(c));
            return;
        }
        if self.ready.persist.is_empty() {
            self.unwritten_commit = Some(match self.unwritten_commit {
                Some((old, since)) => (old.max(c), since),
                None => (c, self.now),
            });
        } else {
            // It goes out with the round's other writes and supersedes any left
            // unwritten before (commit points only rise).
            self.unwritten_commit = None;
            self.ready.persist.push(PersistOp::CommitPoint(c));
        }
    }

    /// At the end of a round, writes the commit point left unwritten if the round
    /// writes anything else, if its messages or replies wait for its writes, or if it
    /// has waited since an earlier tick.
    fn place_unwritten_commit(&mut self) {
        let Some((c, since)) = self.unwritten_commit else {
            return;
        };
        let ready = &mut self.ready;
        let held = self.held_writes.min(ready.persist.len());
        if ready.persist.len() > held {
            // First among the round's own writes (after those of a `Ready` handed
            // back undelivered, which it may need): it was reached before them, every
            // entry below it written by then. A store counts the commit points written
            // before a checkpoint in its batch as covering the checkpoint's slots (and
            // may then write the checkpoint in the background): this one counts, as it
            // would have had it been written on its own.
            ready.persist.insert(held, PersistOp::CommitPoint(c));
        } else if ready.messages.is_empty() && ready.replies.is_empty() && since >= self.now {
            return;
        } else {
            ready.persist.push(PersistOp::CommitPoint(c));
        }
        self.unwritten_commit = None;
    }

    /// The broken variant of [`write_commit_point`](Self::write_commit_point)
    /// (`Mutation::DeferRoundsWithCommits`): every write of a round that writes a
    /// commit point waits, messages or not, for the next round that writes without
    /// one, or for the next tick.
    #[cfg(test)]
    fn defer_rounds_with_commits(&mut self) {
        let ready = &mut self.ready;
        let (held, since) = &mut self.mutant_unwritten;
        if ready
            .persist
            .iter()
            .any(|op| matches!(op, PersistOp::CommitPoint(_)))
        {
            if held.is_empty() {
                *since = self.now;
            }
            held.append(&mut ready.persist);
            if *since == self.now {
                return;
            }
        }
        if !held.is_empty() && (!ready.persist.is_empty() || *since < self.now) {
            held.append(&mut ready.persist);
            std::mem::swap(held, &mut ready.persist);
        }
    }

    /// Advances the replica's clock by one tick: heartbeats, election timeouts,
    /// retransmissions and catch-up all count ticks.
    pub fn tick(&mut self) {
        self.now += 1;
        self.stale_read_tick();
        if !self.parked_fetches.is_empty() {
            self.answer_parked_fetches(true);
        }
        if self.cfg.learner {
            self.learner_tick();
            return;
        }
        if self.status != AcceptorStatus::Voter {
            self.recovery_tick();
            return;
        }
        match &mut self.role {
            RoleState::Follower => {
                if self.timers.election.expired(self.now) {
                    self.start_prevote();
                }
            }
            RoleState::Candidate(c) => {
                if c.give_up.expired(self.now) {
                    // The election failed: ask again before raising the ballot further,
                    // and be more patient next time.
                    self.timers.backoff = (self.timers.backoff + 1).min(timers::MAX_BACKOFF);
                    self.become_follower(None);
                    self.start_prevote();
                } else if c.resend.expired(self.now) {
                    c.resend.reset(self.now, self.cfg.retransmit_ticks);
                    let (ballot, from_slot, nonce, handover) =
                        (c.ballot, c.from_slot, c.nonce, c.handover);
                    // A promiser part-way through a paged PROMISE is asked again for
                    // the page it owes.
                    let missing: Vec<(NodeId, Slot)> = self
                        .cfg
                        .members
                        .iter()
                        .copied()
                        .filter(|m| *m != self.cfg.id && !c.promises.contains_key(m))
                        .map(|m| (m, c.pages.get(&m).map_or(from_slot, |p| p.next)))
                        .collect();
                    for (m, from_slot) in missing {
                        self.send(
                            m,
                            Message::Prepare {
                                ballot,
                                from_slot,
                                nonce,
                                handover,
                            },
                        );
                    }
                }
            }
            RoleState::Leader(_) => {
                self.leader_tick();
                self.read_tick();
                self.transfer_tick();
            }
        }
        self.maybe_fetch();
    }

    /// Handles a client request. The answer comes later in [`Ready::replies_now`] or
    /// [`Ready::replies`]: a redirect when this replica is not the leader, the cached
    /// reply for a request already executed, or the result once the request is chosen
    /// and executed. A leader proposes the requests it queued at the next
    /// [`take_ready`](Replica::take_ready) (several in one slot when
    /// [`Config::max_requests_per_slot`](crate::Config::max_requests_per_slot) allows;
    /// at once when it is 1).
    pub fn handle_request(&mut self, request: Request) {
        if request.is_read() {
            self.on_read(request);
            return;
        }
        if request.is_stale_read() {
            self.on_stale_read(request);
            return;
        }
        let RoleState::Leader(leader) = &mut self.role else {
            // Followers, candidates and replicas still founding or recovering.
            self.redirect(&request);
            return;
        };
        if !request.is_register() {
            match self.exec.sessions().check(request.client, request.seq) {
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
        if self.requests_per_slot() == 1 {
            self.pump();
        }
        // Otherwise the request waits for the end of the round ([`Replica::take_ready`]),
        // where the leader packs everything that arrived meanwhile into as few slots
        // as it can: its ACCEPTs leave only then anyway.
    }

    /// Handles a message from peer `from`. A replica outside the membership (a
    /// [learner](Config::learner)) is answered only when it asks for chosen values
    /// (FETCH, snapshot pieces); its other messages are ignored.
    pub fn handle_message(&mut self, from: NodeId, message: Message) {
        if from == self.cfg.id {
            return;
        }
        let Some(from_idx) = self.index_of(from) else {
            // A learner, or a member a membership change left out (a learner hears
            // from those only once the cluster has changed its membership).
            self.handle_message_from_outsider(from, message);
            return;
        };
        if self.cfg.learner {
            self.handle_message_as_learner(from, message);
            return;
        }
        if self.status != AcceptorStatus::Voter {
            self.handle_message_not_voting(from, message);
            return;
        }
        if self.sent_in_later_epoch(from, &message) {
            return;
        }
        if let RoleState::Leader(l) = &mut self.role {
            l.contact[from_idx].reset(self.now, self.cfg.election_ticks * 2);
        }
        // The handlers of what a stable leader and its followers exchange (ACCEPT,
        // ACCEPTED, COMMIT, HEARTBEAT) may be inlined here; the others are
        // `#[inline(never)]`, so that the steady-state path stays compact in the
        // instruction cache (five replicas' worth of it cycles through one core).
        match message {
            Message::PreVote { ballot } => self.on_prevote(from, ballot),
            Message::PreVoteGranted { ballot } => self.on_prevote_granted(from_idx, ballot),
            Message::Prepare {
                ballot,
                from_slot,
                nonce,
                handover,
            } => self.on_prepare(from, ballot, from_slot, nonce, handover),
            Message::TimeoutNow { ballot } => self.on_timeout_now(from, ballot),
            Message::Promise {
                ballot,
                commit_point,
                entries,
                truncated,
                nonce,
                incarnation,
                incarnations,
                from_slot,
            } => self.on_promise(
                from,
                ballot,
                nonce,
                &incarnations,
                Promised {
                    answers: from_slot,
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
            } => self.on_accept(from, ballot, commit_point, entries),
            Message::NewView {
                ballot,
                commit_point,
                entries,
            } => self.on_new_view(from, ballot, commit_point, entries),
            Message::Accepted {
                ballot,
                slots,
                incarnation,
            } => self.on_accepted(from_idx, ballot, &slots, incarnation),
            Message::Heartbeat {
                ballot,
                commit_point,
            } => self.on_heartbeat(from, ballot, commit_point),
            Message::Commit {
                ballot,
                commit_point,
            } => self.on_commit(from, ballot, commit_point),
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
            Message::ReadIndex {
                ballot,
                round,
                commit_point,
            } => self.on_read_index(from, ballot, round, commit_point),
            Message::ReadIndexAck {
                ballot,
                round,
                incarnation,
            } => self.on_read_index_ack(from_idx, ballot, round, incarnation),
            m @ Message::SnapshotChunk { .. } => self.on_snapshot_chunk_message(from, m),
            Message::SnapshotRequest {
                slot,
                digest,
                offset,
            } => self.on_snapshot_request(from, slot, digest, offset),
            // Answers to a recovery this voter is not running.
            Message::RecoverGrant { .. }
            | Message::RecoverRefused { .. }
            | Message::NeverVoted { .. } => {}
        }
    }

    /// Answers a request this replica does not serve with a redirect to the leader it
    /// believes in (never itself).
    pub(super) fn redirect(&mut self, request: &Request) {
        let leader = self.leader.filter(|l| *l != self.cfg.id);
        self.reply(request.client, request.seq, Response::Redirect { leader });
    }

    pub(super) fn reply(&mut self, client: ClientId, seq: u64, response: Response) {
        self.ready.replies.push(Reply {
            client,
            seq,
            response,
        });
    }

    /// Queues `message` for `to`: in [`Ready::messages`] when it vouches for this
    /// round's writes, else in [`Ready::messages_now`].
    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        #[allow(unused_mut)]
        let mut waits = message.vouches_for_writes();
        #[cfg(test)]
        if self.cfg.mutation == Mutation::VotesLeaveEarly
            || (self.cfg.mutation == Mutation::PromisesLeaveEarly
                && matches!(message, Message::Promise { .. }))
        {
            waits = false;
        }
        if waits {
            self.ready.messages.push((to, message));
        } else {
            self.ready.messages_now.push((to, message));
        }
    }

    /// Sends `message` to every other member, in member order: a copy to each but
    /// the last, which gets `message` itself (one copy fewer; no peer list built).
    pub(super) fn broadcast(&mut self, message: Message) {
        let me = self.cfg.id;
        let Some(last) = self.cfg.members.iter().rposition(|m| *m != me) else {
            return;
        };
        for i in 0..last {
            let m = self.cfg.members[i];
            if m != me {
                self.send(m, message.clone());
            }
        }
        let m = self.cfg.members[last];
        self.send(m, message);
    }

    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.cfg
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.cfg.id)
            .collect()
    }

    pub(super) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.cfg.members.iter().position(|m| *m == id)
    }

    pub(super) fn random_timeout(&mut self) -> u64 {
        timers::election_ticks(&self.cfg, &mut self.rng)
    }
}

/// In a cluster of one, a round whose own, not yet durable, vote chose slots: what
/// serves chosen values (FETCH-REPLY, snapshot pieces, to learners) waits for the
/// writes as the replies do.
#[cold]
#[inline(never)]
fn hold_chosen_values(ready: &mut Ready) {
    let (serving, now): (Vec<_>, Vec<_>) = std::mem::take(&mut ready.messages_now)
        .into_iter()
        .partition(|(_, m)| {
            matches!(
                m,
                Message::FetchReply { .. }
                    | Message::SnapshotChunk { .. }
                    | Message::Snapshot { .. }
            )
        });
    ready.messages_now = now;
    ready.messages.extend(serving);
}
