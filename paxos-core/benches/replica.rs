//! The sans-IO core's throughput: five replicas in one thread, messages moved in
//! memory, no IO. Run with `cargo bench -p paxos-core --bench replica`.
//!
//! - `pipelined/N`: N requests submitted to the leader at once, then the cluster runs
//!   until all are executed everywhere (batched ACCEPTs, many slots in flight);
//! - `one_at_a_time`: one request per round trip, no batching.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::{Config, NodeId, PersistentState, Replica, Request, RestoreError, StateMachine};

/// A counter: the cheapest possible state machine, so the protocol's cost shows.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Command = u64;
    type Output = u64;
    fn apply(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(n);
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, b: &[u8]) -> Result<(), RestoreError> {
        let raw: [u8; 8] = b
            .try_into()
            .map_err(|_| RestoreError::new("want 8 bytes"))?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

struct Cluster {
    replicas: Vec<Replica<Counter>>,
    leader: usize,
    queue: Vec<(NodeId, NodeId, paxos_core::Message)>,
    next_seq: u64,
    payload: Bytes,
}

impl Cluster {
    fn new(n: u64) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let replicas = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, ids.clone());
                cfg.max_inflight = 1 << 16;
                cfg.max_batch = 4096;
                cfg.checkpoint_interval = 100_000;
                Replica::new(cfg, Counter::default(), PersistentState::default())
                    .expect("valid config")
            })
            .collect();
        let mut c = Cluster {
            replicas,
            leader: 0,
            queue: Vec::new(),
            next_seq: 1,
            payload: Bytes::from(postcard::to_allocvec(&1u64).expect("encodes")),
        };
        for _ in 0..200 {
            c.tick();
            if c.replicas.iter().any(|r| r.is_leader()) {
                break;
            }
        }
        c.leader = c
            .replicas
            .iter()
            .position(|r| r.is_leader())
            .expect("a leader");
        c.replicas[c.leader].handle_request(Request::register(1));
        c.settle();
        c
    }

    fn tick(&mut self) {
        for r in &mut self.replicas {
            r.tick();
        }
        self.settle();
    }

    /// Moves messages until the cluster is quiet; persisting is free here.
    fn settle(&mut self) -> usize {
        let mut replies = 0;
        loop {
            for r in &mut self.replicas {
                let from = r.id();
                let queue = &mut self.queue;
                r.take_ready()
                    .deliver(
                        |_| Ok::<(), std::convert::Infallible>(()),
                        |to, m| queue.push((from, to, m)),
                        |_| replies += 1,
                    )
                    .unwrap_or_else(|never| match never {});
            }
            if self.queue.is_empty() {
                return replies;
            }
            for (from, to, m) in self.queue.drain(..) {
                self.replicas[(to - 1) as usize].handle_message(from, m);
            }
        }
    }

    fn submit(&mut self, n: u64) -> usize {
        for _ in 0..n {
            let seq = self.next_seq;
            self.next_seq += 1;
            let request = Request {
                client: 1,
                seq,
                payload: self.payload.clone(),
            };
            self.replicas[self.leader].handle_request(request);
        }
        self.settle()
    }
}

fn pipelined(c: &mut Criterion) {
    let mut group = c.benchmark_group("pipelined");
    for batch in [64u64, 1024] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let mut cluster = Cluster::new(5);
            // One client session keeps one request in flight; many in flight need many
            // sessions, so register them once.
            for client in 2..=batch + 1 {
                cluster.replicas[cluster.leader].handle_request(Request::register(client));
            }
            cluster.settle();
            let mut seq = 0;
            b.iter(|| {
                seq += 1;
                for client in 2..=batch + 1 {
                    let request = Request {
                        client,
                        seq,
                        payload: cluster.payload.clone(),
                    };
                    cluster.replicas[cluster.leader].handle_request(request);
                }
                black_box(cluster.settle())
            });
        });
    }
    group.finish();
}

fn one_at_a_time(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_at_a_time");
    group.throughput(Throughput::Elements(1));
    group.bench_function("5 replicas", |b| {
        let mut cluster = Cluster::new(5);
        b.iter(|| black_box(cluster.submit(1)));
    });
    group.finish();
}

criterion_group!(benches, pipelined, one_at_a_time);
criterion_main!(benches);
