//! One SDPO distillation step (the reference `DistillationTrainer.distill`, with PR #35's teacher
//! prompt and PR #37's adapter-free teacher/base), batched over several feedback items and
//! optionally repeated `steps_per_batch` times.

use std::sync::Arc;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, D};
use claas_chat::{ChatTemplate, Tokenizer};
use claas_model::{LoraAdapter, Qwen3, TrainableLora};
use serde::{Deserialize, Serialize};

use crate::loss::{sdpo_loss, LossInput};
use crate::optim::{adamw_step, clip_grad_norm, tensor_to_vec, AdamState};
use crate::select::select_log_softmax;
use crate::teacher::{
    hindsight_messages, render_prompt, teacher_prompt, StudentContext, TeacherPrompt,
};
use crate::{Result, SdpoError};

/// Where the teacher's log-probabilities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub enum TeacherMode {
    /// The frozen base model, prompted with the feedback (`"self"`).
    #[default]
    #[serde(rename = "self")]
    SelfTeacher,
    /// Another model's log-probabilities, scored by the caller ([`ExternalTeacher`]).
    #[serde(rename = "remote")]
    Remote,
}

impl TeacherMode {
    /// The wire name (`"self"` / `"remote"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TeacherMode::SelfTeacher => "self",
            TeacherMode::Remote => "remote",
        }
    }
}

/// Hyperparameters of a distillation request. Defaults are the later reference's tuned values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainingConfig {
    pub learning_rate: f64,
    pub alpha: f64,
    pub is_clip: f64,
    pub max_grad_norm: f64,
    pub kl_reg_weight: f64,
    pub teacher_top_k: usize,
    pub steps_per_batch: usize,
    pub teacher_mode: TeacherMode,
    /// The self-teacher's prompt ([`TeacherPrompt`]; ignored by a remote teacher's scores but
    /// used to build what it scores).
    pub teacher_prompt: TeacherPrompt,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        TrainingConfig {
            learning_rate: 3e-5,
            alpha: 0.5,
            is_clip: 5.0,
            max_grad_norm: 1.0,
            kl_reg_weight: 0.0,
            teacher_top_k: 100,
            steps_per_batch: 1,
            teacher_mode: TeacherMode::SelfTeacher,
            teacher_prompt: TeacherPrompt::Hindsight,
        }
    }
}

impl TrainingConfig {
    /// Rejects values the step cannot run with (the API enforces the reference's narrower ranges).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(SdpoError::InvalidInput(m));
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad(format!(
                "learning_rate must be > 0, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return bad(format!("alpha must be in [0, 1], got {}", self.alpha));
        }
        if !(self.is_clip.is_finite() && self.is_clip > 0.0) {
            return bad(format!("is_clip must be > 0, got {}", self.is_clip));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(format!(
                "max_grad_norm must be >= 0, got {}",
                self.max_grad_norm
            ));
        }
        if !(self.kl_reg_weight.is_finite() && self.kl_reg_weight >= 0.0) {
            return bad(format!(
                "kl_reg_weight must be >= 0, got {}",
                self.kl_reg_weight
            ));
        }
        if self.teacher_top_k == 0 {
            return bad("teacher_top_k must be >= 1".into());
        }
        if self.steps_per_batch == 0 {
            return bad("steps_per_batch must be >= 1".into());
        }
        Ok(())
    }
}

/// One piece of feedback on one answer.
///
/// The student's tokens come from, in order of preference: `prompt_ids` + `response_ids` (the
/// exact ids the server sampled, from a completion record), `messages` rendered with the chat
/// template (`add_generation_prompt`) + the encoded response, or the 0f67ae6 form:
/// `encode(prompt, add_special_tokens) ++ encode(response)` with `prompt` already
/// chat-formatted by the client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "utoipa",
    derive(utoipa::ToSchema),
    schema(
        as = FeedbackSample,
        description = "One piece of feedback on one answer, as a client sends it"
    )
)]
pub struct FeedbackItem {
    /// The prompt as the client sent it: chat-formatted text (0f67ae6) or the clean user prompt.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1))]
    pub prompt: String,
    /// The model's answer.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1))]
    pub response: String,
    /// The user's feedback on the answer.
    #[cfg_attr(feature = "utoipa", schema(min_length = 1))]
    pub feedback: String,
    /// Log-probabilities of the response tokens under the policy that sampled them.
    #[serde(default)]
    pub rollout_logprobs: Option<Vec<f32>>,
    /// Exact prompt token ids the student saw (chat template applied).
    // This and the other ignored fields are filled by the API (completion records), not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(ignore))]
    pub prompt_ids: Option<Vec<u32>>,
    /// Exact response token ids the student sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(ignore))]
    pub response_ids: Option<Vec<u32>>,
    /// The chat messages the response answered (student prompt when no ids are given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Vec<Object>>))]
    pub messages: Option<Vec<serde_json::Value>>,
    /// The student's system prompt, for the hindsight teacher (recovered from `messages` or a
    /// chat-formatted `prompt` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(ignore))]
    pub system_prompt: Option<String>,
    /// The clean user prompt, for the hindsight teacher (likewise recovered when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(ignore))]
    pub user_prompt: Option<String>,
}

impl FeedbackItem {
    /// The student's context as the hindsight teacher sees it.
    pub fn student_context(&self) -> StudentContext {
        let mut ctx = match &self.messages {
            Some(m) => StudentContext::from_messages(m),
            None => StudentContext::from_prompt_text(&self.prompt),
        };
        if let Some(s) = &self.system_prompt {
            ctx.system_prompt = (!s.is_empty()).then(|| s.clone());
        }
        if let Some(u) = &self.user_prompt {
            ctx.user_prompt = u.clone();
        }
        ctx
    }
}

/// Training metrics of a distillation, as the reference reports them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DistillMetadata {
    pub total_loss: f64,
    pub distill_loss: f64,
    pub kl_reg: f64,
    pub mean_is_ratio: f64,
    pub clip_fraction: f64,
    /// Total gradient L2 norm before clipping.
    pub grad_norm: f64,
    /// Response tokens in the batch.
    pub tokens_processed: usize,
    pub teacher_mode: String,
}

/// Wall-clock breakdown of a distillation, in milliseconds (summed over `steps_per_batch`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct DistillTimings {
    /// Tokenisation and teacher prompt rendering.
    pub tokenize_ms: f64,
    /// No-grad scoring: teacher top-k and base log-probabilities (adapter disabled).
    pub teacher_ms: f64,
    /// Student forward and loss.
    pub forward_ms: f64,
    /// Backward pass and gradient accumulation.
    pub backward_ms: f64,
    /// Clipping and AdamW.
    pub optimizer_ms: f64,
    pub total_ms: f64,
}

/// The result of [`Trainer::distill`]. Nothing is written to disk; the caller saves both parts.
#[derive(Debug, Clone)]
pub struct DistillOutcome {
    pub adapter: LoraAdapter,
    pub optimizer: AdamState,
    /// Metrics of the last step when `steps_per_batch > 1`.
    pub metadata: DistillMetadata,
    pub timings: DistillTimings,
}

/// Token ids and teacher prompt of one feedback item.
#[derive(Debug, Clone)]
pub struct PreparedItem {
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    pub teacher_prompt_text: String,
    pub teacher_prompt_ids: Vec<u32>,
}

impl PreparedItem {
    /// `prompt_ids ++ response_ids`.
    pub fn student_input_ids(&self) -> Vec<u32> {
        [self.prompt_ids.as_slice(), self.response_ids.as_slice()].concat()
    }

    /// `teacher_prompt_ids ++ response_ids`.
    pub fn teacher_input_ids(&self) -> Vec<u32> {
        [
            self.teacher_prompt_ids.as_slice(),
            self.response_ids.as_slice(),
        ]
        .concat()
    }
}

/// The frozen targets of one item: the teacher's top-k and the base log-probabilities.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `[T * k]` row-major, each row sorted by descending log-probability.
    pub topk_logprobs: Vec<f32>,
    pub topk_indices: Vec<u32>,
    pub k: usize,
    /// Teacher log-prob of each response token over the full vocabulary (diagnostic).
    pub teacher_logprob_of_response: Vec<f32>,
    /// `[T]` base log-probabilities of the response tokens (KL-to-base reference).
    pub base_logprobs: Vec<f32>,
}

/// A teacher scored elsewhere (`teacher_mode: "remote"`, e.g. a larger model of the same
/// tokenizer family on a vLLM-compatible server): per response token, the top alternatives
/// `(token id, log-prob)` in any order, and the response token's own log-prob if reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalTeacher {
    pub rows: Vec<Vec<(u32, f32)>>,
    pub response_logprobs: Vec<Option<f32>>,
}

/// Log-prob given to padding slots of rows shorter than k (the reference's
/// `parse_teacher_result` pads with -100 at token 0: weight e^-100, i.e. none).
const PAD_LOGPROB: f32 = -100.0;

/// Everything one step computed, for parity tests and diagnostics.
#[derive(Debug, Clone)]
pub struct StepTrace {
    pub items: Vec<ItemTrace>,
    /// Pre-clip gradients `(peft_key, shape, values)`, in `named_vars` order.
    pub grads: Vec<(String, Vec<usize>, Vec<f32>)>,
    pub metadata: DistillMetadata,
}

/// Per-item values of a traced step.
#[derive(Debug, Clone)]
pub struct ItemTrace {
    pub prepared: PreparedItem,
    pub targets: Targets,
    pub old_logprobs: Vec<f32>,
    pub student_logprobs: Vec<f32>,
}

/// What [`Trainer::score_chat`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatScore {
    /// Log-probability of each completion token.
    pub logprobs: Vec<f32>,
    /// The completion's token ids.
    pub token_ids: Vec<u32>,
    /// Each id decoded on its own.
    pub tokens: Vec<String>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
}

/// Whether the student's forward keeps every layer's activations for the backward or only each
/// layer's input, recomputing the layer in the backward ([`Qwen3::forward_train_checkpointed`]).
/// Both give the same gradients up to f32 summation order; checkpointing costs one more forward
/// and saves most of the step's memory on large models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpointing {
    /// Checkpoint when the estimated saved activations exceed [`CHECKPOINT_BUDGET_BYTES`].
    #[default]
    Auto,
    Always,
    Never,
}

/// Above this estimate of a sequence's saved activations, [`Checkpointing::Auto`] checkpoints:
/// a 320-token step on Qwen3-0.6B (~6.5 GB measured) keeps the faster single-graph backward,
/// on Qwen3-8B (~13 GB extrapolated from a 2-layer run, on top of 16.4 GB of bf16 weights) it
/// checkpoints.
pub const CHECKPOINT_BUDGET_BYTES: usize = 8 << 30;

/// Estimated bytes a training-mode decoder layer keeps alive per token until its backward,
/// fitted to the peak RSS of a 320-token step on the Qwen3-0.6B shape (`claas bench loop`,
/// ~740 kB per token and layer; it overestimates the 8B shape, ~1.1 MB measured against 2.9):
/// the projections, norms, RoPE and residuals of the composed training ops, their LoRA sums,
/// the MLP's intermediate-wide tensors and the gradients alive during the backward.
fn saved_bytes_per_token_layer(c: &claas_model::Qwen3Config) -> usize {
    4 * (90 * c.hidden_size + 28 * c.intermediate_size)
}

/// Runs SDPO steps on one base model.
pub struct Trainer {
    model: Arc<Qwen3>,
    tokenizer: Arc<Tokenizer>,
    template: Arc<ChatTemplate>,
    /// Chunk length of the no-grad forwards (bounds their attention matrices).
    chunk: usize,
    checkpointing: Checkpointing,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn chat_err(e: impl std::fmt::Display) -> SdpoError {
    SdpoError::Chat(e.to_string())
}

/// Log-probabilities of `ids` under `logits` rows (`[T, V]`), as f32.
fn gather_logprobs(logits: &Tensor, ids: &[u32]) -> Result<Vec<f32>> {
    let lp = select_log_softmax(&logits.to_dtype(DType::F32)?, ids.to_vec(), 1)?;
    Ok(lp.flatten_all()?.to_vec1::<f32>()?)
}

/// Top-k of each row of a row-major `[rows, v]` matrix, sorted descending
/// (ties: lower id first). Rows are independent: parallel over rows.
fn topk_rows(lp: &[f32], v: usize, k: usize) -> (Vec<f32>, Vec<u32>) {
    use rayon::prelude::*;
    let k = k.min(v);
    let rows = lp.len().checked_div(v).unwrap_or(0);
    let (mut vals, mut idxs) = (vec![0f32; rows * k], vec![0u32; rows * k]);
    if k == 0 {
        return (vals, idxs);
    }
    vals.par_chunks_mut(k)
        .zip(idxs.par_chunks_mut(k))
        .zip(lp.par_chunks_exact(v))
        .for_each_init(
            || Vec::with_capacity(v),
            |order: &mut Vec<u32>, ((vals, idxs), row)| {
                let desc =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                order.clear();
                order.extend(0..v as u32);
                if k < v {
                    order.select_nth_unstable_by(k - 1, desc);
                    order.truncate(k);
                }
                order.sort_by(desc);
                for ((val, idx), &i) in vals.iter_mut().zip(idxs.iter_mut()).zip(order.iter()) {
                    *val = row[i as usize];
                    *idx = i;
                }
            },
        );
    (vals, idxs)
}

/// Runs `f` on the values of a contiguous f32 CPU tensor without copying them.
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match (&*s, l.contiguous_offsets()) {
        (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) => {
            Ok(f(&v[a..b]))
        }
        _ => {
            drop(s);
            Ok(f(&t.flatten_all()?.to_vec1::<f32>()?))
        }
    }
}

impl Trainer {
    /// A trainer for `model`, with its tokenizer and chat template.
    pub fn new(model: Arc<Qwen3>, tokenizer: Arc<Tokenizer>, template: Arc<ChatTemplate>) -> Self {
        Trainer {
            model,
            tokenizer,
            template,
            chunk: 512,
            checkpointing: Checkpointing::Auto,
        }
    }

    /// Sets activation checkpointing of the student's forward (default [`Checkpointing::Auto`]).
    pub fn with_checkpointing(mut self, c: Checkpointing) -> Self {
        self.checkpointing = c;
        self
    }

    /// Whether a student sequence of `len` tokens is checkpointed.
    pub fn checkpoints(&self, len: usize) -> bool {
        match self.checkpointing {
            Checkpointing::Always => true,
            Checkpointing::Never => false,
            Checkpointing::Auto => {
                let c = self.model.config();
                len * c.num_hidden_layers * saved_bytes_per_token_layer(c) > CHECKPOINT_BUDGET_BYTES
            }
        }
    }

    /// The base model.
    pub fn model(&self) -> &Arc<Qwen3> {
        &self.model
    }

    /// The base model's tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The base model's chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The student's prompt and response ids (see [`FeedbackItem`] for the order of sources),
    /// checked against the vocabulary and the context length.
    fn student_ids(&self, item: &FeedbackItem) -> Result<(Vec<u32>, Vec<u32>)> {
        let (prompt_ids, response_ids) = match (&item.prompt_ids, &item.response_ids) {
            (Some(p), Some(r)) => (p.clone(), r.clone()),
            (None, None) => {
                let prompt_ids = match &item.messages {
                    Some(m) => render_prompt(&self.template, &self.tokenizer, m)?.1,
                    None => self
                        .tokenizer
                        .encode(&item.prompt, true)
                        .map_err(chat_err)?,
                };
                let response_ids = self
                    .tokenizer
                    .encode(&item.response, false)
                    .map_err(chat_err)?;
                (prompt_ids, response_ids)
            }
            _ => {
                return Err(SdpoError::InvalidInput(
                    "prompt_ids and response_ids must be given together".into(),
                ))
            }
        };
        self.check_ids(&prompt_ids, &response_ids)?;
        Ok((prompt_ids, response_ids))
    }

    /// Rejects empty prompts or responses, ids outside the vocabulary and sequences longer than
    /// the model's context.
    fn check_ids(&self, prompt_ids: &[u32], response_ids: &[u32]) -> Result<()> {
        if prompt_ids.is_empty() {
            return Err(SdpoError::InvalidInput(
                "prompt is empty: at least one prompt token must precede the response".into(),
            ));
        }
        if response_ids.is_empty() {
            return Err(SdpoError::InvalidInput("response is empty".into()));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(bad) = prompt_ids
            .iter()
            .chain(response_ids)
            .find(|&&t| t as usize >= vocab)
        {
            return Err(SdpoError::InvalidInput(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let max = self.model.config().max_position_embeddings;
        if prompt_ids.len() + response_ids.len() > max {
            return Err(SdpoError::TooLong(format!(
                "prompt + response are {} tokens, the model's context is {max}",
                prompt_ids.len() + response_ids.len()
            )));
        }
        Ok(())
    }

    /// Student ids and the teacher prompt of one item, with the teacher prompt `kind`.
    pub fn prepare(&self, item: &FeedbackItem, kind: TeacherPrompt) -> Result<PreparedItem> {
        let (prompt_ids, response_ids) = self.student_ids(item)?;
        let (teacher_prompt_text, teacher_prompt_ids) = match kind {
            TeacherPrompt::Seed => teacher_prompt(
                &self.template,
                &self.tokenizer,
                &item.prompt,
                &item.feedback,
            )?,
            TeacherPrompt::Hindsight => render_prompt(
                &self.template,
                &self.tokenizer,
                &hindsight_messages(&item.student_context(), &item.feedback),
            )?,
        };
        let max = self.model.config().max_position_embeddings;
        if teacher_prompt_ids.len() + response_ids.len() > max {
            return Err(SdpoError::TooLong(format!(
                "teacher prompt + response are {} tokens, the model's context is {max}",
                teacher_prompt_ids.len() + response_ids.len()
            )));
        }
        Ok(PreparedItem {
            prompt_ids,
            response_ids,
            teacher_prompt_text,
            teacher_prompt_ids,
        })
    }

    /// The teacher's top-k and the base log-probabilities of one item, both from the base model
    /// with no adapter (PR #37: with the adapter on, the KL term is always 0).
    pub fn targets(&self, p: &PreparedItem, top_k: usize) -> Result<Targets> {
        let t = p.response_ids.len();
        let tstart = p.teacher_prompt_ids.len();
        let start = p.prompt_ids.len();
        // Teacher and base (both adapter off) in one packed pass, LM head on response rows only.
        let (teacher_ids, student_ids) = (p.teacher_input_ids(), p.student_input_ids());
        let mut scored = self.model.logits_packed(
            &[(&teacher_ids, tstart - 1), (&student_ids, start - 1)],
            None,
            self.chunk,
        )?;
        let (Some(base_rows), Some(teacher_rows)) = (scored.pop(), scored.pop()) else {
            return Err(SdpoError::InvalidInput("nothing to score".into()));
        };
        let rows = teacher_rows.narrow(0, 0, t)?.to_dtype(DType::F32)?;
        let v = rows.dim(D::Minus1)?;
        let k = top_k.min(v).max(1);
        // The top-k of the logits is the top-k of the log-probs (a per-row shift); then one fused
        // pass turns the picked logits (and the response token's) into log-probs.
        let (_, topk_indices) = with_f32_values(&rows, |lp| topk_rows(lp, v, k))?;
        let mut picks = Vec::with_capacity(t * (k + 1));
        for (row, &r) in topk_indices.chunks_exact(k).zip(&p.response_ids) {
            picks.extend_from_slice(row);
            picks.push(r);
        }
        let picked: Vec<f32> = select_log_softmax(&rows, picks, k + 1)?
            .flatten_all()?
            .to_vec1()?;
        let mut topk_logprobs = Vec::with_capacity(t * k);
        let mut teacher_logprob_of_response = Vec::with_capacity(t);
        for row in picked.chunks_exact(k + 1) {
            topk_logprobs.extend_from_slice(&row[..k]);
            teacher_logprob_of_response.push(row[k]);
        }
        drop((teacher_rows, rows));
        let base_logprobs = gather_logprobs(&base_rows.narrow(0, 0, t)?, &p.response_ids)?;
        Ok(Targets {
            topk_logprobs,
            topk_indices,
            k,
            teacher_logprob_of_response,
            base_logprobs,
        })
    }

    /// Targets from an external teacher's scores: its top-k (sorted, cut to `top_k`, short rows
    /// padded as the reference does) and the base log-probabilities (the only local pass).
    pub fn external_targets(
        &self,
        p: &PreparedItem,
        ext: &ExternalTeacher,
        top_k: usize,
    ) -> Result<Targets> {
        let t = p.response_ids.len();
        if ext.rows.len() != t {
            return Err(SdpoError::InvalidInput(format!(
                "the remote teacher scored {} positions; the response has {t} tokens",
                ext.rows.len()
            )));
        }
        let vocab = self.model.config().vocab_size;
        let k = ext.rows.iter().map(Vec::len).max().unwrap_or(0).min(top_k);
        if k == 0 {
            return Err(SdpoError::InvalidInput(
                "the remote teacher returned no log-probabilities".into(),
            ));
        }
        let mut topk_logprobs = Vec::with_capacity(t * k);
        let mut topk_indices = Vec::with_capacity(t * k);
        for row in &ext.rows {
            if let Some(&(id, lp)) = row
                .iter()
                .find(|(id, lp)| *id as usize >= vocab || lp.is_nan() || *lp > 1e-3)
            {
                return Err(SdpoError::InvalidInput(format!(
                    "the remote teacher returned token {id} with log-probability {lp}; a teacher must share the student's vocabulary ({vocab} tokens) and report log-probabilities <= 0"
                )));
            }
            let mut row = row.clone();
            row.sort_by(|a, b| b.1.total_cmp(&a.1));
            row.truncate(k);
            row.resize(k, (0, PAD_LOGPROB));
            for (id, lp) in row {
                topk_indices.push(id);
                topk_logprobs.push(lp.max(PAD_LOGPROB));
            }
        }
        let start = p.prompt_ids.len();
        let student_ids = p.student_input_ids();
        let mut scored =
            self.model
                .logits_packed(&[(&student_ids, start - 1)], None, self.chunk)?;
        let Some(base_rows) = scored.pop() else {
            return Err(SdpoError::InvalidInput("nothing to score".into()));
        };
        let base_logprobs = gather_logprobs(&base_rows.narrow(0, 0, t)?, &p.response_ids)?;
        let teacher_logprob_of_response = (0..t)
            .map(|i| {
                ext.response_logprobs
                    .get(i)
                    .copied()
                    .flatten()
                    .unwrap_or_else(|| {
                        ext.rows[i]
                            .iter()
                            .find(|(id, _)| *id == p.response_ids[i])
                            .map_or(f32::NEG_INFINITY, |(_, lp)| *lp)
                    })
            })
            .collect();
        Ok(Targets {
            topk_logprobs,
            topk_indices,
            k,
            teacher_logprob_of_response,
            base_logprobs,
        })
    }

    /// Per-token log-probabilities of `response` after `prompt` (student input, no template)
    /// under the base model plus `adapter` (or the bare base), without gradients.
    pub fn score(
        &self,
        adapter: Option<&LoraAdapter>,
        prompt: &str,
        response: &str,
    ) -> Result<Vec<f32>> {
        let (prompt_ids, response_ids) = self.student_ids(&FeedbackItem {
            prompt: prompt.to_string(),
            response: response.to_string(),
            ..FeedbackItem::default()
        })?;
        self.score_ids(adapter, &prompt_ids, &response_ids)
    }

    /// The reference's `/v1/score` of a chat completion: prompt ids = the template over
    /// `messages` with a generation prompt; the completion's ids = what rendering `messages` +
    /// `{assistant: completion}` without one adds after them (so they include the template's
    /// closing tokens, as the reference scores them). Returns the completion ids, one decoded
    /// piece per id, their log-probabilities under the base + `adapter`, and the prompt length.
    pub fn score_chat(
        &self,
        adapter: Option<&LoraAdapter>,
        messages: &[serde_json::Value],
        completion: &str,
    ) -> Result<ChatScore> {
        let (_, prompt_ids) = render_prompt(&self.template, &self.tokenizer, messages)?;
        let mut full = messages.to_vec();
        full.push(serde_json::json!({"role": "assistant", "content": completion}));
        let text = self
            .template
            .render(&full, None, false, None)
            .map_err(chat_err)?;
        let full_ids = self.tokenizer.encode(&text, false).map_err(chat_err)?;
        let token_ids = full_ids.get(prompt_ids.len()..).unwrap_or(&[]).to_vec();
        let tokens = token_ids
            .iter()
            .map(|&t| self.tokenizer.decode(&[t], false).map_err(chat_err))
            .collect::<Result<Vec<_>>>()?;
        let logprobs = if token_ids.is_empty() {
            Vec::new()
        } else {
            self.score_ids(adapter, &prompt_ids, &token_ids)?
        };
        Ok(ChatScore {
            logprobs,
            token_ids,
            tokens,
            prompt_tokens: prompt_ids.len(),
        })
    }

    /// [`Trainer::score`] on token ids (e.g. a chat-templated prompt tokenised by the caller).
    pub fn score_ids(
        &self,
        adapter: Option<&LoraAdapter>,
        prompt_ids: &[u32],
        response_ids: &[u32],
    ) -> Result<Vec<f32>> {
        self.check_ids(prompt_ids, response_ids)?;
        let ids = [prompt_ids, response_ids].concat();
        let logits = self.model.logits(&ids, adapter, self.chunk)?;
        gather_logprobs(
            &logits.narrow(0, prompt_ids.len() - 1, response_ids.len())?,
            response_ids,
        )
    }

    /// One SDPO update of `adapter` from `items` (one batched step, repeated
    /// `cfg.steps_per_batch` times). `opt` is the adapter's saved optimizer state, `None` for a
    /// fresh AdamW. Errors leave nothing changed (nothing is written to disk here).
    pub fn distill(
        &self,
        adapter: &LoraAdapter,
        opt: Option<AdamState>,
        items: &[FeedbackItem],
        cfg: &TrainingConfig,
    ) -> Result<DistillOutcome> {
        self.distill_traced(adapter, opt, items, cfg, false)
            .map(|(outcome, _)| outcome)
    }

    /// [`Trainer::distill`], also returning a [`StepTrace`] per step when `trace` is set
    /// (pre-clip gradients and every intermediate vector; costs an adapter-sized copy).
    pub fn distill_traced(
        &self,
        adapter: &LoraAdapter,
        opt: Option<AdamState>,
        items: &[FeedbackItem],
        cfg: &TrainingConfig,
        trace: bool,
    ) -> Result<(DistillOutcome, Vec<StepTrace>)> {
        self.distill_with_teachers(adapter, opt, items, None, cfg, trace)
    }

    /// [`Trainer::distill_traced`] with the teachers of `teacher_mode: "remote"`, one per item,
    /// scored by the caller on the items' [`PreparedItem::teacher_input_ids`].
    pub fn distill_with_teachers(
        &self,
        adapter: &LoraAdapter,
        opt: Option<AdamState>,
        items: &[FeedbackItem],
        teachers: Option<&[ExternalTeacher]>,
        cfg: &TrainingConfig,
        trace: bool,
    ) -> Result<(DistillOutcome, Vec<StepTrace>)> {
        let t_total = Instant::now();
        cfg.validate()?;
        match (cfg.teacher_mode, teachers) {
            (TeacherMode::Remote, None) => {
                return Err(SdpoError::Unsupported(
                    "teacher_mode \"remote\" needs a remote teacher and none is configured (CLAAS_TEACHER_BASE_URL); use \"self\"".into(),
                ))
            }
            (TeacherMode::Remote, Some(t)) if t.len() != items.len() => {
                return Err(SdpoError::InvalidInput(format!(
                    "{} remote teacher scorings for {} feedback items",
                    t.len(),
                    items.len()
                )))
            }
            (TeacherMode::SelfTeacher, Some(_)) => {
                return Err(SdpoError::InvalidInput(
                    "remote teacher scores were given with teacher_mode \"self\"".into(),
                ))
            }
            _ => {}
        }
        if items.is_empty() {
            return Err(SdpoError::InvalidInput(
                "at least one feedback item is required".into(),
            ));
        }
        let mut timings = DistillTimings::default();

        let t0 = Instant::now();
        let prepared = items
            .iter()
            .map(|i| self.prepare(i, cfg.teacher_prompt))
            .collect::<Result<Vec<_>>>()?;
        for (i, (item, p)) in items.iter().zip(&prepared).enumerate() {
            if let Some(r) = &item.rollout_logprobs {
                if r.len() != p.response_ids.len() {
                    return Err(SdpoError::RolloutLengthMismatch {
                        expected: p.response_ids.len(),
                        got: r.len(),
                    });
                }
                if let Some(bad) = r.iter().find(|x| !x.is_finite()) {
                    return Err(SdpoError::InvalidInput(format!(
                        "rollout_logprobs of item {i} contains {bad}; log-probabilities must be finite"
                    )));
                }
            }
        }
        timings.tokenize_ms = ms(t0);

        let t0 = Instant::now();
        let targets = match teachers {
            Some(ts) => prepared
                .iter()
                .zip(ts)
                .map(|(p, ext)| self.external_targets(p, ext, cfg.teacher_top_k))
                .collect::<Result<Vec<_>>>()?,
            None => prepared
                .iter()
                .map(|p| self.targets(p, cfg.teacher_top_k))
                .collect::<Result<Vec<_>>>()?,
        };
        timings.teacher_ms = ms(t0);

        let lora = TrainableLora::from_adapter(adapter)?;
        let shapes: Vec<(String, Vec<usize>)> = lora
            .named_vars()
            .into_iter()
            .map(|(k, v)| (k, v.dims().to_vec()))
            .collect();
        let mut state = match opt {
            Some(s) if s.matches(&shapes) => s,
            Some(_) => {
                tracing::warn!("saved optimizer state does not match the adapter's parameters; starting a fresh AdamW");
                AdamState::new()
            }
            None => AdamState::new(),
        };

        let dev = self.model.device().clone();
        let n = items.len();
        let tokens: usize = prepared.iter().map(|p| p.response_ids.len()).sum();
        let mut traces = Vec::new();
        let mut metadata = None;
        for _ in 0..cfg.steps_per_batch {
            let mut grads: Vec<Vec<f32>> = shapes
                .iter()
                .map(|(_, s)| vec![0f32; s.iter().product()])
                .collect();
            let mut sums = [0f64; 5];
            let mut item_traces = Vec::new();
            for ((item, p), tg) in items.iter().zip(&prepared).zip(&targets) {
                let t0 = Instant::now();
                let t = p.response_ids.len();
                let start = p.prompt_ids.len();
                let view = lora.adapter();
                let ids = p.student_input_ids();
                // Logits only at the positions predicting response tokens.
                let ckpt = if self.checkpoints(ids.len()) {
                    Some(
                        self.model
                            .forward_train_checkpointed(&ids, Some(&view), start - 1, t)?,
                    )
                } else {
                    None
                };
                let student = match &ckpt {
                    Some(c) => c.logits().clone(),
                    None => self
                        .model
                        .forward_train_rows(&ids, Some(&view), start - 1, t)?,
                }
                .unsqueeze(0)?;
                let resp = Tensor::new(p.response_ids.as_slice(), &dev)?.unsqueeze(0)?;
                let old = match &item.rollout_logprobs {
                    Some(r) => Tensor::new(r.as_slice(), &dev)?.unsqueeze(0)?,
                    // Without rollout log-probs the current adapter is the behaviour policy.
                    None => Tensor::from_vec(
                        gather_logprobs(&student.detach().squeeze(0)?, &p.response_ids)?,
                        (1, t),
                        &dev,
                    )?,
                };
                let k = tg.k;
                let tlp = Tensor::from_vec(tg.topk_logprobs.clone(), (1, t, k), &dev)?;
                let tidx = Tensor::from_vec(tg.topk_indices.clone(), (1, t, k), &dev)?;
                let base = Tensor::new(tg.base_logprobs.as_slice(), &dev)?.unsqueeze(0)?;
                let mask = Tensor::ones((1, t), DType::F32, &dev)?;
                let out = sdpo_loss(&LossInput {
                    student_logits: &student,
                    teacher_logprobs: &tlp,
                    teacher_indices: &tidx,
                    base_logprobs: &base,
                    response_mask: &mask,
                    old_student_logprobs: &old,
                    response_ids: &resp,
                    alpha: cfg.alpha,
                    is_clip: cfg.is_clip,
                    kl_reg_weight: cfg.kl_reg_weight,
                })?;
                if !out.total_loss.is_finite() {
                    return Err(SdpoError::NonFinite(format!(
                        "loss is {} (distill {}, kl {})",
                        out.total_loss, out.distill_loss, out.kl_reg
                    )));
                }
                for (s, v) in sums.iter_mut().zip([
                    out.total_loss,
                    out.distill_loss,
                    out.kl_reg,
                    out.mean_is_ratio,
                    out.clip_fraction,
                ]) {
                    *s += v;
                }
                if trace {
                    let slp = gather_logprobs(&student.detach().squeeze(0)?, &p.response_ids)?;
                    item_traces.push(ItemTrace {
                        prepared: p.clone(),
                        targets: tg.clone(),
                        old_logprobs: old.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                        student_logprobs: slp,
                    });
                }
                timings.forward_ms += ms(t0);

                // The batch loss is the mean of the items' losses; backward each item's share
                // separately so only one item's graph is alive at a time.
                let t0 = Instant::now();
                let scaled = if n > 1 {
                    (&out.loss / n as f64)?
                } else {
                    out.loss.clone()
                };
                let vars = lora.named_vars();
                let mut reached = vec![false; vars.len()];
                let mut add = |store: &GradStore| -> Result<()> {
                    for (((_, var), acc), hit) in
                        vars.iter().zip(grads.iter_mut()).zip(reached.iter_mut())
                    {
                        if let Some(g) = store.get(var.as_tensor()) {
                            for (a, x) in acc.iter_mut().zip(tensor_to_vec(g)?) {
                                *a += x;
                            }
                            *hit = true;
                        }
                    }
                    Ok(())
                };
                drop((out, student));
                match ckpt {
                    Some(c) => c.backward(scaled, &mut add)?,
                    None => add(&scaled.backward()?)?,
                }
                if let Some(i) = reached.iter().position(|r| !r) {
                    return Err(SdpoError::NonFinite(format!(
                        "no gradient reached {}",
                        vars[i].0
                    )));
                }
                timings.backward_ms += ms(t0);
            }

            let t0 = Instant::now();
            if grads.iter().any(|g| g.iter().any(|x| !x.is_finite())) {
                return Err(SdpoError::NonFinite("a gradient is NaN or infinite".into()));
            }
            let pre_clip = trace.then(|| grads.clone());
            let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm);
            let vars = lora.named_vars();
            let mut params = Vec::with_capacity(vars.len());
            for (key, var) in &vars {
                params.push((
                    key.clone(),
                    var.dims().to_vec(),
                    tensor_to_vec(var.as_tensor())?,
                ));
            }
            adamw_step(&mut state, &mut params, &grads, cfg.learning_rate);
            for ((_, var), (_, shape, vals)) in vars.iter().zip(params) {
                let t = Tensor::from_vec(vals, shape, &dev)?.to_dtype(var.dtype())?;
                var.set(&t)?;
            }
            timings.optimizer_ms += ms(t0);

            let nf = n as f64;
            let md = DistillMetadata {
                total_loss: sums[0] / nf,
                distill_loss: sums[1] / nf,
                kl_reg: sums[2] / nf,
                mean_is_ratio: sums[3] / nf,
                clip_fraction: sums[4] / nf,
                grad_norm,
                tokens_processed: tokens,
                teacher_mode: cfg.teacher_mode.as_str().to_string(),
            };
            if let Some(g) = pre_clip {
                traces.push(StepTrace {
                    items: item_traces,
                    grads: shapes
                        .iter()
                        .zip(g)
                        .map(|((k, s), v)| (k.clone(), s.clone(), v))
                        .collect(),
                    metadata: md.clone(),
                });
            }
            metadata = Some(md);
        }
        let metadata =
            metadata.ok_or_else(|| SdpoError::InvalidInput("steps_per_batch is 0".into()))?;
        let adapter = lora.snapshot()?;
        timings.total_ms = ms(t_total);
        Ok((
            DistillOutcome {
                adapter,
                optimizer: state,
                metadata,
                timings,
            },
            traces,
        ))
    }
}
