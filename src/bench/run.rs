//! The suite runner: idle → seal only → transcode step-up → AI upscale (alone, then
//! beside sealing; skipped with its reason when there is no model) → combined (steered and
//! unsteered), one method per phase, with a sampler thread tagging every sample with the
//! current phase. The output directory's checks are in [`super::out_dir`], the hardware
//! fingerprint in [`super::fingerprint`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::analyze::{self, Inputs};
use super::fingerprint::fingerprint;
use super::load::{self, PixelCounters, SegmentRecord, Segments, Window};
use super::out_dir::{check_out_dir, needed_bytes};
use super::sampler::{self, GpuSampler, HostCpu, LoadHint, PowerSampler, RaplSampler};
use super::steering::{Action, SchedSteering, Steering};
use super::suite::Suite;
use super::workload::{SealEvent, SealMode, SealRunner};
use crate::report::schema::{
    AiPhaseReport, BenchReport, Fingerprint, GpuInfo, PowerSources, RunConfig, Sample,
    SteeringEvent, WindowSpan, SCHEMA_ID, SCHEMA_VERSION,
};
use crate::transcode::{EncoderChoice, Profile};

/// Why the suite could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("output directory {path} is not usable: {why}")]
    OutDir { path: String, why: String },
    #[error("output directory {path} already holds a report (report.json); pick another --out or remove it")]
    OutDirTaken { path: String },
    #[error("output directory {path} has {free_mib} MiB free; this suite needs about {need_mib} MiB (sealing scratch for {sector} sectors plus segments); free space or pick another --out")]
    OutDirFull {
        path: String,
        free_mib: u64,
        need_mib: u64,
        sector: String,
    },
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("transcode ladder: {0}")]
    Ladder(String),
    #[error("transcode.encoder: {0}")]
    Encoder(String),
    #[error("cannot start the sealing workload: {0}")]
    Seal(std::io::Error),
}

/// Everything a run needs. The two sampler fields are the seam for the `gpu` module.
pub struct RunOptions {
    pub suite: Suite,
    pub suite_text: String,
    pub out: PathBuf,
    pub seal: SealMode,
    pub input: Option<PathBuf>,
    pub progress: bool,
    pub cancel: CancellationToken,
    /// GPU telemetry; `None` uses [`default_gpu_sampler`].
    pub gpu: Option<Box<dyn GpuSampler>>,
    /// Host energy; `None` tries RAPL.
    pub power: Option<Box<dyn PowerSampler>>,
}

/// NVML when a driver and a GPU answer; otherwise the labelled simulation, and the
/// report says so on every figure it feeds.
pub fn default_gpu_sampler() -> Box<dyn GpuSampler> {
    gpu_sampler(sampler::SimSampler::DEFAULT_PRESET, Duration::from_secs(1))
        .unwrap_or_else(|_| Box::new(sampler::NoGpu))
}

/// NVML when a driver and a GPU answer, else the `gpu::sim` preset `sim_preset`
/// (an unknown preset is an error naming the valid ones).
pub fn gpu_sampler(sim_preset: &str, step: Duration) -> Result<Box<dyn GpuSampler>, String> {
    match sampler::NvmlGpu::open() {
        Ok(nvml) => Ok(Box::new(nvml)),
        Err(why) => {
            let sim = sampler::SimSampler::preset(sim_preset, step).map_err(|e| e.to_string())?;
            tracing::info!(reason = %why, preset = sim_preset, "no NVML GPU; GPU figures in this report are simulated");
            Ok(Box::new(sim))
        }
    }
}

/// What the sampler tags samples with.
#[derive(Clone)]
struct Tag {
    phase: String,
    rep: u32,
    streams: u32,
    seal_pid: Option<u32>,
    sealing: &'static str,
}

struct Shared {
    tag: Mutex<Tag>,
    samples: Mutex<Vec<Sample>>,
    stop: AtomicBool,
}

impl Shared {
    fn set(&self, f: impl FnOnce(&mut Tag)) {
        if let Ok(mut t) = self.tag.lock() {
            f(&mut t);
        }
    }
}

/// Run the whole suite and return the report (files are written by the caller).
pub fn run(mut opts: RunOptions) -> Result<BenchReport, BenchError> {
    let mut run = Run::prepare(&mut opts)?;
    run.idle_phase();
    let sealing = opts.seal != SealMode::None;
    if sealing && !run.cancel.is_cancelled() {
        run.seal_phase(&opts.seal)?;
    }
    let streams = run.transcode_phase();
    if !run.cancel.is_cancelled() {
        run.ai = run.ai_phase(&opts.seal, sealing)?;
    }
    if sealing {
        run.combined_phase(&opts.seal, streams)?;
    }
    Ok(run.finish(&opts, sealing))
}

/// One run in progress: what every phase shares, and what they have measured so far.
struct Run {
    suite: Suite,
    clock: Instant,
    created: u64,
    work: PathBuf,
    cancel: CancellationToken,
    pb: ProgressBar,
    shared: Arc<Shared>,
    counters: Arc<PixelCounters>,
    sampler_thread: std::thread::JoinHandle<()>,
    cpu_power_label: String,
    gpu_info: GpuInfo,
    fingerprint: Fingerprint,
    segments: Segments,
    profiles: Vec<Profile>,
    encoder: EncoderChoice,
    encoder_note: Option<String>,
    seal_events: Arc<Mutex<Vec<SealEvent>>>,
    steering_log: Arc<Mutex<Vec<SteeringEvent>>>,
    windows: Vec<WindowSpan>,
    segs_all: Vec<SegmentRecord>,
    policy_name: String,
    ai: AiPhaseReport,
}

impl Run {
    /// Checks the output directory and the ladder, opens the samplers, prepares the
    /// segments, probes the encoder and starts the sampler thread.
    fn prepare(opts: &mut RunOptions) -> Result<Run, BenchError> {
        let suite = opts.suite.clone();
        check_out_dir(&opts.out, needed_bytes(&suite, &opts.seal)).map_err(|e| match e {
            BenchError::OutDirFull {
                path,
                free_mib,
                need_mib,
                ..
            } => BenchError::OutDirFull {
                path,
                free_mib,
                need_mib,
                sector: suite.seal.sector_size.clone(),
            },
            e => e,
        })?;
        let profiles = Profile::parse_list(&suite.transcode.ladder)
            .map_err(|e| BenchError::Ladder(e.to_string()))?;
        // Validated with the suite; a suite built in code gets the same refusal here.
        let encoder =
            EncoderChoice::parse(&suite.transcode.encoder).map_err(BenchError::Encoder)?;
        let work = opts.out.join("work");
        let _ = std::fs::remove_dir_all(&work);
        let clock = Instant::now();
        let created = crate::util::now_ms() / 1000;

        let (power_sampler, cpu_power_label): (Option<Box<dyn PowerSampler>>, String) =
            match opts.power.take() {
                Some(p) => {
                    let l = p.source().to_string();
                    (Some(p), l)
                }
                None => match RaplSampler::open() {
                    Ok(r) => (Some(Box::new(r) as Box<dyn PowerSampler>), "rapl".into()),
                    Err(why) => (None, format!("not measured: {why}")),
                },
            };
        let gpu_sampler = opts.gpu.take().unwrap_or_else(default_gpu_sampler);
        let gpu_info = gpu_sampler.info();
        let fingerprint = fingerprint(gpu_info.clone());

        let pb = progress_bar(&suite, opts.progress);
        pb.set_message("preparing segments");
        let segments: Segments = match &opts.input {
            Some(p) => load::from_input(p, &suite.transcode, &work.join("segments"))?,
            None => load::generate(&suite.transcode, &work.join("segments"))?,
        };

        // Probe the encoder once: under `auto` without NVENC every segment would otherwise
        // retry NVENC and log the fallback; the probe also warms FFmpeg up before measuring.
        let (encoder, encoder_note) = probe_encoder(encoder, &segments, &profiles, &suite, &work);

        let shared = Arc::new(Shared {
            tag: Mutex::new(Tag {
                phase: "between".into(),
                rep: 0,
                streams: 0,
                seal_pid: None,
                sealing: "off",
            }),
            samples: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let counters = Arc::new(PixelCounters::default());
        let sampler_thread = spawn_sampler(
            shared.clone(),
            counters.clone(),
            power_sampler,
            gpu_sampler,
            Duration::from_millis(suite.sample_interval_ms),
            clock,
            pb.clone(),
        );
        Ok(Run {
            suite,
            clock,
            created,
            work,
            cancel: opts.cancel.clone(),
            pb,
            shared,
            counters,
            sampler_thread,
            cpu_power_label,
            gpu_info,
            fingerprint,
            segments,
            profiles,
            encoder,
            encoder_note,
            seal_events: Arc::new(Mutex::new(Vec::new())),
            steering_log: Arc::new(Mutex::new(Vec::new())),
            windows: Vec::new(),
            segs_all: Vec::new(),
            policy_name: String::new(),
            ai: AiPhaseReport::default(),
        })
    }

    fn now_s(&self) -> f64 {
        self.clock.elapsed().as_secs_f64()
    }

    /// Waits `secs` tagged as `phase`/`rep` and records the window.
    fn timed_window(&mut self, phase: &str, rep: u32, secs: f64) {
        self.shared.set(|t| {
            t.phase = phase.into();
            t.rep = rep;
        });
        let start = self.now_s();
        sleep(&self.cancel, Duration::from_secs_f64(secs));
        self.windows.push(WindowSpan {
            phase: phase.into(),
            rep,
            start_s: start,
            end_s: self.now_s(),
            streams: 0,
        });
    }

    /// Phase 1: the idle baseline.
    fn idle_phase(&mut self) {
        let idle = self.suite.phases.idle.clone();
        for rep in 0..idle.repeats {
            self.pb
                .set_prefix(format!("idle {}/{}", rep + 1, idle.repeats));
            self.timed_window("idle", rep, idle.seconds);
        }
        self.shared.set(|t| t.phase = "between".into());
    }

    fn start_sealing(&self, seal: &SealMode) -> Result<SealRunner, BenchError> {
        SealRunner::start(
            seal,
            &self.suite.seal.sector_size,
            &self.work.join("seal"),
            self.clock,
            self.seal_events.clone(),
        )
        .map_err(BenchError::Seal)
    }

    /// The AI phase: the upscale model alone, then beside sealing (when the suite seals).
    fn ai_phase(&mut self, seal: &SealMode, sealing: bool) -> Result<AiPhaseReport, BenchError> {
        self.pb.set_prefix("AI upscale");
        let bench = match super::ai::AiBench::prepare(self.suite.ai.as_ref()) {
            Ok(b) => b,
            Err(why) => {
                tracing::info!(reason = %why, "AI phase skipped");
                return Ok(super::ai::skipped(why));
            }
        };
        let secs = self.suite.ai.as_ref().map(|a| a.seconds).unwrap_or(1.0);
        let mut report = bench.report();
        self.shared.set(|t| t.phase = "ai".into());
        let alone = bench.window(secs, &self.cancel);
        self.shared.set(|t| t.phase = "between".into());
        let alone = match alone {
            Ok(f) => f,
            Err(why) => return Ok(super::ai::skipped(why)),
        };
        if sealing && !self.cancel.is_cancelled() {
            let runner = self.start_sealing(seal)?;
            self.shared.set(|t| {
                t.seal_pid = runner.pid();
                t.sealing = "running";
                t.phase = "ai_seal".into();
            });
            let with = bench.window(secs, &self.cancel);
            self.shared.set(|t| {
                t.phase = "between".into();
                t.sealing = "off";
                t.seal_pid = None;
            });
            runner.stop();
            if let Ok(w) = with {
                report.with_seal_ratio = Some(w.frames_per_s / alone.frames_per_s.max(1e-12));
                report.with_seal = Some(w);
            }
        }
        report.alone = Some(alone);
        Ok(report)
    }

    /// Phase 2: sealing alone, after a warm-up of one whole sector.
    fn seal_phase(&mut self, seal: &SealMode) -> Result<(), BenchError> {
        let runner = self.start_sealing(seal)?;
        self.shared.set(|t| {
            t.seal_pid = runner.pid();
            t.sealing = "running";
            t.phase = "seal_warmup".into();
        });
        // Warm-up: seal until one whole sector is done (SDR parent cache, page cache,
        // and the per-phase times that weight partial progress), capped at 4 windows.
        self.pb.set_prefix("seal warm-up (one sector)");
        let start = self.now_s();
        let cap = Instant::now() + Duration::from_secs_f64(4.0 * self.suite.phases.seal.seconds);
        let sectors_done = || {
            self.seal_events
                .lock()
                .map(|ev| {
                    ev.iter().any(|e| {
                        e.kind == "sector"
                            || e.kind == "run"
                            || e.kind == "job"
                            || e.kind == "failed"
                    })
                })
                .unwrap_or(true)
        };
        while !self.cancel.is_cancelled() && Instant::now() < cap && !sectors_done() {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.windows.push(WindowSpan {
            phase: "seal_warmup".into(),
            rep: 0,
            start_s: start,
            end_s: self.now_s(),
            streams: 0,
        });
        let phase = self.suite.phases.seal.clone();
        for rep in 0..phase.repeats {
            self.pb
                .set_prefix(format!("seal {}/{}", rep + 1, phase.repeats));
            self.shared.set(|t| t.seal_pid = runner.pid());
            self.timed_window("seal", rep, phase.seconds);
        }
        self.shared.set(|t| {
            t.phase = "between".into();
            t.sealing = "off";
            t.seal_pid = None;
        });
        runner.stop();
        Ok(())
    }

    /// Runs `streams` live streams for `secs`, tagged as `phase`/`rep`.
    fn load_window(
        &self,
        phase: &str,
        rep: u32,
        streams: u32,
        secs: f64,
        on_done: &(dyn Fn(&SegmentRecord) + Sync),
    ) -> (WindowSpan, Vec<SegmentRecord>) {
        self.shared.set(|t| {
            t.phase = phase.to_string();
            t.rep = rep;
            t.streams = streams;
        });
        let start = self.now_s();
        let w = Window {
            phase,
            rep,
            streams,
            duration: Duration::from_secs_f64(secs),
            segments: &self.segments,
            profiles: &self.profiles,
            encoder: self.encoder,
            x264_preset: &self.suite.transcode.x264_preset,
            work_dir: &self.work.join("transcode"),
            clock: self.clock,
            cancel: &self.cancel,
            counters: &self.counters,
        };
        let recs = load::run_window(&w, on_done);
        let span = WindowSpan {
            phase: phase.to_string(),
            rep,
            start_s: start,
            end_s: self.now_s(),
            streams,
        };
        self.shared.set(|t| {
            t.phase = "between".into();
            t.streams = 0;
        });
        (span, recs)
    }

    /// Phase 3: transcoding alone, stepping streams up until the realtime ratio passes the
    /// target, then repeating at the last stream count that held. Returns that count.
    fn transcode_phase(&mut self) -> u32 {
        let tp = self.suite.phases.transcode.clone();
        let mut best = 0u32;
        for n in 1..=tp.max_streams {
            if self.cancel.is_cancelled() {
                break;
            }
            self.pb.set_prefix(format!("transcode step {n} streams"));
            let (span, recs) = self.load_window("transcode_step", n, n, tp.step_seconds, &|_| {});
            let ok: Vec<f64> = recs
                .iter()
                .filter(|r| r.error.is_none())
                .map(|r| r.ratio)
                .collect();
            let ratio = if ok.is_empty() {
                f64::INFINITY
            } else {
                ok.iter().sum::<f64>() / ok.len() as f64
            };
            if let Some(err) = recs
                .iter()
                .find_map(|r| r.error.clone())
                .filter(|_| ok.is_empty())
            {
                tracing::warn!("transcoding failed at {n} streams: {err}");
            }
            self.windows.push(span);
            self.segs_all.extend(recs);
            self.pb
                .set_message(format!("{n} streams: realtime ratio {ratio:.2}"));
            if ratio <= tp.target_ratio {
                best = n;
            } else {
                break;
            }
        }
        let streams = best.max(1);
        for rep in 0..tp.repeats {
            if self.cancel.is_cancelled() {
                break;
            }
            self.pb.set_prefix(format!(
                "transcode {streams} streams {}/{}",
                rep + 1,
                tp.repeats
            ));
            let (span, recs) =
                self.load_window("transcode", rep, streams, tp.step_seconds, &|_| {});
            self.windows.push(span);
            self.segs_all.extend(recs);
        }
        streams
    }

    /// Phase 4: sealing and `streams` live streams together, steered then unsteered.
    fn combined_phase(&mut self, seal: &SealMode, streams: u32) -> Result<(), BenchError> {
        for steered in [true, false] {
            if self.cancel.is_cancelled() {
                break;
            }
            self.combined_window(seal, streams, steered)?;
        }
        Ok(())
    }

    fn combined_window(
        &mut self,
        seal: &SealMode,
        streams: u32,
        steered: bool,
    ) -> Result<(), BenchError> {
        let phase: &'static str = if steered {
            "combined_steered"
        } else {
            "combined_unsteered"
        };
        let runner = self.start_sealing(seal)?;
        let steer_on = steered && seal.steerable();
        let cp = self.suite.phases.combined.clone();
        let policy: Mutex<Box<dyn Steering>> = Mutex::new(Box::new(SchedSteering::new(
            cp.pause_above,
            cp.resume_below,
            cp.sustain_ms,
            cp.min_dwell_ms,
        )));
        if steer_on {
            self.policy_name = policy
                .lock()
                .map(|p| p.name().to_string())
                .unwrap_or_default();
        }
        let recent: Mutex<VecDeque<f64>> = Mutex::new(VecDeque::new());
        self.shared.set(|t| {
            t.seal_pid = runner.pid();
            t.sealing = "running";
        });
        for rep in 0..cp.repeats {
            if self.cancel.is_cancelled() {
                break;
            }
            self.pb
                .set_prefix(format!("{phase} {}/{}", rep + 1, cp.repeats));
            self.shared.set(|t| t.seal_pid = runner.pid());
            let on_done = |r: &SegmentRecord| {
                if !steer_on || r.error.is_some() {
                    return;
                }
                let avg = {
                    let Ok(mut q) = recent.lock() else { return };
                    q.push_back(r.ratio);
                    while q.len() > streams.max(2) as usize {
                        q.pop_front();
                    }
                    q.iter().sum::<f64>() / q.len() as f64
                };
                let (action, reason) = policy
                    .lock()
                    .map(|mut p| (p.on_tick(avg), p.last_reason()))
                    .unwrap_or((Action::None, None));
                let label = match action {
                    Action::None => return,
                    Action::PauseSealing => {
                        runner.pause();
                        self.shared.set(|t| t.sealing = "paused");
                        "pause_sealing"
                    }
                    Action::ResumeSealing => {
                        runner.resume();
                        self.shared.set(|t| t.sealing = "running");
                        "resume_sealing"
                    }
                };
                if let Ok(mut log) = self.steering_log.lock() {
                    log.push(SteeringEvent {
                        t_s: self.now_s(),
                        action: label.into(),
                        realtime_ratio: avg,
                        reason,
                    });
                }
            };
            let (span, recs) = self.load_window(phase, rep, streams, cp.seconds, &on_done);
            self.windows.push(span);
            self.segs_all.extend(recs);
        }
        if runner.is_paused() {
            runner.resume();
            if let Ok(mut log) = self.steering_log.lock() {
                log.push(SteeringEvent {
                    t_s: self.now_s(),
                    action: "resume_sealing".into(),
                    realtime_ratio: 0.0,
                    reason: Some("end of the steered window: sealing restored".into()),
                });
            }
        }
        self.shared.set(|t| {
            t.sealing = "off";
            t.seal_pid = None;
        });
        runner.stop();
        Ok(())
    }

    /// Stops the sampler, analyses what was measured and assembles the report.
    fn finish(self, opts: &RunOptions, sealing: bool) -> BenchReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.sampler_thread.join();
        self.pb.finish_and_clear();
        let samples = self
            .shared
            .samples
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let seal_events = self
            .seal_events
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let steering = self
            .steering_log
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let suite = self.suite;
        let analysis = analyze::analyze(&Inputs {
            windows: &self.windows,
            samples: &samples,
            seal_events: &seal_events,
            segments: &self.segs_all,
            steering: &steering,
            target_ratio: suite.phases.transcode.target_ratio,
            sealing,
        });
        let mut warnings = analysis.warnings;
        if let Some(note) = self.encoder_note {
            warnings.push(note);
        }
        if self.cancel.is_cancelled() {
            warnings.insert(
                0,
                "the run was interrupted: phases after the interruption are missing or short"
                    .into(),
            );
        }
        let cpu_power_label = self.cpu_power_label;
        let gpu_info = self.gpu_info;
        if !cpu_power_label.starts_with("rapl") && gpu_info.source != "nvml" {
            warnings.push(format!("no power was measured on this machine (CPU: {cpu_power_label}; no NVML GPU); simulated GPU figures are shown separately and labelled"));
        }
        let c2 = seal_events
            .iter()
            .find(|e| e.kind == "note" && e.message.as_deref().is_some_and(|m| m.starts_with("C2")))
            .and_then(|e| e.message.clone())
            .unwrap_or_else(|| {
                if seal_events.iter().any(|e| e.phase.as_deref() == Some("c2")) {
                    "ran".into()
                } else if opts.seal == SealMode::Builtin {
                    "not reached".into()
                } else {
                    "n/a".into()
                }
            });
        let seal_unit = match &opts.seal {
            SealMode::Builtin => format!(
                "{} sectors/h (sector-equivalents: AP+PC1+PC2+C1{})",
                suite.seal.sector_size,
                if c2 == "ran" { "+C2" } else { "" }
            ),
            SealMode::Cmd(_) => "runs/h".into(),
            SealMode::Observe => "jobs/h".into(),
            SealMode::None => "none".into(),
        };
        let _ = std::fs::remove_dir_all(&self.work);
        let segs_all = self.segs_all;
        let policy_name = self.policy_name;
        BenchReport {
            schema: SCHEMA_ID.into(),
            schema_version: SCHEMA_VERSION,
            created_unix_s: self.created,
            duration_s: self.clock.elapsed().as_secs_f64(),
            fingerprint: self.fingerprint,
            suite_hash: Suite::hash(&opts.suite_text),
            suite,
            config: RunConfig {
                seal_mode: opts.seal.label().into(),
                seal_detail: match &opts.seal {
                    SealMode::Cmd(c) => c.clone(),
                    SealMode::Builtin => format!(
                        "filecoin-proofs-api on the CPU, {} sectors",
                        opts.suite.seal.sector_size
                    ),
                    SealMode::Observe => "lotus-miner WorkerJobs via MINER_API_INFO".into(),
                    SealMode::None => "no sealing".into(),
                },
                seal_unit,
                sector_size: opts.suite.seal.sector_size.clone(),
                c2,
                input: self.segments.origin.clone(),
                ladder: opts.suite.transcode.ladder.clone(),
                encoder: segs_all
                    .iter()
                    .find(|s| !s.encoder.is_empty())
                    .map(|s| s.encoder.clone())
                    .unwrap_or_default(),
                steering_policy: if policy_name.is_empty() {
                    "none".into()
                } else {
                    policy_name
                },
            },
            power: PowerSources {
                measured: cpu_power_label == "rapl" || gpu_info.source == "nvml",
                simulated: gpu_info.source == "simulated",
                cpu: cpu_power_label,
                gpu: gpu_info.source.clone(),
            },
            samples,
            seal_events,
            segments: segs_all,
            steering,
            windows: self.windows,
            phases: analysis.phases,
            transcode_steps: analysis.steps,
            results: analysis.results,
            warnings,
            ai: self.ai,
        }
    }
}

fn probe_encoder(
    choice: EncoderChoice,
    segments: &Segments,
    profiles: &[Profile],
    suite: &Suite,
    work: &Path,
) -> (EncoderChoice, Option<String>) {
    if choice != EncoderChoice::Auto {
        return (choice, None);
    }
    let req = crate::transcode::Request {
        input: crate::transcode::Input::Memory(segments.items[0].clone()),
        profiles: profiles.to_vec(),
        out_dir: work.join("probe"),
        options: crate::transcode::Options {
            encoder: choice,
            x264_preset: suite.transcode.x264_preset.clone(),
            ..Default::default()
        },
    };
    let _ = std::fs::create_dir_all(work.join("probe"));
    match crate::transcode::transcode(&req) {
        Ok(rep) if rep.renditions.iter().all(|r| r.encoder == "libx264") => (
            EncoderChoice::X264,
            Some(format!(
                "NVENC is not available, transcoding measured with libx264 on the CPU ({})",
                rep.fallback_reason
                    .unwrap_or_else(|| "no reason given".into())
            )),
        ),
        _ => (choice, None),
    }
}

fn sleep(cancel: &CancellationToken, d: Duration) {
    let end = Instant::now() + d;
    while !cancel.is_cancelled() {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn progress_bar(suite: &Suite, show: bool) -> ProgressBar {
    let p = &suite.phases;
    let planned = p.idle.seconds * p.idle.repeats as f64
        + p.seal.seconds * p.seal.repeats as f64
        + p.transcode.step_seconds * (3 + p.transcode.repeats) as f64
        + 2.0 * p.combined.seconds * p.combined.repeats as f64;
    let pb = if show {
        ProgressBar::new(planned.ceil() as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len}s ETA {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

#[allow(clippy::too_many_arguments)]
fn spawn_sampler(
    shared: Arc<Shared>,
    counters: Arc<PixelCounters>,
    mut power: Option<Box<dyn PowerSampler>>,
    mut gpu: Box<dyn GpuSampler>,
    interval: Duration,
    clock: Instant,
    pb: ProgressBar,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut host = HostCpu::default();
        host.sample();
        let me = std::process::id();
        let mut last_t = Instant::now();
        let mut last_self = sampler::process_cpu_seconds(me).unwrap_or(0.0);
        let mut last_seal: Option<(u32, f64)> = None;
        let mut last_energy = power.as_mut().and_then(|p| p.energy_joules());
        let mut last_px = (0u64, 0u64);
        let mut next = Instant::now() + interval;
        while !shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(50)));
                continue;
            }
            next += interval;
            let dt = last_t.elapsed().as_secs_f64().max(1e-3);
            last_t = Instant::now();
            let tag = shared.tag.lock().map(|t| t.clone()).ok();
            let Some(tag) = tag else { break };
            let cpu = host.sample().unwrap_or(0.0);
            let self_cpu = sampler::process_cpu_seconds(me).unwrap_or(last_self);
            let bench_pct = 100.0 * (self_cpu - last_self).max(0.0) / dt;
            last_self = self_cpu;
            let seal_pct = tag.seal_pid.and_then(|pid| {
                let now_cpu = group_cpu_seconds(pid)?;
                let pct = match last_seal {
                    Some((p, before)) if p == pid => 100.0 * (now_cpu - before).max(0.0) / dt,
                    _ => 0.0,
                };
                last_seal = Some((pid, now_cpu));
                Some(pct)
            });
            let energy = power.as_mut().and_then(|p| p.energy_joules());
            let cpu_power = match (energy, last_energy) {
                (Some(e), Some(l)) => Some((e - l).max(0.0) / dt),
                _ => None,
            };
            last_energy = energy;
            let px = (
                counters.encoded.load(Ordering::Relaxed),
                counters.decoded.load(Ordering::Relaxed),
            );
            let hint = LoadHint {
                streams: tag.streams,
                encode_pixels_per_s: (px.0 - last_px.0) as f64 / dt,
                decode_pixels_per_s: (px.1 - last_px.1) as f64 / dt,
                sealing: tag.sealing == "running",
            };
            last_px = px;
            let snap = gpu.snapshot(&hint);
            let gpu_power: Option<f64> = snap
                .as_ref()
                .map(|s| s.devices.iter().map(|d| d.power_w).sum());
            let measured_gpu = snap.as_ref().is_some_and(|s| s.source == "nvml");
            let power_w = match (cpu_power, measured_gpu) {
                (Some(c), true) => Some(c + gpu_power.unwrap_or(0.0)),
                (Some(c), false) => Some(c),
                (None, true) => gpu_power,
                (None, false) => None,
            };
            let sim_power_w = if snap.as_ref().is_some_and(|s| s.source == "simulated") {
                gpu_power
            } else {
                None
            };
            let sample = Sample {
                t_s: clock.elapsed().as_secs_f64(),
                phase: tag.phase.clone(),
                rep: tag.rep,
                cpu_util_pct: cpu,
                bench_cpu_pct: bench_pct,
                seal_cpu_pct: seal_pct,
                cpu_power_w: cpu_power,
                gpu: snap,
                power_w,
                sim_power_w,
                streams: tag.streams,
                sealing: tag.sealing.to_string(),
            };
            pb.set_position(clock.elapsed().as_secs());
            pb.set_message(format!(
                "cpu {cpu:.0}% · transcode {bench_pct:.0}% · seal {}% · power {}{}",
                seal_pct.map_or("-".into(), |s| format!("{s:.0}")),
                power_w.map_or("not measured".into(), |p| format!("{p:.0} W")),
                sim_power_w.map_or(String::new(), |p| format!(" · GPU {p:.0} W (simulated)")),
            ));
            if let Ok(mut s) = shared.samples.lock() {
                s.push(sample);
            }
        }
    })
}

/// CPU seconds of a process group leader plus its live threads' children: the seal
/// worker is one process, an external command is `sh` plus descendants we sum.
fn group_cpu_seconds(pgid: u32) -> Option<f64> {
    let mut total = sampler::process_cpu_seconds(pgid)?;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == pgid {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            // pgrp is field 5 → index 2 after comm.
            if rest
                .split_whitespace()
                .nth(2)
                .and_then(|g| g.parse::<u32>().ok())
                == Some(pgid)
            {
                total += sampler::process_cpu_seconds(pid).unwrap_or(0.0);
            }
        }
    }
    Some(total)
}
