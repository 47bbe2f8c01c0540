//! The price a job is valued at, and where it came from.
//!
//! Every completed job gets a [`PriceSnapshot`]: `pricePerUnit` wei per `pixelsPerUnit`
//! encoded pixels, its source and when it was learnt. The [`PriceBoard`] holds the latest
//! quote of each source — the orchestrator's `GetOrchestrator` reply (the Livepeer client
//! refreshes it), `[earnings] price_per_unit`, or the pool's own statement (Open Pool's
//! `pricePerComputeUnit`) — and picks one by `[earnings] price_source`.

use std::sync::Mutex;

use alloy::primitives::{Address, U256};
use serde::{Deserialize, Serialize};

use super::config::PricePreference;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PriceSource {
    /// `OrchestratorInfo.price_info` from the orchestrator's `GetOrchestrator`.
    Orchestrator,
    /// `[earnings] price_per_unit` / `pixels_per_unit`.
    Config,
    /// The pool's statement (e.g. Open Pool's `pricePerComputeUnit`).
    Pool,
    /// No price known: the job is worth 0 until one is.
    None,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Orchestrator => "orchestrator",
            PriceSource::Config => "config",
            PriceSource::Pool => "pool",
            PriceSource::None => "none",
        }
    }
    pub fn parse(s: &str) -> Option<PriceSource> {
        Some(match s {
            "orchestrator" => PriceSource::Orchestrator,
            "config" => PriceSource::Config,
            "pool" => PriceSource::Pool,
            "none" => PriceSource::None,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceSnapshot {
    pub price_per_unit: U256,
    pub pixels_per_unit: U256,
    pub source: PriceSource,
    /// When the price was learnt, ms since the epoch.
    pub at_ms: u64,
    /// The orchestrator that quoted it (`OrchestratorInfo.address`), when it did.
    pub orchestrator: Option<Address>,
}

impl PriceSnapshot {
    pub fn none() -> PriceSnapshot {
        PriceSnapshot {
            price_per_unit: U256::ZERO,
            pixels_per_unit: U256::from(1),
            source: PriceSource::None,
            at_ms: 0,
            orchestrator: None,
        }
    }
}

/// The latest quote of each source.
#[derive(Debug)]
pub struct PriceBoard {
    preference: PricePreference,
    config: Option<PriceSnapshot>,
    orchestrator: Mutex<Option<PriceSnapshot>>,
    pool: Mutex<Option<PriceSnapshot>>,
    round: Mutex<Option<u64>>,
}

impl PriceBoard {
    /// `config_price` is `[earnings] price_per_unit`/`pixels_per_unit` (ignored when 0).
    pub fn new(
        preference: PricePreference,
        price_per_unit: U256,
        pixels_per_unit: U256,
    ) -> PriceBoard {
        let config =
            (!price_per_unit.is_zero() && !pixels_per_unit.is_zero()).then(|| PriceSnapshot {
                price_per_unit,
                pixels_per_unit,
                source: PriceSource::Config,
                at_ms: crate::util::now_ms(),
                orchestrator: None,
            });
        PriceBoard {
            preference,
            config,
            orchestrator: Mutex::new(None),
            pool: Mutex::new(None),
            round: Mutex::new(None),
        }
    }

    /// A price quoted by the orchestrator (`GetOrchestrator`). A zero `pixels_per_unit` is
    /// ignored: it would divide by zero.
    pub fn set_orchestrator(
        &self,
        price_per_unit: U256,
        pixels_per_unit: U256,
        orchestrator: Option<Address>,
    ) {
        if pixels_per_unit.is_zero() {
            return;
        }
        if let Ok(mut g) = self.orchestrator.lock() {
            *g = Some(PriceSnapshot {
                price_per_unit,
                pixels_per_unit,
                source: PriceSource::Orchestrator,
                at_ms: crate::util::now_ms(),
                orchestrator,
            });
        }
    }

    /// The orchestrator stopped answering `GetOrchestrator`: its quote no longer stands.
    pub fn clear_orchestrator(&self) {
        if let Ok(mut g) = self.orchestrator.lock() {
            *g = None;
        }
    }

    /// The price per pixel a pool reported (pixelsPerUnit 1).
    pub fn set_pool(&self, price_per_pixel: U256, at_ms: u64) {
        if let Ok(mut g) = self.pool.lock() {
            *g = Some(PriceSnapshot {
                price_per_unit: price_per_pixel,
                pixels_per_unit: U256::from(1),
                source: PriceSource::Pool,
                at_ms,
                orchestrator: None,
            });
        }
    }

    /// The Livepeer round, when the chain watcher has read it.
    pub fn set_round(&self, round: u64) {
        if let Ok(mut g) = self.round.lock() {
            *g = Some(round);
        }
    }

    pub fn round(&self) -> Option<u64> {
        self.round.lock().ok().and_then(|g| *g)
    }

    pub fn orchestrator_quote(&self) -> Option<PriceSnapshot> {
        self.orchestrator.lock().ok().and_then(|g| *g)
    }

    /// The price a job completing now is valued at.
    pub fn current(&self) -> PriceSnapshot {
        let orch = self.orchestrator_quote();
        let pool = self.pool.lock().ok().and_then(|g| *g);
        let pick = match self.preference {
            PricePreference::Auto => orch.or(self.config).or(pool),
            PricePreference::Orchestrator => orch,
            PricePreference::Config => self.config,
            PricePreference::Pool => pool,
        };
        pick.unwrap_or_else(PriceSnapshot::none)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_orchestrator_then_config_then_pool() {
        let b = PriceBoard::new(PricePreference::Auto, U256::ZERO, U256::from(1));
        assert_eq!(b.current().source, PriceSource::None);
        b.set_pool(U256::from(2), 5);
        assert_eq!(b.current().source, PriceSource::Pool);
        let b = PriceBoard::new(PricePreference::Auto, U256::from(3), U256::from(1));
        b.set_pool(U256::from(2), 5);
        assert_eq!(b.current().source, PriceSource::Config);
        b.set_orchestrator(U256::from(1200), U256::from(1000), None);
        let p = b.current();
        assert_eq!(
            (p.source, p.price_per_unit),
            (PriceSource::Orchestrator, U256::from(1200))
        );
        // A zero pixelsPerUnit quote is refused.
        b.set_orchestrator(U256::from(5), U256::ZERO, None);
        assert_eq!(b.current().price_per_unit, U256::from(1200));
        let c = PriceBoard::new(PricePreference::Config, U256::from(3), U256::from(1));
        c.set_orchestrator(U256::from(1200), U256::from(1000), None);
        assert_eq!(c.current().source, PriceSource::Config);
    }
}
