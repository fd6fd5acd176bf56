//! `claas init` is idempotent: the first run creates the adapter, alias and OpenClaw files,
//! the second changes nothing and says so.

use claas_gateway::openclaw::OpenClawSettings;
use claas_stack::{run_init, InitSettings};

#[test]
fn init_twice_changes_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let settings = InitSettings {
        lora_root: dir.path().join("loras"),
        lora_name: "me/bot".into(),
        model: "builtin:tiny".into(),
        lora_r: 8,
        lora_alpha: 16,
        openclaw: Some(OpenClawSettings::new(dir.path().join("home/.openclaw"))),
    };
    let first = run_init(&settings).unwrap();
    assert!(first.changed());
    assert_eq!(first.created_adapter.as_deref(), Some("me/bot-init"));
    assert_eq!(
        first.created_alias,
        Some(("me/bot-latest".to_string(), "me/bot-init".to_string()))
    );
    assert!(dir
        .path()
        .join("loras/me/bot-init/adapter_model.safetensors")
        .is_file());
    assert!(dir.path().join("home/.openclaw/openclaw.json").is_file());
    let adapter = std::fs::read(
        dir.path()
            .join("loras/me/bot-init/adapter_model.safetensors"),
    )
    .unwrap();

    let second = run_init(&settings).unwrap();
    assert!(!second.changed(), "{:?}", second.lines());
    assert!(second.lines()[0].contains("nothing changed"));
    let again = std::fs::read(
        dir.path()
            .join("loras/me/bot-init/adapter_model.safetensors"),
    )
    .unwrap();
    assert_eq!(
        adapter, again,
        "the second run must not rewrite the adapter"
    );
}
