use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Keys and values of a run of positions, one `(k, v)` pair per layer, each
/// `[kv_heads, positions, head_dim]`: what [`KvCache::export`] copies out and
/// [`KvCache::from_blocks`] copies back in (the engine's prefix cache stores them).
pub type KvBlock = Vec<(Tensor, Tensor)>;

/// Per-sequence key/value cache: one pre-allocated buffer per layer, grown by doubling, so an
/// appended decode step copies only the new token's keys and values.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    cap: usize,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of positions stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget everything (keeps nothing allocated).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Bytes held by the buffers (capacity, not just the used part).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }

    /// Copies positions `start..start + len` of every layer out of the cache. The copies own
    /// their memory (never views of this cache's buffers), so they outlive the cache and their
    /// size is exactly what they hold.
    pub fn export(&self, start: usize, len: usize) -> Result<KvBlock> {
        if len == 0 || start + len > self.len {
            return Err(ModelError::Config(format!(
                "cannot export positions {start}..{} of a cache holding {}",
                start + len,
                self.len
            )));
        }
        self.layers
            .iter()
            .map(|slot| {
                let (k, v) = slot.as_ref().ok_or_else(|| {
                    ModelError::Config("a layer of a non-empty cache has no buffer".into())
                })?;
                Ok((
                    k.narrow(1, start, len)?.force_contiguous()?,
                    v.narrow(1, start, len)?.force_contiguous()?,
                ))
            })
            .collect()
    }

    /// A cache holding `blocks` one after the other from position 0, with buffers of room for
    /// `reserve` more positions (so the rest of a prompt does not regrow them right away).
    pub fn from_blocks(blocks: &[&KvBlock], reserve: usize) -> Result<KvCache> {
        let Some(first) = blocks.first() else {
            return Ok(KvCache::new());
        };
        let num_layers = first.len();
        let mut len = 0;
        for b in blocks {
            if b.len() != num_layers || num_layers == 0 {
                return Err(ModelError::Config(
                    "KV blocks disagree on the number of layers".into(),
                ));
            }
            len += b[0].0.dim(1)?;
        }
        let cap = (len + reserve).max(64);
        let mut layers = Vec::with_capacity(num_layers);
        for layer in 0..num_layers {
            let (k0, v0) = &first[layer];
            let (heads, _, d) = k0.dims3()?;
            let (vh, _, vd) = v0.dims3()?;
            let k = alloc(heads, cap, d, k0.dtype(), k0.device())?;
            let v = alloc(vh, cap, vd, v0.dtype(), v0.device())?;
            let mut at = 0;
            for b in blocks {
                let (bk, bv) = &b[layer];
                let t = b[0].0.dim(1)?;
                if bk.dim(1)? != t || bv.dim(1)? != t {
                    return Err(ModelError::Config(
                        "a KV block's layers differ in length".into(),
                    ));
                }
                k.slice_set(bk, 1, at)?;
                v.slice_set(bv, 1, at)?;
                at += t;
            }
            layers.push(Some((k, v)));
        }
        Ok(KvCache { layers, len, cap })
    }

    /// Appends `k`, `v` (`[kv_heads, t, head_dim]`) for `layer` at position `self.len` and returns
    /// views over all cached positions. Call [`KvCache::advance`] once all layers are appended.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        num_layers: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if self.layers.len() < num_layers {
            self.layers.resize(num_layers, None);
        }
        let (heads, t, d) = k.dims3()?;
        let need = self.len + t;
        if need > self.cap {
            let new_cap = need.max(self.cap * 2).max(64);
            for slot in self.layers.iter_mut() {
                if let Some((ok, ov)) = slot.take() {
                    let nk = Tensor::zeros((heads, new_cap, d), ok.dtype(), ok.device())?;
                    let nv = Tensor::zeros((heads, new_cap, d), ov.dtype(), ov.device())?;
                    if self.len > 0 {
                        nk.slice_set(&ok.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                        nv.slice_set(&ov.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                    *slot = Some((nk, nv));
                }
            }
            self.cap = new_cap;
        }
        let slot = &mut self.layers[layer];
        let (ck, cv) = match slot {
            Some(pair) => pair.clone(),
            None => {
                let pair = (
                    alloc(heads, self.cap, d, k.dtype(), k.device())?,
                    alloc(heads, self.cap, d, v.dtype(), v.device())?,
                );
                *slot = Some(pair.clone());
                pair
            }
        };
        ck.slice_set(&k.contiguous()?, 1, self.len)?;
        cv.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((ck.narrow(1, 0, need)?, cv.narrow(1, 0, need)?))
    }

    /// Marks `t` more positions as stored (after every layer appended them).
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

fn alloc(h: usize, cap: usize, d: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(Tensor::zeros((h, cap, d), dtype, dev)?)
}
