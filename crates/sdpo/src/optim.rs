//! AdamW and gradient-norm clipping with the exact arithmetic of `torch.optim.AdamW` (single
//! tensor path, float32) and `torch.nn.utils.clip_grad_norm_`, plus the optimizer state that is
//! persisted beside an adapter so successive feedback continues one optimizer.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Result, SdpoError};

/// File holding the first/second moments, beside `adapter_model.safetensors`.
pub const STATE_TENSORS_FILE: &str = "optimizer_state.safetensors";
/// File holding the step count and hyperparameters.
pub const STATE_META_FILE: &str = "optimizer_state.json";

/// AdamW hyperparameters other than the learning rate (the reference's fixed values).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamHyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamHyper {
    fn default() -> Self {
        AdamHyper {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub shape: Vec<usize>,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

/// AdamW state: the step count and the moments of every parameter under its PEFT key
/// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AdamState {
    /// Number of optimizer steps taken (torch keeps one per parameter; they are always equal here).
    pub step: u64,
    pub moments: BTreeMap<String, Moments>,
    pub hyper: AdamHyper,
}

#[derive(Serialize, Deserialize)]
struct StateMeta {
    format: String,
    step: u64,
    #[serde(flatten)]
    hyper: AdamHyper,
    params: Vec<String>,
}

const FORMAT: &str = "claas-adamw-v1";

fn state_err(path: &Path, message: impl Into<String>) -> SdpoError {
    SdpoError::OptimizerState {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    claas_fsatomic::write_file(path, bytes).map_err(|e| state_err(path, e.to_string()))
}

impl AdamState {
    /// A fresh optimizer (what the reference builds when no state is saved).
    pub fn new() -> Self {
        Self::default()
    }

    /// True when `dir` holds a saved state.
    pub fn exists(dir: &Path) -> bool {
        dir.join(STATE_META_FILE).is_file() && dir.join(STATE_TENSORS_FILE).is_file()
    }

    /// Writes the state into `dir` (two files, each via temp file + fsync + rename; the moments
    /// first, so a reader that finds the JSON also finds matching tensors).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| state_err(dir, e.to_string()))?;
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, m) in &self.moments {
            for (suffix, v) in [("exp_avg", &m.exp_avg), ("exp_avg_sq", &m.exp_avg_sq)] {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                blobs.push((format!("{k}.{suffix}"), m.shape.clone(), bytes));
            }
        }
        let st_path = dir.join(STATE_TENSORS_FILE);
        let mut views = Vec::with_capacity(blobs.len());
        for (k, shape, bytes) in &blobs {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| state_err(&st_path, e.to_string()))?;
            views.push((k.clone(), view));
        }
        let st =
            safetensors::serialize(views, None).map_err(|e| state_err(&st_path, e.to_string()))?;
        atomic_write(&st_path, &st)?;
        let meta = StateMeta {
            format: FORMAT.into(),
            step: self.step,
            hyper: self.hyper,
            params: self.moments.keys().cloned().collect(),
        };
        let meta_path = dir.join(STATE_META_FILE);
        let text = serde_json::to_string_pretty(&meta)
            .map_err(|e| state_err(&meta_path, e.to_string()))?;
        // Each write also fsyncs the folder.
        atomic_write(&meta_path, text.as_bytes())?;
        Ok(())
    }

    /// Reads a state saved by [`AdamState::save`]; `Ok(None)` when `dir` has none (a fresh
    /// optimizer is then the right start, as in the reference).
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let meta_path = dir.join(STATE_META_FILE);
        let st_path = dir.join(STATE_TENSORS_FILE);
        if !meta_path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| state_err(&meta_path, e.to_string()))?;
        let meta: StateMeta =
            serde_json::from_str(&text).map_err(|e| state_err(&meta_path, e.to_string()))?;
        if meta.format != FORMAT {
            return Err(state_err(
                &meta_path,
                format!("unknown format {:?}", meta.format),
            ));
        }
        let bytes = std::fs::read(&st_path).map_err(|e| state_err(&st_path, e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| state_err(&st_path, e.to_string()))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|e| state_err(&st_path, format!("{name}: {e}")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(state_err(&st_path, format!("{name}: expected F32")));
            }
            let v = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let mut moments = BTreeMap::new();
        for k in meta.params {
            let (shape, exp_avg) = read(&format!("{k}.exp_avg"))?;
            let (shape2, exp_avg_sq) = read(&format!("{k}.exp_avg_sq"))?;
            if shape != shape2 {
                return Err(state_err(&st_path, format!("{k}: moment shapes differ")));
            }
            moments.insert(
                k,
                Moments {
                    shape,
                    exp_avg,
                    exp_avg_sq,
                },
            );
        }
        Ok(Some(AdamState {
            step: meta.step,
            moments,
            hyper: meta.hyper,
        }))
    }

    /// True when this state has moments for exactly these parameters with these shapes.
    pub fn matches(&self, params: &[(String, Vec<usize>)]) -> bool {
        self.moments.len() == params.len()
            && params
                .iter()
                .all(|(k, s)| self.moments.get(k).is_some_and(|m| &m.shape == s))
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scales all gradients in place by
/// `min(1, max_norm / (total_norm + 1e-6))` and returns the total L2 norm before clipping.
pub fn clip_grad_norm(grads: &mut [Vec<f32>], max_norm: f64) -> f64 {
    // Per-tensor norms, then the norm of norms, as torch does (accumulated in f64 here).
    let norms: Vec<f64> = grads
        .iter()
        .map(|g| {
            g.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let total = norms.iter().map(|n| n * n).sum::<f64>().sqrt();
    let total32 = total as f32;
    let coef = (max_norm as f32) / (total32 + 1e-6f32);
    let coef = coef.min(1.0);
    // torch multiplies even when the coefficient is 1.
    for g in grads.iter_mut() {
        for x in g.iter_mut() {
            *x *= coef;
        }
    }
    total
}

/// One AdamW step over flat f32 parameters, mirroring `torch.optim.adamw` (single-tensor path):
/// `p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = v*b2 + (1-b2)*g*g;
/// p += -(lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)`.
///
/// `params[i]` are `(key, shape, values)`; missing moments are created as zeros.
pub fn adamw_step(
    state: &mut AdamState,
    params: &mut [(String, Vec<usize>, Vec<f32>)],
    grads: &[Vec<f32>],
    lr: f64,
) {
    let h = state.hyper;
    state.step += 1;
    let step = state.step as f64;
    let decay = (1.0 - lr * h.weight_decay) as f32;
    let w1 = (1.0 - h.beta1) as f32;
    let b2 = h.beta2 as f32;
    let one_minus_b2 = (1.0 - h.beta2) as f32;
    let bc1 = 1.0 - h.beta1.powf(step);
    let bc2 = 1.0 - h.beta2.powf(step);
    let neg_step_size = (-(lr / bc1)) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let eps = h.eps as f32;
    for ((key, shape, p), g) in params.iter_mut().zip(grads) {
        let m = state.moments.entry(key.clone()).or_insert_with(|| Moments {
            shape: shape.clone(),
            exp_avg: vec![0.0; p.len()],
            exp_avg_sq: vec![0.0; p.len()],
        });
        for i in 0..p.len() {
            let gi = g[i];
            p[i] *= decay;
            // torch.lerp with weight < 0.5: self + w * (end - self)
            m.exp_avg[i] += w1 * (gi - m.exp_avg[i]);
            m.exp_avg_sq[i] = m.exp_avg_sq[i] * b2 + one_minus_b2 * gi * gi;
            let denom = m.exp_avg_sq[i].sqrt() / bc2_sqrt + eps;
            p[i] += neg_step_size * m.exp_avg[i] / denom;
        }
    }
}

/// Flattens a tensor to f32 values on the CPU.
pub(crate) fn tensor_to_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}
