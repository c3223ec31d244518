//! Execution: applying the log in slot order to the state machine and the session
//! table, and taking and installing checkpoints.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::*;
use crate::counters::Counters;
use crate::error::CheckpointError;
use crate::sessions::{Session, SessionCheck, Sessions};
use crate::traits::{Checkpoint, PersistOp, StateMachine};
use crate::types::{ClientId, Response, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

/// What a [`Checkpoint`]'s data holds.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) state_machine: Bytes,
    pub(super) sessions: Vec<(ClientId, Session)>,
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
    /// The replica's running totals (see [`Counters`]). They are statistics, not
    /// replicated state; they are kept here, with the executor's other since-start-up
    /// count (installed snapshots), and changed only through [`Executor::count`].
    counters: Counters,
}

impl<S> Executor<S> {
    pub(super) fn new(state_machine: S) -> Self {
        Executor {
            sm: state_machine,
            sessions: Sessions::new(),
            executed: 0,
            checkpoint: None,
            counters: Counters::default(),
        }
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

impl<S: StateMachine> Replica<S> {
    pub(super) fn execute(&mut self) {
        let interval = self.cfg.checkpoint_interval;
        while self.exec.executed < self.log.commit_point() {
            if interval > 0
                && self.exec.executed
                    >= self
                        .exec
                        .checkpoint
                        .as_ref()
                        .map_or(0, |c| c.slot)
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
                _ => continue,
            };
            self.execute_request(slot, client, seq, command);
        }
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
            if l.proposed.get(&client) == Some(&seq) {
                l.proposed.remove(&client);
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
                    let bytes = Bytes::from(postcard::to_allocvec(&out).unwrap_or_default());
                    if !self.awaiting.contains(&(client, seq)) {
                        // Nobody here waits for the reply: the session table keeps the
                        // only copy (no shared handle to make, no reply to build).
                        self.exec.sessions.record(client, seq, bytes, slot);
                        return;
                    }
                    self.exec.sessions.record(client, seq, bytes.clone(), slot);
                    Response::Ok(bytes)
                }
                Err(e) => {
                    self.exec.sessions.record(client, seq, Bytes::new(), slot);
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

    /// Replaces the replicated state with a checkpoint: verifies its digest, restores the
    /// state machine and the session table, and drops the log below it.
    pub(super) fn install(&mut self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        if !checkpoint.verify() {
            return Err(CheckpointError::Digest {
                slot: checkpoint.slot,
            });
        }
        let body: SnapshotBody =
            postcard::from_bytes(&checkpoint.data).map_err(|e| CheckpointError::Undecodable {
                slot: checkpoint.slot,
                cause: Arc::new(e),
            })?;
        self.exec.sm.restore(&body.state_machine)?;
        self.exec.sessions = Sessions::from_vec(body.sessions);
        let slot = checkpoint.slot;
        self.log.install(slot);
        self.exec.executed = self.exec.executed.max(slot);
        self.catch_up.raise(slot);
        if let RoleState::Leader(l) = &mut self.role {
            l.inflight = l.inflight.split_off(&slot);
            l.next_slot = l.next_slot.max(slot);
        }
        self.exec.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Snapshots the state machine and session table at `executed`, and compacts the
    /// log below the previous checkpoint.
    pub(super) fn take_checkpoint(&mut self) {
        #[allow(unused_mut)]
        let mut body = SnapshotBody {
            state_machine: Bytes::from(self.exec.sm.snapshot()),
            sessions: self.exec.sessions.to_sorted_vec(),
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
        let slot = self.exec.executed;
        if data.len() as u64 > self.cfg.max_snapshot_bytes {
            tracing::warn!(
                node = self.cfg.id,
                slot,
                bytes = data.len(),
                max = self.cfg.max_snapshot_bytes,
                "checkpoint larger than max_snapshot_bytes: replicas behind it cannot catch up by state transfer"
            );
        }
        let checkpoint = Checkpoint {
            slot,
            digest: crc32fast::hash(&data),
            data,
        };
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
        if self.awaiting.remove(&(client, seq)) {
            self.reply(client, seq, response);
        }
    }
}
