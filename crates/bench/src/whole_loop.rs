//! The whole continual-learning loop in one process, as `claas up` runs it, with its memory:
//! load a model, serve a chat request through the engine with an r=32 adapter, run one SDPO
//! feedback step (64 prompt + 256 response tokens, r=32 on all seven projections) on the same
//! base weights, hot-swap the updated adapter into the engine and serve again with it. Prints
//! the resident set after each phase and the peak of the whole loop.
//!
//! The model is a random-weight checkpoint of Qwen3-0.6B's or Qwen3-8B's shape, generated once
//! into the cache in bf16 ([`claas_model::random_model_dir`]) and loaded through the normal
//! loader, so 16-bit weights are mapped from the file (and count in the RSS once touched).

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::DType;
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use claas_model::{LoadOptions, MatmulPrecision, Quantization, Qwen3, Qwen3Config};
use claas_sdpo::{Checkpointing, FeedbackItem, Trainer, TrainingConfig};

use crate::model::{qwen3_0_6b_config, random_adapter};
use crate::sdpo::{text_of, PROMPT_TOKENS, RESPONSE_TOKENS};
use crate::BenchError;

/// Qwen3-8B's shape (its config.json).
pub fn qwen3_8b_config() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 151936,
        hidden_size: 4096,
        intermediate_size: 12288,
        num_hidden_layers: 36,
        num_attention_heads: 32,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 1e6,
        max_position_embeddings: 40960,
        tie_word_embeddings: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        torch_dtype: Some("bfloat16".into()),
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// The model shape (layers possibly overridden).
    pub config: Qwen3Config,
    /// Shape name for the report.
    pub shape: String,
    /// Weight dtype in memory (the file is bf16; `F32` widens it at load).
    pub dtype: DType,
    /// Tokens generated per chat request (EOS ignored).
    pub decode_tokens: usize,
    pub checkpointing: Checkpointing,
    /// Weight-only quantization applied at load (`None`: `dtype`'s storage).
    pub quantization: Option<Quantization>,
    /// How activations enter products by bf16 weights (`--matmul-precision`).
    pub matmul_precision: MatmulPrecision,
    pub seed: u64,
}

impl LoopOptions {
    /// `shape` is `0.6b` or `8b`; `layers` overrides the layer count (to scale a run down).
    pub fn new(shape: &str, layers: Option<usize>, dtype: DType) -> Result<Self, BenchError> {
        let mut config = match shape {
            "0.6b" => qwen3_0_6b_config(),
            "8b" => qwen3_8b_config(),
            other => {
                return Err(BenchError::Other(format!(
                    "unknown shape {other:?} (expected 0.6b or 8b)"
                )))
            }
        };
        if let Some(l) = layers {
            config.num_hidden_layers = l.max(1);
        }
        Ok(LoopOptions {
            shape: format!("Qwen3-{}", shape.to_uppercase()),
            config,
            dtype,
            decode_tokens: 48,
            checkpointing: Checkpointing::Auto,
            quantization: None,
            matmul_precision: MatmulPrecision::Medium,
            seed: 0,
        })
    }
}

/// One phase's figures.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    /// RSS when the phase ended.
    pub rss: u64,
    /// Peak RSS of the process so far (VmHWM).
    pub peak: u64,
}

/// Decode figures of one served request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Served {
    pub tokens: usize,
    pub ttft_s: f64,
    /// Tokens after the first per second.
    pub decode_tok_s: f64,
}

/// Everything the loop measured.
#[derive(Debug, Clone)]
pub struct LoopReport {
    pub phases: Vec<Phase>,
    pub serve_before: Served,
    pub serve_after: Served,
    pub step: claas_sdpo::DistillTimings,
    pub step_s: f64,
    pub checkpointed: bool,
    pub weight_bytes: usize,
    pub peak: u64,
}

/// Peak resident set size of this process (VmHWM of `/proc/self/status`; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn serve(engine: &Engine, prompt: &[u32], opts: &LoopOptions) -> Result<Served, BenchError> {
    let start = Instant::now();
    let mut h = engine.submit(GenerateRequest {
        prompt: prompt.to_vec(),
        adapter: Some("bench".into()),
        params: SamplingParams {
            temperature: 0.0,
            max_tokens: opts.decode_tokens,
            ignore_eos: true,
            ..SamplingParams::default()
        },
        n: 1,
        prompt_logprobs: None,
    })?;
    let mut first: Option<Instant> = None;
    let mut tokens = 0usize;
    loop {
        match h.events.try_recv() {
            Ok(Event::Token { .. }) => {
                tokens += 1;
                first.get_or_insert_with(Instant::now);
            }
            Ok(Event::Finished { .. }) => break,
            Ok(Event::Error(e)) => return Err(BenchError::Other(format!("request failed: {e}"))),
            Ok(Event::PromptLogprobs(_)) => {}
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    Ok(Served {
        tokens,
        ttft_s: (first - start).as_secs_f64(),
        decode_tok_s: tokens.saturating_sub(1) as f64 / (end - first).as_secs_f64().max(1e-9),
    })
}

/// Runs the loop, printing progress, and returns its figures.
pub fn run(opts: &LoopOptions) -> Result<LoopReport, BenchError> {
    let cfg = &opts.config;
    let mut phases = Vec::new();
    let mut mark = |name: &'static str, t: Instant| {
        let p = Phase {
            name,
            seconds: t.elapsed().as_secs_f64(),
            rss: claas_engine::rss_bytes(),
            peak: peak_rss_bytes(),
        };
        println!(
            "  {name:<22} {:8.1} s   RSS {:6.2} GB   peak {:6.2} GB",
            p.seconds,
            gb(p.rss),
            gb(p.peak)
        );
        phases.push(p);
    };
    println!(
        "{} shape ({} layers, vocab {}, hidden {}), weights {}:",
        opts.shape,
        cfg.num_hidden_layers,
        cfg.vocab_size,
        cfg.hidden_size,
        weight_format(opts)
    );
    let t = Instant::now();
    let dir = claas_model::random_model_dir(cfg, DType::BF16, opts.seed)?;
    mark("random bf16 checkpoint", t);

    let t = Instant::now();
    let load = LoadOptions {
        dtype: Some(opts.dtype),
        quantization: opts.quantization,
        matmul_precision: opts.matmul_precision,
        ..LoadOptions::default()
    };
    let model = Arc::new(Qwen3::load(&dir, &load)?);
    let weight_bytes = model.weight_bytes();
    let tok = Tokenizer::from_json_str(&claas_chat::builtin::tokenizer_json())
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let tcfg = TokenizerConfig::from_json_str(&claas_chat::builtin::tokenizer_config_json())
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let template =
        ChatTemplate::from_config(&tcfg).map_err(|e| BenchError::Other(e.to_string()))?;
    let adapter = random_adapter(cfg, opts.seed + 1)?;
    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            max_num_seqs: 4,
            max_model_len: 2048.min(cfg.max_position_embeddings),
            ..EngineConfig::default()
        },
        None,
    )?;
    engine.load_adapter_from("bench", Arc::new(adapter.clone()))?;
    mark("load (mapped)", t);

    let messages = vec![serde_json::json!({
        "role": "user",
        "content": "Tell me something about the sea and the ships on it."
    })];
    let text = template
        .render(&messages, None, true, None)
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let prompt = tok
        .encode(&text, false)
        .map_err(|e| BenchError::Other(e.to_string()))?;

    let t = Instant::now();
    let serve_before = serve(&engine, &prompt, opts)?;
    mark("serve (adapter v1)", t);

    let t = Instant::now();
    let item = FeedbackItem {
        prompt: text_of(&tok, PROMPT_TOKENS, " write a function that sorts a list")?,
        response: text_of(&tok, RESPONSE_TOKENS, " def sort(xs): return sorted(xs)")?,
        feedback: "Explain the complexity too.".into(),
        ..FeedbackItem::default()
    };
    let trainer = Trainer::new(model.clone(), Arc::new(tok), Arc::new(template))
        .with_checkpointing(opts.checkpointing);
    let prepared = trainer
        .prepare(&item, TrainingConfig::default().teacher_prompt)
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let checkpointed = trainer.checkpoints(prepared.student_input_ids().len());
    let out = trainer
        .distill(
            &adapter,
            None,
            std::slice::from_ref(&item),
            &TrainingConfig::default(),
        )
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let step_s = t.elapsed().as_secs_f64();
    mark("SDPO step", t);

    let t = Instant::now();
    engine.load_adapter_from("bench", Arc::new(out.adapter))?;
    let serve_after = serve(&engine, &prompt, opts)?;
    mark("hot-swap + serve (v2)", t);
    drop(engine);

    Ok(LoopReport {
        peak: peak_rss_bytes(),
        phases,
        serve_before,
        serve_after,
        step: out.timings,
        step_s,
        checkpointed,
        weight_bytes,
    })
}

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// Prints the report's summary (the phases were printed as they ended).
pub fn print_report(opts: &LoopOptions, r: &LoopReport) {
    let t = &r.step;
    println!(
        "weights in memory: {:.2} GB ({}); threads: {}",
        r.weight_bytes as f64 / 1e9,
        weight_format(opts),
        rayon::current_num_threads()
    );
    for (name, s) in [("before", r.serve_before), ("after ", r.serve_after)] {
        println!(
            "serve {name} the step: {} tokens, TTFT {:.2} s, decode {:.2} tok/s",
            s.tokens, s.ttft_s, s.decode_tok_s
        );
    }
    println!(
        "SDPO step ({PROMPT_TOKENS} + {RESPONSE_TOKENS} tokens, r=32 on 7 modules, activation checkpointing {}): {:.1} s (teacher+base {:.1} s, student fwd {:.1} s, backward {:.1} s, optimizer {:.2} s)",
        if r.checkpointed { "on" } else { "off" },
        r.step_s,
        t.teacher_ms / 1e3,
        t.forward_ms / 1e3,
        t.backward_ms / 1e3,
        t.optimizer_ms / 1e3,
    );
    println!("peak RSS of the whole loop: {:.2} GB (VmHWM)", gb(r.peak));
}

/// The weights' storage as the report names it: the quantization, else the dtype.
fn weight_format(opts: &LoopOptions) -> String {
    match opts.quantization {
        Some(q) => q.to_string(),
        None if opts.matmul_precision == MatmulPrecision::Highest => {
            format!("{:?}, matmul precision highest", opts.dtype)
        }
        None => format!("{:?}", opts.dtype),
    }
}
