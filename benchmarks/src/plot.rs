//! Throughput plots, as SVG: against batch size (`core`) and against concurrent clients
//! (`runtime`), both log-log, one line per system.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::{CoreRow, RuntimeRow};

/// One system's line: its legend, its colour and its (x, ops/s) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Plots both systems' throughput (log-log) against batch size.
pub(crate) fn core(path: &Path, rows: &[CoreRow]) -> Result<()> {
    let series = [
        (
            "paxos-core (sessions, execution)",
            BLUE,
            rows.iter().map(|r| (r.0 as f64, r.1)).collect(),
        ),
        (
            "OmniPaxos 0.2.4",
            RED,
            rows.iter().map(|r| (r.0 as f64, r.2)).collect(),
        ),
    ];
    lines(
        path,
        "sans-IO core, 5 replicas in one thread, lockstep",
        "batch size B (requests submitted before pumping until quiet)",
        "commands / s",
        &series,
    )
}

/// Plots both systems' throughput (log-log) against the number of concurrent clients.
pub(crate) fn runtime(path: &Path, rows: &[RuntimeRow]) -> Result<()> {
    let series = [
        (
            "paxos-core node driver (mem transport, sessions)",
            BLUE,
            rows.iter()
                .map(|r| (r.clients as f64, r.ours.ops_per_sec))
                .collect(),
        ),
        (
            "openraft 0.9 (in-process network)",
            RED,
            rows.iter()
                .map(|r| (r.clients as f64, r.raft.ops_per_sec))
                .collect(),
        ),
    ];
    lines(
        path,
        "5 nodes in one process, closed-loop clients",
        "concurrent clients (one request in flight each)",
        "commands / s",
        &series,
    )
}

/// Draws `series` on log-log axes that fit them all, with a legend.
fn lines(path: &Path, caption: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting to {}: {e}", path.display());
    let root = SVGBackend::new(path, (720, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;

    let points = || series.iter().flat_map(|s| s.2.iter().copied());
    let x_max = points().map(|p| p.0).fold(2.0f64, f64::max);
    let y_max = points().map(|p| p.1).fold(1.0f64, f64::max) * 2.0;
    let y_min = points()
        .map(|p| p.1)
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(y_max / 4.0)
        / 2.0;

    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0.8f64..x_max * 1.25).log_scale(),
            (y_min..y_max).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.1} M", y / 1e6)
            } else {
                format!("{:.0} k", y / 1e3)
            }
        })
        .draw()
        .map_err(|e| err(&e))?;

    for (name, color, points) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
