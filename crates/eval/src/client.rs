//! The few claas API calls the eval makes, over plain HTTP so it runs against any claas stack.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{EvalError, Result};

/// An HTTP client of one claas API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// One chat completion request through the API's proxy.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    pub model: &'a str,
    pub system: &'a str,
    pub user: &'a str,
    pub max_tokens: u32,
    pub temperature: f64,
    pub seed: u64,
    /// Ask for this many alternatives per token (0 = no log-probabilities).
    pub top_logprobs: u32,
}

/// A chat answer with what the collapse metrics need.
#[derive(Debug, Clone, Default)]
pub struct ChatAnswer {
    /// The completion id the proxy recorded (feedback trains on exactly these tokens).
    pub id: Option<String>,
    pub text: String,
    /// The generated tokens (when log-probabilities were asked for).
    pub tokens: Vec<String>,
    /// Per generated token: the top-k log-probabilities returned.
    pub top_logprobs: Vec<Vec<f64>>,
}

/// `/v1/score` of a completion after chat messages.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub logprobs: Vec<f64>,
    pub logprob_sum: f64,
}

impl ApiClient {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`), sending `key` as bearer.
    pub fn new(base: &str, key: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            // Generous: a training step or long generation on CPU can take minutes.
            .timeout(Duration::from_secs(900))
            .build()
            .map_err(|e| EvalError::Http {
                url: base.to_string(),
                source: e,
            })?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            key: key.filter(|k| !k.is_empty()),
        })
    }

    async fn send(&self, req: reqwest::RequestBuilder, url: &str) -> Result<Value> {
        let req = match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        };
        let http_err = |e| EvalError::Http {
            url: url.to_string(),
            source: e,
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status();
        let text = resp.text().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(EvalError::Status {
                url: url.to_string(),
                status: status.as_u16(),
                body: text.chars().take(2000).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| EvalError::Answer {
            url: url.to_string(),
            message: format!(
                "not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.post(&url).json(body), &url).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.send(self.http.get(&url), &url).await
    }

    fn answer_err(&self, path: &str, message: String) -> EvalError {
        EvalError::Answer {
            url: format!("{}{path}", self.base),
            message,
        }
    }

    /// `GET /v1/models`: served model ids, base models (no `parent`) first.
    pub async fn models(&self) -> Result<Vec<String>> {
        let v = self.get("/v1/models").await?;
        let data = v["data"]
            .as_array()
            .ok_or_else(|| self.answer_err("/v1/models", "no `data` list".into()))?;
        let mut base = Vec::new();
        let mut adapters = Vec::new();
        for m in data {
            if let Some(id) = m["id"].as_str() {
                if m["parent"].is_null() {
                    base.push(id.to_string());
                } else {
                    adapters.push(id.to_string());
                }
            }
        }
        base.extend(adapters);
        Ok(base)
    }

    /// `POST /v1/lora/init`: a fresh adapter; returns the id the API created. A run starts
    /// fresh, so an adapter of an earlier run under the same name is replaced (`overwrite`;
    /// the API keeps the old one as a version).
    pub async fn init_lora(&self, lora_id: &str, base_model: &str) -> Result<String> {
        let v = self
            .post(
                "/v1/lora/init",
                &json!({"lora_id": lora_id, "base_model": base_model, "overwrite": true}),
            )
            .await?;
        v["lora_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.answer_err("/v1/lora/init", format!("no lora_id in {v}")))
    }

    /// `POST /v1/chat/completions` through the proxy with a system and a user message.
    pub async fn chat(&self, r: &ChatRequest<'_>) -> Result<ChatAnswer> {
        let mut body = json!({
            "model": r.model,
            "messages": [
                {"role": "system", "content": r.system},
                {"role": "user", "content": r.user},
            ],
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "seed": r.seed,
        });
        if r.top_logprobs > 0 {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(r.top_logprobs);
        }
        let path = "/v1/chat/completions";
        let v = self.post(path, &body).await?;
        let choice = &v["choices"][0];
        let message = choice
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| self.answer_err(path, format!("no choices[0].message in {v}")))?;
        // `content` is null when a reasoning model spent the whole budget thinking: that is an
        // (empty) answer, not a broken server.
        let text = message["content"].as_str().unwrap_or_default().to_string();
        let content = choice["logprobs"]["content"].as_array();
        let tokens = content
            .map(|toks| {
                toks.iter()
                    .filter_map(|t| t["token"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let top_logprobs = content
            .map(|toks| {
                toks.iter()
                    .map(|t| {
                        t["top_logprobs"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|e| e["logprob"].as_f64()).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ChatAnswer {
            id: v["id"].as_str().map(str::to_string),
            text,
            tokens,
            top_logprobs,
        })
    }

    /// `POST /v1/score`: log-probabilities of `completion` after a system and a user message
    /// under `model` (a base model or a served adapter name).
    pub async fn score(
        &self,
        model: &str,
        system: &str,
        user: &str,
        completion: &str,
    ) -> Result<Score> {
        let path = "/v1/score";
        let v = self
            .post(
                path,
                &json!({
                    "model": model,
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": user},
                    ],
                    "completion": completion,
                }),
            )
            .await?;
        let logprobs: Vec<f64> = v["logprobs"]
            .as_array()
            .ok_or_else(|| self.answer_err(path, format!("no logprobs in {v}")))?
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NEG_INFINITY))
            .collect();
        let logprob_sum = v["logprob_sum"]
            .as_f64()
            .unwrap_or_else(|| logprobs.iter().sum());
        Ok(Score {
            logprobs,
            logprob_sum,
        })
    }

    /// `POST /v1/feedback` of a batch (no sleep/wake: the eval owns the stack while it runs).
    pub async fn feedback(&self, requests: Vec<Value>) -> Result<Value> {
        self.post(
            "/v1/feedback",
            &json!({
                "requests": requests,
                "orchestration": {"sleep_before": false, "wake_after": false},
            }),
        )
        .await
    }
}
