//! Learners driven by hand: they copy and execute the chosen log, catch up by state
//! transfer, answer stale reads, and are never counted by the members.

use bytes::Bytes;

use crate::mutation::Mutation;
use crate::scripted::{all, leader_with_session, write, Deliver, Drop, Scripted as H};
use crate::{
    Ballot, ClientId, Message, NodeId, Request, Response, Role, Slot, StaleAnswer, READ_SEQ,
};

/// Three members and learner n4.
fn cluster(tweak: impl Fn(&mut crate::Config)) -> H {
    H::with_learners(3, 1, true, tweak)
}

/// `count` writes of `session` from request number `first`, each run to completion.
fn writes(h: &mut H, session: ClientId, first: u64, count: u64) {
    for seq in first..first + count {
        h.r(1).handle_request(write(session, seq));
        h.run(&all);
    }
}

fn stale_answer(h: &H, nonce: ClientId) -> Option<(Slot, u64)> {
    h.replies.iter().find_map(|(_, r)| match &r.response {
        Response::Ok(b) if r.client == nonce && r.seq >= crate::STALE_READ_BASE => {
            let a: StaleAnswer<u64> = postcard::from_bytes(b).unwrap();
            Some((a.executed, a.output))
        }
        _ => None,
    })
}

#[test]
fn a_learner_copies_and_executes_the_chosen_log() {
    let mut h = cluster(|_| {});
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 5);
    assert_eq!(h.r(4).role(), Role::Learner);
    assert_eq!(h.r(4).commit_point(), 0, "nobody pushes to a learner");
    // It polls every heartbeat period; the first answer brings everything.
    h.tick(&[4], 4, &all);
    let leader_commit = h.r(1).commit_point();
    assert_eq!(h.r(4).commit_point(), leader_commit);
    assert_eq!(h.r(4).executed(), leader_commit);
    h.executed_agree()
        .expect("the learner executed the chosen values");
    // It never votes, never campaigns, and keeps its copy across a restart.
    h.tick(&[4], 200, &all);
    assert_eq!(h.r(4).role(), Role::Learner);
    assert_eq!(h.r(4).promised(), Ballot::ZERO);
    h.crash(4);
    h.restart(4);
    assert_eq!(h.r(4).executed(), leader_commit);
}

#[test]
fn a_learner_is_never_counted() {
    let mut h = cluster(|_| {});
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 1);
    h.tick(&[4], 4, &all);
    let before = h.r(1).commit_point();
    // n2 and n3 are gone: the leader and the learner are not a majority.
    h.crash(2);
    h.crash(3);
    h.r(1).handle_request(write(session, 2));
    h.tick(&[1, 4], 50, &all);
    assert_eq!(h.r(1).commit_point(), before);
    // Votes in the learner's name are ignored too.
    let ballot = h.r(1).promised();
    h.deliver(
        4,
        1,
        Message::Accepted {
            ballot,
            slots: vec![before],
            incarnation: 0,
        },
    );
    h.run(&all);
    assert_eq!(h.r(1).commit_point(), before);
    // And a learner ignores a member that asks for its vote.
    h.deliver(
        1,
        4,
        Message::Prepare {
            ballot: Ballot::new(99, 1),
            from_slot: 0,
            nonce: 1,
            handover: false,
        },
    );
    assert!(h.drain().is_empty());
    assert_eq!(h.r(4).promised(), Ballot::ZERO);
}

#[test]
fn a_learner_behind_the_members_checkpoints_catches_up_by_state_transfer() {
    let mut h = cluster(|c| {
        c.checkpoint_interval = 4;
        c.snapshot_chunk_bytes = 16;
    });
    h.crash(4);
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 30);
    // Every member compacted the start of the log away.
    assert!(h.r(2).checkpoint().is_some());
    h.restart(4);
    h.tick(&[4], 60, &all);
    let leader_commit = h.r(1).commit_point();
    assert_eq!(h.r(4).commit_point(), leader_commit);
    assert!(h.r(4).counters().snapshots_installed >= 1);
    h.executed_agree().expect("agree");
    // The learner keeps following afterwards.
    writes(&mut h, session, 31, 3);
    h.tick(&[4], 4, &all);
    assert_eq!(h.r(4).executed(), h.r(1).commit_point());
}

#[test]
fn a_learner_answers_stale_reads_and_redirects_the_rest() {
    let mut h = cluster(|_| {});
    let session = leader_with_session(&mut h);
    let read = |nonce: ClientId, floor: Slot| {
        Request::stale_read(
            nonce,
            Bytes::from(postcard::to_allocvec(&(nonce, READ_SEQ)).unwrap()),
            floor,
        )
    };
    // Before it heard of any commit point, it has nothing a client expects.
    h.r(4).handle_request(read(7, 0));
    h.run(&all);
    assert!(h
        .replies
        .iter()
        .any(|(_, r)| r.client == 7 && matches!(r.response, Response::Redirect { .. })));
    writes(&mut h, session, 1, 3);
    h.tick(&[4], 4, &all);
    let executed = h.r(4).executed();
    h.r(4).handle_request(read(8, executed));
    h.run(&all);
    let (slot, seen) = stale_answer(&h, 8).expect("the learner answers");
    assert_eq!(slot, executed);
    assert_eq!(seen, 3, "the three writes");
    // A floor above what it knows (a client that just read from a member after a
    // write whose news the learner missed: the answer to its held poll was lost): it
    // waits, polls at once, and answers with that write.
    h.r(1).handle_request(write(session, 4));
    h.run(&|_, to: NodeId, _: &Message| if to == 4 { Drop } else { Deliver });
    let floor = h.r(1).executed();
    h.r(4).handle_request(read(11, floor));
    h.run(&all);
    assert!(stale_answer(&h, 11).is_none(), "answered below its floor");
    h.tick(&[4], 1, &all);
    let (slot, seen) = stale_answer(&h, 11).expect("answered after one poll");
    assert!(slot >= floor && seen == 4, "{slot} {seen}");
    // A floor nobody reached: after an election timeout, a redirect.
    h.r(4).handle_request(read(9, floor + 100));
    let timeout = 2 * h.r(4).config().election_ticks as usize;
    h.tick(&[4], timeout, &all);
    // Writes and linearizable reads are for the leader.
    h.r(4).handle_request(write(session, 5));
    h.r(4).handle_request(Request::read(
        10,
        Bytes::from(postcard::to_allocvec(&(10u64, READ_SEQ)).unwrap()),
    ));
    h.run(&all);
    for client in [9, session, 10] {
        assert!(
            h.replies.iter().any(|(from, r)| *from == 4
                && r.client == client
                && matches!(r.response, Response::Redirect { .. })),
            "client {client} redirected"
        );
    }
}

/// n1 proposes W in slot s, only n2 accepts it, and n1 crashes: W is held by a
/// minority and not chosen (a later leader may fill s with something else). The
/// learner then polls n2. A member answers a FETCH with chosen values only, so the
/// learner learns nothing at s; the broken variant hands it W, which it would execute.
fn learner_polls_a_member_holding_an_unchosen_value(m: Mutation) -> Result<(), String> {
    let mut h = cluster(|c| c.mutation = m);
    let session = leader_with_session(&mut h);
    h.tick(&[4], 4, &all);
    let s = h.r(1).commit_point();
    h.r(1).handle_request(write(session, 1));
    h.run(&|_, to: NodeId, m: &Message| match m {
        Message::Accept { .. } if to == 2 => Deliver,
        _ => Drop,
    });
    assert!(h.r(2).slot(s).value.is_some(), "n2 accepted W");
    h.crash(1);
    // The learner's polls to n1 go unanswered; it turns to n2 and n3, which hold its
    // polls (nothing new) and answer them when they expire. They elect no new leader
    // (their messages to each other are lost), so W stays undecided.
    let learner_only = |from: NodeId, to: NodeId, _: &Message| {
        if from == 4 || to == 4 {
            Deliver
        } else {
            Drop
        }
    };
    h.tick(&[2, 3, 4], 30, &learner_only);
    if h.r(4).commit_point() > s {
        return Err(format!("the learner learned slot {s}, which is not chosen"));
    }
    Ok(())
}

#[test]
fn a_learner_learns_only_chosen_values() {
    learner_polls_a_member_holding_an_unchosen_value(Mutation::None).unwrap();
    assert!(
        learner_polls_a_member_holding_an_unchosen_value(Mutation::FetchServesUnchosen).is_err(),
        "the broken variant teaches the learner an undecided value"
    );
}

/// A caught-up learner's poll is held by the member it asks and answered the moment
/// that member's commit point moves: the learner hears of a commit without a tick.
/// Broken, the member answers held polls only when they expire.
fn learner_hears_of_a_commit_without_ticking(m: Mutation) -> Result<(), String> {
    let mut h = cluster(|c| c.mutation = m);
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 2);
    // It polls, everything comes back, and it asks again at once: that poll is held.
    h.tick(&[4], 4, &all);
    let before = h.r(1).commit_point();
    assert_eq!(h.r(4).commit_point(), before, "caught up by polling");
    for seq in 3..6 {
        h.r(1).handle_request(write(session, seq));
        h.run(&all);
        let committed = h.r(1).commit_point();
        assert!(committed > before);
        if h.r(4).commit_point() < committed {
            return Err(format!(
                "the learner is at commit point {} after the leader reached {committed}",
                h.r(4).commit_point()
            ));
        }
    }
    h.executed_agree()
        .expect("the learner executed the chosen values");
    Ok(())
}

#[test]
fn a_caught_up_learner_hears_of_each_commit_without_polling_again() {
    learner_hears_of_a_commit_without_ticking(Mutation::None).unwrap();
    assert!(
        learner_hears_of_a_commit_without_ticking(Mutation::ParkedFetchForgotten).is_err(),
        "the broken variant leaves the learner a poll period behind"
    );
}

/// In a cluster of one, the member's own vote chooses a slot before it is durable:
/// the answer that serves it to a learner waits for the write, as a reply does.
#[test]
fn a_lone_member_serves_a_learner_only_what_it_stored() {
    let mut h = H::with_learners(1, 1, true, |_| {});
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 1);
    h.tick(&[2], 4, &all);
    assert_eq!(h.r(2).commit_point(), h.r(1).commit_point());
    // The learner's poll is held; a write chooses a slot at once.
    h.r(1).handle_request(write(session, 2));
    let ready = h.r(1).take_ready();
    let serves = |m: &[(NodeId, Message)]| {
        m.iter()
            .filter(
                |(_, m)| matches!(m, Message::FetchReply { entries, .. } if !entries.is_empty()),
            )
            .count()
    };
    assert_eq!(serves(&ready.messages_now), 0, "served before the write");
    assert_eq!(
        serves(&ready.messages),
        1,
        "served once the write is durable"
    );
}

/// An idle member answers a held poll after a heartbeat period, and the learner asks
/// again at its next tick: about one poll per heartbeat period, as without long-poll.
#[test]
fn an_idle_learner_polls_about_once_a_heartbeat_period() {
    let mut h = cluster(|_| {});
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 1);
    h.tick(&[1, 2, 3, 4], 10, &all);
    let hb = h.r(4).config().heartbeat_ticks;
    let polls = std::cell::Cell::new(0u64);
    let count = |from: NodeId, _: NodeId, m: &Message| {
        if from == 4 && matches!(m, Message::Fetch { .. }) {
            polls.set(polls.get() + 1);
        }
        Deliver
    };
    let ticks = 30 * hb;
    h.tick(&[1, 2, 3, 4], ticks as usize, &count);
    let (polls, expected) = (polls.get(), ticks / (hb + 1));
    assert!(
        polls >= expected / 2 && polls <= expected + expected / 2,
        "{polls} polls in {ticks} ticks (about {expected} expected)"
    );
    assert_eq!(h.r(4).commit_point(), h.r(1).commit_point());
}

/// Messages in the name of a replica outside the membership reach no voting code and
/// teach a member nothing: only FETCH and snapshot requests are answered.
#[test]
fn a_member_ignores_everything_but_catch_up_requests_from_outsiders() {
    let mut h = cluster(|_| {});
    let session = leader_with_session(&mut h);
    writes(&mut h, session, 1, 2);
    let cp = h.r(2).commit_point();
    let promised = h.r(2).promised();
    let bogus = crate::Value::Request(write(session, 99));
    let forged = [
        Message::FetchReply {
            commit_point: cp + 5,
            entries: vec![(cp, bogus.clone())],
        },
        Message::Prepare {
            ballot: Ballot::new(1 << 40, 9),
            from_slot: 0,
            nonce: 7,
            handover: false,
        },
        Message::Accept {
            ballot: Ballot::new(1 << 40, 9),
            commit_point: cp + 1,
            entries: vec![(cp, bogus)],
        },
        Message::Heartbeat {
            ballot: Ballot::new(1 << 40, 9),
            commit_point: cp + 5,
        },
        Message::SnapshotChunk {
            slot: cp + 3,
            digest: 0,
            total_len: 4,
            offset: 0,
            data: Bytes::from_static(b"junk"),
        },
    ];
    for m in forged {
        // From id 9, which nobody configured, and from the cluster's own learner.
        for outsider in [9, 4] {
            h.deliver(outsider, 2, m.clone());
        }
    }
    let out = h.drain();
    assert!(out.is_empty(), "a member answered outsiders: {out:?}");
    assert_eq!(h.r(2).promised(), promised);
    assert_eq!(h.r(2).commit_point(), cp);
    assert!(h.r(2).slot(cp).value.is_none());
    // Ticking, it does not fetch the commit point a forged message claimed.
    h.tick(&[2], 20, &|_, _, m: &Message| {
        assert!(
            !matches!(m, Message::Fetch { .. }),
            "fetched for an outsider's claim"
        );
        Drop
    });
    // A FETCH is answered, with chosen values only.
    h.deliver(9, 2, Message::Fetch { from: 0, to: 100 });
    let out = h.drain();
    assert!(matches!(
        out.as_slice(),
        [(2, 9, Message::FetchReply { commit_point, .. })] if *commit_point == cp
    ));
}
