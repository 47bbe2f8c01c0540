//! Flags of the Livepeer remote transcoder ([`LivepeerArgs`], flattened into `comine run` and
//! the standalone `comine livepeer`), validated into a [`TranscoderConfig`]:
//!
//! `--orch-addr HOST:PORT[,HOST:PORT…] --orch-secret SECRET|@FILE --capacity auto|N
//! [--eth-address 0x…] [--orch-cert-sha256 HEX | --orch-ca-file PEM]`
//!
//! Several orchestrator addresses are a failover list: the first is used until its
//! connection fails, then the next (see `client`).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use alloy_primitives::Address;

use super::{LivepeerError, TlsPolicy, TranscoderConfig, LIVEPEER_COMPAT_VERSION};

/// `--capacity auto|N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityArg {
    /// The co-mining scheduler decides.
    Auto,
    Fixed(u32),
}

impl FromStr for CapacityArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(CapacityArg::Auto);
        }
        match s.parse::<u32>() {
            Ok(0) => Err("capacity 0 would be refused by the orchestrator (\"zero capacity\"); give a number above 0 or auto".into()),
            Ok(n) => Ok(CapacityArg::Fixed(n)),
            Err(_) => Err(format!("--capacity {s:?} is neither auto nor a number of concurrent sessions")),
        }
    }
}

/// Flags for attaching to a go-livepeer orchestrator as a remote transcoder.
#[derive(clap::Args, Clone, Debug)]
pub struct LivepeerArgs {
    /// The orchestrator's TLS port (gRPC and HTTPS), e.g. pool.example.com:8935. A
    /// comma-separated list is a failover list: the next address is tried when a connection
    /// fails.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT…]")]
    pub orch_addr: Option<String>,
    /// The orchestrator's -orchSecret, or @FILE to read it from a file.
    #[arg(
        long,
        value_name = "SECRET|@FILE",
        env = "COMINE_ORCH_SECRET",
        hide_env_values = true
    )]
    pub orch_secret: Option<String>,
    /// Concurrent sessions to offer: a number, or auto (only under `comine run`, where it is
    /// the default: the co-mining scheduler decides).
    #[arg(long, value_name = "N|auto", value_parser = CapacityArg::from_str)]
    pub capacity: Option<CapacityArg>,
    /// Payout address sent at registration (RegisterRequest field 4) for pools that pay
    /// by address; must be EIP-55 checksummed.
    #[arg(long, value_name = "0x…")]
    pub eth_address: Option<String>,
    /// Verify the orchestrator's certificate against this PEM CA file.
    #[arg(long, value_name = "PEM")]
    pub orch_ca_file: Option<PathBuf>,
    /// Accept only an orchestrator certificate with this SHA-256 (hex, colons allowed).
    #[arg(long, value_name = "HEX")]
    pub orch_cert_sha256: Option<String>,
    /// Accept the orchestrator's self-signed certificate unverified, as go-livepeer does
    /// (it writes a new one on every start; default true). Ignored when a pin or CA file is
    /// given.
    #[arg(long, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub orch_insecure_skip_verify: Option<bool>,
    /// Seconds a capacity change must last before re-registering (default 10).
    #[arg(long, value_name = "SECONDS")]
    pub capacity_dwell: Option<f64>,
    /// Semver announced in Capabilities.version (compared with go-livepeer releases;
    /// default 0.8.0).
    #[arg(long)]
    pub livepeer_version: Option<String>,
}

impl LivepeerArgs {
    /// Whether the operator asked to attach to an orchestrator at all.
    pub fn enabled(&self) -> bool {
        self.orch_addr.is_some()
    }

    /// `--capacity`, `auto` when not given (the default of `comine run`).
    pub fn capacity(&self) -> CapacityArg {
        self.capacity.unwrap_or(CapacityArg::Auto)
    }

    /// Validates the flags into a client configuration.
    pub fn to_config(&self) -> Result<TranscoderConfig, LivepeerError> {
        let list = self.orch_addr.clone().ok_or_else(|| {
            LivepeerError::Config(
                "--orch-addr HOST:PORT is required to attach to an orchestrator".into(),
            )
        })?;
        let mut addrs = parse_addr_list(&list)?;
        let addr = addrs.remove(0);
        if let Some(w) = self.orch_secret.as_deref().and_then(secret_warning) {
            tracing::warn!("{w}");
        }
        let secret = read_secret(self.orch_secret.as_deref())?;
        let mut cfg = TranscoderConfig::new(addr, secret);
        cfg.fallback_addrs = addrs;
        cfg.eth_address = self
            .eth_address
            .as_deref()
            .map(parse_eth_address)
            .transpose()?;
        cfg.tls = match (&self.orch_cert_sha256, &self.orch_ca_file) {
            (Some(_), Some(_)) => {
                return Err(LivepeerError::Config(
                    "give either --orch-cert-sha256 or --orch-ca-file, not both".into(),
                ))
            }
            (Some(pin), None) => TlsPolicy::PinSha256(TlsPolicy::parse_pin(pin)?),
            (None, Some(ca)) => TlsPolicy::CaFile(ca.clone()),
            (None, None) if self.orch_insecure_skip_verify.unwrap_or(true) => {
                TlsPolicy::AcceptSelfSigned
            }
            (None, None) => {
                return Err(LivepeerError::Config(
                    "--orch-insecure-skip-verify false needs --orch-cert-sha256 or --orch-ca-file to verify the orchestrator with".into(),
                ))
            }
        };
        let dwell = self.capacity_dwell.unwrap_or(10.0);
        if !(0.0..=3600.0).contains(&dwell) {
            return Err(LivepeerError::Config(
                "--capacity-dwell must be between 0 and 3600 seconds".into(),
            ));
        }
        cfg.capacity_dwell = Duration::from_secs_f64(dwell);
        let version = self
            .livepeer_version
            .clone()
            .unwrap_or_else(|| LIVEPEER_COMPAT_VERSION.into());
        if !valid_semver(&version) {
            return Err(LivepeerError::Config(format!(
                "--livepeer-version {version:?} is not a semver like 0.8.0"
            )));
        }
        cfg.version = version;
        Ok(cfg)
    }
}

/// `HOST:PORT[,HOST:PORT…]`: each entry checked, duplicates and empty entries refused.
pub fn parse_addr_list(list: &str) -> Result<Vec<String>, LivepeerError> {
    let mut out: Vec<String> = Vec::new();
    for a in list.split(',').map(str::trim) {
        let ok = a.rsplit_once(':').is_some_and(|(h, p)| {
            !h.trim_matches(['[', ']']).is_empty() && p.parse::<u16>().is_ok()
        });
        if !ok {
            return Err(LivepeerError::Config(format!(
                "--orch-addr entry {a:?} is not HOST:PORT (e.g. pool.example.com:8935); separate several orchestrators with commas"
            )));
        }
        if out.iter().any(|o| o == a) {
            return Err(LivepeerError::Config(format!(
                "--orch-addr lists {a} twice"
            )));
        }
        out.push(a.to_string());
    }
    Ok(out)
}

/// A warning when `--orch-secret` names an existing file without `@`: the file's *name*
/// would be sent as the secret (go-livepeer's `-orchSecret` reads a file by its path; comine
/// needs `@FILE`).
pub fn secret_warning(arg: &str) -> Option<String> {
    if arg.starts_with('@') || !std::path::Path::new(arg).is_file() {
        return None;
    }
    Some(format!(
        "--orch-secret {arg:?} names an existing file, but without @ the text itself is the secret; write --orch-secret @{arg} to read the secret from the file"
    ))
}

fn valid_semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or_default();
    let nums: Vec<_> = core.split('.').collect();
    nums.len() == 3
        && nums
            .iter()
            .all(|n| !n.is_empty() && n.parse::<u64>().is_ok())
}

/// `SECRET` or `@FILE` (trailing newline trimmed). The secret travels in an HTTP header,
/// so it must be visible ASCII.
pub fn read_secret(arg: Option<&str>) -> Result<String, LivepeerError> {
    let arg = arg.ok_or_else(|| {
        LivepeerError::Config(
            "--orch-secret SECRET|@FILE is required: the orchestrator's -orchSecret".into(),
        )
    })?;
    let secret = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| {
                LivepeerError::Config(format!("cannot read --orch-secret file {path}: {e}"))
            })?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        None => arg.to_string(),
    };
    if secret.is_empty() {
        return Err(LivepeerError::Config("--orch-secret is empty".into()));
    }
    if !secret.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(LivepeerError::Config(
            "--orch-secret must be printable ASCII (it is sent in the Credentials header)".into(),
        ));
    }
    Ok(secret)
}

/// An EIP-55 checksummed address. A typo in a payout address loses money, so a
/// non-checksummed (all-lower or all-upper case) address is refused too.
pub fn parse_eth_address(s: &str) -> Result<Address, LivepeerError> {
    let s = s.trim();
    let hex_part = s.strip_prefix("0x").unwrap_or(s);
    if hex_part.len() != 40 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(LivepeerError::Config(format!(
            "--eth-address {s:?} is not a 0x-prefixed 40-hex-digit Ethereum address"
        )));
    }
    let has_letters = hex_part.bytes().any(|b| b.is_ascii_alphabetic());
    let mixed = hex_part.bytes().any(|b| b.is_ascii_lowercase())
        && hex_part.bytes().any(|b| b.is_ascii_uppercase());
    if has_letters && !mixed {
        return Err(LivepeerError::Config(format!(
            "--eth-address {s} has no EIP-55 checksum (it is all one case); copy the mixed-case address from your wallet so a typo cannot send your earnings elsewhere"
        )));
    }
    Address::parse_checksummed(format!("0x{hex_part}"), None).map_err(|_| {
        LivepeerError::Config(format!(
            "--eth-address {s} fails its EIP-55 checksum: it has a typo; copy it again from your wallet"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_parses_auto_and_numbers_and_refuses_zero() {
        assert_eq!("auto".parse::<CapacityArg>(), Ok(CapacityArg::Auto));
        assert_eq!("4".parse::<CapacityArg>(), Ok(CapacityArg::Fixed(4)));
        assert!("0"
            .parse::<CapacityArg>()
            .unwrap_err()
            .contains("zero capacity"));
        assert!("many".parse::<CapacityArg>().is_err());
    }

    #[test]
    fn orch_addr_list_is_a_failover_list() {
        assert_eq!(
            parse_addr_list("a.example:8935, b.example:8936").unwrap(),
            vec!["a.example:8935", "b.example:8936"]
        );
        assert!(parse_addr_list("a.example:8935,").is_err());
        assert!(parse_addr_list("a.example").is_err());
        assert!(parse_addr_list("a:1,a:1")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let args = LivepeerArgs {
            orch_addr: Some("a:8935,b:8935".into()),
            orch_secret: Some("s".into()),
            capacity: None,
            eth_address: None,
            orch_ca_file: None,
            orch_cert_sha256: None,
            orch_insecure_skip_verify: None,
            capacity_dwell: None,
            livepeer_version: None,
        };
        let cfg = args.to_config().unwrap();
        assert_eq!(cfg.orch_addr, "a:8935");
        assert_eq!(cfg.fallback_addrs, vec!["b:8935"]);
        assert_eq!(args.capacity(), CapacityArg::Auto);
    }

    #[test]
    fn a_secret_that_names_a_file_without_at_is_warned_about() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("orch-secret");
        std::fs::write(&f, "hunter2\n").unwrap();
        let path = f.display().to_string();
        let w = secret_warning(&path).unwrap();
        assert!(w.contains(&format!("@{path}")), "{w}");
        assert_eq!(secret_warning(&format!("@{path}")), None);
        assert_eq!(secret_warning("hunter2"), None);
    }

    #[test]
    fn eth_address_needs_a_valid_checksum() {
        // EIP-55's own test vector.
        let good = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
        assert_eq!(parse_eth_address(good).unwrap().to_checksum(None), good);
        let typo = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert!(parse_eth_address(typo)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
        let lower = good.to_lowercase();
        assert!(parse_eth_address(&lower)
            .unwrap_err()
            .to_string()
            .contains("no EIP-55 checksum"));
        assert!(parse_eth_address("0x1234").is_err());
    }

    #[test]
    fn secret_from_file_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "hunter2\n").unwrap();
        assert_eq!(
            read_secret(Some(&format!("@{}", f.display()))).unwrap(),
            "hunter2"
        );
        assert!(read_secret(None)
            .unwrap_err()
            .to_string()
            .contains("--orch-secret"));
        assert!(read_secret(Some("")).is_err());
        assert!(read_secret(Some("a\nb")).is_err());
        assert!(read_secret(Some("@/nonexistent/secret")).is_err());
    }

    #[test]
    fn tls_flags_pick_a_policy() {
        let base = LivepeerArgs {
            orch_addr: Some("o:8935".into()),
            orch_secret: Some("s".into()),
            capacity: Some(CapacityArg::Fixed(1)),
            eth_address: None,
            orch_ca_file: None,
            orch_cert_sha256: None,
            orch_insecure_skip_verify: None,
            capacity_dwell: None,
            livepeer_version: None,
        };
        assert_eq!(base.to_config().unwrap().tls, TlsPolicy::AcceptSelfSigned);
        let mut pinned = base.clone();
        pinned.orch_cert_sha256 = Some("00".repeat(32));
        assert_eq!(
            pinned.to_config().unwrap().tls,
            TlsPolicy::PinSha256([0; 32])
        );
        let mut strict = base.clone();
        strict.orch_insecure_skip_verify = Some(false);
        assert!(strict.to_config().is_err());
        let mut bad_version = base;
        bad_version.livepeer_version = Some("latest".into());
        assert!(bad_version.to_config().is_err());
    }
}
