//! Host CPU telemetry from procfs, for hosts without an NVIDIA driver.
//!
//! On a CPU-only host sealing PC1 and libx264 compete for the same cores, so the scheduler still
//! needs a load signal: the host is reported as one device whose "GPU" and "encoder" utilisation
//! are the CPU utilisation, with memory from `/proc/meminfo`, load averages, and power from the
//! RAPL energy counters when `/sys/class/powercap` is readable.
//!
//! This is comine's one reader of host telemetry: `comine bench` samples the same [`Rapl`]
//! (every package domain, so two-socket hosts are counted whole) and [`HostCpu`].

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

/// Host-wide CPU busy share from `/proc/stat` deltas.
#[derive(Default)]
pub struct HostCpu {
    prev: Option<CpuTimes>,
}

impl HostCpu {
    /// Busy percentage of all cores since the last call (0 on the first call).
    pub fn sample(&mut self) -> Option<f64> {
        let text = fs::read_to_string("/proc/stat").ok()?;
        let (now, _) = parse_proc_stat(&text)?;
        let pct = self
            .prev
            .and_then(|prev| cpu_util_pct(prev, now))
            .unwrap_or(0.0);
        self.prev = Some(now);
        Some(pct)
    }
}

/// The RAPL energy counters of every CPU package (`intel-rapl:N` under
/// `/sys/class/powercap`, AMD's too), summed, with each counter's wrap-around handled.
pub struct Rapl {
    zones: Vec<RaplZone>,
}

struct RaplZone {
    path: PathBuf,
    max_uj: u64,
    last_uj: u64,
    total_uj: u128,
}

impl Rapl {
    /// Opens every readable package domain, or says why none could be read.
    pub fn open() -> Result<Rapl, String> {
        Self::open_at(Path::new("/sys/class/powercap"))
    }

    pub fn open_at(root: &Path) -> Result<Rapl, String> {
        let entries =
            fs::read_dir(root).map_err(|e| format!("{} unreadable ({e})", root.display()))?;
        let mut zones = Vec::new();
        let mut last_err = None;
        let mut names: Vec<_> = entries.flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for entry in names {
            let name = entry.file_name().to_string_lossy().to_string();
            // Package domains are `intel-rapl:N`; sub-domains (`intel-rapl:N:M`) are inside them.
            if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
                continue;
            }
            let path = entry.path().join("energy_uj");
            match read_u64(&path) {
                Ok(now) => {
                    let max_uj =
                        read_u64(&entry.path().join("max_energy_range_uj")).unwrap_or(u64::MAX);
                    zones.push(RaplZone {
                        path,
                        max_uj,
                        last_uj: now,
                        total_uj: 0,
                    });
                }
                Err(e) => last_err = Some(format!("{} unreadable ({e})", path.display())),
            }
        }
        if zones.is_empty() {
            return Err(
                last_err.unwrap_or_else(|| format!("no RAPL package domain in {}", root.display()))
            );
        }
        Ok(Rapl { zones })
    }

    /// Package domains read.
    pub fn packages(&self) -> usize {
        self.zones.len()
    }

    /// Joules all packages consumed since [`Rapl::open`]; `None` when a read fails.
    pub fn energy_joules(&mut self) -> Option<f64> {
        let mut total = 0u128;
        for z in &mut self.zones {
            let now = read_u64(&z.path).ok()?;
            let delta = if now >= z.last_uj {
                now - z.last_uj
            } else {
                // The counter wrapped at max_energy_range_uj.
                z.max_uj.saturating_sub(z.last_uj) + now
            };
            z.last_uj = now;
            z.total_uj += delta as u128;
            total += z.total_uj;
        }
        Some(total as f64 / 1e6)
    }
}

fn read_u64(path: &Path) -> std::io::Result<u64> {
    let s = fs::read_to_string(path)?;
    s.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e}")))
}

pub struct HostBackend {
    attribution: Attribution,
    prev_cpu: Option<CpuTimes>,
    model: String,
    rapl: Option<Rapl>,
    /// Energy and time of the last poll, for the power figure.
    last_energy: Option<(f64, Instant)>,
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
        let rapl = match Rapl::open_at(powercap) {
            Ok(r) => Some(r),
            Err(why) => {
                tracing::debug!(%why, "RAPL energy counter not readable; host power is not reported");
                None
            }
        };
        HostBackend {
            attribution,
            prev_cpu: None,
            model,
            rapl,
            last_energy: None,
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
        if let Some(joules) = self.rapl.as_mut().and_then(Rapl::energy_joules) {
            let now = Instant::now();
            if let Some((prev, at)) = self.last_energy {
                let dt = now.duration_since(at).as_secs_f64();
                if dt > 0.0 {
                    d.power_watts = Some((joules - prev).max(0.0) / dt);
                }
            }
            self.last_energy = Some((joules, now));
            d.energy_joules = Some(joules);
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

    #[test]
    fn rapl_sums_every_package_and_handles_wrap_around() {
        let dir = tempfile::tempdir().unwrap();
        let cap = dir.path();
        for (zone, uj) in [
            ("intel-rapl:0", "1000000"),
            ("intel-rapl:1", "5000000"),
            // A sub-domain (core) of package 0: already inside the package's figure.
            ("intel-rapl:0:0", "7000000"),
        ] {
            fs::create_dir_all(cap.join(zone)).unwrap();
            fs::write(cap.join(zone).join("energy_uj"), uj).unwrap();
            fs::write(cap.join(zone).join("max_energy_range_uj"), "10000000").unwrap();
        }
        let mut r = Rapl::open_at(cap).unwrap();
        assert_eq!(r.packages(), 2);
        fs::write(cap.join("intel-rapl:0/energy_uj"), "2000000").unwrap();
        // Package 1 wraps: 5 J → 10 J (max) → 1 J is 6 J.
        fs::write(cap.join("intel-rapl:1/energy_uj"), "1000000").unwrap();
        fs::write(cap.join("intel-rapl:0:0/energy_uj"), "9000000").unwrap();
        assert_eq!(r.energy_joules(), Some(7.0));
        assert!(Rapl::open_at(&cap.join("missing")).is_err());
    }
}
