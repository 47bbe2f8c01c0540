//! Several lotus-workers steered as one: the common layout runs one lotus-worker per GPU, each
//! with its own API, and comine pauses and resumes GPU sealing on all of them together.
//!
//! What each worker really changed is recorded as `"<worker url> <task type>"`, so the state
//! file restores every worker's own changes, and nothing else, after a crash.

use std::time::Duration;

use super::{
    BoxFuture, Controller, ControllerKind, ControllerState, DisableSet, LotusWorker, SealError,
};

pub struct LotusWorkers {
    workers: Vec<LotusWorker>,
}

/// `"<url> <task type>"`: task types never contain a space, URLs never do either.
fn entry(url: &str, task_type: &str) -> String {
    format!("{url} {task_type}")
}

impl LotusWorkers {
    /// One controller per API info (`TOKEN:/ip4/127.0.0.1/tcp/3456/http` each).
    pub fn from_api_infos(infos: &[String], timeout: Duration) -> Result<Self, SealError> {
        let workers = infos
            .iter()
            .map(|i| LotusWorker::from_api_info(i, timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let mut urls: Vec<&str> = workers.iter().map(|w| w.url()).collect();
        urls.sort_unstable();
        if let Some(w) = urls.windows(2).find(|w| w[0] == w[1]) {
            return Err(SealError::Config(format!(
                "seal.workers lists the lotus-worker at {} twice",
                w[0]
            )));
        }
        Ok(LotusWorkers { workers })
    }

    pub fn urls(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.url().to_string()).collect()
    }
}

impl Controller for LotusWorkers {
    fn kind(&self) -> ControllerKind {
        ControllerKind::LotusWorker
    }

    fn coarse(&self) -> bool {
        false
    }

    fn disable<'a>(&'a self, set: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>> {
        Box::pin(async move {
            let mut changed = Vec::new();
            for w in &self.workers {
                match w.disable(set).await {
                    Ok(types) => changed.extend(types.iter().map(|t| entry(w.url(), t))),
                    Err(e) => {
                        // All or nothing: undo what the other workers already did.
                        let _ = self.enable(&changed).await;
                        return Err(e);
                    }
                }
            }
            Ok(changed)
        })
    }

    fn enable<'a>(&'a self, task_types: &'a [String]) -> BoxFuture<'a, Result<(), SealError>> {
        Box::pin(async move {
            let mut first_err = None;
            for w in &self.workers {
                let mine: Vec<String> = task_types
                    .iter()
                    .filter_map(|e| e.split_once(' '))
                    .filter(|(url, _)| *url == w.url())
                    .map(|(_, t)| t.to_string())
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if let Err(e) = w.enable(&mine).await {
                    first_err.get_or_insert(e);
                }
            }
            // An entry no configured worker owns (the config changed after a crash).
            let known = self.urls();
            if let Some(orphan) = task_types.iter().find(|e| {
                e.split_once(' ')
                    .is_none_or(|(url, _)| !known.iter().any(|k| k == url))
            }) {
                first_err.get_or_insert(SealError::Config(format!(
                    "comine disabled {orphan:?} on a lotus-worker that is no longer in seal.workers; re-enable it by hand (lotus-worker tasks enable) or list that worker again"
                )));
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<ControllerState, SealError>> {
        Box::pin(async move {
            let mut all = ControllerState {
                reachable: true,
                enabled: Some(true),
                ..ControllerState::default()
            };
            let mut details = Vec::new();
            for w in &self.workers {
                let s = w.state().await?;
                if s.enabled == Some(false) {
                    all.enabled = Some(false);
                }
                all.task_types
                    .extend(s.task_types.iter().map(|t| entry(w.url(), t)));
                details.extend(s.detail);
            }
            all.detail = Some(details.join("; "));
            Ok(all)
        })
    }
}
