//! What following the proof schedule costs: requests per hour to the full node and the poller's
//! CPU time per hour, over one simulated hour against the fake full node.
//!
//! The virtual clock runs `SPEED`× faster than real time and the poll interval is divided by the
//! same factor, so the poller makes the same requests it would make in an hour (ChainHead every
//! 10 s, StateMinerProvingDeadline per new height, the hourly live-map refresh, and
//! StateMinerDeadlines at every height of an open live window that is not yet proven). The
//! poller runs alone on its own thread (a current-thread runtime), the fake node on another, so
//! the thread's CPU clock measures the poller only.
//!
//! `cargo bench --bench post`

use std::time::{Duration, Instant};

use comine::post::fake_node::{FakeNode, NodeState, VirtualClock};
use comine::post::{self, Config, WallClock};
use tokio_util::sync::CancellationToken;

const SPEED: f64 = 100.0;
const HOUR_MS: u64 = 3_600_000;

fn thread_cpu_ms() -> f64 {
    // SAFETY: clock_gettime writes into `ts`, which we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1000.0 + ts.tv_nsec as f64 / 1e6
}

struct Outcome {
    requests: u64,
    by_method: Vec<(String, usize)>,
    cpu_ms: f64,
    wall: Duration,
}

fn scenario(all_live: bool) -> Outcome {
    // Start 30 minutes before deadline 33 opens, so the hour holds its whole window.
    let start = VirtualClock::epoch_ms(NodeState::FIXTURE_OPEN_33 - 60);
    let clock = VirtualClock::running(start, SPEED);
    let mut state = NodeState::fixture();
    if all_live {
        let parts = state.partitions[&33].clone();
        for i in 0..48 {
            state.partitions.insert(i, parts.clone());
        }
    }
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let node = node_rt
        .block_on(FakeNode::start("t", clock.clone(), state))
        .expect("fake node");
    let cfg = Config {
        fullnode_api_info: Some(node.api_info("t")),
        miner: Some("f01234".into()),
        poll_interval_ms: (10_000.0 / SPEED) as u64,
        ..Config::default()
    };
    let c = clock.clone();
    let (requests, cpu_ms, wall) = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let cancel = CancellationToken::new();
            let cpu0 = thread_cpu_ms();
            let t0 = Instant::now();
            let h = post::start(&cfg, None, c.clone(), cancel.clone()).expect("poller");
            while c.now_ms() < start + HOUR_MS {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let n = h.requests();
            cancel.cancel();
            h.join().await;
            (n, thread_cpu_ms() - cpu0, t0.elapsed())
        })
    })
    .join()
    .expect("poller thread");
    let mut by_method: Vec<(String, usize)> = Vec::new();
    for m in node.state().calls.iter() {
        match by_method.iter_mut().find(|(k, _)| k == m) {
            Some(e) => e.1 += 1,
            None => by_method.push((m.clone(), 1)),
        }
    }
    drop(node);
    Outcome {
        requests,
        by_method,
        cpu_ms,
        wall,
    }
}

fn main() {
    println!("post poller cost over one simulated hour (virtual clock ×{SPEED}, poll every 10 s virtual)");
    for (name, all) in [
        ("fixture miner (deadline 33 live)", false),
        ("every deadline live", true),
    ] {
        let o = scenario(all);
        println!(
            "{name}: {} requests/h, poller CPU {:.0} ms/h ({:.3} ms/request), {:.1} s wall",
            o.requests,
            o.cpu_ms,
            o.cpu_ms / o.requests.max(1) as f64,
            o.wall.as_secs_f64()
        );
        for (m, n) in &o.by_method {
            println!("    {m:<40} {n}");
        }
    }
}
