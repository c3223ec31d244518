//! Adversarial scripts against the founding / recovery / commit-point rules, written by
//! a review that tried to break them: each test drives real [`Replica`]s by hand
//! through one message sequence. Both sequences broke the first version of recovery;
//! they are kept as regression tests.

use crate::scripted::{all, is_never_voted, none, Deliver, Drop, Hold, Scripted as H};
use crate::{AcceptorStatus, Ballot, Message, NodeId, Request, Value};

/// BUG: the founding handshake's nonce comes from the replica's seeded RNG, so a
/// replica that lost its storage draws, in its next life, the very nonce of its first
/// founding attempt. NEVER-VOTED answers to that first life are still in flight (each
/// retransmitted RECOVER is answered again, so copies exist without any duplication by
/// the network) and count for the new life: it "founds" a cluster that exists, as a
/// voter with nothing promised or accepted, and lets a second value be chosen.
///
/// n = 3, one storage loss (within f = 1):
/// 1. all start pristine; n1's first RECOVER is answered with NEVER-VOTED by n2 and n3,
///    those answers are delayed; n1 retransmits, gets fresh answers, founds. n2 and n3
///    found too.
/// 2. n1 leads at (1, n1); `register c100` is chosen in slot 0 by {n1, n2} and
///    executed by both (n3 hears nothing).
/// 3. n1 loses its storage and restarts: same seed, same first nonce. The delayed
///    NEVER-VOTED answers of step 1 arrive: n1 founds again, empty, as incarnation 0.
/// 4. n2 is partitioned away (not crashed). n1 is elected at (1, n1) again by {n1, n3} (n3 never promised) and
///    chooses `register c200` in slot 0.
///
/// Broke the first version (n2 executed `register c100` in slot 0, n1 `register c200`):
/// fixed by a fresh seed at every start (`spawn_node`), so a new life's nonces differ.
#[test]
fn a_wiped_replica_refounds_from_stale_never_voted() {
    let mut h = H::new(3, false, |_| {});
    // 1. n1's first RECOVER: the answers are held in flight.
    h.run(&|from, to, m| {
        if from == 1 && matches!(m, Message::Recover { .. }) {
            Deliver
        } else if to == 1 && is_never_voted(m) {
            Hold
        } else {
            Drop
        }
    });
    assert_eq!(h.held.len(), 2, "n2 and n3 answered NEVER-VOTED");
    // n1 retransmits and founds with fresh answers; n2 and n3 found among themselves.
    h.tick(&[1, 2, 3], 6, &all);
    for id in 1..=3 {
        assert_eq!(h.r(id).acceptor_status(), AcceptorStatus::Voter, "n{id}");
    }
    // 2. n1 leads with n2; c100 chosen in slot 0 and executed by n1 and n2.
    let pair = |from: NodeId, to: NodeId, _: &Message| {
        if (from == 1 || from == 2) && (to == 1 || to == 2) {
            Deliver
        } else {
            Drop
        }
    };
    h.r(1).start_election_now();
    h.run(&pair);
    assert!(h.r(1).is_leader());
    h.register(1, 100);
    h.run(&pair);
    h.tick(&[1, 2], 3, &pair);
    assert_eq!(h.r(2).executed(), 1);
    assert!(h
        .replies
        .iter()
        .any(|(n, r)| *n == 1 && r.client == 100 && matches!(r.response, crate::Response::Ok(_))));

    // 3. n1 loses its storage; the delayed answers of its first life arrive.
    h.wipe(1);
    h.run(&none);
    h.release(&|_, _, _| Deliver, &none);
    // 4. n2 is cut off (alive, its messages lost); n1 and n3 elect n1 and choose c200
    //    in slot 0.
    let n13 = |from: NodeId, to: NodeId, _: &Message| {
        if from != 2 && to != 2 {
            Deliver
        } else {
            Drop
        }
    };
    if h.r(1).acceptor_status() == AcceptorStatus::Voter {
        h.r(1).start_election_now();
        h.run(&n13);
        h.register(1, 200);
        h.run(&n13);
        h.tick(&[1, 3], 3, &n13);
    }
    h.executed_agree().expect("one value per slot");
    assert_ne!(
        h.r(1).acceptor_status(),
        AcceptorStatus::Voter,
        "n1 must not vote before it has recovered"
    );
    // Heal: n1 recovers from n2 and n3 and executes c100 in slot 0 like n2.
    h.tick(&[1, 2, 3], 60, &all);
    assert_eq!(h.r(1).acceptor_status(), AcceptorStatus::Voter);
    let executed = h
        .executed_agree()
        .expect("one value per slot after healing");
    assert_eq!(
        executed.get(&0),
        Some(&Value::Request(Request::register(100)))
    );
}

/// BUG: a voter refuses a RECOVER only when it knows a *higher* incarnation
/// (`known > incarnation` in `on_recover`), not a higher-or-equal one as the module doc
/// says. A replica that loses its storage twice restarts at incarnation 1 both times
/// and, when its first attempt is refused by a voter that never heard of the first
/// recovery, is granted incarnation 1 *again*. Its second life then looks, to
/// candidates, exactly like its first: a PROMISE its first life made (still in flight)
/// counts, although the new life never made it.
///
/// n = 5 (f = 2), one replica (n3) wiped twice, one at a time; otherwise only losses
/// and one delay:
/// 0. n2 is elected at (1,n2) by everyone (nothing is proposed).
/// 1. n3 loses its storage (life A) and recovers as incarnation 1 with grants from
///    n1, n2, n4 (n5 hears nothing, so still knows incarnation 0 for n3).
/// 2. n1 runs for leader at (2,n1) (only n5 promises), then (3,n1), (4,n1), (5,n1)
///    (nothing arrives), then (6,n1): only n3 (life A) receives this PREPARE; its
///    PROMISE (incarnation 1, no entries) is delayed.
/// 3. n3 loses its storage again (life C, incarnation 1). Its RECOVER reaches n5 only,
///    which refuses knowing incarnation 0: n3 retries with incarnation 1 at (3,n3),
///    granted by n2, n4, n5 (n2 and n4 know incarnation 1 and do not refuse it).
/// 4. n4 is elected at (4,n4) by {n4, n3, n5} and chooses `register c100` in slot 0;
///    n4 and n3 execute it (n5 misses the commit point).
/// 5. The delayed PROMISE of life A reaches n1, which also gets n2's PROMISE (carrying
///    incarnation 1 for n3, nothing new): n1 leads at (6,n1) with {n1, n3(A), n2},
///    sees nothing in slot 0, and chooses `register c200` there with {n1, n2, n5}.
///
/// Broke the first version (n4 and n3 executed c100 in slot 0, n1 executed c200):
/// fixed by refusing an equal incarnation from another recovery attempt.
#[test]
fn a_twice_wiped_replica_reuses_its_incarnation() {
    let mut h = H::new(5, true, |_| {});
    // 0. The cluster has voted: n2 elected at (1,n2) by everyone.
    h.r(2).start_election_now();
    h.run(&all);
    assert!(h.r(2).is_leader());
    // 1. Life A of n3: recovers with grants from n1, n2, n4.
    h.wipe(3);
    h.run(&|from, to, _| {
        if from == 5 || to == 5 {
            Drop
        } else {
            Deliver
        }
    });
    assert_eq!(h.r(3).acceptor_status(), AcceptorStatus::Voter);
    assert_eq!(h.r(3).incarnation(), 1);

    // n5 stops believing in n2 (leader stickiness would make it ignore n1).
    h.tick(&[3, 5], 45, &none);
    // 2. n1's elections: (2,n1) reaches n5 only; then three that reach nobody; then
    //    (6,n1) reaches n3 only and its PROMISE is held.
    h.r(1).start_election_now();
    h.run(&|from, to, m| {
        if from == 1 && to == 5 && matches!(m, Message::Prepare { .. }) {
            Deliver
        } else {
            Drop
        }
    });
    assert_eq!(h.r(5).promised(), Ballot::new(2, 1));
    for _ in 0..3 {
        h.r(1).start_election_now();
        h.run(&none);
    }
    h.r(1).start_election_now();
    assert_eq!(h.r(1).promised(), Ballot::new(6, 1));
    h.run(&|from, to, m| match m {
        Message::Prepare { .. } if from == 1 && to == 3 => Deliver,
        Message::Promise { .. } if from == 3 && to == 1 => Hold,
        _ => Drop,
    });
    assert_eq!(h.held.len(), 1);

    // 3. Life C of n3: refused by n5 (knows incarnation 0) and by n2 and n4, which
    //    granted incarnation 1 to life A: it comes back as incarnation 2.
    h.wipe(3);
    h.run(&|from, to, m| match m {
        Message::Recover { .. } if from == 3 && to != 1 => Deliver,
        Message::RecoverRefused { .. } if from != 1 && to == 3 => Deliver,
        Message::RecoverGrant { .. } if from != 1 && to == 3 => Deliver,
        _ => Drop,
    });
    assert_eq!(h.r(3).acceptor_status(), AcceptorStatus::Voter);
    let life_c = h.r(3).incarnation();
    assert_eq!(life_c, 2, "life C must not reuse life A's incarnation");
    assert!(h.r(3).promised() < Ballot::new(6, 1));

    // 4. n4 elected at (4,n4) by {n4, n3, n5}; c100 chosen in slot 0; n5 misses the
    //    commit point.
    let g = |from: NodeId, to: NodeId, m: &Message| {
        let grp = [3, 4, 5];
        if !grp.contains(&from) || !grp.contains(&to) {
            return Drop;
        }
        if from == 4 && to == 5 && matches!(m, Message::Heartbeat { .. } | Message::Commit { .. }) {
            return Drop;
        }
        if to == 5 && matches!(m, Message::Fetch { .. } | Message::FetchReply { .. }) {
            return Drop;
        }
        if from == 5 && matches!(m, Message::Fetch { .. }) {
            return Drop;
        }
        Deliver
    };
    h.r(4).start_election_now();
    h.run(&g);
    assert!(h.r(4).is_leader());
    assert!(h.r(4).promised() < Ballot::new(6, 1));
    h.register(4, 100);
    h.run(&g);
    h.tick(&[3, 4], 3, &g);
    assert_eq!(h.r(4).executed(), 1);
    assert_eq!(h.r(5).commit_point(), 0);

    // 5. Life A's PROMISE reaches n1; n2 promises too; n1 chooses c200 in slot 0.
    let g1 = |from: NodeId, to: NodeId, _: &Message| {
        let grp = [1, 2, 5];
        if grp.contains(&from) && grp.contains(&to) {
            Deliver
        } else {
            Drop
        }
    };
    h.release(&all, &g1);
    h.tick(&[1], 5, &g1);
    let leads = h.r(1).is_leader();
    if leads {
        h.register(1, 200);
        h.run(&g1);
        h.tick(&[1, 2], 3, &g1);
    }
    h.executed_agree().expect("one value per slot");
    assert!(
        life_c > 1 || !leads,
        "n1 counted a promise of n3's lost life (incarnation {life_c} reused)"
    );
}
