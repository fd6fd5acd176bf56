//! `claas`: one binary for the whole continual-learning stack. This crate only wires the
//! library crates together behind a command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "claas", version, about = "Continual learning as a service")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole stack in one process: serving (:8000), the feedback API (:8080) and, with
    /// TELEGRAM_BOT_TOKEN set, the Telegram gateway. Runs `init` first.
    Up(UpArgs),
    /// vLLM-compatible inference server (same flags as `vllm serve`).
    Serve(claas_serve::ServeConfig),
    /// The CLaaS feedback API with the SDPO trainer (configured by environment variables).
    Api(ApiArgs),
    /// The Telegram chat gateway (TELEGRAM_BOT_TOKEN, CLAAS_API_URL, CLAAS_API_KEY).
    Gateway,
    /// Idempotent set-up: initial adapter, `-latest` alias, OpenClaw config and plugin.
    Init,
    /// Benchmarks (figures printed as ratios against baselines measured in the same run).
    Bench {
        /// Worker threads of the compute pool (rayon and candle); default: every core.
        #[arg(long, global = true)]
        threads: Option<usize>,
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// See whether the assistant is learning: feedback loops per preference against a claas
    /// API, with log-prob margin, compliance, capability and collapse metrics and plots.
    Eval(EvalArgs),
}

#[derive(Args)]
struct EvalArgs {
    /// The claas API (chat proxy, /v1/feedback, /v1/score).
    #[arg(long, env = "CLAAS_API_URL", default_value = "http://127.0.0.1:8080")]
    api_url: String,
    /// Bearer token for the API.
    #[arg(long, env = "CLAAS_API_KEY")]
    api_key: Option<String>,
    /// Base model of the adapters (and reference of the KL metric); default: the first base
    /// model GET /v1/models lists.
    #[arg(long)]
    base_model: Option<String>,
    /// Built-in preferences to run (concise, no_emoji, identity).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "concise,no_emoji,identity"
    )]
    preferences: Vec<String>,
    /// Extra preference specs (JSON files like crates/eval/preferences/*.json); repeatable.
    #[arg(long = "preference-file")]
    preference_files: Vec<PathBuf>,
    /// Feedback steps per preference.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Samples per feedback step (one /v1/feedback per step).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Adapters are created as {prefix}/{preference}.
    #[arg(long, default_value = "eval")]
    lora_prefix: String,
    /// Results folder (default $CLAAS_EVAL_DIR/<UTC timestamp>, CLAAS_EVAL_DIR defaulting to
    /// ./data/evals as the API's /v1/eval page).
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Token budget of every generation.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Sampling temperature of the feedback samples (probes are greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f64,
    /// `training` overrides sent with every feedback, as a JSON object or @file
    /// (e.g. '{"learning_rate": 1e-4}').
    #[arg(long)]
    training_json: Option<String>,
    /// Probe prompts per measurement (default: all of the preference's).
    #[arg(long)]
    probes: Option<usize>,
    /// Top-k log-probabilities requested for the entropy metric.
    #[arg(long, default_value_t = 20)]
    top_logprobs: u32,
    /// Samples of the collapse prompt for self-ROUGE-L (fewer than 2 = skip).
    #[arg(long, default_value_t = 3)]
    collapse_samples: usize,
    /// Log lines instead of a progress bar.
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct UpArgs {
    /// Base model: `builtin:tiny` (demo), a folder, or a hub id such as Qwen/Qwen3-0.6B.
    #[arg(long, env = "MODEL", default_value = "builtin:tiny")]
    model: String,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port of the OpenAI/vLLM-compatible server.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Port of the CLaaS feedback API.
    #[arg(long, env = "CLAAS_API_PORT", default_value_t = 8080)]
    api_port: u16,
    /// Key required on the serving /v1 routes.
    #[arg(long, env = "VLLM_API_KEY", default_value = "sk-local")]
    api_key: String,
    #[arg(long, env = "MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    /// Weight dtype of the base model, as vLLM's --dtype: auto (the checkpoint's), bfloat16,
    /// float16/half, float32/float. Computation is float32 on the CPU either way.
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    dtype: DtypeArg,
    /// Weight-only quantization, as vLLM's --quantization: q8_0 (alias int8), quantized at
    /// load. Unset: none.
    #[arg(long, value_parser = parse_quantization)]
    quantization: Option<QuantArg>,
    /// How activations enter products by bf16 weights (as `claas serve --matmul-precision`):
    /// medium (bf16 in prefill-sized products, on AMX where present) or highest (float32).
    #[arg(long, default_value = "medium", value_parser = parse_precision)]
    matmul_precision: claas_model::MatmulPrecision,
}

#[derive(Args)]
struct ApiArgs {
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Weight dtype of the base model the trainer loads (as `claas up --dtype`).
    #[arg(long, default_value = "auto", value_parser = parse_dtype)]
    dtype: DtypeArg,
    /// Weight-only quantization of the trainer's frozen base (as `claas up --quantization`).
    #[arg(long, value_parser = parse_quantization)]
    quantization: Option<QuantArg>,
    /// How activations enter the trainer's products by bf16 weights (as `claas up`).
    #[arg(long, default_value = "medium", value_parser = parse_precision)]
    matmul_precision: claas_model::MatmulPrecision,
}

/// clap parser of `--matmul-precision`.
fn parse_precision(s: &str) -> Result<claas_model::MatmulPrecision, String> {
    claas_model::parse_matmul_precision(s).map_err(|e| e.to_string())
}

/// A parsed `--quantization` (`none` is `None`).
#[derive(Clone, Copy, Debug)]
struct QuantArg(Option<claas_model::Quantization>);

/// clap parser of `--quantization`.
fn parse_quantization(s: &str) -> Result<QuantArg, String> {
    claas_model::parse_quantization(s)
        .map(QuantArg)
        .map_err(|e| e.to_string())
}

/// A parsed `--dtype`: `None` is `auto`. A newtype because clap reads a bare `Option` field as
/// an optional flag whose parser yields the inner type.
#[derive(Clone, Copy, Debug)]
struct DtypeArg(Option<claas_model::DType>);

/// clap parser of `--dtype` (vLLM's spellings).
fn parse_dtype(s: &str) -> Result<DtypeArg, String> {
    claas_model::parse_dtype(s)
        .map(DtypeArg)
        .map_err(|e| e.to_string())
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Prefill/decode tokens/s of the model core on a Qwen3-0.6B-shaped random model.
    Model {
        /// JSON output of shared/bench/torch_anchor.py run on this machine, for ratios.
        #[arg(long)]
        torch_json: Option<PathBuf>,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// Serving throughput at 1/8/32 streams, base vs spread over 8 adapters, and sleep memory.
    Serve {
        /// Output tokens per stream.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// Time to first token of short requests while a long prompt prefills, on the built-in model.
    Fairness {
        /// Prompt tokens of the long request.
        #[arg(long, default_value_t = 16384)]
        long_len: usize,
        /// Per-step token budget (0 = the engine default).
        #[arg(long, default_value_t = 0)]
        max_num_batched_tokens: usize,
    },
    /// Batch decode throughput under a JSON schema vs unconstrained, on a Qwen3-0.6B-shaped
    /// random model with a real tokenizer's vocabulary.
    Constrain {
        /// tokenizer.json whose vocabulary the masks cover (Qwen3's, ~151k tokens).
        #[arg(long)]
        tokenizer: PathBuf,
        /// Concurrent streams.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Output tokens per stream.
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
        /// Alternating unconstrained / constrained rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// Time to first token of each turn of a growing chat, with and without the prefix cache.
    Prefix {
        /// Turns of the chat.
        #[arg(long, default_value_t = 10)]
        turns: usize,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
    },
    /// The whole loop in one process (serve a chat request, one SDPO feedback step on 64 + 256
    /// tokens, hot-swap the adapter, serve again) on a random-weight model generated into the
    /// cache; prints the RSS after each phase and the peak.
    Loop {
        /// Model shape: 0.6b or 8b (Qwen3-0.6B / Qwen3-8B).
        #[arg(long, default_value = "0.6b")]
        shape: String,
        /// Override the layer count (to scale a run down and extrapolate).
        #[arg(long)]
        layers: Option<usize>,
        /// Weight dtype in memory: bfloat16 (mapped from the bf16 file), float16 or float32.
        #[arg(long, default_value = "bfloat16", value_parser = parse_dtype)]
        dtype: DtypeArg,
        /// Tokens generated per chat request.
        #[arg(long, default_value_t = 48)]
        decode_tokens: usize,
        /// Activation checkpointing of the step's student forward: auto, always or never.
        #[arg(long, default_value = "auto")]
        checkpointing: String,
        /// Weight-only quantization of the base (as `claas serve --quantization`): q8_0.
        #[arg(long, value_parser = parse_quantization)]
        quantization: Option<QuantArg>,
        /// How activations enter products by bf16 weights (as `claas serve`).
        #[arg(long, default_value = "medium", value_parser = parse_precision)]
        matmul_precision: claas_model::MatmulPrecision,
    },
    /// One SDPO step (teacher, forward, backward, optimizer, save) on a Qwen3-0.6B-shaped model.
    Sdpo {
        /// JSON output of shared/bench/torch_anchor.py run on this machine, for ratios.
        #[arg(long)]
        torch_json: Option<PathBuf>,
        /// 4 layers instead of 28 (smoke run).
        #[arg(long)]
        quick: bool,
        /// Run only this configuration: `f32`, `bf16` (medium precision) or `bf16-highest`
        /// (default: all three, for the same-run ratios between them).
        #[arg(long, value_parser = ["f32", "bf16", "bf16-highest"])]
        only: Option<String>,
    },
}

/// Where adapters and logs live when the environment does not say: the user's data folder.
fn data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAAS_HOME") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("claas")
}

fn env_path(name: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(default)
}

fn lora_root() -> PathBuf {
    env_path("CLAAS_LORA_ROOT", data_dir().join("loras"))
}

fn feedback_log_dir() -> PathBuf {
    env_path("FEEDBACK_LOG_DIR", data_dir().join("feedback-logs"))
}

fn lora_name() -> String {
    std::env::var("LORA_NAME")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "openclaw/assistant".to_string())
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// glibc hands large freed blocks straight back to the OS (mmap/munmap, heap trimming), so each
/// training step page-faults every activation and gradient in again: about a third of the SDPO
/// backward on the 0.6B shape (docs/BENCHMARKS.md). Keep blocks up to 32 MiB (glibc's largest
/// mmap threshold; vocab-wide logits stay mmapped) in the heap instead; sleep level 2 returns
/// them explicitly (`claas_engine::release_freed_memory`).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Sizes the compute pools: rayon's global pool (the kernels) and candle's matmuls, which read
/// `RAYON_NUM_THREADS`. Called before any other thread exists.
fn set_compute_threads(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "--threads must be at least 1");
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("building the compute thread pool")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Bench {
        threads: Some(n), ..
    } = &cli.command
    {
        set_compute_threads(*n)?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Up(a) => rt.block_on(up(a)),
        Command::Serve(cfg) => rt.block_on(async {
            claas_serve::serve(cfg, ctrl_c()).await?;
            Ok(())
        }),
        Command::Api(a) => rt.block_on(api(a)),
        Command::Gateway => rt.block_on(async {
            let cfg = claas_gateway::GatewayConfig::from_env()?;
            claas_gateway::run(cfg, ctrl_c()).await?;
            Ok(())
        }),
        Command::Init => init(),
        Command::Eval(a) => rt.block_on(eval(a)),
        Command::Bench { what, .. } => {
            let anchor = |p: Option<PathBuf>| {
                p.map(|p| claas_bench::read_torch_anchor(&p))
                    .transpose()
                    .context("reading the torch anchor JSON")
            };
            match what {
                BenchWhat::Model { torch_json, quick } => {
                    claas_bench::model::run(anchor(torch_json)?.as_ref(), quick)?
                }
                BenchWhat::Serve { max_tokens, quick } => {
                    let opts = claas_bench::serve::BenchOptions {
                        max_tokens,
                        layers: quick.then_some(4),
                        ..Default::default()
                    };
                    let report = claas_bench::serve::run_bench(&opts)?;
                    claas_bench::serve::print_report(&report);
                    for line in claas_bench::serve::sleep_memory_report(opts.layers)? {
                        println!("{line}");
                    }
                }
                BenchWhat::Fairness {
                    long_len,
                    max_num_batched_tokens,
                } => {
                    let opts = claas_bench::fairness::FairnessOptions {
                        long_len,
                        max_num_batched_tokens,
                        ..Default::default()
                    };
                    claas_bench::fairness::print_report(&claas_bench::fairness::run(&opts)?);
                }
                BenchWhat::Constrain {
                    tokenizer,
                    concurrency,
                    max_tokens,
                    rounds,
                    quick,
                } => {
                    let opts = claas_bench::constrain::ConstrainOptions {
                        tokenizer,
                        concurrency,
                        max_tokens,
                        prompt_len: 32,
                        layers: quick.then_some(4),
                        rounds,
                    };
                    claas_bench::constrain::print_report(&claas_bench::constrain::run(&opts)?);
                }
                BenchWhat::Prefix { turns, quick } => {
                    let opts = claas_bench::prefix::PrefixOptions {
                        turns,
                        layers: quick.then_some(4),
                        ..Default::default()
                    };
                    let rows = claas_bench::prefix::run(&opts)?;
                    claas_bench::prefix::print_report(&opts, &rows);
                }
                BenchWhat::Loop {
                    shape,
                    layers,
                    dtype,
                    decode_tokens,
                    checkpointing,
                    quantization,
                    matmul_precision,
                } => {
                    let mut opts = claas_bench::whole_loop::LoopOptions::new(
                        &shape,
                        layers,
                        dtype.0.unwrap_or(claas_model::DType::BF16),
                    )?;
                    opts.decode_tokens = decode_tokens;
                    opts.checkpointing = match checkpointing.as_str() {
                        "auto" => claas_sdpo::Checkpointing::Auto,
                        "always" => claas_sdpo::Checkpointing::Always,
                        "never" => claas_sdpo::Checkpointing::Never,
                        other => anyhow::bail!(
                            "--checkpointing {other:?}: expected auto, always or never"
                        ),
                    };
                    opts.quantization = quantization.and_then(|q| q.0);
                    opts.matmul_precision = matmul_precision;
                    let report = claas_bench::whole_loop::run(&opts)?;
                    claas_bench::whole_loop::print_report(&opts, &report);
                }
                BenchWhat::Sdpo {
                    torch_json,
                    quick,
                    only,
                } => claas_bench::sdpo::run(anchor(torch_json)?.as_ref(), quick, only.as_deref())?,
            }
            Ok(())
        }
    }
}

async fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let mut prefs = Vec::new();
    for name in a
        .preferences
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        prefs.push(claas_eval::preferences::builtin(name)?);
    }
    for path in &a.preference_files {
        prefs.push(claas_eval::preferences::from_file(path)?);
    }
    let training = match a.training_json.as_deref() {
        None => None,
        Some(t) => {
            let text = match t.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading --training-json file {path}"))?,
                None => t.to_string(),
            };
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .context("--training-json is not JSON")?,
            )
        }
    };
    let output_dir = a.output_dir.unwrap_or_else(|| {
        claas_eval::output::default_output_dir(&env_path(
            "CLAAS_EVAL_DIR",
            PathBuf::from("data/evals"),
        ))
    });
    let mut cfg = claas_eval::EvalConfig::new(&a.api_url, prefs, output_dir.clone());
    cfg.api_key = a.api_key;
    cfg.base_model = a.base_model;
    cfg.steps = a.steps;
    cfg.batch = a.batch;
    cfg.lora_prefix = a.lora_prefix;
    cfg.max_tokens = a.max_tokens;
    cfg.seed = a.seed;
    cfg.temperature = a.temperature;
    cfg.training = training;
    cfg.probes = a.probes;
    cfg.top_logprobs = a.top_logprobs;
    cfg.collapse_samples = a.collapse_samples;
    cfg.progress = !a.no_progress;
    let summary = claas_eval::run(&cfg).await?;
    for (name, p) in &summary.preferences {
        let get = |side: &str, k: &str| {
            p[side][k]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.3}"))
        };
        println!(
            "{name}: margin {} -> {}, compliance {} -> {}, capability {} -> {}, KL {}",
            get("baseline", "logprob_margin"),
            get("final", "logprob_margin"),
            get("baseline", "compliance"),
            get("final", "compliance"),
            get("baseline", "capability_logprob"),
            get("final", "capability_logprob"),
            get("final", "kl_to_base"),
        );
    }
    println!("results: {}", output_dir.display());
    Ok(())
}

/// The API settings of `claas up`: `/v1/lora/init` accepts only the model this process serves
/// unless `CLAAS_ALLOWED_INIT_BASE_MODELS` says otherwise (the API's own default, Qwen3-8B, would
/// be a model `up` never loaded).
fn up_api_config(model: &str) -> anyhow::Result<claas_api::ApiConfig> {
    let mut api = claas_api::ApiConfig::from_env()?;
    let explicit = std::env::var("CLAAS_ALLOWED_INIT_BASE_MODELS")
        .map(|v| !v.trim().is_empty())
        .unwrap_or(false);
    if !explicit {
        api.allowed_init_base_models = vec![model.to_string()];
    }
    Ok(api)
}

fn openclaw_settings(
    api_url: &str,
    serve_url: &str,
) -> anyhow::Result<claas_gateway::openclaw::OpenClawSettings> {
    let defaults = [("VLLM_BASE_URL", serve_url), ("CLAAS_API_URL", api_url)];
    let lookup = |k: &str| {
        std::env::var(k).ok().or_else(|| {
            defaults
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    };
    Ok(claas_gateway::openclaw::OpenClawSettings::from_lookup(
        lookup,
    )?)
}

fn init() -> anyhow::Result<()> {
    let settings = claas_stack::InitSettings {
        lora_root: lora_root(),
        lora_name: lora_name(),
        model: std::env::var("MODEL").unwrap_or_else(|_| "builtin:tiny".into()),
        lora_r: 32,
        lora_alpha: 64,
        openclaw: Some(openclaw_settings(
            "http://localhost:8080",
            "http://localhost:8000/v1",
        )?),
    };
    let summary = claas_stack::run_init(&settings)?;
    for line in summary.lines() {
        println!("{line}");
    }
    if !summary.changed() {
        println!("(second run: nothing to do)");
    }
    Ok(())
}

async fn up(a: UpArgs) -> anyhow::Result<()> {
    let host_for_urls = if a.host == "0.0.0.0" {
        "localhost"
    } else {
        a.host.as_str()
    };
    let serve_url = format!("http://{host_for_urls}:{}/v1", a.port);
    let api_url = format!("http://{host_for_urls}:{}", a.api_port);
    // Only touch OpenClaw's config when the user has OpenClaw (or points us at a home for it).
    let has_openclaw = std::env::var_os("OPENCLAW_HOME").is_some()
        || std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".openclaw").is_dir())
            .unwrap_or(false);
    let openclaw = if has_openclaw {
        Some(openclaw_settings(&api_url, &serve_url)?)
    } else {
        None
    };
    let telegram = match std::env::var("TELEGRAM_BOT_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Some(claas_gateway::GatewayConfig::from_env()?),
        _ => None,
    };
    let gateway_on = telegram.is_some();
    let cfg = claas_stack::UpConfig {
        model: a.model.clone(),
        host: a.host.clone(),
        serve_port: a.port,
        api_port: a.api_port,
        api_key: Some(a.api_key.clone()).filter(|k| !k.is_empty()),
        lora_root: lora_root(),
        feedback_log_dir: feedback_log_dir(),
        lora_name: lora_name(),
        max_model_len: a.max_model_len,
        dtype: a.dtype.0,
        quantization: a.quantization.and_then(|q| q.0),
        matmul_precision: a.matmul_precision,
        telegram,
        openclaw,
        api: up_api_config(&a.model)?,
    };
    let key = a.api_key.clone();
    // With CLAAS_API_KEY set, the feedback API wants it too.
    let api_auth = cfg
        .api
        .api_key
        .as_ref()
        .map(|k| format!(" -H 'Authorization: Bearer {k}'"))
        .unwrap_or_default();
    let lora_served = format!("{}-latest", lora_name()).replace('/', "-");
    claas_stack::up(cfg, ctrl_c(), move |addrs| {
        println!();
        println!("claas is up (model {})", a.model);
        println!("  OpenAI/vLLM-compatible server  http://{}/v1   (key {key})", addrs.serve);
        println!("  CLaaS feedback API             http://{}      (docs at /docs)", addrs.api);
        println!(
            "  Telegram gateway               {}",
            if gateway_on { "on" } else { "off (set TELEGRAM_BOT_TOKEN)" }
        );
        println!();
        println!("Try:");
        println!(
            "  curl http://{}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{{\"model\": \"{lora_served}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}], \"max_tokens\": 32}}'",
            addrs.serve
        );
        println!(
            "  curl -X POST http://{}/v1/feedback{api_auth} -H 'Content-Type: application/json' \\\n    -d '{{\"lora_id\": \"{}-latest\", \"prompt\": \"hi\", \"response\": \"hello\", \"feedback\": \"good\", \"training\": {{\"teacher_mode\": \"self\"}}}}'",
            addrs.api,
            lora_name()
        );
        println!("Ctrl-C stops everything.");
    })
    .await?;
    Ok(())
}

async fn api(a: ApiArgs) -> anyhow::Result<()> {
    let mut cfg = claas_api::ApiConfig::from_env()?;
    cfg.lora_root = lora_root();
    cfg.feedback_log_dir = feedback_log_dir();
    let state = claas_api::ApiState::from_config(cfg.clone())?;
    // The API answers at once; the trainer is installed when the base model has loaded.
    let st = state.clone();
    let spec = cfg.base_model_id.clone();
    let opts = claas_model::LoadOptions {
        dtype: a.dtype.0,
        quantization: a.quantization.and_then(|q| q.0),
        matmul_precision: a.matmul_precision,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || match load_trainer(&spec, &opts) {
        Ok(engine) => {
            st.set_engine(engine);
            tracing::info!("SDPO trainer ready on {spec}");
        }
        Err(e) => {
            tracing::error!("cannot load base model {spec} for training: {e:#}");
            // Feedback then answers 503 naming the cause, and /v1/health shows it.
            st.set_engine_error(format!("cannot load base model {spec}: {e:#}"));
        }
    });
    let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port)).await?;
    tracing::info!("claas api on http://{}", listener.local_addr()?);
    claas_api::auth::warn_if_open(listener.local_addr()?, &cfg);
    claas_listen::serve(
        listener,
        claas_api::router(state),
        claas_listen::Limits::default(),
        ctrl_c(),
    )
    .await?;
    Ok(())
}

fn load_trainer(
    spec: &str,
    opts: &claas_model::LoadOptions,
) -> anyhow::Result<Arc<claas_api::SdpoEngine>> {
    Ok(Arc::new(claas_api::SdpoEngine::load_with(spec, opts)?))
}
