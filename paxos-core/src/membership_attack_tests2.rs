//! Second adversarial review of the membership-change fixes: two sequences that got
//! past the first fix for recoveries (a second recovery on entering an epoch noted
//! when recovering, which a learner epoch or a checkpoint jumping two epochs skipped).
//! The fix now in place, a recovery that waits until no stop-sign is undecided in its
//! log, makes both safe; the broken variant `RecoveryIgnoresStopSigns` replays the bug.

use crate::mutation::Mutation;
use crate::scripted::{leader_with_session, members, within, Deliver, Drop, Scripted as H};
use crate::{AcceptorStatus, Message, NodeId, Slot};

/// The slot where `id` holds a value whose summary contains `needle`.
fn slot_of(h: &mut H, id: NodeId, needle: &str) -> Option<Slot> {
    let r = h.r(id);
    let end = r.commit_point().max(r.executed()) + 16;
    r.log(0..end)
        .into_iter()
        .find(|i| {
            i.value
                .as_ref()
                .is_some_and(|v| v.summary().contains(needle))
        })
        .map(|i| i.slot)
}

/// Epochs 0 -> 1 -> 2 where F (n1) is removed in epoch 1 and added back in epoch 2.
/// F votes in epoch 2, is wiped, recovers among epoch-0 members that only know the
/// epoch-1 stop-sign, passes through epoch 1 as a *learner* (so the noted epoch 1
/// triggers nothing and is then forgotten), and enters epoch 2 as a voter with no
/// second recovery: it has forgotten its epoch-2 vote.
///
/// n = 7, epoch 0 = {1..7}, epoch 1 = {2,3,4}, epoch 2 = {1,2,3}. One wipe (F).
#[test]
fn removed_then_readded_member_wiped_skips_second_recovery_through_learner_epoch() {
    readded_scenario(Mutation::None)
        .expect("one value per slot: the recovery waits for the stop-sign");
    assert!(
        readded_scenario(Mutation::RecoveryIgnoresStopSigns).is_err(),
        "the broken variant chooses a second value in a slot F voted on"
    );
}

/// The sequence above; the outcome of `executed_agree` at the end.
fn readded_scenario(m: Mutation) -> Result<(), String> {
    let mut h = H::new(7, true, |c| c.mutation = m);
    leader_with_session(&mut h);
    // 1. n1 proposes epoch 1 = {2,3,4}; everyone accepts, only n2, n3 learn it chosen.
    h.r(1)
        .reconfigure(members(&[2, 3, 4]))
        .expect("leader proposes");
    h.run(&|from, to, m| {
        let only_accepts_from_n1 = from == 1 && matches!(m, Message::Accept { .. });
        if to >= 4 && !only_accepts_from_n1 {
            Drop
        } else {
            Deliver
        }
    });
    // n2, n3 time out; whoever tells them of n1's commit point (n1 itself answers
    // their old-epoch pre-votes), they catch up.
    let g123 = within(&[1, 2, 3]);
    h.tick_until(&[2, 3], 400, &g123, |h| {
        h.r(2).membership().epoch == 1 && h.r(3).membership().epoch == 1
    });
    assert_eq!(h.r(1).membership().epoch, 1);
    assert_eq!(h.r(2).membership().epoch, 1);
    assert_eq!(h.r(3).membership().epoch, 1);
    assert_eq!(h.r(4).membership().epoch, 0);
    // 2. Epoch 1: n2 leads with n3, proposes epoch 2 = {1,2,3}.
    h.r(2).start_election_now();
    h.run(&g123);
    assert!(h.r(2).is_leader(), "n2 leads epoch 1");
    h.tick(&[2, 3], 5, &g123);
    assert!(h.r(2).is_leader(), "n2 leads epoch 1");
    h.r(2)
        .reconfigure(members(&[1, 2, 3]))
        .expect("epoch-1 leader proposes");
    h.run(&g123);
    // n1 (a learner now) polls and reaches epoch 2.
    h.tick_until(&[1, 2, 3], 100, &g123, |h| {
        h.r(1).membership().epoch == 2 && h.r(3).membership().epoch == 2
    });
    assert_eq!(h.r(1).membership().epoch, 2);
    assert_eq!(h.r(3).membership().epoch, 2);
    // 3. Epoch 2: n2 leads; c501 is chosen with n1's vote, n3 does not accept it.
    h.r(2).start_election_now();
    h.run(&g123);
    assert!(h.r(2).is_leader(), "n2 leads epoch 2");
    h.register(2, 501);
    h.run(&within(&[1, 2]));
    let s501 = slot_of(&mut h, 2, "501").expect("c501 at n2");
    assert!(h.r(2).executed() > s501, "c501 executed at n2");
    // 4. F = n1 wiped; n2 and n3 are cut off. F recovers among n4..n7 (epoch 0).
    h.wipe(1);
    let old = within(&[1, 4, 5, 6, 7]);
    h.tick_until(&[1], 200, &old, |h| {
        h.r(1).acceptor_status() == AcceptorStatus::Voter
    });
    if m != Mutation::None {
        assert_eq!(
            h.r(1).acceptor_status(),
            AcceptorStatus::Voter,
            "F recovered"
        );
    }
    assert_eq!(h.r(1).membership().epoch, 0);
    // 5. F and n4..n7 elect an epoch-0 leader that re-proposes the stop-sign: F
    //    enters epoch 1 as a learner.
    h.tick_until(&[1, 4, 5, 6, 7], 400, &old, |h| {
        h.r(1).membership().epoch >= 1
    });
    if m != Mutation::None {
        assert_eq!(h.r(1).membership().epoch, 1, "F in epoch 1 (a learner)");
    }
    // 6. F fetches from n3 (n2 still cut off): stop-sign 2, F enters epoch 2.
    let f13 = within(&[1, 3]);
    h.tick_until(&[1], 400, &f13, |h| h.r(1).membership().epoch == 2);
    if m != Mutation::None {
        assert_eq!(h.r(1).membership().epoch, 2, "F in epoch 2");
    }
    // 7. F and n3 are a majority of epoch 2.
    h.tick_until(&[1, 3], 600, &f13, |h| {
        h.r(1).acceptor_status() == AcceptorStatus::Voter
            && (h.r(1).is_leader() || h.r(3).is_leader())
    });
    if h.r(1).acceptor_status() == AcceptorStatus::Voter {
        // F votes in epoch 2 without a second recovery: the new leader's merge
        // (F and n3) has nothing in c501's slot.
        let m: NodeId = if h.r(3).is_leader() { 3 } else { 1 };
        h.register(m, 502);
        h.run(&f13);
        h.tick(&[1, 3], 20, &f13);
    }
    h.executed_agree().map(|_| ())
}

fn cp(h: &mut H, id: NodeId) -> String {
    let s = h.r(id).status();
    format!(
        "n{id}: checkpoint {:?} compacted_below {} installed {} commit {} epoch {} status {:?} inc {}",
        s.checkpoint,
        s.compacted_below,
        s.snapshots_installed,
        s.commit_point,
        h.r(id).membership().epoch,
        s.acceptor,
        s.incarnation
    )
}

/// Epochs 0 -> 1 -> 2 with F (n1) a member throughout. F votes in epoch 2, is wiped,
/// recovers among epoch-0 members (noting epoch 1 only), then jumps from epoch 0 to
/// epoch 2 by installing a checkpoint: `enter_epoch(2)` finds 2 not noted and drops
/// the noted 1, so F votes in epoch 2 without a second recovery.
///
/// n = 5, epoch 0 = {1..5}, epoch 1 = epoch 2 = {1,2,3}; checkpoints every 4 slots.
#[test]
fn wiped_member_jumps_two_epochs_by_checkpoint_and_skips_second_recovery() {
    two_epochs_scenario(Mutation::None)
        .expect("one value per slot: the recovery waits for the stop-sign");
    assert!(
        two_epochs_scenario(Mutation::RecoveryIgnoresStopSigns).is_err(),
        "the broken variant chooses a second value in a slot F voted on"
    );
}

/// The sequence above; the outcome of `executed_agree` at the end.
fn two_epochs_scenario(m: Mutation) -> Result<(), String> {
    let mut h = H::new(5, true, |c| {
        c.mutation = m;
        c.checkpoint_interval = 4;
        c.checkpoint_slots_per_session = 0;
    });
    leader_with_session(&mut h);
    // 1. Epoch 1 = {1,2,3}: everyone accepts; only n1, n2 learn it chosen.
    h.r(1)
        .reconfigure(members(&[1, 2, 3]))
        .expect("leader proposes");
    let g12 = within(&[1, 2]);
    h.run(&|from, to, m| {
        let accept_from_n1 = from == 1 && to >= 3 && matches!(m, Message::Accept { .. });
        if accept_from_n1 || (to <= 2 && from <= 2) || (from >= 3 && to == 1) {
            Deliver
        } else {
            Drop
        }
    });
    h.tick_until(&[1, 2], 400, &g12, |h| {
        h.r(2).membership().epoch == 1 && h.r(1).is_leader()
    });
    assert_eq!(h.r(2).membership().epoch, 1);
    assert_eq!(h.r(3).membership().epoch, 0);
    // 2. Epoch 2 = {1,2,3} from n1, chosen by {1,2}.
    h.tick(&[1, 2], 3, &g12);
    let leader = if h.r(1).is_leader() { 1 } else { 2 };
    h.r(leader)
        .reconfigure(members(&[1, 2, 3]))
        .expect("epoch-1 leader proposes");
    h.run(&g12);
    // n2 leads epoch 2 (its heartbeats carry its commit point).
    h.tick_until(&[1, 2], 400, &g12, |h| {
        h.r(1).membership().epoch == 2 && h.r(2).membership().epoch == 2
    });
    h.r(2).start_election_now();
    h.run(&g12);
    assert!(h.r(2).is_leader(), "n2 leads epoch 2");
    // 3. Enough writes for n2 to checkpoint and compact; c501 is the last one, above
    //    n2's last checkpoint.
    for c in 600..640 {
        let st = h.r(2).status();
        if st.compacted_below > 2 && st.checkpoint == Some(st.executed) {
            break;
        }
        h.register(2, c);
        h.run(&g12);
    }
    h.register(2, 501);
    h.run(&g12);
    let s501 = slot_of(&mut h, 2, "501").expect("c501 at n2");
    assert!(h.r(2).executed() > s501);
    eprintln!("c501 at {s501}; {}", cp(&mut h, 2));
    let cp2 = h.r(2).status().checkpoint.expect("n2 checkpointed");
    assert!(cp2 <= s501, "c501 above n2's checkpoint");
    // 4. F wiped; recovers among {3,4,5} (epoch 0).
    h.wipe(1);
    let old = within(&[1, 3, 4, 5]);
    h.tick_until(&[1], 200, &old, |h| {
        h.r(1).acceptor_status() == AcceptorStatus::Voter
    });
    if m != Mutation::None {
        assert_eq!(
            h.r(1).acceptor_status(),
            AcceptorStatus::Voter,
            "F recovered"
        );
    }
    assert_eq!(h.r(1).membership().epoch, 0);
    // 5. F hears of n2 (n2's heartbeats, or its answer to F's old-epoch pre-vote) and
    //    fetches: n2 compacted, so it sends its checkpoint. Entries are lost.
    let snap_only = |from: NodeId, to: NodeId, m: &Message| {
        let pair = (from == 1 && to == 2) || (from == 2 && to == 1);
        let entries = matches!(m, Message::FetchReply { entries, .. } if !entries.is_empty());
        if pair && !entries {
            Deliver
        } else {
            Drop
        }
    };
    h.tick_until(&[1, 2], 400, &snap_only, |h| h.r(1).membership().epoch == 2);
    if m != Mutation::None {
        assert_eq!(h.r(1).membership().epoch, 2, "F installed n2's checkpoint");
    }
    // 6. n3 catches up from F the same way (n3 was never wiped); n2 is cut off.
    let f3 = within(&[1, 3]);
    h.tick_until(&[1, 3], 400, &f3, |h| h.r(3).membership().epoch == 2);
    if m != Mutation::None {
        assert_eq!(h.r(3).membership().epoch, 2, "n3 installed F's checkpoint");
    }
    h.tick_until(&[1, 3], 600, &f3, |h| {
        h.r(1).acceptor_status() == AcceptorStatus::Voter
            && (h.r(1).is_leader() || h.r(3).is_leader())
    });
    if h.r(1).acceptor_status() == AcceptorStatus::Voter {
        let m: NodeId = if h.r(3).is_leader() { 3 } else { 1 };
        if h.r(m).is_leader() {
            h.register(m, 502);
            h.run(&f3);
            h.tick(&[1, 3], 20, &f3);
        }
    }
    h.executed_agree().map(|_| ())
}
