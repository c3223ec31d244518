//! The hand-driven cluster behind the scripted tests (`scenarios.rs`, the reviews'
//! `attack_tests*.rs`): real [`Replica`]s, a network whose every message the test
//! delivers, loses or holds, crashes, restarts and storage wipes.

use std::collections::BTreeMap;

use crate::sim::Recorder;
use crate::{
    AcceptorStatus, ClientId, Config, MemStorage, Message, NodeId, PersistOp, Replica, Reply,
    Request, Slot, SlotStatus, Storage, Value,
};

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Delivered now.
    Deliver,
    /// Lost.
    Drop,
    /// Kept in flight (delayed); delivered later by `release`.
    Hold,
}

pub(crate) use Fate::{Deliver, Drop, Hold};

/// Decides each message's fate from `(from, to, message)`.
pub(crate) type Filter<'a> = &'a dyn Fn(NodeId, NodeId, &Message) -> Fate;

/// A cluster driven by hand: the test decides who ticks, who runs for leader and what
/// happens to every message.
pub(crate) struct Scripted {
    replicas: Vec<Option<Replica<Recorder>>>,
    storage: Vec<MemStorage>,
    configs: Vec<Config>,
    pub(crate) replies: Vec<(NodeId, Reply)>,
    /// Messages held in flight, in the order they were sent.
    pub(crate) held: Vec<(NodeId, NodeId, Message)>,
}

impl Scripted {
    /// `founding`: every member bootstrapped as a voter by hand; otherwise every member
    /// starts pristine and founds the cluster by itself.
    pub(crate) fn new(n: u64, founding: bool, tweak: impl Fn(&mut Config)) -> Self {
        Self::with_learners(n, 0, founding, tweak)
    }

    /// As [`Scripted::new`], with `learners` learners beside the `n` members (ids
    /// `n + 1 ..`).
    pub(crate) fn with_learners(
        n: u64,
        learners: u64,
        founding: bool,
        tweak: impl Fn(&mut Config),
    ) -> Self {
        let members: Vec<NodeId> = (1..=n).collect();
        let ids: Vec<NodeId> = (1..=n + learners).collect();
        let configs: Vec<Config> = ids
            .iter()
            .map(|&id| {
                let mut c = Config::new(id, members.clone());
                c.learner = id > n;
                // Sequences here are written slot by slot: session expiry's clock
                // entries (a new leader opens its reign with one) would move them.
                // A test about expiry turns it on in `tweak`.
                c.session_ttl_ticks = 0;
                // Likewise, a slot proposed every round, full or not, not held while
                // others are in flight: a test about holding turns it on.
                c.hold_partial_slots = false;
                tweak(&mut c);
                c
            })
            .collect();
        let storage: Vec<MemStorage> = ids
            .iter()
            .map(|&id| {
                let mut m = MemStorage::new();
                if founding && id <= n {
                    m.persist(&[PersistOp::Status {
                        status: AcceptorStatus::Voter,
                        incarnation: 0,
                    }])
                    .unwrap();
                }
                m
            })
            .collect();
        let mut h = Scripted {
            replicas: ids.iter().map(|_| None).collect(),
            storage,
            configs,
            replies: Vec::new(),
            held: Vec::new(),
        };
        for id in ids {
            h.restart(id);
        }
        h
    }

    pub(crate) fn r(&mut self, id: NodeId) -> &mut Replica<Recorder> {
        self.replicas[(id - 1) as usize]
            .as_mut()
            .expect("the replica is up")
    }

    pub(crate) fn drain(&mut self) -> Vec<(NodeId, NodeId, Message)> {
        let mut msgs = Vec::new();
        for (i, r) in self.replicas.iter_mut().enumerate() {
            let Some(r) = r else { continue };
            let id = r.id();
            let replies = &mut self.replies;
            r.drive(
                &mut self.storage[i],
                |to, m| msgs.push((id, to, m)),
                |reply| replies.push((id, reply)),
            )
            .unwrap();
        }
        msgs
    }

    pub(crate) fn deliver(&mut self, from: NodeId, to: NodeId, m: Message) {
        if let Some(r) = self.replicas[(to - 1) as usize].as_mut() {
            r.handle_message(from, m);
        }
    }

    pub(crate) fn run(&mut self, f: Filter) {
        for _ in 0..2000 {
            let msgs = self.drain();
            if msgs.is_empty() {
                return;
            }
            for (from, to, m) in msgs {
                match f(from, to, &m) {
                    Deliver => self.deliver(from, to, m),
                    Drop => {}
                    Hold => self.held.push((from, to, m)),
                }
            }
        }
        panic!("the cluster never went quiet");
    }

    pub(crate) fn tick(&mut self, ids: &[NodeId], n: usize, f: Filter) {
        for _ in 0..n {
            for &id in ids {
                if let Some(r) = self.replicas[(id - 1) as usize].as_mut() {
                    r.tick();
                }
            }
            self.run(f);
        }
    }

    /// Ticks `ids` one tick at a time (running with `f` after each) until `done`
    /// holds, checked before every tick, or `limit` ticks pass. Returns whether `done`
    /// held.
    pub(crate) fn tick_until(
        &mut self,
        ids: &[NodeId],
        limit: usize,
        f: Filter,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        for _ in 0..limit {
            if done(self) {
                return true;
            }
            self.tick(ids, 1, f);
        }
        done(self)
    }

    /// Delivers (and forgets) the held messages matching `pick`, then runs with `f`.
    pub(crate) fn release(&mut self, pick: Filter, f: Filter) {
        let held = std::mem::take(&mut self.held);
        for (from, to, m) in held {
            if pick(from, to, &m) == Deliver {
                self.deliver(from, to, m);
            } else {
                self.held.push((from, to, m));
            }
        }
        self.run(f);
    }

    pub(crate) fn restart(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        let state = self.storage[i].load().unwrap();
        self.replicas[i] =
            Some(Replica::new(self.configs[i].clone(), Recorder::default(), state).unwrap());
    }

    /// The replica loses its storage and restarts from nothing, with a fresh seed as
    /// `spawn_node` gives every start.
    pub(crate) fn wipe(&mut self, id: NodeId) {
        let i = (id - 1) as usize;
        self.storage[i] = MemStorage::new();
        self.configs[i].seed = self.configs[i].seed.wrapping_mul(31).wrapping_add(7);
        self.restart(id);
    }

    pub(crate) fn register(&mut self, at: NodeId, client: ClientId) {
        self.r(at).handle_request(Request::register(client));
    }

    /// Like [`run`](Self::run) with a yes/no filter: a message arrives or is lost.
    pub(crate) fn run_if(&mut self, allow: &dyn Fn(NodeId, NodeId, &Message) -> bool) {
        self.run(&|from, to, m| if allow(from, to, m) { Deliver } else { Drop });
    }

    /// Like [`tick`](Self::tick) with a yes/no filter.
    pub(crate) fn tick_if(
        &mut self,
        ids: &[NodeId],
        n: usize,
        allow: &dyn Fn(NodeId, NodeId, &Message) -> bool,
    ) {
        self.tick(ids, n, &|from, to, m| {
            if allow(from, to, m) {
                Deliver
            } else {
                Drop
            }
        });
    }

    /// Writes `ops` to `id`'s storage, as its driver would (a test building a durable
    /// state the replica did not reach itself).
    pub(crate) fn storage_persist(&mut self, id: NodeId, ops: &[PersistOp]) {
        self.storage[(id - 1) as usize]
            .persist(ops)
            .expect("the test storage takes every write");
    }

    /// The durable state of `id`.
    pub(crate) fn stored(&self, id: NodeId) -> &crate::PersistentState {
        self.storage[(id - 1) as usize].state()
    }

    /// The replica crashes (its storage is kept).
    pub(crate) fn crash(&mut self, id: NodeId) {
        self.replicas[(id - 1) as usize] = None;
    }

    /// The replica crashes in the middle of a round: what waits for no write
    /// (`messages_now`, `replies_now`) has left, as `Ready::deliver` sends it first, and
    /// only the first `keep` writes of the round reached the disk. Returns the messages
    /// that left (the caller delivers, holds or drops them); early replies go to
    /// `replies`.
    pub(crate) fn crash_mid_round(
        &mut self,
        id: NodeId,
        keep: usize,
    ) -> Vec<(NodeId, NodeId, Message)> {
        let i = (id - 1) as usize;
        let Some(mut r) = self.replicas[i].take() else {
            return Vec::new();
        };
        let ready = r.take_ready();
        let keep = keep.min(ready.persist.len());
        self.storage[i].persist(&ready.persist[..keep]).unwrap();
        for reply in ready.replies_now {
            self.replies.push((id, reply));
        }
        ready
            .messages_now
            .into_iter()
            .map(|(to, m)| (id, to, m))
            .collect()
    }

    /// The executed value of every slot; fails on two replicas that executed
    /// different values in one slot.
    pub(crate) fn executed_agree(&self) -> Result<BTreeMap<Slot, Value>, String> {
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

/// Members `ids` without addresses, for [`Replica::reconfigure`].
pub(crate) fn members(ids: &[NodeId]) -> Vec<crate::Member> {
    ids.iter()
        .map(|&id| crate::Member {
            id,
            address: String::new(),
        })
        .collect()
}

/// Every message arrives.
pub(crate) fn all(_: NodeId, _: NodeId, _: &Message) -> Fate {
    Deliver
}

/// Every message is lost.
/// Messages between two replicas of `group` only.
pub(crate) fn within(group: &'static [NodeId]) -> impl Fn(NodeId, NodeId, &Message) -> Fate {
    move |from, to, _| {
        if group.contains(&from) && group.contains(&to) {
            Deliver
        } else {
            Drop
        }
    }
}

pub(crate) fn none(_: NodeId, _: NodeId, _: &Message) -> Fate {
    Drop
}

/// True for a NEVER-VOTED answer.
pub(crate) fn is_never_voted(m: &Message) -> bool {
    matches!(m, Message::NeverVoted { .. })
}

/// True for a RECOVER.
pub(crate) fn is_recover(m: &Message) -> bool {
    matches!(m, Message::Recover { .. })
}

/// A write of the simulation's recording machine by `session`: its command is its
/// identity.
pub(crate) fn write(session: ClientId, seq: u64) -> Request {
    Request {
        client: session,
        seq,
        payload: bytes::Bytes::from(postcard::to_allocvec(&(session, seq)).unwrap()),
    }
}

/// n1 leads and registers session `c100`; returns the session id.
pub(crate) fn leader_with_session(h: &mut Scripted) -> ClientId {
    h.r(1).start_election_now();
    h.run(&all);
    assert!(h.r(1).is_leader());
    h.register(1, 100);
    h.run(&all);
    h.replies
        .iter()
        .find_map(|(_, r)| match &r.response {
            crate::Response::Ok(b) if r.client == 100 && r.seq == 0 => postcard::from_bytes(b).ok(),
            _ => None,
        })
        .expect("registered")
}
