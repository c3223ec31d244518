//! Batches of requests in one slot (`Value::Batch`, `Config::max_requests_per_slot`),
//! driven by hand: what an acceptor holds above its commit point stays within a
//! message in bytes, not only in slots (with the broken variant `AcceptIgnoresBytes`
//! it does not); one client's requests in one batch; a request queued when a leader
//! transfer starts; batches within the byte budget. Written by an adversarial review
//! of batching.

use std::cell::Cell;

use bytes::Bytes;

use crate::mutation::Mutation;
use crate::scripted::{all, write, Deliver, Drop, Scripted as H};
use crate::{ClientId, Config, Message, NodeId, Request, Response, Value};

fn oks(h: &H, session: ClientId, seq: u64) -> usize {
    h.replies
        .iter()
        .filter(|(_, r)| {
            r.client == session && r.seq == seq && matches!(r.response, Response::Ok(_))
        })
        .count()
}

/// n1 leads `n` replicas; `clients` sessions registered through it.
fn cluster(n: u64, clients: u64, tweak: impl Fn(&mut Config)) -> (H, Vec<ClientId>) {
    let mut h = H::new(n, true, |c| {
        c.max_requests_per_slot = 64;
        tweak(c);
    });
    h.r(1).start_election_now();
    h.run(&all);
    assert!(h.r(1).is_leader());
    let mut sessions = Vec::new();
    for nonce in 1000..1000 + clients {
        h.register(1, nonce);
        h.run(&all);
        let session: ClientId = h
            .replies
            .iter()
            .find_map(|(_, r)| match &r.response {
                Response::Ok(b) if r.client == nonce && r.seq == 0 => postcard::from_bytes(b).ok(),
                _ => None,
            })
            .expect("registered");
        sessions.push(session);
    }
    (h, sessions)
}

/// The largest PROMISE (encoded, as a transport frames it) sent in this scenario:
/// three replicas, n1 leading with 64 busy sessions. n2 loses the first ACCEPT of one
/// round and n3 that of the next (a lossy network), so each has a gap one slot apart
/// and its commit point stays there while the leader commits on with the other; no
/// tick, so no fetch fills the gaps. Each follower keeps accepting up to its acceptance
/// window (`4 * max_inflight` slots above its commit point). Then n1 crashes and n2 and
/// n3 elect a leader among themselves while their FETCHes are lost: the PROMISE reports
/// every entry above the commit points (the part the config docs say is never cut).
fn largest_promise(per_slot: usize, mutation: Mutation) -> usize {
    let (mut h, sessions) = cluster(3, 64, |c| {
        c.max_message_bytes = 4096;
        c.max_inflight = 32;
        c.max_requests_per_slot = per_slot;
        c.mutation = mutation;
    });
    for round in 0..200u64 {
        for s in &sessions {
            h.r(1).handle_request(write(*s, round + 1));
        }
        let lose: Option<NodeId> = match round {
            0 => Some(2),
            1 => Some(3),
            _ => None,
        };
        let lost = Cell::new(false);
        h.run(&|_, to, m| {
            if matches!(m, Message::Accept { .. }) && Some(to) == lose && !lost.get() {
                lost.set(true);
                Drop
            } else {
                Deliver
            }
        });
    }
    h.crash(1);
    let largest = Cell::new(0usize);
    for _ in 0..2000 {
        h.tick(&[2, 3], 1, &|_, to, m| {
            if to == 1
                || matches!(
                    m,
                    Message::Fetch { .. }
                        | Message::FetchReply { .. }
                        | Message::SnapshotChunk { .. }
                        | Message::SnapshotRequest { .. }
                )
            {
                return Drop;
            }
            if matches!(m, Message::Promise { .. }) {
                let n = postcard::to_allocvec(m).map_or(0, |b| b.len());
                largest.set(largest.get().max(n));
            }
            Deliver
        });
        if largest.get() > 0 && (h.r(2).is_leader() || h.r(3).is_leader()) {
            break;
        }
    }
    largest.get()
}

/// Control: one request per slot. The PROMISE of the same scenario stays within the
/// frame `NodeServer` pairs with this `max_message_bytes` (it sets
/// `max_message_bytes = max_frame_size / 4`).
#[test]
fn an_unbatched_promise_fits_the_frame() {
    let promise = largest_promise(1, Mutation::None);
    eprintln!("largest PROMISE, one request per slot: {promise} bytes");
    assert!(promise > 0, "a PROMISE went out");
    assert!(promise <= 4 * 4096, "PROMISE of {promise} bytes");
}

/// The acceptance window bounds what an acceptor holds above its commit point in
/// slots (`ACCEPT_WINDOW_FACTOR * max_inflight`), and with batching each slot holds up
/// to `max_requests_per_slot` requests: without a bound in bytes too, the never-cut
/// part of a PROMISE (and of a RECOVER-GRANT) grew by that factor (here ~41 KB where
/// the frame is 16 KiB, one request per slot: 722 bytes). The TCP transport drops such
/// a frame, and every resend of the PREPARE gets the same PROMISE: no election that
/// needs this acceptor completes until its gap is fetched.
#[test]
fn a_batched_promise_fits_the_frame() {
    let promise = largest_promise(64, Mutation::None);
    eprintln!("largest PROMISE, 64 requests per slot: {promise} bytes");
    assert!(promise > 0, "a PROMISE went out");
    assert!(
        promise <= 4 * 4096,
        "PROMISE of {promise} bytes, frame {} bytes",
        4 * 4096
    );
}

#[test]
fn mutant_accepting_without_a_byte_window_outgrows_the_frame() {
    let promise = largest_promise(64, Mutation::AcceptIgnoresBytes);
    assert!(
        promise > 4 * 4096,
        "the broken variant's PROMISE fits ({promise} bytes): the test cannot catch it"
    );
}

/// one client's pipelined requests 1..=5 land in one batch; each
/// executes once, in order, with one reply each; retries then get the cached reply or
/// Stale, and the leader's bookkeeping (`proposed`, `awaiting`) is left empty.
#[test]
fn one_clients_requests_in_one_batch_execute_once_in_order() {
    let (mut h, sessions) = cluster(3, 1, |_| {});
    let s = sessions[0];
    for seq in 1..=5 {
        h.r(1).handle_request(write(s, seq));
    }
    // A duplicate of #3 in the same round, before anything was proposed.
    h.r(1).handle_request(write(s, 3));
    h.run(&all);
    let batches: Vec<Value> = h
        .executed_agree()
        .expect("one value per slot")
        .into_values()
        .filter(|v| matches!(v, Value::Batch(_)))
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].requests().len(), 5);
    for seq in 1..=5 {
        assert_eq!(oks(&h, s, seq), 1, "#{seq}");
    }
    assert_eq!(h.r(1).awaiting_replies(), 0);
    h.r(1).handle_request(write(s, 5));
    h.r(1).handle_request(write(s, 2));
    h.run(&all);
    assert_eq!(oks(&h, s, 5), 2);
    assert!(h
        .replies
        .iter()
        .any(|(_, r)| r.client == s && r.seq == 2 && r.response == Response::Stale));
    let r = h.r(2);
    assert_eq!(r.state_machine().applied.len(), 5);
}

/// a request queued (not yet proposed, batching on) when the leader
/// starts a transfer in the same round is answered (a redirect) once the target takes
/// over, and executes at most once after the client retries there.
#[test]
fn a_request_queued_at_a_transfer_is_answered() {
    let (mut h, sessions) = cluster(3, 1, |_| {});
    let s = sessions[0];
    h.r(1).handle_request(write(s, 1));
    h.r(1).transfer_leadership(2).expect("leader");
    h.run(&all);
    assert!(h.r(2).is_leader());
    assert_eq!(h.r(1).awaiting_replies(), 0);
    assert!(h
        .replies
        .iter()
        .any(|(n, r)| *n == 1 && r.client == s && r.seq == 1));
    h.r(2).handle_request(write(s, 1));
    h.run(&all);
    assert_eq!(oks(&h, s, 1), 1);
}

/// with a small byte budget, no batch exceeds `max_message_bytes` and
/// the leader's proposals in flight stay within it (one request alone aside).
#[test]
fn batches_respect_the_byte_budget() {
    let (mut h, sessions) = cluster(3, 40, |c| c.max_message_bytes = 1000);
    for s in &sessions {
        h.r(1).handle_request(Request {
            client: *s,
            seq: 1,
            payload: Bytes::from(postcard::to_allocvec(&(*s, 1u64)).unwrap()),
        });
    }
    let ready = h.r(1).take_ready();
    let mut proposed = 0;
    for op in &ready.persist {
        if let crate::PersistOp::Accept { value, .. } = op {
            assert!(value.size_hint() <= 1000, "{}", value.summary());
            proposed += value.size_hint();
        }
    }
    assert!(
        proposed > 0 && proposed <= 1000,
        "{proposed} bytes in flight"
    );
}

// ---------------------------------------------------------------------------------
// Review of the acceptor byte window (c15eb37): what a PROMISE reports above the
// sender's commit point is bounded per acceptor (2 x max_message_bytes below each
// accepted proposal), but a new leader adopts the *union* of a majority's windows
// (`become_leader` -> `accept_local`, no byte check), so its own log (and its PROMISE
// once deposed) holds about twice that, plus the chosen part of a PROMISE.

const MMB: usize = 4096;

fn fat(session: ClientId, seq: u64) -> Request {
    Request {
        client: session,
        seq,
        payload: Bytes::from(vec![7u8; 400]),
    }
}

fn is_catch_up(m: &Message) -> bool {
    matches!(
        m,
        Message::Fetch { .. }
            | Message::FetchReply { .. }
            | Message::SnapshotChunk { .. }
            | Message::SnapshotRequest { .. }
    )
}

/// n1 proposes `reqs` (one slot); its ACCEPT reaches only `to` (and no catch-up).
fn propose_to(h: &mut H, reqs: Vec<Request>, to: &'static [NodeId]) {
    for r in reqs {
        h.r(1).handle_request(r);
    }
    h.run(&|_, dest, m| {
        if (matches!(m, Message::Accept { .. }) && !to.contains(&dest)) || is_catch_up(m) {
            Drop
        } else {
            Deliver
        }
    });
}

fn held_above_commit(h: &mut H, id: NodeId) -> usize {
    let r = h.r(id);
    let c = r.commit_point();
    r.log(c..c + 64)
        .iter()
        .filter_map(|i| i.value.as_ref().map(|v| v.size_hint()))
        .sum()
}

/// Three replicas, n1 leading, 4 KiB messages (a 16 KiB frame, as `NodeServer` pairs
/// them). Lossy ACCEPTs, no retransmission yet, FETCHes lost:
/// - slot g-1 (a full batch) reaches n2 only: chosen, n2 commits it, n3 has a gap;
/// - slot g (one small request) reaches nobody: n1's commit point stays at g, so
///   nobody learns anything above;
/// - slots g+1, g+2 (full batches) reach n2 only, g+3, g+4 n3 only: each within its
///   own byte window (n2 holds 8064 bytes from g, n3 8064 from g-1), all chosen.
///
/// n1 crashes; n2 is elected with n3's PROMISE and adopts g..g+4 (4 x 4032 bytes of
/// batches) in its own log; it crashes before its NEW-VIEW leaves. n3 then runs: n2's
/// PROMISE carries the chosen slot g-1 plus everything above its commit point g.
#[test]
#[ignore = "known, open: a new leader adopts its promisers' logs without a byte check, so a deposed leader's PROMISE can exceed the frame (pages of PROMISE/RECOVER-GRANT/NEW-VIEW needed)"]
fn a_merged_leaders_promise_fits_the_frame() {
    let (mut h, sessions) = cluster(3, 9, |c| {
        c.max_message_bytes = MMB;
        c.max_inflight = 32;
    });
    let batch = |seq: u64| sessions.iter().map(|s| fat(*s, seq)).collect::<Vec<_>>();
    let g = h.r(1).commit_point() + 1;
    propose_to(&mut h, batch(1), &[2]); // g-1
    propose_to(&mut h, vec![write(sessions[0], 2)], &[]); // g
    propose_to(&mut h, batch(3), &[2]); // g+1
    propose_to(&mut h, batch(4), &[2]); // g+2
    propose_to(&mut h, batch(5), &[3]); // g+3
    propose_to(&mut h, batch(6), &[3]); // g+4
    assert_eq!(h.r(1).commit_point(), g);
    assert_eq!(h.r(2).commit_point(), g);
    assert_eq!(h.r(3).commit_point(), g - 1);
    let (n2, n3) = (held_above_commit(&mut h, 2), held_above_commit(&mut h, 3));
    eprintln!(
        "held above the commit point: n2 {n2}, n3 {n3} (window {})",
        2 * MMB
    );
    assert!(n2 <= 2 * MMB && n3 <= 2 * MMB);

    h.crash(1);
    for _ in 0..2000 {
        h.tick(&[2, 3], 1, &|from, to, m| {
            let n3_runs =
                from == 3 && matches!(m, Message::PreVote { .. } | Message::Prepare { .. });
            if to == 1 || is_catch_up(m) || n3_runs || matches!(m, Message::NewView { .. }) {
                Drop
            } else {
                Deliver
            }
        });
        if h.r(2).is_leader() {
            break;
        }
    }
    assert!(h.r(2).is_leader());
    let merged = held_above_commit(&mut h, 2);
    eprintln!("the new leader n2 holds {merged} bytes above its commit point");
    h.crash(2);
    h.restart(2);

    let largest = Cell::new(0usize);
    for _ in 0..2000 {
        h.tick(&[2, 3], 1, &|from, to, m| {
            let n2_runs =
                from == 2 && matches!(m, Message::PreVote { .. } | Message::Prepare { .. });
            if to == 1 || is_catch_up(m) || n2_runs {
                return Drop;
            }
            if matches!(m, Message::Promise { .. }) {
                let n = postcard::to_allocvec(m).map_or(0, |b| b.len());
                largest.set(largest.get().max(n));
            }
            Deliver
        });
        if largest.get() > 0 {
            break;
        }
    }
    let promise = largest.get();
    eprintln!("largest PROMISE: {promise} bytes, frame {}", 4 * MMB);
    assert!(promise > 0, "a PROMISE went out");
    assert!(
        promise <= 4 * MMB,
        "PROMISE of {promise} bytes, frame {}",
        4 * MMB
    );
}

/// A request larger than `max_message_bytes` (allowed: it goes alone in a slot)
/// proposed right behind a full batch: every follower still holds that batch (its
/// commit comes later), so `below + size > 2 x max_message_bytes` and all refuse it.
/// It is chosen only by the retransmission a timer later.
/// Fixed on both sides: the leader proposes a value that would take its in-flight
/// bytes over the budget only once the window drained (so its ACCEPT carries a commit
/// point past the batch), and acceptors learn an ACCEPT's commit point before its byte
/// window. Either broken variant shows the wait.
#[test]
fn a_large_request_behind_a_batch_is_accepted_at_once() {
    assert_eq!(large_request_behind_a_batch(Mutation::None), (1, 0));
    for broken in [
        Mutation::CommitPointLearnedLast,
        Mutation::LargeValueJoinsFullWindow,
    ] {
        let (at_once, ticks) = large_request_behind_a_batch(broken);
        assert_eq!(at_once, 0, "{broken:?}");
        assert!(ticks > 0, "{broken:?}");
    }
}

/// Replies to the large request at once, and ticks until it executed.
fn large_request_behind_a_batch(mutation: Mutation) -> (usize, usize) {
    let (mut h, sessions) = cluster(3, 10, |c| {
        c.mutation = mutation;
        c.max_message_bytes = MMB;
        c.max_inflight = 32;
    });
    for s in &sessions[..9] {
        h.r(1).handle_request(fat(*s, 1));
    }
    h.r(1).handle_request(Request {
        client: sessions[9],
        seq: 1,
        payload: Bytes::from(vec![1u8; 6000]),
    });
    h.run(&all);
    assert_eq!(oks(&h, sessions[0], 1), 1, "the batch");
    let at_once = oks(&h, sessions[9], 1);
    let mut ticks = 0;
    while oks(&h, sessions[9], 1) == 0 && ticks < 100 {
        h.tick(&[1, 2, 3], 1, &all);
        ticks += 1;
    }
    eprintln!("large request: {at_once} replies at once, executed after {ticks} ticks");
    (at_once, ticks)
}
