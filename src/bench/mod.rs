//! Co-mining benchmark suite (`comine bench`): what transcoding costs Filecoin sealing
//! in throughput and power, and how many live streams the machine adds.
//!
//! [`run::run`] drives four phases (idle, seal only, transcode step-up, combined with
//! and without steering) while a sampler thread records power, CPU and GPU figures;
//! [`analyze`] turns the raw data into medians and spreads; [`crate::report`] writes
//! `report.json`, `report.html` and `report.md`.
//!
//! Seams for the modules merged later: [`sampler::GpuSampler`] / [`sampler::PowerSampler`]
//! (the `gpu` module's NVML and `sim` backends) and [`steering::Steering`] (the `sched`
//! module's policy).

pub mod analyze;
pub mod cli;
pub mod load;
pub mod run;
pub mod sampler;
pub mod seal;
pub mod steering;
pub mod suite;
pub mod workload;

#[cfg(feature = "seal-builtin")]
pub use seal::commp_reference;
pub use suite::Suite;
