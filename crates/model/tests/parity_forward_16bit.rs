//! Logit parity of 16-bit checkpoints (`forward_16bit.json`: the fixture model saved in bf16 and
//! f16 by transformers 5). Every bound comes from the fixture file: a 16-bit path must be at
//! least as close to `logits_f32_compute` (the 16-bit weights widened exactly, computed in f32)
//! as transformers' own 16-bit compute is (`max_abs_diff_16bit_vs_f32_compute`, per sequence);
//! the widened path must match within the README's 1e-4.
//!
//! At `--matmul-precision highest` our 16-bit path widens each weight exactly in registers and
//! computes in f32, so it is also held to 1e-4: a kernel that rounded activations to 16 bits
//! would pass the first bound and fail this one. At `medium` (the default) products of more
//! than 16 rows by bf16 weights round activations to bf16 (on AMX), and that path is held to
//! the first bound: at least as close as transformers' own 16-bit compute.

mod common;

use candle_core::{DType, Tensor};
use claas_model::{
    KvCache, LoadOptions, LoraAdapter, MatmulPrecision, Qwen3, SeqInput, TrainableLora,
};
use common::*;
use serde_json::Value;

/// The fixture README's tolerance for a path that computes in f32.
const ATOL: f64 = 1e-4;

/// The model at `--matmul-precision highest`: f32 activations everywhere.
fn load(model: &str, dtype: Option<DType>) -> Qwen3 {
    load_at(model, dtype, MatmulPrecision::Highest)
}

fn load_at(model: &str, dtype: Option<DType>, matmul_precision: MatmulPrecision) -> Qwen3 {
    let opts = LoadOptions {
        dtype,
        matmul_precision,
        ..Default::default()
    };
    Qwen3::load(&fixtures().join(model), &opts).unwrap()
}

fn adapter(m: &Qwen3) -> LoraAdapter {
    LoraAdapter::load(
        &fixtures().join("lora-r4"),
        m.config(),
        m.device(),
        m.dtype(),
    )
    .unwrap()
}

/// `(key, model folder, the 16-bit dtype its config names, sequences)` of each fixture dtype.
fn cases() -> Vec<(String, String, DType, Vec<Value>)> {
    let fx = read_json("forward_16bit.json");
    let dtypes = fx["dtypes"].as_object().unwrap();
    assert!(!dtypes.is_empty());
    dtypes
        .iter()
        .map(|(key, d)| {
            let model = d["model"].as_str().unwrap().to_string();
            let cfg: Value = serde_json::from_str(
                &std::fs::read_to_string(fixtures().join(&model).join("config.json")).unwrap(),
            )
            .unwrap();
            let named = cfg
                .get("dtype")
                .or_else(|| cfg.get("torch_dtype"))
                .and_then(Value::as_str)
                .unwrap();
            let dtype = claas_model::parse_dtype(named).unwrap().unwrap();
            let seqs = d["sequences"].as_array().unwrap().clone();
            assert!(!seqs.is_empty());
            (key.clone(), model, dtype, seqs)
        })
        .collect()
}

fn bound(s: &Value) -> f64 {
    let b = s["max_abs_diff_16bit_vs_f32_compute"].as_f64().unwrap();
    assert!(b > 0.0);
    b
}

#[test]
fn parity_16bit_weights_stay_16bit_under_auto() {
    for (key, model, dtype, _) in cases() {
        let m = load(&model, None);
        assert_eq!(
            m.weight_dtype(),
            dtype,
            "{key}: auto keeps the checkpoint's dtype"
        );
        assert_eq!(m.dtype(), DType::F32, "{key}: computes in f32");
        let wide = load(&model, Some(DType::F32));
        assert_eq!(wide.weight_dtype(), DType::F32);
        // Matrices take half the bytes; norms stay f32 in both.
        assert!(
            2 * m.weight_bytes() < wide.weight_bytes() + wide.weight_bytes() / 20,
            "{key}: {} vs {} bytes",
            m.weight_bytes(),
            wide.weight_bytes()
        );
    }
}

#[test]
fn parity_16bit_base_logits() {
    for (key, model, _, seqs) in cases() {
        let half = load(&model, None);
        let wide = load(&model, Some(DType::F32));
        for (i, s) in seqs.iter().enumerate() {
            let ids = ids(&s["input_ids"]);
            let want = matrix(&s["logits_f32_compute"]);
            let b = bound(s);
            // The reference's own 16-bit compute really is that far (the bound is not slack).
            let theirs = matrix(&s["logits_16bit_compute"]);
            let t = Tensor::new(
                theirs
                    .iter()
                    .map(|r| r.iter().map(|&v| v as f32).collect::<Vec<_>>())
                    .collect::<Vec<_>>(),
                &candle_core::Device::Cpu,
            )
            .unwrap();
            assert!((max_abs_diff(&t, &want) - b).abs() <= 1e-6 * b.max(1.0));

            let got = half.logits(&ids, None, 512).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= b,
                "{key} seq {i}: 16-bit path {d:e} > reference 16-bit {b:e}"
            );
            assert!(d <= ATOL, "{key} seq {i}: 16-bit path {d:e}");
            let got = half.forward_train(&ids, None).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d <= ATOL, "{key} seq {i} (16-bit training path): {d:e}");

            let got = wide.logits(&ids, None, 512).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d <= ATOL, "{key} seq {i}: widened path {d:e}");
            let got = wide.forward_train(&ids, None).unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(d <= ATOL, "{key} seq {i} (widened training path): {d:e}");
        }
    }
}

/// The default `--matmul-precision medium`: every path (cached prefill, training forward, with
/// and without the adapter) is at least as close to the f32 computation as transformers' own
/// 16-bit compute. Where AMX runs it (bf16 weights, sequences past 16 tokens) the logits must
/// differ from the f32-activation path's, or this test would not be testing it.
#[test]
fn parity_16bit_medium_precision_within_reference_16bit_error() {
    for (key, model, dtype, seqs) in cases() {
        let m = load_at(&model, None, MatmulPrecision::Medium);
        assert_eq!(m.matmul_precision(), MatmulPrecision::Medium);
        let highest = load(&model, None);
        let a = adapter(&m);
        for (i, s) in seqs.iter().enumerate() {
            let ids = ids(&s["input_ids"]);
            let b = bound(s);
            for (lora, want) in [
                (None, matrix(&s["logits_f32_compute"])),
                (Some(&a), matrix(&s["lora_logits_f32_compute"])),
            ] {
                let what = format!("{key} seq {i} lora {}", lora.is_some());
                let got = m.logits(&ids, lora, 512).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d <= b, "{what}: medium path {d:e} > reference 16-bit {b:e}");
                let trained = m.forward_train(&ids, lora).unwrap();
                let d = max_abs_diff(&trained, &want);
                assert!(d <= b, "{what} (training): {d:e} > {b:e}");
                let f32_path = highest.logits(&ids, lora, 512).unwrap();
                let moved = (&got - &f32_path)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap() as f64;
                if dtype == DType::BF16 && ids.len() > 16 && claas_kernels::amx_available() {
                    assert!(moved > 0.0, "{what}: medium ran the f32-activation path");
                } else {
                    assert!(moved <= ATOL, "{what}: {moved:e} off the f32 path");
                }
            }
        }
    }
}

#[test]
fn parity_16bit_lora_logits() {
    for (key, model, _, seqs) in cases() {
        for dtype in [None, Some(DType::F32)] {
            let m = load(&model, dtype);
            let a = adapter(&m);
            for (i, s) in seqs.iter().enumerate() {
                let ids = ids(&s["input_ids"]);
                let want = matrix(&s["lora_logits_f32_compute"]);
                let b = bound(s);
                let got = m.logits(&ids, Some(&a), 512).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(d <= b.min(ATOL), "{key} {dtype:?} seq {i}: {d:e}");
                let got = m.forward_train(&ids, Some(&a)).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(
                    d <= b.min(ATOL),
                    "{key} {dtype:?} seq {i} (training): {d:e}"
                );
            }
        }
    }
}

/// Token-by-token decoding (the GEMV path, one row per sequence) with and without the adapter,
/// packed into one batch per step, reproduces the full-sequence logits.
#[test]
fn parity_16bit_kv_cached_decode() {
    for (key, model, _, seqs) in cases() {
        let m = load(&model, None);
        let a = adapter(&m);
        let mut jobs = Vec::new();
        for s in &seqs {
            jobs.push((
                ids(&s["input_ids"]),
                matrix(&s["logits_f32_compute"]),
                false,
            ));
            jobs.push((
                ids(&s["input_ids"]),
                matrix(&s["lora_logits_f32_compute"]),
                true,
            ));
        }
        let mut caches: Vec<KvCache> = jobs.iter().map(|_| KvCache::new()).collect();
        let max_len = jobs.iter().map(|j| j.0.len()).max().unwrap();
        for step in 0..max_len {
            let mut batch = Vec::new();
            let mut which = Vec::new();
            for (idx, (cache, job)) in caches.iter_mut().zip(&jobs).enumerate() {
                if step < job.0.len() {
                    batch.push(SeqInput {
                        tokens: &job.0[step..step + 1],
                        cache,
                        adapter: job.2.then_some(&a),
                        all_logits: true,
                    });
                    which.push(idx);
                }
            }
            let out = m.forward_batch(&mut batch).unwrap();
            for (logits, idx) in out.iter().zip(which) {
                let d = max_abs_diff(logits, &jobs[idx].1[step..step + 1]);
                assert!(d <= ATOL, "{key} job {idx} step {step}: {d:e}");
            }
        }
    }
}

/// LoRA gradients through the 16-bit frozen backward (`dx = g·W` on the 16-bit kernel) equal
/// those through candle's f32 matmul on the widened weights, up to f32 summation order.
#[test]
fn parity_16bit_lora_gradients_match_widened() {
    for (key, model, _, seqs) in cases() {
        let ids = ids(&seqs[seqs.len() - 1]["input_ids"]);
        let mut grads = Vec::new();
        for dtype in [None, Some(DType::F32)] {
            let m = load(&model, dtype);
            let lora = TrainableLora::from_adapter(&adapter(&m)).unwrap();
            let logits = m.forward_train(&ids, Some(&lora.adapter())).unwrap();
            let (l, v) = logits.dims2().unwrap();
            let w: Vec<f32> = (0..l * v)
                .map(|i| (((i * 7919) % 1009) as f32 / 1009.0) - 0.5)
                .collect();
            let w = Tensor::from_vec(w, (l, v), m.device()).unwrap();
            let lp = candle_nn::ops::log_softmax(&logits, 1).unwrap();
            let g = (lp * w).unwrap().sum_all().unwrap().backward().unwrap();
            let per_var: Vec<(String, Vec<f32>)> = lora
                .named_vars()
                .into_iter()
                .map(|(name, var)| {
                    let t = g.get(var.as_tensor()).expect("gradient");
                    (name, t.flatten_all().unwrap().to_vec1().unwrap())
                })
                .collect();
            grads.push(per_var);
        }
        let (half, wide) = (&grads[0], &grads[1]);
        assert_eq!(half.len(), wide.len());
        for ((name, a), (_, b)) in half.iter().zip(wide) {
            let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
            assert!(scale > 0.0, "{key} {name}: zero gradient");
            let d = a.iter().zip(b).fold(0f32, |s, (x, y)| s.max((x - y).abs()));
            // Relative to the tensor's largest entry: f32 sums of a few hundred terms in
            // another order differ by ~1e-6 of it; a wrong or missing term by far more.
            assert!(
                d <= 1e-4 * scale,
                "{key} {name}: max |d| {d:e}, scale {scale:e}"
            );
        }
    }
}

/// An f32 checkpoint loaded with a 16-bit dtype: its matrices are rounded to nearest at load,
/// as transformers' `.to(dtype)` rounds them when saving the 16-bit fixtures (their norm
/// weights, rounded there, stay f32 here), so the logits are within the bound of a 16-bit path.
#[test]
fn parity_16bit_converted_at_load_from_f32() {
    for (key, _, dtype, seqs) in cases() {
        let m = load("tiny-qwen3", Some(dtype));
        assert_eq!(m.weight_dtype(), dtype, "{key}");
        for (i, s) in seqs.iter().enumerate() {
            let ids = ids(&s["input_ids"]);
            let want = matrix(&s["logits_f32_compute"]);
            let d = max_abs_diff(&m.logits(&ids, None, 512).unwrap(), &want);
            assert!(d <= bound(s), "{key} seq {i}: {d:e} > {:e}", bound(s));
        }
    }
}
