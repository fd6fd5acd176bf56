//! Prefill and decode throughput of the model core on a Qwen3-0.6B-shaped random model.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use claas_model::{
    KvCache, LoraAdapter, LoraInit, MatmulPrecision, Quantization, Qwen3, Qwen3Config, SeqInput,
    ALL_MODULES,
};

use crate::BenchError;

/// The shapes `shared/bench/torch_anchor.py` uses (Qwen3-0.6B).
pub fn qwen3_0_6b_config() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 151936,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_hidden_layers: 28,
        num_attention_heads: 16,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: 4096,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_ids: vec![],
        torch_dtype: Some("float32".into()),
    }
}

/// A model of the given shape with random weights (same cost as real ones).
pub fn random_model(cfg: &Qwen3Config) -> Result<Qwen3, BenchError> {
    random_model_in(cfg, DType::F32)
}

/// [`random_model`] with the weight matrices stored in `dtype` (`BF16`/`F16` keep them 16-bit
/// and compute in f32, as `--dtype bfloat16` does).
pub fn random_model_in(cfg: &Qwen3Config, dtype: DType) -> Result<Qwen3, BenchError> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let rnd = |shape: &[usize]| Tensor::randn(0f32, 0.02, shape, &dev);
    t.insert("model.embed_tokens.weight".to_string(), rnd(&[v, h])?);
    if !cfg.tie_word_embeddings {
        t.insert("lm_head.weight".to_string(), rnd(&[v, h])?);
    }
    for l in 0..cfg.num_hidden_layers {
        for m in ALL_MODULES {
            let (i, o) = m.dims(cfg);
            t.insert(format!("{}.weight", m.module_path(l)), rnd(&[o, i])?);
        }
        let p = format!("model.layers.{l}");
        let ones = |n: usize| Tensor::ones(n, DType::F32, &dev);
        t.insert(format!("{p}.self_attn.q_norm.weight"), ones(cfg.head_dim)?);
        t.insert(format!("{p}.self_attn.k_norm.weight"), ones(cfg.head_dim)?);
        t.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
    }
    t.insert(
        "model.norm.weight".to_string(),
        Tensor::ones(h, DType::F32, &dev)?,
    );
    Ok(Qwen3::from_tensors(cfg.clone(), t, &dev, dtype)?)
}

/// An r=32 adapter on all seven projections with non-zero B (so nothing is skipped).
pub fn random_adapter(cfg: &Qwen3Config, seed: u64) -> Result<LoraAdapter, BenchError> {
    let init = LoraInit {
        r: 32,
        lora_alpha: 64.0,
        target_modules: ALL_MODULES.iter().map(|m| m.name().to_string()).collect(),
        use_rslora: false,
        base_model_name_or_path: None,
    };
    Ok(LoraAdapter::init(&init, cfg, seed, &Device::Cpu)?)
}

fn argmax(logits: &Tensor) -> Result<u32, BenchError> {
    Ok(logits
        .argmax(candle_core::D::Minus1)?
        .flatten_all()?
        .to_vec1::<u32>()?[0])
}

fn prompt(len: usize, salt: u32, vocab: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(salt * 97)) % vocab as u32)
        .collect()
}

/// Tokens/s of prefill (`prompt_len` tokens per sequence) and greedy decode (`steps` tokens per
/// sequence) for `batch` sequences sharing one adapter (or none).
pub fn throughput(
    model: &Qwen3,
    adapter: Option<&LoraAdapter>,
    batch: usize,
    prompt_len: usize,
    steps: usize,
) -> Result<(f64, f64), BenchError> {
    let vocab = model.config().vocab_size;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|b| prompt(prompt_len, b as u32, vocab))
        .collect();
    let mut caches: Vec<KvCache> = (0..batch).map(|_| KvCache::new()).collect();
    let t0 = Instant::now();
    let mut seqs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(&prompts)
        .map(|(cache, p)| SeqInput {
            tokens: p,
            cache,
            adapter,
            all_logits: false,
        })
        .collect();
    let out = model.forward_batch(&mut seqs)?;
    let mut next: Vec<u32> = out.iter().map(argmax).collect::<Result<_, _>>()?;
    let prefill = (batch * prompt_len) as f64 / t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut seqs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&toks)
            .map(|(cache, t)| SeqInput {
                tokens: t,
                cache,
                adapter,
                all_logits: false,
            })
            .collect();
        let out = model.forward_batch(&mut seqs)?;
        next = out.iter().map(argmax).collect::<Result<_, _>>()?;
    }
    let decode = (batch * steps) as f64 / t1.elapsed().as_secs_f64();
    Ok((prefill, decode))
}

/// Runs the model benchmark and prints a table; `torch` is the anchor's JSON if available.
pub fn run(torch: Option<&serde_json::Value>, quick: bool) -> Result<(), BenchError> {
    let cfg = if quick {
        let mut c = qwen3_0_6b_config();
        c.num_hidden_layers = 4;
        c
    } else {
        qwen3_0_6b_config()
    };
    println!("measuring memory bandwidth ...");
    let bw = crate::memory_bandwidth();
    let lora = random_adapter(&cfg, 1)?;
    let torch_f32 = torch.and_then(|t| t["float32"]["decode_tokens_per_s_batch1"].as_f64());
    let torch_bf16 = torch.and_then(|t| t["bfloat16"]["decode_tokens_per_s_batch1"].as_f64());
    let (prompt_len, steps) = (64, if quick { 8 } else { 32 });
    // Batch-1 figures of each weight dtype, for the ratios at the end (same run, same machine
    // state): (dtype, decode tok/s without LoRA, prefill tok/s of 320 tokens).
    let mut summary = Vec::new();
    // bf16 runs at the default `--matmul-precision medium` (AMX where present) and at
    // `highest` (f32 activations); the last row is `--quantization q8_0`: the bf16 weights
    // quantized to int8 at build.
    for (dtype, precision, quant) in [
        (DType::F32, MatmulPrecision::Medium, None),
        (DType::BF16, MatmulPrecision::Highest, None),
        (DType::BF16, MatmulPrecision::Medium, None),
        (
            DType::BF16,
            MatmulPrecision::Medium,
            Some(Quantization::Q8_0),
        ),
    ] {
        let label = match (quant, precision) {
            (Some(q), _) => q.to_string(),
            (None, MatmulPrecision::Highest) if dtype != DType::F32 => format!("{dtype:?}_highest"),
            (None, _) => format!("{dtype:?}"),
        };
        println!(
            "building a random Qwen3-0.6B-shaped model ({} layers, weights {label}) ...",
            cfg.num_hidden_layers
        );
        let mut model = random_model_in(&cfg, dtype)?.with_matmul_precision(precision);
        if let Some(q) = quant {
            model = model.quantized(q)?;
        }
        let bytes = model.bytes_per_token() as f64;
        let bound = bw / bytes;
        println!(
            "bandwidth {:.1} GB/s, weights read per decoded token {:.2} GB -> bound {:.1} tok/s (batch 1)",
            bw / 1e9,
            bytes / 1e9,
            bound
        );
        println!(
            "{:<6} {:<8} {:<6} {:>14} {:>14} {:>12} {:>12} {:>12}",
            "dtype",
            "batch",
            "lora",
            "prefill tok/s",
            "decode tok/s",
            "of bound",
            "vs torch32",
            "vs torch16"
        );
        let _ = throughput(&model, None, 1, 8, 2)?; // warm-up
        let mut decode1 = 0.0;
        for batch in [1usize, 8] {
            for with in [false, true] {
                let (p, d) = throughput(&model, with.then_some(&lora), batch, prompt_len, steps)?;
                if batch == 1 && !with {
                    decode1 = d;
                }
                let ratio =
                    |t: Option<f64>| t.map(|t| format!("{:.2}x", d / t)).unwrap_or("-".into());
                println!(
                    "{:<6} {:<8} {:<6} {:>14.1} {:>14.2} {:>11.0}% {:>12} {:>12}",
                    label,
                    batch,
                    if with { "r32" } else { "none" },
                    p,
                    d,
                    100.0 * d / (bound * batch as f64),
                    ratio(torch_f32),
                    ratio(torch_bf16),
                );
            }
        }
        // llama-bench's pp320: one 320-token prompt, no adapter.
        let (pp320, _) = throughput(&model, None, 1, 320, 0)?;
        println!("{label} prefill of 320 tokens (llama-bench pp320): {pp320:.1} tok/s");
        summary.push((decode1, pp320));
    }
    if let [(d32, p32), (dhi, phi), (d16, p16), (d8, p8)] = summary[..] {
        println!(
            "bf16 vs f32 weights, same run: decode batch 1 {:.2}x, prefill 320 {:.2}x",
            d16 / d32,
            p16 / p32
        );
        println!(
            "bf16 medium vs highest matmul precision, same run: decode batch 1 {:.2}x, prefill 320 {:.2}x",
            d16 / dhi,
            p16 / phi
        );
        println!(
            "q8_0 vs bf16 weights, same run: decode batch 1 {:.2}x, prefill 320 {:.2}x",
            d8 / d16,
            p8 / p16
        );
    }
    println!(
        "(of bound: decode tok/s / (bandwidth / weight bytes per step x batch); a batched step"
    );
    println!(
        " reads the weights once for all sequences. The torch anchor is batch-1 decode with an"
    );
    println!(" r=32 LoRA, so compare it with the batch-1 r32 row.)");
    Ok(())
}
