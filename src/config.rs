//! `comine run` configuration: TOML with a documented default for every key.
//!
//! `comine run` works with no file at all. Unknown keys are refused with the key's
//! name and line (`deny_unknown_fields`), because a misspelt limit that silently falls
//! back to its default is worse than a refusal. Every key is documented in
//! `deploy/comine.example.toml`; `config::tests` checks that file parses.
//! `[scheduler]`, `[gpu]`, `[seal]` and `[post]` are the scheduler's, telemetry's, sealing
//! controller's and proof schedule's own config types; `[livepeer]` ([`LivepeerConfig`]) holds
//! the orchestrator flags of `comine run` / `comine livepeer`, and the command line wins over it.
//!
//! [`DataDirArgs`] is the one answer to "where is the data directory" for every subcommand:
//! `--data-dir`, else `$COMINE_DATA_DIR`, else `data_dir` in the `--config` file, else the
//! platform default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::livepeer::{CapacityArg, LivepeerArgs};
use crate::transcode::{
    DecoderChoice, EncoderChoice, Profile, WallBound, DEFAULT_MAX_INPUT_PIXELS,
};

/// Environment variable naming the config file for every subcommand.
pub const CONFIG_ENV: &str = "COMINE_CONFIG";

/// `--config FILE` and `--data-dir DIR`, flattened into every subcommand that keeps state.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DataDirArgs {
    /// TOML config (every key: deploy/comine.example.toml); without it, defaults.
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (default: `data_dir` in the config, else the platform data dir).
    #[arg(long, global = true, env = crate::paths::DATA_DIR_ENV, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// Loads the config (defaults without `--config`) and resolves the data directory.
    pub fn load(&self) -> Result<(Config, PathBuf), ConfigError> {
        let config = Config::load(self.config.as_deref())?;
        let dir = resolve_data_dir(self.data_dir.clone(), &config);
        Ok((config, dir))
    }

    /// [`load`](Self::load) for commands that talk to a running daemon (`comine status`,
    /// `comine ledger export`): the same order, but the last resort is the daemon this host
    /// runs ([`crate::paths::client_data_dir`]: the user's own, or the service's
    /// `/var/lib/comine`).
    pub fn load_for_client(&self) -> Result<(Config, PathBuf), ConfigError> {
        let config = Config::load(self.config.as_deref())?;
        let dir = self
            .data_dir
            .clone()
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(crate::paths::client_data_dir);
        Ok((config, dir))
    }
}

/// `--data-dir` (or `$COMINE_DATA_DIR`, which clap reads into the flag), else `data_dir` in
/// the config, else the platform default.
pub fn resolve_data_dir(flag: Option<PathBuf>, config: &Config) -> PathBuf {
    flag.or_else(|| config.data_dir.clone())
        .unwrap_or_else(crate::paths::default_data_dir)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}{}", read_hint(source))]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: String, message: String },
    #[error("config key {key} = {value:?} is invalid: {why}")]
    Value {
        key: &'static str,
        value: String,
        why: String,
    },
    #[error(transparent)]
    Post(#[from] crate::post::PostError),
}

/// What to do about an unreadable config (the cause itself follows in the error chain).
fn read_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the service runs as User=comine: install the file root:comine mode 0640)"
    } else {
        ""
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory; `--data-dir`, then `$COMINE_DATA_DIR`, then the platform default win over nothing.
    pub data_dir: Option<PathBuf>,
    pub api: ApiConfig,
    pub transcode: TranscodeConfig,
    pub ledger: LedgerConfig,
    pub store: StoreConfig,
    /// The public trustless gateway (off unless `listen` is set).
    pub gateway: GatewayConfig,
    /// Admission thresholds and sealing watermarks (`sched::Config`).
    pub scheduler: crate::sched::Config,
    /// GPU telemetry: backend (`auto` = NVML, else host CPU) and poll interval.
    pub gpu: crate::gpu::Config,
    /// Sealing controller (default `none`: comine only shapes its own load).
    pub seal: crate::seal::Config,
    /// The WindowPoSt schedule from the full node (`[post]`; off without a full node).
    pub post: crate::post::Config,
    /// Attaching to a Livepeer orchestrator (`comine run`, `comine livepeer`); flags win.
    pub livepeer: LivepeerConfig,
    /// AI jobs: ONNX Runtime, embedded models, HTTP runners (`ai::Config`).
    pub ai: crate::ai::Config,
    /// Prices, pool model, pool statements, chain checks and work receipts.
    pub earnings: crate::earnings::Config,
    /// What `comine run` warns about at start (keys that moved, read from where they were).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[livepeer]`: the same settings as the `--orch-*` flags; a flag given on the command line
/// (or through its environment variable) wins over the file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivepeerConfig {
    /// The orchestrator's TLS port, `HOST:PORT`; setting it attaches `comine run`.
    pub orch_addr: Option<String>,
    /// The orchestrator's -orchSecret, or `@FILE` to read it from a file (preferred).
    pub orch_secret: Option<String>,
    /// Concurrent sessions to offer: `"auto"` (the scheduler decides) or a number.
    pub capacity: Option<CapacitySetting>,
    /// EIP-55 checksummed payout address sent at registration.
    pub eth_address: Option<String>,
    /// Verify the orchestrator's certificate against this PEM CA file.
    pub orch_ca_file: Option<PathBuf>,
    /// Accept only an orchestrator certificate with this SHA-256 (hex).
    pub orch_cert_sha256: Option<String>,
    /// Accept the orchestrator's self-signed certificate unverified (go-livepeer's default).
    pub orch_insecure_skip_verify: Option<bool>,
    /// Seconds a capacity change must last before re-registering.
    pub capacity_dwell_secs: Option<f64>,
    /// Semver announced in Capabilities.version.
    pub livepeer_version: Option<String>,
}

/// `capacity = "auto"` or `capacity = 4`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum CapacitySetting {
    Sessions(u32),
    Text(String),
}

impl CapacitySetting {
    pub fn parse(&self) -> Result<CapacityArg, ConfigError> {
        let text = match self {
            CapacitySetting::Sessions(n) => n.to_string(),
            CapacitySetting::Text(s) => s.clone(),
        };
        text.parse().map_err(|why| ConfigError::Value {
            key: "livepeer.capacity",
            value: text,
            why,
        })
    }
}

impl LivepeerConfig {
    /// The flags, with every one the command line left out taken from this section.
    pub fn under(&self, flags: &LivepeerArgs) -> Result<LivepeerArgs, ConfigError> {
        let mut a = flags.clone();
        a.orch_addr = a.orch_addr.or_else(|| self.orch_addr.clone());
        a.orch_secret = a.orch_secret.or_else(|| self.orch_secret.clone());
        if a.capacity.is_none() {
            a.capacity = self.capacity.as_ref().map(|c| c.parse()).transpose()?;
        }
        a.eth_address = a.eth_address.or_else(|| self.eth_address.clone());
        a.orch_ca_file = a.orch_ca_file.or_else(|| self.orch_ca_file.clone());
        a.orch_cert_sha256 = a.orch_cert_sha256.or_else(|| self.orch_cert_sha256.clone());
        a.orch_insecure_skip_verify = a
            .orch_insecure_skip_verify
            .or(self.orch_insecure_skip_verify);
        a.capacity_dwell = a.capacity_dwell.or(self.capacity_dwell_secs);
        a.livepeer_version = a.livepeer_version.or_else(|| self.livepeer_version.clone());
        Ok(a)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address the HTTP API binds; port 0 picks a free one (written to `<data>/api.addr`).
    pub listen: String,
    /// Largest segment accepted, in bytes (413 above).
    pub max_body_bytes: u64,
    /// Seconds a client may take to upload one segment (408 after), so a slow client
    /// cannot hold a queue slot forever.
    pub body_timeout_secs: u64,
    /// Accepted jobs waiting for a worker; beyond it intake answers 503 with Retry-After.
    pub queue_depth: usize,
    /// Most transcodes at once: the scheduler steers the concurrency below this bound, for new
    /// and resumed jobs alike; 0 = half the CPU cores (at least 1).
    pub concurrency: usize,
    /// Serve `/metrics` without the bearer token (for scrapers on a trusted network).
    pub metrics_public: bool,
    /// Seconds running jobs get to finish on SIGTERM before they are checkpointed.
    pub shutdown_grace_secs: u64,
    /// Token file; default `<data>/api-token`.
    pub token_file: Option<PathBuf>,
    /// `/healthz` answers 503 when the ledger does not answer within this many ms.
    pub health_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:9470".into(),
            max_body_bytes: 64 << 20,
            body_timeout_secs: 60,
            queue_depth: 32,
            concurrency: 0,
            metrics_public: false,
            shutdown_grace_secs: 20,
            token_file: None,
            health_timeout_ms: 750,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TranscodeConfig {
    /// `auto`, `nvenc` or `x264`.
    pub encoder: String,
    /// `auto`, `nvdec` or `software`.
    pub decoder: String,
    pub gpu: u32,
    pub x264_preset: String,
    pub max_input_pixels: u64,
    /// Ladder used when a request names no profiles.
    pub default_profiles: String,
    /// Segment duration assumed when the request does not say (ms); live deadline = 4 × duration.
    pub default_segment_ms: u64,
    /// Deadline for batch jobs, in seconds (0: none).
    pub batch_deadline_secs: u64,
    /// Every job's own wall-time bound: this floor plus its pixel work (decode and every
    /// rung's output) at `wall_min_mpixels_per_sec`; it grows with the media decoded.
    pub wall_floor_secs: u64,
    /// The slowest throughput (megapixels per second) the bound tolerates; 0 disables it.
    pub wall_min_mpixels_per_sec: f64,
    /// Store attempts per rendition before a job fails with `store_error`.
    pub store_attempts: u32,
    /// Measure each device's pixel rate at start (cached in `<data>/calibration.json`), so
    /// the scheduler and `--capacity auto` use what this host really does.
    pub calibrate: bool,
    /// Keep a Livepeer session's decoder (and NVENC encoders) open between its segments,
    /// as go-livepeer does: a fresh NVDEC decoder or NVENC session per segment costs
    /// hundreds of milliseconds. `false` opens everything per segment.
    pub warm_sessions: bool,
}

impl Default for TranscodeConfig {
    fn default() -> Self {
        TranscodeConfig {
            encoder: "auto".into(),
            decoder: "auto".into(),
            gpu: 0,
            x264_preset: "veryfast".into(),
            max_input_pixels: DEFAULT_MAX_INPUT_PIXELS,
            default_profiles: "P240p30fps16x9,P360p30fps16x9".into(),
            default_segment_ms: 2000,
            batch_deadline_secs: 600,
            wall_floor_secs: WallBound::DEFAULT.floor.as_secs(),
            wall_min_mpixels_per_sec: WallBound::DEFAULT.min_pixel_rate / 1e6,
            store_attempts: 3,
            calibrate: true,
            warm_sessions: true,
        }
    }
}

impl TranscodeConfig {
    pub fn encoder_choice(&self) -> Result<EncoderChoice, ConfigError> {
        EncoderChoice::parse(&self.encoder).map_err(|why| ConfigError::Value {
            key: "transcode.encoder",
            value: self.encoder.clone(),
            why,
        })
    }
    /// The engine's wall-time bound, `None` when `wall_min_mpixels_per_sec` is 0.
    pub fn wall_bound(&self) -> Option<WallBound> {
        (self.wall_min_mpixels_per_sec > 0.0).then(|| WallBound {
            floor: std::time::Duration::from_secs(self.wall_floor_secs),
            min_pixel_rate: self.wall_min_mpixels_per_sec * 1e6,
        })
    }
    pub fn decoder_choice(&self) -> Result<DecoderChoice, ConfigError> {
        DecoderChoice::parse(&self.decoder).map_err(|why| ConfigError::Value {
            key: "transcode.decoder",
            value: self.decoder.clone(),
            why,
        })
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Price in wei per `pixels_per_unit` encoded pixels (Livepeer's `PriceInfo`).
    pub price_per_unit_wei: u64,
    pub pixels_per_unit: u64,
    /// SQLite page cache per database connection, MiB.
    pub cache_mib: u64,
    /// Most ledger writes committed together (one fsync) under load; 1 turns grouping off.
    pub max_group_commit: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            price_per_unit_wei: 0,
            pixels_per_unit: 1,
            cache_mib: 16,
            max_group_commit: crate::db::DEFAULT_GROUP,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `embedded` (UnixFS blockstore in the data directory) or `kubo` (embedded, and every
    /// rendition also pushed to a Kubo node through the persistent retry queue).
    pub backend: String,
    /// Days a stored rendition is kept after it was stored, unless it still waits for the
    /// Kubo node or sits in a deal that is not active yet; then garbage collection frees it.
    pub retain_days: u64,
    /// Hours between the daemon's garbage collections (0: never; `comine store gc` still works).
    pub gc_interval_hours: u64,
    /// Kubo RPC settings, used with `backend = "kubo"`.
    pub kubo: KuboConfig,
    /// Below this many free bytes on the data directory's filesystem, new jobs are refused
    /// with 507 Insufficient Storage (0 disables the check).
    pub min_free_bytes: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address of the unauthenticated trustless gateway; empty (the default) = not served.
    pub listen: String,
    /// Sustained requests per second per client IP (IPv6: per /64); 0 = unlimited.
    pub rate_per_sec: f64,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
    /// CAR downloads served at the same time (503 beyond).
    pub max_streams: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        let d = crate::store::gateway::GatewayConfig::default();
        GatewayConfig {
            listen: String::new(),
            rate_per_sec: d.rate_per_sec,
            burst: d.burst,
            max_streams: d.max_streams,
        }
    }
}

impl GatewayConfig {
    /// The gateway's limits, for `store::gateway::serve`.
    pub fn limits(&self) -> crate::store::gateway::GatewayConfig {
        crate::store::gateway::GatewayConfig {
            rate_per_sec: self.rate_per_sec,
            burst: self.burst,
            max_streams: self.max_streams,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KuboConfig {
    /// Kubo RPC API address (URL or multiaddr).
    pub api: String,
    /// Per-request timeout, seconds.
    pub timeout_secs: u64,
    /// Seconds between push-queue passes.
    pub push_interval_secs: u64,
}

impl Default for KuboConfig {
    fn default() -> Self {
        KuboConfig {
            api: "http://127.0.0.1:5001".into(),
            timeout_secs: 30,
            push_interval_secs: 10,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: "embedded".into(),
            retain_days: 30,
            gc_interval_hours: 24,
            kubo: KuboConfig::default(),
            min_free_bytes: 1 << 30,
        }
    }
}

impl Config {
    /// Reads `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        config.move_ai_lease_keys()?;
        config.validate()?;
        Ok(config)
    }

    /// `[ai] vram_reserve_mib` and `lease_return_secs` moved to the scheduler, which holds
    /// the VRAM leases (`[scheduler] model_reserve_bytes`, `model_return_after_ms`): the old
    /// keys still work, feed the scheduler, and are warned about; set in both places with
    /// different values they are refused.
    fn move_ai_lease_keys(&mut self) -> Result<(), ConfigError> {
        let d = crate::sched::Config::default();
        let reserve = MovedKey {
            key: "ai.vram_reserve_mib",
            new: "model_reserve_bytes",
            scale: 1 << 20,
            unit: "bytes",
        };
        reserve.apply(
            self.ai.vram_reserve_mib.take(),
            &mut self.scheduler.model_reserve_bytes,
            d.model_reserve_bytes,
            &mut self.warnings,
        )?;
        let return_after = MovedKey {
            key: "ai.lease_return_secs",
            new: "model_return_after_ms",
            scale: 1000,
            unit: "ms",
        };
        return_after.apply(
            self.ai.lease_return_secs.take(),
            &mut self.scheduler.model_return_after_ms,
            d.model_return_after_ms,
            &mut self.warnings,
        )
    }

    /// Checks values serde cannot (enums kept as strings, ladders, limits).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.transcode.encoder_choice()?;
        self.transcode.decoder_choice()?;
        Profile::parse_list(&self.transcode.default_profiles).map_err(|e| ConfigError::Value {
            key: "transcode.default_profiles",
            value: self.transcode.default_profiles.clone(),
            why: e.to_string(),
        })?;
        let rate = self.transcode.wall_min_mpixels_per_sec;
        if !rate.is_finite() || rate < 0.0 {
            return Err(ConfigError::Value {
                key: "transcode.wall_min_mpixels_per_sec",
                value: rate.to_string(),
                why: "must be a number ≥ 0 (0 disables the wall-time bound)".into(),
            });
        }
        if self.ledger.pixels_per_unit == 0 {
            return Err(ConfigError::Value {
                key: "ledger.pixels_per_unit",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        if self.api.queue_depth == 0 {
            return Err(ConfigError::Value {
                key: "api.queue_depth",
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        self.post.validate()?;
        if let Some(c) = &self.livepeer.capacity {
            c.parse()?;
        }
        self.earnings.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            value: e.value,
            why: e.why,
        })?;
        if !matches!(self.store.backend.as_str(), "embedded" | "kubo") {
            return Err(ConfigError::Value {
                key: "store.backend",
                value: self.store.backend.clone(),
                why: "use embedded or kubo".into(),
            });
        }
        if !self.gateway.listen.is_empty() {
            self.gateway
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| ConfigError::Value {
                    key: "gateway.listen",
                    value: self.gateway.listen.clone(),
                    why: format!("{e}; use IP:PORT such as 127.0.0.1:8081, or leave it empty to serve no gateway"),
                })?;
            if !(self.gateway.rate_per_sec >= 0.0 && self.gateway.rate_per_sec.is_finite()) {
                return Err(ConfigError::Value {
                    key: "gateway.rate_per_sec",
                    value: self.gateway.rate_per_sec.to_string(),
                    why: "must be 0 (unlimited) or a positive number".into(),
                });
            }
        }
        Ok(())
    }

    /// Worker count when no scheduler steers it.
    pub fn concurrency(&self) -> usize {
        if self.api.concurrency > 0 {
            return self.api.concurrency;
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        (cores / 2).max(1)
    }
}

/// An `[ai]` key that moved to `[scheduler]` with the VRAM leases (see
/// `Config::move_ai_lease_keys`): `key` × `scale` is `new`, in `unit`.
struct MovedKey {
    key: &'static str,
    new: &'static str,
    scale: u64,
    unit: &'static str,
}

impl MovedKey {
    /// Feeds `value` of the old key into `target` (whose default is `default`) with a
    /// warning; a `target` set to something else as well is a conflict.
    fn apply(
        &self,
        value: Option<u64>,
        target: &mut u64,
        default: u64,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let Some(v) = value else {
            return Ok(());
        };
        let scaled = v.saturating_mul(self.scale);
        if *target != default && *target != scaled {
            return Err(ConfigError::Value {
                key: self.key,
                value: v.to_string(),
                why: format!(
                    "conflicts with [scheduler] {} = {target}; the scheduler holds the VRAM leases now: keep only {}",
                    self.new, self.new
                ),
            });
        }
        *target = scaled;
        warnings.push(format!(
            "[ai] {} moved to [scheduler] {} (the scheduler holds the VRAM leases); using {scaled} {} from it: write {} = {scaled} under [scheduler] instead",
            self.key.strip_prefix("ai.").unwrap_or(self.key),
            self.new,
            self.unit,
            self.new
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_defaults() {
        let c = Config::parse("", "test").unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:9470");
        assert_eq!(c.store.backend, "embedded");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[api]\nlisen = \"x\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = Config::parse("[transcode]\nencoder = \"vp9\"\n", "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("transcode.encoder"), "{err}");
    }

    #[test]
    fn example_config_parses_and_documents_every_key() {
        let text = include_str!("../deploy/comine.example.toml");
        let c = Config::parse(text, "deploy/comine.example.toml").unwrap();
        // Every default key appears in the example (commented or not).
        let defaults = toml::to_string(&Config::default()).unwrap();
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    text.contains(&format!("{key} =")),
                    "deploy/comine.example.toml does not document {key}"
                );
            }
        }
        assert!(c.api.queue_depth > 0);
        // The scheduler sections document the real defaults, not stale copies.
        let d = Config::default();
        assert_eq!(c.scheduler, d.scheduler);
        assert_eq!(c.gpu, d.gpu);
        assert_eq!(c.seal, d.seal);
        assert_eq!(c.post, d.post);
        assert_eq!(c.earnings, d.earnings);
    }

    #[test]
    fn the_old_ai_lease_keys_feed_the_scheduler_with_a_warning_and_conflicts_are_refused() {
        let c = Config::parse(
            "[ai]\nvram_reserve_mib = 1024\nlease_return_secs = 5\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.scheduler.model_reserve_bytes, 1 << 30);
        assert_eq!(c.scheduler.model_return_after_ms, 5_000);
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("[scheduler] model_reserve_bytes"));
        assert!(c.warnings[1].contains("[scheduler] model_return_after_ms"));
        let c = Config::parse(
            "[scheduler]\nmodel_return_after_ms = 5000\n[ai]\nlease_return_secs = 5\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.scheduler.model_return_after_ms, 5_000);
        let err = Config::parse(
            "[scheduler]\nmodel_reserve_bytes = 1\n[ai]\nvram_reserve_mib = 1024\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ai.vram_reserve_mib") && err.contains("model_reserve_bytes"),
            "{err}"
        );
        assert!(Config::parse("[ai]\nlease_drain_secs = 3\n", "t")
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn scheduler_sections_refuse_unknown_keys() {
        for text in [
            "[scheduler]\nseal_high_watermak = 0.5\n",
            "[gpu]\nbakend = \"host\"\n",
            "[seal]\ncontroler = \"curio\"\n",
            "[post]\nlead_epoch = 20\n",
            "[livepeer]\norch_adress = \"pool:8935\"\n",
        ] {
            let err = Config::parse(text, "test").unwrap_err().to_string();
            let key = text
                .lines()
                .nth(1)
                .and_then(|l| l.split(' ').next())
                .unwrap();
            assert!(err.contains(key), "{err}");
        }
        let c = Config::parse(
            "[gpu]\nbackend = \"host\"\n[seal]\ncontroller = \"none\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.gpu.backend, "host");
        assert_eq!(c.seal.controller, crate::seal::ControllerKind::None);
    }
}
