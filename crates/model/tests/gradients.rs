//! The training path's gradients: finite differences in f64, and every LoRA parameter reached.

mod common;

use candle_core::{DType, Tensor};
use claas_model::{LoadOptions, LoraAdapter, Qwen3, TrainableLora};
use common::*;

fn load(dtype: DType) -> (Qwen3, LoraAdapter) {
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    let m = Qwen3::load(&fixtures().join("tiny-qwen3"), &opts).unwrap();
    let a = LoraAdapter::load(&fixtures().join("lora-r4"), m.config(), m.device(), dtype).unwrap();
    (m, a)
}

fn fixture_ids() -> Vec<u32> {
    ids(&read_json("forward.json")["sequences"][1]["input_ids"])
}

/// A scalar that depends on every logit: sum(log_softmax(logits) * w) for fixed pseudo-random w.
fn objective(m: &Qwen3, lora: &TrainableLora, ids: &[u32]) -> Tensor {
    let logits = m.forward_train(ids, Some(&lora.adapter())).unwrap();
    let (l, v) = logits.dims2().unwrap();
    let w: Vec<f64> = (0..l * v)
        .map(|i| (((i * 7919) % 1009) as f64 / 1009.0) - 0.5)
        .collect();
    let w = Tensor::from_vec(w, (l, v), m.device())
        .unwrap()
        .to_dtype(logits.dtype())
        .unwrap();
    let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
    (lp * w).unwrap().sum_all().unwrap()
}

#[test]
fn every_lora_parameter_gets_a_gradient() {
    let (m, a) = load(DType::F32);
    let lora = TrainableLora::from_adapter(&a).unwrap();
    let ids = fixture_ids();
    let grads = objective(&m, &lora, &ids).backward().unwrap();
    let vars = lora.named_vars();
    assert_eq!(vars.len(), a.named_tensors().len());
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn finite_differences_match_autograd_in_f64() {
    let (m, a) = load(DType::F64);
    let lora = TrainableLora::from_adapter(&a).unwrap();
    let ids = fixture_ids();
    let grads = objective(&m, &lora, &ids).backward().unwrap();
    let h = 1e-6;
    let vars = lora.named_vars();
    // One A and one B of an attention and an MLP projection in each layer, two elements each.
    let mut checked = 0;
    for (name, var) in vars.iter() {
        if !(name.contains("q_proj") || name.contains("k_proj") || name.contains("down_proj")) {
            continue;
        }
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let orig = var.as_tensor().copy().unwrap();
        let shape = orig.shape().clone();
        let base: Vec<f64> = orig.flatten_all().unwrap().to_vec1().unwrap();
        for &idx in &[0usize, base.len() / 2 + 1] {
            let eval = |delta: f64| {
                let mut p = base.clone();
                p[idx] += delta;
                var.set(&Tensor::from_vec(p, shape.clone(), m.device()).unwrap())
                    .unwrap();
                let v: f64 = objective(&m, &lora, &ids).to_scalar().unwrap();
                v
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h);
            var.set(&orig).unwrap();
            let ag = g[idx];
            let err = (fd - ag).abs() / ag.abs().max(1e-3);
            assert!(
                err < 1e-5,
                "{name}[{idx}]: autograd {ag:e} vs finite difference {fd:e}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "checked only {checked} elements");
}

/// `sum(log_softmax(logits) * w)` for fixed pseudo-random w, on any logits.
fn weighted_logprob_sum(logits: &Tensor) -> Tensor {
    let (l, v) = logits.dims2().unwrap();
    let w: Vec<f32> = (0..l * v)
        .map(|i| (((i * 7919) % 1009) as f32 / 1009.0) - 0.5)
        .collect();
    let w = Tensor::from_vec(w, (l, v), logits.device())
        .unwrap()
        .to_dtype(logits.dtype())
        .unwrap();
    let lp = candle_nn::ops::log_softmax(logits, 1).unwrap();
    (lp * w).unwrap().sum_all().unwrap()
}

/// Activation checkpointing (each layer recomputed in the backward) gives the single-graph
/// gradients up to f32 summation order: within 1e-5 of each tensor's scale, elementwise and in
/// L2 norm. Checked on f32 and bf16-stored weights, on all rows and on a later slice of rows
/// (as the trainer asks for response rows only).
#[test]
fn checkpointed_backward_matches_the_single_graph() {
    const RTOL: f32 = 1e-5;
    for dtype in [DType::F32, DType::BF16] {
        let opts = LoadOptions {
            dtype: Some(dtype),
            ..Default::default()
        };
        let m = Qwen3::load(&fixtures().join("tiny-qwen3"), &opts).unwrap();
        let a = LoraAdapter::load(
            &fixtures().join("lora-r4"),
            m.config(),
            m.device(),
            m.dtype(),
        )
        .unwrap();
        let ids = fixture_ids();
        for (from, n) in [(0, ids.len()), (ids.len() / 3, ids.len() - ids.len() / 3)] {
            let lora = TrainableLora::from_adapter(&a).unwrap();
            let view = lora.adapter();
            let logits = m.forward_train_rows(&ids, Some(&view), from, n).unwrap();
            let full = weighted_logprob_sum(&logits).backward().unwrap();

            let ck = m
                .forward_train_checkpointed(&ids, Some(&view), from, n)
                .unwrap();
            let max_diff = (ck.logits() - &logits)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(max_diff, 0.0, "checkpointed forward changed the logits");
            let loss = weighted_logprob_sum(ck.logits());
            let vars = lora.named_vars();
            let mut got: Vec<Option<Vec<f32>>> = vec![None; vars.len()];
            ck.backward(loss, |store| -> Result<(), claas_model::ModelError> {
                for ((_, var), slot) in vars.iter().zip(got.iter_mut()) {
                    if let Some(g) = store.get(var.as_tensor()) {
                        assert!(slot.is_none(), "a variable's gradient came in two parts");
                        *slot = Some(g.flatten_all()?.to_vec1::<f32>()?);
                    }
                }
                Ok(())
            })
            .unwrap();
            for ((name, var), g) in vars.iter().zip(got) {
                let g = g.unwrap_or_else(|| panic!("{name}: no checkpointed gradient"));
                let want: Vec<f32> = full
                    .get(var.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
                let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
                let diff = want
                    .iter()
                    .zip(&g)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                assert!(scale > 0.0, "{name}: zero gradient");
                assert!(
                    diff <= RTOL * norm,
                    "{name} ({dtype:?}, rows {from}+{n}): L2 difference {diff} vs norm {norm}"
                );
                for (a, b) in want.iter().zip(&g) {
                    assert!(
                        (a - b).abs() <= RTOL * scale,
                        "{name} ({dtype:?}, rows {from}+{n}): {b} vs {a} (scale {scale})"
                    );
                }
            }
        }
    }
}
