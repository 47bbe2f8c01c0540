//! The files in `deploy/` agree with the binary: every metric an alert rule or a Grafana panel
//! queries is one comine exports, the alerts the operator guide promises exist, and the
//! systemd unit carries what the install needs (checked line by line here; the unit is also
//! checked with `systemd-analyze verify`, see docs/operator-guide.md).

use std::collections::BTreeSet;

use comine::metrics::Metrics;

const ALERTS: &str = include_str!("../../deploy/comine-alerts.yml");
const DASHBOARD: &str = include_str!("../../deploy/grafana-dashboard.json");
const UNIT: &str = include_str!("../../deploy/comine.service");
const GUIDE: &str = include_str!("../../docs/operator-guide.md");

/// Every series name `/metrics` can carry: each registered family's base name with the
/// suffixes OpenMetrics gives counters and histograms. Families print only once they have a
/// series, so one of each is made first.
fn exported() -> BTreeSet<String> {
    let m = Metrics::new();
    m.segment("ok");
    m.livepeer_segment("ok");
    m.encoder_fallback("session_cap", 1);
    m.encoded_pixels
        .get_or_create(&comine::metrics::ProfileLabel {
            profile: "P240p30fps16x9".into(),
        })
        .inc();
    m.set_gpus(&[comine::metrics::GpuSample {
        index: 0,
        uuid: "GPU-0".into(),
        name: "NVIDIA RTX A5000".into(),
        source: "nvml".into(),
        utilization: Some(0.1),
        encoder_utilization: Some(0.1),
        decoder_utilization: Some(0.1),
        power_watts: Some(100.0),
        temperature_celsius: Some(50.0),
        encoder_sessions: Some(1),
        proof_active: false,
        memory_total_bytes: 24 << 30,
        memory_used_bytes: 1 << 30,
    }]);
    m.set_sealing(&[("enabled".into(), 4)]);
    m.set_sealing_paused("lotus-worker", Some(false));
    m.set_livepeer("pool:8935", true, 2);
    m.set_post(&comine::post::Report::default());
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let base = rest.split_whitespace().next().unwrap().to_string();
            for suffix in ["", "_total", "_bucket", "_count", "_sum", "_created"] {
                names.insert(format!("{base}{suffix}"));
            }
        }
    }
    names
}

/// `comine_*` identifiers in a PromQL expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("comine_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// `(alert name, expr)` of each rule: a small reader of the rules file's own layout
/// (`- alert: NAME`, then `expr: …` on one line or as a `|` block).
fn rules() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut lines = ALERTS.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("- alert: ") {
            out.push((name.trim().to_string(), String::new()));
        } else if let Some(expr) = t.strip_prefix("expr: ") {
            let indent = line.len() - line.trim_start().len();
            let mut e = String::new();
            if expr.trim() == "|" {
                while let Some(next) = lines.peek() {
                    let ni = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || ni <= indent {
                        break;
                    }
                    e.push_str(next.trim());
                    e.push(' ');
                    lines.next();
                }
            } else {
                e = expr.to_string();
            }
            let last = out.last_mut().expect("an expr belongs to an alert");
            last.1 = e;
        }
    }
    out
}

#[test]
fn alert_rules_query_only_exported_metrics_and_cover_the_promised_alerts() {
    let have = exported();
    let rules = rules();
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for promised in [
        "ComineProofWhileTranscoding",
        "ComineLivepeerLinkDown",
        "ComineSlowerThanLivepeerAllows",
        "ComineEncoderFallbackToCpu",
        "ComineSealingLeftPaused",
    ] {
        assert!(
            names.contains(&promised),
            "{promised} missing from {names:?}"
        );
    }
    for (name, expr) in &rules {
        assert!(!expr.trim().is_empty(), "{name} has no expr");
        // Balanced brackets: a cheap syntax check that catches a truncated block.
        for (open, close) in [('(', ')'), ('{', '}'), ('[', ']')] {
            assert_eq!(
                expr.matches(open).count(),
                expr.matches(close).count(),
                "{name}: unbalanced {open}{close} in {expr}"
            );
        }
        for m in metrics_in(expr) {
            assert!(
                have.contains(&m),
                "{name} queries {m}, which comine does not export"
            );
        }
    }
    // The duration ratio alert uses the Livepeer direction: above 0.8 is bad.
    let slow = &rules
        .iter()
        .find(|(n, _)| n == "ComineSlowerThanLivepeerAllows")
        .unwrap()
        .1;
    assert!(
        slow.contains("duration_ratio") && slow.contains("> 0.8"),
        "{slow}"
    );
}

#[test]
fn grafana_panels_query_only_exported_metrics() {
    let have = exported();
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut seen = BTreeSet::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for m in metrics_in(expr) {
                assert!(have.contains(&m), "panel {:?} queries {m}", p["title"]);
                seen.insert(m);
            }
        }
    }
    // A panel for each alert's subject.
    for m in [
        "comine_gpu_proof_active",
        "comine_livepeer_link_up",
        "comine_segment_duration_ratio_bucket",
        "comine_encoder_fallbacks_total",
        "comine_sealing_paused",
        "comine_livepeer_segments_total",
        "comine_livepeer_capacity_sessions",
    ] {
        assert!(seen.contains(m), "no panel shows {m}");
    }
}

#[test]
fn the_unit_carries_what_the_install_needs() {
    let lines: Vec<&str> = UNIT
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "Type=notify",
        "WatchdogSec=60",
        "RestartPreventExitStatus=78",
        "StartLimitBurst=5",
        "StartLimitIntervalSec=600",
        "After=nvidia-persistenced.service",
        "Environment=CUDA_DEVICE_ORDER=PCI_BUS_ID",
        "EnvironmentFile=-/etc/comine/comine.env",
        "DeviceAllow=char-drm rw",
        "User=comine",
        "Documentation=file:///usr/share/doc/comine/operator-guide.md",
    ] {
        assert!(lines.contains(&want), "comine.service lacks {want}");
    }
    // DeviceAllow= takes device nodes or classes; a directory allows nothing.
    assert!(
        !lines.contains(&"DeviceAllow=/dev/dri rw"),
        "DeviceAllow=/dev/dri names a directory"
    );
    // Start limits belong to [Unit]: systemd ignores them in [Service] on current versions.
    let unit_section = UNIT.split("[Service]").next().unwrap();
    assert!(unit_section.contains("StartLimitBurst=5"));
    // The guide installs what the unit points at, readable by the service's group.
    assert!(
        GUIDE.contains(
            "install -D -m 0644 docs/operator-guide.md /usr/share/doc/comine/operator-guide.md"
        ),
        "the Documentation= file is never installed"
    );
    assert!(
        GUIDE.contains(
            "install -m 0640 -o root -g comine deploy/comine.example.toml /etc/comine/comine.toml"
        ),
        "the config must be readable by User=comine"
    );
    assert!(GUIDE.contains("systemctl edit comine"));
}

/// `systemd-analyze verify` on the shipped unit, with `ExecStart=` pointed at the binary this
/// build made (verify checks that the command exists and is executable). A unit with a bad
/// key is run through the same check first, so a verifier that accepts anything fails here.
/// Without systemd-analyze the test says so and passes, except in CI (env `CI`), where it fails.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but systemd-analyze is missing: install systemd (apt-get install systemd)"
        );
        eprintln!("*** systemd-analyze not found: the unit was NOT verified ***");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = UNIT.replace("/usr/local/bin/comine", env!("CARGO_BIN_EXE_comine"));
    assert_ne!(
        unit, UNIT,
        "ExecStart= no longer names /usr/local/bin/comine"
    );
    let verify = |text: &str| {
        let path = dir.path().join("comine.service");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let broken = unit.replacen("[Service]\n", "[Service]\nRestartPreventExitStatuz=78\n", 1);
    let (_, said) = verify(&broken);
    assert!(
        said.contains("RestartPreventExitStatuz"),
        "systemd-analyze verify did not flag an unknown key: {said}"
    );
    let (ok, said) = verify(&unit);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
