//! Scheduler tick cost per device (target < 1 ms) and telemetry poll overhead at 500 ms
//! polling (target < 1% of one core). Peer in the same run: cloning the tick's input snapshot,
//! the least work any decision must do.

use std::hint::black_box;
use std::time::{Duration, Instant};

use comine::gpu::{host::HostBackend, Attribution, JobLoad, SimGpu};
use comine::sched::{Config, ControllerStatus, Demand, ProofSignal, Scheduler, TickInput};

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    println!("# comine scheduler benchmark");
    println!("## tick cost");
    for n in [1usize, 2, 8] {
        let presets: Vec<&str> = ["rtx3090", "rtx4090", "a4000", "a5000"]
            .iter()
            .cycle()
            .take(n)
            .copied()
            .collect();
        let sim = SimGpu::from_presets(&presets, 1).expect("presets");
        let _jobs: Vec<_> = (0..n as u32)
            .flat_map(|d| {
                [
                    sim.start_job(
                        d,
                        JobLoad::Transcode {
                            pixels_per_sec: 1e8,
                        },
                    )
                    .ok(),
                    sim.start_job(d, JobLoad::Sealing { sm_pct: 60.0 }).ok(),
                ]
            })
            .collect();
        let input = TickInput {
            now_ms: 0,
            snapshot: sim.poll(),
            demand: Demand {
                live_pps: 5e8,
                batch_pps: 1e8,
            },
            load: Vec::new(),
            proof: ProofSignal::default(),
            controller: ControllerStatus::default(),
            post: Default::default(),
            safe_profile: None,
            models: Vec::new(),
        };
        let mut sched = Scheduler::new(Config::default());
        let iters = 20_000u32;
        let mut inp = input.clone();
        let t = Instant::now();
        for i in 0..iters {
            inp.now_ms = i as u64 * 500;
            black_box(sched.tick(black_box(&inp)));
        }
        let tick = t.elapsed() / iters;
        let t = Instant::now();
        for _ in 0..iters {
            black_box(black_box(&input).clone());
        }
        let peer = t.elapsed() / iters;
        println!(
            "devices={n:<2} tick={:>8.2} us  per-device={:>7.2} us  (target < 1000 us/device: {:.4}x of target)  peer clone-input={:>7.2} us  tick/peer={:.1}x",
            tick.as_secs_f64() * 1e6,
            tick.as_secs_f64() * 1e6 / n as f64,
            tick.as_secs_f64() / n as f64 / 1e-3,
            peer.as_secs_f64() * 1e6,
            tick.as_secs_f64() / peer.as_secs_f64().max(1e-12),
        );
    }
    println!("## telemetry poll overhead (CPU time per poll / 500 ms interval)");
    let polls = 2_000u32;
    let mut host = HostBackend::new(Attribution::default());
    let c0 = cpu_time();
    for _ in 0..polls {
        black_box(host.poll());
    }
    let host_cpu = (cpu_time() - c0) / polls;
    let sim = SimGpu::from_presets(&["rtx3090", "rtx4090"], 1).expect("presets");
    let c0 = cpu_time();
    for _ in 0..polls {
        black_box(sim.poll());
    }
    let sim_cpu = (cpu_time() - c0) / polls;
    let c0 = cpu_time();
    for _ in 0..polls {
        black_box(std::fs::read_to_string("/proc/stat").ok());
    }
    let peer = (cpu_time() - c0) / polls;
    for (name, per) in [
        ("host", host_cpu),
        ("sim(2 gpus)", sim_cpu),
        ("peer read /proc/stat", peer),
    ] {
        println!(
            "{name:<22} cpu/poll={:>8.1} us  at 500 ms = {:.4}% of one core (target < 1%)",
            per.as_secs_f64() * 1e6,
            per.as_secs_f64() / 0.5 * 100.0
        );
    }
    println!(
        "host/peer = {:.1}x",
        host_cpu.as_secs_f64() / peer.as_secs_f64().max(1e-12)
    );
    println!("(NVML poll cost needs a GPU host; not measured here)");
}
