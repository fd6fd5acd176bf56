//! Times one SDPO step on a Qwen3-0.6B-shaped model with random weights (r = 32, all
//! projections, ~64 prompt + ~256 response tokens) and prints the trainer's breakdown.
//! Run: `cargo run --release -p claas-sdpo --example step_profile` (needs ~6 GB of RAM).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoraAdapter, LoraInit, Module, Qwen3, Qwen3Config, ALL_MODULES};
use claas_sdpo::{FeedbackItem, Trainer, TrainingConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let cfg = Qwen3Config {
        vocab_size: 151_936,
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
        eos_token_ids: vec![151_645],
        torch_dtype: Some("float32".into()),
    };
    loss_only(258, 151_936, 100)?;
    let t0 = Instant::now();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let h = cfg.hidden_size;
    w.insert(
        "model.embed_tokens.weight".into(),
        Tensor::randn(0f32, 0.02, (cfg.vocab_size, h), &dev)?,
    );
    w.insert(
        "model.norm.weight".into(),
        Tensor::ones(h, DType::F32, &dev)?,
    );
    for l in 0..cfg.num_hidden_layers {
        for m in ALL_MODULES {
            let (i, o) = Module::dims(m, &cfg);
            w.insert(
                format!("{}.weight", m.module_path(l)),
                Tensor::randn(0f32, 0.02, (o, i), &dev)?,
            );
        }
        let p = format!("model.layers.{l}");
        for (n, d) in [
            ("self_attn.q_norm", cfg.head_dim),
            ("self_attn.k_norm", cfg.head_dim),
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
        ] {
            w.insert(
                format!("{p}.{n}.weight"),
                Tensor::ones(d, DType::F32, &dev)?,
            );
        }
    }
    let model = Qwen3::from_tensors(cfg.clone(), w, &dev, DType::F32)?;
    eprintln!("model built in {:.1} s", t0.elapsed().as_secs_f64());

    let fx = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/tiny-qwen3"
    ));
    let tok = Tokenizer::from_file(fx.join("tokenizer.json"))?;
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(&fx)?)?;
    let words = |n: usize| -> String {
        let mut s = String::new();
        while tok.encode(&s, false).map(|v| v.len()).unwrap_or(0) < n {
            s.push_str(" result factorial loop");
        }
        s
    };
    let item = FeedbackItem {
        prompt: words(64),
        response: words(256),
        feedback: "Wrong: the loop stops one short.".into(),
        rollout_logprobs: None,
    };
    let init = LoraInit {
        r: 32,
        lora_alpha: 64.0,
        target_modules: ALL_MODULES.iter().map(|m| m.name().to_string()).collect(),
        use_rslora: false,
        base_model_name_or_path: None,
    };
    let adapter = LoraAdapter::init(&init, &cfg, 1, &dev)?;
    let trainer = Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl));
    let tc = TrainingConfig {
        steps_per_batch: 1,
        ..TrainingConfig::default()
    };
    for run in 0..2 {
        let out = trainer.distill(&adapter, None, std::slice::from_ref(&item), &tc)?;
        eprintln!(
            "run {run}: tokens {} timings {}",
            out.metadata.tokens_processed,
            serde_json::to_string(&out.timings)?
        );
    }
    Ok(())
}

/// The loss alone on random logits: forward and backward over a full vocabulary.
fn loss_only(t: usize, v: usize, k: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let logits = candle_core::Var::from_tensor(&Tensor::randn(0f32, 2.0, (1, t, v), &dev)?)?;
    let idx: Vec<u32> = (0..t * k).map(|i| ((i * 7919) % v) as u32).collect();
    let idx = Tensor::from_vec(idx, (1, t, k), &dev)?;
    let tlp = Tensor::full(-5f32, (1, t, k), &dev)?;
    let resp = Tensor::from_vec((0..t as u32).collect::<Vec<_>>(), (1, t), &dev)?;
    let lp = Tensor::full(-7f32, (1, t), &dev)?;
    let mask = Tensor::ones((1, t), DType::F32, &dev)?;
    for alpha in [0.5, 1.0] {
        let t0 = Instant::now();
        let out = claas_sdpo::sdpo_loss(&claas_sdpo::LossInput {
            student_logits: logits.as_tensor(),
            teacher_logprobs: &tlp,
            teacher_indices: &idx,
            base_logprobs: &lp,
            response_mask: &mask,
            old_student_logprobs: &lp,
            response_ids: &resp,
            alpha,
            is_clip: 5.0,
            kl_reg_weight: 0.1,
        })?;
        let f = t0.elapsed().as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let g = out.loss.backward()?;
        let b = t0.elapsed().as_secs_f64() * 1e3;
        eprintln!(
            "loss alpha {alpha}: forward {f:.0} ms, backward {b:.0} ms ({} grads)",
            g.get(logits.as_tensor()).is_some()
        );
    }
    Ok(())
}
