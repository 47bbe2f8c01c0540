//! Per-session state kept across a session's segments, released on the orchestrator's
//! teardown notification or after an idle timeout.
//!
//! A session's segments are transcoded one at a time, in arrival order, as go-livepeer's
//! load-balancing transcoder does. The transcoding engine opens its encoders per call, so
//! the state here is the ordering lock and bookkeeping; it is the place where persistent
//! encoder sessions attach once the engine offers them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Session {
    /// Serialises the session's segments.
    pub order: tokio::sync::Mutex<()>,
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
    segments: u64,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

impl Sessions {
    /// The session's state, created on first use (or afresh when `reinit`), and idle
    /// sessions swept on the way.
    pub fn get(&self, id: &str, reinit: bool, idle: Duration) -> Arc<Session> {
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
        });
        entry.last_used = now;
        entry.segments += 1;
        entry.session.clone()
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

fn fresh() -> Arc<Session> {
    Arc::new(Session {
        order: tokio::sync::Mutex::new(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_persist_until_teardown_or_idle() {
        let s = Sessions::default();
        let a = s.get("a", false, Duration::from_secs(60));
        let a2 = s.get("a", false, Duration::from_secs(60));
        assert!(Arc::ptr_eq(&a, &a2), "segments of one session share state");
        let a3 = s.get("a", true, Duration::from_secs(60));
        assert!(!Arc::ptr_eq(&a, &a3), "ForceSessionReinit starts afresh");
        assert_eq!(s.end("a"), Some(1));
        assert_eq!(s.end("a"), None);
        s.get("b", false, Duration::from_secs(60));
        s.get("c", false, Duration::ZERO);
        assert_eq!(s.len(), 1, "b was idle past a zero timeout and swept");
    }
}
