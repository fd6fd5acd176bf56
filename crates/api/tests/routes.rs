//! Routes, validation and storage behaviour through the real router over HTTP.

mod common;

use std::io::Read;

use claas_model::{DType, Device, LoraAdapter, Module, Qwen3Config};
use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn root_docs_openapi_health_metrics() {
    let api = start_api(None, None, |_| {}).await;
    let (s, b) = api.get("/").await;
    assert_eq!(s, 200);
    assert_eq!(
        b,
        json!({"name": "CLaaS API", "version": "0.1.0",
               "description": "Continual Learning as a Service - SDPO-style distillation", "docs": "/docs"})
    );
    let (s, b) = api.get("/openapi.json").await;
    assert_eq!(s, 200);
    for p in [
        "/v1/feedback",
        "/v1/distill",
        "/v1/lora/init",
        "/v1/lora",
        "/v1/lora/export",
        "/v1/score",
        "/metrics",
    ] {
        assert!(b["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    assert_eq!(
        b["components"]["schemas"]["TrainingConfig"]["properties"]["learning_rate"]["default"],
        json!(3e-5)
    );
    let docs = api.get_raw("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));

    let (s, b) = api.get("/v1/health").await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "degraded", "no trainer loaded: {b}");
    assert_eq!(b["inference"]["status"], "not_configured");

    let m = api.get_raw("/metrics").await;
    assert_eq!(m.status(), 200);
    let text = m.text().await.unwrap();
    assert!(
        text.contains("claas_feedback_requests_total{status=\"ok\"} 0"),
        "{text}"
    );

    let (s, b) = api.get("/v1/nope").await;
    assert_eq!((s, b), (404, json!({"detail": "Not Found"})));
    let r = api
        .http
        .delete(format!("{}/v1/feedback", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn health_reports_inference_server() {
    let (vurl, _fake) = start_fake_vllm().await;
    let api = start_api(
        Some(&vurl),
        Some(std::sync::Arc::new(CopyEngine::default())),
        |_| {},
    )
    .await;
    let (s, b) = api.get("/v1/health").await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "healthy", "{b}");
    assert_eq!(b["inference"]["status"], "healthy");
    assert_eq!(b["inference"]["sleeping"], false);
    assert_eq!(b["worker"]["model"], "builtin:tiny");
}

#[tokio::test]
async fn init_list_export_on_builtin_tiny() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(Some(&vurl), None, |_| {}).await;
    let id = init_adapter(&api, "alice/bot").await;
    assert_eq!(id, "alice/bot-init");
    // the new adapter (and its latest alias) is loaded into the inference server
    let actions = fake.actions();
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("load alice-bot-init ")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("load alice-bot-latest ")),
        "{actions:?}"
    );

    let (s, b) = api.get("/v1/lora").await;
    assert_eq!(s, 200);
    assert_eq!(b, json!({"loras": ["alice/bot-init", "alice/bot-latest"]}));
    let (_, b) = api.get("/v1/lora?prefix=bob/").await;
    assert_eq!(b, json!({"loras": []}));
    let (_, b) = api.get("/v1/lora?prefix=alice/bot-l").await;
    assert_eq!(b, json!({"loras": ["alice/bot-latest"]}));

    // export through the alias: a zip of the PEFT files
    let r = api
        .http
        .get(format!(
            "{}/v1/lora/export?lora_id=alice/bot-latest",
            api.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"alice__bot-latest.zip\""
    );
    let bytes = r.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<String> = zip.file_names().map(str::to_string).collect();
    names.sort();
    assert_eq!(
        names,
        vec!["adapter_config.json", "adapter_model.safetensors"]
    );
    let mut cfg = String::new();
    zip.by_name("adapter_config.json")
        .unwrap()
        .read_to_string(&mut cfg)
        .unwrap();
    let cfg: Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["base_model_name_or_path"], "builtin:tiny");

    // the saved adapter loads against the base model: A random, B zero (a no-op adapter)
    let model_dir = claas_model::builtin_model_dir("tiny").unwrap();
    let mcfg = Qwen3Config::from_file(&model_dir.join("config.json")).unwrap();
    let dir = api.root().join("alice/bot-init");
    let adapter = LoraAdapter::load(&dir, &mcfg, &Device::Cpu, DType::F32).unwrap();
    for l in 0..mcfg.num_hidden_layers {
        for m in claas_model::ALL_MODULES {
            let pair = adapter.pair(l, m).unwrap();
            let b: f32 = pair
                .b
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            let a: f32 = pair
                .a
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(b, 0.0);
            assert!(a > 0.0);
        }
    }
    assert_eq!(
        adapter.pair(0, Module::Q).unwrap().a.dims(),
        &[4, mcfg.hidden_size]
    );
}

#[tokio::test]
async fn init_rejects_disallowed_base_model_with_403() {
    let api = start_api(None, None, |_| {}).await;
    let before = tree(&api.root());
    let (s, b) = api
        .post(
            "/v1/lora/init",
            json!({"lora_id": "u/x", "base_model": "evil/model"}),
        )
        .await;
    assert_eq!(s, 403);
    let d = b["detail"].as_str().unwrap();
    assert!(d.contains("base_model 'evil/model' is not allowed"), "{d}");
    assert!(
        d.contains("Allowed models: Qwen/Qwen3-8B, builtin:tiny"),
        "{d}"
    );
    assert_eq!(tree(&api.root()), before);
}

fn is_422_at(status: u16, body: &Value, loc: &[Value]) -> bool {
    status == 422
        && body["detail"].as_array().is_some_and(|d| {
            d.iter()
                .any(|i| i["loc"].as_array().is_some_and(|l| l == loc))
        })
}

#[tokio::test]
async fn every_validation_range_is_rejected_and_nothing_written() {
    let api = start_api(
        None,
        Some(std::sync::Arc::new(CopyEngine::default())),
        |_| {},
    )
    .await;
    let id = init_adapter(&api, "u/v").await;
    let before = tree(&api.root());

    let out_of_range: Vec<(&str, Value)> = vec![
        ("learning_rate", json!(9e-7)),
        ("learning_rate", json!(0.011)),
        ("learning_rate", json!("fast")),
        ("alpha", json!(-0.01)),
        ("alpha", json!(1.01)),
        ("is_clip", json!(0.99)),
        ("is_clip", json!(20.5)),
        ("max_grad_norm", json!(-1e-9)),
        ("kl_reg_weight", json!(-0.1)),
        ("kl_reg_weight", json!(1.5)),
        ("teacher_top_k", json!(9)),
        ("teacher_top_k", json!(101)),
        ("teacher_top_k", json!(50.5)),
        ("steps_per_batch", json!(0)),
        ("teacher_mode", json!("teacher")),
    ];
    for route in ["/v1/feedback", "/v1/distill"] {
        for (field, value) in &out_of_range {
            let mut body = feedback_body(&id);
            body["training"][*field] = value.clone();
            let (s, b) = api.post(route, body).await;
            assert!(
                is_422_at(s, &b, &[json!("body"), json!("training"), json!(field)]),
                "{route} {field}={value}: {s} {b}"
            );
        }
        // orchestration.sleep_level 1..2
        for lvl in [0, 3] {
            let mut body = feedback_body(&id);
            body["orchestration"] = json!({"sleep_level": lvl});
            let (s, b) = api.post(route, body).await;
            assert!(
                is_422_at(
                    s,
                    &b,
                    &[json!("body"), json!("orchestration"), json!("sleep_level")]
                ),
                "{b}"
            );
        }
        // required strings, min_length 1
        for field in ["prompt", "response", "feedback"] {
            let mut body = feedback_body(&id);
            body[field] = json!("");
            let (s, b) = api.post(route, body.clone()).await;
            assert!(is_422_at(s, &b, &[json!("body"), json!(field)]), "{b}");
            assert_eq!(b["detail"][0]["type"], "string_too_short");
            body.as_object_mut().unwrap().remove(field);
            let (s, b) = api.post(route, body).await;
            assert!(is_422_at(s, &b, &[json!("body"), json!(field)]), "{b}");
            assert_eq!(b["detail"][0]["type"], "missing");
            assert_eq!(b["detail"][0]["msg"], "Field required");
        }
        // wrong types
        let mut body = feedback_body(&id);
        body["rollout_logprobs"] = json!(["a"]);
        let (s, b) = api.post(route, body).await;
        assert!(
            is_422_at(s, &b, &[json!("body"), json!("rollout_logprobs"), json!(0)]),
            "{b}"
        );
        let mut body = feedback_body(&id);
        body["orchestration"] = json!({"sleep_before": "yes"});
        let (s, b) = api.post(route, body).await;
        assert!(
            is_422_at(
                s,
                &b,
                &[json!("body"), json!("orchestration"), json!("sleep_before")]
            ),
            "{b}"
        );
        // several problems are reported together
        let mut body = feedback_body(&id);
        body["training"] = json!({"alpha": 2, "is_clip": 0});
        let (s, b) = api.post(route, body).await;
        assert_eq!(s, 422);
        assert_eq!(b["detail"].as_array().unwrap().len(), 2, "{b}");
        // batch form: an empty list, and a bad item
        let (s, b) = api.post(route, json!({"requests": []})).await;
        assert!(is_422_at(s, &b, &[json!("body"), json!("requests")]), "{b}");
        let mut bad = feedback_body(&id);
        bad["training"]["alpha"] = json!(3);
        let (s, b) = api
            .post(route, json!({"requests": [feedback_body(&id), bad]}))
            .await;
        assert!(
            is_422_at(
                s,
                &b,
                &[
                    json!("body"),
                    json!("requests"),
                    json!(1),
                    json!("training"),
                    json!("alpha")
                ]
            ),
            "{b}"
        );
        // malformed JSON
        let r = api
            .http
            .post(format!("{}{route}", api.url))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["detail"][0]["type"], "json_invalid");
    }
    // an empty body is a missing body
    let r = api
        .http
        .post(format!("{}/v1/feedback", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["detail"][0]["loc"], json!(["body"]));
    assert_eq!(b["detail"][0]["type"], "missing");
    // a body that is not an object
    let (s, b) = api.post("/v1/feedback", json!([1, 2])).await;
    assert!(is_422_at(s, &b, &[json!("body")]), "{b}");
    // messages follow pydantic
    let mut body = feedback_body(&id);
    body["training"]["learning_rate"] = json!(0.5);
    let (_, b) = api.post("/v1/feedback", body).await;
    assert_eq!(
        b["detail"][0]["msg"],
        "Input should be less than or equal to 0.01"
    );
    assert_eq!(b["detail"][0]["type"], "less_than_equal");

    // lora init ranges
    for (field, value) in [
        ("lora_r", json!(3)),
        ("lora_r", json!(129)),
        ("lora_alpha", json!(7)),
        ("lora_alpha", json!(257)),
        ("target_modules", json!(["q_proj", "lm_head"])),
        ("target_modules", json!("q_proj")),
    ] {
        let mut body = json!({"lora_id": "u/new", "base_model": "builtin:tiny"});
        body[field] = value.clone();
        let (s, b) = api.post("/v1/lora/init", body).await;
        assert!(
            is_422_at(s, &b, &[json!("body"), json!(field)]),
            "{field}={value}: {b}"
        );
    }
    let (s, b) = api
        .post("/v1/lora/init", json!({"base_model": "builtin:tiny"}))
        .await;
    assert!(is_422_at(s, &b, &[json!("body"), json!("lora_id")]), "{b}");
    // score
    let (s, b) = api
        .post("/v1/score", json!({"prompt": "", "response": "x"}))
        .await;
    assert!(is_422_at(s, &b, &[json!("body"), json!("prompt")]), "{b}");

    // nothing was written: same files, no logs, adapter untouched
    assert_eq!(tree(&api.root()), before);
    assert!(log_files(&api.logs()).is_empty());
}

#[tokio::test]
async fn path_traversal_ids_are_rejected() {
    let api = start_api(
        None,
        Some(std::sync::Arc::new(CopyEngine::default())),
        |_| {},
    )
    .await;
    // a file outside the root that traversal would reach
    std::fs::create_dir_all(api.tmp.path().join("outside")).unwrap();
    std::fs::write(api.tmp.path().join("outside/adapter_config.json"), "{}").unwrap();
    let before_root = tree(&api.root());
    let before_tmp = tree(api.tmp.path());
    let bad_ids = [
        "../outside",
        "a/../../outside",
        "/etc/passwd",
        "/tmp/x",
        "a\u{0}b",
        "..",
        ".aliases.json",
        "u/.state",
        "a\\..\\b",
        "",
    ];
    for id in bad_ids {
        for route in ["/v1/feedback", "/v1/distill"] {
            let (s, b) = api.post(route, feedback_body(id)).await;
            assert!(
                is_422_at(s, &b, &[json!("body"), json!("lora_id")]),
                "{route} {id:?}: {s} {b}"
            );
        }
        let (s, b) = api
            .post(
                "/v1/lora/init",
                json!({"lora_id": id, "base_model": "builtin:tiny"}),
            )
            .await;
        assert!(
            is_422_at(s, &b, &[json!("body"), json!("lora_id")]),
            "init {id:?}: {s} {b}"
        );
        let (s, b) = api
            .post(
                "/v1/score",
                json!({"lora_id": id, "prompt": "p", "response": "r"}),
            )
            .await;
        assert!(
            is_422_at(s, &b, &[json!("body"), json!("lora_id")]),
            "score {id:?}: {s} {b}"
        );
        let r = api
            .http
            .get(format!("{}/v1/lora/export", api.url))
            .query(&[("lora_id", id)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "export {id:?}");
    }
    let (s, b) = api.get("/v1/lora?prefix=../").await;
    assert_eq!((s, b), (200, json!({"loras": []})));
    assert_eq!(tree(&api.root()), before_root);
    assert_eq!(tree(api.tmp.path()), before_tmp);
}

#[tokio::test]
async fn unknown_adapter_or_alias_is_404() {
    let api = start_api(
        None,
        Some(std::sync::Arc::new(CopyEngine::default())),
        |_| {},
    )
    .await;
    let (s, b) = api
        .post("/v1/feedback", feedback_body("nobody/bot-latest"))
        .await;
    assert_eq!(
        (s, b),
        (404, json!({"detail": "LoRA not found: nobody/bot-latest"}))
    );
    // a failed feedback is logged with its phase
    let logs = log_files(&api.logs());
    assert_eq!(logs.len(), 1);
    let rec = read_json(&logs[0]);
    assert_eq!(rec["status"], "error");
    assert_eq!(rec["phase"], "validate");
    assert_eq!(rec["http_status"], 404);

    let (s, _) = api.post("/v1/distill", feedback_body("nobody/bot")).await;
    assert_eq!(s, 404);
    let (s, b) = api.get("/v1/lora/export?lora_id=nobody/bot").await;
    assert_eq!(
        (s, b),
        (404, json!({"detail": "LoRA not found: nobody/bot"}))
    );
    let (s, _) = api
        .post(
            "/v1/score",
            json!({"lora_id": "nobody/bot", "prompt": "p", "response": "r"}),
        )
        .await;
    assert_eq!(s, 404);
    let (s, b) = api.get("/v1/lora/export").await;
    assert!(is_422_at(s, &b, &[json!("query"), json!("lora_id")]), "{b}");

    // a dangling alias is also 404
    let id = init_adapter(&api, "u/d").await;
    std::fs::remove_dir_all(api.root().join(&id)).unwrap();
    let (s, _) = api.post("/v1/feedback", feedback_body("u/d-latest")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn batch_items_must_agree() {
    let api = start_api(
        None,
        Some(std::sync::Arc::new(CopyEngine::default())),
        |_| {},
    )
    .await;
    let a = init_adapter(&api, "u/a").await;
    let b = init_adapter(&api, "u/b").await;
    let before = tree(&api.root());
    let (s, body) = api
        .post(
            "/v1/feedback",
            json!({"requests": [feedback_body(&a), feedback_body(&b)]}),
        )
        .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"detail": "all requests must use the same lora_id"})
        )
    );
    let mut other = feedback_body(&a);
    other["training"]["alpha"] = json!(0.7);
    let (s, body) = api
        .post(
            "/v1/feedback",
            json!({"requests": [feedback_body(&a), other]}),
        )
        .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"detail": "all requests must use the same training config"})
        )
    );
    assert_eq!(tree(&api.root()), before);
}

#[tokio::test]
async fn no_trainer_gives_503_without_touching_the_server() {
    let (vurl, fake) = start_fake_vllm().await;
    let api = start_api(Some(&vurl), None, |_| {}).await;
    let id = init_adapter(&api, "u/n").await;
    let n_before = fake.calls().len();
    let (s, b) = api.post("/v1/feedback", feedback_body(&id)).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(
        fake.calls().len(),
        n_before,
        "server was touched: {:?}",
        fake.calls()
    );
    let (s, _) = api.post("/v1/distill", feedback_body(&id)).await;
    assert_eq!(s, 503);
}

/// The `lora_id` pattern the document gives matches exactly the ids the store accepts.
#[tokio::test]
async fn openapi_lora_id_pattern_is_the_store_grammar() {
    let api = start_api(None, None, |_| {}).await;
    let (_, doc) = api.get("/openapi.json").await;
    // The field of a schema, or of the `allOf` part that has it.
    let field = |name: &str| -> Value {
        let s = &doc["components"]["schemas"][name];
        std::iter::once(s)
            .chain(s["allOf"].as_array().into_iter().flatten())
            .map(|p| p["properties"]["lora_id"].clone())
            .find(|f| !f.is_null())
            .unwrap_or_else(|| panic!("{name} has no lora_id"))
    };
    let schema = &field("FeedbackItem");
    let pattern = regex::Regex::new(schema["pattern"].as_str().unwrap()).unwrap();
    let max_len = schema["maxLength"].as_u64().unwrap() as usize;
    let c128 = "c".repeat(128);
    let deep16 = vec!["d"; 16].join("/");
    let deep17 = vec!["d"; 17].join("/");
    let long = format!("{c128}/{c128}/{c128}/{c128}/x");
    let ids = [
        "a",
        "user123/coder-v1",
        "a.b/_c/-d",
        "a/",
        "a//",
        &c128,
        &deep16,
        "",
        ".a",
        "a/.b",
        "a/../b",
        "..",
        "a//b",
        "/a",
        "a b",
        "a\\b",
        "a@v1",
        "é",
        "a\0b",
        &deep17,
        &long,
    ];
    let ids: Vec<String> = ids
        .iter()
        .map(|s| s.to_string())
        .chain([format!("{c128}c")])
        .collect();
    for id in &ids {
        let documented = pattern.is_match(id) && id.len() <= max_len;
        let accepted = claas_store::validate_id(id).is_ok();
        assert_eq!(documented, accepted, "{id:?}");
    }
    // Every lora_id a request sends carries it: the bodies and the query parameters.
    for name in ["LoraInitRequest", "RollbackRequest"] {
        assert_eq!(field(name)["pattern"], schema["pattern"], "{name}");
    }
    for path in ["/v1/lora", "/v1/lora/export", "/v1/lora/versions"] {
        let op = doc["paths"][path].as_object().unwrap();
        let param = op
            .values()
            .flat_map(|o| o["parameters"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == "lora_id")
            .unwrap();
        assert_eq!(param["schema"]["pattern"], schema["pattern"], "{path}");
    }
}

/// Every `(method, path)` the router serves is documented with a 200 and the error answers
/// it really gives; every documented operation is served (a probe does not reach the router's
/// 404/405 fallbacks, and its status is one the document lists, with the body shape it names).
#[tokio::test]
async fn openapi_describes_every_route_and_only_those() {
    use claas_api::routes::{API_DESCRIPTION, API_NAME, API_VERSION, ROUTES};
    let api = start_api(None, None, |_| {}).await;
    let (s, doc) = api.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], API_NAME);
    assert_eq!(doc["info"]["version"], API_VERSION);
    assert_eq!(doc["info"]["description"], API_DESCRIPTION);

    let methods = ["get", "post", "put", "delete", "patch", "head", "options"];
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in methods {
            if item.get(m).is_some() {
                documented.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    let served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let (mut a, mut b) = (documented.clone(), served.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "documented operations != ROUTES");

    let schemas = &doc["components"]["schemas"];
    let issue = &schemas["ValidationError"];
    assert_eq!(issue["required"], json!(["loc", "msg", "type"]), "{issue}");
    assert_eq!(schemas["HTTPError"]["required"], json!(["detail"]));
    let per_page = &doc["paths"]["/v1/dashboard"]["get"]["parameters"][1];
    assert_eq!(per_page["name"], "per_page");
    assert_eq!(
        per_page["schema"]["maximum"].as_u64(),
        Some(claas_api::dashboard::MAX_PER_PAGE)
    );
    assert_eq!(
        schemas["HTTPValidationError"]["properties"]["detail"]["items"]["$ref"],
        "#/components/schemas/ValidationError"
    );
    let error_refs = [
        "#/components/schemas/HTTPError",
        "#/components/schemas/HTTPValidationError",
        "#/components/schemas/Unprocessable",
    ];

    for (m, p) in ROUTES {
        let op = &doc["paths"][*p][m.to_lowercase()];
        let responses = op["responses"].as_object().unwrap();
        assert!(responses.contains_key("200"), "{m} {p}: no 200");
        if *m == "POST" {
            assert!(
                op["requestBody"]["content"]["application/json"]["schema"].is_object(),
                "{m} {p}: no request body schema"
            );
        }
        // The API key's 401 is documented exactly where the middleware asks for the key.
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        assert_eq!(
            responses.contains_key("401"),
            claas_api::auth::is_protected(&method, p),
            "{m} {p}: 401"
        );
        // Errors answered in JSON name the FastAPI-style bodies.
        for (code, r) in responses {
            let Some(schema) = r["content"]["application/json"]["schema"].as_object() else {
                continue;
            };
            if code.starts_with('4') || code.starts_with('5') {
                let target = schema.get("$ref").and_then(Value::as_str).unwrap_or("");
                assert!(error_refs.contains(&target), "{m} {p} {code}: {schema:?}");
            }
        }

        // Probe with no query and an empty JSON object: nothing is written (422s, 503s, ...).
        let mut req = api.http.request(method, format!("{}{p}", api.url));
        if *m == "POST" {
            req = req.json(&json!({}));
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = r.bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_ne!(
            status, 405,
            "{m} {p}: the router does not serve this method"
        );
        assert_ne!(
            (status, &body),
            (404, &json!({"detail": "Not Found"})),
            "{m} {p}: the router's fallback answered"
        );
        let code = status.to_string();
        assert!(
            responses.contains_key(&code) || responses.contains_key("default"),
            "{m} {p}: answered {status}, documented {:?}",
            responses.keys().collect::<Vec<_>>()
        );
        if status >= 400 && ctype.starts_with("application/json") {
            let detail = &body["detail"];
            if status == 422 && detail.is_array() {
                let props = issue["properties"].as_object().unwrap();
                for i in detail.as_array().unwrap() {
                    for k in ["loc", "msg", "type"] {
                        assert!(i.get(k).is_some(), "{m} {p}: {i}");
                    }
                    for k in i.as_object().unwrap().keys() {
                        assert!(props.contains_key(k), "{m} {p}: undocumented {k} in {i}");
                    }
                }
            } else {
                assert!(detail.is_string(), "{m} {p}: {status} {body}");
            }
        }
    }
}

/// The document's training schema is the validation table, and both are the trainer's defaults.
#[tokio::test]
async fn openapi_training_defaults_are_the_trainer_defaults() {
    use claas_api::types::{TrainingConfig, TRAINING_FIELDS};
    let api = start_api(None, None, |_| {}).await;
    let (_, doc) = api.get("/openapi.json").await;
    let props = &doc["components"]["schemas"]["TrainingConfig"]["properties"];
    let defaults = serde_json::to_value(TrainingConfig::default()).unwrap();
    let names: Vec<&String> = props.as_object().unwrap().keys().collect();
    assert_eq!(
        names.len(),
        defaults.as_object().unwrap().len(),
        "every TrainingConfig field is documented: {names:?}"
    );
    for f in TRAINING_FIELDS {
        let p = &props[f.name];
        assert_eq!(
            p["default"].as_f64(),
            defaults[f.name].as_f64(),
            "{}",
            f.name
        );
        assert_eq!(p["minimum"].as_f64(), f.min, "{}", f.name);
        assert_eq!(p["maximum"].as_f64(), f.max, "{}", f.name);
        assert_eq!(
            p["type"],
            if f.integer { "integer" } else { "number" },
            "{}",
            f.name
        );
        assert_eq!(p["description"], f.description);
    }
    for enum_field in ["teacher_mode", "teacher_prompt"] {
        assert_eq!(
            props[enum_field]["default"], defaults[enum_field],
            "{enum_field}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(schemas["TeacherMode"]["enum"], json!(["self", "remote"]));
    assert_eq!(
        schemas["TeacherPrompt"]["enum"],
        json!(["hindsight", "0f67ae6"])
    );
    // A feedback item's `training` is that schema.
    let item = &schemas["FeedbackItem"]["allOf"][1]["properties"];
    assert_eq!(
        item["training"]["$ref"], "#/components/schemas/TrainingConfig",
        "{item}"
    );
}

/// Export never reads outside the LoRA root: links inside an adapter folder are left out, and
/// an adapter folder that is a link out of the root gets a 403.
#[tokio::test]
async fn export_does_not_follow_links_out_of_the_root() {
    let api = start_api(None, None, |_| {}).await;
    let id = init_adapter(&api, "u/x").await;
    let outside = api.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("shadow"), "secret").unwrap();
    let dir = api.root().join(&id);
    std::os::unix::fs::symlink(&outside, dir.join("etc")).unwrap();
    std::os::unix::fs::symlink(".", dir.join("loop")).unwrap();
    let r = api.get_raw(&format!("/v1/lora/export?lora_id={id}")).await;
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let names: Vec<String> = (0..z.len())
        .map(|i| z.by_index(i).unwrap().name().to_string())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("etc") && !n.contains("loop")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n == "adapter_model.safetensors"),
        "{names:?}"
    );

    let linked = api.tmp.path().join("linked-adapter");
    std::fs::create_dir_all(&linked).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(dir.join(f), linked.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(&linked, api.root().join("u/linked")).unwrap();
    let (s, b) = api.get("/v1/lora/export?lora_id=u/linked").await;
    assert_eq!(s, 403, "{b}");
}
