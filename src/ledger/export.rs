//! Statements an operator reconciles with a pool's payouts: one line per finished job,
//! plus day totals, as CSV or JSON.

use serde::Serialize;

use super::{time, Counters, Ledger, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Csv,
    Json,
}

#[derive(Debug, Serialize)]
pub struct Statement {
    pub since: String,
    pub generated_at: String,
    pub price_per_unit_wei: u64,
    pub pixels_per_unit: u64,
    pub totals: Counters,
    pub days: Vec<DayLine>,
    pub jobs: Vec<JobLine>,
}

#[derive(Debug, Serialize)]
pub struct DayLine {
    pub day: String,
    #[serde(flatten)]
    pub counters: Counters,
}

#[derive(Debug, Serialize)]
pub struct JobLine {
    pub finished_at: String,
    pub job_id: String,
    pub manifest_id: String,
    pub seq: Option<u64>,
    pub profiles: String,
    pub renditions: usize,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub earnings_wei: String,
    pub cids: String,
    /// Index and UUID of the device that transcoded the job (empty when unknown).
    pub device: Option<u32>,
    pub device_uuid: String,
}

/// Everything finished at or after `since_ms`.
pub fn statement(ledger: &Ledger, since_ms: u64) -> Result<Statement> {
    let price = ledger.price();
    let jobs: Vec<JobLine> = ledger
        .done_since(since_ms)?
        .into_iter()
        .map(|j| JobLine {
            finished_at: time::rfc3339(j.finished_at_ms.unwrap_or(j.updated_at_ms)),
            job_id: j.job_id,
            manifest_id: j.manifest_id.unwrap_or_default(),
            seq: j.seq,
            profiles: j.profiles.join(" "),
            renditions: j.renditions.len(),
            decoded_pixels: j.decoded_pixels,
            encoded_pixels: j.encoded_pixels,
            earnings_wei: j.earnings_wei.unwrap_or_else(|| "0".into()),
            cids: j
                .renditions
                .iter()
                .map(|r| r.cid.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            device: j.device.as_ref().map(|d| d.index),
            device_uuid: j.device.map(|d| d.uuid).unwrap_or_default(),
        })
        .collect();
    let mut totals = Counters::default();
    let mut earned: u128 = 0;
    for j in &jobs {
        totals.segments += 1;
        totals.decoded_pixels += j.decoded_pixels;
        totals.encoded_pixels += j.encoded_pixels;
        earned += j.earnings_wei.parse::<u128>().unwrap_or(0);
    }
    totals.earnings_wei = earned.to_string();
    let days = ledger
        .days_since(&time::day_of(since_ms))?
        .into_iter()
        .map(|(day, counters)| DayLine { day, counters })
        .collect();
    Ok(Statement {
        since: time::rfc3339(since_ms),
        generated_at: time::rfc3339(time::now_ms()),
        price_per_unit_wei: price.per_unit_wei,
        pixels_per_unit: price.pixels_per_unit,
        totals,
        days,
        jobs,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV: a header and one line per job; totals are the column sums.
pub fn to_csv(s: &Statement) -> String {
    let mut out = String::from(
        "finished_at,job_id,manifest_id,seq,profiles,renditions,decoded_pixels,encoded_pixels,earnings_wei,cids,device,device_uuid\n",
    );
    for j in &s.jobs {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            j.finished_at,
            j.job_id,
            csv_field(&j.manifest_id),
            j.seq.map(|s| s.to_string()).unwrap_or_default(),
            csv_field(&j.profiles),
            j.renditions,
            j.decoded_pixels,
            j.encoded_pixels,
            j.earnings_wei,
            j.cids,
            j.device.map(|d| d.to_string()).unwrap_or_default(),
            csv_field(&j.device_uuid)
        ));
    }
    out
}

pub fn render(s: &Statement, format: Format) -> String {
    match format {
        Format::Csv => to_csv(s),
        Format::Json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
    }
}
