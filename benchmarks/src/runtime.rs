//! The harness of `runtime`: closed-loop clients, a warm-up, a timed window, and the
//! figures of one run (throughput and latency percentiles). Both systems
//! ([`crate::nodes`], [`crate::raft`]) run their clients through it.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Progress;

/// Clients run, completions are not counted yet.
const WARMUP: u8 = 0;
/// Completions are counted and timed.
const MEASURE: u8 = 1;
/// Clients finish the command in flight and return.
const STOP: u8 = 2;

/// Which part of a run it is, shared by the driver and every client.
#[derive(Clone)]
pub(crate) struct Phase(Arc<AtomicU8>);

impl Phase {
    /// A run that starts warming up.
    pub(crate) fn new() -> Self {
        Phase(Arc::new(AtomicU8::new(WARMUP)))
    }

    fn get(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, phase: u8) {
        self.0.store(phase, Ordering::Relaxed)
    }
}

/// How long a run warms up and then measures.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    /// Clients run (and register their sessions) before the window opens.
    pub(crate) warmup: Duration,
    /// The timed window.
    pub(crate) measure: Duration,
}

/// What one client saw.
pub(crate) struct Recorder {
    phase: Phase,
    /// Commands that completed, in any phase (the agreement check counts them all).
    completed: u64,
    /// Latencies (µs) of the commands that completed inside the window.
    latencies: Vec<u32>,
    /// Commands the client gave up on (they may or may not have executed).
    failed: u64,
}

impl Recorder {
    /// A client's recorder for the run `phase` belongs to.
    pub(crate) fn new(phase: Phase) -> Self {
        Recorder {
            phase,
            completed: 0,
            latencies: Vec::new(),
            failed: 0,
        }
    }

    /// True until the window has closed: the client should start another command.
    pub(crate) fn running(&self) -> bool {
        self.phase.get() != STOP
    }

    /// A command started at `started` completed now.
    pub(crate) fn completed(&mut self, started: Instant) {
        self.completed += 1;
        if self.phase.get() == MEASURE {
            let us = started.elapsed().as_micros();
            self.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// The client gave up on a command.
    pub(crate) fn failed(&mut self) {
        self.failed += 1;
    }
}

/// The figures of one run of one system at one client count.
#[derive(Clone, Copy, Default)]
pub(crate) struct RunStats {
    /// Commands completed inside the window, per second of the window.
    pub(crate) ops_per_sec: f64,
    /// Median latency of those commands, in milliseconds.
    pub(crate) p50_ms: f64,
    /// 99th-percentile latency, in milliseconds.
    pub(crate) p99_ms: f64,
    /// Commands completed in the whole run (warm-up and the end of the last included).
    pub(crate) completed: u64,
    /// Commands given up on in the whole run.
    pub(crate) failed: u64,
    /// Clients that completed no command inside the window (starved: the throughput
    /// and latencies are then those of fewer clients than asked for).
    pub(crate) starved: u64,
}

impl RunStats {
    /// Merges the clients' records of a run whose window lasted `window`.
    pub(crate) fn of(recorders: Vec<Recorder>, window: Duration) -> RunStats {
        let mut latencies = Vec::new();
        let (mut completed, mut failed, mut starved) = (0, 0, 0);
        for r in recorders {
            completed += r.completed;
            failed += r.failed;
            starved += u64::from(r.latencies.is_empty());
            latencies.extend(r.latencies);
        }
        latencies.sort_unstable();
        let pick = |q: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() - 1) as f64 * q).round() as usize;
            f64::from(latencies[i]) / 1000.0
        };
        RunStats {
            ops_per_sec: latencies.len() as f64 / window.as_secs_f64().max(1e-9),
            p50_ms: pick(0.50),
            p99_ms: pick(0.99),
            completed,
            failed,
            starved,
        }
    }
}

/// Sleeps for `d`, moving the progress bar (in milliseconds) as time passes.
async fn sleep_with_progress(d: Duration, progress: &Progress) {
    let step = Duration::from_millis(100);
    let end = Instant::now() + d;
    let mut shown = Duration::ZERO;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep(step.min(end - now)).await;
        let elapsed = d.saturating_sub(end.saturating_duration_since(Instant::now()));
        progress
            .bar
            .inc(elapsed.saturating_sub(shown).as_millis() as u64);
        shown = elapsed;
    }
    progress.bar.inc(d.saturating_sub(shown).as_millis() as u64);
}

/// Runs the phases of one run while the clients work: warm-up, then the window, then
/// stop. Returns the window's actual length.
pub(crate) async fn drive(phase: &Phase, timing: &Timing, progress: &Progress) -> Duration {
    sleep_with_progress(timing.warmup, progress).await;
    phase.set(MEASURE);
    let start = Instant::now();
    sleep_with_progress(timing.measure, progress).await;
    phase.set(STOP);
    start.elapsed()
}
