//! A second adversarial review of founding / recovery from lost state, against the
//! version fixed after the first review (`attack_tests.rs`). Each test drives real
//! [`Replica`]s by hand through one message sequence. The three liveness bugs it found are fixed and kept as
//! regression tests; the ignored test documents a limitation, not a bug.

use crate::scripted::{all, is_never_voted, is_recover, none, Deliver, Drop, Hold, Scripted as H};
use crate::{AcceptorStatus, Ballot, Message, NodeId};

/// LIVENESS BUG: once a founding attempt has a NEVER-VOTED answer from some peer, that
/// peer is never asked again (`send_recover` skips `never_voted`), even after other
/// peers' RECOVER-GRANTs turned the attempt into a recovery. With grants from fewer than
/// a majority and NEVER-VOTED from the rest, the attempt can neither found (not
/// unanimous) nor recover (too few grants), and nothing restarts it (only a refusal
/// does): the replica never votes, although every member is up and connected.
///
/// n = 5 (f = 2); one crash-restart (no storage loss) while n3 is still founding:
/// 1. All start pristine. n3's RECOVERs to n4 and n5 are lost; n1 and n2 answer n3
///    NEVER-VOTED. n3 answers everyone NEVER-VOTED, so n1, n2, n4, n5 found.
/// 2. n1 crashes and restarts from its storage (a voter that promised nothing: it
///    restarts with `max_round_seen` 0), and is elected at (1,n1) by n2, n4, n5;
///    `register c100` is chosen.
/// 3. The links heal. n3 retransmits its RECOVER (ballot (1,n3) > (1,n1)) to n4 and n5
///    only (n1 and n2 are in `never_voted`); both have voted, so both grant. n3 has 2
///    grants of the 3 it needs and NEVER-VOTED from the rest: stuck for good.
#[test]
fn a_never_voted_answer_then_grants_wedge_the_newcomer() {
    let mut h = H::new(5, false, |_| {});
    let cut = |from: NodeId, to: NodeId, m: &Message| {
        if from == 3 && (to == 4 || to == 5) && is_recover(m) {
            Drop
        } else {
            Deliver
        }
    };
    h.run(&cut);
    for id in [1, 2, 4, 5] {
        assert_eq!(h.r(id).acceptor_status(), AcceptorStatus::Voter, "n{id}");
    }
    assert_eq!(h.r(3).acceptor_status(), AcceptorStatus::Pristine);
    // 2. n1 restarts (storage intact) and runs for leader. (Since the fix, n3 takes
    //    n1's PREPARE as proof that a majority votes and recovers at once, which may
    //    cost n1 this election: the script no longer insists on it.)
    h.restart(1);
    h.r(1).start_election_now();
    h.run(&cut);
    if h.r(1).is_leader() {
        h.register(1, 100);
        h.run(&cut);
    }
    h.tick(&[1, 2, 4, 5], 3, &cut);
    // 3. Everything heals, for a long time.
    h.tick(&[1, 2, 3, 4, 5], 2000, &all);
    h.executed_agree().expect("one value per slot");
    assert_eq!(
        h.r(3).acceptor_status(),
        AcceptorStatus::Voter,
        "n3 never recovered although every member is up and connected"
    );
}

/// LIVENESS BUG (same root): a pristine replica that *learns* a chosen value (a leader's
/// HEARTBEAT, then a FETCH) before the last NEVER-VOTED answer arrives turns the
/// attempt into a recovery in `found()` — but every peer is in `never_voted`, so no
/// RECOVER is ever sent again and no grant can come.
///
/// n = 3, no crash, no wipe; delays only:
/// 1. All start pristine. n1's and n2's NEVER-VOTED answers to n3 are delayed; n3's
///    later RECOVER retransmissions are lost. n1 and n2 found (n3 answered them).
/// 2. n1 is elected and chooses `register c100`; its HEARTBEAT reaches n3, which
///    fetches slot 0 (a pristine replica learns chosen values).
/// 3. The delayed NEVER-VOTED answers arrive: `found()` sees a non-empty log and sets
///    status Recovering, keeping the attempt with every peer in `never_voted`.
/// 4. Everything heals for 2000 ticks: n3 never sends a RECOVER and never votes.
#[test]
fn learning_before_the_last_never_voted_wedges_the_newcomer() {
    let mut h = H::new(3, false, |_| {});
    let f = |from: NodeId, to: NodeId, m: &Message| {
        if to == 3 && is_never_voted(m) {
            Hold
        } else if from == 3 && is_recover(m) {
            Drop
        } else {
            Deliver
        }
    };
    // n3's first RECOVERs go out (delivered), their answers are held.
    h.run(&|_, to, m| {
        if to == 3 && is_never_voted(m) {
            Hold
        } else {
            Deliver
        }
    });
    assert_eq!(h.held.len(), 2);
    assert_eq!(h.r(1).acceptor_status(), AcceptorStatus::Voter);
    assert_eq!(h.r(2).acceptor_status(), AcceptorStatus::Voter);
    h.r(1).start_election_now();
    h.run(&f);
    assert!(h.r(1).is_leader());
    h.register(1, 100);
    h.run(&f);
    h.tick(&[1, 2, 3], 10, &f);
    assert_eq!(
        h.r(3).commit_point(),
        1,
        "n3 learned slot 0 while not voting"
    );
    // Since the fix, the leader's HEARTBEAT already made n3 a recovering replica.
    assert_ne!(h.r(3).acceptor_status(), AcceptorStatus::Voter);
    // 3. The delayed answers arrive.
    h.release(&all, &all);
    assert_ne!(h.r(3).acceptor_status(), AcceptorStatus::Pristine);
    assert!(h.r(3).incarnation() >= 1, "n3 recovers, it does not found");
    // 4. Heal.
    h.tick(&[1, 2, 3], 2000, &all);
    h.executed_agree().expect("one value per slot");
    assert_eq!(
        h.r(3).acceptor_status(),
        AcceptorStatus::Voter,
        "n3 never recovered although every member is up and connected"
    );
}

/// LIVENESS BUG (same root, with a wiped replica): a replica that lost its storage asks
/// everyone; a voter that has not voted *yet* answers NEVER-VOTED and is never asked
/// again, even once it has voted, so the grants must all come from the members that had
/// voted when the RECOVER arrived. With one of those down (within the fault bound), the
/// recovery can never complete, although a majority is up and connected and the voter
/// that answered NEVER-VOTED would now grant.
///
/// n = 5 (f = 2): n3 crashed for good and n5 recovering is 2 faults.
/// 1. Bootstrapped voters. n1 is elected at (1,n1) by n2 and n3 (n4 hears nothing) and
///    `register c100` is chosen by n1, n2, n3.
/// 2. n3 crashes for good. n5 loses its storage; its RECOVER (ballot (1,n5)) reaches
///    everyone: n4 (a voter that never voted) answers NEVER-VOTED, then the grants of
///    n1 and n2 arrive (a grant arriving first would make n5 ignore the NEVER-VOTED
///    and ask n4 again).
/// 3. Everything heals: n1, n2, n4 elect a leader and keep committing (n4 now voted),
///    but n5 has 2 grants of 3, never asks n4 again, and never votes.
#[test]
fn a_never_voted_voter_is_never_asked_again_by_a_wiped_replica() {
    let mut h = H::new(5, true, |_| {});
    let no4 = |from: NodeId, to: NodeId, _: &Message| {
        if from == 4 || to == 4 {
            Drop
        } else {
            Deliver
        }
    };
    h.r(1).start_election_now();
    h.run(&no4);
    assert!(h.r(1).is_leader());
    h.register(1, 100);
    h.run(&no4);
    h.tick(&[1, 2, 3], 3, &no4);
    assert_eq!(h.r(3).executed(), 1);
    assert_eq!(h.r(4).promised(), Ballot::ZERO);
    // 2. n3 down for good; n5 wiped; its RECOVER reaches n1, n2, n4 before n4 hears
    //    from any leader.
    h.crash(3);
    h.wipe(5);
    let recovery = |m: &Message| {
        matches!(
            m,
            Message::Recover { .. }
                | Message::RecoverGrant { .. }
                | Message::NeverVoted { .. }
                | Message::RecoverRefused { .. }
        )
    };
    // n4's NEVER-VOTED arrives before the grants (which are delayed a little).
    h.run(&|from, to, m| {
        if from == 1 && to == 4 {
            Drop
        } else if to == 5 && matches!(m, Message::RecoverGrant { .. }) {
            Hold
        } else if (from == 5 || to == 5) && !recovery(m) {
            Drop
        } else {
            Deliver
        }
    });
    assert_eq!(h.r(5).acceptor_status(), AcceptorStatus::Pristine);
    assert_eq!(h.held.len(), 2, "n1 and n2 granted");
    h.release(&all, &none);
    assert_eq!(h.r(5).acceptor_status(), AcceptorStatus::Recovering);
    // 3. Heal (n3 stays down).
    h.tick(&[1, 2, 4, 5], 2000, &all);
    h.executed_agree().expect("one value per slot");
    assert!(h.r(4).promised() > Ballot::ZERO, "n4 has voted since");
    assert_eq!(
        h.r(5).acceptor_status(),
        AcceptorStatus::Voter,
        "n5 never recovered although n1, n2, n4, n5 are up and connected"
    );
}

/// LIMITATION (inherent to unanimous founding, not a defect of the code): a member that
/// is down at the very first start keeps the others from ever founding the cluster,
/// though they are a majority, up and connected. Founding on fewer answers would be
/// unsafe (a wiped replica could not tell a new cluster from one whose only other
/// holder of a chosen value is slow), and `spawn_node` offers no explicit bootstrap.
#[test]
#[ignore = "LIMITATION: n-1 members cannot found while one member is down at first start"]
fn one_member_down_at_first_start_keeps_the_cluster_unfounded() {
    let mut h = H::new(3, false, |_| {});
    h.crash(3);
    h.tick(&[1, 2], 2000, &all);
    assert_eq!(
        h.r(1).acceptor_status(),
        AcceptorStatus::Voter,
        "never founded"
    );
}
