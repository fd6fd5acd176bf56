//! The inference server the API orchestrates around a training step: an external
//! vLLM-compatible server over HTTP, nothing, or (provided by the binary) the in-process
//! engine of `claas up`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

/// Boxed future returned by [`Backend`] methods (keeps the trait object-safe).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Failures talking to the inference server.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No inference server is configured for this operation.
    #[error("no inference server configured")]
    NotConfigured,
    /// Requests were still in flight when the drain timeout expired.
    #[error(
        "inference server still busy after {timeout_s}s: {running} running, {waiting} waiting"
    )]
    Busy {
        running: u64,
        waiting: u64,
        timeout_s: f64,
    },
    /// The server answered with a non-success status.
    #[error("{method} {url} returned HTTP {status}: {body}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    /// The server could not be reached.
    #[error("{method} {url} failed: {message}")]
    Transport {
        method: &'static str,
        url: String,
        message: String,
    },
    /// The server's answer did not have the expected shape.
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
    /// The server cannot sleep (vLLM or `claas serve` started without `--enable-sleep-mode`).
    /// Sleep only frees accelerator memory, so callers train without it.
    #[error("the inference server has no sleep mode (start it with --enable-sleep-mode): {0}")]
    SleepUnsupported(String),
}

/// `BackendHealth::status`: the three values the reference's health contract knows. A
/// sleeping server is `healthy` (with `sleeping: true`): it answers and wakes on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    NotConfigured,
}

/// State of the inference server as `/v1/health` reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendHealth {
    /// `healthy`, `unhealthy` or `not_configured`.
    pub status: HealthStatus,
    /// Which backend (`vllm`, `none`, `in-process`).
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleeping: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An upstream HTTP answer with its body as a stream, whatever its status (the chat proxy passes
/// errors through as the server wrote them).
pub struct Upstream {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`, if the server sent one.
    pub content_type: Option<String>,
    /// The body, chunk by chunk.
    pub body: futures::stream::BoxStream<'static, Result<bytes::Bytes, BackendError>>,
}

/// An inference server the feedback lifecycle drives. Object-safe so the binary can plug in
/// the in-process engine (`claas up`).
pub trait Backend: Send + Sync {
    /// Short name for health output and logs.
    fn kind(&self) -> &'static str;
    /// True when training needs the server drained and asleep first (a separate process
    /// sharing the accelerator). An in-process server hot-swaps instead.
    fn needs_sleep(&self) -> bool;
    /// True when the server serves adapters that must be reloaded after an update.
    fn serves_adapters(&self) -> bool;
    /// Liveness and state.
    fn health(&self) -> BoxFut<'_, BackendHealth>;
    /// Waits until no requests are running or waiting, or fails after `timeout`.
    fn drain(&self, timeout: Duration) -> BoxFut<'_, Result<(), BackendError>>;
    /// Per-token log-probabilities of `response` after `prompt` under the served `adapter`
    /// (the rollout policy, for the importance ratio).
    fn rollout_logprobs<'a>(
        &'a self,
        prompt: &'a str,
        response: &'a str,
        adapter: &'a str,
    ) -> BoxFut<'a, Result<Vec<f32>, BackendError>>;
    /// Frees accelerator memory (`level` 1 or 2, vLLM semantics).
    fn sleep(&self, level: u8) -> BoxFut<'_, Result<(), BackendError>>;
    /// Undoes [`Backend::sleep`].
    fn wake(&self) -> BoxFut<'_, Result<(), BackendError>>;
    /// Makes the server serve the adapter folder at `path` under `name` (unload + load).
    fn reload_adapter<'a>(
        &'a self,
        name: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<(), BackendError>>;
    /// Stops serving the adapter `name` (a no-op when it is not loaded). The default does
    /// nothing, for servers that load adapters by path on demand.
    fn unload_adapter<'a>(&'a self, _name: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    /// Sends `body` as JSON (`POST`; `None` = `GET`) to the server's `path` (e.g.
    /// `/v1/chat/completions`) with the server's credentials, for the API's OpenAI proxy.
    fn forward<'a>(
        &'a self,
        _path: &'a str,
        _body: Option<Value>,
    ) -> BoxFut<'a, Result<Upstream, BackendError>> {
        Box::pin(async { Err(BackendError::NotConfigured) })
    }
}

/// vLLM's served-adapter name for an adapter id (see [`claas_store::served_name`]).
pub use claas_store::served_name as normalize_adapter_name;

/// Sums `vllm:num_requests_running` and `vllm:num_requests_waiting` over all label sets of a
/// Prometheus text exposition.
pub fn parse_queue_metrics(text: &str) -> (u64, u64) {
    let mut running = 0.0;
    let mut waiting = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let value = || {
            line.rsplit(char::is_whitespace)
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if is_metric(line, "vllm:num_requests_running") {
            running += value();
        } else if is_metric(line, "vllm:num_requests_waiting") {
            waiting += value();
        }
    }
    (running.max(0.0) as u64, waiting.max(0.0) as u64)
}

fn is_metric(line: &str, name: &str) -> bool {
    line.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(char::is_whitespace))
}

/// No inference server: nothing to drain, sleep or reload.
#[derive(Debug, Default, Clone)]
pub struct NoBackend;

impl Backend for NoBackend {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn needs_sleep(&self) -> bool {
        false
    }
    fn serves_adapters(&self) -> bool {
        false
    }
    fn health(&self) -> BoxFut<'_, BackendHealth> {
        Box::pin(async {
            BackendHealth {
                status: HealthStatus::NotConfigured,
                kind: "none".into(),
                url: None,
                sleeping: None,
                error: None,
            }
        })
    }
    fn drain(&self, _timeout: Duration) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    fn rollout_logprobs<'a>(
        &'a self,
        _prompt: &'a str,
        _response: &'a str,
        _adapter: &'a str,
    ) -> BoxFut<'a, Result<Vec<f32>, BackendError>> {
        Box::pin(async { Err(BackendError::NotConfigured) })
    }
    fn sleep(&self, _level: u8) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    fn wake(&self) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
    fn reload_adapter<'a>(
        &'a self,
        _name: &'a str,
        _path: &'a Path,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What [`HttpBackend::prompt_topk`] returns: per scored position, the listed alternatives and
/// the log-prob of the token actually there (if listed).
#[derive(Debug, Clone, PartialEq)]
pub struct TopkScores {
    pub rows: Vec<Vec<(u32, f32)>>,
    pub actual: Vec<Option<f32>>,
}

/// A vLLM-compatible server (`claas serve` or vLLM with `--enable-sleep-mode` and
/// `VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`).
#[derive(Debug, Clone)]
pub struct HttpBackend {
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
    poll_interval: Duration,
    /// Set the first time `/sleep` shows the server has no sleep mode; from then on sleep is
    /// skipped without asking again (shared by clones: it is a property of the server).
    no_sleep_mode: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether a failed `POST /sleep` means the server has no sleep mode: vLLM registers the
/// route only with sleep mode (404); `claas serve` answers 400 naming the flag.
fn is_no_sleep_mode(e: &BackendError) -> bool {
    match e {
        BackendError::Status { status: 404, .. } => true,
        BackendError::Status {
            status: 400, body, ..
        } => body.to_ascii_lowercase().contains("sleep mode"),
        _ => false,
    }
}

impl HttpBackend {
    /// `base_url` may end in `/` or `/v1` (both accepted, as the reference's entrypoint does).
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        let mut base = base_url.trim().trim_end_matches('/').to_string();
        if let Some(b) = base.strip_suffix("/v1") {
            base = b.to_string();
        }
        HttpBackend {
            base_url: base,
            api_key: api_key.filter(|k| !k.trim().is_empty()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap_or_default(),
            poll_interval: Duration::from_millis(500),
            no_sleep_mode: Default::default(),
        }
    }

    /// Changes how often `drain` polls `/metrics` (default 0.5 s, as the reference).
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// The normalised base URL (no trailing `/v1`).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn send(
        &self,
        method: &'static str,
        rb: reqwest::RequestBuilder,
        url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, BackendError> {
        let resp =
            self.auth(rb)
                .timeout(timeout)
                .send()
                .await
                .map_err(|e| BackendError::Transport {
                    method,
                    url: url.to_string(),
                    message: e.to_string(),
                })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(500);
        Err(BackendError::Status {
            method,
            url: url.to_string(),
            status,
            body,
        })
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<reqwest::Response, BackendError> {
        let url = self.url(path);
        self.send(
            "POST",
            self.client.post(&url).json(body),
            &url,
            Duration::from_secs(60),
        )
        .await
    }

    async fn json_of(url: &str, resp: reqwest::Response) -> Result<Value, BackendError> {
        resp.json::<Value>()
            .await
            .map_err(|e| BackendError::Protocol {
                url: url.to_string(),
                message: format!("invalid JSON: {e}"),
            })
    }

    async fn queue_sizes(&self) -> Result<(u64, u64), BackendError> {
        let url = self.url("/metrics");
        let resp = self
            .send("GET", self.client.get(&url), &url, Duration::from_secs(10))
            .await?;
        let text = resp.text().await.map_err(|e| BackendError::Protocol {
            url: url.clone(),
            message: e.to_string(),
        })?;
        Ok(parse_queue_metrics(&text))
    }

    /// The first model the server lists (`GET /v1/models`).
    pub async fn first_model(&self) -> Result<String, BackendError> {
        let url = self.url("/v1/models");
        let resp = self
            .send("GET", self.client.get(&url), &url, Duration::from_secs(30))
            .await?;
        let v = Self::json_of(&url, resp).await?;
        v.pointer("/data/0/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| BackendError::Protocol {
                url,
                message: "no model in the /v1/models answer".into(),
            })
    }

    /// Scores the token ids `ids` with `prompt_logprobs = k` (vLLM's extension of
    /// `/v1/completions`) and returns, for every position from `from` on, the `(token id,
    /// log-prob)` pairs the server listed and the log-prob of the token actually there.
    pub async fn prompt_topk(
        &self,
        model: &str,
        ids: &[u32],
        from: usize,
        k: usize,
    ) -> Result<TopkScores, BackendError> {
        let url = self.url("/v1/completions");
        let body = json!({
            "model": model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "prompt_logprobs": k,
        });
        // Scoring a long prompt on a large teacher can take a while; generation is 1 token.
        let resp = self
            .send(
                "POST",
                self.client.post(&url).json(&body),
                &url,
                Duration::from_secs(600),
            )
            .await?;
        let v = Self::json_of(&url, resp).await?;
        let proto = |m: String| BackendError::Protocol {
            url: url.clone(),
            message: m,
        };
        let entries = v
            .pointer("/choices/0/prompt_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| proto("no choices[0].prompt_logprobs in the completion".into()))?;
        if entries.len() != ids.len() {
            return Err(proto(format!(
                "prompt_logprobs has {} entries for {} prompt tokens",
                entries.len(),
                ids.len()
            )));
        }
        let mut rows = Vec::with_capacity(ids.len().saturating_sub(from));
        let mut actual = Vec::with_capacity(rows.capacity());
        for (pos, entry) in entries.iter().enumerate().skip(from) {
            let map = entry
                .as_object()
                .ok_or_else(|| proto(format!("prompt_logprobs[{pos}] is not an object")))?;
            let mut row = Vec::with_capacity(map.len());
            for (id, lp) in map {
                let id: u32 = id.parse().map_err(|_| {
                    proto(format!(
                        "prompt_logprobs[{pos}] has key {id:?}, not a token id"
                    ))
                })?;
                let lp =
                    lp.get("logprob").unwrap_or(lp).as_f64().ok_or_else(|| {
                        proto(format!("prompt_logprobs[{pos}][{id}] has no logprob"))
                    })?;
                row.push((id, lp as f32));
            }
            actual.push(
                row.iter()
                    .find(|(id, _)| *id == ids[pos])
                    .map(|(_, lp)| *lp),
            );
            rows.push(row);
        }
        Ok(TopkScores { rows, actual })
    }

    async fn fetch_logprobs(
        &self,
        prompt: &str,
        response: &str,
        model: &str,
    ) -> Result<Vec<f32>, BackendError> {
        // Same recipe as the reference: count the prompt's tokens, score prompt + response with
        // prompt_logprobs and keep the entries after the prompt.
        let tok_url = self.url("/tokenize");
        let tok = self
            .post_json("/tokenize", &json!({ "model": model, "prompt": prompt }))
            .await?;
        let tok = Self::json_of(&tok_url, tok).await?;
        let count = tok
            .get("count")
            .and_then(Value::as_u64)
            .or_else(|| {
                tok.get("tokens")
                    .and_then(Value::as_array)
                    .map(|a| a.len() as u64)
            })
            .ok_or_else(|| BackendError::Protocol {
                url: tok_url.clone(),
                message: "no `count` in the /tokenize answer".into(),
            })? as usize;
        let comp_url = self.url("/v1/completions");
        let comp = self
            .post_json(
                "/v1/completions",
                &json!({
                    "model": model,
                    "prompt": format!("{prompt}{response}"),
                    // The reference sends 0, which vLLM rejects (max_tokens must be at least 1)
                    // and the reference then silently trains without rollout log-probs.
                    "max_tokens": 1,
                    "prompt_logprobs": 1,
                }),
            )
            .await?;
        let comp = Self::json_of(&comp_url, comp).await?;
        let proto = |m: &str| BackendError::Protocol {
            url: comp_url.clone(),
            message: m.to_string(),
        };
        let entries = comp
            .pointer("/choices/0/prompt_logprobs")
            .and_then(Value::as_array)
            .ok_or_else(|| proto("no choices[0].prompt_logprobs in the completion"))?;
        let mut out = Vec::new();
        for entry in entries.iter().skip(count) {
            let Some(map) = entry.as_object() else {
                continue;
            };
            // vLLM lists the actual prompt token first, then the top-k alternatives.
            let lp = map
                .values()
                .next()
                .and_then(|v| v.get("logprob").or(Some(v)))
                .and_then(Value::as_f64)
                .ok_or_else(|| proto("a prompt_logprobs entry has no logprob"))?;
            out.push(lp as f32);
        }
        Ok(out)
    }
}

impl Backend for HttpBackend {
    fn kind(&self) -> &'static str {
        "vllm"
    }
    fn needs_sleep(&self) -> bool {
        true
    }
    fn serves_adapters(&self) -> bool {
        true
    }

    fn health(&self) -> BoxFut<'_, BackendHealth> {
        Box::pin(async move {
            let url = self.url("/health");
            let mut h = BackendHealth {
                status: HealthStatus::Healthy,
                kind: "vllm".into(),
                url: Some(self.base_url.clone()),
                sleeping: None,
                error: None,
            };
            if let Err(e) = self
                .send("GET", self.client.get(&url), &url, Duration::from_secs(5))
                .await
            {
                h.status = HealthStatus::Unhealthy;
                h.error = Some(e.to_string());
                return h;
            }
            let sl_url = self.url("/is_sleeping");
            if let Ok(resp) = self
                .send(
                    "GET",
                    self.client.get(&sl_url),
                    &sl_url,
                    Duration::from_secs(5),
                )
                .await
            {
                if let Ok(v) = resp.json::<Value>().await {
                    h.sleeping = v.get("is_sleeping").and_then(Value::as_bool);
                }
            }
            h
        })
    }

    fn drain(&self, timeout: Duration) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let (running, waiting) = self.queue_sizes().await?;
                if running == 0 && waiting == 0 {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(BackendError::Busy {
                        running,
                        waiting,
                        timeout_s: timeout.as_secs_f64(),
                    });
                }
                tracing::info!(running, waiting, "inference server busy; polling again");
                tokio::time::sleep(self.poll_interval).await;
            }
        })
    }

    fn rollout_logprobs<'a>(
        &'a self,
        prompt: &'a str,
        response: &'a str,
        adapter: &'a str,
    ) -> BoxFut<'a, Result<Vec<f32>, BackendError>> {
        Box::pin(self.fetch_logprobs(prompt, response, adapter))
    }

    fn sleep(&self, level: u8) -> BoxFut<'_, Result<(), BackendError>> {
        use std::sync::atomic::Ordering;
        Box::pin(async move {
            let url = self.url("/sleep");
            if self.no_sleep_mode.load(Ordering::SeqCst) {
                return Err(BackendError::SleepUnsupported(url));
            }
            let res = self
                .send(
                    "POST",
                    self.client.post(&url).query(&[("level", level)]),
                    &url,
                    Duration::from_secs(120),
                )
                .await;
            match res {
                Ok(_) => Ok(()),
                Err(e) if is_no_sleep_mode(&e) => {
                    if !self.no_sleep_mode.swap(true, Ordering::SeqCst) {
                        tracing::warn!(url, error = %e, "the inference server has no sleep mode; training without putting it to sleep (it keeps its accelerator memory)");
                    }
                    Err(BackendError::SleepUnsupported(e.to_string()))
                }
                Err(e) => Err(e),
            }
        })
    }

    fn wake(&self) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let url = self.url("/wake_up");
            self.send(
                "POST",
                self.client.post(&url),
                &url,
                Duration::from_secs(120),
            )
            .await
            .map(|_| ())
        })
    }

    fn reload_adapter<'a>(
        &'a self,
        name: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            match self
                .post_json("/v1/unload_lora_adapter", &json!({ "lora_name": name }))
                .await
            {
                Ok(_) => {}
                // Not loaded yet (first run or already unloaded): vLLM answers 404 or 400.
                Err(BackendError::Status { status, .. }) if status == 404 || status == 400 => {}
                Err(e) => return Err(e),
            }
            self.post_json(
                "/v1/load_lora_adapter",
                &json!({ "lora_name": name, "lora_path": path.to_string_lossy() }),
            )
            .await
            .map(|_| ())
        })
    }

    fn unload_adapter<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        Box::pin(async move {
            match self
                .post_json("/v1/unload_lora_adapter", &json!({ "lora_name": name }))
                .await
            {
                Ok(_) => Ok(()),
                // Not loaded: vLLM answers 404 or 400.
                Err(BackendError::Status { status, .. }) if status == 404 || status == 400 => {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
    }

    fn forward<'a>(
        &'a self,
        path: &'a str,
        body: Option<Value>,
    ) -> BoxFut<'a, Result<Upstream, BackendError>> {
        Box::pin(async move {
            let url = self.url(path);
            let (method, rb) = match &body {
                Some(b) => ("POST", self.client.post(&url).json(b)),
                None => ("GET", self.client.get(&url)),
            };
            // A generation may stream for a long time; the client's own timeout bounds it.
            let resp = self
                .auth(rb)
                .timeout(Duration::from_secs(3600))
                .send()
                .await
                .map_err(|e| BackendError::Transport {
                    method,
                    url: url.clone(),
                    message: e.to_string(),
                })?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .bytes_stream()
                .map(move |r| {
                    r.map_err(|e| BackendError::Transport {
                        method,
                        url: url.clone(),
                        message: e.to_string(),
                    })
                })
                .boxed();
            Ok(Upstream {
                status,
                content_type,
                body,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_status_speaks_the_documented_vocabulary() {
        // The type leaves no room for anything else (the in-process backend once said
        // `ok`/`sleeping`).
        let all = [
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::NotConfigured,
        ];
        let names: Vec<Value> = all
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(
            names,
            vec![
                json!("healthy"),
                json!("unhealthy"),
                json!("not_configured")
            ]
        );
    }

    #[test]
    fn adapter_names() {
        assert_eq!(
            normalize_adapter_name("openclaw/assistant-latest"),
            "openclaw-assistant-latest"
        );
        assert_eq!(normalize_adapter_name("/a//b c/"), "a-b-c");
        assert_eq!(normalize_adapter_name("x.y_z-1"), "x.y_z-1");
        assert_eq!(normalize_adapter_name("///"), "lora");
    }

    #[test]
    fn queue_metrics() {
        let text = "# HELP vllm:num_requests_running x\n\
            vllm:num_requests_running{model_name=\"a\"} 2.0\n\
            vllm:num_requests_running{model_name=\"b\"} 1.0\n\
            vllm:num_requests_waiting 3\n\
            vllm:num_requests_waiting_by_reason{r=\"x\"} 7\n";
        assert_eq!(parse_queue_metrics(text), (3, 3));
        assert_eq!(parse_queue_metrics(""), (0, 0));
    }

    #[test]
    fn base_url_forms() {
        assert_eq!(
            HttpBackend::new("http://h:8000/v1/", None).base_url(),
            "http://h:8000"
        );
        assert_eq!(
            HttpBackend::new("http://h:8000", None).base_url(),
            "http://h:8000"
        );
    }
}
