//! The feedback lifecycle against a fake vLLM server: drain, rollout log-probs, sleep, save,
//! wake, reload, logs, locks, crash safety. The trainer is a double that copies the adapter
//! (SDPO itself is exercised in the end-to-end test with claas-sdpo).

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use claas_model::{DType, Device, LoraAdapter, Qwen3Config};
use claas_store::FaultPoint;
use common::*;
use serde_json::json;

#[tokio::test]
async fn feedback_happy_path_orchestrates_the_server() {
    let (vurl, fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "openclaw/assistant").await;
    assert_eq!(id, "openclaw/assistant-init");
    fake.calls.lock().unwrap().clear();

    let (s, b) = api
        .post("/v1/feedback", feedback_body("openclaw/assistant-latest"))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "ok");
    assert_eq!(b["lora_id"], "openclaw/assistant-init");
    assert_eq!(b["batch_size"], 1);
    assert_eq!(b["vllm"], json!({"slept": true, "woke": true}));
    assert_eq!(b["distill_result"]["lora_id"], "openclaw/assistant-init");
    let md = &b["distill_result"]["metadata"];
    for k in [
        "total_loss",
        "distill_loss",
        "kl_reg",
        "mean_is_ratio",
        "clip_fraction",
        "grad_norm",
        "tokens_processed",
        "teacher_mode",
    ] {
        assert!(md.get(k).is_some(), "metadata lacks {k}: {md}");
    }
    assert_eq!(md["adapter_version"], 1, "init was version 0");
    assert_eq!(b["previous_version"], 0);
    assert_eq!(b["version_name"], "openclaw/assistant-init@v1");
    for k in ["sleep", "distill", "save", "wake", "logprobs", "total"] {
        assert!(b["timing_ms"][k].is_u64(), "timing lacks {k}");
    }

    // the order of operations on the inference server
    let actions = fake.actions();
    let root = api.root();
    let path = root.join("openclaw/assistant-init");
    let expected = vec![
        "tokenize openclaw-assistant-latest".to_string(),
        "completions openclaw-assistant-latest max_tokens=1 prompt_logprobs=1".to_string(),
        "sleep level=1".to_string(),
        "wake_up".to_string(),
        "unload openclaw-assistant-init".to_string(),
        format!("load openclaw-assistant-init {}", path.display()),
        "unload openclaw-assistant-latest".to_string(),
        format!("load openclaw-assistant-latest {}", path.display()),
    ];
    assert_eq!(actions, expected);
    assert!(
        fake.calls().first().is_some_and(|c| c == "metrics"),
        "drain polls /metrics first"
    );
    assert_eq!(
        fake.unauthorized.load(Ordering::SeqCst),
        0,
        "every call carries the API key"
    );

    // rollout log-probs were fetched for the response tokens only (prompt has 4 words)
    let job = engine.seen.lock().unwrap().jobs[0].clone();
    assert_eq!(job.adapter_id, "openclaw/assistant-init");
    assert_eq!(
        job.items[0].rollout_logprobs,
        Some(vec![fake_logprob(4), fake_logprob(5)])
    );
    assert_eq!(job.training.steps_per_batch, 1);
    assert!(
        job.optimizer_dir.is_none(),
        "fresh adapter has no optimizer state"
    );

    // saved in place, optimizer state beside it, log written
    assert_eq!(std::fs::read_to_string(path.join("step.txt")).unwrap(), "1");
    let opt = api
        .state
        .store()
        .optimizer_dir("openclaw/assistant-init")
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read_to_string(opt.join("opt.txt")).unwrap(), "1");
    let log_path = b["feedback_log_path"].as_str().unwrap();
    let rec = read_json(std::path::Path::new(log_path));
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["request_id"], b["request_id"]);
    assert_eq!(rec["lora_id"], "openclaw/assistant-latest");
    assert_eq!(rec["request"]["feedback"], "be more formal");
    assert_eq!(rec["vllm"], json!({"slept": true, "woke": true}));
    let fname = std::path::Path::new(log_path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    assert!(
        fname.ends_with(&format!("-{}.json", b["request_id"].as_str().unwrap())),
        "{fname}"
    );

    // a second feedback continues from the saved optimizer state
    let (s, _) = api
        .post("/v1/feedback", feedback_body("openclaw/assistant-latest"))
        .await;
    assert_eq!(s, 200);
    let job2 = engine.seen.lock().unwrap().jobs[1].clone();
    assert_eq!(job2.optimizer_dir.as_deref(), Some(opt.as_path()));

    let text = api.get_raw("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("claas_feedback_requests_total{status=\"ok\"} 2"),
        "{text}"
    );
    assert!(text.contains("claas_sdpo_step_seconds_count 2"), "{text}");
}

#[tokio::test]
async fn given_rollout_logprobs_and_no_sleep_options() {
    let (vurl, fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/o").await;
    fake.calls.lock().unwrap().clear();
    let mut body = feedback_body(&id);
    body["rollout_logprobs"] = json!([-0.5, -1.5]);
    body["orchestration"] = json!({"sleep_before": false, "wake_after": true, "sleep_level": 2});
    let (s, b) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["vllm"], json!({"slept": false, "woke": false}));
    let actions = fake.actions();
    assert!(
        !actions
            .iter()
            .any(|a| a.starts_with("sleep") || a == "wake_up" || a.starts_with("tokenize")),
        "{actions:?}"
    );
    // the adapter is still hot-reloaded
    assert!(
        actions.iter().any(|a| a.starts_with("load u-o-init ")),
        "{actions:?}"
    );
    assert_eq!(
        engine.seen.lock().unwrap().jobs[0].items[0].rollout_logprobs,
        Some(vec![-0.5, -1.5])
    );

    // sleep level 2 is passed through
    fake.calls.lock().unwrap().clear();
    let mut body = feedback_body(&id);
    body["orchestration"] = json!({"sleep_level": 2});
    let (s, _) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 200);
    assert!(fake.actions().contains(&"sleep level=2".to_string()));
}

#[tokio::test]
async fn busy_server_gives_503_and_is_not_slept() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(Some(&vurl), Some(Arc::new(CopyEngine::default())), |c| {
        c.drain_timeout = Duration::from_millis(300)
    })
    .await;
    let id = init_adapter(&api, "u/busy").await;
    fake.running.store(2, Ordering::SeqCst);
    fake.calls.lock().unwrap().clear();
    let before = tree(&api.root());
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 503, "{b}");
    let d = b["detail"].as_str().unwrap();
    assert!(
        d.starts_with("vLLM not idle:") && d.contains("2 running"),
        "{d}"
    );
    assert!(fake.actions().is_empty(), "{:?}", fake.actions());
    assert_eq!(tree(&api.root()), before);
    let rec = read_json(log_files(&api.logs()).last().unwrap());
    assert_eq!(
        (rec["status"].as_str(), rec["phase"].as_str()),
        (Some("error"), Some("drain"))
    );
}

#[tokio::test]
async fn training_failure_wakes_the_server_and_logs_the_phase() {
    let (vurl, fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    engine.fail_bad_input.store(true, Ordering::SeqCst);
    let api = start_api(Some(&vurl), Some(Arc::new(engine)), |_| {}).await;
    let id = init_adapter(&api, "u/f").await;
    fake.calls.lock().unwrap().clear();
    let before = tree(&api.root());
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
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
    let actions = fake.actions();
    assert_eq!(
        actions.iter().filter(|a| *a == "wake_up").count(),
        1,
        "{actions:?}"
    );
    assert!(
        actions.iter().position(|a| a == "sleep level=1")
            < actions.iter().position(|a| a == "wake_up")
    );
    assert_eq!(tree(&api.root()), before, "nothing written on failure");
    let rec = read_json(log_files(&api.logs()).last().unwrap());
    assert_eq!(rec["status"], "error");
    assert_eq!(rec["phase"], "distill");
    assert_eq!(rec["vllm"], json!({"slept": true, "woke": true}));
    assert!(rec["error"].as_str().unwrap().contains("rollout_logprobs"));
}

#[tokio::test]
async fn lock_timeout_gives_409() {
    let api = start_api(None, Some(Arc::new(CopyEngine::default())), |c| {
        c.lock_timeout = Duration::from_millis(200)
    })
    .await;
    let id = init_adapter(&api, "u/l").await;
    let guard = api.state.locks().try_acquire(&id).unwrap();
    let (s, b) = api.post("/v1/feedback", feedback_body("u/l-latest")).await;
    assert_eq!(s, 409, "{b}");
    let d = b["detail"].as_str().unwrap();
    assert!(
        d.starts_with("Timed out waiting for lock on LoRA 'u/l-latest'"),
        "{d}"
    );
    let rec = read_json(log_files(&api.logs()).last().unwrap());
    assert_eq!(rec["phase"], "lock");
    let (s, _) = api.post("/v1/distill", feedback_body(&id)).await;
    assert_eq!(s, 409);
    // scoring waits for the update of the adapter too
    let (s, _) = api
        .post(
            "/v1/score",
            json!({"lora_id": id, "prompt": "p", "response": "r"}),
        )
        .await;
    assert_eq!(s, 409);
    drop(guard);
    let (s, _) = api.post("/v1/feedback", feedback_body("u/l-latest")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn update_by_another_process_sharing_the_root_gives_409() {
    let api = start_api(None, Some(Arc::new(CopyEngine::default())), |c| {
        c.lock_timeout = Duration::from_millis(300)
    })
    .await;
    let id = init_adapter(&api, "u/shared").await;
    // Another process on the same LoRA root (a second API replica, `claas init`) is updating
    // the adapter: its lock is an OS file lock this process's mutex knows nothing about.
    let other = claas_store::LoraStore::open(api.root()).unwrap();
    let held = other.try_lock_adapter(&id).unwrap().unwrap();
    let before = tree(&api.root());
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 409, "{b}");
    assert_eq!(tree(&api.root()), before);
    drop(held);
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn same_adapter_serialises_other_adapters_run_in_parallel() {
    // Two adapters: the double waits until both updates are inside the trainer at the same
    // time (and fails if that never happens).
    let engine = CopyEngine {
        rendezvous: Some(2),
        ..Default::default()
    };
    let api = start_api(None, Some(Arc::new(engine.clone())), |_| {}).await;
    let a = init_adapter(&api, "u/pa").await;
    let b = init_adapter(&api, "u/pb").await;
    let (ra, rb) = tokio::join!(
        api.post("/v1/feedback", feedback_body(&a)),
        api.post("/v1/feedback", feedback_body(&b))
    );
    assert_eq!((ra.0, rb.0), (200, 200));
    assert_eq!(engine.max_in_flight.load(Ordering::SeqCst), 2);

    // Same adapter, several concurrent requests: never two in the trainer at once.
    let engine = CopyEngine {
        hold: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let api = start_api(None, Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/same").await;
    let reqs = (0..4).map(|_| api.post("/v1/feedback", feedback_body("u/same-latest")));
    let results = futures::future::join_all(reqs).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(engine.max_in_flight.load(Ordering::SeqCst), 1);
    // v0 from init, then one version per update, none lost.
    assert_eq!(api.state.store().version(&id).unwrap(), 4);
    let versions = api.state.store().versions(&id).unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for pair in versions.windows(2) {
        assert_eq!(pair[1].parent, Some(pair[0].version), "updates chain");
    }
    let model_dir = claas_model::builtin_model_dir("tiny").unwrap();
    let mcfg = Qwen3Config::from_file(&model_dir.join("config.json")).unwrap();
    LoraAdapter::load(&api.root().join(&id), &mcfg, &Device::Cpu, DType::F32).unwrap();
}

#[tokio::test]
async fn crash_between_stage_and_rename_keeps_the_old_adapter_loadable() {
    let api = start_api(None, Some(Arc::new(CopyEngine::default())), |_| {}).await;
    let id = init_adapter(&api, "u/c").await;
    let dir = api.root().join(&id);
    let old_weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    for point in [FaultPoint::Staged, FaultPoint::MovedAside] {
        api.state
            .store()
            .set_fault_hook(Some(Arc::new(move |p, rel| {
                p == point && rel == "u/c-init"
            })));
        let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
        assert_eq!(s, 500, "{b}");
        assert!(
            b["detail"].as_str().unwrap().contains("phase 'save'"),
            "{b}"
        );
        api.state.store().set_fault_hook(None);
        // what a restarted process sees
        let reopened = claas_store::LoraStore::open(api.root()).unwrap();
        let resolved = reopened.resolve("u/c-latest").unwrap();
        assert_eq!(resolved.id, id);
        assert!(
            !resolved.dir.join("step.txt").exists(),
            "new adapter must not be half-visible"
        );
        assert_eq!(
            std::fs::read(resolved.dir.join("adapter_model.safetensors")).unwrap(),
            old_weights
        );
        let model_dir = claas_model::builtin_model_dir("tiny").unwrap();
        let mcfg = Qwen3Config::from_file(&model_dir.join("config.json")).unwrap();
        LoraAdapter::load(&resolved.dir, &mcfg, &Device::Cpu, DType::F32).unwrap();
    }
    let rec = read_json(log_files(&api.logs()).last().unwrap());
    assert_eq!(rec["phase"], "save");
}

#[tokio::test]
async fn distill_saves_a_new_version_and_moves_latest() {
    let (vurl, fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/v").await;
    fake.calls.lock().unwrap().clear();
    let (s, b) = api.post("/v1/distill", feedback_body("u/v-latest")).await;
    assert_eq!(s, 200, "{b}");
    let new_id = b["lora_id"].as_str().unwrap().to_string();
    assert!(new_id.starts_with("u/v-20") && new_id != id, "{new_id}");
    assert!(b["metadata"]["total_loss"].is_number());
    assert_eq!(api.state.store().resolve("u/v-latest").unwrap().id, new_id);
    // the old version is untouched; the new one carries the optimizer state
    assert!(!api.root().join(&id).join("step.txt").exists());
    assert!(api.root().join(&new_id).join("step.txt").exists());
    // no sleep for a versioned save; the moved alias is reloaded into the server
    let new_dir = api.root().join(&new_id);
    assert_eq!(
        fake.actions(),
        vec![
            format!("unload {}", claas_api::normalize_adapter_name(&new_id)),
            format!(
                "load {} {}",
                claas_api::normalize_adapter_name(&new_id),
                new_dir.display()
            ),
            "unload u-v-latest".to_string(),
            format!("load u-v-latest {}", new_dir.display()),
        ]
    );
    assert!(api
        .state
        .store()
        .load_state(&new_id, "optimizer")
        .unwrap()
        .is_some());
    let (_, list) = api.get("/v1/lora?prefix=u/").await;
    assert_eq!(list["loras"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn batched_requests_are_one_step() {
    let engine = CopyEngine::default();
    let api = start_api(None, Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/batch").await;
    let mut second = feedback_body(&id);
    second["response"] = json!("another answer");
    let (s, b) = api
        .post("/v1/feedback", json!({"requests": [feedback_body(&id), second], "orchestration": {"sleep_before": false}}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["batch_size"], 2);
    let seen = engine.seen.lock().unwrap();
    assert_eq!(seen.jobs.len(), 1);
    assert_eq!(seen.jobs[0].items.len(), 2);
    assert_eq!(seen.jobs[0].items[1].response, "another answer");
    let rec = read_json(std::path::Path::new(
        b["feedback_log_path"].as_str().unwrap(),
    ));
    assert_eq!(rec["request"]["requests"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn score_via_inference_server_without_trainer() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(Some(&vurl), None, |_| {}).await;
    let id = init_adapter(&api, "u/s").await;
    let (s, b) = api
        .post(
            "/v1/score",
            json!({"lora_id": "u/s-latest", "prompt": "a b c", "response": " d e"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["resolved_lora_id"], id);
    assert_eq!(b["logprobs"], json!([fake_logprob(3), fake_logprob(4)]));
    assert_eq!(b["completion_tokens"], 2);
    assert_eq!(b["source"], "inference_server");
    assert!(fake.actions().contains(&"tokenize u-s-latest".to_string()));
}

#[tokio::test]
async fn mismatched_fetched_logprobs_fall_back_on_policy_but_given_ones_are_422() {
    let (vurl, _fake) = start_fake_vllm().await;
    let engine = CopyEngine::default();
    engine.reject_logprobs.store(true, Ordering::SeqCst);
    let api = start_api(Some(&vurl), Some(Arc::new(engine.clone())), |_| {}).await;
    let id = init_adapter(&api, "u/r").await;
    // fetched from the server, rejected by the trainer: retried without them
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(engine.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        engine.seen.lock().unwrap().jobs[0].items[0].rollout_logprobs,
        None
    );
    // given by the client: the client's error, reported as 422 without a retry
    let mut body = feedback_body(&id);
    body["rollout_logprobs"] = json!([-1.0]);
    let (s, _) = api.post("/v1/feedback", body).await;
    assert_eq!(s, 422);
    assert_eq!(engine.calls.load(Ordering::SeqCst), 3);
}
