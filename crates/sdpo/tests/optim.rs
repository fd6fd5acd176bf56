//! AdamW, gradient clipping and the persisted optimizer state.

use claas_sdpo::{adamw_step, clip_grad_norm, AdamState, SdpoError};

#[test]
fn clip_grad_norm_scales_by_total_norm_like_torch() {
    let mut g = vec![vec![3.0f32, 4.0], vec![12.0]];
    let n = clip_grad_norm(&mut g, 1.0);
    assert!((n - 13.0).abs() < 1e-9, "pre-clip norm {n}");
    let coef = 1.0 / (13.0 + 1e-6);
    for (got, want) in g.iter().flatten().zip([3.0, 4.0, 12.0]) {
        assert!((*got as f64 - want * coef).abs() < 1e-6, "{got}");
    }
    // Below the limit nothing changes (coefficient clamped to 1).
    let mut g = vec![vec![0.3f32, -0.4]];
    let n = clip_grad_norm(&mut g, 1.0);
    assert!((n - 0.5).abs() < 1e-7);
    assert_eq!(g, vec![vec![0.3f32, -0.4]]);
    // max_norm 0 zeroes the gradient, as torch does.
    let mut g = vec![vec![1.0f32]];
    clip_grad_norm(&mut g, 0.0);
    assert_eq!(g[0][0], 0.0);
}

/// Three AdamW steps against the textbook formulas evaluated in f64.
#[test]
#[allow(clippy::needless_range_loop)]
fn adamw_matches_decoupled_adam_formula() {
    let (lr, b1, b2, eps, wd) = (1e-2, 0.9f64, 0.999f64, 1e-8, 0.01);
    let grads = [
        vec![0.5f32, -1e-3, 2.0],
        vec![0.1, 0.0, -0.7],
        vec![-0.2, 3e-4, 1.5],
    ];
    let mut params = vec![("w".to_string(), vec![3], vec![0.1f32, -0.2, 0.3])];
    let mut want: Vec<f64> = vec![0.1, -0.2, 0.3];
    let (mut m, mut v) = (vec![0f64; 3], vec![0f64; 3]);
    let mut state = AdamState::new();
    for (t, g) in grads.iter().enumerate() {
        adamw_step(&mut state, &mut params, std::slice::from_ref(g), lr);
        let step = (t + 1) as f64;
        for i in 0..3 {
            let gi = g[i] as f64;
            want[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let mhat = m[i] / (1.0 - b1.powf(step));
            let denom = (v[i] / (1.0 - b2.powf(step))).sqrt() + eps;
            want[i] -= lr * mhat / denom;
        }
        for i in 0..3 {
            let got = params[0].2[i] as f64;
            assert!(
                (got - want[i]).abs() < 1e-6,
                "step {step} [{i}]: {got} vs {}",
                want[i]
            );
        }
    }
    assert_eq!(state.step, 3);
    // A first step moves each weight by about lr * sign(g) (plus decay).
    let mut p = vec![("w".to_string(), vec![2], vec![0.0f32, 0.0])];
    adamw_step(&mut AdamState::new(), &mut p, &[vec![1e-3, -5.0]], 1e-3);
    assert!(
        (p[0].2[0] + 1e-3).abs() < 5e-8 && (p[0].2[1] - 1e-3).abs() < 5e-8,
        "{:?}",
        p[0].2
    );
}

#[test]
fn state_round_trip_and_corruption() {
    let dir = tempfile::tempdir().unwrap();
    assert!(AdamState::load(dir.path()).unwrap().is_none());
    assert!(!AdamState::exists(dir.path()));
    let mut state = AdamState::new();
    let mut params = vec![
        ("a.lora_A.weight".to_string(), vec![2, 3], vec![0.5f32; 6]),
        ("a.lora_B.weight".to_string(), vec![3, 2], vec![-0.5f32; 6]),
    ];
    adamw_step(
        &mut state,
        &mut params,
        &[vec![0.1; 6], vec![-0.3; 6]],
        1e-3,
    );
    state.save(dir.path()).unwrap();
    assert!(AdamState::exists(dir.path()));
    let back = AdamState::load(dir.path()).unwrap().unwrap();
    assert_eq!(back, state);
    assert!(back.matches(&[
        ("a.lora_A.weight".to_string(), vec![2, 3]),
        ("a.lora_B.weight".to_string(), vec![3, 2]),
    ]));
    assert!(!back.matches(&[("a.lora_A.weight".to_string(), vec![2, 3])]));
    assert!(!back.matches(&[
        ("a.lora_A.weight".to_string(), vec![3, 2]),
        ("a.lora_B.weight".to_string(), vec![3, 2]),
    ]));
    // No stray temp files left behind.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    std::fs::write(
        dir.path().join(claas_sdpo::optim::STATE_TENSORS_FILE),
        b"garbage",
    )
    .unwrap();
    let e = AdamState::load(dir.path()).unwrap_err();
    assert!(
        matches!(e, SdpoError::OptimizerState { .. }) && !e.is_bad_input(),
        "{e}"
    );
    std::fs::write(dir.path().join(claas_sdpo::optim::STATE_META_FILE), b"{").unwrap();
    assert!(AdamState::load(dir.path()).is_err());
}
