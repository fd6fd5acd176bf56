//! PEFT adapter format: round trips, what PEFT writes, and clear errors for bad input.

mod common;

use std::collections::BTreeSet;

use candle_core::{DType, Device};
use claas_model::{LoadOptions, LoraAdapter, LoraInit, ModelError, Qwen3, Qwen3Config};
use common::*;

fn model() -> Qwen3 {
    Qwen3::load(&fixtures().join("tiny-qwen3"), &LoadOptions::default()).unwrap()
}

fn load(m: &Qwen3, dir: &std::path::Path) -> Result<LoraAdapter, ModelError> {
    LoraAdapter::load(dir, m.config(), &Device::Cpu, DType::F32)
}

fn st_keys(dir: &std::path::Path) -> BTreeSet<(String, Vec<usize>)> {
    let t = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    t.into_iter().map(|(k, v)| (k, v.dims().to_vec())).collect()
}

fn config_keys(dir: &std::path::Path) -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap())
            .unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn saved_adapter_round_trips_bit_exactly() {
    let m = model();
    let src = fixtures().join("lora-r4");
    let a = load(&m, &src).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    a.save(tmp.path()).unwrap();
    assert_eq!(st_keys(tmp.path()), st_keys(&src));
    assert_eq!(config_keys(tmp.path()), config_keys(&src));
    let b = load(&m, tmp.path()).unwrap();
    for ((ka, ta), (kb, tb)) in a.named_tensors().iter().zip(b.named_tensors().iter()) {
        assert_eq!(ka, kb);
        let d: f32 = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{ka} changed in the round trip");
    }
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8);
    assert_eq!(cfg["peft_type"], "LORA");
}

#[test]
fn fresh_adapter_has_peft_layout_and_changes_nothing() {
    let m = model();
    let init = LoraInit {
        r: 4,
        lora_alpha: 8.0,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
        use_rslora: false,
        base_model_name_or_path: Some("../tiny-qwen3".into()),
    };
    let a = LoraAdapter::init(&init, m.config(), 7, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    a.save(tmp.path()).unwrap();
    // Same keys, shapes and config fields as PEFT wrote for the same configuration.
    let fx = fixtures().join("lora-r4");
    assert_eq!(st_keys(tmp.path()), st_keys(&fx));
    assert_eq!(config_keys(tmp.path()), config_keys(&fx));
    // B = 0: logits equal the base model's.
    let ids = ids(&read_json("forward.json")["sequences"][0]["input_ids"]);
    let base = m.logits(&ids, None, 64).unwrap();
    let with = m
        .logits(&ids, Some(&load(&m, tmp.path()).unwrap()), 64)
        .unwrap();
    let d: f32 = (base - with)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(d, 0.0);
}

#[test]
fn target_modules_regex_and_rslora_scaling() {
    let m = model();
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("lora-r4");
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["target_modules"] = serde_json::json!(r".*\.(q|k|v|o|gate|up|down)_proj");
    cfg["use_rslora"] = serde_json::json!(true);
    std::fs::write(tmp.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let a = load(&m, tmp.path()).unwrap();
    let p = a.pair(0, claas_model::Module::Q).unwrap();
    assert!(
        (p.scale - 8.0 / 2.0).abs() < 1e-12,
        "rsLoRA scale alpha/sqrt(r) = 4, got {}",
        p.scale
    );
}

fn expect_err(r: Result<LoraAdapter, ModelError>) -> ModelError {
    match r {
        Ok(_) => panic!("bad adapter was accepted"),
        Err(e) => e,
    }
}

#[test]
fn bad_adapters_get_clear_errors() {
    let m = model();
    let src = fixtures().join("lora-r4");
    // Missing folder / files.
    let tmp = tempfile::tempdir().unwrap();
    let e = expect_err(load(&m, &tmp.path().join("nope")));
    assert!(matches!(e, ModelError::MissingFile(_)), "{e}");
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    let e = expect_err(load(&m, tmp.path()));
    assert!(e.to_string().contains("adapter_model.safetensors"), "{e}");

    // Rank mismatch: config says 8, tensors have rank 4.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        tmp.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["r"] = serde_json::json!(8);
    std::fs::write(tmp.path().join("adapter_config.json"), cfg.to_string()).unwrap();
    let e = expect_err(load(&m, tmp.path()));
    assert!(
        matches!(
            e,
            ModelError::RankMismatch {
                config: 8,
                tensor: 4,
                ..
            }
        ),
        "{e}"
    );

    // An adapter made for a bigger model does not fit this one.
    let mut big: Qwen3Config = m.config().clone();
    big.hidden_size *= 2;
    let init = LoraInit {
        r: 4,
        lora_alpha: 8.0,
        target_modules: vec!["q_proj".into()],
        use_rslora: false,
        base_model_name_or_path: None,
    };
    let other = LoraAdapter::init(&init, &big, 1, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    other.save(tmp.path()).unwrap();
    let e = expect_err(load(&m, tmp.path()));
    assert!(matches!(e, ModelError::AdapterMismatch(_)), "{e}");

    // Garbage safetensors.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        src.join("adapter_config.json"),
        tmp.path().join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("adapter_model.safetensors"),
        b"not safetensors",
    )
    .unwrap();
    let e = expect_err(load(&m, tmp.path()));
    assert!(matches!(e, ModelError::Safetensors { .. }), "{e}");

    // Not JSON.
    std::fs::write(tmp.path().join("adapter_config.json"), b"{").unwrap();
    let e = expect_err(load(&m, tmp.path()));
    assert!(matches!(e, ModelError::Json { .. }), "{e}");
}

#[test]
fn bad_models_get_clear_errors() {
    let src = fixtures().join("tiny-qwen3");
    let opts = LoadOptions::default();
    let tmp = tempfile::tempdir().unwrap();
    let e = Qwen3::load(tmp.path(), &opts).err().unwrap();
    assert!(matches!(e, ModelError::MissingFile(_)), "{e}");

    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = serde_json::json!("llama");
    cfg["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let e = Qwen3::load(tmp.path(), &opts).err().unwrap();
    assert!(matches!(e, ModelError::UnsupportedArchitecture(_)), "{e}");

    // Config claims a wider model than the weights hold.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(256);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    std::os::unix::fs::symlink(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let e = Qwen3::load(tmp.path(), &opts).err().unwrap();
    assert!(matches!(e, ModelError::ShapeMismatch { .. }), "{e}");

    // Token ids beyond the vocabulary are rejected, not a panic.
    let m = Qwen3::load(&src, &opts).unwrap();
    let e = m.logits(&[0, 999_999], None, 16).err().unwrap();
    assert!(matches!(e, ModelError::TokenOutOfRange { .. }), "{e}");
}
