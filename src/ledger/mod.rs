//! The durable ledger (sled): jobs, renditions, pixel accounting, earnings and deals.
//!
//! Trees:
//! - `jobs`: job id → [`JobRecord`] (JSON), a state machine
//!   received → queued → transcoding → stored → done | failed;
//! - `idem`: `manifest_id \0 seq \0 profiles` → job id, so a resubmission is one job;
//! - `renditions`: CID → [`RenditionRecord`];
//! - `pixels_day` (`YYYY-MM-DD`) and `pixels_source` (manifest id) → [`Counters`];
//! - `done`: finish time (ms, big-endian) ‖ job id → job id, for statements by date;
//! - `deals`: batch id → [`DealBatch`].
//!
//! Crash safety comes from one rule: the transition to `done` and the pixel counters
//! it adds are written in one sled transaction, and only from `stored`. A job that is
//! already `done` adds nothing, so a replay after kill -9 cannot count a pixel twice,
//! and a job that never reached `done` is resumed (see `daemon::worker`).

pub mod cli;
pub mod export;
pub mod time;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database error: {0}; check the data directory's disk space and permissions")]
    Db(#[from] sled::Error),
    #[error("ledger record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} cannot go from {from:?} to {to:?}")]
    BadTransition {
        id: String,
        from: JobState,
        to: JobState,
    },
}

impl From<TransactionError<LedgerError>> for LedgerError {
    fn from(e: TransactionError<LedgerError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => LedgerError::Db(e),
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Reserved in the ledger; its segment is being spooled. No 2xx has been sent.
    Received,
    /// Segment spooled (fsynced) and record flushed: the client got its 2xx.
    Queued,
    Transcoding,
    /// Renditions are in the store; pixels not yet counted.
    Stored,
    Done,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Queued => "queued",
            JobState::Transcoding => "transcoding",
            JobState::Stored => "stored",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
    /// The allowed edges of the state machine.
    fn can_go(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Received, Queued)
                | (Queued, Transcoding)
                // A resumed job restarts its transcode.
                | (Transcoding, Transcoding)
                | (Transcoding, Stored)
                | (Stored, Done)
                | (Received | Queued | Transcoding | Stored, Failed)
        )
    }
}

/// Scheduling class: live segments have a deadline, batch jobs yield to them. The
/// scheduler's type, recorded with each job.
pub use crate::sched::JobClass;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionRecord {
    pub profile: String,
    pub cid: String,
    pub pixels: u64,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub encoder: String,
    pub mime: String,
    #[serde(default)]
    pub job_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub class: JobClass,
    pub manifest_id: Option<String>,
    pub seq: Option<u64>,
    /// Profile specs as submitted (re-parsed on resume).
    pub profiles: Vec<String>,
    pub duration_ms: u64,
    pub segment_bytes: u64,
    pub received_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Transcode attempts (> 1 after a resume).
    pub attempts: u32,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    /// Media seconds decoded.
    pub media_seconds: f64,
    /// Wall time of the last transcode attempt.
    pub transcode_ms: u64,
    pub renditions: Vec<RenditionRecord>,
    pub error: Option<JobError>,
    /// encoded_pixels × price, decimal wei (u128 does not fit JSON numbers).
    pub earnings_wei: Option<String>,
    /// The device the scheduler placed the (last) transcode on.
    #[serde(default)]
    pub device: Option<JobDevice>,
}

/// Which device transcoded a job: the scheduler's placement (`sched::Placement`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDevice {
    /// Device index (NVML's, or 0 for the host CPU).
    pub index: u32,
    /// NVML UUID (`GPU-…`), `host` for the CPU, or the simulated device's label.
    pub uuid: String,
}

/// Per-day or per-source totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub segments: u64,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    /// Decimal wei.
    pub earnings_wei: String,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            segments: 0,
            decoded_pixels: 0,
            encoded_pixels: 0,
            earnings_wei: "0".into(),
        }
    }
}

impl Counters {
    fn add(&mut self, job: &JobRecord, earnings: u128) {
        self.segments += 1;
        self.decoded_pixels += job.decoded_pixels;
        self.encoded_pixels += job.encoded_pixels;
        let prev: u128 = self.earnings_wei.parse().unwrap_or(0);
        self.earnings_wei = (prev + earnings).to_string();
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealBatch {
    pub batch_id: String,
    pub cids: Vec<String>,
    pub piece_cid: Option<String>,
    pub deal_id: Option<String>,
    pub state: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What a new submission turned into.
#[derive(Debug)]
pub enum Admitted {
    /// A fresh job in state `received`.
    New(JobRecord),
    /// The same (manifest_id, seq, profiles) was submitted before.
    Duplicate(JobRecord),
}

/// What the submitter knows about a new job.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub class: JobClass,
    pub manifest_id: Option<String>,
    pub seq: Option<u64>,
    pub profiles: Vec<String>,
    pub duration_ms: u64,
    pub segment_bytes: u64,
}

/// Price in wei for `pixels_per_unit` pixels.
#[derive(Clone, Copy, Debug)]
pub struct Price {
    pub per_unit_wei: u64,
    pub pixels_per_unit: u64,
}

impl Price {
    pub fn earnings(&self, pixels: u64) -> u128 {
        pixels as u128 * self.per_unit_wei as u128 / self.pixels_per_unit.max(1) as u128
    }
}

#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    jobs: sled::Tree,
    idem: sled::Tree,
    renditions: sled::Tree,
    days: sled::Tree,
    sources: sled::Tree,
    done: sled::Tree,
    deals: sled::Tree,
    price: Price,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: for<'de> Deserialize<'de>>(key: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn abort(e: LedgerError) -> ConflictableTransactionError<LedgerError> {
    ConflictableTransactionError::Abort(e)
}

/// The idempotency key; `None` when the submission names no manifest.
pub fn idem_key(
    manifest_id: Option<&str>,
    seq: Option<u64>,
    profiles: &[String],
) -> Option<Vec<u8>> {
    let m = manifest_id?;
    let mut k = Vec::with_capacity(m.len() + 32);
    k.extend_from_slice(m.as_bytes());
    k.push(0);
    k.extend_from_slice(seq.map(|s| s.to_string()).unwrap_or_default().as_bytes());
    k.push(0);
    k.extend_from_slice(profiles.join(",").as_bytes());
    Some(k)
}

impl Ledger {
    /// Opens (or creates) the ledger under `dir`. sled holds an exclusive lock on it.
    pub fn open(dir: &Path, cache_bytes: u64, price: Price) -> Result<Ledger> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(200))
            .open()?;
        Ok(Ledger {
            jobs: db.open_tree("jobs")?,
            idem: db.open_tree("idem")?,
            renditions: db.open_tree("renditions")?,
            days: db.open_tree("pixels_day")?,
            sources: db.open_tree("pixels_source")?,
            done: db.open_tree("done")?,
            deals: db.open_tree("deals")?,
            db,
            price,
        })
    }

    pub fn price(&self) -> Price {
        self.price
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Reserves a job for a submission, or returns the existing one for a duplicate.
    pub fn admit(&self, new: NewJob) -> Result<Admitted> {
        let id = format!("{:016x}", self.db.generate_id()? ^ 0x5a17_0000_0000_0000);
        let now = time::now_ms();
        let record = JobRecord {
            job_id: id.clone(),
            state: JobState::Received,
            class: new.class,
            manifest_id: new.manifest_id,
            seq: new.seq,
            profiles: new.profiles,
            duration_ms: new.duration_ms,
            segment_bytes: new.segment_bytes,
            received_at_ms: now,
            updated_at_ms: now,
            finished_at_ms: None,
            attempts: 0,
            decoded_pixels: 0,
            encoded_pixels: 0,
            media_seconds: 0.0,
            transcode_ms: 0,
            renditions: Vec::new(),
            error: None,
            earnings_wei: None,
            device: None,
        };
        let key = idem_key(record.manifest_id.as_deref(), record.seq, &record.profiles);
        let out = (&self.jobs, &self.idem).transaction(|(jobs, idem)| {
            if let Some(k) = &key {
                if let Some(existing) = idem.get(k)? {
                    let Some(raw) = jobs.get(&existing)? else {
                        return Err(abort(LedgerError::NotFound(
                            String::from_utf8_lossy(&existing).into_owned(),
                        )));
                    };
                    return dec(&existing, &raw).map(Admitted::Duplicate).map_err(abort);
                }
                idem.insert(k.as_slice(), id.as_bytes())?;
            }
            jobs.insert(id.as_bytes(), enc(&record))?;
            Ok(Admitted::New(record.clone()))
        })?;
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRecord>> {
        match self.jobs.get(id.as_bytes())? {
            Some(raw) => Ok(Some(dec(id.as_bytes(), &raw)?)),
            None => Ok(None),
        }
    }

    /// Applies `f` to a job after checking the state edge `→ to`.
    fn update(&self, id: &str, to: JobState, f: impl Fn(&mut JobRecord)) -> Result<JobRecord> {
        let out = self.jobs.transaction(|jobs| {
            let raw = jobs
                .get(id.as_bytes())?
                .ok_or_else(|| abort(LedgerError::NotFound(id.to_string())))?;
            let mut rec: JobRecord = dec(id.as_bytes(), &raw).map_err(abort)?;
            if !rec.state.can_go(to) {
                return Err(abort(LedgerError::BadTransition {
                    id: id.to_string(),
                    from: rec.state,
                    to,
                }));
            }
            rec.state = to;
            rec.updated_at_ms = time::now_ms();
            f(&mut rec);
            jobs.insert(id.as_bytes(), enc(&rec))?;
            Ok(rec)
        })?;
        Ok(out)
    }

    /// received → queued, once the segment is spooled.
    pub fn mark_queued(&self, id: &str) -> Result<JobRecord> {
        self.update(id, JobState::Queued, |_| {})
    }

    pub fn mark_transcoding(&self, id: &str) -> Result<JobRecord> {
        self.update(id, JobState::Transcoding, |r| r.attempts += 1)
    }

    /// queued → transcoding on the device the scheduler placed the job on.
    pub fn mark_transcoding_on(&self, id: &str, device: JobDevice) -> Result<JobRecord> {
        self.update(id, JobState::Transcoding, |r| {
            r.attempts += 1;
            r.device = Some(device.clone());
        })
    }

    /// transcoding → stored: renditions and their pixel counts, not yet counted.
    pub fn mark_stored(
        &self,
        id: &str,
        decoded_pixels: u64,
        media_seconds: f64,
        transcode_ms: u64,
        renditions: Vec<RenditionRecord>,
    ) -> Result<JobRecord> {
        self.update(id, JobState::Stored, |r| {
            r.decoded_pixels = decoded_pixels;
            r.encoded_pixels = renditions.iter().map(|x| x.pixels).sum();
            r.media_seconds = media_seconds;
            r.transcode_ms = transcode_ms;
            r.renditions = renditions
                .iter()
                .cloned()
                .map(|mut x| {
                    x.job_id = id.to_string();
                    x
                })
                .collect();
        })
    }

    pub fn fail(&self, id: &str, code: &str, message: &str) -> Result<JobRecord> {
        let now = time::now_ms();
        self.update(id, JobState::Failed, |r| {
            r.finished_at_ms = Some(now);
            r.error = Some(JobError {
                code: code.to_string(),
                message: message.to_string(),
            });
        })
    }

    /// A job that never got its 2xx (crash while spooling): failed, and its idempotency
    /// key released so the client's retry becomes a fresh job.
    pub fn abandon_received(&self, id: &str) -> Result<()> {
        (&self.jobs, &self.idem).transaction(|(jobs, idem)| {
            let Some(raw) = jobs.get(id.as_bytes())? else {
                return Ok(());
            };
            let mut rec: JobRecord = dec(id.as_bytes(), &raw).map_err(abort)?;
            if rec.state != JobState::Received {
                return Ok(());
            }
            if let Some(k) = idem_key(rec.manifest_id.as_deref(), rec.seq, &rec.profiles) {
                if idem.get(&k)?.as_deref() == Some(id.as_bytes()) {
                    idem.remove(k)?;
                }
            }
            rec.state = JobState::Failed;
            rec.finished_at_ms = Some(time::now_ms());
            rec.error = Some(JobError {
                code: "interrupted".into(),
                message: "the daemon stopped before the segment was accepted; submit it again"
                    .into(),
            });
            jobs.insert(id.as_bytes(), enc(&rec))?;
            Ok(())
        })?;
        Ok(())
    }

    /// stored → done, adding the job's pixels and earnings to the day and source
    /// counters in the same transaction. Returns `None` when the job was already done
    /// (nothing is counted again).
    pub fn complete(&self, id: &str) -> Result<Option<JobRecord>> {
        let price = self.price;
        let trees = (
            &self.jobs,
            &self.renditions,
            &self.days,
            &self.sources,
            &self.done,
        );
        let out = trees.transaction(|(jobs, rends, days, sources, done)| {
            let raw = jobs
                .get(id.as_bytes())?
                .ok_or_else(|| abort(LedgerError::NotFound(id.to_string())))?;
            let mut rec: JobRecord = dec(id.as_bytes(), &raw).map_err(abort)?;
            if rec.state == JobState::Done {
                return Ok(None);
            }
            if !rec.state.can_go(JobState::Done) {
                return Err(abort(LedgerError::BadTransition {
                    id: id.to_string(),
                    from: rec.state,
                    to: JobState::Done,
                }));
            }
            let now = time::now_ms();
            let earnings = price.earnings(rec.encoded_pixels);
            rec.state = JobState::Done;
            rec.updated_at_ms = now;
            rec.finished_at_ms = Some(now);
            rec.earnings_wei = Some(earnings.to_string());
            for r in &rec.renditions {
                rends.insert(r.cid.as_bytes(), enc(r))?;
            }
            let day = time::day_of(now);
            let source = rec.manifest_id.clone().unwrap_or_else(|| "-".into());
            for (tree, key) in [(days, day.as_str()), (sources, source.as_str())] {
                let mut c: Counters = match tree.get(key.as_bytes())? {
                    Some(v) => dec(key.as_bytes(), &v).map_err(abort)?,
                    None => Counters::default(),
                };
                c.add(&rec, earnings);
                tree.insert(key.as_bytes(), enc(&c))?;
            }
            let mut dk = now.to_be_bytes().to_vec();
            dk.extend_from_slice(id.as_bytes());
            done.insert(dk, id.as_bytes())?;
            jobs.insert(id.as_bytes(), enc(&rec))?;
            Ok(Some(rec))
        })?;
        Ok(out)
    }

    /// Every job not in a final state, oldest first (job ids grow with time).
    pub fn unfinished(&self) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            let rec: JobRecord = dec(&k, &v)?;
            if !rec.state.is_final() {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Jobs per state (a scan: for status pages, not hot paths).
    pub fn state_counts(&self) -> Result<std::collections::BTreeMap<&'static str, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for kv in self.jobs.iter() {
            let (k, v) = kv?;
            let rec: JobRecord = dec(&k, &v)?;
            *out.entry(rec.state.as_str()).or_insert(0) += 1;
        }
        Ok(out)
    }

    pub fn rendition(&self, cid: &str) -> Result<Option<RenditionRecord>> {
        match self.renditions.get(cid.as_bytes())? {
            Some(v) => Ok(Some(dec(cid.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Jobs done at or after `since_ms`, in finishing order.
    pub fn done_since(&self, since_ms: u64) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for kv in self.done.range(since_ms.to_be_bytes().to_vec()..) {
            let (k, id) = kv?;
            let raw = self
                .jobs
                .get(&id)?
                .ok_or_else(|| LedgerError::NotFound(String::from_utf8_lossy(&id).into()))?;
            let rec: JobRecord = dec(&k, &raw)?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Day buckets from `since_day` (`YYYY-MM-DD`) on.
    pub fn days_since(&self, since_day: &str) -> Result<Vec<(String, Counters)>> {
        let mut out = Vec::new();
        for kv in self.days.range(since_day.as_bytes().to_vec()..) {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), dec(&k, &v)?));
        }
        Ok(out)
    }

    pub fn sources(&self) -> Result<Vec<(String, Counters)>> {
        let mut out = Vec::new();
        for kv in self.sources.iter() {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k).into_owned(), dec(&k, &v)?));
        }
        Ok(out)
    }

    pub fn source(&self, manifest_id: &str) -> Result<Option<Counters>> {
        match self.sources.get(manifest_id.as_bytes())? {
            Some(v) => Ok(Some(dec(manifest_id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    /// Records or updates a deal batch (written by the store's deal stage).
    pub fn put_deal(&self, deal: &DealBatch) -> Result<()> {
        self.deals.insert(deal.batch_id.as_bytes(), enc(deal))?;
        Ok(())
    }

    pub fn deals(&self) -> Result<Vec<DealBatch>> {
        let mut out = Vec::new();
        for kv in self.deals.iter() {
            let (k, v) = kv?;
            out.push(dec(&k, &v)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(dir: &Path) -> Ledger {
        Ledger::open(
            dir,
            1 << 20,
            Price {
                per_unit_wei: 3,
                pixels_per_unit: 2,
            },
        )
        .unwrap()
    }

    fn new_job(seq: u64) -> NewJob {
        NewJob {
            class: JobClass::Live,
            manifest_id: Some("m1".into()),
            seq: Some(seq),
            profiles: vec!["P240p30fps16x9".into()],
            duration_ms: 2000,
            segment_bytes: 10,
        }
    }

    fn rendition(cid: &str, pixels: u64) -> RenditionRecord {
        RenditionRecord {
            profile: "P240p30fps16x9".into(),
            cid: cid.into(),
            pixels,
            bytes: 5,
            width: 426,
            height: 240,
            frames: 1,
            encoder: "libx264".into(),
            mime: "video/mp2t".into(),
            job_id: String::new(),
        }
    }

    #[test]
    fn state_machine_counts_pixels_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let Admitted::New(job) = l.admit(new_job(1)).unwrap() else {
            panic!("first submission is new");
        };
        let Admitted::Duplicate(dup) = l.admit(new_job(1)).unwrap() else {
            panic!("second submission is a duplicate");
        };
        assert_eq!(dup.job_id, job.job_id);
        // Skipping a state is refused.
        assert!(matches!(
            l.complete(&job.job_id),
            Err(LedgerError::BadTransition { .. })
        ));
        l.mark_queued(&job.job_id).unwrap();
        l.mark_transcoding(&job.job_id).unwrap();
        l.mark_stored(&job.job_id, 7, 1.0, 10, vec![rendition("bafy1", 1001)])
            .unwrap();
        let done = l.complete(&job.job_id).unwrap().unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.earnings_wei.as_deref(), Some("1501"));
        // A replay adds nothing.
        assert!(l.complete(&job.job_id).unwrap().is_none());
        let c = l.source("m1").unwrap().unwrap();
        assert_eq!(
            (c.segments, c.encoded_pixels, c.decoded_pixels),
            (1, 1001, 7)
        );
        assert_eq!(
            l.days_since("1970-01-01").unwrap()[0].1.encoded_pixels,
            1001
        );
        assert_eq!(l.rendition("bafy1").unwrap().unwrap().job_id, job.job_id);
        assert_eq!(l.done_since(0).unwrap().len(), 1);
        assert!(l.unfinished().unwrap().is_empty());
    }

    #[test]
    fn survives_reopen_and_releases_abandoned_keys() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let l = ledger(dir.path());
            let Admitted::New(job) = l.admit(new_job(2)).unwrap() else {
                panic!()
            };
            l.flush_blocking().unwrap();
            job.job_id
        };
        let l = ledger(dir.path());
        let open = l.unfinished().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].state, JobState::Received);
        l.abandon_received(&id).unwrap();
        assert_eq!(l.get(&id).unwrap().unwrap().state, JobState::Failed);
        // The key is free again: a retry is a new job.
        assert!(matches!(l.admit(new_job(2)).unwrap(), Admitted::New(_)));
    }
}
