//! The feedback lifecycle: resolve -> lock -> drain -> rollout log-probs -> sleep -> SDPO step ->
//! atomic save -> wake + adapter reload -> log -> response; and the versioned `/v1/distill`.

use std::sync::Arc;
use std::time::Instant;

use claas_sdpo::{ExternalTeacher, TeacherMode};
use claas_store::{LoraStore, ResolvedAdapter, StoreError, VersionInfo, LATEST_SUFFIX};
use serde_json::{json, Value};

use crate::backend::normalize_adapter_name;
use crate::engine::{DistillJob, DistillOutput, EngineError, TrainingEngine};
use crate::error::ApiError;
use crate::feedback_log::write_feedback_log;
use crate::locks::AdapterGuard;
use crate::records::CompletionRecord;
use crate::state::ApiState;
use crate::types::{
    DistillResponse, DistillResultMetadata, FeedbackItem, FeedbackRequest, FeedbackResponse,
    Guardrail, GuardrailOutcome, TimingMs, VllmState,
};

/// Name of the optimizer side state in the store.
pub const OPTIMIZER_STATE: &str = "optimizer";

/// Runs the SDPO step on a blocking thread. The single place training is invoked.
pub async fn run_distill(
    engine: Arc<dyn TrainingEngine>,
    job: DistillJob,
) -> Result<DistillOutput, EngineError> {
    tokio::task::spawn_blocking(move || engine.distill(&job))
        .await
        .map_err(|e| EngineError::Internal(format!("training task failed: {e}")))?
}

/// Commits a trained adapter and its optimizer state as the next immutable version of
/// `target_id` (one store transaction) and makes it live.
async fn commit(
    store: LoraStore,
    target_id: String,
    meta: Value,
    output: DistillOutput,
) -> Result<VersionInfo, StoreError> {
    tokio::task::spawn_blocking(move || {
        let artifacts = output.artifacts;
        store.commit_version(&target_id, meta, |dir| {
            artifacts.save_adapter(dir)?;
            let opt = dir.join(OPTIMIZER_STATE);
            std::fs::create_dir_all(&opt).map_err(|e| EngineError::Internal(e.to_string()))?;
            artifacts.save_optimizer(&opt)
        })
    })
    .await
    .map_err(|e| StoreError::Write(format!("save task failed: {e}").into()))?
}

/// Resolves an id for a route: 422 for an invalid id, 404 for a missing one.
pub async fn resolve(store: &LoraStore, id: &str) -> Result<ResolvedAdapter, ApiError> {
    let store = store.clone();
    let id_owned = id.to_string();
    let res = tokio::task::spawn_blocking(move || store.resolve(&id_owned))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match res {
        Ok(r) => Ok(r),
        Err(StoreError::NotFound(_)) => Err(ApiError::NotFound(format!("LoRA not found: {id}"))),
        Err(e @ StoreError::InvalidId { .. }) => Err(ApiError::invalid(
            vec![json!("body"), json!("lora_id")],
            "value_error",
            format!("Value error, {e}"),
        )),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn lock(
    state: &ApiState,
    resolved: &ResolvedAdapter,
    requested: &str,
) -> Result<AdapterGuard, ApiError> {
    let timeout = state.config().lock_timeout;
    state
        .locks()
        .acquire(&resolved.id, timeout, Some(state.store()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "Timed out waiting for lock on LoRA '{requested}' after {:.0}s: another update of this adapter is in progress; try again later",
                timeout.as_secs_f64()
            ))
        })
}

/// Locks the resolved adapter, re-resolving afterwards: if an alias moved to another adapter
/// while we waited, lock that one instead (a few times at most).
async fn lock_resolved(
    state: &ApiState,
    mut resolved: ResolvedAdapter,
    requested: &str,
) -> Result<(AdapterGuard, ResolvedAdapter), ApiError> {
    for _ in 0..3 {
        let guard = lock(state, &resolved, requested).await?;
        let now = resolve(state.store(), requested).await?;
        if now.id == resolved.id {
            return Ok((guard, now));
        }
        resolved = now;
    }
    Err(ApiError::Conflict(format!(
        "LoRA '{requested}' keeps moving to other adapters; try again later"
    )))
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn engine_error(phase: &str, e: EngineError) -> ApiError {
    match e {
        EngineError::BadInput(m) => ApiError::Unprocessable(m),
        EngineError::Internal(m) => {
            ApiError::Internal(format!("Feedback update failed in phase '{phase}': {m}"))
        }
    }
}

fn no_teacher() -> ApiError {
    ApiError::Unprocessable(
        "teacher_mode 'remote' needs a remote teacher: set CLAAS_TEACHER_BASE_URL (and CLAAS_TEACHER_MODEL) to a vLLM-compatible server of a model sharing the base model's tokenizer, or use teacher_mode 'self'".into(),
    )
}

/// `teacher_mode: "remote"`: the remote teacher's scores of every item (`None` for `self`).
async fn remote_teachers(
    state: &ApiState,
    engine: &Arc<dyn TrainingEngine>,
    job: &DistillJob,
    phase: &str,
) -> Result<Option<Vec<ExternalTeacher>>, ApiError> {
    if job.training.teacher_mode != TeacherMode::Remote {
        return Ok(None);
    }
    let teacher = state.teacher().ok_or_else(no_teacher)?;
    let (e, items, kind) = (
        engine.clone(),
        job.items.clone(),
        job.training.teacher_prompt,
    );
    let inputs = tokio::task::spawn_blocking(move || e.teacher_inputs(&items, kind))
        .await
        .map_err(|e| ApiError::Internal(format!("teacher input task failed: {e}")))?
        .map_err(|e| engine_error(phase, e))?;
    let scores = teacher
        .score(&inputs, job.training.teacher_top_k)
        .await
        .map_err(|e| {
            ApiError::BadGateway(format!(
                "Remote teacher at {} failed to score: {e}",
                teacher.base_url()
            ))
        })?;
    Ok(Some(scores))
}

/// 503: no trainer, naming why when its base model failed to load.
pub fn no_engine(state: &ApiState) -> ApiError {
    match state.engine_error() {
        Some(cause) => ApiError::Unavailable(format!(
            "the SDPO trainer is not available: loading the base model failed: {cause}"
        )),
        None => ApiError::Unavailable(
            "the SDPO trainer is not loaded (base model still loading or not configured)".into(),
        ),
    }
}

struct Progress {
    request_id: String,
    phase: &'static str,
    vllm: VllmState,
    timing: TimingMs,
    distill_result: Option<DistillResponse>,
    resolved: Option<ResolvedAdapter>,
    /// Per item: the completion record it was resolved against (`None`: the request's text).
    records: Vec<Option<String>>,
    /// What the trainer was given, per item (exact ids when a record was found).
    samples: Vec<claas_sdpo::FeedbackItem>,
    version: Option<VersionInfo>,
    guardrail: Option<GuardrailOutcome>,
}

/// Where a feedback item's exact tokens come from: the completion record named by its
/// `completion_id`, else the newest record of its response text.
fn find_record(state: &ApiState, item: &FeedbackItem) -> Option<CompletionRecord> {
    let records = state.records();
    item.completion_id
        .as_deref()
        .and_then(|id| records.by_id(id))
        .or_else(|| records.by_text(&item.sample.response))
}

/// The trainer's sample for an item: the record's exact prompt and response ids, sampled
/// log-probabilities and student context when there is a record, else the request as sent.
/// As the reference, the client's clean `prompt` is the teacher's user prompt; a chat-formatted
/// one (a 0f67ae6 client) gives way to the record's.
fn sample_of(item: &FeedbackItem, record: Option<&CompletionRecord>) -> claas_sdpo::FeedbackItem {
    let mut s = item.sample.clone();
    if let Some(r) = record {
        s.prompt_ids = Some(r.prompt_ids.clone());
        s.response_ids = Some(r.response_ids.clone());
        s.rollout_logprobs = r.logprobs.clone();
        s.system_prompt = Some(r.system_prompt.clone().unwrap_or_default());
        let clean = !item.sample.prompt.contains("<|im_start|>");
        s.user_prompt = Some(if clean {
            item.sample.prompt.clone()
        } else {
            r.user_prompt.clone()
        });
    }
    s
}

/// Handles a parsed `/v1/feedback`: always writes a log record, success or failure.
pub async fn feedback(
    state: &ApiState,
    req: FeedbackRequest,
) -> Result<FeedbackResponse, ApiError> {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut p = Progress {
        request_id: request_id.clone(),
        records: Vec::new(),
        samples: Vec::new(),
        version: None,
        guardrail: None,
        phase: "validate",
        vllm: VllmState::default(),
        timing: TimingMs::default(),
        distill_result: None,
        resolved: None,
    };
    let result = feedback_inner(state, &req, &mut p).await;

    // Wake the server if we put it to sleep and the normal path did not wake it.
    let orch = &req.orchestration;
    if p.vllm.slept
        && !p.vllm.woke
        && orch.wake_after
        && (orch.wake_on_failure || state.config().wake_on_failure)
    {
        match state.backend().wake().await {
            Ok(()) => {
                p.vllm.woke = true;
                tracing::info!(
                    request_id,
                    phase = p.phase,
                    "woke inference server after failure"
                );
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "failed to wake inference server after error")
            }
        }
    }
    p.timing.total = ms(started);

    let error = result.as_ref().err();
    // A refused or failed request is logged with a bounded excerpt of what it sent.
    let (request_log, samples_log) = match error {
        None => (req.log_value(), json!(p.samples)),
        Some(_) => (
            crate::feedback_log::excerpt(&req.log_value()),
            crate::feedback_log::excerpt(&json!(p.samples)),
        ),
    };
    let record = json!({
        "request_id": request_id,
        "timestamp_utc": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "status": if error.is_none() { "ok" } else { "error" },
        "phase": p.phase,
        "lora_id": req.lora_id(),
        "resolved_lora_id": p.resolved.as_ref().map(|r| r.id.clone()),
        "teacher_mode": req.training().teacher_mode,
        "teacher_prompt": req.training().teacher_prompt,
        "completion_records": p.records,
        "batch_samples": samples_log,
        "adapter_version": p.version.as_ref().map(|v| v.version),
        "previous_version": p.version.as_ref().and_then(|v| v.parent),
        "version_name": p.version.as_ref().map(|v| v.name.clone()),
        "current_version": current_version(&p),
        "guardrail": p.guardrail,
        "batch_size": req.items.len(),
        "request": request_log,
        "vllm": p.vllm,
        "timing_ms": p.timing,
        "distill_result": p.distill_result,
        "error": error.map(|e| e.to_string()),
        "http_status": error.map(|e| e.status().as_u16()).unwrap_or(200),
    });
    let dir = state.config().feedback_log_dir.clone();
    let rid = request_id.clone();
    let log_path =
        match tokio::task::spawn_blocking(move || write_feedback_log(&dir, &rid, record)).await {
            Ok(Ok(path)) => path.to_string_lossy().to_string(),
            Ok(Err(e)) => {
                tracing::warn!(request_id, error = %e, "failed to write feedback log");
                String::new()
            }
            Err(e) => {
                tracing::warn!(request_id, error = %e, "feedback log task failed");
                String::new()
            }
        };
    state.metrics().feedback_done(error.map(|_| p.phase));

    match result {
        Ok(()) => {
            let lora_id = p
                .distill_result
                .as_ref()
                .map(|d| d.lora_id.clone())
                .unwrap_or_else(|| req.lora_id().to_string());
            let current_version = current_version(&p);
            Ok(FeedbackResponse {
                status: "ok".into(),
                request_id,
                lora_id,
                distill_result: p.distill_result,
                vllm: p.vllm,
                feedback_log_path: log_path,
                timing_ms: p.timing,
                batch_size: req.items.len(),
                adapter_version: p.version.as_ref().map(|v| v.version),
                previous_version: p.version.as_ref().and_then(|v| v.parent),
                current_version,
                guardrail: p.guardrail,
                version_name: p.version.map(|v| v.name),
            })
        }
        Err(e) => {
            tracing::error!(request_id, phase = p.phase, error = %e, "feedback failed");
            Err(e)
        }
    }
}

async fn feedback_inner(
    state: &ApiState,
    req: &FeedbackRequest,
    p: &mut Progress,
) -> Result<(), ApiError> {
    let requested = req.lora_id().to_string();
    let resolved = resolve(state.store(), &requested).await?;
    p.resolved = Some(resolved.clone());

    p.phase = "lock";
    let (_guard, resolved) = lock_resolved(state, resolved, &requested).await?;
    p.resolved = Some(resolved.clone());

    // Refuse before touching the inference server when training is impossible.
    let engine = state.engine().ok_or_else(|| no_engine(state))?;
    if req.training().teacher_mode == TeacherMode::Remote && state.teacher().is_none() {
        return Err(no_teacher());
    }
    let backend = state.backend().clone();
    let orch = &req.orchestration;
    let found: Vec<Option<CompletionRecord>> =
        req.items.iter().map(|i| find_record(state, i)).collect();
    p.records = found
        .iter()
        .map(|r| r.as_ref().map(|r| r.completion_id.clone()))
        .collect();
    let mut items: Vec<claas_sdpo::FeedbackItem> = req
        .items
        .iter()
        .zip(&found)
        .map(|(i, r)| sample_of(i, r.as_ref()))
        .collect();
    // Items whose rollout log-probs we fetched (not given by the client).
    let mut fetched: Vec<usize> = Vec::new();

    if orch.sleep_before && backend.needs_sleep() {
        p.phase = "drain";
        backend
            .drain(state.config().drain_timeout)
            .await
            .map_err(|e| ApiError::Unavailable(format!("vLLM not idle: {e}")))?;
    }

    // Only the 0f67ae6 form (chat-formatted prompt text, no record) can be scored by text.
    let needs_logprobs = |i: &claas_sdpo::FeedbackItem| {
        i.rollout_logprobs.is_none() && i.prompt_ids.is_none() && i.messages.is_none()
    };
    if backend.serves_adapters() && items.iter().any(needs_logprobs) {
        let model = match &state.config().vllm_rollout_model {
            Some(m) if m.is_empty() => None,
            Some(m) => Some(m.clone()),
            None => Some(normalize_adapter_name(&requested)),
        };
        if let Some(model) = model {
            p.phase = "logprobs";
            let t = Instant::now();
            for (i, item) in items.iter_mut().enumerate() {
                if !needs_logprobs(item) {
                    continue;
                }
                match backend
                    .rollout_logprobs(&item.prompt, &item.response, &model)
                    .await
                {
                    Ok(lp) => {
                        item.rollout_logprobs = Some(lp);
                        fetched.push(i);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, model, "failed to fetch rollout logprobs; the trainer will use the current policy")
                    }
                }
            }
            p.timing.logprobs = ms(t);
        }
    }

    if orch.sleep_before && backend.needs_sleep() {
        p.phase = "sleep";
        let t = Instant::now();
        match backend.sleep(orch.sleep_level).await {
            Ok(()) => p.vllm.slept = true,
            // Sleep only frees accelerator memory: train with the server awake (the backend
            // warned once when it found out).
            Err(crate::backend::BackendError::SleepUnsupported(_)) => {}
            Err(e) => {
                return Err(ApiError::Internal(format!(
                    "Feedback update failed in phase 'sleep': {e}"
                )))
            }
        }
        p.timing.sleep = ms(t);
    }

    p.phase = "distill";
    let optimizer_dir = state.store().optimizer_dir(&resolved.id).map_err(|e| {
        ApiError::Internal(format!("Feedback update failed in phase 'distill': {e}"))
    })?;
    p.samples = items.clone();
    let mut job = DistillJob {
        adapter_id: resolved.id.clone(),
        adapter_dir: resolved.dir.clone(),
        optimizer_dir,
        training: req.training(),
        items,
        teachers: None,
    };
    // As in the reference, the remote teacher scores inside the distill phase (after the
    // serving model slept: it is another server).
    let t = Instant::now();
    job.teachers = remote_teachers(state, &engine, &job, "distill").await?;
    let output = match run_distill(engine.clone(), job.clone()).await {
        Ok(o) => o,
        // The server tokenises prompt + response as one string, which can split the boundary
        // differently from the trainer; then drop the fetched values and train on-policy
        // rather than fail a request the client made correctly.
        Err(EngineError::BadInput(m)) if !fetched.is_empty() => {
            tracing::warn!(error = %m, "fetched rollout logprobs rejected by the trainer; retrying without them");
            for i in &fetched {
                job.items[*i].rollout_logprobs = None;
            }
            p.samples = job.items.clone();
            run_distill(engine.clone(), job)
                .await
                .map_err(|e| engine_error("distill", e))?
        }
        Err(e) => return Err(engine_error("distill", e)),
    };
    p.timing.distill = ms(t);
    let (metrics, timings) = (output.metadata.clone(), output.timings.clone());

    p.phase = "save";
    let t = Instant::now();
    let meta = json!({
        "kind": "feedback",
        "request_id": p.request_id,
        "lora_id": requested,
        "feedback": req.items.iter().map(|i| i.sample.feedback.clone()).collect::<Vec<_>>(),
        "metrics": metrics,
    });
    let info = commit(state.store().clone(), resolved.id.clone(), meta, output)
        .await
        .map_err(|e| ApiError::Internal(format!("Feedback update failed in phase 'save': {e}")))?;
    let version = info.version;
    p.timing.save = ms(t);
    let bounds = state.config().guardrail.with(&req.guardrail);
    if bounds.enabled() {
        p.phase = "guardrail";
        p.guardrail = Some(guard(state, &engine, &resolved, &info, bounds).await?);
    }
    p.version = Some(info);
    state.metrics().step(
        (p.timing.distill + p.timing.save) as f64 / 1000.0,
        Some(metrics.total_loss),
    );
    p.distill_result = Some(DistillResponse {
        lora_id: resolved.id.clone(),
        metadata: DistillResultMetadata {
            metrics,
            timings_ms: timings,
            adapter_version: version,
        },
    });

    if backend.serves_adapters() && (orch.wake_after || !p.vllm.slept) {
        p.phase = "wake";
        let t = Instant::now();
        if p.vllm.slept {
            backend.wake().await.map_err(|e| {
                ApiError::Internal(format!("Feedback update failed in phase 'wake': {e}"))
            })?;
            p.vllm.woke = true;
        }
        reload_names(state, &resolved).await.map_err(|e| {
            ApiError::Internal(format!("Feedback update failed in phase 'wake': {e}"))
        })?;
        p.timing.wake = ms(t);
    }
    Ok(())
}

/// The version serving uses after the request.
fn current_version(p: &Progress) -> Option<u64> {
    match &p.guardrail {
        Some(g) if g.rolled_back_to.is_some() => g.rolled_back_to,
        _ => p.version.as_ref().map(|v| v.version),
    }
}

/// Which bounds `probe` exceeds.
fn violations(probe: &claas_sdpo::ProbeStats, bounds: &Guardrail) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(max) = bounds.max_kl_to_base {
        // NaN counts as a violation.
        if probe.kl_to_base.is_nan() || probe.kl_to_base > max {
            out.push(format!("KL to base {:.4} > {max}", probe.kl_to_base));
        }
    }
    if let Some(min) = bounds.min_entropy {
        if probe.entropy.is_nan() || probe.entropy < min {
            out.push(format!("entropy {:.4} < {min}", probe.entropy));
        }
    }
    out
}

/// Probes the version just made; when it breaks a bound, makes its parent live again before
/// anything serves the new one (the swap below then reloads the parent's weights).
async fn guard(
    state: &ApiState,
    engine: &Arc<dyn TrainingEngine>,
    resolved: &ResolvedAdapter,
    info: &VersionInfo,
    bounds: Guardrail,
) -> Result<GuardrailOutcome, ApiError> {
    let (e, dir) = (engine.clone(), info.dir.clone());
    let probe = tokio::task::spawn_blocking(move || e.probe(&dir))
        .await
        .map_err(|e| ApiError::Internal(format!("guardrail probe task failed: {e}")))?
        .map_err(|e| engine_error("guardrail", e))?;
    let violations = violations(&probe, &bounds);
    let mut rolled_back_to = None;
    if !violations.is_empty() {
        if let Some(parent) = info.parent {
            let (store, id) = (state.store().clone(), resolved.id.clone());
            tokio::task::spawn_blocking(move || store.rollback(&id, parent))
                .await
                .map_err(|e| ApiError::Internal(format!("guardrail rollback task failed: {e}")))?
                .map_err(|e| {
                    ApiError::Internal(format!("Feedback update failed in phase 'guardrail': {e}"))
                })?;
            rolled_back_to = Some(parent);
            tracing::warn!(
                lora_id = resolved.id,
                version = info.version,
                parent,
                ?violations,
                "guardrail rolled the update back"
            );
        }
    }
    Ok(GuardrailOutcome {
        status: if rolled_back_to.is_some() {
            "rolled_back"
        } else {
            "passed"
        },
        probe,
        bounds,
        violations,
        rolled_back_to,
    })
}

/// Reloads the adapter under its own normalised name and under the name of every alias that
/// points at it (what clients such as OpenClaw request, e.g. `openclaw-assistant-latest`),
/// whichever of them the request named.
pub async fn reload_names(
    state: &ApiState,
    resolved: &ResolvedAdapter,
) -> Result<(), crate::backend::BackendError> {
    let backend = state.backend();
    let aliases = match state.store().aliases() {
        Ok(a) => a,
        Err(e) => {
            // The alias names keep their weights until the next swap; say so, and swap the rest.
            tracing::warn!(error = %e, "cannot read the aliases; reloading the adapter's own name only");
            Default::default()
        }
    };
    let mut names = vec![normalize_adapter_name(&resolved.id)];
    let pointing = aliases
        .iter()
        .filter(|(_, target)| **target == resolved.id)
        .map(|(alias, _)| alias.as_str());
    for alias in pointing.chain(resolved.alias.as_deref()) {
        let n = normalize_adapter_name(alias);
        if !names.contains(&n) {
            names.push(n);
        }
    }
    for name in names {
        backend.reload_adapter(&name, &resolved.dir).await?;
    }
    Ok(())
}

/// Handles a parsed `/v1/distill`: one SDPO step saved as a new version `{base}-{timestamp}`,
/// with `{base}-latest` moved to it. The optimizer state moves along to the new version.
pub async fn distill(state: &ApiState, req: FeedbackRequest) -> Result<DistillResponse, ApiError> {
    let res = distill_inner(state, &req).await;
    state.metrics().distill_done(res.is_ok());
    res
}

async fn distill_inner(
    state: &ApiState,
    req: &FeedbackRequest,
) -> Result<DistillResponse, ApiError> {
    let requested = req.lora_id().to_string();
    let resolved = resolve(state.store(), &requested).await?;
    let (_guard, resolved) = lock_resolved(state, resolved, &requested).await?;
    let engine = state.engine().ok_or_else(|| no_engine(state))?;
    let optimizer_dir = state
        .store()
        .optimizer_dir(&resolved.id)
        .map_err(|e| ApiError::Internal(format!("Distillation failed: {e}")))?;
    let mut job = DistillJob {
        adapter_id: resolved.id.clone(),
        adapter_dir: resolved.dir.clone(),
        optimizer_dir,
        training: req.training(),
        items: req
            .items
            .iter()
            .map(|i| sample_of(i, find_record(state, i).as_ref()))
            .collect(),
        teachers: None,
    };
    let t = Instant::now();
    job.teachers = remote_teachers(state, &engine, &job, "distill").await?;
    let output = run_distill(engine, job).await.map_err(|e| match e {
        EngineError::BadInput(m) => ApiError::Unprocessable(m),
        EngineError::Internal(m) => ApiError::Internal(format!("Distillation failed: {m}")),
    })?;
    let (metrics, timings) = (output.metadata.clone(), output.timings.clone());
    let store = state.store().clone();
    let base = requested.clone();
    let keep = state.config().keep_versions;
    let (saved, previous, pruned) = tokio::task::spawn_blocking(move || {
        let base_id = base.strip_suffix(LATEST_SUFFIX).unwrap_or(&base).to_string();
        let latest = format!("{base_id}{LATEST_SUFFIX}");
        let previous = store.aliases()?.get(&latest).cloned();
        let artifacts = output.artifacts;
        let saved = store.save_versioned(&base, None, true, |dir| artifacts.save_adapter(dir))?;
        store.save_state(&saved.id, OPTIMIZER_STATE, |dir| {
            artifacts.save_optimizer(dir)
        })?;
        // Each call makes a new adapter; like feedback versions, only the newest
        // CLAAS_KEEP_VERSIONS stay on disk (and any an alias still names).
        let pruned = match store.prune_stamped_saves(&base_id, keep) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(base = base_id, error = %e, "pruning old distill results failed; retried at the next call");
                Vec::new()
            }
        };
        // The version `-latest` named before, if it was an earlier distill result.
        let stamped = store.stamped_saves(&base_id)?;
        let previous = previous.filter(|p| *p != saved.id && stamped.contains(p));
        Ok::<_, StoreError>((saved, previous, pruned))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("Distillation failed: {e}")))?
    .map_err(|e| ApiError::Internal(format!("Distillation failed: {e}")))?;
    state
        .metrics()
        .step(t.elapsed().as_secs_f64(), Some(metrics.total_loss));
    if state.backend().serves_adapters() {
        // Best effort, like init: `{base}-latest` now names the new version, so a server that
        // serves the alias should see it. The saved version stands even if this fails.
        let mut names = vec![normalize_adapter_name(&saved.id)];
        if let Some(a) = &saved.latest_alias {
            names.push(normalize_adapter_name(a));
        }
        if let Ok(dir) = state.store().adapter_dir(&saved.id) {
            for name in names {
                if let Err(e) = state.backend().reload_adapter(&name, &dir).await {
                    tracing::warn!(name, error = %e, "failed to load the new version into the inference server");
                }
            }
        }
        // Served memory stays bounded: the result `-latest` left and every pruned one stop
        // being served under their own names (a request already running keeps the weights it
        // started with; a later one naming them is resolved from disk again, if still there).
        for old in previous.iter().chain(&pruned) {
            let name = normalize_adapter_name(old);
            if let Err(e) = state.backend().unload_adapter(&name).await {
                tracing::warn!(name, error = %e, "failed to unload an older distill result");
            }
        }
    }
    Ok(DistillResponse {
        metadata: DistillResultMetadata {
            metrics,
            timings_ms: timings,
            adapter_version: saved.version,
        },
        lora_id: saved.id,
    })
}

fn version_error(e: StoreError, what: &str) -> ApiError {
    match e {
        StoreError::NotFound(id) => ApiError::NotFound(format!("LoRA not found: {id}")),
        e @ StoreError::VersionNotFound { .. } => ApiError::NotFound(e.to_string()),
        other => ApiError::Internal(format!("{what}: {other}")),
    }
}

/// Handles `POST /v1/lora/rollback`: makes version `version` of the adapter live again (its
/// weights and its optimizer state) and hot-swaps it into serving exactly as an update does.
/// Logged like a feedback.
pub async fn rollback(state: &ApiState, lora_id: &str, version: u64) -> Result<Value, ApiError> {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let resolved = resolve(state.store(), lora_id).await?;
    let (_guard, resolved) = lock_resolved(state, resolved, lora_id).await?;
    let store = state.store().clone();
    let id = resolved.id.clone();
    let (previous, info) = tokio::task::spawn_blocking(move || {
        let previous = store.current_version(&id)?;
        store.rollback(&id, version).map(|info| (previous, info))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("Rollback failed: {e}")))?
    .map_err(|e| version_error(e, "Rollback failed"))?;
    let mut wake_ms = 0;
    if state.backend().serves_adapters() {
        let t = Instant::now();
        reload_names(state, &resolved)
            .await
            .map_err(|e| ApiError::Internal(format!("Rollback failed in phase 'wake': {e}")))?;
        wake_ms = ms(t);
    }
    let record = json!({
        "request_id": request_id,
        "timestamp_utc": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "status": "ok",
        "phase": "rollback",
        "kind": "rollback",
        "lora_id": lora_id,
        "resolved_lora_id": resolved.id,
        "adapter_version": info.version,
        "previous_version": previous,
        "version_name": info.name,
        "timing_ms": {"wake": wake_ms, "total": ms(started)},
    });
    let dir = state.config().feedback_log_dir.clone();
    let rid = request_id.clone();
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || write_feedback_log(&dir, &rid, record)).await
    {
        tracing::warn!(request_id, error = %e, "failed to write rollback log");
    }
    tracing::info!(lora_id, version, ?previous, "rolled back");
    Ok(json!({
        "status": "ok",
        "request_id": request_id,
        "lora_id": resolved.id,
        "version": info.version,
        "previous_version": previous,
        "name": info.name,
    }))
}

/// Handles `GET /v1/lora/versions`: every kept version, oldest first.
pub async fn versions(state: &ApiState, lora_id: &str) -> Result<Value, ApiError> {
    let resolved = resolve(state.store(), lora_id).await?;
    let store = state.store().clone();
    let id = resolved.id.clone();
    let list = tokio::task::spawn_blocking(move || store.versions(&id))
        .await
        .map_err(|e| ApiError::Internal(format!("Listing versions failed: {e}")))?
        .map_err(|e| version_error(e, "Listing versions failed"))?;
    let current = list.iter().find(|v| v.current).map(|v| v.version);
    let versions: Vec<Value> = list
        .into_iter()
        .map(|v| {
            json!({
                "version": v.version,
                "name": v.name,
                "created_utc": v.created_utc,
                "parent": v.parent,
                "current": v.current,
                "kind": v.meta.get("kind").cloned().unwrap_or(Value::Null),
                "request_id": v.meta.get("request_id").cloned().unwrap_or(Value::Null),
                "metrics": v.meta.get("metrics").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(json!({
        "lora_id": resolved.id,
        "alias": resolved.alias,
        "current": current,
        "versions": versions,
    }))
}

/// The adapter a served model name stands for (`None`: the base model): an adapter id or
/// alias, or the served form of either (`openclaw-assistant-latest`), optionally with `@v{N}`
/// for that immutable version. 404 when nothing matches.
pub async fn resolve_model(
    state: &ApiState,
    model: &str,
) -> Result<Option<ResolvedAdapter>, ApiError> {
    let base = &state.config().base_model_id;
    if model == base || state.engine().is_some_and(|e| e.base_model_id() == model) {
        return Ok(None);
    }
    let store = state.store().clone();
    let name = model.to_string();
    let mut hits = tokio::task::spawn_blocking(move || store.resolve_served(&name))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| version_error(e, "Resolving the model failed"))?;
    if hits.len() > 1 {
        return Err(ApiError::BadRequest(format!(
            "The model `{model}` matches several adapters ({}); name one by its id",
            hits.iter()
                .map(|h| h.reference.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let found = hits.pop().map(|m| m.resolved);
    match found {
        Some(r) => Ok(Some(r)),
        None => Err(ApiError::NotFound(format!(
            "The model `{model}` does not exist: neither the base model ({base}) nor an adapter or alias under the LoRA root"
        ))),
    }
}
