//! Batches of requests in one slot (`Value::Batch`, `Config::max_requests_per_slot`),
//! driven by hand: what an acceptor holds above its commit point stays within a
//! message in bytes, not only in slots (with the broken variant `AcceptIgnoresBytes`
//! it does not); one client's requests in one batch; a request queued when a leader
//! transfer starts; batches within the byte budget. Written by an adversarial review
//! of batching.

use std::cell::Cell;

use bytes::Bytes;

use crate::mutation::Mutation;
use crate::scripted::{all, write, Deliver, Drop, Hold, Scripted as H};
use crate::{ClientId, Config, Message, NodeId, Request, Response, Value};

/// How many Ok replies request `seq` of `session` got.
pub(crate) fn oks(h: &H, session: ClientId, seq: u64) -> usize {
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
    largest_promise_and_held(per_slot, mutation).0
}

/// [`largest_promise`], and the most bytes of values n2 or n3 held above its commit
/// point when n1 crashed.
fn largest_promise_and_held(per_slot: usize, mutation: Mutation) -> (usize, usize) {
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
    let held = held_above_commit(&mut h, 2).max(held_above_commit(&mut h, 3));
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
    (largest.get(), held)
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

/// What the byte window bounds: the bytes an acceptor holds above its commit point
/// (its memory, and the never-cut part of a RECOVER-GRANT). A PROMISE now comes in
/// pages whatever it holds, so the broken variant is seen in what it holds.
#[test]
fn mutant_accepting_without_a_byte_window_outgrows_the_frame() {
    let (_, held) = largest_promise_and_held(64, Mutation::None);
    assert!(
        held <= 2 * 4096 + 4096,
        "held {held} bytes above the commit point"
    );
    let (_, held) = largest_promise_and_held(64, Mutation::AcceptIgnoresBytes);
    assert!(
        held > 4 * 4096,
        "the broken variant holds {held} bytes: the test cannot catch it"
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
    r.log(c..c + 1024)
        .iter()
        .filter_map(|i| i.value.as_ref().map(|v| v.size_hint()))
        .sum()
}

/// The scenario of [`merged_leader`] up to n1's crash: returns the sessions and g.
fn three_minorities(mutation: Mutation) -> (H, Vec<ClientId>, u64) {
    let (mut h, sessions) = cluster(3, 9, |c| {
        c.max_message_bytes = MMB;
        c.max_inflight = 32;
        c.mutation = mutation;
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

    (h, sessions, g)
}

/// Three replicas, n1 leading, 4 KiB messages (a 16 KiB frame, as `NodeServer` pairs
/// them). Lossy ACCEPTs, no retransmission yet, FETCHes lost:
/// - slot g-1 (a full batch) reaches n2 only: chosen, n2 commits it, n3 has a gap;
/// - slot g (one small request) reaches nobody: n1's commit point stays at g, so
///   nobody learns anything above;
/// - slots g+1, g+2 (full batches) reach n2 only, g+3, g+4 n3 only: each within its
///   own byte window (n2 holds 8064 bytes from g, n3 8064 from g-1), all chosen.
///
/// n1 crashes; n2 is elected with n3's PROMISE and merges g..g+4 (4 x 4032 bytes of
/// batches); it crashes before its NEW-VIEW leaves. n3 then runs: n2's PROMISE carries
/// the chosen slot g-1 plus what n2 holds above its commit point g.
///
/// Before pages, n2 adopted the whole merge in its own log and its PROMISE (18 KB)
/// outgrew the frame: no election needing n2 could complete. Now its NEW-VIEW carries
/// a message's worth and the rest is re-proposed as its window drains, and PROMISEs
/// come in pages. Returns the largest NEW-VIEW of n2, the largest PROMISE of n2, and
/// the bytes n2 held above its commit point as leader.
fn merged_leader(mutation: Mutation) -> (usize, usize, usize) {
    let (mut h, sessions, g) = three_minorities(mutation);
    h.crash(1);
    let new_view = Cell::new(0usize);
    for _ in 0..2000 {
        h.tick(&[2, 3], 1, &|from, to, m| {
            if matches!(m, Message::NewView { .. }) {
                let n = postcard::to_allocvec(m).map_or(0, |b| b.len());
                new_view.set(new_view.get().max(n));
                return Drop;
            }
            let n3_runs =
                from == 3 && matches!(m, Message::PreVote { .. } | Message::Prepare { .. });
            if to == 1 || is_catch_up(m) || n3_runs {
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
        if h.r(3).is_leader() {
            break;
        }
    }
    assert!(h.r(3).is_leader(), "n3 won with n2's PROMISE");
    h.run(&|_, to, m| {
        if to == 1 || is_catch_up(m) {
            Drop
        } else {
            Deliver
        }
    });
    for seq in [1, 3, 4, 5, 6] {
        assert!(oks(&h, sessions[8], seq) <= 1);
    }
    let n3 = h.r(3);
    let log = n3.log(g - 1..g + 5);
    for (i, seq) in [(0usize, 1u64), (2, 3), (3, 4), (4, 5), (5, 6)] {
        let v = log[i].value.as_ref().expect("held");
        assert_eq!(v.requests().len(), 9, "slot g{:+}: {v:?}", i as i64 - 1);
        assert!(
            v.requests().iter().all(|r| r.seq == seq),
            "slot g{:+}",
            i as i64 - 1
        );
    }
    let promise = largest.get();
    eprintln!(
        "largest NEW-VIEW {} bytes, largest PROMISE {promise} bytes, frame {}",
        new_view.get(),
        4 * MMB
    );
    (new_view.get(), promise, merged)
}

#[test]
fn a_merged_leader_sends_and_promises_within_the_frame() {
    let (new_view, promise, merged) = merged_leader(Mutation::None);
    assert!(promise > 0, "a PROMISE went out");
    assert!(new_view <= MMB + 1024, "NEW-VIEW of {new_view} bytes");
    assert!(promise <= MMB + 1024, "PROMISE of {promise} bytes");
    assert!(merged <= 3 * MMB, "the new leader holds {merged} bytes");
}

/// Without either half of the fix, that message grows past a message's worth (here
/// still within the frame; a fifth promiser's window would take it past).
#[test]
fn mutants_unpaged_views_and_promises_break_the_bound() {
    let (new_view, _, merged) = merged_leader(Mutation::NewViewUnpaged);
    assert!(new_view > MMB + 1024, "NEW-VIEW of {new_view} bytes");
    assert!(merged > 3 * MMB, "the new leader holds {merged} bytes");
    let (_, promise, _) = merged_leader(Mutation::PromisesUnpaged);
    assert!(promise > MMB + 1024, "PROMISE of {promise} bytes");
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

/// Pages of a PROMISE are all merged. n1 leads three replicas; full batches reach n2
/// only (the first one n3 only), so those its byte window takes are chosen while n2's
/// commit point stays below them (a gap it cannot fetch) and n3 holds none of them. n1
/// crashes; n3 runs, and n2's PROMISE of 8 KB or more above its commit point comes in pages of
/// 4 KiB.
/// n3 must re-propose every chosen batch: the broken variant that takes the first
/// page as the whole PROMISE fills the later slots with no-ops.
#[test]
fn every_page_of_a_promise_counts_in_the_merge() {
    fn run(mutation: Mutation) -> (Vec<Option<Value>>, Vec<Value>, usize) {
        let (mut h, sessions) = cluster(3, 9, |c| {
            c.max_message_bytes = MMB;
            c.max_inflight = 32;
            c.mutation = mutation;
        });
        let batch = |seq: u64| sessions.iter().map(|s| fat(*s, seq)).collect::<Vec<_>>();
        let g = h.r(1).commit_point();
        let mut chosen = Vec::new();
        for seq in 1..=5 {
            for r in batch(seq) {
                h.r(1).handle_request(r);
            }
            // The first batch reaches n3 only, the others n2 only: n2 has a gap
            // (its FETCHes are lost), so its commit point stays below them.
            let to = if seq == 1 { 3 } else { 2 };
            h.run(&|from, dest, m| match m {
                Message::Accept { .. } if dest == to => Deliver,
                Message::Accepted { .. } if from == to => Deliver,
                _ => Drop,
            });
        }
        // At least two of the batches n2 accepted are chosen: its PROMISE needs pages.
        let c = h.r(1).commit_point();
        assert!(c >= g + 3, "{c}");
        assert_eq!(h.r(2).commit_point(), g);
        assert_eq!(h.r(3).commit_point(), g);
        for i in h.r(1).log(g..c) {
            chosen.push(i.value.clone().expect("n1 holds it"));
        }
        h.crash(1);
        let promises = Cell::new(0usize);
        h.r(3).start_election_now();
        for _ in 0..200 {
            h.tick(&[2, 3], 1, &|_, to, m| {
                if matches!(m, Message::Promise { .. }) {
                    let n = postcard::to_allocvec(m).map_or(0, |b| b.len());
                    promises.set(promises.get().max(n));
                }
                if to == 1 || is_catch_up(m) {
                    Drop
                } else {
                    Deliver
                }
            });
            if h.r(3).is_leader() {
                break;
            }
        }
        assert!(h.r(3).is_leader());
        let held = h.r(3).log(g..c);
        let n3: Vec<Option<Value>> = (g..c)
            .map(|s| {
                held.iter()
                    .find(|i| i.slot == s)
                    .and_then(|i| i.value.clone())
            })
            .collect();
        (n3, chosen, promises.get())
    }
    let (n3, chosen, largest) = run(Mutation::None);
    eprintln!("largest PROMISE page {largest} bytes");
    assert!(largest <= MMB + 1024, "PROMISE of {largest} bytes");
    assert_eq!(n3.len(), chosen.len());
    for (i, v) in chosen.iter().enumerate() {
        assert_eq!(n3[i].as_ref(), Some(v), "slot g+{i}");
    }
    let (n3, chosen, _) = run(Mutation::PromisePageTakenWhole);
    assert!(
        n3.iter().zip(&chosen).any(|(a, b)| a.as_ref() != Some(b)),
        "the broken variant kept every chosen batch: the test cannot catch it"
    );
}

/// The merged log a new leader leaves out of its NEW-VIEW is proposed all the same:
/// n2, elected with n3's PROMISE over the batches of [`merged_leader`], keeps leading,
/// and every batch is chosen and executed, each once, at n2 and n3. With the rest of
/// the merge dropped instead, the log stops at the first slot left out.
#[test]
fn a_new_leader_proposes_the_merge_beyond_its_new_view() {
    let (mut h, sessions, g) = merge_beyond_new_view(Mutation::None);
    for id in [2, 3] {
        assert!(h.r(id).executed() > g + 4, "n{id}");
    }
    let executed = h.executed_agree().expect("one value per slot");
    for seq in [1, 3, 4, 5, 6] {
        for s in &sessions {
            let n = executed
                .values()
                .flat_map(|v| v.requests())
                .filter(|r| r.client == *s && r.seq == seq)
                .count();
            assert_eq!(n, 1, "session {s} #{seq}");
        }
    }
    let (mut h, _, g) = merge_beyond_new_view(Mutation::MergeBeyondViewDropped);
    assert!(
        h.r(3).executed() <= g + 4,
        "the broken variant executed it all"
    );
}

fn merge_beyond_new_view(mutation: Mutation) -> (H, Vec<ClientId>, u64) {
    let (mut h, sessions, g) = three_minorities(mutation);
    h.crash(1);
    let new_views = Cell::new(0usize);
    for _ in 0..2000 {
        h.tick(&[2, 3], 1, &|from, to, m| {
            if to == 3 && matches!(m, Message::NewView { .. }) {
                new_views.set(new_views.get() + 1);
            }
            let n3_runs =
                from == 3 && matches!(m, Message::PreVote { .. } | Message::Prepare { .. });
            if to == 1 || n3_runs {
                Drop
            } else {
                Deliver
            }
        });
        if h.r(2).is_leader() && h.r(3).executed() > g + 4 {
            break;
        }
    }
    assert!(h.r(2).is_leader());
    assert_eq!(new_views.get(), 1);
    (h, sessions, g)
}

/// The sender and slots of each PROMISE, and each PREPARE's `from_slot`, as they pass
/// (`--nocapture` shows the exchange when a page test fails).
fn show(from: NodeId, to: NodeId, m: &Message) {
    if let Message::Promise {
        commit_point,
        entries,
        truncated,
        ..
    } = m
    {
        eprintln!(
            "PROMISE n{from}->n{to} cp {commit_point} slots {:?} truncated {truncated}",
            entries.iter().map(|e| e.slot).collect::<Vec<_>>()
        );
    }
    if let Message::Prepare { from_slot, .. } = m {
        eprintln!("PREPARE n{from}->n{to} from {from_slot}");
    }
}

/// n1 leads `n` replicas, 14 sessions, two requests per slot and two slots per ACCEPT;
/// one round of 14 fat requests (slots g..g+7): the ACCEPT of g, g+1 reaches
/// `first_to` only, the others `rest_to` only, all chosen; no commit point reaches
/// anyone. Returns g and n1's commit point.
fn lopsided_round(
    n: u64,
    mutation: Mutation,
    first_to: &'static [NodeId],
    rest_to: &'static [NodeId],
) -> (H, u64) {
    let (mut h, sessions) = cluster(n, 14, |c| {
        c.max_message_bytes = MMB;
        c.max_inflight = 32;
        c.max_batch = 2;
        c.max_requests_per_slot = 2;
        c.mutation = mutation;
    });
    let g = h.r(1).commit_point();
    for s in &sessions {
        h.r(1).handle_request(fat(*s, 1));
    }
    h.run(&|from, dest, m| match m {
        Message::Accept { entries, .. } => {
            let first = entries.iter().any(|(s, _)| *s == g);
            if (first && first_to.contains(&dest)) || (!first && rest_to.contains(&dest)) {
                Deliver
            } else {
                Drop
            }
        }
        Message::Accepted { .. } if from != 1 => Deliver,
        _ => Drop,
    });
    assert!(h.r(1).commit_point() >= g + 7);
    (h, g)
}

/// From an adversarial review of pages. n3 runs with n2 (a gap at g, so its commit
/// point stays there) and n1 (restarted, commit point past all). n2's first page
/// arrives and n3 asks for the next; n2's answer is held. n1's PROMISE, cut below its
/// commit point, sends n3 back to learn and re-prepare from a higher slot (same ballot,
/// same nonce). Then n2's held answer arrives: taken as n2's whole PROMISE, it hid n2's
/// chosen values between, and n3 filled them with no-ops. Every reply now names the
/// slot it reports from, and only the one asked for counts.
fn page_after_a_re_prepare(mutation: Mutation) -> Result<(), String> {
    let (mut h, g) = lopsided_round(3, mutation, &[3], &[2]);
    // A tick writes the commit point n1's last round left unwritten (nothing else
    // wrote since), so that it restarts with it.
    h.tick(&[1], 1, &crate::scripted::none);
    h.crash(1);
    h.restart(1);
    h.tick(&[2, 3], 60, &crate::scripted::none);
    h.r(3).start_election_now();
    let hold_promises = |from: NodeId, to: NodeId, m: &Message| {
        show(from, to, m);
        if is_catch_up(m) {
            Drop
        } else if matches!(m, Message::Promise { .. }) {
            Hold
        } else {
            Deliver
        }
    };
    h.run(&hold_promises);
    // n2's first page: n3 asks for the next, whose answer is held.
    h.release(
        &|from, _, _| if from == 2 { Deliver } else { Hold },
        &hold_promises,
    );
    // n1's PROMISE: n3 learns and re-prepares; the PREPAREs wait behind n2's answer.
    h.release(
        &|from, _, _| if from == 1 { Deliver } else { Hold },
        &|from, to, m| {
            show(from, to, m);
            if is_catch_up(m) {
                Drop
            } else if matches!(m, Message::Promise { .. } | Message::Prepare { .. }) {
                Hold
            } else {
                Deliver
            }
        },
    );
    h.release(&|_, _, _| Deliver, &|from, to, m| {
        show(from, to, m);
        if is_catch_up(m) || to == 1 {
            Drop
        } else {
            Deliver
        }
    });
    for _ in 0..50 {
        h.tick(&[1, 2, 3], 1, &|_, _, m| {
            if is_catch_up(m) {
                Drop
            } else {
                Deliver
            }
        });
    }
    h.tick(&[1, 2, 3], 20, &all);
    assert!(h.r(1).executed() >= g + 7 || h.r(3).executed() >= g + 7);
    h.executed_agree().map(|_| ())
}

#[test]
fn a_page_asked_for_before_a_re_prepare_is_not_taken_for_the_promise() {
    page_after_a_re_prepare(Mutation::None).expect("one value per slot");
    assert!(
        page_after_a_re_prepare(Mutation::PageRepliesUnchecked).is_err(),
        "the broken variant agreed: the test cannot catch it"
    );
}

/// From an adversarial review of pages. Five replicas; n3 runs. n2 (a gap at g)
/// completes its paged PROMISE; a second answer to its last page (n3's resend timer
/// asked again while the first was delayed) arrives while n3 still waits for a quorum:
/// taken as n2's whole PROMISE, it hid n2's chosen values, filled with no-ops.
fn second_copy_of_a_last_page(mutation: Mutation) -> Result<(), String> {
    let (mut h, _) = lopsided_round(5, mutation, &[4, 5], &[2, 4]);
    // n1 writes its commit point before it crashes (see `page_after_a_re_prepare`).
    h.tick(&[1], 1, &crate::scripted::none);
    h.crash(1);
    h.tick(&[2, 3, 4, 5], 60, &crate::scripted::none);
    h.r(3).start_election_now();
    let f = |from: NodeId, to: NodeId, m: &Message| {
        show(from, to, m);
        if to == 1 || to == 4 || from == 4 || is_catch_up(m) {
            Drop
        } else if matches!(m, Message::Promise { .. }) && (from == 5 || from == 2) {
            Hold
        } else {
            Deliver
        }
    };
    h.run(&f);
    h.release(&|from, _, _| if from == 2 { Deliver } else { Hold }, &f);
    h.tick(&[3], 5, &f); // the resend timer asks n2 for the page again
    h.release(&|from, _, _| if from == 2 { Deliver } else { Hold }, &f);
    h.release(&|_, _, _| Deliver, &|from, to, m| {
        show(from, to, m);
        if to == 1 || is_catch_up(m) {
            Drop
        } else {
            Deliver
        }
    });
    h.restart(1);
    for _ in 0..50 {
        h.tick(&[1, 2, 3, 4, 5], 1, &|_, _, m| {
            if is_catch_up(m) {
                Drop
            } else {
                Deliver
            }
        });
    }
    h.tick(&[1, 2, 3, 4, 5], 20, &all);
    h.executed_agree().map(|_| ())
}

#[test]
fn a_second_copy_of_the_last_page_does_not_replace_the_promise() {
    second_copy_of_a_last_page(Mutation::None).expect("one value per slot");
    assert!(
        second_copy_of_a_last_page(Mutation::PageRepliesUnchecked).is_err(),
        "the broken variant agreed: the test cannot catch it"
    );
}

/// From an adversarial review of pages. A cluster of one restarts with more than two
/// messages' worth of accepted values above its durable commit point (the commit
/// point's write was torn off): its merge beyond NEW-VIEW is re-proposed one budget at
/// a time, and with nobody to answer and no request coming, nothing called for the
/// next budget. It now goes on while its own vote chooses them.
#[test]
fn a_lone_member_re_proposes_its_whole_merge_without_requests() {
    let (mut h, sessions) = cluster(1, 1, |c| {
        c.max_message_bytes = MMB;
        c.max_inflight = 64;
        c.max_requests_per_slot = 1;
    });
    let g = h.r(1).commit_point();
    for seq in 1..=30 {
        h.r(1).handle_request(fat(sessions[0], seq));
    }
    let ready = h.r(1).take_ready();
    let durable: Vec<_> = ready
        .persist
        .into_iter()
        .filter(|o| !matches!(o, crate::PersistOp::CommitPoint(_)))
        .collect();
    h.crash(1);
    h.storage_persist(1, &durable);
    h.restart(1);
    h.tick(&[1], 200, &all);
    assert!(h.r(1).is_leader());
    assert!(
        h.r(1).commit_point() >= g + 30,
        "stalled at {} of {}",
        h.r(1).commit_point(),
        g + 30
    );
}

/// The requests of each ACCEPT n1 sends, in the order sent.
fn accepted_batches(sent: &[Message]) -> Vec<usize> {
    sent.iter()
        .filter_map(|m| match m {
            Message::Accept { entries, .. } => {
                Some(entries.iter().map(|(_, v)| v.requests().len()).sum())
            }
            _ => None,
        })
        .collect()
}

/// `Config::hold_partial_slots`: while a slot is in flight, requests that do not fill
/// a slot wait for it to be committed and then go out together; enough to fill one go
/// at once. (Without the rule each round's few requests took a slot, an ACCEPT round
/// and an fsync on every member of their own.)
#[test]
fn a_slot_that_is_not_full_waits_for_the_slots_in_flight() {
    let (mut h, sessions) = cluster(3, 7, |c| {
        c.max_requests_per_slot = 4;
        c.hold_partial_slots = true;
    });
    // Watches what n1 sends to n2; holds every ACCEPTED, so that n1's slots stay in
    // flight until the test lets them commit.
    let sent = std::cell::RefCell::new(Vec::new());
    let hold_accepted = |from: NodeId, to: NodeId, m: &Message| {
        if from == 1 && to == 2 {
            sent.borrow_mut().push(m.clone());
        }
        if matches!(m, Message::Accepted { .. }) {
            Hold
        } else {
            Deliver
        }
    };
    // Nothing in flight: a lone request goes at once, in a slot of its own.
    h.r(1).handle_request(write(sessions[0], 1));
    h.run(&hold_accepted);
    assert_eq!(accepted_batches(&sent.borrow()), vec![1]);
    // Its slot in flight: three requests, one short of a slot, wait.
    for s in &sessions[1..4] {
        h.r(1).handle_request(write(*s, 1));
    }
    h.run(&hold_accepted);
    assert_eq!(accepted_batches(&sent.borrow()), vec![1]);
    // Three more: a full slot of four goes at once, two wait.
    for s in &sessions[4..7] {
        h.r(1).handle_request(write(*s, 1));
    }
    h.run(&hold_accepted);
    assert_eq!(accepted_batches(&sent.borrow()), vec![1, 4]);
    // The first slot committed, the full one still in flight: the two waiting go out
    // in one slot (they wait for what was in flight when they began to wait, not for
    // what went out since, or a slot proposed every round would hold them for ever).
    let first = sent
        .borrow()
        .iter()
        .find_map(|m| match m {
            Message::Accept { entries, .. } => entries.first().map(|(s, _)| *s),
            _ => None,
        })
        .expect("an ACCEPT");
    h.release(
        &|_, _, m| match m {
            Message::Accepted { slots, .. } if slots.contains(&first) => Deliver,
            _ => Drop,
        },
        &hold_accepted,
    );
    h.run(&hold_accepted);
    assert_eq!(accepted_batches(&sent.borrow()), vec![1, 4, 2]);
    h.release(&all, &all);
    h.run(&all);
    for s in &sessions[..7] {
        assert_eq!(oks(&h, *s, 1), 1, "session {s} answered once");
    }
}
