//! The SDPO loss, its diagnostics and its autograd gradient against the reference's
//! `compute_sdpo_loss` (fixtures/sdpo_loss.json).

mod common;

use candle_core::{Tensor, Var};
use claas_sdpo::{sdpo_loss, LossInput, LossOutput};
use common::*;
use serde_json::Value;

/// check.py's tolerances for the loss scalars and the logit gradient.
const SCALAR_RTOL: f64 = 1e-5;
const SCALAR_ATOL: f64 = 1e-6;
const GRAD_RTOL: f64 = 1e-4;
const GRAD_ATOL_PER_MAX: f64 = 1e-6;

struct Inputs {
    logits: Var,
    teacher_lp: Tensor,
    teacher_idx: Tensor,
    base: Tensor,
    mask: Tensor,
    old: Tensor,
    resp: Tensor,
}

fn inputs(set: &Value) -> Inputs {
    Inputs {
        logits: Var::from_tensor(&tensor_f32(&set["student_logits"])).unwrap(),
        teacher_lp: tensor_f32(&set["teacher_logprobs"]),
        teacher_idx: tensor_u32(&set["teacher_indices"]),
        base: tensor_f32(&set["base_logprobs"]),
        mask: tensor_f32(&set["response_mask"]),
        old: tensor_f32(&set["old_student_logprobs"]),
        resp: tensor_u32(&set["response_ids"]),
    }
}

fn run(inp: &Inputs, case: &Value) -> LossOutput {
    sdpo_loss(&LossInput {
        student_logits: inp.logits.as_tensor(),
        teacher_logprobs: &inp.teacher_lp,
        teacher_indices: &inp.teacher_idx,
        base_logprobs: &inp.base,
        response_mask: &inp.mask,
        old_student_logprobs: &inp.old,
        response_ids: &inp.resp,
        alpha: case["alpha"].as_f64().unwrap(),
        is_clip: case["is_clip"].as_f64().unwrap(),
        kl_reg_weight: case["kl_reg_weight"].as_f64().unwrap(),
    })
    .unwrap()
}

fn check_grad(tag: &str, loss: &Tensor, inp: &Inputs, want: &Value) -> f64 {
    let grads = loss.backward().unwrap();
    let g = grads
        .get(inp.logits.as_tensor())
        .expect("no gradient for the logits");
    let (shape, want) = flat(want);
    assert_eq!(g.dims(), shape.as_slice(), "{tag}: gradient shape");
    let gmax = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    let (worst, ok) = within(
        &to_f64s(g),
        &want,
        GRAD_ATOL_PER_MAX * gmax.max(1.0),
        GRAD_RTOL,
    );
    assert!(ok, "{tag}: gradient max |d| = {worst:e}");
    worst
}

fn cases() -> (Value, Vec<Value>) {
    let fx = read_json("sdpo_loss.json");
    let cases = fx["cases"].as_array().unwrap().clone();
    assert!(!cases.is_empty());
    (fx, cases)
}

#[test]
fn parity_sdpo_loss_alpha_half_and_one() {
    let (fx, cases) = cases();
    let mut checked = 0;
    for (i, case) in cases.iter().enumerate() {
        let alpha = case["alpha"].as_f64().unwrap();
        if alpha == 0.0 {
            continue;
        }
        let tag = format!(
            "case {i} ({}, alpha {alpha}, kl {})",
            case["inputs"], case["kl_reg_weight"]
        );
        let inp = inputs(&fx["input_sets"][case["inputs"].as_str().unwrap()]);
        let out = run(&inp, case);
        let o = &case["outputs"];
        for (name, got) in [
            ("loss", out.total_loss),
            ("distill_loss", out.distill_loss),
            ("kl_reg", out.kl_reg),
            ("mean_is_ratio", out.mean_is_ratio),
            ("clip_fraction", out.clip_fraction),
        ] {
            close(
                &format!("{tag} {name}"),
                got,
                o[name].as_f64().unwrap(),
                SCALAR_ATOL,
                SCALAR_RTOL,
            );
        }
        let worst = check_grad(&tag, &out.loss, &inp, &case["grad_student_logits"]);
        eprintln!("{tag}: grad max |d| = {worst:e}");
        checked += 1;
    }
    assert!(checked >= 6, "only {checked} cases with alpha in (0, 1]");
}

/// The reference's alpha = 0 evaluates the mixture with log(0) = -inf, so its distillation term
/// is exactly 0 (loss = kl_reg_weight * kl_reg, gradient = that of the KL term alone). We use the
/// SDPO paper's forward KL instead, so only the parts that do not depend on the defect are
/// compared: kl_reg, mean_is_ratio, clip_fraction, the KL part of the loss, and the gradient of
/// the KL part (which is the whole reference gradient).
#[test]
fn parity_sdpo_loss_alpha_zero_defect_free_parts() {
    let (fx, cases) = cases();
    let mut checked = 0;
    for (i, case) in cases.iter().enumerate() {
        if case["alpha"].as_f64().unwrap() != 0.0 {
            continue;
        }
        let tag = format!(
            "case {i} ({}, alpha 0, kl {})",
            case["inputs"], case["kl_reg_weight"]
        );
        let inp = inputs(&fx["input_sets"][case["inputs"].as_str().unwrap()]);
        let out = run(&inp, case);
        let o = &case["outputs"];
        assert_eq!(
            o["distill_loss"].as_f64().unwrap(),
            0.0,
            "{tag}: fixture records the defect"
        );
        for (name, got) in [
            ("kl_reg", out.kl_reg),
            ("mean_is_ratio", out.mean_is_ratio),
            ("clip_fraction", out.clip_fraction),
            ("loss", out.total_loss - out.distill_loss),
        ] {
            close(
                &format!("{tag} {name}"),
                got,
                o[name].as_f64().unwrap(),
                SCALAR_ATOL,
                SCALAR_RTOL,
            );
        }
        // Our distillation term is a real forward KL: finite and positive.
        assert!(
            out.distill_loss.is_finite() && out.distill_loss > 0.0,
            "{tag}: {}",
            out.distill_loss
        );
        let kw = case["kl_reg_weight"].as_f64().unwrap();
        let kl_part = (&out.kl_term * kw).unwrap();
        check_grad(&tag, &kl_part, &inp, &case["grad_student_logits"]);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} alpha = 0 cases");
}

/// Forward KL over the top-k at alpha = 0 matches a direct evaluation of
/// sum p_t (log p_t - log p_s) over the renormalised top-k, masked mean, times the IS ratio.
#[test]
fn alpha_zero_is_forward_kl_over_teacher_topk() {
    let (fx, cases) = cases();
    let case = cases
        .iter()
        .find(|c| c["alpha"].as_f64().unwrap() == 0.0 && c["inputs"] == "B1")
        .unwrap();
    let set = &fx["input_sets"]["B1"];
    let inp = inputs(set);
    let out = run(&inp, case);
    let (lshape, logits) = flat(&set["student_logits"]);
    let (_, tlp) = flat(&set["teacher_logprobs"]);
    let (kshape, tidx) = flat(&set["teacher_indices"]);
    let (_, mask) = flat(&set["response_mask"]);
    let (_, old) = flat(&set["old_student_logprobs"]);
    let (_, resp) = flat(&set["response_ids"]);
    let (v, k) = (lshape[2], kshape[2]);
    let is_clip = case["is_clip"].as_f64().unwrap();
    let mut num = 0.0;
    for t in 0..lshape[0] * lshape[1] {
        let row = &logits[t * v..(t + 1) * v];
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln() + mx;
        let s: Vec<f64> = (0..k)
            .map(|j| row[tidx[t * k + j] as usize] - lse)
            .collect();
        let tt: Vec<f64> = (0..k).map(|j| tlp[t * k + j]).collect();
        let sn = s.iter().map(|x| x.exp()).sum::<f64>().ln();
        let tn = tt.iter().map(|x| x.exp()).sum::<f64>().ln();
        let kl: f64 = (0..k)
            .map(|j| (tt[j] - tn).exp() * ((tt[j] - tn) - (s[j] - sn)))
            .sum();
        let chosen = row[resp[t] as usize] - lse;
        let ratio = (chosen - old[t]).clamp(-20.0, 20.0).exp().min(is_clip);
        num += kl * ratio * mask[t];
    }
    let want = num / mask.iter().sum::<f64>().max(1.0);
    close("forward KL", out.distill_loss, want, 1e-6, 1e-5);
}
