//! The Prometheus registry the daemon serves on `/metrics` (OpenMetrics text).
//!
//! Names follow Prometheus conventions: `comine_` prefix, base units (seconds, watts,
//! ratios 0..1), `_total` on counters. GPU and sealing gauges are filled from the
//! scheduler boundary (`daemon::admission::Admission::status`) on each scrape.

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
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// One GPU's telemetry as the scheduler reports it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GpuSample {
    pub index: u32,
    pub name: String,
    /// Where the reading came from: `nvml`, `host` or `simulated`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// 0..1
    pub utilization: f64,
    pub encoder_utilization: f64,
    pub decoder_utilization: f64,
    pub power_watts: f64,
    pub temperature_celsius: f64,
    pub encoder_sessions: u64,
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
    pub sealing_tasks: Family<StateLabel, Gauge>,
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
            sealing_tasks: Family::default(),
            registry: Registry::default(),
        };
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
            "comine_realtime_ratio",
            "Media seconds per wall second of the last segment (above 1 is faster than real time)",
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
            "comine_sealing_tasks",
            "Sealing task types by state (enabled, disabled) as the scheduler steers them",
            m.sealing_tasks.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn set_gpus(&self, gpus: &[GpuSample]) {
        for g in gpus {
            let l = GpuLabel {
                gpu: g.index.to_string(),
            };
            self.gpu_utilization.get_or_create(&l).set(g.utilization);
            self.gpu_encoder_utilization
                .get_or_create(&l)
                .set(g.encoder_utilization);
            self.gpu_decoder_utilization
                .get_or_create(&l)
                .set(g.decoder_utilization);
            self.gpu_power.get_or_create(&l).set(g.power_watts);
            self.gpu_temperature
                .get_or_create(&l)
                .set(g.temperature_celsius);
            self.gpu_sessions
                .get_or_create(&l)
                .set(g.encoder_sessions as i64);
        }
    }

    pub fn set_sealing(&self, states: &[(String, i64)]) {
        for (state, n) in states {
            self.sealing_tasks
                .get_or_create(&StateLabel {
                    state: state.clone(),
                })
                .set(*n);
        }
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
        if done.transcode_ms > 0 {
            self.realtime_ratio
                .set(done.media_seconds * 1000.0 / done.transcode_ms as f64);
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
            index: 0,
            power_watts: 100.0,
            ..GpuSample::default()
        }]);
        let text = m.encode();
        for needle in [
            "comine_segments_total{result=\"ok\"} 1",
            "comine_encoded_pixels_total{profile=\"P240p30fps16x9\"} 42",
            "comine_segment_latency_seconds_bucket",
            "comine_gpu_power_watts{gpu=\"0\"} 100",
            "comine_queue_depth 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
