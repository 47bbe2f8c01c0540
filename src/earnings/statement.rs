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

struct Acc {
    jobs: u64,
    v: Valuation,
    sources: std::collections::BTreeSet<&'static str>,
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
    let mut groups: BTreeMap<(u64, String), Acc> = BTreeMap::new();
    let mut total = Acc {
        jobs: 0,
        v: Valuation::default(),
        sources: Default::default(),
    };
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
        let acc = groups.entry((order, key)).or_insert_with(|| Acc {
            jobs: 0,
            v: Valuation::default(),
            sources: Default::default(),
        });
        for a in [&mut *acc, &mut total] {
            a.jobs += 1;
            a.v = a.v.checked_add(&v)?;
            a.sources.insert(j.price.source.as_str());
        }
    }
    let rows = groups
        .into_iter()
        .map(|((_, k), a)| a.row(k))
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
}

pub fn today(jobs: &[JobEarning], model: &PoolModel, day: &str) -> Result<Today, MoneyError> {
    let s = build(jobs, model, By::Day, 0, &[])?;
    Ok(Today {
        day: day.into(),
        jobs: s.total.jobs,
        pixels: s.total.pixels,
        gross_wei: s.total.gross_wei,
        net_wei: s.total.net_wei,
        price_source: s.total.price_source,
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
                "{key},jobs,pixels,gross_wei,commission_wei,net_wei,truncation_wei,price_source\n"
            );
            for r in s.rows.iter().chain(std::iter::once(&s.total)) {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{}\n",
                    csv_field(&r.key),
                    r.jobs,
                    r.pixels,
                    r.gross_wei,
                    r.commission_wei,
                    r.net_wei,
                    r.truncation_wei,
                    csv_field(&r.price_source)
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
            ];
            let mut lines: Vec<[String; 8]> = vec![head.map(String::from)];
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
                ]);
            }
            let widths: Vec<usize> = (0..8)
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
                        if c == 0 || c == 7 {
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
        }
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
