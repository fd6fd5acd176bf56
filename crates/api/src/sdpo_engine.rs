//! The feedback API's training engine: the SDPO trainer on a shared base model.

use std::path::Path;
use std::sync::Arc;

use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, LoraAdapter, Qwen3};
use claas_sdpo::{AdamState, FeedbackItem, SdpoError, TeacherPrompt, Trainer};
use serde_json::Value;

use crate::engine::{
    DistillJob, DistillOutput, EngineError, ScoreOutput, TrainedArtifacts, TrainingEngine,
};

/// [`TrainingEngine`] over [`claas_sdpo::Trainer`].
pub struct SdpoEngine {
    trainer: Arc<Trainer>,
    tokenizer: Arc<Tokenizer>,
    base_model_id: String,
    config_json: Value,
}

impl SdpoEngine {
    /// `base_model_id` is the spec the model was loaded from (what `/v1/lora/init` compares).
    pub fn new(trainer: Arc<Trainer>, tokenizer: Arc<Tokenizer>, base_model_id: String) -> Self {
        let config_json = trainer.model().config().to_json();
        SdpoEngine {
            trainer,
            tokenizer,
            base_model_id,
            config_json,
        }
    }

    /// Loads the base model named by `spec` (folder, hub id or `builtin:NAME`) with its
    /// tokenizer and chat template, and builds the trainer on it.
    pub fn load(spec: &str) -> Result<Self, EngineError> {
        Self::load_with(spec, &LoadOptions::default())
    }

    /// [`SdpoEngine::load`] with explicit load options (e.g. `claas api --dtype`).
    pub fn load_with(spec: &str, opts: &LoadOptions) -> Result<Self, EngineError> {
        let fail = |e: String| EngineError::Internal(format!("loading base model {spec}: {e}"));
        let dir = claas_model::resolve_model(spec).map_err(|e| fail(e.to_string()))?;
        let model = Qwen3::load(&dir, opts).map_err(|e| fail(e.to_string()))?;
        let tokenizer = Arc::new(
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| fail(e.to_string()))?,
        );
        let template = TokenizerConfig::from_dir(&dir)
            .and_then(|c| ChatTemplate::from_config(&c))
            .map_err(|e| fail(e.to_string()))?;
        let trainer = Trainer::new(Arc::new(model), tokenizer.clone(), Arc::new(template));
        Ok(Self::new(Arc::new(trainer), tokenizer, spec.to_string()))
    }

    /// The trainer (and through it the shared base model).
    pub fn trainer(&self) -> &Arc<Trainer> {
        &self.trainer
    }

    fn model(&self) -> &Arc<Qwen3> {
        self.trainer.model()
    }

    fn load_adapter(&self, dir: &Path) -> Result<LoraAdapter, EngineError> {
        let m = self.model();
        LoraAdapter::load(dir, m.config(), m.device(), m.dtype())
            .map_err(|e| EngineError::BadInput(format!("cannot load adapter: {e}")))
    }
}

fn map_err(e: SdpoError) -> EngineError {
    if e.is_bad_input() {
        EngineError::BadInput(e.to_string())
    } else {
        EngineError::Internal(e.to_string())
    }
}

struct Artifacts {
    adapter: LoraAdapter,
    optimizer: AdamState,
}

impl TrainedArtifacts for Artifacts {
    fn save_adapter(&self, dir: &Path) -> Result<(), EngineError> {
        self.adapter
            .save(dir)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    fn save_optimizer(&self, dir: &Path) -> Result<(), EngineError> {
        self.optimizer.save(dir).map_err(map_err)
    }
}

impl TrainingEngine for SdpoEngine {
    fn base_model_id(&self) -> &str {
        &self.base_model_id
    }

    fn base_model_config(&self) -> Option<Value> {
        Some(self.config_json.clone())
    }

    fn distill(&self, job: &DistillJob) -> Result<DistillOutput, EngineError> {
        let adapter = self.load_adapter(&job.adapter_dir)?;
        let opt = match &job.optimizer_dir {
            Some(dir) => AdamState::load(dir).map_err(map_err)?,
            None => None,
        };
        let (out, _) = self
            .trainer
            .distill_with_teachers(
                &adapter,
                opt,
                &job.items,
                job.teachers.as_deref(),
                &job.training,
                false,
            )
            .map_err(map_err)?;
        Ok(DistillOutput {
            metadata: out.metadata,
            timings: out.timings,
            artifacts: Box::new(Artifacts {
                adapter: out.adapter,
                optimizer: out.optimizer,
            }),
        })
    }

    fn teacher_inputs(
        &self,
        items: &[FeedbackItem],
        prompt: TeacherPrompt,
    ) -> Result<Vec<(Vec<u32>, usize)>, EngineError> {
        items
            .iter()
            .map(|i| {
                let p = self.trainer.prepare(i, prompt).map_err(map_err)?;
                Ok((p.teacher_input_ids(), p.teacher_prompt_ids.len()))
            })
            .collect()
    }

    fn score(
        &self,
        adapter_dir: Option<&Path>,
        prompt: &str,
        response: &str,
    ) -> Result<ScoreOutput, EngineError> {
        let adapter = adapter_dir.map(|d| self.load_adapter(d)).transpose()?;
        // Tokenised as the trainer's `score` does (prompt with special tokens, response
        // without), so the decoded pieces line up one to one with the log-probabilities.
        let bad = |e: claas_chat::ChatError| EngineError::BadInput(e.to_string());
        let prompt_ids = self.tokenizer.encode(prompt, true).map_err(bad)?;
        let token_ids = self.tokenizer.encode(response, false).map_err(bad)?;
        let logprobs = self
            .trainer
            .score_ids(adapter.as_ref(), &prompt_ids, &token_ids)
            .map_err(map_err)?;
        let tokens = token_ids
            .iter()
            .map(|&t| self.tokenizer.decode(&[t], false).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ScoreOutput {
            logprobs,
            tokens,
            token_ids,
            prompt_tokens: prompt_ids.len(),
        })
    }

    fn probe(&self, adapter_dir: &Path) -> Result<claas_sdpo::ProbeStats, EngineError> {
        let adapter = self.load_adapter(adapter_dir)?;
        self.trainer.probe(&adapter).map_err(map_err)
    }

    fn score_chat(
        &self,
        adapter_dir: Option<&Path>,
        messages: &[Value],
        completion: &str,
    ) -> Result<ScoreOutput, EngineError> {
        let adapter = adapter_dir.map(|d| self.load_adapter(d)).transpose()?;
        let s = self
            .trainer
            .score_chat(adapter.as_ref(), messages, completion)
            .map_err(map_err)?;
        Ok(ScoreOutput {
            logprobs: s.logprobs,
            tokens: s.tokens,
            token_ids: s.token_ids,
            prompt_tokens: s.prompt_tokens,
        })
    }
}
