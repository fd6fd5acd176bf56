use candle_core::{DType, Device, Tensor};

use crate::Result;

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
