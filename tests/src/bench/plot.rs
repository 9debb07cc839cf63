//! The report's SVG plots (plotters, SVG backend only).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::report::Series;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("{e:?}")
}

/// Per-packet cost (ns) against grant count, log-scaled grant axis.
pub fn cost_vs_grants(path: &Path, series: &[Series]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let points = series.iter().flat_map(|s| s.points.iter());
    let x_max = points.clone().map(|p| p.0).fold(10.0, f64::max) * 2.0;
    let y_max = points.map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Per-packet cost (BPF_PROG_TEST_RUN) against grant count",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.5f64..x_max).log_scale(), 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("grants in the map")
        .y_desc("ns per packet")
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Two bar panels by mode: dropped packets per second, and softirq CPU
/// nanoseconds per dropped packet.
pub fn flood(path: &Path, modes: &[(String, f64, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((1, 2));
    let n = modes.len().max(1) as f64;
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "Dropped packets per second",
            (|m: &(String, f64, f64)| m.1) as fn(&_) -> f64,
        ),
        (
            "Softirq CPU ns per dropped packet",
            |m: &(String, f64, f64)| m.2,
        ),
    ]) {
        let y_max = modes
            .iter()
            .map(pick)
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n, 0f64..y_max)
            .map_err(err)?;
        let labels: Vec<String> = modes.iter().map(|m| m.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(labels.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(err)?;
        chart
            .draw_series(
                modes
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| pick(m).is_finite())
                    .map(|(i, m)| {
                        let x = i as f64;
                        Rectangle::new(
                            [(x + 0.15, 0.0), (x + 0.85, pick(m))],
                            COLORS[i % COLORS.len()].filled(),
                        )
                    }),
            )
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}
