//! Learners: replicas outside the membership that copy the chosen log.
//!
//! A learner ([`Config::learner`]) never votes, never campaigns and is never counted in
//! a quorum: the members do not even know it. It *pulls*: it asks a member for the
//! chosen values above its commit point (a [`Message::Fetch`]) every two
//! [`heartbeat_ticks`](Config::heartbeat_ticks), and at once whenever an answer moved it
//! on, so under load it streams the log rather than polling it. A member that
//! compacted the slots asked for answers with its commit point and the first piece of
//! its checkpoint, and the learner pulls the rest as any replica does (see
//! `catch_up.rs`).
//!
//! Safety needs nothing new: a member answers a FETCH with chosen values only, and a
//! learner learns, executes, checkpoints and stores them exactly as a member would, so
//! its state is always a prefix of the chosen log. It serves stale reads
//! ([`Request::stale_read`](crate::Request::stale_read)) from that state once it has
//! caught up with the first commit point it heard of (or restarted with a state of its
//! own), and redirects every other request. A stale read whose floor is above
//! anything it heard of waits (within the usual bounds, an election timeout at most)
//! and makes it poll at once: a client that just read from a member is rarely more
//! than a one-way trip ahead of it (a poll period at most, when its held poll was lost).
//!
//! A member holds a FETCH from a learner that has everything it has (long-poll): it
//! answers as soon as its commit point moves, or after a heartbeat period with nothing
//! new. A learner that an answer moved on asks again at once, and one whose held poll
//! expired asks again at its next tick, so a caught-up learner nearly always has a poll
//! held by its member and hears of each commit a one-way trip after that member does,
//! not a poll period later. (An answer that came at once with nothing new, from a
//! member behind the learner or holding all the polls it may, leaves the learner to its
//! regular polls.)
//!
//! Whom it asks: one member at a time, at first the one that reported the highest
//! commit point, and the next member after two polls left unanswered (or answered by a
//! member behind it). A snapshot transfer that went round every member without a
//! piece is dropped for a FETCH (the member that had the checkpoint may be gone). Every fourth poll
//! goes to another member in turn, so that a learner whose member lags (cut off from
//! the leader, say) hears of a higher commit point and moves to whoever reported it.

use super::*;

/// Polls left unanswered by the member asked before asking the next one.
const POLLS_BEFORE_ROTATING: u64 = 2;

/// One poll in this many goes to another member, to hear of higher commit points.
const PROBE_EVERY: u64 = 4;

/// The most learners' FETCHes a member holds at once (one per learner); beyond it a
/// FETCH is answered at once, as without long-poll.
const MAX_PARKED_FETCHES: usize = 64;

/// A learner's FETCH held by a member until its commit point moves past `lo`, or
/// until tick `until`.
#[derive(Debug)]
pub(super) struct ParkedFetch {
    from: NodeId,
    lo: Slot,
    hi: Slot,
    until: u64,
}

impl<S: StateMachine> Replica<S> {
    /// A learner's tick: catch up when behind (as a member would), else poll.
    pub(super) fn learner_tick(&mut self) {
        if self.catch_up.known() > self.log.commit_point() {
            self.maybe_fetch();
            return;
        }
        if !self.timers.fetch.expired(self.now) {
            return;
        }
        // The member may hold this poll for a heartbeat period (long-poll): poll again
        // after twice that if no answer comes (an answer schedules the next poll).
        self.timers
            .fetch
            .reset(self.now, self.cfg.heartbeat_ticks.saturating_mul(2));
        let members = self.peers();
        if members.is_empty() {
            return;
        }
        let next_after = |m: Option<NodeId>| {
            let i = m.and_then(|m| members.iter().position(|x| *x == m));
            members[i.map_or(0, |i| (i + 1) % members.len())]
        };
        #[cfg(test)]
        let patient = self.cfg.mutation == crate::mutation::Mutation::LearnerNeverRotates;
        #[cfg(not(test))]
        let patient = false;
        let c = &mut self.catch_up;
        c.polls += 1;
        if c.polls.is_multiple_of(PROBE_EVERY) && !patient {
            let probe = members[(c.polls / PROBE_EVERY) as usize % members.len()];
            self.send_learner_fetch(probe);
            return;
        }
        let target = match c.poll_target.or(c.fetch_from()) {
            Some(t) if c.polls_unanswered < POLLS_BEFORE_ROTATING || patient => t,
            t => {
                c.polls_unanswered = 0;
                next_after(t)
            }
        };
        c.poll_target = Some(target);
        c.polls_unanswered += 1;
        self.send_learner_fetch(target);
    }

    /// Polls at the next tick (a stale read is waiting for more than it knows of).
    pub(super) fn poll_soon(&mut self) {
        self.timers.fetch.reset(self.now, 0);
    }

    /// Asks `to` for the chosen values above this learner's commit point.
    fn send_learner_fetch(&mut self, to: NodeId) {
        self.catch_up.last_poll = self.now;
        let lo = self.log.commit_point();
        let hi = lo.saturating_add(self.cfg.max_batch as u64);
        self.send(to, Message::Fetch { from: lo, to: hi });
    }

    /// A message that reached a learner: only the answers to its own requests matter.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn handle_message_as_learner(&mut self, from: NodeId, message: Message) {
        match message {
            Message::FetchReply {
                commit_point,
                entries,
            } => {
                // An answer from a member behind us (a wiped one, say) is as good as
                // none: after a few, ask the next member.
                let useful = commit_point >= self.log.commit_point();
                if self.catch_up.poll_target == Some(from) && useful {
                    self.catch_up.polls_unanswered = 0;
                }
                let before = self.log.commit_point();
                self.on_fetch_reply(from, commit_point, entries);
                let brought = self.log.commit_point() > before;
                if !self.catch_up_done && self.log.commit_point() >= self.catch_up.known() {
                    self.catch_up_done = true;
                }
                if self.catch_up.fetch_from() == Some(from) {
                    // It reported the highest commit point heard of: ask it from now on.
                    self.catch_up.poll_target = Some(from);
                    self.catch_up.polls_unanswered = 0;
                }
                if brought {
                    // It moved us on: ask again now (a duplicate or stale answer moves
                    // nothing, so it starts no second stream). Still behind, for the
                    // next batch; caught up, to be told of the next commit as it
                    // happens (the member holds the FETCH until then; the regular
                    // polls go on beside it, and with them the probes).
                    if self.catch_up.known() > self.log.commit_point() {
                        self.timers.fetch.reset(self.now, self.cfg.retransmit_ticks);
                    }
                    self.send_learner_fetch(from);
                } else if self.catch_up.poll_target == Some(from)
                    && self.now.saturating_sub(self.catch_up.last_poll)
                        >= self.cfg.heartbeat_ticks / 2
                {
                    // Nothing new after a while: the member held the poll until it
                    // expired. Poll again at the next tick (not at once: a tick
                    // apart at most), to be held again.
                    self.timers.fetch.reset(self.now, 1);
                }
            }
            m @ Message::SnapshotChunk { .. } => self.on_snapshot_chunk_message(from, m),
            Message::Snapshot { checkpoint } => self.on_snapshot(from, checkpoint),
            // Votes, elections, proposals and recoveries are for members. What a
            // replica outside the membership answers (a member that a change removed
            // holds the chosen log the new members may still lack), it answers too.
            other => self.handle_message_from_outsider(from, other),
        }
    }

    /// A message from a replica outside the membership (a learner): it may copy the
    /// chosen log, nothing else.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn handle_message_from_outsider(&mut self, from: NodeId, message: Message) {
        match message {
            Message::Fetch { from: lo, to: hi } => {
                self.parked_fetches.retain(|p| p.from != from);
                if lo == self.log.commit_point() && self.parked_fetches.len() < MAX_PARKED_FETCHES {
                    // It has everything we have: answer when there is more, or
                    // after a heartbeat period (it polls again after twice that).
                    let wait = self.cfg.heartbeat_ticks.max(1);
                    self.parked_fetches.push(ParkedFetch {
                        from,
                        lo,
                        hi,
                        until: self.now.saturating_add(wait),
                    });
                    return;
                }
                self.answer_outsider_fetch(from, lo, hi);
            }
            Message::SnapshotRequest {
                slot,
                digest,
                offset,
            } => {
                let other = self
                    .exec
                    .checkpoint()
                    .is_some_and(|cp| cp.slot != slot || cp.digest != digest);
                if other {
                    self.tell_commit_point(from);
                }
                self.on_snapshot_request(from, slot, digest, offset)
            }
            // A member of an epoch before ours that this configuration left out, still
            // campaigning or leading there: tell it how far the log went.
            Message::PreVote { ballot }
            | Message::Prepare { ballot, .. }
            | Message::Recover { ballot, .. }
            | Message::Heartbeat { ballot, .. }
            | Message::Accept { ballot, .. } => self.tell_behind(from, ballot),
            _ => {}
        }
    }

    /// Answers the learners' FETCHes held here whose slots the commit point has
    /// reached, and, at a tick, those held long enough (with what there is, perhaps
    /// nothing but the commit point).
    pub(super) fn answer_parked_fetches(&mut self, ticked: bool) {
        let (commit_point, now) = (self.log.commit_point(), self.now);
        #[cfg(test)]
        let forgotten = self.cfg.mutation == crate::mutation::Mutation::ParkedFetchForgotten;
        #[cfg(not(test))]
        let forgotten = false;
        let mut i = 0;
        while i < self.parked_fetches.len() {
            let p = &self.parked_fetches[i];
            if (commit_point > p.lo && !forgotten) || (ticked && now >= p.until) {
                let p = self.parked_fetches.swap_remove(i);
                self.answer_outsider_fetch(p.from, p.lo, p.hi);
            } else {
                i += 1;
            }
        }
    }

    /// Answers a learner's FETCH: chosen values, or, when they were compacted, our
    /// commit point and the first piece of our checkpoint.
    fn answer_outsider_fetch(&mut self, to: NodeId, lo: Slot, hi: Slot) {
        if lo < self.log.start() && self.exec.checkpoint().is_some() {
            self.tell_commit_point(to);
        }
        self.on_fetch(to, lo, hi);
    }

    /// Before the first piece of a checkpoint goes to a learner: a replica takes a
    /// checkpoint only below a commit point it heard of, and a learner hears of commit
    /// points only from answers like this one (no leader tells it), so tell it ours.
    pub(super) fn tell_commit_point(&mut self, to: NodeId) {
        let commit_point = self.log.commit_point();
        self.send(
            to,
            Message::FetchReply {
                commit_point,
                entries: Vec::new(),
            },
        );
    }
}
