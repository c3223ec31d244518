//! `Storage::persist_owned` hands a store the round's writes in a vector it may take
//! all, some or none of (the driver clears what is left): a store that moves out only
//! part of them and persists the rest by reference must end up holding exactly what a
//! store handed every write by reference holds.

use paxos_core::{
    Config, MemStorage, NodeId, PersistOp, Ready, Replica, Request, Response, RestoreError,
    StateMachine, Storage, StorageError,
};

/// Echoes its command: the reply's content is known in advance.
#[derive(Default)]
struct Echo(u64);

impl StateMachine for Echo {
    type Command = Vec<u8>;
    type Output = Vec<u8>;
    fn apply(&mut self, c: Vec<u8>) -> Vec<u8> {
        self.0 += 1;
        c
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> {
        self.0 = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        Ok(())
    }
}

/// A store that moves out only the first half of each round's writes (as the new
/// `persist_owned` contract allows) and persists the rest by reference: it ends with
/// exactly what a store handed every write by reference holds.
struct HalfTaker {
    inner: MemStorage,
    shadow: MemStorage,
}

impl Storage for HalfTaker {
    fn load(&mut self) -> Result<paxos_core::PersistentState, StorageError> {
        self.inner.load()
    }
    fn persist(&mut self, ops: &[PersistOp]) -> Result<(), StorageError> {
        self.shadow.persist(ops)?;
        self.inner.persist(ops)
    }
    fn persist_owned(&mut self, ops: &mut Vec<PersistOp>) -> Result<(), StorageError> {
        self.shadow.persist(ops)?;
        let half = ops.len() / 2;
        let mut first: Vec<PersistOp> = ops.drain(..half).collect();
        self.inner.persist_owned(&mut first)?;
        assert!(first.is_empty());
        self.inner.persist(ops)
    }
}

#[test]
fn a_store_taking_some_writes_loses_and_duplicates_none() {
    let ids: Vec<NodeId> = vec![1, 2, 3];
    let mut storage: Vec<HalfTaker> = ids
        .iter()
        .map(|_| HalfTaker {
            inner: MemStorage::new(),
            shadow: MemStorage::new(),
        })
        .collect();
    let mut replicas: Vec<Replica<Echo>> = ids
        .iter()
        .zip(&mut storage)
        .map(|(&id, st)| {
            let mut cfg = Config::new(id, ids.clone());
            cfg.max_requests_per_slot = 3;
            Replica::new(cfg, Echo::default(), st.load().unwrap()).unwrap()
        })
        .collect();
    let mut readies: Vec<Ready> = ids.iter().map(|_| Ready::default()).collect();
    let mut ok = 0;
    for round in 0..400u64 {
        for r in replicas.iter_mut() {
            r.tick();
            r.handle_request(Request::register(round));
        }
        let mut queue = Vec::new();
        for _ in 0..4 {
            for ((r, st), ready) in replicas.iter_mut().zip(&mut storage).zip(&mut readies) {
                let from = r.id();
                r.take_ready_into(ready);
                ready
                    .deliver_mut(
                        |ops| st.persist_owned(ops),
                        |to, m| queue.push((from, to, m)),
                        |rep| ok += matches!(rep.response, Response::Ok(_)) as u32,
                    )
                    .unwrap();
                assert!(ready.is_empty());
            }
            for (f, t, m) in std::mem::take(&mut queue) {
                replicas[(t - 1) as usize].handle_message(f, m);
            }
        }
    }
    assert!(ok > 100, "{ok} registrations answered");
    for st in &storage {
        let (a, b) = (st.inner.state(), st.shadow.state());
        assert_eq!(format!("{:?}", a.log), format!("{:?}", b.log));
        assert_eq!(a.commit_point, b.commit_point);
        assert_eq!(a.promised, b.promised);
        assert!(!a.log.is_empty());
    }
}
