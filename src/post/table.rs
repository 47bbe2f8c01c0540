//! What the operator sees: the proof schedule and comine's plan as one serialisable report
//! (`/v1/status` → `post`, `comine post status --json`) and as a table in the manner of
//! `lotus-miner proving deadlines`.

use serde::{Deserialize, Serialize};

use super::chain::DeadlineInfo;
use super::node::Head;
use super::plan::{fmt_duration, Phase, Plan, Row, RowState, SourceState};
use super::{RunningProofs, Status};

/// The schedule and the plan at one instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub configured: bool,
    pub miner: Option<String>,
    pub node_url: Option<String>,
    /// `ok`, `lagging`, `stale`, `down`, `no_schedule` or `off`.
    pub source: SourceState,
    pub source_detail: String,
    pub head: Option<Head>,
    /// The deadline open now (the node's `StateMinerProvingDeadline`).
    pub current: Option<DeadlineInfo>,
    pub period_offset: Option<i64>,
    pub running: RunningProofs,
    pub requests: u64,
    pub plan: Plan,
}

impl Report {
    pub fn new(status: &Status, plan: Plan) -> Report {
        Report {
            configured: status.configured,
            miner: status.miner.clone(),
            node_url: status.node_url.clone(),
            source: plan.source,
            source_detail: plan.source_detail.clone(),
            head: status.head,
            current: status.current,
            period_offset: status.schedule.as_ref().map(|s| s.period_offset),
            running: status.running.clone(),
            requests: status.requests,
            plan,
        }
    }

    /// The one-line summary `comine status` prints.
    pub fn summary(&self) -> String {
        if !self.configured {
            return "WindowPoSt: not followed (no full node: set FULLNODE_API_INFO or [post] fullnode_api_info)".into();
        }
        let p = &self.plan;
        let next = match (p.next_deadline, p.seconds_to_next_window) {
            (Some(d), Some(s)) => format!(
                "next live deadline {d} opens in {}",
                fmt_duration((s * 1000.0) as i64)
            ),
            _ => "no live deadline ahead".into(),
        };
        let now = match p.window.phase {
            _ if p.window.reason.is_empty() => "transcoding at its full budget".to_string(),
            Phase::None => p.window.reason.clone(),
            Phase::Drain => format!("draining Livepeer sessions: {}", p.window.reason),
            Phase::StepDown => format!("stepped down: {}", p.window.reason),
            Phase::Safe => format!("PoSt-safe profile: {}", p.window.reason),
        };
        format!(
            "WindowPoSt ({}): source {} ({}); {next}; {now}",
            self.miner.as_deref().unwrap_or("miner ?"),
            self.source.gauge(),
            self.source_detail
        )
    }
}

/// Local time of `ms` (Unix ms) as `YYYY-MM-DD HH:MM:SS`.
pub fn local_time(ms: u64) -> String {
    let secs = (ms / 1000) as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which we own; a zeroed tm is a valid start.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if !ok {
        return format!("@{}", ms / 1000);
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn hhmmss(ms: Option<u64>) -> String {
    ms.map(|m| local_time(m)[11..].to_string())
        .unwrap_or_else(|| "-".into())
}

fn state(r: &Row) -> &'static str {
    match r.state {
        RowState::Empty => "no live sectors",
        RowState::Upcoming => "planned",
        RowState::Draining => "draining",
        RowState::SteppedDown => "STEPPED DOWN",
        RowState::Proven => "proven: stepped up",
        RowState::Quiet => "prover quiet: stepped up",
    }
}

/// The table: a header, then one line per deadline in opening order.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let p = &report.plan;
    out += &format!(
        "Miner: {}   Full node: {}   Source: {} ({})\n",
        report.miner.as_deref().unwrap_or("?"),
        report.node_url.as_deref().unwrap_or("not configured"),
        report.source.gauge(),
        report.source_detail
    );
    if let Some(c) = &report.current {
        out += &format!(
            "Current deadline: {} (epoch {}, period start {}, offset {})\n",
            c.index,
            c.current_epoch,
            c.period_start,
            c.period_offset()
        );
    }
    if report.running.any() {
        out += &format!(
            "PoSt running now: {} WindowPoSt, {} WinningPoSt ({})\n",
            report.running.window,
            report.running.winning,
            report.running.sources.join(", ")
        );
    }
    out += &format!(
        "comine: {}\n",
        if p.window.reason.is_empty() {
            "transcoding at its full budget".to_string()
        } else {
            p.window.reason.clone()
        }
    );
    if p.rows.is_empty() {
        return out;
    }
    out += &format!(
        "{:<9}{:<21}{:<10}{:<11}{:<17}{:<8}{:<11}{:<11}{}\n",
        "Deadline",
        "Opens (local)",
        "In",
        "Partitions",
        "Sectors live/ft",
        "Proven",
        "Step-down",
        "Step-up",
        "Plan"
    );
    let mut rows: Vec<&Row> = p.rows.iter().collect();
    rows.sort_by_key(|r| r.open_ms);
    for r in rows {
        let open_in = if r.open_now {
            "open".to_string()
        } else {
            fmt_duration(r.open_ms as i64 - p.now_ms as i64)
        };
        let sectors = match (r.live_sectors, r.faulty_sectors) {
            (Some(l), Some(f)) => format!("{l}/{f}"),
            _ => "?".into(),
        };
        let live = if r.assumed_live {
            " (assumed live)"
        } else {
            ""
        };
        out += &format!(
            "{:<9}{:<21}{:<10}{:<11}{:<17}{:<8}{:<11}{:<11}{}{live}\n",
            r.index,
            local_time(r.open_ms),
            open_in,
            r.partitions.map_or("?".into(), |n| n.to_string()),
            sectors,
            r.proven_partitions.map_or("-".into(), |n| n.to_string()),
            if r.live {
                hhmmss(r.step_down_ms)
            } else {
                "-".into()
            },
            if r.live {
                hhmmss(r.step_up_ms)
            } else {
                "-".into()
            },
            state(r),
        );
    }
    out
}
