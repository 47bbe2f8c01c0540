//! `comine report compare`: several reports side by side (table + charts).

use super::charts::compare_bars;
use super::schema::BenchReport;
use super::{esc, fmt_opt};

/// One column per report.
struct Col<'a> {
    name: String,
    r: &'a BenchReport,
}

fn columns(reports: &[(String, BenchReport)]) -> Vec<Col<'_>> {
    reports
        .iter()
        .map(|(path, r)| Col {
            name: format!("{} ({})", r.fingerprint.hostname, path),
            r,
        })
        .collect()
}

type Getter = fn(&BenchReport) -> String;

fn rows() -> Vec<(&'static str, Getter)> {
    vec![
        ("CPU", |r| {
            format!("{} ×{}", r.fingerprint.cpu_model, r.fingerprint.cpu_cores)
        }),
        ("GPU", |r| {
            if r.power.simulated {
                format!("{} [simulated]", r.fingerprint.gpu.model)
            } else {
                r.fingerprint.gpu.model.clone()
            }
        }),
        ("Suite (hash)", |r| {
            format!(
                "{} ({})",
                r.suite.name,
                &r.suite_hash[..12.min(r.suite_hash.len())]
            )
        }),
        ("Sealing workload", |r| {
            format!("{} ({})", r.config.seal_mode, r.config.seal_unit)
        }),
        ("Sealing throughput, alone", |r| {
            fmt_opt(r.results.seal_throughput_per_h, 2, "/h")
        }),
        ("Streams at real time", |r| {
            r.results.streams_at_realtime.to_string()
        }),
        ("Transcode pixels/s", |r| {
            fmt_opt(r.results.transcode_pixels_per_s, 0, "")
        }),
        ("Sealing drop, steered", |r| {
            fmt_opt(
                r.results.steered.as_ref().and_then(|c| c.seal_drop_pct),
                1,
                " %",
            )
        }),
        ("Sealing drop, unsteered", |r| {
            fmt_opt(
                r.results.unsteered.as_ref().and_then(|c| c.seal_drop_pct),
                1,
                " %",
            )
        }),
        ("Realtime ratio, steered", |r| {
            fmt_opt(
                r.results.steered.as_ref().and_then(|c| c.realtime_ratio),
                2,
                "",
            )
        }),
        ("Missed deadlines, steered / unsteered", |r| {
            format!(
                "{} / {}",
                r.results.steered.as_ref().map_or(0, |c| c.missed_deadlines),
                r.results
                    .unsteered
                    .as_ref()
                    .map_or(0, |c| c.missed_deadlines)
            )
        }),
        ("Power delta, unsteered (measured)", |r| {
            fmt_opt(
                r.results.unsteered.as_ref().and_then(|c| c.power_delta_pct),
                1,
                " %",
            )
        }),
        ("Energy per segment (measured)", |r| {
            fmt_opt(
                r.results
                    .unsteered
                    .as_ref()
                    .and_then(|c| c.energy_per_segment_j),
                1,
                " J",
            )
        }),
        ("Energy per sector (measured)", |r| {
            fmt_opt(
                r.results
                    .unsteered
                    .as_ref()
                    .and_then(|c| c.energy_per_sector_j),
                0,
                " J",
            )
        }),
        ("GPU power delta [simulated]", |r| {
            fmt_opt(
                r.results
                    .unsteered
                    .as_ref()
                    .and_then(|c| c.sim_power_delta_pct),
                1,
                " %",
            )
        }),
        ("Warnings", |r| r.warnings.len().to_string()),
    ]
}

/// The comparison as a Markdown table.
pub fn markdown(reports: &[(String, BenchReport)]) -> String {
    let cols = columns(reports);
    let mut out = String::from("## comine co-mining benchmark comparison\n\n| Figure |");
    for c in &cols {
        out.push_str(&format!(" {} |", c.name));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(cols.len()));
    out.push('\n');
    for (label, get) in rows() {
        out.push_str(&format!("| {label} |"));
        for c in &cols {
            out.push_str(&format!(" {} |", get(c.r)));
        }
        out.push('\n');
    }
    let hashes: std::collections::BTreeSet<&str> =
        reports.iter().map(|(_, r)| r.suite_hash.as_str()).collect();
    if hashes.len() > 1 {
        out.push_str("\n*The reports ran different suites (different hashes): compare trends, not exact figures.*\n");
    }
    if reports.iter().any(|(_, r)| r.power.simulated) {
        out.push_str("\n*[simulated] figures come from comine's GPU model, not hardware.*\n");
    }
    out
}

/// The comparison as a self-contained HTML page with charts.
pub fn html(reports: &[(String, BenchReport)]) -> String {
    let cols = columns(reports);
    let mut h = String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>comine bench comparison</title><style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}.sim{color:#1565c0;font-weight:bold}</style></head><body><h1>comine co-mining benchmark comparison</h1><table id=\"compare\"><tr><th>Figure</th>");
    for c in &cols {
        h.push_str(&format!("<th>{}</th>", esc(&c.name)));
    }
    h.push_str("</tr>");
    for (label, get) in rows() {
        let class = if label.contains("simulated") {
            " class=\"sim\""
        } else {
            ""
        };
        h.push_str(&format!("<tr{class}><td>{}</td>", esc(label)));
        for c in &cols {
            h.push_str(&format!("<td>{}</td>", esc(&get(c.r))));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let label = |c: &Col<'_>| c.r.fingerprint.hostname.clone();
    let streams: Vec<(String, f64)> = cols
        .iter()
        .map(|c| (label(c), c.r.results.streams_at_realtime as f64))
        .collect();
    let drop: Vec<(String, f64)> = cols
        .iter()
        .map(|c| {
            (
                label(c),
                c.r.results
                    .unsteered
                    .as_ref()
                    .and_then(|x| x.seal_drop_pct)
                    .unwrap_or(0.0)
                    .max(0.0),
            )
        })
        .collect();
    let thr: Vec<(String, f64)> = cols
        .iter()
        .map(|c| (label(c), c.r.results.seal_throughput_per_h.unwrap_or(0.0)))
        .collect();
    for (id, svg) in [
        (
            "chart-streams",
            compare_bars("Live streams at real time", "streams", &streams),
        ),
        (
            "chart-drop",
            compare_bars("Sealing throughput drop, unsteered", "%", &drop),
        ),
        (
            "chart-seal",
            compare_bars(
                "Sealing throughput alone (units differ by workload)",
                "per hour",
                &thr,
            ),
        ),
    ] {
        h.push_str(&format!("<figure id=\"{id}\">{svg}</figure>"));
    }
    if reports.iter().any(|(_, r)| r.power.simulated) {
        h.push_str(
            "<p class=\"sim\">[simulated] figures come from comine's GPU model, not hardware.</p>",
        );
    }
    h.push_str("</body></html>");
    h
}
