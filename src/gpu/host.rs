//! Host CPU telemetry from procfs, for hosts without an NVIDIA driver.
//!
//! On a CPU-only host sealing PC1 and libx264 compete for the same cores, so the scheduler still
//! needs a load signal: the host is reported as one device whose "GPU" and "encoder" utilisation
//! are the CPU utilisation, with memory from `/proc/meminfo`, load averages, and power from the
//! RAPL energy counter when `/sys/class/powercap` is readable.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{Attribution, DeviceSnapshot, ProcessUse, Role, Snapshot, Source};

/// Jiffies from the aggregate `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Parses the first (`cpu `) line of `/proc/stat` and counts the `cpuN` lines.
pub fn parse_proc_stat(text: &str) -> Option<(CpuTimes, u32)> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let vals: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
    if vals.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is already inside user).
    let total: u64 = vals.iter().take(8).sum();
    let idle = vals[3] + vals.get(4).copied().unwrap_or(0);
    let cores = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Some((
        CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        },
        cores,
    ))
}

/// Utilisation in percent between two readings; `None` when no time passed.
pub fn cpu_util_pct(prev: CpuTimes, now: CpuTimes) -> Option<f64> {
    let dt = now.total.checked_sub(prev.total)?;
    if dt == 0 {
        return None;
    }
    let db = now.busy.saturating_sub(prev.busy);
    Some((db as f64 / dt as f64 * 100.0).clamp(0.0, 100.0))
}

/// `(total, used)` bytes from `/proc/meminfo` (used = MemTotal − MemAvailable).
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut avail = None;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let key = it.next();
        let kib: Option<u64> = it.next().and_then(|v| v.parse().ok());
        match key {
            Some("MemTotal:") => total = kib,
            Some("MemAvailable:") => avail = kib,
            _ => {}
        }
    }
    let (t, a) = (total?, avail?);
    Some((t * 1024, t.saturating_sub(a) * 1024))
}

/// The three load averages from `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<[f64; 3]> {
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

struct Rapl {
    energy_path: PathBuf,
    max_uj: u64,
    last: Option<(u64, Instant)>,
    total_j: f64,
}

pub struct HostBackend {
    attribution: Attribution,
    prev_cpu: Option<CpuTimes>,
    model: String,
    rapl: Option<Rapl>,
    proc_root: PathBuf,
}

impl HostBackend {
    pub fn new(attribution: Attribution) -> Self {
        Self::with_roots(
            attribution,
            Path::new("/proc"),
            Path::new("/sys/class/powercap"),
        )
    }

    /// Reads from other roots (tests use fixture directories).
    pub fn with_roots(attribution: Attribution, proc_root: &Path, powercap: &Path) -> Self {
        let model = fs::read_to_string(proc_root.join("cpuinfo"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "host CPU".into());
        let rapl_dir = powercap.join("intel-rapl:0");
        let rapl = fs::read_to_string(rapl_dir.join("energy_uj"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|_| Rapl {
                energy_path: rapl_dir.join("energy_uj"),
                max_uj: fs::read_to_string(rapl_dir.join("max_energy_range_uj"))
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(u64::MAX),
                last: None,
                total_j: 0.0,
            });
        if rapl.is_none() {
            tracing::debug!("RAPL energy counter not readable; host power is not reported");
        }
        HostBackend {
            attribution,
            prev_cpu: None,
            model,
            rapl,
            proc_root: proc_root.to_path_buf(),
        }
    }

    pub fn poll(&mut self) -> Snapshot {
        let mut snap = Snapshot::empty(Source::Host);
        let mut d = DeviceSnapshot::new(Source::Host, 0, "host".into(), self.model.clone());
        match fs::read_to_string(self.proc_root.join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_proc_stat)
        {
            Some((times, cores)) => {
                d.cpu_cores = Some(cores);
                if let Some(prev) = self.prev_cpu {
                    d.gpu_util_pct = cpu_util_pct(prev, times);
                    // libx264 and PC1 share the cores: the "encoder" is the CPU.
                    d.encoder_util_pct = d.gpu_util_pct;
                }
                self.prev_cpu = Some(times);
            }
            None => d.error = Some("cannot read /proc/stat".into()),
        }
        if let Some((total, used)) = fs::read_to_string(self.proc_root.join("meminfo"))
            .ok()
            .as_deref()
            .and_then(parse_meminfo)
        {
            d.memory_total_bytes = Some(total);
            d.memory_used_bytes = Some(used);
            d.mem_util_pct = Some(used as f64 / total.max(1) as f64 * 100.0);
        }
        d.load_avg = fs::read_to_string(self.proc_root.join("loadavg"))
            .ok()
            .as_deref()
            .and_then(parse_loadavg);
        if let Some(r) = self.rapl.as_mut() {
            if let Some(uj) = fs::read_to_string(&r.energy_path)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                let now = Instant::now();
                if let Some((prev, at)) = r.last {
                    // The counter wraps at max_energy_range_uj.
                    let delta = if uj >= prev {
                        uj - prev
                    } else {
                        r.max_uj.saturating_sub(prev) + uj
                    };
                    r.total_j += delta as f64 / 1e6;
                    let dt = now.duration_since(at).as_secs_f64();
                    if dt > 0.0 {
                        d.power_watts = Some(delta as f64 / 1e6 / dt);
                    }
                }
                r.last = Some((uj, now));
                d.energy_joules = Some(r.total_j);
            }
        }
        d.processes = self.proof_processes();
        snap.devices.push(d);
        snap
    }

    /// Configured proof processes that are alive. Scanning all of /proc costs CPU, so it only
    /// happens when proof process names are configured.
    fn proof_processes(&self) -> Vec<ProcessUse> {
        let mut out = Vec::new();
        let mk = |pid: u32, name: String| ProcessUse {
            pid,
            name,
            role: Role::Proof,
            sm_pct: None,
            enc_pct: None,
            dec_pct: None,
            memory_bytes: None,
        };
        for &pid in &self.attribution.proof_pids {
            if let Ok(name) = fs::read_to_string(self.proc_root.join(format!("{pid}/comm"))) {
                out.push(mk(pid, name.trim().to_string()));
            }
        }
        if self.attribution.proof_process_names.is_empty() {
            return out;
        }
        let Ok(entries) = fs::read_dir(&self.proc_root) else {
            return out;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if out.iter().any(|p| p.pid == pid) {
                continue;
            }
            if let Ok(name) = fs::read_to_string(e.path().join("comm")) {
                let name = name.trim().to_string();
                if self.attribution.classify(pid, &name) == Role::Proof {
                    out.push(mk(pid, name));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_parses_totals_and_cores() {
        let t = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\ncpu1 50 0 25 400 25 0 0 0 0 0\nintr 1\n";
        let (times, cores) = parse_proc_stat(t).unwrap();
        assert_eq!(cores, 2);
        assert_eq!(times.total, 1000);
        assert_eq!(times.busy, 150);
        let later = CpuTimes {
            busy: 250,
            total: 1200,
        };
        assert_eq!(cpu_util_pct(times, later), Some(50.0));
        assert_eq!(cpu_util_pct(times, times), None);
    }

    #[test]
    fn bad_proc_files_give_none_not_panics() {
        assert!(parse_proc_stat("").is_none());
        assert!(parse_proc_stat("intr 1 2 3").is_none());
        assert!(parse_proc_stat("cpu x y").is_none());
        assert!(parse_meminfo("MemTotal: abc kB").is_none());
        assert!(parse_loadavg("0.1 nope").is_none());
    }

    #[test]
    fn meminfo_and_loadavg() {
        let m = "MemTotal:       1000 kB\nMemFree: 10 kB\nMemAvailable:    250 kB\n";
        assert_eq!(parse_meminfo(m), Some((1000 * 1024, 750 * 1024)));
        assert_eq!(
            parse_loadavg("0.50 1.00 2.25 1/100 42"),
            Some([0.5, 1.0, 2.25])
        );
    }

    #[test]
    fn host_backend_reads_fixture_and_rapl() {
        let dir = tempfile::tempdir().unwrap();
        let proc_root = dir.path().join("proc");
        let cap = dir.path().join("powercap");
        fs::create_dir_all(&proc_root).unwrap();
        fs::create_dir_all(cap.join("intel-rapl:0")).unwrap();
        fs::write(
            proc_root.join("stat"),
            "cpu 10 0 0 90 0 0 0 0\ncpu0 10 0 0 90\n",
        )
        .unwrap();
        fs::write(
            proc_root.join("meminfo"),
            "MemTotal: 100 kB\nMemAvailable: 50 kB\n",
        )
        .unwrap();
        fs::write(proc_root.join("loadavg"), "1.0 2.0 3.0 1/1 1\n").unwrap();
        fs::write(cap.join("intel-rapl:0/energy_uj"), "1000000\n").unwrap();
        let mut b = HostBackend::with_roots(Attribution::default(), &proc_root, &cap);
        let s1 = b.poll();
        assert_eq!(s1.source, Source::Host);
        assert_eq!(s1.devices[0].source, Source::Host);
        assert_eq!(s1.devices[0].gpu_util_pct, None, "first poll has no delta");
        fs::write(
            proc_root.join("stat"),
            "cpu 60 0 0 140 0 0 0 0\ncpu0 60 0 0 140\n",
        )
        .unwrap();
        fs::write(cap.join("intel-rapl:0/energy_uj"), "3000000\n").unwrap();
        let s2 = b.poll();
        let d = &s2.devices[0];
        assert_eq!(d.gpu_util_pct, Some(50.0));
        assert_eq!(d.encoder_util_pct, Some(50.0));
        assert_eq!(d.memory_used_bytes, Some(50 * 1024));
        assert_eq!(d.load_avg, Some([1.0, 2.0, 3.0]));
        assert_eq!(d.energy_joules, Some(2.0));
        assert!(d.power_watts.is_some());
    }
}
