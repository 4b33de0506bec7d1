//! SVG charts drawn with plotters: grouped bars with the value above each bar.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::peers::Target;

const COLORS: [RGBColor; 4] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// Bars grouped by `groups`, one bar per target in each group.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[&str],
    value: &dyn Fn(&str, Target) -> Option<f64>,
) -> Result<()> {
    let order = [
        Target::Portcullis,
        Target::Nginx,
        Target::Haproxy,
        Target::Direct,
    ];
    let series: Vec<(&str, Vec<Option<f64>>)> = order
        .iter()
        .map(|&t| (t.name(), groups.iter().map(|g| value(g, t)).collect()))
        .collect();
    bars(path, title, unit, groups, &series)
}

/// A grouped bar chart: `series[i].1[g]` is the bar of series `i` in group `g`.
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    groups: &[&str],
    series: &[(&str, Vec<Option<f64>>)],
) -> Result<()> {
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = if max > 0.0 { max * 1.35 } else { 1.0 };
    let root = SVGBackend::new(path, (800, 420)).into_drawing_area();
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..groups.len() as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(unit)
            .draw()?;
        let n = series.len() as f64;
        let width = 0.8 / n;
        for (i, (name, values)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let rects = values.iter().enumerate().filter_map(|(g, v)| {
                let x0 = g as f64 + 0.1 + i as f64 * width;
                v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled()))
            });
            chart
                .draw_series(rects)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            let labels = values.iter().enumerate().filter_map(|(g, v)| {
                let x = g as f64 + 0.1 + (i as f64 + 0.45) * width;
                v.map(|v| {
                    Text::new(
                        short(v),
                        (x, v + top * 0.01),
                        ("sans-serif", 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                })
            });
            chart.draw_series(labels)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()?;
        for (g, name) in groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.to_string(),
                (x, y + 8),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {path:?}: {e}"))
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
