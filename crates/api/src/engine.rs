//! The training side of the API, behind an object-safe trait so the HTTP layer can be built
//! and tested without a model, and the binary chooses what to plug in (the SDPO trainer).
//! Every method is blocking; the API calls them inside `tokio::task::spawn_blocking`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use claas_sdpo::{
    DistillMetadata, DistillTimings, ExternalTeacher, FeedbackItem, TeacherPrompt, TrainingConfig,
};

/// Failures of the trainer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request cannot be trained on as given (HTTP 422), e.g. a `rollout_logprobs` length
    /// that does not match the response's token count, or an unsupported teacher mode.
    #[error("{0}")]
    BadInput(String),
    /// Anything else (HTTP 500).
    #[error("{0}")]
    Internal(String),
}

/// One SDPO update to run.
#[derive(Debug, Clone)]
pub struct DistillJob {
    /// Resolved adapter id.
    pub adapter_id: String,
    /// The adapter folder to start from.
    pub adapter_dir: PathBuf,
    /// Saved optimizer state of this adapter, if any (fresh AdamW otherwise).
    pub optimizer_dir: Option<PathBuf>,
    /// The samples, applied together as one batch (exact ids when a completion record was
    /// found).
    pub items: Vec<FeedbackItem>,
    /// Shared hyper-parameters.
    pub training: TrainingConfig,
    /// `teacher_mode: "remote"`: the remote teacher's scores, one per item (fetched by the
    /// lifecycle on [`TrainingEngine::teacher_inputs`]).
    pub teachers: Option<Vec<ExternalTeacher>>,
}

/// The trained adapter and optimizer, kept in memory until the API saves them atomically.
pub trait TrainedArtifacts: Send {
    /// Writes the PEFT adapter files into `dir` (a staging folder).
    fn save_adapter(&self, dir: &Path) -> Result<(), EngineError>;
    /// Writes the optimizer state into `dir` (a folder that does not exist yet, inside the
    /// staging folder).
    fn save_optimizer(&self, dir: &Path) -> Result<(), EngineError>;
}

/// Result of [`TrainingEngine::distill`].
pub struct DistillOutput {
    /// The step's metrics, as the reference reports them.
    pub metadata: DistillMetadata,
    /// Where the time went.
    pub timings: DistillTimings,
    /// What to save.
    pub artifacts: Box<dyn TrainedArtifacts>,
}

/// Per-token scoring of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreOutput {
    /// One log-probability per response token.
    pub logprobs: Vec<f32>,
    /// The response tokens as text pieces (may be empty if the engine does not decode).
    pub tokens: Vec<String>,
    /// The response token ids (may be empty if the engine does not report them).
    pub token_ids: Vec<u32>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
}

/// The SDPO trainer on the base model.
pub trait TrainingEngine: Send + Sync {
    /// The base model this engine trains (`CLAAS_BASE_MODEL_ID`).
    fn base_model_id(&self) -> &str;
    /// The base model's `config.json` (used to shape fresh adapters).
    fn base_model_config(&self) -> Option<Value> {
        None
    }
    /// Runs one SDPO update (`training.steps_per_batch` optimizer steps on the batch).
    fn distill(&self, job: &DistillJob) -> Result<DistillOutput, EngineError>;
    /// What a remote teacher scores for each item: the token ids (teacher prompt + response)
    /// and the teacher prompt's length (the response's log-probs start there).
    fn teacher_inputs(
        &self,
        _items: &[FeedbackItem],
        _prompt: TeacherPrompt,
    ) -> Result<Vec<(Vec<u32>, usize)>, EngineError> {
        Err(EngineError::BadInput(
            "this trainer cannot use a remote teacher; use teacher_mode 'self'".into(),
        ))
    }
    /// Log-probabilities of `response` after `prompt` with the adapter at `adapter_dir` applied
    /// (`None` = base model).
    fn score(
        &self,
        adapter_dir: Option<&Path>,
        prompt: &str,
        response: &str,
    ) -> Result<ScoreOutput, EngineError>;
    /// The guardrail's probe of the adapter at `adapter_dir` against the base model.
    fn probe(&self, _adapter_dir: &Path) -> Result<claas_sdpo::ProbeStats, EngineError> {
        Err(EngineError::BadInput(
            "this trainer cannot run the guardrail probe".into(),
        ))
    }
    /// The reference's chat scoring (`/v1/score` with `messages` + `completion`): see
    /// [`claas_sdpo::Trainer::score_chat`].
    fn score_chat(
        &self,
        _adapter_dir: Option<&Path>,
        _messages: &[Value],
        _completion: &str,
    ) -> Result<ScoreOutput, EngineError> {
        Err(EngineError::BadInput(
            "this trainer cannot score chat messages".into(),
        ))
    }
}
