//! `/v1/dashboard`, `/v1/eval` and `/v1/eval/plot` over a real server, a real LoRA root (an
//! adapter initialised on the built-in model through the API) and feedback logs written by the
//! API's own log writer.

use std::path::{Path, PathBuf};

use claas_api::feedback_log::write_feedback_log;
use claas_api::{ApiConfig, ApiState, NoBackend};
use claas_store::LoraStore;
use serde_json::{json, Value};

const XSS: &str = "<script>alert('pwned')</script><img src=x onerror=alert(1)>";

struct App {
    url: String,
    state: ApiState,
    http: reqwest::Client,
    _tmp: tempfile::TempDir,
    logs: PathBuf,
    evals: PathBuf,
}

/// The API router on 127.0.0.1:0.
async fn start(adjust: impl FnOnce(&mut ApiConfig)) -> App {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = ApiConfig {
        lora_root: tmp.path().join("loras"),
        feedback_log_dir: tmp.path().join("logs"),
        eval_dir: tmp.path().join("evals"),
        base_model_id: "builtin:tiny".into(),
        ..ApiConfig::default()
    };
    config.allowed_init_base_models.push("builtin:tiny".into());
    adjust(&mut config);
    let (logs, evals) = (config.feedback_log_dir.clone(), config.eval_dir.clone());
    let store = LoraStore::open(&config.lora_root).unwrap();
    let state = ApiState::new(config, store, std::sync::Arc::new(NoBackend), None);
    let url = claas_testkit::serve(claas_api::router(state.clone())).await;
    App {
        url,
        state,
        http: reqwest::Client::new(),
        _tmp: tmp,
        logs,
        evals,
    }
}

impl App {
    async fn get(&self, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, r.text().await.unwrap(), h)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap())
    }

    /// `u/bot-init` (v0, through `/v1/lora/init` on the built-in model) plus `extra` more
    /// versions committed like feedback updates (the same adapter files, new metadata).
    async fn adapter_with_versions(&self, extra: u64) -> String {
        let (s, b) = self
            .post(
                "/v1/lora/init",
                json!({"lora_id": "u/bot", "base_model": "builtin:tiny", "lora_r": 4, "lora_alpha": 8}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let id = b["lora_id"].as_str().unwrap().to_string();
        let store = self.state.store();
        for i in 0..extra {
            let src = store.adapter_dir(&id).unwrap();
            let meta = json!({"kind": "feedback", "request_id": format!("req{i}"),
                "feedback": [format!("fb {i} {XSS}")], "metrics": {"total_loss": 1.0 - i as f64 * 0.1}});
            store
                .commit_version(&id, meta, |dir| copy_files(&src, dir))
                .unwrap();
        }
        id
    }
}

fn copy_files(src: &Path, dst: &Path) -> std::io::Result<()> {
    for name in [claas_store::ADAPTER_CONFIG, claas_store::ADAPTER_WEIGHTS] {
        std::fs::copy(src.join(name), dst.join(name))?;
    }
    Ok(())
}

/// A feedback record shaped as `lifecycle::feedback` writes it.
fn feedback_record(rid: &str, lora: &str, version: u64, loss: f64, prompt: &str) -> Value {
    json!({
        "request_id": rid,
        "timestamp_utc": "2026-12-01T04:00:00Z",
        "status": "ok",
        "phase": "wake",
        "lora_id": "u/bot-latest",
        "resolved_lora_id": lora,
        "request": {"lora_id": "u/bot-latest", "prompt": prompt, "response": format!("answer {XSS}"),
                    "feedback": format!("be nicer {XSS}")},
        "batch_samples": [],
        "distill_result": {"lora_id": lora, "metadata": {
            "total_loss": loss, "distill_loss": loss * 0.9, "kl_reg": loss / 10.0,
            "mean_is_ratio": 1.0, "clip_fraction": 0.0, "grad_norm": 0.5,
            "tokens_processed": 12, "timings_ms": {"total_ms": 40.0}, "adapter_version": version}},
        "timing_ms": {"distill": 40, "save": 3, "total": 50},
        "adapter_version": version,
        "previous_version": version - 1,
        "version_name": format!("{lora}@v{version}"),
        "error": null,
        "http_status": 200,
    })
}

fn count(html: &str, needle: &str) -> usize {
    html.matches(needle).count()
}

/// Text of the `<tr ...>` elements whose opening tag contains `class`, in page order.
fn rows<'a>(html: &'a str, class: &str) -> Vec<&'a str> {
    let open = format!("<tr class=\"{class}");
    html.match_indices(&open)
        .map(|(i, _)| {
            let end = html[i..].find("</tr>").unwrap();
            &html[i..i + end]
        })
        .collect()
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!("{name}=\"");
    let at = tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len();
    tag[at..].split('"').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_versions_history_and_charts_with_user_text_escaped() {
    let app = start(|_| {}).await;
    let id = app.adapter_with_versions(3).await;
    for (i, loss) in [0.9, 0.7, 0.4].iter().enumerate() {
        let v = i as u64 + 1;
        let mut rec = feedback_record(
            &format!("fb{v}"),
            &id,
            v,
            *loss,
            &format!("prompt {v} {XSS}"),
        );
        if v == 3 {
            // As lifecycle::feedback logs it.
            rec["guardrail"] = json!({"status": "rolled_back",
                "probe": {"kl_to_base": 0.25, "entropy": 1.5, "base_entropy": 2.0, "positions": 40},
                "bounds": {"max_kl_to_base": 0.1, "min_entropy": null},
                "violations": [format!("kl_to_base 0.25 > 0.1 {XSS}")], "rolled_back_to": 2});
            rec["current_version"] = json!(2);
        }
        write_feedback_log(&app.logs, &format!("fb{v}"), rec).unwrap();
    }
    let mut failed = feedback_record("bad", &id, 4, 0.0, "p");
    failed["status"] = json!("error");
    failed["phase"] = json!("distill");
    failed["distill_result"] = Value::Null;
    failed["adapter_version"] = Value::Null;
    failed["error"] = json!(format!("boom {XSS}"));
    write_feedback_log(&app.logs, "bad", failed).unwrap();
    write_feedback_log(
        &app.logs,
        "rb",
        json!({"request_id": "rb", "kind": "rollback", "status": "ok", "phase": "rollback",
               "timestamp_utc": "2026-12-01T04:01:00Z", "lora_id": "u/bot-latest",
               "resolved_lora_id": id, "adapter_version": 1, "previous_version": 3}),
    )
    .unwrap();
    // Unreadable and temporary files are skipped, not fatal.
    std::fs::write(app.logs.join("20261201T000000-broken.json"), "{not json").unwrap();
    std::fs::write(app.logs.join(".x.json.tmp-1"), "{}").unwrap();

    let (s, html, h) = app.get("/v1/dashboard").await;
    assert_eq!(s, 200, "{html}");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'nonce-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["cache-control"], "no-store");

    // User data is escaped everywhere: prompts, responses, feedback, errors, version metadata.
    assert!(
        !html.contains("<script>alert"),
        "raw user script in the page"
    );
    assert!(!html.contains("<img src=x"), "raw user tag in the page");
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"));
    assert!(html.contains("boom &lt;script&gt;"));
    // The only scripts are ours, with the nonce of the CSP.
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert_eq!(count(&html, "<script"), 1);
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));

    // History: newest first, rollback rows on their own, failures shown with their error.
    let fb = rows(&html, "feedback-row");
    let ids: Vec<&str> = fb.iter().map(|r| attr(r, "data-request-id")).collect();
    assert_eq!(ids, ["bad", "fb3", "fb2", "fb1"]);
    assert_eq!(attr(fb[0], "data-status"), "error");
    assert!(fb[1].contains("data-status=\"rolled_back\""), "{}", fb[1]);
    assert!(fb[1].contains("data-name=\"kl_to_base\" data-value=\"0.25\""));
    assert!(fb[1].contains("(bound ≤ 0.1000)") && fb[1].contains("serving v2"));
    assert!(fb[1].contains("kl_to_base 0.25 &gt; 0.1 &lt;script&gt;"));
    assert!(fb[3].contains("<code>v1</code> <small>from v0</small>"));
    assert!(fb[3].contains("prompt 1 &lt;script&gt;"));
    let rb = rows(&html, "rollback-row");
    assert_eq!(rb.len(), 1);
    assert_eq!(attr(rb[0], "data-version"), "1");
    assert!(html.find("id=\"rb-rb\"").unwrap() < html.find("id=\"fb-bad\"").unwrap());

    // Charts: one loss point per successful feedback, oldest first; KL to base only where the
    // guardrail measured it.
    let loss_chart = &html[html.find("<svg id=\"loss-chart\"").unwrap()..];
    let loss_chart = &loss_chart[..loss_chart.find("</svg>").unwrap()];
    let values: Vec<&str> = loss_chart
        .match_indices("<circle class=\"point total-loss\"")
        .map(|(i, _)| attr(&loss_chart[i..], "data-value"))
        .collect();
    assert_eq!(values, ["0.9", "0.7", "0.4"]);
    let kl_chart = &html[html.find("<svg id=\"kl-chart\"").unwrap()..];
    assert_eq!(count(kl_chart, "<circle class=\"point kl-reg\""), 3);
    assert_eq!(count(kl_chart, "<circle class=\"point kl-to-base\""), 1);

    // Versions: v3 current, a rollback button for every other version.
    let versions = rows(&html, "version-row");
    let listed: Vec<(&str, &str)> = versions
        .iter()
        .map(|r| (attr(r, "data-version"), attr(r, "data-current")))
        .collect();
    assert_eq!(
        listed,
        [
            ("3", "true"),
            ("2", "false"),
            ("1", "false"),
            ("0", "false")
        ]
    );
    assert!(!versions[0].contains("button"));
    for r in &versions[1..] {
        let b = &r[r.find("<button").unwrap()..];
        assert_eq!(attr(b, "class"), "rollback");
        assert_eq!(attr(b, "data-lora-id"), id);
        // Rolled back through the alias, so its served name is reloaded too.
        assert_eq!(attr(b, "data-via"), "u/bot-latest");
        assert_eq!(attr(b, "data-version"), attr(r, "data-version"));
    }
    assert!(html.contains("<code class=\"alias\">u/bot-latest</code>"));

    // A rollback through the API shows on the next render.
    let (s, b) = app
        .post(
            "/v1/lora/rollback",
            json!({"lora_id": "u/bot-latest", "version": 1}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (_, html, _) = app.get("/v1/dashboard").await;
    let current: Vec<&str> = rows(&html, "version-row")
        .into_iter()
        .filter(|r| attr(r, "data-current") == "true")
        .map(|r| attr(r, "data-version"))
        .collect();
    assert_eq!(current, ["1"]);
    assert_eq!(rows(&html, "rollback-row").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_pages_filters_and_validates() {
    let app = start(|_| {}).await;
    let id = app.adapter_with_versions(0).await;
    for v in 1..=5u64 {
        let lora = if v == 5 { "other/x-init" } else { id.as_str() };
        let mut rec = feedback_record(&format!("r{v}"), lora, v, 1.0, "p");
        if v == 5 {
            rec["lora_id"] = json!("other/x-init");
        }
        write_feedback_log(&app.logs, &format!("r{v}"), rec).unwrap();
    }
    let page_ids = |html: &str| -> Vec<String> {
        rows(html, "feedback-row")
            .iter()
            .map(|r| attr(r, "data-request-id").to_string())
            .collect()
    };
    let (s, html, _) = app.get("/v1/dashboard?per_page=2").await;
    assert_eq!(s, 200);
    assert_eq!(page_ids(&html), ["r5", "r4"]);
    assert!(html.contains("Page 1 of 3 (5 total)"));
    assert!(html.contains("href=\"/v1/dashboard?page=2&amp;per_page=2\""));
    let (_, html, _) = app.get("/v1/dashboard?per_page=2&page=3").await;
    assert_eq!(page_ids(&html), ["r1"]);
    // Past the end shows the last page, as the reference.
    let (_, html, _) = app.get("/v1/dashboard?per_page=2&page=99").await;
    assert_eq!(page_ids(&html), ["r1"]);
    // The charts cover the whole (filtered) history, not one page.
    assert_eq!(count(&html, "<circle class=\"point total-loss\""), 5);

    // By alias or by id: only that adapter's history and versions.
    for filter in ["u/bot-latest", "u/bot-init"] {
        let (s, html, _) = app
            .get(&format!("/v1/dashboard?lora_id={filter}&per_page=3"))
            .await;
        assert_eq!(s, 200);
        assert_eq!(page_ids(&html), ["r4", "r3", "r2"]);
        assert!(html.contains("lora_id=u%2Fbot-latest&amp;page=2") || filter != "u/bot-latest");
        assert_eq!(count(&html, "class=\"adapter\""), 1);
    }
    // A deleted adapter's history still shows.
    let (s, html, _) = app.get("/v1/dashboard?lora_id=other/x-init").await;
    assert_eq!(s, 200);
    assert_eq!(page_ids(&html), ["r5"]);

    for (q, field, kind) in [
        ("per_page=0", "per_page", "greater_than_equal"),
        ("per_page=201", "per_page", "less_than_equal"),
        ("per_page=abc", "per_page", "int_parsing"),
        ("page=0", "page", "greater_than_equal"),
        ("page=-3", "page", "greater_than_equal"),
        ("lora_id=../etc", "lora_id", "value_error"),
    ] {
        let (s, body, _) = app.get(&format!("/v1/dashboard?{q}")).await;
        assert_eq!(s, 422, "{q}: {body}");
        let b: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(b["detail"][0]["loc"], json!(["query", field]), "{q}: {b}");
        assert_eq!(b["detail"][0]["type"], kind, "{q}: {b}");
    }
    let (s, _, _) = app.get("/v1/dashboard?per_page=200").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_without_logs_or_adapters_is_an_empty_page() {
    let app = start(|_| {}).await;
    let (s, html, _) = app.get("/v1/dashboard").await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("No feedback yet"));
    assert!(html.contains("No adapters under the LoRA root"));
    assert!(html.contains("No data yet"));
    assert_eq!(rows(&html, "feedback-row").len(), 0);
}

const SVG_PLOT: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect width=\"10\" height=\"10\"/></svg>";
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n-not-really-a-png";

fn write_run(evals: &Path, run: &str, pref: &str, summary: Value) {
    let d = evals.join(run);
    let plots = d.join(pref).join("plots");
    std::fs::create_dir_all(&plots).unwrap();
    std::fs::write(
        d.join("run.json"),
        json!({"model": "builtin:tiny", "steps": 2}).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join(pref).join("steps.jsonl"),
        "{\"step\":0,\"compliance\":0.1}\n{\"step\":1,\"compliance\":0.6}\n",
    )
    .unwrap();
    std::fs::write(plots.join("compliance.svg"), SVG_PLOT).unwrap();
    std::fs::write(plots.join("margin.png"), PNG_MAGIC).unwrap();
    std::fs::write(plots.join("notes.txt"), "not a plot").unwrap();
    std::fs::write(d.join("summary.json"), summary.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_page_lists_runs_and_serves_only_plots() {
    let app = start(|_| {}).await;
    // Missing folder: a friendly empty state.
    let (s, html, _) = app.get("/v1/eval").await;
    assert_eq!(s, 200, "{html}");
    assert!(html.contains("id=\"eval-empty\""));

    write_run(
        &app.evals,
        "run-a",
        "concise",
        json!({"concise": {"baseline": {"compliance": 0.25}, "final": {"compliance": 0.75}, "lora_id": XSS}}),
    );
    // Make run-b's summary clearly newer than run-a's.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_run(
        &app.evals,
        "run-b",
        "no_emoji",
        // The shape claas eval writes (crates/eval RunSummary).
        json!({"run": "run-b", "api_url": "http://x", "base_model": "builtin:tiny",
               "started_at": "2026-12-01T05:00:00Z", "finished_at": null,
               "preferences": {"no_emoji": {"lora_id": "eval/no_emoji", "model": "m", "steps": 2,
                   "final_adapter_version": 2,
                   "baseline": {"logprob_margin": -1.5, "compliance": 0.5, "kl_to_base": null},
                   "final": {"logprob_margin": 0.5, "compliance": 1.0, "kl_to_base": 0.02}}}}),
    );
    std::fs::create_dir_all(app.evals.join("not-a-run")).unwrap();

    let (s, html, _) = app.get("/v1/eval").await;
    assert_eq!(s, 200);
    let order: Vec<&str> = html
        .match_indices("<section class=\"eval-run\"")
        .map(|(i, _)| attr(&html[i..], "data-run"))
        .collect();
    assert_eq!(order, ["run-b", "run-a"]);
    assert!(!html.contains("<script>alert"));
    let row = rows(&html, "metric-row")
        .into_iter()
        .find(|r| r.contains("data-preference=\"concise\" data-metric=\"compliance\""))
        .unwrap();
    assert!(row.contains("<td class=\"baseline\">0.2500</td><td class=\"final\">0.7500</td><td class=\"delta\">0.5000</td>"), "{row}");
    let b_rows: Vec<(&str, &str)> = rows(&html, "metric-row")
        .into_iter()
        .filter(|r| attr(r, "data-preference") == "no_emoji")
        .map(|r| (attr(r, "data-metric"), r))
        .collect();
    let metrics: Vec<&str> = b_rows.iter().map(|(m, _)| *m).collect();
    assert_eq!(
        metrics,
        [
            "logprob_margin",
            "compliance",
            "kl_to_base",
            "lora_id",
            "model",
            "steps",
            "final_adapter_version"
        ]
    );
    assert!(b_rows[0].1.contains("<td class=\"delta\">2.0000</td>"));
    assert!(b_rows[2].1.contains("<td class=\"baseline\">–</td>"));
    assert!(html.contains("in progress"));
    assert!(html.contains(
        "src=\"/v1/eval/plot?run=run-a&amp;preference=concise&amp;name=compliance.svg\""
    ));
    assert!(html.contains("name=margin.png"));
    assert!(!html.contains("notes.txt"));
    assert!(html.contains("2 steps"));

    let (s, html, _) = app.get("/v1/eval?run=run-a").await;
    assert_eq!(s, 200);
    assert_eq!(count(&html, "<section class=\"eval-run\""), 1);
    let (s, _, _) = app.get("/v1/eval?per_page=1&page=2").await;
    assert_eq!(s, 200);
    let (s, _, _) = app.get("/v1/eval?run=nope").await;
    assert_eq!(s, 404);
    let (s, _, _) = app.get("/v1/eval?run=..").await;
    assert_eq!(s, 422);
    let (s, _, _) = app.get("/v1/eval?per_page=201").await;
    assert_eq!(s, 422);

    // Plots: exact bytes, their type, a CSP that keeps an SVG's script out of our origin.
    let r = app
        .http
        .get(format!(
            "{}/v1/eval/plot?run=run-a&preference=concise&name=compliance.svg",
            app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("sandbox"));
    assert_eq!(r.text().await.unwrap(), SVG_PLOT);
    let r = app
        .http
        .get(format!(
            "{}/v1/eval/plot?run=run-b&preference=no_emoji&name=margin.png",
            app.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), PNG_MAGIC);

    // Nothing else leaves the eval folder.
    let secret = app.evals.parent().unwrap().join("secret.svg");
    std::fs::write(&secret, "<svg>secret</svg>").unwrap();
    let plots = app.evals.join("run-a/concise/plots");
    std::os::unix::fs::symlink(&secret, plots.join("link.svg")).unwrap();
    std::os::unix::fs::symlink(app.evals.join("run-a"), app.evals.join("run-link")).unwrap();
    for q in [
        "run=..&preference=concise&name=compliance.svg",
        "run=run-a&preference=..&name=compliance.svg",
        "run=run-a&preference=concise&name=..%2F..%2Fsummary.json",
        "run=run-a&preference=concise%2Fplots&name=compliance.svg",
        "run=run-a&preference=concise&name=notes.txt",
        "run=run-a&preference=concise&name=.hidden.svg",
        "run=run-a&preference=concise",
    ] {
        let (s, body, _) = app.get(&format!("/v1/eval/plot?{q}")).await;
        assert_eq!(s, 422, "{q}: {body}");
    }
    for q in [
        "run=run-a&preference=concise&name=link.svg",
        "run=run-link&preference=concise&name=compliance.svg",
        "run=run-a&preference=concise&name=missing.svg",
    ] {
        let (s, body, _) = app.get(&format!("/v1/eval/plot?{q}")).await;
        assert_eq!(s, 404, "{q}: {body}");
        assert!(!body.contains("secret"));
    }
    let (_, html, _) = app.get("/v1/eval").await;
    assert!(!html.contains("run-link") && !html.contains("link.svg"));
}
