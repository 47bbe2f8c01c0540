//! Filecoin bitfields as lotus writes them in JSON: run lengths, starting with an *unset* run.
//!
//! `[100000,2349]` is sectors 100000–102348; `[0,2]` is bits 0 and 1; the empty set is `[0]`
//! (or `[]`). The number of set bits is the sum of the odd-index entries. Sector bitfields hold
//! thousands of bits, so they are counted and tested by run, never expanded.

use serde::{Deserialize, Serialize};

/// A run-length bitfield, kept in its wire form.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bitfield(pub Vec<u64>);

impl Bitfield {
    /// Bits `0..n` set (used by test doubles and for partition numbers).
    pub fn first(n: u64) -> Bitfield {
        if n == 0 {
            Bitfield(vec![0])
        } else {
            Bitfield(vec![0, n])
        }
    }

    /// From sorted, distinct bit positions.
    pub fn from_sorted(bits: &[u64]) -> Bitfield {
        let mut runs = Vec::new();
        let mut pos = 0u64;
        let mut i = 0;
        while i < bits.len() {
            let start = bits[i];
            let mut end = start + 1;
            i += 1;
            while i < bits.len() && bits[i] == end {
                end += 1;
                i += 1;
            }
            runs.push(start.saturating_sub(pos));
            runs.push(end - start);
            pos = end;
        }
        if runs.is_empty() {
            runs.push(0);
        }
        Bitfield(runs)
    }

    /// Number of set bits.
    pub fn count(&self) -> u64 {
        self.0.iter().skip(1).step_by(2).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether bit `i` is set.
    pub fn contains(&self, i: u64) -> bool {
        let mut pos = 0u64;
        for (k, run) in self.0.iter().enumerate() {
            let end = pos.saturating_add(*run);
            if i < end {
                return k % 2 == 1;
            }
            pos = end;
        }
        false
    }

    /// Set bit positions, at most `limit` of them (partition numbers are few; sector numbers
    /// are never expanded this way).
    pub fn positions(&self, limit: usize) -> Vec<u64> {
        let mut out = Vec::new();
        let mut pos = 0u64;
        for (k, run) in self.0.iter().enumerate() {
            if k % 2 == 1 {
                for b in pos..pos.saturating_add(*run) {
                    if out.len() >= limit {
                        return out;
                    }
                    out.push(b);
                }
            }
            pos = pos.saturating_add(*run);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf(s: &str) -> Bitfield {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn fixture_bitfields_count_and_test_by_run() {
        let live = bf("[100000,2349]");
        assert_eq!(live.count(), 2349);
        assert!(!live.contains(99_999));
        assert!(live.contains(100_000));
        assert!(live.contains(102_348));
        assert!(!live.contains(102_349));
        assert_eq!(bf("[0]").count(), 0);
        assert!(bf("[]").is_empty());
        let proven = bf("[0,2]");
        assert_eq!(proven.positions(10), vec![0, 1]);
        assert_eq!(bf("[102349,3]").count(), 3);
        // Several runs: bits 1, 4, 5.
        let b = bf("[1,1,2,2]");
        assert_eq!(b.positions(10), vec![1, 4, 5]);
        assert_eq!(b.count(), 3);
        assert_eq!(b.positions(2), vec![1, 4]);
    }

    #[test]
    fn from_sorted_writes_the_wire_form() {
        assert_eq!(Bitfield::from_sorted(&[]), bf("[0]"));
        assert_eq!(Bitfield::from_sorted(&[0, 1]), bf("[0,2]"));
        assert_eq!(Bitfield::from_sorted(&[1, 4, 5]), bf("[1,1,2,2]"));
        assert_eq!(Bitfield::first(3), bf("[0,3]"));
        assert_eq!(serde_json::to_string(&Bitfield::first(2)).unwrap(), "[0,2]");
    }
}
