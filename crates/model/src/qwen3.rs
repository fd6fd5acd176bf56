//! The Qwen3 decoder: packed multi-sequence inference with KV caches and per-sequence LoRA,
//! and a differentiable full-sequence path for training.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var, D};

use crate::bgmv;
use crate::frozen::{HalfKind, HalfWeight, Weight};
use crate::lora::{LoraAdapter, Module, ALL_MODULES};
use crate::weights::{file_matrix_dtype, load_weights, weight_files, LoadOptions};
use crate::MatmulPrecision;
use crate::{KvCache, ModelError, Qwen3Config, Result};

/// Largest per-adapter row group a multi-adapter linear handles row by row.
const ROW_DELTA_MAX_ROWS: usize = 64;

/// Which kernels to use: fused ones for inference, differentiable compositions for training
/// (several fused candle kernels have no backward and would silently cut the gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    Inference,
    Training,
}

struct Layer {
    w: [Weight; 7],
    q_norm: Tensor,
    k_norm: Tensor,
    input_norm: Tensor,
    post_norm: Tensor,
}

/// A loaded Qwen3 causal LM.
pub struct Qwen3 {
    config: Qwen3Config,
    device: Device,
    /// Compute dtype (f32 on the CPU, whatever the weights' storage).
    dtype: DType,
    embed: Weight,
    lm_head: Option<Weight>,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `[max_positions, head_dim / 2]`
    cos: Tensor,
    sin: Tensor,
    /// How activations enter the products by 16-bit weights (see [`MatmulPrecision`]).
    precision: MatmulPrecision,
}

/// One sequence of a packed batch: new tokens to run, its cache, its adapter.
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    pub adapter: Option<&'a LoraAdapter>,
    /// Return logits for every new token instead of only the last one.
    pub all_logits: bool,
}

fn take_weight(map: &mut HashMap<String, Weight>, name: &str, shape: &[usize]) -> Result<Weight> {
    let w = map
        .remove(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
    let got = match &w {
        Weight::Dense(t) => t.dims().to_vec(),
        Weight::Half(h) => vec![h.dims().0, h.dims().1],
        Weight::Q8(q) => vec![q.dims().0, q.dims().1],
    };
    if got != shape {
        return Err(ModelError::ShapeMismatch {
            name: name.to_string(),
            got,
            expected: shape.to_vec(),
        });
    }
    Ok(w)
}

/// A vector (norm weight): always a tensor in the compute dtype.
fn take(map: &mut HashMap<String, Weight>, name: &str, shape: &[usize]) -> Result<Tensor> {
    match take_weight(map, name, shape)? {
        Weight::Dense(t) => Ok(t),
        Weight::Half(_) | Weight::Q8(_) => Err(ModelError::Config(format!(
            "internal: {name} was loaded as a matrix"
        ))),
    }
}

impl Qwen3 {
    /// Loads `config.json` and the safetensors weights of a model folder.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let config = Qwen3Config::from_file(&dir.join("config.json"))?;
        let files = weight_files(dir)?;
        let dtype = opts.compute_dtype();
        let half =
            opts.half_storage(config.torch_dtype.as_deref(), || file_matrix_dtype(&files))?;
        if opts.quantization.is_some() && !opts.device.is_cpu() {
            return Err(ModelError::Config(
                "--quantization is only supported on the CPU".into(),
            ));
        }
        let weights = load_weights(&files, &opts.device, dtype, half, opts.quantization)?;
        Ok(Self::from_weights(config, weights, &opts.device, dtype)?
            .with_matmul_precision(opts.matmul_precision))
    }

    /// The model computing its products by bf16 weights at `p` (the default is
    /// [`MatmulPrecision::Medium`], as for a loaded model).
    pub fn with_matmul_precision(mut self, p: MatmulPrecision) -> Self {
        self.precision = p;
        self
    }

    /// How activations enter the products by 16-bit weights.
    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.precision
    }

    /// The model with every weight matrix (projections, embeddings, LM head) quantized to
    /// `q` (from whatever storage it had; the old matrices are freed). For models built in
    /// memory (the built-in model, benchmarks); [`Qwen3::load`] quantizes while reading.
    pub fn quantized(mut self, q: crate::Quantization) -> Result<Self> {
        match q {
            crate::Quantization::Q8_0 => {}
        }
        if !self.device.is_cpu() {
            return Err(ModelError::Config(
                "--quantization is only supported on the CPU".into(),
            ));
        }
        let conv = |w: Weight| -> Result<Weight> { Ok(w.into_q8()?) };
        self.embed = conv(self.embed)?;
        self.lm_head = self.lm_head.map(conv).transpose()?;
        let layers = std::mem::take(&mut self.layers);
        for l in layers {
            let w: Vec<Weight> = l.w.into_iter().map(conv).collect::<Result<_>>()?;
            let w: [Weight; 7] = w
                .try_into()
                .map_err(|_| ModelError::Config("internal: projection count".into()))?;
            self.layers.push(Layer { w, ..l });
        }
        Ok(self)
    }

    /// The weight matrices' quantization, if any.
    pub fn quantization(&self) -> Option<crate::Quantization> {
        matches!(self.embed, Weight::Q8(_)).then_some(crate::Quantization::Q8_0)
    }

    /// Builds the model from transformers-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...).
    /// On the CPU, `dtype` `BF16`/`F16` keeps the weight matrices in that format (rounded to
    /// nearest) and computes in f32, as [`LoadOptions::dtype`] does; otherwise it is the compute
    /// dtype of every tensor.
    pub fn from_tensors(
        config: Qwen3Config,
        t: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let half = HalfKind::from_dtype(dtype).filter(|_| device.is_cpu());
        let compute = if half.is_some() { DType::F32 } else { dtype };
        let mut weights = HashMap::with_capacity(t.len());
        for (name, t) in t {
            let w = match half {
                Some(kind) if t.rank() == 2 => Weight::Half(HalfWeight::from_tensor(&t, kind)?),
                _ => Weight::Dense(t.to_dtype(compute)?.to_device(device)?),
            };
            weights.insert(name, w);
        }
        Self::from_weights(config, weights, device, compute)
    }

    fn from_weights(
        config: Qwen3Config,
        mut t: HashMap<String, Weight>,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        let c = &config;
        let (h, v) = (c.hidden_size, c.vocab_size);
        let embed = take_weight(&mut t, "model.embed_tokens.weight", &[v, h])?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(take_weight(&mut t, "lm_head.weight", &[v, h])?)
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let mut w = Vec::with_capacity(7);
            for m in ALL_MODULES {
                let (i, o) = m.dims(c);
                w.push(take_weight(
                    &mut t,
                    &format!("{}.weight", m.module_path(l)),
                    &[o, i],
                )?);
            }
            let w: [Weight; 7] = w
                .try_into()
                .map_err(|_| ModelError::Config("internal: projection count".into()))?;
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                w,
                q_norm: take(
                    &mut t,
                    &format!("{p}.self_attn.q_norm.weight"),
                    &[c.head_dim],
                )?,
                k_norm: take(
                    &mut t,
                    &format!("{p}.self_attn.k_norm.weight"),
                    &[c.head_dim],
                )?,
                input_norm: take(&mut t, &format!("{p}.input_layernorm.weight"), &[h])?,
                post_norm: take(
                    &mut t,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?,
            });
        }
        let norm = take(&mut t, "model.norm.weight", &[h])?;
        let (cos, sin) = rope_tables(c, device, dtype)?;
        Ok(Qwen3 {
            config,
            device: device.clone(),
            dtype,
            embed,
            lm_head,
            layers,
            norm,
            cos,
            sin,
            precision: MatmulPrecision::Medium,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Qwen3Config {
        &self.config
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype (of activations, logits, norms, LoRA and the KV cache).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Storage dtype of the weight matrices (projections, embeddings, LM head).
    pub fn weight_dtype(&self) -> DType {
        self.embed.dtype()
    }

    /// Bytes of the vectors (norms) per layer and at the end, in the compute dtype.
    fn norm_bytes(&self) -> usize {
        let mut n = self.norm.elem_count();
        for l in &self.layers {
            n += l.q_norm.elem_count() + l.k_norm.elem_count();
            n += l.input_norm.elem_count() + l.post_norm.elem_count();
        }
        n * self.dtype.size_in_bytes()
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        let mut n = self.embed.size_in_bytes() + self.norm_bytes();
        if let Some(l) = &self.lm_head {
            n += l.size_in_bytes();
        }
        for l in &self.layers {
            n += l.w.iter().map(Weight::size_in_bytes).sum::<usize>();
        }
        n
    }

    /// Bytes read from weights to decode one token (all projections, norms and the LM head;
    /// one embedding row).
    pub fn bytes_per_token(&self) -> usize {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let row = self.embed.size_in_bytes() / self.embed.elem_count().max(1);
        let mut n = head.size_in_bytes() + self.config.hidden_size * row + self.norm_bytes();
        for l in &self.layers {
            n += l.w.iter().map(Weight::size_in_bytes).sum::<usize>();
        }
        n
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        for &id in ids {
            if id as usize >= self.config.vocab_size {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab: self.config.vocab_size,
                });
            }
        }
        Ok(())
    }

    fn check_adapter(&self, a: Option<&LoraAdapter>) -> Result<()> {
        match a {
            Some(a) => a.check_fits(&self.config),
            None => Ok(()),
        }
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps as f32;
        Ok(match mode {
            ForwardMode::Inference => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps)?,
            ForwardMode::Training => crate::fused::rms_norm(x, w, eps)?,
        })
    }

    /// `x @ W^T` plus each segment's LoRA delta. `segs` are `(row offset, rows, adapter)`.
    fn linear(
        &self,
        x: &Tensor,
        layer: usize,
        m: Module,
        segs: &[(usize, usize, Option<&LoraAdapter>)],
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let y = self.layers[layer].w[m as usize].linear(x, mode, self.precision)?;
        // Merge consecutive segments that share an adapter so a single-adapter batch does one
        // LoRA matmul pair.
        let mut groups: Vec<(usize, usize, Option<&LoraAdapter>)> = Vec::new();
        for &(off, n, a) in segs {
            match groups.last_mut() {
                Some(g) if same_adapter(g.2, a) && g.0 + g.1 == off => g.1 += n,
                _ => groups.push((off, n, a)),
            }
        }
        if groups
            .iter()
            .all(|g| g.2.and_then(|a| a.pair(layer, m)).is_none())
        {
            return Ok(y);
        }
        // Decode steps and short prefill chunks (every adapter's rows <= ROW_DELTA_MAX_ROWS): one
        // in-place pass instead of a pair of small matmuls (plus an add and a concat) per
        // adapter (see `bgmv`). Longer chunks keep the matmuls, efficient there.
        if mode == ForwardMode::Inference && groups.iter().all(|g| g.1 <= ROW_DELTA_MAX_ROWS) {
            let mut pairs = Vec::with_capacity(x.dim(0)?);
            for &(_, n, a) in &groups {
                let p = a.and_then(|a| a.pair(layer, m));
                pairs.extend(std::iter::repeat_n(p, n));
            }
            if bgmv::supported(x, &y, &pairs) {
                bgmv::add_row_deltas(&y, x, &pairs)?;
                return Ok(y);
            }
        }
        if groups.len() == 1 {
            if let Some(p) = groups[0].2.and_then(|a| a.pair(layer, m)) {
                return Ok((y + p.delta(x)?)?);
            }
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (off, n, a) in groups {
            let yi = y.narrow(0, off, n)?;
            match a.and_then(|a| a.pair(layer, m)) {
                Some(p) => parts.push((yi + p.delta(&x.narrow(0, off, n)?)?)?),
                None => parts.push(yi),
            }
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Inference RoPE (candle's fused kernel) of `x` `[1, heads, t, head_dim]` at `pos`.
    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)?)
    }

    /// Attention for one sequence. q: `[t, heads*d]`, k/v: `[t, kv_heads*d]` (already projected).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        pos: usize,
        cache: Option<&mut KvCache>,
        mask: Option<&Tensor>,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (t, _) = q.dims2()?;
        let (hq, hk, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let l = &self.layers[layer];
        let q = self.rms_norm(&q.reshape((t, hq, d))?, &l.q_norm, mode)?;
        let k = self.rms_norm(&k.reshape((t, hk, d))?, &l.k_norm, mode)?;
        let (q, k) = match mode {
            // The fused op rotates `[t, heads, d]` rows where they are.
            ForwardMode::Training => (
                crate::fused::rope(&q, &self.cos, &self.sin, pos)?.transpose(0, 1)?,
                crate::fused::rope(&k, &self.cos, &self.sin, pos)?
                    .transpose(0, 1)?
                    .contiguous()?,
            ),
            ForwardMode::Inference => (
                self.rope(&q.transpose(0, 1)?.unsqueeze(0)?, pos)?
                    .squeeze(0)?,
                self.rope(&k.transpose(0, 1)?.unsqueeze(0)?, pos)?
                    .squeeze(0)?,
            ),
        };
        let v = v.reshape((t, hk, d))?.transpose(0, 1)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(layer, self.layers.len(), &k, &v)?,
            None => (k, v.contiguous()?),
        };
        let total = k.dim(1)?;
        let scale = 1.0 / (d as f64).sqrt();
        // The fused kernel applies the causal mask itself (query i sees keys 0..=total-t+i),
        // which is the only mask this model builds.
        if let Some(out) =
            crate::attention::causal_attention(&q, &k, &v, scale, mode == ForwardMode::Training)?
        {
            return Ok(out.transpose(0, 1)?.reshape((t, hq * d))?);
        }
        // Group the query heads that share a KV head: [hk, rep*t, d], so keys are never copied.
        let rep = hq / hk;
        let q = q.contiguous()?.reshape((hk, rep * t, d))?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let scores = match mask {
            Some(mask) => {
                let scores = scores.reshape((hk, rep, t, total))?.broadcast_add(mask)?;
                scores.reshape((hk, rep * t, total))?
            }
            None => scores,
        };
        let probs = match mode {
            ForwardMode::Inference => candle_nn::ops::softmax_last_dim(&scores)?,
            ForwardMode::Training => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let out = probs.matmul(&v)?; // [hk, rep*t, d]
        Ok(out
            .reshape((hq, t, d))?
            .transpose(0, 1)?
            .reshape((t, hq * d))?)
    }

    /// Causal mask for `t` new tokens after `pos` cached ones (none needed for one token, nor
    /// where the fused attention kernel runs: it masks by position itself).
    fn mask(&self, t: usize, pos: usize) -> Result<Option<Tensor>> {
        if t <= 1 || crate::attention::fused_applies(&self.device, self.dtype) {
            return Ok(None);
        }
        Ok(Some(causal_mask(
            t,
            pos + t,
            pos,
            &self.device,
            self.dtype,
        )?))
    }

    fn head(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed);
        Ok(w.linear(x, mode, self.precision)?)
    }

    // The per-sequence slices are parallel arrays built once per forward.
    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        x: &Tensor,
        li: usize,
        segs: &[(usize, usize, Option<&LoraAdapter>)],
        caches: &mut [Option<&mut KvCache>],
        positions: &[usize],
        masks: &[Option<Tensor>],
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let l = &self.layers[li];
        let hn = self.rms_norm(x, &l.input_norm, mode)?;
        let q = self.linear(&hn, li, Module::Q, segs, mode)?;
        let k = self.linear(&hn, li, Module::K, segs, mode)?;
        let v = self.linear(&hn, li, Module::V, segs, mode)?;
        let mut outs = Vec::with_capacity(segs.len());
        for (i, &(off, n, _)) in segs.iter().enumerate() {
            let cache = caches[i].as_deref_mut();
            outs.push(self.attend(
                li,
                &q.narrow(0, off, n)?,
                &k.narrow(0, off, n)?,
                &v.narrow(0, off, n)?,
                positions[i],
                cache,
                masks[i].as_ref(),
                mode,
            )?);
        }
        let attn = if outs.len() == 1 {
            outs.pop()
                .ok_or_else(|| ModelError::Config("empty batch".into()))?
        } else {
            Tensor::cat(&outs, 0)?
        };
        let x = (x + self.linear(&attn, li, Module::O, segs, mode)?)?;
        let hn = self.rms_norm(&x, &l.post_norm, mode)?;
        let g = self.linear(&hn, li, Module::Gate, segs, mode)?;
        let u = self.linear(&hn, li, Module::Up, segs, mode)?;
        let act = match mode {
            ForwardMode::Training => crate::fused::swiglu(&g, &u)?,
            ForwardMode::Inference => (candle_nn::ops::silu(&g)? * u)?,
        };
        Ok((x + self.linear(&act, li, Module::Down, segs, mode)?)?)
    }

    /// Runs new tokens of several sequences in one packed forward, each continuing its own KV
    /// cache with its own adapter (or none). Returns per sequence the logits `[n, vocab]` of
    /// every new token (`all_logits`) or `[1, vocab]` of the last.
    pub fn forward_batch(&self, seqs: &mut [SeqInput<'_>]) -> Result<Vec<Tensor>> {
        let skips = vec![0; seqs.len()];
        self.forward_packed(seqs, &skips)
    }

    /// [`Qwen3::forward_batch`] where, for `all_logits` sequences, the first `skips[i]` new
    /// tokens get no logits (the LM head is the widest matmul; rows nobody reads are skipped).
    fn forward_packed(&self, seqs: &mut [SeqInput<'_>], skips: &[usize]) -> Result<Vec<Tensor>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut segs = Vec::with_capacity(seqs.len());
        let mut positions = Vec::with_capacity(seqs.len());
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(ModelError::Config(
                    "a sequence in the batch has no new tokens".into(),
                ));
            }
            self.check_ids(s.tokens)?;
            self.check_adapter(s.adapter)?;
            let pos = s.cache.len();
            if pos + s.tokens.len() > self.config.max_position_embeddings {
                return Err(ModelError::TooLong {
                    len: pos + s.tokens.len(),
                    max: self.config.max_position_embeddings,
                });
            }
            segs.push((ids.len(), s.tokens.len(), s.adapter));
            positions.push(pos);
            ids.extend_from_slice(s.tokens);
        }
        let mut x = self.embed.rows(&ids, &self.device)?;
        // Built once per forward, shared by every layer.
        let masks = segs
            .iter()
            .zip(&positions)
            .map(|(&(_, n, _), &pos)| self.mask(n, pos))
            .collect::<Result<Vec<_>>>()?;
        let mut caches: Vec<Option<&mut KvCache>> =
            seqs.iter_mut().map(|s| Some(&mut *s.cache)).collect();
        for li in 0..self.layers.len() {
            x = self.layer_forward(
                &x,
                li,
                &segs,
                &mut caches,
                &positions,
                &masks,
                ForwardMode::Inference,
            )?;
        }
        drop(caches);
        // Only the rows whose logits are wanted go through the final norm and LM head.
        let mut rows = Vec::with_capacity(seqs.len());
        for ((s, &(off, n, _)), &skip) in seqs.iter_mut().zip(&segs).zip(skips) {
            s.cache.advance(n);
            let skip = skip.min(n - 1);
            rows.push(if s.all_logits {
                x.narrow(0, off + skip, n - skip)?
            } else {
                x.narrow(0, off + n - 1, 1)?
            });
        }
        let sizes: Vec<usize> = rows
            .iter()
            .map(|r| r.dim(0))
            .collect::<candle_core::Result<_>>()?;
        let h = if rows.len() == 1 {
            rows.pop()
                .ok_or_else(|| ModelError::Config("empty batch".into()))?
        } else {
            Tensor::cat(&rows, 0)?
        };
        let h = self.rms_norm(&h, &self.norm, ForwardMode::Inference)?;
        let logits = self.head(&h, ForwardMode::Inference)?;
        let mut out = Vec::with_capacity(sizes.len());
        let mut off = 0;
        for n in sizes {
            out.push(logits.narrow(0, off, n)?);
            off += n;
        }
        Ok(out)
    }

    /// Logits `[len, vocab]` of a whole sequence without gradients, computed in chunks of
    /// `chunk` tokens so long prompts never build a full `len x len` score matrix.
    pub fn logits(
        &self,
        ids: &[u32],
        adapter: Option<&LoraAdapter>,
        chunk: usize,
    ) -> Result<Tensor> {
        let mut cache = KvCache::new();
        let mut parts = Vec::new();
        for piece in ids.chunks(chunk.max(1)) {
            let mut seq = [SeqInput {
                tokens: piece,
                cache: &mut cache,
                adapter,
                all_logits: true,
            }];
            parts.extend(self.forward_batch(&mut seq)?);
        }
        if parts.is_empty() {
            return Err(ModelError::Config("empty sequence".into()));
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Logits of several whole sequences at once, no gradients: for each `(ids, from)` the rows
    /// `from..ids.len()` (`[len - from, vocab]`). The sequences share every packed forward (the
    /// weights are read once for all of them) and only the wanted rows reach the LM head.
    pub fn logits_packed(
        &self,
        seqs: &[(&[u32], usize)],
        adapter: Option<&LoraAdapter>,
        chunk: usize,
    ) -> Result<Vec<Tensor>> {
        let chunk = chunk.max(1);
        for (ids, from) in seqs {
            if *from >= ids.len() {
                return Err(ModelError::Config(format!(
                    "logits wanted from row {from} of a {}-token sequence",
                    ids.len()
                )));
            }
        }
        let mut caches: Vec<KvCache> = seqs.iter().map(|_| KvCache::new()).collect();
        let mut parts: Vec<Vec<Tensor>> = seqs.iter().map(|_| Vec::new()).collect();
        loop {
            let mut batch = Vec::new();
            let mut skips = Vec::new();
            let mut which = Vec::new();
            for (i, (cache, (ids, from))) in caches.iter_mut().zip(seqs).enumerate() {
                let pos = cache.len();
                if pos >= ids.len() {
                    continue;
                }
                let end = (pos + chunk).min(ids.len());
                let wanted = end > *from;
                skips.push(from.saturating_sub(pos));
                which.push((i, wanted));
                batch.push(SeqInput {
                    tokens: &ids[pos..end],
                    cache,
                    adapter,
                    all_logits: wanted,
                });
            }
            if batch.is_empty() {
                break;
            }
            let out = self.forward_packed(&mut batch, &skips)?;
            for (t, (i, wanted)) in out.into_iter().zip(which) {
                if wanted {
                    parts[i].push(t);
                }
            }
        }
        parts.into_iter().map(|p| Ok(Tensor::cat(&p, 0)?)).collect()
    }

    /// Differentiable logits `[len, vocab]` of one whole sequence: gradients flow into the
    /// adapter's tensors (e.g. a [`crate::TrainableLora`]), never into base weights.
    pub fn forward_train(&self, ids: &[u32], adapter: Option<&LoraAdapter>) -> Result<Tensor> {
        self.forward_train_rows(ids, adapter, 0, ids.len())
    }

    /// [`Qwen3::forward_train`] returning only the logits of rows `from..from + n`. The LM head
    /// is the widest matmul, forward and backward; rows nobody reads would cost both (and a
    /// `[len, vocab]` zero gradient).
    pub fn forward_train_rows(
        &self,
        ids: &[u32],
        adapter: Option<&LoraAdapter>,
        from: usize,
        n: usize,
    ) -> Result<Tensor> {
        self.check_train(ids, adapter, from, n)?;
        let mut x = self.embed.rows(ids, &self.device)?;
        let mask = self.mask(ids.len(), 0)?;
        for li in 0..self.layers.len() {
            x = self.train_layer(&x, li, adapter, &mask)?;
        }
        self.train_head(&x, from, n, ids.len())
    }

    /// Checks the arguments of the training forwards.
    fn check_train(
        &self,
        ids: &[u32],
        adapter: Option<&LoraAdapter>,
        from: usize,
        n: usize,
    ) -> Result<()> {
        if from.checked_add(n).is_none_or(|end| end > ids.len()) || n == 0 {
            return Err(ModelError::Config(format!(
                "{n} rows from row {from} of a {}-token sequence",
                ids.len()
            )));
        }
        self.check_ids(ids)?;
        self.check_adapter(adapter)?;
        if ids.len() > self.config.max_position_embeddings {
            return Err(ModelError::TooLong {
                len: ids.len(),
                max: self.config.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// One decoder layer of the differentiable full-sequence forward.
    fn train_layer(
        &self,
        x: &Tensor,
        li: usize,
        adapter: Option<&LoraAdapter>,
        mask: &Option<Tensor>,
    ) -> Result<Tensor> {
        let segs = [(0, x.dim(0)?, adapter)];
        let mut caches: [Option<&mut KvCache>; 1] = [None];
        self.layer_forward(
            x,
            li,
            &segs,
            &mut caches,
            &[0],
            std::slice::from_ref(mask),
            ForwardMode::Training,
        )
    }

    /// Final norm and LM head on rows `from..from + n` of the last hidden states.
    fn train_head(&self, x: &Tensor, from: usize, n: usize, len: usize) -> Result<Tensor> {
        let x = if n == len {
            x.clone()
        } else {
            x.narrow(0, from, n)?
        };
        let h = self.rms_norm(&x, &self.norm, ForwardMode::Training)?;
        self.head(&h, ForwardMode::Training)
    }

    /// [`Qwen3::forward_train_rows`] with activation checkpointing: the forward keeps only each
    /// decoder layer's input, and [`CheckpointedLogits::backward`] recomputes one layer at a time
    /// with its graph. Saved activations shrink from every layer's intermediates (several GB
    /// for a 320-token step at 8B) to one `[len, hidden]` tensor per layer plus one layer's
    /// graph, at the cost of a second forward. The recomputation runs the same kernels on the
    /// same inputs, so gradients differ from the single-graph backward only by the order in
    /// which f32 contributions are summed.
    pub fn forward_train_checkpointed<'a>(
        &'a self,
        ids: &[u32],
        adapter: Option<&'a LoraAdapter>,
        from: usize,
        n: usize,
    ) -> Result<CheckpointedLogits<'a>> {
        self.check_train(ids, adapter, from, n)?;
        let mask = self.mask(ids.len(), 0)?;
        let mut x = self.embed.rows(ids, &self.device)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        for li in 0..self.layers.len() {
            let next = self.train_layer(&x, li, adapter, &mask)?.detach();
            inputs.push(x);
            x = next;
        }
        let last = Var::from_tensor(&x)?;
        let logits = self.train_head(last.as_tensor(), from, n, ids.len())?;
        Ok(CheckpointedLogits {
            model: self,
            adapter,
            mask,
            inputs,
            last,
            logits,
        })
    }
}

/// Differentiable logits from [`Qwen3::forward_train_checkpointed`], with what the layer-wise
/// backward needs.
pub struct CheckpointedLogits<'a> {
    model: &'a Qwen3,
    adapter: Option<&'a LoraAdapter>,
    mask: Option<Tensor>,
    /// Input of each decoder layer, without graph.
    inputs: Vec<Tensor>,
    /// The last layer's output, the leaf the head's graph starts from.
    last: Var,
    logits: Tensor,
}

impl CheckpointedLogits<'_> {
    /// The logits `[n, vocab]`; build the loss from them.
    pub fn logits(&self) -> &Tensor {
        &self.logits
    }

    /// Backpropagates `loss` (a scalar built from [`CheckpointedLogits::logits`]; drop every
    /// other handle on its graph first, so the logits are freed early) through the head, then
    /// through each layer from the last, recomputed. `on_grads` sees each partial gradient
    /// store; every adapter variable's gradient is in exactly one of them.
    pub fn backward<E: From<ModelError>>(
        self,
        loss: Tensor,
        mut on_grads: impl FnMut(&GradStore) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut on_grads = |g: &GradStore| on_grads(g);
        self.backward_inner(loss, &mut on_grads)
    }

    fn backward_inner<E: From<ModelError>>(
        self,
        loss: Tensor,
        on_grads: &mut dyn FnMut(&GradStore) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let m = |e: candle_core::Error| E::from(ModelError::from(e));
        let CheckpointedLogits {
            model,
            adapter,
            mask,
            mut inputs,
            last,
            logits,
        } = self;
        let store = loss.backward().map_err(m)?;
        drop((loss, logits));
        on_grads(&store)?;
        let mut grad = match store.get(last.as_tensor()) {
            Some(g) => g.detach(),
            None => return Ok(()), // the loss does not depend on the model's output
        };
        drop((store, last));
        for li in (0..model.layers.len()).rev() {
            let x = inputs.pop().ok_or_else(|| {
                E::from(ModelError::Config("internal: missing layer input".into()))
            })?;
            // The first layer's input is the (frozen) embedding: no gradient to carry on.
            let leaf = (li > 0)
                .then(|| Var::from_tensor(&x))
                .transpose()
                .map_err(m)?;
            let xin = leaf.as_ref().map_or(&x, |v| v.as_tensor());
            let out = model
                .train_layer(xin, li, adapter, &mask)
                .map_err(E::from)?;
            // d/d(out) of sum(out * grad) is exactly `grad`: the upstream gradient, unchanged.
            let store = (out * &grad)
                .and_then(|p| p.sum_all())
                .and_then(|s| s.backward())
                .map_err(m)?;
            on_grads(&store)?;
            if let Some(v) = &leaf {
                grad = store
                    .get(v.as_tensor())
                    .ok_or_else(|| {
                        E::from(ModelError::Config(
                            "internal: no gradient reached a layer input".into(),
                        ))
                    })?
                    .detach();
            }
        }
        Ok(())
    }
}

fn same_adapter(a: Option<&LoraAdapter>, b: Option<&LoraAdapter>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

fn causal_mask(t: usize, total: usize, pos: usize, dev: &Device, dtype: DType) -> Result<Tensor> {
    let mut m = vec![0f32; t * total];
    for i in 0..t {
        for j in (pos + i + 1)..total {
            m[i * total + j] = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (t, total), dev)?.to_dtype(dtype)?)
}

fn rope_tables(c: &Qwen3Config, dev: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    // Same arithmetic as transformers: inv_freq and the angle in float32.
    let half = c.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (c.rope_theta as f32).powf((2 * i) as f32 / c.head_dim as f32))
        .collect();
    let n = c.max_position_embeddings;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), dev)?.to_dtype(dtype)?,
        Tensor::from_vec(sin, (n, half), dev)?.to_dtype(dtype)?,
    ))
}
