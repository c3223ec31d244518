//! The leader: its request queue, the window of slots in flight, batching into ACCEPTs,
//! retransmission, and counting ACCEPTEDs into quorums.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::*;
use crate::message::Message;
#[cfg(test)]
use crate::mutation::Mutation;
use crate::traits::StateMachine;
use crate::types::{Ballot, ClientId, Request, Slot, Value};

/// A proposal of this leader's that no quorum has accepted yet. Its value is the
/// leader's own log entry in the slot (accepted there at the leader's ballot), so it is
/// not held twice.
#[derive(Debug)]
pub(super) struct Inflight {
    pub(super) acks: u64,
    /// Expires when the proposal is due to be sent again to whoever has not accepted it.
    pub(super) resend: Timeout,
    /// The value's [`Value::size_hint`].
    pub(super) bytes: usize,
}

#[derive(Debug)]
pub(super) struct Leader {
    pub(super) ballot: Ballot,
    pub(super) next_slot: Slot,
    pub(super) inflight: BTreeMap<Slot, Inflight>,
    /// The sum of `inflight`'s `bytes`: proposing stops above
    /// [`Config::max_message_bytes`](crate::Config), so that what a leader leaves
    /// uncommitted (and its successor's PROMISEs then report whole) fits a message.
    pub(super) inflight_bytes: usize,
    pub(super) queue: VecDeque<Request>,
    /// Requests proposed and not yet executed, by client (a fast hash, randomly seeded
    /// per map: its keys come with clients' requests).
    pub(super) proposed: HashMap<ClientId, u64, foldhash::fast::RandomState>,
    /// Proposals made since the last flush, to go out in one ACCEPT per peer.
    pub(super) fresh: Vec<(Slot, Value)>,
    /// Expires when a heartbeat is due: nothing went to the followers for
    /// [`Config::heartbeat_ticks`](crate::Config).
    pub(super) heartbeat: Timeout,
    pub(super) announced_commit: Slot,
    /// One per member (by index): expires when the member has not been heard from for
    /// two election timeouts.
    pub(super) contact: Vec<Timeout>,
    /// The oldest incarnation of each member (by index) whose ACCEPTEDs count.
    pub(super) min_incarnation: Vec<u64>,
    /// The end of the log this leader announced when it took over: every value a
    /// previous leader may have had chosen lies below it (the floor of read points).
    pub(super) view_end: Slot,
    /// The merged log of phase 1 beyond what NEW-VIEW carried, by slot: proposed
    /// (before any request) as the in-flight byte budget allows.
    pub(super) readopt: BTreeMap<Slot, Value>,
    /// Reads waiting for a confirmed round and for execution.
    pub(super) reads: Reads,
    /// A leader transfer in progress: no new proposals meanwhile.
    pub(super) transfer: Option<super::handover::Transfer>,
    /// When to propose the next clock entry, and with what time.
    pub(super) clock: SessionClock,
    /// The slot of the stop-sign this leader proposed or re-proposed: nothing goes
    /// above it (R1 of `membership.rs`).
    pub(super) stop_sign: Option<Slot>,
    /// When this leader last counted an ACCEPTED (a heartbeat's too) of each member,
    /// by index: those heard lately vote (a recovering replica sends none).
    pub(super) voted_at: Vec<Option<u64>>,
    /// [`Config::hold_partial_slots`](crate::Config): while requests that would not
    /// fill a slot wait, the end of what was in flight when they began to: they wait
    /// for the slots below it only, not for any proposed since (clock entries, full
    /// slots), so the wait ends.
    pub(super) held_until: Option<Slot>,
}

/// The leader's clock for session expiry (see [`Sessions`](crate::Sessions)): a chain
/// of steps ([`Value::ClockStep`]), each from where the previous one ended (the first,
/// which opens the reign and moves no time, from the log time of the leader's log when
/// it was elected, `base` at its tick `since`) to `base` plus the ticks it counted
/// since. Log time thus never runs faster than the leader's own clock, and a step only
/// counts where the log time is what the leader built on and no newer leader's step
/// counted: a deposed leader's steps, landing behind entries it never saw, do nothing.
#[derive(Debug)]
pub(super) struct SessionClock {
    base: u64,
    since: u64,
    /// Where the next step starts: the log time after this leader's latest step.
    from: u64,
    /// Expires when the next clock entry is due.
    due: Timeout,
    /// The step that opens the reign was proposed (with expiry on, no request goes
    /// before it).
    opened: bool,
}

impl SessionClock {
    /// A clock that starts counting at tick `now` from log time `log_time` (the log
    /// time after every entry this leader has proposed or will re-propose), with its
    /// first entry due one `period` later.
    pub(super) fn start(log_time: u64, now: u64, period: u64) -> Self {
        SessionClock {
            base: log_time,
            since: now,
            from: log_time,
            due: Timeout::after(now, period),
            opened: false,
        }
    }

    /// The next step, proposed at tick `now`: from where the previous one ended to
    /// the time counted. The chain moves on to its end.
    fn step(&mut self, now: u64) -> (u64, u64) {
        let from = self.from;
        let time = self
            .base
            .saturating_add(now.saturating_sub(self.since))
            .max(from);
        self.from = time;
        (from, time)
    }

    /// Pauses the clock at tick `now` (nothing to expire): counting resumes later
    /// from where the chain stands, so the paused ticks are never counted.
    fn pause(&mut self, now: u64, period: u64) {
        let opened = self.opened;
        *self = SessionClock::start(self.from, now, period);
        self.opened = opened;
    }
}

impl<S: StateMachine> Replica<S> {
    /// The log time after executing every entry of the log below `end`, from the
    /// log time executed (clock steps count only where they would on execution).
    /// A new leader starts its clock from it: its own steps then chain onto the
    /// entries it re-proposes, including those still to go beyond its NEW-VIEW
    /// (`readopt`, which its log does not hold yet).
    pub(super) fn log_time_at(&self, end: Slot, readopt: &BTreeMap<Slot, Value>) -> u64 {
        let mut t = self.exec.sessions().log_time();
        let mut counting = self.exec.sessions().clock_ballot();
        for slot in self.exec.executed()..end {
            let value = readopt
                .get(&slot)
                .or_else(|| self.log.get(slot).map(|e| &e.value));
            match value {
                Some(Value::Clock { time, .. }) => t = t.max(*time),
                Some(Value::ClockStep {
                    ballot, from, time, ..
                }) if crate::sessions::step_counts(counting, t, *ballot, *from) => {
                    counting = *ballot;
                    t = t.max(*time);
                }
                _ => {}
            }
        }
        t
    }
}

/// How many of `values`, in order, one batch carries: at most `max_batch`, no more than
/// `max_bytes` of [`Value::size_hint`]s, and always the first.
pub(super) fn batch_len<'a>(
    values: impl IntoIterator<Item = &'a Value>,
    max_batch: usize,
    max_bytes: usize,
) -> usize {
    let mut n = 0;
    let mut bytes = 0usize;
    for v in values {
        bytes = bytes.saturating_add(v.size_hint());
        if n == max_batch || (n > 0 && bytes > max_bytes) {
            break;
        }
        n += 1;
    }
    n
}

/// What one request counts for in a batch's bytes: as much as a value of its own
/// ([`Value::size_hint`]).
fn request_bytes(request: &Request) -> usize {
    request
        .payload
        .len()
        .saturating_add(crate::config::VALUE_OVERHEAD_BYTES)
}

impl Leader {
    /// Whether a slot that would not be full may be proposed now: nothing is in
    /// flight, or nothing of what was in flight when requests began to wait. (Starts
    /// the wait when it says no.)
    fn partial_slot_may_go(&mut self) -> bool {
        match self.held_until {
            None if self.inflight.is_empty() => true,
            None => {
                self.held_until = Some(self.next_slot);
                false
            }
            Some(until) => self.inflight.range(..until).next().is_none(),
        }
    }

    /// Adds a proposal to the in-flight table, counting its bytes.
    pub(super) fn track(&mut self, slot: Slot, inflight: Inflight) {
        self.inflight_bytes = self.inflight_bytes.saturating_add(inflight.bytes);
        if let Some(old) = self.inflight.insert(slot, inflight) {
            self.inflight_bytes = self.inflight_bytes.saturating_sub(old.bytes);
        }
    }

    /// Takes a proposal out of the in-flight table.
    pub(super) fn untrack(&mut self, slot: Slot) -> Option<Inflight> {
        let inflight = self.inflight.remove(&slot)?;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(inflight.bytes);
        Some(inflight)
    }

    /// Proposes `value` in `slot` at this leader's ballot: accepted here (as a write to
    /// persist), in flight with this leader's own vote (member index `me`) until a
    /// quorum accepts it, and in the next ACCEPT.
    pub(super) fn propose(
        &mut self,
        ready: &mut Ready,
        log: &mut SlotLog,
        me: usize,
        resend: Timeout,
        slot: Slot,
        value: Value,
    ) {
        self.track(
            slot,
            Inflight {
                acks: 1u64 << me,
                resend,
                bytes: value.size_hint(),
            },
        );
        self.fresh.push((slot, value.clone()));
        store_accept(ready, log, slot, self.ballot, value);
    }

    /// Keeps only the proposals at or above `slot` (a checkpoint covers the rest).
    pub(super) fn keep_inflight_from(&mut self, slot: Slot) {
        self.inflight = self.inflight.split_off(&slot);
        self.inflight_bytes = self.inflight.values().map(|i| i.bytes).sum();
    }
}

impl<S: StateMachine> Replica<S> {
    /// The most entries and bytes of values one batch carries (see
    /// [`Config::max_message_bytes`](crate::Config::max_message_bytes)).
    pub(super) fn batch_limits(&self) -> (usize, usize) {
        #[cfg(test)]
        if self.cfg.mutation == crate::mutation::Mutation::BatchesIgnoreBytes {
            return (self.cfg.max_batch.max(1), usize::MAX);
        }
        (self.cfg.max_batch.max(1), self.cfg.max_message_bytes)
    }

    /// The most requests one slot carries ([`Config::max_requests_per_slot`](crate::Config)).
    pub(super) fn requests_per_slot(&self) -> usize {
        self.cfg.max_requests_per_slot.max(1)
    }

    pub(super) fn on_accepted(
        &mut self,
        from_idx: usize,
        ballot: Ballot,
        slots: &[Slot],
        incarnation: u64,
    ) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot || incarnation < l.min_incarnation[from_idx] {
            return;
        }
        let bit = 1u64 << from_idx;
        if let Some(t) = l.voted_at.get_mut(from_idx) {
            *t = Some(self.now);
        }
        for &s in slots {
            let chosen = match l.inflight.get_mut(&s) {
                Some(inf) => {
                    inf.acks |= bit;
                    inf.acks.count_ones() >= self.quorum
                }
                None => false,
            };
            if chosen && l.untrack(s).is_some() {
                self.log.mark_chosen(s);
            }
        }
        self.advance_commit();
        if self.requests_per_slot() == 1 || !self.cfg.hold_partial_slots {
            self.pump();
        } else {
            // Requests wait for the end of the round (`take_ready` pumps): those that
            // arrive meanwhile join them in as few slots as they fill.
            self.readopt();
        }
        self.check_transfer();
    }

    pub(super) fn check_commits(&mut self) {
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
            l.untrack(s);
            self.log.mark_chosen(s);
        }
        self.advance_commit();
    }

    pub(super) fn leader_tick(&mut self) {
        let me = self.me;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let now = self.now;
        l.contact[me].reset(now, self.cfg.election_ticks * 2);
        let live = l.contact.iter().filter(|t| !t.expired(now)).count() as u32;
        if live < self.quorum {
            // Cut off from a majority: stop accepting requests we cannot commit.
            self.become_follower(None);
            self.restart_election_timers();
            return;
        }
        // Retransmit proposals that have waited too long, batched per peer, each batch
        // within `max_batch` entries and `max_message_bytes` (at least one entry).
        let (max_batch, max_bytes) = (self.cfg.max_batch, self.cfg.max_message_bytes);
        let mut per_peer: Vec<Vec<(Slot, Value)>> = vec![Vec::new(); self.cfg.members.len()];
        let mut per_peer_bytes = vec![0usize; self.cfg.members.len()];
        for (s, inf) in l.inflight.iter_mut() {
            if !inf.resend.expired(now) {
                continue;
            }
            let Some(entry) = self.log.get(*s) else {
                continue; // decided and compacted since (learned from a peer)
            };
            let mut any = false;
            let size = entry.value.size_hint();
            for (i, batch) in per_peer.iter_mut().enumerate() {
                let fits = batch.is_empty()
                    || (batch.len() < max_batch
                        && per_peer_bytes[i].saturating_add(size) <= max_bytes);
                if i != me && inf.acks & (1 << i) == 0 && fits {
                    batch.push((*s, entry.value.clone()));
                    per_peer_bytes[i] = per_peer_bytes[i].saturating_add(size);
                    any = true;
                }
            }
            if any {
                inf.resend.reset(now, self.cfg.retransmit_ticks);
            }
        }
        let ballot = l.ballot;
        let commit_point = self.log.commit_point();
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
        self.propose_clock_if_due();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.heartbeat.expired(now) {
            l.heartbeat.reset(now, self.cfg.heartbeat_ticks);
            l.announced_commit = commit_point;
            self.broadcast(Message::Heartbeat {
                ballot,
                commit_point,
            });
        }
    }

    /// Proposes a clock entry when one is due (see [`SessionClock`]): every
    /// [`Config::session_clock_ticks`](crate::Config::session_clock_ticks) while
    /// sessions exist and expiry is on. It does not wait for room in the in-flight
    /// window of requests (one entry per period beyond it costs nothing), only for
    /// the wider acceptance window (see `propose_clock_step`), so that none of this leader's
    /// requests is proposed more than a period after its latest clock entry before it:
    /// that bounds how far a session's recorded activity can lag behind the leader's
    /// clock (a request of another, overlapping leader placed among these entries is
    /// not bounded so; see the README's Session expiry). Without sessions
    /// there is nothing to expire: instead of an entry, the clock pauses where its
    /// chain stands (log time then pauses, which only makes sessions live longer).
    pub(super) fn propose_clock_if_due(&mut self) {
        let ttl = self.cfg.session_ttl_ticks;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if ttl == 0 || l.transfer.is_some() || !l.clock.due.expired(self.now) {
            return;
        }
        if !self.clock_opened() {
            return;
        }
        let period = self.cfg.session_clock_ticks;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if self.exec.sessions().is_empty() {
            l.clock.due.reset(self.now, period);
            l.clock.pause(self.now, period);
            return;
        }
        // Due again one period after it went out; while the window is full it stays
        // due (no request can go meanwhile either: their window is narrower).
        if self.propose_clock_step(false) {
            if let RoleState::Leader(l) = &mut self.role {
                l.clock.due.reset(self.now, period);
            }
        }
    }

    /// Whether the leader's reign opened (always, with expiry off), proposing the step
    /// that opens it first if it is still due and fits the window. That step moves no
    /// time and goes in the slot after the entries the leader re-proposes, before any
    /// request of its own: from there on no deposed leader's step counts (see
    /// [`Value::ClockStep`](crate::Value::ClockStep)).
    pub(super) fn clock_opened(&mut self) -> bool {
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ReignOpensWithoutStep {
            return true;
        }
        if self.cfg.session_ttl_ticks == 0 {
            return true;
        }
        let RoleState::Leader(l) = &self.role else {
            return false;
        };
        if l.clock.opened {
            return true;
        }
        // Handing over: no new proposals (the next leader opens its own reign).
        l.transfer.is_none() && self.propose_clock_step(true)
    }

    /// Proposes the next step of the leader's clock in the next slot (`opening`: a
    /// step to where the chain already stands). Not beyond the acceptance window above
    /// the commit point: a PROMISE's entries past the promiser's window are dropped by
    /// the candidate (`on_promise`), so this leader's own vote there would count
    /// towards a quorum that a later leader cannot see. Returns whether it proposed.
    fn propose_clock_step(&mut self, opening: bool) -> bool {
        let ttl = self.cfg.session_ttl_ticks;
        let period = self.cfg.session_clock_ticks;
        let window_end = self.log.commit_point().saturating_add(self.accept_window());
        #[cfg(test)]
        let window_end = if self.cfg.mutation == Mutation::ClockBeyondWindow {
            Slot::MAX
        } else {
            window_end
        };
        let RoleState::Leader(l) = &mut self.role else {
            return false;
        };
        let slot = l.next_slot;
        if slot >= window_end || l.stop_sign.is_some() {
            return false;
        }
        if self.log.is_chosen(slot) {
            // Decided under another ballot: never overwrite a chosen value.
            self.step_down_superseded(slot);
            return false;
        }
        l.next_slot += 1;
        l.clock.opened = true;
        let (from, time) = if opening {
            (l.clock.from, l.clock.from)
        } else {
            l.clock.step(self.now)
        };
        let ballot = l.ballot;
        let value = Value::ClockStep {
            ballot,
            from,
            time,
            idle_limit: ttl.saturating_add(period),
        };
        let resend = Timeout::after(self.now, self.cfg.retransmit_ticks);
        l.propose(&mut self.ready, &mut self.log, self.me, resend, slot, value);
        self.exec.count().clocks_proposed += 1;
        if self.quorum == 1 {
            self.check_commits();
        }
        true
    }

    /// Re-proposes the merged log that NEW-VIEW left out, in slot order, as long as
    /// the in-flight bytes stay within the budget (always one slot when nothing is in
    /// flight). A slot learned chosen meanwhile goes out without a vote to count: its
    /// value is the merged one (`learn` steps a leader down otherwise).
    pub(super) fn readopt(&mut self) {
        loop {
            if !self.readopt_within_budget() || self.quorum != 1 {
                return;
            }
            // A cluster of one: its own vote chose them; nothing else comes to pump.
            self.check_commits();
        }
    }

    /// One budget's worth of [`readopt`](Self::readopt). Returns whether it proposed
    /// anything and more waits.
    fn readopt_within_budget(&mut self) -> bool {
        let max_bytes = self.batch_limits().1;
        let RoleState::Leader(l) = &mut self.role else {
            return false;
        };
        let mut proposed = false;
        while let Some(entry) = l.readopt.first_entry() {
            let size = entry.get().size_hint();
            if !l.inflight.is_empty() && l.inflight_bytes.saturating_add(size) > max_bytes {
                break;
            }
            let (slot, value) = entry.remove_entry();
            if slot < self.log.commit_point() || self.log.is_chosen(slot) {
                l.fresh.push((slot, value));
                continue;
            }
            let resend = Timeout::after(self.now, self.cfg.retransmit_ticks);
            l.propose(&mut self.ready, &mut self.log, self.me, resend, slot, value);
            proposed = true;
        }
        proposed && !l.readopt.is_empty()
    }

    /// Moves queued requests into free slots of the window (after a clock entry, if
    /// one is due).
    ///
    /// With several requests per slot and [`Config::hold_partial_slots`], a slot that
    /// is not full (fewer requests wait than [`Config::max_requests_per_slot`]) is
    /// proposed only when nothing was in flight as the call began, or nothing of what
    /// was in flight when the requests began to wait (`Leader::held_until`: what is
    /// proposed meanwhile, a clock entry every period say, must not keep them waiting
    /// for ever). While earlier proposals travel, requests gather into full slots.
    /// (Five processes over TCP with 64 durable clients answered about 15 % more
    /// transfers, at a lower p99.)
    ///
    /// [`Config::hold_partial_slots`]: crate::Config::hold_partial_slots
    /// [`Config::max_requests_per_slot`]: crate::Config::max_requests_per_slot
    pub(super) fn pump(&mut self) {
        #[cfg(test)]
        let (idle, behind_all) = (
            self.cfg.mutation != Mutation::HoldsPartialSlotsWhenIdle,
            self.cfg.mutation == Mutation::HoldsBehindAllInFlight,
        );
        #[cfg(not(test))]
        let (idle, behind_all) = (true, false);
        let partial_slots = self.requests_per_slot() == 1
            || !self.cfg.hold_partial_slots
            || match &mut self.role {
                RoleState::Leader(l) if behind_all => l.inflight.is_empty(),
                RoleState::Leader(l) => l.partial_slot_may_go() && idle,
                _ => false,
            };
        self.readopt();
        if let RoleState::Leader(l) = &self.role {
            if !l.readopt.is_empty() {
                // Requests wait behind the merge (clock steps that `leader_tick` finds
                // due need not: they go above it, within the acceptance window).
                return;
            }
        }
        self.propose_clock_if_due();
        if !self.clock_opened() {
            return; // requests wait behind the step that opens the reign
        }
        let max_bytes = self.batch_limits().1;
        let max_per_slot = self.requests_per_slot();
        #[cfg(test)]
        let joins_anyway = self.cfg.mutation == Mutation::LargeValueJoinsFullWindow;
        #[cfg(not(test))]
        let joins_anyway = false;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.transfer.is_some() {
            return; // handing over: requests wait for the next leader
        }
        #[cfg(test)]
        let above_stop_sign = self.cfg.mutation == Mutation::ProposesAboveStopSign;
        #[cfg(not(test))]
        let above_stop_sign = false;
        if l.stop_sign.is_some() && !above_stop_sign {
            return; // requests wait for the next configuration's leader
        }
        while l.next_slot
            < self
                .log
                .commit_point()
                .saturating_add(self.cfg.max_inflight)
            && (l.inflight.is_empty() || l.inflight_bytes < max_bytes)
        {
            if !partial_slots && l.queue.len() < max_per_slot {
                break; // it waits for what is in flight, or for a full slot
            }
            let Some(req) = l.queue.pop_front() else {
                break;
            };
            if !l.inflight.is_empty()
                && l.inflight_bytes.saturating_add(request_bytes(&req)) > max_bytes
                && !joins_anyway
            {
                // Too large for what is left of the budget: it goes once the window
                // drains, with a commit point past what is in flight now (acceptors
                // learn it before their byte window, so they take it at once).
                l.queue.push_front(req);
                break;
            }
            let slot = l.next_slot;
            if self.log.is_chosen(slot) {
                // Decided under another ballot: never overwrite a chosen value.
                l.queue.push_front(req);
                self.step_down_superseded(slot);
                return;
            }
            l.next_slot += 1;
            let value = if req.is_register() {
                Value::Request(req)
            } else {
                // Pack what else waits into the same slot: requests (never a
                // registration), up to `max_requests_per_slot` and within what is
                // left of the in-flight byte budget (always this first one).
                let budget = max_bytes.saturating_sub(l.inflight_bytes);
                let mut bytes = request_bytes(&req);
                l.proposed.insert(req.client, req.seq);
                // How many of the waiting requests join it, counted first so that the
                // batch is allocated once, at its size.
                let mut joining = 0;
                for next in l.queue.iter() {
                    if joining + 1 >= max_per_slot
                        || next.is_register()
                        || bytes.saturating_add(request_bytes(next)) > budget
                    {
                        break;
                    }
                    bytes = bytes.saturating_add(request_bytes(next));
                    joining += 1;
                }
                if joining == 0 {
                    Value::Request(req)
                } else {
                    let mut batch = Vec::with_capacity(1 + joining);
                    batch.push(req);
                    for next in l.queue.drain(..joining) {
                        l.proposed.insert(next.client, next.seq);
                        batch.push(next);
                    }
                    Value::Batch(batch.into())
                }
            };
            let counters = self.exec.count();
            counters.proposals += value.requests().len() as u64;
            counters.batched_slots += u64::from(matches!(value, Value::Batch(_)));
            let resend = Timeout::after(self.now, self.cfg.retransmit_ticks);
            l.propose(&mut self.ready, &mut self.log, self.me, resend, slot, value);
        }
        if l.queue.is_empty() {
            l.held_until = None; // the next requests to wait start a wait of their own
        }
        if self.quorum == 1 {
            self.check_commits();
        }
    }

    /// Turns the proposals made since the last flush into one ACCEPT per peer, and
    /// tells followers about a commit point that moved.
    pub(super) fn flush_leader(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let commit_point = self.log.commit_point();
        if l.fresh.is_empty() {
            if l.announced_commit == commit_point {
                return;
            }
            l.announced_commit = commit_point;
            // Not acknowledged, so it does not put off the next heartbeat: that one's
            // answers tell the leader who is still there.
            self.broadcast(Message::Commit {
                ballot,
                commit_point,
            });
            return;
        }
        let mut rest = std::mem::take(&mut l.fresh);
        l.announced_commit = commit_point;
        l.heartbeat.reset(self.now, self.cfg.heartbeat_ticks);
        let (max_batch, max_bytes) = self.batch_limits();
        while !rest.is_empty() {
            let n = batch_len(rest.iter().map(|(_, v)| v), max_batch, max_bytes);
            let tail = if rest.len() > n {
                rest.split_off(n)
            } else {
                Vec::new()
            };
            let chunk = std::mem::replace(&mut rest, tail);
            let counters = self.exec.count();
            counters.accept_batches += 1;
            counters.accept_entries += chunk.len() as u64;
            self.broadcast(Message::Accept {
                ballot,
                commit_point,
                entries: chunk,
            });
        }
    }
}
