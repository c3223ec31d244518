//! `bank leader transfer` between `bank node` processes on 127.0.0.1, under load.
//!
//! A background load of one-unit transfers runs from this process (through
//! `paxos_core::Client` over the cluster's endpoints) while `bank leader transfer --to N`
//! moves leadership. The test checks that N leads afterwards, that every acknowledged
//! transfer is in every replica's balances (and the total is conserved), and measures
//! the longest gap between two completed operations around the transfer.

mod common;

use std::time::{Duration, Instant};

use bank_app::Cluster;
use paxos_core::NodeId;

use common::{assert_balances, json_lines, runtime, serial, Load, Processes};

/// Concurrent clients of the load; client `i` moves one unit back and forth between
/// two accounts of its own, so no account runs dry and nothing is rejected.
const CLIENTS: usize = 4;
/// The longest pause in completed operations the test accepts around the transfer:
/// generous, for a loaded 2-core machine (the design target is one round trip plus a
/// persist).
const MAX_GAP: Duration = Duration::from_secs(2);

/// The longest interval between consecutive instants of `times` (sorted) that overlaps
/// `window`, with where it started relative to `window.0`.
fn longest_gap(times: &[Instant], window: (Instant, Instant)) -> (Duration, f64) {
    let mut worst = (Duration::ZERO, 0.0);
    for pair in times.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b < window.0 || a > window.1 {
            continue;
        }
        let gap = b - a;
        if gap > worst.0 {
            let offset = if a >= window.0 {
                (a - window.0).as_secs_f64()
            } else {
                -(window.0 - a).as_secs_f64()
            };
            worst = (gap, offset);
        }
    }
    worst
}

#[test]
fn leader_transfer_under_load() {
    let _serial = serial();
    let rt = runtime();
    let procs = Processes::start_with_admin_calls(&rt, 5);
    let old = procs.leader(&rt, Duration::from_secs(20));
    let target: NodeId = old % 5 + 1;

    let cluster = procs.remote();
    let load = Load::start(&rt, cluster.endpoints(), CLIENTS, Duration::from_secs(20));
    let log = load.log.clone();

    // Warm up: sessions registered, a steady stream of completions.
    std::thread::sleep(Duration::from_millis(1500));
    let before = log.lock().expect("load log").completions.len();
    assert!(
        before > 10,
        "the load barely runs: {before} operations in 1.5 s"
    );

    let asked = Instant::now();
    let run = procs
        .bank(&[
            "leader",
            "transfer",
            "--to",
            &target.to_string(),
            "--timeout",
            "20",
            "--json",
        ])
        .finish(Duration::from_secs(40));
    let answered = Instant::now();
    // Keep the load on after the handover, under the new leader.
    std::thread::sleep(Duration::from_millis(1500));
    let log = load.stop(&rt);

    assert!(
        run.status.success(),
        "bank leader transfer failed: {}\n{}\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let lines = json_lines(&run.stdout);
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    // The leader found before the load started, unless an election intervened.
    let reported_old = lines[0]["old_leader"].as_u64().expect("old_leader");
    if reported_old != old {
        eprintln!("leadership moved from n{old} to n{reported_old} before the command ran");
    }
    assert_eq!(lines[0]["new_leader"], target, "{}", run.stdout);
    assert_eq!(lines[0]["already_leader"], false, "{}", run.stdout);
    let status = procs.status(&rt, target);
    assert!(status.is_available_leader(), "n{target}: {status:?}");
    assert_eq!(rt.block_on(cluster.leader()), Some(target));

    let mut times = log.completions.clone();
    times.sort_unstable();
    let after = times.iter().filter(|&&t| t > answered).count();
    assert!(
        after > 10,
        "the load barely ran after the transfer: {after}"
    );
    let (gap, at) = longest_gap(&times, (asked, answered + Duration::from_millis(500)));
    let first_warm = times[before.min(times.len() - 1) / 2];
    let (baseline, _) = longest_gap(&times, (first_warm, asked));
    eprintln!(
        "leader transfer n{reported_old} -> n{target} under load: reported {} ms; {} operations \
         completed; longest gap between completed operations around the transfer {:.1} ms \
         (starting {:.3} s after the command was run); before it {:.1} ms",
        lines[0]["elapsed_ms"],
        times.len(),
        gap.as_secs_f64() * 1000.0,
        at,
        baseline.as_secs_f64() * 1000.0
    );
    assert!(
        gap < MAX_GAP,
        "operations stopped for {gap:?} around the transfer"
    );

    // Every acknowledged transfer is in every replica's balances; the total is kept
    // (`bank db` checks it is 100 on each replica).
    assert_balances(
        &procs,
        &procs.running(),
        &log.expected_balances(),
        Duration::from_secs(20),
    );
}
