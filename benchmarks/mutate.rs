//! The long robustness run: `cargo bench --bench mutate -- --count 10000 [--seed S]
//! [--target engine|daemon|both|warm] [--from I] [--parallel N] [--hang-secs S]
//! [--daemon-decoder software|auto|nvdec]` (the engine target decodes with `auto`: NVDEC
//! where CUDA opens).
//!
//! Mutated real segments (bit flips, truncation, TS packet shuffles, zeroed ranges,
//! random bytes, PTS/DTS jumps including 13 hours and a 33-bit wrap; see
//! `tests/common/mutate.rs`) go through the engine in this process and through a real
//! `comine run` over `/v1/transcode`. Prints panics, hangs (cases not answered within
//! `--hang-secs`), frame-ceiling breaches, leaked spool/work files and the RSS of both
//! processes over the run; exits non-zero if any of the first four is not zero.
//! `--target warm` runs the engine cases as segments of warm sessions (one per source),
//! each followed by the clean source through the same session, which must come out exactly
//! as it does cold (a decoder left bad by a damaged segment would show there).
//! Case `i` of seed `s` replays with `--seed s --from i --count 1`.

use std::time::{Duration, Instant};

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::mutate::{self, Tally};

struct Args {
    count: u64,
    seed: u64,
    from: u64,
    target: String,
    parallel: usize,
    hang: Duration,
    daemon_decoder: String,
}

fn args() -> Args {
    let mut a = Args {
        count: 1000,
        seed: 0xC0FF_EE11,
        from: 0,
        target: "both".into(),
        parallel: 2,
        hang: Duration::from_secs(120),
        daemon_decoder: "software".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
                .clone()
        };
        match k.as_str() {
            "--count" => a.count = val("--count").parse().expect("--count N"),
            "--seed" => a.seed = parse_u64(&val("--seed")),
            "--from" => a.from = val("--from").parse().expect("--from N"),
            "--target" => a.target = val("--target"),
            "--parallel" => a.parallel = val("--parallel").parse().expect("--parallel N"),
            "--hang-secs" => {
                a.hang = Duration::from_secs(val("--hang-secs").parse().expect("--hang-secs N"))
            }
            "--daemon-decoder" => a.daemon_decoder = val("--daemon-decoder"),
            "--bench" => {}
            other => panic!("unknown argument {other}; see the header of benchmarks/mutate.rs"),
        }
    }
    assert!(
        matches!(a.target.as_str(), "engine" | "daemon" | "both" | "warm"),
        "--target engine|daemon|both|warm"
    );
    a
}

fn parse_u64(s: &str) -> u64 {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).expect("--seed hex"),
        None => s.parse().expect("--seed N"),
    }
}

fn self_rss_kib() -> u64 {
    common::rss_kib(std::process::id())
}

/// RSS samples: after the first tenth of the run (warm), the end, and the peak.
#[derive(Default)]
struct Rss {
    warm: u64,
    last: u64,
    max: u64,
}

impl Rss {
    fn sample(&mut self, kib: u64, done: u64, count: u64) {
        if self.warm == 0 && done >= count / 10 {
            self.warm = kib;
        }
        self.last = kib;
        self.max = self.max.max(kib);
    }
    fn line(&self) -> String {
        format!(
            "RSS warm {} MiB, end {} MiB, peak {} MiB (end/warm {:.2})",
            self.warm / 1024,
            self.last / 1024,
            self.max / 1024,
            self.last as f64 / self.warm.max(1) as f64
        )
    }
}

fn report(name: &str, t: &Tally, rss: &Rss, panics: u64, secs: f64) -> bool {
    println!("{name}: {}", t.summary());
    println!(
        "{name}: {panics} panics; {}; {:.0} s ({:.1} cases/s)",
        rss.line(),
        secs,
        t.cases as f64 / secs.max(1e-9)
    );
    for (reason, n) in t.reasons.iter().rev().take(12) {
        println!("  {n:>6} × {reason}");
    }
    for h in t
        .hangs
        .iter()
        .chain(&t.overfilled)
        .chain(&t.leaked)
        .take(20)
    {
        println!("  ! {h}");
    }
    for f in t.failures.iter().take(20) {
        println!("  failed: {f}");
    }
    panics == 0 && t.hangs.is_empty() && t.overfilled.is_empty() && t.leaked.is_empty()
}

fn main() {
    // `cargo test --benches` lists benches; keep that instant.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let a = args();
    let sources = mutate::sources();
    let range = a.from..a.from + a.count;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mutate: {} cases from {} of seed {:#x}, target {}, ladder {}, {} sources, load average {}",
        a.count,
        a.from,
        a.seed,
        a.target,
        mutate::LADDER,
        sources.len(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let every = (a.count / 20).max(1);
    let mut ok = true;

    if a.target != "daemon" {
        let warm = a.target == "warm";
        let name = if warm { "warm" } else { "engine" };
        let before = mutate::panics();
        let mut rss = Rss::default();
        let t0 = Instant::now();
        let progress = |i: u64, t: &Tally| {
            rss.sample(self_rss_kib(), t.cases, a.count);
            if (i - a.from + 1).is_multiple_of(every) {
                eprintln!("  {name} {}/{}: {}", t.cases, a.count, t.summary());
            }
        };
        let tally = if warm {
            mutate::run_engine_warm(a.seed, range.clone(), &sources, a.hang, progress)
        } else {
            mutate::run_engine(a.seed, range.clone(), &sources, a.hang, progress)
        };
        if warm {
            println!(
                "warm sessions: {} clean segments reused the warm decoder; {} came out unlike cold{}",
                tally.warm_reused,
                tally.warm_mismatches.len(),
                tally
                    .warm_mismatches
                    .iter()
                    .take(10)
                    .map(|m| format!("\n    {m}"))
                    .collect::<String>()
            );
            ok &= tally.warm_mismatches.is_empty();
        }
        ok &= report(
            name,
            &tally,
            &rss,
            mutate::panics() - before,
            t0.elapsed().as_secs_f64(),
        );
    }

    if a.target != "engine" && a.target != "warm" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let root = tempfile::tempdir().expect("tempdir");
        let cfg = common::write_config(root.path(), "");
        if a.daemon_decoder != "software" {
            let text = std::fs::read_to_string(&cfg).expect("read the config");
            let text = text.replace(
                "decoder = \"software\"",
                &format!("decoder = \"{}\"", a.daemon_decoder),
            );
            std::fs::write(&cfg, text).expect("write the config");
        }
        let d = common::Daemon::start(root.path(), &cfg);
        let pid = d.pid();
        let mut rss = Rss::default();
        let t0 = Instant::now();
        let tally = rt.block_on(mutate::run_daemon(
            &d,
            a.seed,
            range.clone(),
            &sources,
            a.parallel,
            a.hang,
            |i, t| {
                rss.sample(common::rss_kib(pid), t.cases, a.count);
                if (i - a.from + 1).is_multiple_of(every) {
                    eprintln!("  daemon {}/{}: {}", t.cases, a.count, t.summary());
                }
            },
        ));
        let log = d.log();
        let panics = log.matches("panicked").count() as u64;
        let alive = rt.block_on(async { d.get("/healthz").await.status() == 200 });
        ok &= report("daemon", &tally, &rss, panics, t0.elapsed().as_secs_f64());
        println!("daemon: still serving after the run: {alive}");
        ok &= alive;
    }
    if !ok {
        eprintln!("mutate: FAILED (panics, hangs, overfilled outputs or leaked files above)");
        std::process::exit(1);
    }
}
