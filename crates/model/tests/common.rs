//! Shared helpers for the model tests: fixture paths and JSON readers.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::Value;

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

pub fn read_json(name: &str) -> Value {
    let p = fixtures().join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn matrix(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
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
