//! Execution: applying the log in slot order to the state machine and the session
//! table, and taking and installing checkpoints.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::*;
use crate::counters::Counters;
use crate::error::CheckpointError;
use crate::sessions::{CachedReply, Session, SessionCheck, Sessions};
use crate::traits::{Checkpoint, PersistOp, StateMachine};
use crate::types::{Ballot, ClientId, Membership, Response, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

/// What a [`Checkpoint`]'s data holds: this body, then [`SessionTimes`].
///
/// The body's layout is the one checkpoints had before sessions could expire, and the
/// times follow it, so that a checkpoint written before still installs (with every
/// time 0: its sessions expire one time-to-live after the upgraded cluster's first
/// clock entries), and a replica that predates expiry reads a newer checkpoint's body
/// (postcard ignores trailing bytes).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) state_machine: Bytes,
    pub(super) sessions: Vec<(ClientId, StoredSession)>,
}

/// A session as a checkpoint's body holds it (its time is in [`SessionTimes`]).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSession {
    pub(super) last_seq: u64,
    pub(super) reply: CachedReply,
    pub(super) last_slot: Slot,
}

/// The part of a checkpoint after its [`SnapshotBody`]: the log time, and each
/// session's [`Session::last_active`] in the body's order.
#[derive(Serialize, Deserialize)]
pub(super) struct SessionTimes {
    pub(super) log_time: u64,
    pub(super) last_active: Vec<u64>,
}

/// Encodes a checkpoint's data: the state machine's snapshot and the session table.
#[cfg(test)]
pub(super) fn encode_snapshot(
    state_machine: Bytes,
    sessions: &Sessions,
) -> Result<Vec<u8>, postcard::Error> {
    encode_snapshot_with(state_machine, sessions, None)
}

/// [`encode_snapshot`], with the configuration after the clock ballot when the cluster
/// changed its membership (`Some`): a replica that installs the checkpoint must know
/// who votes. Epoch 0 writes nothing more, so checkpoints of clusters that never
/// changed are what they were before membership changes existed.
pub(super) fn encode_snapshot_with(
    state_machine: Bytes,
    sessions: &Sessions,
    membership: Option<&Membership>,
) -> Result<Vec<u8>, postcard::Error> {
    let all = sessions.to_sorted_vec();
    let times = SessionTimes {
        log_time: sessions.log_time(),
        last_active: all.iter().map(|(_, s)| s.last_active).collect(),
    };
    let body = SnapshotBody {
        state_machine,
        sessions: all
            .into_iter()
            .map(|(c, s)| {
                (
                    c,
                    StoredSession {
                        last_seq: s.last_seq,
                        reply: s.reply,
                        last_slot: s.last_slot,
                    },
                )
            })
            .collect(),
    };
    let mut data = postcard::to_allocvec(&body)?;
    // Before the first clock entry every time is 0, which is also what a checkpoint
    // without times decodes to: leave them out, so that with expiry off checkpoints
    // are byte for byte what they were before it existed. Likewise the ballot of the
    // clock steps that count, after the times, once a step counted.
    let ballot = sessions.clock_ballot();
    if times.log_time > 0 || ballot != Ballot::ZERO || membership.is_some() {
        data.extend_from_slice(&postcard::to_allocvec(&times)?);
    }
    if ballot != Ballot::ZERO || membership.is_some() {
        data.extend_from_slice(&postcard::to_allocvec(&ballot)?);
    }
    if let Some(m) = membership {
        data.extend_from_slice(&postcard::to_allocvec(m)?);
    }
    Ok(data)
}

/// A checkpoint whose state machine snapshot is still to be serialized, off the
/// replica's thread (see [`StateMachine::snapshot_job`](crate::StateMachine::snapshot_job)
/// and [`Ready::checkpoint_jobs`](crate::Ready::checkpoint_jobs)).
#[derive(Debug)]
pub struct CheckpointJob {
    slot: Slot,
    job: crate::SnapshotJob,
    /// The encoded session table (and what follows it), as of `slot`.
    tail: Vec<u8>,
}

impl CheckpointJob {
    /// The slot the checkpoint is taken at: it reflects every slot below.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// Serializes the state machine's snapshot and encodes the checkpoint (with its
    /// CRC): the expensive part, on whatever thread calls it. Hand the result to
    /// [`Replica::checkpoint_finished`].
    pub fn run(self) -> FinishedCheckpoint {
        let slot = self.slot;
        // A panicking job must not leave the replica waiting for it for ever: it comes
        // back as a failure, and the replica takes the next checkpoint as usual.
        let job = self.job;
        let state = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.run())) {
            Ok(state) => state,
            Err(_) => return FinishedCheckpoint { slot, result: None },
        };
        // The layout of `encode_snapshot`: the state's bytes with their length, then
        // the rest of the body and the times.
        let Ok(mut data) = postcard::to_allocvec(&Bytes::from(state)) else {
            return FinishedCheckpoint { slot, result: None };
        };
        data.extend_from_slice(&self.tail);
        let data = Bytes::from(data);
        FinishedCheckpoint {
            slot,
            result: Some(Checkpoint {
                slot,
                digest: crc32fast::hash(&data),
                data,
            }),
        }
    }
}

/// What [`CheckpointJob::run`] made, for [`Replica::checkpoint_finished`]: the
/// checkpoint, or a failure (the job panicked).
#[derive(Debug)]
pub struct FinishedCheckpoint {
    slot: Slot,
    result: Option<Checkpoint>,
}

impl FinishedCheckpoint {
    /// The slot the checkpoint was taken at.
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// False when the job failed (its snapshot panicked): no checkpoint is stored.
    pub fn is_ok(&self) -> bool {
        self.result.is_some()
    }
}

/// Decodes what [`encode_snapshot`] wrote (or a checkpoint from before session
/// expiry, without times): the state machine's snapshot and the session table.
#[cfg(test)]
pub(super) fn decode_snapshot(data: &[u8]) -> Result<(Bytes, Sessions), postcard::Error> {
    decode_snapshot_with(data).map(|(sm, sessions, _)| (sm, sessions))
}

/// [`decode_snapshot`], with the configuration [`encode_snapshot_with`] wrote (`None`
/// for epoch 0).
pub(super) fn decode_snapshot_with(
    data: &[u8],
) -> Result<(Bytes, Sessions, Option<Membership>), postcard::Error> {
    let (body, rest) = postcard::take_from_bytes::<SnapshotBody>(data)?;
    let (times, rest) = if rest.is_empty() {
        let times = SessionTimes {
            log_time: 0,
            last_active: vec![0; body.sessions.len()],
        };
        (times, rest)
    } else {
        postcard::take_from_bytes::<SessionTimes>(rest)?
    };
    let (clock_ballot, rest) = if rest.is_empty() {
        (Ballot::ZERO, rest)
    } else {
        postcard::take_from_bytes::<Ballot>(rest)?
    };
    let membership = if rest.is_empty() {
        None
    } else {
        match postcard::take_from_bytes::<Membership>(rest)? {
            (m, []) if m.validate().is_ok() => Some(m),
            // Anything after the configuration is not a checkpoint this version wrote.
            _ => return Err(postcard::Error::DeserializeBadEncoding),
        }
    };
    if times.last_active.len() != body.sessions.len() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    let sessions = body
        .sessions
        .into_iter()
        .zip(times.last_active)
        .map(|((c, s), last_active)| {
            (
                c,
                Session {
                    last_seq: s.last_seq,
                    reply: s.reply,
                    last_slot: s.last_slot,
                    last_active,
                },
            )
        })
        .collect();
    Ok((
        body.state_machine,
        Sessions::restore(times.log_time, sessions).with_clock_ballot(clock_ballot),
        membership,
    ))
}

/// The replicated state and how far the log was applied to it.
///
/// # Invariants
/// - `sm` and `sessions` are the result of executing, strictly in slot order, every
///   slot below `executed`: from the state `checkpoint` holds, when there is one, then
///   the log entries from `checkpoint.slot` up.
/// - `checkpoint.slot <= executed`: a checkpoint is taken at `executed`, or installed
///   and `executed` raised to it.
/// - `executed` never exceeds the log's commit point (only chosen values execute) and
///   never moves down.
///
/// The fields are private to this file: execution, checkpoints and state transfer
/// below are the only code that changes them.
#[derive(Debug)]
pub(super) struct Executor<S> {
    sm: S,
    sessions: Sessions,
    /// Every slot below this was executed.
    executed: Slot,
    /// The latest checkpoint taken or installed. The log is kept from the checkpoint
    /// before it, so a follower slightly behind can still fetch entries instead of a
    /// snapshot.
    checkpoint: Option<Checkpoint>,
    /// The slots of the checkpoints whose [`CheckpointJob`]s are out, oldest first (at
    /// most [`MAX_CHECKPOINT_JOBS`]).
    pending_checkpoints: VecDeque<Slot>,
    /// The slot of the latest checkpoint taken (its job may still be out) or installed:
    /// the next is due `checkpoint_interval` slots later, as it would be if every
    /// checkpoint were taken at once, so that replicas that executed the same log
    /// checkpoint at the same slots (and a transfer can resume from any of them).
    last_checkpoint_slot: Slot,
    /// The replica's running totals (see [`Counters`]). They are statistics, not
    /// replicated state; they are kept here, with the executor's other since-start-up
    /// count (installed snapshots), and changed only through [`Executor::count`].
    counters: Counters,
    /// Where outputs are encoded before being copied out at their exact size: one
    /// allocation per output, not a growing vector and a shared header.
    scratch: Vec<u8>,
    /// Where the replies this replica hands out are cut from (see
    /// [`CachedReply::to_bytes_in`]).
    reply_arena: BytesMut,
}

impl<S> Executor<S> {
    pub(super) fn new(state_machine: S) -> Self {
        Executor {
            sm: state_machine,
            sessions: Sessions::new(),
            executed: 0,
            checkpoint: None,
            pending_checkpoints: VecDeque::new(),
            last_checkpoint_slot: 0,
            counters: Counters::default(),
            scratch: Vec::new(),
            reply_arena: BytesMut::new(),
        }
    }

    /// An output encoded with postcard (empty if it cannot be encoded, as before).
    fn encode_output<T: Serialize>(&mut self, output: &T) -> CachedReply {
        // Most outputs are small: encoded on the stack and kept inline in the session
        // table, with no allocation (every replica caches every output; only the one
        // that answers makes `Bytes` of it). postcard's `Vec` flavour would extend byte
        // by byte.
        let mut small = [0u8; CachedReply::INLINE];
        if let Ok(encoded) = postcard::to_slice(output, &mut small) {
            let len = encoded.len();
            return CachedReply::inline(small, len);
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let reply = match postcard::to_extend(output, buf) {
            Ok(buf) => {
                let reply = CachedReply::from(&buf[..]);
                self.scratch = buf;
                reply
            }
            Err(_) => CachedReply::new(),
        };
        if self.scratch.capacity() > 64 << 10 {
            // One large output does not keep its buffer for ever.
            self.scratch = Vec::new();
        }
        reply
    }

    pub(super) fn state_machine(&self) -> &S {
        &self.sm
    }

    pub(super) fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Every slot below this was executed.
    pub(super) fn executed(&self) -> Slot {
        self.executed
    }

    pub(super) fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The running totals, to count an event.
    pub(super) fn count(&mut self) -> &mut Counters {
        &mut self.counters
    }
}

/// At most this many [`CheckpointJob`]s out at once; while they are, checkpoints that
/// fall due are skipped.
const MAX_CHECKPOINT_JOBS: usize = 4;

/// Spacing checkpoints by the session count stretches them at most this many times
/// [`Config::checkpoint_interval`](crate::Config::checkpoint_interval).
const MAX_SESSION_SPACING: u64 = 16;

impl<S: StateMachine> Replica<S> {
    pub(super) fn execute(&mut self) {
        let interval = self.cfg.checkpoint_interval;
        while self.exec.executed < self.log.commit_point() {
            // Each checkpoint encodes the whole session table: spacing them by the
            // number of sessions bounds that cost per executed slot.
            // (At most 16 intervals apart: clients must not be able to make the log
            // hold much more than `checkpoint_interval` asks for.)
            let per_sessions = (self.exec.sessions.len() as u64)
                .saturating_mul(self.cfg.checkpoint_slots_per_session)
                .min(interval.saturating_mul(MAX_SESSION_SPACING));
            let interval = interval.max(per_sessions);
            if self.cfg.checkpoint_interval > 0
                && self.exec.executed
                    >= self
                        .exec
                        .checkpoint
                        .as_ref()
                        .map_or(0, |c| c.slot)
                        .max(self.exec.last_checkpoint_slot)
                        .saturating_add(interval)
            {
                self.take_checkpoint();
            }
            let slot = self.exec.executed;
            self.exec.executed += 1;
            // Read what execution needs straight out of the log entry (no copy of the
            // request): its session, its number, and the command decoded (decoding is
            // pure, so doing it before the session check changes no outcome).
            let (client, seq, command) = match self.log.get(slot) {
                Some(Entry {
                    value: Value::Request(r),
                    ..
                }) => {
                    let command =
                        (!r.is_register()).then(|| postcard::from_bytes::<S::Command>(&r.payload));
                    (r.client, r.seq, command)
                }
                Some(Entry {
                    value: Value::Batch(requests),
                    ..
                }) => {
                    // Every request in its turn, as if each had a slot of its own. A
                    // registration has no place in a batch (a session's id is its
                    // registration's slot): skipped, on every replica alike.
                    let requests = Arc::clone(requests);
                    for (i, r) in requests.iter().filter(|r| !r.is_register()).enumerate() {
                        let command = postcard::from_bytes::<S::Command>(&r.payload);
                        self.execute_batched(slot, r.client, r.seq, command, i);
                    }
                    continue;
                }
                Some(Entry {
                    value: Value::Clock { time, idle_limit },
                    ..
                }) => {
                    let (time, idle_limit) = (*time, *idle_limit);
                    self.execute_clock(time, idle_limit);
                    continue;
                }
                Some(Entry {
                    value:
                        Value::ClockStep {
                            ballot,
                            from,
                            time,
                            idle_limit,
                        },
                    ..
                }) => {
                    let (ballot, from, time, idle_limit) = (*ballot, *from, *time, *idle_limit);
                    #[cfg(test)]
                    let unchained = self.cfg.mutation == Mutation::ClockStepsUnchained;
                    #[cfg(not(test))]
                    let unchained = false;
                    if unchained || self.exec.sessions.step_counts(ballot, from) {
                        self.exec.sessions.raise_clock_ballot(ballot);
                        self.execute_clock(time, idle_limit);
                    } else {
                        self.exec.count().clock_steps_ignored += 1;
                        tracing::debug!(
                            node = self.cfg.id,
                            slot,
                            from,
                            %ballot,
                            log_time = self.exec.sessions.log_time(),
                            clock_ballot = %self.exec.sessions.clock_ballot(),
                            "clock step off the log's chain ignored"
                        );
                    }
                    continue;
                }
                Some(Entry {
                    value: Value::Reconfigure(m),
                    ..
                }) => {
                    let m = Arc::clone(m);
                    self.execute_stop_sign(slot, m);
                    continue;
                }
                _ => continue,
            };
            self.execute_request(slot, client, seq, command);
        }
    }

    /// Executes request `seq` of `client`, the `index`th request of a batch chosen in
    /// `slot`.
    fn execute_batched(
        &mut self,
        slot: Slot,
        client: ClientId,
        seq: u64,
        command: Result<S::Command, postcard::Error>,
        index: usize,
    ) {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::BatchedDuplicatesExecute && index > 0 {
            // Broken on purpose: no session check for a batch's later requests.
            if let Ok(cmd) = command {
                let out = self.exec.sm.apply(cmd);
                let reply = self.exec.encode_output(&out);
                let bytes = reply.to_bytes();
                self.exec.sessions.record(client, seq, reply, slot);
                self.reply_awaited(client, seq, Response::Ok(bytes));
            }
            return;
        }
        let _ = index;
        self.execute_request(slot, client, seq, Some(command));
    }

    /// Executes request `seq` of `client` chosen in `slot`: a registration when
    /// `command` is `None`, else the decoded command (or why it would not decode).
    pub(super) fn execute_request(
        &mut self,
        slot: Slot,
        client: ClientId,
        seq: u64,
        command: Option<Result<S::Command, postcard::Error>>,
    ) {
        if let RoleState::Leader(l) = &mut self.role {
            if let std::collections::hash_map::Entry::Occupied(e) = l.proposed.entry(client) {
                if *e.get() == seq {
                    e.remove();
                }
            }
        }
        let Some(command) = command else {
            // The session's id is the slot of its registration, not the client's
            // nonce: a late duplicate of this registration executes in another slot
            // and creates another session, which nobody uses, instead of bringing an
            // evicted session back to life (and with it, retries that would execute
            // a second time).
            #[cfg(test)]
            let id = if self.cfg.mutation == Mutation::ClientChosenSessionIds {
                client
            } else {
                slot
            };
            #[cfg(not(test))]
            let id = slot;
            self.exec.sessions.register(id, slot, self.cfg.max_sessions);
            let reply = Bytes::from(postcard::to_allocvec(&id).unwrap_or_default());
            self.reply_awaited(client, 0, Response::Ok(reply));
            return;
        };
        #[allow(unused_mut)]
        let mut check = self.exec.sessions.check(client, seq);
        #[cfg(test)]
        if self.cfg.mutation == Mutation::LeaderLocalSessions && check != SessionCheck::Unknown {
            check = SessionCheck::Fresh;
        }
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ExpiredSessionExecutes && check == SessionCheck::Unknown {
            check = SessionCheck::Fresh;
        }
        let response = match check {
            SessionCheck::Fresh => match command {
                Ok(cmd) => {
                    let out = self.exec.sm.apply(cmd);
                    let reply = self.exec.encode_output(&out);
                    if self.awaiting.is_empty() || !self.awaiting.remove(&(client, seq)) {
                        // Nobody here waits for the reply (on a follower, nobody at
                        // all): the session table keeps the only copy.
                        self.exec.sessions.record(client, seq, reply, slot);
                        return;
                    }
                    let bytes = reply.to_bytes_in(&mut self.exec.reply_arena);
                    self.exec.sessions.record(client, seq, reply, slot);
                    self.reply(client, seq, Response::Ok(bytes));
                    return;
                }
                Err(e) => {
                    self.exec
                        .sessions
                        .record(client, seq, CachedReply::new(), slot);
                    Response::Invalid {
                        reason: format!("undecodable command: {e}"),
                    }
                }
            },
            SessionCheck::Duplicate(bytes) => Response::Ok(self.cached_reply(bytes)),
            SessionCheck::Stale => Response::Stale,
            SessionCheck::Unknown => Response::SessionExpired,
        };
        self.reply_awaited(client, seq, response);
    }

    /// Executes a clock entry: advances the log time and expires the sessions idle
    /// for more than `idle_limit` (see [`Sessions`]). Reads nothing replica-local.
    pub(super) fn execute_clock(&mut self, time: u64, idle_limit: u64) {
        #[allow(unused_mut)]
        let mut time = time;
        #[cfg(test)]
        match self.cfg.mutation {
            Mutation::ExpiryOnLocalClock => time = self.now,
            Mutation::ClockTimeAdded => time = time.saturating_add(self.exec.sessions.log_time()),
            _ => {}
        }
        let expired = self.exec.sessions.advance_time(time, idle_limit);
        if expired > 0 {
            self.exec.count().sessions_expired += expired as u64;
            tracing::debug!(
                node = self.cfg.id,
                log_time = self.exec.sessions.log_time(),
                expired,
                left = self.exec.sessions.len(),
                "idle sessions expired"
            );
        }
    }

    /// Replaces the replicated state with a checkpoint: verifies its digest, restores the
    /// state machine and the session table, and drops the log below it.
    pub(super) fn install(&mut self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        if !checkpoint.verify() {
            return Err(CheckpointError::Digest {
                slot: checkpoint.slot,
            });
        }
        let (state_machine, sessions, membership) = decode_snapshot_with(&checkpoint.data)
            .map_err(|e| CheckpointError::Undecodable {
                slot: checkpoint.slot,
                cause: Arc::new(e),
            })?;
        self.exec.sm.restore(&state_machine)?;
        self.exec.sessions = sessions;
        let slot = checkpoint.slot;
        self.log.install(slot);
        self.exec.executed = self.exec.executed.max(slot);
        self.catch_up.raise(slot);
        if let RoleState::Leader(l) = &mut self.role {
            l.keep_inflight_from(slot);
            l.next_slot = l.next_slot.max(slot);
        }
        self.exec.checkpoint = Some(checkpoint);
        // Jobs still out for older slots are of no use now: their results are ignored
        // (they no longer match).
        self.exec.pending_checkpoints.clear();
        self.exec.last_checkpoint_slot = slot;
        if let Some(m) = membership {
            // The checkpoint is past the stop-sign that started this configuration.
            self.enter_epoch(m, slot);
        }
        Ok(())
    }

    /// Snapshots the state machine and session table at `executed`, and compacts the
    /// log below the previous checkpoint; or, when the state machine offers a
    /// [`SnapshotJob`](crate::SnapshotJob), hands the snapshot to the driver as a
    /// [`CheckpointJob`] and stores the checkpoint when it comes back.
    pub(super) fn take_checkpoint(&mut self) {
        if self.exec.pending_checkpoints.len() >= MAX_CHECKPOINT_JOBS {
            // The driver is slower than the checkpoint interval: skip this one (the
            // next is due at the next slot).
            return;
        }
        if let Some(job) = self.exec.sm.snapshot_job() {
            // The session table as of this slot, encoded now (the state machine's part
            // comes later, also as of this slot).
            let tail = match self.encode_checkpoint_data(Bytes::new()) {
                Ok(mut d) => {
                    // An empty state is one byte, its length 0: what follows it is the rest.
                    d.remove(0);
                    d
                }
                Err(e) => {
                    tracing::warn!(node = self.cfg.id, error = %e, "cannot encode a checkpoint");
                    return;
                }
            };
            let slot = self.exec.executed;
            self.exec.pending_checkpoints.push_back(slot);
            self.exec.last_checkpoint_slot = slot;
            self.ready
                .checkpoint_jobs
                .push(CheckpointJob { slot, job, tail });
            return;
        }
        let state_machine = Bytes::from(self.exec.sm.snapshot());
        let data = match self.encode_checkpoint_data(state_machine) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                tracing::warn!(node = self.cfg.id, error = %e, "cannot encode a checkpoint");
                return;
            }
        };
        let checkpoint = Checkpoint {
            slot: self.exec.executed,
            digest: crc32fast::hash(&data),
            data,
        };
        self.store_checkpoint(checkpoint);
    }

    /// A [`CheckpointJob`] came back from the driver: the checkpoint is stored (and the
    /// log compacted below the previous one) unless a newer one was installed
    /// meanwhile. A result that is not the one this replica waits for is ignored.
    pub fn checkpoint_finished(&mut self, finished: FinishedCheckpoint) {
        let Some(i) = self
            .exec
            .pending_checkpoints
            .iter()
            .position(|s| *s == finished.slot())
        else {
            return;
        };
        self.exec.pending_checkpoints.remove(i);
        let Some(checkpoint) = finished.result else {
            tracing::error!(
                node = self.cfg.id,
                slot = finished.slot,
                "the state machine's snapshot job panicked; no checkpoint stored, the next one is taken as usual"
            );
            return;
        };
        if self
            .exec
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.slot >= checkpoint.slot)
        {
            return;
        }
        #[allow(unused_mut)]
        let mut checkpoint = checkpoint;
        #[cfg(test)]
        if self.cfg.mutation == Mutation::CheckpointAtCompletion {
            checkpoint.slot = self.exec.executed;
        }
        self.store_checkpoint(checkpoint);
    }

    /// A checkpoint's data: the state machine's snapshot, then the session table as it
    /// is now (none in the broken variant that forgets it).
    fn encode_checkpoint_data(&self, state_machine: Bytes) -> Result<Vec<u8>, postcard::Error> {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::CheckpointWithoutSessions {
            return encode_snapshot_with(state_machine, &Sessions::new(), None);
        }
        let membership = (self.membership.epoch > 0).then_some(&*self.membership);
        encode_snapshot_with(state_machine, &self.exec.sessions, membership)
    }

    /// Stores `checkpoint`, taken here, and compacts the log below the previous one.
    fn store_checkpoint(&mut self, checkpoint: Checkpoint) {
        let (slot, data) = (checkpoint.slot, &checkpoint.data);
        if data.len() as u64 > self.cfg.max_snapshot_bytes {
            tracing::warn!(
                node = self.cfg.id,
                slot,
                bytes = data.len(),
                max = self.cfg.max_snapshot_bytes,
                "checkpoint larger than max_snapshot_bytes: replicas behind it cannot catch up by state transfer"
            );
        }
        self.exec.last_checkpoint_slot = self.exec.last_checkpoint_slot.max(slot);
        let compact_below = self.exec.checkpoint.as_ref().map_or(0, |c| c.slot);
        self.ready
            .persist
            .push(PersistOp::Checkpoint(checkpoint.clone()));
        self.exec.checkpoint = Some(checkpoint);
        self.exec.count().checkpoints_taken += 1;
        if self.log.compact(compact_below) {
            self.ready.persist.push(PersistOp::Compact(compact_below));
        }
    }

    /// The reply cached in the session table for a duplicate request.
    #[allow(clippy::unused_self)]
    pub(super) fn cached_reply(&self, reply: Bytes) -> Bytes {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::GarbledCachedReply {
            return Bytes::from_static(&[0x7f]);
        }
        reply
    }

    pub(super) fn reply_awaited(&mut self, client: ClientId, seq: u64, response: Response) {
        if !self.awaiting.is_empty() && self.awaiting.remove(&(client, seq)) {
            self.reply(client, seq, response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint's data as replicas from before session expiry read it.
    type OldSnapshot = (Bytes, Vec<(u64, (u64, Bytes, u64))>);

    #[test]
    fn a_checkpoint_from_before_session_expiry_still_installs() {
        // The layout checkpoints had before: the state machine's snapshot, then each
        // session as (client, (last request number, reply, last slot)); no times.
        let old = postcard::to_allocvec(&(
            Bytes::from_static(b"state"),
            vec![
                (5u64, (3u64, Bytes::from_static(b"r"), 7u64)),
                (9u64, (1u64, Bytes::new(), 8u64)),
            ],
        ))
        .unwrap();
        let (sm, sessions) = decode_snapshot(&old).unwrap();
        assert_eq!(&sm[..], b"state");
        assert_eq!(sessions.log_time(), 0);
        let s = sessions.get(5).unwrap();
        assert_eq!(
            (s.last_seq, &s.reply[..], s.last_slot, s.last_active),
            (3, &b"r"[..], 7, 0)
        );
        assert_eq!(sessions.len(), 2);
        // Written again before any clock entry, it is byte for byte what it was.
        assert_eq!(encode_snapshot(sm, &sessions).unwrap(), old);
    }

    #[test]
    fn a_checkpoint_keeps_the_log_time_and_each_sessions_last_use() {
        let mut sessions = Sessions::new();
        sessions.register(4, 4, 10);
        sessions.advance_time(120, 1000);
        sessions.register(6, 6, 10);
        sessions.record(4, 1, Bytes::from_static(b"x"), 7);
        sessions.advance_time(130, 1000);
        let data = encode_snapshot(Bytes::from_static(b"sm"), &sessions).unwrap();
        let (sm, back) = decode_snapshot(&data).unwrap();
        assert_eq!(&sm[..], b"sm");
        assert_eq!(back, sessions);
        assert_eq!(back.log_time(), 130);
        assert_eq!(back.get(6).map(|s| s.last_active), Some(120));
        // What a replica from before expiry reads of it: the same body, times ignored.
        let old: OldSnapshot = postcard::from_bytes(&data).unwrap();
        assert_eq!(old.1.len(), 2);
        // Times that do not match the sessions are refused.
        let mut bad = postcard::to_allocvec(&SnapshotBody {
            state_machine: Bytes::new(),
            sessions: Vec::new(),
        })
        .unwrap();
        bad.extend(postcard::to_allocvec(&(5u64, vec![1u64])).unwrap());
        assert!(decode_snapshot(&bad).is_err());
    }
}
