//! `claas eval` end to end on the built-in model through a real `claas up`: a 2-step run with
//! batch 1 writes every metric of every step, the summary and both plot formats, and the
//! adapter really changes between steps.

mod common;

use claas_eval::{preferences, EvalConfig, METRIC_KEYS};
use serde_json::{json, Value};

fn read_json(p: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn assert_all_metrics(m: &Value, what: &str) {
    let obj = m.as_object().unwrap_or_else(|| panic!("{what}: {m}"));
    for k in METRIC_KEYS {
        let v = &obj
            .get(*k)
            .unwrap_or_else(|| panic!("{what}: no {k} in {m}"));
        assert!(
            v.as_f64().is_some_and(f64::is_finite),
            "{what}: {k} = {v} is not a number"
        );
    }
    let c = m["compliance"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&c), "{what}: compliance {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_run_writes_every_metric_and_plot() {
    let stack = common::Stack::start("builtin:tiny").await;
    let out = stack.dir.path().join("evals/run-1");
    let mut cfg = EvalConfig::new(
        &stack.api,
        vec![preferences::builtin("concise").unwrap()],
        out.clone(),
    );
    cfg.api_key = Some(common::KEY.into());
    cfg.steps = 2;
    cfg.batch = 1;
    cfg.max_tokens = 8;
    cfg.probes = Some(2);
    cfg.collapse_samples = 2;
    cfg.training = Some(json!({"learning_rate": 5e-3}));
    cfg.progress = false;
    let summary = claas_eval::run(&cfg).await.unwrap();
    assert_eq!(summary.base_model, "builtin:tiny");

    let run = read_json(&out.join("run.json"));
    assert_eq!(run["steps"], 2);
    assert_eq!(run["base_model"], "builtin:tiny");
    assert!(
        !run.to_string().contains(common::KEY),
        "the key leaked into run.json"
    );

    let dir = out.join("concise");
    let baseline = read_json(&dir.join("baseline.json"));
    assert_eq!(baseline["step"], 0);
    assert_all_metrics(
        &baseline["metrics"],
        &format!("baseline {}", baseline["details"]),
    );
    // The fresh adapter is the base (LoRA B = 0): no divergence yet.
    let kl0 = baseline["metrics"]["kl_to_base"].as_f64().unwrap();
    assert!(kl0.abs() < 1e-3, "baseline KL {kl0}");
    assert_eq!(baseline["metrics"]["logprob_margin_delta"], 0.0);
    assert_eq!(baseline["details"]["probes"].as_array().unwrap().len(), 2);

    let text = std::fs::read_to_string(dir.join("steps.jsonl")).unwrap();
    let steps: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 2);
    let mut last_version = 0;
    for (i, s) in steps.iter().enumerate() {
        assert_eq!(s["step"], i + 1);
        assert_all_metrics(&s["metrics"], &format!("step {}", i + 1));
        assert_eq!(s["samples"].as_array().unwrap().len(), 1);
        assert!(s["samples"][0]["completion_id"].is_string(), "{s}");
        let fb = &s["feedback"];
        assert_eq!(fb["status"], "ok", "{fb}");
        for k in [
            "total_loss",
            "distill_loss",
            "grad_norm",
            "tokens_processed",
        ] {
            assert!(
                fb["metrics"][k].is_number(),
                "feedback metrics lack {k}: {fb}"
            );
        }
        let v = s["adapter_version"].as_u64().unwrap();
        assert!(v > last_version, "adapter_version {v} after {last_version}");
        last_version = v;
        let want_delta = s["metrics"]["logprob_margin"].as_f64().unwrap()
            - baseline["metrics"]["logprob_margin"].as_f64().unwrap();
        let got = s["metrics"]["logprob_margin_delta"].as_f64().unwrap();
        assert!((got - want_delta).abs() < 1e-9);
    }
    // Training moved the adapter: its scores of the same texts changed.
    let last = &steps[1]["metrics"];
    assert_ne!(
        last["logprob_margin"],
        baseline["metrics"]["logprob_margin"]
    );
    assert_ne!(last["kl_to_base"], baseline["metrics"]["kl_to_base"]);

    let sum = read_json(&out.join("summary.json"));
    assert_eq!(sum["base_model"], "builtin:tiny");
    assert!(sum["finished_at"].is_string());
    let p = &sum["preferences"]["concise"];
    assert_eq!(p["steps"], 2);
    assert_eq!(p["final_adapter_version"], last_version);
    assert_all_metrics(&p["baseline"], "summary baseline");
    assert_all_metrics(&p["final"], "summary final");
    assert_eq!(p["final"], steps[1]["metrics"]);
    assert_eq!(p["baseline"], baseline["metrics"]);

    for stem in ["margin", "compliance", "capability", "collapse"] {
        let png = std::fs::read(dir.join(format!("plots/{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{stem}.png");
        let svg = std::fs::read_to_string(dir.join(format!("plots/{stem}.svg"))).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{stem}.svg");
        assert!(svg.trim_end().ends_with("</svg>"), "{stem}.svg");
    }
    stack.stop().await;
}
