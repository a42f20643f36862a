//! An evaluation's files: items.csv (one row per probe), heldout.csv (one row per text),
//! tasks.csv (accuracy and interval per task) and summary.json. Written into a temporary folder
//! and renamed, so a folder that exists is complete.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::heldout::HeldoutResult;
use crate::probes::ProbeResult;
use crate::summary::EvalSummary;
use crate::{EvalError, Result};

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = String::new();
    let mut header_done = false;
    for row in rows {
        let value = serde_json::to_value(row).map_err(|e| EvalError::file(path, e))?;
        let object = value
            .as_object()
            .ok_or_else(|| EvalError::file(path, "rows must be records"))?;
        if !header_done {
            let names: Vec<String> = object.keys().map(|k| csv_field(k)).collect();
            text.push_str(&names.join(","));
            text.push('\n');
            header_done = true;
        }
        let cells: Vec<String> = object
            .values()
            .map(|v| match v {
                serde_json::Value::String(s) => csv_field(s),
                other => other.to_string(),
            })
            .collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| EvalError::file(path, e))
}

/// RFC 4180 quoting: fields with a comma, quote or line break are quoted, quotes doubled.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes the evaluation into `out` (replacing it), through `out` + ".partial".
pub fn write_results(
    out: &Path,
    probes: &[ProbeResult],
    heldout: Option<&HeldoutResult>,
    summary: &EvalSummary,
) -> Result<PathBuf> {
    let partial = out.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| EvalError::file(&partial, e))?;
    write_csv(&partial.join("items.csv"), probes)?;
    write_csv(&partial.join("tasks.csv"), &summary.tasks)?;
    if let Some(h) = heldout {
        write_csv(&partial.join("heldout.csv"), &h.texts)?;
    }
    let json = serde_json::to_string_pretty(summary).map_err(|e| EvalError::file(out, e))?;
    std::fs::write(partial.join("summary.json"), json + "\n")
        .map_err(|e| EvalError::file(&partial, e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| EvalError::file(out, e))?;
    }
    std::fs::rename(&partial, out).map_err(|e| EvalError::file(out, e))?;
    Ok(out.to_path_buf())
}

/// Reads summary.json of an evaluation folder.
pub fn read_summary(dir: &Path) -> Result<EvalSummary> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::file(&path, e))?;
    serde_json::from_str(&text).map_err(|e| EvalError::file(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("Paris"), "Paris");
        assert_eq!(csv_field("a, b"), "\"a, b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
