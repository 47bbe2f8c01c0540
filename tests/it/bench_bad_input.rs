//! Bad input to `comine bench` / `comine report`: clear errors naming the problem.

use crate::common;

use std::path::Path;
use std::process::Command;

const SMALL: &str = r#"
name = "small"
sample_interval_ms = 200
[seal]
sector_size = "2KiB"
[transcode]
ladder = "P144p30fps16x9"
source_width = 320
source_height = 180
source_fps = 30
segment_seconds = 1.0
segments = 1
encoder = "x264"
x264_preset = "ultrafast"
[phases.idle]
seconds = 0.5
repeats = 1
[phases.seal]
seconds = 1.5
repeats = 1
[phases.transcode]
step_seconds = 1.0
max_streams = 1
repeats = 1
[phases.combined]
seconds = 1.5
repeats = 1
"#;

fn bench(args: &[&str], suite: Option<(&Path, &str)>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_comine"));
    c.args(["bench", "--progress", "never"]);
    if let Some((path, text)) = suite {
        std::fs::write(path, text).unwrap();
        c.arg("--suite").arg(path);
    }
    c.args(args).output().unwrap()
}

#[test]
fn unknown_suite_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = SMALL.replace("max_streams = 1", "max_streams = 1\nmax_stream = 4");
    let o = bench(
        &["--out", dir.path().join("o").to_str().unwrap()],
        Some((&dir.path().join("s.toml"), &text)),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("max_stream"), "{err}");
    assert!(!dir.path().join("o").join("report.json").exists());
}

#[test]
fn impossible_suite_value_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = SMALL.replace("max_streams = 1", "max_streams = 0");
    let o = bench(
        &["--out", dir.path().join("o").to_str().unwrap()],
        Some((&dir.path().join("s.toml"), &text)),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("phases.transcode.max_streams must be >= 1"),
        "{err}"
    );
    let text = SMALL.replace(
        "seconds = 1.5\nrepeats = 1\n[phases.transcode]",
        "seconds = -3\nrepeats = 1\n[phases.transcode]",
    );
    let o = bench(
        &["--out", dir.path().join("o").to_str().unwrap()],
        Some((&dir.path().join("s.toml"), &text)),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("phases.seal.seconds"), "{err}");
}

#[test]
fn bad_seal_mode_and_missing_suite_are_clear() {
    let o = bench(&["--seal", "magic"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("builtin, cmd:'COMMAND', observe or none"));
    let o = bench(&["--suite", "/nonexistent/suite.toml"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read suite file"));
}

#[test]
fn taken_or_unusable_out_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir_all(&taken).unwrap();
    std::fs::write(taken.join("report.json"), "{}").unwrap();
    let o = bench(&["--suite", "tiny", "--out", taken.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already holds a report"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("report.json")).unwrap(),
        "{}",
        "nothing lost"
    );
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let o = bench(&["--suite", "tiny", "--out", file.to_str().unwrap()], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a directory"));
}

#[test]
fn full_out_dir_gives_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = comine::bench::out_dir::check_out_dir(dir.path(), u64::MAX)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MiB free") && err.contains("pick another --out"),
        "{err}"
    );
}

#[test]
fn failing_seal_command_is_reported_in_the_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let o = bench(
        &[
            "--seal",
            "cmd:echo no-such-sector >&2; exit 7",
            "--out",
            out.to_str().unwrap(),
        ],
        Some((&dir.path().join("s.toml"), SMALL)),
    );
    assert!(
        o.status.success(),
        "a failing workload is a result, not a crash: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = comine::report::schema::load(&out.join("report.json")).unwrap();
    let seal = r.phases.iter().find(|p| p.name == "seal").unwrap();
    assert!(seal.reps[0].metrics["seal_failures"] >= 1.0);
    assert_eq!(seal.reps[0].metrics["seal_throughput_per_h"], 0.0);
    let failed = r
        .seal_events
        .iter()
        .find(|e| e.kind == "failed")
        .expect("failure recorded");
    let msg = failed.message.as_deref().unwrap();
    assert!(msg.contains("no-such-sector") && msg.contains('7'), "{msg}");
    assert!(r.warnings.iter().any(|w| w.contains("sealing failed")));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("sealing failed"));
}

#[test]
fn compare_rejects_non_reports() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x.json");
    std::fs::write(&f, r#"{"hello":1}"#).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["report", "compare"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a comine bench report"));
}

#[test]
fn input_file_is_cut_into_segments_and_missing_input_is_clear() {
    let dir = tempfile::tempdir().unwrap();
    let media = common::generate(
        "bench-in.mp4",
        "testsrc2=size=320x180:rate=25",
        3.0,
        false,
        &["-c:v", "libx264", "-preset", "ultrafast"],
    );
    let out = dir.path().join("o");
    let o = bench(
        &[
            "--seal",
            "none",
            "--input",
            media.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        Some((&dir.path().join("s.toml"), SMALL)),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = comine::report::schema::load(&out.join("report.json")).unwrap();
    assert!(r.config.input.contains("in.mp4"), "{}", r.config.input);
    assert!(r
        .segments
        .iter()
        .any(|s| s.error.is_none() && s.decoded_pixels > 0));
    assert_eq!(r.config.seal_mode, "none");
    assert!(r
        .phases
        .iter()
        .find(|p| p.name == "seal")
        .unwrap()
        .reps
        .is_empty());

    let o = bench(
        &[
            "--seal",
            "none",
            "--input",
            "/nonexistent/clip.mp4",
            "--out",
            dir.path().join("o2").to_str().unwrap(),
        ],
        Some((&dir.path().join("s.toml"), SMALL)),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}
