//! The storage conformance suite: what every [`Storage`] must do, checked in one line.

use std::fmt;

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::traits::{apply_op, AcceptorStatus, Checkpoint, PersistOp, PersistentState, Storage};
use crate::types::{Ballot, NodeId, Request, Slot, Value};

/// Makes the storages [`StorageSuite`] checks: a new empty one per case, and the same
/// one again after a restart.
///
/// For an in-memory storage, `reopen` returns the storage it was given; for a durable
/// one it drops it (closing files, releasing locks) and opens what it left behind, as a
/// process restart would.
pub trait StorageFactory {
    /// The storage under test.
    type Storage: Storage;

    /// A new storage with nothing in it.
    fn create(&mut self) -> Self::Storage;

    /// Closes `storage` and opens what it left behind.
    fn reopen(&mut self, storage: Self::Storage) -> Self::Storage;
}

/// A [`StorageSuite`] case that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SuiteFailure {
    /// The case.
    pub case: &'static str,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for SuiteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "storage conformance case {:?} failed: {}",
            self.case, self.what
        )
    }
}

impl std::error::Error for SuiteFailure {}

/// The conformance suite for [`Storage`] implementations.
///
/// The contract it checks: [`Storage::load`] returns exactly the state that applying
/// every persisted [`PersistOp`] in order to an empty [`PersistentState`] gives, as
/// [`apply_op`] defines it (promises and commit points only grow, an accepted value
/// replaces an unchosen one, a learned value is chosen for good and loses the ballot of
/// a value it replaces, a checkpoint replaces only an older one and raises the commit
/// point, compaction drops the entries below its slot, statuses and incarnations are
/// kept); the same holds after every restart; persisting the same operations twice
/// changes nothing; and values of any size come back byte for byte.
///
/// ```
/// use paxos_core::testing::{StorageFactory, StorageSuite};
/// use paxos_core::MemStorage;
///
/// struct Mem;
/// impl StorageFactory for Mem {
///     type Storage = MemStorage;
///     fn create(&mut self) -> MemStorage { MemStorage::new() }
///     fn reopen(&mut self, s: MemStorage) -> MemStorage { s }
/// }
///
/// StorageSuite::new(Mem).run().expect("MemStorage conforms");
/// ```
#[derive(Debug)]
pub struct StorageSuite<F> {
    factory: F,
    rounds: usize,
    seed: u64,
}

type Case<F> = fn(&mut StorageSuite<F>) -> Result<(), String>;

impl<F: StorageFactory> StorageSuite<F> {
    /// The suite over storages from `factory`, with 200 random rounds.
    pub fn new(factory: F) -> Self {
        StorageSuite {
            factory,
            rounds: 200,
            seed: 0x5707_a6e5,
        }
    }

    /// How many random batches the randomized case persists (more for a slower, deeper
    /// check).
    pub fn rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds;
        self
    }

    /// The seed of the randomized case.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Runs every case, stopping at the first failure.
    pub fn run(mut self) -> Result<(), SuiteFailure> {
        let cases: [(&'static str, Case<F>); 9] = [
            ("a new storage loads the empty state", Self::empty),
            ("promises only grow", Self::promises),
            ("accepted values replace unchosen ones only", Self::accepts),
            ("learned values are chosen for good", Self::learns),
            ("commit points only grow", Self::commit_points),
            (
                "checkpoints replace older ones and compaction drops entries",
                Self::checkpoints,
            ),
            ("acceptor status and incarnations are kept", Self::status),
            (
                "values of any size come back byte for byte",
                Self::large_values,
            ),
            (
                "random batches with restarts match the reference",
                Self::random,
            ),
        ];
        for (case, f) in cases {
            f(&mut self).map_err(|what| SuiteFailure { case, what })?;
        }
        Ok(())
    }

    /// Persists `batches` in order, checking the loaded state against the reference
    /// after each and again after a restart; returns the storage.
    fn script(&mut self, batches: &[Vec<PersistOp>]) -> Result<(), String> {
        let mut storage = self.factory.create();
        let mut expected = PersistentState::default();
        compare(&mut storage, &expected, "before anything was persisted")?;
        for (i, batch) in batches.iter().enumerate() {
            // Both entry points, in turn: a store may implement them apart.
            let persisted = if i % 2 == 0 {
                storage.persist(batch)
            } else {
                storage.persist_owned(&mut batch.clone())
            };
            persisted.map_err(|e| format!("persist of batch {i} failed: {e}"))?;
            for op in batch {
                apply_op(&mut expected, op);
            }
            compare(&mut storage, &expected, &format!("after batch {i}"))?;
        }
        let mut storage = self.factory.reopen(storage);
        compare(&mut storage, &expected, "after a restart")?;
        // Persisting the last batch again changes nothing.
        if let Some(last) = batches.last() {
            storage
                .persist(last)
                .map_err(|e| format!("persisting the last batch again failed: {e}"))?;
            for op in last {
                apply_op(&mut expected, op);
            }
            compare(
                &mut storage,
                &expected,
                "after persisting the last batch again",
            )?;
        }
        Ok(())
    }

    fn empty(&mut self) -> Result<(), String> {
        let mut storage = self.factory.create();
        compare(&mut storage, &PersistentState::default(), "new")?;
        storage
            .persist(&[])
            .map_err(|e| format!("an empty persist failed: {e}"))?;
        let mut storage = self.factory.reopen(storage);
        compare(&mut storage, &PersistentState::default(), "after a restart")
    }

    fn promises(&mut self) -> Result<(), String> {
        self.script(&[
            vec![PersistOp::Promise(ballot(3, 1))],
            vec![PersistOp::Promise(ballot(2, 2))],
            vec![
                PersistOp::Promise(ballot(3, 2)),
                PersistOp::Promise(ballot(1, 1)),
            ],
        ])
    }

    fn accepts(&mut self) -> Result<(), String> {
        self.script(&[
            vec![accept(1, ballot(1, 1), b"a"), accept(2, ballot(1, 1), b"b")],
            vec![accept(1, ballot(2, 2), b"c")],
            vec![learn(2, b"b"), accept(2, ballot(3, 3), b"d")],
            vec![
                accept(5, ballot(3, 3), b""),
                accept(7, ballot(3, 3), b"gap"),
            ],
        ])
    }

    fn learns(&mut self) -> Result<(), String> {
        self.script(&[
            vec![accept(1, ballot(1, 1), b"a"), accept(2, ballot(1, 1), b"b")],
            vec![learn(1, b"a"), learn(2, b"z"), learn(3, b"fresh")],
            vec![learn(2, b"z"), accept(3, ballot(9, 1), b"late")],
        ])
    }

    fn commit_points(&mut self) -> Result<(), String> {
        self.script(&[
            vec![PersistOp::CommitPoint(5)],
            vec![PersistOp::CommitPoint(3)],
            vec![PersistOp::CommitPoint(9), PersistOp::CommitPoint(7)],
        ])
    }

    fn checkpoints(&mut self) -> Result<(), String> {
        self.script(&[
            (1..=6).map(|s| accept(s, ballot(1, 1), b"v")).collect(),
            vec![
                PersistOp::Checkpoint(checkpoint(4, b"four")),
                PersistOp::Compact(4),
            ],
            vec![PersistOp::Checkpoint(checkpoint(2, b"older"))],
            vec![
                PersistOp::Checkpoint(checkpoint(6, b"six")),
                PersistOp::Compact(6),
                accept(8, ballot(2, 1), b"after"),
            ],
        ])
    }

    fn status(&mut self) -> Result<(), String> {
        self.script(&[
            vec![PersistOp::Status {
                status: AcceptorStatus::Recovering,
                incarnation: 2,
            }],
            vec![
                PersistOp::PeerIncarnation {
                    node: 3,
                    incarnation: 4,
                },
                PersistOp::PeerIncarnation {
                    node: 3,
                    incarnation: 1,
                },
            ],
            vec![PersistOp::Status {
                status: AcceptorStatus::Voter,
                incarnation: 2,
            }],
        ])
    }

    fn large_values(&mut self) -> Result<(), String> {
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        self.script(&[
            vec![
                accept(1, ballot(1, 1), &big),
                accept(2, ballot(1, 1), &[0; 1]),
            ],
            vec![PersistOp::Checkpoint(checkpoint(1, &data))],
        ])
    }

    fn random(&mut self) -> Result<(), String> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut storage = self.factory.create();
        let mut expected = PersistentState::default();
        for round in 0..self.rounds {
            let n = 1 + (rng.next_u64() % 8) as usize;
            let batch: Vec<PersistOp> = (0..n).map(|_| random_op(&mut rng, &expected)).collect();
            let persisted = if round % 2 == 0 {
                storage.persist(&batch)
            } else {
                storage.persist_owned(&mut batch.clone())
            };
            persisted.map_err(|e| format!("round {round}: persist failed: {e}"))?;
            for op in &batch {
                apply_op(&mut expected, op);
            }
            if rng.next_u64().is_multiple_of(10) {
                storage = self.factory.reopen(storage);
                compare(
                    &mut storage,
                    &expected,
                    &format!("round {round}, after a restart"),
                )?;
            } else if rng.next_u64().is_multiple_of(4) {
                compare(&mut storage, &expected, &format!("round {round}"))?;
            }
        }
        let mut storage = self.factory.reopen(storage);
        compare(&mut storage, &expected, "at the end, after a restart")
    }
}

fn compare<S: Storage>(
    storage: &mut S,
    expected: &PersistentState,
    when: &str,
) -> Result<(), String> {
    let got = storage
        .load()
        .map_err(|e| format!("{when}: load failed: {e}"))?;
    if got == *expected {
        return Ok(());
    }
    let mut diffs = Vec::new();
    if got.status != expected.status || got.incarnation != expected.incarnation {
        diffs.push(format!(
            "status {:?}/{} instead of {:?}/{}",
            got.status, got.incarnation, expected.status, expected.incarnation
        ));
    }
    if got.peer_incarnations != expected.peer_incarnations {
        diffs.push(format!(
            "peer incarnations {:?} instead of {:?}",
            got.peer_incarnations, expected.peer_incarnations
        ));
    }
    if got.promised != expected.promised {
        diffs.push(format!(
            "promised {} instead of {}",
            got.promised, expected.promised
        ));
    }
    if got.commit_point != expected.commit_point {
        diffs.push(format!(
            "commit point {} instead of {}",
            got.commit_point, expected.commit_point
        ));
    }
    if got.checkpoint != expected.checkpoint {
        diffs.push(format!(
            "checkpoint at {:?} instead of {:?}",
            got.checkpoint.as_ref().map(|c| c.slot),
            expected.checkpoint.as_ref().map(|c| c.slot)
        ));
    }
    if got.log != expected.log {
        let slots: Vec<Slot> = got
            .log
            .keys()
            .chain(expected.log.keys())
            .filter(|s| got.log.get(*s) != expected.log.get(*s))
            .collect();
        diffs.push(format!("log entries differ at slots {slots:?}"));
    }
    Err(format!(
        "{when}: loaded state differs: {}",
        diffs.join("; ")
    ))
}

fn ballot(round: u64, node: NodeId) -> Ballot {
    Ballot { round, node }
}

fn value(bytes: &[u8]) -> Value {
    Value::Request(Request {
        client: 7,
        seq: 1 + bytes.len() as u64,
        payload: Bytes::copy_from_slice(bytes),
    })
}

fn accept(slot: Slot, ballot: Ballot, bytes: &[u8]) -> PersistOp {
    PersistOp::Accept {
        slot,
        ballot,
        value: value(bytes),
    }
}

fn learn(slot: Slot, bytes: &[u8]) -> PersistOp {
    PersistOp::Learn {
        slot,
        value: value(bytes),
    }
}

fn checkpoint(slot: Slot, data: &[u8]) -> Checkpoint {
    Checkpoint {
        slot,
        digest: crc32fast::hash(data),
        data: Bytes::copy_from_slice(data),
    }
}

/// An operation a replica could plausibly persist next, given what is stored.
fn random_op(rng: &mut ChaCha8Rng, state: &PersistentState) -> PersistOp {
    let base = state.checkpoint.as_ref().map_or(0, |c| c.slot);
    let slot = base + rng.next_u64() % 40;
    let b = ballot(1 + rng.next_u64() % 6, 1 + rng.next_u64() % 5);
    let len = match rng.next_u64() % 10 {
        0 => 0,
        1 => 4096 + (rng.next_u64() % 60_000) as usize,
        _ => (rng.next_u64() % 64) as usize,
    };
    let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
    match rng.next_u64() % 20 {
        0..=7 => accept(slot, b, &bytes),
        8..=10 => learn(slot, &bytes),
        11 | 12 => PersistOp::Promise(b),
        13 | 14 => PersistOp::CommitPoint(base + rng.next_u64() % 40),
        15 => {
            let at = base + 1 + rng.next_u64() % 30;
            PersistOp::Checkpoint(checkpoint(at, &bytes))
        }
        // A replica compacts only below its checkpoint.
        16 => PersistOp::Compact(base.saturating_sub(rng.next_u64() % 3)),
        // Incarnations only grow; a voter stays a voter.
        17 => PersistOp::Status {
            status: if state.status == AcceptorStatus::Voter || rng.next_u64().is_multiple_of(2) {
                AcceptorStatus::Voter
            } else {
                AcceptorStatus::Recovering
            },
            incarnation: state.incarnation + rng.next_u64() % 2,
        },
        18 => PersistOp::Accept {
            slot,
            ballot: b,
            value: match rng.next_u64() % 3 {
                0 => Value::Noop,
                1 => Value::Clock {
                    time: rng.next_u64() % 100_000,
                    idle_limit: 1 + rng.next_u64() % 1000,
                },
                _ => Value::ClockStep {
                    ballot: b,
                    from: rng.next_u64() % 100_000,
                    time: rng.next_u64() % 100_000,
                    idle_limit: 1 + rng.next_u64() % 1000,
                },
            },
        },
        _ => PersistOp::PeerIncarnation {
            node: 1 + rng.next_u64() % 5,
            incarnation: rng.next_u64() % 9,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStorage;

    struct Mem;

    impl StorageFactory for Mem {
        type Storage = MemStorage;
        fn create(&mut self) -> MemStorage {
            MemStorage::new()
        }
        fn reopen(&mut self, s: MemStorage) -> MemStorage {
            s
        }
    }

    #[test]
    fn mem_storage_conforms() {
        StorageSuite::new(Mem).rounds(2000).run().unwrap();
    }

    /// A storage that forgets a promise that did not raise the ballot... and every
    /// other way a storage can plausibly be wrong: each must fail the suite.
    #[derive(Default)]
    struct Broken {
        inner: MemStorage,
        flaw: Flaw,
    }

    #[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
    enum Flaw {
        #[default]
        None,
        /// A promise replaces the stored one even if lower.
        PromiseGoesBack,
        /// An accepted value overwrites a chosen one.
        AcceptOverChosen,
        /// Compaction is ignored.
        NoCompaction,
        /// Peer incarnations are not kept across a restart.
        ForgetsIncarnations,
        /// Large values are cut to 64 KiB.
        Truncates,
    }

    impl Storage for Broken {
        fn load(&mut self) -> Result<PersistentState, crate::StorageError> {
            self.inner.load()
        }
        fn persist(&mut self, ops: &[PersistOp]) -> Result<(), crate::StorageError> {
            for op in ops {
                let mut state = self.inner.state().clone();
                match (self.flaw, op) {
                    (Flaw::PromiseGoesBack, PersistOp::Promise(b)) => state.promised = *b,
                    (
                        Flaw::AcceptOverChosen,
                        PersistOp::Accept {
                            slot,
                            ballot,
                            value,
                        },
                    ) => {
                        state.log.insert(
                            *slot,
                            crate::StoredEntry {
                                ballot: *ballot,
                                value: value.clone(),
                                chosen: false,
                            },
                        );
                    }
                    (Flaw::NoCompaction, PersistOp::Compact(_)) => {}
                    (
                        Flaw::Truncates,
                        PersistOp::Accept {
                            slot,
                            ballot,
                            value,
                        },
                    ) => {
                        let value = match value {
                            Value::Request(r) if r.payload.len() > 65536 => {
                                Value::Request(Request {
                                    payload: r.payload.slice(..65536),
                                    ..r.clone()
                                })
                            }
                            v => v.clone(),
                        };
                        apply_op(
                            &mut state,
                            &PersistOp::Accept {
                                slot: *slot,
                                ballot: *ballot,
                                value,
                            },
                        );
                    }
                    _ => apply_op(&mut state, op),
                }
                self.inner = MemStorage::new();
                self.inner.persist(&restore_ops(&state))?;
            }
            Ok(())
        }
    }

    /// Operations that rebuild `state` in an empty MemStorage.
    fn restore_ops(state: &PersistentState) -> Vec<PersistOp> {
        let mut ops = vec![
            PersistOp::Status {
                status: state.status,
                incarnation: state.incarnation,
            },
            PersistOp::Promise(state.promised),
        ];
        ops.extend(
            state
                .peer_incarnations
                .iter()
                .map(|(&node, &incarnation)| PersistOp::PeerIncarnation { node, incarnation }),
        );
        if let Some(cp) = &state.checkpoint {
            ops.push(PersistOp::Checkpoint(cp.clone()));
        }
        ops.push(PersistOp::CommitPoint(state.commit_point));
        for (slot, e) in &state.log {
            ops.push(PersistOp::Accept {
                slot,
                ballot: e.ballot,
                value: e.value.clone(),
            });
            if e.chosen {
                ops.push(PersistOp::Learn {
                    slot,
                    value: e.value.clone(),
                });
            }
        }
        ops
    }

    struct Flawed(Flaw);

    impl StorageFactory for Flawed {
        type Storage = Broken;
        fn create(&mut self) -> Broken {
            Broken {
                flaw: self.0,
                ..Broken::default()
            }
        }
        fn reopen(&mut self, mut s: Broken) -> Broken {
            if self.0 == Flaw::ForgetsIncarnations {
                let mut state = s.inner.state().clone();
                state.peer_incarnations.clear();
                s.inner = MemStorage::new();
                s.inner.persist(&restore_ops(&state)).unwrap();
            }
            s
        }
    }

    #[test]
    fn the_rebuilding_wrapper_is_faithful() {
        StorageSuite::new(Flawed(Flaw::None)).run().unwrap();
    }

    #[test]
    fn each_flawed_storage_fails_the_suite() {
        for flaw in [
            Flaw::PromiseGoesBack,
            Flaw::AcceptOverChosen,
            Flaw::NoCompaction,
            Flaw::ForgetsIncarnations,
            Flaw::Truncates,
        ] {
            let verdict = StorageSuite::new(Flawed(flaw)).run();
            assert!(verdict.is_err(), "{flaw:?} passed the suite");
        }
    }
}
