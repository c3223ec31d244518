//! Session expiry across leader changes, driven message by message: a deposed
//! leader's clock entries, which a later leader must re-propose, must not count ticks
//! against the sessions of requests they never saw (see
//! [`Value::ClockStep`](crate::Value::ClockStep)).

use crate::mutation::Mutation;
use crate::scripted::{all, write, Scripted as H};
use crate::{ClientId, Message, NodeId, Response, Value};

const TTL: u64 = 25;
const PERIOD: u64 = 5;

/// The session id the registration with `nonce` was answered with.
pub(crate) fn registered(h: &H, nonce: ClientId) -> ClientId {
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

/// Three replicas with expiry on (`tweak` sets the rest), one request per slot: n1
/// leads, sessions of nonces 1000 and 1001 register and each writes once, and two
/// clock periods pass. Returns the two sessions.
fn two_sessions_used(tweak: impl Fn(&mut crate::Config)) -> (H, ClientId, ClientId) {
    let mut h = H::new(3, true, |c| {
        c.session_clock_ticks = PERIOD;
        c.max_requests_per_slot = 1; // the tests count slots one request each
        tweak(c);
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
    (h, s, t)
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
    let (mut h, s, t) = two_sessions_used(|c| {
        c.session_ttl_ticks = TTL;
        c.mutation = mutation;
    });
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

/// From an adversarial review of phase 1 pages, three replicas, a time-to-live of 100
/// ticks, a clock step every 5:
/// 1. n1 leads; sessions `s` and `u` register and are used; commit point k.
/// 2. n1 proposes a large request L at k that reaches n3 only (no ACCEPTED back); cut
///    off, it proposes clock steps alone at k+1 and up.
/// 3. n2 leads with n3: it re-proposes L at k, opens its reign with a step at k+1 and
///    proposes requests of `s` above; n3's ACCEPTEDs are lost. n2 crashes.
/// 4. n1 is back and leads with n3. The merge is n2's values; with `max_message_bytes`
///    4096, NEW-VIEW carries only k (L fills it) and k+1 and up are re-proposed
///    afterwards, while n1's log there still holds its own stale steps.
/// 5. `s` writes on, `u` idles for 500 ticks.
///
/// A clock that starts from n1's log alone starts above the log time its steps land
/// on: none counts and `u` never expires (`ClockIgnoresReadopt`). Returns whether `u`
/// is still a session afterwards, and n1's log time before and after step 5.
fn idle_session_under_a_merge_beyond_new_view(mmb: usize, mutation: Mutation) -> (bool, u64, u64) {
    use crate::scripted::{none, Deliver, Drop};
    let ttl = 100;
    let (mut h, s, u) = two_sessions_used(|c| {
        c.session_ttl_ticks = ttl;
        c.max_message_bytes = mmb;
        c.mutation = mutation;
    });
    let k = h.r(1).commit_point();
    assert_eq!(h.r(3).commit_point(), k);

    // 2.
    h.r(1).handle_request(crate::Request {
        client: s,
        seq: 2,
        payload: bytes::Bytes::from(vec![7u8; 4030]),
    });
    h.run(&|from, to, m| {
        if from == 1 && to == 3 && matches!(m, Message::Accept { .. }) {
            Deliver
        } else {
            Drop
        }
    });
    h.tick_if(&[1], 60, &apart(1));
    assert!(!h.r(1).is_leader());

    // 3.
    h.tick(&[2, 3], 60, &none);
    h.r(2).start_election_now();
    let without_n1 = |from: NodeId, to: NodeId, m: &Message| {
        if from == 1 || to == 1 || (from == 3 && matches!(m, Message::Accepted { .. })) {
            Drop
        } else {
            Deliver
        }
    };
    h.run(&without_n1);
    assert!(h.r(2).is_leader());
    for seq in 3..8 {
        h.r(2).handle_request(write(s, seq));
        h.run(&without_n1);
    }
    assert_eq!(h.r(2).commit_point(), k);
    h.crash(2);

    // 4.
    h.tick(&[1, 3], 60, &none);
    let without_n2 = |_: NodeId, to: NodeId, _: &Message| if to == 2 { Drop } else { Deliver };
    for _ in 0..5 {
        if !h.r(1).is_leader() {
            h.r(1).start_election_now();
            h.run(&without_n2);
        }
    }
    assert!(h.r(1).is_leader());
    let before = h.r(1).sessions().log_time();

    // 5.
    for i in 0..100u64 {
        h.r(1).handle_request(write(s, 8 + i));
        h.tick(&[1, 3], 5, &without_n2);
    }
    assert!(h.r(1).is_leader());
    let after = h.r(1).sessions().log_time();
    (h.r(1).sessions().get(u).is_some(), before, after)
}

#[test]
fn a_new_leaders_clock_counts_from_its_whole_merge() {
    // Control: a NEW-VIEW that carries the whole merge.
    let (alive, before, after) =
        idle_session_under_a_merge_beyond_new_view(1 << 20, Mutation::None);
    assert!(
        !alive && after > before + 300,
        "control: {before} -> {after}"
    );
    let (alive, before, after) = idle_session_under_a_merge_beyond_new_view(4096, Mutation::None);
    assert!(
        !alive && after > before + 300,
        "u never expired: n1's log time {before} -> {after} over 500 ticks"
    );
    let (alive, before, after) =
        idle_session_under_a_merge_beyond_new_view(4096, Mutation::ClockIgnoresReadopt);
    assert!(
        alive && after < before + 300,
        "the broken variant's log time moved {before} -> {after}: the test cannot catch it"
    );
}
