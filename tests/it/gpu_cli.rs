//! `comine gpu status` through the real binary.

use std::process::Command;

fn comine(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(args)
        .env_remove("COMINE_GPU_BACKEND")
        .output()
        .unwrap()
}

#[test]
fn sim_status_json_is_labelled_simulated() {
    let out = comine(&[
        "gpu",
        "status",
        "--json",
        "--backend",
        "sim:rtx3090,a4000",
        "--interval-ms",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "simulated");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2);
    for d in v["devices"].as_array().unwrap() {
        assert_eq!(d["source"], "simulated");
    }
    assert_eq!(v["devices"][0]["session_cap"], 5);
}

#[test]
fn watch_prints_one_json_line_per_poll() {
    let out = comine(&[
        "gpu",
        "status",
        "--json",
        "--watch",
        "--count",
        "3",
        "--backend",
        "sim:rtx4090",
        "--interval-ms",
        "10",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(
        last["devices"][0]["energy_joules"].as_f64()
            > first["devices"][0]["energy_joules"].as_f64()
    );
}

#[test]
fn auto_without_a_driver_says_so_and_uses_the_host() {
    if std::path::Path::new("/proc/driver/nvidia/version").exists() {
        return; // a real GPU host: nothing to fall back from
    }
    let out = comine(&["gpu", "status", "--json", "--interval-ms", "50"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NVML unavailable"), "{stderr}");
    assert!(stderr.contains("using host CPU telemetry"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "host");
    assert!(v["devices"][0]["memory_total_bytes"].as_u64().unwrap() > 0);
    // Text mode names the source on its first line.
    let out = comine(&["gpu", "status", "--backend", "host", "--interval-ms", "50"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("source: host"), "{text}");
    // A CPU is shown as a CPU: no encoder utilisation or NVENC sessions for it.
    assert!(text.contains("    cpu "), "{text}");
    assert!(!text.contains(" enc ") && !text.contains("nvenc"), "{text}");
}

#[test]
fn bad_backend_is_a_clear_error() {
    for bad in ["cuda", "sim:gtx480"] {
        let out = comine(&["gpu", "status", "--backend", bad]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("rtx3090"), "no hint in: {stderr}");
    }
    let out = comine(&["gpu", "status", "--backend", "nvml"]);
    if !std::path::Path::new("/proc/driver/nvidia/version").exists() {
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("NVML unavailable"), "{stderr}");
        // One clear error, not a warning followed by a failure.
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("WARN"), "{stderr}");
        assert!(stderr.contains("--backend host"), "{stderr}");
    }
}
