//! Shared state of the API routes.

use std::sync::{Arc, RwLock};

use claas_store::{LoraStore, StoreError};

use crate::backend::{Backend, HttpBackend, NoBackend};
use crate::config::ApiConfig;
use crate::engine::TrainingEngine;
use crate::locks::AdapterLocks;
use crate::metrics::Metrics;
use crate::records::CompletionRecords;
use crate::teacher::RemoteTeacher;

struct Inner {
    config: ApiConfig,
    store: LoraStore,
    backend: Arc<dyn Backend>,
    engine: RwLock<Option<Arc<dyn TrainingEngine>>>,
    /// Why the trainer could not be loaded, if it could not.
    engine_error: RwLock<Option<String>>,
    locks: AdapterLocks,
    metrics: Metrics,
    teacher: Option<RemoteTeacher>,
    records: CompletionRecords,
}

/// Everything the routes share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

impl ApiState {
    /// Assembles a state from its parts.
    pub fn new(
        config: ApiConfig,
        store: LoraStore,
        backend: Arc<dyn Backend>,
        engine: Option<Arc<dyn TrainingEngine>>,
    ) -> Self {
        let teacher = config.teacher_base_url.as_deref().map(|url| {
            RemoteTeacher::new(
                url,
                config.teacher_api_key.clone(),
                config.teacher_model.clone(),
            )
        });
        store.set_retention(config.keep_versions);
        let records =
            CompletionRecords::new(config.completion_cache_size, config.completion_cache_ttl);
        ApiState {
            inner: Arc::new(Inner {
                teacher,
                records,
                config,
                store,
                backend,
                engine: RwLock::new(engine),
                engine_error: RwLock::new(None),
                locks: AdapterLocks::new(),
                metrics: Metrics::new(),
            }),
        }
    }

    /// Opens the LoRA root and picks [`HttpBackend`] when `VLLM_BASE_URL` is set, else
    /// [`NoBackend`]. No trainer yet: add one with [`ApiState::set_engine`].
    pub fn from_config(config: ApiConfig) -> Result<Self, StoreError> {
        let store = LoraStore::open(&config.lora_root)?;
        let backend: Arc<dyn Backend> = match &config.vllm_base_url {
            Some(url) => Arc::new(HttpBackend::new(url, config.vllm_api_key.clone())),
            None => Arc::new(NoBackend),
        };
        Ok(Self::new(config, store, backend, None))
    }

    /// Installs (or replaces) the trainer, e.g. once the base model finished loading.
    pub fn set_engine(&self, engine: Arc<dyn TrainingEngine>) {
        let mut g = self.inner.engine.write().unwrap_or_else(|p| p.into_inner());
        *g = Some(engine);
    }

    /// Records why the trainer could not be loaded (e.g. the base model's download failed),
    /// so requests that need it answer 503 naming the cause instead of "still loading".
    pub fn set_engine_error(&self, error: impl Into<String>) {
        let mut g = self
            .inner
            .engine_error
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *g = Some(error.into());
    }

    /// Why the trainer could not be loaded, if [`ApiState::set_engine_error`] said.
    pub fn engine_error(&self) -> Option<String> {
        self.inner
            .engine_error
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The trainer, if loaded.
    pub fn engine(&self) -> Option<Arc<dyn TrainingEngine>> {
        self.inner
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Settings.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    /// The LoRA root.
    pub fn store(&self) -> &LoraStore {
        &self.inner.store
    }

    /// The inference server.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Per-adapter locks (public so embedders and tests can hold one).
    pub fn locks(&self) -> &AdapterLocks {
        &self.inner.locks
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The `teacher_mode: "remote"` teacher, when configured.
    pub fn teacher(&self) -> Option<&RemoteTeacher> {
        self.inner.teacher.as_ref()
    }

    /// What the chat proxy recorded of recent completions.
    pub fn records(&self) -> &CompletionRecords {
        &self.inner.records
    }
}
