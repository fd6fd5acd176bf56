//! API settings, read from the same environment variables as the reference compose file.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the API needs to know at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    /// `CLAAS_LORA_ROOT` (default `./loras`).
    pub lora_root: PathBuf,
    /// `CLAAS_BASE_MODEL_ID`: the model the trainer loads (folder, hub id or `builtin:tiny`;
    /// default `Qwen/Qwen3-8B`).
    pub base_model_id: String,
    /// `VLLM_BASE_URL`: the inference server to orchestrate; unset or empty = none.
    pub vllm_base_url: Option<String>,
    /// `VLLM_API_KEY`.
    pub vllm_api_key: Option<String>,
    /// `VLLM_ROLLOUT_MODEL`: served model used for rollout log-probabilities. `None` = derive
    /// from the adapter id; `Some("")` = never fetch.
    pub vllm_rollout_model: Option<String>,
    /// `FEEDBACK_LOG_DIR` (default `./feedback_logs`).
    pub feedback_log_dir: PathBuf,
    /// `CLAAS_ALLOWED_INIT_BASE_MODELS` (comma-separated; default `Qwen/Qwen3-8B` plus the
    /// configured base model).
    pub allowed_init_base_models: Vec<String>,
    /// `CLAAS_FEEDBACK_LOCK_TIMEOUT_S` (or the reference's `FEEDBACK_LOCK_TIMEOUT_S`; 120 s).
    pub lock_timeout: Duration,
    /// `FEEDBACK_DRAIN_TIMEOUT_S` (30 s).
    pub drain_timeout: Duration,
    /// `FEEDBACK_WAKE_ON_FAILURE` (true): wake after a failure even if the request said not to.
    pub wake_on_failure: bool,
    /// `CLAAS_TEACHER_BASE_URL`: vLLM-compatible server of the `teacher_mode: "remote"` teacher;
    /// unset = remote mode is refused (422).
    pub teacher_base_url: Option<String>,
    /// `CLAAS_TEACHER_MODEL`: its served model name (default: the first it lists).
    pub teacher_model: Option<String>,
    /// `CLAAS_TEACHER_API_KEY`.
    pub teacher_api_key: Option<String>,
    /// `CLAAS_COMPLETION_CACHE_SIZE`: completion records kept for feedback (the reference's
    /// `completion_cache_size`, 100).
    pub completion_cache_size: usize,
    /// `CLAAS_COMPLETION_CACHE_TTL_S`: how long a completion record lives (3600 s, as the
    /// reference).
    pub completion_cache_ttl: Duration,
    /// `CLAAS_KEEP_VERSIONS`: versions kept per adapter (20; the current one always stays).
    pub keep_versions: usize,
    /// `CLAAS_API_KEY`: when set, routes that write or expose conversations need it (bearer
    /// token, or the dashboard's `claas_api_key` cookie), compared exactly. A value with
    /// surrounding whitespace is refused at start-up rather than trimmed: a key pasted with a
    /// stray space would otherwise differ from what its clients send.
    pub api_key: Option<String>,
    /// `CLAAS_MAX_BODY_BYTES`: largest request body (8 MiB); larger ones get a 413 before
    /// they are read or parsed.
    pub max_body_bytes: usize,
    /// `CLAAS_GUARDRAIL_MAX_KL`, `CLAAS_GUARDRAIL_MIN_ENTROPY`: bounds of the post-update
    /// check (unset = off); a request's `guardrail` overrides them.
    pub guardrail: crate::types::Guardrail,
    /// `CLAAS_EVAL_DIR`: where `claas eval` runs are read from for `/v1/eval`
    /// (`./data/evals`, as the reference).
    pub eval_dir: PathBuf,
}

/// A setting that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {name}={value:?}: {message}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub message: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            lora_root: PathBuf::from("./loras"),
            base_model_id: "Qwen/Qwen3-8B".into(),
            vllm_base_url: None,
            vllm_api_key: None,
            vllm_rollout_model: None,
            feedback_log_dir: PathBuf::from("./feedback_logs"),
            allowed_init_base_models: vec!["Qwen/Qwen3-8B".into()],
            lock_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(30),
            wake_on_failure: true,
            teacher_base_url: None,
            teacher_model: None,
            teacher_api_key: None,
            completion_cache_size: 100,
            completion_cache_ttl: Duration::from_secs(3600),
            keep_versions: 20,
            api_key: None,
            max_body_bytes: crate::body::DEFAULT_MAX_BODY_BYTES,
            guardrail: crate::types::Guardrail::default(),
            eval_dir: PathBuf::from("./data/evals"),
        }
    }
}

/// Refuses an API key with surrounding whitespace (it is compared exactly, and a stray space
/// from a pasted value would lock every client out or, trimmed, accept a key nobody set). The
/// error does not echo the key. For keys set outside the environment, e.g. `claas up --api-key`.
pub fn check_api_key(key: &str) -> Result<&str, ConfigError> {
    if key.trim() != key || key.is_empty() {
        return Err(ConfigError {
            name: "CLAAS_API_KEY".into(),
            value: "<redacted>".into(),
            message: "the key is empty or has leading or trailing whitespace; remove it (keys are compared exactly)".into(),
        });
    }
    Ok(key)
}

fn count(name: &str, raw: &str, min: usize) -> Result<usize, ConfigError> {
    raw.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= min)
        .ok_or_else(|| ConfigError {
            name: name.into(),
            value: raw.into(),
            message: format!("expected a whole number >= {min}"),
        })
}

fn seconds(name: &str, raw: &str) -> Result<Duration, ConfigError> {
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| ConfigError {
            name: name.into(),
            value: raw.into(),
            message: "expected a non-negative number of seconds".into(),
        })
}

fn flag(raw: &str) -> bool {
    matches!(
        raw.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl ApiConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (testable without touching the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = ApiConfig::default();
        if let Some(v) = get("CLAAS_LORA_ROOT").filter(|v| !v.trim().is_empty()) {
            c.lora_root = PathBuf::from(v);
        }
        if let Some(v) = get("CLAAS_BASE_MODEL_ID").filter(|v| !v.trim().is_empty()) {
            c.base_model_id = v.trim().to_string();
        }
        c.vllm_base_url = get("VLLM_BASE_URL")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        c.vllm_api_key = get("VLLM_API_KEY")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        c.vllm_rollout_model = get("VLLM_ROLLOUT_MODEL").map(|v| v.trim().to_string());
        if let Some(v) = get("FEEDBACK_LOG_DIR").filter(|v| !v.trim().is_empty()) {
            c.feedback_log_dir = PathBuf::from(v);
        }
        match get("CLAAS_ALLOWED_INIT_BASE_MODELS") {
            Some(v) => {
                c.allowed_init_base_models = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            None => {
                if !c.allowed_init_base_models.contains(&c.base_model_id) {
                    c.allowed_init_base_models.push(c.base_model_id.clone());
                }
            }
        }
        for name in ["CLAAS_FEEDBACK_LOCK_TIMEOUT_S", "FEEDBACK_LOCK_TIMEOUT_S"] {
            if let Some(v) = get(name) {
                c.lock_timeout = seconds(name, &v)?;
                break;
            }
        }
        if let Some(v) = get("FEEDBACK_DRAIN_TIMEOUT_S") {
            c.drain_timeout = seconds("FEEDBACK_DRAIN_TIMEOUT_S", &v)?;
        }
        if let Some(v) = get("FEEDBACK_WAKE_ON_FAILURE") {
            c.wake_on_failure = flag(&v);
        }
        let nonempty = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        c.teacher_base_url = nonempty("CLAAS_TEACHER_BASE_URL");
        c.teacher_model = nonempty("CLAAS_TEACHER_MODEL");
        c.teacher_api_key = nonempty("CLAAS_TEACHER_API_KEY");
        if let Some(v) = nonempty("CLAAS_COMPLETION_CACHE_SIZE") {
            c.completion_cache_size = count("CLAAS_COMPLETION_CACHE_SIZE", &v, 1)?;
        }
        if let Some(v) = nonempty("CLAAS_COMPLETION_CACHE_TTL_S") {
            c.completion_cache_ttl = seconds("CLAAS_COMPLETION_CACHE_TTL_S", &v)?;
        }
        if let Some(v) = nonempty("CLAAS_KEEP_VERSIONS") {
            c.keep_versions = count("CLAAS_KEEP_VERSIONS", &v, 1)?;
        }
        c.api_key = match get("CLAAS_API_KEY") {
            // Empty is the usual way to leave it unset; only-whitespace is a mistake and refused
            // below, rather than silently turning auth off.
            Some(v) if v.is_empty() => None,
            Some(v) => Some(check_api_key(&v)?.to_string()),
            None => None,
        };
        if let Some(v) = nonempty("CLAAS_MAX_BODY_BYTES") {
            c.max_body_bytes = count("CLAAS_MAX_BODY_BYTES", &v, 1024)?;
        }
        for (name, slot) in [
            ("CLAAS_GUARDRAIL_MAX_KL", &mut c.guardrail.max_kl_to_base),
            ("CLAAS_GUARDRAIL_MIN_ENTROPY", &mut c.guardrail.min_entropy),
        ] {
            if let Some(v) = nonempty(name) {
                *slot = Some(
                    v.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite() && *x >= 0.0)
                        .ok_or_else(|| ConfigError {
                            name: name.into(),
                            value: v.clone(),
                            message: "expected a non-negative number".into(),
                        })?,
                );
            }
        }
        if let Some(v) = nonempty("CLAAS_EVAL_DIR") {
            c.eval_dir = PathBuf::from(v);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<ApiConfig, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiConfig::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn env_defaults_and_overrides() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c, ApiConfig::default());
        let c = cfg(&[
            ("CLAAS_LORA_ROOT", "/l"),
            ("CLAAS_BASE_MODEL_ID", "builtin:tiny"),
            ("VLLM_BASE_URL", "http://x:8000"),
            ("VLLM_API_KEY", "sk-local"),
            ("CLAAS_FEEDBACK_LOCK_TIMEOUT_S", "2.5"),
        ])
        .unwrap();
        assert_eq!(c.lora_root, PathBuf::from("/l"));
        assert_eq!(c.vllm_base_url.as_deref(), Some("http://x:8000"));
        assert_eq!(c.lock_timeout, Duration::from_millis(2500));
        assert_eq!(
            c.allowed_init_base_models,
            vec!["Qwen/Qwen3-8B".to_string(), "builtin:tiny".to_string()]
        );
        let c = cfg(&[
            ("CLAAS_TEACHER_BASE_URL", "http://teacher:8000/v1"),
            ("CLAAS_TEACHER_MODEL", " Qwen/Qwen3-32B "),
            ("CLAAS_TEACHER_API_KEY", ""),
        ])
        .unwrap();
        assert_eq!(
            c.teacher_base_url.as_deref(),
            Some("http://teacher:8000/v1")
        );
        assert_eq!(c.teacher_model.as_deref(), Some("Qwen/Qwen3-32B"));
        assert_eq!(c.teacher_api_key, None);
        let c = cfg(&[("CLAAS_ALLOWED_INIT_BASE_MODELS", " a/b, c ,")]).unwrap();
        assert_eq!(c.allowed_init_base_models, vec!["a/b", "c"]);
        assert!(cfg(&[("FEEDBACK_LOCK_TIMEOUT_S", "soon")]).is_err());
        let c = cfg(&[
            ("CLAAS_COMPLETION_CACHE_SIZE", "7"),
            ("CLAAS_COMPLETION_CACHE_TTL_S", "60"),
            ("CLAAS_KEEP_VERSIONS", "3"),
        ])
        .unwrap();
        assert_eq!(c.completion_cache_size, 7);
        assert_eq!(c.completion_cache_ttl, Duration::from_secs(60));
        assert_eq!(c.keep_versions, 3);
        assert!(cfg(&[("CLAAS_KEEP_VERSIONS", "0")]).is_err());
        assert!(cfg(&[("CLAAS_COMPLETION_CACHE_SIZE", "-1")]).is_err());
        let c = cfg(&[("CLAAS_API_KEY", "k1"), ("CLAAS_EVAL_DIR", "/e")]).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("k1"));
        // Whitespace around a key is refused, not trimmed (and the key is not echoed).
        for bad in [" k1 ", "k1 ", "\tk1"] {
            let e = cfg(&[("CLAAS_API_KEY", bad)]).unwrap_err();
            assert_eq!(e.name, "CLAAS_API_KEY");
            assert!(!e.to_string().contains("k1"), "{e}");
        }
        assert_eq!(c.max_body_bytes, crate::body::DEFAULT_MAX_BODY_BYTES);
        assert_eq!(
            cfg(&[("CLAAS_MAX_BODY_BYTES", "65536")])
                .unwrap()
                .max_body_bytes,
            65536
        );
        assert!(cfg(&[("CLAAS_MAX_BODY_BYTES", "10")]).is_err());
        assert_eq!(c.eval_dir, PathBuf::from("/e"));
        // Empty leaves it unset; only whitespace is refused rather than turning auth off.
        assert_eq!(cfg(&[("CLAAS_API_KEY", "")]).unwrap().api_key, None);
        assert!(cfg(&[("CLAAS_API_KEY", "  ")]).is_err());
        let c = cfg(&[("CLAAS_GUARDRAIL_MAX_KL", "0.5")]).unwrap();
        assert_eq!(c.guardrail.max_kl_to_base, Some(0.5));
        assert_eq!(c.guardrail.min_entropy, None);
        assert!(cfg(&[("CLAAS_GUARDRAIL_MIN_ENTROPY", "x")]).is_err());
    }
}
