//! Store benchmarks, each against a peer measured in the same run (issue 15's targets):
//! - `comine store add` (the real binary) of a `COMINE_BENCH_MB` file (default 1024):
//!   throughput against `openssl dgst -sha256` of the same file (target ≥ 0.70) and against
//!   `dd conv=fsync` (the disk's durable write speed: a durable add cannot beat it), peak RSS
//!   (target < 100 MB whatever the size), and disk used / content (target ≤ 1.1);
//! - `comine store add --only-hash` (hashing and DAG building alone) against openssl;
//! - CommP against half of openssl's rate (it hashes about twice the bytes; target ≥ 0.70);
//! - garbage collection of 10,000 renditions: time and bytes freed (`COMINE_BENCH_GC_N`);
//! - `comine store add --backend kubo` vs Kubo's own `ipfs add` of the same-size file, as a
//!   throughput ratio (needs the node of `scripts/kubo-test-node.sh`: `COMINE_TEST_IPFS_API`,
//!   `COMINE_TEST_IPFS_REPO`, `COMINE_TEST_KUBO_BIN`; `scripts/kubo-test-node.sh run cargo bench
//!   --bench store` sets them; `COMINE_BENCH_KUBO_MB`, default 64).
//!
//! `cargo bench --bench store`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use comine::store::gc::GcOptions;
use comine::store::{commp, AddOptions, PinKind, Store};

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

fn fill(buf: &mut Vec<u8>, len: usize, seed: u64) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    buf.clear();
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
}

fn write_file(path: &Path, len: usize) {
    write_file_seeded(path, len, 0);
}

/// A file of `len` pseudo-random bytes; different seeds give different content.
fn write_file_seeded(path: &Path, len: usize, seed: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("creating the bench file");
    let mut buf = Vec::new();
    let mut left = len;
    let mut seed = 1 + seed * 1_000_003;
    while left > 0 {
        let n = left.min(64 << 20);
        fill(&mut buf, n, seed);
        f.write_all(&buf).expect("writing the bench file");
        left -= n;
        seed += 1;
    }
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

/// Runs `cmd` to completion; returns (wall time, peak RSS in KiB).
///
/// The peak is the child's own `VmHWM` (/proc/PID/status), read every few milliseconds while it
/// runs: wait4's `ru_maxrss` is not used because on Linux it also counts the forked copy of this
/// process before `exec`, which holds the 1 GiB file buffers, and so reports our size, not
/// comine's.
fn run_measured(cmd: &mut Command) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            // Before exec the child is still a copy of us: wait until it runs comine.
            let exec_done = text
                .lines()
                .any(|l| l.starts_with("Name:") && l.contains("comine"));
            if exec_done {
                if let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak_kib = peak_kib.max(kib);
                }
            }
        }
        match child.try_wait().expect("waiting for the child") {
            Some(st) => break st,
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let took = t.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    (took, peak_kib)
}

/// Bytes the files under `dir` occupy on disk (allocated blocks, like `du`).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += disk_usage(&e.path());
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "OK"
    } else {
        "BELOW TARGET"
    }
}

fn main() {
    let mb: usize = std::env::var("COMINE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let comine = env!("CARGO_BIN_EXE_comine");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let file = dir.path().join("bench.bin");
    write_file(&file, mb << 20);
    let bytes = (mb as u64) << 20;
    // Warm the page cache so every reader starts from memory.
    let _ = std::fs::read(&file);

    println!("store benchmark: {mb} MiB of random data, best of 3 unless noted");
    let ssl = best_of(3, || {
        run(Command::new("openssl").args(["dgst", "-sha256"]).arg(&file));
    });
    let ssl_mbps = mbps(bytes, ssl);
    println!("  openssl dgst -sha256        {ssl_mbps:>8.1} MB/s");
    let dd = best_of(2, || {
        let out = dir.path().join("dd.copy");
        run(Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", out.display()))
            .args(["bs=1M", "conv=fsync", "status=none"]));
        let _ = std::fs::remove_file(out);
    });
    let dd_mbps = mbps(bytes, dd);
    println!("  dd conv=fsync (disk bound)  {dd_mbps:>8.1} MB/s");

    // The real command, a fresh data directory each time.
    let mut rss_max = 0;
    let mut disk = 0;
    let mut n = 0;
    let add = (0..3)
        .map(|_| {
            n += 1;
            let data = dir.path().join(format!("data{n}"));
            let (took, rss) = run_measured(
                Command::new(comine)
                    .args(["store", "add", "--data-dir"])
                    .arg(&data)
                    .arg(&file)
                    .stdout(std::process::Stdio::null()),
            );
            rss_max = rss_max.max(rss);
            disk = disk_usage(&data);
            let _ = std::fs::remove_dir_all(&data);
            took
        })
        .min()
        .unwrap_or_default();
    let add_mbps = mbps(bytes, add);
    println!(
        "  comine store add (durable)  {add_mbps:>8.1} MB/s  vs openssl {:.2} (target >= 0.70) {}  vs dd {:.2}",
        add_mbps / ssl_mbps,
        verdict(add_mbps / ssl_mbps >= 0.70),
        add_mbps / dd_mbps
    );
    println!(
        "  peak RSS of store add       {:>8.1} MB (target < 100 MB) {}",
        rss_max as f64 * 1024.0 / 1e6,
        verdict(rss_max * 1024 < 100_000_000)
    );
    println!(
        "  disk used / content         {:>8.3} ({disk} bytes for {bytes}; target <= 1.1) {}",
        disk as f64 / bytes as f64,
        verdict((disk as f64) <= 1.1 * bytes as f64)
    );

    let hash_only = best_of(3, || {
        run(Command::new(comine)
            .args(["store", "add", "-n"])
            .arg(&file)
            .stdout(std::process::Stdio::piped()));
    });
    let h_mbps = mbps(bytes, hash_only);
    println!(
        "  comine store add -n         {h_mbps:>8.1} MB/s  vs openssl {:.2}",
        h_mbps / ssl_mbps
    );
    let t = best_of(3, || {
        let f = std::fs::File::open(&file).expect("open");
        commp::piece_cid(std::io::BufReader::with_capacity(1 << 20, f)).expect("commp");
    });
    let c_mbps = mbps(bytes, t);
    println!(
        "  CommP                       {c_mbps:>8.1} MB/s  vs half of openssl {:.2} (target >= 0.70) {}",
        c_mbps / (ssl_mbps / 2.0),
        verdict(c_mbps / (ssl_mbps / 2.0) >= 0.70)
    );
    let _ = std::fs::remove_file(&file);

    gc_bench(dir.path());

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

/// 10,000 renditions (20 KB each, retention pins) stored from 8 threads, then collected once
/// their window is over: time and bytes freed, and the cost of a collection that frees nothing.
fn gc_bench(root: &Path) {
    let n: usize = std::env::var("COMINE_BENCH_GC_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let data = root.join("gc");
    let store = Store::open(&data).expect("store");
    let t = Instant::now();
    std::thread::scope(|s| {
        for w in 0..8 {
            let store = store.clone();
            s.spawn(move || {
                let mut buf = Vec::new();
                for i in (w..n).step_by(8) {
                    fill(&mut buf, 20_000, 1_000 + i as u64);
                    store
                        .add_reader_with(&buf[..], &AddOptions::default(), None, PinKind::Retain)
                        .expect("add");
                }
            });
        }
    });
    let added = t.elapsed();
    let before = disk_usage(store.blocks_dir());
    let idle = store.gc(GcOptions::new(30, false)).expect("gc");
    let mut later = GcOptions::new(30, false);
    later.now += 31 * 86_400;
    let r = store.gc(later).expect("gc");
    let after = disk_usage(store.blocks_dir());
    assert_eq!(r.unpinned as usize, n, "every rendition's window ended");
    println!(
        "  GC, {n} renditions of 20 KB: stored in {:.1} s; a pass that frees nothing {} ms; collecting all {} ms, {} bytes freed ({} blocks; disk {} -> {} bytes)",
        added.as_secs_f64(),
        idle.millis,
        r.millis,
        r.bytes_freed,
        r.blocks_freed,
        before,
        after
    );
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
