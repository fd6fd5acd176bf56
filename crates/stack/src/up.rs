//! `claas up`: serving, the feedback API and (with a bot token) the Telegram gateway in one
//! process. Serving and training share one copy of the base weights, so a feedback update
//! swaps the adapter in the engine's registry without sleep/wake and without dropping
//! in-flight requests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use claas_api::{ApiConfig, ApiState};
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_engine::{Engine, EngineConfig};
use claas_gateway::openclaw::OpenClawSettings;
use claas_gateway::GatewayConfig;
use claas_model::{LoadOptions, Qwen3};
use claas_serve::{normalize_alias, AppState, ServeConfig};
use claas_store::LoraStore;
use tokio::net::TcpListener;

use claas_api::SdpoEngine;

use crate::{run_init, InProcessBackend, InitSettings, StackError};

/// Settings of `claas up`.
#[derive(Debug, Clone)]
pub struct UpConfig {
    /// Model spec: `builtin:tiny`, a folder or a hub id.
    pub model: String,
    pub host: String,
    /// OpenAI/vLLM-compatible server port (8000 as the reference).
    pub serve_port: u16,
    /// CLaaS API port (8080 as the reference).
    pub api_port: u16,
    /// Key required on the serving `/v1` routes (`sk-local` as the reference).
    pub api_key: Option<String>,
    pub lora_root: PathBuf,
    pub feedback_log_dir: PathBuf,
    /// `LORA_NAME`: `{name}-latest` is the adapter the assistant uses.
    pub lora_name: String,
    pub max_model_len: Option<usize>,
    /// Weight dtype of the shared base model (vLLM's `--dtype`; `None` = auto, the checkpoint's).
    pub dtype: Option<claas_model::DType>,
    /// Weight-only quantization of the shared base model (vLLM's `--quantization`).
    pub quantization: Option<claas_model::Quantization>,
    /// How activations enter the shared base model's products by bf16 weights.
    pub matmul_precision: claas_model::MatmulPrecision,
    /// Start the Telegram gateway with these settings (URLs are pointed at this process).
    pub telegram: Option<GatewayConfig>,
    /// Write the OpenClaw config during init.
    pub openclaw: Option<OpenClawSettings>,
    /// API settings read from the environment (lock timeout etc.); paths and model are
    /// overridden by the fields above.
    pub api: ApiConfig,
}

impl UpConfig {
    /// `model` on 127.0.0.1 with ports picked by the OS, the reference's key `sk-local` and
    /// adapter name, no gateway and no OpenClaw config: a private stack for tests and tools.
    pub fn local(model: &str, lora_root: PathBuf, feedback_log_dir: PathBuf) -> Self {
        UpConfig {
            model: model.into(),
            host: "127.0.0.1".into(),
            serve_port: 0,
            api_port: 0,
            api_key: Some("sk-local".into()),
            lora_root,
            feedback_log_dir,
            lora_name: "openclaw/assistant".into(),
            max_model_len: None,
            dtype: None,
            quantization: None,
            matmul_precision: claas_model::MatmulPrecision::Medium,
            telegram: None,
            openclaw: None,
            api: ApiConfig::default(),
        }
    }
}

/// Addresses the services listen on.
#[derive(Debug, Clone, Copy)]
pub struct UpAddrs {
    pub serve: SocketAddr,
    pub api: SocketAddr,
}

/// Starts everything, reports the bound addresses through `ready`, and runs until `shutdown`.
pub async fn up<F>(
    cfg: UpConfig,
    shutdown: F,
    ready: impl FnOnce(UpAddrs) + Send,
) -> Result<(), StackError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let init = InitSettings {
        lora_root: cfg.lora_root.clone(),
        lora_name: cfg.lora_name.clone(),
        model: cfg.model.clone(),
        lora_r: 32,
        lora_alpha: 64,
        openclaw: cfg.openclaw.clone(),
    };
    let summary = tokio::task::spawn_blocking(move || run_init(&init))
        .await
        .map_err(|e| StackError::Other(e.to_string()))??;
    for line in summary.lines() {
        tracing::info!("{line}");
    }

    let model_spec = cfg.model.clone();
    let opts = LoadOptions {
        dtype: cfg.dtype,
        quantization: cfg.quantization,
        matmul_precision: cfg.matmul_precision,
        ..LoadOptions::default()
    };
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, StackError> {
        let dir = claas_model::resolve_model(&model_spec)?;
        let model = Arc::new(Qwen3::load(&dir, &opts)?);
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_config(&TokenizerConfig::from_dir(&dir)?)?;
        Ok((dir, model, tokenizer, template))
    })
    .await
    .map_err(|e| StackError::Other(e.to_string()))??;
    let (dir, model, tokenizer, template) = loaded;

    let engine = Engine::start(
        model.clone(),
        EngineConfig {
            max_model_len: cfg.max_model_len.unwrap_or(0),
            ..EngineConfig::default()
        },
        None,
    )?;
    // Serve every alias (`openclaw/assistant-latest` as `openclaw-assistant-latest`), as the
    // reference's vLLM start script does.
    let store = LoraStore::open(&cfg.lora_root)?;
    for alias in store.aliases()?.keys() {
        let resolved = store.resolve(alias)?;
        engine.load_adapter(&normalize_alias(alias), &resolved.dir)?;
    }
    let serve_cfg = ServeConfig {
        model: cfg.model.clone(),
        host: cfg.host.clone(),
        port: cfg.serve_port,
        api_key: cfg.api_key.clone(),
        enable_lora: true,
        enable_sleep_mode: true,
        lora_root: Some(cfg.lora_root.clone()),
        max_model_len: cfg.max_model_len,
        ..ServeConfig::default()
    };
    let mut served = vec![cfg.model.clone()];
    if let Some(oc) = &cfg.openclaw {
        if !served.contains(&oc.base_model_id) {
            served.push(oc.base_model_id.clone());
        }
    }
    let serve_state = Arc::new(AppState::new(engine.clone(), &dir, served, &serve_cfg)?);

    let trainer = Arc::new(claas_sdpo::Trainer::new(
        model.clone(),
        Arc::new(tokenizer.clone()),
        Arc::new(template),
    ));
    let training = Arc::new(SdpoEngine::new(
        trainer,
        Arc::new(tokenizer.clone()),
        cfg.model.clone(),
    ));
    let mut api_cfg = cfg.api.clone();
    api_cfg.lora_root = cfg.lora_root.clone();
    api_cfg.feedback_log_dir = cfg.feedback_log_dir.clone();
    api_cfg.base_model_id = cfg.model.clone();
    api_cfg.vllm_base_url = None;
    let api_cfg_key = api_cfg.api_key.clone();
    if !api_cfg.allowed_init_base_models.contains(&cfg.model) {
        api_cfg.allowed_init_base_models.push(cfg.model.clone());
    }
    let api_state = ApiState::new(
        api_cfg,
        store,
        Arc::new(
            InProcessBackend::new(engine.clone(), tokenizer).with_openai_router(
                claas_serve::router(serve_state.clone()),
                cfg.api_key.clone(),
            ),
        ),
        Some(training),
    );

    let serve_l = TcpListener::bind((cfg.host.as_str(), cfg.serve_port)).await?;
    let api_l = TcpListener::bind((cfg.host.as_str(), cfg.api_port)).await?;
    claas_api::auth::warn_if_open(api_l.local_addr()?, &cfg.api);
    let addrs = UpAddrs {
        serve: serve_l.local_addr()?,
        api: api_l.local_addr()?,
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let serve_task = tokio::spawn(claas_serve::serve_on(serve_l, serve_state, stopped()));
    let api_router = claas_api::router(api_state);
    let api_stop = stopped();
    let api_task = tokio::spawn(async move {
        claas_listen::serve(api_l, api_router, claas_listen::Limits::default(), api_stop).await
    });
    let gateway_task = cfg.telegram.clone().map(|mut g| {
        let local = |a: SocketAddr| {
            let host = if a.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                a.ip().to_string()
            };
            format!("http://{host}:{}", a.port())
        };
        g.claas_api_key = api_cfg_key.clone();
        g.claas_api_url = local(addrs.api);
        tokio::spawn(claas_gateway::run(g, stopped()))
    });
    ready(addrs);

    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = serve_task.await;
    let _ = api_task.await;
    if let Some(t) = gateway_task {
        match t.await {
            Ok(Err(e)) => tracing::warn!("gateway stopped with an error: {e}"),
            Err(e) => tracing::warn!("gateway task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}
