//! Safe by default on a real rig: what `comine run` does with the shipped config (no proof
//! source → the PoSt-safe profile, said at start, in /v1/status and in /metrics), how it
//! exits on a configuration error (78, which the systemd unit does not restart), how it
//! talks to systemd (READY, a watchdog fed only while it makes progress), and how the
//! client commands find and describe a running daemon.

use crate::common;

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{write_config, Daemon, BIN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comine_run_without_a_proof_source_warns_and_runs_the_post_safe_profile() {
    for var in ["MINER_API_INFO", "FULLNODE_API_INFO"] {
        assert!(
            std::env::var_os(var).is_none(),
            "unset {var} to run this test (it checks the unconfigured default)"
        );
    }
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        "[gpu]\nbackend = \"host\"\npoll_interval_ms = 50\n[scheduler]\ntick_interval_ms = 50\n",
    );
    let d = Daemon::start(root.path(), &cfg);
    // Loud at start…
    let log = d.log();
    assert!(
        log.contains("WARN") && log.contains("no proof source configured"),
        "{log}"
    );
    // …in /v1/status…
    let start = Instant::now();
    let status = loop {
        let status = d.get_json("/v1/status").await;
        if status["decisions"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no decision: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["proofs"]["sources"], serde_json::json!([]));
    assert_eq!(
        status["proofs"]["safe_profile"],
        "no proof source configured"
    );
    // …and the decisions run it: the budget is at most half of the rated throughput.
    let dev = &status["decisions"].as_array().unwrap().last().unwrap()["devices"][0];
    let (budget, rated) = (
        dev["budget_pps"].as_f64().unwrap(),
        dev["rated_pps"].as_f64().unwrap(),
    );
    assert!(budget <= rated * 0.5 + 1.0, "{dev}");
    assert!(
        dev["reasons"].to_string().contains("PoSt-safe profile"),
        "{dev}"
    );
    // …and in /metrics, where a CPU host has no comine_gpu_* series.
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("comine_post_safe_profile 1"), "{metrics}");
    assert!(metrics.contains("comine_proof_sources 0"), "{metrics}");
    assert!(
        !metrics.lines().any(|l| l.starts_with("comine_gpu_")),
        "a CPU exported as a GPU:\n{metrics}"
    );
    // controller none confirms nothing: no comine_sealing_paused series (unknown, not 0).
    assert!(!metrics.contains("comine_sealing_paused{"), "{metrics}");
    // `comine status` says it in words, with `-` for what the host cannot read.
    let (ok, out, err) = d.cli(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("proofs: PoSt-safe profile (no proof source configured)"),
        "{out}"
    );
    assert!(out.contains("store: embedded at "), "{out}");
    assert!(!out.contains("{\""), "raw JSON in comine status:\n{out}");
    assert!(out.contains("recent decisions:"), "{out}");
    // A CPU is not a GPU, in the decisions too.
    assert!(
        out.contains("host 0: PoSt-safe profile") && !out.contains("gpu 0:"),
        "{out}"
    );
    drop(d);

    // A configured prover name is a proof source: no warning, the normal profile.
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        "[gpu]\nbackend = \"host\"\n[gpu.attribution]\nproof_process_names = [\"lotus-post\"]\n",
    );
    let d = Daemon::start(root.path(), &cfg);
    let status = d.get_json("/v1/status").await;
    assert!(status["proofs"]["safe_profile"].is_null(), "{status}");
    assert!(!d.log().contains("no proof source configured"));
    // `[livepeer]` is typed and read now (issue 10): daemon_livepeer's
    // the_livepeer_section_of_the_config_attaches_and_flags_win covers it.
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("comine_post_safe_profile 0"), "{metrics}");
}

#[test]
fn a_configuration_error_exits_78_which_systemd_does_not_restart() {
    let root = tempfile::tempdir().unwrap();
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "[api]\nqueue_depht = 3\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&bad)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue_depht"), "{err}");
    // So is an unknown section, and a typo in the sections the operator guide lists.
    for (bad_toml, name) in [
        ("[sheduler]\ntick_interval_ms = 5\n", "sheduler"),
        ("[gateway]\nlisen = \"127.0.0.1:0\"\n", "lisen"),
        ("[ai]\nthread = 2\n", "thread"),
    ] {
        std::fs::write(&bad, bad_toml).unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&bad)
            .arg("--data-dir")
            .arg(root.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{bad_toml}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{bad_toml}: {err}");
    }
    // A bad flag combination is a configuration error too.
    let out = Command::new(BIN)
        .args([
            "run",
            "--orch-addr",
            "pool.example:8935,",
            "--orch-secret",
            "s",
        ])
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    // The unit says so: 78 stops the restarts, and start limits exist.
    let unit = include_str!("../../deploy/comine.service");
    assert!(unit.contains("RestartPreventExitStatus=78"), "{unit}");
    assert!(unit.contains("StartLimitBurst="), "{unit}");
}

#[test]
fn systemd_gets_ready_and_a_watchdog_fed_while_the_daemon_makes_progress() {
    let root = tempfile::tempdir().unwrap();
    let sock_path = root.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let cfg = write_config(root.path(), "[gpu]\nbackend = \"host\"\n");
    let mut child = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let start = Instant::now();
    while got
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        assert!(start.elapsed() < Duration::from_secs(60), "{got:?}");
        let n = sock.recv(&mut buf).expect("a notification from comine run");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        got[0].starts_with("READY=1\nSTATUS=serving on 127.0.0.1:"),
        "{got:?}"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
        if buf[..n].starts_with(b"STOPPING=1") {
            break;
        }
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "{err}");
    assert!(err.contains("systemd watchdog"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_export_next_to_a_running_daemon_says_it_asks_the_daemon() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "[gpu]\nbackend = \"host\"\n");
    let d = Daemon::start(root.path(), &cfg);
    let (ok, out, err) = d.cli(&["ledger", "export", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("finished_at"), "{out}");
    assert!(
        err.contains("a comine daemon is running with this data directory; asking it"),
        "{err}"
    );
    assert!(
        !err.contains("disk space") && !err.contains("IO error"),
        "a normal lock reported as a disk problem: {err}"
    );
}

/// `encoder = "auto"` on a host with a GPU: a rendition that cannot open NVENC and runs on
/// libx264 takes CPU from sealing, so it is counted in `comine_encoder_fallbacks_total`. On a
/// CPU-only host libx264 is the encoder, not a fallback, and nothing is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_fallback_to_the_cpu_is_counted_only_where_a_gpu_is() {
    const LADDER: &str = "P144p30fps16x9,P240p30fps16x9";
    let auto_config = |root: &std::path::Path, backend: &str| {
        let path = root.join("comine.toml");
        std::fs::write(
            &path,
            format!(
                "[gpu]\nbackend = \"{backend}\"\n[transcode]\nencoder = \"auto\"\n\
                 decoder = \"software\"\nx264_preset = \"ultrafast\"\n"
            ),
        )
        .unwrap();
        path
    };
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "a.ts", "testsrc");
    // The labelled simulated RTX 3090 stands for the GPU; this host has no NVENC to open.
    let cfg = auto_config(root.path(), "sim:rtx3090");
    let d = Daemon::start(root.path(), &cfg);
    let r = d.submit(&format!("profiles={LADDER}"), seg.clone()).await;
    assert_eq!(r.status(), 200, "{}", d.log());
    let job: serde_json::Value = r.json().await.unwrap();
    assert_eq!(job["state"], "done", "{job}");
    let on_cpu = job["renditions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["encoder"] == "libx264")
        .count();
    assert_eq!(on_cpu, 2, "{job}");
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("comine_encoder_fallbacks_total{reason=\"nvenc_unavailable\"} 2"),
        "{metrics}"
    );
    drop(d);

    let root = tempfile::tempdir().unwrap();
    let cfg = auto_config(root.path(), "host");
    let d = Daemon::start(root.path(), &cfg);
    let r = d.submit(&format!("profiles={LADDER}"), seg).await;
    assert_eq!(r.status(), 200, "{}", d.log());
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("comine_encoder_fallbacks_total{"),
        "a CPU host's libx264 counted as a fallback:\n{metrics}"
    );
}

/// `--test-transcoder` probes the GPUs telemetry reports as soon as the daemon starts. Found
/// on an H200 (no NVENC): the probe read the device list before the first telemetry poll,
/// saw none, probed libx264 as on a CPU-only host and passed. Here the labelled simulated
/// RTX 3090 stands for the GPU on a host with no NVENC: under `encoder = "auto"` the probe
/// must fail fast naming NVENC; with `encoder = "x264"` it passes and the daemon serves.
#[test]
fn test_transcoder_fails_fast_on_a_gpu_whose_nvenc_does_not_open() {
    let root = tempfile::tempdir().unwrap();
    let config = |encoder: &str| {
        let path = root.path().join(format!("{encoder}.toml"));
        std::fs::write(
            &path,
            format!(
                "[gpu]\nbackend = \"sim:rtx3090\"\n[transcode]\nencoder = \"{encoder}\"\n\
                 x264_preset = \"ultrafast\"\ncalibrate = false\n"
            ),
        )
        .unwrap();
        path
    };
    // A passing probe would go on serving, so the run is bounded rather than waited on.
    let mut child = spawn_test_transcoder(&config("auto"), &root.path().join("auto"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline || root.path().join("auto/api.addr").exists() {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let err = common::stderr_of(&mut child);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the probe passed on a GPU whose NVENC does not open: {err}"
    );
    assert!(
        err.contains("--test-transcoder: GPU 0 cannot open") && err.contains("NVENC"),
        "{err}"
    );

    let mut child = spawn_test_transcoder(&config("x264"), &root.path().join("x264"));
    let addr = root.path().join("x264").join("api.addr");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !addr.exists() && std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited {status} before serving: {}",
                common::stderr_of(&mut child)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        addr.exists(),
        "the daemon never served after a passing probe"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `comine run --test-transcoder` with `config`, its data in `data`, stderr piped.
fn spawn_test_transcoder(config: &std::path::Path, data: &std::path::Path) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "--test-transcoder", "--listen", "127.0.0.1:0"])
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}
