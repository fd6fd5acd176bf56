//! One full SDPO step from fixtures/lora-r4 on fixtures/tiny-qwen3 against the reference step
//! recorded in fixtures/distill_step.json (ids, teacher top-k, log-prob vectors, metadata,
//! pre-clip gradients, updated adapter), with check.py's tolerances.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::Device;
use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use claas_model::{LoadOptions, LoraAdapter, Qwen3};
use claas_sdpo::{
    AdamState, Checkpointing, ExternalTeacher, FeedbackItem, SdpoError, StepTrace, TeacherMode,
    TeacherPrompt, Trainer, TrainingConfig,
};
use common::*;
use serde_json::Value;

fn trainer() -> Trainer {
    let dir = fixtures().join("tiny-qwen3");
    let model = Qwen3::load(&dir, &LoadOptions::default()).unwrap();
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let cfg = TokenizerConfig::from_dir(&dir).unwrap();
    let tmpl = ChatTemplate::from_config(&cfg).unwrap();
    Trainer::new(Arc::new(model), Arc::new(tok), Arc::new(tmpl))
}

fn start_adapter(t: &Trainer) -> LoraAdapter {
    let m = t.model();
    LoraAdapter::load(
        &fixtures().join("lora-r4"),
        m.config(),
        m.device(),
        m.dtype(),
    )
    .unwrap()
}

fn request(fx: &Value) -> (FeedbackItem, TrainingConfig) {
    let r = &fx["request"];
    let tr = &r["training"];
    let item = FeedbackItem {
        prompt: r["prompt"].as_str().unwrap().into(),
        response: r["response"].as_str().unwrap().into(),
        feedback: r["feedback"].as_str().unwrap().into(),
        rollout_logprobs: Some(
            floats(&r["rollout_logprobs"])
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        ),
        ..FeedbackItem::default()
    };
    let cfg = TrainingConfig {
        learning_rate: tr["learning_rate"].as_f64().unwrap(),
        alpha: tr["alpha"].as_f64().unwrap(),
        is_clip: tr["is_clip"].as_f64().unwrap(),
        max_grad_norm: tr["max_grad_norm"].as_f64().unwrap(),
        kl_reg_weight: tr["kl_reg_weight"].as_f64().unwrap(),
        teacher_top_k: tr["teacher_top_k"].as_u64().unwrap() as usize,
        steps_per_batch: 1,
        // The fixture records the seed's teacher prompt.
        teacher_prompt: TeacherPrompt::Seed,
        teacher_mode: match tr["teacher_mode"].as_str().unwrap() {
            "self" => TeacherMode::SelfTeacher,
            other => panic!("fixture teacher_mode {other}"),
        },
    };
    (item, cfg)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn load_st(path: &std::path::Path) -> HashMap<String, Vec<f64>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k.replace(".default.", "."), to_f64s(&t)))
        .collect()
}

fn adapter_values(a: &LoraAdapter) -> HashMap<String, Vec<f64>> {
    a.named_tensors()
        .into_iter()
        .map(|(k, t)| (k, to_f64s(&t)))
        .collect()
}

struct Step {
    fx: Value,
    trace: StepTrace,
    adapter: LoraAdapter,
    optimizer: AdamState,
    metadata: claas_sdpo::DistillMetadata,
}

fn run_fixture_step(t: &Trainer) -> Step {
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let (out, mut traces) = t
        .distill_traced(&start_adapter(t), None, &[item], &cfg, true)
        .unwrap();
    assert_eq!(traces.len(), 1);
    Step {
        fx,
        trace: traces.remove(0),
        adapter: out.adapter,
        optimizer: out.optimizer,
        metadata: out.metadata,
    }
}

#[test]
fn parity_distill_step() {
    check_parity(&trainer().with_checkpointing(Checkpointing::Never));
}

/// The same parity with the student's layers recomputed in the backward (activation
/// checkpointing), at the same tolerances.
#[test]
fn parity_distill_step_checkpointed() {
    check_parity(&trainer().with_checkpointing(Checkpointing::Always));
}

/// Checkpointing changes the gradients only by f32 summation order: every pre-clip gradient
/// within 1e-5 of its tensor's largest entry, and the step's metrics within 1e-5 relative.
#[test]
fn checkpointing_keeps_the_gradients() {
    const RTOL: f64 = 1e-5;
    let plain = run_fixture_step(&trainer().with_checkpointing(Checkpointing::Never));
    let ck = run_fixture_step(&trainer().with_checkpointing(Checkpointing::Always));
    assert_eq!(plain.trace.grads.len(), ck.trace.grads.len());
    for ((key, shape, a), (key2, shape2, b)) in plain.trace.grads.iter().zip(&ck.trace.grads) {
        assert_eq!((key, shape), (key2, shape2));
        let scale = a.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        assert!(scale > 0.0, "{key}: zero gradient");
        for (x, y) in a.iter().zip(b) {
            assert!(
                ((x - y).abs() as f64) <= RTOL * scale,
                "{key}: {y} checkpointed vs {x} (scale {scale})"
            );
        }
    }
    let (m, n) = (&plain.metadata, &ck.metadata);
    for (name, x, y) in [
        ("total_loss", m.total_loss, n.total_loss),
        ("distill_loss", m.distill_loss, n.distill_loss),
        ("grad_norm", m.grad_norm, n.grad_norm),
        ("mean_is_ratio", m.mean_is_ratio, n.mean_is_ratio),
    ] {
        assert!(
            (x - y).abs() <= RTOL * x.abs().max(1e-12),
            "{name}: {y} checkpointed vs {x}"
        );
    }
}

fn check_parity(t: &Trainer) {
    let s = run_fixture_step(t);
    let fx = &s.fx;
    let it = &s.trace.items[0];
    let p = &it.prepared;

    // Token ids and positions: exact.
    assert_eq!(p.prompt_ids, ids(&fx["prompt_ids"]), "prompt_ids");
    assert_eq!(p.response_ids, ids(&fx["response_ids"]), "response_ids");
    assert_eq!(
        p.student_input_ids(),
        ids(&fx["student_input_ids"]),
        "student_input_ids"
    );
    assert_eq!(
        p.prompt_ids.len() as u64,
        fx["response_start"].as_u64().unwrap()
    );
    assert_eq!(
        p.teacher_prompt_text,
        fx["teacher_prompt_text"].as_str().unwrap()
    );
    assert_eq!(
        p.teacher_prompt_ids,
        ids(&fx["teacher_prompt_ids"]),
        "teacher_prompt_ids"
    );
    assert_eq!(
        p.teacher_input_ids(),
        ids(&fx["teacher_input_ids"]),
        "teacher_input_ids"
    );
    assert_eq!(
        p.teacher_prompt_ids.len() as u64,
        fx["teacher_response_start"].as_u64().unwrap()
    );
    let start = p.prompt_ids.len() as u32;
    let tstart = p.teacher_prompt_ids.len() as u32;
    let n = p.response_ids.len() as u32;
    assert_eq!(
        ids(&fx["response_positions"]),
        (start..start + n).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&fx["logit_positions"]),
        (start - 1..start - 1 + n).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(&fx["teacher_logit_positions"]),
        (tstart - 1..tstart - 1 + n).collect::<Vec<_>>()
    );

    // Teacher top-k: exact ids up to near-ties (check.py's rule), log-probs atol 1e-4.
    let (kshape, want_idx) = flat(&fx["teacher_topk_indices"]);
    let (_, want_lp) = flat(&fx["teacher_topk_logprobs"]);
    let k = kshape[1];
    assert_eq!(it.targets.k, k, "top-k width");
    let mut bad = 0;
    for row in 0..kshape[0] {
        for j in 0..k {
            let got = it.targets.topk_indices[row * k + j] as f64;
            if got != want_idx[row * k + j] {
                let pos = (0..k).find(|&q| want_idx[row * k + q] == got);
                match pos {
                    Some(q) if (want_lp[row * k + q] - want_lp[row * k + j]).abs() < 1e-4 => {}
                    _ => bad += 1,
                }
            }
        }
    }
    assert_eq!(bad, 0, "teacher_topk_indices: {bad} mismatching entries");
    let mut report = Vec::new();
    for (name, got) in [
        ("teacher_topk_logprobs", &it.targets.topk_logprobs),
        (
            "teacher_logprob_of_response_token_full_vocab",
            &it.targets.teacher_logprob_of_response,
        ),
        ("base_logprobs", &it.targets.base_logprobs),
        ("old_student_logprobs", &it.old_logprobs),
        ("student_logprobs_at_response", &it.student_logprobs),
    ] {
        let (worst, ok) = within(&f64s(got), &floats(&fx[name]), 1e-4, 0.0);
        assert!(ok, "{name}: max |d| = {worst:e}");
        report.push(format!("{name} {worst:.2e}"));
    }
    // Student logits at the response positions (base + adapter).
    let logits = t
        .model()
        .forward_train(&p.student_input_ids(), Some(&start_adapter(t)))
        .unwrap()
        .narrow(0, start as usize - 1, n as usize)
        .unwrap();
    let (worst, ok) = within(&to_f64s(&logits), &floats(&fx["student_logits"]), 1e-4, 0.0);
    assert!(ok, "student_logits: max |d| = {worst:e}");
    report.push(format!("student_logits {worst:.2e}"));

    // Metadata.
    let fm = &fx["metadata"];
    let m = &s.metadata;
    for (name, got) in [
        ("total_loss", m.total_loss),
        ("distill_loss", m.distill_loss),
        ("kl_reg", m.kl_reg),
        ("mean_is_ratio", m.mean_is_ratio),
    ] {
        close(name, got, fm[name].as_f64().unwrap(), 1e-6, 1e-4);
        report.push(format!(
            "{name} rel {:.2e}",
            (got / fm[name].as_f64().unwrap() - 1.0).abs()
        ));
    }
    close(
        "clip_fraction",
        m.clip_fraction,
        fm["clip_fraction"].as_f64().unwrap(),
        1e-6,
        0.0,
    );
    close(
        "grad_norm",
        m.grad_norm,
        fm["grad_norm"].as_f64().unwrap(),
        0.0,
        1e-3,
    );
    report.push(format!(
        "grad_norm rel {:.2e}",
        (m.grad_norm / fm["grad_norm"].as_f64().unwrap() - 1.0).abs()
    ));
    assert_eq!(
        m.tokens_processed as u64,
        fm["tokens_processed"].as_u64().unwrap()
    );
    assert_eq!(m.teacher_mode, fm["teacher_mode"].as_str().unwrap());

    // Pre-clip gradients: atol 1e-4 * max|ref| over all tensors, rtol 1e-3.
    let ref_grads = load_st(&fixtures().join("distill_step_grads.safetensors"));
    assert_eq!(
        ref_grads.len(),
        s.trace.grads.len(),
        "gradient tensor count"
    );
    let gmax = ref_grads
        .values()
        .flat_map(|v| v.iter())
        .fold(0f64, |m, x| m.max(x.abs()));
    let mut gworst = 0f64;
    for (key, _, g) in &s.trace.grads {
        let want = ref_grads
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no gradient {key}"));
        let (worst, ok) = within(&f64s(g), want, 1e-4 * gmax, 1e-3);
        assert!(ok, "grad {key}: max |d| = {worst:e}");
        gworst = gworst.max(worst);
    }
    report.push(format!("grads {gworst:.2e} (max|ref| {gmax:.2e})"));

    // Per-parameter gradient norms (check.py: atol 1e-7, rtol 1e-3).
    let norms = fx["grad_norms_per_param"].as_object().unwrap();
    assert_eq!(norms.len(), s.trace.grads.len());
    for (key, want) in norms {
        let key2 = key.replace(".default.", ".");
        let g = &s.trace.grads.iter().find(|(k, _, _)| *k == key2).unwrap().2;
        let got = g
            .iter()
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        close(
            &format!("grad norm {key}"),
            got,
            want.as_f64().unwrap(),
            1e-7,
            1e-3,
        );
    }

    // Updated adapter, also through a save/load round trip: check.py's adapter_tolerances.
    let dir = tempfile::tempdir().unwrap();
    s.adapter.save(dir.path()).unwrap();
    let m = t.model();
    let saved = LoraAdapter::load(dir.path(), m.config(), m.device(), m.dtype()).unwrap();
    let want = load_st(
        &fixtures()
            .join(fx["after_adapter"].as_str().unwrap())
            .join("adapter_model.safetensors"),
    );
    let hp = &fx["hyperparameters"];
    let (lr, eps) = (hp["lr"].as_f64().unwrap(), hp["eps"].as_f64().unwrap());
    let c = (hp["max_grad_norm"].as_f64().unwrap() / (fm["grad_norm"].as_f64().unwrap() + 1e-6))
        .min(1.0);
    let got = adapter_values(&saved);
    assert_eq!(got.len(), want.len(), "adapter tensor count");
    let mut aworst = 0f64;
    for (key, w) in &want {
        let g = got
            .get(key)
            .unwrap_or_else(|| panic!("updated adapter lacks {key}"));
        let rg = &ref_grads[key];
        for i in 0..w.len() {
            let sens = 1e-7 * eps / (c * rg[i].abs() + eps).powi(2);
            let tol = 1e-5 + lr * sens.min(2.0);
            let d = (g[i] - w[i]).abs();
            assert!(
                d <= tol,
                "adapter {key}[{i}]: got {} want {} (|d| {d:e} > {tol:e})",
                g[i],
                w[i]
            );
            aworst = aworst.max(d);
        }
    }
    report.push(format!("adapter {aworst:.2e}"));
    eprintln!("distill step parity, max |d|: {}", report.join(", "));
    assert_eq!(s.optimizer.step, 1);
}

#[test]
fn every_lora_parameter_gets_a_nonzero_gradient() {
    let t = trainer();
    let s = run_fixture_step(&t);
    assert_eq!(s.trace.grads.len(), start_adapter(&t).named_tensors().len());
    for (key, _, g) in &s.trace.grads {
        let norm: f64 = g.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!(norm > 0.0, "zero gradient for {key}");
    }
}

#[test]
fn persisted_optimizer_state_continues() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let first = t
        .distill(&start_adapter(&t), None, std::slice::from_ref(&item), &cfg)
        .unwrap();
    assert_eq!(first.optimizer.step, 1);

    let dir = tempfile::tempdir().unwrap();
    assert!(
        AdamState::load(dir.path()).unwrap().is_none(),
        "empty folder = fresh optimizer"
    );
    first.optimizer.save(dir.path()).unwrap();
    let loaded = AdamState::load(dir.path())
        .unwrap()
        .expect("state was saved");
    assert_eq!(loaded, first.optimizer, "state round trip");

    let continued = t
        .distill(
            &first.adapter,
            Some(loaded),
            std::slice::from_ref(&item),
            &cfg,
        )
        .unwrap();
    let fresh = t.distill(&first.adapter, None, &[item], &cfg).unwrap();
    assert_eq!(continued.optimizer.step, 2);
    assert_eq!(fresh.optimizer.step, 1);
    // Same gradient (same adapter, same batch), different optimizer history.
    close(
        "grad_norm",
        continued.metadata.grad_norm,
        fresh.metadata.grad_norm,
        0.0,
        1e-9,
    );
    let a = adapter_values(&continued.adapter);
    let b = adapter_values(&fresh.adapter);
    let diff = a
        .iter()
        .map(|(k, v)| {
            v.iter()
                .zip(&b[k])
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        })
        .fold(0f64, f64::max);
    assert!(
        diff > 1e-6,
        "continuing the saved optimizer changed nothing (max |d| {diff:e})"
    );
}

#[test]
fn batched_items_average_the_losses() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let mut other = item.clone();
    other.feedback = "Good, but add a docstring.".into();
    other.rollout_logprobs = None;
    let a = start_adapter(&t);
    let (_, ta) = t
        .distill_traced(&a, None, std::slice::from_ref(&item), &cfg, true)
        .unwrap();
    let (_, tb) = t
        .distill_traced(&a, None, &[other.clone()], &cfg, true)
        .unwrap();
    let (both, tab) = t
        .distill_traced(&a, None, &[item, other], &cfg, true)
        .unwrap();
    let (ma, mb) = (&ta[0].metadata, &tb[0].metadata);
    close(
        "total_loss",
        both.metadata.total_loss,
        (ma.total_loss + mb.total_loss) / 2.0,
        1e-7,
        1e-5,
    );
    close(
        "kl_reg",
        both.metadata.kl_reg,
        (ma.kl_reg + mb.kl_reg) / 2.0,
        1e-7,
        1e-5,
    );
    assert_eq!(
        both.metadata.tokens_processed,
        ma.tokens_processed + mb.tokens_processed
    );
    // Mean-of-losses gradient = mean of the per-item gradients.
    for ((key, _, g), ((_, _, ga), (_, _, gb))) in tab[0]
        .grads
        .iter()
        .zip(ta[0].grads.iter().zip(&tb[0].grads))
    {
        let want: Vec<f64> = ga
            .iter()
            .zip(gb)
            .map(|(x, y)| (*x as f64 + *y as f64) / 2.0)
            .collect();
        let gmax = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let (worst, ok) = within(&f64s(g), &want, 1e-5 * gmax, 1e-4);
        assert!(ok, "{key}: max |d| {worst:e}");
    }
}

#[test]
fn steps_per_batch_repeats_the_step() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, mut cfg) = request(&fx);
    cfg.steps_per_batch = 3;
    let (out, traces) = t
        .distill_traced(&start_adapter(&t), None, &[item], &cfg, true)
        .unwrap();
    assert_eq!(out.optimizer.step, 3);
    assert_eq!(traces.len(), 3);
    // Later sub-steps see the updated adapter: the student log-probs move.
    let d: f32 = traces[0].items[0]
        .student_logprobs
        .iter()
        .zip(&traces[2].items[0].student_logprobs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d > 1e-5, "student did not change across sub-steps");
    assert_eq!(out.metadata, traces[2].metadata);
    // The phase timings are disjoint parts of the total (an accounting property, not a speed).
    let t = &out.timings;
    let phases = t.tokenize_ms + t.teacher_ms + t.forward_ms + t.backward_ms + t.optimizer_ms;
    assert!(
        phases <= t.total_ms * (1.0 + 1e-9),
        "phases {phases} ms exceed total {} ms",
        t.total_ms
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let a = start_adapter(&t);

    let mut short = item.clone();
    short.rollout_logprobs.as_mut().unwrap().pop();
    let e = t.distill(&a, None, &[short], &cfg).unwrap_err();
    assert!(
        matches!(
            e,
            SdpoError::RolloutLengthMismatch {
                expected: 28,
                got: 27
            }
        ),
        "{e}"
    );
    assert!(e.is_bad_input());

    let mut remote = cfg.clone();
    remote.teacher_mode = TeacherMode::Remote;
    let e = t
        .distill(&a, None, std::slice::from_ref(&item), &remote)
        .unwrap_err();
    assert!(
        matches!(e, SdpoError::Unsupported(_)) && e.is_bad_input(),
        "{e}"
    );

    let mut empty = item.clone();
    empty.response = String::new();
    empty.rollout_logprobs = None;
    let e = t.distill(&a, None, &[empty], &cfg).unwrap_err();
    assert!(
        matches!(e, SdpoError::InvalidInput(_)) && e.is_bad_input(),
        "{e}"
    );

    let e = t.distill(&a, None, &[], &cfg).unwrap_err();
    assert!(e.is_bad_input(), "{e}");

    let mut huge = item.clone();
    huge.response = "x ".repeat(2000);
    huge.rollout_logprobs = None;
    let e = t.distill(&a, None, &[huge], &cfg).unwrap_err();
    assert!(
        matches!(e, SdpoError::TooLong(_)) && e.is_bad_input(),
        "{e}"
    );

    let mut bad_alpha = cfg.clone();
    bad_alpha.alpha = 1.5;
    assert!(t
        .distill(&a, None, &[item], &bad_alpha)
        .unwrap_err()
        .is_bad_input());
}

#[test]
fn score_matches_the_step_student_logprobs() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let r = &fx["request"];
    let a = start_adapter(&t);
    let got = t
        .score(
            Some(&a),
            r["prompt"].as_str().unwrap(),
            r["response"].as_str().unwrap(),
        )
        .unwrap();
    let (worst, ok) = within(
        &f64s(&got),
        &floats(&fx["student_logprobs_at_response"]),
        1e-4,
        0.0,
    );
    assert!(ok, "student logprobs: {worst:e}");
    let base = t
        .score(
            None,
            r["prompt"].as_str().unwrap(),
            r["response"].as_str().unwrap(),
        )
        .unwrap();
    let (worst, ok) = within(&f64s(&base), &floats(&fx["base_logprobs"]), 1e-4, 0.0);
    assert!(ok, "base logprobs: {worst:e}");
}

#[test]
fn mismatched_optimizer_state_starts_fresh() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let mut stale = AdamState::new();
    claas_sdpo::adamw_step(
        &mut stale,
        &mut [("other.lora_A.weight".to_string(), vec![1], vec![0.0])],
        &[vec![1.0]],
        1e-3,
    );
    let a = start_adapter(&t);
    let out = t
        .distill(&a, Some(stale), std::slice::from_ref(&item), &cfg)
        .unwrap();
    let fresh = t.distill(&a, None, &[item], &cfg).unwrap();
    assert_eq!(out.optimizer.step, 1);
    assert_eq!(out.optimizer, fresh.optimizer);
}

/// The seed version computed the teacher and the KL-to-base with the adapter left on: its
/// "base" log-probs are the student's, so its KL term is 0. Our fixed step must not be.
#[test]
fn parity_contaminated_fixture_differs_as_documented() {
    let t = trainer();
    let fixed = run_fixture_step(&t);
    let bad = read_json("distill_step_0f67ae6_contaminated.json");
    assert_eq!(bad["metadata"]["kl_reg"].as_f64().unwrap(), 0.0);
    assert!(fixed.metadata.kl_reg > 1e-3, "{}", fixed.metadata.kl_reg);
    let it = &fixed.trace.items[0];
    // Contaminated base log-probs = our student log-probs (adapter on) ...
    let (worst, ok) = within(
        &f64s(&it.student_logprobs),
        &floats(&bad["base_logprobs"]),
        1e-4,
        0.0,
    );
    assert!(ok, "contaminated base vs student: {worst:e}");
    // ... and differ from our adapter-free base log-probs.
    let (worst, _) = within(
        &f64s(&it.targets.base_logprobs),
        &floats(&bad["base_logprobs"]),
        0.0,
        0.0,
    );
    assert!(
        worst > 1e-3,
        "base log-probs should differ, max |d| {worst:e}"
    );
    // Same ids either way.
    assert_eq!(
        it.prepared.teacher_input_ids(),
        ids(&bad["teacher_input_ids"])
    );
}

/// `teacher_mode: "remote"` with scores equal to the self-teacher's (rows in another order,
/// as a server may list them) is the same step; malformed scores are typed 4xx errors.
#[test]
fn remote_teacher_scores_drive_the_same_step() {
    let t = trainer();
    let fx = read_json("distill_step.json");
    let (item, cfg) = request(&fx);
    let a = start_adapter(&t);
    let local = t
        .distill(&a, None, std::slice::from_ref(&item), &cfg)
        .unwrap();

    let p = t.prepare(&item, TeacherPrompt::Seed).unwrap();
    let tg = t.targets(&p, cfg.teacher_top_k).unwrap();
    let rows: Vec<Vec<(u32, f32)>> = tg
        .topk_indices
        .chunks_exact(tg.k)
        .zip(tg.topk_logprobs.chunks_exact(tg.k))
        .map(|(ids, lps)| ids.iter().copied().zip(lps.iter().copied()).rev().collect())
        .collect();
    let ext = ExternalTeacher {
        rows: rows.clone(),
        response_logprobs: tg
            .teacher_logprob_of_response
            .iter()
            .map(|&x| Some(x))
            .collect(),
    };
    let mut remote = cfg.clone();
    remote.teacher_mode = TeacherMode::Remote;
    let run = |ext: &ExternalTeacher, cfg: &TrainingConfig| {
        t.distill_with_teachers(
            &a,
            None,
            std::slice::from_ref(&item),
            Some(std::slice::from_ref(ext)),
            cfg,
            false,
        )
        .map(|(out, _)| out)
    };
    let out = run(&ext, &remote).unwrap();
    assert_eq!(out.metadata.teacher_mode, "remote");
    let (m, l) = (&out.metadata, &local.metadata);
    for (name, x, y) in [
        ("total_loss", m.total_loss, l.total_loss),
        ("distill_loss", m.distill_loss, l.distill_loss),
        ("kl_reg", m.kl_reg, l.kl_reg),
        ("grad_norm", m.grad_norm, l.grad_norm),
        ("mean_is_ratio", m.mean_is_ratio, l.mean_is_ratio),
    ] {
        assert!(
            (x - y).abs() <= 1e-6 * y.abs().max(1.0),
            "{name}: {x} vs {y}"
        );
    }
    let (after_remote, after_local) =
        (adapter_values(&out.adapter), adapter_values(&local.adapter));
    for (k, v) in &after_local {
        let d = v
            .iter()
            .zip(&after_remote[k])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(d <= 1e-7, "{k}: {d}");
    }

    // Short rows are padded (the reference pads with -100 at token 0).
    let mut short = ext.clone();
    short.rows[0].truncate(3);
    let padded = t.external_targets(&p, &short, cfg.teacher_top_k).unwrap();
    assert_eq!(padded.k, tg.k);
    let mut kept = short.rows[0].clone();
    kept.sort_by(|x, y| y.1.total_cmp(&x.1));
    for (j, (&id, &lp)) in padded.topk_indices[..tg.k]
        .iter()
        .zip(&padded.topk_logprobs[..tg.k])
        .enumerate()
    {
        let want = kept.get(j).copied().unwrap_or((0, -100.0));
        assert_eq!((id, lp), want, "slot {j}");
    }
    assert_eq!(padded.topk_indices[tg.k..], tg.topk_indices[tg.k..]);
    run(&short, &remote).unwrap();
    let mut missing = ext.clone();
    missing.rows.pop();
    let e = run(&missing, &remote).unwrap_err();
    assert!(
        matches!(e, SdpoError::InvalidInput(_)) && e.is_bad_input(),
        "{e}"
    );
    let mut foreign = ext.clone();
    foreign.rows[1][0].0 = 10_000_000;
    let e = run(&foreign, &remote).unwrap_err();
    assert!(e.to_string().contains("vocabulary"), "{e}");
    // Scores with teacher_mode "self" are refused (no scores with "remote": see
    // `bad_inputs_are_typed_errors`).
    let e = run(&ext, &cfg).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
}
