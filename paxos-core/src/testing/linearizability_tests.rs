//! Tests of the linearizability checker: hand-made histories and a brute-force cross-check.

use super::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

// ------------------------------------------------------------------ models

/// A read/write/compare-and-swap register holding a small integer, initially 0.
struct Register;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegOp {
    Read,
    Write(u8),
    Cas(u8, u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RegOut {
    Value(u8),
    Ack,
    Swapped(bool),
}

impl Model for Register {
    type State = u8;
    type Input = RegOp;
    type Output = RegOut;
    fn init(&self) -> u8 {
        0
    }
    fn step(&self, s: &u8, op: &RegOp) -> (u8, RegOut) {
        match *op {
            RegOp::Read => (*s, RegOut::Value(*s)),
            RegOp::Write(v) => (v, RegOut::Ack),
            RegOp::Cas(old, new) if *s == old => (new, RegOut::Swapped(true)),
            RegOp::Cas(..) => (*s, RegOut::Swapped(false)),
        }
    }
}

/// A counter: `Some(n)` adds `n` and answers the new total; `None` reads it.
struct Counter;

impl Model for Counter {
    type State = i64;
    type Input = Option<i64>;
    type Output = i64;
    fn init(&self) -> i64 {
        0
    }
    fn step(&self, s: &i64, op: &Option<i64>) -> (i64, i64) {
        let t = s + op.unwrap_or(0);
        (t, t)
    }
}

fn done<I, O>(call: u64, ret: u64, input: I, output: O) -> Operation<I, O> {
    Operation::completed(call, ret, input, output)
}

fn not_linearizable<M: Model>(m: &M, h: &[Operation<M::Input, M::Output>]) -> Counterexample
where
    M::Input: fmt::Debug,
    M::Output: fmt::Debug,
{
    match check(m, h) {
        Err(CheckError::NotLinearizable(c)) => c,
        other => panic!("expected a counterexample, got {other:?} for {h:?}"),
    }
}

fn linearizable<M: Model>(m: &M, h: &[Operation<M::Input, M::Output>])
where
    M::Input: fmt::Debug,
    M::Output: fmt::Debug,
{
    if let Err(e) = check(m, h) {
        panic!("expected linearizable, got {e} for {h:?}");
    }
}

use RegOp::*;
use RegOut::*;

// ------------------------------------------------------------------ failures

#[test]
fn a_read_of_a_value_never_written_fails() {
    let h = [
        done(0, 10, Write(1), Ack),
        done(5, 15, Write(2), Ack),
        done(20, 30, Read, Value(3)),
    ];
    let c = not_linearizable(&Register, &h);
    assert_eq!(c.blocked, 2);
    assert!(c.describe(&h).contains("#2 Read -> Value(3)"));
}

#[test]
fn a_stale_read_after_a_completed_write_fails() {
    let h = [
        done(0, 10, Write(1), Ack),
        done(20, 30, Write(2), Ack),
        done(40, 50, Read, Value(1)),
    ];
    let c = not_linearizable(&Register, &h);
    assert_eq!(c.linearized, vec![0, 1]);
    assert_eq!(c.blocked, 2);
}

#[test]
fn sequential_operations_observed_in_the_wrong_order_fail() {
    // a returned before b was called, yet b took the earlier position.
    let h = [done(0, 10, (1, 1), 1), done(20, 30, (2, 1), 0)];
    not_linearizable(&AppendLog, &h);
    assert!(matches!(
        AppendLog::check_fast(&h),
        Err(AppendLogViolation::RealTimeOrder { .. })
    ));
    // The same outputs with the two calls overlapping are fine.
    let h = [done(0, 25, (1, 1), 1), done(20, 30, (2, 1), 0)];
    linearizable(&AppendLog, &h);
    assert_eq!(AppendLog::check_fast(&h), Ok(()));
}

#[test]
fn a_new_then_old_read_inversion_fails() {
    // The write overlaps both reads, but once a read saw 1 a later read cannot see 0.
    let h = [
        done(0, 100, Write(1), Ack),
        done(10, 20, Read, Value(1)),
        done(30, 40, Read, Value(0)),
    ];
    let c = not_linearizable(&Register, &h);
    assert_eq!(c.blocked, 2);
}

#[test]
fn overlapping_register_operations_can_be_linearizable() {
    let h = [
        done(0, 100, Write(1), Ack),
        done(10, 20, Read, Value(0)),
        done(30, 40, Read, Value(1)),
        done(35, 90, Cas(1, 2), Swapped(true)),
        done(50, 60, Read, Value(2)),
        done(55, 95, Cas(1, 3), Swapped(false)),
    ];
    linearizable(&Register, &h);
}

#[test]
fn two_successful_compare_and_swaps_from_the_same_value_fail() {
    let h = [
        done(0, 10, Write(1), Ack),
        done(20, 40, Cas(1, 2), Swapped(true)),
        done(25, 45, Cas(1, 3), Swapped(true)),
    ];
    not_linearizable(&Register, &h);
}

#[test]
fn counter_with_overlapping_adds() {
    // Concurrent adds may be ordered either way...
    let ok = [
        done(0, 50, Some(1), 2),
        done(10, 40, Some(1), 1),
        done(60, 70, None, 2),
    ];
    linearizable(&Counter, &ok);
    // ...but not both first.
    let bad = [done(0, 50, Some(1), 1), done(10, 40, Some(1), 1)];
    not_linearizable(&Counter, &bad);
}

#[test]
fn a_lost_write_fails() {
    // The add completed, yet a later read does not include it.
    let h = [
        done(0, 10, Some(5), 5),
        done(15, 30, Some(1), 6),
        done(40, 50, None, 1),
    ];
    not_linearizable(&Counter, &h);
    // A lost append: positions 0 and 2 reported, nothing can have taken 1.
    let h = [done(0, 10, (1, 1), 0), done(20, 30, (2, 1), 2)];
    not_linearizable(&AppendLog, &h);
    assert_eq!(
        AppendLog::check_fast(&h),
        Err(AppendLogViolation::Gap { position: 1 })
    );
}

#[test]
fn a_duplicated_position_fails() {
    let h = [done(0, 30, (1, 1), 0), done(10, 20, (2, 1), 0)];
    not_linearizable(&AppendLog, &h);
    assert!(matches!(
        AppendLog::check_fast(&h),
        Err(AppendLogViolation::DuplicatePosition { position: 0, .. })
    ));
}

// ------------------------------------------------------------------ pending operations

#[test]
fn a_pending_write_may_take_effect_late() {
    let h = [
        Operation::pending(0, Write(1)),
        done(10, 20, Read, Value(0)),
        done(30, 40, Read, Value(1)),
        done(50, 60, Read, Value(1)),
    ];
    linearizable(&Register, &h);
}

#[test]
fn a_pending_write_may_never_take_effect() {
    let h = [
        Operation::pending(0, Write(1)),
        done(10, 20, Read, Value(0)),
        done(30, 40, Read, Value(0)),
    ];
    linearizable(&Register, &h);
}

#[test]
fn a_pending_write_takes_effect_at_most_once() {
    let h = [
        Operation::pending(0, Write(1)),
        done(10, 20, Read, Value(1)),
        done(30, 40, Read, Value(0)),
    ];
    not_linearizable(&Register, &h);
}

#[test]
fn a_pending_write_cannot_take_effect_before_its_call() {
    let h = [
        done(0, 10, Read, Value(1)),
        Operation::pending(20, Write(1)),
    ];
    not_linearizable(&Register, &h);
}

#[test]
fn pending_appends_fill_gaps_only_when_called_in_time() {
    // A pending append called before position 2 was returned may hold position 1.
    let h = [
        done(0, 10, (1, 1), 0),
        Operation::pending(5, (3, 1)),
        done(20, 30, (2, 1), 2),
    ];
    linearizable(&AppendLog, &h);
    assert_eq!(AppendLog::check_fast(&h), Ok(()));
    // Called only after position 2 was returned: it cannot.
    let h = [
        done(0, 10, (1, 1), 0),
        done(20, 30, (2, 1), 2),
        Operation::pending(35, (3, 1)),
    ];
    not_linearizable(&AppendLog, &h);
    assert_eq!(
        AppendLog::check_fast(&h),
        Err(AppendLogViolation::Gap { position: 1 })
    );
}

// ------------------------------------------------------------------ API edges

#[test]
fn history_builder_records_calls_and_returns() {
    let mut h: History<RegOp, RegOut> = History::new();
    let w = h.invoke(0, Write(7));
    let r = h.invoke(1, Read);
    assert_eq!(h.complete(w, 5, Ack), Ok(()));
    assert_eq!(h.complete(w, 6, Ack), Err(HistoryError::AlreadyReturned(0)));
    assert_eq!(
        h.complete(OpId(9), 6, Ack),
        Err(HistoryError::UnknownOperation(9))
    );
    assert_eq!(
        h.complete(r, 0, Ack),
        Err(HistoryError::ReturnBeforeCall(1))
    );
    assert_eq!(h.complete(r, 8, Value(7)), Ok(()));
    assert_eq!(r.index(), 1);
    assert!(!h.operations()[1].is_pending());
    let p = h.push(Operation::pending(9, Write(0)));
    assert!(h.operations()[p.index()].is_pending());
    assert_eq!(h.len(), 3);
    assert!(!h.is_empty());
    linearizable(&Register, h.operations());
    assert_eq!(check(&Register, &[]), Ok(()));
}

#[test]
fn malformed_histories_are_rejected() {
    let h = [Operation::completed(10, 5, Read, Value(0))];
    assert_eq!(check(&Register, &h), Err(CheckError::Malformed { op: 0 }));
    let h = [Operation::completed(10, 5, (1, 1), 0)];
    assert_eq!(
        AppendLog::check_fast(&h),
        Err(AppendLogViolation::Malformed { op: 0 })
    );
}

#[test]
fn the_search_gives_up_within_its_budget() {
    // Many concurrent writes and a read of a value nobody wrote: the search must
    // try every order of the writes (up to memoization) before it can say no.
    let mut h: Vec<Operation<RegOp, RegOut>> = (0..16)
        .map(|v| done(0, 100, Cas(v, v + 1), Swapped(v % 2 == 0)))
        .collect();
    h.push(done(0, 100, Read, Value(200)));
    assert!(matches!(
        check_with_budget(&Register, &h, 50),
        Err(CheckError::Inconclusive { steps: 50 })
    ));
}

// ------------------------------------------------------------------ cross-checks

/// An independent, exhaustive checker for small histories: tries every order.
fn brute_force<M: Model>(m: &M, h: &[Operation<M::Input, M::Output>]) -> bool {
    fn go<M: Model>(
        m: &M,
        h: &[Operation<M::Input, M::Output>],
        used: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        let open_completed: Vec<usize> = (0..h.len())
            .filter(|&i| !used[i] && h[i].ret.is_some())
            .collect();
        if open_completed.is_empty() {
            return true;
        }
        // The earliest return among operations not yet placed bounds what can go next.
        let bound = open_completed
            .iter()
            .filter_map(|&i| h[i].ret.as_ref().map(|r| r.time))
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..h.len() {
            if used[i] || h[i].call > bound {
                continue;
            }
            let (next, out) = m.step(state, &h[i].input);
            if h[i].ret.as_ref().is_some_and(|r| r.output != out) {
                continue;
            }
            used[i] = true;
            let ok = go(m, h, used, &next);
            used[i] = false;
            if ok {
                return true;
            }
        }
        false
    }
    go(m, h, &mut vec![false; h.len()], &m.init())
}

/// Runs a random register workload on a "real" atomic register: each operation takes
/// effect at a random instant inside its interval, so the history is linearizable;
/// then maybe corrupts one output.
fn random_register_history(
    rng: &mut ChaCha8Rng,
    n: usize,
    corrupt: bool,
) -> Vec<Operation<RegOp, RegOut>> {
    let mut ops: Vec<(u64, u64, u64, RegOp, bool)> = (0..n)
        .map(|_| {
            let call = rng.next_u64() % 40;
            let len = 1 + rng.next_u64() % 20;
            let at = call + rng.next_u64() % len;
            let input = match rng.next_u64() % 3 {
                0 => Read,
                1 => Write((rng.next_u64() % 3) as u8),
                _ => Cas((rng.next_u64() % 3) as u8, (rng.next_u64() % 3) as u8),
            };
            let pending = rng.next_u64().is_multiple_of(5);
            (call, call + len, at, input, pending)
        })
        .collect();
    ops.sort_by_key(|o| o.2);
    let mut s = 0u8;
    let mut h = Vec::new();
    for (call, ret, _, input, pending) in ops {
        let applies = !pending || rng.next_u64().is_multiple_of(2);
        let (next, out) = Register.step(&s, &input);
        if applies {
            s = next;
        }
        h.push(if pending {
            Operation::pending(call, input)
        } else {
            done(call, ret, input, out)
        });
    }
    if corrupt {
        let i = (rng.next_u64() % n as u64) as usize;
        if let Some(r) = h[i].ret.as_mut() {
            r.output = match r.output {
                Value(v) => Value((v + 1) % 3),
                Swapped(b) => Swapped(!b),
                Ack => Value(0),
            };
        }
    }
    h
}

#[test]
fn wgl_agrees_with_brute_force_on_random_register_histories() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut yes, mut no) = (0, 0);
    for round in 0..600 {
        let n = 1 + (rng.next_u64() % 7) as usize;
        let h = random_register_history(&mut rng, n, round % 2 == 1);
        let expected = brute_force(&Register, &h);
        let got = check(&Register, &h);
        assert_eq!(got.is_ok(), expected, "{got:?} on {h:?}");
        if round % 2 == 0 {
            assert!(
                expected,
                "a history built by a real register must pass: {h:?}"
            );
        }
        if expected {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(
        yes > 100 && no > 100,
        "both outcomes exercised: {yes} / {no}"
    );
}

/// A random AppendLog history: commands applied at random instants inside their
/// intervals (some pending, taking effect or not), then maybe one fault injected.
fn random_append_history(
    rng: &mut ChaCha8Rng,
    n: usize,
    fault: u64,
) -> Vec<Operation<(ClientId, u64), u64>> {
    let mut ops: Vec<(u64, u64, u64, u64, bool)> = (0..n as u64)
        .map(|i| {
            let call = rng.next_u64() % (4 * n as u64);
            let len = 1 + rng.next_u64() % 12;
            let at = call + rng.next_u64() % len;
            (call, call + len, at, i, rng.next_u64().is_multiple_of(6))
        })
        .collect();
    ops.sort_by_key(|o| o.2);
    let mut len = 0u64;
    let mut h = Vec::new();
    for (call, ret, _, i, pending) in ops {
        if pending {
            if rng.next_u64().is_multiple_of(2) {
                len += 1;
            }
            h.push(Operation::pending(call, (i, 1)));
        } else {
            h.push(done(call, ret, (i, 1), len));
            len += 1;
        }
    }
    let pick = (rng.next_u64() % n as u64) as usize;
    match fault {
        1 => {
            // A lost or duplicated execution shifts one position.
            if let Some(r) = h[pick].ret.as_mut() {
                r.output += 1 + rng.next_u64() % 2;
            }
        }
        2 => {
            // Two operations swap positions.
            let other = (rng.next_u64() % n as u64) as usize;
            let (a, b) = (h[pick].ret.clone(), h[other].ret.clone());
            if let (Some(a), Some(b)) = (a, b) {
                if let Some(r) = h[pick].ret.as_mut() {
                    r.output = b.output;
                }
                if let Some(r) = h[other].ret.as_mut() {
                    r.output = a.output;
                }
            }
        }
        3 => {
            // A pending operation becomes known to have taken a position late.
            h[pick].call += 10;
        }
        _ => {}
    }
    h
}

#[test]
fn fast_append_log_check_agrees_with_wgl_and_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (mut yes, mut no) = (0, 0);
    for round in 0..2000u64 {
        let n = 1 + (rng.next_u64() % 8) as usize;
        let h = random_append_history(&mut rng, n, round % 4);
        let fast = AppendLog::check_fast(&h);
        let wgl = check(&AppendLog, &h);
        assert_eq!(
            fast.is_ok(),
            wgl.is_ok(),
            "fast {fast:?} vs wgl {wgl:?} on {h:?}"
        );
        assert_eq!(brute_force(&AppendLog, &h), wgl.is_ok(), "{h:?}");
        if round % 4 == 0 {
            assert!(
                wgl.is_ok(),
                "an unfaulted history must pass: {wgl:?} on {h:?}"
            );
        }
        if wgl.is_ok() {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(
        yes > 300 && no > 300,
        "both outcomes exercised: {yes} / {no}"
    );
}

#[test]
fn long_append_log_histories_check_quickly() {
    // A long simulation-like history: 8 clients, one request in flight each, some
    // lost at the end; WGL must finish well inside its budget.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut h = Vec::new();
    let mut now = [0u64; 8];
    let mut len = 0u64;
    let mut events: Vec<(u64, usize)> = Vec::new();
    for (c, t) in now.iter_mut().enumerate() {
        for seq in 1..=250u64 {
            let call = *t;
            let ret = call + 1 + rng.next_u64() % 20;
            *t = ret + rng.next_u64() % 3;
            events.push((call + rng.next_u64() % (ret - call), h.len()));
            h.push(done(call, ret, (c as u64, seq), 0));
        }
    }
    events.sort_unstable();
    for (_, i) in events {
        if let Some(r) = h[i].ret.as_mut() {
            r.output = len;
        }
        len += 1;
    }
    // The last request of every client never got its reply, nor did a few others
    // (a client that gave up on a request and went on).
    for c in 0..8 {
        h[c * 250 + 249].ret = None;
    }
    for _ in 0..24 {
        let i = 8 + (rng.next_u64() % (h.len() as u64 - 8)) as usize;
        h[i].ret = None;
    }
    assert_eq!(AppendLog::check_fast(&h), Ok(()));
    assert_eq!(check(&AppendLog, &h), Ok(()));
    // Shift one early reply: both must notice.
    if let Some(r) = h[3].ret.as_mut() {
        r.output += 1;
    }
    assert!(AppendLog::check_fast(&h).is_err());
    assert!(matches!(
        check(&AppendLog, &h),
        Err(CheckError::NotLinearizable(_))
    ));
}
