//! SDPO on an int8 (q8_0) frozen base, QLoRA-style: the learning check of `learning.rs` (ten
//! steps at least halve the KL from student to self-teacher) on the fixture's bf16 checkpoint
//! and the built-in model quantized at load, and one step's loss and gradients against the
//! same step on the 16-bit base.
//!
//! Bounds of the one-step comparison:
//! - loss: every logit of the int8 model is within `e` of the 16-bit model's (`e` measured
//!   here, on the step's own student and teacher inputs), so every log-softmax value moves by at
//!   most `2e`; the distillation loss is a weighted mean of log-prob differences (student and
//!   teacher, weights summing to at most 1 per token and side, the importance ratio clipped),
//!   so `|ΔL| ≤ 4e`.
//! - gradients: the relative L2 error of the pre-clip LoRA gradients must stay below 10% and
//!   their cosine above 0.99. This one is a stated tolerance rather than a derived bound (the
//!   gradient also depends on the perturbed Jacobian of every layer); docs/BENCHMARKS.md
//!   records the measured values (a few percent), far from a wrong-sign or missing term.

mod common;

use std::path::Path;

use claas_model::{LoadOptions, MatmulPrecision, Quantization};
use claas_sdpo::Trainer;
use common::learning::{assert_halves, one_step_diff, run, trainer, BUILTIN_LR, FIXTURE_LR};
use common::*;

const GRAD_REL_ERR: f64 = 0.1;
const GRAD_MIN_COS: f64 = 0.99;

/// The checkpoint at `dir`, quantized or not; the 16-bit reference computes with f32
/// activations, so it is the checkpoint's own arithmetic.
fn int8_trainer(dir: &Path, quantization: Option<Quantization>) -> Trainer {
    let t = trainer(
        dir,
        &LoadOptions {
            quantization,
            matmul_precision: MatmulPrecision::Highest,
            ..Default::default()
        },
    );
    assert_eq!(t.model().quantization(), quantization);
    t
}

/// The bf16 checkpoint of `forward_16bit.json`.
fn bf16_model() -> std::path::PathBuf {
    let fx = read_json("forward_16bit.json");
    fixtures().join(fx["dtypes"]["bf16"]["model"].as_str().unwrap())
}

#[test]
fn learning_int8_ten_steps_halve_kl() {
    let t = int8_trainer(&bf16_model(), Some(Quantization::Q8_0));
    assert_halves("bf16 checkpoint, q8_0", &run(&t, FIXTURE_LR).0);
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    let t = int8_trainer(&dir, Some(Quantization::Q8_0));
    assert_halves("builtin:tiny, q8_0", &run(&t, BUILTIN_LR).0);
}

#[test]
fn learning_int8_one_step_loss_and_gradients_near_16bit() {
    let dir = bf16_model();
    let half = int8_trainer(&dir, None);
    let q8 = int8_trainer(&dir, Some(Quantization::Q8_0));
    let d = one_step_diff(&half, &q8);
    let (e, dl) = (d.e, d.loss_change());
    eprintln!(
        "one step, int8 vs bf16 base: max logit diff e {e:.3e}; distill_loss {} vs {} (|Δ| {dl:.3e}, bound 4e {:.3e}); grad_norm {} vs {}; gradient relative L2 error {:.3e}, cosine {:.6}",
        d.other.distill_loss,
        d.reference.distill_loss,
        4.0 * e,
        d.other.grad_norm,
        d.reference.grad_norm,
        d.grad_rel_err,
        d.grad_cos,
    );
    assert!(dl <= 4.0 * e, "loss moved {dl:e} > 4e = {:e}", 4.0 * e);
    assert!(
        d.grad_rel_err <= GRAD_REL_ERR,
        "gradient relative error {}",
        d.grad_rel_err
    );
    assert!(d.grad_cos >= GRAD_MIN_COS, "gradient cosine {}", d.grad_cos);
}
