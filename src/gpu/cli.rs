//! `comine gpu status [--json] [--watch]`: what the devices are doing, and from which source.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;

use super::{BackendChoice, Config, Snapshot};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: GpuCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum GpuCommand {
    /// Show GPU (or host CPU / simulated) telemetry.
    Status(StatusArgs),
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print JSON on stdout (one object per poll with --watch).
    #[arg(long)]
    pub json: bool,
    /// Keep polling until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Telemetry backend: auto, nvml, host or sim:PRESET[,PRESET...] (presets: rtx3060,
    /// rtx3090, rtx4090, a4000, a5000).
    #[arg(long, default_value = "auto", env = "COMINE_GPU_BACKEND")]
    pub backend: String,
    /// Poll interval in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub interval_ms: u64,
    /// Stop after this many polls with --watch (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Seed for the simulated backend.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        GpuCommand::Status(a) => status(a),
    }
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let choice: BackendChoice = a.backend.parse()?;
    let config = Config {
        backend: a.backend.clone(),
        poll_interval_ms: a.interval_ms,
        sim_seed: a.seed,
        ..Config::default()
    };
    let mut telemetry = super::open(&choice, &config).context("opening GPU telemetry")?;
    // Utilisation is a rate: the host backend needs two readings one interval apart.
    telemetry.poll();
    let interval = config.poll_interval();
    let mut n = 0u64;
    let stdout = std::io::stdout();
    loop {
        std::thread::sleep(interval);
        let snap = telemetry.poll();
        let mut out = stdout.lock();
        if a.json {
            let line = serde_json::to_string(&snap)?;
            writeln!(out, "{line}")?;
        } else {
            write!(out, "{}", render(&snap))?;
        }
        out.flush()?;
        n += 1;
        if !a.watch || (a.count > 0 && n >= a.count) {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into())
}

/// Human-readable table; the source is on the first line so nobody mistakes a simulation.
pub fn render(s: &Snapshot) -> String {
    let mut o = format!("source: {}  devices: {}\n", s.source, s.devices.len());
    for d in &s.devices {
        o += &format!(
            "[{}] {} ({}) {} driver {}\n",
            d.index,
            d.name,
            d.uuid,
            if d.healthy { "healthy" } else { "UNHEALTHY" },
            d.driver.as_deref().unwrap_or("-")
        );
        if let Some(e) = &d.error {
            o += &format!("    error: {e}\n");
        }
        if d.source == super::Source::Host {
            // A CPU: no encoder engine, no NVENC sessions, no GPU memory.
            o += &format!(
                "    cpu {}  memory {} / {} MiB  power {} W (RAPL)\n",
                pct(d.gpu_util_pct),
                opt(d.memory_used_bytes.map(|b| b >> 20), ""),
                opt(d.memory_total_bytes.map(|b| b >> 20), ""),
                opt(d.power_watts.map(|w| format!("{w:.1}")), ""),
            );
            if let Some(l) = d.load_avg {
                o += &format!(
                    "    load {:.2} {:.2} {:.2}  cores {}\n",
                    l[0],
                    l[1],
                    l[2],
                    opt(d.cpu_cores, "")
                );
            }
            continue;
        }
        o += &format!(
            "    util gpu {} mem {} enc {} dec {}  nvenc sessions {} fps {} latency {}\n",
            pct(d.gpu_util_pct),
            pct(d.mem_util_pct),
            pct(d.encoder_util_pct),
            pct(d.decoder_util_pct),
            opt(d.nvenc_sessions, ""),
            opt(d.nvenc_fps, ""),
            opt(d.nvenc_latency_us, "us"),
        );
        o += &format!(
            "    memory {} / {} MiB  power {} / {} W  energy {} J  temp {}  throttle [{}]\n",
            opt(d.memory_used_bytes.map(|b| b >> 20), ""),
            opt(d.memory_total_bytes.map(|b| b >> 20), ""),
            opt(d.power_watts.map(|w| format!("{w:.1}")), ""),
            opt(d.power_limit_watts.map(|w| format!("{w:.0}")), ""),
            opt(d.energy_joules.map(|j| format!("{j:.1}")), ""),
            opt(d.temperature_c, "C"),
            d.throttle_reasons.join(","),
        );
        if let Some(l) = d.load_avg {
            o += &format!(
                "    load {:.2} {:.2} {:.2}  cores {}\n",
                l[0],
                l[1],
                l[2],
                opt(d.cpu_cores, "")
            );
        }
        for p in &d.processes {
            o += &format!(
                "    pid {} {} ({:?}) sm {} enc {} dec {}\n",
                p.pid,
                p.name,
                p.role,
                opt(p.sm_pct, "%"),
                opt(p.enc_pct, "%"),
                opt(p.dec_pct, "%")
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{DeviceSnapshot, Source};

    #[test]
    fn a_cpu_host_is_not_shown_as_an_encoder() {
        let mut d = DeviceSnapshot::new(Source::Host, 0, "host".into(), "Xeon".into());
        d.gpu_util_pct = Some(100.0);
        d.encoder_util_pct = Some(100.0);
        let s = Snapshot {
            source: Source::Host,
            taken_at_ms: 0,
            devices: vec![d],
        };
        let out = render(&s);
        assert!(out.contains("cpu 100%"), "{out}");
        assert!(!out.contains("enc 100%") && !out.contains("nvenc"), "{out}");
    }
}
