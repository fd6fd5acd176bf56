//! Shared helpers for the SDPO tests: fixture paths, JSON arrays to tensors, tolerances.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

pub use claas_testkit::fixtures::read_json;

pub mod learning;

pub fn fixtures() -> PathBuf {
    claas_testkit::fixtures::dir()
}

/// Flattens a nested JSON number array, returning (shape, values).
pub fn flat(v: &Value) -> (Vec<usize>, Vec<f64>) {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) {
        match v {
            Value::Array(a) => {
                if shape.len() <= depth {
                    shape.push(a.len());
                } else {
                    assert_eq!(shape[depth], a.len(), "ragged array");
                }
                for x in a {
                    walk(x, depth + 1, shape, out);
                }
            }
            Value::Number(n) => out.push(n.as_f64().unwrap()),
            other => panic!("not a number: {other}"),
        }
    }
    let mut shape = Vec::new();
    let mut out = Vec::new();
    walk(v, 0, &mut shape, &mut out);
    (shape, out)
}

pub fn tensor_f32(v: &Value) -> Tensor {
    let (shape, vals) = flat(v);
    let vals: Vec<f32> = vals.into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

pub fn tensor_u32(v: &Value) -> Tensor {
    let (shape, vals) = flat(v);
    let vals: Vec<u32> = vals.into_iter().map(|x| x as u32).collect();
    Tensor::from_vec(vals, shape, &Device::Cpu).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    flat(v).1.into_iter().map(|x| x as u32).collect()
}

pub fn floats(v: &Value) -> Vec<f64> {
    flat(v).1
}

pub fn to_f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max over elements of |got - want| and whether every element is within atol + rtol*|want|.
pub fn within(got: &[f64], want: &[f64], atol: f64, rtol: f64) -> (f64, bool) {
    assert_eq!(got.len(), want.len(), "length");
    let mut worst = 0f64;
    let mut ok = true;
    for (g, w) in got.iter().zip(want) {
        let d = (g - w).abs();
        worst = worst.max(d);
        if d.is_nan() || d > atol + rtol * w.abs() {
            ok = false;
        }
    }
    (worst, ok)
}

pub fn close(name: &str, got: f64, want: f64, atol: f64, rtol: f64) {
    let d = (got - want).abs();
    assert!(
        d <= atol + rtol * want.abs(),
        "{name}: got {got:e}, fixture {want:e}, |d| = {d:e} (atol {atol:e}, rtol {rtol:e})"
    );
}
