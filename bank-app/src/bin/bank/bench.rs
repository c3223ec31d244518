//! `bank bench`: load the cluster, measure throughput and latency.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use bank_app::{
    run_bench, BenchOptions, BenchProgress, BenchWorkload, ClusterConfig, RemoteCluster,
    RemoteOptions,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use paxos_transport_tcp::{DEFAULT_CALLS_PER_CONNECTION, DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP};
use tokio::time::Instant;

use crate::options::{require_reachable, JsonFlag};
use crate::output::{stdout_line, stdout_text};

/// Options of `bank bench`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Transfers to complete in all.
    #[arg(long, default_value = "100000")]
    transfers: u64,
    /// Concurrent clients, each with one transfer in flight. They share pipelined
    /// connections to each node (see --connections), each carrying up to 64 calls at
    /// once, so up to 4096 clients (64 connections of 64 calls) all have their
    /// transfers in flight; more wait their turn for a slot.
    #[arg(long, default_value = "64")]
    clients: usize,
    /// Connections to each node, shared by the clients, each carrying up to 64 calls at
    /// once (a node takes 64 pipelined calls per connection, and 64 connections from one
    /// address). Default: enough for every client's call, at least 4, at most 64.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: Option<u16>,
    /// Seed of the transfer choices.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// What each operation is: `transfers`; `reads`, balance reads without a log round;
    /// `logged-reads`, the same reads through the log (to compare).
    #[arg(long, value_enum, default_value = "transfers")]
    workload: Workload,
    /// Print the result only: no progress on stderr.
    #[arg(long, short = 'q')]
    quiet: bool,
    #[command(flatten)]
    output: JsonFlag,
}

/// `bank bench --workload`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Workload {
    Transfers,
    Reads,
    LoggedReads,
}

pub(crate) async fn run(config: &ClusterConfig, args: BenchArgs) -> anyhow::Result<ExitCode> {
    // The clients share pipelined connections: a call takes an idle connection, else
    // opens one up to `connections_per_node`, else shares the least loaded one. With
    // 64 calls per connection (a node's `max_client_inflight`), clients / 64
    // connections (rounded up) carry every client's call; at least 4 spread the calls,
    // so that answers, which a connection returns in order, wait less behind slower
    // ones (at 256 clients, 4 connections did better than 1 or 2 and no worse than 8
    // or 16). At most 64: what a node accepts from one address
    // (`max_client_connections_per_ip`); beyond it a node refuses the connection.
    let per_ip = DEFAULT_MAX_CLIENT_CONNECTIONS_PER_IP;
    let connections = match args.connections {
        Some(n) => usize::from(n),
        None => args
            .clients
            .div_ceil(DEFAULT_CALLS_PER_CONNECTION)
            .clamp(4, per_ip),
    };
    let options = RemoteOptions {
        connections_per_node: connections,
        calls_per_connection: DEFAULT_CALLS_PER_CONNECTION,
        ..RemoteOptions::default()
    };
    let cluster = RemoteCluster::new(config, options)?;
    require_reachable(&cluster).await?;
    let options = BenchOptions {
        transfers: args.transfers,
        clients: args.clients,
        seed: args.seed,
        workload: match args.workload {
            Workload::Transfers => BenchWorkload::Transfers,
            Workload::Reads => BenchWorkload::Reads,
            Workload::LoggedReads => BenchWorkload::LoggedReads,
        },
        ..BenchOptions::default()
    };
    let progress = BenchProgress::default();
    let run = run_bench(cluster.endpoints(), &options, progress.clone());
    tokio::pin!(run);
    let started = Instant::now();
    // A bar on a terminal, a line a second otherwise, nothing with --quiet.
    let bar = (!args.quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::with_draw_target(Some(args.transfers), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{bar:25}] {pos}/{len} transfers {msg} {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let lines = !args.quiet && bar.is_none();
    let mut last = 0;
    let mut ticker = tokio::time::interval(if bar.is_some() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    });
    ticker.tick().await;
    let report = loop {
        tokio::select! {
            report = &mut run => break report,
            _ = ticker.tick() => {
                let done = progress.completed();
                if let Some(bar) = &bar {
                    bar.set_position(done);
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{:.0}/s", done as f64 / secs));
                } else if lines {
                    eprintln!(
                        "{:>6.1} s  {done:>9} transfers  {:>8} /s",
                        started.elapsed().as_secs_f64(),
                        done - last
                    );
                }
                last = done;
            }
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.output.json {
        stdout_line(&serde_json::to_value(&report)?)?;
    } else {
        let noun = match args.workload {
            Workload::Transfers => "transfers",
            Workload::Reads => "reads",
            Workload::LoggedReads => "logged reads",
        };
        stdout_text(&format!(
            "{} {noun} ({} moved, {} rejected, {} failed) in {:.2} s: {:.0} {noun}/s; \
             latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            report.moved + report.rejected + report.failed,
            report.moved,
            report.rejected,
            report.failed,
            report.elapsed_secs,
            report.per_sec,
            report.p50_us as f64 / 1000.0,
            report.p99_us as f64 / 1000.0,
            report.max_us as f64 / 1000.0,
        ))?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
