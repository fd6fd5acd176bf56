//! Loading a model's safetensors files: 16-bit matrices mapped in place, the rest as tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::frozen::{HalfKind, HalfWeight, Weight};
use crate::{ModelError, Result};

/// How to place a model in memory.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Weight dtype, with vLLM's `--dtype` meaning: `None` is `auto` (the checkpoint's dtype,
    /// from config.json's `torch_dtype`/`dtype`, else the files'). On the CPU, `BF16`/`F16`
    /// keep the weight matrices in 16 bits (converted at load if the file differs) and compute
    /// in f32 on the 16-bit kernels; `F32` widens them to f32 as candle's own matmul needs.
    /// Norms, LoRA, the KV cache and everything computed stay f32 either way. Off the CPU the
    /// dtype is the compute dtype (`None`: f32).
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

/// Parses a `--dtype` value with vLLM's spellings (`auto`, `half`, `float16`, `bfloat16`,
/// `float`, `float32`; also `bf16`, `fp16`, `fp32`). `auto` is `None`.
pub fn parse_dtype(s: &str) -> Result<Option<DType>> {
    Ok(match s {
        "auto" => None,
        "float32" | "float" | "fp32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "half" | "fp16" => Some(DType::F16),
        other => {
            return Err(ModelError::Config(format!(
            "unsupported dtype {other:?} (expected auto, bfloat16, float16/half or float32/float)"
        )))
        }
    })
}

impl LoadOptions {
    /// The dtype activations are computed in on this device.
    pub fn compute_dtype(&self) -> DType {
        match (self.dtype, &self.device) {
            (Some(DType::F64), _) => DType::F64,
            (Some(d), dev) if !dev.is_cpu() => d,
            _ => DType::F32,
        }
    }

    /// The 16-bit format weight matrices are kept in, if any: on the CPU, the requested dtype,
    /// or under `auto` the checkpoint's (`config_dtype`, else `file_dtype`).
    pub(crate) fn half_storage(
        &self,
        config_dtype: Option<&str>,
        file_dtype: impl FnOnce() -> Option<DType>,
    ) -> Result<Option<HalfKind>> {
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let d = match self.dtype {
            Some(d) => Some(d),
            None => match config_dtype {
                Some(s) => match parse_dtype(s.strip_prefix("torch.").unwrap_or(s)) {
                    Ok(d) => d,
                    // An unusual string (e.g. "float64"): the files decide.
                    Err(_) => file_dtype(),
                },
                None => file_dtype(),
            },
        };
        Ok(d.and_then(HalfKind::from_dtype))
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

fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    Some(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        _ => return None,
    })
}

/// The dtype of the first matrix (2-D tensor) in the files: a checkpoint's storage dtype.
pub(crate) fn file_matrix_dtype(files: &[PathBuf]) -> Option<DType> {
    let path = files.first()?;
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only mapping of a model file we never write in place (see `load_weights`).
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let st = SafeTensors::deserialize(&map).ok()?;
    let mut names = st.names();
    names.sort();
    names.into_iter().find_map(|n| {
        let v = st.tensor(n).ok()?;
        (v.shape().len() == 2)
            .then(|| candle_dtype(v.dtype()))
            .flatten()
    })
}

/// Reads every tensor of the given safetensors files. Matrices (2-D tensors) become
/// [`Weight::Half`] when `half` is set (in place in the mapped file when it already holds that
/// format), everything else a tensor of `dtype` on `device`.
pub(crate) fn load_weights(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
    half: Option<HalfKind>,
) -> Result<HashMap<String, Weight>> {
    let mut out = HashMap::new();
    for path in files {
        let bad = |message: String| ModelError::Safetensors {
            path: path.clone(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the file is only read; like every safetensors loader we assume it is not
        // truncated or rewritten while mapped (we never write model files in place).
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?);
        let st = SafeTensors::deserialize(&map).map_err(|e| bad(e.to_string()))?;
        for (name, view) in st.tensors() {
            let Some(file_dtype) = candle_dtype(view.dtype()) else {
                return Err(bad(format!(
                    "{name}: dtype {:?} is not a float type",
                    view.dtype()
                )));
            };
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match (half, shape.as_slice()) {
                (Some(kind), &[rows, cols]) if file_dtype == kind.dtype() => {
                    let offset = data.as_ptr() as usize - map.as_ptr() as usize;
                    let w = HalfWeight::mapped(&map, offset, kind, rows, cols)
                        .ok_or_else(|| bad(format!("{name}: data outside the file")))?;
                    Weight::Half(w)
                }
                (Some(kind), &[_, _]) => {
                    let t = Tensor::from_raw_buffer(data, file_dtype, &shape, &Device::Cpu)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    Weight::Half(HalfWeight::from_tensor(&t, kind)?)
                }
                _ => {
                    let t = Tensor::from_raw_buffer(data, file_dtype, &shape, &Device::Cpu)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    Weight::Dense(t.to_dtype(dtype)?.to_device(device)?)
                }
            };
            out.insert(name, t);
        }
    }
    Ok(out)
}
