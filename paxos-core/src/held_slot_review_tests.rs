//! Adversarial review of `Config::hold_partial_slots` (commit f1c7f37): sequences
//! where a slot that would not be full was held behind slots that are always in
//! flight (a clock entry proposed every period, acknowledged more slowly than that).
//! Fixed by `Leader::held_until`: requests wait only for what was in flight when
//! they began to wait.

use crate::batch_tests::oks;
use crate::clock_tests::registered;
use crate::mutation::Mutation;
use crate::scripted::{all, write, Deliver, Hold, Scripted as H};
use crate::sim::tests::{crashes_only, expiry, heavy_batching};
use crate::{Config, Message, NodeId};

/// Holds every ACCEPTED (the test releases them one tick later: a round trip a bit
/// longer than a tick).
fn hold_accepted(_: NodeId, _: NodeId, m: &Message) -> crate::scripted::Fate {
    if matches!(m, Message::Accepted { .. }) {
        Hold
    } else {
        Deliver
    }
}

/// Three replicas, expiry on with a clock entry every `period` ticks, four requests
/// per slot. n1 leads, one session registers. Then the network's round trip becomes
/// `delay` ticks (plus a little): every ACCEPTED arrives `delay` ticks after it was
/// sent. One request of the session arrives; the cluster runs `ticks` ticks. Returns
/// how many times the request was answered Ok, and how far n1's commit point moved
/// meanwhile.
fn lone_request(period: u64, delay: usize, hold: bool, ticks: usize) -> (usize, u64) {
    lone_request_with(period, delay, hold, ticks, Mutation::None)
}

/// [`lone_request`] with a broken variant.
fn lone_request_with(
    period: u64,
    delay: usize,
    hold: bool,
    ticks: usize,
    mutation: Mutation,
) -> (usize, u64) {
    let mut h = H::new(3, true, |c: &mut Config| {
        c.mutation = mutation;
        c.max_requests_per_slot = 4;
        c.hold_partial_slots = hold;
        c.session_ttl_ticks = 10_000;
        c.session_clock_ticks = period;
        // Elections far away: the slow network must not look like a dead leader.
        c.election_ticks = 200;
    });
    h.r(1).start_election_now();
    h.run(&all);
    assert!(h.r(1).is_leader());
    h.register(1, 1000);
    h.run(&all);
    let s = registered(&h, 1000);
    // ACCEPTEDs in transit, with the tick they were sent at.
    let mut transit: Vec<(usize, NodeId, NodeId, Message)> = Vec::new();
    let mut now = 0usize;
    let step = |h: &mut H, now: &mut usize, transit: &mut Vec<(usize, NodeId, NodeId, Message)>| {
        *now += 1;
        h.tick(&[1, 2, 3], 1, &hold_accepted);
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(transit)
            .into_iter()
            .partition(|(at, ..)| at + delay <= *now);
        *transit = later;
        for (_, from, to, m) in due {
            h.deliver(from, to, m);
        }
        h.run(&hold_accepted);
        for (from, to, m) in std::mem::take(&mut h.held) {
            transit.push((*now, from, to, m));
        }
    };
    // A while with the slow network, so that clock entries are in flight.
    for _ in 0..3 * period as usize + delay {
        step(&mut h, &mut now, &mut transit);
    }
    let commit_before = h.r(1).commit_point();
    // A lone client's request (the only one in the whole cluster).
    h.r(1).handle_request(write(s, 1));
    h.run(&hold_accepted);
    for (from, to, m) in std::mem::take(&mut h.held) {
        transit.push((now, from, to, m));
    }
    for _ in 0..ticks {
        if oks(&h, s, 1) > 0 {
            break;
        }
        step(&mut h, &mut now, &mut transit);
    }
    assert!(
        h.r(1).is_leader(),
        "n1 still leads (the cluster is healthy)"
    );
    (oks(&h, s, 1), h.r(1).commit_point() - commit_before)
}

/// Control: with the rule off, the request is answered.
#[test]
fn review_control_lone_request_answered_with_rule_off() {
    assert_eq!(lone_request(1, 1, false, 500).0, 1);
    assert_eq!(lone_request(5, 6, false, 500).0, 1);
}

/// Control: the rule on, a round trip shorter than the clock period: answered.
#[test]
fn review_control_lone_request_answered_with_short_round_trip() {
    assert_eq!(lone_request(5, 3, true, 500).0, 1);
}

/// The rule on, a clock entry every tick and a round trip just over a tick: a clock
/// entry is always in flight when the leader pumps. Before `held_until`, the lone
/// request (three short of a full slot) waited forever, while the healthy cluster
/// committed a clock entry every tick.
#[test]
fn review_lone_request_is_not_starved_by_clock_entries_always_in_flight() {
    let (answered, committed) = lone_request(1, 1, true, 500);
    assert_eq!(
        answered, 1,
        "never proposed in 500 ticks (the commit point moved {committed} slots meanwhile): \
         a clock entry was in flight at every pump"
    );
}

/// The broken variant (a slot that would not be full waits until nothing at all is
/// in flight, as before `held_until`): the lone request is never answered.
#[test]
fn mutant_holding_behind_everything_in_flight_starves_a_lone_request() {
    for (period, delay, ticks) in [(1, 1, 500), (5, 6, 2000)] {
        let (answered, committed) =
            lone_request_with(period, delay, true, ticks, Mutation::HoldsBehindAllInFlight);
        assert_eq!(answered, 0, "period {period}, round trip {delay}");
        assert!(
            committed > 10,
            "the cluster committed clock entries meanwhile"
        );
    }
}

/// The same with a clock entry every 5 ticks and a round trip of 6.
#[test]
fn review_lone_request_is_not_starved_period_5_round_trip_6() {
    let (answered, committed) = lone_request(5, 6, true, 2000);
    assert_eq!(
        answered, 1,
        "never proposed in 2000 ticks (the commit point moved {committed} slots meanwhile)"
    );
}

/// The simulation's heavy batching with expiry, a clock entry every 1 to 3 ticks
/// (`session_clock_ticks`, valid: positive), with `hold_partial_slots` on or off.
fn expiry_short_clock(f: &mut crate::testing::sim::engine::Faults, hold: bool) {
    expiry_heavy(f, hold);
    f.session_clock = 1 + f.fault_ticks % 3;
}

/// Seed 0 of that profile: with the rule off every request completes; with it on,
/// before `held_until`, the liveness check found a request still pending 2000 ticks
/// after healing (48 of the first 300 seeds failed so; none with the rule off).
#[test]
fn review_sim_seed_0_short_clock_period_liveness() {
    use crate::testing::sim::engine::Sim;
    Sim::protocol(0, Mutation::None, |f| expiry_short_clock(f, false))
        .run()
        .expect("rule off: seed 0 passes");
    if let Err(v) = Sim::protocol(0, Mutation::None, |f| expiry_short_clock(f, true)).run() {
        panic!("rule on: seed 0: {v}");
    }
}

/// The simulation's own "heavy batching, expiry" profile (clock entry every 5 to 20
/// ticks), with `hold_partial_slots` on or off.
fn expiry_heavy(f: &mut crate::testing::sim::engine::Faults, hold: bool) {
    expiry(f);
    heavy_batching(f);
    f.hold_partial_slots = hold;
}

/// Seeds of "heavy batching, expiry" (the profile `sim.rs` runs with the rule off)
/// that failed the liveness check with the rule on before `held_until`: found among
/// the first 3000. `REVIEW_SEEDS=a,b,c` to try others.
#[test]
fn review_sim_expiry_heavy_liveness_with_rule_on() {
    use crate::testing::sim::engine::Sim;
    let seeds: Vec<u64> = std::env::var("REVIEW_SEEDS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![477, 1425, 1595, 1899, 2640, 2675, 2985]);
    let mut off_fail = Vec::new();
    let mut on_fail = Vec::new();
    for seed in seeds {
        if let Err(v) = Sim::protocol(seed, Mutation::None, |f| expiry_heavy(f, false)).run() {
            off_fail.push((seed, v.to_string()));
        }
        if let Err(v) = Sim::protocol(seed, Mutation::None, |f| expiry_heavy(f, true)).run() {
            on_fail.push((seed, v.to_string()));
        }
    }
    assert!(off_fail.is_empty(), "rule off fails too: {off_fail:#?}");
    assert!(on_fail.is_empty(), "rule on: {on_fail:#?}");
}

/// `sim.rs`'s "long outages" profile (crashes only) with heavy batching, no session
/// expiry (so no clock entries): seed 1732 passes with the rule off and fails the
/// liveness check with it on ("[2, 3] up and connected since tick 1666, yet no
/// request completed for 1000 ticks"; n1 down, n2 at commit point 93 while the
/// leader n3 is at 132). One seed in 2,000 with the rule on, none with it off.
///
/// Not a stall, traced: n2 came back from a long outage at slot 9 while n1 and n3
/// had committed up to 132, then n1 crashed, so every slot needs n2's vote and n2
/// must first fetch 123 slots. It does, four slots (`max_batch`) per FETCH, one
/// FETCH per retransmission timeout of its slow clock: 9 at tick 1712, 41 at 2214,
/// 89 at 2637, about a slot every ten ticks, too slow for the check's 1,000 ticks.
/// The rule changed the schedule that led there (with it off, this seed's run
/// differs from tick 1 on), not how catch-up works. Fetching the next range as soon
/// as an answer helps (not one per timeout) would speed it up; it also moves every
/// seed of every profile, so it is left for a change of its own. Ignored: run it by
/// name with `--ignored`.
#[test]
#[ignore]
fn review_sim_crashes_only_heavy_seed_1732_liveness_with_rule_on() {
    use crate::testing::sim::engine::{Faults, Sim};
    fn profile(f: &mut Faults, hold: bool) {
        heavy_batching(f);
        crashes_only(f);
        f.hold_partial_slots = hold;
    }
    Sim::protocol(1732, Mutation::None, |f| profile(f, false))
        .run()
        .expect("rule off: seed 1732 passes");
    if let Err(v) = Sim::protocol(1732, Mutation::None, |f| profile(f, true)).run() {
        panic!("rule on: seed 1732: {v}");
    }
}
