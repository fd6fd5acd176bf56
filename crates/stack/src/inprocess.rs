//! The feedback API's view of a serving engine in the same process (`claas up`): no drain,
//! no sleep (serving and training share one copy of the base weights), and an adapter swap is
//! a registry update that in-flight requests never see (they keep the adapter they started with).

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use claas_api::backend::{Backend, BackendError, BackendHealth, BoxFut, HealthStatus, Upstream};
use claas_chat::Tokenizer;
use claas_engine::{Engine, Event, GenerateRequest, SamplingParams};
use futures::StreamExt;
use serde_json::Value;
use tower::ServiceExt;

/// [`Backend`] over an in-process [`Engine`].
#[derive(Clone)]
pub struct InProcessBackend {
    engine: Engine,
    tokenizer: Tokenizer,
    /// The OpenAI server's routes over the same engine, for the API's proxy (no socket).
    openai: Option<(axum::Router, Option<String>)>,
}

impl InProcessBackend {
    /// Wraps a running engine and the tokenizer of its model.
    pub fn new(engine: Engine, tokenizer: Tokenizer) -> Self {
        InProcessBackend {
            engine,
            tokenizer,
            openai: None,
        }
    }

    /// Lets the API's OpenAI proxy call `router` (`claas serve`'s routes over this engine)
    /// in process, with `api_key` as its bearer token when the server requires one.
    pub fn with_openai_router(mut self, router: axum::Router, api_key: Option<String>) -> Self {
        self.openai = Some((router, api_key));
        self
    }

    fn fail(message: String) -> BackendError {
        BackendError::Protocol {
            url: "in-process engine".into(),
            message,
        }
    }

    /// Runs an engine call that may take a while (weights, disk) off the async runtime.
    async fn blocking<F>(&self, f: F) -> Result<(), BackendError>
    where
        F: FnOnce(&Engine) -> Result<(), claas_engine::EngineError> + Send + 'static,
    {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || f(&engine))
            .await
            .map_err(|e| Self::fail(e.to_string()))?
            .map_err(|e| Self::fail(e.to_string()))
    }

    /// The reference's recipe, without HTTP: count the prompt's tokens, score prompt + response
    /// with prompt log-probabilities, keep the entries after the prompt.
    async fn logprobs(
        &self,
        prompt: &str,
        response: &str,
        adapter: &str,
    ) -> Result<Vec<f32>, BackendError> {
        let count = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Self::fail(e.to_string()))?
            .len();
        let ids = self
            .tokenizer
            .encode(&format!("{prompt}{response}"), true)
            .map_err(|e| Self::fail(e.to_string()))?;
        let adapter = (!adapter.is_empty() && self.engine.adapter(adapter).is_some())
            .then(|| adapter.to_string());
        let req = GenerateRequest {
            prompt: ids,
            adapter,
            params: SamplingParams {
                temperature: 0.0,
                max_tokens: 1,
                ..SamplingParams::default()
            },
            n: 1,
            prompt_logprobs: Some(0),
        };
        let mut handle = self
            .engine
            .submit(req)
            .map_err(|e| Self::fail(e.to_string()))?;
        while let Some(ev) = handle.events.recv().await {
            match ev {
                Event::PromptLogprobs(entries) => {
                    return Ok(entries
                        .into_iter()
                        .skip(count)
                        .map(|e| e.map(|t| t.logprob).unwrap_or(0.0))
                        .collect());
                }
                Event::Error(e) => return Err(Self::fail(e)),
                _ => {}
            }
        }
        Err(Self::fail(
            "the engine ended the request without prompt logprobs".into(),
        ))
    }
}

impl Backend for InProcessBackend {
    fn forward<'a>(
        &'a self,
        path: &'a str,
        body: Option<Value>,
    ) -> BoxFut<'a, Result<Upstream, BackendError>> {
        Box::pin(async move {
            let Some((router, key)) = &self.openai else {
                return Err(BackendError::NotConfigured);
            };
            let mut req = Request::builder().uri(path);
            if let Some(k) = key {
                req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
            }
            let req = match &body {
                Some(b) => req
                    .method(Method::POST)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(b.to_string())),
                None => req.method(Method::GET).body(Body::empty()),
            }
            .map_err(|e| Self::fail(e.to_string()))?;
            let resp = router
                .clone()
                .oneshot(req)
                .await
                .map_err(|e| Self::fail(e.to_string()))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .into_body()
                .into_data_stream()
                .map(|r| r.map_err(|e| Self::fail(e.to_string())))
                .boxed();
            Ok(Upstream {
                status,
                content_type,
                body,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "in-process"
    }

    fn needs_sleep(&self) -> bool {
        false
    }

    fn serves_adapters(&self) -> bool {
        true
    }

    fn health(&self) -> BoxFut<'_, BackendHealth> {
        Box::pin(async move {
            let sleeping = self.engine.sleep_level() > 0;
            BackendHealth {
                // The reference's vocabulary; sleeping is its own field.
                status: HealthStatus::Healthy,
                kind: "in-process".into(),
                url: None,
                sleeping: Some(sleeping),
                error: None,
            }
        })
    }

    fn drain(&self, _timeout: Duration) -> BoxFut<'_, Result<(), BackendError>> {
        // Training does not need the engine idle: it uses the same frozen weights read-only.
        Box::pin(async { Ok(()) })
    }

    fn rollout_logprobs<'a>(
        &'a self,
        prompt: &'a str,
        response: &'a str,
        adapter: &'a str,
    ) -> BoxFut<'a, Result<Vec<f32>, BackendError>> {
        Box::pin(self.logprobs(prompt, response, adapter))
    }

    fn sleep(&self, level: u8) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(self.blocking(move |e| e.sleep(level).map(drop)))
    }

    fn wake(&self) -> BoxFut<'_, Result<(), BackendError>> {
        Box::pin(self.blocking(|e| e.wake_up().map(drop)))
    }

    fn reload_adapter<'a>(
        &'a self,
        name: &'a str,
        path: &'a Path,
    ) -> BoxFut<'a, Result<(), BackendError>> {
        let (name, path) = (name.to_string(), path.to_path_buf());
        // Loading under an existing name replaces it atomically: no unload gap.
        Box::pin(self.blocking(move |e| e.load_adapter(&name, &path).map(drop)))
    }

    fn unload_adapter<'a>(&'a self, name: &'a str) -> BoxFut<'a, Result<(), BackendError>> {
        // Requests that pinned it finish on it; unknown names are already unloaded.
        self.engine.unload_adapter(name);
        Box::pin(async { Ok(()) })
    }
}
