//! Suite definitions: the built-in `tiny`, `quick` and `standard` suites and TOML files.
//!
//! A suite file is parsed with `deny_unknown_fields` so a typo is an error naming the
//! key, and [`Suite::validate`] rejects impossible values with the dotted key path
//! (`phases.transcode.max_streams must be >= 1`), so nobody benchmarks a misread file.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The suite types are part of `report.json`, so `report` owns them; this module parses,
/// validates and provides the built-in suites.
pub use crate::report::schema::{
    AiWorkload, CombinedPhase, Phases, SealWorkload, Suite, TimedPhase, TranscodePhase,
    TranscodeWorkload,
};

/// Why a suite could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read suite file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("suite file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("suite {suite}: {key} {why}")]
    Invalid {
        suite: String,
        key: &'static str,
        why: String,
    },
    #[error("unknown suite {0:?}: use quick, standard, tiny or a path ending in .toml")]
    Unknown(String),
}

const TINY: &str = r#"
name = "tiny"
sample_interval_ms = 250
[seal]
sector_size = "2KiB"
[transcode]
ladder = "P144p30fps16x9"
source_width = 320
source_height = 180
source_fps = 30
segment_seconds = 1.0
segments = 2
encoder = "x264"
x264_preset = "ultrafast"
[phases.idle]
seconds = 1.0
repeats = 2
[phases.seal]
seconds = 2.0
repeats = 2
[phases.transcode]
step_seconds = 2.0
max_streams = 2
repeats = 2
[phases.combined]
seconds = 3.0
repeats = 2
sustain_ms = 200
min_dwell_ms = 500
[ai]
frame_width = 64
frame_height = 64
seconds = 1.0
threads = 2
"#;

const QUICK: &str = r#"
name = "quick"
sample_interval_ms = 1000
[seal]
sector_size = "8MiB"
[transcode]
ladder = "P240p30fps16x9,P360p30fps16x9"
source_width = 1280
source_height = 720
source_fps = 30
segment_seconds = 2.0
segments = 3
encoder = "auto"
x264_preset = "veryfast"
[phases.idle]
seconds = 5.0
repeats = 3
[phases.seal]
seconds = 30.0
repeats = 2
[phases.transcode]
step_seconds = 8.0
max_streams = 6
repeats = 2
[phases.combined]
seconds = 25.0
repeats = 2
[ai]
frame_width = 128
frame_height = 128
seconds = 10.0
"#;

const STANDARD: &str = r#"
name = "standard"
sample_interval_ms = 1000
[seal]
sector_size = "512MiB"
[transcode]
ladder = "P240p30fps16x9,P360p30fps16x9,P720p30fps16x9"
source_width = 1920
source_height = 1080
source_fps = 30
segment_seconds = 2.0
segments = 5
encoder = "auto"
x264_preset = "veryfast"
[phases.idle]
seconds = 30.0
repeats = 3
[phases.seal]
seconds = 600.0
repeats = 3
[phases.transcode]
step_seconds = 30.0
max_streams = 64
repeats = 3
[phases.combined]
seconds = 600.0
repeats = 3
[ai]
frame_width = 256
frame_height = 256
seconds = 60.0
"#;

impl Suite {
    /// The TOML text of a built-in suite (`quick`, `standard`, `tiny`), as
    /// `comine bench --print-suite NAME` prints it.
    pub fn builtin_text(name: &str) -> Result<&'static str, SuiteError> {
        match name {
            "quick" => Ok(QUICK),
            "standard" => Ok(STANDARD),
            "tiny" => Ok(TINY),
            other => Err(SuiteError::Unknown(other.to_string())),
        }
    }

    /// `quick`, `standard`, `tiny` or a path to a TOML file.
    pub fn load(spec: &str) -> Result<(Suite, String), SuiteError> {
        let (text, origin) = match spec {
            "quick" => (QUICK.to_string(), "built-in quick".to_string()),
            "standard" => (STANDARD.to_string(), "built-in standard".to_string()),
            "tiny" => (TINY.to_string(), "built-in tiny".to_string()),
            path if path.ends_with(".toml") || Path::new(path).is_file() => {
                let text = std::fs::read_to_string(path).map_err(|source| SuiteError::Read {
                    path: path.to_string(),
                    source,
                })?;
                (text, path.to_string())
            }
            other => return Err(SuiteError::Unknown(other.to_string())),
        };
        let suite = Suite::parse(&text, &origin)?;
        Ok((suite, text))
    }

    /// Parse and validate suite TOML.
    pub fn parse(text: &str, origin: &str) -> Result<Suite, SuiteError> {
        let suite: Suite = toml::from_str(text).map_err(|e| SuiteError::Parse {
            path: origin.to_string(),
            // toml's message names the key and the line ("unknown field `foo`").
            message: e.to_string().trim().replace('\n', " "),
        })?;
        suite.validate()?;
        Ok(suite)
    }

    /// SHA-256 of the suite text, recorded in the report so runs compare like with like.
    pub fn hash(text: &str) -> String {
        let digest = Sha256::digest(text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reject impossible values, naming the dotted key.
    pub fn validate(&self) -> Result<(), SuiteError> {
        let bad = |key: &'static str, why: String| SuiteError::Invalid {
            suite: self.name.clone(),
            key,
            why,
        };
        if !(50..=60_000).contains(&self.sample_interval_ms) {
            return Err(bad(
                "sample_interval_ms",
                format!("must be 50..=60000, got {}", self.sample_interval_ms),
            ));
        }
        if sector_bytes(&self.seal.sector_size).is_none() {
            return Err(bad(
                "seal.sector_size",
                format!(
                    "must be one of 2KiB, 8MiB, 512MiB, 32GiB, 64GiB, got {:?}",
                    self.seal.sector_size
                ),
            ));
        }
        let t = &self.transcode;
        if t.ladder.trim().is_empty() {
            return Err(bad(
                "transcode.ladder",
                "must name at least one profile".into(),
            ));
        }
        if let Err(e) = crate::transcode::Profile::parse_list(&t.ladder) {
            return Err(bad("transcode.ladder", format!("is not valid: {e}")));
        }
        if t.source_width < 16 || t.source_width > 7680 || !t.source_width.is_multiple_of(2) {
            return Err(bad(
                "transcode.source_width",
                format!(
                    "must be an even number in 16..=7680, got {}",
                    t.source_width
                ),
            ));
        }
        if t.source_height < 16 || t.source_height > 4320 || !t.source_height.is_multiple_of(2) {
            return Err(bad(
                "transcode.source_height",
                format!(
                    "must be an even number in 16..=4320, got {}",
                    t.source_height
                ),
            ));
        }
        if !(1..=240).contains(&t.source_fps) {
            return Err(bad(
                "transcode.source_fps",
                format!("must be 1..=240, got {}", t.source_fps),
            ));
        }
        if !(t.segment_seconds >= 0.5 && t.segment_seconds <= 30.0) {
            return Err(bad(
                "transcode.segment_seconds",
                format!("must be 0.5..=30, got {}", t.segment_seconds),
            ));
        }
        if !(1..=100).contains(&t.segments) {
            return Err(bad(
                "transcode.segments",
                format!("must be 1..=100, got {}", t.segments),
            ));
        }
        if crate::transcode::EncoderChoice::parse(&t.encoder).is_err() {
            return Err(bad(
                "transcode.encoder",
                format!("must be auto, nvenc or x264, got {:?}", t.encoder),
            ));
        }
        let p = &self.phases;
        for (key_s, key_r, ph) in [
            ("phases.idle.seconds", "phases.idle.repeats", &p.idle),
            ("phases.seal.seconds", "phases.seal.repeats", &p.seal),
        ] {
            check_seconds(ph.seconds).map_err(|why| bad(key_s, why))?;
            check_repeats(ph.repeats).map_err(|why| bad(key_r, why))?;
        }
        check_seconds(p.transcode.step_seconds)
            .map_err(|why| bad("phases.transcode.step_seconds", why))?;
        if p.transcode.step_seconds < t.segment_seconds {
            return Err(bad(
                "phases.transcode.step_seconds",
                format!(
                    "must be at least one segment ({} s), got {}",
                    t.segment_seconds, p.transcode.step_seconds
                ),
            ));
        }
        if !(1..=256).contains(&p.transcode.max_streams) {
            return Err(bad(
                "phases.transcode.max_streams",
                format!("must be >= 1 and <= 256, got {}", p.transcode.max_streams),
            ));
        }
        if !(p.transcode.target_ratio > 0.0 && p.transcode.target_ratio <= 1.0) {
            return Err(bad(
                "phases.transcode.target_ratio",
                format!("must be in (0, 1], got {}", p.transcode.target_ratio),
            ));
        }
        if let Some(ai) = &self.ai {
            for (key, v) in [
                ("ai.frame_width", ai.frame_width),
                ("ai.frame_height", ai.frame_height),
            ] {
                if !(8..=4096).contains(&v) {
                    return Err(bad(key, format!("must be 8..=4096, got {v}")));
                }
            }
            check_seconds(ai.seconds).map_err(|why| bad("ai.seconds", why))?;
            if ai.threads > 1024 {
                return Err(bad(
                    "ai.threads",
                    format!("must be 0..=1024, got {}", ai.threads),
                ));
            }
        }
        check_repeats(p.transcode.repeats).map_err(|why| bad("phases.transcode.repeats", why))?;
        check_seconds(p.combined.seconds).map_err(|why| bad("phases.combined.seconds", why))?;
        check_repeats(p.combined.repeats).map_err(|why| bad("phases.combined.repeats", why))?;
        if !(p.combined.resume_below > 0.0 && p.combined.resume_below < p.combined.pause_above) {
            return Err(bad(
                "phases.combined.resume_below",
                format!(
                    "must be > 0 and below phases.combined.pause_above ({}), got {}",
                    p.combined.pause_above, p.combined.resume_below
                ),
            ));
        }
        Ok(())
    }

    /// The `sector_size` in bytes (validated).
    pub fn sector_bytes(&self) -> u64 {
        sector_bytes(&self.seal.sector_size).unwrap_or(2048)
    }
}

fn check_seconds(s: f64) -> Result<(), String> {
    if s.is_finite() && s > 0.0 && s <= 86_400.0 {
        Ok(())
    } else {
        Err(format!("must be > 0 and <= 86400 seconds, got {s}"))
    }
}

fn check_repeats(k: u32) -> Result<(), String> {
    if (1..=100).contains(&k) {
        Ok(())
    } else {
        Err(format!("must be >= 1 and <= 100, got {k}"))
    }
}

/// Sector sizes `filecoin-proofs` knows.
pub fn sector_bytes(s: &str) -> Option<u64> {
    match s {
        "2KiB" => Some(2 << 10),
        "8MiB" => Some(8 << 20),
        "512MiB" => Some(512 << 20),
        "32GiB" => Some(32 << 30),
        "64GiB" => Some(64 << 30),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid() {
        for name in ["tiny", "quick", "standard"] {
            let (suite, text) = Suite::load(name).unwrap();
            assert_eq!(suite.name, name);
            assert_eq!(Suite::hash(&text).len(), 64);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = QUICK.replace("max_streams = 6", "max_streams = 6\nmax_stream = 3");
        let err = Suite::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_stream"), "{err}");
    }

    #[test]
    fn impossible_value_is_named() {
        let text = QUICK.replace("max_streams = 6", "max_streams = 0");
        let err = Suite::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(
            err.contains("phases.transcode.max_streams must be >= 1"),
            "{err}"
        );
        let text = QUICK.replace("\"8MiB\"", "\"3MiB\"");
        let err = Suite::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("seal.sector_size"), "{err}");
        let text = TINY.replace("frame_width = 64", "frame_width = 4");
        let err = Suite::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("ai.frame_width must be 8..=4096"), "{err}");
        let text = TINY.replace("seconds = 1.0\nthreads", "seconds = 0.0\nthreads");
        let err = Suite::parse(&text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("ai.seconds"), "{err}");
    }
}
