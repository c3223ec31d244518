//! Hand-scripted message sequences against real [`Replica`]s: each replays, exactly, a
//! safety bug that review found, so that it cannot come back unnoticed. Every test also
//! runs against the deliberately broken variant that reintroduces the bug, to show the
//! script still reaches the dangerous state.

use crate::mutation::Mutation;
use crate::scripted::{Deliver, Drop, Hold, Scripted};
use crate::sim::Recorder;
use crate::{
    Ballot, ClientId, Config, Message, NodeId, PersistentState, Replica, Request, Slot, SlotStatus,
    Value,
};

fn within(group: &'static [NodeId]) -> impl Fn(NodeId, NodeId, &Message) -> bool {
    move |from, to, _| group.contains(&from) && group.contains(&to)
}

fn nothing(_: NodeId, _: NodeId, _: &Message) -> bool {
    false
}

fn register(client: ClientId) -> Value {
    Value::Request(Request::register(client))
}

/// Finding 1 of the safety review: a leader whose ballot was superseded learns, by
/// fetching, the value a higher ballot chose in a slot where it had proposed another
/// one, and then announces a commit point over that slot under its own ballot; a
/// follower that accepted its losing proposal executes it. Five replicas.
fn superseded_leader_scenario(mutation: Mutation) -> Scripted {
    let mut h = Scripted::new(5, true, |c| c.mutation = mutation);
    // 1. n5 leads at (1, n5); `register c100` is chosen in slot 0 by {n5, n3, n4}; only
    //    n1 hears the commit point (so n1 knows slot 0 is chosen but not its value).
    h.r(5).start_election_now();
    h.run_if(&|_, _, _| true);
    assert!(h.r(5).is_leader());
    h.register(5, 100);
    h.run_if(&|from, to, m| {
        let core = [3, 4, 5];
        if from == 5 && matches!(m, Message::Heartbeat { .. } | Message::Commit { .. }) {
            return to == 1;
        }
        core.contains(&from) && core.contains(&to)
    });
    assert_eq!(h.r(5).commit_point(), 1);
    h.crash(5);

    // 2. n1 is elected at (2, n1) by {n1, n2, n3}; its NEW-VIEW and its proposal of
    //    `register c7` for slot 1 reach only n2.
    h.tick_if(&[1, 2, 3, 4], 45, &nothing); // everyone stops believing in n5
    h.r(1).start_election_now();
    h.run_if(&|from, to, m| match m {
        Message::Prepare { .. } => from == 1 && (to == 2 || to == 3),
        Message::Promise { .. } => to == 1 && (from == 2 || from == 3),
        _ => (from == 1 && to == 2) || (from == 2 && to == 1),
    });
    assert!(h.r(1).is_leader());
    assert_eq!(h.r(1).promised(), Ballot::new(2, 1));
    h.register(1, 7);
    h.run_if(&within(&[1, 2]));
    assert_eq!(h.r(2).slot(1).value, Some(register(7)));

    // 3. n5 restarts; {n3, n4, n5} elect n3 at (3, n3) and choose `register c8` in
    //    slot 1. Nothing passes between {n1, n2} and {n3, n4, n5}.
    h.restart(5);
    h.tick_if(&[3, 4, 5], 45, &nothing);
    h.r(3).start_election_now();
    h.run_if(&within(&[3, 4, 5]));
    assert!(h.r(3).is_leader());
    h.register(3, 8);
    h.run_if(&within(&[3, 4, 5]));
    assert_eq!(h.r(3).commit_point(), 2);

    // 4. n1 still believes it leads. It fetches the chosen values from the others
    //    (slot 0, then slot 1 = c8); its accepts to n3..n5 and their NACKs are lost.
    h.tick_if(&[1, 2], 30, &|from, to, m| {
        let a = [1, 2];
        if a.contains(&from) && a.contains(&to) {
            return true;
        }
        match m {
            Message::Fetch { .. } | Message::SnapshotRequest { .. } => from == 1,
            Message::FetchReply { .. }
            | Message::Snapshot { .. }
            | Message::SnapshotChunk { .. } => to == 1,
            _ => false,
        }
    });
    h
}

#[test]
fn a_superseded_leader_never_makes_a_follower_execute_its_losing_value() {
    let mut h = superseded_leader_scenario(Mutation::None);
    h.executed_agree().expect("no divergence while partitioned");
    assert!(!h.r(1).is_leader(), "n1 stepped down once it learned c8");
    assert_ne!(
        h.r(2).slot(1).status,
        SlotStatus::Executed,
        "n2 must not execute its unchosen c7"
    );
    // 5. Heal: everyone converges on c8 in slot 1.
    h.tick_if(&[1, 2, 3, 4, 5], 200, &|_, _, _| true);
    let executed = h.executed_agree().expect("no divergence after healing");
    assert_eq!(executed.get(&1), Some(&register(8)));
    for id in 1..=5 {
        assert!(h.r(id).executed() >= 2, "n{id} caught up");
    }
}

#[test]
fn the_superseded_leader_scenario_catches_its_broken_variant() {
    let h = superseded_leader_scenario(Mutation::SupersededLeaderAnnounces);
    let err = h
        .executed_agree()
        .expect_err("the broken variant lets n2 execute c7 where c8 was chosen");
    assert!(err.contains("slot 1"), "{err}");
}

/// An acceptor that already knows a slot decided vouches for a proposal in it only if
/// the proposal is the decided value: otherwise a superseded leader could count it
/// towards a quorum for its losing value.
fn ack_for_a_decided_slot(mutation: Mutation) -> Vec<Slot> {
    let mut r = Replica::new(
        {
            let mut c = Config::new(2, vec![1, 2, 3]);
            c.mutation = mutation;
            c
        },
        Recorder::default(),
        PersistentState::founding(),
    )
    .unwrap();
    // Slot 0 decided (learned from a fetch) as `register c8`.
    r.handle_message(
        3,
        Message::FetchReply {
            commit_point: 1,
            entries: vec![(0, register(8))],
        },
    );
    assert_eq!(r.commit_point(), 1);
    r.take_ready();
    // A leader proposes `register c7` in slot 0 and `register c9` in slot 1.
    r.handle_message(
        1,
        Message::Accept {
            ballot: Ballot::new(1, 1),
            commit_point: 0,
            entries: vec![(0, register(7)), (1, register(9))],
        },
    );
    r.take_ready()
        .into_all_messages()
        .into_iter()
        .find_map(|(_, m)| match m {
            Message::Accepted { slots, .. } => Some(slots),
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn an_acceptor_vouches_for_a_decided_slot_only_with_its_value() {
    assert_eq!(ack_for_a_decided_slot(Mutation::None), vec![1]);
    assert_eq!(
        ack_for_a_decided_slot(Mutation::AckChosenBlindly),
        vec![0, 1],
        "the broken variant is caught by this test"
    );
}

/// A PROMISE sent by a replica's previous life, delivered after that replica lost its
/// state and recovered, must not count: otherwise the candidate's phase 1 misses what
/// the recovered replica accepted since (see `replica/recovery.rs`, "A PROMISE for b").
/// Five replicas: n1 promises n5's ballot (5, n5), loses its disk and recovers with
/// ballot (2, n1) from {n2, n3, n4}; n4 then leads at (3, n4) and chooses c77 in slot 0
/// with {n4, n1, n2}; n5's candidacy receives n1's old promise and n3's.
fn stale_promise_scenario(mutation: Mutation) -> Scripted {
    let mut h = Scripted::new(5, true, |c| c.mutation = mutation);
    let all = |_: NodeId, _: NodeId, _: &Message| true;
    h.r(5).start_election_now();
    h.run_if(&all);
    assert!(h.r(5).is_leader());
    // n5 runs again, up to round 5, its prepares lost except the last one to n1,
    // whose PROMISE is held back.
    for _ in 0..3 {
        h.r(5).start_election_now();
        h.run_if(&nothing);
    }
    h.r(5).start_election_now();
    assert_eq!(h.r(5).promised(), Ballot::new(5, 5));
    h.run(&|from, to, m| match m {
        Message::Prepare { .. } if from == 5 && to == 1 => Deliver,
        Message::Promise { .. } if from == 1 && to == 5 => Hold,
        _ => Drop,
    });
    assert_eq!(h.held.len(), 1, "n1's promise to (5, n5)");
    // n1 loses its disk and recovers from {n2, n3, n4}.
    h.wipe(1);
    h.run_if(&within(&[1, 2, 3, 4]));
    assert_eq!(
        h.r(1).acceptor_status(),
        crate::AcceptorStatus::Voter,
        "n1 recovered"
    );
    assert!(h.r(1).promised() < Ballot::new(5, 5));
    // n4 leads at (3, n4) and chooses c77 in slot 0 with {n4, n1, n2}.
    h.r(4).start_election_now();
    assert!(h.r(4).promised() < Ballot::new(5, 5));
    h.run_if(&within(&[1, 2, 4]));
    assert!(h.r(4).is_leader());
    h.register(4, 77);
    // n1 does not hear that c77 was chosen (it only accepted it).
    h.run_if(&|from, to, m| {
        [1, 2, 4].contains(&from)
            && [1, 2, 4].contains(&to)
            && !(from == 4
                && to == 1
                && matches!(m, Message::Heartbeat { .. } | Message::Commit { .. }))
    });
    assert_eq!(h.r(4).commit_point(), 1, "c77 chosen");
    assert_eq!(h.r(1).commit_point(), 0);
    // n5's candidacy: n1's old promise arrives, and n3's fresh one.
    h.release(&|_, _, _| Deliver, &|_, _, _| Drop);
    h.tick_if(&[5], 6, &|from, to, m| match m {
        Message::Prepare { .. } => from == 5 && to == 3,
        Message::Promise { .. } => from == 3 && to == 5,
        _ => false,
    });
    if h.r(5).is_leader() {
        // Its phase 1 missed c77: it proposes c88 in slot 0, and n1 (which promised
        // only (3, n4) since its recovery) accepts it along with n3.
        h.register(5, 88);
        h.run_if(&within(&[1, 3, 5]));
    }
    h
}

#[test]
fn a_promise_from_before_a_recovery_does_not_count() {
    let mut h = stale_promise_scenario(Mutation::None);
    assert!(
        !h.r(5).is_leader(),
        "n5 needs a promise from n1's current incarnation"
    );
    h.executed_agree().expect("no divergence");
    // Heal: one value in slot 0 everywhere.
    h.tick_if(&[1, 2, 3, 4, 5], 300, &|_, _, _| true);
    let executed = h.executed_agree().expect("no divergence after healing");
    assert_eq!(executed.get(&0), Some(&register(77)));
}

#[test]
fn the_stale_promise_scenario_catches_recovery_without_incarnations() {
    let h = stale_promise_scenario(Mutation::RecoveryWithoutIncarnations);
    let err = h
        .executed_agree()
        .expect_err("without incarnations n5 chooses c88 where c77 was chosen");
    assert!(err.contains("slot 0"), "{err}");
}
