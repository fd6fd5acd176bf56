//! Time of one SDPO step (teacher scoring, student forward, backward, optimizer, save) on a
//! Qwen3-0.6B-shaped model with an r=32 adapter on all seven projections, 64 prompt + 256
//! response tokens, as `shared/bench/torch_anchor.py` measures PyTorch + PEFT.

use std::sync::Arc;
use std::time::Instant;

use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_sdpo::{FeedbackItem, Trainer, TrainingConfig};

use candle_core::DType;
use claas_model::MatmulPrecision;

use crate::model::{qwen3_0_6b_config, random_adapter, random_model_in};
use crate::BenchError;

pub(crate) const PROMPT_TOKENS: usize = 64;
pub(crate) const RESPONSE_TOKENS: usize = 256;

pub(crate) fn text_of(tok: &Tokenizer, n: usize, words: &str) -> Result<String, BenchError> {
    let mut s = String::new();
    loop {
        let len = tok
            .encode(&s, false)
            .map_err(|e| BenchError::Other(e.to_string()))?
            .len();
        if len >= n {
            return Ok(s);
        }
        s.push_str(words);
    }
}

/// Runs the step with f32 and with bf16 weights, and compares each with PyTorch's. `only`
/// (`f32`, `bf16`, `bf16-highest`) runs one of the three configurations.
pub fn run(
    torch: Option<&serde_json::Value>,
    quick: bool,
    only: Option<&str>,
) -> Result<(), BenchError> {
    let mut totals = Vec::new();
    // bf16 at the default `--matmul-precision medium` (AMX where present) and at `highest`.
    for (name, dtype, p) in [
        ("f32", DType::F32, MatmulPrecision::Medium),
        ("bf16-highest", DType::BF16, MatmulPrecision::Highest),
        ("bf16", DType::BF16, MatmulPrecision::Medium),
    ] {
        if only.is_none_or(|o| o == name) {
            totals.push(run_in(torch, quick, dtype, p)?);
        }
    }
    if let [f32_s, hi_s, bf16_s] = totals[..] {
        println!(
            "bf16 vs f32 weights, same run: the step takes {:.2}x the time",
            bf16_s / f32_s
        );
        println!(
            "bf16 medium vs highest matmul precision, same run: the step takes {:.2}x the time",
            bf16_s / hi_s
        );
    }
    Ok(())
}

/// Runs the step twice (the first warms allocations up), prints the best breakdown and
/// returns its total seconds.
fn run_in(
    torch: Option<&serde_json::Value>,
    quick: bool,
    dtype: DType,
    precision: MatmulPrecision,
) -> Result<f64, BenchError> {
    let mut cfg = qwen3_0_6b_config();
    if quick {
        cfg.num_hidden_layers = 4;
    }
    let label = if dtype != DType::F32 && precision == MatmulPrecision::Highest {
        format!("{dtype:?}_highest")
    } else {
        format!("{dtype:?}")
    };
    println!(
        "building a random Qwen3-0.6B-shaped model ({} layers, weights {label}) ...",
        cfg.num_hidden_layers
    );
    let model = Arc::new(random_model_in(&cfg, dtype)?.with_matmul_precision(precision));
    let adapter = random_adapter(&cfg, 3)?;
    // The built-in tokenizer's ids are all below the 0.6B vocabulary, so its text maps to valid ids.
    let tok = Tokenizer::from_json_str(&claas_chat::builtin::tokenizer_json())
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let tcfg = TokenizerConfig::from_json_str(&claas_chat::builtin::tokenizer_config_json())
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let template =
        ChatTemplate::from_config(&tcfg).map_err(|e| BenchError::Other(e.to_string()))?;
    let item = FeedbackItem {
        prompt: text_of(&tok, PROMPT_TOKENS, " write a function that sorts a list")?,
        response: text_of(&tok, RESPONSE_TOKENS, " def sort(xs): return sorted(xs)")?,
        feedback: "Explain the complexity too.".into(),
        rollout_logprobs: None,
        ..FeedbackItem::default()
    };
    let trainer = Trainer::new(model, Arc::new(tok), Arc::new(template));
    let tc = TrainingConfig {
        steps_per_batch: 1,
        ..TrainingConfig::default()
    };
    let dir = std::env::temp_dir().join(format!("claas-bench-sdpo-{}", std::process::id()));
    let mut best: Option<(f64, claas_sdpo::DistillTimings, f64)> = None;
    for _ in 0..2 {
        let t0 = Instant::now();
        let out = trainer
            .distill(&adapter, None, std::slice::from_ref(&item), &tc)
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let ts = Instant::now();
        out.adapter.save(&dir)?;
        out.optimizer
            .save(&dir)
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let save_ms = ts.elapsed().as_secs_f64() * 1e3;
        let total = t0.elapsed().as_secs_f64();
        if best.as_ref().is_none_or(|b| total < b.0) {
            best = Some((total, out.timings, save_ms));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let Some((total, t, save_ms)) = best else {
        return Err(BenchError::Other("no run".into()));
    };
    println!(
        "SDPO step, {PROMPT_TOKENS} prompt + {RESPONSE_TOKENS} response tokens, r=32 on 7 modules, weights {label}:"
    );
    println!("  tokenize      {:8.0} ms", t.tokenize_ms);
    println!(
        "  teacher+base  {:8.0} ms  (no-grad scoring, adapter off)",
        t.teacher_ms
    );
    println!("  student fwd   {:8.0} ms", t.forward_ms);
    println!("  backward      {:8.0} ms", t.backward_ms);
    println!("  optimizer     {:8.0} ms", t.optimizer_ms);
    println!("  save          {:8.0} ms", save_ms);
    println!("  total         {:8.2} s", total);
    for (name, key) in [("float32", "float32"), ("bfloat16", "bfloat16")] {
        if let Some(s) = torch.and_then(|j| j[key]["sdpo_step_s"].as_f64()) {
            println!(
                "  vs PyTorch+PEFT {name}: {s:.2} s -> claas takes {:.2}x its time",
                total / s
            );
        }
    }
    Ok(total)
}
