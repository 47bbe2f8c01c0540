//! The WindowPoSt calendar as the chain defines it: epochs, proving periods, deadlines.
//!
//! Pure arithmetic from the miner actor's rules (`dline.Info` in lotus, `DeadlineInfo` in
//! builtin-actors): a miner's proving period starts at an epoch congruent to its *period offset*
//! modulo 2880; deadline `i` of a period starting at `P` opens at `P + 60·i` and closes 60 epochs
//! later; its challenge is drawn 20 epochs before it opens. Wall-clock time of an epoch is
//! `genesis + 30·epoch`. Nothing here reads a clock: callers pass the epoch or the time.

use serde::{Deserialize, Serialize};

/// Seconds per epoch.
pub const EPOCH_SECS: i64 = 30;
/// Epochs in one proving period (24 h).
pub const PROVING_PERIOD: i64 = 2880;
/// Deadlines in one proving period.
pub const PERIOD_DEADLINES: u64 = 48;
/// Epochs one deadline's window stays open (30 min).
pub const CHALLENGE_WINDOW: i64 = 60;
/// Epochs between the challenge and the window's opening.
pub const CHALLENGE_LOOKBACK: i64 = 20;
/// Epochs before the opening after which faults can no longer be declared.
pub const FAULT_DECLARATION_CUTOFF: i64 = 70;
/// Mainnet genesis, Unix seconds (used only when no head was ever seen).
pub const MAINNET_GENESIS_TS: i64 = 1_598_306_400;

/// `dline.Info`, exactly as `Filecoin.StateMinerProvingDeadline` returns it (PascalCase JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineInfo {
    #[serde(rename = "CurrentEpoch")]
    pub current_epoch: i64,
    #[serde(rename = "PeriodStart")]
    pub period_start: i64,
    #[serde(rename = "Index")]
    pub index: u64,
    #[serde(rename = "Open")]
    pub open: i64,
    #[serde(rename = "Close")]
    pub close: i64,
    #[serde(rename = "Challenge")]
    pub challenge: i64,
    #[serde(rename = "FaultCutoff")]
    pub fault_cutoff: i64,
    #[serde(rename = "WPoStPeriodDeadlines")]
    pub period_deadlines: u64,
    #[serde(rename = "WPoStProvingPeriod")]
    pub proving_period: i64,
    #[serde(rename = "WPoStChallengeWindow")]
    pub challenge_window: i64,
    #[serde(rename = "WPoStChallengeLookback")]
    pub challenge_lookback: i64,
    #[serde(rename = "FaultDeclarationCutoff")]
    pub fault_declaration_cutoff: i64,
}

impl DeadlineInfo {
    /// Deadline `index` of the period starting at `period_start`, seen at `current_epoch`
    /// (lotus `dline.NewInfo`).
    pub fn new(period_start: i64, index: u64, current_epoch: i64) -> DeadlineInfo {
        let open = period_start + index as i64 * CHALLENGE_WINDOW;
        DeadlineInfo {
            current_epoch,
            period_start,
            index,
            open,
            close: open + CHALLENGE_WINDOW,
            challenge: open - CHALLENGE_LOOKBACK,
            fault_cutoff: open - FAULT_DECLARATION_CUTOFF,
            period_deadlines: PERIOD_DEADLINES,
            proving_period: PROVING_PERIOD,
            challenge_window: CHALLENGE_WINDOW,
            challenge_lookback: CHALLENGE_LOOKBACK,
            fault_declaration_cutoff: FAULT_DECLARATION_CUTOFF,
        }
    }

    /// The deadline open at `epoch` for a miner with this period offset (what the node returns
    /// for `StateMinerProvingDeadline` at that height).
    pub fn at(period_offset: i64, epoch: i64) -> DeadlineInfo {
        let start = period_start_at(period_offset, epoch);
        let index = ((epoch - start) / CHALLENGE_WINDOW) as u64;
        DeadlineInfo::new(start, index, epoch)
    }

    /// The miner's period offset: `PeriodStart mod 2880`.
    pub fn period_offset(&self) -> i64 {
        self.period_start.rem_euclid(PROVING_PERIOD)
    }

    /// True when the reply agrees with the formulas (a node on another network's constants,
    /// or a garbled reply, does not).
    pub fn is_consistent(&self) -> bool {
        self.index < PERIOD_DEADLINES
            && self.proving_period == PROVING_PERIOD
            && self.challenge_window == CHALLENGE_WINDOW
            && self.period_deadlines == PERIOD_DEADLINES
            && *self == DeadlineInfo::new(self.period_start, self.index, self.current_epoch)
    }
}

/// Start of the proving period containing `epoch` (the largest `P ≤ epoch` with
/// `P ≡ offset mod 2880`).
pub fn period_start_at(period_offset: i64, epoch: i64) -> i64 {
    let offset = period_offset.rem_euclid(PROVING_PERIOD);
    epoch - (epoch - offset).rem_euclid(PROVING_PERIOD)
}

/// One window of one deadline, in epochs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub index: u64,
    pub open: i64,
    pub close: i64,
    pub challenge: i64,
}

/// The window of deadline `index` that has not closed yet at `epoch`: the one open now, or the
/// next one.
pub fn next_window(period_offset: i64, index: u64, epoch: i64) -> Window {
    let start = period_start_at(period_offset, epoch);
    let mut open = start + index as i64 * CHALLENGE_WINDOW;
    if open + CHALLENGE_WINDOW <= epoch {
        open += PROVING_PERIOD;
    }
    Window {
        index,
        open,
        close: open + CHALLENGE_WINDOW,
        challenge: open - CHALLENGE_LOOKBACK,
    }
}

/// Converts between epochs and wall-clock time for one network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainClock {
    /// Genesis timestamp, Unix seconds.
    pub genesis_ts: i64,
}

impl ChainClock {
    /// From a head: `timestamp − 30·height`.
    pub fn from_head(height: i64, timestamp: i64) -> ChainClock {
        ChainClock {
            genesis_ts: timestamp - EPOCH_SECS * height,
        }
    }

    /// Wall-clock start of `epoch`, ms since the Unix epoch.
    pub fn epoch_ms(&self, epoch: i64) -> i64 {
        (self.genesis_ts + EPOCH_SECS * epoch) * 1000
    }

    /// The epoch running at `ms` (floor).
    pub fn epoch_at(&self, ms: i64) -> i64 {
        (ms - self.genesis_ts * 1000).div_euclid(EPOCH_SECS * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture reply (lotus-deadline-fixtures.json): miner offset 1234, head 5000011.
    #[test]
    fn formulas_reproduce_the_fixture_reply() {
        let json = r#"{"CurrentEpoch":5000011,"PeriodStart":4998034,"Index":32,"Open":4999954,"Close":5000014,"Challenge":4999934,"FaultCutoff":4999884,"WPoStPeriodDeadlines":48,"WPoStProvingPeriod":2880,"WPoStChallengeWindow":60,"WPoStChallengeLookback":20,"FaultDeclarationCutoff":70}"#;
        let node: DeadlineInfo = serde_json::from_str(json).unwrap();
        assert_eq!(DeadlineInfo::at(1234, 5000011), node);
        assert_eq!(node.period_offset(), 1234);
        assert!(node.is_consistent());
        assert_eq!(serde_json::to_string(&node).unwrap(), json);
        // Deadline 33 opens when 32 closes: 3 epochs (90 s) after the head.
        let w = next_window(1234, 33, 5000011);
        assert_eq!((w.open, w.close, w.challenge), (5000014, 5000074, 4999994));
        let clock = ChainClock::from_head(5000011, 1748306730);
        assert_eq!(clock.genesis_ts, MAINNET_GENESIS_TS);
        assert_eq!(clock.epoch_ms(w.open) - clock.epoch_ms(5000011), 90_000);
    }

    #[test]
    fn period_boundaries_and_elapsed_windows() {
        // Exactly at a period start: deadline 0 of that period.
        let d = DeadlineInfo::at(1234, 4998034);
        assert_eq!((d.period_start, d.index), (4998034, 0));
        // One epoch before: deadline 47 of the previous period.
        let d = DeadlineInfo::at(1234, 4998033);
        assert_eq!((d.period_start, d.index), (4998034 - 2880, 47));
        // Deadline 32 at epoch 5000014 (its close) has elapsed: the next one is a period later.
        assert_eq!(next_window(1234, 32, 5000014).open, 4999954 + 2880);
        assert_eq!(next_window(1234, 32, 5000013).open, 4999954);
        // Small heights (a devnet) and negative offsets normalise.
        assert_eq!(period_start_at(-2880 + 10, 5), 10 - 2880);
        assert_eq!(DeadlineInfo::at(10, 70).index, 1);
    }

    #[test]
    fn epoch_at_floors_and_round_trips() {
        let c = ChainClock { genesis_ts: 1000 };
        assert_eq!(c.epoch_at(c.epoch_ms(7)), 7);
        assert_eq!(c.epoch_at(c.epoch_ms(7) + 29_999), 7);
        assert_eq!(c.epoch_at(c.epoch_ms(7) - 1), 6);
    }

    #[test]
    fn a_tampered_reply_is_inconsistent() {
        let mut d = DeadlineInfo::at(1234, 5000011);
        d.open += 1;
        assert!(!d.is_consistent());
    }
}
