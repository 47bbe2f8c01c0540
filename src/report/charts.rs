//! SVG charts drawn with plotters' SVG backend (no font files: text becomes SVG `<text>`).
//!
//! Each function returns one `<svg>` element as a string, ready to inline in HTML.

use plotters::prelude::*;

use super::schema::{BenchReport, PhaseSummary};

const W: u32 = 900;
const H: u32 = 360;

fn phase_color(name: &str) -> RGBColor {
    match name {
        "idle" => RGBColor(230, 230, 230),
        "seal" => RGBColor(255, 224, 178),
        "seal_warmup" => RGBColor(255, 243, 224),
        "transcode_step" | "transcode" => RGBColor(187, 222, 251),
        "combined_steered" => RGBColor(200, 230, 201),
        "combined_unsteered" => RGBColor(248, 187, 208),
        _ => RGBColor(245, 245, 245),
    }
}

/// Power (or, without power, CPU utilisation) over time, phases shaded.
pub fn power_over_time(r: &BenchReport) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let t_max = r.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
        let measured: Vec<(f64, f64)> = r
            .samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.power_w?)))
            .collect();
        let sim: Vec<(f64, f64)> = r
            .samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.sim_power_w?)))
            .collect();
        let cpu: Vec<(f64, f64)> = r.samples.iter().map(|s| (s.t_s, s.cpu_util_pct)).collect();
        let (title, y_label) = if !measured.is_empty() {
            ("Power over time by phase (measured)".to_string(), "W")
        } else if !sim.is_empty() {
            (
                "Power over time by phase: GPU power SIMULATED (no power measured on this machine)"
                    .to_string(),
                "W (simulated)",
            )
        } else {
            (
                "CPU utilisation over time by phase (power not measured)".to_string(),
                "%",
            )
        };
        let y_max = measured.iter().chain(sim.iter()).map(|p| p.1).fold(
            if measured.is_empty() && sim.is_empty() {
                100.0
            } else {
                10.0
            },
            f64::max,
        ) * 1.15;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        else {
            return svg_fallback("power chart");
        };
        let _ = chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(y_label)
            .draw();
        for w in &r.windows {
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(w.start_s, 0.0), (w.end_s, y_max)],
                phase_color(&w.phase).filled(),
            )));
        }
        if !measured.is_empty() {
            let _ = chart
                .draw_series(LineSeries::new(measured, RED.stroke_width(2)))
                .map(|s| {
                    s.label("measured power (RAPL/NVML)")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED))
                });
        }
        if !sim.is_empty() {
            let _ = chart
                .draw_series(LineSeries::new(sim, BLUE.stroke_width(2)))
                .map(|s| {
                    s.label("GPU power (simulated)")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE))
                });
        }
        if r.samples
            .iter()
            .all(|s| s.power_w.is_none() && s.sim_power_w.is_none())
        {
            let _ = chart
                .draw_series(LineSeries::new(cpu, BLACK.stroke_width(2)))
                .map(|s| {
                    s.label("host CPU %")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK))
                });
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw();
        let _ = root.present();
    }
    svg
}

/// Sealing throughput per phase: median bar, min–max whisker.
pub fn throughput_bars(r: &BenchReport) -> String {
    let rows: Vec<(&PhaseSummary, f64, f64, f64)> = r
        .phases
        .iter()
        .filter_map(|p| {
            let s = p.stats.get("seal_throughput_per_h")?;
            Some((p, s.median, s.min, s.max))
        })
        .collect();
    bars(
        &format!("Sealing throughput ({})", r.config.seal_unit),
        "per hour",
        &rows
            .iter()
            .map(|(p, m, lo, hi)| (p.label.clone(), p.name.clone(), *m, *lo, *hi))
            .collect::<Vec<_>>(),
    )
}

fn bars(title: &str, y_label: &str, rows: &[(String, String, f64, f64, f64)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = rows.len().max(1) as f64;
        let y_max = rows.iter().map(|r| r.4.max(r.2)).fold(1e-9, f64::max) * 1.2;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n, 0.0..y_max)
        else {
            return svg_fallback(title);
        };
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_label)
            .draw();
        for (i, (label, name, med, lo, hi)) in rows.iter().enumerate() {
            let x0 = i as f64 + 0.2;
            let x1 = i as f64 + 0.8;
            let xm = i as f64 + 0.5;
            let color = match phase_color(name) {
                RGBColor(r, g, b) => RGBColor(
                    r.saturating_sub(60),
                    g.saturating_sub(60),
                    b.saturating_sub(60),
                ),
            };
            let _ = chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, 0.0), (x1, *med)],
                color.filled(),
            )));
            let _ = chart.draw_series(std::iter::once(PathElement::new(
                vec![(xm, *lo), (xm, *hi)],
                BLACK.stroke_width(2),
            )));
            let _ = chart.draw_series(std::iter::once(Text::new(
                format!("{label}: {med:.2}"),
                (x0, (*med + y_max * 0.04).min(y_max * 0.95)),
                ("sans-serif", 13),
            )));
        }
        let _ = root.present();
    }
    svg
}

/// Realtime ratio against concurrent streams, with the target line.
pub fn ratio_vs_streams(r: &BenchReport) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let target = r.suite.phases.transcode.target_ratio;
        let pts: Vec<(f64, f64)> = r
            .transcode_steps
            .iter()
            .map(|s| (s.streams as f64, s.realtime_ratio.min(5.0)))
            .collect();
        let x_max = pts.iter().map(|p| p.0).fold(1.0, f64::max) + 1.0;
        let y_max = pts.iter().map(|p| p.1).fold(target, f64::max) * 1.25;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(
                "Realtime duration ratio vs concurrent streams (lower is better)",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        else {
            return svg_fallback("ratio chart");
        };
        let _ = chart
            .configure_mesh()
            .x_desc("streams")
            .y_desc("transcode time / media time")
            .draw();
        let _ = chart
            .draw_series(LineSeries::new(
                vec![(0.0, target), (x_max, target)],
                RED.stroke_width(1),
            ))
            .map(|s| {
                s.label(format!("target {target}"))
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED))
            });
        let _ = chart
            .draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2)))
            .map(|s| {
                s.label("measured")
                    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE))
            });
        let _ = chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, BLUE.filled())));
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw();
        let _ = root.present();
    }
    svg
}

/// Stacked CPU utilisation per phase (transcoder, sealing, rest) and GPU encoder use.
pub fn utilisation_stacks(r: &BenchReport) -> String {
    let cores = r.fingerprint.cpu_cores.max(1) as f64;
    let phases: Vec<&PhaseSummary> = r.phases.iter().filter(|p| !p.reps.is_empty()).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let n = phases.len().max(1) as f64;
        let gpu_label = if r.power.simulated {
            "GPU encoder % (simulated)"
        } else {
            "GPU encoder %"
        };
        let Ok(mut chart) = ChartBuilder::on(&root)
            .caption(
                "Utilisation by phase: CPU stack (transcode / seal / other) and GPU encoder",
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..n, 0.0..110.0)
        else {
            return svg_fallback("utilisation chart");
        };
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("% of machine")
            .draw();
        let colors = [
            RGBColor(66, 133, 244),
            RGBColor(251, 140, 0),
            RGBColor(158, 158, 158),
        ];
        let names = ["transcode CPU", "seal CPU", "other CPU"];
        for (i, p) in phases.iter().enumerate() {
            let med = |k: &str| p.stats.get(k).map_or(0.0, |s| s.median);
            let tr = (med("bench_cpu_pct") / cores).min(100.0);
            let se = (med("seal_cpu_pct") / cores).min(100.0 - tr);
            let other = (med("cpu_util_pct") - tr - se).max(0.0);
            let mut y = 0.0;
            for (j, v) in [tr, se, other].into_iter().enumerate() {
                let bar = chart.draw_series(std::iter::once(Rectangle::new(
                    [(i as f64 + 0.15, y), (i as f64 + 0.55, y + v)],
                    colors[j].filled(),
                )));
                if i == 0 {
                    let c = colors[j];
                    let _ = bar.map(|s| {
                        s.label(names[j]).legend(move |(x, y)| {
                            Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled())
                        })
                    });
                }
                y += v;
            }
            let g = med("gpu_encoder_pct");
            let bar = chart.draw_series(std::iter::once(Rectangle::new(
                [(i as f64 + 0.6, 0.0), (i as f64 + 0.85, g)],
                RGBColor(67, 160, 71).filled(),
            )));
            if i == 0 {
                let _ = bar.map(|s| {
                    s.label(gpu_label).legend(|(x, y)| {
                        Rectangle::new(
                            [(x, y - 5), (x + 12, y + 5)],
                            RGBColor(67, 160, 71).filled(),
                        )
                    })
                });
            }
            let _ = chart.draw_series(std::iter::once(Text::new(
                p.label.clone(),
                (i as f64 + 0.1, 106.0),
                ("sans-serif", 12),
            )));
        }
        let _ = chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::MiddleRight)
            .draw();
        let _ = root.present();
    }
    svg
}

/// A labelled bar chart of one figure across several reports (for `report compare`).
pub fn compare_bars(title: &str, y_label: &str, rows: &[(String, f64)]) -> String {
    let rows: Vec<(String, String, f64, f64, f64)> = rows
        .iter()
        .map(|(l, v)| (l.clone(), "seal".to_string(), *v, *v, *v))
        .collect();
    bars(title, y_label, &rows)
}

fn svg_fallback(what: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="40"><text x="10" y="25">{what}: no data to draw</text></svg>"#
    )
}
