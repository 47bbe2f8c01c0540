//! The hardware fingerprint of a report: CPU, RAM, kernel, GPU and software versions, so
//! reports from different rigs can be told apart and compared.

use crate::report::schema::{Fingerprint, GpuInfo};

/// CPU, RAM, GPU and software versions for the report.
pub fn fingerprint(gpu: GpuInfo) -> Fingerprint {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let ram_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    Fingerprint {
        hostname: read("/proc/sys/kernel/hostname"),
        cpu_model,
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        ram_bytes,
        kernel: read("/proc/sys/kernel/osrelease"),
        gpu,
        comine_version: env!("CARGO_PKG_VERSION").to_string(),
        ffmpeg_version: crate::transcode::ffmpeg_version(),
        filecoin_proofs_api: if cfg!(feature = "seal-builtin") {
            "19.1.0".into()
        } else {
            "not built".into()
        },
    }
}
