//! Request and response types of the CLaaS API, with the reference's fields, defaults and
//! ranges (training defaults as the later reference tuned them).

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::validate::{at, check_lora_id, Checker, Loc};

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

/// SDPO hyper-parameters of one request (`training`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingSettings {
    /// 1e-6 ..= 1e-2, default 3e-5.
    pub learning_rate: f64,
    /// 0 ..= 1, default 0.5 (0.5 = symmetric JSD, 1 = reverse KL).
    pub alpha: f64,
    /// 1 ..= 20, default 5 (importance-ratio clip, exp space).
    pub is_clip: f64,
    /// >= 0, default 1.
    pub max_grad_norm: f64,
    /// 0 ..= 1, default 0.
    pub kl_reg_weight: f64,
    /// 10 ..= 100, default 100.
    pub teacher_top_k: u32,
    /// >= 1, default 4: optimizer steps on the batch per request.
    pub steps_per_batch: u32,
    /// `self` (base model conditioned on feedback) or `remote`.
    pub teacher_mode: String,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        TrainingSettings {
            learning_rate: 3e-5,
            alpha: 0.5,
            is_clip: 5.0,
            max_grad_norm: 1.0,
            kl_reg_weight: 0.0,
            teacher_top_k: 100,
            steps_per_batch: 4,
            teacher_mode: "self".into(),
        }
    }
}

/// Sleep/wake options of `/v1/feedback` (`orchestration`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Orchestration {
    pub sleep_before: bool,
    pub wake_after: bool,
    pub wake_on_failure: bool,
    /// 1 ..= 2
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackItem {
    pub lora_id: String,
    pub prompt: String,
    pub response: String,
    pub feedback: String,
    pub rollout_logprobs: Option<Vec<f32>>,
    pub training: TrainingSettings,
}

/// A parsed `/v1/feedback` (or `/v1/distill`) body: one item, or `requests: [...]` applied as
/// one batched step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackRequest {
    pub items: Vec<FeedbackItem>,
    pub orchestration: Orchestration,
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
    pub fn training(&self) -> TrainingSettings {
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

fn parse_training(c: &mut Checker, parent: &Map<String, Value>, loc: &Loc) -> TrainingSettings {
    let d = TrainingSettings::default();
    let Some(m) = c.opt_object(parent, "training", loc) else {
        return d;
    };
    let l = at(loc, "training");
    TrainingSettings {
        learning_rate: c.float_in(
            m,
            "learning_rate",
            &l,
            d.learning_rate,
            Some(1e-6),
            Some(1e-2),
        ),
        alpha: c.float_in(m, "alpha", &l, d.alpha, Some(0.0), Some(1.0)),
        is_clip: c.float_in(m, "is_clip", &l, d.is_clip, Some(1.0), Some(20.0)),
        max_grad_norm: c.float_in(m, "max_grad_norm", &l, d.max_grad_norm, Some(0.0), None),
        kl_reg_weight: c.float_in(
            m,
            "kl_reg_weight",
            &l,
            d.kl_reg_weight,
            Some(0.0),
            Some(1.0),
        ),
        teacher_top_k: c
            .int_in(m, "teacher_top_k", &l, 100, Some(10), Some(100))
            .clamp(0, 100) as u32,
        steps_per_batch: c
            .int_in(m, "steps_per_batch", &l, 4, Some(1), Some(u32::MAX as i64))
            .clamp(1, u32::MAX as i64) as u32,
        teacher_mode: c.literal(m, "teacher_mode", &l, "self", &["self", "remote"]),
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

fn parse_item(c: &mut Checker, m: &Map<String, Value>, loc: &Loc) -> FeedbackItem {
    let lora_id = c.req_str(m, "lora_id", loc, 0).unwrap_or_default();
    if m.get("lora_id").is_some_and(Value::is_string) {
        check_lora_id(c, &lora_id, at(loc, "lora_id"));
    }
    FeedbackItem {
        prompt: c.req_str(m, "prompt", loc, 1).unwrap_or_default(),
        response: c.req_str(m, "response", loc, 1).unwrap_or_default(),
        feedback: c.req_str(m, "feedback", loc, 1).unwrap_or_default(),
        rollout_logprobs: c.opt_f32_list(m, "rollout_logprobs", loc),
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
        batched,
    })
}

/// A parsed `/v1/lora/init` body.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraInitRequest {
    pub lora_id: String,
    pub base_model: String,
    /// 4 ..= 128, default 32
    pub lora_r: u32,
    /// 8 ..= 256, default 64
    pub lora_alpha: u32,
    /// Default: the seven attention + MLP projections.
    pub target_modules: Option<Vec<String>>,
}

/// Parses a `/v1/lora/init` body (422 on any problem, including unknown target modules).
pub fn parse_init(body: &Value) -> Result<LoraInitRequest, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
    let lora_id = c.req_str(m, "lora_id", &loc, 0).unwrap_or_default();
    if m.get("lora_id").is_some_and(Value::is_string) {
        check_lora_id(&mut c, &lora_id, at(&loc, "lora_id"));
    }
    let base_model = c.str_or(m, "base_model", &loc, DEFAULT_INIT_BASE_MODEL);
    let lora_r = c
        .int_in(m, "lora_r", &loc, 32, Some(4), Some(128))
        .clamp(4, 128) as u32;
    let lora_alpha = c
        .int_in(m, "lora_alpha", &loc, 64, Some(8), Some(256))
        .clamp(8, 256) as u32;
    let target_modules = c.opt_str_list(m, "target_modules", &loc);
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
    })
}

/// A parsed `/v1/score` body: log-probability of `response` after `prompt` under an adapter
/// (or the base model when `lora_id` is absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRequest {
    pub lora_id: Option<String>,
    pub prompt: String,
    pub response: String,
}

/// Parses a `/v1/score` body.
pub fn parse_score(body: &Value) -> Result<ScoreRequest, ApiError> {
    let mut c = Checker::new();
    let loc = vec![json!("body")];
    let Some(m) = c.object(body, &loc) else {
        c.finish()?;
        return Err(ApiError::Internal("unreachable: non-object body".into()));
    };
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
    Ok(ScoreRequest {
        lora_id,
        prompt,
        response,
    })
}

/// `{lora_id, metadata}` of a distill step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DistillResponse {
    pub lora_id: String,
    pub metadata: Map<String, Value>,
}

/// `vllm{slept, woke}`
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct VllmState {
    pub slept: bool,
    pub woke: bool,
}

/// Milliseconds per feedback phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct TimingMs {
    pub sleep: u64,
    pub distill: u64,
    pub save: u64,
    pub wake: u64,
    pub logprobs: u64,
    pub total: u64,
}

/// Body of a successful `/v1/feedback`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedbackResponse {
    pub status: String,
    pub request_id: String,
    pub lora_id: String,
    pub distill_result: Option<DistillResponse>,
    pub vllm: VllmState,
    pub feedback_log_path: String,
    pub timing_ms: TimingMs,
    pub batch_size: usize,
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
        assert_eq!(t.steps_per_batch, 4);
        assert_eq!(t.teacher_top_k, 100);
        assert_eq!(t.teacher_mode, "self");
        assert_eq!(r.orchestration, Orchestration::default());
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
