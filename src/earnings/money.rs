//! Exact money: wei as `U256`, exact fractions of wei in `U512`, parsing of decimal
//! fractions ("0.25", "25%", "1/4") without floats.
//!
//! A price is wei per `pixelsPerUnit` pixels, so one job is worth
//! `pixels × pricePerUnit ÷ pixelsPerUnit` wei: usually not a whole number. Sums are kept as
//! exact fractions and rounded down to whole wei once, when a statement is made. Every
//! product of two wei-sized numbers goes through `U512` (`U256 × U256` can overflow).

use std::fmt;

pub use alloy::primitives::{U256, U512};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{what} overflows 256 bits")]
    Overflow { what: &'static str },
    #[error("a fraction cannot have a zero denominator")]
    ZeroDenominator,
    #[error("{input:?} is not {expected}")]
    Parse {
        input: String,
        expected: &'static str,
    },
}

/// Widens a `U256` (always fits).
pub fn wide(x: U256) -> U512 {
    let mut limbs = [0u64; 8];
    limbs[..4].copy_from_slice(x.as_limbs());
    U512::from_limbs(limbs)
}

/// Narrows a `U512` to `U256`, or `None` when it does not fit.
pub fn narrow(x: U512) -> Option<U256> {
    let limbs = x.as_limbs();
    if limbs[4..].iter().any(|&l| l != 0) {
        return None;
    }
    let mut out = [0u64; 4];
    out.copy_from_slice(&limbs[..4]);
    Some(U256::from_limbs(out))
}

/// An exact, non-negative fraction `num / den`, kept reduced.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Frac {
    num: U512,
    den: U512,
}

impl fmt::Debug for Frac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

impl fmt::Display for Frac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == U512::from(1u8) {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

impl Default for Frac {
    fn default() -> Self {
        Frac::ZERO
    }
}

impl Frac {
    pub const ZERO: Frac = Frac {
        num: U512::ZERO,
        den: U512::from_limbs([1, 0, 0, 0, 0, 0, 0, 0]),
    };
    pub const ONE: Frac = Frac {
        num: U512::from_limbs([1, 0, 0, 0, 0, 0, 0, 0]),
        den: U512::from_limbs([1, 0, 0, 0, 0, 0, 0, 0]),
    };

    pub fn new(num: U512, den: U512) -> Result<Frac, MoneyError> {
        if den.is_zero() {
            return Err(MoneyError::ZeroDenominator);
        }
        if num.is_zero() {
            return Ok(Frac::ZERO);
        }
        let g = num.gcd(den);
        Ok(Frac {
            num: num / g,
            den: den / g,
        })
    }

    pub fn ratio(num: u64, den: u64) -> Result<Frac, MoneyError> {
        Frac::new(U512::from(num), U512::from(den))
    }

    pub fn from_wei(w: U256) -> Frac {
        Frac {
            num: wide(w),
            den: U512::from(1u8),
        }
    }

    pub fn numer(&self) -> U512 {
        self.num
    }
    pub fn denom(&self) -> U512 {
        self.den
    }
    pub fn is_zero(&self) -> bool {
        self.num.is_zero()
    }

    /// `pixels × price ÷ pixels_per_unit`: the exact value of `pixels` at a price.
    pub fn value_of(
        pixels: u64,
        price_per_unit: U256,
        pixels_per_unit: U256,
    ) -> Result<Frac, MoneyError> {
        let num =
            U512::from(pixels)
                .checked_mul(wide(price_per_unit))
                .ok_or(MoneyError::Overflow {
                    what: "pixels × price",
                })?;
        Frac::new(num, wide(pixels_per_unit))
    }

    pub fn checked_add(self, o: Frac) -> Result<Frac, MoneyError> {
        let over = MoneyError::Overflow {
            what: "a sum of fractions",
        };
        if self.den == o.den {
            return Frac::new(self.num.checked_add(o.num).ok_or(over)?, self.den);
        }
        let g = self.den.gcd(o.den);
        let (a, b) = (self.den / g, o.den / g);
        let den = self.den.checked_mul(b).ok_or(over.clone())?;
        let num = self
            .num
            .checked_mul(b)
            .and_then(|x| o.num.checked_mul(a).and_then(|y| x.checked_add(y)))
            .ok_or(over)?;
        Frac::new(num, den)
    }

    /// `self − o`, or `None` when `o > self`.
    pub fn checked_sub(self, o: Frac) -> Option<Frac> {
        let g = self.den.gcd(o.den);
        let (a, b) = (self.den / g, o.den / g);
        let den = self.den.checked_mul(b)?;
        let x = self.num.checked_mul(b)?;
        let y = o.num.checked_mul(a)?;
        Frac::new(x.checked_sub(y)?, den).ok()
    }

    pub fn checked_mul(self, o: Frac) -> Result<Frac, MoneyError> {
        // Cross-reduce first so the products stay small.
        let g1 = self.num.gcd(o.den).max(U512::from(1u8));
        let g2 = o.num.gcd(self.den).max(U512::from(1u8));
        let over = MoneyError::Overflow {
            what: "a product of fractions",
        };
        let num = (self.num / g1)
            .checked_mul(o.num / g2)
            .ok_or(over.clone())?;
        let den = (self.den / g2).checked_mul(o.den / g1).ok_or(over)?;
        Frac::new(num, den)
    }

    /// Rounds down to whole wei (the one rounding a statement makes).
    pub fn floor(self) -> Result<U256, MoneyError> {
        narrow(self.num / self.den).ok_or(MoneyError::Overflow { what: "an amount" })
    }

    /// `1 − self`, for shares given as what is taken (a commission).
    pub fn complement(self) -> Option<Frac> {
        Frac::ONE.checked_sub(self)
    }

    pub fn le_one(&self) -> bool {
        self.num <= self.den
    }
}

/// Parses a whole number of wei: decimal digits (`_` allowed), or `0x` hex.
pub fn parse_wei(s: &str) -> Result<U256, MoneyError> {
    let t = s.trim().replace('_', "");
    let err = || MoneyError::Parse {
        input: s.to_string(),
        expected: "a whole number of wei (decimal digits or 0x hex)",
    };
    if t.is_empty() {
        return Err(err());
    }
    if let Some(h) = t.strip_prefix("0x") {
        return U256::from_str_radix(h, 16).map_err(|_| err());
    }
    if !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    U256::from_str_radix(&t, 10).map_err(|_| err())
}

/// Parses an exact fraction: `0.25`, `25%`, `1/4`, `1`, `0`.
pub fn parse_fraction(s: &str) -> Result<Frac, MoneyError> {
    let t = s.trim();
    let err = || MoneyError::Parse {
        input: s.to_string(),
        expected: "a fraction such as 0.25, 25% or 1/4",
    };
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    let int = |x: &str| -> Result<U512, MoneyError> {
        if !digits(x) || x.len() > 60 {
            return Err(err());
        }
        U512::from_str_radix(x, 10).map_err(|_| err())
    };
    if let Some((n, d)) = t.split_once('/') {
        return Frac::new(int(n.trim())?, int(d.trim())?).map_err(|_| err());
    }
    let (body, scale) = match t.strip_suffix('%') {
        Some(b) => (b.trim(), U512::from(100u8)),
        None => (t, U512::from(1u8)),
    };
    let (whole, frac) = body.split_once('.').unwrap_or((body, ""));
    if (whole.is_empty() && frac.is_empty())
        || (!whole.is_empty() && !digits(whole))
        || (!frac.is_empty() && !digits(frac))
    {
        return Err(err());
    }
    if frac.len() > 40 {
        return Err(err());
    }
    let ten = U512::from(10u8);
    let den = ten.pow(U512::from(frac.len())) * scale;
    let num = format!("{}{}", if whole.is_empty() { "0" } else { whole }, frac);
    Frac::new(int(&num)?, den)
}

/// `wei` as ETH with all 18 decimals kept (`1.500000000000000000`), for tables.
pub fn format_eth(wei: U256) -> String {
    let s = wei.to_string();
    let s = format!("{s:0>19}");
    let (i, f) = s.split_at(s.len() - 18);
    format!("{i}.{f}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_exact_and_rounded_once() {
        // 3 pixels at 1 wei per 2 pixels: 1.5 wei; twice is 3 wei, not 2.
        let one = Frac::value_of(3, U256::from(1), U256::from(2)).unwrap();
        assert_eq!(one.floor().unwrap(), U256::from(1));
        let two = one.checked_add(one).unwrap();
        assert_eq!(two.floor().unwrap(), U256::from(3));
        // Mixed denominators.
        let a = Frac::value_of(1, U256::from(1), U256::from(3)).unwrap();
        let b = Frac::value_of(1, U256::from(2), U256::from(3)).unwrap();
        assert_eq!(a.checked_add(b).unwrap(), Frac::ONE);
    }

    #[test]
    fn wide_products_do_not_overflow() {
        // faceValue × winProb would overflow U256; through U512 it does not.
        let big = U256::MAX;
        let v = Frac::value_of(u64::MAX, big, U256::MAX).unwrap();
        assert_eq!(v.floor().unwrap(), U256::from(u64::MAX));
        assert!(Frac::value_of(2, big, U256::from(1))
            .unwrap()
            .floor()
            .is_err());
    }

    #[test]
    fn parses_fractions_and_wei() {
        assert_eq!(parse_fraction("0.25").unwrap(), Frac::ratio(1, 4).unwrap());
        assert_eq!(parse_fraction("25%").unwrap(), Frac::ratio(1, 4).unwrap());
        assert_eq!(parse_fraction("1/4").unwrap(), Frac::ratio(1, 4).unwrap());
        assert_eq!(parse_fraction("1").unwrap(), Frac::ONE);
        assert_eq!(parse_fraction(".5").unwrap(), Frac::ratio(1, 2).unwrap());
        for bad in ["", "abc", "1/0", "-0.1", "0.2.3", "1e3"] {
            assert!(parse_fraction(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_wei("1_000").unwrap(), U256::from(1000));
        assert_eq!(parse_wei("0x10").unwrap(), U256::from(16));
        assert!(parse_wei("1.5").is_err());
        assert!(parse_wei("-1").is_err());
        assert_eq!(
            format_eth(U256::from(1_500_000_000_000_000_000u128)),
            "1.500000000000000000"
        );
        assert_eq!(format_eth(U256::from(5)), "0.000000000000000005");
    }

    #[test]
    fn subtraction_and_complement() {
        let q = Frac::ratio(1, 4).unwrap();
        assert_eq!(q.complement().unwrap(), Frac::ratio(3, 4).unwrap());
        assert!(Frac::ratio(5, 4).unwrap().complement().is_none());
        assert_eq!(
            Frac::ratio(3, 4)
                .unwrap()
                .checked_mul(Frac::ratio(2, 3).unwrap())
                .unwrap(),
            Frac::ratio(1, 2).unwrap()
        );
    }
}
