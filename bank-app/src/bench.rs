//! A load generator: many concurrent clients sending one-unit transfers, for measuring
//! throughput and latency of a running cluster (`bank bench`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_core::{Client, ClientOptions, Endpoint};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};
use serde::Serialize;

use crate::account::Account;
use crate::bank::{Bank, BankCommand};

/// What each operation of a [`run_bench`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum BenchWorkload {
    /// One-unit transfers between random accounts, through the log.
    #[default]
    Transfers,
    /// Balance reads of random accounts without a log round (`Client::read`).
    Reads,
    /// The same balance reads as commands through the log (`Client::execute`), to
    /// compare with [`BenchWorkload::Reads`].
    LoggedReads,
}

/// What [`run_bench`] does.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Transfers to complete in all.
    pub transfers: u64,
    /// Concurrent clients, each with one transfer in flight.
    pub clients: usize,
    /// The accounts transfers move between.
    pub accounts: Vec<Account>,
    /// Seed of the transfer choices.
    pub seed: u64,
    /// How long one transfer may take before the client gives up on it.
    pub request_timeout: Duration,
    /// What each operation is. Default transfers.
    pub workload: BenchWorkload,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            transfers: 100_000,
            clients: 64,
            accounts: Account::default_set().collect(),
            seed: 1,
            request_timeout: Duration::from_secs(30),
            workload: BenchWorkload::Transfers,
        }
    }
}

/// The outcome of a [`run_bench`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchReport {
    /// Transfers that moved money (with a read workload: reads answered).
    pub moved: u64,
    /// Transfers the bank rejected (the sender had nothing left); executed all the same.
    pub rejected: u64,
    /// Transfers that did not complete (timeout, session expired).
    pub failed: u64,
    /// Wall-clock time of the run.
    pub elapsed_secs: f64,
    /// Completed transfers per second.
    pub per_sec: f64,
    /// Median latency, in microseconds.
    pub p50_us: u64,
    /// 99th-percentile latency, in microseconds.
    pub p99_us: u64,
    /// Largest latency, in microseconds.
    pub max_us: u64,
}

/// Shared progress counter of a running bench (completed transfers so far).
#[derive(Clone, Debug, Default)]
pub struct BenchProgress(Arc<AtomicU64>);

impl BenchProgress {
    /// Transfers completed so far.
    pub fn completed(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `options.clients` clients against `endpoints` until `options.transfers`
/// transfers completed, each client with one transfer in flight.
pub async fn run_bench(
    endpoints: Vec<Arc<dyn Endpoint>>,
    options: &BenchOptions,
    progress: BenchProgress,
) -> BenchReport {
    let clients = options.clients.max(1) as u64;
    let accounts = Arc::new(options.accounts.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let share = options.transfers / clients + u64::from(c < options.transfers % clients);
        let client_options = ClientOptions::default()
            .with_attempt_timeout(Duration::from_secs(1))
            .with_min_backoff(Duration::from_millis(5))
            .with_max_backoff(Duration::from_millis(200))
            .with_default_deadline(options.request_timeout);
        let mut client = Client::<Bank>::with_options(endpoints.clone(), client_options);
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed.wrapping_mul(1000).wrapping_add(c));
        let accounts = Arc::clone(&accounts);
        let progress = progress.clone();
        let workload = options.workload;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share as usize);
            let (mut moved, mut rejected, mut failed) = (0u64, 0u64, 0u64);
            for _ in 0..share {
                // Two distinct accounts: `to` is `from` shifted by 1..n-1 places.
                let n = accounts.len() as u64;
                let i = rng.next_u64() % n;
                let j = (i + 1 + rng.next_u64() % (n - 1).max(1)) % n;
                let (from, to) = (accounts[i as usize], accounts[j as usize]);
                let t = Instant::now();
                let outcome = match workload {
                    BenchWorkload::Transfers => {
                        let command = BankCommand::Transfer {
                            from,
                            to,
                            amount: 1,
                        };
                        client.execute(&command).await
                    }
                    BenchWorkload::Reads => {
                        client.read(&BankCommand::Balance { account: from }).await
                    }
                    BenchWorkload::LoggedReads => {
                        client
                            .execute(&BankCommand::Balance { account: from })
                            .await
                    }
                };
                match outcome {
                    Ok(out) if out.is_ok() => moved += 1,
                    Ok(_) => rejected += 1,
                    Err(_) => failed += 1,
                }
                latencies.push(t.elapsed().as_micros() as u64);
                progress.0.fetch_add(1, Ordering::Relaxed);
            }
            (moved, rejected, failed, latencies)
        }));
    }
    let mut report = BenchReport::default();
    let mut latencies = Vec::new();
    for t in tasks {
        if let Ok((m, r, f, l)) = t.await {
            report.moved += m;
            report.rejected += r;
            report.failed += f;
            latencies.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    report.elapsed_secs = elapsed;
    report.per_sec = (report.moved + report.rejected) as f64 / elapsed.max(1e-9);
    latencies.sort_unstable();
    let pick = |q: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        latencies[((latencies.len() - 1) as f64 * q) as usize]
    };
    report.p50_us = pick(0.5);
    report.p99_us = pick(0.99);
    report.max_us = latencies.last().copied().unwrap_or(0);
    report
}
