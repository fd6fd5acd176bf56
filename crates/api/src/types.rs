//! Request and response types of the CLaaS API, with the reference's fields, defaults and
//! ranges (training defaults as the later reference tuned them).

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::validate::{at, check_lora_id, Checker, Loc};
use utoipa::ToSchema;

/// Default base model of `/v1/lora/init` (reference).
pub const DEFAULT_INIT_BASE_MODEL: &str = "Qwen/Qwen3-8B";
/// The seven projections LoRA targets by default ("attention + MLP").
pub const DEFAULT_TARGET_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The SDPO hyper-parameters of a request are the trainer's own type.
pub use claas_sdpo::{TeacherMode, TeacherPrompt, TrainingConfig};

/// One numeric `training` field: its wire name, description, default and inclusive range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingField {
    pub name: &'static str,
    pub description: &'static str,
    pub default: f64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Whether the field is an integer.
    pub integer: bool,
}

/// The numeric `training` fields with the reference's defaults and ranges
/// (`_validate_training_config`; `steps_per_batch` is our extension). Validation and the
/// OpenAPI document both read this table; the defaults equal [`TrainingConfig::default`].
pub const TRAINING_FIELDS: [TrainingField; 7] = [
    TrainingField {
        name: "learning_rate",
        description: "Learning rate for LoRA parameter updates",
        default: 3e-5,
        min: Some(1e-6),
        max: Some(1e-2),
        integer: false,
    },
    TrainingField {
        name: "alpha",
        description: "GJS interpolation (0.5 = symmetric JSD, 1.0 = reverse KL)",
        default: 0.5,
        min: Some(0.0),
        max: Some(1.0),
        integer: false,
    },
    TrainingField {
        name: "is_clip",
        description: "Importance sampling ratio clip (exp space)",
        default: 5.0,
        min: Some(1.0),
        max: Some(20.0),
        integer: false,
    },
    TrainingField {
        name: "max_grad_norm",
        description: "Maximum gradient norm for clipping",
        default: 1.0,
        min: Some(0.0),
        max: None,
        integer: false,
    },
    TrainingField {
        name: "kl_reg_weight",
        description: "Weight for KL regularization to base policy",
        default: 0.0,
        min: Some(0.0),
        max: Some(1.0),
        integer: false,
    },
    TrainingField {
        name: "teacher_top_k",
        description: "Number of top logprobs taken from the teacher",
        default: 100.0,
        min: Some(10.0),
        max: Some(100.0),
        integer: true,
    },
    TrainingField {
        name: "steps_per_batch",
        description: "Optimizer steps on the batch per request (extension; the reference runs one and leaves repeats to the client)",
        default: 1.0,
        min: Some(1.0),
        max: Some(64.0),
        integer: true,
    },
];

/// The `training.teacher_mode` values, default first.
pub const TEACHER_MODES: [&str; 2] = ["self", "remote"];

/// Bounds of the post-update guardrail; `None` turns that check off.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, ToSchema)]
pub struct Guardrail {
    /// Roll back when the probe's mean KL(adapter ‖ base) exceeds this (nats).
    pub max_kl_to_base: Option<f64>,
    /// Roll back when the probe's mean next-token entropy falls below this (nats).
    pub min_entropy: Option<f64>,
}

impl Guardrail {
    /// Whether any check is on.
    pub fn enabled(&self) -> bool {
        self.max_kl_to_base.is_some() || self.min_entropy.is_some()
    }

    /// This request's bounds: the server's, with the request's `guardrail` applied.
    pub fn with(self, req: &GuardrailRequest) -> Guardrail {
        if req.enabled == Some(false) {
            return Guardrail::default();
        }
        Guardrail {
            max_kl_to_base: req.max_kl_to_base.or(self.max_kl_to_base),
            min_entropy: req.min_entropy.or(self.min_entropy),
        }
    }
}

/// A request's `guardrail` (extension): `enabled: false` turns the server's checks off for it;
/// bounds given replace the server's.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, ToSchema)]
pub struct GuardrailRequest {
    /// `false`: no check after this update.
    pub enabled: Option<bool>,
    /// Replaces the server's KL bound (nats).
    #[schema(minimum = 0.0)]
    pub max_kl_to_base: Option<f64>,
    /// Replaces the server's entropy bound (nats).
    #[schema(minimum = 0.0)]
    pub min_entropy: Option<f64>,
}

/// What the guardrail found after an update.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct GuardrailOutcome {
    /// `passed` or `rolled_back`.
    #[schema(value_type = String, pattern = "^(passed|rolled_back)$")]
    pub status: &'static str,
    /// The probe of the new version.
    pub probe: claas_sdpo::ProbeStats,
    /// The bounds applied.
    pub bounds: Guardrail,
    /// Which bounds were exceeded.
    pub violations: Vec<String>,
    /// The version serving went back to, when rolled back.
    pub rolled_back_to: Option<u64>,
}

/// Sleep/wake options of `/v1/feedback` (`orchestration`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = FeedbackOrchestration)]
pub struct Orchestration {
    #[schema(default = true, required = false)]
    pub sleep_before: bool,
    #[schema(default = true, required = false)]
    pub wake_after: bool,
    #[schema(default = true, required = false)]
    pub wake_on_failure: bool,
    /// vLLM sleep level, 1 ..= 2
    #[schema(default = 1, minimum = 1, maximum = 2, required = false)]
    pub sleep_level: u8,
}

impl Default for Orchestration {
    fn default() -> Self {
        Orchestration {
            sleep_before: true,
            wake_after: true,
            wake_on_failure: true,
            sleep_level: 1,
        }
    }
}

/// One prompt/response/feedback triple for one adapter.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FeedbackItem {
    /// LoRA identifier (e.g. 'user123/coder-v1') or alias.
    pub lora_id: String,
    /// Extension: the chat completion's `id`, for an exact completion-record lookup.
    #[schema(min_length = 1)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_id: Option<String>,
    /// The sample as the trainer takes it (`prompt`, `response`, `feedback`,
    /// `rollout_logprobs`, and the `messages` extension).
    #[serde(flatten)]
    pub sample: claas_sdpo::FeedbackItem,
    /// SDPO hyper-parameters; every field has a default.
    #[schema(value_type = crate::openapi::TrainingConfigSchema, required = false)]
    pub training: TrainingConfig,
}

/// A parsed `/v1/feedback` (or `/v1/distill`) body: one item, or `requests: [...]` applied as
/// one batched step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRequest {
    pub items: Vec<FeedbackItem>,
    pub orchestration: Orchestration,
    /// Extension: the post-update guardrail's settings for this request.
    pub guardrail: GuardrailRequest,
    /// Whether the body used the `requests: [...]` form.
    #[serde(skip)]
    pub batched: bool,
}

impl FeedbackRequest {
    /// The adapter id all items share.
    pub fn lora_id(&self) -> &str {
        self.items.first().map(|i| i.lora_id.as_str()).unwrap_or("")
    }

    /// The training settings all items share.
    pub fn training(&self) -> TrainingConfig {
        self.items
            .first()
            .map(|i| i.training.clone())
            .unwrap_or_default()
    }

    /// The request as the reference logs it: the single-item body, or `{requests, orchestration}`.
    pub fn log_value(&self) -> Value {
        if self.batched || self.items.len() != 1 {
            json!({ "requests": self.items, "orchestration": self.orchestration })
        } else {
            let mut v = serde_json::to_value(&self.items[0]).unwrap_or(Value::Null);
            if let Some(m) = v.as_object_mut() {
                m.insert(
                    "orchestration".into(),
                    serde_json::to_value(&self.orchestration).unwrap_or(Value::Null),
                );
            }
            v
        }
    }
}

fn training_field(name: &str) -> TrainingField {
    TRAINING_FIELDS
        .iter()
        .copied()
        .find(|f| f.name == name)
        .unwrap_or(TrainingField {
            name: "",
            description: "",
            default: 0.0,
            min: None,
            max: None,
            integer: false,
        })
}

fn parse_training(c: &mut Checker, parent: &Map<String, Value>, loc: &Loc) -> TrainingConfig {
    let d = TrainingConfig::default();
    let Some(m) = c.opt_object(parent, "training", loc) else {
        return d;
    };
    let l = at(loc, "training");
    let float = |c: &mut Checker, name: &str| {
        let f = training_field(name);
        c.float_in(m, name, &l, f.default, f.min, f.max)
    };
    let learning_rate = float(c, "learning_rate");
    let alpha = float(c, "alpha");
    let is_clip = float(c, "is_clip");
    let max_grad_norm = float(c, "max_grad_norm");
    let kl_reg_weight = float(c, "kl_reg_weight");
    let int = |c: &mut Checker, name: &str| {
        let f = training_field(name);
        let (lo, hi) = (f.min.unwrap_or(0.0) as i64, f.max.unwrap_or(1e9) as i64);
        c.int_in(m, name, &l, f.default as i64, Some(lo), Some(hi))
            .clamp(lo, hi) as usize
    };
    let teacher_top_k = int(c, "teacher_top_k");
    let steps_per_batch = int(c, "steps_per_batch");
    let teacher_mode = match c
        .literal(m, "teacher_mode", &l, TEACHER_MODES[0], &TEACHER_MODES)
        .as_str()
    {
        "remote" => TeacherMode::Remote,
        _ => TeacherMode::SelfTeacher,
    };
    let teacher_prompt = TeacherPrompt::parse(&c.literal(
        m,
        "teacher_prompt",
        &l,
        TeacherPrompt::default().as_str(),
        &TeacherPrompt::NAMES,
    ))
    .unwrap_or_default();
    TrainingConfig {
        learning_rate,
        alpha,
        is_clip,
        max_grad_norm,
        kl_reg_weight,
        teacher_top_k,
        steps_per_batch,
        teacher_mode,
        teacher_prompt,
    }
}

fn parse_orchestration(c: &mut Checker, parent: &Map<String, Value>, loc: &Loc) -> Orchestration {
    let d = Orchestration::default();
    let Some(m) = c.opt_object(parent, "orchestration", loc) else {
        return d;
    };
    let l = at(loc, "orchestration");
    Orchestration {
        sleep_before: c.bool_or(m, "sleep_before", &l, d.sleep_before),
        wake_after: c.bool_or(m, "wake_after", &l, d.wake_after),
        wake_on_failure: c.bool_or(m, "wake_on_failure", &l, d.wake_on_failure),
        sleep_level: c
            .int_in(m, "sleep_level", &l, 1, Some(1), Some(2))
            .clamp(1, 2) as u8,
    }
}

/// The required `lora_id` field, checked as an adapter id (empty when missing or not a string;
/// the issue is recorded either way).
fn req_lora_id(c: &mut Checker, m: &Map<String, Value>, loc: &Loc) -> String {
    let lora_id = c.req_str(m, "lora_id", loc, 0).unwrap_or_default();
    if m.get("lora_id").is_some_and(Value::is_string) {
        check_lora_id(c, &lora_id, at(loc, "lora_id"));
    }
    lora_id
}

fn parse_guardrail(c: &mut Checker, parent: &Map<String, Value>, loc: &Loc) -> GuardrailRequest {
    let Some(m) = c.opt_object(parent, "guardrail", loc) else {
        return GuardrailRequest::default();
    };
    let l = at(loc, "guardrail");
    let bound = |c: &mut Checker, key: &str| match m.get(key) {
        None | Some(Value::Null) => None,
        Some(_) => Some(c.float_in(m, key, &l, 0.0, Some(0.0), None)),
    };
    let max_kl_to_base = bound(c, "max_kl_to_base");
    let min_entropy = bound(c, "min_entropy");
    let enabled = match m.get("enabled") {
        None | Some(Value::Null) => None,
        Some(_) => Some(c.bool_or(m, "enabled", &l, true)),
    };
    GuardrailRequest {
        enabled,
        max_kl_to_base,
        min_entropy,
    }
}

fn parse_item(c: &mut Checker, m: &Map<String, Value>, loc: &Loc) -> FeedbackItem {
    let lora_id = req_lora_id(c, m, loc);
    let completion_id = match m.get("completion_id") {
        None | Some(Value::Null) => None,
        Some(_) => c.req_str(m, "completion_id", loc, 1),
    };
    let messages = match m.get("messages") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if !a.is_empty() => {
            for (i, msg) in a.iter().enumerate() {
                let li = at(&at(loc, "messages"), i);
                if let Some(mm) = c.object(msg, &li) {
                    c.req_str(mm, "role", &li, 1);
                }
            }
            Some(a.clone())
        }
        Some(v) => {
            c.push(
                at(loc, "messages"),
                "list_type",
                "Input should be a non-empty list of chat messages",
                Some(v),
            );
            None
        }
    };
    let rollout_logprobs = c.opt_f32_list(m, "rollout_logprobs", loc);
    // A log-probability is at most 0; a positive one would make the importance ratio lie.
    for (i, x) in rollout_logprobs.iter().flatten().enumerate() {
        if *x > 0.0 {
            c.push_ctx(
                at(&at(loc, "rollout_logprobs"), i),
                "less_than_equal",
                "Input should be less than or equal to 0".into(),
                &json!(x),
                json!({"le": 0.0}),
            );
        }
    }
    FeedbackItem {
        completion_id,
        sample: claas_sdpo::FeedbackItem {
            prompt: c.req_str(m, "prompt", loc, 1).unwrap_or_default(),
            response: c.req_str(m, "response", loc, 1).unwrap_or_default(),
            feedback: c.req_str(m, "feedback", loc, 1).unwrap_or_default(),
            rollout_logprobs,
            messages,
            ..claas_sdpo::FeedbackItem::default()
        },
        training: parse_training(c, m, loc),
        lora_id,
    }
}

/// Parses a feedback/distill body. 422 for any field problem; 400 when the items of a batch
/// name different adapters or training settings (as the later reference).
pub fn parse_feedback(body: &Value) -> Result<FeedbackRequest, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
    let orchestration = parse_orchestration(&mut c, m, &loc);
    let guardrail = parse_guardrail(&mut c, m, &loc);
    let (items, batched) = match m.get("requests") {
        Some(v) if !v.is_null() => {
            let l = at(&loc, "requests");
            let mut items = Vec::new();
            match v.as_array() {
                None => c.push(l, "list_type", "Input should be a valid list", Some(v)),
                Some(arr) if arr.is_empty() => c.push(
                    l,
                    "too_short",
                    "List should have at least 1 item after validation, not 0",
                    Some(v),
                ),
                Some(arr) => {
                    for (i, it) in arr.iter().enumerate() {
                        let li = at(&l, i);
                        if let Some(im) = c.object(it, &li) {
                            items.push(parse_item(&mut c, im, &li));
                        }
                    }
                }
            }
            (items, true)
        }
        _ => (vec![parse_item(&mut c, m, &loc)], false),
    };
    c.finish()?;
    let first = &items[0];
    for it in &items[1..] {
        if it.lora_id.trim_end_matches('/') != first.lora_id.trim_end_matches('/') {
            return Err(ApiError::BadRequest(
                "all requests must use the same lora_id".into(),
            ));
        }
        if it.training != first.training {
            return Err(ApiError::BadRequest(
                "all requests must use the same training config".into(),
            ));
        }
    }
    Ok(FeedbackRequest {
        items,
        orchestration,
        guardrail,
        batched,
    })
}

/// A parsed `/v1/lora/init` body.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LoraInitRequest {
    pub lora_id: String,
    #[schema(default = json!(DEFAULT_INIT_BASE_MODEL), required = false)]
    pub base_model: String,
    /// LoRA rank, 4 ..= 128, default 32
    #[schema(default = 32, minimum = 4, maximum = 128, required = false)]
    pub lora_r: u32,
    /// LoRA alpha scaling factor, 8 ..= 256, default 64
    #[schema(default = 64, minimum = 8, maximum = 256, required = false)]
    pub lora_alpha: u32,
    /// Default: the seven attention + MLP projections (q/k/v/o_proj, gate/up/down_proj), the
    /// only ones accepted.
    #[schema(min_items = 1)]
    pub target_modules: Option<Vec<String>>,
    /// Replace an existing `{lora_id}-init` (its files are kept as a version, so
    /// `/v1/lora/rollback` can bring them back). Without it an existing adapter is a 409.
    #[schema(default = false, required = false)]
    pub overwrite: bool,
}

/// Parses a `/v1/lora/init` body (422 on any problem, including unknown target modules).
pub fn parse_init(body: &Value) -> Result<LoraInitRequest, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
    let lora_id = req_lora_id(&mut c, m, &loc);
    let base_model = c.str_or(m, "base_model", &loc, DEFAULT_INIT_BASE_MODEL);
    let lora_r = c
        .int_in(m, "lora_r", &loc, 32, Some(4), Some(128))
        .clamp(4, 128) as u32;
    let lora_alpha = c
        .int_in(m, "lora_alpha", &loc, 64, Some(8), Some(256))
        .clamp(8, 256) as u32;
    let target_modules = c.opt_str_list(m, "target_modules", &loc);
    let overwrite = c.bool_or(m, "overwrite", &loc, false);
    if let Some(t) = &target_modules {
        let unsupported: Vec<&str> = t
            .iter()
            .map(String::as_str)
            .filter(|n| !DEFAULT_TARGET_MODULES.contains(n))
            .collect();
        if !unsupported.is_empty() {
            let mut supported = DEFAULT_TARGET_MODULES.to_vec();
            supported.sort();
            c.push(
                at(&loc, "target_modules"),
                "value_error",
                format!(
                    "Value error, Unsupported target_modules: {}. Supported modules: {}",
                    unsupported.join(", "),
                    supported.join(", ")
                ),
                m.get("target_modules"),
            );
        } else if t.is_empty() {
            c.push(
                at(&loc, "target_modules"),
                "too_short",
                "List should have at least 1 item after validation, not 0",
                m.get("target_modules"),
            );
        }
    }
    c.finish()?;
    Ok(LoraInitRequest {
        lora_id,
        base_model,
        lora_r,
        lora_alpha,
        target_modules,
        overwrite,
    })
}

/// A parsed `/v1/score` body: log-probability of `response` after `prompt` under an adapter
/// (or the base model when `lora_id` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScoreRequest {
    /// Adapter or alias; absent = base model.
    pub lora_id: Option<String>,
    /// The prompt text as the model saw it.
    #[schema(min_length = 1)]
    pub prompt: String,
    #[schema(min_length = 1)]
    pub response: String,
}

/// The reference HEAD's `/v1/score` body: a served model name, chat messages and the
/// completion to score after them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ChatScoreRequest {
    /// A served model name: the base model, an adapter id or alias (or its served form),
    /// optionally with `@v{N}`.
    #[schema(min_length = 1)]
    pub model: String,
    /// Chat messages, each with a `role`.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    pub completion: String,
}

/// Either form of `/v1/score`.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreInput {
    /// `{lora_id?, prompt, response}` (prompt text as the model saw it).
    Text(ScoreRequest),
    /// `{model, messages, completion}` (reference HEAD).
    Chat(ChatScoreRequest),
}

/// Parses a `/v1/score` body: the chat form when `messages` is present, else the text form.
pub fn parse_score(body: &Value) -> Result<ScoreInput, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
    if m.contains_key("messages") {
        let model = c.req_str(m, "model", &loc, 1).unwrap_or_default();
        let completion = c.req_str(m, "completion", &loc, 0).unwrap_or_default();
        let l = at(&loc, "messages");
        let mut messages = Vec::new();
        match m.get("messages") {
            Some(Value::Array(a)) => {
                for (i, msg) in a.iter().enumerate() {
                    let li = at(&l, i);
                    if let Some(mm) = c.object(msg, &li) {
                        c.req_str(mm, "role", &li, 1);
                        messages.push(msg.clone());
                    }
                }
            }
            v => c.push(l, "list_type", "Input should be a valid list", v),
        }
        c.finish()?;
        return Ok(ScoreInput::Chat(ChatScoreRequest {
            model,
            messages,
            completion,
        }));
    }
    let lora_id = match m.get("lora_id") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let id = c.req_str(m, "lora_id", &loc, 0);
            if let Some(id) = &id {
                check_lora_id(&mut c, id, at(&loc, "lora_id"));
            }
            id
        }
    };
    let prompt = c.req_str(m, "prompt", &loc, 1).unwrap_or_default();
    let response = c.req_str(m, "response", &loc, 1).unwrap_or_default();
    c.finish()?;
    Ok(ScoreInput::Text(ScoreRequest {
        lora_id,
        prompt,
        response,
    }))
}

/// A parsed `/v1/lora/rollback` body.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RollbackRequest {
    pub lora_id: String,
    pub version: u64,
}

/// Parses a `/v1/lora/rollback` body (422 on any problem).
pub fn parse_rollback(body: &Value) -> Result<RollbackRequest, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
    let lora_id = req_lora_id(&mut c, m, &loc);
    if !m.contains_key("version") {
        c.push(at(&loc, "version"), "missing", "Field required", None);
    }
    let version = c.int_in(m, "version", &loc, 0, Some(0), None).max(0) as u64;
    c.finish()?;
    Ok(RollbackRequest { lora_id, version })
}

/// `metadata` of a distill result: the reference's metrics, our timings and the version the
/// step produced.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DistillResultMetadata {
    #[serde(flatten)]
    pub metrics: claas_sdpo::DistillMetadata,
    pub timings_ms: claas_sdpo::DistillTimings,
    /// The adapter version the step produced.
    pub adapter_version: u64,
}

/// `{lora_id, metadata}` of a distill step.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DistillResponse {
    pub lora_id: String,
    pub metadata: DistillResultMetadata,
}

/// `vllm{slept, woke}`
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct VllmState {
    pub slept: bool,
    pub woke: bool,
}

/// Milliseconds per feedback phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct TimingMs {
    pub sleep: u64,
    pub distill: u64,
    pub save: u64,
    pub wake: u64,
    pub logprobs: u64,
    pub total: u64,
}

/// Body of a successful `/v1/feedback`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FeedbackResponse {
    pub status: String,
    pub request_id: String,
    pub lora_id: String,
    pub distill_result: Option<DistillResponse>,
    pub vllm: VllmState,
    pub feedback_log_path: String,
    pub timing_ms: TimingMs,
    pub batch_size: usize,
    /// The immutable version this update produced (`{id}@v{N}` serves it).
    pub adapter_version: Option<u64>,
    /// The version it trained from (`None` for an adapter that had no history).
    pub previous_version: Option<u64>,
    /// `{id}@v{N}`.
    pub version_name: Option<String>,
    /// The version serving uses after this request (differs from `adapter_version` when the
    /// guardrail rolled the update back).
    pub current_version: Option<u64>,
    /// The post-update check, when one ran.
    pub guardrail: Option<GuardrailOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_tuned_reference_ones() {
        let r = parse_feedback(&json!({
            "lora_id": "u/a", "prompt": "p", "response": "r", "feedback": "f"
        }))
        .unwrap();
        assert!(!r.batched);
        let t = &r.items[0].training;
        assert_eq!(t.learning_rate, 3e-5);
        assert_eq!(t.kl_reg_weight, 0.0);
        assert_eq!(t.steps_per_batch, 1, "one optimizer step per request");
        assert_eq!(t.teacher_top_k, 100);
        assert_eq!(t.teacher_mode, TeacherMode::SelfTeacher);
        assert_eq!(t.teacher_prompt, TeacherPrompt::Hindsight);
        assert_eq!(r.orchestration, Orchestration::default());
    }

    #[test]
    fn the_table_defaults_are_the_trainer_defaults() {
        let d = serde_json::to_value(TrainingConfig::default()).unwrap();
        for f in TRAINING_FIELDS {
            assert_eq!(d[f.name].as_f64(), Some(f.default), "{}", f.name);
            let parsed = parse_feedback(&json!({"lora_id": "u/a", "prompt": "p",
                "response": "r", "feedback": "f", "training": {f.name: f.default}}))
            .unwrap();
            assert_eq!(parsed.training(), TrainingConfig::default());
            if let Some(min) = f.min {
                let below = if f.integer {
                    min - 1.0
                } else {
                    min - min.abs().max(1e-9)
                };
                let r = parse_feedback(&json!({"lora_id": "u/a", "prompt": "p",
                    "response": "r", "feedback": "f", "training": {f.name: below}}));
                assert!(
                    matches!(r, Err(ApiError::Validation(_))),
                    "{} below {min}",
                    f.name
                );
            }
        }
        let r = parse_feedback(&json!({"lora_id": "u/a", "prompt": "p", "response": "r",
            "feedback": "f", "completion_id": "chatcmpl-1",
            "messages": [{"role": "user", "content": "p"}],
            "training": {"teacher_prompt": "0f67ae6", "teacher_mode": "remote"}}))
        .unwrap();
        assert_eq!(r.items[0].completion_id.as_deref(), Some("chatcmpl-1"));
        assert_eq!(r.items[0].sample.messages.as_ref().map(Vec::len), Some(1));
        assert_eq!(r.training().teacher_prompt, TeacherPrompt::Seed);
        assert_eq!(r.training().teacher_mode, TeacherMode::Remote);
        assert!(
            parse_feedback(&json!({"lora_id": "u/a", "prompt": "p", "response": "r",
            "feedback": "f", "training": {"teacher_prompt": "other"}}))
            .is_err()
        );
    }

    #[test]
    fn batch_form_and_mismatch() {
        let item = json!({"lora_id": "u/a", "prompt": "p", "response": "r", "feedback": "f"});
        let r = parse_feedback(&json!({"requests": [item, item]})).unwrap();
        assert!(r.batched);
        assert_eq!(r.items.len(), 2);
        let other = json!({"lora_id": "u/b", "prompt": "p", "response": "r", "feedback": "f"});
        assert!(matches!(
            parse_feedback(&json!({"requests": [item, other]})),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_feedback(&json!({"requests": []})),
            Err(ApiError::Validation(_))
        ));
    }
}
