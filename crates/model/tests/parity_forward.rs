//! Logit parity with transformers + PEFT on the shared tiny-qwen3 fixtures.

mod common;

use claas_model::{KvCache, LoadOptions, LoraAdapter, Qwen3, SeqInput};
use common::*;

/// The fixture README's tolerance for forward logits.
const ATOL: f64 = 1e-4;

fn model() -> Qwen3 {
    Qwen3::load(&fixtures().join("tiny-qwen3"), &LoadOptions::default()).unwrap()
}

fn adapter(m: &Qwen3) -> LoraAdapter {
    let dev = m.device().clone();
    LoraAdapter::load(&fixtures().join("lora-r4"), m.config(), &dev, m.dtype()).unwrap()
}

fn check_full(file: &str, lora: bool) {
    let m = model();
    let a = lora.then(|| adapter(&m));
    let fx = read_json(file);
    let seqs = fx["sequences"].as_array().unwrap();
    assert!(!seqs.is_empty());
    for (i, s) in seqs.iter().enumerate() {
        let ids = ids(&s["input_ids"]);
        let want = matrix(&s["logits"]);
        let got = m.logits(&ids, a.as_ref(), 512).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= ATOL, "{file} seq {i}: max |d| = {d:e}");
        // The differentiable training path must compute the same function.
        let got = m.forward_train(&ids, a.as_ref()).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d <= ATOL, "{file} seq {i} (training path): max |d| = {d:e}");
        // ... also when only some rows get the LM head.
        if ids.len() >= 3 {
            let (from, n) = (1, ids.len() - 2);
            let got = m.forward_train_rows(&ids, a.as_ref(), from, n).unwrap();
            let d = max_abs_diff(&got, &want[from..from + n]);
            assert!(d <= ATOL, "{file} seq {i} (training rows): max |d| = {d:e}");
        }
    }
    assert!(m.forward_train_rows(&[1, 2], None, 1, 2).is_err());
}

#[test]
fn parity_base_logits() {
    check_full("forward.json", false);
}

#[test]
fn parity_lora_logits() {
    check_full("forward_lora.json", true);
}

/// Token-by-token decoding through the KV cache, all fixture sequences (with and without the
/// adapter) packed into one batch per step, must reproduce the full-sequence logits.
#[test]
fn parity_kv_cached_batched_decode() {
    let m = model();
    let a = adapter(&m);
    let base = read_json("forward.json");
    let lora = read_json("forward_lora.json");
    let mut jobs: Vec<(Vec<u32>, Vec<Vec<f64>>, bool)> = Vec::new();
    // Interleaved, so every step alternates adapter and no adapter row by row (the per-row
    // multi-adapter path) as well as grouping the chunked prefill.
    let (bs, ls) = (
        base["sequences"].as_array().unwrap(),
        lora["sequences"].as_array().unwrap(),
    );
    assert_eq!(bs.len(), ls.len());
    for (b, l) in bs.iter().zip(ls) {
        jobs.push((ids(&b["input_ids"]), matrix(&b["logits"]), false));
        jobs.push((ids(&l["input_ids"]), matrix(&l["logits"]), true));
    }
    let mut caches: Vec<KvCache> = jobs.iter().map(|_| KvCache::new()).collect();
    // Prefill a prefix of 3 tokens (chunked prefill), then one token per step.
    let prefix = 3;
    let max_len = jobs.iter().map(|j| j.0.len()).max().unwrap();
    let mut step = 0;
    while step < max_len {
        let width = if step == 0 { prefix } else { 1 };
        let mut batch = Vec::new();
        let mut which = Vec::new();
        for (idx, (cache, job)) in caches.iter_mut().zip(&jobs).enumerate() {
            if step >= job.0.len() {
                continue;
            }
            let end = (step + width).min(job.0.len());
            batch.push(SeqInput {
                tokens: &job.0[step..end],
                cache,
                adapter: if job.2 { Some(&a) } else { None },
                all_logits: true,
            });
            which.push((idx, step, end));
        }
        let out = m.forward_batch(&mut batch).unwrap();
        for (logits, (idx, s, e)) in out.iter().zip(which) {
            let d = max_abs_diff(logits, &jobs[idx].1[s..e]);
            assert!(d <= ATOL, "job {idx} positions {s}..{e}: max |d| = {d:e}");
        }
        step += width;
    }
}

/// Several sequences scored together, only some rows, in small chunks: the same numbers.
#[test]
fn parity_packed_scoring_of_selected_rows() {
    let m = model();
    let fx = read_json("forward.json");
    let seqs: Vec<(Vec<u32>, Vec<Vec<f64>>)> = fx["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (ids(&s["input_ids"]), matrix(&s["logits"])))
        .collect();
    let req: Vec<(&[u32], usize)> = seqs
        .iter()
        .map(|(ids, _)| (ids.as_slice(), ids.len() / 2))
        .collect();
    let out = m.logits_packed(&req, None, 4).unwrap();
    for ((ids, want), got) in seqs.iter().zip(&out) {
        let from = ids.len() / 2;
        let d = max_abs_diff(got, &want[from..]);
        assert!(
            d <= ATOL,
            "rows {from}.. of a {}-token sequence: {d:e}",
            ids.len()
        );
    }
}

/// Prefill chunks longer than the row kernel handles, on two adapters in one packed batch (the
/// per-group matmul path), compute what each sequence computes alone.
#[test]
fn packed_long_prefill_on_two_adapters_matches_single_runs() {
    let m = model();
    let a = adapter(&m);
    let seqs: Vec<Vec<u32>> = [70usize, 90]
        .iter()
        .enumerate()
        .map(|(s, &n)| {
            (0..n as u32)
                .map(|i| (i * 37 + s as u32 * 11) % 1000)
                .collect()
        })
        .collect();
    let adapters = [Some(&a), None];
    let mut caches = [KvCache::new(), KvCache::new()];
    let mut batch: Vec<SeqInput> = seqs
        .iter()
        .zip(caches.iter_mut())
        .zip(adapters)
        .map(|((ids, cache), adapter)| SeqInput {
            tokens: ids,
            cache,
            adapter,
            all_logits: true,
        })
        .collect();
    let packed = m.forward_batch(&mut batch).unwrap();
    for ((ids, adapter), got) in seqs.iter().zip(adapters).zip(&packed) {
        let alone = m.logits(ids, adapter, 512).unwrap();
        let want: Vec<Vec<f64>> = alone
            .to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(f64::from).collect())
            .collect();
        let d = max_abs_diff(got, &want);
        assert!(d <= ATOL, "{} tokens: max |d| = {d:e}", ids.len());
    }
}
