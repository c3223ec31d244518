//! The test kit as a user meets it: the simulation pointed at a state machine of the
//! user's own, passing when the machine is right and failing, with a replayable seed,
//! when it is not.

use std::cell::Cell;
use std::collections::BTreeMap;

use paxos_core::testing::{Gen, Model, Simulation, Workload};
use paxos_core::{RestoreError, StateMachine};
use serde::{Deserialize, Serialize};

/// A key-value store with puts, gets and appends.
#[derive(Clone, Debug, Default)]
struct Kv {
    map: BTreeMap<u8, Vec<u8>>,
    flaw: Flaw,
    /// Differs between instances (for the nondeterministic flaw).
    instance: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Flaw {
    #[default]
    None,
    /// `restore` ignores the snapshot: a replica that catches up by state transfer
    /// starts from an empty map.
    RestoreForgets,
    /// An output depends on which replica computed it.
    Nondeterministic,
    /// A read answers from a stale copy: the value before the last put.
    StaleQuery,
    /// The snapshot leaves key 2 out.
    SnapshotDropsKey,
    /// `restore` refuses every snapshot it is given.
    RestoreFails,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Op {
    Put(u8, u8),
    Append(u8, u8),
    Get(u8),
}

impl StateMachine for Kv {
    type Command = Op;
    type Output = Option<Vec<u8>>;

    fn apply(&mut self, op: Op) -> Option<Vec<u8>> {
        match op {
            Op::Put(k, v) => self.map.insert(k, vec![v]),
            Op::Append(k, v) => {
                let e = self.map.entry(k).or_default();
                e.push(v);
                if self.flaw == Flaw::Nondeterministic && self.instance % 2 == 1 {
                    return Some(vec![0xEE]);
                }
                Some(e.clone())
            }
            Op::Get(k) => self.map.get(&k).cloned(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut map = self.map.clone();
        if self.flaw == Flaw::SnapshotDropsKey {
            map.remove(&2);
        }
        postcard::to_allocvec(&map).expect("encodes")
    }

    fn query(&self, op: &Op) -> Option<Option<Vec<u8>>> {
        match op {
            Op::Get(k) if self.flaw == Flaw::StaleQuery => Some(
                self.map
                    .get(k)
                    .map(|v| v[..v.len().saturating_sub(1)].to_vec()),
            ),
            Op::Get(k) => Some(self.map.get(k).cloned()),
            _ => None,
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        if self.flaw == Flaw::RestoreForgets {
            return Ok(());
        }
        if self.flaw == Flaw::RestoreFails {
            return Err(RestoreError::new("bad version"));
        }
        self.map = postcard::from_bytes(snapshot).map_err(|e| RestoreError::new(e.to_string()))?;
        Ok(())
    }
}

/// The sequential specification.
struct KvModel;

impl Model for KvModel {
    type State = BTreeMap<u8, Vec<u8>>;
    type Input = Op;
    type Output = Option<Vec<u8>>;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, s: &Self::State, op: &Op) -> (Self::State, Self::Output) {
        let mut s = s.clone();
        let out = match op {
            Op::Put(k, v) => s.insert(*k, vec![*v]),
            Op::Append(k, v) => {
                let e = s.entry(*k).or_default();
                e.push(*v);
                Some(e.clone())
            }
            Op::Get(k) => s.get(k).cloned(),
        };
        (s, out)
    }
}

/// The workload; `instances` numbers the machines of one run (each run clones the
/// workload, so the numbering, like everything else in a run, replays).
#[derive(Clone)]
struct KvWorkload(Flaw, Cell<u64>);

impl KvWorkload {
    fn new(flaw: Flaw) -> Self {
        KvWorkload(flaw, Cell::new(0))
    }
}

impl Workload for KvWorkload {
    type Machine = Kv;
    type Model = KvModel;

    fn machine(&self) -> Kv {
        Kv {
            flaw: self.0,
            instance: self.1.replace(self.1.get() + 1),
            ..Kv::default()
        }
    }

    fn model(&self) -> KvModel {
        KvModel
    }

    fn read(&self, gen: &mut Gen, _client: usize) -> Option<Op> {
        gen.chance(0.3).then(|| Op::Get(gen.below(3) as u8))
    }

    fn command(&self, gen: &mut Gen, _client: usize) -> Op {
        let k = gen.below(3) as u8;
        let v = gen.below(256) as u8;
        match gen.below(3) {
            0 => Op::Put(k, v),
            1 => Op::Append(k, v),
            _ => Op::Get(k),
        }
    }
}

#[test]
fn a_correct_key_value_store_passes_with_three_and_five_replicas() {
    let three = Simulation::new(KvWorkload::new(Flaw::None))
        .seeds(0..150)
        .replicas(3)
        .run()
        .unwrap_or_else(|f| panic!("{f}"));
    let five = Simulation::new(KvWorkload::new(Flaw::None))
        .seeds(1000..1150)
        .replicas(5)
        .run()
        .unwrap_or_else(|f| panic!("{f}"));
    for r in [&three, &five] {
        assert!(r.completed > 1000 && r.reads > 300, "{r}");
        assert!(r.crashes > 0 && r.snapshots > 0 && r.elections > 0, "{r}");
    }
}

/// The first failing seed below `max` for `flaw`, run without the environment's seeds.
fn first_failure(flaw: Flaw, max: u64) -> Option<paxos_core::testing::Failure> {
    let sim = Simulation::new(KvWorkload::new(flaw))
        .seeds(0..max)
        .ignore_environment();
    sim.seed_list()
        .into_iter()
        .find_map(|seed| sim.run_seed(seed).err())
}

#[test]
fn a_store_that_forgets_on_restore_is_caught() {
    let f = first_failure(Flaw::RestoreForgets, 100).expect("the flaw is caught");
    assert!(
        f.what.contains("diverged") || f.what.contains("model"),
        "{f}"
    );
}

#[test]
fn a_nondeterministic_store_is_caught_and_the_failure_replays() {
    let f = first_failure(Flaw::Nondeterministic, 300).expect("the flaw is caught");
    let text = f.to_string();
    assert!(
        text.contains(&format!("PAXOS_SIM_SEED={}", f.seed)),
        "{text}"
    );
    assert!(
        text.contains("a_nondeterministic_store_is_caught_and_the_failure_replays"),
        "the replay command names the test: {text}"
    );
    // The same seed fails the same way again.
    let again = Simulation::new(KvWorkload::new(Flaw::Nondeterministic))
        .ignore_environment()
        .run_seed(f.seed)
        .expect_err("replays");
    assert_eq!((again.tick, again.what.clone()), (f.tick, f.what.clone()));
}

#[test]
fn a_store_whose_reads_answer_from_a_stale_copy_is_caught() {
    let f = first_failure(Flaw::StaleQuery, 50).expect("the flaw is caught");
    assert!(f.what.contains("read"), "{f}");
}

#[test]
fn a_store_whose_snapshot_loses_a_key_is_caught() {
    // Every replica's outputs are compared position by position, so the replica that
    // installed the bad snapshot shows at its next output on key 2.
    let f = first_failure(Flaw::SnapshotDropsKey, 100).expect("the flaw is caught");
    assert!(
        f.what.contains("diverged") || f.what.contains("model"),
        "{f}"
    );
}

#[test]
fn a_failing_restore_is_a_failure_not_a_panic() {
    let f = first_failure(Flaw::RestoreFails, 100).expect("the flaw is caught");
    assert!(
        f.what.contains("restore") || f.what.contains("checkpoint"),
        "{f}"
    );
}
