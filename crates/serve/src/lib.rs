//! claas-serve: a vLLM-compatible OpenAI HTTP server over [`claas_engine`].
//!
//! Wiring: parse [`ServeConfig`] (clap `Args`, flatten it into the binary's subcommand), then
//! [`serve`]; or build an [`AppState`] around an existing [`claas_engine::Engine`] (in-process,
//! e.g. `claas up`) and mount [`router`].
//!
//! A request flows one way: `routes` (thin handlers) -> `protocol` (serde types) -> `validate`
//! (one `ValidRequest` or one `ValidationError`) -> engine -> `stream` / `render` (wire format).
//! `resolve` loads adapters named by requests from the LoRA root; `metrics` is `/metrics`;
//! `responses` is the Responses API, converted to the chat path at its `validate`.

mod error;
mod metrics;
mod protocol;
mod render;
mod resolve;
mod responses;
mod routes;
mod stream;
mod text;
mod validate;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use claas_chat::{ChatTemplate, GenerationConfig, Tokenizer, TokenizerConfig};
use claas_engine::{Engine, EngineConfig};
use claas_model::{LoadOptions, Qwen3};

pub use error::ApiError;
pub use routes::router;
pub use validate::ValidationError;

/// Default `--max-request-bytes`: far above any prompt a context window holds, far below
/// what would hurt to buffer.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 << 20;

/// `claas serve` flags, named as in `vllm serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Model folder, hub id (`Qwen/Qwen3-0.6B`) or `builtin:tiny`.
    #[arg(long, default_value = "builtin:tiny")]
    pub model: String,
    /// The model as `vllm serve MODEL` takes it (positional); overrides `--model`.
    #[arg(value_name = "MODEL")]
    pub model_tag: Option<String>,
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Required as `Authorization: Bearer KEY` on every /v1 route and on /sleep, /wake_up,
    /// /pause and /resume (read-only routes such as /health and /metrics stay open).
    #[arg(long, env = "VLLM_API_KEY")]
    pub api_key: Option<String>,
    /// Names the base model is served under (first one is used in responses).
    #[arg(long, num_args = 1..)]
    pub served_model_name: Vec<String>,
    /// Context length (default: the model's max_position_embeddings).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Weight dtype, as vLLM's: auto (the checkpoint's), bfloat16, float16/half, float32/float.
    /// On the CPU 16-bit weights stay 16-bit in memory and everything is computed in float32.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Weight-only quantization, as vLLM's --quantization: q8_0 (alias int8: 8-bit weights with
    /// a scale per 32, quantized at load from the checkpoint). Unset: none. vLLM's GPU methods
    /// (awq, gptq, fp8, ...) are not supported.
    #[arg(long)]
    pub quantization: Option<String>,
    /// How activations enter products by bf16 weights, named as PyTorch's float32 matmul
    /// precision: medium rounds them to bf16 in prefill-sized products, which then run on AMX
    /// tiles where the CPU has them (as PyTorch, oneDNN and llama.cpp compute bf16 models);
    /// highest keeps them float32 everywhere.
    #[arg(long, default_value = "medium")]
    pub matmul_precision: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub enable_lora: bool,
    /// Distinct adapters in one batch at most; requests on further adapters wait their turn
    /// (as in vLLM: while requests on admitted adapters keep coming, a waiting one can wait
    /// long). An adapter replaced at runtime counts twice until its old version's requests
    /// finish. Unset: no limit (vLLM's default of 1 exists for GPU memory; on CPU every
    /// resident adapter can share a batch at no memory cost).
    #[arg(long)]
    pub max_loras: Option<usize>,
    #[arg(long)]
    pub max_lora_rank: Option<usize>,
    /// `name=path` or JSON `{"name": ..., "path": ...}`; repeatable.
    #[arg(long, num_args = 1..)]
    pub lora_modules: Vec<String>,
    #[arg(long)]
    pub enable_sleep_mode: bool,
    /// Most log-probabilities a request may ask for per token (`logprobs`, `top_logprobs`,
    /// `prompt_logprobs`), as vLLM's `--max-logprobs`. A server scoring as a remote SDPO
    /// teacher needs the request's `teacher_top_k` (up to 100).
    #[arg(long, default_value_t = 20)]
    pub max_logprobs: usize,
    /// CLaaS `.aliases.json` (alias -> adapter path relative to the LoRA root); each alias is
    /// served under its name with runs of characters outside `[a-zA-Z0-9._-]` replaced by `-`.
    #[arg(long)]
    pub lora_alias_file: Option<PathBuf>,
    /// Runtime adapter loads must lie under this folder (403 otherwise). A request naming a
    /// model that is not loaded is looked up here (store id, alias or their served form,
    /// optionally `@v{N}`) and loaded on first use, like vLLM's filesystem LoRA resolver.
    #[arg(long, env = "CLAAS_LORA_ROOT")]
    pub lora_root: Option<PathBuf>,
    /// Sequences decoded together at most.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Tokens computed per engine step, shared so that decodes and short prefills progress
    /// while a long prompt is chunked (vLLM's chunked-prefill budget; default
    /// max(512, --max-num-seqs)). Smaller values cut the wait behind a long prompt, larger ones
    /// prefill faster.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// Largest request body accepted (413 beyond it, checked before the body is read).
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// Accepted for `vllm serve` compatibility; no-op on CPU (no GPU memory to reserve).
    #[arg(long)]
    pub gpu_memory_utilization: Option<f32>,
    /// Accepted for `vllm serve` compatibility; no-op: tool calls in Qwen3's `<tool_call>`
    /// format are always parsed when a request sends `tools`.
    #[arg(long)]
    pub enable_auto_tool_choice: bool,
    /// Accepted for `vllm serve` compatibility (`hermes`, `qwen3_xml`, ...); no-op: the Qwen3
    /// `<tool_call>` parser is the one used.
    #[arg(long)]
    pub tool_call_parser: Option<String>,
    /// `qwen3`: chat replies carry the text of a `<think>...</think>` block in
    /// `reasoning_content` (streamed as `delta.reasoning_content`) and the rest in `content`,
    /// as vLLM's parser. Without it the thinking text stays in `content`.
    #[arg(long)]
    pub reasoning_parser: Option<String>,
    /// Reuse the keys and values of earlier prompts that share a prefix with a new one, per
    /// adapter version (on by default, as in vLLM; of the two flags the last one given wins).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,
    /// Turn the prefix cache off: every prompt is computed from scratch.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,
    /// Bytes of keys and values the prefix cache keeps, least recently used evicted first
    /// (default 2 GiB; `k`/`m`/`g` are powers of 1000, `K`/`M`/`G` of 1024, as vLLM's
    /// human-readable sizes). Running requests' own caches come on top.
    #[arg(long, value_parser = parse_byte_size)]
    pub kv_cache_memory_bytes: Option<usize>,
    /// Keep finished `/v1/responses` results (`store`, default true in requests) for
    /// `GET /v1/responses/{id}` and `previous_response_id`. Off by default, as vLLM's
    /// `VLLM_ENABLE_RESPONSES_API_STORE`: then nothing is kept. Bounded by
    /// `--responses-store-max-entries`, `--responses-store-ttl` and 256 MiB.
    #[arg(long, env = "VLLM_ENABLE_RESPONSES_API_STORE",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub enable_responses_store: bool,
    /// Most stored responses; the oldest go first.
    #[arg(long, default_value_t = 1000)]
    pub responses_store_max_entries: usize,
    /// Seconds a stored response is kept.
    #[arg(long, default_value_t = 3600)]
    pub responses_store_ttl: u64,
}

/// A byte count, plain or with a `k`/`m`/`g` (×1000ⁿ) or `K`/`M`/`G` (×1024ⁿ) suffix.
pub fn parse_byte_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult): (&str, usize) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c {
                'k' => 1_000,
                'm' => 1_000_000,
                'g' => 1_000_000_000,
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown size suffix {c:?} in {s:?}")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 2147483648 or 2G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model: "builtin:tiny".into(),
            model_tag: None,
            host: "0.0.0.0".into(),
            port: 8000,
            api_key: None,
            served_model_name: Vec::new(),
            max_model_len: None,
            dtype: "auto".into(),
            quantization: None,
            matmul_precision: "medium".into(),
            seed: 0,
            enable_lora: false,
            max_loras: None,
            max_lora_rank: None,
            lora_modules: Vec::new(),
            enable_sleep_mode: false,
            max_logprobs: 20,
            lora_alias_file: None,
            lora_root: None,
            max_num_seqs: 64,
            max_num_batched_tokens: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            gpu_memory_utilization: None,
            enable_auto_tool_choice: false,
            tool_call_parser: None,
            reasoning_parser: None,
            enable_prefix_caching: false,
            no_enable_prefix_caching: false,
            kv_cache_memory_bytes: None,
            enable_responses_store: false,
            responses_store_max_entries: 1000,
            responses_store_ttl: 3600,
        }
    }
}

impl ServeConfig {
    /// The positional model, if given, in `--model`.
    fn normalized(&self) -> ServeConfig {
        let mut c = self.clone();
        if let Some(m) = c.model_tag.take() {
            c.model = m;
        }
        c
    }

    /// Logs the `vllm serve` flags that mean nothing on CPU, so nobody wonders.
    fn log_noop_flags(&self) {
        if let Some(u) = self.gpu_memory_utilization {
            tracing::info!(
                "--gpu-memory-utilization {u}: no GPU memory to reserve on CPU; ignored"
            );
        }
        if self.enable_auto_tool_choice {
            tracing::info!("--enable-auto-tool-choice: tool calls are always parsed when a request sends tools");
        }
        if let Some(p) = &self.tool_call_parser {
            tracing::info!("--tool-call-parser {p}: the Qwen3 <tool_call> parser is used");
        }
    }
}

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Model(#[from] claas_model::ModelError),
    #[error(transparent)]
    Chat(#[from] claas_chat::ChatError),
    #[error(transparent)]
    Engine(#[from] claas_engine::EngineError),
    #[error("{0}")]
    Config(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Sampling defaults from generation_config.json (vLLM's `default_sampling_params`).
#[derive(Debug, Clone, Default)]
pub struct GenDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
}

impl GenDefaults {
    /// Takes the sampling fields vLLM reads from a generation config.
    pub fn from_generation_config(g: &GenerationConfig) -> Self {
        GenDefaults {
            temperature: g.temperature.map(|x| x as f32),
            top_p: g.top_p.map(|x| x as f32),
            top_k: g.top_k,
            min_p: g.min_p.map(|x| x as f32),
            repetition_penalty: g.repetition_penalty.map(|x| x as f32),
            max_new_tokens: g.max_new_tokens.map(|x| x as usize),
        }
    }
}

/// Everything the HTTP handlers share.
pub struct AppState {
    pub engine: Engine,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub defaults: GenDefaults,
    /// Stop ids: generation_config eos ids, model eos ids and the tokenizer's eos token.
    pub eos_token_ids: Vec<u32>,
    /// Base model names; the first is the primary one.
    pub served_names: Vec<String>,
    /// `root` of the base model in /v1/models.
    pub model_root: String,
    pub api_key: Option<String>,
    pub lora_root: Option<PathBuf>,
    pub enable_sleep_mode: bool,
    /// `--max-logprobs`.
    pub max_logprobs: usize,
    pub created: i64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// Prompt text longer than this cannot fit the context whatever its tokenization (the
    /// context times the longest token's bytes, with room for Unicode normalization), so it
    /// is refused before tokenizing.
    pub max_prompt_bytes: usize,
    /// Loads adapters named by requests from `lora_root`.
    resolver: Option<resolve::Resolver>,
    /// `--reasoning-parser qwen3` is on.
    pub reasoning_parser: bool,
    /// Structured output's token trie, built on the first constrained request.
    pub(crate) constrainer: std::sync::OnceLock<Result<claas_constrain::Constrainer, String>>,
    /// What `/metrics` exposes.
    pub(crate) metrics: metrics::Exporter,
    /// Stored `/v1/responses` results (`--enable-responses-store`).
    pub(crate) responses: Option<responses::ResponseStore>,
}

/// Served model name of an alias (`openclaw/assistant-latest` -> `openclaw-assistant-latest`),
/// the same rule the CLaaS API uses when it reloads adapters.
pub use claas_store::served_name as normalize_alias;

/// Parses `--lora-modules` entries (`name=path` or a JSON object with `name` and `path`).
pub fn parse_lora_modules(items: &[String]) -> Result<Vec<(String, PathBuf)>, ServeError> {
    let mut out = Vec::new();
    for item in items {
        let item = item.trim();
        if item.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(item)
                .map_err(|e| ServeError::Config(format!("--lora-modules {item}: {e}")))?;
            let name = v.get("name").and_then(|x| x.as_str());
            let path = v.get("path").and_then(|x| x.as_str());
            match (name, path) {
                (Some(n), Some(p)) => out.push((n.to_string(), PathBuf::from(p))),
                _ => {
                    return Err(ServeError::Config(format!(
                        "--lora-modules {item}: JSON form needs \"name\" and \"path\""
                    )))
                }
            }
        } else {
            match item.split_once('=') {
                Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                    out.push((n.to_string(), PathBuf::from(p)))
                }
                _ => {
                    return Err(ServeError::Config(format!(
                        "--lora-modules {item}: expected name=path"
                    )))
                }
            }
        }
    }
    Ok(out)
}

/// Reads a CLaaS `.aliases.json`: `(served name, adapter folder)` pairs. Paths are relative to
/// `lora_root` (or to the alias file's folder when no root is set).
pub fn read_alias_file(
    file: &Path,
    lora_root: Option<&Path>,
) -> Result<Vec<(String, PathBuf)>, ServeError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| ServeError::Config(format!("{}: {e}", file.display())))?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
        ServeError::Config(format!(
            "{}: expected a JSON object of alias -> adapter path: {e}",
            file.display()
        ))
    })?;
    let root = lora_root
        .map(Path::to_path_buf)
        .or_else(|| file.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    Ok(map
        .into_iter()
        .map(|(alias, rel)| (normalize_alias(&alias), root.join(rel)))
        .collect())
}

fn load_options(
    dtype: &str,
    quantization: Option<&str>,
    matmul_precision: &str,
) -> Result<LoadOptions, ServeError> {
    let dtype =
        claas_model::parse_dtype(dtype).map_err(|e| ServeError::Config(format!("--dtype: {e}")))?;
    let quantization = quantization
        .map(claas_model::parse_quantization)
        .transpose()
        .map_err(|e| ServeError::Config(format!("--quantization: {e}")))?
        .flatten();
    let matmul_precision = claas_model::parse_matmul_precision(matmul_precision)
        .map_err(|e| ServeError::Config(format!("--matmul-precision: {e}")))?;
    Ok(LoadOptions {
        device: claas_model::Device::Cpu,
        dtype,
        quantization,
        matmul_precision,
    })
}

impl AppState {
    /// Builds the state around a running engine and the model folder's tokenizer files.
    pub fn new(
        engine: Engine,
        model_dir: &Path,
        served_names: Vec<String>,
        cfg: &ServeConfig,
    ) -> Result<AppState, ServeError> {
        // Presented keys are trimmed by HTTP, so a configured key with surrounding whitespace
        // would lock every client out.
        if let Some(k) = cfg.api_key.as_deref().filter(|k| !k.is_empty()) {
            if k.trim() != k {
                return Err(ServeError::Config(
                    "--api-key has leading or trailing whitespace; remove it (keys are compared exactly)".into(),
                ));
            }
        }
        if cfg.enable_responses_store && cfg.api_key.as_deref().is_none_or(str::is_empty) {
            tracing::warn!(
                "--enable-responses-store without --api-key: anyone who can reach this port can read stored responses by id"
            );
        }
        // vLLM refuses a parser it does not know at start; so do we, rather than serve replies
        // the client expects to be split.
        let reasoning_parser = match cfg.reasoning_parser.as_deref() {
            None => false,
            Some("qwen3") => true,
            Some(p) => {
                return Err(ServeError::Config(format!(
                    "--reasoning-parser {p}: unknown parser (supported: qwen3)"
                )))
            }
        };
        // Handlers name the first served name in responses, so there is always one.
        let served_names = if served_names.is_empty() {
            vec![cfg.model.clone()]
        } else {
            served_names
        };
        let tokenizer = Tokenizer::from_file(model_dir.join("tokenizer.json"))?;
        let tcfg = TokenizerConfig::from_dir(model_dir).ok();
        let template = tcfg
            .as_ref()
            .and_then(|c| ChatTemplate::from_config(c).ok());
        let gen_path = model_dir.join("generation_config.json");
        let gen = if gen_path.is_file() {
            GenerationConfig::from_file(&gen_path)?
        } else {
            GenerationConfig::default()
        };
        let mut eos: Vec<u32> = gen.eos_token_ids().to_vec();
        for &id in &engine.model_config().eos_token_ids {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        if let Some(id) = tcfg
            .as_ref()
            .and_then(|c| c.eos_token.as_deref())
            .and_then(|t| tokenizer.token_to_id(t))
        {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
        let resolver = match &cfg.lora_root {
            Some(root) => Some(resolve::Resolver::new(
                claas_store::LoraStore::open(root).map_err(|e| {
                    ServeError::Config(format!("--lora-root {}: {e}", root.display()))
                })?,
            )),
            None => None,
        };
        let longest_token = (0..tokenizer.vocab_size() as u32)
            .filter_map(|id| tokenizer.id_to_token(id))
            .map(|t| t.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let max_prompt_bytes = engine
            .max_model_len()
            .saturating_mul(longest_token)
            .saturating_mul(4);
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let metrics = metrics::Exporter::new(&engine, &served_names[0]);
        Ok(AppState {
            metrics,
            engine,
            tokenizer,
            template,
            defaults: GenDefaults::from_generation_config(&gen),
            eos_token_ids: eos,
            served_names,
            model_root: cfg.model.clone(),
            api_key: cfg.api_key.clone().filter(|k| !k.is_empty()),
            lora_root: cfg.lora_root.clone(),
            enable_sleep_mode: cfg.enable_sleep_mode,
            max_logprobs: cfg.max_logprobs,
            created,
            max_request_bytes: cfg.max_request_bytes,
            max_prompt_bytes,
            resolver,
            reasoning_parser,
            constrainer: std::sync::OnceLock::new(),
            responses: cfg.enable_responses_store.then(|| {
                responses::ResponseStore::new(
                    cfg.responses_store_max_entries,
                    responses::store::MAX_STORE_BYTES,
                    std::time::Duration::from_secs(cfg.responses_store_ttl),
                )
            }),
        })
    }

    /// Loads the model and adapters named by `cfg` and starts the engine (blocking; call from
    /// `spawn_blocking` inside a runtime).
    pub fn from_config(cfg: &ServeConfig) -> Result<AppState, ServeError> {
        let cfg = &cfg.normalized();
        if cfg.max_loras == Some(0) {
            return Err(ServeError::Config("--max-loras must be at least 1".into()));
        }
        let dir = claas_model::resolve_model(&cfg.model)?;
        let opts = load_options(
            &cfg.dtype,
            cfg.quantization.as_deref(),
            &cfg.matmul_precision,
        )?;
        let model = Arc::new(Qwen3::load(&dir, &opts)?);
        let ecfg = EngineConfig {
            max_num_seqs: cfg.max_num_seqs.max(1),
            max_model_len: cfg.max_model_len.unwrap_or(0),
            max_lora_rank: cfg.max_lora_rank,
            max_loras: cfg.max_loras,
            max_num_batched_tokens: cfg.max_num_batched_tokens.unwrap_or(0),
            seed: cfg.seed,
            enable_prefix_caching: !cfg.no_enable_prefix_caching,
            kv_cache_memory_bytes: cfg
                .kv_cache_memory_bytes
                .unwrap_or(claas_engine::DEFAULT_KV_CACHE_MEMORY_BYTES),
            ..EngineConfig::default()
        };
        let loader_dir = dir.clone();
        let loader: claas_engine::ModelLoader = Box::new(move || Qwen3::load(&loader_dir, &opts));
        let engine = Engine::start(model, ecfg, Some(loader))?;
        let names = if cfg.served_model_name.is_empty() {
            vec![cfg.model.clone()]
        } else {
            cfg.served_model_name.clone()
        };
        let mut adapters = parse_lora_modules(&cfg.lora_modules)?;
        if let Some(f) = &cfg.lora_alias_file {
            adapters.extend(read_alias_file(f, cfg.lora_root.as_deref())?);
        }
        if !adapters.is_empty() && !cfg.enable_lora {
            tracing::warn!(
                "--lora-modules/--lora-alias-file given without --enable-lora; loading them anyway"
            );
        }
        for (name, path) in adapters {
            if names.contains(&name) {
                return Err(ServeError::Config(format!(
                    "adapter name {name:?} clashes with a served model name"
                )));
            }
            let path = std::fs::canonicalize(&path).map_err(|e| {
                ServeError::Config(format!("adapter {name}: {}: {e}", path.display()))
            })?;
            engine.load_adapter(&name, &path)?;
        }
        AppState::new(engine, &dir, names, cfg)
    }

    /// True if `name` is one of the base model's served names.
    pub fn is_base(&self, name: &str) -> bool {
        self.served_names.iter().any(|n| n == name)
    }
}

/// Serves `router(state)` on an already bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    claas_listen::serve(
        listener,
        router(state),
        claas_listen::Limits::default(),
        shutdown,
    )
    .await
}

/// `claas serve`: loads everything, binds `host:port` and serves until `shutdown` resolves.
pub async fn serve(
    cfg: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let cfg = cfg.normalized();
    cfg.log_noop_flags();
    if cfg.api_key.as_deref().is_none_or(str::is_empty)
        && matches!(cfg.host.as_str(), "0.0.0.0" | "::" | "[::]")
    {
        tracing::warn!(
            "listening on {} without --api-key: anyone who can reach this port can generate, load adapters and sleep or pause the server",
            cfg.host
        );
    }
    let c = cfg.clone();
    let state = tokio::task::spawn_blocking(move || AppState::from_config(&c))
        .await
        .map_err(|e| ServeError::Config(format!("startup task failed: {e}")))??;
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port)).await?;
    tracing::info!(
        "claas serve: model {} as {:?} on http://{}",
        cfg.model,
        state.served_names,
        listener.local_addr()?
    );
    serve_on(listener, Arc::new(state), shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_store_flag_and_vllm_env() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let parse = |args: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(args)
                .unwrap()
                .serve
                .enable_responses_store
        };
        // The only test touching this variable; vLLM's spelling is `=1`.
        std::env::set_var("VLLM_ENABLE_RESPONSES_API_STORE", "1");
        assert!(parse(&["serve"]));
        std::env::set_var("VLLM_ENABLE_RESPONSES_API_STORE", "0");
        assert!(!parse(&["serve"]));
        std::env::remove_var("VLLM_ENABLE_RESPONSES_API_STORE");
        assert!(!parse(&["serve"]));
        assert!(parse(&["serve", "--enable-responses-store"]));
        let c = <Cli as clap::Parser>::try_parse_from(["serve"])
            .unwrap()
            .serve;
        assert_eq!(
            (c.responses_store_max_entries, c.responses_store_ttl),
            (1000, 3600)
        );
    }

    #[test]
    fn zero_max_loras_is_refused_before_loading() {
        let cfg = ServeConfig {
            model: "/nonexistent/model".into(),
            max_loras: Some(0),
            ..ServeConfig::default()
        };
        let Err(ServeError::Config(msg)) = AppState::from_config(&cfg) else {
            panic!("--max-loras 0 must be a configuration error");
        };
        assert!(msg.contains("--max-loras"), "{msg}");
    }

    #[test]
    fn a_key_with_surrounding_whitespace_is_refused_at_start() {
        let cfg = ServeConfig {
            api_key: Some("sk-local ".into()),
            ..ServeConfig::default()
        };
        let Err(ServeError::Config(msg)) = AppState::from_config(&cfg) else {
            panic!("a key clients can never match must be refused");
        };
        assert!(msg.contains("--api-key"), "{msg}");
    }

    #[test]
    fn step_budget_reaches_the_engine() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let cli = Cli::try_parse_from([
            "serve",
            "--model",
            "builtin:tiny",
            "--max-num-seqs",
            "8",
            "--max-num-batched-tokens",
            "4",
        ])
        .unwrap();
        assert_eq!(cli.serve.max_num_batched_tokens, Some(4));
        // The engine refuses a budget below --max-num-seqs, as vLLM does: proof the value
        // reached it.
        let Err(ServeError::Engine(e)) = AppState::from_config(&cli.serve) else {
            panic!("a budget below max_num_seqs must be refused");
        };
        assert!(e.to_string().contains("max_num_batched_tokens"), "{e}");
    }

    #[test]
    fn vllm_serve_command_line_of_the_reference_parses() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        // docker/scripts/start_vllm_qwen3_8b.sh of the reference, flag for flag.
        let cli = Cli::try_parse_from([
            "serve",
            "Qwen/Qwen3-8B",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--api-key",
            "sk-local",
            "--max-model-len",
            "32768",
            "--gpu-memory-utilization",
            "0.70",
            "--enable-sleep-mode",
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "qwen3_xml",
            "--enable-lora",
            "--max-lora-rank",
            "32",
            "--lora-modules",
            "a=/loras/a",
            "--lora-modules",
            "b=/loras/b",
            "--served-model-name",
            "qwen3-8b",
            "--reasoning-parser",
            "qwen3",
            "--enable-prefix-caching",
            "--no-enable-prefix-caching",
        ])
        .unwrap();
        let c = cli.serve.normalized();
        assert_eq!(c.model, "Qwen/Qwen3-8B");
        assert_eq!(c.max_model_len, Some(32768));
        assert_eq!(c.gpu_memory_utilization, Some(0.7));
        assert_eq!(c.lora_modules.len(), 2);
        assert_eq!(c.served_model_name, vec!["qwen3-8b".to_string()]);
        assert_eq!(c.reasoning_parser.as_deref(), Some("qwen3"));
        assert_eq!(c.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        // vLLM's boolean flags: the last one given wins.
        assert!(c.no_enable_prefix_caching && !c.enable_prefix_caching);
    }

    #[test]
    fn prefix_caching_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeConfig,
        }
        let parse = |args: &[&str]| {
            let mut v = vec!["serve"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v).map(|c| c.serve)
        };
        let on = parse(&[]).unwrap();
        assert!(!on.no_enable_prefix_caching, "on by default");
        assert_eq!(on.kv_cache_memory_bytes, None);
        let c = parse(&["--no-enable-prefix-caching", "--enable-prefix-caching"]).unwrap();
        assert!(!c.no_enable_prefix_caching);
        let c = parse(&["--kv-cache-memory-bytes", "2G"]).unwrap();
        assert_eq!(c.kv_cache_memory_bytes, Some(2 << 30));
        assert_eq!(parse_byte_size("1000"), Ok(1000));
        assert_eq!(parse_byte_size("3k"), Ok(3000));
        assert_eq!(parse_byte_size("512M"), Ok(512 << 20));
        assert!(parse_byte_size("2x").is_err());
        assert!(parse_byte_size("G").is_err());
        assert!(parse_byte_size("-1").is_err());
        assert!(parse(&["--kv-cache-memory-bytes", "lots"]).is_err());
    }

    #[test]
    fn alias_normalisation() {
        assert_eq!(
            normalize_alias("openclaw/assistant-latest"),
            "openclaw-assistant-latest"
        );
        assert_eq!(normalize_alias("a b//c@@d.e_f"), "a-b-c-d.e_f");
    }

    #[test]
    fn lora_module_forms() {
        let v = parse_lora_modules(&[
            "a=/x/y".into(),
            r#"{"name": "b", "path": "/z", "base_model_name": "m"}"#.into(),
        ])
        .unwrap();
        assert_eq!(v[0], ("a".into(), PathBuf::from("/x/y")));
        assert_eq!(v[1], ("b".into(), PathBuf::from("/z")));
        assert!(parse_lora_modules(&["nopath".into()]).is_err());
    }
}
