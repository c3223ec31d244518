//! Throughput against batch size, as SVG.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::CoreRow;

/// Picks one system's figure out of a row.
type Column = fn(&CoreRow) -> f64;

/// Plots both systems' throughput (log-log) against batch size.
pub(crate) fn core(path: &Path, rows: &[CoreRow]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting to {}: {e}", path.display());
    let root = SVGBackend::new(path, (720, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;

    let b_max = rows.iter().map(|r| r.0).max().unwrap_or(1).max(2) as f64;
    let y_max = rows.iter().flat_map(|r| [r.1, r.2]).fold(1.0f64, f64::max) * 2.0;
    let y_min = rows
        .iter()
        .flat_map(|r| [r.1, r.2])
        .fold(f64::INFINITY, f64::min)
        .min(y_max / 4.0)
        / 2.0;

    let mut chart = ChartBuilder::on(&root)
        .caption(
            "sans-IO core, 5 replicas in one thread, lockstep",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (0.8f64..b_max * 1.25).log_scale(),
            (y_min..y_max).log_scale(),
        )
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("batch size B (requests submitted before pumping until quiet)")
        .y_desc("commands / s")
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

    let series: [(&str, RGBColor, Column); 2] = [
        ("paxos-core (sessions, execution)", BLUE, |r| r.1),
        ("OmniPaxos 0.2.4", RED, |r| r.2),
    ];
    for (name, color, y) in series {
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.0 as f64, y(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )
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
