//! The report's plots, as SVG (plotters): latency by path length (p50, p90, p99,
//! max) and outcomes over time, one line per kind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

/// The kinds of outcome, in the order they are drawn, with their colours.
const KINDS: [(&str, RGBColor); 5] = [
    ("response", RGBColor(46, 155, 87)),
    ("proof", RGBColor(59, 111, 212)),
    ("late", RGBColor(224, 138, 43)),
    ("rejected", RGBColor(150, 150, 150)),
    ("refused", RGBColor(211, 51, 51)),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordu64, plotters::coord::types::RangedCoordu64>,
>;

/// A titled chart on a white 800×480 SVG with its axes described, ranges `0..x` and
/// `0..y`.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    caption: &str,
    (x, x_desc): (u64, &str),
    (y, y_desc): (u64, &str),
) -> Result<Chart<'a, 'b>> {
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..x, 0u64..y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    Ok(chart)
}

/// The legend, then the file written.
fn finish<'a, 'b: 'a>(
    mut chart: Chart<'a, 'b>,
    root: &DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Latency by path length from the report `r`, to `path`.
fn latency(r: &Value, path: &Path) -> Result<()> {
    let rows = r["latency_by_hops"].as_array().cloned().unwrap_or_default();
    let hops: Vec<u64> = rows.iter().filter_map(|x| x["hops"].as_u64()).collect();
    let max_hops = hops.iter().copied().max().unwrap_or(1).max(1);
    let max_ms = rows
        .iter()
        .filter_map(|x| x["max_ms"].as_u64())
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let mut chart = frame(
        &root,
        "Response latency by path length",
        (max_hops + 1, "hops"),
        (max_ms + max_ms / 10, "latency (ms)"),
    )?;
    let series = [
        ("p50_ms", "p50", RGBColor(46, 155, 87)),
        ("p90_ms", "p90", RGBColor(59, 111, 212)),
        ("p99_ms", "p99", RGBColor(224, 138, 43)),
        ("max_ms", "max", RGBColor(211, 51, 51)),
    ];
    for (key, label, colour) in series {
        let points: Vec<(u64, u64)> = rows
            .iter()
            .filter_map(|x| Some((x["hops"].as_u64()?, x[key].as_u64()?)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, colour.filled())),
            )
            .map_err(err)?;
    }
    finish(chart, &root)
}

/// Outcomes per time bucket from the report `r`, to `path`.
fn outcomes(r: &Value, path: &Path) -> Result<()> {
    let rows = r["outcomes_over_time"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let last_s = rows
        .iter()
        .filter_map(|x| x["from_s"].as_u64())
        .max()
        .unwrap_or(0);
    let count = |x: &Value, k: &str| x["outcomes"][k].as_u64().unwrap_or(0);
    let max_n = rows
        .iter()
        .flat_map(|x| KINDS.iter().map(move |(k, _)| count(x, k)))
        .max()
        .unwrap_or(1)
        .max(1);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    let mut chart = frame(
        &root,
        "Outcomes over time",
        (last_s + 10, "time since the first outcome (s)"),
        (max_n + max_n / 10 + 1, "outcomes per bucket"),
    )?;
    for (kind, colour) in KINDS {
        let points: Vec<(u64, u64)> = rows
            .iter()
            .filter_map(|x| Some((x["from_s"].as_u64()?, count(x, kind))))
            .collect();
        if points.iter().all(|p| p.1 == 0) {
            continue;
        }
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?
            .label(kind)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    finish(chart, &root)
}

/// Draws the report's plots into `dir`; returns their paths.
pub(crate) fn draw(r: &Value, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (a, b) = (
        dir.join("latency-by-hops.svg"),
        dir.join("outcomes-over-time.svg"),
    );
    latency(r, &a)?;
    outcomes(r, &b)?;
    Ok(vec![a, b])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plots_are_svg_with_their_series() {
        let r = json!({
            "latency_by_hops": [
                {"hops": 1, "p50_ms": 40, "p90_ms": 60, "p99_ms": 80, "max_ms": 90},
                {"hops": 3, "p50_ms": 120, "p90_ms": 150, "p99_ms": 190, "max_ms": 260},
            ],
            "outcomes_over_time": [
                {"from_s": 0, "outcomes": {"response": 30, "late": 2}},
                {"from_s": 10, "outcomes": {"response": 25, "proof": 4}},
            ],
        });
        let dir = std::env::temp_dir().join(format!("por-plots-{}", std::process::id()));
        let paths = draw(&r, &dir).unwrap();
        let lat = std::fs::read_to_string(&paths[0]).unwrap();
        assert!(lat.starts_with("<svg"), "{lat}");
        assert!(lat.contains("Response latency by path length"));
        assert!(lat.contains("p99"));
        let out = std::fs::read_to_string(&paths[1]).unwrap();
        assert!(out.contains("proof") && out.contains("late") && !out.contains(">refused<"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
