//! The adversary: the fault profile each seed draws, and faults injected as the run goes.

use super::*;

/// The fault profile of one seed, drawn at random (swarm testing: each seed enables a
/// different mix of faults).
#[derive(Clone, Debug)]
pub(crate) struct Faults {
    pub(crate) nodes: usize,
    pub(crate) loss: f64,
    pub(crate) duplicate: f64,
    pub(crate) max_delay: u64,
    /// Fraction of messages held back for up to a few election timeouts (stale traffic).
    pub(crate) long_delay: f64,
    pub(crate) partitions: bool,
    pub(crate) one_way: bool,
    pub(crate) crashes: bool,
    pub(crate) fault_ticks: u64,
    pub(crate) clients: usize,
    pub(crate) requests_per_client: u64,
    pub(crate) batch_inputs: bool,
    /// Slots between checkpoints (0: never), small so that compaction and state
    /// transfer happen within a run.
    pub(crate) checkpoint_interval: u64,
    /// [`Config::checkpoint_slots_per_session`](crate::Config): mostly 0, so that the
    /// small fixed interval makes replicas compact often (what catch-up and state
    /// transfer need exercised); 1 for one seed in five.
    pub(crate) checkpoint_slots_per_session: u64,
    /// The state machine takes its snapshots off the replica's thread
    /// ([`StateMachine::snapshot_job`](crate::StateMachine::snapshot_job)), and each job
    /// comes back 0 to 40 ticks later (or never, when the replica crashes first): for
    /// half of the seeds.
    pub(crate) deferred_snapshots: bool,
    /// Half the reads are [stale reads](crate::Request::stale_read), to any replica: for
    /// one seed in four (the others draw exactly as before stale reads existed, so that
    /// the seeds pinned by tests replay as they were found).
    pub(crate) stale_reads: bool,
    /// [`Config::max_requests_per_slot`](crate::Config): 1 for two seeds in three (they
    /// run as before batching existed), 2 to 8 for the others, which also have at least
    /// three clients and leave most requests to the end of the tick, so that batches
    /// form.
    pub(crate) requests_per_slot: usize,
    /// [`Config::hold_partial_slots`](crate::Config): off except in the profile that
    /// turns it on. Off, a leader proposes every round's requests at once, which keeps
    /// more slots in flight for the adversary (and the seeds pinned by tests replay as
    /// they were found).
    pub(crate) hold_partial_slots: bool,
    /// [`Config::max_message_bytes`](crate::Config): the default, or small (a few
    /// batches' worth) where a profile wants the byte bounds to bind.
    pub(crate) max_message_bytes: usize,
    /// Some restarts lose the replica's storage (amnesia), for at most `f` replicas at
    /// a time counting the crashed and the still-recovering ones.
    pub(crate) amnesia: bool,
    /// Replicas are paused for long stretches (no ticks, inbound held back), then
    /// resume with stale beliefs and a burst of old messages.
    pub(crate) pauses: bool,
    /// Each replica ticks with its own probability: clocks that run at different rates.
    pub(crate) skew: bool,
    /// Sessions the replicas keep; below the number of clients, sessions get evicted
    /// and clients see their requests expire.
    pub(crate) max_sessions: usize,
    /// An adversarial network that loses some kinds of messages on some links much more
    /// than others (say, ACCEPTs and NACKs but not FETCHes), redrawn from time to time.
    pub(crate) selective: bool,
    /// Crashed replicas stay down for 20 to 20 + `downtime` ticks.
    pub(crate) downtime: u64,
    /// The chance, per input of a batching replica while crashes are on, that it
    /// crashes in the middle of its round: what waits for no write has left, a prefix of
    /// the writes is durable (the last one maybe torn), nothing else left.
    pub(crate) torn_crash: f64,
    /// The replicas' [`Config::session_ttl_ticks`](crate::Config::session_ttl_ticks):
    /// 0 (expiry off) unless a profile sets it.
    pub(crate) session_ttl: u64,
    /// The replicas' [`Config::session_clock_ticks`](crate::Config::session_clock_ticks).
    pub(crate) session_clock: u64,
    /// Learners ([`Config::learner`](crate::Config::learner)) beside the members,
    /// ids `nodes + 1 ..`: 0 unless a profile sets it. They crash, lose their storage
    /// and get stale reads like any replica, and must execute the chosen log.
    pub(crate) learners: usize,
    /// At healing, the leader (or the first member) crashes for good: the rest of the
    /// run is served by the others, and learners must turn away from it. Off unless a
    /// profile sets it.
    pub(crate) lose_leader_at_heal: bool,
    /// Now and then the leader is asked to change the membership to as many replicas
    /// as `nodes`, drawn from the members and the learners (ids up to `nodes +
    /// learners`), whatever else is going on: replicas join, leave and come back. Off
    /// unless a profile sets it.
    pub(crate) reconfigure: bool,
}

impl Faults {
    pub(super) fn draw(rng: &mut ChaCha8Rng) -> Self {
        let nodes = if rng.next_u64().is_multiple_of(2) {
            3
        } else {
            5
        };
        Faults {
            nodes,
            loss: if chance(rng, 0.8) {
                unit(rng) * 0.3
            } else {
                0.0
            },
            duplicate: if chance(rng, 0.5) {
                unit(rng) * 0.2
            } else {
                0.0
            },
            max_delay: if chance(rng, 0.7) {
                rng.next_u64() % 12
            } else {
                0
            },
            long_delay: if chance(rng, 0.5) {
                unit(rng) * 0.05
            } else {
                0.0
            },
            partitions: chance(rng, 0.6),
            one_way: chance(rng, 0.4),
            crashes: chance(rng, 0.7),
            fault_ticks: 300 + rng.next_u64() % 1200,
            clients: 1 + (rng.next_u64() % 5) as usize,
            requests_per_client: 3 + rng.next_u64() % 20,
            batch_inputs: chance(rng, 0.5),
            checkpoint_interval: if chance(rng, 0.7) {
                2 + rng.next_u64() % 30
            } else {
                0
            },
            // Set by the engine from the seed.
            checkpoint_slots_per_session: 0,
            deferred_snapshots: false,
            stale_reads: false,
            requests_per_slot: 1,
            hold_partial_slots: false,
            max_message_bytes: crate::config::DEFAULT_MAX_MESSAGE_BYTES,
            amnesia: chance(rng, 0.3),
            pauses: chance(rng, 0.3),
            skew: chance(rng, 0.3),
            max_sessions: 1024,
            selective: chance(rng, 0.3),
            downtime: 200,
            torn_crash: 0.0005,
            // Not drawn, so that every seed's faults stay what they were before expiry.
            session_ttl: 0,
            session_clock: crate::config::DEFAULT_SESSION_CLOCK_TICKS,
            learners: 0,
            lose_leader_at_heal: false,
            reconfigure: false,
        }
        .with_eviction(rng)
    }

    pub(super) fn with_eviction(mut self, rng: &mut ChaCha8Rng) -> Self {
        if chance(rng, 0.25) {
            self.clients = self.clients.max(3);
            self.max_sessions = self.clients - 1;
        }
        self
    }
}

pub(super) fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    unit(rng) < p
}

impl<W: Workload> Sim<W> {
    /// Replicas that count against the fault bound: crashed, or recovering from lost
    /// storage (and the replicas still founding the cluster, at the start, or joining
    /// it). With a membership change asked for and not yet chosen, the bound holds
    /// for both configurations: the more faulty of the two counts.
    pub(super) fn faulty(&self) -> usize {
        let now = self.faulty_among(&self.members);
        match &self.asked_members {
            Some(next) => now.max(self.faulty_among(next)),
            None => now,
        }
    }

    fn faulty_among(&self, members: &[NodeId]) -> usize {
        self.nodes
            .iter()
            .filter(|n| members.contains(&n.id) && !self.lost.contains(&n.id))
            .filter(|n| {
                n.recovering
                    || n.replica
                        .as_ref()
                        .is_none_or(|r| r.acceptor_status() != AcceptorStatus::Voter)
            })
            .count()
    }

    pub(super) fn inject_faults(&mut self) -> Result<(), Violation> {
        let f = (self.faults.nodes - 1) / 2;
        // Now and then the leader is asked to hand over to a random member (an operator
        // moving leadership before maintenance), whatever else is going on.
        if chance(&mut self.rng, 0.002) {
            let to = self.members[(self.rng.next_u64() % self.members.len() as u64) as usize];
            let leader = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.replica.as_mut())
                .find(|r| r.is_leader());
            if let Some(r) = leader {
                if r.transfer_leadership(to).is_ok() {
                    self.stats.transfers += 1;
                }
            }
        }
        if self.faults.reconfigure && chance(&mut self.rng, 0.004) {
            self.ask_reconfigure();
        }
        if self.faults.pauses && chance(&mut self.rng, 0.003) {
            let i = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
            if self.nodes[i].paused_until <= self.now {
                self.nodes[i].paused_until = self.now + 40 + self.rng.next_u64() % 300;
                self.stats.pauses += 1;
            }
        }
        if self.faults.crashes {
            // Restart nodes whose downtime is over; some come back without their
            // storage, within the fault bound (they stay faulty until recovered).
            for i in 0..self.nodes.len() {
                if self.nodes[i].replica.is_none() && self.now >= self.nodes[i].down_until {
                    let wipe = self.faults.amnesia && chance(&mut self.rng, 0.4);
                    if wipe {
                        self.wipe(i);
                    }
                    self.restart(i)?;
                }
            }
            let down = self.faulty();
            if down < f && chance(&mut self.rng, 0.004) {
                let i = (self.rng.next_u64() % self.nodes.len() as u64) as usize;
                if self.nodes[i].replica.is_some() {
                    self.nodes[i].replica = None;
                    self.nodes[i].storage.crash();
                    self.nodes[i].checkpoint_jobs.clear();
                    self.nodes[i].down_until =
                        self.now + 20 + self.rng.next_u64() % self.faults.downtime;
                    self.stats.crashes += 1;
                }
            }
        }
        if self.faults.selective && chance(&mut self.rng, 0.01) {
            self.lossy.clear();
            self.leaky.clear();
            for k in KINDS {
                if chance(&mut self.rng, 0.3) {
                    self.leaky.insert(k);
                }
            }
            // Learners (when the profile has any) get lossy links and partitions too.
            let everyone: Vec<NodeId> =
                self.members.iter().chain(&self.learners).copied().collect();
            for &a in &everyone {
                for &b in &everyone {
                    if a == b || !chance(&mut self.rng, 0.5) {
                        continue;
                    }
                    for k in KINDS {
                        if chance(&mut self.rng, 0.4) {
                            self.lossy.insert((a, b, k));
                        }
                    }
                }
            }
        }
        if self.faults.partitions && chance(&mut self.rng, 0.006) {
            self.blocked.clear();
            if chance(&mut self.rng, 0.3) {
                return Ok(()); // heal for a while
            }
            let mut group = Vec::new();
            let leader = self
                .nodes
                .iter()
                .find(|n| n.replica.as_ref().is_some_and(|r| r.is_leader()))
                .map(|n| n.id);
            match leader {
                // Often cut the leader off with one follower: a stale leader in a
                // minority, still believed by the follower.
                Some(l) if self.faults.selective && chance(&mut self.rng, 0.5) => {
                    group.push(l);
                    let other =
                        self.members[(self.rng.next_u64() % self.members.len() as u64) as usize];
                    if other != l {
                        group.push(other);
                    }
                }
                _ => {
                    for &m in self.members.iter().chain(&self.learners) {
                        if chance(&mut self.rng, 0.5) {
                            group.push(m);
                        }
                    }
                }
            }
            let one_way = self.faults.one_way && chance(&mut self.rng, 0.5);
            let everyone: Vec<NodeId> =
                self.members.iter().chain(&self.learners).copied().collect();
            for &a in &group {
                for &b in &everyone {
                    if !group.contains(&b) {
                        self.blocked.insert((a, b));
                        if !one_way {
                            self.blocked.insert((b, a));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn heal(&mut self) -> Result<(), Violation> {
        // No more faults: a change still in flight is bounded by its outcome (once
        // chosen, its members are the members).
        self.asked_members = None;
        self.blocked.clear();
        self.lossy.clear();
        self.leaky.clear();
        for n in &mut self.nodes {
            n.paused_until = 0;
        }
        self.faults.loss = 0.0;
        self.faults.duplicate = 0.0;
        self.faults.long_delay = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].replica.is_none() {
                self.restart(i)?;
            }
        }
        self.maybe_lose_leader();
        Ok(())
    }

    /// With `lose_leader_at_heal`, once healed and within the fault bound (a replica
    /// still recovering from lost storage counts against it): the leader crashes for
    /// good.
    pub(super) fn maybe_lose_leader(&mut self) {
        let f = (self.faults.nodes - 1) / 2;
        if self.faults.lose_leader_at_heal && self.lost.is_empty() && self.faulty() < f {
            let leader = self
                .nodes
                .iter()
                .find(|n| n.replica.as_ref().is_some_and(|r| r.is_leader()))
                .map_or(self.members[0], |n| n.id);
            if let Some(i) = self.index(leader) {
                let node = &mut self.nodes[i];
                node.replica = None;
                node.storage.crash();
                node.checkpoint_jobs.clear();
                self.lost.push(leader);
                self.stats.crashes += 1;
                self.stats.lost_for_good += 1;
            }
        }
    }

    /// Asks the leader (if any) for a membership of `nodes` replicas: up to `f` of the
    /// current members replaced by replicas outside (as many as a change may add).
    pub(super) fn ask_reconfigure(&mut self) {
        let f = (self.faults.nodes - 1) / 2;
        let mut outside: Vec<NodeId> = (1..=(self.faults.nodes + self.faults.learners) as u64)
            .filter(|id| !self.lost.contains(id) && !self.members.contains(id))
            .collect();
        let mut members = self.members.clone();
        let k = (self.rng.next_u64() % (f as u64 + 1)) as usize;
        for _ in 0..k.min(outside.len()) {
            let i = (self.rng.next_u64() % members.len() as u64) as usize;
            let j = (self.rng.next_u64() % outside.len() as u64) as usize;
            members[i] = outside.swap_remove(j);
        }
        // The operator keeps to the fault bound: the new configuration, counting its
        // members that do not vote yet (those joining among them), has at most `f`
        // faulty (the leader refuses what it can see is worse, but not a member that
        // crashed a moment ago).
        if self.faulty_among(&members) > f {
            return;
        }
        let leader = self
            .nodes
            .iter_mut()
            .filter_map(|n| n.replica.as_mut())
            .find(|r| r.is_leader());
        if let Some(r) = leader {
            let members: Vec<crate::Member> = members
                .into_iter()
                .map(|id| crate::Member {
                    id,
                    address: String::new(),
                })
                .collect();
            let ids = members.iter().map(|m: &crate::Member| m.id).collect();
            if r.reconfigure(members).is_ok() {
                self.stats.reconfigurations += 1;
                self.asked_members = Some(ids);
            }
        }
    }

    /// The node's storage is lost: it restarts as a new incarnation with nothing.
    pub(super) fn wipe(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.storage = super::sim_storage(self.mutation, &self.faults);
        node.durable_promised = Ballot::ZERO;
        node.durable_commit = 0;
        // A learner has no vote to recover: it just copies the log again.
        node.recovering = self.members.contains(&node.id);
        self.stats.amnesia += 1;
    }

    /// Restarts replica `i` from its storage. The workload's `restore` failing on the
    /// stored checkpoint is a violation.
    pub(super) fn restart(&mut self, i: usize) -> Result<(), Violation> {
        let now = self.now;
        let node = &mut self.nodes[i];
        let state = node.storage.load().expect("mem storage loads");
        // The founding members, as a restarted `bank node` reads them from its cluster
        // file: the replica learns later configurations from its log and checkpoint.
        let cfg = Self::config(
            node.id,
            &self.epochs[0],
            self.seed ^ self.now,
            self.mutation,
            &self.faults,
        );
        let id = node.id;
        let machine =
            Recording::new(self.workload.machine()).deferred(self.faults.deferred_snapshots);
        match Replica::new(cfg, machine, state) {
            Ok(r) => node.replica = Some(r),
            Err(e) => {
                return Err(Violation {
                    tick: now,
                    what: format!("node {id} cannot restart from its storage: {e}"),
                })
            }
        }
        node.checked = 0;
        node.checked_outputs = 0;
        Ok(())
    }
}
