//! Pool models: how a job's gross value (pixels × price) becomes what the pool credits you.
//!
//! - `livepool`: the pool keeps 10 % (its fee share is 90 %) and a commission in basis
//!   points: net = gross × 0.9 × (1 − bps/10⁴); pays (pending − gas) once pending exceeds
//!   2500 × 21000 × gas price.
//! - `openpool`: the price is truncated to whole wei per pixel, then a commission fraction:
//!   net = pixels × ⌊price/pixelsPerUnit⌋ × (1 − commission); pays above 5·10¹⁵ wei.
//! - `orchestrator`: your own node; delegators get feeShare/10⁶ of the fees:
//!   net = gross × (1 − feeShare/10⁶).
//! - `custom`: net = gross × share, optionally with openpool's truncation.
//!
//! All amounts are exact fractions ([`Frac`]); rounding happens once, in the statement.

use alloy::primitives::U256;
use serde::Serialize;

use super::money::{Frac, MoneyError};
use super::price::PriceSnapshot;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Livepool,
    Openpool,
    Orchestrator,
    Custom,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Livepool => "livepool",
            ModelKind::Openpool => "openpool",
            ModelKind::Orchestrator => "orchestrator",
            ModelKind::Custom => "custom",
        }
    }
}

/// Open Pool's default payout threshold, wei (0.005 ETH).
pub const OPENPOOL_THRESHOLD_WEI: u64 = 5_000_000_000_000_000;
/// Gas of a plain ETH transfer.
pub const TRANSFER_GAS: u64 = 21_000;
/// Livepool pays once pending exceeds this many transfers' worth of gas.
pub const LIVEPOOL_THRESHOLD_TRANSFERS: u64 = 2_500;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolModel {
    pub kind: ModelKind,
    /// Share of the (truncated) gross credited before commission.
    pub fee_share: Frac,
    /// Share of that the pool keeps as commission.
    pub commission: Frac,
    /// Price truncated to whole wei per pixel before multiplying by pixels.
    pub truncate_price: bool,
    /// Pending credit below this is not paid out yet (`None`: no threshold).
    pub payout_threshold: Option<U256>,
    /// Deducted from each payout for its gas (livepool), wei.
    pub gas_per_payout: U256,
}

impl PoolModel {
    pub fn livepool(commission_bps: u32, gas_price: U256, threshold: Option<U256>) -> PoolModel {
        let gas = gas_price.saturating_mul(U256::from(TRANSFER_GAS));
        PoolModel {
            kind: ModelKind::Livepool,
            fee_share: Frac::ratio(9, 10).unwrap_or(Frac::ONE),
            commission: Frac::ratio(u64::from(commission_bps), 10_000).unwrap_or(Frac::ZERO),
            truncate_price: false,
            payout_threshold: Some(
                threshold.unwrap_or(gas.saturating_mul(U256::from(LIVEPOOL_THRESHOLD_TRANSFERS))),
            ),
            gas_per_payout: gas,
        }
    }

    pub fn openpool(commission: Frac, threshold: Option<U256>) -> PoolModel {
        PoolModel {
            kind: ModelKind::Openpool,
            fee_share: Frac::ONE,
            commission,
            truncate_price: true,
            payout_threshold: Some(threshold.unwrap_or(U256::from(OPENPOOL_THRESHOLD_WEI))),
            gas_per_payout: U256::ZERO,
        }
    }

    pub fn orchestrator(fee_share_ppm: u32) -> PoolModel {
        let delegators =
            Frac::ratio(u64::from(fee_share_ppm.min(1_000_000)), 1_000_000).unwrap_or(Frac::ZERO);
        PoolModel {
            kind: ModelKind::Orchestrator,
            fee_share: delegators.complement().unwrap_or(Frac::ZERO),
            commission: Frac::ZERO,
            truncate_price: false,
            payout_threshold: None,
            gas_per_payout: U256::ZERO,
        }
    }

    pub fn custom(share: Frac, truncate_price: bool, threshold: Option<U256>) -> PoolModel {
        PoolModel {
            kind: ModelKind::Custom,
            fee_share: share,
            commission: Frac::ZERO,
            truncate_price,
            payout_threshold: threshold,
            gas_per_payout: U256::ZERO,
        }
    }

    /// The exact value of `pixels` encoded at `price`, split the way this pool splits it.
    pub fn value(&self, pixels: u64, price: &PriceSnapshot) -> Result<Valuation, MoneyError> {
        let gross = Frac::value_of(pixels, price.price_per_unit, price.pixels_per_unit)?;
        let priced = if self.truncate_price {
            let per_pixel = price
                .price_per_unit
                .checked_div(price.pixels_per_unit)
                .unwrap_or(U256::ZERO);
            Frac::value_of(pixels, per_pixel, U256::from(1))?
        } else {
            gross
        };
        let truncation = gross.checked_sub(priced).unwrap_or(Frac::ZERO);
        let keep = self
            .commission
            .complement()
            .unwrap_or(Frac::ZERO)
            .checked_mul(self.fee_share)?;
        let net = priced.checked_mul(keep)?;
        let pool_cut = priced.checked_sub(net).unwrap_or(Frac::ZERO);
        Ok(Valuation {
            pixels: u128::from(pixels),
            gross,
            truncation,
            pool_cut,
            net,
        })
    }
}

/// An exact valuation; add them up, round once with [`Valuation::rounded`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Valuation {
    pub pixels: u128,
    pub gross: Frac,
    /// Lost to whole-wei-per-pixel truncation (openpool).
    pub truncation: Frac,
    /// Kept by the pool: fee share and commission.
    pub pool_cut: Frac,
    pub net: Frac,
}

impl Valuation {
    pub fn checked_add(self, o: &Valuation) -> Result<Valuation, MoneyError> {
        Ok(Valuation {
            pixels: self.pixels + o.pixels,
            gross: self.gross.checked_add(o.gross)?,
            truncation: self.truncation.checked_add(o.truncation)?,
            pool_cut: self.pool_cut.checked_add(o.pool_cut)?,
            net: self.net.checked_add(o.net)?,
        })
    }

    /// Whole wei, rounded down once. `commission` is everything between gross and net
    /// (truncation included), so gross = commission + net holds for every row.
    pub fn rounded(&self) -> Result<Rounded, MoneyError> {
        let gross = self.gross.floor()?;
        let net = self.net.floor()?;
        Ok(Rounded {
            pixels: self.pixels,
            gross,
            truncation: self.truncation.floor()?,
            commission: gross.saturating_sub(net),
            net,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rounded {
    pub pixels: u128,
    pub gross: U256,
    pub truncation: U256,
    pub commission: U256,
    pub net: U256,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::earnings::money::parse_fraction;
    use crate::earnings::price::{PriceSnapshot, PriceSource};

    fn price(per_unit: u64, ppu: u64) -> PriceSnapshot {
        PriceSnapshot {
            price_per_unit: U256::from(per_unit),
            pixels_per_unit: U256::from(ppu),
            source: PriceSource::Config,
            at_ms: 0,
            orchestrator: None,
        }
    }

    fn sum(model: &PoolModel, jobs: &[u64], p: &PriceSnapshot) -> Rounded {
        let mut v = Valuation::default();
        for &px in jobs {
            v = v.checked_add(&model.value(px, p).unwrap()).unwrap();
        }
        v.rounded().unwrap()
    }

    // Hand-computed: 1200 wei per 1000 pixels (1.2 wei/pixel); jobs of 1001 and 2003 pixels.
    // gross = 3004 × 1.2 = 3604.8 → 3604 (rounded once; per job it would be 1201 + 2403 = 3604
    // too, but 1201.2 + 2403.6 keeps the 0.8).
    #[test]
    fn livepool_is_90_percent_then_commission() {
        let m = PoolModel::livepool(250, U256::from(10_000_000u64), None);
        let r = sum(&m, &[1001, 2003], &price(1200, 1000));
        assert_eq!(r.gross, U256::from(3604));
        // 3604.8 × 0.9 × 0.975 = 3163.212 → 3163
        assert_eq!(r.net, U256::from(3163));
        assert_eq!(r.commission, U256::from(3604 - 3163));
        assert_eq!(r.truncation, U256::ZERO);
        // Threshold: 2500 × 21000 × 0.01 gwei.
        assert_eq!(
            m.payout_threshold,
            Some(U256::from(2500u64 * 21_000 * 10_000_000))
        );
        assert_eq!(m.gas_per_payout, U256::from(21_000u64 * 10_000_000));
    }

    #[test]
    fn openpool_truncates_price_to_whole_wei_per_pixel() {
        let m = PoolModel::openpool(parse_fraction("0.25").unwrap(), None);
        // 1.2 wei/pixel → 1 wei/pixel: 3004 wei priced, 600.8 lost to truncation.
        let r = sum(&m, &[1001, 2003], &price(1200, 1000));
        assert_eq!(r.gross, U256::from(3604));
        assert_eq!(r.truncation, U256::from(600)); // 600.8 rounded down
                                                   // 3004 × 0.75 = 2253
        assert_eq!(r.net, U256::from(2253));
        assert_eq!(r.commission, U256::from(3604 - 2253));
        assert_eq!(m.payout_threshold, Some(U256::from(OPENPOOL_THRESHOLD_WEI)));
        // Below one wei per pixel, Open Pool credits nothing at all.
        assert_eq!(sum(&m, &[1_000_000], &price(999, 1000)).net, U256::ZERO);
    }

    #[test]
    fn orchestrator_keeps_one_minus_fee_share() {
        // feeShare 250000 ppm: delegators get 25 %.
        let m = PoolModel::orchestrator(250_000);
        let r = sum(&m, &[7], &price(3, 2));
        // gross 10.5 → 10; net 7.875 → 7
        assert_eq!((r.gross, r.net), (U256::from(10), U256::from(7)));
        assert_eq!(m.payout_threshold, None);
    }

    #[test]
    fn custom_share_with_and_without_truncation() {
        let share = parse_fraction("0.85").unwrap();
        let r = sum(
            &PoolModel::custom(share, false, None),
            &[1001, 2003],
            &price(1200, 1000),
        );
        // 3604.8 × 0.85 = 3064.08
        assert_eq!(r.net, U256::from(3064));
        let r = sum(
            &PoolModel::custom(share, true, None),
            &[1001, 2003],
            &price(1200, 1000),
        );
        // 3004 × 0.85 = 2553.4
        assert_eq!(r.net, U256::from(2553));
    }

    #[test]
    fn large_prices_go_through_u512() {
        // 10^30 wei per pixel × 2^40 pixels: beyond u128, fine in U256 after the product.
        let p = PriceSnapshot {
            price_per_unit: U256::from(10u8).pow(U256::from(30)),
            ..price(0, 1)
        };
        let m = PoolModel::custom(Frac::ONE, false, None);
        let r = sum(&m, &[1 << 40], &p);
        assert_eq!(
            r.net,
            U256::from(1u64 << 40) * U256::from(10u8).pow(U256::from(30))
        );
    }
}
