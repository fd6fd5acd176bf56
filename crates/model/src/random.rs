//! Random-weight models of any Qwen3 shape, for benchmarks at sizes nobody wants to download
//! (Qwen3-8B is 16.4 GB in bf16). Like the built-in model they are written once into the local
//! cache as an ordinary folder and loaded through the normal loader, so 16-bit weights are
//! mapped from the file rather than held in memory. The file is streamed tensor by tensor in
//! chunks filled in parallel: the whole model is never in memory, and never in f32.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::DType;
use rayon::prelude::*;

use crate::{ModelError, Qwen3Config, Result, ALL_MODULES};

/// Bumped whenever the generated files change, so stale caches are not reused.
const RANDOM_VERSION: u32 = 1;
/// Standard deviation of every matrix entry (real Qwen3 projections are of this order).
const STD: f32 = 0.02;
/// Values generated per parallel task: one RNG stream each, so the file does not depend on the
/// thread count.
const CHUNK: usize = 1 << 20;
/// Values written per buffer.
const BUFFER: usize = 32 * CHUNK;

/// Returns the folder of a random model of shape `cfg` with weights stored in `dtype`
/// (`BF16`, `F16` or `F32`), generating it on first use. Matrices are uniform with standard
/// deviation 0.02 (cheaper to draw than the built-in model's normal, same scale), norm weights
/// are ones. Identical `cfg`, `dtype` and `seed` reuse the cached folder.
pub fn random_model_dir(cfg: &Qwen3Config, dtype: DType, seed: u64) -> Result<PathBuf> {
    random_model_dir_in(&crate::builtin::cache_root(), cfg, dtype, seed)
}

fn random_model_dir_in(root: &Path, cfg: &Qwen3Config, dtype: DType, seed: u64) -> Result<PathBuf> {
    let tag = match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F32 => "float32",
        other => {
            return Err(ModelError::Config(format!(
                "random models are stored in bf16, f16 or f32, not {other:?}"
            )))
        }
    };
    let mut cfg = cfg.clone();
    cfg.torch_dtype = Some(tag.into());
    let config = serde_json::to_string_pretty(&cfg.to_json())
        .map_err(|e| ModelError::Config(e.to_string()))?;
    let key = crate::builtin::fnv1a(&[config.as_bytes(), &seed.to_le_bytes()]);
    let dir = root.join("random").join(format!(
        "qwen3-{}l-{}h-{tag}-v{RANDOM_VERSION}-{key:016x}",
        cfg.num_hidden_layers, cfg.hidden_size
    ));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .map_err(|e| ModelError::io(parent, e))?;
    let p = staging.path().join("config.json");
    std::fs::write(&p, config).map_err(|e| ModelError::io(&p, e))?;
    write_weights(&staging.path().join("model.safetensors"), &cfg, dtype, seed)?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &dir) {
        // Another process generated it first: theirs is identical.
        let _ = std::fs::remove_dir_all(&staged);
        if !dir.join("model.safetensors").is_file() {
            return Err(ModelError::io(&dir, e));
        }
    }
    Ok(dir)
}

/// Name and shape of every tensor of a Qwen3 checkpoint of shape `c`.
fn tensor_list(c: &Qwen3Config) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..c.num_hidden_layers {
        for m in ALL_MODULES {
            let (i, o) = m.dims(c);
            t.push((format!("{}.weight", m.module_path(l)), vec![o, i]));
        }
        let p = format!("model.layers.{l}");
        for (n, size) in [
            ("self_attn.q_norm", c.head_dim),
            ("self_attn.k_norm", c.head_dim),
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
        ] {
            t.push((format!("{p}.{n}.weight"), vec![size]));
        }
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        t.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    t
}

/// SplitMix64: a tiny, fast, well-mixed generator; one stream per chunk.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Encodes `x` as `dtype`'s little-endian bytes into `out`.
fn put(x: f32, dtype: DType, out: &mut [u8]) {
    match dtype {
        DType::BF16 => out.copy_from_slice(&half::bf16::from_f32(x).to_le_bytes()),
        DType::F16 => out.copy_from_slice(&half::f16::from_f32(x).to_le_bytes()),
        _ => out.copy_from_slice(&x.to_le_bytes()),
    }
}

fn write_weights(path: &Path, c: &Qwen3Config, dtype: DType, seed: u64) -> Result<()> {
    let es = dtype.size_in_bytes();
    let st_dtype = match dtype {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    };
    let tensors = tensor_list(c);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "claas random_model_dir"}),
    );
    let mut offset = 0usize;
    for (name, shape) in &tensors {
        let bytes = shape.iter().product::<usize>() * es;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": st_dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut head = serde_json::to_vec(&header).map_err(|e| ModelError::Config(e.to_string()))?;
    // The data must start 8-byte aligned, so every tensor is aligned to its element size.
    head.resize(head.len().next_multiple_of(8), b' ');
    let file = std::fs::File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e| ModelError::io(path, e);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&head).map_err(io)?;
    let a = STD * 3f32.sqrt(); // uniform on [-a, a] has standard deviation STD
    let mut buf = vec![0u8; BUFFER * es];
    for (ti, (name, shape)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        let ones = shape.len() == 1;
        let mut done = 0;
        while done < n {
            let len = (n - done).min(BUFFER);
            let first_chunk = done / CHUNK;
            buf[..len * es]
                .par_chunks_mut(CHUNK * es)
                .enumerate()
                .for_each(|(ci, out)| {
                    let stream = ((ti as u64) << 32) | (first_chunk + ci) as u64;
                    let mut rng = SplitMix(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
                    for v in out.chunks_exact_mut(es) {
                        let x = if ones {
                            1.0
                        } else {
                            // 24 random bits -> uniform in [-a, a).
                            ((rng.next() >> 40) as f32 / (1u32 << 23) as f32 - 1.0) * a
                        };
                        put(x, dtype, v);
                    }
                });
            w.write_all(&buf[..len * es]).map_err(io)?;
            done += len;
        }
        if name.ends_with("mlp.down_proj.weight") {
            tracing::debug!("random model: wrote {name}");
        }
    }
    w.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny random model round-trips through the loader with the expected shapes and scale,
    /// and a second call reuses the cached folder.
    #[test]
    fn random_model_loads_and_is_cached() {
        let cache = tempfile::tempdir().unwrap();
        let mut cfg = crate::builtin::tiny_config(300, 1, 0);
        cfg.tie_word_embeddings = false;
        cfg.num_hidden_layers = 2;
        let dir = random_model_dir_in(cache.path(), &cfg, DType::BF16, 7).unwrap();
        let again = random_model_dir_in(cache.path(), &cfg, DType::BF16, 7).unwrap();
        assert_eq!(dir, again);
        let m = crate::Qwen3::load(&dir, &crate::LoadOptions::default()).unwrap();
        assert_eq!(m.weight_dtype(), DType::BF16);
        assert_eq!(m.config().num_hidden_layers, 2);
        let logits = m.logits(&[1, 2, 3], None, 16).unwrap();
        assert_eq!(logits.dims(), &[3, 300]);
        let v: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        let st = std::fs::read(dir.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        let q = st.tensor("model.layers.1.self_attn.q_proj.weight").unwrap();
        let vals: Vec<f32> = q
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let var = vals.iter().map(|x| x * x).sum::<f32>() / vals.len() as f32;
        assert!((var.sqrt() - STD).abs() < 0.1 * STD, "std {}", var.sqrt());
        let other = random_model_dir_in(cache.path(), &cfg, DType::BF16, 8).unwrap();
        assert_ne!(dir, other);
    }
}
