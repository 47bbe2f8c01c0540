//! Flags of the Livepeer remote transcoder ([`LivepeerArgs`], flattened into `comine run` and
//! the standalone `comine livepeer`), validated into a [`TranscoderConfig`]:
//!
//! `--orch-addr HOST:PORT --orch-secret SECRET|@FILE --capacity auto|N
//! [--eth-address 0x…] [--orch-cert-sha256 HEX | --orch-ca-file PEM]`

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
    /// The orchestrator's TLS port (gRPC and HTTPS), e.g. pool.example.com:8935.
    #[arg(long, value_name = "HOST:PORT")]
    pub orch_addr: Option<String>,
    /// The orchestrator's -orchSecret, or @FILE to read it from a file.
    #[arg(
        long,
        value_name = "SECRET|@FILE",
        env = "COMINE_ORCH_SECRET",
        hide_env_values = true
    )]
    pub orch_secret: Option<String>,
    /// Concurrent sessions to offer: auto (the scheduler decides) or a fixed number.
    #[arg(long, default_value = "auto", value_parser = CapacityArg::from_str)]
    pub capacity: CapacityArg,
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
    /// (it writes a new one on every start). Ignored when a pin or CA file is given.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub orch_insecure_skip_verify: bool,
    /// Seconds a capacity change must last before re-registering.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    pub capacity_dwell: f64,
    /// Semver announced in Capabilities.version (compared with go-livepeer releases).
    #[arg(long, default_value = LIVEPEER_COMPAT_VERSION)]
    pub livepeer_version: String,
}

impl LivepeerArgs {
    /// Whether the operator asked to attach to an orchestrator at all.
    pub fn enabled(&self) -> bool {
        self.orch_addr.is_some()
    }

    /// Validates the flags into a client configuration.
    pub fn to_config(&self) -> Result<TranscoderConfig, LivepeerError> {
        let addr = self.orch_addr.clone().ok_or_else(|| {
            LivepeerError::Config(
                "--orch-addr HOST:PORT is required to attach to an orchestrator".into(),
            )
        })?;
        let secret = read_secret(self.orch_secret.as_deref())?;
        let mut cfg = TranscoderConfig::new(addr, secret);
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
            (None, None) if self.orch_insecure_skip_verify => TlsPolicy::AcceptSelfSigned,
            (None, None) => {
                return Err(LivepeerError::Config(
                    "--orch-insecure-skip-verify false needs --orch-cert-sha256 or --orch-ca-file to verify the orchestrator with".into(),
                ))
            }
        };
        if !(0.0..=3600.0).contains(&self.capacity_dwell) {
            return Err(LivepeerError::Config(
                "--capacity-dwell must be between 0 and 3600 seconds".into(),
            ));
        }
        cfg.capacity_dwell = Duration::from_secs_f64(self.capacity_dwell);
        if !valid_semver(&self.livepeer_version) {
            return Err(LivepeerError::Config(format!(
                "--livepeer-version {:?} is not a semver like 0.8.0",
                self.livepeer_version
            )));
        }
        cfg.version = self.livepeer_version.clone();
        Ok(cfg)
    }
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
            capacity: CapacityArg::Fixed(1),
            eth_address: None,
            orch_ca_file: None,
            orch_cert_sha256: None,
            orch_insecure_skip_verify: true,
            capacity_dwell: 10.0,
            livepeer_version: LIVEPEER_COMPAT_VERSION.into(),
        };
        assert_eq!(base.to_config().unwrap().tls, TlsPolicy::AcceptSelfSigned);
        let mut pinned = base.clone();
        pinned.orch_cert_sha256 = Some("00".repeat(32));
        assert_eq!(
            pinned.to_config().unwrap().tls,
            TlsPolicy::PinSha256([0; 32])
        );
        let mut strict = base.clone();
        strict.orch_insecure_skip_verify = false;
        assert!(strict.to_config().is_err());
        let mut bad_version = base;
        bad_version.livepeer_version = "latest".into();
        assert!(bad_version.to_config().is_err());
    }
}
