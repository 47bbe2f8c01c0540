//! The step-down plan: a pure function of what the poller knows and the wall clock.
//!
//! For every deadline with live sectors, transcoding on the proving GPUs
//! - drains (the Livepeer capacity published to the orchestrator drops, admission does not yet)
//!   from `Open − lead − drain`,
//! - steps down to the proof floor, keeping a VRAM reserve, from `Open − lead`,
//! - steps back up at the earliest of: every live partition proven (`PostSubmissions`), `Close`,
//!   or the prover's GPU activity quiet for a while after `Challenge` (checked once the window
//!   is open, so a previous deadline's proof is never mistaken for this one's).
//!
//! The node's state decides how far the schedule is trusted ([`SourceState`]): followed from the
//! wall clock while the node is reachable or was reached within `cache_max_age`; after that
//! every deadline counts as live; with no schedule at all the PoSt-safe profile applies.

use serde::{Deserialize, Serialize};

use super::chain::{next_window, EPOCH_SECS, PERIOD_DEADLINES};
use super::Status;

/// What the plan needs from `[post]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlanConfig {
    pub lead_epochs: u32,
    pub drain_ms: u64,
    pub vram_reserve_bytes: u64,
    pub quiet_after_ms: u64,
    /// Proving GPUs; empty: all.
    pub devices: Vec<u32>,
    pub cache_max_age_ms: u64,
    pub lag_epochs: u32,
    /// A head read longer ago than this no longer counts as "reachable now".
    pub head_fresh_ms: u64,
}

/// How far the schedule can be trusted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// No full node configured: comine does not follow the proof schedule.
    #[default]
    Off,
    /// The node answers and its head is current.
    Ok,
    /// The node answers but its head is more than `lag_epochs` behind the wall clock.
    Lagging,
    /// The node does not answer; the cached schedule is followed (contact < `cache_max_age`).
    Stale,
    /// No contact for longer than `cache_max_age`: every deadline counts as live.
    Down,
    /// No schedule at all (never reached, no cache): the PoSt-safe profile.
    NoSchedule,
}

impl SourceState {
    /// The three states of the `comine_post_source_state` gauge.
    pub fn gauge(self) -> &'static str {
        match self {
            SourceState::Off => "off",
            SourceState::Ok => "ok",
            SourceState::Lagging | SourceState::Stale => "stale",
            SourceState::Down | SourceState::NoSchedule => "down",
        }
    }
}

/// What the scheduler does about proofs at this instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    None,
    /// Publish the floor's Livepeer capacity; keep admitting what streams already send.
    Drain,
    /// Transcoding at the proof floor, VRAM reserve kept free.
    StepDown,
    /// No schedule: the PoSt-safe profile (safe transcoding share, VRAM reserve, always).
    Safe,
}

/// The plan's input to the scheduler's `tick` (`TickInput::post`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PostWindow {
    pub phase: Phase,
    /// The deadline this is about.
    pub deadline: Option<u64>,
    /// Proving GPUs; `None`: all.
    pub devices: Option<Vec<u32>>,
    /// GPU memory to keep free on them, bytes.
    pub vram_reserve_bytes: u64,
    /// e.g. "WindowPoSt deadline 33 opens in 11m40s".
    pub reason: String,
}

impl PostWindow {
    pub fn applies_to(&self, index: u32) -> bool {
        self.phase != Phase::None && self.devices.as_ref().is_none_or(|d| d.contains(&index))
    }
}

/// Where one deadline stands in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    /// No live sectors: nothing to do.
    Empty,
    Upcoming,
    Draining,
    SteppedDown,
    /// Stepped back up early: every live partition proven.
    Proven,
    /// Stepped back up early: the prover went quiet after the challenge.
    Quiet,
}

/// One deadline's next window and comine's plan for it (`comine post status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub index: u64,
    pub open_epoch: i64,
    pub open_ms: u64,
    pub close_ms: u64,
    /// Whether the window is open at `now`.
    pub open_now: bool,
    pub partitions: Option<u32>,
    pub live_sectors: Option<u64>,
    pub faulty_sectors: Option<u64>,
    /// Partitions proven in this window (known only while it is open).
    pub proven_partitions: Option<u64>,
    /// Counts as live (live sectors, or assumed: no live map / node down too long).
    pub live: bool,
    pub assumed_live: bool,
    pub drain_ms: Option<u64>,
    pub step_down_ms: Option<u64>,
    pub step_up_ms: Option<u64>,
    pub state: RowState,
}

/// The plan at one instant.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub now_ms: u64,
    pub source: SourceState,
    /// Why the source is in that state.
    pub source_detail: String,
    /// The epoch the wall clock is in (schedule known).
    pub wall_epoch: Option<i64>,
    pub window: PostWindow,
    /// The 48 deadlines, by index (empty without a schedule).
    pub rows: Vec<Row>,
    /// The next live window to open, if any.
    pub next_deadline: Option<u64>,
    pub seconds_to_next_window: Option<f64>,
    pub step_down_active: bool,
}

/// "11m40s", "1m30s", "45s", "2h05m".
pub fn fmt_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The plan for `now_ms` (wall clock). `last_activity_ms`: when a proof was last seen running
/// on the proving GPUs (telemetry, `WorkerStats`, Curio), if ever.
pub fn evaluate(status: &Status, now_ms: u64, last_activity_ms: Option<u64>) -> Plan {
    let cfg = &status.plan;
    let devices = (!cfg.devices.is_empty()).then(|| cfg.devices.clone());
    let mut plan = Plan {
        now_ms,
        ..Plan::default()
    };
    if !status.configured {
        plan.source_detail = "no full node configured ([post] fullnode_api_info / FULLNODE_API_INFO): the proof schedule is not followed".into();
        return plan;
    }
    let Some(s) = &status.schedule else {
        plan.source = SourceState::NoSchedule;
        plan.source_detail = format!(
            "no WindowPoSt schedule yet (full node {}{}): PoSt-safe profile",
            status.node_url.as_deref().unwrap_or("?"),
            status
                .last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        plan.window = PostWindow {
            phase: Phase::Safe,
            deadline: None,
            devices,
            vram_reserve_bytes: cfg.vram_reserve_bytes,
            reason: plan.source_detail.clone(),
        };
        return plan;
    };
    let clock = s.clock();
    let now = now_ms as i64;
    let wall_epoch = clock.epoch_at(now);
    plan.wall_epoch = Some(wall_epoch);
    let since_contact = now_ms.saturating_sub(s.contact_at_ms);
    let head_fresh = status.reachable
        && status
            .head_seen_at_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= cfg.head_fresh_ms);
    (plan.source, plan.source_detail) = match status.head {
        Some(h) if head_fresh => {
            let lag = wall_epoch - h.height;
            if lag > i64::from(cfg.lag_epochs) {
                (
                    SourceState::Lagging,
                    format!("full node lagging: head {} is {lag} epochs behind the wall clock; following the schedule from the wall clock", h.height),
                )
            } else {
                (SourceState::Ok, format!("full node ok at height {}", h.height))
            }
        }
        _ if since_contact <= cfg.cache_max_age_ms => (
            SourceState::Stale,
            format!(
                "full node not answering for {}{}: following the cached schedule",
                fmt_duration(since_contact as i64),
                status
                    .last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        ),
        _ => (
            SourceState::Down,
            format!(
                "no contact with the full node for {} (more than {}): every deadline counts as live",
                fmt_duration(since_contact as i64),
                fmt_duration(cfg.cache_max_age_ms as i64)
            ),
        ),
    };
    let assume_all = plan.source == SourceState::Down || !s.has_live_map();
    let lead_ms = i64::from(cfg.lead_epochs) * EPOCH_SECS * 1000;
    let mut best: Option<(Phase, i64, String, u64)> = None;
    for index in 0..PERIOD_DEADLINES {
        let w = next_window(s.period_offset, index, wall_epoch);
        let (open, close, challenge) = (
            clock.epoch_ms(w.open),
            clock.epoch_ms(w.close),
            clock.epoch_ms(w.challenge),
        );
        let d = s.deadline(index);
        let really_live = d.is_some_and(|d| d.is_live());
        let live = really_live || assume_all;
        let open_now = now >= open && now < close;
        let proven = status
            .proven
            .as_ref()
            .filter(|p| p.index == index && p.open == w.open && open_now);
        let mut row = Row {
            index,
            open_epoch: w.open,
            open_ms: open.max(0) as u64,
            close_ms: close.max(0) as u64,
            open_now,
            partitions: d.map(|d| d.partitions),
            live_sectors: d.map(|d| d.live_sectors),
            faulty_sectors: d.map(|d| d.faulty_sectors),
            proven_partitions: proven.map(|p| p.partitions.count()),
            live,
            assumed_live: live && !really_live,
            drain_ms: None,
            step_down_ms: None,
            step_up_ms: None,
            state: RowState::Empty,
        };
        if !live {
            plan.rows.push(row);
            continue;
        }
        let step_down = open - lead_ms;
        let drain = step_down - cfg.drain_ms as i64;
        let mut step_up = close;
        let mut early = None;
        // Every live partition proven (known only from this window's PostSubmissions).
        if let (Some(p), Some(d)) = (proven, d.filter(|_| really_live)) {
            let live_parts = d.live_partitions.positions(usize::MAX);
            if !live_parts.is_empty() && live_parts.iter().all(|i| p.partitions.contains(*i)) {
                let at = (p.seen_at_ms as i64).max(open);
                if at < step_up {
                    step_up = at;
                    early = Some(RowState::Proven);
                }
            }
        }
        // The prover went quiet after the challenge (judged once the window is open).
        if let Some(a) = last_activity_ms.map(|a| a as i64) {
            if now >= open && a >= challenge {
                let at = (a + cfg.quiet_after_ms as i64).max(open);
                if at <= now && at < step_up {
                    step_up = at;
                    early = Some(RowState::Quiet);
                }
            }
        }
        row.drain_ms = Some(drain.max(0) as u64);
        row.step_down_ms = Some(step_down.max(0) as u64);
        row.step_up_ms = Some(step_up.max(0) as u64);
        let phase = if now >= step_up {
            row.state = early.unwrap_or(RowState::Upcoming);
            Phase::None
        } else if now >= step_down {
            row.state = RowState::SteppedDown;
            Phase::StepDown
        } else if now >= drain {
            row.state = RowState::Draining;
            Phase::Drain
        } else {
            row.state = RowState::Upcoming;
            Phase::None
        };
        if phase != Phase::None {
            let reason = if now < open {
                let mut r = format!(
                    "WindowPoSt deadline {index} opens in {}",
                    fmt_duration(open - now)
                );
                if phase == Phase::Drain {
                    r += &format!(
                        ": draining Livepeer sessions before the step-down in {}",
                        fmt_duration(step_down - now)
                    );
                }
                r
            } else {
                let parts = d.map(|d| d.live_partitions.count());
                let proven_txt = match (row.proven_partitions, parts) {
                    (Some(p), Some(n)) if n > 0 => format!(": {p} of {n} partitions proven"),
                    (None, Some(n)) if n > 0 => format!(": 0 of {n} partitions proven"),
                    _ => String::new(),
                };
                format!(
                    "WindowPoSt deadline {index} open, closes in {}{proven_txt}",
                    fmt_duration(close - now)
                )
            };
            // The strongest phase wins; among equals, the window that opens first.
            if best
                .as_ref()
                .is_none_or(|(p, o, _, _)| phase > *p || (phase == *p && open < *o))
            {
                best = Some((phase, open, reason, index));
            }
        }
        plan.rows.push(row);
    }
    if let Some(next) = plan
        .rows
        .iter()
        .filter(|r| r.live && r.open_ms as i64 > now)
        .min_by_key(|r| r.open_ms)
    {
        plan.next_deadline = Some(next.index);
        plan.seconds_to_next_window = Some((next.open_ms as i64 - now) as f64 / 1000.0);
    }
    if let Some((phase, _, mut reason, index)) = best {
        if plan.source != SourceState::Ok {
            reason = format!("{reason} ({})", plan.source_detail);
        }
        plan.step_down_active = phase == Phase::StepDown;
        plan.window = PostWindow {
            phase,
            deadline: Some(index),
            devices,
            vram_reserve_bytes: if phase == Phase::StepDown {
                cfg.vram_reserve_bytes
            } else {
                0
            },
            reason,
        };
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::post::node::Head;
    use crate::post::schedule::{DeadlineLive, Schedule};
    use crate::post::{Bitfield, Proven};

    const G: i64 = 1_598_306_400;
    /// Deadline 33 of the fixture miner opens at this epoch (head 5000011 + 3).
    const OPEN33: i64 = 5_000_014;

    fn ms(epoch: i64) -> u64 {
        ((G + 30 * epoch) * 1000) as u64
    }

    fn status(live: &[u64]) -> Status {
        let mut s = Schedule::new("f01234", 1234, G, 0);
        s.deadlines = (0..48)
            .map(|i| {
                if live.contains(&i) {
                    DeadlineLive {
                        partitions: 2,
                        live_sectors: 3161,
                        faulty_sectors: 3,
                        live_partitions: Bitfield::first(2),
                        ..DeadlineLive::default()
                    }
                } else {
                    DeadlineLive::default()
                }
            })
            .collect();
        s.live_refreshed_at_ms = Some(0);
        Status {
            configured: true,
            schedule: Some(s),
            reachable: true,
            plan: crate::post::Config::default().plan(),
            ..Status::default()
        }
    }

    /// The node was reached at `epoch` (head current).
    fn at(mut st: Status, epoch: i64) -> (Status, u64) {
        let now = ms(epoch);
        st.head = Some(Head {
            height: epoch,
            timestamp: G + 30 * epoch,
        });
        st.head_seen_at_ms = Some(now);
        if let Some(s) = st.schedule.as_mut() {
            s.contact_at_ms = now;
        }
        (st, now)
    }

    #[test]
    fn steps_down_at_open_minus_lead_not_a_second_earlier() {
        let (st, now) = at(status(&[33]), OPEN33 - 25);
        let p = evaluate(&st, now, None);
        assert_eq!(p.source, SourceState::Ok);
        assert_eq!(p.window.phase, Phase::Drain, "{p:?}");
        assert!(!p.step_down_active);
        let (st, now) = at(status(&[33]), OPEN33 - 24);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert_eq!(p.window.reason, "WindowPoSt deadline 33 opens in 12m0s");
        assert_eq!(p.window.vram_reserve_bytes, 8192 << 20);
        // One millisecond before the step-down it drains.
        let p = evaluate(&st, now - 1, None);
        assert_eq!(p.window.phase, Phase::Drain);
        // Before the drain nothing happens.
        let p = evaluate(&st, now - 60_001, None);
        assert_eq!(p.window.phase, Phase::None);
        assert_eq!(p.next_deadline, Some(33));
    }

    #[test]
    fn countdown_in_the_reason() {
        let (st, now) = at(status(&[33]), OPEN33 - 3);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.reason, "WindowPoSt deadline 33 opens in 1m30s");
        assert_eq!(p.seconds_to_next_window, Some(90.0));
        assert_eq!(fmt_duration(700_000), "11m40s");
        assert_eq!(fmt_duration(3_900_000), "1h05m");
    }

    #[test]
    fn an_empty_deadline_never_steps_down() {
        let (st, now) = at(status(&[]), OPEN33 - 3);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::None);
        assert!(p.rows.iter().all(|r| r.state == RowState::Empty));
        assert_eq!(p.next_deadline, None);
    }

    #[test]
    fn steps_up_when_every_live_partition_is_proven() {
        let (mut st, now) = at(status(&[33]), OPEN33 + 10);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(
            p.window.reason.contains("0 of 2 partitions proven"),
            "{}",
            p.window.reason
        );
        st.proven = Some(Proven {
            index: 33,
            open: OPEN33,
            partitions: Bitfield(vec![0, 1]),
            seen_at_ms: now,
        });
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(p.window.reason.contains("1 of 2"), "{}", p.window.reason);
        st.proven.as_mut().unwrap().partitions = Bitfield(vec![0, 2]);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::None, "{:?}", p.window);
        assert_eq!(p.rows[33].state, RowState::Proven);
        // Submissions of the previous period's window do not count.
        st.proven.as_mut().unwrap().open = OPEN33 - 2880;
        assert_eq!(evaluate(&st, now, None).window.phase, Phase::StepDown);
    }

    #[test]
    fn steps_up_when_the_prover_goes_quiet_after_the_challenge() {
        let (st, now) = at(status(&[33]), OPEN33 + 10);
        let challenge = ms(OPEN33 - 20);
        // Activity before the challenge (another deadline's proof) does not count.
        let p = evaluate(&st, now, Some(challenge - 1));
        assert_eq!(p.window.phase, Phase::StepDown);
        // Active until 100 s ago, quiet_after 120 s: not yet.
        assert_eq!(
            evaluate(&st, now, Some(now - 100_000)).window.phase,
            Phase::StepDown
        );
        let p = evaluate(&st, now, Some(now - 130_000));
        assert_eq!(p.window.phase, Phase::None);
        assert_eq!(p.rows[33].state, RowState::Quiet);
        // Before the window opens, quiet never steps up.
        let (st, now) = at(status(&[33]), OPEN33 - 2);
        assert_eq!(
            evaluate(&st, now, Some(challenge + 1000)).window.phase,
            Phase::StepDown
        );
    }

    #[test]
    fn steps_up_at_close_and_the_next_window_takes_over() {
        // Deadline 33 closes at OPEN33+60 = deadline 34's open; 34 empty, 35 live.
        let (st, now) = at(status(&[33]), OPEN33 + 60);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::None);
        assert_eq!(p.rows[33].open_epoch, OPEN33 + 2880);
        // Two abutting live deadlines: the next one's step-down starts while 33 is open.
        let (st, now) = at(status(&[33, 34]), OPEN33 + 40);
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert_eq!(p.window.deadline, Some(33));
    }

    #[test]
    fn node_unreachable_follows_the_cache_then_assumes_everything_live() {
        let (mut st, now) = at(status(&[33]), OPEN33 - 120);
        st.reachable = false;
        st.last_error = Some("connection refused".into());
        // 30 minutes later the cache is followed: deadline 33 steps down on schedule.
        let later = ms(OPEN33 - 60);
        let p = evaluate(&st, ms(OPEN33 - 24), None);
        assert_eq!(p.source, SourceState::Stale);
        assert_eq!(p.source.gauge(), "stale");
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(
            p.window.reason.contains("cached schedule"),
            "{}",
            p.window.reason
        );
        assert_eq!(evaluate(&st, later, None).window.deadline, None);
        // Past an hour without contact every deadline counts as live.
        let p = evaluate(&st, now + 3_600_001, None);
        assert_eq!(p.source, SourceState::Down);
        assert_eq!(p.source.gauge(), "down");
        assert!(p.rows.iter().all(|r| r.live));
        assert_eq!(p.rows.iter().filter(|r| r.assumed_live).count(), 47);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(p.window.reason.contains("every deadline counts as live"));
    }

    #[test]
    fn a_lagging_head_is_reported_and_the_wall_clock_rules() {
        let (mut st, now) = at(status(&[33]), OPEN33 - 24);
        st.head = Some(Head {
            height: OPEN33 - 27,
            timestamp: 0,
        });
        let p = evaluate(&st, now, None);
        assert_eq!(p.source, SourceState::Lagging);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(p.window.reason.contains("lagging"), "{}", p.window.reason);
        // Two epochs behind is not lagging yet.
        st.head.as_mut().unwrap().height = OPEN33 - 26;
        assert_eq!(evaluate(&st, now, None).source, SourceState::Ok);
    }

    #[test]
    fn no_schedule_runs_the_post_safe_profile_and_off_does_nothing() {
        let st = Status {
            configured: true,
            last_error: Some("connection refused".into()),
            node_url: Some("http://127.0.0.1:1234/rpc/v1".into()),
            plan: crate::post::Config::default().plan(),
            ..Status::default()
        };
        let p = evaluate(&st, 1, None);
        assert_eq!(p.source, SourceState::NoSchedule);
        assert_eq!(p.window.phase, Phase::Safe);
        assert!(p.window.reason.contains("PoSt-safe"));
        let p = evaluate(&Status::default(), 1, None);
        assert_eq!(p.source, SourceState::Off);
        assert_eq!(p.window, PostWindow::default());
    }

    #[test]
    fn without_a_live_map_every_deadline_counts_as_live() {
        let (mut st, now) = at(status(&[]), OPEN33 - 3);
        st.schedule.as_mut().unwrap().deadlines.clear();
        let p = evaluate(&st, now, None);
        assert_eq!(p.window.phase, Phase::StepDown);
        assert!(p.rows.iter().all(|r| r.assumed_live));
    }
}
