//! Shared helpers: the real router on 127.0.0.1:0, a small fake vLLM server, and a trainer
//! double that copies the adapter (for orchestration tests that do not exercise SDPO).
#![allow(dead_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use claas_api::{
    ApiConfig, ApiState, DistillJob, DistillOutput, EngineError, HttpBackend, NoBackend,
    ScoreOutput, TrainedArtifacts, TrainingEngine,
};
use claas_store::LoraStore;
use serde_json::{json, Value};

pub use claas_testkit::serve;

/// Every file below `dir` (relative paths), for "nothing was written" checks.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------- fake vLLM

#[derive(Clone, Default)]
pub struct FakeVllm {
    pub calls: Arc<Mutex<Vec<String>>>,
    pub running: Arc<AtomicU64>,
    pub loaded: Arc<Mutex<HashSet<String>>>,
    pub sleeping: Arc<AtomicBool>,
    pub unauthorized: Arc<AtomicUsize>,
    /// Answer `/sleep` as `claas serve` started without `--enable-sleep-mode` does.
    pub no_sleep_mode: Arc<AtomicBool>,
}

impl FakeVllm {
    fn record(&self, h: &HeaderMap, s: String) {
        let ok = h
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "Bearer sk-test");
        if !ok {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
        }
        self.calls.lock().unwrap().push(s);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls other than the /metrics polls.
    pub fn actions(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c != "metrics")
            .collect()
    }
}

/// The fake's "tokens" are whitespace-separated words; token `i` of the full text has
/// log-probability `-(i+1)/10`.
pub fn fake_logprob(i: usize) -> f32 {
    -((i + 1) as f32) / 10.0
}

pub async fn start_fake_vllm() -> (String, FakeVllm) {
    let fake = FakeVllm::default();
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(f): State<FakeVllm>, h: HeaderMap| async move {
                f.record(&h, "metrics".into());
                let r = f.running.load(Ordering::SeqCst);
                format!(
                    "# HELP vllm:num_requests_running Number of requests running.\n\
                     # TYPE vllm:num_requests_running gauge\n\
                     vllm:num_requests_running{{model_name=\"m\"}} {r}.0\n\
                     vllm:num_requests_waiting{{model_name=\"m\"}} 0.0\n"
                )
            }),
        )
        .route(
            "/health",
            get(|| async { StatusCode::OK }),
        )
        .route(
            "/is_sleeping",
            get(|State(f): State<FakeVllm>| async move {
                Json(json!({"is_sleeping": f.sleeping.load(Ordering::SeqCst)}))
            }),
        )
        .route(
            "/tokenize",
            post(|State(f): State<FakeVllm>, h: HeaderMap, Json(b): Json<Value>| async move {
                f.record(&h, format!("tokenize {}", b["model"].as_str().unwrap_or("")));
                let n = b["prompt"].as_str().unwrap_or("").split_whitespace().count();
                Json(json!({"count": n, "max_model_len": 4096, "tokens": (0..n).collect::<Vec<_>>()}))
            }),
        )
        .route(
            "/v1/completions",
            post(|State(f): State<FakeVllm>, h: HeaderMap, Json(b): Json<Value>| async move {
                f.record(
                    &h,
                    format!(
                        "completions {} max_tokens={} prompt_logprobs={}",
                        b["model"].as_str().unwrap_or(""),
                        b["max_tokens"],
                        b["prompt_logprobs"]
                    ),
                );
                let n = b["prompt"].as_str().unwrap_or("").split_whitespace().count();
                let entries: Vec<Value> = (0..n)
                    .map(|i| {
                        if i == 0 {
                            Value::Null
                        } else {
                            // actual token first, then an alternative with a higher logprob
                            json!({
                                format!("{}", 100 + i): {"logprob": fake_logprob(i), "rank": 2, "decoded_token": "w"},
                                "7": {"logprob": -0.01, "rank": 1, "decoded_token": "x"}
                            })
                        }
                    })
                    .collect();
                Json(json!({"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "", "prompt_logprobs": entries}]}))
            }),
        )
        .route(
            "/sleep",
            post(|State(f): State<FakeVllm>, h: HeaderMap, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                f.record(&h, format!("sleep level={}", q.get("level").cloned().unwrap_or_default()));
                if f.no_sleep_mode.load(Ordering::SeqCst) {
                    let msg = "sleep mode is not enabled; start the server with --enable-sleep-mode";
                    return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": msg, "type": "BadRequestError", "code": 400}}))).into_response();
                }
                f.sleeping.store(true, Ordering::SeqCst);
                StatusCode::OK.into_response()
            }),
        )
        .route(
            "/wake_up",
            post(|State(f): State<FakeVllm>, h: HeaderMap| async move {
                f.record(&h, "wake_up".into());
                f.sleeping.store(false, Ordering::SeqCst);
                StatusCode::OK
            }),
        )
        .route(
            "/v1/unload_lora_adapter",
            post(|State(f): State<FakeVllm>, h: HeaderMap, Json(b): Json<Value>| async move {
                let name = b["lora_name"].as_str().unwrap_or("").to_string();
                f.record(&h, format!("unload {name}"));
                if f.loaded.lock().unwrap().remove(&name) {
                    StatusCode::OK.into_response()
                } else {
                    (StatusCode::NOT_FOUND, Json(json!({"error": {"message": "not found"}}))).into_response()
                }
            }),
        )
        .route(
            "/v1/load_lora_adapter",
            post(|State(f): State<FakeVllm>, h: HeaderMap, Json(b): Json<Value>| async move {
                let name = b["lora_name"].as_str().unwrap_or("").to_string();
                let path = b["lora_path"].as_str().unwrap_or("").to_string();
                let ok = Path::new(&path).join("adapter_config.json").is_file();
                f.record(&h, format!("load {name} {path}"));
                if ok {
                    f.loaded.lock().unwrap().insert(name);
                    StatusCode::OK
                } else {
                    StatusCode::BAD_REQUEST
                }
            }),
        )
        .with_state(fake.clone());
    (serve(app).await, fake)
}

// ---------------------------------------------------------------- trainer double

/// What the double saw.
#[derive(Default)]
pub struct Seen {
    pub jobs: Vec<DistillJob>,
}

/// A trainer double for orchestration tests: "training" copies the adapter files unchanged
/// and adds a marker file; it can be told to fail, to wait on a barrier, or to count
/// concurrent calls.
#[derive(Clone, Default)]
pub struct CopyEngine {
    pub seen: Arc<Mutex<Seen>>,
    pub fail_bad_input: Arc<AtomicBool>,
    /// Reject (422) any job that carries rollout log-probs, like a length mismatch would.
    pub reject_logprobs: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
    /// If set, each call waits (up to 30 s) until this many calls are inside at once.
    pub rendezvous: Option<usize>,
    pub arrived: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    pub max_in_flight: Arc<AtomicUsize>,
    pub hold: Option<Duration>,
}

struct CopyArtifacts {
    files: Vec<(String, Vec<u8>)>,
    step: usize,
}

impl TrainedArtifacts for CopyArtifacts {
    fn save_adapter(&self, dir: &Path) -> Result<(), EngineError> {
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        std::fs::write(dir.join("step.txt"), self.step.to_string())
            .map_err(|e| EngineError::Internal(e.to_string()))
    }
    fn save_optimizer(&self, dir: &Path) -> Result<(), EngineError> {
        std::fs::write(dir.join("opt.txt"), self.step.to_string())
            .map_err(|e| EngineError::Internal(e.to_string()))
    }
}

impl TrainingEngine for CopyEngine {
    fn base_model_id(&self) -> &str {
        "builtin:tiny"
    }

    fn distill(&self, job: &DistillJob) -> Result<DistillOutput, EngineError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let res = (|| {
            if let Some(n) = self.rendezvous {
                self.arrived.fetch_add(1, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while self.arrived.load(Ordering::SeqCst) < n {
                    if std::time::Instant::now() > deadline {
                        return Err(EngineError::Internal(
                            "updates did not run in parallel".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            if let Some(d) = self.hold {
                std::thread::sleep(d);
            }
            if self.reject_logprobs.load(Ordering::SeqCst)
                && job.items.iter().any(|i| i.rollout_logprobs.is_some())
            {
                return Err(EngineError::BadInput(
                    "rollout_logprobs length does not match the response".into(),
                ));
            }
            if self.fail_bad_input.load(Ordering::SeqCst) {
                return Err(EngineError::BadInput(
                    "rollout_logprobs has 3 values but the response has 5 tokens".into(),
                ));
            }
            let mut files = Vec::new();
            for name in ["adapter_config.json", "adapter_model.safetensors"] {
                let bytes = std::fs::read(job.adapter_dir.join(name))
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                files.push((name.to_string(), bytes));
            }
            let mut seen = self.seen.lock().unwrap();
            seen.jobs.push(job.clone());
            let step = seen.jobs.len();
            let metadata = claas_sdpo::DistillMetadata {
                total_loss: 0.25,
                distill_loss: 0.25,
                kl_reg: 0.0,
                mean_is_ratio: 1.0,
                clip_fraction: 0.0,
                grad_norm: 0.5,
                tokens_processed: 3,
                teacher_mode: job.training.teacher_mode.as_str().into(),
            };
            Ok(DistillOutput {
                metadata,
                timings: Default::default(),
                artifacts: Box::new(CopyArtifacts { files, step }),
            })
        })();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        res
    }

    fn score(&self, _dir: Option<&Path>, _p: &str, _r: &str) -> Result<ScoreOutput, EngineError> {
        Err(EngineError::Internal("not a scorer".into()))
    }
}

// ---------------------------------------------------------------- API under test

pub struct Api {
    pub url: String,
    pub state: ApiState,
    pub tmp: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Api {
    pub fn root(&self) -> PathBuf {
        self.state.store().root().to_path_buf()
    }
    pub fn logs(&self) -> PathBuf {
        self.state.config().feedback_log_dir.clone()
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
    /// `GET path`, the response as it came (for non-JSON bodies).
    pub async fn get_raw(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.get_raw(path).await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }
}

pub fn test_config(tmp: &Path) -> ApiConfig {
    ApiConfig {
        lora_root: tmp.join("loras"),
        base_model_id: "builtin:tiny".into(),
        vllm_base_url: None,
        vllm_api_key: None,
        vllm_rollout_model: None,
        feedback_log_dir: tmp.join("logs"),
        allowed_init_base_models: vec!["builtin:tiny".into(), "Qwen/Qwen3-8B".into()],
        lock_timeout: Duration::from_secs(60),
        // Generous: a loaded CI machine must not turn a normal drain into a 503. The test of a
        // server that never drains shortens it.
        drain_timeout: Duration::from_secs(30),
        wake_on_failure: true,
        teacher_base_url: None,
        teacher_model: None,
        teacher_api_key: None,
        ..ApiConfig::default()
    }
}

/// Starts the API. `vllm` = URL of an inference server to orchestrate.
pub async fn start_api(
    vllm: Option<&str>,
    engine: Option<Arc<dyn TrainingEngine>>,
    tweak: impl FnOnce(&mut ApiConfig),
) -> Api {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path());
    config.vllm_base_url = vllm.map(str::to_string);
    config.vllm_api_key = Some("sk-test".into());
    tweak(&mut config);
    let store = LoraStore::open(&config.lora_root).unwrap();
    let backend: Arc<dyn claas_api::Backend> = match vllm {
        Some(u) => Arc::new(
            HttpBackend::new(u, Some("sk-test".into()))
                .with_poll_interval(Duration::from_millis(20)),
        ),
        None => Arc::new(NoBackend),
    };
    let state = ApiState::new(config, store, backend, engine);
    let url = serve(claas_api::router(state.clone())).await;
    Api {
        url,
        state,
        tmp,
        http: reqwest::Client::new(),
    }
}

/// Creates `{id}-init` on the built-in tiny model through the API.
pub async fn init_adapter(api: &Api, id: &str) -> String {
    let (s, b) = api
        .post(
            "/v1/lora/init",
            json!({"lora_id": id, "base_model": "builtin:tiny", "lora_r": 4, "lora_alpha": 8}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    b["lora_id"].as_str().unwrap().to_string()
}

pub fn feedback_body(id: &str) -> Value {
    json!({
        "lora_id": id,
        "prompt": "<|im_start|>user\nhello there<|im_end|>\n<|im_start|>assistant\n",
        "response": "hi friend",
        "feedback": "be more formal",
        "training": {"teacher_mode": "self", "steps_per_batch": 1}
    })
}

pub fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}
