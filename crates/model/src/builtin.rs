//! The built-in demo model: a tiny Qwen3-shaped model with seeded random weights and a small
//! byte-level BPE tokenizer, written once into the local cache as an ordinary HF folder and
//! then loaded through the same code path as any other model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

use crate::{ModelError, Qwen3Config, Result};

/// Name of the built-in demo model (`--model builtin:tiny`).
pub const BUILTIN_TINY: &str = "tiny";

/// Bumped whenever the generated files change, so stale caches are not reused.
const BUILTIN_VERSION: u32 = 3;
const SEED: u64 = 0x000C_1AA5;

pub(crate) fn cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAAS_CACHE_DIR") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("claas");
    }
    crate::source::home_dir().join(".cache").join("claas")
}

pub(crate) fn tiny_config(vocab_size: usize, eos: u32, bos: u32) -> Qwen3Config {
    Qwen3Config {
        vocab_size,
        hidden_size: 128,
        intermediate_size: 384,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        // Room for OpenClaw's ~28k-character system prompt plus tools and a reply.
        max_position_embeddings: 40960,
        // Untied so the LM head can carry the end-of-turn bias below.
        tie_word_embeddings: false,
        bos_token_id: Some(bos),
        eos_token_ids: vec![eos],
        torch_dtype: Some("float32".into()),
    }
}

/// Returns the folder of a built-in model, generating it on first use.
pub fn builtin_model_dir(name: &str) -> Result<PathBuf> {
    if name != BUILTIN_TINY {
        return Err(ModelError::Source {
            spec: format!("builtin:{name}"),
            message: format!("unknown built-in model; available: builtin:{BUILTIN_TINY}"),
        });
    }
    // Keyed by the tokenizer files too, so a changed tokenizer never meets stale weights.
    let key = fnv1a(&[
        claas_chat::builtin::tokenizer_json().as_bytes(),
        claas_chat::builtin::tokenizer_config_json().as_bytes(),
    ]);
    let dir = cache_root()
        .join("builtin")
        .join(format!("{name}-v{BUILTIN_VERSION}-{key:016x}"));
    if dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(parent)
        .map_err(|e| ModelError::io(parent, e))?;
    write_builtin_model(staging.path())?;
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

pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

/// Writes the built-in tiny model (config, generation config, weights, tokenizer) into `dir`.
pub fn write_builtin_model(dir: &Path) -> Result<()> {
    let tok_json = claas_chat::builtin::tokenizer_json();
    let tok_cfg = claas_chat::builtin::tokenizer_config_json();
    let tok = claas_chat::Tokenizer::from_json_str(&tok_json)
        .map_err(|e| ModelError::Config(format!("built-in tokenizer: {e}")))?;
    let id = |t: &str| {
        tok.token_to_id(t)
            .ok_or_else(|| ModelError::Config(format!("built-in tokenizer lacks {t}")))
    };
    let eos = id("<|im_end|>")?;
    let pad = id("<|endoftext|>")?;
    let cfg = tiny_config(tok.vocab_size(), eos, pad);
    let mut whitespace = Vec::new();
    let mut never = Vec::new();
    for id in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[id], false).unwrap_or_default();
        // Tags, and byte pieces of multi-byte characters (which alone decode to U+FFFD).
        let tag = text.starts_with('<') && text.ends_with('>') && text.len() > 2;
        if tok.is_special(id) || tag || text.contains('\u{FFFD}') {
            if id != eos {
                never.push(id);
            }
        } else if !text.is_empty() && text.chars().all(char::is_whitespace) {
            whitespace.push(id);
        }
    }
    let mut tensors = tiny_weights(&cfg, &whitespace, &never)?;
    let calib = tok
        .encode(CALIBRATION_TEXT, false)
        .map_err(|e| ModelError::Config(format!("built-in tokenizer: {e}")))?;
    let bias = calibrate_end_of_turn(&cfg, &tensors, eos, &calib)?;
    if let Some((_, head)) = tensors.get_mut("lm_head.weight") {
        head[eos as usize * cfg.hidden_size] = bias;
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| ModelError::io(&p, e))
    };
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write("config.json", pretty(&cfg.to_json()).as_bytes())?;
    let gen = serde_json::json!({
        "bos_token_id": pad,
        "eos_token_id": [eos, pad],
        "pad_token_id": pad,
        "do_sample": true,
        "temperature": 0.7,
        "top_p": 0.8,
        "top_k": 20,
    });
    write("generation_config.json", pretty(&gen).as_bytes())?;
    write("tokenizer.json", tok_json.as_bytes())?;
    write("tokenizer_config.json", tok_cfg.as_bytes())?;
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, (shape, v))| {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k, shape, bytes)
        })
        .collect();
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut views = Vec::new();
    for (k, shape, bytes) in &blobs {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| ModelError::Config(e.to_string()))?;
        views.push((k.clone(), view));
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let st =
        safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Config(e.to_string()))?;
    write("model.safetensors", &st)?;
    Ok(())
}

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Seeded random weights with two "bias channels" that no layer writes to, so the final hidden
/// state carries them straight from the last token's embedding:
/// - channel 0 is +1 for ordinary tokens and -1 for whitespace-only ones; the LM head gives
///   `<|im_end|>` a weight on it (set by [`calibrate_end_of_turn`]), so the random demo model
///   ends its replies after a few dozen tokens, never right after a newline (no empty replies);
/// - channel 1 is +1 everywhere; the LM head gives the other special and tag tokens
///   (`<|im_start|>`, `<think>`, `<tool_call>`, ...) and lone bytes of multi-byte characters a
///   large negative weight on it, so the demo model never emits them (its text is valid UTF-8).
fn tiny_weights(c: &Qwen3Config, whitespace: &[u32], never: &[u32]) -> Result<Weights> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut normal = |n: usize, std: f32| -> Result<Vec<f32>> {
        let d = Normal::new(0.0f32, std).map_err(|e| ModelError::Config(e.to_string()))?;
        Ok((0..n).map(|_| d.sample(&mut rng)).collect())
    };
    let (h, v) = (c.hidden_size, c.vocab_size);
    let mut w = Weights::new();
    let mut embed = normal(v * h, 0.1)?;
    for row in embed.chunks_mut(h) {
        row[0] = 1.0;
        row[1] = 1.0;
    }
    for &id in whitespace {
        embed[id as usize * h] = -1.0;
    }
    w.insert("model.embed_tokens.weight".into(), (vec![v, h], embed));
    for l in 0..c.num_hidden_layers {
        for m in crate::ALL_MODULES {
            let (i, o) = m.dims(c);
            let mut t = normal(o * i, 0.05)?;
            if matches!(m, crate::Module::O | crate::Module::Down) {
                t[..2 * i].iter_mut().for_each(|x| *x = 0.0); // rows 0, 1 = bias channels
            }
            w.insert(format!("{}.weight", m.module_path(l)), (vec![o, i], t));
        }
        let p = format!("model.layers.{l}");
        for (n, size) in [
            ("self_attn.q_norm", c.head_dim),
            ("self_attn.k_norm", c.head_dim),
            ("input_layernorm", h),
            ("post_attention_layernorm", h),
        ] {
            w.insert(format!("{p}.{n}.weight"), (vec![size], vec![1.0; size]));
        }
    }
    w.insert("model.norm.weight".into(), (vec![h], vec![1.0; h]));
    let mut head = normal(v * h, 0.1)?;
    for row in head.chunks_mut(h) {
        row[0] = 0.0;
        row[1] = 0.0;
    }
    for &id in never {
        head[id as usize * h + 1] = -30.0;
    }
    w.insert("lm_head.weight".into(), (vec![v, h], head));
    Ok(w)
}

const CALIBRATION_TEXT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
<|im_start|>user\nTell me something about the sea and the ships on it.<|im_end|>\n\
<|im_start|>assistant\nThe sea is wide and the ships sail far, carrying people and goods.";

/// Wanted mean probability of `<|im_end|>` per generated token: replies of ~30 tokens.
const END_OF_TURN_PROB: f64 = 1.0 / 30.0;

/// Chooses the LM-head weight on the bias channel for `<|im_end|>` so that its mean probability
/// over a calibration text is [`END_OF_TURN_PROB`]. The weight only shifts that one logit by
/// `weight * h0` (h0 = normalised bias channel), so two forwards give it in closed form per
/// position and a bisection finds the weight.
fn calibrate_end_of_turn(c: &Qwen3Config, w: &Weights, eos: u32, ids: &[u32]) -> Result<f32> {
    let logits_with = |bias: f32| -> Result<Vec<Vec<f32>>> {
        let dev = candle_core::Device::Cpu;
        let mut t = HashMap::new();
        for (k, (shape, v)) in w {
            let mut v = v.clone();
            if k == "lm_head.weight" {
                v[eos as usize * c.hidden_size] = bias;
            }
            t.insert(
                k.clone(),
                candle_core::Tensor::from_vec(v, shape.as_slice(), &dev)?,
            );
        }
        let m = crate::Qwen3::from_tensors(c.clone(), t, &dev, candle_core::DType::F32)?;
        Ok(m.logits(ids, None, 256)?.to_vec2()?)
    };
    let l0 = logits_with(0.0)?;
    let l1 = logits_with(1.0)?;
    let e = eos as usize;
    // Per position: eos logit a, its slope h0, and the sum of exp over the other logits.
    let rows: Vec<(f64, f64, f64)> = l0
        .iter()
        .zip(&l1)
        .map(|(r0, r1)| {
            let mx = r0.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let others: f64 = r0
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != e)
                .map(|(_, x)| (*x as f64 - mx).exp())
                .sum();
            (r0[e] as f64 - mx, (r1[e] - r0[e]) as f64, others)
        })
        .collect();
    let mean_p = |b: f64| {
        rows.iter()
            .map(|(a, h, s)| {
                let x = (a + b * h).exp();
                x / (x + s)
            })
            .sum::<f64>()
            / rows.len().max(1) as f64
    };
    let (mut lo, mut hi) = (-50.0f64, 50.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if mean_p(mid) < END_OF_TURN_PROB {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((0.5 * (lo + hi)) as f32)
}
