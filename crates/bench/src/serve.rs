//! Throughput benchmark (not a test): a Qwen3-0.6B-shaped model with random weights, built in
//! memory, decoding 1/8/32 concurrent streams all on the base model vs spread over 8 LoRA
//! adapters (rank 32 on all 7 projections), as `claas bench serve` prints it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claas_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams};
use claas_model::{Device, LoraAdapter, LoraInit, ALL_MODULES};
use rand::{Rng, SeedableRng};

use crate::model::{qwen3_0_6b_config, random_model};
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Concurrent streams per run.
    pub concurrency: Vec<usize>,
    /// Adapters the multi-adapter runs spread requests over.
    pub adapters: usize,
    pub lora_rank: usize,
    /// Prompt tokens per request (random ids).
    pub prompt_len: usize,
    /// Output tokens per request (EOS ignored).
    pub max_tokens: usize,
    /// Override the number of layers (28 in Qwen3-0.6B) for a quicker, smaller run.
    pub layers: Option<usize>,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            concurrency: vec![1, 8, 32],
            adapters: 8,
            lora_rank: 32,
            prompt_len: 32,
            max_tokens: 32,
            layers: None,
            seed: 0,
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub concurrency: usize,
    /// "base" or "multi-lora".
    pub mode: &'static str,
    pub output_tokens: usize,
    pub seconds: f64,
    /// Output tokens per second over the whole run.
    pub tokens_per_sec: f64,
    /// Mean time to first token.
    pub mean_ttft: f64,
    pub max_ttft: f64,
}

/// All runs plus the multi-adapter/base throughput ratio per concurrency.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub rows: Vec<BenchRow>,
    pub ratios: Vec<(usize, f64)>,
    pub model_bytes: usize,
}

fn run_once(
    engine: &Engine,
    opts: &BenchOptions,
    concurrency: usize,
    multi: bool,
    rng: &mut rand::rngs::StdRng,
) -> Result<BenchRow, BenchError> {
    let vocab = engine.model_config().vocab_size as u32;
    let start = Instant::now();
    let mut handles = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let prompt: Vec<u32> = (0..opts.prompt_len)
            .map(|_| rng.gen_range(0..vocab))
            .collect();
        let h = engine.submit(GenerateRequest {
            prompt,
            adapter: multi.then(|| format!("bench-{}", i % opts.adapters.max(1))),
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: opts.max_tokens,
                ignore_eos: true,
                ..SamplingParams::default()
            },
            n: 1,
            prompt_logprobs: None,
        })?;
        handles.push(h);
    }
    let mut ttft: Vec<Option<f64>> = vec![None; concurrency];
    let mut done = vec![false; concurrency];
    let mut tokens = 0usize;
    while done.iter().any(|d| !d) {
        let mut progressed = false;
        for (i, h) in handles.iter_mut().enumerate() {
            while let Ok(ev) = h.events.try_recv() {
                progressed = true;
                match ev {
                    Event::Token { .. } => {
                        tokens += 1;
                        if ttft[i].is_none() {
                            ttft[i] = Some(start.elapsed().as_secs_f64());
                        }
                    }
                    Event::Finished { .. } => done[i] = true,
                    Event::Error(e) => {
                        return Err(BenchError::Other(format!("bench request failed: {e}")))
                    }
                    Event::PromptLogprobs(_) => {}
                }
            }
        }
        if !progressed {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let t: Vec<f64> = ttft.into_iter().flatten().collect();
    Ok(BenchRow {
        concurrency,
        mode: if multi { "multi-lora" } else { "base" },
        output_tokens: tokens,
        seconds,
        tokens_per_sec: tokens as f64 / seconds,
        mean_ttft: t.iter().sum::<f64>() / t.len().max(1) as f64,
        max_ttft: t.iter().cloned().fold(0.0, f64::max),
    })
}

/// Builds the random model and adapters, then measures each concurrency with all requests on
/// the base model and spread round-robin over the adapters.
pub fn run_bench(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let mut cfg = qwen3_0_6b_config();
    if let Some(l) = opts.layers {
        cfg.num_hidden_layers = l.max(1);
    }
    let model = Arc::new(random_model(&cfg)?);
    let model_bytes = model.weight_bytes();
    let max_c = opts.concurrency.iter().copied().max().unwrap_or(1);
    let engine = Engine::start(
        model,
        EngineConfig {
            max_num_seqs: max_c.max(1),
            max_queue: max_c.max(1) * 2,
            max_model_len: (opts.prompt_len + opts.max_tokens + 1).min(cfg.max_position_embeddings),
            seed: opts.seed,
            ..EngineConfig::default()
        },
        None,
    )?;
    let init = LoraInit {
        r: opts.lora_rank,
        lora_alpha: 2.0 * opts.lora_rank as f64,
        target_modules: ALL_MODULES.iter().map(|m| m.name().to_string()).collect(),
        use_rslora: false,
        base_model_name_or_path: None,
    };
    for i in 0..opts.adapters.max(1) {
        let a = LoraAdapter::init(&init, &cfg, opts.seed + i as u64 + 1, &Device::Cpu)?;
        engine.load_adapter_from(&format!("bench-{i}"), Arc::new(a))?;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    // Warm-up: first-touch allocations and thread pools.
    let warm = BenchOptions {
        max_tokens: 2,
        ..opts.clone()
    };
    run_once(&engine, &warm, 2, true, &mut rng)?;
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for &c in &opts.concurrency {
        let base = run_once(&engine, opts, c, false, &mut rng)?;
        let multi = run_once(&engine, opts, c, true, &mut rng)?;
        ratios.push((c, multi.tokens_per_sec / base.tokens_per_sec));
        rows.push(base);
        rows.push(multi);
    }
    Ok(BenchReport {
        rows,
        ratios,
        model_bytes,
    })
}

/// Resident memory around sleep levels 1 and 2 on the random 0.6B-shaped model (level 2 drops
/// the weights and rebuilds them through the loader on wake). Returns printable lines.
pub fn sleep_memory_report(layers: Option<usize>) -> Result<Vec<String>, BenchError> {
    let mut cfg = qwen3_0_6b_config();
    if let Some(l) = layers {
        cfg.num_hidden_layers = l.max(1);
    }
    let c2 = cfg.clone();
    let loader: claas_engine::ModelLoader = Box::new(move || {
        random_model(&c2).map_err(|e| claas_model::ModelError::Config(e.to_string()))
    });
    let engine = Engine::start(
        Arc::new(random_model(&cfg)?),
        EngineConfig::default(),
        Some(loader),
    )?;
    let mb = |b: u64| b as f64 / 1048576.0;
    let mut out = Vec::new();
    for level in [1u8, 2] {
        let s = engine.sleep(level)?;
        out.push(format!(
            "sleep level {level}: RSS {:.0} MiB -> {:.0} MiB",
            mb(s.rss_before),
            mb(s.rss_after)
        ));
        let w = engine.wake_up()?;
        out.push(format!(
            "wake from level {level}: RSS {:.0} MiB -> {:.0} MiB",
            mb(w.rss_before),
            mb(w.rss_after)
        ));
    }
    Ok(out)
}

/// Prints the report as a table plus the multi-adapter/base ratios.
pub fn print_report(r: &BenchReport) {
    println!(
        "model: Qwen3-0.6B-shaped random weights, {:.2} GB f32",
        r.model_bytes as f64 / 1e9
    );
    println!(
        "{:>5}  {:<10}  {:>7}  {:>8}  {:>9}  {:>10}  {:>9}",
        "conc", "mode", "tokens", "secs", "tok/s", "mean TTFT", "max TTFT"
    );
    for row in &r.rows {
        println!(
            "{:>5}  {:<10}  {:>7}  {:>8.2}  {:>9.2}  {:>9.3}s  {:>8.3}s",
            row.concurrency,
            row.mode,
            row.output_tokens,
            row.seconds,
            row.tokens_per_sec,
            row.mean_ttft,
            row.max_ttft
        );
    }
    for (c, ratio) in &r.ratios {
        println!("concurrency {c:>2}: multi-adapter / base throughput = {ratio:.3}");
    }
}
