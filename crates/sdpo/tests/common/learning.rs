//! The learning check shared by the SDPO tests on other bases (16-bit, int8, bf16 activations):
//! ten steps from a fresh adapter must at least halve the KL from student to self-teacher, and
//! one step on a perturbed base is compared with the same step on a reference base.

use std::path::Path;
use std::sync::Arc;

use candle_core::Tensor;
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, LoraAdapter, LoraInit, Qwen3};
use claas_sdpo::{loss::log_softmax_last, DistillMetadata, FeedbackItem, Trainer, TrainingConfig};

use super::{fixtures, read_json};

/// The learning rates of `learning.rs` (fixture model and built-in model).
pub const FIXTURE_LR: f64 = 5e-3;
pub const BUILTIN_LR: f64 = 2e-3;

pub fn trainer(dir: &Path, opts: &LoadOptions) -> Trainer {
    let model = Qwen3::load(dir, opts).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(dir).unwrap()).unwrap();
    Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl))
}

/// The feedback request of `distill_step.json`.
pub fn item() -> FeedbackItem {
    let r = &read_json("distill_step.json")["request"];
    FeedbackItem {
        prompt: r["prompt"].as_str().unwrap().into(),
        response: r["response"].as_str().unwrap().into(),
        feedback: r["feedback"].as_str().unwrap().into(),
        rollout_logprobs: None,
        ..FeedbackItem::default()
    }
}

/// Mean over response tokens of KL(student || teacher) over the full vocabulary.
pub fn kl_student_teacher(t: &Trainer, adapter: &LoraAdapter, item: &FeedbackItem) -> f64 {
    let p = t
        .prepare(item, TrainingConfig::default().teacher_prompt)
        .unwrap();
    let n = p.response_ids.len();
    let m = t.model();
    let s = m
        .logits(&p.student_input_ids(), Some(adapter), 512)
        .unwrap();
    let s = log_softmax_last(&s.narrow(0, p.prompt_ids.len() - 1, n).unwrap()).unwrap();
    let te = m.logits(&p.teacher_input_ids(), None, 512).unwrap();
    let te = log_softmax_last(&te.narrow(0, p.teacher_prompt_ids.len() - 1, n).unwrap()).unwrap();
    let kl: Tensor = (s.exp().unwrap() * (&s - &te).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    kl.to_scalar::<f32>().unwrap() as f64 / n as f64
}

/// Ten steps from a fresh adapter (as `learning.rs`): the KL before and after each step, and
/// each step's metrics.
pub fn run(t: &Trainer, learning_rate: f64) -> (Vec<f64>, Vec<DistillMetadata>) {
    let m = t.model();
    let init = LoraInit {
        r: 8,
        lora_alpha: 16.0,
        target_modules: claas_model::ALL_MODULES
            .iter()
            .map(|m| m.name().to_string())
            .collect(),
        use_rslora: false,
        base_model_name_or_path: None,
    };
    let mut adapter = LoraAdapter::init(&init, m.config(), 7, m.device()).unwrap();
    let cfg = TrainingConfig {
        learning_rate,
        kl_reg_weight: 0.0,
        steps_per_batch: 1,
        ..TrainingConfig::default()
    };
    let item = item();
    let mut opt = None;
    let mut kl = vec![kl_student_teacher(t, &adapter, &item)];
    let mut metrics = Vec::new();
    for _ in 0..10 {
        let out = t
            .distill(&adapter, opt.take(), std::slice::from_ref(&item), &cfg)
            .unwrap();
        adapter = out.adapter;
        opt = Some(out.optimizer);
        metrics.push(out.metadata);
        kl.push(kl_student_teacher(t, &adapter, &item));
    }
    (kl, metrics)
}

pub fn assert_halves(what: &str, kl: &[f64]) {
    let (before, after) = (kl[0], kl[kl.len() - 1]);
    eprintln!("{what}: KL(student || teacher) per step: {kl:?}");
    assert!(before > 0.0, "{what}");
    assert!(
        after <= 0.5 * before,
        "{what}: KL went from {before} to {after} in 10 steps (needs <= half)"
    );
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

/// One step on two bases from the fixture's `lora-r4` adapter, compared.
pub struct StepDiff {
    /// The largest logit difference between the two bases on the step's own student (with the
    /// adapter) and teacher inputs.
    pub e: f64,
    pub reference: DistillMetadata,
    pub other: DistillMetadata,
    /// Relative L2 error and cosine of the other base's pre-clip LoRA gradients.
    pub grad_rel_err: f64,
    pub grad_cos: f64,
}

impl StepDiff {
    /// The distillation loss's change.
    pub fn loss_change(&self) -> f64 {
        (self.other.distill_loss - self.reference.distill_loss).abs()
    }
}

pub fn one_step_diff(reference: &Trainer, other: &Trainer) -> StepDiff {
    let m = reference.model();
    let adapter = LoraAdapter::load(
        &fixtures().join("lora-r4"),
        m.config(),
        m.device(),
        m.dtype(),
    )
    .unwrap();
    let item = item();
    let cfg = TrainingConfig {
        kl_reg_weight: 0.0,
        steps_per_batch: 1,
        ..TrainingConfig::default()
    };
    let p = reference.prepare(&item, cfg.teacher_prompt).unwrap();
    let logits =
        |t: &Trainer, ids: &[u32], a: Option<&LoraAdapter>| t.model().logits(ids, a, 512).unwrap();
    let student = p.student_input_ids();
    let teacher = p.teacher_input_ids();
    let e = max_abs(
        &logits(reference, &student, Some(&adapter)),
        &logits(other, &student, Some(&adapter)),
    )
    .max(max_abs(
        &logits(reference, &teacher, None),
        &logits(other, &teacher, None),
    ));
    let step = |t: &Trainer| {
        let (out, mut tr) = t
            .distill_traced(&adapter, None, std::slice::from_ref(&item), &cfg, true)
            .unwrap();
        (out.metadata, tr.remove(0).grads)
    };
    let (m_ref, g_ref) = step(reference);
    let (m_other, g_other) = step(other);
    assert_eq!(m_ref.tokens_processed, m_other.tokens_processed);
    let (mut dot, mut nr, mut no, mut diff) = (0f64, 0f64, 0f64, 0f64);
    assert_eq!(g_ref.len(), g_other.len());
    for ((kr, sr, vr), (ko, so, vo)) in g_ref.iter().zip(&g_other) {
        assert_eq!((kr, sr), (ko, so));
        for (&a, &b) in vr.iter().zip(vo) {
            let (a, b) = (a as f64, b as f64);
            dot += a * b;
            nr += a * a;
            no += b * b;
            diff += (a - b) * (a - b);
        }
    }
    assert!(nr > 0.0, "the reference step has no gradient");
    StepDiff {
        e,
        reference: m_ref,
        other: m_other,
        grad_rel_err: (diff / nr).sqrt(),
        grad_cos: dot / (nr.sqrt() * no.sqrt()),
    }
}
