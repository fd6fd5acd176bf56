//! claas-api: the CLaaS feedback API (the reference's FastAPI service, in Rust with axum).
//!
//! Routes, fields, defaults, ranges and status codes follow kfallah/CLaaS (0f67ae6, with the
//! later reference's tuned training defaults and batched `requests`). The binary builds an
//! [`ApiState`] (usually [`ApiState::from_config`] with [`ApiConfig::from_env`]), installs a
//! [`TrainingEngine`] with [`ApiState::set_engine`], and serves [`router`].

pub mod auth;
pub mod backend;
pub mod body;
pub mod config;
pub mod dashboard;
pub mod engine;
pub mod error;
pub mod feedback_log;
pub mod init;
pub mod lifecycle;
pub mod locks;
pub mod metrics;
pub mod openapi;
pub mod proxy;
pub mod records;
pub mod routes;
pub mod sdpo_engine;
pub mod state;
pub mod teacher;
pub mod types;
pub mod validate;

pub use backend::{
    normalize_adapter_name, Backend, BackendError, BackendHealth, BoxFut, HealthStatus,
    HttpBackend, NoBackend, TopkScores, Upstream,
};
pub use config::{ApiConfig, ConfigError};
pub use engine::{
    DistillJob, DistillOutput, EngineError, ScoreOutput, TrainedArtifacts, TrainingEngine,
};
pub use error::{ApiError, ValidationIssue};
pub use routes::router;
pub use sdpo_engine::SdpoEngine;
pub use state::ApiState;
pub use teacher::RemoteTeacher;
