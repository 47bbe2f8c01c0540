//! Per-session state kept across a session's segments, released on the orchestrator's
//! teardown notification or after an idle timeout.
//!
//! A session's segments are transcoded one at a time, in arrival order, as go-livepeer's
//! load-balancing transcoder does, and the pipeline keeps its warm state here (the engine's
//! open decoder and encoders: [`Session::warm`]), dropped with the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Session {
    /// Serialises the session's segments.
    pub order: tokio::sync::Mutex<()>,
    /// What the pipeline keeps between this session's segments.
    pub warm: super::pipeline::WarmState,
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
    segments: u64,
    /// The stream counts as running this long after its last segment (4 × its duration: a
    /// live stream's next segment is due well within that).
    live_for: Duration,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// The session's state, created on first use (or afresh when `reinit`), and idle
    /// sessions swept on the way.
    pub fn get(&self, id: &str, reinit: bool, idle: Duration, live_for: Duration) -> Arc<Session> {
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else {
            return fresh();
        };
        map.retain(|key, e| {
            let keep = key == id || now.duration_since(e.last_used) < idle;
            if !keep {
                tracing::debug!(session = %key, segments = e.segments, "session idle; state released");
            }
            keep
        });
        if reinit {
            map.remove(id);
        }
        let entry = map.entry(id.to_string()).or_insert_with(|| Entry {
            session: fresh(),
            last_used: now,
            segments: 0,
            live_for,
        });
        entry.last_used = now;
        entry.live_for = live_for;
        entry.segments += 1;
        entry.session.clone()
    }

    /// Sessions streaming now: their next segment is still due (teardown ends one at once).
    pub fn streaming(&self) -> usize {
        let now = Instant::now();
        self.map
            .lock()
            .map(|m| m.values().filter(|e| e.running(now)).count())
            .unwrap_or(0)
    }

    /// Whether a segment of `id` may start here when at most `limit` streams may run: a
    /// known session always may; a new one only while fewer than `limit` sessions stream,
    /// and it then counts at once (for `live_for`, until its segment is under way).
    pub fn admit(&self, id: &str, limit: u32, live_for: Duration) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return true;
        };
        if map.contains_key(id) {
            return true;
        }
        let now = Instant::now();
        let streaming = map.values().filter(|e| e.running(now)).count();
        if streaming >= limit as usize {
            return false;
        }
        map.insert(
            id.to_string(),
            Entry {
                session: fresh(),
                last_used: now,
                segments: 0,
                live_for,
            },
        );
        true
    }

    /// Teardown: forget the session. Returns whether it was known.
    pub fn end(&self, id: &str) -> Option<u64> {
        self.map.lock().ok()?.remove(id).map(|e| e.segments)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl Entry {
    fn running(&self, now: Instant) -> bool {
        now.duration_since(self.last_used) < self.live_for
    }
}

fn fresh() -> Arc<Session> {
    Arc::new(Session {
        order: tokio::sync::Mutex::new(()),
        warm: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_persist_until_teardown_or_idle() {
        let s = Sessions::default();
        let l = Duration::from_secs(8);
        let a = s.get("a", false, Duration::from_secs(60), l);
        let a2 = s.get("a", false, Duration::from_secs(60), l);
        assert!(Arc::ptr_eq(&a, &a2), "segments of one session share state");
        let a3 = s.get("a", true, Duration::from_secs(60), l);
        assert!(!Arc::ptr_eq(&a, &a3), "ForceSessionReinit starts afresh");
        assert_eq!(s.end("a"), Some(1));
        assert_eq!(s.end("a"), None);
        s.get("b", false, Duration::from_secs(60), l);
        s.get("c", false, Duration::ZERO, l);
        assert_eq!(s.len(), 1, "b was idle past a zero timeout and swept");
    }

    #[test]
    fn a_new_stream_waits_for_room_a_running_one_never_does() {
        let s = Sessions::default();
        let (idle, w) = (Duration::from_secs(120), Duration::from_secs(60));
        s.get("a", false, idle, w);
        s.get("b", false, idle, w);
        assert_eq!(s.streaming(), 2);
        assert!(s.admit("a", 1, w), "a running stream keeps going");
        assert!(!s.admit("c", 2, w), "no room for a new stream");
        assert_eq!(s.end("b"), Some(1));
        assert!(s.admit("c", 2, w), "room again once one ended");
        assert_eq!(s.streaming(), 2, "the new stream counts at once");
        assert!(!s.admit("d", 2, w));
        // A stream whose next segment is overdue no longer counts (no teardown came).
        s.get("a", false, idle, Duration::ZERO);
        assert_eq!(s.streaming(), 1);
        assert!(s.admit("d", 2, w));
    }
}
