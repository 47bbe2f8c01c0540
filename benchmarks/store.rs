//! Store benchmarks, each against a peer measured in the same run:
//! - local CID computation (`compute_cid`) vs `sha256sum` of the same file, MB/s (target ≥ 70%);
//! - `Store::add_file` (CID + embedded blockstore writes), MB/s, informational;
//! - `comine store add --backend kubo` vs the node's own CLI add of the same file (needs
//!   `COMINE_TEST_IPFS_API`, and `scripts/ipfs-test-node.sh` for the CLI);
//! - CommP MB/s (vs sha256sum too, for scale).
//!
//! `cargo bench --bench store`; `COMINE_BENCH_MB` sets the file size (default 256).

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
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
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

    match std::env::var("COMINE_TEST_IPFS_API") {
        Ok(api) if !api.is_empty() => kubo(&api, &file, dir.path(), bytes.min(64 << 20)),
        _ => println!(
            "  kubo add: skipped (set COMINE_TEST_IPFS_API; see scripts/ipfs-test-node.sh)"
        ),
    }
}

/// `comine store add --backend kubo` vs the node's own CLI add (`jsipfs add` through
/// scripts/ipfs-test-node.sh cli, or `ipfs add` when COMINE_BENCH_IPFS_CLI names Kubo's binary).
fn kubo(api: &str, big: &Path, dir: &Path, bytes: u64) {
    let file = dir.join("kubo.bin");
    write_file(&file, bytes as usize);
    let comine = env!("CARGO_BIN_EXE_comine");
    let mut n = 0;
    let ours = best_of(3, || {
        n += 1;
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
            .arg(&file));
        assert!(out.contains("\"pushed\":true"), "not pushed: {out}");
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ipfs-test-node.sh");
    let node_cli = || -> Command {
        match std::env::var("COMINE_BENCH_IPFS_CLI") {
            Ok(bin) if !bin.is_empty() => {
                let mut c = Command::new(bin);
                c.args([
                    "--api",
                    &comine::store::kubo::api_base_url(api).unwrap_or_default(),
                ]);
                c
            }
            _ => {
                let mut c = Command::new("bash");
                c.arg(&script).arg("cli");
                c
            }
        }
    };
    let theirs = best_of(3, || {
        run(node_cli()
            .args(["add", "-Q", "--cid-version", "0"])
            .arg(&file));
    });
    // The node CLI's own start-up (Node.js for js-ipfs) is part of what a user pays; show it.
    let startup = best_of(3, || {
        run(node_cli().arg("version"));
    });
    println!(
        "  kubo add {} MiB: comine store add --backend kubo {:.2} s ({:.1} MB/s) | node CLI add {:.2} s ({:.1} MB/s, of which CLI start-up ~{:.2} s) | ratio comine/node time {:.2}",
        bytes >> 20,
        ours.as_secs_f64(),
        mbps(bytes, ours),
        theirs.as_secs_f64(),
        mbps(bytes, theirs),
        startup.as_secs_f64(),
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    let _ = big;
}
