//! `report.md`: one table people can paste into a forum post.

use super::fmt_opt;
use super::schema::{BenchReport, PhaseSummary, Stat};

fn stat_cell(p: Option<&PhaseSummary>, key: &str, digits: usize, unit: &str) -> String {
    match p.and_then(|p| p.stats.get(key)) {
        Some(s) => fmt_stat(s, digits, unit),
        None => "–".into(),
    }
}

/// `12.3 W ±4%` (with ⚠ when the spread exceeds 10 %).
pub fn fmt_stat(s: &Stat, digits: usize, unit: &str) -> String {
    let warn = if s.noisy { " ⚠" } else { "" };
    if s.n > 1 {
        format!(
            "{:.digits$}{unit} ±{:.0}%{warn}",
            s.median,
            s.spread_pct / 2.0
        )
    } else {
        format!("{:.digits$}{unit}", s.median)
    }
}

pub fn render(r: &BenchReport) -> String {
    let f = &r.fingerprint;
    let phase = |n: &str| r.phases.iter().find(|p| p.name == n && !p.reps.is_empty());
    let cols = [
        "seal",
        "transcode",
        "combined_steered",
        "combined_unsteered",
    ];
    let mut out = String::new();
    if let Some(why) = &r.results.not_comparable {
        out.push_str(&format!(
            "> **These figures are not comparable:** {why}\n\n"
        ));
    }
    out.push_str(&format!(
        "## comine co-mining benchmark: `{}` suite\n\n**CPU** {} ({} cores), **RAM** {:.1} GiB, **GPU** {}{}, **FFmpeg** {}, **comine** {}, suite hash `{}`\n\n",
        r.suite.name,
        f.cpu_model,
        f.cpu_cores,
        f.ram_bytes as f64 / (1u64 << 30) as f64,
        f.gpu.model,
        if r.power.simulated { " (**simulated**: no GPU on this machine)" } else { "" },
        f.ffmpeg_version,
        f.comine_version,
        &r.suite_hash[..12.min(r.suite_hash.len())],
    ));
    out.push_str(&format!(
        "Sealing: {} ({}; C2: {}). Transcoding: {} via {}, {}. Power: CPU {}, GPU {}.\n\n",
        r.config.seal_mode,
        r.config.seal_detail,
        r.config.c2,
        r.config.ladder,
        r.config.encoder,
        r.config.input,
        r.power.cpu,
        r.power.gpu
    ));
    out.push_str("| Figure | Seal only | Transcode only | Combined, steered | Combined, unsteered |\n|---|---|---|---|---|\n");
    let row = |out: &mut String, name: &str, key: &str, digits: usize, unit: &str| {
        let cells: Vec<String> = cols
            .iter()
            .map(|c| stat_cell(phase(c), key, digits, unit))
            .collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    };
    row(
        &mut out,
        &format!("Sealing throughput ({})", r.config.seal_unit),
        "seal_throughput_per_h",
        2,
        "",
    );
    row(
        &mut out,
        "Sealing throughput drop",
        "seal_drop_pct",
        1,
        " %",
    );
    let streams: Vec<String> = cols
        .iter()
        .map(|c| match (c, phase(c)) {
            (&"seal", _) | (_, None) => "–".into(),
            _ => r.results.streams_at_realtime.to_string(),
        })
        .collect();
    out.push_str(&format!(
        "| Live streams at real time (ratio ≤ {}) | {} |\n",
        r.suite.phases.transcode.target_ratio,
        streams.join(" | ")
    ));
    row(&mut out, "Realtime duration ratio", "realtime_ratio", 2, "");
    row(
        &mut out,
        "Missed deadlines per window",
        "missed_deadlines",
        1,
        "",
    );
    row(&mut out, "Encoded pixels/s", "pixels_per_s", 0, "");
    if r.power.measured {
        row(&mut out, "Power, measured", "power_w", 1, " W");
        row(
            &mut out,
            "Power delta vs seal only",
            "power_delta_pct",
            1,
            " %",
        );
        row(
            &mut out,
            "Energy per segment (marginal)",
            "energy_per_segment_j",
            1,
            " J",
        );
        row(
            &mut out,
            "Energy per sector",
            "energy_per_sector_j",
            0,
            " J",
        );
    } else {
        out.push_str(&format!(
            "| Power, measured | {} |\n",
            ["not measured"; 4].join(" | ")
        ));
    }
    if r.power.simulated {
        row(
            &mut out,
            "GPU power (**simulated**)",
            "sim_gpu_power_w",
            1,
            " W",
        );
        row(
            &mut out,
            "GPU power delta (**simulated**)",
            "sim_power_delta_pct",
            1,
            " %",
        );
        row(
            &mut out,
            "GPU energy per segment (**simulated**)",
            "sim_energy_per_segment_j",
            1,
            " J",
        );
    }
    row(&mut out, "Host CPU use", "cpu_util_pct", 0, " %");
    out.push_str(&format!(
        "\nIdle baseline: power {}, CPU {}. Median of k repetitions, ± half the spread; ⚠ marks a spread above 10 %.\n",
        fmt_opt(r.results.idle_power_w, 1, " W"),
        stat_cell(phase("idle"), "cpu_util_pct", 0, " %"),
    ));
    if let Some(ai) = ai_summary(r) {
        out.push_str(&format!("\n**AI upscale:** {ai}\n"));
    }
    if r.power.simulated {
        out.push_str(
            "\n*Figures marked simulated come from comine's GPU model, not from hardware.*\n",
        );
    }
    if !r.warnings.is_empty() {
        out.push_str("\n**Warnings**\n\n");
        for w in &r.warnings {
            out.push_str(&format!("- {w}\n"));
        }
    }
    out
}

/// One line on the AI phase: its throughput alone and beside sealing, or why it was
/// skipped; `None` for reports from before the phase existed.
pub fn ai_summary(r: &BenchReport) -> Option<String> {
    let ai = &r.ai;
    match ai.status.as_str() {
        "" => None,
        "skipped" => Some(format!(
            "skipped: {}",
            ai.skip_reason.as_deref().unwrap_or("no reason given")
        )),
        _ => {
            let fig = |f: &crate::report::schema::AiFigures| {
                format!(
                    "{:.2} frames/s, {:.0} units/s ({} frames in {:.1} s)",
                    f.frames_per_s, f.units_per_s, f.frames, f.seconds
                )
            };
            let mut line = format!(
                "`{}` on {}, {}×{} frames, {} threads: alone {}",
                ai.model,
                ai.runtime,
                ai.frame_width,
                ai.frame_height,
                ai.threads,
                ai.alone.as_ref().map(fig).unwrap_or_else(|| "–".into())
            );
            match (&ai.with_seal, ai.with_seal_ratio) {
                (Some(w), Some(q)) => {
                    line.push_str(&format!("; beside sealing {} = ×{q:.2} of alone", fig(w)))
                }
                _ => line.push_str("; not run beside sealing (no sealing workload)"),
            }
            Some(line)
        }
    }
}
