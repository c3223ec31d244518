//! Linearizable reads without a log round: the leader's read index (Raft dissertation
//! §6.4, in Paxos terms).
//!
//! A read arrives at the leader as a [`Request::read`]. The leader takes its *read
//! point*: the higher of its commit point and the end of the log it announced when it
//! took over (every value a previous leader may have had chosen lies below that end, and
//! every value this leader acknowledged lies below its commit point). The read joins the
//! next *round*: once the round's [`Message::ReadIndex`] has gone out (after the read
//! arrived) and a majority, the leader included, has answered it with
//! [`Message::ReadIndexAck`] at the leader's ballot, no other leader can have had a value
//! chosen before the read arrived that the read point misses (a majority that had
//! promised a higher ballot would have refused the round). The read is then answered by
//! [`StateMachine::query`] as soon as the leader has executed up to its read point. It
//! never enters the log or the session table, and needs no write to storage.
//!
//! Acknowledgements count under the same rule as ACCEPTEDs: only from the incarnations the
//! leader knew when it took over. A leader that steps down answers its pending reads
//! with a redirect; reads are idempotent, so the client simply asks again.

use std::collections::VecDeque;

use super::*;
use crate::message::Message;
use crate::traits::StateMachine;
use crate::types::{Ballot, NodeId, Request, Response, Slot, StaleAnswer};

/// A read waiting for its round and for execution.
#[derive(Debug)]
struct PendingRead {
    request: Request,
    round: u64,
    read_point: Slot,
}

/// The leader's reads: pending ones, and the rounds that confirm its leadership.
#[derive(Debug)]
pub(super) struct Reads {
    /// The round reads join now; it has not been sent yet when `open` is true.
    round: u64,
    open: bool,
    /// The highest round a majority confirmed.
    confirmed: u64,
    /// Who acknowledged each unconfirmed round that went out (bit per member index),
    /// oldest first.
    acks: VecDeque<(u64, u64)>,
    pending: VecDeque<PendingRead>,
    /// Expires when the newest unconfirmed round is due to be sent again.
    resend: Timeout,
}

impl Reads {
    pub(super) fn new(now: u64) -> Self {
        Reads {
            round: 1,
            open: false,
            confirmed: 0,
            acks: VecDeque::new(),
            pending: VecDeque::new(),
            resend: Timeout::after(now, 0),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }
}

impl<S: StateMachine> Replica<S> {
    /// A read reached this replica (see the module docs).
    pub(super) fn on_read(&mut self, request: Request) {
        if !matches!(self.role, RoleState::Leader(_)) {
            self.redirect(&request);
            return;
        }
        if !self.is_read_only(&request) {
            return;
        }
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.reads.len() >= self.cfg.max_pending {
            self.reply(request.client, request.seq, Response::Busy);
            return;
        }
        let read_point = self.log.commit_point().max(l.view_end);
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ReadWithoutConfirmation {
            // The broken variant: answer from local state at once.
            let answer = postcard::from_bytes::<S::Command>(&request.payload)
                .ok()
                .and_then(|c| self.exec.state_machine().query(&c));
            self.answer_read(request, answer);
            return;
        }
        #[allow(unused_mut)]
        let mut round = l.reads.round;
        #[cfg(test)]
        if self.cfg.mutation == Mutation::ReadJoinsSentRound && !l.reads.open {
            if let Some(&(sent, _)) = l.reads.acks.back() {
                round = sent;
            }
        }
        l.reads.open = l.reads.open || round == l.reads.round;
        l.reads.pending.push_back(PendingRead {
            request,
            round,
            read_point,
        });
        if self.quorum == 1 {
            l.reads.confirmed = round;
            l.reads.round += 1;
            l.reads.open = false;
        }
        self.serve_reads();
    }

    /// Sends the open round, if reads joined it (called when outputs are taken, so that
    /// all reads that arrived since the last round share one).
    pub(super) fn flush_reads(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if !l.reads.open {
            return;
        }
        let round = l.reads.round;
        l.reads.open = false;
        l.reads.round += 1;
        l.reads.acks.push_back((round, 1u64 << self.me));
        l.reads.resend.reset(self.now, self.cfg.retransmit_ticks);
        self.send_read_index(round);
    }

    /// Sends the newest unconfirmed round again when it waited too long (called on
    /// ticks).
    pub(super) fn read_tick(&mut self) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let Some(&(round, _)) = l.reads.acks.back() else {
            return;
        };
        if !l.reads.resend.expired(self.now) {
            return;
        }
        l.reads.resend.reset(self.now, self.cfg.retransmit_ticks);
        self.send_read_index(round);
    }

    fn send_read_index(&mut self, round: u64) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let ballot = l.ballot;
        let commit_point = self.log.commit_point();
        self.broadcast(Message::ReadIndex {
            ballot,
            round,
            commit_point,
        });
    }

    /// READ-INDEX: a heartbeat that asks for an answer naming its round.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_read_index(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        round: u64,
        commit_point: Slot,
    ) {
        if !self.admit(from, ballot, false) {
            return;
        }
        self.follow(from, ballot);
        let incarnation = self.incarnation;
        self.send(
            from,
            Message::ReadIndexAck {
                ballot,
                round,
                incarnation,
            },
        );
        self.learn_commit_point(from, ballot, commit_point);
    }

    /// READ-INDEX-ACK: count it; a majority confirms the round and every earlier one.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_read_index_ack(
        &mut self,
        from_idx: usize,
        ballot: Ballot,
        round: u64,
        incarnation: u64,
    ) {
        let quorum = self.quorum;
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.ballot != ballot || incarnation < l.min_incarnation[from_idx] {
            return;
        }
        let mut confirmed = None;
        for (r, acks) in l.reads.acks.iter_mut() {
            if *r == round {
                *acks |= 1u64 << from_idx;
                if acks.count_ones() >= quorum {
                    confirmed = Some(round);
                }
            }
        }
        if let Some(round) = confirmed {
            l.reads.confirmed = l.reads.confirmed.max(round);
            while l.reads.acks.front().is_some_and(|(r, _)| *r <= round) {
                l.reads.acks.pop_front();
            }
            self.serve_reads();
        }
    }

    /// Answers the reads whose round is confirmed and whose read point is executed.
    pub(super) fn serve_reads(&mut self) {
        let executed = self.exec.executed();
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let confirmed = l.reads.confirmed;
        #[cfg(test)]
        let executed = if self.cfg.mutation == Mutation::ReadBeforeReadPoint {
            Slot::MAX
        } else {
            executed
        };
        let mut ready = Vec::new();
        // Rounds and read points both grow along the queue (the commit point and the
        // view's end only grow within a leadership), so the ready reads are a prefix.
        while l
            .reads
            .pending
            .front()
            .is_some_and(|p| p.round <= confirmed && p.read_point <= executed)
        {
            if let Some(p) = l.reads.pending.pop_front() {
                ready.push(p.request);
            }
        }
        for request in ready {
            let answer = postcard::from_bytes::<S::Command>(&request.payload)
                .ok()
                .and_then(|c| self.exec.state_machine().query(&c));
            self.answer_read(request, answer);
        }
    }

    fn answer_read(&mut self, request: Request, answer: Option<S::Output>) {
        let response = match answer.map(|a| postcard::to_allocvec(&a)) {
            Some(Ok(bytes)) => Response::Ok(bytes.into()),
            Some(Err(e)) => Response::Invalid {
                reason: format!("cannot encode the answer: {e}"),
            },
            None => Response::Invalid {
                reason: "not a read-only command".to_string(),
            },
        };
        self.reply(request.client, request.seq, response);
    }

    /// Leaving leadership: pending reads go elsewhere.
    pub(super) fn step_down_reads(&mut self, leader: Option<NodeId>) {
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        let pending: Vec<Request> = l.reads.pending.drain(..).map(|p| p.request).collect();
        for r in pending {
            self.reply(r.client, r.seq, Response::Redirect { leader });
        }
    }
}

impl<S: StateMachine> Replica<S> {
    /// Whether a read carries a command the state machine answers as a read; if not,
    /// the read is answered `Invalid`.
    fn is_read_only(&mut self, request: &Request) -> bool {
        let reason = match postcard::from_bytes::<S::Command>(&request.payload) {
            Err(e) => format!("undecodable command: {e}"),
            Ok(c) if self.exec.state_machine().query(&c).is_none() => {
                "not a read-only command: submit it through the log".to_string()
            }
            Ok(_) => return true,
        };
        self.reply(request.client, request.seq, Response::Invalid { reason });
        false
    }
}

/// Stale reads ([`Request::stale_read`]): any replica answers from its own state once it
/// has executed up to the read's floor. Nothing is sent to other replicas; the answer
/// reflects a prefix of the chosen log because a replica executes only chosen values,
/// in slot order, and waits for its own vote's write like any reply (see
/// `take_ready`).
impl<S: StateMachine> Replica<S> {
    /// A stale read reached this replica.
    pub(super) fn on_stale_read(&mut self, request: Request) {
        if !self.is_read_only(&request) {
            return;
        }
        // A replica that lost its state (or never had one) answers nothing until it
        // votes again: its empty state is a prefix, but not one a client expects.
        // A learner has no vote to recover; it answers once it has heard of a commit
        // point (a learner that never reached a member has nothing a client expects).
        let serves = if self.cfg.learner {
            self.catch_up_done
        } else {
            self.status == AcceptorStatus::Voter
        };
        if !serves {
            self.redirect(&request);
            return;
        }
        #[allow(unused_mut)]
        let mut floor = request.stale_read_floor();
        #[cfg(test)]
        if self.cfg.mutation == Mutation::StaleReadIgnoresFloor {
            floor = 0;
        }
        if floor <= self.exec.executed() {
            self.answer_stale_read(&request);
        } else if floor > self.catch_up.known().max(self.log.commit_point()) && !self.cfg.learner {
            // Beyond any commit point this replica heard of: waiting here helps nobody.
            // (A learner hears of commit points only when it polls: it waits, below,
            // and polls at once.)
            self.redirect(&request);
        } else if self.stale_reads.len() >= self.cfg.max_pending
            || self.stale_read_bytes + request.payload.len() > self.cfg.max_message_bytes
        {
            self.reply(request.client, request.seq, Response::Busy);
        } else {
            // Kept: the command alone (a frame may carry bytes after it that decoding
            // ignores), in a buffer of its own.
            let mut request = request;
            if let Ok((_, rest)) = postcard::take_from_bytes::<S::Command>(&request.payload) {
                let command = request.payload.len() - rest.len();
                request.payload = bytes::Bytes::copy_from_slice(&request.payload[..command]);
            }
            self.stale_read_bytes += request.payload.len();
            self.stale_min_floor = self.stale_min_floor.min(floor);
            self.stale_reads.push_back((request, self.now));
            if self.cfg.learner {
                self.poll_soon();
            }
        }
    }

    /// Answers the waiting stale reads whose floor is executed (called when outputs
    /// are taken; a pass over the queue only once execution reached its lowest floor).
    pub(super) fn serve_stale_reads(&mut self) {
        let executed = self.exec.executed();
        if self.stale_reads.is_empty() || executed < self.stale_min_floor {
            return;
        }
        let waiting = std::mem::take(&mut self.stale_reads);
        self.stale_min_floor = Slot::MAX;
        for (request, since) in waiting {
            let floor = request.stale_read_floor();
            if floor <= executed {
                self.stale_read_bytes -= request.payload.len();
                self.answer_stale_read(&request);
            } else {
                self.stale_min_floor = self.stale_min_floor.min(floor);
                self.stale_reads.push_back((request, since));
            }
        }
    }

    /// Stale reads that waited an election timeout for their floor are sent to the
    /// leader this replica knows of (a replica cut off from the cluster may never get
    /// there); the client asks again there.
    pub(super) fn stale_read_tick(&mut self) {
        let limit = self.cfg.election_ticks;
        while self
            .stale_reads
            .front()
            .is_some_and(|(_, since)| self.now.saturating_sub(*since) >= limit)
        {
            let Some((request, _)) = self.stale_reads.pop_front() else {
                break;
            };
            self.stale_read_bytes -= request.payload.len();
            self.redirect(&request);
        }
    }

    fn answer_stale_read(&mut self, request: &Request) {
        #[allow(unused_mut)]
        let mut executed = self.exec.executed();
        #[cfg(test)]
        if self.cfg.mutation == Mutation::StaleReadMisreportsSlot {
            executed += 1;
        }
        let answer = postcard::from_bytes::<S::Command>(&request.payload)
            .ok()
            .and_then(|c| self.exec.state_machine().query(&c));
        let response = match answer {
            Some(output) => match postcard::to_allocvec(&StaleAnswer { executed, output }) {
                Ok(bytes) => Response::Ok(bytes.into()),
                Err(e) => Response::Invalid {
                    reason: format!("cannot encode the answer: {e}"),
                },
            },
            None => Response::Invalid {
                reason: "not a read-only command".to_string(),
            },
        };
        #[cfg(test)]
        if self.cfg.mutation == Mutation::StaleReadRepliesEarly {
            // The broken variant: the answer leaves before this round's writes, though
            // it may reflect a slot chosen only by this replica's own, unwritten vote.
            self.ready.replies_now.push(crate::types::Reply {
                client: request.client,
                seq: request.seq,
                response,
            });
            return;
        }
        self.reply(request.client, request.seq, response);
    }
}
