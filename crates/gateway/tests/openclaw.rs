//! The OpenClaw config writer on real files in temp dirs.

use std::fs;
use std::path::Path;

use claas_gateway::openclaw::{
    write_openclaw_config, Change, OpenClawError, OpenClawSettings, PLUGIN_FILES,
};
use serde_json::{json, Value};

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(p).unwrap()).unwrap()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn settings(dir: &Path) -> OpenClawSettings {
    let mut s = OpenClawSettings::new(dir.join(".openclaw"));
    s.claas_api_url = "http://claas-api:8080".into();
    s.telegram_bot_token = Some("123:abc".into());
    s
}

fn model(id: &str) -> Value {
    json!({
        "id": id, "name": id, "api": "openai-completions", "reasoning": false, "input": ["text"],
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": 32768, "maxTokens": 8192
    })
}

#[test]
fn a_fresh_config_is_the_reference_one_fixed_for_current_openclaw() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    let report = write_openclaw_config(&s).unwrap();
    assert!(report.changed());
    assert_eq!(
        report.config_path,
        tmp.path().join(".openclaw/openclaw.json")
    );

    // docker/scripts/init-stack.py's config, minus meta.lastTouchedAt, with streaming.mode
    // for streamMode and the plugin's conversation-access grant. OpenClaw chats through the
    // CLaaS API's proxy (as at the reference's HEAD), so every reply is recorded for /feedback.
    let provider = json!({
        "baseUrl": "http://claas-api:8080/v1", "apiKey": "sk-local", "api": "openai-completions",
        "models": [model("qwen3-8b"), model("openclaw-assistant-latest")]
    });
    let expected = json!({
        "models": {"mode": "merge", "providers": {"local": provider}},
        "agents": {"defaults": {
            "model": {"primary": "local/openclaw-assistant-latest"},
            "models": {
                "local/qwen3-8b": {"alias": "qwen3-8b (local vLLM)"},
                "local/openclaw-assistant-latest": {"alias": "openclaw-assistant-latest (local vLLM)"}
            },
            "maxConcurrent": 4,
            "subagents": {"maxConcurrent": 8}
        }},
        "tools": {"byProvider": {
            "local/qwen3-8b": {"deny": ["*"]},
            "local/openclaw-assistant-latest": {"deny": ["*"]}
        }},
        "commands": {"native": "auto", "nativeSkills": "auto"},
        "channels": {"telegram": {
            "enabled": true, "dmPolicy": "open", "allowFrom": ["*"], "groupPolicy": "open",
            "groups": {"*": {"requireMention": false}},
            "streaming": {"mode": "off"},
            "actions": {"reactions": true, "sendMessage": true, "deleteMessage": true},
            "botToken": "123:abc"
        }},
        "gateway": {"port": 18789, "mode": "local", "bind": "loopback",
                    "auth": {"mode": "token", "token": "openclaw-local-dev-token"}},
        "messages": {"ackReactionScope": "group-mentions"},
        "plugins": {"entries": {
            "telegram": {"enabled": true},
            "claas-feedback": {
                "enabled": true,
                "hooks": {"allowConversationAccess": true},
                "config": {"claasApiUrl": "http://claas-api:8080", "loraId": "openclaw/assistant-latest"}
            }
        }}
    });
    assert_eq!(read_json(&report.config_path), expected);
    assert_eq!(
        read_json(&report.models_path),
        json!({"providers": {"local": provider}})
    );
    assert_eq!(
        report.models_path,
        tmp.path().join(".openclaw/agents/main/agent/models.json")
    );

    for (rel, content) in PLUGIN_FILES {
        let p = report.plugin_dir.join(rel);
        assert_eq!(fs::read_to_string(&p).unwrap(), *content, "{rel}");
        #[cfg(unix)]
        assert_eq!(mode(&p), 0o644, "{rel}");
    }
    assert_eq!(
        report.plugin_dir,
        tmp.path().join(".openclaw/extensions/claas-feedback")
    );
    let manifest: Value = read_json(&report.plugin_dir.join("openclaw.plugin.json"));
    assert_eq!(manifest["id"], "claas-feedback");
    assert_eq!(manifest["activation"]["onStartup"], true);
    #[cfg(unix)]
    {
        assert_eq!(mode(&report.config_path), 0o644);
        assert_eq!(mode(&report.plugin_dir), 0o755);
        assert_eq!(mode(&report.plugin_dir.join("src")), 0o755);
    }
    // No temp files left behind.
    let leftovers: Vec<_> = fs::read_dir(tmp.path().join(".openclaw"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_second_run_changes_nothing_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    assert!(write_openclaw_config(&s).unwrap().changed());
    let before = fs::metadata(&s.config_path).unwrap().modified().unwrap();
    let again = write_openclaw_config(&s).unwrap();
    assert!(!again.changed(), "{:?}", again.changes);
    assert!(again.to_string().contains("already up to date"));
    assert_eq!(
        fs::metadata(&s.config_path).unwrap().modified().unwrap(),
        before
    );

    // A changed setting rewrites only the config.
    let mut s2 = s.clone();
    s2.telegram_api_url = Some("http://127.0.0.1:8081".into());
    let third = write_openclaw_config(&s2).unwrap();
    assert_eq!(third.changes, vec![Change::Updated(s.config_path.clone())]);
    assert_eq!(
        read_json(&s.config_path)["channels"]["telegram"]["apiRoot"],
        "http://127.0.0.1:8081"
    );
}

#[test]
fn an_existing_config_is_merged_and_the_rejected_seed_keys_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    fs::create_dir_all(&s.state_dir).unwrap();
    let existing = json!({
        "meta": {"lastTouchedAt": "2026-01-01T00:00:00Z"},
        "channels": {
            "telegram": {"streamMode": "off", "botToken": "old:token", "historyLimit": 20},
            "discord": {"enabled": true}
        },
        "agents": {"defaults": {"models": {"openai/gpt-5": {"alias": "gpt"}}}},
        // What an earlier `claas init` wrote: OpenClaw talking to the model server directly.
        "models": {"providers": {
            "local": {"baseUrl": "http://vllm:8000/v1", "apiKey": "sk-local"},
            "openai": {"baseUrl": "https://example.invalid/v1"}
        }},
        "plugins": {
            "allow": ["other"],
            "deny": ["claas-feedback"],
            "entries": {"claas-feedback": {"enabled": false}, "other": {"enabled": true}}
        }
    });
    fs::write(&s.config_path, serde_json::to_string(&existing).unwrap()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&s.config_path, fs::Permissions::from_mode(0o600)).unwrap();
    }

    let report = write_openclaw_config(&s).unwrap();
    assert!(report
        .changes
        .contains(&Change::Updated(s.config_path.clone())));
    let c = read_json(&s.config_path);
    assert!(c.get("meta").is_none());
    let tg = &c["channels"]["telegram"];
    assert!(tg.get("streamMode").is_none());
    assert_eq!(tg["streaming"]["mode"], "off");
    assert_eq!(tg["botToken"], "123:abc");
    assert_eq!(tg["historyLimit"], 20);
    assert_eq!(c["channels"]["discord"]["enabled"], true);
    assert_eq!(
        c["agents"]["defaults"]["models"]["openai/gpt-5"]["alias"],
        "gpt"
    );
    assert_eq!(
        c["agents"]["defaults"]["models"]["local/qwen3-8b"]["alias"],
        "qwen3-8b (local vLLM)"
    );
    assert_eq!(
        c["models"]["providers"]["local"]["baseUrl"], "http://claas-api:8080/v1",
        "an old direct-to-vLLM provider is moved to the API proxy"
    );
    assert_eq!(
        c["models"]["providers"]["openai"]["baseUrl"],
        "https://example.invalid/v1"
    );
    assert_eq!(c["plugins"]["entries"]["claas-feedback"]["enabled"], true);
    assert_eq!(c["plugins"]["entries"]["other"]["enabled"], true);
    // An exclusive allow-list must name the plugin or OpenClaw will not load it.
    assert_eq!(c["plugins"]["allow"], json!(["other", "claas-feedback"]));
    assert_eq!(c["plugins"]["deny"], json!([]));
    #[cfg(unix)]
    assert_eq!(
        mode(&s.config_path),
        0o600,
        "a user's stricter mode is kept"
    );
    assert!(!write_openclaw_config(&s).unwrap().changed());
}

#[test]
fn stale_plugin_files_are_removed_and_modes_fixed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    let report = write_openclaw_config(&s).unwrap();
    let stale = report.plugin_dir.join("src/old-helper.ts");
    fs::write(&stale, "export {}").unwrap();
    fs::create_dir_all(report.plugin_dir.join("dist/x")).unwrap();
    fs::write(report.plugin_dir.join("dist/x/a.js"), "").unwrap();
    fs::write(report.plugin_dir.join("index.ts"), "// edited").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            report.plugin_dir.join("package.json"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let again = write_openclaw_config(&s).unwrap();
    assert!(again.changes.contains(&Change::Removed(stale.clone())));
    assert!(again
        .changes
        .contains(&Change::Updated(report.plugin_dir.join("index.ts"))));
    #[cfg(unix)]
    assert!(again
        .changes
        .contains(&Change::Permissions(report.plugin_dir.join("package.json"))));
    assert!(!stale.exists());
    assert!(!report.plugin_dir.join("dist").exists());
    assert!(!write_openclaw_config(&s).unwrap().changed());
}

#[test]
fn an_unreadable_config_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = settings(tmp.path());
    fs::create_dir_all(&s.state_dir).unwrap();
    let json5 = "{\n  // my comment\n  gateway: { port: 1 },\n}\n";
    fs::write(&s.config_path, json5).unwrap();
    let err = write_openclaw_config(&s).unwrap_err();
    assert!(
        matches!(err, OpenClawError::UnreadableConfig { .. }),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&s.config_path).unwrap(), json5);
    let entries: Vec<_> = fs::read_dir(&s.state_dir).unwrap().collect();
    assert_eq!(entries.len(), 1, "only the user's file is there");
}

#[test]
fn the_adapter_name_follows_lora_name() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = settings(tmp.path());
    s.lora_name = "team/helper".into();
    s.base_model_id = "claas-demo".into();
    let report = write_openclaw_config(&s).unwrap();
    let c = read_json(&report.config_path);
    assert!(
        c["plugins"].get("allow").is_none(),
        "no allow-list is created"
    );
    assert_eq!(
        c["agents"]["defaults"]["model"]["primary"],
        "local/team-helper-latest"
    );
    assert_eq!(
        c["plugins"]["entries"]["claas-feedback"]["config"]["loraId"],
        "team/helper-latest"
    );
    assert_eq!(
        c["models"]["providers"]["local"]["models"][0]["id"],
        "claas-demo"
    );
}
