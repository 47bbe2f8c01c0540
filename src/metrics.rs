//! The Prometheus registry the daemon serves on `/metrics` (OpenMetrics text).
//!
//! Names follow Prometheus conventions: `comine_` prefix, base units (seconds, watts,
//! ratios 0..1), `_total` on counters. GPU and sealing gauges are filled from the
//! scheduler boundary (`daemon::admission::Admission::status`) on each scrape.
//!
//! Unknown is not zero: a reading a backend cannot make is not exported at all, and a
//! CPU-only host has no `comine_gpu_*` series (its CPU is `comine_host_*`). GPU series carry
//! `gpu` (index), `uuid` and `model` labels, as dcgm-exporter's do.
//!
//! The speed figure is Livepeer's **duration ratio**: transcode time ÷ media time of a
//! segment, ≤ 0.8 healthy (what `livepeer_bench` prints). `comine_realtime_ratio` is its
//! inverse, kept for old dashboards.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProfileLabel {
    pub profile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabel {
    pub gpu: String,
    pub uuid: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrchLabel {
    pub orch: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiLabel {
    pub pipeline: String,
    pub model: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AiModelLabel {
    pub pipeline: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// One device's telemetry as the scheduler reports it (`/v1/status` `devices`). A reading
/// the backend could not make is `null`, never 0.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Where the reading came from: `nvml`, `host` or `simulated`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// 0..1
    pub utilization: Option<f64>,
    pub encoder_utilization: Option<f64>,
    pub decoder_utilization: Option<f64>,
    pub power_watts: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub encoder_sessions: Option<u64>,
    /// A proof (WindowPoSt/WinningPoSt) runs on this device now, as the scheduler sees it.
    pub proof_active: bool,
    /// Device memory, bytes (0 when the backend does not say); simulated on `sim`.
    #[serde(default)]
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub memory_used_bytes: u64,
}

impl GpuSample {
    /// A CPU standing in for a GPU (the `host` telemetry backend).
    pub fn is_host(&self) -> bool {
        self.source == "host"
    }
}

pub struct Metrics {
    registry: Registry,
    pub segments: Family<ResultLabel, Counter>,
    pub encoded_pixels: Family<ProfileLabel, Counter>,
    pub decoded_pixels: Counter,
    pub segment_latency: Histogram,
    pub realtime_ratio: FGauge,
    pub queue_depth: Gauge,
    pub jobs_running: Gauge,
    pub capacity: Gauge,
    pub store_errors: Counter,
    pub rejected: Counter,
    pub gpu_utilization: Family<GpuLabel, FGauge>,
    pub gpu_encoder_utilization: Family<GpuLabel, FGauge>,
    pub gpu_decoder_utilization: Family<GpuLabel, FGauge>,
    pub gpu_power: Family<GpuLabel, FGauge>,
    pub gpu_temperature: Family<GpuLabel, FGauge>,
    pub gpu_sessions: Family<GpuLabel, Gauge>,
    pub gpu_proof_active: Family<GpuLabel, Gauge>,
    pub host_cpu_utilization: FGauge,
    pub sealing_tasks: Family<StateLabel, Gauge>,
    pub post_seconds_to_next_window: FGauge,
    pub post_step_down_active: Gauge,
    pub post_source_state: Family<StateLabel, Gauge>,
    pub post_requests: Counter,
    /// Absent when no controller can confirm the sealing state (`controller = "none"`).
    pub sealing_paused: Family<ControllerLabel, Gauge>,
    /// Transcode time ÷ media time of the last segment (≤ 0.8 healthy).
    pub duration_ratio: FGauge,
    pub duration_ratio_hist: Histogram,
    /// Renditions that wanted NVENC (`encoder = "auto"` on a GPU host) and got libx264.
    pub encoder_fallbacks: Family<ReasonLabel, Counter>,
    /// Batch jobs stopped and requeued to give a proof its GPU memory or throughput back.
    pub jobs_preempted: Counter,
    pub proof_sources: Gauge,
    pub post_safe_profile: Gauge,
    pub backlog_drain_seconds: FGauge,
    /// Absent unless `comine run` attached to an orchestrator.
    pub livepeer_link_up: Family<OrchLabel, Gauge>,
    pub livepeer_capacity: Family<OrchLabel, Gauge>,
    pub livepeer_segments: Family<ResultLabel, Counter>,
    pub ai_jobs: Family<AiLabel, Counter>,
    pub ai_units: Family<AiModelLabel, Counter>,
    /// Today's (UTC) expected earnings, wei (saturates at 2⁶³ − 1, ≈ 9.2 ETH).
    pub earnings_gross_today_wei: Gauge,
    pub earnings_net_today_wei: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let m = Metrics {
            segments: Family::default(),
            encoded_pixels: Family::default(),
            decoded_pixels: Counter::default(),
            // 10 ms … ~41 s.
            segment_latency: Histogram::new(exponential_buckets(0.01, 2.0, 13)),
            realtime_ratio: FGauge::default(),
            queue_depth: Gauge::default(),
            jobs_running: Gauge::default(),
            capacity: Gauge::default(),
            store_errors: Counter::default(),
            rejected: Counter::default(),
            gpu_utilization: Family::default(),
            gpu_encoder_utilization: Family::default(),
            gpu_decoder_utilization: Family::default(),
            gpu_power: Family::default(),
            gpu_temperature: Family::default(),
            gpu_sessions: Family::default(),
            gpu_proof_active: Family::default(),
            host_cpu_utilization: FGauge::default(),
            sealing_tasks: Family::default(),
            post_seconds_to_next_window: FGauge::default(),
            post_step_down_active: Gauge::default(),
            post_source_state: Family::default(),
            post_requests: Counter::default(),
            sealing_paused: Family::default(),
            duration_ratio: FGauge::default(),
            duration_ratio_hist: Histogram::new([
                0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 4.0,
            ]),
            encoder_fallbacks: Family::default(),
            jobs_preempted: Counter::default(),
            proof_sources: Gauge::default(),
            post_safe_profile: Gauge::default(),
            backlog_drain_seconds: FGauge::default(),
            livepeer_link_up: Family::default(),
            livepeer_capacity: Family::default(),
            livepeer_segments: Family::default(),
            ai_jobs: Family::default(),
            ai_units: Family::default(),
            earnings_gross_today_wei: Gauge::default(),
            earnings_net_today_wei: Gauge::default(),
            registry: Registry::default(),
        };
        r.register(
            "comine_ai_jobs",
            "Livepeer AI jobs answered, by pipeline, model and result (ok or the failure reason)",
            m.ai_jobs.clone(),
        );
        r.register(
            "comine_ai_units",
            "Billing units of AI jobs done (Livepeer's: upscale = input width x height)",
            m.ai_units.clone(),
        );
        r.register(
            "comine_segments",
            "Segments finished, by result (ok, bad_input, failed, deadline)",
            m.segments.clone(),
        );
        r.register(
            "comine_encoded_pixels",
            "Encoded pixels (width x height x frames, what Livepeer pays for), by profile",
            m.encoded_pixels.clone(),
        );
        r.register(
            "comine_decoded_pixels",
            "Decoded input pixels",
            m.decoded_pixels.clone(),
        );
        r.register_with_unit(
            "comine_segment_latency",
            "Time from receipt to done, per segment",
            Unit::Seconds,
            m.segment_latency.clone(),
        );
        r.register(
            "comine_duration_ratio",
            "Transcode time / media time of the last segment (Livepeer's duration ratio; <= 0.8 is healthy)",
            m.duration_ratio.clone(),
        );
        r.register(
            "comine_segment_duration_ratio",
            "Transcode time / media time per segment (Livepeer's duration ratio; <= 0.8 is healthy)",
            m.duration_ratio_hist.clone(),
        );
        r.register(
            "comine_realtime_ratio",
            "Deprecated: 1 / comine_duration_ratio (media seconds per wall second of the last segment)",
            m.realtime_ratio.clone(),
        );
        r.register(
            "comine_queue_depth",
            "Accepted jobs waiting for a worker",
            m.queue_depth.clone(),
        );
        r.register(
            "comine_jobs_running",
            "Jobs transcoding or storing now",
            m.jobs_running.clone(),
        );
        r.register(
            "comine_capacity",
            "Concurrent jobs the scheduler allows now",
            m.capacity.clone(),
        );
        r.register(
            "comine_store_errors",
            "Failed attempts to store a rendition",
            m.store_errors.clone(),
        );
        r.register(
            "comine_intake_rejected",
            "Submissions refused with 503 because the queue was full",
            m.rejected.clone(),
        );
        r.register(
            "comine_gpu_utilization_ratio",
            "GPU SM utilisation (0..1)",
            m.gpu_utilization.clone(),
        );
        r.register(
            "comine_gpu_encoder_utilization_ratio",
            "NVENC utilisation (0..1)",
            m.gpu_encoder_utilization.clone(),
        );
        r.register(
            "comine_gpu_decoder_utilization_ratio",
            "NVDEC utilisation (0..1)",
            m.gpu_decoder_utilization.clone(),
        );
        r.register_with_unit(
            "comine_gpu_power",
            "GPU board power",
            Unit::Other("watts".into()),
            m.gpu_power.clone(),
        );
        r.register_with_unit(
            "comine_gpu_temperature",
            "GPU core temperature",
            Unit::Celsius,
            m.gpu_temperature.clone(),
        );
        r.register(
            "comine_gpu_encoder_sessions",
            "Open NVENC sessions",
            m.gpu_sessions.clone(),
        );
        r.register(
            "comine_gpu_proof_active",
            "1 while a proof (WindowPoSt/WinningPoSt) runs on this GPU",
            m.gpu_proof_active.clone(),
        );
        r.register(
            "comine_host_cpu_utilization_ratio",
            "Host CPU utilisation (0..1) on a host without GPU telemetry",
            m.host_cpu_utilization.clone(),
        );
        r.register(
            "comine_sealing_tasks",
            "Sealing task types by state (enabled, disabled) as the sealing controller last confirmed them; unknown when nothing can confirm",
            m.sealing_tasks.clone(),
        );
        // Registered without a unit: the name already ends where the unit suffix would go.
        r.register(
            "comine_post_seconds_to_next_window",
            "Seconds until the next WindowPoSt window with live sectors opens (-1: none known)",
            m.post_seconds_to_next_window.clone(),
        );
        r.register(
            "comine_post_step_down_active",
            "1 while transcoding on the proving GPUs is stepped down for a WindowPoSt window",
            m.post_step_down_active.clone(),
        );
        r.register(
            "comine_post_source_state",
            "The WindowPoSt schedule's source: 1 for the current state (ok, stale, down, off)",
            m.post_source_state.clone(),
        );
        r.register(
            "comine_post_requests",
            "Requests sent to the full node and lotus-miner for the WindowPoSt schedule",
            m.post_requests.clone(),
        );
        r.register(
            "comine_sealing_paused",
            "1 while comine has GPU sealing paused on the Filecoin node (absent with controller none)",
            m.sealing_paused.clone(),
        );
        r.register(
            "comine_encoder_fallbacks",
            "Renditions that wanted NVENC and were encoded with libx264 on the CPU, by reason",
            m.encoder_fallbacks.clone(),
        );
        r.register(
            "comine_jobs_preempted",
            "Batch jobs stopped and requeued to give a proof its GPU back",
            m.jobs_preempted.clone(),
        );
        r.register(
            "comine_proof_sources",
            "Proof sources configured (lotus-miner API, full node schedule, prover names or PIDs); 0 runs the PoSt-safe profile",
            m.proof_sources.clone(),
        );
        r.register(
            "comine_post_safe_profile",
            "1 while transcoding runs the PoSt-safe profile (no proof source, or no proving schedule)",
            m.post_safe_profile.clone(),
        );
        r.register_with_unit(
            "comine_backlog_drain",
            "Expected time to drain the queued jobs at the current capacity",
            Unit::Seconds,
            m.backlog_drain_seconds.clone(),
        );
        r.register(
            "comine_livepeer_link_up",
            "1 while registered with the Livepeer orchestrator",
            m.livepeer_link_up.clone(),
        );
        r.register(
            "comine_livepeer_capacity_sessions",
            "Livepeer sessions offered to the orchestrator now",
            m.livepeer_capacity.clone(),
        );
        r.register(
            "comine_livepeer_segments",
            "Livepeer segments by result (ok, failed, bad_input, deadline, not_accepted, duplicate, store_error)",
            m.livepeer_segments.clone(),
        );
        r.register(
            "comine_earnings_expected_today_gross_wei",
            "Expected earnings of today's (UTC) done jobs before the pool's cut, wei",
            m.earnings_gross_today_wei.clone(),
        );
        r.register(
            "comine_earnings_expected_today_net_wei",
            "Expected earnings of today's (UTC) done jobs after the pool model, wei",
            m.earnings_net_today_wei.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// Replaces the GPU series with `gpus` (vanished devices disappear). Host "devices" are
    /// not GPUs: only their CPU utilisation is exported, as `comine_host_*`. Readings a
    /// backend could not make are left out.
    pub fn set_gpus(&self, gpus: &[GpuSample]) {
        self.gpu_utilization.clear();
        self.gpu_encoder_utilization.clear();
        self.gpu_decoder_utilization.clear();
        self.gpu_power.clear();
        self.gpu_temperature.clear();
        self.gpu_sessions.clear();
        self.gpu_proof_active.clear();
        for g in gpus {
            if g.is_host() {
                if let Some(u) = g.utilization {
                    self.host_cpu_utilization.set(u);
                }
                continue;
            }
            let l = GpuLabel {
                gpu: g.index.to_string(),
                uuid: g.uuid.clone(),
                model: g.name.clone(),
            };
            let set = |f: &Family<GpuLabel, FGauge>, v: Option<f64>| {
                if let Some(v) = v {
                    f.get_or_create(&l).set(v);
                }
            };
            set(&self.gpu_utilization, g.utilization);
            set(&self.gpu_encoder_utilization, g.encoder_utilization);
            set(&self.gpu_decoder_utilization, g.decoder_utilization);
            set(&self.gpu_power, g.power_watts);
            set(&self.gpu_temperature, g.temperature_celsius);
            if let Some(n) = g.encoder_sessions {
                self.gpu_sessions.get_or_create(&l).set(n as i64);
            }
            self.gpu_proof_active
                .get_or_create(&l)
                .set(i64::from(g.proof_active));
        }
    }

    /// Renditions encoded with libx264 although NVENC was wanted; `reason` is
    /// `session_cap` or `nvenc_unavailable`.
    pub fn encoder_fallback(&self, reason: &str, renditions: u64) {
        if renditions > 0 {
            self.encoder_fallbacks
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc_by(renditions);
        }
    }

    /// The sealing state the controller last confirmed; `None` removes the series.
    pub fn set_sealing_paused(&self, controller: &str, paused: Option<bool>) {
        self.sealing_paused.clear();
        if let Some(p) = paused {
            self.sealing_paused
                .get_or_create(&ControllerLabel {
                    controller: controller.to_string(),
                })
                .set(i64::from(p));
        }
    }

    /// The Livepeer link as the client reports it: registered or not, sessions offered.
    pub fn set_livepeer(&self, orch: &str, registered: bool, capacity: u32) {
        let l = OrchLabel {
            orch: orch.to_string(),
        };
        self.livepeer_link_up
            .get_or_create(&l)
            .set(i64::from(registered));
        self.livepeer_capacity
            .get_or_create(&l)
            .set(i64::from(capacity));
    }

    pub fn livepeer_segment(&self, result: &str) {
        self.livepeer_segments
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// Sealing task types by state as the controller last confirmed them (`unknown` when
    /// nothing can confirm). A state absent now reads 0, never its last count.
    pub fn set_sealing(&self, states: &[(String, i64)]) {
        for state in ["enabled", "disabled", "unknown"] {
            if !states.iter().any(|(s, _)| s == state) {
                self.sealing_tasks
                    .get_or_create(&StateLabel {
                        state: state.to_string(),
                    })
                    .set(0);
            }
        }
        for (state, n) in states {
            self.sealing_tasks
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
    }

    /// The WindowPoSt gauges from the scheduler's report.
    pub fn set_post(&self, report: &crate::post::Report) {
        let p = &report.plan;
        self.post_seconds_to_next_window
            .set(p.seconds_to_next_window.unwrap_or(-1.0));
        self.post_step_down_active
            .set(i64::from(p.step_down_active));
        let current = report.source.gauge();
        for state in ["ok", "stale", "down", "off"] {
            self.post_source_state
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(i64::from(state == current));
        }
        let seen = self.post_requests.get();
        self.post_requests
            .inc_by(report.requests.saturating_sub(seen));
    }

    pub fn segment(&self, result: &str) {
        self.segments
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// A job reached `done`: its segment, pixels per profile, latency and realtime ratio.
    /// One place for HTTP jobs and Livepeer segments alike.
    /// One answered AI job (`result` is `ok` or the failure reason).
    pub fn ai_job(&self, pipeline: &str, model: &str, result: &str, units: u64) {
        self.ai_jobs
            .get_or_create(&AiLabel {
                pipeline: pipeline.into(),
                model: model.into(),
                result: result.into(),
            })
            .inc();
        if units > 0 {
            self.ai_units
                .get_or_create(&AiModelLabel {
                    pipeline: pipeline.into(),
                    model: model.into(),
                })
                .inc_by(units);
        }
    }

    pub fn job_done(&self, done: &crate::ledger::JobRecord, latency_secs: f64) {
        self.segment("ok");
        self.decoded_pixels.inc_by(done.decoded_pixels);
        for r in &done.renditions {
            self.encoded_pixels
                .get_or_create(&ProfileLabel {
                    profile: r.profile.clone(),
                })
                .inc_by(r.pixels);
        }
        self.segment_latency.observe(latency_secs);
        self.observe_speed(done.media_seconds, done.transcode_ms);
    }

    /// One segment's speed: the duration ratio (transcode ÷ media time) and its inverse.
    pub fn observe_speed(&self, media_seconds: f64, transcode_ms: u64) {
        if transcode_ms > 0 {
            self.realtime_ratio
                .set(media_seconds * 1000.0 / transcode_ms as f64);
        }
        if media_seconds > 0.0 {
            let ratio = transcode_ms as f64 / 1000.0 / media_seconds;
            self.duration_ratio.set(ratio);
            self.duration_ratio_hist.observe(ratio);
        }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, source: &str) -> GpuSample {
        GpuSample {
            index,
            uuid: format!("GPU-{index}"),
            name: "NVIDIA GeForce RTX 3090".into(),
            source: source.into(),
            ..GpuSample::default()
        }
    }

    #[test]
    fn names_follow_conventions() {
        let m = Metrics::new();
        m.segment("ok");
        m.encoded_pixels
            .get_or_create(&ProfileLabel {
                profile: "P240p30fps16x9".into(),
            })
            .inc_by(42);
        m.set_gpus(&[GpuSample {
            power_watts: Some(100.0),
            proof_active: true,
            ..gpu(0, "nvml")
        }]);
        m.encoder_fallback("session_cap", 2);
        m.livepeer_segment("ok");
        let text = m.encode();
        for needle in [
            "comine_segments_total{result=\"ok\"} 1",
            "comine_encoded_pixels_total{profile=\"P240p30fps16x9\"} 42",
            "comine_segment_latency_seconds_bucket",
            "comine_gpu_power_watts{gpu=\"0\",uuid=\"GPU-0\",model=\"NVIDIA GeForce RTX 3090\"} 100",
            "comine_gpu_proof_active{gpu=\"0\",uuid=\"GPU-0\",model=\"NVIDIA GeForce RTX 3090\"} 1",
            "comine_encoder_fallbacks_total{reason=\"session_cap\"} 2",
            "comine_livepeer_segments_total{result=\"ok\"} 1",
            "comine_queue_depth 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn windowpost_gauges_follow_the_report() {
        use crate::post::{Plan, Report, SourceState};
        let m = Metrics::new();
        let mut r = Report {
            configured: true,
            source: SourceState::Stale,
            requests: 7,
            plan: Plan {
                seconds_to_next_window: Some(90.0),
                step_down_active: true,
                ..Plan::default()
            },
            ..Report::default()
        };
        m.set_post(&r);
        r.requests = 12;
        r.source = SourceState::Ok;
        r.plan.step_down_active = false;
        r.plan.seconds_to_next_window = None;
        let first = m.encode();
        m.set_post(&r);
        let text = m.encode();
        assert!(first.contains("comine_post_step_down_active 1"), "{first}");
        assert!(
            first.contains("comine_post_seconds_to_next_window 90.0"),
            "{first}"
        );
        assert!(
            first.contains("comine_post_source_state{state=\"stale\"} 1"),
            "{first}"
        );
        for needle in [
            "comine_post_step_down_active 0",
            "comine_post_seconds_to_next_window -1.0",
            "comine_post_source_state{state=\"ok\"} 1",
            "comine_post_source_state{state=\"stale\"} 0",
            "comine_post_requests_total 12",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn sealing_states_report_what_is_confirmed_now() {
        let m = Metrics::new();
        m.set_sealing(&[("unknown".into(), 4)]);
        assert!(m
            .encode()
            .contains("comine_sealing_tasks{state=\"unknown\"} 4"));
        m.set_sealing(&[("enabled".into(), 3), ("disabled".into(), 1)]);
        let text = m.encode();
        for needle in [
            "comine_sealing_tasks{state=\"unknown\"} 0",
            "comine_sealing_tasks{state=\"enabled\"} 3",
            "comine_sealing_tasks{state=\"disabled\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn unknown_is_not_zero_and_a_cpu_is_not_a_gpu() {
        let m = Metrics::new();
        // A GPU whose power and temperature NVML cannot read: no series for them.
        m.set_gpus(&[GpuSample {
            utilization: Some(0.5),
            ..gpu(1, "nvml")
        }]);
        let text = m.encode();
        assert!(
            text.contains("comine_gpu_utilization_ratio{gpu=\"1\""),
            "{text}"
        );
        assert!(!text.contains("comine_gpu_power_watts{"), "{text}");
        assert!(!text.contains("comine_gpu_temperature_celsius{"), "{text}");
        // A CPU-only host: no comine_gpu_* series at all, its CPU under comine_host_*.
        let m = Metrics::new();
        m.set_gpus(&[GpuSample {
            utilization: Some(0.25),
            name: "host CPU".into(),
            ..gpu(0, "host")
        }]);
        let text = m.encode();
        assert!(
            !text.lines().any(|l| l.starts_with("comine_gpu_")),
            "a CPU exported as a GPU:\n{text}"
        );
        assert!(
            text.contains("comine_host_cpu_utilization_ratio 0.25"),
            "{text}"
        );
        // A device that vanished leaves no stale series behind.
        let m = Metrics::new();
        m.set_gpus(&[GpuSample {
            utilization: Some(0.1),
            ..gpu(0, "nvml")
        }]);
        m.set_gpus(&[]);
        assert!(!m.encode().contains("comine_gpu_utilization_ratio{"));
    }

    #[test]
    fn duration_ratio_is_transcode_time_over_media_time() {
        let m = Metrics::new();
        m.observe_speed(2.0, 1000);
        let text = m.encode();
        assert!(text.contains("comine_duration_ratio 0.5"), "{text}");
        assert!(text.contains("comine_realtime_ratio 2.0"), "{text}");
        assert!(
            text.contains("comine_segment_duration_ratio_bucket{le=\"0.5\"} 1"),
            "{text}"
        );
    }
}
