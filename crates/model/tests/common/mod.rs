//! Shared helpers for the model tests: fixture paths and JSON readers.
#![allow(dead_code, unused_imports)]

pub use claas_testkit::fixtures::{ids, matrix, read_json};

pub fn fixtures() -> std::path::PathBuf {
    claas_testkit::fixtures::dir()
}

/// Max |a - b| over a `[rows, cols]` tensor and a nested-list fixture.
pub fn max_abs_diff(t: &candle_core::Tensor, want: &[Vec<f64>]) -> f64 {
    let got: Vec<Vec<f32>> = t
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(got.len(), want.len(), "row count");
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "column count");
        for (a, b) in g.iter().zip(w) {
            worst = worst.max((*a as f64 - b).abs());
        }
    }
    worst
}
