//! Co-mining benchmark suite (`comine bench`): what transcoding costs Filecoin sealing
//! in throughput and power, and how many live streams the machine adds.
//!
//! [`run::run`] drives five phases (idle, seal only, transcode step-up, AI upscale
//! ([`ai`]: the model alone and beside sealing), combined with and without steering) while a sampler thread records power, CPU and GPU figures;
//! [`analyze`] turns the raw data into medians and spreads; [`crate::report`] writes
//! `report.json`, `report.html` and `report.md`.
//!
//! What it measures with: [`sampler::GpuSampler`] / [`sampler::PowerSampler`] (the `gpu`
//! module's NVML, host and `sim` readers) and [`steering::Steering`] (the `sched` core's
//! decisions); [`out_dir`] checks where the report goes, [`fingerprint`] records the rig.

pub mod ai;
pub mod analyze;
pub mod cli;
pub mod fingerprint;
pub mod load;
pub mod out_dir;
pub mod run;
pub mod sampler;
pub mod seal;
pub mod steering;
pub mod suite;
pub mod workload;

#[cfg(feature = "seal-builtin")]
pub use seal::commp_reference;
pub use suite::Suite;
