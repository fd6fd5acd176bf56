//! End to end on the built-in tiny model with the real SDPO trainer (claas-sdpo): init ->
//! score -> feedback -> the adapter changed on disk and in its scores, optimizer state carried,
//! export loads. The engine adapter below is the few lines that map the API's job onto
//! `claas_sdpo::Trainer` (the binary uses claas-stack's equivalent).

mod common;

use std::path::Path;
use std::sync::Arc;

use claas_api::{
    DistillJob, DistillOutput, EngineError, ScoreOutput, TrainedArtifacts, TrainingEngine,
};
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, LoraAdapter, Qwen3};
use claas_sdpo::{AdamState, FeedbackItem, SdpoError, TeacherMode, Trainer, TrainingConfig};
use common::*;
use serde_json::{json, Map, Value};

struct RealEngine {
    trainer: Trainer,
    config: Value,
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

impl RealEngine {
    fn load() -> Self {
        let dir = claas_model::builtin_model_dir("tiny").unwrap();
        let model = Qwen3::load(&dir, &LoadOptions::default()).unwrap();
        let config = model.config().to_json();
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(&dir).unwrap()).unwrap();
        RealEngine {
            trainer: Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl)),
            config,
        }
    }

    fn adapter(&self, dir: &Path) -> Result<LoraAdapter, EngineError> {
        let m = self.trainer.model();
        LoraAdapter::load(dir, m.config(), m.device(), m.dtype())
            .map_err(|e| EngineError::BadInput(e.to_string()))
    }
}

impl TrainingEngine for RealEngine {
    fn base_model_id(&self) -> &str {
        "builtin:tiny"
    }
    fn base_model_config(&self) -> Option<Value> {
        Some(self.config.clone())
    }
    fn distill(&self, job: &DistillJob) -> Result<DistillOutput, EngineError> {
        let adapter = self.adapter(&job.adapter_dir)?;
        let opt = match &job.optimizer_dir {
            Some(d) => AdamState::load(d).map_err(map_err)?,
            None => None,
        };
        let t = &job.training;
        let cfg = TrainingConfig {
            learning_rate: t.learning_rate,
            alpha: t.alpha,
            is_clip: t.is_clip,
            max_grad_norm: t.max_grad_norm,
            kl_reg_weight: t.kl_reg_weight,
            teacher_top_k: t.teacher_top_k as usize,
            steps_per_batch: t.steps_per_batch as usize,
            teacher_mode: if t.teacher_mode == "remote" {
                TeacherMode::Remote
            } else {
                TeacherMode::SelfTeacher
            },
        };
        let items: Vec<FeedbackItem> = job
            .items
            .iter()
            .map(|i| FeedbackItem {
                prompt: i.prompt.clone(),
                response: i.response.clone(),
                feedback: i.feedback.clone(),
                rollout_logprobs: i.rollout_logprobs.clone(),
            })
            .collect();
        let out = self
            .trainer
            .distill(&adapter, opt, &items, &cfg)
            .map_err(map_err)?;
        let metadata = match serde_json::to_value(&out.metadata) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        Ok(DistillOutput {
            metadata,
            artifacts: Box::new(Artifacts {
                adapter: out.adapter,
                optimizer: out.optimizer,
            }),
        })
    }
    fn score(
        &self,
        dir: Option<&Path>,
        prompt: &str,
        response: &str,
    ) -> Result<ScoreOutput, EngineError> {
        let adapter = dir.map(|d| self.adapter(d)).transpose()?;
        let logprobs = self
            .trainer
            .score(adapter.as_ref(), prompt, response)
            .map_err(map_err)?;
        Ok(ScoreOutput {
            logprobs,
            tokens: Vec::new(),
            prompt_tokens: 0,
        })
    }
}

async fn score(api: &Api, id: Option<&str>, body: &Value) -> Vec<f64> {
    let mut req = json!({"prompt": body["prompt"], "response": body["response"]});
    if let Some(id) = id {
        req["lora_id"] = json!(id);
    }
    let (s, b) = api.post("/v1/score", req).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source"], "trainer");
    b["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[tokio::test]
async fn feedback_trains_the_builtin_tiny_adapter() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(Some(&vurl), Some(Arc::new(RealEngine::load())), |_| {}).await;
    let id = init_adapter(&api, "e2e/bot").await;

    let mut body = feedback_body("e2e/bot-latest");
    body["training"] = json!({"learning_rate": 2e-3, "steps_per_batch": 1});
    // A fresh adapter changes nothing: its scores equal the base model's.
    let base = score(&api, None, &body).await;
    let before = score(&api, Some("e2e/bot-latest"), &body).await;
    assert_eq!(base, before);
    let n = before.len();
    assert!(n > 0);

    // Client-given rollout log-probs of the wrong length: 422, nothing written.
    let tree_before = tree(&api.root());
    let mut bad = body.clone();
    bad["rollout_logprobs"] = json!(vec![-1.0; n + 1]);
    let (s, b) = api.post("/v1/feedback", bad).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains("rollout_logprobs"),
        "{b}"
    );
    assert_eq!(tree(&api.root()), tree_before);

    // The fake server's rollout log-probs count whitespace "tokens", generally not the real
    // tokenizer's count: the API then retries on-policy instead of failing.
    let (s, b) = api.post("/v1/feedback", body.clone()).await;
    assert_eq!(s, 200, "{b}");
    let md = &b["distill_result"]["metadata"];
    for k in [
        "total_loss",
        "distill_loss",
        "kl_reg",
        "mean_is_ratio",
        "clip_fraction",
        "grad_norm",
    ] {
        assert!(md[k].as_f64().is_some_and(f64::is_finite), "{k}: {md}");
    }
    assert_eq!(md["tokens_processed"].as_u64(), Some(n as u64));
    assert_eq!(md["teacher_mode"], "self");
    assert!(md["grad_norm"].as_f64().unwrap() > 0.0);
    assert_eq!(b["vllm"], json!({"slept": true, "woke": true}));
    assert!(fake
        .actions()
        .iter()
        .any(|a| a.starts_with("load e2e-bot-latest ")));

    // The served adapter changed: different scores, B no longer zero, optimizer state saved.
    let after = score(&api, Some("e2e/bot-latest"), &body).await;
    assert_eq!(after.len(), n);
    assert_ne!(after, before, "the adapter did not change");
    assert!(api
        .state
        .store()
        .load_state(&id, "optimizer")
        .unwrap()
        .is_some());

    // Given rollout log-probs of the right length are used; the optimizer state continues.
    let mut given = body.clone();
    given["rollout_logprobs"] = json!(before);
    let (s, b) = api.post("/v1/feedback", given).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["distill_result"]["metadata"]["adapter_version"], 3);

    // The export is a loadable PEFT adapter.
    let r = api
        .http
        .get(format!("{}/v1/lora/export?lora_id={id}", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    zip.extract(out.path()).unwrap();
    let dir = claas_model::builtin_model_dir("tiny").unwrap();
    let cfg = claas_model::Qwen3Config::from_file(&dir.join("config.json")).unwrap();
    let exported = LoraAdapter::load(
        out.path(),
        &cfg,
        &claas_model::Device::Cpu,
        claas_model::DType::F32,
    )
    .unwrap();
    let b_sum: f32 = exported
        .pair(0, claas_model::Module::Q)
        .unwrap()
        .b
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(b_sum > 0.0, "trained B should be non-zero");
}
