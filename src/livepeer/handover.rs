//! Changing the registered capacity without losing a segment of a running stream (make
//! before break).
//!
//! go-livepeer fixes a transcoder's capacity when it registers, so a new capacity is a new
//! registration; the streams bound to the old one are orphaned when it closes, and each
//! finds a transcoder again at its next segment. Closing first and registering after lost
//! segments in two ways:
//! - between the old registration closing and the orchestrator adding the new one, a
//!   segment found no transcoder with room and was refused mid-stream;
//! - a segment the orchestrator sent on the old stream just before it saw the stream close
//!   was lost, and go-livepeer waits for it until its timeout instead of resending.
//!
//! So the new registration is opened first, on the same connection, while the old one keeps
//! serving. The old one closes once the new one is surely live (it has carried a segment,
//! or [`OVERLAP`] has passed: go-livepeer answers a registration only with its first
//! segment), and then at the quietest moment of the cadence of the streams still bound to
//! it, when none of their segments is due.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::proto::NotifySegment;

/// How long both registrations stay open when the new one has carried no segment yet: the
/// orchestrator adds a registration within a round trip of receiving it.
pub(super) const OVERLAP: Duration = Duration::from_secs(1);

/// A stream silent for this many periods has stopped, teardown or not (go-livepeer's own
/// deadline for a segment is 4 × its duration).
const SILENT_PERIODS: u32 = 4;

/// The handover waits at most this long past [`OVERLAP`] for a quiet moment, whatever the
/// streams' periods.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(10);

/// Candidate instants are this far apart.
const STEP: Duration = Duration::from_millis(10);

/// The streams bound to one registration: each stream's last segment and its period.
#[derive(Debug, Default)]
pub(super) struct Bound {
    streams: HashMap<String, (Instant, Duration)>,
}

impl Bound {
    /// Notes a notification received on this registration at `at`.
    pub fn seen(&mut self, n: &NotifySegment, at: Instant) {
        if let Some(session) = n.teardown_session() {
            self.streams.remove(session);
            return;
        }
        let period = Duration::from_millis(u64::from(n.duration_ms()));
        self.streams.insert(n.session_key(), (at, period));
    }

    /// Streams that may still send a segment on this registration (as of `now`).
    pub fn live(&mut self, now: Instant) -> usize {
        self.streams.retain(|_, (last, period)| {
            now.saturating_duration_since(*last) < *period * SILENT_PERIODS
        });
        self.streams.len()
    }

    /// When to close this registration: in the window that opens at `earliest` (when its
    /// successor is surely live) and lasts one period of its slowest stream (at most
    /// [`MAX_WAIT`]), not before `now`, the instant farthest from the next expected segment
    /// of every stream still bound to it. The window does not move with `now`, so a
    /// registration whose streams keep sending still closes within it.
    pub fn quiet_moment(&mut self, earliest: Instant, now: Instant) -> Instant {
        let from = earliest.max(now);
        self.live(from);
        quiet_moment(earliest, from, self.streams.values().copied())
    }
}

fn quiet_moment(
    earliest: Instant,
    from: Instant,
    streams: impl Iterator<Item = (Instant, Duration)> + Clone,
) -> Instant {
    let Some(horizon) = streams.clone().map(|(_, p)| p).max() else {
        return from;
    };
    let end = earliest + horizon.min(MAX_WAIT);
    let mut best = (Duration::ZERO, from);
    let mut t = from;
    while t <= end {
        let margin = streams
            .clone()
            .map(|(last, period)| distance_to_next(t, last, period))
            .min()
            .unwrap_or(Duration::MAX);
        if margin > best.0 {
            best = (margin, t);
        }
        t += STEP;
    }
    best.1
}

/// How far `t` is from the nearest expected segment of a stream whose last one came at
/// `last` and that sends one every `period`.
fn distance_to_next(t: Instant, last: Instant, period: Duration) -> Duration {
    let period_ns = period.as_nanos().max(1);
    let phase = t.saturating_duration_since(last).as_nanos() % period_ns;
    let d = phase.min(period_ns - phase);
    Duration::from_nanos(u64::try_from(d).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livepeer::proto::{AuthToken, SegData};

    fn segment(session: &str, duration_ms: i32) -> NotifySegment {
        NotifySegment {
            url: format!("https://o/segment/{session}.ts"),
            seg_data: Some(SegData {
                duration: duration_ms,
                auth_token: Some(AuthToken {
                    session_id: session.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn with_no_stream_bound_it_closes_at_once() {
        let t0 = Instant::now();
        assert_eq!(Bound::default().quiet_moment(t0, t0), t0);
    }

    #[test]
    fn one_stream_closes_half_a_period_after_its_segment() {
        let t0 = Instant::now();
        let mut b = Bound::default();
        b.seen(&segment("a", 2000), t0);
        let at = b.quiet_moment(t0, t0);
        assert_eq!(at - t0, Duration::from_secs(1));
    }

    #[test]
    fn it_closes_in_the_widest_gap_between_streams() {
        let t0 = Instant::now();
        let mut b = Bound::default();
        // Segments every second at phases 0, 0.1 and 0.2 s: the widest gap is 0.2 → 1.0,
        // whose middle is 0.6 s.
        b.seen(&segment("a", 1000), t0);
        b.seen(&segment("b", 1000), t0 + Duration::from_millis(100));
        b.seen(&segment("c", 1000), t0 + Duration::from_millis(200));
        let now = t0 + Duration::from_millis(250);
        let at = b.quiet_moment(now, now);
        assert_eq!(at - t0, Duration::from_millis(600), "{:?}", at - t0);
        let margin = [0u64, 100, 200]
            .iter()
            .map(|ms| distance_to_next(at, t0 + Duration::from_millis(*ms), Duration::from_secs(1)))
            .min()
            .unwrap();
        assert_eq!(margin, Duration::from_millis(400));
    }

    #[test]
    fn torn_down_and_silent_streams_no_longer_hold_it_open() {
        let t0 = Instant::now();
        let mut b = Bound::default();
        b.seen(&segment("a", 1000), t0);
        b.seen(&segment("b", 2000), t0);
        b.seen(&NotifySegment::teardown("a"), t0);
        assert_eq!(b.live(t0), 1);
        // b's last segment is 4 periods old: it has stopped.
        assert_eq!(b.live(t0 + Duration::from_secs(8)), 0);
        let late = t0 + Duration::from_secs(8);
        assert_eq!(b.quiet_moment(late, late), late);
    }

    #[test]
    fn a_missing_duration_counts_as_two_seconds_and_the_wait_is_bounded() {
        let t0 = Instant::now();
        let mut b = Bound::default();
        b.seen(&segment("a", 0), t0);
        assert_eq!(b.quiet_moment(t0, t0) - t0, Duration::from_secs(1));
        let mut slow = Bound::default();
        slow.seen(&segment("vod", 60_000), t0);
        assert!(slow.quiet_moment(t0, t0) - t0 <= MAX_WAIT);
    }

    #[test]
    fn the_window_does_not_move_while_streams_keep_sending() {
        // Streams that keep sending on the old registration used to push its close later at
        // every segment, up to the cap; the window is fixed by when the successor went live.
        let t0 = Instant::now();
        let mut b = Bound::default();
        for k in 0..20u64 {
            let at = t0 + Duration::from_millis(k * 50);
            b.seen(&segment(&format!("s{}", k % 5), 1000), at);
            let close = b.quiet_moment(t0, at);
            assert!(close >= at, "never in the past");
            assert!(
                close - t0 <= Duration::from_secs(1),
                "after {k} segments the close moved to {:?}",
                close - t0
            );
        }
        // Past the window: close now.
        let late = t0 + Duration::from_secs(3);
        b.seen(&segment("s0", 1000), late);
        assert_eq!(b.quiet_moment(t0, late), late);
    }
}
