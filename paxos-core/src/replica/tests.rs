//! Tests of a replica driven by hand.

use std::collections::HashMap;

use super::*;
use crate::error::CheckpointError;
use crate::message::PromiseEntry;
use crate::sim::Recorder;
use crate::traits::{MemStorage, Storage};
use crate::types::Value;

/// A cluster of replicas wired by a perfect in-order network, driven by hand.
struct Harness {
    replicas: Vec<Replica<Recorder>>,
    /// The session the cluster assigned to each test client.
    sessions: HashMap<ClientId, ClientId>,
    storage: Vec<MemStorage>,
    replies: Vec<Reply>,
    snapshots: usize,
    /// A node whose messages, both ways, are dropped.
    isolated: Option<NodeId>,
    /// Offsets of snapshot pieces to lose, each once.
    lose_pieces: Vec<u64>,
    /// Every snapshot piece delivered: `(offset, length)`.
    pieces: Vec<(u64, usize)>,
    /// The offset of every snapshot request delivered.
    piece_requests: Vec<u64>,
}

impl Harness {
    fn new(n: u64, tweak: impl Fn(&mut Config)) -> Self {
        let ids: Vec<NodeId> = (1..=n).collect();
        let storage: Vec<MemStorage> = ids.iter().map(|_| MemStorage::new()).collect();
        let replicas = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id, ids.clone());
                tweak(&mut cfg);
                Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap()
            })
            .collect();
        Harness {
            replicas,
            sessions: HashMap::new(),
            storage,
            replies: Vec::new(),
            snapshots: 0,
            isolated: None,
            lose_pieces: Vec::new(),
            pieces: Vec::new(),
            piece_requests: Vec::new(),
        }
    }

    /// Delivers every output until the cluster is quiet; returns the replies.
    fn settle(&mut self) {
        loop {
            let mut msgs = Vec::new();
            for (i, r) in self.replicas.iter_mut().enumerate() {
                let ready = r.take_ready();
                self.storage[i].persist(&ready.persist).unwrap();
                self.replies.extend(ready.replies_now.iter().cloned());
                self.replies.extend(ready.replies.iter().cloned());
                let id = r.id();
                msgs.extend(
                    ready
                        .into_all_messages()
                        .into_iter()
                        .map(|(to, m)| (id, to, m)),
                );
            }
            if msgs.is_empty() {
                return;
            }
            for (from, to, m) in msgs {
                if self.isolated == Some(from) || self.isolated == Some(to) {
                    continue;
                }
                if matches!(m, Message::SnapshotChunk { offset: 0, .. }) {
                    self.snapshots += 1;
                }
                if let Message::SnapshotChunk { offset, data, .. } = &m {
                    if let Some(i) = self.lose_pieces.iter().position(|o| o == offset) {
                        self.lose_pieces.remove(i);
                        continue;
                    }
                    self.pieces.push((*offset, data.len()));
                }
                if let Message::SnapshotRequest { offset, .. } = &m {
                    self.piece_requests.push(*offset);
                }
                self.replicas[(to - 1) as usize].handle_message(from, m);
            }
        }
    }

    fn tick(&mut self, n: usize) {
        for _ in 0..n {
            for r in &mut self.replicas {
                r.tick();
            }
            self.settle();
        }
    }

    fn leader(&self) -> usize {
        self.replicas
            .iter()
            .position(|r| r.is_leader())
            .expect("a leader")
    }

    /// Request `seq` of test client `client` (0 registers it) at replica `at`.
    fn request(&mut self, at: usize, client: ClientId, seq: u64) {
        let request = if seq == 0 {
            Request::register(client)
        } else {
            Request {
                client: self.sessions.get(&client).copied().unwrap_or(client),
                seq,
                payload: postcard::to_allocvec(&(client, seq)).unwrap().into(),
            }
        };
        self.replicas[at].handle_request(request);
        self.settle();
        if seq == 0 {
            if let Some(Reply {
                response: Response::Ok(b),
                ..
            }) = self.replies.last()
            {
                let id = postcard::from_bytes(b).expect("a session id");
                self.sessions.insert(client, id);
            }
        }
    }

    fn last_reply(&self) -> &Response {
        &self.replies.last().expect("a reply").response
    }
}

#[test]
fn a_follower_redirects_and_the_leader_executes_once() {
    let mut h = Harness::new(3, |_| {});
    h.tick(60);
    let l = h.leader();
    let f = (l + 1) % 3;
    h.request(f, 7, 0);
    assert_eq!(
        *h.last_reply(),
        Response::Redirect {
            leader: Some(h.replicas[l].id())
        }
    );
    h.request(l, 7, 0);
    assert!(matches!(h.last_reply(), Response::Ok(_)), "registered");
    h.request(l, 7, 1);
    let first = h.last_reply().clone();
    assert!(matches!(first, Response::Ok(_)));
    h.request(l, 7, 1); // a retry: answered from the session table
    assert_eq!(*h.last_reply(), first);
    h.tick(5);
    for r in &h.replicas {
        assert_eq!(r.state_machine().applied, vec![(7, 1)], "node {}", r.id());
    }
}

#[test]
fn unregistered_and_evicted_sessions_expire() {
    let mut h = Harness::new(1, |c| c.max_sessions = 1);
    h.tick(60);
    h.request(0, 1, 1);
    assert_eq!(
        *h.last_reply(),
        Response::SessionExpired,
        "never registered"
    );
    h.request(0, 1, 0);
    h.request(0, 2, 0); // evicts client 1
    h.request(0, 1, 1);
    assert_eq!(*h.last_reply(), Response::SessionExpired, "evicted");
    assert!(h.replicas[0].state_machine().applied.is_empty());
}

#[test]
fn idle_sessions_expire_by_the_clock_entries_the_leader_proposes() {
    let mut h = Harness::new(3, |c| {
        c.session_ttl_ticks = 100;
        c.session_clock_ticks = 10;
        c.checkpoint_interval = 4;
    });
    h.tick(60);
    let l = h.leader();
    h.tick(30);
    assert_eq!(
        h.replicas[l].counters().clocks_proposed,
        1,
        "no clock entries while there is no session to expire, but the step that \
         opened the reign"
    );
    let opening = h.replicas[l].log(0..h.replicas[l].executed());
    assert!(
        opening.iter().any(|s| matches!(
            s.value,
            Some(Value::ClockStep {
                from: 0,
                time: 0,
                ..
            })
        )),
        "{opening:?}"
    );
    h.request(l, 1, 0);
    h.request(l, 2, 0);
    // Client 1 keeps using its session; client 2 stays idle.
    for seq in 1..=20 {
        h.tick(10);
        h.request(l, 1, seq);
        assert!(matches!(h.last_reply(), Response::Ok(_)), "#{seq}");
    }
    let leader = &h.replicas[l];
    assert!(leader.counters().clocks_proposed >= 18);
    assert!(leader.sessions().log_time() >= 180);
    assert_eq!(leader.sessions().len(), 1, "client 2's session expired");
    h.request(l, 2, 1);
    assert_eq!(*h.last_reply(), Response::SessionExpired);
    h.tick(5);
    for r in &h.replicas {
        assert!(
            !r.state_machine().applied.contains(&(2, 1)),
            "node {}",
            r.id()
        );
        assert_eq!(r.sessions(), h.replicas[l].sessions(), "node {}", r.id());
        assert_eq!(r.counters().sessions_expired, 1, "node {}", r.id());
    }
    // The clock entries are in the log, for inspection.
    let executed = h.replicas[l].executed();
    let clocks: Vec<String> = h.replicas[l]
        .log(executed.saturating_sub(6)..executed)
        .into_iter()
        .filter_map(|s| s.value.filter(|v| matches!(v, Value::ClockStep { .. })))
        .map(|v| v.summary())
        .collect();
    assert!(!clocks.is_empty());
    assert!(clocks[0].starts_with("clock t=") && clocks[0].ends_with("(expire idle > 110)"));
    // A replica restarted from its storage (a checkpoint, then the log after it) has
    // the same sessions at the same log time.
    let i = (l + 1) % 3;
    let cfg = h.replicas[i].config().clone();
    let restarted = Replica::new(cfg, Recorder::default(), h.storage[i].load().unwrap()).unwrap();
    assert!(restarted.checkpoint().is_some());
    assert_eq!(restarted.sessions(), h.replicas[i].sessions());
}

#[test]
fn with_expiry_off_no_clock_entry_is_proposed() {
    let mut h = Harness::new(1, |c| c.session_ttl_ticks = 0);
    h.tick(60);
    h.request(0, 1, 0);
    h.tick(5_000);
    h.request(0, 1, 1);
    assert!(matches!(h.last_reply(), Response::Ok(_)));
    let r = &h.replicas[0];
    assert_eq!(r.counters().clocks_proposed, 0);
    assert_eq!(r.sessions().log_time(), 0);
    assert_eq!(
        r.executed(),
        2,
        "a registration and a request, nothing else"
    );
}

#[test]
fn a_full_leader_answers_busy() {
    let mut h = Harness::new(3, |c| {
        c.max_pending = 2;
    });
    h.tick(60);
    let l = h.leader();
    // Cut the leader off so nothing commits, then overfill it.
    for c in 1..=3 {
        h.replicas[l].handle_request(Request::register(c));
    }
    let ready = h.replicas[l].take_ready();
    assert!(ready
        .replies_now
        .iter()
        .any(|r| r.client == 3 && r.response == Response::Busy));
}

#[test]
fn a_restarted_replica_recovers_its_promises_and_state() {
    let mut h = Harness::new(3, |c| c.checkpoint_interval = 4);
    h.tick(60);
    let l = h.leader();
    h.request(l, 9, 0);
    for seq in 1..=10 {
        h.request(l, 9, seq);
    }
    h.tick(5);
    let i = (l + 1) % 3;
    let before = (h.replicas[i].promised(), h.replicas[i].commit_point());
    let applied = h.replicas[i].state_machine().applied.clone();
    assert!(
        h.replicas[i].checkpoint().is_some(),
        "checkpoints were taken"
    );
    let cfg = h.replicas[i].config().clone();
    let restarted = Replica::new(cfg, Recorder::default(), h.storage[i].load().unwrap()).unwrap();
    assert_eq!((restarted.promised(), restarted.commit_point()), before);
    assert_eq!(restarted.state_machine().applied, applied);
    assert!(restarted.slot(0).status == SlotStatus::Compacted);
}

#[test]
fn a_damaged_checkpoint_is_refused() {
    let mut h = Harness::new(1, |c| c.checkpoint_interval = 2);
    h.tick(60);
    for seq in 0..=5 {
        h.request(0, 3, seq);
    }
    let mut state = h.storage[0].load().unwrap();
    let cp = state.checkpoint.as_mut().expect("a checkpoint");
    let mut data = cp.data.to_vec();
    data[0] ^= 1;
    cp.data = data.into();
    let cp_slot = cp.slot;
    let cfg = h.replicas[0].config().clone();
    let err = Replica::new(cfg, Recorder::default(), state).unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::Checkpoint(CheckpointError::Digest { slot }) if slot == cp_slot
        ),
        "{err}"
    );
    let source = std::error::Error::source(&err).expect("the cause is kept");
    assert!(source.is::<CheckpointError>(), "{source}");
}

#[test]
fn a_lagging_follower_catches_up_by_state_transfer() {
    let mut h = Harness::new(3, |c| c.checkpoint_interval = 3);
    h.tick(60);
    let l = h.leader();
    let lagging = (l + 1) % 3;
    let lag_id = h.replicas[lagging].id();
    // Replace the lagging follower with a fresh one that missed everything.
    h.request(l, 5, 0);
    for seq in 1..=20 {
        h.request(l, 5, seq);
    }
    let cfg = h.replicas[lagging].config().clone();
    h.storage[lagging] = MemStorage::new();
    h.replicas[lagging] =
        Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap();
    h.tick(30);
    let follower = &h.replicas[lagging];
    assert_eq!(follower.id(), lag_id);
    assert_eq!(follower.state_machine().applied.len(), 20, "caught up");
    assert!(h.snapshots > 0, "through a snapshot");
    assert_eq!(follower.slot(0).status, SlotStatus::Compacted);
}

#[test]
fn a_snapshot_larger_than_a_piece_arrives_in_pieces_and_resumes_after_a_loss() {
    let mut h = Harness::new(3, |c| {
        c.checkpoint_interval = 3;
        c.snapshot_chunk_bytes = 8;
    });
    h.tick(60);
    let l = h.leader();
    let lagging = (l + 1) % 3;
    h.request(l, 5, 0);
    for seq in 1..=20 {
        h.request(l, 5, seq);
    }
    let cfg = h.replicas[lagging].config().clone();
    h.storage[lagging] = MemStorage::new();
    h.replicas[lagging] =
        Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap();
    h.lose_pieces = vec![16];
    h.tick(60);
    assert!(h.lose_pieces.is_empty(), "the piece at 16 was lost once");
    let follower = &h.replicas[lagging];
    assert_eq!(follower.state_machine().applied.len(), 20, "caught up");
    assert!(h.pieces.len() > 3, "several pieces: {:?}", h.pieces);
    assert!(h.pieces.iter().all(|(_, len)| *len <= 8), "{:?}", h.pieces);
    // After the loss the transfer resumed at 16: asked again for it, never from 0.
    let again = h.piece_requests.iter().filter(|o| **o == 16).count();
    assert!(again >= 2, "asked for 16 again: {:?}", h.piece_requests);
    assert!(!h.piece_requests.contains(&0), "{:?}", h.piece_requests);
    assert_eq!(
        h.pieces.iter().filter(|(o, _)| *o == 0).count(),
        1,
        "one transfer, not restarted: {:?}",
        h.pieces
    );
}

#[test]
fn snapshot_pieces_outside_the_limits_are_refused() {
    let mut cfg = Config::new(1, vec![1, 2, 3]);
    cfg.max_snapshot_bytes = 64;
    let mut r = Replica::new(cfg, Recorder::default(), PersistentState::founding()).unwrap();
    r.handle_message(
        2,
        Message::Heartbeat {
            ballot: Ballot::new(1, 2),
            commit_point: 100,
        },
    );
    let _ = r.take_ready();
    let piece = |total_len: u64, offset: u64, len: usize| Message::SnapshotChunk {
        slot: 50,
        digest: 7,
        total_len,
        offset,
        data: bytes::Bytes::from(vec![0u8; len]),
    };
    let requests = |r: &mut Replica<Recorder>| -> Vec<u64> {
        r.take_ready()
            .into_all_messages()
            .into_iter()
            .filter_map(|(_, m)| match m {
                Message::SnapshotRequest { offset, .. } => Some(offset),
                _ => None,
            })
            .collect()
    };
    // Larger than max_snapshot_bytes: refused before anything is buffered.
    r.handle_message(2, piece(65, 0, 8));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    r.handle_message(2, piece(u64::MAX, 0, 8));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    // A piece that overruns the length it announces.
    r.handle_message(2, piece(16, 0, 20));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    r.handle_message(2, piece(16, u64::MAX, 1));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    // A piece in the middle of a transfer that never started.
    r.handle_message(2, piece(16, 8, 8));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    // A good first piece: the next one is asked for.
    r.handle_message(2, piece(16, 0, 8));
    assert_eq!(requests(&mut r), vec![8]);
    // Duplicates and pieces out of order are ignored.
    r.handle_message(2, piece(16, 0, 8));
    r.handle_message(2, piece(16, 4, 8));
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    // A piece of another checkpoint from another peer, not newer: ignored.
    r.handle_message(
        3,
        Message::SnapshotChunk {
            slot: 40,
            digest: 9,
            total_len: 16,
            offset: 0,
            data: bytes::Bytes::from(vec![0u8; 8]),
        },
    );
    assert_eq!(requests(&mut r), Vec::<u64>::new());
    // The last piece completes it; the digest (7) is wrong, so nothing installs.
    r.handle_message(2, piece(16, 8, 8));
    let _ = r.take_ready();
    assert_eq!(r.commit_point(), 0);
    assert_eq!(r.status().snapshots_installed, 0);
}

#[test]
fn a_promise_reaching_absurdly_far_cannot_size_the_new_view() {
    let cfg = Config::new(1, vec![1, 2, 3]);
    let mut r = Replica::new(cfg, Recorder::default(), PersistentState::founding()).unwrap();
    let mut asked = None;
    for _ in 0..100 {
        r.tick();
        asked = r
            .take_ready()
            .into_all_messages()
            .into_iter()
            .find_map(|(_, m)| match m {
                Message::PreVote { ballot } => Some(ballot),
                _ => None,
            });
        if asked.is_some() {
            break;
        }
    }
    let asked = asked.expect("a pre-vote after an election timeout");
    r.handle_message(2, Message::PreVoteGranted { ballot: asked });
    assert_eq!(r.role(), Role::Candidate);
    let ballot = r.promised();
    let far = PromiseEntry {
        slot: u64::MAX - 1,
        ballot: Ballot::new(1, 2),
        value: Value::Noop,
        chosen: false,
    };
    let near = PromiseEntry {
        slot: 2,
        ballot: Ballot::new(1, 2),
        value: Value::Noop,
        chosen: false,
    };
    let nonce = r
        .take_ready()
        .into_all_messages()
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Prepare { nonce, .. } => Some(nonce),
            _ => None,
        })
        .expect("a prepare");
    r.handle_message(
        2,
        Message::Promise {
            ballot,
            commit_point: 0,
            entries: vec![near, far],
            truncated: false,
            nonce,
            incarnation: 0,
            incarnations: Vec::new(),
            from_slot: 0,
        },
    );
    assert!(r.is_leader());
    let ready = r.take_ready();
    let new_view = ready.messages_now.iter().find_map(|(_, m)| match m {
        Message::NewView { entries, .. } => Some(entries.len()),
        _ => None,
    });
    assert_eq!(
        new_view,
        Some(3),
        "slots 0..3: two gap no-ops and the reported one"
    );
}

#[test]
fn an_isolated_follower_does_not_raise_its_ballot_or_depose_the_leader() {
    let mut h = Harness::new(3, |_| {});
    h.tick(60);
    let l = h.leader();
    let f = (l + 1) % 3;
    let ballot = h.replicas[l].promised();
    h.isolated = Some(h.replicas[f].id());
    h.tick(500); // many election timeouts
    assert_eq!(
        h.replicas[f].promised(),
        ballot,
        "pre-votes went unanswered"
    );
    h.isolated = None;
    h.tick(20);
    assert!(h.replicas[l].is_leader(), "the leader kept its place");
    assert_eq!(h.replicas[l].promised(), ballot);
    assert_eq!(h.replicas[f].leader(), Some(h.replicas[l].id()));
}

#[test]
fn outputs_say_what_they_wait_for() {
    // A single member: its own accept is what makes the slot chosen, so the reply waits
    // for the round's writes.
    let mut r = Replica::new(
        Config::new(1, vec![1]),
        Recorder::default(),
        PersistentState::default(),
    )
    .unwrap();
    for _ in 0..200 {
        r.tick();
        let _ = r.take_ready();
        if r.is_leader() {
            break;
        }
    }
    assert!(r.is_leader());
    r.handle_request(Request::register(7));
    let ready = r.take_ready();
    assert!(ready.replies_now.is_empty(), "{ready:?}");
    assert_eq!(ready.replies.len(), 1);

    // Three members: the leader's ACCEPTs leave at once, beside its own accept.
    let mut h = Harness::new(3, |_| {});
    h.tick(60);
    let l = h.leader();
    h.replicas[l].handle_request(Request::register(9));
    let ready = h.replicas[l].take_ready();
    assert!(ready.messages.is_empty(), "{ready:?}");
    let accepts: Vec<_> = ready
        .messages_now
        .iter()
        .filter(|(_, m)| matches!(m, Message::Accept { .. }))
        .cloned()
        .collect();
    assert_eq!(accepts.len(), 2);
    assert!(ready
        .persist
        .iter()
        .any(|op| matches!(op, PersistOp::Accept { .. })));
    // A follower's ACCEPTED vouches for its accept: it waits.
    let leader_id = h.replicas[l].id();
    let (to, accept) = accepts[0].clone();
    let f = h.replicas.iter().position(|r| r.id() == to).unwrap();
    h.replicas[f].handle_message(leader_id, accept);
    let ready = h.replicas[f].take_ready();
    assert!(ready
        .messages
        .iter()
        .any(|(_, m)| matches!(m, Message::Accepted { .. })));
    assert!(!ready
        .messages_now
        .iter()
        .any(|(_, m)| m.vouches_for_writes()));
    // The leader, told of the quorum, replies at once; the new commit point is all it
    // would write, so it writes nothing (no fsync between the commit and the next
    // request).
    let follower_id = h.replicas[f].id();
    for (to, m) in ready.into_all_messages() {
        if to == leader_id {
            h.replicas[l].handle_message(follower_id, m);
        }
    }
    let ready = h.replicas[l].take_ready();
    assert!(ready.persist.is_empty(), "{ready:?}");
    assert_eq!(ready.replies_now.len(), 1, "{ready:?}");
    assert!(ready.replies.is_empty());
    let committed = h.replicas[l].commit_point();
    assert!(committed > 0);
    // The next round that writes stores it first, ahead of its own writes.
    h.replicas[l].handle_request(Request::register(10));
    let ready = h.replicas[l].take_ready();
    assert!(
        matches!(ready.persist.first(), Some(PersistOp::CommitPoint(c)) if *c == committed),
        "{ready:?}"
    );
    assert!(ready
        .persist
        .iter()
        .any(|op| matches!(op, PersistOp::Accept { .. })));
}

#[test]
fn an_unwritten_commit_point_is_written_alone_after_a_tick() {
    let mut h = Harness::new(3, |_| {});
    h.tick(60);
    let l = h.leader();
    h.request(l, 1, 0);
    // `settle` stored everything the rounds wrote: the commit point that chose the
    // registration is not among it yet, on the leader or on a follower.
    let f = (l + 1) % 3;
    let stored = |h: &Harness, i: usize| h.storage[i].state().commit_point;
    let committed = h.replicas[l].commit_point();
    assert_eq!(h.replicas[f].commit_point(), committed);
    assert!(stored(&h, l) < committed && stored(&h, f) < committed);
    // One tick later (no request since), each writes it on its own.
    h.tick(1);
    assert_eq!(stored(&h, l), committed);
    assert_eq!(stored(&h, f), committed);
}

/// Batches of entries stay within `max_message_bytes`: the leader's ACCEPTs, a
/// FETCH-REPLY and a PROMISE's chosen entries (each at least one entry). With the
/// `BatchesIgnoreBytes` mutation, the same run sends batches over the budget.
fn largest_batch_bytes(mutation: crate::mutation::Mutation) -> usize {
    use bytes::Bytes;
    let budget = 3 * (1000 + crate::config::VALUE_OVERHEAD_BYTES);
    let mut h = Harness::new(3, |c| {
        c.max_message_bytes = budget;
        c.mutation = mutation;
    });
    h.tick(60);
    let l = h.leader();
    let session = {
        h.replicas[l].handle_request(Request::register(1));
        h.settle();
        let reply = h
            .replies
            .iter()
            .find(|r| r.client == 1)
            .expect("registered");
        match &reply.response {
            Response::Ok(b) => postcard::from_bytes::<u64>(b).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    // Ten requests of 1,000 bytes in one round: one flush.
    for seq in 1..=10 {
        h.replicas[l].handle_request(Request {
            client: session,
            seq,
            payload: Bytes::from(vec![0u8; 1000]),
        });
    }
    let size =
        |entries: &[(Slot, Value)]| entries.iter().map(|(_, v)| v.size_hint()).sum::<usize>();
    let mut largest = 0;
    let ready = h.replicas[l].take_ready();
    for (_, m) in ready.messages_now.iter() {
        if let Message::Accept { entries, .. } = m {
            largest = largest.max(size(entries));
        }
    }
    // A FETCH of everything, answered by the leader once it is all chosen.
    h.storage[l].persist(&ready.persist).unwrap();
    for (to, m) in ready.into_all_messages() {
        let i = h.replicas.iter().position(|r| r.id() == to).unwrap();
        let from = h.replicas[l].id();
        h.replicas[i].handle_message(from, m);
    }
    h.settle();
    let asker = h.replicas[(l + 1) % 3].id();
    h.replicas[l].handle_message(asker, Message::Fetch { from: 0, to: 100 });
    for (_, m) in h.replicas[l].take_ready().into_all_messages() {
        if let Message::FetchReply { entries, .. } = m {
            assert!(!entries.is_empty());
            largest = largest.max(size(&entries));
        }
    }
    largest
}

#[test]
fn batches_stay_within_max_message_bytes() {
    let budget = 3 * (1000 + crate::config::VALUE_OVERHEAD_BYTES);
    let correct = largest_batch_bytes(crate::mutation::Mutation::None);
    assert!(correct <= budget, "{correct} > {budget}");
    assert!(correct > 0);
    let broken = largest_batch_bytes(crate::mutation::Mutation::BatchesIgnoreBytes);
    assert!(
        broken > budget,
        "the broken variant stayed within the budget: {broken}"
    );
}

/// What a leader leaves uncommitted is bounded by `max_message_bytes` (its in-flight
/// table stops there), so the PROMISE a successor then gets, which reports those
/// entries whole (a candidate needs them all), fits the frame `NodeServer` implies
/// (`max_message_bytes` = frame / 4). Found by review: twenty 1,000-byte commands in
/// flight made an untruncated PROMISE of 20 KB against a "frame" of 12.5 KB, and with
/// the defaults (16 MiB frame, a window of 8,192) commands of ~2 KiB would wedge every
/// election. Returns the PROMISE's size on the wire.
fn promise_bytes_after_a_full_window(mutation: crate::mutation::Mutation) -> usize {
    use bytes::Bytes;
    let budget = 3 * (1000 + crate::config::VALUE_OVERHEAD_BYTES);
    let mut h = Harness::new(3, |c| {
        c.max_message_bytes = budget;
        c.max_inflight = 64;
        c.mutation = mutation;
    });
    h.tick(60);
    let l = h.leader();
    h.replicas[l].handle_request(Request::register(1));
    h.settle();
    let session = match &h.replies.iter().find(|r| r.client == 1).unwrap().response {
        Response::Ok(b) => postcard::from_bytes::<u64>(b).unwrap(),
        other => panic!("{other:?}"),
    };
    for seq in 1..=20 {
        h.replicas[l].handle_request(Request {
            client: session,
            seq,
            payload: Bytes::from(vec![0u8; 1000]),
        });
    }
    // Every ACCEPT reaches follower f; its ACCEPTEDs are lost (the leader then
    // crashes), so nothing new is committed anywhere.
    let f = (l + 1) % 3;
    let fid = h.replicas[f].id();
    let lid = h.replicas[l].id();
    let ready = h.replicas[l].take_ready();
    h.storage[l].persist(&ready.persist).unwrap();
    for (to, m) in ready.into_all_messages() {
        if to == fid && matches!(m, Message::Accept { .. }) {
            h.replicas[f].handle_message(lid, m);
        }
    }
    let _ = h.replicas[f].take_ready();
    // The third replica stands for election.
    let c = (l + 2) % 3;
    let cid = h.replicas[c].id();
    let ballot = Ballot {
        round: h.replicas[f].promised().round + 10,
        node: cid,
    };
    let from_slot = h.replicas[c].commit_point();
    h.replicas[f].handle_message(
        cid,
        Message::Prepare {
            ballot,
            from_slot,
            nonce: 7,
            handover: true,
        },
    );
    let promise = h.replicas[f]
        .take_ready()
        .into_all_messages()
        .into_iter()
        .find(|(_, m)| matches!(m, Message::Promise { .. }))
        .expect("a promise")
        .1;
    let Message::Promise { truncated, .. } = &promise else {
        unreachable!()
    };
    assert!(!truncated);
    postcard::to_allocvec(&promise).unwrap().len()
}

#[test]
fn what_a_leader_leaves_uncommitted_fits_a_promise() {
    let frame = 4 * 3 * (1000 + crate::config::VALUE_OVERHEAD_BYTES);
    let correct = promise_bytes_after_a_full_window(crate::mutation::Mutation::None);
    assert!(
        correct <= frame,
        "PROMISE of {correct} bytes, frame {frame}"
    );
    let broken = promise_bytes_after_a_full_window(crate::mutation::Mutation::BatchesIgnoreBytes);
    assert!(
        broken > frame,
        "the broken variant's PROMISE fits: {broken}"
    );
}

/// The sessions a follower keeps after executing `values` from slot 0 (a registration
/// first: session 0), under `mutation`.
fn sessions_after(values: &[Value], mutation: crate::mutation::Mutation) -> crate::Sessions {
    let mut cfg = Config::new(1, vec![1, 2, 3]);
    cfg.mutation = mutation;
    let mut r = Replica::new(cfg, Recorder::default(), PersistentState::default()).unwrap();
    for (slot, value) in values.iter().enumerate() {
        r.learn(slot as Slot, value.clone());
    }
    r.advance_commit();
    assert_eq!(r.executed(), values.len() as Slot);
    r.sessions().clone()
}

#[test]
fn a_clock_step_counts_only_where_it_chains_onto_the_log() {
    use crate::mutation::Mutation;
    let (old, new) = (Ballot::new(1, 1), Ballot::new(2, 2));
    let step = |ballot, from, time| Value::ClockStep {
        ballot,
        from,
        time,
        idle_limit: 50,
    };
    let use_session = Value::Request(Request {
        client: 0,
        seq: 1,
        payload: bytes::Bytes::from(postcard::to_allocvec(&1u64).unwrap()),
    });
    let log = vec![
        Value::Request(Request::register(7)),
        step(old, 0, 10),
        // A new leader opens its reign where the log time stands, then a request.
        step(new, 10, 10),
        use_session.clone(), // session 0 last active at log time 10
        // The deposed leader's steps, re-proposed behind it: one that starts where
        // the log time is (its chain went 0 -> 10 -> 100 -> ...) and one that does
        // not. Neither counts.
        step(old, 10, 100),
        step(old, 100, 200),
        // The new leader's chain goes on: 20 - 10 is within the limit.
        step(new, 10, 20),
    ];
    let kept = sessions_after(&log, Mutation::None);
    assert_eq!(kept.log_time(), 20);
    assert_eq!(kept.clock_ballot(), new);
    assert_eq!(kept.get(0).map(|s| s.last_active), Some(10));
    // Further along the chain the session does go, once idle past the limit.
    let mut longer = log.clone();
    longer.push(step(new, 20, 61));
    assert!(sessions_after(&longer, Mutation::None).get(0).is_none());
    // The broken variant counts the deposed leader's steps: session 0 is dropped
    // 0 ticks after its use.
    let broken = sessions_after(&log, Mutation::ClockStepsUnchained);
    assert!(broken.get(0).is_none());
    // A checkpoint keeps the ballot whose steps count: restored, the same steps
    // are refused.
    let data = super::executor::encode_snapshot(bytes::Bytes::new(), &kept).unwrap();
    let (_, restored) = super::executor::decode_snapshot(&data).unwrap();
    assert_eq!(restored, kept);
    assert!(!restored.step_counts(old, 20));
    assert!(restored.step_counts(new, 20));
    // Clock entries written before steps existed still execute as they did.
    let legacy = vec![
        Value::Request(Request::register(7)),
        Value::Clock {
            time: 10,
            idle_limit: 50,
        },
        use_session,
        Value::Clock {
            time: 61,
            idle_limit: 50,
        },
    ];
    assert!(sessions_after(&legacy, Mutation::None).get(0).is_none());
}

/// A promiser's pages (see `on_promise`) only move up: a reply to "the page from slot
/// 11" that would ask next for a slot at or below 11 is not taken, and entries below
/// 11 in a page are dropped (a correct promiser never sends either; a broken one must
/// not make the candidate ask for the same pages for ever).
#[test]
fn a_page_that_does_not_move_up_is_not_taken() {
    let cfg = Config::new(1, vec![1, 2, 3]);
    let mut r = Replica::new(cfg, Recorder::default(), PersistentState::founding()).unwrap();
    r.start_election_now();
    let (ballot, nonce) = r
        .take_ready()
        .into_all_messages()
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Prepare { ballot, nonce, .. } => Some((ballot, nonce)),
            _ => None,
        })
        .expect("a prepare");
    let entry = |slot| PromiseEntry {
        slot,
        ballot: Ballot::new(1, 2),
        value: Value::Noop,
        chosen: false,
    };
    let promise = |from_slot, entries: Vec<PromiseEntry>, truncated| Message::Promise {
        ballot,
        commit_point: 0,
        entries,
        truncated,
        nonce,
        incarnation: 0,
        incarnations: Vec::new(),
        from_slot,
    };
    let asked = |r: &mut Replica<Recorder>| -> Vec<u64> {
        r.take_ready()
            .into_all_messages()
            .into_iter()
            .filter_map(|(to, m)| match m {
                Message::Prepare { from_slot, .. } if to == 2 => Some(from_slot),
                _ => None,
            })
            .collect()
    };
    // A first page, cut above the promiser's commit point: the candidate asks for the
    // next from slot 11.
    r.handle_message(2, promise(0, vec![entry(5), entry(10)], true));
    assert_eq!(asked(&mut r), vec![11]);
    // An answer for 11 cut at an entry below it: not a page (the next would start at
    // 4, back down), and not the last page either.
    r.handle_message(2, promise(11, vec![entry(3)], true));
    assert_eq!(asked(&mut r), Vec::<u64>::new());
    assert_eq!(
        r.role(),
        Role::Candidate,
        "a stale reply completed the promise"
    );
    // The real page completes it.
    r.handle_message(2, promise(11, vec![entry(12)], false));
    assert!(r.is_leader());
    let new_view: Vec<u64> = r
        .take_ready()
        .into_all_messages()
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::NewView { entries, .. } => Some(entries.iter().map(|(s, _)| *s).collect()),
            _ => None,
        })
        .expect("a new view");
    assert!(new_view.contains(&5) && new_view.contains(&10) && new_view.contains(&12));
}

#[test]
fn a_reused_ready_sends_nothing_that_waited_for_a_failed_write_and_loses_nothing() {
    let mut h = Harness::new(3, |_| {});
    h.tick(100);
    let leader = h.leader();
    let follower = (leader + 1) % 3;
    h.replicas[leader].handle_request(Request::register(9));
    let mut ready = Ready::default();
    h.replicas[leader].take_ready_into(&mut ready);
    let accepts: Vec<(NodeId, Message)> = ready.messages_now.drain(..).collect();
    assert!(!accepts.is_empty() && !ready.persist.is_empty());
    // Not delivered: handed back, and kept ahead of the next outputs.
    let persist_before = ready.persist.len();
    h.replicas[leader].take_ready_into(&mut ready);
    assert_eq!(ready.persist.len(), persist_before);

    // A follower's ACCEPTED waits for its write; the write fails.
    let from = h.replicas[leader].id();
    let to = h.replicas[follower].id();
    let accept = accepts.into_iter().find(|(t, _)| *t == to).unwrap().1;
    h.replicas[follower].handle_message(from, accept);
    let mut theirs = Ready::default();
    h.replicas[follower].take_ready_into(&mut theirs);
    assert!(!theirs.persist.is_empty() && !theirs.messages.is_empty());
    let mut sent = Vec::new();
    let failed = theirs.deliver_mut(
        |_| Err("disk gone"),
        |to, m| sent.push((to, m)),
        |_| panic!("no reply"),
    );
    assert_eq!(failed, Err("disk gone"));
    assert!(
        sent.iter().all(|(_, m)| !m.vouches_for_writes()),
        "sent before its write was durable: {sent:?}"
    );
    assert!(
        theirs.is_empty(),
        "what waited for the failed write is dropped"
    );

    // Delivered for good, the vectors stay with the replica for the next round, the
    // writes' one included: the store moved the writes out, not the vector.
    let mut storage = MemStorage::new();
    ready
        .deliver_mut(|ops| storage.persist_owned(ops), |_, _| {}, |_| {})
        .unwrap();
    assert!(ready.is_empty());
    assert!(ready.persist.capacity() >= persist_before);
    assert!(
        !storage.state().log.is_empty(),
        "the accepted registration was stored"
    );
}
