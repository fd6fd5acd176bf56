//! SDPO on a 16-bit base model (weights kept bf16/f16, the frozen backward on the 16-bit
//! kernels): the learning check of `learning.rs` (ten steps at least halve the KL from student
//! to self-teacher) on the fixture model stored in bf16 and f16 and on the built-in model loaded
//! as bf16, and step metrics against the same steps on the widened (f32) weights.
//!
//! Tolerance of the metric comparison at `--matmul-precision highest`: 1e-4 relative. Both runs
//! widen the same 16-bit values exactly and compute in f32, so they differ only in summation
//! order (~1e-6 relative on these sizes); a wrong gradient term or a weight rounded differently
//! moves the metrics by far more.
//!
//! At `medium` (the default: activations rounded to bf16 in products of more than 16 rows by
//! bf16 weights, on AMX) one step is compared with the f32-activation step with the bounds of
//! `learning_int8.rs`: the loss within `4e` (`e` the largest logit difference on the step's own
//! inputs, measured), the pre-clip gradients within 10% relative L2 error and cosine ≥ 0.99
//! (stated, not derived).

mod common;

use std::path::Path;

use candle_core::DType;
use claas_model::{LoadOptions, MatmulPrecision};
use claas_sdpo::Trainer;
use common::learning::{assert_halves, one_step_diff, run, trainer, BUILTIN_LR, FIXTURE_LR};
use common::*;

const METRIC_RTOL: f64 = 1e-4;
const GRAD_REL_ERR: f64 = 0.1;
const GRAD_MIN_COS: f64 = 0.99;

fn trainer_at(dir: &Path, dtype: Option<DType>, matmul_precision: MatmulPrecision) -> Trainer {
    trainer(
        dir,
        &LoadOptions {
            dtype,
            matmul_precision,
            ..Default::default()
        },
    )
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

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= METRIC_RTOL * a.abs().max(b.abs()).max(1e-3)
}

#[test]
fn learning_16bit_ten_steps_halve_kl_and_match_the_widened_steps() {
    for dir in half_models() {
        let half = trainer_at(&dir, None, MatmulPrecision::Highest);
        assert!(
            matches!(half.model().weight_dtype(), DType::BF16 | DType::F16),
            "{}: auto keeps the checkpoint's 16 bits",
            dir.display()
        );
        let (kl, metrics) = run(&half, FIXTURE_LR);
        assert_halves(&dir.display().to_string(), &kl);

        let wide = trainer_at(&dir, Some(DType::F32), MatmulPrecision::Highest);
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

/// The built-in model's bf16 variant (`--model builtin:tiny --dtype bfloat16`) learns too, at
/// the default matmul precision.
#[test]
fn learning_16bit_ten_steps_halve_kl_on_builtin_tiny_bf16() {
    let dir = claas_model::resolve_model("builtin:tiny").unwrap();
    let t = trainer(
        &dir,
        &LoadOptions {
            dtype: Some(DType::BF16),
            ..Default::default()
        },
    );
    assert_eq!(t.model().weight_dtype(), DType::BF16);
    assert_eq!(t.model().matmul_precision(), MatmulPrecision::Medium);
    let (kl, _) = run(&t, BUILTIN_LR);
    assert_halves("builtin:tiny bf16", &kl);
}

/// `--matmul-precision medium` on the 16-bit checkpoints: ten steps halve the KL, and one step
/// stays near the f32-activation step (bounds in the module doc). Where AMX runs (bf16 weights)
/// the step must actually differ, or the comparison would be vacuous.
#[test]
fn learning_16bit_medium_precision_halves_kl_and_stays_near_highest() {
    for dir in half_models() {
        let what = dir.display().to_string();
        let medium = trainer_at(&dir, None, MatmulPrecision::Medium);
        assert_halves(&format!("{what} medium"), &run(&medium, FIXTURE_LR).0);
        let highest = trainer_at(&dir, None, MatmulPrecision::Highest);
        let d = one_step_diff(&highest, &medium);
        let (e, dl) = (d.e, d.loss_change());
        eprintln!(
            "{what}: one step, medium vs highest: max logit diff e {e:.3e}; distill_loss {} vs {} (|Δ| {dl:.3e}, bound 4e {:.3e}); gradient relative L2 error {:.3e}, cosine {:.6}",
            d.other.distill_loss,
            d.reference.distill_loss,
            4.0 * e,
            d.grad_rel_err,
            d.grad_cos,
        );
        assert!(
            dl <= 4.0 * e,
            "{what}: loss moved {dl:e} > 4e = {:e}",
            4.0 * e
        );
        assert!(
            d.grad_rel_err <= GRAD_REL_ERR,
            "{what}: gradient relative error {}",
            d.grad_rel_err
        );
        assert!(
            d.grad_cos >= GRAD_MIN_COS,
            "{what}: gradient cosine {}",
            d.grad_cos
        );
        if medium.model().weight_dtype() == DType::BF16 && claas_kernels::amx_available() {
            assert!(e > 0.0, "{what}: medium ran the f32-activation path");
        }
    }
}
