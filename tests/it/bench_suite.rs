//! `comine bench --suite tiny` end to end: schema, consistency of every summary with
//! the raw samples, and proof that the combined phase ran sealing and transcoding at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use comine::bench::analyze::SealAccounting;
use comine::report::schema::{self, BenchReport, Stat};

fn run_bench(out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["bench", "--progress", "never", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run comine bench")
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn tiny_suite_report_is_valid_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // The pilot kit: the suite as `--print-suite` gives it, and a redacted report.
    let printed = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["bench", "--print-suite", "tiny"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    let suite_file = dir.path().join("tiny.toml");
    std::fs::write(&suite_file, &printed.stdout).unwrap();
    let o = run_bench(&out, &["--suite", suite_file.to_str().unwrap(), "--redact"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "bench failed: {stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| Figure |"),
        "markdown summary on stdout: {stdout}"
    );

    // Schema: the loader checks id and version; raw JSON has every top-level key.
    let r: BenchReport = schema::load(&out.join("report.json")).expect("valid report.json");
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    // A printed suite is the built-in one, figure for figure (same hash).
    assert_eq!(
        r.suite_hash,
        comine::bench::suite::Suite::hash(
            comine::bench::suite::Suite::builtin_text("tiny").unwrap()
        )
    );
    // --redact: no host name anywhere in the files a pilot posts.
    assert_eq!(r.fingerprint.hostname, "redacted");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    if host.len() >= 3 {
        for f in ["report.json", "report.md", "report.html"] {
            let text = std::fs::read_to_string(out.join(f)).unwrap();
            assert!(!text.contains(host), "{f} names the host {host}");
        }
    }
    for key in [
        "schema",
        "schema_version",
        "fingerprint",
        "suite",
        "suite_hash",
        "config",
        "power",
        "samples",
        "seal_events",
        "segments",
        "steering",
        "windows",
        "phases",
        "transcode_steps",
        "results",
        "warnings",
    ] {
        assert!(raw.get(key).is_some(), "report.json lacks {key}");
    }
    for key in [
        "cpu_model",
        "cpu_cores",
        "ram_bytes",
        "gpu",
        "comine_version",
        "ffmpeg_version",
    ] {
        assert!(
            raw["fingerprint"].get(key).is_some(),
            "fingerprint lacks {key}"
        );
    }
    for key in ["model", "driver", "vbios"] {
        assert!(
            raw["fingerprint"]["gpu"].get(key).is_some(),
            "fingerprint.gpu lacks {key}"
        );
    }
    assert_eq!(r.suite_hash.len(), 64);
    assert!(r.fingerprint.cpu_cores >= 1 && r.fingerprint.ram_bytes > 0);
    assert!(!r.fingerprint.ffmpeg_version.is_empty());
    let names: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "idle",
            "seal",
            "transcode",
            "combined_steered",
            "combined_unsteered"
        ]
    );
    for p in &r.phases {
        assert!(!p.reps.is_empty(), "phase {} has no repetitions", p.name);
    }

    // The AI phase: with ONNX Runtime and the model from scripts/ai-setup.sh (CI always
    // has them) it ran alone and beside sealing; otherwise it says why it was skipped.
    assert!(raw.get("ai").is_some(), "report.json lacks ai");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**AI upscale:**"), "{md}");
    if crate::common::ai::ai_env().is_some() {
        assert_eq!(r.ai.status, "ran", "{:?}", r.ai.skip_reason);
        assert_eq!((r.ai.frame_width, r.ai.frame_height), (64, 64));
        assert!(
            r.ai.runtime.starts_with("onnxruntime 1.22"),
            "{}",
            r.ai.runtime
        );
        let figs = [r.ai.alone.as_ref(), r.ai.with_seal.as_ref()];
        for f in figs {
            let f = f.expect("alone and beside sealing (tiny seals)");
            assert!(f.frames >= 1 && f.seconds > 0.0, "{f:?}");
            assert_eq!(f.units, f.frames * 64 * 64, "upscale bills input w x h");
            assert!(close(f.frames_per_s, f.frames as f64 / f.seconds), "{f:?}");
            assert!(close(f.units_per_s, f.units as f64 / f.seconds), "{f:?}");
        }
        let (a, w) = (
            r.ai.alone.as_ref().unwrap(),
            r.ai.with_seal.as_ref().unwrap(),
        );
        assert!(close(
            r.ai.with_seal_ratio.unwrap(),
            w.frames_per_s / a.frames_per_s
        ));
        assert!(md.contains("frames/s") && md.contains("units/s"), "{md}");
    } else {
        assert_eq!(r.ai.status, "skipped");
        let why = r.ai.skip_reason.as_deref().unwrap_or_default();
        assert!(why.contains("scripts/ai-setup.sh"), "{why}");
    }
    assert!(out.join("report.html").is_file() && out.join("report.md").is_file());
    assert!(!out.join("work").exists(), "scratch space is cleaned up");

    // Consistency: every per-repetition figure recomputed from the samples and events.
    let acct = SealAccounting::new(&r.seal_events, &r.windows);
    for p in &r.phases {
        for rep in &p.reps {
            let samples: Vec<_> = r
                .samples
                .iter()
                .filter(|s| s.phase == p.name && s.rep == rep.rep)
                .collect();
            assert!(
                !samples.is_empty(),
                "{} rep {} has samples",
                p.name,
                rep.rep
            );
            assert_eq!(rep.metrics["samples"], samples.len() as f64);
            let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_util_pct).collect();
            assert!(
                close(rep.metrics["cpu_util_pct"], mean(&cpu)),
                "{} cpu",
                p.name
            );
            if samples.iter().all(|s| s.sim_power_w.is_some()) {
                let sim: Vec<f64> = samples.iter().map(|s| s.sim_power_w.unwrap()).collect();
                assert!(close(rep.metrics["sim_gpu_power_w"], mean(&sim)));
            }
            match samples
                .iter()
                .map(|s| s.power_w)
                .collect::<Option<Vec<f64>>>()
            {
                Some(pw) => assert!(close(rep.metrics["power_w"], mean(&pw))),
                None => assert!(!rep.metrics.contains_key("power_w"), "no partial power"),
            }
            let dur = rep.end_s - rep.start_s;
            if p.name == "seal" || p.name.starts_with("combined") {
                let units = acct.units(&r.seal_events, rep.start_s, rep.end_s);
                assert!(
                    close(rep.metrics["seal_throughput_per_h"], units * 3600.0 / dur),
                    "{} throughput",
                    p.name
                );
            }
            if p.name == "transcode" || p.name.starts_with("combined") {
                let segs: Vec<_> = r
                    .segments
                    .iter()
                    .filter(|s| s.phase == p.name && s.rep == rep.rep)
                    .collect();
                assert_eq!(rep.metrics["segments"], segs.len() as f64);
                let ok: Vec<f64> = segs
                    .iter()
                    .filter(|s| s.error.is_none())
                    .map(|s| s.ratio)
                    .collect();
                assert!(!ok.is_empty(), "{} transcoded something", p.name);
                assert!(close(rep.metrics["realtime_ratio"], mean(&ok)));
                let missed = segs.iter().filter(|s| s.missed).count() as f64;
                assert_eq!(rep.metrics["missed_deadlines"], missed);
            }
        }
        // The phase statistics are the medians of the repetitions.
        let mut by_key: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for rep in &p.reps {
            for (k, v) in &rep.metrics {
                by_key.entry(k).or_default().push(*v);
            }
        }
        for (k, vals) in by_key {
            let s = Stat::for_metric(k, &vals).unwrap();
            assert!(close(p.stats[k].median, s.median), "{}.{k}", p.name);
            assert_eq!(p.stats[k].noisy, s.noisy);
        }
    }
    // Seal-only measured real sealing.
    let seal = r.phases.iter().find(|p| p.name == "seal").unwrap();
    assert!(seal.stats["seal_throughput_per_h"].median > 0.0);
    assert!(r
        .seal_events
        .iter()
        .any(|e| e.phase.as_deref() == Some("pc2")));
    assert_eq!(
        r.results.seal_throughput_per_h,
        Some(seal.stats["seal_throughput_per_h"].median)
    );
    assert!(!r.transcode_steps.is_empty());

    // The combined phases really ran both workloads at the same time.
    for phase in ["combined_steered", "combined_unsteered"] {
        for w in r.windows.iter().filter(|w| w.phase == phase) {
            let seal_times: Vec<f64> = r
                .seal_events
                .iter()
                .filter(|e| e.kind == "phase" && e.t_s >= w.start_s && e.t_s <= w.end_s)
                .map(|e| e.t_s)
                .collect();
            let segs: Vec<_> = r
                .segments
                .iter()
                .filter(|s| s.phase == phase && s.rep == w.rep && s.error.is_none())
                .collect();
            assert!(!segs.is_empty(), "{phase}: segments transcoded");
            if phase == "combined_unsteered" {
                assert!(!seal_times.is_empty(), "{phase}: sealing progressed");
                // A sealing phase finished while a segment was being transcoded.
                let overlap = seal_times
                    .iter()
                    .any(|t| segs.iter().any(|s| s.t_start_s <= *t && *t <= s.t_end_s));
                let busy_together = r.samples.iter().any(|s| {
                    s.phase == phase
                        && s.rep == w.rep
                        && s.seal_cpu_pct.unwrap_or(0.0) > 0.0
                        && s.bench_cpu_pct > 0.0
                });
                assert!(
                    overlap || busy_together,
                    "{phase}: sealing and transcoding overlapped"
                );
            }
        }
    }
    let unsteered = r.results.unsteered.as_ref().expect("unsteered result");
    assert!(unsteered.seal_drop_pct.is_some());
    assert!(unsteered.segments > 0);
    if r.power.simulated {
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("simulated"));
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        assert!(html.contains("simulated-notice"));
    }
    if !r.power.measured {
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(md.contains("not measured"));
    }
    // A busy machine (CI runners often are) is named as such, first, everywhere.
    let idle_cpu = r.results.idle_cpu_pct.expect("idle CPU measured");
    assert_eq!(
        r.results.not_comparable.is_some(),
        idle_cpu > comine::bench::analyze::IDLE_BUSY_PCT,
        "idle CPU {idle_cpu}%"
    );
    if let Some(why) = &r.results.not_comparable {
        assert_eq!(r.warnings.first(), Some(why));
        let html = std::fs::read_to_string(out.join("report.html")).unwrap();
        let top = html.find("id=\"not-comparable\"").expect("HTML notice");
        assert!(top < html.find("<h2>").unwrap(), "at the top of the HTML");
        let md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(
            md.starts_with("> **These figures are not comparable:**"),
            "{md}"
        );
    }

    // `report compare` reads it back and puts two copies side by side.
    let cmp = dir.path().join("cmp");
    let o = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["report", "compare"])
        .arg(out.join("report.json"))
        .arg(&out)
        .arg("--out")
        .arg(&cmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("Streams at real time"), "{md}");
    let html = std::fs::read_to_string(cmp.join("compare.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 3);
}
