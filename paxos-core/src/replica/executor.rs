//! Execution: applying the log in slot order to the state machine and the session
//! table, and taking and installing checkpoints.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::*;
use crate::sessions::{Session, SessionCheck, Sessions};
use crate::traits::{Checkpoint, PersistOp, StateMachine};
use crate::types::{ClientId, Request, Response, Slot, Value};

#[cfg(test)]
use crate::mutation::Mutation;

/// What a [`Checkpoint`]'s data holds.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) state_machine: Bytes,
    pub(super) sessions: Vec<(ClientId, Session)>,
}

impl<S: StateMachine> Replica<S> {
    pub(super) fn execute(&mut self) {
        let interval = self.cfg.checkpoint_interval;
        while self.executed < self.log.commit_point() {
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
            let request = match self.log.get(slot) {
                Some(Entry {
                    value: Value::Request(r),
                    ..
                }) => r.clone(),
                _ => continue,
            };
            self.execute_request(slot, request);
        }
    }

    pub(super) fn execute_request(&mut self, slot: Slot, r: Request) {
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

    /// Replaces the replicated state with a checkpoint: verifies its digest, restores the
    /// state machine and the session table, and drops the log below it.
    pub(super) fn install(&mut self, checkpoint: Checkpoint) -> Result<(), String> {
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
        self.log.install(slot);
        self.executed = self.executed.max(slot);
        self.known_commit = self.known_commit.max(slot);
        if let RoleState::Leader(l) = &mut self.role {
            l.inflight = l.inflight.split_off(&slot);
            l.next_slot = l.next_slot.max(slot);
        }
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Snapshots the state machine and session table at `executed`, and compacts the
    /// log below the previous checkpoint.
    pub(super) fn take_checkpoint(&mut self) {
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
