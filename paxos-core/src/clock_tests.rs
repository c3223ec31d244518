//! Session expiry across leader changes, driven message by message: a deposed
//! leader's clock entries, which a later leader must re-propose, must not count ticks
//! against the sessions of requests they never saw (see
//! [`Value::ClockStep`](crate::Value::ClockStep)).

use crate::mutation::Mutation;
use crate::scripted::{all, write, Scripted as H};
use crate::{ClientId, Message, NodeId, Response, Value};

const TTL: u64 = 25;
const PERIOD: u64 = 5;

fn registered(h: &H, nonce: ClientId) -> ClientId {
    h.replies
        .iter()
        .find_map(|(_, r)| match &r.response {
            Response::Ok(b) if r.client == nonce && r.seq == 0 => postcard::from_bytes(b).ok(),
            _ => None,
        })
        .expect("registered")
}

/// Whether a message stays on the side of a partition that cuts `node` off.
fn apart(node: NodeId) -> impl Fn(NodeId, NodeId, &Message) -> bool {
    move |from, to, _| from != node && to != node
}

/// The reviewer's sequence, three replicas, expiry on (time-to-live 25 ticks, a
/// clock entry every 5):
/// 1. n1 leads; sessions `s` and `t` register and are used.
/// 2. n1 is cut off. It gets a request of `t` (slot k, never chosen), then keeps
///    proposing clock entries alone until it notices (40 ticks): slots k+1.., a
///    chain from the log time F that counts some 40 ticks.
/// 3. n2 and n3 elect one of them, which proposes a request of `s` right away:
///    chosen, and `s` is stamped with log time F. Then that leader crashes.
/// 4. n1 is back; the other is elected by n1 and itself, and must re-propose n1's
///    clock entries in the slots above `s`'s request.
///
/// Returns whether `s` is still a session on n3 afterwards (it was used moments ago).
fn session_survives_a_deposed_leaders_clock(mutation: Mutation) -> bool {
    let mut h = H::new(3, true, |c| {
        c.session_ttl_ticks = TTL;
        c.session_clock_ticks = PERIOD;
        c.mutation = mutation;
        c.max_requests_per_slot = 1; // the slots below are counted one request each
    });
    h.r(1).start_election_now();
    h.run(&all);
    assert!(h.r(1).is_leader());
    h.register(1, 1000);
    h.register(1, 1001);
    h.run(&all);
    let (s, t) = (registered(&h, 1000), registered(&h, 1001));
    h.r(1).handle_request(write(s, 1));
    h.r(1).handle_request(write(t, 1));
    h.tick(&[1, 2, 3], 2 * PERIOD as usize, &all);
    let f = h.r(3).sessions().log_time();

    // 2. n1 alone.
    let cut = apart(1);
    h.r(1).handle_request(write(t, 2));
    h.tick_if(&[1], 60, &cut);

    // 3. n2 and n3 elect a leader; `s` is used.
    let mut x = None;
    for _ in 0..200 {
        h.tick_if(&[2, 3], 1, &cut);
        x = [2, 3].into_iter().find(|&i| h.r(i).is_leader());
        if x.is_some() {
            break;
        }
    }
    let x = x.expect("n2 or n3 leads");
    let y = 5 - x;
    h.r(x).handle_request(write(s, 2));
    h.run_if(&cut);
    assert_eq!(
        h.replies
            .iter()
            .filter(|(_, r)| r.client == s && r.seq == 2)
            .map(|(_, r)| matches!(r.response, Response::Ok(_)))
            .next(),
        Some(true),
        "s's second request executed"
    );
    let stamp = h.r(y).sessions().get(s).map(|x| x.last_active);
    assert!(stamp.is_some_and(|a| a < f + TTL), "{stamp:?}, {f}");
    h.crash(x);

    // 4. y leads with n1.
    h.r(y).start_election_now();
    h.run(&all);
    assert!(h.r(y).is_leader());
    // The deposed leader's entries were re-proposed and executed.
    let executed = h.r(y).executed();
    let stale = h
        .r(y)
        .log(0..executed)
        .iter()
        .filter(|e| {
            matches!(e.value, Some(Value::ClockStep { ballot, .. }) if ballot.node == 1 && e.slot > 8)
        })
        .count();
    assert!(stale >= 5, "n1's clock entries were re-proposed: {stale}");
    h.r(y).sessions().get(s).is_some()
}

#[test]
fn a_deposed_leaders_clock_does_not_expire_newer_sessions() {
    assert!(session_survives_a_deposed_leaders_clock(Mutation::None));
    for broken in [
        Mutation::ReignOpensWithoutStep,
        Mutation::ClockStepsUnchained,
    ] {
        assert!(
            !session_survives_a_deposed_leaders_clock(broken),
            "{broken:?}: the session survived"
        );
    }
}
