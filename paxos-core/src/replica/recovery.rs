//! Starting without state: founding a new cluster, or recovering from lost storage.
//!
//! An acceptor that lost its durable state is not an acceptor that promised nothing:
//! its old PROMISEs and ACCEPTEDs may still be counted (some are still in flight), and
//! if it voted again as if it had promised nothing it could let two different values be
//! chosen. A replica that finds no state ([`AcceptorStatus::Pristine`]) therefore does
//! not vote until it knows which case it is in.
//!
//! # Founding
//! If *every* member answers that it never voted either ([`Message::NeverVoted`]), the
//! cluster is new and the replica becomes a voter (incarnation 0). Unanimity is what
//! makes this safe: under the fault bound (at most `f` replicas lose their state), at
//! least `f + 1` members that never voted means no phase 1 ever completed and no value
//! was ever chosen, so nothing a lost state voted for can matter. A voter counts as
//! "never voted" until its first promise, and grants no pre-vote to itself, so a founder
//! cannot start voting while its peers are still founding.
//!
//! # Recovery
//! Otherwise the replica recovers, in the spirit of Viewstamped Replication Revisited's
//! recovery protocol and of "Protocol-Aware Recovery for Consensus-Based Storage"
//! (FAST 2018), adapted to Paxos acceptors:
//! 1. It sends [`Message::Recover`] with a new *incarnation* (above any a peer knows for
//!    it: a peer that knows a higher or equal one refuses, naming it, unless it is a
//!    resend of the very attempt it granted) and a recovery ballot `B` it owns. The
//!    attempt is named by a nonce that answers echo; nonces come from the replica's
//!    seed, which must be fresh at every start ([`Config::seed`](crate::Config)), or a
//!    new life could count answers meant for its previous one.
//! 2. A voter grants it only if `B` is above its promise: it durably records the
//!    incarnation, promises `B`, and answers with its commit point and its accepted
//!    entries ([`Message::RecoverGrant`]), like a PROMISE.
//! 3. With grants for the same `(B, incarnation)` from a majority `R` of *other*
//!    members, the replica promises `B`, keeps per slot the entry accepted at the
//!    highest ballot among the grants (a chosen one wins), fetches every chosen value
//!    below the highest granted commit point, and only then votes again.
//!
//! Why it is safe, for every vote the lost state may have cast:
//! - *An ACCEPTED for `(s, b, v)`, counted by a leader.* With it, `v` was chosen by the
//!   lost vote and `f` others, `Q`. `Q` meets `R` in some `Y` (both are among the `2f`
//!   others, of sizes `f` and `f + 1`). If `b < B`, `Y` accepted `(b, v)` before
//!   promising `B`, so its grant shows a value at a ballot `>= b` in `s` — which Paxos
//!   makes `v` — or `s` below its commit point, which the replica fetches. If `b >= B`,
//!   the leader of `b` ran phase 1 after some member of `R` granted (else `B > b`), and
//!   that member's PROMISE told it the new incarnation: it ignores the old ACCEPTED.
//! - *A PROMISE for `b`, counted by a candidate.* The candidate also counted `f` other
//!   promises, which meet `R` in some `Y`. If `Y` promised `b` before granting, then
//!   `B > b` and the replica never accepts below `b`. Otherwise `Y`'s PROMISE carries
//!   the new incarnation and the candidate ignores the old promise.
//!
//! Hence PROMISE and ACCEPTED carry the sender's incarnation, PROMISE and RECOVER-GRANT
//! carry what the sender knows of everyone's, and candidates and leaders ignore votes
//! from incarnations older than the latest they know. PREPAREs carry a nonce that
//! PROMISEs echo, so that a candidate whose earlier life used the same ballot never
//! counts a promise made to that life. An earlier life can have used the ballot after
//! amnesia, and also without it: a PREPARE leaves before the candidate's own promise is
//! durable (it vouches for nothing, see `Ready`), so a crash in that round restarts the
//! replica below the ballot it asked for, and it may ask for the same ballot again.
//! Harmless: that life never got past PREPARE, and the nonce keeps its promises apart
//! (`torn_round_tests::a_candidate_whose_promise_was_lost_reuses_its_ballot_safely`).

use std::collections::{BTreeMap, BTreeSet};

use rand_core::Rng;

use super::timers::Timeout;
use super::{RoleState, StateMachine};
use crate::message::{Message, PromiseEntry};
use crate::traits::{AcceptorStatus, PersistOp};
use crate::types::{Ballot, NodeId, Slot, Value};
use crate::Replica;

#[cfg(test)]
use crate::mutation::Mutation;

/// A recovery (or founding) under way.
#[derive(Debug)]
pub(super) struct Recovery {
    ballot: Ballot,
    incarnation: u64,
    nonce: u64,
    /// Voters that granted this attempt, with what they reported.
    grants: BTreeMap<NodeId, Grant>,
    /// Peers that said they never voted.
    never_voted: BTreeSet<NodeId>,
    /// Expires when the unanswered RECOVERs are due again.
    resend: Timeout,
    /// Once a majority granted: the commit point to reach before voting.
    catch_up_to: Option<Slot>,
}

#[derive(Debug)]
struct Grant {
    commit_point: Slot,
    entries: Vec<PromiseEntry>,
    incarnations: Vec<(NodeId, u64)>,
}

impl Recovery {
    /// The incarnation this attempt asks for.
    pub(super) fn incarnation(&self) -> u64 {
        self.incarnation
    }
}

impl<S: StateMachine> Replica<S> {
    /// Starts (or restarts) an attempt to found or recover: called at start-up by a
    /// replica that is not a voter, and after a refusal.
    pub(super) fn start_recovery(&mut self, incarnation: u64) {
        let round = self
            .max_round_seen
            .max(self.promised.round)
            .max(self.recovery.as_ref().map_or(0, |r| r.ballot.round))
            + 1;
        self.max_round_seen = self.max_round_seen.max(round);
        if self.later_epoch_seen {
            // Our members may have moved on: ask where the log went as well (a
            // stop-sign reached while recovering restarts the recovery among the new
            // members; see `membership.rs`).
            self.probe_peers();
        }
        self.recovery = Some(Recovery {
            ballot: Ballot::new(round, self.cfg.id),
            incarnation,
            nonce: self.rng.next_u64(),
            grants: BTreeMap::new(),
            never_voted: BTreeSet::new(),
            resend: Timeout::after(self.now, self.cfg.retransmit_ticks),
            catch_up_to: None,
        });
        if self.status == AcceptorStatus::Pristine && self.cfg.members.len() == 1 {
            // Alone: nobody else can have voted.
            self.found();
            return;
        }
        self.send_recover();
    }

    fn send_recover(&mut self) {
        let Some(r) = &self.recovery else { return };
        if r.catch_up_to.is_some() {
            return;
        }
        let msg = Message::Recover {
            ballot: r.ballot,
            incarnation: r.incarnation,
            nonce: r.nonce,
            pristine: self.status == AcceptorStatus::Pristine,
        };
        let missing: Vec<NodeId> = self
            .peers()
            .into_iter()
            .filter(|p| !r.grants.contains_key(p) && !r.never_voted.contains(p))
            .collect();
        for p in missing {
            self.send(p, msg.clone());
        }
    }

    /// A tick while not a voter: resend what is unanswered.
    pub(super) fn recovery_tick(&mut self) {
        let due = self
            .recovery
            .as_ref()
            .is_some_and(|r| r.resend.expired(self.now));
        if due {
            if let Some(r) = &mut self.recovery {
                r.resend.reset(self.now, self.cfg.retransmit_ticks);
            }
            self.send_recover();
            let waiting = self
                .recovery
                .as_ref()
                .is_some_and(|r| r.catch_up_to.is_some_and(|t| self.log.commit_point() >= t));
            if waiting && self.undecided_stop_sign().is_some() {
                // Caught up, waiting to know whether the stop-sign was chosen: if the
                // members moved on without us, no leader tells us; ask. The question
                // names no slot to send (`from == to`): an idle leader whose next
                // slot it is decides it (`on_fetch`), else nothing would while no
                // request comes.
                let lo = self.log.commit_point();
                self.broadcast(Message::Fetch { from: lo, to: lo });
            }
        }
        self.maybe_fetch();
        self.maybe_finish_recovery();
    }

    /// True while this replica has never voted: nothing promised, accepted or learned.
    pub(super) fn never_voted(&self) -> bool {
        self.status != AcceptorStatus::Recovering
            && self.promised == Ballot::ZERO
            && self.log.is_empty()
            && self.log.commit_point() == 0
            && self.exec.checkpoint().is_none()
            && self.peer_inc.is_empty()
    }

    /// A message that reached a replica that does not vote: it answers RECOVERs,
    /// follows the recovery, and learns chosen values (which needs no vote), nothing
    /// else.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn handle_message_not_voting(&mut self, from: NodeId, message: Message) {
        // A candidate got past a pre-vote granted by a majority of voters, and a leader
        // was promised by one: the cluster exists and a majority votes, so this
        // replica recovers rather than founds (a pristine replica waiting for a
        // NEVER-VOTED from a peer that learned something would wait for ever). A
        // PRE-VOTE proves nothing: a lone founder sends them before anyone voted.
        let leader_says = message.leader_commit_point();
        let majority_votes = leader_says.is_some() || matches!(message, Message::Prepare { .. });
        match message {
            Message::Recover {
                ballot,
                incarnation,
                nonce,
                pristine,
            } => self.on_recover(from, ballot, incarnation, nonce, pristine),
            Message::RecoverGrant {
                nonce,
                ballot,
                commit_point,
                entries,
                incarnations,
            } => self.on_recover_grant(
                from,
                nonce,
                ballot,
                Grant {
                    commit_point,
                    entries,
                    incarnations,
                },
            ),
            Message::RecoverRefused {
                nonce,
                incarnation,
                promised,
            } => self.on_recover_refused(nonce, incarnation, promised),
            Message::NeverVoted { nonce } => self.on_never_voted(from, nonce),
            Message::Fetch { from: lo, to: hi } => self.on_fetch(from, lo, hi),
            Message::FetchReply {
                commit_point,
                entries,
            } => self.on_fetch_reply(from, commit_point, entries),
            Message::Snapshot { checkpoint } => self.on_snapshot(from, checkpoint),
            m @ Message::SnapshotChunk { .. } => self.on_snapshot_chunk_message(from, m),
            Message::SnapshotRequest {
                slot,
                digest,
                offset,
            } => self.on_snapshot_request(from, slot, digest, offset),
            Message::PreVote { ballot } | Message::Prepare { ballot, .. } => {
                self.saw_round(ballot.round)
            }
            // A leader's messages: below.
            _ => {}
        }
        if let Some((ballot, commit_point)) = leader_says.filter(|(b, _)| b.node == from) {
            self.saw_round(ballot.round);
            self.set_leader(Some(from));
            // Entries held here at `ballot` came from that leader's proposals (through
            // the grants), so its commit point vouches for them.
            self.learn_commit_point(from, ballot, commit_point);
        }
        if self.status == AcceptorStatus::Pristine && (majority_votes || !self.never_voted()) {
            self.recover_instead_of_founding();
        }
        self.maybe_finish_recovery();
    }

    /// The cluster exists: turn a founding attempt into a recovery, asking everyone.
    fn recover_instead_of_founding(&mut self) {
        let incarnation = self.recovery.as_ref().map_or(1, |r| r.incarnation);
        self.set_status(AcceptorStatus::Recovering, incarnation);
        self.start_recovery(incarnation);
    }

    /// A RECOVER from `from`. Any replica that never voted says so to a pristine
    /// sender; a voter grants or refuses; a recovering replica stays silent.
    #[inline(never)] // off the steady-state path (see `handle_message`)
    pub(super) fn on_recover(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        incarnation: u64,
        nonce: u64,
        pristine: bool,
    ) {
        if pristine && self.never_voted() {
            self.send(from, Message::NeverVoted { nonce });
            return;
        }
        if self.status == AcceptorStatus::Voter && ballot.epoch() < self.membership.epoch {
            self.tell_behind(from, ballot);
            return;
        }
        if ballot.epoch() > self.membership.epoch {
            // A recovery among members of a configuration we have not reached: not
            // ours to grant (we would promise a ballot of an epoch we cannot vote in).
            self.saw_round(ballot.round);
            return;
        }
        if self.status != AcceptorStatus::Voter || ballot.node != from {
            return;
        }
        self.saw_round(ballot.round);
        let known = self.peer_inc.get(&from).copied().unwrap_or(0);
        #[cfg(test)]
        let forgetful = self.cfg.mutation == Mutation::RecoveryWithoutIncarnations;
        #[cfg(not(test))]
        let forgetful = false;
        // A resend of the attempt this voter already granted: grant it again.
        let granted = self.granted_recovery.get(&from) == Some(&(incarnation, nonce));
        // Each recovery must come back as an incarnation no voter has seen for it: an
        // equal one from another attempt would let two lives share an incarnation, and
        // a candidate could not tell their promises apart.
        let refuse = if granted {
            ballot != self.promised
        } else {
            (incarnation <= known && !forgetful) || ballot <= self.promised
        };
        if refuse {
            let promised = self.promised;
            self.send(
                from,
                Message::RecoverRefused {
                    nonce,
                    incarnation: known,
                    promised,
                },
            );
            return;
        }
        if !granted {
            if !forgetful {
                self.peer_inc.insert(from, incarnation);
                self.ready.persist.push(PersistOp::PeerIncarnation {
                    node: from,
                    incarnation,
                });
            }
            self.granted_recovery.insert(from, (incarnation, nonce));
            self.set_promised(ballot);
            self.become_follower(None);
            self.restart_election_timers();
        }
        let entries = self.report_from(self.log.commit_point());
        let commit_point = self.log.commit_point();
        let incarnations = self.incarnation_table();
        self.send(
            from,
            Message::RecoverGrant {
                nonce,
                ballot,
                commit_point,
                entries,
                incarnations,
            },
        );
    }

    /// Every entry from `from` up, as a PROMISE reports it.
    pub(super) fn report_from(&self, from: Slot) -> Vec<PromiseEntry> {
        self.log
            .range(from..)
            .map(|(s, e)| PromiseEntry {
                slot: s,
                ballot: e.ballot,
                value: e.value.clone(),
                chosen: e.chosen,
            })
            .collect()
    }

    /// What this replica knows of incarnations, itself included.
    pub(super) fn incarnation_table(&self) -> Vec<(NodeId, u64)> {
        let mut t: Vec<(NodeId, u64)> = self.peer_inc.iter().map(|(n, i)| (*n, *i)).collect();
        if self.incarnation > 0 {
            t.push((self.cfg.id, self.incarnation));
        }
        t
    }

    fn on_never_voted(&mut self, from: NodeId, nonce: u64) {
        if self.status != AcceptorStatus::Pristine {
            return;
        }
        let peers = self.cfg.members.len() - 1;
        let Some(r) = &mut self.recovery else { return };
        if r.nonce != nonce {
            return;
        }
        r.never_voted.insert(from);
        if r.never_voted.len() == peers {
            self.found();
        }
    }

    /// Every member said it never voted: this is a new cluster.
    fn found(&mut self) {
        if !self.never_voted() {
            // Learned something meanwhile: the cluster existed after all. Recover,
            // asking everyone again (those that never voted grant a recovery).
            self.recover_instead_of_founding();
            return;
        }
        tracing::info!(
            node = self.cfg.id,
            "every member is new: founding the cluster"
        );
        self.recovery = None;
        self.set_status(AcceptorStatus::Voter, 0);
        self.restart_election_timers();
    }

    pub(super) fn set_status(&mut self, status: AcceptorStatus, incarnation: u64) {
        self.status = status;
        self.incarnation = incarnation;
        self.ready.persist.push(PersistOp::Status {
            status,
            incarnation,
        });
    }

    fn on_recover_refused(&mut self, nonce: u64, known: u64, promised: Ballot) {
        let Some(r) = &self.recovery else { return };
        if r.nonce != nonce || r.catch_up_to.is_some() {
            return;
        }
        let incarnation = r.incarnation.max(known.saturating_add(1));
        self.saw_round(promised.round);
        if self.status == AcceptorStatus::Pristine {
            self.set_status(AcceptorStatus::Recovering, incarnation);
        }
        tracing::info!(
            node = self.cfg.id,
            incarnation,
            "recovery refused by a peer; trying again"
        );
        self.start_recovery(incarnation);
    }

    fn on_recover_grant(&mut self, from: NodeId, nonce: u64, ballot: Ballot, grant: Grant) {
        let quorum = self.quorum as usize;
        let Some(r) = &mut self.recovery else { return };
        if r.nonce != nonce || r.ballot != ballot || r.catch_up_to.is_some() {
            return;
        }
        r.grants.insert(from, grant);
        let (done, incarnation) = (r.grants.len() >= quorum, r.incarnation);
        if self.status == AcceptorStatus::Pristine {
            // A voter exists: this is a recovery, never a founding. Peers that said
            // they never voted are asked again: as voters they grant a recovery.
            r.never_voted.clear();
        }
        if self.status == AcceptorStatus::Pristine || self.incarnation != incarnation {
            self.set_status(AcceptorStatus::Recovering, incarnation);
        }
        if done {
            self.complete_grants();
        }
    }

    /// A majority granted: adopt the merged state, then catch up before voting.
    fn complete_grants(&mut self) {
        let Some(r) = &mut self.recovery else { return };
        let ballot = r.ballot;
        let grants = std::mem::take(&mut r.grants);
        let (best_node, target) = grants
            .iter()
            .map(|(n, g)| (*n, g.commit_point))
            .max_by_key(|(_, c)| *c)
            .unwrap_or((self.cfg.id, 0));
        r.catch_up_to = Some(target);
        tracing::info!(
            node = self.cfg.id,
            incarnation = self.incarnation,
            %ballot,
            catch_up_to = target,
            "a majority handed over its state; catching up before voting"
        );
        self.set_promised(ballot);
        let mut merged: BTreeMap<Slot, (Ballot, Value, bool)> = BTreeMap::new();
        for g in grants.values() {
            for e in &g.entries {
                match merged.get_mut(&e.slot) {
                    Some(cur) if cur.2 => {}
                    Some(cur) if !e.chosen && e.ballot <= cur.0 => {}
                    _ => {
                        merged.insert(e.slot, (e.ballot, e.value.clone(), e.chosen));
                    }
                }
            }
            for &(node, inc) in &g.incarnations {
                if node == self.cfg.id {
                    continue;
                }
                let known = self.peer_inc.entry(node).or_insert(0);
                if inc > *known {
                    *known = inc;
                    self.ready.persist.push(PersistOp::PeerIncarnation {
                        node,
                        incarnation: inc,
                    });
                }
            }
        }
        for (slot, (b, v, chosen)) in merged {
            if slot < self.log.commit_point() || self.log.is_chosen(slot) {
                continue;
            }
            if chosen {
                self.learn(slot, v);
            } else {
                self.accept_local(slot, b, v);
            }
        }
        self.catch_up.heard(best_node, target);
        self.advance_commit();
        self.maybe_finish_recovery();
    }

    /// Becomes a voter once the recovery's catch-up is complete.
    pub(super) fn maybe_finish_recovery(&mut self) {
        let Some(r) = &self.recovery else { return };
        let Some(target) = r.catch_up_to else { return };
        if self.log.commit_point() < target {
            return;
        }
        #[cfg(test)]
        let waits = self.cfg.mutation != Mutation::RecoveryIgnoresStopSigns;
        #[cfg(not(test))]
        let waits = true;
        if waits && self.undecided_stop_sign().is_some() {
            // A later epoch may have begun: wait until the stop-sign's slot is decided
            // (see `membership.rs`).
            return;
        }
        let Some(r) = &self.recovery else { return };
        let incarnation = r.incarnation;
        self.recovery = None;
        tracing::info!(
            node = self.cfg.id,
            incarnation,
            commit_point = self.log.commit_point(),
            "recovered from lost state; voting again"
        );
        self.set_status(AcceptorStatus::Voter, incarnation);
        self.role = RoleState::Follower;
        self.restart_election_timers();
    }
}
