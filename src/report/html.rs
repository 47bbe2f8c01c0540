//! `report.html`: one self-contained page (inline CSS, inline SVG charts, no scripts).

use super::markdown::fmt_stat;
use super::schema::BenchReport;
use super::{charts, esc, fmt_opt};

const CSS: &str = "body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}.sim{color:#1565c0;font-weight:bold}\
.warn{background:#fff3e0;border-left:4px solid #fb8c00;padding:.5em 1em}figure{margin:1.5em 0}\
figcaption{font-size:.9em;color:#555}#hw td{text-align:left}";

pub fn render(r: &BenchReport) -> String {
    let f = &r.fingerprint;
    let sim_badge = if r.power.simulated {
        r#" <span class="sim">[simulated]</span>"#
    } else {
        ""
    };
    let mut h = String::new();
    h.push_str(&format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>comine bench: {}</title><style>{CSS}</style></head><body>",
        esc(&r.suite.name)
    ));
    h.push_str(&format!(
        "<h1>comine co-mining benchmark: <code>{}</code> suite</h1>",
        esc(&r.suite.name)
    ));
    if let Some(why) = &r.results.not_comparable {
        h.push_str(&format!(
            "<p class=\"warn\" id=\"not-comparable\"><b>These figures are not comparable:</b> {}</p>",
            esc(why)
        ));
    }
    if r.power.simulated {
        h.push_str("<p class=\"warn\" id=\"simulated-notice\">This machine has no GPU telemetry: every figure marked <span class=\"sim\">[simulated]</span> comes from comine's GPU model, not from hardware. Measured and simulated figures are never added together.</p>");
    }
    h.push_str("<h2>Hardware</h2><table id=\"hw\">");
    for (k, v) in [
        ("Host", f.hostname.clone()),
        ("CPU", format!("{} ({} cores)", f.cpu_model, f.cpu_cores)),
        (
            "RAM",
            format!("{:.1} GiB", f.ram_bytes as f64 / (1u64 << 30) as f64),
        ),
        (
            "GPU",
            format!(
                "{} (driver {}, VBIOS {})",
                f.gpu.model, f.gpu.driver, f.gpu.vbios
            ),
        ),
        ("Kernel", f.kernel.clone()),
        (
            "comine / FFmpeg / filecoin-proofs-api",
            format!(
                "{} / {} / {}",
                f.comine_version, f.ffmpeg_version, f.filecoin_proofs_api
            ),
        ),
        ("Suite hash", r.suite_hash.clone()),
        (
            "Sealing",
            format!(
                "{}: {} (C2: {})",
                r.config.seal_mode, r.config.seal_detail, r.config.c2
            ),
        ),
        (
            "Transcoding",
            format!(
                "{} via {}; {}",
                r.config.ladder, r.config.encoder, r.config.input
            ),
        ),
        (
            "Power sources",
            format!("CPU: {}; GPU: {}", r.power.cpu, r.power.gpu),
        ),
        ("Steering", r.config.steering_policy.clone()),
    ] {
        h.push_str(&format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v)));
    }
    h.push_str("</table>");

    h.push_str("<h2>Results</h2><table id=\"summary\"><tr><th>Figure</th>");
    let shown: Vec<_> = r.phases.iter().filter(|p| !p.reps.is_empty()).collect();
    for p in &shown {
        h.push_str(&format!("<th>{}</th>", esc(&p.label)));
    }
    h.push_str("</tr>");
    let mut rows: Vec<(String, &str, usize, &str)> = vec![
        (
            format!("Sealing throughput ({})", r.config.seal_unit),
            "seal_throughput_per_h",
            2,
            "",
        ),
        ("Sealing drop".into(), "seal_drop_pct", 1, " %"),
        ("Realtime ratio".into(), "realtime_ratio", 2, ""),
        ("Missed deadlines".into(), "missed_deadlines", 1, ""),
        ("Encoded pixels/s".into(), "pixels_per_s", 0, ""),
        ("Power, measured".into(), "power_w", 1, " W"),
        (
            "Power delta vs seal only".into(),
            "power_delta_pct",
            1,
            " %",
        ),
        ("Energy per segment".into(), "energy_per_segment_j", 1, " J"),
        ("Energy per sector".into(), "energy_per_sector_j", 0, " J"),
        ("Host CPU".into(), "cpu_util_pct", 0, " %"),
        (
            "Sealing paused by steering".into(),
            "sealing_paused_s",
            1,
            " s",
        ),
    ];
    if r.power.simulated {
        rows.push(("GPU power [simulated]".into(), "sim_gpu_power_w", 1, " W"));
        rows.push((
            "GPU power delta [simulated]".into(),
            "sim_power_delta_pct",
            1,
            " %",
        ));
        rows.push((
            "GPU energy per segment [simulated]".into(),
            "sim_energy_per_segment_j",
            1,
            " J",
        ));
    }
    for (label, key, digits, unit) in rows {
        if !shown.iter().any(|p| p.stats.contains_key(key)) && !key.starts_with("power_w") {
            continue;
        }
        let class = if label.contains("[simulated]") {
            " class=\"sim\""
        } else {
            ""
        };
        h.push_str(&format!("<tr{class}><td>{}</td>", esc(&label)));
        for p in &shown {
            let cell = p.stats.get(key).map_or_else(
                || {
                    if key == "power_w" {
                        "not measured".to_string()
                    } else {
                        "–".to_string()
                    }
                },
                |s| fmt_stat(s, digits, unit),
            );
            h.push_str(&format!("<td>{}</td>", esc(&cell)));
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    h.push_str(&format!(
        "<p>Live streams at real time (ratio ≤ {}): <b id=\"streams\">{}</b>. Idle power: {}. Medians of k repetitions, ± half the spread; ⚠ marks a spread above 10 %.</p>",
        r.suite.phases.transcode.target_ratio,
        r.results.streams_at_realtime,
        esc(&fmt_opt(r.results.idle_power_w, 1, " W"))
    ));
    if let Some(ai) = super::markdown::ai_summary(r) {
        h.push_str(&format!("<p id=\"ai\">AI upscale: {}</p>", esc(&ai)));
    }
    if !r.warnings.is_empty() {
        h.push_str("<div class=\"warn\"><b>Warnings</b><ul>");
        for w in &r.warnings {
            h.push_str(&format!("<li>{}</li>", esc(w)));
        }
        h.push_str("</ul></div>");
    }
    h.push_str("<h2>Charts</h2>");
    for (id, caption, svg) in [
        ("chart-power", format!("Power over time, shaded by phase (grey idle, orange seal, blue transcode, green combined steered, pink unsteered){sim_badge}"), charts::power_over_time(r)),
        ("chart-throughput", "Sealing throughput per phase (median, min–max)".to_string(), charts::throughput_bars(r)),
        ("chart-ratio", "Realtime duration ratio against concurrent streams".to_string(), charts::ratio_vs_streams(r)),
        ("chart-util", format!("Utilisation stacks per phase{sim_badge}"), charts::utilisation_stacks(r)),
    ] {
        h.push_str(&format!("<figure id=\"{id}\">{svg}<figcaption>{caption}</figcaption></figure>"));
    }
    h.push_str(&format!(
        "<p><small>{} samples, {} sealing events, {} segments; all in report.json (schema {} v{}).</small></p></body></html>",
        r.samples.len(),
        r.seal_events.len(),
        r.segments.len(),
        r.schema,
        r.schema_version
    ));
    h
}
