//! `comine earnings`: what the work earned, by day, round or job — pixels, gross, commission
//! and net under the pool model, and where the price came from. Each row's exact sum is
//! rounded down to whole wei once.

use std::collections::BTreeMap;

use alloy::primitives::U256;
use serde::Serialize;

use super::model::{PoolModel, Valuation};
use super::money::MoneyError;
use super::records::JobEarning;
use crate::ledger::time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Day,
    Round,
    Job,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The day (`YYYY-MM-DD`), round number, or job id.
    pub key: String,
    pub jobs: u64,
    /// Encoded pixels (what the orchestrator bills).
    pub pixels: String,
    pub gross_wei: String,
    pub commission_wei: String,
    pub net_wei: String,
    /// Of the commission, lost to whole-wei-per-pixel truncation.
    pub truncation_wei: String,
    /// `orchestrator`, `config`, `pool`, `none`, or several joined with `+`.
    pub price_source: String,
    /// `transcode` or `ai` (an AI row's `pixels` are Livepeer's AI billing units); the
    /// total joins the classes it sums with `+`.
    pub class: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EarningsStatement {
    pub since: String,
    pub by: By,
    pub model: &'static str,
    pub rows: Vec<Row>,
    pub total: Row,
}

/// Which round a time falls in, from the rounds the chain watcher saw begin.
pub fn round_of(rounds: &[(u64, u64)], at_ms: u64) -> Option<u64> {
    rounds
        .iter()
        .take_while(|(_, first)| *first <= at_ms)
        .last()
        .map(|(r, _)| *r)
}

#[derive(Default)]
struct Acc {
    jobs: u64,
    v: Valuation,
    sources: std::collections::BTreeSet<&'static str>,
    classes: std::collections::BTreeSet<String>,
}

impl Acc {
    fn row(&self, key: String) -> Result<Row, MoneyError> {
        let r = self.v.rounded()?;
        Ok(Row {
            key,
            jobs: self.jobs,
            pixels: r.pixels.to_string(),
            gross_wei: r.gross.to_string(),
            commission_wei: r.commission.to_string(),
            net_wei: r.net.to_string(),
            truncation_wei: r.truncation.to_string(),
            price_source: self.sources.iter().copied().collect::<Vec<_>>().join("+"),
            class: self
                .classes
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("+"),
        })
    }
}

/// Builds the statement over `jobs` (already filtered by `since`).
pub fn build(
    jobs: &[JobEarning],
    model: &PoolModel,
    by: By,
    since_ms: u64,
    rounds: &[(u64, u64)],
) -> Result<EarningsStatement, MoneyError> {
    // A period's transcoding and AI work are separate rows (units differ).
    let mut groups: BTreeMap<(u64, String, String), Acc> = BTreeMap::new();
    let mut total = Acc::default();
    for j in jobs {
        let v = model.value(j.encoded_pixels, &j.price)?;
        let (order, key) = match by {
            By::Day => (0, time::day_of(j.finished_ms)),
            By::Round => match j.round.or_else(|| round_of(rounds, j.finished_ms)) {
                Some(r) => (r, r.to_string()),
                None => (0, "-".into()),
            },
            By::Job => (j.finished_ms, j.job_id.clone()),
        };
        let acc = groups.entry((order, key, j.class.clone())).or_default();
        for a in [&mut *acc, &mut total] {
            a.jobs += 1;
            a.v = a.v.checked_add(&v)?;
            a.sources.insert(j.price.source.as_str());
            a.classes.insert(j.class.clone());
        }
    }
    let rows = groups
        .into_iter()
        .map(|((_, k, _), a)| a.row(k))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EarningsStatement {
        since: time::rfc3339(since_ms),
        by,
        model: model.kind.as_str(),
        rows,
        total: total.row("total".into())?,
    })
}

/// Today's expected earnings (UTC day), for `/v1/status` and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Today {
    pub day: String,
    pub jobs: u64,
    pub pixels: String,
    pub gross_wei: String,
    pub net_wei: String,
    pub price_source: String,
    /// The same per class (`transcode`, `ai`; AI `pixels` are billing units); the fields
    /// above sum every class.
    pub classes: BTreeMap<String, TodayClass>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TodayClass {
    pub jobs: u64,
    pub pixels: String,
    pub gross_wei: String,
    pub net_wei: String,
    pub price_source: String,
}

pub fn today(jobs: &[JobEarning], model: &PoolModel, day: &str) -> Result<Today, MoneyError> {
    let s = build(jobs, model, By::Day, 0, &[])?;
    let classes = s
        .rows
        .into_iter()
        .map(|r| {
            (
                r.class,
                TodayClass {
                    jobs: r.jobs,
                    pixels: r.pixels,
                    gross_wei: r.gross_wei,
                    net_wei: r.net_wei,
                    price_source: r.price_source,
                },
            )
        })
        .collect();
    Ok(Today {
        day: day.into(),
        jobs: s.total.jobs,
        pixels: s.total.pixels,
        gross_wei: s.total.gross_wei,
        net_wei: s.total.net_wei,
        price_source: s.total.price_source,
        classes,
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn render(s: &EarningsStatement, format: Format) -> String {
    let key = match s.by {
        By::Day => "day",
        By::Round => "round",
        By::Job => "job",
    };
    match format {
        Format::Json => serde_json::to_string_pretty(s).unwrap_or_default() + "\n",
        Format::Csv => {
            let mut out = format!(
                "{key},jobs,pixels,gross_wei,commission_wei,net_wei,truncation_wei,price_source,class\n"
            );
            for r in s.rows.iter().chain(std::iter::once(&s.total)) {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{}\n",
                    csv_field(&r.key),
                    r.jobs,
                    r.pixels,
                    r.gross_wei,
                    r.commission_wei,
                    r.net_wei,
                    r.truncation_wei,
                    csv_field(&r.price_source),
                    csv_field(&r.class)
                ));
            }
            out
        }
        Format::Table => {
            let head = [
                key,
                "jobs",
                "pixels",
                "gross (wei)",
                "commission (wei)",
                "net (wei)",
                "net (ETH)",
                "price source",
                "class",
            ];
            let mut lines: Vec<[String; 9]> = vec![head.map(String::from)];
            for r in s.rows.iter().chain(std::iter::once(&s.total)) {
                let net_eth = r
                    .net_wei
                    .parse::<U256>()
                    .map(super::money::format_eth)
                    .unwrap_or_default();
                lines.push([
                    r.key.clone(),
                    r.jobs.to_string(),
                    r.pixels.clone(),
                    r.gross_wei.clone(),
                    r.commission_wei.clone(),
                    r.net_wei.clone(),
                    net_eth,
                    r.price_source.clone(),
                    r.class.clone(),
                ]);
            }
            let widths: Vec<usize> = (0..9)
                .map(|c| {
                    lines
                        .iter()
                        .map(|l| l[c].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut out = format!("model: {}   since: {}\n", s.model, s.since);
            for (i, l) in lines.iter().enumerate() {
                if i == lines.len() - 1 && lines.len() > 2 {
                    out.push_str(
                        &widths
                            .iter()
                            .map(|w| "-".repeat(*w))
                            .collect::<Vec<_>>()
                            .join("  "),
                    );
                    out.push('\n');
                }
                let cells: Vec<String> = l
                    .iter()
                    .enumerate()
                    .map(|(c, v)| {
                        if c == 0 || c >= 7 {
                            format!("{v:<w$}", w = widths[c])
                        } else {
                            format!("{v:>w$}", w = widths[c])
                        }
                    })
                    .collect();
                out.push_str(cells.join("  ").trim_end());
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::earnings::price::{PriceSnapshot, PriceSource};

    fn job(id: &str, at: u64, px: u64, src: PriceSource) -> JobEarning {
        JobEarning {
            job_id: id.into(),
            finished_ms: at,
            manifest_id: None,
            seq: None,
            decoded_pixels: 0,
            encoded_pixels: px,
            price: PriceSnapshot {
                price_per_unit: U256::from(1200),
                pixels_per_unit: U256::from(1000),
                source: src,
                at_ms: at,
                orchestrator: None,
            },
            round: None,
            class: crate::earnings::records::CLASS_TRANSCODE.into(),
        }
    }

    /// AI jobs are rows of their own, valued in billing units at their own price;
    /// hand-computed with livepool (250 bps): × 0.9 × 0.975 = × 0.8775.
    #[test]
    fn ai_jobs_are_valued_in_their_own_rows() {
        let m = PoolModel::livepool(250, U256::from(10_000_000u64), None);
        let ai = |id: &str, units: u64| JobEarning {
            class: crate::earnings::records::CLASS_AI.into(),
            price: PriceSnapshot {
                price_per_unit: U256::from(3),
                pixels_per_unit: U256::from(2),
                source: PriceSource::Config,
                at_ms: 0,
                orchestrator: None,
            },
            ..job(id, 30, units, PriceSource::Config)
        };
        // Transcode 1001 px × 1.2 = 1201.2; AI (1001 + 1) units × 1.5 = 1503.
        let jobs = vec![
            job("a", 10, 1001, PriceSource::Orchestrator),
            ai("u1", 1001),
            ai("u2", 1),
        ];
        let s = build(&jobs, &m, By::Day, 0, &[]).unwrap();
        let cols = |r: &Row| {
            (
                r.class.clone(),
                r.jobs,
                r.pixels.clone(),
                r.gross_wei.clone(),
                r.net_wei.clone(),
            )
        };
        assert_eq!(
            s.rows.iter().map(cols).collect::<Vec<_>>(),
            [
                // 1503 × 0.8775 = 1318.8825
                ("ai".into(), 2, "1002".into(), "1503".into(), "1318".into()),
                // 1201.2 × 0.8775 = 1054.053
                (
                    "transcode".into(),
                    1,
                    "1001".into(),
                    "1201".into(),
                    "1054".into()
                ),
            ]
        );
        // 2704.2 → 2704; × 0.8775 = 2372.9355 → 2372.
        assert_eq!(
            cols(&s.total),
            (
                "ai+transcode".into(),
                3,
                "2003".into(),
                "2704".into(),
                "2372".into()
            )
        );
        let csv = render(&s, Format::Csv);
        assert!(csv.lines().next().unwrap().ends_with(",price_source,class"));
        assert!(csv.contains("1970-01-01,2,1002,1503,"), "{csv}");
        let t = today(&jobs, &m, "1970-01-01").unwrap();
        assert_eq!(t.gross_wei, "2704");
        assert_eq!(t.classes["ai"].gross_wei, "1503");
        assert_eq!(t.classes["ai"].net_wei, "1318");
        assert_eq!(t.classes["transcode"].price_source, "orchestrator");
    }

    #[test]
    fn rows_round_once_and_add_up() {
        let m = PoolModel::livepool(250, U256::from(10_000_000u64), None);
        let day = 86_400_000;
        let jobs = vec![
            job("a", 10, 1001, PriceSource::Orchestrator),
            job("b", 20, 2003, PriceSource::Config),
            job("c", day + 5, 1, PriceSource::Orchestrator),
        ];
        let s = build(&jobs, &m, By::Day, 0, &[]).unwrap();
        assert_eq!(s.rows.len(), 2);
        assert_eq!(s.rows[0].key, "1970-01-01");
        assert_eq!(s.rows[0].gross_wei, "3604");
        assert_eq!(s.rows[0].net_wei, "3163");
        assert_eq!(s.rows[0].price_source, "config+orchestrator");
        // 3005 px × 1.2 = 3606 exactly: total rounds the exact sum, not the row sums.
        assert_eq!(s.total.gross_wei, "3606");
        let csv = render(&s, Format::Csv);
        assert!(csv.starts_with("day,jobs,pixels,gross_wei,commission_wei,net_wei"));
        assert!(render(&s, Format::Table).contains("3163"));
        let by_job = build(&jobs, &m, By::Job, 0, &[]).unwrap();
        assert_eq!(
            by_job
                .rows
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        let by_round = build(&jobs, &m, By::Round, 0, &[(7, 15), (8, day)]).unwrap();
        assert_eq!(
            by_round
                .rows
                .iter()
                .map(|r| r.key.as_str())
                .collect::<Vec<_>>(),
            ["-", "7", "8"]
        );
    }
}
