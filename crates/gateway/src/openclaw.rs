//! `claas init`'s OpenClaw part: an `openclaw.json` (and `agents/main/agent/models.json`) that
//! today's OpenClaw (npm `openclaw` 2026.9.x) validates, plus the `claas-feedback` plugin
//! installed into the `extensions/` folder beside it.
//!
//! The content follows the reference's `docker/scripts/init-stack.py` (at its HEAD: the model
//! provider's `baseUrl` is the CLaaS API's chat proxy, `{CLAAS_API_URL}/v1`, so every OpenClaw
//! reply is recorded for `/feedback`), with what current
//! OpenClaw requires instead: no `meta.lastTouchedAt`, `channels.telegram.streaming.mode`
//! instead of `streamMode`, `plugins.entries.claas-feedback.hooks.allowConversationAccess`
//! (agent_end is a conversation hook), and `channels.telegram.apiRoot` when a Telegram API URL
//! is given. Paths follow OpenClaw's rules: `OPENCLAW_HOME` replaces `$HOME`, so the config is
//! `$OPENCLAW_HOME/.openclaw/openclaw.json` unless `OPENCLAW_STATE_DIR`/`OPENCLAW_CONFIG_PATH`
//! say otherwise.
//!
//! An existing config is merged, not replaced: our keys win, everything else the user (or
//! OpenClaw itself) put there stays, and the two keys today's OpenClaw rejects are removed.
//! Nothing is written when the result equals what is on disk, so a second run reports no change.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::config::{served_model_name, strip_v1, DEFAULT_LORA_NAME};

/// The plugin's files, compiled in so `claas init` needs nothing but the binary.
pub const PLUGIN_FILES: &[(&str, &str)] = &[
    (
        "openclaw.plugin.json",
        include_str!("../../../integrations/openclaw/claas-feedback/openclaw.plugin.json"),
    ),
    (
        "package.json",
        include_str!("../../../integrations/openclaw/claas-feedback/package.json"),
    ),
    (
        "index.ts",
        include_str!("../../../integrations/openclaw/claas-feedback/index.ts"),
    ),
    (
        "src/exchange.ts",
        include_str!("../../../integrations/openclaw/claas-feedback/src/exchange.ts"),
    ),
    (
        "src/context-store.ts",
        include_str!("../../../integrations/openclaw/claas-feedback/src/context-store.ts"),
    ),
    (
        "src/feedback-client.ts",
        include_str!("../../../integrations/openclaw/claas-feedback/src/feedback-client.ts"),
    ),
];

/// Plugin id (folder name under `extensions/`, key under `plugins.entries`).
pub const PLUGIN_ID: &str = "claas-feedback";

/// What to write. [`OpenClawSettings::from_env`] reads the reference init's variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClawSettings {
    /// OpenClaw's state directory (`~/.openclaw`); `agents/` and `extensions/` live here.
    pub state_dir: PathBuf,
    /// The config file (`<state_dir>/openclaw.json` unless overridden).
    pub config_path: PathBuf,
    /// LoRA name; the model OpenClaw uses is the served name of `{lora_name}-latest`.
    pub lora_name: String,
    /// Served name of the base model (the reference's `qwen3-8b`).
    pub base_model_id: String,
    /// Key OpenClaw sends with chat requests.
    pub api_key: String,
    /// CLaaS API base URL: the plugin's `claasApiUrl`, and with `/v1` the provider's `baseUrl`
    /// (the API proxies chat to the inference server and records each completion).
    pub claas_api_url: String,
    /// Telegram bot token, if any.
    pub telegram_bot_token: Option<String>,
    /// Telegram Bot API root (`channels.telegram.apiRoot`), if not the official one.
    pub telegram_api_url: Option<String>,
    /// OpenClaw gateway auth token.
    pub gateway_token: String,
    /// OpenClaw gateway port.
    pub gateway_port: u16,
    /// `contextWindow` advertised for our models.
    pub context_window: u32,
    /// `maxTokens` advertised for our models (OpenClaw sends it as `max_completion_tokens`).
    pub max_tokens: u32,
    /// Mode of the files written (the reference makes everything readable for OpenClaw's
    /// `node` user in Docker: 0o644). An existing `openclaw.json` keeps its own mode.
    pub file_mode: u32,
}

/// Errors of [`write_openclaw_config`]. Nothing is changed on disk when the existing config
/// cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum OpenClawError {
    /// No `OPENCLAW_HOME`, `OPENCLAW_STATE_DIR` or `HOME` to put the config under.
    #[error("cannot locate OpenClaw's home: set OPENCLAW_HOME (or HOME)")]
    NoHome,
    /// The existing config is not a JSON object (e.g. JSON5 with comments).
    #[error("existing OpenClaw config {path} is not plain JSON ({reason}); move it aside or merge the claas settings by hand")]
    UnreadableConfig {
        /// Config path.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// One change made on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new file.
    Created(PathBuf),
    /// A file whose content changed.
    Updated(PathBuf),
    /// A stale plugin file removed.
    Removed(PathBuf),
    /// A file or folder whose permissions were fixed.
    Permissions(PathBuf),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Created(p) => write!(f, "created {}", p.display()),
            Change::Updated(p) => write!(f, "updated {}", p.display()),
            Change::Removed(p) => write!(f, "removed {}", p.display()),
            Change::Permissions(p) => write!(f, "fixed permissions of {}", p.display()),
        }
    }
}

/// Outcome of [`write_openclaw_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// `openclaw.json`.
    pub config_path: PathBuf,
    /// `agents/main/agent/models.json`.
    pub models_path: PathBuf,
    /// `extensions/claas-feedback`.
    pub plugin_dir: PathBuf,
    /// Everything changed, in order; empty when all was already in place.
    pub changes: Vec<Change>,
}

impl InitReport {
    /// Whether anything was written, removed or re-permissioned.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return write!(
                f,
                "OpenClaw config already up to date: {} (plugin in {})",
                self.config_path.display(),
                self.plugin_dir.display()
            );
        }
        let mut first = true;
        for c in &self.changes {
            if !first {
                writeln!(f)?;
            }
            first = false;
            match c {
                Change::Created(p) => write!(f, "created {}", p.display())?,
                Change::Updated(p) => write!(f, "updated {}", p.display())?,
                Change::Removed(p) => write!(f, "removed {}", p.display())?,
                Change::Permissions(p) => write!(f, "fixed permissions of {}", p.display())?,
            }
        }
        Ok(())
    }
}

impl OpenClawSettings {
    /// Settings for an OpenClaw whose state directory is `state_dir`, other fields at the
    /// reference's defaults.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            config_path: state_dir.join("openclaw.json"),
            state_dir,
            lora_name: DEFAULT_LORA_NAME.to_string(),
            base_model_id: "qwen3-8b".to_string(),
            api_key: "sk-local".to_string(),
            claas_api_url: "http://localhost:8080".to_string(),
            telegram_bot_token: None,
            telegram_api_url: None,
            gateway_token: "openclaw-local-dev-token".to_string(),
            gateway_port: 18789,
            context_window: 32768,
            max_tokens: 8192,
            file_mode: 0o644,
        }
    }

    /// From the environment: `OPENCLAW_HOME` (OpenClaw's meaning: replaces `$HOME`),
    /// `OPENCLAW_STATE_DIR`, `OPENCLAW_CONFIG_PATH`, `LORA_NAME`, `MODEL` /
    /// `SERVED_MODEL_NAMES` (base model id: first served name, else the lower-cased last
    /// path part of `MODEL`), `API_KEY` (or `VLLM_API_KEY`), `CLAAS_API_URL`,
    /// `TELEGRAM_BOT_TOKEN`, `TELEGRAM_API_URL`, `OPENCLAW_GATEWAY_TOKEN`, `OPENCLAW_PORT`,
    /// `MAX_MODEL_LEN` (context window).
    pub fn from_env() -> Result<Self, OpenClawError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable source.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, OpenClawError> {
        // OpenClaw treats blank, "undefined" and "null" as unset.
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty() && v != "undefined" && v != "null")
        };
        let home = get("HOME");
        let expand = |p: String| -> PathBuf {
            match (p.strip_prefix("~/"), &home) {
                (Some(rest), Some(h)) => Path::new(h).join(rest),
                _ if p == "~" => home.clone().map(PathBuf::from).unwrap_or_else(|| p.into()),
                _ => PathBuf::from(p),
            }
        };
        let state_dir = match get("OPENCLAW_STATE_DIR") {
            Some(dir) => expand(dir),
            None => {
                let base = get("OPENCLAW_HOME")
                    .map(&expand)
                    .or_else(|| home.clone().map(PathBuf::from))
                    .ok_or(OpenClawError::NoHome)?;
                base.join(".openclaw")
            }
        };
        let mut s = Self::new(state_dir);
        if let Some(p) = get("OPENCLAW_CONFIG_PATH") {
            s.config_path = expand(p);
        }
        if let Some(name) = get("LORA_NAME") {
            s.lora_name = name.trim_matches('/').to_string();
        }
        if let Some(first) = get("SERVED_MODEL_NAMES").and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|n| !n.is_empty())
                .map(String::from)
        }) {
            s.base_model_id = first;
        } else if let Some(model) = get("MODEL") {
            let last = model
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(&model);
            s.base_model_id = last.to_lowercase();
        }
        // OpenClaw's provider is the CLaaS API's proxy: its key, when it has one.
        if let Some(key) = get("CLAAS_API_KEY")
            .or_else(|| get("API_KEY"))
            .or_else(|| get("VLLM_API_KEY"))
        {
            s.api_key = key;
        }
        if let Some(url) = get("CLAAS_API_URL") {
            // The plugin appends `/v1/feedback` and the provider `/v1`; take either spelling.
            s.claas_api_url = strip_v1(&url);
        }
        s.telegram_bot_token = get("TELEGRAM_BOT_TOKEN");
        s.telegram_api_url = get("TELEGRAM_API_URL").map(|u| u.trim_end_matches('/').to_string());
        if let Some(t) = get("OPENCLAW_GATEWAY_TOKEN") {
            s.gateway_token = t;
        }
        if let Some(port) = get("OPENCLAW_PORT").and_then(|p| p.parse().ok()) {
            s.gateway_port = port;
        }
        if let Some(n) = get("MAX_MODEL_LEN").and_then(|n| n.parse().ok()) {
            s.context_window = n;
        }
        Ok(s)
    }

    /// The adapter alias the plugin sends feedback for (`openclaw/assistant-latest`).
    pub fn lora_alias(&self) -> String {
        format!("{}-latest", self.lora_name)
    }

    /// The served model OpenClaw chats with (`openclaw-assistant-latest`).
    pub fn adapter_model_id(&self) -> String {
        served_model_name(&self.lora_alias())
    }

    fn model_ids(&self) -> Vec<String> {
        let mut ids = vec![self.base_model_id.clone(), self.adapter_model_id()];
        ids.dedup();
        ids
    }

    fn model_entry(&self, id: &str) -> Value {
        json!({
            "id": id,
            "name": id,
            "api": "openai-completions",
            "reasoning": false,
            "input": ["text"],
            "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
            "contextWindow": self.context_window,
            "maxTokens": self.max_tokens,
        })
    }

    /// The provider OpenClaw chats through: `{claas_api_url}/v1`.
    pub fn provider_base_url(&self) -> String {
        format!("{}/v1", strip_v1(&self.claas_api_url))
    }

    fn provider(&self) -> Value {
        json!({
            "baseUrl": self.provider_base_url(),
            "apiKey": self.api_key,
            "api": "openai-completions",
            "models": self.model_ids().iter().map(|id| self.model_entry(id)).collect::<Vec<_>>(),
        })
    }

    /// The config keys claas owns (merged over an existing `openclaw.json`).
    pub fn openclaw_json(&self) -> Value {
        let ids = self.model_ids();
        let agent_models: Map<String, Value> = ids
            .iter()
            .map(|id| {
                (
                    format!("local/{id}"),
                    json!({"alias": format!("{id} (local vLLM)")}),
                )
            })
            .collect();
        let deny_tools: Map<String, Value> = ids
            .iter()
            .map(|id| (format!("local/{id}"), json!({"deny": ["*"]})))
            .collect();
        let mut telegram = json!({
            "enabled": true,
            "dmPolicy": "open",
            "allowFrom": ["*"],
            "groupPolicy": "open",
            "groups": {"*": {"requireMention": false}},
            "streaming": {"mode": "off"},
            "actions": {"reactions": true, "sendMessage": true, "deleteMessage": true},
        });
        if let Some(token) = &self.telegram_bot_token {
            telegram["botToken"] = json!(token);
        }
        if let Some(root) = &self.telegram_api_url {
            telegram["apiRoot"] = json!(root);
        }
        json!({
            "models": {
                "mode": "merge",
                "providers": {"local": self.provider()},
            },
            "agents": {
                "defaults": {
                    "model": {"primary": format!("local/{}", self.adapter_model_id())},
                    "models": agent_models,
                    "maxConcurrent": 4,
                    "subagents": {"maxConcurrent": 8},
                },
            },
            "tools": {"byProvider": deny_tools},
            "commands": {"native": "auto", "nativeSkills": "auto"},
            "channels": {"telegram": telegram},
            "gateway": {
                "port": self.gateway_port,
                "mode": "local",
                "bind": "loopback",
                "auth": {"mode": "token", "token": self.gateway_token},
            },
            "messages": {"ackReactionScope": "group-mentions"},
            "plugins": {
                "entries": {
                    "telegram": {"enabled": true},
                    PLUGIN_ID: {
                        "enabled": true,
                        "hooks": {"allowConversationAccess": true},
                        "config": {
                            "claasApiUrl": self.claas_api_url,
                            "loraId": self.lora_alias(),
                        },
                    },
                },
            },
        })
    }

    /// The keys claas owns in `agents/main/agent/models.json`.
    pub fn models_json(&self) -> Value {
        json!({"providers": {"local": self.provider()}})
    }
}

/// Keys the seed wrote that today's OpenClaw rejects; removed from merged configs.
const REJECTED_KEYS: &[&[&str]] = &[
    &["meta", "lastTouchedAt"],
    &["channels", "telegram", "streamMode"],
];

/// Write (or merge) `openclaw.json` and `models.json`, and install the plugin. Idempotent:
/// the report lists only what actually changed.
pub fn write_openclaw_config(settings: &OpenClawSettings) -> Result<InitReport, OpenClawError> {
    let config_path = settings.config_path.clone();
    let models_path = settings
        .state_dir
        .join("agents")
        .join("main")
        .join("agent")
        .join("models.json");
    let plugin_dir = settings.state_dir.join("extensions").join(PLUGIN_ID);

    // Read both JSON files before touching anything, so a bad file changes nothing.
    let config = merged_json(&config_path, settings.openclaw_json(), true)?;
    let models = merged_json(&models_path, settings.models_json(), false)?;

    let mut changes = Vec::new();
    let config_mode = existing_mode(&config_path).unwrap_or(settings.file_mode);
    write_if_changed(&config_path, &pretty(&config), config_mode, &mut changes)?;
    write_if_changed(
        &models_path,
        &pretty(&models),
        settings.file_mode,
        &mut changes,
    )?;
    install_plugin(&plugin_dir, settings.file_mode, &mut changes)?;

    Ok(InitReport {
        config_path,
        models_path,
        plugin_dir,
        changes,
    })
}

fn pretty(v: &Value) -> String {
    // serde_json's pretty printer cannot fail on a Value.
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn merged_json(path: &Path, ours: Value, drop_rejected: bool) -> Result<Value, OpenClawError> {
    let existing = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(OpenClawError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let Some(text) = existing.filter(|t| !t.trim().is_empty()) else {
        return Ok(ours);
    };
    let mut base: Value =
        serde_json::from_str(&text).map_err(|e| OpenClawError::UnreadableConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if !base.is_object() {
        return Err(OpenClawError::UnreadableConfig {
            path: path.to_path_buf(),
            reason: "the top level is not an object".into(),
        });
    }
    if drop_rejected {
        for key_path in REJECTED_KEYS {
            remove_path(&mut base, key_path);
        }
    }
    merge(&mut base, ours);
    if drop_rejected {
        allow_plugin(&mut base);
    }
    Ok(base)
}

/// `plugins.allow` is an exclusive list: when a user has one, the plugin must be on it to load.
/// Without one OpenClaw auto-loads discovered plugins, and creating it would shut out others.
fn allow_plugin(config: &mut Value) {
    if let Some(allow) = config
        .pointer_mut("/plugins/allow")
        .and_then(Value::as_array_mut)
    {
        if !allow.iter().any(|v| v == PLUGIN_ID) {
            allow.push(json!(PLUGIN_ID));
        }
    }
    if let Some(deny) = config
        .pointer_mut("/plugins/deny")
        .and_then(Value::as_array_mut)
    {
        deny.retain(|v| v != PLUGIN_ID);
    }
}

/// Objects merge recursively; anything else in `ours` replaces what is there.
fn merge(base: &mut Value, ours: Value) {
    match (base, ours) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn remove_path(v: &mut Value, path: &[&str]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = &mut *v;
    for p in parents {
        match cur.get_mut(*p) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(obj) = cur.as_object_mut() {
        obj.remove(*last);
    }
    // An emptied `meta` would be noise.
    if v.get("meta")
        .and_then(Value::as_object)
        .is_some_and(Map::is_empty)
    {
        if let Some(root) = v.as_object_mut() {
            root.remove("meta");
        }
    }
}

fn install_plugin(dir: &Path, mode: u32, changes: &mut Vec<Change>) -> Result<(), OpenClawError> {
    for (rel, content) in PLUGIN_FILES {
        write_if_changed(&dir.join(rel), content, mode, changes)?;
    }
    // Files of an older plugin version would be loaded too (e.g. a stale src/*.ts import).
    let wanted: Vec<PathBuf> = PLUGIN_FILES.iter().map(|(rel, _)| dir.join(rel)).collect();
    remove_unlisted(dir, &wanted, changes)?;
    fix_dir_modes(dir, changes)
}

fn remove_unlisted(
    dir: &Path,
    wanted: &[PathBuf],
    changes: &mut Vec<Change>,
) -> Result<(), OpenClawError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenClawError::Io {
            action,
            path,
            source,
        }
    };
    let entries = fs::read_dir(dir).map_err(io("listing", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("listing", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io("inspecting", &path))?;
        if kind.is_dir() {
            remove_unlisted(&path, wanted, changes)?;
            if fs::read_dir(&path)
                .map_err(io("listing", &path))?
                .next()
                .is_none()
            {
                fs::remove_dir(&path).map_err(io("removing", &path))?;
                changes.push(Change::Removed(path));
            }
        } else if !wanted.contains(&path) {
            fs::remove_file(&path).map_err(io("removing", &path))?;
            changes.push(Change::Removed(path));
        }
    }
    Ok(())
}

#[cfg(unix)]
fn fix_dir_modes(dir: &Path, changes: &mut Vec<Change>) -> Result<(), OpenClawError> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let meta = fs::metadata(&d).map_err(|source| OpenClawError::Io {
            action: "inspecting",
            path: d.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o777 != 0o755 {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).map_err(|source| {
                OpenClawError::Io {
                    action: "setting permissions of",
                    path: d.clone(),
                    source,
                }
            })?;
            changes.push(Change::Permissions(d.clone()));
        }
        for entry in fs::read_dir(&d).map_err(|source| OpenClawError::Io {
            action: "listing",
            path: d.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| OpenClawError::Io {
                action: "listing",
                path: d.clone(),
                source,
            })?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                dirs.push(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn fix_dir_modes(_dir: &Path, _changes: &mut Vec<Change>) -> Result<(), OpenClawError> {
    Ok(())
}

#[cfg(unix)]
fn existing_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn existing_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

/// Write `content` atomically unless the file already holds it (then only fix its mode).
fn write_if_changed(
    path: &Path,
    content: &str,
    mode: u32,
    changes: &mut Vec<Change>,
) -> Result<(), OpenClawError> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| OpenClawError::Io {
            action,
            path,
            source,
        }
    };
    match fs::read(path) {
        Ok(bytes) if bytes == content.as_bytes() => {
            if existing_mode(path).is_some_and(|m| m != mode) {
                set_mode(path, mode).map_err(io("setting permissions of"))?;
                changes.push(Change::Permissions(path.to_path_buf()));
            }
            return Ok(());
        }
        Ok(_) => {
            atomic_write(path, content.as_bytes(), mode)?;
            changes.push(Change::Updated(path.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            atomic_write(path, content.as_bytes(), mode)?;
            changes.push(Change::Created(path.to_path_buf()));
        }
        Err(source) => {
            return Err(OpenClawError::Io {
                action: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    }
    Ok(())
}

/// Temp file in the same folder (mode set before it becomes visible), fsync, rename over the
/// target, fsync the folder.
fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), OpenClawError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|source| OpenClawError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    claas_fsatomic::write_file_with(path, |f| {
        f.write_all(bytes)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        Ok(())
    })
    .map_err(|source| OpenClawError::Io {
        action: "replacing",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<OpenClawSettings, OpenClawError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OpenClawSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn openclaw_home_replaces_home() {
        let s = settings(&[("HOME", "/home/u"), ("OPENCLAW_HOME", "/srv/oc")]).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/srv/oc/.openclaw"));
        assert_eq!(
            s.config_path,
            PathBuf::from("/srv/oc/.openclaw/openclaw.json")
        );
        let s = settings(&[("HOME", "/home/u"), ("OPENCLAW_HOME", "undefined")]).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/home/u/.openclaw"));
        let s = settings(&[("HOME", "/home/u"), ("OPENCLAW_HOME", "~/svc")]).unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/home/u/svc/.openclaw"));
        let s = settings(&[
            ("HOME", "/home/u"),
            ("OPENCLAW_STATE_DIR", "/state"),
            ("OPENCLAW_CONFIG_PATH", "/etc/oc.json"),
        ])
        .unwrap();
        assert_eq!(s.state_dir, PathBuf::from("/state"));
        assert_eq!(s.config_path, PathBuf::from("/etc/oc.json"));
        assert!(matches!(settings(&[]), Err(OpenClawError::NoHome)));
    }

    #[test]
    fn env_values_follow_the_reference_init() {
        let s = settings(&[
            ("HOME", "/h"),
            ("LORA_NAME", "team/bot"),
            ("MODEL", "Qwen/Qwen3-0.6B"),
            ("VLLM_BASE_URL", "http://vllm:8000"),
            ("CLAAS_API_URL", "http://claas-api:8080/"),
            ("TELEGRAM_API_URL", "http://127.0.0.1:9999/"),
        ])
        .unwrap();
        assert_eq!(s.base_model_id, "qwen3-0.6b");
        assert_eq!(s.adapter_model_id(), "team-bot-latest");
        assert_eq!(s.lora_alias(), "team/bot-latest");
        // Chat goes through the API (as the reference's HEAD init): VLLM_BASE_URL is not used.
        assert_eq!(s.claas_api_url, "http://claas-api:8080");
        assert_eq!(s.provider_base_url(), "http://claas-api:8080/v1");
        assert_eq!(s.telegram_api_url.as_deref(), Some("http://127.0.0.1:9999"));
        let s = settings(&[
            ("HOME", "/h"),
            ("SERVED_MODEL_NAMES", "base, other"),
            ("CLAAS_API_URL", "http://x/v1/"),
        ])
        .unwrap();
        assert_eq!(s.base_model_id, "base");
        assert_eq!(s.claas_api_url, "http://x");
        assert_eq!(s.provider_base_url(), "http://x/v1");
        assert_eq!(
            OpenClawSettings::new("/x").provider_base_url(),
            "http://localhost:8080/v1"
        );
    }

    #[test]
    fn config_has_what_current_openclaw_needs() {
        let mut s = OpenClawSettings::new("/x");
        s.telegram_bot_token = Some("1:abc".into());
        s.telegram_api_url = Some("http://127.0.0.1:7".into());
        let c = s.openclaw_json();
        assert!(c.get("meta").is_none());
        let tg = &c["channels"]["telegram"];
        assert!(tg.get("streamMode").is_none());
        assert_eq!(tg["streaming"], json!({"mode": "off"}));
        assert_eq!(tg["apiRoot"], "http://127.0.0.1:7");
        assert_eq!(tg["botToken"], "1:abc");
        let entry = &c["plugins"]["entries"]["claas-feedback"];
        assert_eq!(entry["hooks"]["allowConversationAccess"], true);
        assert_eq!(entry["config"]["loraId"], "openclaw/assistant-latest");
        assert_eq!(
            c["agents"]["defaults"]["model"]["primary"],
            "local/openclaw-assistant-latest"
        );
        let ids: Vec<&str> = c["models"]["providers"]["local"]["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["qwen3-8b", "openclaw-assistant-latest"]);
        let plain = OpenClawSettings::new("/x").openclaw_json();
        assert!(plain["channels"]["telegram"].get("apiRoot").is_none());
        assert!(plain["channels"]["telegram"].get("botToken").is_none());
    }

    #[test]
    fn merge_keeps_foreign_keys_and_replaces_ours() {
        let mut base = json!({"a": {"x": 1, "keep": true}, "list": [1, 2], "other": 5});
        merge(&mut base, json!({"a": {"x": 2}, "list": [3]}));
        assert_eq!(
            base,
            json!({"a": {"x": 2, "keep": true}, "list": [3], "other": 5})
        );
    }

    #[test]
    fn rejected_keys_are_removed() {
        let mut v = json!({"meta": {"lastTouchedAt": "x"}, "channels": {"telegram": {"streamMode": "off", "enabled": true}}});
        for p in REJECTED_KEYS {
            remove_path(&mut v, p);
        }
        assert_eq!(v, json!({"channels": {"telegram": {"enabled": true}}}));
        let mut v = json!({"meta": {"lastTouchedAt": "x", "lastTouchedVersion": "1"}});
        remove_path(&mut v, &["meta", "lastTouchedAt"]);
        assert_eq!(v, json!({"meta": {"lastTouchedVersion": "1"}}));
    }
}
