//! The engine handle: submission with validation and back-pressure, the adapter registry,
//! sleep/wake, pause/resume and metrics. The step loop itself lives in `scheduler`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

use claas_model::{DType, Device, LoraAdapter, Qwen3, Qwen3Config};
use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::{EngineError, Event, Metrics, SamplingParams};

/// Reloads the model from disk when waking from level-2 sleep.
pub type ModelLoader = Box<dyn Fn() -> claas_model::Result<Qwen3> + Send + Sync>;

/// Scheduler limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Sequences decoded together at most (vLLM `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Requests accepted but not running at most; beyond this `submit` returns `QueueFull`.
    pub max_queue: usize,
    /// Context length; 0 means the model's `max_position_embeddings`.
    pub max_model_len: usize,
    /// Tokens fed to the model per step at most (vLLM `--max-num-batched-tokens`): every
    /// decoding sequence's next token first, then prompt chunks, shared fairly among the
    /// sequences still prefilling (see the scheduler's `plan`). 0 means the default,
    /// `max(512, max_num_seqs)`; an explicit value must be at least `max_num_seqs`, so every
    /// running sequence can progress in every step.
    pub max_num_batched_tokens: usize,
    /// Largest LoRA rank accepted (vLLM `--max-lora-rank`); `None` = any.
    pub max_lora_rank: Option<usize>,
    /// Distinct adapters in one batch at most (vLLM `--max-loras`); `None` = no limit.
    pub max_loras: Option<usize>,
    /// Seeds the RNG of requests that send no seed (vLLM `--seed`).
    pub seed: u64,
    /// Keep the keys and values of full prompt blocks for later requests that start with the
    /// same tokens on the same adapter version (vLLM `--enable-prefix-caching`, on by default).
    pub enable_prefix_caching: bool,
    /// Bytes the prefix cache may hold (vLLM `--kv-cache-memory-bytes`); the least recently
    /// used blocks go first beyond it. Running sequences' own caches are not counted.
    pub kv_cache_memory_bytes: usize,
}

/// Default prefix-cache budget: 2 GiB, about 9k tokens of Qwen3-0.6B keys and values in f32.
pub const DEFAULT_KV_CACHE_MEMORY_BYTES: usize = 2 << 30;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_queue: 1024,
            max_model_len: 0,
            max_num_batched_tokens: 0,
            max_lora_rank: None,
            max_loras: None,
            seed: 0,
            enable_prefix_caching: true,
            kv_cache_memory_bytes: DEFAULT_KV_CACHE_MEMORY_BYTES,
        }
    }
}

/// One generation request in token ids.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Registered adapter name; `None` = base model.
    pub adapter: Option<String>,
    pub params: SamplingParams,
    /// Independent samples of the same prompt.
    pub n: usize,
    /// Top alternatives per prompt token (`Some(0)` = only the actual token's logprob).
    pub prompt_logprobs: Option<usize>,
}

/// The caller's side of a running request. Dropping it (or its receiver) cancels the request.
pub struct RequestHandle {
    pub events: UnboundedReceiver<Event>,
    cancel: Arc<Vec<AtomicBool>>,
}

impl RequestHandle {
    /// Stops sequence `index` at the next step (e.g. a stop string matched).
    pub fn cancel(&self, index: usize) {
        if let Some(c) = self.cancel.get(index) {
            c.store(true, Ordering::Relaxed);
        }
    }

    /// Splits into the event receiver and a cloneable canceller (dropping the receiver still
    /// cancels everything).
    pub fn into_parts(self) -> (UnboundedReceiver<Event>, Canceller) {
        (self.events, Canceller(self.cancel))
    }
}

/// Cancels single sequences of a request from anywhere.
#[derive(Clone)]
pub struct Canceller(Arc<Vec<AtomicBool>>);

impl Canceller {
    /// Stops sequence `index` at the next step.
    pub fn cancel(&self, index: usize) {
        if let Some(c) = self.0.get(index) {
            c.store(true, Ordering::Relaxed);
        }
    }
}

/// A registered adapter.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub name: String,
    /// Bumped on every (re)load, engine-wide unique, never 0 (the base model's prefix-cache
    /// identity). Prefix-cache blocks are keyed by it, so a reload never reuses old blocks.
    pub version: u64,
    /// Folder it was loaded from, if any.
    pub path: Option<PathBuf>,
    pub rank: usize,
}

/// Memory before/after a sleep (bytes of resident set).
#[derive(Debug, Clone, Copy)]
pub struct SleepReport {
    pub level: u8,
    pub rss_before: u64,
    pub rss_after: u64,
}

pub(crate) struct AdapterEntry {
    pub adapter: Arc<LoraAdapter>,
    pub info: AdapterInfo,
}

pub(crate) struct Pending {
    pub req: GenerateRequest,
    pub adapter: Option<Arc<LoraAdapter>>,
    /// The pinned adapter's load generation (0 = base model): what prefix-cache blocks are
    /// keyed by besides tokens.
    pub adapter_version: u64,
    pub tx: UnboundedSender<Event>,
    pub cancel: Arc<Vec<AtomicBool>>,
    pub arrived: Instant,
}

/// What `/pause` does with requests the engine already holds (vLLM's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Abort every held request (running and queued) at once; they finish with `Abort`.
    Abort,
    /// Let running sequences finish; queued ones stay queued. `pause` returns once nothing runs.
    Wait,
    /// Freeze everything where it is; all of it continues on resume.
    Keep,
}

pub(crate) enum Msg {
    Request(Box<Pending>),
    Pause {
        mode: PauseMode,
        reply: mpsc::Sender<()>,
    },
    Resume {
        reply: mpsc::Sender<()>,
    },
    Sleep {
        level: u8,
        reply: mpsc::Sender<Result<SleepReport, EngineError>>,
    },
    Wake {
        reply: mpsc::Sender<Result<SleepReport, EngineError>>,
    },
    ResetPrefixCache {
        reply: mpsc::Sender<()>,
    },
}

pub(crate) struct Shared {
    pub cfg: EngineConfig,
    pub model_config: Qwen3Config,
    pub device: Device,
    pub dtype: DType,
    pub max_model_len: usize,
    pub metrics: Arc<Metrics>,
    adapters: RwLock<HashMap<String, AdapterEntry>>,
    versions: AtomicU64,
    load_lock: Mutex<()>,
    /// 0 awake, else the sleep level.
    pub sleeping: Arc<AtomicU8>,
    /// Serialises sleep/wake transitions.
    sleep_lock: Mutex<()>,
    /// Set by the engine thread while generation is paused.
    paused: Arc<AtomicBool>,
    tx: mpsc::Sender<Msg>,
}

/// Cloneable handle to the engine thread. The thread exits when the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

/// Hands memory the allocator keeps for reuse back to the OS (glibc `malloc_trim`); a no-op
/// elsewhere. Sleep calls it after dropping the weights: with the `claas` binary's allocator
/// settings (large blocks stay in the heap between training steps) they would stay resident.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages; it is safe at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident set size of this process in bytes (Linux `/proc/self/statm`; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .map(|pages| pages.saturating_mul(page_size()))
        .unwrap_or(0)
}

/// The kernel's page size: `statm` counts pages, and they are 16 or 64 KiB on some arm64 and
/// ppc64 kernels, not always 4 KiB.
fn page_size() -> u64 {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if n > 0 {
            return n as u64;
        }
    }
    4096
}

fn max_rank(a: &LoraAdapter) -> usize {
    a.named_tensors()
        .iter()
        .filter(|(k, _)| k.contains("lora_A"))
        .filter_map(|(_, t)| t.dims().first().copied())
        .max()
        .unwrap_or(0)
}

impl Engine {
    /// Starts the scheduler thread over a shared model. `loader` (if any) lets level-2 sleep drop
    /// the weights and reload them on wake.
    pub fn start(
        model: Arc<Qwen3>,
        cfg: EngineConfig,
        loader: Option<ModelLoader>,
    ) -> Result<Engine, EngineError> {
        let model_config = model.config().clone();
        let max_model_len = if cfg.max_model_len == 0 {
            model_config.max_position_embeddings
        } else {
            cfg.max_model_len
        };
        if max_model_len > model_config.max_position_embeddings {
            return Err(EngineError::InvalidParams(format!(
                "max_model_len {max_model_len} exceeds the model's max_position_embeddings {}",
                model_config.max_position_embeddings
            )));
        }
        let max_num_seqs = cfg.max_num_seqs.max(1);
        let max_num_batched_tokens = match cfg.max_num_batched_tokens {
            0 => max_num_seqs.max(512),
            n if n < max_num_seqs => {
                return Err(EngineError::InvalidParams(format!(
                    "max_num_batched_tokens ({n}) must be at least max_num_seqs ({max_num_seqs})"
                )))
            }
            n => n,
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            device: model.device().clone(),
            dtype: model.dtype(),
            model_config,
            max_model_len,
            metrics: Arc::new(Metrics::default()),
            adapters: RwLock::new(HashMap::new()),
            versions: AtomicU64::new(0),
            load_lock: Mutex::new(()),
            sleeping: Arc::new(AtomicU8::new(0)),
            sleep_lock: Mutex::new(()),
            paused: Arc::new(AtomicBool::new(false)),
            tx,
            cfg,
        });
        let metrics = shared.metrics.clone();
        let paused = shared.paused.clone();
        let sc = crate::scheduler::SchedulerParams {
            max_num_seqs,
            max_num_batched_tokens,
            max_model_len,
            max_loras: shared.cfg.max_loras,
            seed: shared.cfg.seed,
            prefix_cache_bytes: shared
                .cfg
                .enable_prefix_caching
                .then_some(shared.cfg.kv_cache_memory_bytes),
        };
        std::thread::Builder::new()
            .name("claas-engine".into())
            .spawn(move || crate::scheduler::run(sc, metrics, paused, model, loader, rx))
            .map_err(EngineError::Spawn)?;
        Ok(Engine { shared })
    }

    /// The model's configuration.
    pub fn model_config(&self) -> &Qwen3Config {
        &self.shared.model_config
    }

    /// The scheduler limits the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.cfg
    }

    /// Effective context length.
    pub fn max_model_len(&self) -> usize {
        self.shared.max_model_len
    }

    /// Live metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Validates, pins the adapter, and queues a request.
    pub fn submit(&self, req: GenerateRequest) -> Result<RequestHandle, EngineError> {
        let s = &self.shared;
        if s.sleeping.load(Ordering::SeqCst) != 0 {
            return Err(EngineError::Sleeping);
        }
        if req.prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let vocab = s.model_config.vocab_size;
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::TokenOutOfRange { id, vocab });
        }
        req.params.validate()?;
        if req.n == 0 {
            return Err(EngineError::InvalidParams("n must be at least 1".into()));
        }
        if req.n > s.cfg.max_num_seqs.max(1) {
            return Err(EngineError::InvalidParams(format!(
                "n must be at most {}",
                s.cfg.max_num_seqs.max(1)
            )));
        }
        let len = req.prompt.len() + req.params.max_tokens;
        if len > s.max_model_len {
            return Err(EngineError::TooLong {
                len,
                max: s.max_model_len,
                prompt: req.prompt.len(),
                completion: req.params.max_tokens,
            });
        }
        let (adapter, adapter_version) = match &req.adapter {
            None => (None, 0),
            Some(name) => {
                let map = s.adapters.read();
                let e = map
                    .get(name)
                    .ok_or_else(|| EngineError::UnknownAdapter(name.clone()))?;
                (Some(e.adapter.clone()), e.info.version)
            }
        };
        let waiting = s.metrics.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= s.cfg.max_queue {
            s.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::QueueFull(waiting));
        }
        let (tx, rx) = unbounded_channel();
        let cancel: Arc<Vec<AtomicBool>> =
            Arc::new((0..req.n).map(|_| AtomicBool::new(false)).collect());
        let pending = Pending {
            req,
            adapter,
            adapter_version,
            tx,
            cancel: cancel.clone(),
            arrived: Instant::now(),
        };
        if s.tx.send(Msg::Request(Box::new(pending))).is_err() {
            s.metrics.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(EngineError::Stopped);
        }
        Ok(RequestHandle { events: rx, cancel })
    }

    /// Loads a PEFT adapter folder under `name`, replacing any adapter of that name atomically.
    /// Loads are serialised; requests already admitted keep the adapter they pinned.
    pub fn load_adapter(&self, name: &str, dir: &Path) -> Result<AdapterInfo, EngineError> {
        let s = &self.shared;
        let _guard = s.load_lock.lock();
        let a = LoraAdapter::load(dir, &s.model_config, &s.device, s.dtype)
            .map_err(|e| EngineError::Adapter(e.to_string()))?;
        self.register(name, Arc::new(a), Some(dir.to_path_buf()))
    }

    /// Registers an adapter already in memory (e.g. shared with a trainer in `claas up`).
    pub fn load_adapter_from(
        &self,
        name: &str,
        adapter: Arc<LoraAdapter>,
    ) -> Result<AdapterInfo, EngineError> {
        let _guard = self.shared.load_lock.lock();
        self.register(name, adapter, None)
    }

    fn register(
        &self,
        name: &str,
        adapter: Arc<LoraAdapter>,
        path: Option<PathBuf>,
    ) -> Result<AdapterInfo, EngineError> {
        let s = &self.shared;
        if name.is_empty() {
            return Err(EngineError::Adapter("adapter name is empty".into()));
        }
        adapter
            .check_fits(&s.model_config)
            .map_err(|e| EngineError::Adapter(e.to_string()))?;
        let rank = max_rank(&adapter);
        if let Some(max) = s.cfg.max_lora_rank {
            if rank > max {
                return Err(EngineError::Adapter(format!(
                    "LoRA rank {rank} is greater than max_lora_rank {max}"
                )));
            }
        }
        let info = AdapterInfo {
            name: name.to_string(),
            version: s.versions.fetch_add(1, Ordering::SeqCst) + 1,
            path,
            rank,
        };
        s.adapters.write().insert(
            name.to_string(),
            AdapterEntry {
                adapter,
                info: info.clone(),
            },
        );
        Ok(info)
    }

    /// Removes an adapter; in-flight requests that pinned it still finish. False if unknown.
    pub fn unload_adapter(&self, name: &str) -> bool {
        let _guard = self.shared.load_lock.lock();
        self.shared.adapters.write().remove(name).is_some()
    }

    /// Registered adapters, sorted by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        let mut v: Vec<AdapterInfo> = self
            .shared
            .adapters
            .read()
            .values()
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The registered adapter of that name.
    pub fn adapter(&self, name: &str) -> Option<AdapterInfo> {
        self.shared
            .adapters
            .read()
            .get(name)
            .map(|e| e.info.clone())
    }

    /// Pauses generation (vLLM's `pause_generation`): nothing new is scheduled until
    /// [`Engine::resume`]; requests submitted meanwhile are accepted and wait in the queue.
    /// `mode` says what happens to requests already held. Blocks until the pause holds (for
    /// `Wait`: until the running sequences have finished, or a resume ended the pause).
    pub fn pause(&self, mode: PauseMode) -> Result<(), EngineError> {
        let (reply, rx) = mpsc::channel();
        self.shared
            .tx
            .send(Msg::Pause { mode, reply })
            .map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)
    }

    /// Resumes generation after [`Engine::pause`] (a no-op when not paused).
    pub fn resume(&self) -> Result<(), EngineError> {
        let (reply, rx) = mpsc::channel();
        self.shared
            .tx
            .send(Msg::Resume { reply })
            .map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)
    }

    /// Empties the prefix cache (vLLM's `reset_prefix_cache`); sequences already running keep
    /// their own caches. Blocks until done.
    pub fn reset_prefix_cache(&self) -> Result<(), EngineError> {
        let (reply, rx) = mpsc::channel();
        self.shared
            .tx
            .send(Msg::ResetPrefixCache { reply })
            .map_err(|_| EngineError::Stopped)?;
        rx.recv().map_err(|_| EngineError::Stopped)
    }

    /// True from the moment a pause is taken up until it is resumed.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// 0 when awake, else the sleep level.
    pub fn sleep_level(&self) -> u8 {
        self.shared.sleeping.load(Ordering::SeqCst)
    }

    /// The sleep level as a shared cell, for readers that outlive a borrow of the engine (the
    /// metrics collector).
    pub fn sleep_level_handle(&self) -> Arc<AtomicU8> {
        self.shared.sleeping.clone()
    }

    /// Refuses new requests, lets running ones finish (requests a pause holds stay held, their
    /// caches kept), then releases the model: level 1 keeps
    /// the weights resident (on CPU they already are host memory), level 2 drops them and
    /// reloads through the loader on wake. Blocks until done.
    pub fn sleep(&self, level: u8) -> Result<SleepReport, EngineError> {
        if level != 1 && level != 2 {
            return Err(EngineError::InvalidParams(format!(
                "sleep level must be 1 or 2, got {level}"
            )));
        }
        let _g = self.shared.sleep_lock.lock();
        let cur = self.shared.sleeping.load(Ordering::SeqCst);
        if cur != 0 {
            let rss = rss_bytes();
            return Ok(SleepReport {
                level: cur,
                rss_before: rss,
                rss_after: rss,
            });
        }
        self.shared.sleeping.store(level, Ordering::SeqCst);
        let (reply, rx) = mpsc::channel();
        if self.shared.tx.send(Msg::Sleep { level, reply }).is_err() {
            return Err(EngineError::Stopped);
        }
        let r = rx.recv().map_err(|_| EngineError::Stopped)?;
        if r.is_err() {
            self.shared.sleeping.store(0, Ordering::SeqCst);
        }
        r
    }

    /// Restores the model (reloading after level 2) and accepts requests again.
    pub fn wake_up(&self) -> Result<SleepReport, EngineError> {
        let _g = self.shared.sleep_lock.lock();
        if self.shared.sleeping.load(Ordering::SeqCst) == 0 {
            let rss = rss_bytes();
            return Ok(SleepReport {
                level: 0,
                rss_before: rss,
                rss_after: rss,
            });
        }
        let (reply, rx) = mpsc::channel();
        if self.shared.tx.send(Msg::Wake { reply }).is_err() {
            return Err(EngineError::Stopped);
        }
        let r = rx.recv().map_err(|_| EngineError::Stopped)?;
        if r.is_ok() {
            self.shared.sleeping.store(0, Ordering::SeqCst);
        }
        r
    }
}
