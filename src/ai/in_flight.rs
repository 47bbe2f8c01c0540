//! The AI jobs running on each model, so that a model whose VRAM lease the scheduler takes
//! back (`sched::lease`) can be drained: jobs are counted while they live ([`InFlight`])
//! and carry a token that cancels them (they then answer with an error). This is job
//! tracking only; when a lease is taken back is the scheduler's decision, and the daemon
//! (`daemon::ai`) carries it out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Model {
    count: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// Jobs in flight per model.
#[derive(Default)]
pub struct InFlightJobs {
    models: Mutex<HashMap<String, Model>>,
}

/// Counts a job on a model while it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl InFlightJobs {
    fn with<T>(&self, model_id: &str, f: impl FnOnce(&mut Model) -> T) -> T {
        let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(model_id.to_string()).or_default())
    }

    /// Counts a job on `model_id` until the guard drops; the token is cancelled when the
    /// model's lease is taken back before the job ends.
    pub fn enter(&self, model_id: &str) -> (InFlight, CancellationToken) {
        self.with(model_id, |m| {
            m.count.fetch_add(1, Ordering::SeqCst);
            (InFlight(m.count.clone()), m.cancel.child_token())
        })
    }

    pub fn count(&self, model_id: &str) -> usize {
        self.with(model_id, |m| m.count.load(Ordering::SeqCst))
    }

    /// Cancels the jobs still running on `model_id` (they answer with an error); later
    /// jobs get a fresh token.
    pub fn cancel(&self, model_id: &str) {
        self.with(model_id, |m| {
            m.cancel.cancel();
            m.cancel = CancellationToken::new();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_fires_running_tokens_and_fresh_jobs_get_a_new_one() {
        let jobs = InFlightJobs::default();
        let (g, t) = jobs.enter("m");
        assert_eq!(jobs.count("m"), 1);
        assert_eq!(jobs.count("other"), 0);
        jobs.cancel("m");
        assert!(t.is_cancelled());
        let (g2, t2) = jobs.enter("m");
        assert!(!t2.is_cancelled());
        drop(g);
        drop(g2);
        assert_eq!(jobs.count("m"), 0);
    }
}
