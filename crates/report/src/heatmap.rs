//! Heatmaps: rows x columns of values in [0, max], darker is larger (expert usage by task).

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Result;
use crate::render::{Figure, render, text};

struct Heatmap<'a> {
    title: &'a str,
    x_label: &'a str,
    rows: &'a [String],
    values: &'a [Vec<f64>],
}

/// Draws `values[row][column]` (one row per label in `rows`, columns numbered from 0) into
/// `{stem}.png` and `{stem}.svg`. Colours scale from white (0) to dark blue (the largest value).
pub fn heatmap(
    stem: &Path,
    title: &str,
    x_label: &str,
    rows: &[String],
    values: &[Vec<f64>],
) -> Result<Vec<PathBuf>> {
    render(
        stem,
        &Heatmap {
            title,
            x_label,
            rows,
            values,
        },
    )
}

/// White at 0, dark blue at 1.
fn shade(v: f64) -> RGBColor {
    let v = v.clamp(0.0, 1.0);
    let mix = |from: f64, to: f64| (from + (to - from) * v).round() as u8;
    RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0))
}

impl Figure for Heatmap<'_> {
    fn size(&self) -> (u32, u32) {
        (1000, 140 + 28 * self.rows.len() as u32)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        area.fill(&WHITE).map_err(text)?;
        let columns = self.values.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
        let rows = self.rows.len().max(1) as u32;
        let max = self
            .values
            .iter()
            .flatten()
            .fold(0.0f64, |a, &b| a.max(b))
            .max(1e-12);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(90)
            // A segmented 0..n has n + 1 segments (the last one for n itself).
            .build_cartesian_2d(
                (0..columns - 1).into_segmented(),
                (0..rows - 1).into_segmented(),
            )
            .map_err(text)?;
        let names = self.rows;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(self.x_label)
            .x_labels(columns as usize)
            .y_labels(rows as usize)
            .label_style(("sans-serif", 13))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(r) => (rows - 1)
                    .checked_sub(*r)
                    .and_then(|i| names.get(i as usize))
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(c) => c.to_string(),
                _ => String::new(),
            })
            .draw()
            .map_err(text)?;
        // Row 0 at the top.
        let cells = self.values.iter().enumerate().flat_map(|(r, row)| {
            row.iter().enumerate().map(move |(c, &v)| {
                let (c, y) = (c as u32, rows - 1 - r as u32);
                Rectangle::new(
                    [
                        (SegmentValue::Exact(c), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(c + 1), SegmentValue::Exact(y + 1)),
                    ],
                    shade(v / max).filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shade_runs_from_white_to_dark_blue() {
        assert_eq!(shade(0.0), RGBColor(255, 255, 255));
        assert_eq!(shade(1.0), RGBColor(8, 48, 107));
        assert_eq!(shade(7.0), shade(1.0));
    }

    #[test]
    fn writes_png_and_svg_with_row_labels() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec!["add".to_string(), "capital".to_string()];
        let values = vec![vec![0.0, 0.5, 1.0, 0.25], vec![1.0, 0.0, 0.0, 0.0]];
        let files = heatmap(&dir.path().join("h"), "usage", "expert", &rows, &values).unwrap();
        assert_eq!(&std::fs::read(&files[0]).unwrap()[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        assert!(svg.contains("capital") && svg.contains("usage"), "{svg}");
    }
}
