//! Figures written as PNG and SVG side by side, with DejaVu Sans bundled (plotters' ab_glyph
//! backend has no system fonts to fall back on).

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{ReportError, Result};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER_FONT: Once = Once::new();

fn register_font() {
    REGISTER_FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

/// Something drawable on any plotters backend.
pub(crate) trait Figure {
    fn size(&self) -> (u32, u32) {
        (900, 560)
    }
    fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

/// Draws `figure` into `{stem}.png` and `{stem}.svg`; returns both paths.
pub(crate) fn render(stem: &Path, figure: &impl Figure) -> Result<Vec<PathBuf>> {
    register_font();
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    let failed = |path: &PathBuf| {
        let path = path.clone();
        move |message| ReportError::Write { path, message }
    };
    {
        let area = BitMapBackend::new(&png, figure.size()).into_drawing_area();
        figure.draw(&area).map_err(failed(&png))?;
        area.present()
            .map_err(|e| e.to_string())
            .map_err(failed(&png))?;
    }
    {
        let area = SVGBackend::new(&svg, figure.size()).into_drawing_area();
        figure.draw(&area).map_err(failed(&svg))?;
        area.present()
            .map_err(|e| e.to_string())
            .map_err(failed(&svg))?;
    }
    Ok(vec![png, svg])
}

/// plotters' errors as text.
pub(crate) fn text(err: impl std::fmt::Display) -> String {
    err.to_string()
}
