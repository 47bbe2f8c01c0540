//! Benchmark reports: the versioned `report.json` schema, a self-contained
//! `report.html` with inline SVG charts, a Markdown summary for forum posts, and
//! `comine report compare` for putting several machines side by side.

pub mod charts;
pub mod cli;
pub mod compare;
pub mod html;
pub mod markdown;
pub mod redact;
pub mod schema;

use std::path::{Path, PathBuf};

use schema::BenchReport;

/// A report file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}{hint}")]
pub struct WriteError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
    pub hint: &'static str,
}

/// Write a file, turning "disk full" into advice.
pub fn write_file(path: &Path, data: &[u8]) -> Result<(), WriteError> {
    std::fs::write(path, data).map_err(|source| {
        let hint = if source.raw_os_error() == Some(libc::ENOSPC) {
            " (the disk is full: free space or pick another --out)"
        } else {
            ""
        };
        WriteError {
            path: path.display().to_string(),
            source,
            hint,
        }
    })
}

/// Write `report.json`, `report.html` and `report.md` into `out`.
pub fn write_all(report: &BenchReport, out: &Path) -> Result<Vec<PathBuf>, WriteError> {
    let json = serde_json::to_vec_pretty(report).map_err(|e| WriteError {
        path: out.join("report.json").display().to_string(),
        source: std::io::Error::other(e),
        hint: "",
    })?;
    let files = [
        (out.join("report.json"), json),
        (out.join("report.html"), html::render(report).into_bytes()),
        (out.join("report.md"), markdown::render(report).into_bytes()),
    ];
    let mut written = Vec::new();
    for (path, data) in files {
        write_file(&path, &data)?;
        written.push(path);
    }
    Ok(written)
}

/// Format an optional figure, or the words "not measured".
pub fn fmt_opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}{unit}"),
        _ => "not measured".into(),
    }
}

/// Minimal HTML escaping for text we did not write ourselves (paths, commands, models).
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
