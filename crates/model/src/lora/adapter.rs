//! The adapter the forward pass applies: one LoRA pair per targeted projection, loaded from a
//! PEFT folder (keys, ranks and shapes checked against the base model), initialised as PEFT
//! does, or saved back in PEFT's format.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use regex::Regex;
use serde_json::{json, Value};

use super::peft_config::{peft_default_config, LoraConfig, LoraInit, TargetModules};
use super::{Module, ALL_MODULES};
use crate::{ModelError, Qwen3Config, Result};

/// One LoRA pair: `delta(x) = (x @ a^T) @ b^T * scale`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[r, in_features]`
    pub a: Tensor,
    /// `[out_features, r]`
    pub b: Tensor,
    pub scale: f64,
}

impl LoraPair {
    /// The LoRA contribution for a 2-D input `[n, in_features]`.
    pub fn delta(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // Scaled at rank width, not output width: one pass over [n, r] instead of [n, out].
        (x.matmul(&self.a.t()?)? * self.scale)?.matmul(&self.b.t()?)
    }
}

/// A LoRA adapter resident in memory, ready to be applied by the forward pass.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// `layers[l][module.index()]`
    pub(super) layers: Vec<[Option<LoraPair>; 7]>,
}

pub(super) fn empty_layers(n: usize) -> Vec<[Option<LoraPair>; 7]> {
    (0..n).map(|_| Default::default()).collect()
}

fn fsync_write(path: &Path, bytes: &[u8]) -> Result<()> {
    claas_fsatomic::write_file(path, bytes).map_err(|e| ModelError::io(path, e))
}

impl LoraAdapter {
    /// Loads a PEFT adapter folder and checks it against the base model's shapes.
    pub fn load(dir: &Path, model: &Qwen3Config, device: &Device, dtype: DType) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
        let config = LoraConfig::from_json(&raw)?;
        let st_path = dir.join("adapter_model.safetensors");
        if !st_path.is_file() {
            if dir.join("adapter_model.bin").is_file() {
                return Err(ModelError::Adapter(
                    "adapter_model.bin (pickle) is not supported; save with safetensors".into(),
                ));
            }
            return Err(ModelError::MissingFile(st_path));
        }
        let bytes = std::fs::read(&st_path).map_err(|e| ModelError::io(&st_path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            ModelError::Safetensors {
                path: st_path.clone(),
                message: e.to_string(),
            }
        })?;
        Self::from_tensors(config, tensors, model, device, dtype)
    }

    /// Builds an adapter from PEFT-named tensors, validating keys, ranks and shapes.
    pub fn from_tensors(
        config: LoraConfig,
        tensors: HashMap<String, Tensor>,
        model: &Qwen3Config,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let key_re = Regex::new(
            r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)(?:\.default)?\.weight$",
        )
        .map_err(|e| ModelError::Adapter(e.to_string()))?;
        let mut found: BTreeMap<(usize, Module), (Option<Tensor>, Option<Tensor>)> =
            BTreeMap::new();
        for (key, t) in tensors {
            let caps = key_re.captures(&key).ok_or_else(|| {
                ModelError::Adapter(format!(
                    "tensor {key:?} is not a LoRA A/B weight of a Qwen3 projection"
                ))
            })?;
            let layer: usize = caps[1]
                .parse()
                .map_err(|_| ModelError::Adapter(format!("bad layer index in {key:?}")))?;
            let module = Module::from_name(&caps[3])
                .filter(|m| m.parent() == &caps[2])
                .ok_or_else(|| ModelError::Adapter(format!("unknown module in {key:?}")))?;
            if layer >= model.num_hidden_layers {
                return Err(ModelError::AdapterMismatch(format!(
                    "{key:?} targets layer {layer} but the base model has {} layers",
                    model.num_hidden_layers
                )));
            }
            let e = found.entry((layer, module)).or_default();
            if &caps[4] == "A" {
                e.0 = Some(t);
            } else {
                e.1 = Some(t);
            }
        }
        if found.is_empty() {
            return Err(ModelError::Adapter("adapter has no LoRA tensors".into()));
        }
        let mut layers = empty_layers(model.num_hidden_layers);
        for ((layer, module), (a, b)) in found {
            let path = module.module_path(layer);
            let (Some(a), Some(b)) = (a, b) else {
                return Err(ModelError::Adapter(format!(
                    "{path} needs both lora_A and lora_B"
                )));
            };
            let (in_f, out_f) = module.dims(model);
            let r = config.rank_for(&path);
            let (ar, ain) = a.dims2()?;
            let (bout, br) = b.dims2()?;
            if ar != r {
                return Err(ModelError::RankMismatch {
                    key: module.peft_key(layer, 'A'),
                    config: r,
                    tensor: ar,
                });
            }
            if br != r {
                return Err(ModelError::RankMismatch {
                    key: module.peft_key(layer, 'B'),
                    config: r,
                    tensor: br,
                });
            }
            if ain != in_f || bout != out_f {
                return Err(ModelError::AdapterMismatch(format!(
                    "{path}: adapter maps {ain} -> {bout} features, the base model's projection maps {in_f} -> {out_f}"
                )));
            }
            layers[layer][module.index()] = Some(LoraPair {
                a: a.to_dtype(dtype)?.to_device(device)?,
                b: b.to_dtype(dtype)?.to_device(device)?,
                scale: config.scale_for(&path),
            });
        }
        Ok(LoraAdapter { config, layers })
    }

    /// A fresh adapter as PEFT initialises one: A ~ kaiming-uniform (U(+-1/sqrt(in))), B = 0, so
    /// it changes nothing until trained.
    pub fn init(init: &LoraInit, model: &Qwen3Config, seed: u64, device: &Device) -> Result<Self> {
        if init.r == 0 {
            return Err(ModelError::Adapter("r must be positive".into()));
        }
        let mut raw = peft_default_config();
        raw["inference_mode"] = json!(true);
        let config = LoraConfig {
            r: init.r,
            lora_alpha: init.lora_alpha,
            use_rslora: init.use_rslora,
            target_modules: TargetModules::List(init.target_modules.clone()),
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
            base_model_name_or_path: init.base_model_name_or_path.clone(),
            raw,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut layers = empty_layers(model.num_hidden_layers);
        let mut any = false;
        for (l, slots) in layers.iter_mut().enumerate() {
            for m in ALL_MODULES {
                if !config.targets(l, m)? {
                    continue;
                }
                any = true;
                let (in_f, out_f) = m.dims(model);
                let bound = 1.0 / (in_f as f64).sqrt();
                let a: Vec<f32> = (0..init.r * in_f)
                    .map(|_| rng.gen_range(-bound..bound) as f32)
                    .collect();
                slots[m.index()] = Some(LoraPair {
                    a: Tensor::from_vec(a, (init.r, in_f), device)?,
                    b: Tensor::zeros((out_f, init.r), DType::F32, device)?,
                    scale: config.scale_for(&m.module_path(l)),
                });
            }
        }
        if !any {
            return Err(ModelError::Adapter(format!(
                "target_modules {:?} match no Qwen3 projection",
                init.target_modules
            )));
        }
        Ok(LoraAdapter { config, layers })
    }

    /// Checks that every pair has the shapes of `model`'s projections (an adapter made for
    /// another base model is refused, not failed on mid-forward).
    pub fn check_fits(&self, model: &Qwen3Config) -> Result<()> {
        if self.layers.len() != model.num_hidden_layers {
            return Err(ModelError::AdapterMismatch(format!(
                "adapter built for {} layers, the base model has {}",
                self.layers.len(),
                model.num_hidden_layers
            )));
        }
        for (l, slots) in self.layers.iter().enumerate() {
            for m in ALL_MODULES {
                if let Some(p) = &slots[m.index()] {
                    let (in_f, out_f) = m.dims(model);
                    let (_, ain) = p.a.dims2()?;
                    let (bout, _) = p.b.dims2()?;
                    if ain != in_f || bout != out_f {
                        return Err(ModelError::AdapterMismatch(format!(
                            "{}: adapter maps {ain} -> {bout} features, the base model's projection maps {in_f} -> {out_f}",
                            m.module_path(l)
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The pair applied to `module` of `layer`, if any.
    pub fn pair(&self, layer: usize, module: Module) -> Option<&LoraPair> {
        self.layers.get(layer)?[module.index()].as_ref()
    }

    /// Number of layers this adapter was built for.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// All tensors under their PEFT keys, in a stable order.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, slots) in self.layers.iter().enumerate() {
            for m in ALL_MODULES {
                if let Some(p) = &slots[m.index()] {
                    out.push((m.peft_key(l, 'A'), p.a.clone()));
                    out.push((m.peft_key(l, 'B'), p.b.clone()));
                }
            }
        }
        out
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` (float32) into `dir`, each
    /// through a temp file + fsync + rename, then fsyncs the folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, t) in self.named_tensors() {
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            blobs.push((k, t.dims().to_vec(), bytes));
        }
        let mut views = Vec::new();
        for (k, shape, bytes) in &blobs {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| ModelError::Adapter(e.to_string()))?;
            views.push((k.clone(), view));
        }
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        let st = safetensors::serialize(views, Some(meta))
            .map_err(|e| ModelError::Adapter(e.to_string()))?;
        fsync_write(&dir.join("adapter_model.safetensors"), &st)?;
        let cfg = serde_json::to_string_pretty(&self.config.to_json())
            .map_err(|e| ModelError::Adapter(e.to_string()))?;
        // Each write also fsyncs the folder.
        fsync_write(&dir.join("adapter_config.json"), cfg.as_bytes())?;
        Ok(())
    }

    /// Bytes of adapter weights.
    pub fn size_bytes(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}
