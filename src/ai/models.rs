//! The loaded models: at most one copy of a model per device.
//!
//! A second `load` of a model already on that device returns the loaded copy, so two
//! pipelines (or a re-registration racing a job) never double the VRAM a model holds.
//! `unload` forgets the registry's handle; jobs that still hold one finish first and the
//! session is freed when the last handle drops.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::upscaler::{LoadOptions, Provider, Upscaler};
use super::AiError;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    device: String,
    model_id: String,
}

fn key(provider: Provider, model_id: &str) -> Key {
    Key {
        device: provider.to_string(),
        model_id: model_id.to_string(),
    }
}

/// Loaded models, shared by every job.
#[derive(Default)]
pub struct Models {
    loaded: Mutex<BTreeMap<Key, Arc<Upscaler>>>,
    /// Serialises loads so two callers never load the same model at once.
    loading: Mutex<()>,
}

impl Models {
    pub fn new() -> Self {
        Self::default()
    }

    /// The loaded copy of `model_id` on `opts.provider`, loading it if needed.
    pub fn load(
        &self,
        model_id: &str,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<Arc<Upscaler>, AiError> {
        let _one_at_a_time = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.get(model_id, opts.provider) {
            return Ok(m);
        }
        let m = Arc::new(Upscaler::load(model_id, path, opts)?);
        self.lock().insert(key(opts.provider, model_id), m.clone());
        Ok(m)
    }

    pub fn get(&self, model_id: &str, provider: Provider) -> Option<Arc<Upscaler>> {
        self.lock().get(&key(provider, model_id)).cloned()
    }

    /// Forgets the model; returns whether it was loaded.
    pub fn unload(&self, model_id: &str, provider: Provider) -> bool {
        self.lock().remove(&key(provider, model_id)).is_some()
    }

    /// `(device, model_id)` of every loaded model.
    pub fn list(&self) -> Vec<(String, String)> {
        self.lock()
            .keys()
            .map(|k| (k.device.clone(), k.model_id.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Arc<Upscaler>>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
