//! Turns raw samples, sealing events and segment records into per-repetition figures,
//! phase medians with spread, and the headline co-mining costs.
//!
//! Every figure is recomputable from the samples in `report.json`; the tests check
//! exactly that, so the summaries cannot drift from the data they summarise.

use std::collections::BTreeMap;

use crate::report::schema::{
    CombinedResult, PhaseSummary, RepSummary, Results, Sample, Stat, SteeringEvent, StepSummary,
    WindowSpan,
};

use super::load::SegmentRecord;
use super::workload::SealEvent;

/// Phase names in report order, with their labels.
pub const PHASES: &[(&str, &str)] = &[
    ("idle", "Idle baseline"),
    ("seal", "Seal only"),
    ("transcode", "Transcode only"),
    ("combined_steered", "Combined, steered"),
    ("combined_unsteered", "Combined, unsteered"),
];

/// Sealing throughput accounting.
///
/// Built-in sealing counts *sector-equivalents*: each finished phase adds its share of
/// a whole sector, weighted by that phase's mean duration in the seal-only phase, so a
/// window shorter than one sector still measures progress. External commands count
/// successful runs, observed nodes finished jobs.
pub struct SealAccounting {
    weights: BTreeMap<String, f64>,
    whole_sectors_only: bool,
}

impl SealAccounting {
    /// Weights from the phases timed in the seal-only warm-up and windows. A phase set
    /// is complete when every phase of a sector (every phase seen anywhere, at least
    /// AP, PC1, PC2 and C1) was timed there; otherwise only whole sectors count.
    pub fn new(events: &[SealEvent], windows: &[WindowSpan]) -> Self {
        let seal_windows: Vec<&WindowSpan> = windows
            .iter()
            .filter(|w| w.phase == "seal" || w.phase == "seal_warmup")
            .collect();
        let mut sum: BTreeMap<String, (f64, u32)> = BTreeMap::new();
        for e in events.iter().filter(|e| e.kind == "phase") {
            if !seal_windows
                .iter()
                .any(|w| e.t_s >= w.start_s && e.t_s <= w.end_s)
            {
                continue;
            }
            if let (Some(p), Some(ms)) = (&e.phase, e.ms) {
                let s = sum.entry(p.clone()).or_default();
                s.0 += ms as f64;
                s.1 += 1;
            }
        }
        let mut needed: std::collections::BTreeSet<String> = ["ap", "pc1", "pc2", "c1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        needed.extend(
            events
                .iter()
                .filter(|e| e.kind == "phase")
                .filter_map(|e| e.phase.clone()),
        );
        let complete = needed.iter().all(|p| sum.contains_key(p));
        let any_phase = events.iter().any(|e| e.kind == "phase");
        if !complete || !any_phase {
            return SealAccounting {
                weights: BTreeMap::new(),
                whole_sectors_only: any_phase,
            };
        }
        let means: BTreeMap<String, f64> = sum
            .into_iter()
            .map(|(k, (t, n))| (k, (t / n as f64).max(1.0)))
            .collect();
        let total: f64 = means.values().sum();
        let weights = means.into_iter().map(|(k, m)| (k, m / total)).collect();
        SealAccounting {
            weights,
            whole_sectors_only: false,
        }
    }

    /// True when built-in sealing never timed a whole sector in seal-only, so only
    /// finished sectors count (coarse: a window may show 0).
    pub fn whole_sectors_only(&self) -> bool {
        self.whole_sectors_only
    }

    /// Work units completed within [start, end].
    pub fn units(&self, events: &[SealEvent], start: f64, end: f64) -> f64 {
        events
            .iter()
            .filter(|e| e.t_s >= start && e.t_s <= end)
            .map(|e| match e.kind.as_str() {
                "phase" => e
                    .phase
                    .as_ref()
                    .and_then(|p| self.weights.get(p))
                    .copied()
                    .unwrap_or(0.0),
                "run" | "job" => 1.0,
                "sector" if self.whole_sectors_only => 1.0,
                _ => 0.0,
            })
            .sum::<f64>()
            // An empty f64 sum is -0.0; report 0.
            + 0.0
    }

    pub fn weights(&self) -> &BTreeMap<String, f64> {
        &self.weights
    }
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0u32), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

/// Mean of a sample field over a window's samples; `None` when any sample lacks it
/// (a partly measured window is not a measurement).
fn sample_mean(samples: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let vals: Option<Vec<f64>> = samples.iter().map(|s| f(s)).collect();
    vals.and_then(|v| mean(v.into_iter()))
}

/// Everything the analysis produces.
pub struct Analysis {
    pub phases: Vec<PhaseSummary>,
    pub steps: Vec<StepSummary>,
    pub results: Results,
    pub warnings: Vec<String>,
}

pub struct Inputs<'a> {
    pub windows: &'a [WindowSpan],
    pub samples: &'a [Sample],
    pub seal_events: &'a [SealEvent],
    pub segments: &'a [SegmentRecord],
    pub steering: &'a [SteeringEvent],
    pub target_ratio: f64,
    pub sealing: bool,
}

pub fn analyze(inp: &Inputs<'_>) -> Analysis {
    let acct = SealAccounting::new(inp.seal_events, inp.windows);
    let mut warnings = Vec::new();
    let mut phases = Vec::new();
    let mut seal_power = None;
    let mut seal_sim_power = None;
    let mut seal_thr = None;
    let mut idle_power = None;
    // Seal-only and idle go first, so combined can be compared with them.
    for &(name, label) in PHASES {
        let mut reps = Vec::new();
        for w in inp.windows.iter().filter(|w| w.phase == name) {
            let m = rep_metrics(
                inp,
                &acct,
                w,
                name,
                seal_thr,
                seal_power,
                seal_sim_power,
                idle_power,
            );
            reps.push(RepSummary {
                rep: w.rep,
                start_s: w.start_s,
                end_s: w.end_s,
                metrics: m,
            });
        }
        let mut keys: Vec<String> = reps
            .iter()
            .flat_map(|r| r.metrics.keys().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        let mut stats = BTreeMap::new();
        for k in keys {
            let vals: Vec<f64> = reps
                .iter()
                .filter_map(|r| r.metrics.get(&k).copied())
                .collect();
            if let Some(s) = Stat::for_metric(&k, &vals) {
                if s.noisy && WATCHED.contains(&k.as_str()) {
                    warnings.push(format!(
                        "{label}: {k} varies {:.0}% across {} repetitions (> 10%); results are noisy, re-run on a quieter machine or with longer phases",
                        s.spread_pct, s.n
                    ));
                }
                stats.insert(k, s);
            }
        }
        let med = |k: &str| stats.get(k).map(|s: &Stat| s.median);
        match name {
            "idle" => idle_power = med("power_w"),
            "seal" => {
                seal_power = med("power_w");
                seal_sim_power = med("sim_gpu_power_w");
                seal_thr = med("seal_throughput_per_h");
            }
            _ => {}
        }
        phases.push(PhaseSummary {
            name: name.to_string(),
            label: label.to_string(),
            reps,
            stats,
        });
    }

    let steps = step_summaries(inp);
    let get = |phase: &str, k: &str| {
        phases
            .iter()
            .find(|p| p.name == phase)
            .and_then(|p| p.stats.get(k))
            .map(|s| s.median)
    };
    let combined = |phase: &str| -> Option<CombinedResult> {
        let p = phases.iter().find(|p| p.name == phase)?;
        if p.reps.is_empty() {
            return None;
        }
        let sum = |k: &str| p.reps.iter().filter_map(|r| r.metrics.get(k)).sum::<f64>() as u64;
        Some(CombinedResult {
            streams: inp
                .windows
                .iter()
                .find(|w| w.phase == phase)
                .map_or(0, |w| w.streams),
            seal_throughput_per_h: get(phase, "seal_throughput_per_h"),
            seal_drop_pct: get(phase, "seal_drop_pct"),
            realtime_ratio: get(phase, "realtime_ratio"),
            missed_deadlines: sum("missed_deadlines"),
            segments: sum("segments"),
            power_w: get(phase, "power_w"),
            power_delta_pct: get(phase, "power_delta_pct"),
            energy_per_segment_j: get(phase, "energy_per_segment_j"),
            energy_per_sector_j: get(phase, "energy_per_sector_j"),
            sim_power_delta_pct: get(phase, "sim_power_delta_pct"),
            sim_energy_per_segment_j: get(phase, "sim_energy_per_segment_j"),
            sealing_paused_s: p
                .reps
                .iter()
                .filter_map(|r| r.metrics.get("sealing_paused_s"))
                .sum(),
        })
    };
    let from_steps = steps
        .iter()
        .filter(|s| s.within_target)
        .map(|s| s.streams)
        .max()
        .unwrap_or(0);
    // The k repetitions at the chosen count are the better measurement: if they stay
    // within the target, that count is at real time even when its single step was not.
    let from_reps = match (
        get("transcode", "realtime_ratio"),
        inp.windows.iter().find(|w| w.phase == "transcode"),
    ) {
        (Some(r), Some(w)) if r <= inp.target_ratio => w.streams,
        _ => 0,
    };
    let streams_at_realtime = from_steps.max(from_reps);
    let idle_cpu_pct = get("idle", "cpu_util_pct");
    let not_comparable = idle_cpu_pct
        .filter(|&c| c > IDLE_BUSY_PCT)
        .map(|c| {
            format!(
                "the idle baseline was not idle: the host's CPU was {c:.0}% busy with nothing of the benchmark running (above {IDLE_BUSY_PCT:.0}%), so other work shared the machine and these figures are not comparable with other runs; re-run on a quiet machine"
            )
        });
    let results = Results {
        idle_power_w: idle_power,
        seal_throughput_per_h: seal_thr,
        seal_power_w: seal_power,
        streams_at_realtime,
        transcode_realtime_ratio: get("transcode", "realtime_ratio"),
        transcode_pixels_per_s: get("transcode", "pixels_per_s"),
        transcode_power_w: get("transcode", "power_w"),
        steered: combined("combined_steered"),
        unsteered: combined("combined_unsteered"),
        idle_cpu_pct,
        not_comparable: not_comparable.clone(),
    };
    if let Some(why) = not_comparable {
        // First, so a reader of the warnings sees it before the figures it qualifies.
        warnings.insert(0, why);
    }
    if acct.whole_sectors_only() {
        warnings.push("built-in sealing never completed a whole sector during the seal-only phase, so phase weights are unknown and only whole sectors count: throughput is coarse (raise phases.seal.seconds or use a smaller sector)".into());
    }
    if streams_at_realtime == 0 && !steps.is_empty() {
        warnings.push(format!(
            "not even one stream stayed at or below realtime ratio {}: this ladder is too heavy for this machine's encoder; the combined phase ran 1 stream anyway",
            inp.target_ratio
        ));
    }
    for e in inp.seal_events.iter().filter(|e| e.kind == "failed") {
        let msg = e.message.clone().unwrap_or_default();
        let w = format!("sealing failed at {:.1} s: {msg}", e.t_s);
        if !warnings.contains(&w) && warnings.len() < 50 {
            warnings.push(w);
        }
    }
    Analysis {
        phases,
        steps,
        results,
        warnings,
    }
}

/// Host CPU use (% of all cores) above which the idle baseline is not idle: a machine
/// running other work measures that work along with the benchmark's.
pub const IDLE_BUSY_PCT: f64 = 20.0;

/// Metrics whose spread triggers a warning.
const WATCHED: &[&str] = &[
    "power_w",
    "seal_throughput_per_h",
    "realtime_ratio",
    "pixels_per_s",
];

#[allow(clippy::too_many_arguments)]
fn rep_metrics(
    inp: &Inputs<'_>,
    acct: &SealAccounting,
    w: &WindowSpan,
    name: &str,
    seal_thr: Option<f64>,
    seal_power: Option<f64>,
    seal_sim_power: Option<f64>,
    idle_power: Option<f64>,
) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let dur = (w.end_s - w.start_s).max(1e-9);
    let samples: Vec<&Sample> = inp
        .samples
        .iter()
        .filter(|s| s.phase == w.phase && s.rep == w.rep)
        .collect();
    let mut put = |k: &str, v: Option<f64>| {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            m.insert(k.to_string(), v);
        }
    };
    put("samples", Some(samples.len() as f64));
    put("duration_s", Some(dur));
    put("power_w", sample_mean(&samples, |s| s.power_w));
    put("cpu_power_w", sample_mean(&samples, |s| s.cpu_power_w));
    put("sim_gpu_power_w", sample_mean(&samples, |s| s.sim_power_w));
    put(
        "cpu_util_pct",
        sample_mean(&samples, |s| Some(s.cpu_util_pct)),
    );
    put(
        "bench_cpu_pct",
        sample_mean(&samples, |s| Some(s.bench_cpu_pct)),
    );
    put("seal_cpu_pct", sample_mean(&samples, |s| s.seal_cpu_pct));
    put(
        "gpu_util_pct",
        sample_mean(&samples, |s| {
            s.gpu
                .as_ref()
                .map(|g| g.devices.iter().map(|d| d.util_pct).sum())
        }),
    );
    put(
        "gpu_encoder_pct",
        sample_mean(&samples, |s| {
            s.gpu
                .as_ref()
                .map(|g| g.devices.iter().map(|d| d.encoder_pct).sum())
        }),
    );
    let power = m.get("power_w").copied();
    let sim_power = m.get("sim_gpu_power_w").copied();

    let sealing_phase = name == "seal" || name.starts_with("combined");
    let mut units = None;
    if sealing_phase && inp.sealing {
        let u = acct.units(inp.seal_events, w.start_s, w.end_s);
        let failures = inp
            .seal_events
            .iter()
            .filter(|e| e.kind == "failed" && e.t_s >= w.start_s && e.t_s <= w.end_s)
            .count();
        m.insert("seal_units".into(), u);
        m.insert("seal_throughput_per_h".into(), u * 3600.0 / dur);
        m.insert("seal_failures".into(), failures as f64);
        units = Some(u);
        if name == "seal" {
            if let (Some(p), true) = (power, u > 0.0) {
                m.insert("energy_per_sector_j".into(), p * dur / u);
            }
        }
    }
    let transcoding =
        name == "transcode" || name == "transcode_step" || name.starts_with("combined");
    let mut segs_ok = 0u64;
    if transcoding {
        let segs: Vec<&SegmentRecord> = inp
            .segments
            .iter()
            .filter(|s| s.phase == w.phase && s.rep == w.rep)
            .collect();
        let ok: Vec<&&SegmentRecord> = segs.iter().filter(|s| s.error.is_none()).collect();
        segs_ok = ok.len() as u64;
        m.insert("segments".into(), segs.len() as f64);
        m.insert(
            "missed_deadlines".into(),
            segs.iter().filter(|s| s.missed).count() as f64,
        );
        m.insert("segment_errors".into(), (segs.len() - ok.len()) as f64);
        if let Some(r) = mean(ok.iter().map(|s| s.ratio)) {
            m.insert("realtime_ratio".into(), r);
        }
        let px: u64 = ok.iter().map(|s| s.encoded_pixels).sum();
        m.insert("pixels_per_s".into(), px as f64 / dur);
        m.insert("streams".into(), w.streams as f64);
        if name == "transcode" && segs_ok > 0 {
            if let (Some(p), Some(i)) = (power, idle_power) {
                m.insert(
                    "energy_per_segment_j".into(),
                    (p - i) * dur / segs_ok as f64,
                );
            }
        }
    }
    if name.starts_with("combined") {
        if let (Some(u), Some(base)) = (units, seal_thr) {
            if base > 0.0 {
                m.insert(
                    "seal_drop_pct".into(),
                    100.0 * (1.0 - (u * 3600.0 / dur) / base),
                );
            }
        }
        if let (Some(p), Some(b)) = (power, seal_power) {
            m.insert("power_delta_pct".into(), 100.0 * (p / b - 1.0));
            if segs_ok > 0 {
                m.insert(
                    "energy_per_segment_j".into(),
                    (p - b) * dur / segs_ok as f64,
                );
            }
        }
        if let (Some(p), Some(u)) = (power, units) {
            if u > 0.0 {
                m.insert("energy_per_sector_j".into(), p * dur / u);
            }
        }
        if let (Some(p), Some(b)) = (sim_power, seal_sim_power) {
            m.insert("sim_power_delta_pct".into(), 100.0 * (p / b - 1.0));
            if segs_ok > 0 {
                m.insert(
                    "sim_energy_per_segment_j".into(),
                    (p - b) * dur / segs_ok as f64,
                );
            }
        }
        m.insert("sealing_paused_s".into(), paused_seconds(inp.steering, w));
    }
    m
}

/// Seconds within the window during which steering held sealing paused.
fn paused_seconds(events: &[SteeringEvent], w: &WindowSpan) -> f64 {
    let mut paused_since: Option<f64> = None;
    let mut total = 0.0;
    for e in events.iter().filter(|e| e.t_s <= w.end_s) {
        match e.action.as_str() {
            "pause_sealing" => paused_since = Some(e.t_s.max(w.start_s)),
            "resume_sealing" => {
                if let Some(s) = paused_since.take() {
                    if e.t_s >= w.start_s {
                        total += e.t_s - s.max(w.start_s);
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(s) = paused_since {
        total += w.end_s - s.max(w.start_s);
    }
    total.max(0.0)
}

fn step_summaries(inp: &Inputs<'_>) -> Vec<StepSummary> {
    inp.windows
        .iter()
        .filter(|w| w.phase == "transcode_step")
        .map(|w| {
            let segs: Vec<&SegmentRecord> = inp
                .segments
                .iter()
                .filter(|s| s.phase == w.phase && s.rep == w.rep)
                .collect();
            let ok: Vec<&&SegmentRecord> = segs.iter().filter(|s| s.error.is_none()).collect();
            let ratio = mean(ok.iter().map(|s| s.ratio)).unwrap_or(f64::INFINITY);
            let px: u64 = ok.iter().map(|s| s.encoded_pixels).sum();
            let missed = segs.iter().filter(|s| s.missed).count() as u64;
            StepSummary {
                streams: w.streams,
                realtime_ratio: if ratio.is_finite() { ratio } else { 99.0 },
                segments: segs.len() as u64,
                missed,
                pixels_per_s: px as f64 / (w.end_s - w.start_s).max(1e-9),
                within_target: ratio <= inp.target_ratio && !ok.is_empty(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(t: f64, kind: &str, phase: Option<&str>, ms: u64) -> SealEvent {
        SealEvent {
            t_s: t,
            kind: kind.into(),
            phase: phase.map(String::from),
            ms: Some(ms),
            message: None,
        }
    }

    fn idle_run(cpu: f64) -> Analysis {
        let windows: Vec<WindowSpan> = (0..3)
            .map(|rep| WindowSpan {
                phase: "idle".into(),
                rep,
                start_s: rep as f64 * 10.0,
                end_s: rep as f64 * 10.0 + 10.0,
                streams: 0,
            })
            .collect();
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                t_s: i as f64 + 0.5,
                phase: "idle".into(),
                rep: i / 10,
                cpu_util_pct: cpu,
                bench_cpu_pct: 1.0,
                seal_cpu_pct: None,
                cpu_power_w: None,
                gpu: None,
                power_w: None,
                sim_power_w: None,
                streams: 0,
                sealing: "off".into(),
            })
            .collect();
        analyze(&Inputs {
            windows: &windows,
            samples: &samples,
            seal_events: &[],
            segments: &[],
            steering: &[],
            target_ratio: 0.8,
            sealing: false,
        })
    }

    #[test]
    fn a_busy_idle_baseline_makes_the_run_not_comparable() {
        let busy = idle_run(100.0);
        assert_eq!(busy.results.idle_cpu_pct, Some(100.0));
        let why = busy.results.not_comparable.expect("flagged");
        assert!(
            why.contains("100%") && why.contains("not comparable"),
            "{why}"
        );
        assert_eq!(busy.warnings.first(), Some(&why), "first warning");
        let quiet = idle_run(3.0);
        assert_eq!(quiet.results.not_comparable, None);
        assert!(quiet.warnings.iter().all(|w| !w.contains("not comparable")));
    }

    #[test]
    fn sector_equivalents_weight_by_duration() {
        let windows = vec![WindowSpan {
            phase: "seal".into(),
            rep: 0,
            start_s: 0.0,
            end_s: 100.0,
            streams: 0,
        }];
        let events = vec![
            ev(0.5, "phase", Some("ap"), 500),
            ev(1.0, "phase", Some("pc1"), 2500),
            ev(2.0, "phase", Some("pc2"), 1500),
            ev(2.5, "phase", Some("c1"), 500),
            ev(3.0, "sector", None, 5000),
        ];
        let a = SealAccounting::new(&events, &windows);
        assert!(!a.whole_sectors_only());
        assert!((a.units(&events, 0.0, 10.0) - 1.0).abs() < 1e-9);
        assert!((a.units(&events, 0.0, 1.5) - 0.6).abs() < 1e-9);
        assert_eq!(a.units(&events, 50.0, 60.0).to_string(), "0");
    }

    #[test]
    fn incomplete_sector_counts_whole_sectors_only() {
        let windows = vec![WindowSpan {
            phase: "seal".into(),
            rep: 0,
            start_s: 0.0,
            end_s: 10.0,
            streams: 0,
        }];
        // PC2 never finished inside seal-only: PC1 alone must not count as a sector.
        let events = vec![
            ev(1.0, "phase", Some("ap"), 100),
            ev(5.0, "phase", Some("pc1"), 4000),
            ev(20.0, "phase", Some("pc2"), 9000),
            ev(21.0, "phase", Some("c1"), 900),
            ev(21.0, "sector", None, 14000),
        ];
        let a = SealAccounting::new(&events, &windows);
        assert!(a.whole_sectors_only());
        assert_eq!(a.units(&events, 0.0, 10.0), 0.0);
        assert_eq!(a.units(&events, 0.0, 30.0), 1.0);
    }

    #[test]
    fn paused_time_is_clipped_to_window() {
        let w = WindowSpan {
            phase: "combined_steered".into(),
            rep: 0,
            start_s: 10.0,
            end_s: 20.0,
            streams: 1,
        };
        let e = |t, a: &str| SteeringEvent {
            t_s: t,
            action: a.into(),
            realtime_ratio: 0.9,
            reason: None,
        };
        let events = vec![
            e(5.0, "pause_sealing"),
            e(12.0, "resume_sealing"),
            e(18.0, "pause_sealing"),
        ];
        assert!((paused_seconds(&events, &w) - 4.0).abs() < 1e-9);
    }
}
