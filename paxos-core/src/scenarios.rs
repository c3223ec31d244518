//! Hand-scripted message sequences against real [`Replica`]s: each replays, exactly, a
//! safety bug that review found, so that it cannot come back unnoticed. Every test also
//! runs against the deliberately broken variant that reintroduces the bug, to show the
//! script still reaches the dangerous state.

use std::collections::BTreeMap;

use crate::mutation::Mutation;
use crate::sim::Recorder;
use crate::{
    Ballot, ClientId, Config, MemStorage, Message, NodeId, PersistentState, Replica, Reply,
    Request, Slot, SlotStatus, Storage, Value,
};

/// A cluster driven by hand: the test decides who ticks, who runs for leader and which
/// messages arrive (the others are lost).
struct Scripted {
    replicas: Vec<Option<Replica<Recorder>>>,
    storage: Vec<MemStorage>,
    configs: Vec<Config>,
    replies: Vec<(NodeId, Reply)>,
}

impl Scripted {
    fn new(n: u64, mutation: Mutation) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let configs: Vec<Config> = ids
            .iter()
            .map(|&id| {
                let mut c = Config::new(id, ids.clone());
                c.mutation = mutation;
                c
            })
            .collect();
        // Bootstrapped by hand as a new cluster: every member starts as a voter.
        let storage: Vec<MemStorage> = ids
            .iter()
            .map(|_| {
                let mut m = MemStorage::new();
                m.persist(&[crate::PersistOp::Status {
                    status: crate::AcceptorStatus::Voter,
                    incarnation: 0,
                }])
                .unwrap();
                m
            })
            .collect();
        let replicas = configs
            .iter()
            .map(|c| {
                Some(
                    Replica::new(c.clone(), Recorder::default(), PersistentState::founding())
                        .unwrap(),
                )
            })
            .collect();
        Scripted {
            replicas,
            storage,
            configs,
            replies: Vec::new(),
        }
    }

    fn r(&mut self, id: NodeId) -> &mut Replica<Recorder> {
        self.replicas[(id - 1) as usize]
            .as_mut()
            .expect("the replica is up")
    }

    /// Handles every output (persist, then send) until the cluster is quiet; a message
    /// arrives only if `allow(from, to, message)`.
    fn run(&mut self, allow: &dyn Fn(NodeId, NodeId, &Message) -> bool) {
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                let Some(r) = r else { continue };
                let ready = r.take_ready();
                self.storage[i].persist(&ready.persist).unwrap();
                let id = r.id();
                msgs.extend(ready.messages.into_iter().map(|(to, m)| (id, to, m)));
                self.replies
                    .extend(ready.replies.into_iter().map(|reply| (id, reply)));
            }
            if msgs.is_empty() {
                return;
            }
            for (from, to, m) in msgs {
                if !allow(from, to, &m) {
                    continue;
                }
                if let Some(r) = self.replicas[(to - 1) as usize].as_mut() {
                    r.handle_message(from, m);
                }
            }
        }
        panic!("the cluster never went quiet");
    }

    /// Ticks `ids` `n` times, running the network after each tick.
    fn tick(&mut self, ids: &[NodeId], n: usize, allow: &dyn Fn(NodeId, NodeId, &Message) -> bool) {
        for _ in 0..n {
            for &id in ids {
                if let Some(r) = self.replicas[(id - 1) as usize].as_mut() {
                    r.tick();
                }
            }
            self.run(allow);
        }
    }

    /// Like [`run`](Self::run), but messages for which `hold` says so are kept aside
    /// (delivered later with [`deliver`](Self::deliver)) instead of lost or delivered.
    fn run_holding(
        &mut self,
        allow: &dyn Fn(NodeId, NodeId, &Message) -> bool,
        hold: &dyn Fn(NodeId, NodeId, &Message) -> bool,
    ) -> Vec<(NodeId, NodeId, Message)> {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let mut msgs = Vec::new();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                let Some(r) = r else { continue };
                let ready = r.take_ready();
                self.storage[i].persist(&ready.persist).unwrap();
                let id = r.id();
                msgs.extend(ready.messages.into_iter().map(|(to, m)| (id, to, m)));
            }
            if msgs.is_empty() {
                return held;
            }
            for (from, to, m) in msgs {
                if hold(from, to, &m) {
                    held.push((from, to, m));
                } else if allow(from, to, &m) {
                    if let Some(r) = self.replicas[(to - 1) as usize].as_mut() {
                        r.handle_message(from, m);
                    }
                }
            }
        }
        panic!("the cluster never went quiet");
    }

    /// Delivers messages held earlier.
    fn deliver(&mut self, held: Vec<(NodeId, NodeId, Message)>) {
        for (from, to, m) in held {
            if let Some(r) = self.replicas[(to - 1) as usize].as_mut() {
                r.handle_message(from, m);
            }
        }
    }

    /// The replica loses its storage and restarts without state (with a fresh seed,
    /// as `spawn_node` gives every start).
    fn wipe(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        self.storage[i] = MemStorage::new();
        self.configs[i].seed = self.configs[i].seed.wrapping_mul(31).wrapping_add(7);
        self.replicas[i] = Some(
            Replica::new(
                self.configs[i].clone(),
                Recorder::default(),
                PersistentState::default(),
            )
            .unwrap(),
        );
    }

    fn crash(&mut self, id: NodeId) {
        self.replicas[(id - 1) as usize] = None;
    }

    fn restart(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        let state = self.storage[i].load().unwrap();
        self.replicas[i] =
            Some(Replica::new(self.configs[i].clone(), Recorder::default(), state).unwrap());
    }

    fn register(&mut self, at: NodeId, client: ClientId) {
        self.r(at).handle_request(Request::register(client));
    }

    /// The executed value of every slot, per replica; fails on two replicas that
    /// executed different values in one slot.
    fn executed_agree(&self) -> Result<BTreeMap<Slot, Value>, String> {
        let mut seen: BTreeMap<Slot, (NodeId, Value)> = BTreeMap::new();
        for r in self.replicas.iter().flatten() {
            for info in r.log(0..r.executed()) {
                if info.status != SlotStatus::Executed {
                    continue;
                }
                let Some(v) = info.value else { continue };
                match seen.get(&info.slot) {
                    Some((other, w)) if *w != v => {
                        return Err(format!(
                            "slot {}: n{} executed {} but n{} executed {}",
                            info.slot,
                            r.id(),
                            v.summary(),
                            other,
                            w.summary()
                        ))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(info.slot, (r.id(), v));
                    }
                }
            }
        }
        Ok(seen.into_iter().map(|(s, (_, v))| (s, v)).collect())
    }
}

fn within(group: &'static [NodeId]) -> impl Fn(NodeId, NodeId, &Message) -> bool {
    move |from, to, _| group.contains(&from) && group.contains(&to)
}

fn nothing(_: NodeId, _: NodeId, _: &Message) -> bool {
    false
}

fn register(client: ClientId) -> Value {
    Value::Request(Request::register(client))
}

/// Finding 1 of the safety review: a leader whose ballot was superseded learns, by
/// fetching, the value a higher ballot chose in a slot where it had proposed another
/// one, and then announces a commit point over that slot under its own ballot; a
/// follower that accepted its losing proposal executes it. Five replicas.
fn superseded_leader_scenario(mutation: Mutation) -> Scripted {
    let mut h = Scripted::new(5, mutation);
    // 1. n5 leads at (1, n5); `register c100` is chosen in slot 0 by {n5, n3, n4}; only
    //    n1 hears the commit point (so n1 knows slot 0 is chosen but not its value).
    h.r(5).start_election_now();
    h.run(&|_, _, _| true);
    assert!(h.r(5).is_leader());
    h.register(5, 100);
    h.run(&|from, to, m| {
        let core = [3, 4, 5];
        if from == 5 && matches!(m, Message::Heartbeat { .. }) {
            return to == 1;
        }
        core.contains(&from) && core.contains(&to)
    });
    assert_eq!(h.r(5).commit_point(), 1);
    h.crash(5);

    // 2. n1 is elected at (2, n1) by {n1, n2, n3}; its NEW-VIEW and its proposal of
    //    `register c7` for slot 1 reach only n2.
    h.tick(&[1, 2, 3, 4], 45, &nothing); // everyone stops believing in n5
    h.r(1).start_election_now();
    h.run(&|from, to, m| match m {
        Message::Prepare { .. } => from == 1 && (to == 2 || to == 3),
        Message::Promise { .. } => to == 1 && (from == 2 || from == 3),
        _ => (from == 1 && to == 2) || (from == 2 && to == 1),
    });
    assert!(h.r(1).is_leader());
    assert_eq!(h.r(1).promised(), Ballot::new(2, 1));
    h.register(1, 7);
    h.run(&within(&[1, 2]));
    assert_eq!(h.r(2).slot(1).value, Some(register(7)));

    // 3. n5 restarts; {n3, n4, n5} elect n3 at (3, n3) and choose `register c8` in
    //    slot 1. Nothing passes between {n1, n2} and {n3, n4, n5}.
    h.restart(5);
    h.tick(&[3, 4, 5], 45, &nothing);
    h.r(3).start_election_now();
    h.run(&within(&[3, 4, 5]));
    assert!(h.r(3).is_leader());
    h.register(3, 8);
    h.run(&within(&[3, 4, 5]));
    assert_eq!(h.r(3).commit_point(), 2);

    // 4. n1 still believes it leads. It fetches the chosen values from the others
    //    (slot 0, then slot 1 = c8); its accepts to n3..n5 and their NACKs are lost.
    h.tick(&[1, 2], 30, &|from, to, m| {
        let a = [1, 2];
        if a.contains(&from) && a.contains(&to) {
            return true;
        }
        match m {
            Message::Fetch { .. } => from == 1,
            Message::FetchReply { .. } | Message::Snapshot { .. } => to == 1,
            _ => false,
        }
    });
    h
}

#[test]
fn a_superseded_leader_never_makes_a_follower_execute_its_losing_value() {
    let mut h = superseded_leader_scenario(Mutation::None);
    h.executed_agree().expect("no divergence while partitioned");
    assert!(!h.r(1).is_leader(), "n1 stepped down once it learned c8");
    assert_ne!(
        h.r(2).slot(1).status,
        SlotStatus::Executed,
        "n2 must not execute its unchosen c7"
    );
    // 5. Heal: everyone converges on c8 in slot 1.
    h.tick(&[1, 2, 3, 4, 5], 200, &|_, _, _| true);
    let executed = h.executed_agree().expect("no divergence after healing");
    assert_eq!(executed.get(&1), Some(&register(8)));
    for id in 1..=5 {
        assert!(h.r(id).executed() >= 2, "n{id} caught up");
    }
}

#[test]
fn the_superseded_leader_scenario_catches_its_broken_variant() {
    let h = superseded_leader_scenario(Mutation::SupersededLeaderAnnounces);
    let err = h
        .executed_agree()
        .expect_err("the broken variant lets n2 execute c7 where c8 was chosen");
    assert!(err.contains("slot 1"), "{err}");
}

/// An acceptor that already knows a slot decided vouches for a proposal in it only if
/// the proposal is the decided value: otherwise a superseded leader could count it
/// towards a quorum for its losing value.
fn ack_for_a_decided_slot(mutation: Mutation) -> Vec<Slot> {
    let mut r = Replica::new(
        {
            let mut c = Config::new(2, vec![1, 2, 3]);
            c.mutation = mutation;
            c
        },
        Recorder::default(),
        PersistentState::founding(),
    )
    .unwrap();
    // Slot 0 decided (learned from a fetch) as `register c8`.
    r.handle_message(
        3,
        Message::FetchReply {
            commit_point: 1,
            entries: vec![(0, register(8))],
        },
    );
    assert_eq!(r.commit_point(), 1);
    r.take_ready();
    // A leader proposes `register c7` in slot 0 and `register c9` in slot 1.
    r.handle_message(
        1,
        Message::Accept {
            ballot: Ballot::new(1, 1),
            commit_point: 0,
            entries: vec![(0, register(7)), (1, register(9))],
        },
    );
    r.take_ready()
        .messages
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Accepted { slots, .. } => Some(slots),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn an_acceptor_vouches_for_a_decided_slot_only_with_its_value() {
    assert_eq!(ack_for_a_decided_slot(Mutation::None), vec![1]);
    assert_eq!(
        ack_for_a_decided_slot(Mutation::AckChosenBlindly),
        vec![0, 1],
        "the broken variant is caught by this test"
    );
}

/// A PROMISE sent by a replica's previous life, delivered after that replica lost its
/// state and recovered, must not count: otherwise the candidate's phase 1 misses what
/// the recovered replica accepted since (see `replica/recovery.rs`, "A PROMISE for b").
/// Five replicas: n1 promises n5's ballot (5, n5), loses its disk and recovers with
/// ballot (2, n1) from {n2, n3, n4}; n4 then leads at (3, n4) and chooses c77 in slot 0
/// with {n4, n1, n2}; n5's candidacy receives n1's old promise and n3's.
fn stale_promise_scenario(mutation: Mutation) -> Scripted {
    let mut h = Scripted::new(5, mutation);
    let all = |_: NodeId, _: NodeId, _: &Message| true;
    h.r(5).start_election_now();
    h.run(&all);
    assert!(h.r(5).is_leader());
    // n5 runs again, up to round 5, its prepares lost except the last one to n1,
    // whose PROMISE is held back.
    for _ in 0..3 {
        h.r(5).start_election_now();
        h.run(&nothing);
    }
    h.r(5).start_election_now();
    assert_eq!(h.r(5).promised(), Ballot::new(5, 5));
    let held = h.run_holding(
        &|from, to, m| from == 5 && to == 1 && matches!(m, Message::Prepare { .. }),
        &|from, to, m| from == 1 && to == 5 && matches!(m, Message::Promise { .. }),
    );
    assert_eq!(held.len(), 1, "n1's promise to (5, n5)");
    // n1 loses its disk and recovers from {n2, n3, n4}.
    h.wipe(1);
    h.run(&within(&[1, 2, 3, 4]));
    assert_eq!(
        h.r(1).acceptor_status(),
        crate::AcceptorStatus::Voter,
        "n1 recovered"
    );
    assert!(h.r(1).promised() < Ballot::new(5, 5));
    // n4 leads at (3, n4) and chooses c77 in slot 0 with {n4, n1, n2}.
    h.r(4).start_election_now();
    assert!(h.r(4).promised() < Ballot::new(5, 5));
    h.run(&within(&[1, 2, 4]));
    assert!(h.r(4).is_leader());
    h.register(4, 77);
    // n1 does not hear that c77 was chosen (it only accepted it).
    h.run(&|from, to, m| {
        [1, 2, 4].contains(&from)
            && [1, 2, 4].contains(&to)
            && !(from == 4 && to == 1 && matches!(m, Message::Heartbeat { .. }))
    });
    assert_eq!(h.r(4).commit_point(), 1, "c77 chosen");
    assert_eq!(h.r(1).commit_point(), 0);
    // n5's candidacy: n1's old promise arrives, and n3's fresh one.
    h.deliver(held);
    h.tick(&[5], 6, &|from, to, m| match m {
        Message::Prepare { .. } => from == 5 && to == 3,
        Message::Promise { .. } => from == 3 && to == 5,
        _ => false,
    });
    if h.r(5).is_leader() {
        // Its phase 1 missed c77: it proposes c88 in slot 0, and n1 (which promised
        // only (3, n4) since its recovery) accepts it along with n3.
        h.register(5, 88);
        h.run(&within(&[1, 3, 5]));
    }
    h
}

#[test]
fn a_promise_from_before_a_recovery_does_not_count() {
    let mut h = stale_promise_scenario(Mutation::None);
    assert!(
        !h.r(5).is_leader(),
        "n5 needs a promise from n1's current incarnation"
    );
    h.executed_agree().expect("no divergence");
    // Heal: one value in slot 0 everywhere.
    h.tick(&[1, 2, 3, 4, 5], 300, &|_, _, _| true);
    let executed = h.executed_agree().expect("no divergence after healing");
    assert_eq!(executed.get(&0), Some(&register(77)));
}

#[test]
fn the_stale_promise_scenario_catches_recovery_without_incarnations() {
    let h = stale_promise_scenario(Mutation::RecoveryWithoutIncarnations);
    let err = h
        .executed_agree()
        .expect_err("without incarnations n5 chooses c88 where c77 was chosen");
    assert!(err.contains("slot 0"), "{err}");
}
