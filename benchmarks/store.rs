//! Store benchmarks, each against a peer measured in the same run:
//! - local CID computation (`compute_cid`) vs `sha256sum` of the same file, MB/s (target ≥ 70%);
//! - `Store::add_file` (CID + embedded blockstore writes), MB/s, informational;
//! - `comine store add --backend kubo` vs Kubo's own `ipfs add` of the same-size file, as a
//!   throughput ratio (needs the node of `scripts/kubo-test-node.sh`: `COMINE_TEST_IPFS_API`,
//!   `COMINE_TEST_IPFS_REPO`, `COMINE_TEST_KUBO_BIN`; `scripts/kubo-test-node.sh run cargo bench
//!   --bench store` sets them);
//! - CommP MB/s (vs sha256sum too, for scale).
//!
//! `cargo bench --bench store`; `COMINE_BENCH_MB` sets the file size (default 256),
//! `COMINE_BENCH_KUBO_MB` the Kubo comparison's (default 64).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comine::store::{commp, compute_cid, AddOptions, Store};

fn best_of<F: FnMut()>(n: usize, mut f: F) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn write_file(path: &Path, len: usize) {
    write_file_seeded(path, len, 0);
}

fn write_file_seeded(path: &Path, len: usize, seed: u64) {
    let mut x: u64 = (0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)) | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).expect("writing the bench file");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let mb: usize = std::env::var("COMINE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bench.bin");
    write_file(&file, mb << 20);
    let bytes = (mb as u64) << 20;
    // Warm the page cache so both sides read from memory.
    let _ = std::fs::read(&file);

    println!("store benchmark: {mb} MiB file, best of 3");
    let sha = best_of(3, || {
        run(Command::new("sha256sum").arg(&file));
    });
    let sha_mbps = mbps(bytes, sha);
    println!("  sha256sum                 {:>8.1} MB/s", sha_mbps);

    for (label, opts) in [
        ("cid v0 (dag-pb leaves)", AddOptions::default()),
        (
            "cid v1 (raw leaves)",
            AddOptions {
                cid_version: 1,
                raw_leaves: None,
            },
        ),
    ] {
        let t = best_of(3, || {
            let f = std::fs::File::open(&file).expect("open");
            compute_cid(&mut std::io::BufReader::with_capacity(1 << 20, f), &opts).expect("cid");
        });
        let r = mbps(bytes, t);
        println!(
            "  compute_cid {label:<22} {r:>8.1} MB/s  ratio vs sha256sum {:.2} (target >= 0.70) {}",
            r / sha_mbps,
            if r / sha_mbps >= 0.70 {
                "OK"
            } else {
                "BELOW TARGET"
            }
        );
    }

    let t = best_of(3, || {
        let d = tempfile::tempdir().expect("dir");
        let store = Store::open(d.path()).expect("store");
        store.add_file(&file, &AddOptions::default()).expect("add");
    });
    println!(
        "  Store::add_file (sled)     {:>8.1} MB/s  ratio {:.2}",
        mbps(bytes, t),
        mbps(bytes, t) / sha_mbps
    );

    let t = best_of(3, || {
        let f = std::fs::File::open(&file).expect("open");
        commp::piece_cid(std::io::BufReader::with_capacity(1 << 20, f)).expect("commp");
    });
    println!(
        "  CommP                      {:>8.1} MB/s  ratio vs sha256sum {:.2}",
        mbps(bytes, t),
        mbps(bytes, t) / sha_mbps
    );

    let kubo_mb: u64 = std::env::var("COMINE_BENCH_KUBO_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (
        env("COMINE_TEST_IPFS_API"),
        env("COMINE_TEST_IPFS_REPO"),
        env("COMINE_TEST_KUBO_BIN"),
    ) {
        (Some(api), Some(repo), Some(bin)) => kubo(&api, &repo, &bin, dir.path(), kubo_mb << 20),
        _ => println!(
            "  kubo add: skipped (run under `scripts/kubo-test-node.sh run cargo bench --bench store`)"
        ),
    }
}

/// `comine store add --backend kubo` (local import + upload + CID check + pin) against Kubo's
/// own `ipfs add` (through the same daemon). Each run adds a file never seen before, so neither
/// side finds its blocks already on the node; the files are written (and left in the page
/// cache) before any clock starts, so only the adds are timed.
fn kubo(api: &str, repo: &str, bin: &str, dir: &Path, bytes: u64) {
    const RUNS: usize = 3;
    let comine = env!("CARGO_BIN_EXE_comine");
    let files = |prefix: &str, seed: u64| -> Vec<std::path::PathBuf> {
        (0..RUNS)
            .map(|i| {
                let file = dir.join(format!("{prefix}{i}.bin"));
                write_file_seeded(&file, bytes as usize, seed + i as u64);
                file
            })
            .collect()
    };
    let ours_files = files("ours", 1000);
    let theirs_files = files("theirs", 2000);
    let mut n = 0;
    let ours = best_of(RUNS, || {
        let data_dir = dir.join(format!("data{n}"));
        let out = run(Command::new(comine)
            .args([
                "store",
                "add",
                "--backend",
                "kubo",
                "--json",
                "--api",
                api,
                "--data-dir",
            ])
            .arg(&data_dir)
            .arg(&ours_files[n]));
        assert!(out.contains("\"pushed\":true"), "not pushed: {out}");
        n += 1;
    });
    let mut m = 0;
    let theirs = best_of(RUNS, || {
        run(Command::new(bin)
            .env("IPFS_PATH", repo)
            .args(["add", "-Q", "--pin=true", "--cid-version", "0"])
            .arg(&theirs_files[m]));
        m += 1;
    });
    for f in ours_files.iter().chain(&theirs_files) {
        let _ = std::fs::remove_file(f);
    }
    // The CLI's own start-up is part of what `ipfs add` costs a user; show it.
    let startup = best_of(3, || {
        run(Command::new(bin).env("IPFS_PATH", repo).arg("version"));
    });
    println!(
        "  kubo add {} MiB: comine store add --backend kubo {:.2} s ({:.1} MB/s) | ipfs add {:.2} s ({:.1} MB/s, CLI start-up ~{:.2} s) | throughput ratio comine/ipfs {:.2}",
        bytes >> 20,
        ours.as_secs_f64(),
        mbps(bytes, ours),
        theirs.as_secs_f64(),
        mbps(bytes, theirs),
        startup.as_secs_f64(),
        mbps(bytes, ours) / mbps(bytes, theirs)
    );
}
