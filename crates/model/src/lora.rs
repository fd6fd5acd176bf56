//! PEFT-format LoRA adapters: load, save, initialise, and a trainable view for the SDPO step.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use regex::Regex;
use serde_json::{json, Value};

use crate::{ModelError, Qwen3Config, Result};

/// One of the seven linear projections of a Qwen3 layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Module {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// The seven projections, in PEFT's usual order.
pub const ALL_MODULES: [Module; 7] = [
    Module::Q,
    Module::K,
    Module::V,
    Module::O,
    Module::Gate,
    Module::Up,
    Module::Down,
];

impl Module {
    /// Name of the projection (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Module::Q => "q_proj",
            Module::K => "k_proj",
            Module::V => "v_proj",
            Module::O => "o_proj",
            Module::Gate => "gate_proj",
            Module::Up => "up_proj",
            Module::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Module::Q | Module::K | Module::V | Module::O => "self_attn",
            _ => "mlp",
        }
    }

    /// Parses a projection name.
    pub fn from_name(s: &str) -> Option<Module> {
        ALL_MODULES.into_iter().find(|m| m.name() == s)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// `(in_features, out_features)` of this projection in a model.
    pub fn dims(self, cfg: &Qwen3Config) -> (usize, usize) {
        let h = cfg.hidden_size;
        match self {
            Module::Q => (h, cfg.q_dim()),
            Module::K | Module::V => (h, cfg.kv_dim()),
            Module::O => (cfg.q_dim(), h),
            Module::Gate | Module::Up => (h, cfg.intermediate_size),
            Module::Down => (cfg.intermediate_size, h),
        }
    }

    /// Module path inside the transformers model, e.g. `model.layers.3.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}.{}", self.parent(), self.name())
    }

    /// Key of a LoRA tensor as PEFT saves it.
    pub fn peft_key(self, layer: usize, which: char) -> String {
        format!(
            "base_model.model.{}.lora_{which}.weight",
            self.module_path(layer)
        )
    }
}

/// `target_modules` as PEFT accepts it: a list of name suffixes or one regex.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetModules {
    List(Vec<String>),
    Regex(String),
}

impl TargetModules {
    fn matches(&self, module_path: &str) -> Result<bool> {
        match self {
            TargetModules::List(names) => Ok(names.iter().any(|t| {
                t == "all-linear" || module_path == t || module_path.ends_with(&format!(".{t}"))
            })),
            TargetModules::Regex(re) => {
                let re = Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| ModelError::Adapter(format!("bad target_modules regex: {e}")))?;
                Ok(re.is_match(module_path))
            }
        }
    }
}

/// The fields of `adapter_config.json` that matter for applying an adapter.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub target_modules: TargetModules,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    pub layers_to_transform: Option<Vec<usize>>,
    pub base_model_name_or_path: Option<String>,
    /// The file as read, so saving keeps fields we do not interpret.
    pub raw: Value,
}

fn pattern_lookup<T: Copy>(pat: &BTreeMap<String, T>, module_path: &str) -> Option<T> {
    // PEFT: re.match(rf"(.*\.)?({key})$", module_name)
    pat.iter().find_map(|(k, v)| {
        Regex::new(&format!("^(?:.*\\.)?(?:{k})$"))
            .ok()
            .filter(|re| re.is_match(module_path))
            .map(|_| *v)
    })
}

impl LoraConfig {
    /// Parses `adapter_config.json`.
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |m: String| ModelError::Adapter(m);
        let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(bad(format!("peft_type {peft_type:?} is not LORA")));
        }
        if v.get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
            return Err(bad("DoRA adapters are not supported".into()));
        }
        let r = v
            .get("r")
            .and_then(Value::as_u64)
            .filter(|r| *r > 0)
            .ok_or_else(|| bad("adapter_config.json needs a positive integer r".into()))?
            as usize;
        let lora_alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
        let target_modules = match v.get("target_modules") {
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(a)) => TargetModules::List(
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect(),
            ),
            _ => return Err(bad("adapter_config.json needs target_modules".into())),
        };
        let rank_pattern = v
            .get("rank_pattern")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, x)| x.as_u64().map(|x| (k.clone(), x as usize)))
                    .collect()
            })
            .unwrap_or_default();
        let alpha_pattern = v
            .get("alpha_pattern")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .filter_map(|(k, x)| x.as_f64().map(|x| (k.clone(), x)))
                    .collect()
            })
            .unwrap_or_default();
        let layers_to_transform = match v.get("layers_to_transform") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as usize]),
            Some(Value::Array(a)) => Some(
                a.iter()
                    .filter_map(|x| x.as_u64().map(|x| x as usize))
                    .collect(),
            ),
            _ => None,
        };
        Ok(LoraConfig {
            r,
            lora_alpha,
            use_rslora: v
                .get("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            target_modules,
            rank_pattern,
            alpha_pattern,
            layers_to_transform,
            base_model_name_or_path: v
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_string),
            raw: v.clone(),
        })
    }

    /// Rank of one module (honours `rank_pattern`).
    pub fn rank_for(&self, module_path: &str) -> usize {
        pattern_lookup(&self.rank_pattern, module_path).unwrap_or(self.r)
    }

    /// Scaling of one module: alpha / r, or alpha / sqrt(r) with rsLoRA.
    pub fn scale_for(&self, module_path: &str) -> f64 {
        let r = self.rank_for(module_path) as f64;
        let alpha = pattern_lookup(&self.alpha_pattern, module_path).unwrap_or(self.lora_alpha);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    fn targets(&self, layer: usize, m: Module) -> Result<bool> {
        if let Some(layers) = &self.layers_to_transform {
            if !layers.contains(&layer) {
                return Ok(false);
            }
        }
        self.target_modules.matches(&m.module_path(layer))
    }

    /// The config file PEFT would write for this adapter.
    pub fn to_json(&self) -> Value {
        let mut v = if self.raw.is_object() {
            self.raw.clone()
        } else {
            peft_default_config()
        };
        let target = match &self.target_modules {
            TargetModules::List(l) => json!(l),
            TargetModules::Regex(r) => json!(r),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("r".into(), json!(self.r));
            o.insert("lora_alpha".into(), alpha_json(self.lora_alpha));
            o.insert("use_rslora".into(), json!(self.use_rslora));
            o.insert("target_modules".into(), target);
            o.insert("rank_pattern".into(), json!(self.rank_pattern));
            o.insert("alpha_pattern".into(), json!(self.alpha_pattern));
            o.insert(
                "base_model_name_or_path".into(),
                json!(self.base_model_name_or_path),
            );
            o.insert("peft_type".into(), json!("LORA"));
        }
        v
    }
}

fn alpha_json(a: f64) -> Value {
    if a.fract() == 0.0 && a.abs() < 1e15 {
        json!(a as i64)
    } else {
        json!(a)
    }
}

/// Every field PEFT 0.21 writes into a LoRA `adapter_config.json`, with its default.
fn peft_default_config() -> Value {
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": null,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": 8,
        "lora_bias": false,
        "lora_dropout": 0.0,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": "0.21.2",
        "qalora_group_size": 16,
        "r": 8,
        "rank_pattern": {},
        "revision": null,
        "target_modules": [],
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": false,
        "velora_config": null
    })
}

/// Settings for a fresh adapter (what `POST /v1/lora/init` takes).
#[derive(Debug, Clone)]
pub struct LoraInit {
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
    pub base_model_name_or_path: Option<String>,
}

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
    layers: Vec<[Option<LoraPair>; 7]>,
}

fn empty_layers(n: usize) -> Vec<[Option<LoraPair>; 7]> {
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

/// An adapter whose A/B matrices are candle `Var`s, for gradient descent.
#[derive(Debug, Clone)]
pub struct TrainableLora {
    config: LoraConfig,
    num_layers: usize,
    /// (layer, module, A, B, scale)
    entries: Vec<(usize, Module, Var, Var, f64)>,
}

impl TrainableLora {
    /// Copies an adapter's weights into fresh variables (f32 or f64, as the adapter is).
    pub fn from_adapter(adapter: &LoraAdapter) -> Result<Self> {
        let mut entries = Vec::new();
        for (l, slots) in adapter.layers.iter().enumerate() {
            for m in ALL_MODULES {
                if let Some(p) = &slots[m.index()] {
                    entries.push((
                        l,
                        m,
                        Var::from_tensor(&p.a.copy()?)?,
                        Var::from_tensor(&p.b.copy()?)?,
                        p.scale,
                    ));
                }
            }
        }
        Ok(TrainableLora {
            config: adapter.config.clone(),
            num_layers: adapter.layers.len(),
            entries,
        })
    }

    /// An adapter view whose tensors are these variables, so a forward through it is
    /// differentiable with respect to them.
    pub fn adapter(&self) -> LoraAdapter {
        let mut layers = empty_layers(self.num_layers);
        for (l, m, a, b, s) in &self.entries {
            layers[*l][m.index()] = Some(LoraPair {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: *s,
            });
        }
        LoraAdapter {
            config: self.config.clone(),
            layers,
        }
    }

    /// The variables under their PEFT keys (A then B for each module, layer-major order).
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let mut out = Vec::with_capacity(self.entries.len() * 2);
        for (l, m, a, b, _) in &self.entries {
            out.push((m.peft_key(*l, 'A'), a));
            out.push((m.peft_key(*l, 'B'), b));
        }
        out
    }

    /// A detached snapshot of the current weights.
    pub fn snapshot(&self) -> Result<LoraAdapter> {
        let mut layers = empty_layers(self.num_layers);
        for (l, m, a, b, s) in &self.entries {
            layers[*l][m.index()] = Some(LoraPair {
                a: a.as_tensor().detach().copy()?,
                b: b.as_tensor().detach().copy()?,
                scale: *s,
            });
        }
        Ok(LoraAdapter {
            config: self.config.clone(),
            layers,
        })
    }
}
