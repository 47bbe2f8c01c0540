//! `[earnings]`, `[earnings.pool]` and `[earnings.chain]`: how comine values its work, where
//! the pool's statement comes from, and which chain it checks payouts on.
//!
//! Wei amounts are accepted as TOML integers or decimal strings (a TOML integer stops at
//! 2⁶³ − 1); fractions as strings (`"0.25"`, `"25%"`, `"1/4"`), never as floats.

use std::path::PathBuf;

use alloy::primitives::{Address, U256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::model::{ModelKind, PoolModel};
use super::money::{parse_fraction, parse_wei, Frac};

/// Arbitrum One.
pub const ARBITRUM_ONE: u64 = 42161;
/// Livepeer's contracts on Arbitrum One (proxies).
pub const TICKET_BROKER: &str = "0xa8bB618B1520E284046F3dFc448851A1Ff26e41B";
pub const BONDING_MANAGER: &str = "0x35Bcf3c30594191d53231E4FF333E8A770453e40";
pub const ROUNDS_MANAGER: &str = "0xdd6f56DcC28D3F5f27084381fE8Df634985cc39f";
/// The TicketBroker proxy's deployment block: nothing to scan before it.
pub const TICKET_BROKER_DEPLOY_BLOCK: u64 = 5_856_357;

/// A wei amount written as a TOML integer or a decimal string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WeiValue(pub U256);

impl Serialize for WeiValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match u64::try_from(self.0) {
            Ok(v) if v <= i64::MAX as u64 => s.serialize_i64(v as i64),
            _ => s.serialize_str(&self.0.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for WeiValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) if i >= 0 => Ok(WeiValue(U256::from(i as u64))),
            Raw::Int(i) => Err(serde::de::Error::custom(format!(
                "{i} is negative; wei amounts are whole numbers ≥ 0"
            ))),
            Raw::Str(s) => parse_wei(&s)
                .map(WeiValue)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("config key {key} = {value:?} is invalid: {why}")]
pub struct ConfigValueError {
    pub key: &'static str,
    pub value: String,
    pub why: String,
}

fn bad(key: &'static str, value: impl Into<String>, why: impl Into<String>) -> ConfigValueError {
    ConfigValueError {
        key,
        value: value.into(),
        why: why.into(),
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which price a job is valued at: `auto` (the orchestrator's GetOrchestrator price when
    /// known, else `price_per_unit` when set, else the pool's), `orchestrator`, `config`, `pool`.
    pub price_source: String,
    /// Wei per `pixels_per_unit` encoded pixels (the orchestrator's `-pricePerUnit`).
    pub price_per_unit: WeiValue,
    pub pixels_per_unit: WeiValue,
    /// Pool model that turns gross into net: `livepool`, `openpool`, `orchestrator`, `custom`.
    pub model: String,
    /// livepool: the pool's commission in basis points (1/10 000), after its 90 % fee share.
    pub commission_bps: u32,
    /// openpool: the pool's commission as a fraction.
    pub commission: String,
    /// orchestrator: your feeShare in parts per million (10⁶ = 100 % to delegators); unset
    /// reads `getTranscoder(orchestrator).feeShare` from the chain.
    pub fee_share_ppm: Option<u32>,
    /// custom: the fraction of gross you keep.
    pub share: String,
    /// custom: whether the pool truncates the price to whole wei per pixel.
    pub truncate_price: bool,
    /// Pending credit below this is not paid yet (openpool 5·10¹⁵ wei; livepool
    /// 2500 × 21000 × gas price). Unset uses the model's default.
    pub payout_threshold_wei: Option<WeiValue>,
    /// Gas price assumed for livepool's threshold and per-payout gas, wei.
    pub gas_price_wei: WeiValue,
    /// Operator key for work receipts: 32-byte hex secp256k1 key, file mode 0600.
    pub key_file: Option<PathBuf>,
    /// Address the pool pays (and receipts name as transcoder). Default: `[livepeer]
    /// eth_address`, else the key's address.
    pub payout_address: Option<String>,
    /// A pool job matches a comine job finished within this many seconds of it.
    pub match_window_secs: u64,
    /// Seconds after a day ends before its receipts' Merkle root is signed.
    pub root_delay_secs: u64,
    pub pool: PoolConfig,
    pub chain: ChainConfig,
    pub ai: AiPriceConfig,
}

/// `[earnings.ai]`: the price of AI jobs in Livepeer's AI billing units (upscale and the
/// image pipelines: input height × width per image or frame; see `docs/earnings.md`), as an
/// orchestrator's `aiModels.json` sets it: `price_per_unit` wei per `pixels_per_unit` units,
/// with per-pipeline overrides (`[earnings.ai.pipelines.upscale]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiPriceConfig {
    pub price_per_unit: WeiValue,
    /// Units per `price_per_unit`; 0 (unset) means 1.
    pub pixels_per_unit: WeiValue,
    pub pipelines: std::collections::BTreeMap<String, AiPipelinePrice>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AiPipelinePrice {
    pub price_per_unit: WeiValue,
    /// 0 (unset) means 1.
    pub pixels_per_unit: WeiValue,
}

impl Default for AiPriceConfig {
    fn default() -> Self {
        AiPriceConfig {
            price_per_unit: WeiValue(U256::ZERO),
            pixels_per_unit: WeiValue(U256::from(1)),
            pipelines: Default::default(),
        }
    }
}

impl AiPriceConfig {
    /// `(price_per_unit, pixels_per_unit)` for `pipeline`: its own entry, else the section's.
    pub fn price_of(&self, pipeline: &str) -> (U256, U256) {
        let (p, u) = match self.pipelines.get(pipeline) {
            Some(e) => (e.price_per_unit.0, e.pixels_per_unit.0),
            None => (self.price_per_unit.0, self.pixels_per_unit.0),
        };
        (p, if u.is_zero() { U256::from(1) } else { u })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            price_source: "auto".into(),
            price_per_unit: WeiValue(U256::ZERO),
            pixels_per_unit: WeiValue(U256::from(1)),
            model: "custom".into(),
            commission_bps: 0,
            commission: "0.25".into(),
            fee_share_ppm: None,
            share: "1".into(),
            truncate_price: false,
            payout_threshold_wei: None,
            gas_price_wei: WeiValue(U256::from(10_000_000u64)),
            key_file: None,
            payout_address: None,
            match_window_secs: 120,
            root_delay_secs: 300,
            pool: PoolConfig::default(),
            chain: ChainConfig::default(),
            ai: AiPriceConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// `none`, `livepool` (`GET {url}/jobs?transcoder=&from=&to=`), `openpool`
    /// (`GET {url}/pool/events`), or `csv` (statements imported with `comine earnings pool import`).
    pub kind: String,
    /// Base URL of the pool's API.
    pub url: String,
    /// Optional list of payouts (`[{txHash, fees|amount, ethAddress, timestamp|createdAt}]`).
    pub payouts_url: String,
    pub poll_interval_secs: u64,
    pub timeout_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            kind: "none".into(),
            url: String::new(),
            payouts_url: String::new(),
            poll_interval_secs: 300,
            timeout_secs: 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// Arbitrum One JSON-RPC endpoint (http or https); empty turns the chain checks off.
    pub rpc_url: String,
    /// The endpoint must report this chain id.
    pub chain_id: u64,
    /// `pool` (verify the pool's payouts, snapshot the payout address's balance) or
    /// `orchestrator` (scan TicketBroker/BondingManager for your own orchestrator).
    pub mode: String,
    /// Your orchestrator's address (mode = orchestrator).
    pub orchestrator: String,
    pub ticket_broker: String,
    pub bonding_manager: String,
    pub rounds_manager: String,
    /// First block scanned for events (mode = orchestrator).
    pub start_block: u64,
    /// Blocks per `eth_getLogs` query; halved when a provider refuses a range.
    pub chunk_blocks: u64,
    /// Blocks behind the head that are scanned (reorgs deeper than this are still undone).
    pub confirmations: u64,
    pub poll_interval_secs: u64,
    /// Seconds between balance snapshots of the payout address (mode = pool).
    pub snapshot_interval_secs: u64,
    pub timeout_secs: u64,
}

impl Default for ChainConfig {
    fn default() -> Self {
        ChainConfig {
            rpc_url: String::new(),
            chain_id: ARBITRUM_ONE,
            mode: "pool".into(),
            orchestrator: String::new(),
            ticket_broker: TICKET_BROKER.into(),
            bonding_manager: BONDING_MANAGER.into(),
            rounds_manager: ROUNDS_MANAGER.into(),
            start_block: TICKET_BROKER_DEPLOY_BLOCK,
            chunk_blocks: 5000,
            confirmations: 20,
            poll_interval_secs: 60,
            snapshot_interval_secs: 3600,
            timeout_secs: 20,
        }
    }
}

/// Where a job's price comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PricePreference {
    Auto,
    Orchestrator,
    Config,
    Pool,
}

/// Parses a `0x…` address; mixed case must be a valid EIP-55 checksum.
pub fn parse_address(key: &'static str, s: &str) -> Result<Address, ConfigValueError> {
    let t = s.trim();
    if !(t.len() == 42 && t.starts_with("0x") && t[2..].bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(bad(
            key,
            s,
            "not an Ethereum address: expected 0x followed by 40 hex digits",
        ));
    }
    let lower = t[2..].bytes().all(|b| !b.is_ascii_uppercase());
    let upper = t[2..].bytes().all(|b| !b.is_ascii_lowercase());
    if lower || upper {
        return t
            .parse()
            .map_err(|_| bad(key, s, "not an Ethereum address"));
    }
    Address::parse_checksummed(t, None).map_err(|_| {
        bad(
            key,
            s,
            "the EIP-55 checksum does not match (a typo?); copy the address again",
        )
    })
}

impl Config {
    pub fn price_preference(&self) -> Result<PricePreference, ConfigValueError> {
        Ok(match self.price_source.as_str() {
            "auto" => PricePreference::Auto,
            "orchestrator" => PricePreference::Orchestrator,
            "config" => PricePreference::Config,
            "pool" => PricePreference::Pool,
            other => {
                return Err(bad(
                    "earnings.price_source",
                    other,
                    "use auto, orchestrator, config or pool",
                ))
            }
        })
    }

    /// The pool model; `fee_share_ppm` from the chain when config leaves it unset.
    pub fn pool_model(
        &self,
        chain_fee_share_ppm: Option<u32>,
    ) -> Result<PoolModel, ConfigValueError> {
        let kind = match self.model.as_str() {
            "livepool" => ModelKind::Livepool,
            "openpool" => ModelKind::Openpool,
            "orchestrator" => ModelKind::Orchestrator,
            "custom" => ModelKind::Custom,
            other => {
                return Err(bad(
                    "earnings.model",
                    other,
                    "use livepool, openpool, orchestrator or custom",
                ))
            }
        };
        let threshold = self.payout_threshold_wei.map(|w| w.0);
        match kind {
            ModelKind::Livepool => {
                if self.commission_bps > 10_000 {
                    return Err(bad(
                        "earnings.commission_bps",
                        self.commission_bps.to_string(),
                        "basis points run from 0 to 10000",
                    ));
                }
                Ok(PoolModel::livepool(
                    self.commission_bps,
                    self.gas_price_wei.0,
                    threshold,
                ))
            }
            ModelKind::Openpool => {
                let c = parse_fraction(&self.commission)
                    .map_err(|e| bad("earnings.commission", &self.commission, e.to_string()))?;
                if !c.le_one() {
                    return Err(bad(
                        "earnings.commission",
                        &self.commission,
                        "a commission is at most 1",
                    ));
                }
                Ok(PoolModel::openpool(c, threshold))
            }
            ModelKind::Orchestrator => {
                let ppm = self.fee_share_ppm.or(chain_fee_share_ppm).unwrap_or(0);
                if ppm > 1_000_000 {
                    return Err(bad(
                        "earnings.fee_share_ppm",
                        ppm.to_string(),
                        "feeShare runs from 0 to 1000000",
                    ));
                }
                Ok(PoolModel::orchestrator(ppm))
            }
            ModelKind::Custom => {
                let share = parse_fraction(&self.share)
                    .map_err(|e| bad("earnings.share", &self.share, e.to_string()))?;
                if !share.le_one() {
                    return Err(bad("earnings.share", &self.share, "a share is at most 1"));
                }
                Ok(PoolModel::custom(share, self.truncate_price, threshold))
            }
        }
    }

    /// Checks everything serde cannot; the first bad key is named.
    pub fn validate(&self) -> Result<(), ConfigValueError> {
        self.price_preference()?;
        self.pool_model(None)?;
        if self.pixels_per_unit.0.is_zero() {
            return Err(bad("earnings.pixels_per_unit", "0", "must be at least 1"));
        }
        if let Some(a) = &self.payout_address {
            parse_address("earnings.payout_address", a)?;
        }
        if !matches!(
            self.pool.kind.as_str(),
            "none" | "livepool" | "openpool" | "csv"
        ) {
            return Err(bad(
                "earnings.pool.kind",
                &self.pool.kind,
                "use none, livepool, openpool or csv",
            ));
        }
        if matches!(self.pool.kind.as_str(), "livepool" | "openpool") {
            check_url("earnings.pool.url", &self.pool.url)?;
        }
        if !self.pool.payouts_url.is_empty() {
            check_url("earnings.pool.payouts_url", &self.pool.payouts_url)?;
        }
        let c = &self.chain;
        if !c.rpc_url.is_empty() {
            check_url("earnings.chain.rpc_url", &c.rpc_url)?;
        }
        if !matches!(c.mode.as_str(), "pool" | "orchestrator") {
            return Err(bad(
                "earnings.chain.mode",
                &c.mode,
                "use pool or orchestrator",
            ));
        }
        if c.mode == "orchestrator" && !c.rpc_url.is_empty() {
            parse_address("earnings.chain.orchestrator", &c.orchestrator)?;
        }
        parse_address("earnings.chain.ticket_broker", &c.ticket_broker)?;
        parse_address("earnings.chain.bonding_manager", &c.bonding_manager)?;
        parse_address("earnings.chain.rounds_manager", &c.rounds_manager)?;
        if c.chunk_blocks == 0 {
            return Err(bad(
                "earnings.chain.chunk_blocks",
                "0",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

fn check_url(key: &'static str, s: &str) -> Result<(), ConfigValueError> {
    let u = reqwest::Url::parse(s).map_err(|e| bad(key, s, format!("not a URL ({e})")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad(key, s, "use an http:// or https:// URL"));
    }
    Ok(())
}

/// A fraction config key, for callers that already validated.
pub fn fraction_or_zero(s: &str) -> Frac {
    parse_fraction(s).unwrap_or(Frac::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wei_values_take_integers_and_strings() {
        #[derive(Deserialize)]
        struct T {
            a: WeiValue,
            b: WeiValue,
        }
        let t: T = toml::from_str("a = 5\nb = \"100000000000000000000\"\n").unwrap();
        assert_eq!(t.a.0, U256::from(5));
        assert_eq!(t.b.0, U256::from(100_000_000_000_000_000_000u128));
        assert!(toml::from_str::<T>("a = -1\nb = 1\n").is_err());
        assert!(toml::from_str::<T>("a = \"1.5\"\nb = 1\n").is_err());
    }

    #[test]
    fn addresses_are_checked() {
        assert!(parse_address("k", TICKET_BROKER).is_ok());
        assert!(parse_address("k", &TICKET_BROKER.to_lowercase()).is_ok());
        // One letter's case flipped: the checksum catches it.
        let typo = TICKET_BROKER.replacen('B', "b", 1);
        let e = parse_address("k", &typo).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let e = parse_address("earnings.payout_address", "0x1234")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("earnings.payout_address") && e.contains("40 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config {
            model: "solo".into(),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("earnings.model"));
        c.model = "openpool".into();
        c.commission = "1.5".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("earnings.commission"));
        c.commission = "0.25".into();
        c.chain.rpc_url = "ftp://x".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("earnings.chain.rpc_url"));
        c.chain.rpc_url = "http://127.0.0.1:8545".into();
        c.chain.mode = "orchestrator".into();
        c.chain.orchestrator = "0xnope".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("earnings.chain.orchestrator"));
    }
}
