//! Third adversarial review of the membership changes, aimed at the two latest rules:
//! the "three timeouts" cap on waiting for a later epoch (`start_prevote`) and the
//! no-op an idle leader fills in when a recovering replica asks `Fetch{cp, cp}`
//! (`fill_next_slot`). Each test drives real replicas through one message sequence.

use crate::scripted::{leader_with_session, members, within, Deliver, Drop, Fate, Scripted as H};
use crate::{Message, NodeId, Slot, Value};

/// The value `id` holds in `slot`, if any.
fn value_at(h: &mut H, id: NodeId, slot: Slot) -> Option<Value> {
    h.r(id)
        .log(slot..slot + 1)
        .into_iter()
        .next()
        .and_then(|i| i.value)
}

/// Wipes `id` and lets it recover among `group` (only `id` ticks) until it holds
/// slot `s` with a commit point at or above it, or 200 ticks pass.
fn wipe_and_recover_among(h: &mut H, id: NodeId, s: Slot, group: &'static [NodeId]) {
    h.wipe(id);
    let r = within(group);
    h.tick_until(&[id], 200, &r, |h| {
        h.r(id).commit_point() >= s && value_at(h, id, s).is_some()
    });
}

/// The three-timeouts rule with the new epoch alive but out of reach.
///
/// n = 5, epoch 0 = epoch 1 = {1..5}:
/// 1. n1 leads; its stop-sign in slot s is accepted by n2 and n3 only (chosen); only
///    n1 counts it and executes it.
/// 2. n1 campaigns in epoch 1: its PREPARE (from slot s + 1) reaches everyone, so
///    n2..n5 all saw a later epoch and a commit point past theirs. n2 catches up
///    from n1 and enters epoch 1.
/// 3. {1, 2} (epoch 1, alive) is cut off from {3, 4, 5} (epoch 0). Each of n3..n5
///    probes and waits, then campaigns in epoch 0 after at most three timeouts:
///    the old-epoch leader's merge finds the stop-sign at n3, re-proposes it and
///    nothing above it; a request sent to that leader in epoch 0 is not proposed
///    above s. The stop-sign executes, {3, 4, 5} is a majority of epoch 1 and elects
///    a leader there, which serves requests. After healing, every replica agrees.
#[test]
fn laggards_cut_off_from_the_live_new_epoch_campaign_in_theirs_and_end_it() {
    let mut h = H::new(5, true, |_| {});
    leader_with_session(&mut h);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3, 4, 5]))
        .expect("leader proposes");
    h.run(&|from, to, m| match m {
        Message::Accept { .. } if from == 1 && (to == 2 || to == 3) => Deliver,
        Message::Accepted { .. } if to == 1 && (from == 2 || from == 3) => Deliver,
        _ => Drop,
    });
    assert_eq!(h.r(1).membership().epoch, 1, "n1 executed the stop-sign");
    for id in 2..=5 {
        assert_eq!(h.r(id).membership().epoch, 0);
    }
    // n1's epoch-1 PREPARE reaches everyone; n2 alone catches up from n1.
    h.r(1).start_election_now();
    h.run(&|from, to, m| {
        let prepare_of_n1 = from == 1 && matches!(m, Message::Prepare { .. });
        if prepare_of_n1 || (from <= 2 && to <= 2) {
            Deliver
        } else {
            Drop
        }
    });
    for _ in 0..50 {
        if h.r(2).membership().epoch == 1 {
            break;
        }
        h.tick(&[1, 2], 1, &within(&[1, 2]));
    }
    assert_eq!(h.r(2).membership().epoch, 1, "n2 caught up from n1");
    assert!(
        !h.r(1).is_leader(),
        "two of five cannot lead epoch 1 (n3..n5 refused: they have not reached it)"
    );
    // The cut: {1, 2} keep running in epoch 1 without a majority.
    let laggards = within(&[3, 4, 5]);
    let mut asked = false;
    for _ in 0..600 {
        h.tick(&[1, 2], 1, &within(&[1, 2]));
        // Accepts of the old-epoch leader are held until a request was sent to it.
        h.tick(&[3, 4, 5], 1, &|from, to, m| {
            if !asked && matches!(m, Message::Accept { .. } | Message::NewView { .. }) {
                Fate::Hold
            } else {
                laggards(from, to, m)
            }
        });
        if !asked {
            if let Some(l) = (3..=5).find(|id| h.r(*id).is_leader()) {
                assert_eq!(h.r(l).membership().epoch, 0, "an old-epoch leader");
                h.register(l, 300);
                asked = true;
                h.release(&laggards, &laggards);
            }
        }
        if (3..=5).all(|id| h.r(id).membership().epoch == 1)
            && (3..=5).any(|id| h.r(id).is_leader())
        {
            break;
        }
    }
    assert!(asked, "n3..n5 never campaigned in epoch 0");
    for id in 3..=5 {
        assert_eq!(h.r(id).membership().epoch, 1, "n{id} reached epoch 1");
        assert!(
            matches!(value_at(&mut h, id, s), Some(Value::Reconfigure(_))),
            "the stop-sign stayed in slot {s}"
        );
    }
    // The epoch-0 leader proposed nothing above the stop-sign: c300's registration
    // is chosen in epoch 1 (a leader of it serves the retry), never at s + 1 in 0.
    let leader = (3..=5).find(|id| h.r(*id).is_leader()).expect("a leader");
    h.register(leader, 300);
    h.tick(&[3, 4, 5], 10, &laggards);
    let registered = h.replies.iter().any(|(_, r)| {
        r.client == 300 && r.seq == 0 && matches!(r.response, crate::Response::Ok(_))
    });
    assert!(registered, "epoch 1 serves requests with {{3, 4, 5}}");
    // Heal: n1 and n2 catch up, and everyone agrees.
    h.tick(&[1, 2, 3, 4, 5], 60, &crate::scripted::all);
    h.executed_agree().expect("one value per slot");
    let top = h.r(leader).commit_point();
    for id in 1..=5 {
        assert!(h.r(id).commit_point() >= top, "n{id} caught up");
    }
}

/// The no-op fill at a stale leader, in a slot where the stop-sign was chosen.
///
/// n = 5, epoch 0 = epoch 1 = {1..5}:
/// 1. n2 leads at b2 and registers c100; then n1 is elected at b1 > b2 without n2
///    hearing of it, so n2 still believes it leads, idle, with its next slot and
///    commit point both s.
/// 2. n1's stop-sign in s is accepted by n4 and n5 (chosen: {1, 4, 5}); nobody counts
///    it. n1 crashes.
/// 3. n3 is wiped and recovers with grants from n1, n4, n5 (before n1's crash): it
///    adopts the stop-sign, undecided, and asks `Fetch{s, s}`.
/// 4. The FETCH reaches n2, the stale leader: its next slot is s and s is not chosen
///    in its log, so it proposes a no-op in s. The no-op must not be chosen: n4 and
///    n5 promised n3's recovery ballot, they refuse n2's ACCEPT, and n2 steps down.
///    The next leader re-proposes the stop-sign, every replica executes it.
#[test]
fn a_stale_leader_fills_a_no_op_where_the_stop_sign_was_chosen_and_fails() {
    let mut h = H::new(5, true, |_| {});
    h.r(2).start_election_now();
    h.run(&crate::scripted::all);
    assert!(h.r(2).is_leader());
    h.register(2, 100);
    h.run(&crate::scripted::all);
    let no2 = |from: NodeId, to: NodeId, _: &Message| {
        if from == 2 || to == 2 {
            Drop
        } else {
            Deliver
        }
    };
    // n3..n5 stop hearing from n2 (every message lost meanwhile).
    h.tick(&[1, 3, 4, 5], 45, &crate::scripted::none);
    h.r(1).start_election_now();
    h.run(&no2);
    assert!(h.r(1).is_leader(), "n1 leads without n2");
    assert!(h.r(2).is_leader(), "n2 still believes it leads");
    // n3..n5 answer n1's heartbeats (they count as voting for the change).
    h.tick(&[1, 3, 4, 5], 5, &no2);
    let s = h.r(2).commit_point();
    assert_eq!(h.r(1).commit_point(), s);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3, 4, 5]))
        .expect("leader proposes");
    assert_eq!(
        s,
        h.r(2).commit_point(),
        "n2's next slot is the stop-sign's"
    );
    h.run(&|from, to, m| match m {
        Message::Accept { .. } if from == 1 && (to == 4 || to == 5) => Deliver,
        _ => Drop,
    });
    assert_eq!(h.r(1).membership().epoch, 0, "nobody counted the stop-sign");
    // n3 wiped: recovers among n1, n4, n5.
    wipe_and_recover_among(&mut h, 3, s, &[1, 3, 4, 5]);
    assert!(
        matches!(value_at(&mut h, 3, s), Some(Value::Reconfigure(_))),
        "n3 adopted the stop-sign from its grants"
    );
    assert_ne!(h.r(3).acceptor_status(), crate::AcceptorStatus::Voter);
    h.crash(1);
    // n3's next question reaches n2 (and n4, n5).
    let mut filled = false;
    for _ in 0..20 {
        h.tick(&[3], 1, &|from, to, m| {
            let other_than_fetch = from == 3 && to == 2 && !matches!(m, Message::Fetch { .. });
            if from == 1 || to == 1 || other_than_fetch {
                Drop
            } else {
                Deliver
            }
        });
        filled |= matches!(value_at(&mut h, 2, s), Some(Value::Noop));
        if filled {
            break;
        }
    }
    assert!(filled, "the stale leader n2 filled slot {s} with a no-op");
    assert!(!h.r(2).is_leader(), "refused by n4 and n5: n2 stepped down");
    let rest = within(&[2, 3, 4, 5]);
    for _ in 0..600 {
        if (2..=5).all(|id| h.r(id).membership().epoch == 1)
            && h.r(3).acceptor_status() == crate::AcceptorStatus::Voter
        {
            break;
        }
        h.tick(&[2, 3, 4, 5], 1, &rest);
    }
    for id in 2..=5 {
        assert_eq!(
            h.r(id).membership().epoch,
            1,
            "n{id} executed the stop-sign"
        );
        assert!(matches!(
            value_at(&mut h, id, s),
            Some(Value::Reconfigure(_))
        ));
    }
    assert_eq!(
        h.r(3).acceptor_status(),
        crate::AcceptorStatus::Voter,
        "n3 recovered in epoch 1"
    );
    h.restart(1);
    h.tick(&[1, 2, 3, 4, 5], 80, &crate::scripted::all);
    h.executed_agree().expect("one value per slot");
    assert_eq!(h.r(1).membership().epoch, 1);
}

/// The no-op fill's purpose, with nothing else to decide the slot: the stop-sign a
/// recovering replica adopted was accepted by its proposer only.
///
/// n = 5, epoch 0 = epoch 1 = {1..5}:
/// 1. n1 leads; its stop-sign in s reaches nobody else. n3 is wiped and recovers with
///    grants from n1, n2, n4: it adopts the stop-sign and waits for s to be decided.
/// 2. n1 crashes; n2 is elected by {2, 4, 5} (n3 does not vote yet): its merge has
///    nothing in s, it is idle, and no client sends anything.
/// 3. n3's `Fetch{s, s}` makes n2 propose a no-op in s: chosen, n3 learns it, finishes
///    its recovery in epoch 0; n1 comes back and its stale stop-sign is overwritten.
#[test]
fn an_idle_leader_decides_the_slot_of_a_stop_sign_only_its_proposer_accepted() {
    let mut h = H::new(5, true, |_| {});
    leader_with_session(&mut h);
    // n2..n5 answer n1's heartbeats (they count as voting for the change).
    h.tick(&[1, 2, 3, 4, 5], 5, &crate::scripted::all);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2, 3, 4, 5]))
        .expect("leader proposes");
    h.run(&crate::scripted::none);
    wipe_and_recover_among(&mut h, 3, s, &[1, 2, 3, 4]);
    assert!(
        matches!(value_at(&mut h, 3, s), Some(Value::Reconfigure(_))),
        "n3 adopted the stop-sign from n1's grant"
    );
    h.crash(1);
    let rest = within(&[2, 3, 4, 5]);
    h.tick(&[2, 3, 4, 5], 45, &crate::scripted::none);
    h.r(2).start_election_now();
    h.run(&rest);
    assert!(h.r(2).is_leader(), "n2 leads with n4 and n5");
    h.tick_until(&[2, 3, 4, 5], 100, &rest, |h| {
        h.r(3).acceptor_status() == crate::AcceptorStatus::Voter
    });
    assert_eq!(
        h.r(3).acceptor_status(),
        crate::AcceptorStatus::Voter,
        "n3's recovery finished: an idle leader decided slot {s}"
    );
    for id in 2..=5 {
        assert_eq!(value_at(&mut h, id, s), Some(Value::Noop));
        assert_eq!(h.r(id).membership().epoch, 0);
    }
    h.restart(1);
    h.tick(&[1, 2, 3, 4, 5], 60, &crate::scripted::all);
    h.executed_agree().expect("one value per slot");
    assert_eq!(value_at(&mut h, 1, s), Some(Value::Noop));
    assert_eq!(h.r(1).membership().epoch, 0);
}
