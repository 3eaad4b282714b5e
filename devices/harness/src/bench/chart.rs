//! `bench.svg`: the bench figures as grouped horizontal bars, baseline and p2plab per
//! metric, on one logarithmic axis (each row in its own unit, named in its label), with
//! min..max whiskers, the value at each bar's end, the ratio p2plab / baseline at the
//! right and the host limits as grey bars (and as a grey tick across each row set against
//! one). Drawn by `plotters`' SVG backend, which writes text as SVG `<text>` elements: no
//! font files or font libraries are involved.

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const BASELINE: RGBColor = RGBColor(0x4e, 0x79, 0xa7);
const P2PLAB: RGBColor = RGBColor(0xf2, 0x8e, 0x2b);
const HOST: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);
const ROW_PX: u32 = 34;
const WIDTH_PX: u32 = 1100;

/// A median with the range of its samples.
#[derive(Clone, Copy, Debug)]
pub struct Bar {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// One chart row: a metric (baseline and p2plab bars) or a host limit (`host`).
pub struct Row {
    /// The text left of the row, with its unit.
    pub label: String,
    pub baseline: Option<Bar>,
    pub p2plab: Option<Bar>,
    /// p2plab / baseline of the medians.
    pub ratio: Option<f64>,
    /// The value of the host limit this metric is set against (a grey tick).
    pub limit: Option<f64>,
    /// A host-limit row: its value (a grey bar).
    pub host: Option<f64>,
}

/// 1234 → "1234", 12345 → "12k", 2e6 → "2M": short axis and bar labels.
fn short(v: f64) -> String {
    if v >= 1e6 {
        let m = format!("{:.2}", v / 1e6);
        format!("{}M", m.trim_end_matches('0').trim_end_matches('.'))
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Write the chart of `rows` to `path` (SVG) under `title`.
pub fn write(path: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    draw(path, title, rows)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw(path: &Path, title: &str, rows: &[Row]) -> Result<(), Box<dyn std::error::Error>> {
    let n = rows.len().max(1);
    let height = 130 + ROW_PX * n as u32;
    let root = SVGBackend::new(path, (WIDTH_PX, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| {
            [
                r.baseline.map(|b| b.min),
                r.baseline.map(|b| b.max),
                r.p2plab.map(|b| b.min),
                r.p2plab.map(|b| b.max),
                r.limit,
                r.host,
            ]
        })
        .flatten()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let vmin = values.iter().copied().fold(f64::INFINITY, f64::min);
    let vmax = values.iter().copied().fold(0.0, f64::max);
    let (lo, hi) = if values.is_empty() {
        (1.0, 10.0)
    } else {
        // Whole decades, with room right of the longest bar for its value label.
        (
            10f64.powf((vmin / 2.0).log10().floor()),
            10f64.powf((vmax * 6.0).log10().ceil()),
        )
    };
    root.draw(&Text::new(
        title,
        (WIDTH_PX as i32 / 2, 16),
        TextStyle::from(("sans-serif", 18).into_font()).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    let mut chart = ChartBuilder::on(&root)
        .margin_top(62)
        .margin_left(230)
        .margin_right(80)
        .margin_bottom(8)
        .x_label_area_size(44)
        .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..(n as f64 - 0.5))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_label_formatter(&|v| short(*v))
        .x_desc("median of the samples, each row in the unit its label names (log scale); whisker: min..max")
        .draw()?;

    let yc = |i: usize| (n - 1 - i) as f64;
    let value_style =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (i, r) in rows.iter().enumerate() {
        let y = yc(i);
        if let Some(v) = r.limit.filter(|v| *v > 0.0) {
            chart.draw_series([PathElement::new(
                vec![(v, y - 0.45), (v, y + 0.45)],
                HOST.stroke_width(3),
            )])?;
        }
        for (bar, color, y0, y1) in [
            (r.baseline, BASELINE, y + 0.03, y + 0.38),
            (r.p2plab, P2PLAB, y - 0.38, y - 0.03),
        ] {
            let Some(b) = bar.filter(|b| b.median > 0.0) else {
                continue;
            };
            let ym = (y0 + y1) / 2.0;
            chart.draw_series([Rectangle::new([(lo, y0), (b.median, y1)], color.filled())])?;
            chart.draw_series([
                PathElement::new(vec![(b.min.max(lo), ym), (b.max, ym)], BLACK),
                PathElement::new(
                    vec![(b.min.max(lo), y0 + 0.06), (b.min.max(lo), y1 - 0.06)],
                    BLACK,
                ),
                PathElement::new(vec![(b.max, y0 + 0.06), (b.max, y1 - 0.06)], BLACK),
            ])?;
            chart.draw_series([Text::new(
                short(b.median),
                (b.max.max(b.median) * 1.1, ym),
                value_style.clone(),
            )])?;
        }
        if let Some(v) = r.host.filter(|v| *v > 0.0) {
            chart.draw_series([Rectangle::new([(lo, y - 0.2), (v, y + 0.2)], HOST.filled())])?;
            chart.draw_series([Text::new(short(v), (v * 1.1, y), value_style.clone())])?;
        }
        let (left, py) = chart.backend_coord(&(lo, y));
        let (right, _) = chart.backend_coord(&(hi, y));
        root.draw(&Text::new(
            r.label.clone(),
            (left - 8, py),
            TextStyle::from(("sans-serif", 13).into_font())
                .pos(Pos::new(HPos::Right, VPos::Center)),
        ))?;
        if let Some(q) = r.ratio {
            root.draw(&Text::new(
                format!("{q:.2}×"),
                (right + 8, py),
                TextStyle::from(("sans-serif", 13).into_font())
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
    }

    // Legend, under the title.
    let legend = [
        (BASELINE, "baseline (QEMU nvme)"),
        (P2PLAB, "p2plab"),
        (
            HOST,
            "host limit (grey tick: the limit a row is set against)",
        ),
    ];
    let mut x = 230;
    let ly = 44;
    for (color, text) in legend {
        root.draw(&Rectangle::new(
            [(x, ly - 6), (x + 14, ly + 6)],
            color.filled(),
        ))?;
        root.draw(&Text::new(
            text,
            (x + 20, ly),
            TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += 40 + 7 * text.len() as i32;
    }
    root.draw(&Text::new(
        "ratio",
        (WIDTH_PX as i32 - 72, ly),
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center)),
    ))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Bar, Row};

    fn bar(m: f64) -> Option<Bar> {
        Some(Bar {
            median: m,
            min: m * 0.9,
            max: m * 1.1,
        })
    }

    #[test]
    fn chart_is_written_from_fixed_figures() {
        let rows = vec![
            Row {
                label: "p2p_read (MiB/s)".into(),
                baseline: bar(65.0),
                p2plab: bar(1900.0),
                ratio: Some(1900.0 / 65.0),
                limit: Some(3000.0),
                host: None,
            },
            Row {
                label: "rr4k_qd1_p50_us (µs)".into(),
                baseline: bar(110.0),
                p2plab: None,
                ratio: None,
                limit: None,
                host: None,
            },
            Row {
                label: "host_memcpy (MiB/s)".into(),
                baseline: None,
                p2plab: None,
                ratio: None,
                limit: None,
                host: Some(11000.0),
            },
        ];
        let dir = std::env::temp_dir().join(format!("p2plab-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bench.svg");
        super::write(&path, "p2plab bench", &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg:.200}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<rect"));
        for t in [
            "p2p_read (MiB/s)",
            "host_memcpy (MiB/s)",
            "29.23×",
            "1900",
            "baseline",
        ] {
            assert!(svg.contains(t), "{t} not in the chart");
        }
    }

    #[test]
    fn short_labels() {
        assert_eq!(super::short(12.34), "12.3");
        assert_eq!(super::short(10.0), "10");
        assert_eq!(super::short(1234.0), "1234");
        assert_eq!(super::short(12345.0), "12k");
        assert_eq!(super::short(2e6), "2M");
        assert_eq!(super::short(2.5e6), "2.5M");
    }
}
