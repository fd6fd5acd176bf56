//! `--quantization q8_0`: logits of the int8 model against the f32 reference logits of the
//! fixture sequences (forward.json for the f32 checkpoint, `logits_f32_compute` of
//! forward_16bit.json for the bf16/f16 ones, forward_lora.json with the adapter).
//!
//! **The bound.** q8_0 moves each weight by at most half a step, `d/2 = max|w_block|/254`.
//! To first order the logits move linearly in the weight perturbation, and for independent
//! rounding errors the size of that move scales with their RMS. Transformers' bf16 compute
//! (`logits_16bit_compute` in the fixture) is such a perturbation too: its weights rounded to
//! bf16 *plus* every activation rounded to bf16, so its logit error is at least the part due
//! to weight rounding alone. The bound for a sequence is therefore
//! `ρ · (transformers' bf16 error on it)` (max and mean alike), where
//! `ρ = RMS(q8_0 weight error) / RMS(bf16 weight rounding error)` is computed here from the
//! checkpoint's own matrices (3.2 on the fixture model: a q8_0 step is 1/127 of the block
//! maximum, a bf16 step 2⁻⁸ of each weight). A wrong scale, a swapped block or a dropped tail
//! block moves logits by O(1) and fails. Nothing is sized for the fixture: shapes come from the
//! files.
//!
//! Top-1: wherever the reference's top-1 margin exceeds twice the bound, the int8 argmax must
//! agree (a logit error ≤ bound cannot flip it); the agreement over all positions is printed.

mod common;

use candle_core::{DType, Tensor};
use claas_model::{LoadOptions, LoraAdapter, Quantization, Qwen3};
use common::*;
use serde_json::Value;

fn load_q8(model: &str) -> Qwen3 {
    let opts = LoadOptions {
        quantization: Some(Quantization::Q8_0),
        ..Default::default()
    };
    let m = Qwen3::load(&fixtures().join(model), &opts).unwrap();
    assert_eq!(m.quantization(), Some(Quantization::Q8_0));
    assert_eq!(m.dtype(), DType::F32, "int8 weights, f32 compute");
    m
}

/// ρ: RMS of the q8_0 error over RMS of the bf16 rounding error, over every matrix of the f32
/// checkpoint (its bf16/f16 copies hold the same values, rounded).
fn rho() -> f64 {
    let path = fixtures().join("tiny-qwen3/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut eq, mut eb) = (0f64, 0f64);
    for (_, v) in st.tensors() {
        let &[rows, cols] = v.shape() else { continue };
        assert_eq!(v.dtype(), safetensors::Dtype::F32);
        let w: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let nb = claas_kernels::q8_blocks(cols);
        let (mut qs, mut sc, mut back) = (vec![0i8; cols], vec![0u16; nb], vec![0f32; cols]);
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            claas_kernels::q8_quantize_row(row, &mut qs, &mut sc).unwrap();
            claas_kernels::q8_dequantize_row(&qs, &sc, &mut back);
            for (&a, &b) in row.iter().zip(&back) {
                eq += ((a - b) as f64).powi(2);
                eb += ((a - half::bf16::from_f32(a).to_f32()) as f64).powi(2);
            }
        }
    }
    assert!(eb > 0.0);
    (eq / eb).sqrt()
}

/// (max, mean) |a − b| over a `[rows, cols]` tensor and a fixture matrix.
fn errors(t: &Tensor, want: &[Vec<f64>]) -> (f64, f64) {
    let got: Vec<Vec<f32>> = t.to_vec2().unwrap();
    assert_eq!(got.len(), want.len());
    let (mut max, mut sum, mut n) = (0f64, 0f64, 0usize);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len());
        for (&a, &b) in g.iter().zip(w) {
            let d = (a as f64 - b).abs();
            max = max.max(d);
            sum += d;
            n += 1;
        }
    }
    (max, sum / n as f64)
}

fn matrix_errors(a: &[Vec<f64>], b: &[Vec<f64>]) -> (f64, f64) {
    let t = Tensor::new(
        a.iter()
            .map(|r| r.iter().map(|&v| v as f32).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    errors(&t, b)
}

fn argmax(r: &[f64]) -> usize {
    (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b })
}

/// Top-1 agreement of `got` with `want`: (agreeing, total); panics where the reference margin
/// exceeds `2·bound` and the argmax differs.
fn top1(got: &Tensor, want: &[Vec<f64>], bound: f64, what: &str) -> (usize, usize) {
    let got: Vec<Vec<f32>> = got.to_vec2().unwrap();
    let mut agree = 0;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        let g: Vec<f64> = g.iter().map(|&v| v as f64).collect();
        let (a, b) = (argmax(&g), argmax(w));
        let second = (0..w.len())
            .filter(|&i| i != b)
            .map(|i| w[i])
            .fold(f64::NEG_INFINITY, f64::max);
        if a == b {
            agree += 1;
        } else {
            assert!(
                w[b] - second <= 2.0 * bound,
                "{what} position {t}: top-1 {a} != {b} with margin {}",
                w[b] - second
            );
        }
    }
    (agree, got.len())
}

/// The bf16 reference error of each forward.json sequence: (max, mean) of
/// `logits_16bit_compute − logits_f32_compute` in forward_16bit.json's bf16 entry, matched to
/// the sequence by its ids.
fn bf16_errors(ids_wanted: &[u32]) -> (f64, f64) {
    let fx = read_json("forward_16bit.json");
    let s = fx["dtypes"]["bf16"]["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| ids(&s["input_ids"]) == ids_wanted)
        .expect("forward_16bit.json's bf16 entry has every forward.json sequence");
    let e = matrix_errors(
        &matrix(&s["logits_16bit_compute"]),
        &matrix(&s["logits_f32_compute"]),
    );
    let stated = s["max_abs_diff_16bit_vs_f32_compute"].as_f64().unwrap();
    assert!((e.0 - stated).abs() <= 1e-6 * stated.max(1.0));
    e
}

fn check_case(
    m: &Qwen3,
    ids: &[u32],
    want: &[Vec<f64>],
    lora: Option<&LoraAdapter>,
    what: &str,
    rho: f64,
) {
    let (bmax, bmean) = bf16_errors(ids);
    let (max_bound, mean_bound) = (rho * bmax, rho * bmean);
    let got = m.logits(ids, lora, ids.len() + 8).unwrap();
    let (max, mean) = errors(&got, want);
    let (agree, n) = top1(&got, want, max_bound, what);
    eprintln!(
        "{what}: int8 max {max:.3e} (bound {max_bound:.3e}), mean {mean:.3e} (bound {mean_bound:.3e}), top-1 {agree}/{n}"
    );
    assert!(
        max <= max_bound,
        "{what}: max logit error {max:e} > {max_bound:e}"
    );
    assert!(
        mean <= mean_bound,
        "{what}: mean logit error {mean:e} > {mean_bound:e}"
    );
    // The training path runs the GEMM/backward kernels on the same int8 weights.
    let train = m.forward_train(ids, lora).unwrap();
    let (tmax, _) = errors(&train, want);
    assert!(
        tmax <= max_bound,
        "{what} (training path): {tmax:e} > {max_bound:e}"
    );
}

#[test]
fn int8_logits_within_the_quantization_bound() {
    let rho = rho();
    eprintln!("rho = RMS(q8_0 error)/RMS(bf16 rounding) = {rho:.3}");
    assert!(rho > 1.0, "q8_0 is coarser than bf16");
    let fx = read_json("forward.json");
    let model = fx["model"].as_str().unwrap_or("tiny-qwen3");
    let seqs: Vec<Value> = fx["sequences"].as_array().unwrap().clone();
    // From the f32 checkpoint, and from its bf16/f16 copies (reference: their widened weights).
    let m = load_q8(model);
    for (i, s) in seqs.iter().enumerate() {
        let ids = ids(&s["input_ids"]);
        check_case(
            &m,
            &ids,
            &matrix(&s["logits"]),
            None,
            &format!("{model} seq {i}"),
            rho,
        );
    }
    let fx16 = read_json("forward_16bit.json");
    for (key, d) in fx16["dtypes"].as_object().unwrap() {
        let m = load_q8(d["model"].as_str().unwrap());
        for (i, s) in d["sequences"].as_array().unwrap().iter().enumerate() {
            let ids = ids(&s["input_ids"]);
            let want = matrix(&s["logits_f32_compute"]);
            check_case(&m, &ids, &want, None, &format!("{key} seq {i}"), rho);
        }
    }
}

#[test]
fn int8_weights_take_about_a_quarter_of_f32() {
    let fx = read_json("forward.json");
    let model = fx["model"].as_str().unwrap_or("tiny-qwen3");
    let q = load_q8(model);
    let wide = Qwen3::load(
        &fixtures().join(model),
        &LoadOptions {
            dtype: Some(DType::F32),
            ..Default::default()
        },
    )
    .unwrap();
    // 34 bytes per 32 weights instead of 128; norms stay f32 in both.
    assert!(
        q.weight_bytes() * 100 < wide.weight_bytes() * 30,
        "{} vs {}",
        q.weight_bytes(),
        wide.weight_bytes()
    );
}

#[test]
fn int8_base_with_lora() {
    let rho = rho();
    let fx = read_json("forward_lora.json");
    let base = read_json("forward.json");
    let model = base["model"].as_str().unwrap_or("tiny-qwen3");
    let m = load_q8(model);
    let adapter_dir = fx["adapter"].as_str().unwrap_or("lora-r4");
    let a = LoraAdapter::load(
        &fixtures().join(adapter_dir),
        m.config(),
        m.device(),
        m.dtype(),
    )
    .unwrap();
    for (i, s) in fx["sequences"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&s["input_ids"]);
        check_case(
            &m,
            &ids,
            &matrix(&s["logits"]),
            Some(&a),
            &format!("lora seq {i}"),
            rho,
        );
    }
}

#[test]
fn unsupported_quantization_is_refused_by_name() {
    assert_eq!(
        claas_model::parse_quantization("q8_0").unwrap(),
        Some(Quantization::Q8_0)
    );
    assert_eq!(
        claas_model::parse_quantization("int8").unwrap(),
        Some(Quantization::Q8_0)
    );
    assert_eq!(claas_model::parse_quantization("none").unwrap(), None);
    for bad in ["awq", "gptq", "fp8", "q4_0"] {
        let e = claas_model::parse_quantization(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains(bad) && e.contains("q8_0"), "{e}");
    }
}
