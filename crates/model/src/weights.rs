//! Loading a model's safetensors files: 16-bit matrices mapped in place, the rest as tensors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::frozen::{HalfKind, HalfWeight, Q8Weight, Weight};
use crate::{MatmulPrecision, ModelError, Result};

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
    /// Weight-only quantization (vLLM's `--quantization`), applied at load to every weight
    /// matrix (projections, embeddings, LM head); `None` keeps `dtype`'s storage. CPU only.
    pub quantization: Option<Quantization>,
    /// How activations enter the products by bf16 weights: [`MatmulPrecision::Medium`] (the
    /// default) rounds them to bf16 for prefill-sized products so they run on AMX tiles where
    /// the CPU has them; [`MatmulPrecision::Highest`] keeps them f32 everywhere.
    pub matmul_precision: MatmulPrecision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: None,
            quantization: None,
            matmul_precision: MatmulPrecision::Medium,
        }
    }
}

/// A weight-only quantization method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// llama.cpp's q8_0 layout: int8 weights with one f16 scale per 32 inputs, symmetric,
    /// round-to-nearest, quantized at load from the checkpoint's 16- or 32-bit weights.
    Q8_0,
}

impl Quantization {
    /// The name `--quantization` takes.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Q8_0 => "q8_0",
        }
    }
}

impl std::fmt::Display for Quantization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses a `--quantization` value: `q8_0` (alias `int8`), or `none` for no quantization
/// (vLLM's default). Anything else is an error naming what is supported; vLLM's GPU formats
/// (awq, gptq, fp8, bitsandbytes, ...) are refused explicitly.
pub fn parse_quantization(s: &str) -> Result<Option<Quantization>> {
    match s.to_ascii_lowercase().as_str() {
        "none" | "" => Ok(None),
        "q8_0" | "int8" => Ok(Some(Quantization::Q8_0)),
        other => Err(ModelError::Config(format!(
            "unsupported quantization {other:?}: supported are q8_0 (alias int8; 8-bit weights \
             quantized at load) and none. vLLM's GPU methods (awq, gptq, fp8, bitsandbytes, \
             marlin, ...) are not supported on the CPU"
        ))),
    }
}

/// Parses a `--matmul-precision` value, named as PyTorch's `set_float32_matmul_precision`:
/// `highest` (f32 activations) or `medium` (bf16 activations in prefill-sized products).
pub fn parse_matmul_precision(s: &str) -> Result<MatmulPrecision> {
    match s.to_ascii_lowercase().as_str() {
        "highest" => Ok(MatmulPrecision::Highest),
        "medium" => Ok(MatmulPrecision::Medium),
        other => Err(ModelError::Config(format!(
            "unsupported matmul precision {other:?}: expected highest (f32 activations) or \
             medium (activations rounded to bf16 for products by bf16 weights, on AMX)"
        ))),
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
/// [`Weight::Q8`] under `quant`, else [`Weight::Half`] when `half` is set (in place in the
/// mapped file when it already holds that format); everything else a tensor of `dtype` on
/// `device`.
pub(crate) fn load_weights(
    files: &[PathBuf],
    device: &Device,
    dtype: DType,
    half: Option<HalfKind>,
    quant: Option<Quantization>,
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
                (_, &[rows, cols]) if quant == Some(Quantization::Q8_0) => {
                    let w = quantize_q8(data, file_dtype, rows, cols)
                        .map_err(|e| bad(format!("{name}: {e}")))?;
                    // The source pages were read once; drop them from this process's resident
                    // set now rather than when the map goes, so a model larger than half the
                    // RAM can be quantized (they fault back in from the file if ever touched).
                    let offset = data.as_ptr() as usize - map.as_ptr() as usize;
                    // SAFETY: a read-only private file mapping: after MADV_DONTNEED the pages
                    // read back the same file contents, so no live slice observes a change.
                    let _ = unsafe {
                        map.unchecked_advise_range(
                            memmap2::UncheckedAdvice::DontNeed,
                            offset,
                            data.len(),
                        )
                    };
                    Weight::Q8(w)
                }
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

/// Quantizes a little-endian `rows×cols` matrix of a safetensors file to q8_0, a row at a time.
fn quantize_q8(
    data: &[u8],
    dtype: DType,
    rows: usize,
    cols: usize,
) -> std::result::Result<Q8Weight, String> {
    let size = dtype.size_in_bytes();
    if Some(data.len()) != rows.checked_mul(cols).and_then(|n| n.checked_mul(size)) {
        return Err(format!(
            "{} bytes for a {rows}×{cols} {dtype:?} matrix",
            data.len()
        ));
    }
    let widen: fn(&[u8]) -> f32 = match dtype {
        DType::BF16 => |b| claas_kernels::bf16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        DType::F16 => |b| claas_kernels::f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        DType::F64 => {
            |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        other => return Err(format!("cannot quantize {other:?}")),
    };
    let row_bytes = cols * size;
    Q8Weight::quantize(rows, cols, |r, out| {
        let src = &data[r * row_bytes..(r + 1) * row_bytes];
        for (o, b) in out.iter_mut().zip(src.chunks_exact(size)) {
            *o = widen(b);
        }
    })
    .map_err(|e| e.to_string())
}
