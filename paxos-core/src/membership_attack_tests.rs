//! Adversarial review of the membership-change feature (stop-signs, epochs, R1–R4):
//! the sequences a helper session found against the first version, one safety bug and
//! one liveness bug, both fixed. Each test drives real [`Replica`](crate::Replica)s by
//! hand through one message sequence.

use crate::mutation::Mutation;
use crate::scripted::{all, leader_with_session, members, Deliver, Drop, Scripted as H};
use crate::{Message, NodeId};

/// Found by review (a liveness bug, now fixed): in the first version a replica that
/// had seen a ballot of a later epoch never campaigned in its own; it only probed its
/// peers for a commit point. If every replica that executed the
/// stop-sign is down, the others stay in the old epoch for good, although a majority
/// of both configurations is up and connected and an old-epoch election would simply
/// re-propose the (accepted) stop-sign and execute it.
///
/// n = 3, members {1,2,3} -> {1,2,3} (epoch 1), one crash:
/// 1. n1 leads, `reconfigure` puts the stop-sign in slot s; its ACCEPT to n3 is lost,
///    n2 accepts: chosen. n1 executes it (epoch 1) and steps down; nobody is told the
///    commit point.
/// 2. n1's next tick starts a pre-vote of epoch 1: n2 and n3 drop it but remember its
///    round (`sent_in_later_epoch` -> `saw_round`). n1 crashes and stays down.
/// 3. n2 and n3 tick for ever: each election timeout ended in `probe_peers`; neither
///    knew of a commit point past s; no election was ever started.
///
/// Now a replica behind campaigns in its own epoch when its probes find nowhere to
/// catch up from: the old-epoch leader re-proposes the stop-sign and the epoch ends.
#[test]
fn a_later_epoch_prevote_then_a_crash_wedges_the_old_majority() {
    let mut h = H::new(3, true, |_| {});
    leader_with_session(&mut h);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3]))
        .expect("leader proposes");
    h.run(&|from, to, m| {
        if from == 1 && to == 3 && matches!(m, Message::Accept { .. }) {
            Drop
        } else {
            Deliver
        }
    });
    assert_eq!(
        h.r(1).membership().epoch,
        1,
        "stop-sign chosen and executed at n1"
    );
    assert_eq!(h.r(2).membership().epoch, 0);
    // n1 campaigns in epoch 1 at its next tick; n2 and n3 see the pre-vote.
    h.tick(&[1], 2, &all);
    h.crash(1);
    h.tick(&[2, 3], 3000, &all);
    for id in [2, 3] {
        assert!(
            h.r(id).commit_point() > s && h.r(id).membership().epoch == 1,
            "n{id} never got past the stop-sign (commit point {}, epoch {}): \
             n2 and n3 are a majority of both configurations",
            h.r(id).commit_point(),
            h.r(id).membership().epoch
        );
    }
    assert!(
        h.r(2).is_leader() || h.r(3).is_leader(),
        "no leader among the majority that is up"
    );
    h.executed_agree().expect("one value per slot");
}

/// Control for the test above: the same sequence without n1's epoch-1 pre-vote
/// reaching n2 and n3 makes progress (the old-epoch election re-proposes the stop-sign).
#[test]
fn control_without_the_later_epoch_prevote_the_old_majority_moves_on() {
    let mut h = H::new(3, true, |_| {});
    leader_with_session(&mut h);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3]))
        .expect("leader proposes");
    h.run(&|from, to, m| {
        if from == 1 && to == 3 && matches!(m, Message::Accept { .. }) {
            Drop
        } else {
            Deliver
        }
    });
    assert_eq!(h.r(1).membership().epoch, 1);
    h.crash(1);
    h.tick(&[2, 3], 3000, &all);
    for id in [2, 3] {
        assert!(h.r(id).commit_point() > s, "n{id}");
        assert_eq!(h.r(id).membership().epoch, 1, "n{id}");
    }
    h.executed_agree().expect("one value per slot");
}

/// Whether `id` is on the `a` side of a partition `a` | rest.
fn side(a: &[NodeId], id: NodeId) -> bool {
    a.contains(&id)
}

/// Found by review (a safety bug, now fixed): a member that voted in epoch 1 and then loses its storage restarts
/// with the founding members (as `bank node` and the simulation restart it), recovers
/// there from a majority of *epoch 0* (replicas that never heard of epoch 1), and
/// becomes a voter. When it later executes the stop-sign it enters epoch 1 as a voter
/// (`enter_epoch` starts a recovery only for a replica that is not one): the votes it
/// cast in epoch 1 before the wipe are forgotten, and nobody in the grant majority
/// could have reported them. A value chosen in epoch 1 is lost and another is chosen
/// in its slot. One wipe; everything else is message delay (n1 is cut off, not down).
///
/// n = 5, epoch 0 = {1,2,3,4,5}, epoch 1 = {1,2,3} (n4, n5 removed):
/// 1. n1 leads; the stop-sign goes in slot s, accepted by everyone, chosen; n1
///    executes it. From here {n1,n2} are cut off from {n3,n4,n5}.
/// 2. n2 catches up from n1 (epoch 1); one of them, L, leads epoch 1 with the other's
///    vote; `register c501` is chosen in slot s+1 (quorum 2 of 3) and executed at L.
/// 3. The other one, F, loses its storage and restarts pristine with the founding
///    members; L is cut off from everyone. F's RECOVER (epoch 0) is granted by n3,
///    n4, n5, which are still in epoch 0: F is a voter of epoch 0 again.
/// 4. {F,n3,n4,n5} elect an epoch-0 leader, whose merge re-proposes the stop-sign
///    (R2): chosen again, executed; F and n3 enter epoch 1 (F as a voter, no recovery).
/// 5. F and n3 are a quorum of epoch 1: n3 (or F) leads with an empty merge at s+1 and
///    chooses `register c502` there, which contradicts L's `register c501`.
///
/// The fix (`undecided_stop_sign`): F's recovery does not complete while the stop-sign
/// it adopted from the grants is undecided; once it is chosen, F enters epoch 1 still
/// recovering and starts over among epoch 1's members; without L it cannot complete,
/// and does not vote. Once L is back, F's recovery adopts `register c501`.
#[test]
fn a_member_wiped_after_voting_in_epoch_1_recovers_in_epoch_0_and_forgets_its_vote() {
    wiped_after_voting_in_epoch_1(Mutation::None).expect("one value per slot");
    let broken = wiped_after_voting_in_epoch_1(Mutation::RecoveryIgnoresStopSigns);
    assert!(
        broken.is_err(),
        "the broken variant (no second recovery) chooses another value in s+1"
    );
}

/// The sequence above; the outcome of `executed_agree` at the end.
fn wiped_after_voting_in_epoch_1(mutation: Mutation) -> Result<(), String> {
    let mut h = H::new(5, true, |c| c.mutation = mutation);
    leader_with_session(&mut h);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3]))
        .expect("leader proposes");
    h.run(&all);
    assert_eq!(h.r(1).membership().epoch, 1, "stop-sign chosen at n1");
    for id in 2..=5 {
        assert_eq!(h.r(id).membership().epoch, 0, "n{id} only accepted it");
    }
    // 2. {1,2} | {3,4,5}.
    let cut12 = |from: NodeId, to: NodeId, _: &Message| {
        if side(&[1, 2], from) == side(&[1, 2], to) {
            Deliver
        } else {
            Drop
        }
    };
    for _ in 0..400 {
        h.tick(&[1, 2], 1, &cut12);
        if (h.r(1).is_leader() || h.r(2).is_leader()) && h.r(2).membership().epoch == 1 {
            break;
        }
    }
    let l: NodeId = if h.r(1).is_leader() { 1 } else { 2 };
    let f: NodeId = 3 - l;
    assert!(h.r(l).is_leader(), "an epoch-1 leader among n1, n2");
    assert_eq!(h.r(l).membership().epoch, 1);
    h.register(l, 501);
    h.run(&cut12);
    let at_l = h.r(l).slot(s + 1);
    assert!(
        at_l.value
            .as_ref()
            .is_some_and(|v| v.summary().contains("501")),
        "register c501 chosen in s+1 at n{l}: {:?}",
        at_l
    );
    assert!(h.r(l).executed() > s + 1, "and executed at n{l}");
    // 3. F loses its storage; L is cut off from everyone (its messages are delayed).
    h.wipe(f);
    let lone = move |from: NodeId, to: NodeId, _: &Message| {
        if from == l || to == l {
            Drop
        } else {
            Deliver
        }
    };
    let others: Vec<NodeId> = (1..=5).filter(|id| *id != l).collect();
    // F recovers first (only F ticks: n3, n4, n5 just answer), then everyone but L.
    h.run(&lone);
    for _ in 0..200 {
        if h.r(f).acceptor_status() == crate::AcceptorStatus::Voter {
            break;
        }
        h.tick(&[f], 1, &lone);
    }
    if mutation != Mutation::None {
        assert_eq!(
            h.r(f).acceptor_status(),
            crate::AcceptorStatus::Voter,
            "F recovered"
        );
        assert_eq!(h.r(f).membership().epoch, 0, "F recovered in epoch 0");
    }
    for _ in 0..600 {
        h.tick(&others, 1, &lone);
        if h.r(f).acceptor_status() == crate::AcceptorStatus::Voter
            && h.r(f).membership().epoch == 1
            && h.r(3).membership().epoch == 1
            && (h.r(3).is_leader() || h.r(f).is_leader())
        {
            break;
        }
    }
    if mutation == Mutation::None {
        assert_ne!(
            h.r(f).acceptor_status(),
            crate::AcceptorStatus::Voter,
            "F does not vote in epoch 1 before recovering among its members"
        );
        // L is back: F recovers from L and n3 (L's grant holds c501 in s+1), and an
        // epoch-1 leader serves.
        for _ in 0..800 {
            h.tick(&[1, 2, 3, 4, 5], 1, &all);
            let voting = [1, 2, 3]
                .iter()
                .all(|id| h.r(*id).acceptor_status() == crate::AcceptorStatus::Voter);
            if voting && [1, 2, 3].iter().any(|id| h.r(*id).is_leader()) {
                break;
            }
        }
        let m = [1, 2, 3]
            .into_iter()
            .find(|id| h.r(*id).is_leader())
            .expect("an epoch-1 leader once L is back");
        h.register(m, 502);
        h.run(&all);
        h.tick(&[1, 2, 3, 4, 5], 40, &all);
        let at_f = h.r(f).slot(s + 1);
        assert!(
            at_f.value
                .as_ref()
                .is_some_and(|v| v.summary().contains("501")),
            "F holds c501 in s+1: {at_f:?}"
        );
        return h.executed_agree().map(|_| ());
    }
    assert_eq!(
        h.r(f).acceptor_status(),
        crate::AcceptorStatus::Voter,
        "F votes again"
    );
    assert_eq!(
        h.r(f).membership().epoch,
        1,
        "F entered epoch 1 (as a voter)"
    );
    let m: NodeId = if h.r(3).is_leader() { 3 } else { f };
    assert!(h.r(m).is_leader(), "an epoch-1 leader among F and n3");
    h.register(m, 502);
    h.run(&lone);
    h.tick(&others, 20, &lone);
    h.executed_agree().map(|_| ())
}
