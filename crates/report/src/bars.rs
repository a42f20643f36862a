//! Grouped bar charts: for each group (a task) one bar per series (a variant), values in [0, 1].

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Result;
use crate::render::{Figure, render, text};

/// One named series of bars: `values[g]` is its bar in group `g`.
#[derive(Debug, Clone)]
pub struct BarSeries {
    pub name: String,
    pub values: Vec<f64>,
}

struct Bars<'a> {
    title: &'a str,
    y_label: &'a str,
    groups: &'a [String],
    series: &'a [BarSeries],
}

/// Draws grouped bars (y from 0 to 1) into `{stem}.png` and `{stem}.svg`.
pub fn grouped_bar_chart(
    stem: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[BarSeries],
) -> Result<Vec<PathBuf>> {
    render(
        stem,
        &Bars {
            title,
            y_label,
            groups,
            series,
        },
    )
}

impl Figure for Bars<'_> {
    fn size(&self) -> (u32, u32) {
        (1100, 560)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        area.fill(&WHITE).map_err(text)?;
        // Each group takes one slot per series plus one empty slot as a gap.
        let per_group = self.series.len() as u32 + 1;
        let slots = (self.groups.len() as u32 * per_group).max(1);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..slots - 1).into_segmented(), 0.0..1.0f64)
            .map_err(text)?;
        let groups = self.groups;
        let middle = (per_group - 1) / 2;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots as usize)
            .y_desc(self.y_label)
            .label_style(("sans-serif", 13))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(s) if s % per_group == middle => groups
                    .get((s / per_group) as usize)
                    .cloned()
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(text)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(s.values.iter().enumerate().map(|(g, &v)| {
                    let slot = g as u32 * per_group + i as u32;
                    Rectangle::new(
                        [
                            (SegmentValue::Exact(slot), 0.0),
                            (SegmentValue::Exact(slot + 1), v.clamp(0.0, 1.0)),
                        ],
                        color.filled(),
                    )
                }))
                .map_err(text)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(text)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_and_svg_with_group_names_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let groups = vec!["add".to_string(), "mul".to_string()];
        let series = vec![
            BarSeries {
                name: "frequency".into(),
                values: vec![0.5, 0.25],
            },
            BarSeries {
                name: "reap".into(),
                values: vec![1.0, 0.75],
            },
        ];
        let files = grouped_bar_chart(&dir.path().join("b"), "accuracy", "share", &groups, &series)
            .unwrap();
        assert_eq!(&std::fs::read(&files[0]).unwrap()[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        for word in ["add", "mul", "frequency", "reap"] {
            assert!(svg.contains(word), "{word} missing");
        }
    }
}
