//! Commit points left unwritten (`Replica::write_commit_point`) and whole-cluster
//! crashes: from an adversarial review of the change, which found no break. A lost
//! commit point is knowledge, learned again; an acknowledged write must survive.

use crate::scripted::{all, leader_with_session, members, write, Deliver, Drop, Scripted as H};
use crate::{Message, NodeId, Response, Value};

fn ok_reply_for(h: &H, client: u64) -> bool {
    h.replies
        .iter()
        .any(|(_, r)| r.client == client && matches!(r.response, Response::Ok(_)))
}

fn executed_value(h: &mut H, id: NodeId, v: &Value) -> bool {
    let r = h.r(id);
    r.log(0..r.executed())
        .iter()
        .any(|info| info.value.as_ref() == Some(v))
}

/// A: the whole cluster crashes right after a commit, before any tick: nobody stored
/// the newest commit point. The acknowledged write must survive everywhere, and the
/// restarted cluster must agree.
#[test]
fn whole_cluster_crashes_before_the_deferred_commit_point_is_written() {
    whole_cluster(0);
}

#[test]
fn whole_cluster_crashes_before_the_deferred_commit_point_is_written_compacting() {
    whole_cluster(3);
}

fn whole_cluster(interval: u64) {
    let mut h = H::new(3, true, |c| c.checkpoint_interval = interval);
    leader_with_session(&mut h);
    for c in 200..210 {
        h.register(1, c);
        h.run(&all);
        assert!(ok_reply_for(&h, c));
    }
    let mem: Vec<u64> = (1..=3).map(|i| h.r(i).commit_point()).collect();
    let stored: Vec<u64> = (1..=3).map(|i| h.stored(i).commit_point).collect();
    assert!(
        (1..=3).any(|i| stored[i - 1] < mem[i - 1]),
        "the deferral was in effect"
    );
    for id in 1..=3 {
        h.crash(id);
    }
    for id in 1..=3 {
        h.restart(id);
    }
    h.tick(&[1, 2, 3], 200, &all);
    for id in 1..=3 {
        let e = h.r(id).executed();
        let before = mem[id as usize - 1];
        assert!(e >= before, "n{id} executed {e} < {before}");
        if interval == 0 {
            for c in 200..210 {
                let v = Value::Request(crate::Request::register(c));
                assert!(executed_value(&mut h, id, &v), "n{id} lost c{c}");
            }
        }
    }
    h.executed_agree().expect("agree");
    // And it makes progress.
    let l = (1..=3).find(|i| h.r(*i).is_leader()).expect("a leader");
    h.register(l, 300);
    h.tick(&[1, 2, 3], 20, &all);
    assert!(ok_reply_for(&h, 300));
    h.executed_agree().expect("agree");
}

/// B: a stop-sign chosen, executed everywhere; the whole cluster crashes before a tick;
/// everything restarts. (The epoch promise is written in the round that executes the
/// stop-sign, so the commit point past it should be stored too.)
#[test]
fn cluster_crashes_after_a_stop_sign_before_a_tick() {
    let mut h = H::new(3, true, |c| c.checkpoint_interval = 2);
    let session = leader_with_session(&mut h);
    let s = h
        .r(1)
        .reconfigure(members(&[1, 2]))
        .expect("leader proposes");
    h.run(&all);
    for id in 1..=3 {
        h.crash(id);
    }
    for id in 1..=3 {
        h.restart(id);
    }
    h.tick(&[1, 2, 3], 300, &all);
    let l = (1..=2)
        .find(|i| h.r(*i).is_leader())
        .expect("a leader of epoch 1");
    h.r(l).handle_request(write(session, 1));
    h.tick(&[1, 2, 3], 30, &all);
    for id in 1..=3 {
        assert!(
            h.r(id).commit_point() > s,
            "n{id} stuck below the stop-sign"
        );
        assert_eq!(h.r(id).membership().epoch, 1);
    }
    h.executed_agree().expect("agree");
}

/// C: only the followers' commit points move by COMMIT (ACCEPTs delivered earlier);
/// the leader crashes and the followers crash before a tick; restarted with their
/// accepted entries only, a new leader must re-choose the same values.
#[test]
fn followers_lose_commit_points_and_the_leader_dies() {
    let mut h = H::new(3, true, |_| {});
    leader_with_session(&mut h);
    h.register(1, 200);
    // ACCEPTs and ACCEPTEDs flow, COMMITs are held back until later.
    h.run(&|_, _, m| {
        if matches!(m, Message::Commit { .. } | Message::Heartbeat { .. }) {
            crate::scripted::Hold
        } else {
            Deliver
        }
    });
    assert!(ok_reply_for(&h, 200));
    h.release(&|_, _, _| Deliver, &|_, _, _| Drop);
    assert!(
        h.stored(2).commit_point < h.r(2).commit_point(),
        "n2's newest commit point is not written"
    );
    h.crash(1);
    h.crash(2);
    h.crash(3);
    h.restart(2);
    h.restart(3);
    h.tick(&[2, 3], 100, &all);
    h.restart(1);
    h.tick(&[1, 2, 3], 100, &all);
    let v = Value::Request(crate::Request::register(200));
    for id in 1..=3 {
        assert!(executed_value(&mut h, id, &v), "n{id} lost c200");
    }
    h.executed_agree().expect("agree");
}
