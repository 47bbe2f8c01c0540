//! The proof schedule comine keeps, and persists so it can be followed while the node is down:
//! the miner's period offset, the network's genesis time and which deadlines hold live sectors.
//!
//! `<data>/post-schedule.json`, written atomically (temp file, fsync, rename). A file that does
//! not parse is reported and ignored (it is only a cache: the node rebuilds it), never trusted.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::bitfield::Bitfield;
use super::chain::{ChainClock, PERIOD_DEADLINES};
use super::node::Partition;

/// File name inside the data directory.
pub const SCHEDULE_FILE: &str = "post-schedule.json";
const VERSION: u32 = 1;

/// What one deadline holds (from `StateMinerPartitions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineLive {
    pub partitions: u32,
    pub live_sectors: u64,
    pub faulty_sectors: u64,
    pub recovering_sectors: u64,
    pub active_sectors: u64,
    /// Partition numbers holding live sectors: the ones a proof must cover.
    pub live_partitions: Bitfield,
}

impl DeadlineLive {
    pub fn from_partitions(parts: &[Partition]) -> DeadlineLive {
        let mut d = DeadlineLive {
            partitions: parts.len() as u32,
            ..DeadlineLive::default()
        };
        let mut live = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            d.live_sectors += p.live.count();
            d.faulty_sectors += p.faulty.count();
            d.recovering_sectors += p.recovering.count();
            d.active_sectors += p.active.count();
            if !p.live.is_empty() {
                live.push(i as u64);
            }
        }
        d.live_partitions = Bitfield::from_sorted(&live);
        d
    }

    /// A deadline with no live sectors needs no proof.
    pub fn is_live(&self) -> bool {
        self.live_sectors > 0
    }
}

/// The persisted schedule of one miner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub version: u32,
    pub miner: String,
    /// `PeriodStart mod 2880`.
    pub period_offset: i64,
    /// Genesis timestamp, Unix seconds (`head.Timestamp − 30·Height`).
    pub genesis_ts: i64,
    /// The 48 deadlines; empty until the first refresh (then every deadline counts as live).
    pub deadlines: Vec<DeadlineLive>,
    /// When `deadlines` was read from the node, ms since the Unix epoch.
    pub live_refreshed_at_ms: Option<u64>,
    /// Last successful contact with the node, ms since the Unix epoch.
    pub contact_at_ms: u64,
}

impl Schedule {
    pub fn new(miner: &str, period_offset: i64, genesis_ts: i64, contact_at_ms: u64) -> Self {
        Schedule {
            version: VERSION,
            miner: miner.to_string(),
            period_offset,
            genesis_ts,
            deadlines: Vec::new(),
            live_refreshed_at_ms: None,
            contact_at_ms,
        }
    }

    pub fn clock(&self) -> ChainClock {
        ChainClock {
            genesis_ts: self.genesis_ts,
        }
    }

    /// Whether the live map holds all 48 deadlines.
    pub fn has_live_map(&self) -> bool {
        self.deadlines.len() == PERIOD_DEADLINES as usize
    }

    pub fn deadline(&self, index: u64) -> Option<&DeadlineLive> {
        self.deadlines.get(index as usize)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the cached proof schedule {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cached proof schedule {path} is unreadable ({reason}); ignoring it, the full node rebuilds it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write the proof schedule cache {path}: {source}; check the data directory's permissions and free space")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the cache; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<Schedule>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let s: Schedule = serde_json::from_slice(&bytes).map_err(|e| CacheError::Corrupt {
                path: path.into(),
                reason: e.to_string(),
            })?;
            if s.version != VERSION
                || !(s.deadlines.is_empty() || s.has_live_map())
                || super::check_miner(&s.miner, "cache").is_err()
            {
                return Err(CacheError::Corrupt {
                    path: path.into(),
                    reason: format!("version {} or contents not understood", s.version),
                });
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CacheError::Read {
            path: path.into(),
            source: e,
        }),
    }
}

/// Writes atomically: a reader sees the old file or the new one.
pub fn save(path: &Path, s: &Schedule) -> Result<(), CacheError> {
    let werr = |source| CacheError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(s).map_err(|e| werr(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(&bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_map_from_fixture_partitions() {
        let parts: Vec<Partition> = serde_json::from_str(r#"[{"AllSectors":[100000,2349],"FaultySectors":[0],"RecoveringSectors":[0],"LiveSectors":[100000,2349],"ActiveSectors":[100000,2349]},{"AllSectors":[102349,812],"FaultySectors":[102349,3],"RecoveringSectors":[0],"LiveSectors":[102349,812],"ActiveSectors":[102352,809]}]"#).unwrap();
        let d = DeadlineLive::from_partitions(&parts);
        assert_eq!(d.partitions, 2);
        assert_eq!(d.live_sectors, 3161);
        assert_eq!(d.faulty_sectors, 3);
        assert_eq!(d.active_sectors, 3158);
        assert_eq!(d.live_partitions, Bitfield::first(2));
        assert!(d.is_live());
        assert!(!DeadlineLive::from_partitions(&[]).is_live());
    }

    #[test]
    fn cache_round_trips_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SCHEDULE_FILE);
        assert_eq!(load(&p).unwrap(), None);
        let mut s = Schedule::new("f01234", 1234, 1_598_306_400, 42);
        s.deadlines = vec![DeadlineLive::default(); 48];
        save(&p, &s).unwrap();
        assert_eq!(load(&p).unwrap(), Some(s));
        std::fs::write(&p, b"{not json").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("ignoring it"), "{e}");
    }
}
