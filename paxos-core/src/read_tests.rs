//! Read-index reads driven by hand through the two message sequences that break the
//! classic mistakes: answering before executing up to the read point, and confirming a
//! read with a round that went out before it arrived. Each runs against the real rule
//! (no stale answer) and against the broken variant (a stale answer), so the scripts are
//! shown to reach the bug.

use bytes::Bytes;

use crate::mutation::Mutation;
use crate::scripted::{all, leader_with_session, write, Deliver, Drop, Hold, Scripted as H};
use crate::{ClientId, Message, NodeId, Request, Response, READ_SEQ};

fn read(nonce: ClientId) -> Request {
    Request::read(
        nonce,
        Bytes::from(postcard::to_allocvec(&(nonce, READ_SEQ)).unwrap()),
    )
}

/// The answer to read `nonce`, if one came: how many commands the state it read had
/// executed.
fn answered(h: &H, nonce: ClientId) -> Option<u64> {
    h.replies.iter().find_map(|(_, r)| match &r.response {
        Response::Ok(b) if r.client == nonce && r.seq == READ_SEQ => {
            Some(postcard::from_bytes::<u64>(b).unwrap())
        }
        _ => None,
    })
}

/// n2 and n3 tick, with n1's messages under `cut`, until one of them leads; returns it.
fn elect_without_n1(h: &mut H, cut: crate::scripted::Filter) -> NodeId {
    for _ in 0..200 {
        h.tick(&[2, 3], 1, cut);
        if h.r(2).is_leader() || h.r(3).is_leader() {
            break;
        }
    }
    let l = if h.r(2).is_leader() { 2 } else { 3 };
    assert!(h.r(l).is_leader(), "n2 or n3 leads");
    l
}

fn involves(node: NodeId, from: NodeId, to: NodeId) -> bool {
    from == node || to == node
}

/// 1. n1 leads; write W is accepted by n2 and chosen; n1 executes it and answers the
///    client; nobody else learns that it was chosen.
/// 2. n1 is cut off; n2 and n3 elect a new leader L, whose merged log holds W but whose
///    re-proposal of W is not yet acknowledged (L has not executed W).
/// 3. A read reaches L and its round is confirmed by the other follower. Answering now
///    misses W, which completed before the read was sent.
///
/// Returns the answer before, and after, the held acknowledgements arrive.
fn read_before_the_read_point(m: Mutation) -> (Option<u64>, Option<u64>) {
    let mut h = H::new(3, true, |c| c.mutation = m);
    let session = leader_with_session(&mut h);
    h.r(1).handle_request(write(session, 1));
    h.run(&|from, to, msg| match msg {
        Message::Accept { .. } if from == 1 && to == 2 => Deliver,
        Message::Accepted { .. } if from == 2 && to == 1 => Deliver,
        _ => Drop,
    });
    assert!(
        h.replies.iter().any(|(_, r)| r.client == session
            && r.seq == 1
            && matches!(r.response, Response::Ok(_))),
        "W completed"
    );
    // n1 is cut off; acknowledgements of proposals are held back.
    let cut = |from: NodeId, to: NodeId, msg: &Message| {
        if involves(1, from, to) {
            Drop
        } else if matches!(msg, Message::Accepted { slots, .. } if !slots.is_empty()) {
            Hold
        } else {
            Deliver
        }
    };
    let l = elect_without_n1(&mut h, &cut);
    assert_eq!(
        h.r(l).executed(),
        1,
        "the new leader executed the registration, not W"
    );
    h.r(l).handle_request(read(9));
    h.run(&cut);
    let before = answered(&h, 9);
    h.release(&all, &cut);
    h.release(&all, &cut);
    (before, answered(&h, 9))
}

/// 1. n1 leads; read R0 arrives and its round goes out; both followers acknowledge it,
///    but the acknowledgements are delayed.
/// 2. n1 is cut off; n2 and n3 elect a new leader L, and write W completes there.
/// 3. Read R1 reaches n1, which still believes it leads; the delayed acknowledgements
///    arrive. They confirm R0's round, which went out before R1 arrived: answering R1
///    on their strength misses W.
fn read_confirmed_by_an_earlier_round(m: Mutation) -> Option<u64> {
    let mut h = H::new(3, true, |c| c.mutation = m);
    let session = leader_with_session(&mut h);
    h.r(1).handle_request(read(8));
    h.run(&|_, _, msg| match msg {
        Message::ReadIndexAck { .. } => Hold,
        _ => Deliver,
    });
    assert_eq!(answered(&h, 8), None, "R0 waits for its round");
    let cut = |from: NodeId, to: NodeId, _: &Message| {
        if involves(1, from, to) {
            Drop
        } else {
            Deliver
        }
    };
    let l = elect_without_n1(&mut h, &cut);
    h.r(l).handle_request(write(session, 1));
    h.run(&cut);
    assert!(
        h.replies.iter().any(|(_, r)| r.client == session
            && r.seq == 1
            && matches!(r.response, Response::Ok(_))),
        "W completed at the new leader"
    );
    assert!(h.r(1).is_leader(), "n1 still believes it leads");
    h.r(1).handle_request(read(9));
    // The delayed acknowledgements arrive; n1's new messages are lost.
    h.release(
        &|_, _, msg| match msg {
            Message::ReadIndexAck { .. } => Deliver,
            _ => Hold,
        },
        &|from, _, _| if from == 1 { Drop } else { Deliver },
    );
    answered(&h, 9)
}

#[test]
fn a_read_waits_for_its_read_point() {
    assert_eq!(
        read_before_the_read_point(Mutation::None),
        (None, Some(1)),
        "answered once W is executed, with W"
    );
}

#[test]
fn mutant_reading_before_the_read_point_answers_stale() {
    assert_eq!(
        read_before_the_read_point(Mutation::ReadBeforeReadPoint).0,
        Some(0),
        "the broken variant answers without W"
    );
}

#[test]
fn a_read_is_confirmed_only_by_a_round_sent_after_it_arrived() {
    assert_eq!(read_confirmed_by_an_earlier_round(Mutation::None), None);
}

#[test]
fn mutant_confirming_reads_with_an_earlier_round_answers_stale() {
    assert_eq!(
        read_confirmed_by_an_earlier_round(Mutation::ReadJoinsSentRound),
        Some(0),
        "the broken variant answers without W"
    );
}

/// n1 leads, is cut off, n2 or n3 takes over and a write completes there; a read then
/// reaches n1, which still believes it leads. Its READ-INDEX round is refused, so it
/// never answers; answering from its own state at once misses the write.
fn read_at_a_deposed_leader(m: Mutation) -> Option<u64> {
    let mut h = H::new(3, true, |c| c.mutation = m);
    let session = leader_with_session(&mut h);
    let cut = |from: NodeId, to: NodeId, _: &Message| {
        if involves(1, from, to) {
            Drop
        } else {
            Deliver
        }
    };
    let l = elect_without_n1(&mut h, &cut);
    h.r(l).handle_request(write(session, 1));
    h.run(&cut);
    assert!(h.r(1).is_leader(), "n1 still believes it leads");
    // The partition heals for n1's read round: the others refuse it.
    h.r(1).handle_request(read(9));
    h.run(&all);
    answered(&h, 9)
}

#[test]
fn a_deposed_leader_does_not_answer_reads() {
    assert_eq!(read_at_a_deposed_leader(Mutation::None), None);
}

#[test]
fn mutant_reading_without_confirmation_answers_stale_at_a_deposed_leader() {
    assert_eq!(
        read_at_a_deposed_leader(Mutation::ReadWithoutConfirmation),
        Some(0),
        "the broken variant answers from its own state"
    );
}

/// n3 hears commit points (HEARTBEAT, COMMIT) but no entries: it knows how far the
/// cluster is and cannot get there.
fn starved_n3(_: NodeId, to: NodeId, msg: &Message) -> crate::scripted::Fate {
    if to == 3 && !matches!(msg, Message::Heartbeat { .. } | Message::Commit { .. }) {
        Drop
    } else {
        Deliver
    }
}

fn stale_read(nonce: ClientId, floor: crate::Slot) -> Request {
    Request::stale_read(
        nonce,
        Bytes::from(postcard::to_allocvec(&(nonce, READ_SEQ)).unwrap()),
        floor,
    )
}

/// The answer to stale read `nonce`, if one came: the executed slot it reflects and how
/// many commands the state had executed.
fn stale_answered(h: &H, nonce: ClientId) -> Option<(crate::Slot, u64)> {
    h.replies.iter().find_map(|(_, r)| match &r.response {
        Response::Ok(b) if r.client == nonce && r.seq >= crate::STALE_READ_BASE => {
            let a: crate::StaleAnswer<u64> = postcard::from_bytes(b).unwrap();
            Some((a.executed, a.output))
        }
        _ => None,
    })
}

/// n1 leads with n2 while n3 gets no entries (ACCEPTs, FETCH-REPLYs and snapshots to
/// it are lost; it still hears commit points); write W completes. A stale read at n2
/// sees W; the same client's next stale read, with n2's executed slot as its floor, goes
/// to n3, which has not executed W. Returns n2's answer, n3's answer while it lags, and
/// n3's answer once it gets entries again.
fn stale_reads_across_a_lagging_replica(m: Mutation) -> [Option<(crate::Slot, u64)>; 3] {
    let mut h = H::new(3, true, |c| c.mutation = m);
    let session = leader_with_session(&mut h);
    let cut = |_: NodeId, to: NodeId, msg: &Message| {
        let entries = matches!(
            msg,
            Message::Accept { .. }
                | Message::FetchReply { .. }
                | Message::Snapshot { .. }
                | Message::SnapshotChunk { .. }
        );
        if to == 3 && entries {
            Drop
        } else {
            Deliver
        }
    };
    h.r(1).handle_request(write(session, 1));
    h.run(&cut);
    // n2 learns the commit point with the next heartbeat.
    h.tick(&[1], 5, &cut);
    h.r(2).handle_request(stale_read(7, 0));
    h.run(&cut);
    let at_n2 = stale_answered(&h, 7);
    let floor = at_n2.map_or(0, |(e, _)| e);
    h.tick(&[1, 3], 5, &cut);
    assert!(h.r(3).executed() < floor, "n3 lags");
    h.r(3).handle_request(stale_read(8, floor));
    h.run(&cut);
    let cut_off = stale_answered(&h, 8);
    for _ in 0..20 {
        h.tick(&[1, 3], 1, &all);
        h.run(&all);
    }
    [at_n2, cut_off, stale_answered(&h, 8)]
}

#[test]
fn a_stale_read_waits_for_its_floor() {
    let [at_n2, cut_off, healed] = stale_reads_across_a_lagging_replica(Mutation::None);
    let (floor, seen) = at_n2.expect("n2 answers a stale read at once");
    assert_eq!(seen, 1, "n2 executed W");
    assert_eq!(cut_off, None, "n3 has not executed up to the floor");
    let (executed, seen) = healed.expect("n3 answers once it has caught up");
    assert!(executed >= floor);
    assert_eq!(seen, 1);
}

#[test]
fn mutant_stale_read_ignoring_its_floor_goes_back_in_time() {
    let [at_n2, cut_off, _] = stale_reads_across_a_lagging_replica(Mutation::StaleReadIgnoresFloor);
    assert_eq!(at_n2.map(|a| a.1), Some(1));
    assert_eq!(
        cut_off.map(|a| a.1),
        Some(0),
        "the broken variant answers from before W"
    );
}

#[test]
fn a_stale_read_that_cannot_reach_its_floor_is_redirected() {
    let mut h = H::new(3, true, |_| {});
    let session = leader_with_session(&mut h);
    let redirected = |h: &H, nonce: ClientId| {
        h.replies.iter().any(|(from, r)| {
            *from == 3 && r.client == nonce && matches!(r.response, Response::Redirect { .. })
        })
    };
    // A floor above every commit point n3 heard of: redirected at once.
    h.r(3).handle_request(stale_read(8, 1_000));
    h.run(&all);
    assert!(redirected(&h, 8));
    // n3 hears of a commit point it cannot reach (no entries get through): it keeps
    // the read for an election timeout, then redirects it.
    let cut = |from: NodeId, to: NodeId, _: &Message| {
        if involves(3, from, to) {
            Drop
        } else {
            Deliver
        }
    };
    h.r(1).handle_request(write(session, 1));
    h.run(&cut);
    let floor = h.r(1).executed();
    h.tick(&[1], 5, &starved_n3);
    h.r(3).handle_request(stale_read(9, floor));
    h.run(&starved_n3);
    assert!(h.replies.iter().all(|(_, r)| r.client != 9), "n3 keeps it");
    let limit = h.r(3).config().election_ticks as usize;
    h.tick(&[3], limit, &starved_n3);
    assert!(
        redirected(&h, 9),
        "after an election timeout the read goes elsewhere"
    );
}

/// A single-member cluster: a write and a stale read in the same round. The write is
/// chosen by the replica's own vote, which is durable only once the round's writes are:
/// the stale answer, which reflects it, must wait for them like the write's reply.
fn stale_read_in_a_single_member_round(m: Mutation) -> (bool, bool) {
    let mut h = H::new(1, true, |c| c.mutation = m);
    let session = leader_with_session(&mut h);
    let r = h.r(1);
    r.handle_request(write(session, 1));
    r.handle_request(stale_read(7, 0));
    let ready = r.take_ready();
    let waits = |replies: &[crate::Reply]| replies.iter().any(|r| r.client == 7);
    (waits(&ready.replies), waits(&ready.replies_now))
}

#[test]
fn a_stale_read_waits_for_the_writes_of_its_round() {
    assert_eq!(
        stale_read_in_a_single_member_round(Mutation::None),
        (true, false)
    );
}

#[test]
fn mutant_stale_read_leaving_before_the_writes_is_caught() {
    assert_eq!(
        stale_read_in_a_single_member_round(Mutation::StaleReadRepliesEarly),
        (false, true)
    );
}

/// Stale reads waiting for their floor hold their commands only, and at most
/// `max_message_bytes` of them: a frame padded after the command, or many waiting
/// reads, cannot make a replica hold more; beyond the bound the answer is `Busy`.
#[test]
fn waiting_stale_reads_are_bounded_by_bytes() {
    let mut h = H::new(3, true, |c| c.max_message_bytes = 64);
    let session = leader_with_session(&mut h);
    h.r(1).handle_request(write(session, 1));
    let floor = {
        h.run(&|_, to, _| if to == 3 { Drop } else { Deliver });
        h.r(1).executed()
    };
    // n3 hears the commit point but gets no entries: its stale reads wait.
    h.tick(&[1], 5, &starved_n3);
    let padded = |nonce: ClientId, padding: usize| {
        let mut payload = postcard::to_allocvec(&(nonce, READ_SEQ)).unwrap();
        let command = payload.len();
        payload.extend_from_slice(&vec![0u8; padding]);
        (
            Request::stale_read(nonce, Bytes::from(payload), floor),
            command,
        )
    };
    let busy = |h: &H, nonce: ClientId| {
        h.replies
            .iter()
            .any(|(_, r)| r.client == nonce && matches!(r.response, Response::Busy))
    };
    // A padded frame: over the bound as sent, so refused.
    let (big, command) = padded(20, 1000);
    h.r(3).handle_request(big);
    h.run(&starved_n3);
    assert!(
        busy(&h, 20),
        "a 1 KiB frame is more than 64 bytes of waiting reads"
    );
    // A frame with a little padding waits, counted (and kept) as its command alone;
    // then small ones, up to the bound.
    let (small_padded, _) = padded(21, 20);
    h.r(3).handle_request(small_padded);
    h.run(&starved_n3);
    assert!(!busy(&h, 21));
    let mut waiting = 1;
    for nonce in 22..40 {
        h.r(3).handle_request(stale_read(nonce, floor));
        h.run(&starved_n3);
        if !busy(&h, nonce) {
            waiting += 1;
        }
    }
    assert_eq!(waiting, 64 / command, "as many as fit in 64 bytes");
    // Once n3 catches up they are all answered, and the bound is free again.
    for _ in 0..20 {
        h.tick(&[1, 3], 1, &all);
        h.run(&all);
    }
    for nonce in 21..21 + waiting as u64 {
        assert!(stale_answered(&h, nonce).is_some(), "read {nonce} answered");
    }
    h.r(3).handle_request(stale_read(50, floor));
    h.run(&all);
    assert!(stale_answered(&h, 50).is_some());
}
