//! The drive loop: one place that hands a round's outputs over in the order their
//! guarantees need. The node driver, the simulation, the benchmarks and the crate docs
//! all go through it.

use crate::error::StorageError;
use crate::message::Message;
use crate::replica::{Ready, Replica};
use crate::traits::{PersistOp, StateMachine, Storage};
use crate::types::{NodeId, Reply};

impl Ready {
    /// Hands the outputs over in the order the protocol needs: what waits for nothing
    /// (`messages_now`, `replies_now`), then **persist, then send, then reply**.
    ///
    /// `persist` is handed the writes to keep, in a vector it owns (a store that holds
    /// them in memory moves them in: [`Storage::persist_owned`]).
    ///
    /// The PROMISEs, ACCEPTEDs and replies in `messages` and `replies` vouch for state
    /// in `persist`, so none is sent or answered before `persist` has returned `Ok`
    /// (made the writes durable, in one call: group commit). If it fails, none of them
    /// is sent or answered and the error is returned: the caller must stop the replica
    /// (what it has not made durable it may have half-written). The outputs that wait
    /// for nothing have left by then, which is what lets the leader's ACCEPTs travel
    /// while its own write is being made durable (see [`Ready`]).
    pub fn deliver<E>(
        self,
        persist: impl FnOnce(Vec<PersistOp>) -> Result<(), E>,
        send: impl FnMut(NodeId, Message),
        reply: impl FnMut(Reply),
    ) -> Result<(), E> {
        let mut ready = self;
        ready.deliver_mut(|ops| persist(std::mem::take(ops)), send, reply)
    }

    /// [`deliver`](Self::deliver), leaving this `Ready` empty with its vectors' capacity
    /// kept, for [`Replica::take_ready_into`] to reuse: the same order, the same
    /// guarantees. `persist` is handed the round's writes in place: it may move them
    /// out ([`Storage::persist_owned`] does), and whatever it leaves is dropped once it
    /// returns, the vector's capacity kept for the next round. If `persist` fails, the
    /// messages and replies that waited for it are dropped, never sent, and the error
    /// is returned.
    pub fn deliver_mut<E>(
        &mut self,
        persist: impl FnOnce(&mut Vec<PersistOp>) -> Result<(), E>,
        mut send: impl FnMut(NodeId, Message),
        mut reply: impl FnMut(Reply),
    ) -> Result<(), E> {
        // Each vector is drained only if it holds something: a driver that delivers
        // every replica's `Ready` after every input finds most of them empty, and an
        // empty drain still costs its setup and tear-down.
        if !self.checkpoint_jobs.is_empty() {
            self.drop_checkpoint_jobs();
        }
        self.deliver_now(&mut send, &mut reply);
        if !self.persist.is_empty() {
            let persisted = persist(&mut self.persist);
            self.persist.clear();
            if let Err(e) = persisted {
                self.messages.clear();
                self.replies.clear();
                return Err(e);
            }
        }
        drain_each(&mut self.messages, |(to, m)| send(to, m));
        drain_each(&mut self.replies, &mut reply);
        Ok(())
    }
}

impl Ready {
    /// The first step of [`deliver_mut`](Self::deliver_mut): sends `messages_now` and
    /// delivers `replies_now`, which wait for nothing in this `Ready` (a driver that
    /// makes the writes durable elsewhere sends the rest once they are).
    #[inline(always)]
    pub(crate) fn deliver_now(
        &mut self,
        mut send: impl FnMut(NodeId, Message),
        reply: impl FnMut(Reply),
    ) {
        drain_each(&mut self.messages_now, |(to, m)| send(to, m));
        drain_each(&mut self.replies_now, reply);
    }
}

/// Hands each item of `items` to `f`, leaving the vector empty with its capacity;
/// touches nothing when it is empty.
#[inline(always)]
fn drain_each<T>(items: &mut Vec<T>, mut f: impl FnMut(T)) {
    if !items.is_empty() {
        for item in items.drain(..) {
            f(item);
        }
    }
}

impl Ready {
    /// The checkpoint jobs a caller of `deliver` left in: dropped, with a warning.
    #[cold]
    #[inline(never)]
    fn drop_checkpoint_jobs(&mut self) {
        for job in self.checkpoint_jobs.drain(..) {
            tracing::warn!(
                slot = job.slot(),
                "Ready::deliver dropped a checkpoint job: take it out and run it, or the replica stores no checkpoint for it"
            );
        }
    }
}

impl<S: StateMachine> Replica<S> {
    /// Takes the outputs of everything handled since the last call and
    /// [delivers](Ready::deliver) them: writes to `storage`, then messages to `send`,
    /// then replies to `reply`.
    ///
    /// Call it after each input, or after a batch of inputs (the writes of the batch
    /// then share one [`Storage::persist`]). A storage error stops the round: stop the
    /// replica.
    pub fn drive<St: Storage + ?Sized>(
        &mut self,
        storage: &mut St,
        send: impl FnMut(NodeId, Message),
        reply: impl FnMut(Reply),
    ) -> Result<(), StorageError> {
        // One `Ready` kept between calls: its vectors serve every round.
        let mut ready = self.take_spare_ready();
        let jobs = std::mem::take(&mut ready.checkpoint_jobs);
        ready.deliver_mut(|ops| storage.persist_owned(ops), send, reply)?;
        self.return_spare_ready(ready);
        // A checkpoint the state machine snapshots off the replica's thread: here, at
        // once (a driver with threads to spare runs it elsewhere). Its writes go out
        // with the next call.
        for job in jobs {
            self.checkpoint_finished(job.run());
        }
        Ok(())
    }
}
