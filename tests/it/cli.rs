//! Behaviour every subcommand shares: one answer for the data directory (flag, environment,
//! the config file's `data_dir`), and a closed stdout (`comine ledger export | head`) is
//! success, as in ripgrep.

use crate::common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pipe whose read end is already closed: every write to the other end fails with EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0i32; 2];
    // SAFETY: `pipe` fills two new descriptors; each is owned exactly once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe()");
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    Stdio::from(write)
}

#[test]
fn ledger_export_into_a_closed_pipe_is_success() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // An empty ledger: the statement is just its header, which cannot be written.
    drop(
        comine::ledger::Ledger::open(
            &data.join("ledger"),
            1 << 20,
            comine::ledger::Price {
                per_unit_wei: 0,
                pixels_per_unit: 1,
            },
        )
        .unwrap(),
    );
    let out = Command::new(common::BIN)
        .args(["ledger", "export", "--data-dir"])
        .arg(&data)
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn gpu_status_into_a_closed_pipe_is_success() {
    let out = Command::new(common::BIN)
        .args(["gpu", "status", "--json", "--backend", "sim:rtx3090"])
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}

/// A config file whose only key is `data_dir`.
fn config_with_data_dir(root: &std::path::Path, data: &std::path::Path) -> std::path::PathBuf {
    let path = root.join("comine.toml");
    std::fs::write(
        &path,
        format!("data_dir = {:?}\n", data.display().to_string()),
    )
    .unwrap();
    path
}

#[test]
fn store_uses_the_config_files_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("from-config");
    let config = config_with_data_dir(root.path(), &data);
    let file = root.path().join("hello.txt");
    std::fs::write(&file, b"hello").unwrap();
    let out = Command::new(common::BIN)
        .args(["store", "add"])
        .arg(&file)
        .arg("--config")
        .arg(&config)
        .env_remove("COMINE_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("store").is_dir(),
        "the store must live under the config's data_dir"
    );
    // The flag still wins over the file.
    let flag = root.path().join("from-flag");
    let out = Command::new(common::BIN)
        .args(["store", "add"])
        .arg(&file)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&flag)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(flag.join("store").is_dir());
}

#[test]
fn livepeer_uses_the_config_files_data_dir() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("from-config");
    let config = config_with_data_dir(root.path(), &data);
    // Nothing listens on port 9: the client keeps retrying, after creating its work dir.
    let mut child = Command::new(common::BIN)
        .args([
            "livepeer",
            "--orch-addr",
            "127.0.0.1:9",
            "--orch-secret",
            "s",
        ])
        .args(["--capacity", "1", "--config"])
        .arg(&config)
        .env_remove("COMINE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let work = data.join("livepeer").join("work");
    let start = Instant::now();
    while !work.is_dir() && start.elapsed() < Duration::from_secs(20) {
        if let Some(status) = child.try_wait().unwrap() {
            let err = common::stderr_of(&mut child);
            panic!("comine livepeer exited with {status}: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        work.is_dir(),
        "no work directory under the config's data_dir"
    );
}

/// `comine calibrate` measures the host CPU with libx264 whatever the cache says, writes
/// `<data>/calibration.json` (what `comine run` rates the device by) and prints the
/// sessions `--capacity auto` will offer.
#[test]
fn calibrate_measures_the_host_and_caches_it_for_comine_run() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let config = root.path().join("comine.toml");
    std::fs::write(&config, "[gpu]\nbackend = \"host\"\n").unwrap();
    let run = |json: bool| {
        let mut c = Command::new(common::BIN);
        c.arg("calibrate")
            .arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(&data);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first: serde_json::Value = serde_json::from_str(&run(true)).unwrap();
    let devices = first["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{first}");
    assert_eq!(devices[0]["uuid"], "host");
    assert_eq!(devices[0]["encoder"], "libx264");
    let pps = devices[0]["pixels_per_sec"].as_f64().unwrap();
    assert!(pps > 0.0 && pps.is_finite(), "{first}");
    let cached: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("calibration.json")).unwrap()).unwrap();
    assert_eq!(cached, first);
    // Forced: measured again, not read back from the cache.
    let text = run(false);
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("calibration.json")).unwrap()).unwrap();
    assert!(
        again["devices"][0]["measured_at_ms"].as_u64()
            > first["devices"][0]["measured_at_ms"].as_u64(),
        "{again}"
    );
    assert!(
        text.contains("Livepeer session(s) with --capacity auto"),
        "{text}"
    );
}

/// A config whose encoder is not one comine knows stops `comine calibrate` with the key.
#[test]
fn calibrate_names_a_bad_encoder_in_the_config() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("comine.toml");
    std::fs::write(&config, "[transcode]\nencoder = \"vp9\"\n").unwrap();
    let out = Command::new(common::BIN)
        .arg("calibrate")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("transcode.encoder"), "{err}");
}
