//! End to end on the built-in tiny model with the real SDPO trainer (claas-sdpo): init ->
//! score -> feedback -> the adapter changed on disk and in its scores, optimizer state carried,
//! export loads.

mod common;

use std::path::Path;
use std::sync::Arc;

use claas_api::SdpoEngine;
use claas_model::LoraAdapter;
use common::*;
use serde_json::{json, Value};

async fn score(api: &Api, id: Option<&str>, body: &Value) -> Vec<f64> {
    let mut req = json!({"prompt": body["prompt"], "response": body["response"]});
    if let Some(id) = id {
        req["lora_id"] = json!(id);
    }
    let (s, b) = api.post("/v1/score", req).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source"], "trainer");
    // The scored tokens come back, one decoded piece and one id per log-probability, and
    // together they spell the response.
    let (tokens, ids) = (
        b["tokens"].as_array().unwrap(),
        b["token_ids"].as_array().unwrap(),
    );
    let n = b["logprobs"].as_array().unwrap().len();
    assert!(n > 0 && tokens.len() == n && ids.len() == n, "{b}");
    let text: String = tokens.iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(text, body["response"].as_str().unwrap(), "{b}");
    b["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A real `claas serve` on 127.0.0.1; returns its base URL.
async fn start_serve(cfg: claas_serve::ServeConfig) -> String {
    let app = tokio::task::spawn_blocking(move || claas_serve::AppState::from_config(&cfg))
        .await
        .unwrap()
        .unwrap();
    serve(claas_serve::router(Arc::new(app))).await
}

#[tokio::test]
async fn feedback_trains_the_builtin_tiny_adapter() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(
        Some(&vurl),
        Some(Arc::new(SdpoEngine::load("builtin:tiny").unwrap())),
        |_| {},
    )
    .await;
    let id = init_adapter(&api, "e2e/bot").await;

    let mut body = feedback_body("e2e/bot-latest");
    body["training"] = json!({"learning_rate": 2e-3, "steps_per_batch": 1});
    // A fresh adapter changes nothing: its scores equal the base model's.
    let base = score(&api, None, &body).await;
    let before = score(&api, Some("e2e/bot-latest"), &body).await;
    assert_eq!(base, before);
    let n = before.len();
    assert!(n > 0);

    // Client-given rollout log-probs of the wrong length: 422, nothing written.
    let tree_before = tree(&api.root());
    let mut bad = body.clone();
    bad["rollout_logprobs"] = json!(vec![-1.0; n + 1]);
    let (s, b) = api.post("/v1/feedback", bad).await;
    assert_eq!(s, 422, "{b}");
    // Every 422 is the list form, the message at ["body"].
    assert_eq!(b["detail"][0]["loc"], json!(["body"]), "{b}");
    assert!(
        b["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("rollout_logprobs"),
        "{b}"
    );
    assert_eq!(tree(&api.root()), tree_before);

    // The fake server's rollout log-probs count whitespace "tokens", generally not the real
    // tokenizer's count: the API then retries on-policy instead of failing.
    let (s, b) = api.post("/v1/feedback", body.clone()).await;
    assert_eq!(s, 200, "{b}");
    let md = &b["distill_result"]["metadata"];
    for k in [
        "total_loss",
        "distill_loss",
        "kl_reg",
        "mean_is_ratio",
        "clip_fraction",
        "grad_norm",
    ] {
        assert!(md[k].as_f64().is_some_and(f64::is_finite), "{k}: {md}");
    }
    assert_eq!(md["tokens_processed"].as_u64(), Some(n as u64));
    assert_eq!(md["teacher_mode"], "self");
    assert!(md["grad_norm"].as_f64().unwrap() > 0.0);
    assert_eq!(b["vllm"], json!({"slept": true, "woke": true}));
    assert!(fake
        .actions()
        .iter()
        .any(|a| a.starts_with("load e2e-bot-latest ")));

    // The served adapter changed: different scores, B no longer zero, optimizer state saved.
    let after = score(&api, Some("e2e/bot-latest"), &body).await;
    assert_eq!(after.len(), n);
    assert_ne!(after, before, "the adapter did not change");
    assert!(api.state.store().optimizer_dir(&id).unwrap().is_some());

    // Given rollout log-probs of the right length are used; the optimizer state continues.
    let mut given = body.clone();
    given["rollout_logprobs"] = json!(before);
    let (s, b) = api.post("/v1/feedback", given).await;
    assert_eq!(s, 200, "{b}");
    // Init made v0; this is the second feedback.
    assert_eq!(b["distill_result"]["metadata"]["adapter_version"], 2);
    assert_eq!(b["adapter_version"], 2);
    assert_eq!(b["previous_version"], 1);

    // The export is a loadable PEFT adapter.
    let r = api.get_raw(&format!("/v1/lora/export?lora_id={id}")).await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    zip.extract(out.path()).unwrap();
    let dir = claas_model::builtin_model_dir("tiny").unwrap();
    let cfg = claas_model::Qwen3Config::from_file(&dir.join("config.json")).unwrap();
    let exported = LoraAdapter::load(
        out.path(),
        &cfg,
        &claas_model::Device::Cpu,
        claas_model::DType::F32,
    )
    .unwrap();
    let b_sum: f32 = exported
        .pair(0, claas_model::Module::Q)
        .unwrap()
        .b
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(b_sum > 0.0, "trained B should be non-zero");
}

fn fixtures() -> std::path::PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
    .to_path_buf()
}

fn load_st(path: &Path) -> std::collections::HashMap<String, Vec<f64>> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let v: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            (
                k.replace(".default.", "."),
                v.into_iter().map(f64::from).collect(),
            )
        })
        .collect()
}

fn close(name: &str, got: f64, want: f64, atol: f64, rtol: f64) {
    let d = (got - want).abs();
    assert!(
        d <= atol + rtol * want.abs(),
        "{name}: got {got:e}, fixture {want:e} (atol {atol:e}, rtol {rtol:e})"
    );
}

/// The fixture's SDPO step through `POST /v1/feedback` and `GET /v1/lora/export`, on the
/// fixture model, starting from the fixture adapter copied into the root by hand (no optimizer
/// state yet, so a fresh AdamW as in the reference). Tolerances are check.py's.
#[tokio::test]
async fn parity_feedback_and_export_match_distill_step_fixture() {
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("distill_step.json")).unwrap(),
    )
    .unwrap();
    let model_dir = fixtures().join(fx["model"].as_str().unwrap());
    let engine = SdpoEngine::load(&model_dir.to_string_lossy()).unwrap();
    let api = start_api(None, Some(Arc::new(engine)), |_| {}).await;

    let req = &fx["request"];
    let id = req["lora_id"].as_str().unwrap();
    let dest = api.root().join(id);
    std::fs::create_dir_all(&dest).unwrap();
    let src = fixtures().join(fx["start_adapter"].as_str().unwrap());
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dest.join(f)).unwrap();
    }

    let mut body = req.clone();
    body["training"]["steps_per_batch"] = json!(1);
    // The fixture records the seed's (0f67ae6) teacher prompt.
    body["training"]["teacher_prompt"] = json!("0f67ae6");
    let (s, b) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 200, "{b}");
    let got = &b["distill_result"]["metadata"];
    let want = &fx["metadata"];
    for k in ["total_loss", "distill_loss", "kl_reg", "mean_is_ratio"] {
        close(
            k,
            got[k].as_f64().unwrap(),
            want[k].as_f64().unwrap(),
            1e-6,
            1e-4,
        );
    }
    close(
        "clip_fraction",
        got["clip_fraction"].as_f64().unwrap(),
        want["clip_fraction"].as_f64().unwrap(),
        1e-6,
        0.0,
    );
    close(
        "grad_norm",
        got["grad_norm"].as_f64().unwrap(),
        want["grad_norm"].as_f64().unwrap(),
        0.0,
        1e-3,
    );
    assert_eq!(got["tokens_processed"], want["tokens_processed"]);
    assert_eq!(got["teacher_mode"], want["teacher_mode"]);

    let r = api.get_raw(&format!("/v1/lora/export?lora_id={id}")).await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let out = tempfile::tempdir().unwrap();
    zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec()))
        .unwrap()
        .extract(out.path())
        .unwrap();
    let got_ad = load_st(&out.path().join("adapter_model.safetensors"));
    let want_ad = load_st(
        &fixtures()
            .join(fx["after_adapter"].as_str().unwrap())
            .join("adapter_model.safetensors"),
    );
    let grads = load_st(&fixtures().join("distill_step_grads.safetensors"));
    let hp = &fx["hyperparameters"];
    let (lr, eps) = (hp["lr"].as_f64().unwrap(), hp["eps"].as_f64().unwrap());
    let c = (hp["max_grad_norm"].as_f64().unwrap() / (want["grad_norm"].as_f64().unwrap() + 1e-6))
        .min(1.0);
    assert_eq!(got_ad.len(), want_ad.len(), "adapter tensor count");
    for (key, w) in &want_ad {
        let g = got_ad
            .get(key)
            .unwrap_or_else(|| panic!("exported adapter lacks {key}"));
        let rg = &grads[key];
        assert_eq!(g.len(), w.len(), "{key} size");
        for i in 0..w.len() {
            let sens = 1e-7 * eps / (c * rg[i].abs() + eps).powi(2);
            let tol = 1e-5 + lr * sens.min(2.0);
            assert!(
                (g[i] - w[i]).abs() <= tol,
                "{key}[{i}]: got {} want {} (tol {tol:e})",
                g[i],
                w[i]
            );
        }
    }
    // the optimizer state sits in the new version beside the adapter, and the adapter folder
    // stays plain PEFT
    assert!(api.state.store().optimizer_dir(id).unwrap().is_some());
    let mut files: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );
}

/// Against a real `claas serve` on 127.0.0.1 (built-in tiny model, LoRA and sleep mode on):
/// init loads the adapter into the server, chat works with it, feedback drains, sleeps, trains,
/// saves, wakes and reloads, and the served adapter's log-probabilities change.
#[tokio::test]
async fn feedback_against_a_real_claas_serve() {
    let serve_url = start_serve(claas_serve::ServeConfig {
        model: "builtin:tiny".into(),
        api_key: Some("sk-test".into()),
        enable_lora: true,
        enable_sleep_mode: true,
        ..claas_serve::ServeConfig::default()
    })
    .await;

    let api = start_api(
        Some(&serve_url),
        Some(Arc::new(SdpoEngine::load("builtin:tiny").unwrap())),
        |_| {},
    )
    .await;
    let id = init_adapter(&api, "srv/bot").await;
    let names = claas_testkit::served_model_ids(&serve_url, "sk-test").await;
    assert!(
        ["srv-bot-latest", "srv-bot-init"]
            .iter()
            .all(|n| names.iter().any(|m| m == n)),
        "{names:?}"
    );

    // chat with the adapter
    let chat: Value = api
        .http
        .post(format!("{serve_url}/v1/chat/completions"))
        .bearer_auth("sk-test")
        .json(&json!({"model": "srv-bot-latest", "messages": [{"role": "user", "content": "hello there"}],
                      "max_tokens": 8, "temperature": 0}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let answer = chat["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();

    let mut body = feedback_body("srv/bot-latest");
    let response = if answer.trim().is_empty() {
        "hi friend".to_string()
    } else {
        answer
    };
    body["response"] = json!(response);
    body["training"] = json!({"learning_rate": 5e-3, "steps_per_batch": 1});
    let prompt = body["prompt"].as_str().unwrap().to_string();
    let backend = api.state.backend().clone();
    let before = backend
        .rollout_logprobs(&prompt, &response, "srv-bot-latest")
        .await
        .unwrap();

    let (s, b) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["vllm"], json!({"slept": true, "woke": true}));
    assert!(b["timing_ms"]["logprobs"].is_u64());
    let slept = claas_testkit::get_json(&format!("{serve_url}/is_sleeping"), "sk-test").await;
    assert_eq!(slept["is_sleeping"], false, "the server was woken");

    let after = backend
        .rollout_logprobs(&prompt, &response, "srv-bot-latest")
        .await
        .unwrap();
    assert_eq!(before.len(), after.len());
    assert_ne!(before, after, "the served adapter did not change");
    // the adapter id (not only the alias) was reloaded too
    let init_after = backend
        .rollout_logprobs(&prompt, &response, "srv-bot-init")
        .await
        .unwrap();
    assert_eq!(init_after, after);
    let rec = read_json(Path::new(b["feedback_log_path"].as_str().unwrap()));
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["resolved_lora_id"], json!(id));
}

/// `teacher_mode: "remote"` against a real `claas serve` of the same base model: the remote
/// teacher's top-k equals the self-teacher's, so the step is the same; misconfigurations are
/// clear errors that change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_teacher_on_a_claas_serve_matches_the_self_teacher() {
    let teacher = start_serve(claas_serve::ServeConfig {
        model: "builtin:tiny".into(),
        api_key: Some("sk-teacher".into()),
        max_logprobs: 100,
        ..claas_serve::ServeConfig::default()
    })
    .await;
    let engine: Arc<SdpoEngine> = Arc::new(SdpoEngine::load("builtin:tiny").unwrap());
    let api = start_api(None, Some(engine.clone()), |c| {
        c.teacher_base_url = Some(format!("{teacher}/v1"));
        c.teacher_api_key = Some("sk-teacher".into());
    })
    .await;
    let id = init_adapter(&api, "t/self").await;
    // The same starting weights under another id (a hand-copied folder is an adapter).
    let src = api.state.store().resolve(&id).unwrap().dir;
    let copy = api.root().join("t/remote");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), copy.join(f)).unwrap();
    }

    let mut body = feedback_body(&id);
    body["training"]["learning_rate"] = json!(1e-3);
    let (s, local) = api.post("/v1/feedback", body.clone()).await;
    assert_eq!(s, 200, "{local}");
    body["lora_id"] = json!("t/remote");
    body["training"]["teacher_mode"] = json!("remote");
    let (s, remote) = api.post("/v1/feedback", body.clone()).await;
    assert_eq!(s, 200, "{remote}");
    let (l, r) = (
        &local["distill_result"]["metadata"],
        &remote["distill_result"]["metadata"],
    );
    assert_eq!(l["teacher_mode"], "self");
    assert_eq!(r["teacher_mode"], "remote");
    assert_eq!(l["tokens_processed"], r["tokens_processed"]);
    for key in ["total_loss", "distill_loss", "grad_norm", "mean_is_ratio"] {
        let (x, y) = (l[key].as_f64().unwrap(), r[key].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-3 * x.abs().max(1e-3),
            "{key}: self {x} vs remote {y}"
        );
    }
    assert!(l["distill_loss"].as_f64().unwrap().abs() > 0.0);

    // No teacher configured: 422 before anything happens.
    let plain = start_api(None, Some(engine.clone()), |_| {}).await;
    let id = init_adapter(&plain, "t/none").await;
    let before = tree(&plain.root());
    body["lora_id"] = json!(id);
    let (s, b) = plain.post("/v1/feedback", body.clone()).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["detail"][0]["msg"]
            .as_str()
            .unwrap()
            .contains("CLAAS_TEACHER_BASE_URL"),
        "{b}"
    );
    assert_eq!(tree(&plain.root()), before);

    // A teacher server that caps log-probs below teacher_top_k: 502 naming the server's limit.
    let capped = start_serve(claas_serve::ServeConfig {
        model: "builtin:tiny".into(),
        ..claas_serve::ServeConfig::default()
    })
    .await;
    let api = start_api(None, Some(engine), |c| {
        c.teacher_base_url = Some(capped.clone())
    })
    .await;
    let id = init_adapter(&api, "t/capped").await;
    let before = tree(&api.root());
    body["lora_id"] = json!(id);
    let (s, b) = api.post("/v1/distill", body).await;
    assert_eq!(s, 502, "{b}");
    let d = b["detail"].as_str().unwrap();
    assert!(
        d.contains("Remote teacher") && d.contains("--max-logprobs"),
        "{d}"
    );
    assert_eq!(tree(&api.root()), before);
}
