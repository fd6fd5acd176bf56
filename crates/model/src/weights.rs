use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// How to place a model in memory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Compute dtype. On CPU, half-precision weights are widened to f32 because candle has no
    /// fast half-precision CPU matmul; `None` keeps f32 (or f64 if the file is f64).
    pub dtype: Option<DType>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
        }
    }
}

impl LoadOptions {
    /// The dtype tensors are computed in on this device.
    pub fn compute_dtype(&self) -> DType {
        match (self.dtype, &self.device) {
            (Some(DType::F64), _) => DType::F64,
            (Some(d), dev) if !dev.is_cpu() => d,
            _ => DType::F32,
        }
    }
}

/// Lists the safetensors files of a model folder: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(ModelError::MissingFile(single));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Json {
            path: index.clone(),
            message: "no weight_map object".into(),
        })?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
    for p in &paths {
        if !p.is_file() {
            return Err(ModelError::MissingFile(p.clone()));
        }
    }
    Ok(paths)
}

/// Reads every tensor of the given safetensors files, converted to `dtype` on `device`.
pub(crate) fn load_tensors(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        // SAFETY: the file is only read; like every safetensors loader we assume it is not
        // truncated or rewritten while mapped (we never write model files in place).
        let st =
            unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| {
                ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
        for (name, _) in st.tensors() {
            let t = st
                .load(&name, &Device::Cpu)
                .map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: format!("{name}: {e}"),
                })?;
            let t = t.to_dtype(dtype)?.to_device(device)?;
            out.insert(name, t);
        }
    }
    Ok(out)
}
