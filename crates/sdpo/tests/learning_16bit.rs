//! SDPO on a 16-bit base model (weights kept bf16/f16, the frozen backward on the 16-bit
//! kernels): the learning check of `learning.rs` (ten steps at least halve the KL from student
//! to self-teacher) on the fixture model stored in bf16 and f16 and on the built-in model loaded
//! as bf16, and step metrics against the same steps on the widened (f32) weights.
//!
//! Tolerance of the metric comparison: 1e-4 relative. Both runs widen the same 16-bit values
//! exactly and compute in f32, so they differ only in summation order (~1e-6 relative on these
//! sizes); a wrong gradient term or a weight rounded differently moves the metrics by far more.

mod common;

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor};
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, LoraAdapter, LoraInit, Qwen3};
use claas_sdpo::{loss::log_softmax_last, DistillMetadata, FeedbackItem, Trainer, TrainingConfig};
use common::*;

/// The learning rates of `learning.rs` (fixture model and built-in model).
const FIXTURE_LR: f64 = 5e-3;
const BUILTIN_LR: f64 = 2e-3;
const METRIC_RTOL: f64 = 1e-4;

fn trainer(dir: &Path, dtype: Option<DType>) -> Trainer {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    let model = Qwen3::load(dir, &opts).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(dir).unwrap()).unwrap();
    Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl))
}

/// The 16-bit checkpoints of `forward_16bit.json`.
fn half_models() -> Vec<std::path::PathBuf> {
    let fx = read_json("forward_16bit.json");
    let dtypes = fx["dtypes"].as_object().unwrap();
    assert!(!dtypes.is_empty());
    dtypes
        .values()
        .map(|d| fixtures().join(d["model"].as_str().unwrap()))
        .collect()
}

fn item() -> FeedbackItem {
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
fn kl_student_teacher(t: &Trainer, adapter: &LoraAdapter, item: &FeedbackItem) -> f64 {
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

/// Ten steps from a fresh adapter (as `learning.rs`): the KL after each step and each step's
/// metrics.
fn run(t: &Trainer, learning_rate: f64) -> (Vec<f64>, Vec<DistillMetadata>) {
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

fn assert_halves(what: &str, kl: &[f64]) {
    let (before, after) = (kl[0], kl[kl.len() - 1]);
    eprintln!("{what}: KL(student || teacher) per step: {kl:?}");
    assert!(before > 0.0, "{what}");
    assert!(
        after <= 0.5 * before,
        "{what}: KL went from {before} to {after} in 10 steps (needs <= half)"
    );
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= METRIC_RTOL * a.abs().max(b.abs()).max(1e-3)
}

#[test]
fn learning_16bit_ten_steps_halve_kl_and_match_the_widened_steps() {
    for dir in half_models() {
        let half = trainer(&dir, None);
        assert!(
            matches!(half.model().weight_dtype(), DType::BF16 | DType::F16),
            "{}: auto keeps the checkpoint's 16 bits",
            dir.display()
        );
        let (kl, metrics) = run(&half, FIXTURE_LR);
        assert_halves(&dir.display().to_string(), &kl);

        let wide = trainer(&dir, Some(DType::F32));
        assert_eq!(wide.model().weight_dtype(), DType::F32);
        let (kl_w, metrics_w) = run(&wide, FIXTURE_LR);
        for (i, (a, b)) in metrics.iter().zip(&metrics_w).enumerate() {
            for (name, x, y) in [
                ("total_loss", a.total_loss, b.total_loss),
                ("distill_loss", a.distill_loss, b.distill_loss),
                ("mean_is_ratio", a.mean_is_ratio, b.mean_is_ratio),
                ("grad_norm", a.grad_norm, b.grad_norm),
            ] {
                assert!(
                    close(x, y),
                    "{} step {i} {name}: 16-bit {x} vs widened {y}",
                    dir.display()
                );
            }
            assert_eq!(a.tokens_processed, b.tokens_processed);
        }
        for (i, (x, y)) in kl.iter().zip(&kl_w).enumerate() {
            assert!(
                close(*x, *y),
                "{} KL after step {i}: {x} vs {y}",
                dir.display()
            );
        }
    }
}

/// The built-in model's bf16 variant (`--model builtin:tiny --dtype bfloat16`) learns too.
#[test]
fn learning_16bit_ten_steps_halve_kl_on_builtin_tiny_bf16() {
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    let t = trainer(&dir, Some(DType::BF16));
    assert_eq!(t.model().weight_dtype(), DType::BF16);
    let (kl, _) = run(&t, BUILTIN_LR);
    assert_halves("builtin:tiny bf16", &kl);
}
